//! Fleet-wide limits in a real Envoy: the shipped `envoy/envoy-global-ratelimit.yaml`,
//! whose `ratelimit` filter asks a rate limit service about every machine request with
//! the descriptor (nhi_issuer, nhi_identity) built from the headers nhi-guard sets, and a
//! test double of that service (`test_harness::rls`) that records every descriptor and
//! answers `OVER_LIMIT` when told. Also: the shipped file stays `envoy.yaml` plus the
//! ratelimit parts, Envoy accepts it, and `envoy/ratelimit/config.yaml` (the real
//! envoyproxy/ratelimit configuration) matches the descriptor and gives the limits
//! docs/quotas.md promises.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use serde_yaml::Value as Yaml;
use test_harness::envoy::{wasm_path, EnvoyOptions};
use test_harness::envoy_config::EnvoyConfig;
use test_harness::http::{self, Response};
use test_harness::jwks_server::JwksBehaviour;
use test_harness::keys::{self, KeyType, TestKeys};
use test_harness::rls::{self, RateLimitDouble, RESET_SECONDS};
use test_harness::stack::Stack;

const RATELIMIT_FILTER: &str = "envoy.filters.http.ratelimit";
const ISSUER_KEY: &str = "nhi_issuer";
const IDENTITY_KEY: &str = "nhi_identity";

/// Envoy running the shipped fleet-wide variant, its `ratelimit` cluster pointed at a
/// rate limit double. Field order is drop order: Envoy stops before the double.
struct Fleet {
    stack: Stack,
    rls: RateLimitDouble,
}

impl Fleet {
    fn start() -> Self {
        let rls = RateLimitDouble::start().unwrap();
        let keys = TestKeys::shared().unwrap();
        let jwks = keys::jwks([keys.by_type(KeyType::P256)]);
        let config = EnvoyConfig::load(&rls::shipped_envoy_config_path()).unwrap();
        let options = EnvoyOptions::new().config(config).cluster(rls::CLUSTER, rls.addr());
        let mut stack = Stack::start_with(JwksBehaviour::serve(&jwks), options).unwrap();
        let warmup = token(&stack, "warmup");
        stack.wait_for_keys(&warmup).unwrap();
        rls.take_calls();
        Fleet { stack, rls }
    }

    fn get(&self, path: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Response {
        let authorization = token.map(|t| format!("Bearer {t}"));
        let mut headers = extra.to_vec();
        if let Some(a) = &authorization {
            headers.push(("authorization", a));
        }
        http::request(self.stack.envoy.listener_addr(), "GET", path, &headers).unwrap()
    }

    /// The one descriptor a machine request for `identity` must produce.
    fn descriptor(&self, identity: &str) -> Vec<(String, String)> {
        vec![
            (ISSUER_KEY.to_owned(), self.stack.issuer_name().unwrap().to_owned()),
            (IDENTITY_KEY.to_owned(), identity.to_owned()),
        ]
    }

    /// Asserts that exactly one call was made since the last look: in the filter's
    /// domain, with one descriptor, for `identity`.
    fn assert_one_call_for(&self, identity: &str) {
        let calls = self.rls.take_calls();
        let [call] = calls.as_slice() else {
            panic!("expected one call, for {identity}: {calls:?}");
        };
        assert_eq!(call.domain, shipped_domain());
        assert_eq!(call.descriptors, [self.descriptor(identity)], "one call, for {identity}");
    }

    fn assert_no_call(&self, what: &str) {
        let calls = self.rls.take_calls();
        assert!(calls.is_empty(), "{what} must not reach the rate limit service: {calls:?}");
    }
}

fn token(stack: &Stack, sub: &str) -> String {
    stack.token(TestKeys::shared().unwrap().by_type(KeyType::P256), sub, &[]).unwrap()
}

fn expired_token(stack: &Stack, sub: &str) -> String {
    stack.token(TestKeys::shared().unwrap().by_type(KeyType::P256), sub, &[("exp", 1_000.into())]).unwrap()
}

fn backend(response: &Response) -> String {
    response.body_json().map(|b| b["backend"].as_str().unwrap_or_default().to_owned()).unwrap_or_default()
}

fn echoed(response: &Response, header: &str) -> Option<String> {
    response.body_json().ok().and_then(|b| b["headers"][header].as_str().map(str::to_owned))
}

#[test]
fn descriptors_carry_the_verified_identity_and_over_limit_answers_429() {
    let fleet = Fleet::start();
    let a = token(&fleet.stack, "robot-a");
    let b = token(&fleet.stack, "robot-b");

    // A verified identity: one call, descriptor (issuer name, subject), allowed.
    let allowed = fleet.get("/api/orders", Some(&a), &[]);
    assert_eq!(allowed.status, 200, "{}", allowed.body_text());
    assert_eq!(backend(&allowed), "machine");
    assert_eq!(echoed(&allowed, "x-nhi-identity").as_deref(), Some("robot-a"));
    fleet.assert_one_call_for("robot-a");

    // The service says robot-a is over its limit: Envoy's ratelimit filter refuses it.
    fleet.rls.over_limit(IDENTITY_KEY, "robot-a");
    let upstream_before = fleet.stack.upstream.hits();
    let refused = fleet.get("/api/orders", Some(&a), &[]);
    assert_eq!(refused.status, 429, "{}", refused.body_text());
    assert_eq!(refused.header("x-envoy-ratelimited"), Some("true"));
    assert_eq!(refused.header("retry-after"), Some(RESET_SECONDS.to_string().as_str()));
    assert_eq!(fleet.stack.upstream.hits(), upstream_before, "a refused request never reaches the upstream");
    fleet.assert_one_call_for("robot-a");

    // robot-b is not affected.
    let other = fleet.get("/api/orders", Some(&b), &[]);
    assert_eq!(other.status, 200);
    fleet.assert_one_call_for("robot-b");

    // robot-b's token with forged identity headers: the filter replaces them, so the
    // descriptor is robot-b's (and robot-a's refusal does not apply).
    let forged = fleet.get(
        "/api/orders",
        Some(&b),
        &[("x-nhi-identity", "robot-a"), ("x-nhi-issuer", "evil"), ("x-nhi-client", "machine")],
    );
    assert_eq!(forged.status, 200, "{}", forged.body_text());
    assert_eq!(echoed(&forged, "x-nhi-identity").as_deref(), Some("robot-b"));
    fleet.assert_one_call_for("robot-b");

    // A budget of 3 hits for robot-c: three pass, the fourth is refused.
    fleet.rls.limit(IDENTITY_KEY, "robot-c", 3);
    let c = token(&fleet.stack, "robot-c");
    let statuses: Vec<u16> = (0..4).map(|_| fleet.get("/api/orders", Some(&c), &[]).status).collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
    let calls = fleet.rls.take_calls();
    assert_eq!(calls.len(), 4);
    assert!(calls.iter().all(|call| call.descriptors == [fleet.descriptor("robot-c")]), "{calls:?}");

    // Requests that fail verification are refused by nhi-guard before the ratelimit
    // filter: the service never hears of them, even with forged identity headers.
    let forged_identity = [("x-nhi-identity", "robot-b"), ("x-nhi-issuer", "demo")];
    for (what, token) in [
        ("no token", None),
        ("an expired token", Some(expired_token(&fleet.stack, "robot-b"))),
        ("a garbage token", Some("not.a.token".to_owned())),
    ] {
        let response = fleet.get("/api/orders", token.as_deref(), &forged_identity);
        assert_eq!(response.status, 401, "{what}: {}", response.body_text());
        assert!(response.header("x-envoy-ratelimited").is_none());
        fleet.assert_no_call(what);
    }

    // People on the human route: the route has no rate_limits, nothing is asked.
    let person = fleet.get("/web/index.html", None, &forged_identity);
    assert_eq!(person.status, 200);
    assert_eq!(backend(&person), "web");
    fleet.assert_no_call("a person on the human route");
    // A machine token on the human route is refused by nhi-guard (403), unasked.
    let machine_on_web = fleet.get("/web/index.html", Some(&b), &[]);
    assert_eq!(machine_on_web.status, 403);
    fleet.assert_no_call("a machine token on the human route");

    // robot-a is still refused: nothing above changed its answer.
    assert_eq!(fleet.get("/api/orders", Some(&a), &[]).status, 429);
    fleet.assert_one_call_for("robot-a");
}

/// `failure_mode_deny: true` with `status_on_error: ServiceUnavailable`: a failing or
/// unreachable rate limit service refuses machine requests with 503, never lets them
/// through unlimited; the human route does not depend on it.
#[test]
fn an_unavailable_rate_limit_service_refuses_machine_requests() {
    let mut fleet = Fleet::start();
    let a = token(&fleet.stack, "robot-a");
    let upstream_before = fleet.stack.upstream.hits();

    fleet.rls.fail(true);
    let refused = fleet.get("/api/orders", Some(&a), &[]);
    assert_eq!(refused.status, 503, "{}", refused.body_text());
    assert!(refused.header("x-envoy-ratelimited").is_none());
    fleet.assert_one_call_for("robot-a");
    assert_eq!(fleet.get("/web/index.html", None, &[]).status, 200);

    fleet.rls.fail(false);
    assert_eq!(fleet.get("/api/orders", Some(&a), &[]).status, 200);
    assert_eq!(fleet.stack.upstream.hits(), upstream_before + 1);

    // The service gone: connections refused.
    fleet.rls.stop();
    for _ in 0..3 {
        let response = fleet.get("/api/orders", Some(&a), &[]);
        assert_eq!(response.status, 503, "{}", response.body_text());
    }
    assert_eq!(fleet.stack.upstream.hits(), upstream_before + 1, "nothing passed while the service was down");
    let person = fleet.get("/web/index.html", None, &[]);
    assert_eq!(person.status, 200);
    assert_eq!(backend(&person), "web");
    // nhi-guard still judges first: no token is 401, not 503.
    assert_eq!(fleet.get("/api/orders", None, &[]).status, 401);
}

/// The http connection manager of the config's first listener.
fn hcm(doc: &Yaml) -> &Yaml {
    &doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
}

fn hcm_mut(doc: &mut Yaml) -> &mut Yaml {
    &mut doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
}

fn shipped_variant() -> EnvoyConfig {
    EnvoyConfig::load(&rls::shipped_envoy_config_path()).unwrap()
}

/// The ratelimit filter's `typed_config` in the shipped variant.
fn ratelimit_filter() -> Yaml {
    let variant = shipped_variant();
    let filters = hcm(variant.as_yaml())["http_filters"].as_sequence().unwrap();
    filters.iter().find(|f| f["name"].as_str() == Some(RATELIMIT_FILTER)).unwrap()["typed_config"].clone()
}

fn shipped_domain() -> String {
    ratelimit_filter()["domain"].as_str().unwrap().to_owned()
}

/// The machine route's `rate_limits` actions, as (header, descriptor key).
fn machine_route_actions() -> Vec<(String, String)> {
    let variant = shipped_variant();
    let routes = hcm(variant.as_yaml())["route_config"]["virtual_hosts"][0]["routes"].as_sequence().unwrap();
    let machine = routes.iter().find(|r| r["name"].as_str() == Some("machine")).unwrap();
    let rate_limits = machine["route"]["rate_limits"].as_sequence().unwrap();
    assert_eq!(rate_limits.len(), 1, "one descriptor per request");
    rate_limits[0]["actions"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|action| {
            let headers = &action["request_headers"];
            (
                headers["header_name"].as_str().unwrap().to_owned(),
                headers["descriptor_key"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// What `envoy-global-ratelimit.yaml` may add to `envoy.yaml`: the ratelimit filter
/// right after nhi-guard, the machine route's `rate_limits`, the `ratelimit` cluster.
#[test]
fn shipped_variant_is_envoy_yaml_plus_the_ratelimit_filter() {
    let plain = EnvoyConfig::shipped().unwrap();
    let variant = shipped_variant();
    let plugin = variant.plugin_configuration().unwrap();
    assert_eq!(plugin, plain.plugin_configuration().unwrap(), "the plugin configurations differ");

    // The descriptor is built from exactly the headers the plugin sets, issuer first.
    assert_eq!(
        machine_route_actions(),
        [
            (plugin["forward"]["issuer_header"].as_str().unwrap().to_owned(), ISSUER_KEY.to_owned()),
            (plugin["forward"]["identity_header"].as_str().unwrap().to_owned(), IDENTITY_KEY.to_owned()),
        ]
    );
    let filter = ratelimit_filter();
    assert_eq!(filter["failure_mode_deny"].as_bool(), Some(true), "fail closed");
    assert_eq!(filter["status_on_error"]["code"].as_str(), Some("ServiceUnavailable"));
    assert_eq!(
        filter["rate_limit_service"]["grpc_service"]["envoy_grpc"]["cluster_name"].as_str(),
        Some(rls::CLUSTER)
    );

    let mut doc = variant.as_yaml().clone();
    let hcm_variant = hcm_mut(&mut doc);
    let filters = hcm_variant["http_filters"].as_sequence_mut().unwrap();
    let position = |name: &str| filters.iter().position(|f| f["name"].as_str() == Some(name)).unwrap();
    let ratelimit = position(RATELIMIT_FILTER);
    assert_eq!(ratelimit, position("nhi-guard") + 1, "the ratelimit filter runs right after nhi-guard");
    assert!(ratelimit < position("envoy.filters.http.router"));
    filters.remove(ratelimit);
    let routes = hcm_variant["route_config"]["virtual_hosts"][0]["routes"].as_sequence_mut().unwrap();
    for route in routes {
        let removed = route["route"].as_mapping_mut().unwrap().remove("rate_limits");
        let is_machine = route["name"].as_str() == Some("machine");
        assert_eq!(removed.is_some(), is_machine, "rate_limits on the machine route only: {route:?}");
    }
    let clusters = doc["static_resources"]["clusters"].as_sequence_mut().unwrap();
    let before = clusters.len();
    clusters.retain(|c| c["name"].as_str() != Some(rls::CLUSTER));
    assert_eq!(clusters.len(), before - 1);
    assert_eq!(
        &doc,
        plain.as_yaml(),
        "envoy/envoy-global-ratelimit.yaml must stay envoy/envoy.yaml plus the ratelimit filter: \
         mirror envoy.yaml's change there"
    );
}

#[test]
fn envoy_validates_the_global_ratelimit_variant_with_the_built_filter() {
    let mut config = shipped_variant();
    config.set_wasm_filename(&wasm_path().unwrap()).unwrap();
    if let Err(log) = test_harness::envoy::validate(&config).unwrap() {
        panic!("envoy --mode validate failed:\n{log}");
    }
}

// --- envoy/ratelimit/config.yaml, read the way envoyproxy/ratelimit reads it ----------

/// The members envoyproxy/ratelimit accepts; it refuses a file with any other.
const SERVICE_KEYS: &[&str] = &[
    "domain",
    "key",
    "value",
    "descriptors",
    "rate_limit",
    "unit",
    "requests_per_unit",
    "unlimited",
    "shadow_mode",
    "name",
    "replaces",
    "detailed_metric",
];

fn check_service_keys(value: &Yaml, path: &str) {
    match value {
        Yaml::Mapping(members) => {
            for (key, member) in members {
                let key = key.as_str().unwrap_or_else(|| panic!("{path}: non-string key {key:?}"));
                assert!(SERVICE_KEYS.contains(&key), "{path}: envoyproxy/ratelimit refuses the key {key:?}");
                check_service_keys(member, &format!("{path}.{key}"));
            }
        }
        Yaml::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                assert!(item.is_mapping(), "{path}[{i}]: lists hold only mappings");
                check_service_keys(item, &format!("{path}[{i}]"));
            }
        }
        _ => {}
    }
}

/// The (requests_per_unit, unit) envoyproxy/ratelimit applies to a descriptor: at each
/// level `key_value` first, then a wildcard value, then the bare `key`; the limit counts
/// only if found at the descriptor's last entry (its `GetLimit`).
fn resolve(config: &Yaml, descriptor: &[(&str, &str)]) -> Option<(u64, String)> {
    let mut level = config["descriptors"].as_sequence().cloned().unwrap_or_default();
    let mut found = None;
    for (i, (key, value)) in descriptor.iter().enumerate() {
        let same_key = |d: &&Yaml| d["key"].as_str() == Some(*key);
        let exact = level.iter().filter(same_key).find(|d| d["value"].as_str() == Some(*value));
        let wildcard = || {
            level.iter().filter(same_key).find(|d| {
                d["value"]
                    .as_str()
                    .and_then(|v| v.strip_suffix('*'))
                    .is_some_and(|prefix| value.starts_with(prefix))
            })
        };
        let bare = || level.iter().filter(same_key).find(|d| d["value"].is_null());
        let Some(next) = exact.or_else(wildcard).or_else(bare).cloned() else {
            break;
        };
        if i == descriptor.len() - 1 {
            let limit = &next["rate_limit"];
            found =
                limit["requests_per_unit"].as_u64().map(|n| (n, limit["unit"].as_str().unwrap().to_owned()));
        }
        match next["descriptors"].as_sequence() {
            Some(children) if !children.is_empty() => level = children.clone(),
            _ => break,
        }
    }
    found
}

#[test]
fn ratelimit_service_config_matches_the_descriptor_and_gives_each_identity_its_limit() {
    let path = rls::shipped_service_config_path();
    let config: Yaml = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    check_service_keys(&config, "config.yaml");
    assert_eq!(config["domain"].as_str(), Some(shipped_domain().as_str()), "domain of the Envoy filter");

    // Every limit has a unit the service knows; level 1 keys follow the route's first
    // action, level 2 its second, nothing deeper.
    let actions = machine_route_actions();
    let keys: Vec<&str> = actions.iter().map(|(_, key)| key.as_str()).collect();
    fn walk(level: &Yaml, depth: usize, keys: &[&str]) {
        for descriptor in level.as_sequence().into_iter().flatten() {
            assert_eq!(descriptor["key"].as_str(), keys.get(depth).copied(), "level {depth}: {descriptor:?}");
            if let Some(unit) = descriptor["rate_limit"]["unit"].as_str() {
                assert!(rls::UNITS.contains(&unit.to_uppercase().as_str()), "unknown unit {unit:?}");
            }
            walk(&descriptor["descriptors"], depth + 1, keys);
        }
    }
    walk(&config["descriptors"], 0, &keys);

    let issuer = EnvoyConfig::shipped().unwrap().plugin_configuration().unwrap()["issuers"][0]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let deployer = test_harness::mint::DEFAULT_SUBJECT;
    let per_minute = Some((600, "minute".to_owned()));
    assert_eq!(resolve(&config, &[(ISSUER_KEY, &issuer), (IDENTITY_KEY, "robot-a")]), per_minute);
    assert_eq!(
        resolve(&config, &[(ISSUER_KEY, &issuer), (IDENTITY_KEY, deployer)]),
        Some((100, "hour".to_owned()))
    );
    // The override belongs to that issuer's identity only; other issuers get the default.
    assert_eq!(resolve(&config, &[(ISSUER_KEY, "github"), (IDENTITY_KEY, deployer)]), per_minute);
    assert_eq!(resolve(&config, &[(ISSUER_KEY, "github"), (IDENTITY_KEY, "robot-a")]), per_minute);
    // Descriptors of another shape match nothing (they are not limited).
    assert_eq!(resolve(&config, &[(IDENTITY_KEY, "robot-a")]), None);
    assert_eq!(resolve(&config, &[(ISSUER_KEY, &issuer)]), None);
}
