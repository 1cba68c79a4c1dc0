//! Every deployment path ships, and is checked here without a cluster or Docker:
//!
//! - every shipped plugin configuration passes `nhi-guard check` (the binary) and the
//!   shipped JSON Schema (ajv), and the schema is current;
//! - the Istio and Kubernetes manifests pass Istio's and Kubernetes' published schemas
//!   (`@kubernetes-models/istio`, `kubernetes-models`) with unknown keys refused;
//! - the configurations stay in step: Istio's, Envoy Gateway's and the EnvoyFilter's
//!   are one configuration (cluster names aside), APISIX's is envoy.yaml's with inline
//!   keys, and clusters, audiences and namespaces agree across files;
//! - Envoy (`--mode validate`, with the built wasm) accepts what Istio, the EnvoyFilter
//!   and Envoy Gateway would hand it;
//! - every gateway refuses header names with underscores as envoy.yaml does (Istio's
//!   EnvoyFilter merge, Envoy Gateway's ClientTrafficPolicy), and `nhi-guard check`
//!   warns about a bootstrap that does not, or whose admin interface is not on loopback;
//! - `make oci`'s image layout is reproducible and holds the built wasm.
//!
//! Needs the release wasm, Envoy, the `nhi-guard` binary (`cargo build -p nhi-guard
//! --features cli`) and the node packages (`make node-tools`); `make e2e` provides them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::BTreeSet;
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nhi_guard_cli::check::{self, Source};
use serde_json::{json, Value};
use test_harness::envoy::wasm_path;
use test_harness::envoy_config::{repo_root, EnvoyConfig, PLUGIN_FILTER_NAME};
use test_harness::istio::{self, the_document, yaml_documents};
use test_harness::oci;

/// The deployment directories under envoy/: every file in them is a manifest or a
/// configuration a host loads, and passes `nhi-guard check`.
const DEPLOY_DIRS: [&str; 4] = ["istio/", "gateway/", "apisix/", "k8s/"];
/// Files there that are neither (a CI workflow).
const NOT_CHECKED: [&str; 1] = ["k8s/github-actions-workflow.yaml"];

fn envoy_dir() -> PathBuf {
    repo_root().join("envoy")
}

/// Every shipped YAML/JSON file under envoy/ (demo keys excepted), relative to envoy/.
fn shipped_files() -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, base, out);
            } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")) {
                out.push(path.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut files = Vec::new();
    walk(&envoy_dir(), &envoy_dir(), &mut files);
    files.retain(|f| !f.starts_with("demo/"));
    files.sort();
    files
}

/// The Envoy configs at the top of envoy/ and every file of the deployment directories.
fn plugin_files() -> Vec<String> {
    shipped_files()
        .into_iter()
        .filter(|f| {
            let top_level_envoy = !f.contains('/') && f.ends_with(".yaml") && f != "docker-compose.yaml";
            top_level_envoy || DEPLOY_DIRS.iter().any(|d| f.starts_with(d))
        })
        .filter(|f| !NOT_CHECKED.contains(&f.as_str()))
        .collect()
}

fn nhi_guard_binary() -> PathBuf {
    let path = std::env::var_os("NHI_GUARD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/debug/nhi-guard"));
    assert!(
        path.is_file(),
        "no {}: build it with `cargo build -p nhi-guard --features cli` (make e2e does) or set NHI_GUARD_BIN",
        path.display()
    );
    path
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nhi-deploy-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// `node test-harness/node/validate.mjs ARGS...`: (success, one JSON value per line).
fn node_validate(args: &[&str]) -> (bool, Vec<Value>) {
    let modules = repo_root().join(".tools/node/node_modules");
    assert!(
        std::env::var_os("NHI_NODE_MODULES").is_some() || modules.is_dir(),
        "no {}: run `make node-tools` (or set NHI_NODE_MODULES)",
        modules.display()
    );
    let output = Command::new(std::env::var_os("NODE").unwrap_or_else(|| "node".into()))
        .arg(repo_root().join("test-harness/node/validate.mjs"))
        .args(args)
        .current_dir(envoy_dir())
        .output()
        .expect("running node (install Node.js 20+)");
    assert!(output.status.code().is_some_and(|c| c <= 1), "validate.mjs failed to run:\n{}", text(&output));
    let lines = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (output.status.success(), lines)
}

fn envoy_validate(config: &EnvoyConfig, name: &str) {
    if let Err(log) = test_harness::envoy::validate(config).unwrap() {
        panic!("envoy --mode validate refused {name}:\n{log}");
    }
}

// ---------------------------------------------------------------------------------
// nhi-guard check and the JSON Schema

#[test]
fn every_shipped_file_passes_nhi_guard_check() {
    let files = plugin_files();
    for expected in ["envoy.yaml", "istio/wasmplugin.yaml", "istio/envoyfilter.yaml", "apisix/apisix.yaml"] {
        assert!(files.iter().any(|f| f == expected), "{expected} is not among {files:?}");
    }
    let output =
        Command::new(nhi_guard_binary()).arg("check").args(&files).current_dir(envoy_dir()).output().unwrap();
    let out = text(&output);
    assert!(output.status.success(), "nhi-guard check failed:\n{out}");
    for file in
        ["envoy.yaml", "istio/wasmplugin.yaml", "istio/envoyfilter.yaml", "gateway/extension-policy.yaml"]
    {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("{file}: ")) && l.contains(": ok (")),
            "{file}:\n{out}"
        );
    }
    assert!(!out.contains(": warning: "), "a shipped file draws a warning:\n{out}");
    for file in ["istio/reject-underscore-headers.yaml", "istio/envoyfilter.yaml"] {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("{file}: "))
                && l.ends_with(
                    ": sets headers_with_underscores_action REJECT_REQUEST on HTTP connection managers"
                )),
            "{file}:\n{out}"
        );
    }
}

#[test]
fn nhi_guard_check_warns_about_an_exposed_admin_and_underscored_headers() {
    let dir = temp_dir("check-warnings");
    let shipped = fs::read_to_string(envoy_dir().join("envoy.yaml")).unwrap();
    let exposed = shipped
        .replacen("address: 127.0.0.1, port_value: 9901", "address: 0.0.0.0, port_value: 9901", 1)
        .replacen(
            "headers_with_underscores_action: REJECT_REQUEST",
            "headers_with_underscores_action: ALLOW",
            1,
        );
    assert_eq!(exposed.matches("0.0.0.0, port_value: 9901").count(), 1, "admin rewritten");
    assert!(exposed.contains("headers_with_underscores_action: ALLOW"));
    fs::write(dir.join("envoy.yaml"), exposed).unwrap();

    let output =
        Command::new(nhi_guard_binary()).args(["check", "envoy.yaml"]).current_dir(&dir).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "warnings do not fail the check:\n{}", text(&output));
    let warnings: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        warnings,
        [
            "envoy.yaml: warning: Envoy bootstrap: admin.address.socket_address.address: 0.0.0.0 is not a \
             loopback address: whoever reaches the admin interface can stop Envoy (/quitquitquit), drain its \
             listeners or raise the log level; bind it to 127.0.0.1 or ::1 (or a pipe)",
            "envoy.yaml: warning: Envoy bootstrap: static_resources.listeners[0].filter_chains[0].filters[0]\
             .typed_config.common_http_protocol_options.headers_with_underscores_action: listener \"ingress\", \
             filter \"envoy.filters.network.http_connection_manager\": ALLOW forwards header names with \
             underscores such as x_nhi_identity, which CGI/WSGI-style backends read as x-nhi-identity; set \
             REJECT_REQUEST",
        ]
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn nhi_guard_check_names_the_field_and_fails() {
    let dir = temp_dir("check-invalid");
    let wasm_plugin = fs::read_to_string(envoy_dir().join("istio/wasmplugin.yaml")).unwrap();
    let broken = wasm_plugin.replacen("audiences: [nhi-gateway]", "audiences: []", 1);
    assert_ne!(broken, wasm_plugin);
    fs::write(dir.join("wasmplugin.yaml"), broken).unwrap();
    let envoy = fs::read_to_string(envoy_dir().join("envoy.yaml")).unwrap();
    fs::write(dir.join("envoy.yaml"), envoy.replacen("\"refresh_seconds\": 300", "\"refresh_secs\": 300", 1))
        .unwrap();

    let output = Command::new(nhi_guard_binary())
        .args(["check", "wasmplugin.yaml", "envoy.yaml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(
        out.contains(
            "wasmplugin.yaml: WasmPlugin istio-system/nhi-guard: spec.pluginConfig.issuers[0].audiences: \
             must list at least one non-empty audience"
        ),
        "{out}"
    );
    assert!(out.contains("-> issuers[0].jwks.refresh_secs: is not a known field (known: cluster,"), "{out}");

    let missing =
        Command::new(nhi_guard_binary()).args(["check", "nope.yaml"]).current_dir(&dir).output().unwrap();
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn the_shipped_schema_is_current_and_every_shipped_configuration_matches_it() {
    let schema_path = envoy_dir().join("schema/nhi-guard.schema.json");
    assert_eq!(
        fs::read_to_string(&schema_path).unwrap(),
        nhi_guard_cli::schema::plugin_config_schema_text(),
        "envoy/schema/nhi-guard.schema.json is stale: run `make schema`"
    );

    let dir = temp_dir("schema");
    let mut files = Vec::new();
    for file in plugin_files() {
        let extracted = check::extract(&file, &fs::read_to_string(envoy_dir().join(&file)).unwrap());
        for (i, found) in extracted.configs.iter().enumerate() {
            let value = match &found.source {
                Source::Text(text) => serde_json::from_str::<Value>(text).unwrap(),
                Source::Structured(value) => value.clone(),
            };
            let path = dir.join(format!("{}-{i}.json", file.replace('/', "_")));
            fs::write(&path, value.to_string()).unwrap();
            files.push(path.display().to_string());
        }
    }
    assert!(files.len() >= 6, "configurations found: {files:?}");
    // A configuration the schema must refuse: an unknown member.
    let mut typo: Value = serde_json::from_str(&fs::read_to_string(&files[0]).unwrap()).unwrap();
    typo["issuers"][0]["audience"] = json!("nhi-gateway");
    let typo_path = dir.join("typo.json");
    fs::write(&typo_path, typo.to_string()).unwrap();

    let schema = schema_path.display().to_string();
    let mut args = vec!["schema", schema.as_str()];
    args.extend(files.iter().map(String::as_str));
    let (ok, lines) = node_validate(&args);
    assert!(ok, "{lines:#?}");
    assert_eq!(lines.len(), files.len());

    let typo = typo_path.display().to_string();
    let (ok, lines) = node_validate(&["schema", &schema, &typo]);
    assert!(!ok && lines[0]["errors"].to_string().contains("audience"), "{lines:#?}");
    let _ = fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------
// Published Kubernetes schemas

#[test]
fn kubernetes_manifests_match_the_published_schemas_without_unknown_keys() {
    let manifests: Vec<String> = shipped_files()
        .into_iter()
        .filter(|f| ["istio/", "gateway/", "k8s/"].iter().any(|d| f.starts_with(d)))
        .filter(|f| !NOT_CHECKED.contains(&f.as_str()))
        .collect();
    let mut args = vec!["k8s"];
    args.extend(manifests.iter().map(String::as_str));
    let (ok, lines) = node_validate(&args);
    assert!(ok, "{lines:#?}");
    let validated: BTreeSet<String> = lines
        .iter()
        .filter(|l| l["status"] == "ok")
        .map(|l| l["kind"].as_str().unwrap().to_owned())
        .collect();
    for kind in [
        "WasmPlugin",
        "EnvoyFilter",
        "ServiceEntry",
        "DestinationRule",
        "Namespace",
        "ServiceAccount",
        "Deployment",
        "ClusterRoleBinding",
        "ClusterRole",
        "NetworkPolicy",
        "AuthorizationPolicy",
        "PeerAuthentication",
    ] {
        assert!(validated.contains(kind), "{kind} was not validated against a published schema: {lines:#?}");
    }
    // Envoy Gateway publishes no npm models: its kinds are checked by nhi-guard check
    // and, assembled, by Envoy (below).
    for line in lines.iter().filter(|l| l["status"] == "no-schema") {
        assert!(line["apiVersion"].as_str().unwrap().starts_with("gateway.envoyproxy.io/"), "{line}");
    }

    // The unknown-key check bites: a typo'd member and a wrong enum value.
    let dir = temp_dir("k8s-typo");
    let wasm_plugin = fs::read_to_string(envoy_dir().join("istio/wasmplugin.yaml")).unwrap();
    fs::write(dir.join("typo.yaml"), wasm_plugin.replace("  phase: AUTHN", "  phaze: AUTHN")).unwrap();
    let typo = dir.join("typo.yaml").display().to_string();
    let (ok, lines) = node_validate(&["k8s", &typo]);
    assert!(!ok && lines[0]["errors"].to_string().contains("/spec/phaze"), "{lines:#?}");
    let _ = fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------
// One configuration everywhere

fn wasm_plugin() -> Value {
    the_document(&envoy_dir().join("istio/wasmplugin.yaml"), "WasmPlugin").unwrap()
}

fn envoy_filter() -> Value {
    the_document(&envoy_dir().join("istio/envoyfilter.yaml"), "EnvoyFilter").unwrap()
}

fn patches(filter: &Value, apply_to: &str) -> Vec<Value> {
    filter["spec"]["configPatches"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["applyTo"] == apply_to)
        .map(|p| p["patch"]["value"].clone())
        .collect()
}

/// The plugin configuration JSON of an Envoy Wasm filter config (`config`).
fn string_value_config(wasm_filter: &Value) -> Value {
    serde_json::from_str(wasm_filter["config"]["configuration"]["value"].as_str().unwrap()).unwrap()
}

/// The configuration with every `jwks.cluster` blanked, and the cluster names.
fn without_clusters(config: &Value) -> (Value, Vec<String>) {
    let mut config = config.clone();
    let mut clusters = Vec::new();
    for issuer in config["issuers"].as_array_mut().unwrap() {
        if let Some(cluster) = issuer["jwks"].get_mut("cluster") {
            clusters.push(cluster.as_str().unwrap().to_owned());
            *cluster = json!("<cluster>");
        }
    }
    (config, clusters)
}

#[test]
fn istio_envoy_gateway_and_envoyfilter_run_one_configuration() {
    let istio_config = wasm_plugin()["spec"]["pluginConfig"].clone();
    let (istio_shape, istio_clusters) = without_clusters(&istio_config);
    let issuers = istio_config["issuers"].as_array().unwrap();

    // Istio: `outbound|443||<authority>`, each made by the ServiceEntry/DestinationRule file.
    let egress = yaml_documents(&envoy_dir().join("istio/jwks-egress.yaml")).unwrap();
    for (issuer, cluster) in issuers.iter().zip(&istio_clusters) {
        let host = issuer["jwks"]["authority"].as_str().unwrap();
        assert_eq!(cluster, &istio::outbound_cluster(host, 443));
        let tls = egress.iter().find(|d| d["kind"] == "DestinationRule" && d["spec"]["host"] == host);
        let tls = tls.unwrap_or_else(|| panic!("no DestinationRule originates TLS to {host}"));
        let port = &tls["spec"]["trafficPolicy"]["portLevelSettings"][0];
        assert_eq!(
            (port["port"]["number"].as_u64(), port["tls"]["mode"].as_str()),
            (Some(443), Some("SIMPLE"))
        );
        let in_cluster = host.ends_with(".svc.cluster.local");
        let entry = egress.iter().find(|d| {
            d["kind"] == "ServiceEntry" && d["spec"]["hosts"].as_array().unwrap().iter().any(|h| h == host)
        });
        match entry {
            Some(entry) => {
                let port = &entry["spec"]["ports"][0];
                assert_eq!((port["number"].as_u64(), port["protocol"].as_str()), (Some(443), Some("HTTP")));
            }
            None => assert!(in_cluster, "{host} is neither a ServiceEntry host nor a cluster Service"),
        }
    }

    // EnvoyFilter and Envoy Gateway: `nhi-guard-jwks-<issuer name>`, added as clusters.
    let filter = envoy_filter();
    let extension = patches(&filter, "EXTENSION_CONFIG");
    assert_eq!(extension.len(), 1);
    let filter_config = string_value_config(&extension[0]["typed_config"]);
    let policy_path = envoy_dir().join("gateway/extension-policy.yaml");
    let policy = the_document(&policy_path, "EnvoyExtensionPolicy").unwrap();
    let http_policy =
        the_document(&envoy_dir().join("gateway/extension-policy-http.yaml"), "EnvoyExtensionPolicy")
            .unwrap();
    let gateway_config = policy["spec"]["wasm"][0]["config"].clone();
    assert_eq!(http_policy["spec"]["wasm"][0]["config"], gateway_config, "both Envoy Gateway policies");
    assert_eq!(filter_config, gateway_config, "the EnvoyFilter's and Envoy Gateway's configurations");
    let (filter_shape, filter_clusters) = without_clusters(&filter_config);
    assert_eq!(
        filter_shape, istio_shape,
        "the EnvoyFilter's configuration is the WasmPlugin's, clusters aside"
    );

    let patch_policy =
        the_document(&envoy_dir().join("gateway/jwks-clusters.yaml"), "EnvoyPatchPolicy").unwrap();
    let eg_clusters: Vec<Value> = patch_policy["spec"]["jsonPatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["operation"]["value"].clone())
        .collect();
    for (clusters, source) in
        [(patches(&filter, "CLUSTER"), "EnvoyFilter"), (eg_clusters, "EnvoyPatchPolicy")]
    {
        assert_eq!(clusters.len(), issuers.len(), "{source}");
        for ((issuer, name), cluster) in issuers.iter().zip(&filter_clusters).zip(&clusters) {
            assert_eq!(name, &format!("nhi-guard-jwks-{}", issuer["name"].as_str().unwrap()), "{source}");
            assert_eq!(&cluster["name"], name, "{source}");
            let host = &issuer["jwks"]["authority"];
            let socket = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
                ["address"]["socket_address"];
            assert_eq!((&socket["address"], socket["port_value"].as_u64()), (host, Some(443)), "{source}");
            assert_eq!(&cluster["transport_socket"]["typed_config"]["sni"], host, "{source}");
        }
    }
    let patch_names: Vec<&str> = patch_policy["spec"]["jsonPatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(patch_names, filter_clusters.iter().map(String::as_str).collect::<Vec<_>>());
}

#[test]
fn apisix_runs_envoy_yaml_configuration_with_inline_keys() {
    let mut expected = EnvoyConfig::shipped().unwrap().plugin_configuration().unwrap();
    let demo_jwks: Value =
        serde_json::from_str(&fs::read_to_string(envoy_dir().join("demo/jwks.json")).unwrap()).unwrap();
    for issuer in expected["issuers"].as_array_mut().unwrap() {
        issuer["jwks"] = json!({ "inline": demo_jwks });
    }
    expected["host"] = json!("apisix");
    // Envoy filter state for the access log: APISIX has none.
    expected.as_object_mut().unwrap().remove("filter_state");
    let routes = yaml_documents(&envoy_dir().join("apisix/apisix.yaml")).unwrap();
    let plugin_configs = routes[0]["plugin_configs"].as_array().unwrap();
    let conf: Value =
        serde_json::from_str(plugin_configs[0]["plugins"]["nhi-guard"]["conf"].as_str().unwrap()).unwrap();
    assert_eq!(
        conf, expected,
        "apisix.yaml's conf is envoy.yaml's configuration with host apisix and the demo keys inline"
    );
    for route in routes[0]["routes"].as_array().unwrap() {
        assert_eq!(route["plugin_config_id"], plugin_configs[0]["id"]);
    }
    let declared = yaml_documents(&envoy_dir().join("apisix/config.yaml")).unwrap();
    let plugin = &declared[0]["wasm"]["plugins"][0];
    assert_eq!(plugin["name"], "nhi-guard");
    assert!(plugin["file"].as_str().unwrap().ends_with("/nhi_guard.wasm"));
}

#[test]
fn kubernetes_clients_ask_for_what_the_gateway_accepts() {
    let config = wasm_plugin()["spec"]["pluginConfig"].clone();
    let issuer = |name: &str| {
        config["issuers"].as_array().unwrap().iter().find(|i| i["name"] == name).unwrap().clone()
    };
    let kubernetes = issuer("kubernetes");
    let workload = yaml_documents(&envoy_dir().join("k8s/workload.yaml")).unwrap();
    let deployment = workload.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let namespace = deployment["metadata"]["namespace"].as_str().unwrap();
    let projection = &deployment["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"][0]
        ["serviceAccountToken"];
    assert_eq!(projection["audience"], kubernetes["audiences"][0]);
    assert!(
        projection["expirationSeconds"].as_u64().unwrap()
            <= kubernetes["profile"]["max_token_lifetime_seconds"].as_u64().unwrap()
    );
    assert!(kubernetes["profile"]["namespaces"].as_array().unwrap().iter().any(|n| n == namespace));
    let sa = workload.iter().find(|d| d["kind"] == "ServiceAccount").unwrap();
    assert_eq!(sa["metadata"]["name"], deployment["spec"]["template"]["spec"]["serviceAccountName"]);

    let rbac = the_document(&envoy_dir().join("k8s/oidc-discovery-rbac.yaml"), "ClusterRoleBinding").unwrap();
    assert_eq!(rbac["roleRef"]["name"], "system:service-account-issuer-discovery");
    assert_eq!(kubernetes["jwks"]["path"], "/openid/v1/jwks");

    let github = issuer("github-actions");
    let workflow = fs::read_to_string(envoy_dir().join("k8s/github-actions-workflow.yaml")).unwrap();
    let audience = github["audiences"][0].as_str().unwrap();
    assert!(workflow.contains(&format!("&audience={audience}")), "the workflow asks for {audience}");
    let parsed = yaml_documents(&envoy_dir().join("k8s/github-actions-workflow.yaml")).unwrap();
    assert_eq!(parsed[0]["permissions"]["id-token"], "write");
}

/// Every gateway nhi-guard is deployed on refuses header names with underscores, as
/// envoy.yaml's listener does: Istio's through an EnvoyFilter merge into the gateway's
/// HTTP connection managers (in envoyfilter.yaml, and alone for the WasmPlugin path),
/// Envoy Gateway's through a ClientTrafficPolicy on the Gateway the extension targets.
#[test]
fn every_gateway_refuses_header_names_with_underscores() {
    let envoy: Value = serde_json::to_value(EnvoyConfig::shipped().unwrap().as_yaml()).unwrap();
    let hcm = &envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0];
    let envoy_options = hcm["typed_config"]["common_http_protocol_options"].clone();
    assert_eq!(envoy_options, json!({ "headers_with_underscores_action": "REJECT_REQUEST" }));

    let selector = wasm_plugin()["spec"]["selector"]["matchLabels"].clone();
    let standalone =
        the_document(&envoy_dir().join("istio/reject-underscore-headers.yaml"), "EnvoyFilter").unwrap();
    for (filter, source) in
        [(standalone, "reject-underscore-headers.yaml"), (envoy_filter(), "envoyfilter.yaml")]
    {
        assert_eq!(filter["metadata"]["namespace"], wasm_plugin()["metadata"]["namespace"], "{source}");
        assert_eq!(
            filter["spec"]["workloadSelector"]["labels"], selector,
            "{source}: the WasmPlugin's gateway"
        );
        let merges: Vec<&Value> = filter["spec"]["configPatches"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["applyTo"] == "NETWORK_FILTER")
            .collect();
        assert_eq!(merges.len(), 1, "{source}");
        let patch = merges[0];
        assert_eq!(patch["match"]["context"], "GATEWAY", "{source}");
        assert_eq!(
            patch["match"]["listener"]["filterChain"]["filter"]["name"], hcm["name"],
            "{source}: every HTTP connection manager of the gateway"
        );
        assert_eq!(patch["patch"]["operation"], "MERGE", "{source}");
        let typed = &patch["patch"]["value"]["typed_config"];
        assert_eq!(typed["@type"], check::HCM_TYPE, "{source}");
        assert_eq!(typed["common_http_protocol_options"], envoy_options, "{source}: envoy.yaml's setting");
    }

    let extension =
        the_document(&envoy_dir().join("gateway/extension-policy.yaml"), "EnvoyExtensionPolicy").unwrap();
    let traffic =
        the_document(&envoy_dir().join("gateway/client-traffic-policy.yaml"), "ClientTrafficPolicy").unwrap();
    assert_eq!(traffic["apiVersion"], "gateway.envoyproxy.io/v1alpha1");
    assert_eq!(traffic["metadata"]["namespace"], extension["metadata"]["namespace"]);
    assert_eq!(
        traffic["spec"]["targetRefs"], extension["spec"]["targetRefs"],
        "the Gateway nhi-guard guards"
    );
    // Envoy Gateway's API (api/v1alpha1/clienttrafficpolicy_types.go): HeaderSettings.
    // WithUnderscoresAction, enum Allow | RejectRequest | DropHeader.
    assert_eq!(traffic["spec"]["headers"], json!({ "withUnderscoresAction": "RejectRequest" }));
}

/// The alignment manifests name the gateway the WasmPlugin runs in: the
/// NetworkPolicy admits its namespace and pod labels, the AuthorizationPolicy its
/// service account's principal, which is also the subject of the gateway's RBAC; and
/// the Istio policies protect the namespace the NetworkPolicy protects.
/// (`nhi-guard check --cluster` over them is clean: cli/tests/cluster.rs.)
#[test]
fn the_alignment_manifests_name_the_gateway_the_wasmplugin_selects() {
    let plugin = wasm_plugin();
    let gateway_ns = plugin["metadata"]["namespace"].as_str().unwrap();
    let gateway_labels = &plugin["spec"]["selector"]["matchLabels"];
    let policy = the_document(&envoy_dir().join("k8s/backend-networkpolicy.yaml"), "NetworkPolicy").unwrap();
    let peer = &policy["spec"]["ingress"][0]["from"][0];
    assert_eq!(peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], gateway_ns);
    assert_eq!(&peer["podSelector"]["matchLabels"], gateway_labels);
    let namespace = the_document(&envoy_dir().join("k8s/backend-networkpolicy.yaml"), "Namespace").unwrap();
    assert_eq!(namespace["metadata"]["labels"]["nhi-guard.io/protected"], "true");
    assert_eq!(namespace["metadata"]["name"], policy["metadata"]["namespace"]);

    let rbac = the_document(&envoy_dir().join("k8s/gateway-rbac.yaml"), "ClusterRoleBinding").unwrap();
    let subject = &rbac["subjects"][0];
    assert_eq!(subject["namespace"], gateway_ns);
    let role = the_document(&envoy_dir().join("k8s/gateway-rbac.yaml"), "ClusterRole").unwrap();
    assert_eq!(role["rules"][0]["resources"][0], "tokenreviews");
    assert_eq!(role["rules"][0]["verbs"], json!(["create"]));
    let principal = format!("cluster.local/ns/{gateway_ns}/sa/{}", subject["name"].as_str().unwrap());
    let istio = yaml_documents(&envoy_dir().join("istio/backend-authorization.yaml")).unwrap();
    let authz = istio.iter().find(|d| d["kind"] == "AuthorizationPolicy").unwrap();
    assert_eq!(authz["spec"]["rules"][0]["from"][0]["source"]["principals"], json!([principal]));
    let peer_auth = istio.iter().find(|d| d["kind"] == "PeerAuthentication").unwrap();
    assert_eq!(peer_auth["spec"]["mtls"]["mode"], "STRICT");
    for doc in [authz, peer_auth] {
        assert_eq!(doc["metadata"]["namespace"], policy["metadata"]["namespace"]);
    }
}

// ---------------------------------------------------------------------------------
// Envoy accepts what each control plane hands it

/// The shipped envoy.yaml with its nhi-guard filter replaced by `filter` (an Envoy Wasm
/// filter `typed_config`) and `clusters` added.
fn bootstrap_with(filter: &Value, clusters: &[Value]) -> EnvoyConfig {
    let mut doc: Value = serde_json::to_value(EnvoyConfig::shipped().unwrap().as_yaml()).unwrap();
    let http_filters = doc
        .pointer_mut("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/http_filters")
        .unwrap()
        .as_array_mut()
        .unwrap();
    let ours = http_filters.iter_mut().find(|f| f["name"] == PLUGIN_FILTER_NAME).unwrap();
    ours["typed_config"] = filter.clone();
    for cluster in clusters {
        let mut cluster = cluster.clone();
        // The in-cluster CA exists only in a pod; validate with the system's.
        let ca = cluster
            .pointer_mut("/transport_socket/typed_config/common_tls_context/validation_context/trusted_ca");
        if let Some(ca) = ca {
            *ca = json!({ "filename": "/etc/ssl/certs/ca-certificates.crt" });
        }
        doc["static_resources"]["clusters"].as_array_mut().unwrap().push(cluster);
    }
    EnvoyConfig::parse(&serde_yaml::to_string(&doc).unwrap()).unwrap()
}

fn local_code(filter: &mut Value) {
    let wasm = wasm_path().unwrap().display().to_string();
    filter["config"]["vm_config"]["code"] = json!({ "local": { "filename": wasm } });
}

#[test]
fn envoy_accepts_what_istio_the_envoyfilter_and_envoy_gateway_configure() {
    // Istio: the WasmPlugin as istiod and istio-agent turn it into a filter config.
    let ext = istio::extension_config(&wasm_plugin(), &wasm_path().unwrap()).unwrap();
    let mut istio_filter = ext["typed_config"].clone();
    let mut clusters = Vec::new();
    for issuer in wasm_plugin()["spec"]["pluginConfig"]["issuers"].as_array().unwrap() {
        let name = issuer["jwks"]["cluster"].as_str().unwrap();
        clusters.push(json!({
            "name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": [{ "endpoint": {
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": 443 } } } }] }] },
        }));
    }
    local_code(&mut istio_filter);
    envoy_validate(&bootstrap_with(&istio_filter, &clusters), "istio-wasmplugin");

    // The EnvoyFilter: its EXTENSION_CONFIG (module fetched: local) and its clusters.
    let filter = envoy_filter();
    let mut typed = patches(&filter, "EXTENSION_CONFIG")[0]["typed_config"].clone();
    assert!(typed["config"]["vm_config"]["code"]["remote"]["http_uri"]["uri"]
        .as_str()
        .unwrap()
        .starts_with("oci://"));
    local_code(&mut typed);
    envoy_validate(&bootstrap_with(&typed, &patches(&filter, "CLUSTER")), "istio-envoyfilter");
    // Its HTTP_FILTER patch, as the gateway's listener gets it: the filter names the
    // extension config, which comes over ADS (an xDS server at istiod's port).
    let http_filter = &patches(&filter, "HTTP_FILTER")[0];
    assert_eq!(http_filter["name"], patches(&filter, "EXTENSION_CONFIG")[0]["name"]);
    assert_eq!(http_filter["config_discovery"]["type_urls"][0], istio::WASM_TYPE_URL);
    let mut doc: Value = serde_json::to_value(EnvoyConfig::shipped().unwrap().as_yaml()).unwrap();
    let http_filters = doc
        .pointer_mut("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/http_filters")
        .unwrap()
        .as_array_mut()
        .unwrap();
    http_filters.retain(|f| f["name"] != PLUGIN_FILTER_NAME);
    let router = http_filters.iter().position(|f| f["name"] == "envoy.filters.http.router").unwrap();
    http_filters.insert(router, http_filter.clone());
    doc["node"] = json!({ "id": "router~127.0.0.1~gateway.istio-system~istio-system.svc.cluster.local", "cluster": "gw" });
    doc["dynamic_resources"] = json!({ "ads_config": {
        "api_type": "GRPC", "transport_api_version": "V3",
        "grpc_services": [{ "envoy_grpc": { "cluster_name": "xds-grpc" } }],
    } });
    doc["static_resources"]["clusters"].as_array_mut().unwrap().push(json!({
        "name": "xds-grpc", "type": "STATIC", "connect_timeout": "1s",
        "typed_extension_protocol_options": { "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": { "http2_protocol_options": {} },
        } },
        "load_assignment": { "cluster_name": "xds-grpc", "endpoints": [{ "lb_endpoints": [{ "endpoint": {
            "address": { "socket_address": { "address": "127.0.0.1", "port_value": 15010 } } } }] }] },
    }));
    envoy_validate(
        &EnvoyConfig::parse(&serde_yaml::to_string(&doc).unwrap()).unwrap(),
        "istio-envoyfilter-listener",
    );

    // Envoy Gateway: the policy's Wasm extension as a filter, the patch policy's clusters.
    let policy =
        the_document(&envoy_dir().join("gateway/extension-policy.yaml"), "EnvoyExtensionPolicy").unwrap();
    let wasm = &policy["spec"]["wasm"][0];
    let mut eg_filter = json!({
        "@type": istio::WASM_TYPE_URL,
        "config": {
            "name": wasm["name"],
            "root_id": wasm["rootID"],
            "fail_open": wasm["failOpen"],
            "vm_config": { "runtime": "envoy.wasm.runtime.v8" },
            "configuration": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": wasm["config"].to_string(),
            },
        },
    });
    local_code(&mut eg_filter);
    let patch_policy =
        the_document(&envoy_dir().join("gateway/jwks-clusters.yaml"), "EnvoyPatchPolicy").unwrap();
    let eg_clusters: Vec<Value> = patch_policy["spec"]["jsonPatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["operation"]["value"].clone())
        .collect();
    envoy_validate(&bootstrap_with(&eg_filter, &eg_clusters), "envoy-gateway");
}

/// The native shell on Envoy Gateway (`gateway/native.yaml`): the policy names a module
/// the EnvoyProxy allows, at the path the pod mounts, with extension-policy.yaml's wasm
/// configuration; assembled as Envoy Gateway renders a dynamic module (the module at its
/// path, `filter_name`, the configuration as a JSON string), Envoy and the built module
/// accept it.
#[test]
fn envoy_gateway_loads_the_native_shell_with_the_wasms_configuration() {
    let path = envoy_dir().join("gateway/native.yaml");
    let proxy = the_document(&path, "EnvoyProxy").unwrap();
    let policy = the_document(&path, "EnvoyExtensionPolicy").unwrap();
    let module = &policy["spec"]["dynamicModules"][0];
    assert_eq!(module["filterName"], PLUGIN_FILTER_NAME);
    let allowed = proxy["spec"]["dynamicModules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["name"] == module["name"])
        .expect("the module the policy uses is on the EnvoyProxy's allowlist");
    assert_eq!(allowed["doNotClose"], true, "workers keep thread-local state in the module");
    let so = allowed["source"]["local"]["path"].as_str().unwrap();
    let deployment = &proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"];
    let mount = &deployment["container"]["volumeMounts"][0];
    assert_eq!(Path::new(so).parent().unwrap(), Path::new(mount["mountPath"].as_str().unwrap()));
    assert_eq!(deployment["pod"]["volumes"][0]["name"], mount["name"]);
    let wasm_policy =
        the_document(&envoy_dir().join("gateway/extension-policy.yaml"), "EnvoyExtensionPolicy").unwrap();
    assert_eq!(module["config"], wasm_policy["spec"]["wasm"][0]["config"], "one configuration, two shells");
    assert_eq!(policy["spec"]["targetRefs"], wasm_policy["spec"]["targetRefs"]);

    let mut config = EnvoyConfig::load(&test_harness::envoy::native_config_path()).unwrap();
    config.set_native_module(&test_harness::envoy::native_module_path().unwrap()).unwrap();
    config.set_plugin_configuration(&module["config"]).unwrap();
    envoy_validate(&config, "envoy-gateway-native");
}

// ---------------------------------------------------------------------------------
// make oci

#[test]
fn the_oci_layout_is_reproducible_and_holds_the_built_wasm() {
    let wasm = fs::read(wasm_path().unwrap()).unwrap();
    let dir = temp_dir("oci");
    let first = oci::write_layout(&wasm, &dir.join("a"), "0.1.0", "0.1.0").unwrap();
    let second = oci::write_layout(&wasm, &dir.join("b"), "0.1.0", "0.1.0").unwrap();
    assert_eq!(first, second, "two runs, one digest");
    println!("OCI manifest digest of the built wasm: {}", first.manifest_digest);

    let layout = dir.join("a");
    let read_json = |path: PathBuf| -> Value { serde_json::from_slice(&fs::read(path).unwrap()).unwrap() };
    let blob = |digest: &str| -> Vec<u8> {
        let bytes = fs::read(layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))).unwrap();
        assert_eq!(oci::digest(&bytes), digest, "a blob's name is its digest");
        bytes
    };
    assert_eq!(read_json(layout.join("oci-layout")), json!({ "imageLayoutVersion": "1.0.0" }));
    let index = read_json(layout.join("index.json"));
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    let entry = &index["manifests"][0];
    assert_eq!(entry["mediaType"], oci::MANIFEST_MEDIA_TYPE);
    assert_eq!(entry["annotations"][oci::REF_NAME_ANNOTATION], "0.1.0");
    assert_eq!(entry["digest"], first.manifest_digest.as_str());

    let manifest_bytes = blob(&first.manifest_digest);
    assert_eq!(entry["size"].as_u64(), Some(manifest_bytes.len() as u64));
    let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], oci::MANIFEST_MEDIA_TYPE);
    assert_eq!(manifest["config"]["mediaType"], oci::CONFIG_MEDIA_TYPE);
    assert_eq!(manifest["annotations"][oci::VARIANT_ANNOTATION.0], oci::VARIANT_ANNOTATION.1);
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "the compat format has exactly one layer");
    assert_eq!(layers[0]["mediaType"], oci::LAYER_MEDIA_TYPE);

    let config_bytes = blob(manifest["config"]["digest"].as_str().unwrap());
    assert_eq!(manifest["config"]["size"].as_u64(), Some(config_bytes.len() as u64));
    let config: Value = serde_json::from_slice(&config_bytes).unwrap();
    let layer = blob(layers[0]["digest"].as_str().unwrap());
    assert_eq!(layers[0]["size"].as_u64(), Some(layer.len() as u64));

    // What Istio's fetcher does: gunzip, walk the tar, take the file named plugin.wasm.
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(layer.as_slice()).read_to_end(&mut tar).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"], json!([oci::digest(&tar)]));
    let mut archive = tar::Archive::new(tar.as_slice());
    let entries: Vec<(String, Vec<u8>)> = archive
        .entries()
        .unwrap()
        .map(|entry| {
            let mut entry = entry.unwrap();
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            (entry.path().unwrap().display().to_string(), content)
        })
        .collect();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].0, oci::PLUGIN_FILE);
    assert!(entries[0].1 == wasm, "the layer's plugin.wasm is the built wasm");
    let _ = fs::remove_dir_all(&dir);
}
