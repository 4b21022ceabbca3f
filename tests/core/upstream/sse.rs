//! The SSE scanner: same results for a recorded stream split at every byte offset.

use edge_gateway::core::openai::Dialect;
use edge_gateway::core::openai::Usage;
use edge_gateway::core::upstream::sse::{SseScanner, Stop};

const RECORDED: &str = include_str!("../../fixtures/vllm_stream_with_usage.sse");
const USAGE_EVENT_START: &str = "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"llama\",\"choices\":[],";

fn scan(chunks: &[&[u8]], drop_usage_only: bool) -> (Vec<u8>, SseScanner) {
    let mut scanner = SseScanner::new(Dialect::Chunks, drop_usage_only, 1 << 20);
    let mut out = Vec::new();
    for chunk in chunks {
        out.extend(scanner.feed(chunk.to_vec()));
    }
    out.extend(scanner.finish());
    (out, scanner)
}

fn without_usage_event(stream: &str) -> String {
    let start = stream.find(USAGE_EVENT_START).unwrap();
    let end = start + stream[start..].find("\n\n").unwrap() + 2;
    format!("{}{}", &stream[..start], &stream[end..])
}

const USAGE: Usage = Usage { prompt_tokens: 12, completion_tokens: 3, total_tokens: 15 };

#[test]
fn forwards_stream_unchanged_when_client_asked_for_usage() {
    let (out, scanner) = scan(&[RECORDED.as_bytes()], false);
    assert_eq!(out, RECORDED.as_bytes());
    assert_eq!(scanner.usage(), Some(USAGE));
    assert!(scanner.done());
}

#[test]
fn drops_only_the_usage_chunk_when_client_did_not_ask() {
    let (out, scanner) = scan(&[RECORDED.as_bytes()], true);
    assert_eq!(String::from_utf8(out).unwrap(), without_usage_event(RECORDED));
    assert_eq!(scanner.usage(), Some(USAGE), "usage is still counted");
}

#[test]
fn same_result_split_at_every_byte_offset() {
    let bytes = RECORDED.as_bytes();
    for drop in [false, true] {
        let (whole, _) = scan(&[bytes], drop);
        for cut in 0..=bytes.len() {
            let (out, scanner) = scan(&[&bytes[..cut], &bytes[cut..]], drop);
            assert_eq!(out, whole, "cut at {cut}, drop {drop}");
            assert_eq!(scanner.usage(), Some(USAGE), "cut at {cut}");
            assert!(scanner.done(), "cut at {cut}");
            assert_eq!(scanner.events(), 7, "cut at {cut}");
        }
    }
}

#[test]
fn same_result_fed_one_byte_at_a_time_and_in_three_pieces() {
    let bytes = RECORDED.as_bytes();
    let singles: Vec<&[u8]> = bytes.chunks(1).collect();
    let (out, scanner) = scan(&singles, true);
    assert_eq!(String::from_utf8(out).unwrap(), without_usage_event(RECORDED));
    assert_eq!(scanner.usage(), Some(USAGE));
    for a in (0..bytes.len()).step_by(7) {
        for b in (a..bytes.len()).step_by(13) {
            let (out, _) = scan(&[&bytes[..a], &bytes[a..b], &bytes[b..]], false);
            assert_eq!(out, bytes, "cuts at {a} and {b}");
        }
    }
}

#[test]
fn forwards_complete_events_at_once_and_holds_only_the_incomplete_tail() {
    let mut scanner = SseScanner::new(Dialect::Chunks, false, 1 << 20);
    let out = scanner.feed(b"data: {\"a\":1}\n\ndata: {\"b\"".to_vec());
    assert_eq!(out, b"data: {\"a\":1}\n\n");
    let out = scanner.feed(b":2}\n\n".to_vec());
    assert_eq!(out, b"data: {\"b\":2}\n\n");
}

#[test]
fn understands_crlf_line_endings() {
    let stream = RECORDED.replace('\n', "\r\n");
    let bytes = stream.as_bytes();
    for cut in 0..=bytes.len() {
        let (out, scanner) = scan(&[&bytes[..cut], &bytes[cut..]], false);
        assert_eq!(out, bytes, "cut at {cut}");
        assert_eq!(scanner.usage(), Some(USAGE));
        assert!(scanner.done());
    }
}

#[test]
fn ignores_usage_null_and_the_word_usage_in_content() {
    let (_, scanner) =
        scan(&[b"data: {\"choices\":[{\"delta\":{\"content\":\"\\\"usage\\\":{\"}}],\"usage\":null}\n\n"], true);
    assert_eq!(scanner.usage(), None);
    assert!(!scanner.done());
}

#[test]
fn keeps_usage_on_chunks_that_also_carry_choices() {
    let event = b"data: {\"choices\":[{\"delta\":{}}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\n";
    let (out, scanner) = scan(&[event], true);
    assert_eq!(out, event, "a chunk with choices is never dropped");
    assert_eq!(scanner.usage().unwrap().completion_tokens, 2);
}

#[test]
fn an_event_larger_than_the_cap_is_forwarded_unread_as_it_arrives() {
    // vLLM's first chunk of an echoed prompt with logprobs can be megabytes: held whole it would
    // grow memory; refused it would fail a valid request on every backend.
    let big = format!("data: {{\"choices\":[{{\"text\":\"{}\"}}]}}\n\n", "x".repeat(200));
    let stream = format!("{big}data: {{\"choices\":[],\"usage\":{{\"total_tokens\":9}}}}\n\ndata: [DONE]\n\n");
    let bytes = stream.as_bytes();
    for cut in [0, 10, 63, 64, 65, 100, big.len() - 1, big.len(), big.len() + 1] {
        let mut scanner = SseScanner::new(Dialect::Chunks, false, 64);
        let mut out = scanner.feed(bytes[..cut].to_vec());
        assert!(scanner.buffered() <= 64, "cut {cut}: nothing over the cap is held");
        out.extend(scanner.feed(bytes[cut..].to_vec()));
        assert_eq!(out, bytes, "cut {cut}: every byte forwarded once, in order");
        assert!(scanner.done() && scanner.usage().is_some(), "cut {cut}: scanning resumes after it");
        assert_eq!(scanner.content_events(), 1, "cut {cut}: it counts as content");
    }
}

#[test]
fn memory_stays_flat_over_a_long_stream() {
    let event = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"tok \"}}]}\n\n";
    let mut scanner = SseScanner::new(Dialect::Chunks, true, 1 << 10);
    let (mut fed, mut forwarded) = (0usize, 0usize);
    for i in 0..100_000 {
        // Feed each event in two halves so the scanner must hold a tail every time.
        let (a, b) = event.split_at(20 + i % 30);
        for piece in [a, b] {
            fed += piece.len();
            forwarded += scanner.feed(piece.to_vec()).len();
            assert!(scanner.buffered() < event.len(), "holds at most the one incomplete event");
        }
        assert_eq!(forwarded, fed, "every byte fed is forwarded once its event is complete");
    }
    assert_eq!(scanner.finish(), Vec::<u8>::new());
    assert_eq!(scanner.events(), 100_000);
}

#[test]
fn a_large_event_dripped_one_byte_at_a_time_is_scanned_in_linear_time() {
    // 1 MiB in one event, fed byte by byte: re-copying the held tail per byte would be ~500 GB of
    // copying (the old scanner never finished this); amortised appends keep it to a few MiB.
    // `make bench` times the 4 MiB case.
    let payload = format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n", "x".repeat(1 << 20));
    let mut scanner = SseScanner::new(Dialect::Chunks, false, 8 << 20);
    let mut out = Vec::new();
    let mut peak = 0;
    for byte in payload.as_bytes() {
        out.extend(scanner.feed(vec![*byte]));
        peak = peak.max(scanner.buffered());
    }
    assert_eq!(out, payload.as_bytes());
    assert!(peak < payload.len());
    assert_eq!(scanner.buffered(), 0);
}

#[test]
fn stops_at_the_backends_error_event_and_keeps_its_cleaned_message() {
    let vllm = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"error\": {\"message\": \"CUDA error at /srv/model.py:42 (http://10.1.2.3:8000)\", \"type\": \"BadRequestError\", \"param\": null, \"code\": 400}}\n\ndata: [DONE]\n\n";
    let legacy = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"object\":\"error\",\"message\":\"engine died\",\"type\":\"InternalServerError\",\"param\":null,\"code\":500}\n\ndata: [DONE]\n\n";
    for (stream, expected, request_fault) in
        [(&vllm[..], "CUDA error at [redacted] [redacted]", true), (&legacy[..], "engine died", false)]
    {
        let whole = scan(&[stream], false);
        for cut in 0..=stream.len() {
            let (out, scanner) = scan(&[&stream[..cut], &stream[cut..]], false);
            assert_eq!(out, whole.0, "cut at {cut}");
            assert_eq!(
                out, b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
                "nothing from the error on is relayed"
            );
            assert_eq!(
                scanner.stopped(),
                Some(&Stop::BackendError { message: Some(expected.to_string()), request_fault }),
                "cut at {cut}"
            );
            assert!(!scanner.done(), "the [DONE] after it is not relayed");
        }
    }
}

#[test]
fn the_word_error_in_content_or_finish_reason_is_not_an_error_event() {
    let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"error\"},\"finish_reason\":\"error\"}],\"error\":null}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"an \\\"error\\\" here\"}}]}\n\ndata: [DONE]\n\n";
    let (out, scanner) = scan(&[stream], false);
    assert_eq!(out, stream);
    assert_eq!(scanner.stopped(), None);
    assert!(scanner.done());
}

#[test]
fn flags_a_data_event_that_is_not_a_json_object_and_relays_nothing_after_it() {
    let mut scanner = SseScanner::new(Dialect::Chunks, false, 1 << 20);
    let out = scanner.feed(b"data: {\"a\":1}\n\ndata: {not json\n\ndata: [DONE]\n\n".to_vec());
    assert_eq!(out, b"data: {\"a\":1}\n\n");
    assert!(scanner.malformed());
    assert!(!scanner.done(), "the [DONE] after it is not relayed either");
}
