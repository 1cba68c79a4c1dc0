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
//! It also warns about what an Envoy bootstrap exposes around the filter: an admin
//! interface bound beyond loopback (whoever reaches it can stop Envoy, drain its
//! listeners or raise the log level until tokens are logged), and an HTTP connection
//! manager that lets header names with underscores through (`x_nhi_identity` is not
//! a header nhi-guard manages, but CGI/WSGI-style backends read it as
//! `x-nhi-identity`). Warnings do not fail a file: either may be deliberate.
//!
//! Pure: no file system access here; the `nhi-guard` binary reads the files.

use std::fmt;
use std::net::IpAddr;

use serde::Deserialize as _;
use serde_json::{Map, Value};

use nhi_guard_core::config::{Config, ConfigError};

/// The type URL of Envoy's Wasm HTTP filter configuration.
pub const WASM_FILTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
/// The type URL of Envoy's dynamic-modules HTTP filter (the native shell, envoy-native.yaml).
pub const DYNAMIC_MODULE_FILTER_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter";
const STRING_VALUE_TYPE: &str = "type.googleapis.com/google.protobuf.StringValue";
/// The type URL of Envoy's HTTP connection manager configuration.
pub const HCM_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
/// The plugin name APISIX's `wasm.plugins[].name` and routes use in the shipped files.
pub const APISIX_PLUGIN_NAME: &str = "nhi-guard";

/// What checking one file found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FileReport {
    /// One line per valid plugin configuration (or APISIX plugin declaration).
    pub ok: Vec<String>,
    /// One line per risky setting around the filter; they do not fail the file.
    pub warnings: Vec<String>,
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
    /// What the host hands the VM besides the configuration: its environment and
    /// whether headers may pause for the body (Envoy filters and Istio WasmPlugins).
    pub vm: Option<VmSettings>,
}

/// The parts of a Wasm VM's settings a partner configuration depends on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VmSettings {
    /// Variables copied from the proxy's environment (Envoy `host_env_keys`, Istio
    /// `valueFrom: HOST`).
    pub host_keys: Vec<String>,
    /// Variables whose value is written in the manifest (Envoy `key_values`, Istio
    /// `INLINE`): fine for settings, never for a secret.
    pub inline_keys: Vec<String>,
    /// Envoy's `allow_on_headers_stop_iteration`; `None` where the host has no such
    /// setting to read (Istio WasmPlugin).
    pub stop_iteration: Option<bool>,
    /// Where these settings are, for messages.
    pub path: String,
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
    /// Risky settings around the filter (see the module documentation).
    pub warnings: Vec<Problem>,
    pub problems: Vec<Problem>,
}

/// Checks every plugin configuration in `text`; `name` decides nothing but how a
/// JSON file is told from YAML (`.json`) and is not printed.
pub fn check_text(name: &str, text: &str) -> FileReport {
    let extracted = extract(name, text);
    let mut report = FileReport {
        errors: extracted.problems.iter().map(ToString::to_string).collect(),
        warnings: extracted.warnings.iter().map(ToString::to_string).collect(),
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
            "no nhi-guard plugin configuration found (looked for a plugin JSON, Envoy Wasm and dynamic module filters, \
             WasmPlugin, EnvoyFilter, EnvoyExtensionPolicy and APISIX plugin entries)"
                .to_owned(),
        );
    }
    report
}

/// Validates one configuration; on success a one-line summary.
pub fn check_found(found: &Found) -> Result<String, Problem> {
    let problem = |path: String, reason: String| Problem { what: found.what.clone(), path, reason };
    let (bytes, _) = handed_over(found).map_err(|e| problem(found.path.clone(), e))?;
    // The verdict comes from the exact bytes the host hands the filter.
    let config = match Config::from_json(&bytes) {
        Ok(config) => config,
        Err(ConfigError::Invalid { field, reason }) => {
            return Err(problem(join(&found.path, &found.source, &field), reason))
        }
        // Not JSON: serde's message gives the line and column.
        Err(ConfigError::Syntax(message)) => return Err(problem(found.path.clone(), message)),
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
    if let (Some(partners), Some(vm)) = (&config.partners, &found.vm) {
        for (field, variable) in partners.environment_variables() {
            let at = join(&found.path, &found.source, &field);
            if vm.inline_keys.iter().any(|k| k == variable) {
                return Err(problem(
                    at,
                    format!(
                        "names {variable}, whose value is written in {} (an inline secret): copy it from \
                         the proxy's environment instead (Envoy host_env_keys, Istio valueFrom: HOST), \
                         which a Kubernetes Secret fills",
                        vm.path
                    ),
                ));
            }
            if !vm.host_keys.iter().any(|k| k == variable) {
                return Err(problem(
                    at,
                    format!(
                        "names {variable}, which {} does not hand the VM: the plugin would refuse to start",
                        vm.path
                    ),
                ));
            }
        }
        let buffers_bodies =
            partners.clients.iter().any(|p| !p.keys.is_empty() && p.policy.max_body_bytes > 0);
        if buffers_bodies && vm.stop_iteration.is_none() {
            return Err(problem(
                join(&found.path, &found.source, "partners"),
                "partners sign bodies (max_body_bytes > 0), but this host cannot pause the headers for the \
                 body (no allow_on_headers_stop_iteration): set max_body_bytes: 0 (signed requests with a \
                 body are then refused), or deploy the filter with an EnvoyFilter that sets it"
                    .to_owned(),
            ));
        }
        if buffers_bodies && vm.stop_iteration == Some(false) {
            return Err(problem(
                vm.path.clone(),
                "partners sign bodies: set allow_on_headers_stop_iteration: true on this Wasm filter (Envoy \
                 1.35+), or Envoy never hands the filter a body it must check and the request times out"
                    .to_owned(),
            ));
        }
    }
    let names: Vec<&str> = config.issuers.iter().map(|i| i.name.as_str()).collect();
    let issuers = format!("issuers: {}", if names.is_empty() { "none".to_owned() } else { names.join(", ") });
    match &config.partners {
        Some(partners) => {
            let clients: Vec<&str> = partners.clients.iter().map(|p| p.name.as_str()).collect();
            Ok(format!("{issuers}; partners: {}", clients.join(", ")))
        }
        None => Ok(issuers),
    }
}

/// The bytes the host hands the filter for `found`, and the configuration as a JSON
/// value when it is one.
pub fn handed_over(found: &Found) -> Result<(Vec<u8>, Option<Value>), String> {
    Ok(match &found.source {
        Source::Text(text) => (text.as_bytes().to_vec(), serde_json::from_str::<Value>(text).ok()),
        Source::Structured(value) => {
            (serde_json::to_vec(value).map_err(|e| e.to_string())?, Some(value.clone()))
        }
    })
}

/// The JSON path of a plugin-configuration field `field` found at `container`.
fn join(container: &str, source: &Source, field: &str) -> String {
    match (container.is_empty(), source) {
        (true, _) => field.to_owned(),
        (false, Source::Structured(_)) => format!("{container}.{field}"),
        (false, Source::Text(_)) => format!("{container} -> {field}"),
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
                        vm: None,
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
            vm: None,
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
        let bootstrap = object.contains_key("static_resources") || object.contains_key("dynamic_resources");
        let what = if bootstrap {
            "Envoy bootstrap"
        } else if object.contains_key("resources") {
            "xDS resources"
        } else {
            "document"
        };
        let what = format!("{label}{what}");
        wasm_filters(doc, &what, static_clusters(object), out);
        dynamic_module_filters(doc, &what, static_clusters(object), out);
        if bootstrap {
            envoy_bootstrap_warnings(object, &what, out);
        }
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
                Some(config @ Value::Object(_)) => {
                    let env = doc
                        .pointer("/spec/vmConfig/env")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    let named = |from: &str| -> Vec<String> {
                        env.iter()
                            .filter(|e| {
                                e.get("valueFrom").and_then(Value::as_str).unwrap_or("INLINE") == from
                            })
                            .filter_map(|e| e.get("name").and_then(Value::as_str))
                            .map(str::to_owned)
                            .collect()
                    };
                    out.configs.push(Found {
                        what,
                        path: "spec.pluginConfig".to_owned(),
                        source: Source::Structured(config.clone()),
                        static_clusters: None,
                        vm: Some(VmSettings {
                            host_keys: named("HOST"),
                            inline_keys: named("INLINE"),
                            stop_iteration: None,
                            path: "spec.vmConfig.env".to_owned(),
                        }),
                    })
                }
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
            let hardening = istio_underscore_patches(doc, &what, out);
            let credentials = istio_credential_clusters(doc, &what, out);
            if out.configs.len() + out.problems.len() == before && hardening + credentials == 0 {
                out.problems.push(problem(
                    "spec.configPatches",
                    "patches in no nhi-guard Wasm filter, no headers_with_underscores_action and no \
                     credential-injecting cluster",
                ));
            }
        }
        ("gateway.envoyproxy.io", "EnvoyExtensionPolicy") => {
            // The wasm (`spec.wasm`) or the native shell (`spec.dynamicModules`, a module
            // the EnvoyProxy's allowlist names): the same configuration either way.
            let mut any = false;
            for (list, wasm) in [("wasm", true), ("dynamicModules", false)] {
                let entries = doc
                    .pointer(&format!("/spec/{list}"))
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for (i, entry) in entries.iter().enumerate() {
                    let at = format!("spec.{list}[{i}]");
                    let config = entry.get("config");
                    let ours =
                        mentions_nhi_guard(entry) || config.is_some_and(|c| c.get("issuers").is_some());
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
                    // The native shell reads Envoy's own environment: no VM settings.
                    let vm = wasm.then(|| VmSettings {
                        host_keys: entry
                            .pointer("/env/hostKeys")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect(),
                        inline_keys: Vec::new(),
                        stop_iteration: None,
                        path: format!("{at}.env.hostKeys"),
                    });
                    match config {
                        Some(config @ Value::Object(_)) => out.configs.push(Found {
                            what: what.clone(),
                            path: format!("{at}.config"),
                            source: Source::Structured(config.clone()),
                            static_clusters: None,
                            vm,
                        }),
                        _ => out.problems.push(problem(
                            &format!("{at}.config"),
                            "must be a mapping: nhi-guard refuses to start without a configuration",
                        )),
                    }
                }
            }
            if !any {
                out.problems
                    .push(problem("spec.wasm", "lists no nhi-guard Wasm extension or dynamic module"));
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
                for (from, to) in [(inner.warnings, &mut out.warnings), (inner.problems, &mut out.problems)] {
                    to.extend(from.into_iter().map(|mut p| {
                        p.what = prefix(&p.what);
                        p
                    }));
                }
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
                vm: Some(envoy_vm_settings(&plugin, &format!("{path}.config"))),
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

/// An Envoy Wasm `PluginConfig`'s environment and body settings.
fn envoy_vm_settings(plugin: &Value, path: &str) -> VmSettings {
    let strings = |pointer: &str| -> Vec<String> {
        plugin
            .pointer(pointer)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    };
    let inline_keys = plugin
        .pointer("/vm_config/environment_variables/key_values")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    VmSettings {
        host_keys: strings("/vm_config/environment_variables/host_env_keys"),
        inline_keys,
        stop_iteration: Some(
            plugin.get("allow_on_headers_stop_iteration").and_then(Value::as_bool) == Some(true),
        ),
        path: path.to_owned(),
    }
}

/// nhi-guard's native shell (a `dynamic_modules` filter whose `filter_name` is
/// nhi-guard) anywhere below `value`: its `filter_config` is the same plugin JSON.
/// What only the native shell refuses (`host: apisix`) is refused when Envoy loads
/// it, not here.
fn dynamic_module_filters(
    value: &Value,
    what: &str,
    static_clusters: Option<Vec<String>>,
    out: &mut Extracted,
) {
    let mut filters = Vec::new();
    collect_filters(value, DYNAMIC_MODULE_FILTER_TYPE, String::new(), &mut filters);
    for (path, filter) in filters {
        let name = filter.get("filter_name").and_then(Value::as_str).unwrap_or_default();
        if !(name.contains("nhi-guard") || name.contains("nhi_guard")) {
            out.notes
                .push(format!("{what}: {path}: a dynamic module filter that is not nhi-guard (skipped)"));
            continue;
        }
        let config = filter.get("filter_config");
        match config.filter(|c| c.get("@type").and_then(Value::as_str) == Some(STRING_VALUE_TYPE)) {
            Some(config) => match config.get("value").and_then(Value::as_str) {
                Some(text) => out.configs.push(Found {
                    what: what.to_owned(),
                    path: format!("{path}.filter_config.value"),
                    source: Source::Text(text.to_owned()),
                    static_clusters: static_clusters.clone(),
                    vm: None,
                }),
                None => out.problems.push(Problem {
                    what: what.to_owned(),
                    path: format!("{path}.filter_config.value"),
                    reason: "is missing: nhi-guard refuses to start without a configuration".into(),
                }),
            },
            None => out.problems.push(Problem {
                what: what.to_owned(),
                path: format!("{path}.filter_config"),
                reason: format!("must be a {STRING_VALUE_TYPE} holding the JSON"),
            }),
        }
    }
}

fn collect_wasm_filters(value: &Value, path: String, found: &mut Vec<(String, Value)>) {
    collect_filters(value, WASM_FILTER_TYPE, path, found);
}

/// Objects whose `@type` is `filter_type` anywhere below `value`, with their paths.
fn collect_filters(value: &Value, filter_type: &str, path: String, found: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(members) => {
            if members.get("@type").and_then(Value::as_str) == Some(filter_type) {
                found.push((path, value.clone()));
                return;
            }
            for (key, child) in members {
                collect_filters(child, filter_type, member_path(&path, key), found);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                collect_filters(child, filter_type, format!("{path}[{i}]"), found);
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

/// The end of both underscore warnings: why, and what to set.
const UNDERSCORES_HARM: &str = "forwards header names with underscores such as x_nhi_identity, which \
                                CGI/WSGI-style backends read as x-nhi-identity; set REJECT_REQUEST";

/// Warns about an Envoy bootstrap's admin interface bound beyond loopback, and about
/// every static listener's HTTP connection manager that lets header names with
/// underscores through (`headers_with_underscores_action` unset, Envoy's default
/// `ALLOW`, or `ALLOW`).
fn envoy_bootstrap_warnings(object: &Map<String, Value>, what: &str, out: &mut Extracted) {
    let warn = |path: String, reason: String| Problem { what: what.to_owned(), path, reason };
    let admin_address = member(object.get("admin"), "address");
    // Only a socket address can be reached from elsewhere; a pipe is a file with permissions.
    if let Some(address) = member(member(admin_address, "socket_address"), "address") {
        let text = address.as_str().map_or_else(|| address.to_string(), str::to_owned);
        if !is_loopback(&text) {
            out.warnings.push(warn(
                "admin.address.socket_address.address".to_owned(),
                format!(
                    "{text} is not a loopback address: whoever reaches the admin interface can stop \
                     Envoy (/quitquitquit), drain its listeners or raise the log level; bind it to \
                     127.0.0.1 or ::1 (or a pipe)"
                ),
            ));
        }
    }
    for manager in connection_managers(object) {
        let action = member(
            member(Some(manager.config), "common_http_protocol_options"),
            "headers_with_underscores_action",
        );
        let setting = match action {
            None => "not set, so Envoy's default ALLOW",
            Some(action) if allows_underscores(action) => "ALLOW",
            Some(_) => continue,
        };
        out.warnings.push(warn(
            format!("{}.common_http_protocol_options.headers_with_underscores_action", manager.path),
            format!(
                "listener {:?}, filter {:?}: {setting} {UNDERSCORES_HARM}",
                manager.listener, manager.filter
            ),
        ));
    }
}

/// `ALLOW`, by name or by number (proto JSON accepts both).
fn allows_underscores(action: &Value) -> bool {
    action.as_str() == Some("ALLOW") || action.as_u64() == Some(0)
}

/// Whether `address` is a loopback IP address (127.0.0.0/8, ::1, or IPv4-mapped 127.x).
fn is_loopback(address: &str) -> bool {
    match address.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.is_loopback(),
        Ok(IpAddr::V6(v6)) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        Err(_) => false,
    }
}

/// An HTTP connection manager of a static listener.
struct ConnectionManager<'a> {
    /// JSON path of its `typed_config`.
    path: String,
    listener: String,
    /// The network filter's `name`.
    filter: String,
    config: &'a Value,
}

/// Every HTTP connection manager in the static listeners' filter chains and default
/// filter chains.
fn connection_managers(object: &Map<String, Value>) -> Vec<ConnectionManager<'_>> {
    let mut found = Vec::new();
    let listeners = member(object.get("static_resources"), "listeners").and_then(Value::as_array);
    for (i, listener) in listeners.into_iter().flatten().enumerate() {
        let listener_name = listener.get("name").and_then(Value::as_str).unwrap_or("<unnamed>");
        let chains = member(Some(listener), "filter_chains").and_then(Value::as_array).into_iter().flatten();
        let chains = chains.enumerate().map(|(j, chain)| (format!("filter_chains[{j}]"), chain)).chain(
            member(Some(listener), "default_filter_chain").map(|c| ("default_filter_chain".to_owned(), c)),
        );
        for (chain_path, chain) in chains {
            let filters = chain.get("filters").and_then(Value::as_array).into_iter().flatten();
            for (k, filter) in filters.enumerate() {
                let Some(config) = member(Some(filter), "typed_config") else { continue };
                if config.get("@type").and_then(Value::as_str) != Some(HCM_TYPE) {
                    continue;
                }
                found.push(ConnectionManager {
                    path: format!("static_resources.listeners[{i}].{chain_path}.filters[{k}].typed_config"),
                    listener: listener_name.to_owned(),
                    filter: filter.get("name").and_then(Value::as_str).unwrap_or("<unnamed>").to_owned(),
                    config,
                });
            }
        }
    }
    found
}

/// Istio's way to refuse underscored header names at a gateway: an EnvoyFilter patch
/// that merges `headers_with_underscores_action` into the HTTP connection managers.
/// Notes each one that refuses or drops them, warns about one that allows them, and
/// returns how many there are.
/// CLUSTER patches adding a cluster whose requests carry the gateway's own
/// credential through Envoy's credential injector (an upstream HTTP filter): how
/// `kube_api` reaches the API server for TokenReviews. Noted, with the SDS secret
/// named; a credential written into the patch itself is an error.
fn istio_credential_clusters(doc: &Value, what: &str, out: &mut Extracted) -> usize {
    const INJECTOR: &str = "envoy.filters.http.credential_injector";
    let patches = doc.pointer("/spec/configPatches").and_then(Value::as_array).into_iter().flatten();
    let mut count = 0;
    for (i, patch) in patches.enumerate() {
        if patch.get("applyTo").and_then(Value::as_str) != Some("CLUSTER") {
            continue;
        }
        let Some(cluster) = patch.pointer("/patch/value") else { continue };
        let filters = cluster
            .pointer("/typed_extension_protocol_options/envoy.extensions.upstreams.http.v3.HttpProtocolOptions/http_filters")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        for filter in filters.filter(|f| f.get("name").and_then(Value::as_str) == Some(INJECTOR)) {
            count += 1;
            let path = format!("spec.configPatches[{i}].patch.value");
            let name = cluster.get("name").and_then(Value::as_str).unwrap_or("?");
            let credential = filter.pointer("/typed_config/credential/typed_config/credential");
            let inline = serde_json::to_string(filter)
                .is_ok_and(|t| t.contains("inline_string") || t.contains("inline_bytes"));
            match credential.and_then(|c| c.get("sds_config").map(|_| c.get("name"))) {
                Some(secret) if !inline => out.notes.push(located(
                    what,
                    &path,
                    &format!(
                        "cluster {name}: Envoy attaches the gateway's credential from SDS secret {}",
                        secret.and_then(Value::as_str).unwrap_or("?")
                    ),
                )),
                _ => out.problems.push(Problem {
                    what: what.to_owned(),
                    path,
                    reason:
                        "a credential injector must read its credential from SDS (a file Envoy manages), \
                             never inline"
                            .to_owned(),
                }),
            }
        }
    }
    count
}

fn istio_underscore_patches(doc: &Value, what: &str, out: &mut Extracted) -> usize {
    let patches = doc.pointer("/spec/configPatches").and_then(Value::as_array).into_iter().flatten();
    let mut count = 0;
    for (i, patch) in patches.enumerate() {
        if patch.get("applyTo").and_then(Value::as_str) != Some("NETWORK_FILTER") {
            continue;
        }
        let config = member(patch.pointer("/patch/value"), "typed_config");
        let action =
            member(member(config, "common_http_protocol_options"), "headers_with_underscores_action");
        let Some(action) = action else { continue };
        count += 1;
        let path = format!("spec.configPatches[{i}].patch.value");
        if allows_underscores(action) {
            out.warnings.push(Problem {
                what: what.to_owned(),
                path,
                reason: format!("headers_with_underscores_action ALLOW {UNDERSCORES_HARM}"),
            });
        } else {
            let action = action.as_str().map_or_else(|| action.to_string(), str::to_owned);
            out.notes.push(located(
                what,
                &path,
                &format!("sets headers_with_underscores_action {action} on HTTP connection managers"),
            ));
        }
    }
    count
}

/// Member `snake_name` of `value`, also under its proto JSON name (lowerCamelCase):
/// Envoy and Istio read both spellings.
fn member<'a>(value: Option<&'a Value>, snake_name: &str) -> Option<&'a Value> {
    let value = value?;
    value.get(snake_name).or_else(|| {
        let mut camel = String::with_capacity(snake_name.len());
        let mut upper = false;
        for c in snake_name.chars() {
            match (c, upper) {
                ('_', _) => upper = true,
                (c, true) => {
                    camel.push(c.to_ascii_uppercase());
                    upper = false;
                }
                (c, false) => camel.push(c),
            }
        }
        value.get(camel)
    })
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
                    vm: None,
                }),
                Some(value @ Value::Object(_)) => out.configs.push(Found {
                    what,
                    path,
                    source: Source::Structured(value.clone()),
                    static_clusters: None,
                    vm: None,
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
            err.starts_with(
                "plugin configuration: issuers[0].audience: is not a known field (known: name, issuer,"
            ),
            "{err}"
        );

        let mut bad = plugin();
        bad["issuers"][0]["jwks"]["timeout_ms"] = json!("soon");
        let err = &errors("p.json", &bad.to_string())[0];
        assert_eq!(
            err,
            r#"plugin configuration: issuers[0].jwks.timeout_ms: must be a whole number, 0 or more, not "soon""#
        );

        let mut bad = plugin();
        bad["issuers"][0].as_object_mut().unwrap().remove("issuer");
        let err = &errors("p.json", &bad.to_string())[0];
        assert_eq!(err, "plugin configuration: issuers[0].issuer: is required");
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

    /// A bootstrap with nhi-guard in one listener's HTTP connection manager, `admin` its
    /// admin block (absent when null) and `protocol` the manager's
    /// `common_http_protocol_options` (absent when null), as YAML.
    fn bootstrap(admin: Value, protocol: Value) -> String {
        let mut hcm = json!({
            "@type": HCM_TYPE,
            "stat_prefix": "ingress",
            "http_filters": [{
                "name": "nhi-guard",
                "typed_config": {
                    "@type": WASM_FILTER_TYPE,
                    "config": { "root_id": "nhi-guard", "configuration": {
                        "@type": STRING_VALUE_TYPE, "value": plugin().to_string() } }
                }
            }]
        });
        if !protocol.is_null() {
            hcm["common_http_protocol_options"] = protocol;
        }
        let mut doc = json!({
            "static_resources": {
                "listeners": [{
                    "name": "ingress",
                    "filter_chains": [{ "filters": [{
                        "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm }] }]
                }],
                "clusters": [{ "name": "jwks_ci" }]
            }
        });
        if !admin.is_null() {
            doc["admin"] = admin;
        }
        serde_yaml::to_string(&doc).unwrap()
    }

    fn socket(address: &str) -> Value {
        json!({ "address": { "socket_address": { "address": address, "port_value": 9901 } } })
    }

    fn rejecting() -> Value {
        json!({ "headers_with_underscores_action": "REJECT_REQUEST" })
    }

    const UNDERSCORES_PATH: &str = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config\
                                    .common_http_protocol_options.headers_with_underscores_action";

    #[test]
    fn an_admin_interface_beyond_loopback_is_a_warning() {
        let report = check_text("envoy.yaml", &bootstrap(socket("0.0.0.0"), rejecting()));
        assert!(report.passed(), "a warning does not fail the file: {report:?}");
        assert_eq!(
            report.warnings,
            ["Envoy bootstrap: admin.address.socket_address.address: 0.0.0.0 is not a loopback address: \
              whoever reaches the admin interface can stop Envoy (/quitquitquit), drain its listeners or \
              raise the log level; bind it to 127.0.0.1 or ::1 (or a pipe)"]
        );
        for exposed in ["::", "10.0.0.7", "localhost", "::ffff:10.0.0.7"] {
            let warnings = check_text("envoy.yaml", &bootstrap(socket(exposed), rejecting())).warnings;
            assert_eq!(warnings.len(), 1, "{exposed}: {warnings:?}");
            assert!(warnings[0].contains(&format!(": {exposed} is not a loopback address")), "{warnings:?}");
        }
        let pipe = json!({ "address": { "pipe": { "path": "/run/envoy/admin.sock" } } });
        let camel = json!({ "address": { "socketAddress": { "address": "0.0.0.0", "portValue": 9901 } } });
        assert_eq!(check_text("envoy.yaml", &bootstrap(camel, rejecting())).warnings.len(), 1, "camelCase");
        for quiet in [
            socket("127.0.0.1"),
            socket("127.0.0.2"),
            socket("::1"),
            socket("::ffff:127.0.0.1"),
            pipe,
            Value::Null,
        ] {
            let report = check_text("envoy.yaml", &bootstrap(quiet.clone(), rejecting()));
            assert!(report.warnings.is_empty() && report.passed(), "{quiet}: {report:?}");
        }
    }

    #[test]
    fn header_names_with_underscores_let_through_are_a_warning() {
        let report = check_text("envoy.yaml", &bootstrap(socket("127.0.0.1"), Value::Null));
        assert!(report.passed(), "{report:?}");
        assert_eq!(
            report.warnings,
            [format!(
                "Envoy bootstrap: {UNDERSCORES_PATH}: listener \"ingress\", filter \
                 \"envoy.filters.network.http_connection_manager\": not set, so Envoy's default ALLOW forwards \
                 header names with underscores such as x_nhi_identity, which CGI/WSGI-style backends read as \
                 x-nhi-identity; set REJECT_REQUEST"
            )]
        );
        let allow = json!({ "headers_with_underscores_action": "ALLOW", "idle_timeout": "60s" });
        assert_eq!(
            check_text("envoy.yaml", &bootstrap(socket("127.0.0.1"), allow)).warnings,
            [format!(
                "Envoy bootstrap: {UNDERSCORES_PATH}: listener \"ingress\", filter \
                 \"envoy.filters.network.http_connection_manager\": ALLOW forwards header names with \
                 underscores such as x_nhi_identity, which CGI/WSGI-style backends read as x-nhi-identity; \
                 set REJECT_REQUEST"
            )]
        );
        let other = json!({ "idle_timeout": "60s" });
        assert_eq!(check_text("envoy.yaml", &bootstrap(socket("127.0.0.1"), other)).warnings.len(), 1);
        assert_eq!(
            check_text(
                "envoy.yaml",
                &bootstrap(socket("127.0.0.1"), json!({"headersWithUnderscoresAction": 0}))
            )
            .warnings
            .len(),
            1,
            "ALLOW by number, camelCase"
        );
        for refusing in [
            rejecting(),
            json!({ "headers_with_underscores_action": "DROP_HEADER" }),
            json!({ "headersWithUnderscoresAction": "REJECT_REQUEST" }),
            json!({ "headers_with_underscores_action": 1 }),
        ] {
            let report = check_text("envoy.yaml", &bootstrap(socket("127.0.0.1"), refusing.clone()));
            assert!(report.warnings.is_empty(), "{refusing}: {report:?}");
        }

        // Every manager is named: a second listener, on its default filter chain.
        let mut doc: Value = serde_yaml::from_str(&bootstrap(socket("127.0.0.1"), rejecting())).unwrap();
        let mut second = doc["static_resources"]["listeners"][0].clone();
        second["name"] = json!("mtls");
        second["default_filter_chain"] = second["filter_chains"][0].take();
        second.as_object_mut().unwrap().remove("filter_chains");
        second["default_filter_chain"]["filters"][0]["typed_config"]
            .as_object_mut()
            .unwrap()
            .remove("common_http_protocol_options");
        doc["static_resources"]["listeners"].as_array_mut().unwrap().push(second);
        let warnings = check_text("envoy.yaml", &serde_yaml::to_string(&doc).unwrap()).warnings;
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with(
                "Envoy bootstrap: static_resources.listeners[1].default_filter_chain.filters[0].typed_config\
                 .common_http_protocol_options.headers_with_underscores_action: listener \"mtls\", filter"
            ),
            "{warnings:?}"
        );
    }

    #[test]
    fn istio_envoy_filters_may_only_set_the_underscore_action() {
        let filter = |action: &str| {
            format!(
                "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {{name: u, namespace: \
                 istio-system}}\nspec:\n  configPatches:\n  - applyTo: NETWORK_FILTER\n    patch:\n      \
                 operation: MERGE\n      value:\n        typed_config:\n          \"@type\": {HCM_TYPE}\n          \
                 common_http_protocol_options: {{headers_with_underscores_action: {action}}}\n"
            )
        };
        let report = check_text("u.yaml", &filter("REJECT_REQUEST"));
        assert!(report.passed() && report.warnings.is_empty(), "{report:?}");
        assert_eq!(
            report.ok,
            ["EnvoyFilter istio-system/u: spec.configPatches[0].patch.value: sets headers_with_underscores_action \
              REJECT_REQUEST on HTTP connection managers"]
        );
        // ALLOW is warned about, and is no reason for the file to be here.
        let report = check_text("u.yaml", &filter("ALLOW"));
        assert_eq!(report.warnings.len(), 1, "{report:?}");
        assert!(report.errors[0].starts_with("no nhi-guard plugin configuration found"), "{report:?}");
        assert!(report.warnings[0].contains("headers_with_underscores_action ALLOW forwards"), "{report:?}");
        // An EnvoyFilter that does neither is still an error.
        let neither = filter("REJECT_REQUEST").replace("common_http_protocol_options", "stream_idle_timeout");
        assert!(errors("u.yaml", &neither)[0].contains("patches in no nhi-guard Wasm filter"));
    }

    /// The files under envoy/ (what `nhi-guard check` users start from) draw no warning.
    #[test]
    fn the_shipped_files_draw_no_warning() {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, out);
                } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "json")) {
                    out.push(path);
                }
            }
        }
        let mut files = Vec::new();
        walk(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../envoy"), &mut files);
        let mut bootstraps = 0;
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            let report = check_text(&file.display().to_string(), &text);
            assert!(report.warnings.is_empty(), "{}: {:#?}", file.display(), report.warnings);
            bootstraps += usize::from(text.contains("static_resources:"));
        }
        assert!(bootstraps >= 6, "the shipped Envoy bootstraps were not found: {files:?}");
    }

    #[test]
    fn a_credential_cluster_is_noted_and_an_inline_credential_refused() {
        let shipped = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../envoy/istio/kube-api-credential.yaml"),
        )
        .unwrap();
        let report = check_text("k.yaml", &shipped);
        assert!(report.passed(), "{report:?}");
        assert!(report
            .ok
            .iter()
            .any(|n| n.contains("cluster kube_api: Envoy attaches the gateway's credential")));
        let inline = shipped.replace(
            "filename: /var/run/secrets/kubernetes.io/serviceaccount/token",
            "inline_string: a-token",
        );
        // The ConfigMap's copy is not the patch: write the secret into the patch itself.
        let inline: String = inline
            .lines()
            .map(|line| match line.find("sds_config:") {
                Some(indent) => format!("{}inline_string: a-token\n{line}\n", " ".repeat(indent)),
                None => format!("{line}\n"),
            })
            .collect();
        let report = check_text("k.yaml", &inline);
        assert!(report.errors.iter().any(|e| e.contains("must read its credential from SDS")), "{report:?}");
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

        // The native shell as a dynamic module: the same configuration, checked alike.
        let native = |config: &Value| {
            format!(
                "apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: EnvoyExtensionPolicy\nmetadata: {{name: p}}\n\
                 spec:\n  dynamicModules:\n  - name: nhi-guard\n    filterName: nhi-guard\n    config: {config}\n"
            )
        };
        assert!(check_text("p.yaml", &native(&plugin())).passed());
        assert_eq!(
            errors("p.yaml", &native(&json!({"issuers": []}))),
            ["EnvoyExtensionPolicy p: spec.dynamicModules[0].config.issuers: must list at least one issuer"]
        );
        let neither =
            "apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: EnvoyExtensionPolicy\nmetadata: {name: p}\n\
                       spec:\n  dynamicModules:\n  - name: coraza\n";
        assert_eq!(
            errors("p.yaml", neither),
            ["EnvoyExtensionPolicy p: spec.wasm: lists no nhi-guard Wasm extension or dynamic module"]
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

    /// The shipped partner manifests, as `nhi-guard check` reads them.
    fn shipped(path: &str) -> String {
        std::fs::read_to_string(format!("{}/../envoy/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn shipped_partner_manifests_pass_and_keep_secrets_in_the_environment() {
        for file in ["envoy-partners.yaml", "istio/partners.yaml", "gateway/partners.yaml"] {
            let report = check_text(file, &shipped(file));
            assert!(report.passed(), "{file}: {report:?}");
            assert!(
                report.ok.iter().any(|l| l.contains("ok (issuers: none; partners: acme, globex)")),
                "{file}: {report:?}"
            );
        }
    }

    #[test]
    fn an_inline_secret_is_flagged_wherever_it_is_written() {
        // In the plugin configuration itself.
        let envoy = shipped("envoy-partners.yaml");
        let inline = envoy.replacen(
            r#""secret_env": "NHI_PARTNER_ACME_HMAC_2026_01" }"#,
            r#""secret": "9WrWLsKl5q1xBtsW8iDsWpUygOk1b/4Kv3yUs5JO0ow=" }"#,
            1,
        );
        assert_ne!(inline, envoy);
        let errs = errors("envoy.yaml", &inline);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("-> partners.clients[0].keys[0].secret: holds a secret: secrets are never in the plugin configuration"), "{errs:?}");
        // In Envoy's VM configuration (key_values is the value, written in the file).
        let key_values = envoy.replacen(
            "host_env_keys:\n                    - NHI_PARTNER_ACME_HMAC_2026_01\n",
            "key_values: { NHI_PARTNER_ACME_HMAC_2026_01: 9WrWLsKl5q1xBtsW8iDsWpUygOk1b/4Kv3yUs5JO0ow= }\n                    host_env_keys:\n",
            1,
        );
        assert_ne!(key_values, envoy);
        let errs = errors("envoy.yaml", &key_values);
        assert!(
            errs[0].contains("names NHI_PARTNER_ACME_HMAC_2026_01, whose value is written in"),
            "{errs:?}"
        );
        // In an Istio WasmPlugin (INLINE instead of HOST).
        let istio = shipped("istio/partners.yaml");
        let inline_istio = istio.replacen(
            "    - name: NHI_PARTNER_ACME_HMAC_2026_01\n      valueFrom: HOST",
            "    - name: NHI_PARTNER_ACME_HMAC_2026_01\n      value: c2VjcmV0",
            1,
        );
        assert_ne!(inline_istio, istio);
        let errs = errors("partners.yaml", &inline_istio);
        assert!(errs.iter().any(|e| e.contains("(an inline secret)")), "{errs:?}");
    }

    #[test]
    fn a_variable_the_vm_never_sees_and_bodies_a_host_cannot_hold_are_flagged() {
        let envoy = shipped("envoy-partners.yaml");
        let unlisted = envoy.replacen("                    - NHI_PARTNER_GLOBEX_API_KEY_SHA256\n", "", 1);
        assert_ne!(unlisted, envoy);
        let errs = errors("envoy.yaml", &unlisted);
        assert!(
            errs[0].contains("names NHI_PARTNER_GLOBEX_API_KEY_SHA256, which")
                && errs[0].contains("does not hand the VM"),
            "{errs:?}"
        );
        let no_pause = envoy.replacen(
            "allow_on_headers_stop_iteration: true",
            "allow_on_headers_stop_iteration: false",
            1,
        );
        assert!(errors("envoy.yaml", &no_pause)[0].contains("set allow_on_headers_stop_iteration: true"));
        let istio = shipped("istio/partners.yaml");
        let bodies =
            istio.replacen("signature: { max_body_bytes: 0 }", "signature: { max_body_bytes: 4096 }", 1);
        assert_ne!(bodies, istio);
        assert!(
            errors("partners.yaml", &bodies)[0].contains("this host cannot pause the headers for the body")
        );
    }
}
