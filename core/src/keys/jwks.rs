//! JWKS documents (RFC 7517) turned into a bounded set of usable verification keys.
//!
//! A key server is trusted to *publish* keys, not to be well-formed: a document
//! that is not JSON, too large, or has no usable key is an error (the caller keeps
//! its last good set), while a single odd key inside an otherwise good document —
//! an unsupported curve, an encryption key, RSA under 2048 bits — is skipped and
//! reported, so one bad entry at the IdP does not take every issuer key down.
//! RSA keys whose modulus has the ROCA structure (CVE-2017-15361, see [`roca`]) are
//! such entries: anyone can compute their private key.

use std::fmt;

use base64::Engine as _;
use serde::Deserialize;

use crate::b64;
use crate::crypto::alg::{Alg, PublicKey};
use crate::crypto::ecdsa::{P256Key, P384Key};
use crate::crypto::roca;
use crate::crypto::rsa_verify::{self, RsaPublicKey};
use crate::json::Object;

/// Largest JWKS body accepted, in bytes. Real IdPs publish a few KiB.
pub const MAX_JWKS_BYTES: usize = 64 * 1024;
/// Most keys kept from one JWKS; further keys are skipped.
pub const MAX_KEYS: usize = 32;
/// Longest `kid` kept; longer ones make the key unusable (and are skipped).
pub const MAX_KID_BYTES: usize = 256;
/// RSA moduli below this are refused (RFC 7518 §3.3 requires 2048).
pub const MIN_RSA_BITS: usize = 2048;

/// One verification key with the JWK metadata that restricts its use.
#[derive(Debug, Clone)]
pub struct Jwk {
    pub kid: Option<String>,
    /// When the JWK names an algorithm, only that algorithm may use the key.
    pub alg: Option<Alg>,
    pub key: PublicKey,
    /// What this key *is*, whatever its `kid`: see [`KeyFingerprint`].
    pub fingerprint: KeyFingerprint,
}

/// SHA-256 over a JWK's key type, curve, public members and `alg`, as published.
///
/// A cached verification is bound to the fingerprint of the key that checked the
/// signature, not to its `kid`: an issuer that publishes a different key under the
/// same `kid` (a botched rotation, or a compromised key replaced in place) must take
/// every token the old key verified with it. Two encodings of one key (padding, a
/// leading zero) give two fingerprints; that only costs a cache miss.
pub type KeyFingerprint = [u8; 32];

impl Jwk {
    /// Whether a token signed with `alg` may be checked against this key.
    pub fn accepts(&self, alg: Alg) -> bool {
        self.alg.is_none_or(|only| only == alg) && alg.fits(&self.key)
    }
}

/// The usable keys of one issuer.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<Jwk>,
}

impl KeySet {
    pub fn keys(&self) -> &[Jwk] {
        &self.keys
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn by_kid(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|k| k.kid.as_deref() == Some(kid))
    }

    /// The key for a token: by `kid` when it has one; without a `kid`, only if
    /// exactly one key accepts the algorithm (never "try them all": that would
    /// multiply the crypto an attacker can make us do).
    pub fn select(&self, kid: Option<&str>, alg: Alg) -> Option<&Jwk> {
        match kid {
            Some(kid) => self.by_kid(kid),
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.accepts(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(only), None) => Some(only),
                    _ => None,
                }
            }
        }
    }
}

/// Why a JWKS document as a whole was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksError {
    TooLarge {
        bytes: usize,
        limit: usize,
    },
    NotJson(String),
    /// Every key was skipped; the reasons go into the message (an IdP whose only key
    /// is refused must learn which and why, not just "no usable key").
    NoUsableKeys {
        skipped: Vec<SkippedKey>,
    },
}

/// Skipped keys named in a [`JwksError::NoUsableKeys`] message; the rest are counted.
const NAMED_SKIPPED: usize = 3;

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksError::TooLarge { bytes, limit } => {
                write!(f, "JWKS is {bytes} bytes, over the {limit}-byte limit")
            }
            JwksError::NotJson(err) => write!(f, "JWKS is not a JSON key set: {err}"),
            JwksError::NoUsableKeys { skipped } => {
                write!(f, "JWKS has no usable signing key ({} skipped", skipped.len())?;
                for (i, key) in skipped.iter().take(NAMED_SKIPPED).enumerate() {
                    write!(f, "{} {key}", if i == 0 { ":" } else { ";" })?;
                }
                match skipped.len().saturating_sub(NAMED_SKIPPED) {
                    0 => f.write_str(")"),
                    more => write!(f, "; {more} more)"),
                }
            }
        }
    }
}

/// A key left out of the set, with the reason, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    pub kid: Option<String>,
    pub reason: String,
}

impl fmt::Display for SkippedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kid {
            Some(kid) => write!(f, "key {kid:?}: {}", self.reason),
            None => write!(f, "key without kid: {}", self.reason),
        }
    }
}

/// A parsed JWKS: the usable keys, and what was skipped and why.
#[derive(Debug, Clone)]
pub struct ParsedJwks {
    pub keys: KeySet,
    pub skipped: Vec<SkippedKey>,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

/// The JWK members we read. Everything else (`x5c`, `x5u`, private members…) is ignored:
/// key material only ever comes from `n`/`e` or `crv`/`x`/`y`.
struct RawJwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

impl RawJwk {
    /// Reads the members above from a JWK object (with the configuration's reader: a
    /// member of the wrong type is named), ignoring all others.
    fn read(value: serde_json::Value) -> Result<RawJwk, String> {
        let mut o = Object::new(value, "").map_err(|e| format!("not a JWK: {}", e.reason()))?;
        let raw = RawJwk {
            kty: o.required("kty"),
            kid: o.optional("kid"),
            alg: o.optional("alg"),
            use_: o.optional("use"),
            key_ops: o.optional("key_ops"),
            crv: o.optional("crv"),
            n: o.optional("n"),
            e: o.optional("e"),
            x: o.optional("x"),
            y: o.optional("y"),
        };
        match o.into_rest() {
            Ok(_ignored) => Ok(raw),
            Err(e) => Err(format!("not a JWK: {} {}", e.field(), e.reason())),
        }
    }
}

/// Which JWK `use` values an issuer's keys may carry (RFC 7517 §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyUse {
    /// `use` absent or `sig`.
    #[default]
    Sig,
    /// `use` absent or `jwt-svid`: a SPIFFE trust bundle, whose `x509-svid` keys
    /// sign certificates, never JWT-SVIDs (SPIFFE Trust Domain and Bundle §4.2.2).
    JwtSvid,
}

impl KeyUse {
    /// The `use` value, besides none, that this policy accepts.
    pub fn name(self) -> &'static str {
        match self {
            KeyUse::Sig => "sig",
            KeyUse::JwtSvid => "jwt-svid",
        }
    }

    pub fn allows(self, use_: Option<&str>) -> bool {
        use_.is_none_or(|u| u == self.name())
    }
}

/// Parses a JWKS body, keeping at most [`MAX_KEYS`] usable keys with `use`
/// absent or `sig`.
pub fn parse(body: &[u8]) -> Result<ParsedJwks, JwksError> {
    parse_for(body, KeyUse::Sig)
}

/// Parses a JWKS body for an issuer whose keys follow `key_use`.
pub fn parse_for(body: &[u8], key_use: KeyUse) -> Result<ParsedJwks, JwksError> {
    if body.len() > MAX_JWKS_BYTES {
        return Err(JwksError::TooLarge { bytes: body.len(), limit: MAX_JWKS_BYTES });
    }
    let raw: RawJwks = serde_json::from_slice(body).map_err(|e| JwksError::NotJson(e.to_string()))?;
    let mut keys: Vec<Jwk> = Vec::new();
    let mut skipped = Vec::new();
    for value in raw.keys {
        let kid = value.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
        let outcome = if keys.len() >= MAX_KEYS {
            Err(format!("more than {MAX_KEYS} keys"))
        } else {
            parse_key(value, key_use)
        };
        match outcome {
            Ok(jwk) if jwk.kid.is_some() && keys.iter().any(|k| k.kid == jwk.kid) => {
                skipped.push(SkippedKey { kid, reason: "duplicate kid".into() })
            }
            Ok(jwk) => keys.push(jwk),
            Err(reason) => skipped.push(SkippedKey { kid, reason }),
        }
    }
    if keys.is_empty() {
        return Err(JwksError::NoUsableKeys { skipped });
    }
    Ok(ParsedJwks { keys: KeySet { keys }, skipped })
}

/// Imports one JWK (a DPoP proof's `jwk`) with every rule a JWKS key meets: a
/// supported type and curve, a point on the curve, RSA of 2048 bits or more without
/// the ROCA structure, `use` absent or `sig`. Private members are not read here: the
/// caller refuses a JWK that has any (see `crate::dpop`).
pub fn import_key(value: serde_json::Value) -> Result<Jwk, String> {
    parse_key(value, KeyUse::Sig)
}

fn parse_key(value: serde_json::Value, key_use: KeyUse) -> Result<Jwk, String> {
    let raw = RawJwk::read(value)?;
    if let Some(kid) = &raw.kid {
        if kid.len() > MAX_KID_BYTES {
            return Err(format!("kid longer than {MAX_KID_BYTES} bytes"));
        }
    }
    if !key_use.allows(raw.use_.as_deref()) {
        return Err(format!("use {:?} is not {:?}", raw.use_.as_deref().unwrap_or_default(), key_use.name()));
    }
    if let Some(ops) = &raw.key_ops {
        if !ops.iter().any(|op| op == "verify") {
            return Err("key_ops does not include \"verify\"".into());
        }
    }
    let alg = match &raw.alg {
        None => None,
        Some(name) => Some(name.parse::<Alg>().map_err(|e| e.to_string())?),
    };
    let key = match (raw.kty.as_str(), raw.crv.as_deref()) {
        ("RSA", _) => rsa_key(&raw)?,
        ("EC", Some("P-256")) => {
            let point = ec_point(&raw, 32)?;
            PublicKey::P256(
                P256Key::from_sec1_bytes(&point)
                    .ok_or_else(|| "P-256 point is not on the curve".to_owned())?,
            )
        }
        ("EC", Some("P-384")) => {
            let point = ec_point(&raw, 48)?;
            PublicKey::P384(
                P384Key::from_sec1_bytes(&point)
                    .ok_or_else(|| "P-384 point is not on the curve".to_owned())?,
            )
        }
        ("OKP", Some("Ed25519")) => {
            let x = decode_member("x", raw.x.as_deref())?;
            let x: [u8; 32] = x.try_into().map_err(|_| "Ed25519 x is not 32 bytes".to_owned())?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(&x)
                .map_err(|_| "Ed25519 x is not a curve point".to_owned())?;
            if key.is_weak() {
                return Err("Ed25519 key has small order".into());
            }
            PublicKey::Ed25519(key)
        }
        (kty, crv) => {
            return Err(match crv {
                Some(crv) => format!("unsupported key type {kty} / curve {crv}"),
                None => format!("unsupported key type {kty}"),
            })
        }
    };
    if let Some(alg) = alg {
        if !alg.fits(&key) {
            return Err(format!("alg {alg} does not fit a {} key", key.kind()));
        }
    }
    let fingerprint = fingerprint(&raw);
    Ok(Jwk { kid: raw.kid, alg, key, fingerprint })
}

fn fingerprint(raw: &RawJwk) -> KeyFingerprint {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    let members = [Some(raw.kty.as_str()), raw.crv.as_deref(), raw.n.as_deref(), raw.e.as_deref()];
    let members = members.into_iter().chain([raw.x.as_deref(), raw.y.as_deref(), raw.alg.as_deref()]);
    for member in members {
        // Length-prefixed, so that no two member lists hash alike; padding dropped.
        let member = member.unwrap_or_default().trim_end_matches('=');
        hash.update((member.len() as u64).to_be_bytes());
        hash.update(member.as_bytes());
    }
    hash.finalize().into()
}

fn decode_member(name: &str, value: Option<&str>) -> Result<Vec<u8>, String> {
    let value = value.ok_or_else(|| format!("missing {name}"))?;
    b64::URL_SAFE_STRICT
        .decode(value)
        .or_else(|_| b64::URL_SAFE_LENIENT.decode(value))
        .map_err(|_| format!("{name} is not base64url"))
}

fn rsa_key(raw: &RawJwk) -> Result<PublicKey, String> {
    let n = decode_member("n", raw.n.as_deref())?;
    let e = decode_member("e", raw.e.as_deref())?;
    let bits = rsa_verify::bit_length(&n);
    if bits < MIN_RSA_BITS {
        return Err(format!("RSA modulus of {bits} bits is under {MIN_RSA_BITS}"));
    }
    if roca::is_roca_weak(&n) {
        return Err("ROCA-weak RSA modulus (CVE-2017-15361): its factors can be computed".into());
    }
    // Also refuses even moduli, moduli over 4096 bits, and exponents that are even,
    // below 3 or over 2^33-1; the key's Montgomery constants are computed here, once.
    RsaPublicKey::new(&n, &e).map(PublicKey::Rsa).map_err(|err| format!("RSA key refused: {err}"))
}

fn ec_point(raw: &RawJwk, coordinate_len: usize) -> Result<Vec<u8>, String> {
    let x = decode_member("x", raw.x.as_deref())?;
    let y = decode_member("y", raw.y.as_deref())?;
    if x.len() != coordinate_len || y.len() != coordinate_len {
        return Err(format!("EC coordinates must be {coordinate_len} bytes"));
    }
    let mut point = Vec::with_capacity(1 + 2 * coordinate_len);
    point.push(0x04); // SEC1 uncompressed point
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    Ok(point)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::testkit::{self, b64};

    fn parse_value(v: &Value) -> Result<ParsedJwks, JwksError> {
        parse(v.to_string().as_bytes())
    }

    fn test_key(kid: &str) -> Value {
        let all = testkit::jwks();
        all["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid).unwrap().clone()
    }

    fn skipped_reason(key: Value) -> String {
        let parsed = parse_value(&json!({"keys": [key, test_key("ec-1")]})).unwrap();
        assert_eq!(parsed.keys.len(), 1);
        parsed.skipped[0].reason.clone()
    }

    #[test]
    fn imports_every_supported_key_type() {
        let parsed = parse_value(&testkit::jwks()).unwrap();
        assert!(parsed.skipped.is_empty());
        let kinds: Vec<_> = parsed.keys.keys().iter().map(|k| k.key.kind()).collect();
        assert_eq!(kinds, ["RSA", "EC P-256", "EC P-384", "OKP Ed25519"]);
        assert!(parsed.keys.by_kid("ed-1").is_some());
    }

    #[test]
    fn skips_odd_keys_but_keeps_the_rest() {
        let mut enc = test_key("rsa-1");
        enc["use"] = json!("enc");
        assert!(skipped_reason(enc).contains("use"));

        let mut ops = test_key("rsa-1");
        ops["key_ops"] = json!(["encrypt"]);
        assert!(skipped_reason(ops).contains("key_ops"));

        assert!(skipped_reason(json!({"kty": "oct", "k": "c2VjcmV0"})).contains("unsupported key type oct"));
        assert!(skipped_reason(json!({"kty": "EC", "crv": "secp256k1", "x": "AA", "y": "AA"}))
            .contains("secp256k1"));

        let mut wrong_alg = test_key("ec-1");
        wrong_alg["alg"] = json!("RS256");
        wrong_alg["kid"] = json!("other");
        assert!(skipped_reason(wrong_alg).contains("does not fit"));

        let mut hs = test_key("rsa-1");
        hs["alg"] = json!("HS256");
        assert!(skipped_reason(hs).contains("unsupported algorithm"));

        let mut long_kid = test_key("rsa-1");
        long_kid["kid"] = json!("k".repeat(MAX_KID_BYTES + 1));
        assert!(skipped_reason(long_kid).contains("kid longer"));
    }

    #[test]
    fn spiffe_bundles_accept_only_jwt_svid_keys() {
        let with_use = |u: Option<&str>| {
            let mut k = test_key("ec-1");
            match u {
                Some(u) => k["use"] = json!(u),
                None => {
                    k.as_object_mut().unwrap().remove("use");
                }
            }
            json!({"keys": [k], "spiffe_sequence": 7})
        };
        for (u, sig, svid) in [
            (None, true, true),
            (Some("sig"), true, false),
            (Some("jwt-svid"), false, true),
            (Some("x509-svid"), false, false),
            (Some("enc"), false, false),
        ] {
            let doc = with_use(u).to_string();
            assert_eq!(parse_for(doc.as_bytes(), KeyUse::Sig).is_ok(), sig, "{u:?} for sig");
            assert_eq!(parse_for(doc.as_bytes(), KeyUse::JwtSvid).is_ok(), svid, "{u:?} for jwt-svid");
        }
        let mixed = json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "x509", "use": "x509-svid", "x": "AA", "y": "AA", "x5c": ["AA"]},
            with_use(Some("jwt-svid"))["keys"][0].clone(),
        ]});
        let parsed = parse_for(mixed.to_string().as_bytes(), KeyUse::JwtSvid).unwrap();
        assert_eq!(parsed.keys.len(), 1);
        assert_eq!(parsed.skipped[0].reason, "use \"x509-svid\" is not \"jwt-svid\"");
    }

    #[test]
    fn refuses_short_rsa_and_exponent_one() {
        use rsa::traits::PublicKeyParts;
        let small = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 1024).unwrap();
        let n = b64(small.n().to_bytes_be());
        let r = skipped_reason(json!({"kty": "RSA", "kid": "small", "n": n, "e": "AQAB"}));
        assert!(r.contains("1024 bits"), "{r}");
        let mut e1 = test_key("rsa-1");
        e1["e"] = json!("AQ");
        assert!(skipped_reason(e1).contains("RSA key refused"));
    }

    #[test]
    fn refuses_roca_weak_rsa_and_names_its_kid() {
        let roca = json!({"kty": "RSA", "kid": "infineon-1", "use": "sig", "alg": "RS256",
                          "n": testkit::WYCHEPROOF_ROCA_N, "e": "AQAB"});
        let parsed = parse_value(&json!({"keys": [roca, test_key("rsa-1")]})).unwrap();
        assert_eq!(parsed.keys.len(), 1);
        assert!(parsed.keys.by_kid("rsa-1").is_some(), "an ordinary RSA key beside it stays");
        assert!(parsed.keys.by_kid("infineon-1").is_none());
        let logged = parsed.skipped[0].to_string();
        assert!(logged.starts_with("key \"infineon-1\": ROCA-weak RSA modulus (CVE-2017-15361)"), "{logged}");
    }

    #[test]
    fn refuses_points_off_the_curve_and_weak_ed25519() {
        let mut off = test_key("ec-1");
        let mut y = base64::Engine::decode(&crate::b64::URL_SAFE_STRICT, off["y"].as_str().unwrap()).unwrap();
        y[31] ^= 1;
        off["y"] = json!(b64(&y));
        assert!(skipped_reason(off).contains("not on the curve"));

        // P-256 coordinates presented as a P-384 key: wrong length for the curve.
        let mut wrong_curve = test_key("ec-1");
        wrong_curve["crv"] = json!("P-384");
        assert!(skipped_reason(wrong_curve).contains("48 bytes"));

        // The identity point (small order) encoded as an Ed25519 public key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = json!({"kty": "OKP", "crv": "Ed25519", "kid": "weak", "x": b64(identity)});
        assert!(skipped_reason(weak).contains("small order"));
    }

    #[test]
    fn duplicate_kids_keep_the_first() {
        let first = test_key("ec-1");
        let mut second = test_key("rsa-1");
        second["kid"] = json!("ec-1");
        let parsed = parse_value(&json!({"keys": [first, second]})).unwrap();
        assert_eq!(parsed.keys.len(), 1);
        assert_eq!(parsed.keys.keys()[0].key.kind(), "EC P-256");
        assert_eq!(parsed.skipped[0].reason, "duplicate kid");
    }

    #[test]
    fn bounds_key_count_and_size() {
        let mut keys = Vec::new();
        for i in 0..(MAX_KEYS + 3) {
            let mut k = test_key("ed-1");
            k["kid"] = json!(format!("k{i}"));
            keys.push(k);
        }
        let parsed = parse_value(&json!({ "keys": keys })).unwrap();
        assert_eq!(parsed.keys.len(), MAX_KEYS);
        assert_eq!(parsed.skipped.len(), 3);

        let big = vec![b' '; MAX_JWKS_BYTES + 1];
        assert_eq!(
            parse(&big).unwrap_err(),
            JwksError::TooLarge { bytes: MAX_JWKS_BYTES + 1, limit: MAX_JWKS_BYTES }
        );
    }

    #[test]
    fn whole_document_errors() {
        assert!(matches!(parse(b"<html>"), Err(JwksError::NotJson(_))));
        assert!(matches!(parse(b"{\"keys\": {}}"), Err(JwksError::NotJson(_))));
        assert!(matches!(parse(b"{}"), Err(JwksError::NotJson(_))));
        assert_eq!(
            parse(b"{\"keys\": []}").unwrap_err().to_string(),
            "JWKS has no usable signing key (0 skipped)"
        );
        assert_eq!(
            parse(b"{\"keys\": [{\"kty\": \"oct\", \"kid\": \"hmac\"}]}").unwrap_err().to_string(),
            "JWKS has no usable signing key (1 skipped: key \"hmac\": unsupported key type oct)"
        );
        let five: Vec<Value> = (0..5).map(|i| json!({"kty": "oct", "kid": format!("k{i}")})).collect();
        assert_eq!(
            parse_value(&json!({ "keys": five })).unwrap_err().to_string(),
            "JWKS has no usable signing key (5 skipped: key \"k0\": unsupported key type oct; \
             key \"k1\": unsupported key type oct; key \"k2\": unsupported key type oct; 2 more)"
        );
    }

    #[test]
    fn jwk_alg_restricts_the_key() {
        let mut k = test_key("rsa-1");
        k["alg"] = json!("PS256");
        let parsed = parse_value(&json!({"keys": [k]})).unwrap();
        let jwk = parsed.keys.by_kid("rsa-1").unwrap();
        assert!(jwk.accepts(Alg::Ps256));
        assert!(!jwk.accepts(Alg::Rs256));
    }

    #[test]
    fn select_without_kid_needs_exactly_one_fitting_key() {
        let set = parse_value(&testkit::jwks()).unwrap().keys;
        assert_eq!(set.select(None, Alg::EdDsa).unwrap().kid.as_deref(), Some("ed-1"));
        let mut second = test_key("ec-1");
        second["kid"] = json!("ec-2");
        let two_ec = parse_value(&json!({"keys": [test_key("ec-1"), second]})).unwrap().keys;
        assert!(two_ec.select(None, Alg::Es256).is_none());
        assert!(two_ec.select(Some("ec-2"), Alg::Es256).is_some());
    }

    #[test]
    fn padded_members_are_tolerated() {
        let mut k = test_key("ed-1");
        k["x"] = json!(format!("{}=", k["x"].as_str().unwrap()));
        assert!(parse_value(&json!({"keys": [k]})).is_ok());
    }
}
