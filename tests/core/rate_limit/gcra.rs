//! GCRA arithmetic with an injected clock: bursts, refill, reset times, skew, all-or-nothing.

use edge_gateway::core::openai::{format_duration, retry_after_seconds};
use edge_gateway::core::rate_limit::gcra::{
    adjust, admit, decide, Adjustment, Admission, Bucket, BucketSet, Lease, Rule, Settlement, Take,
};

const T0: u64 = 1_700_000_000_000;

fn take(bucket: &str, limit: u32, cost: u32) -> Take {
    Take { bucket: bucket.into(), rule: Rule::per_minute(limit), cost }
}

#[test]
fn admits_a_burst_of_exactly_the_limit_then_refuses() {
    let mut bucket = Bucket::default();
    let rule = Rule::per_minute(5);
    for expected_remaining in (0..5).rev() {
        let (d, next) = decide(bucket, rule, 1, T0);
        assert!(d.allowed);
        assert_eq!(d.remaining, expected_remaining);
        assert_eq!(d.limit, 5);
        bucket = next;
    }
    let (d, next) = decide(bucket, rule, 1, T0);
    assert!(!d.allowed);
    assert_eq!(d.remaining, 0);
    assert_eq!(d.retry_after_ms, 12_000, "one unit refills every 60s/5");
    assert_eq!(d.reset_ms, 60_000, "full again after a whole period");
    assert_eq!(next, bucket, "a refusal takes nothing");
}

#[test]
fn refills_one_unit_per_interval() {
    let rule = Rule::per_minute(2);
    let (_, b) = decide(Bucket::default(), rule, 1, T0);
    let (_, b) = decide(b, rule, 1, T0);
    assert!(!decide(b, rule, 1, T0 + 29_999).0.allowed);
    let (d, b) = decide(b, rule, 1, T0 + 30_000);
    assert!(d.allowed, "one unit back after 30 s");
    assert_eq!(d.remaining, 0);
    let (d, _) = decide(b, rule, 1, T0 + 90_000);
    assert!(d.allowed);
    assert_eq!(d.remaining, 1, "long idle refills to full, never beyond");
}

#[test]
fn reports_reset_as_time_until_full() {
    let rule = Rule::per_minute(60);
    let (d, _) = decide(Bucket::default(), rule, 1, T0);
    assert_eq!((d.remaining, d.reset_ms), (59, 1_000));
}

#[test]
fn a_cost_above_the_limit_is_never_admitted_and_says_so() {
    let (d, _) = decide(Bucket::default(), Rule::per_minute(10), 11, T0);
    assert!(!d.allowed);
    assert_eq!(d.retry_after_ms, u64::MAX);
}

#[test]
fn a_clock_behind_the_stored_state_does_not_grant_extra() {
    // Instance B's clock is 5 s behind instance A's; state written by A must still bind B.
    let rule = Rule::per_minute(2);
    let (_, b) = decide(Bucket::default(), rule, 1, T0);
    let (_, b) = decide(b, rule, 1, T0);
    let (d, _) = decide(b, rule, 1, T0 - 5_000);
    assert!(!d.allowed);
    assert_eq!(d.retry_after_ms, 35_000);
}

#[test]
fn takes_from_all_buckets_or_none() {
    let mut states = [Bucket::default(), Bucket::default()];
    let takes = [take("requests", 10, 1), take("tokens", 100, 60)];
    assert!(admit(&mut states, &takes, T0, true).iter().all(|d| d.allowed));
    let before = states;
    let decisions = admit(&mut states, &takes, T0, true);
    assert!(decisions[0].allowed && !decisions[1].allowed);
    assert_eq!(states, before, "the request budget is untouched when tokens refuse");
    assert_eq!(decisions[0].remaining, 9, "reports what is really left");
}

fn takes(takes: &[Take]) -> Admission {
    Admission { takes: takes.to_vec(), lease: None }
}

#[test]
fn bucket_set_forgets_full_buckets() {
    let mut set = BucketSet::default();
    set.admit(&takes(&[take("requests", 60, 1)]), T0);
    assert_eq!(set.buckets.len(), 1);
    set.admit(&takes(&[take("other", 60, 1)]), T0 + 120_000);
    assert_eq!(set.buckets.len(), 1, "the refilled bucket was dropped");
    let json = serde_json::to_string(&set).unwrap();
    assert_eq!(serde_json::from_str::<BucketSet>(&json).unwrap(), set);
}

#[test]
fn formats_durations_like_openai() {
    for (ms, text) in [
        (0, "0ms"),
        (12, "12ms"),
        (999, "999ms"),
        (1_000, "1s"),
        (1_500, "1.5s"),
        (59_999, "59.999s"),
        (60_000, "1m0s"),
        (360_000, "6m0s"),
        (90_500, "1m30.5s"),
        (3_600_000, "1h0m0s"),
    ] {
        assert_eq!(format_duration(ms), text);
    }
}

#[test]
fn retry_after_rounds_up_and_never_says_zero() {
    assert_eq!(retry_after_seconds(0), 1);
    assert_eq!(retry_after_seconds(1), 1);
    assert_eq!(retry_after_seconds(1_001), 2);
    assert_eq!(retry_after_seconds(12_000), 12);
}

fn lease(id: &str, max: u32) -> Option<Lease> {
    Some(Lease { bucket: "in_flight".into(), id: id.into(), max, ttl_ms: 60_000 })
}

#[test]
fn leases_cap_requests_in_flight_until_released() {
    let mut set = BucketSet::default();
    for (i, id) in ["a", "b"].iter().enumerate() {
        let admitted = set.admit(&Admission { takes: vec![], lease: lease(id, 2) }, T0);
        assert!(admitted.allowed());
        assert_eq!(admitted.lease.unwrap().remaining, 1 - i as u32);
    }
    let refused = set.admit(&Admission { takes: vec![], lease: lease("c", 2) }, T0);
    assert!(!refused.allowed());
    assert_eq!(refused.lease.unwrap().retry_after_ms, 1_000);
    set.settle(&Settlement { release: Some(("in_flight".into(), "a".into())), adjustments: vec![] }, T0);
    assert!(set.admit(&Admission { takes: vec![], lease: lease("c", 2) }, T0).allowed(), "a released slot is free");
}

#[test]
fn a_lease_whose_release_never_comes_expires() {
    let mut set = BucketSet::default();
    set.admit(&Admission { takes: vec![], lease: lease("lost", 1) }, T0);
    assert!(!set.admit(&Admission { takes: vec![], lease: lease("next", 1) }, T0 + 59_999).allowed());
    assert!(set.admit(&Admission { takes: vec![], lease: lease("next", 1) }, T0 + 60_000).allowed());
}

#[test]
fn a_refused_budget_takes_no_slot_and_a_refused_slot_takes_no_budget() {
    let mut set = BucketSet::default();
    let full = Admission { takes: vec![take("requests", 1, 1)], lease: lease("a", 5) };
    assert!(set.admit(&full, T0).allowed());
    let refused = set.admit(&Admission { takes: vec![take("requests", 1, 1)], lease: lease("b", 5) }, T0);
    assert!(!refused.allowed());
    assert_eq!(refused.lease.unwrap().remaining, 4, "b holds no slot");
    assert_eq!(set.leases["in_flight"].len(), 1);

    let mut set = BucketSet::default();
    set.admit(&Admission { takes: vec![], lease: lease("a", 1) }, T0);
    let refused = set.admit(&Admission { takes: vec![take("requests", 10, 1)], lease: lease("b", 1) }, T0);
    assert!(!refused.allowed());
    assert_eq!(refused.decisions[0].remaining, 10, "the request budget was not charged");
    assert!(!set.buckets.contains_key("requests"));
}

#[test]
fn settling_refunds_unused_tokens_and_charges_overshoot() {
    let rule = Rule::per_minute(1_000);
    let mut set = BucketSet::default();
    set.admit(&takes(&[take("tokens", 1_000, 600)]), T0);
    // The request used 100 of the 600 it was admitted on.
    let refund = Adjustment { bucket: "tokens".into(), rule, delta: -500 };
    set.settle(&Settlement { release: None, adjustments: vec![refund] }, T0);
    let d = set.admit(&takes(&[take("tokens", 1_000, 1)]), T0).decisions[0];
    assert_eq!(d.remaining, 899);
    // A stream that overshot its estimate is charged, and the next request is refused for it.
    let overshoot = Adjustment { bucket: "tokens".into(), rule, delta: 2_000 };
    set.settle(&Settlement { release: None, adjustments: vec![overshoot] }, T0);
    assert!(!set.admit(&takes(&[take("tokens", 1_000, 1)]), T0).allowed());
}

#[test]
fn a_refund_never_fills_a_bucket_past_full() {
    let rule = Rule::per_minute(100);
    let b = adjust(Bucket::default(), rule, -1_000, T0);
    let (d, _) = decide(b, rule, 1, T0);
    assert_eq!(d.remaining, 99);
}
