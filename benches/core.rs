//! Microbenchmarks of the core: the per-request decision and the SSE scanner's throughput.
//!
//! `cargo bench --bench core` (part of `make bench`). Numbers only; nothing here can fail a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use divan::counter::BytesCount;
use divan::{black_box, Bencher};
use edge_gateway::core::auth::{identify, sha256_hex};
use edge_gateway::core::config::{Config, Lookup};
use edge_gateway::core::http::Headers;
use edge_gateway::core::openai::Dialect;
use edge_gateway::core::rate_limit::plan::Plan;
use edge_gateway::core::rate_limit::store::{LimitStore, MemoryStore};
use edge_gateway::core::upstream::sse::SseScanner;
use edge_gateway::core::validate::validate_chat;
use std::collections::HashMap;

fn main() {
    divan::main();
}

const KEY: &str = "sk-bench-key";

fn config() -> Config {
    let mut vars = HashMap::new();
    vars.insert(
        "GATEWAY_BACKENDS".to_string(),
        r#"[{"name":"gpu","url":"http://gpu:8000","models":["llama-3.1-8b"]}]"#.to_string(),
    );
    vars.insert(
        "GATEWAY_API_KEYS".to_string(),
        format!(
            r#"[{{"id":"bench","sha256":"{}","models":["*"],"requests_per_minute":1000000000,"tokens_per_minute":2000000000,"max_in_flight":1000000}}]"#,
            sha256_hex(KEY)
        ),
    );
    Config::from_lookup(&vars as &dyn Lookup).unwrap()
}

/// A typical 2 KB chat request: a system prompt, a few turns, sampling parameters.
fn request_2kb() -> Vec<u8> {
    let turn =
        "Explain, in two short paragraphs, how a token bucket rate limiter works and why it suits bursty API traffic. ";
    let body = serde_json::json!({
        "model": "llama-3.1-8b",
        "stream": true,
        "temperature": 0.7,
        "top_p": 0.95,
        "max_tokens": 512,
        "messages": [
            {"role": "system", "content": "You are a concise assistant for an engineering team."},
            {"role": "user", "content": turn.repeat(4)},
            {"role": "assistant", "content": turn.repeat(4)},
            {"role": "user", "content": turn.repeat(6)},
        ],
    });
    let bytes = serde_json::to_vec(&body).unwrap();
    assert!((1800..2600).contains(&bytes.len()), "{}", bytes.len());
    bytes
}

/// Authenticate (SHA-256 + constant-time compare), parse and validate the body, and admit it
/// against request, token and in-flight budgets in an in-memory store: everything the gateway
/// decides before it calls a backend.
#[divan::bench]
fn decision_for_a_2kb_request(bencher: Bencher) {
    let config = config();
    let body = request_2kb();
    let mut headers = Headers::new();
    headers.set("authorization", format!("Bearer {KEY}"));
    let store = MemoryStore::new(|| 1_700_000_000_000);
    let mut n = 0u64;
    bencher.bench_local(|| {
        n += 1;
        let caller = identify(&headers, None, &config, 1_700_000_000_000).unwrap();
        let chat = validate_chat(black_box(&body), &config.caps).unwrap();
        let estimate = chat.token_estimate(config.backends_serving(&chat.model), config.caps.max_tokens);
        let plan = Plan::new(caller.budgets, estimate, &format!("lease_{n}"), 60_000);
        let admitted = futures::executor::block_on(store.admit(&caller.scope, &plan.admission)).unwrap();
        black_box(admitted)
    });
}

/// The same decision without the limit store, to separate parsing from limit bookkeeping.
#[divan::bench]
fn parse_and_validate_a_2kb_request(bencher: Bencher) {
    let config = config();
    let body = request_2kb();
    bencher.bench_local(|| validate_chat(black_box(&body), &config.caps).unwrap());
}

/// A realistic vLLM stream: 1,000 token chunks, a usage chunk, `[DONE]`.
fn stream() -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..1000 {
        out.extend_from_slice(format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"llama-3.1-8b\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
        ).as_bytes());
    }
    out.extend_from_slice(b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"llama-3.1-8b\",\"choices\":[],\"usage\":{\"prompt_tokens\":100,\"completion_tokens\":1000,\"total_tokens\":1100}}\n\ndata: [DONE]\n\n");
    out
}

/// Feeds `chunks` through a scanner that drops the usage chunk, as a stream's relay does.
fn scan(bencher: Bencher, total: usize, chunks: Vec<Vec<u8>>) {
    bencher.counter(BytesCount::new(total)).with_inputs(|| chunks.clone()).bench_local_values(|chunks| {
        let mut scanner = SseScanner::new(Dialect::Chunks, true, 1 << 20);
        let mut forwarded = 0;
        for chunk in chunks {
            forwarded += scanner.feed(chunk).len();
        }
        black_box((forwarded, scanner.usage()))
    });
}

/// Scanning a stream that arrives one event per chunk, as vLLM sends it.
#[divan::bench]
fn sse_scanner_event_per_chunk(bencher: Bencher) {
    let data = stream();
    let events = data.split_inclusive(|b| *b == b'\n').collect::<Vec<_>>().chunks(2).map(|c| c.concat()).collect();
    scan(bencher, data.len(), events);
}

/// One 4 MiB event dripped one byte at a time: the scanner's work stays linear in what it is fed
/// (it appends to the held tail instead of re-copying it per chunk).
#[divan::bench(sample_count = 3, sample_size = 1)]
fn sse_scanner_4mib_event_one_byte_at_a_time(bencher: Bencher) {
    let payload = format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n", "x".repeat(4 << 20));
    let bytes = payload.into_bytes();
    bencher.counter(BytesCount::new(bytes.len())).bench_local(|| {
        let mut scanner = SseScanner::new(Dialect::Chunks, false, 8 << 20);
        let mut forwarded = 0;
        for byte in &bytes {
            forwarded += scanner.feed(vec![*byte]).len();
        }
        black_box(forwarded)
    });
}

/// Scanning a stream that arrives in 16 KiB reads that cut events anywhere.
#[divan::bench]
fn sse_scanner_16k_reads(bencher: Bencher) {
    let data = stream();
    scan(bencher, data.len(), data.chunks(16 * 1024).map(<[u8]>::to_vec).collect());
}
