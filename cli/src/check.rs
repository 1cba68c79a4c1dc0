//! `nhi-guard check`: finds the plugin configuration inside the files people deploy
//! and validates it with [`Config::from_json`], the code the filter runs in
//! `on_configure`.
//!
//! A file may be the plugin JSON itself, an Envoy bootstrap or ECDS file, a Kubernetes
//! manifest (Istio `WasmPlugin` or `EnvoyFilter`, Envoy Gateway `EnvoyExtensionPolicy`,
//! a `ConfigMap` holding any of these) or an APISIX `config.yaml` / `apisix.yaml` /
//! Admin API route. Each configuration is checked as the bytes its host hands the
//! filter: a JSON file as it is, Envoy's `StringValue` as its string, Istio's
//! `pluginConfig` and Envoy Gateway's `config` as the JSON the control plane
//! serialises them to, APISIX's `conf` string as it is.
//!
//! Besides the configuration itself the checker refuses what would make a host pass
//! requests the filter never saw (`failStrategy: FAIL_OPEN`, `failOpen: true`,
//! `fail_open`, `failure_policy: FAIL_OPEN`), a `configuration` Envoy would hand over
//! as serialised protobuf instead of JSON, and, in a static Envoy bootstrap, a
//! `jwks.cluster` that names no cluster.
//!
//! Pure: no file system access here; the `nhi-guard` binary reads the files.

use std::fmt;

use serde::Deserialize as _;
use serde_json::{Map, Value};

use nhi_guard_core::config::{Config, ConfigError};

/// The type URL of Envoy's Wasm HTTP filter configuration.
pub const WASM_FILTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const STRING_VALUE_TYPE: &str = "type.googleapis.com/google.protobuf.StringValue";
/// The plugin name APISIX's `wasm.plugins[].name` and routes use in the shipped files.
pub const APISIX_PLUGIN_NAME: &str = "nhi-guard";

/// What checking one file found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FileReport {
    /// One line per valid plugin configuration (or APISIX plugin declaration).
    pub ok: Vec<String>,
    /// One line per problem; empty when the file passes.
    pub errors: Vec<String>,
}

impl FileReport {
    pub fn passed(&self) -> bool {
        self.errors.is_empty()
    }
}

/// A problem, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Which document and object, e.g. `WasmPlugin istio-system/nhi-guard`.
    pub what: String,
    /// JSON path from the top of that document (and into the plugin configuration).
    pub path: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&located(&self.what, &self.path, &self.reason))
    }
}

/// `what: path: message`, without the path when it is empty.
fn located(what: &str, path: &str, message: &str) -> String {
    if path.is_empty() {
        format!("{what}: {message}")
    } else {
        format!("{what}: {path}: {message}")
    }
}

/// Where a plugin configuration sits and how its host hands it over.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub what: String,
    /// JSON path of the configuration inside its document.
    pub path: String,
    pub source: Source,
    /// Static cluster names of the enclosing Envoy bootstrap, when the bootstrap
    /// defines every cluster it has (no CDS): `jwks.cluster` must be one of them.
    pub static_clusters: Option<Vec<String>>,
}

/// The configuration as its host hands it to the filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A string (a JSON file, Envoy's `StringValue`, APISIX's `conf`): these bytes.
    Text(String),
    /// Structured YAML/JSON (Istio's `pluginConfig`, Envoy Gateway's `config`): the
    /// control plane serialises it to JSON.
    Structured(Value),
}

/// What [`extract`] found in a file.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Extracted {
    pub configs: Vec<Found>,
    /// Things that are right but carry no configuration (APISIX's plugin declaration).
    pub notes: Vec<String>,
    pub problems: Vec<Problem>,
}

/// Checks every plugin configuration in `text`; `name` decides nothing but how a
/// JSON file is told from YAML (`.json`) and is not printed.
pub fn check_text(name: &str, text: &str) -> FileReport {
    let extracted = extract(name, text);
    let mut report = FileReport {
        errors: extracted.problems.iter().map(ToString::to_string).collect(),
        ok: extracted.notes.clone(),
    };
    for found in &extracted.configs {
        match check_found(found) {
            Ok(summary) => report.ok.push(located(&found.what, &found.path, &format!("ok ({summary})"))),
            Err(problem) => report.errors.push(problem.to_string()),
        }
    }
    if extracted.configs.is_empty() && extracted.notes.is_empty() && report.errors.is_empty() {
        report.errors.push(
            "no nhi-guard plugin configuration found (looked for a plugin JSON, Envoy Wasm filters, \
             WasmPlugin, EnvoyFilter, EnvoyExtensionPolicy and APISIX plugin entries)"
                .to_owned(),
        );
    }
    report
}

/// Validates one configuration; on success a one-line summary.
pub fn check_found(found: &Found) -> Result<String, Problem> {
    let problem = |path: String, reason: String| Problem { what: found.what.clone(), path, reason };
    let (bytes, structured) = match &found.source {
        Source::Text(text) => (text.as_bytes().to_vec(), serde_json::from_str::<Value>(text).ok()),
        Source::Structured(value) => (
            serde_json::to_vec(value).map_err(|e| problem(found.path.clone(), e.to_string()))?,
            Some(value.clone()),
        ),
    };
    // The verdict comes from the exact bytes the host hands the filter.
    let config = match Config::from_json(&bytes) {
        Ok(config) => config,
        Err(ConfigError::Invalid { field, reason }) => {
            return Err(problem(join(&found.path, &found.source, &field), reason))
        }
        Err(ConfigError::Syntax(message)) => {
            let (field, reason) = match structured.as_ref().and_then(locate_syntax_error) {
                Some((field, reason)) => (join(&found.path, &found.source, &field), reason),
                None => (found.path.clone(), message),
            };
            return Err(problem(field, reason));
        }
    };
    if let Some(clusters) = &found.static_clusters {
        for (i, issuer) in config.issuers.iter().enumerate() {
            if let nhi_guard_core::config::JwksSource::Remote(remote) = &issuer.jwks {
                if !clusters.contains(&remote.cluster) {
                    return Err(problem(
                        join(&found.path, &found.source, &format!("issuers[{i}].jwks.cluster")),
                        format!(
                            "{:?} is not a cluster of this Envoy config (it has {})",
                            remote.cluster,
                            clusters.join(", ")
                        ),
                    ));
                }
            }
        }
    }
    let names: Vec<&str> = config.issuers.iter().map(|i| i.name.as_str()).collect();
    Ok(format!("issuers: {}", names.join(", ")))
}

/// The JSON path of a plugin-configuration field `field` found at `container`.
fn join(container: &str, source: &Source, field: &str) -> String {
    match (container.is_empty(), source) {
        (true, _) => field.to_owned(),
        (false, Source::Structured(_)) => format!("{container}.{field}"),
        (false, Source::Text(_)) => format!("{container} -> {field}"),
    }
}

/// serde reports a shape error (unknown field, wrong type, missing field) with a
/// line and column of the text it read. Reading the same value pretty-printed, one
/// member per line, turns the line into a JSON path.
fn locate_syntax_error(value: &Value) -> Option<(String, String)> {
    let pretty = serde_json::to_string_pretty(value).ok()?;
    let Err(ConfigError::Syntax(message)) = Config::from_json(pretty.as_bytes()) else {
        return None;
    };
    let (reason, position) = message.rsplit_once(" at line ")?;
    let line: usize = position.split_whitespace().next()?.parse().ok()?;
    let mut lines = vec![String::new()];
    layout(value, "", &mut lines);
    let path = lines.get(line.checked_sub(1)?)?.clone();
    Some((if path.is_empty() { "(top level)".to_owned() } else { path }, reason.to_owned()))
}

/// Pushes, for each line `serde_json::to_string_pretty` prints after the line that
/// opens `value`, the path that line belongs to.
fn layout(value: &Value, path: &str, lines: &mut Vec<String>) {
    match value {
        Value::Object(members) if !members.is_empty() => {
            for (key, child) in members {
                let child_path = member_path(path, key);
                lines.push(child_path.clone());
                layout(child, &child_path, lines);
            }
            lines.push(path.to_owned());
        }
        Value::Array(items) if !items.is_empty() => {
            for (i, child) in items.iter().enumerate() {
                let child_path = format!("{path}[{i}]");
                lines.push(child_path.clone());
                layout(child, &child_path, lines);
            }
            lines.push(path.to_owned());
        }
        _ => {}
    }
}

fn member_path(path: &str, key: &str) -> String {
    let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (path.is_empty(), plain) {
        (true, true) => key.to_owned(),
        (false, true) => format!("{path}.{key}"),
        (_, false) => format!("{path}[{}]", Value::String(key.to_owned())),
    }
}

/// Finds every nhi-guard plugin configuration in a file.
pub fn extract(name: &str, text: &str) -> Extracted {
    let mut out = Extracted::default();
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    if name.ends_with(".json") || trimmed.starts_with('{') {
        match serde_json::from_str::<Value>(trimmed) {
            Ok(doc) => {
                let is_plugin = doc.get("issuers").is_some() && doc.get("apiVersion").is_none();
                if is_plugin {
                    out.configs.push(Found {
                        what: "plugin configuration".to_owned(),
                        path: String::new(),
                        source: Source::Text(trimmed.to_owned()),
                        static_clusters: None,
                    });
                } else {
                    document(&doc, "", &mut out);
                }
                return out;
            }
            Err(err) if name.ends_with(".json") => {
                out.problems.push(Problem {
                    what: "plugin configuration".to_owned(),
                    path: String::new(),
                    reason: format!("not JSON: {err}"),
                });
                return out;
            }
            // `{` also starts a YAML flow mapping.
            Err(_) => {}
        }
    }
    let docs = match yaml_documents(text) {
        Ok(docs) => docs,
        Err(reason) => {
            out.problems.push(Problem { what: "file".to_owned(), path: String::new(), reason });
            return out;
        }
    };
    let several = docs.len() > 1;
    for (i, doc) in docs.iter().enumerate() {
        let label = if several { format!("document {}: ", i + 1) } else { String::new() };
        document(doc, &label, &mut out);
    }
    out
}

/// Every document of a YAML stream as JSON; empty documents are dropped.
pub fn yaml_documents(text: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let yaml = serde_yaml::Value::deserialize(doc).map_err(|e| format!("document {}: {e}", i + 1))?;
        if yaml.is_null() {
            continue;
        }
        let json = serde_json::to_value(&yaml).map_err(|e| format!("document {}: {e}", i + 1))?;
        docs.push(json);
    }
    Ok(docs)
}

fn document(doc: &Value, label: &str, out: &mut Extracted) {
    let Some(object) = doc.as_object() else {
        out.problems.push(Problem {
            what: format!("{label}document"),
            path: String::new(),
            reason: "is not a mapping".to_owned(),
        });
        return;
    };
    if object.contains_key("issuers") && !object.contains_key("apiVersion") {
        out.configs.push(Found {
            what: format!("{label}plugin configuration"),
            path: String::new(),
            source: Source::Structured(doc.clone()),
            static_clusters: None,
        });
        return;
    }
    if let (Some(api_version), Some(kind)) =
        (object.get("apiVersion").and_then(Value::as_str), object.get("kind").and_then(Value::as_str))
    {
        kubernetes_object(doc, api_version, kind, label, out);
        return;
    }
    let before = out.configs.len() + out.problems.len() + out.notes.len();
    apisix(object, label, out);
    if out.configs.len() + out.problems.len() + out.notes.len() == before {
        let what = if object.contains_key("static_resources") || object.contains_key("dynamic_resources") {
            "Envoy bootstrap"
        } else if object.contains_key("resources") {
            "xDS resources"
        } else {
            "document"
        };
        wasm_filters(doc, &format!("{label}{what}"), static_clusters(object), out);
    }
}

fn kubernetes_object(doc: &Value, api_version: &str, kind: &str, label: &str, out: &mut Extracted) {
    let metadata = doc.get("metadata");
    let name = metadata.and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("<unnamed>");
    let what = match metadata.and_then(|m| m.get("namespace")).and_then(Value::as_str) {
        Some(namespace) => format!("{label}{kind} {namespace}/{name}"),
        None => format!("{label}{kind} {name}"),
    };
    // `v1` is the core group.
    let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
    let problem =
        |path: &str, reason: &str| Problem { what: what.clone(), path: path.into(), reason: reason.into() };
    match (group, kind) {
        ("extensions.istio.io", "WasmPlugin") => {
            if doc.pointer("/spec/failStrategy").and_then(Value::as_str) == Some("FAIL_OPEN") {
                out.problems.push(problem(
                    "spec.failStrategy",
                    "FAIL_OPEN passes requests without verification when the plugin fails; \
                     use FAIL_CLOSE (or FAIL_RELOAD on Istio 1.25+)",
                ));
            }
            match doc.pointer("/spec/pluginConfig") {
                Some(config @ Value::Object(_)) => out.configs.push(Found {
                    what,
                    path: "spec.pluginConfig".to_owned(),
                    source: Source::Structured(config.clone()),
                    static_clusters: None,
                }),
                Some(_) => out.problems.push(problem("spec.pluginConfig", "must be a mapping")),
                None => out.problems.push(problem(
                    "spec.pluginConfig",
                    "is missing: nhi-guard refuses to start without a configuration",
                )),
            }
        }
        ("networking.istio.io", "EnvoyFilter") => {
            let before = out.configs.len() + out.problems.len();
            wasm_filters(doc, &what, None, out);
            if out.configs.len() + out.problems.len() == before {
                out.problems.push(problem("spec.configPatches", "patches in no nhi-guard Wasm filter"));
            }
        }
        ("gateway.envoyproxy.io", "EnvoyExtensionPolicy") => {
            let entries = doc.pointer("/spec/wasm").and_then(Value::as_array).cloned().unwrap_or_default();
            let mut any = false;
            for (i, entry) in entries.iter().enumerate() {
                let at = format!("spec.wasm[{i}]");
                let config = entry.get("config");
                let ours = mentions_nhi_guard(entry) || config.is_some_and(|c| c.get("issuers").is_some());
                if !ours {
                    continue;
                }
                any = true;
                if entry.get("failOpen").and_then(Value::as_bool) == Some(true) {
                    out.problems.push(problem(
                        &format!("{at}.failOpen"),
                        "true passes requests without verification when the plugin fails",
                    ));
                }
                match config {
                    Some(config @ Value::Object(_)) => out.configs.push(Found {
                        what: what.clone(),
                        path: format!("{at}.config"),
                        source: Source::Structured(config.clone()),
                        static_clusters: None,
                    }),
                    _ => out.problems.push(problem(
                        &format!("{at}.config"),
                        "must be a mapping: nhi-guard refuses to start without a configuration",
                    )),
                }
            }
            if !any {
                out.problems.push(problem("spec.wasm", "lists no nhi-guard Wasm extension"));
            }
        }
        ("", "ConfigMap") => {
            let data = doc.get("data").and_then(Value::as_object).cloned().unwrap_or_default();
            for (key, value) in data {
                let Some(text) = value.as_str() else { continue };
                let inner = extract(&key, text);
                let prefix = |s: &str| format!("{what} data[{key:?}]: {s}");
                out.configs.extend(inner.configs.into_iter().map(|mut f| {
                    f.what = prefix(&f.what);
                    f
                }));
                out.notes.extend(inner.notes.iter().map(|n| prefix(n)));
                out.problems.extend(inner.problems.into_iter().map(|mut p| {
                    p.what = prefix(&p.what);
                    p
                }));
            }
        }
        _ => out.notes.push(format!("{what}: carries no plugin configuration (skipped)")),
    }
}

/// Wasm filter configurations anywhere below `value` (an Envoy bootstrap, an ECDS
/// file, an EnvoyFilter's patches): objects whose `@type` is [`WASM_FILTER_TYPE`].
fn wasm_filters(value: &Value, what: &str, static_clusters: Option<Vec<String>>, out: &mut Extracted) {
    let mut filters = Vec::new();
    collect_wasm_filters(value, String::new(), &mut filters);
    for (path, filter) in filters {
        let plugin = filter.get("config").cloned().unwrap_or(Value::Null);
        let configuration = plugin.get("configuration");
        let configuration_json = configuration
            .filter(|c| c.get("@type").and_then(Value::as_str) == Some(STRING_VALUE_TYPE))
            .and_then(|c| c.get("value"))
            .and_then(Value::as_str);
        let ours = mentions_nhi_guard(&plugin)
            || configuration_json
                .and_then(|text| serde_json::from_str::<Value>(text).ok())
                .is_some_and(|c| c.get("issuers").is_some());
        if !ours {
            out.notes.push(format!("{what}: {path}: a Wasm filter that is not nhi-guard (skipped)"));
            continue;
        }
        let problem = |at: &str, reason: String| Problem {
            what: what.to_owned(),
            path: format!("{path}.config{at}"),
            reason,
        };
        if plugin.get("fail_open").and_then(Value::as_bool) == Some(true) {
            out.problems.push(problem(
                ".fail_open",
                "true passes requests without verification when the plugin fails".into(),
            ));
        }
        if plugin.get("failure_policy").and_then(Value::as_str) == Some("FAIL_OPEN") {
            out.problems.push(problem(
                ".failure_policy",
                "FAIL_OPEN passes requests without verification when the plugin fails; \
                 use FAIL_RELOAD or FAIL_CLOSED"
                    .into(),
            ));
        }
        match (configuration, configuration_json) {
            (_, Some(text)) => out.configs.push(Found {
                what: what.to_owned(),
                path: format!("{path}.config.configuration.value"),
                source: Source::Text(text.to_owned()),
                static_clusters: static_clusters.clone(),
            }),
            (None, _) => out.problems.push(problem(
                ".configuration",
                "is missing: nhi-guard refuses to start without a configuration".into(),
            )),
            (Some(other), None) => out.problems.push(problem(
                ".configuration",
                format!(
                    "must be a {STRING_VALUE_TYPE} holding the JSON (Envoy hands any other type \
                     over as serialised protobuf); found @type {}",
                    other.get("@type").unwrap_or(&Value::Null)
                ),
            )),
        }
    }
}

fn collect_wasm_filters(value: &Value, path: String, found: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(members) => {
            if members.get("@type").and_then(Value::as_str) == Some(WASM_FILTER_TYPE) {
                found.push((path, value.clone()));
                return;
            }
            for (key, child) in members {
                collect_wasm_filters(child, member_path(&path, key), found);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                collect_wasm_filters(child, format!("{path}[{i}]"), found);
            }
        }
        _ => {}
    }
}

/// Whether a Wasm filter or extension names nhi-guard in its name, root id or code.
fn mentions_nhi_guard(plugin: &Value) -> bool {
    let mut strings = Vec::new();
    for pointer in [
        "/name",
        "/root_id",
        "/rootID",
        "/vm_config/vm_id",
        "/vm_config/code/local/filename",
        "/vm_config/code/remote/http_uri/uri",
        "/code/image/url",
        "/code/http/url",
    ] {
        if let Some(s) = plugin.pointer(pointer).and_then(Value::as_str) {
            strings.push(s.to_ascii_lowercase());
        }
    }
    strings.iter().any(|s| s.contains("nhi-guard") || s.contains("nhi_guard"))
}

/// Static cluster names, when the bootstrap gets no clusters from CDS.
fn static_clusters(object: &Map<String, Value>) -> Option<Vec<String>> {
    let dynamic = object.get("dynamic_resources");
    if dynamic.is_some_and(|d| d.get("cds_config").is_some() || d.get("ads_config").is_some()) {
        return None;
    }
    let clusters = object.get("static_resources")?.get("clusters")?.as_array()?;
    Some(clusters.iter().filter_map(|c| c.get("name").and_then(Value::as_str)).map(str::to_owned).collect())
}

/// APISIX: `config.yaml` declares Wasm plugins under `wasm.plugins`; routes, services,
/// global rules and plugin configs (`apisix.yaml`, or one Admin API object) enable
/// them with `plugins.<name>.conf`.
fn apisix(object: &Map<String, Value>, label: &str, out: &mut Extracted) {
    let mut names = vec![APISIX_PLUGIN_NAME.to_owned()];
    if let Some(plugins) = object.get("wasm").and_then(|w| w.get("plugins")).and_then(Value::as_array) {
        for (i, plugin) in plugins.iter().enumerate() {
            apisix_declaration(plugin, &format!("wasm.plugins[{i}]"), label, &mut names, out);
        }
    }
    let mut holders: Vec<(String, &Value)> = Vec::new();
    for list in ["routes", "services", "global_rules", "plugin_configs", "consumers"] {
        for (i, item) in object.get(list).and_then(Value::as_array).into_iter().flatten().enumerate() {
            holders.push((format!("{list}[{i}]"), item));
        }
    }
    let whole = Value::Object(object.clone());
    if object.contains_key("plugins") && (object.contains_key("uri") || object.contains_key("uris")) {
        holders.push((String::new(), &whole));
    }
    for (at, holder) in holders {
        let Some(plugins) = holder.get("plugins").and_then(Value::as_object) else { continue };
        let id = holder
            .get("id")
            .or_else(|| holder.get("uri"))
            .map(|v| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()));
        for (plugin_name, plugin) in plugins {
            let conf = plugin.get("conf");
            let conf_is_ours = match conf {
                Some(Value::String(s)) => {
                    serde_json::from_str::<Value>(s).is_ok_and(|c| c.get("issuers").is_some())
                }
                Some(c) => c.get("issuers").is_some(),
                None => false,
            };
            if !names.contains(plugin_name) && !conf_is_ours {
                continue;
            }
            // `routes[0]` → "route".
            let holder_kind = at.split('[').next().unwrap_or_default().trim_end_matches('s');
            let what = match &id {
                Some(id) => {
                    format!("{label}APISIX {} {id}", if at.is_empty() { "route" } else { holder_kind })
                }
                None => format!("{label}APISIX route"),
            };
            let base = if at.is_empty() { "plugins".to_owned() } else { format!("{at}.plugins") };
            let path = member_path(&member_path(&base, plugin_name), "conf");
            match conf {
                Some(Value::String(text)) => out.configs.push(Found {
                    what,
                    path,
                    source: Source::Text(text.clone()),
                    static_clusters: None,
                }),
                Some(value @ Value::Object(_)) => out.configs.push(Found {
                    what,
                    path,
                    source: Source::Structured(value.clone()),
                    static_clusters: None,
                }),
                _ => out.problems.push(Problem {
                    what,
                    path,
                    reason: "must be the plugin configuration, as a JSON string or a mapping".to_owned(),
                }),
            }
        }
    }
}

fn apisix_declaration(plugin: &Value, at: &str, label: &str, names: &mut Vec<String>, out: &mut Extracted) {
    let what = format!("{label}APISIX config");
    let problem = |field: &str, reason: &str| Problem {
        what: what.clone(),
        path: if field.is_empty() { at.to_owned() } else { format!("{at}.{field}") },
        reason: reason.to_owned(),
    };
    let Some(name) = plugin.get("name").and_then(Value::as_str) else {
        out.problems.push(problem("name", "is required"));
        return;
    };
    let file = plugin.get("file").and_then(Value::as_str).unwrap_or_default();
    let ours = name.contains("nhi-guard") || file.contains("nhi_guard") || file.contains("nhi-guard");
    if !ours {
        return;
    }
    names.push(name.to_owned());
    let before = out.problems.len();
    if !file.ends_with(".wasm") {
        out.problems.push(problem("file", "must be the path of the .wasm file"));
    }
    if !plugin.get("priority").is_some_and(Value::is_i64) {
        out.problems.push(problem("priority", "must be an integer"));
    }
    if let Some(phase) = plugin.get("http_request_phase") {
        if !matches!(phase.as_str(), Some("access" | "rewrite")) {
            out.problems.push(problem("http_request_phase", "must be \"access\" or \"rewrite\""));
        }
    }
    if out.problems.len() == before {
        out.notes.push(format!("{what}: {at}: declares Wasm plugin {name:?} from {file}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plugin() -> Value {
        json!({
            "issuers": [{
                "name": "ci",
                "issuer": "https://issuer.example",
                "audiences": ["nhi-gateway"],
                "jwks": { "cluster": "jwks_ci", "authority": "issuer.example", "path": "/jwks.json" }
            }]
        })
    }

    fn errors(name: &str, text: &str) -> Vec<String> {
        check_text(name, text).errors
    }

    #[test]
    fn a_plugin_json_file_is_checked_as_it_is() {
        let report = check_text("p.json", &plugin().to_string());
        assert!(report.passed(), "{report:?}");
        assert_eq!(report.ok, ["plugin configuration: ok (issuers: ci)"]);

        let mut bad = plugin();
        bad["issuers"][0]["audiences"] = json!([]);
        assert_eq!(
            errors("p.json", &bad.to_string()),
            ["plugin configuration: issuers[0].audiences: must list at least one non-empty audience"]
        );
        assert!(errors("p.json", "{\"issuers\": [")[0].contains("EOF"), "a JSON syntax error says so");
    }

    #[test]
    fn shape_errors_name_the_json_path() {
        let mut bad = plugin();
        bad["issuers"][0]["audience"] = json!("x");
        let err = &errors("p.json", &bad.to_string())[0];
        assert!(
            err.starts_with("plugin configuration: issuers[0].audience: unknown field `audience`"),
            "{err}"
        );

        let mut bad = plugin();
        bad["issuers"][0]["jwks"]["timeout_ms"] = json!("soon");
        let err = &errors("p.json", &bad.to_string())[0];
        assert!(err.starts_with("plugin configuration: issuers[0].jwks.timeout_ms: invalid type"), "{err}");

        let mut bad = plugin();
        bad["issuers"][0].as_object_mut().unwrap().remove("issuer");
        let err = &errors("p.json", &bad.to_string())[0];
        assert!(err.starts_with("plugin configuration: issuers[0]: missing field `issuer`"), "{err}");
    }

    #[test]
    fn layout_follows_the_pretty_printer() {
        let value = json!({"a": [1, {"b": {}, "c": [true]}], "d": "x", "e f": null});
        let pretty = serde_json::to_string_pretty(&value).unwrap();
        let mut lines = vec![String::new()];
        layout(&value, "", &mut lines);
        assert_eq!(lines.len(), pretty.lines().count(), "{pretty}");
        assert_eq!(lines[4], "a[1].b");
        assert_eq!(lines[6], "a[1].c[0]");
        assert_eq!(lines[11], "[\"e f\"]");
    }

    fn wasm_plugin(config: &Value, fail: &str) -> String {
        format!(
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{name: nhi-guard, namespace: \
             istio-system}}\nspec:\n  url: oci://example/nhi-guard:1\n  failStrategy: {fail}\n  pluginConfig: {config}\n"
        )
    }

    #[test]
    fn wasm_plugins_are_checked_and_must_fail_closed() {
        let report = check_text("w.yaml", &wasm_plugin(&plugin(), "FAIL_CLOSE"));
        assert_eq!(report.ok, ["WasmPlugin istio-system/nhi-guard: spec.pluginConfig: ok (issuers: ci)"]);
        assert!(report.passed());

        let mut bad = plugin();
        bad["issuers"][0]["algorithms"] = json!(["HS256"]);
        let errs = errors("w.yaml", &wasm_plugin(&bad, "FAIL_OPEN"));
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].starts_with("WasmPlugin istio-system/nhi-guard: spec.failStrategy: FAIL_OPEN"));
        assert!(
            errs[1].starts_with(
                "WasmPlugin istio-system/nhi-guard: spec.pluginConfig.issuers[0].algorithms[0]: is symmetric"
            ),
            "{errs:?}"
        );
    }

    fn envoy(config: &str, clusters: &[&str]) -> String {
        let clusters: String = clusters.iter().map(|c| format!("  - name: {c}\n")).collect();
        format!(
            "static_resources:\n  listeners:\n  - name: l\n    filter_chains:\n    - filters:\n      - name: hcm\n        \
             typed_config:\n          http_filters:\n          - name: nhi-guard\n            typed_config:\n              \
             \"@type\": {WASM_FILTER_TYPE}\n              config:\n                root_id: nhi-guard\n                \
             configuration:\n                  \"@type\": {STRING_VALUE_TYPE}\n                  value: '{config}'\n  \
             clusters:\n{clusters}"
        )
    }

    #[test]
    fn envoy_string_values_are_checked_with_their_clusters() {
        let text = envoy(&plugin().to_string(), &["jwks_ci"]);
        let report = check_text("envoy.yaml", &text);
        assert!(report.passed(), "{report:?}");
        let path = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0]\
                    .typed_config.config.configuration.value";
        assert_eq!(report.ok, [format!("Envoy bootstrap: {path}: ok (issuers: ci)")]);

        let errs = errors("envoy.yaml", &envoy(&plugin().to_string(), &["other"]));
        assert_eq!(
            errs,
            [format!(
                "Envoy bootstrap: {path} -> issuers[0].jwks.cluster: \"jwks_ci\" is not a cluster of this Envoy \
                 config (it has other)"
            )]
        );

        let mut bad = plugin();
        bad["realm"] = json!("");
        assert!(errors("envoy.yaml", &envoy(&bad.to_string(), &["jwks_ci"]))[0].contains("-> realm: must be"));
    }

    #[test]
    fn a_configuration_that_is_not_a_string_value_is_refused() {
        let text = format!(
            "resources:\n- \"@type\": type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig\n  name: \
             nhi-guard\n  typed_config:\n    \"@type\": {WASM_FILTER_TYPE}\n    config:\n      root_id: nhi-guard\n      \
             configuration:\n        \"@type\": type.googleapis.com/google.protobuf.Struct\n        value: {{}}\n"
        );
        let errs = errors("ecds.yaml", &text);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("resources[0].typed_config.config.configuration: must be a"), "{errs:?}");
    }

    #[test]
    fn envoy_gateway_policies_are_checked() {
        let policy = |config: &Value, fail_open: bool| {
            format!(
                "apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: EnvoyExtensionPolicy\nmetadata: {{name: p}}\n\
                 spec:\n  wasm:\n  - name: nhi-guard\n    failOpen: {fail_open}\n    code: {{type: Image, image: \
                 {{url: x/nhi-guard:1}}}}\n    config: {config}\n"
            )
        };
        assert!(check_text("p.yaml", &policy(&plugin(), false)).passed());
        let errs = errors("p.yaml", &policy(&json!({"issuers": []}), true));
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].contains("spec.wasm[0].failOpen"));
        assert_eq!(
            errs[1],
            "EnvoyExtensionPolicy p: spec.wasm[0].config.issuers: must list at least one issuer"
        );
    }

    #[test]
    fn apisix_declarations_and_routes_are_checked() {
        let config =
            "wasm:\n  plugins:\n  - name: nhi-guard\n    priority: 7999\n    file: /w/nhi_guard.wasm\n";
        let report = check_text("config.yaml", config);
        assert!(report.passed(), "{report:?}");
        assert_eq!(report.ok.len(), 1);
        let bad = "wasm:\n  plugins:\n  - name: nhi-guard\n    priority: high\n    file: /w/nhi_guard.so\n";
        assert_eq!(errors("config.yaml", bad).len(), 2);

        let routes = format!(
            "routes:\n- id: api\n  uri: /api/*\n  plugins:\n    nhi-guard:\n      conf: '{}'\n#END\n",
            plugin()
        );
        let report = check_text("apisix.yaml", &routes);
        assert_eq!(report.ok, ["APISIX route api: routes[0].plugins.nhi-guard.conf: ok (issuers: ci)"]);
        let admin = json!({"uri": "/api/*", "plugins": {"nhi-guard": {"conf": {"issuers": []}}}});
        let errs = errors("route.json", &admin.to_string());
        assert_eq!(
            errs,
            ["APISIX route /api/*: plugins.nhi-guard.conf.issuers: must list at least one issuer"]
        );
    }

    #[test]
    fn a_file_without_a_configuration_fails() {
        assert!(errors("x.yaml", "a: 1\n")[0].starts_with("no nhi-guard plugin configuration found"));
        let other = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n";
        let report = check_text("s.yaml", other);
        assert!(report.passed(), "a Kubernetes object of another kind is noted, not an error: {report:?}");
        let config_map = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\ndata:\n  p.json: '{}'\n",
            json!({"issuers": []})
        );
        assert_eq!(
            errors("cm.yaml", &config_map),
            ["ConfigMap c data[\"p.json\"]: plugin configuration: issuers: must list at least one issuer"]
        );
    }
}
