//! Who is calling: API keys from `Authorization: Bearer …` or `api-key:`, checked against hashes.
//!
//! Keys are configured as SHA-256 hashes, so a leaked config leaks no key; the presented key is
//! hashed and compared in constant time against every configured hash.

use super::config::ApiKey;
use super::error::GatewayError;
use super::http::Headers;
use sha2::{Digest, Sha256};

/// A caller whose key matched; later steps take this instead of a raw request.
#[derive(Debug, Clone, Copy)]
pub struct Authenticated<'a> {
    pub key: &'a ApiKey,
}

/// Finds the key the request presents, or refuses it with 401.
pub fn authenticate<'a>(headers: &Headers, keys: &'a [ApiKey]) -> Result<Authenticated<'a>, GatewayError> {
    let presented = presented_key(headers).ok_or(GatewayError::InvalidApiKey)?;
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    // Compare against every key so the time taken does not depend on which one matched.
    let mut found = None;
    for key in keys {
        if constant_time_eq(&digest, &key.sha256) {
            found = Some(key);
        }
    }
    found.map(|key| Authenticated { key }).ok_or(GatewayError::InvalidApiKey)
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
