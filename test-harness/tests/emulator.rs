//! nhi-guard's release wasm in the proxy-wasm host emulator: the scenario table under
//! every profile (Envoy-like, APISIX-like, APISIX with do-nothing calls), what is
//! specific to APISIX (keys fetched by requests, per-VM quotas, property names), and
//! the emulator's own guarantees (traps captured, APISIX crash paths recorded, ticks
//! only where the host has timers).
//!
//! Needs the release wasm (`make wasm`, or `NHI_WASM`). Runs in a few seconds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::time::Duration;

use serde_json::json;
use test_harness::emulator::{CalloutReply, Flow, Host, Profile, Request, UpstreamResponse};
use test_harness::keys::{KeyType, TestKeys};
use test_harness::mint::{self, Alg, Token};
use test_harness::scenarios::{Outcome, Table};

/// `issuers[0].jwks.cluster` per profile: an Envoy cluster, or nginx's `host:port`.
fn jwks_upstream(profile: Profile) -> &'static str {
    if profile.is_apisix() {
        "127.0.0.1:18080"
    } else {
        "jwks_demo"
    }
}

/// Runs the whole table on a fresh host; returns `(label, outcome)` per step and
/// fails listing every mismatch.
fn run_table(profile: Profile) -> Vec<(String, Outcome)> {
    let table = Table::new(jwks_upstream(profile)).unwrap();
    let mut host = Host::new(profile).unwrap();
    table.start(&mut host).unwrap();
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for step in table.steps() {
        let exchange =
            table.run_step(&mut host, step).unwrap_or_else(|err| panic!("{profile} {}: {err:#}", step.label));
        let outcome = Outcome::from_exchange(&exchange);
        let mismatches = step.expected(profile.shares_state()).mismatches(&outcome);
        if !mismatches.is_empty() {
            failures.push(format!("{profile} {}: {}", step.label, mismatches.join("; ")));
        }
        outcomes.push((step.label.clone(), outcome));
    }
    for (index, worker) in host.workers().iter().enumerate() {
        assert!(worker.trap().is_none(), "{profile} worker {index} trapped: {:?}", worker.trap());
        assert!(worker.violations().is_empty(), "{profile} worker {index}: {:?}", worker.violations());
        assert!(
            worker.unemulated_calls().is_empty(),
            "{profile} worker {index}: {:?}",
            worker.unemulated_calls()
        );
    }
    assert!(failures.is_empty(), "{} step(s) failed:\n{}", failures.len(), failures.join("\n"));
    outcomes
}

#[test]
fn scenario_table_under_the_envoy_profile() {
    let outcomes = run_table(Profile::Full);
    assert!(outcomes.len() >= 20, "{}", outcomes.len());
}

#[test]
fn scenario_table_under_the_apisix_profile() {
    run_table(Profile::ApisixLike);
}

#[test]
fn scenario_table_under_the_apisix_noop_profile() {
    run_table(Profile::ApisixNoop);
}

fn token(sub: &str) -> String {
    let key = TestKeys::shared().unwrap().by_type(KeyType::P256);
    let table = Table::new("x:1").unwrap();
    let iss = table.plugin["issuers"][0]["issuer"].as_str().unwrap().to_owned();
    let aud = table.plugin["issuers"][0]["audiences"][0].as_str().unwrap().to_owned();
    Token::new(Alg::Es256).claim("iss", iss).claim("aud", aud).claim("sub", sub).sign(key).unwrap()
}

/// APISIX: keys are fetched by the request that needs them, from the HTTP context,
/// at `host:port`; requests arriving while that fetch is in flight are refused with
/// 503 (the host has no timer to wake them later); the fetching request then goes on.
#[test]
fn apisix_fetches_keys_from_the_request_and_refuses_others_meanwhile() {
    for profile in [Profile::ApisixLike, Profile::ApisixNoop] {
        let table = Table::new(jwks_upstream(profile)).unwrap();
        let mut host = Host::new(profile).unwrap();
        let w = host.start_worker_json(&table.plugin).unwrap();
        let worker = host.worker(w).unwrap();
        assert!(worker.callouts().is_empty(), "{profile}: a callout from the root context");

        let first = worker.start_request(&Request::get("/api/first").bearer(&token("first"))).unwrap();
        assert_eq!(worker.stream(first).unwrap().flow, Flow::Paused, "{profile}");
        let callouts = worker.callouts();
        assert_eq!(callouts.len(), 1, "{profile}: {callouts:?}");
        assert_eq!(callouts[0].upstream, jwks_upstream(profile));
        assert_eq!(callouts[0].context, first, "{profile}: the callout belongs to the request");
        assert_eq!(callouts[0].header(":path"), Some("/jwks.json"));

        let second = worker.send(&Request::get("/api/second").bearer(&token("second"))).unwrap();
        assert_eq!(second.status, 503, "{profile}: {:?}", String::from_utf8_lossy(&second.body));
        assert_eq!(second.reason().as_deref(), Some("keys_unavailable"), "{profile}");

        let reply = table.answer(&callouts[0].upstream, callouts[0].header(":path"));
        worker.answer_callout(callouts[0].token, Some(reply)).unwrap();
        let first = worker.finish(first, &UpstreamResponse::ok()).unwrap();
        assert_eq!(first.status, 200, "{profile}: {:?}", String::from_utf8_lossy(&first.body));
        assert_eq!(first.upstream_header("x-nhi-identity"), Some("first"));

        let third = worker.send(&Request::get("/api/third").bearer(&token("third"))).unwrap();
        assert_eq!(third.status, 200, "{profile}");
        assert!(worker.callouts().is_empty(), "{profile}: keys are cached in the VM");
        assert!(worker.violations().is_empty(), "{profile}: {:?}", worker.violations());
    }
}

/// APISIX (no tick): an issuer located by OIDC discovery is fetched by the request
/// that needs its keys — the discovery document, then the JWKS it names, both
/// callouts of that request, which waits for both — and the keys then serve the
/// requests after it.
#[test]
fn apisix_discovers_the_keys_from_the_request() {
    for profile in [Profile::ApisixLike, Profile::ApisixNoop] {
        let mut table = Table::new(jwks_upstream(profile)).unwrap();
        let upstream = jwks_upstream(profile);
        let iss = table.plugin["issuers"][0]["issuer"].as_str().unwrap().to_owned();
        table.plugin["host"] = json!("apisix");
        table.plugin["issuers"][0]["jwks"] = json!({ "refresh_seconds": 300, "timeout_ms": 1000 });
        table.plugin["issuers"][0]["discovery"] = json!({ "cluster": upstream, "authority": "idp.example" });
        let mut host = Host::new(profile).unwrap();
        let w = host.start_worker_json(&table.plugin).unwrap();
        let worker = host.worker(w).unwrap();
        assert!(worker.configured(), "{profile}: {}", worker.log_text());

        let first = worker.start_request(&Request::get("/api/first").bearer(&token("first"))).unwrap();
        assert_eq!(worker.stream(first).unwrap().flow, Flow::Paused, "{profile}");
        let discovery = worker.callouts().pop().unwrap();
        assert_eq!(discovery.context, first, "{profile}: the callout belongs to the request");
        assert_eq!(discovery.upstream, upstream);
        assert_eq!(discovery.header(":path"), Some("/.well-known/openid-configuration"));
        assert_eq!(discovery.header(":authority"), Some("idp.example"));
        let document = json!({ "issuer": iss, "jwks_uri": "https://idp.example/jwks.json" });
        let reply = CalloutReply::new(200, document.to_string()).header("content-type", "application/json");
        worker.answer_callout(discovery.token, Some(reply)).unwrap();

        assert_eq!(worker.stream(first).unwrap().flow, Flow::Paused, "{profile}: waits for the keys too");
        let callouts = worker.callouts();
        assert_eq!(callouts.len(), 1, "{profile}: {callouts:?}");
        let jwks = &callouts[0];
        assert_eq!((jwks.context, jwks.upstream.as_str()), (first, upstream), "{profile}");
        assert_eq!(jwks.header(":path"), Some("/jwks.json"));
        worker.answer_callout(jwks.token, Some(table.answer(&jwks.upstream, jwks.header(":path")))).unwrap();
        let first = worker.finish(first, &UpstreamResponse::ok()).unwrap();
        assert_eq!(first.status, 200, "{profile}: {:?}", String::from_utf8_lossy(&first.body));
        assert_eq!(first.upstream_header("x-nhi-identity"), Some("first"));

        let second = worker.send(&Request::get("/api/second").bearer(&token("second"))).unwrap();
        assert_eq!(second.status, 200, "{profile}");
        assert!(worker.callouts().is_empty(), "{profile}: keys are cached in the VM");
        assert!(worker.violations().is_empty(), "{profile}: {:?}", worker.violations());
    }
}

/// A failed fetch answers the waiting request (503), and the next request may try
/// again once the backoff passes.
#[test]
fn apisix_failed_fetch_refuses_the_waiting_request() {
    let profile = Profile::ApisixLike;
    let table = Table::new(jwks_upstream(profile)).unwrap();
    let mut host = Host::new(profile).unwrap();
    let w = host.start_worker_json(&table.plugin).unwrap();
    let worker = host.worker(w).unwrap();
    let id = worker.start_request(&Request::get("/api/x").bearer(&token("x"))).unwrap();
    let callout = worker.callouts().pop().unwrap();
    worker.answer_callout(callout.token, Some(CalloutReply::new(500, "down"))).unwrap();
    let exchange = worker.finish(id, &UpstreamResponse::ok()).unwrap();
    assert_eq!(exchange.status, 503);
    assert_eq!(exchange.reason().as_deref(), Some("keys_unavailable"));
    assert!(worker.violations().is_empty(), "{:?}", worker.violations());
}

/// The scenario table with a first route `/internal/` open to 10.0.0.0/8 only.
fn table_with_internal_route(profile: Profile) -> Table {
    let mut table = Table::new(jwks_upstream(profile)).unwrap();
    let routes = table.plugin["routes"].as_array_mut().unwrap();
    routes.insert(
        0,
        json!({ "name": "internal", "match": { "prefix": "/internal/" }, "audience": "machine",
                "source_cidrs": ["10.0.0.0/8"] }),
    );
    table
}

/// Source addresses reach the filter under each host's property name: Envoy's
/// `source.address` (`ip:port`), nginx's `remote_addr` (`ip`).
#[test]
fn source_cidrs_see_the_client_address_under_every_profile() {
    for profile in Profile::ALL {
        let table = table_with_internal_route(profile);
        let mut host = Host::new(profile).unwrap();
        table.start(&mut host).unwrap();
        let inside =
            Request::get("/internal/a").bearer(&table.warmup_token).source("10.1.2.3:5555".parse().unwrap());
        let outside =
            Request::get("/internal/b").bearer(&table.warmup_token).source("192.0.2.1:5555".parse().unwrap());
        let refused = table.run_request(&mut host, 0, &outside).unwrap();
        assert_eq!(
            (refused.status, refused.reason().as_deref()),
            (403, Some("source_not_allowed")),
            "{profile}"
        );
        let allowed = table.run_request(&mut host, 0, &inside).unwrap();
        assert_eq!(allowed.status, 200, "{profile}: {:?}", String::from_utf8_lossy(&allowed.body));
    }
}

/// A source the route refuses is answered before anything about the token, even
/// with no keys loaded yet: no wait, no JWKS callout on its behalf. And the refusal
/// gets its decision line under every profile (APISIX never calls `on_log`).
#[test]
fn a_refused_source_is_answered_at_once_and_logged_under_every_profile() {
    for profile in Profile::ALL {
        let table = table_with_internal_route(profile);
        let mut host = Host::new(profile).unwrap();
        let index = host.start_worker_json(&table.plugin).unwrap();
        let worker = host.worker(index).unwrap();
        assert!(worker.configured(), "{profile}: {}", worker.log_text());
        let decision_lines =
            |w: &test_harness::emulator::Worker| w.log_text().matches("\"event\":\"nhi_decision\"").count();
        let before = decision_lines(worker);
        let outside =
            Request::get("/internal/b").bearer(&table.warmup_token).source("192.0.2.1:5555".parse().unwrap());
        let refused = worker.send(&outside).unwrap();
        assert_eq!(
            (refused.status, refused.reason().as_deref()),
            (403, Some("source_not_allowed")),
            "{profile}"
        );
        assert!(worker.callouts().is_empty(), "{profile}: a callout for a refused source");
        assert_eq!(decision_lines(worker), before + 1, "{profile}: {}", worker.log_text());
        assert!(worker.violations().is_empty() && worker.trap().is_none(), "{profile}");
    }
}

/// Envoy-like: the root context fetches on its tick (one fetcher per proxy), both
/// workers use the keys through shared data, and metrics are kept.
#[test]
fn envoy_profile_fetches_on_tick_and_shares_keys_and_counts_metrics() {
    let table = Table::new(jwks_upstream(Profile::Full)).unwrap();
    let mut host = Host::new(Profile::Full).unwrap();
    let a = host.start_worker_json(&table.plugin).unwrap();
    let b = host.start_worker_json(&table.plugin).unwrap();
    assert!(host.worker(a).unwrap().tick_period() > Duration::ZERO);
    assert!(host.worker(a).unwrap().callouts().is_empty(), "no fetch before the first tick");
    host.advance(Duration::from_millis(600)).unwrap();
    let pending: usize = host.workers().iter().map(|w| w.callouts().len()).sum();
    assert_eq!(pending, 1, "one fetcher per proxy (the lease is in shared data)");
    let fetcher = host.workers().iter().position(|w| !w.callouts().is_empty()).unwrap();
    assert_eq!(host.worker(fetcher).unwrap().callouts()[0].context, 1, "fetched by the root context");
    table.answer_all(&mut host).unwrap();
    host.advance(Duration::from_millis(600)).unwrap();
    assert!(!host.shared_data().is_empty());
    for w in [a, b] {
        let exchange =
            host.worker(w).unwrap().send(&Request::get("/api/x").bearer(&table.warmup_token)).unwrap();
        assert_eq!(exchange.status, 200, "worker {w}: {:?}", String::from_utf8_lossy(&exchange.body));
    }
    // Counts reach the host on the next tick, not one host call per increment.
    let counted = |host: &Host| -> i64 {
        host.metrics().iter().filter(|m| m.name.contains("nhi_requests_total")).map(|m| m.value).sum()
    };
    assert_eq!(counted(&host), 0, "counted before the tick: {:#?}", host.metrics());
    host.advance(Duration::from_millis(600)).unwrap();
    assert_eq!(counted(&host), 2, "{:#?}", host.metrics());
}

/// Envoy-like: a request that arrives before the keys waits (paused); the root
/// context fetches on its tick and, once the keys are in, resumes it as its
/// effective context (`proxy_set_effective_context` + `proxy_continue_stream`).
/// The filter's decision is published as properties (Envoy filter state).
#[test]
fn envoy_profile_resumes_a_request_that_waited_for_keys() {
    let table = Table::new(jwks_upstream(Profile::Full)).unwrap();
    let mut host = Host::new(Profile::Full).unwrap();
    let w = host.start_worker_json(&table.plugin).unwrap();
    let id =
        host.worker(w).unwrap().start_request(&Request::get("/api/early").bearer(&token("early"))).unwrap();
    assert_eq!(host.worker(w).unwrap().stream(id).unwrap().flow, Flow::Paused);
    assert!(host.worker(w).unwrap().callouts().is_empty(), "the request does not call out itself");
    host.advance(Duration::from_millis(600)).unwrap();
    let callout = host.worker(w).unwrap().callouts().pop().expect("the tick starts the fetch");
    assert_eq!(callout.context, 1);
    let reply = table.answer(&callout.upstream, callout.header(":path"));
    let worker = host.worker(w).unwrap();
    worker.answer_callout(callout.token, Some(reply)).unwrap();
    assert_eq!(worker.stream(id).unwrap().flow, Flow::Continued, "resumed by the root context");
    assert!(worker.host_calls().get("proxy_set_effective_context").is_some_and(|&n| n >= 1));
    let exchange = worker.finish(id, &UpstreamResponse::ok()).unwrap();
    assert_eq!(exchange.upstream_header("x-nhi-identity"), Some("early"));
    let published =
        |name: &str| exchange.set_properties.get(name).map(|v| String::from_utf8_lossy(v).into_owned());
    assert_eq!(published("nhi_decision").as_deref(), Some("allowed"), "{:?}", exchange.set_properties);
    assert_eq!(published("nhi_identity").as_deref(), Some("early"));
}

/// APISIX: keys due for refresh are refreshed by the next allowed request, which
/// waits for the callout and then goes on; no tick is ever involved.
#[test]
fn apisix_refreshes_keys_from_a_request_once_they_are_due() {
    for profile in [Profile::ApisixLike, Profile::ApisixNoop] {
        let table = Table::new(jwks_upstream(profile)).unwrap();
        let refresh = table.plugin["issuers"][0]["jwks"]["refresh_seconds"].as_u64().unwrap();
        let mut host = Host::new(profile).unwrap();
        table.start(&mut host).unwrap();
        let first =
            table.run_request(&mut host, 0, &Request::get("/api/a").bearer(&table.warmup_token)).unwrap();
        assert_eq!(first.status, 200, "{profile}");
        host.advance(Duration::from_secs(refresh + 1)).unwrap();
        let worker = host.worker(0).unwrap();
        let id = worker.start_request(&Request::get("/api/b").bearer(&table.warmup_token)).unwrap();
        assert_eq!(
            worker.stream(id).unwrap().flow,
            Flow::Paused,
            "{profile}: the refresh callout runs first"
        );
        let callout = worker.callouts().pop().unwrap();
        worker.answer_callout(callout.token, Some(CalloutReply::new(503, "busy"))).unwrap();
        let exchange = worker.finish(id, &UpstreamResponse::ok()).unwrap();
        assert_eq!(exchange.status, 200, "{profile}: a failed refresh keeps the last good keys");
        assert!(worker.violations().is_empty(), "{profile}: {:?}", worker.violations());
    }
}

/// `host` in the configuration: `envoy` refuses to start on a host that lacks
/// shared data, timers or the clock; `apisix` runs degraded even on Envoy (keys
/// fetched by requests, never from the root context).
#[test]
fn the_host_setting_is_honoured_under_every_profile() {
    for profile in Profile::ALL {
        let mut table = Table::new(jwks_upstream(profile)).unwrap();
        table.plugin["host"] = json!("envoy");
        let mut host = Host::new(profile).unwrap();
        let w = host.start_worker_json(&table.plugin).unwrap();
        let worker = host.worker(w).unwrap();
        assert_eq!(worker.configured(), profile == Profile::Full, "{profile}: {}", worker.log_text());
    }
    let mut table = Table::new(jwks_upstream(Profile::Full)).unwrap();
    table.plugin["host"] = json!("apisix");
    let mut host = Host::new(Profile::Full).unwrap();
    let w = host.start_worker_json(&table.plugin).unwrap();
    host.advance(Duration::from_secs(2)).unwrap();
    assert!(host.worker(w).unwrap().callouts().is_empty(), "no background fetch with host: apisix");
    let worker = host.worker(w).unwrap();
    let id = worker.start_request(&Request::get("/api/x").bearer(&table.warmup_token)).unwrap();
    let callout = worker.callouts().pop().expect("the request fetches the keys");
    assert_eq!(callout.context, id);
}

/// Envoy-like: a JWKS cluster Envoy does not know makes every fetch fail at once;
/// the filter keeps refusing with 503 and retries with backoff, never trapping.
#[test]
fn envoy_profile_with_an_unknown_jwks_cluster() {
    let table = Table::new("no_such_cluster").unwrap();
    let mut host = Host::new(Profile::Full).unwrap();
    host.set_clusters(["jwks_demo", "upstream", "web"]);
    let w = host.start_worker_json(&table.plugin).unwrap();
    host.advance(Duration::from_secs(3)).unwrap();
    let worker = host.worker(w).unwrap();
    assert!(worker.callouts().is_empty());
    assert!(worker.host_calls().get("proxy_http_call").is_some_and(|&n| n >= 1), "{:?}", worker.host_calls());
    assert!(worker.log_text().contains("no_such_cluster"), "{}", worker.log_text());
    // A request for that issuer waits for keys, then gets 503.
    let id = worker.start_request(&Request::get("/api/x").bearer(&table.warmup_token)).unwrap();
    host.advance(Duration::from_secs(5)).unwrap();
    let exchange = host.worker(w).unwrap().finish(id, &UpstreamResponse::ok()).unwrap();
    assert_eq!((exchange.status, exchange.reason().as_deref()), (503, Some("keys_unavailable")));
    assert!(host.worker(w).unwrap().trap().is_none());
}

/// The host calls of one allowed request whose token the worker already verified
/// (Envoy profile): the second of two identical requests.
fn cached_request_host_calls(table: &Table) -> std::collections::BTreeMap<String, u64> {
    let mut host = Host::new(Profile::Full).unwrap();
    table.start(&mut host).unwrap();
    let worker = host.worker(0).unwrap();
    let request = Request::get("/api/cached").bearer(&table.warmup_token);
    assert_eq!(worker.send(&request).unwrap().status, 200);
    worker.reset_host_calls();
    assert_eq!(worker.send(&request).unwrap().status, 200);
    worker.host_calls().clone()
}

/// Host calls one allowed request with a cached token costs in the Envoy profile,
/// printed for the record (`--nocapture`).
#[test]
fn host_calls_of_a_cached_allowed_request() {
    let calls = cached_request_host_calls(&Table::new(jwks_upstream(Profile::Full)).unwrap());
    let total: u64 = calls.values().sum();
    println!("host calls of one allowed request with a cached token (Envoy profile): {total}");
    for (name, count) in &calls {
        println!("  {name}: {count}");
    }
    assert!(!calls.contains_key("proxy_send_local_response"));
    assert!(calls.get("proxy_replace_header_map_value").is_some_and(|&n| n >= 3), "{calls:?}");
}

/// The host calls of the reused-token path with what `make bench` runs: no filter
/// state, no decision log (as "Fast paths" in docs/keys.md counts them). Each call into Envoy
/// costs about as much as the filter's own work on a cached token, so this is a budget.
#[test]
fn a_cached_allowed_request_makes_six_host_calls_without_filter_state_or_decision_log() {
    let mut table = Table::new(jwks_upstream(Profile::Full)).unwrap();
    table.plugin["filter_state"] = serde_json::json!(false);
    table.plugin["decision_log"] = serde_json::json!({ "enabled": false });
    // RateLimit headers on allowed responses would add two.
    if let Some(quotas) = table.plugin.get_mut("quotas") {
        quotas["response_headers"] = serde_json::json!(false);
    }
    // claims_to_headers would add one header per claim: none here.
    for issuer in table.plugin["issuers"].as_array_mut().unwrap() {
        issuer.as_object_mut().unwrap().remove("claims_to_headers");
    }
    let calls = cached_request_host_calls(&table);
    let total: u64 = calls.values().sum();
    println!("host calls of a cached allowed request, bench configuration: {total} {calls:?}");
    // Counters wait for the tick (two calls fewer than one increment each), and an
    // identity far from its quota is served from its worker's lease (no shared-data
    // read and write; see `Leases` in the core's quota module).
    for absent in [
        "proxy_set_property",
        "proxy_get_property",
        "proxy_log",
        "proxy_get_header_map_value",
        "proxy_increment_metric",
        "proxy_get_shared_data",
        "proxy_set_shared_data",
    ] {
        assert!(!calls.contains_key(absent), "{absent} on the reused-token path: {calls:?}");
    }
    assert_eq!(calls.get("proxy_get_current_time_nanoseconds"), Some(&1), "{calls:?}");
    assert!(total <= 6, "{total} host calls: {calls:?}");
}

/// A forged token from a source the flood guard has blocked is refused for about what
/// a request without a token costs (issue 21: a forged flood must cost no more than a
/// token-less one). Both host-call counts are printed for the record (`--nocapture`).
#[test]
fn a_blocked_sources_forged_token_costs_about_what_no_token_costs() {
    let mut table = Table::new(jwks_upstream(Profile::Full)).unwrap();
    table.plugin["flood_guard"] = serde_json::json!({ "max_failures": 2 });
    table.plugin["decision_log"] = serde_json::json!({ "enabled": false });
    let mut host = Host::new(Profile::Full).unwrap();
    table.start(&mut host).unwrap();
    let worker = host.worker(0).unwrap();
    let source: std::net::SocketAddr = "203.0.113.66:4000".parse().unwrap();
    let (head, signature) = table.warmup_token.rsplit_once('.').unwrap();
    let flipped = if signature.starts_with('A') { 'B' } else { 'A' };
    let forged = format!("{head}.{flipped}{}", &signature[1..]);
    let calls_of = |worker: &mut test_harness::emulator::Worker, request: &Request| {
        worker.reset_host_calls();
        let exchange = worker.send(request).unwrap();
        (
            exchange.status,
            exchange.reason(),
            worker.host_calls().values().sum::<u64>(),
            worker.host_calls().clone(),
        )
    };
    calls_of(worker, &Request::get("/api/x").source(source));
    let tokenless = calls_of(worker, &Request::get("/api/x").source(source));
    assert_eq!((tokenless.0, tokenless.1.as_deref()), (401, Some("missing_token")));
    for _ in 0..2 {
        let failed = calls_of(worker, &Request::get("/api/x").bearer(&forged).source(source));
        assert_eq!(failed.1.as_deref(), Some("bad_signature"));
    }
    let blocked = calls_of(worker, &Request::get("/api/x").bearer(&forged).source(source));
    assert_eq!((blocked.0, blocked.1.as_deref()), (429, Some("too_many_failures")));
    let again = calls_of(worker, &Request::get("/api/x").bearer(&forged).source(source));
    println!("host calls, no token: {} {:?}", tokenless.2, tokenless.3);
    println!("host calls, forged token from a blocked source: {} {:?}", again.2, again.3);
    // Beyond what no token costs: the source address (whose block it is) and the shared
    // token cache (a token another worker verified still passes). Not the guard's slot
    // (this VM knows the block), not the clock twice, not the verification histogram.
    let mut extra = again.3.clone();
    for (name, count) in &tokenless.3 {
        let left = extra.get(name).copied().unwrap_or(0).saturating_sub(*count);
        extra.insert(name.clone(), left);
    }
    extra.retain(|_, count| *count > 0);
    let expected: std::collections::BTreeMap<String, u64> =
        [("proxy_get_property".to_owned(), 1), ("proxy_get_shared_data".to_owned(), 1)].into();
    assert_eq!(extra, expected, "{} against {}: {:?}", again.2, tokenless.2, again.3);
}

/// The filter built with `fault-injection` panics on demand: under every profile
/// the panic is logged at critical level and the trap ends that VM only.
/// Needs `target/nhi_guard_fault_injection.wasm` (`make fault-wasm`, or `NHI_FAULT_WASM`).
#[test]
fn a_filter_panic_is_logged_and_captured_under_every_profile() {
    let path = std::env::var_os("NHI_FAULT_WASM").map(std::path::PathBuf::from).unwrap_or_else(|| {
        test_harness::envoy_config::repo_root().join("target/nhi_guard_fault_injection.wasm")
    });
    assert!(path.is_file(), "{} is missing: run `make fault-wasm` (it is never skipped)", path.display());
    let key = TestKeys::shared().unwrap().by_type(KeyType::Ed25519);
    let plugin = json!({
        "issuers": [{ "name": "inline", "issuer": "https://inline.test", "audiences": ["gw"],
                      "jwks": { "inline": test_harness::keys::jwks([key]) }, "algorithms": ["EdDSA"] }],
        "fault_injection": { "panic_header": "x-crash" }
    });
    for profile in Profile::ALL {
        let mut host = Host::with_wasm(profile, &path).unwrap();
        let w = host.start_worker_json(&plugin).unwrap();
        let worker = host.worker(w).unwrap();
        assert!(worker.configured(), "{profile}: {}", worker.log_text());
        assert_eq!(worker.send(&Request::get("/api/fine")).unwrap().status, 401, "{profile}");
        let err = worker.send(&Request::get("/api/crash").header("x-crash", "1")).unwrap_err();
        assert!(worker.trap().is_some(), "{profile}: {err:#}");
        let critical =
            worker.logs().iter().find(|line| line.level == Some(5)).map(|line| line.message.clone());
        assert!(
            critical.as_deref().is_some_and(|m| m.contains("panicked") && m.contains("simulated VM crash")),
            "{profile}: {critical:?}"
        );
        let fresh = host.start_worker_json(&plugin).unwrap();
        assert_eq!(host.worker(fresh).unwrap().send(&Request::get("/api/fine")).unwrap().status, 401);
    }
}

// ----- the emulator itself, on tiny modules -----

/// A minimal proxy-wasm module: `body` is spliced into its module text.
fn module(imports: &str, on_configure: &str, on_request: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
  {imports}
  (memory (export "memory") 1)
  (global $next (mut i32) (i32.const 4096))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    global.get $next
    local.set $at
    global.get $next
    local.get $size
    i32.add
    global.set $next
    local.get $at)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) i32.const 1)
  (func (export "proxy_on_configure") (param i32 i32) (result i32) {on_configure} i32.const 1)
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) {on_request} i32.const 0)
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) i32.const 0)
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_done") (param i32) (result i32) i32.const 1)
  (func (export "proxy_on_delete") (param i32))
  (func (export "proxy_on_tick") (param i32))
  (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32))
  (data (i32.const 64) "\01\00\00\00\07\00\00\00\03\00\00\00:method\00GET\00")
  (data (i32.const 128) "host:80")
)"#
    ))
    .unwrap()
}

const HTTP_CALL: &str = r#"(import "env" "proxy_http_call"
    (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))"#;
const CALL_OUT: &str =
    "(drop (call $http_call (i32.const 128) (i32.const 7) (i32.const 64) (i32.const 30) (i32.const 0) (i32.const 0) \
     (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 256)))";

#[test]
fn a_trap_is_captured_and_ends_only_that_vm() {
    for profile in Profile::ALL {
        let mut host = Host::with_bytes(profile, &module("", "", "unreachable")).unwrap();
        let w = host.start_worker(b"{}").unwrap();
        let err = host.worker(w).unwrap().send(&Request::get("/")).unwrap_err();
        assert!(format!("{err:#}").contains("unreachable"), "{profile}: {err:#}");
        assert!(host.worker(w).unwrap().trap().unwrap().contains("proxy_on_request_headers"));
        assert!(host.worker(w).unwrap().send(&Request::get("/")).is_err(), "a crashed VM stays crashed");
        let other = host.start_worker(b"{}").unwrap();
        assert!(host.worker(other).unwrap().trap().is_none());
    }
    // A trap while configuring: the worker exists, crashed and unconfigured.
    let mut host = Host::with_bytes(Profile::Full, &module("", "unreachable", "")).unwrap();
    let w = host.start_worker(b"{}").unwrap();
    let worker = host.worker(w).unwrap();
    assert!(!worker.configured());
    assert!(worker.trap().unwrap().contains("proxy_on_configure"), "{:?}", worker.trap());
}

#[test]
fn apisix_records_a_callout_from_the_root_context_as_fatal() {
    let wasm = module(HTTP_CALL, CALL_OUT, "");
    for profile in [Profile::ApisixLike, Profile::ApisixNoop] {
        let mut host = Host::with_bytes(profile, &wasm).unwrap();
        let w = host.start_worker(b"{}").unwrap();
        let violations = host.worker(w).unwrap().violations().to_vec();
        assert_eq!(violations.len(), 1, "{profile}: {violations:?}");
        assert!(violations[0].contains("proxy_on_configure"), "{violations:?}");
        assert!(host.worker(w).unwrap().callouts().is_empty());
    }
    // Envoy allows it (and requires :method, :path, :authority: this one lacks two).
    let mut host = Host::with_bytes(Profile::Full, &wasm).unwrap();
    let w = host.start_worker(b"{}").unwrap();
    assert!(host.worker(w).unwrap().violations().is_empty());
    assert_eq!(host.worker(w).unwrap().host_calls().get("proxy_http_call"), Some(&1));
}

#[test]
fn apisix_callouts_from_a_request_go_to_host_port_and_answer_to_the_root_id() {
    let wasm = module(HTTP_CALL, "", CALL_OUT);
    let mut host = Host::with_bytes(Profile::ApisixLike, &wasm).unwrap();
    let w = host.start_worker(b"{}").unwrap();
    let worker = host.worker(w).unwrap();
    let id = worker.start_request(&Request::get("/")).unwrap();
    assert_eq!(worker.stream(id).unwrap().flow, Flow::Paused, "APISIX runs the callout before going on");
    let callout = worker.callouts().pop().unwrap();
    assert_eq!((callout.upstream.as_str(), callout.context, callout.token), ("host:80", id, 0));
    worker.answer_callout(callout.token, None).unwrap();
    assert_eq!(worker.stream(id).unwrap().flow, Flow::Continued, "and goes on after it");
    assert!(worker.violations().is_empty());
}

#[test]
fn ticks_are_delivered_only_by_hosts_with_timers() {
    let set_tick =
        r#"(import "env" "proxy_set_tick_period_milliseconds" (func $tick (param i32) (result i32)))"#;
    let wasm = module(set_tick, "(drop (call $tick (i32.const 100)))", "");
    for profile in Profile::ALL {
        let mut host = Host::with_bytes(profile, &wasm).unwrap();
        let w = host.start_worker(b"{}").unwrap();
        host.advance(Duration::from_millis(1050)).unwrap();
        let period = host.worker(w).unwrap().tick_period();
        assert_eq!(
            period,
            if profile == Profile::Full { Duration::from_millis(100) } else { Duration::ZERO }
        );
    }
}

#[test]
fn a_host_refuses_a_module_importing_what_it_lacks() {
    let lacks = r#"(import "env" "proxy_get_log_level" (func (param i32) (result i32)))"#;
    let wasm = module(lacks, "", "");
    assert!(Host::with_bytes(Profile::Full, &wasm).is_ok(), "Envoy has proxy_get_log_level");
    let err = Host::with_bytes(Profile::ApisixLike, &wasm).err().unwrap();
    assert!(format!("{err:#}").contains("proxy_get_log_level"), "{err:#}");
}

#[test]
fn the_filter_refuses_a_bad_configuration_under_every_profile() {
    for profile in Profile::ALL {
        let mut host = Host::new(profile).unwrap();
        let w = host.start_worker(br#"{"issuers": [], "bogus": 1}"#).unwrap();
        let worker = host.worker(w).unwrap();
        assert!(!worker.configured(), "{profile}");
        assert!(worker.log_text().contains("refusing to start"), "{profile}: {}", worker.log_text());
        assert!(worker.trap().is_none());
    }
    let _ = mint::now();
}

// ---------------------------------------------------------------------------------
// Behaviour: a day and a half of machine traffic, the clock driven by the test

const BEHAVIOUR_ISS: &str = "https://behaviour.nhi-guard.test";
const MINUTE_NS: u64 = 60_000_000_000;

fn behaviour_plugin() -> serde_json::Value {
    let key = TestKeys::shared().unwrap().by_type(KeyType::Ed25519);
    json!({
        "issuers": [{ "name": "ci", "issuer": BEHAVIOUR_ISS, "audiences": ["gw"],
                      "jwks": { "inline": test_harness::keys::jwks([key]) }, "algorithms": ["EdDSA"] }],
        "routes": [
            { "name": "deploy", "match": { "prefix": "/deploy/" }, "audience": "machine" },
            { "name": "reports", "match": { "prefix": "/reports/" }, "audience": "machine" },
            { "name": "admin", "match": { "prefix": "/admin/" }, "audience": "machine" }
        ],
        "behaviour": {
            // A day of five-minute intervals to learn; rates over an hour; peaks over two days.
            "interval_seconds": 300, "warmup_intervals": 288, "half_life_intervals": 12,
            "peak_half_life_intervals": 576,
            "forward_header": true,
            "anomalies": { "burst": { "factor": 10, "floor": 50 }, "new_route": {}, "new_source": {},
                           "error_spike": {}, "dormant_returned": { "after_seconds": 86400 } }
        }
    })
}

fn behaviour_token(sub: &str, now_s: u64) -> String {
    let key = TestKeys::shared().unwrap().by_type(KeyType::Ed25519);
    Token::new(Alg::EdDsa)
        .kid(key.kid())
        .claim("iss", BEHAVIOUR_ISS)
        .claim("aud", "gw")
        .claim("sub", sub)
        .claim("iat", now_s)
        .claim("exp", now_s + 10 * 86_400)
        .sign(key)
        .unwrap()
}

/// One request in the emulator at `at_ns`, answered `status` by the upstream (Envoy's
/// `response.code`, read when the stream ends): the anomalies forwarded upstream.
fn emulated(
    host: &mut Host,
    at_ns: u64,
    path: &str,
    token: &str,
    source: [u8; 4],
    status: u16,
) -> Option<String> {
    host.set_time(at_ns);
    let request = Request::get(path)
        .bearer(token)
        .source(std::net::SocketAddr::from((source, 40_000)))
        .property(&["response", "code"], i64::from(status).to_le_bytes().to_vec());
    let exchange = host.worker(0).unwrap().send(&request).unwrap();
    assert_eq!(exchange.status, 200, "{path}: {:?}", exchange.reason());
    exchange.upstream_header("x-nhi-anomaly").map(str::to_owned)
}

#[test]
fn a_day_and_a_half_of_machine_traffic_in_the_emulator() {
    let mut host = Host::new(Profile::Full).unwrap();
    host.start_worker_json(&behaviour_plugin()).unwrap();
    let start_ns = host.now_ns() - host.now_ns() % (24 * 60 * MINUTE_NS); // midnight
    let start_s = start_ns / 1_000_000_000;
    let steady = behaviour_token("steady-deployer", start_s);
    let nightly = behaviour_token("nightly-batch", start_s);
    let office = [203, 0, 113, 10];
    let mut flagged: Vec<(u64, String, String)> = Vec::new();
    // 36 hours: `steady-deployer` about one request every three minutes (jittered),
    // `nightly-batch` one every five minutes and 20 a minute from 02:00 to 02:15, both
    // from one network; about one answer in twenty a 503 (one in ten in the batch).
    let mut rng_state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut jitter = |n: u64| {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state % n
    };
    for minute in 0..(36 * 60) {
        let minute_start = start_ns + minute * MINUTE_NS;
        let per_minute = u64::from(jitter(3) == 0);
        for i in 0..per_minute {
            let at = minute_start + i * (MINUTE_NS / per_minute) + jitter(1_000_000_000);
            let status = if jitter(20) == 0 { 503 } else { 200 };
            if let Some(a) = emulated(&mut host, at, "/deploy/app", &steady, office, status) {
                flagged.push((minute, "steady".into(), a));
            }
        }
        let of_day = minute % (24 * 60);
        let batch = if (120..135).contains(&of_day) { 20 } else { u64::from(of_day % 5 == 0) };
        for i in 0..batch {
            let at = minute_start + 30_000_000_000 + i * (30_000_000_000 / batch);
            let status = if jitter(10) == 0 { 503 } else { 200 };
            if let Some(a) = emulated(&mut host, at, "/reports/run", &nightly, office, status) {
                flagged.push((minute, "nightly".into(), a));
            }
        }
    }
    // Warm-up is the first day: nothing may be flagged after it, in 12 hours that hold
    // the second night's batch.
    let after_warmup: Vec<_> = flagged.iter().filter(|(m, _, _)| *m >= 24 * 60 + 5).collect();
    assert!(after_warmup.is_empty(), "false positives after warm-up: {after_warmup:?}");
    // An error spike is counted when the response ends (not forwarded): none yet.
    let spikes = |host: &Host| {
        host.metrics()
            .iter()
            .filter(|m| m.name.contains("nhi_anomalies_total") && m.name.contains("error_spike"))
            .map(|m| m.value)
            .sum::<i64>()
    };
    host.advance(std::time::Duration::from_secs(1)).unwrap(); // counts reach the host on the tick
    assert_eq!(spikes(&host), 0, "no error spike in 36 hours of ordinary errors");

    // The deployer's token, stolen: used from another network, on a route it never used.
    let now = start_ns + 36 * 60 * MINUTE_NS;
    let first = emulated(&mut host, now, "/admin/users", &steady, [198, 51, 100, 7], 200);
    assert_eq!(first.as_deref(), Some("new_route,new_source"), "flagged on the first stolen request");
    // A retry storm of the batch job in the afternoon: far above its rate and its peak.
    let storm_at = now + 5 * MINUTE_NS;
    let detected_after = (0..2_000u64)
        .position(|i| {
            emulated(&mut host, storm_at + i * 10_000_000, "/reports/run", &nightly, office, 200)
                .is_some_and(|a| a.contains("burst"))
        })
        .expect("the storm is flagged");
    assert!(detected_after <= 400, "burst flagged after {detected_after} requests");
    // A credential that was silent for two days.
    // Its upstream failing every request: an error spike within min_requests (20).
    let failing_at = now + 60 * MINUTE_NS;
    for i in 0..25u64 {
        emulated(&mut host, failing_at + i * 1_000_000_000, "/reports/run", &nightly, office, 503);
    }
    host.advance(std::time::Duration::from_secs(1)).unwrap();
    assert_eq!(spikes(&host), 1, "the spike is counted once");
    let back = emulated(&mut host, now + 2 * 24 * 60 * MINUTE_NS, "/deploy/app", &steady, office, 200);
    assert!(back.is_some_and(|a| a.contains("dormant_returned")));
    let counted = host.metrics().iter().filter(|m| m.name.contains("nhi_anomalies_total")).count();
    assert!(counted >= 4, "one series per identity and kind");
    println!(
        "emulator: {} flags during warm-up, none after; burst flagged after {detected_after} storm requests",
        flagged.len()
    );
}

/// DPoP where the host has no shared data: the replay table lives in each VM, so a
/// proof is accepted at most once per worker (documented); with shared data (the
/// Envoy profile), once per proxy. Keys, tokens and proofs come from the independent
/// client (`test_harness::dpop_client`).
#[test]
fn dpop_replay_cache_is_per_vm_without_shared_data_and_shared_with_it() {
    use test_harness::dpop_client::DpopClient;
    let mut client = DpopClient::start().unwrap();
    let jwks = client.issuer("py-issuer").unwrap();
    let key = client.key("EC").unwrap();
    let plugin = json!({
        "issuers": [{"name": "ci", "issuer": "https://ci.example", "audiences": ["gw"],
                     "jwks": {"inline": jwks}, "algorithms": ["ES256"], "dpop": {"mode": "required"}}],
        "routes": [{"name": "api", "match": {"prefix": "/api/"}}]
    });
    let token =
        client.token(json!({"iss": "https://ci.example", "aud": "gw", "sub": "robot"}), Some(&key)).unwrap();
    for profile in Profile::ALL {
        let mut host = Host::new(profile).unwrap();
        let a = host.start_worker_json(&plugin).unwrap();
        let b = host.start_worker_json(&plugin).unwrap();
        let proof = client.proof(&key, "GET", "http://gateway.test/api/x", &token, json!({})).unwrap();
        let request =
            Request::get("/api/x").header("authorization", &format!("DPoP {token}")).header("dpop", &proof);
        let first = host.worker(a).unwrap().send(&request).unwrap();
        assert_eq!(first.status, 200, "{profile}: {:?}", String::from_utf8_lossy(&first.body));
        assert_eq!(first.upstream_header("x-nhi-dpop-jkt"), Some(key.jkt.as_str()), "{profile}");
        let again = host.worker(a).unwrap().send(&request).unwrap();
        assert_eq!((again.status, again.reason().as_deref()), (401, Some("dpop_replay")), "{profile}");
        let other_worker = host.worker(b).unwrap().send(&request).unwrap();
        if profile.shares_state() {
            assert_eq!(
                other_worker.reason().as_deref(),
                Some("dpop_replay"),
                "{profile}: one table per proxy"
            );
        } else {
            assert_eq!(other_worker.status, 200, "{profile}: one table per VM (the degraded mode)");
            let twice = host.worker(b).unwrap().send(&request).unwrap();
            assert_eq!(twice.reason().as_deref(), Some("dpop_replay"), "{profile}: still once per VM");
        }
        // A bound token as a bearer token is refused on every host.
        let bearer = host.worker(b).unwrap().send(&Request::get("/api/x").bearer(&token)).unwrap();
        assert_eq!(bearer.reason().as_deref(), Some("dpop_required"), "{profile}");
        for worker in host.workers() {
            assert!(
                worker.trap().is_none() && worker.violations().is_empty(),
                "{profile}: {:?}",
                worker.violations()
            );
        }
    }
}

/// The partners of `envoy/envoy-partners.yaml`, as APISIX runs them: `host: apisix`
/// (per-VM state) and bodies never buffered (the emulator models no request body).
fn partner_plugin(profile: Profile) -> serde_json::Value {
    let config = test_harness::envoy_config::EnvoyConfig::load(
        &test_harness::envoy_config::repo_root().join("envoy/envoy-partners.yaml"),
    )
    .unwrap();
    let mut plugin = config.plugin_configuration().unwrap();
    if profile.is_apisix() {
        plugin["host"] = json!("apisix");
        plugin["filter_state"] = json!(false);
    }
    plugin["partners"]["signature"] = json!({ "max_body_bytes": 0 });
    plugin
}

const PARTNER_SECRET: &str = "9WrWLsKl5q1xBtsW8iDsWpUygOk1b/4Kv3yUs5JO0ow=";
const PARTNER_API_KEY: &str = "globex-emulated-api-key";

/// Where the VM's environment comes from: Envoy's `vm_config.environment_variables`
/// (WASI `environ`); on APISIX the nginx worker's environment, which keeps the
/// variables `nginx_config.envs` (nginx `env` directives) name — both reach the
/// filter as WASI `environ`, which is what the emulator hands it.
fn partner_environment(host: &mut Host) {
    use sha2::Digest as _;
    let hash: String =
        sha2::Sha256::digest(PARTNER_API_KEY.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    host.set_environment(&[
        ("NHI_PARTNER_ACME_HMAC_2026_01", PARTNER_SECRET),
        ("NHI_PARTNER_GLOBEX_API_KEY_SHA256", &hash),
    ]);
}

#[test]
fn partners_under_every_profile_secrets_from_the_environment() {
    use test_harness::httpsig::{self, Job, Key};
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let key = || Key::Hmac { secret: PARTNER_SECRET.into() };
    let signed = httpsig::sign(&[Job::new(
        "GET",
        "http://gateway.test/partner/orders",
        key(),
        "acme-2026-01",
        now,
        "emu-1",
    )])
    .unwrap();
    let request = |path: &str, headers: &[(String, String)]| {
        headers.iter().fold(Request::get(path), |r, (n, v)| r.header(n, v))
    };
    for profile in Profile::ALL {
        // Without the variable the plugin does not start, and says which one.
        let mut bare = Host::new(profile).unwrap();
        let worker = bare.start_worker_json(&partner_plugin(profile)).unwrap();
        let refused = bare.worker(worker).unwrap();
        assert!(!refused.configured(), "{profile}");
        assert!(
            refused.log_text().contains("environment variable NHI_PARTNER_ACME_HMAC_2026_01"),
            "{profile}: {}",
            refused.log_text()
        );

        let mut host = Host::new(profile).unwrap();
        partner_environment(&mut host);
        let worker = host.start_worker_json(&partner_plugin(profile)).unwrap();
        let worker = host.worker(worker).unwrap();
        assert!(worker.configured(), "{profile}: {}", worker.log_text());
        let ok = worker.send(&request("/partner/orders", &signed[0])).unwrap();
        assert_eq!(ok.status, 200, "{profile}: {:?}", ok.reason());
        assert_eq!(ok.upstream_header("x-nhi-identity"), Some("partner:acme"), "{profile}");
        assert_eq!(ok.upstream_header("x-nhi-issuer"), Some("partners"), "{profile}");
        let again = worker.send(&request("/partner/orders", &signed[0])).unwrap();
        assert_eq!((again.status, again.reason().as_deref()), (401, Some("signature_replay")), "{profile}");
        let api = worker.send(&Request::get("/partner/orders").header("x-api-key", PARTNER_API_KEY)).unwrap();
        assert_eq!(api.upstream_header("x-nhi-identity"), Some("partner:globex"), "{profile}");
        assert_eq!(api.upstream_header("x-api-key"), None, "{profile}");
        let wrong = worker.send(&Request::get("/partner/orders").header("x-api-key", "guess")).unwrap();
        assert_eq!((wrong.status, wrong.reason().as_deref()), (401, Some("invalid_api_key")), "{profile}");
        let unsigned = worker.send(&Request::new("POST", "/hooks/order")).unwrap();
        assert_eq!(
            (unsigned.status, unsigned.reason().as_deref()),
            (401, Some("missing_signature")),
            "{profile}"
        );
        assert!(unsigned.header("accept-signature").is_some(), "{profile}");
        assert!(
            worker.trap().is_none() && worker.violations().is_empty(),
            "{profile}: {:?}",
            worker.violations()
        );
    }
}

// ---------------------------------------------------------------------------------
// Issue 23 under every host: forged identity headers whatever their bytes, their
// underscore twins, and lenient readings of machine tokens on the human route.

/// The values the upstream got for header `name`, whatever their bytes.
fn upstream_values(exchange: &test_harness::emulator::Exchange, name: &str) -> Vec<Vec<u8>> {
    let headers = exchange.upstream_request.as_deref().unwrap_or_default();
    headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone()).collect()
}

#[test]
fn forged_identity_headers_of_any_bytes_never_reach_the_upstream_under_every_profile() {
    // Every header nhi-guard manages, forged with a value that is not UTF-8 (what
    // Python's str.strip() turns into the bare value), and the underscore spellings
    // CGI/WSGI backends read as the dashed ones.
    let forged: [(&str, &[u8]); 7] = [
        ("x-nhi-identity", b"admin-bot\xa0"),
        ("x-nhi-issuer", b"root\xa0"),
        ("x-nhi-client", b"machine\xff"),
        ("x-nhi-shadow-decision", b"allow\xa0"),
        ("x_nhi_identity", b"admin-bot"),
        ("x_nhi_issuer", b"root"),
        ("x_nhi_client", b"machine"),
    ];
    for profile in Profile::ALL {
        let table = Table::new(jwks_upstream(profile)).unwrap();
        let mut host = Host::new(profile).unwrap();
        table.start(&mut host).unwrap();
        let with = |mut request: Request| {
            for (name, value) in forged {
                request = request.header_bytes(name, value);
            }
            request
        };
        // A person on the human route: none of the forged headers goes on.
        let person = table.run_request(&mut host, 0, &with(Request::get("/web/forged"))).unwrap();
        assert_eq!(person.status, 200, "{profile}: {:?}", person.reason());
        assert_eq!(upstream_values(&person, "x-nhi-client"), vec![b"human".to_vec()], "{profile}");
        for (name, _) in forged.iter().filter(|(n, _)| *n != "x-nhi-client") {
            assert_eq!(
                upstream_values(&person, name),
                Vec::<Vec<u8>>::new(),
                "{profile}: {name} reached the web backend"
            );
        }
        // A verified machine: exactly the filter's own values go on.
        let machine = table
            .run_request(&mut host, 1, &with(Request::get("/api/forged").bearer(&table.warmup_token)))
            .unwrap();
        assert_eq!(machine.status, 200, "{profile}: {:?}", machine.reason());
        let identity = upstream_values(&machine, "x-nhi-identity");
        assert_eq!(identity.len(), 1, "{profile}: {identity:?}");
        assert_ne!(identity[0], b"admin-bot\xa0".to_vec(), "{profile}");
        assert_eq!(upstream_values(&machine, "x-nhi-client"), vec![b"machine".to_vec()], "{profile}");
        for name in ["x-nhi-shadow-decision", "x_nhi_identity", "x_nhi_issuer", "x_nhi_client"] {
            assert_eq!(upstream_values(&machine, name), Vec::<Vec<u8>>::new(), "{profile}: {name}");
        }
        // A machine token read leniently (padding appended, a trailing byte that is not
        // UTF-8) is still a machine credential on the human route: refused, never
        // forwarded to a backend whose JWT library might accept it.
        let padded = format!("Bearer {}==", table.warmup_token);
        let junk = [format!("Bearer {}", table.warmup_token).as_bytes(), b"\xff"].concat();
        for value in [padded.as_bytes(), junk.as_slice()] {
            let r = table
                .run_request(&mut host, 0, &Request::get("/web/lenient").header_bytes("authorization", value))
                .unwrap();
            assert_eq!((r.status, r.reason().as_deref()), (403, Some("machine_on_human_route")), "{profile}");
            assert!(r.upstream_request.is_none(), "{profile}");
        }
        for worker in host.workers() {
            assert!(
                worker.trap().is_none() && worker.violations().is_empty(),
                "{profile}: {:?}",
                worker.violations()
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// Fail closed, per host call: every `env` call a machine request makes, failed in
// turn in the Envoy-like emulator (issue 24).

/// What a request came to with one host call failing.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    /// Forwarded with the verified identity, as without the fault.
    Forwarded,
    /// Refused locally with this status and reason.
    Refused(u16, Option<String>),
    /// Forwarded, but not as the verified machine (the one outcome never allowed).
    ForwardedWrongly(String),
}

/// Sends a first request (token verified and cached), then the same again with
/// `call` failing, on a fresh proxy; `fresh` fails the first request instead.
fn fate_with_failing(table: &Table, call: &str, fresh: bool) -> Fate {
    use test_harness::emulator::Status;
    let mut host = Host::new(Profile::Full).unwrap();
    table.start(&mut host).unwrap();
    let worker = host.worker(0).unwrap();
    let request = Request::get("/api/faults").bearer(&table.warmup_token);
    if !fresh {
        assert_eq!(worker.send(&request).unwrap().status, 200);
    }
    worker.fail_calls(call, Status::InternalFailure);
    let exchange = worker.send(&request);
    worker.heal();
    let exchange = match exchange {
        Ok(exchange) => exchange,
        // The filter stopped and waits (e.g. for a callout it could not make).
        Err(err) => return Fate::Refused(0, Some(format!("{err:#}"))),
    };
    assert!(worker.trap().is_none(), "{call}: the VM trapped: {:?}", worker.trap());
    match &exchange.upstream_request {
        None => Fate::Refused(exchange.status, exchange.reason()),
        Some(_) => {
            let identity = upstream_values(&exchange, "x-nhi-identity");
            let client = upstream_values(&exchange, "x-nhi-client");
            let token = upstream_values(&exchange, "authorization");
            if identity.len() == 1 && client == vec![b"machine".to_vec()] && token.is_empty() {
                Fate::Forwarded
            } else {
                Fate::ForwardedWrongly(format!(
                    "identity {identity:?}, client {client:?}, token {}",
                    token.len()
                ))
            }
        }
    }
}

/// What each call's failure must do. A call the decision depends on refuses the
/// request with 500; a call that only observes (metrics, filter state, the log)
/// fails harmlessly. Nothing may forward a request without its verified identity.
const FAULT_TABLE: [(&str, Option<u16>, &str); 12] = [
    ("proxy_get_header_map_pairs", Some(500), "the request cannot be read"),
    ("proxy_remove_header_map_value", Some(500), "the token or a forged header stays"),
    ("proxy_replace_header_map_value", Some(500), "the verified identity could not be set"),
    ("proxy_get_shared_data", Some(500), "the identity's quota cannot be read"),
    ("proxy_set_shared_data", Some(500), "the identity's quota cannot be charged"),
    ("proxy_get_current_time_nanoseconds", None, "WASI's clock stands in (the two agree)"),
    ("proxy_get_property", None, "no route of this configuration decides on a property"),
    ("proxy_define_metric", None, "metrics only observe"),
    ("proxy_increment_metric", None, "metrics only observe"),
    ("proxy_record_metric", None, "metrics only observe"),
    ("proxy_set_property", None, "filter state only observes (access logs)"),
    ("proxy_log", None, "a log line that cannot be written is dropped"),
];

#[test]
fn every_host_call_of_a_machine_request_fails_closed_in_the_emulator() {
    let table = Table::new(jwks_upstream(Profile::Full)).unwrap();
    let mut checked = 0;
    for fresh in [false, true] {
        let mut host = Host::new(Profile::Full).unwrap();
        table.start(&mut host).unwrap();
        let worker = host.worker(0).unwrap();
        let request = Request::get("/api/faults").bearer(&table.warmup_token);
        if !fresh {
            worker.send(&request).unwrap();
        }
        worker.reset_host_calls();
        worker.send(&request).unwrap();
        let calls: Vec<String> =
            worker.host_calls().keys().filter(|name| name.starts_with("proxy_")).cloned().collect();
        for call in &calls {
            let kind = if fresh { "first request" } else { "cached token" };
            let (_, status, why) = FAULT_TABLE
                .iter()
                .find(|(name, _, _)| name == call)
                .unwrap_or_else(|| panic!("{call} is not in FAULT_TABLE: say what its failure must do"));
            let fate = fate_with_failing(&table, call, fresh);
            let expected = match status {
                Some(status) => Fate::Refused(*status, Some("internal_error".into())),
                None => Fate::Forwarded,
            };
            assert_eq!(fate, expected, "{kind}, {call} failing ({why})");
            println!("{kind}: {call} failing -> {fate:?} ({why})");
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} calls were failed in turn");
}

// ---------------------------------------------------------------------------------
// Credential lifecycle under APISIX: the review and the feed are callouts from the
// request that needs them, their answers cached per VM (no shared data).

const K8S_ISS: &str = "https://kubernetes.default.svc.cluster.local";
const API_SERVER: &str = "127.0.0.1:6443";
const FEED: &str = "127.0.0.1:8090";

fn lifecycle_plugin() -> serde_json::Value {
    let key = TestKeys::shared().unwrap().by_type(KeyType::P256);
    json!({
        "host": "apisix",
        "issuers": [{
            "name": "cluster", "issuer": K8S_ISS, "audiences": ["nhi-gateway"],
            "jwks": {"inline": test_harness::keys::jwks([key])}, "algorithms": ["ES256"],
            "profile": {"type": "kubernetes",
                        "service_accounts": [{"name": "payments/api", "uid": "uid-api-1"}, "ci/*"],
                        "liveness": {"cluster": API_SERVER, "cache_seconds": 10, "timeout_ms": 1000,
                                     "on_unavailable": "deny"}}
        }],
        "revocation": {"cluster": FEED, "authority": "feed", "path": "/revocations.json", "refresh_seconds": 5},
        "inventory": {"path": "/inventory", "source_cidrs": ["127.0.0.1/32"]},
        "routes": [{"name": "api", "match": {"prefix": "/api/"}}]
    })
}

fn k8s_token(ns: &str, name: &str, uid: &str, jti: &str) -> String {
    let key = TestKeys::shared().unwrap().by_type(KeyType::P256);
    let now = mint::now();
    Token::new(Alg::Es256)
        .claims(json!({
            "iss": K8S_ISS, "aud": ["nhi-gateway"], "iat": now, "exp": now + 3600, "jti": jti,
            "sub": format!("system:serviceaccount:{ns}:{name}"),
            "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": name, "uid": uid},
                              "pod": {"name": "p", "uid": "pod-uid"}}
        }))
        .sign(key)
        .unwrap()
}

/// The API server and the feed as the test has them: which tokens are live, what
/// the feed lists. Answers every callout of request `id` until it has none, then
/// finishes it; returns the exchange and the callouts' paths.
struct World {
    live: Vec<String>,
    feed: serde_json::Value,
}

impl World {
    fn answer(&self, callout: &test_harness::emulator::Callout) -> CalloutReply {
        match (callout.upstream.as_str(), callout.header(":path")) {
            (API_SERVER, Some("/apis/authentication.k8s.io/v1/tokenreviews")) => {
                let review: serde_json::Value = serde_json::from_slice(&callout.body).unwrap();
                let token = review["spec"]["token"].as_str().unwrap();
                // Authenticated as the service account its `sub` names, while it is live.
                let status = if self.live.iter().any(|t| t == token) {
                    json!({"authenticated": true, "audiences": review["spec"]["audiences"],
                           "user": {"username": subject_of(token)}})
                } else {
                    json!({"user": {}, "error": "pod not found"})
                };
                let mut answer = review.clone();
                answer["status"] = status;
                CalloutReply::new(201, answer.to_string())
            }
            (FEED, Some("/revocations.json")) => CalloutReply::new(200, self.feed.to_string()),
            other => panic!("unexpected callout {other:?}"),
        }
    }

    fn send(
        &self,
        worker: &mut test_harness::emulator::Worker,
        request: &Request,
    ) -> (u16, Option<String>, Vec<String>) {
        let id = worker.start_request(request).unwrap();
        let mut paths = Vec::new();
        while let Some(callout) = worker.callouts().into_iter().find(|c| c.context == id) {
            assert_eq!(
                callout.context, id,
                "the callout belongs to the request (APISIX has no root callouts)"
            );
            paths.push(callout.header(":path").unwrap_or_default().to_owned());
            worker.answer_callout(callout.token, Some(self.answer(&callout))).unwrap();
        }
        let exchange = worker.finish(id, &UpstreamResponse::ok()).unwrap();
        (exchange.status, exchange.reason(), paths)
    }
}

fn subject_of(token: &str) -> String {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap())
            .unwrap();
    claims["sub"].as_str().unwrap().to_owned()
}

#[test]
fn lifecycle_under_the_apisix_profiles_reviews_from_the_request_and_caches_per_vm() {
    const REVIEW: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
    for profile in [Profile::ApisixLike, Profile::ApisixNoop] {
        let mut host = Host::new(profile).unwrap();
        let a = host.start_worker_json(&lifecycle_plugin()).unwrap();
        let b = host.start_worker_json(&lifecycle_plugin()).unwrap();
        let api = k8s_token("payments", "api", "uid-api-1", "api-1");
        let mut world = World { live: vec![api.clone()], feed: json!({"jti": []}) };

        // The first request reviews its token and loads the feed, from itself.
        let (status, reason, paths) =
            world.send(host.worker(a).unwrap(), &Request::get("/api/x").bearer(&api));
        assert_eq!((status, reason.as_deref()), (200, None), "{profile}");
        assert!(
            paths.iter().any(|p| p == REVIEW) && paths.iter().any(|p| p == "/revocations.json"),
            "{profile}: {paths:?}"
        );
        // The VM's cached verdict: no callout. Another VM reviews for itself (per-VM caches).
        let (status, _, paths) = world.send(host.worker(a).unwrap(), &Request::get("/api/x").bearer(&api));
        assert_eq!((status, paths.len()), (200, 0), "{profile}: {paths:?}");
        let (status, _, paths) = world.send(host.worker(b).unwrap(), &Request::get("/api/x").bearer(&api));
        assert_eq!(status, 200, "{profile}");
        assert!(paths.iter().any(|p| p == REVIEW), "{profile}: VM b has its own cache: {paths:?}");

        // The pod is deleted: once the cached answer is older than cache_seconds, refused.
        world.live.clear();
        let (status, _, paths) = world.send(host.worker(a).unwrap(), &Request::get("/api/x").bearer(&api));
        assert_eq!((status, paths.len()), (200, 0), "{profile}: within cache_seconds, the cached verdict");
        host.advance(Duration::from_secs(11)).unwrap();
        let (status, reason, _) = world.send(host.worker(a).unwrap(), &Request::get("/api/x").bearer(&api));
        assert_eq!((status, reason.as_deref()), (401, Some("workload_gone")), "{profile}");

        // A recreated account: refused by its UID, before any review.
        let recreated = k8s_token("payments", "api", "uid-api-2", "api-2");
        world.live.push(recreated.clone());
        let (status, reason, paths) =
            world.send(host.worker(a).unwrap(), &Request::get("/api/x").bearer(&recreated));
        assert_eq!((status, reason.as_deref()), (401, Some("service_account_replaced")), "{profile}");
        assert!(!paths.iter().any(|p| p == REVIEW), "{profile}: {paths:?}");

        // The feed names a jti: applied on the request that refreshes it, no reload.
        let ci = k8s_token("ci", "deployer", "uid-ci", "ci-jti-1");
        world.live.push(ci.clone());
        assert_eq!(
            world.send(host.worker(a).unwrap(), &Request::get("/api/x").bearer(&ci)).0,
            200,
            "{profile}"
        );
        world.feed = json!({"jti": ["ci-jti-1"]});
        host.advance(Duration::from_secs(6)).unwrap();
        let (status, reason, paths) =
            world.send(host.worker(a).unwrap(), &Request::get("/api/x").bearer(&ci));
        let refreshed = paths.iter().any(|p| p == "/revocations.json");
        let (status, reason) = if refreshed && status == 200 {
            // The refresh came after the decision (an allowed request refreshes what is due).
            let (s, r, _) = world.send(host.worker(a).unwrap(), &Request::get("/api/x").bearer(&ci));
            (s, r)
        } else {
            (status, reason)
        };
        assert_eq!((status, reason.as_deref()), (401, Some("token_revoked")), "{profile}: {paths:?}");

        // The inventory: this VM's identities, to an allowed source only.
        let inventory = host.worker(a).unwrap().send(&Request::get("/inventory")).unwrap();
        assert_eq!(inventory.status, 200, "{profile}");
        let listed = inventory.body_json().unwrap();
        let ci_entry =
            listed["identities"].as_array().unwrap().iter().find(|i| i["identity"] == "ci/deployer");
        assert!(ci_entry.is_some_and(|e| e["requests"].as_u64() >= Some(1)), "{profile}: {listed}");
        let other = host
            .worker(a)
            .unwrap()
            .send(&Request::get("/inventory").source(std::net::SocketAddr::from(([10, 9, 9, 9], 4000))))
            .unwrap();
        assert_eq!(other.status, 403, "{profile}");
        for worker in host.workers() {
            assert!(
                worker.trap().is_none() && worker.violations().is_empty(),
                "{profile}: {:?}",
                worker.violations()
            );
        }
    }
}

/// [`lifecycle_plugin`] on the Envoy profile, liveness only (its API server the
/// `kube_api` cluster; no revocation feed, no inventory).
fn envoy_liveness_plugin() -> serde_json::Value {
    let mut plugin = lifecycle_plugin();
    plugin["host"] = json!("envoy");
    plugin["issuers"][0]["profile"]["liveness"]["cluster"] = json!("kube_api");
    for block in ["revocation", "inventory"] {
        plugin.as_object_mut().unwrap().remove(block);
    }
    plugin
}

/// The API server's answer to `review`: authenticated, as service account `account`
/// (`namespace:name`).
fn authenticated(account: &str, review: &test_harness::emulator::Callout) -> CalloutReply {
    let mut answer: serde_json::Value = serde_json::from_slice(&review.body).unwrap();
    answer["status"] = json!({"authenticated": true, "audiences": ["nhi-gateway"],
                              "user": {"username": format!("system:serviceaccount:{account}")}});
    CalloutReply::new(201, answer.to_string())
}

/// A token whose liveness verdict is fresh costs no host call beyond the ordinary
/// cached path (Envoy profile, shared data counted): the verdict is kept with the
/// worker's cached token.
#[test]
fn a_fresh_liveness_verdict_adds_no_host_call_to_a_cached_request() {
    let mut with = envoy_liveness_plugin();
    with["decision_log"] = json!({"enabled": false});
    let mut without = with.clone();
    without["issuers"][0]["profile"].as_object_mut().unwrap().remove("liveness");
    let api = k8s_token("payments", "api", "uid-api-1", "api-1");
    let mut calls = Vec::new();
    for plugin in [&without, &with] {
        let mut host = Host::new(Profile::Full).unwrap();
        let w = host.start_worker_json(plugin).unwrap();
        let worker = host.worker(w).unwrap();
        let request = Request::get("/api/x").bearer(&api);
        let id = worker.start_request(&request).unwrap();
        let reviews: Vec<_> = worker.callouts().into_iter().filter(|c| c.context == id).collect();
        assert_eq!(reviews.len(), usize::from(plugin.pointer("/issuers/0/profile/liveness").is_some()));
        for callout in reviews {
            assert_eq!(callout.upstream, "kube_api");
            worker.answer_callout(callout.token, Some(authenticated("payments:api", &callout))).unwrap();
        }
        assert_eq!(worker.finish(id, &UpstreamResponse::ok()).unwrap().status, 200);
        worker.reset_host_calls();
        let cached = worker.send(&request).unwrap();
        assert_eq!(cached.status, 200);
        assert!(worker.callouts().is_empty());
        calls.push(worker.host_calls().clone());
    }
    assert_eq!(calls[1], calls[0], "with liveness (right) against without (left)");
}

/// Requests that find another request reviewing their token wait for its verdict, on
/// the same VM and on another: each VM asks the host for its fast tick (50 ms) as soon
/// as one of its requests parks, so they go on within one fast tick of the verdict
/// rather than at the ordinary 500 ms tick (in Envoy they stalled up to 440 ms).
#[test]
fn requests_waiting_for_another_review_go_on_within_a_fast_tick() {
    let plugin = envoy_liveness_plugin();
    let mut host = Host::new(Profile::Full).unwrap();
    let (a, b) = (host.start_worker_json(&plugin).unwrap(), host.start_worker_json(&plugin).unwrap());
    let ordinary = host.worker(a).unwrap().tick_period();
    assert_eq!(ordinary, Duration::from_millis(500));
    let request = Request::get("/api/x").bearer(&k8s_token("payments", "api", "uid-api-1", "api-1"));
    // The first request takes the review; one more on its VM and one on the other wait.
    let first = host.worker(a).unwrap().start_request(&request).unwrap();
    let review = host.worker(a).unwrap().callouts().into_iter().find(|c| c.context == first).unwrap();
    let same_vm = host.worker(a).unwrap().start_request(&request).unwrap();
    let other_vm = host.worker(b).unwrap().start_request(&request).unwrap();
    for (w, id) in [(a, same_vm), (b, other_vm)] {
        let worker = host.worker(w).unwrap();
        assert_eq!(worker.stream(id).unwrap().flow, Flow::Paused, "request {id} waits for the review");
        assert_eq!(worker.tick_period(), Duration::from_millis(50), "its VM ticks fast at once");
    }
    let worker = host.worker(a).unwrap();
    worker.answer_callout(review.token, Some(authenticated("payments:api", &review))).unwrap();
    assert_eq!(worker.finish(first, &UpstreamResponse::ok()).unwrap().status, 200);
    host.advance(Duration::from_millis(60)).unwrap();
    for (w, id) in [(a, same_vm), (b, other_vm)] {
        let worker = host.worker(w).unwrap();
        assert_eq!(worker.stream(id).unwrap().flow, Flow::Continued, "request {id}: one fast tick later");
        assert_eq!(worker.finish(id, &UpstreamResponse::ok()).unwrap().status, 200);
    }
    // Nobody waits any more: back to the ordinary period on the next tick.
    host.advance(Duration::from_millis(60)).unwrap();
    for w in [a, b] {
        assert_eq!(host.worker(w).unwrap().tick_period(), ordinary);
        assert!(host.worker(w).unwrap().trap().is_none());
    }
}

/// Fixed primes of RSA-3072 and RSA-4096 test keys (`openssl genpkey`), for
/// [`rsa_keys_of_every_size_verify_through_the_wasm_simd_kernel`]: generating keys that
/// size in the test took 16 s. Test keys, used nowhere else.
const RSA_3072_P: &str = concat!(
    "bed1eab229a2df3d89fdcb77966be645c8c9ea20c23b97c4b7e38a31219fe9074bdb3b721b2fd6879f54f053c8d0578a",
    "1083cbb3ab9847819b02befe9848d990283bc35ffc10351317da803edab51d481dcf3c58863d2becbd4203fc9ee3a3de",
    "81ca53e62891056d01e7126e25e1b041da68a00bb24590eaa8d52106a33441d57607f07c4c455d232677b936af0f23b2",
    "61ddb1972dfdf1e13adf4489b5a7380f5c76ed8bc51d3262729b4340a3f2f98a29d6d52a3204669c4961fda592ab0e21",
);
const RSA_3072_Q: &str = concat!(
    "bb9a1973dd00d41abe64cd788f5eb6350776267feb8af4acbcf420553141e6e706d14df124e04497d94137ffe554eea8",
    "2101ca8c2010a38a09e2303c1b2b083cabeaca3ee25616700cdb78b6f0c9bc9bd792b970535452d8146f178cfc6ccfe1",
    "9227d0c9d3763db662a0ec9fa30a58509c7526b154e2098e0eba469ea09e44ef174d42a99fdbfceb295c840dc5eed16e",
    "38c17c0e49637f39fd4bb6976e55671b0942a33b3175734acea6eed6d0667ed8e3aa77f663ac6ceeb87ce39bb0eab3df",
);
const RSA_4096_P: &str = concat!(
    "edddcd748395bb8234257c0a6d3e97ce9592ec6a6ea4b3ec3ed112b534593f44cd253fc4a70d82890290ef868be6ba02",
    "409049416c745239d4d6db21acf78a63dd4b0358ca2b5150a836fd6457e8631b5970018ce855a80f6851d548778cf052",
    "3dd6dc99fad88b0a158fd79b938368e07d49ab8c47f8a8f74779e284ec8c4f1976736250c766689e0393fb6b56c81bf1",
    "2698efce065b05539ac17f9191ae36585caef4bd31ad2440fcf6a96f40cb4e87cb121d0edf1fb316bd09b2baf5172e64",
    "fb61538bf364f5f8ddc5b99842efb31f6804e0c6e1bddf3a9bf60b9f39e3f1bca768477d757d69325295b3dd6a203dad",
    "823e920e0dfbbac92c77eaacb816a9ab",
);
const RSA_4096_Q: &str = concat!(
    "c4aeec4e4057c361a31e0a9a48390b79f61a75d7160bbfe20df9360715d8ce46f49c74bfeadc742cc57368d3e310a191",
    "24209aa1e9cc02d77e58cbb8b1e7a6f0fb9e8651576747dd4b356ffb0a74513274700ff13bf4f68d9d965ab34f71da8a",
    "4d561cbd5f002f971876e3d0238c757c7861207f24c59c4fc05214be261d10beddd20673c0e6eec4849fcc572f3ad5ce",
    "4e01905f1a5065dfb0181a5dddbccd5225a8f4c427ce6c54728c859fe52c647f01070412bbac7882a116b26dee6a1ac2",
    "83d8c3126688a066f7e2315b53bd8e53040b1628c13471be2bd0b45c6985926dc7def9a542b88e12edd935a35a9a9b71",
    "1988f75fba359210957f9e2c7030347f",
);

/// RSA keys of every size the filter takes, through the release wasm, where the
/// Montgomery kernel's dot products run in wasm SIMD, four limbs at a time and a
/// scalar tail (the native unit tests never reach that code): up to 74 limbs long for
/// RSA-2048, 110 for RSA-3072 and 147 for RSA-4096. The keys and signatures come from
/// the `rsa` crate; each token is accepted, and refused once one bit of its signature
/// is flipped.
#[test]
fn rsa_keys_of_every_size_verify_through_the_wasm_simd_kernel() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use test_harness::keys::{KeyMaterial, TestKey};

    const ISS: &str = "https://rsa-sizes.nhi-guard.test";
    let from_primes = |bits: usize, p: &str, q: &str| {
        let prime = |hex: &str| rsa::BigUint::parse_bytes(hex.as_bytes(), 16).unwrap();
        let private =
            rsa::RsaPrivateKey::from_p_q(prime(p), prime(q), rsa::BigUint::from(65_537u32)).unwrap();
        TestKey::from_material(format!("rsa-{bits}"), KeyMaterial::Rsa(private))
    };
    let keys = [
        TestKeys::shared().unwrap().by_type(KeyType::Rsa).with_kid("rsa-2048"),
        from_primes(3072, RSA_3072_P, RSA_3072_Q),
        from_primes(4096, RSA_4096_P, RSA_4096_Q),
    ];
    let plugin = json!({
        "issuers": [{ "name": "sizes", "issuer": ISS, "audiences": ["gw"],
                      "jwks": { "inline": test_harness::keys::jwks(&keys) },
                      "algorithms": ["RS256", "RS512", "PS256"] }],
        "routes": [{ "name": "api", "match": { "prefix": "/" }, "audience": "machine" }]
    });
    let mut host = Host::new(Profile::Full).unwrap();
    host.start_worker_json(&plugin).unwrap();
    let mut source = 0u8;
    let mut send = |host: &mut Host, token: &str| {
        // A fresh source for each: the flood guard never steps in.
        source += 1;
        let request = Request::get("/api/x")
            .bearer(token)
            .source(std::net::SocketAddr::from(([10, 0, 0, source], 40_000)));
        host.worker(0).unwrap().send(&request).unwrap()
    };
    for key in &keys {
        for alg in [Alg::Rs256, Alg::Rs512, Alg::Ps256] {
            let token = Token::new(alg)
                .claim("iss", ISS)
                .claim("aud", "gw")
                .claim("sub", key.kid())
                .sign(key)
                .unwrap();
            let exchange = send(&mut host, &token);
            assert_eq!(exchange.status, 200, "{} {}: {:?}", key.kid(), alg.name(), exchange.reason());
            assert_eq!(exchange.upstream_header("x-nhi-identity"), Some(key.kid()));

            let (signing_input, signature) = token.rsplit_once('.').unwrap();
            let mut signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
            let middle = signature.len() / 2;
            signature[middle] ^= 0x10;
            let forged = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(&signature));
            let exchange = send(&mut host, &forged);
            assert_eq!(exchange.status, 401, "{} {}", key.kid(), alg.name());
            assert_eq!(exchange.reason().as_deref(), Some("bad_signature"), "{} {}", key.kid(), alg.name());
        }
    }
    let worker = host.worker(0).unwrap();
    assert!(worker.trap().is_none(), "{:?}", worker.trap());
}
