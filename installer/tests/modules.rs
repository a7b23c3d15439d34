//! The installer's modules form no import circle: no module reaches, through `crate::` paths, a
//! module that reaches it back. Errors describe themselves in the module they come from, and the
//! command line's own wording (flag names) is added at the edge (`cli::describe`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};

/// Module name to the modules its source names through `crate::module`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let dir = format!("{}/src", env!("CARGO_MANIFEST_DIR"));
    let mut sources = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}")) {
        let path = entry.unwrap_or_else(|e| panic!("{dir}: {e}")).path();
        let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if matches!(name, "lib" | "main") || path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        sources.insert(name.to_owned(), text);
    }
    let modules: BTreeSet<String> = sources.keys().cloned().collect();
    sources
        .iter()
        .map(|(name, text)| {
            let mut used = BTreeSet::new();
            // Code only: a comment that mentions a module imports nothing.
            let code: String = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            for (i, _) in code.match_indices("crate::") {
                let rest = &code[i + "crate::".len()..];
                let word: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if let Some(group) = rest.strip_prefix('{') {
                    let group = group.split('}').next().unwrap_or_default();
                    for item in group.split(',') {
                        let m = item.trim().split("::").next().unwrap_or_default();
                        if modules.contains(m) && m != name {
                            used.insert(m.to_owned());
                        }
                    }
                } else if modules.contains(&word) && &word != name {
                    used.insert(word);
                }
            }
            (name.clone(), used)
        })
        .collect()
}

/// A path from some module back to itself, if there is one.
fn find_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    for start in graph.keys() {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((node, path)) = stack.pop() {
            for next in graph.get(&node).into_iter().flatten() {
                if next == start {
                    let mut circle = path.clone();
                    circle.push(start.clone());
                    return Some(circle);
                }
                if seen.insert(next.clone()) {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
    None
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let graph = imports();
    assert!(graph.len() > 10, "read the modules: {graph:?}");
    // The graph is the real one: these imports exist, one way only.
    assert!(graph["client"].contains("error"), "{graph:?}");
    assert!(graph["preflight"].contains("error"), "{graph:?}");
    assert!(!graph["error"].contains("client"), "{graph:?}");
    if let Some(circle) = find_circle(&graph) {
        panic!("import circle: {}", circle.join(" -> "));
    }
}

#[test]
fn a_circle_through_three_modules_is_found() {
    let edge = |a: &str, b: &str| (a.to_owned(), BTreeSet::from([b.to_owned()]));
    let graph = BTreeMap::from([edge("a", "b"), edge("b", "c"), edge("c", "a")]);
    assert_eq!(
        find_circle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    let graph = BTreeMap::from([edge("a", "b"), edge("b", "c")]);
    assert_eq!(find_circle(&graph), None);
}
