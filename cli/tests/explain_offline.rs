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
