//! nhi-guard inside a real Envoy, end to end: the shipped `envoy/envoy.yaml` with the
//! built filter, a JWKS server and an echo upstream on loopback.
//!
//! Needs the Envoy binary (`make tools` or `ENVOY_BIN`) and the release wasm
//! (`make wasm` or `NHI_WASM`); a missing
//! one fails the test with instructions, it never skips.
//!
//! One Envoy serves the whole verdict table, so startup is paid once. Every case runs
//! even after a failure; the test then fails listing all failed cases, and Envoy's log
//! is printed (see `Envoy`'s `Drop`).

// clippy.toml relaxes these inside #[test] functions only; the helpers here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_harness::http::Response;
use test_harness::jwks_server::JwksBehaviour;
use test_harness::keys::{self, TestKey, TestKeys};
use test_harness::mint::{self, Alg, ConfusionSecret, Token};
use test_harness::roca;
use test_harness::stack::Stack;
use test_harness::upstream;

const REALM: &str = r#"Bearer realm="nhi-guard""#;
const INVALID_TOKEN_PREFIX: &str = r#"Bearer realm="nhi-guard", error="invalid_token", error_description=""#;
const FORWARDED_IDENTITY: &str = "x-nhi-identity";
const FORWARDED_ISSUER: &str = "x-nhi-issuer";
/// The `kid` of the ROCA-weak key the JWKS publishes beside the ordinary ones.
const ROCA_KID: &str = "rsa-infineon-1";

/// What the filter should do with a request.
enum Expect {
    /// Reaches the upstream, which sees exactly this identity.
    Allowed { identity: String },
    /// 401 with this reason code; never reaches the upstream.
    Rejected { reason: &'static str },
}

struct Case {
    name: String,
    /// Sent as `authorization: Bearer <token>` when present.
    token: Option<String>,
    extra_headers: Vec<(&'static str, &'static str)>,
    expect: Expect,
}

impl Case {
    fn allowed(name: impl Into<String>, token: String, identity: &str) -> Self {
        Self {
            name: name.into(),
            token: Some(token),
            extra_headers: Vec::new(),
            expect: Expect::Allowed { identity: identity.to_owned() },
        }
    }

    fn rejected(name: &str, token: Option<String>, reason: &'static str) -> Self {
        Self { name: name.to_owned(), token, extra_headers: Vec::new(), expect: Expect::Rejected { reason } }
    }

    fn with_headers(mut self, headers: &[(&'static str, &'static str)]) -> Self {
        self.extra_headers.extend_from_slice(headers);
        self
    }

    fn path(&self) -> String {
        format!("/e2e/{}", self.name)
    }
}

fn cases(stack: &Stack, keys: &TestKeys, roca_key: &TestKey) -> Vec<Case> {
    let issuer = stack.issuer().unwrap();
    let audience = stack.audience().unwrap();
    let now = mint::now();
    let skew =
        stack.plugin["issuers"][0]["clock_skew_seconds"].as_u64().expect("issuers[0].clock_skew_seconds");
    assert!(skew >= 10, "the skew cases need a clock skew of at least 10 s");
    // Claims the shipped config accepts, for a given subject.
    let claims = |sub: &str| {
        json!({
            "iss": issuer,
            "aud": audience,
            "sub": sub,
            "iat": now,
            "exp": now + 300,
        })
    };
    let signed =
        |alg: Alg, claims: Value| Token::new(alg).claims(claims).sign(keys.by_type(alg.key_type())).unwrap();

    let mut cases = Vec::new();
    // Every algorithm the shipped config allows must work with a published key.
    for alg in allowed_algorithms(stack) {
        let name = format!("valid-{}", alg.name().to_lowercase());
        let sub = format!("system:serviceaccount:ci:{name}");
        cases.push(Case::allowed(name, signed(alg, claims(&sub)), &sub));
    }

    cases.push(
        Case::allowed(
            "forged-identity-headers-replaced",
            signed(Alg::Es256, claims("system:serviceaccount:ci:honest")),
            "system:serviceaccount:ci:honest",
        )
        .with_headers(&[(FORWARDED_IDENTITY, "admin"), (FORWARDED_ISSUER, "root")]),
    );
    cases.push(
        Case::rejected("forged-identity-without-token", None, "missing_token")
            .with_headers(&[(FORWARDED_IDENTITY, "admin"), (FORWARDED_ISSUER, "root")]),
    );
    cases.push(Case::rejected("missing-token", None, "missing_token"));

    // Inside the configured clock skew a just-expired or almost-valid token passes;
    // well outside it, it fails.
    let mut within_skew = claims("system:serviceaccount:ci:skewed");
    within_skew["exp"] = json!(now - skew / 2);
    within_skew["nbf"] = json!(now + skew / 2);
    cases.push(Case::allowed(
        "expiry-and-nbf-within-clock-skew",
        signed(Alg::Es256, within_skew),
        "system:serviceaccount:ci:skewed",
    ));
    let mut expired = claims("expired");
    expired["iat"] = json!(now - skew - 600);
    expired["exp"] = json!(now - skew - 90);
    cases.push(Case::rejected("expired", Some(signed(Alg::Es256, expired)), "expired"));
    let mut early = claims("early");
    early["nbf"] = json!(now + skew + 90);
    cases.push(Case::rejected("not-yet-valid", Some(signed(Alg::Es256, early)), "not_yet_valid"));

    let mut wrong_aud = claims("wrong-aud");
    wrong_aud["aud"] = json!("some-other-gateway");
    cases.push(Case::rejected("wrong-audience", Some(signed(Alg::Rs256, wrong_aud)), "wrong_audience"));
    let mut evil_iss = claims("evil");
    evil_iss["iss"] = json!("https://evil.example");
    cases.push(Case::rejected(
        "wrong-issuer-with-known-kid",
        Some(signed(Alg::Rs256, evil_iss.clone())),
        "wrong_issuer",
    ));
    cases.push(Case::rejected(
        "unknown-issuer-and-kid",
        Some(Token::new(Alg::Es256).claims(evil_iss).kid("evil-1").sign(&keys.p256).unwrap()),
        "unknown_issuer",
    ));

    for (name, alg) in [
        ("bad-signature-rs256", Alg::Rs256),
        ("bad-signature-es256", Alg::Es256),
        ("bad-signature-eddsa", Alg::EdDsa),
    ] {
        let tampered = mint::tamper_signature(&signed(alg, claims("tampered"))).unwrap();
        cases.push(Case::rejected(name, Some(tampered), "bad_signature"));
    }
    // The signature is valid, but the kid names no key in the JWKS.
    cases.push(Case::rejected(
        "unknown-kid",
        Some(Token::new(Alg::Es256).claims(claims("unknown-kid")).kid("ec-404").sign(&keys.p256).unwrap()),
        "unknown_kid",
    ));

    // A correct RS256 signature by a key the JWKS does publish, but whose modulus has
    // the ROCA structure (CVE-2017-15361): anyone can compute its private key, so it is
    // never imported and its kid stays unknown. The ordinary RSA key published beside it
    // still verifies (`valid-rs256`).
    cases.push(Case::rejected(
        "roca-weak-key",
        Some(Token::new(Alg::Rs256).claims(claims("system:serviceaccount:ci:tpm")).sign(roca_key).unwrap()),
        "unknown_kid",
    ));

    cases.push(Case::rejected(
        "alg-none",
        Some(mint::alg_none(&claims("none"), Some(keys.rsa.kid())).unwrap()),
        "disallowed_alg",
    ));
    cases.push(Case::rejected(
        "hs256-keyed-with-rsa-public-pem",
        Some(mint::hs256_with_public_key(&keys.rsa, &claims("hs"), ConfusionSecret::Pem).unwrap()),
        "disallowed_alg",
    ));
    cases.push(Case::rejected(
        "hs256-keyed-with-rsa-public-jwk",
        Some(mint::hs256_with_public_key(&keys.rsa, &claims("hs"), ConfusionSecret::Jwk).unwrap()),
        "disallowed_alg",
    ));
    // A correct RS384 signature with a published key; RS384 is just not in the list.
    assert!(!allowed_algorithms(stack).contains(&Alg::Rs384));
    cases.push(Case::rejected(
        "rs384-not-allowed",
        Some(signed(Alg::Rs384, claims("rs384"))),
        "disallowed_alg",
    ));

    let mut no_exp = claims("no-exp");
    no_exp.as_object_mut().unwrap().remove("exp");
    cases.push(Case::rejected("missing-exp", Some(signed(Alg::Es256, no_exp)), "missing_claim"));
    cases.push(Case::rejected(
        "malformed-not-a-jws",
        Some("definitely-not-a-jwt".to_owned()),
        "malformed_token",
    ));
    cases.push(Case::rejected(
        "malformed-header-not-json",
        Some(mint::raw("{not json", &claims("x").to_string(), b"sig")),
        "malformed_token",
    ));
    cases
}

/// `issuers[0].algorithms` of the running plugin configuration.
fn allowed_algorithms(stack: &Stack) -> Vec<Alg> {
    stack.plugin["issuers"][0]["algorithms"]
        .as_array()
        .expect("issuers[0].algorithms")
        .iter()
        .map(|alg| alg.as_str().expect("algorithm name").parse().unwrap())
        .collect()
}

/// Runs one case; `Err` describes every way the answer differed from the contract.
fn check(stack: &Stack, case: &Case) -> Result<(), String> {
    let path = case.path();
    let authorization = case.token.as_ref().map(|token| format!("Bearer {token}"));
    let mut headers: Vec<(&str, &str)> = case.extra_headers.clone();
    if let Some(authorization) = &authorization {
        headers.push(("authorization", authorization));
    }
    let response = stack.get(&path, &headers).map_err(|err| format!("request failed: {err:#}"))?;
    let reached = stack.upstream.hits_for(&path);
    let mut problems = Vec::new();
    match &case.expect {
        Expect::Allowed { identity } => {
            check_allowed(stack, &response, identity, &mut problems);
            if reached != 1 {
                problems.push(format!("upstream reached {reached} times, expected once"));
            }
        }
        Expect::Rejected { reason } => {
            check_rejected(&response, reason, &mut problems);
            if let Some(token) = &case.token {
                // The signature segment alone is unique enough to spot a leak.
                let tail = token.rsplit('.').next().unwrap_or(token);
                if tail.len() > 8 && response.body_text().contains(tail) {
                    problems.push("the rejection body contains the token".into());
                }
            }
            if reached != 0 {
                problems.push(format!("upstream reached {reached} times, expected never"));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}\n      response: {} {:?} {}",
            problems.join("; "),
            response.status,
            response.headers,
            response.body_text()
        ))
    }
}

fn check_allowed(stack: &Stack, response: &Response, identity: &str, problems: &mut Vec<String>) {
    if response.status != 200 {
        problems.push(format!("status {} instead of 200", response.status));
        return;
    }
    let Ok(echo) = response.body_json() else {
        problems.push("upstream echo is not JSON".into());
        return;
    };
    let values = |name: &str| upstream::echoed(&echo, name);
    let identities = values(FORWARDED_IDENTITY);
    if identities != [identity] {
        problems.push(format!(
            "upstream saw {FORWARDED_IDENTITY} {identities:?}, expected exactly [{identity:?}]"
        ));
    }
    let issuer_name = stack.issuer_name().unwrap_or("<none>");
    let issuers = values(FORWARDED_ISSUER);
    if issuers != [issuer_name] {
        problems
            .push(format!("upstream saw {FORWARDED_ISSUER} {issuers:?}, expected exactly [{issuer_name:?}]"));
    }
}

fn check_rejected(response: &Response, reason: &str, problems: &mut Vec<String>) {
    if response.status != 401 {
        problems.push(format!("status {} instead of 401", response.status));
    }
    let challenge = response.header("www-authenticate").unwrap_or_default();
    if reason == "missing_token" {
        if challenge != REALM {
            problems.push(format!("www-authenticate {challenge:?}, expected {REALM:?}"));
        }
    } else if !challenge.starts_with(INVALID_TOKEN_PREFIX) {
        problems.push(format!("www-authenticate {challenge:?} does not start with {INVALID_TOKEN_PREFIX:?}"));
    }
    match response.body_json() {
        Ok(body) => {
            if body["error"] != "unauthenticated" {
                problems.push(format!("error {} instead of \"unauthenticated\"", body["error"]));
            }
            if body["reason"] != reason {
                problems.push(format!("reason {} instead of {reason:?}", body["reason"]));
            }
            if !body["request_id"].as_str().is_some_and(looks_like_envoy_request_id) {
                problems
                    .push(format!("request_id {} is not an Envoy x-request-id (UUID)", body["request_id"]));
            }
        }
        Err(_) => problems.push("body is not JSON".into()),
    }
}

/// Envoy generates `x-request-id` as a textual UUID.
fn looks_like_envoy_request_id(id: &str) -> bool {
    let groups: Vec<usize> = id.split('-').map(str::len).collect();
    groups == [8, 4, 4, 4, 12] && id.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
}

#[test]
fn verdicts_for_every_kind_of_token() {
    let keys = TestKeys::shared().unwrap();
    let roca_key = roca::weak_key(ROCA_KID).unwrap();
    let mut stack =
        Stack::start(JwksBehaviour::serve(&keys::jwks(keys.all().into_iter().chain([&roca_key])))).unwrap();
    let probe = Token::new(Alg::Es256).sign(&keys.p256).unwrap();
    stack.wait_for_keys(&probe).unwrap();

    let cases = cases(&stack, keys, &roca_key);
    let mut failures = Vec::new();
    for case in &cases {
        match check(&stack, case) {
            Ok(()) => println!("ok    {}", case.name),
            Err(problem) => {
                println!("FAIL  {}: {problem}", case.name);
                failures.push(format!("{}: {problem}", case.name));
            }
        }
    }
    // The operator learns which key was refused and why.
    let refused = format!("JWKS key \"{ROCA_KID}\": ROCA-weak RSA modulus (CVE-2017-15361)");
    if !stack.envoy.log().lines().any(|line| line.contains(&refused) && line.ends_with(": skipped")) {
        println!("FAIL  log: no line naming the refused key ({refused:?})");
        failures.push(format!("log: no warning {refused:?}"));
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n  {}",
        failures.len(),
        cases.len(),
        failures.join("\n  ")
    );
}

#[test]
fn keys_unavailable_until_the_jwks_server_recovers() {
    let keys = TestKeys::shared().unwrap();
    let mut stack = Stack::start(JwksBehaviour::fail(500)).unwrap();
    let token = Token::new(Alg::Es256).sign(&keys.p256).unwrap();
    let authorization = format!("Bearer {token}");

    // Let the filter try (and fail) at least once, so the 503 is about the failure and
    // not just about a fetch still in flight.
    let jwks_hits = || stack.jwks.hits();
    let deadline = Instant::now() + Duration::from_secs(10);
    while jwks_hits() == 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(jwks_hits() > 0, "the filter never fetched its JWKS");
    thread::sleep(Duration::from_millis(200));

    let response = stack.get("/e2e/keys-unavailable", &[("authorization", &authorization)]).unwrap();
    assert_eq!(response.status, 503, "{}", response.body_text());
    assert!(response.header("retry-after").is_some(), "no retry-after: {:?}", response.headers);
    let body = response.body_json().unwrap();
    assert_eq!(body["error"], "unavailable", "{body}");
    assert_eq!(body["reason"], "keys_unavailable", "{body}");
    assert!(body["request_id"].as_str().is_some_and(looks_like_envoy_request_id), "{body}");
    assert!(!response.body_text().contains(&token));
    assert_eq!(stack.upstream.hits(), 0, "a request reached the upstream without keys");

    // Failed fetches back off briefly at first, so a recovered key server is picked up.
    stack.jwks.set_jwks(&keys.jwks());
    stack.wait_for_keys(&token).unwrap();
    let response = stack.get("/e2e/after-recovery", &[("authorization", &authorization)]).unwrap();
    assert_eq!(response.status, 200, "{}", response.body_text());
    assert_eq!(stack.upstream.hits_for("/e2e/after-recovery"), 1);
}
