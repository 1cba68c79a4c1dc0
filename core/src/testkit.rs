//! Test keys and token signing for the native unit tests (test builds only).

use base64::Engine as _;
use jwt_compact::alg::{Ed25519, Es256, Rsa, RsaPublicKey};
use jwt_compact::{Algorithm, AlgorithmSignature};
use p384::ecdsa::signature::Signer as _;
use serde_json::{json, Value};

use crate::b64::URL_SAFE_STRICT;
use crate::crypto::alg::Alg;

/// The verifiers' fixed test keys (one RSA-2048, P-256, P-384 and Ed25519 key), shared
/// with nhi-guard-crypto's own tests rather than generated on every run.
pub use crate::crypto::test_keys::keys;

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_STRICT.encode(bytes)
}

/// The public JWKS of [`keys`]: kids `rsa-1`, `ec-1`, `ec384-1`, `ed-1`, no `alg` members.
pub fn jwks() -> Value {
    let k = keys();
    let rsa = RsaPublicKey::from(&k.rsa);
    let p256 = k.p256.verifying_key().to_encoded_point(false);
    let p384 = k.p384.verifying_key().to_encoded_point(false);
    json!({"keys": [
        {"kty": "RSA", "kid": "rsa-1", "use": "sig",
         "n": b64(rsa_parts(&rsa).0), "e": b64(rsa_parts(&rsa).1)},
        {"kty": "EC", "kid": "ec-1", "crv": "P-256", "x": b64(p256.x().unwrap()), "y": b64(p256.y().unwrap())},
        {"kty": "EC", "kid": "ec384-1", "crv": "P-384", "x": b64(p384.x().unwrap()), "y": b64(p384.y().unwrap())},
        {"kty": "OKP", "kid": "ed-1", "crv": "Ed25519", "x": b64(k.ed25519.verifying_key().as_bytes())},
    ]})
}

fn rsa_parts(key: &RsaPublicKey) -> (Vec<u8>, Vec<u8>) {
    use rsa::traits::PublicKeyParts;
    (key.n().to_bytes_be(), key.e().to_bytes_be())
}

pub use crate::crypto::roca::WYCHEPROOF_ROCA_N;

/// The kid of the test key that fits `alg`.
pub fn kid_for(alg: Alg) -> &'static str {
    match alg {
        Alg::Es256 => "ec-1",
        Alg::Es384 => "ec384-1",
        Alg::EdDsa => "ed-1",
        _ => "rsa-1",
    }
}

/// Signs `header.payload` with the test key that fits `alg`.
pub fn sign(alg: Alg, signing_input: &[u8]) -> Vec<u8> {
    let k = keys();
    match alg {
        Alg::Rs256 => Rsa::rs256().sign(&k.rsa, signing_input).as_bytes().to_vec(),
        Alg::Rs384 => Rsa::rs384().sign(&k.rsa, signing_input).as_bytes().to_vec(),
        Alg::Rs512 => Rsa::rs512().sign(&k.rsa, signing_input).as_bytes().to_vec(),
        Alg::Ps256 => Rsa::ps256().sign(&k.rsa, signing_input).as_bytes().to_vec(),
        Alg::Ps384 => Rsa::ps384().sign(&k.rsa, signing_input).as_bytes().to_vec(),
        Alg::Ps512 => Rsa::ps512().sign(&k.rsa, signing_input).as_bytes().to_vec(),
        Alg::Es256 => Es256.sign(&k.p256, signing_input).as_bytes().to_vec(),
        Alg::Es384 => {
            let sig: p384::ecdsa::Signature = k.p384.sign(signing_input);
            sig.to_bytes().to_vec()
        }
        Alg::EdDsa => Ed25519.sign(&k.ed25519, signing_input).as_bytes().to_vec(),
    }
}

/// A compact JWS over arbitrary header and claims JSON, signed as `alg`.
pub fn token(alg: Alg, header: &Value, claims: &Value) -> String {
    let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let sig = sign(alg, input.as_bytes());
    format!("{input}.{}", b64(sig))
}

/// A one-issuer configuration with `extra` top-level members: for tests of one block.
pub fn config_with(extra: Value) -> Result<crate::config::Config, crate::config::ConfigError> {
    let mut v = json!({"issuers": [{
        "name": "ci", "issuer": "https://issuer.example", "audiences": ["a"],
        "jwks": {"cluster": "c", "authority": "a", "path": "/jwks.json"}
    }]});
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    crate::config::Config::from_json(v.to_string().as_bytes())
}
