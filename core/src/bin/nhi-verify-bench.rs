//! `make bench-verify`: microseconds per signature check, for each algorithm, with
//! nhi-guard's verifiers (exactly the filter's path: `jwks::parse`, then `Alg::verify`)
//! and, for comparison, the RustCrypto backends it used before (jwt-compact 0.8 with
//! `rsa`/`p256`, p384, ed25519-dalek) and crypto-bigint 0.5's Montgomery form.
//!
//! Built natively and for wasm32-wasip1; `test-harness/bench/verify-bench.mjs` runs
//! both (the wasm under Node.js's `node:wasi`, i.e. V8, the engine Envoy embeds) and
//! prints them side by side. Prints `alg<TAB>backend<TAB>µs` lines. Keys are fixed, so
//! every run measures the same work.
//!
//! Usage: `nhi-verify-bench [SECONDS_PER_CASE]` (default 1).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use base64::Engine as _;
use jwt_compact::alg::{Ed25519, Es256 as RcEs256, Rsa, RsaPrivateKey, RsaPublicKey as RcRsaPublicKey};
use jwt_compact::{Algorithm, AlgorithmSignature};
use nhi_guard_core::crypto::alg::{Alg, PublicKey};
use nhi_guard_core::keys::jwks;
use p384::ecdsa::signature::{Signer as _, Verifier as _};
use rsa::traits::PublicKeyParts;
use rsa::BigUint;
use serde_json::json;
use sha2::Digest as _;

/// The two primes of a fixed RSA-2048 test key (`openssl genrsa 2048`, e = 65537).
const RSA_P: &str = "fe167a161c286ff58dc1da7cda001c99cea640f7d435ce6f44f16898fe856ee8ff9546b73a8e2d97792952fb2b82fd409f0a94f5ff6c3615465b335beb4bc9fb5efef6378a6852f89026ce577ff6685226269ae7ad3232980f9d9e2ad50243e6c4f5c0d00ae7655e8d2c31ad22df3541e160dea309235370c2c877c740010e1f";
const RSA_Q: &str = "d100a1784359286d3e6cf765570fc395face0819bc361442f281b26c71f5da973c1e63cab1b63585d6fda8ebf40995b2f93c672f6847652b6e437efc69e40cc6751d5635a91bb112dfb749d898b6d060f7b9212032fe0ef5b79476d1d6b228701e4ae759981958447e6e3a8f187f6b4d6c9058c8a8601080d4c37f03a557b9a5";

/// A realistic JWS signing input: header and claims of a Kubernetes service-account token.
const SIGNING_INPUT: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImJlbmNoLTEiLCJ0eXAiOiJKV1QifQ.eyJhdWQiOlsibmhpLWdhdGV3YXkiXSwiZXhwIjoxODAwMDAzNjAwLCJpYXQiOjE4MDAwMDAwMDAsImlzcyI6Imh0dHBzOi8va3ViZXJuZXRlcy5kZWZhdWx0LnN2YyIsImt1YmVybmV0ZXMuaW8iOnsibmFtZXNwYWNlIjoiYmVuY2giLCJzZXJ2aWNlYWNjb3VudCI6eyJuYW1lIjoiYm90IiwidWlkIjoiMDAwMCJ9fSwibmJmIjoxODAwMDAwMDAwLCJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6YmVuY2g6Ym90In0";

fn b64(bytes: impl AsRef<[u8]>) -> String {
    nhi_guard_core::b64::URL_SAFE_STRICT.encode(bytes)
}

/// Median µs per call of `f` over five rounds of `budget / 5`, after a warm-up long
/// enough for V8 to tier up to optimized code.
fn time(budget: Duration, mut f: impl FnMut() -> bool) -> f64 {
    let warm = Instant::now();
    let mut calls = 0u64;
    while warm.elapsed() < budget / 3 || calls < 3 {
        assert!(f(), "the benchmarked check failed");
        calls += 1;
    }
    let per_round = (calls * 2 / 5).max(1);
    let mut rounds: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..per_round {
                black_box(f());
            }
            start.elapsed().as_secs_f64() * 1e6 / per_round as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[2]
}

fn row(alg: &str, backend: &str, us: f64) {
    println!("{alg}\t{backend}\t{us:.1}");
}

fn import(jwk: serde_json::Value) -> PublicKey {
    let parsed = jwks::parse(json!({ "keys": [jwk] }).to_string().as_bytes()).unwrap();
    parsed.keys.keys()[0].key.clone()
}

fn main() {
    let seconds: f64 = std::env::args().nth(1).map_or(1.0, |s| s.parse().expect("seconds per case"));
    let budget = Duration::from_secs_f64(seconds);
    let msg = SIGNING_INPUT.as_bytes();

    // RSA-2048.
    let p = BigUint::parse_bytes(RSA_P.as_bytes(), 16).unwrap();
    let q = BigUint::parse_bytes(RSA_Q.as_bytes(), 16).unwrap();
    let rsa_key = RsaPrivateKey::from_p_q(p, q, BigUint::from(65537u32)).unwrap();
    let rc_rsa = RcRsaPublicKey::from(&rsa_key);
    let (n, e) = (rc_rsa.n().to_bytes_be(), rc_rsa.e().to_bytes_be());
    let rsa_jwk = json!({"kty": "RSA", "n": b64(&n), "e": b64(&e)});
    let ours_rsa = import(rsa_jwk.clone());
    for (alg, reference) in [(Alg::Rs256, Rsa::rs256()), (Alg::Ps256, Rsa::ps256())] {
        let sig = reference.sign(&rsa_key, msg);
        let bytes = sig.as_bytes().to_vec();
        row(
            alg.name(),
            "RustCrypto (rsa 0.9)",
            time(budget, || reference.verify_signature(&sig, &rc_rsa, msg)),
        );
        if alg == Alg::Rs256 {
            row(alg.name(), "crypto-bigint 0.5", time(budget, crypto_bigint_rs256(&n, &bytes, msg)));
        }
        row(alg.name(), "nhi-guard", time(budget, || alg.verify(&ours_rsa, msg, &bytes)));
    }

    // ES256.
    let p256_key = p256::ecdsa::SigningKey::from_slice(&[0x11; 32]).unwrap();
    let point = p256_key.verifying_key().to_encoded_point(false);
    let p256_jwk =
        json!({"kty": "EC", "crv": "P-256", "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())});
    let ours_p256 = import(p256_jwk.clone());
    let sig = RcEs256.sign(&p256_key, msg);
    let bytes = sig.as_bytes().to_vec();
    let rc_p256 = *p256_key.verifying_key();
    row("ES256", "RustCrypto (p256 0.13)", time(budget, || RcEs256.verify_signature(&sig, &rc_p256, msg)));
    row("ES256", "nhi-guard", time(budget, || Alg::Es256.verify(&ours_p256, msg, &bytes)));

    let p384_key = p384::ecdsa::SigningKey::from_slice(&[0x22; 48]).unwrap();
    let point = p384_key.verifying_key().to_encoded_point(false);
    let p384_jwk =
        json!({"kty": "EC", "crv": "P-384", "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())});
    let ours_p384 = import(p384_jwk.clone());
    let sig: p384::ecdsa::Signature = p384_key.sign(msg);
    let rc_p384 = *p384_key.verifying_key();
    row("ES384", "RustCrypto (p384 0.13)", time(budget, || rc_p384.verify(msg, &sig).is_ok()));
    let bytes = sig.to_bytes().to_vec();
    row("ES384", "nhi-guard", time(budget, || Alg::Es384.verify(&ours_p384, msg, &bytes)));

    // EdDSA: ed25519-dalek in both rows (nhi-guard calls it, with `verify_strict`).
    let ed_key = ed25519_dalek::SigningKey::from_bytes(&[0x33; 32]);
    let ours_ed =
        import(json!({"kty": "OKP", "crv": "Ed25519", "x": b64(ed_key.verifying_key().as_bytes())}));
    let sig = Ed25519.sign(&ed_key, msg);
    let rc_ed = ed_key.verifying_key();
    row(
        "EdDSA",
        "RustCrypto (ed25519-dalek 2)",
        time(budget, || Ed25519.verify_signature(&sig, &rc_ed, msg)),
    );
    let bytes = sig.as_bytes().to_vec();
    row("EdDSA", "nhi-guard", time(budget, || Alg::EdDsa.verify(&ours_ed, msg, &bytes)));

    // What the filter pays once per JWKS key for the precomputation.
    row(
        "RSA-2048 key import",
        "nhi-guard",
        time(budget, || matches!(import(rsa_jwk.clone()), PublicKey::Rsa(_))),
    );
    row(
        "P-256 key import",
        "nhi-guard",
        time(budget, || matches!(import(p256_jwk.clone()), PublicKey::P256(_))),
    );
    row(
        "P-384 key import",
        "nhi-guard",
        time(budget, || matches!(import(p384_jwk.clone()), PublicKey::P384(_))),
    );
}

/// RS256 with RSAVP1 in crypto-bigint 0.5's `DynResidue` (Montgomery form, constants
/// precomputed once as here), the EM compared whole as nhi-guard does: the crate
/// alternative to nhi-guard's own Montgomery kernel.
fn crypto_bigint_rs256<'a>(n: &[u8], sig: &'a [u8], msg: &'a [u8]) -> impl FnMut() -> bool + 'a {
    use crypto_bigint::modular::runtime_mod::{DynResidue, DynResidueParams};
    use crypto_bigint::{Encoding, U2048};

    let params = DynResidueParams::new(&U2048::from_be_slice(n));
    let public_op = move |sig: &[u8]| {
        let s = U2048::from_be_slice(sig);
        let x = DynResidue::new(&s, params);
        let mut y = x;
        for _ in 0..16 {
            y = y.square();
        }
        y.mul(&x).retrieve().to_be_bytes()
    };
    // EM of a valid signature: 00 01 FF.. 00 DigestInfo(SHA-256) H.
    let em = public_op(sig);
    let digest_info: [u8; 19] = [
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00,
        0x04, 0x20,
    ];
    assert_eq!(&em[256 - 51..256 - 32], digest_info);
    move || {
        let em_now = public_op(sig);
        let h = sha2::Sha256::digest(msg);
        em_now[..256 - 32] == em[..256 - 32] && em_now[256 - 32..] == h[..]
    }
}
