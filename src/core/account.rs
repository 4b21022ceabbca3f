//! Settling up once a request has ended: its budgets corrected by what it really used, and its
//! one log line written.

use crate::core::error::{GatewayError, TimeoutPhase};
use crate::core::log::LogRecord;
use crate::core::openai::Usage;
use crate::core::rate_limit::plan::Settler;
use crate::core::rate_limit::store::LimitStore;
use crate::core::runtime::Runtime;
use crate::core::upstream::relay::{StreamEnd, StreamSummary};

/// What a streamed answer still owes when it ends: the settlement and the log line.
pub struct StreamAccount<S: LimitStore + Clone + 'static, R: Runtime + Clone + 'static> {
    pub settler: Option<Settler<S, R>>,
    pub record: LogRecord,
    pub runtime: R,
}

impl<S: LimitStore + Clone + 'static, R: Runtime + Clone + 'static> StreamAccount<S, R> {
    /// What a stream that has just started owes; its record is logged as a 200.
    pub fn new(settler: Option<Settler<S, R>>, mut record: LogRecord, runtime: R) -> Self {
        record.status = 200;
        StreamAccount { settler, record, runtime }
    }

    /// Settles on the backend's usage (or, for a stream cut short without it, the prompt plus the
    /// chunks relayed) and logs the stream's end.
    pub fn ended(mut self, summary: StreamSummary) {
        if let Some(settler) = self.settler.take() {
            let used = match summary.usage {
                Some(usage) => usage.total_tokens,
                None => settler.charge_for_partial_stream(summary.content_events),
            };
            settler.settle(used);
        }
        let record = &mut self.record;
        record.usage = summary.usage;
        record.stream_end = Some(summary.end.name());
        record.error = match summary.end {
            StreamEnd::UpstreamError => Some("upstream_error"),
            StreamEnd::Timeout => Some("upstream_timeout"),
            StreamEnd::Done | StreamEnd::ClientClosed => None,
        };
        record.latency_ms = self.runtime.now_ms().saturating_sub(record.ts);
        self.runtime.log(&record.to_line());
    }
}

/// Settles a request no backend answered: charged its prompt when a backend took it and worked on
/// it until a deadline (a non-stream past the total timeout, a stream past the first-byte one),
/// else refunded whole.
pub fn settle_failure<S: LimitStore + Clone + 'static, R: Runtime + Clone + 'static>(
    settler: Option<Settler<S, R>>,
    error: &GatewayError,
) {
    if let Some(settler) = settler {
        match error {
            GatewayError::UpstreamTimeout { phase: TimeoutPhase::FirstByte | TimeoutPhase::Total } => {
                settler.charge_prompt()
            }
            _ => settler.settle(0),
        }
    }
}

/// Settles a non-stream answer: on its usage, or the estimate it was admitted on when the backend
/// reported none.
pub fn settle_completion<S: LimitStore + Clone + 'static, R: Runtime + Clone + 'static>(
    settler: Option<Settler<S, R>>,
    usage: Option<Usage>,
    estimate: u64,
) {
    if let Some(settler) = settler {
        settler.settle(usage.map_or(estimate, |u| u.total_tokens));
    }
}
