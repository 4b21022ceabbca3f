//! Tests against a real inference server: llama-cpp-python on a tiny random GGUF.
//! See `tests/real/NOTES.md` for how it differs from vLLM, which the mock imitates.
//!
//! Every test here is `#[ignore = "…"]`: `make test` (and CI) builds and lints them
//! but only `make test-real` runs them (`-- --ignored`), after installing the server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Drives real processes over real sockets on real time (the core's own tests run on a virtual clock).
#![allow(clippy::disallowed_methods)]

#[path = "../support/real_backend.rs"]
mod real_backend;
#[path = "../support/mod.rs"]
mod support;

use real_backend::RealBackend;
use serde_json::json;
use support::request;

#[test]
#[ignore = "needs a real inference server: make test-real"]
fn real_backend_answers_a_chat_completion() {
    let backend = RealBackend::start();
    let body = json!({
        "model": backend.model,
        "messages": [{"role": "user", "content": "Hello there!"}],
        "max_tokens": 8,
    })
    .to_string();
    let auth = backend.bearer();
    let response = request(
        &backend.host_port(),
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json"), ("authorization", &auth)],
        Some(body.as_bytes()),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let completion = response.json();
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["model"], backend.model);
    assert_eq!(completion["choices"][0]["message"]["role"], "assistant");
    // Not `<= 8`: llama-cpp-python can run past max_tokens to finish a UTF-8 character
    // (see NOTES.md), and random weights emit stray bytes.
    let usage = &completion["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0, "{usage}");
    assert!(usage["completion_tokens"].is_u64(), "{usage}");
}

// ---------------------------------------------------------------------------------------------
// The gateway, both builds, in front of the real server.
// ---------------------------------------------------------------------------------------------

#[path = "../e2e/harness.rs"]
mod harness;
#[allow(dead_code)] // the shared gateway of the e2e suite is not used here
#[path = "../e2e/wasi.rs"]
mod wasi;
#[allow(dead_code)]
#[path = "../e2e/workerd.rs"]
mod workerd;

use harness::{Gateway, Setup, KEY};
use serde_json::Value;
use std::time::Duration;
use support::{request_streaming, sse_events};

/// A key limited in tokens (on every model), to see settlement without a usage chunk.
const METERED: &str = "sk-real-metered";

/// The gateway on `launch` with the real server as the only backend of its model. llama-cpp-python
/// sends a stream's headers only after prefill (and serves one request at a time), so its connect
/// timeout is the first-byte one.
fn gateway_before(backend: &RealBackend, launch: fn(Setup<'_>) -> Gateway, credential: &str) -> Gateway {
    let spec = format!(
        r#"{{"name":"llama-cpp","url":"{}","models":["{}"],"api_key_secret":"REAL_BACKEND_KEY","health_path":"/v1/models","max_model_len":256}}"#,
        backend.base_url, backend.model
    );
    let keys = format!(
        r#"[{{"id":"open","sha256":"{}","models":["*"]}},{{"id":"metered","sha256":"{}","models":["*"],"tokens_per_minute":100000}}]"#,
        edge_gateway::core::auth::sha256_hex(KEY),
        edge_gateway::core::auth::sha256_hex(METERED)
    );
    let vars = [
        ("REAL_BACKEND_KEY", credential),
        ("GATEWAY_API_KEYS", keys.as_str()),
        ("GATEWAY_CONNECT_TIMEOUT_MS", "30000"),
        ("GATEWAY_FIRST_BYTE_TIMEOUT_MS", "30000"),
        ("GATEWAY_TOTAL_TIMEOUT_MS", "60000"),
    ];
    launch(Setup { vars: &vars, backends: &[spec.as_str()] })
}

fn chat(gw: &Gateway, key: &str, body: Value, extra: &[(&str, &str)]) -> support::HttpResponse {
    let auth = format!("Bearer {key}");
    let mut headers = vec![("authorization", auth.as_str()), ("content-type", "application/json")];
    headers.extend_from_slice(extra);
    request(&gw.addr, "POST", "/v1/chat/completions", &headers, Some(&serde_json::to_vec(&body).unwrap()))
}

fn completion_and_stream_through_the_gateway(launch: fn(Setup<'_>) -> Gateway) {
    let backend = RealBackend::start();
    let gw = gateway_before(&backend, launch, &backend.api_key);
    // Non-stream, with a client request id that is not a UUID (the server refuses those).
    let r = chat(
        &gw,
        KEY,
        json!({"model": backend.model, "max_tokens": 8, "messages": [{"role": "user", "content": "Hello"}]}),
        &[("x-request-id", "client-7")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-request-id"), Some("client-7"));
    assert_eq!(r.json()["object"], "chat.completion");
    // A stream: the gateway asks for usage, the server ignores it; the stream still ends well.
    let r = chat(
        &gw,
        KEY,
        json!({"model": backend.model, "stream": true, "max_tokens": 8, "messages": [{"role": "user", "content": "Hello"}]}),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let events = sse_events(&r.body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    for event in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(event).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk");
    }
}

fn include_usage_is_ignored_and_tokens_are_settled_all_the_same(launch: fn(Setup<'_>) -> Gateway) {
    let backend = RealBackend::start();
    let gw = gateway_before(&backend, launch, &backend.api_key);
    let body = json!({"model": backend.model, "stream": true, "stream_options": {"include_usage": true}, "max_tokens": 100, "messages": [{"role": "user", "content": "Hello"}]});
    let r = chat(&gw, METERED, body, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let admitted: u32 = r.header("x-ratelimit-remaining-tokens").unwrap().parse().unwrap();
    let events = sse_events(&r.body);
    assert!(!events.iter().any(|e| e.contains("\"usage\":{")), "no usage chunk from this server: {events:?}");
    // Without a usage chunk the stream is settled on its prompt plus one token per chunk, so
    // most of the 100-token estimate comes back.
    let settled = support::wait_until(Duration::from_secs(5), || {
        let r = chat(
            &gw,
            METERED,
            json!({"model": backend.model, "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}),
            &[],
        );
        r.header("x-ratelimit-remaining-tokens").and_then(|v| v.parse::<u32>().ok()).is_some_and(|now| now > admitted)
    });
    assert!(settled, "the stream was not settled");
}

fn the_servers_errors_are_mapped_without_internals(launch: fn(Setup<'_>) -> Gateway) {
    let backend = RealBackend::start();
    // Over the context: its 400 (not OpenAI-shaped on every path) becomes ours, cleaned.
    let gw = gateway_before(&backend, launch, &backend.api_key);
    let long = "word ".repeat(400);
    let r = chat(
        &gw,
        KEY,
        json!({"model": backend.model, "max_tokens": 8, "messages": [{"role": "user", "content": long}]}),
        &[],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("maximum context length"), "{}", r.text());
    drop(gw);
    // A wrong backend credential: its `401 {"detail":…}` is the gateway's configuration
    // problem, a 502, never retried and never a leak of the server's words.
    let gw = gateway_before(&backend, launch, "not-the-key");
    let r = chat(
        &gw,
        KEY,
        json!({"model": backend.model, "max_tokens": 8, "messages": [{"role": "user", "content": "Hello"}]}),
        &[],
    );
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(!r.text().contains("Invalid API key"), "{}", r.text());
}

fn a_client_that_leaves_mid_stream_frees_the_server(launch: fn(Setup<'_>) -> Gateway) {
    let backend = RealBackend::start();
    let gw = gateway_before(&backend, launch, &backend.api_key);
    let auth = format!("Bearer {KEY}");
    let body = json!({"model": backend.model, "stream": true, "max_tokens": 200, "messages": [{"role": "user", "content": "Tell me a long story"}]});
    let mut stream = request_streaming(
        &gw.addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", &auth), ("content-type", "application/json")],
        Some(&serde_json::to_vec(&body).unwrap()),
    );
    assert_eq!(stream.status, 200);
    stream.next_chunk().expect("a first chunk");
    stream.disconnect();
    // The server takes one request at a time: the next one is served only once it is free.
    let started = std::time::Instant::now();
    let r = chat(
        &gw,
        KEY,
        json!({"model": backend.model, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    println!("the next request was served {:?} after the client left", started.elapsed());
}

macro_rules! through_both_builds {
    ($($case:ident),* $(,)?) => {
        mod workerd_gateway {
            $(
                #[test]
                #[ignore = "needs a real inference server: make test-real"]
                fn $case() {
                    super::$case(crate::workerd::dedicated);
                }
            )*
        }
        mod wasi_gateway {
            $(
                #[test]
                #[ignore = "needs a real inference server: make test-real"]
                fn $case() {
                    super::$case(crate::wasi::dedicated);
                }
            )*
        }
    };
}

through_both_builds!(
    completion_and_stream_through_the_gateway,
    include_usage_is_ignored_and_tokens_are_settled_all_the_same,
    the_servers_errors_are_mapped_without_internals,
    a_client_that_leaves_mid_stream_frees_the_server,
);
