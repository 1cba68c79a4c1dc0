//! The shipped files agree with each other: docker-compose runs the very
//! `envoy/envoy.yaml` the e2e suite runs, mounts files that exist, and names the
//! services and ports that file's clusters and listeners use; and Envoy itself
//! accepts the shipped config with the built filter (`--mode validate`). Every shipped
//! Envoy bootstrap keeps its admin interface on loopback and refuses header names with
//! underscores, and compose publishes no admin port.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_yaml::Value as Yaml;
use test_harness::envoy::{validate, wasm_path};
use test_harness::envoy_config::{repo_root, EnvoyConfig};

fn yaml(path: &Path) -> Yaml {
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn str_of(value: &Yaml) -> &str {
    value.as_str().unwrap_or_else(|| panic!("not a string: {value:?}"))
}

/// (address, port) of every cluster endpoint in envoy.yaml, by cluster name.
fn cluster_endpoints(envoy: &Yaml) -> Vec<(String, String, u64)> {
    let mut out = Vec::new();
    for cluster in envoy["static_resources"]["clusters"].as_sequence().unwrap() {
        let name = str_of(&cluster["name"]).to_owned();
        for group in cluster["load_assignment"]["endpoints"].as_sequence().unwrap() {
            for lb in group["lb_endpoints"].as_sequence().unwrap() {
                let socket = &lb["endpoint"]["address"]["socket_address"];
                out.push((
                    name.clone(),
                    str_of(&socket["address"]).to_owned(),
                    socket["port_value"].as_u64().unwrap(),
                ));
            }
        }
    }
    out
}

#[test]
fn docker_compose_matches_envoy_yaml() {
    let root = repo_root();
    let envoy_dir = root.join("envoy");
    let compose = yaml(&envoy_dir.join("docker-compose.yaml"));
    let envoy = yaml(&envoy_dir.join("envoy.yaml"));
    let services = compose["services"].as_mapping().unwrap();
    let service_names: BTreeSet<&str> = services.keys().map(str_of).collect();

    // Every cluster endpoint is a compose service listening on that port.
    for (cluster, address, port) in cluster_endpoints(&envoy) {
        assert!(
            service_names.contains(address.as_str()),
            "cluster {cluster} points at {address}, not a compose service"
        );
        let service = &compose["services"][address.as_str()];
        let serves_port = match &service["environment"]["HTTP_PORT"] {
            Yaml::String(p) => p == &port.to_string(),
            _ => service["command"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|arg| arg.as_str() == Some(&port.to_string())),
        };
        assert!(serves_port, "service {address} does not listen on {port} (cluster {cluster})");
    }

    // Envoy publishes its listener's port, and only that: the admin interface is bound
    // to the container's loopback, out of reach of a published port, and must stay so.
    let envoy_service = &compose["services"]["envoy"];
    let published: BTreeSet<String> =
        envoy_service["ports"].as_sequence().unwrap().iter().map(|p| str_of(p).to_owned()).collect();
    let listener_port = envoy["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
        .as_u64()
        .unwrap();
    assert_eq!(
        published,
        BTreeSet::from([format!("{listener_port}:{listener_port}")]),
        "compose must publish the listener's port only (never the admin's)"
    );

    // Every mounted file exists, and the wasm lands where envoy.yaml loads it from.
    let config = EnvoyConfig::shipped().unwrap();
    let wasm_in_container = {
        let text = config.to_yaml().unwrap();
        let line = text.lines().find(|l| l.contains("filename:")).unwrap().to_owned();
        line.split("filename:").nth(1).unwrap().trim().trim_matches(|c| c == '}' || c == ' ').to_owned()
    };
    let mut mounts_wasm = false;
    let mut mounts_config = false;
    for service in services.values() {
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let spec = str_of(volume);
            let mut parts = spec.split(':');
            let (host, container) = (parts.next().unwrap(), parts.next().unwrap());
            let host_path = envoy_dir.join(host);
            if host.ends_with("nhi_guard.wasm") {
                // Built by `make wasm`; the path must be where cargo puts it.
                let normalized: std::path::PathBuf =
                    host_path.components().fold(std::path::PathBuf::new(), |mut p, c| {
                        match c {
                            std::path::Component::ParentDir => {
                                p.pop();
                            }
                            other => p.push(other),
                        }
                        p
                    });
                assert_eq!(normalized, root.join("target/wasm32-wasip1/release/nhi_guard.wasm"));
                assert_eq!(container, wasm_in_container);
                mounts_wasm = true;
            } else {
                assert!(host_path.exists(), "{spec}: {} does not exist", host_path.display());
            }
            if container == "/etc/envoy/envoy.yaml" {
                assert_eq!(
                    host_path.canonicalize().unwrap(),
                    envoy_dir.join("envoy.yaml").canonicalize().unwrap()
                );
                mounts_config = true;
            }
        }
    }
    assert!(mounts_wasm && mounts_config, "compose must mount the wasm and envoy.yaml");
    let image = str_of(&envoy_service["image"]);
    assert!(image.ends_with(":v1.40.0"), "compose pins the Envoy the tests run: {image}");
}

#[test]
fn envoy_validates_the_shipped_config_with_the_built_filter() {
    let mut config = EnvoyConfig::shipped().unwrap();
    config.set_wasm_filename(&wasm_path().unwrap()).unwrap();
    if let Err(log) = validate(&config).unwrap() {
        panic!("envoy --mode validate failed:\n{log}");
    }
}

#[test]
fn envoy_refuses_an_invalid_plugin_configuration_and_says_why() {
    let mut config = EnvoyConfig::shipped().unwrap();
    config.set_wasm_filename(&wasm_path().unwrap()).unwrap();
    let mut plugin = config.plugin_configuration().unwrap();
    plugin["issuers"][0]["audiences"] = serde_json::json!([]);
    config.set_plugin_configuration(&plugin).unwrap();
    match validate(&config).unwrap() {
        Ok(log) => panic!("Envoy accepted an invalid plugin configuration:\n{log}"),
        Err(log) => assert!(
            log.contains("`issuers[0].audiences` must list at least one non-empty audience"),
            "the log must name the field and the reason:\n{log}"
        ),
    }
}

#[test]
fn envoy_validates_the_benchmark_configs() {
    use test_harness::bench::stacks::Stack as BenchStack;
    let keys = test_harness::keys::TestKeys::shared().unwrap();
    let jwks = keys.jwks();
    let wasm = wasm_path().unwrap();
    for stack in [
        BenchStack::Router,
        BenchStack::NativeJwt,
        BenchStack::NativeStack,
        BenchStack::NhiGuard,
        BenchStack::NhiGuardShipped,
        BenchStack::NhiGuardSmallCache,
    ] {
        let rendered = stack.render(&jwks, &wasm).unwrap();
        let config = EnvoyConfig::parse(&rendered).unwrap();
        if let Err(log) = validate(&config).unwrap() {
            panic!("envoy --mode validate refused the {stack} bench config:\n{log}");
        }
    }
}

/// Every YAML file under envoy/ that is an Envoy bootstrap (not a Kubernetes object),
/// relative to envoy/, with its document.
fn shipped_bootstraps() -> Vec<(String, Yaml)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                out.push(path);
            }
        }
    }
    let envoy_dir = repo_root().join("envoy");
    let mut files = Vec::new();
    walk(&envoy_dir, &mut files);
    files.sort();
    let mut bootstraps = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let doc = <Yaml as serde::Deserialize>::deserialize(doc).unwrap();
            if doc.get("static_resources").is_some() && doc.get("apiVersion").is_none() {
                let name = path.strip_prefix(&envoy_dir).unwrap().display().to_string();
                bootstraps.push((name, doc));
            }
        }
    }
    bootstraps
}

/// `(path, listener name, filter)` of every HTTP connection manager of `bootstrap`'s
/// static listeners, in filter chains and default filter chains alike.
fn connection_managers(bootstrap: &Yaml) -> Vec<(String, String, Yaml)> {
    const HCM: &str =
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
    let mut found = Vec::new();
    let listeners = bootstrap["static_resources"]["listeners"].as_sequence().unwrap();
    for (i, listener) in listeners.iter().enumerate() {
        let name = str_of(&listener["name"]).to_owned();
        let chains = listener["filter_chains"].as_sequence().into_iter().flatten().enumerate();
        let chains = chains
            .map(|(j, chain)| (format!("filter_chains[{j}]"), chain))
            .chain(listener.get("default_filter_chain").map(|c| ("default_filter_chain".to_owned(), c)));
        for (chain_path, chain) in chains {
            for (k, filter) in chain["filters"].as_sequence().into_iter().flatten().enumerate() {
                if filter["typed_config"]["@type"].as_str() == Some(HCM) {
                    let path = format!("static_resources.listeners[{i}].{chain_path}.filters[{k}]");
                    found.push((path, name.clone(), filter["typed_config"].clone()));
                }
            }
        }
    }
    found
}

/// The admin interface is for the host it runs on: anyone who reaches it can stop Envoy
/// (`/quitquitquit`), drain its listeners or raise the log level until tokens are
/// logged. And a header name with underscores (`x_nhi_identity`) is refused by Envoy
/// itself, as CGI/WSGI-style backends read it as the dashed name nhi-guard manages.
#[test]
fn every_shipped_bootstrap_keeps_admin_on_loopback_and_refuses_underscored_headers() {
    let bootstraps = shipped_bootstraps();
    let names: BTreeSet<&str> = bootstraps.iter().map(|(name, _)| name.as_str()).collect();
    for expected in [
        "envoy.yaml",
        "envoy-mtls.yaml",
        "envoy-global-ratelimit.yaml",
        "bench/router.yaml",
        "bench/native.yaml",
        "bench/nhi-guard.yaml",
        "bench/minimal.yaml",
    ] {
        assert!(names.contains(expected), "{expected} is not among the shipped bootstraps {names:?}");
    }
    for (name, bootstrap) in &bootstraps {
        let admin = &bootstrap["admin"]["address"];
        if admin.get("pipe").is_none() {
            let address = str_of(&admin["socket_address"]["address"]);
            let ip: IpAddr =
                address.parse().unwrap_or_else(|e| panic!("{name}: admin address {address:?}: {e}"));
            assert!(ip.is_loopback(), "{name}: admin is bound to {address}, not to loopback");
        }
        let managers = connection_managers(bootstrap);
        assert!(!managers.is_empty(), "{name} has no HTTP connection manager");
        for (path, listener, hcm) in managers {
            assert_eq!(
                hcm["common_http_protocol_options"]["headers_with_underscores_action"].as_str(),
                Some("REJECT_REQUEST"),
                "{name}: {path} (listener {listener}) must refuse header names with underscores"
            );
        }
    }
}

/// `make fuzz` runs every fuzz target the fuzz crate builds: a target added to
/// `test-harness/fuzz/Cargo.toml` but not to the Makefile's `FUZZ_TARGETS` would be
/// compiled by `make lint` and never run.
#[test]
fn make_fuzz_runs_every_fuzz_target() {
    let makefile = std::fs::read_to_string(repo_root().join("Makefile")).unwrap();
    let joined = makefile.replace("\\\n", " ");
    let listed: BTreeSet<String> = joined
        .lines()
        .find_map(|l| l.strip_prefix("FUZZ_TARGETS :="))
        .expect("FUZZ_TARGETS in the Makefile")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    // The `name` of each `[[bin]]` table (the manifest's only tables of that kind).
    let manifest = std::fs::read_to_string(repo_root().join("test-harness/fuzz/Cargo.toml")).unwrap();
    let mut built = BTreeSet::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if let (true, Some(value)) = (in_bin, line.strip_prefix("name = ")) {
            built.insert(value.trim_matches('"').to_owned());
        }
    }
    assert!(built.len() >= 9, "{built:?}");
    assert_eq!(listed, built, "FUZZ_TARGETS (left) and the fuzz crate's [[bin]] targets (right) differ");
}
