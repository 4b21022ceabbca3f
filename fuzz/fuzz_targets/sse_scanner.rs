//! Any byte stream, split anywhere, in either stream dialect: the scanner never panics, forwards
//! exactly the same bytes whether the stream comes whole or in pieces, and forwards the stream
//! unchanged up to its end — all of it unless it drops the usage chunk, meets a malformed event,
//! an error event or the end (`[DONE]`, `response.completed`), after which nothing is relayed.
#![no_main]

use edge_gateway::core::openai::Dialect;
use edge_gateway::core::upstream::sse::SseScanner;
use libfuzzer_sys::fuzz_target;

const MAX_EVENT: usize = 4096;

#[derive(Debug, PartialEq)]
struct Scanned {
    out: Vec<u8>,
    done: bool,
    stopped: bool,
    total_tokens: Option<u64>,
    content_events: u64,
}

fn scan(pieces: &[&[u8]], dialect: Dialect, drop_usage_only: bool) -> Scanned {
    let mut scanner = SseScanner::new(dialect, drop_usage_only, MAX_EVENT);
    let mut out = Vec::new();
    for piece in pieces {
        out.extend(scanner.feed(piece.to_vec()));
    }
    let stopped = scanner.stopped().is_some();
    if !stopped {
        out.extend(scanner.finish());
    }
    Scanned {
        out,
        done: scanner.done(),
        stopped,
        total_tokens: scanner.usage().map(|u| u.total_tokens),
        content_events: scanner.content_events(),
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let drop_usage_only = data[0] & 1 == 1;
    let dialect = if data[0] & 2 == 2 { Dialect::Responses } else { Dialect::Chunks };
    let stream = &data[2..];
    let cut = usize::from(data[1]).min(stream.len());
    let whole = scan(&[stream], dialect, drop_usage_only);
    let split = scan(&[&stream[..cut], &stream[cut..]], dialect, drop_usage_only);
    assert_eq!(whole, split, "the same stream, split at {cut}");
    if !drop_usage_only {
        assert!(stream.starts_with(&whole.out), "forwarded unchanged, up to its end");
        if !whole.done && !whole.stopped {
            assert_eq!(whole.out, stream, "a stream that never ended is forwarded whole");
        }
    }
});
