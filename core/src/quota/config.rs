//! The `quotas` block of the plugin configuration: raw JSON shape, then validation
//! into [`Quotas`].

use std::collections::HashSet;

use crate::json::{self, FromJson};
use serde::Deserialize;

use crate::error::ConfigError;

use super::gcra::Rate;
use super::table::Geometry;
use super::{IdentityPattern, Policy, Quotas, Rule, Selector};

pub const DEFAULT_MAX_TRACKED_IDENTITIES: u32 = 10_000;
/// At about 30 bytes an identity, the largest table is some 30 MB of shared data.
pub const MAX_TRACKED_IDENTITIES: u32 = 1_000_000;
pub const MAX_RULES: usize = 256;
/// A day: longer windows are not a rate limit any more but an allowance.
pub const MAX_PER_SECONDS: u64 = 86_400;
pub const MAX_REQUESTS: u64 = 1_000_000_000;
/// The name of the policy that applies when no rule matches.
pub const DEFAULT_POLICY: &str = "default";

/// `quotas` as written in the plugin configuration.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawQuotas {
    /// Required: every verified identity gets a budget, none is unlimited by omission.
    pub default: RawLimit,
    #[serde(default)]
    pub rules: Vec<RawRule>,
    pub max_tracked_identities: Option<u64>,
    pub response_headers: Option<bool>,
    /// A budget per identity *and* DPoP key: each key an identity proves it holds
    /// gets its own (requests without DPoP keep the identity's).
    pub per_dpop_key: Option<bool>,
}

impl FromJson for RawQuotas {
    fn from_json(value: serde_json::Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawQuotas {
            default: o.required("default"),
            rules: o.or_default("rules"),
            max_tracked_identities: o.optional("max_tracked_identities"),
            response_headers: o.optional("response_headers"),
            per_dpop_key: o.optional("per_dpop_key"),
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawLimit {
    pub requests: u64,
    pub per_seconds: u64,
    pub burst: Option<u64>,
}

impl FromJson for RawLimit {
    fn from_json(value: serde_json::Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawLimit {
            requests: o.required("requests"),
            per_seconds: o.required("per_seconds"),
            burst: o.optional("burst"),
        })
    }
}

/// One rule. The limit fields are spelled out rather than flattened from
/// [`RawLimit`]: serde cannot deny unknown fields through a flatten.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: Option<String>,
    pub identities: Option<Vec<String>>,
    pub claim: Option<String>,
    pub equals: Option<String>,
    pub routes: Option<Vec<String>>,
    pub requests: u64,
    pub per_seconds: u64,
    pub burst: Option<u64>,
}

impl FromJson for RawRule {
    fn from_json(value: serde_json::Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawRule {
            name: o.optional("name"),
            identities: o.optional("identities"),
            claim: o.optional("claim"),
            equals: o.optional("equals"),
            routes: o.optional("routes"),
            requests: o.required("requests"),
            per_seconds: o.required("per_seconds"),
            burst: o.optional("burst"),
        })
    }
}

/// Parses and validates a `quotas` value found at `at` (e.g. `"quotas"`).
pub fn from_value(value: serde_json::Value, at: &str) -> Result<Quotas, ConfigError> {
    compile(RawQuotas::from_json(value, at)?, at)
}

/// Validates a parsed `quotas` block found at `at`; error fields start with `at`.
pub fn compile(raw: RawQuotas, at: &str) -> Result<Quotas, ConfigError> {
    let field = |rest: &str| format!("{at}.{rest}");

    let default = compile_policy(
        DEFAULT_POLICY.to_owned(),
        raw.default.requests,
        raw.default.per_seconds,
        raw.default.burst,
        &|rest| field(&format!("default.{rest}")),
    )?;

    if raw.rules.len() > MAX_RULES {
        return Err(ConfigError::invalid(field("rules"), format!("lists more than {MAX_RULES} rules")));
    }
    let mut names = HashSet::from([DEFAULT_POLICY.to_owned()]);
    let mut rules = Vec::with_capacity(raw.rules.len());
    for (i, raw_rule) in raw.rules.into_iter().enumerate() {
        let rule_at = field(&format!("rules[{i}]"));
        let rule = compile_rule(raw_rule, i, &rule_at)?;
        if !names.insert(rule.policy.name.clone()) {
            return Err(ConfigError::invalid(
                format!("{rule_at}.name"),
                format!("{:?} names another policy", rule.policy.name),
            ));
        }
        rules.push(rule);
    }

    let max = raw.max_tracked_identities.unwrap_or(u64::from(DEFAULT_MAX_TRACKED_IDENTITIES));
    let max_tracked_identities =
        u32::try_from(max).ok().filter(|m| (1..=MAX_TRACKED_IDENTITIES).contains(m)).ok_or_else(|| {
            ConfigError::invalid(
                field("max_tracked_identities"),
                format!("must be between 1 and {MAX_TRACKED_IDENTITIES}"),
            )
        })?;

    Ok(Quotas {
        default,
        rules,
        max_tracked_identities,
        response_headers: raw.response_headers.unwrap_or(false),
        per_dpop_key: raw.per_dpop_key.unwrap_or(false),
        geometry: Geometry::new(max_tracked_identities),
        at: at.to_owned(),
    })
}

fn compile_rule(raw: RawRule, index: usize, at: &str) -> Result<Rule, ConfigError> {
    let field = |rest: &str| format!("{at}.{rest}");
    let name = match raw.name {
        Some(name) => {
            if name == DEFAULT_POLICY {
                return Err(ConfigError::invalid(
                    field("name"),
                    "\"default\" is the name of the default policy",
                ));
            }
            name
        }
        None => format!("rule-{index}"),
    };
    let selector = match (raw.identities, raw.claim, raw.equals) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err(ConfigError::invalid(
                at,
                "takes either `identities` or `claim` with `equals`, not both",
            ))
        }
        (None, None, None) => {
            return Err(ConfigError::invalid(at, "needs `identities` or `claim` with `equals`"))
        }
        (None, Some(_), None) => {
            return Err(ConfigError::invalid(field("equals"), "is required with `claim`"))
        }
        (None, None, Some(_)) => {
            return Err(ConfigError::invalid(field("claim"), "is required with `equals`"))
        }
        (None, Some(claim), Some(equals)) => {
            if claim.is_empty() {
                return Err(ConfigError::invalid(field("claim"), "must not be empty"));
            }
            if equals.is_empty() {
                return Err(ConfigError::invalid(field("equals"), "must not be empty"));
            }
            Selector::Claim { claim, equals }
        }
        (Some(identities), None, None) => {
            if identities.is_empty() {
                return Err(ConfigError::invalid(field("identities"), "must list at least one identity"));
            }
            let mut patterns = Vec::with_capacity(identities.len());
            for (j, identity) in identities.into_iter().enumerate() {
                patterns
                    .push(identity_pattern(identity).map_err(|reason| {
                        ConfigError::invalid(field(&format!("identities[{j}]")), reason)
                    })?);
            }
            Selector::Identities(patterns)
        }
    };
    let routes = match raw.routes {
        None => None,
        Some(routes) if routes.is_empty() => {
            return Err(ConfigError::invalid(
                field("routes"),
                "must list at least one route (omit it to apply on every route)",
            ))
        }
        Some(routes) => {
            if let Some(j) = routes.iter().position(String::is_empty) {
                return Err(ConfigError::invalid(field(&format!("routes[{j}]")), "must not be empty"));
            }
            Some(routes)
        }
    };
    let policy = compile_policy(name, raw.requests, raw.per_seconds, raw.burst, &field)?;
    Ok(Rule { selector, routes, policy })
}

/// `*` is allowed only last, as "any identity starting with".
fn identity_pattern(identity: String) -> Result<IdentityPattern, &'static str> {
    if identity.is_empty() {
        return Err("must not be empty");
    }
    match identity.strip_suffix('*') {
        Some(prefix) if !prefix.contains('*') => Ok(IdentityPattern::Prefix(prefix.to_owned())),
        None if !identity.contains('*') => Ok(IdentityPattern::Exact(identity)),
        _ => Err("may contain `*` only as its last character"),
    }
}

fn compile_policy(
    name: String,
    requests: u64,
    per_seconds: u64,
    burst: Option<u64>,
    field: &dyn Fn(&str) -> String,
) -> Result<Policy, ConfigError> {
    if !valid_policy_name(&name) {
        return Err(ConfigError::invalid(
            field("name"),
            "must be 1-64 characters of a-z, 0-9, '-', '_' or '.'",
        ));
    }
    if !(1..=MAX_REQUESTS).contains(&requests) {
        return Err(ConfigError::invalid(field("requests"), format!("must be between 1 and {MAX_REQUESTS}")));
    }
    if !(1..=MAX_PER_SECONDS).contains(&per_seconds) {
        return Err(ConfigError::invalid(
            field("per_seconds"),
            format!("must be between 1 and {MAX_PER_SECONDS}"),
        ));
    }
    // Default: the whole quota may be spent at once, a plain "N per window".
    let burst = burst.unwrap_or(requests);
    if !(1..=requests).contains(&burst) {
        return Err(ConfigError::invalid(
            field("burst"),
            format!(
                "must be between 1 and `requests` ({requests}); for a larger burst at the same \
                 rate, scale `requests` and `per_seconds` together"
            ),
        ));
    }
    Ok(Policy { rate: Rate::new(requests, per_seconds, burst), name, requests, per_seconds, burst })
}

/// Names appear quoted in `RateLimit` headers (an sf-string) and in store keys:
/// a narrow alphabet keeps both trivially safe.
fn valid_policy_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn issue_example() -> Value {
        json!({
            "default": { "requests": 100, "per_seconds": 60, "burst": 20 },
            "rules": [
                { "identities": ["system:serviceaccount:ci:deployer"], "requests": 10, "per_seconds": 1, "burst": 5 },
                { "claim": "tier", "equals": "gold", "requests": 1000, "per_seconds": 60 }
            ],
            "max_tracked_identities": 100000,
            "response_headers": true
        })
    }

    fn invalid(value: Value) -> ConfigError {
        from_value(value, "quotas").unwrap_err()
    }

    #[test]
    fn the_issue_example_compiles() {
        let q = from_value(issue_example(), "quotas").unwrap();
        assert_eq!(q.max_tracked_identities, 100_000);
        assert!(q.response_headers);
        assert_eq!(q.default_policy().name(), "default");
        assert_eq!(q.default_policy().burst(), 20);
        let names: Vec<&str> = q.rules.iter().map(|r| r.policy.name()).collect();
        assert_eq!(names, ["rule-0", "rule-1"]);
        // Burst defaults to the whole quota.
        assert_eq!(q.rules[1].policy.burst(), 1000);
    }

    #[test]
    fn defaults() {
        let q = from_value(json!({ "default": { "requests": 5, "per_seconds": 1 } }), "quotas").unwrap();
        assert_eq!(q.max_tracked_identities, DEFAULT_MAX_TRACKED_IDENTITIES);
        assert!(!q.response_headers);
        assert!(q.rules.is_empty());
        assert_eq!(q.default_policy().burst(), 5);
    }

    #[test]
    fn unknown_and_missing_fields_are_errors() {
        let mut v = issue_example();
        v["rules"][0]["limit"] = json!(3);
        let err = invalid(v);
        assert_eq!(err.field(), "quotas.rules[0].limit");
        assert!(err.reason().starts_with("is not a known field"), "{err}");
        let err = invalid(json!({ "rules": [] }));
        assert_eq!((err.field(), err.reason()), ("quotas.default", "is required"));
    }

    #[test]
    fn limits_are_range_checked_with_the_field_named() {
        let cases = [
            ("/default/requests", json!(0), "quotas.default.requests"),
            ("/default/per_seconds", json!(0), "quotas.default.per_seconds"),
            ("/default/per_seconds", json!(86_401), "quotas.default.per_seconds"),
            ("/default/burst", json!(0), "quotas.default.burst"),
            ("/default/burst", json!(101), "quotas.default.burst"),
            ("/rules/1/per_seconds", json!(0), "quotas.rules[1].per_seconds"),
            ("/rules/1/requests", json!(1_000_000_001u64), "quotas.rules[1].requests"),
            ("/rules/0/burst", json!(11), "quotas.rules[0].burst"),
            ("/max_tracked_identities", json!(0), "quotas.max_tracked_identities"),
            ("/max_tracked_identities", json!(1_000_001), "quotas.max_tracked_identities"),
            ("/max_tracked_identities", json!(u64::MAX), "quotas.max_tracked_identities"),
        ];
        for (pointer, value, field) in cases {
            let mut v = issue_example();
            *v.pointer_mut(pointer).unwrap() = value;
            assert_eq!(invalid(v).field(), field, "{pointer}");
        }
    }

    #[test]
    fn a_rule_has_exactly_one_selector() {
        let cases = [
            (json!({ "identities": ["a"], "claim": "tier", "equals": "gold" }), "quotas.rules[0]"),
            (json!({ "identities": ["a"], "equals": "gold" }), "quotas.rules[0]"),
            (json!({}), "quotas.rules[0]"),
            (json!({ "claim": "tier" }), "quotas.rules[0].equals"),
            (json!({ "equals": "gold" }), "quotas.rules[0].claim"),
            (json!({ "claim": "", "equals": "gold" }), "quotas.rules[0].claim"),
            (json!({ "claim": "tier", "equals": "" }), "quotas.rules[0].equals"),
            (json!({ "identities": [] }), "quotas.rules[0].identities"),
            (json!({ "identities": ["a", ""] }), "quotas.rules[0].identities[1]"),
            (json!({ "identities": ["a*b"] }), "quotas.rules[0].identities[0]"),
            (json!({ "identities": ["**"] }), "quotas.rules[0].identities[0]"),
            (json!({ "identities": ["a"], "routes": [] }), "quotas.rules[0].routes"),
            (json!({ "identities": ["a"], "routes": ["x", ""] }), "quotas.rules[0].routes[1]"),
        ];
        for (selector, field) in cases {
            let mut rule = selector.clone();
            rule["requests"] = json!(1);
            rule["per_seconds"] = json!(1);
            let v = json!({ "default": { "requests": 1, "per_seconds": 1 }, "rules": [rule] });
            assert_eq!(invalid(v).field(), field, "{selector}");
        }
    }

    #[test]
    fn policy_names_are_validated_and_unique() {
        let rule = |name: &str| json!({ "name": name, "identities": ["a"], "requests": 1, "per_seconds": 1 });
        for bad in ["", "Gold", "has space", "quo\"te", &"x".repeat(65)] {
            let v = json!({ "default": { "requests": 1, "per_seconds": 1 }, "rules": [rule(bad)] });
            assert_eq!(invalid(v).field(), "quotas.rules[0].name", "{bad:?}");
        }
        let v = json!({ "default": { "requests": 1, "per_seconds": 1 }, "rules": [rule("default")] });
        assert_eq!(invalid(v).field(), "quotas.rules[0].name");
        let v = json!({ "default": { "requests": 1, "per_seconds": 1 },
                        "rules": [rule("gold"), rule("gold")] });
        assert_eq!(invalid(v).field(), "quotas.rules[1].name");
        // An explicit name may not take the generated name of another rule either.
        let v = json!({ "default": { "requests": 1, "per_seconds": 1 },
                        "rules": [rule("rule-1"), { "identities": ["b"], "requests": 1, "per_seconds": 1 }] });
        assert_eq!(invalid(v).field(), "quotas.rules[1].name");
        let v = json!({ "default": { "requests": 1, "per_seconds": 1 }, "rules": [rule("gold.tier-2_a")] });
        assert!(from_value(v, "quotas").is_ok());
    }

    #[test]
    fn too_many_rules() {
        let rules: Vec<Value> = (0..=MAX_RULES)
            .map(|_| json!({ "identities": ["a"], "requests": 1, "per_seconds": 1 }))
            .collect();
        let v = json!({ "default": { "requests": 1, "per_seconds": 1 }, "rules": rules });
        assert_eq!(invalid(v).field(), "quotas.rules");
    }

    #[test]
    fn error_display_names_field_and_reason() {
        let mut v = issue_example();
        v["default"]["requests"] = json!(0);
        assert_eq!(
            invalid(v).to_string(),
            "invalid plugin configuration: `quotas.default.requests` must be between 1 and 1000000000"
        );
    }

    #[test]
    fn the_prefix_is_the_callers() {
        let mut v = issue_example();
        v["default"]["requests"] = json!(0);
        assert_eq!(from_value(v, "limits.quotas").unwrap_err().field(), "limits.quotas.default.requests");
    }
}
