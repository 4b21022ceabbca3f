//! Prints how to start a runtime the way the end-to-end suite starts it, for `benches/bench.py`:
//! one place (`tests/support/launch.rs`) writes each runtime's command line and configuration.
//!
//! ```text
//! cargo run --example launch -- workerd DIR PORT [--module FILE.js] [NAME=VALUE]...
//! cargo run --example launch -- wasmtime PORT [--component FILE.wasm] [--flag FLAG]... [NAME=VALUE]...
//! cargo run --example launch -- redis PORT
//! ```
//!
//! Writes what the runtime needs under DIR (workerd's config and code) and prints one JSON
//! object: `{"argv": [...], "cwd": "..."}`; the caller runs it (the benchmark pins it to a CPU).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/launch.rs"]
mod launch;

use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let vars = |rest: &[String]| -> Vec<(String, String)> {
        rest.iter()
            .map(|kv| kv.split_once('=').expect("NAME=VALUE"))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let port = |s: &String| s.parse::<u16>().expect("a port");
    let cmd = match args.first().map(String::as_str) {
        Some("workerd") => {
            let dir = PathBuf::from(&args[1]);
            std::fs::create_dir_all(&dir).expect("the directory");
            let (script, rest) = match args.get(3).map(String::as_str) {
                Some("--module") => (Some(PathBuf::from(&args[4])), &args[5..]),
                _ => (None, &args[3..]),
            };
            let script = match &script {
                Some(path) => launch::Script::Module(path),
                None => launch::Script::Gateway,
            };
            launch::workerd(&dir, port(&args[2]), script, &vars(rest))
        }
        Some("wasmtime") => {
            // Options first (the component, then wasmtime flags), variables after.
            let mut component = launch::component();
            let mut flags: Vec<String> = Vec::new();
            let mut rest = &args[2..];
            loop {
                match rest.first().map(String::as_str) {
                    Some("--component") => component = PathBuf::from(&rest[1]),
                    Some("--flag") => flags.push(rest[1].clone()),
                    _ => break,
                }
                rest = &rest[2..];
            }
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            launch::wasmtime_serve(&component, port(&args[1]), &vars(rest), &flags)
        }
        Some("redis") => launch::redis(port(&args[1])),
        _ => panic!("usage: launch workerd DIR PORT [--module FILE] [K=V]... | wasmtime PORT [--component F] [--flag F]... [K=V]... | redis PORT"),
    };
    let argv: Vec<String> =
        std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(|a| a.to_string_lossy().into_owned()).collect();
    let cwd = cmd.get_current_dir().map(|d| d.display().to_string());
    println!("{}", serde_json::json!({ "argv": argv, "cwd": cwd }));
}
