//! Fault modes selected by `mock.fault`: the canned replies of those that replace
//! the completion entirely, and the failures of those that cut it short.

use std::time::Duration;

use crate::errors::{legacy_error_response, legacy_stream_error_event, stream_error_event, vllm_error};
use crate::reply::{Ending, Reply, SseEvent, StreamPlan};
use crate::response::Response;

/// Injected failures, selected by `mock.fault`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    Internal,
    RateLimited,
    ContextLength,
    Hang,
    Reset,
    Garbage,
    MalformedSse,
    PlainText500,
    /// vLLM's mid-stream failure: two tokens, then today's error event and `[DONE]`.
    ErrorEvent,
    /// The same with the event shape of vLLM up to 0.9.
    ErrorEventLegacy,
}

/// What an engine failure says: vLLM passes `str(exception)` through, internals and all.
pub(crate) const ENGINE_FAILURE: &str =
    "CUDA error: an illegal memory access at /srv/secret/model.py:42 (http://10.1.2.3:8000)";

/// A generation that fails part-way (`error_event`, `error_event_legacy`).
pub(crate) struct Failure {
    /// Which of the two faults it is (the Responses API ends its stream differently for each).
    pub(crate) fault: Fault,
    /// Tokens generated before the failure.
    pub(crate) after_tokens: u64,
    /// A stream's last event before `[DONE]`.
    pub(crate) event: String,
    /// A non-stream's answer.
    pub(crate) response: Response,
}

impl Fault {
    pub(crate) fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "500" => Self::Internal,
            "429" => Self::RateLimited,
            "400" => Self::ContextLength,
            "hang" => Self::Hang,
            "reset" => Self::Reset,
            "garbage" => Self::Garbage,
            "malformed_sse" => Self::MalformedSse,
            "plain_text_500" => Self::PlainText500,
            "error_event" => Self::ErrorEvent,
            "error_event_legacy" => Self::ErrorEventLegacy,
            _ => return None,
        })
    }

    /// The reply for faults that replace the completion entirely.
    pub(crate) fn canned_reply(self) -> Option<Reply> {
        let response = match self {
            Self::Internal => vllm_error(500, "InternalServerError", "internal engine failure at /srv/secret/path"),
            Self::RateLimited => vllm_error(429, "RateLimitError", "Too many requests, please retry later.")
                .with_header("retry-after", "1"),
            Self::ContextLength => {
                vllm_error(400, "BadRequestError", "This model's maximum context length is 4096 tokens.")
            }
            Self::Garbage => Response::raw(200, "application/json", b"\x00\xffnot json"),
            Self::PlainText500 => Response::raw(500, "text/plain; charset=utf-8", b"upstream exploded"),
            Self::Hang => return Some(Reply::Hang),
            Self::MalformedSse => {
                let events = ["{not json", "[DONE]"].map(|data| SseEvent::data(data, Duration::ZERO));
                return Some(Reply::Stream(StreamPlan::new(events.into(), Ending::Complete)));
            }
            Self::Reset | Self::ErrorEvent | Self::ErrorEventLegacy => return None,
        };
        Some(Reply::Respond(response))
    }

    /// How generation fails for the faults that fail part-way. A non-stream answer is
    /// what vLLM's `chat_completion_full_generator` returns on the exception: today a
    /// 500 `InternalServerError`, up to 0.9 the old top-level 400.
    pub(crate) fn failure(self) -> Option<Failure> {
        let (event, response) = match self {
            Self::ErrorEvent => {
                (stream_error_event(ENGINE_FAILURE), vllm_error(500, "InternalServerError", ENGINE_FAILURE))
            }
            Self::ErrorEventLegacy => {
                (legacy_stream_error_event(ENGINE_FAILURE), legacy_error_response(ENGINE_FAILURE))
            }
            _ => return None,
        };
        Some(Failure { fault: self, after_tokens: 2, event, response })
    }
}
