//! A pass-through scanner for server-sent events from an OpenAI-compatible backend.
//!
//! Bytes are forwarded as they are, never re-serialised. The scanner only finds event
//! boundaries, notes `data: [DONE]`, captures the `usage` object when a chunk carries one, can
//! drop the usage-only chunk (`"choices":[]`) that we asked for but the client did not, and stops
//! at the backend's own error event (`data: {"error":…}`), which is never relayed: the relay ends
//! the stream with the gateway's error instead. It holds at most one incomplete event, so memory
//! stays flat for a stream of any length, and each byte is looked at a bounded number of times
//! however the stream is split (an event dripped one byte at a time is not re-copied per byte).
//!
//! The Responses API's stream ([`Dialect::Responses`]) is read the same way, by its `event:` names:
//! `*.delta` events are the content, `response.completed` (or `.incomplete`) is the end and
//! carries `response.usage`, and `error` or `response.failed` is the backend's error.
//!
//! Lines may end in `\n` or `\r\n`; an event ends at an empty line.

use crate::core::openai::{Dialect, Usage};
use crate::core::upstream::errors::message_of;
use serde::de::IgnoredAny;
use serde::Deserialize;
use std::borrow::Cow;

/// Why the scanner stopped relaying before `[DONE]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// A data event that is neither `[DONE]` nor a JSON object.
    Malformed,
    /// The backend's own error event: its message, cleaned (`None` when it had none), and whether
    /// its code says the request was at fault (a 4xx other than 429).
    BackendError { message: Option<String>, request_fault: bool },
}

/// What [`SseScanner::feed_slice`] says to forward for a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fed {
    /// The chunk itself, exactly as it came.
    AsIs,
    /// These bytes (empty when nothing is complete yet).
    Bytes(Vec<u8>),
}

/// Scans one response stream. Feed chunks in order; forward what `feed` returns.
#[derive(Debug)]
pub struct SseScanner {
    /// Bytes of an event whose end has not arrived yet.
    pending: Vec<u8>,
    /// Where in `pending` to resume looking for the end of the event.
    searched: usize,
    /// Inside an event too large to hold, forwarded unread: the last two bytes passed.
    passing: Option<[u8; 2]>,
    dialect: Dialect,
    drop_usage_only: bool,
    max_event_bytes: usize,
    usage: Option<Usage>,
    done: bool,
    events: u64,
    /// Events forwarded (the Responses API numbers them from 0).
    relayed: u64,
    content_events: u64,
    stop: Option<Stop>,
}

/// Fields of a chunk we look at when it mentions `usage`.
#[derive(Deserialize)]
struct ChunkUsage {
    #[serde(default)]
    choices: Option<Vec<IgnoredAny>>,
    #[serde(default)]
    usage: Option<Usage>,
}

impl SseScanner {
    /// `drop_usage_only`: remove the usage-only chunk from what is forwarded (chunked streams).
    pub fn new(dialect: Dialect, drop_usage_only: bool, max_event_bytes: usize) -> Self {
        SseScanner {
            pending: Vec::new(),
            searched: 0,
            passing: None,
            dialect,
            drop_usage_only,
            max_event_bytes,
            usage: None,
            done: false,
            events: 0,
            relayed: 0,
            content_events: 0,
            stop: None,
        }
    }

    /// How the stream is framed.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Events forwarded so far.
    pub fn relayed(&self) -> u64 {
        self.relayed
    }

    /// Usage reported by the backend so far.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Whether `data: [DONE]` has been seen.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Why relaying stopped early, if it did: nothing after that event is forwarded.
    pub fn stopped(&self) -> Option<&Stop> {
        self.stop.as_ref()
    }

    /// Whether a data event was neither `[DONE]` nor a JSON object (checked by its first and
    /// last bytes only: a full parse of every chunk would cost more than the relay itself).
    pub fn malformed(&self) -> bool {
        self.stop == Some(Stop::Malformed)
    }

    /// Complete events seen so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Bytes held while waiting for the end of an event (never more than the cap).
    pub fn buffered(&self) -> usize {
        self.pending.len()
    }

    /// Data events that carried choices (neither `[DONE]` nor usage-only): about one token each
    /// on the backends we front, which is what a stream cut short is charged when its usage never
    /// arrived.
    pub fn content_events(&self) -> u64 {
        self.content_events
    }

    /// Takes the next chunk from the backend; returns the bytes to forward now (complete events,
    /// minus any dropped one). An incomplete trailing event is held until its end arrives — up to
    /// the cap; an event larger than that is forwarded unread as it arrives.
    pub fn feed(&mut self, chunk: Vec<u8>) -> Vec<u8> {
        match self.feed_slice(&chunk) {
            Fed::AsIs => chunk,
            Fed::Bytes(out) => out,
        }
    }

    /// [`Self::feed`] for a chunk the caller keeps (a platform's buffer outside the core): on the
    /// fast path — whole events, every one kept — nothing is copied, and the caller forwards its
    /// own chunk.
    pub fn feed_slice(&mut self, chunk: &[u8]) -> Fed {
        if let Some(tail) = self.passing {
            return self.pass_through(tail, chunk);
        }
        if !self.pending.is_empty() {
            // Append (amortised O(chunk)) and search only what is new.
            let mut buf = std::mem::take(&mut self.pending);
            buf.extend_from_slice(chunk);
            let mut out = Vec::new();
            let end = self.scan_events(&buf, self.searched, &mut |range, keep| {
                if keep {
                    out.extend_from_slice(&buf[range]);
                }
            });
            buf.drain(..end);
            self.hold_buffer(buf, &mut out);
            return Fed::Bytes(out);
        }
        // Fast path: a chunk of whole events that keeps every event is forwarded as it came;
        // only dropped events (rare: the usage chunk, a malformed tail) are noted.
        let mut dropped: Vec<std::ops::Range<usize>> = Vec::new();
        let end = self.scan_events(chunk, 0, &mut |range, keep| {
            if !keep {
                dropped.push(range);
            }
        });
        if end == chunk.len() && dropped.is_empty() {
            return Fed::AsIs;
        }
        let mut out = Vec::with_capacity(end);
        let mut at = 0;
        for range in dropped {
            out.extend_from_slice(&chunk[at..range.start]);
            at = range.end;
        }
        out.extend_from_slice(&chunk[at..end]);
        self.hold_buffer(chunk[end..].to_vec(), &mut out);
        Fed::Bytes(out)
    }

    /// Forwards the rest of an event too large to hold (a completion echoing its prompt with
    /// logprobs, a Responses object carrying every token's) as it arrives, unread: it counts as
    /// content, and scanning resumes after its end. `tail` is the last two bytes already passed,
    /// to find an end split across chunks.
    fn pass_through(&mut self, tail: [u8; 2], chunk: &[u8]) -> Fed {
        let mut joint = tail.to_vec();
        joint.extend_from_slice(&chunk[..chunk.len().min(2)]);
        let end = match find_event_end(&joint, 0) {
            Some(end) if end > 2 => Some(end - 2),
            _ => find_event_end(chunk, 0),
        };
        match end {
            None => {
                self.passing = Some(last_two(&tail, chunk));
                Fed::AsIs
            }
            Some(end) => {
                self.passing = None;
                let mut out = chunk[..end].to_vec();
                out.extend(self.feed(chunk[end..].to_vec()));
                Fed::Bytes(out)
            }
        }
    }

    /// The stream ended: returns any trailing bytes that never formed a complete event.
    pub fn finish(&mut self) -> Vec<u8> {
        self.searched = 0;
        std::mem::take(&mut self.pending)
    }

    /// Keeps the start of an incomplete event until the rest arrives (nothing once the stream has
    /// ended: what follows `[DONE]` or an error is never relayed, so it is not held either). One
    /// that outgrows the cap is forwarded now, into `out`, and the rest of it as it comes.
    fn hold_buffer(&mut self, tail: Vec<u8>, out: &mut Vec<u8>) {
        if self.done || self.stop.is_some() {
            self.pending.clear();
            self.searched = 0;
            return;
        }
        if tail.len() > self.max_event_bytes {
            self.events += 1;
            self.relayed += 1;
            self.content_events += 1;
            self.passing = Some(last_two(&[0, 0], &tail));
            self.pending.clear();
            self.searched = 0;
            out.extend_from_slice(&tail);
            return;
        }
        // Resume two bytes back so a terminator split across chunks ("\n" | "\r\n") is found.
        self.searched = tail.len().saturating_sub(2);
        self.pending = tail;
    }

    /// Walks the complete events of `buf` (searching for terminators from `from`), calling
    /// `emit(range, keep)` for each; returns where the incomplete tail begins.
    fn scan_events(&mut self, buf: &[u8], from: usize, emit: &mut dyn FnMut(std::ops::Range<usize>, bool)) -> usize {
        let mut start = 0;
        let mut pos = from;
        while let Some(end) = find_event_end(buf, pos) {
            let keep = match end - start > self.max_event_bytes && !self.done && self.stop.is_none() {
                // Too large to have held: passed unread, as if it had arrived in pieces.
                true => {
                    self.events += 1;
                    self.content_events += 1;
                    true
                }
                false => self.inspect(&buf[start..end]),
            };
            self.relayed += u64::from(keep);
            emit(start..end, keep);
            start = end;
            pos = end;
        }
        start
    }

    /// Notes what one complete event says; returns whether to forward it.
    fn inspect(&mut self, event: &[u8]) -> bool {
        self.events += 1;
        if self.stop.is_some() || self.done {
            return false; // nothing after the end, a malformed event or an error is relayed
        }
        let fields = match EventFields::of(event) {
            Some(fields) => fields,
            None => {
                // A field we do not know could carry anything: never relayed verbatim.
                self.stop = Some(Stop::Malformed);
                return false;
            }
        };
        if let Some(error) = fields.error {
            // llama.cpp's `error: {…}` field.
            self.stop = Some(match serde_json::from_slice::<serde_json::Value>(error.trim_ascii()) {
                Ok(value) => backend_stop(&value),
                Err(_) => Stop::BackendError { message: None, request_fault: false },
            });
            return false;
        }
        let Some(data) = fields.data else { return true }; // comments, `event:`, `id:`, `retry:`
        let joined = matches!(data, Cow::Owned(_));
        let data = data.trim_ascii();
        if data == b"[DONE]" {
            self.done = true;
            return true;
        }
        let object = data.first() == Some(&b'{') && data.last() == Some(&b'}');
        // Several data lines (no OpenAI-compatible server sends them) must still be one object.
        if !object || (joined && serde_json::from_slice::<IgnoredAny>(data).is_err()) {
            self.stop = Some(Stop::Malformed);
            return false;
        }
        let keys = scan_keys(data);
        if keys.error {
            if let Some(stop) = backend_error(data) {
                self.stop = Some(stop);
                return false;
            }
        }
        if self.dialect == Dialect::Responses {
            return self.inspect_response_event(fields.event, data);
        }
        if !keys.usage {
            self.content_events += 1;
            return true;
        }
        match serde_json::from_slice::<ChunkUsage>(data) {
            Ok(ChunkUsage { choices, usage: Some(usage) }) => {
                self.usage = Some(usage);
                let usage_only = choices.as_ref().is_some_and(|c| c.is_empty());
                if !usage_only {
                    self.content_events += 1;
                }
                !(usage_only && self.drop_usage_only)
            }
            _ => {
                self.content_events += 1;
                true
            }
        }
    }
}

impl SseScanner {
    /// One event of the Responses API's stream, named by its `event:` line (or, without one, by
    /// its `type`): deltas are content, the terminal events end it and carry the usage, `error`
    /// and `response.failed` are the backend's error.
    fn inspect_response_event(&mut self, name: Option<&[u8]>, data: &[u8]) -> bool {
        let parsed;
        let name = match name {
            Some(name) => name,
            None => {
                parsed = serde_json::from_slice::<ResponseEvent>(data).map(|e| e.kind).unwrap_or_default();
                parsed.as_bytes()
            }
        };
        match name {
            b"error" | b"response.failed" => {
                let value = serde_json::from_slice::<serde_json::Value>(data).unwrap_or_default();
                let message = value.pointer("/response/error").map_or_else(|| message_of(&value), message_of);
                self.stop = Some(Stop::BackendError { message, request_fault: false });
                false
            }
            b"response.completed" | b"response.incomplete" => {
                if let Ok(ResponseEvent { response: Some(Terminal { usage: Some(usage) }), .. }) =
                    serde_json::from_slice::<ResponseEvent>(data)
                {
                    self.usage = Some(usage);
                }
                self.done = true;
                true
            }
            name => {
                if name.ends_with(b".delta") {
                    self.content_events += 1;
                }
                true
            }
        }
    }
}

/// The parts of a Responses API event the scanner reads.
#[derive(Deserialize)]
struct ResponseEvent {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    response: Option<Terminal>,
}

#[derive(Deserialize)]
struct Terminal {
    #[serde(default)]
    usage: Option<Usage>,
}

/// The fields of one event that matter: its data (every `data:` line, joined by newlines as the
/// SSE spec says; borrowed when there is one line, as OpenAI-compatible servers send) and
/// llama.cpp's `error:` field.
struct EventFields<'a> {
    data: Option<Cow<'a, [u8]>>,
    error: Option<&'a [u8]>,
    /// The `event:` name (the Responses API's event type).
    event: Option<&'a [u8]>,
}

impl<'a> EventFields<'a> {
    /// `None` when a line is a field outside the SSE vocabulary (`data`, `event`, `id`, `retry`,
    /// comments) and llama.cpp's `error`.
    fn of(event: &'a [u8]) -> Option<EventFields<'a>> {
        let mut fields = EventFields { data: None, error: None, event: None };
        let mut rest = event;
        while !rest.is_empty() {
            let line_end = find_byte(rest, b'\n').unwrap_or(rest.len());
            let line = &rest[..line_end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            rest = rest.get(line_end + 1..).unwrap_or(&[]);
            if line.is_empty() || line[0] == b':' {
                continue;
            }
            let (name, value) = match find_byte(line, b':') {
                Some(colon) => (&line[..colon], &line[colon + 1..]),
                None => (line, &line[line.len()..]),
            };
            let value = value.strip_prefix(b" ").unwrap_or(value);
            match name {
                b"data" => {
                    fields.data = Some(match fields.data.take() {
                        None => Cow::Borrowed(value),
                        Some(joined) => {
                            let mut joined = joined.into_owned();
                            joined.push(b'\n');
                            joined.extend_from_slice(value);
                            Cow::Owned(joined)
                        }
                    })
                }
                b"error" => fields.error = Some(value),
                b"event" => fields.event = Some(value.trim_ascii()),
                b"id" | b"retry" => {}
                _ => return None,
            }
        }
        Some(fields)
    }
}

/// The stop an error event means, when `data` is one: `{"error": …}` (vLLM, SGLang, OpenAI) or
/// `{"object": "error", …}` (older vLLM).
fn backend_error(data: &[u8]) -> Option<Stop> {
    let value: serde_json::Value = serde_json::from_slice(data).ok()?;
    let is_error = value.get("error").is_some_and(|e| !e.is_null())
        || value.get("object").and_then(|o| o.as_str()) == Some("error");
    is_error.then(|| backend_stop(&value))
}

/// What an error object says: its cleaned message, and whether its code (vLLM and llama.cpp put
/// the HTTP status there) blames the request.
fn backend_stop(value: &serde_json::Value) -> Stop {
    let code = value.pointer("/error/code").or_else(|| value.get("code")).and_then(serde_json::Value::as_u64);
    let request_fault = code.is_some_and(|c| (400..500).contains(&c) && c != 429);
    Stop::BackendError { message: message_of(value), request_fault }
}

/// Finds the end (exclusive, after the blank line) of the first event ending at or after `from`.
/// The last two bytes of `before` followed by `chunk`.
fn last_two(before: &[u8; 2], chunk: &[u8]) -> [u8; 2] {
    match chunk {
        [] => *before,
        [one] => [before[1], *one],
        [.., a, b] => [*a, *b],
    }
}

fn find_event_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        let nl = i + find_byte(&buf[i..], b'\n')?;
        // An event ends with "\n\n" or "\n\r\n".
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

/// The keys of a chunk worth a closer look.
struct Keys {
    /// `"usage"` followed by an object (worth parsing).
    usage: bool,
    /// `"error"` appears unescaped (a key, or a string value: parse to tell).
    error: bool,
}

/// One pass over the quotes of a chunk. vLLM writes `"usage":null` on every content chunk once
/// usage is requested, so that ending is checked first without a search. Inside JSON strings a
/// quote is always escaped, so an unescaped `"error"` or `"usage"` is a key or a whole value.
fn scan_keys(data: &[u8]) -> Keys {
    let mut keys = Keys { usage: false, error: false };
    let usage_null_at_end = data.ends_with(b"\"usage\":null}");
    let mut i = 0;
    while let Some(p) = find_byte(&data[i..], b'"') {
        let at = i + p;
        let rest = &data[at..];
        // Most quotes open some other key or value: one byte tells, before any comparison.
        match rest.get(1) {
            Some(b'e') if rest.starts_with(b"\"error\"") => keys.error = true,
            Some(b'u') if !usage_null_at_end && rest.starts_with(b"\"usage\"") => {
                let value = rest[7..].iter().position(|b| !matches!(b, b' ' | b'\t' | b':' | b'\r' | b'\n'));
                if value.is_some_and(|v| rest[7 + v] == b'{') {
                    keys.usage = true;
                }
            }
            _ => {}
        }
        i = at + 1;
    }
    keys
}

/// The first `needle` in `haystack`, eight bytes at a time (SWAR: no SIMD crate needed, and the
/// same code on every target).
fn find_byte(haystack: &[u8], needle: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let pattern = LO.wrapping_mul(u64::from(needle));
    let mut chunks = haystack.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word) ^ pattern;
        let found = x.wrapping_sub(LO) & !x & HI;
        if found != 0 {
            return Some(offset + (found.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    chunks.remainder().iter().position(|&b| b == needle).map(|p| offset + p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_byte_agrees_with_a_plain_search_at_every_length_and_offset() {
        let hay: Vec<u8> = (0..40u8).collect();
        for len in 0..hay.len() {
            for needle in [0u8, 7, 8, 9, 15, 16, 39, 200] {
                let expected = hay[..len].iter().position(|b| *b == needle);
                assert_eq!(find_byte(&hay[..len], needle), expected, "len {len} needle {needle}");
            }
        }
    }

    #[test]
    fn an_event_ends_at_a_blank_line_of_either_ending() {
        assert_eq!(find_event_end(b"data: x\n\nrest", 0), Some(9));
        assert_eq!(find_event_end(b"data: x\r\n\r\nrest", 0), Some(11));
        assert_eq!(find_event_end(b"data: x\ndata: y\n", 0), None);
    }
}
