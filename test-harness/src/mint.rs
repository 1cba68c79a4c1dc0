//! Token minting: well-formed JWS tokens for every algorithm the filter may accept, and
//! hostile ones (`alg: none`, HMAC keyed with an RSA public key, tampered signatures,
//! arbitrary raw segments) for everything it must refuse.
//!
//! Tokens are assembled by hand rather than through jwt-compact's `Header`/`Claims` so
//! that any header member or claim — including nonsense — can be set; the signatures
//! themselves come from jwt-compact's algorithms (and [`Es384`] for ES384).

use std::borrow::Cow;
use std::fmt;
use std::num::NonZeroUsize;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_compact::alg::{Ed25519, Es256, Hs256, Hs256Key, Rsa};
use jwt_compact::{Algorithm, AlgorithmSignature};
use p384::ecdsa::signature::{Signer as _, Verifier as _};
use serde_json::{json, Map, Value};

use crate::keys::{KeyMaterial, KeyType, TestKey};

/// Issuer, audience and subject of [`default_claims`]; they match the shipped envoy.yaml.
pub const DEFAULT_ISSUER: &str = "https://issuer.nhi-guard.demo";
pub const DEFAULT_AUDIENCE: &str = "nhi-gateway";
pub const DEFAULT_SUBJECT: &str = "system:serviceaccount:ci:deployer";
pub const DEFAULT_TTL_SECONDS: u64 = 300;

/// The asymmetric JWS algorithms the harness can sign with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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

    /// The `alg` header value.
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

    /// The usual algorithm for a key type (RSA → RS256).
    pub fn default_for(key_type: KeyType) -> Self {
        match key_type {
            KeyType::Rsa => Alg::Rs256,
            KeyType::P256 => Alg::Es256,
            KeyType::P384 => Alg::Es384,
            KeyType::Ed25519 => Alg::EdDsa,
        }
    }

    /// The key type this algorithm signs with.
    pub fn key_type(self) -> KeyType {
        match self {
            Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512 => KeyType::Rsa,
            Alg::Es256 => KeyType::P256,
            Alg::Es384 => KeyType::P384,
            Alg::EdDsa => KeyType::Ed25519,
        }
    }

    fn rsa(self) -> Option<Rsa> {
        match self {
            Alg::Rs256 => Some(Rsa::rs256()),
            Alg::Rs384 => Some(Rsa::rs384()),
            Alg::Rs512 => Some(Rsa::rs512()),
            Alg::Ps256 => Some(Rsa::ps256()),
            Alg::Ps384 => Some(Rsa::ps384()),
            Alg::Ps512 => Some(Rsa::ps512()),
            Alg::Es256 | Alg::Es384 | Alg::EdDsa => None,
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Alg {
    type Err = anyhow::Error;

    fn from_str(name: &str) -> Result<Self> {
        Alg::ALL
            .into_iter()
            .find(|alg| alg.name() == name)
            .ok_or_else(|| anyhow!("unsupported signing algorithm {name:?}"))
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_secs()).unwrap_or_default()
}

/// Claims the shipped configuration accepts: default issuer, audience and subject,
/// `iat` now and `exp` [`DEFAULT_TTL_SECONDS`] later.
pub fn default_claims() -> Value {
    let now = now();
    json!({
        "iss": DEFAULT_ISSUER,
        "aud": DEFAULT_AUDIENCE,
        "sub": DEFAULT_SUBJECT,
        "iat": now,
        "exp": now + DEFAULT_TTL_SECONDS,
    })
}

/// Which `kid` goes into the header.
#[derive(Clone, Debug)]
enum Kid {
    /// The signing key's own kid.
    FromKey,
    Explicit(String),
    Omitted,
}

/// A JWS under construction. Starts with header `{"alg":<alg>,"typ":"JWT"}` and
/// [`default_claims`]; `kid` defaults to the signing key's.
#[derive(Clone, Debug)]
pub struct Token {
    alg: Alg,
    kid: Kid,
    header: Map<String, Value>,
    claims: Value,
}

impl Token {
    pub fn new(alg: Alg) -> Self {
        let mut header = Map::new();
        header.insert("alg".into(), alg.name().into());
        header.insert("typ".into(), "JWT".into());
        Self { alg, kid: Kid::FromKey, header, claims: default_claims() }
    }

    /// Puts `kid` in the header instead of the signing key's own (unknown-kid tests).
    pub fn kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Kid::Explicit(kid.into());
        self
    }

    pub fn without_kid(mut self) -> Self {
        self.kid = Kid::Omitted;
        self
    }

    /// Replaces the whole claim set (any JSON, even a non-object).
    pub fn claims(mut self, claims: Value) -> Self {
        self.claims = claims;
        self
    }

    /// Sets one claim, keeping the others.
    pub fn claim(mut self, name: &str, value: impl Into<Value>) -> Self {
        if let Value::Object(claims) = &mut self.claims {
            claims.insert(name.into(), value.into());
        }
        self
    }

    pub fn remove_claim(mut self, name: &str) -> Self {
        if let Value::Object(claims) = &mut self.claims {
            claims.remove(name);
        }
        self
    }

    /// Sets a header member; this may override `alg` or `typ` (the signature is still
    /// made with the algorithm given to [`Token::new`]).
    pub fn header_field(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.header.insert(name.into(), value.into());
        self
    }

    /// Signs with `key`, whose type must suit the algorithm.
    pub fn sign(&self, key: &TestKey) -> Result<String> {
        let mut header = self.header.clone();
        match &self.kid {
            Kid::FromKey => {
                header.entry("kid").or_insert_with(|| key.kid().to_owned().into());
            }
            Kid::Explicit(kid) => {
                header.insert("kid".into(), kid.clone().into());
            }
            Kid::Omitted => {
                header.remove("kid");
            }
        }
        let signing_input = signing_input(
            &serde_json::to_string(&header).context("serialising the JWS header")?,
            &serde_json::to_string(&self.claims).context("serialising the claims")?,
        );
        let signature = sign_bytes(self.alg, key, signing_input.as_bytes())?;
        Ok(format!("{signing_input}.{}", b64(&signature)))
    }
}

/// The signature of `message` under `alg`, in JWS form (P1363 `r||s` for ECDSA).
pub fn sign_bytes(alg: Alg, key: &TestKey, message: &[u8]) -> Result<Vec<u8>> {
    let signature = match (alg, key.material()) {
        (_, KeyMaterial::Rsa(private)) if alg.key_type() == KeyType::Rsa => {
            let rsa = alg.rsa().with_context(|| format!("{alg} is not an RSA algorithm"))?;
            rsa.sign(private, message).as_bytes().into_owned()
        }
        (Alg::Es256, KeyMaterial::P256(private)) => Es256.sign(private, message).as_bytes().into_owned(),
        (Alg::Es384, KeyMaterial::P384(private)) => Es384.sign(private, message).as_bytes().into_owned(),
        (Alg::EdDsa, KeyMaterial::Ed25519(private)) => Ed25519.sign(private, message).as_bytes().into_owned(),
        (alg, _) => {
            bail!("{alg} needs a {:?} key, but key {:?} is {:?}", alg.key_type(), key.kid(), key.key_type())
        }
    };
    Ok(signature)
}

/// `alg: none` with an empty signature segment: `b64(header).b64(claims).`
pub fn alg_none(claims: &Value, kid: Option<&str>) -> Result<String> {
    let mut header = json!({ "alg": "none", "typ": "JWT" });
    if let (Some(kid), Value::Object(members)) = (kid, &mut header) {
        members.insert("kid".into(), kid.into());
    }
    Ok(format!("{}.", signing_input(&header.to_string(), &serde_json::to_string(claims)?)))
}

/// The public-key bytes an algorithm-confusion attacker uses as the HMAC secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfusionSecret {
    /// The SubjectPublicKeyInfo PEM text (the classic attack on PEM-configured verifiers).
    Pem,
    /// The published public JWK, serialised as JSON.
    Jwk,
}

/// HS256 keyed with the RSA key's *public* material, with the RSA key's kid: a verifier
/// that lets the token pick the algorithm would accept it.
pub fn hs256_with_public_key(rsa_key: &TestKey, claims: &Value, secret: ConfusionSecret) -> Result<String> {
    let secret = match secret {
        ConfusionSecret::Pem => {
            rsa_key.rsa_public_pem()?.with_context(|| format!("key {:?} is not an RSA key", rsa_key.kid()))?
        }
        ConfusionSecret::Jwk => rsa_key.public_jwk().to_string(),
    };
    let header = json!({ "alg": "HS256", "typ": "JWT", "kid": rsa_key.kid() });
    let signing_input = signing_input(&header.to_string(), &serde_json::to_string(claims)?);
    let signature = Hs256.sign(&Hs256Key::new(secret.as_bytes()), signing_input.as_bytes());
    Ok(format!("{signing_input}.{}", b64(&signature.as_bytes())))
}

/// The same token with one bit of its signature flipped (still valid base64url).
pub fn tamper_signature(token: &str) -> Result<String> {
    let (signing_input, signature) =
        token.rsplit_once('.').context("a JWS has three dot-separated segments")?;
    let mut signature =
        URL_SAFE_NO_PAD.decode(signature).context("the signature segment is not base64url")?;
    let middle = signature.len() / 2;
    let byte = signature.get_mut(middle).context("cannot tamper with an empty signature")?;
    *byte ^= 0x01;
    Ok(format!("{signing_input}.{}", b64(&signature)))
}

/// Any three segments: `header` and `payload` are taken verbatim (they need not be JSON).
pub fn raw(header: &str, payload: &str, signature: &[u8]) -> String {
    format!("{}.{}", signing_input(header, payload), b64(signature))
}

fn signing_input(header: &str, payload: &str) -> String {
    format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()))
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `ES384` (ECDSA on P-384 with SHA-384), missing from jwt-compact 0.8. Implements its
/// [`Algorithm`] trait so tokens can be checked with jwt-compact's validators too.
#[derive(Clone, Copy, Debug, Default)]
pub struct Es384;

/// An ES384 signature: 96 bytes, `r || s`.
#[derive(Clone, Debug)]
pub struct Es384Signature(p384::ecdsa::Signature);

impl AlgorithmSignature for Es384Signature {
    const LENGTH: Option<NonZeroUsize> = NonZeroUsize::new(96);

    fn try_from_slice(slice: &[u8]) -> anyhow::Result<Self> {
        p384::ecdsa::Signature::from_slice(slice)
            .map(Self)
            .map_err(|err| anyhow!("invalid ES384 signature: {err}"))
    }

    fn as_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.0.to_bytes().to_vec())
    }
}

impl Algorithm for Es384 {
    type SigningKey = p384::ecdsa::SigningKey;
    type VerifyingKey = p384::ecdsa::VerifyingKey;
    type Signature = Es384Signature;

    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed("ES384")
    }

    fn sign(&self, signing_key: &Self::SigningKey, message: &[u8]) -> Self::Signature {
        // p384's `sha384` feature makes SHA-384 the digest of `Signer::sign`.
        Es384Signature(signing_key.sign(message))
    }

    fn verify_signature(
        &self,
        signature: &Self::Signature,
        verifying_key: &Self::VerifyingKey,
        message: &[u8],
    ) -> bool {
        verifying_key.verify(message, &signature.0).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use jwt_compact::{AlgorithmExt as _, UntrustedToken};
    use serde_json::Value;

    use super::*;
    use crate::keys::TestKeys;

    type Claims = Value;

    fn verify_with<A: Algorithm>(alg: A, key: &A::VerifyingKey, token: &str) -> bool {
        let untrusted = UntrustedToken::new(token).unwrap();
        alg.validator::<Claims>(key).validate(&untrusted).is_ok()
    }

    /// Verifies `token` natively with jwt-compact, choosing the verifier from `alg`.
    fn verifies(alg: Alg, key: &TestKey, token: &str) -> bool {
        match key.material() {
            KeyMaterial::Rsa(k) => verify_with(alg.rsa().unwrap(), &k.to_public_key(), token),
            KeyMaterial::P256(k) => verify_with(Es256, k.verifying_key(), token),
            KeyMaterial::P384(k) => verify_with(Es384, k.verifying_key(), token),
            KeyMaterial::Ed25519(k) => verify_with(Ed25519, &k.verifying_key(), token),
        }
    }

    fn decode_segment(token: &str, index: usize) -> Value {
        let segment = token.split('.').nth(index).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment).unwrap()).unwrap()
    }

    #[test]
    fn every_algorithm_signs_verifiable_tokens() {
        let keys = TestKeys::shared().unwrap();
        for alg in Alg::ALL {
            let key = keys.by_type(alg.key_type());
            let token = Token::new(alg).sign(key).unwrap();
            assert!(verifies(alg, key, &token), "{alg} token does not verify");
            let header = decode_segment(&token, 0);
            assert_eq!(header["alg"], alg.name());
            assert_eq!(header["kid"], key.kid());

            let untrusted = UntrustedToken::new(&token).unwrap();
            let claims = untrusted.deserialize_claims_unchecked::<Claims>().unwrap();
            assert_eq!(claims.custom["sub"], DEFAULT_SUBJECT);

            let tampered = tamper_signature(&token).unwrap();
            assert_ne!(tampered, token);
            assert!(!verifies(alg, key, &tampered), "{alg} tampered token verifies");
        }
    }

    #[test]
    fn es384_signatures_are_96_bytes_and_carry_claims() {
        let keys = TestKeys::shared().unwrap();
        let token = Token::new(Alg::Es384).sign(&keys.p384).unwrap();
        let signature = token.rsplit('.').next().unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(signature).unwrap().len(), 96);

        let untrusted = UntrustedToken::new(&token).unwrap();
        let KeyMaterial::P384(private) = keys.p384.material() else { unreachable!() };
        let validated = Es384.validator::<Claims>(private.verifying_key()).validate(&untrusted).unwrap();
        let expiration = validated.claims().expiration.unwrap().timestamp();
        assert!(expiration > i64::try_from(now()).unwrap());
    }

    #[test]
    fn builder_controls_kid_header_and_claims() {
        let keys = TestKeys::shared().unwrap();
        let token = Token::new(Alg::Es256)
            .kid("nope")
            .header_field("x5u", "https://evil.example/keys")
            .claim("sub", "robot")
            .remove_claim("exp")
            .sign(&keys.p256)
            .unwrap();
        let header = decode_segment(&token, 0);
        assert_eq!(header["kid"], "nope");
        assert_eq!(header["x5u"], "https://evil.example/keys");
        let claims = decode_segment(&token, 1);
        assert_eq!(claims["sub"], "robot");
        assert!(claims.get("exp").is_none());
        assert!(verifies(Alg::Es256, &keys.p256, &token));

        let no_kid = Token::new(Alg::EdDsa).without_kid().sign(&keys.ed25519).unwrap();
        assert!(decode_segment(&no_kid, 0).get("kid").is_none());
    }

    #[test]
    fn wrong_key_type_is_an_error() {
        let keys = TestKeys::shared().unwrap();
        let err = Token::new(Alg::Rs256).sign(&keys.p256).unwrap_err();
        assert!(err.to_string().contains("needs a Rsa key"), "{err}");
    }

    #[test]
    fn hostile_tokens_have_the_expected_shape() {
        let keys = TestKeys::shared().unwrap();
        let none = alg_none(&default_claims(), Some("rsa-1")).unwrap();
        assert!(none.ends_with('.'));
        assert_eq!(decode_segment(&none, 0)["alg"], "none");

        for secret in [ConfusionSecret::Pem, ConfusionSecret::Jwk] {
            let hs = hs256_with_public_key(&keys.rsa, &default_claims(), secret).unwrap();
            let header = decode_segment(&hs, 0);
            assert_eq!(header["alg"], "HS256");
            assert_eq!(header["kid"], "rsa-1");
            // A naive verifier keyed with the public key text accepts it.
            let key_bytes = match secret {
                ConfusionSecret::Pem => keys.rsa.rsa_public_pem().unwrap().unwrap(),
                ConfusionSecret::Jwk => keys.rsa.public_jwk().to_string(),
            };
            let hmac_key = Hs256Key::new(key_bytes.as_bytes());
            assert!(verify_with(Hs256, &hmac_key, &hs));
        }

        let raw = raw("{not json", "[]", b"sig");
        assert_eq!(raw.split('.').count(), 3);
        assert!(tamper_signature("a.b.").is_err());
    }
}
