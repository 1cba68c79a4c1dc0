//! Server-provided nonces (RFC 9449 §8, §9), rotated through shared data so that
//! every worker accepts the same ones.
//!
//! Time is cut into epochs of `nonce_rotation_seconds`. One shared-data key per
//! issuer (`nhi-guard.dpop.n.<issuer>`) holds the epoch, its nonce (16 random bytes,
//! base64url) and the previous epoch's. The first worker to see a new epoch draws
//! the new nonce and writes it with compare-and-swap; the others read it. A proof's
//! nonce is accepted if it is the current or the previous one, so a nonce handed out
//! just before a rotation still works, and one is accepted for at most two epochs:
//! two rotations later it fails. Each VM keeps a copy and reads shared data only
//! when its clock enters a new epoch.

use base64::Engine as _;

use crate::crypto::constant_time_eq;
use crate::host::store::{get_or_create, Store, StoreError};

/// Random bytes in a nonce.
pub const NONCE_BYTES: usize = 16;
const ENCODED_BYTES: usize = 8 + NONCE_BYTES + 8 + NONCE_BYTES;
const MAX_ATTEMPTS: usize = 8;

/// The nonces of one epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonceState {
    pub epoch: u64,
    current: [u8; NONCE_BYTES],
    /// The previous epoch's nonce, when this epoch directly follows it.
    previous: Option<[u8; NONCE_BYTES]>,
}

impl NonceState {
    /// The nonce to hand out (`DPoP-Nonce`).
    pub fn current(&self) -> String {
        crate::b64::URL_SAFE_STRICT.encode(self.current)
    }

    /// Whether a proof's `nonce` is the current or the previous one.
    pub fn accepts(&self, nonce: &str) -> bool {
        let Ok(bytes) = crate::b64::URL_SAFE_STRICT.decode(nonce) else { return false };
        constant_time_eq(&bytes, &self.current)
            || self.previous.is_some_and(|previous| constant_time_eq(&bytes, &previous))
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENCODED_BYTES);
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&self.current);
        match self.previous {
            Some(previous) => {
                out.extend_from_slice(&self.epoch.saturating_sub(1).to_le_bytes());
                out.extend_from_slice(&previous);
            }
            None => out.extend_from_slice(&[0; 8 + NONCE_BYTES]),
        }
        out
    }

    /// `None` for a value of another shape (a key is created with epoch 0: stale).
    fn decode(bytes: &[u8]) -> Option<NonceState> {
        let epoch = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
        let current: [u8; NONCE_BYTES] = bytes.get(8..8 + NONCE_BYTES)?.try_into().ok()?;
        let previous_epoch = u64::from_le_bytes(bytes.get(24..32)?.try_into().ok()?);
        let previous: [u8; NONCE_BYTES] = bytes.get(32..32 + NONCE_BYTES)?.try_into().ok()?;
        let previous = (epoch > 0 && previous_epoch == epoch - 1).then_some(previous);
        Some(NonceState { epoch, current, previous })
    }
}

/// Why no nonce could be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceError {
    Store(StoreError),
    /// The host gave no random bytes.
    Random,
}

/// One issuer's nonce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nonces {
    key: String,
    rotation_seconds: u64,
}

impl Nonces {
    pub fn new(issuer: &str, rotation_seconds: u64) -> Nonces {
        Nonces { key: format!("nhi-guard.dpop.n.{issuer}"), rotation_seconds: rotation_seconds.max(1) }
    }

    /// Creates the shared key (empty: stale) if it does not exist. Call when the VM starts.
    pub fn prepare(&self, store: &dyn Store) -> Result<(), StoreError> {
        // Not empty (the host reads an empty value as none): epoch 0, always stale.
        get_or_create(store, &self.key, &[0; ENCODED_BYTES]).map(|_| ())
    }

    /// The nonces for `now_secs`: `local` (this VM's copy) if it is of the current
    /// epoch, else the shared one, rotated first if it is stale. `random` fills a
    /// buffer with random bytes.
    pub fn current<S: Store + ?Sized>(
        &self,
        store: &S,
        local: &mut Option<NonceState>,
        now_secs: u64,
        mut random: impl FnMut(&mut [u8]) -> bool,
    ) -> Result<NonceState, NonceError> {
        let epoch = now_secs / self.rotation_seconds;
        if let Some(state) = local.as_ref().filter(|s| s.epoch >= epoch) {
            return Ok(state.clone());
        }
        for _ in 0..MAX_ATTEMPTS {
            let (value, cas) = store.get(&self.key).map_err(NonceError::Store)?;
            let (Some(value), Some(cas)) = (value, cas) else {
                return Err(NonceError::Store(StoreError::Unavailable));
            };
            let shared = NonceState::decode(&value);
            // Current, or written by a worker whose clock is a little ahead: use it.
            if let Some(state) = shared.as_ref().filter(|s| s.epoch >= epoch) {
                *local = Some(state.clone());
                return Ok(state.clone());
            }
            let mut current = [0; NONCE_BYTES];
            if !random(&mut current) {
                return Err(NonceError::Random);
            }
            let previous = shared.filter(|s| s.epoch + 1 == epoch).map(|s| s.current);
            let next = NonceState { epoch, current, previous };
            match store.set(&self.key, &next.encode(), Some(cas)) {
                Ok(()) => {
                    *local = Some(next.clone());
                    return Ok(next);
                }
                Err(StoreError::CasMismatch) => continue,
                Err(err) => return Err(NonceError::Store(err)),
            }
        }
        Err(NonceError::Store(StoreError::CasMismatch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::store::MemoryStore;

    fn counter() -> impl FnMut(&mut [u8]) -> bool {
        let mut n = 0u8;
        move |buf: &mut [u8]| {
            n = n.wrapping_add(1);
            buf.fill(n);
            true
        }
    }

    #[test]
    fn every_worker_gets_the_same_nonce_and_the_previous_one_lasts_one_rotation() {
        let store = MemoryStore::new();
        let nonces = Nonces::new("ci", 60);
        nonces.prepare(&store).unwrap();
        let (mut a, mut b) = (None, None);
        let mut random = counter();
        let first = nonces.current(&store, &mut a, 6_000, &mut random).unwrap();
        // Worker b reads the nonce worker a drew: it draws none itself.
        let seen_by_b = nonces.current(&store, &mut b, 6_010, |_: &mut [u8]| unreachable!()).unwrap();
        assert_eq!(seen_by_b, first);
        let old = first.current();
        assert!(first.accepts(&old));
        // One rotation later: a new nonce; the old one is still accepted.
        let second = nonces.current(&store, &mut b, 6_060, &mut random).unwrap();
        assert_ne!(second.current(), old);
        assert!(second.accepts(&old) && second.accepts(&second.current()));
        assert_eq!(nonces.current(&store, &mut a, 6_061, |_: &mut [u8]| unreachable!()).unwrap(), second);
        // Two rotations later the first nonce fails.
        let third = nonces.current(&store, &mut a, 6_120, &mut random).unwrap();
        assert!(!third.accepts(&old));
        assert!(third.accepts(&second.current()));
        // A gap of several epochs keeps no previous nonce.
        let later = nonces.current(&store, &mut a, 9_000, &mut random).unwrap();
        assert!(!later.accepts(&third.current()));
        assert!(!later.accepts("not base64!") && !later.accepts(""));
    }

    #[test]
    fn no_random_bytes_or_no_store_means_no_nonce() {
        let store = MemoryStore::new();
        let nonces = Nonces::new("ci", 60);
        nonces.prepare(&store).unwrap();
        assert_eq!(nonces.current(&store, &mut None, 6_000, |_: &mut [u8]| false), Err(NonceError::Random));
        assert_eq!(
            Nonces::new("other", 60).current(&store, &mut None, 6_000, counter()),
            Err(NonceError::Store(StoreError::Unavailable))
        );
    }

    #[test]
    fn nonces_are_22_characters_of_base64url() {
        let store = MemoryStore::new();
        let nonces = Nonces::new("ci", 60);
        nonces.prepare(&store).unwrap();
        let state = nonces.current(&store, &mut None, 6_000, counter()).unwrap();
        let nonce = state.current();
        assert_eq!(nonce.len(), 22);
        assert!(nonce.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }
}
