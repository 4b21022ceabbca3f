//! The platform services the core needs besides HTTP and the limit store: time, randomness, logs,
//! and work after the response.

use std::future::Future;

/// What the platform provides to the core. Only adapters read real clocks; tests inject fakes.
#[allow(async_fn_in_trait)]
pub trait Runtime {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// Resolves after `ms` milliseconds (used for timeouts).
    fn sleep(&self, ms: u64) -> impl Future<Output = ()>;
    /// Fills `buf` with random bytes (request ids).
    fn fill_random(&self, buf: &mut [u8]);
    /// Writes one structured log line.
    fn log(&self, line: &str);
    /// Runs `task` after the response, keeping the instance alive until it is done (settling
    /// budgets once a stream has ended).
    fn spawn(&self, task: std::pin::Pin<Box<dyn Future<Output = ()>>>);
}

/// Runs `future` for at most `ms`; `None` when the time ran out first (the future is dropped,
/// which cancels whatever it was doing).
pub async fn timeout<R: Runtime, F: Future>(runtime: &R, ms: u64, future: F) -> Option<F::Output> {
    use futures::future::{select, Either};
    let future = std::pin::pin!(future);
    let sleep = std::pin::pin!(runtime.sleep(ms));
    match select(future, sleep).await {
        Either::Left((output, _)) => Some(output),
        Either::Right(_) => None,
    }
}
