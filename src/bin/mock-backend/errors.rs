//! vLLM's error bodies: the response `{"error": {message, type, param, code}}`,
//! the mid-stream error event, and the older top-level shape
//! `{"object": "error", message, type, param, code}` of vLLM up to 0.9.

use std::io;

use serde::Serialize;

use crate::response::{reason_phrase, Response};

/// What today's vLLM streams when generation fails mid-stream
/// (`chat_completion_stream_generator`: `data = self.create_streaming_error_response(e)`,
/// i.e. `json.dumps(create_error_response(e).model_dump())`, then `data: [DONE]`):
/// `str(exception)` as the message, and for an engine failure (not a `ValueError`)
/// `InternalServerError` / 500.
pub(crate) fn stream_error_event(message: &str) -> String {
    python_json_dumps(&ErrorBody {
        error: ErrorDetail { message, kind: "InternalServerError", param: None, code: 500 },
    })
}

/// What vLLM up to 0.9 streamed instead: `create_streaming_error_response(str(e))` wrapped
/// the old top-level `ErrorResponse` (with `object: "error"`) in `{"error": …}`, and took
/// the defaults `BadRequestError` / 400 whatever the failure.
pub(crate) fn legacy_stream_error_event(message: &str) -> String {
    python_json_dumps(&LegacyStreamError { error: legacy_error(message) })
}

/// The old top-level body vLLM up to 0.9 answered errors with (status 400 for the
/// defaults of `create_error_response`).
pub(crate) fn legacy_error_response(message: &str) -> Response {
    Response::json(400, &legacy_error(message))
}

fn legacy_error(message: &str) -> LegacyError<'_> {
    LegacyError { object: "error", message, kind: "BadRequestError", param: None, code: 400 }
}

/// Field order as in vLLM's old `ErrorResponse` model.
#[derive(Serialize)]
struct LegacyError<'a> {
    object: &'static str,
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<()>,
    code: u16,
}

#[derive(Serialize)]
struct LegacyStreamError<'a> {
    error: LegacyError<'a>,
}

/// Python's `json.dumps` output (`", "` and `": "` separators, non-ASCII as `\uXXXX`),
/// the bytes vLLM's stream error events carry; keys keep their insertion order.
fn python_json_dumps(value: &impl Serialize) -> String {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, PythonJson);
    if value.serialize(&mut serializer).is_err() {
        return String::new();
    }
    String::from_utf8(out).unwrap_or_default()
}

struct PythonJson;

impl serde_json::ser::Formatter for PythonJson {
    fn begin_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + io::Write>(&mut self, w: &mut W, fragment: &str) -> io::Result<()> {
        for c in fragment.chars() {
            if c.is_ascii() {
                w.write_all(&[c as u8])?;
            } else {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    write!(w, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

pub(crate) fn bad_request(message: &str) -> Response {
    vllm_error(400, "BadRequestError", message)
}

/// The answer vLLM gives with status `status`: its own error names where its
/// `create_error_response` uses them, else the `HTTPException` handler's shape (the
/// status phrase as type and message); a 401 is its API-key middleware's
/// `{"error":"Unauthorized"}`.
pub(crate) fn status_error(status: u16) -> Response {
    let phrase = reason_phrase(status);
    let kind = match status {
        401 => return unauthorized(),
        400 => "BadRequestError",
        404 => "NotFoundError",
        500 => "InternalServerError",
        501 => "NotImplementedError",
        _ => phrase,
    };
    vllm_error(status, kind, phrase)
}

/// vLLM's answer to a missing or wrong API key.
pub(crate) fn unauthorized() -> Response {
    Response::json(401, &serde_json::json!({"error": "Unauthorized"}))
}

pub(crate) fn vllm_error(status: u16, kind: &str, message: &str) -> Response {
    error_body(status, kind, message, None)
}

/// An error naming the offending request field, as vLLM's validation errors do.
pub(crate) fn vllm_error_with_param(status: u16, kind: &str, message: &str, param: &str) -> Response {
    error_body(status, kind, message, Some(param))
}

fn error_body(status: u16, kind: &str, message: &str, param: Option<&str>) -> Response {
    Response::json(status, &ErrorBody { error: ErrorDetail { message, kind, param, code: status } })
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: u16,
}
