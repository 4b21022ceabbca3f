//! OpenAI response types the gateway itself produces (the backends' own bodies pass through).

use serde::{Deserialize, Serialize};

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
    pub usage: Option<crate::core::upstream::sse::Usage>,
}
