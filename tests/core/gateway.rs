//! The whole pipeline in-process against fakes: routing, auth, errors, proxying, streaming, limits.

use crate::support::*;
use edge_gateway::core::config::ConfigError;
use edge_gateway::core::http::{BodyError, Request};
use edge_gateway::core::rate_limit::gcra::{Admission, Admitted, Settlement};
use edge_gateway::core::rate_limit::store::{LimitStore, StoreError};
use edge_gateway::core::request_id::is_uuid;
use serde_json::json;

const CHAT: &str = r#"{"model":"llama","messages":[{"role":"user","content":"hi"}]}"#;
const STREAM: &str = r#"{"model":"llama","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
const COMPLETION: &str = r#"{"id":"c1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hey"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;
const ROLE: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}],\"usage\":null}\n\n";
const TOKEN: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hey\"}}],\"usage\":null}\n\n";
const USAGE: &str =
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n";
const DONE: &str = "data: [DONE]\n\n";

fn handle(request: Request) -> (u16, edge_gateway::core::http::Headers, String) {
    let (gw, _, _) = gateway();
    let config = config();
    text(run(gw.handle(Ok(&config), request)))
}

#[test]
fn healthz_answers_without_auth_or_backend() {
    let (status, headers, body) = handle(get("/healthz", None));
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["status"], "ok");
    assert!(is_uuid(headers.get("x-request-id").unwrap()), "generated ids are UUIDs");
}

#[test]
fn unknown_path_is_404_and_wrong_method_is_405_in_openai_shape() {
    let (status, _, body) = handle(get("/v1/nope", Some(KEY)));
    assert_eq!(status, 404);
    assert_eq!(error_of(&body)["type"], "invalid_request_error");
    let (status, headers, body) = handle(get("/v1/chat/completions", Some(KEY)));
    assert_eq!(status, 405);
    assert_eq!(error_of(&body)["type"], "invalid_request_error");
    assert_eq!(headers.get("allow"), Some("POST, OPTIONS"));
}

#[test]
fn rejects_missing_malformed_and_unknown_keys_with_401() {
    let requests = [
        get("/v1/models", None),
        get("/v1/models", Some("sk-wrong")),
        Request::new("GET", "/v1/models", headers(&[("authorization", "Basic abc")]), vec![]),
        Request::new("GET", "/v1/models", headers(&[("authorization", "Bearer ")]), vec![]),
    ];
    for request in requests {
        let (status, _, body) = handle(request);
        assert_eq!(status, 401);
        let e = error_of(&body);
        assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("invalid_request_error"), Some("invalid_api_key")));
    }
}

#[test]
fn accepts_api_key_header_and_lowercase_bearer() {
    for h in [("api-key", KEY.to_string()), ("authorization", format!("bearer {KEY}"))] {
        let (status, _, _) = handle(Request::new("GET", "/v1/models", headers(&[(h.0, &h.1)]), vec![]));
        assert_eq!(status, 200);
    }
}

#[test]
fn lists_only_the_models_a_key_may_use() {
    let ids = |body: String| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["object"], "list");
        v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(ids(handle(get("/v1/models", Some(KEY))).2), ["llama", "qwen"]);
    assert_eq!(ids(handle(get("/v1/models", Some(OTHER_KEY))).2), ["qwen"]);
}

#[test]
fn refuses_a_model_the_key_may_not_use_with_404_model_not_found() {
    let (status, _, body) = handle(post_chat(OTHER_KEY, CHAT));
    assert_eq!(status, 404);
    let e = error_of(&body);
    assert_eq!((e["code"].as_str(), e["param"].as_str()), (Some("model_not_found"), Some("model")));
    let (status, _, _) = handle(post_chat(KEY, &CHAT.replace("llama", "gpt-9")));
    assert_eq!(status, 404, "a model no backend serves");
}

#[test]
fn bad_input_never_reaches_the_backend() {
    let (gw, upstream, _) = gateway();
    let config = config();
    let (status, _, body) = text(run(gw.handle(Ok(&config), post_chat(KEY, r#"{"model":"llama","messages":[]}"#))));
    assert_eq!(status, 400);
    assert_eq!(error_of(&body)["param"], "messages");
    assert!(upstream.sent.borrow().is_empty());
}

#[test]
fn refuses_a_body_over_the_cap_with_413_without_reading_the_rest() {
    let (gw, _, _) = gateway();
    let mut vars = vars();
    vars.insert("GATEWAY_MAX_BODY_BYTES".into(), "1000".into());
    let config = edge_gateway::core::Config::from_lookup(&vars as &dyn edge_gateway::core::Lookup).unwrap();
    let pulled = std::rc::Rc::new(std::cell::Cell::new(0));
    let counter = pulled.clone();
    let chunks = futures::stream::iter(0..1_000).map(move |_| {
        counter.set(counter.get() + 1);
        Ok::<_, BodyError>(vec![b' '; 600])
    });
    let mut request = post_chat(KEY, "");
    request.body = Box::pin(chunks);
    let (status, _, body) = text(run(gw.handle(Ok(&config), request)));
    assert_eq!(status, 413);
    assert_eq!(error_of(&body)["code"], "request_too_large");
    assert_eq!(pulled.get(), 2, "stopped at the chunk that passed the cap");
}
use futures::StreamExt;

#[test]
fn proxies_non_stream_with_backend_credential_and_an_allow_list_of_headers() {
    let (gw, upstream, runtime) = gateway();
    let config = config();
    upstream.push(Script::json(200, COMPLETION));
    let mut request = post_chat(KEY, CHAT);
    let hostile = [
        ("cookie", "session=1"),
        ("connection", "keep-alive, x-hop"),
        ("x-hop", "1"),
        ("cf-connecting-ip", "1.2.3.4"),
        ("x-custom", "dropped"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-host", "evil"),
        ("x-envoy-original-path", "/admin"),
        ("spin-full-url", "http://x"),
        ("proxy-authorization", "Basic eA=="),
        ("content-encoding", "gzip"),
        ("expect", "100-continue"),
        ("http2-settings", "AAA"),
        ("digest", "sha-256=x"),
        ("transfer-encoding", "chunked"),
        ("te", "trailers"),
        ("forwarded", "for=1.1.1.1"),
    ];
    for (n, v) in hostile {
        request.headers.append(n, v);
    }
    let (status, headers, body) = text(run(gw.handle(Ok(&config), request)));
    assert_eq!(status, 200);
    assert_eq!(body, COMPLETION, "the backend's bytes, unchanged");
    assert_eq!(headers.get("x-ratelimit-limit-requests"), Some("3"));
    assert_eq!(headers.get("x-ratelimit-remaining-requests"), Some("2"));
    assert_eq!(headers.get("x-ratelimit-reset-requests"), Some("20s"));

    let sent = upstream.sent.borrow();
    let sent = &sent[0];
    assert_eq!(sent.url, "http://10.0.0.1:8000/v1/chat/completions");
    let mut names: Vec<&str> = sent.headers.iter().map(|(n, _)| n).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["accept", "authorization", "content-type", "traceparent", "x-request-id"],
        "only the allow-list"
    );
    assert_eq!(sent.headers.get("authorization"), Some("Bearer backend-secret-a"));
    assert!(!sent.headers.iter().any(|(_, v)| v.contains(KEY)), "the client's key never leaves");

    let logs = runtime.logs.borrow();
    let line: serde_json::Value = serde_json::from_str(logs.last().unwrap()).unwrap();
    assert_eq!(line["key_id"], "alpha");
    assert_eq!(line["backend"], "gpu-a");
    assert_eq!(line["usage"]["total_tokens"], 4);
    assert_eq!(line["status"], 200);
    assert!(!logs.last().unwrap().contains(KEY));
}

#[test]
fn replaces_an_insane_request_id() {
    let mut request = get("/healthz", None);
    request.headers.set("x-request-id", "bad id\u{7f}with spaces");
    let (_, headers, _) = handle(request);
    assert!(is_uuid(headers.get("x-request-id").unwrap()));
}

#[test]
fn backends_only_ever_get_a_uuid_request_id_the_gateway_made() {
    // llama-cpp-python answers an empty 400 to any x-request-id that is not a UUID, and vLLM
    // uses the id as its engine request id (equal ids collide): a caller's id never goes on.
    let client_uuid = "0b7c4f52-7a1e-4c1a-9d5e-3f3c2b1a0e9d";
    for sent_by_client in [None, Some("client-id-1"), Some(client_uuid)] {
        let (gw, upstream, runtime) = gateway();
        upstream.push(Script::json(200, COMPLETION));
        let mut request = post_chat(KEY, CHAT);
        if let Some(id) = sent_by_client {
            request.headers.set("x-request-id", id);
        }
        let (status, headers, _) = text(run(gw.handle(Ok(&config()), request)));
        assert_eq!(status, 200);
        let to_client = headers.get("x-request-id").unwrap().to_string();
        if let Some(id) = sent_by_client {
            assert_eq!(to_client, id, "the client's sane id is returned");
        }
        let to_backend = upstream.last_headers().get("x-request-id").unwrap().to_string();
        assert!(is_uuid(&to_backend), "{to_backend}");
        assert_eq!(to_backend == to_client, sent_by_client.is_none(), "{sent_by_client:?}");
        let line = runtime.records().pop().unwrap();
        assert_eq!(line["request_id"], to_client.as_str());
        if sent_by_client.is_some() {
            assert_eq!(line["upstream_request_id"], to_backend.as_str(), "both ids are logged");
        }
    }
}

#[test]
fn joins_a_valid_trace_and_replaces_a_malformed_one() {
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let valid = format!("00-{trace}-b7ad6b7169203331-01");
    let (gw, upstream, runtime) = gateway();
    upstream.push(Script::json(200, COMPLETION));
    let mut request = post_chat(KEY, CHAT);
    request.headers.set("traceparent", &valid);
    request.headers.set("tracestate", "vendor=opaque");
    let (_, headers, _) = text(run(gw.handle(Ok(&config()), request)));
    let to_backend = upstream.last_headers().get("traceparent").unwrap().to_string();
    let parts: Vec<&str> = to_backend.split('-').collect();
    assert_eq!((parts[0], parts[1], parts[3]), ("00", trace, "01"), "same trace, same flags");
    assert_ne!(parts[2], "b7ad6b7169203331", "the gateway's own span is the backend's parent");
    assert_eq!(upstream.last_headers().get("tracestate"), Some("vendor=opaque"));
    assert_eq!(headers.get("traceparent"), Some(to_backend.as_str()), "the client learns the trace");
    let line = runtime.records().pop().unwrap();
    assert_eq!((line["trace_id"].as_str(), line["span_id"].as_str()), (Some(trace), Some(parts[2])));

    for malformed in [
        format!("01-{trace}-b7ad6b7169203331-01"), // unknown version
        "00-00000000000000000000000000000000-b7ad6b7169203331-01".into(), // all-zero trace id
        format!("00-{trace}-0000000000000000-01"), // all-zero span id
        format!("00-{}-b7ad6b7169203331-01", trace.to_uppercase()), // not lowercase hex
        format!("00-{trace}-b7ad6b716920333-01"),  // wrong length
        format!("00-{trace}-b7ad6b7169203331-01-extra"), // extra part
        "00-xyz-b7ad6b7169203331-01".into(),       // bad hex
    ] {
        let (gw, upstream, _) = gateway();
        upstream.push(Script::json(200, COMPLETION));
        let mut request = post_chat(KEY, CHAT);
        request.headers.set("traceparent", &malformed);
        request.headers.set("tracestate", "vendor=opaque");
        text(run(gw.handle(Ok(&config()), request)));
        let to_backend = upstream.last_headers().get("traceparent").unwrap().to_string();
        assert!(!to_backend.contains(trace) && !to_backend.contains("b7ad6b7169203331"), "{malformed} -> {to_backend}");
        assert!(edge_gateway::core::trace::parse_traceparent(&to_backend).is_some(), "a new, valid trace");
        assert_eq!(upstream.last_headers().get("tracestate"), None, "{malformed}: its state is dropped with it");
    }
}

#[test]
fn accepts_exactly_one_readable_credential() {
    let (gw, upstream, _) = gateway();
    let config = config_with("GATEWAY_ANONYMOUS", r#"{"models":["llama"],"requests_per_minute":100}"#);
    let bearer = format!("Bearer {KEY}");
    let refused: Vec<Vec<(&str, &str)>> = vec![
        vec![("authorization", &bearer), ("authorization", &bearer)],
        vec![("authorization", &bearer), ("api-key", KEY)],
        vec![("api-key", KEY), ("x-api-key", KEY)],
        vec![("authorization", "Bearer café")],
        vec![("authorization", "Bearer sk-test-alpha, Bearer sk-test-alpha")],
        vec![("authorization", "Bearer ")],
        vec![("authorization", "Basic c2stdGVzdA==")],
        vec![("api-key", "key with spaces")],
    ];
    for pairs in refused {
        let mut request = Request::new("POST", "/v1/chat/completions", headers(&pairs), CHAT.as_bytes().to_vec());
        request.client_ip = Some("203.0.113.9".into());
        let (status, _, body) = text(run(gw.handle(Ok(&config), request)));
        assert_eq!(status, 401, "{pairs:?} is never anonymous: {body}");
        assert_eq!(error_of(&body)["code"], "invalid_api_key");
    }
    for (name, value) in [("authorization", bearer.as_str()), ("api-key", KEY), ("x-api-key", KEY)] {
        upstream.push(Script::json(200, COMPLETION));
        let request = Request::new("POST", "/v1/chat/completions", headers(&[(name, value)]), CHAT.as_bytes().to_vec());
        let (status, _, _) = text(run(gw.handle(Ok(&config), request)));
        assert_eq!(status, 200, "{name}");
        let sent = upstream.last_headers();
        assert_eq!(sent.get("authorization"), Some("Bearer backend-secret-a"), "{name}");
        assert!(sent.get("api-key").is_none() && sent.get("x-api-key").is_none(), "{name} is stripped");
    }
}

#[test]
fn streams_backend_events_and_drops_usage_chunk_client_did_not_ask_for() {
    let (gw, upstream, runtime) = gateway();
    let config = config();
    upstream.push(Script::sse(&[ROLE, &TOKEN[..20], &TOKEN[20..], USAGE, DONE]));
    let (status, headers, body) = text(run(gw.handle(Ok(&config), post_chat(KEY, STREAM))));
    assert_eq!(status, 200);
    assert_eq!(headers.get("content-type"), Some("text/event-stream"));
    assert_eq!(headers.get("cache-control"), Some("no-cache"));
    assert_eq!(headers.get("x-accel-buffering"), Some("no"));
    assert_eq!(body, format!("{ROLE}{TOKEN}{DONE}"));
    assert_eq!(upstream.last_body()["stream_options"]["include_usage"], true);
    let logs = runtime.logs.borrow();
    let line: serde_json::Value = serde_json::from_str(logs.last().unwrap()).unwrap();
    assert_eq!(line["stream_end"], "done");
    assert_eq!(line["usage"]["completion_tokens"], 1);
    assert_eq!(line["ttfb_ms"], 0, "time to first byte is logged for streams too");
    assert_eq!(line["key_id"], "alpha");
}

#[test]
fn keeps_usage_chunk_when_client_asked_for_it() {
    let (gw, upstream, _) = gateway();
    let config = config();
    upstream.push(Script::sse(&[ROLE, TOKEN, USAGE, DONE]));
    let body = STREAM.replace("\"stream\":true", "\"stream\":true,\"stream_options\":{\"include_usage\":true}");
    let (_, _, body) = text(run(gw.handle(Ok(&config), post_chat(KEY, &body))));
    assert_eq!(body, format!("{ROLE}{TOKEN}{USAGE}{DONE}"));
}

#[test]
fn a_failure_after_the_first_byte_ends_the_stream_with_one_error_event() {
    let (gw, upstream, runtime) = gateway();
    let config = config();
    upstream.push(Script::Answer {
        status: 200,
        headers: vec![("content-type", "text/event-stream")],
        after_ms: 0,
        chunks: vec![(0, Ok(ROLE.into())), (0, Ok(TOKEN.into())), (0, Err(BodyError("reset".into())))],
    });
    let (status, _, body) = text(run(gw.handle(Ok(&config), post_chat(KEY, STREAM))));
    assert_eq!(status, 200);
    let (before, last) = body.rsplit_once("data: ").unwrap();
    assert_eq!(before, format!("{ROLE}{TOKEN}"));
    assert!(last.ends_with("\n\n"));
    let e = error_of(last.trim());
    assert_eq!(e["code"], "upstream_error");
    assert!(!body.contains("reset"), "no backend internals");
    let line: serde_json::Value = serde_json::from_str(runtime.logs.borrow().last().unwrap()).unwrap();
    assert_eq!(line["stream_end"], "upstream_error");
}

#[test]
fn a_malformed_event_ends_the_stream_with_an_error_event() {
    let (gw, upstream, _) = gateway();
    let config = config();
    upstream.push(Script::sse(&[ROLE, "data: {not json\n\n", DONE]));
    let (_, _, body) = text(run(gw.handle(Ok(&config), post_chat(KEY, STREAM))));
    let (before, last) = body.rsplit_once("data: ").unwrap();
    assert_eq!(before, ROLE);
    assert!(error_of(last.trim())["message"].as_str().unwrap().contains("malformed"));
}

#[test]
fn a_stream_that_stops_without_done_ends_with_an_error_event() {
    let (gw, upstream, _) = gateway();
    let config = config();
    upstream.push(Script::sse(&[ROLE, TOKEN]));
    let (_, _, body) = text(run(gw.handle(Ok(&config), post_chat(KEY, STREAM))));
    assert!(body.starts_with(&format!("{ROLE}{TOKEN}data: {{\"error\"")), "{body}");
}

#[test]
fn maps_backend_failures_before_the_first_byte_to_openai_errors() {
    let vllm_400 = r#"{"object":"error","message":"This model's maximum context length is 4096 tokens.","type":"BadRequestError","param":null,"code":400}"#;
    let vllm_500 = r#"{"error":{"message":"CUDA OOM at /srv/models/llama","type":"InternalServerError","code":500}}"#;
    let cases: Vec<(Script, u16, &str, bool)> = vec![
        (Script::Refuse, 502, "upstream_error", true),
        (Script::json(500, vllm_500), 502, "upstream_error", true),
        (
            Script::Answer {
                status: 503,
                headers: vec![("content-type", "text/plain")],
                after_ms: 0,
                chunks: vec![(0, Ok(b"upstream exploded".to_vec()))],
            },
            502,
            "upstream_error",
            true,
        ),
        (Script::json(400, vllm_400), 400, "upstream_error", false),
        (Script::json(429, r#"{"error":"busy"}"#), 429, "rate_limit_exceeded", true),
        (Script::json(200, "\u{0}not json"), 502, "upstream_error", true),
        (Script::json(401, r#"{"error":"Unauthorized"}"#), 502, "upstream_error", true),
    ];
    for (script, status, code, generic) in cases {
        let (gw, upstream, _) = gateway();
        let config = config();
        upstream.push(script);
        let (got, _, body) = text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT))));
        assert_eq!(got, status, "{body}");
        let e = error_of(&body);
        assert_eq!(e["code"], code, "{body}");
        assert!(!body.contains("/srv") && !body.contains("10.0.0.1") && !body.contains("exploded"), "{body}");
        if !generic {
            assert!(e["message"].as_str().unwrap().contains("maximum context length"));
        }
    }
}

#[test]
fn a_backend_that_does_not_answer_in_time_is_504_or_before_the_commit_an_error_event() {
    let (gw, upstream, runtime) = gateway();
    let late_commit = config_with("GATEWAY_STREAM_COMMIT_MS", "60000");
    upstream.push(Script::Hang);
    let (status, _, body) = text(run(gw.handle(Ok(&late_commit), post_chat(KEY, STREAM))));
    assert_eq!(runtime.now() - T0, 10_000, "the default connect timeout");
    assert_eq!(status, 504);
    assert_eq!(error_of(&body)["code"], "upstream_timeout");
    // By default the stream is committed at 5 s: the same timeout is its one error event.
    let (gw, upstream, _) = gateway();
    upstream.push(Script::Hang);
    let (status, _, body) = text(run(gw.handle(Ok(&config()), post_chat(KEY, STREAM))));
    assert_eq!(status, 200);
    assert!(body.starts_with(": keep-alive"), "{body}");
    assert_eq!(error_of(body.trim_end().rsplit("data: ").next().unwrap())["code"], "upstream_timeout");
}

#[test]
fn a_stream_request_answered_with_json_is_a_502() {
    let (gw, upstream, _) = gateway();
    let config = config();
    upstream.push(Script::json(200, COMPLETION));
    let (status, _, _) = text(run(gw.handle(Ok(&config), post_chat(KEY, STREAM))));
    assert_eq!(status, 502);
}

#[test]
fn refuses_over_the_request_limit_with_429_and_retry_headers() {
    let (gw, upstream, _) = gateway();
    let config = config();
    for _ in 0..3 {
        upstream.push(Script::json(200, COMPLETION));
        assert_eq!(text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT)))).0, 200);
    }
    let (status, headers, body) = text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT))));
    assert_eq!(status, 429);
    let e = error_of(&body);
    assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("requests"), Some("rate_limit_exceeded")));
    assert_eq!(headers.get("retry-after"), Some("20"));
    assert_eq!(headers.get("retry-after-ms"), Some("20000"));
    assert_eq!(headers.get("x-ratelimit-remaining-requests"), Some("0"));
    assert_eq!(headers.get("x-should-retry"), None, "refills within two minutes");
    assert_eq!(upstream.sent.borrow().len(), 3, "the refused request never reached the backend");

    advance(20_000);
    upstream.push(Script::json(200, COMPLETION));
    assert_eq!(text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT)))).0, 200, "refilled after retry-after");
}

#[test]
fn keys_without_a_limit_are_not_limited_and_get_no_limit_headers() {
    let (gw, upstream, _) = gateway();
    let config = config();
    let body = CHAT.replace("llama", "qwen");
    for _ in 0..10 {
        upstream.push(Script::json(200, COMPLETION));
        let (status, headers, _) = text(run(gw.handle(Ok(&config), post_chat(OTHER_KEY, &body))));
        assert_eq!(status, 200);
        assert_eq!(headers.get("x-ratelimit-limit-requests"), None);
    }
}

#[test]
fn a_configuration_error_is_a_500_naming_the_variable_for_every_request() {
    let (gw, _, _) = gateway();
    let error = ConfigError("GATEWAY_BACKENDS is not set".into());
    for request in [get("/healthz", None), post_chat(KEY, CHAT)] {
        let (status, _, body) = text(run(gw.handle(Err(&error), request)));
        assert_eq!(status, 500);
        assert!(error_of(&body)["message"].as_str().unwrap().contains("GATEWAY_BACKENDS"));
    }
}

#[test]
fn preflight_is_answered_before_auth_for_allowed_origins_only() {
    let preflight = |origin: &str| {
        Request::new(
            "OPTIONS",
            "/v1/chat/completions",
            headers(&[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "authorization, content-type, x-stainless-os"),
            ]),
            vec![],
        )
    };
    let (status, headers, _) = handle(preflight("https://app.example.com"));
    assert_eq!(status, 204);
    assert_eq!(headers.get("access-control-allow-origin"), Some("https://app.example.com"));
    assert_eq!(headers.get("access-control-allow-headers"), Some("authorization, content-type, x-stainless-os"));
    assert!(headers.get("access-control-allow-methods").unwrap().contains("POST"));
    assert!(headers.get("access-control-max-age").is_some());

    let (status, headers, _) = handle(preflight("https://evil.example.com"));
    assert_eq!(status, 204);
    assert_eq!(headers.get("access-control-allow-origin"), None);
}

#[test]
fn actual_responses_expose_rate_limit_headers_to_allowed_origins() {
    let mut request = get("/v1/models", None);
    request.headers.set("origin", "https://app.example.com");
    let (status, headers, _) = handle(request);
    assert_eq!(status, 401, "errors carry CORS headers too, so scripts can read them");
    assert_eq!(headers.get("access-control-allow-origin"), Some("https://app.example.com"));
    let exposed = headers.get("access-control-expose-headers").unwrap();
    for h in ["x-request-id", "retry-after", "x-ratelimit-remaining-requests", "x-ratelimit-reset-tokens"] {
        assert!(exposed.contains(h), "{h}");
    }
}

#[test]
fn readyz_reports_backends_by_name_and_503_when_a_model_has_none() {
    let (gw, upstream, _) = gateway();
    let config = config();
    upstream.push(Script::json(200, ""));
    upstream.push(Script::json(200, "{}"));
    let (status, _, body) = text(run(gw.handle(Ok(&config), get("/readyz", None))));
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("10.0.0.1") && !body.contains("gpu-b.internal") && !body.contains("secret"));
    let sent: Vec<String> = upstream.sent.borrow().iter().map(|r| r.url.clone()).collect();
    assert_eq!(sent, ["http://10.0.0.1:8000/health", "https://gpu-b.internal/v1/models"]);

    let (gw, upstream, _) = gateway();
    upstream.push(Script::json(200, ""));
    upstream.push(Script::json(503, ""));
    let (status, _, body) = text(run(gw.handle(Ok(&config), get("/readyz", None))));
    assert_eq!(status, 503);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "unavailable");
    assert_eq!(v["backends"][1], json!({"name": "gpu-b", "status": "unhealthy"}));
}

/// A limit store that cannot be reached.

#[derive(Clone)]
struct UnreachableStore;

impl LimitStore for UnreachableStore {
    async fn admit(&self, _scope: &str, _admission: &Admission) -> Result<Admitted, StoreError> {
        Err(StoreError("connection refused to 10.9.9.9:6379".into()))
    }

    async fn settle(&self, _scope: &str, _settlement: &Settlement) -> Result<(), StoreError> {
        Err(StoreError("connection refused to 10.9.9.9:6379".into()))
    }
}

#[test]
fn an_unreachable_limit_store_fails_closed_by_default_and_open_when_configured() {
    let upstream = FakeUpstream::default();
    let runtime = FakeRuntime::default();
    let gw = edge_gateway::core::Gateway::new(upstream.clone(), UnreachableStore, runtime.clone());
    let config = config();
    let (status, _, body) = text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT))));
    assert_eq!(status, 500);
    assert_eq!(error_of(&body)["code"], "internal_error");
    assert!(!body.contains("10.9.9.9"), "store details stay in the log: {body}");
    assert!(runtime.logs.borrow().last().unwrap().contains("10.9.9.9"), "and are in the log");
    assert!(upstream.sent.borrow().is_empty(), "closed: nothing reached the backend");

    let mut vars = vars();
    vars.insert("GATEWAY_LIMITS_FAIL_OPEN".into(), "true".into());
    let config = edge_gateway::core::Config::from_lookup(&vars as &dyn edge_gateway::core::Lookup).unwrap();
    upstream.push(Script::json(200, COMPLETION));
    let (status, headers, _) = text(run(gw.handle(Ok(&config), post_chat(KEY, CHAT))));
    assert_eq!(status, 200, "open: admitted without a limit");
    assert_eq!(headers.get("x-ratelimit-remaining-requests"), None);
}

#[test]
fn serves_the_playground_under_a_strict_content_security_policy() {
    for (path, content_type) in
        [("/", "text/html"), ("/playground.js", "text/javascript"), ("/playground.css", "text/css")]
    {
        let (status, headers, body) = handle(get(path, None));
        assert_eq!(status, 200, "{path}");
        assert!(headers.get("content-type").unwrap().starts_with(content_type), "{path}");
        let csp = headers.get("content-security-policy").unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'") && !csp.contains("unsafe"),
            "{csp}"
        );
        assert_eq!(headers.get("x-content-type-options"), Some("nosniff"));
        assert_eq!(headers.get("x-frame-options"), Some("DENY"));
        assert!(!body.is_empty());
    }
    let (_, _, page) = handle(get("/", None));
    assert!(page.contains(r#"<script src="/playground.js">"#) && !page.contains("<script>"), "no inline script");
    assert!(!page.contains("http://") && !page.contains("https://"), "nothing from a CDN");
}

#[test]
fn the_playground_can_be_switched_off() {
    let (gw, _, _) = gateway();
    let config = config_with("GATEWAY_PLAYGROUND", "false");
    assert_eq!(text(run(gw.handle(Ok(&config), get("/", None)))).0, 404);
    assert_eq!(text(run(gw.handle(Ok(&config), get("/playground.js", None)))).0, 404);
}

#[test]
fn a_backends_error_event_mid_stream_becomes_the_gateways_one_final_error() {
    let vllm_error = "data: {\"error\": {\"message\": \"CUDA error: an illegal memory access at /srv/secret/model.py:42 (http://10.1.2.3:8000)\", \"type\": \"BadRequestError\", \"param\": null, \"code\": 400}}\n\n";
    let (gw, upstream, runtime) = gateway();
    upstream.push(Script::sse(&[ROLE, TOKEN, vllm_error, DONE]));
    let (status, _, body) = text(run(gw.handle(Ok(&config()), post_chat(KEY, STREAM))));
    assert_eq!(status, 200);
    let (before, last) = body.rsplit_once("data: ").unwrap();
    assert_eq!(before, format!("{ROLE}{TOKEN}"), "the backend's own event is not relayed, nor its [DONE]");
    let e = error_of(last.trim());
    assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("api_error"), Some("upstream_error")));
    let message = e["message"].as_str().unwrap();
    assert!(message.starts_with("CUDA error: an illegal memory access at"), "{message}");
    assert!(!body.contains("/srv/secret") && !body.contains("10.1.2.3") && !body.contains("BadRequestError"), "{body}");
    let line = runtime.records().pop().unwrap();
    assert_eq!((line["stream_end"].as_str(), line["error"].as_str()), (Some("upstream_error"), Some("upstream_error")));
}

#[test]
fn vary_origin_on_every_answer_when_cors_is_configured_and_null_is_never_granted() {
    for origin in [Some("https://app.example.com"), Some("https://evil.example.com"), None] {
        let mut request = get("/healthz", None);
        if let Some(origin) = origin {
            request.headers.set("origin", origin);
        }
        let (_, headers, _) = handle(request);
        assert_eq!(headers.get("vary"), Some("Origin"), "{origin:?}: a shared cache must key on Origin");
    }
    let (gw, _, _) = gateway();
    let any = config_with("GATEWAY_CORS_ORIGINS", "*");
    for path in ["/healthz", "/v1/chat/completions"] {
        let method = if path == "/healthz" { "GET" } else { "OPTIONS" };
        let request = Request::new(
            method,
            path,
            headers(&[("origin", "null"), ("access-control-request-method", "POST")]),
            vec![],
        );
        let (_, headers, _) = text(run(gw.handle(Ok(&any), request)));
        assert_eq!(headers.get("access-control-allow-origin"), None, "{path}: `null` is anyone's origin");
        assert_eq!(headers.get("vary"), Some("Origin"));
    }
    let off = config_with("GATEWAY_CORS_ORIGINS", "");
    let (gw, _, _) = gateway();
    let (_, headers, _) = text(run(gw.handle(Ok(&off), get("/healthz", None))));
    assert_eq!(headers.get("vary"), None, "no CORS, nothing varies by origin");
}
