//! The documentation's configuration examples are real: in `README.md` and every
//! `docs/*.md`, every ```json block must be JSON, and every block that is a whole
//! plugin configuration (has `issuers`) must pass the validation the filter runs at
//! load time. A failure names the file, the block and its line.
//!
//! The pages are read when the test runs, so a new page is covered without touching
//! this file; the pages that document configuration must keep at least one example.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};

use nhi_guard_core::config::Config;

/// Pages that show configurations: each must hold at least this many plugin
/// configurations, so that moving or deleting examples cannot leave a page unchecked.
const PAGES_WITH_EXAMPLES: &[(&str, usize)] =
    &[("docs/configuration.md", 1), ("docs/profiles.md", 4), ("docs/keys.md", 1), ("docs/mtls.md", 1)];

/// A fenced ```json block: where it starts (1-based line of the fence) and its text.
struct Block {
    number: usize,
    line: usize,
    text: String,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `README.md` and every `docs/*.md`, as paths relative to the repository root.
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

fn read(page: &str) -> String {
    fs::read_to_string(repo_root().join(page)).unwrap_or_else(|err| panic!("reading {page}: {err}"))
}

fn json_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, Vec<&str>)> = None;
    for (index, line) in markdown.lines().enumerate() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```json") => current = Some((index + 1, Vec::new())),
            (Some((start, lines)), l) if l.starts_with("```") => {
                blocks.push(Block { number: blocks.len() + 1, line: *start, text: lines.join("\n") });
                current = None;
            }
            (Some((_, lines)), _) => lines.push(line),
            (None, _) => {}
        }
    }
    blocks
}

fn is_plugin_configuration(block: &Block) -> bool {
    serde_json::from_str::<serde_json::Value>(&block.text).is_ok_and(|v| v.get("issuers").is_some())
}

#[test]
fn every_plugin_configuration_in_the_docs_is_valid() {
    let mut failures = Vec::new();
    for page in pages() {
        for block in json_blocks(&read(&page)).iter().filter(|b| is_plugin_configuration(b)) {
            if let Err(err) = Config::from_json(block.text.as_bytes()) {
                failures.push(format!(
                    "{page}, json block #{} (line {}) is refused: {err}\n{}",
                    block.number, block.line, block.text
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_json_block_in_the_docs_parses() {
    let mut failures = Vec::new();
    for page in pages() {
        for block in json_blocks(&read(&page)) {
            // Fragments (a single member) are wrapped to parse as an object.
            let as_object = if block.text.trim_start().starts_with('"') {
                format!("{{{}}}", block.text)
            } else {
                block.text.clone()
            };
            if let Err(err) = serde_json::from_str::<serde_json::Value>(&as_object) {
                failures.push(format!(
                    "{page}, json block #{} (line {}) is not JSON: {err}\n{}",
                    block.number, block.line, block.text
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_configuration_pages_keep_their_examples() {
    let pages = pages();
    for &(page, at_least) in PAGES_WITH_EXAMPLES {
        assert!(pages.iter().any(|p| p == page), "{page} is missing");
        let found = json_blocks(&read(page)).iter().filter(|b| is_plugin_configuration(b)).count();
        assert!(
            found >= at_least,
            "{page} has {found} plugin configuration example(s), expected at least {at_least}"
        );
    }
}
