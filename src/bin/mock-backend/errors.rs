//! vLLM's error responses: `{"error": {message, type, param, code}}`.

use serde::Serialize;

use crate::response::Response;

pub(crate) fn bad_request(message: &str) -> Response {
    vllm_error(400, "BadRequestError", message)
}

pub(crate) fn vllm_error(status: u16, kind: &str, message: &str) -> Response {
    error_body(status, kind, message, None)
}

/// An error naming the offending request field, as vLLM's validation errors do.
pub(crate) fn vllm_error_with_param(
    status: u16,
    kind: &str,
    message: &str,
    param: &str,
) -> Response {
    error_body(status, kind, message, Some(param))
}

fn error_body(status: u16, kind: &str, message: &str, param: Option<&str>) -> Response {
    Response::json(
        status,
        &ErrorBody {
            error: ErrorDetail {
                message,
                kind,
                param,
                code: status,
            },
        },
    )
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
