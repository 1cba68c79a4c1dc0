//! Where an issuer's keys come from: a JWKS fetched from a cluster (possibly
//! located through OIDC discovery), or one embedded in the configuration.

use super::discovery::Discovery;
use super::jwks::KeySet;
use super::refresh::Schedule;

/// Where an issuer's keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    Remote(RemoteJwks),
    /// A JWKS embedded in the configuration (no fetching, no refresh).
    Inline(KeySet),
}

/// A JWKS fetched with `dispatch_http_call` from an Envoy cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJwks {
    pub cluster: String,
    /// The `:authority` (Host) of the fetch.
    pub authority: String,
    pub path: String,
    pub refresh_seconds: u64,
    pub timeout_ms: u64,
    /// Earliest refetch after a success when a token names an unknown `kid`.
    pub min_refetch_seconds: u64,
    /// How long the last good keys keep serving while refreshes fail; after
    /// that the issuer's requests get 503 `keys_unavailable`.
    pub max_stale_seconds: u64,
    /// OpenID Connect discovery: `cluster`, `authority` and `path` then locate the
    /// discovery document, and the JWKS location is read from it.
    pub discovery: Option<Discovery>,
}

impl RemoteJwks {
    pub fn schedule(&self) -> Schedule {
        Schedule {
            interval_ms: self.refresh_seconds.saturating_mul(1000),
            min_refetch_ms: self.min_refetch_seconds.saturating_mul(1000),
            max_stale_ms: self.max_stale_seconds.saturating_mul(1000),
        }
    }

    /// Identifies where the keys come from (for shared-data key names).
    pub fn source_id(&self) -> String {
        let via = if self.discovery.is_some() { "discovery|" } else { "" };
        format!("{via}{}|{}|{}", self.cluster, self.authority, self.path)
    }
}
