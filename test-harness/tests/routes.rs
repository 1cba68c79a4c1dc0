//! Machine routes apart from human routes, in a real Envoy: the filter sets
//! `x-nhi-client` and Envoy re-selects the route (two backends), route classes,
//! allow rules, source CIDRs (client bound to 127.0.0.2), jti revocation, shadow mode.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr};

use serde_json::{json, Value};
use test_harness::envoy::EnvoyOptions;
use test_harness::envoy_config::EnvoyConfig;
use test_harness::http::{self, Response};
use test_harness::jwks_server::JwksBehaviour;
use test_harness::keys::{self, KeyType, TestKeys};

use test_harness::stack::Stack;

fn start(plugin: Option<Value>) -> Stack {
    let keys = TestKeys::shared().unwrap();
    let jwks = keys::jwks([keys.by_type(KeyType::P256)]);
    let mut options = EnvoyOptions::new();
    if let Some(plugin) = plugin {
        options = options.plugin_configuration(plugin);
    }
    let mut stack = Stack::start_with(JwksBehaviour::serve(&jwks), options).unwrap();
    let warmup = token(&stack, "warmup", &[]);
    stack.wait_for_keys(&warmup).unwrap();
    stack
}

fn token(stack: &Stack, sub: &str, extra: &[(&str, Value)]) -> String {
    stack.token(TestKeys::shared().unwrap().by_type(KeyType::P256), sub, extra).unwrap()
}

fn send(stack: &Stack, method: &str, path: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Response {
    let authorization = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = extra.to_vec();
    if let Some(a) = &authorization {
        headers.push(("authorization", a));
    }
    http::request(stack.envoy.listener_addr(), method, path, &headers).unwrap()
}

fn backend(response: &Response) -> String {
    response.body_json().map(|b| b["backend"].as_str().unwrap_or_default().to_owned()).unwrap_or_default()
}

fn echoed(response: &Response, header: &str) -> Option<String> {
    response.body_json().ok().and_then(|b| b["headers"][header].as_str().map(str::to_owned))
}

fn reason(response: &Response) -> String {
    response.body_json().map(|b| b["reason"].as_str().unwrap_or_default().to_owned()).unwrap_or_default()
}

#[test]
fn shipped_config_splits_machine_and_human_traffic() {
    let stack = start(None);
    let machine = token(&stack, "system:serviceaccount:ci:deployer", &[]);

    // A verified machine identity on the machine route reaches the machine backend.
    let r = send(&stack, "GET", "/api/orders", Some(&machine), &[("x-nhi-client", "human")]);
    assert_eq!(r.status, 200);
    assert_eq!(backend(&r), "machine");
    assert_eq!(echoed(&r, "x-nhi-client").as_deref(), Some("machine"));
    assert_eq!(r.header("cache-control"), Some("no-store"), "machine route headers");
    assert_eq!(echoed(&r, "authorization"), None, "a verified token is not passed upstream by default");

    // No token on the machine route: 401, no backend reached.
    let r = send(&stack, "GET", "/api/orders", None, &[("x-nhi-client", "machine")]);
    assert_eq!(r.status, 401);
    assert_eq!(reason(&r), "missing_token");

    // People on the human route pass untouched to the web backend, even claiming to be machines.
    let r = send(
        &stack,
        "GET",
        "/web/index.html",
        None,
        &[("x-nhi-client", "machine"), ("x-nhi-identity", "root")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(backend(&r), "web", "a spoofed x-nhi-client must not select the machine route");
    assert_eq!(echoed(&r, "x-nhi-client").as_deref(), Some("human"));
    assert_eq!(echoed(&r, "x-nhi-identity"), None, "forged identity header removed");

    // Header names with underscores never reach a backend: CGI/WSGI-style servers read
    // `x_nhi_identity` as `x-nhi-identity`. The shipped HCM refuses such a request itself
    // (headers_with_underscores_action: REJECT_REQUEST), before any filter runs.
    let (web_before, machine_before) = (stack.web.hits(), stack.upstream.hits());
    let r = send(
        &stack,
        "GET",
        "/web/underscored",
        None,
        &[("x_nhi_identity", "admin-bot"), ("x_nhi_client", "machine")],
    );
    assert_eq!(r.status, 400, "Envoy must refuse underscored header names: {}", r.body_text());
    assert_eq!(
        (stack.web.hits(), stack.upstream.hits()),
        (web_before, machine_before),
        "the refused request reached a backend: {:?}",
        stack.web.received_for("/web/underscored")
    );
    let rejected = stack.envoy.admin_text("/stats?filter=^http1.requests_rejected_with_underscores").unwrap();
    assert_eq!(rejected.trim(), "http1.requests_rejected_with_underscores_in_headers: 1", "Envoy refused it");

    // A path that reads as another route once normalized is refused before any
    // backend sees it: the web backend (or a proxy behind it) might normalize it into
    // the machine API. Envoy passes these through as sent (no normalize_path here).
    for path in ["/web/..%2Fapi/orders", "/web/../api/orders", "/api//../web/x"] {
        let (web_before, machine_before) = (stack.web.hits(), stack.upstream.hits());
        let r = send(&stack, "GET", path, None, &[]);
        assert_eq!((r.status, reason(&r).as_str()), (400, "ambiguous_path"), "{path}: {}", r.body_text());
        assert_eq!((stack.web.hits(), stack.upstream.hits()), (web_before, machine_before), "{path}");
    }

    // A machine credential never wanders into a human path.
    let r = send(&stack, "GET", "/web/index.html", Some(&machine), &[]);
    assert_eq!(r.status, 403);
    assert_eq!(reason(&r), "machine_on_human_route");
    assert_eq!(r.body_json().unwrap()["route"], "web");
    assert_eq!(
        stack.web.hits_for("/web/index.html"),
        1,
        "only the tokenless request reached the web backend"
    );
}

fn policy_plugin() -> Value {
    let mut plugin = EnvoyConfig::shipped().unwrap().plugin_configuration().unwrap();
    plugin["routes"] = json!([
        { "name": "deploy-api", "match": { "prefix": "/api/deploy/", "methods": ["POST"] },
          "audience": "machine", "allow": [ { "identity": "ci-deployer" }, { "claim": "scope", "contains": "deploy:write" } ] },
        { "name": "partner", "match": { "prefix": "/partner/" },
          "audience": "machine", "source_cidrs": ["127.0.0.2/32", "::1/128"] },
        { "name": "canary", "match": { "prefix": "/canary/" }, "audience": "machine", "mode": "shadow",
          "allow": [ { "identity": "ci-deployer" } ] },
        { "name": "both", "match": { "prefix": "/both/" }, "audience": "any" },
        { "name": "web", "match": { "prefix": "/" }, "audience": "human" }
    ]);
    plugin["deny"] = json!({ "jti": ["revoked-1"], "subjects": ["banned-*"] });
    plugin["token"]["forward"] = json!(true);
    plugin
}

#[test]
fn route_policies_in_real_envoy() {
    let stack = start(Some(policy_plugin()));
    let deployer = token(&stack, "ci-deployer", &[]);
    let scoped = token(&stack, "release-bot", &[("scope", json!("read deploy:write"))]);
    let other = token(&stack, "intruder", &[]);

    // Allow rules: by identity, or by a claim in a space-separated scope.
    let ok = send(&stack, "POST", "/api/deploy/x", Some(&deployer), &[]);
    assert_eq!(ok.status, 200);
    assert_eq!(echoed(&ok, "authorization"), Some(format!("Bearer {deployer}")), "token.forward: true");
    assert_eq!(send(&stack, "POST", "/api/deploy/x", Some(&scoped), &[]).status, 200);
    let refused = send(&stack, "POST", "/api/deploy/x", Some(&other), &[]);
    assert_eq!(refused.status, 403);
    assert_eq!(reason(&refused), "not_allowed");
    assert_eq!(refused.body_json().unwrap()["route"], "deploy-api");
    assert!(
        refused.header("www-authenticate").unwrap().contains(r#"error="insufficient_scope""#),
        "{:?}",
        refused.header("www-authenticate")
    );
    // GET does not match deploy-api (POST only); it falls through to the human route: a token there is refused.
    assert_eq!(reason(&send(&stack, "GET", "/api/deploy/x", Some(&deployer), &[])), "machine_on_human_route");

    // Source CIDRs: the partner route admits 127.0.0.2 only.
    let partner = format!("Bearer {}", token(&stack, "partner-a", &[]));
    let from = |ip: [u8; 4]| {
        http::request_from(
            IpAddr::V4(Ipv4Addr::from(ip)),
            stack.envoy.listener_addr(),
            "GET",
            "/partner/orders",
            &[("authorization", &partner)],
        )
        .unwrap()
    };
    let allowed = from([127, 0, 0, 2]);
    assert_eq!(allowed.status, 200, "{}", allowed.body_text());
    let blocked = from([127, 0, 0, 1]);
    assert_eq!(blocked.status, 403);
    assert_eq!(reason(&blocked), "source_not_allowed");
    // A client cannot claim another source with x-forwarded-for (use_remote_address).
    let spoofed = http::request(
        stack.envoy.listener_addr(),
        "GET",
        "/partner/orders",
        &[("authorization", &partner), ("x-forwarded-for", "127.0.0.2")],
    )
    .unwrap();
    assert_eq!((spoofed.status, reason(&spoofed)), (403, "source_not_allowed".to_owned()));

    // Revoked token id: 401 everywhere; denied subject: 403.
    let revoked = token(&stack, "ci-deployer", &[("jti", json!("revoked-1"))]);
    let r = send(&stack, "POST", "/api/deploy/x", Some(&revoked), &[]);
    assert_eq!((r.status, reason(&r)), (401, "token_revoked".to_owned()));
    let banned = token(&stack, "banned-bot", &[]);
    let r = send(&stack, "GET", "/both/x", Some(&banned), &[]);
    assert_eq!((r.status, reason(&r)), (403, "subject_denied".to_owned()));

    // Shadow mode: the request enforce mode would refuse passes, and says so upstream.
    let r = send(&stack, "GET", "/canary/x", Some(&other), &[("x-nhi-shadow-decision", "allow")]);
    assert_eq!(r.status, 200);
    assert_eq!(
        echoed(&r, "x-nhi-shadow-decision").as_deref(),
        Some("deny; status=403; reason=not_allowed; route=canary")
    );
    let r = send(&stack, "GET", "/canary/x", Some(&deployer), &[]);
    assert_eq!(echoed(&r, "x-nhi-shadow-decision").as_deref(), Some("allow; route=canary"));

    // Same path, two clients, two backends: Envoy re-selected the route after the filter.
    let machine = send(&stack, "GET", "/both/report", Some(&deployer), &[]);
    let human = send(&stack, "GET", "/both/report", None, &[("x-nhi-client", "machine")]);
    assert_eq!((machine.status, backend(&machine)), (200, "machine".to_owned()));
    assert_eq!((human.status, backend(&human)), (200, "web".to_owned()));
}
