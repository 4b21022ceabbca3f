//! The runtime-free gateway: everything that decides, nothing that touches a platform.
//!
//! No `worker::` or `spin_sdk::` type appears here; platforms reach the core through the traits
//! [`upstream::Upstream`], [`rate_limit::store::LimitStore`], [`runtime::Runtime`],
//! [`upstream::readiness::ProbeCache`] and [`config::Lookup`].
//!
//! Lower layers never import higher ones: `http`, `runtime`, `openai`, `error`, `log` at the
//! bottom; then `config`; then `rate_limit`, `upstream` and `auth`; then the request's checks
//! (`route`, `cors`, `request_id`, `trace`, `validate`, `playground`); `redis` (the store's wire
//! protocol); and `account` and `gateway` on top.

pub mod account;
pub mod auth;
pub mod config;
pub mod cors;
pub mod error;
pub mod gateway;
pub mod http;
pub mod log;
pub mod openai;
pub mod playground;
pub mod rate_limit;
pub mod redis;
pub mod request_id;
pub mod route;
pub mod runtime;
pub mod trace;
pub mod upstream;
pub mod validate;

pub use config::{Config, ConfigError, Lookup};
pub use error::GatewayError;
pub use gateway::Gateway;
