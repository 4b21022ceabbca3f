//! Turns a backend's error answer into our OpenAI-shaped error.
//!
//! Backends disagree on error JSON (vLLM puts the HTTP status in `code` as an integer, FastAPI
//! servers send `{"detail": …}`, some send plain text). Only a validation message from a 4xx is
//! safe and useful to show; anything else becomes a generic 502 so no internals leak.

use super::error::GatewayError;
use super::http::Headers;
use serde_json::Value;

/// Longest backend message we pass on.
const MAX_MESSAGE_CHARS: usize = 1000;

/// Maps a backend's non-2xx answer (status, headers, up to the first KiBs of its body).
pub fn normalise(status: u16, headers: &Headers, body: &[u8]) -> GatewayError {
    match status {
        429 => GatewayError::UpstreamBusy {
            retry_after_s: headers.get("retry-after").and_then(|v| v.trim().parse().ok()),
        },
        400 | 413 | 422 => match message_of(body) {
            Some(message) => GatewayError::UpstreamRejected { status: 400, message },
            None => GatewayError::UpstreamRejected {
                status: 400,
                message: "The inference backend rejected the request.".into(),
            },
        },
        _ => GatewayError::Upstream {
            message: format!("The inference backend answered with an error (HTTP {status})."),
        },
    }
}

/// The human message inside a backend's error JSON, if there is one.
fn message_of(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let message = value
        .pointer("/error/message")
        .or_else(|| value.get("message"))
        .or_else(|| value.get("detail").filter(|d| d.is_string()))
        .or_else(|| value.get("error").filter(|e| e.is_string()))?
        .as_str()?;
    let message: String = message.chars().filter(|c| !c.is_control()).take(MAX_MESSAGE_CHARS).collect();
    (!message.trim().is_empty()).then_some(message)
}
