//! Text completions (`POST /v1/completions`, OpenAI's legacy API): interpret a request
//! as vLLM's `CompletionRequest` does (prompts, `max_tokens`, `n`, `best_of`, `echo`,
//! `logprobs`, `suffix`, streaming), fit each prompt in the context, and plan the reply.

use std::sync::atomic::Ordering;

use serde_json::{Map, Value};

use crate::context::completion_budget;
use crate::controls::optional_count;
use crate::errors::{bad_request, vllm_error_with_param};
use crate::intake::{canned_reply, controls, include_usage, json_body, optional_bool, resolve_model, unix_now};
use crate::plan::plan_reply;
use crate::reply::Reply;
use crate::request::Request;
use crate::response::Response;
use crate::state::State;
use crate::text_completion::{Prompt, TextCompletion};
use crate::tokens::{self, token_text};

/// vLLM's `CompletionRequest.max_tokens` default (OpenAI's too), also when `null` is sent.
const DEFAULT_MAX_TOKENS: u64 = 16;
/// vLLM's default `--max-logprobs`.
const MAX_LOGPROBS: i64 = 20;
/// Most choices per prompt (OpenAI's limit).
const MAX_N: u64 = 128;

pub(crate) fn completions(state: &State, request: &Request) -> Result<Reply, Response> {
    let body = json_body(request)?;
    let controls = controls(&body, &state.config)?;
    let model = resolve_model(&state.config, body.get("model"))?;
    let prompts = prompts(body.get("prompt"))?;
    let stream = optional_bool(&body, "stream")?.unwrap_or(false);
    if !stream && body.get("stream_options").is_some_and(truthy) {
        return Err(invalid("Stream options can only be defined when `stream=True`.", "stream_options"));
    }
    // vLLM's renderer refuses it before anything else is generated.
    if body.get("suffix").is_some_and(|suffix| !suffix.is_null()) {
        return Err(bad_request("suffix is not currently supported"));
    }
    let echo = optional_bool(&body, "echo")?.unwrap_or(false);
    let n = choices(&body)?;
    let logprobs = logprobs(body.get("logprobs"))?;
    let max_tokens = optional_count(body.get("max_tokens"), "max_tokens", u64::MAX)
        .map_err(|m| bad_request(&m))?
        .unwrap_or(DEFAULT_MAX_TOKENS);
    // `max_tokens: 0` generates nothing, which only `echo` makes sense of (SamplingParams).
    if max_tokens == 0 && !echo {
        return Err(bad_request("max_tokens must be at least 1, got 0."));
    }
    if let Some(reply) = canned_reply(&controls) {
        return Ok(reply);
    }
    for prompt in &prompts {
        completion_budget(state.config.max_model_len, prompt.tokens, Some(max_tokens))?;
    }
    let limit = max_tokens.min(controls.chunks);
    let completion = TextCompletion {
        id: format!("cmpl-mock-{}", state.next_id.fetch_add(1, Ordering::SeqCst)),
        created: unix_now(),
        model,
        prompts,
        n,
        completion_tokens: limit,
        finish_reason: if limit < controls.chunks { "length" } else { "stop" },
        echo,
        logprobs,
        include_usage: include_usage(&body),
    };
    Ok(plan_reply(&completion, &controls, stream))
}

/// The prompts: a string, strings, token ids (one prompt) or token-id arrays. A text
/// counts `bytes / 4 + 1` tokens like a chat message; token ids count their length and
/// read as the mock's tokens when echoed.
fn prompts(prompt: Option<&Value>) -> Result<Vec<Prompt>, Response> {
    let empty = || invalid("Either prompt or prompt_embeds must be provided and non-empty.", "prompt");
    let text = |text: &str| Prompt { text: text.to_owned(), tokens: tokens::count(text.len(), 1) };
    let token_ids = |ids: &[Value]| -> Option<Prompt> {
        let ids: Vec<u64> = ids.iter().map(Value::as_u64).collect::<Option<_>>()?;
        Some(Prompt { text: ids.iter().map(|&id| token_text(id)).collect(), tokens: u64::try_from(ids.len()).ok()? })
    };
    let prompts = match prompt {
        None | Some(Value::Null) => return Err(empty()),
        Some(Value::String(value)) if value.is_empty() => return Err(empty()),
        Some(Value::Array(values)) if values.is_empty() => return Err(empty()),
        Some(Value::String(value)) => Some(vec![text(value)]),
        Some(Value::Array(values)) if values.iter().all(Value::is_string) => {
            Some(values.iter().filter_map(Value::as_str).map(text).collect())
        }
        Some(Value::Array(values)) if values.iter().all(Value::is_number) => token_ids(values).map(|p| vec![p]),
        Some(Value::Array(values)) => {
            values.iter().map(|value| value.as_array().and_then(|ids| token_ids(ids))).collect::<Option<Vec<_>>>()
        }
        Some(_) => None,
    };
    match prompts {
        Some(prompts) if prompts.iter().any(|prompt| prompt.tokens == 0) => Err(empty()),
        Some(prompts) => Ok(prompts),
        None => Err(bad_request(
            "`prompt` must be a string, an array of strings, an array of token ids, or an array of token-id arrays.",
        )),
    }
}

/// `n` (default 1), and `best_of`, which vLLM up to 0.6 needed at least as large and
/// later versions ignore: the answer always has `n` choices per prompt.
fn choices(body: &Map<String, Value>) -> Result<usize, Response> {
    let n = optional_count(body.get("n"), "n", MAX_N).map_err(|m| bad_request(&m))?.unwrap_or(1);
    if n == 0 {
        return Err(bad_request("n must be at least 1, got 0."));
    }
    if let Some(best_of) = optional_count(body.get("best_of"), "best_of", MAX_N).map_err(|m| bad_request(&m))? {
        if best_of < n {
            return Err(bad_request(&format!(
                "best_of must be greater than or equal to n, got n={n} and best_of={best_of}."
            )));
        }
    }
    Ok(usize::try_from(n).unwrap_or(1))
}

/// `logprobs`: 0 to vLLM's default `--max-logprobs` of 20 (OpenAI allows 5).
fn logprobs(value: Option<&Value>) -> Result<Option<u64>, Response> {
    let Some(value) = value.filter(|value| !value.is_null()) else {
        return Ok(None);
    };
    match value.as_i64() {
        Some(k) if (0..=MAX_LOGPROBS).contains(&k) => Ok(u64::try_from(k).ok()),
        // -1 asks for the whole vocabulary, which is more than allowed too.
        Some(k) if k > MAX_LOGPROBS || k == -1 => Err(invalid(
            &format!(
                "Requested sample logprobs of {k}, which is greater than max allowed: {MAX_LOGPROBS} \
                 (parameter=logprobs, value={k})"
            ),
            "logprobs",
        )),
        Some(k) => Err(invalid(
            &format!("`logprobs` must be a positive value or -1. (parameter=logprobs, value={k})"),
            "logprobs",
        )),
        None => Err(invalid("`logprobs` must be an integer.", "logprobs")),
    }
}

/// A 400 naming the field, as vLLM's `VLLMValidationError`s do.
fn invalid(message: &str, param: &str) -> Response {
    vllm_error_with_param(400, "BadRequestError", message, param)
}

/// Python's truthiness, which vLLM's validators test (`{}` and `[]` are false).
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(value) => *value,
        Value::Object(fields) => !fields.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::String(text) => !text.is_empty(),
        Value::Number(number) => number.as_f64() != Some(0.0),
    }
}
