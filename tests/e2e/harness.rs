//! What every runtime's launcher provides: a gateway URL with the shared test configuration, the
//! mock backends behind it, and processes that die with the test binary.
#![allow(dead_code)]

use crate::support::{MockBackend, Proc};
use edge_gateway::core::auth::sha256_hex;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// A key allowed every model, without limits.
pub const KEY: &str = "sk-e2e-open";
/// A key limited to [`LIMITED_RPM`] requests per minute.
pub const LIMITED_KEY: &str = "sk-e2e-limited";
pub const LIMITED_RPM: u32 = 3;
/// A key allowed only the spare model.
pub const NARROW_KEY: &str = "sk-e2e-narrow";
/// The credential the primary backend demands; only the gateway knows it.
pub const BACKEND_CREDENTIAL: &str = "backend-credential-e2e";
pub const MODEL: &str = "mock-llama";
pub const SPARE_MODEL: &str = "spare-model";
pub const MAX_BODY_BYTES: usize = 65_536;
pub const ALLOWED_ORIGIN: &str = "https://app.example.com";

/// A key limited to [`BURST_RPM`] requests per minute, for the concurrency case.
pub const BURST_KEY: &str = "sk-e2e-burst";
pub const BURST_RPM: u32 = 100;
/// A key limited to [`IN_FLIGHT_MAX`] requests at once, on the slow backend only.
pub const IN_FLIGHT_KEY: &str = "sk-e2e-inflight";
pub const IN_FLIGHT_MAX: u32 = 3;
/// A key limited to one request at once, on the primary backend.
pub const SINGLE_KEY: &str = "sk-e2e-single";
/// A key limited to [`METERED_TPM`] tokens per minute.
pub const METERED_KEY: &str = "sk-e2e-metered";
pub const METERED_TPM: u32 = 1_000;
/// How long the gateway under test waits for a stream's headers, first byte, or next chunk.
pub const FAULT_TIMEOUT_MS: u64 = 2_000;
/// How long it waits for a whole answer (a non-stream one included).
pub const TOTAL_TIMEOUT_MS: u64 = 6_000;
/// Keys limited to 60 requests per minute, one per SDK script (which spends its budget).
pub const SDK_PY_KEY: &str = "sk-e2e-sdk-py";
pub const SDK_JS_KEY: &str = "sk-e2e-sdk-js";
/// The HS256 secret browsers' tokens are signed with.
pub const JWT_SECRET: &str = "e2e-jwt-secret-that-is-at-least-32-bytes";
pub const JWT_ISSUER: &str = "https://auth.example.com";
pub const JWT_AUDIENCE: &str = "edge-gateway";
/// Served only by the slow backend, whose open-stream count belongs to one case.
pub const SLOW_MODEL: &str = "slow-model";
/// Served only by a backend that, like llama-cpp-python, refuses any `x-request-id` that is not a
/// UUID with an empty 400; one case owns its recorded requests.
pub const STRICT_MODEL: &str = "strict-model";
/// Served by a backend with a 300-token context (`--max-model-len`), declared in the config.
pub const SMALL_MODEL: &str = "small-model";
pub const SMALL_CONTEXT: u32 = 300;
/// A key limited to one request at once on the slow backend, for the client-leaves case.
pub const LEAVER_KEY: &str = "sk-e2e-leaver";
/// A key limited to [`METERED_TPM`] tokens per minute, for the estimate-bypass case.
pub const BYPASS_KEY: &str = "sk-e2e-bypass";
/// A key limited to two requests at once, for the shared-request-id case.
pub const SHARED_ID_KEY: &str = "sk-e2e-shared-id";
/// A key limited to one request at once, for the clients-leaving case.
pub const LEAVING_KEY: &str = "sk-e2e-leaving";
/// Keys limited to [`ENDPOINT_RPM`] requests a minute, one per endpoint's 429 case.
pub const EMBED_KEY: &str = "sk-e2e-embed";
pub const COMPLETE_KEY: &str = "sk-e2e-complete";
pub const RESPOND_KEY: &str = "sk-e2e-respond";
pub const ENDPOINT_RPM: u32 = 2;
/// A key for [`MODEL`] alone, which one backend serves: it may reach stored responses.
pub const STATE_KEY: &str = "sk-e2e-state";
/// Items one embeddings request may carry.
pub const MAX_EMBEDDING_INPUTS: usize = 16;
/// Total text (bytes) a request may carry: below the body cap, so the content cap is what refuses.
pub const MAX_CONTENT_BYTES: usize = 16_384;

/// A runtime that can serve the gateway: workerd for the Workers bundle, a WASI-HTTP host for
/// the Spin component.
pub trait Host: Sync {
    fn name(&self) -> &'static str;
    /// The header through which this platform vouches for the client's address (set by the
    /// platform in production; the tests play the platform).
    fn client_ip_header(&self) -> &'static str;
    /// Starts what the runtime needs besides itself (a limit store); extra variables for it.
    fn services(&self, state: &Path) -> (Vec<(String, String)>, Vec<Proc>);
    /// The command that serves the gateway with `vars` on `port`, keeping state under `state`.
    fn command(&self, vars: &[(String, String)], port: u16, state: &Path) -> Command;
}

/// A running gateway under test.
pub struct Gateway {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    pub client_ip_header: &'static str,
    /// Serves [`MODEL`] and requires [`BACKEND_CREDENTIAL`].
    pub primary: MockBackend,
    /// Serves [`SPARE_MODEL`]; the readiness case stops it.
    pub spare: Mutex<Option<MockBackend>>,
    /// Serves [`SLOW_MODEL`] for the in-flight case alone.
    pub slow: MockBackend,
    /// Serves [`STRICT_MODEL`], refusing non-UUID request ids.
    pub strict: MockBackend,
    /// Serves [`SMALL_MODEL`] with a [`SMALL_CONTEXT`]-token context.
    pub small: MockBackend,
    /// A port whose `http://127.0.0.1:PORT` origin CORS allows (for a page the browser case serves).
    pub page_port: u16,
    /// The runtime first, then what it needs (a limit store); stopped when the test binary exits.
    processes: Vec<Proc>,
    host: &'static dyn Host,
    vars: Vec<(String, String)>,
    port: u16,
    state: PathBuf,
}

impl Gateway {
    /// The request records the runtime has logged so far (its JSON lines with a `request_id`).
    pub fn log_records(&self) -> Vec<serde_json::Value> {
        let log = std::fs::read_to_string(self.state.join(format!("{}.log", self.host.name()))).unwrap_or_default();
        log.lines()
            // `wasmtime serve` prefixes each line with `stdout [instance] :: `.
            .filter_map(|line| {
                line.find('{').and_then(|at| serde_json::from_str::<serde_json::Value>(&line[at..]).ok())
            })
            .filter(|record| record.get("request_id").is_some())
            .collect()
    }

    /// The data points a capturing metrics binding logged (`GATEWAY_METRICS=capture`, Workers
    /// only), and the request records, each in the order they were written.
    pub fn metrics_points_and_records(&self) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
        let log = std::fs::read_to_string(self.state.join(format!("{}.log", self.host.name()))).unwrap_or_default();
        let points = log
            .lines()
            .filter_map(|line| {
                line.find('{').and_then(|at| serde_json::from_str::<serde_json::Value>(&line[at..]).ok())
            })
            .filter_map(|line| line.get("metrics_point").cloned())
            .collect();
        (points, self.log_records())
    }

    /// The record of the request whose client was given `request_id`, once it is logged.
    pub fn log_record(&self, request_id: &str) -> serde_json::Value {
        let mut found = None;
        crate::support::wait_until(Duration::from_secs(10), || {
            found = self.log_records().into_iter().find(|r| r["request_id"] == request_id);
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no log record for {request_id}"))
    }

    /// Stops the runtime and starts it again on the same state and address (the limit store
    /// keeps running), as a redeploy or an evicted instance would.
    pub fn restart_runtime(&mut self) {
        self.processes[0].kill();
        let (_, runtime) = serve(self.host, &self.vars, self.port, &self.state);
        self.processes[0] = runtime;
    }
}

/// What a dedicated gateway adds to the shared configuration.
#[derive(Default, Clone, Copy)]
pub struct Setup<'a> {
    /// Variables to set (replacing shared ones of the same name).
    pub vars: &'a [(&'a str, &'a str)],
    /// More backends (JSON objects) for `GATEWAY_BACKENDS`.
    pub backends: &'a [&'a str],
}

/// Starts the mock backends, the host's services and the gateway with the shared configuration
/// plus `setup`, in a fresh state directory.
pub fn launch(host: &'static dyn Host, setup: Setup<'_>) -> Gateway {
    static LAUNCHES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let state = std::env::temp_dir().join(format!("edge-gateway-e2e-{}-{}-{n}", host.name(), std::process::id()));
    std::fs::create_dir_all(&state).expect("state dir");
    let primary = watched_mock(&["--model", MODEL, "--api-key", BACKEND_CREDENTIAL]);
    let spare = watched_mock(&["--model", SPARE_MODEL]);
    let slow = watched_mock(&["--model", SLOW_MODEL]);
    let strict = watched_mock(&["--model", STRICT_MODEL, "--strict-request-id"]);
    let small = watched_mock(&["--model", SMALL_MODEL, "--max-model-len", &SMALL_CONTEXT.to_string()]);
    let (mut vars, services) = host.services(&state);
    let page_port = crate::support::free_port();
    vars.extend(variables(&[&primary, &spare, &slow, &strict, &small], setup.backends, page_port));
    for (name, value) in setup.vars {
        vars.retain(|(n, _)| n != name);
        vars.push((name.to_string(), value.to_string()));
    }
    let port = crate::support::free_port();
    let (addr, runtime) = serve(host, &vars, port, &state);
    let mut processes = vec![runtime];
    processes.extend(services);
    Gateway {
        addr,
        client_ip_header: host.client_ip_header(),
        primary,
        spare: Mutex::new(Some(spare)),
        slow,
        strict,
        small,
        page_port,
        processes,
        host,
        vars,
        port,
        state,
    }
}

/// Starts the runtime and waits until its `/healthz` answers 200.
fn serve(host: &dyn Host, vars: &[(String, String)], port: u16, state: &Path) -> (String, Proc) {
    let log_path = state.join(format!("{}.log", host.name()));
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).expect("log file");
    let runtime = watched(&host.command(vars, port, state), Some(&log));
    let addr = format!("127.0.0.1:{port}");
    let up = crate::support::wait_until(Duration::from_secs(60), || {
        crate::support::try_request(&addr, "GET", "/healthz", &[], None).is_ok_and(|r| r.status == 200)
    });
    assert!(up, "{} did not serve /healthz on {addr}; see {}", host.name(), log_path.display());
    (addr, runtime)
}

/// The configuration variables every runtime gets, as name/value pairs.
fn variables(mocks: &[&MockBackend; 5], extra: &[&str], page_port: u16) -> Vec<(String, String)> {
    let [primary, spare, slow, strict, small] = mocks;
    let mut backends = vec![
        format!(
            r#"{{"name":"primary","url":"{}","models":["{MODEL}"],"api_key_secret":"PRIMARY_BACKEND_KEY"}}"#,
            primary.base_url
        ),
        format!(r#"{{"name":"spare","url":"{}","models":["{SPARE_MODEL}"]}}"#, spare.base_url),
        format!(r#"{{"name":"slow","url":"{}","models":["{SLOW_MODEL}"]}}"#, slow.base_url),
        format!(r#"{{"name":"strict","url":"{}","models":["{STRICT_MODEL}"]}}"#, strict.base_url),
        format!(
            r#"{{"name":"small","url":"{}","models":["{SMALL_MODEL}"],"max_model_len":{SMALL_CONTEXT}}}"#,
            small.base_url
        ),
    ];
    backends.extend(extra.iter().map(|b| b.to_string()));
    let backends = format!("[{}]", backends.join(","));
    let key = |id: &str, key: &str, models: &str, limits: &str| {
        format!(r#"{{"id":"{id}","sha256":"{}","models":{models}{limits}}}"#, sha256_hex(key))
    };
    let keys = [
        key("open", KEY, r#"["*"]"#, ""),
        key("limited", LIMITED_KEY, &format!(r#"["{MODEL}"]"#), &format!(r#","requests_per_minute":{LIMITED_RPM}"#)),
        key("narrow", NARROW_KEY, &format!(r#"["{SPARE_MODEL}"]"#), ""),
        key("burst", BURST_KEY, &format!(r#"["{MODEL}"]"#), &format!(r#","requests_per_minute":{BURST_RPM}"#)),
        key(
            "inflight",
            IN_FLIGHT_KEY,
            &format!(r#"["{SLOW_MODEL}"]"#),
            &format!(r#","max_in_flight":{IN_FLIGHT_MAX}"#),
        ),
        key("single", SINGLE_KEY, &format!(r#"["{MODEL}"]"#), r#","max_in_flight":1"#),
        key("metered", METERED_KEY, &format!(r#"["{MODEL}"]"#), &format!(r#","tokens_per_minute":{METERED_TPM}"#)),
        key("sdk-py", SDK_PY_KEY, &format!(r#"["{MODEL}"]"#), r#","requests_per_minute":60"#),
        key("sdk-js", SDK_JS_KEY, &format!(r#"["{MODEL}"]"#), r#","requests_per_minute":60"#),
        key("leaver", LEAVER_KEY, &format!(r#"["{SLOW_MODEL}"]"#), r#","max_in_flight":1"#),
        key("bypass", BYPASS_KEY, &format!(r#"["{MODEL}"]"#), &format!(r#","tokens_per_minute":{METERED_TPM}"#)),
        key("shared-id", SHARED_ID_KEY, &format!(r#"["{MODEL}"]"#), r#","max_in_flight":2"#),
        key("leaving", LEAVING_KEY, &format!(r#"["{MODEL}"]"#), r#","max_in_flight":1"#),
        key("embed", EMBED_KEY, &format!(r#"["{MODEL}"]"#), &format!(r#","requests_per_minute":{ENDPOINT_RPM}"#)),
        key("complete", COMPLETE_KEY, &format!(r#"["{MODEL}"]"#), &format!(r#","requests_per_minute":{ENDPOINT_RPM}"#)),
        key("respond", RESPOND_KEY, &format!(r#"["{MODEL}"]"#), &format!(r#","requests_per_minute":{ENDPOINT_RPM}"#)),
        key("state", STATE_KEY, &format!(r#"["{MODEL}"]"#), ""),
    ];
    let jwt = format!(
        r#"{{"issuer":"{JWT_ISSUER}","audience":"{JWT_AUDIENCE}","hs256_secret":"JWT_SECRET","tokens_per_minute":100000}}"#
    );
    [
        ("GATEWAY_BACKENDS", backends),
        ("GATEWAY_API_KEYS", format!("[{}]", keys.join(","))),
        ("PRIMARY_BACKEND_KEY", BACKEND_CREDENTIAL.to_string()),
        ("GATEWAY_MAX_BODY_BYTES", MAX_BODY_BYTES.to_string()),
        ("GATEWAY_MAX_TOKENS", "256".to_string()),
        ("GATEWAY_CORS_ORIGINS", format!("{ALLOWED_ORIGIN},http://127.0.0.1:{page_port}")),
        ("GATEWAY_JWT", jwt),
        ("JWT_SECRET", JWT_SECRET.to_string()),
        ("GATEWAY_HEALTH_TIMEOUT_MS", "1000".to_string()),
        ("GATEWAY_CONNECT_TIMEOUT_MS", FAULT_TIMEOUT_MS.to_string()),
        ("GATEWAY_FIRST_BYTE_TIMEOUT_MS", FAULT_TIMEOUT_MS.to_string()),
        ("GATEWAY_IDLE_TIMEOUT_MS", FAULT_TIMEOUT_MS.to_string()),
        // A non-stream answer is waited for up to the total timeout: keep the fault table short.
        ("GATEWAY_TOTAL_TIMEOUT_MS", TOTAL_TIMEOUT_MS.to_string()),
        ("GATEWAY_MAX_CONTENT_BYTES", MAX_CONTENT_BYTES.to_string()),
        ("GATEWAY_MAX_EMBEDDING_INPUTS", MAX_EMBEDDING_INPUTS.to_string()),
        // The readiness case stops a backend and expects the next call to see it.
        ("GATEWAY_READYZ_CACHE_MS", "0".to_string()),
        // Cases share backends and provoke faults on purpose: no case may eject a backend that
        // another relies on (ejection itself is pinned by the core's tests).
        ("GATEWAY_EJECT_AFTER_FAILURES", "1000000".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Spawns `cmd` in its own process group under a watchdog shell that kills the group when this
/// test binary exits (its stdin pipe closes), so processes held in statics never outlive the run.
/// Its output goes to `log` (stdout and stderr), or is piped when `log` is `None`.
pub fn watched(cmd: &Command, log: Option<&std::fs::File>) -> Proc {
    let mut wrapper = Command::new("sh");
    wrapper
        .arg("-c")
        .arg(r#""$@" </dev/null & read -r _ignored; kill -TERM 0"#)
        .arg("watchdog")
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdin(Stdio::piped());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapper.env(k, v),
            None => wrapper.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapper.current_dir(dir);
    }
    match log {
        Some(file) => {
            wrapper.stdout(file.try_clone().expect("log file")).stderr(file.try_clone().expect("log file"));
        }
        None => {
            wrapper.stdout(Stdio::piped()).stderr(Stdio::inherit());
        }
    }
    Proc::spawn(wrapper)
}

/// A mock backend on a free port, under the watchdog.
pub fn watched_mock(args: &[&str]) -> MockBackend {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mock-backend"));
    cmd.args(["--addr", "127.0.0.1:0"]).args(args);
    let mut proc = watched(&cmd, None);
    let stdout = proc.child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {} // keep draining so the mock never blocks on stdout
    });
    let line = rx.recv_timeout(Duration::from_secs(10)).expect("mock-backend printed no address");
    let base_url = line.trim().strip_prefix("listening on ").expect("listening line").to_string();
    let addr = base_url.trim_start_matches("http://").parse().expect("address");
    MockBackend { proc, base_url, addr }
}
