//! Claim matchers: the tests allow rules, profiles and quota rules apply to a
//! verified claim (`contains`, `equals`, `one_of`, `prefix`), and the `*` patterns
//! identities and subjects are matched with.

use crate::json::{self, FromJson};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::ConfigError;

use super::path::{claim, valid_claim_path, MAX_CLAIM_PATH_DOTS, MAX_CLAIM_PATH_LEN};

/// A claim matcher as written: `claim` and exactly one operator.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawClaim {
    pub claim: String,
    #[serde(default)]
    pub contains: Option<String>,
    #[serde(default)]
    pub equals: Option<Value>,
    #[serde(default)]
    pub one_of: Option<Vec<Value>>,
    #[serde(default)]
    pub prefix: Option<String>,
}

impl FromJson for RawClaim {
    fn from_json(value: Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawClaim {
            claim: o.required("claim"),
            contains: o.optional("contains"),
            equals: o.optional("equals"),
            one_of: o.optional("one_of"),
            prefix: o.optional("prefix"),
        })
    }
}

/// An exact string, or with a trailing `*` a prefix (`ci/*`; `*` alone: anything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Pattern, &'static str> {
        if s.is_empty() {
            return Err("must not be empty");
        }
        match s.strip_suffix('*') {
            Some(prefix) if prefix.contains('*') => Err("may contain '*' only as its last character"),
            Some(prefix) => Ok(Pattern::Prefix(prefix.to_owned())),
            None if s.contains('*') => Err("may contain '*' only as its last character"),
            None => Ok(Pattern::Exact(s.to_owned())),
        }
    }

    pub fn matches(&self, s: &str) -> bool {
        match self {
            Pattern::Exact(want) => s == want,
            Pattern::Prefix(prefix) => s.starts_with(prefix.as_str()),
        }
    }
}

/// How a claim's value is tested.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimOp {
    /// An array claim has this string element, or a string claim has it as one
    /// of its space-separated words (OAuth `scope`, RFC 8693 §4.2).
    Contains(String),
    /// The claim (or, for an array claim, one of its elements) equals this JSON
    /// string, number or boolean.
    Equals(Value),
    /// Like `Equals`, for any of the values.
    OneOf(Vec<Value>),
    /// The claim (or one element of an array claim) is a string with this prefix.
    Prefix(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClaimMatcher {
    pub path: String,
    pub op: ClaimOp,
}

impl ClaimMatcher {
    /// A missing claim, or `null`, matches nothing.
    pub fn matches(&self, claims: &Map<String, Value>) -> bool {
        let Some(value) = claim(claims, &self.path) else {
            return false;
        };
        let candidates = || -> Box<dyn Iterator<Item = &Value> + '_> {
            match value {
                Value::Array(items) => Box::new(items.iter()),
                other => Box::new(std::iter::once(other)),
            }
        };
        match &self.op {
            ClaimOp::Contains(want) => match value {
                Value::String(words) => words.split_ascii_whitespace().any(|w| w == want),
                Value::Array(items) => items.iter().any(|i| i.as_str() == Some(want.as_str())),
                _ => false,
            },
            ClaimOp::Equals(want) => candidates().any(|c| is_scalar(c) && c == want),
            ClaimOp::OneOf(wants) => candidates().any(|c| is_scalar(c) && wants.contains(c)),
            ClaimOp::Prefix(prefix) => {
                candidates().any(|c| c.as_str().is_some_and(|s| s.starts_with(prefix.as_str())))
            }
        }
    }
}

pub fn is_scalar(v: &Value) -> bool {
    matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_))
}

/// `at` is the object holding `claim` and its operator.
pub fn claim_matcher(at: &str, raw: RawClaim) -> Result<ClaimMatcher, ConfigError> {
    let field = |f: &str| format!("{at}.{f}");
    let path = raw.claim;
    if !valid_claim_path(&path) {
        return Err(ConfigError::invalid(
            field("claim"),
            format!(
                "must be a claim name or dotted path of at most {MAX_CLAIM_PATH_LEN} characters and {} dots, without empty parts",
                MAX_CLAIM_PATH_DOTS
            ),
        ));
    }
    let mut ops = Vec::new();
    if let Some(s) = raw.contains {
        if s.is_empty() {
            return Err(ConfigError::invalid(field("contains"), "must not be empty"));
        }
        ops.push(ClaimOp::Contains(s));
    }
    if let Some(v) = raw.equals {
        if !is_scalar(&v) {
            return Err(ConfigError::invalid(field("equals"), "must be a string, number or boolean"));
        }
        ops.push(ClaimOp::Equals(v));
    }
    if let Some(list) = raw.one_of {
        if list.is_empty() {
            return Err(ConfigError::invalid(field("one_of"), "must list at least one value"));
        }
        if let Some(i) = list.iter().position(|v| !is_scalar(v)) {
            return Err(ConfigError::invalid(
                format!("{}[{i}]", field("one_of")),
                "must be a string, number or boolean",
            ));
        }
        ops.push(ClaimOp::OneOf(list));
    }
    if let Some(p) = raw.prefix {
        if p.is_empty() {
            return Err(ConfigError::invalid(field("prefix"), "must not be empty"));
        }
        ops.push(ClaimOp::Prefix(p));
    }
    let mut ops = ops.into_iter();
    match (ops.next(), ops.next()) {
        (Some(op), None) => Ok(ClaimMatcher { path, op }),
        _ => Err(ConfigError::invalid(
            at,
            "needs exactly one of `contains`, `equals`, `one_of` or `prefix` with `claim`",
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("claims must be an object"),
        }
    }

    fn matcher(path: &str, op: ClaimOp) -> ClaimMatcher {
        ClaimMatcher { path: path.into(), op }
    }

    #[test]
    fn patterns() {
        assert_eq!(Pattern::parse("ci/deployer"), Ok(Pattern::Exact("ci/deployer".into())));
        assert_eq!(Pattern::parse("ci/*"), Ok(Pattern::Prefix("ci/".into())));
        assert_eq!(Pattern::parse("*"), Ok(Pattern::Prefix(String::new())));
        assert!(Pattern::parse("").is_err());
        assert!(Pattern::parse("c*/x").is_err());
        assert!(Pattern::parse("**").is_err());
        assert!(Pattern::parse("ci/*").unwrap().matches("ci/deployer"));
        assert!(!Pattern::parse("ci/*").unwrap().matches("cix/deployer"));
        assert!(Pattern::parse("*").unwrap().matches(""));
        assert!(!Pattern::parse("ci/deployer").unwrap().matches("ci/deployer2"));
    }

    #[test]
    fn contains_on_scope_strings_and_arrays() {
        let m = matcher("scope", ClaimOp::Contains("orders:write".into()));
        assert!(m.matches(&claims(json!({"scope": "orders:read orders:write"}))));
        assert!(m.matches(&claims(json!({"scope": "orders:write"}))));
        assert!(m.matches(&claims(json!({"scope": ["orders:read", "orders:write"]}))));
        assert!(!m.matches(&claims(json!({"scope": "orders:writer orders:read"}))));
        assert!(!m.matches(&claims(json!({"scope": ["orders:read orders:write"]}))));
        assert!(!m.matches(&claims(json!({"scope": {"orders:write": true}}))));
        assert!(!m.matches(&claims(json!({"scope": null}))));
        assert!(!m.matches(&claims(json!({}))));
    }

    #[test]
    fn equals_one_of_and_prefix() {
        let eq = matcher("azp", ClaimOp::Equals(json!("partner-x")));
        assert!(eq.matches(&claims(json!({"azp": "partner-x"}))));
        assert!(!eq.matches(&claims(json!({"azp": "partner-x2"}))));
        // An array claim matches if one element does (`aud` is string-or-array).
        assert!(eq.matches(&claims(json!({"azp": ["a", "partner-x"]}))));
        assert!(!eq.matches(&claims(json!({"azp": [["partner-x"]]}))));
        let num = matcher("tier", ClaimOp::Equals(json!(2)));
        assert!(num.matches(&claims(json!({"tier": 2}))));
        assert!(!num.matches(&claims(json!({"tier": "2"}))));
        let bool_ = matcher("kubernetes.io.bound", ClaimOp::Equals(json!(true)));
        assert!(bool_.matches(&claims(json!({"kubernetes.io": {"bound": true}}))));

        let one_of = matcher("env", ClaimOp::OneOf(vec![json!("prod"), json!("staging")]));
        assert!(one_of.matches(&claims(json!({"env": "staging"}))));
        assert!(one_of.matches(&claims(json!({"env": ["dev", "prod"]}))));
        assert!(!one_of.matches(&claims(json!({"env": "dev"}))));

        let prefix = matcher("client_id", ClaimOp::Prefix("partner-".into()));
        assert!(prefix.matches(&claims(json!({"client_id": "partner-acme"}))));
        assert!(prefix.matches(&claims(json!({"client_id": ["x", "partner-acme"]}))));
        assert!(!prefix.matches(&claims(json!({"client_id": "acme-partner-"}))));
        assert!(!prefix.matches(&claims(json!({"client_id": 5}))));
    }
}
