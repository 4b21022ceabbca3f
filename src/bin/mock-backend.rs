//! A mock inference backend that imitates vLLM's OpenAI-compatible HTTP server.
//!
//! It exists so the gateway can be developed (`make dev`) and tested end to end
//! without a GPU: it speaks plain HTTP/1.1 (keep-alive, `Content-Length` and
//! chunked request bodies), answers with vLLM's response and error shapes, streams
//! Server-Sent Events with configurable pacing, injects faults on request, and
//! exposes counters that let tests observe what the gateway did to it.
//!
//! # Command line
//!
//! ```text
//! mock-backend [--addr 127.0.0.1:0] [--model NAME]... [--chunks N] [--chunk-delay-ms D]
//!              [--api-key KEY] [--verbose]
//! ```
//!
//! After binding it prints exactly one line, `listening on http://HOST:PORT`, to
//! stdout. `--model` may be repeated (default `mock-llama`); `--chunks` is the
//! number of completion tokens (default 8); `--chunk-delay-ms` is the pause before
//! each streamed token (default 0); with `--api-key`, every `/v1/*` request needs
//! `Authorization: Bearer KEY` or gets vLLM's `401 {"error":"Unauthorized"}`;
//! `--verbose` logs one line per request to stderr.
//!
//! # Endpoints
//!
//! * `GET /health`: 200 with an empty body.
//! * `GET /v1/models`: the served models.
//! * `POST /v1/chat/completions`: a completion whose text is `N` tokens
//!   `"tok0 tok1 … tok{N-1} "`, as JSON or, with `"stream": true`, as SSE chunks
//!   (role chunk, one chunk per token, finish chunk, optional usage chunk, `[DONE]`).
//!   `max_tokens` / `max_completion_tokens` below `N` truncate it with
//!   `finish_reason: "length"`. Prompt tokens are counted deterministically as
//!   `(total UTF-8 bytes of every message's text content) / 4 + number of messages`.
//! * `GET /mock/last-request`: the last chat request (`method`, `path`, lowercased
//!   `headers`, `body` parsed as JSON or `null`).
//! * `GET /mock/requests/{id}`: the chat request that carried `x-request-id: {id}`
//!   (the last 4096 are kept), so tests running in parallel can each find theirs.
//! * `GET /mock/stats`: `requests`, `open_streams`, `max_open_streams`,
//!   `client_disconnects`; `POST /mock/reset-stats` zeroes the counters (the
//!   high-water mark restarts from the streams open at that moment).
//!
//! Every `POST /v1/chat/completions` is counted and recorded before the API key
//! is checked, so tests can see what a rejected request carried. Other paths get
//! FastAPI's `404 {"detail":"Not Found"}`.
//!
//! # Per-request controls
//!
//! A chat request may carry an extra body field
//! `"mock": {"chunks": N, "delay_ms": D, "fault": "..."}` overriding the CLI
//! defaults. Faults: `500`, `429` (with `retry-after: 1`), `400` (context length),
//! `hang` (never answer; give up when the client leaves or after 10 minutes),
//! `reset` (streams: role chunk and 2 tokens, then the socket is shut down without
//! the terminating chunk; non-streams: half of the body), `garbage` (200 with
//! non-JSON bytes), `malformed_sse` (an event stream carrying `data: {not json`),
//! and `plain_text_500` (500 with a `text/plain` body).
//!
//! A client that goes away while a stream is being written (a failed write, or the
//! peer closing during a pause) stops generation and counts as a client disconnect;
//! so does a client abandoning a `hang`.

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{json, Map, Value};

const USAGE: &str = "usage: mock-backend [--addr HOST:PORT] [--model NAME]... [--chunks N] \
                     [--chunk-delay-ms D] [--api-key KEY] [--verbose]";
const DEFAULT_MODEL: &str = "mock-llama";
const CHAT_PATH: &str = "/v1/chat/completions";
/// Most bytes accepted for a request line plus headers.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header lines accepted in one request.
const MAX_HEADERS: usize = 128;
/// Most bytes accepted for a request body.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Most completion tokens one request may ask for.
const MAX_TOKENS: u64 = 100_000;
/// Longest pause a request may ask for before each streamed token.
const MAX_DELAY: Duration = Duration::from_secs(600);
/// How long a `hang` fault keeps a request open at most.
const HANG_LIMIT: Duration = Duration::from_secs(600);
/// Granularity of sleeps that watch for the peer going away.
const POLL_SLICE: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

/// Settings from the command line.
#[derive(Debug, Clone)]
struct Config {
    addr: String,
    models: Vec<String>,
    chunks: u64,
    chunk_delay: Duration,
    api_key: Option<String>,
    verbose: bool,
}

enum CliError {
    Help,
    Invalid(String),
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Config, CliError> {
    let mut config = Config {
        addr: "127.0.0.1:0".to_owned(),
        models: Vec::new(),
        chunks: 8,
        chunk_delay: Duration::ZERO,
        api_key: None,
        verbose: false,
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, mut inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg, None),
        };
        let mut value = || {
            inline
                .take()
                .or_else(|| args.next())
                .ok_or_else(|| CliError::Invalid(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--addr" => config.addr = value()?,
            "--model" => config.models.push(value()?),
            "--chunks" => config.chunks = parse_number(&flag, &value()?, MAX_TOKENS)?,
            "--chunk-delay-ms" => {
                config.chunk_delay =
                    Duration::from_millis(parse_number(&flag, &value()?, millis(MAX_DELAY))?);
            }
            "--api-key" => config.api_key = Some(value()?),
            "--verbose" | "-v" => config.verbose = true,
            "--help" | "-h" => return Err(CliError::Help),
            other => return Err(CliError::Invalid(format!("unknown argument `{other}`"))),
        }
    }
    if config.models.is_empty() {
        config.models.push(DEFAULT_MODEL.to_owned());
    }
    Ok(config)
}

fn parse_number(flag: &str, text: &str, max: u64) -> Result<u64, CliError> {
    match text.parse::<u64>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(CliError::Invalid(format!(
            "{flag} expects an integer from 0 to {max}, got `{text}`"
        ))),
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn main() -> ExitCode {
    let config = match parse_args(std::env::args().skip(1)) {
        Ok(config) => config,
        Err(CliError::Help) => {
            let _ = writeln!(io::stdout(), "{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(CliError::Invalid(message)) => {
            log(&format!("mock-backend: {message}\n{USAGE}"));
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(&config.addr) {
        Ok(listener) => listener,
        Err(err) => {
            log(&format!("mock-backend: cannot bind {}: {err}", config.addr));
            return ExitCode::FAILURE;
        }
    };
    let Ok(local) = listener.local_addr() else {
        log("mock-backend: cannot read the bound address");
        return ExitCode::FAILURE;
    };
    announce(local);
    accept_loop(&listener, &Arc::new(State::new(config)));
    ExitCode::SUCCESS
}

/// Prints the one line tests read to learn the port.
fn announce(local: SocketAddr) {
    let mut stdout = io::stdout().lock();
    let _ = writeln!(stdout, "listening on http://{local}");
    let _ = stdout.flush();
}

fn accept_loop(listener: &TcpListener, state: &Arc<State>) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let state = Arc::clone(state);
                let spawned = thread::Builder::new()
                    .name("mock-conn".to_owned())
                    .spawn(move || serve_connection(stream, &state));
                if let Err(err) = spawned {
                    log(&format!(
                        "mock-backend: cannot spawn a connection thread: {err}"
                    ));
                }
            }
            Err(err) => {
                log(&format!("mock-backend: accept failed: {err}"));
                thread::sleep(POLL_SLICE);
            }
        }
    }
}

/// Writes a line to stderr without ever panicking.
fn log(line: &str) {
    let _ = writeln!(io::stderr(), "{line}");
}

// ---------------------------------------------------------------------------
// Shared state
// ---------------------------------------------------------------------------

struct State {
    config: Config,
    next_id: AtomicU64,
    stats: Stats,
    last_request: Mutex<Option<Value>>,
    /// Recent chat requests by their `x-request-id`, oldest first, for tests running in parallel.
    by_request_id: Mutex<std::collections::VecDeque<(String, Value)>>,
}

/// How many chat requests `/mock/requests/{id}` remembers.
const REMEMBERED_REQUESTS: usize = 4096;

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    open_streams: AtomicU64,
    max_open_streams: AtomicU64,
    client_disconnects: AtomicU64,
}

impl State {
    fn new(config: Config) -> Self {
        Self {
            config,
            next_id: AtomicU64::new(1),
            stats: Stats::default(),
            last_request: Mutex::new(None),
            by_request_id: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// Counts a chat request and remembers it for `/mock/last-request`.
    fn record_chat_request(&self, request: &Request) {
        self.stats.requests.fetch_add(1, Ordering::SeqCst);
        let mut headers = Map::new();
        for (name, value) in &request.headers {
            match headers.get_mut(name) {
                Some(Value::String(joined)) => {
                    joined.push_str(", ");
                    joined.push_str(value);
                }
                _ => {
                    headers.insert(name.clone(), Value::String(value.clone()));
                }
            }
        }
        let body = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let record = json!({"method": request.method, "path": request.path, "headers": headers, "body": body});
        if let Some(id) = request.header("x-request-id") {
            let mut recent = self.by_request_id.lock().unwrap_or_else(PoisonError::into_inner);
            if recent.len() == REMEMBERED_REQUESTS {
                recent.pop_front();
            }
            recent.push_back((id.to_string(), record.clone()));
        }
        *self
            .last_request
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(record);
    }

    /// The chat request that carried `x-request-id: id`, if it is still remembered.
    fn request_by_id(&self, id: &str) -> Option<Value> {
        let recent = self.by_request_id.lock().unwrap_or_else(PoisonError::into_inner);
        recent.iter().rev().find(|(seen, _)| seen == id).map(|(_, record)| record.clone())
    }

    fn last_request(&self) -> Value {
        let last = self
            .last_request
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        last.clone()
            .unwrap_or_else(|| json!({"path": null, "headers": {}, "body": null}))
    }
}

impl Stats {
    fn snapshot(&self) -> Value {
        json!({
            "requests": self.requests.load(Ordering::SeqCst),
            "open_streams": self.open_streams.load(Ordering::SeqCst),
            "max_open_streams": self.max_open_streams.load(Ordering::SeqCst),
            "client_disconnects": self.client_disconnects.load(Ordering::SeqCst),
        })
    }

    /// Zeroes the counters; `open_streams` is a gauge, so it is kept and becomes
    /// the new high-water mark.
    fn reset(&self) {
        self.requests.store(0, Ordering::SeqCst);
        self.client_disconnects.store(0, Ordering::SeqCst);
        self.max_open_streams
            .store(self.open_streams.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    fn client_disconnected(&self) {
        self.client_disconnects.fetch_add(1, Ordering::SeqCst);
    }

    fn stream_opened(&self) -> OpenStream<'_> {
        let open = self.open_streams.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_open_streams.fetch_max(open, Ordering::SeqCst);
        OpenStream(self)
    }
}

/// Keeps `open_streams` raised while a stream is being written.
struct OpenStream<'a>(&'a Stats);

impl Drop for OpenStream<'_> {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------
// HTTP/1.1: reading requests
// ---------------------------------------------------------------------------

struct Request {
    method: String,
    /// The request target without its query string.
    path: String,
    http_1_0: bool,
    /// Header names are lowercased; values are trimmed.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn connection_has(&self, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == "connection")
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn wants_close(&self) -> bool {
        self.connection_has("close") || (self.http_1_0 && !self.connection_has("keep-alive"))
    }
}

enum ReadError {
    /// The connection failed or ended mid-request: nothing sensible to answer.
    Io,
    /// The request is malformed: answer 400 and close.
    Malformed(&'static str),
    /// The request is too large: answer 413 and close.
    TooLarge,
}

impl From<io::Error> for ReadError {
    fn from(_: io::Error) -> Self {
        Self::Io
    }
}

/// Reads one request; `Ok(None)` when the client closed the connection cleanly
/// between requests.
fn read_request(
    reader: &mut impl BufRead,
    conn: &mut TcpStream,
) -> Result<Option<Request>, ReadError> {
    let mut budget = MAX_HEAD_BYTES;
    let request_line = loop {
        match read_line(reader, &mut budget)? {
            None => return Ok(None),
            Some(line) if line.is_empty() => continue,
            Some(line) => break line,
        }
    };
    let (method, path, http_1_0) = parse_request_line(&request_line)?;
    let headers = read_headers(reader, &mut budget)?;
    let mut request = Request {
        method,
        path,
        http_1_0,
        headers,
        body: Vec::new(),
    };
    if request
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    request.body = read_body(reader, &request)?;
    Ok(Some(request))
}

/// Reads a CRLF- (or LF-) terminated line, charging it to `budget`.
fn read_line(reader: &mut impl BufRead, budget: &mut usize) -> Result<Option<String>, ReadError> {
    if *budget == 0 {
        return Err(ReadError::TooLarge);
    }
    let mut line = Vec::new();
    let limit = u64::try_from(*budget).unwrap_or(u64::MAX);
    let read = reader.by_ref().take(limit).read_until(b'\n', &mut line)?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(if read >= *budget {
            ReadError::TooLarge
        } else {
            ReadError::Io
        });
    }
    *budget -= read;
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| ReadError::Malformed("request head is not UTF-8"))
}

fn parse_request_line(line: &str) -> Result<(String, String, bool), ReadError> {
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Malformed("malformed request line"));
    };
    let method_ok =
        !method.is_empty() && method.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-');
    if !method_ok || !target.starts_with('/') {
        return Err(ReadError::Malformed("malformed request line"));
    }
    let http_1_0 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(ReadError::Malformed("unsupported HTTP version")),
    };
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    Ok((method.to_owned(), path.to_owned(), http_1_0))
}

fn read_headers(
    reader: &mut impl BufRead,
    budget: &mut usize,
) -> Result<Vec<(String, String)>, ReadError> {
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader, budget)?.ok_or(ReadError::Io)?;
        if line.is_empty() {
            return Ok(headers);
        }
        if headers.len() == MAX_HEADERS {
            return Err(ReadError::TooLarge);
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(ReadError::Malformed("header line without a colon"));
        };
        if name.is_empty()
            || name
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(ReadError::Malformed("malformed header name"));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
    }
}

fn read_body(reader: &mut impl BufRead, request: &Request) -> Result<Vec<u8>, ReadError> {
    if let Some(codings) = request.header("transfer-encoding") {
        let last = codings
            .rsplit(',')
            .next()
            .map(str::trim)
            .unwrap_or_default();
        if !last.eq_ignore_ascii_case("chunked") {
            return Err(ReadError::Malformed("unsupported transfer-encoding"));
        }
        return read_chunked_body(reader);
    }
    let Some(length) = content_length(request)? else {
        return Ok(Vec::new());
    };
    if length > MAX_BODY_BYTES {
        return Err(ReadError::TooLarge);
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(body)
}

/// The request's `Content-Length`; every occurrence must agree.
fn content_length(request: &Request) -> Result<Option<usize>, ReadError> {
    let mut length = None;
    let values = request
        .headers
        .iter()
        .filter(|(n, _)| n == "content-length")
        .flat_map(|(_, v)| v.split(','));
    for value in values {
        let value = value.trim();
        let parsed = match value.parse::<usize>() {
            Ok(n) if value.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(ReadError::Malformed("invalid content-length")),
        };
        if length.is_some_and(|known| known != parsed) {
            return Err(ReadError::Malformed("conflicting content-length headers"));
        }
        length = Some(parsed);
    }
    Ok(length)
}

fn read_chunked_body(reader: &mut impl BufRead) -> Result<Vec<u8>, ReadError> {
    let mut framing_budget = MAX_HEAD_BYTES * 16;
    let mut body = Vec::new();
    loop {
        let line = read_line(reader, &mut framing_budget)?.ok_or(ReadError::Io)?;
        let size = line
            .split_once(';')
            .map_or(line.as_str(), |(size, _)| size)
            .trim();
        let size = match usize::from_str_radix(size, 16) {
            Ok(n) if size.bytes().all(|b| b.is_ascii_hexdigit()) => n,
            _ => return Err(ReadError::Malformed("invalid chunk size")),
        };
        if size == 0 {
            break;
        }
        let start = body.len();
        let end = start
            .checked_add(size)
            .filter(|&end| end <= MAX_BODY_BYTES)
            .ok_or(ReadError::TooLarge)?;
        body.resize(end, 0);
        reader.read_exact(&mut body[start..])?;
        if !read_line(reader, &mut framing_budget)?
            .ok_or(ReadError::Io)?
            .is_empty()
        {
            return Err(ReadError::Malformed("chunk data not followed by CRLF"));
        }
    }
    // Trailer fields are read and ignored.
    while !read_line(reader, &mut framing_budget)?
        .ok_or(ReadError::Io)?
        .is_empty()
    {}
    Ok(body)
}

// ---------------------------------------------------------------------------
// HTTP/1.1: writing responses
// ---------------------------------------------------------------------------

/// A complete response with a `Content-Length` body.
struct Response {
    status: u16,
    content_type: Option<&'static str>,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Response {
    fn empty(status: u16) -> Self {
        Self {
            status,
            content_type: None,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    fn json(status: u16, value: &impl Serialize) -> Self {
        let body = serde_json::to_vec(value).unwrap_or_default();
        Self {
            status,
            content_type: Some("application/json"),
            headers: Vec::new(),
            body,
        }
    }

    fn raw(status: u16, content_type: &'static str, body: &[u8]) -> Self {
        Self {
            status,
            content_type: Some(content_type),
            headers: Vec::new(),
            body: body.to_vec(),
        }
    }

    fn with_header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    fn head(&self, close: bool) -> String {
        response_head(
            self.status,
            self.content_type,
            &self.headers,
            Framing::Length(self.body.len()),
            close,
        )
    }
}

enum Framing {
    Length(usize),
    Chunked,
}

fn response_head(
    status: u16,
    content_type: Option<&str>,
    headers: &[(&str, String)],
    framing: Framing,
    close: bool,
) -> String {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nserver: mock-backend\r\n",
        reason_phrase(status)
    );
    if let Some(content_type) = content_type {
        let _ = write!(head, "content-type: {content_type}\r\n");
    }
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    match framing {
        Framing::Length(length) => {
            let _ = write!(head, "content-length: {length}\r\n");
        }
        Framing::Chunked => head.push_str("transfer-encoding: chunked\r\n"),
    }
    head.push_str(if close {
        "connection: close\r\n\r\n"
    } else {
        "connection: keep-alive\r\n\r\n"
    });
    head
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        _ => "",
    }
}

fn write_response(conn: &mut TcpStream, response: &Response, close: bool) -> io::Result<()> {
    let mut bytes = response.head(close).into_bytes();
    bytes.extend_from_slice(&response.body);
    conn.write_all(&bytes)?;
    conn.flush()
}

fn write_chunk(conn: &mut TcpStream, data: &[u8]) -> io::Result<()> {
    let mut bytes = format!("{:x}\r\n", data.len()).into_bytes();
    bytes.extend_from_slice(data);
    bytes.extend_from_slice(b"\r\n");
    conn.write_all(&bytes)?;
    conn.flush()
}

/// Whether the peer has closed its end (or the socket failed), without blocking.
/// A client that half-closes after sending its request looks the same, which no
/// HTTP client the tests use does.
fn peer_closed(conn: &TcpStream) -> bool {
    if conn.set_nonblocking(true).is_err() {
        return true;
    }
    let peeked = conn.peek(&mut [0; 1]);
    let restored = conn.set_nonblocking(false).is_ok();
    match peeked {
        Ok(0) => true,
        Ok(_) => !restored,
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => !restored,
        Err(_) => true,
    }
}

/// Sleeps for `duration` in short slices; fails as soon as the peer goes away.
fn pause_watching(conn: &TcpStream, duration: Duration) -> io::Result<()> {
    let deadline = Instant::now() + duration;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        thread::sleep(left.min(POLL_SLICE));
        if peer_closed(conn) {
            return Err(io::ErrorKind::ConnectionAborted.into());
        }
    }
}

// ---------------------------------------------------------------------------
// Connections and routing
// ---------------------------------------------------------------------------

/// What the connection loop should do with a routed request.
enum Reply {
    Respond(Response),
    Stream(StreamPlan),
    /// Send the head and half of the body, then shut the socket down.
    Truncate(Response),
    /// Never answer.
    Hang,
}

/// What happens to the connection after a reply.
enum After {
    KeepAlive,
    Close,
    /// Drop the socket at once, without a graceful close.
    Abort,
}

fn serve_connection(conn: TcpStream, state: &State) {
    let _ = conn.set_nodelay(true);
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let request = match read_request(&mut reader, &mut writer) {
            Ok(Some(request)) => request,
            Ok(None) | Err(ReadError::Io) => return,
            Err(ReadError::Malformed(message)) => {
                return reject(&mut reader, &mut writer, 400, message)
            }
            Err(ReadError::TooLarge) => {
                return reject(&mut reader, &mut writer, 413, "request too large")
            }
        };
        if state.config.verbose {
            log(&format!(
                "mock-backend: {} {}",
                request.method, request.path
            ));
        }
        let close = request.wants_close();
        let reply = route(state, &request);
        match execute(reply, state, &mut writer, close) {
            After::KeepAlive => {}
            After::Close => return close_gracefully(&mut reader, &writer),
            After::Abort => return,
        }
    }
}

/// Answers an unreadable request with a vLLM-style error and closes.
fn reject(reader: &mut impl Read, conn: &mut TcpStream, status: u16, message: &str) {
    let response = vllm_error(status, "BadRequestError", message);
    if write_response(conn, &response, true).is_ok() {
        close_gracefully(reader, conn);
    }
}

/// Closes after the response: half-close, then drain what the client still
/// sends so the kernel does not answer it with a reset that could discard the
/// response before the client reads it.
fn close_gracefully(reader: &mut impl Read, conn: &TcpStream) {
    let _ = conn.shutdown(Shutdown::Write);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = io::copy(&mut reader.take(1024 * 1024), &mut io::sink());
}

/// `GET /mock/requests/{x-request-id}`: one recorded chat request.
const REQUESTS_PREFIX: &str = "/mock/requests/";

fn route(state: &State, request: &Request) -> Reply {
    let is_chat = request.path == CHAT_PATH;
    if is_chat && request.method == "POST" {
        state.record_chat_request(request);
    }
    if request.path.starts_with("/v1/") && !authorized(&state.config, request) {
        return Reply::Respond(Response::json(401, &json!({"error": "Unauthorized"})));
    }
    let response = match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/health") => Response::empty(200),
        ("GET", "/v1/models") => Response::json(200, &model_list(&state.config)),
        ("POST", CHAT_PATH) => {
            return chat_completions(state, request).unwrap_or_else(Reply::Respond)
        }
        ("GET", "/mock/last-request") => Response::json(200, &state.last_request()),
        ("GET", path) if path.starts_with(REQUESTS_PREFIX) => {
            match state.request_by_id(&path[REQUESTS_PREFIX.len()..]) {
                Some(record) => Response::json(200, &record),
                None => Response::json(404, &json!({"detail": "Not Found"})),
            }
        }
        ("GET", "/mock/stats") => Response::json(200, &state.stats.snapshot()),
        ("POST", "/mock/reset-stats") => {
            state.stats.reset();
            Response::json(200, &state.stats.snapshot())
        }
        (
            _,
            "/health" | "/v1/models" | "/mock/last-request" | "/mock/stats" | "/mock/reset-stats",
        ) => Response::json(405, &json!({"detail": "Method Not Allowed"})),
        _ if is_chat => Response::json(405, &json!({"detail": "Method Not Allowed"})),
        _ => Response::json(404, &json!({"detail": "Not Found"})),
    };
    Reply::Respond(response)
}

fn authorized(config: &Config, request: &Request) -> bool {
    config.api_key.as_ref().is_none_or(|key| {
        request
            .header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            == Some(key.as_str())
    })
}

fn execute(reply: Reply, state: &State, conn: &mut TcpStream, close: bool) -> After {
    match reply {
        Reply::Respond(response) => match write_response(conn, &response, close) {
            Ok(()) if !close => After::KeepAlive,
            Ok(()) => After::Close,
            Err(_) => After::Abort,
        },
        Reply::Stream(plan) => write_stream(conn, state, &plan, close),
        Reply::Truncate(response) => {
            let half = response.body.len() / 2;
            let mut bytes = response.head(close).into_bytes();
            bytes.extend_from_slice(&response.body[..half]);
            let _ = conn.write_all(&bytes);
            let _ = conn.shutdown(Shutdown::Both);
            After::Abort
        }
        Reply::Hang => {
            hang(conn, state);
            After::Abort
        }
    }
}

/// Holds the request without answering until the client leaves (or the cap).
fn hang(conn: &TcpStream, state: &State) {
    let deadline = Instant::now() + HANG_LIMIT;
    while Instant::now() < deadline {
        thread::sleep(POLL_SLICE);
        if peer_closed(conn) {
            state.stats.client_disconnected();
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------

/// A planned Server-Sent Events response.
struct StreamPlan {
    events: Vec<SseEvent>,
    ending: Ending,
}

struct SseEvent {
    /// What follows `data: `.
    data: String,
    /// Pause before the event is sent.
    delay: Duration,
}

#[derive(PartialEq, Eq)]
enum Ending {
    /// The terminating zero-length chunk.
    Complete,
    /// Shut the socket down instead of terminating the body.
    Reset,
}

fn write_stream(conn: &mut TcpStream, state: &State, plan: &StreamPlan, close: bool) -> After {
    let _open = state.stats.stream_opened();
    if send_events(conn, plan, close).is_err() {
        state.stats.client_disconnected();
        return After::Abort;
    }
    match plan.ending {
        Ending::Reset => {
            let _ = conn.shutdown(Shutdown::Both);
            After::Abort
        }
        Ending::Complete if close => After::Close,
        Ending::Complete => After::KeepAlive,
    }
}

fn send_events(conn: &mut TcpStream, plan: &StreamPlan, close: bool) -> io::Result<()> {
    let headers = [("cache-control", "no-cache".to_owned())];
    let head = response_head(
        200,
        Some("text/event-stream; charset=utf-8"),
        &headers,
        Framing::Chunked,
        close,
    );
    conn.write_all(head.as_bytes())?;
    for event in &plan.events {
        if event.delay.is_zero() {
            if peer_closed(conn) {
                return Err(io::ErrorKind::ConnectionAborted.into());
            }
        } else {
            pause_watching(conn, event.delay)?;
        }
        write_chunk(conn, format!("data: {}\n\n", event.data).as_bytes())?;
    }
    if plan.ending == Ending::Complete {
        conn.write_all(b"0\r\n\r\n")?;
        conn.flush()?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Chat completions
// ---------------------------------------------------------------------------

/// Injected failures, selected by `mock.fault`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    Internal,
    RateLimited,
    ContextLength,
    Hang,
    Reset,
    Garbage,
    MalformedSse,
    PlainText500,
}

impl Fault {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "500" => Self::Internal,
            "429" => Self::RateLimited,
            "400" => Self::ContextLength,
            "hang" => Self::Hang,
            "reset" => Self::Reset,
            "garbage" => Self::Garbage,
            "malformed_sse" => Self::MalformedSse,
            "plain_text_500" => Self::PlainText500,
            _ => return None,
        })
    }

    /// The reply for faults that replace the completion entirely.
    fn canned_reply(self) -> Option<Reply> {
        let response = match self {
            Self::Internal => vllm_error(
                500,
                "InternalServerError",
                "internal engine failure at /srv/secret/path",
            ),
            Self::RateLimited => vllm_error(
                429,
                "RateLimitError",
                "Too many requests, please retry later.",
            )
            .with_header("retry-after", "1"),
            Self::ContextLength => vllm_error(
                400,
                "BadRequestError",
                "This model's maximum context length is 4096 tokens.",
            ),
            Self::Garbage => Response::raw(200, "application/json", b"\x00\xffnot json"),
            Self::PlainText500 => {
                Response::raw(500, "text/plain; charset=utf-8", b"upstream exploded")
            }
            Self::Hang => return Some(Reply::Hang),
            Self::MalformedSse => {
                let events = ["{not json", "[DONE]"].map(|data| SseEvent {
                    data: data.to_owned(),
                    delay: Duration::ZERO,
                });
                return Some(Reply::Stream(StreamPlan {
                    events: events.into(),
                    ending: Ending::Complete,
                }));
            }
            Self::Reset => return None,
        };
        Some(Reply::Respond(response))
    }
}

/// The `mock` body field, with CLI defaults filled in.
struct MockControls {
    chunks: u64,
    delay: Duration,
    fault: Option<Fault>,
}

impl MockControls {
    fn from_body(mock: Option<&Value>, config: &Config) -> Result<Self, String> {
        let mut controls = Self {
            chunks: config.chunks,
            delay: config.chunk_delay,
            fault: None,
        };
        let fields = match mock {
            None | Some(Value::Null) => return Ok(controls),
            Some(Value::Object(fields)) => fields,
            Some(_) => return Err("`mock` must be an object".to_owned()),
        };
        if let Some(chunks) = optional_count(fields.get("chunks"), "mock.chunks", MAX_TOKENS)? {
            controls.chunks = chunks;
        }
        if let Some(ms) =
            optional_count(fields.get("delay_ms"), "mock.delay_ms", millis(MAX_DELAY))?
        {
            controls.delay = Duration::from_millis(ms);
        }
        controls.fault = match fields.get("fault") {
            None | Some(Value::Null) => None,
            Some(Value::String(name)) => {
                Some(Fault::parse(name).ok_or_else(|| format!("unknown mock fault `{name}`"))?)
            }
            Some(_) => return Err("`mock.fault` must be a string".to_owned()),
        };
        Ok(controls)
    }
}

/// An optional non-negative integer field no larger than `max`.
fn optional_count(value: Option<&Value>, field: &str, max: u64) -> Result<Option<u64>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match value.as_u64() {
            Some(n) if n <= max => Ok(Some(n)),
            _ => Err(format!("`{field}` must be an integer from 0 to {max}")),
        },
    }
}

/// Interprets a chat request; errors are ready-made responses.
fn chat_completions(state: &State, request: &Request) -> Result<Reply, Response> {
    let body: Value = serde_json::from_slice(&request.body)
        .map_err(|err| bad_request(&format!("Invalid JSON in request body: {err}")))?;
    let body = body
        .as_object()
        .ok_or_else(|| bad_request("The request body must be a JSON object."))?;
    let controls =
        MockControls::from_body(body.get("mock"), &state.config).map_err(|m| bad_request(&m))?;
    let model = resolve_model(&state.config, body.get("model"))?;
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad_request("`messages` must be an array."))?;
    if let Some(reply) = controls.fault.and_then(Fault::canned_reply) {
        return Ok(reply);
    }
    let mut limit = controls.chunks;
    for field in ["max_tokens", "max_completion_tokens"] {
        if let Some(max) =
            optional_count(body.get(field), field, u64::MAX).map_err(|m| bad_request(&m))?
        {
            limit = limit.min(max);
        }
    }
    let completion = Completion {
        id: format!(
            "chatcmpl-mock-{}",
            state.next_id.fetch_add(1, Ordering::SeqCst)
        ),
        created: unix_now(),
        model,
        prompt_tokens: prompt_tokens(messages),
        completion_tokens: limit,
        finish_reason: if limit < controls.chunks {
            "length"
        } else {
            "stop"
        },
    };
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let reset = controls.fault == Some(Fault::Reset);
    Ok(match (stream, reset) {
        (false, false) => Reply::Respond(Response::json(200, &completion.response())),
        (false, true) => Reply::Truncate(Response::json(200, &completion.response())),
        (true, _) => {
            let include_usage = body
                .get("stream_options")
                .and_then(|o| o.get("include_usage"))
                .and_then(Value::as_bool)
                == Some(true);
            let mut events = completion.stream_events(include_usage, controls.delay);
            let ending = if reset {
                events.truncate(3);
                Ending::Reset
            } else {
                Ending::Complete
            };
            Reply::Stream(StreamPlan { events, ending })
        }
    })
}

fn resolve_model(config: &Config, requested: Option<&Value>) -> Result<String, Response> {
    match requested {
        None | Some(Value::Null) => Ok(config
            .models
            .first()
            .cloned()
            .unwrap_or_else(|| DEFAULT_MODEL.to_owned())),
        Some(Value::String(name)) if config.models.contains(name) => Ok(name.clone()),
        Some(Value::String(name)) => Err(vllm_error(
            404,
            "NotFoundError",
            &format!("The model `{name}` does not exist."),
        )),
        Some(_) => Err(bad_request("`model` must be a string.")),
    }
}

/// `(total bytes of the messages' text content) / 4 + one per message`.
fn prompt_tokens(messages: &[Value]) -> u64 {
    let bytes: usize = messages
        .iter()
        .map(|message| text_bytes(message.get("content")))
        .sum();
    u64::try_from(bytes / 4 + messages.len()).unwrap_or(u64::MAX)
}

/// Bytes of a message's content: a string, or the `text` of content parts.
fn text_bytes(content: Option<&Value>) -> usize {
    match content {
        Some(Value::String(text)) => text.len(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .map(str::len)
            .sum(),
        _ => 0,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn bad_request(message: &str) -> Response {
    vllm_error(400, "BadRequestError", message)
}

fn vllm_error(status: u16, kind: &str, message: &str) -> Response {
    Response::json(
        status,
        &ErrorBody {
            error: ErrorDetail {
                message,
                kind,
                param: None,
                code: status,
            },
        },
    )
}

fn model_list(config: &Config) -> Value {
    let data: Vec<Value> = config
        .models
        .iter()
        .map(|name| {
            json!({"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "vllm",
                   "root": name, "parent": null, "max_model_len": 4096})
        })
        .collect();
    json!({"object": "list", "data": data})
}

/// One generated completion, rendered either whole or as stream chunks.
struct Completion {
    id: String,
    created: u64,
    model: String,
    prompt_tokens: u64,
    completion_tokens: u64,
    finish_reason: &'static str,
}

fn token(index: u64) -> String {
    format!("tok{index} ")
}

impl Completion {
    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            total_tokens: self.prompt_tokens.saturating_add(self.completion_tokens),
        }
    }

    fn response(&self) -> ChatCompletion<'_> {
        ChatCompletion {
            id: &self.id,
            object: "chat.completion",
            created: self.created,
            model: &self.model,
            choices: [Choice {
                index: 0,
                message: Message {
                    role: "assistant",
                    content: (0..self.completion_tokens).map(token).collect(),
                },
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

    fn stream_events(&self, include_usage: bool, delay: Duration) -> Vec<SseEvent> {
        let usage_field = include_usage.then_some(None);
        let choice = |delta, finish_reason| {
            vec![ChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason,
            }]
        };
        let immediate = |data| SseEvent {
            data,
            delay: Duration::ZERO,
        };

        let role = Delta {
            role: Some("assistant"),
            content: Some(String::new()),
        };
        let mut events = vec![immediate(self.chunk(choice(role, None), usage_field))];
        events.extend((0..self.completion_tokens).map(|i| SseEvent {
            data: self.chunk(
                choice(
                    Delta {
                        role: None,
                        content: Some(token(i)),
                    },
                    None,
                ),
                usage_field,
            ),
            delay,
        }));
        events.push(immediate(self.chunk(
            choice(Delta::default(), Some(self.finish_reason)),
            usage_field,
        )));
        if include_usage {
            events.push(immediate(self.chunk(Vec::new(), Some(Some(self.usage())))));
        }
        events.push(immediate("[DONE]".to_owned()));
        events
    }
}

// ---------------------------------------------------------------------------
// Wire shapes (field order follows vLLM)
// ---------------------------------------------------------------------------

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<()>,
    code: u16,
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
