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

use serde::Deserialize;

use crate::config::ConfigError;
use crate::reason::Rejection;
use crate::route::RawClaim;

use super::{invalid, mismatch, not_allowed, TokenFacts, MAX_ALLOWLIST};

/// SPIFFE-ID §2.3: the maximum length of a SPIFFE ID (in bytes).
pub const MAX_ID_BYTES: usize = 2048;
/// SPIFFE-ID §2.1: the maximum length of a trust domain name.
pub const MAX_TRUST_DOMAIN_BYTES: usize = 255;
const SCHEME: &str = "spiffe://";

#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "cli", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawSpiffe {
    pub trust_domains: Vec<String>,
    #[serde(default)]
    pub claims: Option<Vec<RawClaim>>,
}

/// The validated `spiffe` profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spiffe {
    trust_domains: Vec<String>,
}

/// A parsed SPIFFE ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpiffeId<'a> {
    pub trust_domain: &'a str,
    /// Empty, or `/`-separated segments starting with `/`.
    pub path: &'a str,
}

/// Whether `name` is a trust domain name: lower-case letters, digits, `.`, `-`, `_`.
pub fn valid_trust_domain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TRUST_DOMAIN_BYTES
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// Parses a SPIFFE ID strictly (SPIFFE-ID §2): lower-case scheme and trust domain,
/// no port, user info, query or fragment; path segments of letters, digits, `.`,
/// `-`, `_`, none empty, `.` or `..`, no trailing `/`.
pub fn parse_id(id: &str) -> Result<SpiffeId<'_>, &'static str> {
    if id.len() > MAX_ID_BYTES {
        return Err("SPIFFE ID is longer than 2048 bytes");
    }
    let rest = id.strip_prefix(SCHEME).ok_or("not a spiffe:// URI")?;
    let (trust_domain, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    if !valid_trust_domain(trust_domain) {
        return Err("SPIFFE ID trust domain is invalid");
    }
    if !path.is_empty() {
        let segments_ok = path.split('/').skip(1).all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        });
        if !segments_ok {
            return Err("SPIFFE ID path is invalid");
        }
    }
    Ok(SpiffeId { trust_domain, path })
}

pub fn compile(raw: RawSpiffe, at: &dyn Fn(&str) -> String) -> Result<Spiffe, ConfigError> {
    let field = at("profile.trust_domains");
    if raw.trust_domains.is_empty() || raw.trust_domains.len() > MAX_ALLOWLIST {
        return Err(invalid(field, format!("must list 1 to {MAX_ALLOWLIST} trust domains")));
    }
    let mut trust_domains: Vec<String> = Vec::with_capacity(raw.trust_domains.len());
    for (i, name) in raw.trust_domains.into_iter().enumerate() {
        if !valid_trust_domain(&name) {
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
        let id = parse_id(facts.subject).map_err(|why| mismatch(format!("sub: {why}")))?;
        if id.path.is_empty() {
            return Err(mismatch("sub is a trust domain, not a workload SPIFFE ID"));
        }
        Ok(facts.subject.to_owned())
    }

    pub fn admit(&self, facts: &TokenFacts<'_>) -> Result<(), Rejection> {
        let id = parse_id(facts.subject).map_err(|why| mismatch(format!("sub: {why}")))?;
        if self.trust_domains.iter().any(|td| td == id.trust_domain) {
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
    use crate::jwks::KeyUse;
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
        assert_eq!(
            parse_id("spiffe://td.example/a/b-c/d_e.f"),
            Ok(SpiffeId { trust_domain: "td.example", path: "/a/b-c/d_e.f" })
        );
        assert_eq!(parse_id("spiffe://td"), Ok(SpiffeId { trust_domain: "td", path: "" }));
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
            assert!(parse_id(bad).is_err(), "{bad:?}");
        }
        let long = format!("spiffe://td/{}", "a".repeat(MAX_ID_BYTES));
        assert!(parse_id(&long).is_err());
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
        assert!(matches!(config(json!({"profile": {"type": "spiffe"}})), Err(ConfigError::Syntax(_))));
    }
}
