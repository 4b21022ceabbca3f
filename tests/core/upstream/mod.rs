//! `src/core/upstream`: failover, timeouts and readiness; the SSE scanner.

mod failover;
mod keepalive;
mod sse;
