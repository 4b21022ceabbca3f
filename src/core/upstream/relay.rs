//! Relays a committed stream to the client: chunk by chunk through the [`SseScanner`], within the
//! idle and total deadlines, ending it with one OpenAI-shaped error event when the backend fails,
//! and reporting its end exactly once — which also lets go of the backend request.

use crate::core::error::{GatewayError, TimeoutPhase};
use crate::core::http::BodyStream;
use crate::core::openai::Usage;
use crate::core::runtime::{timeout, Runtime};
use crate::core::upstream::sse::{SseScanner, Stop};
use futures::channel::oneshot;
use futures::stream::StreamExt;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// How a relayed stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The backend sent `[DONE]`.
    Done,
    /// The backend failed or broke the stream after it started; the client got an error event.
    UpstreamError,
    /// The stream ran past a timeout; the client got an `upstream_timeout` event.
    Timeout,
    /// The client went away (the stream was dropped, or the platform said so, before its end).
    ClientClosed,
}

impl StreamEnd {
    /// For the log line.
    pub fn name(self) -> &'static str {
        match self {
            StreamEnd::Done => "done",
            StreamEnd::UpstreamError => "upstream_error",
            StreamEnd::Timeout => "timeout",
            StreamEnd::ClientClosed => "client_closed",
        }
    }
}

/// What is known when a relayed stream ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSummary {
    pub end: StreamEnd,
    /// The backend's own count, when its usage chunk arrived.
    pub usage: Option<Usage>,
    /// Chunks with choices relayed (about one token each), for streams cut short.
    pub content_events: u64,
    /// When the first of them was relayed (ms on the runtime's clock): time to first token.
    pub first_content_ms: Option<u64>,
    /// The backend that answered and how many were tried, when the stream was committed before
    /// one did (a committed stream).
    pub answered: Option<(String, u32)>,
    /// Why no backend answered, when the stream was committed before one could.
    pub error: Option<GatewayError>,
}

/// Called once when a relayed stream ends.
pub type OnStreamEnd = Box<dyn FnOnce(StreamSummary)>;

/// Reports a stream's end exactly once, whoever learns of it first: the relay (done, failed,
/// dropped by the client), the platform saying the client left while the stream was no longer
/// polled (workerd), or the total deadline passing while the client does not read. Whatever
/// reports it also lets go of the backend's body, which aborts the backend request.
#[derive(Clone, Default)]
pub struct StreamEnding(Rc<Ending>);

#[derive(Default)]
struct Ending {
    on_end: RefCell<Option<OnStreamEnd>>,
    end: Cell<Option<StreamEnd>>,
    /// Dropped when the end is reported, which wakes [`StreamEnding::ended`].
    fired_tx: RefCell<Option<oneshot::Sender<()>>>,
    fired_rx: RefCell<Option<oneshot::Receiver<()>>>,
    content_events: Cell<u64>,
    first_content_ms: Cell<Option<u64>>,
    answered: RefCell<Option<(String, u32)>>,
    error: RefCell<Option<GatewayError>>,
    /// The backend's body, let go of when the stream ends.
    upstream: RefCell<Option<Rc<RefCell<Option<BodyStream>>>>>,
    /// Lets go of whatever else the stream holds (a search for a backend still under way).
    release: RefCell<Option<Box<dyn FnOnce()>>>,
}

impl StreamEnding {
    pub fn new() -> Self {
        let (tx, rx) = oneshot::channel();
        StreamEnding(Rc::new(Ending {
            fired_tx: RefCell::new(Some(tx)),
            fired_rx: RefCell::new(Some(rx)),
            ..Ending::default()
        }))
    }

    /// What to do when the stream ends.
    pub fn on_end(&self, on_end: OnStreamEnd) {
        *self.0.on_end.borrow_mut() = Some(on_end);
    }

    /// Reports the end (the first call only) and drops the backend's body.
    pub fn fire(&self, end: StreamEnd, usage: Option<Usage>) {
        if self.0.end.get().is_some() {
            return;
        }
        self.0.end.set(Some(end));
        self.0.fired_tx.borrow_mut().take();
        let upstream = self.0.upstream.borrow_mut().take();
        if let Some(upstream) = upstream {
            let body = upstream.borrow_mut().take();
            drop(body);
        }
        let release = self.0.release.borrow_mut().take();
        if let Some(release) = release {
            release();
        }
        let on_end = self.0.on_end.borrow_mut().take();
        if let Some(on_end) = on_end {
            let ending = &self.0;
            on_end(StreamSummary {
                end,
                usage,
                content_events: ending.content_events.get(),
                first_content_ms: ending.first_content_ms.get(),
                answered: ending.answered.borrow_mut().take(),
                error: ending.error.borrow_mut().take(),
            });
        }
    }

    /// Reports that no backend answered a committed stream: `error` says why.
    pub(super) fn fail(&self, end: StreamEnd, error: GatewayError) {
        if self.0.end.get().is_none() {
            *self.0.error.borrow_mut() = Some(error);
        }
        self.fire(end, None);
    }

    /// Notes which backend answered a stream committed before one had (and how many were tried).
    pub(super) fn answered(&self, backend: String, tried: u32) {
        *self.0.answered.borrow_mut() = Some((backend, tried));
    }

    /// Runs `release` when the stream ends (at once if it has), letting go of what it holds.
    pub(super) fn release_on_end(&self, release: Box<dyn FnOnce()>) {
        match self.0.end.get() {
            Some(_) => release(),
            None => *self.0.release.borrow_mut() = Some(release),
        }
    }

    /// How the stream ended, once it has.
    pub fn end(&self) -> Option<StreamEnd> {
        self.0.end.get()
    }

    /// Resolves once the end has been reported (for a watcher that must not outlive the stream).
    pub fn ended(&self) -> impl std::future::Future<Output = ()> {
        let receiver = self.0.fired_rx.borrow_mut().take();
        async move {
            if let Some(receiver) = receiver {
                let _ = receiver.await;
            }
        }
    }

    /// Notes how many content events have been relayed by `now_ms`.
    fn count(&self, content_events: u64, now_ms: u64) {
        self.0.content_events.set(content_events);
        if content_events > 0 && self.0.first_content_ms.get().is_none() {
            self.0.first_content_ms.set(Some(now_ms));
        }
    }

    /// The backend's body, owned here so that whoever reports the end can drop it.
    fn hold(&self, body: BodyStream) -> Detachable {
        let slot = Rc::new(RefCell::new(Some(body)));
        *self.0.upstream.borrow_mut() = Some(slot.clone());
        Detachable(slot)
    }
}

/// A body another owner may drop between polls (the cell is borrowed only inside `poll_next`,
/// and everything runs on one thread, so no borrow ever overlaps).
struct Detachable(Rc<RefCell<Option<BodyStream>>>);

impl futures::Stream for Detachable {
    type Item = Result<Vec<u8>, crate::core::http::BodyError>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        match self.0.borrow_mut().as_mut() {
            Some(body) => body.as_mut().poll_next(cx),
            None => std::task::Poll::Ready(None),
        }
    }
}

/// The deadlines a relayed stream keeps (ms on the runtime's clock, or durations).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// The longest wait for the next chunk.
    pub idle_ms: u64,
    /// When the whole answer must be done.
    pub deadline_ms: u64,
}

/// The client's stream: `first` (what the first complete events gave, scanned before it
/// started), then the rest of `body` as it arrives, until `[DONE]`, a failure or a deadline.
pub(super) fn relay<R: Runtime + 'static>(
    body: BodyStream,
    scanner: SseScanner,
    first: Vec<u8>,
    runtime: R,
    timing: Timing,
    ending: &StreamEnding,
) -> BodyStream {
    let relay = Relay {
        upstream: ending.hold(body),
        scanner,
        first: Some(first),
        runtime,
        timing,
        guard: EndGuard(ending.clone()),
        told: false,
    };
    Box::pin(futures::stream::unfold(relay, Relay::next))
}

/// The state of one relayed stream.
struct Relay<R> {
    upstream: Detachable,
    scanner: SseScanner,
    /// What the first complete events gave, scanned before the stream started.
    first: Option<Vec<u8>>,
    runtime: R,
    timing: Timing,
    guard: EndGuard,
    /// Whether the client was sent the stream's final error event.
    told: bool,
}

/// Reports the stream's end; if dropped first, the client went away.
pub(super) struct EndGuard(pub(super) StreamEnding);

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.0.fire(StreamEnd::ClientClosed, None);
    }
}

type Item = Result<Vec<u8>, crate::core::http::BodyError>;

/// What to do with the bytes one chunk gave.
enum Step<R> {
    Yield((Item, Relay<R>)),
    End,
    Read(Relay<R>),
}

impl<R: Runtime> Relay<R> {
    /// Yields the next bytes for the client; `None` once the stream has ended.
    async fn next(mut self) -> Option<(Item, Relay<R>)> {
        if let Some(first) = self.first.take() {
            match self.forward(first) {
                Step::Yield(item) => return Some(item),
                Step::End => return None,
                Step::Read(relay) => self = relay,
            }
        }
        loop {
            match self.guard.0.end() {
                // The deadline passed while the client was not reading: tell it, once.
                Some(StreamEnd::Timeout) if !self.told && self.scanner.stopped().is_none() && !self.scanner.done() => {
                    self.told = true;
                    let error = GatewayError::UpstreamTimeout { phase: TimeoutPhase::Total };
                    let event = error.to_sse_event(self.scanner.dialect(), self.scanner.relayed());
                    return Some((Ok(event), self));
                }
                Some(_) => return None,
                None => {}
            }
            let (wait, phase) = self.next_wait();
            let chunk = match timeout(&self.runtime, wait.max(1), self.upstream.next()).await {
                None => {
                    let error = GatewayError::UpstreamTimeout { phase };
                    return Some(self.end_with(StreamEnd::Timeout, error, Vec::new()));
                }
                Some(Some(Ok(chunk))) => chunk,
                Some(Some(Err(_))) => {
                    return Some(self.fail("The inference backend failed during the stream.", Vec::new()))
                }
                Some(None) if self.guard.0.end().is_some() => continue, // let go of by another owner
                Some(None) => return Some(self.fail("The inference backend ended the stream early.", Vec::new())),
            };
            let out = self.scanner.feed(chunk);
            match self.forward(out) {
                Step::Yield(item) => return Some(item),
                Step::End => return None,
                Step::Read(relay) => self = relay,
            }
        }
    }

    /// How long to wait for the next chunk, and the phase that times out if it does not come.
    fn next_wait(&self) -> (u64, TimeoutPhase) {
        let now = self.runtime.now_ms();
        let Timing { idle_ms, deadline_ms } = self.timing;
        if deadline_ms.saturating_sub(now) <= idle_ms {
            (deadline_ms.saturating_sub(now), TimeoutPhase::Total)
        } else {
            (idle_ms, TimeoutPhase::Idle)
        }
    }

    /// What the scanner returned for a chunk: forward it, end the stream, or read on.
    fn forward(self, out: Vec<u8>) -> Step<R> {
        self.guard.0.count(self.scanner.content_events(), self.runtime.now_ms());
        match self.scanner.stopped().cloned() {
            // Relay what came before the bad event, then end with the gateway's own error.
            Some(Stop::Malformed) => {
                return Step::Yield(self.fail("The inference backend sent a malformed stream.", out))
            }
            Some(Stop::BackendError { message, .. }) => {
                let message = message.unwrap_or_else(|| "The inference backend failed during the stream.".into());
                return Step::Yield(self.end_with(StreamEnd::UpstreamError, GatewayError::Upstream { message }, out));
            }
            None => {}
        }
        if self.scanner.done() {
            // `[DONE]` is the end, whether or not the backend closes its side.
            self.guard.0.fire(StreamEnd::Done, self.scanner.usage());
            return if out.is_empty() { Step::End } else { Step::Yield((Ok(out), self)) };
        }
        if out.is_empty() {
            Step::Read(self)
        } else {
            Step::Yield((Ok(out), self))
        }
    }

    fn fail(self, message: &str, before: Vec<u8>) -> (Item, Relay<R>) {
        self.end_with(StreamEnd::UpstreamError, GatewayError::Upstream { message: message.into() }, before)
    }

    /// Ends the stream: what came `before` the failure, then one OpenAI-shaped error event.
    fn end_with(mut self, end: StreamEnd, error: GatewayError, mut before: Vec<u8>) -> (Item, Relay<R>) {
        self.told = true;
        self.guard.0.fire(end, self.scanner.usage());
        before.extend_from_slice(&error.to_sse_event(self.scanner.dialect(), self.scanner.relayed()));
        (Ok(before), self)
    }
}
