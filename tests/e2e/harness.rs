//! What every runtime's launcher provides: a gateway URL with the shared test configuration, the
//! mock backends behind it, and processes that die with the test binary.
#![allow(dead_code)]

use crate::support::{MockBackend, Proc};
use edge_gateway::core::auth::sha256_hex;
use std::io::{BufRead, BufReader};
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

/// A running gateway under test.
pub struct Gateway {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Serves [`MODEL`] and requires [`BACKEND_CREDENTIAL`].
    pub primary: MockBackend,
    /// Serves [`SPARE_MODEL`]; the readiness case stops it.
    pub spare: Mutex<Option<MockBackend>>,
    /// The runtime and whatever it needs (a limit store), stopped when the test binary exits.
    pub processes: Vec<Proc>,
}

/// The configuration variables every runtime gets, as name/value pairs.
pub fn variables(primary: &MockBackend, spare: &MockBackend) -> Vec<(String, String)> {
    let backends = format!(
        r#"[{{"name":"primary","url":"{}","models":["{MODEL}"],"api_key_secret":"PRIMARY_BACKEND_KEY"}},{{"name":"spare","url":"{}","models":["{SPARE_MODEL}"]}}]"#,
        primary.base_url, spare.base_url
    );
    let keys = format!(
        r#"[{{"id":"open","sha256":"{}","models":["*"]}},{{"id":"limited","sha256":"{}","models":["{MODEL}"],"requests_per_minute":{LIMITED_RPM}}},{{"id":"narrow","sha256":"{}","models":["{SPARE_MODEL}"]}}]"#,
        sha256_hex(KEY),
        sha256_hex(LIMITED_KEY),
        sha256_hex(NARROW_KEY)
    );
    [
        ("GATEWAY_BACKENDS", backends),
        ("GATEWAY_API_KEYS", keys),
        ("PRIMARY_BACKEND_KEY", BACKEND_CREDENTIAL.to_string()),
        ("GATEWAY_MAX_BODY_BYTES", MAX_BODY_BYTES.to_string()),
        ("GATEWAY_MAX_TOKENS", "256".to_string()),
        ("GATEWAY_CORS_ORIGINS", ALLOWED_ORIGIN.to_string()),
        ("GATEWAY_HEALTH_TIMEOUT_MS", "1000".to_string()),
        ("GATEWAY_FIRST_BYTE_TIMEOUT_MS", "10000".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Starts the two mock backends.
pub fn start_backends() -> (MockBackend, MockBackend) {
    let primary = watched_mock(&["--model", MODEL, "--api-key", BACKEND_CREDENTIAL]);
    let spare = watched_mock(&["--model", SPARE_MODEL]);
    (primary, spare)
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

/// Starts a runtime (`cmd`, logging to `log_path`) that serves the gateway on `port`, and waits
/// until its `/healthz` answers 200; returns the address and the process.
pub fn serve(name: &str, cmd: &Command, port: u16, log_path: &std::path::Path) -> (String, Proc) {
    let log = std::fs::File::create(log_path).expect("log file");
    let runtime = watched(cmd, Some(&log));
    let addr = format!("127.0.0.1:{port}");
    let up = crate::support::wait_until(Duration::from_secs(60), || {
        crate::support::try_request(&addr, "GET", "/healthz", &[], None).is_ok_and(|r| r.status == 200)
    });
    assert!(up, "{name} did not serve /healthz on {addr}; see {}", log_path.display());
    (addr, runtime)
}
