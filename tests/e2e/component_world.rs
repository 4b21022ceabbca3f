//! The Spin component's world, read back from the built file (`make spin`): it must export
//! `wasi:http/incoming-handler@0.2.*` and import only WASI 0.2 interfaces, at 0.2.0–0.2.6, that
//! every Spin (3.x, 4.x, SpinKube's containerd shim, Fermyon Cloud) and `wasmtime serve`
//! provide. A dependency that drags in a WASI 0.3 or Spin-only import fails here, not in a
//! user's deploy. Needs `wasm-tools` (`make wasm-tools-tool`; `WASM_TOOLS` overrides the path).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The interfaces the component may import, by what needs them.
const ALLOWED_IMPORTS: &[&str] = &[
    // The gateway itself: outbound HTTP, Redis over TCP, timers, clocks, randomness, the
    // environment (configuration) and stdout (logs).
    "wasi:http/types",
    "wasi:http/outgoing-handler",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:io/error",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:cli/environment",
    "wasi:cli/stdout",
    "wasi:sockets/network",
    "wasi:sockets/instance-network",
    "wasi:sockets/tcp",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/ip-name-lookup",
    // Rust's std (wasi-libc) on wasm32-wasip2: exit, stdio and terminal probes, HashMap seeds —
    // all part of wasi:cli and wasi:random since 0.2.0.
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:random/insecure-seed",
];

/// The export every WASI 0.2 HTTP host calls.
const EXPORT: &str = "wasi:http/incoming-handler";

/// The newest WASI 0.2 patch release a host must provide; newer imports still link on hosts
/// whose Wasmtime matches semver-compatible versions, but we promise this range.
const MAX_PATCH: u32 = 6;

/// `wasi:pkg/iface@0.2.N` → (`wasi:pkg/iface`, N); `None` for anything else (0.3, an RC, no
/// version, a bare function import).
fn wasi_0_2(item: &str) -> Option<(&str, u32)> {
    let (name, version) = item.split_once('@')?;
    let patch = version.strip_prefix("0.2.")?.parse().ok()?;
    Some((name, patch))
}

/// Everything wrong with the component's world, as `wasm-tools component wit` prints it.
fn world_problems(wit: &str) -> Vec<String> {
    let Some(start) = wit.find("\nworld ") else { return vec!["no world in the WIT".into()] };
    let body = &wit[start..];
    let body = &body[..body.find("\n}").unwrap_or(body.len())];
    let mut problems = Vec::new();
    let mut exports = Vec::new();
    for line in body.lines().map(str::trim) {
        if let Some(item) = line.strip_prefix("import ") {
            let item = item.trim_end_matches(';');
            match wasi_0_2(item) {
                Some((name, patch)) if ALLOWED_IMPORTS.contains(&name) && patch <= MAX_PATCH => {}
                Some((name, patch)) if ALLOWED_IMPORTS.contains(&name) => {
                    problems.push(format!("import {name}@0.2.{patch} is newer than 0.2.{MAX_PATCH}"))
                }
                _ => problems.push(format!("import {item} is not on the allow-list of WASI 0.2 interfaces")),
            }
        } else if let Some(item) = line.strip_prefix("export ") {
            exports.push(item.trim_end_matches(';').to_string());
        }
    }
    match exports.as_slice() {
        [only] if wasi_0_2(only).is_some_and(|(name, patch)| name == EXPORT && patch <= MAX_PATCH) => {}
        other => problems.push(format!("exports {other:?}, not exactly {EXPORT}@0.2.x")),
    }
    problems
}

fn wasm_tools() -> PathBuf {
    match std::env::var_os("WASM_TOOLS") {
        Some(path) => path.into(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/wasm-tools"),
    }
}

#[test]
fn the_spin_component_exports_the_wasi_0_2_handler_and_imports_only_wasi_0_2() {
    let component = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/wasm32-wasip2/release/edge_gateway.wasm");
    assert!(component.exists(), "{} is missing: run `make spin` first (`make test` does)", component.display());
    let output =
        Command::new(wasm_tools()).args(["component", "wit"]).arg(&component).output().unwrap_or_else(|e| {
            panic!("cannot run {} (`make wasm-tools-tool` installs it): {e}", wasm_tools().display())
        });
    assert!(output.status.success(), "wasm-tools failed: {}", String::from_utf8_lossy(&output.stderr));
    let wit = String::from_utf8(output.stdout).unwrap();
    let problems = world_problems(&wit);
    assert!(problems.is_empty(), "the component's world drifted:\n{}\n\n{wit}", problems.join("\n"));
}

#[test]
fn the_check_refuses_wasi_0_3_spin_only_and_too_new_imports() {
    let world = |lines: &str| format!("package root:component;\n\nworld root {{\n{lines}\n}}\n");
    let good = world(
        "  import wasi:io/poll@0.2.6;\n  import wasi:http/types@0.2.0;\n\n  export wasi:http/incoming-handler@0.2.4;",
    );
    assert_eq!(world_problems(&good), Vec::<String>::new());
    for (bad, why) in [
        ("  import wasi:http/types@0.3.0;\n  export wasi:http/handler@0.3.0;", "not on the allow-list"),
        (
            "  import wasi:http/types@0.3.0-rc-2026-03-15;\n  export wasi:http/incoming-handler@0.2.4;",
            "not on the allow-list",
        ),
        ("  import fermyon:spin/variables@2.0.0;\n  export wasi:http/incoming-handler@0.2.4;", "not on the allow-list"),
        ("  import wasi:filesystem/types@0.2.0;\n  export wasi:http/incoming-handler@0.2.4;", "not on the allow-list"),
        ("  import wasi:io/poll@0.2.9;\n  export wasi:http/incoming-handler@0.2.4;", "newer than 0.2.6"),
        ("  import wasi:io/poll@0.2.0;\n  export wasi:http/handler@0.3.0;", "not exactly"),
        (
            "  import wasi:io/poll@0.2.0;\n  export wasi:cli/run@0.2.0;\n  export wasi:http/incoming-handler@0.2.0;",
            "not exactly",
        ),
    ] {
        let problems = world_problems(&world(bad));
        assert!(problems.iter().any(|p| p.contains(why)), "{bad}: {problems:?}");
    }
}
