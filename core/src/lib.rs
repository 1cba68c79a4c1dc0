//! nhi-guard's core: everything the filter decides, with no proxy in sight.
//!
//! This crate never depends on `proxy-wasm` (Cargo enforces it: the filter crate,
//! `nhi-guard`, is the only one that does). A proxy shell reads its host, calls in
//! here, and applies the verdict; tests run all of it natively.

pub mod b64;
pub mod claims;
pub mod config;
pub mod crypto;
pub mod hash;
pub mod host;
pub mod keys;
pub mod mtls;
pub mod observe;
pub mod policy;
pub mod profile;
pub mod quota;
pub mod reason;
pub mod spiffe_id;
pub mod token;
pub mod verify;

#[cfg(test)]
mod attack_suite;
#[cfg(test)]
mod testkit;
