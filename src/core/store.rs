//! The limit store: where rate-limit state lives so limits hold across isolates and instances.
//!
//! Admission must be one atomic step in a consistent store (a Durable Object per key on Workers);
//! keeping buckets in instance memory would multiply every limit by the number of instances.

use super::limits::{BucketSet, Decision, Take};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::HashMap;

/// The store could not answer (unreachable, bad reply); requests fail closed with a 500.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

/// Atomically checks and takes from the buckets of one scope (e.g. an API key id).
#[allow(async_fn_in_trait)] // single-threaded runtimes: futures need not be Send
pub trait LimitStore {
    /// Takes every `takes` entry from `scope`'s buckets, or none of them; one decision per take.
    async fn take(&self, scope: &str, takes: &[Take]) -> Result<Vec<Decision>, StoreError>;
}

/// What an adapter sends to its store actor (e.g. a Durable Object) and gets back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakeCall {
    pub takes: Vec<Take>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakeReply {
    pub decisions: Vec<Decision>,
}

/// A store in one process's memory: for tests and single-instance development only.
pub struct MemoryStore<F: Fn() -> u64> {
    now_ms: F,
    scopes: RefCell<HashMap<String, BucketSet>>,
}

impl<F: Fn() -> u64> MemoryStore<F> {
    pub fn new(now_ms: F) -> Self {
        MemoryStore { now_ms, scopes: RefCell::new(HashMap::new()) }
    }
}

impl<F: Fn() -> u64> LimitStore for MemoryStore<F> {
    async fn take(&self, scope: &str, takes: &[Take]) -> Result<Vec<Decision>, StoreError> {
        let now = (self.now_ms)();
        let mut scopes = self.scopes.borrow_mut();
        Ok(scopes.entry(scope.to_string()).or_default().admit(takes, now))
    }
}
