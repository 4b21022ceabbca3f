//! Writing HTTP/1.1 responses: the status line and headers, `Content-Length`
//! bodies, and chunked transfer encoding.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::TcpStream;

use serde::Serialize;

/// A complete response with a `Content-Length` body.
pub(crate) struct Response {
    status: u16,
    content_type: Option<&'static str>,
    headers: Vec<(&'static str, String)>,
    pub(crate) body: Vec<u8>,
}

impl Response {
    pub(crate) fn empty(status: u16) -> Self {
        Self { status, content_type: None, headers: Vec::new(), body: Vec::new() }
    }

    pub(crate) fn json(status: u16, value: &impl Serialize) -> Self {
        let body = serde_json::to_vec(value).unwrap_or_default();
        Self { status, content_type: Some("application/json"), headers: Vec::new(), body }
    }

    pub(crate) fn raw(status: u16, content_type: &'static str, body: &[u8]) -> Self {
        Self { status, content_type: Some(content_type), headers: Vec::new(), body: body.to_vec() }
    }

    pub(crate) fn with_header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    pub(crate) fn head(&self, close: bool) -> String {
        response_head(self.status, self.content_type, &self.headers, Framing::Length(self.body.len()), close)
    }
}

pub(crate) enum Framing {
    Length(usize),
    Chunked,
}

pub(crate) fn response_head(
    status: u16,
    content_type: Option<&str>,
    headers: &[(&str, String)],
    framing: Framing,
    close: bool,
) -> String {
    let mut head = format!("HTTP/1.1 {status} {}\r\nserver: mock-backend\r\n", reason_phrase(status));
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
    head.push_str(if close { "connection: close\r\n\r\n" } else { "connection: keep-alive\r\n\r\n" });
    head
}

/// Python's `http.HTTPStatus` phrase (what uvicorn puts on the status line and vLLM's
/// `HTTPException` handler uses as the error `type`); empty for codes it lacks.
pub(crate) fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Requested Range Not Satisfiable",
        417 => "Expectation Failed",
        418 => "I'm a Teapot",
        421 => "Misdirected Request",
        422 => "Unprocessable Entity",
        423 => "Locked",
        424 => "Failed Dependency",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        506 => "Variant Also Negotiates",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        510 => "Not Extended",
        511 => "Network Authentication Required",
        _ => "",
    }
}

pub(crate) fn write_response(conn: &mut TcpStream, response: &Response, close: bool) -> io::Result<()> {
    let mut bytes = response.head(close).into_bytes();
    bytes.extend_from_slice(&response.body);
    conn.write_all(&bytes)?;
    conn.flush()
}

pub(crate) fn write_chunk(conn: &mut TcpStream, data: &[u8]) -> io::Result<()> {
    let mut bytes = format!("{:x}\r\n", data.len()).into_bytes();
    bytes.extend_from_slice(data);
    bytes.extend_from_slice(b"\r\n");
    conn.write_all(&bytes)?;
    conn.flush()
}
