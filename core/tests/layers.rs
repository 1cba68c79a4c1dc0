//! The core's modules form layers, and no module reaches up: the order of the
//! `pub mod` lines in `src/lib.rs` *is* the layer order, and a module may name
//! (`crate::x`) only the modules declared before it, or itself. So there are no
//! import cycles between the core's top-level modules, and one cannot creep back in:
//! `make lint` runs this test.
//!
//! Test code may use anything (a test builds whole configurations): files named
//! `tests.rs`, the `testkit`/`attack_suite` modules and items under `#[cfg(test)]`
//! are not checked. Comments are not code.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The `pub mod` names of `lib.rs`, in order.
fn layer_order(lib: &str) -> Vec<String> {
    lib.lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod ")?.strip_suffix(';').map(str::to_owned))
        .collect()
}

/// Source text with comments, string and char literals blanked and `#[cfg(test)]`
/// items removed: what is left is code that ships.
fn shipped_code(text: &str) -> String {
    let code = blank_comments_and_literals(text);
    let mut out = String::with_capacity(code.len());
    let mut rest = code.as_str();
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        let end = match (after.find('{'), after.find(';')) {
            (Some(brace), semi) if semi.is_none_or(|s| brace < s) => matching_brace(after, brace) + 1,
            (_, Some(semi)) => semi + 1,
            _ => after.len(),
        };
        rest = &after[end.min(after.len())..];
    }
    out.push_str(rest);
    out
}

fn matching_brace(text: &str, open: usize) -> usize {
    let mut depth = 0usize;
    for (i, c) in text.char_indices().skip_while(|(i, _)| *i < open) {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    text.len() - 1
}

/// Replaces comments and the contents of string, raw-string and char literals with
/// spaces (keeping newlines), so that braces and paths inside them do not count.
fn blank_comments_and_literals(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && !ident_char(chars.get(i.wrapping_sub(1)))
        {
            // r"…", r#"…"#, br#"…"#
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            out.extend(std::iter::repeat_n(' ', j - i + 1));
            i = j + 1;
            while i < chars.len() {
                if chars[i] == '"' && (0..hashes).all(|h| chars.get(i + 1 + h) == Some(&'#')) {
                    out.extend(std::iter::repeat_n(' ', hashes + 1));
                    i += hashes + 1;
                    break;
                }
                out.push(blank(chars[i]));
                i += 1;
            }
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < chars.len() {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' && (chars.get(i + 2) == Some(&'\'') || next == Some('\\')) {
            // A char literal ('x' or '\n', '\u{..}'); a lifetime has no closing quote.
            let end = (i + 1..chars.len()).find(|&j| j > i + 1 && chars[j] == '\'').unwrap_or(i + 2);
            out.extend(std::iter::repeat_n(' ', end - i + 1));
            i = end + 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_char(c: Option<&char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || *c == '_')
}

/// `crate::name` references in `code`.
fn crate_references(code: &str) -> Vec<String> {
    code.match_indices("crate::")
        .filter(|(at, _)| !ident_char(code[..*at].chars().last().as_ref()))
        .map(|(at, m)| {
            code[at + m.len()..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
        })
        .filter(|name: &String| !name.is_empty())
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every reference from a module to one declared after it: `(file, from, to)`.
fn upward_references(src: &Path) -> Vec<(String, String, String)> {
    let order = layer_order(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
    let rank: BTreeMap<&str, usize> = order.iter().enumerate().map(|(i, m)| (m.as_str(), i)).collect();
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut upward = Vec::new();
    for file in files {
        let relative = file.strip_prefix(src).unwrap();
        let top = relative.components().next().unwrap().as_os_str().to_string_lossy();
        let top = top.trim_end_matches(".rs").to_owned();
        if relative.file_name().is_some_and(|n| n == "tests.rs") || !rank.contains_key(top.as_str()) {
            continue; // lib.rs, bin/, testkit, attack_suite, tests.rs
        }
        let code = shipped_code(&std::fs::read_to_string(&file).unwrap());
        for target in crate_references(&code) {
            let (Some(from), Some(to)) = (rank.get(top.as_str()), rank.get(target.as_str())) else {
                continue;
            };
            if to > from {
                upward.push((relative.display().to_string(), top.clone(), target));
            }
        }
    }
    upward.sort();
    upward.dedup();
    upward
}

#[test]
fn no_module_names_a_module_declared_after_it() {
    let upward = upward_references(&src());
    assert!(
        upward.is_empty(),
        "modules reaching up the layer order of src/lib.rs (each must only use modules declared before it):\n{}",
        upward.iter().map(|(f, from, to)| format!("  {f}: {from} -> {to}")).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn every_module_is_in_the_order() {
    let order = layer_order(&std::fs::read_to_string(src().join("lib.rs")).unwrap());
    assert!(order.len() >= 10, "{order:?}");
    for module in ["error", "verify", "policy", "config"] {
        assert!(order.iter().any(|m| m == module), "{module} missing from {order:?}");
    }
}

#[test]
fn the_checker_sees_through_comments_literals_and_test_code() {
    let code = shipped_code(
        "use crate::a::X;\n// crate::commented\nconst S: &str = \"crate::quoted {\";\nconst R: &str = r#\"crate::raw }\"#;\nfn f<'a>(x: &'a str) -> char { '{' }\n#[cfg(test)]\nmod tests { use crate::tested; fn g() { let _ = \"}\"; } }\nuse crate::b;\n",
    );
    assert_eq!(crate_references(&code), ["a", "b"]);
}

/// Sibling modules of one folder and the siblings each one's shipped code names:
/// `super::x` paths and the members of `use super::{x, …}` groups.
fn sibling_references(dir: &Path) -> BTreeMap<String, Vec<String>> {
    let mut siblings = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.extension().is_some_and(|e| e == "rs") && stem != "tests" && stem != "mod" {
            siblings.push((stem, path));
        }
    }
    let names: Vec<&str> = siblings.iter().map(|(name, _)| name.as_str()).collect();
    let mut graph = BTreeMap::new();
    for (name, path) in &siblings {
        let code = shipped_code(&std::fs::read_to_string(path).unwrap());
        let mut named = Vec::new();
        for (at, m) in code.match_indices("super::") {
            let rest = &code[at + m.len()..];
            let members = match rest.strip_prefix('{') {
                Some(group) => group[..group.find('}').unwrap_or(group.len())].to_owned(),
                None => rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect(),
            };
            for member in members.split(',') {
                let member: String =
                    member.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if names.contains(&member.as_str()) && member != *name && !named.contains(&member) {
                    named.push(member);
                }
            }
        }
        graph.insert(name.clone(), named);
    }
    graph
}

/// The cycles of `graph`, each as the path that closes it (`a -> b -> a`).
fn cycles(graph: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, Vec<String>>,
        path: &mut Vec<String>,
        done: &mut Vec<String>,
        found: &mut Vec<String>,
    ) {
        if let Some(at) = path.iter().position(|n| n == node) {
            found.push(format!("{} -> {node}", path[at..].join(" -> ")));
            return;
        }
        if done.iter().any(|n| n == node) {
            return;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, path, done, found);
        }
        path.pop();
        done.push(node.to_owned());
    }
    let (mut done, mut found) = (Vec::new(), Vec::new());
    for node in graph.keys() {
        visit(node, graph, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

/// Inside a folder too (the pipeline's stages, a feature's parts, the wasm shell's
/// contexts), no two modules need each other: the layer rule above only sees the
/// core's top-level modules.
#[test]
fn no_import_cycles_among_the_modules_of_a_folder() {
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    for file in files {
        let dir = file.parent().unwrap().to_path_buf();
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs.push(src().join("../../src/filter"));
    dirs.push(src().join("../../native/src"));
    let mut found = Vec::new();
    for dir in &dirs {
        for cycle in cycles(&sibling_references(dir)) {
            found.push(format!("  {}: {cycle}", dir.display()));
        }
    }
    assert!(found.is_empty(), "modules of one folder that need each other:\n{}", found.join("\n"));
    assert!(dirs.len() >= 10, "{dirs:?}");
}

#[test]
fn the_folder_check_finds_a_cycle() {
    let dir = std::env::temp_dir().join(format!("nhi-layers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.rs"), "use super::{b::Thing, Other};\n").unwrap();
    std::fs::write(dir.join("b.rs"), "// super::a in a comment\nfn f() { super::c::g() }\n").unwrap();
    std::fs::write(
        dir.join("c.rs"),
        "use super::{Vm, a};\n#[cfg(test)]\nmod tests { use super::super::b; }\n",
    )
    .unwrap();
    let graph = sibling_references(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(graph["a"], ["b"]);
    assert_eq!(graph["b"], ["c"]);
    assert_eq!(graph["c"], ["a"]);
    assert_eq!(cycles(&graph), ["a -> b -> c -> a"]);
}
