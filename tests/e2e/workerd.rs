//! Runs the release Workers bundle (`build/`, from `make worker`) in workerd itself, from a
//! generated workerd config, with the same bindings `wrangler.toml` declares.
//!
//! Not through `wrangler dev`: its dev proxy answers "worker restarted mid-request" (503) to some
//! POSTs the worker has already answered, which no deployed worker does. workerd starts in ~0.2 s.

use crate::harness::{serve, start_backends, variables, Gateway};
use crate::support::free_port;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// Must match `wrangler.toml`.
const COMPATIBILITY_DATE: &str = "2025-09-01";
const LIMITER_BINDING: &str = "RATE_LIMITER";
const LIMITER_CLASS: &str = "RateLimiter";

/// One gateway per test binary, started on first use.
pub fn gateway() -> &'static Gateway {
    static GATEWAY: OnceLock<Gateway> = OnceLock::new();
    GATEWAY.get_or_init(start)
}

fn start() -> Gateway {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workerd = root.join("node_modules/.bin/workerd");
    let bundle = ["build/worker/shim.mjs", "build/index.js", "build/index_bg.wasm"].map(|p| root.join(p));
    assert!(
        workerd.exists() && bundle.iter().all(|p| p.exists()),
        "the Workers bundle or workerd is missing: run `make worker` first (`make test` does)"
    );
    check_wrangler_toml(root);
    let (primary, spare) = start_backends();
    let state = std::env::temp_dir().join(format!("edge-gateway-e2e-workerd-{}", std::process::id()));
    std::fs::create_dir_all(state.join("worker")).expect("state dir");
    std::fs::create_dir_all(state.join("durable-objects")).expect("storage dir");
    for (from, to) in bundle.iter().zip(["worker/shim.mjs", "index.js", "index_bg.wasm"]) {
        std::fs::copy(from, state.join(to)).expect("copy bundle");
    }
    let port = free_port();
    let bindings: Vec<String> = variables(&primary, &spare)
        .into_iter()
        .map(|(name, value)| format!("(name = {}, text = {})", capnp_text(&name), capnp_text(&value)))
        .collect();
    let config = format!(
        r#"using Workerd = import "/workerd/workerd.capnp";
const config :Workerd.Config = (
  services = [
    (name = "gateway", worker = .gateway),
    (name = "internet", network = (allow = ["public", "private", "local"])),
    (name = "do-storage", disk = (path = {storage}, writable = true)),
  ],
  sockets = [(name = "http", address = "127.0.0.1:{port}", http = (), service = "gateway")],
);
const gateway :Workerd.Worker = (
  modules = [
    (name = "worker/shim.mjs", esModule = embed "worker/shim.mjs"),
    (name = "index.js", esModule = embed "index.js"),
    (name = "index_bg.wasm", wasm = embed "index_bg.wasm"),
  ],
  compatibilityDate = "{COMPATIBILITY_DATE}",
  bindings = [
    (name = "{LIMITER_BINDING}", durableObjectNamespace = "{LIMITER_CLASS}"),
    {bindings},
  ],
  durableObjectNamespaces = [(className = "{LIMITER_CLASS}", uniqueKey = "edge-gateway-{LIMITER_CLASS}", enableSql = true)],
  durableObjectStorage = (localDisk = "do-storage"),
  globalOutbound = "internet",
);
"#,
        storage = capnp_text(&state.join("durable-objects").display().to_string()),
        bindings = bindings.join(",\n    "),
    );
    let config_path: PathBuf = state.join("config.capnp");
    std::fs::write(&config_path, config).expect("workerd config");

    let mut cmd = Command::new(&workerd);
    cmd.current_dir(&state).args(["serve", "--experimental", "config.capnp"]);
    let (addr, runtime) = serve("workerd", &cmd, port, &state.join("workerd.log"));
    Gateway { addr, primary, spare: Mutex::new(Some(spare)), processes: vec![runtime] }
}

/// Keeps this launcher honest: the bindings it declares are the ones `wrangler.toml` deploys.
fn check_wrangler_toml(root: &Path) {
    let toml = std::fs::read_to_string(root.join("wrangler.toml")).expect("wrangler.toml");
    for expected in [
        format!("compatibility_date = \"{COMPATIBILITY_DATE}\""),
        format!("name = \"{LIMITER_BINDING}\""),
        format!("class_name = \"{LIMITER_CLASS}\""),
        "main = \"build/worker/shim.mjs\"".to_string(),
    ] {
        assert!(toml.contains(&expected), "wrangler.toml no longer says {expected}: update tests/e2e/workerd.rs");
    }
}

/// A Cap'n Proto text literal.
fn capnp_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
