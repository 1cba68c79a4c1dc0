//! Route classes and authorization policy: which requests need a machine identity,
//! which identities may use a route, and what the filter does about it.
//!
//! Pure: the glue gathers a [`RequestInfo`] and a [`Credential`], calls [`decide`],
//! and acts on the [`Verdict`]. Nothing here reads the host.
//!
//! # Matching
//!
//! Routes are tried in configuration order and **the first whose `match` holds
//! wins**; later routes are not consulted. Every condition of a `match` block must
//! hold: `prefix` (plain string prefix, so `/api` also matches `/apix` — end
//! prefixes with `/`) or `exact` path, compared without the query string; `host`
//! (case-insensitive, port and trailing dot ignored; `*.example.com` matches any
//! subdomain, not `example.com` itself); `methods` (exact, case-sensitive); and
//! `route_name`, Envoy's `xds.route_name`, which lets a policy follow Envoy's own
//! route table. A request whose path selects a different route once normalized
//! (`..`, `//`, `%2F`, `;params`…) is refused as `ambiguous_path`; configure
//! Envoy's `normalize_path` and `merge_slashes` so that such paths never arrive,
//! or match on `route_name`. A request no route matches gets `default_audience`
//! (default `machine`: fail closed), the global deny list, and no allow list.
//! Without any `routes`, every request is such a request, which is exactly the
//! filter's behaviour before routes existed.
//!
//! # Audiences
//!
//! | audience  | no token            | verified token                 | token that failed verification |
//! |-----------|---------------------|--------------------------------|--------------------------------|
//! | `machine` | 401 `missing_token` | deny lists, then `allow`       | 401/503 with the verifier's reason |
//! | `human`   | passes, untouched   | 403 `machine_on_human_route`   | names a configured issuer: 403 `machine_on_human_route`; otherwise passes |
//! | `any`     | passes              | deny lists, then `allow`       | names a configured issuer: the verifier's 401/503; otherwise passes |
//!
//! "Names a configured issuer" ([`names_machine_issuer`]) is a *lenient* reading of
//! the credential header that failed verification (or held no readable bearer
//! token: another scheme, bytes that are not UTF-8): any JWT-shaped word in it that
//! a forgiving decoder reads as naming a configured `iss`, or a `kid` one of the
//! issuers publishes (see [`crate::token::attribution`]). A bearer token from some other
//! identity provider (a person's access token, say) is not a machine credential,
//! and human/any routes leave it to whatever authenticates people. A machine token
//! that fails verification — even one only a lenient backend would still read,
//! such as `Bearer <token>==` — is still a machine credential and never wanders
//! into a human path. Deny lists
//! apply to verified tokens on every route, before the audience: revoked is
//! revoked everywhere.
//!
//! # Authorization
//!
//! `allow` rules match the *forwarded identity* (`identity`, exact or with a
//! trailing `*` as a prefix), the Kubernetes `namespace` (from a
//! `system:serviceaccount:NS:NAME` subject, else the `kubernetes.io.namespace`
//! claim), the configured issuer *name* (`issuer`), claims (`claim` with
//! `contains`, `equals`, `one_of` or `prefix`, inline or as a `claims` list; see
//! [`rules::claim`] for dotted paths), `methods`, and `source_cidrs`. All
//! conditions of a rule must hold; any one rule suffices. Without `allow`, every
//! verified identity is admitted. Identity and namespace rules hold across every
//! configured issuer: when issuers are not equally trusted, pin `issuer` as well.
//!
//! # Reasons and statuses, in evaluation order
//!
//! 1. `ambiguous_path` 400 — the path reads as another route once normalized.
//! 2. `internal_error` 500 — the host failed while reading the credential, on any
//!    route: the filter cannot tell what it is looking at.
//! 3. `source_not_allowed` 403 — the route's `source_cidrs` does not contain the
//!    connection's source (checked before credentials: it is a firewall rule).
//! 4. On machine and `any` routes (and unmatched requests): a presented client
//!    certificate that is not trusted, `untrusted_certificate` 403; no trusted
//!    certificate on a route with `require_client_certificate`,
//!    `client_certificate_required` 401 (see [`crate::mtls`]). A certificate-only
//!    identity ([`Credential::Certificate`]) then counts as a verified identity on
//!    routes with `accept_certificate_identity`, as no credential elsewhere.
//! 5. A route with `require_signature` (see [`crate::partners`]): anything but a
//!    verified partner signature is `missing_signature` 401 (a credential that failed
//!    verification keeps its own reason).
//! 6. The audience table above: `missing_token` and the verifier's reasons (401,
//!    or 503 `keys_unavailable`), `machine_on_human_route` 403.
//! 7. Deny lists (global, the revocation feed's, then the route's): `token_revoked`
//!    401 (the credential is no longer valid: `invalid_token`), then `subject_denied`
//!    403 (the identity is authentic but banned; matched against `sub` and the
//!    forwarded identity). See [`revocation`] for the feed.
//! 8. `allow`: `not_allowed` 403 with `WWW-Authenticate: Bearer …
//!    error="insufficient_scope"`, or `source_not_allowed` 403 when the only rules
//!    that fit failed on `source_cidrs`.
//!
//! A route's `deny_status` (4xx, not 401/407) replaces the status of its 403s;
//! those replies then carry no challenge.
//!
//! # Client class and shadow mode
//!
//! [`ClientClass::Machine`] means "carries a verified machine identity"; anything
//! else is `human`. The glue sets it on forwarded requests in `client_header`
//! (default `x-nhi-client`) after removing any client-supplied copy.
//!
//! In shadow mode (`"mode": "shadow"` globally, or per route, where the route's
//! mode wins either way) the whole evaluation runs, the verdict is logged and
//! counted, and the request is forwarded with `x-nhi-shadow-decision`
//! ([`Verdict::shadow_header`]), e.g. `deny; status=403; reason=not_allowed;
//! route=deploy-api` or `allow; route=web`. Shadow mode never blocks, whatever the
//! reason.

pub mod cidr;
pub mod config;
pub mod matcher;
pub mod reply;
pub mod revocation;
pub mod rules;

use std::fmt;

use crate::keys::KeyLookup;
use crate::reason::{LocalReply, Reason, Rejection};
use crate::verify::issuer::Issuer;

pub use cidr::{parse_source_address, Cidr, CidrError};
pub use config::{
    compile, RawAllow, RawDeny, RawMatch, RawRoute, RawRoutes, DEFAULT_CLIENT_HEADER, SHADOW_DECISION_HEADER,
};
pub use matcher::{AmbiguousPath, RequestInfo};
pub use reply::{Denial, DenyReason, RouteDenial};
pub use revocation::RevocationList;
pub use rules::IdentityInfo;

use matcher::RouteMatch;
use rules::{AllowRule, DenyList};

/// Who a route is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// A verified machine identity is required.
    Machine,
    /// People only: machine credentials are refused.
    Human,
    /// Either; a machine token, if present, must verify.
    Any,
}

impl Audience {
    pub fn as_str(self) -> &'static str {
        match self {
            Audience::Machine => "machine",
            Audience::Human => "human",
            Audience::Any => "any",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    /// Evaluate and report, never block.
    Shadow,
}

/// The value of the client-class header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientClass {
    Machine,
    Human,
}

impl ClientClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientClass::Machine => "machine",
            ClientClass::Human => "human",
        }
    }
}

/// The validated route configuration.
#[derive(Debug, Clone)]
pub struct Routes {
    routes: Vec<Route>,
    pub default_audience: Audience,
    pub mode: Mode,
    deny: DenyList,
    /// Lower-case header name for [`ClientClass`].
    pub client_header: String,
}

impl Default for Routes {
    /// No routes: every request needs a machine identity, enforced.
    fn default() -> Self {
        Routes {
            routes: Vec::new(),
            default_audience: Audience::Machine,
            mode: Mode::Enforce,
            deny: DenyList::default(),
            client_header: DEFAULT_CLIENT_HEADER.to_owned(),
        }
    }
}

impl Routes {
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Headers only the filter may set: strip them from every request first.
    pub fn managed_headers(&self) -> [&str; 2] {
        [self.client_header.as_str(), SHADOW_DECISION_HEADER]
    }

    /// Whether deciding `req` reads its source address: the route it matches (by
    /// path, host, method and route name — never by source) has `source_cidrs`, or
    /// an allow rule that does. Otherwise the filter need not ask the host for it.
    pub fn needs_source(&self, req: &RequestInfo) -> bool {
        match classify(self, req) {
            Ok(Some(route)) => {
                !route.source_cidrs.is_empty()
                    || route.allow.iter().flatten().any(|rule| !rule.source_cidrs.is_empty())
            }
            // No route: `default_audience`, no source rules. Ambiguous: refused anyway.
            Ok(None) | Err(AmbiguousPath) => false,
        }
    }

    /// Whether the route `req` matches refuses its source address outright (route
    /// `source_cidrs`, checked before any credential): then nothing about the token —
    /// not even whether keys are loaded — can change the answer.
    pub fn source_refused(&self, req: &RequestInfo) -> bool {
        matches!(classify(self, req), Ok(Some(route))
            if !route.source_cidrs.is_empty() && !cidr::any_contains(&route.source_cidrs, req.source))
    }

    /// Whether any route overrides the issuers' DPoP mode.
    pub fn any_dpop_override(&self) -> bool {
        self.routes.iter().any(|route| route.dpop.is_some())
    }

    /// Every `allow` rule's `identity` as written (`*` ends a prefix), with its
    /// route's name: the inventory lists those no identity matches.
    pub fn allowed_identities(&self) -> Vec<(&str, String)> {
        let mut out = Vec::new();
        for route in &self.routes {
            for rule in route.allow.iter().flatten() {
                match &rule.identity {
                    Some(crate::claims::matcher::Pattern::Exact(s)) => {
                        out.push((route.name.as_str(), s.clone()))
                    }
                    Some(crate::claims::matcher::Pattern::Prefix(p)) => {
                        out.push((route.name.as_str(), format!("{p}*")))
                    }
                    None => {}
                }
            }
        }
        out
    }

    /// Whether any route matches on Envoy's route name.
    pub fn read_route_name(&self) -> bool {
        self.routes.iter().any(|route| route.matcher.route_name.is_some())
    }
}

/// One validated route.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub audience: Audience,
    matcher: RouteMatch,
    /// `None`: every verified identity.
    allow: Option<Vec<AllowRule>>,
    deny: DenyList,
    /// Empty: every source.
    source_cidrs: Vec<Cidr>,
    /// `None`: the global mode.
    mode: Option<Mode>,
    deny_status: Option<u16>,
    /// Refuse requests without a trusted client certificate (see [`crate::mtls`]).
    pub require_client_certificate: bool,
    /// A trusted client certificate without a token is an identity on this route.
    pub accept_certificate_identity: bool,
    /// Replaces the DPoP mode of the token's issuer on this route.
    pub dpop: Option<crate::dpop::Mode>,
    /// Only a verified partner signature is an identity on this route.
    pub require_signature: bool,
}

impl Route {
    /// This route's mode, given the global one.
    pub fn mode(&self, global: Mode) -> Mode {
        self.mode.unwrap_or(global)
    }

    /// The first client-certificate option set on this route, as its field name
    /// (they need the `mtls` block).
    pub fn certificate_flag(&self) -> Option<&'static str> {
        if self.require_client_certificate {
            Some("require_client_certificate")
        } else if self.accept_certificate_identity {
            Some("accept_certificate_identity")
        } else {
            None
        }
    }
}

/// The first route that matches `req` (`None`: none does; see the module docs).
pub fn classify<'r>(routes: &'r Routes, req: &RequestInfo) -> Result<Option<&'r Route>, AmbiguousPath> {
    let found = matcher::first_match(routes.routes.iter().map(|r| &r.matcher), req)?;
    Ok(found.and_then(|i| routes.routes.get(i)))
}

/// The bearer credential of a request, as the glue found it.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    /// No bearer token (no header, or another scheme).
    Absent,
    /// No bearer token, but a client certificate with a trusted identity (see
    /// [`crate::mtls`]): an identity on routes with `accept_certificate_identity`,
    /// no credential (like [`Credential::Absent`]) everywhere else.
    Certificate(IdentityInfo<'a>),
    Verified(IdentityInfo<'a>),
    Rejected {
        rejection: &'a Rejection,
        /// [`names_machine_issuer`] of the token; `false` when there is no token to
        /// look at (a host failure) or where it cannot change the verdict
        /// ([`attribution_matters`]).
        machine_issuer: bool,
    },
}

impl<'a> Credential<'a> {
    /// The identity a forwarded machine request carries: a verified token's, or a
    /// certificate-only one (which only counts where [`Verdict::client_class`] says
    /// `machine`).
    pub fn identity(&self) -> Option<&IdentityInfo<'a>> {
        match self {
            Credential::Verified(who) | Credential::Certificate(who) => Some(who),
            Credential::Absent | Credential::Rejected { .. } => None,
        }
    }
}

/// Whether a credential header that did not verify (or held no readable bearer
/// token) belongs to one of the configured issuers, read leniently (see
/// [`crate::token::attribution`]): a configured `iss`, or a `kid` one of the issuers
/// publishes. What makes it a *machine* credential: it grants nothing on a machine
/// route (every failed token is refused there); on human and `any` routes it
/// separates a broken machine credential (refused) from someone else's credential
/// (left to whatever authenticates people).
pub fn names_machine_issuer<K: KeyLookup + ?Sized>(issuers: &[Issuer], keys: &K, value: &[u8]) -> bool {
    let kid_known =
        |kid: &str| (0..issuers.len()).any(|i| keys.key_set(i).is_some_and(|s| s.by_kid(kid).is_some()));
    let issuers: Vec<&str> = issuers.iter().map(|i| i.issuer.as_str()).collect();
    crate::token::attribution::Ours { issuers: &issuers, kid_known }.claim(value)
}

/// Global, fetched and route deny lists, then the route's `allow` rules, for a
/// verified identity on a route that accepts machines (`route: None`: unmatched).
/// `Ok`: the rule that admits.
pub fn authorize(
    routes: &Routes,
    route: Option<&Route>,
    who: &IdentityInfo<'_>,
    req: &RequestInfo,
    feed: Option<&RevocationList>,
) -> Result<Rule, (RouteDenial, Rule)> {
    check_deny_lists(routes, route, who, feed)?;
    match rules::check_allow(route.and_then(|r| r.allow.as_deref()), who, req) {
        Ok(Some(index)) => Ok(Rule::Allow(index)),
        Ok(None) => Ok(Rule::NoAllowList),
        Err(denial) => Err((denial, Rule::NoAllowRule)),
    }
}

fn check_deny_lists(
    routes: &Routes,
    route: Option<&Route>,
    who: &IdentityInfo<'_>,
    feed: Option<&RevocationList>,
) -> Result<(), (RouteDenial, Rule)> {
    routes.deny.check(who).map_err(|d| (d, Rule::DenyList { global: true }))?;
    if let Some(feed) = feed {
        feed.check(who).map_err(|d| (d, Rule::RevocationFeed))?;
    }
    match route {
        Some(route) => route.deny.check(who).map_err(|d| (d, Rule::DenyList { global: false })),
        None => Ok(()),
    }
}

/// Which part of the route configuration decided a verdict: the allow rule that
/// admits, or what refuses. Known anyway while deciding, kept for `nhi-guard
/// explain` (and any log that wants it); it never changes the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// The path reads as another route once normalized.
    AmbiguousPath,
    /// The host failed a call the decision depends on.
    HostFailure,
    /// The route's `source_cidrs`.
    RouteSources,
    /// The client-certificate rules (`mtls`, the route's `require_client_certificate`).
    ClientCertificate,
    /// The audience of the route (or `default_audience`) and the kind of credential.
    Audience,
    /// The route's `require_signature`: only a partner's verified signature passes.
    RequireSignature,
    /// A deny list: the global `deny` or the route's.
    DenyList { global: bool },
    /// The revocation feed's lists (`revocation`), applied without a reload.
    RevocationFeed,
    /// The route's `allow[i]`, the first rule that fits, admits the identity.
    Allow(usize),
    /// The route has no `allow` list: every verified identity is admitted.
    NoAllowList,
    /// No `allow` rule of the route admits the identity (or one would, from
    /// another source address).
    NoAllowRule,
    /// The identity's quota (`quotas`) is used up: set by the quota stage, which
    /// runs after policy admitted the request.
    Quota,
}

/// What route policy concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(Denial),
}

/// The filter's answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict<'r> {
    /// The matched route's name; `None` for unmatched or ambiguous requests.
    pub route: Option<&'r str>,
    pub client_class: ClientClass,
    /// In shadow mode, what enforcement *would* have done.
    pub decision: Decision,
    pub shadow: bool,
    /// What decided it.
    pub rule: Rule,
}

impl Verdict<'_> {
    /// The refusal to send; always `None` in shadow mode.
    pub fn enforced_denial(&self) -> Option<&Denial> {
        match &self.decision {
            Decision::Deny(denial) if !self.shadow => Some(denial),
            _ => None,
        }
    }

    /// The reply to send instead of forwarding, if any.
    pub fn local_reply(&self, realm: &str, request_id: Option<&str>) -> Option<LocalReply> {
        self.enforced_denial().map(|d| d.local_reply(self.route, realm, request_id))
    }

    /// In shadow mode, the value of [`SHADOW_DECISION_HEADER`]:
    /// `allow[; route=NAME]` or `deny; status=N; reason=CODE[; route=NAME]`.
    /// Route names are validated to `[a-z0-9_-]`, so the value needs no quoting.
    pub fn shadow_header(&self) -> Option<String> {
        if !self.shadow {
            return None;
        }
        let mut value = match &self.decision {
            Decision::Allow => "allow".to_owned(),
            Decision::Deny(d) => format!("deny; status={}; reason={}", d.status, d.reason),
        };
        if let Some(route) = self.route {
            value.push_str("; route=");
            value.push_str(route);
        }
        Some(value)
    }

    /// `allow` or the reason code: a metric label.
    pub fn code(&self) -> &'static str {
        match &self.decision {
            Decision::Allow => "allow",
            Decision::Deny(d) => d.reason.code(),
        }
    }
}

impl fmt::Display for Verdict<'_> {
    /// One log line: `route=deploy-api class=machine decision=deny status=403
    /// reason=not_allowed mode=shadow`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "route={} class={} ", self.route.unwrap_or("-"), self.client_class.as_str())?;
        match &self.decision {
            Decision::Allow => f.write_str("decision=allow")?,
            Decision::Deny(d) => write!(f, "decision=deny status={} reason={}", d.status, d.reason)?,
        }
        f.write_str(if self.shadow { " mode=shadow" } else { " mode=enforce" })
    }
}

/// Classifies `req`, applies its route's audience and policy to `credential`,
/// and applies the mode. See the module docs for the order and the reasons.
pub fn decide<'r>(routes: &'r Routes, req: &RequestInfo, credential: &Credential<'_>) -> Verdict<'r> {
    decide_with(routes, req, credential, None)
}

/// Whether [`Credential::Rejected::machine_issuer`] can change `req`'s verdict: only
/// where the route (or the default) admits people. A machine route refuses a rejected
/// credential whoever issued it, and an ambiguous path is refused before anyone asks;
/// there the lenient reading (a token parse) is skipped: a forged-token flood on a
/// machine route costs no more than its refusal.
pub fn attribution_matters(routes: &Routes, req: &RequestInfo) -> bool {
    match classify(routes, req) {
        Ok(route) => route.map_or(routes.default_audience, |r| r.audience) != Audience::Machine,
        Err(AmbiguousPath) => false,
    }
}

/// [`decide`] with the revocation feed's list beside the static deny lists.
pub fn decide_with<'r>(
    routes: &'r Routes,
    req: &RequestInfo,
    credential: &Credential<'_>,
    feed: Option<&RevocationList>,
) -> Verdict<'r> {
    let (route, (decision, rule)) = match classify(routes, req) {
        Err(AmbiguousPath) => {
            (None, (Decision::Deny(Denial::route(RouteDenial::AmbiguousPath, None)), Rule::AmbiguousPath))
        }
        Ok(route) => (route, evaluate(routes, route, req, &effective(route, credential), feed)),
    };
    let client_class = match effective(route, credential) {
        Credential::Verified(_) => ClientClass::Machine,
        _ => ClientClass::Human,
    };
    let mode = route.map_or(routes.mode, |r| r.mode(routes.mode));
    Verdict {
        route: route.map(|r| r.name.as_str()),
        client_class,
        decision,
        shadow: mode == Mode::Shadow,
        rule,
    }
}

/// A certificate-only identity is an identity on routes that accept it, and no
/// credential elsewhere (human routes ignore certificates altogether).
fn effective<'a>(route: Option<&Route>, credential: &Credential<'a>) -> Credential<'a> {
    match *credential {
        Credential::Certificate(who)
            if route.is_some_and(|r| r.accept_certificate_identity && r.audience != Audience::Human) =>
        {
            Credential::Verified(who)
        }
        Credential::Certificate(_) => Credential::Absent,
        other => other,
    }
}

/// On routes that take machines: a presented certificate must be trusted, and
/// must be there if the route requires one.
fn certificate_rejection(route: Option<&Route>, req: &RequestInfo) -> Option<Rejection> {
    match req.client_certificate.as_ref().map(|c| &c.identity) {
        Some(crate::mtls::CertIdentity::Untrusted(why)) => {
            Some(Rejection::new(Reason::UntrustedCertificate, why.to_string()))
        }
        Some(crate::mtls::CertIdentity::Trusted(_)) => None,
        Some(crate::mtls::CertIdentity::Unchecked) | None => {
            route.filter(|r| r.require_client_certificate).map(|_| {
                Rejection::new(Reason::ClientCertificateRequired, "this route requires a client certificate")
            })
        }
    }
}

fn evaluate(
    routes: &Routes,
    route: Option<&Route>,
    req: &RequestInfo,
    credential: &Credential<'_>,
    feed: Option<&RevocationList>,
) -> (Decision, Rule) {
    let route_denial = |d: RouteDenial| Decision::Deny(Denial::route(d, route.and_then(|r| r.deny_status)));
    if let Credential::Rejected { rejection, .. } = credential {
        if rejection.reason == Reason::InternalError {
            return (Decision::Deny(Denial::auth(rejection)), Rule::HostFailure);
        }
    }
    if let Some(route) = route {
        if !route.source_cidrs.is_empty() && !cidr::any_contains(&route.source_cidrs, req.source) {
            return (route_denial(RouteDenial::SourceNotAllowed), Rule::RouteSources);
        }
    }
    let audience = route.map_or(routes.default_audience, |r| r.audience);
    if audience != Audience::Human {
        if let Some(rejection) = certificate_rejection(route, req) {
            return (Decision::Deny(Denial::auth(&rejection)), Rule::ClientCertificate);
        }
    }
    if route.is_some_and(|r| r.require_signature) {
        match *credential {
            Credential::Rejected { rejection, .. } => {
                return (Decision::Deny(Denial::auth(rejection)), Rule::RequireSignature)
            }
            Credential::Verified(who) if who.via == crate::verify::identity::Via::Signature => {}
            _ => {
                let missing =
                    Rejection::new(Reason::MissingSignature, "this route requires a signed request");
                return (Decision::Deny(Denial::auth(&missing)), Rule::RequireSignature);
            }
        }
    }
    match *credential {
        // `effective` turned certificate-only identities into one of the others.
        Credential::Absent | Credential::Certificate(_) => match audience {
            Audience::Machine => (
                Decision::Deny(Denial::auth(&Rejection::new(Reason::MissingToken, "no bearer token"))),
                Rule::Audience,
            ),
            Audience::Human | Audience::Any => (Decision::Allow, Rule::Audience),
        },
        Credential::Rejected { rejection, machine_issuer } => match (audience, machine_issuer) {
            (Audience::Machine, _) | (Audience::Any, true) => {
                (Decision::Deny(Denial::auth(rejection)), Rule::Audience)
            }
            (Audience::Human, true) => (route_denial(RouteDenial::MachineOnHumanRoute), Rule::Audience),
            // Someone else's credential: not ours to judge.
            (Audience::Human | Audience::Any, false) => (Decision::Allow, Rule::Audience),
        },
        Credential::Verified(who) => {
            let outcome = match audience {
                Audience::Human => check_deny_lists(routes, route, &who, feed)
                    .and(Err((RouteDenial::MachineOnHumanRoute, Rule::Audience))),
                Audience::Machine | Audience::Any => authorize(routes, route, &who, req, feed),
            };
            match outcome {
                Ok(rule) => (Decision::Allow, rule),
                Err((d, rule)) => (route_denial(d), rule),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map, Value};

    const ISSUERS: [&str; 3] = ["ci", "partner-idp", "k8s"];

    fn routes(v: Value) -> Routes {
        compile(crate::json::FromJson::from_json(v, "").unwrap(), &ISSUERS).unwrap()
    }

    fn example() -> Routes {
        routes(json!({
            "deny": {"jti": ["revoked-1"], "subjects": ["system:serviceaccount:ci:leaked"]},
            "routes": [
                { "name": "deploy-api", "match": { "prefix": "/api/deploy/", "methods": ["POST"] },
                  "audience": "machine", "allow": [ { "identity": "ci/deployer" }, { "namespace": "payments" } ] },
                { "name": "partner", "match": { "prefix": "/partner/", "host": "api.example.com" },
                  "audience": "machine", "source_cidrs": ["203.0.113.0/24", "2001:db8::/32"],
                  "allow": [ { "issuer": "partner-idp", "claim": "scope", "contains": "orders:write" } ] },
                { "name": "status", "match": { "exact": "/status", "route_name": "envoy-status" }, "audience": "any",
                  "allow": [ { "issuer": "k8s" } ] },
                { "name": "web", "match": { "prefix": "/" }, "audience": "human" }
            ]
        }))
    }

    fn req(method: &str, path: &str) -> RequestInfo {
        RequestInfo {
            path: path.into(),
            host: Some("api.example.com".into()),
            method: method.into(),
            route_name: None,
            source: Some("203.0.113.9".parse().unwrap()),
            client_certificate: None,
        }
    }

    fn route_of(routes: &Routes, r: &RequestInfo) -> Option<String> {
        classify(routes, r).unwrap().map(|r| r.name.clone())
    }

    struct Id {
        identity: &'static str,
        issuer: &'static str,
        subject: &'static str,
        claims: Map<String, Value>,
    }

    impl Id {
        fn info(&self) -> IdentityInfo<'_> {
            IdentityInfo {
                identity: self.identity,
                issuer: self.issuer,
                subject: self.subject,
                claims: &self.claims,
                jkt: None,
                via: crate::verify::identity::Via::Token,
            }
        }
    }

    fn id(identity: &'static str, issuer: &'static str, subject: &'static str, claims: Value) -> Id {
        let Value::Object(claims) = claims else { panic!("claims must be an object") };
        Id { identity, issuer, subject, claims }
    }

    fn deployer() -> Id {
        id("ci/deployer", "k8s", "system:serviceaccount:ci:deployer", json!({"jti": "t-1"}))
    }

    fn reason(v: &Verdict<'_>) -> Option<&'static str> {
        match &v.decision {
            Decision::Allow => None,
            Decision::Deny(d) => Some(d.reason.code()),
        }
    }

    fn status(v: &Verdict<'_>) -> Option<u16> {
        match &v.decision {
            Decision::Allow => None,
            Decision::Deny(d) => Some(d.status),
        }
    }

    #[test]
    fn prefix_exact_and_first_match_wins() {
        let r = example();
        assert_eq!(route_of(&r, &req("POST", "/api/deploy/x")).as_deref(), Some("deploy-api"));
        // `web` (prefix "/") would match too; the earlier route wins.
        assert_eq!(route_of(&r, &req("POST", "/api/deploy/")).as_deref(), Some("deploy-api"));
        // No trailing slash: the prefix does not hold, `web` does.
        assert_eq!(route_of(&r, &req("POST", "/api/deploy")).as_deref(), Some("web"));
        let mut status = req("GET", "/status");
        status.route_name = Some("envoy-status".into());
        assert_eq!(route_of(&r, &status).as_deref(), Some("status"));
        status.path = "/status/".into();
        assert_eq!(route_of(&r, &status).as_deref(), Some("web"), "exact is exact");
    }

    #[test]
    fn query_string_is_ignored() {
        let r = example();
        assert_eq!(route_of(&r, &req("POST", "/api/deploy/x?a=/b")).as_deref(), Some("deploy-api"));
        let mut status = req("GET", "/status?verbose=1");
        status.route_name = Some("envoy-status".into());
        assert_eq!(route_of(&r, &status).as_deref(), Some("status"));
        // A query that looks like the route does not select it.
        assert_eq!(route_of(&r, &req("POST", "/x?/api/deploy/")).as_deref(), Some("web"));
    }

    #[test]
    fn host_port_case_and_wildcards() {
        let r = example();
        for host in ["api.example.com", "API.Example.COM", "api.example.com:8443", "api.example.com."] {
            let mut q = req("GET", "/partner/orders");
            q.host = Some(host.into());
            assert_eq!(route_of(&r, &q).as_deref(), Some("partner"), "{host}");
        }
        for host in [Some("other.example.com"), Some("api.example.com.evil"), None] {
            let mut q = req("GET", "/partner/orders");
            q.host = host.map(Into::into);
            assert_eq!(route_of(&r, &q).as_deref(), Some("web"), "{host:?}");
        }
        let wild = routes(json!({"routes": [{"name": "w", "match": {"host": "*.example.com"}}]}));
        for (host, hit) in [
            ("a.example.com", true),
            ("a.b.example.com:80", true),
            ("A.EXAMPLE.com", true),
            ("example.com", false),
            (".example.com", false),
            ("aexample.com", false),
        ] {
            let mut q = req("GET", "/");
            q.host = Some(host.into());
            assert_eq!(route_of(&wild, &q).is_some(), hit, "{host}");
        }
    }

    #[test]
    fn methods_and_route_name() {
        let r = example();
        assert_eq!(route_of(&r, &req("GET", "/api/deploy/x")).as_deref(), Some("web"));
        assert_eq!(route_of(&r, &req("post", "/api/deploy/x")).as_deref(), Some("web"));
        let status = req("GET", "/status");
        assert_eq!(route_of(&r, &status).as_deref(), Some("web"), "route_name absent");
        let mut other = status.clone();
        other.route_name = Some("envoy-other".into());
        assert_eq!(route_of(&r, &other).as_deref(), Some("web"));
        let by_name = routes(json!({"routes": [{"name": "n", "match": {"route_name": "envoy-deploy"}}]}));
        let mut q = req("DELETE", "/anything");
        q.route_name = Some("envoy-deploy".into());
        assert_eq!(route_of(&by_name, &q).as_deref(), Some("n"));
    }

    #[test]
    fn unmatched_requests_get_the_default_audience() {
        let r = routes(json!({"routes": [{"name": "a", "match": {"prefix": "/a/"}, "audience": "human"}]}));
        let q = req("GET", "/b");
        assert_eq!(route_of(&r, &q), None);
        let v = decide(&r, &q, &Credential::Absent);
        assert_eq!(v.route, None);
        assert_eq!(reason(&v), Some("missing_token"), "default is machine: fail closed");
        let human = routes(json!({"default_audience": "human", "routes": []}));
        assert_eq!(decide(&human, &q, &Credential::Absent).decision, Decision::Allow);
        // No routes at all: the filter's behaviour before routes existed.
        let none = Routes::default();
        assert_eq!(reason(&decide(&none, &q, &Credential::Absent)), Some("missing_token"));
        let d = deployer();
        assert_eq!(decide(&none, &q, &Credential::Verified(d.info())).decision, Decision::Allow);
    }

    #[test]
    fn ambiguous_paths_are_refused_only_when_the_route_changes() {
        let r = example();
        for path in [
            "/web/../api/deploy/x",
            "/api/%64eploy/x",
            "/api%2Fdeploy/x",
            "//api/deploy/x",
            "/api;x/deploy/x",
            "/web\\..\\api/deploy/x",
            "/api/deploy/..%2F..%2Fweb",
        ] {
            let v = decide(&r, &req("POST", path), &Credential::Absent);
            assert_eq!(reason(&v), Some("ambiguous_path"), "{path}");
            assert_eq!(status(&v), Some(400), "{path}");
            assert_eq!(v.route, None);
        }
        // Non-canonical but unambiguous: both readings select the same route.
        for (path, route) in [
            ("/static//img.png", "web"),
            ("/api/deploy/a/../b", "deploy-api"),
            ("/a;jsessionid=1", "web"),
            ("/%7Euser", "web"),
        ] {
            assert_eq!(route_of(&r, &req("POST", path)).as_deref(), Some(route), "{path}");
        }
    }

    /// A denial's status and reason code, or `None` for allow.
    type Expected = Option<(u16, &'static str)>;

    /// machine/human/any × absent/valid/invalid (ours or someone else's).
    #[test]
    fn audience_matrix() {
        let r = routes(json!({"routes": [
            {"name": "m", "match": {"prefix": "/m/"}, "audience": "machine"},
            {"name": "h", "match": {"prefix": "/h/"}, "audience": "human"},
            {"name": "a", "match": {"prefix": "/a/"}, "audience": "any"}
        ]}));
        let d = deployer();
        let expired = Rejection::new(Reason::Expired, "token expired");
        let unknown = Rejection::new(Reason::UnknownIssuer, "iss is not a configured issuer");
        let keys = Rejection::new(Reason::KeysUnavailable, "issuer keys are not available");
        let ours = |r| Credential::Rejected { rejection: r, machine_issuer: true };
        let theirs = |r| Credential::Rejected { rejection: r, machine_issuer: false };
        let cases: Vec<(&str, Credential<'_>, Expected, ClientClass)> = vec![
            ("/m/", Credential::Absent, Some((401, "missing_token")), ClientClass::Human),
            ("/m/", Credential::Verified(d.info()), None, ClientClass::Machine),
            ("/m/", ours(&expired), Some((401, "expired")), ClientClass::Human),
            ("/m/", theirs(&unknown), Some((401, "unknown_issuer")), ClientClass::Human),
            ("/m/", ours(&keys), Some((503, "keys_unavailable")), ClientClass::Human),
            ("/h/", Credential::Absent, None, ClientClass::Human),
            (
                "/h/",
                Credential::Verified(d.info()),
                Some((403, "machine_on_human_route")),
                ClientClass::Machine,
            ),
            ("/h/", ours(&expired), Some((403, "machine_on_human_route")), ClientClass::Human),
            ("/h/", ours(&keys), Some((403, "machine_on_human_route")), ClientClass::Human),
            ("/h/", theirs(&unknown), None, ClientClass::Human),
            ("/a/", Credential::Absent, None, ClientClass::Human),
            ("/a/", Credential::Verified(d.info()), None, ClientClass::Machine),
            ("/a/", ours(&expired), Some((401, "expired")), ClientClass::Human),
            ("/a/", ours(&keys), Some((503, "keys_unavailable")), ClientClass::Human),
            ("/a/", theirs(&unknown), None, ClientClass::Human),
        ];
        for (path, credential, want, class) in cases {
            let v = decide(&r, &req("GET", path), &credential);
            let got = match &v.decision {
                Decision::Allow => None,
                Decision::Deny(d) => Some((d.status, d.reason.code())),
            };
            assert_eq!(got, want, "{path} {credential:?}");
            assert_eq!(v.client_class, class, "{path} {credential:?}");
            assert!(!v.shadow);
        }
    }

    /// Where [`attribution_matters`] says no, whose token it was cannot change the
    /// verdict (the pipeline skips the lenient reading there); where it says yes, it can.
    #[test]
    fn attribution_matters_only_where_people_are_admitted() {
        let expired = Rejection::new(Reason::Expired, "token expired");
        let with = |machine_issuer| Credential::Rejected { rejection: &expired, machine_issuer };
        let answer = |r: &Routes, path: &str, machine_issuer| {
            let v = decide(r, &req("GET", path), &with(machine_issuer));
            (v.route.map(str::to_owned), v.decision, v.rule, v.client_class)
        };
        for default in ["machine", "human", "any"] {
            let r = routes(json!({"default_audience": default, "routes": [
                {"name": "m", "match": {"prefix": "/m/"}, "audience": "machine"},
                {"name": "h", "match": {"prefix": "/h/"}, "audience": "human"},
                {"name": "a", "match": {"prefix": "/a/"}, "audience": "any"},
                {"name": "m2", "match": {"prefix": "/m/x"}, "audience": "machine"}
            ]}));
            for (path, matters) in [
                ("/m/y", false),
                ("/h/y", true),
                ("/a/y", true),
                ("/m/%2e%2e/h/y", false),
                ("/elsewhere", default != "machine"),
            ] {
                assert_eq!(attribution_matters(&r, &req("GET", path)), matters, "{default} {path}");
                let same = answer(&r, path, true) == answer(&r, path, false);
                assert_eq!(
                    same, !matters,
                    "{default} {path}: only where it matters may it change the verdict"
                );
            }
        }
    }

    #[test]
    fn host_failure_is_500_on_every_route() {
        let r = example();
        let failed = Rejection::new(Reason::InternalError, "host call failed");
        let cred = Credential::Rejected { rejection: &failed, machine_issuer: false };
        for path in ["/api/deploy/x", "/anything"] {
            let v = decide(&r, &req("POST", path), &cred);
            assert_eq!((status(&v), reason(&v)), (Some(500), Some("internal_error")), "{path}");
        }
    }

    #[test]
    fn allow_rules_on_the_example() {
        let r = example();
        let deploy = req("POST", "/api/deploy/x");
        let d = deployer();
        assert_eq!(decide(&r, &deploy, &Credential::Verified(d.info())).decision, Decision::Allow);
        let pay = id("payments/api", "k8s", "system:serviceaccount:payments:api", json!({}));
        assert_eq!(decide(&r, &deploy, &Credential::Verified(pay.info())).decision, Decision::Allow);
        let other = id("ci/tester", "k8s", "system:serviceaccount:ci:tester", json!({}));
        let v = decide(&r, &deploy, &Credential::Verified(other.info()));
        assert_eq!((status(&v), reason(&v)), (Some(403), Some("not_allowed")));
        assert_eq!(v.route, Some("deploy-api"));

        let partner = req("PUT", "/partner/orders");
        let acme = id("acme", "partner-idp", "acme", json!({"scope": "orders:read orders:write"}));
        assert_eq!(decide(&r, &partner, &Credential::Verified(acme.info())).decision, Decision::Allow);
        let reader = id("acme", "partner-idp", "acme", json!({"scope": ["orders:read"]}));
        assert_eq!(reason(&decide(&r, &partner, &Credential::Verified(reader.info()))), Some("not_allowed"));
        let wrong_issuer = id("acme", "ci", "acme", json!({"scope": "orders:write"}));
        assert_eq!(
            reason(&decide(&r, &partner, &Credential::Verified(wrong_issuer.info()))),
            Some("not_allowed")
        );
    }

    #[test]
    fn what_the_routes_read_from_the_host() {
        let req =
            |path: &str| RequestInfo { path: path.into(), method: "GET".into(), ..RequestInfo::default() };
        let none = routes(json!({"routes": [{"name": "a", "match": {"prefix": "/"}}]}));
        assert!(!none.needs_source(&req("/x")) && !none.read_route_name());
        let by_route = routes(json!({"routes": [
            {"name": "open", "match": {"prefix": "/open/"}},
            {"name": "fenced", "match": {"prefix": "/"}, "source_cidrs": ["10.0.0.0/8"]}]}));
        assert!(by_route.needs_source(&req("/x")));
        assert!(!by_route.needs_source(&req("/open/x")), "only the matched route counts");
        let by_rule = routes(json!({"routes": [
            {"name": "a", "match": {"prefix": "/"}, "allow": [{"identity": "*", "source_cidrs": ["10.0.0.0/8"]}]}]}));
        assert!(by_rule.needs_source(&req("/x")) && !by_rule.read_route_name());
        let named = routes(json!({"routes": [{"name": "n", "match": {"route_name": "envoy-deploy"}}]}));
        assert!(named.read_route_name() && !named.needs_source(&req("/x")));
        let from = |ip: &str| RequestInfo { source: Some(ip.parse().unwrap()), ..req("/x") };
        assert!(by_route.source_refused(&from("192.0.2.1")) && by_route.source_refused(&req("/x")));
        assert!(!by_route.source_refused(&from("10.1.2.3")));
        assert!(!by_route.source_refused(&RequestInfo { path: "/open/x".into(), ..from("192.0.2.1") }));
        assert!(!by_rule.source_refused(&from("192.0.2.1")), "allow rules are judged with the credential");
    }

    #[test]
    fn route_source_cidrs_come_before_credentials() {
        let r = example();
        let acme = id("acme", "partner-idp", "acme", json!({"scope": "orders:write"}));
        for (source, ok) in [
            (Some("203.0.113.200"), true),
            (Some("::ffff:203.0.113.200"), true),
            (Some("2001:db8:1::5"), true),
            (Some("198.51.100.1"), false),
            (Some("2001:db9::1"), false),
            (None, false),
        ] {
            let mut q = req("POST", "/partner/orders");
            q.source = source.map(|s| s.parse().unwrap());
            let v = decide(&r, &q, &Credential::Verified(acme.info()));
            assert_eq!(v.decision == Decision::Allow, ok, "{source:?}");
            if !ok {
                assert_eq!((status(&v), reason(&v)), (Some(403), Some("source_not_allowed")));
                // Even without a token: a firewall rule, not an authentication question.
                let anon = decide(&r, &q, &Credential::Absent);
                assert_eq!(reason(&anon), Some("source_not_allowed"), "{source:?}");
            }
        }
    }

    #[test]
    fn deny_lists_global_and_per_route() {
        let r = routes(json!({
            "deny": {"jti": ["revoked-1"], "subjects": ["system:serviceaccount:ci:leaked"]},
            "routes": [
                {"name": "m", "match": {"prefix": "/m/"}, "deny": {"subjects": ["ci/deployer"]}, "deny_status": 404},
                {"name": "a", "match": {"prefix": "/a/"}, "audience": "any"},
                {"name": "h", "match": {"prefix": "/h/"}, "audience": "human"}
            ]
        }));
        let revoked = id("ci/x", "k8s", "system:serviceaccount:ci:x", json!({"jti": "revoked-1"}));
        let leaked = id("ci/leaked", "k8s", "system:serviceaccount:ci:leaked", json!({}));
        let d = deployer();
        for path in ["/m/", "/a/", "/h/", "/unmatched"] {
            let v = decide(&r, &req("GET", path), &Credential::Verified(revoked.info()));
            assert_eq!((status(&v), reason(&v)), (Some(401), Some("token_revoked")), "{path}");
            let v = decide(&r, &req("GET", path), &Credential::Verified(leaked.info()));
            let want = if path == "/m/" { 404 } else { 403 };
            assert_eq!((status(&v), reason(&v)), (Some(want), Some("subject_denied")), "{path}");
        }
        // The route's own list applies on that route only.
        let v = decide(&r, &req("GET", "/m/"), &Credential::Verified(d.info()));
        assert_eq!((status(&v), reason(&v)), (Some(404), Some("subject_denied")));
        assert_eq!(decide(&r, &req("GET", "/a/"), &Credential::Verified(d.info())).decision, Decision::Allow);
        // A 401 is never overridden.
        let v = decide(&r, &req("GET", "/m/"), &Credential::Verified(revoked.info()));
        assert_eq!(status(&v), Some(401));
    }

    #[test]
    fn deny_status_override_and_reply() {
        let r = routes(json!({"routes": [
            {"name": "hidden", "match": {"prefix": "/"}, "allow": [{"identity": "ci/deployer"}], "deny_status": 404}
        ]}));
        let other = id("ci/other", "k8s", "s", json!({}));
        let v = decide(&r, &req("GET", "/x"), &Credential::Verified(other.info()));
        let reply = v.local_reply("nhi-guard", Some("rid")).unwrap();
        assert_eq!(reply.status, 404);
        assert!(!reply.headers.iter().any(|(n, _)| n == "www-authenticate"));
        let body: Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(
            body,
            json!({"error": "forbidden", "reason": "not_allowed", "route": "hidden", "request_id": "rid"})
        );
        // Missing token stays a 401 challenge.
        let v = decide(&r, &req("GET", "/x"), &Credential::Absent);
        assert_eq!(v.local_reply("nhi-guard", None).unwrap().status, 401);
    }

    #[test]
    fn shadow_mode_globally() {
        let mut raw = json!({"mode": "shadow", "routes": [
            {"name": "m", "match": {"prefix": "/m/"}, "allow": [{"identity": "ci/deployer"}]},
            {"name": "h", "match": {"prefix": "/h/"}, "audience": "human"}
        ]});
        let r = routes(raw.clone());
        let other = id("ci/other", "k8s", "s", json!({}));
        let v = decide(&r, &req("GET", "/m/x"), &Credential::Verified(other.info()));
        assert!(v.shadow);
        assert_eq!(reason(&v), Some("not_allowed"), "the decision is still evaluated");
        assert_eq!(v.enforced_denial(), None);
        assert_eq!(v.local_reply("r", None), None);
        assert_eq!(v.shadow_header().as_deref(), Some("deny; status=403; reason=not_allowed; route=m"));
        assert_eq!(v.code(), "not_allowed");
        assert_eq!(
            v.to_string(),
            "route=m class=machine decision=deny status=403 reason=not_allowed mode=shadow"
        );

        let v = decide(&r, &req("GET", "/m/x"), &Credential::Absent);
        assert_eq!(v.shadow_header().as_deref(), Some("deny; status=401; reason=missing_token; route=m"));
        assert_eq!(v.local_reply("r", None), None, "shadow never blocks, even a 401");
        let v = decide(&r, &req("GET", "/h/x"), &Credential::Absent);
        assert_eq!(v.shadow_header().as_deref(), Some("allow; route=h"));
        let v = decide(&r, &req("GET", "/unmatched"), &Credential::Absent);
        assert_eq!(v.shadow_header().as_deref(), Some("deny; status=401; reason=missing_token"));
        let v = decide(&r, &req("GET", "/h/../m/x"), &Credential::Absent);
        assert_eq!(v.shadow_header().as_deref(), Some("deny; status=400; reason=ambiguous_path"));
        assert_eq!(v.local_reply("r", None), None);

        // Enforce mode: no shadow header.
        raw["mode"] = json!("enforce");
        let enforced = routes(raw);
        let v = decide(&enforced, &req("GET", "/h/x"), &Credential::Absent);
        assert_eq!(v.shadow_header(), None);
        assert_eq!(v.code(), "allow");
        assert_eq!(v.to_string(), "route=h class=human decision=allow mode=enforce");
    }

    #[test]
    fn shadow_mode_per_route_wins_either_way() {
        let r = routes(json!({"routes": [
            {"name": "trial", "match": {"prefix": "/trial/"}, "mode": "shadow"},
            {"name": "strict", "match": {"prefix": "/strict/"}}
        ]}));
        let v = decide(&r, &req("GET", "/trial/x"), &Credential::Absent);
        assert!(v.shadow && v.enforced_denial().is_none());
        let v = decide(&r, &req("GET", "/strict/x"), &Credential::Absent);
        assert!(!v.shadow && v.enforced_denial().is_some());

        let r = routes(json!({"mode": "shadow", "routes": [
            {"name": "strict", "match": {"prefix": "/strict/"}, "mode": "enforce"}
        ]}));
        let v = decide(&r, &req("GET", "/strict/x"), &Credential::Absent);
        assert!(!v.shadow);
        assert_eq!(v.local_reply("r", None).unwrap().status, 401);
        let v = decide(&r, &req("GET", "/other"), &Credential::Absent);
        assert!(v.shadow, "unmatched requests follow the global mode");
    }

    #[test]
    fn enforced_replies_name_the_route() {
        let r = example();
        let v = decide(&r, &req("POST", "/api/deploy/x"), &Credential::Absent);
        let reply = v.local_reply("nhi-guard", Some("abc")).unwrap();
        assert_eq!(reply.status, 401);
        let body: Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(
            body,
            json!({"error": "unauthenticated", "reason": "missing_token", "route": "deploy-api", "request_id": "abc"})
        );
    }

    #[test]
    fn machine_issuer_is_a_lenient_reading_of_iss_or_kid() {
        use crate::testkit::b64;
        let config = crate::config::Config::from_json(
            json!({"issuers": [{
                "name": "ci", "issuer": "https://issuer.example", "audiences": ["gw"],
                "jwks": {"cluster": "c", "authority": "issuer.example", "path": "/jwks"}
            }]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let keys =
            vec![Some(crate::keys::jwks::parse(crate::testkit::jwks().to_string().as_bytes()).unwrap().keys)];
        let keys = keys.as_slice();
        let token = |header: Value, claims: Value| {
            format!("{}.{}.{}", b64(header.to_string()), b64(claims.to_string()), b64("sig"))
        };
        let ours = |claims: Value| {
            names_machine_issuer(&config.issuers, keys, token(json!({"alg": "RS256"}), claims).as_bytes())
        };
        assert!(ours(json!({"iss": "https://issuer.example"})));
        assert!(!ours(json!({"iss": "https://people.example"})));
        // A lenient backend may take the first element: it is ours.
        assert!(ours(json!({"iss": ["https://issuer.example"]})));
        assert!(!ours(json!({})));
        assert!(!names_machine_issuer(&config.issuers, keys, b"not-a-jwt"));
        assert!(!names_machine_issuer(&config.issuers, keys, b""));
        // Padding and junk that the strict parser refuses do not hide the issuer.
        let padded =
            format!("{}==", token(json!({"alg": "RS256"}), json!({"iss": "https://issuer.example"})));
        assert!(names_machine_issuer(&config.issuers, keys, padded.as_bytes()));
        // A kid our issuer publishes, whatever the iss.
        let by_kid = token(json!({"alg": "RS256", "kid": "rsa-1"}), json!({"iss": "https://people.example"}));
        assert!(names_machine_issuer(&config.issuers, keys, by_kid.as_bytes()));
        let no_keys: Vec<Option<crate::keys::jwks::KeySet>> = vec![None];
        assert!(!names_machine_issuer(&config.issuers, no_keys.as_slice(), by_kid.as_bytes()));
    }

    #[test]
    fn managed_headers_include_the_configured_client_header() {
        let r = routes(json!({"client_header": "x-client"}));
        assert_eq!(r.managed_headers(), ["x-client", "x-nhi-shadow-decision"]);
        assert_eq!(ClientClass::Machine.as_str(), "machine");
        assert_eq!(ClientClass::Human.as_str(), "human");
    }
}
