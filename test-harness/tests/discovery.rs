//! OIDC discovery in a real Envoy: issuers whose keys are located through
//! `/.well-known/openid-configuration`. A document on the issuer's own host is
//! followed, once per Envoy; a document naming another issuer, or keys on a host
//! nobody allowed, is refused (the issuer's requests get 503 `keys_unavailable` and
//! the log says why); a host listed in `allowed_jwks_hosts` is fetched through its
//! own cluster; and keys that move (the old `jwks_uri` answers 404) are found again.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use test_harness::envoy::EnvoyOptions;
use test_harness::envoy_config::EnvoyConfig;
use test_harness::http::{Request, Response, Server};
use test_harness::jwks_server::JwksBehaviour;
use test_harness::keys::{self, KeyType, TestKey, TestKeys};
use test_harness::mint::{Alg, Token};
use test_harness::stack::Stack;

const WELL_KNOWN: &str = "/.well-known/openid-configuration";

/// `(host, path)` → hits.
type Hits = Arc<Mutex<HashMap<(String, String), u64>>>;

/// Identity providers told apart by `Host`, as they would be by DNS.
struct Idps {
    hits: Hits,
    /// The `moving` IdP's current JWKS path (it moves from `/v1/keys` to `/v2/keys`).
    moving_path: Arc<Mutex<String>>,
}

fn issuer_url(host: &str) -> String {
    format!("https://{host}")
}

fn discovery_doc(issuer: &str, jwks_uri: &str) -> Value {
    json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/oauth2/v1/authorize"),
        "token_endpoint": format!("{issuer}/oauth2/v1/token"),
        "jwks_uri": jwks_uri,
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"]
    })
}

fn key(kid: &str, key_type: KeyType) -> TestKey {
    TestKeys::shared().unwrap().by_type(key_type).with_kid(kid)
}

impl Idps {
    /// The discovery server (cluster `idp`) and a separate key server (cluster `keys`).
    fn start() -> (Self, Server, Server) {
        let hits: Hits = Arc::default();
        let moving_path = Arc::new(Mutex::new("/v1/keys".to_owned()));
        let count = |hits: &Hits, request: &Request| {
            let host = request.header("host").unwrap_or_default().to_owned();
            *hits.lock().unwrap().entry((host, request.path().to_owned())).or_default() += 1;
        };
        let idp = {
            let hits = Arc::clone(&hits);
            let moving_path = Arc::clone(&moving_path);
            Server::start(move |request: &Request| {
                count(&hits, request);
                let host = request.header("host").unwrap_or_default();
                let path = request.path();
                let doc = |issuer: &str, uri: &str| Response::json(200, &discovery_doc(issuer, uri));
                match (host, path) {
                    ("okta.example", WELL_KNOWN) => {
                        doc(&issuer_url(host), "https://okta.example/oauth2/v1/keys")
                    }
                    ("okta.example", "/oauth2/v1/keys") => {
                        Response::json(200, &keys::jwks([&key("okta-1", KeyType::Rsa)]))
                    }
                    // A document that names another issuer (a mix-up or a hijacked path).
                    ("mixup.example", WELL_KNOWN) => {
                        doc("https://evil.example", "https://mixup.example/keys")
                    }
                    ("mixup.example", "/keys") => {
                        Response::json(200, &keys::jwks([&key("mixup-1", KeyType::P256)]))
                    }
                    // Keys on another host, which only one issuer allows.
                    ("elsewhere.example", WELL_KNOWN) | ("allowed.example", WELL_KNOWN) => {
                        doc(&issuer_url(host), "https://keys.example/certs")
                    }
                    ("moving.example", WELL_KNOWN) => {
                        let current = moving_path.lock().unwrap().clone();
                        doc(&issuer_url(host), &format!("https://moving.example{current}"))
                    }
                    ("moving.example", p) if p == moving_path.lock().unwrap().as_str() => {
                        let keys = if p == "/v1/keys" {
                            keys::jwks([&key("moving-1", KeyType::P256)])
                        } else {
                            keys::jwks([&key("moving-1", KeyType::P256), &key("moving-2", KeyType::Ed25519)])
                        };
                        Response::json(200, &keys)
                    }
                    _ => Response::new(404),
                }
            })
            .unwrap()
        };
        let key_server = {
            let hits = Arc::clone(&hits);
            Server::start(move |request: &Request| {
                count(&hits, request);
                match (request.header("host").unwrap_or_default(), request.path()) {
                    ("keys.example", "/certs") => {
                        Response::json(200, &keys::jwks([&key("shared-1", KeyType::P384)]))
                    }
                    _ => Response::new(404),
                }
            })
            .unwrap()
        };
        (Self { hits, moving_path }, idp, key_server)
    }

    fn hits(&self, host: &str, path: &str) -> u64 {
        self.hits.lock().unwrap().get(&(host.to_owned(), path.to_owned())).copied().unwrap_or(0)
    }
}

fn discovered_issuer(name: &str, host: &str, extra: Value) -> Value {
    let mut issuer = json!({
        "name": name,
        "issuer": issuer_url(host),
        "audiences": ["nhi-gateway"],
        "discovery": {"cluster": "idp", "authority": host},
        "jwks": {"timeout_ms": 500},
        "algorithms": ["RS256", "ES256", "ES384", "EdDSA"]
    });
    for (k, v) in extra.as_object().unwrap() {
        issuer[k] = v.clone();
    }
    issuer
}

fn token(host: &str, key: &TestKey) -> String {
    Token::new(Alg::default_for(key.key_type()))
        .claim("iss", issuer_url(host))
        .claim("aud", "nhi-gateway")
        .claim("sub", format!("robot@{host}"))
        .sign(key)
        .unwrap()
}

fn send(stack: &Stack, path: &str, token: &str) -> (u16, String) {
    let response = stack.get(path, &[("authorization", &format!("Bearer {token}"))]).unwrap();
    let reason =
        response.body_json().ok().and_then(|b| b["reason"].as_str().map(str::to_owned)).unwrap_or_default();
    (response.status, reason)
}

#[test]
fn discovered_keys_are_followed_only_where_allowed() {
    let (idps, idp, key_server) = Idps::start();
    let mut plugin = EnvoyConfig::shipped().unwrap().plugin_configuration().unwrap();
    let issuers = plugin["issuers"].as_array_mut().unwrap();
    issuers.push(discovered_issuer("okta", "okta.example", json!({})));
    issuers.push(discovered_issuer("mixup", "mixup.example", json!({})));
    issuers.push(discovered_issuer("elsewhere", "elsewhere.example", json!({})));
    issuers.push(discovered_issuer(
        "allowed",
        "allowed.example",
        json!({"discovery": {"cluster": "idp", "authority": "allowed.example",
                             "allowed_jwks_hosts": {"keys.example": "keys"}}}),
    ));
    issuers.push(discovered_issuer(
        "moving",
        "moving.example",
        json!({"jwks": {"timeout_ms": 500, "refresh_seconds": 1, "min_refetch_seconds": 1}}),
    ));
    let mut config = EnvoyConfig::shipped().unwrap();
    config.add_cluster_like("idp", "jwks_demo").unwrap();
    config.add_cluster_like("keys", "jwks_demo").unwrap();
    let options = EnvoyOptions::new()
        .config(config)
        .plugin_configuration(plugin)
        .cluster("idp", idp.addr())
        .cluster("keys", key_server.addr());
    let demo_jwks = keys::jwks(TestKeys::shared().unwrap().all());
    let mut stack = Stack::start_with(JwksBehaviour::serve(&demo_jwks), options).unwrap();

    // Same host: the document is followed.
    let okta = token("okta.example", &key("okta-1", KeyType::Rsa));
    stack.wait_for_keys(&okta).unwrap();
    assert_eq!(send(&stack, "/api/discovery/okta", &okta), (200, String::new()));

    // Another host, listed in allowed_jwks_hosts: fetched through its own cluster.
    let allowed = token("allowed.example", &key("shared-1", KeyType::P384));
    stack.wait_for_keys(&allowed).unwrap();
    assert_eq!(send(&stack, "/api/discovery/allowed", &allowed).0, 200);
    assert!(idps.hits("keys.example", "/certs") >= 1);

    // A document naming another issuer, and keys on a host nobody allowed: no keys.
    let mixup = token("mixup.example", &key("mixup-1", KeyType::P256));
    assert_eq!(send(&stack, "/api/discovery/mixup", &mixup), (503, "keys_unavailable".into()));
    let elsewhere = token("elsewhere.example", &key("shared-1", KeyType::P384));
    assert_eq!(send(&stack, "/api/discovery/elsewhere", &elsewhere), (503, "keys_unavailable".into()));
    assert_eq!(idps.hits("mixup.example", "/keys"), 0, "keys of a mismatched document were fetched");
    let log = stack.envoy.log();
    assert!(log.contains("issuer mixup: JWKS refresh failed"), "{log}");
    assert!(log.contains("discovery document's issuer is not the configured issuer"), "{log}");
    assert!(log.contains("jwks_uri is on host \"keys.example\", not the discovery authority"), "{log}");

    // One discovery and one key fetch for the whole Envoy (two workers, three VMs).
    assert_eq!(idps.hits("okta.example", WELL_KNOWN), 1);
    assert_eq!(idps.hits("okta.example", "/oauth2/v1/keys"), 1);

    // Keys that move: the old jwks_uri answers 404, the filter rediscovers and
    // loads the new set, with a key the old one did not have.
    let moved = token("moving.example", &key("moving-2", KeyType::Ed25519));
    let before = token("moving.example", &key("moving-1", KeyType::P256));
    stack.wait_for_keys(&before).unwrap();
    assert_eq!(send(&stack, "/api/discovery/moving-before", &before).0, 200);
    let discoveries = idps.hits("moving.example", WELL_KNOWN);
    *idps.moving_path.lock().unwrap() = "/v2/keys".to_owned();
    let authorization = format!("Bearer {moved}");
    stack
        .envoy
        .wait_until("the moved keys to be rediscovered", Duration::from_secs(15), |envoy| {
            let response =
                envoy.request("GET", "/api/discovery/moving-after", &[("authorization", &authorization)])?;
            Ok(response.status == 200)
        })
        .unwrap();
    assert!(idps.hits("moving.example", "/v1/keys") >= 2, "the old location was tried");
    assert!(idps.hits("moving.example", WELL_KNOWN) > discoveries, "the document was fetched again");
    assert_eq!(
        send(&stack, "/api/discovery/moving-old-key", &before).0,
        200,
        "the old key is still published"
    );
}
