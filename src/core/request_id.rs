//! The `x-request-id` every response carries, and the one the backend is sent.
//!
//! A sane incoming id (1–128 of `[A-Za-z0-9._:-]`) is kept, logged and returned to the client;
//! otherwise the gateway makes a UUID (v4). The backend always gets a UUID the gateway made: some
//! servers (llama-cpp-python's) refuse any other `x-request-id` with an empty 400, and vLLM uses
//! the id as its engine request id, where two equal ids collide ("already running") — so a
//! caller's id, UUID or not, never reaches a backend. Both ids are logged; the W3C trace context
//! is what joins the caller's trace to the backend's.

use crate::core::http::Headers;

/// The ids of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestIds {
    /// Logged and returned to the client in `x-request-id`.
    pub client: String,
    /// Sent to the backend in `x-request-id`: always one the gateway made.
    pub upstream: String,
}

impl RequestIds {
    /// The ids for a request with `headers`; `random` makes the gateway's UUID.
    pub fn new(headers: &Headers, random: [u8; 16]) -> RequestIds {
        let upstream = uuid_v4(random);
        match headers.get("x-request-id").map(str::trim).filter(|id| is_sane(id)) {
            Some(id) => RequestIds { client: id.to_string(), upstream },
            None => RequestIds { client: upstream.clone(), upstream },
        }
    }

    /// The backend's id, when it differs from the client's (for the log line).
    pub fn upstream_if_different(&self) -> Option<&str> {
        (self.upstream != self.client).then_some(self.upstream.as_str())
    }
}

/// Safe to log and to echo in a header.
fn is_sane(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

/// `8-4-4-4-12` hex digits, the form UUID validators accept.
pub fn is_uuid(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A random (version 4, RFC 9562) UUID from 16 random bytes, lowercase.
pub fn uuid_v4(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut out = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(hex_digit(b >> 4));
        out.push(hex_digit(b & 15));
    }
    out
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(hex_digit(b >> 4));
        out.push(hex_digit(b & 15));
    }
    out
}

fn hex_digit(nibble: u8) -> char {
    char::from_digit(u32::from(nibble), 16).unwrap_or('0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_version_4_variant_1_uuids() {
        let id = uuid_v4([0xff; 16]);
        assert_eq!(id, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert!(is_uuid(&id));
        let id = uuid_v4([0; 16]);
        assert_eq!(id, "00000000-0000-4000-8000-000000000000");
    }

    #[test]
    fn only_the_8_4_4_4_12_form_is_a_uuid() {
        for id in ["0b7c4f52-7a1e-4c1a-9d5e-3f3c2b1a0e9d", "0B7C4F52-7A1E-4C1A-9D5E-3F3C2B1A0E9D"] {
            assert!(is_uuid(id), "{id}");
        }
        for id in [
            "",
            "req_1",
            "0b7c4f527a1e4c1a9d5e3f3c2b1a0e9d",
            "{0b7c4f52-7a1e-4c1a-9d5e-3f3c2b1a0e9d}",
            "0b7c4f52-7a1e-4c1a-9d5e-3f3c2b1a0e9",
        ] {
            assert!(!is_uuid(id), "{id}");
        }
    }
}
