//! CORS: which browser origins may call us, preflights, and the headers scripts may read.
//!
//! Preflights are answered before authentication (browsers send no credentials on them). A
//! disallowed origin simply gets no grant, and the browser blocks the call.

use crate::core::config::Cors;
use crate::core::http::{Headers, Response};
use crate::core::route::allowed_methods;

/// Response headers a script may read: without this list, SDKs in browsers cannot see them.
pub const EXPOSED_HEADERS: &str = "x-request-id, traceparent, retry-after, retry-after-ms, \
x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, \
x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens";

/// How long a browser may cache a preflight answer (Chromium caps it at 2 hours).
const MAX_AGE_SECONDS: &str = "7200";

/// The request's `Origin` if the policy allows it. The opaque origin `null` (sandboxed frames,
/// `file:` pages, some redirects) is never granted, not even by `*`: anyone can make a page send it.
pub fn allowed_origin<'a>(cors: &Cors, request: &'a Headers) -> Option<&'a str> {
    let origin = request.get("origin")?.trim();
    if origin.eq_ignore_ascii_case("null") {
        return None;
    }
    match cors {
        Cors::Disabled => None,
        Cors::AnyOrigin => Some(origin),
        Cors::Origins(list) => list.iter().any(|o| o.eq_ignore_ascii_case(origin)).then_some(origin),
    }
}

/// The CORS headers of any answer: the grant when the origin is allowed, and — whenever CORS is
/// configured at all — `Vary: Origin`, so a shared cache never serves one origin's answer to
/// another (a refused origin's answer included).
pub fn apply(cors: &Cors, request: &Headers, response: &mut Headers) {
    if *cors == Cors::Disabled {
        return;
    }
    if let Some(origin) = allowed_origin(cors, request) {
        response.set("access-control-allow-origin", origin);
        response.set("access-control-expose-headers", EXPOSED_HEADERS);
    }
    if !response.get_all("vary").any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("origin"))) {
        response.append("vary", "Origin");
    }
}

/// Answers an `OPTIONS` request for a known path.
pub fn preflight(cors: &Cors, request: &Headers, path: &str) -> Response {
    let mut response = Response::empty(204);
    response.headers.set("allow", allowed_methods(path));
    if allowed_origin(cors, request).is_some() {
        response.headers.set("access-control-allow-methods", allowed_methods(path));
        // Echo what the browser asks to send (the OpenAI SDKs send several x-stainless-* headers);
        // `*` would not cover `authorization`.
        let asked = request
            .get("access-control-request-headers")
            .filter(|h| h.len() <= 1024 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_, ".contains(&b)))
            .unwrap_or("authorization, content-type");
        response.headers.set("access-control-allow-headers", asked);
        response.headers.set("access-control-max-age", MAX_AGE_SECONDS);
    }
    response
}
