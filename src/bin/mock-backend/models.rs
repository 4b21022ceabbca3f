//! The served models as vLLM lists them (`GET /v1/models`), and one of them by name
//! (`GET /v1/models/{model}`, OpenAI's retrieve-model call).

use serde_json::{json, Value};

use crate::cli::{Config, DEFAULT_MAX_MODEL_LEN};

/// vLLM's `ModelList`.
pub(crate) fn model_list(config: &Config) -> Value {
    let data: Vec<Value> = config.models.iter().map(|name| model_card(config, name)).collect();
    json!({"object": "list", "data": data})
}

/// vLLM's `ModelCard` for a served model (without its `permission` list).
pub(crate) fn model_card(config: &Config, name: &str) -> Value {
    let max_model_len = config.max_model_len.unwrap_or(DEFAULT_MAX_MODEL_LEN);
    json!({"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "vllm",
           "root": name, "parent": null, "max_model_len": max_model_len})
}
