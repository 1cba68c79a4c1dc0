//! Issuer keys: JWKS documents turned into bounded key sets ([`jwks`]), their
//! refresh schedule ([`refresh`]), OIDC discovery of where they live
//! ([`discovery`]), and how the workers of one proxy share them ([`keyshare`]).

pub mod discovery;
pub mod fetch;
pub mod jwks;
pub mod keyshare;
pub mod refresh;
pub mod source;

use jwks::KeySet;

/// Where the verifier gets each issuer's current keys.
pub trait KeyLookup {
    /// The issuer's keys, or `None` while none have been loaded (or they expired).
    fn key_set(&self, issuer: usize) -> Option<&KeySet>;
}

impl KeyLookup for [Option<KeySet>] {
    fn key_set(&self, issuer: usize) -> Option<&KeySet> {
        self.get(issuer).and_then(Option::as_ref)
    }
}
