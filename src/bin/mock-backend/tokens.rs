//! The mock's tokenizer: what token `k` reads as, and how many tokens a prompt counts,
//! the same rule on every endpoint so usage and context checks agree between them.
//!
//! A text counts `bytes / 4` tokens plus one per message (or per prompt, or per input
//! item); a prompt given as token ids counts its length. Token `k` reads `"tok{k} "`, both
//! as generated text and when a token-id prompt is echoed.

use serde_json::Value;

/// The text of token `index`.
pub(crate) fn token_text(index: u64) -> String {
    format!("tok{index} ")
}

/// The text of `count` generated tokens: `"tok0 tok1 … "`.
pub(crate) fn generated_text(count: u64) -> String {
    (0..count).map(token_text).collect()
}

/// `bytes / 4 + items`: the prompt tokens of `items` messages (or prompts) holding `bytes`
/// bytes of text in all.
pub(crate) fn count(bytes: usize, items: usize) -> u64 {
    u64::try_from((bytes / 4).saturating_add(items)).unwrap_or(u64::MAX)
}

/// Bytes of a message's content: a string, or the `text` of its content parts.
pub(crate) fn content_bytes(content: Option<&Value>) -> usize {
    match content {
        Some(Value::String(text)) => text.len(),
        Some(Value::Array(parts)) => {
            parts.iter().filter_map(|part| part.get("text").and_then(Value::as_str)).map(str::len).sum()
        }
        _ => 0,
    }
}
