//! `POST /v1/chat/completions`: messages, and every field a chat template renders into the prompt.

use super::fields::*;
use super::Validated;
use crate::core::config::RequestCaps;
use crate::core::error::GatewayError;
use crate::core::openai::Endpoint;
use serde_json::Value;

const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool", "function"];

/// Top-level fields a chat template renders into the prompt (vLLM, SGLang and llama.cpp merge
/// `chat_template_kwargs` into the template's variables, where `tools` and `documents` override
/// the request's own).
const PROMPT_FIELDS: &[&str] =
    &["tools", "functions", "tool_choice", "function_call", "response_format", "documents", "chat_template_kwargs"];

/// Parses and validates a `/v1/chat/completions` body.
pub fn validate_chat(body: &[u8], caps: &RequestCaps) -> Result<Validated, GatewayError> {
    let mut request = parse_object(body)?;
    let model = model(&request)?;
    let mut prompt = PromptSize::default();
    let messages = check_messages(request.get("messages"), caps, &mut prompt)?;
    count_json_fields(&request, PROMPT_FIELDS, caps, &mut prompt)?;
    let stream = stream(&request)?;
    check_sampling(&request)?;
    let choices = check_choices(&request, caps)?;
    refuse_fields(&request)?;
    let max_tokens = check_length(&request, &["max_tokens", "max_completion_tokens"], caps)?;
    let client_wants_usage = check_stream_options(&mut request, stream)?;
    Ok(Validated {
        endpoint: Endpoint::ChatCompletions,
        model,
        stream,
        client_wants_usage,
        max_tokens,
        choices,
        text_bytes: prompt.text_bytes,
        token_ids: 0,
        media_parts: prompt.media_parts,
        messages,
        stateful: None,
        background: false,
        body: request,
    })
}

/// Checks `messages`, adding what they will cost to `prompt`; returns how many there are.
fn check_messages(messages: Option<&Value>, caps: &RequestCaps, prompt: &mut PromptSize) -> Result<u32, GatewayError> {
    let messages = match messages {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => {
            return Err(GatewayError::invalid("messages", "messages must contain at least one message"))
        }
        None | Some(Value::Null) => {
            return Err(GatewayError::invalid("messages", "you must provide a messages parameter"))
        }
        Some(_) => return Err(GatewayError::invalid("messages", "messages must be an array")),
    };
    if messages.len() > caps.max_messages {
        return Err(GatewayError::invalid(
            "messages",
            format!("too many messages: {} (the limit is {})", messages.len(), caps.max_messages),
        ));
    }
    for (i, message) in messages.iter().enumerate() {
        let Value::Object(message) = message else {
            return Err(GatewayError::invalid(format!("messages[{i}]"), "each message must be an object"));
        };
        match message.get("role") {
            Some(Value::String(role)) if ROLES.contains(&role.as_str()) => {}
            Some(Value::String(role)) => {
                return Err(GatewayError::invalid(
                    format!("messages[{i}].role"),
                    format!("unknown role `{role}`; expected one of {}", ROLES.join(", ")),
                ))
            }
            _ => {
                return Err(GatewayError::invalid(
                    format!("messages[{i}].role"),
                    "each message must have a string role",
                ))
            }
        }
        for (field, value) in message {
            match field.as_str() {
                "role" => {}
                "content" => check_content(value, i, caps, prompt)?,
                // name, refusal, tool_calls (arguments), tool_call_id, reasoning…: all tokenized.
                _ => prompt.add_text(string_bytes(value), "messages", caps)?,
            }
        }
    }
    Ok(messages.len() as u32)
}

/// One message's `content`: a string, an array of content parts, or null (assistant messages that
/// only carry tool calls).
fn check_content(content: &Value, i: usize, caps: &RequestCaps, prompt: &mut PromptSize) -> Result<(), GatewayError> {
    match content {
        Value::Null => Ok(()),
        Value::String(s) => prompt.add_text(s.len(), "messages", caps),
        Value::Array(parts) => check_parts(parts, &format!("messages[{i}].content"), "messages", caps, prompt),
        _ => Err(GatewayError::invalid(
            format!("messages[{i}].content"),
            "content must be a string or an array of content parts",
        )),
    }
}
