//! Keys for tests: the 2048-bit RSA key of `rsa_verify`'s tests, and P-256, P-384 and
//! Ed25519 keys from fixed bytes (RustCrypto's signing keys, which the tests sign with).
//! This crate's tests of [`alg`](crate::alg) and [`roca`](crate::roca) use them, and so
//! does nhi-guard-core's testkit, through the `test-keys` feature (its dev-dependency):
//! test builds only, so the panics below stay out of the filter.
#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;

use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPrivateKey};

use crate::alg::{Alg, PublicKey};
use crate::ecdsa::{P256Key, P384Key};
use crate::rsa_verify::{self, test_primes};

pub struct Keys {
    pub rsa: RsaPrivateKey,
    pub p256: p256::ecdsa::SigningKey,
    pub p384: p384::ecdsa::SigningKey,
    pub ed25519: ed25519_dalek::SigningKey,
}

pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let prime = |hex: &str| BigUint::parse_bytes(hex.as_bytes(), 16).unwrap();
        let (p, q) = test_primes::PRIMES[0];
        Keys {
            rsa: RsaPrivateKey::from_primes(vec![prime(p), prime(q)], BigUint::from(65_537u32)).unwrap(),
            p256: p256::ecdsa::SigningKey::from_slice(&[0x25; 32]).unwrap(),
            p384: p384::ecdsa::SigningKey::from_slice(&[0x38; 48]).unwrap(),
            ed25519: ed25519_dalek::SigningKey::from_bytes(&[0xed; 32]),
        }
    })
}

/// The public key that fits `alg`, imported as a JWKS would be.
pub fn public_key(alg: Alg) -> PublicKey {
    let k = keys();
    match alg {
        Alg::Es256 => PublicKey::P256(
            P256Key::from_sec1_bytes(k.p256.verifying_key().to_encoded_point(false).as_bytes()).unwrap(),
        ),
        Alg::Es384 => PublicKey::P384(
            P384Key::from_sec1_bytes(k.p384.verifying_key().to_encoded_point(false).as_bytes()).unwrap(),
        ),
        Alg::EdDsa => PublicKey::Ed25519(k.ed25519.verifying_key()),
        _ => {
            let rsa = rsa::RsaPublicKey::from(&k.rsa);
            PublicKey::Rsa(
                rsa_verify::RsaPublicKey::new(&rsa.n().to_bytes_be(), &rsa.e().to_bytes_be()).unwrap(),
            )
        }
    }
}
