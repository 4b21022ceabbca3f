//! Checks every endpoint shares: the body, `model`, `stream`, sampling and length fields, content
//! parts, and the running size of what the backend will tokenize.

use crate::core::config::RequestCaps;
use crate::core::error::GatewayError;
use serde_json::{Map, Value};

/// Content part types that carry media rather than text.
const MEDIA_PARTS: &[&str] = &[
    "image_url",
    "input_image",
    "image",
    "input_audio",
    "audio_url",
    "audio",
    "video_url",
    "video",
    "file",
    "input_file",
];

/// Fields refused with a 400 naming them, on every endpoint: ones that set the generation length
/// themselves and would escape both the cap and the token estimate (llama.cpp's `n_predict: -1`
/// is "unlimited"); a caller's own `chat_template`, which can render an unbounded prompt from a
/// few bytes; vLLM's `priority` and `kv_transfer_params`, which act on other tenants' requests;
/// and vLLM's `prompt_embeds`, tensors that skip the tokenizer (and every count) and that vLLM
/// deserializes with torch.
const REFUSED_FIELDS: &[(&str, &str)] = &[
    ("n_predict", "set the completion length with max_tokens"),
    ("max_new_tokens", "set the completion length with max_tokens"),
    ("num_predict", "set the completion length with max_tokens"),
    ("chat_template", "the model's own chat template is used"),
    ("priority", "scheduling priority is the operator's to set"),
    ("kv_transfer_params", "KV-cache transfer is the operator's to set"),
    ("prompt_embeds", "send the prompt as text or token ids"),
    ("n_cmpl", "set the number of completions with n"),
];

/// Content parts that carry tensors (vLLM's `image_embeds`, `audio_embeds`, `video_embeds`,
/// `prompt_embeds` parts): refused for the same reason as `prompt_embeds` — they skip the
/// tokenizer and every count, and vLLM deserializes them with torch.
fn is_tensor_part(kind: &str) -> bool {
    kind.ends_with("_embeds") || kind == "embeds"
}

/// Longest model name accepted (names are echoed in errors and logged).
const MAX_MODEL_CHARS: usize = 256;

/// The largest token id accepted (vocabularies are far smaller; the backend checks its own).
const MAX_TOKEN_ID: u64 = u32::MAX as u64;

/// The sizes of what the backend will tokenize, checked against the content cap as they grow.
#[derive(Default)]
pub(super) struct PromptSize {
    pub text_bytes: usize,
    pub token_ids: u64,
    pub media_parts: u32,
}

impl PromptSize {
    pub fn add_text(&mut self, bytes: usize, param: &str, caps: &RequestCaps) -> Result<(), GatewayError> {
        self.text_bytes = self.text_bytes.saturating_add(bytes);
        self.check(param, caps)
    }

    /// Token ids count four bytes each against the content cap (about a token's worth of text).
    pub fn add_token_ids(&mut self, count: usize, param: &str, caps: &RequestCaps) -> Result<(), GatewayError> {
        self.token_ids = self.token_ids.saturating_add(count as u64);
        self.check(param, caps)
    }

    fn check(&self, param: &str, caps: &RequestCaps) -> Result<(), GatewayError> {
        let size = (self.text_bytes as u64).saturating_add(self.token_ids.saturating_mul(4));
        if size > caps.max_content_bytes as u64 {
            return Err(GatewayError::invalid(
                param,
                format!("the request's text exceeds the limit of {} bytes", caps.max_content_bytes),
            ));
        }
        Ok(())
    }
}

pub(super) fn parse_object(body: &[u8]) -> Result<Map<String, Value>, GatewayError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(GatewayError::InvalidRequest {
            message: "The request body must be a JSON object.".into(),
            param: None,
            code: None,
        }),
        Err(e) => Err(GatewayError::InvalidRequest {
            message: format!("We could not parse the JSON body of your request: {e}."),
            param: None,
            code: None,
        }),
    }
}

/// `model`: a non-blank string of at most [`MAX_MODEL_CHARS`].
pub(super) fn model(request: &Map<String, Value>) -> Result<String, GatewayError> {
    match request.get("model") {
        Some(Value::String(m)) if m.chars().count() > MAX_MODEL_CHARS => {
            Err(GatewayError::invalid("model", format!("model must be at most {MAX_MODEL_CHARS} characters")))
        }
        Some(Value::String(m)) if !m.trim().is_empty() => Ok(m.clone()),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            Err(GatewayError::invalid("model", "you must provide a model parameter"))
        }
        Some(_) => Err(GatewayError::invalid("model", "model must be a string")),
    }
}

/// `stream`: a boolean, false when absent.
pub(super) fn stream(request: &Map<String, Value>) -> Result<bool, GatewayError> {
    match request.get("stream") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(GatewayError::invalid("stream", "stream must be a boolean")),
    }
}

/// Refuses the fields no endpoint accepts (see [`REFUSED_FIELDS`]).
pub(super) fn refuse_fields(request: &Map<String, Value>) -> Result<(), GatewayError> {
    for (field, why) in REFUSED_FIELDS {
        if request.contains_key(*field) {
            return Err(GatewayError::invalid(*field, format!("{field} is not accepted here: {why}")));
        }
    }
    Ok(())
}

/// `temperature` and `top_p`, within OpenAI's ranges.
pub(super) fn check_sampling(request: &Map<String, Value>) -> Result<(), GatewayError> {
    check_number(request, "temperature", |t| (0.0..=2.0).contains(&t), "a number from 0 to 2")?;
    check_number(request, "top_p", |p| p > 0.0 && p <= 1.0, "a number greater than 0 and at most 1")
}

/// `n` and `best_of` (at least `n`), both within the cap; returns the sequences generated.
pub(super) fn check_choices(request: &Map<String, Value>, caps: &RequestCaps) -> Result<u32, GatewayError> {
    let n = match optional_integer(request, "n")? {
        Some(n) if n < 1 || n > u64::from(caps.max_n) => {
            return Err(GatewayError::invalid("n", format!("n must be an integer from 1 to {}", caps.max_n)))
        }
        Some(n) => n as u32,
        None => 1,
    };
    let best_of = match optional_integer(request, "best_of")? {
        Some(b) if b < u64::from(n) || b > u64::from(caps.max_n) => {
            return Err(GatewayError::invalid(
                "best_of",
                format!("best_of must be an integer from n ({n}) to {}", caps.max_n),
            ))
        }
        Some(b) => b as u32,
        None => n,
    };
    check_bool(request, "use_beam_search")?;
    check_bool(request, "ignore_eos")?;
    Ok(best_of.max(n))
}

/// The completion budget from `fields` (each from 1 to the cap; backends honour one or the
/// other — vLLM and SGLang prefer `max_completion_tokens` — so the larger counts), and
/// `min_tokens` within it.
pub(super) fn check_length(
    request: &Map<String, Value>,
    fields: &[&str],
    caps: &RequestCaps,
) -> Result<Option<u32>, GatewayError> {
    let mut max_tokens: Option<u32> = None;
    for field in fields {
        if let Some(value) = optional_integer(request, field)? {
            if value < 1 || value > u64::from(caps.max_tokens) {
                return Err(GatewayError::invalid(
                    *field,
                    format!("{field} must be an integer from 1 to {}", caps.max_tokens),
                ));
            }
            max_tokens = Some(max_tokens.map_or(value as u32, |m| m.max(value as u32)));
        }
    }
    if let Some(min) = optional_integer(request, "min_tokens")? {
        let most = max_tokens.unwrap_or(caps.max_tokens);
        if min > u64::from(most) {
            return Err(GatewayError::invalid(
                "min_tokens",
                format!("min_tokens must be an integer from 0 to {} ({most})", fields[0]),
            ));
        }
    }
    Ok(max_tokens)
}

/// Content parts (chat message content, Responses message content and tool output): text parts
/// need their text, every string counts, media parts cost [`crate::core::validate::MEDIA_PART_TOKENS`]
/// each and must come inline. `at` names the array for errors (`messages[0].content`).
pub(super) fn check_parts(
    parts: &[Value],
    at: &str,
    param: &str,
    caps: &RequestCaps,
    prompt: &mut PromptSize,
) -> Result<(), GatewayError> {
    for (j, part) in parts.iter().enumerate() {
        let at = || format!("{at}[{j}]");
        let Value::Object(part) = part else {
            return Err(GatewayError::invalid(at(), "each content part must be an object"));
        };
        let kind = match part.get("type") {
            Some(Value::String(t)) => t.as_str(),
            _ => {
                return Err(GatewayError::invalid(
                    format!("{}.type", at()),
                    "each content part must have a string type",
                ))
            }
        };
        if is_tensor_part(kind) {
            return Err(GatewayError::invalid(
                format!("{}.type", at()),
                format!("{kind} parts are not accepted here: send text, or media as data: URLs"),
            ));
        }
        if matches!(kind, "text" | "input_text" | "output_text") && !part.get("text").is_some_and(Value::is_string) {
            return Err(GatewayError::invalid(format!("{}.text", at()), "a text part must have a string text"));
        }
        // Templates join parts with a separator: every part is at least one byte.
        prompt.add_text(1, param, caps)?;
        if MEDIA_PARTS.contains(&kind) {
            check_media_urls(part, &at(), caps)?;
            prompt.media_parts = prompt.media_parts.saturating_add(1);
        } else {
            // Text parts, refusals, and parts we do not know: every string counts.
            let bytes = part.iter().filter(|(k, _)| *k != "type").map(|(_, v)| string_bytes(v)).sum();
            prompt.add_text(bytes, param, caps)?;
        }
    }
    Ok(())
}

/// Media must come inline (`data:`) unless the operator allows remote media: the backend would
/// fetch any other URL itself, from inside the operator's network. `file:` is never allowed.
fn check_media_urls(part: &Map<String, Value>, at: &str, caps: &RequestCaps) -> Result<(), GatewayError> {
    for (key, value) in part {
        // `{"image_url": {"url": …}}` (chat) or `{"image_url": "…"}` / `{"file_url": "…"}`
        // (Responses API).
        let (url, param) = match value {
            Value::String(url) if key.ends_with("url") => (url, format!("{at}.{key}")),
            Value::Object(inner) => match inner.get("url").or_else(|| inner.get("file_url")) {
                Some(Value::String(url)) => (url, format!("{at}.{key}.url")),
                _ => continue,
            },
            _ => continue,
        };
        let scheme = url.split_once(':').map(|(s, _)| s.trim().to_ascii_lowercase()).unwrap_or_default();
        let allowed = scheme == "data" || (caps.allow_remote_media && matches!(scheme.as_str(), "http" | "https"));
        if !allowed {
            let message = if caps.allow_remote_media {
                "media URLs must be http(s) or inline data: URLs"
            } else {
                "this gateway accepts media only inline, as data: URLs (remote media URLs are disabled)"
            };
            return Err(GatewayError::invalid(param, message));
        }
    }
    Ok(())
}

/// A legacy completion's `prompt` or an embedding's `input`: a string, strings, token ids, or
/// lists of token ids, within the item cap and the content cap; returns how many items.
/// `empty_strings`: whether `""` is an item (a completion may start from nothing; an embedding
/// of nothing is refused, as OpenAI does).
pub(super) fn texts_or_token_ids(
    value: Option<&Value>,
    param: &str,
    empty_strings: bool,
    caps: &RequestCaps,
    prompt: &mut PromptSize,
) -> Result<u32, GatewayError> {
    let shape = format!(
        "{param} must be a string, an array of strings, an array of token ids, or an array of arrays of token ids"
    );
    let empty = || GatewayError::invalid(param, format!("{param} must not be empty"));
    let items = match value {
        None | Some(Value::Null) => {
            return Err(GatewayError::invalid(param, format!("you must provide a {param} parameter")))
        }
        Some(Value::String(s)) if s.is_empty() && !empty_strings => return Err(empty()),
        Some(Value::String(s)) => {
            prompt.add_text(s.len(), param, caps)?;
            return Ok(1);
        }
        Some(Value::Array(items)) if items.is_empty() => return Err(empty()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(GatewayError::invalid(param, shape)),
    };
    if items.iter().all(Value::is_number) {
        prompt.add_token_ids(token_ids(items, param)?, param, caps)?;
        return Ok(1);
    }
    if items.len() > caps.max_embedding_inputs {
        return Err(GatewayError::invalid(
            param,
            format!("too many items in {param}: {} (the limit is {})", items.len(), caps.max_embedding_inputs),
        ));
    }
    for (i, item) in items.iter().enumerate() {
        let at = || format!("{param}[{i}]");
        match item {
            Value::String(s) if s.is_empty() && !empty_strings => {
                return Err(GatewayError::invalid(at(), format!("{param} must not contain empty strings")))
            }
            Value::String(s) => prompt.add_text(s.len(), param, caps)?,
            Value::Array(ids) => prompt.add_token_ids(token_ids(ids, &at())?, param, caps)?,
            _ => return Err(GatewayError::invalid(at(), shape)),
        }
    }
    Ok(items.len() as u32)
}

/// A prompt or input given as token ids: a non-empty array of integers from 0 up.
fn token_ids(items: &[Value], at: &str) -> Result<usize, GatewayError> {
    if items.is_empty() {
        return Err(GatewayError::invalid(at, "a list of token ids must not be empty"));
    }
    match items.iter().all(|t| t.as_u64().is_some_and(|id| id <= MAX_TOKEN_ID)) {
        true => Ok(items.len()),
        false => Err(GatewayError::invalid(at, "token ids must be integers from 0 to 4294967295")),
    }
}

/// Bytes of every string inside `value` (object keys excluded).
pub(super) fn string_bytes(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(string_bytes).sum(),
        Value::Object(fields) => fields.values().map(string_bytes).sum(),
        _ => 0,
    }
}

/// The length of `value` as JSON, which is how templates render tools and schemas.
pub(super) fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// Adds each of `fields` that is present, as JSON, to what the backend tokenizes.
pub(super) fn count_json_fields(
    request: &Map<String, Value>,
    fields: &[&str],
    caps: &RequestCaps,
    prompt: &mut PromptSize,
) -> Result<(), GatewayError> {
    for field in fields {
        if let Some(value) = request.get(*field).filter(|v| !v.is_null()) {
            prompt.add_text(json_len(value), field, caps)?;
        }
    }
    Ok(())
}

pub(super) fn check_number(
    request: &Map<String, Value>,
    field: &str,
    ok: impl Fn(f64) -> bool,
    expected: &str,
) -> Result<(), GatewayError> {
    match request.get(field) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Number(n)) if n.as_f64().is_some_and(&ok) => Ok(()),
        Some(_) => Err(GatewayError::invalid(field, format!("{field} must be {expected}"))),
    }
}

pub(super) fn check_bool(request: &Map<String, Value>, field: &str) -> Result<(), GatewayError> {
    match request.get(field) {
        None | Some(Value::Null) | Some(Value::Bool(_)) => Ok(()),
        Some(_) => Err(GatewayError::invalid(field, format!("{field} must be a boolean"))),
    }
}

/// Refuses each of `fields` that is present, saying what to use instead.
pub(super) fn refuse(request: &Map<String, Value>, fields: &[&str], instead: &str) -> Result<(), GatewayError> {
    match fields.iter().find(|f| request.get(**f).is_some_and(|v| !v.is_null())) {
        Some(field) => Err(GatewayError::invalid(*field, format!("{field} is not accepted here: {instead}"))),
        None => Ok(()),
    }
}

/// A string field, when present (`user`, `suffix`, `instructions`…).
pub(super) fn optional_string<'a>(
    request: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, GatewayError> {
    match request.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(GatewayError::invalid(field, format!("{field} must be a string"))),
    }
}

pub(super) fn optional_integer(request: &Map<String, Value>, field: &str) -> Result<Option<u64>, GatewayError> {
    match request.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
            (Some(v), _) => Ok(Some(v)),
            (None, Some(_)) => Ok(Some(0)), // negative: reported by the caller's range check
            _ => Err(GatewayError::invalid(field, format!("{field} must be an integer"))),
        },
        Some(_) => Err(GatewayError::invalid(field, format!("{field} must be an integer"))),
    }
}

/// Validates `stream_options` and, on chunked streams, asks the backend for the usage chunk.
/// Returns whether the client asked for usage itself.
pub(super) fn check_stream_options(request: &mut Map<String, Value>, stream: bool) -> Result<bool, GatewayError> {
    let wants = match request.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(options)) => match options.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(GatewayError::invalid("stream_options.include_usage", "include_usage must be a boolean"))
            }
        },
        Some(_) => return Err(GatewayError::invalid("stream_options", "stream_options must be an object")),
    };
    if !stream && request.get("stream_options").is_some_and(|o| !o.is_null()) {
        return Err(GatewayError::invalid("stream_options", "stream_options is only allowed when stream is true"));
    }
    if stream {
        let options = request.entry("stream_options").or_insert_with(|| Value::Object(Map::new()));
        if !options.is_object() {
            *options = Value::Object(Map::new());
        }
        if let Value::Object(options) = options {
            options.insert("include_usage".into(), Value::Bool(true));
        }
    }
    Ok(wants)
}
