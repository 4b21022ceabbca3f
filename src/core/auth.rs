//! Who is calling: API keys from `Authorization: Bearer …` or `api-key:`, checked against hashes.
//!
//! Keys are configured as SHA-256 hashes, so a leaked config leaks no key; the presented key is
//! hashed and compared in constant time against every configured hash.

use super::config::{ApiKey, Config, LimitPolicy, ModelAccess};
use super::error::GatewayError;
use super::http::Headers;
use sha2::{Digest, Sha256};

/// Who is calling, once authenticated; later steps take this instead of a raw request.
#[derive(Debug, Clone)]
pub struct Caller<'a> {
    /// The key's id, or `anonymous` (for logs).
    pub id: &'a str,
    /// Whose budgets the request spends: `key:<id>`, or `ip:<address>` for anonymous callers.
    pub scope: String,
    pub models: &'a ModelAccess,
    pub limits: &'a LimitPolicy,
}

/// Identifies the caller: a valid key; or, with no credentials at all and the anonymous tier
/// enabled, the client IP the platform vouches for. Wrong credentials are always a 401.
pub fn identify<'a>(headers: &Headers, client_ip: Option<&str>, config: &'a Config) -> Result<Caller<'a>, GatewayError> {
    if presented_key(headers).is_none() && !has_credentials(headers) {
        if let Some(anonymous) = &config.anonymous {
            return Ok(Caller {
                id: "anonymous",
                scope: format!("ip:{}", client_ip.unwrap_or("unknown")),
                models: &anonymous.models,
                limits: &anonymous.limits,
            });
        }
    }
    let key = authenticate(headers, &config.api_keys)?;
    Ok(Caller { id: &key.id, scope: format!("key:{}", key.id), models: &key.models, limits: &key.limits })
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
