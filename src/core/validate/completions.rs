//! `POST /v1/completions`, the legacy text completion: one prompt or several, as text or token ids.

use super::fields::*;
use super::Validated;
use crate::core::config::RequestCaps;
use crate::core::error::GatewayError;
use crate::core::openai::Endpoint;
use serde_json::Value;

/// The most `logprobs` a caller may ask for per token (vLLM's default `--max-logprobs`; OpenAI
/// allows 5).
const MAX_LOGPROBS: u64 = 20;

/// Parses and validates a `/v1/completions` body. Without `max_tokens` a completion is 16 tokens
/// long (OpenAI's and vLLM's default), which the gateway sends explicitly so every backend keeps
/// to it (llama.cpp's own default is unlimited).
pub fn validate_completions(body: &[u8], caps: &RequestCaps) -> Result<Validated, GatewayError> {
    let mut request = parse_object(body)?;
    let model = model(&request)?;
    let mut prompt = PromptSize::default();
    let prompts = texts_or_token_ids(request.get("prompt"), "prompt", true, caps, &mut prompt)?;
    if let Some(suffix) = optional_string(&request, "suffix")? {
        prompt.add_text(suffix.len(), "suffix", caps)?;
    }
    let stream = stream(&request)?;
    check_sampling(&request)?;
    let choices = check_choices(&request, caps)?;
    check_bool(&request, "echo")?;
    match request.get("logprobs") {
        None | Some(Value::Null) => {}
        Some(n) if n.as_u64().is_some_and(|n| n <= MAX_LOGPROBS) => {}
        Some(_) => {
            return Err(GatewayError::invalid(
                "logprobs",
                format!("logprobs must be an integer from 0 to {MAX_LOGPROBS}"),
            ))
        }
    }
    refuse_fields(&request)?;
    let max_tokens = check_length(&request, &["max_tokens"], caps)?;
    let client_wants_usage = check_stream_options(&mut request, stream)?;
    Ok(Validated {
        endpoint: Endpoint::Completions,
        model,
        stream,
        client_wants_usage,
        max_tokens,
        choices: choices.saturating_mul(prompts),
        text_bytes: prompt.text_bytes,
        token_ids: prompt.token_ids,
        media_parts: 0,
        messages: 0,
        stateful: None,
        background: false,
        body: request,
    })
}
