//! An OpenAI-compatible edge gateway for self-hosted GPU inference backends.
//!
//! The same core runs on Cloudflare Workers and (later) Fermyon Spin; a cargo feature picks the
//! platform adapter:
//!
//! - no feature: the runtime-free [`core`] only (native tests, benchmarks, fuzzing);
//! - `cloudflare`: the Workers entry point and the rate-limit Durable Object
//!   (`wasm32-unknown-unknown`, built by `worker-build`);
//! - `spin`: one WASI 0.2 HTTP component for Fermyon Spin and any WASI-HTTP host, with rate
//!   limits in Redis (`wasm32-wasip2`, the `wasip2` bindings and `wstd`'s executor).
//!
//! The two platform features are exclusive: build each one on its own.

#[cfg(all(feature = "cloudflare", feature = "spin"))]
compile_error!("features `cloudflare` and `spin` are exclusive: build each platform separately");

pub mod core;

#[cfg(feature = "cloudflare")]
mod cloudflare;

#[cfg(feature = "spin")]
mod spin;
