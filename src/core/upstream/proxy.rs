//! Sends a validated chat request to a backend — failing over to the next only when the failure
//! was the backend's and nothing can have been generated — and relays its answer.
//!
//! Timeouts, per phase (README "Timeouts"):
//! - a **stream** must send its response headers within the connect timeout (a server that
//!   streams answers with headers as soon as it takes the request, so none means nothing started:
//!   fail over, count it), its first bytes within the first-byte timeout (time to first token:
//!   the backend may be generating, so a 504 — no failover, no ejection), each next chunk within
//!   the idle timeout and the whole stream within the total timeout (after the first byte, an
//!   error event);
//! - a **non-stream** answer's headers come only after its last token (vLLM, SGLang, TGI,
//!   llama.cpp), so it is waited for up to the total timeout, and a timeout is a 504 that is
//!   neither failed over nor held against the backend.
//!
//! Non-stream answers are read whole (they are small), checked to be JSON and scanned for usage.
//! Streams are relayed chunk by chunk through the [`SseScanner`]; the gateway commits to `200` only
//! once the backend's first bytes have arrived, so failures before that are ordinary HTTP errors
//! and failures after it become one final `data: {"error":…}` event.

use crate::core::config::Breaker;
use crate::core::upstream::balance::HealthBook;
use crate::core::config::Backend;
use crate::core::error::{GatewayError, TimeoutPhase};
use crate::core::http::{read_capped, BodyStream, Headers, ReadError};
use crate::core::openai::CompletionUsage;
use crate::core::runtime::{timeout, Runtime};
use crate::core::openai::Usage;
use crate::core::upstream::sse::{SseScanner, Stop};
use crate::core::upstream::{Upstream, UpstreamRequest, UpstreamResponse};
use crate::core::upstream::errors::{classify, Blame, Counts};
use futures::channel::oneshot;
use futures::stream::{self, StreamExt};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// Largest non-stream answer we accept from a backend.
const MAX_COMPLETION_BYTES: usize = 32 << 20;
/// Largest backend error body we read to find its message.
const MAX_ERROR_BYTES: usize = 64 << 10;
/// Largest single SSE event we hold while waiting for its end.
const MAX_EVENT_BYTES: usize = 4 << 20;

/// What the backend is sent besides its own credential and the body: an allow-list, so no
/// credential, cookie, forwarding or hop-by-hop header of the caller's ever reaches it.
pub struct Forwarded<'a> {
    /// The backend's `x-request-id` (always a UUID, see [`crate::core::request_id`]).
    pub request_id: &'a str,
    /// The W3C trace context for the backend's span, already validated.
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
}

/// Builds the backend request: the allow-listed headers, the backend's credential, the body.
pub fn upstream_request(backend: &Backend, path: &str, stream: bool, body: Vec<u8>, forwarded: &Forwarded<'_>) -> UpstreamRequest {
    let mut headers = Headers::new();
    headers.set("content-type", "application/json");
    headers.set("accept", if stream { "text/event-stream" } else { "application/json" });
    headers.set("x-request-id", forwarded.request_id);
    if let Some(traceparent) = forwarded.traceparent {
        headers.set("traceparent", traceparent);
    }
    if let Some(tracestate) = forwarded.tracestate {
        headers.set("tracestate", tracestate);
    }
    if let Some(key) = &backend.api_key {
        headers.set("authorization", format!("Bearer {}", key.expose()));
    }
    UpstreamRequest { method: "POST", url: format!("{}{path}", backend.base_url), headers, body: Some(body) }
}

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSummary {
    pub end: StreamEnd,
    /// The backend's own count, when its usage chunk arrived.
    pub usage: Option<Usage>,
    /// Chunks with choices relayed (about one token each), for streams cut short.
    pub content_events: u64,
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
    /// The backend's body, let go of when the stream ends.
    upstream: RefCell<Option<Rc<RefCell<Option<BodyStream>>>>>,
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
        let on_end = self.0.on_end.borrow_mut().take();
        if let Some(on_end) = on_end {
            on_end(StreamSummary { end, usage, content_events: self.0.content_events.get() });
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

    fn count(&self, content_events: u64) {
        self.0.content_events.set(content_events);
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

    fn poll_next(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        match self.0.borrow_mut().as_mut() {
            Some(body) => body.as_mut().poll_next(cx),
            None => std::task::Poll::Ready(None),
        }
    }
}

/// A backend's successful answer, ready for the client.
pub enum Relayed {
    Completion { body: Vec<u8>, usage: Option<Usage> },
    /// A stream, which must be over by `deadline_ms` (on the runtime's clock).
    Stream { body: BodyStream, deadline_ms: u64 },
}

/// How long the backend may take (see the module doc for what each phase means).
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub connect_ms: u64,
    pub first_byte_ms: u64,
    pub idle_ms: u64,
    /// From the first attempt to the end of the answer (stream included), failovers included.
    pub total_ms: u64,
}

impl From<&crate::core::config::Timeouts> for Deadlines {
    fn from(t: &crate::core::config::Timeouts) -> Self {
        Deadlines { connect_ms: t.connect_ms, first_byte_ms: t.first_byte_ms, idle_ms: t.idle_ms, total_ms: t.total_ms }
    }
}

/// Where to send a request, and what to do when a backend fails.
pub struct Attempts<'a, 'b> {
    /// In the order to try them (see [`crate::core::upstream::balance::attempt_order`]).
    pub backends: &'b [&'a Backend],
    /// Backends tried at most.
    pub max: u32,
    pub health: &'b HealthBook,
    pub breaker: Breaker,
}

/// What the relay needs to know about the request.
#[derive(Clone, Copy)]
pub struct Exchange {
    pub stream: bool,
    /// Whether the client asked for the usage chunk itself (else it is dropped).
    pub client_wants_usage: bool,
}

/// One attempt that did not produce an answer.
struct Failed {
    /// What the client is told if no other backend answers.
    error: GatewayError,
    blame: Blame,
}

impl Failed {
    fn new(error: GatewayError, blame: Blame) -> Self {
        Failed { error, blame }
    }

    fn upstream(message: &str, blame: Blame) -> Self {
        Failed::new(GatewayError::Upstream { message: message.into() }, blame)
    }
}

/// Sends the request to the first backend that answers, failing over only on the backend's own
/// faults and only before the client has received a byte. Returns the answer, the backend that
/// gave it and how many were tried.
pub async fn send<'a, U: Upstream, R: Runtime + Clone + 'static>(
    upstream: &U,
    runtime: &R,
    attempts: Attempts<'a, '_>,
    build: &dyn Fn(&Backend) -> UpstreamRequest,
    exchange: Exchange,
    deadlines: Deadlines,
    ending: StreamEnding,
) -> Result<(Relayed, &'a Backend, u32), GatewayError> {
    let deadline_ms = runtime.now_ms().saturating_add(deadlines.total_ms);
    let mut last = None;
    let mut tried = 0;
    // Backends that failed in a way the request itself may have caused: held against them only
    // if another backend then answers.
    let mut suspects: Vec<&Backend> = Vec::new();
    for backend in attempts.backends.iter().copied().take(attempts.max as usize) {
        if runtime.now_ms() >= deadline_ms {
            last = Some(GatewayError::UpstreamTimeout { phase: TimeoutPhase::Total });
            break;
        }
        tried += 1;
        match attempt(upstream, runtime, build(backend), exchange, deadlines, deadline_ms, &ending).await {
            Ok(relayed) => {
                for suspect in suspects {
                    attempts.health.record_failure(&suspect.name, runtime.now_ms(), attempts.breaker);
                }
                attempts.health.record_success(&backend.name);
                return Ok((relayed, backend, tried));
            }
            Err(failed) => {
                match failed.blame.counts {
                    Counts::Now => {
                        attempts.health.record_failure(&backend.name, runtime.now_ms(), attempts.breaker);
                    }
                    Counts::IfAnotherAnswers => suspects.push(backend),
                    Counts::Never => {}
                }
                last = Some(failed.error);
                if !failed.blame.failover {
                    break;
                }
            }
        }
    }
    Err(last.unwrap_or(GatewayError::ServiceUnavailable {
        message: "No inference backend is available for this model.".into(),
        retry_after_ms: None,
    }))
}

/// One backend, up to its first event (streams) or its whole answer (completions).
async fn attempt<R: Runtime + Clone + 'static, U: Upstream>(
    upstream: &U,
    runtime: &R,
    request: UpstreamRequest,
    exchange: Exchange,
    deadlines: Deadlines,
    deadline_ms: u64,
    ending: &StreamEnding,
) -> Result<Relayed, Failed> {
    let sent = runtime.now_ms();
    let left = |by: u64| by.saturating_sub(runtime.now_ms()).max(1);
    let first_byte_by = sent.saturating_add(deadlines.first_byte_ms).min(deadline_ms);
    // A stream's headers come at once; a completion's only with its last token.
    let (headers_by, headers_late) = if exchange.stream {
        // No headers at all: the backend never took the request, whichever limit came first —
        // though some servers work (decode media, tokenize) before they answer, so it counts
        // against the backend only if another one answers.
        let connect_by = sent.saturating_add(deadlines.connect_ms).min(first_byte_by);
        (connect_by, Failed::new(GatewayError::UpstreamTimeout { phase: TimeoutPhase::Connect }, Blame::SUSPECT))
    } else {
        (deadline_ms, Failed::new(GatewayError::UpstreamTimeout { phase: TimeoutPhase::Total }, Blame::NOBODY))
    };
    let mut response = match timeout(runtime, left(headers_by), upstream.send(request)).await {
        None => return Err(headers_late),
        Some(Err(_)) => return Err(Failed::upstream("The inference backend could not be reached.", Blame::BROKEN)),
        Some(Ok(response)) => response,
    };
    if !(200..300).contains(&response.status) {
        let (error, blame) = read_error(runtime, response, left(deadline_ms.min(runtime.now_ms() + deadlines.idle_ms))).await;
        return Err(Failed::new(error, blame));
    }
    if !exchange.stream {
        return match timeout(runtime, left(deadline_ms), read_completion(response)).await {
            None => Err(Failed::new(GatewayError::UpstreamTimeout { phase: TimeoutPhase::Total }, Blame::NOBODY)),
            Some(result) => result,
        };
    }
    if !crate::core::http::is_event_stream(&response.headers) {
        return Err(Failed::upstream("The inference backend did not answer with a stream.", Blame::BROKEN));
    }
    // Nothing is committed until the first complete event: an error there is still an ordinary
    // HTTP error (with failover when it is the backend's), never a broken 200 stream.
    let mut scanner = SseScanner::new(!exchange.client_wants_usage, MAX_EVENT_BYTES);
    let first = loop {
        let chunk = match timeout(runtime, left(first_byte_by), response.body.next()).await {
            None => {
                let phase = if first_byte_by >= deadline_ms { TimeoutPhase::Total } else { TimeoutPhase::FirstByte };
                return Err(Failed::new(GatewayError::UpstreamTimeout { phase }, Blame::NOBODY));
            }
            Some(Some(Ok(chunk))) => chunk,
            Some(_) => return Err(Failed::upstream("The inference backend closed the stream before sending anything.", Blame::BROKEN)),
        };
        let out = scanner.feed(chunk).map_err(|_| Failed::upstream("The inference backend sent a malformed stream.", Blame::BROKEN))?;
        match scanner.stopped() {
            Some(Stop::BackendError { message, request_fault }) if out.is_empty() => {
                let message = message.clone().unwrap_or_else(|| "The inference backend failed before answering.".into());
                return Err(match request_fault {
                    true => Failed::new(GatewayError::UpstreamRejected { status: 400, message }, Blame::NOBODY),
                    false => Failed::new(GatewayError::Upstream { message }, Blame::SUSPECT),
                });
            }
            Some(Stop::Malformed) if out.is_empty() => {
                return Err(Failed::upstream("The inference backend sent a malformed stream.", Blame::BROKEN))
            }
            _ => {}
        }
        if !out.is_empty() || scanner.done() || scanner.stopped().is_some() {
            break out;
        }
    };
    let relay = Relay {
        upstream: ending.hold(response.body),
        scanner,
        first: Some(first),
        runtime: runtime.clone(),
        idle_ms: deadlines.idle_ms,
        deadline_ms,
        guard: EndGuard(ending.clone()),
        told: false,
    };
    Ok(Relayed::Stream { body: Box::pin(stream::unfold(relay, Relay::next)), deadline_ms })
}

async fn read_error<R: Runtime>(runtime: &R, mut response: UpstreamResponse, left_ms: u64) -> (GatewayError, Blame) {
    let body = timeout(runtime, left_ms, read_capped(&mut response.body, MAX_ERROR_BYTES))
        .await
        .and_then(Result::ok)
        .unwrap_or_default();
    classify(response.status, &response.headers, &body)
}

async fn read_completion(mut response: UpstreamResponse) -> Result<Relayed, Failed> {
    let body = read_capped(&mut response.body, MAX_COMPLETION_BYTES).await.map_err(|e| match e {
        // The generation is done: replaying it elsewhere would only produce it again.
        ReadError::TooLarge => Failed::upstream("The inference backend's answer was too large to relay.", Blame::NOBODY),
        ReadError::Broken(_) => Failed::upstream("The inference backend's answer was cut off.", Blame::BROKEN),
    })?;
    match serde_json::from_slice::<CompletionUsage>(&body) {
        Ok(parsed) => Ok(Relayed::Completion { body, usage: parsed.usage }),
        Err(_) => Err(Failed::upstream("The inference backend answered with something that is not a completion.", Blame::BROKEN)),
    }
}

/// The state of one relayed stream.
struct Relay<R> {
    upstream: Detachable,
    scanner: SseScanner,
    /// What the first complete events gave, scanned before committing to 200.
    first: Option<Vec<u8>>,
    runtime: R,
    /// The longest wait for the next chunk.
    idle_ms: u64,
    /// When the whole answer must be done (ms on the runtime's clock).
    deadline_ms: u64,
    guard: EndGuard,
    /// Whether the client was sent the stream's final error event.
    told: bool,
}

/// Reports the stream's end; if dropped first, the client went away.
struct EndGuard(StreamEnding);

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
                    let event = GatewayError::UpstreamTimeout { phase: TimeoutPhase::Total }.to_sse_event();
                    return Some((Ok(event), self));
                }
                Some(_) => return None,
                None => {}
            }
            let now = self.runtime.now_ms();
            let (wait, phase) = if self.deadline_ms.saturating_sub(now) <= self.idle_ms {
                (self.deadline_ms.saturating_sub(now), TimeoutPhase::Total)
            } else {
                (self.idle_ms, TimeoutPhase::Idle)
            };
            let chunk = match timeout(&self.runtime, wait.max(1), self.upstream.next()).await {
                None => return Some(self.end_with(StreamEnd::Timeout, GatewayError::UpstreamTimeout { phase }, Vec::new())),
                Some(Some(Ok(chunk))) => chunk,
                Some(Some(Err(_))) => return Some(self.fail("The inference backend failed during the stream.", Vec::new())),
                Some(None) if self.guard.0.end().is_some() => continue, // let go of by another owner
                Some(None) => return Some(self.fail("The inference backend ended the stream early.", Vec::new())),
            };
            let out = match self.scanner.feed(chunk) {
                Ok(out) => out,
                Err(_) => return Some(self.fail("The inference backend sent a malformed stream.", Vec::new())),
            };
            match self.forward(out) {
                Step::Yield(item) => return Some(item),
                Step::End => return None,
                Step::Read(relay) => self = relay,
            }
        }
    }

    /// What the scanner returned for a chunk: forward it, end the stream, or read on.
    fn forward(self, out: Vec<u8>) -> Step<R> {
        self.guard.0.count(self.scanner.content_events());
        match self.scanner.stopped().cloned() {
            // Relay what came before the bad event, then end with the gateway's own error.
            Some(Stop::Malformed) => return Step::Yield(self.fail("The inference backend sent a malformed stream.", out)),
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
        before.extend_from_slice(&error.to_sse_event());
        (Ok(before), self)
    }
}
