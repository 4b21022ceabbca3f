//! Raw configuration (JSON-valued variables, numbers, flags) turned into the validated types of
//! [`super`]: every error names the variable (and JSON path) it is about, and a secret is never
//! silently defaulted.

use super::secret::Secret;
use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

/// Builds and validates the configuration; the error names the offending variable.
pub fn config(lookup: &dyn Lookup) -> Result<Config, ConfigError> {
    let backends = parse_backends(lookup)?;
    let api_keys = parse_api_keys(lookup, &backends)?;
    let anonymous = parse_anonymous(lookup, &backends)?;
    let jwt = parse_jwt(lookup, &backends)?;
    let cors = parse_cors(lookup)?;
    let caps = RequestCaps {
        max_body_bytes: number(lookup, vars::MAX_BODY_BYTES, 1 << 20, 1, 64 << 20)? as usize,
        max_messages: number(lookup, vars::MAX_MESSAGES, 256, 1, 100_000)? as usize,
        max_embedding_inputs: number(lookup, vars::MAX_EMBEDDING_INPUTS, 2048, 1, 100_000)? as usize,
        max_content_bytes: number(lookup, vars::MAX_CONTENT_BYTES, 512 << 10, 1, 64 << 20)? as usize,
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
        stream_commit_ms: number(lookup, vars::STREAM_COMMIT_MS, 5_000, 0, 3_600_000)?,
        keepalive_ms: number(lookup, vars::KEEPALIVE_MS, 15_000, 100, 3_600_000)?,
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
    let breaker = Breaker {
        eject_after: number(lookup, vars::EJECT_AFTER_FAILURES, 3, 1, 1_000_000)? as u32,
        eject_for_ms: number(lookup, vars::EJECT_FOR_MS, 30_000, 1, 3_600_000)?,
    };
    let redis_timeout_ms = number(lookup, vars::REDIS_TIMEOUT_MS, DEFAULT_REDIS_TIMEOUT_MS, 1, 60_000)?;
    let redis = match lookup.get(vars::REDIS_URL).filter(|v| !v.trim().is_empty()) {
        None => None,
        Some(url) => {
            let parsed = RedisTarget::parse(&url);
            let target = parsed.map_err(|e| ConfigError(format!("{} {e}", vars::REDIS_URL)))?;
            Some(RedisTarget { timeout_ms: redis_timeout_ms, ..target })
        }
    };
    let playground = !matches!(lookup.get(vars::PLAYGROUND).as_deref().map(str::trim), Some("false" | "0"));
    Ok(Config {
        backends,
        api_keys,
        anonymous,
        jwt,
        playground,
        redis,
        cors,
        caps,
        timeouts,
        max_attempts,
        breaker,
        limits_fail_open,
    })
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
    #[serde(default)]
    connect_timeout_ms: Option<u64>,
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
    fn budgets(&self, at: &str) -> Result<Budgets, ConfigError> {
        let policy = Budgets {
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
            _ => return Err(ConfigError(format!("{at}.url must be an http:// or https:// URL without credentials"))),
        }
        if b.models.is_empty() || b.models.iter().any(|m| m.trim().is_empty()) {
            return Err(ConfigError(format!("{at}.models must list at least one non-empty model")));
        }
        let api_key = match b.api_key_secret {
            None => None,
            Some(secret_name) => match lookup.get(&secret_name) {
                Some(v) if !v.is_empty() => Some(Secret::new(v)),
                _ => return Err(ConfigError(format!("{secret_name} (the api_key_secret of {at}) is not set"))),
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
        if b.connect_timeout_ms.is_some_and(|ms| !(1..=3_600_000).contains(&ms)) {
            return Err(ConfigError(format!("{at}.connect_timeout_ms must be from 1 to 3600000")));
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
            connect_timeout_ms: b.connect_timeout_ms,
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
        let sha256 = k
            .sha256
            .as_deref()
            .and_then(parse_sha256_hex)
            .ok_or_else(|| ConfigError(format!("{at}.sha256 must be 64 hex digits (the SHA-256 of the key)")))?;
        let models = model_access(&k.models, backends, &at)?;
        let budgets = k.budgets(&at)?;
        keys.push(ApiKey { id, sha256, models, budgets });
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
    let raw: RawCaller =
        serde_json::from_str(&raw).map_err(|e| ConfigError(format!("{name} is not a valid JSON object: {e}")))?;
    if raw.id.is_some() || raw.sha256.is_some() {
        return Err(ConfigError(format!("{name} describes callers without a key: no id or sha256")));
    }
    let models = model_access(&raw.models, backends, name)?;
    let budgets = raw.budgets(name)?;
    if budgets.requests_per_minute.is_none() {
        // An unlimited public tier in front of GPUs is never what anyone meant.
        return Err(ConfigError(format!("{name}.requests_per_minute is required")));
    }
    Ok(Some(Anonymous { models, budgets }))
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
            Some(_) => {
                return Err(ConfigError(format!(
                    "{secret_name} (the hs256_secret of {name}) must be at least 32 bytes"
                )))
            }
            None => return Err(ConfigError(format!("{secret_name} (the hs256_secret of {name}) is not set"))),
        },
    };
    let keys = match &raw.jwks {
        None => Vec::new(),
        Some(jwks) => {
            let list = jwks
                .get("keys")
                .and_then(serde_json::Value::as_array)
                .ok_or_else(|| ConfigError(format!("{name}.jwks must be a JWKS object with a `keys` array")))?;
            list.iter()
                .enumerate()
                .map(|(i, jwk)| parse_jwk(jwk).map_err(|e| ConfigError(format!("{name}.jwks.keys[{i}]: {e}"))))
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
        verifier: JwtVerifier {
            hs256,
            keys,
            issuer: raw.issuer,
            audience: raw.audience,
            leeway_s: raw.leeway_s.min(600),
            models_claim: raw.models_claim,
            accepted_types: raw.typ,
        },
        models: model_access(&raw.models, backends, name)?,
        budgets: caller.budgets(name)?,
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

impl RedisTarget {
    /// Parses a `redis://` URL; the error says what is wrong with it and quotes no part of it: in a
    /// malformed URL a password may stand where a port or a database should (`redis://:secret`).
    pub fn parse(url: &str) -> Result<RedisTarget, String> {
        const SHAPE: &str = "must be a redis://[[user]:password@]host[:port][/db] URL";
        let url = url.trim();
        if url.starts_with("rediss://") {
            return Err("uses rediss:// (TLS), which this build cannot speak: WASI 0.2 sockets carry \
                        plain TCP only. Reach Redis over a private network or through a TLS proxy \
                        next to the host, with a redis:// URL"
                .into());
        }
        let rest = url.strip_prefix("redis://").ok_or(SHAPE)?;
        // The credentials end at the last `@` (neither the host nor the database holds one), so a
        // password with an unescaped `/` is read whole and never taken for the database, which
        // an error below would quote.
        let (userinfo, after) = match rest.rsplit_once('@') {
            Some((userinfo, after)) => (Some(userinfo), after),
            None => (None, rest),
        };
        let (host_port, db) = match after.split_once('/') {
            Some((hp, "")) => (hp, 0),
            Some((hp, db)) => (hp, db.parse().map_err(|_| format!("{SHAPE}: its database is not a number"))?),
            None => (after, 0),
        };
        let (username, password) = match userinfo {
            Some(userinfo) => {
                let Some((user, password)) = userinfo.split_once(':') else {
                    return Err("names a user but no password: write redis://user:password@host, or \
                                redis://:password@host for the default user"
                        .into());
                };
                let decode = |s: &str| {
                    percent_decode(s).ok_or_else(|| "has a malformed %-escape in its user or password".to_string())
                };
                (Some(decode(user)?).filter(|u| !u.is_empty()), Some(decode(password)?).filter(|p| !p.is_empty()))
            }
            None => (None, None),
        };
        if username.is_some() && password.is_none() {
            return Err("names a user but no password".into());
        }
        let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
            let (ip, after) = bracketed.split_once(']').ok_or(SHAPE)?;
            if ip.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("{SHAPE}: its bracketed host is not an IPv6 address"));
            }
            match after.strip_prefix(':') {
                Some(port) => (ip, Some(port)),
                None if after.is_empty() => (ip, None),
                None => return Err(SHAPE.into()),
            }
        } else {
            match host_port.split_once(':') {
                Some((_, rest)) if rest.contains(':') => {
                    return Err("has an IPv6 address without brackets: write redis://[::1]:6379".into())
                }
                Some((host, port)) => (host, Some(port)),
                None => (host_port, None),
            }
        };
        let port = match port {
            None => 6379,
            Some(p) => {
                p.parse().ok().filter(|p| *p != 0).ok_or_else(|| format!("{SHAPE}: its port is not a port number"))?
            }
        };
        if host.is_empty() {
            return Err(format!("{SHAPE}: it has no host"));
        }
        // A name or an IPv4 address; anything else (`?password=…`, `#…`, a space) would be
        // looked up and logged as the host.
        if !host.contains(':') && !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
            return Err(format!("{SHAPE}: its host is not a host name or an address"));
        }
        Ok(RedisTarget { host: host.to_string(), port, username, password, db, timeout_ms: DEFAULT_REDIS_TIMEOUT_MS })
    }
}

/// Decodes `%XX` escapes (RFC 3986), so credentials may hold `@`, `:` or `/`; `None` when an escape
/// is malformed or the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Parses 64 hex digits into a SHA-256 digest.
pub fn parse_sha256_hex(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Parses one JWKS key: `{"kty":"EC","crv":"P-256","x","y"}` or `{"kty":"RSA","n","e"}`, with an
/// optional `kid`, and an optional `alg` that must agree with the key type.
pub fn parse_jwk(jwk: &Value) -> Result<PublicKey, String> {
    let field = |name: &str| jwk.get(name).and_then(Value::as_str);
    let bytes = |name: &str| -> Result<Vec<u8>, String> {
        URL_SAFE_NO_PAD
            .decode(field(name).ok_or(format!("no `{name}`"))?)
            .map_err(|_| format!("`{name}` is not base64url"))
    };
    let kind = match (field("kty"), field("crv")) {
        (Some("EC"), Some("P-256")) => {
            let mut point = vec![4u8];
            point.extend(bytes("x")?);
            point.extend(bytes("y")?);
            KeyKind::Es256(
                p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).map_err(|_| "not a P-256 point".to_string())?,
            )
        }
        (Some("RSA"), _) => {
            let n = rsa::BigUint::from_bytes_be(&bytes("n")?);
            let e = rsa::BigUint::from_bytes_be(&bytes("e")?);
            let key = rsa::RsaPublicKey::new(n, e).map_err(|e| format!("not an RSA key: {e}"))?;
            if rsa::traits::PublicKeyParts::size(&key) < 256 {
                return Err("RSA keys under 2048 bits are refused".into());
            }
            KeyKind::Rs256(key)
        }
        _ => return Err("only EC P-256 and RSA keys are supported".into()),
    };
    if let Some(alg) = field("alg") {
        if alg != kind.alg() {
            return Err(format!("`alg` {alg} does not match the key type"));
        }
    }
    Ok(PublicKey { kid: field("kid").map(str::to_owned), kind })
}
