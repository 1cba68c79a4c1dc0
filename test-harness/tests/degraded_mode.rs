//! The degraded (APISIX) mode in a real Envoy with two workers, forced with
//! `"host": "apisix"`: the filter must not use shared data, timers or root-context
//! callouts, so each VM fetches its keys from the request that needs them and keeps
//! its own quotas. (The emulator suite runs the same mode on hosts that really lack
//! those calls; this checks it against a real proxy and a real key server.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_harness::envoy::EnvoyOptions;
use test_harness::envoy_config::EnvoyConfig;
use test_harness::http;
use test_harness::jwks_server::JwksBehaviour;
use test_harness::keys::{self, KeyType, TestKeys};
use test_harness::mint;
use test_harness::stack::Stack;

const QUOTA: usize = 10;

fn plugin(host: &str) -> Value {
    let mut plugin = EnvoyConfig::shipped().unwrap().plugin_configuration().unwrap();
    plugin["host"] = json!(host);
    plugin["quotas"] = json!({
        "default": { "requests": QUOTA, "per_seconds": 3600 },
        "max_tracked_identities": 100,
        "response_headers": true
    });
    plugin["issuers"][0]["jwks"]["refresh_seconds"] = json!(3);
    plugin
}

/// `n` requests with `token` from 4 parallel clients; counts statuses.
fn statuses(stack: &Stack, token: &str, n: usize) -> BTreeMap<u16, usize> {
    http::bearer_status_counts(stack.envoy.listener_addr(), "/api/degraded", token, 4, n).unwrap()
}

#[test]
fn forced_apisix_mode_fetches_keys_on_request_and_keeps_quotas_per_vm() {
    let keys = TestKeys::shared().unwrap();
    let ec = keys.by_type(KeyType::P256);
    let stack = Stack::start_with(
        JwksBehaviour::serve(&keys::jwks([ec])),
        EnvoyOptions::new().plugin_configuration(plugin("apisix")),
    )
    .unwrap();
    let log = stack.envoy.log();
    assert!(
        log.contains(
            "host capabilities: shared_data=yes timers=yes clock=yes; host: apisix -> mode degraded"
        ),
        "start-up line missing:\n{}",
        stack.envoy.log_tail(40)
    );
    // No background fetch: nothing asks for keys until a request does.
    thread::sleep(Duration::from_millis(1_500));
    assert_eq!(stack.jwks.hits(), 0, "a root context fetched keys in the degraded mode");

    // The first request fetches (from its own context) and is decided with the keys.
    let token = stack.token(ec, mint::DEFAULT_SUBJECT, &[]).unwrap();
    let first = stack.get("/api/degraded", &[("authorization", &format!("Bearer {token}"))]).unwrap();
    assert_eq!(first.status, 200, "{}", String::from_utf8_lossy(&first.body));
    assert_eq!(first.body_json().unwrap()["headers"]["x-nhi-identity"], mint::DEFAULT_SUBJECT);

    // The other worker fetches its own keys on the first request it takes; requests
    // it takes meanwhile get 503 keys_unavailable (no timer could wake them). Warm
    // both with another identity, so that the quota below is measured on loaded keys.
    let warm = stack.token(ec, "warm-up", &[]).unwrap();
    for _ in 0..10 {
        if stack.jwks.hits() >= 2 {
            break;
        }
        let counts = statuses(&stack, &warm, 40);
        let unexpected = counts.keys().filter(|s| ![200, 429, 503].contains(*s)).count();
        assert_eq!(unexpected, 0, "warming up: {counts:?}");
    }
    assert_eq!(stack.jwks.hits(), 2, "each of the 2 workers fetches its own keys, once");

    // Quotas per VM: with two workers the identity gets between one and two budgets.
    let counts = statuses(&stack, &token, 80);
    let admitted = counts.get(&200).copied().unwrap_or(0) + 1;
    println!("degraded mode, limit {QUOTA} per VM, 2 workers: {counts:?} (+1 first request)");
    assert!((QUOTA..=2 * QUOTA).contains(&admitted), "admitted {admitted}: {counts:?}");
    assert_eq!(
        counts.get(&200).copied().unwrap_or(0) + counts.get(&429).copied().unwrap_or(0),
        80,
        "{counts:?}"
    );
    let hits = stack.jwks.hits();

    // Keys due for refresh are refreshed by a request (refresh_seconds = 3).
    let started = Instant::now();
    while stack.jwks.hits() == hits && started.elapsed() < Duration::from_secs(10) {
        let other = stack.token(ec, &format!("refresher-{}", started.elapsed().as_millis()), &[]).unwrap();
        assert_eq!(
            stack.get("/api/degraded", &[("authorization", &format!("Bearer {other}"))]).unwrap().status,
            200
        );
        thread::sleep(Duration::from_millis(200));
    }
    assert!(stack.jwks.hits() > hits, "keys were never refreshed on request");
}

#[test]
fn forced_apisix_mode_answers_503_while_the_key_server_is_down_then_recovers() {
    let keys = TestKeys::shared().unwrap();
    let ec = keys.by_type(KeyType::P256);
    let stack = Stack::start_with(
        JwksBehaviour::fail(503),
        EnvoyOptions::new().plugin_configuration(plugin("apisix")),
    )
    .unwrap();
    let token = stack.token(ec, mint::DEFAULT_SUBJECT, &[]).unwrap();
    let down = stack.get("/api/degraded", &[("authorization", &format!("Bearer {token}"))]).unwrap();
    assert_eq!(down.status, 503, "{}", String::from_utf8_lossy(&down.body));
    assert_eq!(down.body_json().unwrap()["reason"], "keys_unavailable");
    stack.jwks.set_behaviour(JwksBehaviour::serve(&keys::jwks([ec])));
    // Backoff after failures: within a few seconds a request fetches again and passes.
    let started = Instant::now();
    let mut status = 0;
    while started.elapsed() < Duration::from_secs(15) {
        status = stack.get("/api/degraded", &[("authorization", &format!("Bearer {token}"))]).unwrap().status;
        if status == 200 {
            break;
        }
        thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(status, 200, "never recovered after the key server came back");
}

#[test]
fn auto_mode_in_envoy_is_the_full_mode() {
    let keys = TestKeys::shared().unwrap();
    let ec = keys.by_type(KeyType::P256);
    let mut stack = Stack::start_with(
        JwksBehaviour::serve(&keys::jwks([ec])),
        EnvoyOptions::new().plugin_configuration(plugin("auto")),
    )
    .unwrap();
    let token = stack.token(ec, mint::DEFAULT_SUBJECT, &[]).unwrap();
    stack.wait_for_keys(&token).unwrap();
    assert!(
        stack
            .envoy
            .log()
            .contains("host capabilities: shared_data=yes timers=yes clock=yes; host: auto -> mode full"),
        "{}",
        stack.envoy.log_tail(40)
    );
    // Shared quotas: exactly one budget across both workers.
    let counts = statuses(&stack, &token, 40);
    let admitted = counts.get(&200).copied().unwrap_or(0) + 1; // + the wait_for_keys request
    assert_eq!(admitted, QUOTA, "{counts:?}");
}
