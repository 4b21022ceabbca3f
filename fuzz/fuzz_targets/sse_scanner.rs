//! Any byte stream, split anywhere: the scanner never panics, forwards exactly the same bytes
//! whether the stream comes whole or in pieces, and — unless it drops the usage chunk or meets a
//! malformed event — forwards the stream unchanged.
#![no_main]

use edge_gateway::core::openai::Dialect;
use edge_gateway::core::upstream::sse::SseScanner;
use libfuzzer_sys::fuzz_target;

const MAX_EVENT: usize = 4096;

#[derive(Debug, PartialEq)]
struct Scanned {
    out: Vec<u8>,
    done: bool,
    malformed: bool,
    total_tokens: Option<u64>,
}

fn scan(pieces: &[&[u8]], drop_usage_only: bool) -> Option<Scanned> {
    let mut scanner = SseScanner::new(Dialect::Chunks, drop_usage_only, MAX_EVENT);
    let mut out = Vec::new();
    for piece in pieces {
        out.extend(scanner.feed(piece.to_vec()));
    }
    let malformed = scanner.malformed();
    if !malformed {
        out.extend(scanner.finish());
    }
    Some(Scanned { out, done: scanner.done(), malformed, total_tokens: scanner.usage().map(|u| u.total_tokens) })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let drop_usage_only = data[0] & 1 == 1;
    let stream = &data[2..];
    let cut = usize::from(data[1]).min(stream.len());
    let whole = scan(&[stream], drop_usage_only);
    let split = scan(&[&stream[..cut], &stream[cut..]], drop_usage_only);
    // An event over the cap is an error however it arrives (possibly at a different piece).
    if let (Some(whole), Some(split)) = (whole, split) {
        assert_eq!(whole, split);
        if !drop_usage_only && !whole.malformed {
            assert_eq!(whole.out, stream, "a clean stream passes through unchanged");
        }
    }
});
