//! The documentation's excerpts of shipped files are real: in `README.md` and every
//! `docs/*.md`, a ```yaml block whose info string names a file of the repository
//! (```` ```yaml envoy/envoy-mtls.yaml ````) must be a part of that file — every member
//! it shows is in the file, nested the same way, with the same value; a list shows some
//! of the file's items, in their order. Comments are not compared.
//!
//! So a page cannot go on showing a setting after the shipped file changed it. The
//! plugin configurations in ```json blocks are checked by the core's
//! `tests/readme_examples.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use nhi_guard_cli::check::yaml_documents;

/// Pages that show excerpts of shipped files, and how many at least, so that an
/// excerpt losing its file name (and with it, its check) fails here.
const PAGES_WITH_EXCERPTS: &[(&str, usize)] = &[("docs/mtls.md", 1), ("docs/quotas.md", 3)];

/// A fenced ```yaml block: its number on the page, the line of its fence, the file
/// named in its info string, and its text.
struct Block {
    number: usize,
    line: usize,
    file: Option<String>,
    text: String,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `README.md` and every `docs/*.md`, relative to the repository root.
fn pages() -> Vec<String> {
    let mut pages: Vec<String> = fs::read_dir(repo_root().join("docs"))
        .expect("docs/ exists")
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    pages.sort();
    pages.insert(0, "README.md".to_owned());
    pages
}

fn read(path: &str) -> String {
    fs::read_to_string(repo_root().join(path)).unwrap_or_else(|err| panic!("reading {path}: {err}"))
}

fn yaml_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, Option<String>, Vec<&str>)> = None;
    for (index, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        match &mut current {
            None => {
                if let Some(info) = trimmed.strip_prefix("```yaml") {
                    let file = Some(info.trim()).filter(|f| !f.is_empty()).map(str::to_owned);
                    current = Some((index + 1, file, Vec::new()));
                }
            }
            Some((start, file, lines)) => {
                if trimmed.starts_with("```") {
                    let (line, file) = (*start, file.take());
                    blocks.push(Block { number: blocks.len() + 1, line, file, text: lines.join("\n") });
                    current = None;
                } else {
                    lines.push(line);
                }
            }
        }
    }
    blocks
}

/// Whether `excerpt` shows a part of `node`, starting at `node` itself.
fn fits(node: &Value, excerpt: &Value) -> bool {
    match (node, excerpt) {
        (Value::Object(node), Value::Object(excerpt)) => {
            excerpt.iter().all(|(key, shown)| node.get(key).is_some_and(|value| fits(value, shown)))
        }
        (Value::Array(node), Value::Array(excerpt)) => {
            // A subsequence: each shown item fits a later item than the one before.
            let mut items = node.iter();
            excerpt.iter().all(|shown| items.any(|item| fits(item, shown)))
        }
        _ => node == excerpt,
    }
}

/// Whether `excerpt` shows a part of `node` or of anything nested in it.
fn anywhere(node: &Value, excerpt: &Value) -> bool {
    fits(node, excerpt)
        || match node {
            Value::Object(members) => members.values().any(|value| anywhere(value, excerpt)),
            Value::Array(items) => items.iter().any(|item| anywhere(item, excerpt)),
            _ => false,
        }
}

#[test]
fn every_excerpt_of_a_shipped_file_is_in_that_file() {
    let mut failures = Vec::new();
    for page in pages() {
        for block in yaml_blocks(&read(&page)) {
            let Some(file) = &block.file else { continue };
            let at = format!("{page}, yaml block #{} (line {}), excerpt of {file}", block.number, block.line);
            if !repo_root().join(file).is_file() {
                failures.push(format!("{at}: no such file"));
                continue;
            }
            let shipped = yaml_documents(&read(file)).unwrap_or_else(|err| panic!("{file}: {err}"));
            let excerpt = match yaml_documents(&block.text) {
                Ok(docs) if docs.len() == 1 => docs.into_iter().next().unwrap(),
                Ok(docs) => {
                    failures.push(format!("{at}: {} YAML documents, expected one", docs.len()));
                    continue;
                }
                Err(err) => {
                    failures.push(format!("{at}: not YAML: {err}"));
                    continue;
                }
            };
            if !shipped.iter().any(|doc| anywhere(doc, &excerpt)) {
                failures.push(format!("{at}: not found in the file (a value differs?)\n{}", block.text));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_pages_with_excerpts_keep_them() {
    for &(page, at_least) in PAGES_WITH_EXCERPTS {
        let found = yaml_blocks(&read(page)).iter().filter(|block| block.file.is_some()).count();
        assert!(
            found >= at_least,
            "{page} has {found} excerpt(s) of shipped files, expected at least {at_least}"
        );
    }
}

#[test]
fn an_excerpt_fits_only_with_the_files_values() {
    let file: Value = serde_json::json!({
        "listeners": [{ "name": "a", "filters": [{ "name": "x" }, { "name": "y", "timeout": "1s" }] }]
    });
    let fits_at = |excerpt: Value| anywhere(&file, &excerpt);
    assert!(fits_at(serde_json::json!({ "timeout": "1s" })));
    assert!(fits_at(serde_json::json!([{ "name": "y" }])));
    assert!(fits_at(serde_json::json!({ "filters": [{ "name": "x" }, { "name": "y" }] })));
    assert!(!fits_at(serde_json::json!({ "timeout": "2s" })));
    assert!(!fits_at(serde_json::json!({ "filters": [{ "name": "y" }, { "name": "x" }] })));
    assert!(!fits_at(serde_json::json!({ "name": "a", "missing": true })));
}

/// Every ```console block of docs/cluster-alignment.md is a `$ nhi-guard ...` command
/// and the output the binary prints for it, run from the repository root: the page's
/// `check --cluster` and `explain` examples cannot drift from what the CLI says.
/// (Arguments are split on spaces: the page quotes none.)
#[test]
fn the_cluster_alignment_examples_are_what_the_binary_prints() {
    let page = read("docs/cluster-alignment.md");
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in page.lines() {
        match (&mut current, line) {
            (None, "```console") => current = Some(Vec::new()),
            (Some(lines), "```") => {
                blocks.push(lines.join("\n"));
                current = None;
            }
            (Some(lines), line) => lines.push(line),
            (None, _) => {}
        }
    }
    let mut ran = Vec::new();
    for block in &blocks {
        let (command, shown) = block.split_once('\n').unwrap_or((block, ""));
        let args: Vec<&str> = command
            .strip_prefix("$ nhi-guard ")
            .unwrap_or_else(|| panic!("a console block starts with `$ nhi-guard`: {command}"))
            .split(' ')
            .collect();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_nhi-guard"))
            .args(&args)
            .current_dir(repo_root())
            .output()
            .unwrap();
        let printed = String::from_utf8(output.stdout).unwrap();
        assert_eq!(printed.trim_end(), shown.trim_end(), "docs/cluster-alignment.md: `{command}`");
        ran.push((args[0].to_owned(), output.status.code()));
    }
    // Both commands, an allowed and a refused request, a clean and a failing check.
    for expected in [("check", Some(0)), ("check", Some(1)), ("explain", Some(0)), ("explain", Some(1))] {
        assert!(
            ran.contains(&(expected.0.to_owned(), expected.1)),
            "docs/cluster-alignment.md shows no {expected:?}: {ran:?}"
        );
    }
}
