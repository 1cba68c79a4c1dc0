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

use std::borrow::Cow;
use std::net::IpAddr;

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

/// The path without `?query` or `#fragment`.
pub(crate) fn without_query(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or_default()
}

/// Lower-cased, port and trailing root dot removed: `API.Example.com.:443` is
/// `api.example.com`, `[::1]:8080` is `[::1]`.
pub(crate) fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let without_port = if host.starts_with('[') {
        match host.find(']') {
            Some(end) => host.get(..=end).unwrap_or(host),
            None => host,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    let name = without_port.strip_suffix('.').unwrap_or(without_port);
    name.to_ascii_lowercase()
}

/// The reading of `path` most upstreams resolve to (see the module docs). Paths
/// that do not start with `/` (`*`, absolute-form) are returned unchanged.
pub(crate) fn canonical_path(path: &str) -> Cow<'_, str> {
    let plain = !path.contains(['%', '\\', ';']) && !path.contains("//") && !path.contains("/.");
    if plain || !path.starts_with('/') {
        return Cow::Borrowed(path);
    }
    let decoded = decode_path_escapes(path);
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    // The first split item is the empty string before the leading '/'.
    for segment in decoded.split('/').skip(1) {
        // Servlet containers drop `;params`, so `..;x` is a dot segment there.
        let segment = segment.split(';').next().unwrap_or_default();
        trailing_slash = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    if out == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(out)
    }
}

/// Decodes `%XX` escapes of unreserved characters (RFC 3986 §2.3: equivalent to
/// the character itself) and of `/` and `\`, and reads `\` as `/`. Other escapes
/// stay as written.
fn decode_path_escapes(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = match bytes.get(i + 1..i + 3) {
                Some(&[hi, lo]) => hex_value(hi).zip(hex_value(lo)).map(|(h, l)| h << 4 | l),
                _ => None,
            };
            if let Some(decoded) = hex.filter(|&c| is_unreserved(c) || c == b'/' || c == b'\\') {
                out.push(if decoded == b'\\' { b'/' } else { decoded });
                i += 3;
                continue;
            }
        }
        out.push(if b == b'\\' { b'/' } else { b });
        i += 1;
    }
    // Only ASCII was substituted for ASCII, so the bytes are still UTF-8.
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_paths() {
        for (raw, canonical) in [
            ("/", "/"),
            ("/api/deploy/", "/api/deploy/"),
            ("/api/deploy", "/api/deploy"),
            ("//api//deploy", "/api/deploy"),
            ("/web/../api/deploy/x", "/api/deploy/x"),
            ("/api/./deploy/", "/api/deploy/"),
            ("/api/deploy/..", "/api/"),
            ("/api/deploy/.", "/api/deploy/"),
            ("/../../etc", "/etc"),
            ("/api/%64eploy/", "/api/deploy/"),
            ("/api%2Fdeploy%2f", "/api/deploy/"),
            ("/web/%2e%2E/api", "/api"),
            ("/web\\..\\api", "/api"),
            ("/web%5C..%5capi", "/api"),
            ("/api;jsessionid=1/deploy", "/api/deploy"),
            ("/web/..;x/api", "/api"),
            ("/a%20b/%zz/%", "/a%20b/%zz/%"),
            ("/caf%C3%A9/é", "/caf%C3%A9/é"),
            ("*", "*"),
        ] {
            assert_eq!(canonical_path(raw), canonical, "{raw:?}");
        }
        assert!(matches!(canonical_path("/already/fine"), Cow::Borrowed(_)));
    }

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(normalize_host("API.Example.com"), "api.example.com");
        assert_eq!(normalize_host("api.example.com:8443"), "api.example.com");
        assert_eq!(normalize_host("api.example.com."), "api.example.com");
        assert_eq!(normalize_host("api.example.com.:443"), "api.example.com");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("[2001:DB8::1]"), "[2001:db8::1]");
        assert_eq!(normalize_host("192.0.2.1:80"), "192.0.2.1");
    }

    #[test]
    fn query_and_fragment_are_cut() {
        assert_eq!(without_query("/a/b?x=/c#d"), "/a/b");
        assert_eq!(without_query("/a#?"), "/a");
        assert_eq!(without_query("?x"), "");
    }
}
