//! Signing keys made at run time, and the JWKS documents that publish them.
//!
//! Public JWKs carry `kid` and `"use":"sig"` but deliberately no `alg`: one RSA key
//! then serves RS* and PS* alike, and the filter has to pick the verifier from its
//! own allow-list rather than from the key document.

use std::sync::OnceLock;

use anyhow::{anyhow, bail, ensure, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::rngs::OsRng;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use rsa::{BigUint, RsaPrivateKey};
use serde_json::{json, Map, Value};

/// Key ids of the shared [`TestKeys`]; the e2e JWKS publishes exactly these.
pub const KID_RSA: &str = "rsa-1";
pub const KID_P256: &str = "ec-1";
pub const KID_P384: &str = "ec384-1";
pub const KID_ED25519: &str = "ed-1";

const RSA_BITS: usize = 2048;

/// The kind of a key, which decides the algorithms that can sign with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    Rsa,
    P256,
    P384,
    Ed25519,
}

/// Private key material of one [`TestKey`].
#[derive(Clone, Debug)]
pub enum KeyMaterial {
    Rsa(RsaPrivateKey),
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
}

/// A private signing key with the `kid` it is published under.
#[derive(Clone, Debug)]
pub struct TestKey {
    kid: String,
    material: KeyMaterial,
}

impl TestKey {
    /// Generates a fresh key. RSA-2048 takes a noticeable fraction of a second:
    /// prefer [`TestKeys::shared`] where a particular key is not needed.
    pub fn generate(key_type: KeyType, kid: impl Into<String>) -> Result<Self> {
        let material = match key_type {
            KeyType::Rsa => KeyMaterial::Rsa(
                RsaPrivateKey::new(&mut OsRng, RSA_BITS).context("generating an RSA-2048 key")?,
            ),
            KeyType::P256 => KeyMaterial::P256(p256::ecdsa::SigningKey::random(&mut OsRng)),
            KeyType::P384 => KeyMaterial::P384(p384::ecdsa::SigningKey::random(&mut OsRng)),
            KeyType::Ed25519 => KeyMaterial::Ed25519(ed25519_dalek::SigningKey::generate(&mut OsRng)),
        };
        Ok(Self::from_material(kid, material))
    }

    pub fn from_material(kid: impl Into<String>, material: KeyMaterial) -> Self {
        Self { kid: kid.into(), material }
    }

    /// The same key material published under another `kid` (rotation and kid-mismatch tests).
    pub fn with_kid(&self, kid: impl Into<String>) -> Self {
        Self::from_material(kid, self.material.clone())
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn material(&self) -> &KeyMaterial {
        &self.material
    }

    pub fn key_type(&self) -> KeyType {
        match self.material {
            KeyMaterial::Rsa(_) => KeyType::Rsa,
            KeyMaterial::P256(_) => KeyType::P256,
            KeyMaterial::P384(_) => KeyType::P384,
            KeyMaterial::Ed25519(_) => KeyType::Ed25519,
        }
    }

    /// The public half as a JWK, with `kid` and `"use":"sig"` and no `alg`.
    pub fn public_jwk(&self) -> Value {
        let mut jwk = match &self.material {
            KeyMaterial::Rsa(key) => json!({
                "kty": "RSA",
                "n": b64(&key.n().to_bytes_be()),
                "e": b64(&key.e().to_bytes_be()),
            }),
            KeyMaterial::P256(key) => {
                let point = key.verifying_key().to_encoded_point(false);
                ec_jwk("P-256", point.x(), point.y())
            }
            KeyMaterial::P384(key) => {
                let point = key.verifying_key().to_encoded_point(false);
                ec_jwk("P-384", point.x(), point.y())
            }
            KeyMaterial::Ed25519(key) => json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": b64(key.verifying_key().as_bytes()),
            }),
        };
        if let Value::Object(members) = &mut jwk {
            members.insert("kid".into(), Value::String(self.kid.clone()));
            members.insert("use".into(), Value::String("sig".into()));
        }
        jwk
    }

    /// The full private JWK (public members plus `d`, and the CRT parameters for RSA).
    pub fn private_jwk(&self) -> Value {
        let mut jwk = self.public_jwk();
        let private: Vec<(&str, String)> = match &self.material {
            KeyMaterial::Rsa(key) => {
                let mut parts = vec![("d", b64(&key.d().to_bytes_be()))];
                if let [p, q] = key.primes() {
                    parts.push(("p", b64(&p.to_bytes_be())));
                    parts.push(("q", b64(&q.to_bytes_be())));
                    let one = BigUint::from(1_u8);
                    parts.push(("dp", b64(&(key.d() % (p - &one)).to_bytes_be())));
                    parts.push(("dq", b64(&(key.d() % (q - &one)).to_bytes_be())));
                    if let Some(qi) = key.crt_coefficient() {
                        parts.push(("qi", b64(&qi.to_bytes_be())));
                    }
                }
                parts
            }
            KeyMaterial::P256(key) => vec![("d", b64(&key.to_bytes()))],
            KeyMaterial::P384(key) => vec![("d", b64(&key.to_bytes()))],
            KeyMaterial::Ed25519(key) => vec![("d", b64(key.as_bytes()))],
        };
        if let Value::Object(members) = &mut jwk {
            for (name, value) in private {
                members.insert(name.into(), Value::String(value));
            }
        }
        jwk
    }

    /// Reads a private JWK as written by [`TestKey::private_jwk`] (`kid` is required).
    pub fn from_private_jwk(jwk: &Value) -> Result<Self> {
        let kid = member(jwk, "kid")?;
        let kty = member(jwk, "kty")?;
        let material = match (kty, jwk.get("crv").and_then(Value::as_str)) {
            ("RSA", _) => {
                let n = BigUint::from_bytes_be(&b64_member(jwk, "n")?);
                let e = BigUint::from_bytes_be(&b64_member(jwk, "e")?);
                let d = BigUint::from_bytes_be(&b64_member(jwk, "d")?);
                let primes = vec![
                    BigUint::from_bytes_be(&b64_member(jwk, "p")?),
                    BigUint::from_bytes_be(&b64_member(jwk, "q")?),
                ];
                let key = RsaPrivateKey::from_components(n, e, d, primes)
                    .context("RSA JWK components do not form a valid key")?;
                KeyMaterial::Rsa(key)
            }
            ("EC", Some("P-256")) => KeyMaterial::P256(
                p256::ecdsa::SigningKey::from_slice(&b64_member(jwk, "d")?)
                    .map_err(|err| anyhow!("P-256 JWK has an invalid `d`: {err}"))?,
            ),
            ("EC", Some("P-384")) => KeyMaterial::P384(
                p384::ecdsa::SigningKey::from_slice(&b64_member(jwk, "d")?)
                    .map_err(|err| anyhow!("P-384 JWK has an invalid `d`: {err}"))?,
            ),
            ("OKP", Some("Ed25519")) => {
                let seed: [u8; 32] = b64_member(jwk, "d")?
                    .try_into()
                    .map_err(|_| anyhow!("Ed25519 JWK `d` must be 32 bytes"))?;
                KeyMaterial::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed))
            }
            (kty, crv) => bail!("unsupported private JWK: kty {kty:?}, crv {crv:?}"),
        };
        let key = Self::from_material(kid, material);
        // A JWK whose public members disagree with `d` would sign tokens nobody can verify.
        for name in ["n", "e", "x", "y"] {
            if let Some(given) = jwk.get(name) {
                ensure!(
                    key.public_jwk().get(name) == Some(given),
                    "private JWK {kid:?}: member `{name}` does not match the private key"
                );
            }
        }
        Ok(key)
    }

    /// SubjectPublicKeyInfo PEM of an RSA key: the bytes an algorithm-confusion attacker
    /// feeds to HMAC. `None` for other key types.
    pub fn rsa_public_pem(&self) -> Result<Option<String>> {
        match &self.material {
            KeyMaterial::Rsa(key) => key
                .to_public_key()
                .to_public_key_pem(LineEnding::LF)
                .map(Some)
                .context("encoding the RSA public key as PEM"),
            _ => Ok(None),
        }
    }
}

/// One key of each supported type, under the fixed kids [`KID_RSA`], [`KID_P256`],
/// [`KID_P384`] and [`KID_ED25519`].
#[derive(Clone, Debug)]
pub struct TestKeys {
    pub rsa: TestKey,
    pub p256: TestKey,
    pub p384: TestKey,
    pub ed25519: TestKey,
}

impl TestKeys {
    pub fn generate() -> Result<Self> {
        Ok(Self {
            rsa: TestKey::generate(KeyType::Rsa, KID_RSA)?,
            p256: TestKey::generate(KeyType::P256, KID_P256)?,
            p384: TestKey::generate(KeyType::P384, KID_P384)?,
            ed25519: TestKey::generate(KeyType::Ed25519, KID_ED25519)?,
        })
    }

    /// One set per process: RSA generation is too slow to repeat in every test.
    pub fn shared() -> Result<&'static TestKeys> {
        static SHARED: OnceLock<Result<TestKeys, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| Self::generate().map_err(|err| format!("{err:#}")))
            .as_ref()
            .map_err(|err| anyhow!("generating the shared test keys: {err}"))
    }

    pub fn all(&self) -> [&TestKey; 4] {
        [&self.rsa, &self.p256, &self.p384, &self.ed25519]
    }

    /// The key of the type `key_type` in this set.
    pub fn by_type(&self, key_type: KeyType) -> &TestKey {
        match key_type {
            KeyType::Rsa => &self.rsa,
            KeyType::P256 => &self.p256,
            KeyType::P384 => &self.p384,
            KeyType::Ed25519 => &self.ed25519,
        }
    }

    /// The JWKS publishing all four keys.
    pub fn jwks(&self) -> Value {
        jwks(self.all())
    }
}

/// A JWKS document (`{"keys":[...]}`) publishing the public halves of `keys`.
pub fn jwks<'a>(keys: impl IntoIterator<Item = &'a TestKey>) -> Value {
    json!({ "keys": keys.into_iter().map(TestKey::public_jwk).collect::<Vec<_>>() })
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn ec_jwk<N>(crv: &str, x: Option<&N>, y: Option<&N>) -> Value
where
    N: AsRef<[u8]>,
{
    // An uncompressed point always has both coordinates; identity points cannot be keys.
    let mut jwk = Map::new();
    jwk.insert("kty".into(), "EC".into());
    jwk.insert("crv".into(), crv.into());
    jwk.insert("x".into(), x.map(|x| b64(x.as_ref())).unwrap_or_default().into());
    jwk.insert("y".into(), y.map(|y| b64(y.as_ref())).unwrap_or_default().into());
    Value::Object(jwk)
}

fn member<'a>(jwk: &'a Value, name: &str) -> Result<&'a str> {
    jwk.get(name).and_then(Value::as_str).with_context(|| format!("JWK has no string member `{name}`"))
}

fn b64_member(jwk: &Value, name: &str) -> Result<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(member(jwk, name)?)
        .with_context(|| format!("JWK member `{name}` is not base64url"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_jwks_have_kid_use_and_no_alg_or_private_parts() {
        let keys = TestKeys::shared().unwrap();
        let jwks = keys.jwks();
        let published = jwks["keys"].as_array().unwrap();
        assert_eq!(published.len(), 4);
        for jwk in published {
            assert_eq!(jwk["use"], "sig");
            assert!(jwk.get("alg").is_none(), "{jwk}");
            assert!(jwk.get("d").is_none(), "{jwk}");
        }
        let kids: Vec<_> = published.iter().map(|k| k["kid"].as_str().unwrap()).collect();
        assert_eq!(kids, [KID_RSA, KID_P256, KID_P384, KID_ED25519]);
        assert_eq!(published[0]["kty"], "RSA");
        assert_eq!(published[1]["crv"], "P-256");
        assert_eq!(published[2]["crv"], "P-384");
        assert_eq!(published[3]["crv"], "Ed25519");
        // P-384 coordinates are 48 bytes -> 64 base64url characters.
        assert_eq!(published[2]["x"].as_str().unwrap().len(), 64);
    }

    #[test]
    fn private_jwks_round_trip() {
        let keys = TestKeys::shared().unwrap();
        for key in keys.all() {
            let restored = TestKey::from_private_jwk(&key.private_jwk()).unwrap();
            assert_eq!(restored.kid(), key.kid());
            assert_eq!(restored.public_jwk(), key.public_jwk());
        }
    }

    #[test]
    fn private_jwk_with_mismatched_public_part_is_rejected() {
        let keys = TestKeys::shared().unwrap();
        let mut jwk = keys.p256.private_jwk();
        jwk["x"] = keys.p256.with_kid("x").public_jwk()["y"].clone();
        let err = TestKey::from_private_jwk(&jwk).unwrap_err();
        assert!(format!("{err}").contains("does not match"), "{err}");
    }

    #[test]
    fn subset_jwks_and_rsa_pem() {
        let keys = TestKeys::shared().unwrap();
        let jwks = jwks([&keys.p256]);
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
        let pem = keys.rsa.rsa_public_pem().unwrap().unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
        assert!(keys.p256.rsa_public_pem().unwrap().is_none());
    }
}
