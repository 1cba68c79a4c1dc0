//! The `mtls` block and the per-issuer certificate flags: raw JSON shapes, then
//! validation. Every error names its field as a JSON path, like the rest of the
//! plugin configuration.

use std::collections::HashSet;

use crate::json::{self, FromJson};
use serde::Deserialize;

use crate::error::{header_name, ConfigError};

use crate::spiffe_id::{self as spiffe, SpiffeError};

/// Default header carrying the client certificate's identity upstream.
pub const DEFAULT_IDENTITY_HEADER: &str = "x-nhi-cert-identity";
/// Default issuer name of certificate-only identities (routes' `allow[].issuer`,
/// the forwarded issuer header, quotas, logs and metrics).
pub const DEFAULT_ISSUER_NAME: &str = "mtls";
pub const MAX_TRUST_DOMAINS: usize = 64;

/// The `mtls` block as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawMtls {
    /// SPIFFE trust domains (`prod.example`, no `spiffe://`) whose workloads are
    /// trusted. Required with `identity: uri_san`.
    #[serde(default)]
    pub trust_domains: Option<Vec<String>>,
    /// Where the certificate identity comes from: `uri_san` (default: the SPIFFE ID
    /// in the first URI SAN) or `subject` (the subject DN, for PKIs without SPIFFE).
    #[serde(default)]
    pub identity: Option<String>,
    /// Request header carrying the certificate identity upstream.
    #[serde(default)]
    pub identity_header: Option<String>,
    /// Issuer name of certificate-only identities.
    #[serde(default)]
    pub issuer_name: Option<String>,
}

impl FromJson for RawMtls {
    fn from_json(value: serde_json::Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawMtls {
            trust_domains: o.optional("trust_domains"),
            identity: o.optional("identity"),
            identity_header: o.optional("identity_header"),
            issuer_name: o.optional("issuer_name"),
        })
    }
}

/// Where a certificate's identity is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentitySource {
    /// The first URI SAN (Envoy's `connection.uri_san_peer_certificate`), which
    /// must be a SPIFFE ID in one of the trust domains.
    UriSan,
    /// The subject DN (Envoy's `connection.subject_peer_certificate`): any
    /// certificate Envoy's validation context accepted is trusted.
    Subject,
}

/// The validated `mtls` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtlsConfig {
    /// Lower-case, unique; non-empty with [`IdentitySource::UriSan`], empty otherwise.
    pub trust_domains: Vec<String>,
    pub identity: IdentitySource,
    pub identity_header: String,
    pub issuer_name: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.into(), reason: reason.into() }
}

/// Validates the `mtls` block on its own; [`check`] relates it to the rest.
pub fn compile(raw: RawMtls, at: &str) -> Result<MtlsConfig, ConfigError> {
    let field = |f: &str| format!("{at}.{f}");
    let identity = match raw.identity.as_deref() {
        None | Some("uri_san") => IdentitySource::UriSan,
        Some("subject") => IdentitySource::Subject,
        Some(other) => {
            return Err(invalid(field("identity"), format!("{other:?} is not one of uri_san, subject")))
        }
    };
    let trust_domains = match (identity, raw.trust_domains) {
        (IdentitySource::UriSan, None) => {
            return Err(invalid(
                field("trust_domains"),
                "is required with identity \"uri_san\": list the SPIFFE trust domains to trust",
            ))
        }
        (IdentitySource::UriSan, Some(list)) => trust_domains(&field("trust_domains"), list)?,
        (IdentitySource::Subject, None) => Vec::new(),
        (IdentitySource::Subject, Some(_)) => {
            return Err(invalid(
                field("trust_domains"),
                "applies to identity \"uri_san\" only: with \"subject\", Envoy's validation context decides which certificates are trusted",
            ))
        }
    };
    let identity_header = header_name(
        &field("identity_header"),
        raw.identity_header.as_deref().unwrap_or(DEFAULT_IDENTITY_HEADER),
    )?;
    let issuer_name = raw.issuer_name.unwrap_or_else(|| DEFAULT_ISSUER_NAME.to_owned());
    crate::error::label_name(field("issuer_name"), &issuer_name)?;
    Ok(MtlsConfig { trust_domains, identity, identity_header, issuer_name })
}

fn trust_domains(at: &str, list: Vec<String>) -> Result<Vec<String>, ConfigError> {
    if list.is_empty() {
        return Err(invalid(at, "must list at least one trust domain"));
    }
    if list.len() > MAX_TRUST_DOMAINS {
        return Err(invalid(at, format!("lists more than {MAX_TRUST_DOMAINS} trust domains")));
    }
    let mut seen = HashSet::new();
    for (i, name) in list.iter().enumerate() {
        let at = format!("{at}[{i}]");
        if let Err(err) = spiffe::check_trust_domain(name) {
            let why = if name.starts_with("spiffe://") {
                "is a SPIFFE ID: write the trust domain alone (\"prod.example\", not \"spiffe://prod.example\")"
                    .to_owned()
            } else if err == SpiffeError::TooLong {
                "is longer than 255 bytes".to_owned()
            } else {
                format!("{name:?} is not a trust domain name: 1-255 characters of a-z, 0-9, '.', '-', '_'")
            };
            return Err(invalid(at, why));
        }
        if !seen.insert(name.as_str()) {
            return Err(invalid(at, format!("{name:?} is listed twice")));
        }
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn raw(v: Value) -> RawMtls {
        RawMtls::from_json(v, "mtls").unwrap()
    }

    fn field_of(v: Value) -> String {
        match compile(raw(v), "mtls") {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let m = compile(raw(json!({"trust_domains": ["prod.example"]})), "mtls").unwrap();
        assert_eq!(
            m,
            MtlsConfig {
                trust_domains: vec!["prod.example".into()],
                identity: IdentitySource::UriSan,
                identity_header: DEFAULT_IDENTITY_HEADER.into(),
                issuer_name: DEFAULT_ISSUER_NAME.into(),
            }
        );
        let s = compile(raw(json!({"identity": "subject", "issuer_name": "pki"})), "mtls").unwrap();
        assert_eq!(
            (s.identity, s.trust_domains.len(), s.issuer_name.as_str()),
            (IdentitySource::Subject, 0, "pki")
        );
    }

    #[test]
    fn invalid_fields_are_named() {
        for (v, field) in [
            (json!({}), "mtls.trust_domains"),
            (json!({"trust_domains": []}), "mtls.trust_domains"),
            (json!({"trust_domains": ["a", "spiffe://b"]}), "mtls.trust_domains[1]"),
            (json!({"trust_domains": ["Prod.example"]}), "mtls.trust_domains[0]"),
            (json!({"trust_domains": ["prod.example:443"]}), "mtls.trust_domains[0]"),
            (json!({"trust_domains": ["a", "a"]}), "mtls.trust_domains[1]"),
            (json!({"trust_domains": ["a"], "identity": "dns_san"}), "mtls.identity"),
            (json!({"trust_domains": ["a"], "identity": "subject"}), "mtls.trust_domains"),
            (json!({"trust_domains": ["a"], "identity_header": "X-Cert"}), "mtls.identity_header"),
            (json!({"trust_domains": ["a"], "identity_header": "host"}), "mtls.identity_header"),
            (json!({"trust_domains": ["a"], "issuer_name": "MTLS"}), "mtls.issuer_name"),
            (json!({"trust_domains": ["a"], "issuer_name": ""}), "mtls.issuer_name"),
        ] {
            assert_eq!(field_of(v.clone()), field, "{v}");
        }
        let too_many: Vec<String> = (0..=MAX_TRUST_DOMAINS).map(|i| format!("td{i}")).collect();
        assert_eq!(field_of(json!({ "trust_domains": too_many })), "mtls.trust_domains");
    }

    #[test]
    fn unknown_members_are_refused() {
        let err = RawMtls::from_json(json!({"trust_domain": ["a"]}), "mtls").unwrap_err();
        assert_eq!(err.field(), "mtls.trust_domain");
        assert!(err.reason().starts_with("is not a known field"), "{err}");
    }

    #[test]
    fn a_spiffe_id_in_trust_domains_gets_a_hint() {
        let err = compile(raw(json!({"trust_domains": ["spiffe://prod.example"]})), "mtls").unwrap_err();
        assert!(err.to_string().contains("write the trust domain alone"), "{err}");
    }
}
