//! Signatures checked by `aws-lc-rs` (AWS-LC's assembly and C, compiled for the host):
//! installed as the core's [`Backend`] when Envoy loads the module, for RSA (PKCS#1
//! v1.5 and PSS) and ECDSA P-256. Each key is parsed once, on its first check, into
//! aws-lc-rs's `ParsedPublicKey` kept with the key ([`Prepared`]): an RSA key parsed on
//! every check computes its Montgomery constants every time, a quarter of the check
//! (RS256 16 µs a check parsed once, 18–21 parsed each time, ring's 22–23 on 2026-12-07:
//! `make native-crypto-compare`). ES384 and EdDSA stay with the core's verifiers,
//! natively compiled, which are as fast or faster there (ES384 180 µs against 197,
//! EdDSA 37 against 39); both give exactly the Wycheproof verdicts the wasm gives.
//!
//! The tests hold aws-lc-rs to the Wycheproof vectors the core's verifiers pass, to the
//! core's own verdict on every one of them, and to refusing damaged copies; for P-384
//! the other way round: the core's verdicts, which decide, are held to aws-lc-rs's.

use std::sync::OnceLock;

use aws_lc_rs::signature::{self, ParsedPublicKey, RsaParameters, RsaPublicKeyComponents};
use nhi_guard_core::crypto::alg::{Alg, PublicKey};
use nhi_guard_core::crypto::backend::{Backend, Prepared};

/// aws-lc-rs's RSA parameters take moduli of 2048 to 8192 bits (a shorter key would be
/// refused at the check, not declined). The exponent needs no bound here: the key's
/// import already refused one above `rsa_verify::MAX_EXPONENT`.
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;

pub struct AwsLc;

/// Initialises AWS-LC (its CPU feature detection among the rest) when Envoy loads the
/// module, on the main thread, rather than inside the first request's check.
pub fn init() {
    aws_lc_rs::init();
}

/// An RSA key as aws-lc-rs parsed it, once for each algorithm it is used with (a parsed
/// key belongs to one): RS256, RS384, RS512, PS256, PS384, PS512. `None` where aws-lc-rs
/// refused the key, which the core's verifier then decides.
#[derive(Default)]
struct RsaParsed([OnceLock<Option<ParsedPublicKey>>; 6]);

/// A P-256 key as aws-lc-rs parsed it (`None`: refused, left to the core).
struct P256Parsed(Option<ParsedPublicKey>);

fn rsa_parameters(alg: Alg) -> Option<(usize, &'static RsaParameters)> {
    Some(match alg {
        Alg::Rs256 => (0, &signature::RSA_PKCS1_2048_8192_SHA256),
        Alg::Rs384 => (1, &signature::RSA_PKCS1_2048_8192_SHA384),
        Alg::Rs512 => (2, &signature::RSA_PKCS1_2048_8192_SHA512),
        // JWS's PSS: MGF1 with the same hash, salt as long as the hash (RFC 7518 §3.5),
        // which is aws-lc-rs's.
        Alg::Ps256 => (3, &signature::RSA_PSS_2048_8192_SHA256),
        Alg::Ps384 => (4, &signature::RSA_PSS_2048_8192_SHA384),
        Alg::Ps512 => (5, &signature::RSA_PSS_2048_8192_SHA512),
        Alg::Es256 | Alg::Es384 | Alg::EdDsa => return None,
    })
}

/// `key`'s parsed form, made on its first check and kept in its [`Prepared`] slot.
fn prepared<T: Send + Sync + 'static>(slot: Option<&Prepared>, make: impl FnOnce() -> T) -> Option<&T> {
    slot?.get_or_make(make)
}

impl Backend for AwsLc {
    fn verify(&self, alg: Alg, key: &PublicKey, signing_input: &[u8], signature: &[u8]) -> Option<bool> {
        match key {
            PublicKey::Rsa(rsa) => {
                let (index, params) = rsa_parameters(alg)?;
                if !RSA_BITS.contains(&rsa.bits()) {
                    return None;
                }
                let parsed = prepared(key.prepared(), RsaParsed::default)?.0.get(index)?.get_or_init(|| {
                    let e = rsa.exponent().to_be_bytes();
                    let e = e.get(e.iter().position(|&b| b != 0).unwrap_or(e.len())..).unwrap_or_default();
                    RsaPublicKeyComponents { n: rsa.modulus_be(), e }.to_parsed_public_key(params).ok()
                });
                Some(parsed.as_ref()?.verify_sig(signing_input, signature).is_ok())
            }
            PublicKey::P256(_) => {
                if alg != Alg::Es256 {
                    return None;
                }
                let parsed = prepared(key.prepared(), || {
                    let point = key.sec1_uncompressed().unwrap_or_default();
                    P256Parsed(ParsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point).ok())
                })?;
                Some(parsed.0.as_ref()?.verify_sig(signing_input, signature).is_ok())
            }
            PublicKey::P384(_) | PublicKey::Ed25519(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use nhi_guard_core::keys::jwks;
    use serde_json::{json, Value};

    use super::*;

    fn vectors(file: &str) -> Value {
        let dir = std::env::var_os("WYCHEPROOF_DIR").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/wycheproof")
        });
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{}: {e} (the vectors are required; set WYCHEPROOF_DIR)", path.display())
        });
        serde_json::from_str(&text).unwrap()
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn b64(bytes: &[u8]) -> String {
        base64::Engine::encode(&nhi_guard_core::b64::URL_SAFE_STRICT, bytes)
    }

    /// The group's key imported as a JWKS key is (`None`: refused at import).
    fn import(group: &Value) -> Option<PublicKey> {
        let mut jwk = match group.get("publicKeyJwk").or_else(|| group.get("keyJwk")) {
            Some(jwk) => jwk.clone(),
            None => {
                let point = hex(group["publicKey"]["uncompressed"].as_str()?);
                let (crv, len) = match group["publicKey"]["curve"].as_str()? {
                    "secp256r1" => ("P-256", 32),
                    "secp384r1" => ("P-384", 48),
                    _ => return None,
                };
                json!({ "kty": "EC", "crv": crv, "x": b64(&point[1..=len]), "y": b64(&point[1 + len..]) })
            }
        };
        jwk["kid"] = json!("w");
        let parsed = jwks::parse(json!({ "keys": [jwk] }).to_string().as_bytes()).ok()?;
        parsed.keys.by_kid("w").map(|k| k.key.clone())
    }

    /// Calls `check(key, tcId, msg, sig, verdict)` for every vector of `file` whose key imports,
    /// after asserting that `verdict` (the one that decides) is Wycheproof's for `valid`
    /// and `invalid` vectors; fails unless more than 100 vectors ran.
    fn each_vector(
        file: &str,
        mut verdict: impl FnMut(&PublicKey, &[u8], &[u8]) -> bool,
        mut check: impl FnMut(&PublicKey, usize, &[u8], &[u8], bool),
    ) -> usize {
        let doc = vectors(file);
        let mut checked = 0;
        for group in doc["testGroups"].as_array().unwrap() {
            let Some(key) = import(group) else { continue };
            for test in group["tests"].as_array().unwrap() {
                let id = test["tcId"].as_u64().unwrap() as usize;
                let msg = hex(test["msg"].as_str().unwrap());
                let sig = hex(test["sig"].as_str().unwrap());
                let accepted = verdict(&key, &msg, &sig);
                match test["result"].as_str().unwrap() {
                    "valid" => assert!(accepted, "{file} tcId {id}: a valid vector refused"),
                    "invalid" => assert!(!accepted, "{file} tcId {id}: an invalid vector accepted"),
                    _ => {}
                }
                check(&key, id, &msg, &sig, accepted);
                checked += 1;
            }
        }
        assert!(checked > 100, "{file}: only {checked} vectors");
        checked
    }

    /// Every vector of `file`: aws-lc-rs answers (the backend declines nothing here), its
    /// verdict is Wycheproof's for `valid` and `invalid` vectors and the core's own on
    /// every vector; and every signature it accepts is refused once one bit of it, or of
    /// the message, is flipped.
    fn agree(file: &str, alg: Alg) {
        let mut damaged = 0;
        let aws = |key: &PublicKey, msg: &[u8], sig: &[u8]| {
            AwsLc.verify(alg, key, msg, sig).unwrap_or_else(|| panic!("{file}: declined"))
        };
        let checked = each_vector(file, aws, |key, id, msg, sig, aws| {
            let own = alg.verify_builtin(key, msg, sig);
            assert_eq!(aws, own, "{file} tcId {id}: aws-lc-rs {aws}, nhi-guard {own}");
            // A copy with one flipped bit (at a position that depends on the vector) in
            // the signature, then in the message: a signature that verified no longer
            // does. (aws-lc-rs alone: the core's verifiers are unoptimised in test builds.)
            for (which, mut bytes) in [(0, sig.to_vec()), (1, msg.to_vec())] {
                if bytes.is_empty() || !aws {
                    continue;
                }
                let at = (id * 7919 + which * 104_729) % (bytes.len() * 8);
                bytes[at / 8] ^= 1 << (at % 8);
                let (m, s) = if which == 0 { (msg, bytes.as_slice()) } else { (bytes.as_slice(), sig) };
                assert_eq!(
                    AwsLc.verify(alg, key, m, s),
                    Some(false),
                    "{file} tcId {id}: damaged copy {which}"
                );
                damaged += 1;
            }
        });
        println!("{file} as {alg}: {checked} vectors agree, {damaged} damaged copies refused");
    }

    #[test]
    fn rsa_pkcs1_as_rs256() {
        agree("rsa_signature_2048_sha256_test.json", Alg::Rs256);
    }

    #[test]
    fn rsa_pss_as_ps256() {
        agree("rsa_pss_2048_sha256_mgf1_32_test.json", Alg::Ps256);
    }

    #[test]
    fn ecdsa_p256_as_es256() {
        agree("ecdsa_secp256r1_sha256_p1363_test.json", Alg::Es256);
    }

    /// ES384 is left to the core (see the module's comment), whose verdict on every
    /// Wycheproof vector is held to aws-lc-rs's own P-384, an independent implementation.
    #[test]
    fn ecdsa_p384_is_left_to_the_core_which_agrees_with_aws_lc() {
        let file = "ecdsa_secp384r1_sha384_p1363_test.json";
        let own = |key: &PublicKey, msg: &[u8], sig: &[u8]| Alg::Es384.verify_builtin(key, msg, sig);
        let checked = each_vector(file, own, |key, id, msg, sig, own| {
            assert_eq!(AwsLc.verify(Alg::Es384, key, msg, sig), None, "{file} {id}: not declined");
            let point = key.sec1_uncompressed().unwrap();
            let aws = signature::UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                .verify(msg, sig)
                .is_ok();
            assert_eq!(own, aws, "{file} tcId {id}: nhi-guard {own}, aws-lc-rs {aws}");
        });
        println!("{file} as ES384: {checked} vectors, the core's verdicts are aws-lc-rs's");
    }

    /// A key is parsed on its first check and kept with it: its clones (the key set's
    /// copies) share the parsed form, and each RSA algorithm gets its own.
    #[test]
    fn a_key_is_parsed_once_and_kept_with_it() {
        let doc = vectors("rsa_signature_2048_sha256_test.json");
        let group = &doc["testGroups"][0];
        let test = group["tests"].as_array().unwrap().iter().find(|t| t["result"] == "valid").unwrap();
        let (msg, sig) = (hex(test["msg"].as_str().unwrap()), hex(test["sig"].as_str().unwrap()));
        let key = import(group).unwrap();
        let copy = key.clone();
        assert_eq!(format!("{:?}", key.prepared()), "Some(Prepared(empty))");
        assert_eq!(AwsLc.verify(Alg::Rs256, &key, &msg, &sig), Some(true));
        assert_eq!(format!("{:?}", copy.prepared()), "Some(Prepared(made))", "shared with the clone");
        assert_eq!(AwsLc.verify(Alg::Rs256, &copy, &msg, &sig), Some(true));
        // The same key under PSS: parsed again for that algorithm, and this PKCS#1 v1.5
        // signature is not a PSS one.
        assert_eq!(AwsLc.verify(Alg::Ps256, &copy, &msg, &sig), Some(false));
        assert_eq!(AwsLc.verify(Alg::Rs256, &key, &msg, &sig), Some(true));
    }

    #[test]
    fn eddsa_is_left_to_the_core() {
        let key = import(&json!({ "publicKeyJwk": {
            "kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" } }))
        .unwrap();
        assert_eq!(AwsLc.verify(Alg::EdDsa, &key, b"m", &[0; 64]), None);
    }
}
