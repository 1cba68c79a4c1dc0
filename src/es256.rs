//! ES256: ECDSA over P-256 with SHA-256 (RFC 7518 §3.4), verification only.

use std::borrow::Cow;

use jwt_compact::{Algorithm, AlgorithmSignature};
use p256::ecdsa::signature::Verifier as _;

/// A P-256 public key, validated at import (on the curve, not the identity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Es256Key {
    key: p256::ecdsa::VerifyingKey,
}

impl Es256Key {
    /// Imports a SEC1 point; `None` if it is not a point of the curve or is the identity.
    pub fn from_sec1_bytes(point: &[u8]) -> Option<Es256Key> {
        let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(point).ok()?;
        Some(Es256Key { key })
    }

    pub fn from_affine(point: &p256::AffinePoint) -> Option<Es256Key> {
        let key = p256::ecdsa::VerifyingKey::from_affine(*point).ok()?;
        Some(Es256Key { key })
    }
}

/// A P1363 (`r || s`) signature, 64 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Es256Signature([u8; 64]);

impl AlgorithmSignature for Es256Signature {
    const LENGTH: Option<std::num::NonZeroUsize> = std::num::NonZeroUsize::new(64);

    fn try_from_slice(slice: &[u8]) -> anyhow::Result<Self> {
        let bytes: [u8; 64] =
            slice.try_into().map_err(|_| anyhow::anyhow!("ES256 signatures are 64 bytes"))?;
        Ok(Es256Signature(bytes))
    }

    fn as_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.0)
    }
}

/// ES256 as a jwt-compact [`Algorithm`], verification only.
#[derive(Debug, Clone, Copy, Default)]
pub struct Es256;

impl Es256 {
    pub fn verify(&self, key: &Es256Key, message: &[u8], signature: &[u8; 64]) -> bool {
        match p256::ecdsa::Signature::from_slice(signature) {
            Ok(sig) => key.key.verify(message, &sig).is_ok(),
            Err(_) => false,
        }
    }
}

impl Algorithm for Es256 {
    type SigningKey = std::convert::Infallible;
    type VerifyingKey = Es256Key;
    type Signature = Es256Signature;

    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed("ES256")
    }

    fn sign(&self, signing_key: &Self::SigningKey, _message: &[u8]) -> Self::Signature {
        match *signing_key {}
    }

    fn verify_signature(&self, signature: &Es256Signature, key: &Es256Key, message: &[u8]) -> bool {
        self.verify(key, message, &signature.0)
    }
}
