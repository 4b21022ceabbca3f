//! Shared state: the configuration, the stream and request counters, and the
//! recorded generation requests that tests read back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use serde_json::{json, Map, Value};

use crate::cli::Config;
use crate::request::Request;
use crate::response_store::ResponseStore;

pub(crate) struct State {
    pub(crate) config: Config,
    pub(crate) next_id: AtomicU64,
    pub(crate) stats: Stats,
    /// Responses API responses created with `store`.
    pub(crate) responses: ResponseStore,
    last_request: Mutex<Option<Value>>,
    /// Recent generation requests by their `x-request-id`, oldest first, for tests running in
    /// parallel.
    by_request_id: Mutex<std::collections::VecDeque<(String, Value)>>,
}

/// How many requests `/mock/requests/{id}` remembers.
const REMEMBERED_REQUESTS: usize = 4096;

#[derive(Default)]
pub(crate) struct Stats {
    requests: AtomicU64,
    open_streams: AtomicU64,
    max_open_streams: AtomicU64,
    client_disconnects: AtomicU64,
    /// Non-stream generations being waited out (a gauge, like `open_streams`).
    non_stream_in_progress: AtomicU64,
    /// `GET /health` calls (readiness probes).
    health_checks: AtomicU64,
}

impl State {
    pub(crate) fn new(config: Config) -> Self {
        Self {
            config,
            next_id: AtomicU64::new(1),
            stats: Stats::default(),
            responses: ResponseStore::default(),
            last_request: Mutex::new(None),
            by_request_id: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// Counts a generation request (`POST` to chat, completions, embeddings or responses)
    /// and remembers it for `/mock/last-request` and `/mock/requests/{id}`.
    pub(crate) fn record_request(&self, request: &Request) {
        self.stats.requests.fetch_add(1, Ordering::SeqCst);
        let mut headers = Map::new();
        for (name, value) in &request.headers {
            match headers.get_mut(name) {
                Some(Value::String(joined)) => {
                    joined.push_str(", ");
                    joined.push_str(value);
                }
                _ => {
                    headers.insert(name.clone(), Value::String(value.clone()));
                }
            }
        }
        let body = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let record = json!({"method": request.method, "path": request.path, "headers": headers, "body": body});
        if let Some(id) = request.header("x-request-id") {
            let mut recent = self.by_request_id.lock().unwrap_or_else(PoisonError::into_inner);
            if recent.len() == REMEMBERED_REQUESTS {
                recent.pop_front();
            }
            recent.push_back((id.to_string(), record.clone()));
        }
        *self.last_request.lock().unwrap_or_else(PoisonError::into_inner) = Some(record);
    }

    /// The recorded request that carried `x-request-id: id`, if it is still remembered.
    pub(crate) fn request_by_id(&self, id: &str) -> Option<Value> {
        let recent = self.by_request_id.lock().unwrap_or_else(PoisonError::into_inner);
        recent.iter().rev().find(|(seen, _)| seen == id).map(|(_, record)| record.clone())
    }

    pub(crate) fn last_request(&self) -> Value {
        let last = self.last_request.lock().unwrap_or_else(PoisonError::into_inner);
        last.clone().unwrap_or_else(|| json!({"path": null, "headers": {}, "body": null}))
    }
}

impl Stats {
    pub(crate) fn snapshot(&self) -> Value {
        json!({
            "requests": self.requests.load(Ordering::SeqCst),
            "open_streams": self.open_streams.load(Ordering::SeqCst),
            "max_open_streams": self.max_open_streams.load(Ordering::SeqCst),
            "client_disconnects": self.client_disconnects.load(Ordering::SeqCst),
            "non_stream_in_progress": self.non_stream_in_progress.load(Ordering::SeqCst),
            "health_checks": self.health_checks.load(Ordering::SeqCst),
        })
    }

    /// Zeroes the counters; the gauges (`open_streams`, `non_stream_in_progress`)
    /// are kept, and `open_streams` becomes the new high-water mark.
    pub(crate) fn reset(&self) {
        self.requests.store(0, Ordering::SeqCst);
        self.client_disconnects.store(0, Ordering::SeqCst);
        self.health_checks.store(0, Ordering::SeqCst);
        self.max_open_streams.store(self.open_streams.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    pub(crate) fn health_checked(&self) {
        self.health_checks.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn client_disconnected(&self) {
        self.client_disconnects.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn stream_opened(&self) -> OpenStream<'_> {
        let open = self.open_streams.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_open_streams.fetch_max(open, Ordering::SeqCst);
        OpenStream(self)
    }

    pub(crate) fn generation_started(&self) -> Generating<'_> {
        self.non_stream_in_progress.fetch_add(1, Ordering::SeqCst);
        Generating(self)
    }
}

/// Keeps `non_stream_in_progress` raised while a non-stream generation is waited out.
pub(crate) struct Generating<'a>(&'a Stats);

impl Drop for Generating<'_> {
    fn drop(&mut self) {
        self.0.non_stream_in_progress.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Keeps `open_streams` raised while a stream is being written.
pub(crate) struct OpenStream<'a>(&'a Stats);

impl Drop for OpenStream<'_> {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::SeqCst);
    }
}
