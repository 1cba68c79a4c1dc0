//! Configuration reloads in a real Envoy: the filter's configuration comes over
//! extension config discovery (a watched file, as a control plane would push it).
//! An invalid update is refused — the log says why — and the previous configuration
//! keeps serving; a valid update takes effect, and nothing verified under the old
//! configuration (the shared token cache included) is trusted under the new one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_harness::envoy::{wasm_path, Envoy, EnvoyOptions};
use test_harness::envoy_config::EnvoyConfig;
use test_harness::istio;
use test_harness::jwks_server::JwksServer;
use test_harness::keys::{self, KeyType, TestKeys};
use test_harness::mint::{self, Alg, Token};
use test_harness::stack::{UPSTREAM_CLUSTER, WEB_CLUSTER};
use test_harness::upstream::EchoUpstream;

const FILTER: &str = "nhi-guard";

/// The shipped filter's extension config, with `plugin` as its configuration.
fn extension(shipped: &EnvoyConfig, plugin: &Value) -> Value {
    let yaml = serde_json::to_value(shipped.as_yaml()).unwrap();
    let filters = &yaml["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["http_filters"];
    let wasm = filters.as_array().unwrap().iter().find(|f| f["name"] == FILTER).unwrap();
    let mut typed_config = wasm["typed_config"].clone();
    typed_config["config"]["vm_config"]["code"]["local"]["filename"] = json!(wasm_path().unwrap());
    typed_config["config"]["configuration"]["value"] = json!(plugin.to_string());
    json!({
        "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
        "name": FILTER,
        "typed_config": typed_config,
    })
}

/// Replaces the ECDS file atomically (Envoy watches for the rename), with a new version.
fn push(path: &Path, version: u32, extension: &Value) {
    let tmp = path.with_extension("tmp");
    let response = json!({ "version_info": version.to_string(), "resources": [extension] });
    fs::write(&tmp, serde_yaml::to_string(&response).unwrap()).unwrap();
    fs::rename(&tmp, path).unwrap();
}

fn status(envoy: &Envoy, token: &str) -> (u16, String) {
    let r = envoy.request("GET", "/api/reload", &[("authorization", &format!("Bearer {token}"))]).unwrap();
    let reason = r.body_json().ok().and_then(|b| b["reason"].as_str().map(str::to_owned)).unwrap_or_default();
    (r.status, reason)
}

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < Duration::from_secs(15), "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn invalid_updates_are_refused_and_valid_ones_take_effect() {
    let key = TestKeys::shared().unwrap().by_type(KeyType::P256);
    let jwks = JwksServer::start(&keys::jwks([key])).unwrap();
    let upstream = EchoUpstream::start_named("machine").unwrap();
    let web = EchoUpstream::start_named("web").unwrap();

    let shipped = EnvoyConfig::shipped().unwrap();
    let plugin = shipped.plugin_configuration().unwrap();
    let jwks_cluster = plugin["issuers"][0]["jwks"]["cluster"].as_str().unwrap().to_owned();
    let work = std::env::temp_dir().join(format!("nhi-reload-{}", std::process::id()));
    fs::create_dir_all(&work).unwrap();
    let ecds = work.join("ecds.yaml");
    push(&ecds, 1, &extension(&shipped, &plugin));
    let config = istio::ecds_bootstrap(&shipped, FILTER, &ecds).unwrap();
    let options = EnvoyOptions::new()
        .plugin_from_ecds()
        .config(config)
        .cluster(UPSTREAM_CLUSTER, upstream.addr())
        .cluster(WEB_CLUSTER, web.addr())
        .cluster(&jwks_cluster, jwks.addr());
    let envoy = Envoy::start(&options).unwrap();

    let issuer = plugin["issuers"][0]["issuer"].as_str().unwrap();
    let token_for = |aud: &str| {
        Token::new(Alg::Es256).kid(key.kid()).claim("iss", issuer).claim("aud", aud).sign(key).unwrap()
    };
    let original = token_for(plugin["issuers"][0]["audiences"][0].as_str().unwrap());
    let forged = mint::tamper_signature(&original).unwrap();
    eventually("keys", || status(&envoy, &original).0 == 200);
    assert_eq!(status(&envoy, &forged), (401, "bad_signature".to_owned()));

    // An invalid update: refused, with the field and reason in the log; the old
    // configuration keeps serving.
    let mut invalid = plugin.clone();
    invalid["issuers"][0]["audiences"] = json!([]);
    push(&ecds, 2, &extension(&shipped, &invalid));
    eventually("the refusal in the log", || {
        envoy.log().contains("`issuers[0].audiences` must list at least one non-empty audience")
    });
    thread::sleep(Duration::from_millis(500));
    for _ in 0..10 {
        assert_eq!(status(&envoy, &original).0, 200, "the previous configuration still serves");
        assert_eq!(status(&envoy, &forged).0, 401, "and still refuses forged tokens");
    }

    // A valid update with another audience takes effect: the old token (cached as
    // verified under the old configuration) is refused now, a token for the new
    // audience is accepted.
    let mut moved = plugin.clone();
    moved["issuers"][0]["audiences"] = json!(["moved-gateway"]);
    push(&ecds, 3, &extension(&shipped, &moved));
    let moved_token = token_for("moved-gateway");
    eventually("the new configuration", || status(&envoy, &moved_token).0 == 200);
    eventually("the old audience refused", || {
        status(&envoy, &original) == (401, "wrong_audience".to_owned())
    });
    let _ = fs::remove_dir_all(&work);
}
