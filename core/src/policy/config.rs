//! The route configuration: raw JSON shapes, then validation into [`Routes`].
//!
//! The raw structs are public so the plugin configuration can embed their fields
//! (`routes`, `mode`, `deny`, `client_header`, `default_audience`) at its top
//! level. Enumerated values are read as strings and checked here, so that every
//! error names its field as a JSON path (`routes[2].match.prefix`).

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::Value;

use crate::error::ConfigError;
use crate::json::{self, FromJson};

use crate::claims::matcher::{claim_matcher, Pattern, RawClaim};

use super::cidr::Cidr;
use super::matcher::{canonical_path, HostMatch, PathMatch, RouteMatch};
use super::rules::{AllowRule, DenyList};
use super::{Audience, Mode, Route, Routes};

pub const DEFAULT_CLIENT_HEADER: &str = "x-nhi-client";
/// Set upstream in shadow mode; always stripped from client requests.
pub use crate::error::SHADOW_DECISION_HEADER;
pub const MAX_ROUTES: usize = 256;

/// The route-related members of the plugin configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawRoutes {
    #[serde(default)]
    pub routes: Option<Vec<RawRoute>>,
    /// `enforce` (default) or `shadow`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Global revocation, checked on every route.
    #[serde(default)]
    pub deny: Option<RawDeny>,
    #[serde(default)]
    pub client_header: Option<String>,
    /// `machine` (default), `human` or `any`: the audience of unmatched requests.
    #[serde(default)]
    pub default_audience: Option<String>,
}

impl FromJson for RawRoutes {
    fn from_json(value: Value, at: &str) -> Result<Self> {
        json::object(value, at, |o| RawRoutes {
            routes: o.optional("routes"),
            mode: o.optional("mode"),
            deny: o.optional("deny"),
            client_header: o.optional("client_header"),
            default_audience: o.optional("default_audience"),
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: RawMatch,
    /// `machine` (default), `human` or `any`.
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default)]
    pub allow: Option<Vec<RawAllow>>,
    #[serde(default)]
    pub deny: Option<RawDeny>,
    #[serde(default)]
    pub source_cidrs: Option<Vec<String>>,
    /// Overrides the global mode for this route, either way.
    #[serde(default)]
    pub mode: Option<String>,
    /// Replaces the status of this route's 403 refusals.
    #[serde(default)]
    pub deny_status: Option<u64>,
    /// Refuses requests without a trusted client certificate (needs `mtls`).
    #[serde(default)]
    pub require_client_certificate: bool,
    /// A trusted client certificate without a token is an identity here (needs `mtls`).
    #[serde(default)]
    pub accept_certificate_identity: bool,
    /// `off`, `optional` or `required`: replaces the DPoP mode of the token's issuer
    /// on this route.
    #[serde(default)]
    pub dpop: Option<String>,
    /// Only a partner's verified HTTP Message Signature is an identity here (needs
    /// `partners` with signing keys); anything else is `missing_signature`.
    #[serde(default)]
    pub require_signature: bool,
}

impl FromJson for RawRoute {
    fn from_json(value: Value, at: &str) -> Result<Self> {
        json::object(value, at, |o| RawRoute {
            name: o.required("name"),
            matcher: o.required("match"),
            audience: o.optional("audience"),
            allow: o.optional("allow"),
            deny: o.optional("deny"),
            source_cidrs: o.optional("source_cidrs"),
            mode: o.optional("mode"),
            deny_status: o.optional("deny_status"),
            require_client_certificate: o.or_default("require_client_certificate"),
            accept_certificate_identity: o.or_default("accept_certificate_identity"),
            dpop: o.optional("dpop"),
            require_signature: o.or_default("require_signature"),
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub route_name: Option<String>,
}

impl FromJson for RawMatch {
    fn from_json(value: Value, at: &str) -> Result<Self> {
        json::object(value, at, |o| RawMatch {
            prefix: o.optional("prefix"),
            exact: o.optional("exact"),
            host: o.optional("host"),
            methods: o.optional("methods"),
            route_name: o.optional("route_name"),
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawAllow {
    #[serde(default)]
    pub identity: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub issuer: Option<String>,
    /// One claim matcher inline (`claim` plus one operator)…
    #[serde(default)]
    pub claim: Option<String>,
    #[serde(default)]
    pub contains: Option<String>,
    #[serde(default)]
    pub equals: Option<Value>,
    #[serde(default)]
    pub one_of: Option<Vec<Value>>,
    #[serde(default)]
    pub prefix: Option<String>,
    /// …and/or several, all of which must hold.
    #[serde(default)]
    pub claims: Option<Vec<RawClaim>>,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub source_cidrs: Option<Vec<String>>,
    /// DPoP key thumbprints (`cnf.jkt`): the request's verified proof key must be one.
    #[serde(default)]
    pub jkt: Option<Vec<String>>,
}

impl FromJson for RawAllow {
    fn from_json(value: Value, at: &str) -> Result<Self> {
        json::object(value, at, |o| RawAllow {
            identity: o.optional("identity"),
            namespace: o.optional("namespace"),
            issuer: o.optional("issuer"),
            claim: o.optional("claim"),
            contains: o.optional("contains"),
            equals: o.optional("equals"),
            one_of: o.optional("one_of"),
            prefix: o.optional("prefix"),
            claims: o.optional("claims"),
            methods: o.optional("methods"),
            source_cidrs: o.optional("source_cidrs"),
            jkt: o.optional("jkt"),
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawDeny {
    /// `sub` values or forwarded identities; a trailing `*` makes a prefix.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Revoked token IDs.
    #[serde(default)]
    pub jti: Vec<String>,
    /// Revoked DPoP keys, by thumbprint (`cnf.jkt`).
    #[serde(default)]
    pub jkt: Vec<String>,
}

impl FromJson for RawDeny {
    fn from_json(value: Value, at: &str) -> Result<Self> {
        json::object(value, at, |o| RawDeny {
            subjects: o.or_default("subjects"),
            jti: o.or_default("jti"),
            jkt: o.or_default("jkt"),
        })
    }
}

type Result<T> = std::result::Result<T, ConfigError>;

/// Validates the route configuration. `issuer_names` are the configured issuers'
/// names, which `allow[].issuer` must refer to.
pub fn compile(raw: RawRoutes, issuer_names: &[&str]) -> Result<Routes> {
    let mode = match raw.mode.as_deref() {
        None => Mode::Enforce,
        Some(m) => mode("mode", m)?,
    };
    let default_audience = match raw.default_audience.as_deref() {
        None => Audience::Machine,
        Some(a) => audience("default_audience", a)?,
    };
    let client_header = match raw.client_header {
        None => DEFAULT_CLIENT_HEADER.to_owned(),
        Some(h) => header_name("client_header", h)?,
    };
    let deny = match raw.deny {
        None => DenyList::default(),
        Some(d) => deny_list("deny", d)?,
    };
    let raw_routes = raw.routes.unwrap_or_default();
    if raw_routes.len() > MAX_ROUTES {
        return Err(ConfigError::invalid("routes", format!("lists more than {MAX_ROUTES} routes")));
    }
    let mut names = HashSet::new();
    let mut catch_all: Option<(usize, String)> = None;
    let mut routes = Vec::with_capacity(raw_routes.len());
    for (i, raw_route) in raw_routes.into_iter().enumerate() {
        let at = format!("routes[{i}]");
        if let Some((j, name)) = &catch_all {
            return Err(ConfigError::invalid(
                at,
                format!("is unreachable: routes[{j}] ({name:?}) matches every request"),
            ));
        }
        let route = compile_route(&at, raw_route, issuer_names)?;
        if !names.insert(route.name.clone()) {
            return Err(ConfigError::invalid(
                format!("{at}.name"),
                format!("{:?} is used by another route", route.name),
            ));
        }
        if route.matcher.is_catch_all() {
            catch_all = Some((i, route.name.clone()));
        }
        routes.push(route);
    }
    Ok(Routes { routes, default_audience, mode, deny, client_header })
}

fn compile_route(at: &str, raw: RawRoute, issuer_names: &[&str]) -> Result<Route> {
    let field = |f: &str| format!("{at}.{f}");
    crate::error::label_name(field("name"), &raw.name)?;
    let matcher = route_match(&field("match"), raw.matcher)?;
    let audience = match raw.audience.as_deref() {
        None => Audience::Machine,
        Some(a) => audience(&field("audience"), a)?,
    };
    if audience == Audience::Human {
        for (present, name) in [
            (raw.allow.is_some(), "allow"),
            (raw.deny.is_some(), "deny"),
            (raw.require_client_certificate, "require_client_certificate"),
            (raw.accept_certificate_identity, "accept_certificate_identity"),
            (raw.require_signature, "require_signature"),
        ] {
            if present {
                return Err(ConfigError::invalid(
                    field(name),
                    "applies to machine identities, which a human route refuses; use audience \"machine\" or \"any\"",
                ));
            }
        }
    }
    let allow = match raw.allow {
        None => None,
        Some(rules) if rules.is_empty() => {
            return Err(ConfigError::invalid(
                field("allow"),
                "must list at least one rule; omit it to admit every verified identity",
            ))
        }
        Some(rules) => Some(
            rules
                .into_iter()
                .enumerate()
                .map(|(j, r)| allow_rule(&field(&format!("allow[{j}]")), r, issuer_names))
                .collect::<Result<Vec<_>>>()?,
        ),
    };
    let deny = match raw.deny {
        None => DenyList::default(),
        Some(d) => deny_list(&field("deny"), d)?,
    };
    let source_cidrs = match raw.source_cidrs {
        None => Vec::new(),
        Some(list) => cidrs(&field("source_cidrs"), list)?,
    };
    let mode = raw.mode.as_deref().map(|m| mode(&field("mode"), m)).transpose()?;
    let dpop = raw.dpop.as_deref().map(|m| crate::dpop::config::route_mode(&field("dpop"), m)).transpose()?;
    let deny_status = match raw.deny_status {
        None => None,
        Some(s) => match u16::try_from(s) {
            Ok(s) if (400..=499).contains(&s) && s != 401 && s != 407 => Some(s),
            _ => {
                return Err(ConfigError::invalid(
                    field("deny_status"),
                    "must be a 4xx status other than 401 and 407 (challenges are not overridable)",
                ))
            }
        },
    };
    Ok(Route {
        name: raw.name,
        audience,
        matcher,
        allow,
        deny,
        source_cidrs,
        mode,
        deny_status,
        require_client_certificate: raw.require_client_certificate,
        accept_certificate_identity: raw.accept_certificate_identity,
        dpop,
        require_signature: raw.require_signature,
    })
}

fn route_match(at: &str, raw: RawMatch) -> Result<RouteMatch> {
    let field = |f: &str| format!("{at}.{f}");
    let path = match (raw.prefix, raw.exact) {
        (Some(_), Some(_)) => return Err(ConfigError::invalid(at, "takes `prefix` or `exact`, not both")),
        (Some(p), None) => PathMatch::Prefix(path(&field("prefix"), p)?),
        (None, Some(e)) => PathMatch::Exact(path(&field("exact"), e)?),
        (None, None) => PathMatch::Any,
    };
    let host = match raw.host {
        None => HostMatch::Any,
        Some(h) => host(&field("host"), &h)?,
    };
    let methods = match raw.methods {
        None => Vec::new(),
        Some(m) => methods(&field("methods"), m)?,
    };
    let route_name = match raw.route_name {
        Some(n) if n.is_empty() => {
            return Err(ConfigError::invalid(field("route_name"), "must not be empty"))
        }
        other => other,
    };
    Ok(RouteMatch { path, host, methods, route_name })
}

/// A path to match as written: it starts with '/', has no query (queries are
/// never matched) and no spaces or controls.
fn path(field: &str, p: String) -> Result<String> {
    if !p.starts_with('/') {
        return Err(ConfigError::invalid(field, "must start with '/'"));
    }
    if p.contains(['?', '#']) {
        return Err(ConfigError::invalid(
            field,
            "must not contain '?' or '#': the query string is never matched",
        ));
    }
    if p.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::invalid(field, "must not contain spaces or control characters"));
    }
    if canonical_path(&p) != p.as_str() {
        // Every request it matched would read differently once normalized.
        return Err(ConfigError::invalid(
            field,
            "must be in normal form: no '//', '.' or '..' segments, '\\', ';' or escaped unreserved characters",
        ));
    }
    Ok(p)
}

/// A host name (or bracketed IPv6 literal) without port, optionally `*.` first.
fn host(field: &str, h: &str) -> Result<HostMatch> {
    let lower = h.to_ascii_lowercase();
    let (wildcard, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    let is_name = !name.is_empty()
        && name
            .split('.')
            .all(|label| !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    let is_ipv6_literal = !wildcard
        && name
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .is_some_and(|inner| inner.parse::<std::net::Ipv6Addr>().is_ok());
    if !(is_name || is_ipv6_literal) {
        return Err(ConfigError::invalid(
            field,
            "must be a host name without port, optionally starting with \"*.\"",
        ));
    }
    Ok(if wildcard { HostMatch::Suffix(format!(".{name}")) } else { HostMatch::Exact(name.to_owned()) })
}

fn methods(field: &str, list: Vec<String>) -> Result<Vec<String>> {
    if list.is_empty() {
        return Err(ConfigError::invalid(
            field,
            "must list at least one method; omit it to match every method",
        ));
    }
    for (i, m) in list.iter().enumerate() {
        if m.is_empty() || !m.chars().all(|c| c.is_ascii_uppercase() || c == '-' || c == '_') {
            return Err(ConfigError::invalid(
                format!("{field}[{i}]"),
                format!("{m:?} is not an upper-case method name like \"GET\""),
            ));
        }
    }
    Ok(list)
}

fn cidrs(field: &str, list: Vec<String>) -> Result<Vec<Cidr>> {
    if list.is_empty() {
        return Err(ConfigError::invalid(
            field,
            "must list at least one CIDR block; omit it to allow every source",
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            Cidr::parse(s).map_err(|e| ConfigError::invalid(format!("{field}[{i}]"), format!("{s:?} {e}")))
        })
        .collect()
}

fn allow_rule(at: &str, raw: RawAllow, issuer_names: &[&str]) -> Result<AllowRule> {
    let field = |f: &str| format!("{at}.{f}");
    let identity = raw
        .identity
        .as_deref()
        .map(|s| Pattern::parse(s).map_err(|e| ConfigError::invalid(field("identity"), e)))
        .transpose()?;
    if raw.namespace.as_deref() == Some("") {
        return Err(ConfigError::invalid(field("namespace"), "must not be empty"));
    }
    if let Some(issuer) = raw.issuer.as_deref() {
        if !issuer_names.contains(&issuer) {
            return Err(ConfigError::invalid(
                field("issuer"),
                format!("{issuer:?} is not the name of a configured issuer"),
            ));
        }
    }
    let mut claims = Vec::new();
    let inline = RawClaim {
        claim: raw.claim.clone().unwrap_or_default(),
        contains: raw.contains,
        equals: raw.equals,
        one_of: raw.one_of,
        prefix: raw.prefix,
    };
    let has_operator = inline.contains.is_some()
        || inline.equals.is_some()
        || inline.one_of.is_some()
        || inline.prefix.is_some();
    if raw.claim.is_some() || has_operator {
        if raw.claim.is_none() {
            return Err(ConfigError::invalid(
                field("claim"),
                "is required with `contains`, `equals`, `one_of` or `prefix`",
            ));
        }
        claims.push(claim_matcher(at, inline)?);
    }
    if let Some(list) = raw.claims {
        if list.is_empty() {
            return Err(ConfigError::invalid(field("claims"), "must list at least one claim matcher"));
        }
        for (j, c) in list.into_iter().enumerate() {
            claims.push(claim_matcher(&field(&format!("claims[{j}]")), c)?);
        }
    }
    let methods = match raw.methods {
        None => Vec::new(),
        Some(m) => methods(&field("methods"), m)?,
    };
    let source_cidrs = match raw.source_cidrs {
        None => Vec::new(),
        Some(list) => cidrs(&field("source_cidrs"), list)?,
    };
    let jkt = match raw.jkt {
        None => None,
        Some(list) => Some(thumbprints(&field("jkt"), list)?),
    };
    let rule = AllowRule {
        identity,
        namespace: raw.namespace,
        issuer: raw.issuer,
        claims,
        methods,
        source_cidrs,
        jkt,
    };
    if rule.identity.is_none()
        && rule.namespace.is_none()
        && rule.issuer.is_none()
        && rule.claims.is_empty()
        && rule.jkt.is_none()
    {
        // Methods or sources alone would admit every identity of every issuer.
        return Err(ConfigError::invalid(
            at,
            "must name an `identity`, `namespace`, `issuer`, claim or `jkt`; use {\"identity\": \"*\"} to admit everyone",
        ));
    }
    Ok(rule)
}

fn deny_list(at: &str, raw: RawDeny) -> Result<DenyList> {
    let mut deny = DenyList::default();
    for (i, s) in raw.subjects.iter().enumerate() {
        let pattern =
            Pattern::parse(s).map_err(|e| ConfigError::invalid(format!("{at}.subjects[{i}]"), e))?;
        if pattern == Pattern::Prefix(String::new()) {
            return Err(ConfigError::invalid(format!("{at}.subjects[{i}]"), "would deny every subject"));
        }
        deny.add_subject(pattern);
    }
    for (i, jti) in raw.jti.into_iter().enumerate() {
        if jti.is_empty() {
            return Err(ConfigError::invalid(format!("{at}.jti[{i}]"), "must not be empty"));
        }
        deny.jti.insert(jti);
    }
    deny.jkt.extend(thumbprints(&format!("{at}.jkt"), raw.jkt)?);
    Ok(deny)
}

/// JWK SHA-256 thumbprints as `cnf.jkt` carries them: 43 characters of base64url.
fn thumbprints(field: &str, list: Vec<String>) -> Result<Vec<String>> {
    for (i, jkt) in list.iter().enumerate() {
        let valid =
            jkt.len() == 43 && jkt.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(ConfigError::invalid(
                format!("{field}[{i}]"),
                "must be a JWK SHA-256 thumbprint (43 characters of base64url, as in cnf.jkt)",
            ));
        }
    }
    Ok(list)
}

fn mode(field: &str, m: &str) -> Result<Mode> {
    match m {
        "enforce" => Ok(Mode::Enforce),
        "shadow" => Ok(Mode::Shadow),
        other => Err(ConfigError::invalid(field, format!("{other:?} is not one of \"enforce\", \"shadow\""))),
    }
}

fn audience(field: &str, a: &str) -> Result<Audience> {
    match a {
        "machine" => Ok(Audience::Machine),
        "human" => Ok(Audience::Human),
        "any" => Ok(Audience::Any),
        other => Err(ConfigError::invalid(
            field,
            format!("{other:?} is not one of \"machine\", \"human\", \"any\""),
        )),
    }
}

/// The plugin's header-name rule, and not the shadow decision header.
fn header_name(field: &str, name: String) -> Result<String> {
    let name = crate::error::header_name(field, &name)?;
    if name == SHADOW_DECISION_HEADER {
        return Err(ConfigError::invalid(field, format!("{name:?} is reserved")));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::matcher::ClaimOp;
    use serde_json::json;

    const ISSUERS: [&str; 3] = ["ci", "partner-idp", "k8s"];

    fn compile_value(v: Value) -> Result<Routes> {
        compile(RawRoutes::from_json(v, "")?, &ISSUERS)
    }

    fn example() -> Value {
        json!({
            "routes": [
                { "name": "deploy-api", "match": { "prefix": "/api/deploy/", "methods": ["POST"] },
                  "audience": "machine", "allow": [ { "identity": "ci/deployer" }, { "namespace": "payments" } ] },
                { "name": "partner", "match": { "prefix": "/partner/", "host": "api.example.com" },
                  "audience": "machine", "source_cidrs": ["203.0.113.0/24", "2001:db8::/32"],
                  "allow": [ { "issuer": "partner-idp", "claim": "scope", "contains": "orders:write" } ] },
                { "name": "web", "match": { "prefix": "/" }, "audience": "human" }
            ]
        })
    }

    /// Applies `edit` to the example and returns the field the error names.
    type Edit = Box<dyn FnOnce(&mut Value)>;

    fn error_field(edit: impl FnOnce(&mut Value)) -> Option<String> {
        let mut v = example();
        edit(&mut v);
        compile_value(v).err().map(|e| e.field().to_owned())
    }

    #[test]
    fn issue_example_compiles() {
        let routes = compile_value(example()).unwrap();
        assert_eq!(routes.routes().len(), 3);
        assert_eq!(routes.routes()[1].name, "partner");
        assert_eq!(routes.routes()[2].audience, Audience::Human);
        assert_eq!(routes.routes()[1].source_cidrs.len(), 2);
        assert_eq!(routes.routes()[0].matcher.methods, vec!["POST".to_owned()]);
        assert_eq!(routes.default_audience, Audience::Machine);
        assert_eq!(routes.mode, Mode::Enforce);
        assert_eq!(routes.client_header, "x-nhi-client");
    }

    #[test]
    fn absent_configuration_is_machine_everywhere_enforced() {
        let routes = compile(RawRoutes::default(), &[]).unwrap();
        assert!(routes.routes().is_empty());
        assert_eq!(routes.default_audience, Audience::Machine);
        assert_eq!(routes.mode, Mode::Enforce);
        assert_eq!(routes.managed_headers(), ["x-nhi-client", SHADOW_DECISION_HEADER]);
    }

    #[test]
    fn unknown_fields_are_refused_naming_their_path() {
        for (v, field, known) in [
            (
                json!({"routes": [{"name": "a", "match": {"prefx": "/"}}]}),
                "routes[0].match.prefx",
                "prefix, exact, host, methods, route_name",
            ),
            (
                json!({"routes": [{"name": "a", "match": {}, "allow": [{"identity": "x", "scopes": "y"}]}]}),
                "routes[0].allow[0].scopes",
                "identity, namespace, issuer, claim, contains, equals, one_of, prefix, claims, methods, source_cidrs, jkt",
            ),
            (json!({"deny": {"subject": ["x"]}}), "deny.subject", "subjects, jti, jkt"),
            (json!({"routez": []}), "routez", "routes, mode, deny, client_header, default_audience"),
        ] {
            let err = RawRoutes::from_json(v.clone(), "").unwrap_err();
            assert_eq!(
                (err.field(), err.reason()),
                (field, format!("is not a known field (known: {known})").as_str()),
                "{v}"
            );
        }
    }

    #[test]
    fn wrong_shapes_are_refused_naming_their_path() {
        for (v, field, reason) in [
            (json!({"routes": [{"match": {}}]}), "routes[0].name", "is required"),
            (json!({"routes": [{"name": "a"}]}), "routes[0].match", "is required"),
            (
                json!({"routes": [{"name": "a", "match": null}]}),
                "routes[0].match",
                "must be an object, not null",
            ),
            (
                json!({"routes": [{"name": "a", "match": {}, "require_signature": null}]}),
                "routes[0].require_signature",
                "must be true or false, not null",
            ),
            (
                json!({"routes": [{"name": "a", "match": {}, "deny_status": -403}]}),
                "routes[0].deny_status",
                "must be a whole number, 0 or more, not -403",
            ),
            (json!({"deny": {"jti": null}}), "deny.jti", "must be an array, not null"),
            (json!({"deny": {"jkt": "x"}}), "deny.jkt", "must be an array, not \"x\""),
            (json!({"routes": {}}), "routes", "must be an array, not an object"),
            (json!({"mode": 1}), "mode", "must be a string, not 1"),
        ] {
            let err = RawRoutes::from_json(v.clone(), "").unwrap_err();
            assert_eq!((err.field(), err.reason()), (field, reason), "{v}");
        }
        let raw = RawRoutes::from_json(
            json!({"routes": [{"name": "a", "match": {"host": null}, "audience": null}], "deny": {}}),
            "",
        )
        .unwrap();
        let route = &raw.routes.as_deref().unwrap()[0];
        assert_eq!(
            (route.matcher.host.as_deref(), route.audience.as_deref()),
            (None, None),
            "null is absent"
        );
        assert!(!route.require_signature && raw.deny.unwrap().subjects.is_empty(), "defaults");
    }

    #[test]
    fn claim_matchers_inline_and_listed() {
        let routes = compile_value(json!({"routes": [{"name": "a", "match": {}, "allow": [
            {"claim": "scope", "contains": "x", "claims": [{"claim": "azp", "equals": "acme"}, {"claim": "env", "one_of": ["a", 1, true]}]},
            {"claim": "kubernetes.io.namespace", "prefix": "team-"}
        ]}]}))
        .unwrap();
        let allow = routes.routes()[0].allow.as_ref().unwrap();
        assert_eq!(allow[0].claims.len(), 3);
        assert_eq!(allow[1].claims[0].op, ClaimOp::Prefix("team-".into()));
    }

    #[test]
    fn validation_errors_name_their_field() {
        let r = |i: usize| format!("routes[{i}]");
        let cases: Vec<(&str, Edit, String)> = vec![
            ("mode", Box::new(|v| v["mode"] = json!("audit")), "mode".into()),
            (
                "default audience",
                Box::new(|v| v["default_audience"] = json!("robot")),
                "default_audience".into(),
            ),
            (
                "client header case",
                Box::new(|v| v["client_header"] = json!("X-Client")),
                "client_header".into(),
            ),
            (
                "client header shadow",
                Box::new(|v| v["client_header"] = json!(SHADOW_DECISION_HEADER)),
                "client_header".into(),
            ),
            (
                "global deny subject",
                Box::new(|v| v["deny"] = json!({"subjects": ["ok", ""]})),
                "deny.subjects[1]".into(),
            ),
            (
                "global deny everyone",
                Box::new(|v| v["deny"] = json!({"subjects": ["*"]})),
                "deny.subjects[0]".into(),
            ),
            ("global deny jti", Box::new(|v| v["deny"] = json!({"jti": [""]})), "deny.jti[0]".into()),
            ("empty name", Box::new(|v| v["routes"][0]["name"] = json!("")), format!("{}.name", r(0))),
            (
                "bad name",
                Box::new(|v| v["routes"][1]["name"] = json!("Partner API")),
                format!("{}.name", r(1)),
            ),
            (
                "duplicate name",
                Box::new(|v| v["routes"][1]["name"] = json!("deploy-api")),
                format!("{}.name", r(1)),
            ),
            (
                "audience",
                Box::new(|v| v["routes"][0]["audience"] = json!("robots")),
                format!("{}.audience", r(0)),
            ),
            (
                "allow on human",
                Box::new(|v| v["routes"][2]["allow"] = json!([{"identity": "x"}])),
                format!("{}.allow", r(2)),
            ),
            (
                "deny on human",
                Box::new(|v| v["routes"][2]["deny"] = json!({"jti": ["x"]})),
                format!("{}.deny", r(2)),
            ),
            (
                "prefix slash",
                Box::new(|v| v["routes"][2]["match"]["prefix"] = json!("api")),
                format!("{}.match.prefix", r(2)),
            ),
            (
                "prefix dots",
                Box::new(|v| v["routes"][0]["match"]["prefix"] = json!("/api/../deploy/")),
                format!("{}.match.prefix", r(0)),
            ),
            (
                "exact escaped",
                Box::new(|v| v["routes"][0]["match"] = json!({"exact": "/%61pi"})),
                format!("{}.match.exact", r(0)),
            ),
            (
                "prefix query",
                Box::new(|v| v["routes"][0]["match"]["prefix"] = json!("/a?b")),
                format!("{}.match.prefix", r(0)),
            ),
            (
                "exact slash",
                Box::new(|v| v["routes"][0]["match"] = json!({"exact": "x"})),
                format!("{}.match.exact", r(0)),
            ),
            (
                "prefix and exact",
                Box::new(|v| v["routes"][0]["match"]["exact"] = json!("/x")),
                format!("{}.match", r(0)),
            ),
            (
                "host port",
                Box::new(|v| v["routes"][1]["match"]["host"] = json!("api.example.com:443")),
                format!("{}.match.host", r(1)),
            ),
            (
                "host wildcard",
                Box::new(|v| v["routes"][1]["match"]["host"] = json!("api.*.com")),
                format!("{}.match.host", r(1)),
            ),
            (
                "methods case",
                Box::new(|v| v["routes"][0]["match"]["methods"] = json!(["POST", "get"])),
                format!("{}.match.methods[1]", r(0)),
            ),
            (
                "methods empty",
                Box::new(|v| v["routes"][0]["match"]["methods"] = json!([])),
                format!("{}.match.methods", r(0)),
            ),
            (
                "route_name empty",
                Box::new(|v| v["routes"][0]["match"]["route_name"] = json!("")),
                format!("{}.match.route_name", r(0)),
            ),
            (
                "cidr",
                Box::new(|v| v["routes"][1]["source_cidrs"][1] = json!("2001:db8::/129")),
                format!("{}.source_cidrs[1]", r(1)),
            ),
            (
                "cidr host bits",
                Box::new(|v| v["routes"][1]["source_cidrs"][0] = json!("203.0.113.1/24")),
                format!("{}.source_cidrs[0]", r(1)),
            ),
            (
                "cidrs empty",
                Box::new(|v| v["routes"][1]["source_cidrs"] = json!([])),
                format!("{}.source_cidrs", r(1)),
            ),
            ("allow empty", Box::new(|v| v["routes"][0]["allow"] = json!([])), format!("{}.allow", r(0))),
            (
                "allow entry empty",
                Box::new(|v| v["routes"][0]["allow"][1] = json!({})),
                format!("{}.allow[1]", r(0)),
            ),
            (
                "allow entry only methods",
                Box::new(|v| v["routes"][0]["allow"][1] = json!({"methods": ["GET"]})),
                format!("{}.allow[1]", r(0)),
            ),
            (
                "allow identity star",
                Box::new(|v| v["routes"][0]["allow"][0]["identity"] = json!("ci/*/x")),
                format!("{}.allow[0].identity", r(0)),
            ),
            (
                "allow namespace",
                Box::new(|v| v["routes"][0]["allow"][1]["namespace"] = json!("")),
                format!("{}.allow[1].namespace", r(0)),
            ),
            (
                "allow issuer",
                Box::new(|v| v["routes"][1]["allow"][0]["issuer"] = json!("partner")),
                format!("{}.allow[0].issuer", r(1)),
            ),
            (
                "allow methods",
                Box::new(|v| v["routes"][0]["allow"][0]["methods"] = json!(["post"])),
                format!("{}.allow[0].methods[0]", r(0)),
            ),
            (
                "allow cidrs",
                Box::new(|v| v["routes"][1]["allow"][0]["source_cidrs"] = json!(["x"])),
                format!("{}.allow[0].source_cidrs[0]", r(1)),
            ),
            (
                "claim without op",
                Box::new(|v| v["routes"][1]["allow"][0] = json!({"claim": "scope"})),
                format!("{}.allow[0]", r(1)),
            ),
            (
                "op without claim",
                Box::new(|v| v["routes"][1]["allow"][0] = json!({"contains": "x"})),
                format!("{}.allow[0].claim", r(1)),
            ),
            (
                "two ops",
                Box::new(|v| v["routes"][1]["allow"][0]["prefix"] = json!("orders")),
                format!("{}.allow[0]", r(1)),
            ),
            (
                "claim path",
                Box::new(|v| v["routes"][1]["allow"][0]["claim"] = json!("a..b")),
                format!("{}.allow[0].claim", r(1)),
            ),
            (
                "claim path deep",
                Box::new(|v| v["routes"][1]["allow"][0]["claim"] = json!("a.b.c.d.e.f.g.h.i.j")),
                format!("{}.allow[0].claim", r(1)),
            ),
            (
                "equals object",
                Box::new(|v| v["routes"][1]["allow"][0] = json!({"claim": "a", "equals": {"b": 1}})),
                format!("{}.allow[0].equals", r(1)),
            ),
            (
                "one_of empty",
                Box::new(|v| v["routes"][1]["allow"][0] = json!({"claim": "a", "one_of": []})),
                format!("{}.allow[0].one_of", r(1)),
            ),
            (
                "one_of null",
                Box::new(|v| v["routes"][1]["allow"][0] = json!({"claim": "a", "one_of": ["x", null]})),
                format!("{}.allow[0].one_of[1]", r(1)),
            ),
            (
                "contains empty",
                Box::new(|v| v["routes"][1]["allow"][0]["contains"] = json!("")),
                format!("{}.allow[0].contains", r(1)),
            ),
            (
                "claims list",
                Box::new(|v| v["routes"][1]["allow"][0]["claims"] = json!([{"claim": "a"}])),
                format!("{}.allow[0].claims[0]", r(1)),
            ),
            (
                "claims empty",
                Box::new(|v| v["routes"][1]["allow"][0]["claims"] = json!([])),
                format!("{}.allow[0].claims", r(1)),
            ),
            (
                "route deny",
                Box::new(|v| v["routes"][0]["deny"] = json!({"subjects": ["a*b"]})),
                format!("{}.deny.subjects[0]", r(0)),
            ),
            ("route mode", Box::new(|v| v["routes"][0]["mode"] = json!("Shadow")), format!("{}.mode", r(0))),
            (
                "deny_status 200",
                Box::new(|v| v["routes"][0]["deny_status"] = json!(200)),
                format!("{}.deny_status", r(0)),
            ),
            (
                "deny_status 401",
                Box::new(|v| v["routes"][0]["deny_status"] = json!(401)),
                format!("{}.deny_status", r(0)),
            ),
            (
                "deny_status 500",
                Box::new(|v| v["routes"][0]["deny_status"] = json!(500)),
                format!("{}.deny_status", r(0)),
            ),
            (
                "deny_status huge",
                Box::new(|v| v["routes"][0]["deny_status"] = json!(70_000)),
                format!("{}.deny_status", r(0)),
            ),
            (
                "unreachable",
                Box::new(|v| {
                    v["routes"][1]["match"] = json!({});
                    v["routes"].as_array_mut().unwrap().push(json!({"name": "late", "match": {}}));
                }),
                r(2),
            ),
        ];
        for (what, edit, want) in cases {
            assert_eq!(error_field(edit), Some(want), "{what}");
        }
    }

    #[test]
    fn every_route_after_a_catch_all_is_unreachable() {
        let err = compile_value(json!({"routes": [
            {"name": "all", "match": {}, "audience": "any"},
            {"name": "late", "match": {"prefix": "/x"}}
        ]}))
        .unwrap_err();
        assert_eq!(err.field(), "routes[1]");
        assert!(err.reason().contains("\"all\""), "{}", err.reason());
        assert_eq!(err.to_string(), "invalid plugin configuration: `routes[1]` is unreachable: routes[0] (\"all\") matches every request");
    }

    #[test]
    fn accepted_values() {
        let routes = compile_value(json!({
            "mode": "shadow",
            "default_audience": "any",
            "client_header": "x-client-class",
            "deny": {"subjects": ["system:serviceaccount:ci:old", "legacy/*"], "jti": ["t1"]},
            "routes": [
                {"name": "a_1", "match": {"exact": "/healthz", "host": "*.Example.COM.", "route_name": "envoy-a"}, "audience": "any",
                 "mode": "enforce", "deny_status": 404, "allow": [{"identity": "*", "methods": ["GET", "M-SEARCH"]}]},
                {"name": "b", "match": {"host": "[2001:db8::1]"}, "source_cidrs": ["192.0.2.1"]}
            ]
        }))
        .unwrap();
        assert_eq!(routes.mode, Mode::Shadow);
        assert_eq!(routes.default_audience, Audience::Any);
        assert_eq!(routes.client_header, "x-client-class");
        let a = &routes.routes()[0];
        assert_eq!(a.matcher.host, HostMatch::Suffix(".example.com".into()));
        assert_eq!(a.mode, Some(Mode::Enforce));
        assert_eq!(a.deny_status, Some(404));
        assert_eq!(routes.routes()[1].audience, Audience::Machine, "audience defaults to machine");
        assert_eq!(routes.routes()[1].matcher.host, HostMatch::Exact("[2001:db8::1]".into()));
    }

    #[test]
    fn the_reader_and_serde_agree() {
        let mut full = example();
        full["mode"] = json!("shadow");
        full["deny"] = json!({"subjects": ["a"], "jti": ["j"], "jkt": []});
        full["client_header"] = json!(null);
        full["default_audience"] = json!("any");
        full["routes"][0]["deny"] = json!({});
        full["routes"][0]["deny_status"] = json!(404);
        full["routes"][0]["require_client_certificate"] = json!(true);
        full["routes"][0]["accept_certificate_identity"] = json!(false);
        full["routes"][0]["require_signature"] = json!(true);
        full["routes"][0]["dpop"] = json!("required");
        full["routes"][0]["mode"] = json!("enforce");
        full["routes"][0]["match"]["route_name"] = json!("r");
        full["routes"][1]["allow"][0]["equals"] = json!({"a": [1, null]});
        full["routes"][1]["allow"][0]["one_of"] = json!(["x", 1, null]);
        full["routes"][1]["allow"][0]["claims"] = json!([{"claim": "azp", "equals": "acme"}]);
        full["routes"][1]["allow"][0]["jkt"] = json!(["t"]);
        for v in [json!({}), example(), full] {
            let ours = RawRoutes::from_json(v.clone(), "").unwrap();
            let serdes: RawRoutes = serde_json::from_value(v).unwrap();
            assert_eq!(format!("{ours:?}"), format!("{serdes:?}"));
        }
    }
}
