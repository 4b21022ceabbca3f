//! The runtime-free gateway: everything that decides, nothing that touches a platform.
//!
//! No `worker::` or `spin_sdk::` type appears here; platforms reach the core through the traits
//! [`upstream::Upstream`], [`store::LimitStore`], [`runtime::Runtime`] and [`config::Lookup`].

pub mod account;
pub mod admission;
pub mod auth;
pub mod balance;
pub mod config;
pub mod cors;
pub mod error;
pub mod gateway;
pub mod health;
pub mod http;
pub mod jwt;
pub mod limits;
pub mod log;
pub mod openai;
pub mod playground;
pub mod proxy;
pub mod redis;
pub mod request_id;
pub mod route;
pub mod runtime;
pub mod secret;
pub mod sse;
pub mod store;
pub mod trace;
pub mod upstream;
pub mod upstream_error;
pub mod validate;

pub use config::{Config, ConfigError, Lookup};
pub use error::GatewayError;
pub use gateway::Gateway;
