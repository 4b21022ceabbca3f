//! Who is calling: one API key (`Authorization: Bearer …`, `api-key:` or `x-api-key:`) checked
//! against hashes, a signed token, or — for the anonymous tier — the client's network.
//!
//! Keys are configured as SHA-256 hashes, so a leaked config leaks no key; the presented key is
//! hashed and compared in constant time against every configured hash.

pub mod jwt;

use crate::core::auth::jwt::looks_like_jwt;
use crate::core::config::{ApiKey, Budgets, Config, ModelAccess};
use crate::core::error::GatewayError;
use crate::core::http::Headers;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Who is calling, once authenticated; later steps take this instead of a raw request.
#[derive(Debug, Clone)]
pub struct Caller<'a> {
    /// The key's id, `jwt:<sub>`, or `anonymous` (for logs).
    pub id: Cow<'a, str>,
    /// Whose budgets the request spends: `key:<id>`, `jwt:<sub>`, or `ip:<address>`.
    pub scope: String,
    pub models: Cow<'a, ModelAccess>,
    pub budgets: &'a Budgets,
}

/// Identifies the caller: a valid API key, or a valid token when JWTs are enabled; or, with no
/// credentials at all and the anonymous tier enabled, the client address the platform vouches for
/// (IPv4 by address, IPv6 by its /64, which one subscriber usually holds whole). Wrong, unreadable
/// or several credentials are always a 401, and so is an anonymous caller whose address the
/// platform did not give. `now_ms` checks token expiry.
pub fn identify<'a>(
    headers: &Headers,
    client_ip: Option<&str>,
    config: &'a Config,
    now_ms: u64,
) -> Result<Caller<'a>, GatewayError> {
    let presented = match presented_credential(headers)? {
        Some(credential) => credential,
        None => {
            let anonymous = config.anonymous.as_ref().ok_or(GatewayError::InvalidApiKey)?;
            let network = client_ip.and_then(client_network).ok_or(GatewayError::InvalidApiKey)?;
            return Ok(Caller {
                id: Cow::Borrowed("anonymous"),
                scope: format!("ip:{network}"),
                models: Cow::Borrowed(&anonymous.models),
                budgets: &anonymous.budgets,
            });
        }
    };
    if let Some(jwt) = &config.jwt {
        if looks_like_jwt(presented) {
            let claims = jwt.verifier.verify(presented, now_ms / 1000).map_err(|_| GatewayError::InvalidApiKey)?;
            let models = match claims.models {
                // The token narrows what the configuration allows; it never widens it.
                Some(named) => {
                    Cow::Owned(ModelAccess::Only(named.into_iter().filter(|m| jwt.models.allows(m)).collect()))
                }
                None => Cow::Borrowed(&jwt.models),
            };
            let id = format!("jwt:{}", claims.subject);
            return Ok(Caller { scope: id.clone(), id: Cow::Owned(id), models, budgets: &jwt.budgets });
        }
    }
    let key = find_key(presented, &config.api_keys)?;
    Ok(Caller {
        id: Cow::Borrowed(&key.id),
        scope: format!("key:{}", key.id),
        models: Cow::Borrowed(&key.models),
        budgets: &key.budgets,
    })
}

/// Headers that carry a caller's credential: `Authorization: Bearer`, Azure's `api-key`,
/// Anthropic's `x-api-key`.
pub const CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "api-key", "x-api-key"];

/// The one credential the request presents; `None` when it presents none at all. More than one
/// credential header (or one header twice), a scheme other than Bearer, or a value that is not a
/// token (RFC 6750's `b64token`: letters, digits, `-._~+/`, trailing `=`) is refused, so every
/// platform judges the same bytes the same way.
fn presented_credential(headers: &Headers) -> Result<Option<&str>, GatewayError> {
    let mut found = None;
    for name in CREDENTIAL_HEADERS {
        for value in headers.get_all(name) {
            if found.is_some() {
                return Err(GatewayError::InvalidApiKey);
            }
            // Only HTTP's own whitespace is trimmed: a Unicode space around a key makes it unreadable.
            let value = value.trim_matches([' ', '\t']);
            let token = if name == "authorization" {
                let (scheme, rest) = value.split_once(' ').ok_or(GatewayError::InvalidApiKey)?;
                if !scheme.eq_ignore_ascii_case("bearer") {
                    return Err(GatewayError::InvalidApiKey);
                }
                rest.trim_matches([' ', '\t'])
            } else {
                value
            };
            if !is_token(token) {
                return Err(GatewayError::InvalidApiKey);
            }
            found = Some(token);
        }
    }
    Ok(found)
}

fn is_token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty() && token.len() <= 8192 && body.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// The key whose hash matches, compared against every key in constant time.
fn find_key<'a>(presented: &str, keys: &'a [ApiKey]) -> Result<&'a ApiKey, GatewayError> {
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

/// The network an anonymous caller is limited as: an IPv4 address, or the /64 of an IPv6 one
/// (an IPv4-mapped IPv6 address is its IPv4 address). The platform's value may be an address or
/// an `address:port` (`[v6]:port`); `None` if it is neither.
fn client_network(addr: &str) -> Option<String> {
    let addr = addr.trim();
    let ip: IpAddr = match addr.parse::<SocketAddr>() {
        Ok(socket) => socket.ip(),
        Err(_) => addr.trim_start_matches('[').trim_end_matches(']').parse().ok()?,
    };
    Some(match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{}/64", Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    })
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The hex SHA-256 of a key, as it goes into `GATEWAY_API_KEYS`.
pub fn sha256_hex(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_platforms_address_may_carry_a_port() {
        assert_eq!(client_network("203.0.113.7:51234").as_deref(), Some("203.0.113.7"));
        assert_eq!(client_network("[2001:db8:1:2::7]:443").as_deref(), Some("2001:db8:1:2::/64"));
        assert_eq!(client_network("2001:db8:1:2::7").as_deref(), Some("2001:db8:1:2::/64"));
        assert_eq!(client_network("::ffff:198.51.100.4").as_deref(), Some("198.51.100.4"));
        assert_eq!(client_network("not an address"), None);
    }

    #[test]
    fn a_token_is_b64token_characters_with_trailing_padding() {
        for ok in ["sk-abc_123.x~y+z/0", "eyJ.a.b", "abc=="] {
            assert!(is_token(ok), "{ok}");
        }
        for bad in ["", "=", "a b", "café", "a,b", "a=b"] {
            assert!(!is_token(bad), "{bad}");
        }
    }
}
