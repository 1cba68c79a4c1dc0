//! Token verification: from a raw bearer string to a verified machine identity.
//!
//! Order matters for cost and for clarity of the reason code: parse, algorithm
//! allow-list, issuer selection, key lookup, then the cheap claim checks, and only
//! then the signature. A token that would fail anyway never reaches the crypto.
//! Claims are only *returned* after the signature verified.

pub mod cache;
pub mod flood_guard;
pub mod identity;
pub mod issuer;
pub mod liveness;

use serde_json::{Map, Value};

use crate::crypto::alg::Alg;
use crate::keys::jwks::KeySet;
pub use crate::keys::KeyLookup;
use crate::profile::TokenFacts;
use crate::reason::{Check, Reason, Rejection, SeenToken};
use crate::token::jws::{self, ParseError, UnverifiedToken};
use crate::verify::cache::TokenCache;
use issuer::Issuer;

/// Largest NumericDate accepted: 9999-12-31T23:59:59Z. Beyond is not a date a
/// real issuer writes, and would overflow date arithmetic downstream.
pub const MAX_NUMERIC_DATE: i64 = 253_402_300_799;

/// A token that passed every check. Serializable so the shared token cache can hand
/// it to another worker (see `token_cache`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Verified {
    /// Index into `Config::issuers`.
    pub issuer: usize,
    pub subject: String,
    /// The identity forwarded upstream and used for authorization and quotas: what
    /// the issuer's profile makes of the token (`sub` for `generic`).
    pub identity: String,
    pub kid: Option<String>,
    /// The key that checked the signature: a cached verification holds only while
    /// the issuer still publishes this very key (see [`crate::keys::jwks::KeyFingerprint`]).
    pub key: crate::keys::jwks::KeyFingerprint,
    pub alg: Alg,
    pub expires_at: i64,
    pub claims: Map<String, Value>,
}

/// What a token is verified against: the trusted issuers and the token size limit,
/// and — for the verified-token cache — the cache and the fingerprint of the
/// configuration they came from. A view of the configuration, made by
/// `Config::trust`.
#[derive(Debug, Clone, Copy)]
pub struct Trust<'a> {
    pub issuers: &'a [Issuer],
    pub max_token_bytes: usize,
    pub cache: Option<&'a TokenCache>,
    /// A digest of the configuration bytes: cached verifications made under another
    /// configuration are not reused.
    pub fingerprint: u64,
}

impl<'a> Trust<'a> {
    /// The issuer whose `iss` is exactly `iss`.
    pub fn issuer_by_iss(&self, iss: &str) -> Option<(usize, &'a Issuer)> {
        self.issuers.iter().enumerate().find(|(_, i)| i.issuer == iss)
    }
}

/// Verifies `raw` (the token without its scheme prefix) at time `now` (Unix seconds).
pub fn verify<K: KeyLookup + ?Sized>(
    trust: Trust<'_>,
    keys: &K,
    raw: &str,
    now: i64,
) -> Result<Verified, Rejection> {
    let token = jws::parse(raw, trust.max_token_bytes)
        .map_err(|e| Rejection::new(Reason::MalformedToken, parse_detail(&e)).at(Check::Parse))?;
    // A token that parsed says what it is even when it fails: the refusal carries it,
    // so the decision log and the human-route check never parse it again.
    let verified = verify_parsed(trust, keys, &token, now).map_err(|r| r.seen(seen(trust, keys, &token)))?;
    let (index, checked, alg) = verified;
    Ok(Verified {
        issuer: index,
        subject: checked.subject,
        identity: checked.identity,
        kid: token.header.kid.clone(),
        key: checked.key,
        alg,
        expires_at: checked.expires_at,
        claims: token.claims,
    })
}

fn verify_parsed<K: KeyLookup + ?Sized>(
    trust: Trust<'_>,
    keys: &K,
    token: &UnverifiedToken<'_>,
    now: i64,
) -> Result<(usize, CheckedClaims, Alg), Rejection> {
    let alg: Alg =
        token.header.alg.parse().map_err(|_| {
            Rejection::new(Reason::DisallowedAlg, "algorithm not accepted").at(Check::Algorithm)
        })?;
    let kid = token.header.kid.as_deref();
    let (index, issuer) = select_issuer(trust, keys, &token.claims, kid).map_err(|r| r.at(Check::Issuer))?;
    let checked =
        verify_for_issuer(issuer, keys.key_set(index), token, alg, now).map_err(|r| r.for_issuer(index))?;
    Ok((index, checked, alg))
}

/// What a parsed token said about itself (see [`SeenToken`]).
fn seen<K: KeyLookup + ?Sized>(trust: Trust<'_>, keys: &K, token: &UnverifiedToken<'_>) -> SeenToken {
    let kid = token.header.kid.as_deref();
    let kid_ours = kid.is_some_and(|kid| {
        (0..trust.issuers.len()).any(|i| keys.key_set(i).is_some_and(|s| s.by_kid(kid).is_some()))
    });
    let ours = match token.claims.get("iss") {
        Some(Value::String(iss)) => Some(kid_ours || trust.issuer_by_iss(iss).is_some()),
        None => Some(kid_ours),
        Some(_) => None,
    };
    SeenToken { kid: token.header.kid.clone(), ours }
}

/// Everything after issuer selection: algorithm, `typ`, key, claims and the
/// profile's shape, then the signature, then the profile's allowlists (only for an
/// authentic token, so that forged tokens cannot probe them).
fn verify_for_issuer(
    issuer: &Issuer,
    key_set: Option<&KeySet>,
    token: &UnverifiedToken<'_>,
    alg: Alg,
    now: i64,
) -> Result<CheckedClaims, Rejection> {
    if !issuer.algorithms.contains(&alg) {
        return Err(Rejection::new(Reason::DisallowedAlg, format!("{alg} is not accepted for this issuer"))
            .at(Check::Algorithm));
    }
    if let Some(typ) = &issuer.typ {
        typ.check(token.header.typ.as_deref()).map_err(|r| r.at(Check::TokenType))?;
    }
    let key_set = key_set.ok_or_else(|| {
        Rejection::new(Reason::KeysUnavailable, "issuer keys are not available").at(Check::Key)
    })?;
    let jwk = key_set.select(token.header.kid.as_deref(), alg).ok_or_else(|| {
        Rejection::new(Reason::UnknownKid, "no issuer key matches the token kid").at(Check::Key)
    })?;
    if !jwk.accepts(alg) {
        return Err(Rejection::new(
            Reason::DisallowedAlg,
            format!("{alg} does not fit the {} key", jwk.key.kind()),
        )
        .at(Check::Key));
    }
    let mut checked = check_claims(issuer, &token.claims, now).map_err(|r| r.at(Check::Claims))?;
    let facts = TokenFacts {
        subject: &checked.subject,
        claims: &token.claims,
        expires_at: checked.expires_at,
        issued_at: checked.issued_at,
    };
    let identity = issuer.profile.identity(&facts).map_err(|r| r.at(Check::Profile))?;
    if !alg.verify(&jwk.key, token.signing_input.as_bytes(), &token.signature) {
        return Err(Rejection::new(Reason::BadSignature, "signature does not verify").at(Check::Signature));
    }
    issuer.profile.admit(&facts).map_err(|r| r.at(Check::Allowlists))?;
    checked.identity = identity;
    checked.key = jwk.fingerprint;
    Ok(checked)
}

fn parse_detail(err: &ParseError) -> String {
    // Our own wording only: serde messages may quote token bytes.
    match err {
        ParseError::HeaderJson(_) => "token header is not a valid JOSE header".into(),
        ParseError::PayloadJson(_) => "token payload is not a JSON object".into(),
        other => other.to_string(),
    }
}

/// Picks the issuer by the (still unverified) `iss`. The peek only selects a key
/// set; `iss` is re-checked against that issuer by construction.
fn select_issuer<'c, K: KeyLookup + ?Sized>(
    trust: Trust<'c>,
    keys: &K,
    claims: &Map<String, Value>,
    kid: Option<&str>,
) -> Result<(usize, &'c Issuer), Rejection> {
    let iss = match claims.get("iss") {
        None => return Err(Rejection::new(Reason::MissingClaim, "token has no iss")),
        Some(Value::String(iss)) => iss,
        Some(_) => return Err(Rejection::new(Reason::MalformedToken, "iss is not a string")),
    };
    if let Some(found) = trust.issuer_by_iss(iss) {
        return Ok(found);
    }
    // Not an issuer we know. If the token names a key one of our issuers published,
    // someone is presenting that issuer's key under another name: say so.
    let known_kid = kid.is_some_and(|kid| {
        (0..trust.issuers.len()).any(|i| keys.key_set(i).is_some_and(|set| set.by_kid(kid).is_some()))
    });
    if known_kid {
        Err(Rejection::new(Reason::WrongIssuer, "iss does not match the issuer of the signing key"))
    } else {
        Err(Rejection::new(Reason::UnknownIssuer, "iss is not a configured issuer"))
    }
}

struct CheckedClaims {
    subject: String,
    /// Filled in by the profile.
    identity: String,
    /// Filled in once the signature verified.
    key: crate::keys::jwks::KeyFingerprint,
    expires_at: i64,
    issued_at: Option<i64>,
}

fn check_claims(issuer: &Issuer, claims: &Map<String, Value>, now: i64) -> Result<CheckedClaims, Rejection> {
    let skew = i64::try_from(issuer.clock_skew_seconds).unwrap_or(i64::MAX);

    let exp = numeric_date(claims, "exp")?
        .ok_or_else(|| Rejection::new(Reason::MissingClaim, "token has no exp"))?;
    if now >= exp.saturating_add(skew) {
        return Err(Rejection::new(Reason::Expired, "token expired"));
    }
    if let Some(nbf) = numeric_date(claims, "nbf")? {
        if now.saturating_add(skew) < nbf {
            return Err(Rejection::new(Reason::NotYetValid, "token not valid yet (nbf)"));
        }
    }
    let issued_at = numeric_date(claims, "iat")?;
    if let Some(iat) = issued_at {
        if now.saturating_add(skew) < iat {
            return Err(Rejection::new(Reason::NotYetValid, "token issued in the future (iat)"));
        }
    }

    match claims.get("aud") {
        None => return Err(Rejection::new(Reason::MissingClaim, "token has no aud")),
        Some(aud) => {
            let audiences = audiences(aud).ok_or_else(|| {
                Rejection::new(Reason::MalformedToken, "aud is not a string or an array of strings")
            })?;
            if !audiences.iter().any(|a| issuer.audiences.iter().any(|want| want == a)) {
                return Err(Rejection::new(Reason::WrongAudience, "token audience is not accepted"));
            }
        }
    }

    let subject = match claims.get("sub") {
        None => return Err(Rejection::new(Reason::MissingClaim, "token has no sub")),
        Some(Value::String(sub)) if !sub.is_empty() => sub.clone(),
        Some(_) => return Err(Rejection::new(Reason::MalformedToken, "sub is not a non-empty string")),
    };
    Ok(CheckedClaims { subject, identity: String::new(), key: [0; 32], expires_at: exp, issued_at })
}

/// Reads a NumericDate (RFC 7519 §2): a JSON number of seconds, fractions allowed
/// and truncated. Strings, negative values and dates past year 9999 are malformed.
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, Rejection> {
    let malformed = || Rejection::new(Reason::MalformedToken, format!("{name} is not a valid NumericDate"));
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let Value::Number(n) = value else {
        return Err(malformed());
    };
    let seconds = match (n.as_i64(), n.as_f64()) {
        (Some(i), _) => i,
        (None, Some(f)) if f.is_finite() && (0.0..=MAX_NUMERIC_DATE as f64).contains(&f) => f.trunc() as i64,
        _ => return Err(malformed()),
    };
    if !(0..=MAX_NUMERIC_DATE).contains(&seconds) {
        return Err(malformed());
    }
    Ok(Some(seconds))
}

/// `aud` as RFC 7519 §4.1.3 allows it: one string, or an array of strings.
fn audiences(aud: &Value) -> Option<Vec<&str>> {
    match aud {
        Value::String(s) => Some(vec![s.as_str()]),
        Value::Array(items) => items.iter().map(Value::as_str).collect(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::Config;
    use crate::keys::jwks;
    use crate::testkit::{self, b64, kid_for};

    const NOW: i64 = 1_800_000_000;
    const ISS: &str = "https://issuer.example";

    fn config(algorithms: &[&str]) -> Config {
        Config::from_json(
            json!({"issuers": [{
                "name": "ci", "issuer": ISS, "audiences": ["nhi-gateway", "other"],
                "jwks": {"cluster": "c", "authority": "a", "path": "/jwks.json"},
                "algorithms": algorithms, "clock_skew_seconds": 30
            }]})
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    fn all_algs() -> Config {
        config(&["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"])
    }

    fn keys() -> Vec<Option<KeySet>> {
        vec![Some(jwks::parse(testkit::jwks().to_string().as_bytes()).unwrap().keys)]
    }

    fn claims() -> serde_json::Value {
        json!({"iss": ISS, "sub": "system:serviceaccount:ci:deployer", "aud": "nhi-gateway",
               "iat": NOW - 10, "exp": NOW + 300})
    }

    fn token_with(alg: Alg, claims: serde_json::Value) -> String {
        testkit::token(alg, &json!({"alg": alg.name(), "kid": kid_for(alg), "typ": "JWT"}), &claims)
    }

    fn reason(cfg: &Config, token: &str) -> Reason {
        verify(cfg.trust(), keys().as_slice(), token, NOW).unwrap_err().reason
    }

    #[test]
    fn every_algorithm_verifies() {
        let cfg = all_algs();
        for alg in Alg::ALL {
            let v = verify(cfg.trust(), keys().as_slice(), &token_with(alg, claims()), NOW)
                .unwrap_or_else(|e| panic!("{alg}: {e}"));
            assert_eq!(v.subject, "system:serviceaccount:ci:deployer");
            assert_eq!(v.alg, alg);
            assert_eq!(v.kid.as_deref(), Some(kid_for(alg)));
            assert_eq!(v.expires_at, NOW + 300);
            assert_eq!(v.issuer, 0);
        }
    }

    #[test]
    fn tampered_payload_or_signature_is_bad_signature() {
        let cfg = all_algs();
        for alg in Alg::ALL {
            let good = token_with(alg, claims());
            let (input, sig) = good.rsplit_once('.').unwrap();
            let mut sig = base64::Engine::decode(&crate::b64::URL_SAFE_STRICT, sig).unwrap();
            sig[5] ^= 1;
            assert_eq!(reason(&cfg, &format!("{input}.{}", b64(&sig))), Reason::BadSignature, "{alg}");

            let mut other = claims();
            other["sub"] = json!("admin");
            let forged_payload = format!(
                "{}.{}.{}",
                input.split('.').next().unwrap(),
                b64(other.to_string()),
                good.rsplit_once('.').unwrap().1
            );
            assert_eq!(reason(&cfg, &forged_payload), Reason::BadSignature, "{alg}");
        }
    }

    #[test]
    fn signature_of_wrong_length_is_bad_signature() {
        let cfg = all_algs();
        for alg in Alg::ALL {
            let good = token_with(alg, claims());
            let input = good.rsplit_once('.').unwrap().0;
            assert_eq!(reason(&cfg, &format!("{input}.{}", b64([1u8; 17]))), Reason::BadSignature, "{alg}");
            assert_eq!(reason(&cfg, &format!("{input}.")), Reason::BadSignature, "{alg}");
        }
    }

    #[test]
    fn alg_none_and_hmac_are_disallowed() {
        let cfg = all_algs();
        for alg in ["none", "None", "NONE", "HS256", "HS384", "HS512", "", "rs256"] {
            let header = json!({"alg": alg, "kid": "rsa-1"});
            let t = format!("{}.{}.", b64(header.to_string()), b64(claims().to_string()));
            assert_eq!(reason(&cfg, &t), Reason::DisallowedAlg, "{alg}");
        }
    }

    #[test]
    fn hs256_keyed_with_the_public_key_is_disallowed() {
        use hmac::Mac;
        // The classic confusion attack: HMAC with the RSA public key (as the JWKS shows it) as secret.
        let public_key_bytes = testkit::jwks()["keys"][0]["n"].as_str().unwrap().as_bytes().to_vec();
        let header = json!({"alg": "HS256", "kid": "rsa-1"});
        let input = format!("{}.{}", b64(header.to_string()), b64(claims().to_string()));
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&public_key_bytes).unwrap();
        mac.update(input.as_bytes());
        let t = format!("{input}.{}", b64(mac.finalize().into_bytes()));
        assert_eq!(reason(&all_algs(), &t), Reason::DisallowedAlg);
    }

    #[test]
    fn algorithm_outside_the_issuer_list_is_disallowed() {
        let cfg = config(&["RS256", "ES256"]);
        assert_eq!(reason(&cfg, &token_with(Alg::Rs384, claims())), Reason::DisallowedAlg);
        assert_eq!(reason(&cfg, &token_with(Alg::EdDsa, claims())), Reason::DisallowedAlg);
        assert!(verify(cfg.trust(), keys().as_slice(), &token_with(Alg::Rs256, claims()), NOW).is_ok());
    }

    #[test]
    fn alg_that_does_not_fit_the_key_is_disallowed() {
        // ES256 header pointing at the RSA key: no verifier exists for that pair.
        let t = testkit::token(Alg::Es256, &json!({"alg": "ES256", "kid": "rsa-1"}), &claims());
        assert_eq!(reason(&all_algs(), &t), Reason::DisallowedAlg);
    }

    #[test]
    fn unknown_kid() {
        let t = testkit::token(Alg::Rs256, &json!({"alg": "RS256", "kid": "nope"}), &claims());
        assert_eq!(reason(&all_algs(), &t), Reason::UnknownKid);
    }

    #[test]
    fn missing_kid_uses_the_only_fitting_key() {
        let t = testkit::token(Alg::Es256, &json!({"alg": "ES256"}), &claims());
        assert!(verify(all_algs().trust(), keys().as_slice(), &t, NOW).is_ok());
    }

    #[test]
    fn unknown_and_wrong_issuer() {
        let mut c = claims();
        c["iss"] = json!("https://evil.example");
        // Signed with a key our issuer published, but claiming another iss.
        assert_eq!(reason(&all_algs(), &token_with(Alg::Rs256, c.clone())), Reason::WrongIssuer);
        // Neither iss nor kid known.
        let t = testkit::token(Alg::Rs256, &json!({"alg": "RS256", "kid": "theirs"}), &c);
        assert_eq!(reason(&all_algs(), &t), Reason::UnknownIssuer);
        c.as_object_mut().unwrap().remove("iss");
        assert_eq!(reason(&all_algs(), &token_with(Alg::Rs256, c.clone())), Reason::MissingClaim);
        c["iss"] = json!(["https://issuer.example"]);
        assert_eq!(reason(&all_algs(), &token_with(Alg::Rs256, c)), Reason::MalformedToken);
    }

    #[test]
    fn expiry_with_clock_skew() {
        let cfg = all_algs();
        let at = |exp: i64| {
            let mut c = claims();
            c["exp"] = json!(exp);
            token_with(Alg::Es256, c)
        };
        assert!(verify(cfg.trust(), keys().as_slice(), &at(NOW - 29), NOW).is_ok());
        assert_eq!(reason(&cfg, &at(NOW - 30)), Reason::Expired);
        assert_eq!(reason(&cfg, &at(NOW - 10_000)), Reason::Expired);
    }

    #[test]
    fn not_before_and_issued_at_in_the_future() {
        let cfg = all_algs();
        let mut c = claims();
        c["nbf"] = json!(NOW + 30);
        assert!(verify(cfg.trust(), keys().as_slice(), &token_with(Alg::Es256, c.clone()), NOW).is_ok());
        c["nbf"] = json!(NOW + 31);
        assert_eq!(reason(&cfg, &token_with(Alg::Es256, c)), Reason::NotYetValid);
        let mut c = claims();
        c["iat"] = json!(NOW + 120);
        assert_eq!(reason(&cfg, &token_with(Alg::Es256, c)), Reason::NotYetValid);
    }

    #[test]
    fn numeric_dates_must_be_numbers_in_range() {
        let cfg = all_algs();
        for (claim, value) in [
            ("exp", json!("1800000300")),
            ("exp", json!(-1)),
            ("exp", json!(MAX_NUMERIC_DATE + 1)),
            ("exp", json!(1e300)),
            ("exp", json!(null)),
            ("nbf", json!("0")),
            ("iat", json!(true)),
            ("iat", json!(1.5e19)),
        ] {
            let mut c = claims();
            c[claim] = value.clone();
            assert_eq!(reason(&cfg, &token_with(Alg::Es256, c)), Reason::MalformedToken, "{claim}={value}");
        }
        let mut c = claims();
        c["exp"] = json!((NOW + 100) as f64 + 0.5);
        assert!(verify(cfg.trust(), keys().as_slice(), &token_with(Alg::Es256, c), NOW).is_ok());
    }

    #[test]
    fn missing_exp_aud_or_sub() {
        for claim in ["exp", "aud", "sub"] {
            let mut c = claims();
            c.as_object_mut().unwrap().remove(claim);
            assert_eq!(reason(&all_algs(), &token_with(Alg::Es256, c)), Reason::MissingClaim, "{claim}");
        }
    }

    #[test]
    fn audience_forms() {
        let cfg = all_algs();
        let with = |aud: serde_json::Value| {
            let mut c = claims();
            c["aud"] = aud;
            token_with(Alg::Es256, c)
        };
        assert!(verify(cfg.trust(), keys().as_slice(), &with(json!(["x", "other"])), NOW).is_ok());
        assert_eq!(reason(&cfg, &with(json!("someone-else"))), Reason::WrongAudience);
        assert_eq!(reason(&cfg, &with(json!([]))), Reason::WrongAudience);
        assert_eq!(reason(&cfg, &with(json!(7))), Reason::MalformedToken);
        assert_eq!(reason(&cfg, &with(json!([["nhi-gateway"]]))), Reason::MalformedToken);
    }

    #[test]
    fn keys_not_loaded_is_unavailable_not_unauthenticated() {
        let none: Vec<Option<KeySet>> = vec![None];
        let r =
            verify(all_algs().trust(), none.as_slice(), &token_with(Alg::Rs256, claims()), NOW).unwrap_err();
        assert_eq!(r.reason, Reason::KeysUnavailable);
        assert_eq!(r.reason.status(), 503);
    }

    #[test]
    fn oversized_and_garbage_tokens_are_malformed() {
        let cfg = all_algs();
        assert_eq!(reason(&cfg, &"a".repeat(9000)), Reason::MalformedToken);
        assert_eq!(reason(&cfg, "not.a.jwt"), Reason::MalformedToken);
        assert_eq!(reason(&cfg, "only-one-segment"), Reason::MalformedToken);
    }

    /// Three issuers with different profiles, each selected by `iss`.
    fn profiled() -> Config {
        Config::from_json(
            json!({"issuers": [
                {"name": "ci", "issuer": ISS, "audiences": ["nhi-gateway"],
                 "jwks": {"cluster": "c", "authority": "a", "path": "/jwks.json"},
                 "typ": "at+jwt",
                 "profile": {"type": "generic", "claims": [{"claim": "scope", "contains": "deploy"}]}},
                {"name": "k8s", "issuer": "https://k8s.example", "audiences": ["nhi-gateway"],
                 "jwks": {"cluster": "c", "authority": "a", "path": "/k8s"},
                 "profile": {"type": "kubernetes", "namespaces": ["ci"]}},
                {"name": "mesh", "issuer": "https://spire.example", "audiences": ["nhi-gateway"],
                 "jwks": {"cluster": "c", "authority": "a", "path": "/spire"},
                 "profile": {"type": "spiffe", "trust_domains": ["prod.example"]}}
            ]})
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    fn three_key_sets() -> Vec<Option<KeySet>> {
        let svid = {
            let mut doc = testkit::jwks();
            for k in doc["keys"].as_array_mut().unwrap() {
                k["use"] = json!("jwt-svid");
            }
            jwks::parse_for(doc.to_string().as_bytes(), crate::keys::jwks::KeyUse::JwtSvid).unwrap().keys
        };
        vec![keys().remove(0), keys().remove(0), Some(svid)]
    }

    fn profiled_verify(header: serde_json::Value, claims: serde_json::Value) -> Result<Verified, Reason> {
        let t = testkit::token(Alg::Es256, &header, &claims);
        verify(profiled().trust(), three_key_sets().as_slice(), &t, NOW).map_err(|r| r.reason)
    }

    fn es256(typ: &str) -> serde_json::Value {
        json!({"alg": "ES256", "kid": "ec-1", "typ": typ})
    }

    #[test]
    fn each_issuer_applies_its_own_profile_and_identity() {
        let mut generic = claims();
        generic["scope"] = json!("read deploy");
        let v = profiled_verify(es256("at+jwt"), generic).unwrap();
        assert_eq!((v.issuer, v.identity.as_str()), (0, "system:serviceaccount:ci:deployer"));

        let k8s = json!({"iss": "https://k8s.example", "sub": "system:serviceaccount:ci:deployer",
                         "aud": "nhi-gateway", "iat": NOW - 10, "exp": NOW + 300,
                         "kubernetes.io": {"namespace": "ci", "serviceaccount": {"name": "deployer"}}});
        let v = profiled_verify(es256("JWT"), k8s).unwrap();
        assert_eq!(
            (v.issuer, v.identity.as_str(), v.subject.as_str()),
            (1, "ci/deployer", "system:serviceaccount:ci:deployer")
        );

        let svid = json!({"iss": "https://spire.example", "sub": "spiffe://prod.example/api",
                          "aud": "nhi-gateway", "exp": NOW + 300});
        let v = profiled_verify(json!({"alg": "ES256", "kid": "ec-1"}), svid).unwrap();
        assert_eq!((v.issuer, v.identity.as_str()), (2, "spiffe://prod.example/api"));
    }

    #[test]
    fn typ_is_checked_before_the_key() {
        let mut c = claims();
        c["scope"] = json!("deploy");
        assert_eq!(profiled_verify(es256("JWT"), c.clone()).unwrap_err(), Reason::WrongTokenType);
        // Even with a kid no key has: the header decides first.
        let header = json!({"alg": "ES256", "kid": "nope", "typ": "JWT"});
        assert_eq!(profiled_verify(header, c.clone()).unwrap_err(), Reason::WrongTokenType);
        assert!(profiled_verify(es256("application/at+jwt"), c).is_ok());
    }

    #[test]
    fn shape_is_checked_before_the_signature_and_allowlists_after() {
        let forge = |claims: serde_json::Value| {
            let good = testkit::token(Alg::Es256, &es256("JWT"), &claims);
            let (input, _) = good.rsplit_once('.').unwrap();
            format!("{input}.{}", b64([7u8; 64]))
        };
        let k8s = |sub: &str, ns: &str| {
            json!({"iss": "https://k8s.example", "sub": sub, "aud": "nhi-gateway", "exp": NOW + 300,
                   "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": "deployer"}}})
        };
        let reason_of =
            |t: &str| verify(profiled().trust(), three_key_sets().as_slice(), t, NOW).unwrap_err().reason;
        // A malformed shape costs no signature check.
        assert_eq!(reason_of(&forge(k8s("deployer", "ci"))), Reason::ProfileMismatch);
        // A forged token for a namespace outside the allowlist learns nothing about the list.
        let outside = k8s("system:serviceaccount:prod:deployer", "prod");
        assert_eq!(reason_of(&forge(outside.clone())), Reason::BadSignature);
        assert_eq!(profiled_verify(es256("JWT"), outside).unwrap_err(), Reason::ClaimNotAllowed);
    }

    #[test]
    fn a_refusal_names_the_check_that_refused() {
        use crate::reason::Check;
        let check = |cfg: &Config, t: &str| verify(cfg.trust(), keys().as_slice(), t, NOW).unwrap_err().check;
        let cfg = config(&["RS256", "ES256"]);
        assert_eq!(check(&cfg, "not.a.jwt"), Some(Check::Parse));
        assert_eq!(check(&cfg, &token_with(Alg::EdDsa, claims())), Some(Check::Algorithm));
        let mut other = claims();
        other["iss"] = json!("https://elsewhere.example");
        let t = testkit::token(Alg::Rs256, &json!({"alg": "RS256", "kid": "theirs"}), &other);
        assert_eq!(check(&cfg, &t), Some(Check::Issuer));
        let t = testkit::token(Alg::Rs256, &json!({"alg": "RS256", "kid": "nope"}), &claims());
        assert_eq!(check(&cfg, &t), Some(Check::Key));
        let mut late = claims();
        late["exp"] = json!(NOW - 3600);
        assert_eq!(check(&cfg, &token_with(Alg::Es256, late)), Some(Check::Claims));
        let good = token_with(Alg::Es256, claims());
        let forged = format!("{}.{}", good.rsplit_once('.').unwrap().0, b64([7u8; 64]));
        assert_eq!(check(&cfg, &forged), Some(Check::Signature));
        let profiled = profiled();
        let k8s = json!({"iss": "https://k8s.example", "sub": "system:serviceaccount:prod:x", "aud": "nhi-gateway",
                         "exp": NOW + 300, "kubernetes.io": {"namespace": "prod", "serviceaccount": {"name": "x"}}});
        let t = testkit::token(Alg::Es256, &es256("JWT"), &k8s);
        let r = verify(profiled.trust(), three_key_sets().as_slice(), &t, NOW).unwrap_err();
        assert_eq!((r.reason, r.check), (Reason::ClaimNotAllowed, Some(Check::Allowlists)));
        let mut shapeless = k8s.clone();
        shapeless["sub"] = json!("x");
        let t = testkit::token(Alg::Es256, &es256("JWT"), &shapeless);
        let r = verify(profiled.trust(), three_key_sets().as_slice(), &t, NOW).unwrap_err();
        assert_eq!(r.check, Some(Check::Profile));
        let t = testkit::token(Alg::Es256, &es256("JWT"), &claims());
        let r = verify(profiled.trust(), three_key_sets().as_slice(), &t, NOW).unwrap_err();
        assert_eq!((r.reason, r.check), (Reason::WrongTokenType, Some(Check::TokenType)));
    }

    #[test]
    fn spiffe_issuers_use_only_jwt_svid_keys() {
        // `rsa-1` is published with `use: sig`: a SPIFFE issuer skips it.
        let sig_keys = testkit::jwks().to_string();
        let parsed = jwks::parse_for(sig_keys.as_bytes(), crate::keys::jwks::KeyUse::JwtSvid).unwrap();
        assert!(parsed.keys.by_kid("rsa-1").is_none());
        assert_eq!(parsed.skipped.len(), 1);
        let svid = json!({"iss": "https://spire.example", "sub": "spiffe://prod.example/api",
                          "aud": "nhi-gateway", "exp": NOW + 300});
        assert_eq!(profiled_verify(es256("at+jwt"), svid).unwrap_err(), Reason::WrongTokenType);
    }

    #[test]
    fn details_never_echo_token_bytes() {
        let cfg = all_algs();
        let secretish = "c2VjcmV0LXRva2VuLWJ5dGVz";
        let header = format!("{{\"alg\":\"RS256\",\"kid\":{secretish}}}");
        let t = format!("{}.{}.{}", b64(header), b64(claims().to_string()), secretish);
        let r = verify(cfg.trust(), keys().as_slice(), &t, NOW).unwrap_err();
        assert_eq!(r.reason, Reason::MalformedToken);
        assert!(!r.detail.contains(secretish), "{}", r.detail);
    }
}
