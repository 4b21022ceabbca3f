//! Attacks on the platform boundary the adapters cross (the Workers build's JavaScript pump and
//! header lines, the Spin build's own pump): bytes split anywhere and huge, a backend that dies
//! mid-event, clients that leave at every moment, and header lists no client should send. Run on
//! both runtimes like every case.

use crate::cases::open_stream;
use crate::harness::*;
use crate::support::{connect, read_response, request, request_streaming, wait_until};
use serde_json::json;
use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;

type Launch = fn(Setup<'_>) -> Gateway;

const SCRIPTED_MODEL: &str = "scripted-model";
const ROLE: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}],\"usage\":null}\n\n";
const DONE: &str = "data: [DONE]\n\n";
const USAGE: &str =
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}\n\n";

fn token(text: &str) -> String {
    format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}}}}],\"usage\":null}}\n\n")
}

/// One step of a scripted backend's stream.
#[derive(Clone)]
enum Step {
    /// Bytes as one HTTP chunk (one write).
    Send(String),
    Pause(u64),
    /// Ends the body properly.
    End,
    /// Drops the connection mid-body: the chunked body never ends.
    Reset,
}

/// A backend on 127.0.0.1 that answers every request with one event stream played from `steps`.
fn scripted_backend(steps: Vec<Step>) -> String {
    scripted_backend_for("scripted", SCRIPTED_MODEL, steps)
}

/// [`scripted_backend`], named `name` and serving `model`.
fn scripted_backend_for(name: &str, model: &str, steps: Vec<Step>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let steps = steps.clone();
            std::thread::spawn(move || play(conn, &steps));
        }
    });
    format!(r#"{{"name":"{name}","url":"http://{addr}","models":["{model}"]}}"#)
}

fn play(mut conn: TcpStream, steps: &[Step]) {
    // The request: its head, then as many body bytes as it says.
    let mut seen = Vec::new();
    let mut buf = [0u8; 65536];
    let body_start = loop {
        let Ok(n) = conn.read(&mut buf) else { return };
        if n == 0 {
            return;
        }
        seen.extend_from_slice(&buf[..n]);
        if let Some(at) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&seen[..body_start]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
        .unwrap_or(0);
    while seen.len() < body_start + length {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let _ = conn.set_nodelay(true);
    let head =
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    if conn.write_all(head.as_bytes()).is_err() {
        return;
    }
    for step in steps {
        let ok = match step {
            Step::Send(bytes) => conn.write_all(format!("{:x}\r\n{bytes}\r\n", bytes.len()).as_bytes()).is_ok(),
            Step::Pause(ms) => {
                std::thread::sleep(Duration::from_millis(*ms));
                true
            }
            Step::End => conn.write_all(b"0\r\n\r\n").is_ok(),
            Step::Reset => {
                let _ = conn.shutdown(Shutdown::Both);
                false
            }
        };
        if !ok {
            return;
        }
    }
    let _ = conn.shutdown(Shutdown::Write);
    let _ = conn.read(&mut buf);
}

fn scripted_chat() -> Vec<u8> {
    serde_json::to_vec(
        &json!({"model": SCRIPTED_MODEL, "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .unwrap()
}

fn stream_body(gw: &Gateway) -> (u16, String, bool) {
    let auth = format!("Bearer {KEY}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let mut stream = request_streaming(&gw.addr, "POST", "/v1/chat/completions", &headers, Some(&scripted_chat()));
    let body = stream.read_to_end();
    (stream.status, String::from_utf8_lossy(&body).into_owned(), stream.finished_cleanly())
}

/// Whether `LEAVING_KEY`'s one in-flight slot is free again (within 5 s): a one-chunk chat with
/// `auth` is answered.
fn slot_is_free(gw: &Gateway, auth: &str) -> bool {
    let headers = [("authorization", auth), ("content-type", "application/json")];
    let body = serde_json::to_vec(
        &json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "mock": {"chunks": 1}}),
    )
    .unwrap();
    wait_until(Duration::from_secs(5), || {
        request(&gw.addr, "POST", "/v1/chat/completions", &headers, Some(&body)).status == 200
    })
}

/// Events cut at every kind of place — mid-field, mid-line ending, between the two newlines — and
/// paced like tokens, a 600 KB event in 64 KB pieces, the usage chunk (which the client did not
/// ask for): the client gets every byte the backend sent, in order, minus that chunk.
pub fn a_backend_splitting_events_anywhere_reaches_the_client_unchanged(launch: Launch) {
    let huge = token(&"x".repeat(600 << 10));
    let (a, b, c) = (token("one"), token("two"), token("three"));
    let mut steps = vec![
        Step::Send(ROLE[..7].into()),
        Step::Pause(5),
        Step::Send(ROLE[7..ROLE.len() - 1].into()),
        Step::Pause(5),
        Step::Send(format!("\n{}", &a[..a.len() - 2])),
        Step::Pause(5),
        Step::Send(format!("\n\n{b}{}", &c[..12])),
        Step::Pause(5),
        Step::Send(c[12..c.len() - 1].into()),
        Step::Send("\n".into()),
    ];
    steps.extend(huge.as_bytes().chunks(64 << 10).map(|piece| Step::Send(String::from_utf8_lossy(piece).into())));
    steps.extend([Step::Send(USAGE.into()), Step::Pause(5), Step::Send(DONE.into()), Step::End]);
    let backend = scripted_backend(steps);
    let gw = launch(Setup { backends: &[&backend], ..Setup::default() });
    let (status, body, clean) = stream_body(&gw);
    assert_eq!(status, 200);
    assert!(clean, "the stream ended properly");
    let expected = format!("{ROLE}{a}{b}{c}{huge}{DONE}");
    assert_eq!(body.len(), expected.len(), "byte count");
    assert!(body == expected, "the bytes differ from what the backend sent (less the usage chunk)");
}

/// The backend's connection drops in the middle of an event: the client gets what came before
/// that event, then exactly one error event, and a properly ended stream.
pub fn a_backend_dying_mid_event_ends_the_stream_with_one_error_event(launch: Launch) {
    let a = token("one");
    let steps = vec![
        Step::Send(ROLE.into()),
        Step::Pause(20),
        Step::Send(format!("{a}{}", &a[..20])),
        Step::Pause(20),
        Step::Reset,
    ];
    let backend = scripted_backend(steps);
    let gw = launch(Setup { backends: &[&backend], ..Setup::default() });
    let (status, body, clean) = stream_body(&gw);
    assert_eq!(status, 200);
    assert!(clean, "the client's stream is ended properly, not cut: {body}");
    let (before, error) = body.split_at(body.find("data: {\"error\"").expect("an error event"));
    assert_eq!(before, format!("{ROLE}{a}"));
    assert_eq!(error.matches("data: ").count(), 1, "one error event, and nothing after it: {error}");
    assert!(error.contains("upstream_error") && !error.contains("[DONE]"), "{error}");
}

/// A client leaving at each moment of a request: mid-body, as the stream's head arrives, after
/// the last event but before reading the end. None keeps its in-flight slot, and the gateway
/// keeps answering.
pub fn clients_leaving_at_any_moment_keep_no_slot(gw: &Gateway) {
    let auth = format!("Bearer {LEAVING_KEY}");
    let free = || slot_is_free(gw, &auth);
    // Mid-body: the head promises 1,000 bytes, 10 come, then the client is gone.
    let conn = connect(&gw.addr).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {}\r\nauthorization: {auth}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"model\":",
        gw.addr
    );
    (&conn).write_all(head.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    drop(conn);
    assert!(free(), "mid-body: the gateway stopped answering or kept a slot");
    // As the stream's head arrives, before any event is read.
    let stream_of = |chunks: u64, delay_ms: u64| {
        let body = json!({"model": MODEL, "stream": true, "messages": [{"role": "user", "content": "hi"}], "mock": {"chunks": chunks, "delay_ms": delay_ms}});
        open_stream(gw, LEAVING_KEY, &body)
    };
    let stream = stream_of(40, 100);
    assert_eq!(stream.status, 200);
    stream.disconnect();
    assert!(free(), "at the head: the slot leaked");
    // After the last event was sent, before the client read the end.
    let stream = stream_of(3, 0);
    assert_eq!(stream.status, 200);
    std::thread::sleep(Duration::from_millis(300));
    stream.disconnect();
    assert!(free(), "at the end: the slot leaked");
}

/// Header lists that cross the platform boundary oddly: bytes that are not ASCII, a repeated
/// header, one 8 KB value, sixty extra fields; a credential with a non-ASCII byte is refused; a
/// chunked request body (no length) is read through the streamed path.
pub fn odd_header_lists_and_a_chunked_body_cross_the_boundary(gw: &Gateway) {
    let body = serde_json::to_vec(
        &json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "mock": {"chunks": 2}}),
    )
    .unwrap();
    let send = |head: Vec<u8>, body: &[u8]| {
        let conn = connect(&gw.addr).unwrap();
        let mut bytes = head;
        bytes.extend_from_slice(body);
        (&conn).write_all(&bytes).unwrap();
        read_response(&mut BufReader::new(conn), "POST").unwrap()
    };
    let head = |extra: &[u8], key: &[u8], framing: &str| {
        let mut h = format!("POST /v1/chat/completions HTTP/1.1\r\nhost: {}\r\nconnection: close\r\ncontent-type: application/json\r\n{framing}", gw.addr).into_bytes();
        h.extend_from_slice(b"authorization: Bearer ");
        h.extend_from_slice(key);
        h.extend_from_slice(b"\r\n");
        h.extend_from_slice(extra);
        h.extend_from_slice(b"\r\n");
        h
    };
    let length = format!("content-length: {}\r\n", body.len());
    let mut odd = Vec::new();
    odd.extend_from_slice(b"x-request-id: caf\xe9-\xff-id\r\nx-request-id: second\r\n");
    odd.extend_from_slice(b"x-latin: \xe9t\xe9\r\n");
    odd.extend_from_slice(format!("x-big: {}\r\n", "v".repeat(8 << 10)).as_bytes());
    for n in 0..60 {
        odd.extend_from_slice(format!("x-extra-{n}: {n}\r\n").as_bytes());
    }
    let r = send(head(&odd, KEY.as_bytes(), &length), &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.header("x-request-id").expect("an id");
    assert!(id.is_ascii() && !id.contains("caf"), "an insane request id is replaced: {id:?}");
    let mut latin_key = KEY.as_bytes().to_vec();
    latin_key.push(0xe9);
    let r = send(head(b"", &latin_key, &length), &body);
    assert_eq!(r.status, 401, "{}", r.text());
    // No length: the body streams in three chunks.
    let third = body.len() / 3;
    let in_three = chunked([&body[..third], &body[third..2 * third], &body[2 * third..]]);
    let r = send(head(b"", KEY.as_bytes(), "transfer-encoding: chunked\r\n"), &in_three);
    assert_eq!(r.status, 200, "{}", r.text());
    // A chunked body past the cap is refused, not buffered whole.
    let big = vec![b' '; MAX_BODY_BYTES + 1];
    let over = chunked(big.chunks(16 << 10));
    let r = send(head(b"", KEY.as_bytes(), "transfer-encoding: chunked\r\n"), &over);
    assert_eq!(r.status, 413, "{}", r.text());
}

/// Reads `stream` until its body so far contains `text`.
fn read_until(stream: &mut crate::support::StreamingResponse, text: &str, moment: &str) {
    let mut seen = String::new();
    while !seen.contains(text) {
        let (_, piece) = stream.next_chunk().unwrap_or_else(|| panic!("{moment}: ended early: {seen}"));
        seen.push_str(&String::from_utf8_lossy(&piece));
    }
}

/// After the client of request `id` left: the backend's connection closed (its disconnect count
/// passed `disconnects`), the slot free, and the request logged once, as `client_closed` (counted
/// after `settle`).
fn left_without_a_trace(
    gw: &Gateway,
    id: &str,
    disconnects: u64,
    free: &dyn Fn() -> bool,
    moment: &str,
    settle: Duration,
) {
    let closed = wait_until(Duration::from_secs(5), || gw.primary.stat("client_disconnects") > disconnects);
    assert!(closed, "{moment}: the backend's connection was kept");
    assert!(free(), "{moment}: the slot leaked");
    let record = gw.log_record(id);
    assert_eq!(record["stream_end"], "client_closed", "{moment}: {record}");
    std::thread::sleep(settle);
    let logged = gw.log_records().into_iter().filter(|r| r["request_id"] == id).count();
    assert_eq!(logged, 1, "{moment}: logged once");
}

/// `pieces` as an HTTP/1.1 chunked body.
fn chunked<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut body = Vec::new();
    for piece in pieces {
        body.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        body.extend_from_slice(piece);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    body
}

/// A client that stops reading long enough for the relay's timer to fire while a write waits on
/// it, then catches up: the backend then stalling is still cut by the idle timeout, a wait on the
/// backend counted from when the pump began it (not left to the total deadline because the timer
/// last fired while the pump was waiting on the client).
pub fn the_idle_timeout_still_holds_after_the_client_paused_reading(launch: Launch) {
    // Enough bytes to fill every buffer between the pump and a client that does not read.
    let piece = token(&"x".repeat(64 << 10));
    let mut steps = vec![Step::Send(ROLE.into())];
    steps.extend((0..384).map(|_| Step::Send(piece.clone())));
    // Then the backend stalls (its connection open) far past the idle timeout.
    steps.extend([Step::Pause(30_000), Step::Send(DONE.into()), Step::End]);
    let backend = scripted_backend(steps);
    let gw = launch(Setup {
        vars: &[("GATEWAY_IDLE_TIMEOUT_MS", "2000"), ("GATEWAY_TOTAL_TIMEOUT_MS", "25000")],
        backends: &[&backend],
    });
    let auth = format!("Bearer {KEY}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let mut stream = request_streaming(&gw.addr, "POST", "/v1/chat/completions", &headers, Some(&scripted_chat()));
    assert_eq!(stream.status, 200);
    // Not reading past the idle timeout: the pump waits on the client when its timer fires.
    std::thread::sleep(Duration::from_millis(3_500));
    let resumed = std::time::Instant::now();
    stream.set_read_timeout(Some(Duration::from_secs(40)));
    let body = stream.read_to_end();
    let waited = resumed.elapsed();
    let body = String::from_utf8_lossy(&body);
    let tail = &body[body.len().saturating_sub(400)..];
    assert!(body.len() > 384 * (64 << 10), "every byte the backend sent came through: {}", body.len());
    assert!(
        tail.contains("The inference backend stopped sending the stream in time."),
        "the idle timeout ended the stream, not the total one: {tail}"
    );
    assert!(waited < Duration::from_secs(10), "ended {waited:?} after the client caught up, idle is 2 s");
}

/// A client leaving a stream committed behind keep-alive comments — during the search (a long
/// prefill), and after the backend began (between tokens) — frees its in-flight slot and the
/// backend's connection on each runtime, and each stream is logged once, as the client's leaving.
pub fn a_client_leaving_a_kept_alive_stream_frees_everything(launch: Launch) {
    let gw = launch(Setup {
        vars: &[("GATEWAY_STREAM_COMMIT_MS", "300"), ("GATEWAY_KEEPALIVE_MS", "200")],
        ..Setup::default()
    });
    let auth = format!("Bearer {LEAVING_KEY}");
    let open = |mock: serde_json::Value| {
        let body =
            json!({"model": MODEL, "stream": true, "messages": [{"role": "user", "content": "hi"}], "mock": mock});
        open_stream(&gw, LEAVING_KEY, &body)
    };
    let free = || slot_is_free(&gw, &auth);
    for (moment, mock, leave_after) in [
        ("during the search", json!({"chunks": 3, "prefill_ms": 1_500}), ": keep-alive"),
        ("between tokens", json!({"chunks": 30, "prefill_ms": 600, "delay_ms": 300}), "\"content\""),
    ] {
        let disconnects = gw.primary.stat("client_disconnects");
        let mut stream = open(mock);
        assert_eq!(stream.status, 200, "{moment}");
        let id = stream.header("x-request-id").expect("an id").to_string();
        read_until(&mut stream, leave_after, moment);
        stream.disconnect();
        // A second record would come late: wait for it.
        left_without_a_trace(&gw, &id, disconnects, &free, moment, Duration::from_millis(500));
    }
}

/// Every stream committed at once (`GATEWAY_STREAM_COMMIT_MS=0`: relayed by the platform's pump
/// after the keep-alive phase) ends exactly as the same stream relayed directly does: the same
/// events after the comments, the same log record (end, backend, attempts, usage, error), for a
/// plain stream, a failover after the commit (the first backend's stream malformed, or a 500), a
/// backend failing mid-stream (error event, reset), `[DONE]` as the first event, a first event that
/// is content and an error at once, an oversized first event, the usage chunk asked for, and the
/// Responses API (its held opening events and its error event's numbering).
pub fn a_stream_committed_at_once_ends_as_a_direct_stream_does(launch: Launch) {
    let flaky = crate::harness::watched_mock(&["--name", "flaky", "--model", "ha-model"]);
    let steady = crate::harness::watched_mock(&["--name", "steady", "--model", "ha-model"]);
    let huge = token(&"y".repeat(300 << 10));
    let scripted = [
        scripted_backend_for("done-first", "done-first-model", vec![Step::Send(DONE.into()), Step::End]),
        scripted_backend_for(
            "begin-and-fail",
            "begin-and-fail-model",
            vec![
                Step::Send(format!(
                    "{ROLE}{}data: {{\"error\":{{\"message\":\"boom\",\"type\":\"InternalServerError\",\"code\":500}}}}\n\n",
                    token("one")
                )),
                Step::Send(DONE.into()),
                Step::End,
            ],
        ),
        scripted_backend_for(
            "oversized-first",
            "oversized-first-model",
            vec![Step::Send(ROLE.into()), Step::Send(huge.clone()), Step::Send(DONE.into()), Step::End],
        ),
    ];
    let backends = [
        format!(r#"{{"name":"flaky","url":"{}","models":["ha-model"]}}"#, flaky.base_url),
        format!(r#"{{"name":"steady","url":"{}","models":["ha-model"],"priority":1}}"#, steady.base_url),
        scripted[0].clone(),
        scripted[1].clone(),
        scripted[2].clone(),
    ];
    let backends: Vec<&str> = backends.iter().map(String::as_str).collect();
    let direct = launch(Setup { backends: &backends, ..Setup::default() });
    let committed = launch(Setup {
        vars: &[("GATEWAY_STREAM_COMMIT_MS", "0"), ("GATEWAY_KEEPALIVE_MS", "100")],
        backends: &backends,
    });
    let chat = |model: &str, mock: serde_json::Value| json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hi"}], "mock": mock});
    let cases: Vec<(&str, &str, serde_json::Value)> = vec![
        ("plain", "/v1/chat/completions", chat(MODEL, json!({"chunks": 3}))),
        (
            "usage asked for",
            "/v1/chat/completions",
            json!({"model": MODEL, "stream": true, "stream_options": {"include_usage": true},
                   "messages": [{"role": "user", "content": "hi"}], "mock": {"chunks": 3}}),
        ),
        (
            "failover after a malformed stream",
            "/v1/chat/completions",
            chat("ha-model", json!({"chunks": 3, "fault": "malformed_sse", "fault_on": "flaky"})),
        ),
        (
            "failover after a 500",
            "/v1/chat/completions",
            chat("ha-model", json!({"chunks": 3, "fault": "500", "fault_on": "flaky"})),
        ),
        (
            "an error event mid-stream",
            "/v1/chat/completions",
            chat(MODEL, json!({"chunks": 5, "fault": "error_event"})),
        ),
        ("a reset mid-stream", "/v1/chat/completions", chat(MODEL, json!({"chunks": 5, "fault": "reset"}))),
        ("[DONE] first", "/v1/chat/completions", chat("done-first-model", json!({}))),
        ("content and an error at once", "/v1/chat/completions", chat("begin-and-fail-model", json!({}))),
        ("an oversized first event", "/v1/chat/completions", chat("oversized-first-model", json!({}))),
        (
            "the Responses API",
            "/v1/responses",
            json!({"model": MODEL, "stream": true, "input": "hi", "mock": {"chunks": 3}}),
        ),
        (
            "the Responses API failing mid-stream",
            "/v1/responses",
            json!({"model": MODEL, "stream": true, "input": "hi", "mock": {"chunks": 5, "fault": "error_event"}}),
        ),
    ];
    let auth = format!("Bearer {KEY}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let run = |gw: &Gateway, path: &str, body: &serde_json::Value| {
        let mut stream = request_streaming(&gw.addr, "POST", path, &headers, Some(&serde_json::to_vec(body).unwrap()));
        let status = stream.status;
        let id = stream.header("x-request-id").expect("an id").to_string();
        let body = String::from_utf8_lossy(&stream.read_to_end()).into_owned();
        let clean = stream.finished_cleanly();
        let record = gw.log_record(&id);
        (status, body, clean, record)
    };
    let mut differences = Vec::new();
    for (case, path, body) in &cases {
        let (d_status, d_body, d_clean, d_record) = run(&direct, path, body);
        let (c_status, c_body, c_clean, c_record) = run(&committed, path, body);
        assert_eq!(d_status, 200, "{case}: direct: {d_body}");
        assert_eq!(c_status, 200, "{case}: committed");
        assert!(c_body.starts_with(": keep-alive\n\n"), "{case}: committed at once: {c_body:.200}");
        let c_events = comparable_events(&c_body.replace(": keep-alive\n\n", ""));
        let d_events = comparable_events(&d_body);
        if d_events != c_events {
            differences.push(format!("{case}: events differ:\n direct    {d_events:?}\n committed {c_events:?}"));
        }
        if d_clean != c_clean {
            differences.push(format!("{case}: ended cleanly: direct {d_clean}, committed {c_clean}"));
        }
        for field in ["status", "stream_end", "backend", "attempts", "usage", "error"] {
            if d_record[field] != c_record[field] {
                differences
                    .push(format!("{case}: log `{field}`: direct {}, committed {}", d_record[field], c_record[field]));
            }
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

/// A stream's events, without what differs between two answers to the same request (ids, times).
fn comparable_events(body: &str) -> Vec<String> {
    fn strip(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                map.retain(|k, _| !(k == "id" || k.ends_with("_id") || k.starts_with("created")));
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    crate::support::sse_events(body.as_bytes())
        .into_iter()
        .map(|event| match serde_json::from_str::<serde_json::Value>(&event) {
            Ok(mut value) => {
                strip(&mut value);
                value.to_string()
            }
            Err(_) => event,
        })
        // A huge event by its start and length (a difference in the middle still shows in it).
        .map(|event| match event.len() > 300 {
            true => format!("{}… ({} bytes)", event.chars().take(200).collect::<String>(), event.len()),
            false => event,
        })
        .collect()
}

/// A stream committed at once keeps its total deadline in both of its phases: ended by it while
/// the comments still stand in for a backend (a long prefill) — when it passes, not at the next
/// comment — and after a backend began (tokens too slow to finish), each time with one
/// `upstream_timeout` event, a properly ended stream and a record saying `timeout`.
pub fn a_committed_stream_keeps_its_total_deadline_before_and_after_its_backend_began(launch: Launch) {
    let gw = launch(Setup {
        vars: &[
            ("GATEWAY_STREAM_COMMIT_MS", "0"),
            ("GATEWAY_KEEPALIVE_MS", "1500"),
            ("GATEWAY_FIRST_BYTE_TIMEOUT_MS", "2000"),
            ("GATEWAY_IDLE_TIMEOUT_MS", "2000"),
            ("GATEWAY_TOTAL_TIMEOUT_MS", "2000"),
        ],
        ..Setup::default()
    });
    for (moment, mock) in [
        ("before its backend began", json!({"chunks": 3, "prefill_ms": 5_000})),
        ("after its backend began", json!({"chunks": 100, "prefill_ms": 200, "delay_ms": 100})),
    ] {
        let body =
            json!({"model": MODEL, "stream": true, "messages": [{"role": "user", "content": "hi"}], "mock": mock});
        let sent = std::time::Instant::now();
        let mut stream = open_stream(&gw, KEY, &body);
        assert_eq!(stream.status, 200, "{moment}");
        let id = stream.header("x-request-id").expect("an id").to_string();
        let body = String::from_utf8_lossy(&stream.read_to_end()).into_owned();
        let ended = sent.elapsed();
        assert!(stream.finished_cleanly(), "{moment}: {body}");
        let events = crate::support::sse_events(body.as_bytes());
        let last = events.last().map(String::as_str).unwrap_or_default();
        assert!(last.contains("upstream_timeout"), "{moment}: {body}");
        assert_eq!(events.iter().filter(|e| e.contains("\"error\"")).count(), 1, "{moment}: {body}");
        assert!(
            ended < Duration::from_millis(2_400),
            "{moment}: ended {ended:?} after it was sent; the deadline is 2 s, a comment every 1.5 s"
        );
        assert_eq!(gw.log_record(&id)["stream_end"], "timeout", "{moment}");
    }
}

/// Clients leaving a committed stream at the moment its backend begins — just before, with and
/// just after the first tokens, as the relay passes from the comments to the platform's pump —
/// each free the in-flight slot and the backend's connection, and are logged once.
pub fn clients_leaving_a_committed_stream_as_its_backend_begins_keep_nothing(launch: Launch) {
    let gw = launch(Setup {
        vars: &[("GATEWAY_STREAM_COMMIT_MS", "0"), ("GATEWAY_KEEPALIVE_MS", "100")],
        ..Setup::default()
    });
    let auth = format!("Bearer {LEAVING_KEY}");
    let free = || slot_is_free(&gw, &auth);
    for prefill_ms in [90u64, 100, 105, 110, 195, 200, 205] {
        for leave_after_ms in [0u64, 3, 10] {
            let moment = format!("prefill {prefill_ms} ms, leaving {leave_after_ms} ms after the first token");
            let disconnects = gw.primary.stat("client_disconnects");
            let body = json!({"model": MODEL, "stream": true, "messages": [{"role": "user", "content": "hi"}],
                              "mock": {"chunks": 30, "prefill_ms": prefill_ms, "delay_ms": 50}});
            let mut stream = open_stream(&gw, LEAVING_KEY, &body);
            assert_eq!(stream.status, 200, "{moment}");
            let id = stream.header("x-request-id").expect("an id").to_string();
            read_until(&mut stream, "data:", &moment);
            std::thread::sleep(Duration::from_millis(leave_after_ms));
            stream.disconnect();
            left_without_a_trace(&gw, &id, disconnects, &free, &moment, Duration::ZERO);
        }
    }
}

/// `GATEWAY_STREAM_COMMIT_MS=0` commits every stream at once, even one whose backend answers
/// before the runtime's clock is next read (the README's promise, and what the `*-committed`
/// benchmark targets measure): each of many quick streams begins with a keep-alive comment.
pub fn a_zero_commit_delay_commits_every_stream_at_once(launch: Launch) {
    let gw = launch(Setup { vars: &[("GATEWAY_STREAM_COMMIT_MS", "0")], ..Setup::default() });
    let auth = format!("Bearer {KEY}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let body = serde_json::to_vec(
        &json!({"model": MODEL, "stream": true, "messages": [{"role": "user", "content": "hi"}], "mock": {"chunks": 1}}),
    )
    .unwrap();
    let direct = (0..100)
        .filter(|_| {
            let mut stream = request_streaming(&gw.addr, "POST", "/v1/chat/completions", &headers, Some(&body));
            assert_eq!(stream.status, 200);
            !stream.read_to_end().starts_with(b": keep-alive\n\n")
        })
        .count();
    assert_eq!(direct, 0, "streams of 100 not committed at once");
}
