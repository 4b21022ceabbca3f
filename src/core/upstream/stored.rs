//! Requests for state a backend keeps (`GET`/`DELETE /v1/responses/{id}`, `…/cancel`): passed
//! through to that one backend, never failed over (no other backend has the state), and answered
//! with its JSON — or, when it refuses, with the same cleaned error as any backend failure.

use crate::core::config::{Backend, Timeouts};
use crate::core::error::{GatewayError, TimeoutPhase};
use crate::core::http::{read_capped, Response};
use crate::core::runtime::{timeout, Runtime};
use crate::core::upstream::proxy::{bare_request, read_error, Forwarded, MAX_COMPLETION_BYTES};
use crate::core::upstream::{Upstream, UpstreamRequest};

/// The request for `method` on `path` (already checked by the router), with the headers and the
/// credential any backend request carries. `POST` (cancel) sends an empty JSON object.
pub fn stored_request(backend: &Backend, method: &str, path: &str, forwarded: &Forwarded<'_>) -> UpstreamRequest {
    let method = match method.to_ascii_uppercase().as_str() {
        "DELETE" => "DELETE",
        "POST" => "POST",
        _ => "GET",
    };
    let mut request = bare_request(backend, method, path, forwarded);
    if method == "POST" {
        request.headers.set("content-type", "application/json");
        request.body = Some(b"{}".to_vec());
    }
    request
}

/// Sends `request` and relays the backend's JSON answer, all within the first-byte timeout
/// (these answers are immediate: nothing is generated).
pub async fn pass_through<U: Upstream, R: Runtime>(
    upstream: &U,
    runtime: &R,
    request: UpstreamRequest,
    timeouts: &Timeouts,
) -> Result<Response, GatewayError> {
    let late = GatewayError::UpstreamTimeout { phase: TimeoutPhase::FirstByte };
    let exchange = async {
        let mut response = match upstream.send(request).await {
            Ok(response) => response,
            Err(_) => {
                return Err(GatewayError::Upstream { message: "The inference backend could not be reached.".into() })
            }
        };
        if !(200..300).contains(&response.status) {
            return Err(read_error(runtime, response, timeouts.first_byte_ms).await.0);
        }
        match read_capped(&mut response.body, MAX_COMPLETION_BYTES).await {
            Ok(body) if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok() => {
                Ok(Response::json(response.status, body))
            }
            _ => Err(GatewayError::Upstream { message: "The inference backend's answer was not JSON.".into() }),
        }
    };
    timeout(runtime, timeouts.first_byte_ms, exchange).await.unwrap_or(Err(late))
}
