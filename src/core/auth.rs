//! Who is calling: API keys from `Authorization: Bearer …` or `api-key:`, checked against hashes.
//!
//! Keys are configured as SHA-256 hashes, so a leaked config leaks no key; the presented key is
//! hashed and compared in constant time against every configured hash.

use super::config::{ApiKey, Config, LimitPolicy, ModelAccess};
use super::jwt::looks_like_jwt;
use std::borrow::Cow;
use super::error::GatewayError;
use super::http::Headers;
use sha2::{Digest, Sha256};

/// Who is calling, once authenticated; later steps take this instead of a raw request.
#[derive(Debug, Clone)]
pub struct Caller<'a> {
    /// The key's id, `jwt:<sub>`, or `anonymous` (for logs).
    pub id: Cow<'a, str>,
    /// Whose budgets the request spends: `key:<id>`, `jwt:<sub>`, or `ip:<address>`.
    pub scope: String,
    pub models: Cow<'a, ModelAccess>,
    pub limits: &'a LimitPolicy,
}

/// Identifies the caller: a valid API key, or a valid token when JWTs are enabled; or, with no
/// credentials at all and the anonymous tier enabled, the client IP the platform vouches for.
/// Wrong credentials are always a 401. `now_ms` checks token expiry.
pub fn identify<'a>(
    headers: &Headers,
    client_ip: Option<&str>,
    config: &'a Config,
    now_ms: u64,
) -> Result<Caller<'a>, GatewayError> {
    let presented = presented_key(headers);
    if presented.is_none() && !has_credentials(headers) {
        if let Some(anonymous) = &config.anonymous {
            return Ok(Caller {
                id: Cow::Borrowed("anonymous"),
                scope: format!("ip:{}", client_ip.unwrap_or("unknown")),
                models: Cow::Borrowed(&anonymous.models),
                limits: &anonymous.limits,
            });
        }
    }
    if let (Some(token), Some(jwt)) = (presented, &config.jwt) {
        if looks_like_jwt(token) {
            let claims = jwt.verifier.verify(token, now_ms / 1000).map_err(|_| GatewayError::InvalidApiKey)?;
            let models = match claims.models {
                // The token narrows what the configuration allows; it never widens it.
                Some(named) => Cow::Owned(ModelAccess::Only(named.into_iter().filter(|m| jwt.models.allows(m)).collect())),
                None => Cow::Borrowed(&jwt.models),
            };
            let id = format!("jwt:{}", claims.subject);
            return Ok(Caller { scope: id.clone(), id: Cow::Owned(id), models, limits: &jwt.limits });
        }
    }
    let key = authenticate(headers, &config.api_keys)?;
    Ok(Caller {
        id: Cow::Borrowed(&key.id),
        scope: format!("key:{}", key.id),
        models: Cow::Borrowed(&key.models),
        limits: &key.limits,
    })
}

fn has_credentials(headers: &Headers) -> bool {
    headers.get("authorization").is_some() || headers.get("api-key").is_some()
}

/// Finds the key the request presents, or refuses it with 401.
pub fn authenticate<'a>(headers: &Headers, keys: &'a [ApiKey]) -> Result<&'a ApiKey, GatewayError> {
    let presented = presented_key(headers).ok_or(GatewayError::InvalidApiKey)?;
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    // Compare against every key so the time taken does not depend on which one matched.
    let mut found = None;
    for key in keys {
        if constant_time_eq(&digest, &key.sha256) {
            found = Some(key);
        }
    }
    found.ok_or(GatewayError::InvalidApiKey)
}

/// The key from `Authorization: Bearer <key>` (scheme case-insensitive) or `api-key: <key>`.
fn presented_key(headers: &Headers) -> Option<&str> {
    if let Some(value) = headers.get("authorization") {
        let value = value.trim();
        let (scheme, rest) = value.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim()).filter(|k| !k.is_empty());
    }
    headers.get("api-key").map(str::trim).filter(|k| !k.is_empty())
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

/// The hex SHA-256 of a key, as it goes into `GATEWAY_API_KEYS`.
pub fn sha256_hex(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}
