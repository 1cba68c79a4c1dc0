//! The proxy-wasm shared-data contract, as a trait the pure core can use.
//!
//! Shared data is a per-Envoy key/value map visible to every worker's VM (same
//! `vm_id`). Each key carries a CAS number. Two host facts shape every user here:
//! a key that does not exist yet has *no* CAS, and a write without CAS always
//! succeeds — so a key must be created deliberately (with a value whose creation
//! race is harmless) and then only ever updated with CAS.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;

/// Why a shared-data call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// Someone wrote the key since we read it: re-read and retry.
    CasMismatch,
    /// The host has no shared data (or refused the call).
    Unavailable,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::CasMismatch => f.write_str("compare-and-swap conflict"),
            StoreError::Unavailable => f.write_str("shared data unavailable"),
        }
    }
}

/// A value and the CAS number to update it with.
pub type Versioned = (Option<Vec<u8>>, Option<u32>);

/// Shared data as the host offers it.
pub trait Store {
    fn get(&self, key: &str) -> Result<Versioned, StoreError>;
    /// Writes `value`; with `Some(cas)` only if the key is still at that version.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
}

/// A store shared by owners (e.g. a test that keeps a handle on a VM's store).
impl<T: Store + ?Sized> Store for std::rc::Rc<T> {
    fn get(&self, key: &str) -> Result<Versioned, StoreError> {
        (**self).get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        (**self).set(key, value, cas)
    }
}

/// An in-memory [`Store`] with exactly the host's semantics, including the
/// surprising ones (a write with a CAS token to a missing key succeeds).
///
/// It is the fake the tests run against, and the per-VM fallback for the glue
/// when shared data is unavailable. Its keys are the same bounded set the table
/// uses, so it is bounded like shared data. Single-threaded, like a wasm VM.
#[derive(Debug, Default)]
pub struct MemoryStore {
    entries: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    last_cas: Cell<u32>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys ever written.
    pub fn len(&self) -> usize {
        self.entries.try_borrow().map_or(0, |e| e.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Like the host: one counter for all keys, never zero (zero means "no CAS").
    fn next_cas(&self) -> u32 {
        let next = match self.last_cas.get().wrapping_add(1) {
            0 => 1,
            n => n,
        };
        self.last_cas.set(next);
        next
    }
}

impl Store for MemoryStore {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        let entries = self.entries.try_borrow().map_err(|_| StoreError::Unavailable)?;
        Ok(match entries.get(key) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, None),
        })
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        let next = self.next_cas();
        let mut entries = self.entries.try_borrow_mut().map_err(|_| StoreError::Unavailable)?;
        match entries.get_mut(key) {
            Some(current) => {
                if cas.is_some_and(|cas| cas != current.1) {
                    return Err(StoreError::CasMismatch);
                }
                *current = (value.to_vec(), next);
            }
            None => {
                entries.insert(key.to_owned(), (value.to_vec(), next));
            }
        }
        Ok(())
    }
}

/// Reads `key`, creating it with `initial` first if it does not exist, so the
/// caller always gets a CAS to update with. Creation races are harmless as long
/// as every creator writes the same neutral `initial` value.
pub fn get_or_create(store: &dyn Store, key: &str, initial: &[u8]) -> Result<(Vec<u8>, u32), StoreError> {
    for _ in 0..2 {
        match store.get(key)? {
            (Some(value), Some(cas)) => return Ok((value, cas)),
            _ => store.set(key, initial, None)?,
        }
    }
    Err(StoreError::Unavailable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_has_host_cas_semantics() {
        let s = MemoryStore::default();
        assert_eq!(s.get("k").unwrap(), (None, None));
        s.set("k", b"a", None).unwrap();
        let (v, cas) = s.get("k").unwrap();
        assert_eq!(v.as_deref(), Some(&b"a"[..]));
        let cas = cas.unwrap();
        s.set("k", b"b", Some(cas)).unwrap();
        assert_eq!(s.set("k", b"c", Some(cas)), Err(StoreError::CasMismatch));
        // A write without CAS always wins.
        s.set("k", b"d", None).unwrap();
        assert_eq!(s.get("k").unwrap().0.as_deref(), Some(&b"d"[..]));
    }

    #[test]
    fn get_or_create_yields_a_cas() {
        let s = MemoryStore::default();
        let (v, _) = get_or_create(&s, "k", b"init").unwrap();
        assert_eq!(v, b"init");
        s.set("k", b"later", None).unwrap();
        let (v, _) = get_or_create(&s, "k", b"init").unwrap();
        assert_eq!(v, b"later");
    }

    #[test]
    fn memory_store_matches_the_host_on_missing_keys() {
        let store = MemoryStore::new();
        assert_eq!(store.get("k"), Ok((None, None)));
        // A token on a missing key does not stop the write (as on Envoy).
        store.set("k", b"a", Some(77)).unwrap();
        let (value, cas) = store.get("k").unwrap();
        assert_eq!(value.as_deref(), Some(&b"a"[..]));
        let cas = cas.unwrap();
        assert_ne!(cas, 0);
        store.set("k", b"b", Some(cas)).unwrap();
        // The old token is stale now.
        assert_eq!(store.set("k", b"c", Some(cas)), Err(StoreError::CasMismatch));
        // Without a token the write always succeeds.
        store.set("k", b"d", None).unwrap();
        assert_eq!(store.get("k").unwrap().0.as_deref(), Some(&b"d"[..]));
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn cas_tokens_skip_zero_when_the_counter_wraps() {
        let store = MemoryStore::new();
        store.last_cas.set(u32::MAX);
        store.set("k", b"a", None).unwrap();
        assert_eq!(store.get("k").unwrap().1, Some(1));
    }
}
