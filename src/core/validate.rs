//! Checks a chat completion request before any backend sees it, and prepares what the backend gets.
//!
//! The body is parsed once into a JSON object so unknown fields pass through untouched (vLLM and
//! others accept extras); only the fields we police are read. Two are written: the `max_tokens`
//! cap when the client sent none (per backend, see [`ValidatedChat::upstream_body`]), and
//! `stream_options.include_usage` on streams so usage can be counted.
//!
//! Every text a backend tokenizes counts toward the content cap and the token estimate: every
//! string of every message (content and every part type, `name`, `refusal`, tool call arguments…),
//! and `tools`, `functions`, `tool_choice`, `function_call` and `response_format` as JSON. Media
//! parts (images, audio, video, files) count a fixed [`MEDIA_PART_TOKENS`] each; their URLs must be
//! inline `data:` unless the operator allows remote media, because vLLM fetches them itself.

use crate::core::config::{Backend, RequestCaps};
use crate::core::error::GatewayError;
use serde_json::{Map, Value};

const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool", "function"];

/// What one image, audio clip, video or file part is assumed to cost in prompt tokens (a LLaVA
/// image is 576, a Qwen2-VL one up to ~1,300 at common sizes).
pub const MEDIA_PART_TOKENS: u64 = 1024;

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

/// Top-level fields a chat template renders into the prompt (vLLM, SGLang and llama.cpp merge
/// `chat_template_kwargs` into the template's variables, where `tools` and `documents` override
/// the request's own).
const PROMPT_FIELDS: &[&str] =
    &["tools", "functions", "tool_choice", "function_call", "response_format", "documents", "chat_template_kwargs"];

/// Fields refused with a 400 naming them: ones that set the generation length themselves and
/// would escape both the `max_tokens` cap and the token estimate (llama.cpp's `n_predict: -1` is
/// "unlimited"); a caller's own `chat_template`, which can render an unbounded prompt from a few
/// bytes; and vLLM's `priority` and `kv_transfer_params`, which act on other tenants' requests.
const REFUSED_FIELDS: &[(&str, &str)] = &[
    ("n_predict", "set the completion length with max_tokens"),
    ("max_new_tokens", "set the completion length with max_tokens"),
    ("num_predict", "set the completion length with max_tokens"),
    ("chat_template", "the model's own chat template is used"),
    ("priority", "scheduling priority is the operator's to set"),
    ("kv_transfer_params", "KV-cache transfer is the operator's to set"),
];

/// Longest model name accepted (names are echoed in errors and logged).
const MAX_MODEL_CHARS: usize = 256;

/// Template tokens a chat adds around each message (role markers), and once per request (the
/// generation prompt, a default system text): generous on purpose, see [`ValidatedChat::prompt_bound`].
const TEMPLATE_TOKENS_PER_MESSAGE: u64 = 16;
const TEMPLATE_TOKENS_PER_REQUEST: u64 = 32;

/// A chat request that passed every check, ready to send upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedChat {
    pub model: String,
    pub stream: bool,
    /// Whether the client itself asked for the usage chunk (else we drop it from the stream).
    pub client_wants_usage: bool,
    /// The completion budget the client set: the larger of `max_tokens` and
    /// `max_completion_tokens` (backends honour one or the other). `None`: the client set none.
    pub max_tokens: Option<u32>,
    /// Sequences the backend generates per request: `n`, or `best_of` (and beam search) when larger.
    pub choices: u32,
    /// Bytes of every text the backend will tokenize, for estimates.
    pub text_bytes: usize,
    /// Media parts, each estimated at [`MEDIA_PART_TOKENS`].
    pub media_parts: u32,
    pub messages: u32,
    /// The request as the backend gets it, minus the per-backend `max_tokens`.
    body: Map<String, Value>,
}

/// What a backend is sent as the completion budget when the client named none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injection {
    /// `max_tokens` is set to this.
    MaxTokens(u32),
    /// Nothing is set (the backend's own default applies); it can generate at most this many.
    Nothing { at_most: u32 },
}

/// Parses and validates a `/v1/chat/completions` body.
pub fn validate_chat(body: &[u8], caps: &RequestCaps) -> Result<ValidatedChat, GatewayError> {
    let mut request = parse_object(body)?;

    let model = match request.get("model") {
        Some(Value::String(m)) if m.chars().count() > MAX_MODEL_CHARS => {
            return Err(GatewayError::invalid("model", format!("model must be at most {MAX_MODEL_CHARS} characters")))
        }
        Some(Value::String(m)) if !m.trim().is_empty() => m.clone(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(GatewayError::invalid("model", "you must provide a model parameter"))
        }
        Some(_) => return Err(GatewayError::invalid("model", "model must be a string")),
    };

    let mut prompt = PromptSize::default();
    let messages = check_messages(request.get("messages"), caps, &mut prompt)?;
    for field in PROMPT_FIELDS {
        if let Some(value) = request.get(*field).filter(|v| !v.is_null()) {
            prompt.add_text(json_len(value), field, caps)?;
        }
    }

    let stream = match request.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(GatewayError::invalid("stream", "stream must be a boolean")),
    };

    check_number(&request, "temperature", |t| (0.0..=2.0).contains(&t), "a number from 0 to 2")?;
    check_number(&request, "top_p", |p| p > 0.0 && p <= 1.0, "a number greater than 0 and at most 1")?;
    let n = match optional_integer(&request, "n")? {
        Some(n) if n < 1 || n > u64::from(caps.max_n) => {
            return Err(GatewayError::invalid("n", format!("n must be an integer from 1 to {}", caps.max_n)))
        }
        Some(n) => n as u32,
        None => 1,
    };
    let best_of = match optional_integer(&request, "best_of")? {
        Some(b) if b < u64::from(n) || b > u64::from(caps.max_n) => {
            return Err(GatewayError::invalid(
                "best_of",
                format!("best_of must be an integer from n ({n}) to {}", caps.max_n),
            ))
        }
        Some(b) => b as u32,
        None => n,
    };
    check_bool(&request, "use_beam_search")?;
    check_bool(&request, "ignore_eos")?;
    for (field, why) in REFUSED_FIELDS {
        if request.contains_key(*field) {
            return Err(GatewayError::invalid(*field, format!("{field} is not accepted here: {why}")));
        }
    }

    let mut max_tokens: Option<u32> = None;
    for field in ["max_tokens", "max_completion_tokens"] {
        if let Some(value) = optional_integer(&request, field)? {
            if value < 1 || value > u64::from(caps.max_tokens) {
                return Err(GatewayError::invalid(
                    field,
                    format!("{field} must be an integer from 1 to {}", caps.max_tokens),
                ));
            }
            // Backends honour one or the other (vLLM and SGLang prefer max_completion_tokens):
            // the estimate must cover the larger.
            max_tokens = Some(max_tokens.map_or(value as u32, |m| m.max(value as u32)));
        }
    }
    if let Some(min) = optional_integer(&request, "min_tokens")? {
        let most = max_tokens.unwrap_or(caps.max_tokens);
        if min > u64::from(most) {
            return Err(GatewayError::invalid(
                "min_tokens",
                format!("min_tokens must be an integer from 0 to max_tokens ({most})"),
            ));
        }
    }

    let client_wants_usage = check_stream_options(&mut request, stream)?;

    Ok(ValidatedChat {
        model,
        stream,
        client_wants_usage,
        max_tokens,
        choices: best_of.max(n),
        text_bytes: prompt.text_bytes,
        media_parts: prompt.media_parts,
        messages,
        body: request,
    })
}

impl ValidatedChat {
    /// Prompt tokens, estimated from the text (about four bytes a token) before any tokenizer,
    /// plus a fixed cost per media part.
    pub fn prompt_estimate(&self) -> u64 {
        (self.text_bytes as u64).div_ceil(4) + u64::from(self.media_parts) * MEDIA_PART_TOKENS
    }

    /// An upper bound of the prompt's tokens: every token is at least one byte of text in the
    /// byte-level and SentencePiece tokenizers backends use, plus the template's own tokens.
    pub fn prompt_bound(&self) -> u64 {
        self.text_bytes as u64
            + u64::from(self.media_parts) * MEDIA_PART_TOKENS
            + u64::from(self.messages) * TEMPLATE_TOKENS_PER_MESSAGE
            + TEMPLATE_TOKENS_PER_REQUEST
    }

    /// What `backend` is told about the completion length when the client named none: the cap, or
    /// less when the backend declares a context length the cap would overflow. A backend rejects
    /// prompt + max_tokens > its context with a 400 (vLLM), so the injected value is kept under
    /// `max_model_len − prompt_bound`; when even that leaves nothing, nothing is injected and the
    /// backend generates what is left of its context.
    pub fn injection(&self, backend: &Backend, cap: u32) -> Injection {
        match backend.max_model_len {
            None => Injection::MaxTokens(cap),
            Some(context) => {
                let room = u64::from(context).saturating_sub(self.prompt_bound());
                match u32::try_from(room).unwrap_or(u32::MAX).min(cap) {
                    0 => Injection::Nothing { at_most: context },
                    room => Injection::MaxTokens(room),
                }
            }
        }
    }

    /// The most one choice may generate on `backend`.
    fn completion_bound(&self, backend: &Backend, cap: u32) -> u32 {
        match self.max_tokens {
            Some(m) => m,
            None => match self.injection(backend, cap) {
                Injection::MaxTokens(m) => m,
                Injection::Nothing { at_most } => at_most,
            },
        }
    }

    /// The most this request can cost on any of `backends`: its prompt plus every sequence at full
    /// length. Admission takes this from the token budget; settlement gives back what was not used.
    pub fn token_estimate<'a>(&self, backends: impl IntoIterator<Item = &'a Backend>, cap: u32) -> u64 {
        let per_choice =
            backends.into_iter().map(|b| self.completion_bound(b, cap)).max().unwrap_or(self.max_tokens.unwrap_or(cap));
        self.prompt_estimate() + u64::from(per_choice) * u64::from(self.choices)
    }

    /// The JSON body for `backend`, with the completion budget injected when the client set none.
    pub fn upstream_body(&self, backend: &Backend, cap: u32) -> Vec<u8> {
        let encode = |body: &Map<String, Value>| serde_json::to_vec(body).unwrap_or_default();
        match (self.max_tokens, self.injection(backend, cap)) {
            (None, Injection::MaxTokens(m)) => {
                let mut body = self.body.clone();
                body.insert("max_tokens".into(), Value::from(m));
                encode(&body)
            }
            _ => encode(&self.body),
        }
    }
}

/// The sizes of what the backend will tokenize, checked against the content cap as they grow.
#[derive(Default)]
struct PromptSize {
    text_bytes: usize,
    media_parts: u32,
}

impl PromptSize {
    fn add_text(&mut self, bytes: usize, param: &str, caps: &RequestCaps) -> Result<(), GatewayError> {
        self.text_bytes = self.text_bytes.saturating_add(bytes);
        if self.text_bytes > caps.max_content_bytes {
            return Err(GatewayError::invalid(
                param,
                format!("the request's text exceeds the limit of {} bytes", caps.max_content_bytes),
            ));
        }
        Ok(())
    }
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, GatewayError> {
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

/// Checks `messages`, adding what they will cost to `prompt`; returns how many there are.
fn check_messages(messages: Option<&Value>, caps: &RequestCaps, prompt: &mut PromptSize) -> Result<u32, GatewayError> {
    let messages = match messages {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => {
            return Err(GatewayError::invalid("messages", "messages must contain at least one message"))
        }
        None | Some(Value::Null) => {
            return Err(GatewayError::invalid("messages", "you must provide a messages parameter"))
        }
        Some(_) => return Err(GatewayError::invalid("messages", "messages must be an array")),
    };
    if messages.len() > caps.max_messages {
        return Err(GatewayError::invalid(
            "messages",
            format!("too many messages: {} (the limit is {})", messages.len(), caps.max_messages),
        ));
    }
    for (i, message) in messages.iter().enumerate() {
        let Value::Object(message) = message else {
            return Err(GatewayError::invalid(format!("messages[{i}]"), "each message must be an object"));
        };
        match message.get("role") {
            Some(Value::String(role)) if ROLES.contains(&role.as_str()) => {}
            Some(Value::String(role)) => {
                return Err(GatewayError::invalid(
                    format!("messages[{i}].role"),
                    format!("unknown role `{role}`; expected one of {}", ROLES.join(", ")),
                ))
            }
            _ => {
                return Err(GatewayError::invalid(
                    format!("messages[{i}].role"),
                    "each message must have a string role",
                ))
            }
        }
        for (field, value) in message {
            match field.as_str() {
                "role" => {}
                "content" => check_content(value, i, caps, prompt)?,
                // name, refusal, tool_calls (arguments), tool_call_id, reasoning…: all tokenized.
                _ => prompt.add_text(string_bytes(value), "messages", caps)?,
            }
        }
    }
    Ok(messages.len() as u32)
}

/// One message's `content`: a string, an array of content parts, or null (assistant messages that
/// only carry tool calls).
fn check_content(content: &Value, i: usize, caps: &RequestCaps, prompt: &mut PromptSize) -> Result<(), GatewayError> {
    match content {
        Value::Null => Ok(()),
        Value::String(s) => prompt.add_text(s.len(), "messages", caps),
        Value::Array(parts) => {
            for (j, part) in parts.iter().enumerate() {
                let at = || format!("messages[{i}].content[{j}]");
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
                if matches!(kind, "text" | "input_text" | "output_text")
                    && !part.get("text").is_some_and(Value::is_string)
                {
                    return Err(GatewayError::invalid(format!("{}.text", at()), "a text part must have a string text"));
                }
                // Templates join parts with a separator: every part is at least one byte.
                prompt.add_text(1, "messages", caps)?;
                if MEDIA_PARTS.contains(&kind) {
                    check_media_urls(part, &at(), caps)?;
                    prompt.media_parts = prompt.media_parts.saturating_add(1);
                } else {
                    // Text parts, refusals, and parts we do not know: every string counts.
                    let bytes = part.iter().filter(|(k, _)| *k != "type").map(|(_, v)| string_bytes(v)).sum();
                    prompt.add_text(bytes, "messages", caps)?;
                }
            }
            Ok(())
        }
        _ => Err(GatewayError::invalid(
            format!("messages[{i}].content"),
            "content must be a string or an array of content parts",
        )),
    }
}

/// Media must come inline (`data:`) unless the operator allows remote media: the backend would
/// fetch any other URL itself, from inside the operator's network. `file:` is never allowed.
fn check_media_urls(part: &Map<String, Value>, at: &str, caps: &RequestCaps) -> Result<(), GatewayError> {
    for (key, value) in part {
        // `{"image_url": {"url": …}}` (chat) or `{"image_url": "…"}` (Responses API).
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

/// Bytes of every string inside `value` (object keys excluded).
fn string_bytes(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(string_bytes).sum(),
        Value::Object(fields) => fields.values().map(string_bytes).sum(),
        _ => 0,
    }
}

/// The length of `value` as JSON, which is how templates render tools and schemas.
fn json_len(value: &Value) -> usize {
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

fn check_number(
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

fn check_bool(request: &Map<String, Value>, field: &str) -> Result<(), GatewayError> {
    match request.get(field) {
        None | Some(Value::Null) | Some(Value::Bool(_)) => Ok(()),
        Some(_) => Err(GatewayError::invalid(field, format!("{field} must be a boolean"))),
    }
}

fn optional_integer(request: &Map<String, Value>, field: &str) -> Result<Option<u64>, GatewayError> {
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

/// Validates `stream_options` and, on streams, asks the backend for the usage chunk.
/// Returns whether the client asked for usage itself.
fn check_stream_options(request: &mut Map<String, Value>, stream: bool) -> Result<bool, GatewayError> {
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
