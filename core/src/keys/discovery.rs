//! OpenID Connect discovery (OpenID Connect Discovery 1.0 §4): an issuer's keys
//! located through its `/.well-known/openid-configuration` document instead of a
//! configured JWKS path.
//!
//! The document is trusted only as far as the configuration allows: its `issuer`
//! must equal the configured issuer exactly (§4.3), and its `jwks_uri` must be on
//! the discovery endpoint's own host (the configured `authority`) unless that host
//! is listed in `allowed_jwks_hosts`, with the Envoy cluster to fetch it through.
//! A document that points keys at another host could otherwise make the gateway
//! trust keys from anywhere the cluster can reach.
//!
//! The transport (TLS, certificates) is the Envoy cluster's: nhi-guard never opens a
//! connection by URL. `jwks_uri`'s scheme may be `https` or `http`; its host and port
//! are only compared with what is allowed and sent as `:authority`.
//!
//! The location found is shared between workers ([`Located`]) and refreshed every
//! [`REDISCOVER_EVERY_REFRESHES`] JWKS refresh intervals, and after any failed JWKS
//! fetch (a moved `jwks_uri` answers 404).

use std::collections::BTreeMap;
use std::fmt;

use crate::json::{self, FromJson};
use serde::Deserialize;

use crate::error::ConfigError;

/// The well-known path of the discovery document.
pub const DEFAULT_PATH: &str = "/.well-known/openid-configuration";
/// Largest discovery document accepted. Real ones are a few KiB.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;
/// Longest `jwks_uri` accepted.
pub const MAX_URI_BYTES: usize = 2048;
/// Most entries in `allowed_jwks_hosts`.
pub const MAX_JWKS_HOSTS: usize = 8;
/// The discovered JWKS location is looked up again after this many refresh intervals.
pub const REDISCOVER_EVERY_REFRESHES: u64 = 10;

/// `issuers[].discovery`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawDiscovery {
    pub cluster: String,
    pub authority: String,
    #[serde(default)]
    pub path: Option<String>,
    /// `jwks_uri` host (`host` or `host:port`) → the Envoy cluster that reaches it.
    #[serde(default)]
    pub allowed_jwks_hosts: Option<BTreeMap<String, String>>,
}

impl FromJson for RawDiscovery {
    fn from_json(value: serde_json::Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawDiscovery {
            cluster: o.required("cluster"),
            authority: o.required("authority"),
            path: o.optional("path"),
            allowed_jwks_hosts: o.optional("allowed_jwks_hosts"),
        })
    }
}

/// Where the discovery document is, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryEndpoint {
    pub cluster: String,
    pub authority: String,
    pub path: String,
}

/// The validated discovery policy of one issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// Normalized `host[:port]` (lower case, no port 443/80) → cluster.
    pub allowed_jwks_hosts: Vec<(String, String)>,
}

/// Where to fetch an issuer's JWKS, as its discovery document says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksLocation {
    pub cluster: String,
    /// Sent as `:authority`.
    pub authority: String,
    /// Path and query of `jwks_uri`.
    pub path: String,
}

/// Why a discovery document was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryError {
    NotJson(String),
    NoIssuer,
    IssuerMismatch,
    NoJwksUri,
    BadJwksUri(&'static str),
    HostNotAllowed(String),
}

impl fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiscoveryError::NotJson(e) => write!(f, "discovery document is not a JSON object: {e}"),
            DiscoveryError::NoIssuer => f.write_str("discovery document has no issuer"),
            DiscoveryError::IssuerMismatch => {
                f.write_str("discovery document's issuer is not the configured issuer")
            }
            DiscoveryError::NoJwksUri => f.write_str("discovery document has no jwks_uri"),
            DiscoveryError::BadJwksUri(why) => write!(f, "discovery document's jwks_uri {why}"),
            DiscoveryError::HostNotAllowed(host) => write!(
                f,
                "jwks_uri is on host {host:?}, not the discovery authority; add it to allowed_jwks_hosts to trust it"
            ),
        }
    }
}

/// Validates `issuers[].discovery`; field errors are `at("discovery.<field>")`.
pub fn compile(
    raw: RawDiscovery,
    at: &dyn Fn(&str) -> String,
) -> Result<(DiscoveryEndpoint, Discovery), ConfigError> {
    let d = |field: &str| at(&format!("discovery.{field}"));
    let invalid = |field: String, reason: &str| ConfigError::Invalid { field, reason: reason.to_owned() };
    if !valid_cluster(&raw.cluster) {
        return Err(invalid(d("cluster"), "must be an Envoy cluster name"));
    }
    if !valid_authority(&raw.authority) {
        return Err(invalid(d("authority"), "must be a host[:port]"));
    }
    let path = raw.path.unwrap_or_else(|| DEFAULT_PATH.to_owned());
    if !valid_path(&path) {
        return Err(invalid(d("path"), "must start with '/' and contain no spaces"));
    }
    let hosts = raw.allowed_jwks_hosts.unwrap_or_default();
    if hosts.len() > MAX_JWKS_HOSTS {
        return Err(invalid(d("allowed_jwks_hosts"), "lists more than 8 hosts"));
    }
    let mut allowed_jwks_hosts = Vec::with_capacity(hosts.len());
    for (host, cluster) in hosts {
        let field = format!("{}.{host}", d("allowed_jwks_hosts"));
        if !valid_authority(&host) {
            return Err(invalid(field, "must be keyed by a host[:port]"));
        }
        if !valid_cluster(&cluster) {
            return Err(invalid(field, "must name an Envoy cluster"));
        }
        allowed_jwks_hosts.push((normalize_authority(&host, None), cluster));
    }
    Ok((
        DiscoveryEndpoint { cluster: raw.cluster, authority: raw.authority, path },
        Discovery { allowed_jwks_hosts },
    ))
}

fn valid_cluster(name: &str) -> bool {
    !name.is_empty() && name.len() <= 256 && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn valid_authority(authority: &str) -> bool {
    !authority.is_empty()
        && authority.len() <= 255
        && !authority.chars().any(|c| c.is_whitespace() || c.is_control() || "/?#@".contains(c))
}

fn valid_path(path: &str) -> bool {
    path.starts_with('/') && !path.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Lower case; the scheme's default port (or, without a scheme, 443 and 80) dropped.
fn normalize_authority(authority: &str, scheme: Option<&str>) -> String {
    let lower = authority.to_ascii_lowercase();
    let default_ports: &[&str] = match scheme {
        Some("https") => &[":443"],
        Some("http") => &[":80"],
        _ => &[":443", ":80"],
    };
    for port in default_ports {
        if let Some(host) = lower.strip_suffix(port) {
            if !host.is_empty() && (!host.contains(':') || host.ends_with(']')) {
                return host.to_owned();
            }
        }
    }
    lower
}

/// An absolute `http(s)` URL split without a URL crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url<'a> {
    pub scheme: &'static str,
    /// `host` or `host:port` as written (IPv6 literals in brackets).
    pub authority: &'a str,
    /// Path and query; at least `/`.
    pub path: &'a str,
}

/// Parses `jwks_uri`: `https://` or `http://`, a host with an optional port, no
/// user info or fragment, and a path without spaces or control characters.
pub fn parse_url(uri: &str) -> Result<Url<'_>, &'static str> {
    if uri.len() > MAX_URI_BYTES {
        return Err("is longer than 2048 bytes");
    }
    let (scheme, rest) = if let Some(rest) = strip_prefix_ignore_case(uri, "https://") {
        ("https", rest)
    } else if let Some(rest) = strip_prefix_ignore_case(uri, "http://") {
        ("http", rest)
    } else {
        return Err("is not an https:// or http:// URL");
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return Err("has no host, or has user info");
    }
    let host_ok = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((addr, port)) => {
                !addr.is_empty() && addr.chars().all(|c| c.is_ascii_hexdigit() || c == ':') && port_ok(port)
            }
            None => false,
        },
        None => {
            let (host, port) = match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            !host.is_empty()
                && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
                && port.is_none_or(|p| port_ok(&format!(":{p}")))
        }
    };
    if !host_ok {
        return Err("has an invalid host or port");
    }
    if path.contains('#') {
        return Err("has a fragment");
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("has spaces or control characters in its path");
    }
    if !path.is_empty() && !path.starts_with('/') {
        return Err("has no path");
    }
    Ok(Url { scheme, authority, path: if path.is_empty() { "/" } else { path } })
}

fn strip_prefix_ignore_case<'s>(s: &'s str, prefix: &str) -> Option<&'s str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| s.get(prefix.len()..)).flatten()
}

/// `""` (no port) or `:N` with 1 ≤ N ≤ 65535.
fn port_ok(port: &str) -> bool {
    match port.strip_prefix(':') {
        None => port.is_empty(),
        Some(digits) => {
            !digits.is_empty()
                && digits.len() <= 5
                && digits.bytes().all(|b| b.is_ascii_digit())
                && digits.parse::<u32>().is_ok_and(|n| (1..=65_535).contains(&n))
        }
    }
}

#[derive(Deserialize)]
struct Document {
    issuer: Option<serde_json::Value>,
    jwks_uri: Option<serde_json::Value>,
}

/// Reads a discovery document fetched from `endpoint` for `issuer`, and says where
/// the JWKS is.
pub fn locate(
    body: &[u8],
    issuer: &str,
    endpoint: &DiscoveryEndpoint,
    policy: &Discovery,
) -> Result<JwksLocation, DiscoveryError> {
    let doc: Document = serde_json::from_slice(body).map_err(|e| DiscoveryError::NotJson(e.to_string()))?;
    match doc.issuer {
        None | Some(serde_json::Value::Null) => return Err(DiscoveryError::NoIssuer),
        Some(serde_json::Value::String(found)) if found == issuer => {}
        Some(_) => return Err(DiscoveryError::IssuerMismatch),
    }
    let uri = match doc.jwks_uri {
        None | Some(serde_json::Value::Null) => return Err(DiscoveryError::NoJwksUri),
        Some(serde_json::Value::String(uri)) => uri,
        Some(_) => return Err(DiscoveryError::BadJwksUri("is not a string")),
    };
    let url = parse_url(&uri).map_err(DiscoveryError::BadJwksUri)?;
    let host = normalize_authority(url.authority, Some(url.scheme));
    let cluster = if host == normalize_authority(&endpoint.authority, Some(url.scheme)) {
        endpoint.cluster.clone()
    } else {
        match policy.allowed_jwks_hosts.iter().find(|(allowed, _)| *allowed == host) {
            Some((_, cluster)) => cluster.clone(),
            None => return Err(DiscoveryError::HostNotAllowed(host)),
        }
    };
    Ok(JwksLocation { cluster, authority: url.authority.to_owned(), path: url.path.to_owned() })
}

/// A JWKS location as one worker discovered it, shared with the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub discovered_at_ms: u64,
    pub location: JwksLocation,
}

const LOCATED_VERSION: u8 = 1;

impl Located {
    /// The shared-data key of an issuer's discovered location (`source` as in
    /// [`crate::keys::keyshare::SharedKeys::new`]).
    pub fn key(issuer_name: &str, source: &str) -> String {
        format!("nhi-guard/jwks-location/{issuer_name}/{:016x}", crate::hash::fnv1a64(source.as_bytes()))
    }

    /// Version, time, then cluster, authority and path separated by NUL (none of
    /// them may contain one: config and [`parse_url`] refuse control characters).
    pub fn encode(&self) -> Vec<u8> {
        let l = &self.location;
        let mut out = vec![LOCATED_VERSION];
        out.extend_from_slice(&self.discovered_at_ms.to_be_bytes());
        out.extend_from_slice(format!("{}\0{}\0{}", l.cluster, l.authority, l.path).as_bytes());
        out
    }

    /// `None` for anything else, including the empty value that means "forgotten".
    pub fn decode(bytes: &[u8]) -> Option<Located> {
        let (&version, rest) = bytes.split_first()?;
        if version != LOCATED_VERSION {
            return None;
        }
        let (at, text) = rest.split_first_chunk::<8>()?;
        let text = std::str::from_utf8(text).ok()?;
        let mut parts = text.splitn(3, '\0');
        let (cluster, authority, path) = (parts.next()?, parts.next()?, parts.next()?);
        if cluster.is_empty() || authority.is_empty() || !path.starts_with('/') {
            return None;
        }
        Some(Located {
            discovered_at_ms: u64::from_be_bytes(*at),
            location: JwksLocation {
                cluster: cluster.into(),
                authority: authority.into(),
                path: path.into(),
            },
        })
    }

    /// Whether the location may still be used at `now` without rediscovery.
    pub fn fresh(&self, now_ms: u64, refresh_interval_ms: u64) -> bool {
        now_ms.saturating_sub(self.discovered_at_ms)
            < refresh_interval_ms.saturating_mul(REDISCOVER_EVERY_REFRESHES)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    const ISS: &str = "https://idp.example";

    fn endpoint() -> DiscoveryEndpoint {
        DiscoveryEndpoint {
            cluster: "idp".into(),
            authority: "idp.example".into(),
            path: DEFAULT_PATH.into(),
        }
    }

    fn policy(hosts: &[(&str, &str)]) -> Discovery {
        Discovery { allowed_jwks_hosts: hosts.iter().map(|(h, c)| (h.to_string(), c.to_string())).collect() }
    }

    fn doc(issuer: &str, jwks_uri: &str) -> Vec<u8> {
        json!({"issuer": issuer, "jwks_uri": jwks_uri, "authorization_endpoint": "https://idp.example/auth",
               "id_token_signing_alg_values_supported": ["RS256"]})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_document_on_the_same_host_locates_the_keys() {
        let found =
            locate(&doc(ISS, "https://idp.example/oauth2/v1/keys?x=1"), ISS, &endpoint(), &policy(&[]));
        assert_eq!(
            found,
            Ok(JwksLocation {
                cluster: "idp".into(),
                authority: "idp.example".into(),
                path: "/oauth2/v1/keys?x=1".into()
            })
        );
        // Default port and case do not make another host.
        let found =
            locate(&doc(ISS, "HTTPS://IDP.example:443/keys"), ISS, &endpoint(), &policy(&[])).unwrap();
        assert_eq!(found.cluster, "idp");
        assert_eq!(found.path, "/keys");
    }

    #[test]
    fn issuer_must_match_exactly() {
        for other in ["https://idp.example/", "https://IDP.example", "https://evil.example"] {
            assert_eq!(
                locate(&doc(other, "https://idp.example/keys"), ISS, &endpoint(), &policy(&[])),
                Err(DiscoveryError::IssuerMismatch),
                "{other}"
            );
        }
        let no_issuer = json!({"jwks_uri": "https://idp.example/keys"}).to_string();
        assert_eq!(
            locate(no_issuer.as_bytes(), ISS, &endpoint(), &policy(&[])),
            Err(DiscoveryError::NoIssuer)
        );
        let no_uri = json!({"issuer": ISS}).to_string();
        assert_eq!(locate(no_uri.as_bytes(), ISS, &endpoint(), &policy(&[])), Err(DiscoveryError::NoJwksUri));
        assert!(matches!(locate(b"<html>", ISS, &endpoint(), &policy(&[])), Err(DiscoveryError::NotJson(_))));
        let number = json!({"issuer": ISS, "jwks_uri": 7}).to_string();
        assert!(matches!(
            locate(number.as_bytes(), ISS, &endpoint(), &policy(&[])),
            Err(DiscoveryError::BadJwksUri(_))
        ));
    }

    #[test]
    fn another_host_needs_to_be_allowed() {
        let elsewhere = doc(ISS, "https://keys.example/certs");
        assert_eq!(
            locate(&elsewhere, ISS, &endpoint(), &policy(&[])),
            Err(DiscoveryError::HostNotAllowed("keys.example".into()))
        );
        // Another port is another host.
        assert!(locate(&doc(ISS, "https://idp.example:8443/keys"), ISS, &endpoint(), &policy(&[])).is_err());
        let allowed = policy(&[("keys.example", "keys")]);
        assert_eq!(
            locate(&elsewhere, ISS, &endpoint(), &allowed),
            Ok(JwksLocation {
                cluster: "keys".into(),
                authority: "keys.example".into(),
                path: "/certs".into()
            })
        );
        // A look-alike is not the allowed host.
        assert!(
            locate(&doc(ISS, "https://keys.example.evil.example/certs"), ISS, &endpoint(), &allowed).is_err()
        );
    }

    #[test]
    fn url_parsing() {
        assert_eq!(
            parse_url("http://idp:8080/keys"),
            Ok(Url { scheme: "http", authority: "idp:8080", path: "/keys" })
        );
        assert_eq!(
            parse_url("https://idp.example"),
            Ok(Url { scheme: "https", authority: "idp.example", path: "/" })
        );
        assert_eq!(parse_url("https://[::1]:8443/k").map(|u| u.authority), Ok("[::1]:8443"));
        for bad in [
            "ftp://idp/keys",
            "idp.example/keys",
            "https://",
            "https://user@idp/keys",
            "https://idp:0/keys",
            "https://idp:65536/keys",
            "https://idp:x/keys",
            "https://idp/keys#frag",
            "https://idp/ke ys",
            "https://idp/keys\r\nx",
            "https://id p/keys",
            "https://[zz]/k",
            "https://[::1/k",
        ] {
            assert!(parse_url(bad).is_err(), "{bad:?}");
        }
        assert!(parse_url(&format!("https://idp/{}", "a".repeat(MAX_URI_BYTES))).is_err());
    }

    #[test]
    fn located_round_trips_and_ages() {
        let located = Located {
            discovered_at_ms: 1_000,
            location: JwksLocation {
                cluster: "idp".into(),
                authority: "idp:8080".into(),
                path: "/k?a=b".into(),
            },
        };
        assert_eq!(Located::decode(&located.encode()), Some(located.clone()));
        assert_eq!(Located::decode(b""), None);
        assert_eq!(Located::decode(&[2, 0, 0, 0, 0, 0, 0, 0, 0, b'a']), None);
        assert!(located.fresh(1_000 + 9 * 300_000, 300_000));
        assert!(!located.fresh(1_000 + 10 * 300_000, 300_000));
        assert_ne!(Located::key("a", "s"), Located::key("a", "t"));
    }

    fn issuer_config(issuer: Value) -> Result<crate::config::Config, ConfigError> {
        crate::config::Config::from_json(json!({ "issuers": [issuer] }).to_string().as_bytes())
    }

    #[test]
    fn an_issuer_with_discovery_fetches_the_document_first() {
        let cfg = issuer_config(json!({
            "name": "okta", "issuer": ISS, "audiences": ["api://nhi-gateway"],
            "discovery": {"cluster": "idp", "authority": "idp.example"},
            "jwks": {"refresh_seconds": 600, "timeout_ms": 1500}
        }))
        .unwrap();
        let issuer = &cfg.issuers[0];
        let crate::config::JwksSource::Remote(remote) = &issuer.jwks else { panic!("not remote") };
        assert_eq!((remote.cluster.as_str(), remote.path.as_str()), ("idp", DEFAULT_PATH));
        assert_eq!((remote.refresh_seconds, remote.timeout_ms), (600, 1500));
        assert_eq!(remote.discovery, Some(Discovery { allowed_jwks_hosts: vec![] }));
        assert!(remote.source_id().starts_with("discovery|"));
        assert_eq!(issuer.fetch_timeout_ms(), Some(3000), "two requests: document, then keys");
        // `jwks` may be left out entirely.
        assert!(issuer_config(json!({"name": "okta", "issuer": ISS, "audiences": ["a"],
                                     "discovery": {"cluster": "idp", "authority": "idp.example"}}))
        .is_ok());
    }

    #[test]
    fn discovery_and_a_jwks_location_are_exclusive() {
        let field = |issuer: Value| match issuer_config(issuer) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let base = json!({"name": "okta", "issuer": ISS, "audiences": ["a"],
                          "discovery": {"cluster": "idp", "authority": "idp.example"}});
        for jwks in [json!({"cluster": "x"}), json!({"path": "/k"}), json!({"inline": {"keys": []}})] {
            let mut issuer = base.clone();
            issuer["jwks"] = jwks;
            assert_eq!(field(issuer), "issuers[0].jwks");
        }
        let mut neither = base.clone();
        neither.as_object_mut().unwrap().remove("discovery");
        assert_eq!(field(neither), "issuers[0].jwks");
        let mut bad = base;
        bad["discovery"]["authority"] = json!("");
        assert_eq!(field(bad), "issuers[0].discovery.authority");
    }

    #[test]
    fn configuration() {
        let at = |f: &str| format!("issuers[0].{f}");
        let raw = |v: serde_json::Value| RawDiscovery::from_json(v, "discovery").unwrap();
        let (endpoint, policy) = compile(
            raw(json!({"cluster": "idp", "authority": "idp.example",
                       "allowed_jwks_hosts": {"Keys.Example:443": "keys"}})),
            &at,
        )
        .unwrap();
        assert_eq!(endpoint.path, DEFAULT_PATH);
        assert_eq!(policy.allowed_jwks_hosts, vec![("keys.example".to_owned(), "keys".to_owned())]);
        for (v, field) in [
            (json!({"cluster": "", "authority": "a"}), "issuers[0].discovery.cluster"),
            (json!({"cluster": "c", "authority": "a/b"}), "issuers[0].discovery.authority"),
            (json!({"cluster": "c", "authority": "a", "path": "x"}), "issuers[0].discovery.path"),
            (
                json!({"cluster": "c", "authority": "a", "allowed_jwks_hosts": {"h": ""}}),
                "issuers[0].discovery.allowed_jwks_hosts.h",
            ),
            (
                json!({"cluster": "c", "authority": "a", "allowed_jwks_hosts": {"https://h": "c"}}),
                "issuers[0].discovery.allowed_jwks_hosts.https://h",
            ),
        ] {
            match compile(raw(v.clone()), &at) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{v}"),
                other => panic!("{v}: {other:?}"),
            }
        }
    }
}
