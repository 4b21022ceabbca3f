//! Native tests of the mock inference backend (`src/bin/mock-backend/`): the
//! end-to-end tests of the gateway rely on it behaving like vLLM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Drives real processes over real sockets on real time (the core's own tests run on a virtual clock).
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{
    connect, read_response, request, request_streaming, send_request, sse_events, wait_until, HttpResponse,
    MockBackend, StreamingResponse,
};

const CHAT: &str = "/v1/chat/completions";
const JSON: (&str, &str) = ("content-type", "application/json");

/// A chat request for the default model, with `extra` fields merged in.
fn chat_body(extra: Value) -> Value {
    let mut body = json!({
        "model": "mock-llama",
        "messages": [{"role": "user", "content": "Hello there!"}],
    });
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    body
}

fn chat(mock: &MockBackend, extra: Value) -> HttpResponse {
    let body = chat_body(extra).to_string();
    request(&mock.host_port(), "POST", CHAT, &[JSON], Some(body.as_bytes()))
}

fn chat_stream(mock: &MockBackend, extra: Value) -> StreamingResponse {
    let mut extra = extra;
    extra["stream"] = json!(true);
    let body = chat_body(extra).to_string();
    request_streaming(&mock.host_port(), "POST", CHAT, &[JSON], Some(body.as_bytes()))
}

/// The SSE payloads of a stream, parsed as JSON except for `[DONE]`.
fn parsed_events(body: &[u8]) -> Vec<Value> {
    sse_events(body)
        .iter()
        .map(|data| if data == "[DONE]" { json!("[DONE]") } else { serde_json::from_str(data).unwrap() })
        .collect()
}

#[test]
fn serves_health_and_lists_models() {
    let mock = MockBackend::start(&["--model", "alpha", "--model", "beta"]);

    let health = request(&mock.host_port(), "GET", "/health", &[], None);
    assert_eq!(health.status, 200);
    assert!(health.body.is_empty());
    assert_eq!(mock.stat("health_checks"), 1, "probes are counted");

    let models = request(&mock.host_port(), "GET", "/v1/models", &[], None);
    assert_eq!(models.status, 200);
    assert_eq!(models.header("content-type"), Some("application/json"));
    let models = models.json();
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["alpha", "beta"]);
    assert_eq!(models["data"][0]["owned_by"], "vllm");
    assert_eq!(models["data"][0]["max_model_len"], 4096);
}

#[test]
fn default_model_is_mock_llama() {
    let mock = MockBackend::start(&[]);
    let models = request(&mock.host_port(), "GET", "/v1/models", &[], None).json();
    assert_eq!(models["data"][0]["id"], "mock-llama");
}

#[test]
fn non_stream_completion_has_tokens_and_usage() {
    let mock = MockBackend::start(&["--chunks", "3"]);
    let response = chat(&mock, json!({}));
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(response.header("content-length").is_some());
    let body = response.json();
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-mock-"));
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "mock-llama");
    assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
    let choice = &body["choices"][0];
    assert_eq!(choice["message"], json!({"role": "assistant", "content": "tok0 tok1 tok2 "}));
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["logprobs"], Value::Null);
    // "Hello there!" is 12 bytes: 12 / 4 + 1 message = 4 prompt tokens.
    assert_eq!(body["usage"], json!({"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}));
}

#[test]
fn mock_field_overrides_the_token_count() {
    let mock = MockBackend::start(&["--chunks", "3"]);
    let body = chat(&mock, json!({"mock": {"chunks": 1}})).json();
    assert_eq!(body["choices"][0]["message"]["content"], "tok0 ");
}

#[test]
fn max_tokens_truncates_with_length_finish_reason() {
    let mock = MockBackend::start(&["--chunks", "5"]);
    for field in ["max_tokens", "max_completion_tokens"] {
        let body = chat(&mock, json!({ field: 2 })).json();
        assert_eq!(body["choices"][0]["message"]["content"], "tok0 tok1 ");
        assert_eq!(body["choices"][0]["finish_reason"], "length");
        assert_eq!(body["usage"]["completion_tokens"], 2);
    }
    let body = chat(&mock, json!({"max_tokens": 50})).json();
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
}

#[test]
fn stream_sends_role_tokens_finish_and_done_without_usage() {
    let mock = MockBackend::start(&["--chunks", "3"]);
    let mut stream = chat_stream(&mock, json!({}));
    assert_eq!(stream.status, 200);
    assert!(stream.header("content-type").unwrap().starts_with("text/event-stream"));
    assert_eq!(stream.header("transfer-encoding"), Some("chunked"));

    let chunks: Vec<Vec<u8>> = stream.by_ref().map(|(_, data)| data).collect();
    assert!(stream.finished_cleanly());
    // Each SSE event travels in its own HTTP chunk.
    assert_eq!(chunks.len(), 6);
    for chunk in &chunks {
        assert!(chunk.starts_with(b"data: ") && chunk.ends_with(b"\n\n"), "{:?}", String::from_utf8_lossy(chunk));
    }

    let events = parsed_events(&chunks.concat());
    assert_eq!(events.len(), 6);
    assert_eq!(events[0]["object"], "chat.completion.chunk");
    assert_eq!(events[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
    for (i, event) in events[1..4].iter().enumerate() {
        assert_eq!(event["choices"][0]["delta"], json!({ "content": format!("tok{i} ") }));
        assert_eq!(event["choices"][0]["finish_reason"], Value::Null);
        assert_eq!(event["id"], events[0]["id"]);
    }
    assert_eq!(events[4]["choices"][0]["delta"], json!({}));
    assert_eq!(events[4]["choices"][0]["finish_reason"], "stop");
    assert_eq!(events[5], "[DONE]");
    for event in &events[..5] {
        assert!(event.get("usage").is_none(), "unexpected usage in {event}");
    }
}

#[test]
fn stream_with_include_usage_ends_with_a_usage_chunk() {
    let mock = MockBackend::start(&["--chunks", "2"]);
    let mut stream = chat_stream(&mock, json!({"stream_options": {"include_usage": true}, "max_tokens": 1}));
    let events = parsed_events(&stream.read_to_end());
    // role, 1 token, finish, usage, [DONE]
    assert_eq!(events.len(), 5);
    for event in &events[..3] {
        assert_eq!(event["usage"], Value::Null);
        assert!(event.get("usage").is_some());
    }
    assert_eq!(events[2]["choices"][0]["finish_reason"], "length");
    assert_eq!(events[3]["choices"], json!([]));
    assert_eq!(events[3]["usage"], json!({"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5}));
    assert_eq!(events[4], "[DONE]");
}

#[test]
fn stream_chunks_arrive_spaced_by_delay_ms() {
    let mock = MockBackend::start(&[]);
    let stream = chat_stream(&mock, json!({"mock": {"chunks": 4, "delay_ms": 100}}));
    let arrivals: Vec<Instant> = stream.map(|(at, _)| at).collect();
    assert_eq!(arrivals.len(), 7);
    // Role chunk, then each token 100 ms after the previous chunk: every one
    // reached the client on its own, not buffered until the end.
    for pair in arrivals[..5].windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= Duration::from_millis(80), "tokens arrived only {gap:?} apart");
    }
}

#[test]
fn chunk_delay_flag_sets_the_default_pacing() {
    let mock = MockBackend::start(&["--chunks", "2", "--chunk-delay-ms", "150"]);
    let started = Instant::now();
    let body = chat_stream(&mock, json!({})).read_to_end();
    assert!(started.elapsed() >= Duration::from_millis(280));
    assert_eq!(sse_events(&body).len(), 5);
}

#[test]
fn api_key_is_enforced_on_v1_routes() {
    let mock = MockBackend::start(&["--api-key", "sekret"]);
    let addr = mock.host_port();

    let missing = request(&addr, "GET", "/v1/models", &[], None);
    assert_eq!(missing.status, 401);
    assert_eq!(missing.json(), json!({"error": "Unauthorized"}));
    let wrong = request(&addr, "GET", "/v1/models", &[("authorization", "Bearer nope")], None);
    assert_eq!(wrong.status, 401);
    let body = chat_body(json!({})).to_string();
    let chat_without_key = request(&addr, "POST", CHAT, &[JSON], Some(body.as_bytes()));
    assert_eq!(chat_without_key.status, 401);

    let right = request(&addr, "GET", "/v1/models", &[("authorization", "Bearer sekret")], None);
    assert_eq!(right.status, 200);
    let chat = request(&addr, "POST", CHAT, &[JSON, ("Authorization", "Bearer sekret")], Some(body.as_bytes()));
    assert_eq!(chat.status, 200);
    assert_eq!(request(&addr, "GET", "/health", &[], None).status, 200);
}

#[test]
fn unknown_model_is_404_in_vllm_shape() {
    let mock = MockBackend::start(&[]);
    let response = chat(&mock, json!({"model": "gpt-9"}));
    assert_eq!(response.status, 404);
    assert_eq!(
        response.json(),
        json!({"error": {"message": "The model `gpt-9` does not exist.", "type": "NotFoundError", "param": null, "code": 404}})
    );
}

#[test]
fn invalid_json_is_400_in_vllm_shape() {
    let mock = MockBackend::start(&[]);
    let response = request(&mock.host_port(), "POST", CHAT, &[JSON], Some(b"{\"model\": "));
    assert_eq!(response.status, 400);
    let body = response.json();
    assert_eq!(body["error"]["type"], "BadRequestError");
    assert_eq!(body["error"]["code"], 400);
    assert_eq!(chat(&mock, json!({"mock": {"fault": "nonsense"}})).status, 400);
}

#[test]
fn unknown_paths_are_404_and_wrong_methods_405() {
    let mock = MockBackend::start(&[]);
    let missing = request(&mock.host_port(), "GET", "/v1/nothing", &[], None);
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json(), json!({"detail": "Not Found"}));
    assert_eq!(request(&mock.host_port(), "GET", CHAT, &[], None).status, 405);
}

#[test]
fn fault_500_returns_a_vllm_internal_error() {
    let mock = MockBackend::start(&[]);
    let response = chat(&mock, json!({"mock": {"fault": "500"}}));
    assert_eq!(response.status, 500);
    assert_eq!(
        response.json(),
        json!({"error": {"message": "internal engine failure at /srv/secret/path", "type": "InternalServerError", "param": null, "code": 500}})
    );
}

#[test]
fn fault_429_sets_retry_after() {
    let mock = MockBackend::start(&[]);
    let response = chat(&mock, json!({"stream": true, "mock": {"fault": "429"}}));
    assert_eq!(response.status, 429);
    assert_eq!(response.header("retry-after"), Some("1"));
    assert_eq!(response.json()["error"]["code"], 429);
}

#[test]
fn fault_400_reports_the_context_length() {
    let mock = MockBackend::start(&[]);
    let response = chat(&mock, json!({"mock": {"fault": "400"}}));
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["error"]["message"], "This model's maximum context length is 4096 tokens.");
}

#[test]
fn fault_garbage_and_plain_text_500_return_non_json_bodies() {
    let mock = MockBackend::start(&[]);
    let garbage = chat(&mock, json!({"mock": {"fault": "garbage"}}));
    assert_eq!(garbage.status, 200);
    assert_eq!(garbage.header("content-type"), Some("application/json"));
    assert_eq!(garbage.body, b"\x00\xffnot json");

    let plain = chat(&mock, json!({"mock": {"fault": "plain_text_500"}}));
    assert_eq!(plain.status, 500);
    assert!(plain.header("content-type").unwrap().starts_with("text/plain"));
    assert_eq!(plain.text(), "upstream exploded");
}

#[test]
fn fault_malformed_sse_sends_broken_events() {
    let mock = MockBackend::start(&[]);
    let mut stream = chat_stream(&mock, json!({"mock": {"fault": "malformed_sse"}}));
    assert_eq!(stream.status, 200);
    assert!(stream.header("content-type").unwrap().starts_with("text/event-stream"));
    assert_eq!(sse_events(&stream.read_to_end()), ["{not json", "[DONE]"]);
}

#[test]
fn fault_hang_never_answers_until_the_client_leaves() {
    let mock = MockBackend::start(&[]);
    let conn = connect(&mock.host_port()).unwrap();
    let body = chat_body(json!({"mock": {"fault": "hang"}})).to_string();
    send_request(&conn, &mock.host_port(), "POST", CHAT, &[JSON], Some(body.as_bytes())).unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let err = (&conn).read(&mut [0; 64]).expect_err("the hanging request was answered");
    assert!(matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "{err}");
    drop(conn);
    assert!(wait_until(Duration::from_secs(2), || mock.stat("client_disconnects") == 1));
}

#[test]
fn fault_reset_cuts_the_stream_after_two_tokens() {
    let mock = MockBackend::start(&["--chunks", "6"]);
    let mut stream = chat_stream(&mock, json!({"mock": {"fault": "reset"}}));
    assert_eq!(stream.status, 200);
    let body = stream.read_to_end();
    assert!(!stream.finished_cleanly(), "the stream ended with its terminating chunk");
    assert!(stream.error().is_some());
    let events = parsed_events(&body);
    assert_eq!(events.len(), 3);
    assert_eq!(events[2]["choices"][0]["delta"]["content"], "tok1 ");
}

#[test]
fn fault_reset_truncates_a_non_stream_body() {
    let mock = MockBackend::start(&[]);
    let body = chat_body(json!({"mock": {"fault": "reset"}})).to_string();
    let result = support::try_request(&mock.host_port(), "POST", CHAT, &[JSON], Some(body.as_bytes()));
    assert!(result.is_err(), "a truncated body was accepted: {result:?}");
}

#[test]
fn stats_count_open_streams_and_client_disconnects() {
    let mock = MockBackend::start(&["--chunks", "100", "--chunk-delay-ms", "30"]);
    let mut first = chat_stream(&mock, json!({}));
    let mut second = chat_stream(&mock, json!({}));
    assert!(first.next_chunk().is_some() && second.next_chunk().is_some());
    assert!(wait_until(Duration::from_secs(2), || mock.stat("open_streams") == 2));

    drop(first);
    assert!(wait_until(Duration::from_secs(2), || {
        let stats = mock.stats();
        stats["client_disconnects"] == 1 && stats["open_streams"] == 1
    }));
    second.disconnect();
    assert!(wait_until(Duration::from_secs(2), || mock.stat("open_streams") == 0));

    let stats = mock.stats();
    assert_eq!(stats["requests"], 2);
    assert_eq!(stats["max_open_streams"], 2);
    assert_eq!(stats["client_disconnects"], 2);

    mock.reset_stats();
    let stats = mock.stats();
    assert_eq!(
        stats,
        json!({"requests": 0, "open_streams": 0, "max_open_streams": 0, "client_disconnects": 0, "health_checks": 0, "non_stream_in_progress": 0})
    );
}

#[test]
fn disconnect_is_noticed_during_a_long_delay() {
    let mock = MockBackend::start(&[]);
    let mut stream = chat_stream(&mock, json!({"mock": {"chunks": 3, "delay_ms": 5000}}));
    assert!(stream.next_chunk().is_some(), "no role chunk");
    assert!(wait_until(Duration::from_secs(2), || mock.stat("open_streams") == 1));
    let dropped = Instant::now();
    drop(stream);
    assert!(wait_until(Duration::from_secs(2), || mock.stat("client_disconnects") == 1));
    assert!(dropped.elapsed() < Duration::from_secs(1), "took {:?}", dropped.elapsed());
    assert_eq!(mock.stat("open_streams"), 0);
}

#[test]
fn last_request_records_headers_and_body() {
    let mock = MockBackend::start(&[]);
    let before = mock.last_request();
    assert_eq!(before["body"], Value::Null);

    let body = chat_body(json!({"temperature": 0.5})).to_string();
    let headers = [JSON, ("X-Trace-Id", "abc123"), ("Authorization", "Bearer k")];
    assert_eq!(request(&mock.host_port(), "POST", CHAT, &headers, Some(body.as_bytes())).status, 200);

    let last = mock.last_request();
    assert_eq!(last["path"], CHAT);
    assert_eq!(last["headers"]["x-trace-id"], "abc123");
    assert_eq!(last["headers"]["authorization"], "Bearer k");
    assert_eq!(last["body"]["temperature"], 0.5);
    assert_eq!(last["body"]["model"], "mock-llama");
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let mock = MockBackend::start(&["--chunks", "2"]);
    let addr = mock.host_port();
    let conn = connect(&addr).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let keep_alive = ("Connection", "keep-alive");

    send_request(&conn, &addr, "GET", "/health", &[keep_alive], None).unwrap();
    assert_eq!(read_response(&mut reader, "GET").unwrap().status, 200);

    let body = chat_body(json!({})).to_string();
    send_request(&conn, &addr, "POST", CHAT, &[keep_alive, JSON], Some(body.as_bytes())).unwrap();
    let completion = read_response(&mut reader, "POST").unwrap();
    assert_eq!(completion.json()["usage"]["completion_tokens"], 2);

    let stream_body = chat_body(json!({"stream": true})).to_string();
    send_request(&conn, &addr, "POST", CHAT, &[keep_alive, JSON], Some(stream_body.as_bytes())).unwrap();
    let streamed = read_response(&mut reader, "POST").unwrap();
    assert_eq!(sse_events(&streamed.body).last().unwrap(), "[DONE]");

    // `Connection: close` is honoured: the server closes after answering.
    send_request(&conn, &addr, "GET", "/v1/models", &[("Connection", "close")], None).unwrap();
    let last = read_response(&mut reader, "GET").unwrap();
    assert_eq!(last.header("connection"), Some("close"));
    assert_eq!(reader.read(&mut [0; 16]).unwrap(), 0, "connection left open");
}

#[test]
fn chunked_request_bodies_are_accepted() {
    let mock = MockBackend::start(&["--chunks", "1"]);
    let body = chat_body(json!({})).to_string().into_bytes();
    let (head, tail) = body.split_at(10);
    let mut encoded = Vec::new();
    for part in [head, tail] {
        encoded.extend_from_slice(format!("{:x};ext=1\r\n", part.len()).as_bytes());
        encoded.extend_from_slice(part);
        encoded.extend_from_slice(b"\r\n");
    }
    encoded.extend_from_slice(b"0\r\nx-trailer: yes\r\n\r\n");
    let headers = [JSON, ("Transfer-Encoding", "chunked")];
    let response = request(&mock.host_port(), "POST", CHAT, &headers, Some(&encoded));
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["choices"][0]["message"]["content"], "tok0 ");
}

#[test]
fn malformed_requests_get_400_without_killing_the_server() {
    let mock = MockBackend::start(&[]);
    for raw in [
        &b"NONSENSE\r\n\r\n"[..],
        b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: -3\r\n\r\n",
        b"GET /health HTTP/1.1\r\nno colon here\r\n\r\n",
    ] {
        let mut conn = TcpStream::connect(mock.addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        conn.write_all(raw).unwrap();
        let response = read_response(&mut BufReader::new(conn), "GET").unwrap();
        assert_eq!(response.status, 400, "for {:?}", String::from_utf8_lossy(raw));
    }
    assert_eq!(request(&mock.host_port(), "GET", "/health", &[], None).status, 200);
}

#[test]
fn restarts_on_the_same_address() {
    let mut mock = MockBackend::start(&[]);
    let addr = mock.addr;
    mock.kill();
    assert!(support::try_request(&addr.to_string(), "GET", "/health", &[], None).is_err());
    let again = MockBackend::start_on(addr, &["--model", "after"]);
    assert_eq!(again.addr, addr);
    let models = request(&again.host_port(), "GET", "/v1/models", &[], None).json();
    assert_eq!(models["data"][0]["id"], "after");
}

// ---------------------------------------------------------------------------
// Timing like vLLM: a non-stream answer only after the whole generation; a
// stream's headers at once and its first event after prefill.
// ---------------------------------------------------------------------------

/// Sends a chat request on a fresh connection without reading anything back.
fn send_chat(mock: &MockBackend, extra: Value) -> TcpStream {
    let conn = connect(&mock.host_port()).unwrap();
    let body = chat_body(extra).to_string();
    send_request(&conn, &mock.host_port(), "POST", CHAT, &[JSON], Some(body.as_bytes())).unwrap();
    conn
}

/// Whether the server wrote anything at all to `conn` within `wait`.
fn wrote_anything_within(conn: &TcpStream, wait: Duration) -> bool {
    conn.set_read_timeout(Some(wait)).unwrap();
    let outcome = conn.peek(&mut [0; 1]);
    conn.set_read_timeout(Some(support::IO_TIMEOUT)).unwrap();
    match outcome {
        Ok(n) => n > 0,
        Err(err) => {
            assert!(matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "{err}");
            false
        }
    }
}

#[test]
fn non_stream_answer_is_written_only_after_the_whole_generation() {
    let mock = MockBackend::start(&[]);
    let started = Instant::now();
    // 300 ms prefill + 4 tokens × 100 ms = 700 ms before anything, status line included.
    let conn = send_chat(&mock, json!({"mock": {"chunks": 4, "delay_ms": 100, "prefill_ms": 300}}));
    assert!(
        !wrote_anything_within(&conn, Duration::from_millis(550)),
        "bytes arrived {:?} into a 700 ms generation",
        started.elapsed()
    );
    let response = read_response(&mut BufReader::new(conn), "POST").unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["usage"]["completion_tokens"], 4);
    assert!(elapsed >= Duration::from_millis(680), "answered after {elapsed:?}");
    assert!(elapsed < Duration::from_millis(3000), "answered after {elapsed:?}");
}

#[test]
fn non_stream_generation_time_counts_only_the_tokens_generated() {
    let mock = MockBackend::start(&[]);
    let started = Instant::now();
    // max_tokens 2 of 20: 2 × 200 ms, not 20 × 200 ms.
    let response = chat(&mock, json!({"max_tokens": 2, "mock": {"chunks": 20, "delay_ms": 200}}));
    let elapsed = started.elapsed();
    assert_eq!(response.json()["usage"]["completion_tokens"], 2);
    assert!(elapsed >= Duration::from_millis(380), "answered after {elapsed:?}");
    assert!(elapsed < Duration::from_millis(2500), "answered after {elapsed:?}");
}

#[test]
fn stream_headers_go_out_at_once_and_the_role_chunk_after_prefill() {
    let mock = MockBackend::start(&[]);
    let started = Instant::now();
    let mut stream = chat_stream(&mock, json!({"mock": {"chunks": 2, "delay_ms": 50, "prefill_ms": 1000}}));
    let head_after = started.elapsed();
    assert_eq!(stream.status, 200);
    assert!(head_after < Duration::from_millis(700), "headers after {head_after:?}");
    let (role_at, role) = stream.next_chunk().expect("no role chunk");
    let role_after = role_at - started;
    assert!(role_after >= Duration::from_millis(980), "role chunk after {role_after:?}");
    let role = parsed_events(&role);
    assert_eq!(role[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
    let rest = parsed_events(&stream.read_to_end());
    assert_eq!(rest.last().unwrap(), "[DONE]");
}

#[test]
fn with_head_with_first_token_the_stream_head_comes_only_after_prefill_as_llama_server_sends_it() {
    let mock = MockBackend::start(&["--head-with-first-token"]);
    let started = Instant::now();
    let mut stream = chat_stream(&mock, json!({"mock": {"chunks": 2, "prefill_ms": 1000}}));
    let head_after = started.elapsed();
    assert_eq!(stream.status, 200);
    assert!(head_after >= Duration::from_millis(980), "headers after {head_after:?}");
    let rest = parsed_events(&stream.read_to_end());
    assert_eq!(rest[0]["choices"][0]["delta"]["role"], "assistant", "the first event right behind the head");
    assert_eq!(rest.last().unwrap(), "[DONE]");
}

#[test]
fn prefill_flag_sets_the_default_time_to_first_token() {
    let mock = MockBackend::start(&["--prefill-ms", "1000", "--chunks", "1"]);
    let started = Instant::now();
    let mut stream = chat_stream(&mock, json!({}));
    let (first_at, _) = stream.next_chunk().expect("no first chunk");
    assert!(first_at - started >= Duration::from_millis(980), "first chunk after {:?}", first_at - started);
    drop(stream);

    let started = Instant::now();
    assert_eq!(chat(&mock, json!({})).status, 200);
    assert!(started.elapsed() >= Duration::from_millis(980), "non-stream after {:?}", started.elapsed());
    // A request may override it.
    let started = Instant::now();
    assert_eq!(chat(&mock, json!({"mock": {"prefill_ms": 0}})).status, 200);
    assert!(started.elapsed() < Duration::from_millis(700), "override ignored: {:?}", started.elapsed());
}

#[test]
fn client_leaving_a_non_stream_generation_stops_it_and_counts_as_a_disconnect() {
    let mock = MockBackend::start(&[]);
    let conn = send_chat(&mock, json!({"mock": {"chunks": 10, "delay_ms": 1000}}));
    assert!(wait_until(Duration::from_secs(2), || mock.stat("non_stream_in_progress") == 1));
    assert_eq!(mock.stat("open_streams"), 0);
    let dropped = Instant::now();
    drop(conn);
    assert!(wait_until(Duration::from_secs(2), || {
        let stats = mock.stats();
        stats["client_disconnects"] == 1 && stats["non_stream_in_progress"] == 0
    }));
    assert!(dropped.elapsed() < Duration::from_secs(1), "noticed after {:?}", dropped.elapsed());
}

#[test]
fn non_stream_in_progress_falls_back_when_the_answer_is_sent() {
    let mock = MockBackend::start(&[]);
    let waiter = std::thread::spawn({
        let addr = mock.host_port();
        move || {
            let body = chat_body(json!({"mock": {"chunks": 3, "delay_ms": 200}})).to_string();
            request(&addr, "POST", CHAT, &[JSON], Some(body.as_bytes()))
        }
    });
    assert!(wait_until(Duration::from_secs(2), || mock.stat("non_stream_in_progress") == 1));
    assert_eq!(waiter.join().unwrap().status, 200);
    assert!(wait_until(Duration::from_secs(2), || mock.stat("non_stream_in_progress") == 0));
    assert_eq!(mock.stat("client_disconnects"), 0);
}

// ---------------------------------------------------------------------------
// Context length like vLLM (`--max-model-len`). "Hello there!" counts as 4 prompt
// tokens (12 bytes / 4 + 1 message).
// ---------------------------------------------------------------------------

#[test]
fn prompt_plus_max_tokens_over_max_model_len_is_vllms_400() {
    let mock = MockBackend::start(&["--max-model-len", "10"]);
    for stream in [false, true] {
        let response = chat(&mock, json!({"max_tokens": 7, "stream": stream}));
        assert_eq!(response.status, 400, "stream={stream}: {}", response.text());
        assert_eq!(response.header("content-type"), Some("application/json"));
        assert_eq!(
            response.json(),
            json!({"error": {
                "message": "'max_tokens' or 'max_completion_tokens' is too large: 7. This model's \
                            maximum context length is 10 tokens and your request has 4 input tokens \
                            (7 > 10 - 4). (parameter=max_tokens, value=7)",
                "type": "BadRequestError", "param": "max_tokens", "code": 400}})
        );
    }
    // Exactly full is fine.
    let fits = chat(&mock, json!({"max_tokens": 6}));
    assert_eq!(fits.status, 200, "{}", fits.text());
    assert_eq!(fits.json()["usage"]["completion_tokens"], 6);
}

#[test]
fn prompt_that_fills_max_model_len_is_vllms_400_without_max_tokens() {
    let mock = MockBackend::start(&["--max-model-len", "4"]);
    let response = chat(&mock, json!({}));
    assert_eq!(response.status, 400, "{}", response.text());
    assert_eq!(
        response.json(),
        json!({"error": {
            "message": "This model's maximum context length is 4 tokens. However, your request \
                        has 4 input tokens. Please reduce the length of the input messages. \
                        (parameter=input_tokens, value=4)",
            "type": "BadRequestError", "param": "input_tokens", "code": 400}})
    );
}

#[test]
fn without_max_tokens_the_completion_may_use_what_the_context_leaves() {
    let mock = MockBackend::start(&["--max-model-len", "7", "--chunks", "8"]);
    let body = chat(&mock, json!({})).json();
    assert_eq!(body["usage"]["completion_tokens"], 3);
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["choices"][0]["message"]["content"], "tok0 tok1 tok2 ");
    let events = parsed_events(&chat_stream(&mock, json!({})).read_to_end());
    assert_eq!(events.len(), 1 + 3 + 1 + 1);
    assert_eq!(events[4]["choices"][0]["finish_reason"], "length");
}

#[test]
fn max_completion_tokens_is_preferred_over_max_tokens() {
    let mock = MockBackend::start(&["--chunks", "8"]);
    let body = chat(&mock, json!({"max_tokens": 1, "max_completion_tokens": 3})).json();
    assert_eq!(body["usage"]["completion_tokens"], 3);
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    // vLLM reads `max_completion_tokens or max_tokens`: a zero falls back.
    let body = chat(&mock, json!({"max_tokens": 2, "max_completion_tokens": 0})).json();
    assert_eq!(body["usage"]["completion_tokens"], 2);
    // And it is the one checked against the context.
    let limited = MockBackend::start(&["--max-model-len", "10"]);
    assert_eq!(chat(&limited, json!({"max_tokens": 100, "max_completion_tokens": 6})).status, 200);
    let refused = chat(&limited, json!({"max_tokens": 1, "max_completion_tokens": 7}));
    assert_eq!(refused.status, 400);
    assert_eq!(refused.json()["error"]["param"], "max_tokens");
}

#[test]
fn models_report_the_max_model_len() {
    let mock = MockBackend::start(&["--max-model-len", "256"]);
    let models = request(&mock.host_port(), "GET", "/v1/models", &[], None).json();
    assert_eq!(models["data"][0]["max_model_len"], 256);
}

// ---------------------------------------------------------------------------
// Mid-stream failures like vLLM's chat_completion_stream_generator.
// ---------------------------------------------------------------------------

const ENGINE_FAILURE: &str = "CUDA error: an illegal memory access at /srv/secret/model.py:42 (http://10.1.2.3:8000)";

/// Each HTTP chunk of a stream as text.
fn chunk_texts(stream: &mut StreamingResponse) -> Vec<String> {
    stream.map(|(_, data)| String::from_utf8(data).unwrap()).collect()
}

#[test]
fn fault_error_event_streams_two_tokens_then_vllms_error_event_and_done() {
    let mock = MockBackend::start(&["--chunks", "6"]);
    let mut stream = chat_stream(&mock, json!({"mock": {"fault": "error_event"}}));
    assert_eq!(stream.status, 200);
    let chunks = chunk_texts(&mut stream);
    assert!(stream.finished_cleanly(), "vLLM ends the body normally after [DONE]");
    assert_eq!(chunks.len(), 5, "{chunks:#?}");
    let events = parsed_events(chunks[..3].concat().as_bytes());
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(events[1]["choices"][0]["delta"]["content"], "tok0 ");
    assert_eq!(events[2]["choices"][0]["delta"]["content"], "tok1 ");
    // Byte for byte what json.dumps(ErrorResponse.model_dump()) gives.
    assert_eq!(
        chunks[3],
        format!(
            "data: {{\"error\": {{\"message\": \"{ENGINE_FAILURE}\", \"type\": \
             \"InternalServerError\", \"param\": null, \"code\": 500}}}}\n\n"
        )
    );
    assert_eq!(chunks[4], "data: [DONE]\n\n");
}

#[test]
fn fault_error_event_legacy_streams_the_error_shape_of_vllm_0_9() {
    let mock = MockBackend::start(&[]);
    let chunks = chunk_texts(&mut chat_stream(&mock, json!({"mock": {"fault": "error_event_legacy"}})));
    assert_eq!(chunks.len(), 5, "{chunks:#?}");
    assert_eq!(
        chunks[3],
        format!(
            "data: {{\"error\": {{\"object\": \"error\", \"message\": \"{ENGINE_FAILURE}\", \
             \"type\": \"BadRequestError\", \"param\": null, \"code\": 400}}}}\n\n"
        )
    );
    assert_eq!(chunks[4], "data: [DONE]\n\n");
}

#[test]
fn fault_error_event_on_a_non_stream_is_vllms_error_after_the_tokens() {
    let mock = MockBackend::start(&[]);
    let started = Instant::now();
    let response = chat(&mock, json!({"mock": {"fault": "error_event", "delay_ms": 150}}));
    assert!(started.elapsed() >= Duration::from_millis(280), "after {:?}", started.elapsed());
    assert_eq!(response.status, 500);
    assert_eq!(
        response.json(),
        json!({"error": {"message": ENGINE_FAILURE, "type": "InternalServerError", "param": null, "code": 500}})
    );
    let legacy = chat(&mock, json!({"mock": {"fault": "error_event_legacy"}}));
    assert_eq!(legacy.status, 400);
    assert_eq!(
        legacy.json(),
        json!({"object": "error", "message": ENGINE_FAILURE, "type": "BadRequestError", "param": null, "code": 400})
    );
}

// ---------------------------------------------------------------------------
// Request ids like llama-cpp-python (starlette-context's RequestIdPlugin).
// ---------------------------------------------------------------------------

fn chat_with_request_id(mock: &MockBackend, id: &str) -> HttpResponse {
    let body = chat_body(json!({})).to_string();
    let auth = ("authorization", "Bearer k");
    request(&mock.host_port(), "POST", CHAT, &[JSON, auth, ("x-request-id", id)], Some(body.as_bytes()))
}

#[test]
fn strict_request_id_refuses_a_non_uuid_with_an_empty_400_before_routing() {
    let mock = MockBackend::start(&["--strict-request-id", "--api-key", "k"]);
    let refused = chat_with_request_id(&mock, "req-42");
    assert_eq!(refused.status, 400);
    assert_eq!(refused.header("content-length"), Some("0"));
    assert_eq!(refused.header("content-type"), None);
    assert!(refused.body.is_empty());
    // Before the API key is checked and before any route: no 401, no 404.
    for (method, path, headers) in [
        ("POST", CHAT, vec![JSON]),
        ("GET", "/v1/models", vec![]),
        ("GET", "/health", vec![]),
        ("GET", "/v1/nothing", vec![]),
    ] {
        let mut headers = headers;
        headers.push(("x-request-id", "not-a-uuid"));
        let response = request(&mock.host_port(), method, path, &headers, Some(b"{}"));
        assert_eq!(response.status, 400, "{method} {path}");
        assert!(response.body.is_empty(), "{method} {path}");
    }
    // The mock's own endpoints are not the server's.
    let stats = request(&mock.host_port(), "GET", "/mock/stats", &[("x-request-id", "x")], None);
    assert_eq!(stats.status, 200);
}

#[test]
fn strict_request_id_accepts_what_pythons_uuid_accepts() {
    let mock = MockBackend::start(&["--strict-request-id", "--api-key", "k"]);
    // Each checked against Python 3.11's uuid.UUID(value, version=4).
    let accepted = [
        "123e4567-e89b-12d3-a456-426614174000",
        "123E4567-E89B-12D3-A456-426614174000",
        "123e4567e89b12d3a456426614174000",
        "{123e4567-e89b-12d3-a456-426614174000}",
        "urn:uuid:123e4567-e89b-12d3-a456-426614174000",
        "123e-4567e89b12d3a456426614174000",
        "0x3e4567e89b12d3a456426614174000",
        "+23e4567e89b12d3a456426614174000",
        "123e4567_89b12d3a456426614174000",
    ];
    for id in accepted {
        assert_eq!(chat_with_request_id(&mock, id).status, 200, "{id}");
    }
    let refused = [
        "req-42",
        "123e4567-e89b-12d3-a456-42661417400",
        "123e4567-e89b-12d3-a456-4266141740000",
        "g23e4567-e89b-12d3-a456-426614174000",
        "123e4567__9b12d3a456426614174000",
        "_23e4567e89b12d3a456426614174000",
        "123e4567e89b12d3a45642661417400_",
    ];
    for id in refused {
        assert_eq!(chat_with_request_id(&mock, id).status, 400, "{id}");
    }
    // No header: the plugin makes one up.
    let body = chat_body(json!({})).to_string();
    let plain = request(&mock.host_port(), "POST", CHAT, &[JSON, ("authorization", "Bearer k")], Some(body.as_bytes()));
    assert_eq!(plain.status, 200);
}

#[test]
fn without_strict_request_id_any_request_id_passes() {
    let mock = MockBackend::start(&["--api-key", "k"]);
    assert_eq!(chat_with_request_id(&mock, "req-42").status, 200);
}

// ---------------------------------------------------------------------------
// Arbitrary statuses, for the gateway's error-mapping tests.
// ---------------------------------------------------------------------------

#[test]
fn mock_status_answers_that_status_with_vllms_error_body() {
    let mock = MockBackend::start(&[]);
    for (status, kind, message) in [
        (400, "BadRequestError", "Bad Request"),
        (404, "NotFoundError", "Not Found"),
        (408, "Request Timeout", "Request Timeout"),
        (418, "I'm a Teapot", "I'm a Teapot"),
        (500, "InternalServerError", "Internal Server Error"),
        (501, "NotImplementedError", "Not Implemented"),
        (502, "Bad Gateway", "Bad Gateway"),
        (503, "Service Unavailable", "Service Unavailable"),
        (507, "Insufficient Storage", "Insufficient Storage"),
    ] {
        for stream in [false, true] {
            let response = chat(&mock, json!({"stream": stream, "mock": {"status": status}}));
            assert_eq!(response.status, status, "stream={stream}");
            assert_eq!(response.header("content-type"), Some("application/json"));
            assert_eq!(response.header("retry-after"), None);
            assert_eq!(
                response.json(),
                json!({"error": {"message": message, "type": kind, "param": null, "code": status}}),
                "{status} stream={stream}"
            );
        }
    }
}

#[test]
fn mock_status_401_is_vllms_unauthorized() {
    let mock = MockBackend::start(&[]);
    let response = chat(&mock, json!({"mock": {"status": 401}}));
    assert_eq!(response.status, 401);
    assert_eq!(response.json(), json!({"error": "Unauthorized"}));
}

#[test]
fn mock_retry_after_is_sent_as_given() {
    let mock = MockBackend::start(&[]);
    for value in ["99999999999", "-5", "soon", "Wed, 21 Oct 2015 07:28:00 GMT", "0.5", ""] {
        let response = chat(&mock, json!({"mock": {"status": 429, "retry_after": value}}));
        assert_eq!(response.status, 429);
        assert_eq!(response.header("retry-after"), Some(value), "{value:?}");
        assert_eq!(response.json()["error"]["type"], "Too Many Requests");
    }
    // It belongs to a status answer, and cannot smuggle in other headers.
    assert_eq!(chat(&mock, json!({"mock": {"retry_after": "1"}})).status, 400);
    let injected = chat(&mock, json!({"mock": {"status": 503, "retry_after": "1\r\nx-evil: 1"}}));
    assert_eq!(injected.status, 400);
    assert_eq!(injected.header("x-evil"), None);
    assert_eq!(chat(&mock, json!({"mock": {"status": 200}})).status, 400);
    assert_eq!(chat(&mock, json!({"mock": {"status": 600}})).status, 400);
}

#[test]
fn mock_status_obeys_fault_on() {
    let named = MockBackend::start(&["--name", "flaky"]);
    let other = MockBackend::start(&["--name", "steady"]);
    let control = json!({"mock": {"status": 503, "retry_after": "7", "fault_on": "flaky"}});
    let failing = chat(&named, control.clone());
    assert_eq!(failing.status, 503);
    assert_eq!(failing.header("retry-after"), Some("7"));
    let fine = chat(&other, control);
    assert_eq!(fine.status, 200);
    assert_eq!(fine.header("retry-after"), None);
}

#[test]
fn strict_request_id_tags_every_answer_with_the_id_or_a_fresh_uuid4() {
    let mock = MockBackend::start(&["--strict-request-id", "--api-key", "k"]);
    let id = "123E4567-E89B-12D3-A456-426614174000";
    assert_eq!(chat_with_request_id(&mock, id).header("x-request-id"), Some(id));
    assert_eq!(chat_with_request_id(&mock, "req-42").header("x-request-id"), None);
    let body = chat_body(json!({"stream": true})).to_string();
    let auth = ("authorization", "Bearer k");
    let stream =
        request_streaming(&mock.host_port(), "POST", CHAT, &[JSON, auth, ("x-request-id", id)], Some(body.as_bytes()));
    assert_eq!(stream.header("x-request-id"), Some(id));
    // Without one (even a 401 or 404 gets one), a fresh uuid4().hex each time.
    let fresh: Vec<String> = ["/v1/models", "/nowhere"]
        .iter()
        .map(|path| {
            let response = request(&mock.host_port(), "GET", path, &[], None);
            response.header("x-request-id").unwrap().to_owned()
        })
        .collect();
    for id in &fresh {
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{id}");
        assert_eq!(&id[12..13], "4", "version 4: {id}");
        assert!("89ab".contains(&id[16..17]), "RFC 4122 variant: {id}");
    }
    assert_ne!(fresh[0], fresh[1]);
    // vLLM (the default) sends none.
    let plain = MockBackend::start(&[]);
    let response = request(&plain.host_port(), "GET", "/v1/models", &[("x-request-id", id)], None);
    assert_eq!(response.header("x-request-id"), None);
}

// ---------------------------------------------------------------------------
// GET /v1/models/{model}: OpenAI's retrieve-model call.
// ---------------------------------------------------------------------------

#[test]
fn retrieve_model_returns_its_card_or_the_model_404() {
    let mock = MockBackend::start(&["--model", "alpha", "--model", "org/beta", "--max-model-len", "512"]);
    let listed = request(&mock.host_port(), "GET", "/v1/models", &[], None).json();
    for (index, name) in ["alpha", "org/beta"].iter().enumerate() {
        let card = request(&mock.host_port(), "GET", &format!("/v1/models/{name}"), &[], None);
        assert_eq!(card.status, 200, "{name}");
        assert_eq!(card.json(), listed["data"][index], "the card is the listed one");
        assert_eq!(card.json()["max_model_len"], 512);
    }
    let missing = request(&mock.host_port(), "GET", "/v1/models/gpt-9", &[], None);
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.json(),
        json!({"error": {"message": "The model `gpt-9` does not exist.", "type": "NotFoundError", "param": null, "code": 404}})
    );
    assert_eq!(request(&mock.host_port(), "GET", "/v1/models/", &[], None).status, 404);
    assert_eq!(request(&mock.host_port(), "DELETE", "/v1/models/alpha", &[], None).status, 405);
    assert_eq!(mock.stat("requests"), 0, "listings are not generation requests");
}

#[test]
fn retrieve_model_needs_the_api_key() {
    let mock = MockBackend::start(&["--api-key", "k"]);
    assert_eq!(request(&mock.host_port(), "GET", "/v1/models/mock-llama", &[], None).status, 401);
    let auth = [("authorization", "Bearer k")];
    assert_eq!(request(&mock.host_port(), "GET", "/v1/models/mock-llama", &auth, None).status, 200);
}

// ---------------------------------------------------------------------------
// POST /v1/embeddings like vLLM's serving_embedding (vectors derived from the input).
// ---------------------------------------------------------------------------

const EMBEDDINGS: &str = "/v1/embeddings";

/// A POST with a JSON body to any path of the mock.
fn post(mock: &MockBackend, path: &str, body: &Value) -> HttpResponse {
    request(&mock.host_port(), "POST", path, &[JSON], Some(body.to_string().as_bytes()))
}

fn embed(mock: &MockBackend, extra: Value) -> HttpResponse {
    let mut body = json!({"model": "mock-llama", "input": "Hello there!"});
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    post(mock, EMBEDDINGS, &body)
}

fn vector(value: &Value) -> Vec<f32> {
    value.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn norm(vector: &[f32]) -> f64 {
    vector.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt()
}

#[test]
fn embeddings_answer_vllms_list_with_one_normalised_vector_per_input() {
    let mock = MockBackend::start(&[]);
    let response = embed(&mock, json!({"input": ["Hello there!", "Hi"], "user": "u-1"}));
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body = response.json();
    assert!(body["id"].as_str().unwrap().starts_with("embd-mock-"));
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "mock-llama");
    assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (index, item) in data.iter().enumerate() {
        assert_eq!(item["index"], index);
        assert_eq!(item["object"], "embedding");
        let vector = vector(&item["embedding"]);
        assert_eq!(vector.len(), 8, "--embedding-dims defaults to 8");
        assert!((norm(&vector) - 1.0).abs() < 1e-5, "not normalised: {vector:?}");
    }
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);
    // Counted like chat messages: 12 bytes / 4 + 1, then 2 bytes / 4 + 1.
    assert_eq!(body["usage"], json!({"prompt_tokens": 5, "total_tokens": 5, "completion_tokens": 0}));
}

#[test]
fn embedding_vectors_depend_only_on_the_input_item() {
    let mock = MockBackend::start(&[]);
    let alone = embed(&mock, json!({"input": "Hello there!"})).json();
    let listed = embed(&mock, json!({"input": ["other", "Hello there!"]})).json();
    assert_eq!(alone["data"][0]["embedding"], listed["data"][1]["embedding"]);
    let again = MockBackend::start(&[]);
    assert_eq!(embed(&again, json!({})).json()["data"][0]["embedding"], alone["data"][0]["embedding"]);
    // A different text, or token ids, give another vector.
    assert_ne!(listed["data"][0]["embedding"], listed["data"][1]["embedding"]);
    let tokens = embed(&mock, json!({"input": [1, 2, 3]})).json();
    assert_ne!(tokens["data"][0]["embedding"], alone["data"][0]["embedding"]);
}

#[test]
fn embedding_input_may_be_token_ids_or_token_id_arrays() {
    let mock = MockBackend::start(&[]);
    let one = embed(&mock, json!({"input": [5, 6, 7]})).json();
    assert_eq!(one["data"].as_array().unwrap().len(), 1, "an array of ids is one input");
    assert_eq!(one["usage"]["prompt_tokens"], 3, "token ids count their length");
    let two = embed(&mock, json!({"input": [[5, 6, 7], [8]]})).json();
    assert_eq!(two["data"].as_array().unwrap().len(), 2);
    assert_eq!(two["usage"]["prompt_tokens"], 4);
    assert_eq!(two["data"][0]["embedding"], one["data"][0]["embedding"]);
}

#[test]
fn embedding_input_of_any_other_shape_is_a_400() {
    let mock = MockBackend::start(&[]);
    for input in
        [json!(null), json!([]), json!([1, "a"]), json!([[]]), json!([-1]), json!(5), json!([1.5]), json!([[1, "x"]])]
    {
        let response = embed(&mock, json!({ "input": input }));
        assert_eq!(response.status, 400, "{input}");
        assert_eq!(response.json()["error"]["type"], "BadRequestError", "{input}");
    }
    let missing = post(&mock, EMBEDDINGS, &json!({"model": "mock-llama"}));
    assert_eq!(missing.status, 400);
    assert_eq!(embed(&mock, json!({"model": "gpt-9"})).status, 404);
    assert_eq!(embed(&mock, json!({"encoding_format": "bytes"})).status, 400);
}

#[test]
fn embedding_base64_is_the_little_endian_f32_bytes_of_the_float_vector() {
    use base64::Engine as _;
    let mock = MockBackend::start(&["--embedding-dims", "16"]);
    let floats = embed(&mock, json!({"encoding_format": "float"})).json();
    let encoded = embed(&mock, json!({"encoding_format": "base64"})).json();
    let text = encoded["data"][0]["embedding"].as_str().expect("base64 is a string");
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).unwrap();
    assert_eq!(bytes.len(), 16 * 4);
    let decoded: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    assert_eq!(decoded, vector(&floats["data"][0]["embedding"]));
    assert_eq!(encoded["usage"], floats["usage"]);
}

#[test]
fn embedding_dimensions_keep_the_leading_components_renormalised() {
    let mock = MockBackend::start(&["--embedding-dims", "12"]);
    let full = vector(&embed(&mock, json!({})).json()["data"][0]["embedding"]);
    assert_eq!(full.len(), 12);
    let short = vector(&embed(&mock, json!({"dimensions": 4})).json()["data"][0]["embedding"]);
    assert_eq!(short.len(), 4);
    let head_norm = norm(&full[..4]);
    for (short, full) in short.iter().zip(&full[..4]) {
        assert!((f64::from(*short) - f64::from(*full) / head_norm).abs() < 1e-5, "{short} vs {full}");
    }
    assert_eq!(vector(&embed(&mock, json!({"dimensions": 100})).json()["data"][0]["embedding"]).len(), 12);
    let zero = embed(&mock, json!({"dimensions": 0}));
    assert_eq!(zero.status, 400);
    assert_eq!(zero.json()["error"]["message"], "Dimensions must be greater than 0");
}

#[test]
fn embedding_input_longer_than_max_model_len_is_vllms_400() {
    let mock = MockBackend::start(&["--max-model-len", "4"]);
    // Nothing is generated, so an input may fill the context: "Hello there!" is 4 tokens.
    assert_eq!(embed(&mock, json!({})).status, 200);
    // 16 bytes: 5 tokens, in the second input.
    let response = embed(&mock, json!({"input": ["Hi", "Hello there!!!!!"]}));
    assert_eq!(response.status, 400);
    assert_eq!(
        response.json(),
        json!({"error": {
            "message": "This model's maximum context length is 4 tokens. However, you requested 5 tokens \
                        in the input for embedding generation. Please reduce the length of the input. \
                        (parameter=input_tokens, value=5)",
            "type": "BadRequestError", "param": "input_tokens", "code": 400}})
    );
}

#[test]
fn embedding_dims_flag_sets_the_vector_length() {
    let mock = MockBackend::start(&["--embedding-dims", "32"]);
    assert_eq!(vector(&embed(&mock, json!({})).json()["data"][0]["embedding"]).len(), 32);
}

#[test]
fn embeddings_answer_only_after_the_prefill() {
    let mock = MockBackend::start(&[]);
    let started = Instant::now();
    let conn = connect(&mock.host_port()).unwrap();
    let body = json!({"input": "Hello there!", "mock": {"prefill_ms": 600, "delay_ms": 5000}}).to_string();
    send_request(&conn, &mock.host_port(), "POST", EMBEDDINGS, &[JSON], Some(body.as_bytes())).unwrap();
    assert!(!wrote_anything_within(&conn, Duration::from_millis(400)), "bytes before the prefill was over");
    let response = read_response(&mut BufReader::new(conn), "POST").unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(elapsed >= Duration::from_millis(580), "answered after {elapsed:?}");
    assert!(elapsed < Duration::from_millis(3000), "delay_ms counted, though nothing is generated: {elapsed:?}");
}

#[test]
fn embedding_faults_and_statuses_apply_as_on_chat() {
    let mock = MockBackend::start(&["--name", "flaky"]);
    let status = embed(&mock, json!({"mock": {"status": 503, "retry_after": "7"}}));
    assert_eq!(status.status, 503);
    assert_eq!(status.header("retry-after"), Some("7"));
    assert_eq!(status.json()["error"]["type"], "Service Unavailable");
    assert_eq!(embed(&mock, json!({"mock": {"fault": "500"}})).status, 500);
    let limited = embed(&mock, json!({"mock": {"fault": "429"}}));
    assert_eq!((limited.status, limited.header("retry-after")), (429, Some("1")));
    assert_eq!(embed(&mock, json!({"mock": {"fault": "garbage"}})).body, b"\x00\xffnot json");
    assert_eq!(embed(&mock, json!({"mock": {"fault": "plain_text_500"}})).text(), "upstream exploded");
    let failed = embed(&mock, json!({"mock": {"fault": "error_event"}}));
    assert_eq!(failed.status, 500);
    assert_eq!(
        failed.json(),
        json!({"error": {"message": ENGINE_FAILURE, "type": "InternalServerError", "param": null, "code": 500}})
    );
    assert_eq!(embed(&mock, json!({"mock": {"fault": "error_event_legacy"}})).json()["object"], "error");
    let body = json!({"input": "x", "mock": {"fault": "reset"}}).to_string();
    assert!(support::try_request(&mock.host_port(), "POST", EMBEDDINGS, &[JSON], Some(body.as_bytes())).is_err());
    assert_eq!(embed(&mock, json!({"mock": {"fault": "500", "fault_on": "steady"}})).status, 200);

    let conn = connect(&mock.host_port()).unwrap();
    let body = json!({"input": "x", "mock": {"fault": "hang"}}).to_string();
    send_request(&conn, &mock.host_port(), "POST", EMBEDDINGS, &[JSON], Some(body.as_bytes())).unwrap();
    assert!(!wrote_anything_within(&conn, Duration::from_millis(300)));
    drop(conn);
    assert!(wait_until(Duration::from_secs(2), || mock.stat("client_disconnects") == 1));
}

#[test]
fn embedding_requests_are_counted_and_recorded_with_their_path() {
    let mock = MockBackend::start(&["--api-key", "k"]);
    let body = json!({"input": ["a", "b"], "encoding_format": "base64"}).to_string();
    let headers = [JSON, ("x-request-id", "emb-1")];
    // Recorded before the API key check, like chat.
    assert_eq!(request(&mock.host_port(), "POST", EMBEDDINGS, &headers, Some(body.as_bytes())).status, 401);
    assert_eq!(mock.stat("requests"), 1);
    let recorded = mock.request_with_id("emb-1").expect("not recorded");
    assert_eq!(recorded["method"], "POST");
    assert_eq!(recorded["path"], EMBEDDINGS);
    assert_eq!(recorded["body"]["encoding_format"], "base64");
    assert_eq!(mock.last_request()["path"], EMBEDDINGS);
    assert_eq!(request(&mock.host_port(), "GET", EMBEDDINGS, &[("authorization", "Bearer k")], None).status, 405);
}

// ---------------------------------------------------------------------------
// POST /v1/completions (legacy) like vLLM's serving_completion.
// ---------------------------------------------------------------------------

const COMPLETIONS: &str = "/v1/completions";

fn completion_body(extra: Value) -> Value {
    let mut body = json!({"model": "mock-llama", "prompt": "Hello there!"});
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    body
}

fn complete(mock: &MockBackend, extra: Value) -> HttpResponse {
    post(mock, COMPLETIONS, &completion_body(extra))
}

fn complete_stream(mock: &MockBackend, extra: Value) -> StreamingResponse {
    let mut body = completion_body(extra);
    body["stream"] = json!(true);
    request_streaming(&mock.host_port(), "POST", COMPLETIONS, &[JSON], Some(body.to_string().as_bytes()))
}

#[test]
fn completions_answer_a_text_completion_with_usage() {
    let mock = MockBackend::start(&["--chunks", "3"]);
    let response = complete(&mock, json!({"user": "u-1", "temperature": 0.2}));
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-mock-"));
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["model"], "mock-llama");
    assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(
        body["choices"],
        json!([{"index": 0, "text": "tok0 tok1 tok2 ", "logprobs": null, "finish_reason": "stop", "stop_reason": null}])
    );
    // Counted like a chat message: 12 bytes / 4 + 1.
    assert_eq!(body["usage"], json!({"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}));
}

#[test]
fn completions_max_tokens_defaults_to_16_as_in_vllm() {
    let mock = MockBackend::start(&["--chunks", "20"]);
    for extra in [json!({}), json!({"max_tokens": null})] {
        let body = complete(&mock, extra).json();
        assert_eq!(body["usage"]["completion_tokens"], 16);
        assert_eq!(body["choices"][0]["finish_reason"], "length");
    }
    let body = complete(&mock, json!({"max_tokens": 2})).json();
    assert_eq!(body["choices"][0]["text"], "tok0 tok1 ");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(complete(&mock, json!({"max_tokens": 50})).json()["choices"][0]["finish_reason"], "stop");
}

#[test]
fn completions_prompt_may_be_strings_token_ids_or_token_id_arrays() {
    let mock = MockBackend::start(&["--chunks", "1"]);
    let texts = complete(&mock, json!({"prompt": ["a", "bcde"], "echo": true})).json();
    let texts_of = |body: &Value| -> Vec<String> {
        body["choices"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(texts_of(&texts), ["atok0 ", "bcdetok0 "]);
    assert_eq!(texts["usage"]["prompt_tokens"], 1 + 2);
    // Token ids: one prompt, counted by length, echoed as the mock's tokens.
    let ids = complete(&mock, json!({"prompt": [1, 2, 3], "echo": true})).json();
    assert_eq!(texts_of(&ids), ["tok1 tok2 tok3 tok0 "]);
    assert_eq!(ids["usage"]["prompt_tokens"], 3);
    let arrays = complete(&mock, json!({"prompt": [[7], [8, 9]]})).json();
    assert_eq!(texts_of(&arrays).len(), 2);
    assert_eq!(arrays["usage"], json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}));
    for prompt in [json!(null), json!(""), json!([]), json!([[]]), json!([1, "a"]), json!([-1]), json!(7)] {
        let response = complete(&mock, json!({ "prompt": prompt }));
        assert_eq!(response.status, 400, "{prompt}");
    }
    let missing = post(&mock, COMPLETIONS, &json!({"model": "mock-llama"}));
    assert_eq!(missing.status, 400);
    assert_eq!(missing.json()["error"]["param"], "prompt");
    assert_eq!(complete(&mock, json!({"model": "gpt-9"})).status, 404);
}

#[test]
fn completions_n_gives_that_many_choices_per_prompt() {
    let mock = MockBackend::start(&["--chunks", "2"]);
    let body = complete(&mock, json!({"prompt": ["a", "b"], "n": 3, "best_of": 3})).json();
    let indexes: Vec<u64> = body["choices"].as_array().unwrap().iter().map(|c| c["index"].as_u64().unwrap()).collect();
    assert_eq!(indexes, [0, 1, 2, 3, 4, 5]);
    // Prompts count once each, every choice's tokens count.
    assert_eq!(body["usage"], json!({"prompt_tokens": 2, "completion_tokens": 12, "total_tokens": 14}));
    let refused = complete(&mock, json!({"n": 2, "best_of": 1}));
    assert_eq!(refused.status, 400);
    assert_eq!(
        refused.json()["error"]["message"],
        "best_of must be greater than or equal to n, got n=2 and best_of=1."
    );
    assert_eq!(complete(&mock, json!({"n": 0})).status, 400);
}

#[test]
fn completions_echo_prepends_the_prompt() {
    let mock = MockBackend::start(&["--chunks", "2"]);
    let body = complete(&mock, json!({"echo": true})).json();
    assert_eq!(body["choices"][0]["text"], "Hello there!tok0 tok1 ");
    // Echo without generation: the prompt alone.
    let only = complete(&mock, json!({"echo": true, "max_tokens": 0})).json();
    assert_eq!(only["choices"][0]["text"], "Hello there!");
    assert_eq!(only["choices"][0]["finish_reason"], "length");
    assert_eq!(only["usage"]["completion_tokens"], 0);
    let refused = complete(&mock, json!({"max_tokens": 0}));
    assert_eq!(refused.status, 400);
    assert_eq!(refused.json()["error"]["message"], "max_tokens must be at least 1, got 0.");
}

#[test]
fn completions_logprobs_give_the_legacy_logprobs_object() {
    let mock = MockBackend::start(&["--chunks", "2"]);
    let body = complete(&mock, json!({"logprobs": 2})).json();
    assert_eq!(
        body["choices"][0]["logprobs"],
        json!({
            "text_offset": [0, 5],
            "token_logprobs": [-0.25, -0.25],
            "tokens": ["tok0 ", "tok1 "],
            "top_logprobs": [{"tok0 ": -0.25, "alt1 ": -1.25}, {"tok1 ": -0.25, "alt1 ": -1.25}],
        })
    );
    let zero = complete(&mock, json!({"logprobs": 0})).json();
    assert_eq!(zero["choices"][0]["logprobs"]["top_logprobs"][0], json!({"tok0 ": -0.25}));
    // With echo, the prompt comes first, with no log-probability of its own.
    let echoed = complete(&mock, json!({"logprobs": 1, "echo": true})).json();
    let logprobs = &echoed["choices"][0]["logprobs"];
    assert_eq!(logprobs["tokens"], json!(["Hello there!", "tok0 ", "tok1 "]));
    assert_eq!(logprobs["text_offset"], json!([0, 12, 17]));
    assert_eq!(logprobs["token_logprobs"][0], Value::Null);
    assert_eq!(logprobs["top_logprobs"][0], Value::Null);
    let too_many = complete(&mock, json!({"logprobs": 21}));
    assert_eq!(too_many.status, 400);
    assert_eq!(
        too_many.json(),
        json!({"error": {
            "message": "Requested sample logprobs of 21, which is greater than max allowed: 20 (parameter=logprobs, value=21)",
            "type": "BadRequestError", "param": "logprobs", "code": 400}})
    );
    assert_eq!(complete(&mock, json!({"logprobs": -2})).status, 400);
}

#[test]
fn completions_suffix_is_refused_as_vllm_does() {
    let mock = MockBackend::start(&[]);
    let response = complete(&mock, json!({"suffix": "}"}));
    assert_eq!(response.status, 400);
    assert_eq!(
        response.json(),
        json!({"error": {"message": "suffix is not currently supported", "type": "BadRequestError", "param": null, "code": 400}})
    );
    assert_eq!(complete(&mock, json!({"suffix": null})).status, 200);
}

#[test]
fn completions_stream_a_chunk_per_token_with_the_finish_reason_on_the_last() {
    let mock = MockBackend::start(&["--chunks", "3"]);
    let mut stream = complete_stream(&mock, json!({}));
    assert_eq!(stream.status, 200);
    assert!(stream.header("content-type").unwrap().starts_with("text/event-stream"));
    let chunks: Vec<Vec<u8>> = stream.by_ref().map(|(_, data)| data).collect();
    assert!(stream.finished_cleanly());
    assert_eq!(chunks.len(), 4, "3 tokens and [DONE], each in its own HTTP chunk");
    let events = parsed_events(&chunks.concat());
    for (i, event) in events[..3].iter().enumerate() {
        assert_eq!(event["object"], "text_completion");
        assert_eq!(event["id"], events[0]["id"]);
        assert!(event.get("usage").is_none(), "usage only on the usage chunk: {event}");
        let choice = &event["choices"][0];
        assert_eq!(choice["index"], 0);
        assert_eq!(choice["text"], format!("tok{i} "));
        assert_eq!(choice["logprobs"], Value::Null);
        assert_eq!(choice["finish_reason"], if i == 2 { json!("stop") } else { Value::Null });
    }
    assert_eq!(events[3], "[DONE]");
}

#[test]
fn completions_stream_ends_with_the_usage_chunk_when_asked() {
    let mock = MockBackend::start(&["--chunks", "2"]);
    let events =
        parsed_events(&complete_stream(&mock, json!({"stream_options": {"include_usage": true}})).read_to_end());
    assert_eq!(events.len(), 2 + 1 + 1);
    assert_eq!(events[2]["object"], "text_completion");
    assert_eq!(events[2]["choices"], json!([]));
    assert_eq!(events[2]["usage"], json!({"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}));
    assert_eq!(events[3], "[DONE]");
    // vLLM refuses stream options without a stream.
    let refused = complete(&mock, json!({"stream_options": {"include_usage": true}}));
    assert_eq!(refused.status, 400);
    assert_eq!(refused.json()["error"]["param"], "stream_options");
}

#[test]
fn completions_stream_interleaves_the_choices_of_each_token() {
    let mock = MockBackend::start(&["--chunks", "2"]);
    let events = parsed_events(&complete_stream(&mock, json!({"n": 2, "echo": true, "logprobs": 0})).read_to_end());
    assert_eq!(events.len(), 2 * 2 + 1);
    let choice = |i: usize| events[i]["choices"][0].clone();
    assert_eq!((choice(0)["index"].clone(), choice(1)["index"].clone()), (json!(0), json!(1)));
    assert_eq!(choice(0)["text"], "Hello there!tok0 ");
    assert_eq!(choice(0)["logprobs"]["text_offset"], json!([0, 12]));
    assert_eq!(choice(2)["text"], "tok1 ");
    assert_eq!(choice(2)["logprobs"]["text_offset"], json!([17]), "offsets continue across chunks");
    assert_eq!(choice(3)["finish_reason"], "stop");
}

#[test]
fn completions_stream_headers_at_once_and_the_first_token_after_prefill() {
    let mock = MockBackend::start(&[]);
    let started = Instant::now();
    let mut stream = complete_stream(&mock, json!({"mock": {"chunks": 2, "delay_ms": 300, "prefill_ms": 800}}));
    assert!(started.elapsed() < Duration::from_millis(600), "headers after {:?}", started.elapsed());
    let (first_at, first) = stream.next_chunk().expect("no first chunk");
    assert!(first_at - started >= Duration::from_millis(780), "first chunk after {:?}", first_at - started);
    assert_eq!(parsed_events(&first)[0]["choices"][0]["text"], "tok0 ");
    let (second_at, _) = stream.next_chunk().expect("no second chunk");
    assert!(second_at - first_at >= Duration::from_millis(280), "tokens {:?} apart", second_at - first_at);
    // A non-stream answer waits for the whole generation.
    let started = Instant::now();
    assert_eq!(complete(&mock, json!({"mock": {"chunks": 2, "delay_ms": 200, "prefill_ms": 300}})).status, 200);
    assert!(started.elapsed() >= Duration::from_millis(680), "answered after {:?}", started.elapsed());
}

#[test]
fn completions_context_length_is_enforced_like_chat() {
    let mock = MockBackend::start(&["--max-model-len", "10"]);
    // Without max_tokens vLLM asks for 16, which does not fit beside 4 prompt tokens.
    let response = complete(&mock, json!({}));
    assert_eq!(response.status, 400);
    assert_eq!(
        response.json(),
        json!({"error": {
            "message": "'max_tokens' or 'max_completion_tokens' is too large: 16. This model's \
                        maximum context length is 10 tokens and your request has 4 input tokens \
                        (16 > 10 - 4). (parameter=max_tokens, value=16)",
            "type": "BadRequestError", "param": "max_tokens", "code": 400}})
    );
    assert_eq!(complete(&mock, json!({"max_tokens": 6})).status, 200);
    // Each prompt is checked: the second one is too long.
    let long = "x".repeat(40);
    let refused = complete(&mock, json!({"prompt": ["a", long], "max_tokens": 1, "stream": true}));
    assert_eq!(refused.status, 400);
    assert_eq!(refused.json()["error"]["param"], "input_tokens");
}

#[test]
fn completions_faults_fail_mid_stream_as_on_chat() {
    let mock = MockBackend::start(&["--chunks", "6"]);
    let mut stream = complete_stream(&mock, json!({"mock": {"fault": "error_event"}}));
    let chunks = chunk_texts(&mut stream);
    assert!(stream.finished_cleanly());
    assert_eq!(chunks.len(), 4, "{chunks:#?}");
    let events = parsed_events(chunks[..2].concat().as_bytes());
    assert_eq!(events[1]["choices"][0]["text"], "tok1 ");
    assert_eq!(
        chunks[2],
        format!(
            "data: {{\"error\": {{\"message\": \"{ENGINE_FAILURE}\", \"type\": \
             \"InternalServerError\", \"param\": null, \"code\": 500}}}}\n\n"
        )
    );
    assert_eq!(chunks[3], "data: [DONE]\n\n");
    let legacy = chunk_texts(&mut complete_stream(&mock, json!({"mock": {"fault": "error_event_legacy"}})));
    assert!(legacy[2].contains("\"object\": \"error\""), "{legacy:#?}");

    let mut reset = complete_stream(&mock, json!({"mock": {"fault": "reset"}}));
    let events = parsed_events(&reset.read_to_end());
    assert!(!reset.finished_cleanly());
    assert_eq!(events.len(), 2);

    let failed = complete(&mock, json!({"mock": {"fault": "error_event"}}));
    assert_eq!(failed.status, 500);
    assert_eq!(failed.json()["error"]["message"], ENGINE_FAILURE);
    let status = complete(&mock, json!({"stream": true, "mock": {"status": 429, "retry_after": "3"}}));
    assert_eq!((status.status, status.header("retry-after")), (429, Some("3")));
    assert_eq!(
        sse_events(&complete_stream(&mock, json!({"mock": {"fault": "malformed_sse"}})).read_to_end())[0],
        "{not json"
    );
}

#[test]
fn completion_requests_are_counted_and_recorded_with_their_path() {
    let mock = MockBackend::start(&[]);
    let body = completion_body(json!({"best_of": 2})).to_string();
    let headers = [JSON, ("x-request-id", "cmpl-1")];
    assert_eq!(request(&mock.host_port(), "POST", COMPLETIONS, &headers, Some(body.as_bytes())).status, 200);
    let recorded = mock.request_with_id("cmpl-1").expect("not recorded");
    assert_eq!(recorded["path"], COMPLETIONS);
    assert_eq!(recorded["body"]["best_of"], 2);
    assert_eq!(mock.stat("requests"), 1);
    assert_eq!(request(&mock.host_port(), "GET", COMPLETIONS, &[], None).status, 405);
}

// ---------------------------------------------------------------------------
// The Responses API (/v1/responses) like vLLM's serving_responses.
// ---------------------------------------------------------------------------

const RESPONSES: &str = "/v1/responses";

fn responses_body(extra: Value) -> Value {
    let mut body = json!({"model": "mock-llama", "input": "Hello there!"});
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    body
}

fn respond(mock: &MockBackend, extra: Value) -> HttpResponse {
    post(mock, RESPONSES, &responses_body(extra))
}

fn respond_stream(mock: &MockBackend, extra: Value) -> StreamingResponse {
    let mut body = responses_body(extra);
    body["stream"] = json!(true);
    request_streaming(&mock.host_port(), "POST", RESPONSES, &[JSON], Some(body.to_string().as_bytes()))
}

/// The events of a Responses stream: each block's `event:` name and parsed `data:`.
fn named_events(body: &[u8]) -> Vec<(String, Value)> {
    let text = String::from_utf8(body.to_vec()).unwrap();
    text.split("\n\n")
        .filter(|block| !block.is_empty())
        .map(|block| {
            let line = |prefix: &str| block.lines().find_map(|line| line.strip_prefix(prefix)).map(str::to_owned);
            let name = line("event: ").unwrap_or_else(|| panic!("no event line in {block:?}"));
            (name, serde_json::from_str(&line("data: ").unwrap()).unwrap())
        })
        .collect()
}

fn get_response(mock: &MockBackend, id: &str) -> HttpResponse {
    request(&mock.host_port(), "GET", &format!("{RESPONSES}/{id}"), &[], None)
}

#[test]
fn responses_answer_a_response_object_with_one_message_and_usage() {
    let mock = MockBackend::start(&["--chunks", "3"]);
    let tools = json!([{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]);
    let response = respond(&mock, json!({"instructions": "Be brief", "tools": tools, "temperature": 0.5}));
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert!(body["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(body["object"], "response");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["model"], "mock-llama");
    assert!(body["created_at"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!((body["error"].clone(), body["incomplete_details"].clone()), (Value::Null, Value::Null));
    assert_eq!(body["instructions"], "Be brief");
    assert_eq!(body["tools"], tools);
    assert_eq!(body["temperature"], 0.5);
    assert_eq!(body["background"], false);
    let output = body["output"].as_array().unwrap();
    assert_eq!(output.len(), 1);
    let message = &output[0];
    assert!(message["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(message["type"], "message");
    assert_eq!(message["role"], "assistant");
    assert_eq!(message["status"], "completed");
    assert_eq!(
        message["content"],
        json!([{"type": "output_text", "text": "tok0 tok1 tok2 ", "annotations": [], "logprobs": null}])
    );
    // "Be brief" and "Hello there!": 20 bytes / 4 + 2 messages.
    assert_eq!(
        body["usage"],
        json!({"input_tokens": 7, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 3,
               "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 10})
    );
}

#[test]
fn responses_count_input_items_like_chat_messages() {
    let mock = MockBackend::start(&[]);
    let input = json!([
        {"role": "user", "content": "Hello there!"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "abcd"}]},
        {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": "{\"a\":1}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "done"},
        {"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}, {"type": "input_text", "text": "xy"}]},
    ]);
    let body = respond(&mock, json!({"input": input, "instructions": "Be brief"})).json();
    // Bytes 8 + 12 + 4 + 7 + 4 + 2 = 37, over 4 is 9, plus 6 items.
    assert_eq!(body["usage"]["input_tokens"], 15);
}

#[test]
fn responses_input_of_any_other_shape_is_a_400() {
    let mock = MockBackend::start(&[]);
    for input in [
        json!(null),
        json!(5),
        json!(["text"]),
        json!([{"type": "bogus"}]),
        json!([{"role": "robot", "content": "x"}]),
        json!([{"role": "user", "content": 5}]),
        json!([{"role": "user", "content": [{"text": "untyped"}]}]),
        json!([{"type": "function_call", "name": "f"}]),
        json!([{"type": "function_call_output", "output": "x"}]),
    ] {
        let response = respond(&mock, json!({ "input": input }));
        assert_eq!(response.status, 400, "{input}");
        assert_eq!(response.json()["error"]["type"], "BadRequestError", "{input}");
    }
    assert_eq!(post(&mock, RESPONSES, &json!({"model": "mock-llama"})).status, 400);
    assert_eq!(respond(&mock, json!({"instructions": 5})).status, 400);
    assert_eq!(respond(&mock, json!({"model": "gpt-9"})).status, 404);
    assert_eq!(respond(&mock, json!({"prompt": {"id": "pmpt_1"}})).json()["error"]["param"], "prompt");
}

#[test]
fn responses_max_output_tokens_cuts_the_answer_short_as_incomplete() {
    let mock = MockBackend::start(&["--chunks", "5"]);
    let body = respond(&mock, json!({"max_output_tokens": 2})).json();
    assert_eq!(body["status"], "incomplete");
    assert_eq!(body["incomplete_details"], json!({"reason": "max_output_tokens"}));
    assert_eq!(body["max_output_tokens"], 2);
    assert_eq!(body["output"][0]["content"][0]["text"], "tok0 tok1 ");
    assert_eq!(body["usage"]["output_tokens"], 2);
    assert_eq!(respond(&mock, json!({"max_output_tokens": 9})).json()["status"], "completed");
    assert_eq!(respond(&mock, json!({"max_output_tokens": 0})).status, 400);
}

#[test]
fn responses_stream_sends_the_responses_events_with_event_lines_and_no_done() {
    let mock = MockBackend::start(&["--chunks", "2"]);
    let mut stream = respond_stream(&mock, json!({}));
    assert_eq!(stream.status, 200);
    assert!(stream.header("content-type").unwrap().starts_with("text/event-stream"));
    let chunks: Vec<Vec<u8>> = stream.by_ref().map(|(_, data)| data).collect();
    assert!(stream.finished_cleanly());
    let events = named_events(&chunks.concat());
    assert_eq!(chunks.len(), events.len(), "each event in its own HTTP chunk");
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    for (number, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], *name, "the event line names the data's type");
        assert_eq!(data["sequence_number"], number);
    }
    let data = |i: usize| &events[i].1;
    assert_eq!(data(0)["response"]["status"], "in_progress");
    assert_eq!(data(0)["response"]["output"], json!([]));
    assert_eq!(data(0)["response"]["usage"], Value::Null);
    let item = &data(2)["item"];
    assert_eq!(
        (item["type"].clone(), item["status"].clone(), item["content"].clone()),
        (json!("message"), json!("in_progress"), json!([]))
    );
    let item_id = item["id"].as_str().unwrap();
    assert!(item_id.starts_with("msg_"));
    assert_eq!(data(3)["part"], json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []}));
    for (i, token) in [(4, "tok0 "), (5, "tok1 ")] {
        assert_eq!(data(i)["delta"], token);
        assert_eq!(
            (data(i)["item_id"].as_str(), data(i)["output_index"].clone(), data(i)["content_index"].clone()),
            (Some(item_id), json!(0), json!(0))
        );
    }
    assert_eq!(data(6)["text"], "tok0 tok1 ");
    assert_eq!(data(7)["part"]["text"], "tok0 tok1 ");
    assert_eq!(data(8)["item"]["status"], "completed");
    let completed = &data(9)["response"];
    assert_eq!(completed["id"], data(0)["response"]["id"]);
    assert_eq!(completed["status"], "completed");
    assert_eq!(completed["output"][0]["id"], item_id);
    assert_eq!(completed["usage"]["output_tokens"], 2);
    assert!(!String::from_utf8(chunks.concat()).unwrap().contains("[DONE]"));
}

#[test]
fn responses_stream_opens_at_once_and_the_first_delta_follows_the_prefill() {
    let mock = MockBackend::start(&[]);
    let started = Instant::now();
    let mut stream = respond_stream(&mock, json!({"mock": {"chunks": 2, "delay_ms": 300, "prefill_ms": 800}}));
    let (created_at, created) = stream.next_chunk().expect("no created event");
    assert!(created_at - started < Duration::from_millis(600), "created after {:?}", created_at - started);
    assert_eq!(named_events(&created)[0].0, "response.created");
    let mut arrivals = Vec::new();
    while let Some((at, data)) = stream.next_chunk() {
        arrivals.extend(named_events(&data).into_iter().map(|(name, _)| (name, at - started)));
    }
    let at = |wanted: &str| arrivals.iter().find(|(name, _)| name == wanted).unwrap().1;
    assert!(at("response.in_progress") < Duration::from_millis(600));
    assert!(at("response.output_item.added") >= Duration::from_millis(780), "{arrivals:?}");
    let deltas: Vec<Duration> =
        arrivals.iter().filter(|(name, _)| name == "response.output_text.delta").map(|(_, at)| *at).collect();
    assert!(deltas[1] - deltas[0] >= Duration::from_millis(280), "{arrivals:?}");
}

#[test]
fn responses_error_event_is_the_responses_error_and_no_done() {
    let mock = MockBackend::start(&["--chunks", "6"]);
    let mut stream = respond_stream(&mock, json!({"mock": {"fault": "error_event"}}));
    let body = stream.read_to_end();
    assert!(stream.finished_cleanly(), "the body ends normally after the error event");
    let events = named_events(&body);
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names[names.len() - 3..], ["response.output_text.delta", "response.output_text.delta", "error"]);
    assert_eq!(
        events.last().unwrap().1,
        json!({"type": "error", "code": "server_error", "message": ENGINE_FAILURE, "param": null, "sequence_number": 6})
    );
    assert!(!String::from_utf8(body).unwrap().contains("[DONE]"));
    // vLLM today: its error payload fails validation and the stream breaks off.
    let mut legacy = respond_stream(&mock, json!({"mock": {"fault": "error_event_legacy"}}));
    let events = named_events(&legacy.read_to_end());
    assert!(!legacy.finished_cleanly());
    assert_eq!(events.last().unwrap().0, "response.output_text.delta");
    assert_eq!(events.len(), 6);
    let mut reset = respond_stream(&mock, json!({"mock": {"fault": "reset"}}));
    assert_eq!(named_events(&reset.read_to_end()).len(), 6);
    assert!(!reset.finished_cleanly());
    // A non-stream answers vLLM's error after the tokens.
    let failed = respond(&mock, json!({"mock": {"fault": "error_event"}}));
    assert_eq!(failed.status, 500);
    assert_eq!(failed.json()["error"]["message"], ENGINE_FAILURE);
}

#[test]
fn responses_faults_and_statuses_apply_as_on_chat() {
    let mock = MockBackend::start(&[]);
    let status = respond(&mock, json!({"stream": true, "mock": {"status": 503}}));
    assert_eq!(status.status, 503);
    assert_eq!(status.header("content-type"), Some("application/json"));
    let limited = respond(&mock, json!({"mock": {"fault": "429"}}));
    assert_eq!((limited.status, limited.header("retry-after")), (429, Some("1")));
    assert_eq!(respond(&mock, json!({"mock": {"fault": "garbage"}})).body, b"\x00\xffnot json");
    let body = responses_body(json!({"mock": {"fault": "reset"}})).to_string();
    assert!(support::try_request(&mock.host_port(), "POST", RESPONSES, &[JSON], Some(body.as_bytes())).is_err());
}

#[test]
fn responses_are_stored_and_can_be_retrieved_and_deleted() {
    let mock = MockBackend::start(&[]);
    let created = respond(&mock, json!({})).json();
    let id = created["id"].as_str().unwrap();
    let retrieved = get_response(&mock, id);
    assert_eq!(retrieved.status, 200);
    assert_eq!(retrieved.json(), created, "the stored response is the one answered");
    let streamed = named_events(&respond_stream(&mock, json!({})).read_to_end());
    let completed = &streamed.last().unwrap().1["response"];
    assert_eq!(&get_response(&mock, completed["id"].as_str().unwrap()).json(), completed);

    let deleted = request(&mock.host_port(), "DELETE", &format!("{RESPONSES}/{id}"), &[], None);
    assert_eq!(deleted.status, 200);
    assert_eq!(deleted.json(), json!({"id": id, "object": "response.deleted", "deleted": true}));
    let gone = get_response(&mock, id);
    assert_eq!(gone.status, 404);
    assert_eq!(
        gone.json(),
        json!({"error": {"message": format!("Response with id '{id}' not found."), "type": "invalid_request_error",
                         "param": "response_id", "code": 404}})
    );
    assert_eq!(request(&mock.host_port(), "DELETE", &format!("{RESPONSES}/{id}"), &[], None).status, 404);
    let unstored = respond(&mock, json!({"store": false})).json();
    assert_eq!(get_response(&mock, unstored["id"].as_str().unwrap()).status, 404);
    // Nor is a failed generation.
    let failed = named_events(&respond_stream(&mock, json!({"mock": {"fault": "error_event"}})).read_to_end());
    assert_eq!(get_response(&mock, failed[0].1["response"]["id"].as_str().unwrap()).status, 404);
    assert_eq!(mock.stat("requests"), 4, "GET and DELETE are not generation requests");
    assert_eq!(request(&mock.host_port(), "PUT", &format!("{RESPONSES}/{id}"), &[], None).status, 405);
    assert_eq!(request(&mock.host_port(), "POST", &format!("{RESPONSES}/{id}/cancel"), &[], None).status, 404);
}

#[test]
fn responses_previous_response_id_must_name_a_stored_response() {
    let mock = MockBackend::start(&["--chunks", "2"]);
    let first = respond(&mock, json!({})).json();
    assert_eq!(first["usage"]["total_tokens"], 4 + 2);
    let id = first["id"].as_str().unwrap();
    let second = respond(&mock, json!({"previous_response_id": id})).json();
    assert_eq!(second["previous_response_id"], id);
    // The earlier input and output come before the new input.
    assert_eq!(second["usage"]["input_tokens"], 6 + 4);
    let unknown = respond(&mock, json!({"previous_response_id": "resp_nope"}));
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"]["message"], "Response with id 'resp_nope' not found.");
    let elsewhere = MockBackend::start(&[]);
    assert_eq!(respond(&elsewhere, json!({"previous_response_id": id})).status, 404, "another backend has not got it");
}

#[test]
fn responses_in_the_background_answer_queued_then_complete() {
    let mock = MockBackend::start(&[]);
    let started = Instant::now();
    let queued = respond(&mock, json!({"background": true, "mock": {"chunks": 3, "delay_ms": 300}}));
    assert!(started.elapsed() < Duration::from_millis(600), "answered after {:?}", started.elapsed());
    let queued = queued.json();
    assert_eq!(queued["status"], "queued");
    assert_eq!(queued["background"], true);
    assert_eq!((queued["output"].clone(), queued["usage"].clone()), (json!([]), Value::Null));
    let id = queued["id"].as_str().unwrap();
    assert_eq!(get_response(&mock, id).json()["status"], "queued");
    assert!(wait_until(Duration::from_secs(3), || get_response(&mock, id).json()["status"] == "completed"));
    assert_eq!(get_response(&mock, id).json()["output"][0]["content"][0]["text"], "tok0 tok1 tok2 ");
    let failing = respond(&mock, json!({"background": true, "mock": {"fault": "error_event"}})).json();
    let failing_id = failing["id"].as_str().unwrap();
    assert!(wait_until(Duration::from_secs(2), || get_response(&mock, failing_id).json()["status"] == "failed"));
    let refused = respond(&mock, json!({"background": true, "store": false}));
    assert_eq!(refused.status, 400);
    assert_eq!(refused.json()["error"]["message"], "background can only be used when `store` is true");
}

#[test]
fn responses_context_length_clamps_max_output_tokens() {
    let mock = MockBackend::start(&["--max-model-len", "10", "--chunks", "8"]);
    // 4 input tokens leave 6, whatever is asked for.
    let body = respond(&mock, json!({"max_output_tokens": 100})).json();
    assert_eq!(body["max_output_tokens"], 6);
    assert_eq!(body["usage"]["output_tokens"], 6);
    assert_eq!(body["status"], "incomplete");
    let long = respond(&mock, json!({"input": "x".repeat(40)}));
    assert_eq!(long.status, 400);
    assert_eq!(
        long.json(),
        json!({"error": {"message": "The engine prompt length 11 exceeds the max_model_len 10. Please reduce prompt.",
                         "type": "invalid_request_error", "param": "input", "code": 400}})
    );
}

#[test]
fn responses_requests_are_counted_and_recorded_with_their_path() {
    let mock = MockBackend::start(&["--api-key", "k"]);
    let auth = ("authorization", "Bearer k");
    let body = responses_body(json!({"store": false, "background": false, "previous_response_id": null})).to_string();
    let headers = [JSON, auth, ("x-request-id", "resp-1")];
    assert_eq!(request(&mock.host_port(), "POST", RESPONSES, &headers, Some(body.as_bytes())).status, 200);
    let recorded = mock.request_with_id("resp-1").expect("not recorded");
    assert_eq!(recorded["path"], RESPONSES);
    assert_eq!(recorded["body"]["store"], false);
    assert_eq!(mock.stat("requests"), 1);
    assert_eq!(get_response(&mock, "resp_x").status, 401, "stored responses need the key too");
    assert_eq!(request(&mock.host_port(), "GET", RESPONSES, &[auth], None).status, 405);
}
