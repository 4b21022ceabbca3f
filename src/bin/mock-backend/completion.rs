//! One generated chat completion, rendered as vLLM's JSON response or as its stream
//! chunks; the wire shapes follow vLLM's field order.

use std::time::Duration;

use serde::Serialize;

use crate::plan::Generation;
use crate::reply::SseEvent;
use crate::response::Response;
use crate::tokens::{generated_text, token_text};

/// One generated chat completion, rendered either whole or as stream chunks.
pub(crate) struct Completion {
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) model: String,
    pub(crate) prompt_tokens: u64,
    pub(crate) completion_tokens: u64,
    pub(crate) finish_reason: &'static str,
    /// `stream_options.include_usage`: the stream ends with a usage chunk.
    pub(crate) include_usage: bool,
}

impl Completion {
    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            total_tokens: self.prompt_tokens.saturating_add(self.completion_tokens),
        }
    }

    fn body(&self) -> ChatCompletion<'_> {
        ChatCompletion {
            id: &self.id,
            object: "chat.completion",
            created: self.created,
            model: &self.model,
            choices: [Choice {
                index: 0,
                message: Message { role: "assistant", content: generated_text(self.completion_tokens) },
                logprobs: None,
                finish_reason: self.finish_reason,
            }],
            usage: self.usage(),
        }
    }

    /// A chunk; with `include_usage` every chunk carries `"usage": null`.
    fn chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Option<Usage>>) -> String {
        let chunk = ChatChunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices,
            usage,
        };
        serde_json::to_string(&chunk).unwrap_or_default()
    }
}

impl Generation for Completion {
    fn tokens(&self) -> u64 {
        self.completion_tokens
    }

    fn response(&self) -> Response {
        Response::json(200, &self.body())
    }

    /// The stream's events: the role chunk after `prefill` (vLLM sends it with the first
    /// token, once prefill is over), each token `delay` after the previous chunk, then the
    /// finish chunk, the usage chunk if asked for, and `[DONE]` at once.
    fn stream_events(&self, prefill: Duration, delay: Duration) -> Vec<SseEvent> {
        let usage_field = self.include_usage.then_some(None);
        let choice = |delta, finish_reason| vec![ChunkChoice { index: 0, delta, logprobs: None, finish_reason }];
        let immediate = |data| SseEvent::data(data, Duration::ZERO);

        let role = Delta { role: Some("assistant"), content: Some(String::new()) };
        let mut events = vec![SseEvent::data(self.chunk(choice(role, None), usage_field), prefill)];
        events.extend((0..self.completion_tokens).map(|i| {
            SseEvent::data(
                self.chunk(choice(Delta { role: None, content: Some(token_text(i)) }, None), usage_field),
                delay,
            )
        }));
        events.push(immediate(self.chunk(choice(Delta::default(), Some(self.finish_reason)), usage_field)));
        if self.include_usage {
            events.push(immediate(self.chunk(Vec::new(), Some(Some(self.usage())))));
        }
        events.push(immediate("[DONE]".to_owned()));
        events
    }

    /// The role chunk, then one chunk per token.
    fn events_through(&self, tokens: u64) -> usize {
        usize::try_from(tokens).unwrap_or(usize::MAX).saturating_add(1)
    }
}

#[derive(Serialize, Clone, Copy)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

#[derive(Serialize)]
struct ChatCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice; 1],
    usage: Usage,
}

#[derive(Serialize)]
struct Choice {
    index: u32,
    message: Message,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct Message {
    role: &'static str,
    content: String,
}

#[derive(Serialize)]
struct ChatChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<ChunkChoice>,
    /// Absent unless usage was requested; then `null` until the usage chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<Usage>>,
}

#[derive(Serialize)]
struct ChunkChoice {
    index: u32,
    delta: Delta,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<String>,
}
