//! The proxy-wasm shared-data contract, as a trait the pure core can use.
//!
//! Shared data is a per-Envoy key/value map visible to every worker's VM (same
//! `vm_id`). Each key carries a CAS number. Two host facts shape every user here:
//! a key that does not exist yet has *no* CAS, and a write without CAS always
//! succeeds — so a key must be created deliberately (with a value whose creation
//! race is harmless) and then only ever updated with CAS.

use std::cell::RefCell;
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

/// An in-memory store with the host's exact CAS semantics: for tests, and for
/// hosts without shared data (where it makes state per VM instead of per Envoy).
#[derive(Debug, Default)]
pub struct MemoryStore {
    entries: RefCell<HashMap<String, (Vec<u8>, u32)>>,
}

impl MemoryStore {
    pub fn len(&self) -> usize {
        self.entries.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.borrow().is_empty()
    }
}

impl Store for MemoryStore {
    fn get(&self, key: &str) -> Result<Versioned, StoreError> {
        Ok(match self.entries.borrow().get(key) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, None),
        })
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        let mut entries = self.entries.borrow_mut();
        let next = match (entries.get(key), cas) {
            (Some((_, current)), Some(expected)) if *current != expected => {
                return Err(StoreError::CasMismatch)
            }
            (Some((_, current)), _) => current.wrapping_add(1),
            (None, _) => 1,
        };
        entries.insert(key.to_owned(), (value.to_vec(), next));
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
}
