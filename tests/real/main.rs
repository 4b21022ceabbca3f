//! Tests against a real inference server: llama-cpp-python on a tiny random GGUF.
//! See `tests/real/NOTES.md` for how it differs from vLLM, which the mock imitates.
//!
//! Every test here is `#[ignore = "…"]`: `make test` (and CI) builds and lints them
//! but only `make test-real` runs them (`-- --ignored`), after installing the server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../support/mod.rs"]
mod support;
#[path = "../support/real_backend.rs"]
mod real_backend;

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
