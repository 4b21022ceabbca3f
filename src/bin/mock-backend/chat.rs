//! Chat completions: interpret a request (model, messages, limits, controls),
//! count its prompt tokens and fit it in the context; `plan` shapes the reply.

use std::sync::atomic::Ordering;

use serde_json::Value;

use crate::completion::Completion;
use crate::context::{completion_budget, requested_limit};
use crate::errors::bad_request;
use crate::intake::{canned_reply, controls, include_usage, json_body, resolve_model, unix_now};
use crate::plan::plan_reply;
use crate::reply::Reply;
use crate::request::Request;
use crate::response::Response;
use crate::state::State;
use crate::tokens;

/// Interprets a chat request; errors are ready-made responses.
pub(crate) fn chat_completions(state: &State, request: &Request) -> Result<Reply, Response> {
    let body = json_body(request)?;
    let controls = controls(&body, &state.config)?;
    let model = resolve_model(&state.config, body.get("model"))?;
    let messages =
        body.get("messages").and_then(Value::as_array).ok_or_else(|| bad_request("`messages` must be an array."))?;
    if let Some(reply) = canned_reply(&controls) {
        return Ok(reply);
    }
    let prompt_tokens = prompt_tokens(messages);
    let requested = requested_limit(&body).map_err(|m| bad_request(&m))?;
    let budget = completion_budget(state.config.max_model_len, prompt_tokens, requested)?;
    let limit = budget.map_or(controls.chunks, |budget| budget.min(controls.chunks));
    let completion = Completion {
        id: format!("chatcmpl-mock-{}", state.next_id.fetch_add(1, Ordering::SeqCst)),
        created: unix_now(),
        model,
        prompt_tokens,
        completion_tokens: limit,
        finish_reason: if limit < controls.chunks { "length" } else { "stop" },
        include_usage: include_usage(&body),
    };
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    Ok(plan_reply(&completion, &controls, stream))
}

/// `(total bytes of the messages' text content) / 4 + one per message`.
fn prompt_tokens(messages: &[Value]) -> u64 {
    let bytes: usize = messages.iter().map(|message| tokens::content_bytes(message.get("content"))).sum();
    tokens::count(bytes, messages.len())
}
