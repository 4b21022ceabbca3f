//! Runs the release Spin component (`make spin`) in a WASI-HTTP host, `wasmtime serve`, with its
//! rate-limit state in a real `redis-server`, both on 127.0.0.1.
//!
//! The Spin CLI is not on the package registries; `wasmtime serve` hosts the same component
//! unmodified because it only imports WASI interfaces (see `src/spin.rs`).

use crate::harness::{serve, start_backends, variables, watched, Gateway};
use crate::support::{free_port, wait_until};
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// One gateway per test binary, started on first use.
pub fn gateway() -> &'static Gateway {
    static GATEWAY: OnceLock<Gateway> = OnceLock::new();
    GATEWAY.get_or_init(start)
}

/// The WASI-HTTP host: `WASMTIME` or `wasmtime` from `~/.cargo/bin` (`make tools` installs it).
fn wasmtime() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("WASMTIME") {
        return path.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    Path::new(&home).join(".cargo/bin/wasmtime")
}

fn start() -> Gateway {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let component = root.join("target/wasm32-wasip2/release/edge_gateway.wasm");
    let wasmtime = wasmtime();
    assert!(
        component.exists() && wasmtime.exists(),
        "the Spin component or wasmtime is missing: run `make spin tools` first (`make test` does)"
    );
    let (primary, spare) = start_backends();
    let state = std::env::temp_dir().join(format!("edge-gateway-e2e-wasi-{}", std::process::id()));
    std::fs::create_dir_all(&state).expect("state dir");

    let redis_port = free_port();
    let mut redis = Command::new("redis-server");
    redis.args(["--bind", "127.0.0.1", "--port", &redis_port.to_string(), "--save", "", "--appendonly", "no"]);
    let redis_log = std::fs::File::create(state.join("redis.log")).expect("log file");
    let redis = watched(&redis, Some(&redis_log));
    let redis_addr = format!("127.0.0.1:{redis_port}");
    assert!(
        wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(&redis_addr).is_ok()),
        "redis-server did not listen on {redis_addr}"
    );

    let port = free_port();
    let mut cmd = Command::new(&wasmtime);
    cmd.args(["serve", "--addr", &format!("127.0.0.1:{port}")])
        .args(["-Scli", "-Sp3", "-Shttp", "-Sinherit-network", "-Wcomponent-model-async"]);
    let mut vars = variables(&primary, &spare);
    vars.push(("GATEWAY_REDIS_URL".into(), format!("redis://{redis_addr}")));
    for (name, value) in vars {
        cmd.arg("--env").arg(format!("{name}={value}"));
    }
    cmd.arg(&component);
    let (addr, runtime) = serve("wasmtime serve", &cmd, port, &state.join("wasmtime.log"));
    Gateway { addr, primary, spare: Mutex::new(Some(spare)), processes: vec![runtime, redis] }
}
