//! Checks a request to a model before any backend sees it, and prepares what the backend gets.
//!
//! The body is parsed once into a JSON object so unknown fields pass through untouched (vLLM and
//! others accept extras); only the fields we police are read. Two are written: the completion
//! budget when the client sent none (per backend, see [`Validated::upstream_body`]), and
//! `stream_options.include_usage` on chunked streams so usage can be counted.
//!
//! Every text a backend tokenizes counts toward the content cap and the token estimate, on every
//! endpoint (one file each): chat messages and the fields a chat template renders, completion
//! prompts, embedding inputs, Responses input items and instructions. Media parts (images, audio,
//! video, files) count a fixed [`MEDIA_PART_TOKENS`] each; their URLs must be inline `data:`
//! unless the operator allows remote media, because vLLM fetches them itself.

mod chat;
mod completions;
mod embeddings;
mod fields;
mod responses;

use crate::core::config::{Backend, RequestCaps};
use crate::core::error::GatewayError;
use crate::core::openai::Endpoint;
use serde_json::{Map, Value};

pub use chat::validate_chat;
pub use completions::validate_completions;
pub use embeddings::validate_embeddings;
pub use responses::validate_responses;

/// What one image, audio clip, video or file part is assumed to cost in prompt tokens (a LLaVA
/// image is 576, a Qwen2-VL one up to ~1,300 at common sizes).
pub const MEDIA_PART_TOKENS: u64 = 1024;

/// Template tokens a chat adds around each message (role markers), and once per request (the
/// generation prompt, a default system text): generous on purpose, see [`Validated::prompt_bound`].
const TEMPLATE_TOKENS_PER_MESSAGE: u64 = 16;
const TEMPLATE_TOKENS_PER_REQUEST: u64 = 32;

/// A request that passed every check, ready to send upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    pub endpoint: Endpoint,
    pub model: String,
    pub stream: bool,
    /// Whether the client itself asked for the usage chunk (else we drop it from the stream).
    pub client_wants_usage: bool,
    /// The completion budget the client set (the larger of `max_tokens` and
    /// `max_completion_tokens`, or `max_output_tokens`). `None`: the client set none.
    pub max_tokens: Option<u32>,
    /// Sequences the backend generates: `n`, or `best_of` when larger — per prompt, for a legacy
    /// completion of several prompts. Zero for embeddings, which generate nothing.
    pub choices: u32,
    /// Bytes of every text the backend will tokenize, for estimates.
    pub text_bytes: usize,
    /// Token ids sent as such (completion prompts, embedding inputs): exact prompt tokens.
    pub token_ids: u64,
    /// Media parts, each estimated at [`MEDIA_PART_TOKENS`].
    pub media_parts: u32,
    /// Messages (or items) a chat template wraps in its role markers.
    pub messages: u32,
    /// A field that reads or keeps state on the backend that served an earlier request
    /// (`previous_response_id`, `background`…): such requests must reach that backend.
    pub stateful: Option<&'static str>,
    /// A Responses API request run in the `background`: the backend generates it whole whether
    /// or not the client stays.
    pub background: bool,
    /// The request as the backend gets it, minus the per-backend completion budget.
    body: Map<String, Value>,
}

/// What a backend is sent as the completion budget when the client named none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injection {
    /// The endpoint's length field (`max_tokens`, `max_output_tokens`) is set to this.
    MaxTokens(u32),
    /// Nothing is set (the backend's own default applies); it can generate at most this many.
    Nothing { at_most: u32 },
}

/// Parses and validates a body for `endpoint`.
pub fn validate(endpoint: Endpoint, body: &[u8], caps: &RequestCaps) -> Result<Validated, GatewayError> {
    match endpoint {
        Endpoint::ChatCompletions => validate_chat(body, caps),
        Endpoint::Completions => validate_completions(body, caps),
        Endpoint::Embeddings => validate_embeddings(body, caps),
        Endpoint::Responses => validate_responses(body, caps),
    }
}

impl Validated {
    /// Prompt tokens, estimated from the text (about four bytes a token) before any tokenizer,
    /// plus token ids as they are and a fixed cost per media part.
    pub fn prompt_estimate(&self) -> u64 {
        (self.text_bytes as u64).div_ceil(4) + self.token_ids + u64::from(self.media_parts) * MEDIA_PART_TOKENS
    }

    /// An upper bound of the prompt's tokens: every token is at least one byte of text in the
    /// byte-level and SentencePiece tokenizers backends use, plus the template's own tokens.
    pub fn prompt_bound(&self) -> u64 {
        self.text_bytes as u64
            + self.token_ids
            + u64::from(self.media_parts) * MEDIA_PART_TOKENS
            + u64::from(self.messages) * TEMPLATE_TOKENS_PER_MESSAGE
            + TEMPLATE_TOKENS_PER_REQUEST
    }

    /// The field that sets the completion budget on this endpoint, if it generates.
    fn length_field(&self) -> Option<&'static str> {
        match self.endpoint {
            Endpoint::ChatCompletions | Endpoint::Completions => Some("max_tokens"),
            Endpoint::Responses => Some("max_output_tokens"),
            Endpoint::Embeddings => None,
        }
    }

    /// What `backend` is told about the completion length when the client named none: the cap
    /// (for a legacy completion OpenAI's and vLLM's default of 16, within the cap), or less when
    /// the backend declares a context length it would overflow. A backend rejects prompt +
    /// max_tokens > its context with a 400 (vLLM), so the injected value is kept under
    /// `max_model_len − prompt_bound`; when even that leaves nothing, nothing is injected and the
    /// backend generates what is left of its context.
    pub fn injection(&self, backend: &Backend, cap: u32) -> Injection {
        let default = match self.endpoint {
            Endpoint::Completions => cap.min(16),
            _ => cap,
        };
        match backend.max_model_len {
            None => Injection::MaxTokens(default),
            Some(context) => {
                let room = u64::from(context).saturating_sub(self.prompt_bound());
                match u32::try_from(room).unwrap_or(u32::MAX).min(default) {
                    0 => Injection::Nothing { at_most: context },
                    room => Injection::MaxTokens(room),
                }
            }
        }
    }

    /// The most one choice may generate on `backend`.
    fn completion_bound(&self, backend: &Backend, cap: u32) -> u32 {
        match (self.length_field(), self.max_tokens) {
            (None, _) => 0,
            (Some(_), Some(m)) => m,
            (Some(_), None) => match self.injection(backend, cap) {
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
        match (self.length_field(), self.max_tokens, self.injection(backend, cap)) {
            (Some(field), None, Injection::MaxTokens(m)) => {
                let mut body = self.body.clone();
                body.insert(field.into(), Value::from(m));
                encode(&body)
            }
            _ => encode(&self.body),
        }
    }
}
