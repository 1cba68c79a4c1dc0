//! `explain` without the issuer's keys: the token is re-signed with a throwaway key
//! of its own algorithm, and that key is served as the issuer's JWKS under the
//! token's `kid`. The filter's pipeline then runs every check — header, issuer,
//! `typ`, key selection, claims, profile, allowlists, policy, quota — on the very
//! header and payload the client sent; only the signature is the throwaway key's,
//! and `explain` reports it as not checked.
//!
//! Nothing here touches the verifier: the filter has no "skip the signature" switch
//! to misuse. The key lives for one `explain` run, in this process only.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_compact::alg::{Ed25519, Es256, Rsa};
use jwt_compact::{Algorithm as _, AlgorithmSignature as _};
use p384::ecdsa::signature::Signer as _;
use rand::rngs::OsRng;
use rsa::traits::PublicKeyParts as _;
use serde_json::{json, Map, Value};

use nhi_guard_core::crypto::alg::Alg;
use nhi_guard_core::keys::jwks::KeyUse;

/// RSA keys the verifier accepts start at 2048 bits.
const RSA_BITS: usize = 2048;

/// A token re-signed with a throwaway key, and the JWKS that publishes that key.
#[derive(Debug, Clone)]
pub struct Resigned {
    pub token: String,
    pub jwks: String,
}

/// What a token says of itself before anything is verified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peeked {
    pub alg: Option<String>,
    pub kid: Option<String>,
    pub iss: Option<String>,
    pub sub: Option<String>,
}

/// Reads the header's `alg` and `kid` and the payload's `iss` and `sub`, trusting
/// none of it.
pub fn peek(token: &str) -> Peeked {
    let mut parts = token.split('.');
    let member = |segment: Option<&str>, name: &str| {
        let bytes = URL_SAFE_NO_PAD.decode(segment?.trim_end_matches('=')).ok()?;
        let object: Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
        object.get(name)?.as_str().map(str::to_owned)
    };
    let (header, payload) = (parts.next(), parts.next());
    Peeked {
        alg: member(header, "alg"),
        kid: member(header, "kid"),
        iss: member(payload, "iss"),
        sub: member(payload, "sub"),
    }
}

/// Re-signs `token` (three segments, an `alg` the filter supports) for an issuer whose
/// keys carry `key_use`. `None`: nothing to re-sign — no such algorithm (the filter
/// refuses it before any key is looked at) or no compact JWS at all.
pub fn resign(token: &str, key_use: KeyUse) -> Result<Option<Resigned>, String> {
    let Some((signing_input, _)) = token.rsplit_once('.') else { return Ok(None) };
    if signing_input.split('.').count() != 2 {
        return Ok(None);
    }
    let peeked = peek(token);
    let Some(alg) = peeked.alg.as_deref().and_then(|a| a.parse::<Alg>().ok()) else { return Ok(None) };
    let message = signing_input.as_bytes();
    let (signature, mut jwk) = match alg {
        Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512 => {
            let key = rsa::RsaPrivateKey::new(&mut OsRng, RSA_BITS).map_err(|e| format!("RSA key: {e}"))?;
            let rsa = match alg {
                Alg::Rs256 => Rsa::rs256(),
                Alg::Rs384 => Rsa::rs384(),
                Alg::Rs512 => Rsa::rs512(),
                Alg::Ps256 => Rsa::ps256(),
                Alg::Ps384 => Rsa::ps384(),
                _ => Rsa::ps512(),
            };
            let signature = rsa.sign(&key, message).as_bytes().into_owned();
            let jwk =
                json!({"kty": "RSA", "n": b64(&key.n().to_bytes_be()), "e": b64(&key.e().to_bytes_be())});
            (signature, jwk)
        }
        Alg::Es256 => {
            let key = p256::ecdsa::SigningKey::random(&mut OsRng);
            let point = key.verifying_key().to_encoded_point(false);
            let jwk = ec_jwk("P-256", point.x().map(|x| &x[..]), point.y().map(|y| &y[..]));
            (Es256.sign(&key, message).as_bytes().into_owned(), jwk)
        }
        Alg::Es384 => {
            let key = p384::ecdsa::SigningKey::random(&mut OsRng);
            let signature: p384::ecdsa::Signature = key.sign(message);
            let point = key.verifying_key().to_encoded_point(false);
            let jwk = ec_jwk("P-384", point.x().map(|x| &x[..]), point.y().map(|y| &y[..]));
            (signature.to_bytes().to_vec(), jwk)
        }
        Alg::EdDsa => {
            let key = ed25519_dalek::SigningKey::generate(&mut OsRng);
            let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(key.verifying_key().as_bytes())});
            (Ed25519.sign(&key, message).as_bytes().into_owned(), jwk)
        }
    };
    if let Value::Object(members) = &mut jwk {
        members.insert("alg".into(), alg.name().into());
        members.insert(
            "use".into(),
            match key_use {
                KeyUse::Sig => "sig",
                KeyUse::JwtSvid => "jwt-svid",
            }
            .into(),
        );
        if let Some(kid) = peeked.kid {
            members.insert("kid".into(), kid.into());
        }
    }
    Ok(Some(Resigned {
        token: format!("{signing_input}.{}", b64(&signature)),
        jwks: json!({ "keys": [jwk] }).to_string(),
    }))
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn ec_jwk(crv: &str, x: Option<&[u8]>, y: Option<&[u8]>) -> Value {
    json!({"kty": "EC", "crv": crv, "x": b64(x.unwrap_or_default()), "y": b64(y.unwrap_or_default())})
}

#[cfg(test)]
mod tests {
    use super::*;
    use nhi_guard_core::keys::jwks;

    fn token(alg: &str, kid: Option<&str>) -> String {
        let mut header = json!({"alg": alg, "typ": "JWT"});
        if let Some(kid) = kid {
            header["kid"] = json!(kid);
        }
        let payload = json!({"iss": "https://issuer.example", "sub": "robot"});
        format!(
            "{}.{}.{}",
            b64(header.to_string().as_bytes()),
            b64(payload.to_string().as_bytes()),
            b64(b"sig")
        )
    }

    #[test]
    fn every_algorithm_is_re_signed_over_the_same_header_and_payload() {
        for alg in Alg::ALL {
            let original = token(alg.name(), Some("k-1"));
            let resigned = resign(&original, KeyUse::Sig).unwrap().unwrap();
            let (input, _) = original.rsplit_once('.').unwrap();
            assert!(resigned.token.starts_with(&format!("{input}.")), "{alg}");
            assert_ne!(resigned.token, original, "{alg}");
            let parsed = jwks::parse(resigned.jwks.as_bytes()).unwrap();
            let key = parsed.keys.by_kid("k-1").unwrap();
            let (_, signature) = resigned.token.rsplit_once('.').unwrap();
            let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
            assert!(alg.verify(&key.key, input.as_bytes(), &signature), "{alg}");
        }
    }

    #[test]
    fn what_the_filter_refuses_before_the_key_is_not_re_signed() {
        for alg in ["none", "HS256", ""] {
            assert!(resign(&token(alg, None), KeyUse::Sig).unwrap().is_none(), "{alg}");
        }
        assert!(resign("not-a-jwt", KeyUse::Sig).unwrap().is_none());
        assert!(resign("a.b.c.d", KeyUse::Sig).unwrap().is_none());
        let svid = resign(&token("ES256", None), KeyUse::JwtSvid).unwrap().unwrap();
        assert!(svid.jwks.contains("\"use\":\"jwt-svid\""), "{}", svid.jwks);
        assert!(!svid.jwks.contains("kid"), "no kid in the token, none in the key: {}", svid.jwks);
    }

    #[test]
    fn peek_reads_without_trusting() {
        let peeked = peek(&token("ES256", Some("k")));
        assert_eq!(
            peeked,
            Peeked {
                alg: Some("ES256".into()),
                kid: Some("k".into()),
                iss: Some("https://issuer.example".into()),
                sub: Some("robot".into())
            }
        );
        assert_eq!(peek("garbage"), Peeked::default());
    }
}
