//! Any bytes as a request body for every endpoint: validation never
//! panics, and whatever it accepts becomes a JSON object the backend can parse, with the caps it
//! promised and an estimate that covers what it lets the backend generate.
#![no_main]

use edge_gateway::core::config::{Backend, RequestCaps};
use edge_gateway::core::openai::Endpoint;
use edge_gateway::core::validate::validate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = RequestCaps {
        max_body_bytes: 1 << 20,
        max_messages: 8,
        max_embedding_inputs: 8,
        max_content_bytes: 4096,
        max_tokens: 512,
        max_n: 2,
        allow_remote_media: false,
    };
    let backend = |max_model_len| Backend {
        name: "b".into(),
        base_url: "http://b".into(),
        models: vec![],
        api_key: None,
        health_path: "/health".into(),
        priority: 0,
        weight: 1,
        max_model_len,
        connect_timeout_ms: None,
    };
    let endpoints = [Endpoint::ChatCompletions, Endpoint::Completions, Endpoint::Embeddings, Endpoint::Responses];
    for (endpoint, chat) in endpoints.into_iter().filter_map(|e| Some((e, validate(e, data, &limits).ok()?))) {
        for context in [None, Some(64), Some(4096)] {
            let sent: serde_json::Value =
                serde_json::from_slice(&chat.upstream_body(&backend(context), 512)).expect("upstream body is JSON");
            assert!(sent.is_object());
            if chat.stream && matches!(endpoint, Endpoint::ChatCompletions | Endpoint::Completions) {
                assert_eq!(sent["stream_options"]["include_usage"], true);
            }
            // Whatever is sent stays within the cap, and the estimate covers it.
            let fields = ["max_tokens", "max_completion_tokens", "max_output_tokens"];
            let sent_max = fields.iter().filter_map(|f| sent[*f].as_u64()).max();
            if let Some(m) = sent_max {
                assert!(m >= 1 && m <= 512);
            }
            let estimate = chat.token_estimate([&backend(context)], 512);
            assert!(estimate >= chat.prompt_estimate() + sent_max.unwrap_or(0) * u64::from(chat.choices));
        }
        match endpoint {
            Endpoint::Embeddings => assert_eq!(chat.choices, 0),
            // n per prompt, at most 8 prompts.
            Endpoint::Completions => assert!(chat.choices >= 1 && chat.choices <= 16),
            _ => assert!(chat.choices >= 1 && chat.choices <= 2),
        }
        assert!(chat.text_bytes as u64 + chat.token_ids * 4 <= 4096);
    }
});
