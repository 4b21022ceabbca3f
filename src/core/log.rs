//! One JSON log line per request: who, what, where it went, how long, how many tokens.
//!
//! Never a key, a backend URL or a prompt: the key's id and the backend's name stand for them.

use crate::core::openai::Usage;
use serde::Serialize;

/// What is known about a request by the time it is answered (or its stream ends).
#[derive(Debug, Clone, Default, Serialize)]
pub struct LogRecord {
    /// Unix time in ms when the request arrived.
    pub ts: u64,
    /// The id the client got in `x-request-id`.
    pub request_id: String,
    /// The id the backend got, when the client's was not a UUID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_request_id: Option<String>,
    /// W3C trace context: the trace, and the gateway's span in it.
    pub trace_id: String,
    pub span_id: String,
    pub method: String,
    pub path: String,
    pub key_id: Option<String>,
    pub model: Option<String>,
    pub stream: Option<bool>,
    pub backend: Option<String>,
    /// Backends tried (more than one after a failover).
    pub attempts: Option<u32>,
    pub status: u16,
    /// The OpenAI error code when the request failed (or its stream ended in an error).
    pub error: Option<&'static str>,
    /// What went wrong inside, for operators only (never sent to the client).
    pub detail: Option<String>,
    /// Why a stream ended: `done`, `client_closed`, `upstream_error`, `timeout`.
    pub stream_end: Option<&'static str>,
    pub latency_ms: u64,
    /// From arrival to the backend's first body bytes.
    pub ttfb_ms: Option<u64>,
    pub usage: Option<Usage>,
}

impl LogRecord {
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{\"log\":\"unserializable\"}"))
    }
}

/// One operational event as a JSON log line (`{"level","event",…}`): the one way lines other than
/// the request record are written, by the core and the adapters alike.
pub fn event(level: &str, event: &str, fields: &[(&str, serde_json::Value)]) -> String {
    let mut line = serde_json::Map::new();
    line.insert("level".into(), level.into());
    line.insert("event".into(), event.into());
    for (name, value) in fields {
        line.insert((*name).into(), value.clone());
    }
    serde_json::Value::Object(line).to_string()
}
