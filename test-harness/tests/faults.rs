//! Fault injection in a real Envoy: the key server refusing connections, redirecting,
//! sending truncated JSON or 10 MB; the upstream resetting connections. In every
//! case: nothing is passed unverified, the last good keys keep serving, and the
//! filter (its VM) survives.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::io::Read;
use std::net::{Shutdown, TcpListener};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use test_harness::envoy::EnvoyOptions;
use test_harness::envoy_config::EnvoyConfig;
use test_harness::jwks_server::{JwksBehaviour, JwksServer};
use test_harness::keys::{self, KeyType, TestKeys};
use test_harness::mint::{self, Alg, Token};
use test_harness::stack::Stack;

fn plugin(refresh_seconds: u64, max_stale_seconds: u64) -> Value {
    let mut plugin = EnvoyConfig::shipped().unwrap().plugin_configuration().unwrap();
    plugin["issuers"][0]["jwks"]["refresh_seconds"] = refresh_seconds.into();
    plugin["issuers"][0]["jwks"]["max_stale_seconds"] = max_stale_seconds.into();
    plugin["issuers"][0]["jwks"]["min_refetch_seconds"] = 1.into();
    plugin["issuers"][0]["jwks"]["timeout_ms"] = 500.into();
    plugin
}

/// A valid token and the same token with a forged signature.
fn tokens(stack: &Stack) -> (String, String) {
    let key = TestKeys::shared().unwrap().by_type(KeyType::P256);
    let valid = stack.token(key, mint::DEFAULT_SUBJECT, &[]).unwrap();
    (valid.clone(), mint::tamper_signature(&valid).unwrap())
}

fn status(stack: &Stack, path: &str, token: &str) -> u16 {
    stack.get(path, &[("authorization", &format!("Bearer {token}"))]).unwrap().status
}

/// For `duration`: the valid token keeps passing, the forged one never reaches the upstream.
fn holds_for(stack: &Stack, what: &str, duration: Duration, valid: &str, forged: &str) {
    let path = format!("/api/faults/{}", what.replace(' ', "-"));
    let started = Instant::now();
    while started.elapsed() < duration {
        assert_eq!(status(stack, &path, valid), 200, "valid token during {what}");
        assert_eq!(status(stack, &path, forged), 401, "forged token during {what}");
        thread::sleep(Duration::from_millis(100));
    }
    let reached = stack.upstream.received_for(&path).len();
    assert!(reached > 0);
    assert!(
        stack.upstream.received_for(&path).iter().all(|r| r.header("x-nhi-identity").is_some()),
        "every request that reached the upstream during {what} was verified"
    );
}

#[test]
fn key_server_faults_keep_the_last_good_keys_and_pass_nothing_unverified() {
    let keys = TestKeys::shared().unwrap();
    let good = keys::jwks([keys.by_type(KeyType::P256)]);
    let mut stack = Stack::start_with(
        JwksBehaviour::serve(&good),
        EnvoyOptions::new().plugin_configuration(plugin(1, 3_600)),
    )
    .unwrap();
    let (valid, forged) = tokens(&stack);
    stack.wait_for_keys(&valid).unwrap();

    let body = good.to_string();
    let faults = [
        (
            "truncated JSON",
            JwksBehaviour { status: 200, body: body[..body.len() / 2].to_owned(), delay: Duration::ZERO },
        ),
        (
            "10 MB body",
            JwksBehaviour { status: 200, body: "x".repeat(10 * 1024 * 1024), delay: Duration::ZERO },
        ),
        ("redirect", JwksBehaviour { status: 302, body: String::new(), delay: Duration::ZERO }),
        ("503", JwksBehaviour::fail(503)),
    ];
    for (what, behaviour) in faults {
        stack.jwks.set_behaviour(behaviour);
        stack.jwks.reset_hits();
        holds_for(&stack, what, Duration::from_millis(2_200), &valid, &forged);
        // The next attempt is at most one backoff (1 s + 50 % jitter) and a tick away
        // from the last one; a timer firing late on a loaded machine may add to that.
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while stack.jwks.hits() == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(stack.jwks.hits() >= 1, "the filter kept trying during {what}");
    }

    // Connection refused: the key server goes away entirely (its port closes).
    let gone = std::mem::replace(&mut stack.jwks, JwksServer::start(&good).unwrap());
    drop(gone);
    holds_for(&stack, "connection refused", Duration::from_millis(2_200), &valid, &forged);
}

#[test]
fn a_key_server_that_never_answered_means_503_not_200() {
    let stack =
        Stack::start_with(JwksBehaviour::fail(500), EnvoyOptions::new().plugin_configuration(plugin(1, 1)))
            .unwrap();
    let (valid, forged) = tokens(&stack);
    for token in [&valid, &forged] {
        let r = stack.get("/api/faults/never", &[("authorization", &format!("Bearer {token}"))]).unwrap();
        assert_eq!(r.status, 503, "{}", r.body_text());
        assert_eq!(r.body_json().unwrap()["reason"], "keys_unavailable");
    }
    assert_eq!(stack.upstream.hits(), 0);
}

#[test]
fn an_upstream_resetting_connections_does_not_hurt_the_filter() {
    // An "upstream" that reads the request and resets the connection.
    let resetter = TcpListener::bind("127.0.0.1:0").unwrap();
    let reset_addr = resetter.local_addr().unwrap();
    thread::spawn(move || {
        for stream in resetter.incoming().flatten() {
            let mut stream = stream;
            let mut buf = [0u8; 1024];
            let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
            let _ = stream.read(&mut buf);
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            let _ = stream.shutdown(Shutdown::Both);
        }
    });
    let keys = TestKeys::shared().unwrap();
    let good = keys::jwks([keys.by_type(KeyType::P256)]);
    let stack = Stack::start_with(
        JwksBehaviour::serve(&good),
        EnvoyOptions::new().plugin_configuration(plugin(300, 3_600)).cluster("upstream", reset_addr),
    )
    .unwrap();
    let (valid, forged) = tokens(&stack);
    // The usual probe (a valid token no longer getting 503) cannot work here: the
    // upstream resets, so Envoy answers 503. A forged token turns 401 once keys are in.
    let started = Instant::now();
    while status(&stack, "/api/faults/probe", &forged) != 401 {
        assert!(started.elapsed() < Duration::from_secs(20), "keys never loaded");
        thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..20 {
        let r = stack.get("/api/faults/reset", &[("authorization", &format!("Bearer {valid}"))]).unwrap();
        assert!(r.status == 502 || r.status == 503, "an upstream reset is Envoy's 5xx: {}", r.status);
        assert_eq!(status(&stack, "/api/faults/reset", &forged), 401, "refused before the upstream");
    }
    // The VM is alive and well: a route to a healthy backend still works.
    let r = stack.get("/web/after-resets", &[]).unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn a_forged_token_flood_from_one_source_is_cut_off_and_others_keep_working() {
    use std::net::{IpAddr, Ipv4Addr};
    let keys = TestKeys::shared().unwrap();
    let good = keys::jwks([keys.by_type(KeyType::P256)]);
    let mut plugin = plugin(300, 3_600);
    plugin["flood_guard"] = serde_json::json!({ "max_failures": 20, "window_seconds": 30 });
    let mut stack =
        Stack::start_with(JwksBehaviour::serve(&good), EnvoyOptions::new().plugin_configuration(plugin))
            .unwrap();
    let (valid, forged) = tokens(&stack);
    stack.wait_for_keys(&valid).unwrap();
    let addr = stack.envoy.listener_addr();
    let from = |last: u8, token: &str| {
        let auth = format!("Bearer {token}");
        test_harness::http::request_from(
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)),
            addr,
            "GET",
            "/api/flood",
            &[("authorization", &auth)],
        )
        .unwrap()
    };
    // The attacker's source verified one real token before (it is in the cache).
    assert_eq!(from(2, &valid).status, 200);

    let mut statuses = Vec::new();
    for _ in 0..60 {
        statuses.push(from(2, &forged).status);
    }
    let bad_signature = statuses.iter().filter(|s| **s == 401).count();
    let cut_off = statuses.iter().filter(|s| **s == 429).count();
    println!("forged flood from 127.0.0.2: {bad_signature} signature checks, then {cut_off} refused without crypto");
    assert_eq!(bad_signature, 20, "exactly the budget of failed signature checks: {statuses:?}");
    assert_eq!(cut_off, 40);

    let refused = from(2, &forged);
    assert_eq!(refused.status, 429);
    assert_eq!(refused.body_json().unwrap()["reason"], "too_many_failures");
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "retry-after {retry}");

    // The blocked source gets no crypto: a fresh (uncached) valid token is refused too,
    // while its cached one still passes.
    let key = keys.by_type(KeyType::P256);
    let fresh = Token::new(Alg::Es256)
        .kid(key.kid())
        .claim("iss", stack.issuer().unwrap())
        .claim("aud", stack.audience().unwrap())
        .claim("sub", "fresh")
        .sign(key)
        .unwrap();
    assert_eq!(from(2, &fresh).status, 429);
    // Nor can the flooder dodge the guard by claiming another address.
    let dodge = test_harness::http::request_from(
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        addr,
        "GET",
        "/api/flood",
        &[("authorization", &format!("Bearer {forged}")), ("x-forwarded-for", "198.51.100.9")],
    )
    .unwrap();
    assert_eq!(dodge.status, 429, "x-forwarded-for from a client is not trusted");
    assert_eq!(from(2, &valid).status, 200, "cached verification, no crypto");
    // Other sources are not affected.
    assert_eq!(from(1, &fresh).status, 200);
    assert_eq!(from(1, &forged).status, 401, "another source still gets its signature checks");
}
