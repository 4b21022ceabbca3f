//! One generated text completion (`/v1/completions`): every prompt's `n` choices, rendered
//! as vLLM's `CompletionResponse` or as its `text_completion` stream chunks.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::plan::Generation;
use crate::reply::SseEvent;
use crate::response::Response;
use crate::tokens::{generated_text, token_text};

/// A prompt: the text `echo` repeats, and the tokens it counts.
pub(crate) struct Prompt {
    pub(crate) text: String,
    pub(crate) tokens: u64,
}

pub(crate) struct TextCompletion {
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) model: String,
    pub(crate) prompts: Vec<Prompt>,
    /// Choices per prompt.
    pub(crate) n: usize,
    /// Tokens each choice generates.
    pub(crate) completion_tokens: u64,
    pub(crate) finish_reason: &'static str,
    /// Repeat the prompt before the generated text.
    pub(crate) echo: bool,
    /// `logprobs`: how many most likely tokens to list at each position.
    pub(crate) logprobs: Option<u64>,
    /// `stream_options.include_usage`: the stream ends with a usage chunk.
    pub(crate) include_usage: bool,
}

/// What the mock says the sampled token's log-probability is.
const SAMPLED_LOGPROB: f64 = -0.25;

impl TextCompletion {
    fn choices(&self) -> impl Iterator<Item = (usize, &Prompt)> + '_ {
        self.prompts.iter().flat_map(move |prompt| (0..self.n).map(move |_| prompt)).enumerate()
    }

    fn usage(&self) -> Usage {
        let prompt_tokens = self.prompts.iter().map(|prompt| prompt.tokens).fold(0, u64::saturating_add);
        let choices = u64::try_from(self.prompts.len().saturating_mul(self.n)).unwrap_or(u64::MAX);
        let completion_tokens = self.completion_tokens.saturating_mul(choices);
        Usage { prompt_tokens, completion_tokens, total_tokens: prompt_tokens.saturating_add(completion_tokens) }
    }

    /// The logprobs of tokens `from..to` (with the echoed prompt first when `prompt` is
    /// given), their text offsets starting at `offset` as vLLM's `text_offset` does.
    fn logprobs(&self, prompt: Option<&str>, from: u64, to: u64, offset: usize) -> Option<Logprobs> {
        let top = self.logprobs?;
        let mut logprobs = Logprobs::default();
        let mut offset = offset;
        let mut push = |token: String, logprob: Option<f64>, top: Option<Map<String, Value>>| {
            logprobs.text_offset.push(offset);
            offset += token.chars().count();
            logprobs.tokens.push(token);
            logprobs.token_logprobs.push(logprob);
            logprobs.top_logprobs.push(top);
        };
        // The prompt as one token whose log-probability nothing computed, like the first
        // prompt token in vLLM.
        if let Some(text) = prompt {
            push(text.to_owned(), None, None);
        }
        for index in from..to {
            let token = token_text(index);
            // The sampled token is the most likely; vLLM lists `logprobs` entries (at least 1).
            let mut alternatives = Map::new();
            alternatives.insert(token.clone(), Value::from(SAMPLED_LOGPROB));
            for rank in 1..top.max(1) {
                let logprob = SAMPLED_LOGPROB - f64::from(u32::try_from(rank).unwrap_or(u32::MAX));
                alternatives.insert(format!("alt{rank} "), Value::from(logprob));
            }
            push(token, Some(SAMPLED_LOGPROB), Some(alternatives));
        }
        Some(logprobs)
    }

    fn chunk(&self, choices: Vec<Choice>, usage: Option<Usage>) -> String {
        let chunk =
            Body { id: &self.id, object: "text_completion", created: self.created, model: &self.model, choices, usage };
        serde_json::to_string(&chunk).unwrap_or_default()
    }
}

impl Generation for TextCompletion {
    fn tokens(&self) -> u64 {
        self.completion_tokens
    }

    fn response(&self) -> Response {
        let generated = generated_text(self.completion_tokens);
        let choices = self
            .choices()
            .map(|(index, prompt)| {
                let echoed = self.echo.then_some(prompt.text.as_str());
                Choice {
                    index,
                    text: format!("{}{generated}", echoed.unwrap_or_default()),
                    logprobs: self.logprobs(echoed, 0, self.completion_tokens, 0),
                    finish_reason: Some(self.finish_reason),
                    stop_reason: None,
                }
            })
            .collect();
        let body = Body {
            id: &self.id,
            object: "text_completion",
            created: self.created,
            model: &self.model,
            choices,
            usage: Some(self.usage()),
        };
        Response::json(200, &body)
    }

    /// One chunk per choice per token: the first token's (with the echoed prompt) after
    /// `prefill`, each next token's `delay` later; the last token's chunk carries the
    /// finish reason. Then the usage chunk if asked for, and `[DONE]`.
    fn stream_events(&self, prefill: Duration, delay: Duration) -> Vec<SseEvent> {
        let mut events = Vec::new();
        // With nothing generated (echo with `max_tokens: 0`) each choice still gets one chunk.
        let steps = self.completion_tokens.max(1);
        let mut sent_chars = vec![0; self.prompts.len().saturating_mul(self.n)];
        for step in 0..steps {
            let generated = step < self.completion_tokens;
            for (index, prompt) in self.choices() {
                let echoed = (self.echo && step == 0).then_some(prompt.text.as_str());
                let token = if generated { token_text(step) } else { String::new() };
                let text = format!("{}{token}", echoed.unwrap_or_default());
                let to = if generated { step + 1 } else { step };
                let logprobs = self.logprobs(echoed, step, to, sent_chars[index]);
                sent_chars[index] += text.chars().count();
                let last = step + 1 == steps;
                let choice = Choice {
                    index,
                    text,
                    logprobs,
                    finish_reason: last.then_some(self.finish_reason),
                    stop_reason: None,
                };
                let pause = match (index, step) {
                    (0, 0) => prefill,
                    (0, _) => delay,
                    _ => Duration::ZERO,
                };
                events.push(SseEvent::data(self.chunk(vec![choice], None), pause));
            }
        }
        if self.include_usage {
            events.push(SseEvent::data(self.chunk(Vec::new(), Some(self.usage())), Duration::ZERO));
        }
        events.push(SseEvent::data("[DONE]", Duration::ZERO));
        events
    }

    /// Every choice's chunk for each token.
    fn events_through(&self, tokens: u64) -> usize {
        let steps = usize::try_from(tokens.min(self.completion_tokens)).unwrap_or(usize::MAX);
        steps.saturating_mul(self.prompts.len()).saturating_mul(self.n)
    }
}

/// vLLM's `CompletionResponse` and `CompletionStreamResponse` (whose `usage` appears only
/// on the usage chunk), fields in its order.
#[derive(Serialize)]
struct Body<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<Choice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

#[derive(Serialize)]
struct Choice {
    index: usize,
    text: String,
    logprobs: Option<Logprobs>,
    finish_reason: Option<&'static str>,
    /// vLLM's: the stop string or token that ended the choice; the mock stops on none.
    stop_reason: Option<()>,
}

/// OpenAI's (and vLLM's `CompletionLogProbs`) legacy logprobs object.
#[derive(Serialize, Default)]
struct Logprobs {
    text_offset: Vec<usize>,
    token_logprobs: Vec<Option<f64>>,
    tokens: Vec<String>,
    top_logprobs: Vec<Option<Map<String, Value>>>,
}

#[derive(Serialize, Clone, Copy)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}
