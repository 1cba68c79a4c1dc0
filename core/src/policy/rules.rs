//! Who may use a route: allow rules, claim matchers and deny lists, evaluated
//! against a verified identity.
//!
//! Within one allow rule every condition given must hold; across rules any one
//! suffices. A rule with `source_cidrs` that matches in every other respect but
//! sees the wrong source address is reported as `source_not_allowed` rather than
//! `not_allowed`, so a partner whose egress address changed can tell.

use std::collections::HashSet;

use crate::claims::matcher::{ClaimMatcher, Pattern};
pub use crate::verify::identity::IdentityInfo;

use super::cidr::{self, Cidr};
use super::matcher::RequestInfo;
use super::reply::RouteDenial;

/// One entry of a route's `allow` list. At least one condition is set.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AllowRule {
    pub identity: Option<Pattern>,
    pub namespace: Option<String>,
    pub issuer: Option<String>,
    pub claims: Vec<ClaimMatcher>,
    /// Empty: any method.
    pub methods: Vec<String>,
    /// Empty: any source.
    pub source_cidrs: Vec<Cidr>,
    /// DPoP key thumbprints, one of which the request's proof key must be.
    pub jkt: Option<Vec<String>>,
}

/// How one allow rule fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RuleFit {
    Fits,
    /// Every condition but `source_cidrs` holds.
    WrongSource,
    No,
}

impl AllowRule {
    fn fit(&self, who: &IdentityInfo<'_>, req: &RequestInfo) -> RuleFit {
        let identity_ok = self.identity.as_ref().is_none_or(|p| p.matches(who.identity));
        let namespace_ok = self.namespace.as_deref().is_none_or(|ns| who.namespace() == Some(ns));
        let issuer_ok = self.issuer.as_deref().is_none_or(|i| who.issuer == i);
        let claims_ok = self.claims.iter().all(|c| c.matches(who.claims));
        let method_ok = self.methods.is_empty() || self.methods.contains(&req.method);
        let jkt_ok =
            self.jkt.as_ref().is_none_or(|list| who.jkt.is_some_and(|jkt| list.iter().any(|j| j == jkt)));
        if !(identity_ok && namespace_ok && issuer_ok && claims_ok && method_ok && jkt_ok) {
            RuleFit::No
        } else if self.source_cidrs.is_empty() || cidr::any_contains(&self.source_cidrs, req.source) {
            RuleFit::Fits
        } else {
            RuleFit::WrongSource
        }
    }
}

/// Checks `who` against an allow list: `Ok(Some(i))`, rule `i` (the first that
/// fits) admits; `Ok(None)`, no `allow` is configured, which admits every verified
/// identity.
pub(crate) fn check_allow(
    rules: Option<&[AllowRule]>,
    who: &IdentityInfo<'_>,
    req: &RequestInfo,
) -> Result<Option<usize>, RouteDenial> {
    let Some(rules) = rules else {
        return Ok(None);
    };
    let mut wrong_source = false;
    for (index, rule) in rules.iter().enumerate() {
        match rule.fit(who, req) {
            RuleFit::Fits => return Ok(Some(index)),
            RuleFit::WrongSource => wrong_source = true,
            RuleFit::No => {}
        }
    }
    Err(if wrong_source { RouteDenial::SourceNotAllowed } else { RouteDenial::NotAllowed })
}

/// Revoked credentials: token IDs and subjects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DenyList {
    pub jti: HashSet<String>,
    /// Exact entries, kept apart so long revocation lists stay cheap.
    pub subjects: HashSet<String>,
    pub subject_prefixes: Vec<String>,
    /// Revoked DPoP keys, by thumbprint.
    pub jkt: HashSet<String>,
}

impl DenyList {
    pub fn add_subject(&mut self, pattern: Pattern) {
        match pattern {
            Pattern::Exact(s) => {
                self.subjects.insert(s);
            }
            Pattern::Prefix(p) => self.subject_prefixes.push(p),
        }
    }

    /// `token_revoked` if the token's `jti` is listed; `subject_denied` if its
    /// `sub` *or* its forwarded identity is (a deny list errs towards denying, and
    /// operators know identities by the header they see upstream).
    pub fn check(&self, who: &IdentityInfo<'_>) -> Result<(), RouteDenial> {
        if who.jti().is_some_and(|jti| self.jti.contains(jti)) {
            return Err(RouteDenial::TokenRevoked);
        }
        if who.jkt.is_some_and(|jkt| self.jkt.contains(jkt)) {
            return Err(RouteDenial::KeyRevoked);
        }
        let denied = |s: &str| {
            self.subjects.contains(s) || self.subject_prefixes.iter().any(|p| s.starts_with(p.as_str()))
        };
        if denied(who.subject) || denied(who.identity) {
            return Err(RouteDenial::SubjectDenied);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::matcher::ClaimOp;
    use serde_json::json;
    use serde_json::{Map, Value};
    use std::net::IpAddr;

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("claims must be an object"),
        }
    }

    fn who<'a>(
        identity: &'a str,
        issuer: &'a str,
        sub: &'a str,
        c: &'a Map<String, Value>,
    ) -> IdentityInfo<'a> {
        IdentityInfo {
            identity,
            issuer,
            subject: sub,
            claims: c,
            jkt: None,
            via: crate::verify::identity::Via::Token,
        }
    }

    fn req(method: &str, source: Option<&str>) -> RequestInfo {
        RequestInfo {
            path: "/".into(),
            method: method.into(),
            source: source.map(|s| s.parse::<IpAddr>().unwrap()),
            ..RequestInfo::default()
        }
    }

    fn rule() -> AllowRule {
        AllowRule {
            identity: None,
            namespace: None,
            issuer: None,
            claims: vec![],
            methods: vec![],
            source_cidrs: vec![],
            jkt: None,
        }
    }

    fn matcher(path: &str, op: ClaimOp) -> ClaimMatcher {
        ClaimMatcher { path: path.into(), op }
    }

    fn allowed(rules: &[AllowRule], who: &IdentityInfo<'_>, req: &RequestInfo) -> Result<(), RouteDenial> {
        check_allow(Some(rules), who, req).map(|_| ())
    }

    #[test]
    fn no_allow_list_admits_every_verified_identity() {
        let c = claims(json!({}));
        assert_eq!(check_allow(None, &who("x", "ci", "x", &c), &req("GET", None)), Ok(None));
    }

    #[test]
    fn identity_exact_and_prefix() {
        let c = claims(json!({}));
        let exact = [AllowRule { identity: Some(Pattern::Exact("ci/deployer".into())), ..rule() }];
        let r = req("POST", None);
        assert_eq!(
            allowed(&exact, &who("ci/deployer", "k8s", "system:serviceaccount:ci:deployer", &c), &r),
            Ok(())
        );
        assert_eq!(
            allowed(&exact, &who("ci/other", "k8s", "system:serviceaccount:ci:other", &c), &r),
            Err(RouteDenial::NotAllowed)
        );
        // The rule reads the forwarded identity, not `sub`.
        assert_eq!(allowed(&exact, &who("x", "k8s", "ci/deployer", &c), &r), Err(RouteDenial::NotAllowed));
        let prefix = [AllowRule { identity: Some(Pattern::Prefix("ci/".into())), ..rule() }];
        assert_eq!(allowed(&prefix, &who("ci/other", "k8s", "s", &c), &r), Ok(()));
        assert_eq!(allowed(&prefix, &who("cid/other", "k8s", "s", &c), &r), Err(RouteDenial::NotAllowed));
    }

    #[test]
    fn namespace_from_subject_or_claim() {
        let none = claims(json!({}));
        assert_eq!(
            who("ci/deployer", "k8s", "system:serviceaccount:ci:deployer", &none).namespace(),
            Some("ci")
        );
        // Malformed service-account subjects name no namespace.
        for sub in [
            "system:serviceaccount:ci",
            "system:serviceaccount::x",
            "system:serviceaccount:ci:",
            "system:serviceaccount:a:b:c",
            "ci:deployer",
        ] {
            assert_eq!(who("x", "k8s", sub, &none).namespace(), None, "{sub}");
        }
        let nested =
            claims(json!({"kubernetes.io": {"namespace": "payments", "serviceaccount": {"name": "api"}}}));
        assert_eq!(who("x", "k8s", "opaque-id", &nested).namespace(), Some("payments"));
        let literal = claims(json!({"kubernetes.io.namespace": "payments"}));
        assert_eq!(who("x", "k8s", "opaque-id", &literal).namespace(), Some("payments"));
        let not_string = claims(json!({"kubernetes.io": {"namespace": ["payments"]}}));
        assert_eq!(who("x", "k8s", "opaque-id", &not_string).namespace(), None);
        // The subject wins over the claim.
        assert_eq!(who("x", "k8s", "system:serviceaccount:ci:d", &nested).namespace(), Some("ci"));

        let rules = [AllowRule { namespace: Some("payments".into()), ..rule() }];
        let r = req("GET", None);
        assert_eq!(
            allowed(&rules, &who("payments/api", "k8s", "system:serviceaccount:payments:api", &none), &r),
            Ok(())
        );
        assert_eq!(allowed(&rules, &who("x", "k8s", "opaque-id", &nested), &r), Ok(()));
        assert_eq!(
            allowed(&rules, &who("ci/d", "k8s", "system:serviceaccount:ci:d", &none), &r),
            Err(RouteDenial::NotAllowed)
        );
    }

    #[test]
    fn issuer_by_configured_name() {
        let c = claims(json!({}));
        let rules = [AllowRule { issuer: Some("partner-idp".into()), ..rule() }];
        let r = req("GET", None);
        assert_eq!(allowed(&rules, &who("p", "partner-idp", "p", &c), &r), Ok(()));
        assert_eq!(allowed(&rules, &who("p", "ci", "p", &c), &r), Err(RouteDenial::NotAllowed));
    }

    #[test]
    fn methods_restrict_an_entry() {
        let c = claims(json!({}));
        let rules = [AllowRule {
            identity: Some(Pattern::Exact("ci/reader".into())),
            methods: vec!["GET".into(), "HEAD".into()],
            ..rule()
        }];
        let w = who("ci/reader", "k8s", "s", &c);
        assert_eq!(allowed(&rules, &w, &req("GET", None)), Ok(()));
        assert_eq!(allowed(&rules, &w, &req("POST", None)), Err(RouteDenial::NotAllowed));
        assert_eq!(allowed(&rules, &w, &req("get", None)), Err(RouteDenial::NotAllowed));
    }

    #[test]
    fn conditions_and_within_an_entry_or_across_entries() {
        let scoped = claims(json!({"scope": "orders:write"}));
        let unscoped = claims(json!({"scope": "orders:read"}));
        let rules = [
            AllowRule {
                issuer: Some("partner-idp".into()),
                claims: vec![matcher("scope", ClaimOp::Contains("orders:write".into()))],
                ..rule()
            },
            AllowRule { identity: Some(Pattern::Exact("ci/deployer".into())), ..rule() },
        ];
        let r = req("POST", None);
        assert_eq!(allowed(&rules, &who("p", "partner-idp", "p", &scoped), &r), Ok(()));
        assert_eq!(
            allowed(&rules, &who("p", "partner-idp", "p", &unscoped), &r),
            Err(RouteDenial::NotAllowed)
        );
        assert_eq!(allowed(&rules, &who("p", "ci", "p", &scoped), &r), Err(RouteDenial::NotAllowed));
        assert_eq!(allowed(&rules, &who("ci/deployer", "ci", "x", &unscoped), &r), Ok(()));
        // The first rule that fits is the one that admits.
        assert_eq!(check_allow(Some(&rules), &who("ci/deployer", "ci", "x", &unscoped), &r), Ok(Some(1)));
        assert_eq!(check_allow(Some(&rules), &who("p", "partner-idp", "p", &scoped), &r), Ok(Some(0)));
        // Every claim matcher of an entry must hold.
        let two = [AllowRule {
            claims: vec![
                matcher("scope", ClaimOp::Contains("orders:write".into())),
                matcher("azp", ClaimOp::Equals(json!("acme"))),
            ],
            ..rule()
        }];
        let both = claims(json!({"scope": "orders:write", "azp": "acme"}));
        assert_eq!(allowed(&two, &who("p", "i", "p", &both), &r), Ok(()));
        assert_eq!(allowed(&two, &who("p", "i", "p", &scoped), &r), Err(RouteDenial::NotAllowed));
    }

    #[test]
    fn source_cidrs_per_entry() {
        let c = claims(json!({}));
        let rules = [AllowRule {
            identity: Some(Pattern::Exact("partner/acme".into())),
            source_cidrs: vec![Cidr::parse("203.0.113.0/24").unwrap(), Cidr::parse("2001:db8::/32").unwrap()],
            ..rule()
        }];
        let acme = who("partner/acme", "partner-idp", "acme", &c);
        assert_eq!(allowed(&rules, &acme, &req("GET", Some("203.0.113.10"))), Ok(()));
        assert_eq!(allowed(&rules, &acme, &req("GET", Some("2001:db8::10"))), Ok(()));
        assert_eq!(allowed(&rules, &acme, &req("GET", Some("::ffff:203.0.113.10"))), Ok(()));
        assert_eq!(
            allowed(&rules, &acme, &req("GET", Some("198.51.100.1"))),
            Err(RouteDenial::SourceNotAllowed)
        );
        assert_eq!(allowed(&rules, &acme, &req("GET", None)), Err(RouteDenial::SourceNotAllowed));
        // Someone else from the right network: not a source problem.
        assert_eq!(
            allowed(&rules, &who("partner/other", "partner-idp", "o", &c), &req("GET", Some("198.51.100.1"))),
            Err(RouteDenial::NotAllowed)
        );
        // Another entry that fits wins over the wrong source.
        let mut more = rules.to_vec();
        more.push(AllowRule { issuer: Some("partner-idp".into()), ..rule() });
        assert_eq!(allowed(&more, &acme, &req("GET", Some("198.51.100.1"))), Ok(()));
    }

    #[test]
    fn deny_list_by_jti_subject_and_identity() {
        let mut deny = DenyList::default();
        deny.jti.insert("t-123".into());
        deny.add_subject(Pattern::parse("system:serviceaccount:ci:old").unwrap());
        deny.add_subject(Pattern::parse("legacy/*").unwrap());
        deny.add_subject(Pattern::parse("ci/leaked").unwrap());
        let revoked = claims(json!({"jti": "t-123"}));
        let other = claims(json!({"jti": "t-124"}));
        let numeric = claims(json!({"jti": 123}));
        assert_eq!(deny.check(&who("ci/d", "k8s", "s", &revoked)), Err(RouteDenial::TokenRevoked));
        assert_eq!(deny.check(&who("ci/d", "k8s", "s", &other)), Ok(()));
        assert_eq!(deny.check(&who("ci/d", "k8s", "s", &numeric)), Ok(()));
        assert_eq!(
            deny.check(&who("ci/old", "k8s", "system:serviceaccount:ci:old", &other)),
            Err(RouteDenial::SubjectDenied)
        );
        assert_eq!(
            deny.check(&who("ci/leaked", "k8s", "system:serviceaccount:ci:leaked", &other)),
            Err(RouteDenial::SubjectDenied)
        );
        assert_eq!(deny.check(&who("legacy/x", "k8s", "s", &other)), Err(RouteDenial::SubjectDenied));
        assert_eq!(deny.check(&who("x", "k8s", "legacy/y", &other)), Err(RouteDenial::SubjectDenied));
        // Revocation is reported first: it is the stronger statement.
        assert_eq!(deny.check(&who("legacy/x", "k8s", "s", &revoked)), Err(RouteDenial::TokenRevoked));
        assert_eq!(DenyList::default().check(&who("x", "k8s", "s", &revoked)), Ok(()));
    }
}
