//! The core's modules form layers: no module depends, through any chain, on one that depends on
//! it (README "Architecture"). A cycle is how a house stops being readable one module at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Folders whose files are modules of their own (`upstream::proxy`); elsewhere a reference to a
/// module's item counts as a reference to the module.
const FOLDERS: &[&str] = &["auth", "config", "rate_limit", "redis", "upstream", "validate"];

/// Each module of `src/core` (`gateway`, `upstream::proxy`…) with the modules it names.
fn modules() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut graph = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&root).unwrap().with_extension("");
        let name = rel.to_string_lossy().replace("/mod", "").replace('/', "::");
        let text = std::fs::read_to_string(&file).unwrap();
        let mut deps = BTreeSet::new();
        for (at, _) in text.match_indices("crate::core::") {
            let path: String =
                text[at + 13..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_' || *c == ':').collect();
            let mut segments = path.split("::").filter(|s| !s.is_empty());
            let Some(first) = segments.next() else { continue };
            let module = match segments.next() {
                Some(second) if FOLDERS.contains(&first) && exists(&root, first, second) => {
                    format!("{first}::{second}")
                }
                _ => first.to_string(),
            };
            if module != name {
                deps.insert(module);
            }
        }
        graph.insert(name, deps);
    }
    graph
}

fn exists(root: &Path, folder: &str, module: &str) -> bool {
    root.join(folder).join(format!("{module}.rs")).exists() || root.join(folder).join(module).join("mod.rs").exists()
}

#[test]
fn the_core_has_no_import_cycles() {
    let graph = modules();
    assert!(graph.contains_key("gateway") && graph.contains_key("upstream::proxy"), "{:?}", graph.keys());
    let mut cycles = Vec::new();
    for start in graph.keys() {
        // Every module reachable from `start`; a path back to it is a cycle.
        let mut seen = BTreeSet::new();
        let mut todo: Vec<Vec<&str>> = vec![vec![start.as_str()]];
        while let Some(path) = todo.pop() {
            let last = *path.last().unwrap();
            for dep in graph.get(last).into_iter().flatten() {
                if dep == start {
                    cycles.push(format!("{} -> {start}", path.join(" -> ")));
                } else if seen.insert(dep.as_str()) {
                    let mut longer = path.clone();
                    longer.push(dep);
                    todo.push(longer);
                }
            }
        }
    }
    assert!(cycles.is_empty(), "import cycles in src/core:\n{}", cycles.join("\n"));
}
