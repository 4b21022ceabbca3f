//! In-memory implementations of the core's platform traits, so every rule is tested natively.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use edge_gateway::core::config::{Config, Lookup};
use edge_gateway::core::http::{body_from_chunks, Body, BodyError, Headers, Request, Response};
use edge_gateway::core::runtime::Runtime;
use edge_gateway::core::store::MemoryStore;
use edge_gateway::core::upstream::{ConnectError, Upstream, UpstreamRequest, UpstreamResponse};
use edge_gateway::core::{auth::sha256_hex, Gateway};
use futures::stream::{self, StreamExt};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

pub const KEY: &str = "sk-test-alpha";
pub const OTHER_KEY: &str = "sk-test-beta";
/// Limited to 1,000 tokens per minute and one request in flight.
pub const METERED_KEY: &str = "sk-test-gamma";

/// A background task the gateway spawned.
pub type Task = Pin<Box<dyn Future<Output = ()>>>;

/// A clock that only moves when told to; sleeps finish at once only when `timeouts_fire` is set.
#[derive(Clone, Default)]
pub struct FakeRuntime {
    pub now: Rc<Cell<u64>>,
    pub timeouts_fire: Rc<Cell<bool>>,
    pub logs: Rc<RefCell<Vec<String>>>,
    /// Background tasks, run by [`FakeRuntime::run_spawned`].
    pub tasks: Rc<RefCell<Vec<Task>>>,
}

impl FakeRuntime {
    /// Runs the tasks spawned so far (settlements), as the platform would after the response.
    pub fn run_spawned(&self) -> usize {
        let tasks: Vec<_> = self.tasks.borrow_mut().drain(..).collect();
        let count = tasks.len();
        for task in tasks {
            futures::executor::block_on(task);
        }
        count
    }
}

impl Runtime for FakeRuntime {
    fn now_ms(&self) -> u64 {
        self.now.get()
    }

    fn sleep(&self, _ms: u64) -> impl std::future::Future<Output = ()> {
        let fire = self.timeouts_fire.get();
        async move {
            if !fire {
                futures::future::pending::<()>().await;
            }
        }
    }

    fn fill_random(&self, buf: &mut [u8]) {
        buf.fill(7);
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
    /// Answers with status, headers and body chunks (an `Err` chunk breaks the body there).
    Answer { status: u16, headers: Vec<(&'static str, &'static str)>, chunks: Vec<Result<Vec<u8>, BodyError>> },
    /// Refuses the connection.
    Refuse,
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
            chunks: vec![Ok(body.as_bytes().to_vec())],
        }
    }

    pub fn sse(chunks: &[&str]) -> Script {
        Script::Answer {
            status: 200,
            headers: vec![("content-type", "text/event-stream")],
            chunks: chunks.iter().map(|c| Ok(c.as_bytes().to_vec())).collect(),
        }
    }
}

/// A backend that answers from a script and remembers what it was sent.
#[derive(Clone, Default)]
pub struct FakeUpstream {
    pub scripts: Rc<RefCell<VecDeque<Script>>>,
    pub sent: Rc<RefCell<Vec<UpstreamRequest>>>,
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
}

impl Upstream for FakeUpstream {
    async fn send(&self, request: UpstreamRequest) -> Result<UpstreamResponse, ConnectError> {
        self.sent.borrow_mut().push(request);
        let script = self.scripts.borrow_mut().pop_front().unwrap_or(Script::Refuse);
        match script {
            Script::Refuse => Err(ConnectError("connection refused".into())),
            Script::Hang => futures::future::pending().await,
            Script::StreamThenStall(events) => Ok(UpstreamResponse {
                status: 200,
                headers: [("content-type".to_string(), "text/event-stream".to_string())].into_iter().collect(),
                body: Box::pin(stream::iter(events.into_iter().map(|e| Ok(e.as_bytes().to_vec()))).chain(stream::pending())),
            }),
            Script::Answer { status, headers, chunks } => Ok(UpstreamResponse {
                status,
                headers: headers.into_iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
                body: Box::pin(stream::iter(chunks)),
            }),
        }
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
    runtime.now.set(1_700_000_000_000);
    let now = runtime.now.clone();
    let store = Rc::new(MemoryStore::new(Box::new(move || now.get()) as Box<dyn Fn() -> u64>));
    (Gateway::new(upstream.clone(), store.clone(), runtime.clone()), upstream, runtime, store)
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

pub fn headers(pairs: &[(&str, &str)]) -> Headers {
    pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

pub fn post_chat(key: &str, body: &str) -> Request {
    let auth = format!("Bearer {key}");
    Request::new(
        "POST",
        "/v1/chat/completions",
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
    Request { method: "GET".into(), path: path.into(), headers: h, body: body_from_chunks(vec![]), client_ip: None, disconnected: None }
}

/// Runs a future on the current thread.
pub fn run<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

/// A response's body as text.
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
