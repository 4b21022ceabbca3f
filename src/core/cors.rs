//! CORS: which browser origins may call us, preflights, and the headers scripts may read.
//!
//! Preflights are answered before authentication (browsers send no credentials on them). A
//! disallowed origin simply gets no grant, and the browser blocks the call.

use super::config::Cors;
use super::http::{Headers, Response};
use super::route::allowed_methods;

/// Response headers a script may read: without this list, SDKs in browsers cannot see them.
pub const EXPOSED_HEADERS: &str = "x-request-id, retry-after, retry-after-ms, \
x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, \
x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens";

/// How long a browser may cache a preflight answer (Chromium caps it at 2 hours).
const MAX_AGE_SECONDS: &str = "7200";

/// The request's `Origin` if the policy allows it.
pub fn allowed_origin<'a>(cors: &Cors, request: &'a Headers) -> Option<&'a str> {
    let origin = request.get("origin")?;
    match cors {
        Cors::Disabled => None,
        Cors::AnyOrigin => Some(origin),
        Cors::Origins(list) => list.iter().any(|o| o.eq_ignore_ascii_case(origin)).then_some(origin),
    }
}

/// Answers an `OPTIONS` request for a known path.
pub fn preflight(cors: &Cors, request: &Headers, path: &str) -> Response {
    let mut response = Response::empty(204);
    response.headers.set("allow", allowed_methods(path));
    if let Some(origin) = allowed_origin(cors, request) {
        grant(&mut response.headers, origin);
        response.headers.set("access-control-allow-methods", allowed_methods(path));
        // Echo what the browser asks to send (the OpenAI SDKs send several x-stainless-* headers);
        // `*` would not cover `authorization`.
        let asked = request
            .get("access-control-request-headers")
            .unwrap_or("authorization, content-type");
        response.headers.set("access-control-allow-headers", asked);
        response.headers.set("access-control-max-age", MAX_AGE_SECONDS);
    }
    response
}

/// Adds the grant for an allowed origin to an actual (non-preflight) response.
pub fn grant(headers: &mut Headers, origin: &str) {
    headers.set("access-control-allow-origin", origin);
    headers.set("access-control-expose-headers", EXPOSED_HEADERS);
    headers.append("vary", "Origin");
}
