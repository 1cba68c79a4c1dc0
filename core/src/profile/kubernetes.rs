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
//!
//! A `service_accounts` entry may pin the account's UID (`{"name": "ns/name",
//! "uid": "…"}`): a token of that name whose `kubernetes.io.serviceaccount.uid` is
//! another is refused `service_account_replaced` — the account was deleted and
//! recreated under the same name, and its old tokens (or a new owner's) are not the
//! ones the allowlist meant.
//!
//! `liveness` asks the API server whether a verified token still authenticates (a
//! TokenReview, see [`crate::verify::liveness`]): a token outlives the pod, service
//! account or node it was bound to until `exp`; the API server knows at once.

use crate::json::{self, FromJson};
use serde::Deserialize;

use crate::claims::matcher::Pattern;
use crate::claims::matcher::RawClaim;
use crate::claims::path::claim;
use crate::error::ConfigError;
use crate::reason::{Reason, Rejection};

use super::{any_matches, invalid, mismatch, not_allowed, patterns, TokenFacts, MAX_ALLOWLIST};

/// The `sub` prefix of a service-account token.
pub const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";
/// The claim with the token's namespace, service account, pod and node.
pub const KUBERNETES_CLAIM: &str = "kubernetes.io";
/// The claim path of the service account's UID in a projected token.
pub const SERVICE_ACCOUNT_UID_CLAIM: &str = "kubernetes.io.serviceaccount.uid";
/// Where the TokenReview API is, unless `liveness.path` says otherwise.
pub const TOKEN_REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
/// The API server's in-cluster name, unless `liveness.authority` says otherwise.
pub const DEFAULT_API_AUTHORITY: &str = "kubernetes.default.svc";
pub const DEFAULT_LIVENESS_CACHE_SECONDS: u64 = 10;
pub const MAX_LIVENESS_CACHE_SECONDS: u64 = 60;
pub const DEFAULT_LIVENESS_TIMEOUT_MS: u64 = 1_000;
pub const MAX_LIVENESS_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_LIVENESS_MAX_STALE_SECONDS: u64 = 60;
pub const MAX_LIVENESS_MAX_STALE_SECONDS: u64 = 3_600;
/// Longest UID in a pin (Kubernetes UIDs are 36-character UUIDs).
pub const MAX_UID_LEN: usize = 64;
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
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawKubernetes {
    /// Namespaces admitted (exact, or a prefix with a trailing `*`).
    #[serde(default)]
    pub namespaces: Option<Vec<String>>,
    /// Service accounts admitted as `NS/NAME` (or a prefix such as `ci/*`), or
    /// `{"name": "NS/NAME", "uid": "…"}` to pin the account's UID.
    #[serde(default)]
    pub service_accounts: Option<Vec<RawServiceAccount>>,
    /// Longest `exp - iat` accepted.
    #[serde(default)]
    pub max_token_lifetime_seconds: Option<u64>,
    #[serde(default)]
    pub claims: Option<Vec<RawClaim>>,
    /// Ask the API server whether a verified token still authenticates (TokenReview).
    #[serde(default)]
    pub liveness: Option<RawLiveness>,
}

impl FromJson for RawKubernetes {
    fn from_json(value: serde_json::Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawKubernetes {
            namespaces: o.optional("namespaces"),
            service_accounts: o.optional("service_accounts"),
            max_token_lifetime_seconds: o.optional("max_token_lifetime_seconds"),
            claims: o.optional("claims"),
            liveness: o.optional("liveness"),
        })
    }
}

/// One `service_accounts` entry.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum RawServiceAccount {
    /// `NS/NAME`, or a prefix such as `ci/*`.
    Name(String),
    /// An exact account whose UID must be this one.
    Pinned(RawPinnedAccount),
}

impl FromJson for RawServiceAccount {
    fn from_json(value: serde_json::Value, at: &str) -> Result<Self, ConfigError> {
        match value {
            serde_json::Value::String(name) => Ok(RawServiceAccount::Name(name)),
            object @ serde_json::Value::Object(_) => {
                RawPinnedAccount::from_json(object, at).map(RawServiceAccount::Pinned)
            }
            other => Err(json::wrong_type(at, "a name or an object with `name` and `uid`", &other)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawPinnedAccount {
    /// `NS/NAME`, exactly.
    pub name: String,
    /// The account's `metadata.uid` (`kubectl get sa NAME -n NS -o jsonpath='{.metadata.uid}'`).
    pub uid: String,
}

impl FromJson for RawPinnedAccount {
    fn from_json(value: serde_json::Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawPinnedAccount { name: o.required("name"), uid: o.required("uid") })
    }
}

/// `profile.liveness`.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawLiveness {
    /// The Envoy cluster that reaches the API server (on APISIX: `host:port`).
    pub cluster: String,
    /// `:authority` of the review; default `kubernetes.default.svc`.
    #[serde(default)]
    pub authority: Option<String>,
    /// Default `/apis/authentication.k8s.io/v1/tokenreviews`.
    #[serde(default)]
    pub path: Option<String>,
    /// How long a review's answer (either way) is trusted: 1–60, default 10.
    #[serde(default)]
    pub cache_seconds: Option<u64>,
    /// How long a review may take, and how long requests wait for one: default 1000.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// What an unanswerable review means: `deny` (default) or `allow_recent`.
    #[serde(default)]
    pub on_unavailable: Option<OnUnavailable>,
    /// `allow_recent`: how long after its last positive review a token still passes
    /// while the API server cannot answer. Default 60.
    #[serde(default)]
    pub max_stale_seconds: Option<u64>,
}

impl FromJson for RawLiveness {
    fn from_json(value: serde_json::Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawLiveness {
            cluster: o.required("cluster"),
            authority: o.optional("authority"),
            path: o.optional("path"),
            cache_seconds: o.optional("cache_seconds"),
            timeout_ms: o.optional("timeout_ms"),
            on_unavailable: o.optional("on_unavailable"),
            max_stale_seconds: o.optional("max_stale_seconds"),
        })
    }
}

/// `liveness.on_unavailable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// `503 liveness_unavailable` with `Retry-After`.
    Deny,
    /// Allowed while the token's last positive review is younger than
    /// `max_stale_seconds`, then `503`. Never for a token never reviewed.
    AllowRecent,
}

impl FromJson for OnUnavailable {
    fn from_json(value: serde_json::Value, at: &str) -> Result<Self, ConfigError> {
        json::one_of(
            value,
            at,
            &[("deny", OnUnavailable::Deny), ("allow_recent", OnUnavailable::AllowRecent)],
        )
    }
}

/// The validated `liveness` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Liveness {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub cache_ms: u64,
    pub timeout_ms: u64,
    pub on_unavailable: OnUnavailable,
    pub max_stale_ms: u64,
}

/// A service account whose UID is pinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// `NS/NAME`.
    pub name: String,
    pub uid: String,
}

/// The validated `kubernetes` profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Kubernetes {
    namespaces: Option<Vec<Pattern>>,
    /// `None`: no allowlist. Otherwise the unpinned entries and the pins.
    service_accounts: Option<(Vec<Pattern>, Vec<Pin>)>,
    max_lifetime_seconds: Option<u64>,
    liveness: Option<Liveness>,
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
    let service_accounts = match raw.service_accounts {
        None => None,
        Some(entries) => Some(compile_service_accounts(entries, &at("profile.service_accounts"))?),
    };
    let max_lifetime_seconds = match raw.max_token_lifetime_seconds {
        Some(s) if !(MIN_LIFETIME_SECONDS..=MAX_LIFETIME_SECONDS).contains(&s) => {
            return Err(invalid(
                at("profile.max_token_lifetime_seconds"),
                format!("must be between {MIN_LIFETIME_SECONDS} and {MAX_LIFETIME_SECONDS}"),
            ))
        }
        other => other,
    };
    let liveness = raw.liveness.map(|raw| compile_liveness(raw, &at("profile.liveness"))).transpose()?;
    Ok(Kubernetes { namespaces, service_accounts, max_lifetime_seconds, liveness })
}

/// A service-account name (or prefix) as `service_accounts` takes it.
fn valid_service_account(sa: &str) -> Result<(), &'static str> {
    let Some((ns, name)) = sa.split_once('/') else {
        return Err("must be NAMESPACE/NAME (or NAMESPACE/* )");
    };
    let dns = |s: &str, max: usize| {
        s.len() <= max && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.".contains(c))
    };
    if !ns.is_empty() && dns(ns, 63) && !ns.contains('.') && dns(name, 253) && !name.contains('/') {
        Ok(())
    } else {
        Err("must be NAMESPACE/NAME with Kubernetes names (or NAMESPACE/* )")
    }
}

fn compile_service_accounts(
    entries: Vec<RawServiceAccount>,
    field: &str,
) -> Result<(Vec<Pattern>, Vec<Pin>), ConfigError> {
    let (mut names, mut pins) = (Vec::new(), Vec::<Pin>::new());
    let mut numbered = Vec::new();
    for (i, entry) in entries.into_iter().enumerate() {
        match entry {
            RawServiceAccount::Name(name) => numbered.push((i, name)),
            RawServiceAccount::Pinned(RawPinnedAccount { name, uid }) => {
                let at = format!("{field}[{i}]");
                if name.contains('*') || valid_service_account(&name).is_err() || name.ends_with('/') {
                    return Err(invalid(
                        format!("{at}.name"),
                        "must be NAMESPACE/NAME exactly (a pin names one account)",
                    ));
                }
                if uid.is_empty()
                    || uid.len() > MAX_UID_LEN
                    || !uid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                {
                    return Err(invalid(
                        format!("{at}.uid"),
                        format!("must be the account's metadata.uid (1-{MAX_UID_LEN} of A-Z a-z 0-9 -)"),
                    ));
                }
                if pins.iter().any(|p| p.name == name) {
                    return Err(invalid(format!("{at}.name"), format!("{name:?} is pinned twice")));
                }
                pins.push(Pin { name, uid });
            }
        }
    }
    let total = numbered.len() + pins.len();
    if total == 0 || total > MAX_ALLOWLIST {
        return Err(invalid(field, format!("must list 1 to {MAX_ALLOWLIST} entries; omit it to allow any")));
    }
    for (i, name) in numbered {
        // One entry at a time, so that an error names the entry's own index.
        let compiled = patterns(Some(vec![name]), field, valid_service_account).map_err(|err| match err {
            ConfigError::Invalid { reason, .. } => invalid(format!("{field}[{i}]"), reason),
            other => other,
        })?;
        names.extend(compiled.into_iter().flatten());
    }
    Ok((names, pins))
}

fn compile_liveness(raw: RawLiveness, at: &str) -> Result<Liveness, ConfigError> {
    let field = |name: &str| format!("{at}.{name}");
    if raw.cluster.is_empty() || raw.cluster.chars().any(char::is_whitespace) {
        return Err(invalid(field("cluster"), "must name the Envoy cluster that reaches the API server"));
    }
    let authority = raw.authority.unwrap_or_else(|| DEFAULT_API_AUTHORITY.to_owned());
    if authority.is_empty() || authority.chars().any(|c| c.is_whitespace() || c == '/' || c.is_control()) {
        return Err(invalid(field("authority"), "must be a host[:port]"));
    }
    let path = raw.path.unwrap_or_else(|| TOKEN_REVIEW_PATH.to_owned());
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(field("path"), "must start with '/' and contain no spaces"));
    }
    let cache_seconds = raw.cache_seconds.unwrap_or(DEFAULT_LIVENESS_CACHE_SECONDS);
    if !(1..=MAX_LIVENESS_CACHE_SECONDS).contains(&cache_seconds) {
        return Err(invalid(
            field("cache_seconds"),
            format!("must be between 1 and {MAX_LIVENESS_CACHE_SECONDS}"),
        ));
    }
    let timeout_ms = raw.timeout_ms.unwrap_or(DEFAULT_LIVENESS_TIMEOUT_MS);
    if !(1..=MAX_LIVENESS_TIMEOUT_MS).contains(&timeout_ms) {
        return Err(invalid(field("timeout_ms"), format!("must be between 1 and {MAX_LIVENESS_TIMEOUT_MS}")));
    }
    let max_stale_seconds =
        raw.max_stale_seconds.unwrap_or(DEFAULT_LIVENESS_MAX_STALE_SECONDS.max(cache_seconds));
    if !(cache_seconds..=MAX_LIVENESS_MAX_STALE_SECONDS).contains(&max_stale_seconds) {
        return Err(invalid(
            field("max_stale_seconds"),
            format!("must be between cache_seconds and {MAX_LIVENESS_MAX_STALE_SECONDS}"),
        ));
    }
    Ok(Liveness {
        cluster: raw.cluster,
        authority,
        path,
        cache_ms: cache_seconds * 1_000,
        timeout_ms,
        on_unavailable: raw.on_unavailable.unwrap_or(OnUnavailable::Deny),
        max_stale_ms: max_stale_seconds * 1_000,
    })
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

    /// The `namespaces` and `service_accounts` allowlists; each configured one must
    /// admit. A pinned account admits only the UID it pins, whatever other entries
    /// (a prefix) would admit by name.
    pub fn admit(&self, facts: &TokenFacts<'_>) -> Result<(), Rejection> {
        let sa = service_account(facts)?;
        if let Some(namespaces) = &self.namespaces {
            if !any_matches(namespaces, sa.namespace) {
                return Err(not_allowed("service-account namespace is not allowed"));
            }
        }
        if let Some((names, pins)) = &self.service_accounts {
            let name = format!("{}/{}", sa.namespace, sa.name);
            if let Some(pin) = pins.iter().find(|p| p.name == name) {
                return match claim(facts.claims, SERVICE_ACCOUNT_UID_CLAIM)
                    .and_then(serde_json::Value::as_str)
                {
                    Some(uid) if uid == pin.uid => Ok(()),
                    Some(_) => Err(Rejection::new(
                        Reason::ServiceAccountReplaced,
                        "the service account was recreated: its UID is not the pinned one",
                    )),
                    None => Err(Rejection::new(
                        Reason::MissingClaim,
                        "token has no kubernetes.io.serviceaccount.uid (the account is pinned)",
                    )),
                };
            }
            if !any_matches(names, &name) {
                return Err(not_allowed("service account is not allowed"));
            }
        }
        Ok(())
    }

    /// The `liveness` block, if configured.
    pub fn liveness(&self) -> Option<&Liveness> {
        self.liveness.as_ref()
    }

    /// The `service_accounts` entries as written (pins by name), for the inventory's
    /// "never used" list.
    pub fn allowlisted_accounts(&self) -> Vec<String> {
        let Some((names, pins)) = &self.service_accounts else { return Vec::new() };
        let written = names.iter().map(|p| match p {
            Pattern::Exact(s) => s.clone(),
            Pattern::Prefix(p) => format!("{p}*"),
        });
        written.chain(pins.iter().map(|p| p.name.clone())).collect()
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

    #[test]
    fn a_pinned_account_admits_only_its_uid() {
        let uid = "6f1a7c1e-0000-4000-8000-000000000003";
        let p = profile(json!({
            "issuer": "https://kubernetes.default.svc.cluster.local",
            "profile": {"type": "kubernetes",
                        "service_accounts": ["payments/*", {"name": "ci/deployer", "uid": uid},
                                             {"name": "payments/api", "uid": "11111111-0000-4000-8000-000000000000"}]}
        }));
        assert_eq!(outcome(&p, token("ci", "deployer")), Ok("ci/deployer".into()), "the pinned UID");
        // Deleted and recreated under the same name: a new UID.
        let mut t = token("ci", "deployer");
        t["kubernetes.io"]["serviceaccount"]["uid"] = json!("6f1a7c1e-0000-4000-8000-0000000000ff");
        assert_eq!(outcome(&p, t), Err(Reason::ServiceAccountReplaced));
        // The pin wins over a prefix that would admit the name.
        assert_eq!(outcome(&p, token("payments", "api")), Err(Reason::ServiceAccountReplaced));
        assert_eq!(
            outcome(&p, token("payments", "worker")),
            Ok("payments/worker".into()),
            "unpinned by prefix"
        );
        let mut t = token("ci", "deployer");
        t["kubernetes.io"]["serviceaccount"].as_object_mut().unwrap().remove("uid");
        assert_eq!(outcome(&p, t), Err(Reason::MissingClaim), "a pinned account needs the UID claim");
        assert_eq!(outcome(&p, token("ci", "other")), Err(Reason::ClaimNotAllowed));
        assert_eq!(
            p.allowlisted_accounts(),
            ["payments/*", "ci/deployer", "payments/api"].map(str::to_owned).to_vec()
        );
    }

    #[test]
    fn pins_and_liveness_are_validated_naming_the_field() {
        let k = |extra: Value| {
            let mut profile = json!({"type": "kubernetes"});
            for (key, v) in extra.as_object().unwrap() {
                profile[key] = v.clone();
            }
            invalid_field(json!({ "profile": profile }))
        };
        let uid = "6f1a7c1e-0000-4000-8000-000000000003";
        assert_eq!(
            k(json!({"service_accounts": ["ci/a", {"name": "ci/*", "uid": uid}]})),
            "issuers[0].profile.service_accounts[1].name"
        );
        assert_eq!(
            k(json!({"service_accounts": [{"name": "ci/a", "uid": "not a uid"}]})),
            "issuers[0].profile.service_accounts[0].uid"
        );
        assert_eq!(
            k(json!({"service_accounts": [{"name": "ci/a", "uid": uid}, {"name": "ci/a", "uid": uid}]})),
            "issuers[0].profile.service_accounts[1].name"
        );
        assert_eq!(
            k(json!({"service_accounts": [{"name": "ci/a", "uid": uid}, "Bad"]})),
            "issuers[0].profile.service_accounts[1]"
        );
        assert_eq!(
            k(json!({"service_accounts": [{"name": "ci/a", "uid": uid, "x": 1}]})),
            "issuers[0].profile.service_accounts[0].x"
        );
        assert_eq!(k(json!({"service_accounts": [7]})), "issuers[0].profile.service_accounts[0]");
        let live = |extra: Value| {
            let mut liveness = json!({"cluster": "kube_api"});
            for (key, v) in extra.as_object().unwrap() {
                liveness[key] = v.clone();
            }
            k(json!({ "liveness": liveness }))
        };
        assert_eq!(live(json!({"cluster": ""})), "issuers[0].profile.liveness.cluster");
        assert_eq!(live(json!({"cache_seconds": 0})), "issuers[0].profile.liveness.cache_seconds");
        assert_eq!(live(json!({"cache_seconds": 61})), "issuers[0].profile.liveness.cache_seconds");
        assert_eq!(live(json!({"timeout_ms": 0})), "issuers[0].profile.liveness.timeout_ms");
        assert_eq!(live(json!({"path": "apis"})), "issuers[0].profile.liveness.path");
        assert_eq!(live(json!({"authority": "a/b"})), "issuers[0].profile.liveness.authority");
        assert_eq!(
            live(json!({"cache_seconds": 30, "max_stale_seconds": 10})),
            "issuers[0].profile.liveness.max_stale_seconds"
        );
        let err = config(
            json!({"profile": {"type": "kubernetes", "liveness": {"cluster": "k", "on_unavailable": "allow"}}}),
        )
        .unwrap_err();
        assert_eq!(
            (err.field(), err.reason()),
            (
                "issuers[0].profile.liveness.on_unavailable",
                r#"must be one of "deny", "allow_recent", not "allow""#
            )
        );
    }

    #[test]
    fn liveness_defaults_and_the_issues_example() {
        let p = profile(json!({"profile": {"type": "kubernetes", "liveness": {"cluster": "kube_api"}}}));
        assert_eq!(
            p.liveness(),
            Some(&Liveness {
                cluster: "kube_api".into(),
                authority: "kubernetes.default.svc".into(),
                path: "/apis/authentication.k8s.io/v1/tokenreviews".into(),
                cache_ms: 10_000,
                timeout_ms: 1_000,
                on_unavailable: OnUnavailable::Deny,
                max_stale_ms: 60_000,
            })
        );
        let p = profile(json!({"profile": {"type": "kubernetes", "liveness": {
            "cluster": "kube_api", "authority": "kubernetes.default.svc",
            "path": "/apis/authentication.k8s.io/v1/tokenreviews",
            "cache_seconds": 10, "timeout_ms": 1000,
            "on_unavailable": "allow_recent", "max_stale_seconds": 60}}}));
        assert_eq!(p.liveness().map(|l| l.on_unavailable), Some(OnUnavailable::AllowRecent));
        assert!(profile(json!({})).liveness().is_none());
    }
}
