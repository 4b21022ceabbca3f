//! W3C trace context (`traceparent`, `tracestate`): one trace id across the edge, the gateway and
//! the inference server (vLLM and SGLang accept `traceparent` and export OpenTelemetry spans).
//!
//! A valid incoming `traceparent` is joined: its trace id and flags are kept, and the gateway's
//! own span (a new span id) becomes the parent of the backend's. A malformed one (a version other
//! than `00`, an all-zero id, anything but lowercase hex of the right lengths) is replaced by a
//! new trace, and its `tracestate` dropped with it.

use crate::core::http::Headers;
use crate::core::request_id::hex;

/// Longest `tracestate` passed on (the spec allows 32 members of up to 256+ bytes; 512 is what
/// it asks propagators to keep at least).
const MAX_TRACESTATE_BYTES: usize = 512;

/// The trace this request belongs to, and the gateway's span in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// The gateway's span: 16 lowercase hex digits.
    pub span_id: String,
    /// The caller's span, when the trace was joined.
    pub parent_span_id: Option<String>,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
    /// The caller's `tracestate`, passed on unchanged when the trace was joined.
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// Joins the caller's trace, or starts one. `random` makes a trace id (bytes 0..16, used only
    /// when starting) and the gateway's span id (bytes 16..24).
    pub fn new(headers: &Headers, random: [u8; 24]) -> TraceContext {
        let mut span = [0u8; 8];
        span.copy_from_slice(&random[16..24]);
        span[0] |= 1; // never all zero
        let span_id = hex(&span);
        if let Some((trace_id, parent, flags)) = headers.get("traceparent").and_then(parse_traceparent) {
            let tracestate = headers
                .get("tracestate")
                .map(str::trim)
                .filter(|s| {
                    !s.is_empty() && s.len() <= MAX_TRACESTATE_BYTES && s.bytes().all(|b| (0x20..0x7f).contains(&b))
                })
                .map(str::to_owned);
            return TraceContext {
                trace_id: trace_id.into(),
                span_id,
                parent_span_id: Some(parent.into()),
                flags,
                tracestate,
            };
        }
        let mut trace = [0u8; 16];
        trace.copy_from_slice(&random[..16]);
        trace[0] |= 1;
        TraceContext { trace_id: hex(&trace), span_id, parent_span_id: None, flags: 1, tracestate: None }
    }

    /// The `traceparent` naming the gateway's span: sent to the backend as its parent, and to the
    /// client so it can find the trace.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.span_id, self.flags)
    }
}

/// `(trace id, parent span id, flags)` of a well-formed version-00 `traceparent`.
pub fn parse_traceparent(value: &str) -> Option<(&str, &str, u8)> {
    let mut parts = value.trim().split('-');
    let (Some(version), Some(trace_id), Some(span_id), Some(flags), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let lower_hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    let valid = version == "00"
        && lower_hex(trace_id, 32)
        && nonzero(trace_id)
        && lower_hex(span_id, 16)
        && nonzero(span_id)
        && lower_hex(flags, 2);
    if !valid {
        return None;
    }
    Some((trace_id, span_id, u8::from_str_radix(flags, 16).ok()?))
}
