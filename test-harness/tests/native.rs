//! The native shell (native/, an Envoy dynamic module) in a real Envoy with two
//! workers, loaded by the shipped envoy/envoy-native.yaml: the same core, the same
//! configuration JSON as the wasm, the same answers.
//!
//! Needs the module built (`make native`); a missing module fails, never skips.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use test_harness::envoy::{self, native_config_path, native_module_path, Envoy, EnvoyOptions};
use test_harness::envoy_config::EnvoyConfig;
use test_harness::http::{self, Response};
use test_harness::keys::{KeyType, TestKey, TestKeys};
use test_harness::kube_api::{self, Availability, KubeApi};
use test_harness::mint::{self, Alg, Token};
use test_harness::prometheus::Scrape;
use test_harness::upstream::EchoUpstream;

/// Requests `robot-quota` may make in the test (the window never refills during it).
const QUOTA: usize = 30;

struct Native {
    envoy: Envoy,
    upstream: EchoUpstream,
    web: EchoUpstream,
    plugin: Value,
}

/// The shipped plugin configuration, with the test keys inline and a quota.
fn plugin() -> Value {
    let mut plugin = EnvoyConfig::load(&native_config_path()).unwrap().plugin_configuration().unwrap();
    plugin["issuers"][0]["jwks"] = json!({ "inline": TestKeys::shared().unwrap().jwks() });
    plugin["quotas"] = json!({
        "default": { "requests": 1000, "per_seconds": 3600 },
        "rules": [{ "name": "tight", "identities": ["robot-quota"], "requests": QUOTA, "per_seconds": 3600 }],
        "max_tracked_identities": 1000,
        "response_headers": true
    });
    // Statuses and latencies per identity: read from Envoy's `response.code` at the end.
    plugin["behaviour"] = json!({ "outcome_metrics": true });
    plugin
}

fn start() -> Native {
    let module = native_module_path().unwrap();
    let upstream = EchoUpstream::start_named("upstream").unwrap();
    let web = EchoUpstream::start_named("web").unwrap();
    let plugin = plugin();
    let options = EnvoyOptions::new()
        .native(&module)
        .unwrap()
        .cluster("upstream", upstream.addr())
        .cluster("web", web.addr())
        .plugin_configuration(plugin.clone());
    assert_eq!(options.concurrency, 2);
    let envoy = Envoy::start(&options).unwrap();
    let log = envoy.log();
    assert!(log.contains("Dynamic module ABI version v0.2.0 matched."), "{log}");
    Native { envoy, upstream, web, plugin }
}

impl Native {
    fn addr(&self) -> SocketAddr {
        self.envoy.listener_addr()
    }

    fn key(&self) -> &'static TestKey {
        TestKeys::shared().unwrap().by_type(KeyType::P256)
    }

    /// A valid ES256 token for `sub`, with `claims` on top.
    fn token(&self, sub: &str, claims: &[(&str, Value)]) -> String {
        let mut token = Token::new(Alg::Es256)
            .kid(self.key().kid())
            .claim("iss", self.plugin["issuers"][0]["issuer"].clone())
            .claim("aud", self.plugin["issuers"][0]["audiences"][0].clone())
            .claim("sub", sub);
        for (name, value) in claims {
            token = token.claim(name, value.clone());
        }
        token.sign(self.key()).unwrap()
    }

    fn get(&self, path: &str, token: Option<&str>, extra: &[(&str, &[u8])]) -> Response {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &[u8])> = extra.to_vec();
        if let Some(bearer) = &bearer {
            headers.push(("authorization", bearer.as_bytes()));
        }
        http::request_raw(self.addr(), "GET", path, &headers).unwrap()
    }
}

fn reason(response: &Response) -> String {
    response.body_json().map(|b| b["reason"].as_str().unwrap_or_default().to_owned()).unwrap_or_default()
}

fn echo(response: &Response) -> Value {
    response.body_json().unwrap()
}

#[test]
fn the_native_shell_decides_as_the_wasm_does() {
    let native = start();
    native.envoy.showing_log_on_panic(|| {
        a_valid_token_is_forwarded_with_its_identity(&native);
        refusals_carry_their_reason_codes(&native);
        forged_identity_headers_never_reach_a_backend(&native);
        a_machine_token_on_the_human_route_is_refused(&native);
        a_quota_is_exact_across_both_workers(&native);
        the_metrics_are_the_wasms_under_envoys_module_prefix(&native);
    });
}

fn a_valid_token_is_forwarded_with_its_identity(native: &Native) {
    let token = native.token("robot-a", &[]);
    let response = native.get("/api/orders", Some(&token), &[]);
    assert_eq!(response.status, 200, "{}", response.body_text());
    let echoed = echo(&response);
    assert_eq!(echoed["backend"], "upstream", "a verified machine identity is routed to the machine backend");
    assert_eq!(echoed["headers"]["x-nhi-identity"], "robot-a");
    assert_eq!(echoed["headers"]["x-nhi-issuer"], native.plugin["issuers"][0]["name"]);
    assert!(echoed["headers"].get("authorization").is_none(), "the token is not forwarded: {echoed}");
    // The quota headers come back on the response (set in the response phase).
    assert_eq!(response.header("ratelimit-policy"), Some(r#""default";q=1000;w=3600"#));
}

fn refusals_carry_their_reason_codes(native: &Native) {
    let hits = native.upstream.hits();
    let missing = native.get("/api/orders", None, &[]);
    assert_eq!((missing.status, reason(&missing).as_str()), (401, "missing_token"));

    let token = native.token("robot-a", &[]);
    let (rest, signature) = token.rsplit_once('.').unwrap();
    let flipped = if signature.starts_with('A') { "B" } else { "A" };
    let forged = format!("{rest}.{flipped}{}", &signature[1..]);
    let bad = native.get("/api/orders", Some(&forged), &[]);
    assert_eq!((bad.status, reason(&bad).as_str()), (401, "bad_signature"));

    let expired =
        native.token("robot-a", &[("exp", json!(mint::now() - 3_600)), ("iat", json!(mint::now() - 7_200))]);
    let expired = native.get("/api/orders", Some(&expired), &[]);
    assert_eq!((expired.status, reason(&expired).as_str()), (401, "expired"));

    let elsewhere = native.token("robot-a", &[("aud", json!("someone-else"))]);
    let elsewhere = native.get("/api/orders", Some(&elsewhere), &[]);
    assert_eq!((elsewhere.status, reason(&elsewhere).as_str()), (401, "wrong_audience"));

    assert_eq!(native.upstream.hits(), hits, "no refused request reached the backend");
}

fn forged_identity_headers_never_reach_a_backend(native: &Native) {
    let not_utf8: &[u8] = b"admin-bot\xa0";
    // A person's request (no token) on the human route, with forged identity headers
    // (one of them not UTF-8) and a forged machine class: served by the web backend,
    // without the forged values.
    let before = native.web.received_for("/web/forged").len();
    let response = native.get(
        "/web/forged",
        None,
        &[("x-nhi-identity", b"admin-bot"), ("x-nhi-issuer", not_utf8), ("x-nhi-client", b"machine")],
    );
    assert_eq!(response.status, 200, "{}", response.body_text());
    assert_eq!(echo(&response)["backend"], "web", "a forged x-nhi-client must not pick the machine route");
    // Refused, it is answered on the route it has, not the one its forged header
    // picked before the filter ran (the machine route adds `cache-control: no-store`).
    let refused = native.get("/api/orders", None, &[("x-nhi-client", b"machine")]);
    assert_eq!((refused.status, reason(&refused).as_str()), (401, "missing_token"));
    assert_eq!(refused.header("cache-control"), None, "answered on the machine route");
    let token = native.token("robot-a", &[]);
    let machine = native.get("/api/orders", Some(&token), &[]);
    assert_eq!(machine.header("cache-control"), Some("no-store"), "the machine route's header");
    let received = native.web.received_for("/web/forged");
    assert_eq!(received.len(), before + 1);
    let request = received.last().unwrap();
    for name in ["x-nhi-identity", "x-nhi-issuer"] {
        assert!(
            request.header_values(name).is_empty(),
            "{name} reached the backend: {:?}",
            request.header_values(name)
        );
    }
    // The client class is nhi-guard's own, never the client's.
    assert_eq!(request.header_values("x-nhi-client"), vec!["human"]);

    // With a valid token, a forged non-UTF-8 copy is replaced by the verified identity.
    let token = native.token("robot-b", &[]);
    let response = native.get("/api/forged", Some(&token), &[("x-nhi-identity", not_utf8)]);
    assert_eq!(response.status, 200, "{}", response.body_text());
    let request = native.upstream.received_for("/api/forged").pop().unwrap();
    assert_eq!(request.header_values("x-nhi-identity"), vec!["robot-b"]);
}

fn a_machine_token_on_the_human_route_is_refused(native: &Native) {
    let hits = native.web.hits();
    let token = native.token("robot-a", &[]);
    let response = native.get("/web/index.html", Some(&token), &[]);
    assert_eq!(response.status, 403, "{}", response.body_text());
    assert_eq!(native.web.hits(), hits);
}

/// Workers' listener connection counters, from Envoy's admin stats.
fn connections_per_worker(envoy: &Envoy) -> BTreeMap<String, u64> {
    let stats = envoy.admin_text("/stats?filter=worker_.*downstream_cx_total").unwrap();
    stats
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(": ")?;
            let worker = name.split('.').find(|part| part.starts_with("worker_"))?;
            Some((worker.to_owned(), value.trim().parse::<u64>().ok()?))
        })
        .fold(BTreeMap::new(), |mut acc, (worker, n)| {
            *acc.entry(worker).or_default() += n;
            acc
        })
}

fn a_quota_is_exact_across_both_workers(native: &Native) {
    let token = native.token("robot-quota", &[]);
    let before = connections_per_worker(&native.envoy);
    // 16 clients of 20 requests, each on a connection of its own.
    let total = 16 * 20;
    let counts = http::bearer_status_counts(native.addr(), "/api/quota", &token, 16, total).unwrap();
    let after = connections_per_worker(&native.envoy);
    println!("robot-quota, limit {QUOTA}, {total} requests from 16 clients: {counts:?}");
    println!("connections per worker before {before:?}, after {after:?}");
    assert_eq!(counts.get(&200), Some(&QUOTA), "admitted must equal the limit: {counts:?}");
    assert_eq!(counts.get(&429), Some(&(total - QUOTA)), "{counts:?}");
    // Both workers took connections in the burst: the count was shared, not per worker.
    let served: Vec<_> =
        after.iter().filter(|(worker, n)| **n > before.get(*worker).copied().unwrap_or(0)).collect();
    assert_eq!(served.len(), 2, "both workers must serve the burst: before {before:?}, after {after:?}");
    let refused = native.get("/api/quota", Some(&token), &[]);
    assert_eq!((refused.status, reason(&refused).as_str()), (429, "quota_exceeded"));
}

const CLUSTER_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// A Kubernetes issuer whose discovery document, keys and TokenReviews all come from
/// the API server double, through Envoy's HTTP callout from the requests that need them.
fn kubernetes_issuer() -> Value {
    json!({
        "name": "cluster",
        "issuer": CLUSTER_ISSUER,
        "audiences": ["nhi-gateway"],
        "discovery": { "cluster": "kube_api", "authority": "kubernetes.default.svc" },
        "jwks": { "refresh_seconds": 300, "timeout_ms": 2000, "min_refetch_seconds": 1 },
        "algorithms": ["ES256"],
        "profile": {
            "type": "kubernetes",
            "service_accounts": ["ci/*"],
            "liveness": { "cluster": "kube_api", "authority": "kubernetes.default.svc",
                          "path": kube_api::TOKEN_REVIEW_PATH, "cache_seconds": 60,
                          "timeout_ms": 1000, "on_unavailable": "deny" }
        }
    })
}

/// A projected service-account token of `ci/NAME`, signed by the cluster's key.
fn service_account_token(name: &str) -> String {
    service_account_token_with_kid(name, TestKeys::shared().unwrap().by_type(KeyType::P256).kid())
}

/// The same, naming the signing key `kid` (one the cluster may not publish).
fn service_account_token_with_kid(name: &str, kid: &str) -> String {
    let key = TestKeys::shared().unwrap().by_type(KeyType::P256);
    let now = mint::now();
    Token::new(Alg::Es256)
        .kid(kid)
        .claims(json!({
            "iss": CLUSTER_ISSUER, "aud": ["nhi-gateway"], "iat": now, "nbf": now, "exp": now + 3600,
            "sub": format!("system:serviceaccount:ci:{name}"),
            "kubernetes.io": {
                "namespace": "ci",
                "pod": {"name": format!("{name}-7d9f8-x2kqv"), "uid": "6f1a7c1e-0000-4000-8000-000000000002"},
                "serviceaccount": {"name": name, "uid": "6f1a7c1e-0000-4000-8000-000000000003"}
            }
        }))
        .sign(key)
        .unwrap()
}

/// Remote keys (located by OIDC discovery) and TokenReview liveness in the native
/// shell: Envoy HTTP callouts (`envoy_dynamic_module_callback_http_filter_http_callout`)
/// made by the request that needs the answer, which waits for them and is then decided.
#[test]
fn keys_and_token_reviews_come_through_envoys_http_callout() {
    let module = native_module_path().unwrap();
    let kube = KubeApi::start(&TestKeys::shared().unwrap().jwks()).unwrap();
    kube.publish_discovery(CLUSTER_ISSUER);
    let upstream = EchoUpstream::start_named("upstream").unwrap();
    let web = EchoUpstream::start_named("web").unwrap();
    let mut plugin = plugin();
    plugin["issuers"].as_array_mut().unwrap().push(kubernetes_issuer());
    // Filter state, written by every decision (also by refusals sent from a callout's hook).
    plugin["filter_state"] = json!(true);
    let mut config = EnvoyConfig::load(&native_config_path()).unwrap();
    config.add_cluster_like("kube_api", "upstream").unwrap();
    let options = EnvoyOptions::new()
        .native(&module)
        .unwrap()
        .config(config)
        .cluster("upstream", upstream.addr())
        .cluster("web", web.addr())
        .cluster("kube_api", kube.addr())
        .plugin_configuration(plugin);
    let envoy = Envoy::start(&options).unwrap();
    let get = |token: &str| {
        let bearer = format!("Bearer {token}");
        http::request_raw(
            envoy.listener_addr(),
            "GET",
            "/api/builds",
            &[("authorization", bearer.as_bytes())],
        )
        .unwrap()
    };
    envoy.showing_log_on_panic(|| {
        assert!(kube.jwks_authorizations().is_empty(), "no fetch before a request needs the keys");
        assert_eq!(kube.discoveries(), 0);

        // The first request reads the discovery document, fetches the keys it names,
        // then asks for its token's review.
        let live = service_account_token("builder");
        kube.make_live(&live, "system:serviceaccount:ci:builder");
        let response = get(&live);
        assert_eq!(response.status, 200, "{}", response.body_text());
        assert_eq!(echo(&response)["headers"]["x-nhi-identity"], "ci/builder");
        assert_eq!(kube.reviews_of(&live), 1);
        let review = kube.reviews().pop().unwrap();
        assert_eq!(review.audiences, vec!["nhi-gateway".to_owned()]);

        // Many more, on connections of their own (both workers): the keys are fetched
        // at most once per worker, the review's verdict is shared by every worker.
        let counts = http::bearer_status_counts(envoy.listener_addr(), "/api/builds", &live, 8, 40).unwrap();
        assert_eq!(counts.get(&200), Some(&40), "{counts:?}");
        assert_eq!(kube.reviews_of(&live), 1, "one review per token per cache_seconds, for the whole Envoy");
        let fetches = kube.jwks_authorizations().len();
        assert!((1..=2).contains(&fetches), "keys fetched {fetches} times");
        assert_eq!(kube.discoveries(), 1, "the location found is shared by both workers");

        // A token the API server no longer authenticates (its pod or account is gone).
        let gone = service_account_token("deleted");
        let response = get(&gone);
        assert_eq!((response.status, reason(&response).as_str()), (401, "workload_gone"));
        assert_eq!(kube.reviews_of(&gone), 1);

        // A fresh token in a burst over both workers while the API server is slow: one
        // review; the other requests wait for its answer (woken on their own worker
        // when it is recorded) instead of being decided by `on_unavailable`.
        let burst = service_account_token("burst");
        kube.make_live(&burst, "system:serviceaccount:ci:burst");
        kube.set_availability(Availability::Stalled(Duration::from_millis(300)));
        let before = connections_per_worker(&envoy);
        let counts = http::bearer_status_counts(envoy.listener_addr(), "/api/builds", &burst, 8, 8).unwrap();
        let after = connections_per_worker(&envoy);
        kube.set_availability(Availability::Answering);
        assert_eq!(counts.get(&200), Some(&8), "{counts:?}");
        assert_eq!(kube.reviews_of(&burst), 1, "the burst made one review");
        let served = after.iter().filter(|(w, n)| **n > before.get(*w).copied().unwrap_or(0)).count();
        assert_eq!(served, 2, "both workers took part: before {before:?}, after {after:?}");

        // The API server failing: a token never reviewed is refused (`on_unavailable: deny`).
        let unreviewed = service_account_token("new-job");
        kube.make_live(&unreviewed, "system:serviceaccount:ci:new-job");
        kube.set_availability(Availability::Failing(503));
        let response = get(&unreviewed);
        assert_eq!((response.status, reason(&response).as_str()), (503, "liveness_unavailable"));
        assert_eq!(upstream.received_for("/api/builds").len(), 49, "only live tokens' requests got through");

        let scrape = scrape(&envoy);
        let reviews = |result: &str| {
            metric(
                &scrape,
                "nhi_liveness_reviews_total",
                &[("nhi_issuer", "cluster"), ("nhi_result", result)],
            )
        };
        assert_eq!(
            (reviews("alive"), reviews("gone"), reviews("unavailable")),
            (Some(2.0), Some(1.0), Some(1.0))
        );
        let fetches = metric(
            &scrape,
            "nhi_jwks_fetches_total",
            &[("nhi_issuer", "cluster"), ("nhi_result", "success")],
        );
        assert_eq!(fetches, Some(kube.jwks_authorizations().len() as f64));

        // A kid the cluster does not publish: each worker's request refetches the keys
        // (min_refetch_seconds 1) and is refused once the answer is in, from the
        // callout's hook. It is logged and counted like any refusal, and the worker
        // keeps writing filter state (the refusal went out after it was recorded).
        let fetches_before_unknown = kube.jwks_authorizations().len();
        std::thread::sleep(Duration::from_millis(1_100));
        let unknown = service_account_token_with_kid("rotated", "not-published");
        let counts =
            http::bearer_status_counts(envoy.listener_addr(), "/api/builds", &unknown, 4, 4).unwrap();
        assert_eq!(counts.get(&401), Some(&4), "{counts:?}");
        assert!(kube.jwks_authorizations().len() > fetches_before_unknown, "the unknown kid made a refetch");
        let log = envoy.log();
        let lines = log
            .lines()
            .filter(|l| l.contains(r#""event":"nhi_decision""#) && l.contains(r#""reason":"unknown_kid""#));
        assert_eq!(
            lines.count(),
            4,
            "one decision line per refused request: {}",
            log.lines()
                .filter(|l| l.contains("nhi_decision") || l.contains("set_property"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(!log.contains("the host refuses set_property"), "filter state stays on");
        // The gauges the wasm writes on its tick, written here by requests as they end.
        let served = TestKeys::shared().unwrap().jwks()["keys"].as_array().unwrap().len();
        assert_eq!(metric(&scrape, "nhi_jwks_keys", &[("nhi_issuer", "cluster")]), Some(served as f64));
        let age = metric(&scrape, "nhi_jwks_last_success_age_seconds", &[("nhi_issuer", "cluster")]);
        assert!(age.is_some_and(|age| age < 60.0), "keys fetched during this test: {age:?}");
    });
}

/// Envoy's name prefix for a dynamic module's metrics (`/stats/prometheus` keeps it;
/// the wasm's `wasmcustom.` is removed): the families and labels after it are the wasm's.
const MODULE_PREFIX: &str = "envoy_dynamicmodulescustom_";

/// Envoy's Prometheus endpoint, once the counts of every request sent so far are in
/// (the module's counts reach Envoy from its main thread within `FLUSH_WINDOW`, 20 ms:
/// `native/src/metrics.rs`; the wasm's wait, with margin, is longer still).
fn scrape(envoy: &Envoy) -> Scrape {
    Scrape::take(envoy).unwrap()
}

fn metric(scrape: &Scrape, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.value(&format!("{MODULE_PREFIX}{family}"), labels)
}

fn the_metrics_are_the_wasms_under_envoys_module_prefix(native: &Native) {
    let scrape = scrape(&native.envoy);
    let issuer = native.plugin["issuers"][0]["name"].as_str().unwrap();
    let requests = |decision: &str, reason: &str| {
        metric(
            &scrape,
            "nhi_requests_total",
            &[
                ("nhi_issuer", issuer),
                ("nhi_route", "machine-api"),
                ("nhi_decision", decision),
                ("nhi_reason", reason),
            ],
        )
    };
    assert_eq!(requests("denied", "bad_signature"), Some(1.0));
    assert_eq!(requests("denied", "wrong_audience"), Some(1.0));
    // The quota test's burst and the one refused after it.
    let refused = (16 * 20 - QUOTA + 1) as f64;
    assert_eq!(requests("denied", "quota_exceeded"), Some(refused));
    let quota = [("nhi_issuer", issuer), ("nhi_identity", "robot-quota"), ("nhi_policy", "tight")];
    assert_eq!(metric(&scrape, "nhi_quota_rejections_total", &quota), Some(refused));
    assert_eq!(
        metric(
            &scrape,
            "nhi_identity_requests_total",
            &[("nhi_issuer", issuer), ("nhi_identity", "robot-quota")]
        ),
        Some((16 * 20 + 1) as f64)
    );
    // Defined when the VM starts, shown at zero before anything happens to them.
    assert_eq!(metric(&scrape, "nhi_quota_overflow_total", &[("nhi_policy", "default")]), Some(0.0));
    // The response's status, as the wasm reads it (an integer attribute).
    let responses = |class: &str| {
        metric(
            &scrape,
            "nhi_identity_responses_total",
            &[("nhi_issuer", issuer), ("nhi_identity", "robot-quota"), ("nhi_status_class", class)],
        )
    };
    assert_eq!(responses("2xx"), Some(QUOTA as f64));
    assert_eq!(responses("4xx"), Some(refused));
    assert_eq!(responses("other"), None);
    // envoy-native.yaml's buckets, not Envoy's default ones (which have no 100000).
    let buckets =
        scrape.matching(&format!("{MODULE_PREFIX}nhi_verification_duration_us_bucket"), &[("le", "100000")]);
    assert!(!buckets.is_empty(), "the verification histogram has the configured buckets");
    // Families without labels show as soon as they are defined: only those that
    // apply are (no revocation feed here, and no VM).
    for absent in ["nhi_revocation_age_seconds", "nhi_revocation_stale", "nhi_vm_memory_bytes"] {
        assert_eq!(metric(&scrape, absent, &[]), None, "{absent}");
    }
}

/// What the native shell cannot do is refused when Envoy loads the config, with the
/// field and why in Envoy's log — never accepted and ignored.
#[test]
fn what_the_module_cannot_do_is_refused_at_load_with_the_reason() {
    let module = native_module_path().unwrap();
    let mut plugin = plugin();
    plugin["host"] = json!("apisix");
    let options = EnvoyOptions::new().native(&module).unwrap().plugin_configuration(plugin);
    let config = options.render(std::path::Path::new("")).unwrap();
    let log = envoy::validate(&config).unwrap().expect_err("Envoy must refuse the configuration");
    assert!(log.contains("host: not supported by the native (dynamic module) shell"), "{log}");
    assert!(log.contains("this module only runs in Envoy"), "{log}");

    // And the shipped file, as it is, validates.
    let options = EnvoyOptions::new().native(&module).unwrap();
    let config = options.render(std::path::Path::new("")).unwrap();
    envoy::validate(&config).unwrap().expect("the shipped envoy-native.yaml validates");
}
