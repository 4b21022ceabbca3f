//! Spin adapter: one WASI 0.2 HTTP component (`wasi:http/incoming-handler@0.2`) that translates
//! requests and responses and implements the core's traits with WASI 0.2 imports only, so the
//! same file runs on every Spin (3.x, 4.x, SpinKube's shim, Fermyon Cloud) and on any WASI-HTTP
//! host (`wasmtime serve`).
//!
//! - [`Upstream`] with `wasi:http/outgoing-handler`; the backend's body streams through, and
//!   dropping it (a timeout, the client gone) drops the request, which closes its connection;
//! - [`LimitStore`] with Redis over `wasi:sockets` TCP: one `EVAL` of the core's admission script
//!   per request, atomic in Redis (see [`crate::core::redis`]); every call is bounded by
//!   `GATEWAY_REDIS_TIMEOUT_MS`, so a stalled Redis costs a request that long, never more;
//! - [`Runtime`] with `wasi:clocks` (a real timer in the executor), `wasi:random` and stdout;
//! - configuration from the component's environment (`wasi:cli/environment`), which Spin
//!   (`environment`, `spin up -e`) and `wasmtime serve --env` both provide.
//!
//! The executor is `wstd`'s (Bytecode Alliance): it polls every pending `wasi:io` pollable —
//! sockets, HTTP bodies, timers — in one `poll` call, so timeouts race real I/O. Spin runs every
//! request in a fresh instance, so passive backend health is loaded from Redis when the request
//! first needs it and what changed is written back (one atomic script) before the client sees
//! the outcome: before the response head, or before the chunk that follows it in a stream.
//!
//! No business rule lives here: if this file grows an `if` about the API, it belongs in the core.

use crate::core::config::RedisTarget;
use crate::core::config::{Config, ConfigError};
use crate::core::http::{Body, BodyError, BodyStream, Headers, Request, Response};
use crate::core::log::event;
use crate::core::rate_limit::gcra::{Admission, Admitted, Settlement};
use crate::core::rate_limit::store::{LimitStore, StoreError};
use crate::core::redis::{self, Reply, ReplyReader};
use crate::core::runtime::Runtime;
use crate::core::upstream::balance::HealthBook;
use crate::core::upstream::readiness::{ProbeCache, ProbeRound};
use crate::core::upstream::relay::{Pipe, Verdict};
use crate::core::upstream::{ConnectError, Upstream, UpstreamRequest, UpstreamResponse};
use crate::core::Gateway;
use futures::future::{select, Either};
use futures::stream::{Stream, StreamExt};
use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use wasip2::clocks::monotonic_clock;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, IncomingRequest, IncomingResponse, Method, OutgoingBody, OutgoingRequest,
    OutgoingResponse, ResponseOutparam, Scheme,
};
use wasip2::io::poll::Pollable;
use wasip2::io::streams::{InputStream, OutputStream, StreamError};
use wasip2::sockets::network::{
    ErrorCode as SocketError, IpAddress, IpSocketAddress, Ipv4SocketAddress, Ipv6SocketAddress, Network,
};
use wasip2::sockets::tcp::{IpAddressFamily, TcpSocket};
use wstd::io::AsyncOutputStream;
use wstd::runtime::{AsyncPollable, WaitFor};

struct Component;

impl wasip2::exports::http::incoming_handler::Guest for Component {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        // Returns once the response is sent and every task spawned for the request (settling its
        // limits) has finished.
        wstd::runtime::block_on(serve(request, response_out));
    }
}

wasip2::http::proxy::export!(Component with_types_in wasip2);

async fn serve(request: IncomingRequest, response_out: ResponseOutparam) {
    let config = config();
    let config = config.as_ref().as_ref();
    let store = RedisStore::new(config.ok().and_then(|c| c.redis.clone()));
    // Read only if the request gets as far as choosing a backend; the core asks synchronously,
    // so this read blocks the instance, within the Redis timeout like every other call.
    let loader = store.clone();
    let health =
        Rc::new(HealthBook::shared(Box::new(move || match loader.call_blocking(&redis::health_load_command()) {
            Ok(reply) => redis::health_entries(reply),
            Err(e) => {
                log(&event("warn", "health_read_failed", &[("detail", e.0.into())]));
                Vec::new()
            }
        })));
    let gateway = Gateway::new(WasiHttp, store.clone(), WasiRuntime)
        .with_health(health.clone())
        .with_probes(RedisProbes(store.clone()));
    let response = gateway.handle(config, to_core_request(request)).await;
    let health = HealthWriter { store, config, health };
    // Before the head, and before each chunk of a stream committed before its backend answered
    // (which chooses that backend inside the body): a client that saw a 502 — or the stream's
    // first token — and sends its next request at once must find the failure recorded, as must
    // every other instance meanwhile. Only a request that changed some backend's health writes.
    health.record().await;
    respond(response_out, response, &health).await;
    // The client left a committed stream while its backends were being tried.
    health.record().await;
}

/// Writes what a request changed in backend health back to Redis.
struct HealthWriter<'a> {
    store: RedisStore,
    config: Result<&'a Config, &'a ConfigError>,
    health: Rc<HealthBook>,
}

impl HealthWriter<'_> {
    /// Writes what changed since the last write, in one atomic script; nothing when nothing did.
    async fn record(&self) {
        let events = self.health.take_journal();
        if let (false, Ok(config)) = (events.is_empty(), self.config) {
            let command = redis::health_record_command(&events, config.breaker);
            if let Err(e) = self.store.call(&command, InExecutor).await {
                log(&event("warn", "health_write_failed", &[("detail", e.0.into())]));
            }
        }
    }
}

thread_local! {
    /// The validated configuration of this instance: its environment does not change.
    static CONFIG: OnceCell<Rc<Result<Config, ConfigError>>> = const { OnceCell::new() };
}

/// Reads and validates the configuration once per instance, logging an error once.
fn config() -> Rc<Result<Config, ConfigError>> {
    CONFIG.with(|cell| {
        cell.get_or_init(|| {
            let env: HashMap<String, String> = wasip2::cli::environment::get_environment().into_iter().collect();
            // This build has no store of its own: Redis is required.
            let config = Config::from_lookup(&env).and_then(Config::require_redis);
            if let Err(e) = &config {
                log(&event("error", "config_error", &[("detail", e.0.clone().into())]));
            }
            Rc::new(config)
        })
        .clone()
    })
}

/// The header Spin sets to the client's address (`ip:port`), replacing any the client sent; the
/// core reads the address from it.
const CLIENT_ADDR_HEADER: &str = "spin-client-addr";

fn to_core_request(request: IncomingRequest) -> Request {
    let method = method_name(request.method());
    let path = request.path_with_query().unwrap_or_default();
    let path = path.split('?').next().unwrap_or_default().to_string();
    let mut headers = header_pairs(request.headers());
    let client_ip = headers.get(CLIENT_ADDR_HEADER).map(str::to_owned);
    headers.remove(CLIENT_ADDR_HEADER);
    let body: BodyStream = match IncomingStream::of_request(request) {
        Some(stream) => Box::pin(stream),
        None => Box::pin(futures::stream::empty()),
    };
    Request { method, path, headers, body, client_ip, disconnected: None }
}

/// Sends the head, then the body as the core produces it. A client that went away makes a write
/// fail: the core's stream is dropped, which drops the backend request.
async fn respond(response_out: ResponseOutparam, response: Response, health: &HealthWriter<'_>) {
    let mut headers = response.headers;
    if let Body::Full(bytes) = &response.body {
        headers.set("content-length", bytes.len().to_string());
    }
    let outgoing = OutgoingResponse::new(fields(&headers));
    // The core only produces valid statuses.
    let _ = outgoing.set_status_code(response.status);
    let Ok(body) = outgoing.body() else {
        ResponseOutparam::set(response_out, Err(ErrorCode::InternalError(None)));
        return;
    };
    ResponseOutparam::set(response_out, Ok(outgoing));
    let Ok(stream) = body.write() else { return };
    let sent = match response.body {
        Body::Full(bytes) => write_flushed(&stream, &bytes).await,
        Body::Stream(mut chunks) => loop {
            match chunks.next().await {
                None => break true,
                // Flushed chunk by chunk: an SSE event leaves as soon as the backend sent it.
                Some(Ok(chunk)) => {
                    health.record().await;
                    if !write_flushed(&stream, &chunk).await {
                        break false;
                    }
                }
                Some(Err(_)) => break false,
            }
        },
    };
    // The last flush completes before the body is finished.
    let sent = sent && writable(&stream).await.is_some();
    drop(stream);
    if sent {
        let _ = OutgoingBody::finish(body, None);
    }
    // Otherwise the body is dropped unfinished, which tells the host the response is incomplete.
}

/// Writes `bytes` and starts a flush. The flush completes while the caller waits for its next
/// bytes: only the next write waits for it (one wait per chunk, not one for the write and one for
/// the flush). `false` once the client has gone.
async fn write_flushed(stream: &OutputStream, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        let Some(permitted) = writable(stream).await else { return false };
        let (now, later) = bytes.split_at(usize::try_from(permitted).unwrap_or(usize::MAX).min(bytes.len()));
        if stream.write(now).is_err() {
            return false;
        }
        bytes = later;
    }
    stream.flush().is_ok()
}

/// How many bytes the stream takes now, waiting (for a flush, or room) until it takes some;
/// `None` once it is closed.
async fn writable(stream: &OutputStream) -> Option<u64> {
    loop {
        match stream.check_write() {
            Ok(0) => AsyncPollable::new(stream.subscribe()).wait_for().await,
            Ok(permitted) => return Some(permitted),
            Err(_) => return None,
        }
    }
}

/// Outbound HTTP through `wasi:http/outgoing-handler`.
#[derive(Clone, Copy)]
struct WasiHttp;

impl Upstream for WasiHttp {
    async fn send(&self, request: UpstreamRequest) -> Result<UpstreamResponse, ConnectError> {
        let refused = |what: &str| ConnectError::local(format!("the host refused the request's {what}"));
        let (scheme, authority, path) = split_url(&request.url).ok_or_else(|| refused("URL"))?;
        let outgoing = OutgoingRequest::new(fields(&request.headers));
        outgoing.set_method(&wasi_method(request.method)).map_err(|()| refused("method"))?;
        outgoing.set_scheme(Some(&scheme)).map_err(|()| refused("scheme"))?;
        outgoing.set_authority(Some(authority)).map_err(|()| refused("authority"))?;
        outgoing.set_path_with_query(Some(path)).map_err(|()| refused("path"))?;
        let body = outgoing.body().map_err(|()| refused("body"))?;
        let pending = wasip2::http::outgoing_handler::handle(outgoing, None)
            .map_err(|e| ConnectError::network(format!("{e:?}")))?;
        {
            let stream = AsyncOutputStream::new(body.write().map_err(|()| refused("body"))?);
            if let Some(bytes) = &request.body {
                stream.write_all(bytes).await.map_err(|e| ConnectError::network(e.to_string()))?;
            }
        }
        OutgoingBody::finish(body, None).map_err(|e| ConnectError::network(format!("{e:?}")))?;
        AsyncPollable::new(pending.subscribe()).wait_for().await;
        let response = match pending.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(code))) => return Err(ConnectError::network(format!("{code:?}"))),
            Some(Err(())) | None => return Err(ConnectError::network("no response from the host")),
        };
        let status = response.status();
        let headers = header_pairs(response.headers());
        let body = IncomingStream::of_response(response).ok_or_else(|| ConnectError::network("no response body"))?;
        Ok(UpstreamResponse { status, headers, body: Box::pin(body) })
    }

    fn relay<R: Runtime + 'static>(&self, pipe: Pipe, body: BodyStream, _runtime: R) -> BodyStream {
        let pump = Pump { pipe, body, started: false, over: false, timer: None };
        Box::pin(futures::stream::unfold(pump, Pump::next))
    }
}

/// A committed stream, pumped here rather than by the core's own pump: each chunk is handed to
/// the relay's pipe by reference and goes on as it came, and one timer serves the relay's idle and
/// total deadlines, re-armed only when it fires (the core's pump makes a timer per chunk, which in
/// a WASI host is a resource, a registration and a drop per chunk).
struct Pump {
    pipe: Pipe,
    body: BodyStream,
    started: bool,
    over: bool,
    timer: Option<Pin<Box<WaitFor>>>,
}

type Item = Result<Vec<u8>, BodyError>;

impl Pump {
    async fn next(mut self) -> Option<(Item, Pump)> {
        if self.over {
            return None;
        }
        if !self.started {
            self.started = true;
            let first = self.pipe.first();
            if let Some(out) = self.emit(first, Vec::new()) {
                return Some((Ok(out), self));
            }
        }
        while !self.over {
            let since = WasiRuntime.now_ms();
            let (verdict, chunk) = futures::future::poll_fn(|cx| self.step(cx, since)).await;
            if let Some(out) = self.emit(verdict, chunk) {
                return Some((Ok(out), self));
            }
        }
        None
    }

    /// The backend's next chunk (or end, or failure), or the timer running out.
    fn step(&mut self, cx: &mut Context<'_>, since: u64) -> Poll<(Verdict, Vec<u8>)> {
        match self.body.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => return Poll::Ready((self.pipe.chunk(&chunk), chunk)),
            Poll::Ready(Some(Err(_))) => return Poll::Ready((self.pipe.failed(), Vec::new())),
            Poll::Ready(None) => return Poll::Ready((self.pipe.closed(), Vec::new())),
            Poll::Pending => {}
        }
        loop {
            let timer = match self.timer.as_mut() {
                Some(timer) => timer,
                None => match self.pipe.tick(WasiRuntime.now_ms(), Some(since)) {
                    Ok(ms) => {
                        let pollable =
                            AsyncPollable::new(monotonic_clock::subscribe_duration(ms.saturating_mul(1_000_000)));
                        self.timer.insert(Box::pin(pollable.wait_for()))
                    }
                    Err(verdict) => return Poll::Ready((verdict, Vec::new())),
                },
            };
            match timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                // Fired: `tick` says whether time is up, or how long is left since `since`.
                Poll::Ready(()) => self.timer = None,
            }
        }
    }

    /// What to write for `verdict` about `chunk` (`None`: read on, or the end).
    fn emit(&mut self, verdict: Verdict, chunk: Vec<u8>) -> Option<Vec<u8>> {
        let out = match verdict {
            Verdict::AsIs => chunk,
            Verdict::Send(out) => out,
            Verdict::End(out) => {
                self.over = true;
                self.timer = None;
                out
            }
        };
        (!out.is_empty()).then_some(out)
    }
}

/// `scheme://authority/path?query` → its parts (the path defaults to `/`).
fn split_url(url: &str) -> Option<(Scheme, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_string()),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) => rest.split_at(at),
        None => (rest, "/"),
    };
    Some((scheme, authority, if path.is_empty() { "/" } else { path }))
}

fn wasi_method(method: &str) -> Method {
    match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "OPTIONS" => Method::Options,
        "PATCH" => Method::Patch,
        other => Method::Other(other.to_string()),
    }
}

fn method_name(method: Method) -> String {
    match method {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(other) => other,
    }
}

/// Every header, its bytes read as Latin-1 as workerd does: a value that is not ASCII reaches the
/// core as something it refuses (an unreadable credential is a 401), never as nothing.
fn header_pairs(fields: Fields) -> Headers {
    fields.entries().into_iter().map(|(name, value)| (name, value.iter().map(|b| char::from(*b)).collect())).collect()
}

/// The core's headers as WASI fields; a field the host forbids (`connection`, `host`, …) is left
/// out rather than failing the whole message.
fn fields(headers: &Headers) -> Fields {
    let fields = Fields::new();
    for (name, value) in headers.iter() {
        let _ = fields.append(name, value.as_bytes());
    }
    fields
}

/// The most bytes taken from an incoming body at once.
const MAX_CHUNK_BYTES: u64 = 64 * 1024;

/// An incoming body — the client's request or a backend's response — as a core body stream,
/// chunks as they arrive. It owns the WASI resources in the order they must be dropped (a child
/// before its parent): the readiness subscription, the stream, the body, what the body came from.
struct IncomingStream<P> {
    waiting: Option<Pin<Box<WaitFor>>>,
    subscription: Option<AsyncPollable>,
    stream: InputStream,
    _body: IncomingBody,
    _parent: P,
}

impl IncomingStream<IncomingRequest> {
    fn of_request(request: IncomingRequest) -> Option<Self> {
        let body = request.consume().ok()?;
        let stream = body.stream().ok()?;
        Some(IncomingStream { waiting: None, subscription: None, stream, _body: body, _parent: request })
    }
}

impl IncomingStream<IncomingResponse> {
    fn of_response(response: IncomingResponse) -> Option<Self> {
        let body = response.consume().ok()?;
        let stream = body.stream().ok()?;
        Some(IncomingStream { waiting: None, subscription: None, stream, _body: body, _parent: response })
    }
}

impl<P: Unpin> Stream for IncomingStream<P> {
    type Item = Result<Vec<u8>, BodyError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            // `Some(next)` when there is something to return: a chunk, an error, or the end.
            let next = match this.stream.read(MAX_CHUNK_BYTES) {
                Ok(bytes) if bytes.is_empty() => None,
                Ok(bytes) => Some(Some(Ok(bytes))),
                Err(StreamError::Closed) => Some(None),
                Err(StreamError::LastOperationFailed(e)) => Some(Some(Err(BodyError(e.to_debug_string())))),
            };
            if let Some(next) = next {
                // No wait stays registered while nobody waits: the executor would find its
                // pollable ready on every turn and spin until the stream is dropped.
                this.waiting = None;
                return Poll::Ready(next);
            }
            let stream = &this.stream;
            let subscription = this.subscription.get_or_insert_with(|| AsyncPollable::new(stream.subscribe()));
            let waiting = this.waiting.get_or_insert_with(|| Box::pin(subscription.wait_for()));
            match waiting.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                // Readiness may still yield no bytes: read again, and wait again if so.
                Poll::Ready(()) => this.waiting = None,
            }
        }
    }
}

/// `/readyz`'s last probe round, shared by every instance through Redis: one instance claims each
/// round (`SET NX`), the others use the stored one. Redis unreachable: every instance probes.
struct RedisProbes(RedisStore);

impl ProbeCache for RedisProbes {
    async fn last_round(&self) -> Option<ProbeRound> {
        self.0.call(&redis::probe_round_command(), InExecutor).await.ok().and_then(redis::probe_round)
    }

    async fn claim(&self, _now_ms: u64, hold_ms: u64) -> bool {
        match self.0.call(&redis::probe_claim_command(hold_ms), InExecutor).await {
            Ok(reply) => redis::probe_claimed(&reply),
            Err(_) => true,
        }
    }

    async fn store(&self, round: &ProbeRound) {
        // The claim is let go even if the round could not be stored (unless Redis stalled: the
        // claim then expires with its hold), so other instances probe rather than wait.
        for command in redis::probe_store_commands(round) {
            let _ = self.0.call(&command, InExecutor).await;
        }
    }
}

/// Limit state and backend health in Redis over `wasi:sockets`: a connection per request
/// (opened on first use, reused for the request's later commands while it is fresh), one
/// atomic `EVAL` per admission or settlement.
///
/// Every call — resolving, connecting, logging in, writing, reading the reply — must finish
/// within the target's `timeout_ms`, or it fails as an unreachable Redis would (the core then
/// fails closed, or open when configured). A call that ran out of time marks Redis as stalled
/// for the rest of the request's answer, so a client waits out the timeout once, not once per
/// call; the settlement, which frees the caller's slot after the answer, still tries on a
/// connection of its own.
///
/// A connection idle for [`REUSE_IDLE_NS`] is not reused: the settlement at the end of a long
/// stream would otherwise go out on a connection Redis (`timeout`) or a proxy on the way may
/// have closed minutes before, and fail, leaving the slot taken until its lease expires.
///
/// Nothing is pooled across requests: Spin and `wasmtime serve` give each its own instance.
#[derive(Clone)]
struct RedisStore {
    target: Option<Rc<RedisTarget>>,
    link: Rc<RefCell<Link>>,
}

enum Link {
    /// No connection yet, or the last one failed and was dropped.
    Idle,
    /// A connection and when its last reply came (monotonic-clock nanoseconds).
    Open(Connection, u64),
    /// A call ran out of time: later calls fail at once with this message.
    Stalled(String),
}

struct Connection {
    // Children first: the streams are the socket's.
    input: InputStream,
    output: OutputStream,
    _socket: TcpSocket,
    replies: ReplyReader,
}

impl Connection {
    /// Whether Redis still holds it open with nothing unasked for: bytes left over from the last
    /// reply, or a read that does not wait finding the peer's close (or bytes nobody asked for),
    /// rule it out before a command is sent on it.
    fn is_open(&self) -> bool {
        self.replies.is_empty() && matches!(self.input.read(1), Ok(bytes) if bytes.is_empty())
    }

    /// The connection failed with `e`: why, in Redis's own words when it said why before closing
    /// (`max number of clients reached`, `DENIED`) — in a reply already read, or one still waiting.
    fn failed(&mut self, e: StreamError, replies: &[Reply]) -> Failure {
        if let Ok(bytes) = self.input.read(16 * 1024) {
            self.replies.feed(&bytes);
        }
        let mut waiting = Vec::new();
        while let Ok(Some(reply)) = self.replies.next_reply() {
            waiting.push(reply);
        }
        let said = replies.iter().chain(&waiting).find_map(|r| if let Reply::Error(e) = r { Some(e) } else { None });
        match (said, e) {
            (Some(said), _) => Failure::Io(format!("Redis closed the connection: {}", redis::login_refusal(said))),
            (None, StreamError::Closed) => Failure::Io("Redis closed the connection".into()),
            (None, StreamError::LastOperationFailed(e)) => Failure::Io(e.to_debug_string()),
        }
    }
}

/// How long a connection may sit unused and still be reused: under Redis's smallest idle
/// `timeout` (one second), far under any proxy's.
const REUSE_IDLE_NS: u64 = 900_000_000;

/// Whether a call may go out after an earlier one in the request ran out of time.
#[derive(Clone, Copy, PartialEq)]
enum AfterStall {
    /// Fail at once: the client is waiting, and has waited out the timeout already.
    Fail,
    /// Try once more on a connection of its own: nobody waits on it, and what it does (releasing a
    /// slot) matters for the caller's next requests.
    TryAgain,
}

/// Why a Redis call failed.
enum Failure {
    TimedOut,
    Io(String),
    /// Redis answered the login with an error (`WRONGPASS`, `NOAUTH`, …).
    LoginRefused(String),
}

impl RedisStore {
    fn new(target: Option<RedisTarget>) -> Self {
        RedisStore { target: target.map(Rc::new), link: Rc::new(RefCell::new(Link::Idle)) }
    }

    /// Sends `command` and returns Redis's reply to it, within the timeout.
    async fn call(&self, command: &[u8], wait: impl Wait) -> Result<Reply, StoreError> {
        self.call_after_stall(command, wait, AfterStall::Fail).await
    }

    async fn call_after_stall(&self, command: &[u8], wait: impl Wait, after: AfterStall) -> Result<Reply, StoreError> {
        let target = self.target.as_deref().ok_or_else(|| StoreError("no Redis configured".into()))?;
        let now = monotonic_clock::now();
        // Taken out for the call: a concurrent call (a settlement beside the health write) opens
        // a connection of its own rather than sharing one mid-reply.
        let taken = std::mem::replace(&mut *self.link.borrow_mut(), Link::Idle);
        let connection = match taken {
            Link::Stalled(e) => {
                *self.link.borrow_mut() = Link::Stalled(e.clone());
                if after == AfterStall::Fail {
                    return Err(StoreError(e));
                }
                None
            }
            // Closed under us since its last use (`CLIENT KILL`, a failover, a proxy restarting):
            // found out before anything is sent on it, so nothing can run twice.
            Link::Open(connection, used) if now.saturating_sub(used) < REUSE_IDLE_NS && connection.is_open() => {
                Some(connection)
            }
            Link::Open(..) | Link::Idle => None,
        };
        let deadline = now.saturating_add(target.timeout_ms.saturating_mul(1_000_000));
        match exchange(target, connection, command, deadline, &wait).await {
            Ok((reply, connection)) => {
                let mut link = self.link.borrow_mut();
                if let Link::Idle = *link {
                    *link = Link::Open(connection, monotonic_clock::now());
                }
                Ok(reply)
            }
            Err(Failure::TimedOut) => {
                let e = format!("Redis at {target:?} did not answer within {} ms", target.timeout_ms);
                *self.link.borrow_mut() = Link::Stalled(e.clone());
                Err(StoreError(e))
            }
            Err(Failure::Io(e)) => Err(StoreError(format!("Redis at {target:?}: {e}"))),
            Err(Failure::LoginRefused(e)) => Err(StoreError(format!("Redis at {target:?} refused the login: {e}"))),
        }
    }

    /// [`Self::call`] for the core's synchronous passive-health loader: it blocks the instance
    /// (never past the timeout) instead of yielding to the executor.
    fn call_blocking(&self, command: &[u8]) -> Result<Reply, StoreError> {
        let mut call = pin!(self.call(command, Blocking));
        match call.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(result) => result,
            // Cannot happen: a `Blocking` wait never leaves the future pending.
            Poll::Pending => Err(StoreError("Redis call did not complete".into())),
        }
    }
}

impl LimitStore for RedisStore {
    async fn admit(&self, scope: &str, admission: &Admission) -> Result<Admitted, StoreError> {
        redis::admitted(self.call(&redis::admit_command(scope, admission), InExecutor).await?, admission)
    }

    /// Nobody waits on a settlement, and a lost one keeps the caller's slot until its lease
    /// expires: a Redis that refused it for now (a long script, a restart loading its data, a
    /// failover) is asked again, twice, a second and then two later, each time on a new connection.
    async fn settle(&self, scope: &str, settlement: &Settlement) -> Result<(), StoreError> {
        let command = redis::settle_command(scope, settlement);
        let mut reply = self.call_after_stall(&command, InExecutor, AfterStall::TryAgain).await?;
        for later_ms in [1_000, 2_000] {
            if !redis::refused_for_now(&reply) {
                break;
            }
            // Past REUSE_IDLE_NS: a new connection, which may reach the new primary.
            WasiRuntime.sleep(later_ms).await;
            reply = self.call_after_stall(&command, InExecutor, AfterStall::TryAgain).await?;
        }
        redis::settled(reply)
    }
}

/// How a Redis call waits for its socket: until `pollable` is ready, or fails at `deadline`
/// (monotonic-clock nanoseconds).
trait Wait {
    fn ready(&self, pollable: Pollable, deadline: u64) -> impl Future<Output = Result<(), Failure>>;
}

/// Waits in the executor, beside the request's other work (a stream being relayed).
struct InExecutor;

impl Wait for InExecutor {
    async fn ready(&self, pollable: Pollable, deadline: u64) -> Result<(), Failure> {
        // A peer trickling bytes keeps its socket ready: the deadline still holds.
        if monotonic_clock::now() >= deadline {
            return Err(Failure::TimedOut);
        }
        let ready = AsyncPollable::new(pollable);
        let timer = AsyncPollable::new(monotonic_clock::subscribe_instant(deadline));
        match select(pin!(ready.wait_for()), pin!(timer.wait_for())).await {
            Either::Left(_) => Ok(()),
            Either::Right(_) => Err(Failure::TimedOut),
        }
    }
}

/// Blocks the whole instance in one `wasi:io/poll` call on the socket and the deadline.
struct Blocking;

impl Wait for Blocking {
    async fn ready(&self, pollable: Pollable, deadline: u64) -> Result<(), Failure> {
        if monotonic_clock::now() >= deadline {
            return Err(Failure::TimedOut);
        }
        let timer = monotonic_clock::subscribe_instant(deadline);
        let ready = wasip2::io::poll::poll(&[&pollable, &timer]);
        if ready.contains(&0) {
            Ok(())
        } else {
            Err(Failure::TimedOut)
        }
    }
}

/// One command on `connection`, or on a new one, logged in: the login (`AUTH`, `SELECT`) goes out
/// in the same write as the command, so a command sent while Redis is stalled is in its socket
/// when it resumes, and runs then, rather than waiting behind a login reply that never came.
/// A refused login is reported as such, though the command may have run: a refused `AUTH` leaves
/// a Redis whose default user needs no password logged in as that user, and after a refused
/// `SELECT` the command ran in database 0 (both misconfigurations, which fail the call).
async fn exchange(
    target: &RedisTarget,
    connection: Option<Connection>,
    command: &[u8],
    deadline: u64,
    wait: &impl Wait,
) -> Result<(Reply, Connection), Failure> {
    let (mut connection, logins) = match connection {
        Some(connection) => (connection, Vec::new()),
        None => (connect(target, deadline, wait).await?, redis::handshake(target)),
    };
    let mut commands: Vec<&[u8]> = logins.iter().map(Vec::as_slice).collect();
    commands.push(command);
    let mut replies = request(&mut connection, &commands, deadline, wait).await?;
    let reply = replies.pop().ok_or_else(|| Failure::Io("no reply".into()))?;
    if let Some(Reply::Error(e)) = replies.into_iter().find(|r| matches!(r, Reply::Error(_))) {
        return Err(Failure::LoginRefused(redis::login_refusal(&e)));
    }
    Ok((reply, connection))
}

/// Writes `commands` and reads a reply to each.
async fn request(
    connection: &mut Connection,
    commands: &[&[u8]],
    deadline: u64,
    wait: &impl Wait,
) -> Result<Vec<Reply>, Failure> {
    for command in commands {
        let mut rest = *command;
        while !rest.is_empty() {
            match connection.output.check_write() {
                Err(e) => return Err(connection.failed(e, &[])),
                Ok(0) => wait.ready(connection.output.subscribe(), deadline).await?,
                Ok(permitted) => {
                    let (now, later) = rest.split_at(usize::try_from(permitted).unwrap_or(usize::MAX).min(rest.len()));
                    if let Err(e) = connection.output.write(now) {
                        return Err(connection.failed(e, &[]));
                    }
                    rest = later;
                }
            }
        }
    }
    if let Err(e) = connection.output.flush() {
        return Err(connection.failed(e, &[]));
    }
    let mut replies = Vec::with_capacity(commands.len());
    while replies.len() < commands.len() {
        if let Some(reply) = connection.replies.next_reply().map_err(|e| Failure::Io(e.0))? {
            replies.push(reply);
            continue;
        }
        let bytes = match connection.input.read(16 * 1024) {
            Ok(bytes) => bytes,
            Err(e) => return Err(connection.failed(e, &replies)),
        };
        if bytes.is_empty() {
            wait.ready(connection.input.subscribe(), deadline).await?;
        } else {
            connection.replies.feed(&bytes);
        }
    }
    Ok(replies)
}

/// Resolves the target (unless it is an IP address) and connects to its first address that
/// answers.
async fn connect(target: &RedisTarget, deadline: u64, wait: &impl Wait) -> Result<Connection, Failure> {
    let network = wasip2::sockets::instance_network::instance_network();
    let addresses = match target.host.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![wasi_ip(ip)],
        Err(_) => resolve(&network, &target.host, deadline, wait).await?,
    };
    let mut last = Failure::Io(format!("{} resolved to no address", target.host));
    for address in addresses {
        match connect_to(&network, address, target.port, deadline, wait).await {
            Ok(connection) => return Ok(connection),
            Err(Failure::TimedOut) => return Err(Failure::TimedOut),
            Err(e) => last = e,
        }
    }
    Err(last)
}

async fn resolve(network: &Network, host: &str, deadline: u64, wait: &impl Wait) -> Result<Vec<IpAddress>, Failure> {
    let addresses = wasip2::sockets::ip_name_lookup::resolve_addresses(network, host).map_err(socket_failed)?;
    let mut out = Vec::new();
    loop {
        match addresses.resolve_next_address() {
            Ok(Some(address)) => out.push(address),
            Ok(None) => return Ok(out),
            Err(SocketError::WouldBlock) => wait.ready(addresses.subscribe(), deadline).await?,
            Err(e) => return Err(socket_failed(e)),
        }
    }
}

async fn connect_to(
    network: &Network,
    address: IpAddress,
    port: u16,
    deadline: u64,
    wait: &impl Wait,
) -> Result<Connection, Failure> {
    let (family, remote) = match address {
        IpAddress::Ipv4(address) => (IpAddressFamily::Ipv4, IpSocketAddress::Ipv4(Ipv4SocketAddress { port, address })),
        IpAddress::Ipv6(address) => (
            IpAddressFamily::Ipv6,
            IpSocketAddress::Ipv6(Ipv6SocketAddress { port, flow_info: 0, address, scope_id: 0 }),
        ),
    };
    let socket = wasip2::sockets::tcp_create_socket::create_tcp_socket(family).map_err(socket_failed)?;
    socket.start_connect(network, remote).map_err(socket_failed)?;
    loop {
        match socket.finish_connect() {
            Ok((input, output)) => {
                return Ok(Connection { input, output, _socket: socket, replies: ReplyReader::default() })
            }
            Err(SocketError::WouldBlock) => wait.ready(socket.subscribe(), deadline).await?,
            Err(e) => return Err(socket_failed(e)),
        }
    }
}

fn wasi_ip(ip: std::net::IpAddr) -> IpAddress {
    match ip {
        std::net::IpAddr::V4(ip) => {
            let [a, b, c, d] = ip.octets();
            IpAddress::Ipv4((a, b, c, d))
        }
        std::net::IpAddr::V6(ip) => {
            let [a, b, c, d, e, f, g, h] = ip.segments();
            IpAddress::Ipv6((a, b, c, d, e, f, g, h))
        }
    }
}

fn socket_failed(e: SocketError) -> Failure {
    match e {
        SocketError::Timeout => Failure::TimedOut,
        other => Failure::Io(format!("{other:?}")),
    }
}

/// Time, randomness and logs from WASI.
#[derive(Clone, Copy)]
struct WasiRuntime;

impl Runtime for WasiRuntime {
    fn now_ms(&self) -> u64 {
        let now = wasip2::clocks::wall_clock::now();
        now.seconds.saturating_mul(1000).saturating_add(u64::from(now.nanoseconds / 1_000_000))
    }

    /// The timer is made on first poll (which follows at once): a timeout whose future is ready
    /// then never makes one.
    async fn sleep(&self, ms: u64) {
        AsyncPollable::new(monotonic_clock::subscribe_duration(ms.saturating_mul(1_000_000))).wait_for().await
    }

    fn fill_random(&self, buf: &mut [u8]) {
        let bytes = wasip2::random::random::get_random_bytes(buf.len() as u64);
        for (out, byte) in buf.iter_mut().zip(bytes) {
            *out = byte;
        }
    }

    fn log(&self, line: &str) {
        log(line);
    }

    fn spawn(&self, task: Pin<Box<dyn Future<Output = ()>>>) {
        // `block_on` in `handle` runs detached tasks to completion before it returns.
        wstd::runtime::spawn(task).detach();
    }
}

/// Writes one line to stdout (the host's log); a failed write is dropped, never a panic.
fn log(line: &str) {
    let stdout = wasip2::cli::stdout::get_stdout();
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    // One blocking write takes at most 4096 bytes.
    for chunk in bytes.chunks(4096) {
        if stdout.blocking_write_and_flush(chunk).is_err() {
            break;
        }
    }
}
