//! `kubernetes`: projected service-account tokens (the TokenRequest API, mounted
//! into pods by a `serviceAccountToken` projected volume).
//!
//! Such a token says who it is twice: `sub` is `system:serviceaccount:NS:NAME`, and
//! the `kubernetes.io` claim holds `namespace` and `serviceaccount.name` (plus the pod
//! and node it is bound to). Both must be present and agree; allowlists are checked
//! against them, so a token whose two halves disagree never matches an allowlist by
//! one half. Legacy secret-based tokens (no `exp`, no `kubernetes.io` object) fail.
//!
//! The audience must be dedicated to this gateway: an API server puts its own
//! default audience (`--api-audiences`, by default the issuer) in every token a pod
//! gets without asking for one, so accepting it would accept every such token —
//! including ones meant for the API server itself. The configuration is refused if
//! an audience is one of [`API_SERVER_AUDIENCES`], starts with
//! [`GKE_AUDIENCE_PREFIX`], or equals the issuer.
//!
//! `max_token_lifetime_seconds` bounds `exp - iat`: API servers may extend tokens
//! to a year for old clients (`--service-account-extend-token-expiration`, on by
//! default), and such a token is a long-lived secret.

use serde::Deserialize;

use crate::claims::matcher::Pattern;
use crate::claims::matcher::RawClaim;
use crate::error::ConfigError;
use crate::reason::{Reason, Rejection};

use super::{any_matches, invalid, mismatch, not_allowed, patterns, TokenFacts};

/// The `sub` prefix of a service-account token.
pub const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";
/// The claim with the token's namespace, service account, pod and node.
pub const KUBERNETES_CLAIM: &str = "kubernetes.io";
/// Kubernetes' shortest token (TokenRequest `expirationSeconds` minimum).
pub const MIN_LIFETIME_SECONDS: u64 = 600;
/// A bound of a year and a day: longer than any token worth bounding.
pub const MAX_LIFETIME_SECONDS: u64 = 366 * 86_400;

/// Audiences API servers use by default (compared case-insensitively, a trailing
/// `/` ignored): in-cluster service names (kubeadm, EKS, AKS, kind…), and the extra
/// ones k3s and RKE2 add.
pub const API_SERVER_AUDIENCES: [&str; 11] = [
    "https://kubernetes.default.svc.cluster.local",
    "https://kubernetes.default.svc",
    "https://kubernetes.default",
    "https://kubernetes",
    "kubernetes.default.svc.cluster.local",
    "kubernetes.default.svc",
    "kubernetes.default",
    "kubernetes",
    "api",
    "k3s",
    "rke2",
];
/// GKE's issuer, and so its default audience, is a URL under this prefix.
pub const GKE_AUDIENCE_PREFIX: &str = "https://container.googleapis.com/";

#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawKubernetes {
    /// Namespaces admitted (exact, or a prefix with a trailing `*`).
    #[serde(default)]
    pub namespaces: Option<Vec<String>>,
    /// Service accounts admitted as `NS/NAME` (or a prefix such as `ci/*`).
    #[serde(default)]
    pub service_accounts: Option<Vec<String>>,
    /// Longest `exp - iat` accepted.
    #[serde(default)]
    pub max_token_lifetime_seconds: Option<u64>,
    #[serde(default)]
    pub claims: Option<Vec<RawClaim>>,
}

/// The validated `kubernetes` profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Kubernetes {
    namespaces: Option<Vec<Pattern>>,
    service_accounts: Option<Vec<Pattern>>,
    max_lifetime_seconds: Option<u64>,
}

/// Namespace and name of a service account, agreed on by `sub` and `kubernetes.io`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceAccount<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
}

/// Whether `audience` is (or may be) an API server's default audience for `issuer`.
pub fn is_api_server_audience(audience: &str, issuer: &str) -> bool {
    let norm = |s: &str| s.trim_end_matches('/').to_ascii_lowercase();
    let audience = norm(audience);
    audience == norm(issuer)
        || API_SERVER_AUDIENCES.contains(&audience.as_str())
        || audience.starts_with(GKE_AUDIENCE_PREFIX)
}

pub fn compile(
    raw: RawKubernetes,
    issuer: &str,
    audiences: &[String],
    at: &dyn Fn(&str) -> String,
) -> Result<Kubernetes, ConfigError> {
    if let Some(j) = audiences.iter().position(|a| is_api_server_audience(a, issuer)) {
        return Err(invalid(
            at(&format!("audiences[{j}]")),
            "is the Kubernetes API server's default audience (or the issuer): tokens for it are \
             not meant for this gateway; request a dedicated audience in the pod's \
             serviceAccountToken projection",
        ));
    }
    let namespaces = patterns(raw.namespaces, &at("profile.namespaces"), |ns| {
        if ns.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') && ns.len() <= 63 {
            Ok(())
        } else {
            Err("must be a namespace name (a-z, 0-9, '-', at most 63), optionally ending in '*'")
        }
    })?;
    let service_accounts = patterns(raw.service_accounts, &at("profile.service_accounts"), |sa| {
        let Some((ns, name)) = sa.split_once('/') else {
            return Err("must be NAMESPACE/NAME (or NAMESPACE/* )");
        };
        let dns = |s: &str, max: usize| {
            s.len() <= max
                && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.".contains(c))
        };
        if !ns.is_empty() && dns(ns, 63) && !ns.contains('.') && dns(name, 253) && !name.contains('/') {
            Ok(())
        } else {
            Err("must be NAMESPACE/NAME with Kubernetes names (or NAMESPACE/* )")
        }
    })?;
    let max_lifetime_seconds = match raw.max_token_lifetime_seconds {
        Some(s) if !(MIN_LIFETIME_SECONDS..=MAX_LIFETIME_SECONDS).contains(&s) => {
            return Err(invalid(
                at("profile.max_token_lifetime_seconds"),
                format!("must be between {MIN_LIFETIME_SECONDS} and {MAX_LIFETIME_SECONDS}"),
            ))
        }
        other => other,
    };
    Ok(Kubernetes { namespaces, service_accounts, max_lifetime_seconds })
}

impl Kubernetes {
    /// `NS/NAME`, once `sub` and `kubernetes.io` agree and the lifetime is acceptable.
    pub fn identity(&self, facts: &TokenFacts<'_>) -> Result<String, Rejection> {
        let sa = service_account(facts)?;
        if let Some(max) = self.max_lifetime_seconds {
            let iat = facts.issued_at.ok_or_else(|| {
                Rejection::new(Reason::MissingClaim, "token has no iat (max_token_lifetime_seconds needs it)")
            })?;
            let lifetime = facts.expires_at.saturating_sub(iat);
            if lifetime > i64::try_from(max).unwrap_or(i64::MAX) {
                return Err(Rejection::new(
                    Reason::LifetimeTooLong,
                    format!("token lifetime (exp - iat) is over {max} seconds"),
                ));
            }
        }
        Ok(format!("{}/{}", sa.namespace, sa.name))
    }

    /// The `namespaces` and `service_accounts` allowlists; each configured one must admit.
    pub fn admit(&self, facts: &TokenFacts<'_>) -> Result<(), Rejection> {
        let sa = service_account(facts)?;
        if let Some(namespaces) = &self.namespaces {
            if !any_matches(namespaces, sa.namespace) {
                return Err(not_allowed("service-account namespace is not allowed"));
            }
        }
        if let Some(accounts) = &self.service_accounts {
            if !any_matches(accounts, &format!("{}/{}", sa.namespace, sa.name)) {
                return Err(not_allowed("service account is not allowed"));
            }
        }
        Ok(())
    }
}

/// The service account `sub` names, which the `kubernetes.io` claim must confirm.
pub fn service_account<'a>(facts: &TokenFacts<'a>) -> Result<ServiceAccount<'a>, Rejection> {
    let (namespace, name) = facts
        .subject
        .strip_prefix(SERVICE_ACCOUNT_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains(':'))
        .ok_or_else(|| mismatch("sub is not system:serviceaccount:NAMESPACE:NAME"))?;
    let k8s = match facts.claims.get(KUBERNETES_CLAIM) {
        None | Some(serde_json::Value::Null) => {
            return Err(Rejection::new(
                Reason::MissingClaim,
                "token has no kubernetes.io claim (not a projected service-account token)",
            ))
        }
        Some(serde_json::Value::Object(k8s)) => k8s,
        Some(_) => return Err(mismatch("kubernetes.io is not an object")),
    };
    let claimed_namespace = k8s.get("namespace").and_then(serde_json::Value::as_str);
    let claimed_name =
        k8s.get("serviceaccount").and_then(|sa| sa.get("name")).and_then(serde_json::Value::as_str);
    if claimed_namespace != Some(namespace) || claimed_name != Some(name) {
        return Err(mismatch("kubernetes.io namespace and serviceaccount.name do not match sub"));
    }
    Ok(ServiceAccount { namespace, name })
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::testing::*;
    use super::*;

    /// A projected token as a 1.30 API server issues it (pod-bound, one hour).
    fn token(ns: &str, name: &str) -> Value {
        json!({
            "aud": ["nhi-gateway"],
            "exp": NOW + 3000,
            "iat": NOW - 600,
            "nbf": NOW - 600,
            "iss": "https://kubernetes.default.svc.cluster.local",
            "jti": "0b8c2f4e-5c44-4c1f-9d84-0f9e5a3b1c2d",
            "kubernetes.io": {
                "namespace": ns,
                "node": {"name": "worker-2", "uid": "6f1a7c1e-0000-4000-8000-000000000001"},
                "pod": {"name": "deployer-7d9f8-x2kqv", "uid": "6f1a7c1e-0000-4000-8000-000000000002"},
                "serviceaccount": {"name": name, "uid": "6f1a7c1e-0000-4000-8000-000000000003"},
                "warnafter": NOW + 2400
            },
            "sub": format!("system:serviceaccount:{ns}:{name}")
        })
    }

    fn k8s() -> super::super::Profile {
        profile(json!({
            "issuer": "https://kubernetes.default.svc.cluster.local",
            "profile": {"type": "kubernetes", "namespaces": ["ci", "team-*"],
                        "service_accounts": ["ci/deployer", "team-a/*"],
                        "max_token_lifetime_seconds": 3600}
        }))
    }

    #[test]
    fn a_projected_token_is_ns_slash_name() {
        assert_eq!(outcome(&k8s(), token("ci", "deployer")), Ok("ci/deployer".into()));
        assert_eq!(outcome(&k8s(), token("team-a", "builder")), Ok("team-a/builder".into()));
    }

    #[test]
    fn each_rule_refuses() {
        let p = k8s();
        assert_eq!(outcome(&p, token("prod", "deployer")), Err(Reason::ClaimNotAllowed), "namespace");
        assert_eq!(outcome(&p, token("team-b", "builder")), Err(Reason::ClaimNotAllowed), "service account");
        assert_eq!(outcome(&p, token("ci", "other")), Err(Reason::ClaimNotAllowed), "service account");

        let mut t = token("ci", "deployer");
        t["sub"] = json!("ci-deployer");
        assert_eq!(outcome(&p, t), Err(Reason::ProfileMismatch), "sub form");
        let mut t = token("ci", "deployer");
        t["sub"] = json!("system:serviceaccount:ci:deployer:extra");
        assert_eq!(outcome(&p, t), Err(Reason::ProfileMismatch), "sub with extra part");

        // The two halves disagree: sub says ci, the claim says prod (or the reverse).
        let mut t = token("prod", "deployer");
        t["sub"] = json!("system:serviceaccount:ci:deployer");
        assert_eq!(outcome(&p, t), Err(Reason::ProfileMismatch), "claim namespace");
        let mut t = token("ci", "deployer");
        t["kubernetes.io"]["serviceaccount"]["name"] = json!("admin");
        assert_eq!(outcome(&p, t), Err(Reason::ProfileMismatch), "claim name");
        let mut t = token("ci", "deployer");
        t["kubernetes.io"] = json!("ci");
        assert_eq!(outcome(&p, t), Err(Reason::ProfileMismatch), "claim not an object");

        let mut t = token("ci", "deployer");
        t.as_object_mut().unwrap().remove("kubernetes.io");
        assert_eq!(outcome(&p, t), Err(Reason::MissingClaim), "legacy token");

        let mut t = token("ci", "deployer");
        t["exp"] = json!(NOW - 600 + 365 * 86_400);
        assert_eq!(outcome(&p, t), Err(Reason::LifetimeTooLong), "a year-long extended token");
        let mut t = token("ci", "deployer");
        t["exp"] = json!(NOW - 600 + 3600);
        assert_eq!(outcome(&p, t), Ok("ci/deployer".into()), "exactly the maximum");
        let mut t = token("ci", "deployer");
        t.as_object_mut().unwrap().remove("iat");
        assert_eq!(outcome(&p, t), Err(Reason::MissingClaim), "no iat with a max lifetime");
    }

    #[test]
    fn allowlists_are_optional_and_phased() {
        let open = profile(json!({"profile": {"type": "kubernetes"}}));
        let mut t = token("anything", "x");
        t.as_object_mut().unwrap().remove("iat");
        assert_eq!(outcome(&open, t), Ok("anything/x".into()));
        // Allowlists are not consulted before the signature is checked.
        let c = claims(token("prod", "x"));
        assert_eq!(k8s().identity(&facts(&c)), Ok("prod/x".into()));
        assert_eq!(k8s().admit(&facts(&c)).unwrap_err().reason, Reason::ClaimNotAllowed);
    }

    #[test]
    fn default_api_server_audiences_are_refused() {
        for (issuer, audience) in [
            ("https://kubernetes.default.svc.cluster.local", "https://kubernetes.default.svc.cluster.local"),
            ("https://oidc.eks.eu-west-1.amazonaws.com/id/ABC", "https://kubernetes.default.svc"),
            (
                "https://oidc.eks.eu-west-1.amazonaws.com/id/ABC",
                "https://oidc.eks.eu-west-1.amazonaws.com/id/ABC/",
            ),
            ("https://k3s.example", "k3s"),
            ("https://x.example", "HTTPS://Kubernetes.Default.Svc/"),
            (
                "https://container.googleapis.com/v1/projects/p/locations/l/clusters/c",
                "https://container.googleapis.com/v1/projects/p/locations/l/clusters/other",
            ),
        ] {
            let field = invalid_field(json!({
                "issuer": issuer, "audiences": ["nhi-gateway", audience],
                "profile": {"type": "kubernetes"}
            }));
            assert_eq!(field, "issuers[0].audiences[1]", "{audience}");
        }
        // The same audiences are fine for other profiles.
        assert!(config(json!({"audiences": ["https://kubernetes.default.svc"]})).is_ok());
    }

    #[test]
    fn configuration_errors_name_their_field() {
        let k = |p: Value| {
            let mut profile = json!({"type": "kubernetes"});
            for (key, v) in p.as_object().unwrap() {
                profile[key] = v.clone();
            }
            invalid_field(json!({ "profile": profile }))
        };
        assert_eq!(k(json!({"namespaces": []})), "issuers[0].profile.namespaces");
        assert_eq!(k(json!({"namespaces": ["ci", "*"]})), "issuers[0].profile.namespaces[1]");
        assert_eq!(k(json!({"namespaces": ["Prod"]})), "issuers[0].profile.namespaces[0]");
        assert_eq!(k(json!({"namespaces": ["c*i"]})), "issuers[0].profile.namespaces[0]");
        assert_eq!(k(json!({"service_accounts": ["deployer"]})), "issuers[0].profile.service_accounts[0]");
        assert_eq!(k(json!({"service_accounts": ["/deployer"]})), "issuers[0].profile.service_accounts[0]");
        assert_eq!(k(json!({"service_accounts": ["ci/a/b"]})), "issuers[0].profile.service_accounts[0]");
        assert_eq!(
            k(json!({"max_token_lifetime_seconds": 60})),
            "issuers[0].profile.max_token_lifetime_seconds"
        );
        assert_eq!(
            k(json!({"max_token_lifetime_seconds": MAX_LIFETIME_SECONDS + 1})),
            "issuers[0].profile.max_token_lifetime_seconds"
        );
    }
}
