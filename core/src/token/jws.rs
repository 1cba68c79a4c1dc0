//! Splitting a compact JWS (RFC 7515 §7.1).
//!
//! Nothing here verifies anything: it only turns attacker-controlled bytes into
//! typed pieces, strictly, so that everything downstream works on a parsed value.

use std::fmt;

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::b64;

/// Why a token could not even be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    Empty,
    TooLarge {
        bytes: usize,
        limit: usize,
    },
    Segments(usize),
    EmptySegment,
    Base64(&'static str),
    HeaderJson(String),
    PayloadJson(String),
    /// `crit` lists extensions; nhi-guard understands none (RFC 7515 §4.1.11).
    Critical,
    /// `cty: JWT`: a nested token; nhi-guard verifies one signature layer only.
    Nested,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Empty => f.write_str("empty token"),
            ParseError::TooLarge { bytes, limit } => {
                write!(f, "token is {bytes} bytes, over the {limit}-byte limit")
            }
            ParseError::Segments(n) => write!(f, "token has {n} segments, expected 3"),
            ParseError::EmptySegment => f.write_str("token has an empty header or payload"),
            ParseError::Base64(part) => write!(f, "token {part} is not unpadded base64url"),
            ParseError::HeaderJson(e) => write!(f, "token header is not a JOSE header: {e}"),
            ParseError::PayloadJson(e) => write!(f, "token payload is not a JSON object: {e}"),
            ParseError::Critical => f.write_str("token has critical extensions (crit)"),
            ParseError::Nested => f.write_str("nested tokens (cty JWT) are not accepted"),
        }
    }
}

/// The JOSE header members nhi-guard reads. `jku`, `x5u`, `x5c`, `jwk` and any other
/// member are deliberately not read: a token's keys come from the issuer's JWKS only.
/// (A DPoP proof carries its key in `jwk`: [`Jws::jwk`].)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoseHeader {
    pub alg: String,
    pub kid: Option<String>,
    pub typ: Option<String>,
    pub cty: Option<String>,
    /// Present and not `null`: the token is refused ([`ParseError::Critical`]).
    pub crit: Option<Value>,
}

/// A compact JWS at the signature layer: split, header decoded and checked, payload
/// still bytes. [`parse`] goes on to read the payload as a claim set; JWS test vectors
/// whose payloads are not claim sets (Wycheproof's) stop here.
#[derive(Debug, Clone)]
pub struct Jws<'a> {
    pub header: JoseHeader,
    pub payload: Vec<u8>,
    /// `BASE64URL(header) "." BASE64URL(payload)`: the bytes the signature covers.
    pub signing_input: &'a str,
    pub signature: Vec<u8>,
    /// The header's `jwk` member, as sent. Only DPoP proofs (`crate::dpop`) read it:
    /// a token's own `jwk` is never a key anything is checked with.
    pub jwk: Option<Value>,
}

/// A compact JWS split and decoded, not yet verified.
#[derive(Debug, Clone)]
pub struct UnverifiedToken<'a> {
    pub header: JoseHeader,
    pub claims: Map<String, Value>,
    /// `BASE64URL(header) "." BASE64URL(payload)`: the bytes the signature covers.
    pub signing_input: &'a str,
    pub signature: Vec<u8>,
}

/// A JSON object (header or claims), refusing duplicate member names: RFC 7519 §4 lets a parser
/// reject them, and accepting "last one wins" would let a token mean one `sub` to
/// nhi-guard and another to a backend that parses it again.
struct ClaimSet(Map<String, Value>);

impl<'de> serde::Deserialize<'de> for ClaimSet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ClaimSet;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<ClaimSet, A::Error> {
                let mut map = Map::new();
                while let Some((name, value)) = access.next_entry::<String, Value>()? {
                    if map.contains_key(&name) {
                        return Err(serde::de::Error::custom("duplicate claim name"));
                    }
                    map.insert(name, value);
                }
                Ok(ClaimSet(map))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// Splits and decodes a compact JWS (RFC 7515 §7.1) carrying a JWT claim set, without
/// trusting any of it.
pub fn parse(token: &str, max_bytes: usize) -> Result<UnverifiedToken<'_>, ParseError> {
    let Jws { header, payload, signing_input, signature, .. } = parse_jws(token, max_bytes)?;
    let claims = claim_set(&payload)?;
    Ok(UnverifiedToken { header, claims, signing_input, signature })
}

/// A JWT claim set: a JSON object without duplicate member names.
pub fn claim_set(payload: &[u8]) -> Result<Map<String, Value>, ParseError> {
    let ClaimSet(claims) =
        serde_json::from_slice(payload).map_err(|e| ParseError::PayloadJson(e.to_string()))?;
    Ok(claims)
}

/// Splits and decodes a compact JWS (RFC 7515 §7.1) down to the signature layer: every
/// check of [`parse`] but the payload's JSON. An empty header or payload is refused
/// here already: a JWT's payload is never empty.
pub fn parse_jws(token: &str, max_bytes: usize) -> Result<Jws<'_>, ParseError> {
    if token.is_empty() {
        return Err(ParseError::Empty);
    }
    if token.len() > max_bytes {
        return Err(ParseError::TooLarge { bytes: token.len(), limit: max_bytes });
    }
    let segments = token.split('.').count();
    let (signing_input, signature) = match (segments, token.rsplit_once('.')) {
        (3, Some(parts)) => parts,
        _ => return Err(ParseError::Segments(segments)),
    };
    let Some((header, payload)) = signing_input.split_once('.') else {
        return Err(ParseError::Segments(segments));
    };
    if header.is_empty() || payload.is_empty() {
        return Err(ParseError::EmptySegment);
    }
    let header = b64::URL_SAFE_STRICT.decode(header).map_err(|_| ParseError::Base64("header"))?;
    let payload = b64::URL_SAFE_STRICT.decode(payload).map_err(|_| ParseError::Base64("payload"))?;
    let signature = b64::URL_SAFE_STRICT.decode(signature).map_err(|_| ParseError::Base64("signature"))?;
    // Through the strict object first: a JSON array would otherwise deserialize into
    // the struct positionally, and duplicate or null members must not slip through.
    let ClaimSet(mut header) =
        serde_json::from_slice(&header).map_err(|e| ParseError::HeaderJson(e.to_string()))?;
    let jwk = header.remove("jwk");
    if let Some(name) =
        ["alg", "kid", "typ", "cty"].into_iter().find(|n| header.get(*n).is_some_and(|v| !v.is_string()))
    {
        return Err(ParseError::HeaderJson(format!("{name} is not a string")));
    }
    // Read by hand from the object already parsed: serde's derived reader would be a
    // second pass over it, and code in the .wasm for five members.
    let mut string = |name| match header.remove(name) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    let Some(alg) = string("alg") else {
        return Err(ParseError::HeaderJson("alg is missing".to_owned()));
    };
    let (kid, typ, cty) = (string("kid"), string("typ"), string("cty"));
    let header = JoseHeader { alg, kid, typ, cty, crit: header.remove("crit").filter(|v| !v.is_null()) };
    if header.crit.is_some() {
        return Err(ParseError::Critical);
    }
    if header.cty.as_deref().is_some_and(|cty| cty.eq_ignore_ascii_case("JWT")) {
        return Err(ParseError::Nested);
    }
    Ok(Jws { header, payload, signing_input, signature, jwk })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        b64::URL_SAFE_STRICT.encode(s)
    }

    fn compact(header: &str, payload: &str, sig: &[u8]) -> String {
        format!("{}.{}.{}", b64(header), b64(payload), b64::URL_SAFE_STRICT.encode(sig))
    }

    #[test]
    fn parses_a_well_formed_token() {
        let t = compact(r#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#, r#"{"sub":"a"}"#, b"sig");
        let parsed = parse(&t, 8192).unwrap();
        assert_eq!(parsed.header.alg, "RS256");
        assert_eq!(parsed.header.kid.as_deref(), Some("k1"));
        assert_eq!(parsed.claims["sub"], "a");
        assert_eq!(parsed.signature, b"sig");
        assert_eq!(parsed.signing_input, t.rsplit_once('.').unwrap().0);
    }

    #[test]
    fn the_signature_layer_takes_any_payload_but_an_empty_one() {
        let t = compact(r#"{"alg":"ES256"}"#, "foo", b"sig");
        let jws = parse_jws(&t, 8192).unwrap();
        assert_eq!(jws.payload, b"foo");
        assert_eq!(jws.signing_input, t.rsplit_once('.').unwrap().0);
        assert!(matches!(parse(&t, 8192).unwrap_err(), ParseError::PayloadJson(_)));
        let empty = format!("{}..{}", b64(r#"{"alg":"ES256"}"#), b64("sig"));
        assert_eq!(parse_jws(&empty, 8192).unwrap_err(), ParseError::EmptySegment);
    }

    #[test]
    fn refuses_structural_damage() {
        let good = compact(r#"{"alg":"RS256"}"#, r#"{}"#, b"s");
        assert_eq!(parse("", 8192).unwrap_err(), ParseError::Empty);
        assert_eq!(parse("a.b", 8192).unwrap_err(), ParseError::Segments(2));
        assert_eq!(parse(&format!("{good}.x"), 8192).unwrap_err(), ParseError::Segments(4));
        assert_eq!(
            parse(&format!(".{}", &good[good.find('.').unwrap() + 1..]), 8192).unwrap_err(),
            ParseError::EmptySegment
        );
        assert!(matches!(parse(&good, 10).unwrap_err(), ParseError::TooLarge { limit: 10, .. }));
    }

    #[test]
    fn refuses_padding_and_non_url_safe_base64() {
        let header = b64::URL_SAFE_STRICT.encode(r#"{"alg":"RS256"}"#);
        let padded = format!("{header}=.{}.c2ln", b64("{}"));
        assert_eq!(parse(&padded, 8192).unwrap_err(), ParseError::Base64("header"));
        let std_alphabet = format!("{header}.{}.a+b/", b64("{}"));
        assert_eq!(parse(&std_alphabet, 8192).unwrap_err(), ParseError::Base64("signature"));
    }

    #[test]
    fn refuses_non_object_json() {
        assert!(matches!(parse(&compact("[]", "{}", b"s"), 8192), Err(ParseError::HeaderJson(_))));
        assert!(matches!(
            parse(&compact(r#"{"alg":"RS256"}"#, "[1]", b"s"), 8192),
            Err(ParseError::PayloadJson(_))
        ));
        assert!(matches!(
            parse(&compact(r#"{"alg":"RS256"}"#, "nope", b"s"), 8192),
            Err(ParseError::PayloadJson(_))
        ));
        assert!(matches!(parse(&compact(r#"{"alg":7}"#, "{}", b"s"), 8192), Err(ParseError::HeaderJson(_))));
        assert_eq!(
            parse(&compact(r#"{"kid":"k"}"#, "{}", b"s"), 8192).unwrap_err(),
            ParseError::HeaderJson("alg is missing".into())
        );
        assert!(matches!(
            parse(&compact(r#"{"alg":null}"#, "{}", b"s"), 8192),
            Err(ParseError::HeaderJson(_))
        ));
        assert!(matches!(
            parse(&compact(r#"{"alg":"RS256","kid":5}"#, "{}", b"s"), 8192),
            Err(ParseError::HeaderJson(_))
        ));
    }

    #[test]
    fn refuses_duplicate_names() {
        let dup_claim = compact(r#"{"alg":"RS256"}"#, r#"{"sub":"a","sub":"admin"}"#, b"s");
        assert!(matches!(parse(&dup_claim, 8192), Err(ParseError::PayloadJson(_))));
        let dup_header = compact(r#"{"alg":"RS256","alg":"none"}"#, "{}", b"s");
        assert!(matches!(parse(&dup_header, 8192), Err(ParseError::HeaderJson(_))));
    }

    #[test]
    fn refuses_crit_and_nested_tokens() {
        let crit = compact(r#"{"alg":"RS256","crit":["exp"]}"#, "{}", b"s");
        assert_eq!(parse(&crit, 8192).unwrap_err(), ParseError::Critical);
        let nested = compact(r#"{"alg":"RS256","cty":"JWT"}"#, "{}", b"s");
        assert_eq!(parse(&nested, 8192).unwrap_err(), ParseError::Nested);
    }

    #[test]
    fn accepts_empty_signature_segment_for_later_alg_rejection() {
        // `alg: none` tokens end in a dot; the algorithm check refuses them with a precise reason.
        let none = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64("{}"));
        assert_eq!(parse(&none, 8192).unwrap().header.alg, "none");
    }
}
