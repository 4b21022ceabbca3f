//! Any bytes from Redis: the reply parser never panics and never claims more bytes than it got.
#![no_main]

use edge_gateway::core::redis::parse_reply;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((_, used))) = parse_reply(data) {
        assert!(used <= data.len());
    }
});
