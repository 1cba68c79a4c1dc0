//! RSA signature verification (RS256/384/512, PS256/384/512) with the modulus'
//! Montgomery constants computed once, when the JWKS key is imported.
//!
//! A check is RSAVP1 (`s^e mod n`: 16 squarings and a product for e = 65537, see
//! [`montgomery`]), then an exact comparison with the one encoding the signer must
//! have produced: for PKCS#1 v1.5 the whole expected `EM` (RFC 8017 §8.2.2, DigestInfo
//! with its NULL parameters, never parsed), for PSS every step of EMSA-PSS-VERIFY
//! (RFC 8017 §9.1.2) with MGF1 over the same hash and a salt as long as the hash
//! (RFC 7518 §3.5). The PKCS#1 v1.5 comparison is made on both sides times the same
//! per-key constant (`Modulus::power_matches`), which spares the power its conversion
//! out of Montgomery form; it is still one whole, exact comparison of `EM`.
//!
//! Verification handles only public values (key, message, signature), so the
//! variable-time arithmetic is sound here; this module must never sign.

mod montgomery;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use jwt_compact::{Algorithm, AlgorithmSignature};
use sha2::{Digest, Sha256, Sha384, Sha512};

pub use self::montgomery::bit_length;
use self::montgomery::{Modulus, PaddedTarget, PowerOfR};
use crate::backend::Prepared;

/// Largest modulus accepted at import, in bits (as `rsa` 0.9 enforced before).
pub const MAX_BITS: usize = montgomery::MAX_BITS;
/// Largest public exponent accepted at import: 2^33 − 1, as `rsa` 0.9 enforced before.
pub const MAX_EXPONENT: u64 = (1 << 33) - 1;

/// An RSA public key ready to verify: modulus with its Montgomery constants, and the
/// public exponent. Cheap to clone.
#[derive(Clone)]
pub struct RsaPublicKey {
    modulus: Arc<Modulus>,
    e: u64,
    /// R^e mod n for the Montgomery R of `modulus`: what lets a check skip both
    /// conversions ([`Modulus::power`]).
    power_of_r: Arc<PowerOfR>,
    /// What an RS256, RS384 and RS512 check compares with (in [`Hash`] order), `None`
    /// where the key is too short for the encoding ([`Modulus::power_matches`]).
    pkcs1: Arc<[Option<PaddedTarget>; 3]>,
    /// `n`, big-endian without leading zeros: what another verifier imports
    /// ([`crate::backend`]).
    n: Arc<[u8]>,
    /// What that verifier made of the key ([`Prepared`]).
    prepared: Prepared,
}

/// Why an RSA public key was refused at import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RsaKeyError {
    /// Even, zero or one: not an RSA modulus.
    InvalidModulus,
    ModulusTooLarge {
        bits: usize,
    },
    /// Even, below 3 or above [`MAX_EXPONENT`].
    InvalidExponent,
}

impl fmt::Display for RsaKeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RsaKeyError::InvalidModulus => f.write_str("modulus is not an odd number above 1"),
            RsaKeyError::ModulusTooLarge { bits } => {
                write!(f, "modulus of {bits} bits is over {MAX_BITS}")
            }
            RsaKeyError::InvalidExponent => {
                write!(f, "public exponent is not odd and between 3 and {MAX_EXPONENT}")
            }
        }
    }
}

impl RsaPublicKey {
    /// Imports `n` and `e` (big-endian, leading zeros allowed).
    pub fn new(n: &[u8], e: &[u8]) -> Result<RsaPublicKey, RsaKeyError> {
        let bits = montgomery::bit_length(n);
        if bits > MAX_BITS {
            return Err(RsaKeyError::ModulusTooLarge { bits });
        }
        let e = match montgomery::bit_length(e) {
            0..=64 => e.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)),
            _ => return Err(RsaKeyError::InvalidExponent),
        };
        if !(3..=MAX_EXPONENT).contains(&e) || e % 2 == 0 {
            return Err(RsaKeyError::InvalidExponent);
        }
        let modulus = Modulus::new(n).ok_or(RsaKeyError::InvalidModulus)?;
        let start = n.iter().position(|&b| b != 0).unwrap_or(n.len());
        let n = n.get(start..).unwrap_or_default().into();
        let power_of_r = Arc::new(modulus.power_of_r(e));
        let inverse = modulus.inverse_power_of_r(e).ok_or(RsaKeyError::InvalidExponent)?;
        let pkcs1 = Arc::new(Hash::ALL.map(|hash| {
            let padded = pkcs1v15_padding(hash, modulus.byte_len())?;
            modulus.padded_target(&inverse, &padded, hash.len())
        }));
        Ok(RsaPublicKey {
            modulus: Arc::new(modulus),
            e,
            power_of_r,
            pkcs1,
            n,
            prepared: Prepared::default(),
        })
    }

    /// The modulus, big-endian, without leading zeros.
    pub fn modulus_be(&self) -> &[u8] {
        &self.n
    }

    /// What an installed backend made of the key ([`crate::backend`]).
    pub fn prepared(&self) -> &Prepared {
        &self.prepared
    }

    /// The public exponent.
    pub fn exponent(&self) -> u64 {
        self.e
    }

    /// Size of the modulus in bits.
    pub fn bits(&self) -> usize {
        self.modulus.bits()
    }

    /// RSAVP1 (RFC 8017 §5.2.2) on a signature of exactly `k` bytes: `s^e mod n` as `k`
    /// bytes, or `None` for a signature of another length or not below the modulus.
    fn public_op(&self, signature: &[u8]) -> Option<Vec<u8>> {
        if signature.len() != self.modulus.byte_len() {
            return None;
        }
        self.modulus.power(signature, &self.power_of_r)
    }

    /// RSASSA-PKCS1-V1_5-VERIFY (RFC 8017 §8.2.2) of `digest`: a signature of exactly
    /// `k` bytes, below the modulus, whose power is the one encoding of `digest`.
    fn pkcs1_matches(&self, hash: Hash, signature: &[u8], digest: &[u8]) -> bool {
        let target = self.pkcs1.get(hash as usize).and_then(Option::as_ref);
        signature.len() == self.modulus.byte_len()
            && target.is_some_and(|target| self.modulus.power_matches(signature, target, digest))
    }
}

/// Two keys are equal when their `n` and `e` are: everything else is computed from them.
impl PartialEq for RsaPublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.n == other.n && self.e == other.e
    }
}

impl Eq for RsaPublicKey {}

impl fmt::Debug for RsaPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RsaPublicKey").field("bits", &self.bits()).field("e", &self.e).finish()
    }
}

/// The hash of an RSA JWS algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    /// Every hash, in declaration order (what [`RsaPublicKey`]'s PKCS#1 constants are
    /// indexed by).
    const ALL: [Hash; 3] = [Hash::Sha256, Hash::Sha384, Hash::Sha512];

    fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut d = D::new();
            for part in parts {
                d.update(part);
            }
            d.finalize().to_vec()
        }
        match self {
            Hash::Sha256 => run::<Sha256>(parts),
            Hash::Sha384 => run::<Sha384>(parts),
            Hash::Sha512 => run::<Sha512>(parts),
        }
    }

    fn len(self) -> usize {
        match self {
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }

    /// DER of `DigestInfo` up to the digest (RFC 8017 §9.2, note 1): the one encoding
    /// with explicit NULL parameters.
    fn digest_info_prefix(self) -> &'static [u8] {
        match self {
            Hash::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
                0x05, 0x00, 0x04, 0x20,
            ],
            Hash::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02,
                0x05, 0x00, 0x04, 0x30,
            ],
            Hash::Sha512 => &[
                0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03,
                0x05, 0x00, 0x04, 0x40,
            ],
        }
    }
}

/// The RSA signature scheme of a JWS algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// RSASSA-PKCS1-v1_5 (RS*).
    Pkcs1v15,
    /// RSASSA-PSS with MGF1 of the same hash and a salt of the hash's length (PS*).
    Pss,
}

/// An RSA JWS algorithm, verification only, as a jwt-compact [`Algorithm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RsaVerify {
    pub hash: Hash,
    pub padding: Padding,
}

impl RsaVerify {
    pub const RS256: RsaVerify = RsaVerify { hash: Hash::Sha256, padding: Padding::Pkcs1v15 };
    pub const RS384: RsaVerify = RsaVerify { hash: Hash::Sha384, padding: Padding::Pkcs1v15 };
    pub const RS512: RsaVerify = RsaVerify { hash: Hash::Sha512, padding: Padding::Pkcs1v15 };
    pub const PS256: RsaVerify = RsaVerify { hash: Hash::Sha256, padding: Padding::Pss };
    pub const PS384: RsaVerify = RsaVerify { hash: Hash::Sha384, padding: Padding::Pss };
    pub const PS512: RsaVerify = RsaVerify { hash: Hash::Sha512, padding: Padding::Pss };

    /// Whether `signature` is valid for `message` under `key`.
    pub fn verify(&self, key: &RsaPublicKey, message: &[u8], signature: &[u8]) -> bool {
        match self.padding {
            Padding::Pkcs1v15 => key.pkcs1_matches(self.hash, signature, &self.hash.digest(&[message])),
            Padding::Pss => {
                key.public_op(signature).is_some_and(|em| pss_verify(self.hash, message, &em, key.bits() - 1))
            }
        }
    }
}

/// EMSA-PKCS1-v1_5-ENCODE (RFC 8017 §9.2) with zeros in place of the digest:
/// `00 01 FF…FF 00 DigestInfo-prefix 00…00`, `k` bytes, or `None` when `k` is too
/// short for it. The encoding of a digest is this plus the digest.
fn pkcs1v15_padding(hash: Hash, k: usize) -> Option<Vec<u8>> {
    let prefix = hash.digest_info_prefix();
    let t_len = prefix.len() + hash.len();
    let padding = k.checked_sub(t_len + 3).filter(|&ps| ps >= 8)?;
    let mut em = Vec::with_capacity(k);
    em.extend_from_slice(&[0x00, 0x01]);
    em.resize(2 + padding, 0xff);
    em.push(0x00);
    em.extend_from_slice(prefix);
    em.resize(k, 0);
    Some(em)
}

/// EMSA-PKCS1-v1_5-ENCODE (RFC 8017 §9.2) of `message`, `k` bytes.
#[cfg(test)]
fn pkcs1v15_encoding(hash: Hash, message: &[u8], k: usize) -> Option<Vec<u8>> {
    let mut em = pkcs1v15_padding(hash, k)?;
    let digest = hash.digest(&[message]);
    let tail = em.len().checked_sub(digest.len())?;
    em.get_mut(tail..)?.copy_from_slice(&digest);
    Some(em)
}

/// EMSA-PSS-VERIFY (RFC 8017 §9.1.2) with `sLen = hLen`, on the `k`-byte output of
/// RSAVP1. The step numbers are the RFC's.
fn pss_verify(hash: Hash, message: &[u8], em_k: &[u8], em_bits: usize) -> bool {
    let h_len = hash.len();
    let s_len = h_len;
    let em_len = em_bits.div_ceil(8);
    // RSAVP1 gives k bytes; EM is its last emLen (k − 1 when modBits − 1 is a
    // multiple of 8, and then the first byte must be zero: I2OSP(m, emLen) fails).
    let Some((head, em)) = em_k.split_at_checked(em_k.len().saturating_sub(em_len)) else {
        return false;
    };
    if head.iter().any(|&b| b != 0) || em.len() != em_len {
        return false;
    }
    // 2.
    let m_hash = hash.digest(&[message]);
    // 3.
    if em_len < h_len + s_len + 2 {
        return false;
    }
    // 4.
    let Some((&0xbc, rest)) = em.split_last() else {
        return false;
    };
    // 5.
    let Some((masked_db, h)) = rest.split_at_checked(em_len - h_len - 1) else {
        return false;
    };
    // 6. The leftmost 8·emLen − emBits bits must be zero.
    let unused_bits = 8 * em_len - em_bits;
    let top_mask = 0xffu8 >> unused_bits;
    if masked_db.first().is_none_or(|&b| b & !top_mask != 0) {
        return false;
    }
    // 7. and 8.
    let mut db = mgf1(hash, h, masked_db.len());
    for (d, m) in db.iter_mut().zip(masked_db) {
        *d ^= m;
    }
    // 9.
    if let Some(first) = db.first_mut() {
        *first &= top_mask;
    }
    // 10. emLen − hLen − sLen − 2 zero bytes, then 0x01.
    let Some((zeros, rest)) = db.split_at_checked(em_len - h_len - s_len - 2) else {
        return false;
    };
    let Some((&0x01, salt)) = rest.split_first() else {
        return false;
    };
    if zeros.iter().any(|&b| b != 0) || salt.len() != s_len {
        return false;
    }
    // 11.–14.
    hash.digest(&[&[0u8; 8], &m_hash, salt]) == h
}

/// MGF1 (RFC 8017 §B.2.1) with `hash`, `len` bytes.
fn mgf1(hash: Hash, seed: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + hash.len());
    let mut counter: u32 = 0;
    while out.len() < len {
        out.extend_from_slice(&hash.digest(&[seed, &counter.to_be_bytes()]));
        counter = counter.wrapping_add(1);
    }
    out.truncate(len);
    out
}

/// An RSA signature as bytes: its length is checked against the key's, at verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsaSignature(pub Vec<u8>);

impl AlgorithmSignature for RsaSignature {
    fn try_from_slice(slice: &[u8]) -> anyhow::Result<Self> {
        Ok(RsaSignature(slice.to_vec()))
    }

    fn as_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.0)
    }
}

impl Algorithm for RsaVerify {
    /// A gateway filter never signs; the type is uninhabited.
    type SigningKey = std::convert::Infallible;
    type VerifyingKey = RsaPublicKey;
    type Signature = RsaSignature;

    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed(match (self.padding, self.hash) {
            (Padding::Pkcs1v15, Hash::Sha256) => "RS256",
            (Padding::Pkcs1v15, Hash::Sha384) => "RS384",
            (Padding::Pkcs1v15, Hash::Sha512) => "RS512",
            (Padding::Pss, Hash::Sha256) => "PS256",
            (Padding::Pss, Hash::Sha384) => "PS384",
            (Padding::Pss, Hash::Sha512) => "PS512",
        })
    }

    fn sign(&self, signing_key: &Self::SigningKey, _message: &[u8]) -> Self::Signature {
        match *signing_key {}
    }

    fn verify_signature(&self, signature: &RsaSignature, key: &RsaPublicKey, message: &[u8]) -> bool {
        self.verify(key, message, &signature.0)
    }
}

#[cfg(any(test, feature = "test-keys"))]
pub(crate) mod test_primes;
#[cfg(test)]
mod tests;
