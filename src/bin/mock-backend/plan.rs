//! The reply to an accepted chat request: JSON or an event stream, paced as vLLM
//! paces them, and cut short as the `reset` and `error_event` faults say.

use std::time::Duration;

use crate::completion::Completion;
use crate::controls::MockControls;
use crate::faults::{Failure, Fault};
use crate::reply::{Ending, Reply, SseEvent, StreamPlan};
use crate::response::Response;

/// How a stream answered with the `reset` fault ends: the role chunk and 2 tokens.
const EVENTS_BEFORE_RESET: usize = 3;

pub(crate) fn plan_reply(completion: &Completion, controls: &MockControls, stream: bool, include_usage: bool) -> Reply {
    let ending = if controls.fault == Some(Fault::Reset) { Ending::Reset } else { Ending::Complete };
    if let Some(failure) = controls.fault.and_then(Fault::failure) {
        return plan_failure(completion, controls, failure, stream, include_usage);
    }
    if stream {
        let mut events = completion.stream_events(include_usage, controls.prefill, controls.delay);
        if ending == Ending::Reset {
            events.truncate(EVENTS_BEFORE_RESET);
        }
        Reply::Stream(StreamPlan::new(events, ending))
    } else {
        Reply::Generated {
            response: Response::json(200, &completion.response()),
            takes: generation_time(controls, completion.completion_tokens),
            ending,
        }
    }
}

/// A generation that fails after `failure.after_tokens`: a stream sends them, then the
/// error event and `[DONE]`; a non-stream answers the error once the failing token
/// would have been ready.
fn plan_failure(
    completion: &Completion,
    controls: &MockControls,
    failure: Failure,
    stream: bool,
    include_usage: bool,
) -> Reply {
    let tokens = failure.after_tokens.min(completion.completion_tokens);
    if !stream {
        return Reply::Generated {
            response: failure.response,
            takes: generation_time(controls, tokens.saturating_add(1)),
            ending: Ending::Complete,
        };
    }
    let mut events = completion.stream_events(include_usage, controls.prefill, controls.delay);
    events.truncate(1 + usize::try_from(tokens).unwrap_or(usize::MAX));
    events.push(SseEvent { data: failure.event, delay: controls.delay });
    events.push(SseEvent { data: "[DONE]".to_owned(), delay: Duration::ZERO });
    Reply::Stream(StreamPlan::new(events, Ending::Complete))
}

/// How long a non-stream generation of `tokens` takes: prefill, then `delay` each.
fn generation_time(controls: &MockControls, tokens: u64) -> Duration {
    let per_token = controls.delay.saturating_mul(u32::try_from(tokens).unwrap_or(u32::MAX));
    controls.prefill.saturating_add(per_token)
}
