//! `spiffe`: JWT-SVIDs (SPIFFE JWT-SVID specification).
//!
//! `sub` must be a SPIFFE ID (`spiffe://TRUST-DOMAIN/PATH`, SPIFFE-ID §2) in one of
//! the configured `trust_domains`, with a path: the bare trust domain identifies no
//! workload. `aud` and `exp` are required (as for every issuer). The signing key
//! must be published with `use` absent or `jwt-svid` — a trust bundle's `x509-svid`
//! keys sign certificates, never tokens — and `typ`, when present, must be `JWT` or
//! `JOSE`. The forwarded identity is the SPIFFE ID.
//!
//! nhi-guard selects issuers by `iss`, which the JWT-SVID format leaves optional:
//! configure the SPIRE server's `jwt_issuer` (or your SPIFFE issuer's equivalent).

use crate::json::{self, FromJson};
use serde::Deserialize;

use crate::claims::matcher::RawClaim;
use crate::error::ConfigError;
use crate::reason::Rejection;

use super::{invalid, mismatch, not_allowed, TokenFacts, MAX_ALLOWLIST};
// One SPIFFE ID parser for tokens and certificates alike.
use crate::spiffe_id::{check_trust_domain, SpiffeId};
#[cfg(test)]
use crate::spiffe_id::{SpiffeError, MAX_SPIFFE_ID_LEN};

#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawSpiffe {
    pub trust_domains: Vec<String>,
    #[serde(default)]
    pub claims: Option<Vec<RawClaim>>,
}

impl FromJson for RawSpiffe {
    fn from_json(value: serde_json::Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawSpiffe {
            trust_domains: o.required("trust_domains"),
            claims: o.optional("claims"),
        })
    }
}

/// The validated `spiffe` profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spiffe {
    trust_domains: Vec<String>,
}

pub fn compile(raw: RawSpiffe, at: &dyn Fn(&str) -> String) -> Result<Spiffe, ConfigError> {
    let field = at("profile.trust_domains");
    if raw.trust_domains.is_empty() || raw.trust_domains.len() > MAX_ALLOWLIST {
        return Err(invalid(field, format!("must list 1 to {MAX_ALLOWLIST} trust domains")));
    }
    let mut trust_domains: Vec<String> = Vec::with_capacity(raw.trust_domains.len());
    for (i, name) in raw.trust_domains.into_iter().enumerate() {
        if check_trust_domain(&name).is_err() {
            return Err(invalid(
                format!("{field}[{i}]"),
                "must be a trust domain name such as \"prod.example.org\" (lower case, without spiffe://)",
            ));
        }
        if !trust_domains.contains(&name) {
            trust_domains.push(name);
        }
    }
    Ok(Spiffe { trust_domains })
}

impl Spiffe {
    /// The SPIFFE ID, once `sub` is a valid workload SPIFFE ID.
    pub fn identity(&self, facts: &TokenFacts<'_>) -> Result<String, Rejection> {
        let id = SpiffeId::parse(facts.subject).map_err(|why| mismatch(format!("sub {why}")))?;
        Ok(id.as_str().to_owned())
    }

    pub fn admit(&self, facts: &TokenFacts<'_>) -> Result<(), Rejection> {
        let id = SpiffeId::parse(facts.subject).map_err(|why| mismatch(format!("sub {why}")))?;
        if self.trust_domains.iter().any(|td| td == id.trust_domain()) {
            Ok(())
        } else {
            Err(not_allowed("SPIFFE trust domain is not allowed"))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::testing::*;
    use super::*;
    use crate::keys::jwks::KeyUse;
    use crate::reason::Reason;

    /// A JWT-SVID as SPIRE issues it with `jwt_issuer` set.
    fn svid(sub: &str) -> Value {
        json!({"aud": ["nhi-gateway"], "exp": NOW + 300, "iat": NOW, "iss": "https://spire.prod.example.org",
               "sub": sub})
    }

    fn spiffe() -> super::super::Profile {
        profile(
            json!({"profile": {"type": "spiffe", "trust_domains": ["prod.example.org", "ci.example.org"]}}),
        )
    }

    #[test]
    fn a_jwt_svid_is_its_spiffe_id() {
        let id = "spiffe://prod.example.org/ns/payments/sa/api";
        assert_eq!(outcome(&spiffe(), svid(id)), Ok(id.into()));
        assert_eq!(spiffe().key_use(), KeyUse::JwtSvid);
        assert!(spiffe().default_typ().is_some());
    }

    #[test]
    fn each_rule_refuses() {
        let p = spiffe();
        assert_eq!(
            outcome(&p, svid("spiffe://evil.example.org/ns/payments/sa/api")),
            Err(Reason::ClaimNotAllowed)
        );
        assert_eq!(outcome(&p, svid("spiffe://prod.example.org")), Err(Reason::ProfileMismatch));
        assert_eq!(outcome(&p, svid("system:serviceaccount:ci:x")), Err(Reason::ProfileMismatch));
        assert_eq!(outcome(&p, svid("spiffe://prod.example.org/../admin")), Err(Reason::ProfileMismatch));
    }

    #[test]
    fn spiffe_id_syntax() {
        let id = SpiffeId::parse("spiffe://td.example/a/b-c/d_e.f").unwrap();
        assert_eq!((id.trust_domain(), id.as_str()), ("td.example", "spiffe://td.example/a/b-c/d_e.f"));
        // A trust domain alone names no workload.
        assert_eq!(SpiffeId::parse("spiffe://td"), Err(SpiffeError::NoPath));
        for bad in [
            "",
            "spiffe://",
            "spiffe:///path",
            "SPIFFE://td/x",
            "spiffe://TD/x",
            "spiffe://td:8080/x",
            "spiffe://user@td/x",
            "spiffe://td/x/",
            "spiffe://td//x",
            "spiffe://td/./x",
            "spiffe://td/x/..",
            "spiffe://td/x?y=1",
            "spiffe://td/x#f",
            "spiffe://td/x%20y",
            "https://td/x",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad:?}");
        }
        let long = format!("spiffe://td/{}", "a".repeat(MAX_SPIFFE_ID_LEN));
        assert!(SpiffeId::parse(&long).is_err());
    }

    #[test]
    fn configuration_errors_name_their_field() {
        assert_eq!(
            invalid_field(json!({"profile": {"type": "spiffe", "trust_domains": []}})),
            "issuers[0].profile.trust_domains"
        );
        for bad in ["spiffe://prod.example.org", "Prod.example.org", "td/x", ""] {
            assert_eq!(
                invalid_field(json!({"profile": {"type": "spiffe", "trust_domains": ["ok", bad]}})),
                "issuers[0].profile.trust_domains[1]",
                "{bad}"
            );
        }
        let err = config(json!({"profile": {"type": "spiffe"}})).unwrap_err();
        assert_eq!((err.field(), err.reason()), ("issuers[0].profile.trust_domains", "is required"));
    }
}
