//! Runs the release Spin component (`make spin`) in a WASI-HTTP host, `wasmtime serve` in its
//! WASI 0.2 mode (no `-Sp3`, no component-model async: what every Spin provides), with its
//! rate-limit state in a real `redis-server`, both on 127.0.0.1.
//!
//! The Spin CLI is not on the package registries; `wasmtime serve` hosts the same component
//! unmodified because it only imports WASI 0.2 interfaces (`tests/component_world.rs`).

use crate::harness::{launch, watched, Gateway, Host, Setup};
use crate::support::{free_port, launch, wait_until, Proc};
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// The WASI-HTTP host.
pub struct WasmtimeServe;

/// One gateway per test binary, started on first use.
pub fn gateway() -> &'static Gateway {
    static GATEWAY: OnceLock<Gateway> = OnceLock::new();
    GATEWAY.get_or_init(|| launch(&WasmtimeServe, Setup::default()))
}

/// A gateway of its own, with more configuration (for cases that restart or reconfigure it).
pub fn dedicated(setup: Setup<'_>) -> Gateway {
    launch(&WasmtimeServe, setup)
}

impl Host for WasmtimeServe {
    fn name(&self) -> &'static str {
        "wasmtime"
    }

    fn client_ip_header(&self) -> &'static str {
        "spin-client-addr"
    }

    fn services(&self, state: &Path) -> (Vec<(String, String)>, Vec<Proc>) {
        let port = free_port();
        let redis = launch::redis(port);
        let log = std::fs::File::create(state.join("redis.log")).expect("log file");
        let redis = watched(&redis, Some(&log));
        let addr = format!("127.0.0.1:{port}");
        assert!(
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(&addr).is_ok()),
            "redis-server did not listen on {addr}"
        );
        let vars = vec![
            ("GATEWAY_REDIS_URL".into(), format!("redis://{addr}")),
            // The 1,000-request burst on a two-core machine (a thousand client threads, a
            // thousand instances and Redis sharing it) delays a few Redis calls past the 250 ms
            // default; the stalled-Redis case runs with the default.
            ("GATEWAY_REDIS_TIMEOUT_MS".into(), "2000".into()),
        ];
        (vars, vec![redis])
    }

    fn command(&self, vars: &[(String, String)], port: u16, _state: &Path) -> Command {
        serve_command(vars, port, &[])
    }
}

fn serve_command(vars: &[(String, String)], port: u16, extra: &[&str]) -> Command {
    launch::wasmtime(port, vars, extra)
}

/// The component served with exactly `vars` — no mock backends, no Redis — for what a launched
/// gateway cannot be (one whose configuration is broken answers `/healthz` with a 500).
pub struct Bare {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The host's stdout and stderr: the component's log lines.
    pub log: std::path::PathBuf,
    _runtime: Proc,
}

/// Serves the component with `vars`, each instance taking up to `reuse` requests one after
/// another (`--max-instance-reuse-count`; Spin and the default use a fresh instance per request).
pub fn bare(vars: &[(&str, &str)], reuse: usize) -> Bare {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("edge-gateway-e2e-bare-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("state dir");
    let log = dir.join("wasmtime.log");
    let file = std::fs::File::create(&log).expect("log file");
    let vars: Vec<(String, String)> = vars.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
    let runtime =
        watched(&serve_command(&vars, port, &["--max-instance-reuse-count", &reuse.to_string()]), Some(&file));
    let addr = format!("127.0.0.1:{port}");
    let up = wait_until(Duration::from_secs(60), || {
        crate::support::try_request(&addr, "GET", "/healthz", &[], None).is_ok()
    });
    assert!(up, "wasmtime serve did not answer on {addr}; see {}", log.display());
    Bare { addr, log, _runtime: runtime }
}
