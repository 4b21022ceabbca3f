//! Several backends per model: order, passive health, failover before the first byte, timeouts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod fakes;

use edge_gateway::core::balance::{attempt_order, Breaker, HealthBook};
use edge_gateway::core::http::BodyError;
use edge_gateway::core::Config;
use fakes::*;

const CHAT: &str = r#"{"model":"llama","messages":[{"role":"user","content":"hi"}]}"#;
const STREAM: &str = r#"{"model":"llama","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
const COMPLETION: &str = r#"{"id":"c1","object":"chat.completion","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
const ROLE: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n";
const DONE: &str = "data: [DONE]\n\n";
const T0: u64 = 1_700_000_000_000;

/// `llama` on three backends: two primaries (weights 3 and 1) and a fallback tier.
fn ha_config(extra: &[(&str, &str)]) -> Config {
    let mut vars = vars();
    vars.insert(
        "GATEWAY_BACKENDS".into(),
        r#"[{"name":"a","url":"http://a.internal","models":["llama"],"weight":3},
            {"name":"b","url":"http://b.internal","models":["llama"]},
            {"name":"fallback","url":"http://fallback.internal","models":["llama","qwen"],"priority":1}]"#
            .into(),
    );
    for (k, v) in extra {
        vars.insert(k.to_string(), v.to_string());
    }
    Config::from_lookup(&vars as &dyn edge_gateway::core::Lookup).unwrap()
}

fn names(order: &[&edge_gateway::core::config::Backend]) -> Vec<String> {
    order.iter().map(|b| b.name.clone()).collect()
}

#[test]
fn tries_the_primary_tier_by_weight_then_the_fallback_tier() {
    let config = ha_config(&[]);
    let health = HealthBook::default();
    let mut first_a = 0;
    for seed in 0..4_000u64 {
        let order = names(&attempt_order(&config, "llama", &health, T0, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)).unwrap());
        assert_eq!(order.len(), 3);
        assert_eq!(order[2], "fallback", "the fallback tier comes last");
        first_a += usize::from(order[0] == "a");
    }
    let share = first_a as f64 / 4_000.0;
    assert!((0.70..0.80).contains(&share), "weight 3:1 should put `a` first about 75% of the time, got {share}");
}

#[test]
fn ejects_after_consecutive_failures_for_the_cool_down_only() {
    let config = ha_config(&[]);
    let health = HealthBook::default();
    let breaker = Breaker { eject_after: 3, eject_for_ms: 30_000 };
    assert!(!health.record_failure("a", T0, breaker));
    health.record_success("a");
    assert!(!health.record_failure("a", T0, breaker));
    assert!(!health.record_failure("a", T0, breaker), "a success in between resets the streak");
    assert!(health.record_failure("a", T0, breaker));
    assert!(!names(&attempt_order(&config, "llama", &health, T0 + 29_999, 1).unwrap()).contains(&"a".to_string()));
    assert!(names(&attempt_order(&config, "llama", &health, T0 + 30_000, 1).unwrap()).contains(&"a".to_string()));
}

#[test]
fn all_backends_ejected_is_a_503_and_no_backend_is_a_404() {
    let config = ha_config(&[]);
    let health = HealthBook::default();
    let breaker = Breaker { eject_after: 1, eject_for_ms: 5_000 };
    for name in ["a", "b", "fallback"] {
        health.record_failure(name, T0, breaker);
    }
    let err = attempt_order(&config, "llama", &health, T0, 1).unwrap_err();
    assert_eq!((err.status(), err.code()), (503, Some("service_unavailable")));
    assert!(err.message().contains("5s"), "{}", err.message());
    assert_eq!(attempt_order(&config, "gpt-9", &health, T0, 1).unwrap_err().status(), 404);
}

/// A gateway over fakes whose backend order is fixed: weights 3:1 are random, so these tests pin
/// `a` first by making it the only primary.
fn ordered(extra: &[(&str, &str)]) -> Config {
    let mut vars: Vec<(&str, &str)> = vec![(
        "GATEWAY_BACKENDS",
        r#"[{"name":"a","url":"http://a.internal","models":["llama"]},
            {"name":"b","url":"http://b.internal","models":["llama"],"priority":1},
            {"name":"c","url":"http://c.internal","models":["llama","qwen"],"priority":2}]"#,
    )];
    vars.extend_from_slice(extra);
    ha_config(&vars)
}

#[test]
fn fails_over_on_refusal_5xx_429_garbage_and_timeout_before_the_first_byte() {
    let cases: Vec<(&str, Script)> = vec![
        ("refused", Script::Refuse),
        ("500", Script::json(500, "{}")),
        ("503", Script::json(503, "")),
        ("429", Script::json(429, "{}")),
        ("garbage", Script::json(200, "\u{0}nope")),
        ("hang", Script::Hang),
    ];
    for (name, first) in cases {
        let (gw, upstream, runtime) = gateway();
        runtime.timeouts_fire.set(matches!(first, Script::Hang));
        let config = ordered(&[]);
        upstream.push(first);
        upstream.push(Script::json(200, COMPLETION));
        let (status, _, body) = text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT))));
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(upstream.hosts(), ["a.internal", "b.internal"], "{name}");
        let line: serde_json::Value = serde_json::from_str(runtime.logs.borrow().last().unwrap()).unwrap();
        assert_eq!((line["backend"].as_str(), line["attempts"].as_u64()), (Some("b"), Some(2)), "{name}");
    }
}

#[test]
fn never_fails_over_a_request_the_backend_found_invalid() {
    let (gw, upstream, _) = gateway();
    let config = ordered(&[]);
    upstream.push(Script::json(400, r#"{"message":"This model's maximum context length is 4096 tokens."}"#));
    upstream.push(Script::json(200, COMPLETION));
    let (status, _, _) = text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT))));
    assert_eq!(status, 400);
    assert_eq!(upstream.hosts(), ["a.internal"]);
}

#[test]
fn gives_up_after_max_attempts_with_the_last_error() {
    let (gw, upstream, _) = gateway();
    let config = ordered(&[("GATEWAY_MAX_ATTEMPTS", "2")]);
    upstream.push(Script::Refuse);
    upstream.push(Script::json(500, "{}"));
    upstream.push(Script::json(200, COMPLETION));
    let (status, _, body) = text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT))));
    assert_eq!(status, 502);
    assert_eq!(error_of(&body)["code"], "upstream_error");
    assert_eq!(upstream.hosts(), ["a.internal", "b.internal"], "bounded by GATEWAY_MAX_ATTEMPTS");
}

#[test]
fn timeouts_on_every_backend_are_a_504() {
    let (gw, upstream, runtime) = gateway();
    runtime.timeouts_fire.set(true);
    let config = ordered(&[]);
    for _ in 0..3 {
        upstream.push(Script::Hang);
    }
    let (status, _, body) = text(run(gw.handle(Ok(&config), post_chat(KEY, STREAM))));
    assert_eq!(status, 504);
    assert_eq!(error_of(&body)["code"], "upstream_timeout");
}

#[test]
fn a_stream_that_fails_before_its_first_byte_fails_over() {
    let (gw, upstream, _) = gateway();
    let config = ordered(&[]);
    upstream.push(Script::Answer {
        status: 200,
        headers: vec![("content-type", "text/event-stream")],
        chunks: vec![Err(BodyError("reset".into()))],
    });
    upstream.push(Script::sse(&[ROLE, DONE]));
    let (status, _, body) = text(run(gw.handle(Ok(&config), post_chat(KEY, STREAM))));
    assert_eq!(status, 200);
    assert_eq!(body, format!("{ROLE}{DONE}"));
    assert_eq!(upstream.hosts(), ["a.internal", "b.internal"]);
}

#[test]
fn a_stream_that_fails_after_its_first_byte_is_never_retried() {
    let (gw, upstream, _) = gateway();
    let config = ordered(&[]);
    upstream.push(Script::Answer {
        status: 200,
        headers: vec![("content-type", "text/event-stream")],
        chunks: vec![Ok(ROLE.into()), Err(BodyError("reset".into()))],
    });
    upstream.push(Script::sse(&[ROLE, DONE]));
    let (status, _, body) = text(run(gw.handle(Ok(&config), post_chat(KEY, STREAM))));
    assert_eq!(status, 200);
    assert!(body.starts_with(ROLE) && body.contains("upstream_error"), "{body}");
    assert_eq!(upstream.hosts(), ["a.internal"], "the client already had bytes: no second backend");
}

#[test]
fn a_stream_gone_silent_ends_with_a_timeout_event_after_the_idle_limit() {
    let (gw, upstream, runtime) = gateway();
    let config = ordered(&[("GATEWAY_IDLE_TIMEOUT_MS", "5000")]);
    upstream.push(Script::StreamThenStall(vec![ROLE]));
    let response = run(gw.handle(Ok(&config), post_chat(KEY, STREAM)));
    assert_eq!(response.status, 200);
    runtime.timeouts_fire.set(true); // the idle wait expires
    let (_, _, body) = text(response);
    let (before, last) = body.rsplit_once("data: ").unwrap();
    assert_eq!(before, ROLE);
    assert_eq!(error_of(last.trim())["code"], "upstream_timeout");
}

#[test]
fn a_failing_backend_is_skipped_once_ejected() {
    let (gw, upstream, runtime) = gateway();
    let config = ordered(&[("GATEWAY_EJECT_AFTER_FAILURES", "2"), ("GATEWAY_EJECT_FOR_MS", "30000")]);
    for _ in 0..2 {
        upstream.push(Script::Refuse);
        upstream.push(Script::json(200, COMPLETION));
        assert_eq!(text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT)))).0, 200);
    }
    upstream.sent.borrow_mut().clear();
    upstream.push(Script::json(200, COMPLETION));
    assert_eq!(text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT)))).0, 200);
    assert_eq!(upstream.hosts(), ["b.internal"], "`a` is ejected: no time lost on it");
    runtime.now.set(runtime.now.get() + 30_000);
    upstream.sent.borrow_mut().clear();
    upstream.push(Script::json(200, COMPLETION));
    text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT))));
    assert_eq!(upstream.hosts(), ["a.internal"], "back after the cool-down");
}

#[test]
fn a_backend_busy_with_429_is_not_ejected() {
    let (gw, upstream, _) = gateway();
    let config = ordered(&[("GATEWAY_EJECT_AFTER_FAILURES", "1")]);
    upstream.push(Script::json(429, "{}"));
    upstream.push(Script::json(200, COMPLETION));
    text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT))));
    upstream.sent.borrow_mut().clear();
    upstream.push(Script::json(200, COMPLETION));
    text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT))));
    assert_eq!(upstream.hosts(), ["a.internal"], "busy is not broken");
}

#[test]
fn readiness_probes_feed_passive_health() {
    let (gw, upstream, _) = gateway();
    let config = ordered(&[]);
    upstream.push(Script::json(503, ""));
    upstream.push(Script::json(200, ""));
    upstream.push(Script::json(200, ""));
    assert_eq!(text(run(gw.handle(Ok(&config), get("/readyz", None)))).0, 200, "llama still has b and c");
    upstream.sent.borrow_mut().clear();
    upstream.push(Script::json(200, COMPLETION));
    text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT))));
    assert_eq!(upstream.hosts(), ["b.internal"], "the failed probe ejected `a`");
}

#[test]
fn a_shared_book_journals_only_what_changed() {
    let breaker = Breaker { eject_after: 2, eject_for_ms: 1_000 };
    let reads = std::rc::Rc::new(std::cell::Cell::new(0));
    let counter = reads.clone();
    let book = HealthBook::shared(Box::new(move || {
        counter.set(counter.get() + 1);
        vec![("a".to_string(), 1, 0)]
    }));
    assert_eq!(reads.get(), 0, "nothing is read until the book is consulted");
    book.record_success("b"); // healthy before, healthy after: nothing to write
    assert!(book.take_journal().is_empty());
    assert!(book.record_failure("a", T0, breaker), "the loaded streak counts: this is the second failure");
    book.record_success("a");
    book.eject("c", T0, breaker);
    use edge_gateway::core::balance::HealthEvent::*;
    assert_eq!(
        book.take_journal(),
        [
            Failed { backend: "a".into(), at_ms: T0 },
            Recovered { backend: "a".into() },
            Ejected { backend: "c".into(), until_ms: T0 + 1_000 }
        ]
    );
    assert_eq!(reads.get(), 1, "the store is read once");
    assert!(HealthBook::default().take_journal().is_empty(), "an isolate's own book keeps no journal");
}
