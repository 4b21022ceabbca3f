//! `POST /v1/responses`: input items, instructions and tools, and the fields that need the state
//! a backend keeps.

use super::fields::*;
use super::Validated;
use crate::core::config::RequestCaps;
use crate::core::error::GatewayError;
use crate::core::openai::Endpoint;
use serde_json::{Map, Value};

const ROLES: &[&str] = &["system", "developer", "user", "assistant"];

/// Top-level fields rendered into the prompt: tools and formats, and the history vLLM takes
/// inline (`previous_input_messages` for harmony models, a whole `previous_response`).
const PROMPT_FIELDS: &[&str] =
    &["tools", "tool_choice", "text", "reasoning", "previous_input_messages", "previous_response"];

/// Chat fields some servers honour on this endpoint too (llama.cpp converts the request to a
/// chat and copies every field): they would escape `max_output_tokens` and the estimate.
const CHAT_ONLY_FIELDS: &[&str] = &["max_tokens", "max_completion_tokens", "n", "best_of"];

/// Parses and validates a `/v1/responses` body. Its stream is the Responses event stream, whose
/// `response.completed` carries the usage, so nothing is added to it.
pub fn validate_responses(body: &[u8], caps: &RequestCaps) -> Result<Validated, GatewayError> {
    let request = parse_object(body)?;
    let model = model(&request)?;
    let mut stateful = state_field(&request)?;
    let mut prompt = PromptSize::default();
    let mut messages = match request.get("input") {
        None | Some(Value::Null) if stateful.is_some() => 0,
        None | Some(Value::Null) => return Err(GatewayError::invalid("input", "you must provide an input parameter")),
        Some(Value::String(s)) => {
            prompt.add_text(s.len(), "input", caps)?;
            1
        }
        Some(Value::Array(items)) => check_items(items, caps, &mut prompt, &mut stateful)?,
        Some(_) => return Err(GatewayError::invalid("input", "input must be a string or an array of input items")),
    };
    if let Some(instructions) = optional_string(&request, "instructions")? {
        prompt.add_text(instructions.len(), "instructions", caps)?;
        messages += 1;
    }
    count_json_fields(&request, PROMPT_FIELDS, caps, &mut prompt)?;
    let stream = stream(&request)?;
    check_sampling(&request)?;
    refuse_fields(&request)?;
    refuse(
        &request,
        CHAT_ONLY_FIELDS,
        "the Responses API sets the length with max_output_tokens, one answer per request",
    )?;
    let max_tokens = check_length(&request, &["max_output_tokens"], caps)?;
    Ok(Validated {
        endpoint: Endpoint::Responses,
        model,
        stream,
        client_wants_usage: true,
        max_tokens,
        choices: 1,
        text_bytes: prompt.text_bytes,
        token_ids: 0,
        media_parts: prompt.media_parts,
        messages,
        stateful,
        background: request.get("background") == Some(&Value::Bool(true)),
        body: request,
    })
}

/// The first top-level field that needs a backend's stored state: an earlier response, a stored
/// conversation, or a response run in the background and fetched later.
fn state_field(request: &Map<String, Value>) -> Result<Option<&'static str>, GatewayError> {
    optional_string(request, "previous_response_id")?;
    check_bool(request, "background")?;
    let uses = |field: &str| request.get(field).is_some_and(|v| !v.is_null() && *v != Value::Bool(false));
    Ok(["previous_response_id", "conversation", "background"].into_iter().find(|f| uses(f)))
}

/// Input items: messages (content as text or parts), tool calls and their outputs, reasoning;
/// every string counts, media parts as media. An `item_reference` names a stored item.
fn check_items(
    items: &[Value],
    caps: &RequestCaps,
    prompt: &mut PromptSize,
    stateful: &mut Option<&'static str>,
) -> Result<u32, GatewayError> {
    if items.len() > caps.max_messages {
        return Err(GatewayError::invalid(
            "input",
            format!("too many input items: {} (the limit is {})", items.len(), caps.max_messages),
        ));
    }
    for (i, item) in items.iter().enumerate() {
        let Value::Object(item) = item else {
            return Err(GatewayError::invalid(format!("input[{i}]"), "each input item must be an object"));
        };
        let kind = match item.get("type") {
            None | Some(Value::Null) if item.contains_key("role") => "message",
            Some(Value::String(kind)) => kind.as_str(),
            _ => {
                return Err(GatewayError::invalid(
                    format!("input[{i}].type"),
                    "each input item must have a string type",
                ))
            }
        };
        if kind == "message" {
            match item.get("role") {
                Some(Value::String(role)) if ROLES.contains(&role.as_str()) => {}
                _ => {
                    return Err(GatewayError::invalid(
                        format!("input[{i}].role"),
                        format!("a message needs a role: one of {}", ROLES.join(", ")),
                    ))
                }
            }
        }
        if kind == "item_reference" {
            stateful.get_or_insert("input");
        }
        for (field, value) in item {
            match (field.as_str(), value) {
                ("type" | "role", _) => {}
                ("content" | "output", Value::Array(parts)) => {
                    check_parts(parts, &format!("input[{i}].{field}"), "input", caps, prompt)?
                }
                _ => prompt.add_text(string_bytes(value), "input", caps)?,
            }
        }
    }
    Ok(items.len() as u32)
}
