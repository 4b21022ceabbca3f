//! The browser playground: one small page, its script and its style, embedded in the wasm.
//!
//! Served under a strict Content-Security-Policy — same-origin script, style and fetch only,
//! nothing inline, no frames, no forms posting elsewhere — so the page can never be made to send
//! a key anywhere but this gateway.

use crate::core::http::Response;

const PAGE: &str = include_str!("../../web/playground.html");
const SCRIPT: &str = include_str!("../../web/playground.js");
const STYLE: &str = include_str!("../../web/playground.css");

/// The policy the playground runs under.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One of the playground's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asset {
    Page,
    Script,
    Style,
}

impl Asset {
    /// The asset with its type and security headers.
    pub fn response(self) -> Response {
        let (content_type, body) = match self {
            Asset::Page => ("text/html; charset=utf-8", PAGE),
            Asset::Script => ("text/javascript; charset=utf-8", SCRIPT),
            Asset::Style => ("text/css; charset=utf-8", STYLE),
        };
        let mut response = Response::json(200, body);
        let headers = &mut response.headers;
        headers.set("content-type", content_type);
        headers.set("content-security-policy", CONTENT_SECURITY_POLICY);
        headers.set("x-content-type-options", "nosniff");
        headers.set("x-frame-options", "DENY");
        headers.set("referrer-policy", "no-referrer");
        headers.set("cross-origin-opener-policy", "same-origin");
        headers.set("cross-origin-resource-policy", "same-origin");
        headers.set("permissions-policy", "camera=(), microphone=(), geolocation=()");
        headers.set("cache-control", "no-cache");
        response
    }
}
