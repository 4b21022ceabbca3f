//! Outbound HTTP to inference backends: the one trait adapters implement with their fetch, and
//! everything about backends — which one ([`balance`]), whether it is ready ([`readiness`]), the
//! call and its relay ([`proxy`], [`commit`], [`relay`], [`sse`]), state a backend keeps
//! ([`stored`]), and what its failures mean ([`errors`]).

pub mod balance;
pub mod commit;
pub mod errors;
mod found;
pub mod proxy;
pub mod readiness;
pub mod relay;
pub mod sse;
pub mod stored;

use crate::core::http::{BodyStream, Headers};
use crate::core::runtime::Runtime;
use crate::core::upstream::relay::Pipe;

/// A request to a backend; the body is complete (requests are small, already validated).
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    pub method: &'static str,
    pub url: String,
    pub headers: Headers,
    pub body: Option<Vec<u8>>,
}

/// A backend's answer; the body streams. Dropping it cancels the backend request.
pub struct UpstreamResponse {
    pub status: u16,
    pub headers: Headers,
    pub body: BodyStream,
}

/// The request never got an answer: the backend could not be reached (refused, reset, DNS), or
/// — `local` — the platform would not even send it (a header or URL it refuses), which is no
/// fault of the backend's. The text is for logs only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectError {
    pub message: String,
    pub local: bool,
}

impl ConnectError {
    /// The backend could not be reached.
    pub fn network(message: impl Into<String>) -> Self {
        ConnectError { message: message.into(), local: false }
    }

    /// The platform refused to send the request.
    pub fn local(message: impl Into<String>) -> Self {
        ConnectError { message: message.into(), local: true }
    }
}

/// Sends requests to backends.
#[allow(async_fn_in_trait)]
pub trait Upstream {
    async fn send(&self, request: UpstreamRequest) -> Result<UpstreamResponse, ConnectError>;

    /// The client's body for a committed stream: `pipe` decides what each chunk of the backend's
    /// `body` becomes. By default the core pumps it ([`relay::stream`]); a platform whose byte
    /// pipe is cheaper outside the core may pump the backend's bytes itself, handing each chunk
    /// to `pipe` and forwarding what it says (the Workers build does, from JavaScript).
    fn relay<R: Runtime + 'static>(&self, pipe: Pipe, body: BodyStream, runtime: R) -> BodyStream {
        relay::stream(pipe, body, runtime)
    }
}
