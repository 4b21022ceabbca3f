//! The endpoints beside chat — embeddings, legacy completions, the Responses API, model lookup
//! and stored responses — through the whole gateway: routed, validated, budgeted, proxied to the
//! same path, relayed in their own stream shapes, and settled on their own usage.

use crate::support::*;
use edge_gateway::core::http::{Body, BodyError, Request};
use futures::StreamExt;

/// A single-backend deployment (`llama` on `gpu`) for the metered key, or two backends for `qwen`.
fn deployment() -> edge_gateway::core::Config {
    config_with(
        "GATEWAY_BACKENDS",
        r#"[{"name":"gpu","url":"http://gpu.internal","models":["llama"]},
            {"name":"q1","url":"http://q1.internal","models":["qwen"]},
            {"name":"q2","url":"http://q2.internal","models":["qwen"],"priority":1}]"#,
    )
}

fn tokens_remaining(headers: &edge_gateway::core::http::Headers) -> u64 {
    headers.get("x-ratelimit-remaining-tokens").unwrap().parse().unwrap()
}

const EMBEDDING: &str = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,0.2]}],"model":"llama","usage":{"prompt_tokens":7,"total_tokens":7}}"#;
const TEXT_COMPLETION: &str = r#"{"id":"cmpl-1","object":"text_completion","choices":[{"index":0,"text":" there","finish_reason":"length"}],"usage":{"prompt_tokens":3,"completion_tokens":16,"total_tokens":19}}"#;
const RESPONSE: &str = r#"{"id":"resp_1","object":"response","status":"completed","output":[{"type":"message","role":"assistant","content":[{"type":"output_text","text":"hi"}]}],"usage":{"input_tokens":9,"output_tokens":4,"total_tokens":13}}"#;

/// Responses API stream events, as vLLM frames them.
fn event(kind: &str, data: &str) -> String {
    format!("event: {kind}\ndata: {data}\n\n")
}

fn response_events() -> Vec<String> {
    vec![
        event(
            "response.created",
            r#"{"type":"response.created","sequence_number":0,"response":{"id":"resp_1","status":"in_progress","error":null,"usage":null}}"#,
        ),
        event(
            "response.output_text.delta",
            r#"{"type":"response.output_text.delta","sequence_number":1,"delta":"hi"}"#,
        ),
        event(
            "response.output_text.delta",
            r#"{"type":"response.output_text.delta","sequence_number":2,"delta":" there"}"#,
        ),
        event(
            "response.completed",
            r#"{"type":"response.completed","sequence_number":3,"response":{"id":"resp_1","status":"completed","error":null,"usage":{"input_tokens":9,"output_tokens":2,"total_tokens":11}}}"#,
        ),
    ]
}

#[test]
fn each_endpoint_reaches_the_same_path_and_settles_on_its_own_usage() {
    let cases = [
        ("/v1/embeddings", r#"{"model":"llama","input":["alpha","beta"]}"#, EMBEDDING, 7, "embeddings"),
        ("/v1/completions", r#"{"model":"llama","prompt":"Hello"}"#, TEXT_COMPLETION, 19, "completions"),
        ("/v1/responses", r#"{"model":"llama","input":"Hello"}"#, RESPONSE, 13, "responses"),
    ];
    for (path, body, answer, used, route) in cases {
        let (gw, upstream, runtime) = gateway();
        let config = deployment();
        upstream.push(Script::json(200, answer));
        let (status, _, answered) = text(run(gw.handle(Ok(&config), post_to(path, METERED_KEY, body))));
        assert_eq!((status, answered.as_str()), (200, answer), "{path}: relayed as it came");
        assert_eq!(upstream.sent.borrow()[0].url, format!("http://gpu.internal{path}"));
        runtime.run_spawned();
        upstream.push(Script::json(200, answer));
        let (_, headers, _) = text(run(gw.handle(Ok(&config), post_to(path, METERED_KEY, body))));
        let estimate = 1000 - used - tokens_remaining(&headers);
        assert!(estimate > 0, "{path}: the second request is admitted on its estimate");
        let record = runtime.records().remove(0);
        assert_eq!(record["usage"]["total_tokens"], used, "{path}");
        assert_eq!(record["route"], route, "{path}");
    }
}

#[test]
fn a_legacy_completion_without_max_tokens_gets_openais_sixteen() {
    let (gw, upstream, _) = gateway();
    upstream.push(Script::json(200, TEXT_COMPLETION));
    text(run(gw.handle(Ok(&deployment()), post_to("/v1/completions", KEY, r#"{"model":"llama","prompt":"Hi"}"#))));
    assert_eq!(upstream.last_body()["max_tokens"], 16);
}

#[test]
fn an_answer_of_the_wrong_shape_is_a_502_and_fails_over() {
    let (gw, upstream, _) = gateway();
    upstream.push(Script::json(200, TEXT_COMPLETION)); // a completion where an embedding list was due
    upstream.push(Script::json(200, EMBEDDING));
    let body = r#"{"model":"qwen","input":"x"}"#;
    let (status, _, text) = text(run(gw.handle(Ok(&deployment()), post_to("/v1/embeddings", KEY, body))));
    assert_eq!((status, text.as_str()), (200, EMBEDDING));
    assert_eq!(upstream.hosts(), ["q1.internal", "q2.internal"]);
}

#[test]
fn a_legacy_completion_streams_its_chunks_and_drops_the_usage_chunk_unless_asked() {
    let chunk =
        "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"choices\":[{\"index\":0,\"text\":\"a\"}]}\n\n";
    let usage = "data: {\"id\":\"cmpl-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\n";
    let (gw, upstream, runtime) = gateway();
    upstream.push(Script::sse(&[chunk, chunk, usage, DONE_EVENT]));
    let body = r#"{"model":"llama","prompt":"x","stream":true}"#;
    let (status, _, text) = text(run(gw.handle(Ok(&deployment()), post_to("/v1/completions", KEY, body))));
    assert_eq!((status, text), (200, format!("{chunk}{chunk}{DONE_EVENT}")));
    assert_eq!(upstream.last_body()["stream_options"]["include_usage"], true);
    runtime.run_spawned();
    assert_eq!(runtime.records()[0]["usage"]["total_tokens"], 3);
}

#[test]
fn a_responses_stream_is_relayed_as_it_came_and_settled_from_response_completed() {
    let (gw, upstream, runtime) = gateway();
    let events = response_events();
    upstream.push(Script::sse(&events.iter().map(String::as_str).collect::<Vec<_>>()));
    let body = r#"{"model":"llama","input":"x","stream":true}"#;
    let (status, headers, text) = text(run(gw.handle(Ok(&deployment()), post_to("/v1/responses", METERED_KEY, body))));
    assert_eq!((status, headers.get("content-type")), (200, Some("text/event-stream")));
    assert_eq!(text, events.concat(), "every event, unchanged, and no [DONE] added");
    runtime.run_spawned();
    let record = runtime.records().remove(0);
    assert_eq!(
        (record["usage"]["prompt_tokens"].as_u64(), record["usage"]["completion_tokens"].as_u64()),
        (Some(9), Some(2))
    );
    assert_eq!(record["stream_end"], "done");
}

#[test]
fn a_responses_stream_that_fails_after_its_first_delta_ends_with_the_responses_error_event() {
    let events = response_events();
    let failed = event(
        "response.failed",
        r#"{"type":"response.failed","sequence_number":3,"response":{"status":"failed","error":{"code":"server_error","message":"CUDA error at /srv/model.py (http://10.0.0.7:8000)"}}}"#,
    );
    let broken = Script::sse_timed(vec![
        (0, Ok(events[0].clone().into_bytes())),
        (0, Ok(events[1].clone().into_bytes())),
        (0, Err(BodyError("reset".into()))),
    ]);
    let cases = [("response.failed", Script::sse(&[&events[0], &events[1], &events[2], &failed])), ("a reset", broken)];
    for (name, script) in cases {
        let (gw, upstream, runtime) = gateway();
        upstream.push(script);
        let body = r#"{"model":"llama","input":"x","stream":true}"#;
        let (status, _, text) = text(run(gw.handle(Ok(&deployment()), post_to("/v1/responses", KEY, body))));
        assert_eq!(status, 200, "{name}");
        let (before, last) = text.trim_end().rsplit_once("\n\n").unwrap();
        assert!(before.starts_with("event: response.created"), "{name}: {text}");
        let data = last.strip_prefix("event: error\ndata: ").unwrap_or_else(|| panic!("{name}: {last}"));
        let error: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!((error["type"].as_str(), error["code"].as_str()), (Some("error"), Some("upstream_error")), "{name}");
        assert!(error["message"].is_string() && error.get("param").is_some(), "{name}: {error}");
        let relayed = before.matches("event: ").count() as u64;
        assert_eq!(error["sequence_number"], relayed, "{name}: numbered after what was relayed");
        assert!(!text.contains("10.0.0.7") && !text.contains("/srv/"), "{name}: {text}");
        runtime.run_spawned();
        assert_eq!(runtime.records()[0]["stream_end"], "upstream_error", "{name}");
    }
}

#[test]
fn a_responses_stream_holds_its_opening_events_until_the_first_delta_so_early_failures_fail_over() {
    let events = response_events();
    let error = event(
        "error",
        r#"{"type":"error","code":"server_error","message":"engine dead","param":null,"sequence_number":1}"#,
    );
    let (gw, upstream, _) = gateway();
    upstream.push(Script::sse(&[&events[0], &error]));
    upstream.push(Script::sse(&events.iter().map(String::as_str).collect::<Vec<_>>()));
    let body = r#"{"model":"qwen","input":"x","stream":true}"#;
    let (status, _, text) = text(run(gw.handle(Ok(&deployment()), post_to("/v1/responses", KEY, body))));
    assert_eq!((status, text), (200, events.concat()));
    assert_eq!(upstream.hosts(), ["q1.internal", "q2.internal"], "nothing was committed: the second backend answered");
}

#[test]
fn a_responses_stream_waiting_for_its_first_delta_is_kept_alive_and_its_opening_events_held() {
    let events = response_events();
    let script = Script::sse_timed(
        [(0, &events[0]), (7_500, &events[1]), (0, &events[2]), (0, &events[3])]
            .into_iter()
            .map(|(gap, e)| (gap, Ok(e.clone().into_bytes())))
            .collect(),
    );
    let (gw, upstream, runtime) = gateway();
    upstream.push(script);
    let config = config_with_all(&[
        ("GATEWAY_BACKENDS", r#"[{"name":"gpu","url":"http://gpu.internal","models":["llama","qwen"]}]"#),
        ("GATEWAY_KEEPALIVE_MS", "1000"),
    ]);
    let t0 = runtime.now();
    let body = r#"{"model":"llama","input":"x","stream":true}"#;
    let response = run(gw.handle(Ok(&config), post_to("/v1/responses", KEY, body)));
    assert_eq!((response.status, runtime.now() - t0), (200, 5_000));
    let Body::Stream(mut stream) = response.body else { panic!("a stream") };
    let mut pieces = Vec::new();
    while let Some(piece) = run(stream.next()) {
        pieces.push((runtime.now() - t0, String::from_utf8(piece.unwrap()).unwrap()));
    }
    let comments: Vec<u64> = pieces.iter().filter(|(_, p)| p.starts_with(": keep-alive")).map(|(t, _)| *t).collect();
    assert_eq!(comments, [5_000, 6_000, 7_000], "comments from the commit until the first delta");
    let opening = pieces.iter().position(|(_, p)| p.starts_with("event: response.created")).unwrap();
    assert_eq!(pieces[opening].0, 7_500, "the opening events, held until the first delta, then");
    assert_eq!(pieces[opening..].iter().map(|(_, p)| p.as_str()).collect::<String>(), events.concat());
    assert!(pieces.last().unwrap().1.contains("response.completed"));
}

#[test]
fn state_on_a_backend_is_used_only_where_one_backend_serves_the_model() {
    let (gw, upstream, _) = gateway();
    upstream.push(Script::json(200, RESPONSE));
    let continued = r#"{"model":"llama","input":"and then?","previous_response_id":"resp_1"}"#;
    let (status, _, _) = text(run(gw.handle(Ok(&deployment()), post_to("/v1/responses", KEY, continued))));
    assert_eq!(status, 200, "llama has one backend, which keeps the state");
    for (field, body) in [
        ("previous_response_id", r#"{"model":"qwen","input":"x","previous_response_id":"resp_1"}"#),
        ("background", r#"{"model":"qwen","input":"x","background":true}"#),
        ("input", r#"{"model":"qwen","input":[{"type":"item_reference","id":"msg_1"}]}"#),
    ] {
        let (status, _, text) = text(run(gw.handle(Ok(&deployment()), post_to("/v1/responses", KEY, body))));
        assert_eq!(status, 400, "{field}");
        let error = error_of(&text);
        assert_eq!(error["param"], field);
        assert!(error["message"].as_str().unwrap().contains("2 backends"), "{error}");
    }
    assert_eq!(upstream.hosts(), ["gpu.internal"]);
}

fn call(method: &str, path: &str, key: &str) -> Request {
    let mut request = get(path, Some(key));
    request.method = method.into();
    request
}

#[test]
fn stored_responses_pass_through_to_the_one_backend_that_serves_the_callers_models() {
    let (gw, upstream, _) = gateway();
    let config = config(); // `beta` may use qwen alone, served by gpu-b alone
    upstream.push(Script::json(200, RESPONSE));
    upstream.push(Script::json(200, r#"{"id":"resp_1","object":"response.deleted","deleted":true}"#));
    upstream.push(Script::json(200, RESPONSE));
    upstream.push(Script::json(404, r#"{"error":{"message":"Response with id 'resp_2' not found at /srv/x","type":"invalid_request_error","param":"response_id","code":404}}"#));
    let answers: Vec<(u16, String)> = [
        ("GET", "/v1/responses/resp_1"),
        ("DELETE", "/v1/responses/resp_1"),
        ("POST", "/v1/responses/resp_1/cancel"),
        ("GET", "/v1/responses/resp_2"),
    ]
    .into_iter()
    .map(|(method, path)| {
        let (status, _, body) = text(run(gw.handle(Ok(&config), call(method, path, OTHER_KEY))));
        (status, body)
    })
    .collect();
    assert_eq!(answers[0], (200, RESPONSE.to_string()));
    assert!(answers[1].1.contains("response.deleted"));
    assert_eq!(answers[3].0, 404);
    assert!(!answers[3].1.contains("/srv/"), "cleaned like every backend message: {}", answers[3].1);
    let sent: Vec<(String, String)> =
        upstream.sent.borrow().iter().map(|r| (r.method.to_string(), r.url.clone())).collect();
    assert_eq!(
        sent,
        [
            ("GET".into(), "https://gpu-b.internal/v1/responses/resp_1".into()),
            ("DELETE".into(), "https://gpu-b.internal/v1/responses/resp_1".into()),
            ("POST".into(), "https://gpu-b.internal/v1/responses/resp_1/cancel".into()),
            ("GET".into(), "https://gpu-b.internal/v1/responses/resp_2".into()),
        ]
    );
    let (status, _, body) = text(run(gw.handle(Ok(&config), call("GET", "/v1/responses/resp_1", KEY))));
    assert_eq!(status, 400, "`alpha` may use models on two backends: which one holds resp_1?");
    assert!(error_of(&body)["message"].as_str().unwrap().contains("one backend"));
}

#[test]
fn a_model_is_retrieved_only_by_callers_that_may_list_it() {
    let (gw, _, _) = gateway();
    let config = config();
    let (status, _, body) = text(run(gw.handle(Ok(&config), get("/v1/models/llama", Some(KEY)))));
    assert_eq!(status, 200);
    let model: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((model["id"].as_str(), model["object"].as_str()), (Some("llama"), Some("model")));
    for (key, path) in [(OTHER_KEY, "/v1/models/llama"), (KEY, "/v1/models/gpt-9"), (KEY, "/v1/models/lla%6Da%00")] {
        let (status, _, body) = text(run(gw.handle(Ok(&config), get(path, Some(key)))));
        assert_eq!(status, 404, "{path}");
        if !path.contains("%00") {
            assert_eq!(error_of(&body)["code"], "model_not_found", "{path}: as if it did not exist");
        }
    }
    let (status, _, _) = text(run(gw.handle(Ok(&config), get("/v1/models/llama", None))));
    assert_eq!(status, 401);
}

#[test]
fn a_slashed_model_id_is_found_escaped_or_not() {
    let (gw, _, _) = gateway();
    let config = config_with(
        "GATEWAY_BACKENDS",
        r#"[{"name":"gpu","url":"http://gpu.internal","models":["meta-llama/Llama-3.1-8B","llama","qwen"]}]"#,
    );
    for path in ["/v1/models/meta-llama/Llama-3.1-8B", "/v1/models/meta-llama%2FLlama-3.1-8B"] {
        let (status, _, body) = text(run(gw.handle(Ok(&config), get(path, Some(KEY)))));
        assert_eq!(status, 200, "{path}: {body}");
    }
}

#[test]
fn new_paths_answer_404_and_405_in_openais_shape() {
    let (gw, _, _) = gateway();
    let config = config();
    let cases = [
        ("GET", "/v1/embeddings", 405, Some("POST, OPTIONS")),
        ("GET", "/v1/completions", 405, Some("POST, OPTIONS")),
        ("PUT", "/v1/responses/resp_1", 405, Some("GET, DELETE, OPTIONS")),
        ("GET", "/v1/responses/resp_1/cancel", 405, Some("POST, OPTIONS")),
        ("POST", "/v1/models/llama", 405, Some("GET, OPTIONS")),
        ("GET", "/v1/responses/..%2Fadmin", 404, None),
        ("GET", "/v1/responses/resp_1/input_items/x", 404, None),
        ("GET", "/v1/files", 404, None),
        ("GET", "/v1/models/", 404, None),
    ];
    for (method, path, status, allow) in cases {
        let (got, headers, body) = text(run(gw.handle(Ok(&config), call(method, path, KEY))));
        assert_eq!(got, status, "{method} {path}");
        error_of(&body);
        assert_eq!(headers.get("allow"), allow, "{method} {path}");
    }
}

#[test]
fn opening_events_held_back_are_bounded() {
    // A backend that sends nothing but `response.in_progress` for ever: what is held goes out
    // once it passes a megabyte, instead of growing until the first-byte timeout.
    let progress = event(
        "response.in_progress",
        &format!(r#"{{"type":"response.in_progress","pad":"{}"}}"#, "x".repeat(64 << 10)),
    );
    let chunks = (0..40).map(|_| (0, Ok(progress.clone().into_bytes()))).collect();
    let (gw, upstream, _) = gateway();
    upstream.push(Script::sse_timed(chunks).then_silent());
    let body = r#"{"model":"llama","input":"x","stream":true}"#;
    let config = config_with("GATEWAY_FIRST_BYTE_TIMEOUT_MS", "3000");
    let response = run(gw.handle(Ok(&config), post_to("/v1/responses", KEY, body)));
    assert_eq!(response.status, 200, "begun, not held until the timeout");
}
