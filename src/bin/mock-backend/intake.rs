//! What every generation endpoint reads first: the JSON body, the `model` it names, and
//! whether `mock.status` or a canned fault replaces the answer entirely.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::cli::{Config, DEFAULT_MODEL};
use crate::controls::MockControls;
use crate::errors::{bad_request, status_error, vllm_error};
use crate::faults::Fault;
use crate::reply::Reply;
use crate::request::Request;
use crate::response::Response;

/// The request body as a JSON object, or vLLM's 400.
pub(crate) fn json_body(request: &Request) -> Result<Map<String, Value>, Response> {
    let body: Value = serde_json::from_slice(&request.body)
        .map_err(|err| bad_request(&format!("Invalid JSON in request body: {err}")))?;
    match body {
        Value::Object(fields) => Ok(fields),
        _ => Err(bad_request("The request body must be a JSON object.")),
    }
}

/// The body's `mock` field, within the command line's limits.
pub(crate) fn controls(body: &Map<String, Value>, config: &Config) -> Result<MockControls, Response> {
    MockControls::from_body(body.get("mock"), config).map_err(|message| bad_request(&message))
}

/// The served model the request names (the first one when it names none), or vLLM's 404.
pub(crate) fn resolve_model(config: &Config, requested: Option<&Value>) -> Result<String, Response> {
    match requested {
        None | Some(Value::Null) => Ok(config.models.first().cloned().unwrap_or_else(|| DEFAULT_MODEL.to_owned())),
        Some(Value::String(name)) if config.models.contains(name) => Ok(name.clone()),
        Some(Value::String(name)) => Err(model_not_found(name)),
        Some(_) => Err(bad_request("`model` must be a string.")),
    }
}

/// vLLM's answer for a model it does not serve.
pub(crate) fn model_not_found(name: &str) -> Response {
    vllm_error(404, "NotFoundError", &format!("The model `{name}` does not exist."))
}

/// The answers that replace the generation entirely: `mock.status`, then the canned faults.
pub(crate) fn canned_reply(controls: &MockControls) -> Option<Reply> {
    if let Some(status) = controls.status {
        let response = status_error(status);
        return Some(Reply::Respond(match &controls.retry_after {
            Some(value) => response.with_header("retry-after", value),
            None => response,
        }));
    }
    controls.fault.and_then(Fault::canned_reply)
}

/// An optional boolean field; anything but a boolean or `null` is a 400.
pub(crate) fn optional_bool(body: &Map<String, Value>, field: &str) -> Result<Option<bool>, Response> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(value)) => Ok(Some(*value)),
        Some(_) => Err(bad_request(&format!("`{field}` must be a boolean."))),
    }
}

/// `stream_options.include_usage` is `true`.
pub(crate) fn include_usage(body: &Map<String, Value>) -> bool {
    body.get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool) == Some(true)
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
