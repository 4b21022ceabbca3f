//! How each runtime is started — the one place its command line and configuration are written —
//! for the end-to-end suite (`tests/e2e/{workerd,wasi}.rs`) and, through `examples/launch.rs`,
//! for `make bench` (`benches/bench.py`). std only.
//!
//! workerd gets the same compatibility date, flags and Durable Object binding as a deploy: they
//! are read from `wrangler.toml`, never restated. `wasmtime serve` runs the Spin component in its
//! WASI 0.2 mode, as every Spin does. Redis is a plain `redis-server` on loopback.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// What `wrangler.toml` deploys, as workerd needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wrangler {
    /// The entry module (`make worker` bundles it; the wasm it imports lies beside it).
    pub main: String,
    pub compatibility_date: String,
    pub compatibility_flags: Vec<String>,
    /// The rate limiter's Durable Object binding and class.
    pub limiter_binding: String,
    pub limiter_class: String,
}

/// Reads the settings workerd needs from `wrangler.toml` (a few `key = value` lines; enough TOML
/// for this file).
pub fn wrangler() -> Wrangler {
    let toml = std::fs::read_to_string(root().join("wrangler.toml")).expect("wrangler.toml");
    // `key = value` in the section headed `section` ("" for the top), comments skipped.
    let value = |section: &str, key: &str| -> String {
        let mut current = "";
        toml.lines()
            .map(str::trim)
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| {
                if line.starts_with('[') {
                    current = line;
                    return None;
                }
                (current == section).then(|| line.strip_prefix(key)?.trim_start().strip_prefix('=').map(str::trim))?
            })
            .unwrap_or_else(|| panic!("wrangler.toml has no `{key}` in `{section}`"))
            .to_string()
    };
    let unquote = |s: &str| s.trim().trim_matches('"').to_string();
    let flags = value("", "compatibility_flags");
    Wrangler {
        main: unquote(&value("", "main")),
        compatibility_date: unquote(&value("", "compatibility_date")),
        compatibility_flags: flags.trim_matches(['[', ']']).split(',').map(unquote).filter(|f| !f.is_empty()).collect(),
        limiter_binding: unquote(&value("[[durable_objects.bindings]]", "name")),
        limiter_class: unquote(&value("[[durable_objects.bindings]]", "class_name")),
    }
}

/// The Analytics Engine binding the Workers build writes metrics to.
const METRICS_BINDING: &str = "GATEWAY_METRICS";

/// A stand-in Analytics Engine dataset: logs each data point as one JSON line, exactly as given.
const METRICS_CAPTURE: &str = r#"export default function () {
  return {
    writeDataPoint(point) {
      console.log(JSON.stringify({ metrics_point: point }));
    },
  };
}
"#;

/// What workerd serves.
pub enum Script<'a> {
    /// The gateway's release bundle (`make worker`), with its Durable Object, storage under `dir`.
    Gateway,
    /// A JavaScript module of its own (the benchmark's bare pass-through).
    Module(&'a Path),
}

/// Writes workerd's config (and the code it embeds) into `dir`, serving `script` on
/// `127.0.0.1:port` with `vars` as text bindings; returns the command that runs it (in `dir`).
pub fn workerd(dir: &Path, port: u16, script: Script<'_>, vars: &[(String, String)]) -> Command {
    let workerd = root().join("node_modules/.bin/workerd");
    assert!(workerd.exists(), "workerd is missing: run `make node-tools` (`make test` does)");
    let settings = wrangler();
    let text = capnp_text;
    // `GATEWAY_METRICS=capture` binds the metrics dataset to a wrapped binding that writes each
    // data point to the log as `{"metrics_point":{…}}` (what `wrangler dev` binds is a no-op).
    let capture_metrics = vars.iter().any(|(name, value)| name == METRICS_BINDING && value == "capture");
    let mut bindings: Vec<String> = vars
        .iter()
        .filter(|(name, _)| name != METRICS_BINDING)
        .map(|(name, value)| format!("(name = {}, text = {})", text(name), text(value)))
        .collect();
    if capture_metrics {
        bindings.push(format!(
            "(name = {}, wrapped = (moduleName = \"edge-gateway-test:metrics\", innerBindings = []))",
            text(METRICS_BINDING)
        ));
        std::fs::write(dir.join("metrics-capture.js"), METRICS_CAPTURE).expect("metrics capture module");
    }
    let mut services = vec![
        r#"(name = "gateway", worker = .gateway)"#.to_string(),
        r#"(name = "internet", network = (allow = ["public", "private", "local"]))"#.to_string(),
    ];
    let mut extra = String::new();
    let modules = match script {
        Script::Gateway => {
            // wrangler.toml's `main` and the wasm modules beside it, under the same names.
            let main = root().join(&settings.main);
            let folder = main.parent().expect("main has a folder");
            assert!(main.exists(), "the Workers bundle is missing: run `make worker` (`make test` does)");
            let mut files = vec![main.clone()];
            files.extend(
                std::fs::read_dir(folder)
                    .expect("the bundle's folder")
                    .map(|e| e.expect("an entry").path())
                    .filter(|p| p.extension().is_some_and(|e| e == "wasm")),
            );
            let named = Path::new(&settings.main).parent().expect("main has a folder");
            std::fs::create_dir_all(dir.join(named)).expect("bundle dir");
            std::fs::create_dir_all(dir.join("durable-objects")).expect("storage dir");
            let mut modules = Vec::new();
            for file in &files {
                let name = named.join(file.file_name().expect("a file name")).display().to_string();
                std::fs::copy(file, dir.join(&name)).expect("copy the bundle");
                let kind = if file == &main { "esModule" } else { "wasm" };
                modules.push(format!("(name = {}, {kind} = embed {})", text(&name), text(&name)));
            }
            services.push(format!(
                "(name = \"do-storage\", disk = (path = {}, writable = true))",
                text(&dir.join("durable-objects").display().to_string())
            ));
            bindings.insert(
                0,
                format!(
                    "(name = {}, durableObjectNamespace = {})",
                    text(&settings.limiter_binding),
                    text(&settings.limiter_class)
                ),
            );
            extra = format!(
                "  durableObjectNamespaces = [(className = {}, uniqueKey = {}, enableSql = true)],\n  durableObjectStorage = (localDisk = \"do-storage\"),\n",
                text(&settings.limiter_class),
                text(&format!("edge-gateway-{}", settings.limiter_class)),
            );
            modules
        }
        Script::Module(path) => {
            std::fs::copy(path, dir.join("worker.js")).expect("copy the module");
            vec!["(name = \"worker.js\", esModule = embed \"worker.js\")".to_string()]
        }
    };
    let flags: Vec<String> = settings.compatibility_flags.iter().map(|f| text(f)).collect();
    let extensions = match capture_metrics {
        true => "\n  extensions = [(modules = [(name = \"edge-gateway-test:metrics\", esModule = embed \"metrics-capture.js\", internal = true)])],",
        false => "",
    };
    let config = format!(
        r#"using Workerd = import "/workerd/workerd.capnp";
const config :Workerd.Config = (
  services = [
    {services},
  ],
  sockets = [(name = "http", address = "127.0.0.1:{port}", http = (), service = "gateway")],{extensions}
);
const gateway :Workerd.Worker = (
  modules = [
    {modules},
  ],
  compatibilityDate = {date},
  compatibilityFlags = [{flags}],
  bindings = [
    {bindings},
  ],
{extra}  globalOutbound = "internet",
);
"#,
        services = services.join(",\n    "),
        modules = modules.join(",\n    "),
        date = text(&settings.compatibility_date),
        flags = flags.join(", "),
        bindings = bindings.join(",\n    "),
    );
    std::fs::write(dir.join("config.capnp"), config).expect("workerd config");
    let mut cmd = Command::new(workerd);
    cmd.current_dir(dir).args(["serve", "--experimental", "config.capnp"]);
    cmd
}

/// `WASMTIME`, or `wasmtime` from `~/.cargo/bin` (`make tools` installs it).
pub fn wasmtime_path() -> PathBuf {
    if let Some(path) = std::env::var_os("WASMTIME") {
        return path.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    Path::new(&home).join(".cargo/bin/wasmtime")
}

/// The release Spin component (`make spin`).
pub fn component() -> PathBuf {
    root().join("target/wasm32-wasip2/release/edge_gateway.wasm")
}

/// `wasmtime serve` of the component on `127.0.0.1:port` with `vars`, in WASI 0.2 mode: the CLI,
/// HTTP and socket interfaces (the component imports only those), `extra` flags before it.
pub fn wasmtime(port: u16, vars: &[(String, String)], extra: &[&str]) -> Command {
    wasmtime_serve(&component(), port, vars, extra)
}

/// [`wasmtime`] for any WASI-HTTP component (the benchmark's bare pass-through too).
pub fn wasmtime_serve(component: &Path, port: u16, vars: &[(String, String)], extra: &[&str]) -> Command {
    assert!(
        component.exists() && wasmtime_path().exists(),
        "{} or wasmtime is missing: run `make spin tools` first (`make test` does)",
        component.display()
    );
    let mut cmd = Command::new(wasmtime_path());
    cmd.args(["serve", "--addr", &format!("127.0.0.1:{port}")])
        .args(["-Scli", "-Shttp", "-Sinherit-network", "-Sallow-ip-name-lookup"])
        // In WASI 0.2 mode every request is an instance of its own (three core instances each):
        // the pooling allocator's default of 1000 core instances would refuse part of a
        // 1,000-request burst, so allocate on demand, as a host sized for that load would.
        .args(["-Opooling-allocator=n"])
        .args(extra);
    for (name, value) in vars {
        cmd.arg("--env").arg(format!("{name}={value}"));
    }
    cmd.arg(component);
    cmd
}

/// A `redis-server` on `127.0.0.1:port`, nothing persisted.
pub fn redis(port: u16) -> Command {
    redis_on("127.0.0.1", port)
}

/// redis-server listening on `bind` (an address: `::1` for IPv6 loopback).
pub fn redis_on(bind: &str, port: u16) -> Command {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--bind", bind, "--port", &port.to_string(), "--save", "", "--appendonly", "no"]);
    cmd
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
