//! Another signature verifier for the process, installed once by a shell that has a
//! faster one than nhi-guard's own (the native shell: `aws-lc-rs`'s, natively compiled
//! assembly, where the wasm's verifiers are written for V8). The wasm installs none.
//!
//! A backend only answers for the algorithm and key [`Alg::verify`] already matched
//! (the key fits the algorithm, chosen from the issuer's allow-list and the key's
//! type, never from the token alone), and may decline a key it cannot take (`None`):
//! nhi-guard's own verifier then decides. Every backend is held to the same
//! Wycheproof vectors and to nhi-guard's verdicts on them.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, OnceLock};

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

/// What the installed backend made of one key on its first check (its library's own
/// parsed form of it: `aws-lc-rs`'s `ParsedPublicKey` keeps RSA's Montgomery constants,
/// which a key parsed on every check computes every time), kept with the key from
/// [`PublicKey::prepared`] and shared by its clones, so it lives exactly as long as the
/// key does in the key set. Stays empty where no backend is installed (the wasm).
#[derive(Clone, Default)]
pub struct Prepared(Arc<OnceLock<Box<dyn Any + Send + Sync>>>);

impl Prepared {
    /// The backend's form of the key, made by `make` on the first call; `None` only if
    /// the slot already holds another type (one backend per process makes that a bug).
    pub fn get_or_make<T: Any + Send + Sync>(&self, make: impl FnOnce() -> T) -> Option<&T> {
        self.0.get_or_init(|| Box::new(make())).downcast_ref()
    }
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.get().is_some() { "Prepared(made)" } else { "Prepared(empty)" })
    }
}
