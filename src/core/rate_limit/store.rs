//! The limit store: where limit state lives so limits hold across isolates and instances.
//!
//! Admission must be one atomic step in a consistent store (a Durable Object per scope on
//! Workers, Redis on Spin); keeping buckets in instance memory would multiply every limit by the
//! number of instances.

use crate::core::rate_limit::gcra::{Admission, Admitted, BucketSet, Settlement};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// The store could not answer (unreachable, bad reply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

/// Atomically admits requests against one scope's limits (e.g. an API key id), and settles them.
#[allow(async_fn_in_trait)] // single-threaded runtimes: futures need not be Send
pub trait LimitStore {
    /// Takes every budget and the lease of `admission` from `scope`, or nothing.
    async fn admit(&self, scope: &str, admission: &Admission) -> Result<Admitted, StoreError>;
    /// Releases the request's slot and corrects its budgets by what it really cost.
    async fn settle(&self, scope: &str, settlement: &Settlement) -> Result<(), StoreError>;
}

/// A store's answer, checked to be about `admission`: one decision per take, a lease decision
/// exactly when a lease was asked for. Anything else is the store's failure, never an admission.
pub fn checked(admitted: Admitted, admission: &Admission) -> Result<Admitted, StoreError> {
    if admitted.decisions.len() != admission.takes.len() || admitted.lease.is_some() != admission.lease.is_some() {
        return Err(StoreError("the limit store answered the wrong number of decisions".into()));
    }
    Ok(admitted)
}

/// What an adapter sends to its store actor (e.g. a Durable Object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum StoreCall {
    Admit(Admission),
    Settle(Settlement),
}

impl StoreCall {
    /// Applies the call to a scope's state; the reply for `Admit`, `None` for `Settle`.
    pub fn apply(&self, state: &mut BucketSet, now_ms: u64) -> Option<Admitted> {
        match self {
            StoreCall::Admit(admission) => Some(state.admit(admission, now_ms)),
            StoreCall::Settle(settlement) => {
                state.settle(settlement, now_ms);
                None
            }
        }
    }
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

    /// A scope's state, for tests.
    pub fn state(&self, scope: &str) -> BucketSet {
        self.scopes.borrow().get(scope).cloned().unwrap_or_default()
    }
}

impl<F: Fn() -> u64> LimitStore for MemoryStore<F> {
    async fn admit(&self, scope: &str, admission: &Admission) -> Result<Admitted, StoreError> {
        let now = (self.now_ms)();
        let mut scopes = self.scopes.borrow_mut();
        Ok(scopes.entry(scope.to_string()).or_default().admit(admission, now))
    }

    async fn settle(&self, scope: &str, settlement: &Settlement) -> Result<(), StoreError> {
        let now = (self.now_ms)();
        self.scopes.borrow_mut().entry(scope.to_string()).or_default().settle(settlement, now);
        Ok(())
    }
}

impl<S: LimitStore> LimitStore for Rc<S> {
    async fn admit(&self, scope: &str, admission: &Admission) -> Result<Admitted, StoreError> {
        self.as_ref().admit(scope, admission).await
    }

    async fn settle(&self, scope: &str, settlement: &Settlement) -> Result<(), StoreError> {
        self.as_ref().settle(scope, settlement).await
    }
}
