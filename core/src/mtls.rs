//! Client certificates: SPIFFE X.509 identities and certificate-bound tokens
//! (RFC 8705 proof of possession).
//!
//! Pure: the glue reads Envoy's connection attributes through a closure
//! ([`client_certificate`]), and acts on what the functions here decide. Envoy
//! (or an Istio gateway with `tls.mode: MUTUAL`) terminates TLS and validates the
//! chain against its trusted CA; the filter never sees the certificate itself,
//! only these attributes of the downstream connection:
//!
//! | attribute | used for |
//! |---|---|
//! | `connection.sha256_peer_certificate_digest` | presence of a certificate, and its `x5t#S256` thumbprint (hex → base64url) |
//! | `connection.uri_san_peer_certificate` | the SPIFFE ID (`identity: uri_san`). Envoy exposes the **first** URI SAN only; an X509-SVID has exactly one |
//! | `connection.subject_peer_certificate` | the subject DN (`identity: subject`) |
//!
//! # Certificate identity
//!
//! With the `mtls` block, a presented certificate is *trusted* when its identity
//! is a valid workload SPIFFE ID ([`spiffe`]) in one of `trust_domains` (with
//! `identity: subject`: when it has a subject). On machine and `any` routes, and
//! for unmatched requests, a presented certificate that is not trusted is refused
//! (`403 untrusted_certificate`); human routes ignore certificates. A trusted
//! identity is forwarded upstream in `mtls.identity_header` (default
//! `x-nhi-cert-identity`) on requests forwarded as machines.
//!
//! A request with a trusted certificate and **no token** is a certificate-only
//! machine identity — identity and `sub` are the SPIFFE ID, the issuer is
//! `mtls.issuer_name` (default `mtls`), no claims — on routes with
//! `accept_certificate_identity: true`, where the route's deny lists and allow
//! rules apply as to any identity. Elsewhere it is no credential at all (so
//! `401 missing_token` on machine routes): enabling mTLS never turns a
//! certificate into a pass on routes written for tokens.
//!
//! # Token binding ([`check_binding`])
//!
//! After a token verified, in this order:
//!
//! 1. `cnf.x5t#S256` present: it must equal the base64url SHA-256 of the
//!    presented certificate (compared in constant time), else
//!    `401 certificate_mismatch` — also without the `mtls` block: a bound token is
//!    never accepted as a bearer token. A `cnf` that is not an object, or an
//!    `x5t#S256` that is not a string, is `401 malformed_token`. Other
//!    confirmation methods (`jkt`, …) are not checked here.
//! 2. The issuer's `require_bound_tokens` and no `x5t#S256`: `401 unbound_token`.
//! 3. The issuer's `require_client_certificate` or `bind_subject_to_certificate`
//!    and no certificate: `401 client_certificate_required`; a certificate that is
//!    not trusted: `403 untrusted_certificate`.
//! 4. `bind_subject_to_certificate`: `sub` must equal the certificate identity,
//!    else `401 subject_mismatch`.
//!
//! A route's `require_client_certificate` refuses a request without a trusted
//! certificate (`401 client_certificate_required`) whatever its token.

pub mod config;

use std::fmt;

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::reason::{Reason, Rejection};
use crate::verify::identity::IdentityInfo;
pub use crate::verify::issuer::CertificatePolicy;
use crate::verify::issuer::Issuer;
use crate::verify::Verified;

pub use crate::spiffe_id::{SpiffeError, SpiffeId};
pub use config::{
    compile, IdentitySource, MtlsConfig, RawMtls, DEFAULT_IDENTITY_HEADER, DEFAULT_ISSUER_NAME,
};

/// Envoy connection attributes (under `connection.`) the filter reads.
pub const DIGEST_ATTRIBUTE: &str = "sha256_peer_certificate_digest";
pub const URI_SAN_ATTRIBUTE: &str = "uri_san_peer_certificate";
pub const SUBJECT_ATTRIBUTE: &str = "subject_peer_certificate";

/// The RFC 8705 confirmation member: base64url SHA-256 of the DER certificate.
pub const X5T_S256: &str = "x5t#S256";

/// A client certificate presented on the downstream connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// `x5t#S256` of the certificate; `None` when the host's digest is not 32
    /// bytes of hex (then no bound token matches it).
    pub thumbprint: Option<String>,
    pub identity: CertIdentity,
}

/// What the filter makes of a certificate's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertIdentity {
    /// A SPIFFE ID in the trust domains (or, with `identity: subject`, the subject).
    Trusted(String),
    Untrusted(Untrusted),
    /// No `mtls` block: identities are not read; the thumbprint still checks
    /// certificate-bound tokens.
    Unchecked,
}

/// Why a presented certificate's identity is not trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Untrusted {
    /// No URI SAN (or subject, with `identity: subject`).
    Missing,
    /// The URI SAN is not a workload SPIFFE ID.
    NotSpiffe(SpiffeError),
    /// A SPIFFE ID of a trust domain not in `trust_domains`.
    ForeignTrustDomain,
}

impl fmt::Display for Untrusted {
    /// A fixed explanation: nothing from the certificate is echoed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Untrusted::Missing => f.write_str("the client certificate carries no identity"),
            Untrusted::NotSpiffe(err) => write!(f, "the client certificate's URI SAN {err}"),
            Untrusted::ForeignTrustDomain => {
                f.write_str("the client certificate's SPIFFE ID is outside the trusted trust domains")
            }
        }
    }
}

impl ClientCertificate {
    /// The identity, when trusted.
    pub fn trusted_identity(&self) -> Option<&str> {
        match &self.identity {
            CertIdentity::Trusted(id) => Some(id),
            _ => None,
        }
    }
}

/// Reads the downstream connection's client certificate: `attribute(name)` is the
/// value of Envoy's `connection.<name>`, `None` when absent. No certificate: `None`.
/// Identities are read only with an `mtls` block.
pub fn client_certificate(
    mtls: Option<&MtlsConfig>,
    mut attribute: impl FnMut(&str) -> Option<String>,
) -> Option<ClientCertificate> {
    let digest = attribute(DIGEST_ATTRIBUTE).filter(|d| !d.is_empty())?;
    let identity = match mtls {
        None => CertIdentity::Unchecked,
        Some(mtls) => {
            let name = match mtls.identity {
                IdentitySource::UriSan => URI_SAN_ATTRIBUTE,
                IdentitySource::Subject => SUBJECT_ATTRIBUTE,
            };
            judge(mtls, attribute(name))
        }
    };
    Some(ClientCertificate { thumbprint: thumbprint_from_hex(&digest), identity })
}

fn judge(mtls: &MtlsConfig, value: Option<String>) -> CertIdentity {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return CertIdentity::Untrusted(Untrusted::Missing);
    };
    match mtls.identity {
        IdentitySource::Subject => CertIdentity::Trusted(value),
        IdentitySource::UriSan => match SpiffeId::parse(&value) {
            Err(err) => CertIdentity::Untrusted(Untrusted::NotSpiffe(err)),
            Ok(id) if mtls.trust_domains.iter().any(|td| td == id.trust_domain()) => {
                CertIdentity::Trusted(value)
            }
            Ok(_) => CertIdentity::Untrusted(Untrusted::ForeignTrustDomain),
        },
    }
}

/// Envoy's hex SHA-256 digest as an RFC 8705 `x5t#S256` value (base64url, no
/// padding); `None` unless it is exactly 32 bytes of hex.
pub fn thumbprint_from_hex(hex: &str) -> Option<String> {
    let digits = hex.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
        let (high, low) = match pair {
            [h, l] => (nibble(*h)?, nibble(*l)?),
            _ => return None,
        };
        *byte = (high << 4) | low;
    }
    Some(crate::b64::URL_SAFE_STRICT.encode(bytes))
}

fn nibble(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

pub use crate::crypto::constant_time_eq;

/// The token's `cnf.x5t#S256`, if it is certificate-bound.
fn bound_thumbprint(claims: &Map<String, Value>) -> Result<Option<&str>, Rejection> {
    let Some(cnf) = claims.get("cnf") else {
        return Ok(None);
    };
    let Value::Object(cnf) = cnf else {
        return Err(Rejection::new(Reason::MalformedToken, "cnf is not a JSON object"));
    };
    match cnf.get(X5T_S256) {
        None => Ok(None),
        Some(Value::String(thumbprint)) => Ok(Some(thumbprint)),
        Some(_) => Err(Rejection::new(Reason::MalformedToken, "cnf.x5t#S256 is not a string")),
    }
}

/// The binding checks for a verified token (see the module docs for the order).
pub fn check_binding(
    policy: &CertificatePolicy,
    subject: &str,
    claims: &Map<String, Value>,
    cert: Option<&ClientCertificate>,
) -> Result<(), Rejection> {
    let mismatch = |detail: &str| Rejection::new(Reason::CertificateMismatch, detail);
    match bound_thumbprint(claims)? {
        Some(bound) => {
            let cert = cert.ok_or_else(|| {
                mismatch("the token is bound to a client certificate, and none was presented")
            })?;
            let presented = cert.thumbprint.as_deref().unwrap_or_default();
            if !constant_time_eq(bound.as_bytes(), presented.as_bytes()) {
                return Err(mismatch("the token is bound to another client certificate"));
            }
        }
        None if policy.require_bound_tokens => {
            return Err(Rejection::new(
                Reason::UnboundToken,
                "the issuer requires certificate-bound tokens (cnf.x5t#S256)",
            ));
        }
        None => {}
    }
    if !(policy.require_client_certificate || policy.bind_subject_to_certificate) {
        return Ok(());
    }
    let cert = cert.ok_or_else(|| {
        Rejection::new(Reason::ClientCertificateRequired, "the issuer requires a client certificate")
    })?;
    let identity = match &cert.identity {
        CertIdentity::Trusted(id) => Some(id.as_str()),
        CertIdentity::Untrusted(why) => {
            return Err(Rejection::new(Reason::UntrustedCertificate, why.to_string()));
        }
        CertIdentity::Unchecked => None,
    };
    if policy.bind_subject_to_certificate && identity != Some(subject) {
        return Err(Rejection::new(
            Reason::SubjectMismatch,
            "the token subject is not the client certificate's identity",
        ));
    }
    Ok(())
}

/// [`check_binding`] with the token's issuer's policy; the rejection names the issuer.
pub fn check_verified(
    issuers: &[Issuer],
    verified: &Verified,
    cert: Option<&ClientCertificate>,
) -> Result<(), Rejection> {
    let policy = issuers.get(verified.issuer).map(|i| i.certificate).unwrap_or_default();
    check_binding(&policy, &verified.subject, &verified.claims, cert)
        .map_err(|rejection| rejection.for_issuer(verified.issuer))
}

/// The certificate-only identity of a request without a token: the trusted
/// certificate identity as identity and subject, `mtls.issuer_name` as issuer,
/// `no_claims` as claims. `None` without an `mtls` block or a trusted certificate.
pub fn certificate_only<'a>(
    mtls: Option<&'a MtlsConfig>,
    cert: Option<&'a ClientCertificate>,
    no_claims: &'a Map<String, Value>,
) -> Option<IdentityInfo<'a>> {
    let mtls = mtls?;
    let identity = cert?.trusted_identity()?;
    Some(IdentityInfo {
        identity,
        issuer: &mtls.issuer_name,
        subject: identity,
        claims: no_claims,
        jkt: None,
        via: crate::verify::identity::Via::Certificate,
    })
}

/// The header and value to forward for a request forwarded as a machine: the
/// trusted certificate identity in `mtls.identity_header`.
pub fn forwarded_identity<'a>(
    mtls: Option<&'a MtlsConfig>,
    cert: Option<&'a ClientCertificate>,
) -> Option<(&'a str, &'a str)> {
    let mtls = mtls?;
    Some((&mtls.identity_header, cert?.trusted_identity()?))
}

#[cfg(test)]
mod tests;
