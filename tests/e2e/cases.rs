//! The end-to-end cases, each run against every runtime (see `main.rs`).

use crate::harness::*;
use crate::support::{request, request_streaming, sse_events, try_request, wait_until, HttpResponse};
use crate::harness::Setup;
use serde_json::{json, Value};
use std::time::Duration;

fn post(gw: &Gateway, key: Option<&str>, body: &Value) -> HttpResponse {
    post_raw(gw, key, &serde_json::to_vec(body).unwrap())
}

fn post_raw(gw: &Gateway, key: Option<&str>, body: &[u8]) -> HttpResponse {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("authorization", auth.as_str()));
    }
    request(&gw.addr, "POST", "/v1/chat/completions", &headers, Some(body))
}

fn chat(extra: Value) -> Value {
    let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Say hello"}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// Opens a chat stream and returns once its response head has arrived.
fn open_stream(gw: &Gateway, key: &str, body: &Value) -> crate::support::StreamingResponse {
    let auth = format!("Bearer {key}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    request_streaming(&gw.addr, "POST", "/v1/chat/completions", &headers, Some(&serde_json::to_vec(body).unwrap()))
}

/// Checks the OpenAI error shape and returns the `error` object.
fn error_of(response: &HttpResponse) -> Value {
    assert_eq!(response.header("content-type"), Some("application/json"), "{}", response.text());
    let body = response.json();
    let error = body["error"].clone();
    for field in ["message", "type", "param", "code"] {
        assert!(error.get(field).is_some(), "error lacks {field}: {body}");
    }
    assert!(response.header("x-request-id").is_some(), "errors carry x-request-id too");
    error
}

pub fn healthz_answers_ok_without_auth(gw: &Gateway) {
    let r = request(&gw.addr, "GET", "/healthz", &[], None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    assert!(r.json()["version"].is_string());
    assert!(r.header("x-request-id").is_some_and(|id| id.starts_with("req_")));
}

pub fn rejects_missing_and_wrong_keys_with_401(gw: &Gateway) {
    for key in [None, Some("sk-not-a-key"), Some(BACKEND_CREDENTIAL)] {
        let r = post(gw, key, &chat(json!({})));
        assert_eq!(r.status, 401, "key {key:?}");
        let e = error_of(&r);
        assert_eq!(e["code"], "invalid_api_key");
        assert_eq!(e["type"], "invalid_request_error");
    }
    let r = request(&gw.addr, "GET", "/v1/models", &[("api-key", KEY)], None);
    assert_eq!(r.status, 200, "the api-key header is accepted too");
}

pub fn lists_models_for_the_key(gw: &Gateway) {
    let ids = |key: &str| -> Vec<String> {
        let auth = format!("Bearer {key}");
        let r = request(&gw.addr, "GET", "/v1/models", &[("authorization", &auth)], None);
        assert_eq!(r.status, 200);
        r.json()["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().into()).collect()
    };
    assert_eq!(ids(KEY), [MODEL, SPARE_MODEL, SLOW_MODEL]);
    assert_eq!(ids(NARROW_KEY), [SPARE_MODEL]);
    let r = post(gw, Some(NARROW_KEY), &chat(json!({})));
    assert_eq!(r.status, 404);
    assert_eq!(error_of(&r)["code"], "model_not_found");
}

pub fn unknown_path_is_404_and_wrong_method_405(gw: &Gateway) {
    let r = request(&gw.addr, "GET", "/v1/engines", &[], None);
    assert_eq!(r.status, 404);
    error_of(&r);
    let r = request(&gw.addr, "DELETE", "/v1/chat/completions", &[], None);
    assert_eq!(r.status, 405);
    assert_eq!(error_of(&r)["type"], "invalid_request_error");
}

pub fn proxies_a_completion_with_the_backend_credential(gw: &Gateway) {
    let r = post(gw, Some(KEY), &chat(json!({"mock": {"chunks": 4}, "x_vendor_field": [1, 2]})));
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["content"], "tok0 tok1 tok2 tok3 ");
    assert_eq!(body["usage"]["completion_tokens"], 4);
    let id = r.header("x-request-id").unwrap().to_string();

    // What the backend saw: its own credential, never the client's; our id; extras untouched;
    // the max_tokens cap injected.
    let seen = gw.primary.request_with_id(&id).expect("the backend saw our request id");
    assert_eq!(seen["headers"]["authorization"], format!("Bearer {BACKEND_CREDENTIAL}"));
    assert!(!seen.to_string().contains(KEY), "the client key never reaches the backend");
    assert_eq!(seen["headers"]["x-request-id"], id);
    assert_eq!(seen["body"]["x_vendor_field"], json!([1, 2]));
    assert_eq!(seen["body"]["max_tokens"], 256);
}

pub fn streams_chunks_as_they_arrive(gw: &Gateway) {
    let body = chat(json!({"stream": true, "mock": {"chunks": 5, "delay_ms": 300}}));
    let mut stream = open_stream(gw, KEY, &body);
    assert_eq!(stream.status, 200);
    assert_eq!(stream.header("content-type"), Some("text/event-stream"));
    assert_eq!(stream.header("cache-control"), Some("no-cache"));
    // When each token's event arrived at the client.
    let mut arrivals = Vec::new();
    let mut all = Vec::new();
    while let Some((at, piece)) = stream.next_chunk() {
        let text = String::from_utf8_lossy(&piece);
        for i in 0..5 {
            if text.contains(&format!("\"tok{i} \"")) {
                arrivals.push((i, at));
            }
        }
        all.extend_from_slice(&piece);
    }
    assert!(stream.finished_cleanly());
    assert_eq!(arrivals.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 1, 2, 3, 4], "each token once, in order");
    // The mock waits 300 ms before each token: if the gateway buffered, they would arrive together.
    let gaps: Vec<Duration> = arrivals.windows(2).map(|w| w[1].1 - w[0].1).collect();
    assert!(
        gaps.iter().filter(|g| **g >= Duration::from_millis(150)).count() >= 3,
        "tokens did not arrive incrementally: gaps {gaps:?}"
    );
    assert!(arrivals[4].1 - arrivals[0].1 >= Duration::from_millis(900), "gaps {gaps:?}");
    let events = sse_events(&all);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
}

pub fn a_client_disconnect_closes_the_backend_stream(gw: &Gateway) {
    let body = chat(json!({"stream": true, "mock": {"chunks": 50, "delay_ms": 200}}));
    let before = gw.primary.stat("client_disconnects");
    let mut stream = open_stream(gw, KEY, &body);
    assert_eq!(stream.status, 200);
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("tok1 ") {
        seen.extend(stream.next_chunk().expect("stream ended early").1);
    }
    let gone = std::time::Instant::now();
    stream.disconnect();
    // The backend's generation is abandoned (its connection closed) within a second, not run to
    // the end for nobody.
    let closed = wait_until(Duration::from_secs(5), || gw.primary.stat("client_disconnects") > before);
    let after = gone.elapsed();
    println!("client gone -> backend connection closed in {after:?}");
    assert!(closed, "the backend never saw the gateway close its stream");
    assert!(after < Duration::from_secs(1), "the backend saw the close only after {after:?}");
}

pub fn drops_the_usage_chunk_unless_asked_and_keeps_done(gw: &Gateway) {
    let r = post(gw, Some(KEY), &chat(json!({"stream": true, "mock": {"chunks": 3}})));
    assert_eq!(r.status, 200);
    let events = sse_events(&r.body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    for event in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(event).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert!(!chunk["choices"].as_array().unwrap().is_empty(), "usage-only chunk leaked: {event}");
    }
    assert_eq!(events.len(), 1 + 3 + 1 + 1, "role, 3 tokens, finish, [DONE]");
    // The gateway asked the backend for usage all the same.
    let seen = gw.primary.request_with_id(r.header("x-request-id").unwrap()).unwrap();
    assert_eq!(seen["body"]["stream_options"]["include_usage"], true);
}

pub fn keeps_the_usage_chunk_when_asked(gw: &Gateway) {
    let body = chat(json!({"stream": true, "stream_options": {"include_usage": true}, "mock": {"chunks": 3}}));
    let r = post(gw, Some(KEY), &body);
    let events = sse_events(&r.body);
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 3);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
}

pub fn rejects_each_bad_input_class_with_400(gw: &Gateway) {
    let user = |content: Value| json!([{"role": "user", "content": content}]);
    let cases: Vec<(&str, Vec<u8>, Value)> = vec![
        ("malformed json", b"{\"model\":".to_vec(), Value::Null),
        ("missing messages", serde_json::to_vec(&json!({"model": MODEL})).unwrap(), json!("messages")),
        ("empty messages", serde_json::to_vec(&chat(json!({"messages": []}))).unwrap(), json!("messages")),
        ("unknown role", serde_json::to_vec(&chat(json!({"messages": [{"role": "robot", "content": "x"}]}))).unwrap(), json!("messages[0].role")),
        ("bad content", serde_json::to_vec(&chat(json!({"messages": user(json!(42))}))).unwrap(), json!("messages[0].content")),
        ("too many messages", serde_json::to_vec(&chat(json!({"messages": vec![json!({"role":"user","content":"x"}); 300]}))).unwrap(), json!("messages")),
        ("max_tokens over cap", serde_json::to_vec(&chat(json!({"max_tokens": 100_000}))).unwrap(), json!("max_tokens")),
        ("temperature", serde_json::to_vec(&chat(json!({"temperature": 3}))).unwrap(), json!("temperature")),
        ("top_p", serde_json::to_vec(&chat(json!({"top_p": 0}))).unwrap(), json!("top_p")),
        ("n", serde_json::to_vec(&chat(json!({"n": 99}))).unwrap(), json!("n")),
        ("stream not bool", serde_json::to_vec(&chat(json!({"stream": "yes"}))).unwrap(), json!("stream")),
    ];
    for (name, body, param) in cases {
        let r = post_raw(gw, Some(KEY), &body);
        assert_eq!(r.status, 400, "{name}: {}", r.text());
        let e = error_of(&r);
        assert_eq!(e["type"], "invalid_request_error", "{name}");
        assert_eq!(e["param"], param, "{name}");
    }
    // That none of these reaches the backend is pinned by the core tests: the mock's counters are
    // shared with the cases running in parallel.
}

pub fn refuses_an_oversized_body_with_413(gw: &Gateway) {
    let filler = "x".repeat(MAX_BODY_BYTES + 1);
    let r = post(gw, Some(KEY), &chat(json!({"messages": [{"role": "user", "content": filler}]})));
    assert_eq!(r.status, 413);
    assert_eq!(error_of(&r)["code"], "request_too_large");
}

pub fn refuses_over_the_request_limit_with_429(gw: &Gateway) {
    for i in 0..LIMITED_RPM {
        let r = post(gw, Some(LIMITED_KEY), &chat(json!({"mock": {"chunks": 1}})));
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.header("x-ratelimit-limit-requests"), Some(LIMITED_RPM.to_string().as_str()));
        let remaining: u32 = r.header("x-ratelimit-remaining-requests").unwrap().parse().unwrap();
        assert_eq!(remaining, LIMITED_RPM - 1 - i, "remaining goes down");
        assert!(r.header("x-ratelimit-reset-requests").is_some());
    }
    let r = post(gw, Some(LIMITED_KEY), &chat(json!({})));
    assert_eq!(r.status, 429);
    let e = error_of(&r);
    assert_eq!(e["code"], "rate_limit_exceeded");
    assert_eq!(e["type"], "requests");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "one request refills every 20 s: {retry}");
    assert!(r.header("retry-after-ms").is_some());
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
    // Another key is not affected.
    assert_eq!(post(gw, Some(KEY), &chat(json!({"mock": {"chunks": 1}}))).status, 200);
}

pub fn maps_backend_errors_without_leaking_internals(gw: &Gateway) {
    for (fault, status, code) in [("500", 502, "upstream_error"), ("plain_text_500", 502, "upstream_error"), ("garbage", 502, "upstream_error"), ("429", 429, "rate_limit_exceeded"), ("400", 400, "upstream_error")] {
        let r = post(gw, Some(KEY), &chat(json!({"mock": {"fault": fault}})));
        assert_eq!(r.status, status, "fault {fault}: {}", r.text());
        assert_eq!(error_of(&r)["code"], code, "fault {fault}");
        let text = r.text();
        assert!(!text.contains("/srv/secret") && !text.contains("exploded") && !text.contains("127.0.0.1"), "{text}");
        if fault == "429" {
            assert!(r.header("retry-after").is_some());
        }
    }
}

pub fn a_backend_reset_mid_stream_ends_with_an_error_event(gw: &Gateway) {
    let r = post(gw, Some(KEY), &chat(json!({"stream": true, "mock": {"fault": "reset", "chunks": 5}})));
    assert_eq!(r.status, 200, "the stream had started");
    let events = sse_events(&r.body);
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_error", "{events:?}");
    assert!(events.iter().any(|e| e.contains("tok0")), "what arrived before the reset was relayed");
    assert!(!events.iter().any(|e| e == "[DONE]"));
}

pub fn answers_cors_preflight_for_allowed_origins(gw: &Gateway) {
    let preflight = |origin: &str| {
        request(
            &gw.addr,
            "OPTIONS",
            "/v1/chat/completions",
            &[("origin", origin), ("access-control-request-method", "POST"), ("access-control-request-headers", "authorization,content-type")],
            None,
        )
    };
    let r = preflight(ALLOWED_ORIGIN);
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some(ALLOWED_ORIGIN));
    assert!(r.header("access-control-allow-headers").unwrap().contains("authorization"));
    let r = preflight("https://elsewhere.example.com");
    assert_eq!(r.header("access-control-allow-origin"), None);
    let auth = format!("Bearer {KEY}");
    let r = request(&gw.addr, "GET", "/v1/models", &[("authorization", &auth), ("origin", ALLOWED_ORIGIN)], None);
    assert!(r.header("access-control-expose-headers").unwrap().contains("x-ratelimit-remaining-requests"));
}

pub fn readyz_is_200_then_503_once_a_backend_stops(gw: &Gateway) {
    let r = request(&gw.addr, "GET", "/readyz", &[], None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "ready");
    assert!(!r.text().contains("127.0.0.1"), "names only, no URLs");

    let spare = gw.spare.lock().unwrap().take().expect("the spare backend is stopped once");
    spare.stop();
    let r = request(&gw.addr, "GET", "/readyz", &[], None);
    assert_eq!(r.status, 503, "{}", r.text());
    let body = r.json();
    assert_eq!(body["status"], "unavailable");
    let spare = body["backends"].as_array().unwrap().iter().find(|b| b["name"] == "spare").unwrap().clone();
    assert_eq!(spare["status"], "unreachable");
    // The gateway itself is still alive, and the other model still served.
    assert_eq!(request(&gw.addr, "GET", "/healthz", &[], None).status, 200);
    assert!(wait_until(Duration::from_secs(5), || try_request(&gw.addr, "GET", "/healthz", &[], None).is_ok()));
    assert_eq!(post(gw, Some(KEY), &chat(json!({"mock": {"chunks": 1}}))).status, 200);
}

/// Sends `count` requests at once, each on its own connection; their statuses.
fn concurrently(gw: &Gateway, count: usize, key: &'static str, body: Value) -> Vec<u16> {
    let body = std::sync::Arc::new(serde_json::to_vec(&body).unwrap());
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(count));
    let threads: Vec<_> = (0..count)
        .map(|_| {
            let (addr, body, barrier) = (gw.addr.clone(), body.clone(), barrier.clone());
            std::thread::spawn(move || {
                let auth = format!("Bearer {key}");
                let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
                barrier.wait();
                try_request(&addr, "POST", "/v1/chat/completions", &headers, Some(&body)).map_or(0, |r| r.status)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

pub fn admits_exactly_the_limit_of_1000_concurrent_requests(gw: &Gateway) {
    let started = std::time::Instant::now();
    let statuses = concurrently(gw, 1000, BURST_KEY, chat(json!({"mock": {"chunks": 1}})));
    let elapsed = started.elapsed();
    let (ok, limited) = (count(&statuses, 200), count(&statuses, 429));
    // The bucket refills one request every 60 s / limit while the burst is being served: those
    // refills are the only admissions allowed beyond the limit.
    let refills = (elapsed.as_millis() / u128::from(60_000 / BURST_RPM)) as usize;
    println!(
        "1000 concurrent requests against {BURST_RPM}/min: {ok} admitted (200), {limited} refused (429), {} other, in {elapsed:?} ({refills} refills due)",
        1000 - ok - limited
    );
    assert!(ok >= BURST_RPM as usize, "the whole burst is admitted: {ok}");
    assert!(ok <= BURST_RPM as usize + refills, "{ok} admitted: more than the limit plus the {refills} refills");
    assert_eq!(ok + limited, 1000, "every other request is a 429");
}

pub fn in_flight_streams_never_exceed_the_cap(gw: &Gateway) {
    let slow_stream = json!({"model": SLOW_MODEL, "stream": true, "messages": [{"role": "user", "content": "hi"}], "mock": {"chunks": 15, "delay_ms": 100}});
    let statuses = concurrently(gw, 12, IN_FLIGHT_KEY, slow_stream.clone());
    let max_open = gw.slow.stat("max_open_streams");
    println!("12 parallel slow streams against a cap of {IN_FLIGHT_MAX}: {} admitted, {} refused; at most {max_open} open at the backend", count(&statuses, 200), count(&statuses, 429));
    assert!(max_open <= u64::from(IN_FLIGHT_MAX), "{max_open} streams were open at the backend at once");
    assert_eq!(count(&statuses, 200), IN_FLIGHT_MAX as usize, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 12 - IN_FLIGHT_MAX as usize);
    // Every slot comes back once the streams have ended.
    let all_free = wait_until(Duration::from_secs(5), || {
        concurrently(gw, IN_FLIGHT_MAX as usize, IN_FLIGHT_KEY, json!({"model": SLOW_MODEL, "messages": [{"role": "user", "content": "hi"}], "mock": {"chunks": 1}}))
            .iter()
            .all(|s| *s == 200)
    });
    assert!(all_free, "slots were not released after the streams ended");
}

pub fn a_client_disconnect_releases_its_in_flight_slot(gw: &Gateway) {
    let body = chat(json!({"stream": true, "mock": {"chunks": 100, "delay_ms": 100}}));
    let mut stream = open_stream(gw, SINGLE_KEY, &body);
    assert_eq!(stream.status, 200);
    stream.next_chunk().expect("first chunk");
    assert_eq!(post(gw, Some(SINGLE_KEY), &chat(json!({}))).status, 429, "the open stream holds the only slot");
    stream.disconnect();
    let released = wait_until(Duration::from_secs(5), || post(gw, Some(SINGLE_KEY), &chat(json!({"mock": {"chunks": 1}}))).status == 200);
    assert!(released, "the slot leaked when the client went away");
}

pub fn settles_tokens_on_real_usage(gw: &Gateway) {
    // "Say hello" is 9 bytes: an estimate of 3 prompt tokens + max_tokens 100.
    let body = chat(json!({"max_tokens": 100, "mock": {"chunks": 5}}));
    let r = post(gw, Some(METERED_KEY), &body);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("1000"));
    let remaining: u32 = r.header("x-ratelimit-remaining-tokens").unwrap().parse().unwrap();
    assert_eq!(remaining, 1000 - 103, "admitted on the estimate");
    let used = r.json()["usage"]["total_tokens"].as_u64().unwrap() as u32;
    // The settlement runs after the response; the next admission sees it.
    // Without settlement a 4-token request would leave 1000 - 103 - 4; settled, 1000 - used - 4.
    let settled = wait_until(Duration::from_secs(5), || {
        let r = post(gw, Some(METERED_KEY), &chat(json!({"max_tokens": 1, "mock": {"chunks": 1}})));
        let now: u32 = r.header("x-ratelimit-remaining-tokens").unwrap().parse().unwrap();
        now > 1000 - 103 - 4
    });
    assert!(settled, "the first request was not settled on its real usage ({used})");
    let r = post(gw, Some(METERED_KEY), &chat(json!({"max_tokens": 256, "n": 4})));
    assert_eq!(r.status, 429, "an estimate above the whole budget");
    assert_eq!(error_of(&r)["type"], "tokens");
    assert_eq!(r.header("x-should-retry"), Some("false"));
}

/// Starts a gateway of its own for a case (see [`Setup`]).
type Launch = fn(Setup<'_>) -> Gateway;

pub fn limits_anonymous_callers_per_client_ip(launch: Launch) {
    let anonymous = format!(r#"{{"models":["{MODEL}"],"requests_per_minute":2}}"#);
    let gw = launch(Setup { vars: &[("GATEWAY_ANONYMOUS", anonymous.as_str())], ..Setup::default() });
    let body = serde_json::to_vec(&chat(json!({"mock": {"chunks": 1}}))).unwrap();
    let from = |ip: &str| {
        let headers = [("content-type", "application/json"), (gw.client_ip_header, ip)];
        request(&gw.addr, "POST", "/v1/chat/completions", &headers, Some(&body))
    };
    assert_eq!(from("203.0.113.7").status, 200);
    assert_eq!(from("203.0.113.7").status, 200);
    let r = from("203.0.113.7");
    assert_eq!(r.status, 429);
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some("2"));
    assert_eq!(from("198.51.100.1").status, 200, "another client IP has its own budget");
    let wrong = request(&gw.addr, "POST", "/v1/chat/completions", &[("authorization", "Bearer sk-nope")], Some(&body));
    assert_eq!(wrong.status, 401, "a wrong key is never treated as anonymous");
}

pub fn limit_state_survives_a_runtime_restart(launch: Launch) {
    let mut gw = launch(Setup::default());
    for _ in 0..LIMITED_RPM {
        assert_eq!(post(&gw, Some(LIMITED_KEY), &chat(json!({"mock": {"chunks": 1}}))).status, 200);
    }
    assert_eq!(post(&gw, Some(LIMITED_KEY), &chat(json!({}))).status, 429);
    gw.restart_runtime();
    let r = post(&gw, Some(LIMITED_KEY), &chat(json!({})));
    assert_eq!(r.status, 429, "a restart must not hand out a fresh budget");
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
}

/// What a fault must lead to, as the client sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    /// An OpenAI error with this status and code, before any byte of an answer.
    Error(u16, &'static str),
    /// A complete answer (a stream ending in `[DONE]`), from whichever backend could give it.
    Complete,
    /// A stream that had started, ended by one error event with this code.
    ErrorEvent(&'static str),
}

pub fn every_backend_fault_has_its_defined_outcome_with_and_without_failover(launch: Launch) {
    use Outcome::*;
    let flaky = crate::harness::watched_mock(&["--name", "flaky", "--model", "ha-model", "--model", "solo-model"]);
    let steady = crate::harness::watched_mock(&["--name", "steady", "--model", "ha-model", "--model", "dead-ha-model"]);
    let dead = format!("http://127.0.0.1:{}", crate::support::free_port());
    let backends = [
        format!(r#"{{"name":"flaky","url":"{}","models":["ha-model","solo-model"]}}"#, flaky.base_url),
        format!(r#"{{"name":"steady","url":"{}","models":["ha-model","dead-ha-model"],"priority":1}}"#, steady.base_url),
        format!(r#"{{"name":"dead","url":"{dead}","models":["dead-model","dead-ha-model"],"health_path":"/health"}}"#),
    ];
    let backends: Vec<&str> = backends.iter().map(String::as_str).collect();
    // The shared configuration never ejects: every row meets the faulty backend itself.
    let gw = launch(Setup { backends: &backends, ..Setup::default() });

    // (fault, stream, without failover, with failover); `refuse` is the dead backend.
    let table: Vec<(&str, bool, Outcome, Outcome)> = vec![
        ("refuse", false, Error(502, "upstream_error"), Complete),
        ("refuse", true, Error(502, "upstream_error"), Complete),
        ("hang", false, Error(504, "upstream_timeout"), Complete),
        ("hang", true, Error(504, "upstream_timeout"), Complete),
        ("500", false, Error(502, "upstream_error"), Complete),
        ("500", true, Error(502, "upstream_error"), Complete),
        ("plain_text_500", false, Error(502, "upstream_error"), Complete),
        ("429", false, Error(429, "rate_limit_exceeded"), Complete),
        ("garbage", false, Error(502, "upstream_error"), Complete),
        ("reset", false, Error(502, "upstream_error"), Complete),
        ("reset", true, ErrorEvent("upstream_error"), ErrorEvent("upstream_error")),
        ("malformed_sse", true, ErrorEvent("upstream_error"), ErrorEvent("upstream_error")),
        ("slow_drip", true, Complete, Complete),
        ("drip_past_idle_timeout", true, ErrorEvent("upstream_timeout"), ErrorEvent("upstream_timeout")),
    ];
    let rows: Vec<_> = table
        .into_iter()
        .flat_map(|(fault, stream, alone, with)| [(fault, stream, false, alone), (fault, stream, true, with)])
        .collect();
    let addr = gw.addr.clone();
    let results: Vec<_> = rows
        .into_iter()
        .map(|(fault, stream, failover, expected)| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let model = match (fault, failover) {
                    ("refuse", false) => "dead-model",
                    ("refuse", true) => "dead-ha-model",
                    (_, false) => "solo-model",
                    (_, true) => "ha-model",
                };
                let mock = match fault {
                    "slow_drip" => json!({"chunks": 5, "delay_ms": 300}),
                    "drip_past_idle_timeout" => json!({"chunks": 3, "delay_ms": FAULT_TIMEOUT_MS + 1_000}),
                    "refuse" => json!({}),
                    fault => json!({"fault": fault, "fault_on": "flaky", "chunks": 3}),
                };
                let body = json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}], "mock": mock});
                let auth = format!("Bearer {KEY}");
                let started = std::time::Instant::now();
                let response = try_request(
                    &addr,
                    "POST",
                    "/v1/chat/completions",
                    &[("authorization", &auth), ("content-type", "application/json")],
                    Some(&serde_json::to_vec(&body).unwrap()),
                );
                (fault, stream, failover, expected, response, started.elapsed())
            })
        })
        .map(|t| t.join().unwrap())
        .collect();

    let bound = Duration::from_millis(3 * FAULT_TIMEOUT_MS + 2_000);
    for (fault, stream, failover, expected, response, elapsed) in results {
        let row = format!("{fault:<24} stream={stream:<5} failover={failover:<5}");
        let response = response.unwrap_or_else(|e| panic!("{row}: the gateway did not answer: {e}"));
        let outcome = if response.status != 200 {
            Error(response.status, static_code(&error_of(&response)["code"]))
        } else if stream {
            let events = sse_events(&response.body);
            match events.last().map(String::as_str) {
                Some("[DONE]") => Complete,
                Some(last) => ErrorEvent(static_code(&serde_json::from_str::<Value>(last).unwrap()["error"]["code"])),
                None => panic!("{row}: an empty stream"),
            }
        } else {
            assert_eq!(response.json()["object"], "chat.completion", "{row}");
            Complete
        };
        println!("{row} -> {outcome:?} in {elapsed:?}");
        assert_eq!(outcome, expected, "{row}: {}", response.text());
        assert!(elapsed < bound, "{row}: took {elapsed:?}, over its bound of {bound:?}");
        if expected == Error(429, "rate_limit_exceeded") {
            assert!(response.header("retry-after").is_some(), "{row}");
        }
        let text = response.text();
        assert!(!text.contains("/srv/secret") && !text.contains("exploded"), "{row} leaked: {text}");
    }
}

/// The error code as one of the static strings the table uses.
fn static_code(code: &Value) -> &'static str {
    match code.as_str() {
        Some("upstream_error") => "upstream_error",
        Some("upstream_timeout") => "upstream_timeout",
        Some("rate_limit_exceeded") => "rate_limit_exceeded",
        Some("service_unavailable") => "service_unavailable",
        other => panic!("unexpected error code {other:?}"),
    }
}

/// An HS256 token for `sub`, as a browser's identity provider would issue it.
fn browser_token(sub: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use hmac::Mac;
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = json!({"iss": JWT_ISSUER, "aud": JWT_AUDIENCE, "sub": sub, "exp": exp});
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(JWT_SECRET.as_bytes()).unwrap();
    mac.update(format!("{header}.{payload}").as_bytes());
    format!("{header}.{payload}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

/// Runs a client program from the repository root; its output is printed, its failure fails.
fn run_client(program: &str, args: &[&str], env: &[(&str, String)]) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // A path is the repository's (a virtualenv); a bare name comes from PATH (node).
    let program_path = if program.contains('/') { root.join(program) } else { program.into() };
    let output = std::process::Command::new(program_path)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir(root)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (`make tools` installs it): {e}"));
    println!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{program} {args:?} failed:\n{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
}

pub fn accepts_a_jwt_beside_api_keys(gw: &Gateway) {
    let token = browser_token("e2e-browser");
    let r = post(gw, Some(&token), &chat(json!({"mock": {"chunks": 2}})));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("x-ratelimit-limit-tokens").is_some(), "the token's own budget applies");
    let forged = format!("{}x", &token[..token.len() - 1]);
    assert_eq!(post(gw, Some(&forged), &chat(json!({}))).status, 401);
}

pub fn the_official_python_sdk_works_unmodified(gw: &Gateway) {
    let env = [
        ("GATEWAY_URL", format!("http://{}/v1", gw.addr)),
        ("KEY", KEY.to_string()),
        ("RATE_KEY", SDK_PY_KEY.to_string()),
        ("MODEL", MODEL.to_string()),
    ];
    run_client(".venv-sdk/bin/python", &["tests/sdk/python_sdk.py"], &env);
}

pub fn the_official_node_sdk_works_unmodified(gw: &Gateway) {
    let env = [
        ("GATEWAY_URL", format!("http://{}/v1", gw.addr)),
        ("KEY", KEY.to_string()),
        ("RATE_KEY", SDK_JS_KEY.to_string()),
        ("MODEL", MODEL.to_string()),
    ];
    run_client("node", &["tests/sdk/node_sdk.mjs"], &env);
}

pub fn a_real_browser_streams_in_the_playground_and_cors_refuses_other_origins(gw: &Gateway) {
    let env = [
        ("GATEWAY_URL", format!("http://{}", gw.addr)),
        ("TOKEN", browser_token("e2e-playground")),
        ("MODEL", MODEL.to_string()),
        ("ALLOWED_PORT", gw.page_port.to_string()),
    ];
    run_client("node", &["tests/browser/playground.mjs"], &env);
}

pub fn a_backend_that_keeps_failing_is_ejected_across_requests(launch: Launch) {
    let hanger = crate::harness::watched_mock(&["--name", "hanger", "--model", "ha-model"]);
    let steady = crate::harness::watched_mock(&["--name", "steady", "--model", "ha-model"]);
    let backends = [
        format!(r#"{{"name":"hanger","url":"{}","models":["ha-model"]}}"#, hanger.base_url),
        format!(r#"{{"name":"steady","url":"{}","models":["ha-model"],"priority":1}}"#, steady.base_url),
    ];
    let backends: Vec<&str> = backends.iter().map(String::as_str).collect();
    let gw = launch(Setup {
        vars: &[("GATEWAY_EJECT_AFTER_FAILURES", "2"), ("GATEWAY_EJECT_FOR_MS", "60000")],
        backends: &backends,
    });
    let body = json!({"model": "ha-model", "messages": [{"role": "user", "content": "hi"}], "mock": {"fault": "hang", "fault_on": "hanger"}});
    let timed = || {
        let started = std::time::Instant::now();
        let r = post(&gw, Some(KEY), &body);
        assert_eq!(r.status, 200, "{}", r.text());
        started.elapsed()
    };
    // Each of the first two requests waits out the hanging backend's timeout, then fails over.
    let first = [timed(), timed()];
    assert!(first.iter().all(|t| *t >= Duration::from_millis(FAULT_TIMEOUT_MS)), "{first:?}");
    // Two failures in a row eject it: later requests — each in its own instance on Spin — skip it.
    let after = timed();
    println!("with the hanging backend: {first:?}; once ejected: {after:?}");
    assert!(after < Duration::from_millis(FAULT_TIMEOUT_MS / 2), "still waited on the ejected backend: {after:?}");
}

/// A `redis-server` of one case's own, which the case can stop and resume: SIGSTOP and SIGCONT
/// go to its process group (the watchdog and the server). Resumed on drop, so it can be ended.
struct OwnRedis {
    addr: String,
    proc: crate::support::Proc,
}

impl OwnRedis {
    fn start() -> OwnRedis {
        let port = crate::support::free_port();
        let dir = std::env::temp_dir().join(format!("edge-gateway-e2e-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = std::process::Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"]);
        let proc = crate::harness::watched(&cmd, Some(&std::fs::File::create(dir.join("redis.log")).unwrap()));
        let addr = format!("127.0.0.1:{port}");
        assert!(wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(&addr).is_ok()), "redis-server on {addr}");
        OwnRedis { addr, proc }
    }

    fn signal(&self, signal: &str) {
        let group = format!("-{}", self.proc.id());
        let status = std::process::Command::new("kill").args([signal, "--", &group]).status().unwrap();
        assert!(status.success(), "kill {signal} {group}");
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.signal("-CONT");
    }
}

/// Spin only: the Spin build keeps limits (and backend health) in Redis, over sockets bounded
/// by GATEWAY_REDIS_TIMEOUT_MS (default 250 ms). Two dedicated gateways — fail closed, and fail
/// open — share a Redis of this case's own (not the harness's), which the case stalls with
/// SIGSTOP: each answers within a second (500 `internal_error`, or 200 unlimited with a logged
/// warning); after SIGCONT both are limited through Redis again; with Redis gone (refused) they
/// answer at once. Workers keep limits in Durable Objects, so this runs on `wasi_gateway` only.
pub fn a_stalled_or_refused_redis_costs_a_request_its_timeout_then_service_resumes(launch: Launch) {
    let mut redis = OwnRedis::start();
    let url = format!("redis://{}", redis.addr);
    // Empty: the default timeout (250 ms), not the suite's.
    let default_timeout = ("GATEWAY_REDIS_TIMEOUT_MS", "");
    let closed = launch(Setup { vars: &[("GATEWAY_REDIS_URL", url.as_str()), default_timeout], ..Setup::default() });
    let open = launch(Setup {
        vars: &[("GATEWAY_REDIS_URL", url.as_str()), default_timeout, ("GATEWAY_LIMITS_FAIL_OPEN", "true")],
        ..Setup::default()
    });
    let body = chat(json!({"mock": {"chunks": 1}}));
    let timed = |gw: &Gateway| {
        let started = std::time::Instant::now();
        let r = post(gw, Some(BURST_KEY), &body);
        (r, started.elapsed())
    };
    let limited = |r: &HttpResponse| r.header("x-ratelimit-remaining-requests").is_some();
    for gw in [&closed, &open] {
        let (r, _) = timed(gw);
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(limited(&r), "admitted through Redis");
    }

    redis.signal("-STOP");
    let bound = Duration::from_secs(1);
    for round in 0..2 {
        let (r, took) = timed(&closed);
        println!("Redis stalled, fail closed: {} in {took:?}", r.status);
        assert_eq!(r.status, 500, "round {round}: {}", r.text());
        assert_eq!(error_of(&r)["code"], "internal_error");
        assert!(took < bound, "round {round}: a stalled Redis held the request for {took:?}");
        assert!(took >= Duration::from_millis(200), "the stall was met and waited out ({took:?})");
        let (r, took) = timed(&open);
        println!("Redis stalled, fail open: {} in {took:?}", r.status);
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
        assert!(!limited(&r), "admitted without a limit");
        assert!(took < bound, "round {round}: a stalled Redis held the request for {took:?}");
    }
    assert_eq!(request(&closed.addr, "GET", "/healthz", &[], None).status, 200, "no Redis on this path");

    redis.signal("-CONT");
    for gw in [&closed, &open] {
        let resumed = wait_until(Duration::from_secs(5), || {
            let (r, _) = timed(gw);
            r.status == 200 && limited(&r)
        });
        assert!(resumed, "normal service did not resume after SIGCONT");
    }

    redis.proc.kill();
    assert!(wait_until(Duration::from_secs(5), || std::net::TcpStream::connect(&redis.addr).is_err()), "Redis still listens");
    for (gw, status) in [(&closed, 500), (&open, 200)] {
        let (r, took) = timed(gw);
        println!("Redis gone: {} in {took:?}", r.status);
        assert_eq!(r.status, status, "{}", r.text());
        assert!(took < bound, "a refused connection took {took:?}");
    }
    // The fail-open answers were logged as such (the gateways' logs are the runtime's stdout).
    let logs = gateway_logs();
    assert!(logs.contains("limit_store_unavailable") && logs.contains("did not answer within 250 ms"), "no warning logged");
}

/// Every gateway log of this test binary's `wasmtime serve` runs.
fn gateway_logs() -> String {
    let prefix = format!("edge-gateway-e2e-wasmtime-{}-", std::process::id());
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|dir| dir.file_name().to_string_lossy().starts_with(&prefix))
        .filter_map(|dir| std::fs::read_to_string(dir.path().join("wasmtime.log")).ok())
        .collect()
}

/// Spin only: the configuration is validated by the core as on Workers; an error fails every
/// request with a 500 naming the variable, and is logged once per instance. Served bare (a
/// broken configuration fails `/healthz` too), with instances reused for several requests.
pub fn a_configuration_error_names_its_variable_and_is_logged_once_per_instance(serve: fn(&[(&str, &str)], usize) -> crate::wasi::Bare) {
    let backends = r#"[{"name":"b","url":"http://127.0.0.1:9","models":["m"]}]"#;
    let vars = [("GATEWAY_BACKENDS", backends), ("GATEWAY_API_KEYS", "[]"), ("GATEWAY_REDIS_URL", "rediss://:s3cret@cache.example.com:6380")];
    let gw = serve(&vars, 100);
    for _ in 0..3 {
        let r = request(&gw.addr, "GET", "/v1/models", &[], None);
        assert_eq!(r.status, 500);
        let e = error_of(&r);
        assert_eq!(e["code"], "configuration_error");
        let message = e["message"].as_str().unwrap();
        assert!(message.contains("GATEWAY_REDIS_URL") && message.contains("TLS"), "{message}");
        assert!(!r.text().contains("s3cret"));
        std::thread::sleep(Duration::from_millis(100)); // the instance goes back to the pool
    }
    let log = std::fs::read_to_string(&gw.log).unwrap();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("config_error")).collect();
    println!("{} config_error lines for 3 requests:\n{}", errors.len(), errors.join("\n"));
    assert!(!errors.is_empty() && errors.iter().all(|l| l.contains("GATEWAY_REDIS_URL")), "{log}");
    assert!(errors.len() < 3, "logged per request, not once per instance:\n{log}");
    assert!(!log.contains("s3cret"), "the password reached the log");
}
