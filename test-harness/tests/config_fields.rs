//! Every supported signature algorithm, and the configuration fields no other suite
//! exercises end to end, in one real Envoy (`--concurrency 2`): `token.header`,
//! `token.prefix`, `token.max_bytes`, `realm`, `client_header`, `routes[].match.exact`,
//! `routes[].match.route_name`, `routes[].deny_status`, `default_audience`,
//! `flood_guard.max_sources` and `quotas.default.burst`; and the behaviour anomalies
//! in `enforce` mode with their status.
//!
//! Each field is set away from its default, and each case is chosen so that the
//! default would give another answer (noted beside the case).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr};

use serde_json::{json, Value};
use test_harness::envoy::EnvoyOptions;
use test_harness::envoy_config::{shipped_config_path, EnvoyConfig};
use test_harness::http::{self, Response};
use test_harness::jwks_server::JwksBehaviour;
use test_harness::keys::{self, KeyType, TestKey, TestKeys};
use test_harness::mint::{self, Alg, Token};
use test_harness::stack::Stack;
use test_harness::upstream;

const TOKEN_HEADER: &str = "x-machine-token";
const CLIENT_HEADER: &str = "x-caller-kind";
const MAX_BYTES: usize = 1024;
/// `behaviour.warmup_intervals` (of 1 s): intervals with requests before an identity's
/// anomalies count. The learners below are given twice as many.
const WARMUP_INTERVALS: u64 = 3;
/// `behaviour.anomalies.dormant_returned.after_seconds`.
const DORMANT_AFTER: u64 = 3;

/// The shipped bootstrap with one more Envoy route, `reports` (prefix `/reports/`, to
/// the machine upstream), for `match.route_name`; and the machine route selected by
/// the configured client header instead of `x-nhi-client`.
fn bootstrap() -> EnvoyConfig {
    let shipped = std::fs::read_to_string(shipped_config_path()).unwrap();
    let machine_route = "              - name: machine\n";
    assert_eq!(shipped.matches(machine_route).count(), 1, "the shipped route table changed");
    let reports = "              - name: reports\n                match: { prefix: \"/reports/\" }\n                route: { cluster: upstream, timeout: 30s }\n";
    let text = shipped.replace(machine_route, &format!("{reports}{machine_route}"));
    let selector = "                  - name: x-nhi-client\n";
    assert_eq!(text.matches(selector).count(), 1, "the shipped machine route changed");
    EnvoyConfig::parse(&text.replace(selector, &format!("                  - name: {CLIENT_HEADER}\n")))
        .unwrap()
}

fn plugin() -> Value {
    let mut plugin = EnvoyConfig::shipped().unwrap().plugin_configuration().unwrap();
    plugin["issuers"][0]["algorithms"] =
        json!(["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]);
    plugin["token"] = json!({ "header": TOKEN_HEADER, "prefix": "Token ", "max_bytes": MAX_BYTES });
    plugin["realm"] = json!("robots");
    plugin["client_header"] = json!(CLIENT_HEADER);
    plugin["routes"] = json!([
        { "name": "status", "match": { "exact": "/status" }, "audience": "machine" },
        { "name": "reports", "match": { "route_name": "reports" }, "audience": "machine",
          "allow": [{ "identity": "reporter" }], "deny_status": 404 },
        { "name": "machine-api", "match": { "prefix": "/api/" }, "audience": "machine" }
    ]);
    plugin["default_audience"] = json!("human");
    plugin["flood_guard"] = json!({ "max_failures": 3, "window_seconds": 3600, "max_sources": 1 });
    // Enforced anomalies (the behaviour suite only flags them): one identity is taught
    // a route and a network, then refused on another of each.
    plugin["behaviour"] = json!({
        "interval_seconds": 1, "warmup_intervals": WARMUP_INTERVALS, "merge_seconds": 0.2,
        "anomalies": {
            "new_route": { "mode": "enforce" },
            "new_source": { "mode": "enforce", "status": 409 },
            "dormant_returned": { "mode": "enforce", "after_seconds": DORMANT_AFTER }
        }
    });
    plugin["quotas"] = json!({
        "default": { "requests": 10, "per_seconds": 3600, "burst": 3 },
        "rules": [{ "name": "bulk", "identities": ["bulk-*"], "requests": 10, "per_seconds": 3600 }]
    });
    plugin
}

struct Fields {
    stack: Stack,
    keys: &'static TestKeys,
}

impl Fields {
    fn token(&self, alg: Alg, key: &TestKey, sub: &str, extra: &[(&str, Value)]) -> String {
        let mut token = Token::new(alg)
            .kid(key.kid())
            .claim("iss", self.stack.issuer().unwrap())
            .claim("aud", self.stack.audience().unwrap())
            .claim("sub", sub);
        for (name, value) in extra {
            token = token.claim(name, value.clone());
        }
        token.sign(key).unwrap()
    }

    fn ec(&self, sub: &str) -> String {
        self.token(Alg::Es256, self.keys.by_type(KeyType::P256), sub, &[])
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        self.stack.get(path, headers).unwrap()
    }

    /// `path` with the token in the configured header and scheme.
    fn send(&self, path: &str, token: &str) -> Response {
        self.get(path, &[(TOKEN_HEADER, &format!("Token {token}"))])
    }

    /// [`Fields::send`] from another loopback address.
    fn send_from(&self, source: Ipv4Addr, path: &str, token: &str) -> Response {
        let auth = format!("Token {token}");
        http::request_from(
            IpAddr::V4(source),
            self.stack.envoy.listener_addr(),
            "GET",
            path,
            &[(TOKEN_HEADER, &auth)],
        )
        .unwrap()
    }
}

fn reason(response: &Response) -> String {
    response.body_json().ok().and_then(|b| b["reason"].as_str().map(str::to_owned)).unwrap_or_default()
}

/// The values of `name` the upstream (machine or web) echoed.
fn upstream_saw(response: &Response, name: &str) -> Vec<String> {
    upstream::echoed(&response.body_json().unwrap(), name)
}

#[test]
fn every_algorithm_and_the_fields_no_other_suite_sets_in_real_envoy() {
    let keys = TestKeys::shared().unwrap();
    let published = [KeyType::Rsa, KeyType::P256, KeyType::P384, KeyType::Ed25519].map(|t| keys.by_type(t));
    let stack = Stack::start_with(
        JwksBehaviour::serve(&keys::jwks(published)),
        EnvoyOptions::new().config(bootstrap()).plugin_configuration(plugin()),
    )
    .unwrap();
    let mut fields = Fields { stack, keys };
    let warmup = fields.ec("warmup");
    fields
        .stack
        .envoy
        .wait_until("keys", std::time::Duration::from_secs(20), |envoy| {
            let response =
                envoy.request("GET", "/api/ready", &[(TOKEN_HEADER, &format!("Token {warmup}"))])?;
            Ok(response.status != 503)
        })
        .unwrap();
    let fields = &fields;

    // ---- Every supported algorithm (the shipped config lists five of them) ----------
    for (alg, key_type) in [
        (Alg::Rs256, KeyType::Rsa),
        (Alg::Rs384, KeyType::Rsa),
        (Alg::Rs512, KeyType::Rsa),
        (Alg::Ps256, KeyType::Rsa),
        (Alg::Ps384, KeyType::Rsa),
        (Alg::Ps512, KeyType::Rsa),
        (Alg::Es256, KeyType::P256),
        (Alg::Es384, KeyType::P384),
        (Alg::EdDsa, KeyType::Ed25519),
    ] {
        let sub = format!("alg-{}", alg.name().to_lowercase());
        let response = fields.send("/api/alg", &fields.token(alg, keys.by_type(key_type), &sub, &[]));
        assert_eq!(response.status, 200, "{}: {}", alg.name(), response.body_text());
        assert_eq!(upstream_saw(&response, "x-nhi-identity"), [sub.as_str()], "{}", alg.name());
        // client_header: the configured name, not x-nhi-client (default).
        assert_eq!(upstream_saw(&response, CLIENT_HEADER), ["machine"], "{}", alg.name());
        assert!(upstream_saw(&response, "x-nhi-client").is_empty());
        // token.header: the credential header is removed before the upstream.
        assert!(upstream_saw(&response, TOKEN_HEADER).is_empty());
    }

    // ---- token.header, token.prefix, realm ------------------------------------------
    let token = fields.ec("header-check");
    // The default header (authorization) is not read: no token at all.
    let response = fields.get("/api/x", &[("authorization", &format!("Bearer {token}"))]);
    assert_eq!((response.status, reason(&response).as_str()), (401, "missing_token"));
    assert_eq!(response.header("www-authenticate"), Some(r#"Bearer realm="robots""#), "realm");
    // Another scheme in the configured header holds no token (default: `Bearer `
    // would be read) ...
    let response = fields.get("/api/x", &[(TOKEN_HEADER, "Basic dXNlcjpwdw==")]);
    assert_eq!((response.status, reason(&response).as_str()), (401, "missing_token"));
    // ... unless what it holds is one of our issuers' tokens: that is refused as
    // malformed, never treated as someone else's credential.
    let response = fields.get("/api/x", &[(TOKEN_HEADER, &format!("Bearer {token}"))]);
    assert_eq!((response.status, reason(&response).as_str()), (401, "malformed_token"));
    // The scheme is matched case-insensitively.
    let response = fields.get("/api/x", &[(TOKEN_HEADER, &format!("tOKEN {token}"))]);
    assert_eq!(response.status, 200, "{}", response.body_text());

    // ---- token.max_bytes (default 8192) -------------------------------------------------
    let ec = keys.by_type(KeyType::P256);
    let sized = |pad: usize| fields.token(Alg::Es256, ec, "sized", &[("pad", json!("x".repeat(pad)))]);
    let (mut small, mut large) = (sized(0), sized(0));
    for pad in 0..MAX_BYTES {
        let token = sized(pad);
        if token.len() <= MAX_BYTES {
            small = token;
        } else {
            large = token;
            break;
        }
    }
    assert_eq!((small.len() <= MAX_BYTES, large.len() > MAX_BYTES), (true, true));
    assert_eq!(fields.send("/api/sized", &small).status, 200, "a token of {} bytes", small.len());
    let response = fields.send("/api/sized", &large);
    assert_eq!(
        (response.status, reason(&response).as_str()),
        (401, "malformed_token"),
        "{} bytes",
        large.len()
    );

    // ---- client_header on a human request: the client's copy is replaced ---------------
    let response = fields.get("/elsewhere", &[(CLIENT_HEADER, "machine")]);
    assert_eq!(response.status, 200);
    assert_eq!(upstream_saw(&response, CLIENT_HEADER), ["human"]);
    assert_eq!(fields.stack.web.hits_for("/elsewhere"), 1, "a human request goes to the web backend");

    // ---- match.exact and default_audience -------------------------------------------
    // /status is the exact route (machine): no token is refused.
    let response = fields.get("/status", &[]);
    assert_eq!((response.status, reason(&response).as_str()), (401, "missing_token"));
    // /status/more is not (a prefix would match it): no route, so default_audience
    // (human) applies, and a person passes (default machine: 401).
    assert_eq!(fields.get("/status/more", &[]).status, 200);
    // ... and a machine token on an unmatched path is refused as on any human route.
    let response = fields.send("/elsewhere", &fields.ec("default-audience"));
    assert_eq!((response.status, reason(&response).as_str()), (403, "machine_on_human_route"));

    // ---- match.route_name and deny_status ---------------------------------------------
    // Envoy's route `reports` selects the policy whatever the path looks like.
    let response = fields.send("/reports/q1", &fields.ec("reporter"));
    assert_eq!(response.status, 200, "{}", response.body_text());
    let someone = fields.ec("someone");
    let response = fields.send("/reports/q1", &someone);
    // not_allowed with the route's deny_status (default 403), and no challenge.
    assert_eq!((response.status, reason(&response).as_str()), (404, "not_allowed"));
    assert!(response.header("www-authenticate").is_none());
    assert_eq!(fields.stack.upstream.hits_for("/reports/q1"), 1, "only the reporter reached it");
    // The same identity elsewhere: the allow rule is the reports route's alone.
    assert_eq!(fields.send("/api/reports", &someone).status, 200);

    // ---- quotas.default.burst ---------------------------------------------------------
    // 10 per hour, at most 3 at once: the 4th request in a row is refused (one request
    // is earned every 360 s). Without burst, all 10 would pass at once (the rule below).
    let burst = fields.ec("burst-a");
    let statuses: Vec<u16> = (0..5).map(|_| fields.send("/api/burst", &burst).status).collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let refused = fields.send("/api/burst", &burst);
    assert_eq!(refused.header("ratelimit-policy"), Some(r#""default";q=10;w=3600"#));
    assert_eq!(reason(&refused), "quota_exceeded");
    let bulk = fields.ec("bulk-1");
    let statuses: Vec<u16> = (0..11).map(|_| fields.send("/api/bulk", &bulk).status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 10, "{statuses:?}");
    assert_eq!(statuses[10], 429);

    // ---- flood_guard.max_sources ------------------------------------------------------
    // One slot: the first source to exhaust its budget (3) holds it, and is refused
    // without a signature check. A second source maps to the same slot: it is not
    // tracked while the flooder holds it, so it is never blocked (with the default
    // 4096 slots it would have its own, and be refused after 3 like the first).
    let forged = mint::tamper_signature(&fields.ec("forger")).unwrap();
    let from = |last: u8| {
        let response = fields.send_from(Ipv4Addr::new(127, 31, 0, last), "/api/forged", &forged);
        (response.status, reason(&response))
    };
    let bad = (401, "bad_signature".to_owned());
    let flooded = (429, "too_many_failures".to_owned());
    let first: Vec<_> = (0..4).map(|_| from(1)).collect();
    assert_eq!(first, [bad.clone(), bad.clone(), bad.clone(), flooded.clone()]);
    let second: Vec<_> = (0..6).map(|_| from(2)).collect();
    assert!(second.iter().all(|answer| *answer == bad), "the untracked source: {second:?}");
    assert_eq!(from(1), flooded, "the flooder keeps its slot");

    // ---- behaviour.anomalies.<kind>.mode enforce, and status ---------------------------
    // `bulk-learner` (the bulk quota: room for its 9 requests) calls machine-api from
    // 127.0.0.1 in twice the warm-up's intervals; a request to a route class it never
    // used is then refused (403 anomaly_new_route), as is one from a network it never
    // came from (the configured 409). Nothing is learned before the warm-up ends
    // without being flagged, so the learner never touches /status before.
    // `bulk-sleeper` learns beside it, then stays silent for longer than
    // DORMANT_AFTER seconds: its next request is refused (403 anomaly_dormant_returned).
    let (learner, sleeper) = (fields.ec("bulk-learner"), fields.ec("bulk-sleeper"));
    let mut sleeper_seen = std::time::Instant::now();
    for _ in 0..2 * WARMUP_INTERVALS {
        assert_eq!(fields.send("/api/learn", &learner).status, 200);
        let response = fields.send("/api/learn", &sleeper);
        assert_eq!(response.status, 200, "{}", response.body_text());
        sleeper_seen = std::time::Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(1_050));
    }
    let response = fields.send("/status", &learner);
    assert_eq!(
        (response.status, reason(&response).as_str()),
        (403, "anomaly_new_route"),
        "{}",
        response.body_text()
    );
    let response = fields.send_from(Ipv4Addr::new(127, 32, 0, 1), "/api/learn", &learner);
    assert_eq!((response.status, reason(&response).as_str()), (409, "anomaly_new_source"));
    assert_eq!(fields.send("/api/learn", &learner).status, 200, "its own route and network still pass");
    // Silent for DORMANT_AFTER seconds and one interval more (the baseline's last-seen
    // time is kept at the merge).
    let silence = std::time::Duration::from_secs(DORMANT_AFTER + 1);
    std::thread::sleep(silence.saturating_sub(sleeper_seen.elapsed()));
    let response = fields.send("/api/learn", &sleeper);
    assert_eq!((response.status, reason(&response).as_str()), (403, "anomaly_dormant_returned"));
}
