//! The module map at the top of `lib.rs` promises that imports between the
//! runtime's top-level modules go one way. This test reads the sources and
//! fails, naming the loop, when a change closes one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules its non-test code names through `crate::`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut pending = vec![root.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let relative = path
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let Some(module) = relative.split(['/', '.']).next().map(str::to_owned) else {
                continue;
            };
            if module == "lib" || !relative.ends_with(".rs") {
                continue;
            }
            let source = std::fs::read_to_string(&path).unwrap();
            // Unit tests may reach anywhere; only the code itself counts.
            let code = source.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
            let names = graph.entry(module.clone()).or_default();
            for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for (at, _) in line.match_indices("crate::") {
                    let rest = &line[at + "crate::".len()..];
                    let names_in = if let Some(group) = rest.strip_prefix('{') {
                        group.split('}').next().unwrap_or("").split(',').collect()
                    } else {
                        vec![rest]
                    };
                    for name in names_in {
                        let name: String = name
                            .trim()
                            .chars()
                            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                            .collect();
                        if !name.is_empty() && name != module {
                            names.insert(name);
                        }
                    }
                }
            }
        }
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for names in graph.values_mut() {
        names.retain(|name| modules.contains(name));
    }
    graph
}

/// A loop through `from`, as the list of modules on it, if there is one.
fn loop_through(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![(from.to_owned(), vec![from.to_owned()])];
    let mut seen = BTreeSet::new();
    while let Some((module, path)) = stack.pop() {
        for next in graph.get(&module).into_iter().flatten() {
            if next == from {
                return Some([path.clone(), vec![next.clone()]].concat());
            }
            if seen.insert(next.clone()) {
                stack.push((next.clone(), [path.clone(), vec![next.clone()]].concat()));
            }
        }
    }
    None
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let graph = imports();
    assert!(
        graph.contains_key("local") && graph.contains_key("sys"),
        "{graph:?}"
    );
    for module in graph.keys() {
        if let Some(cycle) = loop_through(&graph, module) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
    // The OS layer stays a leaf, and the backend seam imports nothing but
    // it (a reply a sink may take from the worker's shared memory).
    assert!(graph["sys"].is_empty(), "sys imports {:?}", graph["sys"]);
    assert!(
        graph["backend"].iter().all(|module| module == "sys"),
        "backend imports {:?}",
        graph["backend"]
    );
}
