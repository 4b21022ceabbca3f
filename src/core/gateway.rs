//! The request pipeline, top to bottom: route, CORS, request id, authenticate, read, validate,
//! admit, proxy, account. Adapters call [`Gateway::handle`] and translate the [`Response`] back.

use super::admission::{LimitKind, Plan, Settler};
use super::auth::{identify, Caller};
use super::config::{Config, ConfigError};
use super::cors;
use super::error::GatewayError;
use super::health::{healthz_body, readiness};
use super::http::{read_capped, Body, Request, Response};
use super::limits::{format_duration, retry_after_seconds, Decision};
use super::log::LogRecord;
use super::openai::ModelList;
use super::balance::{attempt_order, HealthBook};
use super::config::Backend;
use super::proxy::{send_chat, upstream_request, Attempts, Deadlines, OnStreamEnd, Relayed, StreamEnd, StreamSummary};
use super::request_id::request_id;
use super::route::{route, Route};
use super::runtime::Runtime;
use super::store::LimitStore;
use super::upstream::Upstream;
use super::validate::{validate_chat, ValidatedChat};
use futures::future::{select, Either};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// The core, wired to one platform's upstream, limit store and runtime.
pub struct Gateway<U, S, R> {
    pub upstream: U,
    pub store: S,
    pub runtime: R,
    /// Passive backend health; share one across requests for as long as the instance lives.
    pub health: Rc<HealthBook>,
}

/// What a handler produced; a streamed answer logs itself when its stream ends.
struct Handled {
    response: Response,
    log_deferred: bool,
}

impl Handled {
    fn now(response: Response) -> Self {
        Handled { response, log_deferred: false }
    }
}

impl<U, S, R> Gateway<U, S, R>
where
    U: Upstream,
    S: LimitStore + Clone + 'static,
    R: Runtime + Clone + 'static,
{
    pub fn new(upstream: U, store: S, runtime: R) -> Self {
        Gateway { upstream, store, runtime, health: Rc::new(HealthBook::default()) }
    }

    /// Uses `health` (kept by the adapter across requests) instead of a fresh book.
    pub fn with_health(mut self, health: Rc<HealthBook>) -> Self {
        self.health = health;
        self
    }

    /// Answers one request. Never panics; every failure is an OpenAI-shaped error.
    pub async fn handle(&self, config: Result<&Config, &ConfigError>, request: Request) -> Response {
        let mut random = [0u8; 16];
        self.runtime.fill_random(&mut random);
        let mut record = LogRecord {
            ts: self.runtime.now_ms(),
            request_id: request_id(&request.headers, random),
            method: request.method.clone(),
            path: request.path.chars().take(200).collect(),
            ..LogRecord::default()
        };
        let origin = request.headers.get("origin").map(str::to_owned);
        let mut limits = Vec::new();

        let handled = match config {
            Err(e) => Handled::now(error_response(&GatewayError::Config { message: e.0.clone() }, &mut record)),
            Ok(config) => match self.dispatch(config, request, &mut record, &mut limits).await {
                Ok(handled) => handled,
                Err(e) => Handled::now(error_response(&e, &mut record)),
            },
        };

        let mut response = handled.response;
        response.headers.set("x-request-id", record.request_id.clone());
        set_rate_limit_headers(&mut response, &limits);
        if let (Ok(config), Some(origin)) = (config, origin.as_deref()) {
            let request_headers = [("origin".to_string(), origin.to_string())].into_iter().collect();
            if let Some(origin) = cors::allowed_origin(&config.cors, &request_headers) {
                cors::grant(&mut response.headers, origin);
            }
        }
        if !handled.log_deferred {
            record.status = response.status;
            record.latency_ms = self.runtime.now_ms().saturating_sub(record.ts);
            self.runtime.log(&record.to_line());
        }
        response
    }

    async fn dispatch(
        &self,
        config: &Config,
        request: Request,
        record: &mut LogRecord,
        limits: &mut Vec<(LimitKind, Decision)>,
    ) -> Result<Handled, GatewayError> {
        match route(&request.method, &request.path)? {
            Route::Preflight => Ok(Handled::now(cors::preflight(&config.cors, &request.headers, &request.path))),
            Route::Healthz => Ok(Handled::now(Response::json(200, healthz_body()))),
            Route::Playground(asset) if config.playground => Ok(Handled::now(asset.response())),
            Route::Playground(_) => Err(GatewayError::NotFound { path: request.path.clone() }),
            Route::Readyz => {
                let readiness = readiness(config, &self.upstream, &self.runtime, &self.health).await;
                let body = serde_json::to_vec(&readiness).unwrap_or_default();
                Ok(Handled::now(Response::json(readiness.http_status(), body)))
            }
            Route::Models => {
                let caller = identify(&request.headers, request.client_ip.as_deref(), config, self.runtime.now_ms())?;
                record.key_id = Some(caller.id.to_string());
                Ok(Handled::now(list_models(config, &caller)))
            }
            Route::ChatCompletions => self.chat_completions(config, request, record, limits).await,
        }
    }

    async fn chat_completions(
        &self,
        config: &Config,
        mut request: Request,
        record: &mut LogRecord,
        limits: &mut Vec<(LimitKind, Decision)>,
    ) -> Result<Handled, GatewayError> {
        let caller = identify(&request.headers, request.client_ip.as_deref(), config, self.runtime.now_ms())?;
        record.key_id = Some(caller.id.to_string());

        let limit = config.limits.max_body_bytes;
        let body = read_capped(&mut request.body, limit).await.map_err(|e| match e {
            None => GatewayError::RequestTooLarge { limit_bytes: limit },
            Some(_) => GatewayError::InvalidRequest {
                message: "The request body could not be read.".into(),
                param: None,
                code: None,
            },
        })?;
        let chat = validate_chat(&body, &config.limits)?;
        record.model = Some(chat.model.clone());
        record.stream = Some(chat.stream);
        if !caller.models.allows(&chat.model) {
            return Err(GatewayError::ModelNotFound { model: chat.model });
        }
        let mut random = [0u8; 8];
        self.runtime.fill_random(&mut random);
        let now = self.runtime.now_ms();
        let backends = attempt_order(config, &chat.model, &self.health, now, u64::from_le_bytes(random))?;

        // Settled exactly once: by the stream's end, by the completion's usage, or (dropped on
        // any failure before that) as "nothing used".
        let settler = self.admit(&caller, &chat, config, &record.request_id, limits).await?;
        let settler = Rc::new(RefCell::new(settler));

        let request_id = record.request_id.clone();
        let build = |backend: &Backend| upstream_request(backend, &chat, &request.headers, &request_id);
        // Known only once the backend answers, but needed when the stream (created before) ends.
        let ttfb = Rc::new(Cell::new(None));
        let served_by: Rc<RefCell<(Option<String>, Option<u32>)>> = Rc::default();
        let finish = {
            let runtime = self.runtime.clone();
            let mut stream_record = record.clone();
            let ttfb = ttfb.clone();
            let served_by = served_by.clone();
            let settler = settler.clone();
            move |summary: StreamSummary| {
                if let Some(settler) = settler.borrow_mut().take() {
                    let used = match summary.usage {
                        Some(usage) => usage.total_tokens,
                        None => settler.charge_for_partial_stream(summary.content_events),
                    };
                    settler.settle(used);
                }
                stream_record.status = 200;
                stream_record.ttfb_ms = ttfb.get();
                (stream_record.backend, stream_record.attempts) = served_by.borrow().clone();
                stream_record.usage = summary.usage;
                stream_record.stream_end = Some(match summary.end {
                    StreamEnd::Done => "done",
                    StreamEnd::UpstreamError => "upstream_error",
                    StreamEnd::ClientClosed => "client_closed",
                });
                if summary.end == StreamEnd::UpstreamError {
                    stream_record.error = Some("upstream_error");
                }
                stream_record.latency_ms = runtime.now_ms().saturating_sub(stream_record.ts);
                runtime.log(&stream_record.to_line());
            }
        };
        // The stream's end is reported once, by whichever comes first: the relay itself, or the
        // platform saying the client left (when it stops polling instead of dropping the stream).
        let finish: Rc<RefCell<Option<OnStreamEnd>>> = Rc::new(RefCell::new(Some(Box::new(finish))));
        let (ended_tx, ended_rx) = futures::channel::oneshot::channel::<()>();
        let on_end = {
            let finish = finish.clone();
            Box::new(move |summary: StreamSummary| {
                let _ = ended_tx.send(());
                if let Some(finish) = finish.borrow_mut().take() {
                    finish(summary);
                }
            })
        };
        let timeouts = &config.timeouts;
        let deadlines = Deadlines {
            connect_ms: timeouts.connect_ms,
            first_byte_ms: timeouts.first_byte_ms,
            idle_ms: timeouts.idle_ms,
            total_ms: timeouts.total_ms,
        };
        let attempts =
            Attempts { backends: &backends, max: config.max_attempts, health: &self.health, breaker: config.breaker };
        let (relayed, backend, tried) =
            send_chat(&self.upstream, &self.runtime, attempts, &build, &chat, deadlines, on_end).await?;
        record.backend = Some(backend.name.clone());
        record.attempts = Some(tried);
        *served_by.borrow_mut() = (record.backend.clone(), record.attempts);
        record.ttfb_ms = Some(self.runtime.now_ms().saturating_sub(record.ts));
        ttfb.set(record.ttfb_ms);
        let (response, log_deferred) = match relayed {
            Relayed::Completion { body, usage } => {
                record.usage = usage;
                if let Some(settler) = settler.borrow_mut().take() {
                    // A backend that reports no usage is charged the estimate it was admitted on.
                    let used = usage.map_or(chat.token_estimate(), |u| u.total_tokens);
                    settler.settle(used);
                }
                (Response::json(200, body), false)
            }
            Relayed::Stream { body, relayed } => {
                if let Some(disconnected) = request.disconnected.take() {
                    self.runtime.spawn(Box::pin(async move {
                        if let Either::Left(_) = select(disconnected, ended_rx).await {
                            let summary = StreamSummary { end: StreamEnd::ClientClosed, usage: None, content_events: relayed.get() };
                            let finish = finish.borrow_mut().take();
                            if let Some(finish) = finish {
                                finish(summary);
                            }
                        }
                    }));
                }
                let mut response = Response { status: 200, headers: Default::default(), body: Body::Stream(body) };
                response.headers.set("content-type", "text/event-stream");
                response.headers.set("cache-control", "no-cache");
                response.headers.set("x-accel-buffering", "no");
                (response, true)
            }
        };
        Ok(Handled { response, log_deferred })
    }

    /// Takes this request from the caller's budgets in the consistent store (one atomic step).
    /// The decisions are kept in `limits` so refused and admitted answers both report them.
    async fn admit(
        &self,
        caller: &Caller<'_>,
        chat: &ValidatedChat,
        config: &Config,
        request_id: &str,
        limits: &mut Vec<(LimitKind, Decision)>,
    ) -> Result<Option<Settler<S, R>>, GatewayError> {
        // A slot outlives the longest request by a margin, so only a lost release lets it expire.
        let lease_ttl_ms = config.timeouts.total_ms.saturating_add(60_000);
        let plan = Plan::new(caller.limits, chat, request_id, lease_ttl_ms);
        if plan.is_empty() {
            return Ok(None);
        }
        let admitted = match self.store.admit(&caller.scope, &plan.admission).await {
            Ok(admitted) => admitted,
            Err(e) if config.limits_fail_open => {
                self.runtime.log(&format!(
                    r#"{{"level":"warn","event":"limit_store_unavailable","admitted":true,"detail":{}}}"#,
                    serde_json::Value::from(e.0)
                ));
                return Ok(None);
            }
            Err(e) => {
                return Err(GatewayError::Internal {
                    message: "The rate-limit store is unavailable; please retry.".into(),
                    detail: format!("limit store: {}", e.0),
                })
            }
        };
        let (decisions, refusal) = plan.outcome(&admitted);
        limits.extend(decisions);
        match refusal {
            Some(error) => Err(error),
            None => Ok(Some(plan.settler(
                self.store.clone(),
                self.runtime.clone(),
                caller.scope.clone(),
                chat.prompt_estimate(),
            ))),
        }
    }
}

/// `x-ratelimit-*` headers, as OpenAI sends them, for every budget the request was checked against.
fn set_rate_limit_headers(response: &mut Response, decisions: &[(LimitKind, Decision)]) {
    for (kind, d) in decisions {
        let Some(suffix) = kind.header_suffix() else { continue };
        response.headers.set(&format!("x-ratelimit-limit-{suffix}"), d.limit.to_string());
        response.headers.set(&format!("x-ratelimit-remaining-{suffix}"), d.remaining.to_string());
        response.headers.set(&format!("x-ratelimit-reset-{suffix}"), format_duration(d.reset_ms));
    }
}

fn list_models(config: &Config, caller: &Caller<'_>) -> Response {
    let models = config
        .served_models()
        .into_iter()
        .filter(|m| caller.models.allows(m))
        .map(str::to_owned);
    Response::json(200, serde_json::to_vec(&ModelList::new(models)).unwrap_or_default())
}

/// Renders an error and notes it in the log record.
fn error_response(error: &GatewayError, record: &mut LogRecord) -> Response {
    record.error = error.code();
    record.detail = error.detail().map(str::to_owned);
    let mut response = Response::json(error.status(), error.to_json());
    match error {
        GatewayError::RateLimited { retry_after_ms, will_refill_soon, .. } => {
            response.headers.set("retry-after", retry_after_seconds(*retry_after_ms).to_string());
            response.headers.set("retry-after-ms", retry_after_ms.to_string());
            if !will_refill_soon {
                response.headers.set("x-should-retry", "false");
            }
        }
        GatewayError::UpstreamBusy { retry_after_s } => {
            let seconds = retry_after_s.unwrap_or(1).max(1);
            response.headers.set("retry-after", seconds.to_string());
            response.headers.set("retry-after-ms", (seconds * 1000).to_string());
        }
        GatewayError::MethodNotAllowed { path, .. } => {
            response.headers.set("allow", super::route::allowed_methods(path));
        }
        _ => {}
    }
    response
}
