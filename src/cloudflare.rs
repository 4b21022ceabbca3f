//! Cloudflare Workers adapter: translates between workerd and the core, and implements its traits.
//!
//! The entry point is JavaScript (`src/workers/entry.js`, bundled by `make worker`), so that a
//! request crosses between JavaScript and wasm a handful of times, and no platform call costs a
//! Rust future round trip (a promise, two closures and a microtask each):
//!
//! - [`start`] takes the request — its headers as one string, a small body as one buffer — and
//!   runs the core on this request's own small executor until it waits on the platform;
//! - each platform event is one call back in — [`fetched`] (a backend answered: its head, and a
//!   small answer's body), [`tick`] (the request's one timer), [`gone`] (the client left) — which
//!   runs the core on until it waits again;
//! - the answer goes out in one call to the JavaScript host (`respond`), and a committed stream's
//!   bytes never pass through a Rust future: the host pumps the backend's body and hands each
//!   chunk to the core's relay through [`Relay::chunk`], one synchronous call.
//!
//! What it implements:
//! - [`Upstream`] with the Workers `fetch` (made by the host), aborted when the core lets go of it
//!   (timeouts, the client gone, the stream's end);
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
use crate::core::log::{self, LogRecord, Metrics, NoMetrics};
use crate::core::rate_limit::gcra::{Admission, Admitted, BucketSet, Settlement};
use crate::core::rate_limit::store::{LimitStore, StoreCall, StoreError};
use crate::core::runtime::Runtime;
use crate::core::upstream::balance::HealthBook;
use crate::core::upstream::readiness::MemoryProbeCache;
use crate::core::upstream::relay::{self, Pipe, Verdict};
use crate::core::upstream::{ConnectError, Upstream, UpstreamRequest, UpstreamResponse};
use crate::core::Gateway;
use futures::stream::Stream;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use worker::js_sys::{Date, Uint8Array};
use worker::wasm_bindgen_futures::{future_to_promise, JsFuture};
use worker::web_sys::{AbortController, ReadableStream, ReadableStreamDefaultReader};
use worker::{durable_object, DurableObject, Env, Method, RequestInit, State};

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
    /// Resolves to the body's next chunk (a `Uint8Array`), or `undefined` at its end.
    #[wasm_bindgen(js_name = readChunk)]
    fn read_chunk(reader: &ReadableStreamDefaultReader) -> worker::js_sys::Promise;
}

#[wasm_bindgen]
extern "C" {
    /// One request's JavaScript side (`Host` in `src/workers/entry.js`).
    pub type Host;
    /// (Re)arms the request's one timer to call [`tick`] in `ms`.
    #[wasm_bindgen(method)]
    fn arm(this: &Host, ms: f64);
    #[wasm_bindgen(method)]
    fn disarm(this: &Host);
    /// Runs [`poll`] for this request in a microtask (something outside the host woke it).
    #[wasm_bindgen(method)]
    fn schedule(this: &Host);
    /// Starts a backend call; its outcome comes back through [`fetched`] or [`fetch_failed`].
    #[wasm_bindgen(method)]
    fn fetch(
        this: &Host,
        call: u32,
        url: &str,
        method: &str,
        headers: &str,
        body: Option<&[u8]>,
        whole_max: f64,
    ) -> AbortController;
    /// The answer: a whole body.
    #[wasm_bindgen(method)]
    fn respond(this: &Host, status: u16, headers: &str, body: &[u8]);
    /// The answer: a committed stream for the host to pump from `reader` through `relay`.
    #[wasm_bindgen(method, js_name = respondRelay)]
    fn respond_relay(this: &Host, status: u16, headers: &str, relay: Relay, reader: ReadableStreamDefaultReader);
    /// The answer: a stream for the host to write out, which may hand it a relay later.
    #[wasm_bindgen(method, js_name = respondStream)]
    fn respond_stream(this: &Host, status: u16, headers: &str, body: Streamed);
    #[wasm_bindgen(method, js_name = waitUntil)]
    fn wait_until(this: &Host, promise: &worker::js_sys::Promise);

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
    /// The requests under way in this isolate, by id.
    static REQUESTS: RefCell<HashMap<u32, Rc<Req>>> = RefCell::default();
    static NEXT_REQUEST: Cell<u32> = const { Cell::new(0) };
}

/// The optional Workers Analytics Engine dataset that gets one data point per request.
const METRICS_BINDING: &str = "GATEWAY_METRICS";

/// Writes each request's record to Analytics Engine, in the shape [`LogRecord::data_point`]
/// documents. `writeDataPoint` only queues the point: nothing waits for it.
struct AnalyticsMetrics(worker::AnalyticsEngineDataset);

impl Metrics for AnalyticsMetrics {
    fn record(&self, record: &LogRecord) {
        let point = record.data_point();
        let built = worker::AnalyticsEngineDataPointBuilder::new()
            .indexes([point.index.as_str()])
            .blobs(point.blobs)
            .doubles(point.doubles)
            .build();
        if let Err(e) = self.0.write_data_point(&built) {
            console_log(&log::event("warn", "metrics_write_failed", &[("detail", e.to_string().into())]));
        }
    }
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

/// Starts answering one request; returns its id, which the host's calls name. `headers` is
/// `name\nvalue\n` lines; `body` the whole body when small, else `stream`. The answer goes to
/// the host's `respond`, `respondRelay` or `respondStream`.
#[wasm_bindgen]
pub fn start(
    method: String,
    path: String,
    headers: String,
    body: Option<Vec<u8>>,
    stream: Option<ReadableStream>,
    host: Host,
    env: Env,
) -> u32 {
    let id = NEXT_REQUEST.with(|n| {
        let id = n.get().wrapping_add(1);
        n.set(id);
        id
    });
    let req = Rc::new(Req::new(id, host));
    REQUESTS.with(|r| r.borrow_mut().insert(id, req.clone()));
    let request = to_core_request(method, path, headers, body, stream, &req);
    let task = answer(req.clone(), env, request);
    *req.task.borrow_mut() = Some(Box::pin(task));
    req.run(|| {});
    id
}

/// What a request is answered with, then handed to the host.
async fn answer(req: Rc<Req>, env: Env, request: Request) {
    let config = config(&env);
    let runtime = WorkersRuntime(req.clone());
    let metrics: Rc<dyn Metrics> = match env.analytics_engine(METRICS_BINDING) {
        Ok(dataset) => Rc::new(AnalyticsMetrics(dataset)),
        Err(_) => Rc::new(NoMetrics),
    };
    let upstream = WorkersFetch { req: req.clone(), last_reader: Rc::default(), piped: Rc::default() };
    let piped = upstream.piped.clone();
    let gateway = Gateway::new(upstream, DurableLimitStore { env }, runtime.clone())
        .with_health(HEALTH.with(Rc::clone))
        .with_probes(PROBES.with(Rc::clone))
        .with_metrics(metrics);
    let response = gateway.handle(config.as_ref().as_ref(), request).await;
    let Response { status, headers, body } = response;
    // A header no platform accepts (a line break) fails the request, as appending it would.
    let Some(headers) = headers.to_lines() else {
        req.host.respond(500, "content-type\napplication/json\n", b"{}");
        req.forget();
        return;
    };
    let relayed = piped.borrow_mut().take();
    match body {
        Body::Full(bytes) => {
            req.host.respond(status, &headers, &bytes);
            req.forget();
        }
        Body::Stream(stream) => match relayed {
            // The core's relay, for the host to pump; `stream` only stands in for it. The
            // request stays known until the pump is done (`done`): its timer serves the relay.
            Some(Piped { pipe, reader }) => {
                req.host.respond_relay(status, &headers, Relay { pipe, out: Vec::new() }, reader);
                req.answered();
            }
            // A stream committed before its backend began: the host writes what it yields (its
            // keep-alive comments), and pumps the relay itself once a backend begins.
            None => {
                let streamed =
                    Streamed { body: Rc::new(RefCell::new(Some(stream))), piped, reader: RefCell::default() };
                req.host.respond_stream(status, &headers, streamed);
                req.answered();
            }
        },
    }
}

/// Runs request `id` on (the host's microtask, after something outside it woke it).
#[wasm_bindgen]
pub fn poll(id: u32) {
    if let Some(req) = Req::find(id) {
        req.scheduled.set(false);
        req.run(|| {});
    }
}

/// A backend call of request `id` answered: its status, headers (`name\nvalue\n` lines) and
/// either its whole `body` or the `reader` of its body.
#[wasm_bindgen]
pub fn fetched(
    id: u32,
    call: u32,
    status: u16,
    headers: String,
    body: Option<Vec<u8>>,
    reader: Option<ReadableStreamDefaultReader>,
) {
    if let Some(req) = Req::find(id) {
        req.run(|| req.finish_call(call, Ok(Fetched { status, headers, body, reader })));
    }
}

/// A backend call of request `id` failed before its answer (refused, reset, aborted).
#[wasm_bindgen(js_name = fetchFailed)]
pub fn fetch_failed(id: u32, call: u32, error: String) {
    if let Some(req) = Req::find(id) {
        req.run(|| req.finish_call(call, Err(error)));
    }
}

/// Request `id`'s timer fired: wakes every sleep that is due, re-arms for the next.
#[wasm_bindgen]
pub fn tick(id: u32) {
    if let Some(req) = Req::find(id) {
        req.run(|| req.tick());
    }
}

/// Request `id`'s client went away (workerd's `request.signal`).
#[wasm_bindgen]
pub fn gone(id: u32) {
    if let Some(req) = Req::find(id) {
        req.run(|| req.gone());
    }
}

/// The host is done with request `id` (its stream's pump ended).
#[wasm_bindgen]
pub fn done(id: u32) {
    if let Some(req) = Req::find(id) {
        req.forget();
    }
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
    req: &Rc<Req>,
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

/// A streamed answer the host writes out: its bytes as they come — a committed stream's keep-alive
/// comments, or its final error event — until a backend begins; then the backend's relay and
/// reader, for the host's pump, and nothing more from here. The host keeps it until the pump is
/// done: dropping it earlier would report the client gone.
#[wasm_bindgen]
pub struct Streamed {
    body: Rc<RefCell<Option<BodyStream>>>,
    piped: Rc<RefCell<Option<Piped>>>,
    /// The reader of the relay taken by [`Streamed::relay`].
    reader: RefCell<Option<ReadableStreamDefaultReader>>,
}

#[wasm_bindgen]
impl Streamed {
    /// Resolves to the next bytes (a `Uint8Array`), `undefined` at the end, or `null` once a
    /// backend began: its relay waits in [`Streamed::relay`].
    pub fn next(&self) -> worker::js_sys::Promise {
        let (body, piped) = (self.body.clone(), self.piped.clone());
        future_to_promise(futures::future::poll_fn(move |cx| {
            let mut body = body.borrow_mut();
            let Some(stream) = body.as_mut() else { return Poll::Ready(Ok(JsValue::UNDEFINED)) };
            match stream.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => Poll::Ready(Ok(Uint8Array::from(bytes.as_slice()).into())),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Err(JsValue::from_str(&e.0))),
                Poll::Ready(None) => Poll::Ready(Ok(JsValue::UNDEFINED)),
                Poll::Pending if piped.borrow().is_some() => Poll::Ready(Ok(JsValue::NULL)),
                Poll::Pending => Poll::Pending,
            }
        }))
    }

    /// The relay of the backend that began (once); its reader is [`Streamed::reader`].
    pub fn relay(&self) -> Option<Relay> {
        let Piped { pipe, reader } = self.piped.borrow_mut().take()?;
        *self.reader.borrow_mut() = Some(reader);
        Some(Relay { pipe, out: Vec::new() })
    }

    /// The reader of the relay [`Streamed::relay`] gave.
    pub fn reader(&self) -> Option<ReadableStreamDefaultReader> {
        self.reader.borrow_mut().take()
    }
}

/// What a [`Relay`] call says (`entry.js` has the same numbers): forward the bytes of
/// [`Relay::take`]; end the stream (after them); forward the chunk just given as it came. 0 is
/// "nothing yet".
const SEND: u8 = 1;
const END: u8 = 2;
const AS_IS: u8 = 4;

/// A committed stream's relay, driven chunk by chunk by the host's pump: each call returns
/// [`SEND`] and/or [`END`], [`AS_IS`], or 0.
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

/// One request's wasm side: its task (the core answering it), its backend calls in flight, the
/// timer behind all its sleeps, and whether the client went away. Everything that wakes the task
/// comes in through the host ([`fetched`], [`tick`], [`gone`]) and runs it on at once; anything
/// else that wakes it (a Durable Object call, a large body's reader) has the host [`poll`] it in a
/// microtask.
struct Req {
    id: u32,
    host: Host,
    task: RefCell<Option<Pin<Box<dyn Future<Output = ()>>>>>,
    /// Set while the task runs, or while an event from the host is being taken in.
    running: Cell<bool>,
    /// Woken while running: run once more.
    again: Cell<bool>,
    /// A [`poll`] is queued.
    scheduled: Cell<bool>,
    calls: RefCell<HashMap<u32, CallSlot>>,
    next_call: Cell<u32>,
    timers: RefCell<Timers>,
    gone: Cell<bool>,
    gone_waker: RefCell<Option<Waker>>,
    /// The host is done with it (see [`Req::forget`]).
    forgotten: Cell<bool>,
}

/// A backend call in flight: its outcome once the host has it, and who waits for it.
#[derive(Default)]
struct CallSlot {
    outcome: Option<Result<Fetched, String>>,
    waker: Option<Waker>,
}

/// A backend's answer as the host read it.
struct Fetched {
    status: u16,
    headers: String,
    body: Option<Vec<u8>>,
    reader: Option<ReadableStreamDefaultReader>,
}

/// The request's pending sleeps, by deadline; one JavaScript timer is armed for the earliest.
#[derive(Default)]
struct Timers {
    waiting: BTreeMap<(u64, u64), Waker>,
    next_id: u64,
    /// The deadline the host's timer is armed for.
    armed: Option<u64>,
}

impl Req {
    fn new(id: u32, host: Host) -> Req {
        Req {
            id,
            host,
            task: RefCell::default(),
            running: Cell::new(false),
            again: Cell::new(false),
            scheduled: Cell::new(false),
            calls: RefCell::default(),
            next_call: Cell::new(0),
            timers: RefCell::default(),
            gone: Cell::new(false),
            gone_waker: RefCell::default(),
            forgotten: Cell::new(false),
        }
    }

    fn find(id: u32) -> Option<Rc<Req>> {
        REQUESTS.with(|r| r.borrow().get(&id).cloned())
    }

    /// The host is done with this request. It stays known while a task of it still sleeps (the
    /// host's timer names it by id), and goes when the last sleep ends.
    fn forget(&self) {
        self.forgotten.set(true);
        self.answered();
        self.leave_if_idle();
    }

    /// The host disarms its timer when it sends the answer; a task that still sleeps (a stream's
    /// watcher) gets it armed again.
    fn answered(&self) {
        let pending = {
            let Ok(mut timers) = self.timers.try_borrow_mut() else { return };
            timers.armed = None;
            !timers.waiting.is_empty()
        };
        if pending {
            self.rearm(Date::now() as u64);
        }
    }

    /// Goes from the known requests once forgotten and no sleep is pending (the entry is dropped
    /// outside the map's borrow: it may hold the last reference to this request).
    fn leave_if_idle(&self) {
        let idle = self.timers.try_borrow().is_ok_and(|t| t.waiting.is_empty());
        if self.forgotten.get() && idle {
            let removed = REQUESTS.with(|r| r.try_borrow_mut().ok().and_then(|mut r| r.remove(&self.id)));
            drop(removed);
        }
    }

    /// Takes in an event (`event` may wake the task), then runs the task until it waits.
    fn run(self: &Rc<Self>, event: impl FnOnce()) {
        if self.running.replace(true) {
            // Called from inside the task (cannot happen: the host calls in only from its own
            // events): the outer run picks the event up.
            event();
            self.again.set(true);
            return;
        }
        event();
        let waker = Waker::from(Arc::new(TaskWaker(self.id)));
        let mut cx = Context::from_waker(&waker);
        loop {
            self.again.set(false);
            let mut slot = self.task.borrow_mut();
            if let Some(task) = slot.as_mut() {
                if task.as_mut().poll(&mut cx).is_ready() {
                    *slot = None;
                }
            }
            drop(slot);
            if !self.again.get() {
                break;
            }
        }
        self.running.set(false);
    }

    /// Something woke the task: run it again now if it is running, else in a microtask.
    fn wake(&self) {
        if self.running.get() {
            self.again.set(true);
        } else if !self.scheduled.replace(true) {
            self.host.schedule();
        }
    }

    fn finish_call(&self, call: u32, outcome: Result<Fetched, String>) {
        let waker = {
            let mut calls = self.calls.borrow_mut();
            match calls.get_mut(&call) {
                Some(slot) => {
                    slot.outcome = Some(outcome);
                    slot.waker.take()
                }
                // Let go of already (a timeout): the outcome goes nowhere.
                None => None,
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn tick(&self) {
        let now = Date::now() as u64;
        let due: Vec<Waker> = {
            let mut timers = self.timers.borrow_mut();
            timers.armed = None;
            let later = timers.waiting.split_off(&(now.saturating_add(1), 0));
            let due = std::mem::replace(&mut timers.waiting, later);
            due.into_values().collect()
        };
        for waker in due {
            waker.wake();
        }
        self.rearm(now);
        self.leave_if_idle();
    }

    fn gone(&self) {
        self.gone.set(true);
        let waker = self.gone_waker.borrow_mut().take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

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

/// Wakes a request's task (by id: a waker must be `Send`, and everything here is one thread).
struct TaskWaker(u32);

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        if let Some(req) = Req::find(self.0) {
            req.wake();
        }
    }
}

/// A sleep of one request: registered with its timers on first poll, gone from them when done
/// or dropped.
struct Sleep {
    req: Rc<Req>,
    made: u64,
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
                    // Woken and removed by the tick.
                    None => {
                        this.key = None;
                        Poll::Ready(())
                    }
                }
            }
            None => {
                // `now` is when the sleep was made (this first poll follows at once).
                let now = this.made;
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
                // The host's timer stays armed: a tick that finds nothing due costs less than a
                // disarm now and an arm for the next sleep (the host disarms it at the answer).
                timers.waiting.remove(&key);
            }
            self.req.leave_if_idle();
        }
    }
}

/// Resolves once workerd says the client went away (compatibility flag `enable_request_signal`).
/// A cancelled response is not dropped, only no longer polled, so without this a stream's end
/// would never be reported.
struct Gone(Rc<Req>);

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

/// Outbound HTTP through the Workers `fetch`, made by the host in one call per backend call.
/// Clones share their state: the search for a backend runs on one.
#[derive(Clone)]
struct WorkersFetch {
    req: Rc<Req>,
    /// The reader of the last streamed answer: the relay's pump reads on from it.
    last_reader: Rc<RefCell<Option<ReadableStreamDefaultReader>>>,
    /// The committed stream, for [`answer`] (or a [`Streamed`]) to hand to the host's pump.
    piped: Rc<RefCell<Option<Piped>>>,
}

/// A committed stream, for the host to pump.
struct Piped {
    pipe: Pipe,
    reader: ReadableStreamDefaultReader,
}

/// A backend call in flight; dropping it before its answer aborts the fetch.
struct Call {
    req: Rc<Req>,
    id: u32,
    abort: Option<AbortOnDrop>,
}

impl Future for Call {
    type Output = (Result<Fetched, String>, Option<AbortOnDrop>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut calls = this.req.calls.borrow_mut();
        let slot = calls.entry(this.id).or_default();
        match slot.outcome.take() {
            Some(outcome) => {
                calls.remove(&this.id);
                Poll::Ready((outcome, this.abort.take()))
            }
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if let Ok(mut calls) = self.req.calls.try_borrow_mut() {
            calls.remove(&self.id);
        }
    }
}

impl Upstream for WorkersFetch {
    async fn send(&self, request: UpstreamRequest) -> Result<UpstreamResponse, ConnectError> {
        let headers = request.headers.to_lines().ok_or_else(|| ConnectError::local("a header holds a line break"))?;
        // The relay's pump may only ever read the answer of the latest call: an earlier failed
        // attempt's reader must not stand in for a later answer read whole.
        self.last_reader.borrow_mut().take();
        let id = self.req.next_call.get().wrapping_add(1);
        self.req.next_call.set(id);
        self.req.calls.borrow_mut().insert(id, CallSlot::default());
        let controller = self.req.host.fetch(
            id,
            &request.url,
            request.method,
            &headers,
            request.body.as_deref(),
            WHOLE_BODY_MAX_BYTES as f64,
        );
        // Aborts the fetch if this future, or later the body, is dropped before the end.
        let call = Call { req: self.req.clone(), id, abort: Some(AbortOnDrop(Some(controller))) };
        let (outcome, abort) = call.await;
        let fetched = outcome.map_err(ConnectError::network)?;
        let status = fetched.status;
        let headers = Headers::from_lines(&fetched.headers);
        let (reader, abort) = match (fetched.reader, abort) {
            (Some(reader), Some(abort)) => (reader, abort),
            (_, abort) => {
                // Read whole by the host: nothing left to abort.
                if let Some(abort) = abort {
                    abort.disarm();
                }
                let chunks = match fetched.body {
                    Some(body) if !body.is_empty() => vec![body],
                    _ => vec![],
                };
                return Ok(UpstreamResponse { status, headers, body: body_from_chunks(chunks) });
            }
        };
        *self.last_reader.borrow_mut() = Some(reader.clone());
        Ok(UpstreamResponse { status, headers, body: Box::pin(JsBody::new(reader, Some(abort))) })
    }

    /// The committed stream goes to the host's pump, handed over by [`answer`] or, for a stream
    /// committed before its backend began, by [`Streamed::next`]: what is returned only stands in
    /// for it and never yields (the backend's body is owned by the stream's end, not by it). A body
    /// the host read whole (no reader) is pumped here.
    fn relay<R: Runtime + 'static>(&self, pipe: Pipe, body: BodyStream, _runtime: R) -> BodyStream {
        match self.last_reader.borrow_mut().take() {
            Some(reader) => {
                *self.piped.borrow_mut() = Some(Piped { pipe, reader });
                Box::pin(futures::stream::pending())
            }
            None => relay::stream(pipe, body, WorkersRuntime(self.req.clone())),
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
struct WorkersRuntime(Rc<Req>);

impl Runtime for WorkersRuntime {
    fn now_ms(&self) -> u64 {
        Date::now() as u64
    }

    /// One of the request's sleeps: its one timer is armed for the earliest.
    fn sleep(&self, ms: u64) -> impl Future<Output = ()> {
        let now = Date::now() as u64;
        Sleep { req: self.0.clone(), made: now, deadline: now.saturating_add(ms), key: None }
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
