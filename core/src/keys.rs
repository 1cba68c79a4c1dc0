//! Issuer keys: JWKS documents turned into bounded key sets ([`jwks`]), their
//! refresh schedule ([`refresh`]), OIDC discovery of where they live
//! ([`discovery`]), and how the workers of one proxy share them ([`keyshare`]).

pub mod discovery;
pub mod jwks;
pub mod keyshare;
pub mod refresh;
