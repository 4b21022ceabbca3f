//! Runs the release Workers bundle (`build/`, from `make worker`) in workerd itself, from a
//! generated workerd config, with the same bindings `wrangler.toml` declares.
//!
//! Not through `wrangler dev`: its dev proxy answers "worker restarted mid-request" (503) to some
//! POSTs the worker has already answered, which no deployed worker does. workerd starts in ~0.2 s.

use crate::harness::{launch, Gateway, Host, Setup};
use crate::support::Proc;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// Must match `wrangler.toml`.
const COMPATIBILITY_DATE: &str = "2025-09-01";
const LIMITER_BINDING: &str = "RATE_LIMITER";
const LIMITER_CLASS: &str = "RateLimiter";
const COMPATIBILITY_FLAG: &str = "enable_request_signal";

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

    fn services(&self, state: &Path) -> (Vec<(String, String)>, Vec<Proc>) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let bundle = ["build/worker/shim.mjs", "build/index.js", "build/index_bg.wasm"].map(|p| root.join(p));
        assert!(
            root.join("node_modules/.bin/workerd").exists() && bundle.iter().all(|p| p.exists()),
            "the Workers bundle or workerd is missing: run `make worker` first (`make test` does)"
        );
        check_wrangler_toml(root);
        std::fs::create_dir_all(state.join("worker")).expect("state dir");
        std::fs::create_dir_all(state.join("durable-objects")).expect("storage dir");
        for (from, to) in bundle.iter().zip(["worker/shim.mjs", "index.js", "index_bg.wasm"]) {
            std::fs::copy(from, state.join(to)).expect("copy bundle");
        }
        // The Durable Objects live inside workerd, with their storage on disk under `state`.
        (Vec::new(), Vec::new())
    }

    fn command(&self, vars: &[(String, String)], port: u16, state: &Path) -> Command {
        let bindings: Vec<String> = vars
            .iter()
            .map(|(name, value)| format!("(name = {}, text = {})", capnp_text(name), capnp_text(value)))
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
  compatibilityFlags = ["{COMPATIBILITY_FLAG}"],
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
        std::fs::write(state.join("config.capnp"), config).expect("workerd config");
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut cmd = Command::new(root.join("node_modules/.bin/workerd"));
        cmd.current_dir(state).args(["serve", "--experimental", "config.capnp"]);
        cmd
    }
}

/// Keeps this launcher honest: the bindings it declares are the ones `wrangler.toml` deploys.
fn check_wrangler_toml(root: &Path) {
    let toml = std::fs::read_to_string(root.join("wrangler.toml")).expect("wrangler.toml");
    for expected in [
        format!("compatibility_date = \"{COMPATIBILITY_DATE}\""),
        format!("compatibility_flags = [\"{COMPATIBILITY_FLAG}\"]"),
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
