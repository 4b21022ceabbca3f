//! The context window, as vLLM enforces it: which completion limit a request asks
//! for, whether prompt and completion fit in `--max-model-len`, and how many tokens
//! the completion may take.
//!
//! From vLLM's `OpenAIServing._validate_input` (`vllm/entrypoints/openai/engine/serving.py`):
//! the limit is `max_completion_tokens or max_tokens` (Python's `or`, so a missing or
//! zero `max_completion_tokens` falls back to `max_tokens`); a prompt of `max_model_len`
//! tokens or more is refused whatever the limit; a prompt plus limit over
//! `max_model_len` is refused; both raise `VLLMValidationError`, whose `str()` appends
//! `(parameter=…, value=…)` and which `create_error_response` turns into a 400
//! `BadRequestError` with that `param`. Without a limit the completion may use what is
//! left of the context (`get_max_tokens` in `vllm/entrypoints/utils.py`).

use serde_json::{Map, Value};

use crate::controls::optional_count;
use crate::errors::vllm_error_with_param;
use crate::response::Response;

/// The completion limit the request asks for, read as vLLM reads it.
pub(crate) fn requested_limit(body: &Map<String, Value>) -> Result<Option<u64>, String> {
    let max_completion_tokens = optional_count(body.get("max_completion_tokens"), "max_completion_tokens", u64::MAX)?;
    let max_tokens = optional_count(body.get("max_tokens"), "max_tokens", u64::MAX)?;
    Ok(match max_completion_tokens {
        Some(limit) if limit > 0 => Some(limit),
        _ => max_tokens,
    })
}

/// How many tokens the completion may take: the requested limit, else what the
/// context leaves (`None`: no context configured and no limit). A request that does
/// not fit gets vLLM's 400.
pub(crate) fn completion_budget(
    max_model_len: Option<u64>,
    prompt_tokens: u64,
    requested: Option<u64>,
) -> Result<Option<u64>, Response> {
    let Some(context) = max_model_len else {
        return Ok(requested);
    };
    if prompt_tokens >= context {
        return Err(vllm_error_with_param(
            400,
            "BadRequestError",
            &format!(
                "This model's maximum context length is {context} tokens. However, your \
                 request has {prompt_tokens} input tokens. Please reduce the length of the \
                 input messages. (parameter=input_tokens, value={prompt_tokens})"
            ),
            "input_tokens",
        ));
    }
    match requested {
        Some(limit) if prompt_tokens.saturating_add(limit) > context => Err(vllm_error_with_param(
            400,
            "BadRequestError",
            &format!(
                "'max_tokens' or 'max_completion_tokens' is too large: {limit}. This \
                     model's maximum context length is {context} tokens and your request has \
                     {prompt_tokens} input tokens ({limit} > {context} - {prompt_tokens}). \
                     (parameter=max_tokens, value={limit})"
            ),
            "max_tokens",
        )),
        Some(limit) => Ok(Some(limit)),
        None => Ok(Some(context - prompt_tokens)),
    }
}

/// An embedding input item must fit in the context (it may fill it: nothing is generated),
/// else vLLM's 400 from `_validate_input` for `EmbeddingCompletionRequest`.
pub(crate) fn embedding_input_fits(max_model_len: Option<u64>, tokens: u64) -> Result<(), Response> {
    match max_model_len {
        Some(context) if tokens > context => Err(vllm_error_with_param(
            400,
            "BadRequestError",
            &format!(
                "This model's maximum context length is {context} tokens. However, you requested \
                 {tokens} tokens in the input for embedding generation. Please reduce the length \
                 of the input. (parameter=input_tokens, value={tokens})"
            ),
            "input_tokens",
        )),
        _ => Ok(()),
    }
}
