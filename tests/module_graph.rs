//! The module check of the architecture: inside podvm's crates, no module imports a sibling
//! that imports it back, directly or around a loop (issue 13). Every `crate::`, `super::` and
//! `self::` path outside test code, `use` trees included, becomes an edge between the two
//! sibling modules it connects (below their closest common parent); a strongly connected set of
//! more than one sibling is a cycle, reported with the files and paths that make it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One path a file names: the file, the module it is in, and the path as a module path.
struct Reference {
    file: PathBuf,
    from: Vec<String>,
    to: Vec<String>,
}

/// The module path of a file below `src` (`net/tap.rs` is `[net, tap]`, `net/mod.rs` `[net]`).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).expect("below src");
    let mut parts: Vec<String> = relative
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The source files below `dir`, without test files (`*_tests.rs`, `tests.rs`).
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("source dir")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if path.is_dir() {
            sources(&path, out);
        } else if name.ends_with(".rs") && !name.ends_with("_tests.rs") && name != "tests.rs" {
            out.push(path);
        }
    }
}

/// The code of a file without its `#[cfg(test)]` tail and without comments.
fn code_of(text: &str) -> String {
    let body = text.split("#[cfg(test)]").next().unwrap_or_default();
    body.lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Expands a `use` tree (`a::{b, c::{d, e}}`) into its paths.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let plain = tree.split(" as ").next().unwrap_or_default().trim();
        return vec![plain.to_string()];
    };
    let prefix = &tree[..open];
    let close = tree
        .rfind('}')
        .filter(|close| *close > open)
        .unwrap_or(tree.len());
    let inner = &tree[open + 1..close];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(expand)
        .map(|p| {
            if p == "self" {
                prefix.trim_end_matches("::").to_string()
            } else {
                format!("{prefix}{p}")
            }
        })
        .collect()
}

/// Every `crate::`/`super::`/`self::` path in `code`, `use` trees expanded.
fn paths_in(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut statement: Option<String> = None;
    for line in code.lines() {
        let trimmed = line.trim_start();
        if statement.is_none() {
            let visibility = ["pub ", "pub(crate) ", "pub(super) "]
                .iter()
                .find_map(|v| trimmed.strip_prefix(v))
                .unwrap_or(trimmed);
            if let Some(tree) = visibility.strip_prefix("use ") {
                statement = Some(String::new());
                statement.as_mut().expect("just set").push_str(tree);
            }
        } else if let Some(text) = statement.as_mut() {
            text.push_str(trimmed);
        }
        if let Some(text) = statement.take_if(|text| text.contains(';')) {
            paths.extend(expand(text.split(';').next().unwrap_or_default()));
        }
    }
    let bytes = code.as_bytes();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(found) = code[from..].find(start) {
            let at = from + found;
            from = at + start.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            let end = code[at..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |n| at + n);
            paths.push(code[at..end].trim_end_matches(':').to_string());
        }
    }
    paths
}

/// The module path `path` names from module `here`.
fn resolve(here: &[String], path: &str) -> Option<Vec<String>> {
    let mut parts = path.split("::").filter(|p| !p.is_empty());
    let mut base: Vec<String> = match parts.next()? {
        "crate" => Vec::new(),
        "self" => here.to_vec(),
        "super" => here[..here.len().checked_sub(1)?].to_vec(),
        _ => return None,
    };
    for part in parts {
        if part == "super" {
            base.pop()?;
        } else {
            base.push(part.to_string());
        }
    }
    Some(base)
}

/// The references of every source file of the crate whose sources are `src`.
fn references(src: &Path) -> Vec<Reference> {
    let mut files = Vec::new();
    sources(src, &mut files);
    let mut refs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("source");
        let from = module_of(src, &file);
        for path in paths_in(&code_of(&text)) {
            if let Some(to) = resolve(&from, &path) {
                refs.push(Reference {
                    file: file.clone(),
                    from: from.clone(),
                    to,
                });
            }
        }
    }
    refs
}

/// Cycles among sibling modules: for each parent, the strongly connected sets of its children
/// with more than one member, with the references that make the edges.
fn cycles(refs: &[Reference]) -> Vec<String> {
    // parent -> child -> children it uses (with one example reference each)
    let mut graph: BTreeMap<Vec<String>, BTreeMap<String, BTreeMap<String, String>>> =
        BTreeMap::new();
    for r in refs {
        let common = r.from.iter().zip(&r.to).take_while(|(a, b)| a == b).count();
        let (Some(a), Some(b)) = (r.from.get(common), r.to.get(common)) else {
            continue;
        };
        graph
            .entry(r.from[..common].to_vec())
            .or_default()
            .entry(a.clone())
            .or_default()
            .entry(b.clone())
            .or_insert_with(|| format!("{} -> {}", r.file.display(), r.to.join("::")));
    }
    let mut found = Vec::new();
    for (parent, edges) in &graph {
        let nodes: BTreeSet<&String> = edges.keys().collect();
        for node in &nodes {
            // Everything `node` reaches; a sibling that also reaches `node` is in its cycle.
            let reach = reachable(edges, node);
            let mut members: Vec<&String> = reach
                .iter()
                .filter(|other| *other != *node && reachable(edges, other).contains(*node))
                .collect();
            if !members.is_empty() && members.iter().all(|m| *node < *m) {
                members.insert(0, node);
                let evidence: Vec<String> = members
                    .iter()
                    .flat_map(|m| edges.get(*m).into_iter().flatten())
                    .filter(|(to, _)| members.contains(to))
                    .map(|(_, why)| why.clone())
                    .collect();
                found.push(format!(
                    "in {}: {:?} import each other: {evidence:#?}",
                    if parent.is_empty() {
                        "<crate>".to_string()
                    } else {
                        parent.join("::")
                    },
                    members
                ));
            }
        }
    }
    found
}

fn reachable(edges: &BTreeMap<String, BTreeMap<String, String>>, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_string()];
    while let Some(node) = todo.pop() {
        for next in edges.get(&node).into_iter().flat_map(|e| e.keys()) {
            if seen.insert(next.clone()) {
                todo.push(next.clone());
            }
        }
    }
    seen
}

#[test]
fn no_module_imports_a_sibling_that_imports_it_back() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut problems = Vec::new();
    for src in ["src", "guest-agent/src", "protocol/src", "shim/src"] {
        problems.extend(cycles(&references(&root.join(src))));
    }
    assert!(
        problems.is_empty(),
        "module cycles:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_check_finds_a_cycle_and_reads_use_trees() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path();
    std::fs::create_dir_all(src.join("net")).expect("dirs");
    std::fs::write(src.join("net/mod.rs"), "mod tap;\nmod device;\n").expect("mod");
    std::fs::write(
        src.join("net/tap.rs"),
        "use super::{device::{QUEUE, Other}, other};\n",
    )
    .expect("tap");
    std::fs::write(
        src.join("net/device.rs"),
        "fn f() { crate::net::tap::open(); }\n",
    )
    .expect("device");
    std::fs::write(src.join("lib.rs"), "// use crate::net::tap;\nmod net;\n").expect("lib");
    let found = cycles(&references(src));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("in net: [\"device\", \"tap\"]"),
        "{found:?}"
    );
    assert_eq!(
        expand("a::{b, c::{d as e, self}}"),
        vec!["a::b", "a::c::d", "a::c"]
    );
}
