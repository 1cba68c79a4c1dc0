//! The whole pipeline, natively, against [`MemoryHost`]: the same decisions the
//! filter makes in a proxy, without one. The emulator and real Envoy run the
//! compiled filter through the same cases (test-harness `scenarios`); here they run
//! in milliseconds, and every host call can be made to fail.

use std::rc::Rc;

use serde_json::{json, Value};

use super::*;
use crate::config::Config;
use crate::crypto::alg::Alg;
use crate::host::capabilities::{HostSetting, Plan, Probed};
use crate::host::memory::{Call, FaultyStore, MemoryHost};
use crate::host::store::MemoryStore;
use crate::host::HostError;
use crate::testkit;

const ISS: &str = "https://issuer.example";
const NOW: u64 = 1_800_000_000;

fn plugin() -> Value {
    json!({
        "issuers": [{
            "name": "ci", "issuer": ISS, "audiences": ["gw"],
            "jwks": {"inline": testkit::jwks()},
            "algorithms": ["RS256", "ES256", "EdDSA"],
            "claims_to_headers": {"scope": "x-nhi-scope"}
        }],
        "routes": [
            {"name": "machine-api", "match": {"prefix": "/api/"}, "audience": "machine"},
            {"name": "partner", "match": {"prefix": "/partner/"}, "audience": "machine",
             "source_cidrs": ["10.0.0.0/8"]},
            {"name": "web", "match": {"prefix": "/web/"}, "audience": "human"}
        ],
        "quotas": {"default": {"requests": 1000, "per_seconds": 60},
                   "rules": [{"name": "tight", "identities": ["quota-*"], "requests": 2, "per_seconds": 3600}]},
        "filter_state": true,
        "decision_log": {"enabled": true, "allowed_sample_rate": 1.0}
    })
}

struct Fixture {
    vm: Vm,
    store: Rc<FaultyStore<MemoryStore>>,
    /// The VM's metrics, across its requests.
    metrics: Rc<std::cell::RefCell<crate::host::memory::Metrics>>,
}

fn fixture(plugin: Value) -> Fixture {
    fixture_on(plugin, Probed { shared_data: true, timers: true, clock: true })
}

/// A VM on a host with no tick (`timers: false`): requests fetch their own documents
/// and none can wait for another's (as on APISIX).
fn tickless_fixture(plugin: Value) -> Fixture {
    fixture_on(plugin, Probed { shared_data: true, timers: false, clock: true })
}

fn fixture_on(plugin: Value, probed: Probed) -> Fixture {
    let config = Config::from_json(plugin.to_string().as_bytes()).unwrap();
    let plan = Plan::choose(HostSetting::Auto, probed).unwrap();
    let store = Rc::new(FaultyStore::<MemoryStore>::default());
    let mut host = MemoryHost::new(NOW * 1_000_000_000);
    let vm = Vm::start(config, plan, Box::new(Rc::clone(&store)), &mut host, NOW * 1000, 7).unwrap();
    Fixture { vm, store, metrics: Rc::clone(&host.metrics) }
}

/// `plugin` without the calls a request makes only to publish its decision (filter
/// state, the decision log): what host-call counts are measured on.
fn quiet(mut plugin: Value) -> Value {
    plugin["filter_state"] = json!(false);
    plugin["decision_log"] = json!({"enabled": false});
    plugin
}

fn token(sub: &str, extra: Value) -> String {
    let mut claims = json!({"iss": ISS, "sub": sub, "aud": "gw", "iat": NOW - 10, "exp": NOW + 300});
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    testkit::token(Alg::Es256, &json!({"alg": "ES256", "kid": "ec-1"}), &claims)
}

fn request(method: &str, path: &str) -> MemoryHost {
    MemoryHost::new(NOW * 1_000_000_000)
        .header(":method", method)
        .header(":path", path)
        .header(":authority", "gw.example")
        .property(&["source", "address"], "203.0.113.7:41000")
}

fn bearer(host: MemoryHost, token: &str) -> MemoryHost {
    host.header("authorization", format!("Bearer {token}"))
}

/// What came of one request.
#[derive(Debug)]
struct Outcome {
    step: Step,
    status: Option<u16>,
    reason: Option<String>,
    host: MemoryHost,
}

impl Outcome {
    fn upstream(&self, name: &str) -> Option<String> {
        assert_eq!(self.step, Step::Continue, "not forwarded: {self:?}");
        self.host.request_header(name).map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

fn send(fx: &Fixture, host: MemoryHost) -> Outcome {
    let mut host = host.metrics_of(&fx.metrics);
    let mut request = Request::new(1);
    let step = start(&fx.vm, &mut host, &mut request);
    if step == Step::Continue {
        respond(&mut host, &request);
    }
    finish(&fx.vm, &mut host, &mut request);
    let status = host.reply.as_ref().map(|r| r.status);
    let reason = host.reply.as_ref().and_then(|r| {
        serde_json::from_str::<Value>(&r.body).ok()?.get("reason")?.as_str().map(str::to_owned)
    });
    Outcome { step, status, reason, host }
}

#[test]
fn a_verified_machine_is_forwarded_with_its_identity_and_without_its_token() {
    let fx = fixture(plugin());
    let out = send(&fx, bearer(request("GET", "/api/x"), &token("robot", json!({"scope": "a b"}))));
    assert_eq!(out.upstream("x-nhi-client").as_deref(), Some("machine"));
    assert_eq!(out.upstream("x-nhi-identity").as_deref(), Some("robot"));
    assert_eq!(out.upstream("x-nhi-issuer").as_deref(), Some("ci"));
    assert_eq!(out.upstream("x-nhi-scope").as_deref(), Some("a b"));
    assert_eq!(out.upstream("authorization"), None);
    assert_eq!(out.host.filter_state.get("nhi_identity").map(Vec::as_slice), Some(&b"robot"[..]));
    let metrics = fx.metrics.borrow();
    assert_eq!(metrics.find(&["nhi_requests_total", "nhi_decision=allowed"]), Some(1));
}

/// In shadow mode a human route forwards what it would refuse, but never a machine
/// credential: one the verifier refused, read leniently as ours (padded here), would
/// otherwise reach the web backend, whose lenient decoder may accept it (issue 23).
#[test]
fn shadow_mode_never_forwards_a_machine_credential_to_a_human_route() {
    let mut config = plugin();
    config["mode"] = json!("shadow");
    let fx = fixture(config);
    let machine = token("robot", json!({}));
    let out = send(&fx, bearer(request("GET", "/web/x"), &format!("{machine}==")));
    assert_eq!(out.upstream("x-nhi-client").as_deref(), Some("human"));
    let shadow = out.upstream("x-nhi-shadow-decision").unwrap_or_default();
    assert!(shadow.contains("reason=machine_on_human_route"), "{shadow}");
    assert_eq!(out.upstream("authorization"), None, "the machine credential stays here");
    // A person's credential on the same route is theirs to keep.
    let person = send(&fx, request("GET", "/web/x").header("authorization", "Bearer session-abc"));
    assert_eq!(person.upstream("authorization").as_deref(), Some("Bearer session-abc"));
}

/// Two credential headers: neither is read as the credential, but a machine token in
/// either is still ours — a backend that takes the second must not get it on a
/// human route (issue 23's rule, for duplicated headers).
#[test]
fn a_machine_token_in_a_second_credential_header_is_still_ours() {
    let fx = fixture(plugin());
    let machine = token("robot", json!({}));
    let smuggled = request("GET", "/web/x")
        .header("authorization", "Basic dXNlcjpwYXNzd29yZA==")
        .header("authorization", format!("Bearer {machine}"));
    let out = send(&fx, smuggled);
    assert_eq!((out.status, out.reason.as_deref()), (Some(403), Some("machine_on_human_route")));
    let twice = bearer(bearer(request("GET", "/api/x"), &machine), &machine);
    let out = send(&fx, twice);
    assert_eq!((out.status, out.reason.as_deref()), (Some(401), Some("malformed_token")));
    let people = request("GET", "/web/x")
        .header("authorization", "Basic dXNlcjpwYXNzd29yZA==")
        .header("authorization", "Bearer session-abc");
    let out = send(&fx, people);
    assert_eq!(out.upstream("x-nhi-client").as_deref(), Some("human"));
}

#[test]
fn the_audience_table_natively() {
    let fx = fixture(plugin());
    let machine = token("robot", json!({}));
    let expired = testkit::token(
        Alg::Es256,
        &json!({"alg": "ES256", "kid": "ec-1"}),
        &json!({"iss": ISS, "sub": "r", "aud": "gw", "exp": NOW - 3600}),
    );
    for (name, host, status, reason) in [
        ("no token on a machine route", request("GET", "/api/x"), 401, "missing_token"),
        ("expired", bearer(request("GET", "/api/x"), &expired), 401, "expired"),
        (
            "machine token on the human route",
            bearer(request("GET", "/web/x"), &machine),
            403,
            "machine_on_human_route",
        ),
        (
            "padded machine token on the human route",
            bearer(request("GET", "/web/x"), &format!("{machine}==")),
            403,
            "machine_on_human_route",
        ),
        (
            "another scheme on a machine route",
            request("GET", "/api/x").header("authorization", format!("Token {machine}")),
            401,
            "malformed_token",
        ),
        ("unmatched: default audience machine", request("GET", "/other"), 401, "missing_token"),
        (
            "source outside the route's CIDRs",
            bearer(request("GET", "/partner/x"), &machine),
            403,
            "source_not_allowed",
        ),
    ] {
        let out = send(&fx, host);
        assert_eq!(
            (out.step, out.status, out.reason.as_deref()),
            (Step::Replied, Some(status), Some(reason)),
            "{name}"
        );
    }
    let person = send(&fx, request("GET", "/web/x").header("x-nhi-identity", b"admin\xa0".to_vec()));
    assert_eq!(person.upstream("x-nhi-client").as_deref(), Some("human"));
    assert_eq!(person.upstream("x-nhi-identity"), None, "the forged copy is removed whatever its bytes");
}

#[test]
fn quotas_are_charged_natively() {
    let fx = fixture(plugin());
    let tight = token("quota-robot", json!({}));
    for _ in 0..2 {
        assert_eq!(send(&fx, bearer(request("GET", "/api/q"), &tight)).step, Step::Continue);
    }
    let refused = send(&fx, bearer(request("GET", "/api/q"), &tight));
    assert_eq!((refused.status, refused.reason.as_deref()), (Some(429), Some("quota_exceeded")));
}

#[test]
fn a_cached_request_makes_few_host_calls() {
    let fx = fixture(quiet(plugin()));
    let t = token("robot", json!({}));
    send(&fx, bearer(request("GET", "/api/x"), &t));
    let cached = send(&fx, bearer(request("GET", "/api/x"), &t));
    assert_eq!(cached.step, Step::Continue);
    // clock, header map, quota read and write, 3 header writes, token removal, and
    // (without ticks) 2 metric increments.
    assert!(cached.host.total_calls() <= 10, "{:?}", cached.host.calls);
}

/// An identity far from its quota charges a lease once, then its cached requests
/// touch no shared data until the lease is used up (see `crate::quota::Leases`); the
/// tick gives an unused lease back.
#[test]
fn cached_requests_far_from_the_quota_are_served_from_a_lease() {
    let fx = fixture(plugin());
    let t = token("robot", json!({}));
    assert_eq!(send(&fx, bearer(request("GET", "/api/x"), &t)).step, Step::Continue);
    let before = fx.store.calls.get();
    for _ in 0..crate::quota::LEASE_EXTRA {
        assert_eq!(send(&fx, bearer(request("GET", "/api/x"), &t)).step, Step::Continue);
    }
    assert_eq!(fx.store.calls.get(), before, "no shared data while the lease lasts");
    assert_eq!(send(&fx, bearer(request("GET", "/api/x"), &t)).step, Step::Continue);
    assert!(fx.store.calls.get() > before, "a new lease is charged");
    let held = |fx: &Fixture| fx.vm.quota_leases.borrow().as_ref().map(crate::quota::Leases::held);
    assert_eq!(held(&fx), Some(crate::quota::LEASE_EXTRA));
    let mut tick = MemoryHost::new(NOW * 1_000_000_000).metrics_of(&fx.metrics);
    on_tick(&fx.vm, &mut tick, NOW * 1000 + crate::quota::LEASE_NANOS / 1_000_000);
    assert_eq!(held(&fx), Some(0), "given back on the tick");
    // The tight rule (2 a day) is never leased: its third request is refused.
    let tight = token("quota-1", json!({}));
    for _ in 0..2 {
        assert_eq!(send(&fx, bearer(request("GET", "/api/q"), &tight)).step, Step::Continue);
    }
    let refused = send(&fx, bearer(request("GET", "/api/q"), &tight));
    assert_eq!(refused.reason.as_deref(), Some("quota_exceeded"));
}

/// Where ticks run, counters wait for the tick: a request makes no increment call,
/// the tick hands over the exact sums, and a series beyond the pending bound is
/// counted at once rather than dropped.
#[test]
fn counters_wait_for_the_tick_and_stay_exact() {
    let fx = fixture(quiet(plugin()));
    fx.vm.observer.count_on_tick(true);
    let t = token("robot", json!({}));
    let requests = |fx: &Fixture| fx.metrics.borrow().find(&["nhi_requests_total", "nhi_decision=allowed"]);
    send(&fx, bearer(request("GET", "/api/x"), &t));
    let cached = send(&fx, bearer(request("GET", "/api/x"), &t));
    assert_eq!(cached.host.calls.get(&Call::IncrementMetric), None, "{:?}", cached.host.calls);
    assert!(cached.host.total_calls() <= 8, "{:?}", cached.host.calls);
    let refused = send(&fx, request("GET", "/api/x"));
    assert_eq!(refused.status, Some(401));
    assert_eq!(requests(&fx), Some(0), "defined at zero, counted on the tick");
    let mut tick = MemoryHost::new(NOW * 1_000_000_000).metrics_of(&fx.metrics);
    on_tick(&fx.vm, &mut tick, NOW * 1000);
    assert_eq!(requests(&fx), Some(2));
    let metrics = fx.metrics.borrow();
    assert_eq!(metrics.find(&["nhi_identity_requests_total", "nhi_identity=robot"]), Some(2));
    assert_eq!(metrics.find(&["nhi_requests_total", "nhi_reason=missing_token"]), Some(1));
    drop(metrics);
    // Each series is handed over once per tick, with its sum: three series, three calls.
    assert_eq!(tick.calls.get(&Call::IncrementMetric).copied(), Some(3), "{:?}", tick.calls);
    let mut again = MemoryHost::new(NOW * 1_000_000_000).metrics_of(&fx.metrics);
    on_tick(&fx.vm, &mut again, NOW * 1000);
    assert_eq!(again.calls.get(&Call::IncrementMetric), None, "nothing pending");
    assert_eq!(requests(&fx), Some(2));
}

/// Runs one request with a trace and returns it with the outcome.
fn send_traced(fx: &Fixture, mut host: MemoryHost) -> (Outcome, trace::Trace) {
    let mut request = Request::new(1);
    request.trace = Some(Box::default());
    let step = start(&fx.vm, &mut host, &mut request);
    finish(&fx.vm, &mut host, &mut request);
    let status = host.reply.as_ref().map(|r| r.status);
    let trace = *request.trace.take().unwrap();
    (Outcome { step, status, reason: None, host }, trace)
}

#[test]
fn a_trace_records_what_the_stages_decided_without_a_host_call_more() {
    use crate::policy::{Decision, Rule};
    use crate::reason::{Check, Reason};
    let mut rules = plugin();
    rules["routes"][0]["allow"] = json!([{"identity": "ops/*"}, {"identity": "robot"}]);
    let t = token("robot", json!({}));

    // The same request, traced and not, on fresh VMs: the same calls, the same answer.
    let plain = send(&fixture(rules.clone()), bearer(request("GET", "/api/x"), &t));
    let (traced, trace) = send_traced(&fixture(rules.clone()), bearer(request("GET", "/api/x"), &t));
    assert_eq!(plain.host.calls, traced.host.calls);
    assert_eq!((plain.step, plain.status), (traced.step, traced.status));
    let verified = trace.verification.unwrap().unwrap();
    assert_eq!(verified.token().map(|v| v.identity.as_str()), Some("robot"));
    let verdict = trace.verdict.unwrap();
    assert_eq!(
        (verdict.route.as_deref(), verdict.decision, verdict.rule),
        (Some("machine-api"), Decision::Allow, Rule::Allow(1))
    );

    let fx = fixture(rules);
    let (out, trace) = send_traced(&fx, bearer(request("GET", "/api/x"), &token("intruder", json!({}))));
    assert_eq!(out.status, Some(403));
    assert_eq!(trace.verdict.unwrap().rule, Rule::NoAllowRule);
    let (_, trace) =
        send_traced(&fx, bearer(request("GET", "/api/x"), &token("late", json!({"exp": NOW - 3600}))));
    let rejection = trace.verification.unwrap().unwrap_err();
    assert_eq!((rejection.reason, rejection.check), (Reason::Expired, Some(Check::Claims)));
    let (_, trace) = send_traced(&fx, request("GET", "/web/x"));
    assert!(trace.verification.is_none());
    assert_eq!(trace.verdict.map(|v| (v.decision, v.rule)), Some((Decision::Allow, Rule::Audience)));
    // Over quota: the quota stage replaced the verdict.
    for _ in 0..2 {
        send(&fx, bearer(request("GET", "/api/x"), &token("quota-x", json!({}))));
    }
    let mut open = plugin();
    open["routes"][0].as_object_mut().unwrap().remove("allow");
    let (out, trace) = send_traced(&fx, bearer(request("GET", "/web/y"), &token("quota-x", json!({}))));
    assert_eq!(out.status, Some(403), "a machine on a human route");
    assert_eq!(trace.verdict.unwrap().rule, Rule::Audience);
    let fx = fixture(open);
    for _ in 0..2 {
        send(&fx, bearer(request("GET", "/api/x"), &token("quota-x", json!({}))));
    }
    let (out, trace) = send_traced(&fx, bearer(request("GET", "/api/x"), &token("quota-x", json!({}))));
    assert_eq!(out.status, Some(429));
    assert_eq!(trace.verdict.unwrap().rule, Rule::Quota);
}

/// What the failure of one kind of host call does to a request the pipeline would
/// otherwise forward: refused with 500 (the decision depended on it), or nothing
/// (it only observes). A request is never forwarded after a call it depends on failed.
#[test]
fn every_failing_host_call_fails_closed_or_harmlessly() {
    #[derive(Debug, PartialEq)]
    enum Expect {
        Refused500,
        Unaffected,
        /// The reply itself could not be sent: the request stays paused.
        Paused,
    }
    let table = [
        // The request cannot be read: what it is, is unknown.
        (Call::ReadHeaders, Expect::Refused500),
        // The identity headers (or the token removal) are the decision: without them, no forwarding.
        (Call::SetHeader, Expect::Refused500),
        (Call::RemoveHeader, Expect::Refused500),
        // Quota headers on the response to a request already forwarded.
        (Call::SetResponseHeader, Expect::Unaffected),
        // Properties this request does not decide on (its route has no source_cidrs;
        // the decision log's status) read as absent.
        (Call::Property, Expect::Unaffected),
        // Filter state and metrics only observe.
        (Call::SetProperty, Expect::Unaffected),
        (Call::DefineMetric, Expect::Unaffected),
        (Call::IncrementMetric, Expect::Unaffected),
        (Call::RecordMetric, Expect::Unaffected),
        // Only used to refuse: an allowed request never calls it.
        (Call::LocalReply, Expect::Unaffected),
        // A clock cannot fail (the wasm shell falls back to WASI's).
        (Call::Clock, Expect::Unaffected),
        // Only DPoP nonces need randomness.
        (Call::Random, Expect::Unaffected),
        // Read only when a VM starts with partners, and by signed requests' body phase.
        (Call::Environment, Expect::Unaffected),
        (Call::ReadBody, Expect::Unaffected),
        // Only TokenReview liveness makes callouts through the host (see the liveness tests).
        (Call::HttpCall, Expect::Unaffected),
    ];
    assert_eq!(table.len(), Call::ALL.len(), "every kind of call has a row");
    for (call, expect) in table {
        let fx = fixture(plugin());
        let mut host = bearer(request("GET", "/api/x"), &token("robot", json!({})));
        host.fail(call, HostError::INTERNAL_FAILURE);
        let out = send(&fx, host);
        let got = match (out.step, out.status, out.reason.as_deref()) {
            (Step::Replied, Some(500), Some("internal_error")) => Expect::Refused500,
            (Step::Continue, None, _) => Expect::Unaffected,
            (Step::Replied, None, _) => Expect::Paused,
            other => panic!("{call:?}: unexpected {other:?}"),
        };
        assert_eq!(got, expect, "{call:?}");
    }
    // A refusal whose reply cannot be sent: paused, never forwarded.
    let fx = fixture(plugin());
    let mut host = request("GET", "/api/x");
    host.fail(Call::LocalReply, HostError::INTERNAL_FAILURE);
    let out = send(&fx, host);
    assert_eq!((out.step, out.status), (Step::Replied, None));
    // A route that decides on the source: an unreadable source is not inside its CIDRs.
    let fx = fixture(plugin());
    let mut host = bearer(request("GET", "/partner/x"), &token("robot", json!({})));
    host.fail(Call::Property, HostError::INTERNAL_FAILURE);
    let out = send(&fx, host);
    assert_eq!((out.status, out.reason.as_deref()), (Some(403), Some("source_not_allowed")));
}

#[test]
fn a_failing_shared_store_refuses_quota_charges_and_nothing_else() {
    let fx = fixture(plugin());
    fx.store.fail_get.set(true);
    fx.store.fail_set.set(true);
    let out = send(&fx, bearer(request("GET", "/api/x"), &token("robot", json!({}))));
    assert_eq!((out.status, out.reason.as_deref()), (Some(500), Some("internal_error")), "quota unavailable");
    let person = send(&fx, request("GET", "/web/x"));
    assert_eq!(person.step, Step::Continue, "no shared state on the human route");
    let mut no_quota = plugin();
    no_quota.as_object_mut().unwrap().remove("quotas");
    let fx = fixture(no_quota);
    fx.store.fail_get.set(true);
    fx.store.fail_set.set(true);
    let out = send(&fx, bearer(request("GET", "/api/x"), &token("robot", json!({}))));
    assert_eq!(out.upstream("x-nhi-identity").as_deref(), Some("robot"), "the token cache is only a cache");
}

fn with_behaviour(anomalies: Value) -> Value {
    let mut p = plugin();
    p["behaviour"] = json!({"outcome_metrics": true, "warmup_intervals": 3, "forward_header": true,
                            "anomalies": anomalies});
    p
}

/// `request` at `at_ms`, with the upstream answering `status`.
fn at(fx: &Fixture, at_ms: u64, host: MemoryHost, status: u16) -> Outcome {
    let mut host = host;
    host.now_ns = at_ms * 1_000_000;
    host.properties.insert(vec!["response".into(), "code".into()], i64::from(status).to_le_bytes().to_vec());
    send(fx, host)
}

#[test]
fn anomalies_are_flagged_forwarded_counted_and_logged_through_the_pipeline() {
    let fx = fixture(with_behaviour(json!({"new_route": {}, "error_spike": {"min_requests": 5}})));
    let t = token("robot", json!({}));
    let start = NOW * 1000;
    // Four minutes of a steady caller on one route: past the warm-up of three intervals.
    for minute in 0..4 {
        for i in 0..5 {
            let out = at(&fx, start + minute * 60_000 + i * 1_000, bearer(request("GET", "/api/x"), &t), 200);
            assert_eq!(out.upstream("x-nhi-anomaly"), None);
        }
    }
    let out = at(
        &fx,
        start + 4 * 60_000,
        bearer(request("GET", "/partner/x"), &t).property(&["source", "address"], "10.1.2.3:4"),
        200,
    );
    assert_eq!(out.upstream("x-nhi-anomaly").as_deref(), Some("new_route"));
    assert_eq!(fx.metrics.borrow().find(&["nhi_anomalies_total", "nhi_anomaly=new_route"]), Some(1));
    assert_eq!(
        fx.metrics.borrow().find(&[
            "nhi_identity_responses_total",
            "nhi_identity=robot",
            "nhi_status_class=2xx"
        ]),
        Some(21)
    );
    // The upstream starts failing: an error spike, flagged once.
    for i in 0..8 {
        at(&fx, start + 5 * 60_000 + i * 100, bearer(request("GET", "/api/x"), &t), 503);
    }
    assert_eq!(fx.metrics.borrow().find(&["nhi_anomalies_total", "nhi_anomaly=error_spike"]), Some(1));
    assert_eq!(fx.metrics.borrow().find(&["nhi_identity_responses_total", "nhi_status_class=5xx"]), Some(8));
}

#[test]
fn an_enforced_anomaly_is_refused_with_its_status_and_reason() {
    let fx = fixture(with_behaviour(json!({"new_route": {"mode": "enforce", "status": 403}})));
    let t = token("robot", json!({}));
    let start = NOW * 1000;
    for minute in 0..4 {
        for i in 0..3 {
            assert_eq!(
                at(&fx, start + minute * 60_000 + i * 1_000, bearer(request("GET", "/api/x"), &t), 200).step,
                Step::Continue
            );
        }
    }
    let out = at(
        &fx,
        start + 4 * 60_000,
        bearer(request("GET", "/partner/x"), &t).property(&["source", "address"], "10.1.2.3:4"),
        200,
    );
    assert_eq!((out.status, out.reason.as_deref()), (Some(403), Some("anomaly_new_route")));
    // Enforced refusals are not learned: refused again.
    let again = at(
        &fx,
        start + 4 * 60_000 + 10,
        bearer(request("GET", "/partner/x"), &t).property(&["source", "address"], "10.1.2.3:4"),
        200,
    );
    assert_eq!(again.reason.as_deref(), Some("anomaly_new_route"));
}

#[test]
fn detection_adds_no_host_call_to_a_cached_request_between_merges() {
    let mut quiet = quiet(with_behaviour(json!({"burst": {}, "new_route": {}})));
    quiet["behaviour"]["outcome_metrics"] = json!(false);
    quiet["behaviour"]["forward_header"] = json!(false);
    quiet["quotas"] = Value::Null;
    quiet.as_object_mut().unwrap().remove("quotas");
    let fx = fixture(quiet.clone());
    let t = token("robot", json!({}));
    let start = NOW * 1000;
    at(&fx, start, bearer(request("GET", "/api/x"), &t), 200);
    let store_calls = fx.store.calls.get();
    let cached = at(&fx, start + 10, bearer(request("GET", "/api/x"), &t), 200);
    assert_eq!(fx.store.calls.get(), store_calls, "no shared-data call between merges");
    quiet.as_object_mut().unwrap().remove("behaviour");
    let plain_fx = fixture(quiet);
    at(&plain_fx, start, bearer(request("GET", "/api/x"), &t), 200);
    let plain = at(&plain_fx, start + 10, bearer(request("GET", "/api/x"), &t), 200);
    // Bursts and new routes are judged from the worker's memory: not one more call.
    // (With `error_spike` or outcome metrics, the end of the stream also reads the
    // clock and the response status.)
    assert_eq!(
        cached.host.total_calls(),
        plain.host.total_calls(),
        "{:?} vs {:?}",
        cached.host.calls,
        plain.host.calls
    );
}

// ---------------------------------------------------------------------------------
// DPoP (RFC 9449) through the whole pipeline.

/// The test Ed25519 key as a proof's public JWK, and its thumbprint.
fn proof_jwk() -> (Value, String) {
    let jwk =
        testkit::jwks()["keys"].as_array().unwrap().iter().find(|k| k["kid"] == "ed-1").unwrap().clone();
    let jwk = json!({"kty": jwk["kty"], "crv": jwk["crv"], "x": jwk["x"]});
    let jkt = crate::dpop::thumbprint::jkt(jwk.as_object().unwrap()).unwrap();
    (jwk, jkt)
}

fn bound_token(sub: &str) -> String {
    token(sub, json!({"cnf": {"jkt": proof_jwk().1}}))
}

fn proof(method: &str, htu: &str, token: &str, jti: &str, extra: Value) -> String {
    let mut claims = json!({"jti": jti, "htm": method, "htu": htu, "iat": NOW,
                            "ath": crate::dpop::proof::token_hash(token)});
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    testkit::token(Alg::EdDsa, &json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": proof_jwk().0}), &claims)
}

fn dpop_request(method: &str, path: &str, token: &str, proof: &str) -> MemoryHost {
    request(method, path)
        .header(":scheme", "https")
        .header("authorization", format!("DPoP {token}"))
        .header("dpop", proof.to_owned())
}

fn dpop_plugin(dpop: Value) -> Value {
    let mut p = plugin();
    p["issuers"][0]["dpop"] = dpop;
    p["filter_state"] = json!(false);
    p
}

fn challenge(out: &Outcome) -> String {
    let reply = out.host.reply.as_ref().unwrap();
    reply.headers.iter().find(|(n, _)| n == "www-authenticate").map(|(_, v)| v.clone()).unwrap_or_default()
}

#[test]
fn a_dpop_bound_token_with_its_proof_is_forwarded_with_its_key_once() {
    let fx = fixture(dpop_plugin(json!({"mode": "required"})));
    let t = bound_token("robot");
    let p = proof("GET", "https://gw.example/api/x", &t, "j-1", json!({}));
    let out = send(&fx, dpop_request("GET", "/api/x?page=2", &t, &p));
    assert_eq!(out.upstream("x-nhi-identity").as_deref(), Some("robot"));
    assert_eq!(out.upstream("x-nhi-dpop-jkt"), Some(proof_jwk().1));
    assert_eq!(out.upstream("authorization"), None);
    assert_eq!(out.upstream("dpop"), None, "the proof is removed with the token");
    let metrics = fx.metrics.borrow();
    assert!(metrics.find(&["nhi_dpop_proof_duration_us"]).is_some(), "{:?}", metrics.values.keys());
    drop(metrics);
    // The same proof again: a replay, whatever else is right.
    let again = send(&fx, dpop_request("GET", "/api/x?page=2", &t, &p));
    assert_eq!((again.status, again.reason.as_deref()), (Some(401), Some("dpop_replay")));
    assert_eq!(
        challenge(&again),
        "DPoP algs=\"ES256 EdDSA RS256 PS256\", realm=\"nhi-guard\", error=\"invalid_dpop_proof\", \
         error_description=\"the proof was already used\""
    );
}

/// A proof whose signature fails, or that is replayed, counts against its source in
/// the flood guard like a token's; past the budget the source gets no signature check
/// (and nothing is recorded) until the window ends.
#[test]
fn failed_proofs_count_in_the_flood_guard() {
    let mut config = dpop_plugin(json!({"mode": "required"}));
    config["flood_guard"] = json!({"max_failures": 3, "window_seconds": 10});
    let fx = fixture(config);
    let t = bound_token("robot");
    let tampered = |jti: &str| {
        let p = proof("GET", "https://gw.example/api/x", &t, jti, json!({}));
        let (head, signature) = p.rsplit_once('.').unwrap();
        let mut signature = signature.to_owned().into_bytes();
        signature[10] = if signature[10] == b'A' { b'B' } else { b'A' };
        format!("{head}.{}", String::from_utf8(signature).unwrap())
    };
    let valid = proof("GET", "https://gw.example/api/x", &t, "valid", json!({}));
    assert_eq!(send(&fx, dpop_request("GET", "/api/x", &t, &valid)).step, Step::Continue);
    let replayed = send(&fx, dpop_request("GET", "/api/x", &t, &valid));
    assert_eq!(replayed.reason.as_deref(), Some("dpop_replay"));
    for jti in ["bad-1", "bad-2"] {
        let out = send(&fx, dpop_request("GET", "/api/x", &t, &tampered(jti)));
        assert_eq!((out.status, out.reason.as_deref()), (Some(401), Some("invalid_dpop_proof")), "{jti}");
    }
    // Three failures: the source is blocked, even for a good proof.
    let fresh = proof("GET", "https://gw.example/api/x", &t, "fresh", json!({}));
    let blocked = send(&fx, dpop_request("GET", "/api/x", &t, &fresh));
    assert_eq!((blocked.status, blocked.reason.as_deref()), (Some(429), Some("too_many_failures")));
    let reply = blocked.host.reply.as_ref().unwrap();
    assert!(reply.headers.iter().any(|(n, _)| n == "retry-after"), "{:?}", reply.headers);
    // Another source is not.
    let other = proof("GET", "https://gw.example/api/x", &t, "other", json!({}));
    let elsewhere =
        dpop_request("GET", "/api/x", &t, &other).property(&["source", "address"], "198.51.100.9:5000");
    assert_eq!(send(&fx, elsewhere).step, Step::Continue);
    // The window over, the same proof passes: it was never checked nor recorded.
    let mut later = dpop_request("GET", "/api/x", &t, &fresh);
    later.now_ns = (NOW + 11) * 1_000_000_000;
    assert_eq!(send(&fx, later).step, Step::Continue);
}

#[test]
fn a_bound_token_as_bearer_is_refused_in_every_mode() {
    let t = bound_token("robot");
    for dpop in [
        None,
        Some(json!({"mode": "off"})),
        Some(json!({"mode": "optional"})),
        Some(json!({"mode": "required"})),
    ] {
        let mut p = plugin();
        if let Some(dpop) = &dpop {
            p["issuers"][0]["dpop"] = dpop.clone();
        }
        let fx = fixture(p);
        let out = send(&fx, bearer(request("GET", "/api/x"), &t));
        assert_eq!((out.status, out.reason.as_deref()), (Some(401), Some("dpop_required")), "{dpop:?}");
        assert!(
            challenge(&out).starts_with("Bearer realm=\"nhi-guard\", error=\"invalid_token\""),
            "{dpop:?}"
        );
        // Also with a valid proof beside it: the Bearer scheme is the downgrade.
        let p = proof("GET", "https://gw.example/api/x", &t, "j-b", json!({}));
        let out = send(&fx, bearer(request("GET", "/api/x"), &t).header("dpop", p));
        assert_eq!(out.reason.as_deref(), Some("dpop_required"), "{dpop:?}");
    }
}

#[test]
fn modes_decide_what_an_unbound_token_may_do_and_routes_override_them() {
    let unbound = token("robot", json!({}));
    let mut p = dpop_plugin(json!({"mode": "optional"}));
    p["routes"].as_array_mut().unwrap().insert(
        0,
        json!({"name": "strict", "match": {"prefix": "/api/strict/"}, "audience": "machine", "dpop": "required"}),
    );
    let fx = fixture(p);
    assert_eq!(send(&fx, bearer(request("GET", "/api/x"), &unbound)).step, Step::Continue, "optional");
    let strict = send(&fx, bearer(request("GET", "/api/strict/x"), &unbound));
    assert_eq!((strict.status, strict.reason.as_deref()), (Some(401), Some("dpop_required")));
    // An unbound token with the DPoP scheme: not bound to the proof's key.
    let pr = proof("GET", "https://gw.example/api/x", &unbound, "j-u", json!({}));
    let out = send(&fx, dpop_request("GET", "/api/x", &unbound, &pr));
    assert_eq!(out.reason.as_deref(), Some("dpop_key_mismatch"));
    // No token at all: the Bearer challenge gains a bare DPoP one.
    let missing = send(&fx, request("GET", "/api/x"));
    assert_eq!(challenge(&missing), "Bearer realm=\"nhi-guard\", DPoP algs=\"ES256 EdDSA RS256 PS256\"");
    // DPoP off on a route of an issuer that requires it: the DPoP scheme is refused.
    let t = bound_token("robot");
    let pr = proof("GET", "https://gw.example/api/x", &t, "j-o", json!({}));
    let mut p = plugin();
    p["routes"][0]["dpop"] = json!("off");
    p["issuers"][0]["dpop"] = json!({"mode": "required"});
    let out = send(&fixture(p), dpop_request("GET", "/api/x", &t, &pr));
    assert_eq!(out.reason.as_deref(), Some("invalid_dpop_proof"));
    // DPoP off everywhere: the scheme is not even read, as before DPoP existed.
    let out = send(&fixture(dpop_plugin(json!({"mode": "off"}))), dpop_request("GET", "/api/x", &t, &pr));
    assert_eq!(out.reason.as_deref(), Some("malformed_token"));
}

#[test]
fn the_nonce_flow_natively() {
    let fx = fixture(dpop_plugin(json!({"mode": "required", "nonce": true})));
    let t = bound_token("robot");
    let first = send(
        &fx,
        dpop_request("GET", "/api/x", &t, &proof("GET", "https://gw.example/api/x", &t, "n-1", json!({}))),
    );
    assert_eq!((first.status, first.reason.as_deref()), (Some(401), Some("use_dpop_nonce")));
    let reply = first.host.reply.as_ref().unwrap();
    let nonce = reply.headers.iter().find(|(n, _)| n == "dpop-nonce").map(|(_, v)| v.clone()).unwrap();
    assert!(challenge(&first)
        .starts_with("DPoP algs=\"ES256 EdDSA RS256 PS256\", realm=\"nhi-guard\", error=\"use_dpop_nonce\""));
    let retry = proof("GET", "https://gw.example/api/x", &t, "n-2", json!({"nonce": nonce}));
    let ok = send(&fx, dpop_request("GET", "/api/x", &t, &retry));
    assert_eq!(ok.upstream("x-nhi-identity").as_deref(), Some("robot"));
    assert!(
        ok.host.response_headers.iter().any(|(n, v)| n == "dpop-nonce" && *v == nonce),
        "every success carries the nonce"
    );
}

/// DPoP nonces are one per proxy, in shared data: a VM on a host without it (the
/// `auto` plan there) refuses to start, naming the issuer, rather than let each
/// worker issue its own.
#[test]
fn dpop_nonces_need_shared_data() {
    let config =
        Config::from_json(dpop_plugin(json!({"mode": "required", "nonce": true})).to_string().as_bytes())
            .unwrap();
    let plan =
        Plan::choose(HostSetting::Auto, Probed { shared_data: false, timers: true, clock: true }).unwrap();
    let mut host = MemoryHost::new(NOW * 1_000_000_000);
    let err = Vm::start(config, plan, Box::new(MemoryStore::new()), &mut host, NOW * 1000, 7).err().unwrap();
    assert!(matches!(err, StartError::NonceNeedsSharedData { ref issuer } if issuer == "ci"), "{err}");
}

#[test]
fn the_key_is_part_of_the_identity() {
    let (_, jkt) = proof_jwk();
    let mut p = dpop_plugin(json!({"mode": "optional"}));
    p["routes"][0]["allow"] = json!([{"jkt": [jkt]}]);
    p["routes"].as_array_mut().unwrap().insert(
        0,
        json!({"name": "revoked", "match": {"prefix": "/api/revoked/"}, "audience": "machine", "deny": {"jkt": [jkt]}}),
    );
    p["quotas"] = json!({"default": {"requests": 1, "per_seconds": 3600}, "per_dpop_key": true});
    let fx = fixture(p);
    let t = bound_token("robot");
    let allowed = send(
        &fx,
        dpop_request("GET", "/api/x", &t, &proof("GET", "https://gw.example/api/x", &t, "k-1", json!({}))),
    );
    assert_eq!(allowed.upstream("x-nhi-dpop-jkt"), Some(jkt.clone()));
    // An unbound bearer token of the same identity: not this key, not allowed.
    let unbound = send(&fx, bearer(request("GET", "/api/x"), &token("robot", json!({}))));
    assert_eq!(unbound.reason.as_deref(), Some("not_allowed"));
    let revoked = send(
        &fx,
        dpop_request(
            "GET",
            "/api/revoked/x",
            &t,
            &proof("GET", "https://gw.example/api/revoked/x", &t, "k-2", json!({})),
        ),
    );
    assert_eq!((revoked.status, revoked.reason.as_deref()), (Some(401), Some("dpop_key_revoked")));
    // The quota is per identity and key: the key's budget of 1 is spent.
    let spent = send(
        &fx,
        dpop_request("GET", "/api/x", &t, &proof("GET", "https://gw.example/api/x", &t, "k-3", json!({}))),
    );
    assert_eq!(spent.reason.as_deref(), Some("quota_exceeded"));
}

#[test]
fn a_forged_key_header_is_stripped_even_without_dpop() {
    let fx = fixture(plugin());
    let out = send(
        &fx,
        bearer(request("GET", "/api/x"), &token("robot", json!({}))).header("X_NHI_DPOP_JKT", "forged"),
    );
    assert_eq!(out.upstream("x-nhi-dpop-jkt"), None);
    assert_eq!(out.upstream("x_nhi_dpop_jkt"), None);
}

#[test]
fn a_dpop_request_with_a_cached_token_makes_few_host_calls() {
    let mut quiet = dpop_plugin(json!({"mode": "required"}));
    quiet["decision_log"] = json!({"enabled": false});
    let fx = fixture(quiet);
    let t = bound_token("robot");
    send(
        &fx,
        dpop_request("GET", "/api/x", &t, &proof("GET", "https://gw.example/api/x", &t, "c-1", json!({}))),
    );
    let cached = send(
        &fx,
        dpop_request("GET", "/api/x", &t, &proof("GET", "https://gw.example/api/x", &t, "c-2", json!({}))),
    );
    assert_eq!(cached.step, Step::Continue);
    // The Bearer path's 8 (shared data is not counted here), plus: the source address
    // (the flood guard is asked before the proof's signature check), two clock reads
    // around the proof check, the key header, the proof's removal, its histogram. In
    // a proxy, shared data is host calls too: quota and replay table, 2 each, and
    // the source's flood-guard slot, 1.
    assert_eq!(cached.host.total_calls(), 14, "{:?}", cached.host.calls);
}

const K8S: &str = "https://kubernetes.default.svc.cluster.local";
const SA_UID: &str = "6f1a7c1e-0000-4000-8000-000000000003";

fn k8s_plugin(on_unavailable: &str) -> Value {
    json!({
        "issuers": [{
            "name": "cluster", "issuer": K8S, "audiences": ["gw"],
            "jwks": {"inline": testkit::jwks()},
            "algorithms": ["ES256"],
            "profile": {
                "type": "kubernetes",
                "service_accounts": [{"name": "payments/api", "uid": SA_UID}, "ci/*"],
                "liveness": {"cluster": "kube_api", "authority": "kubernetes.default.svc",
                             "path": "/apis/authentication.k8s.io/v1/tokenreviews",
                             "cache_seconds": 10, "timeout_ms": 1000,
                             "on_unavailable": on_unavailable, "max_stale_seconds": 60}
            }
        }],
        "filter_state": false,
        "decision_log": {"enabled": false}
    })
}

fn k8s_token(ns: &str, name: &str, uid: &str, jti: &str) -> String {
    testkit::token(
        Alg::Es256,
        &json!({"alg": "ES256", "kid": "ec-1"}),
        &json!({
            "iss": K8S, "aud": ["gw"], "iat": NOW - 60, "nbf": NOW - 60, "exp": NOW + 3000, "jti": jti,
            "sub": format!("system:serviceaccount:{ns}:{name}"),
            "kubernetes.io": {
                "namespace": ns,
                "node": {"name": "worker-2", "uid": "6f1a7c1e-0000-4000-8000-000000000001"},
                "pod": {"name": "api-7d9f8-x2kqv", "uid": "6f1a7c1e-0000-4000-8000-000000000002"},
                "serviceaccount": {"name": name, "uid": uid}
            }
        }),
    )
}

/// A TokenReview answer as the API server writes it.
fn review_answer(authenticated: bool, username: &str) -> crate::keys::fetch::Response {
    let body = json!({
        "kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": {"audiences": ["gw"]},
        "status": if authenticated {
            json!({"authenticated": true, "user": {"username": username}, "audiences": ["gw"]})
        } else {
            json!({"user": {}, "error": "pod not found"})
        }
    });
    crate::keys::fetch::Response { status: Some(201), body: Ok(body.to_string().into_bytes()) }
}

/// Runs a request up to its TokenReview callout, answers it with `answer`, and
/// returns the outcome (with the callout the host saw).
fn send_reviewed(
    fx: &Fixture,
    mut host: MemoryHost,
    answer: crate::keys::fetch::Response,
) -> (Outcome, Vec<(u32, crate::host::HttpCall)>) {
    let mut request = Request::new(1);
    let step = start(&fx.vm, &mut host, &mut request);
    let Step::Called { token } = step else { panic!("no TokenReview callout: {step:?} {:?}", host.reply) };
    let callouts = std::mem::take(&mut host.callouts);
    let step = answered(&fx.vm, &mut host, &mut request, token, answer, NOW * 1000).unwrap();
    finish(&fx.vm, &mut host, &mut request);
    let status = host.reply.as_ref().map(|r| r.status);
    let reason = host.reply.as_ref().and_then(|r| {
        serde_json::from_str::<Value>(&r.body).ok()?.get("reason")?.as_str().map(str::to_owned)
    });
    (Outcome { step, status, reason, host }, callouts)
}

#[test]
fn a_live_token_is_reviewed_once_then_served_from_the_cache() {
    let fx = fixture(k8s_plugin("deny"));
    let t = k8s_token("payments", "api", SA_UID, "j-1");
    let (first, callouts) = send_reviewed(
        &fx,
        bearer(request("GET", "/api/x"), &t),
        review_answer(true, "system:serviceaccount:payments:api"),
    );
    assert_eq!(first.step, Step::Continue, "{:?}", first.host.reply);
    assert_eq!(callouts.len(), 1);
    let call = &callouts[0].1;
    assert_eq!(call.cluster, "kube_api");
    let sent: Value = serde_json::from_slice(&call.body).unwrap();
    assert_eq!(sent["kind"], "TokenReview");
    assert_eq!(sent["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(sent["spec"]["token"], t.as_str());
    assert_eq!(sent["spec"]["audiences"], json!(["gw"]));
    // The same token again: no callout, forwarded from this worker's entry.
    let cached = send(&fx, bearer(request("GET", "/api/x"), &t));
    assert_eq!(cached.step, Step::Continue);
    assert!(cached.host.callouts.is_empty());
    assert_eq!(cached.host.calls.get(&Call::HttpCall), None);
}

#[test]
fn a_token_the_api_server_no_longer_authenticates_is_workload_gone() {
    let fx = fixture(k8s_plugin("deny"));
    let t = k8s_token("payments", "api", SA_UID, "j-2");
    let (gone, _) = send_reviewed(&fx, bearer(request("GET", "/api/x"), &t), review_answer(false, ""));
    assert_eq!(
        (gone.step, gone.status, gone.reason.as_deref()),
        (Step::Replied, Some(401), Some("workload_gone"))
    );
    // The negative answer is cached too: refused again without a callout.
    let again = send(&fx, bearer(request("GET", "/api/x"), &t));
    assert_eq!((again.status, again.reason.as_deref()), (Some(401), Some("workload_gone")));
    assert!(again.host.callouts.is_empty());
}

#[test]
fn an_unavailable_api_server_is_503_under_deny() {
    let fx = fixture(k8s_plugin("deny"));
    let t = k8s_token("payments", "api", SA_UID, "j-3");
    let down = crate::keys::fetch::Response { status: None, body: Ok(Vec::new()) };
    let (out, _) = send_reviewed(&fx, bearer(request("GET", "/api/x"), &t), down);
    assert_eq!((out.status, out.reason.as_deref()), (Some(503), Some("liveness_unavailable")));
    assert!(
        out.host.reply.as_ref().unwrap().headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("retry-after")),
        "{:?}",
        out.host.reply
    );
}

/// Where a request cannot wait for another request's review (no tick: APISIX), it
/// reviews the token itself rather than be refused `liveness_unavailable` because
/// another request came first while the API server is healthy.
#[test]
fn without_a_tick_a_request_reviews_rather_than_wait_for_another() {
    let fx = tickless_fixture(k8s_plugin("deny"));
    assert!(!fx.vm.can_park());
    let t = k8s_token("payments", "api", SA_UID, "j-9");
    let mut first_host = bearer(request("GET", "/api/x"), &t);
    let mut first = Request::new(1);
    let Step::Called { token: first_call } = start(&fx.vm, &mut first_host, &mut first) else {
        panic!("no review callout: {:?}", first_host.reply)
    };
    // A second request while the first review is in flight.
    let alive = review_answer(true, "system:serviceaccount:payments:api");
    let (second, callouts) = send_reviewed(&fx, bearer(request("GET", "/api/x"), &t), alive.clone());
    assert_eq!(callouts.len(), 1, "its own review");
    assert_eq!(second.step, Step::Continue, "{:?}", second.host.reply);
    // The first review's answer still counts.
    let step = answered(&fx.vm, &mut first_host, &mut first, first_call, alive, NOW * 1000).unwrap();
    assert_eq!(step, Step::Continue, "{:?}", first_host.reply);
}

#[test]
fn allow_recent_never_passes_a_token_never_reviewed() {
    let fx = fixture(k8s_plugin("allow_recent"));
    let t = k8s_token("payments", "api", SA_UID, "j-4");
    let error = crate::keys::fetch::Response { status: Some(500), body: Ok(b"{}".to_vec()) };
    let (out, _) = send_reviewed(&fx, bearer(request("GET", "/api/x"), &t), error);
    assert_eq!((out.status, out.reason.as_deref()), (Some(503), Some("liveness_unavailable")));
}

#[test]
fn a_recreated_service_account_is_refused_by_its_uid() {
    let fx = fixture(k8s_plugin("deny"));
    let t = k8s_token("payments", "api", "6f1a7c1e-0000-4000-8000-0000000000ff", "j-5");
    let out = send(&fx, bearer(request("GET", "/api/x"), &t));
    assert_eq!((out.status, out.reason.as_deref()), (Some(401), Some("service_account_replaced")));
    assert!(out.host.callouts.is_empty(), "refused before any TokenReview");
}

/// Fetches the revocation feed once (the tick's callout answered with `body`);
/// returns whether the fetch machine asked for it.
fn serve_feed(fx: &Fixture, now_ms: u64, body: Vec<u8>) -> bool {
    let tick = fx.vm.fetch_tick(now_ms);
    let Some(callout) = tick.callouts.into_iter().find(|c| c.path == "/revocations.json") else {
        return false;
    };
    fx.vm.fetch_dispatched(callout.ticket, Ok(77), now_ms, 0.0);
    fx.vm.fetch_answered(77, crate::keys::fetch::Response { status: Some(200), body: Ok(body) }, now_ms, 0.0);
    true
}

#[test]
fn the_revocation_feed_revokes_by_jti_and_by_issue_time_without_a_reload() {
    let mut config = plugin();
    config["revocation"] = json!({"cluster": "revocations", "authority": "nhi-revocations.internal",
                                  "path": "/revocations.json", "refresh_seconds": 30});
    let fx = fixture(config);
    let old = token("robot", json!({"jti": "j-old", "iat": NOW - 10}));
    let stolen = token("other", json!({"jti": "j-stolen"}));
    let fresh = token("robot", json!({"jti": "j-new", "iat": NOW - 1}));
    assert!(serve_feed(&fx, NOW * 1000, br#"{"jti": [], "subjects": []}"#.to_vec()));
    assert_eq!(send(&fx, bearer(request("GET", "/api/x"), &old)).step, Step::Continue);
    assert_eq!(send(&fx, bearer(request("GET", "/api/x"), &stolen)).step, Step::Continue);
    // The next fetch, refresh_seconds later: the new list applies to the next request.
    let later = (NOW + 31) * 1000;
    let feed = json!({"jti": ["j-stolen"], "issued_before": {"robot": NOW - 5}});
    assert!(serve_feed(&fx, later, feed.to_string().into_bytes()));
    for (name, t, expected) in [
        ("jti", &stolen, Some("token_revoked")),
        ("issued before", &old, Some("token_revoked")),
        ("issued after", &fresh, None),
    ] {
        let out = send(&fx, bearer(request("GET", "/api/x"), t));
        assert_eq!(out.reason.as_deref(), expected, "{name}");
        if expected.is_some() {
            assert_eq!(out.status, Some(401), "{name}");
        }
    }
    // A feed that is not a list keeps the last good one.
    assert!(serve_feed(&fx, (NOW + 62) * 1000, b"not json".to_vec()));
    assert_eq!(send(&fx, bearer(request("GET", "/api/x"), &stolen)).reason.as_deref(), Some("token_revoked"));
}

/// A host without a tick (Envoy's dynamic modules, APISIX) has the feed's gauges
/// and its stale warning written by requests as they end, at most once a second per
/// VM; with a tick they are the tick's.
#[test]
fn without_a_tick_requests_write_the_gauges_once_a_second() {
    let mut config = plugin();
    config["revocation"] = json!({"cluster": "revocations", "authority": "nhi-revocations.internal",
                                  "path": "/revocations.json", "max_stale_seconds": 60});
    let ticking = fixture(config.clone());
    send(&ticking, bearer(request("GET", "/api/x"), &token("robot", json!({}))));
    assert_eq!(ticking.metrics.borrow().find(&["nhi_revocation_stale"]), None, "the tick's to write");

    let fx = tickless_fixture(config);
    assert!(!fx.vm.ticks());
    let at = |ms: u64| {
        let mut host = bearer(request("GET", "/api/x"), &token("robot", json!({})));
        host.now_ns = NOW * 1_000_000_000 + ms * 1_000_000;
        send(&fx, host);
        let metrics = fx.metrics.borrow();
        (metrics.find(&["nhi_revocation_stale"]), metrics.find(&["nhi_revocation_age_seconds"]))
    };
    // Never fetched: its age counts from the VM's start.
    assert_eq!(at(59_500), (Some(0), Some(59)));
    assert_eq!(at(60_400), (Some(0), Some(59)), "written less than a second ago");
    assert_eq!(at(60_600), (Some(1), Some(60)), "over max_stale_seconds: stale");
}

#[test]
fn a_stale_or_missing_revocation_list_is_refused_with_on_stale_deny_and_used_with_keep() {
    for on_stale in ["deny", "keep"] {
        let mut config = plugin();
        config["revocation"] = json!({"cluster": "revocations", "authority": "nhi-revocations.internal",
                                      "path": "/revocations.json", "refresh_seconds": 30,
                                      "max_stale_seconds": 60, "on_stale": on_stale});
        let fx = fixture(config);
        let stolen = token("robot", json!({"jti": "j-stolen"}));
        // Never loaded: the request waits for the first list once, then is decided.
        let mut host = bearer(request("GET", "/api/x"), &stolen).metrics_of(&fx.metrics);
        let mut req = Request::new(1);
        let step = start(&fx.vm, &mut host, &mut req);
        assert!(matches!(step, Step::Wait { .. }), "{on_stale}: {step:?}");
        req.waited = true;
        let step = run(&fx.vm, &mut host, &mut req, NOW * 1000);
        let reason = host.reply.as_ref().and_then(|r| {
            serde_json::from_str::<Value>(&r.body).ok()?.get("reason")?.as_str().map(str::to_owned)
        });
        match on_stale {
            "deny" => {
                assert_eq!(step, Step::Replied, "{on_stale}");
                assert_eq!(host.reply.as_ref().map(|r| r.status), Some(503));
                assert_eq!(reason.as_deref(), Some("revocations_unavailable"));
            }
            _ => assert_eq!(step, Step::Continue, "{on_stale}: no list, nothing revoked"),
        }
        // Loaded, then older than max_stale_seconds (the feed server stopped answering).
        assert!(serve_feed(&fx, NOW * 1000, br#"{"jti": ["j-stolen"]}"#.to_vec()));
        let mut late = bearer(request("GET", "/api/x"), &stolen);
        late.now_ns = (NOW + 61) * 1_000_000_000;
        let out = send(&fx, late);
        match on_stale {
            "deny" => {
                assert_eq!((out.status, out.reason.as_deref()), (Some(503), Some("revocations_unavailable")))
            }
            _ => {
                assert_eq!(out.reason.as_deref(), Some("token_revoked"), "keep: the last list still applies")
            }
        }
    }
}

/// `nhi_vm_memory_bytes`: each VM adds the change of its own size, so the one gauge
/// the host keeps is the sum over VMs; a VM withdraws what it added. A change the
/// host refused is reported as not made (the shell then does not count it).
#[test]
fn vm_memory_changes_add_up_to_the_sum_over_vms() {
    let (worker_a, worker_b) = (fixture(plugin()), fixture(plugin()));
    let mut host = MemoryHost::new(NOW * 1_000_000_000);
    let gauge = |host: &MemoryHost| host.metrics.borrow().values.get("nhi_vm_memory_bytes").copied();
    assert_eq!(gauge(&host), None, "defined on first report");
    assert!(record::vm_memory(&worker_a.vm, &mut host, 1_114_112));
    assert!(record::vm_memory(&worker_b.vm, &mut host, 1_114_112));
    assert!(record::vm_memory(&worker_a.vm, &mut host, 65_536));
    assert_eq!(gauge(&host), Some((crate::host::MetricKind::Gauge, 2 * 1_114_112 + 65_536)));
    assert!(record::vm_memory(&worker_a.vm, &mut host, -(1_114_112 + 65_536)));
    assert_eq!(gauge(&host), Some((crate::host::MetricKind::Gauge, 1_114_112)));
    host.fail(Call::IncrementMetric, HostError::INTERNAL_FAILURE);
    assert!(!record::vm_memory(&worker_b.vm, &mut host, 65_536));
    assert_eq!(gauge(&host), Some((crate::host::MetricKind::Gauge, 1_114_112)));
}

// ---------------------------------------------------------------------------------
// Failing host calls beyond the plain machine request (issue 24: every call the
// pipeline makes): a DPoP request with a server nonce, and a request whose token
// gets a TokenReview.

/// One injected failure: a host call, or the shared store's reads or writes (also
/// used by the partner tests).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Fault {
    Host(Call),
    StoreGet,
    StoreSet,
}

/// Every fault a request could meet: each kind of host call, and the store.
pub(super) fn faults() -> Vec<Fault> {
    Call::ALL.iter().map(|c| Fault::Host(*c)).chain([Fault::StoreGet, Fault::StoreSet]).collect()
}

pub(super) fn inject(store: &FaultyStore<MemoryStore>, host: &mut MemoryHost, fault: Fault) {
    match fault {
        Fault::Host(call) => host.fail(call, HostError::INTERNAL_FAILURE),
        Fault::StoreGet => store.fail_get.set(true),
        Fault::StoreSet => store.fail_set.set(true),
    }
}

/// Whether a clean run that made `calls` (and `store_calls` store calls) made the
/// call the fault would fail.
pub(super) fn made(
    calls: &std::collections::BTreeMap<Call, usize>,
    store_calls: usize,
    fault: Fault,
) -> bool {
    match fault {
        Fault::Host(call) => calls.get(&call).is_some_and(|n| *n > 0),
        Fault::StoreGet | Fault::StoreSet => store_calls > 0,
    }
}

/// Runs `case` clean, then once per fault of a call the clean run made, and holds
/// each outcome to the rule: refused (with a status and a reason code), or
/// forwarded exactly as the clean run was (same identity, same key, no credential).
/// Returns (fault, status and reason) for the refusals.
fn fails_closed(name: &str, case: &dyn Fn(Option<Fault>) -> (Outcome, usize)) -> Vec<(String, u16, String)> {
    let (clean, store_calls) = case(None);
    assert_eq!(clean.step, Step::Continue, "{name}: clean run {:?}", clean.host.reply);
    let forwarded = |out: &Outcome| {
        ["x-nhi-identity", "x-nhi-dpop-jkt", "authorization", "dpop"].map(|h| out.upstream(h))
    };
    let expected = forwarded(&clean);
    let mut refused = Vec::new();
    let mut tried = 0;
    for fault in faults() {
        if !made(&clean.host.calls, store_calls, fault) {
            continue;
        }
        tried += 1;
        let (out, _) = case(Some(fault));
        match (out.step, out.status, out.reason.as_deref()) {
            (Step::Continue, None, _) => {
                assert_eq!(forwarded(&out), expected, "{name}, {fault:?}: forwarded otherwise")
            }
            (Step::Replied, Some(status), Some(reason)) => {
                assert!(status >= 400, "{name}, {fault:?}: {status}");
                refused.push((format!("{fault:?}"), status, reason.to_owned()));
            }
            // The reply itself failed: paused, never forwarded.
            (Step::Replied, None, _) if matches!(fault, Fault::Host(Call::LocalReply)) => {}
            other => panic!("{name}, {fault:?}: {other:?}"),
        }
    }
    assert!(tried >= 8, "{name}: only {tried} kinds of call made");
    println!("{name}: {tried} faults, refusals {refused:?}");
    refused
}

fn refusal_of<'a>(refused: &'a [(String, u16, String)], fault: &str) -> Option<(u16, &'a str)> {
    refused.iter().find(|(f, _, _)| f == fault).map(|(_, s, r)| (*s, r.as_str()))
}

#[test]
fn every_failing_call_of_a_dpop_request_with_a_nonce_fails_closed() {
    let case = |fault: Option<Fault>| {
        let fx = fixture(dpop_plugin(json!({"mode": "required", "nonce": true})));
        let t = bound_token("robot");
        let first = send(
            &fx,
            dpop_request(
                "GET",
                "/api/x",
                &t,
                &proof("GET", "https://gw.example/api/x", &t, "f-1", json!({})),
            ),
        );
        let reply = first.host.reply.as_ref().unwrap();
        let nonce = reply.headers.iter().find(|(n, _)| n == "dpop-nonce").map(|(_, v)| v.clone()).unwrap();
        let retry = proof("GET", "https://gw.example/api/x", &t, "f-2", json!({"nonce": nonce}));
        let mut host = dpop_request("GET", "/api/x", &t, &retry);
        let before = fx.store.calls.get();
        if let Some(fault) = fault {
            inject(&fx.store, &mut host, fault);
        }
        let out = send(&fx, host);
        (out, fx.store.calls.get() - before)
    };
    let refused = fails_closed("DPoP", &case);
    // The proof cannot be recorded: not accepted unrecorded (it could be replayed).
    assert_eq!(refusal_of(&refused, "StoreSet"), Some((500, "internal_error")));
    assert_eq!(refusal_of(&refused, "StoreGet"), Some((500, "internal_error")));
    for call in ["ReadHeaders", "SetHeader", "RemoveHeader"] {
        assert_eq!(refusal_of(&refused, &format!("Host({call})")), Some((500, "internal_error")), "{call}");
    }
    // The first request of a rotation period makes the nonce: without randomness,
    // no nonce (never a guessable one), and the request is refused.
    let fx = fixture(dpop_plugin(json!({"mode": "required", "nonce": true})));
    let t = bound_token("robot");
    let mut host =
        dpop_request("GET", "/api/x", &t, &proof("GET", "https://gw.example/api/x", &t, "f-0", json!({})));
    host.fail(Call::Random, HostError::INTERNAL_FAILURE);
    let out = send(&fx, host);
    assert_eq!(out.host.calls.get(&Call::Random), Some(&1));
    assert_eq!((out.status, out.reason.as_deref()), (Some(500), Some("internal_error")));
}

#[test]
fn every_failing_call_of_a_reviewed_token_fails_closed() {
    let case = |fault: Option<Fault>| {
        let fx = fixture(k8s_plugin("deny"));
        let t = k8s_token("payments", "api", SA_UID, "f-3");
        let mut host = bearer(request("GET", "/api/x"), &t);
        let before = fx.store.calls.get();
        if let Some(fault) = fault {
            inject(&fx.store, &mut host, fault);
        }
        let mut request = Request::new(1);
        let mut step = start(&fx.vm, &mut host, &mut request);
        if let Step::Called { token } = step {
            let alive = review_answer(true, "system:serviceaccount:payments:api");
            step = answered(&fx.vm, &mut host, &mut request, token, alive, NOW * 1000).unwrap();
        }
        finish(&fx.vm, &mut host, &mut request);
        let status = host.reply.as_ref().map(|r| r.status);
        let reason = host.reply.as_ref().and_then(|r| {
            serde_json::from_str::<Value>(&r.body).ok()?.get("reason")?.as_str().map(str::to_owned)
        });
        (Outcome { step, status, reason, host }, fx.store.calls.get() - before)
    };
    let refused = fails_closed("TokenReview", &case);
    // No review made, or none recorded: the API server's word is missing, and
    // on_unavailable (deny) decides; never forwarded unreviewed.
    assert_eq!(refusal_of(&refused, "Host(HttpCall)"), Some((503, "liveness_unavailable")));
    assert_eq!(refusal_of(&refused, "StoreGet"), Some((503, "liveness_unavailable")));
}

/// `dormant_returned` feeds the inventory (issue 19): an identity that comes back
/// after a dormant silence carries when, in the inventory's JSON.
#[test]
fn a_dormant_return_shows_in_the_inventory() {
    let mut config = plugin();
    config["inventory"] =
        json!({"path": "/.well-known/nhi-guard/inventory", "source_cidrs": ["203.0.113.0/24"]});
    config["behaviour"] = json!({"anomalies": {"dormant_returned": {"after_seconds": 3600}}});
    let fx = fixture(config);
    let robot = token("robot", json!({"exp": NOW + 10 * 3600}));
    let at = |seconds: u64, path: &str, token: Option<&str>| {
        let mut host = request("GET", path);
        if let Some(token) = token {
            host = bearer(host, token);
        }
        host.now_ns = (NOW + seconds) * 1_000_000_000;
        send(&fx, host)
    };
    let inventory = |seconds: u64| -> Value {
        let out = at(seconds, "/.well-known/nhi-guard/inventory", None);
        let body = &out.host.reply.as_ref().unwrap().body;
        serde_json::from_str::<Value>(body).unwrap()["identities"][0].clone()
    };
    assert_eq!(at(0, "/api/x", Some(&robot)).step, Step::Continue);
    assert_eq!(inventory(1)["dormant_returned_at"], Value::Null);
    let back = at(2 * 3600, "/api/x", Some(&robot));
    assert_eq!(back.step, Step::Continue, "observe mode");
    let seen = inventory(2 * 3600 + 1);
    assert_eq!(seen["requests"], 2);
    assert_eq!(
        seen["dormant_returned_at"],
        crate::observe::decision_log::rfc3339_ms((NOW + 2 * 3600) * 1000)
    );
}
