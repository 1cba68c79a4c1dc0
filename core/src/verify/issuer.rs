//! One trusted token issuer, as verification sees it: what its tokens must carry,
//! where its keys are, its profile, and what it demands of the client certificate.

use crate::claims::headers::ClaimHeader;
use crate::crypto::alg::Alg;
use crate::keys::jwks::KeyUse;
use crate::keys::source::JwksSource;
use crate::profile::Profile;
use crate::token::typ::TypRule;

/// One trusted token issuer.
#[derive(Debug, Clone)]
pub struct Issuer {
    /// Short local name: forwarded upstream, used in logs and metrics.
    pub name: String,
    /// The exact `iss` value tokens must carry.
    pub issuer: String,
    /// At least one; a token's `aud` must contain one of them.
    pub audiences: Vec<String>,
    pub jwks: JwksSource,
    /// At least one; never a symmetric or `none` algorithm.
    pub algorithms: Vec<Alg>,
    pub clock_skew_seconds: u64,
    /// What the issuer's tokens must look like, what it admits, the identity forwarded.
    pub profile: Profile,
    /// The JOSE `typ` check: configured, else the profile's default; `None`: no check.
    pub typ: Option<TypRule>,
    /// Verified claims forwarded as request headers.
    pub claims_to_headers: Vec<ClaimHeader>,
    /// What this issuer's tokens demand of the client certificate (RFC 8705 binding).
    pub certificate: CertificatePolicy,
    /// How this issuer's tokens meet DPoP (RFC 9449).
    pub dpop: crate::dpop::DpopSettings,
}

/// The algorithms an issuer gets when its config does not list any.
pub const DEFAULT_ALGORITHMS: [Alg; 3] = [Alg::Rs256, Alg::Es256, Alg::EdDsa];

impl Issuer {
    /// How long getting keys may take, for issuers whose keys are fetched: the
    /// fetch timeout, twice with discovery (the document, then the JWKS).
    pub fn fetch_timeout_ms(&self) -> Option<u64> {
        match &self.jwks {
            JwksSource::Remote(remote) if remote.discovery.is_some() => {
                Some(remote.timeout_ms.saturating_mul(2))
            }
            JwksSource::Remote(remote) => Some(remote.timeout_ms),
            JwksSource::Inline(_) => None,
        }
    }

    /// Which JWK `use` this issuer's keys may carry (its profile decides).
    pub fn key_use(&self) -> KeyUse {
        self.profile.key_use()
    }
}

/// What an issuer's tokens demand of the client certificate; all off by default.
/// Any of them needs the `mtls` block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CertificatePolicy {
    /// A trusted client certificate must come with every token of this issuer.
    pub require_client_certificate: bool,
    /// Every token must be certificate-bound (`cnf.x5t#S256`, RFC 8705).
    pub require_bound_tokens: bool,
    /// The token's `sub` must equal the certificate identity.
    pub bind_subject_to_certificate: bool,
}

impl CertificatePolicy {
    pub fn any(&self) -> bool {
        self.require_client_certificate || self.require_bound_tokens || self.bind_subject_to_certificate
    }

    /// The first flag that is set, as its field name.
    pub fn first_set(&self) -> Option<&'static str> {
        [
            (self.require_client_certificate, "require_client_certificate"),
            (self.require_bound_tokens, "require_bound_tokens"),
            (self.bind_subject_to_certificate, "bind_subject_to_certificate"),
        ]
        .into_iter()
        .find_map(|(set, name)| set.then_some(name))
    }
}

impl crate::keys::fetch::FetchedIssuer for Issuer {
    fn name(&self) -> &str {
        &self.name
    }

    fn iss(&self) -> &str {
        &self.issuer
    }

    fn jwks(&self) -> &JwksSource {
        &self.jwks
    }

    fn key_use(&self) -> KeyUse {
        Issuer::key_use(self)
    }

    fn fetch_timeout_ms(&self) -> Option<u64> {
        Issuer::fetch_timeout_ms(self)
    }
}
