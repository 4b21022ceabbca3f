//! A stream the backend has taken but not started: committed at `GATEWAY_STREAM_COMMIT_MS` and
//! kept alive with SSE comments until its first event; failures before the commit still fail over.

use crate::support::*;
use edge_gateway::core::http::{Body, BodyError};
use futures::StreamExt;

const STREAM: &str = r#"{"model":"llama","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
const ROLE: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n";
const TOKEN: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n";
const DONE: &str = "data: [DONE]\n\n";
const KEEP_ALIVE: &str = ": keep-alive\n\n";

/// Commit at 5 s (the default), a comment every second, a minute for the first token.
fn keepalive_config() -> edge_gateway::core::Config {
    ordered_backends(&[("GATEWAY_KEEPALIVE_MS", "1000")])
}

/// A stream whose head comes at once and whose events come `prefill_ms` later (vLLM, queued or
/// prefilling a long prompt).
fn prefilling(prefill_ms: u64, events: &[&str]) -> Script {
    let mut chunks: Vec<(u64, Result<Vec<u8>, BodyError>)> = vec![(prefill_ms, Ok(events[0].into()))];
    chunks.extend(events[1..].iter().map(|e| (0, Ok(e.as_bytes().to_vec()))));
    Script::sse_timed(chunks)
}

/// The answer's status, when its head came (ms after the request) and each chunk with the time
/// it was read (ms after the request), in virtual time.
fn timed(
    config: &edge_gateway::core::Config,
    scripts: Vec<Script>,
) -> (u16, u64, Vec<(u64, String)>, FakeUpstream, FakeRuntime) {
    let (gw, upstream, runtime) = gateway();
    for script in scripts {
        upstream.push(script);
    }
    let t0 = runtime.now();
    let response = run(gw.handle(Ok(config), post_chat(KEY, STREAM)));
    let head_at = runtime.now() - t0;
    let mut chunks = Vec::new();
    match response.body {
        Body::Stream(mut body) => {
            while let Some(chunk) = run(body.next()) {
                chunks.push((runtime.now() - t0, String::from_utf8(chunk.unwrap()).unwrap()));
            }
        }
        Body::Full(bytes) => chunks.push((head_at, String::from_utf8(bytes).unwrap())),
    }
    runtime.run_spawned();
    (response.status, head_at, chunks, upstream, runtime)
}

#[test]
fn a_long_prefill_is_committed_at_five_seconds_and_kept_alive_until_its_first_token() {
    let (status, head_at, chunks, upstream, runtime) =
        timed(&keepalive_config(), vec![prefilling(7_500, &[ROLE, TOKEN, DONE])]);
    assert_eq!((status, head_at), (200, 5_000), "committed at GATEWAY_STREAM_COMMIT_MS");
    let comments: Vec<u64> = chunks.iter().filter(|(_, c)| c == KEEP_ALIVE).map(|(at, _)| *at).collect();
    assert_eq!(comments, [5_000, 6_000, 7_000], "one comment at the commit, then one per interval");
    let body: String = chunks.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(body, format!("{KEEP_ALIVE}{KEEP_ALIVE}{KEEP_ALIVE}{ROLE}{TOKEN}{DONE}"));
    assert_eq!(upstream.hosts(), ["a.internal"]);
    let record = runtime.records().pop().unwrap();
    assert_eq!((record["status"].as_u64(), record["stream_end"].as_str()), (Some(200), Some("done")));
    assert_eq!(record["ttfb_ms"], 5_000, "the client had its head at the commit");
}

#[test]
fn a_stream_that_starts_before_the_commit_gets_no_comment() {
    let (status, head_at, chunks, ..) = timed(&keepalive_config(), vec![prefilling(4_900, &[ROLE, TOKEN, DONE])]);
    assert_eq!((status, head_at), (200, 4_900));
    assert!(chunks.iter().all(|(_, c)| c != KEEP_ALIVE), "{chunks:?}");
}

#[test]
fn comments_stop_once_tokens_flow_and_the_idle_limit_takes_over() {
    let config = ordered_backends(&[("GATEWAY_KEEPALIVE_MS", "1000"), ("GATEWAY_IDLE_TIMEOUT_MS", "3000")]);
    let (status, _, chunks, ..) = timed(&config, vec![prefilling(6_000, &[ROLE]).then_silent()]);
    assert_eq!(status, 200);
    let after_first: Vec<&(u64, String)> = chunks.iter().skip_while(|(_, c)| c != ROLE).collect();
    assert_eq!(after_first.len(), 2, "the first token, then the idle timeout's error event: {chunks:?}");
    assert_eq!(after_first[1].0, 6_000 + 3_000);
    assert_eq!(error_of(after_first[1].1.trim().trim_start_matches("data: "))["code"], "upstream_timeout");
}

/// Backend failures that come after the commit but before any content: a reset, the vLLM error
/// event (with internals in its message).
fn failing_before_content() -> [(&'static str, Script); 2] {
    let broken = Script::sse_timed(vec![(7_500, Err(BodyError("reset".into())))]);
    let error_event = "data: {\"error\":{\"message\":\"CUDA out of memory at 10.0.0.7\",\"type\":\"internal_error\",\"code\":500}}\n\n";
    [("broken body", broken), ("error event", prefilling(7_500, &[error_event]))]
}

#[test]
fn a_failure_after_the_commit_but_before_any_content_still_fails_over_behind_the_comments() {
    for (name, script) in failing_before_content() {
        let (status, head_at, chunks, upstream, runtime) =
            timed(&keepalive_config(), vec![script, Script::sse(&[ROLE, DONE])]);
        assert_eq!((status, head_at), (200, 5_000), "{name}");
        let body: String = chunks.iter().map(|(_, c)| c.as_str()).collect();
        assert_eq!(body, format!("{KEEP_ALIVE}{KEEP_ALIVE}{KEEP_ALIVE}{ROLE}{DONE}"), "{name}: only comments before");
        assert_eq!(upstream.hosts(), ["a.internal", "b.internal"], "{name}: the client could not tell");
        let record = runtime.records().pop().unwrap();
        assert_eq!((record["backend"].as_str(), record["attempts"].as_u64()), (Some("b"), Some(2)), "{name}");
        assert_eq!(record["stream_end"], "done", "{name}");
    }
}

#[test]
fn a_failure_after_the_commit_with_no_backend_left_is_one_final_error_event() {
    let config = ordered_backends(&[("GATEWAY_KEEPALIVE_MS", "1000"), ("GATEWAY_MAX_ATTEMPTS", "1")]);
    for (name, script) in failing_before_content() {
        let (status, head_at, chunks, upstream, runtime) = timed(&config, vec![script]);
        assert_eq!((status, head_at), (200, 5_000), "{name}");
        let events: Vec<&str> = chunks.iter().map(|(_, c)| c.as_str()).filter(|c| *c != KEEP_ALIVE).collect();
        assert_eq!(events.len(), 1, "{name}: exactly one event after the comments: {chunks:?}");
        let error = error_of(events[0].trim().trim_start_matches("data: "));
        assert_eq!(error["code"], "upstream_error", "{name}");
        assert!(!events[0].contains("10.0.0.7"), "{name}: the backend's internals stay inside");
        assert_eq!(upstream.hosts(), ["a.internal"], "{name}");
        let record = runtime.records().pop().unwrap();
        assert_eq!((record["status"].as_u64(), record["stream_end"].as_str()), (Some(200), Some("upstream_error")));
        assert_eq!(record["error"], "upstream_error", "{name}");
    }
}

#[test]
fn a_stream_that_never_starts_is_kept_alive_through_every_failover() {
    // Three black-holed backends: each is given up at the connect timeout (10 s), behind comments.
    let (status, head_at, chunks, upstream, _) =
        timed(&keepalive_config(), vec![Script::Hang, Script::Hang, Script::Hang]);
    assert_eq!((status, head_at), (200, 5_000));
    assert_eq!(upstream.hosts().len(), 3);
    let comments = chunks.iter().filter(|(_, c)| c == KEEP_ALIVE).count();
    assert_eq!(comments, 25, "one a second from 5 s until the last backend gave up at 30 s: {chunks:?}");
    let (at, last) = chunks.last().unwrap();
    assert_eq!(*at, 30_000);
    assert_eq!(error_of(last.trim().trim_start_matches("data: "))["code"], "upstream_timeout");
}

#[test]
fn a_committed_stream_still_silent_at_the_first_byte_limit_ends_with_a_timeout_event() {
    let config = ordered_backends(&[("GATEWAY_KEEPALIVE_MS", "4000"), ("GATEWAY_FIRST_BYTE_TIMEOUT_MS", "14000")]);
    let (status, _, chunks, upstream, _) = timed(&config, vec![prefilling(60_000, &[ROLE])]);
    assert_eq!(status, 200);
    let at: Vec<u64> = chunks.iter().map(|(at, _)| *at).collect();
    assert_eq!(at, [5_000, 9_000, 13_000, 14_000], "comments until the first-byte limit: {chunks:?}");
    let error = error_of(chunks[3].1.trim().trim_start_matches("data: "));
    assert_eq!(error["code"], "upstream_timeout");
    assert_eq!(upstream.closed.get(), 1, "the backend's request is let go of");
}

#[test]
fn a_fast_failure_before_the_commit_is_still_failed_over() {
    for (name, first) in [
        ("500", Script::json(500, r#"{"error":{"message":"boom"}}"#).after(4_000)),
        ("broken before any event", {
            let chunks = vec![(4_000, Err(BodyError("reset".into())))];
            Script::sse_timed(chunks)
        }),
    ] {
        let (status, _, chunks, upstream, _) = timed(&keepalive_config(), vec![first, Script::sse(&[ROLE, DONE])]);
        assert_eq!(status, 200, "{name}");
        assert_eq!(upstream.hosts(), ["a.internal", "b.internal"], "{name}");
        assert!(chunks.iter().all(|(_, c)| c != KEEP_ALIVE), "{name}: {chunks:?}");
    }
    let config = ordered_backends(&[("GATEWAY_MAX_ATTEMPTS", "1")]);
    let (status, _, chunks, ..) = timed(&config, vec![Script::json(502, "bad gateway").after(1_000)]);
    assert_eq!(status, 502, "{chunks:?}");
}

#[test]
fn a_non_stream_answer_is_never_committed_early() {
    let (gw, upstream, runtime) = gateway();
    upstream.push(Script::json(200, METERED_COMPLETION).after(30_000));
    let t0 = runtime.now();
    let (status, _, body) = text(run(gw.handle(Ok(&keepalive_config()), post_chat(KEY, METERED_CHAT))));
    assert_eq!((status, runtime.now() - t0), (200, 30_000));
    assert!(!body.contains("keep-alive"));
}

#[test]
fn a_client_that_leaves_during_the_keep_alive_frees_the_backend() {
    let (gw, upstream, runtime) = gateway();
    upstream.push(prefilling(60_000, &[ROLE]));
    let response = run(gw.handle(Ok(&keepalive_config()), post_chat(KEY, STREAM)));
    let Body::Stream(mut body) = response.body else { panic!("a stream") };
    assert_eq!(run(body.next()).unwrap().unwrap(), KEEP_ALIVE.as_bytes());
    drop(body);
    runtime.run_spawned();
    assert_eq!(upstream.closed.get(), 1, "the prefill's connection is closed, so the GPU stops");
    assert_eq!(runtime.records().pop().unwrap()["stream_end"], "client_closed");
}

#[test]
fn a_commit_of_zero_answers_as_soon_as_the_backend_takes_the_request() {
    let config = ordered_backends(&[("GATEWAY_STREAM_COMMIT_MS", "0"), ("GATEWAY_KEEPALIVE_MS", "2000")]);
    let (status, head_at, chunks, ..) = timed(&config, vec![prefilling(3_000, &[ROLE, DONE])]);
    assert_eq!((status, head_at), (200, 0));
    let at: Vec<u64> = chunks.iter().map(|(at, _)| *at).collect();
    assert_eq!(at[..2], [0, 2_000], "{chunks:?}");
}
