//! One JSON log line per request: who, what, where it went, how long, how many tokens.
//!
//! Never a key, a backend URL or a prompt: the key's id and the backend's name stand for them.

use crate::core::openai::Usage;
use crate::core::runtime::Runtime;
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
    /// The endpoint, low-cardinality (`chat.completions`, `models`, `readyz`…), for metrics.
    pub route: Option<&'static str>,
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
    /// From arrival to the gateway's answer head (a stream's commit).
    pub ttfb_ms: Option<u64>,
    /// Streams: from arrival to the first content event relayed (OpenTelemetry's
    /// `gen_ai.server.time_to_first_token`).
    pub ttft_ms: Option<u64>,
    /// Streams: the mean time per output token after the first
    /// (`gen_ai.server.time_per_output_token`).
    pub tpot_ms: Option<f64>,
    /// Token counts (`gen_ai.client.token.usage`, input and output).
    pub usage: Option<Usage>,
    /// Set when the backend gave no count (a stream cut short, or a server that ignores
    /// `stream_options.include_usage`): `usage` is the prompt estimate and one token per chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_estimated: Option<bool>,
}

impl LogRecord {
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{\"log\":\"unserializable\"}"))
    }

    /// The same record as one metrics data point (Workers Analytics Engine's shape): indexed by
    /// the key, seven blobs and six doubles, in the order the README documents. A value the
    /// request did not have is an empty blob or a zero.
    pub fn data_point(&self) -> DataPoint {
        let text = |s: Option<&str>| s.unwrap_or_default().to_string();
        let status_class = format!("{}xx", self.status / 100);
        let usage = self.usage.unwrap_or_default();
        DataPoint {
            index: text(self.key_id.as_deref()),
            blobs: [
                text(self.model.as_deref()),
                text(self.backend.as_deref()),
                status_class,
                text(self.error),
                text(self.stream_end),
                text(self.key_id.as_deref()),
                text(self.route),
            ],
            doubles: [
                self.latency_ms as f64,
                self.ttft_ms.unwrap_or_default() as f64,
                usage.prompt_tokens as f64,
                usage.completion_tokens as f64,
                f64::from(self.attempts.unwrap_or_default()),
                self.tpot_ms.unwrap_or_default(),
            ],
        }
    }
}

/// One request as a metrics data point: what an operator charts without parsing logs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DataPoint {
    /// The key id (`anonymous`, `jwt:<sub>`): Analytics Engine samples per index.
    pub index: String,
    /// model, backend, status class (`2xx`…), error code, stream end, key id, route.
    pub blobs: [String; 7],
    /// latency ms (`gen_ai.client.operation.duration`), time to first token ms, prompt tokens,
    /// completion tokens, attempts, mean time per output token ms.
    pub doubles: [f64; 6],
}

/// Where each request's one final record goes: the JSON log line, and — where the platform has
/// one — a metrics data point made from the same record, so the two never disagree.
pub trait Metrics {
    fn record(&self, record: &LogRecord);
}

/// Where there is no metrics store (Spin, tests that do not look): the log line is the record.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoMetrics;

impl Metrics for NoMetrics {
    fn record(&self, _: &LogRecord) {}
}

/// Writes a request's one final record: its JSON log line, then its data point, both from the
/// same record so that logs and charts never disagree.
pub fn finish<R: Runtime>(runtime: &R, metrics: &dyn Metrics, record: &LogRecord) {
    runtime.log(&record.to_line());
    metrics.record(record);
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
