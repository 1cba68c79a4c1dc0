//! The JOSE `typ` header check (RFC 8725 §3.11): explicit typing keeps one kind of
//! JWT from being accepted as another — an OpenID Connect ID token (`typ: JWT`)
//! presented as an access token (`typ: at+jwt`, RFC 9068), say.
//!
//! Media types compare case-insensitively, and a `typ` without a `/` means the same
//! as with `application/` in front (RFC 7515 §4.1.9): `at+jwt`, `AT+JWT` and
//! `application/at+jwt` are one value.

use serde::Deserialize;
use serde_json::Value;

use crate::error::ConfigError;
use crate::json::{self, FromJson};

use crate::reason::{Reason, Rejection};

/// Longest `typ` value accepted in the configuration.
pub const MAX_TYP_LEN: usize = 64;

/// `"typ": "at+jwt"` or `"typ": ["at+jwt", "application/at+jwt"]`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum RawTyp {
    One(String),
    Many(Vec<String>),
}

impl FromJson for RawTyp {
    fn from_json(value: Value, at: &str) -> Result<Self, ConfigError> {
        match value {
            Value::String(one) => Ok(RawTyp::One(one)),
            many @ Value::Array(_) => Vec::from_json(many, at).map(RawTyp::Many),
            other => Err(json::wrong_type(at, "a string or an array of strings", &other)),
        }
    }
}

impl RawTyp {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            RawTyp::One(one) => vec![one],
            RawTyp::Many(many) => many,
        }
    }
}

/// Which `typ` header values an issuer's tokens may carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypRule {
    /// Normalized (see [`normalize`]).
    allowed: Vec<String>,
    /// Whether a token without `typ` is refused.
    required: bool,
}

impl TypRule {
    /// The rule of `issuers[].typ`: the header must be present and one of `values`.
    /// `Err((index, why))` names the offending entry.
    pub fn configured(values: &[String]) -> Result<TypRule, (Option<usize>, &'static str)> {
        if values.is_empty() {
            return Err((None, "must name at least one type"));
        }
        let mut allowed = Vec::with_capacity(values.len());
        for (i, value) in values.iter().enumerate() {
            let valid = !value.is_empty()
                && value.len() <= MAX_TYP_LEN
                && value.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
            if !valid {
                return Err((
                    Some(i),
                    "must be a media type of at most 64 printable characters, e.g. \"at+jwt\"",
                ));
            }
            let normalized = normalize(value);
            if !allowed.contains(&normalized) {
                allowed.push(normalized);
            }
        }
        Ok(TypRule { allowed, required: true })
    }

    /// JWT-SVIDs: `typ` is optional, and when present `JWT` or `JOSE`
    /// (SPIFFE JWT-SVID §2.3).
    pub fn jwt_svid() -> TypRule {
        TypRule { allowed: vec!["jwt".into(), "jose".into()], required: false }
    }

    pub fn check(&self, typ: Option<&str>) -> Result<(), Rejection> {
        match typ {
            None if self.required => Err(Rejection::new(Reason::WrongTokenType, "token has no typ header")),
            None => Ok(()),
            Some(typ) if self.allowed.contains(&normalize(typ)) => Ok(()),
            Some(_) => {
                Err(Rejection::new(Reason::WrongTokenType, "token typ is not accepted for this issuer"))
            }
        }
    }
}

/// Lower case, with a leading `application/` removed (RFC 7515 §4.1.9).
fn normalize(typ: &str) -> String {
    let lower = typ.to_ascii_lowercase();
    match lower.strip_prefix("application/") {
        Some(rest) if !rest.contains('/') && !rest.is_empty() => rest.to_owned(),
        _ => lower,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(values: &[&str]) -> TypRule {
        TypRule::configured(&values.iter().map(|v| v.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn reason(rule: &TypRule, typ: Option<&str>) -> Option<Reason> {
        rule.check(typ).err().map(|r| r.reason)
    }

    #[test]
    fn compares_case_insensitively_with_optional_application_prefix() {
        let at = rule(&["at+jwt"]);
        for ok in ["at+jwt", "AT+JWT", "application/at+jwt", "Application/At+Jwt"] {
            assert_eq!(reason(&at, Some(ok)), None, "{ok}");
        }
        let prefixed = rule(&["application/at+jwt"]);
        assert_eq!(reason(&prefixed, Some("at+jwt")), None);
    }

    #[test]
    fn id_tokens_and_missing_typ_are_refused_when_configured() {
        let at = rule(&["at+jwt"]);
        assert_eq!(reason(&at, Some("JWT")), Some(Reason::WrongTokenType));
        assert_eq!(reason(&at, Some("application/jwt")), Some(Reason::WrongTokenType));
        assert_eq!(reason(&at, Some("at+jwt ")), Some(Reason::WrongTokenType));
        assert_eq!(reason(&at, Some("application/")), Some(Reason::WrongTokenType));
        assert_eq!(reason(&at, None), Some(Reason::WrongTokenType));
        let either = rule(&["at+jwt", "JWT"]);
        assert_eq!(reason(&either, Some("jwt")), None);
    }

    #[test]
    fn jwt_svid_typ_is_optional_but_constrained() {
        let svid = TypRule::jwt_svid();
        assert_eq!(reason(&svid, None), None);
        assert_eq!(reason(&svid, Some("JWT")), None);
        assert_eq!(reason(&svid, Some("JOSE")), None);
        assert_eq!(reason(&svid, Some("at+jwt")), Some(Reason::WrongTokenType));
    }

    #[test]
    fn invalid_configured_values() {
        assert_eq!(TypRule::configured(&[]).unwrap_err().0, None);
        for bad in ["", "at jwt", "a\"b", &"x".repeat(65)] {
            let values = vec!["at+jwt".to_owned(), bad.to_owned()];
            assert_eq!(TypRule::configured(&values).unwrap_err().0, Some(1), "{bad:?}");
        }
    }

    #[test]
    fn configuration_errors_name_the_entry() {
        let field = |typ: serde_json::Value| {
            let cfg = serde_json::json!({"issuers": [{"name": "p", "issuer": "https://i", "audiences": ["a"],
                "jwks": {"cluster": "c", "authority": "a", "path": "/k"}, "typ": typ}]});
            match crate::config::Config::from_json(cfg.to_string().as_bytes()) {
                Err(crate::config::ConfigError::Invalid { field, .. }) => field,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(field(serde_json::json!("")), "issuers[0].typ");
        assert_eq!(field(serde_json::json!([])), "issuers[0].typ");
        assert_eq!(field(serde_json::json!(["at+jwt", "a b"])), "issuers[0].typ[1]");
    }

    #[test]
    fn raw_typ_is_a_string_or_a_list() {
        let one = RawTyp::from_json(serde_json::json!("at+jwt"), "typ").unwrap();
        assert_eq!(one.into_vec(), ["at+jwt"]);
        let many = RawTyp::from_json(serde_json::json!(["a", "b"]), "typ").unwrap();
        assert_eq!(many.into_vec(), ["a", "b"]);
        let err = RawTyp::from_json(serde_json::json!(7), "typ").unwrap_err();
        assert_eq!((err.field(), err.reason()), ("typ", "must be a string or an array of strings, not 7"));
        let err = RawTyp::from_json(serde_json::json!(["a", 7]), "typ").unwrap_err();
        assert_eq!(err.field(), "typ[1]");
    }
}
