//! Which endpoint a request is for. Unknown paths are 404, known paths with the wrong method 405.

use crate::core::error::GatewayError;
use crate::core::openai::Endpoint;
use crate::core::playground::Asset;

/// The endpoints the gateway serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// An endpoint that reaches a model: validated, budgeted and proxied.
    Generate(Endpoint),
    Models,
    /// `GET /v1/models/{model}` (the id percent-decoded).
    Model(String),
    /// `GET` or `DELETE /v1/responses/{id}`, `POST /v1/responses/{id}/cancel`: state a backend
    /// keeps, passed through to it (the path is forwarded as it came).
    StoredResponse,
    Healthz,
    Readyz,
    /// A CORS preflight (or plain `OPTIONS`) for a known path.
    Preflight,
    /// The browser playground's page, script or style.
    Playground(Asset),
}

impl Route {
    /// A low-cardinality name for logs and metrics (OpenAI's operation names where there is one).
    pub fn name(&self) -> &'static str {
        match self {
            Route::Generate(endpoint) => endpoint.name(),
            Route::Models | Route::Model(_) => "models",
            Route::StoredResponse => "responses",
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Preflight => "preflight",
            Route::Playground(_) => "playground",
        }
    }
}

/// Paths with one route each, and the methods they take.
const ENDPOINTS: &[(&str, &str, Route)] = &[
    ("/v1/chat/completions", "POST", Route::Generate(Endpoint::ChatCompletions)),
    ("/v1/completions", "POST", Route::Generate(Endpoint::Completions)),
    ("/v1/embeddings", "POST", Route::Generate(Endpoint::Embeddings)),
    ("/v1/responses", "POST", Route::Generate(Endpoint::Responses)),
    ("/v1/models", "GET", Route::Models),
    ("/healthz", "GET", Route::Healthz),
    ("/readyz", "GET", Route::Readyz),
    ("/", "GET", Route::Playground(Asset::Page)),
    ("/playground.js", "GET", Route::Playground(Asset::Script)),
    ("/playground.css", "GET", Route::Playground(Asset::Style)),
];

/// The longest id accepted in a path (`resp_…`); ids are `[A-Za-z0-9_-]`.
const MAX_ID_CHARS: usize = 128;

/// Routes by path, then method.
pub fn route(method: &str, path: &str) -> Result<Route, GatewayError> {
    let Some((allow, route)) = resolve(path) else {
        return Err(GatewayError::NotFound { path: printable(path) });
    };
    if method.eq_ignore_ascii_case("OPTIONS") {
        return Ok(Route::Preflight);
    }
    // HEAD where GET is allowed, except for model lists (answered per caller, never cached).
    let listed = allow.split(", ").any(|m| m.eq_ignore_ascii_case(method));
    let head = method.eq_ignore_ascii_case("HEAD") && allow.starts_with("GET, HEAD");
    if listed || head {
        Ok(route)
    } else {
        Err(GatewayError::MethodNotAllowed { method: printable(method), path: printable(path), allow })
    }
}

/// The methods a known path accepts, for `allow` headers.
pub fn allowed_methods(path: &str) -> &'static str {
    resolve(path).map_or("GET, HEAD, OPTIONS", |(allow, _)| allow)
}

/// The route a path names, with the methods it takes (`OPTIONS` always).
fn resolve(path: &str) -> Option<(&'static str, Route)> {
    if let Some((_, method, route)) = ENDPOINTS.iter().find(|(p, _, _)| *p == path) {
        let allow = match (*method, route) {
            ("POST", _) => "POST, OPTIONS",
            (_, Route::Models) => "GET, OPTIONS",
            _ => "GET, HEAD, OPTIONS",
        };
        return Some((allow, route.clone()));
    }
    if let Some(model) = path.strip_prefix("/v1/models/").filter(|m| !m.is_empty()) {
        return Some(("GET, OPTIONS", Route::Model(percent_decode(model)?)));
    }
    let rest = path.strip_prefix("/v1/responses/")?;
    let (id, action) = rest.split_once('/').unwrap_or((rest, ""));
    let id_ok = !id.is_empty()
        && id.len() <= MAX_ID_CHARS
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match (id_ok, action) {
        (true, "") => Some(("GET, DELETE, OPTIONS", Route::StoredResponse)),
        (true, "cancel") => Some(("POST, OPTIONS", Route::StoredResponse)),
        _ => None,
    }
}

/// `%XX` escapes decoded (model ids hold `/`, which SDKs may send as `%2F`); `None` when the
/// result is not UTF-8 or holds control characters.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().filter(|s| !s.chars().any(char::is_control))
}

/// Client-supplied text echoed in messages, cut short and stripped of control characters.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_escapes_and_refuses_control_characters() {
        assert_eq!(percent_decode("meta-llama%2FLlama-3.1-8B").as_deref(), Some("meta-llama/Llama-3.1-8B"));
        assert_eq!(percent_decode("a%zz").as_deref(), Some("a%zz"));
        assert_eq!(percent_decode("a%0Ab"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
