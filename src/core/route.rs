//! Which endpoint a request is for. Unknown paths are 404, known paths with the wrong method 405.

use crate::core::error::GatewayError;

/// The endpoints the gateway serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    ChatCompletions,
    Models,
    Healthz,
    Readyz,
    /// A CORS preflight (or plain `OPTIONS`) for a known path.
    Preflight,
    /// The browser playground's page, script or style.
    Playground(crate::core::playground::Asset),
}

impl Route {
    /// A low-cardinality name for logs and metrics (OpenAI's operation names where there is one).
    pub fn name(self) -> &'static str {
        match self {
            Route::ChatCompletions => "chat.completions",
            Route::Models => "models",
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Preflight => "preflight",
            Route::Playground(_) => "playground",
        }
    }
}

const ENDPOINTS: &[(&str, &str, Route)] = &[
    ("/v1/chat/completions", "POST", Route::ChatCompletions),
    ("/v1/models", "GET", Route::Models),
    ("/healthz", "GET", Route::Healthz),
    ("/readyz", "GET", Route::Readyz),
    ("/", "GET", Route::Playground(crate::core::playground::Asset::Page)),
    ("/playground.js", "GET", Route::Playground(crate::core::playground::Asset::Script)),
    ("/playground.css", "GET", Route::Playground(crate::core::playground::Asset::Style)),
];

/// Routes by path, then method.
pub fn route(method: &str, path: &str) -> Result<Route, GatewayError> {
    let Some((_, allowed, route)) = ENDPOINTS.iter().find(|(p, _, _)| *p == path) else {
        return Err(GatewayError::NotFound { path: printable(path) });
    };
    if method.eq_ignore_ascii_case("OPTIONS") {
        return Ok(Route::Preflight);
    }
    let same = method.eq_ignore_ascii_case(allowed)
        || (method.eq_ignore_ascii_case("HEAD") && *allowed == "GET" && *route != Route::Models);
    if same {
        Ok(*route)
    } else {
        Err(GatewayError::MethodNotAllowed {
            method: printable(method),
            path: path.to_string(),
            allow: allowed_methods(path),
        })
    }
}

/// The methods a known path accepts, for `allow` headers.
pub fn allowed_methods(path: &str) -> &'static str {
    match ENDPOINTS.iter().find(|(p, _, _)| *p == path) {
        Some((_, "POST", _)) => "POST, OPTIONS",
        _ => "GET, HEAD, OPTIONS",
    }
}

/// Client-supplied text echoed in messages, cut short and stripped of control characters.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}
