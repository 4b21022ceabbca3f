//! Each request's one final record: the JSON log line and the metrics data point made from it.

use crate::support::*;
use edge_gateway::core::http::BodyError;
use edge_gateway::core::log::DataPoint;
use std::rc::Rc;

const CHAT: &str = r#"{"model":"llama","messages":[{"role":"user","content":"hi"}]}"#;
const STREAM: &str = r#"{"model":"llama","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

/// Sends each request in turn (the rest of a stream read at once), then runs what was spawned;
/// returns the data points and the log records, in the order they were written.
fn measure(scripts: Vec<Script>, requests: &[&str]) -> (Vec<DataPoint>, Vec<serde_json::Value>) {
    let (gw, upstream, runtime) = gateway();
    let metrics = CapturedMetrics::default();
    let gw = gw.with_metrics(Rc::new(metrics.clone()));
    for script in scripts {
        upstream.push(script);
    }
    let config = ordered_backends(&[]);
    for body in requests {
        text(run(gw.handle(Ok(&config), post_chat(KEY, body))));
        runtime.run_spawned();
    }
    let points = metrics.0.borrow().clone();
    (points, runtime.records())
}

fn blobs(point: &DataPoint) -> Vec<&str> {
    point.blobs.iter().map(String::as_str).collect()
}

#[test]
fn a_completion_is_one_point_with_its_tokens_and_latency() {
    let (points, records) = measure(vec![Script::json(200, METERED_COMPLETION).after(1_200)], &[CHAT]);
    assert_eq!(points.len(), 1, "exactly one point per request");
    let point = &points[0];
    assert_eq!(point.index, "alpha");
    assert_eq!(blobs(point), ["llama", "a", "2xx", "", "", "alpha", "chat.completions"]);
    assert_eq!(point.doubles, [1_200.0, 0.0, 12.0, 8.0, 1.0, 0.0], "latency, no TTFT/TPOT for a non-stream");
    let record = &records[0];
    assert_eq!((record["latency_ms"].as_u64(), record["route"].as_str()), (Some(1_200), Some("chat.completions")));
    assert_eq!(record["usage"]["completion_tokens"], 8, "the log line carries the same record");
}

#[test]
fn a_stream_reports_time_to_first_token_and_time_per_output_token() {
    // Head at once, first event after a 300 ms prefill, then 4 more chunks 50 ms apart, the
    // last carrying the usage: 5 completion tokens, decoded in 4 × 50 ms after the first.
    let usage =
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":5,\"total_tokens\":14}}\n\n";
    let script = Script::sse_timed(
        [(300, ROLE_EVENT), (50, TOKEN_EVENT), (50, TOKEN_EVENT), (50, TOKEN_EVENT), (50, TOKEN_EVENT)]
            .into_iter()
            .map(|(gap, e)| (gap, Ok(e.as_bytes().to_vec())))
            .chain([(0, Ok(usage.as_bytes().to_vec())), (0, Ok(DONE_EVENT.as_bytes().to_vec()))])
            .collect(),
    );
    let (points, records) = measure(vec![script], &[STREAM]);
    assert_eq!(points.len(), 1);
    assert_eq!(blobs(&points[0]), ["llama", "a", "2xx", "", "done", "alpha", "chat.completions"]);
    assert_eq!(points[0].doubles, [500.0, 300.0, 9.0, 5.0, 1.0, 50.0]);
    let record = &records[0];
    assert_eq!((record["ttft_ms"].as_u64(), record["tpot_ms"].as_f64()), (Some(300), Some(50.0)));
    assert!(record.get("usage_estimated").is_none(), "the backend counted");
}

#[test]
fn a_refused_request_is_a_point_without_backend_or_tokens() {
    let scripts = (0..3).map(|_| Script::json(200, METERED_COMPLETION)).collect();
    let (points, records) = measure(scripts, &[CHAT, CHAT, CHAT, CHAT]);
    assert_eq!(points.len(), 4);
    let refused = &points[3];
    assert_eq!(blobs(refused), ["llama", "", "4xx", "rate_limit_exceeded", "", "alpha", "chat.completions"]);
    assert_eq!(refused.doubles, [0.0; 6]);
    assert_eq!((records[3]["status"].as_u64(), records[3]["error"].as_str()), (Some(429), Some("rate_limit_exceeded")));
}

#[test]
fn a_stream_broken_midway_is_a_point_with_its_error_and_estimated_tokens() {
    let broken = Script::sse_timed(vec![
        (100, Ok(ROLE_EVENT.into())),
        (100, Ok(TOKEN_EVENT.into())),
        (100, Ok(TOKEN_EVENT.into())),
        (100, Err(BodyError("reset".into()))),
    ]);
    let (points, records) = measure(vec![broken], &[STREAM]);
    assert_eq!(points.len(), 1);
    assert_eq!(
        blobs(&points[0]),
        ["llama", "a", "2xx", "upstream_error", "upstream_error", "alpha", "chat.completions"]
    );
    // The prompt (`hi`: 2 bytes → 1 token, plus the per-message overhead the validator counts)
    // is an estimate; the three chunks relayed are the completion.
    let record = &records[0];
    let prompt = record["usage"]["prompt_tokens"].as_f64().unwrap();
    assert_eq!(points[0].doubles, [400.0, 100.0, prompt, 3.0, 1.0, 0.0], "no time per token: it failed");
    assert_eq!(record["usage_estimated"], true);
}

#[test]
fn the_log_line_and_the_point_come_from_one_record() {
    let (points, records) = measure(vec![Script::json(500, "{}"), Script::json(200, METERED_COMPLETION)], &[CHAT]);
    let (point, record) = (&points[0], &records[0]);
    assert_eq!(point.index, record["key_id"].as_str().unwrap());
    assert_eq!(point.blobs[0], record["model"].as_str().unwrap());
    assert_eq!(point.blobs[1], record["backend"].as_str().unwrap());
    assert_eq!(point.doubles[0], record["latency_ms"].as_f64().unwrap());
    assert_eq!(point.doubles[4], 2.0, "a failover is two attempts");
    assert_eq!(record["attempts"], 2);
}

#[test]
fn requests_that_never_reach_a_backend_are_points_too() {
    let (gw, _, runtime) = gateway();
    let metrics = CapturedMetrics::default();
    let gw = gw.with_metrics(Rc::new(metrics.clone()));
    let config = config();
    text(run(gw.handle(Ok(&config), get("/healthz", None))));
    text(run(gw.handle(Ok(&config), get("/nope", None))));
    text(run(gw.handle(Ok(&config), post_chat("sk-wrong", CHAT))));
    let points = metrics.0.borrow();
    let statuses: Vec<(&str, &str, &str)> =
        points.iter().map(|p| (p.blobs[2].as_str(), p.blobs[3].as_str(), p.blobs[6].as_str())).collect();
    assert_eq!(
        statuses,
        [("2xx", "", "healthz"), ("4xx", "unknown_url", ""), ("4xx", "invalid_api_key", "chat.completions")]
    );
    assert_eq!(runtime.records().len(), 3);
}
