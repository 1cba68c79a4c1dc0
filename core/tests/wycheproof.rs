//! Project Wycheproof vectors through nhi-guard's own verification path: each
//! group's public key is imported exactly as a JWKS key is (`jwks::parse`), and each
//! signature is checked exactly as a token's is (`Alg::verify`). Every `valid`
//! vector must verify, every `invalid` one must not; `acceptable` ones are counted
//! and printed (they are legacy encodings that implementations may accept).
//!
//! The JOSE files (compact JWS and JWK cases) run through the whole signature layer —
//! key import, JWS parse, algorithm and key fit, signature — and every vector is
//! accounted for: valid ones accepted, invalid ones refused, and each deliberate
//! difference (HMAC, JWE, empty payloads…) named in [`NAMED`] with its reason and the
//! stage that refuses it. A vector that changes category fails the test; each file
//! prints its tally.
//!
//! The vectors live in `../shared/testdata/wycheproof/` next to the repository (in
//! CI: a copy beside the clone). A missing file fails the test — it never skips.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::PathBuf;

use nhi_guard_core::crypto::alg::Alg;
use nhi_guard_core::keys::jwks;
use nhi_guard_core::token::jws as token;
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

// ---------------------------------------------------------------------------------
// The JOSE files: compact JWS and JWK vectors, run through the signature layer in the
// filter's order — key import (`jwks::parse`), compact JWS (`token::parse_jws`: their
// payloads are not claim sets), algorithm and key fit (`Alg`, `KeySet::select`,
// `Jwk::accepts`), signature (`Alg::verify`).

/// Where the signature layer refused a vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    KeyImport,
    Parse,
    AlgKeyFit,
    Signature,
}

#[derive(Debug)]
enum Outcome {
    Accepted,
    Refused(Stage, String),
}

/// Vectors whose refusal is named in advance: each must be refused at `stage` with a
/// message containing `because`. For a `valid` vector that is a deliberate difference
/// from Wycheproof; for an `invalid` one it pins the refusal to the reason given (a
/// refusal that happens before the property the vector tests is said so here).
struct Named {
    /// File and tcIds of the vectors covered.
    vectors: &'static [(&'static str, &'static [RangeInclusive<u64>])],
    stage: Stage,
    because: &'static str,
    why: &'static str,
}

const SIGNATURE: &str = "json_web_signature_test.json";
const CRYPTO: &str = "json_web_crypto_test.json";
const KEY: &str = "json_web_key_test.json";

const NAMED: &[Named] = &[
    Named {
        // The hs256 and base64 groups, RFC 7520 Figure 35; jws_aes and jws_keyset;
        // jws_keyset, jws_duplicate_kid and the short, long and empty HS* keys.
        vectors: &[
            (SIGNATURE, &[1..=17, 348..=348, 352..=352, 357..=377]),
            (CRYPTO, &[1..=17, 48..=49]),
            (KEY, &[2..=4, 10..=18]),
        ],
        stage: Stage::KeyImport,
        because: "unsupported algorithm \"HS",
        why: "HMAC keys (HS256/384/512) are refused by design: nhi-guard verifies asymmetric \
              signatures only, so no shared secret sits in a JWKS or a gateway config and no public \
              key can be used as an HMAC secret; these vectors never reach parsing or a MAC",
    },
    Named {
        vectors: &[(SIGNATURE, &[259..=259, 264..=264, 268..=268, 272..=272, 320..=320, 325..=325])],
        stage: Stage::Parse,
        because: "EmptySegment",
        why: "an empty payload is refused while parsing: nhi-guard verifies JWTs, whose payload \
              is a JSON object and never empty",
    },
    Named {
        vectors: &[(SIGNATURE, &[346..=346, 350..=350])],
        stage: Stage::AlgKeyFit,
        because: "PS384 does not fit the key",
        why: "a JWK that names an `alg` serves that algorithm only (RFC 7517 §4.4, RFC 8725 §3.1): \
              RFC 7520's Figure 20 is PS384 under a key whose JWK says PS256",
    },
    Named {
        vectors: &[(SIGNATURE, &[347..=347, 351..=351])],
        stage: Stage::KeyImport,
        because: "unsupported algorithm \"ES521\"",
        why: "P-521 (ES512) is not supported, and the JWK's `alg` ES521 is no JOSE algorithm name",
    },
    Named {
        vectors: &[(CRYPTO, &[50..=83])],
        stage: Stage::KeyImport,
        because: "use \"enc\" is not \"sig\"",
        why: "JWE is out of scope: nhi-guard verifies signatures and decrypts nothing; the groups' \
              keys are encryption keys (`use: enc`), refused at import",
    },
    Named {
        vectors: &[(CRYPTO, &[46..=46]), (KEY, &[7..=7])],
        stage: Stage::KeyImport,
        because: "ROCA-weak RSA modulus (CVE-2017-15361)",
        why: "ROCA-weak RSA key (CVE-2017-15361, `roca`): refused at import, whatever it signed",
    },
    Named {
        vectors: &[(CRYPTO, &[47..=47]), (KEY, &[1..=1])],
        stage: Stage::AlgKeyFit,
        because: "unsupported algorithm \"HS256\"",
        why: "a key set mixing an HMAC and an EC key is not refused whole: the HMAC key is skipped \
              and the EC key kept (one odd key never takes an issuer's keys down); the HS256 token \
              is refused for its algorithm",
    },
];

fn through_signature_layer(keys: &Result<jwks::ParsedJwks, jwks::JwksError>, jws: &Value) -> Outcome {
    use Outcome::Refused;
    let keys = match keys {
        Ok(parsed) => parsed,
        Err(err) => return Refused(Stage::KeyImport, err.to_string()),
    };
    // JSON serialization arrives as whatever text a client puts in the header.
    let compact = match jws {
        Value::String(compact) => compact.clone(),
        other => other.to_string(),
    };
    let token = match token::parse_jws(&compact, nhi_guard_core::config::DEFAULT_MAX_TOKEN_BYTES) {
        Ok(token) => token,
        Err(err) => return Refused(Stage::Parse, format!("{err:?}")),
    };
    let alg: Alg = match token.header.alg.parse() {
        Ok(alg) => alg,
        Err(err) => return Refused(Stage::AlgKeyFit, format!("{err}")),
    };
    let kid = token.header.kid.as_deref();
    let Some(jwk) = keys.keys.select(kid, alg) else {
        // The key the token names was in the document but not imported.
        if let Some(skipped) = keys.skipped.iter().find(|s| kid.is_some() && s.kid.as_deref() == kid) {
            return Refused(Stage::KeyImport, skipped.to_string());
        }
        return Refused(Stage::AlgKeyFit, format!("no key for kid {kid:?}"));
    };
    if !jwk.accepts(alg) {
        return Refused(Stage::AlgKeyFit, format!("{alg} does not fit the key (JWK alg {:?})", jwk.alg));
    }
    if !alg.verify(&jwk.key, token.signing_input.as_bytes(), &token.signature) {
        return Refused(Stage::Signature, format!("{alg} signature does not verify"));
    }
    Outcome::Accepted
}

/// The group's key as a key server would publish it: its public JWK (or JWK set), the
/// private one where Wycheproof gives no public one (HMAC keys, encryption keys).
fn group_jwks(group: &Value) -> Value {
    let key = group.get("public").or_else(|| group.get("private")).expect("a key");
    if key.get("keys").is_some() {
        key.clone()
    } else {
        json!({ "keys": [key] })
    }
}

#[derive(Debug, Default)]
struct JoseTally {
    valid_accepted: usize,
    invalid_refused: BTreeMap<Stage, usize>,
    /// Per entry of [`NAMED`]: (valid, invalid) vectors it covered.
    named: BTreeMap<usize, (usize, usize)>,
    failures: Vec<String>,
}

fn run_jose(file: &str, invalid_keys_refused_at_import: bool) -> JoseTally {
    let path = vectors_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc: Value = serde_json::from_str(&text).expect("vector file is JSON");
    let mut tally = JoseTally::default();
    let mut seen = 0;
    for group in doc["testGroups"].as_array().expect("testGroups") {
        let keys = jwks::parse(group_jwks(group).to_string().as_bytes());
        for test in group["tests"].as_array().expect("tests") {
            seen += 1;
            let id = test["tcId"].as_u64().expect("tcId");
            let jws = test.get("jws").or_else(|| test.get("jwe")).expect("jws or jwe");
            let outcome = through_signature_layer(&keys, jws);
            let result = test["result"].as_str().expect("result");
            let comment = test["comment"].as_str().unwrap_or_default();
            let named = NAMED.iter().position(|n| {
                n.vectors.iter().any(|(f, ids)| *f == file && ids.iter().any(|r| r.contains(&id)))
            });
            let fail =
                |why: String| format!("{file} tcId {id} ({}, {comment}, {result}): {why}", group["comment"]);
            match (named, &outcome) {
                (Some(i), Outcome::Refused(stage, message))
                    if *stage == NAMED[i].stage && message.contains(NAMED[i].because) =>
                {
                    let counts = tally.named.entry(i).or_default();
                    if result == "valid" {
                        counts.0 += 1
                    } else {
                        counts.1 += 1
                    }
                }
                (Some(i), _) => tally.failures.push(fail(format!(
                    "expected refusal at {:?} because {:?} ({}), got {outcome:?}",
                    NAMED[i].stage, NAMED[i].because, NAMED[i].why
                ))),
                (None, Outcome::Accepted) if result == "valid" => tally.valid_accepted += 1,
                (None, Outcome::Refused(stage, _))
                    if result == "invalid"
                        && (!invalid_keys_refused_at_import || *stage == Stage::KeyImport) =>
                {
                    *tally.invalid_refused.entry(*stage).or_default() += 1
                }
                (None, outcome) => tally.failures.push(fail(format!("got {outcome:?}"))),
            }
        }
    }
    let declared = doc["numberOfTests"].as_u64().expect("numberOfTests");
    assert_eq!(seen, declared as usize, "{file}: vectors read vs numberOfTests");
    let invalid_refused: usize = tally.invalid_refused.values().sum();
    let stages: Vec<String> =
        tally.invalid_refused.iter().map(|(stage, n)| format!("{stage:?} {n}")).collect();
    println!("{file}: {seen} vectors");
    println!("  {:>4}  valid, accepted", tally.valid_accepted);
    println!("  {invalid_refused:>4}  invalid, refused (at {})", stages.join(", "));
    for (i, (valid, invalid)) in &tally.named {
        let named = &NAMED[*i];
        println!(
            "  {:>4}  refused at {:?}, {valid} valid + {invalid} invalid: {}",
            valid + invalid,
            named.stage,
            named.why
        );
    }
    assert!(
        tally.failures.is_empty(),
        "{} of {seen} vectors unaccounted for:\n{}",
        tally.failures.len(),
        tally.failures.join("\n")
    );
    // The table is exact: every tcId it names for this file is a vector that was seen.
    for (i, named) in NAMED.iter().enumerate() {
        let listed: usize = named
            .vectors
            .iter()
            .filter(|(f, _)| *f == file)
            .flat_map(|(_, ids)| ids.iter().map(|r| r.clone().count()))
            .sum();
        let (valid, invalid) = tally.named.get(&i).copied().unwrap_or_default();
        assert_eq!(valid + invalid, listed, "{file}: NAMED entry {i:?} lists tcIds that are not in the file");
    }
    let named: usize = tally.named.values().map(|(v, i)| v + i).sum();
    assert_eq!(tally.valid_accepted + invalid_refused + named, seen, "{file}: every vector in one category");
    tally
}

#[test]
fn jose_json_web_signature() {
    run_jose(SIGNATURE, false);
}

#[test]
fn jose_json_web_crypto() {
    run_jose(CRYPTO, false);
}

/// Every invalid vector of the key file is about a key: refused at import, or named.
#[test]
fn jose_json_web_key() {
    run_jose(KEY, true);
}
