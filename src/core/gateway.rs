//! The request pipeline, top to bottom: route, CORS, request id and trace, authenticate, read,
//! validate, admit, route upstream, proxy, account. Adapters call [`Gateway::handle`] and
//! translate the [`Response`] back.

use crate::core::account::{settle_completion, settle_failure, StreamAccount};
use crate::core::auth::{identify, Caller};
use crate::core::config::Backend;
use crate::core::config::{Config, ConfigError};
use crate::core::cors;
use crate::core::error::{GatewayError, RateLimitKind};
use crate::core::http::{read_capped, Disconnected, Headers, ReadError, Request, Response};
use crate::core::log::{self, LogRecord, Metrics, NoMetrics};
use crate::core::openai::{format_duration, Endpoint, Model, ModelList};
use crate::core::rate_limit::gcra::Decision;
use crate::core::rate_limit::plan::{Plan, Settler};
use crate::core::rate_limit::store::{self, LimitStore, StoreError};
use crate::core::request_id::{hex, RequestIds};
use crate::core::route::{route, Route};
use crate::core::runtime::Runtime;
use crate::core::trace::TraceContext;
use crate::core::upstream::balance::{attempt_order, HealthBook};
use crate::core::upstream::proxy::{self, Answered, Attempts, Candidate, Exchange, Forwarded, Relayed};
use crate::core::upstream::readiness::{healthz_body, readiness, MemoryProbeCache, ProbeCache};
use crate::core::upstream::relay::{StreamEnd, StreamEnding};
use crate::core::upstream::stored;
use crate::core::upstream::Upstream;
use crate::core::validate::{self, Validated};
use futures::future::{select, Either};
use std::rc::Rc;

/// The core, wired to one platform's upstream, limit store, runtime and probe cache.
pub struct Gateway<U, S, R, P = Rc<MemoryProbeCache>> {
    pub upstream: U,
    pub store: S,
    pub runtime: R,
    /// Passive backend health; share one across requests for as long as the instance lives.
    pub health: Rc<HealthBook>,
    /// Where `/readyz` keeps its last probe round.
    pub probes: P,
    /// Where each request's final record goes besides the log line.
    pub metrics: Rc<dyn Metrics>,
}

/// What one request is, as every step sees it.
struct Context {
    ids: RequestIds,
    trace: TraceContext,
    /// Names the request's in-flight lease: random, never the caller's request id.
    lease_id: String,
    record: LogRecord,
    /// Every budget the request was checked against, for the `x-ratelimit-*` headers.
    decisions: Vec<(RateLimitKind, Decision)>,
}

impl Context {
    /// The request's ids, trace and log record, from one draw of randomness.
    fn new<R: Runtime>(runtime: &R, request: &Request) -> Context {
        let mut random = [0u8; 56];
        runtime.fill_random(&mut random);
        let (id_random, rest) = random.split_at(16);
        let (trace_random, lease_random) = rest.split_at(24);
        let ids = RequestIds::new(&request.headers, id_random.try_into().unwrap_or_default());
        let trace = TraceContext::new(&request.headers, trace_random.try_into().unwrap_or([1; 24]));
        let record = LogRecord {
            ts: runtime.now_ms(),
            request_id: ids.client.clone(),
            upstream_request_id: ids.upstream_if_different().map(str::to_owned),
            trace_id: trace.trace_id.clone(),
            span_id: trace.span_id.clone(),
            method: request.method.clone(),
            path: request.path.chars().take(200).collect(),
            ..LogRecord::default()
        };
        Context { ids, trace, lease_id: hex(lease_random), record, decisions: Vec::new() }
    }
}

/// What a handler produced; a streamed answer logs itself when its stream ends, which must be
/// by its deadline (ms on the runtime's clock).
struct Handled {
    response: Response,
    stream: Option<(StreamEnding, u64)>,
}

impl From<Response> for Handled {
    fn from(response: Response) -> Self {
        Handled { response, stream: None }
    }
}

impl<U, S, R> Gateway<U, S, R>
where
    U: Upstream + Clone + 'static,
    S: LimitStore + Clone + 'static,
    R: Runtime + Clone + 'static,
{
    pub fn new(upstream: U, store: S, runtime: R) -> Self {
        let health = Rc::new(HealthBook::default());
        Gateway { upstream, store, runtime, health, probes: Rc::default(), metrics: Rc::new(NoMetrics) }
    }
}

impl<U, S, R, P> Gateway<U, S, R, P>
where
    U: Upstream + Clone + 'static,
    S: LimitStore + Clone + 'static,
    R: Runtime + Clone + 'static,
    P: ProbeCache,
{
    /// Uses `health` (kept by the adapter across requests) instead of a fresh book.
    pub fn with_health(mut self, health: Rc<HealthBook>) -> Self {
        self.health = health;
        self
    }

    /// Keeps `/readyz` probe rounds in `probes` (an isolate's memory, or a shared store).
    pub fn with_probes<Q: ProbeCache>(self, probes: Q) -> Gateway<U, S, R, Q> {
        let Gateway { upstream, store, runtime, health, metrics, .. } = self;
        Gateway { upstream, store, runtime, health, probes, metrics }
    }

    /// Sends each request's final record to `metrics` as well as to the log.
    pub fn with_metrics(mut self, metrics: Rc<dyn Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Answers one request. Never panics; every failure is an OpenAI-shaped error. If the client
    /// goes away first (the platform's `disconnected`), everything under way is dropped at once —
    /// the backend request aborted, the in-flight slot released.
    pub async fn handle(&self, config: Result<&Config, &ConfigError>, mut request: Request) -> Response {
        let mut cx = Context::new(&self.runtime, &request);
        let origin: Headers = request.headers.get("origin").map(|o| ("origin".into(), o.into())).into_iter().collect();
        let disconnected = request.disconnected.take();
        let handling = Box::pin(async {
            match config {
                Err(e) => Err(GatewayError::Config { message: e.0.clone() }),
                Ok(config) => self.dispatch(config, request, &mut cx).await,
            }
        });
        let (handled, disconnected) = match disconnected {
            None => (Some(handling.await), None),
            Some(gone) => match select(handling, gone).await {
                Either::Left((handled, gone)) => (Some(handled), Some(gone)),
                // The handler is dropped here, which aborts the backend call and settles the budgets.
                Either::Right(_) => (None, None),
            },
        };
        let Some(handled) = handled else { return self.client_left(&mut cx) };
        let Handled { mut response, stream } = handled.unwrap_or_else(|error| {
            cx.record.error = error.code();
            cx.record.detail = error.detail();
            error.render().into()
        });
        let headers = &mut response.headers;
        headers.set("x-request-id", cx.ids.client.clone());
        headers.set("traceparent", cx.trace.traceparent());
        set_rate_limit_headers(headers, &cx.decisions);
        if let Ok(config) = config {
            cors::apply(&config.cors, &origin, headers);
        }
        match stream {
            None => {
                cx.record.status = response.status;
                self.log(&mut cx.record);
            }
            Some((ending, deadline_ms)) => self.watch(ending, deadline_ms, disconnected),
        }
        response
    }

    /// The client left before its answer: logged as nginx's 499.
    fn client_left(&self, cx: &mut Context) -> Response {
        cx.record.status = 499;
        cx.record.error = Some("client_closed");
        self.log(&mut cx.record);
        Response::empty(499)
    }

    /// A stream logs itself when it ends. It must end by its deadline even if the client stops
    /// reading (nothing polls the relay then), and — on platforms that stop polling a response
    /// whose client left instead of dropping it (workerd) — when the platform says the client is
    /// gone. Either way the backend request is let go of.
    fn watch(&self, ending: StreamEnding, deadline_ms: u64, disconnected: Option<Disconnected>) {
        let runtime = self.runtime.clone();
        let ended = ending.ended();
        self.runtime.spawn(Box::pin(async move {
            let gone = async move {
                match disconnected {
                    Some(gone) => gone.await,
                    None => futures::future::pending().await,
                }
            };
            let late = async {
                runtime.sleep(deadline_ms.saturating_sub(runtime.now_ms())).await;
            };
            match select(select(Box::pin(gone), Box::pin(late)), Box::pin(ended)).await {
                Either::Left((Either::Left(_), _)) => ending.fire(StreamEnd::ClientClosed, None),
                Either::Left((Either::Right(_), _)) => ending.fire(StreamEnd::Timeout, None),
                Either::Right(_) => {}
            }
        }));
    }

    fn log(&self, record: &mut LogRecord) {
        record.latency_ms = self.runtime.now_ms().saturating_sub(record.ts);
        log::finish(&self.runtime, &*self.metrics, record);
    }

    async fn dispatch(&self, config: &Config, request: Request, cx: &mut Context) -> Result<Handled, GatewayError> {
        let route = route(&request.method, &request.path)?;
        cx.record.route = Some(route.name());
        match route {
            Route::Preflight => Ok(cors::preflight(&config.cors, &request.headers, &request.path).into()),
            Route::Healthz => Ok(Response::json(200, healthz_body()).into()),
            Route::Playground(asset) if config.playground => Ok(asset.response().into()),
            Route::Playground(_) => Err(GatewayError::NotFound { path: request.path.clone() }),
            Route::Readyz => {
                let readiness = readiness(config, &self.upstream, &self.runtime, &self.health, &self.probes).await;
                let body = serde_json::to_vec(&readiness).unwrap_or_default();
                Ok(Response::json(readiness.http_status(), body).into())
            }
            Route::Models => {
                let caller = self.authenticate(config, &request, cx)?;
                Ok(list_models(config, &caller).into())
            }
            Route::Model(model) => {
                let caller = self.authenticate(config, &request, cx)?;
                Ok(retrieve_model(config, &caller, model)?.into())
            }
            Route::Generate(endpoint) => self.generate(config, endpoint, request, cx).await,
            Route::StoredResponse => self.stored_response(config, request, cx).await,
        }
    }

    /// `POST` to an endpoint that reaches a model (chat, completions, embeddings, responses),
    /// step by step.
    async fn generate(
        &self,
        config: &Config,
        endpoint: Endpoint,
        mut request: Request,
        cx: &mut Context,
    ) -> Result<Handled, GatewayError> {
        let caller = self.authenticate(config, &request, cx)?;
        let call = self.validate(config, endpoint, &mut request, &caller, cx).await?;
        let estimate = call.token_estimate(config.backends_serving(&call.model), config.caps.max_tokens);
        // Settled exactly once: by the answer's usage, by the stream's end, or when dropped.
        let mut settler = self.admit(&caller, estimate, call.prompt_estimate(), config, cx).await?;
        let backends =
            attempt_order(config, &call.model, &self.health, self.runtime.now_ms(), random_u64(&self.runtime))?;
        if let Some(settler) = settler.as_mut() {
            settler.sent();
        }
        let ending = StreamEnding::new();
        let (relayed, answered) = match self.proxy(config, &call, &backends, cx, ending.clone()).await {
            Ok(sent) => sent,
            Err(error) => {
                settle_failure(settler, &error);
                return Err(error);
            }
        };
        if let Some(Answered { backend, tried }) = answered {
            cx.record.backend = Some(backend);
            cx.record.attempts = Some(tried);
        }
        cx.record.ttfb_ms = Some(self.runtime.now_ms().saturating_sub(cx.record.ts));
        Ok(match relayed {
            Relayed::Completion { body, usage } => {
                settle_completion(settler, usage, (call.prompt_estimate(), estimate), &mut cx.record);
                Response::json(200, body).into()
            }
            Relayed::Stream { body, deadline_ms } => {
                let account = self.stream_account(settler, &call, estimate, &cx.record);
                ending.on_end(Box::new(move |summary| account.ended(summary)));
                Handled { response: Response::event_stream(body), stream: Some((ending, deadline_ms)) }
            }
        })
    }

    fn authenticate<'c>(
        &self,
        config: &'c Config,
        request: &Request,
        cx: &mut Context,
    ) -> Result<Caller<'c>, GatewayError> {
        let caller = identify(&request.headers, request.client_ip.as_deref(), config, self.runtime.now_ms())?;
        cx.record.key_id = Some(caller.id.to_string());
        Ok(caller)
    }

    /// Reads the body (capped), validates it, and checks the caller may use its model — and,
    /// when it needs state a backend keeps, that only one backend serves the model.
    async fn validate(
        &self,
        config: &Config,
        endpoint: Endpoint,
        request: &mut Request,
        caller: &Caller<'_>,
        cx: &mut Context,
    ) -> Result<Validated, GatewayError> {
        let body = read_body(request, config.caps.max_body_bytes).await?;
        let call = validate::validate(endpoint, &body, &config.caps)?;
        cx.record.model = Some(call.model.clone());
        cx.record.stream = Some(call.stream);
        let serving = config.backends_serving(&call.model).count();
        if !caller.models.allows(&call.model) || serving == 0 {
            return Err(GatewayError::ModelNotFound { model: call.model });
        }
        match call.stateful {
            Some(field) if serving > 1 => Err(GatewayError::invalid(
                field,
                format!(
                    "{field} needs the backend that keeps the earlier state, but {} is served by {serving} \
                     backends; send the whole conversation in input instead",
                    call.model
                ),
            )),
            _ => Ok(call),
        }
    }

    /// `GET`/`DELETE /v1/responses/{id}`, `POST /v1/responses/{id}/cancel`: a stored response
    /// lives on the backend that made it, and its id does not say which — so these are passed
    /// through only when a single backend serves the caller's models. Counted against the
    /// request budget like any call.
    async fn stored_response(
        &self,
        config: &Config,
        request: Request,
        cx: &mut Context,
    ) -> Result<Handled, GatewayError> {
        let caller = self.authenticate(config, &request, cx)?;
        let backend = match config.backends_for(|model| caller.models.allows(model)).as_slice() {
            [backend] => *backend,
            backends => {
                return Err(GatewayError::InvalidRequest {
                    message: format!(
                        "Stored responses can be reached only when one backend serves your models (yours are \
                         served by {}); send the whole conversation in input instead.",
                        backends.len()
                    ),
                    param: None,
                    code: None,
                })
            }
        };
        let settler = self.admit(&caller, 0, 0, config, cx).await?;
        cx.record.backend = Some(backend.name.clone());
        cx.record.attempts = Some(1);
        let traceparent = cx.trace.traceparent();
        let forwarded = Forwarded {
            request_id: &cx.ids.upstream,
            traceparent: Some(&traceparent),
            tracestate: cx.trace.tracestate.as_deref(),
        };
        let upstream = stored::stored_request(backend, &request.method, &request.path, &forwarded);
        let answer = stored::pass_through(&self.upstream, &self.runtime, upstream, &config.timeouts).await;
        if let Some(settler) = settler {
            settler.settle(0);
        }
        Ok(answer?.into())
    }

    /// Sends the request to the first of `backends` that answers; the backend gets its own
    /// credential, a request id of the gateway's and the trace context.
    async fn proxy(
        &self,
        config: &Config,
        call: &Validated,
        backends: &[&Backend],
        cx: &Context,
        ending: StreamEnding,
    ) -> Result<(Relayed, Option<Answered>), GatewayError> {
        let traceparent = cx.trace.traceparent();
        let forwarded = Forwarded {
            request_id: &cx.ids.upstream,
            traceparent: Some(&traceparent),
            tracestate: cx.trace.tracestate.as_deref(),
        };
        let candidates = backends
            .iter()
            .take(config.max_attempts as usize)
            .map(|backend| {
                let body = call.upstream_body(backend, config.caps.max_tokens);
                Candidate {
                    name: backend.name.clone(),
                    connect_ms: backend.connect_timeout_ms.unwrap_or(config.timeouts.connect_ms),
                    request: proxy::upstream_request(backend, call.endpoint.path(), call.stream, body, &forwarded),
                }
            })
            .collect();
        let attempts = Attempts { candidates, health: self.health.clone(), breaker: config.breaker };
        let exchange =
            Exchange { endpoint: call.endpoint, stream: call.stream, client_wants_usage: call.client_wants_usage };
        proxy::send(&self.upstream, &self.runtime, attempts, exchange, &config.timeouts, ending).await
    }

    /// Takes this request from the caller's budgets in the consistent store (one atomic step).
    /// The decisions are kept so refused and admitted answers both report them.
    async fn admit(
        &self,
        caller: &Caller<'_>,
        estimate: u64,
        prompt_estimate: u64,
        config: &Config,
        cx: &mut Context,
    ) -> Result<Option<Settler<S, R>>, GatewayError> {
        // A slot outlives the longest request by a margin, so only a lost release lets it expire.
        let lease_ttl_ms = config.timeouts.total_ms.saturating_add(60_000);
        let plan = Plan::new(caller.budgets, estimate, &cx.lease_id, lease_ttl_ms);
        if plan.is_empty() {
            return Ok(None);
        }
        // Made before the store is asked: if the client leaves while the store's answer is on its
        // way (the lease may already be taken), dropping it releases the lease.
        let settler = plan.settler(self.store.clone(), self.runtime.clone(), caller.scope.clone(), prompt_estimate);
        let answer = self.store.admit(&caller.scope, &plan.admission).await;
        let admitted = match answer.and_then(|admitted| store::checked(admitted, &plan.admission)) {
            Ok(admitted) => admitted,
            Err(e) => {
                settler.release_lease();
                return self.store_unavailable(e, config.limits_fail_open);
            }
        };
        let (decisions, refusal) = plan.outcome(&admitted);
        cx.decisions.extend(decisions);
        match refusal {
            Some(error) => {
                settler.forget();
                Err(error)
            }
            None => Ok(Some(settler)),
        }
    }
}

impl<U, S, R, P> Gateway<U, S, R, P>
where
    R: Runtime,
{
    /// The limit store did not answer: the request goes on unlimited (logged) when the operator
    /// chose to fail open, else it fails.
    fn store_unavailable<T>(&self, error: StoreError, fail_open: bool) -> Result<Option<T>, GatewayError> {
        if fail_open {
            let fields = [("admitted", true.into()), ("detail", error.0.into())];
            self.runtime.log(&log::event("warn", "limit_store_unavailable", &fields));
            return Ok(None);
        }
        Err(GatewayError::Internal {
            message: "The rate-limit store is unavailable; please retry.".into(),
            detail: format!("limit store: {}", error.0),
        })
    }

    /// A stream's account, kept until it ends: settled then and logged.
    fn stream_account(
        &self,
        settler: Option<Settler<S, R>>,
        call: &Validated,
        estimate: u64,
        record: &LogRecord,
    ) -> StreamAccount<S, R>
    where
        S: LimitStore + Clone + 'static,
        R: Clone + 'static,
    {
        StreamAccount {
            settler,
            record: record.clone(),
            runtime: self.runtime.clone(),
            metrics: self.metrics.clone(),
            prompt_estimate: call.prompt_estimate(),
            charged_when_left: call.background.then_some(estimate),
        }
    }
}

/// Reads the body, refusing it as soon as it passes the cap.
async fn read_body(request: &mut Request, limit: usize) -> Result<Vec<u8>, GatewayError> {
    read_capped(&mut request.body, limit).await.map_err(|e| match e {
        ReadError::TooLarge => GatewayError::RequestTooLarge { limit_bytes: limit },
        ReadError::Broken(_) => GatewayError::InvalidRequest {
            message: "The request body could not be read.".into(),
            param: None,
            code: None,
        },
    })
}

fn random_u64<R: Runtime>(runtime: &R) -> u64 {
    let mut random = [0u8; 8];
    runtime.fill_random(&mut random);
    u64::from_le_bytes(random)
}

/// `x-ratelimit-*` headers, as OpenAI sends them, for every budget the request was checked against.
fn set_rate_limit_headers(headers: &mut Headers, decisions: &[(RateLimitKind, Decision)]) {
    for (kind, d) in decisions {
        let Some(suffix) = kind.header_suffix() else { continue };
        headers.set(&format!("x-ratelimit-limit-{suffix}"), d.limit.to_string());
        headers.set(&format!("x-ratelimit-remaining-{suffix}"), d.remaining.to_string());
        headers.set(&format!("x-ratelimit-reset-{suffix}"), format_duration(d.reset_ms));
    }
}

/// `GET /v1/models/{model}`: the model if this caller may use it — else 404, exactly as for a
/// model that does not exist, so a key never learns what it cannot list.
fn retrieve_model(config: &Config, caller: &Caller<'_>, model: String) -> Result<Response, GatewayError> {
    if !caller.models.allows(&model) || config.backends_serving(&model).next().is_none() {
        return Err(GatewayError::ModelNotFound { model });
    }
    Ok(Response::json(200, serde_json::to_vec(&Model::served(model)).unwrap_or_default()))
}

fn list_models(config: &Config, caller: &Caller<'_>) -> Response {
    let models = config.served_models().into_iter().filter(|m| caller.models.allows(m)).map(str::to_owned);
    Response::json(200, serde_json::to_vec(&ModelList::new(models)).unwrap_or_default())
}
