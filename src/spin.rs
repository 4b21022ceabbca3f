//! Spin adapter (WASI 0.3 HTTP, spin-sdk 7): translates requests and responses, and implements
//! the core's traits with WASI imports only, so the same component runs on Spin and on any
//! WASI-HTTP host (`wasmtime serve`).
//!
//! - [`Upstream`] with `wasi:http` outbound requests; dropping the body cancels the request;
//! - [`LimitStore`] with Redis over a plain TCP connection (`wasi:sockets`): one `EVAL` of the
//!   core's admission script per request, atomic in Redis (see [`crate::core::redis`]);
//! - [`Runtime`] with `wasi:clocks`, `wasi:random` and stdout;
//! - configuration from the component's environment (`wasi:cli/environment`), which Spin
//!   (`environment`, `spin up -e`) and `wasmtime serve --env` both provide.
//!
//! Spin runs every request in a fresh instance, so passive backend health is loaded from Redis
//! at the start of a request and what changed is written back (one atomic script) at its end.
//!
//! No business rule lives here: if this file grows an `if` about the API, it belongs in the core.

use crate::core::balance::HealthBook;
use crate::core::config::{vars, Config, ConfigError};
use crate::core::http::{Body, BodyError, BodyStream, Headers, Request, Response};
use crate::core::limits::{Admission, Admitted, Settlement};
use crate::core::redis::{self, RedisTarget, Reply};
use crate::core::runtime::Runtime;
use crate::core::store::{LimitStore, StoreError};
use crate::core::upstream::{ConnectError, Upstream, UpstreamRequest, UpstreamResponse};
use crate::core::Gateway;
use bytes::Bytes;
use futures::stream::{Stream, StreamExt, TryStreamExt};
use http_body_util::{BodyStream as FrameStream, Either, Empty, Full, StreamBody};
use spin_sdk::http::{HeaderName, HeaderValue, Method};
use spin_sdk::http_service;
use spin_sdk::wasip3;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::pin::Pin;
use std::cell::RefCell;
use std::rc::Rc;

type Frames = Pin<Box<dyn Stream<Item = Result<http_body::Frame<Bytes>, BodyError>>>>;
type ResponseBody = Either<Full<Bytes>, StreamBody<Frames>>;

#[http_service]
async fn handle(request: spin_sdk::http::Request) -> spin_sdk::http::Result<spin_sdk::http::Response<ResponseBody>> {
    let env: HashMap<String, String> = wasip3::cli::environment::get_environment().into_iter().collect();
    // This build has no store of its own: Redis is required, and its absence a configuration error.
    let config = Config::from_lookup(&env).and_then(|config| match config.redis {
        Some(_) => Ok(config),
        None => Err(ConfigError(format!("{} is not set (the Spin build keeps limit state in Redis)", vars::REDIS_URL))),
    });
    let store = RedisStore::new(config.as_ref().ok().and_then(|c| c.redis.clone()));
    // Each request runs in a fresh instance: passive backend health is shared through Redis,
    // read only if the request gets as far as choosing a backend.
    let loader = store.clone();
    let health = Rc::new(HealthBook::shared(Box::new(move || {
        loader.call(&redis::health_load_command()).map(redis::health_entries).unwrap_or_default()
    })));
    let gateway = Gateway::new(WasiHttp, store.clone(), WasiRuntime).with_health(health.clone());
    let response = gateway.handle(config.as_ref(), to_core_request(request)).await;
    let events = health.take_journal();
    if let (false, Ok(config)) = (events.is_empty(), config.as_ref()) {
        if let Err(e) = store.call(&redis::health_record_command(&events, config.breaker)) {
            println!("{}", serde_json::json!({ "level": "warn", "event": "health_write_failed", "detail": e.0 }));
        }
    }
    to_spin_response(response)
}

/// The header Spin sets to the client's address (`ip:port`), replacing any the client sent.
const CLIENT_ADDR_HEADER: &str = "spin-client-addr";

fn to_core_request(request: spin_sdk::http::Request) -> Request {
    let (parts, body) = request.into_parts();
    let mut headers = header_pairs(&parts.headers);
    let client_ip = headers.get(CLIENT_ADDR_HEADER).map(|addr| match addr.rsplit_once(':') {
        Some((ip, port)) if port.bytes().all(|b| b.is_ascii_digit()) => ip.trim_matches(['[', ']']).to_string(),
        _ => addr.to_string(),
    });
    headers.remove(CLIENT_ADDR_HEADER);
    let body: BodyStream = Box::pin(data_frames(FrameStream::new(body)));
    // A client that goes away drops the response here, which ends the stream: nothing to watch.
    Request { method: parts.method.to_string(), path: parts.uri.path().to_string(), headers, body, client_ip, disconnected: None }
}

fn header_pairs(headers: &spin_sdk::http::HeaderMap) -> Headers {
    headers
        .iter()
        .filter_map(|(n, v)| v.to_str().ok().map(|v| (n.as_str().to_string(), v.to_string())))
        .collect()
}

/// The data frames of an HTTP body as a core body stream (trailers are ignored).
fn data_frames<S, E>(frames: S) -> impl Stream<Item = Result<Vec<u8>, BodyError>>
where
    S: Stream<Item = Result<http_body::Frame<Bytes>, E>>,
    E: std::fmt::Display,
{
    frames.filter_map(|frame| async move {
        match frame {
            Ok(frame) => frame.into_data().ok().map(|data| Ok(data.to_vec())),
            Err(e) => Some(Err(BodyError(e.to_string()))),
        }
    })
}

fn to_spin_response(response: Response) -> spin_sdk::http::Result<spin_sdk::http::Response<ResponseBody>> {
    let mut builder = spin_sdk::http::Response::builder().status(response.status);
    for (name, value) in response.headers.iter() {
        builder = builder.header(name, value);
    }
    let body = match response.body {
        Body::Full(bytes) => Either::Left(Full::new(Bytes::from(bytes))),
        Body::Stream(stream) => {
            let frames: Frames = Box::pin(stream.map_ok(|chunk| http_body::Frame::data(Bytes::from(chunk))));
            Either::Right(StreamBody::new(frames))
        }
    };
    Ok(builder.body(body)?)
}

/// Outbound HTTP through `wasi:http`.
struct WasiHttp;

impl Upstream for WasiHttp {
    async fn send(&self, request: UpstreamRequest) -> Result<UpstreamResponse, ConnectError> {
        let failed = |e: &dyn std::fmt::Display| ConnectError(e.to_string());
        let mut builder = spin_sdk::http::Request::builder()
            .method(Method::from_bytes(request.method.as_bytes()).map_err(|e| failed(&e))?)
            .uri(&request.url);
        for (name, value) in request.headers.iter() {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| failed(&e))?;
            let value = HeaderValue::from_str(value).map_err(|e| failed(&e))?;
            builder = builder.header(name, value);
        }
        let body: Either<Full<Bytes>, Empty<Bytes>> = match request.body {
            Some(body) => Either::Left(Full::new(Bytes::from(body))),
            None => Either::Right(Empty::new()),
        };
        let outbound = builder.body(body).map_err(|e| failed(&e))?;
        let response = spin_sdk::http::send(outbound).await.map_err(|e| failed(&e))?;
        let (parts, body) = response.into_parts();
        Ok(UpstreamResponse {
            status: parts.status.as_u16(),
            headers: header_pairs(&parts.headers),
            body: Box::pin(data_frames(FrameStream::new(body))),
        })
    }
}

/// Limit state and backend health in Redis: one connection per request (opened on first use and
/// reused for every command of that request), one atomic `EVAL` per admission or settlement.
///
/// Nothing is pooled across requests: Spin and `wasmtime serve` give each its own instance.
#[derive(Clone)]
struct RedisStore {
    target: Option<Rc<RedisTarget>>,
    connection: Rc<RefCell<Option<Connection>>>,
}

struct Connection {
    stream: std::net::TcpStream,
    /// Bytes read past the last reply.
    buffer: Vec<u8>,
}

impl RedisStore {
    fn new(target: Option<RedisTarget>) -> Self {
        RedisStore { target: target.map(Rc::new), connection: Rc::default() }
    }

    /// Sends `command` on the request's connection and returns Redis's reply to it. A failed
    /// connection is dropped, so the next command starts afresh.
    fn call(&self, command: &[u8]) -> Result<Reply, StoreError> {
        let target = self.target.as_deref().ok_or_else(|| StoreError("no Redis configured".into()))?;
        let failed = |e: std::io::Error| StoreError(format!("Redis at {}:{}: {e}", target.host, target.port));
        let mut slot = self.connection.borrow_mut();
        if slot.is_none() {
            *slot = Some(connect(target).map_err(|e| match e {
                LoginError::Io(e) => failed(e),
                LoginError::Refused(e) => e,
            })?);
        }
        let result = match slot.as_mut() {
            Some(connection) => exchange(connection, command),
            None => Ok(None),
        };
        match result {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => {
                *slot = None;
                Err(StoreError("Redis closed the connection".into()))
            }
            Err(e) => {
                *slot = None;
                Err(failed(e))
            }
        }
    }
}

enum LoginError {
    Io(std::io::Error),
    Refused(StoreError),
}

/// Opens a connection and logs in (`AUTH`, `SELECT`).
fn connect(target: &RedisTarget) -> Result<Connection, LoginError> {
    let stream = std::net::TcpStream::connect((target.host.as_str(), target.port)).map_err(LoginError::Io)?;
    let mut connection = Connection { stream, buffer: Vec::with_capacity(512) };
    for login in redis::handshake(target) {
        match exchange(&mut connection, &login).map_err(LoginError::Io)? {
            Some(Reply::Error(e)) => return Err(LoginError::Refused(StoreError(format!("Redis refused the login: {e}")))),
            Some(_) => {}
            None => return Err(LoginError::Refused(StoreError("Redis closed the connection".into()))),
        }
    }
    Ok(connection)
}

/// Writes one command and reads its reply; `None` if the peer closed first.
fn exchange(connection: &mut Connection, command: &[u8]) -> std::io::Result<Option<Reply>> {
    connection.stream.write_all(command)?;
    read_reply(&mut connection.stream, &mut connection.buffer)
}

impl LimitStore for RedisStore {
    async fn admit(&self, scope: &str, admission: &Admission) -> Result<Admitted, StoreError> {
        redis::admitted(self.call(&redis::admit_command(scope, admission))?, admission)
    }

    async fn settle(&self, scope: &str, settlement: &Settlement) -> Result<(), StoreError> {
        redis::settled(self.call(&redis::settle_command(scope, settlement))?)
    }
}

/// Reads one reply, keeping any bytes after it in `buffer`; `None` if the peer closed first.
fn read_reply(connection: &mut std::net::TcpStream, buffer: &mut Vec<u8>) -> std::io::Result<Option<Reply>> {
    let mut chunk = [0u8; 4096];
    loop {
        match redis::parse_reply(buffer) {
            Ok(Some((reply, used))) => {
                buffer.drain(..used);
                return Ok(Some(reply));
            }
            Ok(None) => {}
            Err(e) => return Err(std::io::Error::other(e.0)),
        }
        let read = connection.read(&mut chunk)?;
        if read == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// Time, randomness and logs from WASI.
#[derive(Clone, Copy)]
struct WasiRuntime;

impl Runtime for WasiRuntime {
    fn now_ms(&self) -> u64 {
        let now = wasip3::clocks::system_clock::now();
        (now.seconds.max(0) as u64) * 1000 + u64::from(now.nanoseconds / 1_000_000)
    }

    fn sleep(&self, ms: u64) -> impl std::future::Future<Output = ()> {
        wasip3::clocks::monotonic_clock::wait_for(ms.saturating_mul(1_000_000))
    }

    fn fill_random(&self, buf: &mut [u8]) {
        let bytes = wasip3::random::insecure::get_insecure_random_bytes(buf.len() as u64);
        for (out, byte) in buf.iter_mut().zip(bytes) {
            *out = byte;
        }
    }

    fn log(&self, line: &str) {
        println!("{line}");
    }

    fn spawn(&self, task: Pin<Box<dyn std::future::Future<Output = ()>>>) {
        wasip3::wit_bindgen::spawn(task);
    }
}
