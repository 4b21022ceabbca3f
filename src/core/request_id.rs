//! The `x-request-id` every response carries: a sane incoming one is kept, else one is made.

use super::http::Headers;

/// An incoming id is kept when it is 1–128 characters of `[A-Za-z0-9._:-]` (so it is safe in logs
/// and headers); otherwise a new `req_<32 hex>` id is made from `random` bytes.
pub fn request_id(headers: &Headers, random: [u8; 16]) -> String {
    if let Some(id) = headers.get("x-request-id") {
        let sane = !id.is_empty()
            && id.len() <= 128
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
        if sane {
            return id.to_string();
        }
    }
    let mut out = String::with_capacity(36);
    out.push_str("req_");
    for b in random {
        out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(b & 15), 16).unwrap_or('0'));
    }
    out
}
