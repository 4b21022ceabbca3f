//! Runs the release Workers bundle (`build/`, from `make worker`) in workerd itself, from the
//! workerd config `tests/support/launch.rs` writes with what `wrangler.toml` declares.
//!
//! Not through `wrangler dev`: its dev proxy answers "worker restarted mid-request" (503) to some
//! POSTs the worker has already answered, which no deployed worker does. workerd starts in ~0.2 s.

use crate::harness::{launch, Gateway, Host, Setup};
use crate::support::{launch, Proc};
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// The Workers runtime.
pub struct Workerd;

/// One gateway per test binary, started on first use.
pub fn gateway() -> &'static Gateway {
    static GATEWAY: OnceLock<Gateway> = OnceLock::new();
    GATEWAY.get_or_init(|| launch(&Workerd, Setup::default()))
}

/// A gateway of its own, with more configuration (for cases that restart or reconfigure it).
pub fn dedicated(setup: Setup<'_>) -> Gateway {
    launch(&Workerd, setup)
}

impl Host for Workerd {
    fn name(&self) -> &'static str {
        "workerd"
    }

    fn client_ip_header(&self) -> &'static str {
        "cf-connecting-ip"
    }

    fn services(&self, _state: &Path) -> (Vec<(String, String)>, Vec<Proc>) {
        // The Durable Objects live inside workerd, with their storage on disk under `state`.
        (Vec::new(), Vec::new())
    }

    fn command(&self, vars: &[(String, String)], port: u16, state: &Path) -> Command {
        launch::workerd(state, port, launch::Script::Gateway, vars)
    }
}
