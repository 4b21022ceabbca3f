//! The per-request `mock` body field (chunk count, pacing, prefill, fault, status), within the
//! limits the command line also obeys.

use std::time::Duration;

use serde_json::Value;

use crate::cli::{millis, Config, MAX_DELAY, MAX_TOKENS};
use crate::faults::Fault;

/// The `mock` body field, with CLI defaults filled in.
pub(crate) struct MockControls {
    pub(crate) chunks: u64,
    pub(crate) delay: Duration,
    pub(crate) prefill: Duration,
    pub(crate) fault: Option<Fault>,
    /// Answer with this status and vLLM's error body for it, whatever else is asked.
    pub(crate) status: Option<u16>,
    /// A `retry-after` header for the `status` answer, sent as given.
    pub(crate) retry_after: Option<String>,
}

impl MockControls {
    pub(crate) fn from_body(mock: Option<&Value>, config: &Config) -> Result<Self, String> {
        let mut controls = Self {
            chunks: config.chunks,
            delay: config.chunk_delay,
            prefill: config.prefill,
            fault: None,
            status: None,
            retry_after: None,
        };
        let fields = match mock {
            None | Some(Value::Null) => return Ok(controls),
            Some(Value::Object(fields)) => fields,
            Some(_) => return Err("`mock` must be an object".to_owned()),
        };
        if let Some(chunks) = optional_count(fields.get("chunks"), "mock.chunks", MAX_TOKENS)? {
            controls.chunks = chunks;
        }
        if let Some(ms) = optional_count(fields.get("delay_ms"), "mock.delay_ms", millis(MAX_DELAY))? {
            controls.delay = Duration::from_millis(ms);
        }
        if let Some(ms) = optional_count(fields.get("prefill_ms"), "mock.prefill_ms", millis(MAX_DELAY))? {
            controls.prefill = Duration::from_millis(ms);
        }
        controls.fault = match fields.get("fault") {
            None | Some(Value::Null) => None,
            Some(Value::String(name)) => {
                Some(Fault::parse(name).ok_or_else(|| format!("unknown mock fault `{name}`"))?)
            }
            Some(_) => return Err("`mock.fault` must be a string".to_owned()),
        };
        if let Some(status) = optional_count(fields.get("status"), "mock.status", 599)? {
            if status < 400 {
                return Err("`mock.status` must be an integer from 400 to 599".to_owned());
            }
            controls.status = u16::try_from(status).ok();
        }
        controls.retry_after = match fields.get("retry_after") {
            None | Some(Value::Null) => None,
            Some(Value::String(_)) if controls.status.is_none() => {
                return Err("`mock.retry_after` needs `mock.status`".to_owned())
            }
            Some(Value::String(value)) if value.chars().any(char::is_control) => {
                return Err("`mock.retry_after` must not hold control characters".to_owned())
            }
            Some(Value::String(value)) => Some(value.clone()),
            Some(_) => return Err("`mock.retry_after` must be a string".to_owned()),
        };
        // `fault_on` aims the fault (or status) at one named instance; the others answer
        // normally.
        match fields.get("fault_on") {
            None | Some(Value::Null) => {}
            Some(Value::String(target)) if config.name.as_deref() == Some(target) => {}
            Some(Value::String(_)) => {
                controls.fault = None;
                controls.status = None;
                controls.retry_after = None;
            }
            Some(_) => return Err("`mock.fault_on` must be a string".to_owned()),
        }
        Ok(controls)
    }
}

/// An optional non-negative integer field no larger than `max`.
pub(crate) fn optional_count(value: Option<&Value>, field: &str, max: u64) -> Result<Option<u64>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match value.as_u64() {
            Some(n) if n <= max => Ok(Some(n)),
            _ => Err(format!("`{field}` must be an integer from 0 to {max}")),
        },
    }
}
