//! Partners through the whole pipeline, natively: signed requests (hmac-sha256 and
//! ed25519) and API keys become identities like tokens; every violated rule has
//! its reason code; bodies wait for their digest; nonces are used once.
//!
//! The signatures here are made with this crate's own signature base; the RFC 9421
//! appendix B vectors (`partners::signature::tests`) and the e2e suite's independent
//! signer (the `http-message-signatures` package) check that base against others'.

use std::rc::Rc;

use ed25519_dalek::{Signer as _, SigningKey};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::config::Config;
use crate::host::capabilities::{HostSetting, Plan, Probed};
use crate::host::header_map::HeaderMap;
use crate::host::memory::{Call, FaultyStore, MemoryHost};
use crate::host::store::MemoryStore;
use crate::partners::{api_key, digest, sf, signature};
use crate::pipeline::tests::{faults, inject, made, Fault};
use crate::pipeline::{self, Request, Step, Vm};

const NOW: u64 = 1_800_000_000;
/// 32 random bytes, base64: what `openssl rand -base64 32` prints.
const HMAC_SECRET: &str = "9WrWLsKl5q1xBtsW8iDsWpUygOk1b/4Kv3yUs5JO0ow=";
const ED25519_SEED: [u8; 32] = [7; 32];

fn ed25519_pem() -> String {
    use base64::Engine as _;
    let public = SigningKey::from_bytes(&ED25519_SEED).verifying_key().to_bytes();
    let mut der = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    der.extend_from_slice(&public);
    format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", sf::BASE64.encode(der))
}

fn plugin() -> Value {
    json!({
        "issuers": [],
        "routes": [
            {"name": "partner-api", "match": {"prefix": "/partner/"}, "audience": "machine",
             "allow": [{"issuer": "partners"}]},
            {"name": "webhooks", "match": {"prefix": "/hooks/"}, "audience": "machine", "require_signature": true},
            {"name": "web", "match": {"prefix": "/web/"}, "audience": "human"}
        ],
        "partners": {
            "clients": [{
                "name": "acme",
                "keys": [
                    {"id": "acme-2026-01", "alg": "hmac-sha256", "secret_env": "ACME_KEY_2026_01",
                     "not_after": NOW as i64 + 3600},
                    {"id": "acme-2026-07", "alg": "ed25519", "public_key": ed25519_pem(),
                     "not_before": NOW as i64 - 60}
                ],
                "api_keys": [{"id": "acme-ci", "sha256": api_key::sha256_hex(b"acme-api-key")}],
                "signature": {"max_body_bytes": 4096}
            }]
        },
        "quotas": {"default": {"requests": 1000, "per_seconds": 60},
                   "rules": [{"name": "partners", "identities": ["partner:*"], "requests": 3, "per_seconds": 3600}]},
        "decision_log": {"enabled": true, "allowed_sample_rate": 1.0}
    })
}

struct Fixture {
    vm: Vm,
    /// The host the VM started on (the series it defined up front).
    started: MemoryHost,
    /// The shared store, whose reads or writes can be made to fail.
    store: Rc<FaultyStore<MemoryStore>>,
}

fn fixture(plugin: Value) -> Fixture {
    let config = Config::from_json(plugin.to_string().as_bytes()).unwrap();
    let plan =
        Plan::choose(HostSetting::Auto, Probed { shared_data: true, timers: true, clock: true }).unwrap();
    let mut started = MemoryHost::new(NOW * 1_000_000_000).env("ACME_KEY_2026_01", HMAC_SECRET);
    let store = Rc::new(FaultyStore::<MemoryStore>::default());
    let vm = Vm::start(config, plan, Box::new(Rc::clone(&store)), &mut started, NOW * 1000, 7).unwrap();
    Fixture { vm, started, store }
}

fn request(method: &str, path: &str) -> MemoryHost {
    MemoryHost::new(NOW * 1_000_000_000)
        .header(":method", method)
        .header(":scheme", "https")
        .header(":path", path)
        .header(":authority", "gw.example")
        .property(&["source", "address"], "203.0.113.7:41000")
}

/// How a test signs: key, components, parameters.
struct Sign<'a> {
    keyid: &'a str,
    components: &'a [&'a str],
    created: i64,
    expires: Option<i64>,
    nonce: Option<&'a str>,
    alg: Option<&'a str>,
}

impl Default for Sign<'_> {
    fn default() -> Self {
        Sign {
            keyid: "acme-2026-01",
            components: &["@method", "@authority", "@path"],
            created: NOW as i64 - 5,
            expires: None,
            nonce: Some("n-1"),
            alg: None,
        }
    }
}

/// Adds `Signature-Input` and `Signature` to `host` (label `sig1`).
fn sign(host: MemoryHost, how: &Sign<'_>) -> MemoryHost {
    let mut input =
        format!("({})", how.components.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(" "));
    input.push_str(&format!(";created={}", how.created));
    if let Some(expires) = how.expires {
        input.push_str(&format!(";expires={expires}"));
    }
    if let Some(nonce) = how.nonce {
        input.push_str(&format!(";nonce=\"{nonce}\""));
    }
    input.push_str(&format!(";keyid=\"{}\"", how.keyid));
    if let Some(alg) = how.alg {
        input.push_str(&format!(";alg=\"{alg}\""));
    }
    let field = format!("sig1={input}");
    let candidates = signature::parse(field.as_bytes(), b"sig1=:AA==:").unwrap();
    let headers = HeaderMap::from_pairs(host.headers.iter().cloned());
    let request = crate::partners::check::signed_request(&headers);
    let base = signature::signature_base(&request, &candidates[0]).unwrap();
    let bytes = if how.keyid.starts_with("acme-2026-07") {
        SigningKey::from_bytes(&ED25519_SEED).sign(base.as_bytes()).to_bytes().to_vec()
    } else {
        use base64::Engine as _;
        let key = base64::engine::general_purpose::STANDARD.decode(HMAC_SECRET).unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(base.as_bytes());
        mac.finalize().into_bytes().to_vec()
    };
    use base64::Engine as _;
    host.header("signature-input", field).header("signature", format!("sig1=:{}:", sf::BASE64.encode(bytes)))
}

#[derive(Debug)]
struct Outcome {
    step: Step,
    status: Option<u16>,
    reason: Option<String>,
    host: MemoryHost,
    request: Request,
}

impl Outcome {
    fn upstream(&self, name: &str) -> Option<String> {
        assert_eq!(self.step, Step::Continue, "not forwarded: {:?} {:?}", self.status, self.reason);
        self.host.request_header(name).map(|v| String::from_utf8_lossy(v).into_owned())
    }

    fn reply_header(&self, name: &str) -> Option<&str> {
        self.host.reply.as_ref()?.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn metric(&self, needle: &str) -> Option<i64> {
        let metrics = self.host.metrics.borrow();
        metrics.values.iter().find(|(name, _)| name.contains(needle)).map(|(_, (_, v))| *v)
    }
}

/// Sends `host`'s request; with a body, as Envoy would: headers not ending the
/// stream, then the whole body in one chunk.
fn send(fx: &Fixture, host: MemoryHost) -> Outcome {
    let mut host = host.metrics_of(&fx.started.metrics);
    let mut request = Request::new(1);
    request.has_body = !host.body.is_empty();
    let mut step = pipeline::start(&fx.vm, &mut host, &mut request);
    if let Step::Body { .. } = step {
        let length = host.body.len();
        step = pipeline::body(&fx.vm, &mut host, &mut request, length, true);
    }
    if step == Step::Continue {
        pipeline::respond(&mut host, &request);
    }
    pipeline::finish(&fx.vm, &mut host, &mut request);
    let status = host.reply.as_ref().map(|r| r.status);
    let reason = host.reply.as_ref().and_then(|r| {
        serde_json::from_str::<Value>(&r.body).ok()?.get("reason")?.as_str().map(str::to_owned)
    });
    Outcome { step, status, reason, host, request }
}

fn refused(out: &Outcome) -> (Option<u16>, Option<&str>) {
    assert_eq!(out.step, Step::Replied, "{out:?}");
    (out.status, out.reason.as_deref())
}

#[test]
fn a_signed_request_is_an_identity_like_a_token() {
    let fx = fixture(plugin());
    let out = send(&fx, sign(request("GET", "/partner/orders"), &Sign::default()));
    assert_eq!(out.upstream("x-nhi-client").as_deref(), Some("machine"));
    assert_eq!(out.upstream("x-nhi-identity").as_deref(), Some("partner:acme"));
    assert_eq!(out.upstream("x-nhi-issuer").as_deref(), Some("partners"));
    // The partner's quota rule applies to it (3 per hour: this was the first).
    assert_eq!(
        out.request.observed.quota.as_ref().map(|q| (q.policy.as_str(), q.remaining)),
        Some(("partners", 2))
    );
    // Counted under its issuer and key; its key id is what the decision log calls kid.
    assert_eq!(
        out.metric("nhi_issuer=partners;nhi_route=partner-api;nhi_decision=allowed;nhi_reason=allow;"),
        Some(1)
    );
    assert_eq!(out.metric("nhi_partner=acme;nhi_key=acme-2026-01;nhi_partner_key_requests_total"), Some(1));
    assert_eq!(
        out.metric("nhi_partner=acme;nhi_key=acme-2026-01;nhi_partner_key_last_used_seconds"),
        Some(NOW as i64)
    );
    assert_eq!(out.request.observed.kid.as_deref(), Some("acme-2026-01"));
    assert_eq!(out.request.observed.identity.as_deref(), Some("partner:acme"));
    // The key nobody used yet is defined at zero (so its disuse is visible).
    assert_eq!(out.metric("nhi_key=acme-2026-07;nhi_partner_key_requests_total"), Some(0));
}

#[test]
fn the_same_signature_twice_is_a_replay() {
    let fx = fixture(plugin());
    let signed = sign(request("GET", "/partner/orders"), &Sign::default());
    let mut replay = request("GET", "/partner/orders");
    replay.headers = signed.headers.clone();
    assert_eq!(send(&fx, signed).step, Step::Continue);
    let again = send(&fx, replay);
    assert_eq!(refused(&again), (Some(401), Some("signature_replay")));
    assert_eq!(again.request.observed.identity, None, "a replay is no identity");
    // A fresh nonce is a new request.
    let fresh =
        send(&fx, sign(request("GET", "/partner/orders"), &Sign { nonce: Some("n-2"), ..Sign::default() }));
    assert_eq!(fresh.step, Step::Continue);
}

#[test]
fn each_violated_rule_has_its_reason() {
    let fx = fixture(plugin());
    let now = NOW as i64;
    let cases: Vec<(&str, MemoryHost, u16, &str)> = vec![
        (
            "no nonce",
            sign(request("GET", "/partner/a"), &Sign { nonce: None, ..Sign::default() }),
            401,
            "missing_nonce",
        ),
        (
            "too old",
            sign(
                request("GET", "/partner/a"),
                &Sign { created: now - 400, nonce: Some("old"), ..Sign::default() },
            ),
            401,
            "signature_expired",
        ),
        (
            "expired",
            sign(
                request("GET", "/partner/a"),
                &Sign { expires: Some(now - 60), nonce: Some("exp"), ..Sign::default() },
            ),
            401,
            "signature_expired",
        ),
        (
            "from the future",
            sign(
                request("GET", "/partner/a"),
                &Sign { created: now + 120, nonce: Some("fut"), ..Sign::default() },
            ),
            401,
            "signature_not_yet_valid",
        ),
        (
            "unknown keyid",
            sign(
                request("GET", "/partner/a"),
                &Sign { keyid: "nobody", nonce: Some("u"), ..Sign::default() },
            ),
            401,
            "unknown_key",
        ),
        (
            "alg of another key",
            sign(
                request("GET", "/partner/a"),
                &Sign { alg: Some("ed25519"), nonce: Some("alg"), ..Sign::default() },
            ),
            401,
            "disallowed_alg",
        ),
        (
            "path not covered",
            sign(
                request("GET", "/partner/a"),
                &Sign { components: &["@method", "@authority"], nonce: Some("p"), ..Sign::default() },
            ),
            401,
            "missing_component",
        ),
        (
            "query not covered",
            sign(request("GET", "/partner/a?limit=5"), &Sign { nonce: Some("q"), ..Sign::default() }),
            401,
            "missing_component",
        ),
        (
            "not structured",
            request("GET", "/partner/a")
                .header("signature-input", "sig1=(")
                .header("signature", "sig1=:AA==:"),
            401,
            "malformed_signature",
        ),
        (
            "signature without input",
            request("GET", "/partner/a").header("signature", "sig1=:AA==:"),
            401,
            "malformed_signature",
        ),
        (
            "no body, but an API key that is not one",
            request("GET", "/partner/a").header("x-api-key", "guess"),
            401,
            "invalid_api_key",
        ),
    ];
    for (name, host, status, reason) in cases {
        let out = send(&fx, host);
        assert_eq!(refused(&out), (Some(status), Some(reason)), "{name}");
    }
    // A forged signature: the path changed after signing.
    let mut forged = sign(request("GET", "/partner/a"), &Sign { nonce: Some("forged"), ..Sign::default() });
    forged.headers.retain(|(n, _)| n != b":path");
    forged.headers.push((b":path".to_vec(), b"/partner/b".to_vec()));
    let out = send(&fx, forged);
    assert_eq!(refused(&out), (Some(401), Some("bad_signature")));
    assert_eq!(
        out.request.observed.kid.as_deref(),
        Some("acme-2026-01"),
        "the key is logged, not the identity"
    );
    assert_eq!(out.request.observed.identity, None);
}

#[test]
fn refusals_that_a_signer_can_fix_carry_hints() {
    let fx = fixture(plugin());
    let out = send(&fx, request("POST", "/hooks/order").with_body("{}"));
    assert_eq!(refused(&out), (Some(401), Some("missing_signature")));
    assert_eq!(
        out.reply_header("accept-signature"),
        Some("sig1=(\"@method\" \"@authority\" \"@path\" \"content-digest\")")
    );
    assert_eq!(out.reply_header("www-authenticate"), Some("Bearer realm=\"nhi-guard\""));
    let out =
        send(&fx, sign(request("GET", "/partner/a?x=1"), &Sign { nonce: Some("h"), ..Sign::default() }));
    assert_eq!(refused(&out), (Some(401), Some("missing_component")));
    assert_eq!(
        out.reply_header("accept-signature"),
        Some("sig1=(\"@method\" \"@authority\" \"@path\" \"@query\")")
    );
}

#[test]
fn a_signed_body_waits_for_itself_and_must_match_its_digest() {
    let fx = fixture(plugin());
    let body = br#"{"order": 42}"#;
    let with_digest = |body: &[u8]| {
        request("POST", "/partner/orders").header("content-digest", digest::content_digest_sha256(body))
    };
    let how = Sign {
        components: &["@method", "@authority", "@path", "content-digest"],
        nonce: Some("b-1"),
        ..Sign::default()
    };

    // The headers alone do not decide: the body is asked for, within the limit.
    let mut host = sign(with_digest(body), &how).with_body(body.to_vec());
    let mut request = Request::new(1);
    request.has_body = true;
    assert_eq!(pipeline::start(&fx.vm, &mut host, &mut request), Step::Body { max_bytes: 4096 });
    assert_eq!(host.calls.get(&Call::ReadBody), None, "nothing read before the end of the stream");
    assert_eq!(pipeline::body(&fx.vm, &mut host, &mut request, 5, false), Step::Body { max_bytes: 4096 });
    assert_eq!(pipeline::body(&fx.vm, &mut host, &mut request, body.len(), true), Step::Continue);
    assert_eq!(host.request_header("x-nhi-identity"), Some(&b"partner:acme"[..]));

    // Tampered on the way: the digest no longer matches.
    let how2 = Sign { nonce: Some("b-2"), ..how };
    let out = send(&fx, sign(with_digest(body), &how2).with_body(br#"{"order": 43}"#.to_vec()));
    assert_eq!(refused(&out), (Some(401), Some("digest_mismatch")));
    assert_eq!(out.reply_header("want-content-digest"), Some("sha-256=10, sha-512=5"));

    // A body without content-digest in the signature is not protected: refused.
    let out = send(
        &fx,
        sign(with_digest(body), &Sign { nonce: Some("b-3"), ..Sign::default() }).with_body(body.to_vec()),
    );
    assert_eq!(refused(&out), (Some(401), Some("missing_component")));

    // Over the limit: refused as soon as the buffered length says so…
    let big = vec![b'x'; 5000];
    let mut host = sign(with_digest(&big), &Sign { nonce: Some("b-4"), ..how }).with_body(big.clone());
    let mut request = Request::new(1);
    request.has_body = true;
    assert!(matches!(pipeline::start(&fx.vm, &mut host, &mut request), Step::Body { .. }));
    assert_eq!(pipeline::body(&fx.vm, &mut host, &mut request, 4097, false), Step::Replied);
    assert_eq!(host.reply.as_ref().map(|r| r.status), Some(413));
    // …or before a byte is buffered, when the declared length says so.
    let host = sign(with_digest(&big).header("content-length", "5000"), &Sign { nonce: Some("b-5"), ..how })
        .with_body(big);
    let out = send(&fx, host);
    assert_eq!(refused(&out), (Some(413), Some("body_too_large")));
    assert_eq!(out.host.calls.get(&Call::ReadBody), None);
}

#[test]
fn a_bodiless_request_never_enters_the_body_phase() {
    let fx = fixture(plugin());
    let mut host = sign(request("GET", "/partner/orders"), &Sign::default());
    let mut request = Request::new(1);
    assert_eq!(pipeline::start(&fx.vm, &mut host, &mut request), Step::Continue);
    assert_eq!(host.calls.get(&Call::ReadBody), None);
    assert!(request.pending.is_none());
}

#[test]
fn rotation_two_live_keys_then_not_after() {
    let fx = fixture(plugin());
    let old = send(&fx, sign(request("GET", "/partner/a"), &Sign { nonce: Some("r-1"), ..Sign::default() }));
    let new = send(
        &fx,
        sign(
            request("GET", "/partner/a"),
            &Sign { keyid: "acme-2026-07", nonce: Some("r-2"), ..Sign::default() },
        ),
    );
    assert_eq!((old.step, new.step), (Step::Continue, Step::Continue));
    assert_eq!(new.metric("nhi_key=acme-2026-07;nhi_partner_key_requests_total"), Some(1));
    // An hour later the old key's not_after has passed.
    let later = |mut host: MemoryHost| {
        host.now_ns = (NOW + 3600) * 1_000_000_000;
        host
    };
    let how = Sign { created: NOW as i64 + 3599, nonce: Some("r-3"), ..Sign::default() };
    let out = send(&fx, later(sign(request("GET", "/partner/a"), &how)));
    assert_eq!(refused(&out), (Some(401), Some("key_inactive")));
    let how =
        Sign { keyid: "acme-2026-07", created: NOW as i64 + 3599, nonce: Some("r-4"), ..Sign::default() };
    assert_eq!(send(&fx, later(sign(request("GET", "/partner/a"), &how))).step, Step::Continue);
}

#[test]
fn an_api_key_is_an_identity_and_never_reaches_the_upstream() {
    let fx = fixture(plugin());
    let out = send(&fx, request("GET", "/partner/a").header("x-api-key", "acme-api-key"));
    assert_eq!(out.upstream("x-nhi-identity").as_deref(), Some("partner:acme"));
    assert_eq!(out.upstream("x-api-key"), None);
    assert_eq!(out.metric("nhi_key=acme-ci;nhi_partner_key_requests_total"), Some(1));
    let wrong = send(&fx, request("GET", "/partner/a").header("x-api-key", "acme-api-kez"));
    assert_eq!(refused(&wrong), (Some(401), Some("invalid_api_key")));
    // Two keys, the valid one first or second: no key is read.
    for pair in [["acme-api-key", "acme-api-kez"], ["acme-api-kez", "acme-api-key"]] {
        let two =
            send(&fx, request("GET", "/partner/a").header("x-api-key", pair[0]).header("x-api-key", pair[1]));
        assert_eq!(refused(&two), (Some(401), Some("invalid_api_key")), "{pair:?}");
    }
    // An API key is no signature: a route that requires one says so.
    let hook = send(&fx, request("GET", "/hooks/a").header("x-api-key", "acme-api-key"));
    assert_eq!(refused(&hook), (Some(401), Some("missing_signature")));
    // On the human route a partner key is a machine credential.
    let web = send(&fx, request("GET", "/web/a").header("x-api-key", "acme-api-key"));
    assert_eq!(refused(&web), (Some(403), Some("machine_on_human_route")));
    // Authenticated otherwise (a signature goes first), the key still stays here.
    let how = Sign { nonce: Some("with-a-key"), ..Sign::default() };
    let signed = send(&fx, sign(request("GET", "/partner/a").header("x-api-key", "acme-api-key"), &how));
    assert_eq!(signed.upstream("x-nhi-identity").as_deref(), Some("partner:acme"));
    assert_eq!(signed.upstream("x-api-key"), None, "a key sent beside a signature");
}

#[test]
fn partners_share_the_identitys_quota() {
    let fx = fixture(plugin());
    for i in 0..3 {
        let nonce = format!("q-{i}");
        let out =
            send(&fx, sign(request("GET", "/partner/a"), &Sign { nonce: Some(&nonce), ..Sign::default() }));
        assert_eq!(out.step, Step::Continue);
    }
    // Signature or API key: one identity, one budget.
    let out = send(&fx, request("GET", "/partner/a").header("x-api-key", "acme-api-key"));
    assert_eq!(refused(&out), (Some(429), Some("quota_exceeded")));
}

#[test]
fn a_missing_secret_stops_the_vm_naming_the_variable() {
    let config = Config::from_json(plugin().to_string().as_bytes()).unwrap();
    let plan =
        Plan::choose(HostSetting::Auto, Probed { shared_data: true, timers: true, clock: true }).unwrap();
    let mut host = MemoryHost::new(NOW * 1_000_000_000);
    let err = Vm::start(config, plan, Box::new(MemoryStore::new()), &mut host, NOW * 1000, 7).err().unwrap();
    assert_eq!(
        err.to_string(),
        "partner secret unavailable: environment variable ACME_KEY_2026_01 \
         (`partners.clients[0].keys[0].secret_env`) is not set"
    );
}

#[test]
fn a_bearer_token_goes_first_and_signature_headers_of_no_partner_config_are_nothing() {
    // Without partners, signature headers are just headers: no credential.
    let mut plain = plugin();
    plain.as_object_mut().unwrap().remove("partners");
    plain["routes"] = json!([{"name": "web", "match": {"prefix": "/"}, "audience": "human"}]);
    plain["issuers"] = json!([{"name": "ci", "issuer": "https://issuer.example", "audiences": ["gw"],
                                "jwks": {"inline": crate::testkit::jwks()}}]);
    plain.as_object_mut().unwrap().remove("quotas");
    let fx = fixture(plain);
    let out = send(
        &fx,
        request("GET", "/x").header("signature-input", "sig1=()").header("signature", "sig1=:AA==:"),
    );
    assert_eq!(out.upstream("x-nhi-client").as_deref(), Some("human"));
}

/// Every host call a signed request with a body makes, failed in turn, and the
/// shared store (its nonce cache): refused, or forwarded exactly as without the
/// fault; never forwarded with its nonce unrecorded or its body unchecked.
#[test]
fn every_failing_call_of_a_signed_body_fails_closed() {
    let body = br#"{"order": 7}"#;
    let how = Sign {
        components: &["@method", "@authority", "@path", "content-digest"],
        nonce: Some("fault"),
        ..Sign::default()
    };
    let signed = || {
        let host =
            request("POST", "/partner/orders").header("content-digest", digest::content_digest_sha256(body));
        sign(host, &how).with_body(body.to_vec())
    };
    let run = |fault: Option<Fault>| {
        let fx = fixture(plugin());
        let mut host = signed();
        if let Some(fault) = fault {
            inject(&fx.store, &mut host, fault);
        }
        let before = fx.store.calls.get();
        let out = send(&fx, host);
        (out, fx.store.calls.get() - before)
    };
    let (clean, store_calls) = run(None);
    let forwarded =
        |out: &Outcome| ["x-nhi-identity", "signature", "signature-input"].map(|h| out.upstream(h));
    let expected = forwarded(&clean);
    assert_eq!(expected[0].as_deref(), Some("partner:acme"));
    let mut refusals = Vec::new();
    let mut tried = 0;
    for fault in faults() {
        if !made(&clean.host.calls, store_calls, fault) {
            continue; // a call this request does not make
        }
        tried += 1;
        let (out, _) = run(Some(fault));
        match (out.step, out.status, out.reason.as_deref()) {
            (Step::Continue, None, _) => assert_eq!(forwarded(&out), expected, "{fault:?}"),
            (Step::Replied, Some(status), Some(reason)) => refusals.push((fault, status, reason.to_owned())),
            (Step::Replied, None, _) if fault == Fault::Host(Call::LocalReply) => {}
            other => panic!("{fault:?}: {other:?}"),
        }
    }
    assert!(tried >= 9, "{tried}");
    println!("signed body: {tried} faults, refusals {refusals:?}");
    let refused =
        |fault: Fault| refusals.iter().find(|(f, _, _)| *f == fault).map(|(_, s, r)| (*s, r.as_str()));
    // The body cannot be read: its digest cannot be checked.
    assert_eq!(refused(Fault::Host(Call::ReadBody)).map(|r| r.0), Some(500));
    // The nonce cannot be looked up or recorded: not accepted unrecorded.
    assert!(refused(Fault::StoreGet).is_some(), "store reads failing: {refusals:?}");
    assert!(refused(Fault::StoreSet).is_some(), "store writes failing: {refusals:?}");
}
