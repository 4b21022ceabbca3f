//! Which backend serves a request, and in which order the others are tried if it fails.
//!
//! Lower `priority` first (a fallback tier); within a priority, a weighted random order, so
//! `weight` shares traffic. Passive health: a backend that fails `eject_after` times in a row is
//! ejected for `eject_for_ms` and skipped meanwhile. Only real traffic counts: `/readyz` probes
//! neither eject nor reinstate (see `readiness`).
//! On Workers the book lives as long as the isolate (each isolate its own view, as with any
//! proxy's outlier detection). Where instances live for one request (Spin), the adapter loads the
//! book from a shared store and writes back the book's journal of what happened.

use crate::core::config::{Backend, Breaker, Config};
use crate::core::error::GatewayError;
use std::cell::RefCell;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Health {
    consecutive_failures: u32,
    ejected_until_ms: u64,
}

/// Something that changed a backend's health, for a shared store to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthEvent {
    /// The backend answered well after failing: its streak and ejection end.
    Recovered {
        backend: String,
    },
    Failed {
        backend: String,
        at_ms: u64,
    },
}

/// Reads a shared book's entries: `(backend, consecutive failures, ejected until ms)`.
pub type HealthLoader = Box<dyn FnOnce() -> Vec<(String, u32, u64)>>;

/// Passive health of every backend, by name.
#[derive(Default)]
pub struct HealthBook {
    backends: RefCell<HashMap<String, Health>>,
    /// What changed since loading, when the book is shared through a store.
    journal: Option<RefCell<Vec<HealthEvent>>>,
    /// A shared book is read on first use, so requests that never pick a backend
    /// (`/healthz`, `/v1/models`, refusals) never read the store.
    loader: RefCell<Option<HealthLoader>>,
}

impl HealthBook {
    /// A book kept in a shared store, read by `loader` on first use; it keeps a journal of changes
    /// to write back.
    pub fn shared(loader: HealthLoader) -> Self {
        HealthBook {
            backends: RefCell::default(),
            journal: Some(RefCell::new(Vec::new())),
            loader: RefCell::new(Some(loader)),
        }
    }

    /// Reads the shared store, once, before the book is first consulted.
    fn load(&self) {
        let loader = self.loader.borrow_mut().take();
        if let Some(loader) = loader {
            let entries = loader().into_iter().map(|(name, consecutive_failures, ejected_until_ms)| {
                (name, Health { consecutive_failures, ejected_until_ms })
            });
            self.backends.borrow_mut().extend(entries);
        }
    }

    /// The changes since loading (empty for a book that is not shared).
    pub fn take_journal(&self) -> Vec<HealthEvent> {
        self.journal.as_ref().map(|j| std::mem::take(&mut *j.borrow_mut())).unwrap_or_default()
    }

    fn note(&self, event: HealthEvent) {
        if let Some(journal) = &self.journal {
            journal.borrow_mut().push(event);
        }
    }

    pub fn is_ejected(&self, backend: &str, now_ms: u64) -> bool {
        self.load();
        self.backends.borrow().get(backend).is_some_and(|h| h.ejected_until_ms > now_ms)
    }

    /// The backend answered well: its failure streak ends, and any ejection with it.
    pub fn record_success(&self, backend: &str) {
        self.load();
        // Only a change is journaled: the common path (a healthy backend) writes nothing.
        if self.backends.borrow_mut().remove(backend).is_some() {
            self.note(HealthEvent::Recovered { backend: backend.to_string() });
        }
    }

    /// The backend failed; ejects it once the streak reaches the breaker's threshold.
    /// Returns whether it is ejected now.
    pub fn record_failure(&self, backend: &str, now_ms: u64, breaker: Breaker) -> bool {
        self.load();
        self.note(HealthEvent::Failed { backend: backend.to_string(), at_ms: now_ms });
        let mut backends = self.backends.borrow_mut();
        let health = backends.entry(backend.to_string()).or_default();
        health.consecutive_failures = health.consecutive_failures.saturating_add(1);
        if health.consecutive_failures >= breaker.eject_after {
            health.ejected_until_ms = now_ms.saturating_add(breaker.eject_for_ms);
            health.consecutive_failures = 0;
        }
        health.ejected_until_ms > now_ms
    }

    fn ejected_until(&self, backend: &str) -> u64 {
        self.load();
        self.backends.borrow().get(backend).map_or(0, |h| h.ejected_until_ms)
    }
}

/// The backends to try for `model`, in order: every healthy one, lowest priority first, weighted
/// random within a priority (`random` seeds the shuffle). A 503 when every backend serving the
/// model is ejected; a 404 when none serves it.
pub fn attempt_order<'a>(
    config: &'a Config,
    model: &str,
    health: &HealthBook,
    now_ms: u64,
    random: u64,
) -> Result<Vec<&'a Backend>, GatewayError> {
    let serving: Vec<&Backend> = config.backends.iter().filter(|b| b.serves(model)).collect();
    if serving.is_empty() {
        return Err(GatewayError::ModelNotFound { model: model.to_string() });
    }
    let mut healthy: Vec<&Backend> = serving.iter().copied().filter(|b| !health.is_ejected(&b.name, now_ms)).collect();
    if healthy.is_empty() {
        let back_at = serving.iter().map(|b| health.ejected_until(&b.name)).min().unwrap_or(now_ms);
        let wait_ms = back_at.saturating_sub(now_ms).max(1);
        return Err(GatewayError::ServiceUnavailable {
            message: format!("Every backend for `{model}` is failing; retry in {}s.", wait_ms.div_ceil(1000)),
            retry_after_ms: Some(wait_ms),
        });
    }
    healthy.sort_by_key(|b| b.priority);
    let mut rng = XorShift(random | 1);
    let mut order = Vec::with_capacity(healthy.len());
    for tier in healthy.chunk_by(|a, b| a.priority == b.priority) {
        let mut left: Vec<&Backend> = tier.to_vec();
        while !left.is_empty() {
            let total: u64 = left.iter().map(|b| u64::from(b.weight)).sum();
            let mut pick = rng.next() % total.max(1);
            let index = left
                .iter()
                .position(|b| {
                    let w = u64::from(b.weight);
                    if pick < w {
                        true
                    } else {
                        pick -= w;
                        false
                    }
                })
                .unwrap_or(0);
            order.push(left.remove(index));
        }
    }
    Ok(order)
}

/// A tiny PRNG for shuffling (not for anything secret).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}
