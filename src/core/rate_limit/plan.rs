//! Limits for one chat request: what to ask of the limit store, what its answer means, and
//! settling up once the request has ended.
//!
//! Tokens are admitted on an estimate (the prompt plus every choice at full length) and settled on
//! the real `usage`, so a budget is never overspent by more than one request, and a request that
//! used less gives the difference back. The in-flight slot is a lease released when the request
//! ends — however it ends — and that expires on its own if the release never arrives.

use crate::core::config::Budgets;
use crate::core::error::{GatewayError, RateLimitKind};
use crate::core::rate_limit::gcra::{Adjustment, Admission, Admitted, Decision, Lease, Rule, Settlement, Take};
use crate::core::rate_limit::store::LimitStore;
use crate::core::runtime::Runtime;

pub const REQUESTS: &str = "requests";
pub const TOKENS: &str = "tokens";
pub const IN_FLIGHT: &str = "in_flight";

/// What one request asks of its caller's limits.
#[derive(Debug, Clone)]
pub struct Plan {
    pub admission: Admission,
    kinds: Vec<RateLimitKind>,
    token_rule: Option<Rule>,
    estimate: u64,
}

impl Plan {
    /// The takes and lease for a request that may cost `estimate` tokens under `policy`. The lease
    /// is named `lease_id` — random, made by the gateway: a caller-chosen id (its `x-request-id`)
    /// would let concurrent requests share one slot — and expires after `lease_ttl_ms` if never
    /// released.
    pub fn new(policy: &Budgets, estimate: u64, lease_id: &str, lease_ttl_ms: u64) -> Plan {
        let mut takes = Vec::new();
        let mut kinds = Vec::new();
        if let Some(rpm) = policy.requests_per_minute {
            takes.push(Take { bucket: REQUESTS.into(), rule: Rule::per_minute(rpm), cost: 1 });
            kinds.push(RateLimitKind::Requests);
        }
        let token_rule = policy.tokens_per_minute.map(Rule::per_minute);
        if let Some(rule) = token_rule {
            let cost = u32::try_from(estimate).unwrap_or(u32::MAX);
            takes.push(Take { bucket: TOKENS.into(), rule, cost });
            kinds.push(RateLimitKind::Tokens);
        }
        let lease = policy.max_in_flight.map(|max| Lease {
            bucket: IN_FLIGHT.into(),
            id: lease_id.to_string(),
            max,
            ttl_ms: lease_ttl_ms,
        });
        Plan { admission: Admission { takes, lease }, kinds, token_rule, estimate }
    }

    pub fn is_empty(&self) -> bool {
        self.admission.takes.is_empty() && self.admission.lease.is_none()
    }

    /// Pairs the store's decisions with their budgets, and the 429 if any refused.
    pub fn outcome(&self, admitted: &Admitted) -> (Vec<(RateLimitKind, Decision)>, Option<GatewayError>) {
        let mut decisions: Vec<(RateLimitKind, Decision)> =
            self.kinds.iter().copied().zip(admitted.decisions.iter().copied()).collect();
        if let Some(lease) = admitted.lease {
            decisions.push((RateLimitKind::Concurrency, lease));
        }
        let refusal = decisions.iter().find(|(_, d)| !d.allowed).map(|(kind, d)| {
            // A cost above the whole limit can never be admitted: say so instead of "wait".
            let never = d.retry_after_ms == u64::MAX;
            GatewayError::RateLimited {
                limit: *kind,
                retry_after_ms: if never { 60_000 } else { d.retry_after_ms },
                // The OpenAI SDKs give up on waits over two minutes; say so rather than make them try.
                will_refill_soon: !never && d.retry_after_ms <= 120_000,
            }
        });
        (decisions, refusal)
    }

    /// The settlement owed once the request is admitted.
    pub fn settler<S, R>(&self, store: S, runtime: R, scope: String, prompt_estimate: u64) -> Settler<S, R>
    where
        S: LimitStore + Clone + 'static,
        R: Runtime + Clone + 'static,
    {
        Settler {
            store,
            runtime,
            scope,
            release: self.admission.lease.as_ref().map(|l| (l.bucket.clone(), l.id.clone())),
            tokens: self.token_rule.map(|rule| (rule, self.estimate)),
            prompt_estimate,
            sent: false,
            settled: false,
        }
    }
}

/// Settles an admitted request exactly once: explicitly with what it used, or — if dropped
/// first — with nothing used, or its prompt when it was dropped after reaching a backend (the
/// client left while the backend was working).
pub struct Settler<S: LimitStore + Clone + 'static, R: Runtime + Clone + 'static> {
    store: S,
    runtime: R,
    scope: String,
    release: Option<(String, String)>,
    tokens: Option<(Rule, u64)>,
    prompt_estimate: u64,
    /// Whether the request reached a backend, which may then have spent GPU time on its prompt.
    sent: bool,
    settled: bool,
}

impl<S: LimitStore + Clone + 'static, R: Runtime + Clone + 'static> Settler<S, R> {
    /// The request used `tokens` (prompt plus completion) in total; 0 for one that failed
    /// before a backend generated anything.
    pub fn settle(mut self, tokens: u64) {
        self.settle_once(tokens);
    }

    /// Nothing was taken (the store refused, or could not be asked): nothing to settle.
    pub fn forget(mut self) {
        self.settled = true;
    }

    /// The store's answer was lost (it failed or ran out of time after the request was sent): the
    /// admission may have taken the lease, which would then be held until it expires, so it is
    /// released. Tokens are left alone: whether they were taken is unknown.
    pub fn release_lease(mut self) {
        self.tokens = None;
        self.settle_once(0);
    }

    /// The backend had the request and may have worked on it (a timeout after it took it):
    /// charged its prompt, the rest given back.
    pub fn charge_prompt(mut self) {
        let prompt = self.prompt_estimate;
        self.settle_once(prompt);
    }

    /// The request is about to reach a backend: from now on a drop charges its prompt.
    pub fn sent(&mut self) {
        self.sent = true;
    }

    fn settle_once(&mut self, tokens: u64) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        let adjustments = self
            .tokens
            .map(|(rule, estimate)| Adjustment {
                bucket: TOKENS.into(),
                rule,
                delta: i64::try_from(tokens).unwrap_or(i64::MAX) - i64::try_from(estimate).unwrap_or(i64::MAX),
            })
            .into_iter()
            .collect();
        let settlement = Settlement { release: self.release.take(), adjustments };
        if settlement.is_empty() {
            return;
        }
        let store = self.store.clone();
        let runtime = self.runtime.clone();
        let scope = std::mem::take(&mut self.scope);
        self.runtime.spawn(Box::pin(async move {
            if let Err(e) = store.settle(&scope, &settlement).await {
                runtime.log(&crate::core::log::event(
                    "error",
                    "limit_settle_failed",
                    &[("scope", scope.into()), ("detail", e.0.into())],
                ));
            }
        }));
    }
}

impl<S: LimitStore + Clone + 'static, R: Runtime + Clone + 'static> Drop for Settler<S, R> {
    fn drop(&mut self) {
        // Not settled explicitly: the request was abandoned (the client left), before or while a
        // backend worked on it.
        let used = if self.sent { self.prompt_estimate } else { 0 };
        self.settle_once(used);
    }
}
