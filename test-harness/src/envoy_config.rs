//! Rendering the shipped `envoy/envoy.yaml` for a local run: the same file docker-compose
//! mounts, with only listen addresses, cluster endpoints, the wasm path and (optionally)
//! the plugin configuration rewritten. Anything the rewrite expects but cannot find is an
//! error, so a change to the shipped file cannot silently detach the tests from it.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

/// `name` of the nhi-guard entry in `http_filters`.
pub const PLUGIN_FILTER_NAME: &str = "nhi-guard";

/// The repository root (this crate lives in `<root>/test-harness`).
pub fn repo_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().map(Path::to_path_buf).unwrap_or_else(|| manifest_dir.to_path_buf())
}

/// `<root>/envoy/envoy.yaml`.
pub fn shipped_config_path() -> PathBuf {
    repo_root().join("envoy").join("envoy.yaml")
}

/// An Envoy bootstrap document being rewritten.
#[derive(Clone, Debug)]
pub struct EnvoyConfig {
    doc: Yaml,
}

impl EnvoyConfig {
    /// The shipped `envoy/envoy.yaml`.
    pub fn shipped() -> Result<Self> {
        Self::load(&shipped_config_path())
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading Envoy config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(yaml: &str) -> Result<Self> {
        let doc = serde_yaml::from_str(yaml).context("parsing Envoy YAML")?;
        Ok(Self { doc })
    }

    pub fn to_yaml(&self) -> Result<String> {
        serde_yaml::to_string(&self.doc).context("serialising Envoy YAML")
    }

    pub fn as_yaml(&self) -> &Yaml {
        &self.doc
    }

    /// The nhi-guard plugin configuration (the JSON inside `configuration.value`).
    pub fn plugin_configuration(&self) -> Result<Json> {
        self.filter_configuration(PLUGIN_FILTER_NAME)
    }

    /// The configuration JSON of the wasm http filter `filter`.
    pub fn filter_configuration(&self, filter: &str) -> Result<Json> {
        let mut doc = self.doc.clone();
        let text = plugin_json_mut(&mut doc, filter)?
            .as_str()
            .context("plugin `configuration.value` is not a string")?;
        serde_json::from_str(text).context("plugin `configuration.value` is not valid JSON")
    }

    /// Replaces the plugin configuration JSON string.
    pub fn set_plugin_configuration(&mut self, configuration: &Json) -> Result<()> {
        self.set_filter_configuration(PLUGIN_FILTER_NAME, configuration)
    }

    /// Replaces the configuration JSON string of the wasm http filter `filter` (the
    /// nhi-guard plugin, or another wasm filter such as the bench's minimal one).
    pub fn set_filter_configuration(&mut self, filter: &str, configuration: &Json) -> Result<()> {
        let text = serde_json::to_string_pretty(configuration).context("serialising plugin config")?;
        *plugin_json_mut(&mut self.doc, filter)? = Yaml::String(text);
        Ok(())
    }

    /// Points the plugin's `vm_config.code.local.filename` at `wasm`.
    pub fn set_wasm_filename(&mut self, wasm: &Path) -> Result<()> {
        self.set_filter_wasm_filename(PLUGIN_FILTER_NAME, wasm)
    }

    /// Points wasm http filter `filter`'s `vm_config.code.local.filename` at `wasm`.
    pub fn set_filter_wasm_filename(&mut self, filter: &str, wasm: &Path) -> Result<()> {
        let filename = child_mut(
            plugin_config_mut(&mut self.doc, filter)?,
            &["vm_config", "code", "local", "filename"],
        )?;
        *filename = Yaml::String(wasm.display().to_string());
        Ok(())
    }

    /// Points the native shell's `dynamic_module_config.module.local.filename` at
    /// `module` (envoy-native.yaml).
    pub fn set_native_module(&mut self, module: &Path) -> Result<()> {
        let typed_config =
            child_mut(plugin_filter_mut(&mut self.doc, PLUGIN_FILTER_NAME)?, &["typed_config"])?;
        let filename = child_mut(typed_config, &["dynamic_module_config", "module", "local", "filename"])?;
        *filename = Yaml::String(module.display().to_string());
        Ok(())
    }

    /// This configuration with the nhi-guard http filter as the native shell (the
    /// Envoy dynamic module at `module`) instead of the wasm: the same filter name and
    /// plugin JSON, so a wasm config and its native twin differ in that filter only.
    pub fn with_native_filter(&self, module: &Path) -> Result<EnvoyConfig> {
        let plugin = self.plugin_configuration()?;
        let mut native = self.clone();
        let typed_config: Yaml = serde_yaml::to_value(serde_json::json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": {
                "module": { "local": { "filename": module.display().to_string() } },
                "do_not_close": true
            },
            "filter_name": PLUGIN_FILTER_NAME,
            "filter_config": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": serde_json::to_string(&plugin)?,
            },
        }))
        .context("the native filter's typed_config")?;
        match plugin_filter_mut(&mut native.doc, PLUGIN_FILTER_NAME)? {
            Yaml::Mapping(members) => {
                members.insert("typed_config".into(), typed_config);
            }
            _ => bail!("the nhi-guard http filter is not a mapping"),
        }
        Ok(native)
    }

    /// Names of the static listeners, in order.
    pub fn listener_names(&self) -> Vec<String> {
        names(self.doc.get("static_resources").and_then(|r| r.get("listeners")))
    }

    /// Names of the static clusters, in order.
    pub fn cluster_names(&self) -> Vec<String> {
        names(self.doc.get("static_resources").and_then(|r| r.get("clusters")))
    }

    /// Sets the listen address of listener `name` (port 0: Envoy picks one).
    pub fn set_listener_address(&mut self, name: &str, addr: SocketAddr) -> Result<()> {
        let listener = named_mut(&mut self.doc, &["static_resources", "listeners"], name)?;
        set_socket_address(child_mut(listener, &["address", "socket_address"])?, addr);
        Ok(())
    }

    /// Sets the admin listen address (port 0: Envoy picks one).
    pub fn set_admin_address(&mut self, addr: SocketAddr) -> Result<()> {
        set_socket_address(child_mut(&mut self.doc, &["admin", "address", "socket_address"])?, addr);
        Ok(())
    }

    /// Adds a static cluster `name`, a copy of cluster `like` (its type, timeouts and
    /// endpoints; point them elsewhere with [`EnvoyConfig::set_cluster_endpoint`]), for
    /// tests that need more upstreams than the shipped file has (another issuer's key
    /// server, a discovery endpoint). An existing `name` is an error.
    pub fn add_cluster_like(&mut self, name: &str, like: &str) -> Result<()> {
        if self.cluster_names().iter().any(|n| n == name) {
            bail!("Envoy config already has a cluster named {name:?}");
        }
        let mut cluster = named_mut(&mut self.doc, &["static_resources", "clusters"], like)?.clone();
        if let Yaml::Mapping(members) = &mut cluster {
            members.insert("name".into(), Yaml::String(name.to_owned()));
        }
        if let Some(Yaml::Mapping(assignment)) = cluster.get_mut("load_assignment") {
            assignment.insert("cluster_name".into(), Yaml::String(name.to_owned()));
        }
        sequence_mut(child_mut(&mut self.doc, &["static_resources", "clusters"])?)?.push(cluster);
        Ok(())
    }

    /// Points every endpoint of cluster `name` at `addr`.
    pub fn set_cluster_endpoint(&mut self, name: &str, addr: SocketAddr) -> Result<()> {
        let cluster = named_mut(&mut self.doc, &["static_resources", "clusters"], name)?;
        let endpoints = sequence_mut(child_mut(cluster, &["load_assignment", "endpoints"])?)
            .with_context(|| format!("cluster {name:?}: load_assignment.endpoints"))?;
        let mut rewritten = 0;
        for locality in endpoints {
            let lb_endpoints = sequence_mut(child_mut(locality, &["lb_endpoints"])?)
                .with_context(|| format!("cluster {name:?}: lb_endpoints"))?;
            for lb_endpoint in lb_endpoints {
                set_socket_address(child_mut(lb_endpoint, &["endpoint", "address", "socket_address"])?, addr);
                rewritten += 1;
            }
        }
        if rewritten == 0 {
            bail!("cluster {name:?} has no endpoint to point at {addr}");
        }
        Ok(())
    }
}

fn set_socket_address(socket_address: &mut Yaml, addr: SocketAddr) {
    if let Yaml::Mapping(members) = socket_address {
        members.insert("address".into(), Yaml::String(addr.ip().to_string()));
        members.insert("port_value".into(), Yaml::Number(addr.port().into()));
    }
}

fn names(items: Option<&Yaml>) -> Vec<String> {
    items
        .and_then(Yaml::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|item| item.get("name").and_then(Yaml::as_str))
        .map(str::to_owned)
        .collect()
}

/// The value at `path` below `value`; every step must be a mapping key that exists.
fn child_mut<'a>(value: &'a mut Yaml, path: &[&str]) -> Result<&'a mut Yaml> {
    let mut current = value;
    for (depth, key) in path.iter().enumerate() {
        current = current.get_mut(*key).with_context(|| {
            format!("Envoy config has no `{}`", path.get(..=depth).unwrap_or(path).join("."))
        })?;
    }
    Ok(current)
}

fn sequence_mut(value: &mut Yaml) -> Result<&mut Vec<Yaml>> {
    value.as_sequence_mut().context("expected a YAML list")
}

/// The element of the list at `list_path` whose `name` is `name`.
fn named_mut<'a>(doc: &'a mut Yaml, list_path: &[&str], name: &str) -> Result<&'a mut Yaml> {
    let list = sequence_mut(child_mut(doc, list_path)?)
        .with_context(|| format!("`{}` is not a list", list_path.join(".")))?;
    let known = names(Some(&Yaml::Sequence(list.clone())));
    list.iter_mut().find(|item| item.get("name").and_then(Yaml::as_str) == Some(name)).with_context(|| {
        format!("Envoy config has no `{}` entry named {name:?} (it has {known:?})", list_path.join("."))
    })
}

/// The `typed_config.config` of the nhi-guard wasm filter, searched in every HTTP
/// connection manager of every static listener.
fn plugin_config_mut<'a>(doc: &'a mut Yaml, name: &str) -> Result<&'a mut Yaml> {
    child_mut(plugin_filter_mut(doc, name)?, &["typed_config", "config"])
}

/// The configuration JSON string of http filter `name`: the wasm's
/// `config.configuration.value`, or the native module's `filter_config.value`.
fn plugin_json_mut<'a>(doc: &'a mut Yaml, name: &str) -> Result<&'a mut Yaml> {
    let typed_config = child_mut(plugin_filter_mut(doc, name)?, &["typed_config"])?;
    if typed_config.get("filter_config").is_some() {
        return child_mut(typed_config, &["filter_config", "value"]);
    }
    child_mut(typed_config, &["config", "configuration", "value"])
}

/// The `http_filters` entry named `name`.
fn plugin_filter_mut<'a>(doc: &'a mut Yaml, name: &str) -> Result<&'a mut Yaml> {
    let listeners = sequence_mut(child_mut(doc, &["static_resources", "listeners"])?)?;
    for listener in listeners {
        let Some(chains) = listener.get_mut("filter_chains").and_then(Yaml::as_sequence_mut) else {
            continue;
        };
        for chain in chains {
            let Some(filters) = chain.get_mut("filters").and_then(Yaml::as_sequence_mut) else {
                continue;
            };
            for filter in filters {
                let Some(http_filters) = filter
                    .get_mut("typed_config")
                    .and_then(|config| config.get_mut("http_filters"))
                    .and_then(Yaml::as_sequence_mut)
                else {
                    continue;
                };
                if let Some(plugin) = http_filters
                    .iter_mut()
                    .find(|http_filter| http_filter.get("name").and_then(Yaml::as_str) == Some(name))
                {
                    return Ok(plugin);
                }
            }
        }
    }
    bail!("Envoy config has no http filter named {name:?}")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rendered() -> EnvoyConfig {
        let mut config = EnvoyConfig::shipped().unwrap();
        config.set_listener_address("ingress", "127.0.0.1:0".parse().unwrap()).unwrap();
        config.set_admin_address("127.0.0.1:0".parse().unwrap()).unwrap();
        config.set_cluster_endpoint("upstream", "127.0.0.1:4001".parse().unwrap()).unwrap();
        config.set_cluster_endpoint("web", "127.0.0.1:4003".parse().unwrap()).unwrap();
        config.set_cluster_endpoint("jwks_demo", "127.0.0.1:4002".parse().unwrap()).unwrap();
        config.set_wasm_filename(Path::new("/tmp/x/nhi_guard.wasm")).unwrap();
        config
    }

    #[test]
    fn shipped_plugin_configuration_is_readable() {
        let config = EnvoyConfig::shipped().unwrap();
        let plugin = config.plugin_configuration().unwrap();
        let issuer = &plugin["issuers"][0];
        assert_eq!(issuer["name"], "demo");
        assert_eq!(issuer["issuer"], crate::mint::DEFAULT_ISSUER);
        assert_eq!(issuer["audiences"][0], crate::mint::DEFAULT_AUDIENCE);
        assert_eq!(issuer["jwks"]["cluster"], "jwks_demo");
        assert_eq!(config.listener_names(), ["ingress"]);
        assert_eq!(config.cluster_names(), ["upstream", "web", "jwks_demo"]);
    }

    #[test]
    fn rendering_rewrites_only_addresses_wasm_and_plugin_config() {
        let mut config = rendered();
        let new_plugin = json!({"issuers": [], "marker": true});
        config.set_plugin_configuration(&new_plugin).unwrap();
        let text = config.to_yaml().unwrap();
        assert!(!text.contains("0.0.0.0"), "{text}");
        assert!(!text.contains("/etc/envoy"), "{text}");

        let reparsed = EnvoyConfig::parse(&text).unwrap();
        assert_eq!(reparsed.plugin_configuration().unwrap(), new_plugin);
        let doc = reparsed.as_yaml();
        let admin = &doc["admin"]["address"]["socket_address"];
        assert_eq!(admin["address"].as_str(), Some("127.0.0.1"));
        assert_eq!(admin["port_value"].as_u64(), Some(0));
        let clusters = doc["static_resources"]["clusters"].as_sequence().unwrap();
        let jwks_cluster = clusters.iter().find(|c| c["name"].as_str() == Some("jwks_demo")).unwrap();
        let jwks = &jwks_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"];
        assert_eq!(jwks["address"].as_str(), Some("127.0.0.1"));
        assert_eq!(jwks["port_value"].as_u64(), Some(4002));
        // Untouched parts survive the round trip.
        assert_eq!(doc["static_resources"]["clusters"][0]["type"].as_str(), Some("STRICT_DNS"));
    }

    #[test]
    fn added_clusters_are_copies_under_a_new_name() {
        let mut config = EnvoyConfig::shipped().unwrap();
        config.add_cluster_like("idp", "jwks_demo").unwrap();
        config.set_cluster_endpoint("idp", "127.0.0.1:4003".parse().unwrap()).unwrap();
        assert_eq!(config.cluster_names().last().map(String::as_str), Some("idp"));
        let reparsed = EnvoyConfig::parse(&config.to_yaml().unwrap()).unwrap();
        let clusters = reparsed.as_yaml()["static_resources"]["clusters"].as_sequence().unwrap();
        let idp = clusters.iter().find(|c| c["name"].as_str() == Some("idp")).unwrap();
        assert_eq!(idp["load_assignment"]["cluster_name"].as_str(), Some("idp"));
        let endpoint = &idp["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"];
        assert_eq!(endpoint["port_value"].as_u64(), Some(4003));
        // The template is untouched.
        let demo = clusters.iter().find(|c| c["name"].as_str() == Some("jwks_demo")).unwrap();
        assert_eq!(demo["load_assignment"]["cluster_name"].as_str(), Some("jwks_demo"));
        assert!(config.add_cluster_like("idp", "jwks_demo").is_err());
        assert!(config.add_cluster_like("other", "nope").is_err());
    }

    #[test]
    fn unknown_names_are_errors() {
        let mut config = EnvoyConfig::shipped().unwrap();
        let err = config.set_cluster_endpoint("nope", "127.0.0.1:1".parse().unwrap()).unwrap_err();
        assert!(format!("{err:#}").contains("\"nope\""), "{err:#}");
        assert!(config.set_listener_address("nope", "127.0.0.1:1".parse().unwrap()).is_err());
        let mut bare = EnvoyConfig::parse("static_resources: {listeners: []}").unwrap();
        assert!(bare.plugin_configuration().is_err());
        assert!(bare.set_wasm_filename(Path::new("/x")).is_err());
    }
}
