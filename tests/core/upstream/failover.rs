//! Several backends per model: order, passive health, failover before the first byte, timeouts.

use crate::support::*;
use edge_gateway::core::config::Breaker;
use edge_gateway::core::http::BodyError;
use edge_gateway::core::upstream::balance::{attempt_order, HealthBook};
use edge_gateway::core::Config;

const CHAT: &str = r#"{"model":"llama","messages":[{"role":"user","content":"hi"}]}"#;
const STREAM: &str = r#"{"model":"llama","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
const COMPLETION: &str = r#"{"id":"c1","object":"chat.completion","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
const ROLE: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n";
const DONE: &str = "data: [DONE]\n\n";

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
        let order =
            names(&attempt_order(&config, "llama", &health, T0, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)).unwrap());
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

/// Sends `body` through a gateway whose backends answer with `scripts`, in virtual time.
fn exchange(
    config: &Config,
    body: &str,
    scripts: Vec<Script>,
) -> (u16, edge_gateway::core::http::Headers, String, FakeUpstream, FakeRuntime, u64) {
    let (gw, upstream, runtime) = gateway();
    for script in scripts {
        upstream.push(script);
    }
    let started = runtime.now();
    let (status, headers, body) = text(run(gw.handle(Ok(config), post_chat(KEY, body))));
    let elapsed = runtime.now() - started;
    (status, headers, body, upstream, runtime, elapsed)
}

fn log_line(runtime: &FakeRuntime) -> serde_json::Value {
    runtime.records().last().cloned().unwrap()
}

#[test]
fn fails_over_on_the_backends_faults_before_the_first_byte() {
    let sse_then_reset = Script::Answer {
        status: 200,
        headers: vec![("content-type", "text/event-stream")],
        after_ms: 0,
        chunks: vec![(0, Err(BodyError("reset".into())))],
    };
    let cases: Vec<(&str, &str, Script)> = vec![
        ("refused", CHAT, Script::Refuse),
        ("500", CHAT, Script::json(500, "{}")),
        ("502", CHAT, Script::json(502, "")),
        ("503", CHAT, Script::json(503, "")),
        ("504", CHAT, Script::json(504, "")),
        ("429", CHAT, Script::json(429, "{}")),
        ("a redirect", CHAT, Script::json(302, "")),
        ("not a completion", CHAT, Script::json(200, "\u{0}nope")),
        ("a stream that never sends its headers", STREAM, Script::Hang),
        ("a stream reset before its first byte", STREAM, sse_then_reset),
        ("a stream that is not SSE", STREAM, Script::json(200, COMPLETION)),
    ];
    for (name, body, first) in cases {
        let config = ordered_backends(&[]);
        let next = if body == STREAM { Script::sse(&[ROLE, DONE]) } else { Script::json(200, COMPLETION) };
        let (status, _, body, upstream, runtime, _) = exchange(&config, body, vec![first, next]);
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(upstream.hosts(), ["a.internal", "b.internal"], "{name}");
        let line = log_line(&runtime);
        assert_eq!((line["backend"].as_str(), line["attempts"].as_u64()), (Some("b"), Some(2)), "{name}");
    }
}

#[test]
fn never_retries_or_ejects_on_the_callers_faults() {
    // (backend status, what the client gets)
    let cases = [
        (400, 400),
        (401, 502),
        (403, 502),
        (404, 404),
        (405, 400),
        (413, 400),
        (415, 400),
        (422, 400),
        (431, 400),
        (501, 502),
        (505, 502),
    ];
    for (backend, client) in cases {
        let (gw, upstream, _) = gateway();
        let config = ordered_backends(&[("GATEWAY_EJECT_AFTER_FAILURES", "1")]);
        upstream.push(Script::json(backend, r#"{"error":{"message":"bad field at /srv/app/server.py","code":400}}"#));
        upstream.push(Script::json(200, COMPLETION));
        let (status, _, body) = text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT))));
        assert_eq!(status, client, "backend {backend}: {body}");
        assert!(!body.contains("/srv/app"), "backend {backend}: {body}");
        assert_eq!(upstream.hosts(), ["a.internal"], "backend {backend}: one poison request is not replayed elsewhere");
        upstream.sent.borrow_mut().clear();
        upstream.push(Script::json(200, COMPLETION));
        assert_eq!(text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT)))).0, 200);
        assert_eq!(upstream.hosts(), ["a.internal"], "backend {backend}: not held against the backend");
    }
}

#[test]
fn a_backends_4xx_message_is_shown_cleaned_of_internals() {
    let config = ordered_backends(&[]);
    let vllm = r#"{"error":{"message":"This model's maximum context length is 4096 tokens. See /opt/vllm/x.py or http://10.0.0.3:8000/docs (10.0.0.3:8000)","type":"BadRequestError","code":400}}"#;
    let (status, _, body, ..) = exchange(&config, CHAT, vec![Script::json(400, vllm)]);
    assert_eq!(status, 400);
    let message = error_of(&body)["message"].as_str().unwrap().to_string();
    assert!(message.starts_with("This model's maximum context length is 4096 tokens."), "{message}");
    for leak in ["/opt/vllm", "10.0.0.3", "http://"] {
        assert!(!message.contains(leak), "{message}");
    }
}

#[test]
fn a_non_stream_completion_may_take_longer_than_the_connect_timeout() {
    // vLLM sends a completion's headers after its last token: a 15 s generation is not a dead backend.
    let config =
        ordered_backends(&[("GATEWAY_CONNECT_TIMEOUT_MS", "10000"), ("GATEWAY_FIRST_BYTE_TIMEOUT_MS", "12000")]);
    let (status, _, body, upstream, _, elapsed) =
        exchange(&config, CHAT, vec![Script::json(200, COMPLETION).after(15_000)]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(elapsed, 15_000);
    assert_eq!(upstream.hosts(), ["a.internal"]);
}

#[test]
fn a_non_stream_past_the_total_timeout_is_a_504_neither_retried_nor_ejected() {
    let config = ordered_backends(&[
        ("GATEWAY_TOTAL_TIMEOUT_MS", "20000"),
        ("GATEWAY_FIRST_BYTE_TIMEOUT_MS", "5000"),
        ("GATEWAY_EJECT_AFTER_FAILURES", "1"),
    ]);
    let (gw, upstream, runtime) = gateway();
    upstream.push(Script::json(200, COMPLETION).after(25_000));
    upstream.push(Script::json(200, COMPLETION));
    let started = runtime.now();
    let (status, _, body) = text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT))));
    assert_eq!((status, runtime.now() - started), (504, 20_000), "{body}");
    assert_eq!(error_of(&body)["message"], "The inference backend did not finish the answer in time.");
    assert_eq!(upstream.hosts(), ["a.internal"], "the same generation is not started on a second GPU");
    assert_eq!(upstream.closed.get(), 1, "the backend request was abandoned (its connection closed)");
    assert_eq!(log_line(&runtime)["detail"], "timeout: total");
    upstream.sent.borrow_mut().clear();
    upstream.push(Script::json(200, COMPLETION));
    text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT))));
    assert_eq!(upstream.hosts(), ["a.internal"], "a slow answer is not a broken backend");
}

#[test]
fn each_stream_phase_times_out_on_its_own_limit() {
    let limits = [
        ("GATEWAY_CONNECT_TIMEOUT_MS", "1000"),
        ("GATEWAY_FIRST_BYTE_TIMEOUT_MS", "2500"),
        ("GATEWAY_IDLE_TIMEOUT_MS", "1500"),
        ("GATEWAY_TOTAL_TIMEOUT_MS", "4000"),
    ];
    let solo = |extra: &[(&str, &str)]| {
        let mut vars: Vec<(&str, &str)> =
            vec![("GATEWAY_BACKENDS", r#"[{"name":"a","url":"http://a.internal","models":["llama","qwen"]}]"#)];
        vars.extend_from_slice(&limits);
        vars.extend_from_slice(extra);
        ha_config(&vars)
    };
    let config = solo(&[]);
    let headers_only = Script::Answer {
        status: 200,
        headers: vec![("content-type", "text/event-stream")],
        after_ms: 0,
        chunks: vec![(60_000, Ok(ROLE.into()))],
    };
    let token = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n";
    let cases: Vec<(&str, Script, u16, u64, &str)> = vec![
        ("connect", Script::Hang, 504, 1_000, "The inference backend did not accept the request in time."),
        ("first_byte", headers_only, 504, 2_500, "The inference backend did not start answering in time."),
        (
            "idle",
            Script::sse_paced(&[ROLE, token, token], 1_600),
            200,
            1_600 + 1_500,
            "The inference backend stopped sending the stream in time.",
        ),
        (
            "total",
            Script::sse_paced(&[ROLE, token, token, token, token, token, token], 900),
            200,
            4_000,
            "The inference backend did not finish the answer in time.",
        ),
    ];
    for (phase, script, status, at_ms, message) in cases {
        let (got, _, body, _, runtime, elapsed) = exchange(&config, STREAM, vec![script]);
        assert_eq!((got, elapsed), (status, at_ms), "{phase}: {body}");
        let error = match status {
            504 => error_of(&body),
            _ => error_of(body.trim_end().rsplit("data: ").next().unwrap()),
        };
        assert_eq!(
            (error["code"].as_str(), error["message"].as_str()),
            (Some("upstream_timeout"), Some(message)),
            "{phase}"
        );
        if status == 504 {
            assert_eq!(log_line(&runtime)["detail"], format!("timeout: {phase}"));
        }
    }
}

#[test]
fn a_stream_that_never_sends_headers_fails_over_but_one_that_is_thinking_does_not() {
    let config = ordered_backends(&[("GATEWAY_CONNECT_TIMEOUT_MS", "1000"), ("GATEWAY_FIRST_BYTE_TIMEOUT_MS", "3000")]);
    let (status, _, _, upstream, _, _) = exchange(&config, STREAM, vec![Script::Hang, Script::sse(&[ROLE, DONE])]);
    assert_eq!(status, 200);
    assert_eq!(upstream.hosts(), ["a.internal", "b.internal"], "no headers: the request never started");
    let thinking = Script::Answer {
        status: 200,
        headers: vec![("content-type", "text/event-stream")],
        after_ms: 0,
        chunks: vec![(60_000, Ok(ROLE.into()))],
    };
    let (status, _, _, upstream, _, _) = exchange(&config, STREAM, vec![thinking, Script::sse(&[ROLE, DONE])]);
    assert_eq!(status, 504);
    assert_eq!(
        upstream.hosts(),
        ["a.internal"],
        "headers came: it may be generating, so no second GPU starts the same work"
    );
}

#[test]
fn gives_up_after_max_attempts_with_the_last_error() {
    let (gw, upstream, _) = gateway();
    let config = ordered_backends(&[("GATEWAY_MAX_ATTEMPTS", "2")]);
    upstream.push(Script::Refuse);
    upstream.push(Script::json(500, "{}"));
    upstream.push(Script::json(200, COMPLETION));
    let (status, _, body) = text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT))));
    assert_eq!(status, 502);
    assert_eq!(error_of(&body)["code"], "upstream_error");
    assert_eq!(upstream.hosts(), ["a.internal", "b.internal"], "bounded by GATEWAY_MAX_ATTEMPTS");
}

#[test]
fn connect_timeouts_on_every_backend_are_a_504() {
    let config = ordered_backends(&[("GATEWAY_STREAM_COMMIT_MS", "60000")]);
    let (status, _, body, upstream, ..) = exchange(&config, STREAM, vec![Script::Hang, Script::Hang, Script::Hang]);
    assert_eq!(status, 504);
    assert_eq!(error_of(&body)["code"], "upstream_timeout");
    assert_eq!(upstream.hosts().len(), 3);
}

#[test]
fn a_stream_that_fails_after_its_first_byte_is_never_retried() {
    let config = ordered_backends(&[]);
    let broken = Script::Answer {
        status: 200,
        headers: vec![("content-type", "text/event-stream")],
        after_ms: 0,
        chunks: vec![(0, Ok(ROLE.into())), (0, Err(BodyError("reset".into())))],
    };
    let (status, _, body, upstream, ..) = exchange(&config, STREAM, vec![broken, Script::sse(&[ROLE, DONE])]);
    assert_eq!(status, 200);
    assert!(body.starts_with(ROLE) && body.contains("upstream_error"), "{body}");
    assert_eq!(upstream.hosts(), ["a.internal"], "the client already had bytes: no second backend");
}

#[test]
fn a_stream_gone_silent_ends_with_a_timeout_event_after_the_idle_limit() {
    let config = ordered_backends(&[("GATEWAY_IDLE_TIMEOUT_MS", "5000")]);
    let (status, _, body, _, _, elapsed) = exchange(&config, STREAM, vec![Script::StreamThenStall(vec![ROLE])]);
    assert_eq!((status, elapsed), (200, 5_000));
    let (before, last) = body.rsplit_once("data: ").unwrap();
    assert_eq!(before, ROLE);
    assert_eq!(error_of(last.trim())["code"], "upstream_timeout");
}

#[test]
fn a_backends_retry_after_is_clamped() {
    let config = ordered_backends(&[("GATEWAY_MAX_ATTEMPTS", "1")]);
    for (sent, expected) in [
        ("7", "7"),
        ("99999999999999999999999", "1"),
        ("999999999", "3600"),
        ("Wed, 21 Oct 2015 07:28:00 GMT", "1"),
        ("-5", "1"),
    ] {
        let busy = Script::Answer { status: 429, headers: vec![("retry-after", sent)], after_ms: 0, chunks: vec![] };
        let (gw, upstream, _) = gateway();
        upstream.push(busy);
        let (status, headers, _) = text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT))));
        assert_eq!(status, 429);
        assert_eq!(headers.get("retry-after"), Some(expected), "retry-after {sent}");
        assert_eq!(headers.get("retry-after-ms"), Some(format!("{expected}000").as_str()), "retry-after {sent}");
    }
}

#[test]
fn every_backend_ejected_is_a_503_with_retry_headers() {
    let (gw, upstream, _) = gateway();
    let config = ordered_backends(&[
        ("GATEWAY_EJECT_AFTER_FAILURES", "1"),
        ("GATEWAY_EJECT_FOR_MS", "12000"),
        ("GATEWAY_MAX_ATTEMPTS", "3"),
    ]);
    for _ in 0..3 {
        upstream.push(Script::Refuse);
    }
    assert_eq!(text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT)))).0, 502);
    advance(2_000);
    let (status, headers, body) = text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT))));
    assert_eq!(status, 503, "{body}");
    assert_eq!(error_of(&body)["code"], "service_unavailable");
    assert_eq!(headers.get("retry-after-ms"), Some("10000"));
    assert_eq!(headers.get("retry-after"), Some("10"));
}

#[test]
fn a_failing_backend_is_skipped_once_ejected() {
    let (gw, upstream, _runtime) = gateway();
    let config = ordered_backends(&[("GATEWAY_EJECT_AFTER_FAILURES", "2"), ("GATEWAY_EJECT_FOR_MS", "30000")]);
    for _ in 0..2 {
        upstream.push(Script::Refuse);
        upstream.push(Script::json(200, COMPLETION));
        assert_eq!(text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT)))).0, 200);
    }
    upstream.sent.borrow_mut().clear();
    upstream.push(Script::json(200, COMPLETION));
    assert_eq!(text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT)))).0, 200);
    assert_eq!(upstream.hosts(), ["b.internal"], "`a` is ejected: no time lost on it");
    advance(30_000);
    upstream.sent.borrow_mut().clear();
    upstream.push(Script::json(200, COMPLETION));
    text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT))));
    assert_eq!(upstream.hosts(), ["a.internal"], "back after the cool-down");
}

#[test]
fn a_backend_busy_with_429_is_not_ejected() {
    let (gw, upstream, _) = gateway();
    let config = ordered_backends(&[("GATEWAY_EJECT_AFTER_FAILURES", "1")]);
    upstream.push(Script::json(429, "{}"));
    upstream.push(Script::json(200, COMPLETION));
    text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT))));
    upstream.sent.borrow_mut().clear();
    upstream.push(Script::json(200, COMPLETION));
    text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT))));
    assert_eq!(upstream.hosts(), ["a.internal"], "busy is not broken");
}

#[test]
fn readiness_probes_never_eject_nor_reinstate() {
    let (gw, upstream, _) = gateway();
    let config = ordered_backends(&[("GATEWAY_EJECT_AFTER_FAILURES", "1"), ("GATEWAY_READYZ_CACHE_MS", "0")]);
    upstream.push(Script::json(503, ""));
    upstream.push(Script::json(200, ""));
    upstream.push(Script::json(200, ""));
    assert_eq!(text(run(gw.handle(Ok(&config), get("/readyz", None)))).0, 200, "llama still has b and c");
    upstream.sent.borrow_mut().clear();
    upstream.push(Script::json(200, COMPLETION));
    text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT))));
    assert_eq!(upstream.hosts(), ["a.internal"], "a failed probe ejects nobody");

    // Traffic ejects `a`; a passing probe does not bring it back.
    upstream.push(Script::Refuse);
    upstream.push(Script::json(200, COMPLETION));
    text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT))));
    for _ in 0..3 {
        upstream.push(Script::json(200, ""));
    }
    advance(1);
    let (_, _, body) = text(run(gw.handle(Ok(&config), get("/readyz", None))));
    let a = serde_json::from_str::<serde_json::Value>(&body).unwrap()["backends"][0].clone();
    assert_eq!((a["name"].as_str(), a["status"].as_str()), (Some("a"), Some("ejected")), "{body}");
    upstream.sent.borrow_mut().clear();
    upstream.push(Script::json(200, COMPLETION));
    text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT))));
    assert_eq!(upstream.hosts(), ["b.internal"], "the ejection traffic earned holds");
}

#[test]
fn a_readiness_probe_that_times_out_says_so_and_ejects_nobody() {
    let (gw, upstream, _) = gateway();
    let config = ordered_backends(&[("GATEWAY_EJECT_AFTER_FAILURES", "1"), ("GATEWAY_READYZ_CACHE_MS", "0")]);
    upstream.push(Script::Hang);
    upstream.push(Script::json(200, ""));
    upstream.push(Script::json(200, ""));
    let (status, _, body) = text(run(gw.handle(Ok(&config), get("/readyz", None))));
    assert_eq!(status, 200, "b and c are ready: {body}");
    let a = serde_json::from_str::<serde_json::Value>(&body).unwrap()["backends"][0].clone();
    assert_eq!((a["name"].as_str(), a["status"].as_str()), (Some("a"), Some("timeout")), "{body}");
    upstream.sent.borrow_mut().clear();
    upstream.push(Script::json(200, COMPLETION));
    text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT))));
    assert_eq!(upstream.hosts(), ["a.internal"], "a slow probe ejects nobody");
}

#[test]
fn readiness_probes_each_backend_once_per_cache_period_and_names_no_model() {
    let (gw, upstream, _) = gateway();
    let config = ordered_backends(&[("GATEWAY_READYZ_CACHE_MS", "5000")]);
    for _ in 0..3 {
        upstream.push(Script::json(200, ""));
    }
    for _ in 0..100 {
        let (status, _, body) = text(run(gw.handle(Ok(&config), get("/readyz", None))));
        assert_eq!(status, 200);
        assert!(!body.contains("llama") && !body.contains("qwen") && !body.contains("internal"), "{body}");
    }
    assert_eq!(upstream.sent.borrow().len(), 3, "100 calls: one probe round");
    advance(5_000);
    for _ in 0..3 {
        upstream.push(Script::json(200, ""));
    }
    text(run(gw.handle(Ok(&config), get("/readyz", None))));
    assert_eq!(upstream.sent.borrow().len(), 6, "a new round once the cached one is old");
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
    use edge_gateway::core::upstream::balance::HealthEvent::*;
    assert_eq!(book.take_journal(), [Failed { backend: "a".into(), at_ms: T0 }, Recovered { backend: "a".into() },]);
    assert_eq!(reads.get(), 1, "the store is read once");
    assert!(HealthBook::default().take_journal().is_empty(), "an isolate's own book keeps no journal");
}

#[test]
fn a_request_the_platform_will_not_send_is_neither_failed_over_nor_held_against_the_backend() {
    let config = ordered_backends(&[("GATEWAY_EJECT_AFTER_FAILURES", "1")]);
    let (gw, upstream, runtime) = gateway();
    upstream.push(Script::RefusedLocally);
    let (status, _, body) = text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT))));
    assert_eq!(status, 500, "{body}");
    assert_eq!(upstream.hosts(), ["a.internal"], "the same request would be refused for every backend");
    assert!(!body.contains("invalid header"), "the platform's words stay in the log: {body}");
    upstream.push(Script::json(200, COMPLETION));
    text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT))));
    assert_eq!(upstream.hosts(), ["a.internal", "a.internal"], "and `a` was not ejected for it");
    let detail = runtime.records()[0]["detail"].as_str().unwrap_or_default().to_string();
    assert!(detail.contains("invalid header value"), "the reason is the operator's to read: {detail}");
}
