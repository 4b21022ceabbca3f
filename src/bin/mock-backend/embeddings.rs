//! `POST /v1/embeddings`: interpret the request (model, input, encoding, dimensions,
//! controls), and answer vLLM's `EmbeddingResponse` after the prefill, or the fault.

use std::sync::atomic::Ordering;

use serde::Serialize;
use serde_json::Value;

use crate::context::embedding_input_fits;
use crate::errors::bad_request;
use crate::faults::Fault;
use crate::intake::{canned_reply, controls, json_body, resolve_model, unix_now};
use crate::reply::{Ending, Reply};
use crate::request::Request;
use crate::response::Response;
use crate::state::State;
use crate::tokens;
use crate::vectors::{base64_f32, embedding};

/// One input item: what its vector is derived from, and how many tokens it counts.
struct Item {
    /// The item's JSON text.
    identity: String,
    tokens: u64,
}

#[derive(Clone, Copy)]
enum Encoding {
    Float,
    Base64,
}

const INPUT_SHAPES: &str =
    "`input` must be a string, an array of strings, an array of token ids, or an array of token-id arrays.";

pub(crate) fn embeddings(state: &State, request: &Request) -> Result<Reply, Response> {
    let body = json_body(request)?;
    let controls = controls(&body, &state.config)?;
    let model = resolve_model(&state.config, body.get("model"))?;
    let items = input_items(body.get("input"))?;
    let encoding = encoding(body.get("encoding_format"))?;
    let dims = dimensions(body.get("dimensions"), state.config.embedding_dims)?;
    if let Some(reply) = canned_reply(&controls) {
        return Ok(reply);
    }
    for item in &items {
        embedding_input_fits(state.config.max_model_len, item.tokens)?;
    }
    // Nothing is generated: the answer is ready when the prefill is over.
    if let Some(failure) = controls.fault.and_then(Fault::failure) {
        return Ok(Reply::Generated { response: failure.response, takes: controls.prefill, ending: Ending::Complete });
    }
    let prompt_tokens = items.iter().map(|item| item.tokens).fold(0, u64::saturating_add);
    let data = items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let vector = embedding(&item.identity, dims);
            let embedding = match encoding {
                Encoding::Float => EmbeddingValue::Float(vector),
                Encoding::Base64 => EmbeddingValue::Base64(base64_f32(&vector)),
            };
            Data { index, object: "embedding", embedding }
        })
        .collect();
    let answer = EmbeddingResponse {
        id: format!("embd-mock-{}", state.next_id.fetch_add(1, Ordering::SeqCst)),
        object: "list",
        created: unix_now(),
        model: &model,
        data,
        usage: Usage { prompt_tokens, total_tokens: prompt_tokens, completion_tokens: 0 },
    };
    let ending = if controls.fault == Some(Fault::Reset) { Ending::Reset } else { Ending::Complete };
    Ok(Reply::Generated { response: Response::json(200, &answer), takes: controls.prefill, ending })
}

/// The input items, each counted as chat counts a message (`bytes / 4 + 1`) or, given as
/// token ids, by its length.
fn input_items(input: Option<&Value>) -> Result<Vec<Item>, Response> {
    let text = |text: &str| Item { identity: Value::from(text).to_string(), tokens: tokens::count(text.len(), 1) };
    let token_ids = |ids: &[Value]| -> Option<Item> {
        if ids.is_empty() || !ids.iter().all(|id| id.as_u64().is_some()) {
            return None;
        }
        Some(Item { identity: Value::from(ids.to_vec()).to_string(), tokens: u64::try_from(ids.len()).ok()? })
    };
    let items = match input {
        Some(Value::String(value)) => Some(vec![text(value)]),
        Some(Value::Array(values)) if values.is_empty() => None,
        Some(Value::Array(values)) if values.iter().all(Value::is_string) => {
            Some(values.iter().filter_map(Value::as_str).map(text).collect())
        }
        Some(Value::Array(values)) if values.iter().all(Value::is_number) => token_ids(values).map(|item| vec![item]),
        Some(Value::Array(values)) => {
            values.iter().map(|value| value.as_array().and_then(|ids| token_ids(ids))).collect::<Option<Vec<_>>>()
        }
        _ => None,
    };
    items.ok_or_else(|| bad_request(INPUT_SHAPES))
}

fn encoding(format: Option<&Value>) -> Result<Encoding, Response> {
    match format.and_then(Value::as_str) {
        _ if format.is_none_or(Value::is_null) => Ok(Encoding::Float),
        Some("float") => Ok(Encoding::Float),
        Some("base64") => Ok(Encoding::Base64),
        _ => Err(bad_request("`encoding_format` must be `float` or `base64` (the mock serves no `bytes` formats).")),
    }
}

/// How many components to answer with: `dimensions` keeps the first ones (every mock
/// model is treated as matryoshka-trained); more than the model has gives them all.
fn dimensions(requested: Option<&Value>, dims: usize) -> Result<usize, Response> {
    match requested {
        None | Some(Value::Null) => Ok(dims),
        Some(value) => match value.as_i64() {
            // vLLM's `PoolingParams` check, a `ValueError`, so a 400 without `param`.
            Some(n) if n < 1 => Err(bad_request("Dimensions must be greater than 0")),
            Some(n) => Ok(usize::try_from(n).map_or(dims, |n| n.min(dims))),
            None => Err(bad_request("`dimensions` must be an integer.")),
        },
    }
}

/// vLLM's `EmbeddingResponse`, fields in its order.
#[derive(Serialize)]
struct EmbeddingResponse<'a> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'a str,
    data: Vec<Data>,
    usage: Usage,
}

#[derive(Serialize)]
struct Data {
    index: usize,
    object: &'static str,
    embedding: EmbeddingValue,
}

#[derive(Serialize)]
#[serde(untagged)]
enum EmbeddingValue {
    Float(Vec<f32>),
    Base64(String),
}

/// vLLM's `UsageInfo` as an embedding answer fills it: nothing generated.
#[derive(Serialize)]
struct Usage {
    prompt_tokens: u64,
    total_tokens: u64,
    completion_tokens: u64,
}
