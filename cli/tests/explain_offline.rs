//! `nhi-guard explain` on main's partner stage, run as the binary: a partner's API
//! key is checked with the secrets in explain's own environment, and when they are
//! not there explain says the check was not made instead of reporting the
//! placeholder's refusal as the gateway's. Runs `envoy/envoy-partners.yaml`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::path::Path;
use std::process::Command;

/// The API key globex presents, and its SHA-256 (what the gateway's environment holds).
const API_KEY: &str = "globex-test-key-0123456789";
const API_KEY_SHA256: &str = "30326f26e7d65fbc09dea94ab6945aa35061731c2c5b646034a080faadedfb3f";
/// 32 bytes, base64: acme's HMAC secret.
const HMAC: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn explain(env: &[(&str, &str)]) -> (i32, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nhi-guard"));
    command
        .args(["explain", "envoy/envoy-partners.yaml", "--path", "/partner/orders", "--source", "10.0.0.9"])
        .args(["--header", &format!("x-api-key: {API_KEY}"), "--now", "1790000000"])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .env_remove("NHI_PARTNER_ACME_HMAC_2026_01")
        .env_remove("NHI_PARTNER_GLOBEX_API_KEY_SHA256");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().unwrap();
    (output.status.code().unwrap(), String::from_utf8(output.stdout).unwrap())
}

#[test]
fn an_api_key_is_checked_with_the_secret_in_explains_environment() {
    let (code, out) = explain(&[
        ("NHI_PARTNER_ACME_HMAC_2026_01", HMAC),
        ("NHI_PARTNER_GLOBEX_API_KEY_SHA256", API_KEY_SHA256),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("partner   partner API key\n"), "{out}");
    assert!(out.contains("API key     ok      key \"globex-2026\": identity partner:globex"), "{out}");
    assert!(!out.contains("NOT CHECKED"), "{out}");
    assert!(out.contains("x-nhi-identity: partner:globex"), "{out}");
}

#[test]
fn without_the_secret_the_api_key_is_reported_not_checked() {
    let (code, out) = explain(&[]);
    // The placeholder refuses the key; the refusal is shown, and said not to be the gateway's.
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("API key     FAILED  invalid_api_key"), "{out}");
    assert!(
        out.contains(
            "NOT CHECKED offline: NHI_PARTNER_ACME_HMAC_2026_01, NHI_PARTNER_GLOBEX_API_KEY_SHA256 not in \
             explain's environment"
        ),
        "{out}"
    );
}

/// A plugin configuration for docs/examples' Kubernetes tokens (keys fetched, given to
/// explain with `--jwks`), with `extra` merged into it; written to a file of its own.
fn kubernetes_plugin(name: &str, issuer_extra: &str, top_extra: &str) -> std::path::PathBuf {
    let plugin = format!(
        r#"{{"issuers": [{{"name": "kubernetes", "issuer": "https://kubernetes.default.svc.cluster.local",
            "audiences": ["nhi-gateway"], "algorithms": ["ES256"],
            "jwks": {{"cluster": "jwks_k8s", "authority": "kubernetes.default.svc.cluster.local",
                      "path": "/openid/v1/jwks"}},
            "profile": {{"type": "kubernetes", "namespaces": ["ci"]}}{issuer_extra}}}],
          "routes": [{{"name": "machine-api", "match": {{"prefix": "/api/"}}, "audience": "machine"}}]{top_extra}}}"#
    );
    let path = std::env::temp_dir().join(format!("nhi-explain-{name}-{}.json", std::process::id()));
    std::fs::write(&path, plugin).unwrap();
    path
}

fn explain_token(plugin: &Path, headers: &[String]) -> (i32, String) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut command = Command::new(env!("CARGO_BIN_EXE_nhi-guard"));
    command.arg("explain").arg(plugin).args(["--path", "/api/deploy", "--now", "1800000000"]);
    command.args(["--jwks", "kubernetes=docs/examples/kubernetes-jwks.json"]).current_dir(&repo);
    for header in headers {
        command.args(["--header", header]);
    }
    let output = command.output().unwrap();
    (output.status.code().unwrap(), String::from_utf8(output.stdout).unwrap())
}

fn allowed_token() -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(repo.join("docs/examples/allowed.jwt")).unwrap().trim().to_owned()
}

/// `dpop.mode: required`: a verified bearer token is refused by the DPoP stage, and
/// explain says so at that stage; a DPoP-scheme request's proof is judged, with the
/// caveat that replays and the gateway's nonces cannot be judged offline.
#[test]
fn the_dpop_stage_is_explained_with_what_it_cannot_know() {
    let plugin = kubernetes_plugin("dpop", r#", "dpop": {"mode": "required"}"#, "");
    let token = allowed_token();
    let (code, out) = explain_token(&plugin, &[format!("authorization: Bearer {token}")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("          signature   ok\n"), "{out}");
    assert!(out.contains("dpop      proof       FAILED  dpop_required: "), "{out}");
    assert!(out.contains("a token that fails its DPoP check is refused"), "{out}");
    assert!(out.contains("response  401 dpop_required\n"), "{out}");

    let (code, out) =
        explain_token(&plugin, &[format!("authorization: DPoP {token}"), "dpop: abc.def.ghi".to_owned()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("token     DPoP-scheme token in authorization\n"), "{out}");
    assert!(out.contains("dpop      proof       FAILED  invalid_dpop_proof: "), "{out}");
    assert!(out.contains("offline: the proof's iat is judged against explain's clock"), "{out}");
    assert!(out.contains("response  401 invalid_dpop_proof\n"), "{out}");
    std::fs::remove_file(plugin).unwrap();
}

/// With anomalies detected, the behaviour stage is shown for an allowed machine
/// request, saying that explain has no learned baseline.
#[test]
fn the_behaviour_stage_is_explained_without_a_learned_baseline() {
    let plugin = kubernetes_plugin("behaviour", "", r#", "behaviour": {"anomalies": {"new_route": {}}}"#);
    let (code, out) = explain_token(&plugin, &[format!("authorization: Bearer {}", allowed_token())]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("behaviour no anomaly: passes\n"), "{out}");
    assert!(out.contains("offline: explain has none of the gateway's learned baselines"), "{out}");
    std::fs::remove_file(plugin).unwrap();
}

/// A `kubernetes` issuer with `profile.liveness` (TokenReview) for docs/examples'
/// tokens, and a revocation feed when `on_stale` says how a stale one is handled.
fn lifecycle_plugin(name: &str, on_stale: Option<&str>) -> std::path::PathBuf {
    let mut plugin = serde_json::json!({
        "issuers": [{"name": "kubernetes", "issuer": "https://kubernetes.default.svc.cluster.local",
            "audiences": ["nhi-gateway"], "algorithms": ["ES256"],
            "jwks": {"cluster": "kube_api", "authority": "kubernetes.default.svc", "path": "/openid/v1/jwks"},
            "profile": {"type": "kubernetes", "namespaces": ["ci"], "liveness": {"cluster": "kube_api"}}}],
        "routes": [{"name": "machine-api", "match": {"prefix": "/api/"}, "audience": "machine"}]
    });
    if let Some(on_stale) = on_stale {
        plugin["revocation"] = serde_json::json!({"cluster": "revocations", "authority": "feed.internal",
                                                  "path": "/revocations.json", "on_stale": on_stale});
    }
    let path = std::env::temp_dir().join(format!("nhi-explain-{name}-{}.json", std::process::id()));
    std::fs::write(&path, plugin.to_string()).unwrap();
    path
}

fn explain_args(plugin: &Path, args: &[&str]) -> (i32, String, String) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new(env!("CARGO_BIN_EXE_nhi-guard"))
        .arg("explain")
        .arg(plugin)
        .args(["--path", "/api/deploy", "--now", "1800000000", "--token", "@docs/examples/allowed.jwt"])
        .args(["--jwks", "kubernetes=docs/examples/kubernetes-jwks.json"])
        .args(args)
        .current_dir(&repo)
        .output()
        .unwrap();
    (
        output.status.code().unwrap(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// `profile.liveness`: the TokenReview is the gateway's to make. Offline it is reported
/// not checked and the request explained as if the API server said alive (every later
/// stage runs); `--liveness gone` explains the other answer, through the filter's own
/// reading of a TokenReview.
#[test]
fn liveness_is_not_checked_offline_and_either_answer_can_be_explained() {
    let plugin = lifecycle_plugin("liveness", None);
    let (code, out, err) = explain_args(&plugin, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("route     machine-api (routes[0], match {\"prefix\":\"/api/\"}): audience machine\n"),
        "{out}"
    );
    assert!(out.contains("liveness  NOT CHECKED offline: the TokenReview happens in the gateway"), "{out}");
    assert!(out.contains("policy    allow: routes[0] has no allow list"), "{out}");
    assert!(out.contains("response  forwarded: the upstream answers\n"), "{out}");

    let (code, out, _) = explain_args(&plugin, &["--liveness", "alive"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("liveness  alive (--liveness alive)"), "{out}");
    assert!(!out.contains("NOT CHECKED"), "{out}");

    let (code, out, _) = explain_args(&plugin, &["--liveness", "gone"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("liveness  FAILED workload_gone: the API server no longer authenticates the token"),
        "{out}"
    );
    assert!(out.contains("response  401 workload_gone\n"), "{out}");

    let (code, _, err) = explain_args(&plugin, &["--liveness", "maybe"]);
    assert_eq!(code, 2, "{err}");
    std::fs::remove_file(plugin).unwrap();
}

/// A revocation feed: offline, without `--revocations`, it is reported not checked and
/// the request explained with an empty, fresh list — never `503
/// revocations_unavailable`, whatever `on_stale` says. With `--revocations FILE` (the
/// feed document, read by the filter's own parser) the list is applied.
#[test]
fn the_revocation_feed_is_applied_when_given_and_said_unchecked_otherwise() {
    let dir = std::env::temp_dir();
    let revoked = dir.join(format!("nhi-explain-feed-revoked-{}.json", std::process::id()));
    std::fs::write(&revoked, r#"{"subjects": ["system:serviceaccount:ci:deployer"]}"#).unwrap();
    let bad = dir.join(format!("nhi-explain-feed-bad-{}.json", std::process::id()));
    std::fs::write(&bad, r#"{"subjects": "system:serviceaccount:ci:deployer"}"#).unwrap();
    let (revoked_arg, bad_arg) = (revoked.display().to_string(), bad.display().to_string());

    for on_stale in ["deny", "keep"] {
        let plugin = lifecycle_plugin(&format!("feed-{on_stale}"), Some(on_stale));
        let (code, out, err) = explain_args(&plugin, &[]);
        assert_eq!(code, 0, "on_stale {on_stale}: {out}{err}");
        assert!(!out.contains("revocations_unavailable"), "{out}");
        assert!(out.contains("feed      NOT CHECKED offline: revocation feed not checked"), "{out}");
        assert!(out.contains("response  forwarded: the upstream answers\n"), "{out}");

        let (code, out, _) = explain_args(&plugin, &["--revocations", &revoked_arg]);
        assert_eq!(code, 1, "on_stale {on_stale}: {out}");
        assert!(out.contains(&format!("feed      {revoked_arg} applied: 1 entries (subjects 1)")), "{out}");
        assert!(out.contains("the revocation feed (revocation) names the token or its identity"), "{out}");
        assert!(out.contains("response  403 subject_denied\n"), "{out}");

        let (code, _, err) = explain_args(&plugin, &["--revocations", &bad_arg]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("--revocations: the feed is refused: not a revocation feed"), "{err}");
        std::fs::remove_file(plugin).unwrap();
    }
    // A configuration without a feed has nothing to apply it to.
    let plugin = lifecycle_plugin("no-feed", None);
    let (code, _, err) = explain_args(&plugin, &["--revocations", &revoked_arg]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("the configuration has no revocation feed"), "{err}");
    std::fs::remove_file(plugin).unwrap();
    std::fs::remove_file(revoked).unwrap();
    std::fs::remove_file(bad).unwrap();
}
