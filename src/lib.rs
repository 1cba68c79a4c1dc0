//! nhi-guard: a proxy-wasm HTTP filter that verifies, limits and observes
//! non-human identities (service accounts, CI jobs, partner systems) at the gateway.
//!
//! The crate is two layers:
//! - a pure core — [`config`], [`token`], [`jwks`], [`alg`], [`verify`], [`refresh`],
//!   [`reason`] — with no `proxy_wasm` import, unit-tested natively;
//! - thin proxy-wasm glue in `filter` (wasm32 only) that reads the host, calls the
//!   core, and acts on its verdict.

pub mod alg;
pub mod attribution;
pub mod b64;
pub mod capabilities;
pub mod claims;
pub mod config;
pub mod decision_log;
pub mod discovery;
pub mod es256;
pub mod fast_hash;
pub mod flood_guard;
pub mod header_map;
pub mod jwks;
pub mod keyshare;
pub mod metrics;
pub mod mtls;
pub mod profile;
pub mod quota;
pub mod reason;
pub mod refresh;
pub mod route;
pub mod rsa_verify;
pub mod store;
pub mod token;
pub mod token_cache;
pub mod typ;
pub mod verify;

// The native `nhi-guard` command's core (config checker, JSON Schema); not in the .wasm.
#[cfg(feature = "cli")]
pub mod check;
#[cfg(feature = "cli")]
pub mod schema;

#[cfg(test)]
mod attack_suite;
#[cfg(test)]
mod testkit;

#[cfg(target_arch = "wasm32")]
mod filter;
