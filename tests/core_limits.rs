//! GCRA arithmetic with an injected clock: bursts, refill, reset times, skew, all-or-nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use edge_gateway::core::limits::{
    admit, decide, format_duration, retry_after_seconds, Bucket, BucketSet, Rule, Take,
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
    assert!(admit(&mut states, &takes, T0).iter().all(|d| d.allowed));
    let before = states;
    let decisions = admit(&mut states, &takes, T0);
    assert!(decisions[0].allowed && !decisions[1].allowed);
    assert_eq!(states, before, "the request budget is untouched when tokens refuse");
    assert_eq!(decisions[0].remaining, 9, "reports what is really left");
}

#[test]
fn bucket_set_forgets_full_buckets() {
    let mut set = BucketSet::default();
    set.admit(&[take("requests", 60, 1)], T0);
    assert_eq!(set.buckets.len(), 1);
    set.admit(&[take("other", 60, 1)], T0 + 120_000);
    assert_eq!(set.buckets.len(), 1, "the refilled bucket was dropped");
    let json = serde_json::to_string(&set).unwrap();
    assert_eq!(serde_json::from_str::<BucketSet>(&json).unwrap(), set);
}

#[test]
fn formats_durations_like_openai() {
    for (ms, text) in [(0, "0ms"), (12, "12ms"), (999, "999ms"), (1_000, "1s"), (1_500, "1.5s"),
        (59_999, "59.999s"), (60_000, "1m0s"), (360_000, "6m0s"), (90_500, "1m30.5s"), (3_600_000, "1h0m0s")] {
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
