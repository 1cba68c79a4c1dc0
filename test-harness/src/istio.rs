//! What Istio makes of the shipped `envoy/istio/` files, for a local Envoy.
//!
//! istiod turns a `WasmPlugin` into an extension config it serves over ECDS
//! (`pilot/pkg/model/extensions.go`): filter name and plugin name `<namespace>.<name>`,
//! `root_id` the `pluginName`, **no `vm_id`**, `pluginConfig` serialised to JSON in a
//! `google.protobuf.StringValue`, `failStrategy` mapped to `failure_policy`, and the
//! module's `oci://` URL rewritten by istio-agent to a local file. The listener's HTTP
//! filter only names the extension config (`config_discovery`, type URLs Wasm and
//! RBAC — the RBAC one is Istio's deny-all stand-in while a module cannot load). A
//! `ServiceEntry` host and port become the cluster `outbound|PORT||HOST`.
//!
//! [`ecds_bootstrap`] builds the same shape from `envoy/envoy.yaml`, with the
//! extension config read from a file (`path_config_source`) instead of istiod.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use serde_yaml::Value as Yaml;

use crate::envoy_config::{repo_root, EnvoyConfig, PLUGIN_FILTER_NAME};

pub const WASM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
pub const RBAC_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const EXTENSION_CONFIG_TYPE_URL: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
const STRING_VALUE_TYPE_URL: &str = "type.googleapis.com/google.protobuf.StringValue";

/// `<root>/envoy/istio`.
pub fn istio_dir() -> PathBuf {
    repo_root().join("envoy").join("istio")
}

/// Every non-empty document of a YAML file, as JSON.
pub fn yaml_documents(path: &Path) -> Result<Vec<Value>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut docs = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let yaml = <Yaml as serde::Deserialize>::deserialize(document)
            .with_context(|| format!("parsing {}", path.display()))?;
        if !yaml.is_null() {
            docs.push(serde_json::to_value(yaml).context("YAML to JSON")?);
        }
    }
    Ok(docs)
}

/// The one document of `kind` in `path`.
pub fn the_document(path: &Path, kind: &str) -> Result<Value> {
    let mut docs: Vec<Value> = yaml_documents(path)?.into_iter().filter(|d| d["kind"] == kind).collect();
    match (docs.pop(), docs.is_empty()) {
        (Some(doc), true) => Ok(doc),
        _ => bail!("{} must hold exactly one {kind}", path.display()),
    }
}

/// The cluster Istio generates for `host:port` (subset-less).
pub fn outbound_cluster(host: &str, port: u64) -> String {
    format!("outbound|{port}||{host}")
}

/// `<namespace>.<name>` of a Kubernetes object: Istio's name for a WasmPlugin's filter.
pub fn resource_name(object: &Value) -> Result<String> {
    let name = object.pointer("/metadata/name").and_then(Value::as_str).context("metadata.name")?;
    let namespace = object.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default");
    Ok(format!("{namespace}.{name}"))
}

/// The ECDS extension config istiod serves for `wasm_plugin`, with the module already
/// where istio-agent would have put it (`wasm`).
pub fn extension_config(wasm_plugin: &Value, wasm: &Path) -> Result<Value> {
    let spec = wasm_plugin.get("spec").context("WasmPlugin without spec")?;
    let name = resource_name(wasm_plugin)?;
    let plugin_config = spec.get("pluginConfig").context("WasmPlugin without spec.pluginConfig")?;
    let failure_policy = match spec.get("failStrategy").and_then(Value::as_str) {
        None | Some("FAIL_CLOSE") => "FAIL_CLOSED",
        Some("FAIL_OPEN") => "FAIL_OPEN",
        Some("FAIL_RELOAD") => "FAIL_RELOAD",
        Some(other) => bail!("unknown failStrategy {other:?}"),
    };
    let config = json!({
        "name": name,
        "root_id": spec.get("pluginName").and_then(Value::as_str).unwrap_or_default(),
        "configuration": {
            "@type": STRING_VALUE_TYPE_URL,
            "value": serde_json::to_string(plugin_config).context("pluginConfig to JSON")?,
        },
        "vm_config": {
            "runtime": "envoy.wasm.runtime.v8",
            "code": { "local": { "filename": wasm.display().to_string() } },
            "environment_variables": {
                "key_values": { "ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION": "1" }
            },
        },
        "failure_policy": failure_policy,
    });
    Ok(json!({
        "@type": EXTENSION_CONFIG_TYPE_URL,
        "name": name,
        "typed_config": { "@type": WASM_TYPE_URL, "config": config },
    }))
}

/// A file `path_config_source` reads: a discovery response holding `resources`.
pub fn write_ecds_file(path: &Path, resources: &[Value]) -> Result<()> {
    let response = json!({ "version_info": "1", "resources": resources });
    let text = serde_yaml::to_string(&response).context("ECDS file to YAML")?;
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// `config` with its inline nhi-guard filter replaced by one named `filter_name`
/// that takes its configuration from the ECDS file `ecds_path`, as Istio's listener
/// names a WasmPlugin's filter.
pub fn ecds_bootstrap(config: &EnvoyConfig, filter_name: &str, ecds_path: &Path) -> Result<EnvoyConfig> {
    let mut doc = config.as_yaml().clone();
    let discovered: Yaml = serde_yaml::to_value(json!({
        "name": filter_name,
        "config_discovery": {
            "config_source": {
                "path_config_source": { "path": ecds_path.display().to_string() },
                "resource_api_version": "V3",
            },
            "type_urls": [WASM_TYPE_URL, RBAC_TYPE_URL],
        },
    }))
    .context("filter to YAML")?;
    let mut replaced = 0;
    let listeners = doc
        .get_mut("static_resources")
        .and_then(|r| r.get_mut("listeners"))
        .and_then(Yaml::as_sequence_mut)
        .context("no static listeners")?;
    for listener in listeners {
        for chain in listener.get_mut("filter_chains").and_then(Yaml::as_sequence_mut).into_iter().flatten() {
            for filter in chain.get_mut("filters").and_then(Yaml::as_sequence_mut).into_iter().flatten() {
                let http_filters = filter
                    .get_mut("typed_config")
                    .and_then(|c| c.get_mut("http_filters"))
                    .and_then(Yaml::as_sequence_mut);
                for http_filter in http_filters.into_iter().flatten() {
                    if http_filter.get("name").and_then(Yaml::as_str) == Some(PLUGIN_FILTER_NAME) {
                        *http_filter = discovered.clone();
                        replaced += 1;
                    }
                }
            }
        }
    }
    if replaced == 0 {
        bail!("the Envoy config has no http filter named {PLUGIN_FILTER_NAME:?} to replace");
    }
    // xDS subscriptions need a node identity; this one reads like an Istio gateway's.
    if let Yaml::Mapping(members) = &mut doc {
        if !members.contains_key("node") {
            let node = json!({
                "id": "router~127.0.0.1~istio-ingressgateway-0.istio-system~istio-system.svc.cluster.local",
                "cluster": "istio-ingressgateway.istio-system",
            });
            members.insert("node".into(), serde_yaml::to_value(node).context("node to YAML")?);
        }
    }
    EnvoyConfig::parse(&serde_yaml::to_string(&doc).context("Envoy config to YAML")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_wasm_plugin_converts_like_istiod_does() {
        let plugin = the_document(&istio_dir().join("wasmplugin.yaml"), "WasmPlugin").unwrap();
        let ext = extension_config(&plugin, Path::new("/x/plugin.wasm")).unwrap();
        assert_eq!(ext["name"], "istio-system.nhi-guard");
        let config = &ext["typed_config"]["config"];
        assert_eq!(config["root_id"], "nhi-guard");
        assert!(config["vm_config"].get("vm_id").is_none(), "Istio sets no vm_id");
        assert_eq!(config["failure_policy"], "FAIL_CLOSED");
        let json: Value = serde_json::from_str(config["configuration"]["value"].as_str().unwrap()).unwrap();
        assert_eq!(json, plugin["spec"]["pluginConfig"]);
    }

    #[test]
    fn the_inline_filter_is_replaced_by_a_discovered_one() {
        let shipped = EnvoyConfig::shipped().unwrap();
        let ecds = ecds_bootstrap(&shipped, "istio-system.nhi-guard", Path::new("/tmp/ecds.yaml")).unwrap();
        assert!(ecds.plugin_configuration().is_err(), "no inline nhi-guard filter is left");
        let text = ecds.to_yaml().unwrap();
        assert!(text.contains("path_config_source"), "{text}");
        assert_eq!(ecds.listener_names(), shipped.listener_names());
    }
}
