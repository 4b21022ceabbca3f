//! An OpenAI-compatible edge gateway for self-hosted GPU inference backends.
//!
//! The same core runs on Cloudflare Workers and (later) Fermyon Spin; a cargo feature picks the
//! platform adapter:
//!
//! - no feature: the runtime-free [`core`] only (native tests, benchmarks, fuzzing);
//! - `cloudflare`: the Workers entry point and the rate-limit Durable Object
//!   (`wasm32-unknown-unknown`, built by `worker-build`).

pub mod core;

#[cfg(feature = "cloudflare")]
mod cloudflare;
