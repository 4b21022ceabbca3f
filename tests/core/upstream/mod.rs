//! `src/core/upstream`: failover, timeouts and readiness; the relay's pipe pumped outside the core;
//! the SSE scanner.

mod failover;
mod keepalive;
mod pipe;
mod sse;
