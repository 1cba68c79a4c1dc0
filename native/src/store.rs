//! Shared state for every Envoy worker, in the process: the core's [`Store`]
//! contract (a value and a CAS number per key) over a lock-striped map.
//!
//! A proxy-wasm filter gets this from Envoy's shared data; a dynamic module runs in
//! Envoy's own address space, so the workers' threads simply share one table. The
//! semantics are the host's exactly — including the surprising one the core relies
//! on being the same everywhere: a write with a CAS number to a key that does not
//! exist succeeds — so the quota, cache and replay tables behave as they do in the
//! wasm, and a quota is exact across workers (every update is a CAS on one key).
//!
//! Bounded like shared data: the core only ever writes keys from its bounded sets.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use nhi_guard_core::host::store::{Store, StoreError, Versioned};

/// Stripes: enough that workers rarely wait on each other (a handful of keys are hot:
/// one per quota bucket), few enough to cost nothing.
const STRIPES: usize = 16;

type Stripe = Mutex<HashMap<String, (Vec<u8>, u32)>>;

/// The table, shared by the per-worker VMs of one filter configuration.
#[derive(Debug)]
pub struct SharedStore {
    stripes: Vec<Stripe>,
    /// One counter for every key, never zero (zero would read as "no CAS").
    last_cas: AtomicU32,
}

impl Default for SharedStore {
    fn default() -> Self {
        SharedStore { stripes: (0..STRIPES).map(|_| Mutex::default()).collect(), last_cas: AtomicU32::new(0) }
    }
}

impl SharedStore {
    fn stripe(&self, key: &str) -> Result<&Stripe, StoreError> {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        let index = usize::try_from(hasher.finish() % STRIPES as u64).map_err(|_| StoreError::Unavailable)?;
        self.stripes.get(index).ok_or(StoreError::Unavailable)
    }

    fn next_cas(&self) -> u32 {
        loop {
            let next = self.last_cas.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            if next != 0 {
                return next;
            }
        }
    }

    /// Number of keys, over every stripe.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.stripes.iter().map(|s| s.lock().map_or(0, |m| m.len())).sum()
    }
}

impl Store for SharedStore {
    fn get(&self, key: &str) -> Result<Versioned, StoreError> {
        // A poisoned stripe (a thread panicked holding it) is refused, never read:
        // its value may be half-written.
        let entries = self.stripe(key)?.lock().map_err(|_| StoreError::Unavailable)?;
        Ok(match entries.get(key) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, None),
        })
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        let mut entries = self.stripe(key)?.lock().map_err(|_| StoreError::Unavailable)?;
        match entries.get_mut(key) {
            Some(current) => {
                if cas.is_some_and(|cas| cas != current.1) {
                    return Err(StoreError::CasMismatch);
                }
                *current = (value.to_vec(), self.next_cas());
            }
            None => {
                entries.insert(key.to_owned(), (value.to_vec(), self.next_cas()));
            }
        }
        Ok(())
    }
}

/// Every filter name's table, for the life of the process.
static BY_FILTER_NAME: OnceLock<Mutex<HashMap<Vec<u8>, Arc<SharedStore>>>> = OnceLock::new();

/// The table of the filter configurations named `name` (Envoy's `filter_name`). One
/// per name for the life of the process, as Envoy's shared data is one per `vm_id`: a
/// configuration that replaces another (a listener or ECDS update) keeps its quotas,
/// its token cache and its replay tables. A fresh table per configuration would let
/// every DPoP proof and partner nonce of the last `max_age` be replayed once after
/// each update, and give every quota a new budget. Bounded by the names in Envoy's
/// configuration; like shared data, a table is never dropped.
pub fn for_filter(name: &[u8]) -> Arc<SharedStore> {
    let tables = BY_FILTER_NAME.get_or_init(Mutex::default);
    match tables.lock() {
        Ok(mut tables) => Arc::clone(tables.entry(name.to_vec()).or_default()),
        // Only a panic while holding the lock could poison it, and nothing here panics;
        // a table of its own is still correct within the configuration.
        Err(_) => Arc::default(),
    }
}

/// A worker's handle on the configuration's table (the core takes a `Box<dyn Store>`).
#[derive(Debug, Clone, Default)]
pub struct SharedHandle(pub Arc<SharedStore>);

impl Store for SharedHandle {
    fn get(&self, key: &str) -> Result<Versioned, StoreError> {
        self.0.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        self.0.set(key, value, cas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nhi_guard_core::host::store::MemoryStore;

    /// A configuration replacing another of the same filter name finds its table (a
    /// proof or nonce seen before the update is still a replay after it).
    #[test]
    fn one_table_per_filter_name_for_the_process() {
        let first = for_filter(b"nhi-guard-test-a");
        first.set("replay/bucket-1", b"seen", None).unwrap();
        let reloaded = for_filter(b"nhi-guard-test-a");
        assert!(Arc::ptr_eq(&first, &reloaded));
        assert_eq!(reloaded.get("replay/bucket-1").unwrap().0.as_deref(), Some(&b"seen"[..]));
        drop((first, reloaded));
        assert_eq!(
            for_filter(b"nhi-guard-test-a").get("replay/bucket-1").unwrap().0.as_deref(),
            Some(&b"seen"[..])
        );
        assert_eq!(
            for_filter(b"nhi-guard-test-b").get("replay/bucket-1"),
            Ok((None, None)),
            "another filter"
        );
    }

    /// The same calls, the same answers, as the core's model of Envoy's shared data.
    #[test]
    fn has_the_memory_stores_semantics() {
        let shared = SharedStore::default();
        let model = MemoryStore::new();
        let stores: [&dyn Store; 2] = [&shared, &model];
        for store in stores {
            assert_eq!(store.get("k"), Ok((None, None)));
            store.set("k", b"a", Some(77)).unwrap(); // a token on a missing key: written
            let (value, cas) = store.get("k").unwrap();
            assert_eq!(value.as_deref(), Some(&b"a"[..]));
            let cas = cas.unwrap();
            assert_ne!(cas, 0);
            store.set("k", b"b", Some(cas)).unwrap();
            assert_eq!(store.set("k", b"c", Some(cas)), Err(StoreError::CasMismatch));
            store.set("k", b"d", None).unwrap();
            assert_eq!(store.get("k").unwrap().0.as_deref(), Some(&b"d"[..]));
        }
        assert_eq!(shared.len(), 1);
    }

    #[test]
    fn cas_numbers_skip_zero_when_the_counter_wraps() {
        let store = SharedStore::default();
        store.last_cas.store(u32::MAX, Ordering::Relaxed);
        store.set("k", b"a", None).unwrap();
        assert_eq!(store.get("k").unwrap().1, Some(1));
    }

    /// CAS increments from several threads lose no update: what makes a quota exact
    /// across workers.
    #[test]
    fn concurrent_cas_increments_are_exact() {
        let store = Arc::new(SharedStore::default());
        store.set("n", b"0", None).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for _ in 0..2_000 {
                        loop {
                            let (value, cas) = store.get("n").unwrap();
                            let n: u64 = String::from_utf8(value.unwrap()).unwrap().parse().unwrap();
                            if store.set("n", (n + 1).to_string().as_bytes(), cas).is_ok() {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(store.get("n").unwrap().0.as_deref(), Some(&b"8000"[..]));
    }
}
