//! What a backend's failure means: the error the client gets, and whether it is the backend's
//! fault (fail over to another backend, count it against this one's health) or the caller's.
//!
//! Backends disagree on error JSON (vLLM puts the HTTP status in `code` as an integer, FastAPI
//! servers send `{"detail": …}`, some send plain text). Only a 4xx's human message is passed on,
//! cleaned of URLs, addresses and file paths; anything else becomes a generic message so no
//! internals leak.

use crate::core::error::{GatewayError, MAX_RETRY_AFTER_S};
use crate::core::http::Headers;
use serde_json::Value;

/// Longest backend message we pass on.
const MAX_MESSAGE_CHARS: usize = 500;

/// What a failed attempt means for the request and for the backend's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blame {
    /// Another backend may be tried (the failure was the backend's, and nothing can have been
    /// generated that the client would be charged for twice).
    pub failover: bool,
    /// Whether it counts toward ejecting the backend.
    pub counts: Counts,
}

/// When a failure counts against the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counts {
    Never,
    /// At once: the backend could not be reached, or answered with something that is not an
    /// answer at all.
    Now,
    /// Only if another backend then answers the same request. A 5xx may be the request's own
    /// doing (llama-cpp-python answers 500 to any exception a request raises); when every
    /// backend fails it the same way, it is the request, and ejecting them all would hand every
    /// other caller a 503.
    IfAnotherAnswers,
}

impl Blame {
    /// The backend could not be reached or sent no answer: try another, and count it.
    pub const BROKEN: Blame = Blame { failover: true, counts: Counts::Now };
    /// The backend failed, perhaps because of the request: try another; count it if that one answers.
    pub const SUSPECT: Blame = Blame { failover: true, counts: Counts::IfAnotherAnswers };
    /// The backend is busy (429): try another, but it is not broken.
    pub const BUSY: Blame = Blame { failover: true, counts: Counts::Never };
    /// The request itself, or a wait that may have started generating: neither.
    pub const NOBODY: Blame = Blame { failover: false, counts: Counts::Never };
}

/// Maps a backend's non-2xx answer (status, headers, up to the first KiBs of its body).
///
/// - 429: busy — fail over, not unhealthy; its `Retry-After` (seconds) is clamped.
/// - 5xx other than 501/505, and anything that is neither 2xx nor 4xx: fail over, and count it
///   against the backend if another one answers (see [`Counts::IfAnotherAnswers`]).
/// - 4xx, 501, 505: the request's — never retried elsewhere, never held against the backend.
pub fn classify(status: u16, headers: &Headers, body: &[u8]) -> (GatewayError, Blame) {
    match status {
        429 => {
            let retry_after_s =
                headers.get("retry-after").and_then(|v| v.trim().parse::<u64>().ok()).map(|s| s.min(MAX_RETRY_AFTER_S));
            (GatewayError::UpstreamBusy { retry_after_s }, Blame::BUSY)
        }
        400 | 413 | 422 => (rejected(400, body, "The inference backend rejected the request."), Blame::NOBODY),
        404 => (rejected(404, body, "The inference backend does not serve this request."), Blame::NOBODY),
        401 | 403 => (
            GatewayError::Upstream { message: "The inference backend refused the gateway's credentials.".into() },
            Blame::NOBODY,
        ),
        501 | 505 => (
            GatewayError::Upstream {
                message: format!("The inference backend does not support this request (HTTP {status})."),
            },
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
            GatewayError::Upstream {
                message: format!("The inference backend answered with an error (HTTP {status})."),
            },
            Blame::SUSPECT,
        ),
    }
}

fn rejected(status: u16, body: &[u8], fallback: &str) -> GatewayError {
    let message =
        serde_json::from_slice::<Value>(body).ok().and_then(|v| message_of(&v)).unwrap_or_else(|| fallback.into());
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

/// Whether a word shows something of the backend's insides, anywhere in it: a URL, a file path
/// (two or more `/`-separated parts, a backslash, a drive letter), an IPv4 or IPv6 address, or a
/// host name with a port or an internal suffix. Over-redacting a harmless word is the safe error.
fn reveals_internals(word: &str) -> bool {
    let lower = word.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let slashes = bytes.iter().filter(|b| **b == b'/').count();
    let drive = bytes.windows(3).any(|w| w[0].is_ascii_alphabetic() && w[1] == b':' && (w[2] == b'/' || w[2] == b'\\'));
    lower.contains("://")
        || slashes >= 2
        || (slashes == 1
            && (lower.starts_with('/') || lower.starts_with("'/") || lower.contains("=/") || lower.contains("~/")))
        || lower.contains('\\')
        || drive
        || has_ipv4(bytes)
        || lower.split(['[', ']', '(', ')', '\'', '"', ',', '=', '/']).any(looks_ipv6)
        || INTERNAL_SUFFIXES.iter().any(|s| lower.contains(s))
        || host_with_port(&lower)
}

/// Name suffixes of private networks and clusters.
const INTERNAL_SUFFIXES: &[&str] =
    &[".local", ".internal", ".svc", ".cluster", ".lan", ".corp", ".home.arpa", ".intranet"];

/// Four dot-separated groups of 1–3 digits anywhere in `bytes`.
fn has_ipv4(bytes: &[u8]) -> bool {
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_ascii_digit()) {
            let mut groups = 0;
            let mut j = i;
            loop {
                let start = j;
                while j < bytes.len() && bytes[j].is_ascii_digit() {
                    j += 1;
                }
                if j == start || j - start > 3 {
                    break;
                }
                groups += 1;
                if groups == 4 {
                    return true;
                }
                if bytes.get(j) != Some(&b'.') {
                    break;
                }
                j += 1;
            }
        }
        i += 1;
    }
    false
}

/// `::` between hex digits, or three or more colons among hex groups.
fn looks_ipv6(word: &str) -> bool {
    let core = word.trim_matches(|c: char| !c.is_ascii_hexdigit() && c != ':');
    let colons = core.matches(':').count();
    let hexish = !core.is_empty() && core.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
    (core.contains("::") && core.len() > 2 && hexish) || (colons >= 3 && hexish)
}

/// `name.domain:port`.
fn host_with_port(word: &str) -> bool {
    let word = word.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    match word.rsplit_once(':') {
        Some((host, port)) => {
            !port.is_empty()
                && port.len() <= 5
                && port.bytes().all(|b| b.is_ascii_digit())
                && host.contains('.')
                && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_internals_anywhere_in_a_word() {
        for word in [
            "http://10.0.0.3:8000/docs",
            "(10.0.0.3:8000)",
            "host='10.1.2.3',",
            "input_value='/data/models/llama',",
            "model_path=/srv/weights",
            "/opt/vllm/x.py",
            "C:/models/llama",
            r"C:\models",
            "[fd00:10::5]:8000",
            "vllm-0.inference.svc.cluster.local:8000",
            "10.1.2.3/24",
            "gpu1.example.com:8000",
        ] {
            assert!(reveals_internals(word), "{word}");
        }
    }

    #[test]
    fn keeps_ordinary_words() {
        for word in [
            "context",
            "4096",
            "tokens.",
            "(M",
            ">",
            "N",
            "-",
            "P).",
            "'max_tokens'",
            "3.5",
            "text/plain",
            "12:30",
            "v0.9.1",
            "error:",
        ] {
            assert!(!reveals_internals(word), "{word}");
        }
    }

    #[test]
    fn cuts_long_messages_on_a_character_boundary() {
        let message = "é".repeat(2 * MAX_MESSAGE_CHARS);
        let cleaned = clean(&message);
        assert_eq!(cleaned.chars().count(), MAX_MESSAGE_CHARS);
    }
}
