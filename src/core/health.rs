//! `/healthz` (the edge itself) and `/readyz` (can we serve every configured model right now?).
//!
//! Readiness probes each backend's own health path with a short timeout — never a generation,
//! which would cost GPU time — and reports backends by name only, never by URL.

use super::balance::HealthBook;
use super::config::{Backend, Config};
use super::http::Headers;
use super::runtime::{timeout, Runtime};
use super::upstream::{Upstream, UpstreamRequest};
use serde::Serialize;

/// The gateway's version, reported by `/healthz`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `GET /healthz`: the edge is up. No backend call, no auth.
pub fn healthz_body() -> String {
    format!(r#"{{"status":"ok","version":"{VERSION}"}}"#)
}

/// One backend's probe result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendHealth {
    pub name: String,
    /// `ok`, `unhealthy` (non-2xx), `timeout` or `unreachable`.
    pub status: &'static str,
    pub models: Vec<String>,
}

/// The `/readyz` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// `ready` when every served model has a healthy backend, else `unavailable`.
    pub status: &'static str,
    pub backends: Vec<BackendHealth>,
}

impl Readiness {
    pub fn http_status(&self) -> u16 {
        if self.status == "ready" { 200 } else { 503 }
    }
}

/// Probes every backend concurrently; what they say feeds the passive health book (a failed probe
/// ejects the backend, a good one reinstates it).
pub async fn readiness<U: Upstream, R: Runtime>(config: &Config, upstream: &U, runtime: &R, health: &HealthBook) -> Readiness {
    let probes = config.backends.iter().map(|b| probe(b, upstream, runtime, config.timeouts.health_ms));
    let backends = futures::future::join_all(probes).await;
    let now = runtime.now_ms();
    for backend in &backends {
        if backend.status == "ok" {
            health.record_success(&backend.name);
        } else {
            health.eject(&backend.name, now, config.breaker);
        }
    }
    let ready = config.served_models().iter().all(|model| {
        backends.iter().any(|b| b.status == "ok" && b.models.iter().any(|m| m == model))
    });
    Readiness { status: if ready { "ready" } else { "unavailable" }, backends }
}

async fn probe<U: Upstream, R: Runtime>(backend: &Backend, upstream: &U, runtime: &R, ms: u64) -> BackendHealth {
    let mut headers = Headers::new();
    if let Some(key) = &backend.api_key {
        headers.set("authorization", format!("Bearer {}", key.expose()));
    }
    let request = UpstreamRequest {
        method: "GET",
        url: format!("{}{}", backend.base_url, backend.health_path),
        headers,
        body: None,
    };
    // The body is dropped unread: the status is the answer.
    let status = match timeout(runtime, ms, upstream.send(request)).await {
        None => "timeout",
        Some(Err(_)) => "unreachable",
        Some(Ok(r)) if (200..300).contains(&r.status) => "ok",
        Some(Ok(_)) => "unhealthy",
    };
    BackendHealth { name: backend.name.clone(), status, models: backend.models.clone() }
}
