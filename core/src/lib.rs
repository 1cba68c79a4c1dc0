//! nhi-guard's core: everything the filter decides, with no proxy in sight.
//!
//! This crate never depends on `proxy-wasm` (Cargo enforces it: the filter crate,
//! `nhi-guard`, is the only one that does, and `make lint` checks the dependency
//! tree). A proxy shell reads its host, calls in here, and applies the verdict;
//! tests run all of it natively.
//!
//! The modules below are listed in **layer order**: each may use only the modules
//! listed before it (`tests/layers.rs` enforces it), so there are no import cycles.
//!
//! | module | what it is |
//! |---|---|
//! | [`error`] | the one configuration error, and the header-name rule |
//! | [`json`] | reading the configuration's JSON into its `Raw*` types, errors by JSON path |
//! | [`b64`] | the base64url engines (strict for tokens, lenient for JWKS members) |
//! | [`hash`] | stable hashes for shared-data names and buckets; a seeded fast hasher |
//! | [`uri`] | request targets as route matching and DPoP `htu` read them |
//! | [`reason`] | reason codes, rejections and the local replies they become |
//! | [`host`] | what a proxy offers: header maps as bytes, the shared store, capabilities |
//! | [`crypto`] | JWS algorithms and the signature verifiers: the `nhi-guard-crypto` crate, re-exported (a crate of its own so that the release build compiles it for speed and the rest for size) |
//! | [`token`] | where the token is, the compact JWS, `typ`, whose credential it is |
//! | [`claims`] | claim paths, matchers and claim headers |
//! | [`spiffe_id`] | SPIFFE ID syntax |
//! | [`keys`] | JWKS import, refresh schedule, discovery, keys shared across workers |
//! | [`profile`] | token profiles: generic, Kubernetes, SPIFFE, GitHub Actions |
//! | [`dpop`] | DPoP (RFC 9449): proofs, JWK thumbprints, the replay table, server nonces |
//! | [`verify`] | issuers and verification; the verified-token cache; the flood guard |
//! | [`mtls`] | client-certificate identities and RFC 8705 binding |
//! | [`partners`] | partner credentials: RFC 9421 signatures, API keys, their secrets and nonces |
//! | [`policy`] | route classes, audiences, allow and deny rules, the verdict |
//! | [`quota`] | per-identity quotas (GCRA) in a bounded shared table |
//! | [`behaviour`] | each identity's learned baseline, and anomalies against it |
//! | [`observe`] | metric names and bounds, the decision record and log line |
//! | [`config`] | the plugin configuration: parse, then compile into all of the above |
//! | [`pipeline`] | one request, stage by stage, against any [`host::Host`] |
//! | [`native`] | the pipeline run natively: workers, a shared store, keys fetched |

pub mod error;
pub mod json;
pub mod b64;
pub mod hash;
pub mod uri;
pub mod reason;
pub mod host;
pub use nhi_guard_crypto as crypto;
pub mod token;
pub mod claims;
pub mod spiffe_id;
pub mod keys;
pub mod profile;
pub mod dpop;
pub mod verify;
pub mod mtls;
pub mod partners;
pub mod policy;
pub mod quota;
pub mod behaviour;
pub mod observe;
pub mod config;
pub mod pipeline;
pub mod native;

#[cfg(test)]
mod attack_suite;
#[cfg(test)]
mod testkit;
