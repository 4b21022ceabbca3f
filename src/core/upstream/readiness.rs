//! `/healthz` (the edge itself) and `/readyz` (can we serve every configured model right now?).
//!
//! Readiness probes each backend's own health path with a short timeout — never a generation,
//! which would cost GPU time — at most once per `GATEWAY_READYZ_CACHE_MS`: the endpoint needs no
//! credentials, so its answer is a cached round (per isolate on Workers, shared through Redis on
//! Spin, where every request is a fresh instance) and anyone calling it often costs the backends
//! nothing more. Probes only report: they never eject a backend, and never clear an ejection that
//! real traffic earned (a backend whose `/health` passes can still be failing requests); an ejected
//! backend is reported as such. The answer names backends and their status only — no URL, and no
//! model, since it is the same for everyone.

use crate::core::config::{Backend, Config};
use crate::core::http::Headers;
use crate::core::runtime::{timeout, Runtime};
use crate::core::upstream::balance::HealthBook;
use crate::core::upstream::{Upstream, UpstreamRequest};
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};

/// The gateway's version, reported by `/healthz`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `GET /healthz`: the edge is up. No backend call, no auth.
pub fn healthz_body() -> String {
    format!(r#"{{"status":"ok","version":"{VERSION}"}}"#)
}

/// One backend in the `/readyz` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendHealth {
    pub name: String,
    /// `ok`, `unhealthy` (non-2xx), `timeout`, `unreachable`, `ejected` (failing real traffic), or
    /// `unknown` (the first probe round did not finish in time).
    pub status: String,
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
        if self.status == "ready" {
            200
        } else {
            503
        }
    }
}

/// One round of probes: when it was taken and what each backend answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeRound {
    pub at_ms: u64,
    pub backends: Vec<BackendHealth>,
}

impl ProbeRound {
    /// Whether the round was taken for exactly these backends.
    fn covers(&self, config: &Config) -> bool {
        self.backends.len() == config.backends.len()
            && self.backends.iter().zip(&config.backends).all(|(seen, b)| seen.name == b.name)
    }
}

/// Where the last probe round is kept between requests, and who takes the next one.
#[allow(async_fn_in_trait)]
pub trait ProbeCache {
    /// The last stored round, if any.
    async fn last_round(&self) -> Option<ProbeRound>;
    /// Claims the next round for `hold_ms`: `true` when this request should probe, `false` when
    /// another is already probing.
    async fn claim(&self, now_ms: u64, hold_ms: u64) -> bool;
    async fn store(&self, round: &ProbeRound);
}

/// A probe cache in one instance's memory (per isolate on Workers; tests).
#[derive(Default)]
pub struct MemoryProbeCache {
    round: RefCell<Option<ProbeRound>>,
    claimed_until: Cell<u64>,
}

impl ProbeCache for MemoryProbeCache {
    async fn last_round(&self) -> Option<ProbeRound> {
        self.round.borrow().clone()
    }

    async fn claim(&self, now_ms: u64, hold_ms: u64) -> bool {
        if self.claimed_until.get() > now_ms {
            return false;
        }
        self.claimed_until.set(now_ms.saturating_add(hold_ms));
        true
    }

    async fn store(&self, round: &ProbeRound) {
        *self.round.borrow_mut() = Some(round.clone());
        self.claimed_until.set(0);
    }
}

impl<P: ProbeCache> ProbeCache for std::rc::Rc<P> {
    async fn last_round(&self) -> Option<ProbeRound> {
        self.as_ref().last_round().await
    }

    async fn claim(&self, now_ms: u64, hold_ms: u64) -> bool {
        self.as_ref().claim(now_ms, hold_ms).await
    }

    async fn store(&self, round: &ProbeRound) {
        self.as_ref().store(round).await
    }
}

/// Answers `/readyz`: the cached probe round while it is fresh, else a new one (unless another
/// request is taking it, then the last one), with traffic's ejections on top.
pub async fn readiness<U: Upstream, R: Runtime, P: ProbeCache>(
    config: &Config,
    upstream: &U,
    runtime: &R,
    health: &HealthBook,
    cache: &P,
) -> Readiness {
    let now = runtime.now_ms();
    let last = cache.last_round().await.filter(|r| r.covers(config));
    let round = match last {
        Some(round) if now.saturating_sub(round.at_ms) < config.timeouts.readyz_cache_ms => round,
        last => {
            let hold = config.timeouts.health_ms.saturating_add(1_000);
            match (cache.claim(now, hold).await, last) {
                (true, _) => {
                    let round = probe_all(config, upstream, runtime).await;
                    cache.store(&round).await;
                    round
                }
                (false, Some(stale)) => stale, // another request is refreshing it
                // Another request is taking the very first round: wait for it rather than probe
                // every backend once more per caller.
                (false, None) => wait_for_round(config, runtime, cache, hold).await,
            }
        }
    };
    let now = runtime.now_ms();
    let backends: Vec<BackendHealth> = round
        .backends
        .into_iter()
        .map(|b| match health.is_ejected(&b.name, now) {
            true => BackendHealth { status: "ejected".into(), ..b },
            false => b,
        })
        .collect();
    let serving = |model: &str| {
        config.backends.iter().zip(&backends).any(|(backend, seen)| seen.status == "ok" && backend.serves(model))
    };
    let ready = config.served_models().into_iter().all(serving);
    Readiness { status: if ready { "ready" } else { "unavailable" }, backends }
}

/// The round another request is taking, once stored; every backend `unknown` if it never is.
async fn wait_for_round<R: Runtime, P: ProbeCache>(
    config: &Config,
    runtime: &R,
    cache: &P,
    hold_ms: u64,
) -> ProbeRound {
    const POLL_MS: u64 = 50;
    let mut waited = 0;
    while waited < hold_ms {
        runtime.sleep(POLL_MS).await;
        waited += POLL_MS;
        if let Some(round) = cache.last_round().await.filter(|r| r.covers(config)) {
            return round;
        }
    }
    let backends =
        config.backends.iter().map(|b| BackendHealth { name: b.name.clone(), status: "unknown".into() }).collect();
    ProbeRound { at_ms: runtime.now_ms(), backends }
}

/// Probes every backend concurrently.
async fn probe_all<U: Upstream, R: Runtime>(config: &Config, upstream: &U, runtime: &R) -> ProbeRound {
    let probes = config.backends.iter().map(|b| probe(b, upstream, runtime, config.timeouts.health_ms));
    let backends = futures::future::join_all(probes).await;
    ProbeRound { at_ms: runtime.now_ms(), backends }
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
    BackendHealth { name: backend.name.clone(), status: status.into() }
}
