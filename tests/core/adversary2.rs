//! Second adversarial review: stream keep-alive timing, metrics records, and the endpoints added
//! beside chat (legacy completions, embeddings, the Responses API, stored responses). Each test
//! pins one defect, failed on the code it was written against, and says in its message and its
//! comment what breaks in production and why.

use crate::support::*;
use edge_gateway::core::config::RequestCaps;
use edge_gateway::core::http::{Body, BodyError};
use edge_gateway::core::validate::{validate_chat, validate_completions, validate_responses, Validated};
use futures::StreamExt;
use std::rc::Rc;

const STREAM: &str = r#"{"model":"llama","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

/// The caps of the test configuration (512 KiB of content, 512 tokens, n up to 4).
fn caps() -> RequestCaps {
    config().caps
}

/// Whether a field was kept from escaping the estimate: the body refused, or `counted` holds.
fn refused_or(
    result: &Result<Validated, edge_gateway::core::GatewayError>,
    counted: impl Fn(&Validated) -> bool,
) -> bool {
    match result {
        Err(_) => true,
        Ok(v) => counted(v),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Keep-alive: "once a backend has sent its response head and is silent for
//    GATEWAY_STREAM_COMMIT_MS, the gateway answers 200". `commit_at` is computed once, from the
//    start of the whole request (`send`), not per attempt from the head. So when a first backend
//    is black-holed (the default connect timeout, 10 s, is longer than the default commit, 5 s),
//    the next backend is committed the instant its head arrives — before it has sent a single
//    byte, let alone been silent for 5 s. Every failure of that backend before its first event is
//    then a 200 with an error event instead of a failover to the third backend (or, for a request
//    fault, an HTTP 400). A GPU node dropping off the network makes every stream request in the
//    next 10 s lose its failover.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_backend_reached_by_failover_after_the_commit_time_is_still_failed_over_before_its_first_event() {
    const ROLE: &str = ROLE_EVENT;
    const TOKEN: &str = TOKEN_EVENT;
    let (gw, upstream, runtime) = gateway();
    let config = ordered_backends(&[("GATEWAY_KEEPALIVE_MS", "1000")]);
    upstream.push(Script::Hang); // a: black-holed, the connect timeout (10 s) fails it over
                                 // b: takes the request, then its connection resets 100 ms later, before any event.
    upstream.push(Script::sse_timed(vec![(100, Err(BodyError("reset".into())))]));
    upstream.push(Script::sse(&[ROLE, TOKEN, DONE_EVENT])); // c: answers
    let (status, _, body) = text(run(gw.handle(Ok(&config), post_chat(KEY, STREAM))));
    let content: String = body.split_inclusive("\n\n").filter(|e| !e.starts_with(':')).collect();
    assert_eq!(
        (status, content.as_str(), upstream.hosts()),
        (
            200,
            format!("{ROLE}{TOKEN}{DONE_EVENT}").as_str(),
            vec!["a.internal".into(), "b.internal".into(), "c.internal".into()]
        ),
        "DEFECT: b was committed before its first event, so its reset became an error event in a 200 and c \
         was never tried: {body}"
    );
    let _ = runtime;
}

// ---------------------------------------------------------------------------------------------
// 2. Poison request → every backend ejected. A stream event larger than MAX_EVENT_BYTES (4 MiB)
//    is treated as "the backend sent a malformed stream" with Blame::BROKEN: failed over and
//    counted against each backend at once. But a legitimate request makes vLLM send exactly such
//    an event: `POST /v1/completions {"echo":true,"logprobs":20,"stream":true}` (logprobs ≤ 20 is
//    what the gateway allows) with a ~7k-token prompt (~28 kB, far under the 512 KiB content
//    cap) — vLLM's first chunk echoes the prompt with its top-20 logprobs per prompt token
//    (~600 B each). Three such requests (max_attempts 3, eject_after 3) eject every backend of
//    the model for 30 s: every other caller gets 503, and the attacker repeats every 30 s. The
//    caller's own request also always fails, although the backend answered correctly. (Same cap,
//    after the first delta: a Responses stream with `include:["message.output_text.logprobs"]`,
//    `top_logprobs:20` carries every token's logprobs again in `response.completed`, >4 MiB past
//    ~3.5k output tokens, so such answers end in an error event and lose their usage.)
// ---------------------------------------------------------------------------------------------

/// vLLM's first chunk for an echoed prompt with logprobs: one event of `size` bytes, arriving
/// in 64 KiB reads as it would off a socket.
fn echoed_prompt_logprobs(size: usize) -> Script {
    let mut event = br#"data: {"id":"cmpl-1","object":"text_completion","choices":[{"index":0,"text":"x","logprobs":{"top_logprobs":[{"#.to_vec();
    while event.len() < size {
        event.extend_from_slice(br#""tok":-1.2345678901234567,"#);
    }
    event.extend_from_slice(br#""end":-1.0}]}}]}"#);
    event.extend_from_slice(b"\n\n");
    let mut chunks: Vec<(u64, Result<Vec<u8>, BodyError>)> =
        event.chunks(64 << 10).map(|c| (0, Ok(c.to_vec()))).collect();
    chunks.push((0, Ok(DONE_EVENT.as_bytes().to_vec())));
    Script::sse_timed(chunks)
}

#[test]
fn a_stream_whose_first_event_is_over_4_mib_neither_fails_nor_ejects_every_backend() {
    let (gw, upstream, _) = gateway();
    let config = ordered_backends(&[]);
    let echo = r#"{"model":"llama","prompt":"...","echo":true,"logprobs":20,"max_tokens":1,"stream":true}"#;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        upstream.push(echoed_prompt_logprobs(5 << 20));
        let (status, _, body) = text(run(gw.handle(Ok(&config), post_to("/v1/completions", KEY, echo))));
        assert!(body.len() > 5 << 20 && body.ends_with(DONE_EVENT), "relayed whole");
        statuses.push(status);
    }
    assert_eq!(upstream.hosts(), ["a.internal"; 3], "one backend request each: nothing failed over");
    upstream.push(Script::json(200, METERED_COMPLETION));
    let (status, _, body) = text(run(gw.handle(Ok(&config), post_chat(METERED_KEY, METERED_CHAT))));
    assert_eq!(
        status,
        200,
        "DEFECT: three echo+logprobs completions (answered {statuses:?}, {} backend requests) ejected every \
         backend of the model; an innocent chat now gets {status}: {body}",
        upstream.sent.borrow().len()
    );
    assert!(
        statuses.iter().all(|s| *s == 200),
        "DEFECT: the backend's correct answer (one 5 MiB event) was refused as malformed: {statuses:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Token estimate undercut: llama.cpp's `n_cmpl`. llama.cpp reads the number of completions as
//    `n_cmpl`, falling back to `n` (server-task.cpp `params_from_json_cmpl`: `n_cmpl =
//    json_value(data, "n_cmpl", json_value(data, "n", 1))`, capped only by the server's slot
//    count), on /v1/chat/completions, /v1/completions and /v1/responses alike. The gateway checks
//    and counts `n` and `best_of` only, so `"n_cmpl": 4` generates four completions on a request
//    admitted (and length-capped) as one, and escapes GATEWAY_MAX_N as well.
// ---------------------------------------------------------------------------------------------

#[test]
fn llama_cpp_n_cmpl_is_counted_as_choices_or_refused_on_every_generating_endpoint() {
    let caps = caps();
    let cases: Vec<(&str, Result<Validated, _>)> = vec![
        (
            "chat",
            validate_chat(
                br#"{"model":"llama","n_cmpl":4,"max_tokens":400,"messages":[{"role":"user","content":"hi"}]}"#,
                &caps,
            ),
        ),
        ("completions", validate_completions(br#"{"model":"llama","n_cmpl":4,"max_tokens":400,"prompt":"hi"}"#, &caps)),
        (
            "responses",
            validate_responses(br#"{"model":"llama","n_cmpl":4,"max_output_tokens":400,"input":"hi"}"#, &caps),
        ),
    ];
    let escaped: Vec<String> = cases
        .iter()
        .filter(|(_, result)| !refused_or(result, |v| v.choices >= 4))
        .map(|(name, result)| format!("{name}: admitted as {} choice(s)", result.as_ref().unwrap().choices))
        .collect();
    assert!(
        escaped.is_empty(),
        "DEFECT: llama.cpp generates n_cmpl = 4 completions of up to 400 tokens, but the gateway admits:\n{}",
        escaped.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 4. GATEWAY_MAX_TOKENS / GATEWAY_MAX_N escape on /v1/responses. The Responses validator checks
//    `max_output_tokens` only, and never looks at `n`. llama.cpp serves /v1/responses by copying
//    the whole body into a chat request (server-chat.cpp `server_chat_convert_responses_to_chatcmpl`:
//    `chatcmpl_body = response_body`, then `max_tokens = max_output_tokens`), and its length is
//    `n_predict ← max_completion_tokens ← max_tokens`: a caller's `max_completion_tokens` wins over
//    the converted (or gateway-injected) `max_output_tokens`. So
//    `{"input":"x","max_output_tokens":16,"max_completion_tokens":1000000}` is admitted on 16
//    tokens and generates until the context is full; `"n": 4` (llama.cpp: `n_cmpl ← n`) is passed
//    on unchecked and generates four answers on a one-answer estimate.
// ---------------------------------------------------------------------------------------------

#[test]
fn responses_refuses_chat_length_and_choice_fields_a_backend_would_honour() {
    let caps = caps();
    let cases: [(&str, u32, u32); 2] = [
        (r#"{"model":"llama","input":"x","max_output_tokens":16,"max_completion_tokens":1000000}"#, 1_000_000, 1),
        (r#"{"model":"llama","input":"x","max_output_tokens":16,"n":4}"#, 16, 4),
    ];
    let escaped: Vec<String> = cases
        .into_iter()
        .filter_map(|(body, tokens, choices)| match validate_responses(body.as_bytes(), &caps) {
            Err(_) => None,
            Ok(v) if v.max_tokens.unwrap_or(0) >= tokens && v.choices >= choices => None,
            Ok(v) => Some(format!(
                "{body}: llama.cpp generates {choices} × {tokens}, admitted as {} × {:?}",
                v.choices, v.max_tokens
            )),
        })
        .collect();
    assert!(
        escaped.is_empty(),
        "DEFECT: chat fields llama.cpp honours on /v1/responses escape GATEWAY_MAX_TOKENS ({}) and the estimate:\n{}",
        caps.max_tokens,
        escaped.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 5. `echo` with `max_tokens: 0` ("scores the prompt without generating") is admitted with a
//    completion estimate of zero and sent on as `max_tokens: 0`. llama-cpp-python — the server
//    `make test-real` runs against — accepts it (`CreateCompletionRequest.max_tokens: ge=0`) and
//    then treats it as UNLIMITED: llama.py `if max_tokens is None or max_tokens <= 0: max_tokens =
//    self._n_ctx - len(prompt_tokens)`. A caller gets a full-context generation past
//    GATEWAY_MAX_TOKENS on a zero-token estimate. And because `optional_integer` maps every
//    negative number to `Some(0)`, `"max_tokens": -1` passes too and is forwarded verbatim.
// ---------------------------------------------------------------------------------------------

#[test]
fn echo_with_max_tokens_zero_or_negative_cannot_generate_past_the_cap_on_no_estimate() {
    let caps = caps();
    for body in [
        br#"{"model":"llama","prompt":"x","echo":true,"max_tokens":0}"#.as_slice(),
        br#"{"model":"llama","prompt":"x","echo":true,"max_tokens":-1}"#.as_slice(),
    ] {
        assert!(
            validate_completions(body, &caps).is_err(),
            "DEFECT: {} is admitted — llama-cpp-python generates up to n_ctx for it",
            String::from_utf8_lossy(body)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Prompt text the backend tokenizes but the gateway never counts: vLLM's Responses API takes
//    `previous_input_messages` (harmony messages prepended to the prompt —
//    serving.py `_construct_input_messages_with_harmony` → `construct_harmony_previous_input_messages`)
//    and `previous_response` (a whole earlier response whose history is replayed). Neither counts
//    toward GATEWAY_MAX_CONTENT_BYTES or the estimate, and neither is "stateful", so a 900 kB
//    history passes a 512 KiB content cap and is admitted on a one-token prompt. (The body cap,
//    1 MiB by default, is the only bound left.)
// ---------------------------------------------------------------------------------------------

#[test]
fn responses_history_fields_count_toward_the_content_cap_and_the_estimate() {
    let caps = caps();
    let history = "h".repeat(900_000);
    let body = format!(
        r#"{{"model":"llama","input":"x","previous_input_messages":[{{"role":"user","content":"{history}"}}]}}"#
    );
    let result = validate_responses(body.as_bytes(), &caps);
    assert!(
        refused_or(&result, |v| v.prompt_estimate() >= 200_000),
        "DEFECT: 900 kB of previous_input_messages admitted on a prompt estimate of {} tokens (content cap {} bytes)",
        result.as_ref().map(|v| v.prompt_estimate()).unwrap_or_default(),
        caps.max_content_bytes
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Budget bypass with `background: true, stream: true` (vLLM runs the generation in its own
//    task — serving.py `_run_background_request_stream` — that the client's connection does not
//    own). The gateway treats it as any stream: when the client leaves after the first delta it
//    settles on "prompt estimate + deltas relayed", and releases the in-flight slot. vLLM keeps
//    generating up to max_output_tokens; the caller then fetches the whole answer with
//    `GET /v1/responses/{id}`, which is charged zero tokens. So a 4000-token answer costs ~2
//    tokens of budget, and any number of them run at once under max_in_flight 1.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_background_stream_the_client_leaves_is_charged_what_the_backend_goes_on_generating() {
    let (gw, upstream, runtime, store) = recording_gateway();
    let config = config_with(
        "GATEWAY_BACKENDS",
        r#"[{"name":"gpu","url":"http://gpu.internal","models":["llama"]},{"name":"q","url":"http://q.internal","models":["qwen"]}]"#,
    );
    let created = "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"status\":\"queued\",\"usage\":null}}\n\n";
    let delta = "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":1,\"delta\":\"a\"}\n\n";
    upstream.push(Script::StreamThenStall(vec![created, delta]));
    let body =
        r#"{"model":"llama","input":"write a long essay","background":true,"stream":true,"max_output_tokens":500}"#;
    let response = run(gw.handle(Ok(&config), post_to("/v1/responses", METERED_KEY, body)));
    assert_eq!(response.status, 200);
    let Body::Stream(mut stream) = response.body else { panic!("a stream") };
    let first = String::from_utf8(run(stream.next()).unwrap().unwrap()).unwrap();
    assert!(first.contains("output_text.delta"), "{first}");
    drop(stream); // the client has its response id; the backend goes on in the background
    runtime.run_spawned();
    // Admitted on 5 prompt tokens + 500; the backend generates the 500 whatever the client does.
    let delta = token_delta(&store);
    assert!(
        delta >= -5,
        "DEFECT: the background generation was settled with delta {delta} (charged {} of 505 tokens) \
         although vLLM goes on generating all of it for GET /v1/responses/resp_1",
        505 + delta
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Real-backend timing: llama.cpp's server (llama-server) sends a stream's status and headers
//    only with its first result — after the whole prefill and the first token — so that an error
//    there is still an HTTP error (server-context.cpp: "in streaming mode, the first error must be
//    treated as non-stream response": `first_result = rd.next(should_stop)` before `res->status =
//    200`). The gateway assumes every server "streams answers with headers as soon as it takes the
//    request" and gives the head only GATEWAY_CONNECT_TIMEOUT_MS (10 s) instead of the first-byte
//    timeout (60 s). So on llama.cpp every stream whose prefill takes more than 10 s (a 16k-token
//    prompt on a consumer GPU, anything long on CPU) is abandoned, the same prefill is started
//    again on the next backend, and the client gets a 504 "did not accept the request in time"
//    after max_attempts × 10 s — and the keep-alive, which needs the head, never engages.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_llama_server_stream_whose_head_comes_with_its_first_token_after_a_long_prefill_is_served() {
    // The operator says so per backend: `connect_timeout_ms` covers llama-server's prefill.
    let (gw, upstream, runtime) = gateway();
    let config = config_with(
        "GATEWAY_BACKENDS",
        r#"[{"name":"a","url":"http://a.internal","models":["llama"],"connect_timeout_ms":60000},
            {"name":"b","url":"http://b.internal","models":["llama","qwen"],"priority":1,"connect_timeout_ms":60000}]"#,
    );
    for _ in 0..3 {
        // llama-server: 15 s of prefill, then the head and the first events together.
        upstream.push(Script::sse(&[ROLE_EVENT, TOKEN_EVENT, DONE_EVENT]).after(15_000));
    }
    let t0 = runtime.now();
    let (status, _, body) = text(run(gw.handle(Ok(&config), post_chat(KEY, STREAM))));
    assert!(body.contains(TOKEN_EVENT) && body.ends_with(DONE_EVENT), "the whole answer, behind comments: {body}");
    assert_eq!(
        (status, upstream.hosts()),
        (200, vec!["a.internal".to_string()]),
        "DEFECT: a 15 s prefill (first token well within the 60 s first-byte timeout) on llama-server was \
         abandoned at the 10 s connect timeout and replayed on every backend; after {} ms the client got: {body}",
        runtime.now() - t0
    );
}

// ---------------------------------------------------------------------------------------------
// 9. Metrics disagree with the bill. A non-stream answer without `usage` (vLLM's background
//    response answers at once with `"status":"queued","usage":null`; servers that omit usage) is
//    settled on the whole admission estimate, but its log line and data point record no usage at
//    all — zero prompt and completion tokens, and no `usage_estimated` — so the operator's token
//    charts miss exactly the requests that were charged the most.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_non_stream_answer_without_usage_records_the_tokens_it_was_charged() {
    let (gw, upstream, runtime) = gateway();
    let metrics = CapturedMetrics::default();
    let gw = gw.with_metrics(Rc::new(metrics.clone()));
    let config = config_with(
        "GATEWAY_BACKENDS",
        r#"[{"name":"gpu","url":"http://gpu.internal","models":["llama"]},{"name":"q","url":"http://q.internal","models":["qwen"]}]"#,
    );
    let queued = r#"{"id":"resp_1","object":"response","status":"queued","output":[],"usage":null}"#;
    upstream.push(Script::json(200, queued));
    let body = r#"{"model":"llama","input":"write a long essay","background":true,"max_output_tokens":500}"#;
    let (status, headers, _) = text(run(gw.handle(Ok(&config), post_to("/v1/responses", METERED_KEY, body))));
    assert_eq!(status, 200);
    runtime.run_spawned();
    let remaining: u64 = headers.get("x-ratelimit-remaining-tokens").unwrap().parse().unwrap();
    let record = runtime.records().pop().unwrap();
    let point = metrics.0.borrow()[0].clone();
    assert!(
        record["usage"].is_object() && point.doubles[2] + point.doubles[3] > 0.0,
        "DEFECT: charged {} tokens (the estimate), but the record says usage {} and the data point {:?}",
        1000 - remaining,
        record["usage"],
        point.doubles
    );
}

// ---------------------------------------------------------------------------------------------
// 11. The `prompt_embeds` refusal is bypassed through content parts. The gateway refuses a
//     top-level `prompt_embeds` because it is a tensor "that vLLM deserializes with torch" (the
//     class of CVE-2025-62164, memory corruption from a crafted tensor). vLLM also takes tensors
//     as chat content parts — `{"type":"image_embeds"}`, `audio_embeds`, `video_embeds` (behind
//     `--enable-mm-embeds`) and, in current vLLM, `{"type":"prompt_embeds","data":…}` (behind
//     `--enable-prompt-embeds`) — decoded by the same torch loader (chat_utils.py
//     `parse_prompt_embeds` → `safe_load_prompt_embeds`, `parse_image_embeds` →
//     `fetch_image_embedding`). An unknown part type is treated as text by `check_parts`, so all
//     of them reach the backend: on any deployment that enabled those flags for its own use, every
//     API key can hand the GPU server a tensor to deserialize.
// ---------------------------------------------------------------------------------------------

#[test]
fn tensor_content_parts_are_refused_like_prompt_embeds() {
    let caps = caps();
    let tensor = "UEsDBAAACAgAAAAAAAAAAAAAAAAAAAAAAAAQABIAYXJjaGl2ZS9kYXRhLnBrbA==";
    let passed: Vec<&str> = ["prompt_embeds", "image_embeds", "audio_embeds", "video_embeds"]
        .into_iter()
        .filter(|kind| {
            let body = format!(
                r#"{{"model":"llama","messages":[{{"role":"user","content":[{{"type":"{kind}","{kind}":"{tensor}"}},{{"type":"text","text":"describe"}}]}}]}}"#
            );
            validate_chat(body.as_bytes(), &caps).is_ok()
        })
        .collect();
    assert!(
        passed.is_empty(),
        "DEFECT: base64 tensors in content parts of type {passed:?} pass to the backend, although top-level \
         prompt_embeds is refused for being a tensor vLLM deserializes with torch"
    );
}

// ---------------------------------------------------------------------------------------------
// 12. Passive health goes blind after the commit. `send` records a backend's success as soon as
//     `attempt` returns, which since the keep-alive change is the commit — the backend's head plus
//     5 s of silence, before it has produced anything. A failure after that (its connection
//     reset, its error event) is only the stream's final error event and is never recorded. So a
//     backend that takes every request and fails each one 6 s in (a pod behind an ingress that
//     dies during long prefills, an engine crashing on every long prompt) is "healthy" forever:
//     the primary tier keeps getting 100% of the traffic and every client gets an error, where
//     before the change each request failed over and the backend was ejected after three.
//     (With the documented GATEWAY_STREAM_COMMIT_MS=0, every pre-content failure is invisible.)
// ---------------------------------------------------------------------------------------------

#[test]
fn a_backend_that_fails_every_stream_after_the_commit_is_still_ejected() {
    let (gw, upstream, _) = gateway();
    let config = ordered_backends(&[("GATEWAY_EJECT_AFTER_FAILURES", "2"), ("GATEWAY_KEEPALIVE_MS", "1000")]);
    let mut bodies = Vec::new();
    for i in 0..3 {
        if i < 2 {
            // a takes the request, then its connection resets 6 s later, before any event; b answers.
            upstream.push(Script::sse_timed(vec![(6_000, Err(BodyError("reset".into())))]));
        }
        upstream.push(Script::sse(&[ROLE_EVENT, DONE_EVENT]));
        let (_, _, body) = text(run(gw.handle(Ok(&config), post_chat(KEY, STREAM))));
        bodies.push(body);
    }
    assert_eq!(
        upstream.hosts(),
        ["a.internal", "b.internal", "a.internal", "b.internal", "b.internal"],
        "DEFECT: a failed two streams in a row after the commit (eject after 2), yet it got the third request \
         too: {bodies:?}"
    );
}
