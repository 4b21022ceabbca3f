//! The relay's [`Pipe`] pumped outside the core, the way the Workers entry point pumps it
//! (`src/workers/entry.js`: the backend's chunks handed in one call each, `AS_IS` forwarding the
//! caller's own chunk, one timer asking `tick` when next): every scenario must give the client
//! the same bytes, at the same virtual time, with the same end logged, as the core's own pump.

use crate::support::*;
use edge_gateway::core::http::{BodyError, BodyStream, Response};
use edge_gateway::core::rate_limit::store::MemoryStore;
use edge_gateway::core::runtime::{timeout, Runtime};
use edge_gateway::core::upstream::relay::{Pipe, Verdict};
use edge_gateway::core::upstream::{ConnectError, Upstream, UpstreamRequest, UpstreamResponse};
use edge_gateway::core::{Config, Gateway};
use futures::stream::StreamExt;
use std::cell::Cell;
use std::rc::Rc;

const STREAM: &str = r#"{"model":"llama","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
const ROLE: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}],\"usage\":null}\n\n";
const TOKEN: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hey\"}}],\"usage\":null}\n\n";
const USAGE: &str =
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n";
const DONE: &str = "data: [DONE]\n\n";
const BACKEND_ERROR: &str = "data: {\"error\":{\"message\":\"CUDA out of memory at /srv/vllm\",\"code\":500}}\n\n";

/// How often each verdict came back from the pipe.
#[derive(Default)]
struct Verdicts {
    as_is: Cell<u32>,
    send: Cell<u32>,
    end: Cell<u32>,
}

/// The scripted backend, its relays pumped outside the core.
#[derive(Clone, Default)]
struct OutsidePump {
    inner: FakeUpstream,
    verdicts: Rc<Verdicts>,
}

impl Upstream for OutsidePump {
    async fn send(&self, request: UpstreamRequest) -> Result<UpstreamResponse, ConnectError> {
        self.inner.send(request).await
    }

    fn relay<R: Runtime + 'static>(&self, pipe: Pipe, body: BodyStream, runtime: R) -> BodyStream {
        let pump = Pump { pipe, body, runtime, started: false, over: false, verdicts: self.verdicts.clone() };
        Box::pin(futures::stream::unfold(pump, Pump::next))
    }
}

/// `entry.js`'s pump in Rust: the pipe's first events, then each chunk handed over by reference,
/// with one timer whose length `tick` says.
struct Pump<R> {
    pipe: Pipe,
    body: BodyStream,
    runtime: R,
    started: bool,
    over: bool,
    verdicts: Rc<Verdicts>,
}

impl<R: Runtime> Pump<R> {
    async fn next(mut self) -> Option<(Result<Vec<u8>, BodyError>, Self)> {
        if self.over {
            return None;
        }
        if !self.started {
            self.started = true;
            let first = self.pipe.first();
            if let Some(out) = self.emit(first, &[]) {
                return Some((Ok(out), self));
            }
        }
        while !self.over {
            let since = self.runtime.now_ms();
            let verdict = loop {
                let ms = match self.pipe.tick(self.runtime.now_ms(), Some(since)) {
                    Ok(ms) => ms,
                    Err(verdict) => break (verdict, None),
                };
                match timeout(&self.runtime, ms, self.body.next()).await {
                    None => continue, // the timer fired: ask `tick` again
                    Some(Some(Ok(chunk))) => {
                        let verdict = self.pipe.chunk(&chunk);
                        break (verdict, Some(chunk));
                    }
                    Some(Some(Err(_))) => break (self.pipe.failed(), None),
                    Some(None) => break (self.pipe.closed(), None),
                }
            };
            let (verdict, chunk) = verdict;
            if let Some(out) = self.emit(verdict, chunk.as_deref().unwrap_or_default()) {
                return Some((Ok(out), self));
            }
        }
        None
    }

    /// What to write for `verdict` about `chunk` (nothing: read on, or the end).
    fn emit(&mut self, verdict: Verdict, chunk: &[u8]) -> Option<Vec<u8>> {
        match verdict {
            Verdict::AsIs => {
                self.verdicts.as_is.set(self.verdicts.as_is.get() + 1);
                Some(chunk.to_vec())
            }
            Verdict::Send(out) => {
                self.verdicts.send.set(self.verdicts.send.get() + 1);
                (!out.is_empty()).then_some(out)
            }
            Verdict::End(out) => {
                self.verdicts.end.set(self.verdicts.end.get() + 1);
                self.over = true;
                (!out.is_empty()).then_some(out)
            }
        }
    }
}

/// What the client saw: status, body, the logged end, and how long it took (virtual ms).
#[derive(Debug, PartialEq)]
struct Seen {
    status: u16,
    body: String,
    stream_end: serde_json::Value,
    usage: serde_json::Value,
    elapsed: u64,
}

fn seen(response: Response, runtime: &FakeRuntime, started: u64) -> Seen {
    let (status, _, body) = text(response);
    runtime.run_spawned();
    let line = runtime.records().last().cloned().unwrap_or_default();
    Seen {
        status,
        body,
        stream_end: line["stream_end"].clone(),
        usage: line["usage"].clone(),
        elapsed: runtime.now() - started,
    }
}

/// The same request and backend script through the core's pump and through [`OutsidePump`].
fn both_ways(config: &Config, body: &str, script: impl Fn() -> Script) -> (Seen, Seen, Rc<Verdicts>) {
    let (gw, upstream, runtime) = gateway();
    upstream.push(script());
    let started = runtime.now();
    let inside = seen(run(gw.handle(Ok(config), post_chat(KEY, body))), &runtime, started);

    let runtime = FakeRuntime::default();
    let clock = runtime.clock.clone();
    let store = Rc::new(MemoryStore::new(Box::new(move || clock.now.get()) as Box<dyn Fn() -> u64>));
    let outside = OutsidePump::default();
    outside.inner.push(script());
    let verdicts = outside.verdicts.clone();
    let gw = Gateway::new(outside, store, runtime.clone());
    let started = runtime.now();
    let pumped = seen(run(gw.handle(Ok(config), post_chat(KEY, body))), &runtime, started);
    (inside, pumped, verdicts)
}

fn timeouts() -> Config {
    config_with_all(&[
        ("GATEWAY_FIRST_BYTE_TIMEOUT_MS", "2500"),
        ("GATEWAY_IDLE_TIMEOUT_MS", "1500"),
        ("GATEWAY_TOTAL_TIMEOUT_MS", "4000"),
    ])
}

fn sse_answer(chunks: Vec<(u64, Result<Vec<u8>, BodyError>)>) -> Script {
    Script::Answer { status: 200, headers: vec![("content-type", "text/event-stream")], after_ms: 0, chunks }
}

#[test]
fn whole_events_are_forwarded_as_the_caller_holds_them() {
    let (inside, outside, verdicts) = both_ways(&config(), STREAM, || Script::sse(&[ROLE, TOKEN, TOKEN, USAGE, DONE]));
    assert_eq!(outside, inside);
    assert_eq!(outside.body, format!("{ROLE}{TOKEN}{TOKEN}{DONE}"), "the usage chunk is dropped");
    assert_eq!(outside.stream_end, "done");
    assert_eq!(verdicts.as_is.get(), 2, "each whole token chunk goes on as it came, without a copy");
}

#[test]
fn every_scenario_gives_the_client_what_the_cores_own_pump_gives() {
    let with_usage = STREAM.replace("\"stream\":true", "\"stream\":true,\"stream_options\":{\"include_usage\":true}");
    let token = |gap| (gap, Ok(TOKEN.as_bytes().to_vec()));
    type Case<'a> = (&'a str, &'a str, Box<dyn Fn() -> Script>, &'a str);
    let split = |parts: Vec<String>| move || Script::sse(&parts.iter().map(String::as_str).collect::<Vec<_>>());
    let cases: Vec<Case> = vec![
        ("usage kept when asked", &with_usage, Box::new(|| Script::sse(&[ROLE, TOKEN, USAGE, DONE])), "done"),
        (
            "an event split in three",
            STREAM,
            Box::new(split(vec![ROLE.into(), TOKEN[..9].into(), TOKEN[9..30].into(), TOKEN[30..].into(), DONE.into()])),
            "done",
        ),
        ("everything in one chunk", STREAM, Box::new(split(vec![format!("{ROLE}{TOKEN}{USAGE}{DONE}")])), "done"),
        (
            "done mid-chunk with a tail",
            STREAM,
            Box::new(split(vec![ROLE.into(), format!("{TOKEN}{DONE}data: {{\"late\":1}}\n\n")])),
            "done",
        ),
        (
            "the backend's error event",
            STREAM,
            Box::new(|| Script::sse(&[ROLE, TOKEN, BACKEND_ERROR, TOKEN, DONE])),
            "upstream_error",
        ),
        (
            "a malformed event",
            STREAM,
            Box::new(|| Script::sse(&[ROLE, TOKEN, "data: {not json\n\n", DONE])),
            "upstream_error",
        ),
        ("an unknown field", STREAM, Box::new(|| Script::sse(&[ROLE, "bogus: 1\n\n", DONE])), "upstream_error"),
        ("no done", STREAM, Box::new(|| Script::sse(&[ROLE, TOKEN])), "upstream_error"),
        (
            "a reset mid-stream",
            STREAM,
            Box::new(move || {
                sse_answer(vec![(0, Ok(ROLE.into())), token(0), (0, Err(BodyError("connection reset".into())))])
            }),
            "upstream_error",
        ),
        (
            "idle past the limit",
            STREAM,
            Box::new(move || sse_answer(vec![(0, Ok(ROLE.into())), token(200), token(1_600)])),
            "timeout",
        ),
        (
            "past the total deadline",
            STREAM,
            Box::new(move || {
                sse_answer(vec![(0, Ok(ROLE.into())), token(900), token(900), token(900), token(900), token(900)])
            }),
            "timeout",
        ),
        ("a stream gone silent", STREAM, Box::new(|| Script::StreamThenStall(vec![ROLE, TOKEN])), "timeout"),
    ];
    for (name, body, script, end) in cases {
        let (inside, outside, _) = both_ways(&timeouts(), body, script);
        assert_eq!(outside, inside, "{name}");
        assert_eq!(outside.stream_end, end, "{name}");
    }
}

#[test]
fn a_stream_split_at_every_byte_offset_arrives_whole_and_unchanged() {
    let stream = format!("{ROLE}{TOKEN}{USAGE}{TOKEN}{DONE}");
    let expected = format!("{ROLE}{TOKEN}{TOKEN}{DONE}");
    for at in 1..stream.len() {
        let (a, b) = stream.split_at(at);
        let (inside, outside, _) = both_ways(&config(), STREAM, || Script::sse(&[a, b]));
        assert_eq!(outside, inside, "split at {at}");
        assert_eq!(outside.body, expected, "split at {at}");
    }
}

#[test]
fn an_event_past_the_size_cap_ends_the_stream_with_an_error_event() {
    let huge = format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}", "x".repeat(5 << 20));
    let (inside, outside, _) = both_ways(&config(), STREAM, || Script::sse(&[ROLE, &huge]));
    assert_eq!(outside, inside);
    assert!(outside.body.starts_with(ROLE) && outside.body.contains("upstream_error"), "{}", &outside.body[..200]);
}

#[test]
fn tick_counts_idle_time_only_while_the_pump_waits_on_the_backend() {
    let (gw, upstream, _) = {
        let runtime = FakeRuntime::default();
        let clock = runtime.clock.clone();
        let store = Rc::new(MemoryStore::new(Box::new(move || clock.now.get()) as Box<dyn Fn() -> u64>));
        let upstream = Capture::default();
        (Gateway::new(upstream.clone(), store, runtime.clone()), upstream, runtime)
    };
    upstream.inner.push(Script::sse(&[ROLE, TOKEN, DONE]));
    let response = run(gw.handle(Ok(&timeouts()), post_chat(KEY, STREAM)));
    assert_eq!(response.status, 200);
    let mut pipe = upstream.pipe.take().expect("the relay was handed over");
    let now = T0 + 100;
    assert_eq!(pipe.tick(now, Some(now)), Ok(1_500), "waiting on the backend: the idle limit");
    assert_eq!(pipe.tick(now + 1_499, Some(now)), Ok(1));
    // Not waiting on the backend (the client is not reading): only the total deadline counts.
    assert_eq!(pipe.tick(now + 1_600, None), Ok(4_000 - 1_600 - 100));
    let Err(Verdict::End(event)) = pipe.tick(now + 1_500, Some(now)) else { panic!("idle ran out") };
    assert!(String::from_utf8(event).unwrap().contains("upstream_timeout"));
    assert_eq!(pipe.chunk(TOKEN.as_bytes()), Verdict::End(Vec::new()), "nothing after the end");
}

#[test]
fn a_pipe_dropped_before_its_end_is_the_client_leaving() {
    let runtime = FakeRuntime::default();
    let clock = runtime.clock.clone();
    let store = Rc::new(MemoryStore::new(Box::new(move || clock.now.get()) as Box<dyn Fn() -> u64>));
    let upstream = Capture::default();
    let gw = Gateway::new(upstream.clone(), store, runtime.clone());
    upstream.inner.push(Script::sse(&[ROLE, TOKEN, TOKEN, DONE]));
    let response = run(gw.handle(Ok(&config()), post_chat(KEY, STREAM)));
    let mut pipe = upstream.pipe.take().expect("the relay was handed over");
    assert!(matches!(pipe.first(), Verdict::Send(first) if first == ROLE.as_bytes()));
    assert_eq!(pipe.chunk(TOKEN.as_bytes()), Verdict::AsIs);
    drop(pipe);
    drop(response);
    runtime.run_spawned();
    let line = runtime.records().last().cloned().unwrap();
    assert_eq!(line["stream_end"], "client_closed");
    assert_eq!(upstream.inner.closed.get(), 1, "the backend's body was let go of");
}

/// Keeps the pipe of the relay it is handed, for a test to drive by hand.
#[derive(Clone, Default)]
struct Capture {
    inner: FakeUpstream,
    pipe: Rc<std::cell::RefCell<Option<Pipe>>>,
}

impl Upstream for Capture {
    async fn send(&self, request: UpstreamRequest) -> Result<UpstreamResponse, ConnectError> {
        self.inner.send(request).await
    }

    fn relay<R: Runtime + 'static>(&self, pipe: Pipe, _body: BodyStream, _runtime: R) -> BodyStream {
        *self.pipe.borrow_mut() = Some(pipe);
        Box::pin(futures::stream::empty())
    }
}
