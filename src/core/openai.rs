//! The OpenAI API's vocabulary: the endpoints that generate, and the response types the gateway
//! reads or produces itself (the backends' own bodies pass through).

use serde::{Deserialize, Serialize};

/// Token counts as OpenAI reports them. The Responses API names them `input_tokens` and
/// `output_tokens`; both spellings are read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Usage {
    #[serde(default, alias = "input_tokens")]
    pub prompt_tokens: u64,
    #[serde(default, alias = "output_tokens")]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
}

/// The endpoints that reach a model: each is validated, budgeted and proxied the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    /// The legacy `/v1/completions`.
    Completions,
    Embeddings,
    Responses,
}

impl Endpoint {
    /// The path, the same on the gateway and on the backend.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Responses => "/v1/responses",
        }
    }

    /// OpenAI's operation name (`gen_ai.operation.name`-like), for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Responses => "responses",
        }
    }

    /// How its stream is framed.
    pub fn dialect(self) -> Dialect {
        match self {
            Endpoint::Responses => Dialect::Responses,
            _ => Dialect::Chunks,
        }
    }

    /// Reads a successful non-stream answer: it must be this endpoint's object (a completion's
    /// `choices`, an embedding list's `data`, a response's `output`), or it is not relayed.
    /// Returns its usage.
    pub fn answer_usage(self, body: &[u8]) -> Result<Option<Usage>, serde_json::Error> {
        let answer: Answer = serde_json::from_slice(body)?;
        let has_shape = match self {
            Endpoint::ChatCompletions | Endpoint::Completions => answer.choices.is_some(),
            Endpoint::Embeddings => answer.data.is_some(),
            Endpoint::Responses => answer.output.is_some(),
        };
        if !has_shape {
            return Err(serde::de::Error::custom("not this endpoint's answer"));
        }
        Ok(answer.usage)
    }
}

/// How an endpoint's stream is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Chat and legacy completions: `data: {chunk}` events with `choices`, an optional usage-only
    /// chunk, then `data: [DONE]`; a failure is `data: {"error":{…}}`.
    Chunks,
    /// The Responses API: typed events (`event: response.output_text.delta`…) ending with
    /// `response.completed` (or `.incomplete`, `.failed`), whose `response.usage` counts the
    /// tokens; a failure is `event: error` with `{"type":"error","code","message","param"}`.
    Responses,
}

/// The parts of a non-stream answer the gateway reads.
#[derive(Debug, Deserialize)]
struct Answer {
    #[serde(default)]
    choices: Option<Vec<serde::de::IgnoredAny>>,
    #[serde(default)]
    data: Option<Vec<serde::de::IgnoredAny>>,
    #[serde(default)]
    output: Option<Vec<serde::de::IgnoredAny>>,
    #[serde(default)]
    usage: Option<Usage>,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<Model>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Model {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
}

impl ModelList {
    pub fn new(models: impl IntoIterator<Item = String>) -> Self {
        ModelList { object: "list".into(), data: models.into_iter().map(Model::served).collect() }
    }
}

impl Model {
    /// A model the gateway serves, as `GET /v1/models` lists it.
    pub fn served(id: String) -> Self {
        Model { id, object: "model".into(), created: 0, owned_by: "self-hosted".into() }
    }
}

/// Formats a duration the way OpenAI's `x-ratelimit-reset-*` headers do: `12ms`, `1.5s`, `6m0s`.
pub fn format_duration(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let hours = ms / 3_600_000;
    let minutes = (ms / 60_000) % 60;
    let millis = ms % 60_000;
    let seconds = if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        let s = format!("{}.{:03}", millis / 1000, millis % 1000);
        format!("{}s", s.trim_end_matches('0'))
    };
    match (hours, minutes) {
        (0, 0) => seconds,
        (0, m) => format!("{m}m{seconds}"),
        (h, m) => format!("{h}h{m}m{seconds}"),
    }
}

/// Whole seconds for `retry-after`, rounded up and at least 1 so clients never spin.
pub fn retry_after_seconds(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}
