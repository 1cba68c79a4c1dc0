//! Project Wycheproof vectors through nhi-guard's own verification path: each
//! group's public key is imported exactly as a JWKS key is (`jwks::parse`), and each
//! signature is checked exactly as a token's is (`Alg::verify`). Every `valid`
//! vector must verify, every `invalid` one must not; `acceptable` ones are counted
//! and printed (they are legacy encodings that implementations may accept).
//!
//! The vectors live in `../shared/testdata/wycheproof/` next to the repository (in
//! CI: a copy beside the clone). A missing file fails the test — it never skips.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::path::PathBuf;

use nhi_guard_core::crypto::alg::Alg;
use nhi_guard_core::keys::jwks;
use serde_json::{json, Value};

fn vectors_dir() -> PathBuf {
    let dir = std::env::var_os("WYCHEPROOF_DIR").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/wycheproof")
    });
    assert!(
        dir.is_dir(),
        "Wycheproof vectors not found at {} (set WYCHEPROOF_DIR); they are required, not optional",
        dir.display()
    );
    dir
}

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

/// A few ECDSA groups give only the SEC1 uncompressed point; turn it into the JWK
/// a key server would publish.
fn ec_jwk_from_uncompressed(key: &Value) -> Value {
    let point = hex(key["uncompressed"].as_str().expect("an uncompressed point"));
    let (crv, len) = match key["curve"].as_str() {
        Some("secp256r1") => ("P-256", 32),
        Some("secp384r1") => ("P-384", 48),
        other => panic!("unexpected curve {other:?}"),
    };
    assert_eq!(point.len(), 1 + 2 * len);
    let b64 = |bytes: &[u8]| base64::Engine::encode(&nhi_guard_core::b64::URL_SAFE_STRICT, bytes);
    json!({ "kty": "EC", "crv": crv, "x": b64(&point[1..=len]), "y": b64(&point[1 + len..]) })
}

#[derive(Debug, Default)]
struct Tally {
    valid: usize,
    invalid: usize,
    acceptable_accepted: usize,
    acceptable_rejected: usize,
    keys_refused: usize,
    failures: Vec<String>,
}

fn run(file: &str, alg: Alg) -> Tally {
    let path = vectors_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc: Value = serde_json::from_str(&text).expect("vector file is JSON");
    let mut tally = Tally::default();
    for group in doc["testGroups"].as_array().expect("testGroups") {
        let mut jwk = group
            .get("publicKeyJwk")
            .or_else(|| group.get("keyJwk"))
            .cloned()
            .unwrap_or_else(|| ec_jwk_from_uncompressed(&group["publicKey"]));
        jwk["kid"] = json!("wycheproof");
        let imported = jwks::parse(json!({ "keys": [jwk] }).to_string().as_bytes());
        let key = match &imported {
            Ok(parsed) => parsed.keys.by_kid("wycheproof").map(|k| k.key.clone()),
            Err(_) => None,
        };
        if key.is_none() {
            tally.keys_refused += 1;
        }
        for test in group["tests"].as_array().expect("tests") {
            let id = test["tcId"].as_u64().unwrap_or_default();
            let msg = hex(test["msg"].as_str().expect("msg"));
            let sig = hex(test["sig"].as_str().expect("sig"));
            let accepted = key.as_ref().is_some_and(|k| alg.verify(k, &msg, &sig));
            match (test["result"].as_str().expect("result"), accepted) {
                ("valid", true) => tally.valid += 1,
                ("invalid", false) => tally.invalid += 1,
                ("acceptable", true) => tally.acceptable_accepted += 1,
                ("acceptable", false) => tally.acceptable_rejected += 1,
                (expected, got) => tally.failures.push(format!(
                    "{file} tcId {id} ({}): expected {expected}, verifier said {}",
                    test["comment"].as_str().unwrap_or_default(),
                    if got { "valid" } else { "invalid" }
                )),
            }
        }
    }
    println!("{file} as {alg}: {tally:?}");
    assert!(
        tally.failures.is_empty(),
        "{} vectors disagree:\n{}",
        tally.failures.len(),
        tally.failures.join("\n")
    );
    assert!(tally.valid > 0 && tally.invalid > 0, "{file}: the file exercised nothing");
    tally
}

#[test]
fn ecdsa_p256_sha256_p1363_as_es256() {
    run("ecdsa_secp256r1_sha256_p1363_test.json", Alg::Es256);
}

#[test]
fn ecdsa_p384_sha384_p1363_as_es384() {
    run("ecdsa_secp384r1_sha384_p1363_test.json", Alg::Es384);
}

#[test]
fn rsa_pkcs1_2048_sha256_as_rs256() {
    run("rsa_signature_2048_sha256_test.json", Alg::Rs256);
}

#[test]
fn rsa_pss_2048_sha256_as_ps256() {
    run("rsa_pss_2048_sha256_mgf1_32_test.json", Alg::Ps256);
}

#[test]
fn ed25519_as_eddsa() {
    run("ed25519_test.json", Alg::EdDsa);
}
