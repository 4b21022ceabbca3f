//! The Responses API (`/v1/responses`): interpret a create request as vLLM's
//! `ResponsesRequest` does (input items, instructions, `max_output_tokens`, tools,
//! `previous_response_id`, `store`, `background`), fit it in the context, plan the
//! reply and store the response; and answer `GET` and `DELETE /v1/responses/{id}`.

use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::controls::optional_count;
use crate::errors::{bad_request, vllm_error_with_param};
use crate::faults::Fault;
use crate::intake::{canned_reply, controls, json_body, optional_bool, resolve_model, unix_now};
use crate::plan::{generation_time, plan_reply};
use crate::reply::Reply;
use crate::request::Request;
use crate::request_id;
use crate::response::Response;
use crate::response_object::GeneratedResponse;
use crate::response_store::Stored;
use crate::state::State;
use crate::tokens;

/// The roles a message input item may have.
const ROLES: [&str; 4] = ["user", "assistant", "system", "developer"];

pub(crate) fn create_response(state: &State, request: &Request) -> Result<Reply, Response> {
    let body = json_body(request)?;
    let controls = controls(&body, &state.config)?;
    let model = resolve_model(&state.config, body.get("model"))?;
    let input_tokens = input_tokens(&body)?;
    let stream = optional_bool(&body, "stream")?.unwrap_or(false);
    let store = optional_bool(&body, "store")?.unwrap_or(true);
    let background = optional_bool(&body, "background")?.unwrap_or(false);
    if background && !store {
        return Err(bad_request("background can only be used when `store` is true"));
    }
    if body.get("prompt").is_some_and(|prompt| !prompt.is_null()) {
        return Err(vllm_error_with_param(
            400,
            "BadRequestError",
            "prompt template is not supported (parameter=prompt)",
            "prompt",
        ));
    }
    let max_output_tokens =
        optional_count(body.get("max_output_tokens"), "max_output_tokens", u64::MAX).map_err(|m| bad_request(&m))?;
    if max_output_tokens == Some(0) {
        return Err(bad_request("max_tokens must be at least 1, got 0."));
    }
    if body.get("tools").is_some_and(|tools| !tools.is_null() && !tools.is_array()) {
        return Err(bad_request("`tools` must be an array."));
    }
    let previous = match body.get("previous_response_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id.as_str()),
        Some(_) => return Err(bad_request("`previous_response_id` must be a string.")),
    };
    if let Some(reply) = canned_reply(&controls) {
        return Ok(reply);
    }
    // vLLM puts the previous response's input and output before the new input.
    let earlier = match previous {
        None => 0,
        Some(id) => {
            let previous = state.responses.get(id).ok_or_else(|| not_found(id))?;
            previous["usage"]["total_tokens"].as_u64().unwrap_or(0)
        }
    };
    let input_tokens = input_tokens.saturating_add(earlier);
    // vLLM's `_validate_generator_input`; `max_output_tokens` is then clamped to what the
    // context leaves, never refused.
    let room = match state.config.max_model_len {
        Some(context) if input_tokens >= context => return Err(prompt_too_long(input_tokens, context)),
        Some(context) => Some(context - input_tokens),
        None => None,
    };
    let effective_limit = match (max_output_tokens, room) {
        (Some(requested), Some(room)) => Some(requested.min(room)),
        (requested, room) => requested.or(room),
    };
    let output_tokens = effective_limit.map_or(controls.chunks, |limit| limit.min(controls.chunks));
    let generated = GeneratedResponse {
        id: format!("resp_{}", request_id::fresh()),
        created_at: unix_now(),
        model,
        echoed: echoed_fields(&body, effective_limit, background),
        message_id: format!("msg_{}", request_id::fresh()),
        input_tokens,
        output_tokens,
        truncated: output_tokens < controls.chunks,
    };
    let fails = controls.fault.and_then(Fault::failure).is_some();
    let ready_at = Instant::now() + generation_time(&controls, output_tokens);
    if background {
        // vLLM answers at once with the queued response and generates in the background.
        let queued = generated.snapshot("queued");
        let done = if fails { generated.failed() } else { generated.done() };
        state.responses.insert(generated.id.clone(), Stored { done, pending: Some(queued.clone()), ready_at });
        if !stream {
            return Ok(Reply::Respond(Response::json(200, &queued)));
        }
    } else if store && !fails {
        state.responses.insert(generated.id.clone(), Stored { done: generated.done(), pending: None, ready_at });
    }
    // A background stream is streamed like a foreground one.
    Ok(plan_reply(&generated, &controls, stream))
}

/// `GET /v1/responses/{id}`: a stored response as it stands.
pub(crate) fn retrieve_response(state: &State, id: &str) -> Response {
    match state.responses.get(id) {
        Some(response) => Response::json(200, &response),
        None => not_found(id),
    }
}

/// `DELETE /v1/responses/{id}`: OpenAI's deletion answer (vLLM serves no such route).
pub(crate) fn delete_response(state: &State, id: &str) -> Response {
    if state.responses.delete(id) {
        Response::json(200, &json!({"id": id, "object": "response.deleted", "deleted": true}))
    } else {
        not_found(id)
    }
}

/// vLLM's `_make_not_found_error`.
fn not_found(id: &str) -> Response {
    vllm_error_with_param(404, "invalid_request_error", &format!("Response with id '{id}' not found."), "response_id")
}

fn prompt_too_long(input_tokens: u64, context: u64) -> Response {
    vllm_error_with_param(
        400,
        "invalid_request_error",
        &format!("The engine prompt length {input_tokens} exceeds the max_model_len {context}. Please reduce prompt."),
        "input",
    )
}

/// The input's tokens, counted like chat's: the bytes of every item's text over 4, plus
/// one per item, with `instructions` one more item (vLLM makes it a system message).
fn input_tokens(body: &Map<String, Value>) -> Result<u64, Response> {
    let (mut bytes, mut items) = match body.get("instructions") {
        None | Some(Value::Null) => (0, 0),
        Some(Value::String(text)) => (text.len(), 1),
        Some(_) => return Err(bad_request("`instructions` must be a string.")),
    };
    match body.get("input") {
        Some(Value::String(text)) => {
            bytes += text.len();
            items += 1;
        }
        Some(Value::Array(list)) => {
            for item in list {
                bytes += item_bytes(item)?;
            }
            items += list.len();
        }
        _ => return Err(bad_request("`input` must be a string or an array of input items.")),
    }
    Ok(tokens::count(bytes, items))
}

/// The text bytes of one input item: a message's content, a function call's arguments, a
/// function call output's output. Unknown item types are refused.
fn item_bytes(item: &Value) -> Result<usize, Response> {
    let Some(fields) = item.as_object() else {
        return Err(bad_request("Each input item must be an object."));
    };
    let text = |field: &str| fields.get(field).and_then(Value::as_str);
    match text("type") {
        None | Some("message") => {
            if !text("role").is_some_and(|role| ROLES.contains(&role)) {
                return Err(bad_request("A message input item needs a `role`: user, assistant, system or developer."));
            }
            match fields.get("content") {
                Some(Value::String(_)) => {}
                Some(Value::Array(parts))
                    if parts.iter().all(|part| part.get("type").is_some_and(Value::is_string)) => {}
                _ => return Err(bad_request("A message's `content` must be a string or an array of typed parts.")),
            }
            Ok(tokens::content_bytes(fields.get("content")))
        }
        Some("function_call") => match (text("call_id"), text("name"), text("arguments")) {
            (Some(_), Some(_), Some(arguments)) => Ok(arguments.len()),
            _ => Err(bad_request("A `function_call` item needs `call_id`, `name` and `arguments` strings.")),
        },
        Some("function_call_output") => match (text("call_id"), fields.get("output")) {
            (Some(_), Some(Value::String(output))) => Ok(output.len()),
            (Some(_), Some(output @ Value::Array(_))) => Ok(tokens::content_bytes(Some(output))),
            _ => Err(bad_request("A `function_call_output` item needs a `call_id` and an `output`.")),
        },
        Some("reasoning" | "item_reference") => Ok(0),
        Some(other) => Err(bad_request(&format!("Unsupported input item type `{other}`."))),
    }
}

/// The request fields vLLM's `ResponsesResponse.from_request` repeats, with its defaults;
/// `max_output_tokens` is the limit in force (vLLM's sampling `max_tokens`).
fn echoed_fields(body: &Map<String, Value>, max_output_tokens: Option<u64>, background: bool) -> Map<String, Value> {
    let field =
        |name: &str, default: Value| body.get(name).filter(|value| !value.is_null()).cloned().unwrap_or(default);
    let mut echoed = Map::new();
    for name in ["instructions", "metadata", "max_tool_calls", "previous_response_id", "reasoning", "text", "user"] {
        echoed.insert(name.into(), field(name, Value::Null));
    }
    echoed.insert("parallel_tool_calls".into(), field("parallel_tool_calls", Value::Bool(true)));
    echoed.insert("temperature".into(), field("temperature", json!(1.0)));
    echoed.insert("top_p".into(), field("top_p", json!(1.0)));
    echoed.insert("tool_choice".into(), field("tool_choice", json!("auto")));
    echoed.insert("tools".into(), field("tools", json!([])));
    echoed.insert("service_tier".into(), field("service_tier", json!("auto")));
    echoed.insert("truncation".into(), field("truncation", json!("disabled")));
    echoed.insert("top_logprobs".into(), Value::Null);
    echoed.insert("background".into(), Value::Bool(background));
    echoed.insert("max_output_tokens".into(), max_output_tokens.map_or(Value::Null, Value::from));
    echoed
}
