//! The gateway's configuration: one typed struct, built from name→value lookups and validated once.
//!
//! Values come from wrangler `[vars]` and secrets (or Spin variables) through [`Lookup`], so tests
//! need no environment. Backends and API keys are JSON-valued variables; every error names the
//! variable it is about, and a secret is never silently defaulted.

pub mod parse;
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
    pub const MAX_EMBEDDING_INPUTS: &str = "GATEWAY_MAX_EMBEDDING_INPUTS";
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
    pub const STREAM_COMMIT_MS: &str = "GATEWAY_STREAM_COMMIT_MS";
    pub const KEEPALIVE_MS: &str = "GATEWAY_KEEPALIVE_MS";
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
    pub redis: Option<RedisTarget>,
    pub cors: Cors,
    pub caps: RequestCaps,
    pub timeouts: Timeouts,
    /// Backends tried for one request (the first and its failovers), at most.
    pub max_attempts: u32,
    /// When a failing backend is ejected, and for how long.
    pub breaker: Breaker,
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
    /// the gateway injects is kept within it (see `validate::Validated::injection`).
    pub max_model_len: Option<u32>,
    /// How long this backend may take to send a stream's response head, when not the gateway's
    /// `GATEWAY_CONNECT_TIMEOUT_MS`: llama.cpp's server and Ollama send it only with the first
    /// token, after the whole prefill.
    pub connect_timeout_ms: Option<u64>,
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
    pub budgets: Budgets,
}

/// The budgets of one caller (a key, or one client IP of the anonymous tier).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budgets {
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
    pub verifier: JwtVerifier,
    /// Models any token may use; a token's `models` claim narrows it further.
    pub models: ModelAccess,
    pub budgets: Budgets,
}

/// The anonymous tier: callers without a key, each client IP with its own budgets.
#[derive(Debug, Clone)]
pub struct Anonymous {
    pub models: ModelAccess,
    pub budgets: Budgets,
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
pub struct RequestCaps {
    pub max_body_bytes: usize,
    pub max_messages: usize,
    /// Items in one embeddings request's `input` (and prompts in one legacy completion).
    pub max_embedding_inputs: usize,
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
    /// How long a stream that a backend has taken may go without its first event before the
    /// gateway commits to `200` anyway and keeps the connection alive with SSE comments (after
    /// that, no failover: a failure is the stream's final error event).
    pub stream_commit_ms: u64,
    /// How often a committed stream that still waits for its first event sends `: keep-alive`.
    pub keepalive_ms: u64,
}

impl Config {
    /// Builds and validates the configuration; the error names the offending variable.
    pub fn from_lookup(lookup: &dyn Lookup) -> Result<Config, ConfigError> {
        parse::config(lookup)
    }

    /// For a platform without a consistent store of its own (Spin): Redis must be configured, and
    /// its absence is a configuration error like any other.
    pub fn require_redis(self) -> Result<Config, ConfigError> {
        match self.redis {
            Some(_) => Ok(self),
            None => Err(ConfigError(format!("{} is not set (this build keeps limit state in Redis)", vars::REDIS_URL))),
        }
    }

    /// The backends that serve `model`.
    pub fn backends_serving<'a>(&'a self, model: &'a str) -> impl Iterator<Item = &'a Backend> + 'a {
        self.backends.iter().filter(move |b| b.serves(model))
    }

    /// The backends that serve at least one model `allowed` accepts.
    pub fn backends_for(&self, allowed: impl Fn(&str) -> bool) -> Vec<&Backend> {
        self.backends.iter().filter(|b| b.models.iter().any(|m| allowed(m))).collect()
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

/// When to eject a failing backend, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breaker {
    pub eject_after: u32,
    pub eject_for_ms: u64,
}

/// How long one Redis call may take by default (`GATEWAY_REDIS_TIMEOUT_MS`).
pub const DEFAULT_REDIS_TIMEOUT_MS: u64 = 250;

/// Where the limit state lives and how to log in:
/// `redis://[[username]:password@]host[:port][/db]`, the host a name, an IPv4 address or a
/// bracketed IPv6 address (`redis://[::1]:6379`).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// A name or an IP address (an IPv6 one without its brackets).
    pub host: String,
    pub port: u16,
    /// A Redis 6 ACL user; `None` logs in as `default` (plain `AUTH password`).
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: u32,
    /// The longest one call may take, connecting and logging in included; past it the call fails
    /// like an unreachable Redis (`GATEWAY_REDIS_TIMEOUT_MS`).
    pub timeout_ms: u64,
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let user = self.username.as_deref().unwrap_or("");
        let auth = if self.password.is_some() { format!("{user}:***@") } else { String::new() };
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        write!(f, "redis://{auth}{host}:{}/{}", self.port, self.db)
    }
}

/// The verification keys and the claims required of every token.
#[derive(Debug, Clone)]
pub struct JwtVerifier {
    pub hs256: Option<Secret<Vec<u8>>>,
    pub keys: Vec<PublicKey>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway_s: u64,
    /// The claim listing the models a token may use (`models` by default).
    pub models_claim: String,
    /// Accepted `typ` header values (compared case-insensitively, `application/` prefix ignored);
    /// `None`: absent, `JWT` or `at+jwt`.
    pub accepted_types: Option<Vec<String>>,
}

/// A JWKS key, parsed once at configuration time.
#[derive(Debug, Clone)]
pub struct PublicKey {
    pub kid: Option<String>,
    pub kind: KeyKind,
}

#[derive(Debug, Clone)]
pub enum KeyKind {
    Es256(p256::ecdsa::VerifyingKey),
    Rs256(rsa::RsaPublicKey),
}

impl KeyKind {
    pub fn alg(&self) -> &'static str {
        match self {
            KeyKind::Es256(_) => "ES256",
            KeyKind::Rs256(_) => "RS256",
        }
    }
}
