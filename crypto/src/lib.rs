//! Signature verification: the JWS algorithms nhi-guard accepts ([`alg`]) and the
//! verifiers written for wasm (RSA with precomputed Montgomery constants,
//! [`rsa_verify`]; P-256 and P-384 with precomputed tables, [`ecdsa`]). Ed25519
//! comes from RustCrypto. A shell may install a faster verifier for the process
//! ([`backend`]).

pub mod alg;
pub mod backend;
pub mod ecdsa;
pub mod roca;
pub mod rsa_verify;

#[cfg(any(test, feature = "test-keys"))]
pub mod test_keys;

/// Equality whose time depends on the lengths only, not on where the inputs
/// differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keeps the optimizer from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}
