//! The documentation is checked against the code. In `README.md` and every `docs/*.md`,
//! every ```json block must be JSON, and every block that is a plugin configuration (has
//! `issuers`) or a part of one (a block that begins with a member, such as
//! `"partners": {…}`, completed with one issuer when it has none) must pass the
//! validation the filter runs at load time. A failure names the file, the block and its
//! line.
//!
//! The reference tables are held to the code, so a new reason code, metric, e2e suite,
//! page or core module cannot go undocumented: `docs/responses.md` lists every reason
//! code with the status and `error` class it answers; `docs/observability.md` every
//! metric family with its type and labels; `docs/testing.md` every e2e suite;
//! `docs/README.md` every page (and every relative link of a page leads to a file and
//! heading that exist); `docs/architecture.md` the core's modules in the layer
//! order of `core/src/lib.rs`; `test-harness/README.md` the harness's modules as
//! `test-harness/src/lib.rs` declares them.
//!
//! The pages are read when the test runs, so a new page is covered without touching
//! this file; the pages that document configuration must keep at least one example.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};

use nhi_guard_core::config::Config;
use nhi_guard_core::observe::metrics::{Family, Kind};
use nhi_guard_core::policy::{Denial, RouteDenial};
use nhi_guard_core::reason::{Reason, Rejection};

/// Pages that show configurations: each must hold at least this many plugin
/// configurations, so that moving or deleting examples cannot leave a page unchecked.
const PAGES_WITH_EXAMPLES: &[(&str, usize)] = &[
    ("docs/configuration.md", 1),
    ("docs/profiles.md", 4),
    ("docs/keys.md", 1),
    ("docs/mtls.md", 1),
    ("docs/dpop.md", 1),
    ("docs/partners.md", 1),
    ("docs/behaviour.md", 1),
];

/// The issuer a configuration fragment without one is completed with.
const FRAGMENT_ISSUER: &str = r#"{ "name": "docs", "issuer": "https://issuer.example", "audiences": ["nhi-gateway"],
    "jwks": { "cluster": "jwks", "authority": "issuer.example", "path": "/jwks.json" } }"#;

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

/// The plugin configuration a block shows: the block itself when it has `issuers`; a
/// fragment (a block that begins with a member) wrapped in braces, with
/// [`FRAGMENT_ISSUER`] when it has no `issuers`; `None` for other JSON (a JWKS, a log
/// line) and for blocks that do not parse (reported by their own test).
fn plugin_configuration(block: &Block) -> Option<String> {
    if block.text.trim_start().starts_with('"') {
        let mut value: serde_json::Value = serde_json::from_str(&format!("{{{}}}", block.text)).ok()?;
        let members = value.as_object_mut()?;
        if !members.contains_key("issuers") {
            let issuer: serde_json::Value = serde_json::from_str(FRAGMENT_ISSUER).unwrap();
            members.insert("issuers".to_owned(), serde_json::Value::Array(vec![issuer]));
        }
        return Some(value.to_string());
    }
    let value: serde_json::Value = serde_json::from_str(&block.text).ok()?;
    value.get("issuers").is_some().then(|| block.text.clone())
}

/// The rows of every table on a page: the 1-based line and the cells, trimmed.
fn table_rows(markdown: &str) -> Vec<(usize, Vec<String>)> {
    markdown
        .lines()
        .enumerate()
        .filter_map(|(index, line)| {
            let row = line.trim().strip_prefix('|')?.strip_suffix('|')?;
            Some((index + 1, row.split('|').map(|cell| cell.trim().to_owned()).collect()))
        })
        .collect()
}

/// The rows of every table whose header's first cell is `first` (header and
/// separator excluded).
fn table_under(markdown: &str, first: &str) -> Vec<(usize, Vec<String>)> {
    let mut rows = Vec::new();
    let mut inside = false;
    let mut previous = 0;
    for (line, cells) in table_rows(markdown) {
        if line != previous + 1 {
            inside = cells.first().is_some_and(|cell| cell == first);
        } else if inside && !cells.iter().all(|cell| cell.chars().all(|c| c == '-' || c == ':')) {
            rows.push((line, cells));
        }
        previous = line;
    }
    rows
}

/// The `code spans` of a cell, in order.
fn code_spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

#[test]
fn every_plugin_configuration_in_the_docs_is_valid() {
    let mut failures = Vec::new();
    for page in pages() {
        for block in json_blocks(&read(&page)) {
            let Some(config) = plugin_configuration(&block) else { continue };
            if let Err(err) = Config::from_json(config.as_bytes()) {
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
        let found = json_blocks(&read(page)).iter().filter_map(plugin_configuration).count();
        assert!(
            found >= at_least,
            "{page} has {found} plugin configuration example(s), expected at least {at_least}"
        );
    }
}

#[test]
fn every_reason_code_is_in_the_responses_table_with_its_status_and_error() {
    let page = "docs/responses.md";
    // code -> (status, error, line) of every row that names it
    let mut rows: Vec<(String, u16, String, usize)> = Vec::new();
    for (line, cells) in table_rows(&read(page)) {
        let [status, error, reasons, ..] = cells.as_slice() else { continue };
        let Ok(status) = status.parse::<u16>() else { continue };
        let error = code_spans(error).first().map(|e| (*e).to_owned()).unwrap_or_default();
        for code in code_spans(reasons) {
            rows.push((code.to_owned(), status, error.clone(), line));
        }
    }
    let answers: Vec<(&str, Denial)> = Reason::ALL
        .iter()
        .map(|&r| (r.code(), Denial::auth(&Rejection::new(r, "docs"))))
        .chain(RouteDenial::ALL.iter().map(|&d| (d.code(), Denial::route(d, None))))
        .collect();
    let mut failures = Vec::new();
    for (code, denial) in &answers {
        let named: Vec<_> = rows.iter().filter(|(c, ..)| c == code).collect();
        if named.is_empty() {
            failures.push(format!("{code}: no row in the table"));
        }
        for (_, status, error, line) in named {
            if (*status, error.as_str()) != (denial.status, denial.error()) {
                failures.push(format!(
                    "{code} (line {line}): the table says {status} {error}, the filter answers {} {}",
                    denial.status,
                    denial.error()
                ));
            }
        }
    }
    for (code, _, _, line) in &rows {
        if !answers.iter().any(|(c, _)| c == code) {
            failures.push(format!("{code} (line {line}): no such reason code"));
        }
    }
    assert!(failures.is_empty(), "{page}:\n{}", failures.join("\n"));
}

#[test]
fn every_metric_family_is_in_the_metrics_table_with_its_type_and_labels() {
    let page = "docs/observability.md";
    let rows: Vec<(usize, Vec<String>)> = table_rows(&read(page))
        .into_iter()
        .filter(|(_, cells)| {
            cells.first().is_some_and(|c| code_spans(c).iter().any(|s| s.starts_with("nhi_")))
        })
        .collect();
    let mut failures = Vec::new();
    for family in Family::ALL {
        let name = family.name();
        let Some((line, cells)) = rows.iter().find(|(_, cells)| code_spans(&cells[0]) == [name]) else {
            failures.push(format!("{name}: no row of its own"));
            continue;
        };
        let kind = match family.kind() {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        if cells.get(1).map(String::as_str) != Some(kind) {
            failures.push(format!("{name} (line {line}): type {:?}, it is a {kind}", cells.get(1)));
        }
        let labels: Vec<&str> = family.labels().iter().map(|label| label.key()).collect();
        let shown: Vec<&str> = cells.get(2).map(|c| code_spans(c)).unwrap_or_default();
        let shown: Vec<&str> = shown.into_iter().filter(|s| s.starts_with("nhi_")).collect();
        if shown != labels {
            failures.push(format!("{name} (line {line}): labels {shown:?}, it has {labels:?}"));
        }
    }
    for (line, cells) in &rows {
        for name in code_spans(&cells[0]) {
            if !Family::ALL.iter().any(|f| f.name() == name) {
                failures.push(format!("{name} (line {line}): no such metric family"));
            }
        }
    }
    assert!(failures.is_empty(), "{page}:\n{}", failures.join("\n"));
}

#[test]
fn every_e2e_suite_is_in_the_testing_table() {
    let page = "docs/testing.md";
    let named: Vec<String> = table_under(&read(page), "suite")
        .into_iter()
        .filter_map(|(_, cells)| cells.into_iter().next())
        .flat_map(|cell| code_spans(&cell).into_iter().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    let mut suites: Vec<String> = fs::read_dir(repo_root().join("test-harness/tests"))
        .expect("test-harness/tests exists")
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter_map(|name| name.strip_suffix(".rs").map(str::to_owned))
        .collect();
    suites.sort();
    let missing: Vec<&String> = suites.iter().filter(|suite| !named.contains(suite)).collect();
    let unknown: Vec<&String> = named.iter().filter(|name| !suites.contains(name)).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "{page}: suites not in the table: {missing:?}; names in the table that are no suite: {unknown:?}"
    );
}

#[test]
fn the_docs_index_links_every_page() {
    let index = read("docs/README.md");
    let missing: Vec<String> = pages()
        .into_iter()
        .filter_map(|page| page.strip_prefix("docs/").map(str::to_owned))
        .filter(|page| page != "README.md" && !index.contains(&format!("]({page}")))
        .collect();
    assert!(missing.is_empty(), "docs/README.md does not link {missing:?}");
    assert!(read("README.md").contains("](docs/README.md)"), "README.md does not link docs/README.md");
}

#[test]
fn the_architecture_page_lists_the_core_modules_in_layer_order() {
    // lib.rs's table is the declared layer order (`tests/layers.rs` holds the code to it).
    let declared: Vec<String> = read("core/src/lib.rs")
        .lines()
        .filter_map(|line| line.strip_prefix("//! | [`")?.split('`').next().map(str::to_owned))
        .collect();
    let page = read("docs/architecture.md");
    let table =
        page.split("| module | what it is |").nth(1).expect("docs/architecture.md has the module table");
    let listed: Vec<String> = table
        .lines()
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .filter_map(|line| code_spans(line).first().map(|m| (*m).to_owned()))
        .collect();
    assert!(declared.len() > 10, "core/src/lib.rs lists its modules: {declared:?}");
    assert_eq!(listed, declared, "docs/architecture.md's modules are not core/src/lib.rs's, in its order");
}

#[test]
fn the_harness_readme_lists_the_harness_modules() {
    let declared: Vec<String> = read("test-harness/src/lib.rs")
        .lines()
        .filter_map(|line| line.strip_prefix("pub mod ")?.strip_suffix(';').map(str::to_owned))
        .collect();
    let page = read("test-harness/README.md");
    let table =
        page.split("| module | what it is |").nth(1).expect("test-harness/README.md has the module table");
    let listed: Vec<String> = table
        .lines()
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .filter_map(|line| code_spans(line).first().map(|m| (*m).to_owned()))
        .collect();
    assert!(declared.len() > 10, "test-harness/src/lib.rs declares its modules: {declared:?}");
    assert_eq!(listed, declared, "test-harness/README.md's modules are not test-harness/src/lib.rs's");
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces to `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// A page without its fenced blocks (their `#` lines are no headings, their `](` no links).
fn prose(markdown: &str) -> String {
    let mut fenced = false;
    let mut out = String::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let mut pages = pages();
    pages.push("test-harness/README.md".to_owned());
    let mut failures = Vec::new();
    for page in &pages {
        let text = prose(&read(page));
        let dir = Path::new(page).parent().unwrap_or(Path::new(""));
        for target in text.split("](").skip(1).filter_map(|rest| rest.split(')').next()) {
            if target.starts_with("http://") || target.starts_with("https://") {
                continue;
            }
            let (path, fragment) = target.split_once('#').unwrap_or((target, ""));
            let file = if path.is_empty() { PathBuf::from(page) } else { dir.join(path) };
            let Ok(resolved) = repo_root().join(&file).canonicalize() else {
                failures.push(format!("{page}: {target}: no such file"));
                continue;
            };
            if fragment.is_empty() || resolved.extension().is_none_or(|e| e != "md") {
                continue;
            }
            let headings = prose(&fs::read_to_string(&resolved).unwrap());
            let found = headings
                .lines()
                .filter(|line| line.starts_with('#'))
                .any(|line| anchor(line.trim_start_matches('#')) == fragment);
            if !found {
                failures.push(format!("{page}: {target}: no such heading"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// docs/testing.md says which real-Envoy suites run each reason code: exactly the
/// suites whose source holds the code as a string literal (the scenario table in
/// `test-harness/src/scenarios.rs` counts for `scenarios_envoy`, which runs it in
/// Envoy; the emulator and the native run do not count), and where a code no suite
/// names is tested instead.
#[test]
fn every_reason_code_says_which_suites_run_it() {
    let page = "docs/testing.md";
    let suites: Vec<(String, String)> = fs::read_dir(repo_root().join("test-harness/tests"))
        .expect("test-harness/tests exists")
        .map(|entry| entry.unwrap().path())
        .filter_map(|path| Some((path.file_stem()?.to_str()?.to_owned(), fs::read_to_string(&path).ok()?)))
        .filter(|(name, _)| name != "emulator" && name != "scenarios_native")
        .chain([("scenarios_envoy".to_owned(), read("test-harness/src/scenarios.rs"))])
        .collect();
    let mut codes: Vec<&str> = Reason::ALL.iter().map(|r| r.code()).collect();
    codes.extend(RouteDenial::ALL.iter().map(|r| r.code()));
    let rows = table_under(&read(page), "reason");
    let mut failures = Vec::new();
    for code in &codes {
        let found: Vec<&(usize, Vec<String>)> =
            rows.iter().filter(|(_, cells)| code_spans(&cells[0]) == [*code]).collect();
        let [(line, cells)] = found.as_slice() else {
            failures.push(format!("{code}: {} rows", found.len()));
            continue;
        };
        let literal = format!("\"{code}\"");
        let mut running: Vec<&str> = suites
            .iter()
            .filter(|(_, source)| source.contains(&literal))
            .map(|(name, _)| name.as_str())
            .collect();
        running.sort_unstable();
        running.dedup();
        let mut listed = code_spans(&cells[1]);
        listed.sort_unstable();
        if listed != running {
            failures.push(format!(
                "{code} (line {line}): the table lists {listed:?}, the suites naming it are {running:?}"
            ));
        }
        if running.is_empty() && cells.get(2).is_none_or(|cell| cell.is_empty()) {
            failures.push(format!("{code} (line {line}): no suite runs it, and the row says nowhere else"));
        }
    }
    for (line, cells) in &rows {
        if !code_spans(&cells[0]).iter().all(|name| codes.contains(name)) {
            failures.push(format!("line {line}: {} is no reason code", cells[0]));
        }
    }
    assert!(failures.is_empty(), "{page}:\n{}", failures.join("\n"));
}
