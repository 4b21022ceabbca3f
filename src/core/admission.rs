//! Limits for one chat request: what to ask of the limit store, what its answer means, and
//! settling up once the request has ended.
//!
//! Tokens are admitted on an estimate (the prompt plus every choice at full length) and settled on
//! the real `usage`, so a budget is never overspent by more than one request, and a request that
//! used less gives the difference back. The in-flight slot is a lease released when the request
//! ends — however it ends — and that expires on its own if the release never arrives.

use super::config::LimitPolicy;
use super::error::{GatewayError, RateLimitKind};
use super::limits::{Adjustment, Admission, Admitted, Decision, Lease, Rule, Settlement, Take};
use super::runtime::Runtime;
use super::store::LimitStore;
use super::validate::ValidatedChat;

pub const REQUESTS: &str = "requests";
pub const TOKENS: &str = "tokens";
pub const IN_FLIGHT: &str = "in_flight";

/// Which budget a decision is about (and which `x-ratelimit-*` family reports it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Tokens,
    InFlight,
}

impl LimitKind {
    /// The `x-ratelimit-*-{suffix}` family, if OpenAI has one for this budget.
    pub fn header_suffix(self) -> Option<&'static str> {
        match self {
            LimitKind::Requests => Some("requests"),
            LimitKind::Tokens => Some("tokens"),
            LimitKind::InFlight => None,
        }
    }

    fn error_kind(self) -> RateLimitKind {
        match self {
            LimitKind::Requests => RateLimitKind::Requests,
            LimitKind::Tokens => RateLimitKind::Tokens,
            LimitKind::InFlight => RateLimitKind::Concurrency,
        }
    }
}

/// What one request asks of its caller's limits.
#[derive(Debug, Clone)]
pub struct Plan {
    pub admission: Admission,
    kinds: Vec<LimitKind>,
    token_rule: Option<Rule>,
    estimate: u64,
}

impl Plan {
    /// The takes and lease for `chat` under `policy`; the lease (named after the request id)
    /// expires after `lease_ttl_ms` if never released.
    pub fn new(policy: &LimitPolicy, chat: &ValidatedChat, request_id: &str, lease_ttl_ms: u64) -> Plan {
        let estimate = chat.token_estimate();
        let mut takes = Vec::new();
        let mut kinds = Vec::new();
        if let Some(rpm) = policy.requests_per_minute {
            takes.push(Take { bucket: REQUESTS.into(), rule: Rule::per_minute(rpm), cost: 1 });
            kinds.push(LimitKind::Requests);
        }
        let token_rule = policy.tokens_per_minute.map(Rule::per_minute);
        if let Some(rule) = token_rule {
            let cost = u32::try_from(estimate).unwrap_or(u32::MAX);
            takes.push(Take { bucket: TOKENS.into(), rule, cost });
            kinds.push(LimitKind::Tokens);
        }
        let lease = policy.max_in_flight.map(|max| Lease {
            bucket: IN_FLIGHT.into(),
            id: request_id.to_string(),
            max,
            ttl_ms: lease_ttl_ms,
        });
        Plan { admission: Admission { takes, lease }, kinds, token_rule, estimate }
    }

    pub fn is_empty(&self) -> bool {
        self.admission.takes.is_empty() && self.admission.lease.is_none()
    }

    /// Pairs the store's decisions with their budgets, and the 429 if any refused.
    pub fn outcome(&self, admitted: &Admitted) -> (Vec<(LimitKind, Decision)>, Option<GatewayError>) {
        let mut decisions: Vec<(LimitKind, Decision)> =
            self.kinds.iter().copied().zip(admitted.decisions.iter().copied()).collect();
        if let Some(lease) = admitted.lease {
            decisions.push((LimitKind::InFlight, lease));
        }
        let refusal = decisions.iter().find(|(_, d)| !d.allowed).map(|(kind, d)| {
            // A cost above the whole limit can never be admitted: say so instead of "wait".
            let never = d.retry_after_ms == u64::MAX;
            GatewayError::RateLimited {
                limit: kind.error_kind(),
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
            settled: false,
        }
    }
}

/// Settles an admitted request exactly once: explicitly with what it used, or — if dropped
/// first, because the request failed before the backend produced anything — with nothing used.
pub struct Settler<S: LimitStore + Clone + 'static, R: Runtime + Clone + 'static> {
    store: S,
    runtime: R,
    scope: String,
    release: Option<(String, String)>,
    tokens: Option<(Rule, u64)>,
    prompt_estimate: u64,
    settled: bool,
}

impl<S: LimitStore + Clone + 'static, R: Runtime + Clone + 'static> Settler<S, R> {
    /// The request used `tokens` (prompt plus completion) in total.
    pub fn settle(mut self, tokens: u64) {
        self.settle_once(tokens);
    }

    /// What a stream cut short is charged when its usage never arrived: the prompt estimate plus
    /// one token per content chunk relayed.
    pub fn charge_for_partial_stream(&self, content_events: u64) -> u64 {
        self.prompt_estimate + content_events
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
                runtime.log(&format!(
                    r#"{{"level":"error","event":"limit_settle_failed","scope":{},"detail":{}}}"#,
                    serde_json::Value::from(scope),
                    serde_json::Value::from(e.0)
                ));
            }
        }));
    }
}

impl<S: LimitStore + Clone + 'static, R: Runtime + Clone + 'static> Drop for Settler<S, R> {
    fn drop(&mut self) {
        // Not settled explicitly: the request failed before the backend produced anything.
        self.settle_once(0);
    }
}
