//! Cross-checks against the `rsa` crate (a different implementation: it signs, we
//! verify) and hostile encodings built by hand with the private key.

use std::sync::OnceLock;

use jwt_compact::alg::Rsa;
use jwt_compact::{Algorithm as _, AlgorithmSignature as _};
use rand::{RngCore, SeedableRng};
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use rsa::{BigUint, RsaPrivateKey};

use super::*;

use super::test_primes;

/// Keys of awkward sizes too: 2049 bits (EM one byte shorter than the modulus for
/// PSS), 2056 (a whole byte), 2072 (exactly 74 limbs), 3072, 4096, and e = 3. Built
/// from fixed primes, those of the keys `StdRng::seed_from_u64(2048)` generates (see
/// `test_primes`): generating them took ~10 s a run.
fn keys() -> &'static [RsaPrivateKey] {
    static KEYS: OnceLock<Vec<RsaPrivateKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        // (bits, e) of each key, as `test_primes::PRIMES` lists them.
        let sizes: [(usize, u32); 7] = [
            (2048, 65_537),
            (2049, 65_537),
            (2056, 65_537),
            (2072, 65_537),
            (3072, 65_537),
            (4096, 65_537),
            (2048, 3),
        ];
        let prime = |hex: &str| BigUint::parse_bytes(hex.as_bytes(), 16).unwrap();
        test_primes::PRIMES
            .iter()
            .zip(sizes)
            .map(|(&(p, q), (bits, e))| {
                let key = RsaPrivateKey::from_primes(vec![prime(p), prime(q)], BigUint::from(e)).unwrap();
                assert_eq!((key.n().bits(), key.e()), (bits, &BigUint::from(e)), "the primes of {bits} bits");
                key
            })
            .collect()
    })
}

fn public(key: &RsaPrivateKey) -> RsaPublicKey {
    RsaPublicKey::new(&key.n().to_bytes_be(), &key.e().to_bytes_be()).unwrap()
}

/// The raw private operation on a `k`-byte encoded message.
fn raw_sign(key: &RsaPrivateKey, em: &[u8]) -> Vec<u8> {
    let s = BigUint::from_bytes_be(em).modpow(key.d(), key.n());
    left_pad(&s.to_bytes_be(), key.size())
}

fn left_pad(bytes: &[u8], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len - bytes.len()];
    out.extend_from_slice(bytes);
    out
}

fn reference(alg: RsaVerify) -> Rsa {
    match (alg.padding, alg.hash) {
        (Padding::Pkcs1v15, Hash::Sha256) => Rsa::rs256(),
        (Padding::Pkcs1v15, Hash::Sha384) => Rsa::rs384(),
        (Padding::Pkcs1v15, Hash::Sha512) => Rsa::rs512(),
        (Padding::Pss, Hash::Sha256) => Rsa::ps256(),
        (Padding::Pss, Hash::Sha384) => Rsa::ps384(),
        (Padding::Pss, Hash::Sha512) => Rsa::ps512(),
    }
}

const ALL: [RsaVerify; 6] = [
    RsaVerify::RS256,
    RsaVerify::RS384,
    RsaVerify::RS512,
    RsaVerify::PS256,
    RsaVerify::PS384,
    RsaVerify::PS512,
];

#[test]
fn agrees_with_the_rsa_crate_on_random_keys_and_messages() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for key in keys() {
        let ours = public(key);
        let theirs = jwt_compact::alg::RsaPublicKey::from(key);
        for alg in ALL {
            for len in [0, 1, 55, 56, 64, 1000] {
                let mut msg = vec![0u8; len];
                rng.fill_bytes(&mut msg);
                let sig = reference(alg).sign(key, &msg);
                assert!(alg.verify(&ours, &msg, sig.as_bytes().as_ref()), "{alg:?} {} bits", key.n().bits());
                assert!(reference(alg).verify_signature(&sig, &theirs, &msg));
                // Any flipped bit, in the message or the signature, breaks it for both.
                let mut bad_sig = sig.as_bytes().to_vec();
                let bit = (rng.next_u32() as usize) % (bad_sig.len() * 8);
                bad_sig[bit / 8] ^= 1 << (bit % 8);
                assert!(!alg.verify(&ours, &msg, &bad_sig));
                msg.push(0);
                assert!(!alg.verify(&ours, &msg, sig.as_bytes().as_ref()));
            }
        }
    }
}

#[test]
fn schemes_and_hashes_do_not_cross() {
    let key = &keys()[0];
    let ours = public(key);
    for signer in ALL {
        let sig = reference(signer).sign(key, b"msg");
        for verifier in ALL {
            assert_eq!(verifier.verify(&ours, b"msg", sig.as_bytes().as_ref()), signer == verifier);
        }
    }
}

#[test]
fn signature_length_and_range() {
    let key = &keys()[0];
    let ours = public(key);
    let sig = reference(RsaVerify::RS256).sign(key, b"msg").as_bytes().to_vec();
    assert!(RsaVerify::RS256.verify(&ours, b"msg", &sig));
    // A leading zero byte more or less is the same number, but not a k-byte signature.
    let mut longer = vec![0u8];
    longer.extend_from_slice(&sig);
    assert!(!RsaVerify::RS256.verify(&ours, b"msg", &longer));
    assert!(!RsaVerify::RS256.verify(&ours, b"msg", &sig[1..]));
    assert!(!RsaVerify::RS256.verify(&ours, b"msg", &[]));
    // s + n ≡ s (mod n) verifies mathematically; it must be refused as out of range.
    let n = key.n();
    let k = key.size();
    let s_plus_n = BigUint::from_bytes_be(&sig) + n;
    if s_plus_n.bits() <= k * 8 {
        assert!(!RsaVerify::RS256.verify(&ours, b"msg", &left_pad(&s_plus_n.to_bytes_be(), k)));
    }
    assert!(!RsaVerify::RS256.verify(&ours, b"msg", &left_pad(&n.to_bytes_be(), k)));
    assert!(!RsaVerify::RS256.verify(&ours, b"msg", &vec![0xff; k]));
    assert!(!RsaVerify::RS256.verify(&ours, b"msg", &vec![0; k]));
    let mut one = vec![0; k];
    one[k - 1] = 1;
    assert!(!RsaVerify::RS256.verify(&ours, b"msg", &one));
}

fn pkcs1(hash: Hash, msg: &[u8], k: usize) -> Vec<u8> {
    pkcs1v15_encoding(hash, msg, k).unwrap()
}

#[test]
fn pkcs1_encodings_are_compared_whole() {
    let key = &keys()[0];
    let ours = public(key);
    let k = key.size();
    let good = pkcs1(Hash::Sha256, b"msg", k);
    assert!(RsaVerify::RS256.verify(&ours, b"msg", &raw_sign(key, &good)));
    let h = Hash::Sha256.digest(&[b"msg"]);
    let prefix = Hash::Sha256.digest_info_prefix();

    // (name, T = DigestInfo as a lenient parser might accept it)
    let mut variants: Vec<(&str, Vec<u8>)> = Vec::new();
    // DigestInfo without the NULL parameters (a legacy form; RFC 8017 says to accept
    // only one encoding).
    let mut no_null = vec![
        0x30, 0x2f, 0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x04, 0x20,
    ];
    no_null.extend_from_slice(&h);
    variants.push(("no NULL parameters", no_null));
    // Garbage appended inside the outer SEQUENCE (BER-lenient parsers skip it).
    let mut garbage = vec![0x30, 0x35];
    garbage.extend_from_slice(&prefix[2..]);
    garbage.extend_from_slice(&h);
    garbage.extend_from_slice(&[0x04, 0x02, 0xde, 0xad]);
    variants.push(("garbage after the digest", garbage));
    // Long-form length where the short form fits.
    let mut long_len = vec![0x30, 0x81, 0x31];
    long_len.extend_from_slice(&prefix[2..]);
    long_len.extend_from_slice(&h);
    variants.push(("long-form length", long_len));
    // SHA-512's OID around a SHA-256 digest.
    let mut wrong_oid = prefix.to_vec();
    wrong_oid[14] = 0x03;
    wrong_oid.extend_from_slice(&h);
    variants.push(("wrong hash OID", wrong_oid));
    // Digest truncated by one byte.
    let mut short = prefix.to_vec();
    short[1] -= 1;
    short[18] -= 1;
    short.extend_from_slice(&h[..31]);
    variants.push(("short digest", short));

    for (name, t) in variants {
        let mut em = vec![0x00, 0x01];
        em.resize(k - t.len() - 1, 0xff);
        em.push(0x00);
        em.extend_from_slice(&t);
        assert_eq!(em.len(), k);
        assert!(!RsaVerify::RS256.verify(&ours, b"msg", &raw_sign(key, &em)), "{name}");
    }

    // Padding bytes: not all 0xff, block type 2, missing separator, junk after the hash
    // that shortens PS.
    let ps_end = k - prefix.len() - h.len() - 1;
    type Tamper = Box<dyn Fn(&mut Vec<u8>)>;
    let tamper: [(&str, Tamper); 5] = [
        ("PS byte not 0xff", Box::new(|em| em[5] = 0xfe)),
        ("block type 2", Box::new(|em| em[1] = 0x02)),
        ("leading byte not zero", Box::new(|em| em[0] = 0x01)),
        ("separator not zero", Box::new(move |em| em[ps_end] = 0xff)),
        (
            "PS ended early, garbage before DigestInfo",
            Box::new(move |em| {
                em[ps_end - 4] = 0x00;
                em[ps_end] = 0x42;
            }),
        ),
    ];
    for (name, f) in tamper {
        let mut em = good.clone();
        f(&mut em);
        assert!(!RsaVerify::RS256.verify(&ours, b"msg", &raw_sign(key, &em)), "{name}");
    }
}

/// EMSA-PSS-ENCODE (RFC 8017 §9.1.1) with any salt, for building hostile signatures.
fn pss_encode(hash: Hash, msg: &[u8], salt: &[u8], em_bits: usize) -> Vec<u8> {
    let h_len = hash.len();
    let em_len = em_bits.div_ceil(8);
    let m_hash = hash.digest(&[msg]);
    let h = hash.digest(&[&[0u8; 8], &m_hash, salt]);
    let mut db = vec![0u8; em_len - salt.len() - h_len - 2];
    db.push(0x01);
    db.extend_from_slice(salt);
    let mask = mgf1(hash, &h, db.len());
    for (d, m) in db.iter_mut().zip(mask) {
        *d ^= m;
    }
    db[0] &= 0xff >> (8 * em_len - em_bits);
    let mut em = db;
    em.extend_from_slice(&h);
    em.push(0xbc);
    em
}

#[test]
fn pss_every_check_of_emsa_pss_verify() {
    for key in &keys()[..2] {
        let ours = public(key);
        let k = key.size();
        let em_bits = key.n().bits() - 1;
        let sign = |em: &[u8]| raw_sign(key, &left_pad(em, k));
        let salt = [7u8; 32];
        let good = pss_encode(Hash::Sha256, b"msg", &salt, em_bits);
        assert!(RsaVerify::PS256.verify(&ours, b"msg", &sign(&good)), "{} bits", key.n().bits());

        // RFC 7518 §3.5: the salt is exactly as long as the hash.
        for salt_len in [0, 20, 31, 33, 64] {
            let em = pss_encode(Hash::Sha256, b"msg", &vec![9u8; salt_len], em_bits);
            assert!(!RsaVerify::PS256.verify(&ours, b"msg", &sign(&em)), "salt of {salt_len}");
        }
        // Step 4: trailer.
        let mut em = good.clone();
        *em.last_mut().unwrap() = 0xbd;
        assert!(!RsaVerify::PS256.verify(&ours, b"msg", &sign(&em)), "trailer");
        // Step 6: the bits above emBits set (unmasked: the DB would still decode).
        let unused = 8 * em.len() - em_bits;
        if unused > 0 {
            let mut em = good.clone();
            em[0] |= 0x80;
            assert!(!RsaVerify::PS256.verify(&ours, b"msg", &sign(&em)), "top bit");
        }
        // Step 10: a nonzero byte in the zero padding, a missing 0x01 separator.
        let h_len = 32;
        let db_len = good.len() - h_len - 1;
        let h = good[db_len..db_len + h_len].to_vec();
        let mask = mgf1(Hash::Sha256, &h, db_len);
        for (name, index, value) in [("padding byte", 3, 0x01), ("separator", db_len - 33, 0x02)] {
            let mut em = good.clone();
            em[index] = mask[index] ^ value;
            assert!(!RsaVerify::PS256.verify(&ours, b"msg", &sign(&em)), "{name}");
        }
        // Step 14: H over another message.
        assert!(!RsaVerify::PS256.verify(&ours, b"other", &sign(&good)));
        // MGF1 with another hash than the message hash.
        let sha384_mgf = {
            let mut em = good.clone();
            let m256 = mgf1(Hash::Sha256, &h, db_len);
            let m384 = mgf1(Hash::Sha384, &h, db_len);
            for i in 0..db_len {
                em[i] ^= m256[i] ^ m384[i];
            }
            em[0] &= 0xff >> unused;
            em
        };
        assert!(!RsaVerify::PS256.verify(&ours, b"msg", &sign(&sha384_mgf)));
    }
}

#[test]
fn import_rules() {
    let key = &keys()[0];
    let n = key.n().to_bytes_be();
    assert!(RsaPublicKey::new(&n, &[1, 0, 1]).is_ok());
    assert!(RsaPublicKey::new(&n, &[0, 0, 1, 0, 1]).is_ok(), "leading zeros");
    assert!(RsaPublicKey::new(&n, &[3]).is_ok());
    assert_eq!(RsaPublicKey::new(&n, &[1]).unwrap_err(), RsaKeyError::InvalidExponent);
    assert_eq!(RsaPublicKey::new(&n, &[]).unwrap_err(), RsaKeyError::InvalidExponent);
    assert_eq!(RsaPublicKey::new(&n, &[1, 0, 0]).unwrap_err(), RsaKeyError::InvalidExponent);
    let max = MAX_EXPONENT.to_be_bytes();
    assert!(RsaPublicKey::new(&n, &max).is_ok());
    assert_eq!(
        RsaPublicKey::new(&n, &(MAX_EXPONENT + 2).to_be_bytes()).unwrap_err(),
        RsaKeyError::InvalidExponent
    );
    assert_eq!(RsaPublicKey::new(&n, &[1; 9]).unwrap_err(), RsaKeyError::InvalidExponent);
    let mut even = n.clone();
    *even.last_mut().unwrap() &= 0xfe;
    assert_eq!(RsaPublicKey::new(&even, &[1, 0, 1]).unwrap_err(), RsaKeyError::InvalidModulus);
    assert_eq!(
        RsaPublicKey::new(&vec![0xff; 513], &[3]).unwrap_err(),
        RsaKeyError::ModulusTooLarge { bits: 4104 }
    );
    assert_eq!(public(key).bits(), 2048);
}

#[test]
fn named_like_jws() {
    let names: Vec<_> = ALL.iter().map(|a| a.name()).collect();
    assert_eq!(names, ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]);
}
