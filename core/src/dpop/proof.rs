//! One DPoP proof (RFC 9449 §4): parsed strictly, then checked against the request,
//! the access token and the key the token is bound to, each check with its own
//! explanation. Nothing here touches shared state: the replay table and the nonce
//! are the caller's ([`super::replay`], [`super::nonce`]).
//!
//! | RFC 9449 §4.3 | where |
//! |---|---|
//! | 1. one `DPoP` header | the caller (it sees the header map) |
//! | 2. a single well-formed JWT | [`parse`] |
//! | 3. every required claim (`jti`, `htm`, `htu`, `iat`, and `ath` with a token) | [`parse`] |
//! | 4. `typ` is `dpop+jwt` | [`parse`] |
//! | 5. an asymmetric `alg` the issuer accepts | [`parse`] (and the key must fit it: [`Proof::import_key`]) |
//! | 6. the signature verifies with `jwk` | [`Proof::verify`] |
//! | 7. `jwk` holds no private key | [`parse`] |
//! | 8. `htm` is the method | [`Proof::check_request`] |
//! | 9. `htu` is the URI, query and fragment ignored | [`Proof::check_request`] |
//! | 10. the nonce | the caller, with [`super::nonce`] |
//! | 11. `iat` within the window | [`Proof::check_request`] |
//! | 12. `ath` is the token's hash; the token's key is `jwk` | [`Proof::check_request`], [`Proof::check_binding`] |

use base64::Engine as _;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::crypto::alg::{Alg, PublicKey};
use crate::crypto::constant_time_eq;
use crate::keys::jwks::{self, Jwk};
use crate::reason::{Reason, Rejection};
use crate::token::jws::{self, ParseError};

use super::config::DpopSettings;
use super::thumbprint;

/// Largest proof accepted: a proof with an RSA-4096 key is under 2 KB.
pub const MAX_PROOF_BYTES: usize = 8 * 1024;
/// Longest `jti` accepted (RFC 9449 §11.1: refuse unnecessarily large ones).
pub const MAX_JTI_BYTES: usize = 256;
/// Longest `nonce` accepted.
pub const MAX_NONCE_BYTES: usize = 256;
/// Largest NumericDate accepted: 9999-12-31T23:59:59Z (as for tokens).
const MAX_NUMERIC_DATE: i64 = 253_402_300_799;
/// The JOSE `typ` of a DPoP proof (RFC 9449 §4.2).
pub const TYP: &str = "dpop+jwt";
/// JWK members that only a private key has (RFC 7518 §6.2.2, §6.3.2, §6.4; RFC 8037 §2).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

fn invalid(detail: impl Into<String>) -> Rejection {
    Rejection::new(Reason::InvalidDpopProof, detail)
}

/// A proof that passed the checks it can pass on its own: not yet held to a request,
/// a token or a key.
#[derive(Debug, Clone)]
pub struct Proof<'a> {
    pub alg: Alg,
    /// The RFC 7638 thumbprint of `jwk`.
    pub jkt: String,
    pub jti: String,
    pub htm: String,
    pub htu: String,
    pub iat: i64,
    pub ath: String,
    pub nonce: Option<String>,
    jwk: Map<String, Value>,
    signing_input: &'a str,
    signature: Vec<u8>,
}

/// What a proof is held to: the request it came with and the token beside it.
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    /// `:method`, as sent.
    pub method: &'a str,
    /// The request URI, normalized ([`crate::uri::normalized_request_uri`]); `None`
    /// when the request's scheme, authority or path do not make one.
    pub uri: Option<&'a str>,
    /// The access token, as presented.
    pub token: &'a str,
    /// Unix seconds.
    pub now: i64,
    /// The issuer's clock skew, seconds.
    pub skew: u64,
}

/// Parses a `DPoP` header value (§4.3 items 2, 3, 4, 5, 7).
pub fn parse<'a>(value: &'a str, settings: &DpopSettings) -> Result<Proof<'a>, Rejection> {
    let jws = jws::parse_jws(value, MAX_PROOF_BYTES).map_err(|err| {
        invalid(match err {
            ParseError::HeaderJson(_) => "the proof header is not a valid JOSE header".to_owned(),
            ParseError::PayloadJson(_) => "the proof payload is not a JSON object".to_owned(),
            other => format!("the proof is not a compact JWS: {other}"),
        })
    })?;
    let typ = jws.header.typ.as_deref().unwrap_or_default();
    if !(typ.eq_ignore_ascii_case(TYP) || typ.eq_ignore_ascii_case("application/dpop+jwt")) {
        return Err(invalid("the proof's typ is not dpop+jwt"));
    }
    let alg = jws
        .header
        .alg
        .parse::<Alg>()
        .ok()
        .filter(|alg| settings.algorithms.contains(alg))
        .ok_or_else(|| invalid(format!("the proof's alg is not one of {}", settings.algs())))?;
    let jwk = match jws.jwk {
        Some(Value::Object(jwk)) => jwk,
        Some(_) => return Err(invalid("the proof's jwk is not a JSON object")),
        None => return Err(invalid("the proof has no jwk")),
    };
    if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
        return Err(invalid("the proof's jwk contains a private key"));
    }
    let jkt = thumbprint::jkt(&jwk).map_err(|err| invalid(format!("the proof's {err}")))?;
    let claims =
        jws::claim_set(&jws.payload).map_err(|_| invalid("the proof payload is not a JSON object"))?;
    let jti = string_claim(&claims, "jti", MAX_JTI_BYTES)?;
    let htm = string_claim(&claims, "htm", 32)?;
    let htu = string_claim(&claims, "htu", MAX_PROOF_BYTES)?;
    let ath = string_claim(&claims, "ath", 64)?;
    let iat = numeric_date(&claims, "iat")?;
    let nonce = match claims.get("nonce") {
        None => None,
        Some(Value::String(n)) if !n.is_empty() && n.len() <= MAX_NONCE_BYTES => Some(n.clone()),
        Some(_) => return Err(invalid("the proof's nonce is not a string of 1 to 256 bytes")),
    };
    Ok(Proof {
        alg,
        jkt,
        jti,
        htm,
        htu,
        iat,
        ath,
        nonce,
        jwk,
        signing_input: jws.signing_input,
        signature: jws.signature,
    })
}

fn string_claim(claims: &Map<String, Value>, name: &str, max: usize) -> Result<String, Rejection> {
    match claims.get(name) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= max => Ok(s.clone()),
        Some(Value::String(s)) if !s.is_empty() => Err(invalid(format!("the proof's {name} is too long"))),
        Some(_) => Err(invalid(format!("the proof's {name} is not a non-empty string"))),
        None => Err(invalid(format!("the proof has no {name}"))),
    }
}

/// A NumericDate: a JSON number of seconds (fractions truncated), not negative.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<i64, Rejection> {
    let n = match claims.get(name) {
        Some(Value::Number(n)) => n,
        Some(_) => return Err(invalid(format!("the proof's {name} is not a NumericDate"))),
        None => return Err(invalid(format!("the proof has no {name}"))),
    };
    let seconds = match (n.as_i64(), n.as_f64()) {
        (Some(i), _) => i,
        (None, Some(f)) if f.is_finite() && (0.0..=MAX_NUMERIC_DATE as f64).contains(&f) => f.trunc() as i64,
        _ => return Err(invalid(format!("the proof's {name} is not a NumericDate"))),
    };
    if !(0..=MAX_NUMERIC_DATE).contains(&seconds) {
        return Err(invalid(format!("the proof's {name} is not a NumericDate")));
    }
    Ok(seconds)
}

/// base64url(SHA-256(token)): the `ath` a proof for `token` carries (RFC 9449 §4.2).
pub fn token_hash(token: &str) -> String {
    crate::b64::URL_SAFE_STRICT.encode(Sha256::digest(token.as_bytes()))
}

impl Proof<'_> {
    /// §4.3 items 8, 9, 11 and the first half of 12: method, URI, time, token hash.
    pub fn check_request(&self, presented: &Presented<'_>, settings: &DpopSettings) -> Result<(), Rejection> {
        if self.htm != presented.method {
            return Err(invalid("the proof's htm is not the request method"));
        }
        let htu = crate::uri::normalized_http_uri(&self.htu);
        if htu.is_none() || htu.as_deref() != presented.uri {
            return Err(invalid("the proof's htu is not the request URI"));
        }
        let skew = i64::try_from(presented.skew).unwrap_or(i64::MAX);
        let max_age = i64::try_from(settings.max_age_seconds).unwrap_or(i64::MAX);
        if self.iat > presented.now.saturating_add(skew) {
            return Err(invalid("the proof was issued in the future (iat)"));
        }
        if presented.now > self.iat.saturating_add(max_age).saturating_add(skew) {
            return Err(invalid("the proof is too old (iat)"));
        }
        if !constant_time_eq(self.ath.as_bytes(), token_hash(presented.token).as_bytes()) {
            return Err(invalid("the proof's ath is not the hash of the access token"));
        }
        Ok(())
    }

    /// The second half of §4.3 item 12: the token is bound (`cnf.jkt`) to this key.
    pub fn check_binding(&self, bound_jkt: &str) -> Result<(), Rejection> {
        if constant_time_eq(bound_jkt.as_bytes(), self.jkt.as_bytes()) {
            Ok(())
        } else {
            Err(Rejection::new(Reason::DpopKeyMismatch, "the token is bound to another DPoP key"))
        }
    }

    /// Imports `jwk` as every JWKS key is imported, and checks that `alg` fits it.
    pub fn import_key(&self) -> Result<Jwk, Rejection> {
        let key = jwks::import_key(Value::Object(self.jwk.clone()))
            .map_err(|why| invalid(format!("the proof's jwk is not a usable public key: {why}")))?;
        if !key.accepts(self.alg) {
            return Err(invalid(format!(
                "the proof's alg {} does not fit its {} key",
                self.alg,
                key.key.kind()
            )));
        }
        Ok(key)
    }

    /// §4.3 item 6: the signature verifies with the proof's own key.
    pub fn verify(&self, key: &PublicKey) -> bool {
        self.alg.verify(key, self.signing_input.as_bytes(), &self.signature)
    }

    /// The last second this proof is accepted: until then its `jti` must be remembered.
    pub fn accepted_until(&self, settings: &DpopSettings, skew: u64, now: i64) -> i64 {
        let last = self
            .iat
            .saturating_add(i64::try_from(settings.max_age_seconds).unwrap_or(i64::MAX))
            .saturating_add(i64::try_from(skew).unwrap_or(i64::MAX));
        last.max(now)
    }
}
