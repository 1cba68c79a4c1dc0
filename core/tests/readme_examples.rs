//! The README's configuration examples are real: every ```json block in README.md
//! that is a whole plugin configuration (has `issuers`) must pass the validation the
//! filter runs at load time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use nhi_guard_core::config::Config;

fn json_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```json") => current = Some(Vec::new()),
            (Some(lines), l) if l.starts_with("```") => {
                blocks.push(lines.join("\n"));
                current = None;
            }
            (Some(lines), _) => lines.push(line),
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn every_plugin_configuration_in_the_readme_is_valid() {
    let readme = include_str!("../../README.md");
    let configs: Vec<String> = json_blocks(readme)
        .into_iter()
        .filter(|b| serde_json::from_str::<serde_json::Value>(b).is_ok_and(|v| v.get("issuers").is_some()))
        .collect();
    assert!(!configs.is_empty(), "the README has no plugin configuration example");
    for (i, config) in configs.iter().enumerate() {
        if let Err(err) = Config::from_json(config.as_bytes()) {
            panic!("README example #{i} is refused: {err}\n{config}");
        }
    }
}

#[test]
fn every_json_block_in_the_readme_parses() {
    let readme = include_str!("../../README.md");
    for block in json_blocks(readme) {
        // Fragments (a single member) are wrapped to parse as an object.
        let as_object =
            if block.trim_start().starts_with('"') { format!("{{{block}}}") } else { block.clone() };
        assert!(serde_json::from_str::<serde_json::Value>(&as_object).is_ok(), "not JSON:\n{block}");
    }
}
