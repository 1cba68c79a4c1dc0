//! Memory and state stay bounded under a stream of distinct identities and distinct
//! invalid tokens, in a real Envoy: the quota table, the token cache and the
//! per-identity metric labels all have fixed sizes, and failures create no state.
//!
//! `NHI_STATE_N` sets how many distinct valid identities and as many distinct
//! invalid tokens are sent (default 6 000 each in `make test`; 100 000 makes a longer
//! run). Envoy's heap (`/memory`) must stop
//! growing: the second half of the stream may not grow it by more than a small,
//! fixed margin, whatever N is.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::net::SocketAddr;
use std::thread;

use serde_json::json;
use test_harness::envoy::EnvoyOptions;
use test_harness::envoy_config::EnvoyConfig;
use test_harness::http;
use test_harness::jwks_server::JwksBehaviour;
use test_harness::keys::{self, KeyType, TestKeys};
use test_harness::mint::{self, Alg, Token};
use test_harness::stack::Stack;

const CLIENTS: usize = 8;
/// Heap growth allowed over the second half of the stream (allocator noise, V8).
const SECOND_HALF_GROWTH_LIMIT: i64 = 8 * 1024 * 1024;

fn heap(stack: &Stack) -> i64 {
    let memory: serde_json::Value =
        serde_json::from_str(&stack.envoy.admin_text("/memory").unwrap()).unwrap();
    memory["allocated"].as_str().unwrap().parse().unwrap()
}

fn send_all(addr: SocketAddr, tokens: Vec<String>, expect: u16) {
    let chunks: Vec<Vec<String>> =
        tokens.chunks(tokens.len().div_ceil(CLIENTS)).map(<[String]>::to_vec).collect();
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            thread::spawn(move || {
                for token in chunk {
                    let auth = format!("Bearer {token}");
                    let status = http::request(addr, "GET", "/api/bounds", &[("authorization", &auth)])
                        .unwrap()
                        .status;
                    assert_eq!(status, expect);
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
}

#[test]
fn distinct_identities_and_invalid_tokens_do_not_grow_state() {
    let n: usize = std::env::var("NHI_STATE_N").ok().and_then(|v| v.parse().ok()).unwrap_or(6_000);
    let key = TestKeys::shared().unwrap().by_type(KeyType::Ed25519);
    let mut plugin = EnvoyConfig::shipped().unwrap().plugin_configuration().unwrap();
    plugin["quotas"] =
        json!({ "default": { "requests": 1000, "per_seconds": 60 }, "max_tracked_identities": 1000 });
    plugin["token_cache"] = json!({ "max_entries": 1024 });
    plugin["metrics"] = json!({ "max_identities": 100 });
    plugin["decision_log"] = json!({ "allowed_sample_rate": 0.0 });
    // Every forged token must reach the signature check (the failure path is what is
    // measured): the flood guard would refuse all but the first 100 without one.
    plugin["flood_guard"] = json!({ "enabled": false });
    let mut stack = Stack::start_with(
        JwksBehaviour::serve(&keys::jwks([key])),
        EnvoyOptions::new().plugin_configuration(plugin).log_level("warning"),
    )
    .unwrap();
    let addr = stack.envoy.listener_addr();
    let (iss, aud) = (stack.issuer().unwrap().to_owned(), stack.audience().unwrap().to_owned());
    let token = |sub: String| {
        Token::new(Alg::EdDsa)
            .kid(key.kid())
            .claim("iss", iss.as_str())
            .claim("aud", aud.as_str())
            .claim("sub", sub)
            // A long stream outlives the default five minutes.
            .claim("exp", mint::now() + 3_600)
            .sign(key)
            .unwrap()
    };
    stack.wait_for_keys(&token("warmup".into())).unwrap();
    let start = heap(&stack);

    let half = n / 2;
    let valid: Vec<String> = (0..n).map(|i| token(format!("robot-{i}"))).collect();
    let invalid: Vec<String> = valid.iter().map(|t| mint::tamper_signature(t).unwrap()).collect();
    send_all(addr, valid[..half].to_vec(), 200);
    send_all(addr, invalid[..half].to_vec(), 401);
    let middle = heap(&stack);
    send_all(addr, valid[half..].to_vec(), 200);
    send_all(addr, invalid[half..].to_vec(), 401);
    let end = heap(&stack);

    println!(
        "{n} distinct identities + {n} invalid tokens: Envoy heap {:.1} MB at start, {:.1} MB after half, {:.1} MB at the end \
         (second half: {:+.2} MB)",
        start as f64 / 1e6,
        middle as f64 / 1e6,
        end as f64 / 1e6,
        (end - middle) as f64 / 1e6
    );
    assert!(
        end - middle < SECOND_HALF_GROWTH_LIMIT,
        "state grows with traffic: {:+} bytes over the second half",
        end - middle
    );
    // The metric label bound held: at most 100 identity series plus `other`.
    let scrape = stack.envoy.admin_text("/stats/prometheus").unwrap();
    let labelled = scrape.lines().filter(|l| l.starts_with("nhi_identity_requests_total{")).count();
    assert!(labelled <= 101, "{labelled} identity series");
}
