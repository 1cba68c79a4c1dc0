//! The Istio path in a real Envoy: the shipped `envoy/istio/wasmplugin.yaml` loaded the
//! way an Istio ingress gateway loads it.
//!
//! istiod would serve the WasmPlugin as an extension config over ECDS; here the same
//! extension config (`test_harness::istio::extension_config`: empty `vm_id`, the
//! `pluginConfig` as a JSON `StringValue`, `failure_policy: FAIL_CLOSED`, the module
//! where istio-agent puts it) is read from a file through `config_discovery` with a
//! `path_config_source`, by a listener that only names it — as Istio's does. The JWKS
//! clusters carry Istio's names, `outbound|443||<host>`, and point at a local key
//! server serving both issuers' JWKS paths. Tokens for both issuers, with the claims
//! their profiles read, are then judged through that Envoy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::fs;
use std::time::Duration;

use serde_json::{json, Value};
use test_harness::envoy::{wasm_path, Envoy, EnvoyOptions};
use test_harness::envoy_config::EnvoyConfig;
use test_harness::http::{Request, Response, Server};
use test_harness::istio::{self, the_document};
use test_harness::keys::TestKeys;
use test_harness::mint::{self, Alg, Token};
use test_harness::stack::{UPSTREAM_CLUSTER, WEB_CLUSTER};
use test_harness::upstream::EchoUpstream;

#[test]
fn the_wasm_plugin_runs_through_ecds_with_istio_cluster_names() {
    let keys = TestKeys::shared().unwrap();
    let wasm_plugin = the_document(&istio::istio_dir().join("wasmplugin.yaml"), "WasmPlugin").unwrap();
    let plugin = wasm_plugin["spec"]["pluginConfig"].clone();
    let issuers = plugin["issuers"].as_array().unwrap().clone();
    let issuer = |name: &str| issuers.iter().find(|i| i["name"] == name).unwrap().clone();

    // One key server for every issuer, at each issuer's JWKS path.
    let jwks_paths: Vec<String> =
        issuers.iter().map(|i| i["jwks"]["path"].as_str().unwrap().to_owned()).collect();
    let jwks_body = keys.jwks().to_string();
    let served = jwks_paths.clone();
    let jwks = Server::start(move |request: &Request| {
        if served.iter().any(|p| p == request.path()) {
            Response::new(200).with_header("content-type", "application/json").with_body(jwks_body.clone())
        } else {
            Response::new(404).with_body("not found")
        }
    })
    .unwrap();
    let upstream = EchoUpstream::start_named("machine").unwrap();
    let web = EchoUpstream::start_named("web").unwrap();

    // The extension config in an ECDS file; the shipped envoy.yaml's listener naming it.
    let work = std::env::temp_dir().join(format!("nhi-istio-ecds-{}", std::process::id()));
    fs::create_dir_all(&work).unwrap();
    let ecds_path = work.join("ecds.yaml");
    let extension = istio::extension_config(&wasm_plugin, &wasm_path().unwrap()).unwrap();
    let filter_name = extension["name"].as_str().unwrap().to_owned();
    assert_eq!(filter_name, "istio-system.nhi-guard");
    assert!(extension["typed_config"]["config"]["vm_config"].get("vm_id").is_none());
    istio::write_ecds_file(&ecds_path, &[extension]).unwrap();

    let shipped = EnvoyConfig::shipped().unwrap();
    let shipped_jwks_cluster =
        shipped.plugin_configuration().unwrap()["issuers"][0]["jwks"]["cluster"].as_str().unwrap().to_owned();
    let mut config = istio::ecds_bootstrap(&shipped, &filter_name, &ecds_path).unwrap();
    let mut options = EnvoyOptions::new()
        .plugin_from_ecds()
        .cluster(UPSTREAM_CLUSTER, upstream.addr())
        .cluster(WEB_CLUSTER, web.addr())
        .cluster(&shipped_jwks_cluster, jwks.addr());
    for issuer in &issuers {
        let cluster = issuer["jwks"]["cluster"].as_str().unwrap();
        let host = issuer["jwks"]["authority"].as_str().unwrap();
        assert_eq!(cluster, istio::outbound_cluster(host, 443), "Istio's cluster name");
        config.add_cluster_like(cluster, &shipped_jwks_cluster).unwrap();
        options = options.cluster(cluster, jwks.addr());
    }
    let mut envoy = Envoy::start(&options.config(config)).unwrap();

    // Tokens with the claims the issuers' profiles read.
    let now = mint::now();
    let kubernetes = issuer("kubernetes");
    let namespace = kubernetes["profile"]["namespaces"][0].as_str().unwrap();
    let k8s_claims = |namespace: &str| {
        json!({
            "iss": kubernetes["issuer"], "aud": [kubernetes["audiences"][0]],
            "sub": format!("system:serviceaccount:{namespace}:deployer"),
            "iat": now, "nbf": now, "exp": now + 600,
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": { "name": "deployer", "uid": "2d4b1f6e-6a43-4b7a-9a77-0c2f5d1e8b10" },
                "pod": { "name": "deployer-7d9c", "uid": "0b1e2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d" }
            }
        })
    };
    let github = issuer("github-actions");
    let owner_id = github["profile"]["repository_owner_ids"][0].to_string();
    let github_claims = |owner_id: &str| {
        json!({
            "iss": github["issuer"], "aud": github["audiences"][0],
            "sub": "repo:your-org/deploy:ref:refs/heads/main",
            "iat": now, "nbf": now, "exp": now + 300,
            "repository": "your-org/deploy", "repository_id": "42", "repository_owner": "your-org",
            "repository_owner_id": owner_id, "ref": "refs/heads/main", "event_name": "push",
            "job_workflow_ref": "your-org/deploy/.github/workflows/deploy.yml@refs/heads/main"
        })
    };
    let sign = |claims: Value| Token::new(Alg::Rs256).claims(claims).sign(&keys.rsa).unwrap();
    let k8s_token = sign(k8s_claims(namespace));
    let github_token = sign(github_claims(&owner_id));

    let bearer = |token: &str| format!("Bearer {token}");
    let get = |envoy: &Envoy, token: Option<&str>| -> Response {
        let authorization = token.map(bearer);
        let headers: Vec<(&str, &str)> =
            authorization.iter().map(|a| ("authorization", a.as_str())).collect();
        envoy.request("GET", "/api/hello", &headers).unwrap()
    };
    envoy
        .wait_until("both issuers' keys", Duration::from_secs(20), |envoy| {
            Ok(get(envoy, Some(&k8s_token)).status != 503 && get(envoy, Some(&github_token)).status != 503)
        })
        .unwrap();

    let mut failures = Vec::new();
    let mut expect = |name: &str, response: Response, status: u16, issuer: Option<&str>| {
        let body = response.body_text();
        let forwarded_issuer =
            response.body_json().ok().and_then(|b| b["headers"]["x-nhi-issuer"].as_str().map(str::to_owned));
        if response.status != status || (status == 200 && forwarded_issuer.as_deref() != issuer) {
            failures.push(format!("{name}: got {} ({forwarded_issuer:?}) {body}", response.status));
        }
    };
    expect("kubernetes token", get(&envoy, Some(&k8s_token)), 200, Some("kubernetes"));
    expect("github actions token", get(&envoy, Some(&github_token)), 200, Some("github-actions"));
    expect("no token", get(&envoy, None), 401, None);
    let mut expired = k8s_claims(namespace);
    expired["iat"] = json!(now - 900);
    expired["nbf"] = json!(now - 900);
    expired["exp"] = json!(now - 300);
    expect("expired", get(&envoy, Some(&sign(expired))), 401, None);
    let mut wrong_audience = k8s_claims(namespace);
    wrong_audience["aud"] = json!(["https://kubernetes.default.svc.cluster.local"]);
    expect("API server audience", get(&envoy, Some(&sign(wrong_audience))), 401, None);
    let forged = mint::tamper_signature(&github_token).unwrap();
    expect("bad signature", get(&envoy, Some(&forged)), 401, None);
    let other_namespace = get(&envoy, Some(&sign(k8s_claims("kube-system"))));
    if !(400..500).contains(&other_namespace.status) {
        failures.push(format!("namespace outside the profile: got {}", other_namespace.status));
    }
    let other_owner = get(&envoy, Some(&sign(github_claims("987654321"))));
    if !(400..500).contains(&other_owner.status) {
        failures.push(format!("another GitHub organisation: got {}", other_owner.status));
    }

    // The machine backend saw exactly the two allowed requests (plus key probes).
    let upstream_hits = upstream.hits_for("/api/hello");
    for path in &jwks_paths {
        if jwks.hits(path) == 0 {
            failures.push(format!("no JWKS fetch for {path} through its outbound|443|| cluster"));
        }
    }
    let dump = envoy.admin_text("/config_dump").unwrap();
    if !(dump.contains("ecds_filters") && dump.contains(&filter_name)) {
        failures.push(format!("Envoy's config dump has no ECDS filter {filter_name}"));
    }
    let log = envoy.log();
    if !log.contains("configured: 2 issuer(s): kubernetes, github-actions") {
        failures.push("the ECDS-loaded plugin did not log its configuration".to_owned());
    }
    assert!(
        failures.is_empty(),
        "{} failure(s) through the Istio-style Envoy (machine upstream hits: {upstream_hits}):\n{}",
        failures.len(),
        failures.join("\n")
    );
    envoy.stop();
    let _ = fs::remove_dir_all(&work);
}
