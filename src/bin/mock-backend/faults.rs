//! Fault modes selected by `mock.fault`, and the canned replies of those that
//! replace the completion entirely.

use std::time::Duration;

use crate::errors::vllm_error;
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
            _ => return None,
        })
    }

    /// The reply for faults that replace the completion entirely.
    pub(crate) fn canned_reply(self) -> Option<Reply> {
        let response = match self {
            Self::Internal => vllm_error(
                500,
                "InternalServerError",
                "internal engine failure at /srv/secret/path",
            ),
            Self::RateLimited => vllm_error(
                429,
                "RateLimitError",
                "Too many requests, please retry later.",
            )
            .with_header("retry-after", "1"),
            Self::ContextLength => vllm_error(
                400,
                "BadRequestError",
                "This model's maximum context length is 4096 tokens.",
            ),
            Self::Garbage => Response::raw(200, "application/json", b"\x00\xffnot json"),
            Self::PlainText500 => {
                Response::raw(500, "text/plain; charset=utf-8", b"upstream exploded")
            }
            Self::Hang => return Some(Reply::Hang),
            Self::MalformedSse => {
                let events = ["{not json", "[DONE]"].map(|data| SseEvent {
                    data: data.to_owned(),
                    delay: Duration::ZERO,
                });
                return Some(Reply::Stream(StreamPlan {
                    events: events.into(),
                    ending: Ending::Complete,
                }));
            }
            Self::Reset => return None,
        };
        Some(Reply::Respond(response))
    }
}
