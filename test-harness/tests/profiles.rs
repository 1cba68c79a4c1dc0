//! Token profiles in a real Envoy: one realistic token of each profile (Kubernetes
//! projected service-account token, SPIFFE JWT-SVID, GitHub Actions OIDC token, a
//! partner's access token under the generic profile) is accepted with the identity
//! and claim headers upstream, and each profile rule, violated once, is refused with
//! its reason code.
//!
//! One Envoy serves the whole table. Its plugin configuration is the shipped one
//! plus four issuers whose keys come from one extra server (cluster `idp`, cloned
//! from the shipped JWKS cluster); the GitHub issuer finds its keys through OIDC
//! discovery, as it would in production.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use serde_json::{json, Value};
use test_harness::envoy::EnvoyOptions;
use test_harness::envoy_config::EnvoyConfig;
use test_harness::http::{Request, Response, Server};
use test_harness::jwks_server::JwksBehaviour;
use test_harness::keys::{self, KeyType, TestKey, TestKeys};
use test_harness::mint::{self, Alg, Token};
use test_harness::stack::Stack;
use test_harness::upstream;

const K8S_ISS: &str = "https://kubernetes.default.svc.cluster.local";
const SPIFFE_ISS: &str = "https://spire.prod.example.org";
const GITHUB_ISS: &str = "https://token.actions.githubusercontent.com";
const PARTNER_ISS: &str = "https://login.partner.example";
const INVALID_TOKEN_PREFIX: &str = r#"Bearer realm="nhi-guard", error="invalid_token""#;

/// The keys of the four issuers (same material as the shared test keys, own kids).
struct IdpKeys {
    k8s: TestKey,
    svid: TestKey,
    /// Published in the SPIFFE bundle with `use: x509-svid`.
    svid_x509: TestKey,
    /// Published in the SPIFFE bundle with `use: sig`.
    svid_sig: TestKey,
    github: TestKey,
    partner: TestKey,
}

impl IdpKeys {
    fn new() -> Self {
        let keys = TestKeys::shared().unwrap();
        Self {
            k8s: keys.by_type(KeyType::Rsa).with_kid("k8s-sa-2024"),
            svid: keys.by_type(KeyType::P256).with_kid("spire-jwt-1"),
            svid_x509: keys.by_type(KeyType::P384).with_kid("spire-x509-1"),
            svid_sig: keys.by_type(KeyType::Ed25519).with_kid("spire-sig-1"),
            github: keys.by_type(KeyType::Rsa).with_kid("gh-actions-1"),
            partner: keys.by_type(KeyType::Ed25519).with_kid("partner-1"),
        }
    }
}

fn jwk_with_use(key: &TestKey, use_: &str) -> Value {
    let mut jwk = key.public_jwk();
    jwk["use"] = json!(use_);
    jwk
}

/// The identity providers: a Kubernetes API server's JWKS, a SPIFFE trust bundle,
/// GitHub's discovery document and JWKS, and a partner's JWKS.
fn idp_server(k: &IdpKeys) -> Server {
    let k8s = keys::jwks([&k.k8s]);
    let bundle = json!({
        "keys": [jwk_with_use(&k.svid, "jwt-svid"), jwk_with_use(&k.svid_x509, "x509-svid"),
                 jwk_with_use(&k.svid_sig, "sig")],
        "spiffe_sequence": 12, "spiffe_refresh_hint": 300
    });
    let github_doc = json!({
        "issuer": GITHUB_ISS,
        "jwks_uri": "https://token.actions.githubusercontent.com/.well-known/jwks",
        "subject_types_supported": ["public", "pairwise"],
        "response_types_supported": ["id_token"],
        "claims_supported": ["sub", "aud", "exp", "iat", "iss", "jti", "nbf", "ref", "repository",
                             "repository_id", "repository_owner_id", "environment", "job_workflow_ref"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid"]
    });
    let github = keys::jwks([&k.github]);
    let partner = keys::jwks([&k.partner]);
    Server::start(move |request: &Request| match request.path() {
        "/openid/v1/jwks" => Response::json(200, &k8s),
        "/bundle" => Response::json(200, &bundle),
        "/.well-known/openid-configuration" => Response::json(200, &github_doc),
        "/.well-known/jwks" => Response::json(200, &github),
        "/partner/jwks.json" => Response::json(200, &partner),
        _ => Response::new(404),
    })
    .unwrap()
}

/// The shipped plugin configuration plus the four profiled issuers.
fn plugin() -> Value {
    let mut plugin = EnvoyConfig::shipped().unwrap().plugin_configuration().unwrap();
    let issuers = plugin["issuers"].as_array_mut().unwrap();
    issuers.push(json!({
        "name": "k8s",
        "issuer": K8S_ISS,
        "audiences": ["nhi-gateway"],
        "jwks": {"cluster": "idp", "authority": "kubernetes.default.svc", "path": "/openid/v1/jwks"},
        "algorithms": ["RS256"],
        "profile": {"type": "kubernetes", "namespaces": ["ci", "payments"],
                    "service_accounts": ["ci/deployer", "payments/*"], "max_token_lifetime_seconds": 3600},
        "claims_to_headers": {"kubernetes.io.pod.name": "x-nhi-k8s-pod"}
    }));
    issuers.push(json!({
        "name": "mesh",
        "issuer": SPIFFE_ISS,
        "audiences": ["nhi-gateway"],
        "jwks": {"cluster": "idp", "authority": "spire.prod.example.org", "path": "/bundle"},
        "algorithms": ["ES256", "ES384", "EdDSA"],
        "profile": {"type": "spiffe", "trust_domains": ["prod.example.org"]}
    }));
    issuers.push(json!({
        "name": "github",
        "issuer": GITHUB_ISS,
        "audiences": ["https://nhi-gateway.example"],
        "discovery": {"cluster": "idp", "authority": "token.actions.githubusercontent.com"},
        "algorithms": ["RS256"],
        "profile": {
            "type": "github_actions",
            "repository_ids": ["892318843"],
            "repository_owner_ids": ["9919"],
            "refs": ["refs/heads/main", "refs/tags/v*"],
            "environments": ["production"],
            "job_workflow_refs": ["octo-org/deploy-workflows/.github/workflows/deploy.yml@refs/heads/main"],
            "event_names": ["push", "workflow_dispatch"]
        },
        "claims_to_headers": {"repository": "x-nhi-gh-repository", "run_id": "x-nhi-gh-run-id"}
    }));
    issuers.push(json!({
        "name": "partner",
        "issuer": PARTNER_ISS,
        "audiences": ["https://api.example.com"],
        "jwks": {"cluster": "idp", "authority": "login.partner.example", "path": "/partner/jwks.json"},
        "algorithms": ["EdDSA"],
        "typ": "at+jwt",
        "profile": {"type": "generic", "claims": [
            {"claim": "azp", "equals": "partner-ci"},
            {"claim": "partner.tier", "one_of": ["gold", "silver"]},
            {"claim": "client_email", "prefix": "ci@"},
            {"claim": "roles", "contains": "deployer"}
        ]},
        "claims_to_headers": {"roles": "x-nhi-roles", "partner.tier": "x-nhi-tier"}
    }));
    plugin
}

fn k8s_claims(ns: &str, name: &str) -> Value {
    let now = mint::now();
    json!({
        "aud": ["nhi-gateway"],
        "exp": now + 3000,
        "iat": now - 600,
        "nbf": now - 600,
        "iss": K8S_ISS,
        "jti": "0b8c2f4e-5c44-4c1f-9d84-0f9e5a3b1c2d",
        "kubernetes.io": {
            "namespace": ns,
            "node": {"name": "worker-2", "uid": "6f1a7c1e-0000-4000-8000-000000000001"},
            "pod": {"name": "deployer-7d9f8-x2kqv", "uid": "6f1a7c1e-0000-4000-8000-000000000002"},
            "serviceaccount": {"name": name, "uid": "6f1a7c1e-0000-4000-8000-000000000003"},
            "warnafter": now + 2400
        },
        "sub": format!("system:serviceaccount:{ns}:{name}")
    })
}

fn svid_claims(sub: &str) -> Value {
    let now = mint::now();
    json!({"aud": ["nhi-gateway"], "exp": now + 300, "iat": now, "iss": SPIFFE_ISS, "sub": sub})
}

/// Claims as GitHub documents them for a deployment job.
fn github_claims() -> Value {
    let now = mint::now();
    json!({
        "jti": "6b0f2c6e-1b1c-4c59-9a52-5f7a3c0e2d11",
        "sub": "repo:octo-org/octo-repo:environment:production",
        "environment": "production",
        "aud": "https://nhi-gateway.example",
        "ref": "refs/heads/main",
        "sha": "d6c3f1e1f0e5b6a7c8d9e0f1a2b3c4d5e6f7a8b9",
        "repository": "octo-org/octo-repo",
        "repository_owner": "octo-org",
        "actor_id": "583231",
        "repository_visibility": "private",
        "repository_id": "892318843",
        "repository_owner_id": "9919",
        "run_id": "9876543210",
        "run_number": "42",
        "run_attempt": "1",
        "runner_environment": "github-hosted",
        "actor": "octocat",
        "workflow": "deploy",
        "head_ref": "",
        "base_ref": "",
        "event_name": "push",
        "ref_type": "branch",
        "workflow_ref": "octo-org/octo-repo/.github/workflows/release.yml@refs/heads/main",
        "job_workflow_ref": "octo-org/deploy-workflows/.github/workflows/deploy.yml@refs/heads/main",
        "iss": GITHUB_ISS,
        "nbf": now - 5,
        "exp": now + 295,
        "iat": now - 5
    })
}

fn partner_claims() -> Value {
    let now = mint::now();
    json!({
        "iss": PARTNER_ISS, "sub": "partner-ci-7", "aud": "https://api.example.com",
        "azp": "partner-ci", "client_email": "ci@partner.example", "partner": {"tier": "gold"},
        "roles": ["reader", "deployer"], "scope": "deploy", "jti": "p-1", "iat": now, "exp": now + 600
    })
}

fn with(mut claims: Value, edit: impl FnOnce(&mut Value)) -> Value {
    edit(&mut claims);
    claims
}

fn without(mut claims: Value, name: &str) -> Value {
    claims.as_object_mut().unwrap().remove(name);
    claims
}

enum Expect {
    /// Reaches the machine upstream with this identity, issuer name and exactly
    /// these claim headers (`None`: absent).
    Allowed {
        identity: String,
        issuer: &'static str,
        headers: Vec<(&'static str, Option<&'static str>)>,
    },
    Rejected {
        reason: &'static str,
    },
}

struct Case {
    name: &'static str,
    token: String,
    extra_headers: Vec<(&'static str, &'static str)>,
    expect: Expect,
}

fn allowed(
    name: &'static str,
    token: String,
    identity: &str,
    issuer: &'static str,
    headers: &[(&'static str, Option<&'static str>)],
) -> Case {
    Case {
        name,
        token,
        extra_headers: Vec::new(),
        expect: Expect::Allowed { identity: identity.to_owned(), issuer, headers: headers.to_vec() },
    }
}

fn rejected(name: &'static str, token: String, reason: &'static str) -> Case {
    Case { name, token, extra_headers: Vec::new(), expect: Expect::Rejected { reason } }
}

fn cases(k: &IdpKeys) -> Vec<Case> {
    let rs256 = |claims: Value, key: &TestKey| Token::new(Alg::Rs256).claims(claims).sign(key).unwrap();
    let es256 = |claims: Value| Token::new(Alg::Es256).claims(claims).sign(&k.svid).unwrap();
    let at_jwt = |claims: Value, typ: &str| {
        Token::new(Alg::EdDsa).claims(claims).header_field("typ", typ).sign(&k.partner).unwrap()
    };
    let k8s = |claims: Value| rs256(claims, &k.k8s);
    let gh = |claims: Value| rs256(claims, &k.github);
    let forged = [
        ("x-nhi-k8s-pod", "forged-pod"),
        ("x-nhi-gh-repository", "forged/repo"),
        ("x-nhi-roles", "admin"),
        ("x-nhi-tier", "platinum"),
    ];
    let spiffe_id = "spiffe://prod.example.org/ns/payments/sa/api";
    let mut cases = vec![
        // ---- kubernetes
        allowed(
            "k8s-projected-token",
            k8s(k8s_claims("ci", "deployer")),
            "ci/deployer",
            "k8s",
            &[("x-nhi-k8s-pod", Some("deployer-7d9f8-x2kqv")), ("x-nhi-roles", None), ("x-nhi-tier", None)],
        ),
        allowed(
            "k8s-namespace-wildcard-account",
            k8s(k8s_claims("payments", "ledger")),
            "payments/ledger",
            "k8s",
            &[],
        ),
        rejected("k8s-namespace-not-allowed", k8s(k8s_claims("prod", "deployer")), "claim_not_allowed"),
        rejected("k8s-service-account-not-allowed", k8s(k8s_claims("ci", "intruder")), "claim_not_allowed"),
        rejected(
            "k8s-sub-not-a-service-account",
            k8s(with(k8s_claims("ci", "deployer"), |c| c["sub"] = json!("deployer"))),
            "profile_mismatch",
        ),
        rejected(
            "k8s-claim-disagrees-with-sub",
            k8s(with(k8s_claims("prod", "deployer"), |c| {
                c["sub"] = json!("system:serviceaccount:ci:deployer")
            })),
            "profile_mismatch",
        ),
        rejected(
            "k8s-legacy-token-without-kubernetes-io",
            k8s(without(k8s_claims("ci", "deployer"), "kubernetes.io")),
            "missing_claim",
        ),
        rejected(
            "k8s-year-long-extended-token",
            k8s(with(k8s_claims("ci", "deployer"), |c| c["exp"] = json!(mint::now() + 365 * 86_400))),
            "lifetime_too_long",
        ),
        rejected(
            "k8s-api-server-default-audience",
            k8s(with(k8s_claims("ci", "deployer"), |c| c["aud"] = json!(["https://kubernetes.default.svc"]))),
            "wrong_audience",
        ),
        // ---- spiffe
        allowed(
            "spiffe-jwt-svid",
            es256(svid_claims(spiffe_id)),
            spiffe_id,
            "mesh",
            &[("x-nhi-k8s-pod", None)],
        ),
        rejected(
            "spiffe-foreign-trust-domain",
            es256(svid_claims("spiffe://evil.example.org/ns/payments/sa/api")),
            "claim_not_allowed",
        ),
        rejected("spiffe-sub-not-a-spiffe-id", es256(svid_claims("payments-api")), "profile_mismatch"),
        rejected(
            "spiffe-trust-domain-alone",
            es256(svid_claims("spiffe://prod.example.org")),
            "profile_mismatch",
        ),
        rejected(
            "spiffe-signed-by-x509-svid-key",
            Token::new(Alg::Es384).claims(svid_claims(spiffe_id)).sign(&k.svid_x509).unwrap(),
            "unknown_kid",
        ),
        rejected(
            "spiffe-signed-by-sig-key",
            Token::new(Alg::EdDsa).claims(svid_claims(spiffe_id)).sign(&k.svid_sig).unwrap(),
            "unknown_kid",
        ),
        rejected(
            "spiffe-access-token-typ",
            Token::new(Alg::Es256)
                .claims(svid_claims(spiffe_id))
                .header_field("typ", "at+jwt")
                .sign(&k.svid)
                .unwrap(),
            "wrong_token_type",
        ),
        rejected("spiffe-without-aud", es256(without(svid_claims(spiffe_id), "aud")), "missing_claim"),
        rejected("spiffe-without-exp", es256(without(svid_claims(spiffe_id), "exp")), "missing_claim"),
        // ---- github_actions (keys found through OIDC discovery)
        allowed(
            "github-deploy-job",
            gh(github_claims()),
            "octo-org/octo-repo@refs/heads/main",
            "github",
            &[("x-nhi-gh-repository", Some("octo-org/octo-repo")), ("x-nhi-gh-run-id", Some("9876543210"))],
        ),
        allowed(
            "github-release-tag",
            gh(with(github_claims(), |c| c["ref"] = json!("refs/tags/v2.4.0"))),
            "octo-org/octo-repo@refs/tags/v2.4.0",
            "github",
            &[],
        ),
        rejected(
            "github-re-registered-repository",
            gh(with(github_claims(), |c| c["repository_id"] = json!("999000111"))),
            "claim_not_allowed",
        ),
        rejected(
            "github-other-owner",
            gh(with(github_claims(), |c| c["repository_owner_id"] = json!("31337"))),
            "claim_not_allowed",
        ),
        rejected(
            "github-feature-branch",
            gh(with(github_claims(), |c| c["ref"] = json!("refs/heads/feature/x"))),
            "claim_not_allowed",
        ),
        rejected(
            "github-staging-environment",
            gh(with(github_claims(), |c| c["environment"] = json!("staging"))),
            "claim_not_allowed",
        ),
        rejected(
            "github-foreign-reusable-workflow",
            gh(with(github_claims(), |c| {
                c["job_workflow_ref"] = json!("evil-org/wf/.github/workflows/deploy.yml@refs/heads/main")
            })),
            "claim_not_allowed",
        ),
        rejected(
            "github-pull-request-event",
            gh(with(github_claims(), |c| c["event_name"] = json!("pull_request_target"))),
            "claim_not_allowed",
        ),
        rejected(
            "github-default-audience",
            gh(with(github_claims(), |c| c["aud"] = json!("https://github.com/octo-org"))),
            "wrong_audience",
        ),
        rejected(
            "github-without-repository-id",
            gh(without(github_claims(), "repository_id")),
            "missing_claim",
        ),
        // ---- generic (a partner's RFC 9068 access token)
        allowed(
            "partner-access-token",
            at_jwt(partner_claims(), "at+jwt"),
            "partner-ci-7",
            "partner",
            &[
                ("x-nhi-roles", Some("reader,deployer")),
                ("x-nhi-tier", Some("gold")),
                ("x-nhi-k8s-pod", None),
            ],
        ),
        allowed(
            "partner-typ-with-media-prefix",
            at_jwt(partner_claims(), "application/at+jwt"),
            "partner-ci-7",
            "partner",
            &[],
        ),
        rejected("partner-id-token-as-access-token", at_jwt(partner_claims(), "JWT"), "wrong_token_type"),
        rejected(
            "partner-exact-rule",
            at_jwt(with(partner_claims(), |c| c["azp"] = json!("other-client")), "at+jwt"),
            "claim_not_allowed",
        ),
        rejected(
            "partner-one-of-rule",
            at_jwt(with(partner_claims(), |c| c["partner"]["tier"] = json!("bronze")), "at+jwt"),
            "claim_not_allowed",
        ),
        rejected(
            "partner-prefix-rule",
            at_jwt(with(partner_claims(), |c| c["client_email"] = json!("intern@partner.example")), "at+jwt"),
            "claim_not_allowed",
        ),
        rejected(
            "partner-contains-rule",
            at_jwt(with(partner_claims(), |c| c["roles"] = json!(["reader"])), "at+jwt"),
            "claim_not_allowed",
        ),
        rejected(
            "unknown-issuer",
            Token::new(Alg::EdDsa)
                .kid("elsewhere-1")
                .claims(with(partner_claims(), |c| c["iss"] = json!("https://login.elsewhere.example")))
                .header_field("typ", "at+jwt")
                .sign(&k.partner)
                .unwrap(),
            "unknown_issuer",
        ),
    ];
    // Forged claim headers never pass, whatever the issuer.
    for case in &mut cases {
        case.extra_headers.extend_from_slice(&forged);
    }
    cases
}

fn check(stack: &Stack, case: &Case) -> Result<(), String> {
    let path = format!("/api/profiles/{}", case.name);
    let authorization = format!("Bearer {}", case.token);
    let mut headers = case.extra_headers.clone();
    headers.push(("authorization", &authorization));
    let response = stack.get(&path, &headers).map_err(|e| format!("request failed: {e:#}"))?;
    let reached = stack.upstream.hits_for(&path);
    let mut problems = Vec::new();
    match &case.expect {
        Expect::Allowed { identity, issuer, headers } => {
            if response.status != 200 || reached != 1 {
                problems.push(format!(
                    "status {}, upstream reached {reached} times: {}",
                    response.status,
                    response.body_text()
                ));
            } else {
                let echo = response.body_json().map_err(|e| e.to_string())?;
                let values = |name: &str| upstream::echoed(&echo, name);
                let expected: Vec<(&str, Option<&str>)> =
                    [("x-nhi-identity", Some(identity.as_str())), ("x-nhi-issuer", Some(*issuer))]
                        .into_iter()
                        .chain(headers.iter().copied())
                        .collect();
                for (name, want) in expected {
                    let seen = values(name);
                    let want: Vec<String> = want.into_iter().map(str::to_owned).collect();
                    if seen != want {
                        problems.push(format!("upstream saw {name} {seen:?}, expected {want:?}"));
                    }
                }
            }
        }
        Expect::Rejected { reason } => {
            if response.status != 401 || reached != 0 {
                problems.push(format!("status {}, upstream reached {reached} times", response.status));
            }
            let got = response.body_json().ok().and_then(|b| b["reason"].as_str().map(str::to_owned));
            if got.as_deref() != Some(*reason) {
                problems.push(format!("reason {got:?}, expected {reason:?}"));
            }
            let challenge = response.header("www-authenticate").unwrap_or_default();
            if !challenge.starts_with(INVALID_TOKEN_PREFIX) {
                problems.push(format!("www-authenticate {challenge:?}"));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

#[test]
fn each_profile_accepts_its_tokens_and_refuses_each_rule_violation() {
    let k = IdpKeys::new();
    let idp = idp_server(&k);
    let mut config = EnvoyConfig::shipped().unwrap();
    config.add_cluster_like("idp", "jwks_demo").unwrap();
    let options =
        EnvoyOptions::new().config(config).plugin_configuration(plugin()).cluster("idp", idp.addr());
    let demo_jwks = keys::jwks(TestKeys::shared().unwrap().all());
    let mut stack = Stack::start_with(JwksBehaviour::serve(&demo_jwks), options).unwrap();

    let cases = cases(&k);
    for case in cases.iter().filter(|c| matches!(c.expect, Expect::Allowed { .. })) {
        stack.wait_for_keys(&case.token).unwrap();
    }
    let mut failures = Vec::new();
    for case in &cases {
        match check(&stack, case) {
            Ok(()) => println!("ok    {}", case.name),
            Err(why) => {
                println!("FAIL  {}: {why}", case.name);
                failures.push(format!("{}: {why}", case.name));
            }
        }
    }
    // The GitHub keys were found through discovery: one document, one JWKS.
    println!(
        "GitHub discovery document fetched {} time(s), its JWKS {} time(s)",
        idp.hits("/.well-known/openid-configuration"),
        idp.hits("/.well-known/jwks")
    );
    assert_eq!(idp.hits("/.well-known/openid-configuration"), 1, "one discovery per Envoy");

    // Requests without a token to the human backend never carry claim headers either.
    let forged = [("x-nhi-k8s-pod", "forged-pod"), ("x-nhi-roles", "admin"), ("x-nhi-gh-run-id", "1")];
    let web = stack.get("/web/profiles", &forged).unwrap();
    assert_eq!(web.status, 200, "{}", web.body_text());
    let echo = web.body_json().unwrap();
    for (name, _) in forged {
        assert!(echo["headers"].get(name).is_none(), "the web backend saw a forged {name}: {echo}");
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
}
