//! Signature algorithms the filter accepts, and the one place where a token's
//! `alg` meets a key.
//!
//! The verifier is always chosen from the issuer's allow-list *and* the key's
//! type, never from the token's `alg` alone: an `HS256` token "signed" with an
//! RSA public key, or an `ES256` token pointed at an RSA key, has no code path
//! that could accept it.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use jwt_compact::alg::Ed25519;
use jwt_compact::{Algorithm, AlgorithmSignature};

use crate::ecdsa::{P256Key, P384Key};
use crate::rsa_verify::{RsaPublicKey, RsaVerify};

/// A JWS algorithm nhi-guard can verify (RFC 7518 names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
}

impl Alg {
    pub const ALL: [Alg; 9] = [
        Alg::Rs256,
        Alg::Rs384,
        Alg::Rs512,
        Alg::Ps256,
        Alg::Ps384,
        Alg::Ps512,
        Alg::Es256,
        Alg::Es384,
        Alg::EdDsa,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::EdDsa => "EdDSA",
        }
    }

    /// Whether a key of this kind may verify signatures of this algorithm.
    pub fn fits(self, key: &PublicKey) -> bool {
        matches!(
            (self, key),
            (Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512, PublicKey::Rsa(_))
                | (Alg::Es256, PublicKey::P256(_))
                | (Alg::Es384, PublicKey::P384(_))
                | (Alg::EdDsa, PublicKey::Ed25519(_))
        )
    }

    /// Verifies `signature` over `signing_input` with `key`: with the process's
    /// installed [`backend`](crate::backend) if it answers, else with
    /// nhi-guard's own verifier ([`Alg::verify_builtin`]).
    ///
    /// Returns false for a key that does not fit the algorithm, a signature of
    /// the wrong encoding or length, and of course a signature that does not verify.
    pub fn verify(self, key: &PublicKey, signing_input: &[u8], signature: &[u8]) -> bool {
        if !self.fits(key) {
            return false;
        }
        if let Some(verdict) = crate::backend::installed()
            .and_then(|backend| backend.verify(self, key, signing_input, signature))
        {
            return verdict;
        }
        self.verify_builtin(key, signing_input, signature)
    }

    /// [`Alg::verify`] with nhi-guard's own verifiers, whatever is installed.
    pub fn verify_builtin(self, key: &PublicKey, signing_input: &[u8], signature: &[u8]) -> bool {
        match (self, key) {
            (Alg::Rs256, PublicKey::Rsa(k)) => verify_with(&RsaVerify::RS256, k, signing_input, signature),
            (Alg::Rs384, PublicKey::Rsa(k)) => verify_with(&RsaVerify::RS384, k, signing_input, signature),
            (Alg::Rs512, PublicKey::Rsa(k)) => verify_with(&RsaVerify::RS512, k, signing_input, signature),
            (Alg::Ps256, PublicKey::Rsa(k)) => verify_with(&RsaVerify::PS256, k, signing_input, signature),
            (Alg::Ps384, PublicKey::Rsa(k)) => verify_with(&RsaVerify::PS384, k, signing_input, signature),
            (Alg::Ps512, PublicKey::Rsa(k)) => verify_with(&RsaVerify::PS512, k, signing_input, signature),
            (Alg::Es256, PublicKey::P256(k)) => k.verify(signing_input, signature),
            (Alg::Es384, PublicKey::P384(k)) => k.verify(signing_input, signature),
            (Alg::EdDsa, PublicKey::Ed25519(k)) => verify_with(&Ed25519Strict, k, signing_input, signature),
            _ => false,
        }
    }
}

impl serde::Serialize for Alg {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Alg {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The token or config named an algorithm nhi-guard does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsupportedAlg(pub String);

impl fmt::Display for UnsupportedAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unsupported algorithm {:?}", self.0)
    }
}

impl FromStr for Alg {
    type Err = UnsupportedAlg;

    /// Exact, case-sensitive names only: `none`, `None` and `HS256` are refused here.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Alg::ALL.into_iter().find(|alg| alg.name() == s).ok_or_else(|| UnsupportedAlg(s.to_owned()))
    }
}

/// A verified-import public key, ready to check signatures. RSA and EC keys carry
/// what their verifiers precompute per key (see `rsa_verify`, `ecdsa`).
#[derive(Debug, Clone)]
pub enum PublicKey {
    Rsa(RsaPublicKey),
    P256(P256Key),
    P384(P384Key),
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl PublicKey {
    /// The SEC1 uncompressed point of an EC key (`04 || x || y`).
    pub fn sec1_uncompressed(&self) -> Option<Vec<u8>> {
        match self {
            PublicKey::P256(key) => Some(key.to_sec1_bytes()),
            PublicKey::P384(key) => Some(key.to_sec1_bytes()),
            PublicKey::Rsa(_) | PublicKey::Ed25519(_) => None,
        }
    }

    /// What an installed backend made of the key ([`crate::backend::Prepared`]); `None`
    /// for Ed25519, which no backend takes.
    pub fn prepared(&self) -> Option<&crate::backend::Prepared> {
        match self {
            PublicKey::Rsa(key) => Some(key.prepared()),
            PublicKey::P256(key) => Some(key.prepared()),
            PublicKey::P384(key) => Some(key.prepared()),
            PublicKey::Ed25519(_) => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            PublicKey::Rsa(_) => "RSA",
            PublicKey::P256(_) => "EC P-256",
            PublicKey::P384(_) => "EC P-384",
            PublicKey::Ed25519(_) => "OKP Ed25519",
        }
    }
}

fn verify_with<A: Algorithm>(alg: &A, key: &A::VerifyingKey, message: &[u8], signature: &[u8]) -> bool {
    if let Some(expected) = A::Signature::LENGTH {
        if signature.len() != expected.get() {
            return false;
        }
    }
    match A::Signature::try_from_slice(signature) {
        Ok(signature) => alg.verify_signature(&signature, key, message),
        Err(_) => false,
    }
}

/// EdDSA with `verify_strict`: rejects small-order keys and non-canonical `R`,
/// which the plain `verify` in jwt-compact's Ed25519 accepts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ed25519Strict;

impl Algorithm for Ed25519Strict {
    type SigningKey = std::convert::Infallible;
    type VerifyingKey = ed25519_dalek::VerifyingKey;
    type Signature = <Ed25519 as Algorithm>::Signature;

    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed("EdDSA")
    }

    fn sign(&self, signing_key: &Self::SigningKey, _message: &[u8]) -> Self::Signature {
        match *signing_key {}
    }

    fn verify_signature(
        &self,
        signature: &Self::Signature,
        key: &Self::VerifyingKey,
        message: &[u8],
    ) -> bool {
        key.verify_strict(message, signature).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use jwt_compact::alg::{Es256, Rsa};

    use super::*;
    use crate::test_keys::{keys, public_key};

    #[test]
    fn names_round_trip_and_are_case_sensitive() {
        for alg in Alg::ALL {
            assert_eq!(alg.name().parse::<Alg>().unwrap(), alg);
        }
        for bad in ["none", "rs256", "HS256", "ES512", "Ed25519", ""] {
            assert!(bad.parse::<Alg>().is_err(), "{bad}");
        }
    }

    #[test]
    fn each_algorithm_fits_only_its_key_type() {
        for alg in Alg::ALL {
            for other in Alg::ALL {
                let key = public_key(other);
                let same_family = key.kind() == public_key(alg).kind();
                assert_eq!(alg.fits(&key), same_family, "{alg} with {}", key.kind());
            }
        }
    }

    #[test]
    fn verify_refuses_a_key_of_another_type_even_with_a_valid_signature() {
        let sig = Es256.sign(&keys().p256, b"msg").as_bytes().to_vec();
        assert!(Alg::Es256.verify(&public_key(Alg::Es256), b"msg", &sig));
        assert!(!Alg::Es384.verify(&public_key(Alg::Es256), b"msg", &sig));
        assert!(!Alg::Rs256.verify(&public_key(Alg::Es256), b"msg", &sig));
    }

    #[test]
    fn rsa_padding_schemes_are_not_interchangeable() {
        let pkcs1 = Rsa::rs256().sign(&keys().rsa, b"msg").as_bytes().to_vec();
        let key = public_key(Alg::Rs256);
        assert!(Alg::Rs256.verify(&key, b"msg", &pkcs1));
        assert!(!Alg::Ps256.verify(&key, b"msg", &pkcs1));
        assert!(!Alg::Rs384.verify(&key, b"msg", &pkcs1));
    }
}
