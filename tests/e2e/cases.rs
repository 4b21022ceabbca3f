//! The end-to-end cases, each run against every runtime (see `main.rs`).

use crate::harness::Setup;
use crate::harness::*;
use crate::support::{request, request_streaming, sse_events, try_request, wait_until, HttpResponse};
use serde_json::{json, Value};
use std::time::Duration;

fn post(gw: &Gateway, key: Option<&str>, body: &Value) -> HttpResponse {
    post_raw(gw, key, &serde_json::to_vec(body).unwrap())
}

fn post_raw(gw: &Gateway, key: Option<&str>, body: &[u8]) -> HttpResponse {
    post_to(gw, "/v1/chat/completions", key, body)
}

/// A JSON `POST` to `path`, with `key` as a bearer token if given.
fn post_to(gw: &Gateway, path: &str, key: Option<&str>, body: &[u8]) -> HttpResponse {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("authorization", auth.as_str()));
    }
    request(&gw.addr, "POST", path, &headers, Some(body))
}

/// `body` with the fields of `extra` set.
fn with(mut body: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// Sends each body to `path`; each must be a 400 naming its param.
fn assert_refused(gw: &Gateway, path: &str, cases: &[(&str, Value, &str)]) {
    for (name, body, param) in cases {
        let r = post_to(gw, path, Some(KEY), &serde_json::to_vec(body).unwrap());
        assert_eq!(r.status, 400, "{path} {name}: {}", r.text());
        assert_eq!(error_of(&r)["param"], *param, "{path} {name}");
    }
}

/// `key` may send [`ENDPOINT_RPM`] requests a minute to `path`; the next is a 429 that says so.
fn assert_limited(gw: &Gateway, path: &str, key: &str, body: &Value) {
    let body = serde_json::to_vec(body).unwrap();
    for _ in 0..ENDPOINT_RPM {
        let r = post_to(gw, path, Some(key), &body);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    let r = post_to(gw, path, Some(key), &body);
    assert_eq!(r.status, 429, "{path}");
    assert_eq!(error_of(&r)["code"], "rate_limit_exceeded");
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some(ENDPOINT_RPM.to_string().as_str()), "{path}");
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"), "{path}");
    assert!(r.header("retry-after").is_some() && r.header("retry-after-ms").is_some(), "{path}");
}

fn chat(extra: Value) -> Value {
    let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Say hello"}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// Opens a chat stream and returns once its response head has arrived.
pub(crate) fn open_stream(gw: &Gateway, key: &str, body: &Value) -> crate::support::StreamingResponse {
    let auth = format!("Bearer {key}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    request_streaming(&gw.addr, "POST", "/v1/chat/completions", &headers, Some(&serde_json::to_vec(body).unwrap()))
}

/// The request `backend` got for the answer `r` (found by the id the gateway gave it, which
/// the log line names).
fn backend_saw(gw: &Gateway, backend: &crate::support::MockBackend, r: &HttpResponse) -> Value {
    let id = r.header("x-request-id").expect("every answer has an id");
    let record = gw.log_record(id);
    let upstream = record["upstream_request_id"].as_str().unwrap_or(id);
    backend.request_with_id(upstream).unwrap_or_else(|| panic!("the backend never saw {upstream}"))
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
    assert!(r.header("x-request-id").is_some_and(edge_gateway::core::request_id::is_uuid), "generated ids are UUIDs");
    assert!(r.header("traceparent").is_some_and(|t| edge_gateway::core::trace::parse_traceparent(t).is_some()));
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
    assert_eq!(ids(KEY), [MODEL, SPARE_MODEL, SLOW_MODEL, STRICT_MODEL, SMALL_MODEL]);
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
        (
            "unknown role",
            serde_json::to_vec(&chat(json!({"messages": [{"role": "robot", "content": "x"}]}))).unwrap(),
            json!("messages[0].role"),
        ),
        (
            "bad content",
            serde_json::to_vec(&chat(json!({"messages": user(json!(42))}))).unwrap(),
            json!("messages[0].content"),
        ),
        (
            "too many messages",
            serde_json::to_vec(&chat(json!({"messages": vec![json!({"role":"user","content":"x"}); 300]}))).unwrap(),
            json!("messages"),
        ),
        (
            "max_tokens over cap",
            serde_json::to_vec(&chat(json!({"max_tokens": 100_000}))).unwrap(),
            json!("max_tokens"),
        ),
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
    for (fault, status, code) in [
        ("500", 502, "upstream_error"),
        ("plain_text_500", 502, "upstream_error"),
        ("garbage", 502, "upstream_error"),
        ("429", 429, "rate_limit_exceeded"),
        ("400", 400, "upstream_error"),
    ] {
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
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "authorization,content-type"),
            ],
            None,
        )
    };
    let r = preflight(ALLOWED_ORIGIN);
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some(ALLOWED_ORIGIN));
    assert!(r.header("access-control-allow-headers").unwrap().contains("authorization"));
    let r = preflight("https://elsewhere.example.com");
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(r.header("vary"), Some("Origin"), "a refused origin's answer varies by origin too");
    let r = request(&gw.addr, "GET", "/healthz", &[("origin", "null")], None);
    assert_eq!(r.header("access-control-allow-origin"), None, "`null` is never granted");
    assert_eq!(r.header("vary"), Some("Origin"));
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
        concurrently(
            gw,
            IN_FLIGHT_MAX as usize,
            IN_FLIGHT_KEY,
            json!({"model": SLOW_MODEL, "messages": [{"role": "user", "content": "hi"}], "mock": {"chunks": 1}}),
        )
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
    let released = wait_until(Duration::from_secs(5), || {
        post(gw, Some(SINGLE_KEY), &chat(json!({"mock": {"chunks": 1}}))).status == 200
    });
    assert!(released, "the slot leaked when the client went away");
}

pub fn settles_tokens_on_real_usage(gw: &Gateway) {
    // "Say hello" is 9 bytes: an estimate of 3 prompt tokens + max_tokens 200.
    let body = chat(json!({"max_tokens": 200, "mock": {"chunks": 5}}));
    let admitted_at = std::time::Instant::now();
    let r = post(gw, Some(METERED_KEY), &body);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("1000"));
    let remaining: u32 = r.header("x-ratelimit-remaining-tokens").unwrap().parse().unwrap();
    assert_eq!(remaining, 1000 - 203, "admitted on the estimate");
    let used = r.json()["usage"]["total_tokens"].as_u64().unwrap() as u32;
    // The settlement runs after the response; the next admission (3 + 1 tokens) sees it. Settled,
    // at most `used + 4` are spent (refill only adds); unsettled, `203 + 4` minus what refilled
    // since — and 1,000/min refills one token per 60 ms, far less than the 194 the settlement
    // gives back within this wait.
    let settled = wait_until(Duration::from_secs(5), || {
        let r = post(gw, Some(METERED_KEY), &chat(json!({"max_tokens": 1, "mock": {"chunks": 1}})));
        let now: u32 = r.header("x-ratelimit-remaining-tokens").unwrap().parse().unwrap();
        now >= 1000 - used - 4 - 1
    });
    let refilled = admitted_at.elapsed().as_millis() as u32 / 60;
    assert!(1000 - 203 - 4 + refilled < 1000 - used - 4 - 1, "the wait was too long to tell settlement from refill");
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
    let gw = launch(Setup {
        vars: &[("GATEWAY_ANONYMOUS", anonymous.as_str()), ("GATEWAY_CORS_ORIGINS", "*")],
        ..Setup::default()
    });
    let body = serde_json::to_vec(&chat(json!({"mock": {"chunks": 1}}))).unwrap();
    let send = |headers: &[(&str, &str)]| {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        request(&gw.addr, "POST", "/v1/chat/completions", &all, Some(&body))
    };
    let from = |ip: &str| send(&[(gw.client_ip_header, ip)]);
    assert_eq!(from("203.0.113.7").status, 200);
    // A client-set X-Forwarded-For never buys a fresh budget: only the platform's header counts.
    assert_eq!(send(&[(gw.client_ip_header, "203.0.113.7"), ("x-forwarded-for", "192.0.2.1")]).status, 200);
    let r = send(&[(gw.client_ip_header, "203.0.113.7"), ("x-forwarded-for", "192.0.2.2")]);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some("2"));
    assert_eq!(from("198.51.100.1").status, 200, "another client IP has its own budget");

    // IPv6 callers are one caller per /64 (what one subscriber holds): five addresses, one budget.
    let statuses: Vec<u16> = (1..=5).map(|i| from(&format!("2001:db8:7:8::{i}")).status).collect();
    assert_eq!(statuses, [200, 200, 429, 429, 429], "one /64, one budget");
    assert_eq!(from("2001:db8:7:9::1").status, 200, "the next /64 is another caller");

    // No address from the platform: refused, not pooled with everyone else.
    let r = send(&[]);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(error_of(&r)["code"], "invalid_api_key");

    // Credentials are judged the same on both runtimes: unreadable or several is a 401, never
    // the anonymous tier.
    let two = format!("Bearer {KEY}");
    for headers in [
        vec![("authorization", "Bearer sk-nope")],
        vec![("authorization", "Bearer café")],
        vec![("authorization", two.as_str()), ("authorization", two.as_str())],
        vec![("authorization", two.as_str()), ("api-key", KEY)],
        vec![("x-api-key", "sk-nope")],
    ] {
        let mut with_ip = headers.clone();
        with_ip.push((gw.client_ip_header, "203.0.113.50"));
        assert_eq!(send(&with_ip).status, 401, "{headers:?} is never anonymous");
    }

    // CORS `*` grants any origin but the opaque `null`, and every answer varies by origin.
    let r = request(&gw.addr, "GET", "/healthz", &[("origin", "https://anywhere.example")], None);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://anywhere.example"));
    assert_eq!(r.header("vary"), Some("Origin"));
    let r = request(&gw.addr, "GET", "/healthz", &[("origin", "null")], None);
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(r.header("vary"), Some("Origin"));
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
        format!(
            r#"{{"name":"steady","url":"{}","models":["ha-model","dead-ha-model"],"priority":1}}"#,
            steady.base_url
        ),
        format!(r#"{{"name":"dead","url":"{dead}","models":["dead-model","dead-ha-model"],"health_path":"/health"}}"#),
    ];
    let backends: Vec<&str> = backends.iter().map(String::as_str).collect();
    // The shared configuration never ejects: every row meets the faulty backend itself.
    let gw = launch(Setup { backends: &backends, ..Setup::default() });

    // (fault, stream, without failover, with failover); `refuse` is the dead backend.
    let chat_table: Vec<(&str, bool, Outcome, Outcome)> = vec![
        ("refuse", false, Error(502, "upstream_error"), Complete),
        ("refuse", true, Error(502, "upstream_error"), Complete),
        // A non-stream answer's headers come after its last token: waited for until the total
        // timeout, then a 504 — never the same generation started on a second GPU.
        ("hang", false, Error(504, "upstream_timeout"), Error(504, "upstream_timeout")),
        // A stream's headers come at once: none means the request never started.
        ("hang", true, Error(504, "upstream_timeout"), Complete),
        ("500", false, Error(502, "upstream_error"), Complete),
        ("500", true, Error(502, "upstream_error"), Complete),
        ("plain_text_500", false, Error(502, "upstream_error"), Complete),
        ("429", false, Error(429, "rate_limit_exceeded"), Complete),
        ("garbage", false, Error(502, "upstream_error"), Complete),
        ("reset", false, Error(502, "upstream_error"), Complete),
        ("reset", true, ErrorEvent("upstream_error"), ErrorEvent("upstream_error")),
        // Malformed from its first event: nothing was committed yet, so a clean 502 and failover.
        ("malformed_sse", true, Error(502, "upstream_error"), Complete),
        ("slow_drip", true, Complete, Complete),
        ("drip_past_idle_timeout", true, ErrorEvent("upstream_timeout"), ErrorEvent("upstream_timeout")),
        ("error_event", true, ErrorEvent("upstream_error"), ErrorEvent("upstream_error")),
        // The backend found the request wrong: the caller's fault, never replayed elsewhere.
        ("status_404", false, Error(404, "upstream_error"), Error(404, "upstream_error")),
        ("status_422", false, Error(400, "upstream_error"), Error(400, "upstream_error")),
        ("status_401", false, Error(502, "upstream_error"), Error(502, "upstream_error")),
        ("status_501", false, Error(502, "upstream_error"), Error(502, "upstream_error")),
        ("status_503", true, Error(502, "upstream_error"), Complete),
    ];
    // The other endpoints meet the same rules through the same pipeline.
    let other_tables: Vec<(Endpoint, &str, bool, Outcome, Outcome)> = vec![
        (Endpoint::Embeddings, "500", false, Error(502, "upstream_error"), Complete),
        (Endpoint::Embeddings, "429", false, Error(429, "rate_limit_exceeded"), Complete),
        (Endpoint::Embeddings, "garbage", false, Error(502, "upstream_error"), Complete),
        (Endpoint::Embeddings, "status_422", false, Error(400, "upstream_error"), Error(400, "upstream_error")),
        (Endpoint::Completions, "500", true, Error(502, "upstream_error"), Complete),
        (Endpoint::Completions, "reset", false, Error(502, "upstream_error"), Complete),
        (Endpoint::Completions, "error_event", true, ErrorEvent("upstream_error"), ErrorEvent("upstream_error")),
        (Endpoint::Responses, "500", false, Error(502, "upstream_error"), Complete),
        (Endpoint::Responses, "500", true, Error(502, "upstream_error"), Complete),
        // Cut after two deltas: committed, so one error event (a cut before the first delta, while
        // the opening events are held back, still fails over: pinned by the core's tests).
        (Endpoint::Responses, "reset", true, ErrorEvent("upstream_error"), ErrorEvent("upstream_error")),
        (Endpoint::Responses, "error_event", true, ErrorEvent("upstream_error"), ErrorEvent("upstream_error")),
    ];
    let table = chat_table
        .into_iter()
        .map(|(fault, stream, alone, with)| (Endpoint::ChatCompletions, fault, stream, alone, with))
        .chain(other_tables);
    let rows: Vec<_> = table
        .flat_map(|(endpoint, fault, stream, alone, with)| {
            [(endpoint, fault, stream, false, alone), (endpoint, fault, stream, true, with)]
        })
        .collect();
    let addr = gw.addr.clone();
    let results: Vec<_> = rows
        .into_iter()
        .map(|(endpoint, fault, stream, failover, expected)| {
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
                    status if status.starts_with("status_") => {
                        json!({"status": status[7..].parse::<u16>().unwrap(), "fault_on": "flaky", "chunks": 3})
                    }
                    fault => json!({"fault": fault, "fault_on": "flaky", "chunks": 3}),
                };
                let mut body = endpoint.body(model);
                body["mock"] = mock;
                if endpoint != Endpoint::Embeddings {
                    body["stream"] = json!(stream);
                }
                let auth = format!("Bearer {KEY}");
                let started = std::time::Instant::now();
                let response = try_request(
                    &addr,
                    "POST",
                    endpoint.path(),
                    &[("authorization", &auth), ("content-type", "application/json")],
                    Some(&serde_json::to_vec(&body).unwrap()),
                );
                (endpoint, fault, stream, failover, expected, response, started.elapsed())
            })
        })
        .map(|t| t.join().unwrap())
        .collect();

    let bound = Duration::from_millis(TOTAL_TIMEOUT_MS + 2_000);
    for (endpoint, fault, stream, failover, expected, response, elapsed) in results {
        let row = format!("{:<20} {fault:<24} stream={stream:<5} failover={failover:<5}", endpoint.path());
        let response = response.unwrap_or_else(|e| panic!("{row}: the gateway did not answer: {e}"));
        let outcome = if response.status != 200 {
            Error(response.status, static_code(&error_of(&response)["code"]))
        } else if stream {
            endpoint.stream_outcome(&response.body)
        } else {
            assert_eq!(response.json()["object"], endpoint.object(), "{row}");
            Complete
        };
        println!("{row} -> {outcome:?} in {elapsed:?}");
        assert_eq!(outcome, expected, "{row}: {}", response.text());
        assert!(elapsed < bound, "{row}: took {elapsed:?}, over its bound of {bound:?}");
        if expected == Error(429, "rate_limit_exceeded") {
            assert!(response.header("retry-after").is_some(), "{row}");
        }
        let text = response.text();
        assert!(
            !text.contains("/srv/secret") && !text.contains("exploded") && !text.contains("10.1.2.3"),
            "{row} leaked: {text}"
        );
    }
}

/// The endpoints that reach a model, as the cases call them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Responses => "/v1/responses",
        }
    }

    /// A minimal valid body for `model`.
    fn body(self, model: &str) -> Value {
        match self {
            Endpoint::ChatCompletions => json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
            Endpoint::Completions => json!({"model": model, "prompt": "Once upon a time"}),
            Endpoint::Embeddings => json!({"model": model, "input": ["alpha", "beta"]}),
            Endpoint::Responses => json!({"model": model, "input": "hi"}),
        }
    }

    /// The `object` of its non-stream answer.
    fn object(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completion",
            Endpoint::Completions => "text_completion",
            Endpoint::Embeddings => "list",
            Endpoint::Responses => "response",
        }
    }

    /// How a stream of this endpoint ended: complete (`[DONE]`, or the Responses API's
    /// `response.completed`), or with one error event and its code.
    fn stream_outcome(self, body: &[u8]) -> Outcome {
        let events = sse_events(body);
        let last = events.last().map(String::as_str).unwrap_or_else(|| panic!("an empty stream"));
        if last == "[DONE]" {
            return Outcome::Complete;
        }
        let last: Value = serde_json::from_str(last).unwrap();
        match (self, last["type"].as_str()) {
            (Endpoint::Responses, Some("response.completed")) => Outcome::Complete,
            (Endpoint::Responses, Some("error")) => Outcome::ErrorEvent(static_code(&last["code"])),
            _ => Outcome::ErrorEvent(static_code(&last["error"]["code"])),
        }
    }
}

/// The error code as one of the static strings the table uses.
fn static_code(code: &Value) -> &'static str {
    match code.as_str() {
        Some("upstream_error") => "upstream_error",
        Some("upstream_timeout") => "upstream_timeout",
        Some("rate_limit_exceeded") => "rate_limit_exceeded",
        Some("model_not_found") => "model_not_found",
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
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

pub fn accepts_a_jwt_beside_api_keys(gw: &Gateway) {
    let token = browser_token("e2e-browser");
    let r = post(gw, Some(&token), &chat(json!({"mock": {"chunks": 2}})));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("x-ratelimit-limit-tokens").is_some(), "the token's own budget applies");
    // A signature that decodes (a valid base64url of the right length) but is not the key's.
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let mut forged_signature = signature.as_bytes().to_vec();
    forged_signature[10] = if forged_signature[10] == b'A' { b'B' } else { b'A' };
    let forged = format!("{signed}.{}", String::from_utf8(forged_signature).unwrap());
    use base64::Engine;
    assert!(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(forged.rsplit_once('.').unwrap().1).is_ok(),
        "the forgery decodes"
    );
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

/// Two backends of `ha-model`: `hanger` (tried first; `"fault_on": "hanger"` aims a fault at it)
/// and `steady` (its failover), with their `GATEWAY_BACKENDS` entries.
fn hanger_and_steady() -> (crate::support::MockBackend, crate::support::MockBackend, [String; 2]) {
    let hanger = crate::harness::watched_mock(&["--name", "hanger", "--model", "ha-model"]);
    let steady = crate::harness::watched_mock(&["--name", "steady", "--model", "ha-model"]);
    let backends = [
        format!(r#"{{"name":"hanger","url":"{}","models":["ha-model"]}}"#, hanger.base_url),
        format!(r#"{{"name":"steady","url":"{}","models":["ha-model"],"priority":1}}"#, steady.base_url),
    ];
    (hanger, steady, backends)
}

pub fn a_backend_that_keeps_failing_is_ejected_across_requests(launch: Launch) {
    let (_hanger, _steady, backends) = hanger_and_steady();
    let backends: Vec<&str> = backends.iter().map(String::as_str).collect();
    let gw = launch(Setup {
        vars: &[("GATEWAY_EJECT_AFTER_FAILURES", "2"), ("GATEWAY_EJECT_FOR_MS", "60000")],
        backends: &backends,
    });
    // A stream that never sends its headers never started: it fails over and counts.
    let body = json!({"model": "ha-model", "stream": true, "messages": [{"role": "user", "content": "hi"}], "mock": {"fault": "hang", "fault_on": "hanger"}});
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

pub fn a_backend_failing_inside_a_committed_stream_is_ejected_before_its_first_token(launch: Launch) {
    let (hanger, _steady, backends) = hanger_and_steady();
    let backends: Vec<&str> = backends.iter().map(String::as_str).collect();
    // Committed at once: the backends are tried inside the 200's body.
    let gw = launch(Setup {
        vars: &[
            ("GATEWAY_EJECT_AFTER_FAILURES", "1"),
            ("GATEWAY_EJECT_FOR_MS", "60000"),
            ("GATEWAY_STREAM_COMMIT_MS", "0"),
        ],
        backends: &backends,
    });
    let body = json!({"model": "ha-model", "stream": true, "messages": [{"role": "user", "content": "hi"}], "mock": {"fault": "hang", "fault_on": "hanger", "chunks": 8, "delay_ms": 250}});
    let mut stream = open_stream(&gw, KEY, &body);
    assert_eq!(stream.status, 200);
    // The hanging backend times out, the stream fails over; its first token is here.
    let first_token = std::iter::from_fn(|| stream.next_chunk()).any(|(_, chunk)| chunk.starts_with(b"data: {"));
    assert!(first_token, "no token came");
    // While that stream runs, another request — on Spin another instance, reading Redis — skips
    // the ejected backend (it would answer this one: the hang is aimed at the first).
    let before = hanger.stat("requests");
    let r = post(&gw, Some(KEY), &json!({"model": "ha-model", "messages": [{"role": "user", "content": "hi"}]}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(hanger.stat("requests"), before, "the ejected backend got the next request");
    assert!(stream.read_to_end().ends_with(b"data: [DONE]\n\n"));
}

pub fn backends_get_uuid_request_ids_and_only_allow_listed_headers(gw: &Gateway) {
    // The strict backend answers an empty 400 to any x-request-id that is not a UUID, as
    // llama-cpp-python's server does: a client's own id must not reach it as-is.
    let body =
        serde_json::to_vec(&json!({"model": STRICT_MODEL, "messages": [{"role": "user", "content": "hi"}]})).unwrap();
    let hostile = [
        ("x-api-key", KEY),
        ("x-request-id", "client-id-7"),
        ("cookie", "session=secret-cookie"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-host", "evil.example"),
        ("x-envoy-original-path", "/admin"),
        ("x-custom", "dropped"),
        ("proxy-authorization", "Basic c2VjcmV0"),
        ("digest", "sha-256=abc"),
        ("content-type", "application/json"),
    ];
    let r = request(&gw.addr, "POST", "/v1/chat/completions", &hostile, Some(&body));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-request-id"), Some("client-id-7"), "the client's id is still returned");
    let seen = gw.strict.last_request();
    let headers = seen["headers"].as_object().unwrap();
    let id = headers["x-request-id"].as_str().unwrap();
    assert!(edge_gateway::core::request_id::is_uuid(id), "the backend got a UUID: {id}");
    for name in [
        "x-api-key",
        "cookie",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-envoy-original-path",
        "x-custom",
        "proxy-authorization",
        "digest",
    ] {
        assert!(!headers.contains_key(name), "{name} reached the backend: {seen}");
    }
    assert!(!seen.to_string().contains(KEY) && !seen.to_string().contains("secret-cookie"), "{seen}");
    assert!(headers.contains_key("traceparent"), "the trace goes on to the backend");
    // Not even a client's UUID goes on (vLLM would take it as its engine request id).
    let uuid = "3f8c1d52-9a4b-4e7f-8c2d-1b0a9e8f7d6c";
    let auth = format!("Bearer {KEY}");
    let r = request(
        &gw.addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", &auth), ("x-request-id", uuid), ("content-type", "application/json")],
        Some(&body),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-request-id"), Some(uuid));
    let sent = gw.strict.last_request()["headers"]["x-request-id"].as_str().unwrap().to_string();
    assert!(edge_gateway::core::request_id::is_uuid(&sent) && sent != uuid, "{sent}");
}

pub fn a_backends_error_event_mid_stream_becomes_the_gateways_error(gw: &Gateway) {
    let r = post(gw, Some(KEY), &chat(json!({"stream": true, "mock": {"fault": "error_event", "chunks": 5}})));
    assert_eq!(r.status, 200, "the stream had started");
    let events = sse_events(&r.body);
    assert!(events.iter().any(|e| e.contains("tok0")), "what came before was relayed");
    assert!(!events.iter().any(|e| e == "[DONE]"), "the backend's [DONE] after its error is not relayed");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(
        (last["error"]["type"].as_str(), last["error"]["code"].as_str()),
        (Some("api_error"), Some("upstream_error")),
        "{last}"
    );
    let text = r.text();
    for leak in ["/srv/secret", "10.1.2.3", "InternalServerError"] {
        assert!(!text.contains(leak), "{leak} leaked: {text}");
    }
}

pub fn injected_max_tokens_fit_a_small_context(gw: &Gateway) {
    // The small backend has a 300-token context and enforces it as vLLM does; GATEWAY_MAX_TOKENS
    // is 256. A 400-byte prompt (101 tokens there) plus an injected 256 would be refused.
    let prompt = "x".repeat(400);
    let ask = |extra: Value| {
        let mut body = json!({"model": SMALL_MODEL, "messages": [{"role": "user", "content": prompt}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        post(gw, Some(KEY), &body)
    };
    let r = ask(json!({}));
    assert_eq!(r.status, 200, "a request the backend can serve is served: {}", r.text());
    let seen = gw.small.request_with_id(r.header("x-request-id").unwrap()).unwrap();
    assert!(seen["body"].get("max_tokens").is_none(), "nothing injected that could overflow: {seen}");
    let r = post(gw, Some(KEY), &json!({"model": SMALL_MODEL, "messages": [{"role": "user", "content": "Say hello"}]}));
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = gw.small.request_with_id(r.header("x-request-id").unwrap()).unwrap();
    let injected = seen["body"]["max_tokens"].as_u64().unwrap();
    assert!(
        injected < 256 && injected + 3 <= u64::from(SMALL_CONTEXT),
        "injected {injected}: within the context, under the cap"
    );
    // A client that asks for too much gets the backend's own reason, as a 400.
    let r = ask(json!({"max_tokens": 256}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(error_of(&r)["message"].as_str().unwrap().contains("maximum context length is 300 tokens"), "{}", r.text());
}

pub fn requests_sharing_one_request_id_each_need_their_own_slot(gw: &Gateway) {
    // Six streams with one x-request-id against max_in_flight 2: exactly two get in.
    let body = std::sync::Arc::new(
        serde_json::to_vec(&chat(json!({"stream": true, "mock": {"chunks": 10, "delay_ms": 150}}))).unwrap(),
    );
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(6));
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let (addr, body, barrier) = (gw.addr.clone(), body.clone(), barrier.clone());
            std::thread::spawn(move || {
                let auth = format!("Bearer {SHARED_ID_KEY}");
                let headers = [
                    ("authorization", auth.as_str()),
                    ("content-type", "application/json"),
                    ("x-request-id", "one-id-for-all"),
                ];
                barrier.wait();
                try_request(&addr, "POST", "/v1/chat/completions", &headers, Some(&body)).map_or(0, |r| r.status)
            })
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(count(&statuses, 200), 2, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 4, "{statuses:?}");
}

pub fn the_token_estimate_cannot_be_undercut(gw: &Gateway) {
    // max_completion_tokens is what vLLM and SGLang honour: it is what the estimate counts.
    let r = post(
        gw,
        Some(BYPASS_KEY),
        &chat(json!({"max_tokens": 1, "max_completion_tokens": 200, "mock": {"chunks": 1}})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let remaining: u32 = r.header("x-ratelimit-remaining-tokens").unwrap().parse().unwrap();
    assert!(remaining <= METERED_TPM - 200, "admitted as if it could generate 200 tokens: {remaining} left");
    for field in ["n_predict", "max_new_tokens"] {
        let r = post(gw, Some(BYPASS_KEY), &chat(json!({field: -1})));
        assert_eq!(r.status, 400, "{field}");
        assert_eq!(error_of(&r)["param"], field);
    }
}

pub fn every_tokenized_text_counts_toward_the_content_cap(gw: &Gateway) {
    let big = "r".repeat(MAX_CONTENT_BYTES + 1);
    let cases = [
        (
            "a refusal part",
            json!({"messages": [{"role": "user", "content": [{"type": "refusal", "refusal": big}]}]}),
            "messages",
        ),
        (
            "tool call arguments",
            json!({"messages": [{"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": big}}]}]}),
            "messages",
        ),
        (
            "a tool description",
            json!({"tools": [{"type": "function", "function": {"name": "f", "description": big}}]}),
            "tools",
        ),
        (
            "a remote image",
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest/meta-data"}}]}]}),
            "messages[0].content[0].image_url.url",
        ),
    ];
    for (name, extra, param) in cases {
        let r = post(gw, Some(KEY), &chat(extra));
        assert_eq!(r.status, 400, "{name}: {}", r.text());
        assert_eq!(error_of(&r)["param"], param, "{name}");
    }
}

pub fn a_client_that_leaves_before_the_answer_does_not_keep_its_slot(gw: &Gateway) {
    // Neither runtime here tells a worker that its client left before the response head was
    // sent: local workerd notices only when it writes (a bare JS worker's request.signal stays
    // quiet too), and wasmtime serve's WASI 0.2 handler is never cancelled (wasmtime's
    // `ProxyHandler` runs the guest on a spawned task; cancellation is its open issue #11833).
    // So a client leaving a non-stream wait is noticed when the backend answers — and then its
    // slot must come back at once, not when its lease expires minutes later. (A client that
    // leaves after the head, mid-stream, aborts the backend within a second: see
    // a_client_disconnect_closes_the_backend_stream.)
    let body = json!({"model": SLOW_MODEL, "messages": [{"role": "user", "content": "hi"}], "mock": {"chunks": 12, "delay_ms": 250}});
    let conn = crate::support::connect(&gw.addr).unwrap();
    let auth = format!("Bearer {LEAVER_KEY}");
    let sent = std::time::Instant::now();
    crate::support::send_request(
        &conn,
        &gw.addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", &auth), ("content-type", "application/json")],
        Some(&serde_json::to_vec(&body).unwrap()),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        post(gw, Some(LEAVER_KEY), &json!({"model": SLOW_MODEL, "messages": [{"role": "user", "content": "hi"}]}))
            .status,
        429,
        "the slot is held"
    );
    drop(conn);
    let released = wait_until(Duration::from_secs(6), || {
        post(
            gw,
            Some(LEAVER_KEY),
            &json!({"model": SLOW_MODEL, "messages": [{"role": "user", "content": "hi"}], "mock": {"chunks": 1}}),
        )
        .status
            == 200
    });
    println!("slot back {:?} after the request (the backend answered after 3 s)", sent.elapsed());
    assert!(released && sent.elapsed() < Duration::from_millis(4_500), "the slot lingered: {:?}", sent.elapsed());
}

pub fn each_timeout_phase_fires_on_its_own_limit(launch: Launch) {
    // Distinct limits, so which one fired shows in when the answer came and what it says.
    let gw = launch(Setup {
        vars: &[
            ("GATEWAY_CONNECT_TIMEOUT_MS", "1000"),
            ("GATEWAY_FIRST_BYTE_TIMEOUT_MS", "2500"),
            ("GATEWAY_IDLE_TIMEOUT_MS", "1500"),
            ("GATEWAY_TOTAL_TIMEOUT_MS", "5000"),
        ],
        ..Setup::default()
    });
    // (phase, stream, mock controls, status, message or None for success, when in ms)
    type Row = (&'static str, bool, Value, u16, Option<&'static str>, u64);
    let rows: Vec<Row> = vec![
        (
            "connect",
            true,
            json!({"fault": "hang"}),
            504,
            Some("The inference backend did not accept the request in time."),
            1_000,
        ),
        (
            "first byte",
            true,
            json!({"prefill_ms": 10_000}),
            504,
            Some("The inference backend did not start answering in time."),
            2_500,
        ),
        (
            "idle",
            true,
            json!({"chunks": 3, "delay_ms": 3_000}),
            200,
            Some("The inference backend stopped sending the stream in time."),
            1_500,
        ),
        (
            "total (stream)",
            true,
            json!({"chunks": 30, "delay_ms": 400}),
            200,
            Some("The inference backend did not finish the answer in time."),
            5_000,
        ),
        (
            "total (non-stream)",
            false,
            json!({"chunks": 30, "delay_ms": 400}),
            504,
            Some("The inference backend did not finish the answer in time."),
            5_000,
        ),
        (
            "a non-stream longer than connect and first byte",
            false,
            json!({"chunks": 6, "delay_ms": 500}),
            200,
            None,
            3_000,
        ),
    ];
    let addr = gw.addr.clone();
    let results: Vec<_> = rows
        .into_iter()
        .map(|(phase, stream, mock, status, message, at)| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let body = json!({"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": "hi"}], "mock": mock});
                let auth = format!("Bearer {KEY}");
                let started = std::time::Instant::now();
                let r = request(&addr, "POST", "/v1/chat/completions", &[("authorization", &auth), ("content-type", "application/json")], Some(&serde_json::to_vec(&body).unwrap()));
                (phase, stream, status, message, at, r, started.elapsed())
            })
        })
        .map(|t| t.join().unwrap())
        .collect();
    for (phase, stream, status, message, at, r, elapsed) in results {
        println!("{phase}: {} in {elapsed:?}", r.status);
        assert_eq!(r.status, status, "{phase}: {}", r.text());
        let said = match (r.status, stream) {
            (200, true) => {
                let events = sse_events(&r.body);
                serde_json::from_str::<Value>(events.last().unwrap())
                    .ok()
                    .and_then(|e| e["error"]["message"].as_str().map(str::to_owned))
            }
            (200, false) => None,
            _ => error_of(&r)["message"].as_str().map(str::to_owned),
        };
        assert_eq!(said.as_deref(), message, "{phase}");
        let at = Duration::from_millis(at);
        assert!(
            elapsed >= at && elapsed < at + Duration::from_millis(1_500),
            "{phase}: answered after {elapsed:?}, expected about {at:?}"
        );
    }
}

pub fn all_backends_ejected_is_a_503_that_says_when_to_retry(launch: Launch) {
    let dead = format!("http://127.0.0.1:{}", crate::support::free_port());
    let backend = format!(r#"{{"name":"dead","url":"{dead}","models":["dead-model"]}}"#);
    let gw = launch(Setup {
        vars: &[("GATEWAY_EJECT_AFTER_FAILURES", "1"), ("GATEWAY_EJECT_FOR_MS", "30000")],
        backends: &[backend.as_str()],
    });
    let body = json!({"model": "dead-model", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(post(&gw, Some(KEY), &body).status, 502);
    let r = post(&gw, Some(KEY), &body);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(error_of(&r)["code"], "service_unavailable");
    let seconds: u64 = r.header("retry-after").unwrap().parse().unwrap();
    let ms: u64 = r.header("retry-after-ms").unwrap().parse().unwrap();
    assert!((25..=30).contains(&seconds) && (25_000..=30_000).contains(&ms), "{seconds} s / {ms} ms");
}

pub fn readyz_probes_once_per_period_and_names_no_model(launch: Launch) {
    let gw = launch(Setup { vars: &[("GATEWAY_READYZ_CACHE_MS", "3000")], ..Setup::default() });
    let before = gw.primary.stat("health_checks");
    for _ in 0..40 {
        let r = request(&gw.addr, "GET", "/readyz", &[], None);
        assert_eq!(r.status, 200, "{}", r.text());
        for leak in [MODEL, SPARE_MODEL, SLOW_MODEL, "127.0.0.1"] {
            assert!(!r.text().contains(leak), "{leak} in {}", r.text());
        }
    }
    let probes = gw.primary.stat("health_checks") - before;
    println!("40 calls to /readyz probed the primary backend {probes} time(s)");
    assert!(probes <= 2, "{probes} probes for 40 calls within the cache period");
}

pub fn a_backends_retry_after_is_clamped(gw: &Gateway) {
    let r = post(gw, Some(KEY), &chat(json!({"mock": {"status": 429, "retry_after": "99999999999"}})));
    assert_eq!(r.status, 429, "{}", r.text());
    let seconds: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(seconds <= 3_600, "passed on {seconds} s");
    assert_eq!(r.header("retry-after-ms"), Some((seconds * 1000).to_string().as_str()));
}

/// A `redis-server` of one case's own, which the case can stop and resume: SIGSTOP and SIGCONT
/// go to its process group (the watchdog and the server). Resumed on drop, so it can be ended.
struct OwnRedis {
    addr: String,
    password: Option<&'static str>,
    proc: crate::support::Proc,
}

impl OwnRedis {
    fn start() -> OwnRedis {
        OwnRedis::start_on("127.0.0.1", None, &[])
    }

    /// On `bind`: an IPv4 or IPv6 address (`addr` is then `[::1]:port`); with `password`, Redis
    /// requires it (`requirepass`); `options` are more `redis-server` arguments.
    fn start_on(bind: &str, password: Option<&'static str>, options: &[&str]) -> OwnRedis {
        let port = crate::support::free_port();
        let dir = std::env::temp_dir().join(format!("edge-gateway-e2e-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = crate::support::launch::redis_on(bind, port);
        if let Some(password) = password {
            cmd.args(["--requirepass", password]);
        }
        cmd.args(options);
        let proc = crate::harness::watched(&cmd, Some(&std::fs::File::create(dir.join("redis.log")).unwrap()));
        let addr = match bind.contains(':') {
            true => format!("[{bind}]:{port}"),
            false => format!("{bind}:{port}"),
        };
        assert!(
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(&addr).is_ok()),
            "redis-server on {addr}"
        );
        OwnRedis { addr, password, proc }
    }

    /// The gateway's `GATEWAY_REDIS_URL` for it.
    fn url(&self) -> String {
        match self.password {
            Some(password) => format!("redis://:{password}@{}", self.addr),
            None => format!("redis://{}", self.addr),
        }
    }

    /// Sends one command (logged in first when it has a password) and returns its reply.
    fn command(&self, args: &[&str]) -> String {
        redis_command(&self.addr, self.password, args)
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

/// Sends one command to the Redis at `addr` (logged in first with `password`) and returns its
/// reply.
fn redis_command(addr: &str, password: Option<&str>, args: &[&str]) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let login: Vec<&str> = password.iter().flat_map(|p| ["AUTH", p]).collect();
    let mut reply = String::new();
    for args in [login.as_slice(), args].into_iter().filter(|a| !a.is_empty()) {
        let mut resp = format!("*{}\r\n", args.len());
        for arg in args {
            resp.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        conn.write_all(resp.as_bytes()).unwrap();
        let mut bytes = [0u8; 256];
        let n = conn.read(&mut bytes).unwrap();
        reply = String::from_utf8_lossy(&bytes[..n]).into_owned();
    }
    reply
}

/// Spin only: the Spin build keeps limits (and backend health) in Redis, over sockets bounded
/// by GATEWAY_REDIS_TIMEOUT_MS (default 250 ms). Two dedicated gateways — fail closed, and fail
/// open — share a Redis of this case's own (not the harness's), which the case stalls with
/// SIGSTOP: each answers within a second (500 `internal_error`, or 200 unlimited with a logged
/// warning); after SIGCONT both are limited through Redis again; with Redis gone (refused) they
/// answer at once. Workers keep limits in Durable Objects, so this runs on `wasi_gateway` only.
/// Redis at an IPv6 literal (`redis://[::1]:port`): the component connects to it and admits
/// through it. Skipped, saying so, where the machine has no IPv6 loopback.
pub fn limits_hold_with_redis_at_an_ipv6_literal(launch: Launch) {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        println!("SKIPPED: no IPv6 loopback on this machine");
        return;
    }
    let redis = OwnRedis::start_on("::1", None, &[]);
    let url = format!("redis://{}", redis.addr);
    let gw = launch(Setup { vars: &[("GATEWAY_REDIS_URL", url.as_str())], ..Setup::default() });
    let r = post(&gw, Some(BURST_KEY), &chat(json!({"mock": {"chunks": 1}})));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("x-ratelimit-remaining-requests").is_some(), "admitted through Redis at {url}");
}

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
    assert!(
        wait_until(Duration::from_secs(5), || std::net::TcpStream::connect(&redis.addr).is_err()),
        "Redis still listens"
    );
    for (gw, status) in [(&closed, 500), (&open, 200)] {
        let (r, took) = timed(gw);
        println!("Redis gone: {} in {took:?}", r.status);
        assert_eq!(r.status, status, "{}", r.text());
        assert!(took < bound, "a refused connection took {took:?}");
    }
    // The fail-open answers were logged as such (the gateways' logs are the runtime's stdout).
    let logs = gateway_logs();
    assert!(
        logs.contains("limit_store_unavailable") && logs.contains("did not answer within 250 ms"),
        "no warning logged"
    );
}

/// Redis (its `timeout`) or a proxy on the way closes connections left idle: a stream that
/// outlasts that still gives its slot back when it ends (the settlement once went out on the
/// connection opened at admission, failed, and the slot stayed taken until its lease expired,
/// over a minute).
pub fn a_stream_outlasting_an_idle_redis_connection_still_frees_its_slot(launch: Launch) {
    let redis = OwnRedis::start();
    assert!(redis.command(&["CONFIG", "SET", "timeout", "1"]).starts_with("+OK"));
    let url = redis.url();
    let gw = launch(Setup { vars: &[("GATEWAY_REDIS_URL", url.as_str())], ..Setup::default() });
    // 5 s, against a Redis that closes connections idle for over a second.
    let r = post(&gw, Some(SINGLE_KEY), &chat(json!({"stream": true, "mock": {"chunks": 20, "delay_ms": 250}})));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().ends_with("data: [DONE]\n\n"));
    let free = wait_until(Duration::from_secs(3), || {
        post(&gw, Some(SINGLE_KEY), &chat(json!({"mock": {"chunks": 1}}))).status == 200
    });
    assert!(free, "the stream's slot was still taken after it ended");
}

/// A Redis stall in the middle of a request costs it the timeout once, and the slot it holds is
/// still given back at its end, on a connection of its own (the settlement once failed at once,
/// as every call after a stall does, leaving the slot taken until its lease expired).
pub fn a_redis_stall_inside_a_request_does_not_keep_its_slot(launch: Launch) {
    let redis = OwnRedis::start();
    let url = format!("redis://{}", redis.addr);
    let (hanger, _steady, backends) = hanger_and_steady();
    let backends: Vec<&str> = backends.iter().map(String::as_str).collect();
    let keys = format!(
        r#"[{{"id":"one-slot","sha256":"{}","models":["ha-model"],"max_in_flight":1}}]"#,
        edge_gateway::core::auth::sha256_hex(SINGLE_KEY)
    );
    // Empty: the default Redis timeout (250 ms), not the suite's.
    let gw = launch(Setup {
        vars: &[
            ("GATEWAY_REDIS_URL", url.as_str()),
            ("GATEWAY_REDIS_TIMEOUT_MS", ""),
            ("GATEWAY_API_KEYS", keys.as_str()),
        ],
        backends: &backends,
    });
    let body = json!({"model": "ha-model", "stream": true, "messages": [{"role": "user", "content": "hi"}], "mock": {"fault": "hang", "fault_on": "hanger", "chunks": 8, "delay_ms": 250}});
    let before = hanger.stat("requests");
    let (addr, request) = (gw.addr.clone(), serde_json::to_vec(&body).unwrap());
    let (head_tx, head) = std::sync::mpsc::channel();
    let client = std::thread::spawn(move || {
        let auth = format!("Bearer {SINGLE_KEY}");
        let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
        let mut stream = request_streaming(&addr, "POST", "/v1/chat/completions", &headers, Some(&request));
        head_tx.send(stream.status).unwrap();
        stream.read_to_end()
    });
    // Admitted, and waiting on the hanging backend: Redis stalls now, so the write of that
    // backend's failure (before the answer's head) runs out of time.
    assert!(wait_until(Duration::from_secs(10), || hanger.stat("requests") > before), "the request never came");
    redis.signal("-STOP");
    // The head follows the stalled write; Redis is back for the rest of the stream.
    let status = head.recv_timeout(Duration::from_secs(10)).expect("no answer");
    redis.signal("-CONT");
    assert_eq!(status, 200);
    let body = client.join().unwrap();
    assert!(body.ends_with(b"data: [DONE]\n\n"), "{}", String::from_utf8_lossy(&body));
    let next = json!({"model": "ha-model", "messages": [{"role": "user", "content": "hi"}]});
    let free = wait_until(Duration::from_secs(3), || post(&gw, Some(SINGLE_KEY), &next).status == 200);
    assert!(free, "the slot was still taken after the request ended");
}

/// A connection Redis closed under a request — `CLIENT KILL`, a failover, a proxy restarting — is
/// replaced for the settlement at its end, which once failed on it and left the slot taken until
/// its lease expired.
pub fn a_redis_connection_closed_under_a_stream_is_replaced_for_its_settlement(launch: Launch) {
    let redis = OwnRedis::start();
    let url = redis.url();
    let gw = launch(Setup { vars: &[("GATEWAY_REDIS_URL", url.as_str())], ..Setup::default() });
    let before = gw.primary.stat("requests");
    let (addr, body) = (gw.addr.clone(), chat(json!({"stream": true, "mock": {"chunks": 4, "delay_ms": 150}})));
    let client = std::thread::spawn(move || {
        let auth = format!("Bearer {SINGLE_KEY}");
        let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
        request(&addr, "POST", "/v1/chat/completions", &headers, Some(&serde_json::to_vec(&body).unwrap()))
    });
    // Admitted and streaming: the connection it opened at admission is killed (every client's
    // but the one asking).
    assert!(wait_until(Duration::from_secs(10), || gw.primary.stat("requests") > before), "the request never came");
    let killed = redis.command(&["CLIENT", "KILL", "TYPE", "normal"]);
    let r = client.join().unwrap();
    println!("CLIENT KILL: {}", killed.trim());
    assert_eq!(r.status, 200);
    assert!(r.text().ends_with("data: [DONE]\n\n"));
    let free = wait_until(Duration::from_secs(3), || {
        post(&gw, Some(SINGLE_KEY), &chat(json!({"mock": {"chunks": 1}}))).status == 200
    });
    assert!(free, "the stream's slot was still taken after it ended");
}

/// With a password, a release sent while Redis is stalled waits in Redis's socket and runs when
/// it resumes: the login goes out with it (a release once waited for the login's reply, which
/// never came, and never left).
pub fn a_release_sent_during_a_redis_stall_runs_when_redis_resumes(launch: Launch) {
    let redis = OwnRedis::start_on("127.0.0.1", Some("e2e-redis-password"), &[]);
    let url = redis.url();
    let gw = launch(Setup {
        vars: &[("GATEWAY_REDIS_URL", url.as_str()), ("GATEWAY_REDIS_TIMEOUT_MS", "")],
        ..Setup::default()
    });
    let mut stream =
        open_stream(&gw, SINGLE_KEY, &chat(json!({"stream": true, "mock": {"chunks": 40, "delay_ms": 100}})));
    assert_eq!(stream.status, 200);
    stream.next_chunk().expect("a first chunk");
    // Long enough that the release needs a connection (and a login) of its own.
    std::thread::sleep(Duration::from_millis(1_500));
    redis.signal("-STOP");
    drop(stream);
    // The client is gone, the release is sent and its 250 ms run out; then Redis resumes.
    std::thread::sleep(Duration::from_millis(1_000));
    redis.signal("-CONT");
    let free = wait_until(Duration::from_secs(3), || {
        post(&gw, Some(SINGLE_KEY), &chat(json!({"mock": {"chunks": 1}}))).status == 200
    });
    assert!(free, "the slot of the client that left was still taken after Redis resumed");
}

/// A "Redis" that answers a byte at a time and never finishes keeps its socket ready to read:
/// the call still ends at its deadline (it once read on for as long as the bytes came).
pub fn a_redis_that_trickles_its_reply_still_costs_one_timeout(launch: Launch) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut command = [0u8; 4096];
                if conn.read(&mut command).is_ok() {
                    while conn.write_all(b"+").is_ok() {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            });
        }
    });
    let gw = launch(Setup {
        vars: &[("GATEWAY_REDIS_URL", url.as_str()), ("GATEWAY_REDIS_TIMEOUT_MS", "")],
        ..Setup::default()
    });
    let (addr, body) = (gw.addr.clone(), serde_json::to_vec(&chat(json!({"mock": {"chunks": 1}}))).unwrap());
    let (tx, answered) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let auth = format!("Bearer {BURST_KEY}");
        let started = std::time::Instant::now();
        let r = try_request(
            &addr,
            "POST",
            "/v1/chat/completions",
            &[("authorization", &auth), ("content-type", "application/json")],
            Some(&body),
        );
        let _ = tx.send((r.map(|r| r.status).ok(), started.elapsed()));
    });
    let (status, took) = answered.recv_timeout(Duration::from_secs(10)).expect("no answer within 10 s");
    println!("a trickling Redis: {status:?} in {took:?}");
    assert_eq!(status, Some(500), "fails closed");
    assert!(took < Duration::from_secs(2), "the Redis call outlived its 250 ms: {took:?}");
}

/// A Redis that refuses the settlement for now — here `BUSY` with a long script, as also after a
/// restart (`LOADING`) or in a failover (`READONLY`) — is asked again, so the slot comes back once
/// Redis does (a refused settlement once kept it until its lease expired, eleven minutes).
pub fn a_settlement_refused_for_now_is_asked_again(launch: Launch) {
    let redis = OwnRedis::start_on("127.0.0.1", None, &["--busy-reply-threshold", "100"]);
    let url = redis.url();
    let gw = launch(Setup { vars: &[("GATEWAY_REDIS_URL", url.as_str())], ..Setup::default() });
    let before = gw.primary.stat("requests");
    let (addr, body) = (gw.addr.clone(), chat(json!({"stream": true, "mock": {"chunks": 10, "delay_ms": 150}})));
    let client = std::thread::spawn(move || {
        let auth = format!("Bearer {SINGLE_KEY}");
        let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
        request(&addr, "POST", "/v1/chat/completions", &headers, Some(&serde_json::to_vec(&body).unwrap()))
    });
    assert!(wait_until(Duration::from_secs(10), || gw.primary.stat("requests") > before), "the request never came");
    // A script that runs until it is killed: Redis answers everyone else BUSY meanwhile.
    let addr = redis.addr.clone();
    let busy = std::thread::spawn(move || redis_command(&addr, None, &["EVAL", "while true do end", "0"]));
    let r = client.join().unwrap();
    assert_eq!(r.status, 200);
    assert!(r.text().ends_with("data: [DONE]\n\n"));
    // The settlement has been refused; Redis comes back a moment later.
    std::thread::sleep(Duration::from_millis(300));
    assert!(redis.command(&["SCRIPT", "KILL"]).starts_with("+OK"));
    busy.join().unwrap();
    let free = wait_until(Duration::from_secs(4), || {
        post(&gw, Some(SINGLE_KEY), &chat(json!({"mock": {"chunks": 1}}))).status == 200
    });
    assert!(free, "the slot was still taken after Redis came back");
}

/// A full Redis (`maxclients`) that needs a password still says why: the login goes out with the
/// command, and the reason it sent before closing is read even when the write fails.
pub fn a_full_redis_that_needs_a_password_says_why(launch: Launch) {
    let redis = OwnRedis::start_on("127.0.0.1", Some("e2e-redis-password"), &["--maxclients", "1"]);
    // The one client slot, taken (once the probe of `start_on` has left it) by the holder.
    let mut holder = None;
    let held = wait_until(Duration::from_secs(5), || {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(&redis.addr).unwrap();
        let mut reply = [0u8; 128];
        let n = conn.write_all(b"PING\r\n").and_then(|()| conn.read(&mut reply)).unwrap_or(0);
        let taken = n > 0 && !String::from_utf8_lossy(&reply[..n]).contains("max number of clients");
        holder = taken.then_some(conn);
        taken
    });
    assert!(held, "no connection held Redis's one client slot");
    let url = redis.url();
    let gw = launch(Setup { vars: &[("GATEWAY_REDIS_URL", url.as_str())], ..Setup::default() });
    let r = post(&gw, Some(SINGLE_KEY), &chat(json!({"mock": {"chunks": 1}})));
    assert_eq!(r.status, 500, "{}", r.text());
    let record = gw.log_record(r.header("x-request-id").unwrap());
    drop(holder);
    let detail = record["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("max number of clients"), "the reason Redis gave was lost: {detail}");
    assert!(!detail.contains("e2e-redis-password"), "{detail}");
}

/// Bytes Redis sent that nobody asked for, arriving with a reply, rule the connection out: they
/// never answer the next command (a stray `+UNSOLICITED` once became the health book's reply).
pub fn bytes_nobody_asked_for_never_answer_the_next_command(launch: Launch) {
    use edge_gateway::core::redis::ADMIT_SCRIPT;
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    // Commands a connection carried after its stray bytes.
    let after_stray: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let seen = after_stray.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let (mut buf, mut chunk, mut stray_sent) = (Vec::new(), [0u8; 65536], false);
                while let Ok(n @ 1..) = conn.read(&mut chunk) {
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some((args, used)) = resp_command(&buf) {
                        buf.drain(..used);
                        let name = String::from_utf8_lossy(&args[0]).to_uppercase();
                        if stray_sent {
                            seen.lock().unwrap().push(name.clone());
                        }
                        let admission = args.get(1).is_some_and(|a| a == ADMIT_SCRIPT.as_bytes());
                        let reply: &[u8] = match name.as_str() {
                            "EVAL" if admission => {
                                stray_sent = true;
                                b"*5\r\n:1\r\n:1\r\n:0\r\n:0\r\n:0\r\n+UNSOLICITED\r\n"
                            }
                            "HGETALL" => b"*0\r\n",
                            _ => b":1\r\n",
                        };
                        if conn.write_all(reply).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let gw = launch(Setup { vars: &[("GATEWAY_REDIS_URL", url.as_str())], ..Setup::default() });
    let r = post(&gw, Some(SINGLE_KEY), &chat(json!({"mock": {"chunks": 1}})));
    println!("status {}", r.status);
    std::thread::sleep(Duration::from_millis(500));
    let seen = after_stray.lock().unwrap().clone();
    assert!(seen.is_empty(), "a connection that carried unsolicited bytes was reused for: {seen:?}");
}

/// One command (a RESP array of bulk strings) from the front of `buf`, and the bytes it took.
fn resp_command(buf: &[u8]) -> Option<(Vec<Vec<u8>>, usize)> {
    use edge_gateway::core::redis::{parse_reply, Reply};
    let (Reply::Array(Some(items)), used) = parse_reply(buf).ok()?? else { return None };
    let args = items.into_iter().map(|item| if let Reply::Bulk(Some(arg)) = item { arg } else { Vec::new() });
    Some((args.collect(), used))
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
pub fn a_configuration_error_names_its_variable_and_is_logged_once_per_instance(
    serve: fn(&[(&str, &str)], usize) -> crate::wasi::Bare,
) {
    let backends = r#"[{"name":"b","url":"http://127.0.0.1:9","models":["m"]}]"#;
    let vars = [
        ("GATEWAY_BACKENDS", backends),
        ("GATEWAY_API_KEYS", "[]"),
        ("GATEWAY_REDIS_URL", "rediss://:s3cret@cache.example.com:6380"),
    ];
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

/// One stream read to its end: when its head came, and each piece with when it came, measured
/// from when the request was sent.
struct Timed {
    status: u16,
    request_id: String,
    head: Duration,
    pieces: Vec<(Duration, String)>,
    clean: bool,
}

impl Timed {
    fn open(gw: &Gateway, body: &Value) -> Timed {
        let sent = std::time::Instant::now();
        let mut stream = open_stream(gw, KEY, body);
        let head = sent.elapsed();
        let mut pieces = Vec::new();
        while let Some((at, piece)) = stream.next_chunk() {
            pieces.push((at - sent, String::from_utf8_lossy(&piece).into_owned()));
        }
        let request_id = stream.header("x-request-id").unwrap_or_default().to_string();
        Timed { status: stream.status, request_id, head, pieces, clean: stream.finished_cleanly() }
    }

    fn body(&self) -> String {
        self.pieces.iter().map(|(_, p)| p.as_str()).collect()
    }

    /// When each `: keep-alive` comment came before the first event.
    fn comments_before_first_event(&self) -> Vec<Duration> {
        let body = self.body();
        let first_event = body.find("data:").unwrap_or(body.len());
        let mut at = Vec::new();
        let mut seen = 0;
        for (when, piece) in &self.pieces {
            let count = piece.matches(": keep-alive").count();
            if seen + piece.len() <= first_event {
                at.extend(std::iter::repeat_n(*when, count));
            }
            seen += piece.len();
        }
        at
    }
}

/// A long prefill (7 s) behind a gateway that commits at 5 s (the default) and sends a comment
/// every second: the client has its `200` at about 5 s, then comments, then the tokens; both
/// official SDKs skip the comments; a backend that fails after the commit gives one error event;
/// a fast failure before it is still a clean 502, or a failover.
pub fn a_long_prefill_is_kept_alive_until_its_first_token(launch: Launch) {
    let flaky = crate::harness::watched_mock(&["--name", "flaky", "--model", "ha-model", "--model", "solo-model"]);
    let steady = crate::harness::watched_mock(&["--name", "steady", "--model", "ha-model"]);
    // llama-server sends a stream's head only with its first token: a backend of its own timeout.
    let late =
        crate::harness::watched_mock(&["--name", "late", "--model", "late-head-model", "--head-with-first-token"]);
    let backends = [
        format!(r#"{{"name":"flaky","url":"{}","models":["ha-model","solo-model"]}}"#, flaky.base_url),
        format!(r#"{{"name":"steady","url":"{}","models":["ha-model"],"priority":1}}"#, steady.base_url),
        format!(
            r#"{{"name":"late","url":"{}","models":["late-head-model"],"connect_timeout_ms":30000}}"#,
            late.base_url
        ),
    ];
    let backends: Vec<&str> = backends.iter().map(String::as_str).collect();
    let gw = launch(Setup {
        vars: &[
            ("GATEWAY_KEEPALIVE_MS", "1000"),
            ("GATEWAY_CONNECT_TIMEOUT_MS", "8000"),
            ("GATEWAY_FIRST_BYTE_TIMEOUT_MS", "20000"),
            ("GATEWAY_IDLE_TIMEOUT_MS", "20000"),
            ("GATEWAY_TOTAL_TIMEOUT_MS", "30000"),
        ],
        backends: &backends,
    });
    let gw = std::sync::Arc::new(gw);
    let thread = |f: Box<dyn FnOnce(&Gateway) + Send>| {
        let gw = gw.clone();
        std::thread::spawn(move || f(&gw))
    };
    let sdk = |program: &'static str, script: &'static str| {
        Box::new(move |gw: &Gateway| {
            let env = [
                ("GATEWAY_URL", format!("http://{}/v1", gw.addr)),
                ("KEY", KEY.to_string()),
                ("RATE_KEY", String::new()),
                ("MODEL", MODEL.to_string()),
            ];
            run_client(program, &[script, "keep-alive"], &env);
        }) as Box<dyn FnOnce(&Gateway) + Send>
    };
    let cases = [
        thread(Box::new(|gw| {
            let t = Timed::open(gw, &chat(json!({"stream": true, "mock": {"chunks": 3, "prefill_ms": 7_000}})));
            assert_eq!(t.status, 200);
            assert!(t.head >= Duration::from_millis(4_500), "committed at ~5 s, not before: {:?}", t.head);
            assert!(t.head < Duration::from_millis(6_800), "committed before the first token: {:?}", t.head);
            let comments = t.comments_before_first_event();
            assert!(comments.len() >= 2, "a comment at the commit, then one a second: {:?}", t.pieces);
            assert!(t.body().starts_with(": keep-alive\n\n"), "{:?}", t.pieces);
            let gaps: Vec<Duration> = comments.windows(2).map(|w| w[1] - w[0]).collect();
            assert!(gaps.iter().all(|g| *g >= Duration::from_millis(500)), "one per interval: {gaps:?}");
            let events = sse_events(t.body().as_bytes());
            let text: String = events
                .iter()
                .filter_map(|e| serde_json::from_str::<Value>(e).ok())
                .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
                .collect();
            assert_eq!(text, "tok0 tok1 tok2 ");
            assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
            assert!(t.clean);
        })),
        thread(Box::new(|gw| {
            let body =
                chat(json!({"stream": true, "mock": {"chunks": 5, "prefill_ms": 7_000, "fault": "error_event"}}));
            let t = Timed::open(gw, &body);
            assert_eq!(t.status, 200, "committed before the failure");
            assert!(!t.comments_before_first_event().is_empty(), "{:?}", t.pieces);
            let events = sse_events(t.body().as_bytes());
            let errors: Vec<&String> = events.iter().filter(|e| e.contains("\"error\"")).collect();
            assert_eq!(errors.len(), 1, "one final error event: {events:?}");
            assert_eq!(events.last(), Some(errors[0]), "and nothing after it: {events:?}");
            let error: Value = serde_json::from_str(errors[0]).unwrap();
            assert_eq!(error["error"]["code"], "upstream_error");
            assert!(!t.body().contains("10.1.2.3") && !t.body().contains("/srv/secret"), "{}", t.body());
        })),
        thread(Box::new(|gw| {
            // Fails at once, before the commit: a clean 502 alone, a failover with a second tier.
            let solo = Timed::open(
                gw,
                &json!({"model": "solo-model", "stream": true, "messages": [{"role": "user", "content": "hi"}], "mock": {"fault": "500"}}),
            );
            assert_eq!(solo.status, 502, "{:?}", solo.pieces);
            let ha = Timed::open(
                gw,
                &json!({"model": "ha-model", "stream": true, "messages": [{"role": "user", "content": "hi"}], "mock": {"status": 503, "fault_on": "flaky", "chunks": 2}}),
            );
            assert_eq!(ha.status, 200, "{:?}", ha.pieces);
            assert!(ha.comments_before_first_event().is_empty(), "{:?}", ha.pieces);
            assert!(ha.body().contains("tok1"), "the second tier answered: {}", ha.body());
        })),
        thread(Box::new(|gw| {
            // The first tier never answers; the second prefills for 7 s: committed at 5 s, failed
            // over behind the comments at the connect timeout (8 s), kept alive until the second
            // tier's first token (~15 s).
            let body = json!({"model": "ha-model", "stream": true, "messages": [{"role": "user", "content": "hi"}],
                "mock": {"fault": "hang", "fault_on": "flaky", "prefill_ms": 7_000, "chunks": 2}});
            let t = Timed::open(gw, &body);
            assert_eq!(t.status, 200);
            assert!(t.comments_before_first_event().len() >= 6, "comments all along: {:?}", t.pieces);
            assert!(t.body().contains("tok1") && t.body().ends_with("data: [DONE]\n\n"), "{}", t.body());
            let id = t.request_id.clone();
            let record = gw.log_record(&id);
            assert_eq!((record["backend"].as_str(), record["attempts"].as_u64()), (Some("steady"), Some(2)));
        })),
        thread(Box::new(|gw| {
            // A 9 s prefill on a server that sends its head with the first token: past the
            // gateway's connect timeout (8 s here), within the backend's own (30 s); kept alive.
            let body = json!({"model": "late-head-model", "stream": true, "messages": [{"role": "user", "content": "hi"}],
                "mock": {"prefill_ms": 9_000, "chunks": 2}});
            let t = Timed::open(gw, &body);
            assert_eq!(t.status, 200);
            assert!(t.comments_before_first_event().len() >= 3, "{:?}", t.pieces);
            assert!(t.body().contains("tok1") && t.body().ends_with("data: [DONE]\n\n"), "{}", t.body());
        })),
        thread(sdk(".venv-sdk/bin/python", "tests/sdk/python_sdk.py")),
        thread(sdk("node", "tests/sdk/node_sdk.mjs")),
    ];
    for case in cases {
        case.join().unwrap();
    }
}

/// A valid incoming `traceparent` is joined: the backend and the log see its trace id with the
/// gateway's own span, and the client gets the same trace back; malformed ones are replaced.
pub fn a_callers_trace_reaches_the_backend_and_the_log(gw: &Gateway) {
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let incoming = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let auth = format!("Bearer {KEY}");
    let body = serde_json::to_vec(&chat(json!({"mock": {"chunks": 1}}))).unwrap();
    let send = |traceparent: &str| {
        let headers = [
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
            ("traceparent", traceparent),
            ("tracestate", "vendor=opaque"),
        ];
        let r = request(&gw.addr, "POST", "/v1/chat/completions", &headers, Some(&body));
        assert_eq!(r.status, 200, "{}", r.text());
        let record = gw.log_record(r.header("x-request-id").unwrap());
        let seen = backend_saw(gw, &gw.primary, &r);
        let to_backend = seen["headers"]["traceparent"].as_str().unwrap().to_string();
        (r.header("traceparent").unwrap().to_string(), to_backend, record, seen)
    };
    let (returned, to_backend, record, seen) = send(&incoming);
    let parts: Vec<&str> = to_backend.split('-').collect();
    assert_eq!(parts[1], trace_id, "the backend joins the caller's trace");
    assert_ne!(parts[2], "00f067aa0ba902b7", "as a child: the gateway's own span");
    assert_eq!((record["trace_id"].as_str(), record["span_id"].as_str()), (Some(trace_id), Some(parts[2])));
    assert_eq!(returned, to_backend, "the client learns the trace and the gateway's span");
    assert_eq!(seen["headers"]["tracestate"], "vendor=opaque");
    for malformed in [
        format!("01-{trace_id}-00f067aa0ba902b7-01"),
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_string(),
        format!("00-{trace_id}-0000000000000000-01"),
        format!("00-{}-00f067aa0ba902b7-01", trace_id.to_uppercase()),
        format!("00-{trace_id}x-00f067aa0ba902b7-01"),
        format!("00-{}-00f067aa0ba902b7-01", &trace_id[..30]),
    ] {
        let (returned, to_backend, record, _) = send(&malformed);
        let parsed = edge_gateway::core::trace::parse_traceparent(&to_backend);
        assert!(parsed.is_some(), "{malformed}: a valid trace goes on: {to_backend}");
        assert!(!to_backend.contains(&trace_id[..30]), "{malformed}: replaced, not passed: {to_backend}");
        assert_eq!(returned, to_backend, "{malformed}");
        assert_eq!(record["trace_id"].as_str(), to_backend.split('-').nth(1), "{malformed}");
    }
}

pub fn embeddings_are_validated_proxied_and_limited(gw: &Gateway) {
    let embed = |extra: Value| {
        let body = with(json!({"model": MODEL, "input": ["alpha", "beta"]}), extra);
        let r = post_to(gw, "/v1/embeddings", Some(KEY), &serde_json::to_vec(&body).unwrap());
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    };
    let list = embed(json!({}));
    assert_eq!(list["object"], "list");
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[0]["embedding"].as_array().unwrap().len(), 8);
    assert!(list["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(embed(json!({}))["data"], list["data"], "the same input, the same vectors");
    assert!(embed(json!({"encoding_format": "base64"}))["data"][0]["embedding"].is_string());
    assert_eq!(embed(json!({"dimensions": 4}))["data"][0]["embedding"].as_array().unwrap().len(), 4);
    assert_eq!(embed(json!({"input": [[1, 2, 3], [4]]}))["data"].as_array().unwrap().len(), 2);
    let too_many: Vec<String> = (0..=MAX_EMBEDDING_INPUTS).map(|i| format!("item {i}")).collect();
    let body = |extra: Value| with(json!({"model": MODEL, "input": "x"}), extra);
    assert_refused(
        gw,
        "/v1/embeddings",
        &[
            ("no input", json!({"model": MODEL}), "input"),
            ("empty input", body(json!({"input": ""})), "input"),
            ("an empty item", body(json!({"input": ["a", ""]})), "input[1]"),
            ("too many items", body(json!({"input": too_many})), "input"),
            ("over the content cap", body(json!({"input": "x".repeat(MAX_CONTENT_BYTES + 1)})), "input"),
            ("unknown encoding", body(json!({"encoding_format": "bytes"})), "encoding_format"),
            ("dimensions zero", body(json!({"dimensions": 0})), "dimensions"),
            ("streamed", body(json!({"stream": true})), "stream"),
        ],
    );
    assert_limited(gw, "/v1/embeddings", EMBED_KEY, &body(json!({})));
}

pub fn legacy_completions_are_validated_proxied_streamed_and_limited(gw: &Gateway) {
    let complete = |extra: Value| {
        let body = with(json!({"model": MODEL, "prompt": "Once upon a time", "mock": {"chunks": 20}}), extra);
        post_to(gw, "/v1/completions", Some(KEY), &serde_json::to_vec(&body).unwrap())
    };
    let r = complete(json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["object"], "text_completion");
    assert_eq!(r.json()["usage"]["completion_tokens"], 16, "OpenAI's default length, sent explicitly");
    assert_eq!(backend_saw(gw, &gw.primary, &r)["body"]["max_tokens"], 16);

    let r = complete(json!({"stream": true, "max_tokens": 3}));
    assert_eq!((r.status, r.header("content-type")), (200, Some("text/event-stream")));
    let events = sse_events(&r.body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let text: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|e| e["choices"][0]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, "tok0 tok1 tok2 ");
    assert!(!r.text().contains("\"usage\":{"), "the usage chunk is dropped unless asked for");
    let r = complete(json!({"stream": true, "max_tokens": 3, "stream_options": {"include_usage": true}}));
    assert!(r.text().contains("\"completion_tokens\":3"), "{}", r.text());
    // How evaluation harnesses score a prompt: echoed, with logprobs, one token generated.
    let r = complete(json!({"echo": true, "max_tokens": 1, "logprobs": 1}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["choices"][0]["text"].as_str().unwrap().starts_with("Once upon a time"));

    let body = |extra: Value| with(json!({"model": MODEL, "prompt": "x"}), extra);
    assert_refused(
        gw,
        "/v1/completions",
        &[
            ("no prompt", json!({"model": MODEL}), "prompt"),
            ("mixed prompts", body(json!({"prompt": ["a", 1]})), "prompt[1]"),
            ("negative token id", body(json!({"prompt": [1, -1]})), "prompt"),
            ("too many logprobs", body(json!({"logprobs": 21})), "logprobs"),
            ("max_tokens zero", body(json!({"max_tokens": 0, "echo": true})), "max_tokens"),
            ("best_of below n", body(json!({"n": 2, "best_of": 1})), "best_of"),
            ("over the content cap", body(json!({"prompt": "x".repeat(MAX_CONTENT_BYTES + 1)})), "prompt"),
            ("prompt_embeds", body(json!({"prompt_embeds": "AAAA"})), "prompt_embeds"),
        ],
    );
    assert_limited(gw, "/v1/completions", COMPLETE_KEY, &body(json!({"max_tokens": 2})));
}

pub fn the_responses_api_is_validated_proxied_streamed_and_limited(gw: &Gateway) {
    let respond = |key: &str, body: Value| post_to(gw, "/v1/responses", Some(key), &serde_json::to_vec(&body).unwrap());
    let r = respond(KEY, json!({"model": MODEL, "input": "Say hello", "mock": {"chunks": 2}}));
    assert_eq!(r.status, 200, "{}", r.text());
    let response = r.json();
    assert_eq!((response["object"].as_str(), response["status"].as_str()), (Some("response"), Some("completed")));
    assert_eq!(response["output"][0]["content"][0]["text"], "tok0 tok1 ");
    assert_eq!(response["usage"]["output_tokens"], 2);

    let r = respond(KEY, json!({"model": MODEL, "input": "Say hello", "stream": true, "mock": {"chunks": 3}}));
    assert_eq!((r.status, r.header("content-type")), (200, Some("text/event-stream")));
    let events: Vec<Value> = sse_events(&r.body).iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(events[0]["type"], "response.created");
    assert_eq!(events.last().unwrap()["type"], "response.completed", "no [DONE]: the Responses stream ends so");
    let text: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, "tok0 tok1 tok2 ");
    assert!(r.text().contains("event: response.output_text.delta\n"), "event lines relayed as they came");

    // A failure after the first delta: the Responses API's own error event, cleaned.
    let r = respond(
        KEY,
        json!({"model": MODEL, "input": "x", "stream": true, "mock": {"chunks": 5, "fault": "error_event"}}),
    );
    assert_eq!(r.status, 200);
    let last: Value = serde_json::from_str(sse_events(&r.body).last().unwrap()).unwrap();
    assert_eq!((last["type"].as_str(), last["code"].as_str()), (Some("error"), Some("upstream_error")), "{last}");
    assert!(last["sequence_number"].is_u64() && last.get("param").is_some(), "{last}");
    assert!(r.text().contains("event: error\n") && !r.text().contains("/srv/secret"), "{}", r.text());

    // State on the one backend that serves MODEL: continue, fetch, delete.
    let first = respond(STATE_KEY, json!({"model": MODEL, "input": "Remember 7", "store": true})).json();
    let id = first["id"].as_str().unwrap().to_string();
    let r = respond(STATE_KEY, json!({"model": MODEL, "input": "What was it?", "previous_response_id": id}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["usage"]["input_tokens"].as_u64() > first["usage"]["input_tokens"].as_u64());
    let auth = format!("Bearer {STATE_KEY}");
    let path = format!("/v1/responses/{id}");
    let r = request(&gw.addr, "GET", &path, &[("authorization", &auth)], None);
    assert_eq!((r.status, r.json()["id"].as_str()), (200, Some(id.as_str())), "{}", r.text());
    let r = request(&gw.addr, "DELETE", &path, &[("authorization", &auth)], None);
    assert_eq!((r.status, r.json()["deleted"].as_bool()), (200, Some(true)), "{}", r.text());
    let r = request(&gw.addr, "GET", &path, &[("authorization", &auth)], None);
    assert_eq!(r.status, 404, "{}", r.text());
    let all = format!("Bearer {KEY}");
    let r = request(&gw.addr, "GET", &path, &[("authorization", &all)], None);
    assert_eq!(r.status, 400, "a key whose models span several backends cannot say which holds it");
    error_of(&r);

    let body = |extra: Value| with(json!({"model": MODEL, "input": "x"}), extra);
    assert_refused(
        gw,
        "/v1/responses",
        &[
            ("no input", json!({"model": MODEL}), "input"),
            ("a bad role", body(json!({"input": [{"role": "wizard", "content": "x"}]})), "input[0].role"),
            (
                "a remote image",
                body(
                    json!({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://169.254.169.254/x"}]}]}),
                ),
                "input[0].content[0].image_url",
            ),
            ("max_output_tokens zero", body(json!({"max_output_tokens": 0})), "max_output_tokens"),
            ("over the content cap", body(json!({"instructions": "x".repeat(MAX_CONTENT_BYTES + 1)})), "instructions"),
        ],
    );
    assert_limited(gw, "/v1/responses", RESPOND_KEY, &body(json!({"mock": {"chunks": 1}})));
}

pub fn a_model_is_retrieved_only_by_keys_that_may_list_it(gw: &Gateway) {
    let get = |path: &str, key: Option<&str>| {
        let auth = key.map(|k| format!("Bearer {k}"));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        request(&gw.addr, "GET", path, &headers, None)
    };
    let r = get(&format!("/v1/models/{MODEL}"), Some(KEY));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!((r.json()["id"].as_str(), r.json()["object"].as_str()), (Some(MODEL), Some("model")));
    for (path, key) in [(format!("/v1/models/{MODEL}"), NARROW_KEY), ("/v1/models/gpt-9".to_string(), KEY)] {
        let r = get(&path, Some(key));
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(error_of(&r)["code"], "model_not_found", "{path}: as if it did not exist");
    }
    assert_eq!(get(&format!("/v1/models/{MODEL}"), None).status, 401);
    let r = request(&gw.addr, "POST", &format!("/v1/models/{MODEL}"), &[], Some(b"{}"));
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, OPTIONS")));
}

/// Workers only: with the `GATEWAY_METRICS` Analytics Engine binding (here a wrapped binding that
/// logs what it is given), every request writes one data point, made from the same record as its
/// log line: a completion, a stream, a 429, an unknown path and a failed stream.
pub fn each_request_writes_one_analytics_engine_point_equal_to_its_log_record(launch: Launch) {
    let gw = launch(Setup { vars: &[("GATEWAY_METRICS", "capture")], ..Setup::default() });
    assert_eq!(post(&gw, Some(KEY), &chat(json!({"mock": {"chunks": 3}}))).status, 200);
    let stream = chat(json!({"stream": true, "mock": {"chunks": 4, "delay_ms": 50, "prefill_ms": 200}}));
    assert_eq!(post(&gw, Some(KEY), &stream).status, 200);
    for _ in 0..LIMITED_RPM {
        post(&gw, Some(LIMITED_KEY), &chat(json!({"mock": {"chunks": 1}})));
    }
    assert_eq!(post(&gw, Some(LIMITED_KEY), &chat(json!({}))).status, 429);
    assert_eq!(request(&gw.addr, "GET", "/v1/nothing", &[], None).status, 404);
    let failing = chat(json!({"stream": true, "mock": {"chunks": 5, "fault": "error_event"}}));
    assert_eq!(post(&gw, Some(KEY), &failing).status, 200);

    let expected = 2 + LIMITED_RPM as usize + 3;
    let mut points = Vec::new();
    let mut records = Vec::new();
    wait_until(Duration::from_secs(10), || {
        (points, records) = gw.metrics_points_and_records();
        // The launcher's own `/healthz` calls are requests too: set them aside.
        points.retain(|p| p["blobs"][6] != "healthz");
        records.retain(|r| r["route"] != "healthz");
        points.len() >= expected && records.len() >= expected
    });
    assert_eq!((points.len(), records.len()), (expected, expected), "one point per request:\n{points:#?}");
    for (point, record) in points.iter().zip(&records) {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let number = |v: &Value| v.as_f64().unwrap_or_default();
        let status_class = format!("{}xx", record["status"].as_u64().unwrap() / 100);
        let id = &record["request_id"];
        assert_eq!(point["indexes"], json!([text(&record["key_id"])]), "{id}");
        let blobs = [
            text(&record["model"]),
            text(&record["backend"]),
            status_class,
            text(&record["error"]),
            text(&record["stream_end"]),
            text(&record["key_id"]),
            text(&record["route"]),
        ];
        assert_eq!(point["blobs"], json!(blobs), "the point and the log line of {id}");
        let doubles = [
            number(&record["latency_ms"]),
            number(&record["ttft_ms"]),
            number(&record["usage"]["prompt_tokens"]),
            number(&record["usage"]["completion_tokens"]),
            number(&record["attempts"]),
            number(&record["tpot_ms"]),
        ];
        let written: Vec<f64> = point["doubles"].as_array().unwrap().iter().map(number).collect();
        assert_eq!(written, doubles, "the point and the log line of {id}");
    }
    let stream_point = &points[1];
    assert!(stream_point["doubles"][1].as_f64().unwrap() >= 200.0, "time to first token after the prefill");
    assert_eq!(points[LIMITED_RPM as usize + 2]["blobs"][2], "4xx");
    assert_eq!(points[expected - 1]["blobs"][4], "upstream_error");
}
