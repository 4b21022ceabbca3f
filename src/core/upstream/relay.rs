//! Relays a committed stream to the client: chunk by chunk through the [`SseScanner`], within the
//! idle and total deadlines, ending it with one OpenAI-shaped error event when the backend fails,
//! and reporting its end exactly once — which also lets go of the backend request.
//!
//! The rules are a [`Pipe`] without I/O; [`stream`] pumps it in the core, and a platform whose
//! byte pipe is cheaper outside wasm may pump it itself (the `Upstream` trait's `relay`).

use crate::core::error::{GatewayError, TimeoutPhase};
use crate::core::http::BodyStream;
use crate::core::openai::Usage;
use crate::core::runtime::{timeout, Runtime};
use crate::core::upstream::sse::{Fed, SseScanner, Stop};
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

    /// Notes how many content events have been relayed; `now_ms` is read once, at the first.
    fn count(&self, content_events: u64, now_ms: &dyn Fn() -> u64) {
        self.0.content_events.set(content_events);
        if content_events > 0 && self.0.first_content_ms.get().is_none() {
            self.0.first_content_ms.set(Some(now_ms()));
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

/// The runtime's clock, as the pipe reads it (to time the first content).
type Clock = Box<dyn Fn() -> u64>;

/// Commits to relaying `body`: the [`Pipe`] that decides what each of its chunks becomes, and the
/// body itself, now owned by `ending` so that whoever reports the end can let go of it.
pub(super) fn commit<R: Runtime + 'static>(
    body: BodyStream,
    scanner: SseScanner,
    first: Vec<u8>,
    runtime: R,
    timing: Timing,
    ending: &StreamEnding,
) -> (Pipe, BodyStream) {
    let clock: Clock = Box::new(move || runtime.now_ms());
    let pipe = Pipe { scanner, first: Some(first), timing, clock, guard: EndGuard(ending.clone()), told: false };
    (pipe, Box::pin(ending.hold(body)))
}

/// A committed stream's relay without I/O: what each chunk of the backend's body becomes, what
/// the backend closing or failing means, and when time runs out. Whoever pumps the bytes — the
/// core itself ([`stream`]), or a platform whose byte pipe lives outside wasm — calls it chunk by
/// chunk and forwards what it says. Dropping it before the end means the client went away.
pub struct Pipe {
    scanner: SseScanner,
    /// What the first complete events gave, scanned before the stream started.
    first: Option<Vec<u8>>,
    timing: Timing,
    clock: Clock,
    guard: EndGuard,
    /// Whether the client was sent the stream's final error event.
    told: bool,
}

/// What to send the client after something happened on the backend's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The chunk just given, exactly as it came (only from [`Pipe::chunk`]).
    AsIs,
    /// These bytes (nothing when empty); then read on.
    Send(Vec<u8>),
    /// These bytes (nothing when empty); then the client's stream ends. The end has been
    /// reported, which let go of the backend's body.
    End(Vec<u8>),
}

const MALFORMED: &str = "The inference backend sent a malformed stream.";
const FAILED: &str = "The inference backend failed during the stream.";
const ENDED_EARLY: &str = "The inference backend ended the stream early.";

impl Pipe {
    /// What the first complete events gave (once; nothing after).
    pub fn first(&mut self) -> Verdict {
        match self.first.take() {
            Some(first) => self.forward(first),
            None => Verdict::Send(Vec::new()),
        }
    }

    /// The backend's next chunk, which the caller keeps: [`Verdict::AsIs`] on the fast path.
    pub fn chunk(&mut self, chunk: &[u8]) -> Verdict {
        if let Some(ended) = self.ended() {
            return ended;
        }
        match self.scanner.feed_slice(chunk) {
            Fed::AsIs => match self.forward(Vec::new()) {
                // Nothing stopped and nothing ended: the chunk goes on as it came.
                Verdict::Send(_) => Verdict::AsIs,
                // The chunk carried `[DONE]` (or a stop): it goes first, then the end.
                Verdict::End(after) => Verdict::End([chunk, &after].concat()),
                Verdict::AsIs => Verdict::AsIs,
            },
            Fed::Bytes(out) => self.forward(out),
        }
    }

    /// The backend's next chunk, moved in (the core's own pump): never [`Verdict::AsIs`].
    fn chunk_owned(&mut self, chunk: Vec<u8>) -> Verdict {
        if let Some(ended) = self.ended() {
            return ended;
        }
        let out = self.scanner.feed(chunk);
        self.forward(out)
    }

    /// The backend ended its body (before `[DONE]`, or the stream would have ended already).
    pub fn closed(&mut self) -> Verdict {
        self.ended().unwrap_or_else(|| self.fail(ENDED_EARLY, Vec::new()))
    }

    /// Reading the backend's body failed (a reset, or the body let go of by whoever reported
    /// the end).
    pub fn failed(&mut self) -> Verdict {
        self.ended().unwrap_or_else(|| self.fail(FAILED, Vec::new()))
    }

    /// When waiting for the next chunk runs out (ms on the runtime's clock), and which limit
    /// that is. `waiting_since_ms`: when the pump began waiting for the backend; `None` while it
    /// is not (the client is not reading), when only the total deadline counts.
    pub fn due(&self, waiting_since_ms: Option<u64>) -> (u64, TimeoutPhase) {
        match waiting_since_ms {
            Some(since) if self.timing.deadline_ms.saturating_sub(since) > self.timing.idle_ms => {
                (since.saturating_add(self.timing.idle_ms), TimeoutPhase::Idle)
            }
            _ => (self.timing.deadline_ms, TimeoutPhase::Total),
        }
    }

    /// The wait for the next chunk ran out: the final event.
    pub fn timed_out(&mut self, phase: TimeoutPhase) -> Verdict {
        self.end_with(StreamEnd::Timeout, GatewayError::UpstreamTimeout { phase }, Vec::new())
    }

    /// A platform's timer fired at `now_ms`: how long until it should fire again, or the end
    /// (a timeout, or an end reported meanwhile by someone else).
    pub fn tick(&mut self, now_ms: u64, waiting_since_ms: Option<u64>) -> Result<u64, Verdict> {
        if let Some(ended) = self.ended() {
            return Err(ended);
        }
        let (at, phase) = self.due(waiting_since_ms);
        if now_ms >= at {
            Err(self.timed_out(phase))
        } else {
            Ok(at - now_ms)
        }
    }

    /// The end, if someone else reported it (the total deadline passing while the client did not
    /// read, or the client gone): a stream cut by the deadline still tells the client, once.
    pub fn ended(&mut self) -> Option<Verdict> {
        match self.guard.0.end() {
            Some(StreamEnd::Timeout) if !self.told && self.scanner.stopped().is_none() && !self.scanner.done() => {
                self.told = true;
                let error = GatewayError::UpstreamTimeout { phase: TimeoutPhase::Total };
                Some(Verdict::End(self.error_event(error)))
            }
            Some(_) => Some(Verdict::End(Vec::new())),
            None => None,
        }
    }

    /// What the scanner returned for a chunk: forward it, or end the stream.
    fn forward(&mut self, out: Vec<u8>) -> Verdict {
        self.guard.0.count(self.scanner.content_events(), &self.clock);
        match self.scanner.stopped().cloned() {
            // Relay what came before the bad event, then end with the gateway's own error.
            Some(Stop::Malformed) => return self.fail(MALFORMED, out),
            Some(Stop::BackendError { message, .. }) => {
                let message = message.unwrap_or_else(|| FAILED.into());
                return self.end_with(StreamEnd::UpstreamError, GatewayError::Upstream { message }, out);
            }
            None => {}
        }
        if self.scanner.done() {
            // `[DONE]` is the end, whether or not the backend closes its side.
            self.guard.0.fire(StreamEnd::Done, self.scanner.usage());
            return Verdict::End(out);
        }
        Verdict::Send(out)
    }

    fn fail(&mut self, message: &str, before: Vec<u8>) -> Verdict {
        self.end_with(StreamEnd::UpstreamError, GatewayError::Upstream { message: message.into() }, before)
    }

    /// Ends the stream: what came `before` the failure, then one OpenAI-shaped error event.
    fn end_with(&mut self, end: StreamEnd, error: GatewayError, mut before: Vec<u8>) -> Verdict {
        self.told = true;
        self.guard.0.fire(end, self.scanner.usage());
        before.extend_from_slice(&self.error_event(error));
        Verdict::End(before)
    }

    /// The stream's final error event, in its API's shape.
    fn error_event(&self, error: GatewayError) -> Vec<u8> {
        error.to_sse_event(self.scanner.dialect(), self.scanner.relayed())
    }
}

/// Reports the stream's end; if dropped first, the client went away.
pub(super) struct EndGuard(pub(super) StreamEnding);

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.0.fire(StreamEnd::ClientClosed, None);
    }
}

/// The client's stream, pumped by the core: `pipe`'s first events, then `body` chunk by chunk as
/// it arrives, each wait bounded by the idle and total deadlines, until the pipe says it ended.
pub fn stream<R: Runtime + 'static>(pipe: Pipe, body: BodyStream, runtime: R) -> BodyStream {
    let pump = Pump { pipe, body, runtime, started: false };
    Box::pin(futures::stream::unfold(pump, Pump::next))
}

/// The state of a stream the core pumps itself.
struct Pump<R> {
    pipe: Pipe,
    body: BodyStream,
    runtime: R,
    /// Whether the first events went out.
    started: bool,
}

type Item = Result<Vec<u8>, crate::core::http::BodyError>;

impl<R: Runtime> Pump<R> {
    /// Yields the next bytes for the client; `None` once the stream has ended.
    async fn next(mut self) -> Option<(Item, Pump<R>)> {
        loop {
            let verdict = if !self.started {
                self.started = true;
                self.pipe.first()
            } else {
                match self.pipe.ended() {
                    Some(ended) => ended,
                    None => self.wait().await,
                }
            };
            match verdict {
                Verdict::Send(out) | Verdict::End(out) if !out.is_empty() => return Some((Ok(out), self)),
                Verdict::End(_) => return None,
                Verdict::Send(_) | Verdict::AsIs => {}
            }
        }
    }

    /// Waits for the backend's next chunk within the idle and total deadlines.
    async fn wait(&mut self) -> Verdict {
        let now = self.runtime.now_ms();
        let (at, phase) = self.pipe.due(Some(now));
        match timeout(&self.runtime, at.saturating_sub(now).max(1), self.body.next()).await {
            None => self.pipe.timed_out(phase),
            Some(Some(Ok(chunk))) => self.pipe.chunk_owned(chunk),
            Some(Some(Err(_))) => self.pipe.failed(),
            Some(None) => self.pipe.closed(),
        }
    }
}
