//! Native tests of the runtime-free core: one module per module of `src/core`, all against the
//! in-memory platform in `support` (virtual time, a scripted backend, an in-memory limit store).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

mod adversary2;
mod auth;
mod config;
mod endpoints;
mod gateway;
mod hostile;
mod layers;
mod log;
mod rate_limit;
mod redis;
mod upstream;
mod validate;
