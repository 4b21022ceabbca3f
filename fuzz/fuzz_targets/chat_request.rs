//! Any bytes as a chat request body: validation never panics, and whatever it accepts becomes a
//! JSON object the backend can parse, with the caps it promised.
#![no_main]

use edge_gateway::core::config::RequestLimits;
use edge_gateway::core::validate::validate_chat;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = RequestLimits { max_body_bytes: 1 << 20, max_messages: 8, max_content_bytes: 4096, max_tokens: 512, max_n: 2 };
    if let Ok(chat) = validate_chat(data, &limits) {
        let sent: serde_json::Value = serde_json::from_slice(&chat.upstream_body).expect("upstream body is JSON");
        assert!(sent.is_object());
        assert!(chat.max_tokens >= 1 && chat.max_tokens <= 512);
        assert!(chat.choices >= 1 && chat.choices <= 2);
        assert!(chat.content_bytes <= 4096);
        if chat.stream {
            assert_eq!(sent["stream_options"]["include_usage"], true);
        }
    }
});
