//! JWK SHA-256 thumbprints (RFC 7638): what a DPoP-bound token's `cnf.jkt` names.
//!
//! The thumbprint hashes a JSON object of the key's *required* members only, in
//! lexicographic order, without whitespace: `e`, `kty`, `n` for RSA; `crv`, `kty`,
//! `x`, `y` for EC; `crv`, `kty`, `x` for OKP (RFC 8037 §2). Every other member
//! (`kid`, `alg`, `use`…) leaves it unchanged, so a key is the same key whatever its
//! metadata.

use base64::Engine as _;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The required members of each key type, in the order RFC 7638 hashes them.
fn required_members(kty: &str) -> Option<&'static [&'static str]> {
    match kty {
        "RSA" => Some(&["e", "kty", "n"]),
        "EC" => Some(&["crv", "kty", "x", "y"]),
        "OKP" => Some(&["crv", "kty", "x"]),
        _ => None,
    }
}

/// Why a JWK has no thumbprint here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThumbprintError {
    /// No `kty`, or one that is not `RSA`, `EC` or `OKP`.
    KeyType,
    /// A required member is missing or not a string.
    Member(&'static str),
}

impl std::fmt::Display for ThumbprintError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ThumbprintError::KeyType => f.write_str("jwk has no supported kty (RSA, EC, OKP)"),
            ThumbprintError::Member(name) => write!(f, "jwk member {name} is missing or not a string"),
        }
    }
}

/// The RFC 7638 input: the required members as canonical JSON.
pub fn canonical_json(jwk: &Map<String, Value>) -> Result<String, ThumbprintError> {
    let kty = jwk.get("kty").and_then(Value::as_str).ok_or(ThumbprintError::KeyType)?;
    let members = required_members(kty).ok_or(ThumbprintError::KeyType)?;
    let mut out = String::with_capacity(512);
    out.push('{');
    for (i, name) in members.iter().enumerate() {
        let value = jwk.get(*name).and_then(Value::as_str).ok_or(ThumbprintError::Member(name))?;
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(name);
        out.push_str("\":");
        // A JSON string, escaped as serde_json escapes it (RFC 7638 §3.3: the
        // members' values as JSON strings, without whitespace).
        out.push_str(&Value::String(value.to_owned()).to_string());
    }
    out.push('}');
    Ok(out)
}

/// The JWK SHA-256 thumbprint, base64url without padding: a `cnf.jkt` value.
pub fn jkt(jwk: &Map<String, Value>) -> Result<String, ThumbprintError> {
    let digest = Sha256::digest(canonical_json(jwk)?.as_bytes());
    Ok(crate::b64::URL_SAFE_STRICT.encode(digest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    /// RFC 7638 §3.1: the RSA key of RFC 7517 appendix A.1 and its thumbprint.
    #[test]
    fn the_rfc_7638_example() {
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let jwk = map(json!({"kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}));
        assert_eq!(
            canonical_json(&jwk).unwrap(),
            format!("{{\"e\":\"AQAB\",\"kty\":\"RSA\",\"n\":\"{n}\"}}")
        );
        assert_eq!(jkt(&jwk).unwrap(), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    /// RFC 8037 appendix A.3: the Ed25519 key's thumbprint.
    #[test]
    fn the_rfc_8037_okp_example() {
        let jwk =
            map(json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}));
        assert_eq!(jkt(&jwk).unwrap(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    /// RFC 9449 §6.1: the `cnf.jkt` of the example token is the thumbprint of the
    /// P-256 key of the example proofs.
    #[test]
    fn the_rfc_9449_example_key() {
        let jwk = map(json!({"kty": "EC", "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
                             "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA", "crv": "P-256"}));
        assert_eq!(jkt(&jwk).unwrap(), "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I");
    }

    #[test]
    fn metadata_does_not_change_it_and_missing_members_are_refused() {
        let plain = map(json!({"kty": "OKP", "crv": "Ed25519", "x": "abc"}));
        let decorated = map(json!({"kty": "OKP", "crv": "Ed25519", "x": "abc", "kid": "k", "use": "sig"}));
        assert_eq!(jkt(&plain), jkt(&decorated));
        assert_eq!(jkt(&map(json!({"kty": "oct", "k": "c2VjcmV0"}))), Err(ThumbprintError::KeyType));
        assert_eq!(jkt(&map(json!({"crv": "P-256"}))), Err(ThumbprintError::KeyType));
        assert_eq!(
            jkt(&map(json!({"kty": "EC", "crv": "P-256", "x": "a"}))),
            Err(ThumbprintError::Member("y"))
        );
        assert_eq!(jkt(&map(json!({"kty": "RSA", "n": 5, "e": "AQAB"}))), Err(ThumbprintError::Member("n")));
    }
}
