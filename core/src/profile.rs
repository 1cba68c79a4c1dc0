//! Token profiles: what a token of one kind must look like, which of those tokens an
//! issuer admits, and the identity forwarded for it.
//!
//! `issuers[].profile` picks one: `generic` (the default), `kubernetes` (projected
//! service-account tokens), `spiffe` (JWT-SVIDs) or `github_actions` (GitHub's OIDC
//! tokens). Every profile also takes `claims`, rules with the syntax of route `allow`
//! claims (`equals`, `one_of`, `prefix`, `contains`) on any dotted claim path.
//!
//! Checks come in two phases, around the signature check:
//! - [`Profile::identity`], before it: the token's *shape* — a Kubernetes `sub` of the
//!   form `system:serviceaccount:NS:NAME`, a valid SPIFFE ID, numeric GitHub IDs —
//!   and the Kubernetes token lifetime. Failing these costs no cryptography.
//! - [`Profile::admit`], after it: allowlists and claim rules. Answering these for an
//!   unsigned token would let anyone enumerate the allowlists (which namespaces, which
//!   repository IDs) by forging tokens and reading the reason code.

pub mod github;
pub mod kubernetes;
pub mod spiffe;

use crate::json::{self, FromJson};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::claims::matcher::RawClaim;
use crate::claims::matcher::{ClaimMatcher, Pattern};
use crate::claims::path::claim;
use crate::error::ConfigError;
use crate::keys::jwks::KeyUse;
use crate::reason::{Reason, Rejection};
use crate::token::typ::TypRule;

pub use github::GithubActions;
pub use kubernetes::Kubernetes;
pub use spiffe::Spiffe;

/// Most claim rules one profile may list.
pub const MAX_CLAIM_RULES: usize = 32;
/// Most entries in one allowlist.
pub const MAX_ALLOWLIST: usize = 256;

/// `issuers[].profile`, tagged by `type`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RawProfile {
    Generic(RawGeneric),
    Kubernetes(kubernetes::RawKubernetes),
    Spiffe(spiffe::RawSpiffe),
    GithubActions(github::RawGithubActions),
}

impl FromJson for RawProfile {
    fn from_json(value: serde_json::Value, at: &str) -> Result<Self, ConfigError> {
        #[derive(Clone, Copy)]
        enum Type {
            Generic,
            Kubernetes,
            Spiffe,
            GithubActions,
        }
        let mut object = json::Object::new(value, at)?;
        let type_at = object.path("type");
        let kind: String = object.required("type");
        // The other members belong to the chosen profile, which refuses any it does not know.
        let rest = serde_json::Value::Object(object.into_rest()?);
        let choices = [
            ("generic", Type::Generic),
            ("kubernetes", Type::Kubernetes),
            ("spiffe", Type::Spiffe),
            ("github_actions", Type::GithubActions),
        ];
        match json::one_of(serde_json::Value::String(kind), &type_at, &choices)? {
            Type::Generic => RawGeneric::from_json(rest, at).map(RawProfile::Generic),
            Type::Kubernetes => kubernetes::RawKubernetes::from_json(rest, at).map(RawProfile::Kubernetes),
            Type::Spiffe => spiffe::RawSpiffe::from_json(rest, at).map(RawProfile::Spiffe),
            Type::GithubActions => {
                github::RawGithubActions::from_json(rest, at).map(RawProfile::GithubActions)
            }
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawGeneric {
    #[serde(default)]
    pub claims: Option<Vec<RawClaim>>,
    /// A claim (or dotted path) whose string value is forwarded instead of `sub`.
    #[serde(default)]
    pub identity_claim: Option<String>,
}

impl FromJson for RawGeneric {
    fn from_json(value: Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawGeneric {
            claims: o.optional("claims"),
            identity_claim: o.optional("identity_claim"),
        })
    }
}

/// A validated profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    kind: Kind,
    claims: Vec<ClaimMatcher>,
    /// Replaces the profile's own identity (generic and `github_actions` only).
    identity_claim: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Generic,
    Kubernetes(Kubernetes),
    Spiffe(Spiffe),
    GithubActions(GithubActions),
}

/// What a profile reads from a token whose registered claims (`iss`, `exp`, `nbf`,
/// `iat`, `aud`, `sub`) already passed.
#[derive(Debug, Clone, Copy)]
pub struct TokenFacts<'a> {
    pub subject: &'a str,
    pub claims: &'a Map<String, Value>,
    pub expires_at: i64,
    pub issued_at: Option<i64>,
}

impl Default for Profile {
    fn default() -> Self {
        Profile::generic()
    }
}

impl Profile {
    /// No rules; the identity is `sub`.
    pub fn generic() -> Profile {
        Profile { kind: Kind::Generic, claims: Vec::new(), identity_claim: None }
    }

    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::Generic => "generic",
            Kind::Kubernetes(_) => "kubernetes",
            Kind::Spiffe(_) => "spiffe",
            Kind::GithubActions(_) => "github_actions",
        }
    }

    /// Which JWK `use` the issuer's keys may carry.
    pub fn key_use(&self) -> KeyUse {
        match self.kind {
            Kind::Spiffe(_) => KeyUse::JwtSvid,
            _ => KeyUse::Sig,
        }
    }

    /// The TokenReview liveness check (`kubernetes` profile only).
    pub fn liveness(&self) -> Option<&kubernetes::Liveness> {
        match &self.kind {
            Kind::Kubernetes(k8s) => k8s.liveness(),
            _ => None,
        }
    }

    /// The service accounts a `kubernetes` profile admits by name, as written.
    pub fn allowlisted_accounts(&self) -> Vec<String> {
        match &self.kind {
            Kind::Kubernetes(k8s) => k8s.allowlisted_accounts(),
            _ => Vec::new(),
        }
    }

    /// The `typ` rule when `issuers[].typ` is not configured.
    pub fn default_typ(&self) -> Option<TypRule> {
        match self.kind {
            Kind::Spiffe(_) => Some(TypRule::jwt_svid()),
            _ => None,
        }
    }

    /// Before the signature check: the token's shape for this profile, and the
    /// identity to forward.
    pub fn identity(&self, facts: &TokenFacts<'_>) -> Result<String, Rejection> {
        let own = match &self.kind {
            Kind::Generic => None,
            Kind::Kubernetes(k8s) => Some(k8s.identity(facts)?),
            Kind::Spiffe(spiffe) => Some(spiffe.identity(facts)?),
            Kind::GithubActions(github) => github.identity(facts, self.identity_claim.is_some())?,
        };
        let identity = match (&self.identity_claim, own) {
            (Some(path), _) => string_claim(facts.claims, path)?.to_owned(),
            (None, Some(own)) => own,
            (None, None) => facts.subject.to_owned(),
        };
        if identity.chars().any(char::is_control) {
            return Err(Rejection::new(Reason::MalformedToken, "the identity contains control characters"));
        }
        // A backend trims a header value: the identity must be what it reads.
        if identity.trim() != identity {
            return Err(Rejection::new(
                Reason::MalformedToken,
                "the identity begins or ends with whitespace",
            ));
        }
        Ok(identity)
    }

    /// After the signature check: the profile's allowlists, then the claim rules.
    pub fn admit(&self, facts: &TokenFacts<'_>) -> Result<(), Rejection> {
        match &self.kind {
            Kind::Generic => {}
            Kind::Kubernetes(k8s) => k8s.admit(facts)?,
            Kind::Spiffe(spiffe) => spiffe.admit(facts)?,
            Kind::GithubActions(github) => github.admit(facts)?,
        }
        match self.claims.iter().position(|rule| !rule.matches(facts.claims)) {
            None => Ok(()),
            Some(i) => Err(not_allowed(format!("claim rule #{} does not hold", i + 1))),
        }
    }
}

/// Compiles `issuers[].profile`; `issuer` and `audiences` are the issuer's own, which
/// some profiles constrain. `at` turns a field name into its JSON path.
pub fn compile(
    raw: Option<RawProfile>,
    issuer: &str,
    audiences: &[String],
    at: &dyn Fn(&str) -> String,
) -> Result<Profile, ConfigError> {
    let p = |field: &str| at(&format!("profile.{field}"));
    let (kind, claims, identity_claim) = match raw {
        None => return Ok(Profile::generic()),
        Some(RawProfile::Generic(raw)) => (Kind::Generic, raw.claims, raw.identity_claim),
        Some(RawProfile::Kubernetes(raw)) => {
            let claims = raw.claims.clone();
            (Kind::Kubernetes(kubernetes::compile(raw, issuer, audiences, at)?), claims, None)
        }
        Some(RawProfile::Spiffe(raw)) => {
            let claims = raw.claims.clone();
            (Kind::Spiffe(spiffe::compile(raw, at)?), claims, None)
        }
        Some(RawProfile::GithubActions(raw)) => {
            let (claims, identity_claim) = (raw.claims.clone(), raw.identity_claim.clone());
            (Kind::GithubActions(github::compile(raw, issuer, audiences, at)?), claims, identity_claim)
        }
    };
    if let Some(path) = &identity_claim {
        if !crate::claims::path::valid_claim_path(path) {
            return Err(invalid(
                p("identity_claim"),
                "must be a claim name or dotted path (at most 128 characters, 8 dots)",
            ));
        }
    }
    let claims = match claims {
        None => Vec::new(),
        Some(list) if list.is_empty() || list.len() > MAX_CLAIM_RULES => {
            return Err(invalid(
                p("claims"),
                format!("must list 1 to {MAX_CLAIM_RULES} rules (or be omitted)"),
            ))
        }
        Some(list) => list
            .into_iter()
            .enumerate()
            .map(|(i, raw)| crate::claims::matcher::claim_matcher(&p(&format!("claims[{i}]")), raw))
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(Profile { kind, claims, identity_claim })
}

pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.into(), reason: reason.into() }
}

pub(crate) fn not_allowed(detail: impl Into<String>) -> Rejection {
    Rejection::new(Reason::ClaimNotAllowed, detail)
}

pub(crate) fn mismatch(detail: impl Into<String>) -> Rejection {
    Rejection::new(Reason::ProfileMismatch, detail)
}

/// A claim that must be a non-empty string: absent is `missing_claim`, anything
/// else `profile_mismatch`. Details name the configured path, never the value.
pub(crate) fn string_claim<'c>(claims: &'c Map<String, Value>, path: &str) -> Result<&'c str, Rejection> {
    match claim(claims, path) {
        None | Some(Value::Null) => {
            Err(Rejection::new(Reason::MissingClaim, format!("token has no {path} claim")))
        }
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(_) => Err(mismatch(format!("{path} is not a non-empty string"))),
    }
}

/// Compiles an optional allowlist of [`Pattern`]s: `None` when omitted; an empty
/// list, `*` alone (it would admit everything) or an entry `valid` refuses is an
/// error naming the entry.
pub(crate) fn patterns(
    list: Option<Vec<String>>,
    field: &str,
    valid: impl Fn(&str) -> Result<(), &'static str>,
) -> Result<Option<Vec<Pattern>>, ConfigError> {
    let Some(list) = list else { return Ok(None) };
    if list.is_empty() || list.len() > MAX_ALLOWLIST {
        return Err(invalid(field, format!("must list 1 to {MAX_ALLOWLIST} entries; omit it to allow any")));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let at = format!("{field}[{i}]");
        if entry == "*" {
            return Err(invalid(at, "\"*\" alone allows everything; omit the list instead"));
        }
        let pattern = Pattern::parse(entry).map_err(|why| invalid(&at, why))?;
        let literal = match &pattern {
            Pattern::Exact(s) | Pattern::Prefix(s) => s,
        };
        valid(literal).map_err(|why| invalid(&at, why))?;
        out.push(pattern);
    }
    Ok(Some(out))
}

pub(crate) fn any_matches(patterns: &[Pattern], value: &str) -> bool {
    patterns.iter().any(|p| p.matches(value))
}

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers shared by the profile tests.
    use serde_json::{json, Map, Value};

    use super::*;
    use crate::config::Config;

    pub const NOW: i64 = 1_800_000_000;

    pub fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("claims must be an object"),
        }
    }

    pub fn facts(c: &Map<String, Value>) -> TokenFacts<'_> {
        TokenFacts {
            subject: c.get("sub").and_then(Value::as_str).unwrap_or_default(),
            claims: c,
            expires_at: c.get("exp").and_then(Value::as_i64).unwrap_or(NOW + 300),
            issued_at: c.get("iat").and_then(Value::as_i64),
        }
    }

    /// A whole plugin configuration with one issuer carrying `issuer_fields`.
    pub fn config(issuer_fields: Value) -> Result<Config, ConfigError> {
        let mut issuer = json!({
            "name": "p", "issuer": "https://issuer.example", "audiences": ["nhi-gateway"],
            "jwks": {"cluster": "c", "authority": "a", "path": "/keys"}
        });
        for (k, v) in issuer_fields.as_object().unwrap() {
            issuer[k] = v.clone();
        }
        Config::from_json(json!({"issuers": [issuer]}).to_string().as_bytes())
    }

    pub fn profile(issuer_fields: Value) -> Profile {
        config(issuer_fields).unwrap().issuers[0].profile.clone()
    }

    pub fn invalid_field(issuer_fields: Value) -> String {
        match config(issuer_fields) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    /// The reason of the first failing phase, or the identity.
    pub fn outcome(profile: &Profile, c: Value) -> Result<String, Reason> {
        let c = claims(c);
        let f = facts(&c);
        let identity = profile.identity(&f).map_err(|r| r.reason)?;
        profile.admit(&f).map_err(|r| r.reason)?;
        Ok(identity)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::testing::*;
    use super::*;

    #[test]
    fn without_profile_the_identity_is_sub() {
        let p = profile(json!({}));
        assert_eq!(p.name(), "generic");
        assert_eq!(outcome(&p, json!({"sub": "robot"})), Ok("robot".into()));
        assert_eq!(p.key_use(), KeyUse::Sig);
        assert!(p.default_typ().is_none());
    }

    /// An identity is forwarded byte for byte, but a backend's HTTP parser trims the
    /// whitespace around a header value: `"limited "` would get a quota and deny
    /// lists of its own and reach the backend as `limited`. Refused, as control
    /// characters are.
    #[test]
    fn an_identity_with_whitespace_at_either_end_is_refused() {
        let p = profile(json!({}));
        for sub in ["limited ", " limited", "limited\t", "\u{a0}limited", "robot\n"] {
            assert_eq!(outcome(&p, json!({"sub": sub})), Err(Reason::MalformedToken), "{sub:?}");
        }
        assert_eq!(outcome(&p, json!({"sub": "build bot"})), Ok("build bot".into()), "inside is fine");
    }

    #[test]
    fn generic_claim_rules_each_hold() {
        let p = profile(json!({"profile": {"type": "generic", "claims": [
            {"claim": "azp", "equals": "partner-ci"},
            {"claim": "org.tier", "one_of": ["gold", "silver"]},
            {"claim": "email", "prefix": "build@"},
            {"claim": "groups", "contains": "deployers"}
        ]}}));
        let good = json!({"sub": "partner-7", "azp": "partner-ci", "org": {"tier": "gold"},
                          "email": "build@partner.example", "groups": ["readers", "deployers"]});
        assert_eq!(outcome(&p, good.clone()), Ok("partner-7".into()));
        for (claim, value) in [
            ("azp", json!("someone-else")),
            ("org", json!({"tier": "bronze"})),
            ("email", json!("admin@partner.example")),
            ("groups", json!(["readers"])),
            ("groups", json!("deployers-not")),
        ] {
            let mut c = good.clone();
            c[claim] = value.clone();
            assert_eq!(outcome(&p, c), Err(Reason::ClaimNotAllowed), "{claim}={value}");
        }
        let mut missing = good.clone();
        missing.as_object_mut().unwrap().remove("azp");
        assert_eq!(outcome(&p, missing), Err(Reason::ClaimNotAllowed));
    }

    #[test]
    fn generic_identity_claim() {
        let p = profile(json!({"profile": {"type": "generic", "identity_claim": "client.id"}}));
        assert_eq!(outcome(&p, json!({"sub": "x", "client": {"id": "partner-ci"}})), Ok("partner-ci".into()));
        assert_eq!(outcome(&p, json!({"sub": "x"})), Err(Reason::MissingClaim));
        assert_eq!(outcome(&p, json!({"sub": "x", "client": {"id": 7}})), Err(Reason::ProfileMismatch));
        assert_eq!(outcome(&p, json!({"sub": "x", "client": {"id": ""}})), Err(Reason::ProfileMismatch));
        assert_eq!(outcome(&p, json!({"sub": "x", "client": {"id": "a\nb"}})), Err(Reason::MalformedToken));
    }

    #[test]
    fn profile_configuration_errors_name_their_field() {
        for (fields, field) in [
            (json!({"profile": {"type": "generic", "claims": []}}), "issuers[0].profile.claims"),
            (
                json!({"profile": {"type": "generic", "claims": [{"claim": "a", "equals": "b"}, {"claim": ""}]}}),
                "issuers[0].profile.claims[1].claim",
            ),
            (
                json!({"profile": {"type": "generic", "claims": [{"claim": "a"}]}}),
                "issuers[0].profile.claims[0]",
            ),
            (
                json!({"profile": {"type": "generic", "identity_claim": "a..b"}}),
                "issuers[0].profile.identity_claim",
            ),
        ] {
            assert_eq!(invalid_field(fields.clone()), field, "{fields}");
        }
    }

    #[test]
    fn unknown_profile_types_and_members_are_refused_by_their_path() {
        for (fields, field) in [
            (json!({"profile": {"type": "k8s"}}), "issuers[0].profile.type"),
            (json!({"profile": {"type": "kubernetes", "namespace": ["ci"]}}), "issuers[0].profile.namespace"),
            (
                json!({"profile": {"type": "generic", "trust_domains": ["a"]}}),
                "issuers[0].profile.trust_domains",
            ),
            (json!({"profile": {"namespaces": ["ci"]}}), "issuers[0].profile.type"),
            (json!({"profile": {"type": 7}}), "issuers[0].profile.type"),
            (json!({"profile": "kubernetes"}), "issuers[0].profile"),
        ] {
            let err = config(fields.clone()).unwrap_err();
            assert_eq!(err.field(), field, "{fields}: {err}");
        }
        let err = config(json!({"profile": {"type": "k8s"}})).unwrap_err();
        assert_eq!(
            err.reason(),
            r#"must be one of "generic", "kubernetes", "spiffe", "github_actions", not "k8s""#
        );
    }
}
