//! `github_actions`: the OIDC tokens GitHub Actions jobs request
//! (`permissions: id-token: write`).
//!
//! GitHub's issuer is shared by every repository on github.com, so a valid signature
//! proves only "some GitHub workflow". The profile therefore requires an allowlist of
//! `repository_ids` or `repository_owner_ids` — numeric IDs, because a deleted
//! repository's or organization's *name* can be registered again by someone else,
//! while its ID is never reused — and offers allowlists for `ref`, `environment`,
//! `job_workflow_ref` and `event_name`.
//!
//! The audience must be a custom one (`core.getIDToken('<audience>')`, or the
//! `audience` input of the action requesting the token): the default audience is the
//! owner's URL, `https://github.com/OWNER`, which every token for that owner carries,
//! whatever it was requested for; `sts.amazonaws.com` and `api://AzureADTokenExchange`
//! are the audiences of cloud federation, and a token minted for a cloud provider
//! must not open this gateway.
//!
//! The forwarded identity is `repository@ref` (`octo-org/octo-repo@refs/heads/main`)
//! unless `identity_claim` names another claim (e.g. `job_workflow_ref`).

use crate::json::{self, FromJson};
use serde::Deserialize;
use serde_json::Value;

use crate::claims::matcher::Pattern;
use crate::claims::matcher::RawClaim;
use crate::claims::path::claim;
use crate::error::ConfigError;
use crate::reason::{Reason, Rejection};

use super::{any_matches, invalid, mismatch, not_allowed, patterns, string_claim, TokenFacts, MAX_ALLOWLIST};

/// The issuer of GitHub Actions tokens on github.com.
pub const ISSUER: &str = "https://token.actions.githubusercontent.com";
/// Audiences that belong to someone else (see the module docs).
pub const FOREIGN_AUDIENCES: [&str; 2] = ["sts.amazonaws.com", "api://azureadtokenexchange"];
/// The default audience is the owner's URL, under this prefix.
pub const DEFAULT_AUDIENCE_PREFIX: &str = "https://github.com/";

#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawGithubActions {
    /// Numbers or strings of digits.
    #[serde(default)]
    pub repository_ids: Option<Vec<Value>>,
    #[serde(default)]
    pub repository_owner_ids: Option<Vec<Value>>,
    /// `refs/heads/main`, `refs/tags/v*`…
    #[serde(default)]
    pub refs: Option<Vec<String>>,
    #[serde(default)]
    pub environments: Option<Vec<String>>,
    /// `octo-org/workflows/.github/workflows/deploy.yml@refs/heads/main`…
    #[serde(default)]
    pub job_workflow_refs: Option<Vec<String>>,
    #[serde(default)]
    pub event_names: Option<Vec<String>>,
    #[serde(default)]
    pub identity_claim: Option<String>,
    #[serde(default)]
    pub claims: Option<Vec<RawClaim>>,
}

impl FromJson for RawGithubActions {
    fn from_json(value: Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawGithubActions {
            repository_ids: o.optional("repository_ids"),
            repository_owner_ids: o.optional("repository_owner_ids"),
            refs: o.optional("refs"),
            environments: o.optional("environments"),
            job_workflow_refs: o.optional("job_workflow_refs"),
            event_names: o.optional("event_names"),
            identity_claim: o.optional("identity_claim"),
            claims: o.optional("claims"),
        })
    }
}

/// The validated `github_actions` profile. `None`: that claim is not restricted.
#[derive(Debug, Clone, PartialEq)]
pub struct GithubActions {
    repository_ids: Option<Vec<u64>>,
    repository_owner_ids: Option<Vec<u64>>,
    refs: Option<Vec<Pattern>>,
    environments: Option<Vec<Pattern>>,
    job_workflow_refs: Option<Vec<Pattern>>,
    event_names: Option<Vec<Pattern>>,
}

/// Whether `issuer` is GitHub's: github.com's, an enterprise's customized one
/// (`…githubusercontent.com/<enterprise>`), or a GitHub Enterprise Server's
/// (`https://HOST/_services/token`).
pub fn is_github_issuer(issuer: &str) -> bool {
    let enterprise = issuer
        .strip_prefix(ISSUER)
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(|slug| !slug.is_empty() && slug.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    let server = issuer
        .strip_prefix("https://")
        .and_then(|rest| rest.strip_suffix("/_services/token"))
        .is_some_and(|host| !host.is_empty() && !host.contains('/'));
    issuer == ISSUER || enterprise || server
}

pub fn compile(
    raw: RawGithubActions,
    issuer: &str,
    audiences: &[String],
    at: &dyn Fn(&str) -> String,
) -> Result<GithubActions, ConfigError> {
    if !is_github_issuer(issuer) {
        return Err(invalid(
            at("issuer"),
            format!(
                "must be {ISSUER} (or {ISSUER}/<enterprise>, or https://<GHES host>/_services/token) \
                 for the github_actions profile"
            ),
        ));
    }
    for (j, audience) in audiences.iter().enumerate() {
        let lower = audience.to_ascii_lowercase();
        if lower.starts_with(DEFAULT_AUDIENCE_PREFIX) || FOREIGN_AUDIENCES.contains(&lower.as_str()) {
            return Err(invalid(
                at(&format!("audiences[{j}]")),
                "is GitHub's default audience or a cloud provider's: request a custom audience \
                 for this gateway (core.getIDToken('<audience>'))",
            ));
        }
    }
    let p = |field: &str| at(&format!("profile.{field}"));
    let repository_ids = numeric_ids(raw.repository_ids, &p("repository_ids"))?;
    let repository_owner_ids = numeric_ids(raw.repository_owner_ids, &p("repository_owner_ids"))?;
    if repository_ids.is_none() && repository_owner_ids.is_none() {
        return Err(invalid(
            p("repository_ids"),
            "or repository_owner_ids is required: without them every GitHub repository's workflows \
             would be admitted",
        ));
    }
    let printable = |s: &str| {
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            Err("must not contain spaces or control characters")
        } else {
            Ok(())
        }
    };
    Ok(GithubActions {
        repository_ids,
        repository_owner_ids,
        refs: patterns(raw.refs, &p("refs"), printable)?,
        environments: patterns(raw.environments, &p("environments"), |_| Ok(()))?,
        job_workflow_refs: patterns(raw.job_workflow_refs, &p("job_workflow_refs"), printable)?,
        event_names: patterns(raw.event_names, &p("event_names"), printable)?,
    })
}

fn numeric_ids(list: Option<Vec<Value>>, field: &str) -> Result<Option<Vec<u64>>, ConfigError> {
    let Some(list) = list else { return Ok(None) };
    if list.is_empty() || list.len() > MAX_ALLOWLIST {
        return Err(invalid(field, format!("must list 1 to {MAX_ALLOWLIST} IDs")));
    }
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            numeric_id(v).filter(|id| *id > 0).ok_or_else(|| {
                invalid(
                    format!("{field}[{i}]"),
                    "must be a numeric ID (a number or a string of digits), not a name: names can be re-registered",
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// A GitHub numeric ID: GitHub sends strings of digits; numbers are accepted too.
fn numeric_id(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) if !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().ok()
        }
        _ => None,
    }
}

/// A numeric ID claim: absent is `missing_claim` (every GitHub token has it), not
/// numeric is `profile_mismatch`.
fn id_claim(facts: &TokenFacts<'_>, name: &str) -> Result<u64, Rejection> {
    match facts.claims.get(name) {
        None | Some(Value::Null) => Err(Rejection::new(Reason::MissingClaim, format!("token has no {name}"))),
        Some(v) => numeric_id(v).ok_or_else(|| mismatch(format!("{name} is not a numeric ID"))),
    }
}

impl GithubActions {
    /// Checks the token's shape; returns `repository@ref` unless `identity_claim`
    /// replaces it (then `None`).
    pub fn identity(&self, facts: &TokenFacts<'_>, custom: bool) -> Result<Option<String>, Rejection> {
        id_claim(facts, "repository_id")?;
        id_claim(facts, "repository_owner_id")?;
        if custom {
            return Ok(None);
        }
        let repository = string_claim(facts.claims, "repository")?;
        let git_ref = string_claim(facts.claims, "ref")?;
        Ok(Some(format!("{repository}@{git_ref}")))
    }

    /// Every configured allowlist must admit the token. An optional claim the token
    /// lacks (a job without `environment`) is not on any list.
    pub fn admit(&self, facts: &TokenFacts<'_>) -> Result<(), Rejection> {
        if let Some(ids) = &self.repository_ids {
            if !ids.contains(&id_claim(facts, "repository_id")?) {
                return Err(not_allowed("repository_id is not allowed"));
            }
        }
        if let Some(ids) = &self.repository_owner_ids {
            if !ids.contains(&id_claim(facts, "repository_owner_id")?) {
                return Err(not_allowed("repository_owner_id is not allowed"));
            }
        }
        for (name, allowed) in [
            ("ref", &self.refs),
            ("environment", &self.environments),
            ("job_workflow_ref", &self.job_workflow_refs),
            ("event_name", &self.event_names),
        ] {
            let Some(allowed) = allowed else { continue };
            let admitted = match claim(facts.claims, name) {
                Some(Value::String(value)) => any_matches(allowed, value),
                None | Some(Value::Null) => false,
                Some(_) => return Err(mismatch(format!("{name} is not a string"))),
            };
            if !admitted {
                return Err(not_allowed(format!("{name} is not allowed")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::testing::*;
    use super::*;

    /// A token as GitHub issues it to a deployment job (claims per GitHub's docs).
    pub fn token() -> Value {
        json!({
            "jti": "example-id",
            "sub": "repo:octo-org/octo-repo:environment:prod",
            "environment": "prod",
            "aud": "https://nhi-gateway.example",
            "ref": "refs/heads/main",
            "sha": "example-sha",
            "repository": "octo-org/octo-repo",
            "repository_owner": "octo-org",
            "actor_id": "12",
            "repository_visibility": "private",
            "repository_id": "74",
            "repository_owner_id": "65",
            "run_id": "example-run-id",
            "run_number": "10",
            "run_attempt": "2",
            "runner_environment": "github-hosted",
            "actor": "octocat",
            "workflow": "example-workflow",
            "head_ref": "",
            "base_ref": "",
            "event_name": "workflow_dispatch",
            "ref_type": "branch",
            "job_workflow_ref": "octo-org/octo-automation/.github/workflows/oidc.yml@refs/heads/main",
            "iss": "https://token.actions.githubusercontent.com",
            "nbf": NOW - 5,
            "exp": NOW + 295,
            "iat": NOW - 5
        })
    }

    fn fields() -> Value {
        json!({
            "issuer": ISSUER,
            "audiences": ["https://nhi-gateway.example"],
            "profile": {
                "type": "github_actions",
                "repository_ids": ["74", 75],
                "repository_owner_ids": [65],
                "refs": ["refs/heads/main", "refs/tags/v*"],
                "environments": ["prod"],
                "job_workflow_refs": ["octo-org/octo-automation/.github/workflows/oidc.yml@refs/heads/main"],
                "event_names": ["push", "workflow_dispatch"]
            }
        })
    }

    #[test]
    fn a_deployment_job_is_repository_at_ref() {
        assert_eq!(outcome(&profile(fields()), token()), Ok("octo-org/octo-repo@refs/heads/main".into()));
        let mut tag = token();
        tag["ref"] = json!("refs/tags/v1.2.0");
        assert_eq!(outcome(&profile(fields()), tag), Ok("octo-org/octo-repo@refs/tags/v1.2.0".into()));
    }

    #[test]
    fn each_allowlist_refuses() {
        let p = profile(fields());
        for (claim, value) in [
            // The same name, re-registered: a different ID.
            ("repository_id", json!("9001")),
            ("repository_owner_id", json!("9002")),
            ("ref", json!("refs/heads/feature")),
            ("environment", json!("staging")),
            ("job_workflow_ref", json!("evil-org/x/.github/workflows/oidc.yml@refs/heads/main")),
            ("event_name", json!("pull_request_target")),
        ] {
            let mut t = token();
            t[claim] = value.clone();
            assert_eq!(outcome(&p, t), Err(Reason::ClaimNotAllowed), "{claim}={value}");
        }
        let mut no_env = token();
        no_env.as_object_mut().unwrap().remove("environment");
        assert_eq!(outcome(&p, no_env), Err(Reason::ClaimNotAllowed), "job without an environment");
    }

    #[test]
    fn shape_errors() {
        let p = profile(fields());
        let mut t = token();
        t.as_object_mut().unwrap().remove("repository_id");
        assert_eq!(outcome(&p, t), Err(Reason::MissingClaim));
        let mut t = token();
        t["repository_owner_id"] = json!("octo-org");
        assert_eq!(outcome(&p, t), Err(Reason::ProfileMismatch));
        let mut t = token();
        t.as_object_mut().unwrap().remove("ref");
        assert_eq!(outcome(&p, t), Err(Reason::MissingClaim));
        let mut t = token();
        t["event_name"] = json!(["push"]);
        assert_eq!(outcome(&p, t), Err(Reason::ProfileMismatch));
        // Numbers are accepted where GitHub sends strings of digits.
        let mut t = token();
        t["repository_id"] = json!(74);
        assert!(outcome(&p, t).is_ok());
    }

    #[test]
    fn identity_claim_replaces_repository_at_ref() {
        let mut f = fields();
        f["profile"]["identity_claim"] = json!("job_workflow_ref");
        let mut t = token();
        t.as_object_mut().unwrap().remove("ref");
        f["profile"].as_object_mut().unwrap().remove("refs");
        assert_eq!(
            outcome(&profile(f), t),
            Ok("octo-org/octo-automation/.github/workflows/oidc.yml@refs/heads/main".into())
        );
    }

    #[test]
    fn configuration_rules() {
        let with = |edit: &dyn Fn(&mut Value)| {
            let mut f = fields();
            edit(&mut f);
            invalid_field(f)
        };
        assert_eq!(with(&|f| f["issuer"] = json!("https://issuer.example")), "issuers[0].issuer");
        assert_eq!(
            with(&|f| f["audiences"] = json!(["https://nhi-gateway.example", "https://github.com/octo-org"])),
            "issuers[0].audiences[1]"
        );
        assert_eq!(with(&|f| f["audiences"] = json!(["sts.amazonaws.com"])), "issuers[0].audiences[0]");
        assert_eq!(
            with(&|f| {
                let p = f["profile"].as_object_mut().unwrap();
                p.remove("repository_ids");
                p.remove("repository_owner_ids");
            }),
            "issuers[0].profile.repository_ids"
        );
        assert_eq!(
            with(&|f| f["profile"]["repository_ids"] = json!(["octo-org/octo-repo"])),
            "issuers[0].profile.repository_ids[0]"
        );
        assert_eq!(
            with(&|f| f["profile"]["repository_owner_ids"] = json!([0])),
            "issuers[0].profile.repository_owner_ids[0]"
        );
        assert_eq!(
            with(&|f| f["profile"]["repository_ids"] = json!([])),
            "issuers[0].profile.repository_ids"
        );
        assert_eq!(with(&|f| f["profile"]["refs"] = json!(["*"])), "issuers[0].profile.refs[0]");
        assert_eq!(
            with(&|f| f["profile"]["event_names"] = json!(["pu sh"])),
            "issuers[0].profile.event_names[0]"
        );
        for ok in [
            "https://token.actions.githubusercontent.com/octo-enterprise",
            "https://ghes.example.com/_services/token",
        ] {
            let mut f = fields();
            f["issuer"] = json!(ok);
            assert!(config(f).is_ok(), "{ok}");
        }
    }
}
