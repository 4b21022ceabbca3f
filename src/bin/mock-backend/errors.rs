//! vLLM's error responses: `{"error": {message, type, param, code}}`.

use serde::Serialize;

use crate::response::Response;

pub(crate) fn bad_request(message: &str) -> Response {
    vllm_error(400, "BadRequestError", message)
}

pub(crate) fn vllm_error(status: u16, kind: &str, message: &str) -> Response {
    Response::json(
        status,
        &ErrorBody {
            error: ErrorDetail {
                message,
                kind,
                param: None,
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
    param: Option<()>,
    code: u16,
}
