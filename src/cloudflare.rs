//! Cloudflare Workers adapter: translates between workerd and the core, and implements its traits.
//!
//! The entry point is JavaScript (`src/workers/entry.js`, bundled by `make worker`), so that a
//! request crosses into wasm a handful of times: [`handle`] takes the request's headers as one
//! string and a small body as one buffer and returns one [`Reply`]; the backend is called through
//! one JavaScript function that returns its head and, for a small answer, its body
//! (`src/workers/platform.js`); and a committed stream never passes through a Rust future: the
//! JavaScript pumps the backend's bytes and hands each chunk to the core's relay through
//! [`Relay::chunk`], one synchronous call.
//!
//! - [`Upstream`] with the Workers `fetch`, aborted when the core lets go of it (timeouts, the
//!   client gone, the stream's end);
//! - [`LimitStore`] with one [`RateLimiter`] Durable Object per scope: a Durable Object runs one
//!   event at a time and blocks new events while it awaits its storage, so check-and-take is
//!   atomic and exact across every isolate of the fleet;
//! - [`Runtime`] with `Date.now`, one `setTimeout` per request for all its sleeps,
//!   `crypto.getRandomValues`, `console.log` and `waitUntil`;
//! - the client's address from `CF-Connecting-IP`, which Cloudflare sets (never the client);
//! - configuration from `[vars]`, `--var`/`.dev.vars` and secrets, validated once per isolate.
//!
//! No business rule lives here: if this file grows an `if` about the API, it belongs in the core.

use crate::core::config::{Config, ConfigError};
use crate::core::http::{body_from_chunks, Body, BodyError, BodyStream, Disconnected, Headers, Request, Response};
use crate::core::rate_limit::gcra::{Admission, Admitted, BucketSet, Settlement};
use crate::core::rate_limit::store::{LimitStore, StoreCall, StoreError};
use crate::core::runtime::Runtime;
use crate::core::upstream::balance::HealthBook;
use crate::core::upstream::readiness::MemoryProbeCache;
use crate::core::upstream::relay::{self, Pipe, Verdict};
use crate::core::upstream::{ConnectError, Upstream, UpstreamRequest, UpstreamResponse};
use crate::core::Gateway;
use futures::stream::{Stream, TryStreamExt};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use worker::js_sys::{Date, Promise, Uint8Array};
use worker::wasm_bindgen_futures::{future_to_promise, JsFuture};
use worker::web_sys::{AbortController, ReadableStream, ReadableStreamDefaultReader};
use worker::{durable_object, DurableObject, Env, Method, RequestInit, ResponseBuilder, State};

/// The Durable Object binding (see `wrangler.toml`).
const LIMITER_BINDING: &str = "RATE_LIMITER";
/// The storage key under which a [`RateLimiter`] keeps its buckets.
const BUCKETS_KEY: &str = "buckets";
/// The header Cloudflare's edge sets to the client's address, replacing any the client sent.
const CLIENT_IP_HEADER: &str = "cf-connecting-ip";
/// Bodies of known length up to this size are read in one call rather than through a stream
/// reader; anything larger or of unknown length streams (so a body over the cap is refused
/// without being buffered).
const WHOLE_BODY_MAX_BYTES: u64 = 1 << 20;

#[wasm_bindgen(module = "/src/workers/platform.js")]
extern "C" {
    /// A backend's answer: its head, and its body whole or as a reader.
    type Fetched;
    #[wasm_bindgen(method, getter)]
    fn status(this: &Fetched) -> u16;
    #[wasm_bindgen(method, getter)]
    fn headers(this: &Fetched) -> String;
    /// The whole body, when it was small and not an event stream.
    #[wasm_bindgen(method, getter)]
    fn body(this: &Fetched) -> Option<Vec<u8>>;
    /// The body's reader otherwise.
    #[wasm_bindgen(method, getter)]
    fn reader(this: &Fetched) -> Option<ReadableStreamDefaultReader>;

    /// Sends a backend request; resolves to a [`Fetched`].
    #[wasm_bindgen(js_name = upstreamFetch)]
    fn upstream_fetch(
        controller: &AbortController,
        url: &str,
        method: &str,
        headers: &str,
        body: Option<&[u8]>,
        whole_max: f64,
    ) -> Promise;

    /// Resolves to the body's next chunk (a `Uint8Array`), or `undefined` at its end.
    #[wasm_bindgen(js_name = readChunk)]
    fn read_chunk(reader: &ReadableStreamDefaultReader) -> Promise;
}

#[wasm_bindgen]
extern "C" {
    /// One request's side of the platform (`Host` in `src/workers/entry.js`).
    pub type Host;
    /// (Re)arms the request's one timer to call [`Req::tick`] in `ms`.
    #[wasm_bindgen(method)]
    fn arm(this: &Host, ms: f64);
    #[wasm_bindgen(method)]
    fn disarm(this: &Host);
    #[wasm_bindgen(method, js_name = waitUntil)]
    fn wait_until(this: &Host, promise: &Promise);

    #[wasm_bindgen(js_namespace = crypto, js_name = getRandomValues, catch)]
    fn get_random_values(buf: &mut [u8]) -> Result<(), JsValue>;
    #[wasm_bindgen(js_namespace = console, js_name = log)]
    fn console_log(line: &str);
}

thread_local! {
    /// The validated configuration of this isolate; vars and secrets do not change within one.
    static CONFIG: RefCell<Option<Rc<Result<Config, ConfigError>>>> = const { RefCell::new(None) };
    /// Passive backend health as this isolate has seen it (each isolate keeps its own view, as
    /// each proxy does in outlier detection).
    static HEALTH: Rc<HealthBook> = Rc::new(HealthBook::default());
    /// This isolate's last `/readyz` probe round (probes are shared per isolate, as health is).
    static PROBES: Rc<MemoryProbeCache> = Rc::default();
}

/// Bodies of known length up to this many bytes are read in one call by the entry point: the
/// smaller of 1 MiB and the body cap (0 while the configuration is broken: every request fails).
#[wasm_bindgen(js_name = wholeBodyMax)]
pub fn whole_body_max(env: &Env) -> f64 {
    match config(env).as_ref() {
        Ok(config) => WHOLE_BODY_MAX_BYTES.min(config.caps.max_body_bytes as u64) as f64,
        Err(_) => 0.0,
    }
}

/// Answers one request: resolves to a [`Reply`]. `headers` is `name\nvalue\n` lines; `body` the
/// whole body when small, else `stream`.
#[wasm_bindgen]
pub fn handle(
    method: String,
    path: String,
    headers: String,
    body: Option<Vec<u8>>,
    stream: Option<ReadableStream>,
    req: &Req,
    env: Env,
) -> Promise {
    let req = req.0.clone();
    future_to_promise(async move {
        let config = config(&env);
        let request = to_core_request(method, path, headers, body, stream, &req);
        let runtime = WorkersRuntime(req);
        let upstream = WorkersFetch { runtime: runtime.clone(), last_reader: RefCell::default(), piped: Rc::default() };
        let piped = upstream.piped.clone();
        let gateway = Gateway::new(upstream, DurableLimitStore { env }, runtime)
            .with_health(HEALTH.with(Rc::clone))
            .with_probes(PROBES.with(Rc::clone));
        let response = gateway.handle(config.as_ref().as_ref(), request).await;
        Ok(Reply::of(response, &piped).into())
    })
}

fn config(env: &Env) -> Rc<Result<Config, ConfigError>> {
    CONFIG.with(|cell| {
        let mut cell = cell.borrow_mut();
        if let Some(config) = cell.as_ref() {
            return config.clone();
        }
        let lookup = |name: &str| lookup_var(env, name);
        let config = Rc::new(Config::from_lookup(&lookup));
        if let Err(e) = config.as_ref() {
            console_log(&crate::core::log::event("error", "config_error", &[("detail", e.0.clone().into())]));
        }
        *cell = Some(config.clone());
        config
    })
}

/// A string var or secret; a JSON-valued `[vars]` table is accepted as its JSON text.
fn lookup_var(env: &Env, name: &str) -> Option<String> {
    if let Ok(v) = env.var(name) {
        return Some(v.to_string());
    }
    if let Ok(v) = env.secret(name) {
        return Some(v.to_string());
    }
    env.object_var::<serde_json::Value>(name).ok().map(|v| v.to_string())
}

fn to_core_request(
    method: String,
    path: String,
    headers: String,
    body: Option<Vec<u8>>,
    stream: Option<ReadableStream>,
    req: &Rc<ReqState>,
) -> Request {
    let headers = Headers::from_lines(&headers);
    let client_ip = headers.get(CLIENT_IP_HEADER).map(str::to_owned);
    let body: BodyStream = match (body, stream) {
        (Some(body), _) => body_from_chunks(if body.is_empty() { vec![] } else { vec![body] }),
        (None, Some(stream)) => Box::pin(JsBody::new(stream.get_reader().unchecked_into(), None)),
        (None, None) => body_from_chunks(vec![]),
    };
    let disconnected: Disconnected = Box::pin(Gone(req.clone()));
    Request { method, path, headers, body, client_ip, disconnected: Some(disconnected) }
}

/// What [`handle`] gives back to the entry point: a whole answer, a relay to pump, or (any other
/// streamed body) a finished `Response`.
#[wasm_bindgen]
pub struct Reply {
    status: u16,
    headers: String,
    body: Vec<u8>,
    relay: Option<Relay>,
    reader: Option<ReadableStreamDefaultReader>,
    response: Option<worker::web_sys::Response>,
}

#[wasm_bindgen]
impl Reply {
    #[wasm_bindgen(getter)]
    pub fn status(&self) -> u16 {
        self.status
    }

    /// 0: [`Reply::body`] is the answer; 1: pump [`Reply::relay`] from [`Reply::reader`];
    /// 2: [`Reply::response`] is the answer.
    #[wasm_bindgen(getter)]
    pub fn kind(&self) -> u8 {
        match (&self.relay, &self.response) {
            (Some(_), _) => 1,
            (None, Some(_)) => 2,
            (None, None) => 0,
        }
    }

    /// The headers as `name\nvalue\n` lines (taken).
    pub fn headers(&mut self) -> String {
        std::mem::take(&mut self.headers)
    }

    /// The whole body (taken).
    pub fn body(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.body)
    }

    pub fn relay(&mut self) -> Option<Relay> {
        self.relay.take()
    }

    /// The backend body's reader, which the relay's pump reads on from.
    pub fn reader(&mut self) -> Option<ReadableStreamDefaultReader> {
        self.reader.take()
    }

    pub fn response(&mut self) -> Option<worker::web_sys::Response> {
        self.response.take()
    }
}

impl Reply {
    fn of(response: Response, piped: &Rc<RefCell<Option<Piped>>>) -> Reply {
        let Response { status, headers, body } = response;
        // A header no platform accepts (a line break) fails the request, as appending it would.
        let Some(headers) = headers.to_lines() else {
            return Reply::whole(500, "content-type\napplication/json\n".into(), b"{}".to_vec());
        };
        match body {
            Body::Full(bytes) => Reply::whole(status, headers, bytes),
            Body::Stream(stream) => match piped.borrow_mut().take() {
                // The core's relay, for the entry point to pump; `stream` is only its stand-in.
                Some(Piped { pipe, reader }) => Reply {
                    status,
                    headers,
                    body: Vec::new(),
                    relay: Some(Relay { pipe, out: Vec::new() }),
                    reader: Some(reader),
                    response: None,
                },
                None => {
                    let response = streamed_response(status, &headers, stream);
                    Reply { status, headers: String::new(), body: Vec::new(), relay: None, reader: None, response }
                }
            },
        }
    }

    fn whole(status: u16, headers: String, body: Vec<u8>) -> Reply {
        Reply { status, headers, body, relay: None, reader: None, response: None }
    }
}

/// A streamed body the core pumps itself, pulled through wasm (nothing the gateway sends today:
/// its streams are relays).
fn streamed_response(status: u16, headers: &str, body: BodyStream) -> Option<worker::web_sys::Response> {
    let out = worker::Headers::new();
    for (name, value) in Headers::from_lines(headers).iter() {
        out.append(name, value).ok()?;
    }
    let response = ResponseBuilder::new()
        .with_status(status)
        .with_headers(out)
        .from_stream(body.map_err(|e| worker::Error::RustError(e.0)))
        .ok()?;
    Some(response.into())
}

/// What a [`Relay`] call says (`entry.js` has the same numbers): forward the bytes of
/// [`Relay::take`]; end the stream (after them); forward the chunk just given as it came. 0 is
/// "nothing yet".
const SEND: u8 = 1;
const END: u8 = 2;
const AS_IS: u8 = 4;

/// A committed stream's relay, driven chunk by chunk by the entry point's pump: each call
/// returns [`SEND`] and/or [`END`], [`AS_IS`], or 0.
#[wasm_bindgen]
pub struct Relay {
    pipe: Pipe,
    /// The bytes of the last `SEND`.
    out: Vec<u8>,
}

#[wasm_bindgen]
impl Relay {
    /// What the first events gave.
    pub fn first(&mut self) -> u8 {
        let verdict = self.pipe.first();
        self.code(verdict)
    }

    /// The backend's next chunk.
    pub fn chunk(&mut self, chunk: &[u8]) -> u8 {
        let verdict = self.pipe.chunk(chunk);
        self.code(verdict)
    }

    /// The backend ended its body.
    pub fn closed(&mut self) -> u8 {
        let verdict = self.pipe.closed();
        self.code(verdict)
    }

    /// Reading the backend failed (or the core let go of it).
    pub fn failed(&mut self) -> u8 {
        let verdict = self.pipe.failed();
        self.code(verdict)
    }

    /// The pump's timer fired at `now` (ms); `waiting_since` is when it began waiting on the
    /// backend (negative while it waits on the client). Returns the ms until the next tick, or a
    /// negated `END` code.
    pub fn tick(&mut self, now: f64, waiting_since: f64) -> f64 {
        let since = (waiting_since >= 0.0).then_some(waiting_since as u64);
        match self.pipe.tick(now as u64, since) {
            Ok(ms) => ms as f64,
            Err(verdict) => -f64::from(self.code(verdict)),
        }
    }

    /// The bytes of the last `SEND`.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    fn code(&mut self, verdict: Verdict) -> u8 {
        let (bytes, end) = match verdict {
            Verdict::AsIs => return AS_IS,
            Verdict::Send(bytes) => (bytes, 0),
            Verdict::End(bytes) => (bytes, END),
        };
        if bytes.is_empty() {
            return end;
        }
        self.out = bytes;
        SEND | end
    }
}

/// One request's wasm half (`Host` is its JavaScript half): the timer behind every sleep of the
/// request, and whether the client went away.
#[wasm_bindgen]
pub struct Req(Rc<ReqState>);

struct ReqState {
    host: Host,
    timers: RefCell<Timers>,
    gone: Cell<bool>,
    gone_waker: RefCell<Option<Waker>>,
}

/// The request's pending sleeps, by deadline; one JavaScript timer is armed for the earliest.
#[derive(Default)]
struct Timers {
    waiting: BTreeMap<(u64, u64), Waker>,
    next_id: u64,
    /// The deadline the host's timer is armed for.
    armed: Option<u64>,
}

#[wasm_bindgen]
impl Req {
    #[wasm_bindgen(constructor)]
    pub fn new(host: Host) -> Req {
        Req(Rc::new(ReqState {
            host,
            timers: RefCell::default(),
            gone: Cell::new(false),
            gone_waker: RefCell::default(),
        }))
    }

    /// The host's timer fired: wakes every sleep that is due, re-arms for the next.
    pub fn tick(&self) {
        let now = Date::now() as u64;
        let due: Vec<Waker> = {
            let mut timers = self.0.timers.borrow_mut();
            timers.armed = None;
            let later = timers.waiting.split_off(&(now.saturating_add(1), 0));
            let due = std::mem::replace(&mut timers.waiting, later);
            due.into_values().collect()
        };
        for waker in due {
            waker.wake();
        }
        self.0.rearm(now);
    }

    /// The client went away (workerd's `request.signal`).
    pub fn gone(&self) {
        self.0.gone.set(true);
        let waker = self.0.gone_waker.borrow_mut().take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl ReqState {
    /// Arms the host's timer for the earliest pending sleep, if it is not armed for it already.
    fn rearm(&self, now: u64) {
        let call = {
            let mut timers = self.timers.borrow_mut();
            let earliest = timers.waiting.keys().next().map(|(at, _)| *at);
            match (earliest, timers.armed) {
                (Some(at), Some(armed)) if armed <= at => None,
                (Some(at), _) => {
                    timers.armed = Some(at);
                    Some(Some(at.saturating_sub(now).max(1)))
                }
                (None, Some(_)) => {
                    timers.armed = None;
                    Some(None)
                }
                (None, None) => None,
            }
        };
        match call {
            Some(Some(ms)) => self.host.arm(ms as f64),
            Some(None) => self.host.disarm(),
            None => {}
        }
    }
}

/// A sleep of one request: registered with its timers on first poll, gone from them when done
/// or dropped.
struct Sleep {
    req: Rc<ReqState>,
    deadline: u64,
    key: Option<(u64, u64)>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        match this.key {
            Some(key) => {
                let mut timers = this.req.timers.borrow_mut();
                match timers.waiting.get_mut(&key) {
                    Some(waker) => {
                        waker.clone_from(cx.waker());
                        Poll::Pending
                    }
                    // Woken and removed by `Req::tick`.
                    None => {
                        this.key = None;
                        Poll::Ready(())
                    }
                }
            }
            None => {
                let now = Date::now() as u64;
                if now >= this.deadline {
                    return Poll::Ready(());
                }
                {
                    let mut timers = this.req.timers.borrow_mut();
                    let key = (this.deadline, timers.next_id);
                    timers.next_id += 1;
                    timers.waiting.insert(key, cx.waker().clone());
                    this.key = Some(key);
                }
                this.req.rearm(now);
                Poll::Pending
            }
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            if let Ok(mut timers) = self.req.timers.try_borrow_mut() {
                timers.waiting.remove(&key);
                // The host's timer stays armed: a tick that finds nothing due costs less than a
                // disarm now and an arm for the next sleep.
            }
        }
    }
}

/// Resolves once workerd says the client went away (compatibility flag `enable_request_signal`).
/// A cancelled response is not dropped, only no longer polled, so without this a stream's end
/// would never be reported.
struct Gone(Rc<ReqState>);

impl Future for Gone {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.gone.get() {
            return Poll::Ready(());
        }
        *self.0.gone_waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Outbound HTTP through the Workers `fetch`, called from JavaScript in one call per request.
struct WorkersFetch {
    runtime: WorkersRuntime,
    /// The reader of the last streamed answer: the relay's pump reads on from it.
    last_reader: RefCell<Option<ReadableStreamDefaultReader>>,
    /// The committed stream, for [`Reply::of`] to hand to the entry point's pump.
    piped: Rc<RefCell<Option<Piped>>>,
}

/// A committed stream, for JavaScript to pump.
struct Piped {
    pipe: Pipe,
    reader: ReadableStreamDefaultReader,
}

impl Upstream for WorkersFetch {
    async fn send(&self, request: UpstreamRequest) -> Result<UpstreamResponse, ConnectError> {
        let failed = |e: JsValue| ConnectError(format!("{e:?}"));
        let headers = request.headers.to_lines().ok_or_else(|| ConnectError("a header holds a line break".into()))?;
        // Aborts the fetch if this future, or later the body, is dropped before the end.
        let abort = AbortOnDrop(Some(AbortController::new().map_err(failed)?));
        let Some(controller) = abort.0.as_ref() else { return Err(ConnectError("no abort controller".into())) };
        let call = upstream_fetch(
            controller,
            &request.url,
            request.method,
            &headers,
            request.body.as_deref(),
            WHOLE_BODY_MAX_BYTES as f64,
        );
        let fetched: Fetched = JsFuture::from(call).await.map_err(failed)?.unchecked_into();
        let status = fetched.status();
        let headers = Headers::from_lines(&fetched.headers());
        if let Some(body) = fetched.body() {
            // Read whole in the same call: nothing left to abort.
            abort.disarm();
            let chunks = if body.is_empty() { vec![] } else { vec![body] };
            return Ok(UpstreamResponse { status, headers, body: body_from_chunks(chunks) });
        }
        let Some(reader) = fetched.reader() else {
            abort.disarm();
            return Ok(UpstreamResponse { status, headers, body: body_from_chunks(vec![]) });
        };
        *self.last_reader.borrow_mut() = Some(reader.clone());
        Ok(UpstreamResponse { status, headers, body: Box::pin(JsBody::new(reader, Some(abort))) })
    }

    /// The committed stream goes to the entry point's pump (see [`Reply::of`]); what is returned
    /// stands in for it, and pumps it in wasm if anything ever polls it.
    fn relay<R: Runtime + 'static>(&self, pipe: Pipe, body: BodyStream, _runtime: R) -> BodyStream {
        match self.last_reader.borrow_mut().take() {
            Some(reader) => {
                *self.piped.borrow_mut() = Some(Piped { pipe, reader });
                Box::pin(StandIn {
                    piped: self.piped.clone(),
                    body: Some(body),
                    runtime: self.runtime.clone(),
                    inner: None,
                })
            }
            None => relay::stream(pipe, body, self.runtime.clone()),
        }
    }
}

/// Stands in for a relay the entry point pumps; if polled first (nothing does today), it pumps
/// the relay in wasm instead.
struct StandIn {
    piped: Rc<RefCell<Option<Piped>>>,
    body: Option<BodyStream>,
    runtime: WorkersRuntime,
    inner: Option<BodyStream>,
}

impl Stream for StandIn {
    type Item = Result<Vec<u8>, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.inner.is_none() {
            let piped = self.piped.borrow_mut().take();
            let (Some(Piped { pipe, .. }), Some(body)) = (piped, self.body.take()) else {
                return Poll::Ready(None);
            };
            self.inner = Some(relay::stream(pipe, body, self.runtime.clone()));
        }
        match self.inner.as_mut() {
            Some(inner) => inner.as_mut().poll_next(cx),
            None => Poll::Ready(None),
        }
    }
}

/// A body read through a JavaScript reader, one promise per chunk (a large request body, and a
/// stream up to its first event); it aborts its fetch if dropped before the end.
struct JsBody {
    reader: ReadableStreamDefaultReader,
    reading: Option<JsFuture>,
    abort: Option<AbortOnDrop>,
}

impl JsBody {
    fn new(reader: ReadableStreamDefaultReader, abort: Option<AbortOnDrop>) -> Self {
        JsBody { reader, reading: None, abort }
    }
}

impl Stream for JsBody {
    type Item = Result<Vec<u8>, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let reading = this.reading.get_or_insert_with(|| JsFuture::from(read_chunk(&this.reader)));
        let next = match Pin::new(reading).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(next) => next,
        };
        this.reading = None;
        Poll::Ready(match next {
            Ok(chunk) if chunk.is_undefined() => {
                // The end: nothing left to abort.
                if let Some(abort) = this.abort.take() {
                    abort.disarm();
                }
                None
            }
            Ok(chunk) => Some(Ok(Uint8Array::new(&chunk).to_vec())),
            Err(e) => Some(Err(BodyError(format!("{e:?}")))),
        })
    }
}

/// Aborts an outbound fetch when dropped, so the backend sees its connection close and frees the
/// GPU slot. Aborting a fetch that already finished does nothing.
struct AbortOnDrop(Option<AbortController>);

impl AbortOnDrop {
    /// The fetch completed: nothing to abort (and `abort()` on a finished fetch is not free:
    /// it showed as 7% of the worker's CPU in a profile).
    fn disarm(mut self) {
        self.0.take();
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(controller) = self.0.take() {
            controller.abort();
        }
    }
}

/// Limit state in [`RateLimiter`] Durable Objects, one per scope (API key, client IP).
#[derive(Clone)]
struct DurableLimitStore {
    env: Env,
}

impl DurableLimitStore {
    /// Sends one call to the scope's object; its JSON reply.
    async fn call(&self, scope: &str, call: &StoreCall) -> Result<worker::Response, StoreError> {
        let failed = |e: worker::Error| StoreError(e.to_string());
        let stub = self
            .env
            .durable_object(LIMITER_BINDING)
            .and_then(|ns| ns.id_from_name(scope)?.get_stub())
            .map_err(failed)?;
        let body = serde_json::to_string(call).map_err(|e| StoreError(e.to_string()))?;
        let mut init = RequestInit::new();
        init.with_method(Method::Post).with_body(Some(JsValue::from_str(&body)));
        let request = worker::Request::new_with_init("https://rate-limiter/call", &init).map_err(failed)?;
        let response = stub.fetch_with_request(request).await.map_err(failed)?;
        match response.status_code() {
            200 => Ok(response),
            status => Err(StoreError(format!("limiter answered {status}"))),
        }
    }
}

impl LimitStore for DurableLimitStore {
    async fn admit(&self, scope: &str, admission: &Admission) -> Result<Admitted, StoreError> {
        let mut response = self.call(scope, &StoreCall::Admit(admission.clone())).await?;
        response.json().await.map_err(|e| StoreError(e.to_string()))
    }

    async fn settle(&self, scope: &str, settlement: &Settlement) -> Result<(), StoreError> {
        self.call(scope, &StoreCall::Settle(settlement.clone())).await.map(|_| ())
    }
}

/// The limits of one scope. The core's rules run here, on this object's clock, so every isolate
/// in the fleet sees one sequence of admissions; state is written through to durable storage so it
/// survives the object being evicted or restarted.
#[durable_object(fetch)]
pub struct RateLimiter {
    state: State,
    buckets: RefCell<Option<BucketSet>>,
}

impl DurableObject for RateLimiter {
    fn new(state: State, _env: Env) -> Self {
        RateLimiter { state, buckets: RefCell::new(None) }
    }

    async fn fetch(&self, mut req: worker::Request) -> worker::Result<worker::Response> {
        let call: StoreCall = req.json().await?;
        // No await between reading and writing the state except storage calls, during which the
        // runtime delivers no other event to this object: each call is atomic.
        let cached = self.buckets.borrow().clone();
        let mut buckets = match cached {
            Some(buckets) => buckets,
            None => match self.state.storage().get::<String>(BUCKETS_KEY).await? {
                Some(json) => serde_json::from_str(&json).unwrap_or_default(),
                None => BucketSet::default(),
            },
        };
        let reply = call.apply(&mut buckets, Date::now() as u64);
        // Stored as JSON text: nanosecond timestamps do not fit a JavaScript number.
        let json = serde_json::to_string(&buckets).map_err(|e| worker::Error::RustError(e.to_string()))?;
        self.state.storage().put(BUCKETS_KEY, json).await?;
        *self.buckets.borrow_mut() = Some(buckets);
        match reply {
            Some(admitted) => worker::Response::from_json(&admitted),
            None => worker::Response::from_json(&serde_json::json!({ "settled": true })),
        }
    }
}

/// Time, randomness, logs and background work from the Workers runtime, for one request.
#[derive(Clone)]
struct WorkersRuntime(Rc<ReqState>);

impl Runtime for WorkersRuntime {
    fn now_ms(&self) -> u64 {
        Date::now() as u64
    }

    /// One of the request's sleeps: its one timer is armed for the earliest (see [`Req::tick`]).
    fn sleep(&self, ms: u64) -> impl Future<Output = ()> {
        Sleep { req: self.0.clone(), deadline: (Date::now() as u64).saturating_add(ms), key: None }
    }

    /// `crypto.getRandomValues` (ids and trace ids should not be guessable).
    fn fill_random(&self, buf: &mut [u8]) {
        if get_random_values(buf).is_err() {
            for byte in buf {
                *byte = (worker::js_sys::Math::random() * 256.0) as u8;
            }
        }
    }

    fn log(&self, line: &str) {
        console_log(line);
    }

    fn spawn(&self, task: Pin<Box<dyn Future<Output = ()>>>) {
        // `waitUntil` keeps the isolate alive for the task after the response has been sent.
        let promise = future_to_promise(async move {
            task.await;
            Ok(JsValue::UNDEFINED)
        });
        self.0.host.wait_until(&promise);
    }
}
