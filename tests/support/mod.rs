//! Helpers shared by the end-to-end tests (`mod support;`), built on std only:
//! child processes that cannot outlive a test ([`Proc`]), the mock inference
//! backend ([`MockBackend`]), and a small blocking HTTP/1.1 client ([`request`],
//! [`request_streaming`]) with SSE parsing ([`sse_events`]).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod launch;

/// Connect, read and write timeout of the HTTP client.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`MockBackend::start`] waits for the `listening on` line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Proc`] waits after SIGTERM before sending SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// A child process running in its own process group; the whole group is
/// terminated when this is dropped (SIGTERM, then SIGKILL after [`TERM_GRACE`]).
pub struct Proc {
    pub child: Child,
    killed: bool,
}

impl Proc {
    /// Spawns `cmd` as the leader of a new process group. Panics if it cannot start.
    pub fn spawn(mut cmd: Command) -> Proc {
        cmd.process_group(0);
        let child = cmd.spawn().unwrap_or_else(|err| panic!("cannot spawn {cmd:?}: {err}"));
        Proc { child, killed: false }
    }

    /// The process id, which is also the process group id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Terminates the process group: SIGTERM, up to [`TERM_GRACE`] for the
    /// leader to exit, then SIGKILL. Idempotent.
    pub fn kill(&mut self) {
        if std::mem::replace(&mut self.killed, true) {
            return;
        }
        signal_group(self.id(), "-TERM");
        let deadline = Instant::now() + TERM_GRACE;
        while self.is_running() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        if self.is_running() {
            signal_group(self.id(), "-KILL");
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends `signal` to every process in group `pgid` (errors are ignored: the
/// group may already be gone).
fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A TCP port that was free a moment ago (bound to 127.0.0.1:0, then released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Polls `f` every 20 ms until it returns true (→ `true`) or `timeout` passes (→ `false`).
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// The mock backend
// ---------------------------------------------------------------------------

/// A running `mock-backend` process (see `src/bin/mock-backend/main.rs` for its
/// endpoints and controls).
pub struct MockBackend {
    pub proc: Proc,
    /// `http://127.0.0.1:PORT`, as printed by the mock.
    pub base_url: String,
    pub addr: SocketAddr,
}

impl MockBackend {
    /// Starts the mock on a free port with extra command-line `args`
    /// (e.g. `&["--model", "m", "--chunks", "4"]`).
    pub fn start(args: &[&str]) -> MockBackend {
        Self::launch("127.0.0.1:0", args).unwrap_or_else(|err| panic!("mock-backend: {err}"))
    }

    /// Starts the mock on a fixed address, e.g. the one a stopped mock used, so
    /// a test can restart a backend behind a running gateway. Retries while the
    /// address is still busy, for up to [`STARTUP_TIMEOUT`].
    pub fn start_on(addr: SocketAddr, args: &[&str]) -> MockBackend {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            match Self::launch(&addr.to_string(), args) {
                Ok(mock) => return mock,
                Err(err) if Instant::now() >= deadline => panic!("mock-backend on {addr}: {err}"),
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn launch(addr: &str, args: &[&str]) -> Result<MockBackend, String> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mock-backend"));
        cmd.args(["--addr", addr]).args(args).stdin(Stdio::null()).stdout(Stdio::piped());
        let mut proc = Proc::spawn(cmd);
        let stdout = proc.child.stdout.take().ok_or("no stdout pipe")?;
        let line = first_line(stdout, STARTUP_TIMEOUT)
            .ok_or_else(|| format!("no `listening on` line within {STARTUP_TIMEOUT:?}"))?;
        let base_url = line
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| format!("unexpected first line {line:?}"))?
            .to_owned();
        let addr = base_url
            .strip_prefix("http://")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("cannot parse address from {base_url:?}"))?;
        Ok(MockBackend { proc, base_url, addr })
    }

    /// `127.0.0.1:PORT`, the form [`request`] takes.
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// `base_url` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// `GET /mock/stats`: `requests`, `open_streams`, `max_open_streams`, `client_disconnects`,
    /// `health_checks`, `non_stream_in_progress`.
    pub fn stats(&self) -> Value {
        request(&self.host_port(), "GET", "/mock/stats", &[], None).json()
    }

    /// One counter from [`MockBackend::stats`].
    pub fn stat(&self, name: &str) -> u64 {
        self.stats()[name].as_u64().unwrap_or_else(|| panic!("no stat {name:?}"))
    }

    /// `POST /mock/reset-stats`.
    pub fn reset_stats(&self) {
        let response = request(&self.host_port(), "POST", "/mock/reset-stats", &[], None);
        assert_eq!(response.status, 200, "reset-stats: {}", response.text());
    }

    /// `GET /mock/last-request`: `path`, lowercased `headers` and the JSON `body`
    /// of the last chat completion request.
    pub fn last_request(&self) -> Value {
        request(&self.host_port(), "GET", "/mock/last-request", &[], None).json()
    }

    /// `GET /mock/requests/{id}`: the chat request that carried `x-request-id: {id}`.
    pub fn request_with_id(&self, id: &str) -> Option<Value> {
        let response = request(&self.host_port(), "GET", &format!("/mock/requests/{id}"), &[], None);
        (response.status == 200).then(|| response.json())
    }

    /// Kills the process; the address becomes free for [`MockBackend::start_on`].
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Kills the process and consumes the handle.
    pub fn stop(mut self) {
        self.kill();
    }
}

/// The first line of `stdout`, read on a helper thread (which then drains the
/// pipe), or `None` if none arrives within `timeout`.
fn first_line(stdout: impl Read + Send + 'static, timeout: Duration) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        let _ = io::copy(&mut reader, &mut io::sink());
    });
    rx.recv_timeout(timeout).ok().filter(|line| !line.is_empty())
}

// ---------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------

/// A complete HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names are lowercased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The body parsed as JSON; panics with the body text if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("status {} body is not JSON ({err}): {:?}", self.status, self.text()))
    }

    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request on a fresh connection (`Connection: close`) to `addr`
/// (`"127.0.0.1:PORT"`) and reads the whole response. Panics on I/O errors or
/// after [`IO_TIMEOUT`] without progress.
pub fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> HttpResponse {
    try_request(addr, method, path, headers, body).unwrap_or_else(|err| panic!("{method} http://{addr}{path}: {err}"))
}

/// [`request`], returning I/O errors (refused, reset, truncated body, timeout)
/// instead of panicking.
pub fn try_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> io::Result<HttpResponse> {
    let conn = connect(addr)?;
    send_request(&conn, addr, method, path, headers, body)?;
    read_response(&mut BufReader::new(conn), method)
}

/// Opens a connection with [`IO_TIMEOUT`] for connect, reads and writes.
pub fn connect(addr: &str) -> io::Result<TcpStream> {
    let mut last_error = io::Error::new(io::ErrorKind::InvalidInput, format!("no address for {addr}"));
    for socket_addr in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&socket_addr, IO_TIMEOUT) {
            Ok(conn) => {
                conn.set_read_timeout(Some(IO_TIMEOUT))?;
                conn.set_write_timeout(Some(IO_TIMEOUT))?;
                conn.set_nodelay(true)?;
                return Ok(conn);
            }
            Err(err) => last_error = err,
        }
    }
    Err(last_error)
}

/// Writes a request. Adds `Host`, `Connection: close` and `Content-Length`
/// unless `headers` already has them.
pub fn send_request(
    mut conn: &TcpStream,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> io::Result<()> {
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !has("host") {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    if !has("connection") {
        head.push_str("Connection: close\r\n");
    }
    if let Some(body) = body {
        if !has("content-length") && !has("transfer-encoding") {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    conn.write_all(&bytes)?;
    conn.flush()
}

/// Reads one complete response (skipping `1xx` interim responses) from a
/// connection; usable for several responses on a keep-alive connection.
/// `method` matters only for `HEAD`, whose response has no body.
pub fn read_response(reader: &mut impl BufRead, method: &str) -> io::Result<HttpResponse> {
    let (status, headers) = read_head(reader)?;
    let mut body = Vec::new();
    let mut framing = BodyFraming::of(status, &headers, method)?;
    while let Some(piece) = framing.next_piece(reader)? {
        body.extend_from_slice(&piece);
    }
    Ok(HttpResponse { status, headers, body })
}

/// Sends one request on a fresh connection and returns as soon as the response
/// head has arrived; the body is then read piece by piece.
pub fn request_streaming(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> StreamingResponse {
    let conn = connect(addr).unwrap_or_else(|err| panic!("connect {addr}: {err}"));
    send_request(&conn, addr, method, path, headers, body)
        .unwrap_or_else(|err| panic!("{method} http://{addr}{path}: {err}"));
    let mut reader = BufReader::new(conn);
    let (status, headers) =
        read_head(&mut reader).unwrap_or_else(|err| panic!("{method} http://{addr}{path}: no response head: {err}"));
    let framing =
        BodyFraming::of(status, &headers, method).unwrap_or_else(|err| panic!("{method} http://{addr}{path}: {err}"));
    StreamingResponse { status, headers, reader, framing, error: None }
}

/// A response whose body is read incrementally: one piece per decoded HTTP
/// chunk (or per socket read when the body is not chunked), each stamped with
/// the instant it was read. Dropping it (or [`StreamingResponse::disconnect`])
/// closes the connection, which is how a test simulates a client going away.
pub struct StreamingResponse {
    pub status: u16,
    /// Header names are lowercased, in the order received.
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    framing: BodyFraming,
    error: Option<io::Error>,
}

impl StreamingResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The next body piece with its arrival instant; `None` at the end of the
    /// body or after an error (see [`StreamingResponse::error`]).
    pub fn next_chunk(&mut self) -> Option<(Instant, Vec<u8>)> {
        self.try_next_chunk().ok().flatten()
    }

    /// The next body piece, or the I/O error that ended the body early
    /// (e.g. `UnexpectedEof` when the server dropped a chunked body).
    pub fn try_next_chunk(&mut self) -> io::Result<Option<(Instant, Vec<u8>)>> {
        if self.error.is_some() {
            return Ok(None);
        }
        match self.framing.next_piece(&mut self.reader) {
            Ok(piece) => Ok(piece.map(|data| (Instant::now(), data))),
            Err(err) => {
                self.error = Some(io::Error::new(err.kind(), err.to_string()));
                Err(err)
            }
        }
    }

    /// The error that ended the body early, if any.
    pub fn error(&self) -> Option<&io::Error> {
        self.error.as_ref()
    }

    /// Whether the whole body was received with correct framing (for chunked
    /// bodies: the terminating zero-length chunk).
    pub fn finished_cleanly(&self) -> bool {
        self.error.is_none() && self.framing.is_done()
    }

    /// Reads every remaining piece and returns them concatenated.
    pub fn read_to_end(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        while let Some((_, piece)) = self.next_chunk() {
            body.extend_from_slice(&piece);
        }
        body
    }

    /// Changes the socket read timeout (default [`IO_TIMEOUT`]).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) {
        self.reader.get_ref().set_read_timeout(timeout).expect("set_read_timeout");
    }

    /// Closes the connection at once, mid-body.
    pub fn disconnect(self) {
        let _ = self.reader.get_ref().shutdown(Shutdown::Both);
    }
}

impl Iterator for StreamingResponse {
    type Item = (Instant, Vec<u8>);

    fn next(&mut self) -> Option<Self::Item> {
        self.next_chunk()
    }
}

/// The `data:` payload of every Server-Sent Event in `body`, in order (the
/// lines of a multi-line payload are joined with `\n`).
pub fn sse_events(body: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(body);
    let mut events = Vec::new();
    let mut data: Option<String> = None;
    for line in text.split('\n').map(|line| line.strip_suffix('\r').unwrap_or(line)) {
        if line.is_empty() {
            events.extend(data.take());
        } else if let Some(value) = line.strip_prefix("data:") {
            let value = value.strip_prefix(' ').unwrap_or(value);
            match &mut data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => data = Some(value.to_owned()),
            }
        }
    }
    events.extend(data);
    events
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// Reads a status line and headers, skipping `1xx` interim responses.
fn read_head(reader: &mut impl BufRead) -> io::Result<(u16, Vec<(String, String)>)> {
    loop {
        let status_line = read_line(reader)?;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse::<u16>().ok())
            .filter(|_| status_line.starts_with("HTTP/1."))
            .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let line = read_line(reader)?;
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        if !(100..200).contains(&status) || status == 101 {
            return Ok((status, headers));
        }
    }
}

/// A line without its CRLF; EOF before the line ends is an error.
fn read_line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if !line.ends_with('\n') {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-line"));
    }
    line.truncate(line.trim_end_matches(['\r', '\n']).len());
    Ok(line)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// How a response body is delimited, and how much of it is left.
enum BodyFraming {
    /// Chunked; `done` once the zero-length chunk and trailers were read.
    Chunked { done: bool },
    /// `Content-Length`: bytes still to read.
    Length(usize),
    /// Until the server closes the connection.
    UntilEof { done: bool },
}

impl BodyFraming {
    fn of(status: u16, headers: &[(String, String)], method: &str) -> io::Result<Self> {
        if method.eq_ignore_ascii_case("HEAD") || status == 204 || status == 304 {
            return Ok(Self::Length(0));
        }
        let chunked =
            find_header(headers, "transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
        if chunked {
            return Ok(Self::Chunked { done: false });
        }
        match find_header(headers, "content-length") {
            Some(length) => {
                length.trim().parse().map(Self::Length).map_err(|_| invalid(format!("bad content-length {length:?}")))
            }
            None => Ok(Self::UntilEof { done: false }),
        }
    }

    fn is_done(&self) -> bool {
        match self {
            Self::Chunked { done } | Self::UntilEof { done } => *done,
            Self::Length(left) => *left == 0,
        }
    }

    /// The next piece of body, or `None` once the body is complete.
    fn next_piece(&mut self, reader: &mut impl BufRead) -> io::Result<Option<Vec<u8>>> {
        match self {
            Self::Chunked { done: true } | Self::UntilEof { done: true } | Self::Length(0) => Ok(None),
            Self::Chunked { done } => {
                let piece = read_chunk(reader)?;
                *done = piece.is_none();
                Ok(piece)
            }
            Self::Length(left) => {
                let piece = read_some(reader, *left)?;
                if piece.is_empty() {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "body shorter than content-length"));
                }
                *left -= piece.len();
                Ok(Some(piece))
            }
            Self::UntilEof { done } => {
                let piece = read_some(reader, usize::MAX)?;
                *done = piece.is_empty();
                Ok((!piece.is_empty()).then_some(piece))
            }
        }
    }
}

/// One chunk of a chunked body; `None` after the last chunk (trailers consumed).
fn read_chunk(reader: &mut impl BufRead) -> io::Result<Option<Vec<u8>>> {
    let line = read_line(reader)?;
    let size = line.split(';').next().unwrap_or_default().trim();
    let size = usize::from_str_radix(size, 16).map_err(|_| invalid(format!("bad chunk size {line:?}")))?;
    if size == 0 {
        while !read_line(reader)?.is_empty() {}
        return Ok(None);
    }
    let mut data = vec![0; size];
    reader.read_exact(&mut data)?;
    if !read_line(reader)?.is_empty() {
        return Err(invalid("chunk data not followed by CRLF".to_owned()));
    }
    Ok(Some(data))
}

/// Whatever is available now (at least one byte unless at EOF), at most `max` bytes.
fn read_some(reader: &mut impl BufRead, max: usize) -> io::Result<Vec<u8>> {
    let available = reader.fill_buf()?;
    let piece = available[..available.len().min(max)].to_vec();
    reader.consume(piece.len());
    Ok(piece)
}
