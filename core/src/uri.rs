//! Request targets read the way the filter compares them: paths as route matching
//! reads them ([`canonical_path`]), hosts without port or case ([`normalize_host`]),
//! and whole `http`/`https` URIs reduced to one form per resource for the DPoP `htu`
//! check ([`normalized_http_uri`]).
//!
//! Route matching and DPoP share these so that a request the routes read one way is
//! never bound to a DPoP proof by another reading.

use std::borrow::Cow;

/// The path without `?query` or `#fragment`.
pub fn without_query(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or_default()
}

/// Lower-cased, port and trailing root dot removed: `API.Example.com.:443` is
/// `api.example.com`, `[::1]:8080` is `[::1]`.
pub fn normalize_host(host: &str) -> Cow<'_, str> {
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
    // Hosts mostly arrive lower-case: then no copy (this runs on every request).
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// The reading of `path` most upstreams resolve to (see the module docs). Paths
/// that do not start with `/` (`*`, absolute-form) are returned unchanged.
pub fn canonical_path(path: &str) -> Cow<'_, str> {
    // One pass (this runs on every request): nothing to decode, no `;`, and no `/`
    // followed by `/` or `.`.
    let plain = path.as_bytes().windows(2).all(|pair| !matches!(pair, [b'/', b'/' | b'.']))
        && !path.bytes().any(|b| matches!(b, b'%' | b'\\' | b';'));
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

/// An absolute `http` or `https` URI in the one form equivalent URIs share, for the
/// DPoP `htu` comparison (RFC 9449 §4.3): RFC 3986 §6.2.2 syntax-based normalization
/// (scheme and host lower-cased, percent-escapes upper-cased and those of unreserved
/// characters decoded, dot segments removed), §6.2.3 scheme-based normalization (the
/// default port dropped, an empty path read as `/`), then the path as route matching
/// reads it ([`canonical_path`]: `%2F`, `\`, `;params` and `//` as the routes see
/// them). Query and fragment are dropped. `None` for anything else: another scheme, a
/// user-info part, no host, a port that is not a number.
pub fn normalized_http_uri(uri: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let rest = without_query(rest);
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let (host, port) = split_port(authority)?;
    if host.is_empty() {
        return None;
    }
    let host = percent_normalized(host).to_ascii_lowercase();
    let path = if path.is_empty() { "/".to_owned() } else { percent_normalized(path) };
    let path = canonical_path(&path);
    Some(match port {
        Some(port) if port != default_port => format!("{scheme}://{host}:{port}{path}"),
        _ => format!("{scheme}://{host}{path}"),
    })
}

/// [`normalized_http_uri`] of the URI a request was sent to: its scheme, authority
/// and origin-form path (query ignored). `None` when they do not make an `http` or
/// `https` URI (a path that does not start with `/`, such as `*`).
pub fn normalized_request_uri(scheme: &str, authority: &str, path: &str) -> Option<String> {
    let path = without_query(path);
    if !path.starts_with('/') {
        return None;
    }
    normalized_http_uri(&format!("{scheme}://{authority}{path}"))
}

/// `host[:port]` (or `[v6]:port`) into host and numeric port; an empty port is none.
fn split_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        match rest.strip_prefix(':') {
            Some(port) => (host, port),
            None if rest.is_empty() => (host, ""),
            None => return None,
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, port),
            None => (authority, ""),
        }
    };
    if port.is_empty() {
        return Some((host, None));
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((host, Some(port.parse().ok()?)))
}

/// Percent-escapes upper-cased, and those of unreserved characters decoded (RFC 3986
/// §6.2.2.1, §6.2.2.2). A `%` not followed by two hex digits stays as written.
fn percent_normalized(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            if let Some(&[hi, lo]) = bytes.get(i + 1..i + 3) {
                if let (Some(h), Some(l)) = (hex_value(hi), hex_value(lo)) {
                    let decoded = h << 4 | l;
                    if is_unreserved(decoded) {
                        out.push(decoded);
                    } else {
                        out.extend_from_slice(&[b'%', hi.to_ascii_uppercase(), lo.to_ascii_uppercase()]);
                    }
                    i += 3;
                    continue;
                }
            }
        }
        out.push(b);
        i += 1;
    }
    // Only ASCII was substituted for ASCII, so the bytes are still UTF-8.
    String::from_utf8_lossy(&out).into_owned()
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

    /// RFC 3986 §6 as the DPoP `htu` check applies it: each pair is the same resource
    /// (`Some`) or not (`None`), for a request `https://gw.example<path>`.
    #[test]
    fn htu_normalization_table() {
        let request = |path: &str| normalized_request_uri("https", "gw.example", path).unwrap();
        for (htu, path, same) in [
            ("https://gw.example/api/x", "/api/x", true),
            // Case of scheme and host (§6.2.2.1); the path is case-sensitive.
            ("HTTPS://GW.Example/api/x", "/api/x", true),
            ("https://gw.example/API/x", "/api/x", false),
            // The default port (§6.2.3), and an empty port.
            ("https://gw.example:443/api/x", "/api/x", true),
            ("https://gw.example:/api/x", "/api/x", true),
            ("https://gw.example:8443/api/x", "/api/x", false),
            ("http://gw.example/api/x", "/api/x", false),
            // A trailing slash is another resource.
            ("https://gw.example/api/x/", "/api/x", false),
            ("https://gw.example/api/x", "/api/x/", false),
            // Percent-encoding (§6.2.2.2): unreserved escapes decoded, hex case.
            ("https://gw.example/api/%78", "/api/x", true),
            ("https://gw.example/api/a%2fb", "/api/a%2Fb", true),
            ("https://gw.example/api/a%20b", "/api/a%20b", true),
            ("https://gw.example/api/a%20b", "/api/a b", false),
            // Dot segments (§6.2.2.3) and the route matcher's reading of the path.
            ("https://gw.example/api/./y/../x", "/api/x", true),
            ("https://gw.example/api//x", "/api/x", true),
            // Query and fragment are ignored on both sides.
            ("https://gw.example/api/x?a=1", "/api/x", true),
            ("https://gw.example/api/x", "/api/x?a=1&b=2", true),
            ("https://gw.example/api/x#frag", "/api/x", true),
            // An empty path is `/`.
            ("https://gw.example", "/", true),
            // Another host.
            ("https://evil.example/api/x", "/api/x", false),
        ] {
            let htu = normalized_http_uri(htu).unwrap_or_default();
            assert_eq!(htu == request(path), same, "{htu:?} vs {path:?}");
        }
    }

    #[test]
    fn uris_that_are_not_http_urls_normalize_to_nothing() {
        for bad in [
            "ftp://gw.example/x",
            "https:/gw.example/x",
            "https:///x",
            "https://user@gw.example/x",
            "https://gw.example:port/x",
            "https://gw.example:99999/x",
            "/api/x",
            "",
        ] {
            assert_eq!(normalized_http_uri(bad), None, "{bad:?}");
        }
        assert_eq!(normalized_request_uri("https", "gw.example", "*"), None);
        assert_eq!(
            normalized_http_uri("HTTP://[2001:DB8::1]:80/a").as_deref(),
            Some("http://[2001:db8::1]/a")
        );
        assert_eq!(normalized_http_uri("https://[::1]:8443").as_deref(), Some("https://[::1]:8443/"));
    }
}
