//! Observability in a real Envoy (`--concurrency 2`, one Envoy for the whole file):
//! after a scripted mix of allowed, refused, rate-limited and shadow-mode requests,
//! `/stats/prometheus` shows exact counts under the expected labels; the identity
//! bound holds with more identities than `metrics.max_identities`; every decision-log
//! line parses as JSON with every field and no token bytes; Envoy's access log shows
//! the identity (filter state); and every metric the Grafana dashboard queries exists.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use test_harness::envoy::EnvoyOptions;
use test_harness::envoy_config::{repo_root, EnvoyConfig};
use test_harness::http::Response;
use test_harness::jwks_server::JwksBehaviour;
use test_harness::keys::{self, KeyType, TestKeys};
use test_harness::mint;
use test_harness::prometheus::Scrape;
use test_harness::stack::Stack;

const MAX_IDENTITIES: usize = 5;
/// Identities beyond the bound in the flood (each sends one request).
const FLOOD: usize = 10;

const DECISION_FIELDS: [&str; 19] = [
    "event",
    "time",
    "request_id",
    "source",
    "issuer",
    "identity",
    "cert_identity",
    "dpop_jkt",
    "kid",
    "route",
    "client_class",
    "decision",
    "reason",
    "status",
    "shadow_reason",
    "quota_policy",
    "quota_remaining",
    "latency_ms",
    "anomaly",
];

fn plugin() -> Value {
    let mut plugin = EnvoyConfig::shipped().unwrap().plugin_configuration().unwrap();
    plugin["routes"] = json!([
        { "name": "machine-api", "match": { "prefix": "/api/" }, "audience": "machine" },
        { "name": "canary", "match": { "prefix": "/canary/" }, "audience": "machine", "mode": "shadow",
          "allow": [ { "identity": "canary-bot" } ] },
        { "name": "web", "match": { "prefix": "/web/" }, "audience": "human" }
    ]);
    plugin["quotas"] = json!({
        "default": { "requests": 1000, "per_seconds": 3600 },
        "rules": [ { "name": "tight", "identities": ["limited"], "requests": 2, "per_seconds": 3600 } ]
    });
    plugin["metrics"] = json!({ "max_identities": MAX_IDENTITIES });
    plugin["decision_log"] = json!({ "allowed_sample_rate": 1.0 });
    // Outcome metrics, and an anomaly kind that fires at once (no warm-up): every
    // series the dashboard's behaviour row queries exists in the scrape.
    plugin["behaviour"] =
        json!({ "outcome_metrics": true, "warmup_intervals": 0, "anomalies": { "new_route": {} } });
    plugin
}

fn token(stack: &Stack, sub: &str, extra: &[(&str, Value)]) -> String {
    stack.token(TestKeys::shared().unwrap().by_type(KeyType::P256), sub, extra).unwrap()
}

fn send(stack: &Stack, path: &str, token: Option<&str>) -> Response {
    let authorization = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = authorization.iter().map(|a| ("authorization", a.as_str())).collect();
    stack.get(path, &headers).unwrap()
}

/// The request id Envoy gave a request: from the echo body, or from the refusal body.
fn request_id(response: &Response) -> String {
    let body = response.body_json().unwrap();
    body["headers"]["x-request-id"].as_str().or(body["request_id"].as_str()).unwrap().to_owned()
}

/// The JSON payloads of the decision-log lines in Envoy's log.
fn decision_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| l.contains("wasm log") && l.contains("{\"event\":\"nhi_decision\""))
        .map(|l| {
            let json = &l[l.find("{\"event\"").unwrap()..];
            serde_json::from_str(json).unwrap_or_else(|e| panic!("not JSON ({e}): {json}"))
        })
        .collect()
}

/// Envoy's JSON access-log lines (stdout, captured in the same log file).
fn access_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("nhi_decision").is_some())
        .collect()
}

fn by_request_id<'a>(lines: &'a [Value], id: &str) -> &'a Value {
    let found: Vec<_> = lines.iter().filter(|l| l["request_id"] == id).collect();
    assert_eq!(found.len(), 1, "lines for request {id}: {found:?}");
    found[0]
}

/// Every `expr` in the dashboard (panels, nested rows, templating).
fn dashboard_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "definition", Value::String(expr)) => out.push(expr.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// Every `nhi_…` identifier in a PromQL expression.
fn nhi_identifiers(expr: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("nhi_") {
        let start = i + at;
        let boundary = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = start
            + expr[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(expr.len() - start);
        if boundary {
            found.insert(expr[start..end].to_owned());
        }
        i = end;
    }
    found
}

#[test]
fn metrics_decision_log_access_log_and_dashboard_in_real_envoy() {
    let keys = TestKeys::shared().unwrap();
    let jwks = keys::jwks([keys.by_type(KeyType::P256)]);
    let mut stack =
        Stack::start_with(JwksBehaviour::serve(&jwks), EnvoyOptions::new().plugin_configuration(plugin()))
            .unwrap();
    let warmup = token(&stack, "warmup", &[]);
    stack.wait_for_keys(&warmup).unwrap();

    // ---- The scripted mix -------------------------------------------------------
    let alice = token(&stack, "alice", &[]);
    let limited = token(&stack, "limited", &[]);
    let expired = token(&stack, "bob", &[("exp", json!(mint::now() - 3_600))]);
    let mut alice_ids = Vec::new();
    for _ in 0..3 {
        let r = send(&stack, "/api/orders", Some(&alice));
        assert_eq!(r.status, 200);
        alice_ids.push(request_id(&r));
    }
    for _ in 0..2 {
        assert_eq!(send(&stack, "/api/orders", None).status, 401);
    }
    let r = send(&stack, "/api/orders", Some(&expired));
    assert_eq!(r.status, 401);
    let expired_id = request_id(&r);
    assert_eq!(send(&stack, "/api/orders", Some("not-a-jwt")).status, 401);
    let limited_statuses: Vec<u16> =
        (0..4).map(|_| send(&stack, "/api/orders", Some(&limited)).status).collect();
    assert_eq!(limited_statuses, [200, 200, 429, 429]);
    let r = send(&stack, "/api/orders", Some(&limited));
    assert_eq!(r.status, 429);
    let quota_id = request_id(&r);
    let r = send(&stack, "/web/index.html", Some(&alice));
    assert_eq!(r.status, 403);
    let r = send(&stack, "/canary/deploy", Some(&alice));
    assert_eq!(r.status, 200, "shadow mode forwards");
    let shadow_id = request_id(&r);
    let r = send(&stack, "/web/index.html", None);
    assert_eq!(r.status, 200);
    let person_id = request_id(&r);

    // ---- More identities than the bound ------------------------------------------
    // warmup, alice and limited already hold three of the five labels.
    for i in 0..FLOOD {
        assert_eq!(send(&stack, "/api/orders", Some(&token(&stack, &format!("card-{i}"), &[]))).status, 200);
    }

    // ---- Metrics --------------------------------------------------------------------
    // Histograms reach /stats/prometheus at Envoy's stats flush (every 5 s).
    let mut scrape = Scrape::take(&stack.envoy).unwrap();
    stack
        .envoy
        .wait_until("the verification histogram to be flushed", Duration::from_secs(15), |envoy| {
            scrape = Scrape::take(envoy)?;
            // One sample per verification this VM could not answer from its own cache:
            // at least one per distinct token (the FLOOD cards, warmup, alice).
            Ok(scrape.value("nhi_verification_duration_us_count", &[("nhi_issuer", "demo")])
                >= Some((FLOOD + 2) as f64))
        })
        .unwrap();

    let requests = |issuer, route, decision, reason| {
        scrape.value(
            "nhi_requests_total",
            &[
                ("nhi_issuer", issuer),
                ("nhi_route", route),
                ("nhi_decision", decision),
                ("nhi_reason", reason),
            ],
        )
    };
    assert_eq!(requests("demo", "machine-api", "allowed", "allow"), Some((3 + 2 + FLOOD) as f64));
    assert_eq!(requests("none", "machine-api", "denied", "missing_token"), Some(2.0));
    assert_eq!(requests("demo", "machine-api", "denied", "expired"), Some(1.0));
    assert_eq!(requests("unknown", "machine-api", "denied", "malformed_token"), Some(1.0));
    assert_eq!(requests("demo", "machine-api", "denied", "quota_exceeded"), Some(3.0));
    assert_eq!(requests("demo", "web", "denied", "machine_on_human_route"), Some(1.0));
    assert_eq!(requests("demo", "canary", "allowed", "allow"), Some(1.0));
    assert_eq!(requests("none", "web", "allowed", "allow"), Some(1.0));
    let shadow = &[("nhi_issuer", "demo"), ("nhi_route", "canary"), ("nhi_reason", "not_allowed")];
    assert_eq!(scrape.value("nhi_shadow_denials_total", shadow), Some(1.0));

    let identity = |name, identity| scrape.value(name, &[("nhi_issuer", "demo"), ("nhi_identity", identity)]);
    assert_eq!(identity("nhi_identity_requests_total", "alice"), Some(5.0));
    assert_eq!(identity("nhi_identity_requests_total", "limited"), Some(5.0));
    let denials = |who, reason| {
        scrape.value(
            "nhi_identity_denials_total",
            &[("nhi_issuer", "demo"), ("nhi_identity", who), ("nhi_reason", reason)],
        )
    };
    assert_eq!(denials("limited", "quota_exceeded"), Some(3.0));
    assert_eq!(denials("alice", "machine_on_human_route"), Some(1.0));
    let rejections = &[("nhi_issuer", "demo"), ("nhi_identity", "limited"), ("nhi_policy", "tight")];
    assert_eq!(scrape.value("nhi_quota_rejections_total", rejections), Some(3.0));
    assert_eq!(scrape.value("nhi_quota_overflow_total", &[("nhi_policy", "tight")]), Some(0.0));

    // The bound: five identities with their own label Envoy-wide (both workers), the rest `other`.
    let labelled: BTreeSet<&str> = scrape
        .matching("nhi_identity_requests_total", &[("nhi_issuer", "demo")])
        .iter()
        .map(|s| s.labels["nhi_identity"].as_str())
        .collect();
    let expected: BTreeSet<&str> = ["warmup", "alice", "limited", "card-0", "card-1", "other"].into();
    assert_eq!(labelled, expected);
    assert_eq!(identity("nhi_identity_requests_total", "other"), Some((FLOOD - 2) as f64));

    // JWKS: one fetch for the whole Envoy, its key, a fresh age.
    let demo = ("nhi_issuer", "demo");
    assert_eq!(scrape.value("nhi_jwks_fetches_total", &[demo, ("nhi_result", "success")]), Some(1.0));
    assert_eq!(scrape.value("nhi_jwks_fetches_total", &[demo, ("nhi_result", "failure")]), Some(0.0));
    assert_eq!(scrape.value("nhi_jwks_keys", &[demo]), Some(1.0));
    assert!(scrape.value("nhi_jwks_last_success_age_seconds", &[demo]).is_some_and(|age| age < 60.0));
    let verified_or_matched = scrape.value("nhi_verification_duration_us_count", &[demo]).unwrap();
    let buckets = scrape.matching("nhi_verification_duration_us_bucket", &[demo]);
    assert!(buckets.iter().any(|b| b.labels["le"] == "+Inf" && b.value == verified_or_matched));

    // ---- Decision log -----------------------------------------------------------------
    let log = stack.envoy.log();
    let lines = decision_lines(&log);
    for line in &lines {
        let fields: BTreeSet<&str> = line.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(fields, DECISION_FIELDS.into(), "{line}");
        assert!(line["latency_ms"].as_f64().unwrap() >= 0.0, "{line}");
        let time = line["time"].as_str().unwrap();
        assert!(time.len() == 24 && time.ends_with('Z') && &time[10..11] == "T", "{time}");
    }
    for secret in [&alice, &limited, &expired, &warmup] {
        let signature = secret.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "a token signature reached Envoy's log");
    }
    let line = by_request_id(&lines, &alice_ids[0]);
    assert_eq!(line["identity"], "alice");
    assert_eq!(line["issuer"], "demo");
    assert_eq!(line["kid"], keys.by_type(KeyType::P256).kid());
    assert_eq!(line["route"], "machine-api");
    assert_eq!(line["decision"], "allowed");
    assert_eq!(line["reason"], "allow");
    assert_eq!(line["status"], 200);
    assert_eq!(line["quota_policy"], "default");
    assert_eq!(line["source"].as_str().unwrap().split(':').next(), Some("127.0.0.1"));
    let line = by_request_id(&lines, &expired_id);
    assert_eq!(
        (&line["decision"], &line["reason"], &line["status"], &line["identity"], &line["issuer"]),
        (&json!("denied"), &json!("expired"), &json!(401), &Value::Null, &json!("demo"))
    );
    let line = by_request_id(&lines, &quota_id);
    assert_eq!((&line["reason"], &line["status"]), (&json!("quota_exceeded"), &json!(429)));
    assert_eq!((&line["quota_policy"], &line["quota_remaining"]), (&json!("tight"), &json!(0)));
    let line = by_request_id(&lines, &shadow_id);
    assert_eq!((&line["decision"], &line["shadow_reason"]), (&json!("allowed"), &json!("not_allowed")));
    assert!(
        lines.iter().all(|l| l["request_id"] != person_id.as_str()),
        "people without a token are not logged"
    );
    // One line per machine request or refusal: everything but the person's request.
    let scripted = 3 + 2 + 1 + 1 + 5 + 1 + 1 + FLOOD;
    let warmups = lines.iter().filter(|l| l["identity"] == "warmup").count();
    assert!(warmups >= 1);
    assert_eq!(lines.len(), scripted + warmups);

    // ---- Envoy's access log (stdout) shows what the filter published -------------------
    let mut access = Vec::new();
    stack
        .envoy
        .wait_until("the access log to be flushed", Duration::from_secs(15), |envoy| {
            access = access_lines(&envoy.log());
            Ok(access.iter().any(|l| l["request_id"] == person_id.as_str()))
        })
        .unwrap();
    let line = by_request_id(&access, &alice_ids[0]);
    assert_eq!(line["nhi_identity"], "alice");
    assert_eq!(line["nhi_issuer"], "demo");
    assert_eq!(line["nhi_route"], "machine-api");
    assert_eq!(line["nhi_client"], "machine");
    assert_eq!(line["nhi_decision"], "allowed");
    assert_eq!(line["status"], 200);
    let line = by_request_id(&access, &expired_id);
    assert_eq!((&line["nhi_decision"], &line["nhi_reason"]), (&json!("denied"), &json!("expired")));
    assert_eq!(line["nhi_identity"], Value::Null, "no identity for a token that failed");
    let line = by_request_id(&access, &person_id);
    assert_eq!((&line["nhi_client"], &line["nhi_route"]), (&json!("human"), &json!("web")));

    // ---- The dashboard queries only what a scrape has ------------------------------------
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("envoy/grafana/nhi-guard.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");
    let names = scrape.names();
    let label_names = scrape.label_names();
    let mut queried = BTreeSet::new();
    for expr in &exprs {
        for identifier in nhi_identifiers(expr) {
            if label_names.contains(identifier.as_str()) {
                continue;
            }
            assert!(
                names.contains(identifier.as_str()),
                "dashboard queries {identifier}, not in the scrape: {expr}"
            );
            queried.insert(identifier);
        }
    }
    for family in [
        "nhi_requests_total",
        "nhi_identity_requests_total",
        "nhi_identity_denials_total",
        "nhi_quota_rejections_total",
        "nhi_quota_overflow_total",
        "nhi_shadow_denials_total",
        "nhi_jwks_fetches_total",
        "nhi_jwks_keys",
        "nhi_jwks_last_success_age_seconds",
        "nhi_verification_duration_us_bucket",
        "nhi_anomalies_total",
        "nhi_identity_responses_total",
        "nhi_identity_request_duration_ms_bucket",
        "nhi_route_responses_total",
        "nhi_route_request_duration_ms_bucket",
        "nhi_behaviour_untracked_total",
    ] {
        assert!(queried.contains(family), "the dashboard does not show {family}");
    }
}
