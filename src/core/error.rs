//! Every failure the gateway can answer with, and the one place that renders it: status, OpenAI
//! `type`/`code`, message, and the headers that go with it (`retry-after`, `allow`).
//!
//! Each variant knows its HTTP status and its OpenAI `type`/`code`, so handlers only say *what*
//! went wrong. Messages never carry a secret, a backend URL or a backend's raw error body.

use crate::core::http::Response;
use crate::core::openai::Dialect;
use serde::Serialize;

/// A failure, with enough detail to render an OpenAI-shaped error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    /// No credentials, or credentials we do not know.
    InvalidApiKey,
    /// The key exists but may not use this model (or the model is not served at all).
    ModelNotFound { model: String },
    /// Malformed JSON, schema or limit violation; `param` is the JSON path.
    InvalidRequest { message: String, param: Option<String>, code: Option<&'static str> },
    /// The request body is larger than the configured cap.
    RequestTooLarge { limit_bytes: usize },
    /// No route for this path.
    NotFound { path: String },
    /// The path exists but not for this method; `allow` lists the methods it takes.
    MethodNotAllowed { method: String, path: String, allow: &'static str },
    /// A rate limit refused the request; `retry_after_ms` says when it may succeed.
    RateLimited { limit: RateLimitKind, retry_after_ms: u64, will_refill_soon: bool },
    /// The backend answered 429 itself; its `Retry-After`, clamped (see [`MAX_RETRY_AFTER_S`]).
    UpstreamBusy { retry_after_s: Option<u64> },
    /// The backend could not be reached, or answered with an error or garbage.
    Upstream { message: String },
    /// The backend refused the request as the caller's fault (a 4xx); its cleaned message.
    UpstreamRejected { status: u16, message: String },
    /// No backend is configured or healthy for this model; when one is expected back, how soon.
    ServiceUnavailable { message: String, retry_after_ms: Option<u64> },
    /// The backend did not get as far as `phase` in time.
    UpstreamTimeout { phase: TimeoutPhase },
    /// A configuration variable is missing or invalid; the message names it.
    Config { message: String },
    /// Something inside the gateway failed (e.g. the limit store); `detail` is logged, never sent.
    Internal { message: String, detail: String },
}

/// Which budget a 429 is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitKind {
    Requests,
    Tokens,
    Concurrency,
}

impl RateLimitKind {
    /// The `x-ratelimit-*-{suffix}` family, if OpenAI has one for this budget.
    pub fn header_suffix(self) -> Option<&'static str> {
        match self {
            RateLimitKind::Requests => Some("requests"),
            RateLimitKind::Tokens => Some("tokens"),
            RateLimitKind::Concurrency => None,
        }
    }
}

/// The phase of a backend call that took too long (see README "Timeouts").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// A stream's response headers (`GATEWAY_CONNECT_TIMEOUT_MS`): the backend never took the request.
    Connect,
    /// A stream's first bytes (`GATEWAY_FIRST_BYTE_TIMEOUT_MS`): time to first token.
    FirstByte,
    /// The gap between two chunks of a stream (`GATEWAY_IDLE_TIMEOUT_MS`).
    Idle,
    /// The whole answer (`GATEWAY_TOTAL_TIMEOUT_MS`): a non-stream completion, or a stream's end.
    Total,
}

impl TimeoutPhase {
    /// For the log line.
    pub fn name(self) -> &'static str {
        match self {
            TimeoutPhase::Connect => "connect",
            TimeoutPhase::FirstByte => "first_byte",
            TimeoutPhase::Idle => "idle",
            TimeoutPhase::Total => "total",
        }
    }
}

/// Longest wait we pass on from a backend's `Retry-After`: beyond it a client had better look
/// elsewhere than sleep.
pub const MAX_RETRY_AFTER_S: u64 = 3600;

impl GatewayError {
    /// Shorthand for a 400 about one JSON path.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        GatewayError::InvalidRequest { message: message.into(), param: Some(param.into()), code: None }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::InvalidApiKey => 401,
            GatewayError::ModelNotFound { .. } | GatewayError::NotFound { .. } => 404,
            GatewayError::InvalidRequest { .. } => 400,
            GatewayError::RequestTooLarge { .. } => 413,
            GatewayError::MethodNotAllowed { .. } => 405,
            GatewayError::RateLimited { .. } | GatewayError::UpstreamBusy { .. } => 429,
            GatewayError::Upstream { .. } => 502,
            GatewayError::UpstreamRejected { status, .. } => *status,
            GatewayError::ServiceUnavailable { .. } => 503,
            GatewayError::UpstreamTimeout { .. } => 504,
            GatewayError::Config { .. } | GatewayError::Internal { .. } => 500,
        }
    }

    /// OpenAI's error `type`.
    pub fn error_type(&self) -> &'static str {
        match self {
            GatewayError::RateLimited { limit: RateLimitKind::Tokens, .. } => "tokens",
            GatewayError::RateLimited { .. } | GatewayError::UpstreamBusy { .. } => "requests",
            GatewayError::Upstream { .. }
            | GatewayError::ServiceUnavailable { .. }
            | GatewayError::UpstreamTimeout { .. }
            | GatewayError::Config { .. }
            | GatewayError::Internal { .. } => "api_error",
            _ => "invalid_request_error",
        }
    }

    /// OpenAI's error `code`, when it has one (also the low-cardinality label in logs).
    pub fn code(&self) -> Option<&'static str> {
        match self {
            GatewayError::InvalidApiKey => Some("invalid_api_key"),
            GatewayError::ModelNotFound { .. } => Some("model_not_found"),
            GatewayError::InvalidRequest { code, .. } => *code,
            GatewayError::RequestTooLarge { .. } => Some("request_too_large"),
            GatewayError::NotFound { .. } => Some("unknown_url"),
            GatewayError::MethodNotAllowed { .. } => Some("method_not_allowed"),
            GatewayError::RateLimited { .. } | GatewayError::UpstreamBusy { .. } => Some("rate_limit_exceeded"),
            GatewayError::Upstream { .. } | GatewayError::UpstreamRejected { .. } => Some("upstream_error"),
            GatewayError::ServiceUnavailable { .. } => Some("service_unavailable"),
            GatewayError::UpstreamTimeout { .. } => Some("upstream_timeout"),
            GatewayError::Config { .. } => Some("configuration_error"),
            GatewayError::Internal { .. } => Some("internal_error"),
        }
    }

    /// The JSON path the error is about, if any.
    pub fn param(&self) -> Option<&str> {
        match self {
            GatewayError::InvalidRequest { param, .. } => param.as_deref(),
            GatewayError::ModelNotFound { .. } => Some("model"),
            _ => None,
        }
    }

    /// A human-readable message, safe to send to any client.
    pub fn message(&self) -> String {
        match self {
            GatewayError::InvalidApiKey => {
                "Incorrect or missing API key. Send one key as `Authorization: Bearer <key>`.".into()
            }
            GatewayError::ModelNotFound { model } => {
                format!("The model `{model}` does not exist or you do not have access to it.")
            }
            GatewayError::InvalidRequest { message, .. }
            | GatewayError::Upstream { message }
            | GatewayError::UpstreamRejected { message, .. }
            | GatewayError::ServiceUnavailable { message, .. }
            | GatewayError::Config { message }
            | GatewayError::Internal { message, .. } => message.clone(),
            GatewayError::RequestTooLarge { limit_bytes } => {
                format!("Request body is larger than the limit of {limit_bytes} bytes.")
            }
            GatewayError::NotFound { path } => format!("Unknown request URL: {path}."),
            GatewayError::MethodNotAllowed { method, path, .. } => {
                format!("Method {method} is not allowed for {path}.")
            }
            GatewayError::RateLimited { limit, retry_after_ms, .. } => {
                let what = match limit {
                    RateLimitKind::Requests => "requests per minute",
                    RateLimitKind::Tokens => "tokens per minute",
                    RateLimitKind::Concurrency => "concurrent requests",
                };
                format!(
                    "Rate limit reached for {what}. Please try again in {}.",
                    crate::core::openai::format_duration(*retry_after_ms)
                )
            }
            GatewayError::UpstreamBusy { .. } => "The inference backend is at capacity. Please retry shortly.".into(),
            GatewayError::UpstreamTimeout { phase } => match phase {
                TimeoutPhase::Connect => "The inference backend did not accept the request in time.",
                TimeoutPhase::FirstByte => "The inference backend did not start answering in time.",
                TimeoutPhase::Idle => "The inference backend stopped sending the stream in time.",
                TimeoutPhase::Total => "The inference backend did not finish the answer in time.",
            }
            .into(),
        }
    }

    /// What operators should see in the log beyond the client's message.
    pub fn detail(&self) -> Option<String> {
        match self {
            GatewayError::Internal { detail, .. } => Some(detail.clone()),
            GatewayError::UpstreamTimeout { phase } => Some(format!("timeout: {}", phase.name())),
            _ => None,
        }
    }

    /// How long a client should wait before trying again, when that is known.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            GatewayError::RateLimited { retry_after_ms, .. } => Some(*retry_after_ms),
            GatewayError::UpstreamBusy { retry_after_s } => {
                Some(retry_after_s.unwrap_or(1).clamp(1, MAX_RETRY_AFTER_S) * 1000)
            }
            GatewayError::ServiceUnavailable { retry_after_ms, .. } => *retry_after_ms,
            _ => None,
        }
    }

    /// The body `{"error":{"message","type","param","code"}}`.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            message: String,
            #[serde(rename = "type")]
            kind: &'a str,
            param: Option<&'a str>,
            code: Option<&'a str>,
        }
        let body = Body {
            error: Inner { message: self.message(), kind: self.error_type(), param: self.param(), code: self.code() },
        };
        serde_json::to_string(&body).unwrap_or_else(|_| {
            r#"{"error":{"message":"internal error","type":"api_error","param":null,"code":null}}"#.into()
        })
    }

    /// The whole HTTP answer: status, body and the headers clients act on. `retry-after`
    /// (seconds) and `retry-after-ms` are what the OpenAI SDKs back off on; `x-should-retry:
    /// false` tells them not to wait for a budget that will not refill soon.
    pub fn render(&self) -> Response {
        let mut response = Response::json(self.status(), self.to_json());
        if let Some(ms) = self.retry_after_ms() {
            let headers = &mut response.headers;
            headers.set("retry-after", crate::core::openai::retry_after_seconds(ms).to_string());
            headers.set("retry-after-ms", ms.to_string());
        }
        match self {
            GatewayError::RateLimited { will_refill_soon: false, .. } => {
                response.headers.set("x-should-retry", "false");
            }
            GatewayError::MethodNotAllowed { allow, .. } => {
                response.headers.set("allow", *allow);
            }
            _ => {}
        }
        response
    }

    /// The same error as one SSE event, for failures after the stream has started: for chunked
    /// streams `data: {"error":{…}}`; for the Responses API its `error` event,
    /// `{"type":"error","code","message","param","sequence_number"}`, numbered after the
    /// `sequence_number` events already relayed.
    pub fn to_sse_event(&self, dialect: Dialect, sequence_number: u64) -> Vec<u8> {
        let mut event = match dialect {
            Dialect::Chunks => b"data: ".to_vec(),
            Dialect::Responses => b"event: error\ndata: ".to_vec(),
        };
        match dialect {
            Dialect::Chunks => event.extend_from_slice(self.to_json().as_bytes()),
            Dialect::Responses => {
                #[derive(Serialize)]
                struct ErrorEvent<'a> {
                    #[serde(rename = "type")]
                    kind: &'a str,
                    code: Option<&'a str>,
                    message: String,
                    param: Option<&'a str>,
                    sequence_number: u64,
                }
                let body = ErrorEvent {
                    kind: "error",
                    code: self.code(),
                    message: self.message(),
                    param: self.param(),
                    sequence_number,
                };
                event.extend_from_slice(serde_json::to_string(&body).unwrap_or_default().as_bytes());
            }
        }
        event.extend_from_slice(b"\n\n");
        event
    }
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for GatewayError {}
