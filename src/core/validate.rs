//! Checks a chat completion request before any backend sees it, and prepares what the backend gets.
//!
//! The body is parsed once into a JSON object so unknown fields pass through untouched (vLLM and
//! others accept extras); only the fields we police are read, and two are written: the
//! `max_tokens` cap when the client sent none, and `stream_options.include_usage` on streams so
//! usage can be counted.

use super::config::RequestLimits;
use super::error::GatewayError;
use serde_json::{Map, Value};

const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool", "function"];

/// A chat request that passed every check, ready to send upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedChat {
    pub model: String,
    pub stream: bool,
    /// Whether the client itself asked for the usage chunk (else we drop it from the stream).
    pub client_wants_usage: bool,
    /// The completion budget the backend will honour (client's value or the injected cap).
    pub max_tokens: u32,
    /// How many choices the backend generates (`n`).
    pub choices: u32,
    /// Bytes of text across all messages, for token estimates.
    pub content_bytes: usize,
    /// The JSON body to send to the backend.
    pub upstream_body: Vec<u8>,
}

/// Parses and validates a `/v1/chat/completions` body.
pub fn validate_chat(body: &[u8], limits: &RequestLimits) -> Result<ValidatedChat, GatewayError> {
    let mut request = parse_object(body)?;

    let model = match request.get("model") {
        Some(Value::String(m)) if !m.trim().is_empty() => m.clone(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(GatewayError::invalid("model", "you must provide a model parameter"))
        }
        Some(_) => return Err(GatewayError::invalid("model", "model must be a string")),
    };

    let content_bytes = check_messages(request.get("messages"), limits)?;

    let stream = match request.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(GatewayError::invalid("stream", "stream must be a boolean")),
    };

    check_number(&request, "temperature", |t| (0.0..=2.0).contains(&t), "a number from 0 to 2")?;
    check_number(&request, "top_p", |p| p > 0.0 && p <= 1.0, "a number greater than 0 and at most 1")?;
    let choices = match optional_integer(&request, "n")? {
        Some(n) if n < 1 || n > u64::from(limits.max_n) => {
            return Err(GatewayError::invalid("n", format!("n must be an integer from 1 to {}", limits.max_n)))
        }
        Some(n) => n as u32,
        None => 1,
    };

    let mut max_tokens = None;
    for field in ["max_tokens", "max_completion_tokens"] {
        if let Some(value) = optional_integer(&request, field)? {
            if value < 1 || value > u64::from(limits.max_tokens) {
                return Err(GatewayError::invalid(
                    field,
                    format!("{field} must be an integer from 1 to {}", limits.max_tokens),
                ));
            }
            max_tokens = Some(max_tokens.map_or(value as u32, |m: u32| m.min(value as u32)));
        }
    }
    let max_tokens = match max_tokens {
        Some(m) => m,
        None => {
            request.insert("max_tokens".into(), Value::from(limits.max_tokens));
            limits.max_tokens
        }
    };

    let client_wants_usage = check_stream_options(&mut request, stream)?;

    let upstream_body = serde_json::to_vec(&Value::Object(request))
        .map_err(|_| GatewayError::invalid("", "request could not be re-encoded"))?;
    Ok(ValidatedChat { model, stream, client_wants_usage, max_tokens, choices, content_bytes, upstream_body })
}

impl ValidatedChat {
    /// Prompt tokens, estimated from the text (about four bytes a token) before any tokenizer.
    pub fn prompt_estimate(&self) -> u64 {
        (self.content_bytes as u64).div_ceil(4)
    }

    /// The most this request can cost: its prompt plus every choice at full length. Admission
    /// takes this from the token budget; settlement gives back what was not used.
    pub fn token_estimate(&self) -> u64 {
        self.prompt_estimate() + u64::from(self.max_tokens) * u64::from(self.choices)
    }
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, GatewayError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(GatewayError::InvalidRequest {
            message: "The request body must be a JSON object.".into(),
            param: None,
            code: None,
        }),
        Err(e) => Err(GatewayError::InvalidRequest {
            message: format!("We could not parse the JSON body of your request: {e}."),
            param: None,
            code: None,
        }),
    }
}

/// Checks `messages` and returns the total bytes of text content.
fn check_messages(messages: Option<&Value>, limits: &RequestLimits) -> Result<usize, GatewayError> {
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
    if messages.len() > limits.max_messages {
        return Err(GatewayError::invalid(
            "messages",
            format!("too many messages: {} (the limit is {})", messages.len(), limits.max_messages),
        ));
    }
    let mut total = 0usize;
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
        total += content_bytes(message.get("content"), i)?;
        if total > limits.max_content_bytes {
            return Err(GatewayError::invalid(
                "messages",
                format!("message content exceeds the limit of {} bytes", limits.max_content_bytes),
            ));
        }
    }
    Ok(total)
}

/// Bytes of text in one message's `content`: a string, an array of content parts, or null
/// (assistant messages that only carry tool calls).
fn content_bytes(content: Option<&Value>, i: usize) -> Result<usize, GatewayError> {
    let param = || format!("messages[{i}].content");
    match content {
        None | Some(Value::Null) => Ok(0),
        Some(Value::String(s)) => Ok(s.len()),
        Some(Value::Array(parts)) => {
            let mut total = 0;
            for (j, part) in parts.iter().enumerate() {
                let part_param = || format!("messages[{i}].content[{j}]");
                let Value::Object(part) = part else {
                    return Err(GatewayError::invalid(part_param(), "each content part must be an object"));
                };
                match part.get("type") {
                    Some(Value::String(t)) if t == "text" => match part.get("text") {
                        Some(Value::String(text)) => total += text.len(),
                        _ => {
                            return Err(GatewayError::invalid(
                                format!("messages[{i}].content[{j}].text"),
                                "a text part must have a string text",
                            ))
                        }
                    },
                    Some(Value::String(_)) => {}
                    _ => {
                        return Err(GatewayError::invalid(
                            format!("messages[{i}].content[{j}].type"),
                            "each content part must have a string type",
                        ))
                    }
                }
            }
            Ok(total)
        }
        Some(_) => Err(GatewayError::invalid(param(), "content must be a string or an array of content parts")),
    }
}

fn check_number(
    request: &Map<String, Value>,
    field: &str,
    ok: impl Fn(f64) -> bool,
    expected: &str,
) -> Result<(), GatewayError> {
    match request.get(field) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Number(n)) if n.as_f64().is_some_and(&ok) => Ok(()),
        Some(_) => Err(GatewayError::invalid(field, format!("{field} must be {expected}"))),
    }
}

fn optional_integer(request: &Map<String, Value>, field: &str) -> Result<Option<u64>, GatewayError> {
    match request.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
            (Some(v), _) => Ok(Some(v)),
            (None, Some(_)) => Ok(Some(0)), // negative: reported by the caller's range check
            _ => Err(GatewayError::invalid(field, format!("{field} must be an integer"))),
        },
        Some(_) => Err(GatewayError::invalid(field, format!("{field} must be an integer"))),
    }
}

/// Validates `stream_options` and, on streams, asks the backend for the usage chunk.
/// Returns whether the client asked for usage itself.
fn check_stream_options(request: &mut Map<String, Value>, stream: bool) -> Result<bool, GatewayError> {
    let wants = match request.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(options)) => match options.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(GatewayError::invalid(
                    "stream_options.include_usage",
                    "include_usage must be a boolean",
                ))
            }
        },
        Some(_) => return Err(GatewayError::invalid("stream_options", "stream_options must be an object")),
    };
    if !stream && request.get("stream_options").is_some_and(|o| !o.is_null()) {
        return Err(GatewayError::invalid(
            "stream_options",
            "stream_options is only allowed when stream is true",
        ));
    }
    if stream {
        let options = request
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        if !options.is_object() {
            *options = Value::Object(Map::new());
        }
        if let Value::Object(options) = options {
            options.insert("include_usage".into(), Value::Bool(true));
        }
    }
    Ok(wants)
}
