//! Every validation rule, per endpoint, table-driven: each bad input is a 400 naming its `param`.

mod chat;
mod completions;
mod embeddings;
mod responses;

use edge_gateway::core::config::{Backend, RequestCaps};
use edge_gateway::core::error::GatewayError;

pub fn limits() -> RequestCaps {
    RequestCaps {
        max_body_bytes: 1 << 20,
        max_messages: 4,
        max_embedding_inputs: 4,
        max_content_bytes: 100,
        max_tokens: 512,
        max_n: 2,
        allow_remote_media: false,
    }
}

/// A backend, with the context length it declares (if any).
pub fn backend(max_model_len: Option<u32>) -> Backend {
    Backend {
        name: "gpu".into(),
        base_url: "http://gpu".into(),
        models: vec!["llama".into()],
        api_key: None,
        health_path: "/health".into(),
        priority: 0,
        weight: 1,
        max_model_len,
        connect_timeout_ms: None,
    }
}

/// `base` with the fields of `extra` set, as JSON bytes.
pub fn body_with(base: serde_json::Value, extra: serde_json::Value) -> Vec<u8> {
    let mut v = base;
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    serde_json::to_vec(&v).unwrap()
}

/// The `param` a refused body names.
pub fn param_of(result: Result<edge_gateway::core::validate::Validated, GatewayError>, name: &str) -> Option<String> {
    match result {
        Ok(_) => panic!("{name}: accepted"),
        Err(GatewayError::InvalidRequest { param, .. }) => param,
        Err(other) => panic!("{name}: {other:?}"),
    }
}
