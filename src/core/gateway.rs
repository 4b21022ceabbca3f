//! The request pipeline, top to bottom: route, CORS, request id, authenticate, read, validate,
//! admit, proxy, account. Adapters call [`Gateway::handle`] and translate the [`Response`] back.

use super::auth::{authenticate, Authenticated};
use super::config::{Config, ConfigError};
use super::cors;
use super::error::GatewayError;
use super::health::{healthz_body, readiness};
use super::http::{read_capped, Body, Request, Response};
use super::limits::{format_duration, retry_after_seconds, Decision, Rule, Take};
use super::log::LogRecord;
use super::openai::ModelList;
use super::proxy::{send_chat, upstream_request, Relayed, StreamEnd};
use super::request_id::request_id;
use super::route::{route, Route};
use super::runtime::Runtime;
use super::store::LimitStore;
use super::upstream::Upstream;
use super::validate::validate_chat;
use std::cell::Cell;
use std::rc::Rc;

/// The core, wired to one platform's upstream, limit store and runtime.
pub struct Gateway<U, S, R> {
    pub upstream: U,
    pub store: S,
    pub runtime: R,
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
    S: LimitStore,
    R: Runtime + Clone + 'static,
{
    pub fn new(upstream: U, store: S, runtime: R) -> Self {
        Gateway { upstream, store, runtime }
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
            Route::Readyz => {
                let readiness = readiness(config, &self.upstream, &self.runtime).await;
                let body = serde_json::to_vec(&readiness).unwrap_or_default();
                Ok(Handled::now(Response::json(readiness.http_status(), body)))
            }
            Route::Models => {
                let caller = authenticate(&request.headers, &config.api_keys)?;
                record.key_id = Some(caller.key.id.clone());
                Ok(Handled::now(list_models(config, caller)))
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
        let caller = authenticate(&request.headers, &config.api_keys)?;
        record.key_id = Some(caller.key.id.clone());

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
        if !caller.key.models.allows(&chat.model) {
            return Err(GatewayError::ModelNotFound { model: chat.model });
        }
        let Some(backend) = config.backends_for(&chat.model).next() else {
            return Err(GatewayError::ModelNotFound { model: chat.model });
        };

        self.admit(caller, config.limits_fail_open, limits).await?;

        record.backend = Some(backend.name.clone());
        let upstream_req = upstream_request(backend, &chat, &request.headers, &record.request_id);
        // Known only once the backend answers, but needed when the stream (created before) ends.
        let ttfb = Rc::new(Cell::new(None));
        let on_end = {
            let runtime = self.runtime.clone();
            let mut stream_record = record.clone();
            let ttfb = ttfb.clone();
            Box::new(move |end: StreamEnd, usage| {
                stream_record.status = 200;
                stream_record.ttfb_ms = ttfb.get();
                stream_record.usage = usage;
                stream_record.stream_end = Some(match end {
                    StreamEnd::Done => "done",
                    StreamEnd::UpstreamError => "upstream_error",
                    StreamEnd::ClientClosed => "client_closed",
                });
                if end == StreamEnd::UpstreamError {
                    stream_record.error = Some("upstream_error");
                }
                stream_record.latency_ms = runtime.now_ms().saturating_sub(stream_record.ts);
                runtime.log(&stream_record.to_line());
            })
        };
        let relayed = send_chat(
            &self.upstream,
            &self.runtime,
            upstream_req,
            &chat,
            config.timeouts.first_byte_ms,
            on_end,
        );
        let relayed = relayed.await?;
        record.ttfb_ms = Some(self.runtime.now_ms().saturating_sub(record.ts));
        ttfb.set(record.ttfb_ms);
        let (response, log_deferred) = match relayed {
            Relayed::Completion { body, usage } => {
                record.usage = usage;
                (Response::json(200, body), false)
            }
            Relayed::Stream { body } => {
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
        caller: Authenticated<'_>,
        fail_open: bool,
        limits: &mut Vec<(LimitKind, Decision)>,
    ) -> Result<(), GatewayError> {
        let Some(rpm) = caller.key.requests_per_minute else { return Ok(()) };
        let takes = [Take { bucket: "requests".into(), rule: Rule::per_minute(rpm), cost: 1 }];
        let scope = format!("key:{}", caller.key.id);
        let decisions = match self.store.take(&scope, &takes).await {
            Ok(decisions) => decisions,
            Err(e) if fail_open => {
                self.runtime.log(&format!(
                    r#"{{"level":"warn","event":"limit_store_unavailable","admitted":true,"detail":{}}}"#,
                    serde_json::Value::from(e.0)
                ));
                return Ok(());
            }
            Err(e) => {
                return Err(GatewayError::Internal {
                    message: "The rate-limit store is unavailable; please retry.".into(),
                    detail: format!("limit store: {}", e.0),
                })
            }
        };
        limits.extend(decisions.into_iter().map(|d| (LimitKind::Requests, d)));
        if let Some((_, refused)) = limits.iter().find(|(_, d)| !d.allowed) {
            return Err(GatewayError::RateLimited {
                limit: super::error::RateLimitKind::Requests,
                retry_after_ms: refused.retry_after_ms,
                // The OpenAI SDKs give up on waits over two minutes; say so rather than make them try.
                will_refill_soon: refused.retry_after_ms <= 120_000,
            });
        }
        Ok(())
    }
}

/// Which `x-ratelimit-*` family a decision reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
}

impl LimitKind {
    fn suffix(self) -> &'static str {
        match self {
            LimitKind::Requests => "requests",
        }
    }
}

/// `x-ratelimit-*` headers, as OpenAI sends them, for every budget the request was checked against.
fn set_rate_limit_headers(response: &mut Response, decisions: &[(LimitKind, Decision)]) {
    for (kind, d) in decisions {
        let suffix = kind.suffix();
        response.headers.set(&format!("x-ratelimit-limit-{suffix}"), d.limit.to_string());
        response.headers.set(&format!("x-ratelimit-remaining-{suffix}"), d.remaining.to_string());
        response.headers.set(&format!("x-ratelimit-reset-{suffix}"), format_duration(d.reset_ms));
    }
}

fn list_models(config: &Config, caller: Authenticated<'_>) -> Response {
    let models = config
        .served_models()
        .into_iter()
        .filter(|m| caller.key.models.allows(m))
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
