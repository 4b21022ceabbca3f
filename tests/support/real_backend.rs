//! A real inference server for the tests: llama-cpp-python's OpenAI server on a tiny
//! random-weight GGUF, started by `scripts/real_backend.sh` from `.venv-real`
//! (`make test-real` installs both). Where it differs from vLLM is in
//! `tests/real/NOTES.md`.
//!
//! std only, like `support/mod.rs`, and built on it: a test crate using this declares
//! both at its root,
//!
//! ```ignore
//! #[path = "../support/mod.rs"]
//! mod support;
//! #[path = "../support/real_backend.rs"]
//! mod real_backend;
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{free_port, try_request, Proc};

/// The API key every started server requires (`Authorization: Bearer …`).
pub const REAL_API_KEY: &str = "sk-real-backend-test";
/// The model id the server reports: the GGUF path it was started with.
pub const REAL_MODEL: &str = "target/real-backend/tiny.gguf";
/// The launcher's exit code when `.venv-real` lacks llama-cpp-python.
const NOT_INSTALLED: i32 = 3;
/// How long [`RealBackend::start`] waits for `/v1/models` to answer.
pub const REAL_STARTUP_TIMEOUT: Duration = Duration::from_secs(90);

/// A running llama-cpp-python server; killed (with its process group) on drop.
pub struct RealBackend {
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    /// The id to send as `model` (see [`REAL_MODEL`]).
    pub model: String,
    /// What `Authorization: Bearer` must carry (see [`REAL_API_KEY`]).
    pub api_key: String,
    pub proc: Proc,
    /// Where the server's stdout and stderr go (llama.cpp logs loudly).
    pub log: PathBuf,
}

impl RealBackend {
    /// Starts a server on a free port and waits until `GET /v1/models` answers 200
    /// (llama-cpp-python has no `/health`). Panics, telling what to run, when
    /// `.venv-real` lacks llama-cpp-python; panics with the server's log when it does
    /// not come up.
    pub fn start() -> RealBackend {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let port = free_port();
        let log_dir = root.join("target/real-backend");
        std::fs::create_dir_all(&log_dir).expect("create target/real-backend");
        let log = log_dir.join(format!("server-{port}.log"));
        let out = File::create(&log).expect("create the server log");
        let mut cmd = Command::new(root.join("scripts/real_backend.sh"));
        cmd.args([&port.to_string(), REAL_API_KEY])
            .current_dir(root)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone the log handle"))
            .stderr(out);
        let mut backend = RealBackend {
            base_url: format!("http://127.0.0.1:{port}"),
            model: REAL_MODEL.to_owned(),
            api_key: REAL_API_KEY.to_owned(),
            proc: Proc::spawn(cmd),
            log,
        };
        backend.wait_until_ready();
        backend
    }

    /// `127.0.0.1:PORT`, the form `support::request` takes.
    pub fn host_port(&self) -> String {
        self.base_url.trim_start_matches("http://").to_owned()
    }

    /// `Bearer KEY`, for the `authorization` header.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.api_key)
    }

    /// The server's output so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + REAL_STARTUP_TIMEOUT;
        let auth = self.bearer();
        loop {
            if let Some(status) = self.proc.try_wait() {
                if status.code() == Some(NOT_INSTALLED) {
                    panic!(
                        "no real inference server: llama-cpp-python is not installed in \
                         .venv-real. Run `make test-real` (it installs it, ~35 min the first \
                         time, then runs these tests) instead of `cargo test --test real`."
                    );
                }
                panic!("the real backend exited ({status}) before answering; its log:\n{}", self.log_text());
            }
            let models = try_request(&self.host_port(), "GET", "/v1/models", &[("authorization", &auth)], None);
            if models.is_ok_and(|response| response.status == 200) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the real backend did not answer /v1/models within {REAL_STARTUP_TIMEOUT:?}; \
                     its log:\n{}",
                    self.log_text()
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}
