//! The reply to an accepted generation request (chat, text completion, Responses): JSON or
//! an event stream, paced as vLLM paces them, and cut short as the `reset` and `error_event`
//! faults say. Each endpoint describes its generation through [`Generation`]; this file
//! decides what of it goes out, and when.

use std::time::Duration;

use crate::controls::MockControls;
use crate::faults::{Failure, Fault};
use crate::reply::{Ending, Reply, SseEvent, StreamPlan};
use crate::response::Response;

/// How far a stream answered with the `reset` fault gets: 2 tokens.
const TOKENS_BEFORE_RESET: u64 = 2;

/// One endpoint's generation, in the shapes that endpoint answers with.
pub(crate) trait Generation {
    /// Tokens each sequence generates: what a non-stream answer waits for.
    fn tokens(&self) -> u64;

    /// The whole non-stream answer.
    fn response(&self) -> Response;

    /// The whole stream, paced: the first token `prefill` after the headers, each next one
    /// `delay` after the previous event.
    fn stream_events(&self, prefill: Duration, delay: Duration) -> Vec<SseEvent>;

    /// How many of the stream's events are out once `tokens` tokens have been streamed.
    fn events_through(&self, tokens: u64) -> usize;

    /// The end of a stream that fails after `sent` events. By default what vLLM's chat and
    /// completion generators send: the error event, `[DONE]`, and a normal end of the body.
    fn failure_tail(&self, failure: &Failure, sent: usize, delay: Duration) -> (Vec<SseEvent>, Ending) {
        let _ = sent;
        let events = vec![SseEvent::data(failure.event.clone(), delay), SseEvent::data("[DONE]", Duration::ZERO)];
        (events, Ending::Complete)
    }
}

pub(crate) fn plan_reply(generation: &impl Generation, controls: &MockControls, stream: bool) -> Reply {
    if let Some(failure) = controls.fault.and_then(Fault::failure) {
        return plan_failure(generation, controls, failure, stream);
    }
    let ending = if controls.fault == Some(Fault::Reset) { Ending::Reset } else { Ending::Complete };
    if stream {
        let mut events = generation.stream_events(controls.prefill, controls.delay);
        if ending == Ending::Reset {
            events.truncate(generation.events_through(TOKENS_BEFORE_RESET));
        }
        Reply::Stream(StreamPlan::new(events, ending))
    } else {
        Reply::Generated {
            response: generation.response(),
            takes: generation_time(controls, generation.tokens()),
            ending,
        }
    }
}

/// A generation that fails after `failure.after_tokens`: a stream sends them, then its
/// endpoint's failure tail; a non-stream answers the error once the failing token would
/// have been ready.
fn plan_failure(generation: &impl Generation, controls: &MockControls, failure: Failure, stream: bool) -> Reply {
    let tokens = failure.after_tokens.min(generation.tokens());
    if !stream {
        return Reply::Generated {
            response: failure.response,
            takes: generation_time(controls, tokens.saturating_add(1)),
            ending: Ending::Complete,
        };
    }
    let mut events = generation.stream_events(controls.prefill, controls.delay);
    events.truncate(generation.events_through(tokens));
    let (tail, ending) = generation.failure_tail(&failure, events.len(), controls.delay);
    events.extend(tail);
    Reply::Stream(StreamPlan::new(events, ending))
}

/// How long a non-stream generation of `tokens` takes: prefill, then `delay` each.
pub(crate) fn generation_time(controls: &MockControls, tokens: u64) -> Duration {
    let per_token = controls.delay.saturating_mul(u32::try_from(tokens).unwrap_or(u32::MAX));
    controls.prefill.saturating_add(per_token)
}
