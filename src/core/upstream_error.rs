//! What a backend's failure means: the error the client gets, and whether it is the backend's
//! fault (fail over to another backend, count it against this one's health) or the caller's.
//!
//! Backends disagree on error JSON (vLLM puts the HTTP status in `code` as an integer, FastAPI
//! servers send `{"detail": …}`, some send plain text). Only a 4xx's human message is passed on,
//! cleaned of URLs, addresses and file paths; anything else becomes a generic message so no
//! internals leak.

use super::error::{GatewayError, MAX_RETRY_AFTER_S};
use super::http::Headers;
use serde_json::Value;

/// Longest backend message we pass on.
const MAX_MESSAGE_CHARS: usize = 500;

/// What a failed attempt means for the request and for the backend's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blame {
    /// Another backend may be tried (the failure was the backend's, and nothing can have been
    /// generated that the client would be charged for twice).
    pub failover: bool,
    /// It counts toward ejecting the backend.
    pub unhealthy: bool,
}

impl Blame {
    /// The backend is broken: try another, and count it.
    pub const BACKEND: Blame = Blame { failover: true, unhealthy: true };
    /// The backend is busy (429): try another, but it is not broken.
    pub const BUSY: Blame = Blame { failover: true, unhealthy: false };
    /// The request itself, or a wait that may have started generating: neither.
    pub const NOBODY: Blame = Blame { failover: false, unhealthy: false };
}

/// Maps a backend's non-2xx answer (status, headers, up to the first KiBs of its body).
///
/// - 429: busy — fail over, not unhealthy; its `Retry-After` (seconds) is clamped.
/// - 5xx other than 501/505, and anything that is neither 2xx nor 4xx: the backend's fault.
/// - 4xx, 501, 505: the request's — never retried elsewhere, never held against the backend.
pub fn classify(status: u16, headers: &Headers, body: &[u8]) -> (GatewayError, Blame) {
    match status {
        429 => {
            let retry_after_s = headers
                .get("retry-after")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| s.min(MAX_RETRY_AFTER_S));
            (GatewayError::UpstreamBusy { retry_after_s }, Blame::BUSY)
        }
        400 | 413 | 422 => (rejected(400, body, "The inference backend rejected the request."), Blame::NOBODY),
        404 => (rejected(404, body, "The inference backend does not serve this request."), Blame::NOBODY),
        401 | 403 => (
            GatewayError::Upstream { message: "The inference backend refused the gateway's credentials.".into() },
            Blame::NOBODY,
        ),
        501 | 505 => (
            GatewayError::Upstream { message: format!("The inference backend does not support this request (HTTP {status}).") },
            Blame::NOBODY,
        ),
        400..=499 => (
            GatewayError::UpstreamRejected {
                status: 400,
                message: format!("The inference backend rejected the request (HTTP {status})."),
            },
            Blame::NOBODY,
        ),
        _ => (
            GatewayError::Upstream { message: format!("The inference backend answered with an error (HTTP {status}).") },
            Blame::BACKEND,
        ),
    }
}

fn rejected(status: u16, body: &[u8], fallback: &str) -> GatewayError {
    let message = serde_json::from_slice::<Value>(body).ok().and_then(|v| message_of(&v)).unwrap_or_else(|| fallback.into());
    GatewayError::UpstreamRejected { status, message }
}

/// The human message inside a backend's error JSON (`{"error":{"message"}}`, `{"error":"…"}`,
/// `{"message"}`, `{"detail":"…"}`), cleaned.
pub fn message_of(value: &Value) -> Option<String> {
    let message = value
        .pointer("/error/message")
        .or_else(|| value.get("message"))
        .or_else(|| value.get("detail").filter(|d| d.is_string()))
        .or_else(|| value.get("error").filter(|e| e.is_string()))?
        .as_str()?;
    let message = clean(message);
    (!message.trim().is_empty()).then_some(message)
}

/// A backend message as it may be shown to a client: control characters dropped, every word
/// that is a URL, a network address or a file path replaced, and cut short.
pub fn clean(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MAX_MESSAGE_CHARS));
    for (i, word) in message.split_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if reveals_internals(word) {
            out.push_str("[redacted]");
        } else {
            out.extend(word.chars().filter(|c| !c.is_control()));
        }
        if out.len() >= MAX_MESSAGE_CHARS {
            break;
        }
    }
    match out.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => out[..cut].to_string(),
        None => out,
    }
}

/// URLs (`scheme://…`), absolute or home-relative paths, Windows paths, and IPv4 addresses.
fn reveals_internals(word: &str) -> bool {
    let word = word.trim_matches(|c: char| "()[]{}<>'\"`,;.".contains(c));
    if word.contains("://") {
        return true;
    }
    let path_like = (word.starts_with('/') || word.starts_with("~/")) && word[1..].contains('/');
    let windows_path = word.len() > 2 && word.as_bytes()[1] == b':' && word.as_bytes()[2] == b'\\';
    path_like || windows_path || is_ipv4_ish(word)
}

/// `a.b.c.d`, optionally with `:port`.
fn is_ipv4_ish(word: &str) -> bool {
    let host = word.split(':').next().unwrap_or(word);
    let parts: Vec<&str> = host.split('.').collect();
    parts.len() == 4 && parts.iter().all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}
