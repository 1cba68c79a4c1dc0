//! DPoP (RFC 9449) in a real Envoy with two workers, against an independent client:
//! keys, DPoP-bound tokens and proofs come from joserfc (`test-harness/dpop/client.py`),
//! never from the filter's code. One Envoy for the file, three issuers that share the
//! client's signing key:
//!
//! - `demo` (the shipped issuer): `required`; routes `/api/optional/` and `/api/off/`
//!   override it, so every mode is on one Envoy;
//! - `small`: a replay table of 64 entries (one bucket), for the flood and the full table;
//! - `nonces`: server nonces rotated every second.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use test_harness::dpop_client::{DpopClient, ProofKey};
use test_harness::envoy::{native_module_path, EnvoyOptions};
use test_harness::envoy_config::EnvoyConfig;
use test_harness::h2c;
use test_harness::http::{self, Response};
use test_harness::jwks_server::JwksBehaviour;
use test_harness::stack::Stack;

const AUDIENCE: &str = "nhi-gateway";

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn plugin(jwks: &Value, revoked_jkt: &str) -> Value {
    let mut plugin = EnvoyConfig::shipped().unwrap().plugin_configuration().unwrap();
    plugin["issuers"][0]["dpop"] = json!({"mode": "required", "max_age_seconds": 60});
    plugin["deny"] = json!({"jkt": [revoked_jkt]});
    let extra = |name: &str, dpop: Value| {
        json!({"name": name, "issuer": format!("https://{name}.example"), "audiences": [AUDIENCE],
               "jwks": {"inline": jwks}, "algorithms": ["ES256"], "dpop": dpop})
    };
    let issuers = plugin["issuers"].as_array_mut().unwrap();
    issuers.push(extra("small", json!({"mode": "required", "max_tracked_proofs": 64})));
    issuers.push(extra("nonces", json!({"mode": "required", "nonce": true, "nonce_rotation_seconds": 1})));
    let routes = plugin["routes"].as_array_mut().unwrap();
    routes.insert(0, json!({"name": "optional", "match": {"prefix": "/api/optional/"}, "dpop": "optional"}));
    routes.insert(0, json!({"name": "off", "match": {"prefix": "/api/off/"}, "dpop": "off"}));
    plugin
}

struct World {
    stack: Stack,
    client: DpopClient,
    addr: SocketAddr,
}

impl World {
    fn token(&mut self, iss: &str, sub: &str, bind: Option<&ProofKey>) -> String {
        self.client.token(json!({"iss": iss, "aud": AUDIENCE, "sub": sub}), bind).unwrap()
    }

    fn proof(&mut self, key: &ProofKey, htm: &str, path: &str, token: &str, extra: Value) -> String {
        let htu = format!("http://{}{path}", self.addr);
        self.client.proof(key, htm, &htu, token, extra).unwrap()
    }

    fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        http::request(self.addr, method, path, headers).unwrap()
    }

    fn dpop(&self, path: &str, token: &str, proof: &str) -> Response {
        self.send("GET", path, &[("authorization", &format!("DPoP {token}")), ("dpop", proof)])
    }
}

/// A violated check: its name, the request headers, the reason expected.
type Case = (&'static str, Vec<(&'static str, String)>, &'static str);

fn reason(response: &Response) -> String {
    response.body_json().ok().and_then(|b| b["reason"].as_str().map(str::to_owned)).unwrap_or_default()
}

fn echo(response: &Response) -> Value {
    assert_eq!(response.status, 200, "{}", response.body_text());
    response.body_json().unwrap()
}

#[test]
fn dpop_against_an_independent_client() {
    dpop_in(false);
}

/// The same, with the native shell (the Envoy dynamic module) in the wasm's place:
/// its replay tables are one in-process table, exact across workers as shared data is.
#[test]
fn dpop_against_an_independent_client_in_the_native_module() {
    dpop_in(true);
}

fn dpop_in(native: bool) {
    let started = Instant::now();
    let mut client = DpopClient::start().unwrap();
    let jwks = client.issuer("py-issuer").unwrap();
    // A key revoked in the configuration (`deny.jkt`) before Envoy starts.
    let revoked = client.key("EC").unwrap();
    let mut options = EnvoyOptions::new().plugin_configuration(plugin(&jwks, &revoked.jkt));
    if native {
        options = options.native_filter(&native_module_path().unwrap()).unwrap();
    }
    let mut stack = Stack::start_with(JwksBehaviour::serve(&jwks), options).unwrap();
    let addr = stack.envoy.listener_addr();
    let iss = stack.issuer().unwrap().to_owned();
    let warm = client.token(json!({"iss": iss, "aud": AUDIENCE, "sub": "warmup"}), None).unwrap();
    stack.wait_for_keys(&warm).unwrap();
    let mut w = World { stack, client, addr };

    let ec = w.client.key("EC").unwrap();
    let ed = w.client.key("OKP").unwrap();
    let rsa = w.client.key("RSA").unwrap();
    let other = w.client.key("EC").unwrap();

    // A valid proof for each kind of key: 200, identity and key forwarded, proof and
    // token removed.
    for key in [&ec, &ed, &rsa] {
        let token = w.token(&iss, "robot", Some(key));
        let proof = w.proof(key, "GET", "/api/x", &token, json!({}));
        let response = w.dpop("/api/x?page=1", &token, &proof);
        let body = echo(&response);
        assert_eq!(body["headers"]["x-nhi-identity"], "robot");
        assert_eq!(body["headers"]["x-nhi-dpop-jkt"], key.jkt.as_str(), "the client's RFC 7638 thumbprint");
        assert!(body["headers"].get("authorization").is_none() && body["headers"].get("dpop").is_none());
        // The very same proof again: refused.
        let again = w.dpop("/api/x?page=1", &token, &proof);
        assert_eq!((again.status, reason(&again).as_str()), (401, "dpop_replay"));
    }

    // deny.jkt: a valid token and proof for a revoked key are refused, by the key.
    let token = w.token(&iss, "robot", Some(&revoked));
    let proof = w.proof(&revoked, "GET", "/api/x", &token, json!({}));
    let response = w.dpop("/api/x", &token, &proof);
    assert_eq!((response.status, reason(&response).as_str()), (401, "dpop_key_revoked"));

    // Each check of RFC 9449 §4.3 violated in turn.
    let token = w.token(&iss, "robot", Some(&ec));
    let other_token = w.token(&iss, "robot", Some(&other));
    let unbound = w.token(&iss, "robot", None);
    let ok = w.proof(&ec, "GET", "/api/x", &token, json!({}));
    let cases: Vec<Case> = {
        let mut cases = Vec::new();
        let mut case = |name: &'static str, headers: Vec<(&'static str, String)>, want: &'static str| {
            cases.push((name, headers, want))
        };
        let dpop = |t: &str| ("authorization", format!("DPoP {t}"));
        let mut proof = |extra: Value| {
            w.client.proof(&ec, "GET", &format!("http://{addr}/api/x"), &token, extra).unwrap()
        };
        case("1. no DPoP header", vec![dpop(&token)], "invalid_dpop_proof");
        case(
            "1. two DPoP headers",
            vec![dpop(&token), ("dpop", ok.clone()), ("dpop", proof(json!({})))],
            "invalid_dpop_proof",
        );
        case("2. not a JWT", vec![dpop(&token), ("dpop", "not-a-jwt".into())], "invalid_dpop_proof");
        case(
            "3. no jti",
            vec![dpop(&token), ("dpop", proof(json!({"claims": {"jti": null}})))],
            "invalid_dpop_proof",
        );
        case(
            "3. no iat",
            vec![dpop(&token), ("dpop", proof(json!({"claims": {"iat": null}})))],
            "invalid_dpop_proof",
        );
        case("3. no ath", vec![dpop(&token), ("dpop", proof(json!({"no_ath": true})))], "invalid_dpop_proof");
        case("4. typ JWT", vec![dpop(&token), ("dpop", proof(json!({"typ": "JWT"})))], "invalid_dpop_proof");
        case(
            "5. alg none",
            vec![dpop(&token), ("dpop", proof(json!({"alg": "none"})))],
            "invalid_dpop_proof",
        );
        case(
            "5. alg HS256",
            vec![dpop(&token), ("dpop", proof(json!({"alg": "HS256"})))],
            "invalid_dpop_proof",
        );
        case(
            "6. bad signature",
            vec![dpop(&token), ("dpop", proof(json!({"tamper": true})))],
            "invalid_dpop_proof",
        );
        case(
            "7. private jwk",
            vec![dpop(&token), ("dpop", proof(json!({"private_jwk": true})))],
            "invalid_dpop_proof",
        );
        case("8. htm", vec![dpop(&token), ("dpop", proof(json!({"htm": "POST"})))], "invalid_dpop_proof");
        case(
            "9. htu",
            vec![dpop(&token), ("dpop", proof(json!({"htu": format!("http://{addr}/api/y")})))],
            "invalid_dpop_proof",
        );
        case(
            "11. iat too old",
            vec![dpop(&token), ("dpop", proof(json!({"iat": now() - 600})))],
            "invalid_dpop_proof",
        );
        case(
            "11. iat in the future",
            vec![dpop(&token), ("dpop", proof(json!({"iat": now() + 600})))],
            "invalid_dpop_proof",
        );
        case(
            "12. ath of another token",
            vec![dpop(&token), ("dpop", proof(json!({"token": other_token})))],
            "invalid_dpop_proof",
        );
        case(
            "12. token bound to another key",
            vec![dpop(&other_token), ("dpop", proof(json!({"token": other_token})))],
            "dpop_key_mismatch",
        );
        case(
            "12. unbound token with the DPoP scheme",
            vec![dpop(&unbound), ("dpop", proof(json!({"token": unbound})))],
            "dpop_key_mismatch",
        );
        cases
    };
    for (name, headers, want) in &cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let response = w.send("GET", "/api/x", &headers);
        assert_eq!((response.status, reason(&response).as_str()), (401, *want), "{name}");
        let challenge = response.header("www-authenticate").unwrap_or_default().to_owned();
        assert!(challenge.starts_with("DPoP algs=\"ES256 EdDSA RS256 PS256\""), "{name}: {challenge}");
        let error = if *want == "invalid_dpop_proof" { "invalid_dpop_proof" } else { "invalid_token" };
        assert!(challenge.contains(&format!("error=\"{error}\"")), "{name}: {challenge}");
    }
    // None of those refusals consumed the valid proof.
    assert_eq!(w.dpop("/api/x", &token, &ok).status, 200);

    // htu variants, judged as RFC 3986 §6 says, on a request for http://gw.example/api/x.
    for (htu, path, want) in [
        ("http://gw.example/api/x", "/api/x", 200),
        ("HTTP://GW.EXAMPLE/api/x", "/api/x", 200),
        ("http://gw.example:80/api/x", "/api/x", 200),
        ("http://gw.example/api/%78", "/api/x", 200),
        ("http://gw.example/api/x", "/api/x?query=1", 200),
        ("http://gw.example/api/x/", "/api/x", 401),
        ("https://gw.example/api/x", "/api/x", 401),
        ("http://gw.example:8080/api/x", "/api/x", 401),
        ("http://other.example/api/x", "/api/x", 401),
    ] {
        let proof = w.client.proof(&ec, "GET", htu, &token, json!({})).unwrap();
        let stream = TcpStream::connect(addr).unwrap();
        let authorization = format!("DPoP {token}");
        let response = http::exchange_over(
            stream,
            "gw.example",
            "GET",
            path,
            &[("authorization", &authorization), ("dpop", &proof)],
            &[],
        )
        .unwrap();
        assert_eq!(response.status, want, "{htu} for {path}: {}", response.body_text());
    }

    // A client's own x-forwarded-proto does not make a plain-HTTP request https: the
    // shipped config is the edge (use_remote_address), so Envoy's :scheme stays http.
    let https_proof = w.client.proof(&ec, "GET", "https://gw.example/api/x", &token, json!({})).unwrap();
    let stream = TcpStream::connect(addr).unwrap();
    let authorization = format!("DPoP {token}");
    let headers = [
        ("authorization", authorization.as_str()),
        ("dpop", https_proof.as_str()),
        ("x-forwarded-proto", "https"),
    ];
    let response = http::exchange_over(stream, "gw.example", "GET", "/api/x", &headers, &[]).unwrap();
    assert_eq!(
        (response.status, reason(&response).as_str()),
        (401, "invalid_dpop_proof"),
        "a forged x-forwarded-proto"
    );
    // Nor does an HTTP/2 client's own `:scheme` over cleartext (Envoy trusts an h2
    // `:scheme`, but sets x-forwarded-proto from the connection at the edge): a proof
    // for https is refused, one for http passes.
    let mut dpop_over_h2 = |scheme: &str, htu: &str| {
        let proof = w.client.proof(&ec, "GET", htu, &token, json!({})).unwrap();
        let headers: [(&str, &[u8]); 2] =
            [("authorization", authorization.as_bytes()), ("dpop", proof.as_bytes())];
        h2c::request_to(addr, &format!("{scheme}://gw.example"), "GET", "/api/x", &headers).unwrap()
    };
    let forged = dpop_over_h2("https", "https://gw.example/api/x");
    assert_eq!((forged.status, reason(&forged).as_str()), (401, "invalid_dpop_proof"), "h2 :scheme https");
    assert_eq!(dpop_over_h2("http", "http://gw.example/api/x").status, 200, "h2 :scheme http");

    // A bound token as a bearer token: 401 in every mode; an unbound one where DPoP is required.
    for path in ["/api/x", "/api/optional/x", "/api/off/x"] {
        let response = w.send("GET", path, &[("authorization", &format!("Bearer {token}"))]);
        assert_eq!((response.status, reason(&response).as_str()), (401, "dpop_required"), "{path}");
        let with_proof = w.proof(&ec, "GET", path, &token, json!({}));
        let response =
            w.send("GET", path, &[("authorization", &format!("Bearer {token}")), ("dpop", &with_proof)]);
        assert_eq!(reason(&response), "dpop_required", "{path}, with a valid proof beside it");
    }
    let response = w.send("GET", "/api/x", &[("authorization", &format!("Bearer {unbound}"))]);
    assert_eq!((response.status, reason(&response).as_str()), (401, "dpop_required"));
    assert!(response.header("www-authenticate").unwrap().contains("DPoP algs="));
    assert_eq!(
        w.send("GET", "/api/optional/x", &[("authorization", &format!("Bearer {unbound}"))]).status,
        200
    );
    let off_proof = w.proof(&ec, "GET", "/api/off/x", &token, json!({}));
    assert_eq!(
        reason(&w.dpop("/api/off/x", &token, &off_proof)),
        "invalid_dpop_proof",
        "DPoP off on this route"
    );

    // One proof on two connections, one on each worker, at once: exactly one 200.
    for round in 0..3 {
        let proof = w.proof(&ec, "GET", "/api/x", &token, json!({}));
        let mut streams: Vec<(usize, TcpStream)> = Vec::new();
        let mut seen = [false; 2];
        for _ in 0..40 {
            let before = w.stack.envoy.worker_connections().unwrap();
            let stream = TcpStream::connect(addr).unwrap();
            let deadline = Instant::now() + Duration::from_secs(2);
            let worker = loop {
                let after = w.stack.envoy.worker_connections().unwrap();
                if let Some(i) = (0..2).find(|&i| after[i] > before[i]) {
                    break i;
                }
                assert!(
                    Instant::now() < deadline,
                    "no worker took the connection: {}",
                    w.stack.envoy.admin_text("/stats?filter=worker").unwrap()
                );
                thread::sleep(Duration::from_millis(5));
            };
            if !seen[worker] {
                seen[worker] = true;
                streams.push((worker, stream));
            }
            if seen == [true, true] {
                break;
            }
        }
        assert_eq!(streams.len(), 2, "round {round}: connections on both workers");
        let handles: Vec<_> = streams
            .into_iter()
            .map(|(_, stream)| {
                let (token, proof) = (token.clone(), proof.clone());
                thread::spawn(move || {
                    let authorization = format!("DPoP {token}");
                    http::exchange_over(
                        stream,
                        &addr.to_string(),
                        "GET",
                        "/api/x",
                        &[("authorization", &authorization), ("dpop", &proof)],
                        &[],
                    )
                    .unwrap()
                    .status
                })
            })
            .collect();
        let mut statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        statuses.sort();
        assert_eq!(statuses, [200, 401], "round {round}: exactly one worker admits the proof");
    }

    // A flood of fresh proofs from one key fills only its share of the table and
    // evicts nobody; a full table admits no replay.
    let small = "https://small.example";
    let victim = w.client.key("EC").unwrap();
    let victim_token = w.token(small, "victim", Some(&victim));
    let victim_proof = w.proof(&victim, "GET", "/api/x", &victim_token, json!({}));
    assert_eq!(w.dpop("/api/x", &victim_token, &victim_proof).status, 200);
    let flooder = w.client.key("EC").unwrap();
    let flood_token = w.token(small, "flooder", Some(&flooder));
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..40 {
        let proof = w.proof(&flooder, "GET", "/api/x", &flood_token, json!({}));
        let response = w.dpop("/api/x", &flood_token, &proof);
        *statuses.entry((response.status, reason(&response))).or_insert(0) += 1;
    }
    // Half of the one bucket (with the victim's entry): the share applies from half full on.
    assert_eq!(statuses.get(&(200, String::new())), Some(&31), "{statuses:?}");
    assert_eq!(statuses.get(&(503, "dpop_replay_cache_full".to_owned())), Some(&9), "{statuses:?}");
    let replay = w.dpop("/api/x", &victim_token, &victim_proof);
    assert_eq!(
        (replay.status, reason(&replay).as_str()),
        (401, "dpop_replay"),
        "the victim's entry is still there"
    );
    // Other keys fill the rest (the victim's 1 + the flooder's 31 + 16 + 16 = 64).
    let mut accepted = vec![(victim_token.clone(), victim_proof.clone())];
    for sub in ["a", "b", "c"] {
        let key = w.client.key("EC").unwrap();
        let t = w.token(small, sub, Some(&key));
        for _ in 0..16 {
            let proof = w.proof(&key, "GET", "/api/x", &t, json!({}));
            let response = w.dpop("/api/x", &t, &proof);
            if response.status == 200 {
                accepted.push((t.clone(), proof));
            }
        }
    }
    assert_eq!(accepted.len(), 1 + 16 + 16, "the table is full at 64 live entries");
    let late = w.client.key("EC").unwrap();
    let late_token = w.token(small, "late", Some(&late));
    let late_proof = w.proof(&late, "GET", "/api/x", &late_token, json!({}));
    let full = w.dpop("/api/x", &late_token, &late_proof);
    assert_eq!((full.status, reason(&full).as_str()), (503, "dpop_replay_cache_full"));
    assert!(full.header("retry-after").is_some());
    for (t, proof) in &accepted {
        assert_eq!(reason(&w.dpop("/api/x", t, proof)), "dpop_replay", "no replay is admitted while full");
    }

    // Nonces: the first request learns one, the retry with it passes, and every 200
    // carries the current one; two rotations later the old one fails.
    let nonces = "https://nonces.example";
    let token = w.token(nonces, "robot", Some(&ec));
    let p = w.proof(&ec, "GET", "/api/x", &token, json!({}));
    let first = w.dpop("/api/x", &token, &p);
    assert_eq!((first.status, reason(&first).as_str()), (401, "use_dpop_nonce"));
    assert!(first.header("www-authenticate").unwrap().contains("error=\"use_dpop_nonce\""));
    let nonce = first.header("dpop-nonce").unwrap().to_owned();
    let p = w.proof(&ec, "GET", "/api/x", &token, json!({"nonce": nonce}));
    let retry = w.dpop("/api/x", &token, &p);
    assert_eq!(retry.status, 200, "{}", retry.body_text());
    assert!(retry.header("dpop-nonce").is_some(), "a success carries the current nonce");
    thread::sleep(Duration::from_millis(2_100));
    let p = w.proof(&ec, "GET", "/api/x", &token, json!({"nonce": nonce}));
    let stale = w.dpop("/api/x", &token, &p);
    assert_eq!((stale.status, reason(&stale).as_str()), (401, "use_dpop_nonce"), "two rotations later");
    let fresh = stale.header("dpop-nonce").unwrap().to_owned();
    assert_ne!(fresh, nonce);
    let p = w.proof(&ec, "GET", "/api/x", &token, json!({"nonce": fresh}));
    assert_eq!(w.dpop("/api/x", &token, &p).status, 200);

    println!("dpop e2e took {:?}", started.elapsed());
}
