//! In-memory implementations of the core's platform traits, so every rule is tested natively.
//!
//! Time is virtual: [`FakeRuntime::sleep`] ends when the clock reaches its deadline, and [`run`]
//! moves the clock straight to the next deadline whenever every future is waiting on one. So a
//! test can tell a 2 s timeout from a 3 s one, instantly and deterministically, and a future
//! that waits on nothing at all (a hang the gateway failed to bound) fails the test.
#![allow(dead_code)]

use edge_gateway::core::config::{Config, Lookup};
use edge_gateway::core::http::{body_from_chunks, Body, BodyError, Headers, Request, Response};
use edge_gateway::core::log::{DataPoint, LogRecord, Metrics};
use edge_gateway::core::rate_limit::gcra::{Admission, Admitted, Settlement};
use edge_gateway::core::rate_limit::store::{LimitStore, MemoryStore, StoreError};
use edge_gateway::core::runtime::Runtime;
use edge_gateway::core::upstream::{ConnectError, Upstream, UpstreamRequest, UpstreamResponse};
use edge_gateway::core::{auth::sha256_hex, Gateway};
use futures::stream::{self, StreamExt};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

pub const KEY: &str = "sk-test-alpha";
pub const OTHER_KEY: &str = "sk-test-beta";
/// Limited to 1,000 tokens per minute and one request in flight.
pub const METERED_KEY: &str = "sk-test-gamma";
/// Where the virtual clock starts.
pub const T0: u64 = 1_700_000_000_000;

/// A background task the gateway spawned.
pub type Task = Pin<Box<dyn Future<Output = ()>>>;

/// The virtual clock: the time, and the wakers of sleeps waiting for a later one.
#[derive(Default)]
pub struct Clock {
    pub now: Cell<u64>,
    timers: RefCell<Vec<(u64, Waker)>>,
}

impl Clock {
    /// Moves to the earliest pending deadline and wakes its sleeps; `false` if none is pending.
    fn advance(&self) -> bool {
        let mut timers = self.timers.borrow_mut();
        let Some(next) = timers.iter().map(|(at, _)| *at).min() else { return false };
        if next > self.now.get() {
            self.now.set(next);
        }
        let now = self.now.get();
        let (due, rest): (Vec<_>, Vec<_>) = timers.drain(..).partition(|(at, _)| *at <= now);
        *timers = rest;
        drop(timers);
        for (_, waker) in due {
            waker.wake();
        }
        true
    }
}

thread_local! {
    /// The clock of the runtime made last on this thread (each test runs on its own thread).
    static CLOCK: RefCell<Rc<Clock>> = RefCell::new(Rc::default());
}

fn clock() -> Rc<Clock> {
    CLOCK.with(|c| c.borrow().clone())
}

/// Resolves when the virtual clock reaches `deadline`.
pub struct Sleep {
    clock: Rc<Clock>,
    deadline: u64,
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.clock.now.get() >= self.deadline {
            return Poll::Ready(());
        }
        self.clock.timers.borrow_mut().push((self.deadline, cx.waker().clone()));
        Poll::Pending
    }
}

/// Sleeps `ms` on the virtual clock of this thread.
pub fn sleep(ms: u64) -> Sleep {
    let clock = clock();
    let deadline = clock.now.get().saturating_add(ms);
    Sleep { clock, deadline }
}

/// Lets a test move time forward by hand (between requests).
pub fn advance(ms: u64) {
    let clock = clock();
    clock.now.set(clock.now.get() + ms);
}

struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Runs a future to completion on the current thread, in virtual time: whenever it is waiting
/// and nothing but a timer can wake it, the clock jumps to the next deadline. Panics if it waits
/// on nothing (it would hang for real).
pub fn run<F: Future>(future: F) -> F::Output {
    let clock = clock();
    let flag = Arc::new(Flag(AtomicBool::new(true)));
    let waker = Waker::from(flag.clone());
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        flag.0.store(false, Ordering::SeqCst);
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        if !flag.0.load(Ordering::SeqCst) && !clock.advance() {
            panic!("the future waits on nothing: it would hang forever");
        }
    }
}

/// Platform services on the virtual clock; logs and spawned tasks are kept for inspection.
#[derive(Clone)]
pub struct FakeRuntime {
    pub clock: Rc<Clock>,
    pub logs: Rc<RefCell<Vec<String>>>,
    /// Background tasks, run by [`FakeRuntime::run_spawned`].
    pub tasks: Rc<RefCell<Vec<Task>>>,
    /// A deterministic random sequence (xorshift): every request gets different ids, as it
    /// would from a real source, and every run the same ones.
    pub random: Rc<Cell<u64>>,
}

impl Default for FakeRuntime {
    /// A runtime whose clock starts at [`T0`] and becomes this thread's clock.
    fn default() -> Self {
        let clock = Rc::new(Clock::default());
        clock.now.set(T0);
        CLOCK.with(|c| *c.borrow_mut() = clock.clone());
        FakeRuntime {
            clock,
            logs: Rc::default(),
            tasks: Rc::default(),
            random: Rc::new(Cell::new(0x9E37_79B9_7F4A_7C15)),
        }
    }
}

impl FakeRuntime {
    /// Runs the tasks spawned so far (settlements), as the platform would after the response.
    pub fn run_spawned(&self) -> usize {
        let tasks: Vec<_> = self.tasks.borrow_mut().drain(..).collect();
        let count = tasks.len();
        for task in tasks {
            run(task);
        }
        count
    }

    pub fn now(&self) -> u64 {
        self.clock.now.get()
    }

    /// The log lines that are JSON request records.
    pub fn records(&self) -> Vec<serde_json::Value> {
        self.logs
            .borrow()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &serde_json::Value| v.get("request_id").is_some())
            .collect()
    }
}

impl Runtime for FakeRuntime {
    fn now_ms(&self) -> u64 {
        self.clock.now.get()
    }

    fn sleep(&self, ms: u64) -> impl std::future::Future<Output = ()> {
        Sleep { clock: self.clock.clone(), deadline: self.clock.now.get().saturating_add(ms) }
    }

    fn fill_random(&self, buf: &mut [u8]) {
        for byte in buf {
            let mut x = self.random.get();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.random.set(x);
            *byte = (x >> 24) as u8;
        }
    }

    fn log(&self, line: &str) {
        self.logs.borrow_mut().push(line.to_string());
    }

    fn spawn(&self, task: Pin<Box<dyn Future<Output = ()>>>) {
        self.tasks.borrow_mut().push(task);
    }
}

/// What the fake backend does with the next request.
pub enum Script {
    /// Answers with status and headers after `after_ms`, then body chunks, each after its own
    /// delay (an `Err` chunk breaks the body there).
    Answer {
        status: u16,
        headers: Vec<(&'static str, &'static str)>,
        after_ms: u64,
        chunks: Vec<(u64, Result<Vec<u8>, BodyError>)>,
    },
    /// Refuses the connection.
    Refuse,
    /// The platform refuses to send the request at all (a header or URL it will not take).
    RefusedLocally,
    /// Never answers.
    Hang,
    /// Answers a stream that sends these events, then goes silent without closing.
    StreamThenStall(Vec<&'static str>),
}

impl Script {
    pub fn json(status: u16, body: &str) -> Script {
        Script::Answer {
            status,
            headers: vec![("content-type", "application/json")],
            after_ms: 0,
            chunks: vec![(0, Ok(body.as_bytes().to_vec()))],
        }
    }

    pub fn sse(chunks: &[&str]) -> Script {
        Script::sse_paced(chunks, 0)
    }

    /// A stream of chunks, each after its own delay (an `Err` breaks the body there).
    pub fn sse_timed(chunks: Vec<(u64, Result<Vec<u8>, BodyError>)>) -> Script {
        Script::Answer { status: 200, headers: vec![("content-type", "text/event-stream")], after_ms: 0, chunks }
    }

    /// A stream whose every chunk comes `gap_ms` after the one before (the first too).
    pub fn sse_paced(chunks: &[&str], gap_ms: u64) -> Script {
        Script::Answer {
            status: 200,
            headers: vec![("content-type", "text/event-stream")],
            after_ms: 0,
            chunks: chunks.iter().map(|c| (gap_ms, Ok(c.as_bytes().to_vec()))).collect(),
        }
    }

    /// The same answer, whose body then goes silent for a long time without closing.
    pub fn then_silent(self) -> Script {
        match self {
            Script::Answer { status, headers, after_ms, mut chunks } => {
                chunks.push((86_400_000, Ok(Vec::new())));
                Script::Answer { status, headers, after_ms, chunks }
            }
            other => other,
        }
    }

    /// The same answer, its head sent only after `ms` (as vLLM sends a completion's after its
    /// last token).
    pub fn after(self, ms: u64) -> Script {
        match self {
            Script::Answer { status, headers, chunks, .. } => Script::Answer { status, headers, after_ms: ms, chunks },
            other => other,
        }
    }
}

/// A backend that answers from a script and remembers what it was sent.
#[derive(Clone, Default)]
pub struct FakeUpstream {
    pub scripts: Rc<RefCell<VecDeque<Script>>>,
    pub sent: Rc<RefCell<Vec<UpstreamRequest>>>,
    /// Requests whose answer was dropped before its end (the backend saw its connection close).
    pub closed: Rc<Cell<u32>>,
}

impl FakeUpstream {
    pub fn push(&self, script: Script) {
        self.scripts.borrow_mut().push_back(script);
    }

    /// The backends (by URL host) requests were sent to, in order.
    pub fn hosts(&self) -> Vec<String> {
        self.sent.borrow().iter().map(|r| r.url.split('/').nth(2).unwrap_or("").to_string()).collect()
    }

    pub fn last_body(&self) -> serde_json::Value {
        let sent = self.sent.borrow();
        serde_json::from_slice(sent.last().unwrap().body.as_ref().unwrap()).unwrap()
    }

    pub fn last_headers(&self) -> Headers {
        self.sent.borrow().last().unwrap().headers.clone()
    }
}

/// Counts a close when dropped before `done` is set.
struct CloseWatch {
    closed: Rc<Cell<u32>>,
    done: bool,
}

impl CloseWatch {
    /// The answer was delivered whole: no close to count.
    fn finish(mut self) {
        self.done = true;
    }
}

impl Drop for CloseWatch {
    fn drop(&mut self) {
        if !self.done {
            self.closed.set(self.closed.get() + 1);
        }
    }
}

impl Upstream for FakeUpstream {
    async fn send(&self, request: UpstreamRequest) -> Result<UpstreamResponse, ConnectError> {
        self.sent.borrow_mut().push(request);
        let script = self.scripts.borrow_mut().pop_front().unwrap_or(Script::Refuse);
        let watch = CloseWatch { closed: self.closed.clone(), done: false };
        let json = |s: &str| [("content-type".to_string(), s.to_string())].into_iter().collect::<Headers>();
        match script {
            Script::RefusedLocally => {
                watch.finish();
                Err(ConnectError::local("invalid header value"))
            }
            Script::Refuse => {
                watch.finish();
                Err(ConnectError::network("connection refused"))
            }
            Script::Hang => futures::future::pending().await,
            Script::StreamThenStall(events) => {
                let chunks = stream::iter(events.into_iter().map(|e| Ok(e.as_bytes().to_vec())));
                let body = chunks.chain(stream::once(async move {
                    let _watch = watch;
                    futures::future::pending::<Result<Vec<u8>, BodyError>>().await
                }));
                Ok(UpstreamResponse { status: 200, headers: json("text/event-stream"), body: Box::pin(body) })
            }
            Script::Answer { status, headers, after_ms, chunks } => {
                sleep(after_ms).await;
                let headers = headers.into_iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
                let body = stream::unfold((chunks.into_iter(), watch), |(mut chunks, watch)| async move {
                    match chunks.next() {
                        Some((delay, chunk)) => {
                            sleep(delay).await;
                            Some((chunk, (chunks, watch)))
                        }
                        None => {
                            watch.finish();
                            None
                        }
                    }
                });
                Ok(UpstreamResponse { status, headers, body: Box::pin(body) })
            }
        }
    }
}

/// A metrics sink that keeps what it was fed.
#[derive(Clone, Default)]
pub struct CapturedMetrics(pub Rc<RefCell<Vec<DataPoint>>>);

impl Metrics for CapturedMetrics {
    fn record(&self, record: &LogRecord) {
        self.0.borrow_mut().push(record.data_point());
    }
}

pub type TestStore = Rc<MemoryStore<Box<dyn Fn() -> u64>>>;
pub type TestGateway = Gateway<FakeUpstream, TestStore, FakeRuntime>;

/// A gateway over fakes, with the clock shared by runtime and store.
pub fn gateway() -> (TestGateway, FakeUpstream, FakeRuntime) {
    let (gw, upstream, runtime, _) = gateway_with_store();
    (gw, upstream, runtime)
}

/// [`gateway`], also returning its limit store for inspection.
pub fn gateway_with_store() -> (TestGateway, FakeUpstream, FakeRuntime, TestStore) {
    let upstream = FakeUpstream::default();
    let runtime = FakeRuntime::default();
    let clock = runtime.clock.clone();
    let store = Rc::new(MemoryStore::new(Box::new(move || clock.now.get()) as Box<dyn Fn() -> u64>));
    (Gateway::new(upstream.clone(), store.clone(), runtime.clone()), upstream, runtime, store)
}

/// A limit store that remembers every settlement it was sent.
#[derive(Clone)]
pub struct Recording {
    pub inner: TestStore,
    pub settled: Rc<RefCell<Vec<Settlement>>>,
}

impl LimitStore for Recording {
    async fn admit(&self, scope: &str, admission: &Admission) -> Result<Admitted, StoreError> {
        self.inner.admit(scope, admission).await
    }

    async fn settle(&self, scope: &str, settlement: &Settlement) -> Result<(), StoreError> {
        self.settled.borrow_mut().push(settlement.clone());
        self.inner.settle(scope, settlement).await
    }
}

/// [`gateway_with_store`] whose store records every settlement.
pub fn recording_gateway() -> (Gateway<FakeUpstream, Recording, FakeRuntime>, FakeUpstream, FakeRuntime, Recording) {
    let (_, upstream, runtime, inner) = gateway_with_store();
    let store = Recording { inner, settled: Rc::default() };
    (Gateway::new(upstream.clone(), store.clone(), runtime.clone()), upstream, runtime, store)
}

/// The token correction of the one settlement sent so far (negative: a refund).
pub fn token_delta(store: &Recording) -> i64 {
    let settled = store.settled.borrow();
    assert_eq!(settled.len(), 1, "one settlement: {settled:?}");
    settled[0].adjustments.iter().find(|a| a.bucket == "tokens").map_or(0, |a| a.delta)
}

/// The variables of a typical deployment: two models on two backends, two keys.
pub fn vars() -> HashMap<String, String> {
    let mut vars = HashMap::new();
    vars.insert(
        "GATEWAY_BACKENDS".into(),
        r#"[{"name":"gpu-a","url":"http://10.0.0.1:8000/","models":["llama"],"api_key_secret":"GPU_A_KEY"},
            {"name":"gpu-b","url":"https://gpu-b.internal","models":["qwen"],"health_path":"/v1/models"}]"#
            .into(),
    );
    vars.insert("GPU_A_KEY".into(), "backend-secret-a".into());
    vars.insert(
        "GATEWAY_API_KEYS".into(),
        format!(
            r#"[{{"id":"alpha","sha256":"{}","models":["*"],"requests_per_minute":3}},
                {{"id":"beta","sha256":"{}","models":["qwen"]}},
                {{"id":"gamma","sha256":"{}","models":["llama"],"tokens_per_minute":1000,"max_in_flight":1}}]"#,
            sha256_hex(KEY),
            sha256_hex(OTHER_KEY),
            sha256_hex(METERED_KEY)
        ),
    );
    vars.insert("GATEWAY_CORS_ORIGINS".into(), "https://app.example.com".into());
    vars.insert("GATEWAY_MAX_TOKENS".into(), "512".into());
    vars
}

pub fn config() -> Config {
    Config::from_lookup(&vars() as &dyn Lookup).expect("test config is valid")
}

/// [`config`] with one variable changed.
pub fn config_with(name: &str, value: &str) -> Config {
    let mut vars = vars();
    vars.insert(name.into(), value.into());
    Config::from_lookup(&vars as &dyn Lookup).expect("test config is valid")
}

/// [`config`] with several variables changed.
pub fn config_with_all(changes: &[(&str, &str)]) -> Config {
    let mut vars = vars();
    for (name, value) in changes {
        vars.insert(name.to_string(), value.to_string());
    }
    Config::from_lookup(&vars as &dyn Lookup).expect("test config is valid")
}

pub fn headers(pairs: &[(&str, &str)]) -> Headers {
    pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

pub fn post_chat(key: &str, body: &str) -> Request {
    post_to("/v1/chat/completions", key, body)
}

/// A JSON `POST` to `path` with `key`.
pub fn post_to(path: &str, key: &str, body: &str) -> Request {
    let auth = format!("Bearer {key}");
    Request::new(
        "POST",
        path,
        headers(&[("authorization", &auth), ("content-type", "application/json")]),
        body.as_bytes().to_vec(),
    )
}

pub fn get(path: &str, key: Option<&str>) -> Request {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut h = Headers::new();
    if let Some(auth) = auth {
        h.set("authorization", auth);
    }
    Request {
        method: "GET".into(),
        path: path.into(),
        headers: h,
        body: body_from_chunks(vec![]),
        client_ip: None,
        disconnected: None,
    }
}

/// A response's body as text (a stream is read to its end, in virtual time).
pub fn text(response: Response) -> (u16, Headers, String) {
    let status = response.status;
    let headers = response.headers;
    let body = match response.body {
        Body::Full(b) => b,
        Body::Stream(s) => run(Body::Stream(s).collect()).unwrap(),
    };
    (status, headers, String::from_utf8(body).unwrap())
}

/// The `error` object of an OpenAI-shaped error body; fails if the shape is wrong.
pub fn error_of(body: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    let e = v.get("error").unwrap().clone();
    for field in ["message", "type", "param", "code"] {
        assert!(e.get(field).is_some(), "error lacks `{field}`: {body}");
    }
    assert!(e["message"].is_string());
    e
}

/// A chat of 10 prompt tokens (40 bytes / 4) with a 100-token budget: admitted on 110 tokens.
pub const METERED_CHAT: &str = r#"{"model":"llama","max_tokens":100,"messages":[{"role":"user","content":"Count the tokens in this prompt please!!"}]}"#;
/// A completion that used 20 tokens.
pub const METERED_COMPLETION: &str = r#"{"id":"c1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":8,"total_tokens":20}}"#;
/// Stream events without `usage` fields.
pub const ROLE_EVENT: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n";
pub const TOKEN_EVENT: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n";
pub const DONE_EVENT: &str = "data: [DONE]\n\n";

/// [`METERED_CHAT`] as a stream.
pub fn metered_stream() -> String {
    METERED_CHAT.replace("\"max_tokens\":100", "\"max_tokens\":100,\"stream\":true")
}

/// `llama` on three backends whose order is fixed — `a`, then the fallback tiers `b` and `c`
/// (weights within a tier are random) — with `extra` variables.
pub fn ordered_backends(extra: &[(&str, &str)]) -> Config {
    let mut changes: Vec<(&str, &str)> = vec![(
        "GATEWAY_BACKENDS",
        r#"[{"name":"a","url":"http://a.internal","models":["llama"]},
            {"name":"b","url":"http://b.internal","models":["llama"],"priority":1},
            {"name":"c","url":"http://c.internal","models":["llama","qwen"],"priority":2}]"#,
    )];
    changes.extend_from_slice(extra);
    config_with_all(&changes)
}
