//! Sends a validated chat request to a backend — failing over to the next before the client has
//! received anything — and relays its answer.
//!
//! Non-stream answers are read whole (they are small), checked to be JSON and scanned for usage.
//! Streams are relayed chunk by chunk through the [`SseScanner`]; the gateway commits to `200` only
//! once the backend's first bytes have arrived, so failures before that are ordinary HTTP errors
//! and failures after it become one final `data: {"error":…}` event.

use super::balance::{Breaker, HealthBook};
use super::config::Backend;
use super::error::GatewayError;
use super::http::{read_capped, BodyStream, Headers};
use super::openai::CompletionUsage;
use super::runtime::{timeout, Runtime};
use super::sse::{SseScanner, Usage};
use super::upstream::{Upstream, UpstreamRequest, UpstreamResponse};
use super::upstream_error::normalise;
use super::validate::ValidatedChat;
use futures::stream::{self, StreamExt};
use std::cell::Cell;
use std::rc::Rc;

/// Largest non-stream answer we accept from a backend.
const MAX_COMPLETION_BYTES: usize = 32 << 20;
/// Largest backend error body we read to find its message.
const MAX_ERROR_BYTES: usize = 64 << 10;
/// Largest single SSE event we hold while waiting for its end.
const MAX_EVENT_BYTES: usize = 4 << 20;

/// Request headers never forwarded: hop-by-hop ones (RFC 9110 §7.6.1), the client's credentials,
/// its cookies, the platform's own (`cf-*`), and ones we set ourselves.
const NOT_FORWARDED: &[&str] = &[
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length", "authorization",
    "api-key", "cookie", "accept-encoding", "content-type", "accept", "x-request-id",
    "x-forwarded-for", "x-real-ip", "forwarded", "true-client-ip",
];

/// Builds the backend request: the client's end-to-end headers, the backend's credential.
pub fn upstream_request(
    backend: &Backend,
    chat: &ValidatedChat,
    client_headers: &Headers,
    request_id: &str,
) -> UpstreamRequest {
    let listed_in_connection: Vec<String> = client_headers
        .get("connection")
        .map(|v| v.split(',').map(|h| h.trim().to_ascii_lowercase()).collect())
        .unwrap_or_default();
    let mut headers: Headers = client_headers
        .iter()
        .filter(|(name, _)| {
            let name = name.to_ascii_lowercase();
            !NOT_FORWARDED.contains(&name.as_str())
                && !name.starts_with("cf-")
                && !listed_in_connection.contains(&name)
        })
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    headers.set("content-type", "application/json");
    headers.set("accept", if chat.stream { "text/event-stream" } else { "application/json" });
    headers.set("x-request-id", request_id);
    if let Some(key) = &backend.api_key {
        headers.set("authorization", format!("Bearer {}", key.expose()));
    }
    UpstreamRequest {
        method: "POST",
        url: format!("{}/v1/chat/completions", backend.base_url),
        headers,
        body: Some(chat.upstream_body.clone()),
    }
}

/// How a relayed stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The backend sent `[DONE]` and closed.
    Done,
    /// The backend failed or broke the stream after it started; the client got an error event.
    UpstreamError,
    /// The client went away (the stream was dropped before its end).
    ClientClosed,
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

/// A backend's successful answer, ready for the client.
pub enum Relayed {
    Completion { body: Vec<u8>, usage: Option<Usage> },
    /// `relayed` counts the content chunks sent so far, readable while the stream runs.
    Stream { body: BodyStream, relayed: Rc<Cell<u64>> },
}

/// How long the backend may take.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// From sending to the backend's response headers.
    pub connect_ms: u64,
    /// From sending to the backend's first body bytes.
    pub first_byte_ms: u64,
    /// Between two chunks of a stream.
    pub idle_ms: u64,
    /// From the first attempt to the end of the answer (stream included), failovers included.
    pub total_ms: u64,
}

/// Where to send a request, and what to do when a backend fails.
pub struct Attempts<'a, 'b> {
    /// In the order to try them (see [`super::balance::attempt_order`]).
    pub backends: &'b [&'a Backend],
    /// Backends tried at most.
    pub max: u32,
    pub health: &'b HealthBook,
    pub breaker: Breaker,
}

/// One attempt that did not produce an answer.
struct Failed {
    /// What the client is told if no other backend answers.
    error: GatewayError,
    /// Whether another backend may be tried (not for a request the backend found invalid).
    failover: bool,
    /// Whether it counts against the backend's health (a busy backend is not a broken one).
    unhealthy: bool,
}

impl Failed {
    fn broken(error: GatewayError) -> Self {
        Failed { error, failover: true, unhealthy: true }
    }
}

/// Sends the request to the first backend that answers, failing over on connection errors,
/// timeouts, 5xx and 429 — but only before the client has received a byte. Returns the answer
/// and the backend that gave it.
pub async fn send_chat<'a, U: Upstream, R: Runtime + Clone + 'static>(
    upstream: &U,
    runtime: &R,
    attempts: Attempts<'a, '_>,
    build: &dyn Fn(&Backend) -> UpstreamRequest,
    chat: &ValidatedChat,
    deadlines: Deadlines,
    on_end: OnStreamEnd,
) -> Result<(Relayed, &'a Backend, u32), GatewayError> {
    let deadline_ms = runtime.now_ms().saturating_add(deadlines.total_ms);
    let mut on_end = Some(on_end);
    let mut last = None;
    let mut tried = 0;
    for backend in attempts.backends.iter().copied().take(attempts.max as usize) {
        if runtime.now_ms() >= deadline_ms {
            last = Some(GatewayError::UpstreamTimeout);
            break;
        }
        tried += 1;
        match attempt(upstream, runtime, build(backend), chat, deadlines, deadline_ms, &mut on_end).await {
            Ok(relayed) => {
                attempts.health.record_success(&backend.name);
                return Ok((relayed, backend, tried));
            }
            Err(failed) => {
                if failed.unhealthy {
                    attempts.health.record_failure(&backend.name, runtime.now_ms(), attempts.breaker);
                }
                last = Some(failed.error);
                if !failed.failover {
                    break;
                }
            }
        }
    }
    Err(last.unwrap_or(GatewayError::ServiceUnavailable {
        message: "No inference backend is available for this model.".into(),
    }))
}

/// One backend, up to its first bytes (streams) or its whole answer (completions).
async fn attempt<R: Runtime + Clone + 'static, U: Upstream>(
    upstream: &U,
    runtime: &R,
    request: UpstreamRequest,
    chat: &ValidatedChat,
    deadlines: Deadlines,
    deadline_ms: u64,
    on_end: &mut Option<OnStreamEnd>,
) -> Result<Relayed, Failed> {
    let sent = runtime.now_ms();
    let first_byte_by = sent.saturating_add(deadlines.first_byte_ms).min(deadline_ms);
    let headers_by = sent.saturating_add(deadlines.connect_ms).min(first_byte_by);
    let left = |by: u64| by.saturating_sub(runtime.now_ms()).max(1);
    let mut response = match timeout(runtime, left(headers_by), upstream.send(request)).await {
        None => return Err(Failed::broken(GatewayError::UpstreamTimeout)),
        Some(Err(_)) => {
            let message = "The inference backend could not be reached.".into();
            return Err(Failed::broken(GatewayError::Upstream { message }));
        }
        Some(Ok(response)) => response,
    };
    if !(200..300).contains(&response.status) {
        let status = response.status;
        let error = read_error(runtime, response, left(first_byte_by)).await;
        return Err(match status {
            429 => Failed { error, failover: true, unhealthy: false },
            400 | 413 | 422 => Failed { error, failover: false, unhealthy: false },
            _ => Failed::broken(error),
        });
    }
    if !chat.stream {
        return match timeout(runtime, left(deadline_ms), read_completion(response)).await {
            None => Err(Failed::broken(GatewayError::UpstreamTimeout)),
            Some(result) => result.map_err(Failed::broken),
        };
    }
    let is_sse = response
        .headers
        .get("content-type")
        .is_some_and(|t| t.trim_start().to_ascii_lowercase().starts_with("text/event-stream"));
    if !is_sse {
        let message = "The inference backend did not answer with a stream.".into();
        return Err(Failed::broken(GatewayError::Upstream { message }));
    }
    let first = match timeout(runtime, left(first_byte_by), response.body.next()).await {
        None => return Err(Failed::broken(GatewayError::UpstreamTimeout)),
        Some(Some(Ok(chunk))) => chunk,
        Some(_) => {
            let message = "The inference backend closed the stream before sending anything.".into();
            return Err(Failed::broken(GatewayError::Upstream { message }));
        }
    };
    let Some(on_end) = on_end.take() else {
        let message = "internal: a stream was committed twice".into();
        return Err(Failed { error: GatewayError::Upstream { message }, failover: false, unhealthy: false });
    };
    let relay = Relay {
        upstream: response.body,
        scanner: SseScanner::new(!chat.client_wants_usage, MAX_EVENT_BYTES),
        first: Some(first),
        runtime: runtime.clone(),
        idle_ms: deadlines.idle_ms,
        deadline_ms,
        on_end: EndGuard { on_end: Some(on_end), content_events: Rc::new(Cell::new(0)) },
    };
    let relayed = relay.on_end.content_events.clone();
    Ok(Relayed::Stream { body: Box::pin(stream::unfold(relay, Relay::next)), relayed })
}

async fn read_error<R: Runtime>(runtime: &R, mut response: UpstreamResponse, left_ms: u64) -> GatewayError {
    let body = timeout(runtime, left_ms, read_capped(&mut response.body, MAX_ERROR_BYTES))
        .await
        .and_then(Result::ok)
        .unwrap_or_default();
    normalise(response.status, &response.headers, &body)
}

async fn read_completion(mut response: UpstreamResponse) -> Result<Relayed, GatewayError> {
    let body = read_capped(&mut response.body, MAX_COMPLETION_BYTES).await.map_err(|_| {
        GatewayError::Upstream { message: "The inference backend's answer was cut off or too large.".into() }
    })?;
    match serde_json::from_slice::<CompletionUsage>(&body) {
        Ok(parsed) => Ok(Relayed::Completion { body, usage: parsed.usage }),
        Err(_) => Err(GatewayError::Upstream {
            message: "The inference backend answered with something that is not a chat completion.".into(),
        }),
    }
}

/// The state of one relayed stream.
struct Relay<R> {
    upstream: BodyStream,
    scanner: SseScanner,
    /// The chunk read before committing to 200.
    first: Option<Vec<u8>>,
    runtime: R,
    /// The longest wait for the next chunk.
    idle_ms: u64,
    /// When the whole answer must be done (ms on the runtime's clock).
    deadline_ms: u64,
    on_end: EndGuard,
}

/// Reports the end of a stream exactly once; if dropped first, the client went away.
struct EndGuard {
    on_end: Option<OnStreamEnd>,
    /// Kept up to date so a drop can still report what was relayed.
    content_events: Rc<Cell<u64>>,
}

impl EndGuard {
    fn fired(&self) -> bool {
        self.on_end.is_none()
    }

    fn fire(&mut self, end: StreamEnd, usage: Option<Usage>) {
        if let Some(on_end) = self.on_end.take() {
            on_end(StreamSummary { end, usage, content_events: self.content_events.get() });
        }
    }
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.fire(StreamEnd::ClientClosed, None);
    }
}

type Item = Result<Vec<u8>, super::http::BodyError>;

impl<R: Runtime> Relay<R> {
    /// Yields the next bytes for the client; `None` once the stream has ended.
    async fn next(mut self) -> Option<(Item, Relay<R>)> {
        if self.on_end.fired() {
            return None; // already ended (after `[DONE]` or a final error event)
        }
        loop {
            let chunk = match self.first.take() {
                Some(first) => Some(Ok(first)),
                None => {
                    let left = self.deadline_ms.saturating_sub(self.runtime.now_ms()).min(self.idle_ms).max(1);
                    match timeout(&self.runtime, left, self.upstream.next()).await {
                        Some(chunk) => chunk,
                        None => return Some(self.fail_with(GatewayError::UpstreamTimeout)),
                    }
                }
            };
            match chunk {
                Some(Ok(chunk)) => match self.scanner.feed(chunk) {
                    Ok(out) if self.scanner.malformed() => {
                        // Relay what came before the bad event, then end with the error.
                        let (error, relay) = self.fail("The inference backend sent a malformed stream.");
                        let bytes = error.map(|error| [out, error].concat());
                        return Some((bytes, relay));
                    }
                    Ok(out) if self.scanner.done() => {
                        // `[DONE]` is the end, whether or not the backend closes its side.
                        self.on_end.content_events.set(self.scanner.content_events());
                        let usage = self.scanner.usage();
                        self.on_end.fire(StreamEnd::Done, usage);
                        return (!out.is_empty()).then_some((Ok(out), self));
                    }
                    Ok(out) if out.is_empty() => continue,
                    Ok(out) => {
                        self.on_end.content_events.set(self.scanner.content_events());
                        return Some((Ok(out), self));
                    }
                    Err(_) => return Some(self.fail("The inference backend sent a malformed stream.")),
                },
                Some(Err(_)) => return Some(self.fail("The inference backend failed during the stream.")),
                None => return Some(self.fail("The inference backend ended the stream early.")),
            }
        }
    }

    /// Ends the stream with one OpenAI-shaped error event.
    fn fail(self, message: &str) -> (Item, Relay<R>) {
        self.fail_with(GatewayError::Upstream { message: message.into() })
    }

    fn fail_with(mut self, error: GatewayError) -> (Item, Relay<R>) {
        self.on_end.content_events.set(self.scanner.content_events());
        let usage = self.scanner.usage();
        self.on_end.fire(StreamEnd::UpstreamError, usage);
        (Ok(error.to_sse_event()), self)
    }
}
