//! Reading HTTP/1.1 requests: the request line, headers, and `Content-Length`
//! or chunked bodies, within size limits.

use std::io::{self, BufRead, Read, Write};
use std::net::TcpStream;

/// Most bytes accepted for a request line plus headers.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header lines accepted in one request.
const MAX_HEADERS: usize = 128;
/// Most bytes accepted for a request body.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

pub(crate) struct Request {
    pub(crate) method: String,
    /// The request target without its query string.
    pub(crate) path: String,
    http_1_0: bool,
    /// Header names are lowercased; values are trimmed.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Request {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn connection_has(&self, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == "connection")
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    pub(crate) fn wants_close(&self) -> bool {
        self.connection_has("close") || (self.http_1_0 && !self.connection_has("keep-alive"))
    }
}

pub(crate) enum ReadError {
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
pub(crate) fn read_request(reader: &mut impl BufRead, conn: &mut TcpStream) -> Result<Option<Request>, ReadError> {
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
    let mut request = Request { method, path, http_1_0, headers, body: Vec::new() };
    if request.header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
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
        return Err(if read >= *budget { ReadError::TooLarge } else { ReadError::Io });
    }
    *budget -= read;
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line).map(Some).map_err(|_| ReadError::Malformed("request head is not UTF-8"))
}

fn parse_request_line(line: &str) -> Result<(String, String, bool), ReadError> {
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Malformed("malformed request line"));
    };
    let method_ok = !method.is_empty() && method.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-');
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

fn read_headers(reader: &mut impl BufRead, budget: &mut usize) -> Result<Vec<(String, String)>, ReadError> {
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
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
            return Err(ReadError::Malformed("malformed header name"));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
    }
}

fn read_body(reader: &mut impl BufRead, request: &Request) -> Result<Vec<u8>, ReadError> {
    if let Some(codings) = request.header("transfer-encoding") {
        let last = codings.rsplit(',').next().map(str::trim).unwrap_or_default();
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
    let values = request.headers.iter().filter(|(n, _)| n == "content-length").flat_map(|(_, v)| v.split(','));
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
        let size = line.split_once(';').map_or(line.as_str(), |(size, _)| size).trim();
        let size = match usize::from_str_radix(size, 16) {
            Ok(n) if size.bytes().all(|b| b.is_ascii_hexdigit()) => n,
            _ => return Err(ReadError::Malformed("invalid chunk size")),
        };
        if size == 0 {
            break;
        }
        let start = body.len();
        let end = start.checked_add(size).filter(|&end| end <= MAX_BODY_BYTES).ok_or(ReadError::TooLarge)?;
        body.resize(end, 0);
        reader.read_exact(&mut body[start..])?;
        if !read_line(reader, &mut framing_budget)?.ok_or(ReadError::Io)?.is_empty() {
            return Err(ReadError::Malformed("chunk data not followed by CRLF"));
        }
    }
    // Trailer fields are read and ignored.
    while !read_line(reader, &mut framing_budget)?.ok_or(ReadError::Io)?.is_empty() {}
    Ok(body)
}
