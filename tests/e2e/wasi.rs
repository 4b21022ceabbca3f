//! Runs the release Spin component (`make spin`) in a WASI-HTTP host, `wasmtime serve`, with its
//! rate-limit state in a real `redis-server`, both on 127.0.0.1.
//!
//! The Spin CLI is not on the package registries; `wasmtime serve` hosts the same component
//! unmodified because it only imports WASI interfaces (see `src/spin.rs`).

use crate::harness::{launch, watched, Gateway, Host, Setup};
use crate::support::{free_port, wait_until, Proc};
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

/// `WASMTIME`, or `wasmtime` from `~/.cargo/bin` (`make tools` installs it).
fn wasmtime() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("WASMTIME") {
        return path.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    Path::new(&home).join(".cargo/bin/wasmtime")
}

fn component() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/wasm32-wasip2/release/edge_gateway.wasm")
}

impl Host for WasmtimeServe {
    fn name(&self) -> &'static str {
        "wasmtime"
    }

    fn client_ip_header(&self) -> &'static str {
        "spin-client-addr"
    }

    fn services(&self, state: &Path) -> (Vec<(String, String)>, Vec<Proc>) {
        assert!(
            component().exists() && wasmtime().exists(),
            "the Spin component or wasmtime is missing: run `make spin tools` first (`make test` does)"
        );
        let port = free_port();
        let mut redis = Command::new("redis-server");
        redis.args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"]);
        let log = std::fs::File::create(state.join("redis.log")).expect("log file");
        let redis = watched(&redis, Some(&log));
        let addr = format!("127.0.0.1:{port}");
        assert!(
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(&addr).is_ok()),
            "redis-server did not listen on {addr}"
        );
        (vec![("GATEWAY_REDIS_URL".into(), format!("redis://{addr}"))], vec![redis])
    }

    fn command(&self, vars: &[(String, String)], port: u16, _state: &Path) -> Command {
        let mut cmd = Command::new(wasmtime());
        cmd.args(["serve", "--addr", &format!("127.0.0.1:{port}")])
            .args(["-Scli", "-Sp3", "-Shttp", "-Sinherit-network", "-Wcomponent-model-async"]);
        for (name, value) in vars {
            cmd.arg("--env").arg(format!("{name}={value}"));
        }
        cmd.arg(component());
        cmd
    }
}
