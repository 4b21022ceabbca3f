//! The gateway's configuration: one typed struct, built from name→value lookups and validated once.
//!
//! Values come from wrangler `[vars]` and secrets (or Spin variables) through [`Lookup`], so tests
//! need no environment. Backends and API keys are JSON-valued variables; every error names the
//! variable it is about, and a secret is never silently defaulted.

pub mod secret;

use secret::Secret;
use serde::Deserialize;

/// Where configuration values come from (platform variables, secrets, or a map in tests).
pub trait Lookup {
    fn get(&self, name: &str) -> Option<String>;
}

impl<F: Fn(&str) -> Option<String>> Lookup for F {
    fn get(&self, name: &str) -> Option<String> {
        self(name)
    }
}

impl Lookup for std::collections::HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        std::collections::HashMap::get(self, name).cloned()
    }
}

/// Variable names, in one place so docs, errors and adapters agree.
pub mod vars {
    pub const BACKENDS: &str = "GATEWAY_BACKENDS";
    pub const API_KEYS: &str = "GATEWAY_API_KEYS";
    pub const CORS_ORIGINS: &str = "GATEWAY_CORS_ORIGINS";
    pub const MAX_BODY_BYTES: &str = "GATEWAY_MAX_BODY_BYTES";
    pub const MAX_MESSAGES: &str = "GATEWAY_MAX_MESSAGES";
    pub const MAX_CONTENT_BYTES: &str = "GATEWAY_MAX_CONTENT_BYTES";
    pub const MAX_TOKENS: &str = "GATEWAY_MAX_TOKENS";
    pub const MAX_N: &str = "GATEWAY_MAX_N";
    pub const FIRST_BYTE_TIMEOUT_MS: &str = "GATEWAY_FIRST_BYTE_TIMEOUT_MS";
    pub const HEALTH_TIMEOUT_MS: &str = "GATEWAY_HEALTH_TIMEOUT_MS";
    pub const LIMITS_FAIL_OPEN: &str = "GATEWAY_LIMITS_FAIL_OPEN";
    pub const TOTAL_TIMEOUT_MS: &str = "GATEWAY_TOTAL_TIMEOUT_MS";
    pub const CONNECT_TIMEOUT_MS: &str = "GATEWAY_CONNECT_TIMEOUT_MS";
    pub const IDLE_TIMEOUT_MS: &str = "GATEWAY_IDLE_TIMEOUT_MS";
    pub const MAX_ATTEMPTS: &str = "GATEWAY_MAX_ATTEMPTS";
    pub const EJECT_AFTER_FAILURES: &str = "GATEWAY_EJECT_AFTER_FAILURES";
    pub const EJECT_FOR_MS: &str = "GATEWAY_EJECT_FOR_MS";
    pub const ANONYMOUS: &str = "GATEWAY_ANONYMOUS";
    pub const JWT: &str = "GATEWAY_JWT";
    pub const PLAYGROUND: &str = "GATEWAY_PLAYGROUND";
    pub const REDIS_URL: &str = "GATEWAY_REDIS_URL";
    pub const ALLOW_REMOTE_MEDIA: &str = "GATEWAY_ALLOW_REMOTE_MEDIA";
    pub const READYZ_CACHE_MS: &str = "GATEWAY_READYZ_CACHE_MS";
    pub const REDIS_TIMEOUT_MS: &str = "GATEWAY_REDIS_TIMEOUT_MS";
}

/// A configuration problem; the message starts with the variable's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The validated configuration of one gateway instance.
#[derive(Debug, Clone)]
pub struct Config {
    pub backends: Vec<Backend>,
    pub api_keys: Vec<ApiKey>,
    /// Callers without a key, limited per client IP; `None`: every request needs a key.
    pub anonymous: Option<Anonymous>,
    /// Signed tokens (for browsers) accepted beside API keys; `None`: keys only.
    pub jwt: Option<JwtAuth>,
    /// Whether `GET /` serves the browser playground.
    pub playground: bool,
    /// Where a platform without its own consistent store keeps limit state and backend health
    /// (the Spin build requires it; Workers use Durable Objects instead).
    pub redis: Option<crate::core::redis::RedisTarget>,
    pub cors: Cors,
    pub limits: RequestLimits,
    pub timeouts: Timeouts,
    /// Backends tried for one request (the first and its failovers), at most.
    pub max_attempts: u32,
    /// When a failing backend is ejected, and for how long.
    pub breaker: crate::core::upstream::balance::Breaker,
    /// When the limit store cannot be reached: `false` (default) refuses requests with a 500,
    /// `true` admits them unlimited (and logs it). Closed is the safe default for a GPU budget.
    pub limits_fail_open: bool,
}

/// An OpenAI-compatible inference server.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Used in logs and `/readyz`; never the URL.
    pub name: String,
    /// Base URL without a trailing slash, e.g. `https://gpu1.example.com` (paths `/v1/…` are appended).
    pub base_url: String,
    pub models: Vec<String>,
    /// Bearer credential injected on every request to this backend.
    pub api_key: Option<Secret<String>>,
    /// Path probed by `/readyz`, e.g. `/health` (vLLM, TGI, llama.cpp) or `/v1/models`.
    pub health_path: String,
    /// Tried in ascending order: 0 is the primary tier, higher numbers are fallbacks.
    pub priority: u32,
    /// Share of traffic among healthy backends of the same priority.
    pub weight: u32,
    /// The backend's context length (vLLM's `--max-model-len`), when declared: a `max_tokens`
    /// the gateway injects is kept within it (see [`crate::core::validate::ValidatedChat::injection`]).
    pub max_model_len: Option<u32>,
}

impl Backend {
    pub fn serves(&self, model: &str) -> bool {
        self.models.iter().any(|m| m == model)
    }
}

/// A client API key, stored as the SHA-256 of the key.
#[derive(Debug, Clone)]
pub struct ApiKey {
    /// Shown in logs instead of the key.
    pub id: String,
    pub sha256: [u8; 32],
    pub models: ModelAccess,
    pub limits: LimitPolicy,
}

/// The budgets of one caller (a key, or one client IP of the anonymous tier).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitPolicy {
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
    /// Prompt plus completion tokens; admitted on an estimate, settled on real usage.
    #[serde(default)]
    pub tokens_per_minute: Option<u32>,
    /// Requests (and open streams) at once.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
}

/// Token holders: identified by the token's `sub`, each subject with its own budgets.
#[derive(Debug, Clone)]
pub struct JwtAuth {
    pub verifier: crate::core::auth::jwt::JwtVerifier,
    /// Models any token may use; a token's `models` claim narrows it further.
    pub models: ModelAccess,
    pub limits: LimitPolicy,
}

/// The anonymous tier: callers without a key, each client IP with its own budgets.
#[derive(Debug, Clone)]
pub struct Anonymous {
    pub models: ModelAccess,
    pub limits: LimitPolicy,
}

/// Which models a key may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelAccess {
    /// Every model some backend serves (`["*"]`).
    All,
    Only(Vec<String>),
}

impl ModelAccess {
    pub fn allows(&self, model: &str) -> bool {
        match self {
            ModelAccess::All => true,
            ModelAccess::Only(models) => models.iter().any(|m| m == model),
        }
    }
}

/// Which browser origins may call the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cors {
    Disabled,
    AnyOrigin,
    Origins(Vec<String>),
}

/// Caps on what one request may ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLimits {
    pub max_body_bytes: usize,
    pub max_messages: usize,
    /// Total bytes of text content across all messages.
    pub max_content_bytes: usize,
    /// Upper bound for `max_tokens`/`max_completion_tokens`; injected when the client sends none.
    pub max_tokens: u32,
    pub max_n: u32,
    /// Whether media parts may name `http(s)` URLs, which the backend would fetch itself.
    pub allow_remote_media: bool,
}

/// How long the gateway waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// From sending the request to the backend's response headers.
    pub connect_ms: u64,
    /// From sending the request to the backend's first body bytes (time to first token).
    pub first_byte_ms: u64,
    /// Between two chunks of a stream.
    pub idle_ms: u64,
    /// Per backend probe in `/readyz`.
    pub health_ms: u64,
    /// The whole request, stream included; also how long an in-flight slot can be held.
    pub total_ms: u64,
    /// How long a `/readyz` probe round is reused before backends are probed again.
    pub readyz_cache_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    name: String,
    url: String,
    models: Vec<String>,
    /// Name of the secret holding this backend's bearer credential.
    #[serde(default)]
    api_key_secret: Option<String>,
    #[serde(default)]
    health_path: Option<String>,
    #[serde(default)]
    priority: u32,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default)]
    max_model_len: Option<u32>,
}

fn default_weight() -> u32 {
    1
}

/// A key (`id`, `sha256`) or the anonymous tier (neither): models and budgets.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCaller {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    sha256: Option<String>,
    models: Vec<String>,
    #[serde(default)]
    requests_per_minute: Option<u32>,
    #[serde(default)]
    tokens_per_minute: Option<u32>,
    #[serde(default)]
    max_in_flight: Option<u32>,
}

impl RawCaller {
    fn limits(&self, at: &str) -> Result<LimitPolicy, ConfigError> {
        let policy = LimitPolicy {
            requests_per_minute: self.requests_per_minute,
            tokens_per_minute: self.tokens_per_minute,
            max_in_flight: self.max_in_flight,
        };
        for (name, value) in [
            ("requests_per_minute", policy.requests_per_minute),
            ("tokens_per_minute", policy.tokens_per_minute),
            ("max_in_flight", policy.max_in_flight),
        ] {
            if value == Some(0) {
                return Err(ConfigError(format!("{at}.{name} must be at least 1")));
            }
        }
        Ok(policy)
    }
}

impl Config {
    /// Builds and validates the configuration; the error names the offending variable.
    pub fn from_lookup(lookup: &dyn Lookup) -> Result<Config, ConfigError> {
        let backends = parse_backends(lookup)?;
        let api_keys = parse_api_keys(lookup, &backends)?;
        let anonymous = parse_anonymous(lookup, &backends)?;
        let jwt = parse_jwt(lookup, &backends)?;
        let cors = parse_cors(lookup)?;
        let limits = RequestLimits {
            max_body_bytes: number(lookup, vars::MAX_BODY_BYTES, 1 << 20, 1, 64 << 20)? as usize,
            max_messages: number(lookup, vars::MAX_MESSAGES, 256, 1, 100_000)? as usize,
            max_content_bytes: number(lookup, vars::MAX_CONTENT_BYTES, 512 << 10, 1, 64 << 20)?
                as usize,
            max_tokens: number(lookup, vars::MAX_TOKENS, 4096, 1, 10_000_000)? as u32,
            max_n: number(lookup, vars::MAX_N, 4, 1, 128)? as u32,
            allow_remote_media: flag(lookup, vars::ALLOW_REMOTE_MEDIA)?,
        };
        let timeouts = Timeouts {
            connect_ms: number(lookup, vars::CONNECT_TIMEOUT_MS, 10_000, 1, 3_600_000)?,
            first_byte_ms: number(lookup, vars::FIRST_BYTE_TIMEOUT_MS, 60_000, 1, 3_600_000)?,
            idle_ms: number(lookup, vars::IDLE_TIMEOUT_MS, 30_000, 1, 3_600_000)?,
            health_ms: number(lookup, vars::HEALTH_TIMEOUT_MS, 2_000, 1, 60_000)?,
            total_ms: number(lookup, vars::TOTAL_TIMEOUT_MS, 600_000, 1, 86_400_000)?,
            readyz_cache_ms: number(lookup, vars::READYZ_CACHE_MS, 5_000, 0, 3_600_000)?,
        };
        if timeouts.first_byte_ms > timeouts.total_ms {
            return Err(ConfigError(format!(
                "{} must not be longer than {}",
                vars::FIRST_BYTE_TIMEOUT_MS,
                vars::TOTAL_TIMEOUT_MS
            )));
        }
        let limits_fail_open = flag(lookup, vars::LIMITS_FAIL_OPEN)?;
        let max_attempts = number(lookup, vars::MAX_ATTEMPTS, 3, 1, 10)? as u32;
        let breaker = crate::core::upstream::balance::Breaker {
            eject_after: number(lookup, vars::EJECT_AFTER_FAILURES, 3, 1, 1_000_000)? as u32,
            eject_for_ms: number(lookup, vars::EJECT_FOR_MS, 30_000, 1, 3_600_000)?,
        };
        let redis_timeout_ms = number(lookup, vars::REDIS_TIMEOUT_MS, crate::core::redis::DEFAULT_TIMEOUT_MS, 1, 60_000)?;
        let redis = match lookup.get(vars::REDIS_URL).filter(|v| !v.trim().is_empty()) {
            None => None,
            Some(url) => {
                let parsed = crate::core::redis::RedisTarget::parse(&url);
                let target = parsed.map_err(|e| ConfigError(format!("{} {e}", vars::REDIS_URL)))?;
                Some(crate::core::redis::RedisTarget { timeout_ms: redis_timeout_ms, ..target })
            }
        };
        let playground = !matches!(lookup.get(vars::PLAYGROUND).as_deref().map(str::trim), Some("false" | "0"));
        Ok(Config { backends, api_keys, anonymous, jwt, playground, redis, cors, limits, timeouts, max_attempts, breaker, limits_fail_open })
    }

    /// The backends that serve `model`.
    pub fn backends_serving<'a>(&'a self, model: &'a str) -> impl Iterator<Item = &'a Backend> + 'a {
        self.backends.iter().filter(move |b| b.serves(model))
    }

    /// Every model some backend serves, each once, in configured order.
    pub fn served_models(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for model in self.backends.iter().flat_map(|b| b.models.iter()) {
            if !out.contains(&model.as_str()) {
                out.push(model);
            }
        }
        out
    }
}

fn required(lookup: &dyn Lookup, name: &str) -> Result<String, ConfigError> {
    match lookup.get(name) {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(ConfigError(format!("{name} is not set"))),
    }
}

fn number(lookup: &dyn Lookup, name: &str, default: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
    let Some(raw) = lookup.get(name).filter(|v| !v.trim().is_empty()) else {
        return Ok(default);
    };
    match raw.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ConfigError(format!("{name} must be an integer from {min} to {max}, got {raw:?}"))),
    }
}

fn flag(lookup: &dyn Lookup, name: &str) -> Result<bool, ConfigError> {
    match lookup.get(name).as_deref().map(str::trim) {
        None | Some("") | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(other) => Err(ConfigError(format!("{name} must be true or false, got {other:?}"))),
    }
}

fn parse_backends(lookup: &dyn Lookup) -> Result<Vec<Backend>, ConfigError> {
    let name = vars::BACKENDS;
    let raw: Vec<RawBackend> = serde_json::from_str(&required(lookup, name)?)
        .map_err(|e| ConfigError(format!("{name} is not a valid JSON array of backends: {e}")))?;
    if raw.is_empty() {
        return Err(ConfigError(format!("{name} must list at least one backend")));
    }
    let mut backends: Vec<Backend> = Vec::with_capacity(raw.len());
    for (i, b) in raw.into_iter().enumerate() {
        let at = format!("{name}[{i}]");
        if b.name.trim().is_empty() {
            return Err(ConfigError(format!("{at}.name must not be empty")));
        }
        if backends.iter().any(|o| o.name == b.name) {
            return Err(ConfigError(format!("{at}.name `{}` is used twice", b.name)));
        }
        let url = b.url.trim_end_matches('/');
        let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
        match rest {
            Some(host) if !host.is_empty() && !host.contains('@') => {}
            _ => {
                return Err(ConfigError(format!(
                    "{at}.url must be an http:// or https:// URL without credentials"
                )))
            }
        }
        if b.models.is_empty() || b.models.iter().any(|m| m.trim().is_empty()) {
            return Err(ConfigError(format!("{at}.models must list at least one non-empty model")));
        }
        let api_key = match b.api_key_secret {
            None => None,
            Some(secret_name) => match lookup.get(&secret_name) {
                Some(v) if !v.is_empty() => Some(Secret::new(v)),
                _ => {
                    return Err(ConfigError(format!(
                        "{secret_name} (the api_key_secret of {at}) is not set"
                    )))
                }
            },
        };
        let health_path = b.health_path.unwrap_or_else(|| "/health".into());
        if !health_path.starts_with('/') {
            return Err(ConfigError(format!("{at}.health_path must start with /")));
        }
        if b.weight == 0 {
            return Err(ConfigError(format!("{at}.weight must be at least 1")));
        }
        if b.max_model_len == Some(0) {
            return Err(ConfigError(format!("{at}.max_model_len must be at least 1")));
        }
        backends.push(Backend {
            name: b.name,
            base_url: url.to_string(),
            models: b.models,
            api_key,
            health_path,
            priority: b.priority,
            weight: b.weight,
            max_model_len: b.max_model_len,
        });
    }
    Ok(backends)
}

fn parse_api_keys(lookup: &dyn Lookup, backends: &[Backend]) -> Result<Vec<ApiKey>, ConfigError> {
    let name = vars::API_KEYS;
    let raw: Vec<RawCaller> = serde_json::from_str(&required(lookup, name)?)
        .map_err(|e| ConfigError(format!("{name} is not a valid JSON array of keys: {e}")))?;
    let mut keys: Vec<ApiKey> = Vec::with_capacity(raw.len());
    for (i, k) in raw.into_iter().enumerate() {
        let at = format!("{name}[{i}]");
        let id = k.id.clone().filter(|id| !id.trim().is_empty());
        let Some(id) = id else {
            return Err(ConfigError(format!("{at}.id must not be empty")));
        };
        if keys.iter().any(|o| o.id == id) {
            return Err(ConfigError(format!("{at}.id `{id}` is used twice")));
        }
        let sha256 = k.sha256.as_deref().and_then(crate::core::auth::parse_sha256_hex).ok_or_else(|| {
            ConfigError(format!("{at}.sha256 must be 64 hex digits (the SHA-256 of the key)"))
        })?;
        let models = model_access(&k.models, backends, &at)?;
        let limits = k.limits(&at)?;
        keys.push(ApiKey { id, sha256, models, limits });
    }
    Ok(keys)
}

/// `["*"]` or model names that some backend serves.
fn model_access(models: &[String], backends: &[Backend], at: &str) -> Result<ModelAccess, ConfigError> {
    if models.iter().any(|m| m == "*") {
        return Ok(ModelAccess::All);
    }
    if models.is_empty() {
        return Err(ConfigError(format!("{at}.models must list models, or [\"*\"]")));
    }
    if let Some(m) = models.iter().find(|m| !backends.iter().any(|b| b.serves(m))) {
        return Err(ConfigError(format!("{at}.models names `{m}`, which no backend serves")));
    }
    Ok(ModelAccess::Only(models.to_vec()))
}

fn parse_anonymous(lookup: &dyn Lookup, backends: &[Backend]) -> Result<Option<Anonymous>, ConfigError> {
    let name = vars::ANONYMOUS;
    let Some(raw) = lookup.get(name).filter(|v| !v.trim().is_empty()) else { return Ok(None) };
    let raw: RawCaller = serde_json::from_str(&raw)
        .map_err(|e| ConfigError(format!("{name} is not a valid JSON object: {e}")))?;
    if raw.id.is_some() || raw.sha256.is_some() {
        return Err(ConfigError(format!("{name} describes callers without a key: no id or sha256")));
    }
    let models = model_access(&raw.models, backends, name)?;
    let limits = raw.limits(name)?;
    if limits.requests_per_minute.is_none() {
        // An unlimited public tier in front of GPUs is never what anyone meant.
        return Err(ConfigError(format!("{name}.requests_per_minute is required")));
    }
    Ok(Some(Anonymous { models, limits }))
}

/// Repeats `RawCaller`'s budget fields rather than flattening them: serde cannot combine
/// `flatten` with `deny_unknown_fields`, and a typo must stay an error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwt {
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    audience: Option<String>,
    /// Name of the secret holding the HS256 key.
    #[serde(default)]
    hs256_secret: Option<String>,
    #[serde(default)]
    jwks: Option<serde_json::Value>,
    #[serde(default = "default_leeway")]
    leeway_s: u64,
    #[serde(default = "default_models_claim")]
    models_claim: String,
    #[serde(default = "all_models")]
    models: Vec<String>,
    #[serde(default)]
    requests_per_minute: Option<u32>,
    #[serde(default)]
    tokens_per_minute: Option<u32>,
    #[serde(default)]
    max_in_flight: Option<u32>,
    /// Accepted `typ` header values; absent: none, `JWT` or `at+jwt`.
    #[serde(default)]
    typ: Option<Vec<String>>,
}

fn default_leeway() -> u64 {
    60
}

fn default_models_claim() -> String {
    "models".into()
}

fn all_models() -> Vec<String> {
    vec!["*".into()]
}

fn parse_jwt(lookup: &dyn Lookup, backends: &[Backend]) -> Result<Option<JwtAuth>, ConfigError> {
    let name = vars::JWT;
    let Some(raw) = lookup.get(name).filter(|v| !v.trim().is_empty()) else { return Ok(None) };
    let raw: RawJwt =
        serde_json::from_str(&raw).map_err(|e| ConfigError(format!("{name} is not a valid JSON object: {e}")))?;
    let hs256 = match &raw.hs256_secret {
        None => None,
        Some(secret_name) => match lookup.get(secret_name) {
            Some(v) if v.len() >= 32 => Some(Secret::new(v.into_bytes())),
            Some(_) => return Err(ConfigError(format!("{secret_name} (the hs256_secret of {name}) must be at least 32 bytes"))),
            None => return Err(ConfigError(format!("{secret_name} (the hs256_secret of {name}) is not set"))),
        },
    };
    let keys = match &raw.jwks {
        None => Vec::new(),
        Some(jwks) => {
            let list = jwks.get("keys").and_then(serde_json::Value::as_array).ok_or_else(|| {
                ConfigError(format!("{name}.jwks must be a JWKS object with a `keys` array"))
            })?;
            list.iter()
                .enumerate()
                .map(|(i, jwk)| crate::core::auth::jwt::parse_jwk(jwk).map_err(|e| ConfigError(format!("{name}.jwks.keys[{i}]: {e}"))))
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    if hs256.is_none() && keys.is_empty() {
        return Err(ConfigError(format!("{name} needs an hs256_secret or jwks keys")));
    }
    if raw.audience.is_none() {
        // Without an audience any token from the issuer, minted for any service, would do.
        return Err(ConfigError(format!("{name}.audience is required")));
    }
    let caller = RawCaller {
        id: None,
        sha256: None,
        models: raw.models.clone(),
        requests_per_minute: raw.requests_per_minute,
        tokens_per_minute: raw.tokens_per_minute,
        max_in_flight: raw.max_in_flight,
    };
    Ok(Some(JwtAuth {
        verifier: crate::core::auth::jwt::JwtVerifier {
            hs256,
            keys,
            issuer: raw.issuer,
            audience: raw.audience,
            leeway_s: raw.leeway_s.min(600),
            models_claim: raw.models_claim,
            accepted_types: raw.typ,
        },
        models: model_access(&raw.models, backends, name)?,
        limits: caller.limits(name)?,
    }))
}

fn parse_cors(lookup: &dyn Lookup) -> Result<Cors, ConfigError> {
    let name = vars::CORS_ORIGINS;
    let Some(raw) = lookup.get(name).filter(|v| !v.trim().is_empty()) else {
        return Ok(Cors::Disabled);
    };
    let origins: Vec<String> = raw.split(',').map(|o| o.trim().trim_end_matches('/').to_string()).collect();
    if origins.iter().any(|o| o == "*") {
        return Ok(Cors::AnyOrigin);
    }
    if let Some(bad) = origins.iter().find(|o| !(o.starts_with("http://") || o.starts_with("https://"))) {
        return Err(ConfigError(format!("{name}: `{bad}` is not an origin like https://app.example.com")));
    }
    Ok(Cors::Origins(origins))
}
