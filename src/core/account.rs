//! Settling up once a request has ended: its budgets corrected by what it really used, and its
//! one log line written.

use crate::core::error::{GatewayError, TimeoutPhase};
use crate::core::log::{self, LogRecord, Metrics};
use crate::core::openai::Usage;
use crate::core::rate_limit::plan::Settler;
use crate::core::rate_limit::store::LimitStore;
use crate::core::runtime::Runtime;
use crate::core::upstream::relay::{StreamEnd, StreamSummary};
use std::rc::Rc;

/// What a streamed answer still owes when it ends: the settlement and the log line.
pub struct StreamAccount<S: LimitStore + Clone + 'static, R: Runtime + Clone + 'static> {
    pub settler: Option<Settler<S, R>>,
    /// The request's record so far; logged as a 200, which its client got.
    pub record: LogRecord,
    pub runtime: R,
    pub metrics: Rc<dyn Metrics>,
    /// The prompt's estimated tokens, for a stream that ends without the backend's count.
    pub prompt_estimate: u64,
    /// For a request the backend goes on generating after the client left (a Responses API
    /// `background` stream), what it was admitted on: charged at least that when it is left.
    pub charged_when_left: Option<u64>,
}

impl<S: LimitStore + Clone + 'static, R: Runtime + Clone + 'static> StreamAccount<S, R> {
    /// Settles on the backend's usage — or, for a stream without it (cut short, or from a server
    /// that ignores `include_usage`), on the prompt estimate plus the chunks relayed, about one
    /// token each; for a stream committed before any backend answered and then failed, as any
    /// request no backend answered ([`settle_failure`]) — and logs the stream's end.
    pub fn ended(mut self, summary: StreamSummary) {
        if let Some((backend, tried)) = summary.answered.clone() {
            self.record.backend = Some(backend);
            self.record.attempts = Some(tried);
        }
        if let Some(error) = &summary.error {
            self.record.error = error.code();
            self.record.detail = error.detail();
            self.record.stream_end = Some(summary.end.name());
            let charged = if charges_prompt(error) { self.prompt_estimate } else { 0 };
            self.record.usage =
                (charged > 0).then_some(Usage { prompt_tokens: charged, completion_tokens: 0, total_tokens: charged });
            self.record.usage_estimated = self.record.usage.map(|_| true);
            settle_failure(self.settler.take(), error);
            self.log();
            return;
        }
        let usage = summary.usage.unwrap_or(Usage {
            prompt_tokens: self.prompt_estimate,
            completion_tokens: summary.content_events,
            total_tokens: self.prompt_estimate.saturating_add(summary.content_events),
        });
        if let Some(settler) = self.settler.take() {
            let left = summary.end == StreamEnd::ClientClosed;
            let floor = self.charged_when_left.filter(|_| left).unwrap_or(0);
            settler.settle(usage.total_tokens.max(floor));
        }
        let now = self.runtime.now_ms();
        let record = &mut self.record;
        record.usage = Some(usage);
        record.usage_estimated = summary.usage.is_none().then_some(true);
        record.stream_end = Some(summary.end.name());
        record.error = match summary.end {
            StreamEnd::UpstreamError => Some("upstream_error"),
            StreamEnd::Timeout => Some("upstream_timeout"),
            StreamEnd::Done | StreamEnd::ClientClosed => None,
        };
        if let Some(first) = summary.first_content_ms {
            record.ttft_ms = Some(first.saturating_sub(record.ts));
            // OpenTelemetry's time per output token, of answers that completed: the decode time
            // after the first token, per token after the first (the backend's count when it gave
            // one, else the chunks).
            if summary.end == StreamEnd::Done && usage.completion_tokens > 1 {
                record.tpot_ms = Some(now.saturating_sub(first) as f64 / (usage.completion_tokens - 1) as f64);
            }
        }
        self.log();
    }

    fn log(&mut self) {
        let record = &mut self.record;
        record.status = 200;
        record.latency_ms = self.runtime.now_ms().saturating_sub(record.ts);
        log::finish(&self.runtime, &*self.metrics, record);
    }
}

/// Whether a request no backend answered is charged its prompt: a backend took it and worked on
/// it until a deadline (a non-stream past the total timeout, a stream past the first-byte one).
fn charges_prompt(error: &GatewayError) -> bool {
    matches!(error, GatewayError::UpstreamTimeout { phase: TimeoutPhase::FirstByte | TimeoutPhase::Total })
}

/// Settles a request no backend answered: charged its prompt when a backend took it and worked on
/// it until a deadline (a non-stream past the total timeout, a stream past the first-byte one),
/// else refunded whole.
pub fn settle_failure<S: LimitStore + Clone + 'static, R: Runtime + Clone + 'static>(
    settler: Option<Settler<S, R>>,
    error: &GatewayError,
) {
    if let Some(settler) = settler {
        match charges_prompt(error) {
            true => settler.charge_prompt(),
            false => settler.settle(0),
        }
    }
}

/// Settles a non-stream answer on its usage — or, when the backend reported none, on the estimate
/// it was admitted on (`(prompt, whole)`) — and records what it was charged.
pub fn settle_completion<S: LimitStore + Clone + 'static, R: Runtime + Clone + 'static>(
    settler: Option<Settler<S, R>>,
    usage: Option<Usage>,
    (prompt, estimate): (u64, u64),
    record: &mut LogRecord,
) {
    let estimated =
        Usage { prompt_tokens: prompt, completion_tokens: estimate.saturating_sub(prompt), total_tokens: estimate };
    let charged = usage.unwrap_or(estimated);
    record.usage = Some(charged);
    record.usage_estimated = usage.is_none().then_some(true);
    if let Some(settler) = settler {
        settler.settle(charged.total_tokens);
    }
}
