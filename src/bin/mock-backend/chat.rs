//! Chat completions: interpret a request (model, messages, limits, controls),
//! count its prompt tokens and fit it in the context; `plan` shapes the reply.

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::cli::{Config, DEFAULT_MODEL};
use crate::completion::Completion;
use crate::context::{completion_budget, requested_limit};
use crate::controls::MockControls;
use crate::errors::{bad_request, status_error, vllm_error};
use crate::faults::Fault;
use crate::plan::plan_reply;
use crate::reply::Reply;
use crate::request::Request;
use crate::response::Response;
use crate::state::State;

/// Interprets a chat request; errors are ready-made responses.
pub(crate) fn chat_completions(state: &State, request: &Request) -> Result<Reply, Response> {
    let body: Value = serde_json::from_slice(&request.body)
        .map_err(|err| bad_request(&format!("Invalid JSON in request body: {err}")))?;
    let body = body.as_object().ok_or_else(|| bad_request("The request body must be a JSON object."))?;
    let controls = MockControls::from_body(body.get("mock"), &state.config).map_err(|m| bad_request(&m))?;
    let model = resolve_model(&state.config, body.get("model"))?;
    let messages =
        body.get("messages").and_then(Value::as_array).ok_or_else(|| bad_request("`messages` must be an array."))?;
    if let Some(reply) = canned_reply(&controls) {
        return Ok(reply);
    }
    let prompt_tokens = prompt_tokens(messages);
    let requested = requested_limit(body).map_err(|m| bad_request(&m))?;
    let budget = completion_budget(state.config.max_model_len, prompt_tokens, requested)?;
    let limit = budget.map_or(controls.chunks, |budget| budget.min(controls.chunks));
    let completion = Completion {
        id: format!("chatcmpl-mock-{}", state.next_id.fetch_add(1, Ordering::SeqCst)),
        created: unix_now(),
        model,
        prompt_tokens,
        completion_tokens: limit,
        finish_reason: if limit < controls.chunks { "length" } else { "stop" },
    };
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage =
        body.get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool) == Some(true);
    Ok(plan_reply(&completion, &controls, stream, include_usage))
}

/// The answers that replace the completion entirely: `mock.status`, then the
/// canned faults.
fn canned_reply(controls: &MockControls) -> Option<Reply> {
    if let Some(status) = controls.status {
        let response = status_error(status);
        return Some(Reply::Respond(match &controls.retry_after {
            Some(value) => response.with_header("retry-after", value),
            None => response,
        }));
    }
    controls.fault.and_then(Fault::canned_reply)
}

fn resolve_model(config: &Config, requested: Option<&Value>) -> Result<String, Response> {
    match requested {
        None | Some(Value::Null) => Ok(config.models.first().cloned().unwrap_or_else(|| DEFAULT_MODEL.to_owned())),
        Some(Value::String(name)) if config.models.contains(name) => Ok(name.clone()),
        Some(Value::String(name)) => {
            Err(vllm_error(404, "NotFoundError", &format!("The model `{name}` does not exist.")))
        }
        Some(_) => Err(bad_request("`model` must be a string.")),
    }
}

/// `(total bytes of the messages' text content) / 4 + one per message`.
fn prompt_tokens(messages: &[Value]) -> u64 {
    let bytes: usize = messages.iter().map(|message| text_bytes(message.get("content"))).sum();
    u64::try_from(bytes / 4 + messages.len()).unwrap_or(u64::MAX)
}

/// Bytes of a message's content: a string, or the `text` of content parts.
fn text_bytes(content: Option<&Value>) -> usize {
    match content {
        Some(Value::String(text)) => text.len(),
        Some(Value::Array(parts)) => {
            parts.iter().filter_map(|part| part.get("text").and_then(Value::as_str)).map(str::len).sum()
        }
        _ => 0,
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
