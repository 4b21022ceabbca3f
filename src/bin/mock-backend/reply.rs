//! The shared vocabulary between planning a reply and carrying it out: what a routed
//! request should get (`Reply`), a planned event stream (`StreamPlan`, `SseEvent`,
//! `Ending`), and what becomes of the connection afterwards (`After`). Plain data, so
//! the planners (`routes`, `chat`, `faults`) and the writers (`connection`, `stream`)
//! depend on this file and never on each other.

use std::time::Duration;

use crate::response::Response;

/// What the connection loop should do with a routed request.
pub(crate) enum Reply {
    /// Answer at once (listings, validation errors, control endpoints).
    Respond(Response),
    /// A non-stream completion. As in vLLM, nothing at all is written until the whole
    /// generation (`takes`) is over; a client that leaves meanwhile stops it. Then the
    /// response is sent whole (`Ending::Complete`) or, for the `reset` fault, its head
    /// and half of its body before the socket is shut down (`Ending::Reset`).
    Generated { response: Response, takes: Duration, ending: Ending },
    /// Headers at once, then the events at their pace.
    Stream(StreamPlan),
    /// Never answer.
    Hang,
}

impl Reply {
    /// Adds a response header to whatever is answered (nothing, for `Hang`).
    pub(crate) fn with_header(self, name: &'static str, value: String) -> Self {
        match self {
            Self::Respond(response) => Self::Respond(response.with_header(name, &value)),
            Self::Generated { response, takes, ending } => {
                Self::Generated { response: response.with_header(name, &value), takes, ending }
            }
            Self::Stream(mut plan) => {
                plan.headers.push((name, value));
                Self::Stream(plan)
            }
            Self::Hang => Self::Hang,
        }
    }
}

/// A planned Server-Sent Events response.
pub(crate) struct StreamPlan {
    pub(crate) events: Vec<SseEvent>,
    pub(crate) ending: Ending,
    /// Response headers beyond the content type and `cache-control`.
    pub(crate) headers: Vec<(&'static str, String)>,
}

impl StreamPlan {
    pub(crate) fn new(events: Vec<SseEvent>, ending: Ending) -> Self {
        Self { events, ending, headers: Vec::new() }
    }
}

pub(crate) struct SseEvent {
    /// The `event:` line's value, if the event has one (the Responses API names every event).
    pub(crate) name: Option<&'static str>,
    /// What follows `data: `.
    pub(crate) data: String,
    /// Pause before the event is sent.
    pub(crate) delay: Duration,
}

impl SseEvent {
    /// An event with only a `data:` line, as chat and text completions send them.
    pub(crate) fn data(data: impl Into<String>, delay: Duration) -> Self {
        Self { name: None, data: data.into(), delay }
    }

    /// An event with an `event:` line naming it, as the Responses API sends them.
    pub(crate) fn named(name: &'static str, data: String, delay: Duration) -> Self {
        Self { name: Some(name), data, delay }
    }
}

#[derive(PartialEq, Eq)]
pub(crate) enum Ending {
    /// The terminating zero-length chunk.
    Complete,
    /// Shut the socket down instead of terminating the body.
    Reset,
}

/// What happens to the connection after a reply.
pub(crate) enum After {
    KeepAlive,
    Close,
    /// Drop the socket at once, without a graceful close.
    Abort,
}
