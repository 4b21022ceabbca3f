//! Settling up once a request has ended: its budgets corrected by what it really used, and its
//! one log line written.

use crate::core::rate_limit::plan::Settler;
use crate::core::log::LogRecord;
use crate::core::upstream::proxy::{StreamEnd, StreamSummary};
use crate::core::runtime::Runtime;
use crate::core::openai::Usage;
use crate::core::rate_limit::store::LimitStore;

/// What a streamed answer still owes when it ends: the settlement and the log line.
pub struct StreamAccount<S: LimitStore + Clone + 'static, R: Runtime + Clone + 'static> {
    pub settler: Option<Settler<S, R>>,
    pub record: LogRecord,
    pub runtime: R,
}

impl<S: LimitStore + Clone + 'static, R: Runtime + Clone + 'static> StreamAccount<S, R> {
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
