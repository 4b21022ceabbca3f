//! What the search for a backend produces: shared by the search ([`super::proxy`]) and the stream
//! that waits for it behind keep-alive comments ([`super::commit`]).

use crate::core::error::GatewayError;
use crate::core::http::BodyStream;
use crate::core::openai::Usage;
use crate::core::upstream::sse::SseScanner;

/// Which backend answered, and how many were tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    pub backend: String,
    pub tried: u32,
}

/// The search for a backend that answers, owning all it needs so that it can go on behind a
/// committed stream.
pub(super) type Search = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Found, GatewayError>>>>;

/// What a backend that answered gave.
pub(super) enum Found {
    Completion {
        body: Vec<u8>,
        usage: Option<Usage>,
        answered: Answered,
    },
    /// A stream up to its first content: the rest of the body, its scanner, what the first events
    /// gave.
    Stream {
        body: BodyStream,
        scanner: SseScanner,
        first: Vec<u8>,
        answered: Answered,
    },
}
