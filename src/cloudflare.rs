//! Cloudflare Workers adapter: translates `worker` types to the core's and implements its traits.
//!
//! - [`Upstream`] with the Workers `fetch`, aborted when the caller drops it (timeouts, client gone);
//! - [`LimitStore`] with one [`RateLimiter`] Durable Object per scope: a Durable Object runs one
//!   event at a time and blocks new events while it awaits its storage, so check-and-take is
//!   atomic and exact across every isolate of the fleet;
//! - [`Runtime`] with `Date.now`, `setTimeout`, `Math.random`, `console.log` and `waitUntil`;
//! - the client's address from `CF-Connecting-IP`, which Cloudflare sets (never the client).
//! - configuration from `[vars]`, `--var`/`.dev.vars` and secrets, validated once per isolate.
//!
//! No business rule lives here: if this file grows an `if` about the API, it belongs in the core.

use crate::core::config::{Config, ConfigError};
use crate::core::http::Disconnected;
use crate::core::http::{BodyError, BodyStream, Headers, Request, Response};
use crate::core::log::{self, LogRecord, Metrics, NoMetrics};
use crate::core::rate_limit::gcra::{Admission, Admitted, BucketSet, Settlement};
use crate::core::rate_limit::store::{LimitStore, StoreCall, StoreError};
use crate::core::runtime::Runtime;
use crate::core::upstream::balance::HealthBook;
use crate::core::upstream::readiness::MemoryProbeCache;
use crate::core::upstream::{ConnectError, Upstream, UpstreamRequest, UpstreamResponse};
use crate::core::{http::Body, Gateway};
use futures::stream::{self, Stream, TryStreamExt};
use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;
use worker::js_sys::{Math, Promise, Uint8Array};
use worker::wasm_bindgen::JsValue;
use worker::wasm_bindgen_futures::JsFuture;
use worker::{
    console_log, durable_object, event, AbortController, Date, Delay, DurableObject, Env, Fetch, Method, RequestInit,
    ResponseBuilder, State,
};

/// The Durable Object binding (see `wrangler.toml`).
const LIMITER_BINDING: &str = "RATE_LIMITER";
/// The storage key under which a [`RateLimiter`] keeps its buckets.
const BUCKETS_KEY: &str = "buckets";

thread_local! {
    /// The validated configuration of this isolate; vars and secrets do not change within one.
    static CONFIG: RefCell<Option<Rc<Result<Config, ConfigError>>>> = const { RefCell::new(None) };
    /// Passive backend health as this isolate has seen it (each isolate keeps its own view, as
    /// each proxy does in outlier detection).
    static HEALTH: Rc<HealthBook> = Rc::new(HealthBook::default());
    /// This isolate's last `/readyz` probe round (probes are shared per isolate, as health is).
    static PROBES: Rc<MemoryProbeCache> = Rc::default();
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
            console_log!("{}", log::event("warn", "metrics_write_failed", &[("detail", e.to_string().into())]));
        }
    }
}

#[event(fetch)]
async fn fetch(req: worker::Request, env: Env, ctx: worker::Context) -> worker::Result<worker::Response> {
    let config = config(&env);
    // A body is read in one call only when it fits the cap; otherwise it streams and is refused
    // at the cap without being buffered.
    let one_call_max = match config.as_ref() {
        Ok(config) => WHOLE_BODY_MAX_BYTES.min(config.caps.max_body_bytes as u64),
        Err(_) => 0,
    };
    let request = to_core_request(req, one_call_max)?;
    let runtime = WorkersRuntime { ctx: Rc::new(ctx) };
    let health = HEALTH.with(Rc::clone);
    let metrics: Rc<dyn Metrics> = match env.analytics_engine(METRICS_BINDING) {
        Ok(dataset) => Rc::new(AnalyticsMetrics(dataset)),
        Err(_) => Rc::new(NoMetrics),
    };
    let gateway = Gateway::new(WorkersFetch, DurableLimitStore { env }, runtime)
        .with_health(health)
        .with_probes(PROBES.with(Rc::clone))
        .with_metrics(metrics);
    let response = gateway.handle(config.as_ref().as_ref(), request).await;
    to_worker_response(response)
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
            console_log!("{}", crate::core::log::event("error", "config_error", &[("detail", e.0.clone().into())]));
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

/// The header Cloudflare's edge sets to the client's address, replacing any the client sent.
const CLIENT_IP_HEADER: &str = "cf-connecting-ip";

/// Bodies of known length up to this size are read in one call rather than through a stream
/// reader; anything larger or of unknown length streams (so a body over the cap is refused
/// without being buffered).
const WHOLE_BODY_MAX_BYTES: u64 = 1 << 20;

fn known_length_at_most(headers: &Headers, max: u64) -> bool {
    headers.get("content-length").and_then(|v| v.trim().parse::<u64>().ok()).is_some_and(|n| n <= max)
}

fn to_core_request(mut req: worker::Request, one_call_max: u64) -> worker::Result<Request> {
    let headers: Headers = req.headers().entries().collect();
    let client_ip = headers.get(CLIENT_IP_HEADER).map(str::to_owned);
    let disconnected = Some(client_gone(&req.inner().signal()));
    let (method, path) = (req.method().to_string(), req.path());
    let body: BodyStream = if known_length_at_most(&headers, one_call_max) {
        // Read in one call, and only when the core asks for the body.
        Box::pin(stream::once(async move { req.bytes().await.map_err(|e| BodyError(e.to_string())) }))
    } else {
        match req.stream() {
            Ok(stream) => Box::pin(stream.map_err(|e| BodyError(e.to_string()))),
            Err(_) => Box::pin(stream::empty()),
        }
    };
    Ok(Request { method, path, headers, body, client_ip, disconnected })
}

/// Resolves when the incoming request's signal aborts: workerd's word that the client went away
/// (compatibility flag `enable_request_signal`). A cancelled response is not dropped, only no
/// longer polled, so without this a stream's end would never be reported.
fn client_gone(signal: &worker::web_sys::AbortSignal) -> Disconnected {
    let signal = signal.clone();
    // The promise is made on first poll: only a stream's watcher ever waits on it.
    Box::pin(async move {
        let aborted = Promise::new(&mut |resolve, _reject| {
            if signal.aborted() {
                let _ = resolve.call0(&JsValue::UNDEFINED);
            } else {
                signal.set_onabort(Some(&resolve));
            }
        });
        let _ = JsFuture::from(aborted).await;
    })
}

fn to_worker_response(response: Response) -> worker::Result<worker::Response> {
    let headers = worker::Headers::new();
    for (name, value) in response.headers.iter() {
        headers.append(name, value)?;
    }
    let builder = ResponseBuilder::new().with_status(response.status).with_headers(headers);
    match response.body {
        Body::Full(bytes) if bytes.is_empty() => Ok(builder.empty()),
        Body::Full(bytes) => Ok(builder.fixed(bytes)),
        Body::Stream(body) => builder.from_stream(body.map_err(|e| worker::Error::RustError(e.0))),
    }
}

/// Outbound HTTP through the Workers `fetch`.
#[derive(Clone, Copy)]
struct WorkersFetch;

impl Upstream for WorkersFetch {
    async fn send(&self, request: UpstreamRequest) -> Result<UpstreamResponse, ConnectError> {
        let failed = |e: worker::Error| ConnectError::network(e.to_string());
        let refused = |e: worker::Error| ConnectError::local(e.to_string());
        let headers = worker::Headers::new();
        for (name, value) in request.headers.iter() {
            headers.set(name, value).map_err(refused)?;
        }
        let mut init = RequestInit::new();
        init.with_method(Method::from(request.method.to_string())).with_headers(headers);
        if let Some(body) = &request.body {
            init.with_body(Some(JsValue::from(Uint8Array::from(body.as_slice()))));
        }
        let outbound = worker::Request::new_with_init(&request.url, &init).map_err(refused)?;
        // Aborts the fetch if this future, or later the body, is dropped before the end.
        let abort = AbortOnDrop(Some(AbortController::default()));
        let signal = abort.0.as_ref().map(|c| c.signal());
        let fetch = Fetch::Request(outbound);
        let response = match &signal {
            Some(signal) => fetch.send_with_signal(signal).await,
            None => fetch.send().await,
        }
        .map_err(failed)?;
        let status = response.status_code();
        let headers: Headers = response.headers().entries().collect();
        // A small answer of known length is read with one arrayBuffer() call: a stream reader
        // costs a promise round trip per chunk (profile in BENCHMARKS.md).
        let is_sse = crate::core::http::is_event_stream(&headers);
        if !is_sse && known_length_at_most(&headers, WHOLE_BODY_MAX_BYTES) {
            let raw: worker::web_sys::Response = response.into();
            let buffer = raw.array_buffer().map_err(|e| ConnectError::network(format!("{e:?}")))?;
            let buffer = JsFuture::from(buffer).await.map_err(|e| ConnectError::network(format!("{e:?}")))?;
            abort.disarm();
            let body = crate::core::http::body_from_chunks(vec![Uint8Array::new(&buffer).to_vec()]);
            return Ok(UpstreamResponse { status, headers, body });
        }
        let mut response = response;
        let body: BodyStream = match response.stream() {
            Ok(stream) => Box::pin(Guarded { inner: Box::pin(stream.map_err(|e| BodyError(e.to_string()))), abort }),
            Err(_) => Box::pin(stream::empty()),
        };
        Ok(UpstreamResponse { status, headers, body })
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

/// A body stream that keeps its fetch's abort guard alive for as long as it is read, and
/// disarms it once the body has ended.
struct Guarded {
    inner: BodyStream,
    abort: AbortOnDrop,
}

impl Stream for Guarded {
    type Item = Result<Vec<u8>, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(None) = next {
            self.abort.0.take();
        }
        next
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
        let reply = call.apply(&mut buckets, Date::now().as_millis());
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

/// Time, randomness, logs and background work from the Workers runtime.
#[derive(Clone)]
struct WorkersRuntime {
    ctx: Rc<worker::Context>,
}

impl Runtime for WorkersRuntime {
    fn now_ms(&self) -> u64 {
        Date::now().as_millis()
    }

    fn sleep(&self, ms: u64) -> impl std::future::Future<Output = ()> {
        Delay::from(Duration::from_millis(ms))
    }

    /// `crypto.getRandomValues` (ids and trace ids should not be guessable).
    fn fill_random(&self, buf: &mut [u8]) {
        let array = Uint8Array::new_with_length(buf.len() as u32);
        let filled = worker::js_sys::Reflect::get(&worker::js_sys::global(), &JsValue::from_str("crypto"))
            .and_then(|crypto| {
                let get = worker::js_sys::Reflect::get(&crypto, &JsValue::from_str("getRandomValues"))?;
                worker::js_sys::Function::from(get).call1(&crypto, &array)
            })
            .is_ok();
        if filled {
            array.copy_to(buf);
        } else {
            for byte in buf {
                *byte = (Math::random() * 256.0) as u8;
            }
        }
    }

    fn log(&self, line: &str) {
        console_log!("{line}");
    }

    fn spawn(&self, task: Pin<Box<dyn std::future::Future<Output = ()>>>) {
        // `waitUntil` keeps the isolate alive for the task after the response has been sent.
        self.ctx.wait_until(task);
    }
}
