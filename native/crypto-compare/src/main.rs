//! µs per signature check, ring against aws-lc-rs, for the algorithms the native shell
//! verifies with a crate (RS256, PS256, ES256) and two it leaves to nhi-guard's own
//! verifiers (ES384, EdDSA): both parsing the key on every check (`UnparsedPublicKey`),
//! and aws-lc-rs with the key parsed once (`ParsedPublicKey`), as the shell keeps it.
//! Keys are made and signed by aws-lc-rs; every verifier must accept every signature and
//! refuse it with one bit flipped before anything is timed. Each case runs
//! `COMPARE_SECONDS` (1) per verifier, interleaved over three rounds; the median round
//! is printed.

use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self as awsig, KeyPair as _};

struct Case {
    name: &'static str,
    public_key: Vec<u8>,
    message: Vec<u8>,
    signature: Vec<u8>,
    ring: &'static dyn ring::signature::VerificationAlgorithm,
    aws: &'static dyn awsig::VerificationAlgorithm,
}

fn cases() -> Vec<Case> {
    let rng = SystemRandom::new();
    // A JWT's signing input is a few hundred bytes.
    let message = vec![b'x'; 400];
    let mut cases = Vec::new();

    let rsa = awsig::RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA key");
    for (name, padding, ring_alg, aws_alg) in [
        (
            "RS256",
            &awsig::RSA_PKCS1_SHA256 as &'static dyn awsig::RsaEncoding,
            &ring::signature::RSA_PKCS1_2048_8192_SHA256 as &'static dyn ring::signature::VerificationAlgorithm,
            &awsig::RSA_PKCS1_2048_8192_SHA256 as &'static dyn awsig::VerificationAlgorithm,
        ),
        (
            "PS256",
            &awsig::RSA_PSS_SHA256,
            &ring::signature::RSA_PSS_2048_8192_SHA256,
            &awsig::RSA_PSS_2048_8192_SHA256,
        ),
    ] {
        let mut signature = vec![0; rsa.public_modulus_len()];
        rsa.sign(padding, &rng, &message, &mut signature).expect("RSA signature");
        cases.push(Case {
            name,
            public_key: rsa.public_key().as_ref().to_vec(),
            message: message.clone(),
            signature,
            ring: ring_alg,
            aws: aws_alg,
        });
    }

    for (name, signing, ring_alg, aws_alg) in [
        (
            "ES256",
            &awsig::ECDSA_P256_SHA256_FIXED_SIGNING,
            &ring::signature::ECDSA_P256_SHA256_FIXED as &'static dyn ring::signature::VerificationAlgorithm,
            &awsig::ECDSA_P256_SHA256_FIXED as &'static dyn awsig::VerificationAlgorithm,
        ),
        (
            "ES384",
            &awsig::ECDSA_P384_SHA384_FIXED_SIGNING,
            &ring::signature::ECDSA_P384_SHA384_FIXED,
            &awsig::ECDSA_P384_SHA384_FIXED,
        ),
    ] {
        let key = awsig::EcdsaKeyPair::generate(signing).expect("EC key");
        let signature = key.sign(&rng, &message).expect("EC signature").as_ref().to_vec();
        cases.push(Case {
            name,
            public_key: key.public_key().as_ref().to_vec(),
            message: message.clone(),
            signature,
            ring: ring_alg,
            aws: aws_alg,
        });
    }

    let ed = awsig::Ed25519KeyPair::generate().expect("Ed25519 key");
    cases.push(Case {
        name: "EdDSA",
        public_key: ed.public_key().as_ref().to_vec(),
        message: message.clone(),
        signature: ed.sign(&message).as_ref().to_vec(),
        ring: &ring::signature::ED25519,
        aws: &awsig::ED25519,
    });
    cases
}

fn ring_verify(case: &Case, signature: &[u8]) -> bool {
    ring::signature::UnparsedPublicKey::new(case.ring, &case.public_key).verify(&case.message, signature).is_ok()
}

fn aws_verify(case: &Case, signature: &[u8]) -> bool {
    awsig::UnparsedPublicKey::new(case.aws, &case.public_key).verify(&case.message, signature).is_ok()
}

/// The key parsed once, as the native shell would keep it beside the JWKS key.
fn aws_parsed(case: &Case) -> awsig::ParsedPublicKey {
    awsig::ParsedPublicKey::new(case.aws, &case.public_key).expect("a key aws-lc-rs parses")
}

fn aws_parsed_verify(key: &awsig::ParsedPublicKey, case: &Case, signature: &[u8]) -> bool {
    key.verify_sig(&case.message, signature).is_ok()
}

/// µs per check over `budget`.
fn time(budget: Duration, mut check: impl FnMut() -> bool) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..16 {
            assert!(std::hint::black_box(check()), "a good signature was refused while timing");
        }
        n += 16;
    }
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let seconds: f64 = std::env::var("COMPARE_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let budget = Duration::from_secs_f64(seconds);
    println!(
        "| alg | ring µs | aws-lc-rs µs | aws-lc-rs, key parsed once µs | parsed once vs ring |\n|---|---:|---:|---:|---:|"
    );
    for case in cases() {
        let mut flipped = case.signature.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x01;
        let parsed = aws_parsed(&case);
        assert!(ring_verify(&case, &case.signature), "{}: ring refused a good signature", case.name);
        assert!(aws_verify(&case, &case.signature), "{}: aws-lc-rs refused a good signature", case.name);
        assert!(aws_parsed_verify(&parsed, &case, &case.signature), "{}: a parsed key refused", case.name);
        assert!(!ring_verify(&case, &flipped), "{}: ring accepted a flipped bit", case.name);
        assert!(!aws_verify(&case, &flipped), "{}: aws-lc-rs accepted a flipped bit", case.name);
        assert!(!aws_parsed_verify(&parsed, &case, &flipped), "{}: a parsed key accepted a flipped bit", case.name);
        let (mut ring_us, mut aws_us, mut parsed_us) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..3 {
            ring_us.push(time(budget, || ring_verify(&case, &case.signature)));
            aws_us.push(time(budget, || aws_verify(&case, &case.signature)));
            parsed_us.push(time(budget, || aws_parsed_verify(&parsed, &case, &case.signature)));
        }
        let (r, a, p) = (median(ring_us), median(aws_us), median(parsed_us));
        println!("| {} | {r:.1} | {a:.1} | {p:.1} | {:.2}× |", case.name, r / p);
    }
}
