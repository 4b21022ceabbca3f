//! Rate-limit arithmetic: GCRA (generic cell rate algorithm), pure and clock-injected.
//!
//! A bucket is one number, its theoretical arrival time (TAT), so it is cheap to keep in a
//! consistent store (a Durable Object, Redis). A limit of `L` per `period` lets a burst of `L`
//! through and then refills one unit every `period / L`. Admission over several buckets is
//! all-or-nothing so a request never spends one budget while another refuses it.

use serde::{Deserialize, Serialize};

/// Nanoseconds per millisecond: TATs are kept in ns so `period / limit` stays exact enough.
const NS_PER_MS: u64 = 1_000_000;

/// A limit of `limit` units per `period_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub limit: u32,
    pub period_ms: u64,
}

impl Rule {
    pub fn per_minute(limit: u32) -> Rule {
        Rule { limit, period_ms: 60_000 }
    }

    fn interval_ns(&self) -> u64 {
        (self.period_ms.saturating_mul(NS_PER_MS) / u64::from(self.limit.max(1))).max(1)
    }

    fn period_ns(&self) -> u64 {
        self.period_ms.saturating_mul(NS_PER_MS)
    }
}

/// One bucket's state: when it will be full again (ns on the store's clock). Zero is "full".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub tat_ns: u64,
}

/// A request to take `cost` units from the bucket named `bucket` under `rule`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Take {
    pub bucket: String,
    pub rule: Rule,
    pub cost: u32,
}

/// What one bucket said, with the numbers for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset_ms: u64,
    /// Until this request could be admitted (0 when allowed).
    pub retry_after_ms: u64,
}

/// Looks at one bucket: what taking `cost` now would give, and the bucket afterwards.
pub fn decide(bucket: Bucket, rule: Rule, cost: u32, now_ms: u64) -> (Decision, Bucket) {
    let now = now_ms.saturating_mul(NS_PER_MS);
    let interval = rule.interval_ns();
    let period = rule.period_ns();
    let tat = bucket.tat_ns.max(now);
    let new_tat = tat.saturating_add(interval.saturating_mul(u64::from(cost)));
    let allow_at = new_tat.saturating_sub(period);
    let remaining_at = |tat: u64| {
        let used = tat - now;
        (period.saturating_sub(used) / interval).min(u64::from(rule.limit)) as u32
    };
    if now >= allow_at && cost <= rule.limit {
        let decision = Decision {
            allowed: true,
            limit: rule.limit,
            remaining: remaining_at(new_tat),
            reset_ms: ceil_ms(new_tat - now),
            retry_after_ms: 0,
        };
        (decision, Bucket { tat_ns: new_tat })
    } else {
        let retry = if cost > rule.limit { u64::MAX } else { ceil_ms(allow_at - now) };
        let decision = Decision {
            allowed: false,
            limit: rule.limit,
            remaining: remaining_at(tat),
            reset_ms: ceil_ms(tat - now),
            retry_after_ms: retry,
        };
        (decision, bucket)
    }
}

/// Takes from every bucket or from none. `buckets[i]` is the state for `takes[i]`; it is updated
/// in place only when all of them allow and `also_allowed` (another limit, e.g. a lease) agrees.
pub fn admit(buckets: &mut [Bucket], takes: &[Take], now_ms: u64, also_allowed: bool) -> Vec<Decision> {
    let outcomes: Vec<(Decision, Bucket)> =
        takes.iter().zip(buckets.iter()).map(|(take, bucket)| decide(*bucket, take.rule, take.cost, now_ms)).collect();
    let all_allowed = also_allowed && outcomes.iter().all(|(d, _)| d.allowed);
    outcomes
        .into_iter()
        .zip(buckets.iter_mut().zip(takes))
        .map(|((decision, next), (bucket, take))| {
            if all_allowed {
                *bucket = next;
                decision
            } else if decision.allowed {
                // This bucket would have allowed, but another limit refused: nothing was taken.
                let remaining = decision.remaining.saturating_add(take.cost).min(decision.limit);
                Decision { remaining, ..decision }
            } else {
                decision
            }
        })
        .collect()
}

/// Corrects a bucket once the real cost is known: `delta` more units (or fewer, when negative).
/// A refund never makes the bucket fuller than full.
pub fn adjust(bucket: Bucket, rule: Rule, delta: i64, now_ms: u64) -> Bucket {
    let now = now_ms.saturating_mul(NS_PER_MS);
    let tat = bucket.tat_ns.max(now);
    let change = rule.interval_ns().saturating_mul(delta.unsigned_abs());
    let tat_ns = if delta >= 0 { tat.saturating_add(change) } else { tat.saturating_sub(change).max(now) };
    Bucket { tat_ns }
}

/// A concurrency slot (an in-flight request), held until released or until it expires, so a
/// slot whose release never arrives (an instance killed mid-stream) cannot leak for ever.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub bucket: String,
    /// Unique per request (its request id).
    pub id: String,
    pub max: u32,
    pub ttl_ms: u64,
}

/// Everything one request asks of its scope's limits, admitted all or nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    pub takes: Vec<Take>,
    pub lease: Option<Lease>,
}

/// The answer: one decision per take, and one for the lease if asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admitted {
    pub decisions: Vec<Decision>,
    pub lease: Option<Decision>,
}

impl Admitted {
    pub fn allowed(&self) -> bool {
        self.decisions.iter().chain(self.lease.iter()).all(|d| d.allowed)
    }
}

/// A correction of one bucket by the real cost of a finished request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adjustment {
    pub bucket: String,
    pub rule: Rule,
    pub delta: i64,
}

/// What is settled when a request ends: its slot released, its budgets corrected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settlement {
    /// `(bucket, lease id)` of the slot to release.
    pub release: Option<(String, String)>,
    pub adjustments: Vec<Adjustment>,
}

impl Settlement {
    pub fn is_empty(&self) -> bool {
        self.release.is_none() && self.adjustments.iter().all(|a| a.delta == 0)
    }
}

/// How long a refused lease should wait: slots free when requests end, which nobody can predict.
const LEASE_RETRY_MS: u64 = 1_000;

/// The limits of one scope (an API key, a client IP), as a consistent store keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketSet {
    pub buckets: std::collections::BTreeMap<String, Bucket>,
    /// Held leases: bucket → lease id → expiry (ms on the store's clock).
    #[serde(default)]
    pub leases: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
}

impl BucketSet {
    /// Admits a request against the named buckets and lease, all or nothing, then forgets
    /// buckets that are full again and leases that expired, so the stored state stays small.
    pub fn admit(&mut self, admission: &Admission, now_ms: u64) -> Admitted {
        self.forget_expired(now_ms);
        let lease = admission.lease.as_ref().map(|lease| {
            let leases = self.leases.get(&lease.bucket);
            let held = leases.map_or(0, |l| l.len() as u32);
            // An id already held is a collision, never a free slot (ids are random: only a bug
            // repeats one).
            let taken = leases.is_some_and(|l| l.contains_key(&lease.id));
            let allowed = held < lease.max && !taken;
            let in_use = if allowed { held + 1 } else { held };
            Decision {
                allowed,
                limit: lease.max,
                remaining: lease.max.saturating_sub(in_use),
                reset_ms: 0,
                retry_after_ms: if allowed { 0 } else { LEASE_RETRY_MS },
            }
        });
        let lease_allowed = lease.is_none_or(|d| d.allowed);
        let takes = &admission.takes;
        let mut states: Vec<Bucket> =
            takes.iter().map(|t| self.buckets.get(&t.bucket).copied().unwrap_or_default()).collect();
        let decisions = admit(&mut states, takes, now_ms, lease_allowed);
        let admitted = Admitted { decisions, lease };
        if admitted.allowed() {
            for (take, state) in takes.iter().zip(states) {
                self.buckets.insert(take.bucket.clone(), state);
            }
            if let Some(lease) = &admission.lease {
                let expiry = now_ms.saturating_add(lease.ttl_ms);
                self.leases.entry(lease.bucket.clone()).or_default().insert(lease.id.clone(), expiry);
            }
        } else if let Some(lease) = admitted.lease.as_ref().filter(|d| d.allowed) {
            // The slot was counted as taken in the reply but not held: report it free again.
            let fixed = Decision { remaining: lease.remaining + 1, ..*lease };
            return Admitted { lease: Some(fixed), ..admitted };
        }
        admitted
    }

    /// Releases a slot and corrects budgets.
    pub fn settle(&mut self, settlement: &Settlement, now_ms: u64) {
        if let Some((bucket, id)) = &settlement.release {
            if let Some(held) = self.leases.get_mut(bucket) {
                held.remove(id);
            }
        }
        for a in &settlement.adjustments {
            let bucket = self.buckets.get(&a.bucket).copied().unwrap_or_default();
            self.buckets.insert(a.bucket.clone(), adjust(bucket, a.rule, a.delta, now_ms));
        }
        self.forget_expired(now_ms);
    }

    fn forget_expired(&mut self, now_ms: u64) {
        let now_ns = now_ms.saturating_mul(NS_PER_MS);
        self.buckets.retain(|_, b| b.tat_ns > now_ns);
        for held in self.leases.values_mut() {
            held.retain(|_, expiry| *expiry > now_ms);
        }
        self.leases.retain(|_, held| !held.is_empty());
    }
}

fn ceil_ms(ns: u64) -> u64 {
    ns.div_ceil(NS_PER_MS)
}
