//! Signature verification: the JWS algorithms nhi-guard accepts ([`alg`]) and the
//! verifiers written for wasm (RSA with precomputed Montgomery constants,
//! [`rsa_verify`]; P-256 with precomputed tables, [`es256`]). P-384 and Ed25519
//! come from RustCrypto.

pub mod alg;
pub mod es256;
pub mod roca;
pub mod rsa_verify;
