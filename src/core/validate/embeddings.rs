//! `POST /v1/embeddings`: inputs as text or token ids, within an item cap and the content cap.

use super::fields::*;
use super::Validated;
use crate::core::config::RequestCaps;
use crate::core::error::GatewayError;
use crate::core::openai::Endpoint;
use serde_json::Value;

/// Parses and validates a `/v1/embeddings` body. An embedding generates nothing: its cost is its
/// input, settled on the backend's `usage.prompt_tokens`.
pub fn validate_embeddings(body: &[u8], caps: &RequestCaps) -> Result<Validated, GatewayError> {
    let request = parse_object(body)?;
    let model = model(&request)?;
    if request.get("messages").is_some_and(|m| !m.is_null()) {
        return Err(GatewayError::invalid("messages", "embeddings take their text in input"));
    }
    let mut prompt = PromptSize::default();
    let inputs = texts_or_token_ids(request.get("input"), "input", false, caps, &mut prompt)?;
    match request.get("encoding_format") {
        None | Some(Value::Null) => {}
        Some(Value::String(f)) if f == "float" || f == "base64" => {}
        Some(_) => return Err(GatewayError::invalid("encoding_format", "encoding_format must be float or base64")),
    }
    if optional_integer(&request, "dimensions")? == Some(0) {
        return Err(GatewayError::invalid("dimensions", "dimensions must be an integer of at least 1"));
    }
    optional_string(&request, "user")?;
    if stream(&request)? {
        return Err(GatewayError::invalid("stream", "embeddings are not streamed"));
    }
    refuse_fields(&request)?;
    Ok(Validated {
        endpoint: Endpoint::Embeddings,
        model,
        stream: false,
        client_wants_usage: false,
        max_tokens: None,
        choices: 0,
        text_bytes: prompt.text_bytes,
        token_ids: prompt.token_ids,
        media_parts: 0,
        messages: inputs,
        stateful: None,
        background: false,
        body: request,
    })
}
