//! Another signature verifier for the process, installed once by a shell that has a
//! faster one than nhi-guard's own (the native shell: `ring`'s, natively compiled
//! assembly, where the wasm's verifiers are written for V8). The wasm installs none.
//!
//! A backend only answers for the algorithm and key [`Alg::verify`] already matched
//! (the key fits the algorithm, chosen from the issuer's allow-list and the key's
//! type, never from the token alone), and may decline a key it cannot take (`None`):
//! nhi-guard's own verifier then decides. Every backend is held to the same
//! Wycheproof vectors and to nhi-guard's verdicts on them.

use std::sync::OnceLock;

use crate::alg::{Alg, PublicKey};

/// A signature verifier.
pub trait Backend: Send + Sync {
    /// Whether `signature` over `signing_input` verifies under `key` with `alg` (a
    /// key that fits `alg`); `None` to leave it to nhi-guard's own verifier.
    fn verify(&self, alg: Alg, key: &PublicKey, signing_input: &[u8], signature: &[u8]) -> Option<bool>;
}

static INSTALLED: OnceLock<Box<dyn Backend>> = OnceLock::new();

/// Installs `backend` for the rest of the process. `Err` (giving it back) if one is
/// installed already.
pub fn install(backend: Box<dyn Backend>) -> Result<(), Box<dyn Backend>> {
    INSTALLED.set(backend)
}

/// The installed backend, if any.
pub fn installed() -> Option<&'static dyn Backend> {
    INSTALLED.get().map(|backend| backend.as_ref())
}
