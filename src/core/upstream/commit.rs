//! A stream committed before any backend has begun its answer: `200` and SSE headers at once,
//! then a `: keep-alive` comment now and every `GATEWAY_KEEPALIVE_MS` while the search for a
//! backend goes on (a long prefill, a queue, a reasoning model thinking, a failover), so that no
//! proxy between the client and the edge drops the idle connection (AWS ALB after 60 s,
//! Cloudflare's proxy after 100 s, many corporate proxies after 30 s).
//!
//! SSE comments are part of the format and every client skips them, so until the first content
//! the client has had nothing it could tell apart: the search fails over exactly as it would
//! have before the commit. When a backend begins, its stream is relayed from there ([`relay`]);
//! when none does, the stream ends with one error event saying why (in the endpoint's dialect),
//! instead of the HTTP error it would have been.

use crate::core::error::{GatewayError, TimeoutPhase};
use crate::core::http::BodyStream;
use crate::core::openai::Dialect;
use crate::core::runtime::{timeout, Runtime};
use crate::core::upstream::found::{Found, Search};
use crate::core::upstream::relay::{self, EndGuard, Pipe, StreamEnd, StreamEnding, Timing};
use futures::stream::StreamExt;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// The SSE comment that keeps a committed stream's connection alive.
pub const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// How a committed stream keeps alive, and how its error event is framed.
#[derive(Debug, Clone, Copy)]
pub struct KeepAlive {
    pub every_ms: u64,
    pub dialect: Dialect,
}

/// Relays a backend's committed answer: [`crate::core::upstream::Upstream::relay`], so that the
/// platform's own pump serves a stream committed before its backend began as well.
pub(super) type RelayWith = Box<dyn Fn(Pipe, BodyStream) -> BodyStream>;

/// The client's stream for `search`, which has not found a backend yet.
pub(super) fn committed<R: Runtime + Clone + 'static>(
    search: Search,
    runtime: R,
    keepalive: KeepAlive,
    timing: Timing,
    ending: &StreamEnding,
    relay_with: RelayWith,
) -> BodyStream {
    // Whoever reports the end (the client leaving, the deadline) lets go of the search, and with
    // it the backend request under way, even when nothing polls this stream any more.
    let slot = Rc::new(RefCell::new(Some(search)));
    // Whoever polled the search last: woken when it is let go of, so that the stream ends (with
    // its timeout event) when the deadline passes, not at the next comment. The search's own
    // timers go with it, and a runtime may wake the watcher's first (wasmtime does).
    let waiting: Rc<RefCell<Option<Waker>>> = Rc::default();
    let (held, woken) = (slot.clone(), waiting.clone());
    ending.release_on_end(Box::new(move || {
        if let Ok(mut search) = held.try_borrow_mut() {
            search.take();
        }
        let waker = woken.try_borrow_mut().ok().and_then(|mut w| w.take());
        if let Some(waker) = waker {
            waker.wake();
        }
    }));
    let state = Committed {
        phase: Phase::Searching { search: slot, waiting, commented: false },
        runtime,
        keepalive,
        timing,
        ending: ending.clone(),
        relay_with,
        _guard: EndGuard(ending.clone()),
    };
    Box::pin(futures::stream::unfold(state, Committed::next))
}

struct Committed<R> {
    phase: Phase,
    runtime: R,
    keepalive: KeepAlive,
    timing: Timing,
    ending: StreamEnding,
    relay_with: RelayWith,
    /// Reports the client gone if this stream is dropped before its end.
    _guard: EndGuard,
}

enum Phase {
    /// No backend has begun; `commented` once the first comment went out.
    Searching {
        search: Rc<RefCell<Option<Search>>>,
        waiting: Rc<RefCell<Option<Waker>>>,
        commented: bool,
    },
    /// A backend began: its stream, relayed.
    Relaying(BodyStream),
    Over,
}

type Item = Result<Vec<u8>, crate::core::http::BodyError>;

impl<R: Runtime + Clone + 'static> Committed<R> {
    async fn next(mut self) -> Option<(Item, Committed<R>)> {
        loop {
            let search = match &mut self.phase {
                Phase::Over => return None,
                Phase::Relaying(body) => {
                    let item = body.next().await?;
                    return Some((item, self));
                }
                Phase::Searching { commented: commented @ false, .. } => {
                    *commented = true;
                    return Some((Ok(KEEP_ALIVE.to_vec()), self));
                }
                Phase::Searching { search, waiting, .. } => (search.clone(), waiting.clone()),
            };
            if let Some(end) = self.ending.end() {
                // Let go of by the watcher: the deadline passed, or the client left.
                self.phase = Phase::Over;
                return match end {
                    StreamEnd::Timeout => {
                        Some((Ok(self.error_event(GatewayError::UpstreamTimeout { phase: TimeoutPhase::Total })), self))
                    }
                    _ => None,
                };
            }
            match timeout(&self.runtime, self.keepalive.every_ms.max(1), Polled(&search.0, &search.1)).await {
                None => return Some((Ok(KEEP_ALIVE.to_vec()), self)),
                Some(None) => continue, // let go of between polls: the end check says why
                Some(Some(Ok(found))) => self.phase = Phase::Relaying(self.relay(found)),
                Some(Some(Err(error))) => {
                    let end = match error {
                        GatewayError::UpstreamTimeout { .. } => StreamEnd::Timeout,
                        _ => StreamEnd::UpstreamError,
                    };
                    let event = self.error_event(error.clone());
                    self.phase = Phase::Over;
                    self.ending.fail(end, error);
                    return Some((Ok(event), self));
                }
            }
        }
    }

    /// The backend that began, relayed from its first content on.
    fn relay(&self, found: Found) -> BodyStream {
        match found {
            Found::Stream { body, scanner, first, answered } => {
                self.ending.answered(answered.backend, answered.tried);
                let (pipe, body) = relay::commit(body, scanner, first, self.runtime.clone(), self.timing, &self.ending);
                (self.relay_with)(pipe, body)
            }
            // Only streams are committed.
            Found::Completion { .. } => Box::pin(futures::stream::empty()),
        }
    }

    fn error_event(&self, error: GatewayError) -> Vec<u8> {
        error.to_sse_event(self.keepalive.dialect, 0)
    }
}

/// Polls the search in its slot, borrowing it only inside `poll`; `None` once it was let go of.
/// The second slot keeps the waker of the last poll, for whoever lets go of the search.
struct Polled<'a>(&'a Rc<RefCell<Option<Search>>>, &'a Rc<RefCell<Option<Waker>>>);

impl Future for Polled<'_> {
    type Output = Option<Result<Found, GatewayError>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = self.0.borrow_mut();
        let Some(search) = slot.as_mut() else { return Poll::Ready(None) };
        match search.as_mut().poll(cx) {
            Poll::Ready(found) => {
                *slot = None;
                Poll::Ready(Some(found))
            }
            Poll::Pending => {
                *self.1.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
