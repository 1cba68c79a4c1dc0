//! The nonce replay cache: every `nonce` a partner's verified signature carried,
//! remembered until the signature could no longer be accepted anyway, so that the
//! same signed request is admitted once — across every worker of the proxy.
//!
//! Layout: `max_entries` entries in buckets of at most [`WAYS`], one shared-data key
//! per bucket (`nhi-guard.n.b.<n>`), each a version byte and its entries, 24 bytes
//! apiece: a 128-bit FNV-1a fingerprint of (partner, nonce) and the Unix second at
//! which the entry may be forgotten. As in the quota table, a bucket is one key so
//! that "is this nonce new? then remember it" is one compare-and-swap: two workers
//! admitting the same nonce at once cannot both succeed. Keys are created when the
//! VM starts ([`ReplayCache::prepare`]) because a key that does not exist has no
//! CAS, and shared data never deletes a key: the key set is fixed and bounded.
//!
//! Only requests whose signature verified reach the cache, so only a partner's
//! key can create entries. An entry whose time has passed is dropped whenever its
//! bucket is written. A bucket whose entries are all live refuses the request
//! (`replay_cache_full`, 503): forgetting a live nonce would admit its replay, and
//! admitting without remembering would too. So that one partner's flood cannot
//! starve the others (the nonce is remembered before quotas apply), a bucket at
//! least half full refuses a partner that already holds a quarter of its room: one
//! partner alone fills at most half of each bucket. The top 16 bits of a
//! fingerprint are its partner's tag for that count. Size the cache for the signed requests
//! of one signature lifetime (`max_age_seconds` plus the clock skew).
//!
//! Without shared data (APISIX) the store is the VM's own memory: a replay is then
//! caught only by the worker that saw the original.

use crate::hash::{fmix64, fnv1a128};
use crate::host::store::{Store, StoreError};

/// Prefix of every store key this module writes.
pub const KEY_PREFIX: &str = "nhi-guard.n.";
/// Largest number of entries in one bucket (one store key).
pub const WAYS: usize = 64;
const ENTRY_BYTES: usize = 24;
const VERSION: u8 = 1;
const EMPTY: [u8; 1] = [VERSION];
/// Compare-and-swap attempts before giving up (the request is then refused).
const MAX_ATTEMPTS: usize = 8;

pub const DEFAULT_MAX_ENTRIES: u32 = 65_536;
pub const MAX_MAX_ENTRIES: u32 = 1_048_576;

/// The bounded cache: how many entries, in how many buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayCache {
    max_entries: u32,
    buckets: u32,
}

/// What remembering a nonce came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// New: remembered until its expiry.
    First,
    /// Already remembered: a replay.
    Replay,
    /// Its bucket is full of live entries: refused, nothing remembered.
    Full,
}

/// (partner, nonce): its 128-bit hash, which picks the bucket, and its partner's tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    hash: u128,
    tag: u128,
}

/// Bits of a fingerprint below its partner's tag.
const TAG_SHIFT: u32 = 112;
/// Those bits: what tells nonces apart. (Entries written before the tag existed hold
/// the whole 128-bit hash, whose low bits are these: their replays are still caught.)
const NONCE_BITS: u128 = (1u128 << TAG_SHIFT) - 1;
/// Buckets this small are not shared out (a share of a few entries would refuse a
/// lone partner's ordinary traffic).
const MIN_SHARED_CAPACITY: usize = 8;

impl Fingerprint {
    /// 0xFF never occurs in UTF-8: `("ab", "c")` and `("a", "bc")` differ.
    pub fn of(partner: &str, nonce: &str) -> Fingerprint {
        Fingerprint {
            hash: fnv1a128(&[partner.as_bytes(), &[0xFF], nonce.as_bytes()]),
            tag: fnv1a128(&[partner.as_bytes()]) >> TAG_SHIFT,
        }
    }

    /// As stored: the partner's 16-bit tag, then the hash's low 112 bits.
    fn stored(self) -> u128 {
        (self.tag << TAG_SHIFT) | (self.hash & NONCE_BITS)
    }

    fn spread(self) -> u64 {
        fmix64((self.hash >> 64) as u64 ^ self.hash as u64)
    }
}

impl ReplayCache {
    pub fn new(max_entries: u32) -> ReplayCache {
        let max_entries = max_entries.max(1);
        ReplayCache { max_entries, buckets: max_entries.div_ceil(WAYS as u32) }
    }

    pub fn max_entries(&self) -> u32 {
        self.max_entries
    }

    fn bucket_of(&self, fp: Fingerprint) -> u32 {
        u32::try_from(fp.spread().checked_rem(u64::from(self.buckets)).unwrap_or(0)).unwrap_or(0)
    }

    fn capacity(&self, bucket: u32) -> usize {
        let base = self.max_entries.checked_div(self.buckets).unwrap_or(0);
        let extra = self.max_entries.checked_rem(self.buckets).unwrap_or(0);
        (base + u32::from(bucket < extra)) as usize
    }

    pub fn bucket_key(bucket: u32) -> String {
        format!("{KEY_PREFIX}b.{bucket}")
    }

    /// Creates every bucket key that does not exist yet, so that requests only
    /// ever write with a CAS. Returns how many it created.
    pub fn prepare(&self, store: &dyn Store) -> Result<usize, StoreError> {
        let mut created = 0;
        for bucket in 0..self.buckets {
            let key = Self::bucket_key(bucket);
            if let (None, None) = store.get(&key)? {
                store.set(&key, &EMPTY, None)?;
                created += 1;
            }
        }
        Ok(created)
    }

    /// Remembers `fp` until `expires_at` (Unix seconds) unless it is already
    /// remembered. `now` drops entries whose time has passed.
    pub fn remember(
        &self,
        store: &dyn Store,
        fp: Fingerprint,
        expires_at: u64,
        now: u64,
    ) -> Result<Seen, StoreError> {
        let bucket = self.bucket_of(fp);
        let key = Self::bucket_key(bucket);
        let capacity = self.capacity(bucket);
        for _ in 0..MAX_ATTEMPTS {
            let (bytes, cas) = store.get(&key)?;
            let mut entries = decode(bytes.as_deref().unwrap_or(&EMPTY));
            if entries.iter().any(|(f, until)| f & NONCE_BITS == fp.hash & NONCE_BITS && *until > now) {
                return Ok(Seen::Replay);
            }
            entries.retain(|(_, until)| *until > now);
            let crowded = capacity >= MIN_SHARED_CAPACITY && entries.len() * 2 >= capacity;
            let own = || entries.iter().filter(|(f, _)| f >> TAG_SHIFT == fp.tag).count();
            if entries.len() >= capacity || (crowded && own() >= (capacity / 4).max(1)) {
                return Ok(Seen::Full);
            }
            entries.push((fp.stored(), expires_at));
            // A key with no CAS was not prepared (or the store forgot it): writing
            // blind could drop another worker's entry, so create it and read again.
            let Some(cas) = cas else {
                store.set(&key, &EMPTY, None)?;
                continue;
            };
            match store.set(&key, &encode(&entries), Some(cas)) {
                Ok(()) => return Ok(Seen::First),
                Err(StoreError::CasMismatch) => continue,
                Err(err) => return Err(err),
            }
        }
        Err(StoreError::Unavailable)
    }
}

fn decode(bytes: &[u8]) -> Vec<(u128, u64)> {
    let Some((&VERSION, rest)) = bytes.split_first() else { return Vec::new() };
    rest.chunks_exact(ENTRY_BYTES)
        .filter_map(|chunk| {
            let (fp, until) = chunk.split_first_chunk::<16>()?;
            let until: [u8; 8] = until.try_into().ok()?;
            Some((u128::from_be_bytes(*fp), u64::from_be_bytes(until)))
        })
        .collect()
}

fn encode(entries: &[(u128, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + entries.len() * ENTRY_BYTES);
    out.push(VERSION);
    for (fp, until) in entries {
        out.extend_from_slice(&fp.to_be_bytes());
        out.extend_from_slice(&until.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};

    use super::*;
    use crate::host::store::{MemoryStore, Versioned};

    #[test]
    fn a_nonce_is_admitted_once_until_it_expires() {
        let (cache, store) = (ReplayCache::new(128), MemoryStore::new());
        cache.prepare(&store).unwrap();
        let fp = Fingerprint::of("acme", "n-1");
        assert_eq!(cache.remember(&store, fp, 400, 100), Ok(Seen::First));
        assert_eq!(cache.remember(&store, fp, 400, 399), Ok(Seen::Replay));
        // Another partner's identical nonce is another entry.
        assert_eq!(cache.remember(&store, Fingerprint::of("globex", "n-1"), 400, 100), Ok(Seen::First));
        // Once the signature could not be accepted any more, the entry is gone.
        assert_eq!(cache.remember(&store, fp, 900, 400), Ok(Seen::First));
    }

    /// One partner flooding fresh nonces fills half a bucket at most; another still
    /// gets its share.
    #[test]
    fn one_partner_cannot_take_a_bucket_from_the_others() {
        let (cache, store) = (ReplayCache::new(64), MemoryStore::new());
        cache.prepare(&store).unwrap();
        let flood: Vec<Seen> = (0..40)
            .map(|i| cache.remember(&store, Fingerprint::of("flood", &format!("f-{i}")), 500, 100).unwrap())
            .collect();
        assert_eq!(flood.iter().filter(|s| **s == Seen::First).count(), 32);
        assert!(flood[32..].iter().all(|s| *s == Seen::Full));
        for i in 0..16 {
            let seen = cache.remember(&store, Fingerprint::of("victim", &format!("v-{i}")), 500, 100);
            assert_eq!(seen, Ok(Seen::First), "{i}");
        }
        // The flood's own entries still catch their replays.
        assert_eq!(cache.remember(&store, Fingerprint::of("flood", "f-0"), 500, 101), Ok(Seen::Replay));
    }

    #[test]
    fn a_full_bucket_refuses_rather_than_forgets() {
        let (cache, store) = (ReplayCache::new(2), MemoryStore::new());
        cache.prepare(&store).unwrap();
        assert_eq!(cache.remember(&store, Fingerprint::of("p", "a"), 200, 100), Ok(Seen::First));
        assert_eq!(cache.remember(&store, Fingerprint::of("p", "b"), 300, 100), Ok(Seen::First));
        assert_eq!(cache.remember(&store, Fingerprint::of("p", "c"), 300, 100), Ok(Seen::Full));
        assert_eq!(cache.remember(&store, Fingerprint::of("p", "a"), 200, 150), Ok(Seen::Replay));
        // "a" expired at 200: its slot is reused.
        assert_eq!(cache.remember(&store, Fingerprint::of("p", "c"), 300, 200), Ok(Seen::First));
        assert_eq!(store.len(), 1, "one bucket: bounded");
    }

    /// A store on which, between a read and the following write, another worker
    /// runs `interleave` (once).
    struct Interleaved<'a> {
        inner: &'a MemoryStore,
        interleave: RefCell<Option<Box<dyn FnOnce() + 'a>>>,
        blind_sets: Cell<usize>,
    }

    impl Store for Interleaved<'_> {
        fn get(&self, key: &str) -> Result<Versioned, StoreError> {
            let read = self.inner.get(key);
            if let Some(other) = self.interleave.borrow_mut().take() {
                other();
            }
            read
        }

        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            if cas.is_none() {
                self.blind_sets.set(self.blind_sets.get() + 1);
            }
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn two_workers_racing_on_one_nonce_admit_it_once() {
        let cache = ReplayCache::new(64);
        let shared = MemoryStore::new();
        cache.prepare(&shared).unwrap();
        let fp = Fingerprint::of("acme", "raced");
        let other_worker_result = Cell::new(None);
        let worker_a = Interleaved {
            inner: &shared,
            interleave: RefCell::new(Some(Box::new(|| {
                other_worker_result.set(Some(cache.remember(&shared, fp, 500, 100)));
            }))),
            blind_sets: Cell::new(0),
        };
        // A read the bucket before B admitted the nonce; its write then loses the CAS,
        // it reads again and sees the replay.
        assert_eq!(cache.remember(&worker_a, fp, 500, 100), Ok(Seen::Replay));
        assert_eq!(other_worker_result.get(), Some(Ok(Seen::First)));
        assert_eq!(worker_a.blind_sets.get(), 0, "prepared keys are only written with a CAS");
    }

    #[test]
    fn an_unprepared_key_is_created_before_it_is_written() {
        let (cache, store) = (ReplayCache::new(8), MemoryStore::new());
        assert_eq!(cache.remember(&store, Fingerprint::of("p", "x"), 200, 100), Ok(Seen::First));
        assert_eq!(cache.remember(&store, Fingerprint::of("p", "x"), 200, 100), Ok(Seen::Replay));
    }

    #[test]
    fn geometry_spreads_the_bound_exactly() {
        let cache = ReplayCache::new(200);
        assert_eq!(cache.buckets, 4);
        assert_eq!((0..4).map(|b| cache.capacity(b)).sum::<usize>(), 200);
        let store = MemoryStore::new();
        assert_eq!(cache.prepare(&store).unwrap(), 4);
        assert_eq!(cache.prepare(&store).unwrap(), 0);
    }

    #[test]
    fn fingerprints_are_pinned() {
        // Pinned: a change here forgets every remembered nonce on upgrade. The hash
        // (which picks the bucket, and whose low 112 bits are stored) is the one the
        // build before the partner's tag wrote whole.
        let before = fnv1a128(&[b"acme", &[0xFF], b"n"]);
        let fp = Fingerprint::of("acme", "n");
        assert_eq!(fp.hash, before);
        assert_eq!(fp.stored() >> TAG_SHIFT, fnv1a128(&[b"acme"]) >> TAG_SHIFT);
        // That build's entry, in its bucket of a table of many: still a replay.
        let (cache, store) = (ReplayCache::new(64 * 16), MemoryStore::new());
        cache.prepare(&store).unwrap();
        store.set(&ReplayCache::bucket_key(cache.bucket_of(fp)), &encode(&[(before, 500)]), None).unwrap();
        assert_eq!(cache.remember(&store, fp, 500, 100), Ok(Seen::Replay), "an entry of the build before");
        assert_ne!(Fingerprint::of("ab", "c"), Fingerprint::of("a", "bc"));
    }
}
