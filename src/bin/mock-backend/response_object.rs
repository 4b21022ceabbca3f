//! One generated Responses API answer: the Response object (whole, or as the snapshots
//! the stream and the store show before it is done) and its event stream, as vLLM's
//! `serving_responses` sends them for a plain text answer.

use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::faults::{Failure, Fault, ENGINE_FAILURE};
use crate::plan::Generation;
use crate::reply::{Ending, SseEvent};
use crate::response::Response;
use crate::tokens::{generated_text, token_text};

pub(crate) struct GeneratedResponse {
    /// `resp_…`.
    pub(crate) id: String,
    pub(crate) created_at: u64,
    pub(crate) model: String,
    /// The request fields the Response object repeats (instructions, tools, temperature…).
    pub(crate) echoed: Map<String, Value>,
    /// `msg_…`: the output message's id.
    pub(crate) message_id: String,
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    /// Cut short by `max_output_tokens` (or the context): `status: "incomplete"`.
    pub(crate) truncated: bool,
}

impl GeneratedResponse {
    /// The Response object with this status, output and usage.
    fn object(&self, status: &str, output: Vec<Value>, usage: Value, incomplete: bool) -> Value {
        let mut object = self.echoed.clone();
        object.insert("id".into(), Value::from(self.id.as_str()));
        object.insert("object".into(), Value::from("response"));
        object.insert("created_at".into(), Value::from(self.created_at));
        object.insert("model".into(), Value::from(self.model.as_str()));
        object.insert("status".into(), Value::from(status));
        object.insert("error".into(), Value::Null);
        let details = if incomplete { json!({"reason": "max_output_tokens"}) } else { Value::Null };
        object.insert("incomplete_details".into(), details);
        object.insert("output".into(), Value::Array(output));
        object.insert("usage".into(), usage);
        Value::Object(object)
    }

    /// Before any output: what `response.created` carries, and a `background` response
    /// shows while `queued`.
    pub(crate) fn snapshot(&self, status: &str) -> Value {
        self.object(status, Vec::new(), Value::Null, false)
    }

    /// The finished Response object.
    pub(crate) fn done(&self) -> Value {
        let output = if self.output_tokens == 0 { Vec::new() } else { vec![self.message("completed", true)] };
        let status = if self.truncated { "incomplete" } else { "completed" };
        self.object(status, output, self.usage(), self.truncated)
    }

    /// A `background` response whose generation failed, as vLLM marks it.
    pub(crate) fn failed(&self) -> Value {
        self.snapshot("failed")
    }

    fn usage(&self) -> Value {
        json!({
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.input_tokens.saturating_add(self.output_tokens),
        })
    }

    /// The output message, empty while in progress.
    fn message(&self, status: &str, with_text: bool) -> Value {
        let content =
            if with_text { vec![text_part(&generated_text(self.output_tokens), Value::Null)] } else { Vec::new() };
        json!({"id": self.message_id, "content": content, "role": "assistant", "status": status, "type": "message"})
    }
}

/// An `output_text` content part.
fn text_part(text: &str, logprobs: Value) -> Value {
    json!({"annotations": [], "text": text, "type": "output_text", "logprobs": logprobs})
}

/// Numbers the events of a stream as the Responses API does (`sequence_number` from 0).
#[derive(Default)]
struct EventLog {
    events: Vec<SseEvent>,
}

impl EventLog {
    fn push(&mut self, kind: &'static str, mut data: Value, delay: Duration) {
        data["sequence_number"] = Value::from(self.events.len());
        data["type"] = Value::from(kind);
        self.events.push(SseEvent::named(kind, data.to_string(), delay));
    }
}

impl Generation for GeneratedResponse {
    fn tokens(&self) -> u64 {
        self.output_tokens
    }

    fn response(&self) -> Response {
        Response::json(200, &self.done())
    }

    /// `response.created` and `response.in_progress` at once; after `prefill` the output
    /// message and its text part are added with the first `response.output_text.delta`,
    /// then one delta per token `delay` apart; then `response.output_text.done`,
    /// `response.content_part.done`, `response.output_item.done` and `response.completed`
    /// (vLLM sends that one whatever the status) at once. Every event has an `event:`
    /// line; no `[DONE]` follows.
    fn stream_events(&self, prefill: Duration, delay: Duration) -> Vec<SseEvent> {
        let mut log = EventLog::default();
        let in_progress = self.snapshot("in_progress");
        log.push("response.created", json!({"response": in_progress}), Duration::ZERO);
        log.push("response.in_progress", json!({"response": in_progress}), Duration::ZERO);
        let item = |extra: Value| {
            let mut fields = json!({"item_id": self.message_id, "output_index": 0, "content_index": 0});
            if let (Some(fields), Value::Object(extra)) = (fields.as_object_mut(), extra) {
                fields.extend(extra);
            }
            fields
        };
        if self.output_tokens > 0 {
            let added = json!({"item": self.message("in_progress", false), "output_index": 0});
            log.push("response.output_item.added", added, prefill);
            log.push("response.content_part.added", item(json!({"part": text_part("", json!([]))})), Duration::ZERO);
            for index in 0..self.output_tokens {
                let pause = if index == 0 { Duration::ZERO } else { delay };
                let delta = item(json!({"delta": token_text(index), "logprobs": []}));
                log.push("response.output_text.delta", delta, pause);
            }
            let text = generated_text(self.output_tokens);
            log.push("response.output_text.done", item(json!({"text": text, "logprobs": []})), Duration::ZERO);
            let part = item(json!({"part": text_part(&text, Value::Null)}));
            log.push("response.content_part.done", part, Duration::ZERO);
            let done = json!({"item": self.message("completed", true), "output_index": 0});
            log.push("response.output_item.done", done, Duration::ZERO);
        }
        let pause = if self.output_tokens == 0 { prefill } else { Duration::ZERO };
        log.push("response.completed", json!({"response": self.done()}), pause);
        log.events
    }

    /// The two opening events, then the item, its part and one delta per token.
    fn events_through(&self, tokens: u64) -> usize {
        match tokens.min(self.output_tokens) {
            0 => 2,
            tokens => usize::try_from(tokens).unwrap_or(usize::MAX).saturating_add(4),
        }
    }

    /// `error_event`: the Responses API's `error` event (OpenAI's shape: `code`, `message`,
    /// `param`, `sequence_number`), then the body ends normally, with no `[DONE]`.
    /// `error_event_legacy`: what vLLM does today, whose `{"error": …}` fails validation
    /// as a streaming event: the stream breaks off without its terminating chunk.
    fn failure_tail(&self, failure: &Failure, sent: usize, delay: Duration) -> (Vec<SseEvent>, Ending) {
        if failure.fault == Fault::ErrorEventLegacy {
            return (Vec::new(), Ending::Reset);
        }
        let error = json!({"type": "error", "code": "server_error", "message": ENGINE_FAILURE, "param": null,
                           "sequence_number": sent});
        (vec![SseEvent::named("error", error.to_string(), delay)], Ending::Complete)
    }
}
