//! End-to-end harness for nhi-guard: run-time test keys and their JWKS, a token minter
//! (honest and hostile), tiny std-only HTTP servers standing in for the JWKS endpoint
//! and the protected upstream, and a real Envoy running the shipped config with the
//! built filter.
//!
//! Every server is a handful of threads on `std::net`, except the rate limit service
//! double (`rls`): gRPC over `h2`, which runs on a tokio runtime of its own thread.

pub mod bench;
pub mod demo;
pub mod dpop_client;
pub mod emulator;
pub mod envoy;
pub mod envoy_config;
pub mod h2c;
pub mod http;
pub mod httpsig;
pub mod istio;
pub mod jwks_server;
pub mod keys;
pub mod kube_api;
pub mod mint;
pub mod native;
pub mod oci;
pub mod process;
pub mod prometheus;
pub mod rls;
pub mod roca;
pub mod scenarios;
pub mod stack;
pub mod tls;
pub mod upstream;

/// Lower-case hex SHA-256 of `bytes` (OCI digests, certificate thumbprints, file and
/// module identities).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest as _, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
