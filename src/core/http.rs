//! The runtime-free HTTP vocabulary the core speaks: requests, responses, headers, bodies.
//!
//! Adapters translate their platform's types to and from these; nothing here knows a platform.

use futures::stream::{self, Stream, StreamExt};
use std::pin::Pin;

/// Why a body stream failed (connection reset, decode error…); the text is for logs only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyError(pub String);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BodyError {}

/// A body that arrives (or leaves) in chunks. Not `Send`: JS and WASI handles are not.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Vec<u8>, BodyError>>>>;

/// Wraps chunks that are already in memory as a [`BodyStream`].
pub fn body_from_chunks(chunks: Vec<Vec<u8>>) -> BodyStream {
    Box::pin(stream::iter(chunks.into_iter().map(Ok)))
}

/// An ordered list of header fields; names are compared case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    pub fn new() -> Self {
        Headers(Vec::new())
    }

    /// The first value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Adds a field, keeping any existing ones of the same name.
    pub fn append(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    /// Replaces every field named `name` with one value.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.remove(name);
        self.0.push((name.to_ascii_lowercase(), value.into()));
    }

    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Every field as `name\nvalue\n` lines: a whole header list in one string, so an adapter
    /// can hand it across a language boundary in one call. `None` when a name or value holds a
    /// line break, which no platform's header list accepts (and which would shift the lines).
    pub fn to_lines(&self) -> Option<String> {
        let mut out = String::with_capacity(self.0.iter().map(|(n, v)| n.len() + v.len() + 2).sum());
        for (name, value) in &self.0 {
            if [name, value].iter().any(|s| s.bytes().any(|b| b == b'\n' || b == b'\r')) {
                return None;
            }
            out.push_str(name);
            out.push('\n');
            out.push_str(value);
            out.push('\n');
        }
        Some(out)
    }

    /// The fields of [`Headers::to_lines`] text, in order (a trailing name without its value is
    /// ignored).
    pub fn from_lines(text: &str) -> Headers {
        let mut lines = text.split('\n');
        let mut fields = Vec::new();
        while let (Some(name), Some(value)) = (lines.next(), lines.next()) {
            fields.push((name.to_string(), value.to_string()));
        }
        Headers(fields)
    }
}

impl FromIterator<(String, String)> for Headers {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Headers(iter.into_iter().collect())
    }
}

/// An incoming request, as the adapter hands it to the core.
pub struct Request {
    pub method: String,
    /// The path without the query string, e.g. `/v1/chat/completions`.
    pub path: String,
    pub headers: Headers,
    pub body: BodyStream,
    /// The client's address as the platform vouches for it (never a header a client can set).
    pub client_ip: Option<String>,
    /// Resolves if the client goes away, on platforms that say so without dropping the response
    /// (workerd stops polling a cancelled response instead of dropping it).
    pub disconnected: Option<Disconnected>,
}

/// A future that resolves when the client has gone away.
pub type Disconnected = Pin<Box<dyn std::future::Future<Output = ()>>>;

impl Request {
    /// A request with an in-memory body (tests, probes).
    pub fn new(method: &str, path: &str, headers: Headers, body: Vec<u8>) -> Self {
        let chunks = if body.is_empty() { vec![] } else { vec![body] };
        Request {
            method: method.to_string(),
            path: path.to_string(),
            headers,
            body: body_from_chunks(chunks),
            client_ip: None,
            disconnected: None,
        }
    }
}

/// A response body: either complete, or streamed as it arrives.
pub enum Body {
    Full(Vec<u8>),
    Stream(BodyStream),
}

impl Body {
    /// Reads the whole body (tests and small payloads only).
    pub async fn collect(self) -> Result<Vec<u8>, BodyError> {
        match self {
            Body::Full(bytes) => Ok(bytes),
            Body::Stream(mut stream) => {
                let mut out = Vec::new();
                while let Some(chunk) = stream.next().await {
                    out.extend_from_slice(&chunk?);
                }
                Ok(out)
            }
        }
    }
}

/// The core's answer, translated back by the adapter.
pub struct Response {
    pub status: u16,
    pub headers: Headers,
    pub body: Body,
}

impl Response {
    /// A JSON response with the given status.
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Self {
        let mut headers = Headers::new();
        headers.set("content-type", "application/json");
        Response { status, headers, body: Body::Full(body.into()) }
    }

    /// A server-sent event stream, marked so that no proxy in between buffers it.
    pub fn event_stream(body: BodyStream) -> Self {
        let mut headers = Headers::new();
        headers.set("content-type", "text/event-stream");
        headers.set("cache-control", "no-cache");
        headers.set("x-accel-buffering", "no");
        Response { status: 200, headers, body: Body::Stream(body) }
    }

    /// An empty response (preflight, 204s).
    pub fn empty(status: u16) -> Self {
        Response { status, headers: Headers::new(), body: Body::Full(Vec::new()) }
    }
}

/// Why a capped read stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// The body passed the cap (the rest was never read).
    TooLarge,
    /// The stream failed.
    Broken(BodyError),
}

/// Reads a body whole, refusing it as soon as it passes `limit` bytes.
pub async fn read_capped(body: &mut BodyStream, limit: usize) -> Result<Vec<u8>, ReadError> {
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(ReadError::Broken)?;
        if out.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Whether `headers` announce a server-sent event stream (`text/event-stream`, any parameters).
pub fn is_event_stream(headers: &Headers) -> bool {
    headers.get("content-type").is_some_and(|t| {
        let essence = t.split(';').next().unwrap_or("").trim();
        essence.eq_ignore_ascii_case("text/event-stream")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lines_round_trip_in_order_with_duplicates_and_latin1() {
        let headers: Headers =
            [("a", "1"), ("set-cookie", "x=1"), ("set-cookie", "y=2"), ("x-latin", "caf\u{e9}"), ("e", "")]
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
        let lines = "a\n1\nset-cookie\nx=1\nset-cookie\ny=2\nx-latin\ncaf\u{e9}\ne\n\n";
        assert_eq!(headers.to_lines().as_deref(), Some(lines));
        assert_eq!(Headers::from_lines(lines), headers);
        assert_eq!(Headers::from_lines(""), Headers::new());
        assert_eq!(Headers::from_lines("dangling"), Headers::new(), "a name without its value is ignored");
    }

    #[test]
    fn a_line_break_in_a_name_or_value_cannot_shift_the_lines() {
        for (name, value) in [("a", "1\nb"), ("a\nb", "1"), ("a", "1\r"), ("a", "\r\n")] {
            let mut headers = Headers::new();
            headers.append(name, value);
            assert_eq!(headers.to_lines(), None, "{name:?}: {value:?}");
        }
    }
}
