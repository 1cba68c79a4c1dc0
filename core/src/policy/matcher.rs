//! Request facts and the `match` block of a route.
//!
//! A path is matched as sent, without its query string. Because the upstream may
//! resolve a path differently from how it was written (`/web/../api/deploy`,
//! `/api/%64eploy`, `/api;x/deploy`, `//api`), the path is also put into a
//! canonical form — unreserved and `/` percent-escapes decoded, `\` read as `/`,
//! `;parameters` cut from each segment, empty segments merged, dot segments
//! resolved — and matched again. If the two forms select different routes the
//! request is [`AmbiguousPath`]: a policy must not depend on which of the two
//! readings the upstream picks.

use std::net::IpAddr;

pub(crate) use crate::uri::{canonical_path, normalize_host, without_query};

/// What the glue gathers from the host for one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestInfo {
    /// `:path`, query string included (it is ignored here).
    pub path: String,
    /// `:authority` (or `host`), port included (it is ignored here).
    pub host: Option<String>,
    /// `:method`, as sent (methods are case-sensitive, RFC 9110 §9.1).
    pub method: String,
    /// Envoy's `xds.route_name` property: the route Envoy itself selected.
    pub route_name: Option<String>,
    /// The connection's source IP (see [`super::cidr::parse_source_address`]);
    /// `None` when unknown, which fails every source allow-list.
    pub source: Option<IpAddr>,
    /// The client certificate of the downstream connection, if one was presented
    /// (see [`crate::mtls::client_certificate`]).
    pub client_certificate: Option<crate::mtls::ClientCertificate>,
}

/// The raw and canonical forms of a request path select different routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmbiguousPath;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathMatch {
    Any,
    Prefix(String),
    Exact(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostMatch {
    Any,
    /// Lower-case host name, no port.
    Exact(String),
    /// From `*.example.com`: `.example.com`, matched by hosts with at least one
    /// more label (as Envoy's virtual-host wildcards do); not `example.com` itself.
    Suffix(String),
}

/// A route's validated `match` block; every condition given must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RouteMatch {
    pub path: PathMatch,
    pub host: HostMatch,
    /// Empty: any method.
    pub methods: Vec<String>,
    pub route_name: Option<String>,
}

impl RouteMatch {
    /// Matches every request: nothing after it in the route list is reachable.
    pub fn is_catch_all(&self) -> bool {
        self.path == PathMatch::Any
            && self.host == HostMatch::Any
            && self.methods.is_empty()
            && self.route_name.is_none()
    }

    /// `path` without query; `host` already normalized by [`normalize_host`].
    pub fn matches(&self, path: &str, host: Option<&str>, req: &RequestInfo) -> bool {
        let path_ok = match &self.path {
            PathMatch::Any => true,
            PathMatch::Prefix(prefix) => path.starts_with(prefix.as_str()),
            PathMatch::Exact(exact) => path == exact,
        };
        let host_ok = match &self.host {
            HostMatch::Any => true,
            HostMatch::Exact(want) => host == Some(want.as_str()),
            HostMatch::Suffix(suffix) => {
                host.is_some_and(|h| h.len() > suffix.len() && h.ends_with(suffix.as_str()))
            }
        };
        let method_ok = self.methods.is_empty() || self.methods.contains(&req.method);
        let route_name_ok = match &self.route_name {
            None => true,
            Some(want) => req.route_name.as_deref() == Some(want.as_str()),
        };
        path_ok && host_ok && method_ok && route_name_ok
    }
}

/// Index of the first route in `routes` whose match block holds, for both readings
/// of the path.
pub(crate) fn first_match<'a>(
    matchers: impl Iterator<Item = &'a RouteMatch> + Clone,
    req: &RequestInfo,
) -> Result<Option<usize>, AmbiguousPath> {
    let path = without_query(&req.path);
    let host = req.host.as_deref().map(normalize_host);
    let host = host.as_deref();
    let find = |p: &str| matchers.clone().position(|m| m.matches(p, host, req));
    let raw = find(path);
    let canonical = canonical_path(path);
    if canonical != path && find(&canonical) != raw {
        return Err(AmbiguousPath);
    }
    Ok(raw)
}
