//! Hostile callers and real-backend faults found by an adversarial review of the README's claims
//! ("Requests", "Errors", "Headers", "Backends, failover and timeouts", "Limits"). Each test pins
//! one defect; each failed on the code it was written against, and its message names the defect.

use crate::support::*;
use edge_gateway::core::config::{Config, RequestCaps};
use edge_gateway::core::http::{Body, Request};
use edge_gateway::core::openai::Dialect;
use edge_gateway::core::rate_limit::gcra::{Admission, Admitted, BucketSet, Lease, Settlement};
use edge_gateway::core::rate_limit::store::{LimitStore, MemoryStore, StoreError};
use edge_gateway::core::upstream::sse::SseScanner;
use edge_gateway::core::validate::validate_chat;
use edge_gateway::core::Gateway;
use futures::StreamExt;
use serde_json::{json, Value};
use std::rc::Rc;

const USAGE: &str =
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,\"total_tokens\":15}}\n\n";

// ---------------------------------------------------------------------------------------------
// 1. Failover/ejection "only for backend faults": a request that makes every backend answer 500
//    (llama-cpp-python turns ANY exception raised by the request into a 500: `logit_bias:
//    {"x":1}` → int("x") → ValueError; a template's raise_exception("roles must alternate") …)
//    is replayed on every backend and counted against each one. Three such requests eject them all.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_poison_request_that_makes_every_backend_answer_500_cannot_eject_them_all() {
    let (gw, upstream, _) = gateway();
    let config = ordered_backends(&[("GATEWAY_EJECT_AFTER_FAILURES", "3"), ("GATEWAY_MAX_ATTEMPTS", "3")]);
    // What llama-cpp-python answers to `"logit_bias": {"x": 1}` (errors.py wraps every unexpected
    // exception as a 500 internal_server_error).
    let llama_cpp_python_500 = r#"{"error":{"message":"invalid literal for int() with base 10: 'x'","type":"internal_server_error","param":null,"code":null}}"#;
    let poison = r#"{"model":"llama","logit_bias":{"x":1},"messages":[{"role":"user","content":"hi"}]}"#;
    for _ in 0..3 {
        for _ in 0..3 {
            upstream.push(Script::json(500, llama_cpp_python_500));
        }
        let (status, _, _) = text(run(gw.handle(Ok(&config), post_chat(KEY, poison))));
        assert_eq!(status, 502);
    }
    upstream.push(Script::json(200, METERED_COMPLETION));
    let (status, _, body) = text(run(gw.handle(Ok(&config), post_chat(METERED_KEY, METERED_CHAT))));
    assert_eq!(
        status, 200,
        "DEFECT: three poison requests from one caller ejected every backend of the model, so every \
         other caller gets {status}: {body}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. "A mid-stream backend `data: {"error":…}` event is replaced by the gateway's one final error
//    event with a cleaned message": only the FIRST `data:` line of an event is looked at. Per the
//    SSE spec an event's data lines are joined; an error on a later line is relayed raw.
// ---------------------------------------------------------------------------------------------

#[test]
fn sse_an_error_on_a_later_data_line_of_an_event_is_never_relayed() {
    let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[]}\ndata: {\"error\":{\"message\":\"engine died at http://10.9.8.7:8000 /srv/secret/engine.py\",\"code\":500}}\n\ndata: [DONE_EVENT]\n\n";
    let mut scanner = SseScanner::new(Dialect::Chunks, false, 1 << 20);
    let out = scanner.feed(stream.to_vec());
    let out = String::from_utf8(out).unwrap();
    assert!(
        !out.contains("10.9.8.7") && !out.contains("/srv/secret"),
        "DEFECT: the backend's raw error (URL, path) is relayed because it is not on the event's first data line:\n{out}"
    );
    assert!(scanner.stopped().is_some(), "DEFECT: the scanner did not stop at the error event");
}

#[test]
fn a_backend_error_on_a_later_data_line_reaches_the_client_raw() {
    let (gw, upstream, _) = gateway();
    let error = "data: {\"choices\":[]}\ndata: {\"error\":{\"message\":\"CUDA OOM on http://10.9.8.7:8000 see /srv/secret/model.py\",\"type\":\"InternalServerError\",\"code\":500}}\n\n";
    upstream.push(Script::sse(&[ROLE_EVENT, TOKEN_EVENT, error, DONE_EVENT]));
    let (status, _, body) = text(run(gw.handle(Ok(&config()), post_chat(KEY, &metered_stream()))));
    assert_eq!(status, 200);
    assert!(
        !body.contains("10.9.8.7") && !body.contains("/srv/secret") && !body.contains("InternalServerError"),
        "DEFECT: the client received the backend's raw error event:\n{body}"
    );
    assert!(
        body.trim_end().rsplit("data: ").next().unwrap().contains("upstream_error"),
        "ends with the gateway's error: {body}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. "Only the human message of a 4xx is passed on, cleaned: … every URL, network address and
//    file path replaced": `clean` only redacts whole words that START with `/` or ARE an IPv4
//    (with an optional port). Addresses and paths inside a word, IPv6 and host:port leak.
// ---------------------------------------------------------------------------------------------

#[test]
fn backend_messages_leak_addresses_and_paths_the_cleaner_misses() {
    let config = ordered_backends(&[]);
    let cases: &[(&str, &str)] = &[
        // urllib3/requests, the most common Python connection error (vLLM fetching media, proxies).
        ("HTTPConnectionPool(host='10.1.2.3', port=8000): Max retries exceeded", "10.1.2.3"),
        // pydantic's validation messages echo the input.
        (
            "Input should be a valid path [type=path_type, input_value='/data/models/llama-70b', input_type=str]",
            "/data/models",
        ),
        ("model_path=/srv/weights/llama.gguf not found", "/srv/weights"),
        ("cannot connect to [fd00:10::5]:8000", "fd00:10::5"),
        ("peer fd00:10::5 reset the connection", "fd00:10::5"),
        ("Cannot connect to host vllm-0.vllm.inference.svc.cluster.local:8000 ssl:default", "svc.cluster.local"),
        ("listening on 10.1.2.3/24", "10.1.2.3"),
        ("weights at C:/models/llama not readable", "C:/models"),
    ];
    let mut leaks = Vec::new();
    for (message, secret) in cases {
        let (gw, upstream, _) = gateway();
        let body = json!({"error": {"message": message, "type": "BadRequestError", "code": 400}}).to_string();
        upstream.push(Script::Answer {
            status: 400,
            headers: vec![("content-type", "application/json")],
            after_ms: 0,
            chunks: vec![(0, Ok(body.into_bytes()))],
        });
        let (status, _, answer) = text(run(
            gw.handle(Ok(&config), post_chat(KEY, r#"{"model":"llama","messages":[{"role":"user","content":"hi"}]}"#))
        ));
        assert_eq!(status, 400);
        let shown = error_of(&answer)["message"].as_str().unwrap().to_string();
        if shown.contains(secret) {
            leaks.push(shown);
        }
    }
    assert!(leaks.is_empty(), "DEFECT: cleaned backend messages still reveal internals:\n{}", leaks.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 4. "Every tokenized text counts toward GATEWAY_MAX_CONTENT_BYTES and the estimate": fields a
//    chat template renders but the gateway does not count pass through untouched. vLLM (and
//    llama.cpp, SGLang) merge `chat_template_kwargs` into the template's variables — `tools`
//    and `documents` there override the request's own — and vLLM renders top-level `documents`
//    (RAG templates). `chat_template` (vLLM without --trust-request-chat-template refusal, older
//    versions) lets a 60-byte request render an arbitrarily long prompt.
// ---------------------------------------------------------------------------------------------

fn small_limits() -> RequestCaps {
    RequestCaps {
        max_body_bytes: 1 << 20,
        max_messages: 16,
        max_embedding_inputs: 16,
        max_content_bytes: 1000,
        max_tokens: 512,
        max_n: 2,
        allow_remote_media: false,
    }
}

#[test]
fn template_rendered_fields_escape_the_content_cap_and_the_estimate() {
    let big = "x".repeat(20_000);
    let cases: Vec<(&str, Value)> = vec![
        (
            "chat_template_kwargs.tools",
            json!({"tools": [{"type": "function", "function": {"name": "f", "description": big}}]}),
        ),
        ("chat_template_kwargs.documents", json!({"documents": [{"title": "t", "text": big}]})),
        ("documents", json!([{"title": "t", "text": big}])),
    ];
    let mut escaped = Vec::new();
    for (name, value) in cases {
        let mut body = json!({"model": "llama", "messages": [{"role": "user", "content": "hi"}]});
        let field = name.split('.').next().unwrap();
        body[field] = value;
        if let Ok(chat) = validate_chat(&serde_json::to_vec(&body).unwrap(), &small_limits()) {
            escaped.push(format!("{name}: 20,000 rendered bytes admitted with text_bytes = {}", chat.text_bytes));
        }
    }
    let amplifier = json!({"model": "llama", "messages": [{"role": "user", "content": "hi"}],
        "chat_template": "{% for i in range(1000000) %}spam {% endfor %}"});
    if validate_chat(&serde_json::to_vec(&amplifier).unwrap(), &small_limits()).is_ok() {
        escaped.push(
            "chat_template: a client-supplied template (unbounded prompt from 60 bytes) is passed through".into(),
        );
    }
    assert!(escaped.is_empty(), "DEFECT: text the backend tokenizes escaped the content cap:\n{}", escaped.join("\n"));
}

#[test]
fn many_empty_text_parts_render_newlines_the_prompt_bound_does_not_count() {
    // vLLM's "string" content format joins text parts with "\n": 2,000 empty parts render 1,999
    // newlines that count 0 bytes toward the content cap and the prompt bound.
    let parts: Vec<Value> = (0..2_000).map(|_| json!({"type": "text", "text": ""})).collect();
    let body = json!({"model": "llama", "messages": [{"role": "user", "content": parts}]});
    let chat = validate_chat(&serde_json::to_vec(&body).unwrap(), &small_limits());
    match chat {
        Err(_) => {}
        Ok(chat) => assert!(
            chat.text_bytes >= 1_999,
            "DEFECT: 2,000 empty text parts (1,999 rendered separators) count {} bytes toward a 1,000-byte cap",
            chat.text_bytes
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// 5. "/readyz is cached per period": a probe round is shared only once one is stored. While the
//    first round is in flight (cold isolate, or the backend set changed), every concurrent
//    /readyz — unauthenticated — runs its own full round against every backend.
// ---------------------------------------------------------------------------------------------

#[test]
fn concurrent_readyz_on_a_cold_cache_probe_each_backend_once() {
    let (gw, upstream, _) = gateway();
    let config = config(); // two backends
    for _ in 0..20 {
        upstream.push(Script::json(200, "").after(1_000)); // a /health that takes a second
    }
    let config = &config;
    let gw = &gw;
    let answers = run(futures::future::join_all((0..10).map(|_| gw.handle(Ok(config), get("/readyz", None)))));
    assert!(answers.iter().all(|r| r.status == 200));
    let probes = upstream.sent.borrow().len();
    assert_eq!(probes, 2, "DEFECT: 10 concurrent /readyz calls on a cold cache sent {probes} probes (one round is 2)");
}

// ---------------------------------------------------------------------------------------------
// 6. Settlement after a timeout: "a request that failed before the backend answered is refunded"
//    — including a 504 after the backend took the request and worked on it for the whole total
//    timeout (non-stream) or the first-byte timeout (a stream's prefill). A client leaving at the
//    same moment is charged its prompt; a timeout is charged nothing.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_504_after_the_backend_worked_on_the_request_charges_at_least_its_prompt() {
    let prefilling = || Script::Answer {
        status: 200,
        headers: vec![("content-type", "text/event-stream")],
        after_ms: 0,
        chunks: vec![(25_000, Ok(ROLE_EVENT.into()))],
    };
    let cases: Vec<(&str, Config, Script, String, u16)> = vec![
        (
            "non-stream past the total timeout",
            config_with_all(&[("GATEWAY_TOTAL_TIMEOUT_MS", "20000"), ("GATEWAY_FIRST_BYTE_TIMEOUT_MS", "5000")]),
            Script::json(200, METERED_COMPLETION).after(25_000),
            METERED_CHAT.to_string(),
            504,
        ),
        (
            "stream prefilling past the first-byte timeout, before its commit",
            config_with_all(&[("GATEWAY_FIRST_BYTE_TIMEOUT_MS", "20000"), ("GATEWAY_STREAM_COMMIT_MS", "30000")]),
            prefilling(),
            metered_stream(),
            504,
        ),
        (
            "stream prefilling past the first-byte timeout, committed and kept alive",
            config_with("GATEWAY_FIRST_BYTE_TIMEOUT_MS", "20000"),
            prefilling(),
            metered_stream(),
            200,
        ),
    ];
    let mut free = Vec::new();
    for (name, config, script, body, expected) in cases {
        let (gw, upstream, runtime, store) = recording_gateway();
        upstream.push(script);
        let (status, _, _) = text(run(gw.handle(Ok(&config), post_chat(METERED_KEY, &body))));
        assert_eq!(status, expected, "{name}");
        runtime.run_spawned();
        // Admitted on 110 (10 prompt + 100); charging the prompt is a delta of -100.
        let delta = token_delta(&store);
        if delta < -100 {
            free.push(format!("{name}: settled with delta {delta} (charged {})", 110 + delta));
        }
    }
    assert!(
        free.is_empty(),
        "DEFECT: the backend had the request and worked on it, yet nothing was charged:\n{}",
        free.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 7. "When the client goes away — … or during a stream — the backend request is aborted at once".
//    On a platform that stops polling a cancelled response instead of dropping it (workerd, the
//    reason the `disconnected` watcher exists), the watcher only reports the end: the slot is
//    released and the request settled for the chunks relayed so far, but the relay — and with it
//    the backend request — stays open, so the GPU keeps generating what nobody pays for.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_disconnect_reported_by_the_platform_aborts_the_backend_stream() {
    let (gw, upstream, runtime, store) = gateway_with_store();
    let config = config();
    upstream.push(Script::sse_paced(
        &[ROLE_EVENT, TOKEN_EVENT, TOKEN_EVENT, TOKEN_EVENT, TOKEN_EVENT, USAGE, DONE_EVENT],
        1_000,
    ));
    let (gone_tx, gone_rx) = futures::channel::oneshot::channel::<()>();
    let mut request = post_chat(METERED_KEY, &metered_stream());
    request.disconnected = Some(Box::pin(async move {
        let _ = gone_rx.await;
    }));
    let response = run(gw.handle(Ok(&config), request));
    assert_eq!(response.status, 200);
    gone_tx.send(()).unwrap();
    runtime.run_spawned(); // the watcher
    runtime.run_spawned(); // the settlement it spawned
    assert!(store.state("key:gamma").leases.is_empty(), "the slot is released");
    assert_eq!(
        upstream.closed.get(),
        1,
        "DEFECT: the client is gone and its slot released, but the backend request is still open \
         (generating the remaining tokens unpaid, outside max_in_flight)"
    );
    drop(response);
}

// ---------------------------------------------------------------------------------------------
// 8. "Stream phases … total each bounded": the idle and total deadlines are checked only when
//    the platform polls the relay. A client that reads the first chunk and then stops reading
//    keeps the backend request open for as long as it likes.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_stream_the_client_stops_reading_is_still_bounded_by_the_total_timeout() {
    let (gw, upstream, runtime) = gateway();
    let config = config_with_all(&[("GATEWAY_TOTAL_TIMEOUT_MS", "10000"), ("GATEWAY_FIRST_BYTE_TIMEOUT_MS", "5000")]);
    upstream.push(Script::sse_paced(&[ROLE_EVENT, TOKEN_EVENT, TOKEN_EVENT, TOKEN_EVENT, USAGE, DONE_EVENT], 100));
    let response = run(gw.handle(Ok(&config), post_chat(METERED_KEY, &metered_stream())));
    let Body::Stream(mut body) = response.body else { panic!("a stream") };
    run(body.next()).unwrap().unwrap(); // the client reads the first chunk, then stalls
    run(sleep(600_000)); // ten minutes of not reading, a minute past the total timeout
    runtime.run_spawned();
    assert_eq!(
        upstream.closed.get(),
        1,
        "DEFECT: 60x the total timeout later the backend request of a stalled reader is still open"
    );
    drop(body);
}

// ---------------------------------------------------------------------------------------------
// 9. Garbage after `[DONE_EVENT]` in the same chunk: the tail is held as if an event might still end,
//    and when it passes the event cap the whole chunk — content and `[DONE_EVENT]` included — is
//    thrown away and the client gets an error instead of the answer it was already sent.
// ---------------------------------------------------------------------------------------------

#[test]
fn done_followed_by_an_oversized_unterminated_tail_still_delivers_the_answer() {
    let mut chunk = format!("{ROLE_EVENT}{TOKEN_EVENT}{DONE_EVENT}").into_bytes();
    chunk.extend(std::iter::repeat_n(b'x', 2_000));
    let mut scanner = SseScanner::new(Dialect::Chunks, false, 1_024);
    let fed = scanner.feed(chunk);
    assert!(scanner.done(), "[DONE_EVENT] was seen");
    assert_eq!(
        Some(fed.as_slice()),
        Some(format!("{ROLE_EVENT}{TOKEN_EVENT}{DONE_EVENT}").as_bytes()),
        "DEFECT: bytes after [DONE_EVENT] (never relayed) made the scanner fail the chunk and lose the answer: {fed:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 10. Lease ids: the store admits a lease whose id it already holds without counting it. The
//     gateway's ids are random, so this needs a collision — but the test runtime's randomness is
//     constant (every request's lease id is 0707…), so the suite cannot tell "each request its
//     own slot" from "all requests share one", and `concurrent_requests_sharing_one_request_id_*`
//     (max_in_flight 1) would pass with a shared id too.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_lease_id_already_held_is_not_a_free_slot() {
    let mut set = BucketSet::default();
    let admission = Admission {
        takes: vec![],
        lease: Some(Lease { bucket: "in_flight".into(), id: "same".into(), max: 2, ttl_ms: 60_000 }),
    };
    let admitted: Vec<bool> = (0..5).map(|_| set.admit(&admission, T0).allowed()).collect();
    assert_eq!(
        admitted,
        [true, false, false, false, false],
        "DEFECT: max_in_flight 2, yet {admitted:?}: a repeated lease id is admitted without taking a slot (a collision is refused)"
    );
}

#[test]
fn test_runtime_gives_every_request_the_same_lease_id_so_max_in_flight_2_admits_three() {
    // Through the gateway with the suite's runtime: all lease ids are equal, so a limit of 2
    // admits any number of concurrent streams.
    let (gw, upstream, _) = gateway();
    let keys = format!(
        r#"[{{"id":"gamma","sha256":"{}","models":["llama"],"max_in_flight":2}}]"#,
        edge_gateway::core::auth::sha256_hex(METERED_KEY)
    );
    let config = config_with("GATEWAY_API_KEYS", &keys);
    let mut open: Vec<edge_gateway::core::http::Response> = Vec::new();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        upstream.push(Script::StreamThenStall(vec![ROLE_EVENT]));
        let response = run(gw.handle(Ok(&config), post_chat(METERED_KEY, &metered_stream())));
        statuses.push(response.status);
        open.push(response);
    }
    assert_eq!(statuses, [200, 200, 429], "DEFECT (test runtime): three concurrent streams under max_in_flight 2");
}

// ---------------------------------------------------------------------------------------------
// 11. llama.cpp's server reports a stream failure as an `error:` SSE field, not a `data:` line
//     (`server_sent_event(sink, "error", error_data)` writes `error: {"code":…,"message":…}`).
//     The scanner only knows `data: {"error":…}`, so the backend's raw error line is relayed
//     uncleaned, and the client's final event is a generic "ended the stream early".
// ---------------------------------------------------------------------------------------------

#[test]
fn a_llama_cpp_error_field_mid_stream_is_not_relayed_raw() {
    let (gw, upstream, _) = gateway();
    let llama_cpp_error = "error: {\"code\":500,\"message\":\"ggml_cuda_compute_forward failed at /srv/llama.cpp/ggml-cuda.cu:2300 (10.1.2.3)\",\"type\":\"server_error\"}\n\n";
    upstream.push(Script::sse(&[ROLE_EVENT, TOKEN_EVENT, llama_cpp_error])); // llama.cpp then closes the stream
    let (status, _, body) = text(run(gw.handle(Ok(&config()), post_chat(KEY, &metered_stream()))));
    assert_eq!(status, 200);
    assert!(
        !body.contains("/srv/llama.cpp") && !body.contains("10.1.2.3") && !body.contains("error: {"),
        "DEFECT: llama.cpp's `error:` event reached the client raw:\n{body}"
    );
}

// ---------------------------------------------------------------------------------------------
// 12. "It answers 200 only after the backend's first bytes arrive, so a dead backend is a clean
//     502/504, not a broken stream": when those first bytes ARE an error event (vLLM's generator
//     failing before its first token, llama.cpp's "request exceeds the available context size"
//     sent after its 200 headers), nothing has reached the client yet, but the gateway commits
//     to 200 anyway and the client gets a broken stream — no failover, no 4xx/5xx status.
// ---------------------------------------------------------------------------------------------

#[test]
fn an_error_as_the_very_first_event_is_an_http_error_not_a_200_stream() {
    let cases: Vec<(&str, &'static str)> = vec![
        ("vLLM", "data: {\"error\":{\"message\":\"CUDA out of memory\",\"type\":\"InternalServerError\",\"code\":500}}\n\ndata: [DONE_EVENT]\n\n"),
        ("llama.cpp", "error: {\"code\":400,\"message\":\"the request exceeds the available context size, try increasing it\",\"type\":\"exceed_context_size_error\"}\n\n"),
    ];
    let mut broken = Vec::new();
    for (name, first) in cases {
        let (gw, upstream, _) = gateway();
        upstream.push(Script::sse(&[first]));
        let (status, _, body) = text(run(gw.handle(Ok(&config()), post_chat(KEY, &metered_stream()))));
        if status == 200 {
            broken.push(format!("{name}: 200 with {body:?}"));
        }
    }
    assert!(
        broken.is_empty(),
        "DEFECT: a backend that failed before sending a token became a 200 stream:\n{}",
        broken.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 13. "An answer that is not a completion → fail over, 502" and "backend error bodies are never
//     passed through": any JSON object with a 200 counts as a completion, so an error object (or
//     anything else) a backend or a proxy in front of it answers with 200 is relayed verbatim.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_200_that_is_not_a_completion_is_not_relayed() {
    let config = ordered_backends(&[]);
    let cases = [
        r#"{"error":{"message":"upstream connect error at http://10.1.2.3:8000","type":"proxy_error"}}"#,
        r#"{"detail":"Not authenticated for /srv/models"}"#,
        r#"[]"#,
    ];
    let mut relayed = Vec::new();
    for body in cases {
        let (gw, upstream, _) = gateway();
        upstream.push(Script::json(200, body));
        upstream.push(Script::json(200, METERED_COMPLETION));
        let (status, _, answer) = text(run(
            gw.handle(Ok(&config), post_chat(KEY, r#"{"model":"llama","messages":[{"role":"user","content":"hi"}]}"#))
        ));
        if status == 200 && answer == body {
            relayed.push(answer);
        }
    }
    assert!(
        relayed.is_empty(),
        "DEFECT: non-completions answered with 200 reached the client verbatim:\n{}",
        relayed.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 14. "A value that is not a token (… so nothing non-ASCII) is a 401 … and both runtimes judge
//     the same bytes the same way": the core trims with `str::trim`, which strips Unicode
//     whitespace. workerd hands header bytes over as a ByteString (byte 0xA0 → U+00A0, 0x85 →
//     U+0085), so on Workers `Bearer <key>\xA0` is that key; the Spin adapter drops every header
//     that is not visible ASCII (`HeaderValue::to_str`), so on Spin the same bytes are "no
//     credential" — the anonymous tier.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_credential_with_non_ascii_whitespace_is_refused_not_trimmed() {
    let (gw, upstream, _) = gateway();
    let config = config();
    let mut accepted = Vec::new();
    for value in [format!("Bearer {KEY}\u{a0}"), format!("Bearer {KEY}\u{85}"), format!("\u{a0}Bearer {KEY}")] {
        upstream.push(Script::json(200, METERED_COMPLETION));
        let request = Request::new(
            "POST",
            "/v1/chat/completions",
            headers(&[("authorization", &value)]),
            METERED_CHAT.as_bytes().to_vec(),
        );
        let (status, _, _) = text(run(gw.handle(Ok(&config), request)));
        if status != 401 {
            accepted.push(format!("{value:?} → {status}"));
        }
    }
    assert!(
        accepted.is_empty(),
        "DEFECT: a non-ASCII credential header was trimmed into a valid key:\n{}",
        accepted.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 15. "A client leaving before the answer drops the handler: … slot released". A client that
//     leaves while its admission is on the way back from the limit store (a Durable Object RPC,
//     a Redis EVAL: the store has taken the lease, the reply has not arrived) drops the handler
//     before it ever holds a Settler, so nothing releases the lease: it is held until its TTL
//     (GATEWAY_TOTAL_TIMEOUT_MS + 60 s, 11 minutes by default).
// ---------------------------------------------------------------------------------------------

/// A store whose admissions take effect at once but whose reply takes `reply_ms` to come back.
#[derive(Clone)]
struct SlowReply {
    inner: TestStore,
    reply_ms: u64,
}

impl LimitStore for SlowReply {
    async fn admit(&self, scope: &str, admission: &Admission) -> Result<Admitted, StoreError> {
        let admitted = self.inner.admit(scope, admission).await;
        sleep(self.reply_ms).await;
        admitted
    }

    async fn settle(&self, scope: &str, settlement: &Settlement) -> Result<(), StoreError> {
        self.inner.settle(scope, settlement).await
    }
}

#[test]
fn a_client_that_leaves_during_admission_does_not_keep_its_slot() {
    let upstream = FakeUpstream::default();
    let runtime = FakeRuntime::default();
    let clock = runtime.clock.clone();
    let inner: TestStore = Rc::new(MemoryStore::new(Box::new(move || clock.now.get()) as Box<dyn Fn() -> u64>));
    let gw = Gateway::new(upstream.clone(), SlowReply { inner: inner.clone(), reply_ms: 50 }, runtime.clone());
    let config = config();
    let mut request = post_chat(METERED_KEY, METERED_CHAT);
    request.disconnected = Some(Box::pin(sleep(10))); // gone while the store's reply is on its way
    let response = run(gw.handle(Ok(&config), request));
    assert_eq!(response.status, 499);
    runtime.run_spawned();
    run(sleep(100));
    assert!(
        inner.state("key:gamma").leases.is_empty(),
        "DEFECT: the client left 10 ms into a 50 ms admission; its in-flight slot stays taken until the lease expires: {:?}",
        inner.state("key:gamma").leases
    );
}

// ---------------------------------------------------------------------------------------------
// 16. Same class as 1: a completion the gateway refuses as "too large" (over 32 MiB — e.g. vLLM's
//     `prompt_logprobs: 20` on a long prompt, or `top_logprobs: 20` × n × max_tokens) was fully
//     generated; the gateway blames the backend, replays the whole generation on every other
//     backend (each produces the same oversized answer) and counts it against all of them.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_completion_too_large_for_the_gateway_is_not_replayed_on_every_backend() {
    let (gw, upstream, _) = gateway();
    let config = ordered_backends(&[("GATEWAY_EJECT_AFTER_FAILURES", "1")]);
    let huge = || {
        let mut body =
            br#"{"id":"c","object":"chat.completion","choices":[{"index":0,"logprobs":{"content":[""#.to_vec();
        body.resize(33 << 20, b'x');
        Script::Answer {
            status: 200,
            headers: vec![("content-type", "application/json")],
            after_ms: 0,
            chunks: vec![(0, Ok(body))],
        }
    };
    for _ in 0..3 {
        upstream.push(huge());
    }
    let (status, _, _) = text(run(gw.handle(
        Ok(&config),
        post_chat(KEY, r#"{"model":"llama","prompt_logprobs":20,"messages":[{"role":"user","content":"hi"}]}"#),
    )));
    assert_eq!(status, 502);
    assert_eq!(
        upstream.hosts(),
        ["a.internal"],
        "DEFECT: a finished generation the gateway could not relay was replayed on every backend (and each was ejected)"
    );
}

// ---------------------------------------------------------------------------------------------
// 17. Cosmetic / log amplification: paths and methods echoed in messages are cut to 200
//     printable characters (route.rs `printable`), but `model` is not: a body-sized model name is
//     echoed whole in the 404 and written whole into the request's log line.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_huge_model_name_is_not_echoed_or_logged_whole() {
    let (gw, _, runtime) = gateway();
    let model = "m".repeat(500_000);
    let body = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);
    let (status, _, answer) = text(run(gw.handle(Ok(&config()), post_chat(KEY, &body))));
    assert_eq!(status, 400, "names are at most 256 characters: {}", &answer[..answer.len().min(300)]);
    let line = runtime.logs.borrow().last().cloned().unwrap();
    assert!(
        answer.len() < 4_096 && line.len() < 4_096,
        "DEFECT: a 500 kB model name made a {} byte error body and a {} byte log line",
        answer.len(),
        line.len()
    );
}
