//! Sends a validated request to a backend — failing over to the next only when the failure was
//! the backend's and nothing can have been generated — and relays its answer.
//!
//! Timeouts, per phase (README "Timeouts"):
//! - a **stream** must send its response headers within the connect timeout (the backend's own,
//!   or the gateway's: vLLM, SGLang and TGI answer with headers as soon as they take the request,
//!   so none means nothing started: fail over, and count it if another backend answers), its
//!   first content within the first-byte
//!   timeout (time to first token: the backend may be generating, so a 504 — no failover, no
//!   ejection); after that the [`relay`] bounds each next chunk by the idle timeout and the whole
//!   stream by the total timeout;
//! - a **non-stream** answer's headers come only after its last token (vLLM, SGLang, TGI,
//!   llama.cpp), so it is waited for up to the total timeout, and a timeout is a 504 that is
//!   neither failed over nor held against the backend.
//!
//! Non-stream answers are read whole (they are small), checked to be the endpoint's object and
//! scanned for usage. A stream answers `200` once its first content has arrived, so failures
//! before that are ordinary HTTP errors — or, if the search takes longer than the commit time,
//! the stream is committed behind keep-alive comments and the search goes on ([`commit`]).
//! Failures after the first content are one final error event.

use crate::core::config::Backend;
use crate::core::config::{Breaker, Timeouts};
use crate::core::error::{GatewayError, TimeoutPhase};
use crate::core::http::{read_capped, BodyStream, Headers, ReadError};
use crate::core::openai::{Endpoint, Usage};
use crate::core::runtime::{timeout, Runtime};
use crate::core::upstream::balance::HealthBook;
use crate::core::upstream::commit;
use crate::core::upstream::errors::{classify, Blame, Counts};
pub use crate::core::upstream::found::Answered;
use crate::core::upstream::found::{Found, Search};
use crate::core::upstream::relay::{self, StreamEnding};
use crate::core::upstream::sse::{SseScanner, Stop};
use crate::core::upstream::{Upstream, UpstreamRequest, UpstreamResponse};
use futures::future::{select, Either};
use futures::stream::StreamExt;
use std::rc::Rc;

/// Largest non-stream answer we accept from a backend.
pub(super) const MAX_COMPLETION_BYTES: usize = 32 << 20;
/// Largest backend error body we read to find its message.
const MAX_ERROR_BYTES: usize = 64 << 10;
/// Most bytes of opening events (before the first content) held back before they go out anyway.
const MAX_HELD_BYTES: usize = 1 << 20;
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
pub fn upstream_request(
    backend: &Backend,
    path: &str,
    stream: bool,
    body: Vec<u8>,
    forwarded: &Forwarded<'_>,
) -> UpstreamRequest {
    let mut request = bare_request(backend, "POST", path, forwarded);
    request.headers.set("content-type", "application/json");
    if stream {
        request.headers.set("accept", "text/event-stream");
    }
    request.body = Some(body);
    request
}

/// A request without a body to `path` on `backend`: the allow-listed headers and its credential.
pub(super) fn bare_request(
    backend: &Backend,
    method: &'static str,
    path: &str,
    forwarded: &Forwarded<'_>,
) -> UpstreamRequest {
    let mut headers = Headers::new();
    headers.set("accept", "application/json");
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
    UpstreamRequest { method, url: format!("{}{path}", backend.base_url), headers, body: None }
}

/// A backend's successful answer, ready for the client.
pub enum Relayed {
    Completion {
        body: Vec<u8>,
        usage: Option<Usage>,
    },
    /// A stream, which must be over by `deadline_ms` (on the runtime's clock).
    Stream {
        body: BodyStream,
        deadline_ms: u64,
    },
}

/// A backend to try, with the request it gets.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub name: String,
    /// How long it may take to send a stream's head (its own setting, or the gateway's).
    pub connect_ms: u64,
    pub request: UpstreamRequest,
}

/// Where to send a request, and what to do when a backend fails.
pub struct Attempts {
    /// In the order to try them (see [`crate::core::upstream::balance::attempt_order`]), at most
    /// as many as may be tried.
    pub candidates: Vec<Candidate>,
    pub health: Rc<HealthBook>,
    pub breaker: Breaker,
}

/// What the relay needs to know about the request.
#[derive(Debug, Clone, Copy)]
pub struct Exchange {
    pub endpoint: Endpoint,
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
/// faults and only before the client has received any of an answer. A stream still without
/// content `GATEWAY_STREAM_COMMIT_MS` after the request arrived is committed to `200` at once and
/// kept alive with comments while the search goes on behind them ([`commit`]): the client has
/// had nothing but comments, so failing over is still invisible to it. Returns the answer and,
/// unless it was committed first, who gave it.
pub async fn send<U: Upstream + Clone + 'static, R: Runtime + Clone + 'static>(
    upstream: &U,
    runtime: &R,
    attempts: Attempts,
    exchange: Exchange,
    timeouts: &Timeouts,
    ending: StreamEnding,
) -> Result<(Relayed, Option<Answered>), GatewayError> {
    let started = runtime.now_ms();
    let deadline_ms = started.saturating_add(timeouts.total_ms);
    let commit_at = started.saturating_add(timeouts.stream_commit_ms);
    let search: Search =
        Box::pin(search(upstream.clone(), runtime.clone(), attempts, exchange, timeouts.clone(), deadline_ms));
    let timing = relay::Timing { idle_ms: timeouts.idle_ms, deadline_ms };
    if !exchange.stream || commit_at >= deadline_ms {
        return search.await.map(|found| relayed(found, upstream, runtime, timing, &ending));
    }
    let commit_timer = runtime.sleep(commit_at.saturating_sub(runtime.now_ms()));
    // 0 commits at once, before the search is first polled: a zero-length sleep is not always
    // ready at its first poll (a WASI host's clock pollable is ready only once the host has polled
    // it, by when a quick backend may have begun), and racing it would commit some streams only.
    let decided = match timeouts.stream_commit_ms {
        0 => Either::Right(((), search)),
        _ => select(search, Box::pin(commit_timer)).await,
    };
    match decided {
        Either::Left((found, _)) => found.map(|found| relayed(found, upstream, runtime, timing, &ending)),
        Either::Right((_, search)) => {
            let keepalive = commit::KeepAlive { every_ms: timeouts.keepalive_ms, dialect: exchange.endpoint.dialect() };
            let relay_with: commit::RelayWith = {
                let (upstream, runtime) = (upstream.clone(), runtime.clone());
                Box::new(move |pipe, body| upstream.relay(pipe, body, runtime.clone()))
            };
            let body = commit::committed(search, runtime.clone(), keepalive, timing, &ending, relay_with);
            Ok((Relayed::Stream { body, deadline_ms }, None))
        }
    }
}

/// The answer a backend gave, for the client: relayed from here on, by the core's pump or the
/// platform's (see [`Upstream::relay`]).
fn relayed<U: Upstream, R: Runtime + Clone + 'static>(
    found: Found,
    upstream: &U,
    runtime: &R,
    timing: relay::Timing,
    ending: &StreamEnding,
) -> (Relayed, Option<Answered>) {
    match found {
        Found::Completion { body, usage, answered } => (Relayed::Completion { body, usage }, Some(answered)),
        Found::Stream { body, scanner, first, answered } => {
            let (pipe, body) = relay::commit(body, scanner, first, runtime.clone(), timing, ending);
            let body = upstream.relay(pipe, body, runtime.clone());
            (Relayed::Stream { body, deadline_ms: timing.deadline_ms }, Some(answered))
        }
    }
}

/// Tries each candidate in turn, keeping the health book: a success once a backend's content has
/// begun, each failure by its blame.
async fn search<U: Upstream, R: Runtime>(
    upstream: U,
    runtime: R,
    attempts: Attempts,
    exchange: Exchange,
    timeouts: Timeouts,
    deadline_ms: u64,
) -> Result<Found, GatewayError> {
    let Attempts { candidates, health, breaker } = attempts;
    let mut last = None;
    // Backends that failed in a way the request itself may have caused: held against them only
    // if another backend then answers.
    let mut suspects: Vec<String> = Vec::new();
    for (tried, candidate) in (1..).zip(candidates) {
        if runtime.now_ms() >= deadline_ms {
            last = Some(GatewayError::UpstreamTimeout { phase: TimeoutPhase::Total });
            break;
        }
        let answered = Answered { backend: candidate.name.clone(), tried };
        match attempt(&upstream, &runtime, &candidate, exchange, &timeouts, deadline_ms, answered).await {
            Ok(found) => {
                for suspect in suspects {
                    health.record_failure(&suspect, runtime.now_ms(), breaker);
                }
                health.record_success(&candidate.name);
                return Ok(found);
            }
            Err(failed) => {
                match failed.blame.counts {
                    Counts::Now => {
                        health.record_failure(&candidate.name, runtime.now_ms(), breaker);
                    }
                    Counts::IfAnotherAnswers => suspects.push(candidate.name),
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

/// One backend, up to its first content (streams) or its whole answer (completions).
async fn attempt<R: Runtime, U: Upstream>(
    upstream: &U,
    runtime: &R,
    candidate: &Candidate,
    exchange: Exchange,
    timeouts: &Timeouts,
    deadline_ms: u64,
    answered: Answered,
) -> Result<Found, Failed> {
    let first_byte_by = runtime.now_ms().saturating_add(timeouts.first_byte_ms).min(deadline_ms);
    let response = answer_head(upstream, runtime, candidate, exchange, timeouts, first_byte_by, deadline_ms).await?;
    if !exchange.stream {
        return match timeout(runtime, left(runtime, deadline_ms), read_completion(exchange.endpoint, response)).await {
            None => Err(Failed::new(GatewayError::UpstreamTimeout { phase: TimeoutPhase::Total }, Blame::NOBODY)),
            Some(Ok((body, usage))) => Ok(Found::Completion { body, usage, answered }),
            Some(Err(failed)) => Err(failed),
        };
    }
    let (body, scanner, first) = first_event(runtime, response, exchange, first_byte_by, deadline_ms).await?;
    Ok(Found::Stream { body, scanner, first, answered })
}

/// Milliseconds until `by` on the runtime's clock (at least one).
fn left<R: Runtime>(runtime: &R, by: u64) -> u64 {
    by.saturating_sub(runtime.now_ms()).max(1)
}

/// Sends the request and waits for a 2xx head: a stream's comes at once (none means the backend
/// never took the request, whichever limit came first — though some servers work, decoding media
/// or tokenizing, before they answer, so it counts only if another backend answers); a
/// completion's comes only with its last token, so it is waited for until the total deadline.
async fn answer_head<R: Runtime, U: Upstream>(
    upstream: &U,
    runtime: &R,
    candidate: &Candidate,
    exchange: Exchange,
    timeouts: &Timeouts,
    first_byte_by: u64,
    deadline_ms: u64,
) -> Result<UpstreamResponse, Failed> {
    let (headers_by, late) = if exchange.stream {
        let connect_by = runtime.now_ms().saturating_add(candidate.connect_ms).min(first_byte_by);
        (connect_by, Failed::new(GatewayError::UpstreamTimeout { phase: TimeoutPhase::Connect }, Blame::SUSPECT))
    } else {
        (deadline_ms, Failed::new(GatewayError::UpstreamTimeout { phase: TimeoutPhase::Total }, Blame::NOBODY))
    };
    let response = match timeout(runtime, left(runtime, headers_by), upstream.send(candidate.request.clone())).await {
        None => return Err(late),
        // Built here and refused here: the same for every backend, and none of theirs.
        Some(Err(e)) if e.local => {
            return Err(Failed::new(
                GatewayError::Internal {
                    message: "The gateway could not send the request.".into(),
                    detail: format!("request refused by the platform: {}", e.message),
                },
                Blame::NOBODY,
            ))
        }
        Some(Err(_)) => return Err(Failed::upstream("The inference backend could not be reached.", Blame::BROKEN)),
        Some(Ok(response)) => response,
    };
    if !(200..300).contains(&response.status) {
        let error_by = deadline_ms.min(runtime.now_ms().saturating_add(timeouts.idle_ms));
        let (error, blame) = read_error(runtime, response, left(runtime, error_by)).await;
        return Err(Failed::new(error, blame));
    }
    if exchange.stream && !crate::core::http::is_event_stream(&response.headers) {
        return Err(Failed::upstream("The inference backend did not answer with a stream.", Blame::BROKEN));
    }
    Ok(response)
}

/// Reads a stream up to its first content event (a chunk; for the Responses API the first delta,
/// the events before it held back). An error before it is still an ordinary failure of this
/// attempt (with failover when it is the backend's), never a broken stream. Returns the body, its
/// scanner and what the first events gave.
async fn first_event<R: Runtime>(
    runtime: &R,
    mut response: UpstreamResponse,
    exchange: Exchange,
    first_byte_by: u64,
    deadline_ms: u64,
) -> Result<(BodyStream, SseScanner, Vec<u8>), Failed> {
    let mut scanner = SseScanner::new(exchange.endpoint.dialect(), !exchange.client_wants_usage, MAX_EVENT_BYTES);
    // Events before the first content (the Responses API's `response.created`…), held until it.
    let mut held = Vec::new();
    loop {
        let chunk = match timeout(runtime, left(runtime, first_byte_by), response.body.next()).await {
            None => {
                let phase = if first_byte_by >= deadline_ms { TimeoutPhase::Total } else { TimeoutPhase::FirstByte };
                return Err(Failed::new(GatewayError::UpstreamTimeout { phase }, Blame::NOBODY));
            }
            Some(Some(Ok(chunk))) => chunk,
            Some(_) => {
                return Err(Failed::upstream(
                    "The inference backend closed the stream before sending anything.",
                    Blame::BROKEN,
                ))
            }
        };
        let out = scanner.feed(chunk);
        held.extend_from_slice(&out);
        // Past a cap, what is held goes out as it is: the stream has begun, whatever it is.
        let started = scanner.content_events() > 0 || held.len() > MAX_HELD_BYTES;
        match scanner.stopped() {
            Some(Stop::BackendError { message, request_fault }) if !started => {
                let message =
                    message.clone().unwrap_or_else(|| "The inference backend failed before answering.".into());
                return Err(match request_fault {
                    true => Failed::new(GatewayError::UpstreamRejected { status: 400, message }, Blame::NOBODY),
                    false => Failed::new(GatewayError::Upstream { message }, Blame::SUSPECT),
                });
            }
            Some(Stop::Malformed) if !started => {
                return Err(Failed::upstream("The inference backend sent a malformed stream.", Blame::BROKEN))
            }
            _ => {}
        }
        if started || scanner.done() || scanner.stopped().is_some() {
            return Ok((response.body, scanner, held));
        }
    }
}

pub(super) async fn read_error<R: Runtime>(
    runtime: &R,
    mut response: UpstreamResponse,
    left_ms: u64,
) -> (GatewayError, Blame) {
    let body = timeout(runtime, left_ms, read_capped(&mut response.body, MAX_ERROR_BYTES))
        .await
        .and_then(Result::ok)
        .unwrap_or_default();
    classify(response.status, &response.headers, &body)
}

async fn read_completion(
    endpoint: Endpoint,
    mut response: UpstreamResponse,
) -> Result<(Vec<u8>, Option<Usage>), Failed> {
    let body = read_capped(&mut response.body, MAX_COMPLETION_BYTES).await.map_err(|e| match e {
        // The generation is done: replaying it elsewhere would only produce it again.
        ReadError::TooLarge => {
            Failed::upstream("The inference backend's answer was too large to relay.", Blame::NOBODY)
        }
        ReadError::Broken(_) => Failed::upstream("The inference backend's answer was cut off.", Blame::BROKEN),
    })?;
    match endpoint.answer_usage(&body) {
        Ok(usage) => Ok((body, usage)),
        Err(_) => Err(Failed::upstream(
            "The inference backend answered with something that is not a completion.",
            Blame::BROKEN,
        )),
    }
}
