//! RSA keys built the way Infineon's RSALib built them (ROCA, CVE-2017-15361), for tests
//! that the filter refuses them: 1024-bit primes p = k·M + (65537^a mod M), M the
//! product of the first 126 primes (2 to 701) — RSALib's M for 2048-bit keys (Nemec et
//! al., "The Return of Coppersmith's Attack", CCS 2017) — with k and a random.
//!
//! Made from the structure, independently of the filter's detector (`nhi_guard_core::crypto::roca`);
//! tokens are signed with it by the harness's own minter, as with any other [`TestKey`].
//! Fast: every candidate is coprime to the primes up to 701 by construction, so about
//! one in 60 is prime, and num-bigint-dig is optimised in test builds (the workspace
//! Cargo.toml): a key takes 0.2–2 s.

use anyhow::{bail, Context, Result};
use num_bigint_dig::prime::probably_prime;
use num_bigint_dig::RandBigInt as _;
use rand::rngs::OsRng;
use rsa::{BigUint, RsaPrivateKey};

use crate::keys::{KeyMaterial, TestKey};

/// How many of the first primes RSALib's M multiplies for 2048-bit keys.
pub const RSALIB_2048_PRIMES: usize = 126;
/// RSALib's generator, and the public exponent.
const GENERATOR: u32 = 65537;
/// Candidates tried per prime before giving up (one in about 60 is prime).
const MAX_CANDIDATES: usize = 20_000;

/// A 2048-bit RSA key with ROCA-weak primes, published under `kid`.
pub fn weak_key(kid: impl Into<String>) -> Result<TestKey> {
    let m = primorial(RSALIB_2048_PRIMES);
    let e = BigUint::from(GENERATOR);
    for _ in 0..10 {
        let (p, q) = (rsalib_prime(&m)?, rsalib_prime(&m)?);
        // Fails only if p = q or 65537 divides p − 1 or q − 1: draw again.
        if let Ok(key) = RsaPrivateKey::from_p_q(p, q, e.clone()) {
            return Ok(TestKey::from_material(kid, KeyMaterial::Rsa(key)));
        }
    }
    bail!("no RSA key from ten pairs of RSALib-shaped primes")
}

/// The product of the first `count` primes.
pub fn primorial(count: usize) -> BigUint {
    let mut primes: Vec<u32> = Vec::with_capacity(count);
    let mut candidate = 2u32;
    while primes.len() < count {
        if primes.iter().take_while(|&&p| p * p <= candidate).all(|&p| !candidate.is_multiple_of(p)) {
            primes.push(candidate);
        }
        candidate += 1;
    }
    primes.into_iter().fold(BigUint::from(1u8), |m, p| m * p)
}

/// A prime k·M + (65537^a mod M) in [3·2^1022, 2^1024), so that the product of two
/// has exactly 2048 bits.
fn rsalib_prime(m: &BigUint) -> Result<BigUint> {
    let low = (BigUint::from(3u8) << 1022) / m + 1u8;
    let high = (BigUint::from(1u8) << 1024) / m - 1u8;
    for _ in 0..MAX_CANDIDATES {
        let k = OsRng.gen_biguint_range(&low, &high);
        let a = OsRng.gen_biguint(256);
        let p = k * m + BigUint::from(GENERATOR).modpow(&a, m);
        if probably_prime(&p, 20) {
            return Ok(p);
        }
    }
    None.context("no prime among the RSALib-shaped candidates")
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use rsa::traits::{PrivateKeyParts, PublicKeyParts};

    use super::*;
    use crate::keys::TestKeys;

    fn modulus(key: &TestKey) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(key.public_jwk()["n"].as_str().unwrap()).unwrap()
    }

    /// Whether `x` is a power of 65537 modulo the prime `r`.
    fn power_of_65537(x: u32, r: u32) -> bool {
        let mut power = 1;
        for _ in 0..r {
            if power == x {
                return true;
            }
            power = power * (GENERATOR % r) % r;
        }
        false
    }

    #[test]
    fn weak_keys_have_the_rsalib_structure_and_the_filter_flags_them() {
        let key = weak_key("roca").unwrap();
        let KeyMaterial::Rsa(rsa) = key.material() else { panic!("not RSA") };
        assert_eq!(rsa.n().bits(), 2048);
        assert_eq!(primorial(RSALIB_2048_PRIMES).bits(), 971, "RSALib's M for 2048-bit keys has 971 bits");
        // Both primes are powers of 65537 modulo each of the 126 primes of M.
        let small: Vec<u32> = (2..=701u32).filter(|&r| (2..r).all(|d| !r.is_multiple_of(d))).collect();
        assert_eq!(small.len(), RSALIB_2048_PRIMES);
        for p in rsa.primes() {
            assert_eq!(p.bits(), 1024);
            for &r in &small {
                let residue = (p % r).to_bytes_be().iter().fold(0, |acc, &b| acc * 256 + u32::from(b));
                assert!(power_of_65537(residue, r), "p mod {r} = {residue}");
            }
        }
        // The filter's detector, from the public modulus alone; an ordinary key is not flagged.
        assert!(nhi_guard_core::crypto::roca::is_roca_weak(&modulus(&key)));
        let ordinary = &TestKeys::shared().unwrap().rsa;
        assert!(!nhi_guard_core::crypto::roca::is_roca_weak(&modulus(ordinary)));
    }

    #[test]
    fn primorials() {
        assert_eq!(primorial(1), BigUint::from(2u8));
        assert_eq!(primorial(5), BigUint::from(2310u32));
    }
}
