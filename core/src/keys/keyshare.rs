//! One fetch per Envoy, not per worker: for an issuer's JWKS, and for every other
//! fetched document (the revocation feed).
//!
//! Every worker VM ticks and could fetch. Instead they share two shared-data keys
//! per document:
//! - the **record**: the last good body and when it was fetched. Workers re-read it
//!   when its CAS changes and parse it into their own copy;
//! - the **lease**: who may fetch now, until when, and how many fetches failed in
//!   a row. A worker takes it with CAS, so exactly one fetch runs at a time; a
//!   failed fetch leaves the lease "cooling down" until the backoff has passed, so
//!   retries are spaced across the whole Envoy, not per worker.

use super::KeyLookup;
use crate::hash::fnv1a64;
use crate::host::store::{get_or_create, Store, StoreError};
use crate::keys::jwks::{KeySet, KeyUse};
use crate::keys::refresh::Schedule;

const RECORD_VERSION: u8 = 1;
const LEASE_VERSION: u8 = 1;
const LEASE_LEN: usize = 1 + 8 + 8 + 4;

/// The shared-data keys of one fetched document. Named by its kind, its name (the
/// issuer's) and a digest of where it comes from, so two plugin configs sharing a
/// VM never mix copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedKeys {
    pub record: String,
    pub lease: String,
}

impl SharedKeys {
    /// An issuer's JWKS.
    pub fn new(issuer_name: &str, source: &str) -> Self {
        SharedKeys::for_document("jwks", issuer_name, source)
    }

    /// A document of `kind` (`jwks`, `revocations`).
    pub fn for_document(kind: &str, name: &str, source: &str) -> Self {
        let digest = fnv1a64(source.as_bytes());
        SharedKeys {
            record: format!("nhi-guard/{kind}/{name}/{digest:016x}"),
            lease: format!("nhi-guard/{kind}-lease/{name}/{digest:016x}"),
        }
    }
}

/// A JWKS body as published by the worker that fetched it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub fetched_at_ms: u64,
    pub body: Vec<u8>,
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.body.len());
        out.push(RECORD_VERSION);
        out.extend_from_slice(&self.fetched_at_ms.to_be_bytes());
        out.extend_from_slice(&self.body);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Record> {
        let (&version, rest) = bytes.split_first()?;
        if version != RECORD_VERSION {
            return None;
        }
        let (at, body) = rest.split_first_chunk::<8>()?;
        Some(Record { fetched_at_ms: u64::from_be_bytes(*at), body: body.to_vec() })
    }
}

/// Who may fetch, until when, and the failure streak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// 0: nobody (free, or cooling down after a failure until `until_ms`).
    pub holder: u64,
    pub until_ms: u64,
    pub failures: u32,
}

impl Lease {
    pub const FREE: Lease = Lease { holder: 0, until_ms: 0, failures: 0 };

    pub fn encode(&self) -> [u8; LEASE_LEN] {
        let mut out = [0u8; LEASE_LEN];
        let (version, rest) = out.split_at_mut(1);
        let (holder, rest) = rest.split_at_mut(8);
        let (until, failures) = rest.split_at_mut(8);
        version.copy_from_slice(&[LEASE_VERSION]);
        holder.copy_from_slice(&self.holder.to_be_bytes());
        until.copy_from_slice(&self.until_ms.to_be_bytes());
        failures.copy_from_slice(&self.failures.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Lease> {
        let (&version, rest) = bytes.split_first()?;
        if version != LEASE_VERSION || rest.len() != LEASE_LEN - 1 {
            return None;
        }
        let (holder, rest) = rest.split_first_chunk::<8>()?;
        let (until, rest) = rest.split_first_chunk::<8>()?;
        let (failures, _) = rest.split_first_chunk::<4>()?;
        Some(Lease {
            holder: u64::from_be_bytes(*holder),
            until_ms: u64::from_be_bytes(*until),
            failures: u32::from_be_bytes(*failures),
        })
    }
}

/// The outcome of trying to take the fetch lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquire {
    /// This worker fetches now; `failures` is the streak so far (for backoff).
    Acquired { failures: u32 },
    /// Another worker fetches, or the last failure is still cooling down.
    Busy,
}

/// Tries to take the fetch lease for `hold_ms` (the fetch timeout plus margin).
/// A lease whose time has passed is free to take: a worker that died mid-fetch
/// cannot block the others for longer than its hold.
pub fn try_acquire(
    store: &dyn Store,
    key: &str,
    me: u64,
    now: u64,
    hold_ms: u64,
) -> Result<Acquire, StoreError> {
    let (bytes, cas) = get_or_create(store, key, &Lease::FREE.encode())?;
    // An undecodable lease (another version) is treated as free rather than wedging fetches.
    let current = Lease::decode(&bytes).unwrap_or(Lease::FREE);
    if now < current.until_ms && current.holder != me {
        return Ok(Acquire::Busy);
    }
    let mine = Lease { holder: me, until_ms: now.saturating_add(hold_ms), failures: current.failures };
    match store.set(key, &mine.encode(), Some(cas)) {
        Ok(()) => Ok(Acquire::Acquired { failures: current.failures }),
        Err(StoreError::CasMismatch) => Ok(Acquire::Busy),
        Err(err) => Err(err),
    }
}

/// Publishes freshly fetched keys and frees the lease.
pub fn publish(store: &dyn Store, keys: &SharedKeys, me: u64, record: &Record) -> Result<(), StoreError> {
    // Only the lease holder writes the record, so a plain write cannot lose a newer one.
    store.set(&keys.record, &record.encode(), None)?;
    finish(store, &keys.lease, me, Lease::FREE)
}

/// Records a failed fetch: nobody fetches again before `now + backoff_ms`.
pub fn fail(
    store: &dyn Store,
    key: &str,
    me: u64,
    now: u64,
    failures: u32,
    backoff_ms: u64,
) -> Result<(), StoreError> {
    finish(store, key, me, Lease { holder: 0, until_ms: now.saturating_add(backoff_ms), failures })
}

/// Replaces our lease with `next`, unless it expired and another worker took it.
fn finish(store: &dyn Store, key: &str, me: u64, next: Lease) -> Result<(), StoreError> {
    let (bytes, cas) = get_or_create(store, key, &Lease::FREE.encode())?;
    match Lease::decode(&bytes) {
        Some(current) if current.holder != me && current.holder != 0 => Ok(()),
        _ => match store.set(key, &next.encode(), Some(cas)) {
            Ok(()) | Err(StoreError::CasMismatch) => Ok(()),
            Err(err) => Err(err),
        },
    }
}

/// One VM's current view of an issuer's keys.
#[derive(Debug, Clone, Default)]
pub struct LocalKeys {
    pub set: Option<KeySet>,
    /// When the keys in `set` were fetched (by whichever worker fetched them).
    pub fetched_at_ms: Option<u64>,
    /// CAS of the shared record `set` was parsed from: re-parse only on change.
    pub seen_cas: Option<u32>,
    /// `None` for inline keys, which never go stale.
    pub schedule: Option<Schedule>,
    /// A token named a `kid` this set lacks: refetch early (throttled).
    pub kid_miss: bool,
    /// Which JWK `use` a fetched set may carry (the issuer's profile decides).
    pub key_use: KeyUse,
}

impl LocalKeys {
    pub fn inline(set: KeySet) -> Self {
        LocalKeys { set: Some(set), ..LocalKeys::default() }
    }

    pub fn remote(schedule: Schedule, key_use: KeyUse) -> Self {
        LocalKeys { schedule: Some(schedule), key_use, ..LocalKeys::default() }
    }

    /// Keys fetched (by whichever worker) at `fetched_at_ms` replace the current
    /// ones; a pending early refetch for an unknown `kid` is answered by them.
    pub fn load(&mut self, set: KeySet, fetched_at_ms: u64) {
        self.set = Some(set);
        self.fetched_at_ms = Some(fetched_at_ms);
        self.kid_miss = false;
    }

    /// The keys if they may be used at `now`: loaded, and not older than `max_stale`.
    pub fn usable(&self, now_ms: u64) -> Option<&KeySet> {
        match (&self.schedule, self.fetched_at_ms) {
            (None, _) => self.set.as_ref(),
            (Some(schedule), Some(at)) if schedule.usable(now_ms, at) => self.set.as_ref(),
            _ => None,
        }
    }
}

/// Every issuer's keys as the verifier sees them at one instant.
pub struct KeyView<'a> {
    pub keys: &'a [LocalKeys],
    pub now_ms: u64,
}

impl KeyLookup for KeyView<'_> {
    fn key_set(&self, issuer: usize) -> Option<&KeySet> {
        self.keys.get(issuer).and_then(|k| k.usable(self.now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::store::MemoryStore;

    fn keys() -> SharedKeys {
        SharedKeys::new("ci", "jwks_ci|issuer.example|/jwks.json")
    }

    #[test]
    fn key_names_are_stable_and_distinct_per_source() {
        let a = SharedKeys::new("ci", "c|a|/p");
        assert!(
            a.record.starts_with("nhi-guard/jwks/ci/") && a.lease.starts_with("nhi-guard/jwks-lease/ci/")
        );
        let feed = SharedKeys::for_document("revocations", "revocations", "c|a|/p");
        assert!(feed.record.starts_with("nhi-guard/revocations/revocations/"), "{}", feed.record);
        assert_ne!(feed.record, a.record);
        assert_eq!(a, SharedKeys::new("ci", "c|a|/p"));
        assert_ne!(a.record, SharedKeys::new("ci", "c|a|/q").record);
        assert_ne!(a.record, a.lease);
    }

    #[test]
    fn record_and_lease_round_trip() {
        let r = Record { fetched_at_ms: 42, body: b"{\"keys\":[]}".to_vec() };
        assert_eq!(Record::decode(&r.encode()), Some(r));
        assert_eq!(Record::decode(&[9, 0, 0]), None);
        assert_eq!(Record::decode(&[RECORD_VERSION, 1, 2]), None);
        let l = Lease { holder: 7, until_ms: 99, failures: 3 };
        assert_eq!(Lease::decode(&l.encode()), Some(l));
        assert_eq!(Lease::decode(&l.encode()[..10]), None);
    }

    #[test]
    fn only_one_worker_holds_the_lease() {
        let store = MemoryStore::default();
        let k = keys();
        assert_eq!(
            try_acquire(&store, &k.lease, 1, 1_000, 3_000).unwrap(),
            Acquire::Acquired { failures: 0 }
        );
        assert_eq!(try_acquire(&store, &k.lease, 2, 1_001, 3_000).unwrap(), Acquire::Busy);
        assert_eq!(try_acquire(&store, &k.lease, 3, 2_000, 3_000).unwrap(), Acquire::Busy);
    }

    #[test]
    fn an_abandoned_lease_expires() {
        let store = MemoryStore::default();
        let k = keys();
        try_acquire(&store, &k.lease, 1, 0, 3_000).unwrap();
        assert_eq!(
            try_acquire(&store, &k.lease, 2, 3_000, 3_000).unwrap(),
            Acquire::Acquired { failures: 0 }
        );
    }

    /// A store that lets another worker write between our read and our write.
    struct Racing<'a> {
        inner: &'a MemoryStore,
        key: &'a str,
        raced: std::cell::Cell<bool>,
    }

    impl Store for Racing<'_> {
        fn get(&self, key: &str) -> Result<crate::host::store::Versioned, StoreError> {
            let got = self.inner.get(key);
            if key == self.key && got.as_ref().is_ok_and(|(v, _)| v.is_some()) && !self.raced.replace(true) {
                let rival = Lease { holder: 99, until_ms: 10_000, failures: 0 };
                self.inner.set(key, &rival.encode(), None)?;
            }
            got
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn losing_a_cas_race_means_busy() {
        let inner = MemoryStore::default();
        let k = keys();
        inner.set(&k.lease, &Lease::FREE.encode(), None).unwrap();
        let racing = Racing { inner: &inner, key: &k.lease, raced: Default::default() };
        assert_eq!(try_acquire(&racing, &k.lease, 1, 0, 3_000).unwrap(), Acquire::Busy);
        let held = Lease::decode(&inner.get(&k.lease).unwrap().0.unwrap()).unwrap();
        assert_eq!(held.holder, 99);
    }

    #[test]
    fn failure_cools_down_and_keeps_the_streak() {
        let store = MemoryStore::default();
        let k = keys();
        try_acquire(&store, &k.lease, 1, 0, 3_000).unwrap();
        fail(&store, &k.lease, 1, 100, 1, 500).unwrap();
        assert_eq!(try_acquire(&store, &k.lease, 2, 599, 3_000).unwrap(), Acquire::Busy);
        assert_eq!(try_acquire(&store, &k.lease, 2, 600, 3_000).unwrap(), Acquire::Acquired { failures: 1 });
    }

    #[test]
    fn publish_stores_the_record_and_frees_the_lease() {
        let store = MemoryStore::default();
        let k = keys();
        try_acquire(&store, &k.lease, 1, 0, 3_000).unwrap();
        let record = Record { fetched_at_ms: 5, body: b"{}".to_vec() };
        publish(&store, &k, 1, &record).unwrap();
        assert_eq!(Record::decode(&store.get(&k.record).unwrap().0.unwrap()), Some(record));
        assert_eq!(try_acquire(&store, &k.lease, 2, 6, 3_000).unwrap(), Acquire::Acquired { failures: 0 });
    }

    #[test]
    fn local_keys_go_stale_after_max_stale() {
        let schedule = Schedule { interval_ms: 1_000, min_refetch_ms: 1_000, max_stale_ms: 5_000 };
        let mut local = LocalKeys::remote(schedule, KeyUse::Sig);
        assert!(local.usable(0).is_none());
        local.kid_miss = true;
        local.load(KeySet::default(), 100);
        assert!(!local.kid_miss, "loaded keys answer a pending early refetch");
        assert!(local.usable(5_100).is_some());
        assert!(local.usable(5_101).is_none());
        assert!(LocalKeys::inline(KeySet::default()).usable(u64::MAX).is_some());
        let all = [local];
        let view = KeyView { keys: &all, now_ms: 200 };
        assert!(view.key_set(0).is_some());
        assert!(view.key_set(1).is_none());
    }

    #[test]
    fn a_late_finisher_does_not_clobber_the_new_holder() {
        let store = MemoryStore::default();
        let k = keys();
        try_acquire(&store, &k.lease, 1, 0, 3_000).unwrap();
        try_acquire(&store, &k.lease, 2, 3_000, 3_000).unwrap();
        fail(&store, &k.lease, 1, 3_001, 1, 500).unwrap();
        let held = Lease::decode(&store.get(&k.lease).unwrap().0.unwrap()).unwrap();
        assert_eq!(held.holder, 2);
    }
}
