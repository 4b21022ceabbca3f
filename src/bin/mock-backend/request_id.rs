//! `--strict-request-id`: llama-cpp-python's server refuses any request whose
//! `x-request-id` is not a UUID, with an empty-bodied 400, before any route or API
//! key check runs.
//!
//! The check is starlette-context's `RequestIdPlugin` (a `PluginUUIDBase` with
//! `validate=True`, `version=4`, run by `RawContextMiddleware`): an empty or missing
//! header gets a fresh id, anything else must pass Python's `uuid.UUID(value,
//! version=4)`, else the middleware sends its default `Response(status_code=400)`.
//! `uuid.UUID` is looser than `8-4-4-4-12`: it drops every `urn:` and `uuid:`,
//! strips `{`/`}` from both ends, drops every `-`, then needs exactly 32 characters
//! that `int(…, 16)` parses (surrounding whitespace, a sign, a `0x` prefix and single
//! `_` between digits included); `version=4` only overwrites the version bits, so
//! any version passes. Header bytes are read as Latin-1, as Starlette does.
//! Every other answer then carries `x-request-id`: the request's own, or a fresh
//! `uuid4().hex` when it sent none (or an empty one).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// Whether llama-cpp-python's server would let a request with this `x-request-id`
/// value through.
pub(crate) fn accepted(value: &str) -> bool {
    if value.is_empty() {
        return true;
    }
    let latin1: String = value.bytes().map(char::from).collect();
    let hex = latin1.replace("urn:", "").replace("uuid:", "");
    let hex = hex.trim_matches(['{', '}']).replace('-', "");
    hex.chars().count() == 32 && python_int_base16(&hex)
}

/// Python's `int(text, 16)` succeeds (for text without `-`, which `uuid.UUID`
/// has removed).
fn python_int_base16(text: &str) -> bool {
    let is_space = |c: char| matches!(c, '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | ' ' | '\u{85}' | '\u{a0}');
    let text = text.trim_matches(is_space);
    let text = text.strip_prefix('+').unwrap_or(text);
    let text = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(rest) => rest.strip_prefix('_').unwrap_or(rest),
        None => text,
    };
    !text.is_empty() && text.split('_').all(|group| !group.is_empty() && group.chars().all(|c| c.is_ascii_hexdigit()))
}

/// A new id as the plugin makes one, `uuid.uuid4().hex`: 32 lowercase hex digits of
/// a random version-4 UUID.
pub(crate) fn fresh() -> String {
    let random = |salt: u64| {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(salt);
        hasher.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
        hasher.finish()
    };
    let mut id = (u128::from(random(1)) << 64) | u128::from(random(2));
    id = (id & !(0xf000 << 64)) | (0x4000 << 64); // version 4
    id = (id & !(0xc000 << 48)) | (0x8000 << 48); // RFC 4122 variant
    format!("{id:032x}")
}

/// Makes each [`fresh`] id hash different input even within one `RandomState`.
static NEXT: AtomicU64 = AtomicU64::new(0);
