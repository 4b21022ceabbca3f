//! OpenAI response types the gateway itself produces (the backends' own bodies pass through).

use serde::{Deserialize, Serialize};

/// Token counts as OpenAI reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
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
        ModelList {
            object: "list".into(),
            data: models
                .into_iter()
                .map(|id| Model { id, object: "model".into(), created: 0, owned_by: "self-hosted".into() })
                .collect(),
        }
    }
}

/// The part of a non-stream completion we read: its usage; and its `choices`, which a completion
/// must have (an error object or anything else answered with a 200 is not relayed).
#[derive(Debug, Deserialize)]
pub struct CompletionUsage {
    #[allow(dead_code)] // required, never read
    choices: Vec<serde::de::IgnoredAny>,
    #[serde(default)]
    pub usage: Option<Usage>,
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
