//! Token budgets, in-flight slots and the anonymous tier, through the whole pipeline in-process.

use crate::support::*;
use edge_gateway::core::http::{BodyError, Request};
use edge_gateway::core::rate_limit::gcra::{Admission, Admitted, Settlement};
use edge_gateway::core::rate_limit::store::{LimitStore, StoreError};
use edge_gateway::core::Gateway;
use futures::StreamExt;

const USAGE: &str =
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":300,\"total_tokens\":312}}\n\n";

fn tokens_remaining(headers: &edge_gateway::core::http::Headers) -> u32 {
    headers.get("x-ratelimit-remaining-tokens").unwrap().parse().unwrap()
}

#[test]
fn admits_tokens_on_the_estimate_and_settles_on_real_usage() {
    let (gw, upstream, runtime) = gateway();
    let config = config();
    upstream.push(Script::json(200, METERED_COMPLETION));
    let (status, headers, _) = text(run(gw.handle(Ok(&config), post_chat(METERED_KEY, METERED_CHAT))));
    assert_eq!(status, 200);
    assert_eq!(headers.get("x-ratelimit-limit-tokens"), Some("1000"));
    assert_eq!(tokens_remaining(&headers), 1000 - 110, "admitted on the estimate");
    assert!(headers.get("x-ratelimit-reset-tokens").is_some());
    assert_eq!(runtime.run_spawned(), 1, "one settlement");

    upstream.push(Script::json(200, METERED_COMPLETION));
    let (_, headers, _) = text(run(gw.handle(Ok(&config), post_chat(METERED_KEY, METERED_CHAT))));
    assert_eq!(tokens_remaining(&headers), 1000 - 20 - 110, "the first request was settled at its real 20");
}

#[test]
fn a_request_whose_estimate_exceeds_the_budget_is_refused_as_tokens_and_told_not_to_retry() {
    let (gw, upstream, _) = gateway();
    let config = config();
    let (status, headers, body) = text(run(gw.handle(
        Ok(&config),
        post_chat(METERED_KEY, &METERED_CHAT.replace("\"max_tokens\":100", "\"max_tokens\":500,\"n\":2")),
    )));
    assert_eq!(status, 429);
    let e = error_of(&body);
    assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("tokens"), Some("rate_limit_exceeded")));
    assert_eq!(headers.get("x-should-retry"), Some("false"));
    assert!(headers.get("retry-after").is_some());
    assert!(upstream.sent.borrow().is_empty());
}

#[test]
fn a_stream_that_overshoots_its_estimate_is_charged_its_real_usage() {
    let (gw, upstream, runtime) = gateway();
    let config = config();
    upstream.push(Script::sse(&[ROLE_EVENT, TOKEN_EVENT, USAGE, DONE_EVENT]));
    let (status, _, _) = text(run(gw.handle(Ok(&config), post_chat(METERED_KEY, &metered_stream()))));
    assert_eq!(status, 200);
    runtime.run_spawned();
    // Budget 1000: 312 were really used; admitting another 110 leaves 578.
    upstream.push(Script::json(200, METERED_COMPLETION));
    let (status, headers, _) = text(run(gw.handle(Ok(&config), post_chat(METERED_KEY, METERED_CHAT))));
    assert_eq!(status, 200);
    assert_eq!(tokens_remaining(&headers), 1000 - 312 - 110);
}

#[test]
fn a_stream_cut_short_is_charged_its_prompt_and_what_was_relayed() {
    let (gw, upstream, runtime, store) = gateway_with_store();
    let config = config();
    upstream.push(Script::sse(&[ROLE_EVENT, TOKEN_EVENT, TOKEN_EVENT, TOKEN_EVENT, TOKEN_EVENT, USAGE, DONE_EVENT]));
    let response = run(gw.handle(Ok(&config), post_chat(METERED_KEY, &metered_stream())));
    let edge_gateway::core::http::Body::Stream(mut body) = response.body else { panic!("a stream") };
    run(body.next()).unwrap().unwrap(); // the client reads the first chunk, then goes away
    drop(body);
    runtime.run_spawned();
    assert!(store.state("key:gamma").leases.is_empty(), "the slot was released");
    upstream.push(Script::json(200, METERED_COMPLETION));
    let (_, headers, _) = text(run(gw.handle(Ok(&config), post_chat(METERED_KEY, METERED_CHAT))));
    // Charged the prompt estimate (10) and the one chunk relayed, not the 110 it was admitted on.
    let charged = 1000 - 110 - tokens_remaining(&headers);
    assert_eq!(charged, 11);
}

#[test]
fn an_open_stream_holds_its_in_flight_slot_until_it_ends() {
    let (gw, upstream, runtime) = gateway();
    let config = config();
    upstream.push(Script::sse(&[ROLE_EVENT, TOKEN_EVENT, DONE_EVENT]));
    let first = run(gw.handle(Ok(&config), post_chat(METERED_KEY, &metered_stream())));
    assert_eq!(first.status, 200);

    let (status, _, body) = text(run(gw.handle(Ok(&config), post_chat(METERED_KEY, METERED_CHAT))));
    assert_eq!(status, 429, "the only slot is held by the open stream");
    let e = error_of(&body);
    assert_eq!(e["code"], "rate_limit_exceeded");
    assert!(e["message"].as_str().unwrap().contains("concurrent"));

    let (_, _, streamed) = text(first);
    assert!(streamed.ends_with(DONE_EVENT));
    runtime.run_spawned();
    upstream.push(Script::json(200, METERED_COMPLETION));
    assert_eq!(
        text(run(gw.handle(Ok(&config), post_chat(METERED_KEY, METERED_CHAT)))).0,
        200,
        "released when the stream ended"
    );
}

#[test]
fn every_way_a_request_can_end_releases_its_slot() {
    let endings: Vec<(&str, Script, bool)> = vec![
        ("backend refused", Script::Refuse, false),
        ("backend 500", Script::json(500, "{}"), false),
        ("backend garbage", Script::json(200, "\u{0}"), false),
        ("completion", Script::json(200, METERED_COMPLETION), false),
        (
            "stream reset mid-way",
            Script::Answer {
                status: 200,
                headers: vec![("content-type", "text/event-stream")],
                after_ms: 0,
                chunks: vec![(0, Ok(ROLE_EVENT.into())), (0, Err(BodyError("reset".into())))],
            },
            true,
        ),
        ("stream without [DONE_EVENT]", Script::sse(&[ROLE_EVENT, TOKEN_EVENT]), true),
        ("backend never answers (timeout)", Script::Hang, true),
    ];
    for (name, script, stream) in endings {
        let (gw, upstream, runtime, store) = gateway_with_store();
        let config = config();
        upstream.push(script);
        let body = if stream { metered_stream() } else { METERED_CHAT.to_string() };
        let _ = text(run(gw.handle(Ok(&config), post_chat(METERED_KEY, &body))));
        runtime.run_spawned();
        assert!(store.state("key:gamma").leases.is_empty(), "{name}: the slot leaked");
    }
}

#[test]
fn a_failure_before_the_backend_answers_refunds_the_whole_estimate() {
    let (gw, upstream, runtime) = gateway();
    let config = config();
    upstream.push(Script::Refuse);
    assert_eq!(text(run(gw.handle(Ok(&config), post_chat(METERED_KEY, METERED_CHAT)))).0, 502);
    runtime.run_spawned();
    upstream.push(Script::json(200, METERED_COMPLETION));
    let (_, headers, _) = text(run(gw.handle(Ok(&config), post_chat(METERED_KEY, METERED_CHAT))));
    assert_eq!(tokens_remaining(&headers), 1000 - 110, "nothing was charged for the failed request");
}

fn anonymous_chat(ip: Option<&str>) -> Request {
    let mut request = Request::new(
        "POST",
        "/v1/chat/completions",
        headers(&[("content-type", "application/json")]),
        br#"{"model":"qwen","messages":[{"role":"user","content":"hi"}]}"#.to_vec(),
    );
    request.client_ip = ip.map(str::to_owned);
    request
}

#[test]
fn anonymous_callers_are_limited_per_client_ip() {
    let (gw, upstream, _) = gateway();
    let config = config_with("GATEWAY_ANONYMOUS", r#"{"models":["qwen"],"requests_per_minute":2}"#);
    for _ in 0..2 {
        upstream.push(Script::json(200, METERED_COMPLETION));
        assert_eq!(text(run(gw.handle(Ok(&config), anonymous_chat(Some("203.0.113.7"))))).0, 200);
    }
    let (status, headers, _) = text(run(gw.handle(Ok(&config), anonymous_chat(Some("203.0.113.7")))));
    assert_eq!(status, 429);
    assert_eq!(headers.get("x-ratelimit-limit-requests"), Some("2"));
    upstream.push(Script::json(200, METERED_COMPLETION));
    assert_eq!(
        text(run(gw.handle(Ok(&config), anonymous_chat(Some("198.51.100.1"))))).0,
        200,
        "another IP has its own budget"
    );
}

#[test]
fn the_anonymous_ip_comes_from_the_platform_never_from_a_header() {
    let (gw, upstream, _) = gateway();
    let config = config_with("GATEWAY_ANONYMOUS", r#"{"models":["qwen"],"requests_per_minute":1}"#);
    upstream.push(Script::json(200, METERED_COMPLETION));
    assert_eq!(text(run(gw.handle(Ok(&config), anonymous_chat(Some("203.0.113.7"))))).0, 200);
    let mut spoofed = anonymous_chat(Some("203.0.113.7"));
    spoofed.headers.set("x-forwarded-for", "192.0.2.99");
    spoofed.headers.set("cf-connecting-ip", "192.0.2.99");
    assert_eq!(text(run(gw.handle(Ok(&config), spoofed))).0, 429, "headers do not buy a fresh budget");
}

#[test]
fn anonymous_callers_get_only_their_models_and_wrong_keys_are_still_401() {
    let (gw, _, _) = gateway();
    let config = config_with("GATEWAY_ANONYMOUS", r#"{"models":["qwen"],"requests_per_minute":5}"#);
    let mut llama = anonymous_chat(Some("203.0.113.7"));
    llama.body = edge_gateway::core::http::body_from_chunks(vec![METERED_CHAT.as_bytes().to_vec()]);
    assert_eq!(text(run(gw.handle(Ok(&config), llama))).0, 404);
    let mut wrong = anonymous_chat(Some("203.0.113.7"));
    wrong.headers.set("authorization", "Bearer sk-wrong");
    assert_eq!(text(run(gw.handle(Ok(&config), wrong))).0, 401);
    let without_tier = crate::support::config();
    assert_eq!(text(run(gw.handle(Ok(&without_tier), anonymous_chat(Some("203.0.113.7"))))).0, 401);
}

#[test]
fn a_platform_that_stops_polling_a_cancelled_stream_still_releases_its_slot() {
    // workerd does not drop a cancelled response; it stops polling it and says so through the
    // request's signal. The slot must come back all the same.
    let (gw, upstream, runtime, store) = gateway_with_store();
    let config = config();
    upstream.push(Script::sse(&[ROLE_EVENT, TOKEN_EVENT, TOKEN_EVENT, USAGE, DONE_EVENT]));
    let (gone_tx, gone_rx) = futures::channel::oneshot::channel::<()>();
    let mut request = post_chat(METERED_KEY, &metered_stream());
    request.disconnected = Some(Box::pin(async move {
        let _ = gone_rx.await;
    }));
    let response = run(gw.handle(Ok(&config), request));
    assert_eq!(response.status, 200);
    assert_eq!(store.state("key:gamma").leases.len(), 1);
    gone_tx.send(()).unwrap();
    runtime.run_spawned(); // the watcher
    runtime.run_spawned(); // the settlement it spawned
    assert!(store.state("key:gamma").leases.is_empty(), "released although the stream was never dropped");
    let line = runtime.logs.borrow().last().unwrap().clone();
    assert!(line.contains(r#""stream_end":"client_closed""#), "{line}");
    drop(response); // dropping it later reports nothing twice
    assert_eq!(runtime.run_spawned(), 0);
}

#[test]
fn a_stream_that_ends_normally_stops_watching_for_a_disconnect() {
    let (gw, upstream, runtime, store) = gateway_with_store();
    let config = config();
    upstream.push(Script::sse(&[ROLE_EVENT, TOKEN_EVENT, USAGE, DONE_EVENT]));
    let mut request = post_chat(METERED_KEY, &metered_stream());
    request.disconnected = Some(Box::pin(futures::future::pending()));
    let (_, _, body) = text(run(gw.handle(Ok(&config), request)));
    assert!(body.ends_with(DONE_EVENT));
    // The watcher finishes (it would otherwise keep a waitUntil open for ever) and the
    // settlement runs once.
    assert_eq!(runtime.run_spawned(), 2);
    assert!(store.state("key:gamma").leases.is_empty());
}

#[test]
fn concurrent_requests_sharing_one_request_id_each_need_their_own_slot() {
    // The lease is named by the gateway, never by the caller's x-request-id: six streams with one
    // id against max_in_flight 1 must not all get in, nor free each other's slot.
    let (gw, upstream, runtime, store) = gateway_with_store();
    let config = config();
    let with_id = |body: &str| {
        let mut request = post_chat(METERED_KEY, body);
        request.headers.set("x-request-id", "same-id");
        request
    };
    upstream.push(Script::sse(&[ROLE_EVENT, TOKEN_EVENT, DONE_EVENT]));
    let open = run(gw.handle(Ok(&config), with_id(&metered_stream())));
    assert_eq!(open.status, 200);
    for _ in 0..5 {
        upstream.push(Script::sse(&[ROLE_EVENT, TOKEN_EVENT, DONE_EVENT]));
        assert_eq!(run(gw.handle(Ok(&config), with_id(&metered_stream()))).status, 429);
    }
    let leases = store.state("key:gamma").leases;
    let held: Vec<&String> = leases.values().flat_map(|l| l.keys()).collect();
    assert_eq!(held.len(), 1);
    assert_ne!(held[0], "same-id", "the lease id is the gateway's own");
    drop(open);
    runtime.run_spawned();
    assert!(store.state("key:gamma").leases.is_empty());
}

/// A request whose client goes away after `ms` of virtual time.
fn leaving_after(ms: u64, body: &str) -> Request {
    let mut request = post_chat(METERED_KEY, body);
    request.disconnected = Some(Box::pin(sleep(ms)));
    request
}

#[test]
fn a_client_that_leaves_while_the_backend_works_aborts_it_and_frees_its_budget() {
    let thinking_stream = Script::Answer {
        status: 200,
        headers: vec![("content-type", "text/event-stream")],
        after_ms: 0,
        chunks: vec![(50_000, Ok(ROLE_EVENT.into()))],
    };
    let cases: Vec<(&str, Script, String)> = vec![
        ("a long non-stream generation", Script::json(200, METERED_COMPLETION).after(50_000), METERED_CHAT.to_string()),
        ("a stream before its first byte", thinking_stream, metered_stream()),
        ("a backend that has not answered at all", Script::Hang, METERED_CHAT.to_string()),
    ];
    for (name, script, body) in cases {
        let (gw, upstream, runtime, store) = gateway_with_store();
        let config = config();
        upstream.push(script);
        let response = run(gw.handle(Ok(&config), leaving_after(100, &body)));
        assert_eq!(response.status, 499, "{name}");
        assert_eq!(runtime.now() - T0, 100, "{name}: handled the moment the client left");
        assert_eq!(upstream.closed.get(), 1, "{name}: the backend request was aborted");
        runtime.run_spawned();
        assert!(store.state("key:gamma").leases.is_empty(), "{name}: the slot is free at once");
        let line = runtime.records().pop().unwrap();
        assert_eq!((line["status"].as_u64(), line["error"].as_str()), (Some(499), Some("client_closed")), "{name}");
        // Charged the prompt the backend may have read (10 tokens, of which 100 ms of refill at
        // 1000/min gave back 1.7), not the 110 it was admitted on.
        upstream.push(Script::json(200, METERED_COMPLETION));
        let (status, headers, _) = text(run(gw.handle(Ok(&config), post_chat(METERED_KEY, METERED_CHAT))));
        assert_eq!(status, 200, "{name}: the key's next request is admitted");
        assert_eq!(1000 - 110 - tokens_remaining(&headers), 9, "{name}");
    }
}

#[test]
fn anonymous_ipv6_callers_share_a_budget_per_64_and_mapped_ipv4_is_ipv4() {
    let (gw, upstream, _) = gateway();
    let config = config_with("GATEWAY_ANONYMOUS", r#"{"models":["qwen"],"requests_per_minute":2}"#);
    let statuses: Vec<u16> = [
        "2001:db8:1:2::1",
        "2001:db8:1:2::2",
        "[2001:db8:1:2:ffff::3]",
        "2001:0db8:0001:0002:aaaa::9",
        "2001:db8:1:2::5",
    ]
    .into_iter()
    .map(|ip| {
        upstream.push(Script::json(200, METERED_COMPLETION));
        text(run(gw.handle(Ok(&config), anonymous_chat(Some(ip))))).0
    })
    .collect();
    assert_eq!(statuses, [200, 200, 429, 429, 429], "one /64, one budget");
    upstream.push(Script::json(200, METERED_COMPLETION));
    assert_eq!(
        text(run(gw.handle(Ok(&config), anonymous_chat(Some("2001:db8:1:3::1"))))).0,
        200,
        "the next /64 is someone else"
    );

    for ip in ["198.51.100.4", "::ffff:198.51.100.4"] {
        upstream.push(Script::json(200, METERED_COMPLETION));
        text(run(gw.handle(Ok(&config), anonymous_chat(Some(ip)))));
    }
    assert_eq!(
        text(run(gw.handle(Ok(&config), anonymous_chat(Some("198.51.100.4"))))).0,
        429,
        "a mapped address is the same caller"
    );
}

#[test]
fn an_anonymous_caller_without_a_platform_address_is_refused_not_pooled() {
    let (gw, upstream, _) = gateway();
    let config = config_with("GATEWAY_ANONYMOUS", r#"{"models":["qwen"],"requests_per_minute":100}"#);
    for ip in [None, Some("unknown"), Some("")] {
        upstream.push(Script::json(200, METERED_COMPLETION));
        let (status, _, body) = text(run(gw.handle(Ok(&config), anonymous_chat(ip))));
        assert_eq!(status, 401, "{ip:?}: {body}");
    }
    assert!(upstream.sent.borrow().is_empty());
}

/// A store whose admission takes effect but whose answer is lost, as when Redis runs the script
/// and replies after the gateway's timeout.
#[derive(Clone)]
struct AnswerLost(Recording);

impl LimitStore for AnswerLost {
    async fn admit(&self, scope: &str, admission: &Admission) -> Result<Admitted, StoreError> {
        self.0.admit(scope, admission).await?;
        Err(StoreError("Redis did not answer within 250 ms".into()))
    }

    async fn settle(&self, scope: &str, settlement: &Settlement) -> Result<(), StoreError> {
        self.0.settle(scope, settlement).await
    }
}

#[test]
fn an_admission_whose_answer_was_lost_releases_the_slot_it_may_have_taken() {
    let (_, upstream, runtime, store) = recording_gateway();
    let lost = Gateway::new(upstream.clone(), AnswerLost(store.clone()), runtime.clone());
    for open in ["false", "true"] {
        let config = config_with("GATEWAY_LIMITS_FAIL_OPEN", open);
        upstream.push(Script::json(200, METERED_COMPLETION));
        let status = run(lost.handle(Ok(&config), post_chat(METERED_KEY, METERED_CHAT))).status;
        assert_eq!(status, if open == "true" { 200 } else { 500 });
        runtime.run_spawned();
        assert!(
            store.inner.state("key:gamma").leases.values().all(|l| l.is_empty()),
            "fail open {open}: the slot is free"
        );
        let settled = store.settled.borrow_mut().pop().expect("a release");
        assert!(settled.release.is_some() && settled.adjustments.is_empty(), "only the lease: {settled:?}");
    }
    // The key's only slot is free for the next request through a store that answers.
    let gw = Gateway::new(upstream.clone(), store.clone(), runtime.clone());
    upstream.push(Script::json(200, METERED_COMPLETION));
    assert_eq!(run(gw.handle(Ok(&config()), post_chat(METERED_KEY, METERED_CHAT))).status, 200);
}
