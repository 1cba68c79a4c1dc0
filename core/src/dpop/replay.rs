//! The replay table: every accepted proof's (key, `jti`) until the proof expires,
//! exact across the workers of one Envoy (RFC 9449 §11.1).
//!
//! # Shape
//! `max_tracked_proofs` entries (rounded up to whole buckets) in buckets of
//! [`WAYS`], one shared-data key per bucket (`nhi-guard.dpop.r.<issuer>.<n>`): a
//! format byte, then the entries. An entry is [`ENTRY_BYTES`]: a 128-bit FNV-1a fingerprint of (thumbprint, `jti`),
//! the last second the proof is accepted, and a 32-bit tag of the thumbprint. The
//! proof itself is never stored. 100 000 proofs take 1 563 keys of at most 1 537
//! bytes: 2.4 MB of values.
//!
//! # Recording
//! A proof is recorded only after every other check passed, its signature
//! included: only a holder of a key some issuer bound a token to creates entries.
//! Recording is one compare-and-swap on the proof's bucket: read, drop the entries
//! whose proof can no longer be accepted, look for the fingerprint (a replay),
//! append, write with the CAS token; a lost race reads again. So two workers given
//! the same proof at the same instant cannot both record it: one write fails and
//! that worker finds the other's entry.
//!
//! # When a bucket is full
//! A live entry is never evicted — evicting it would let its proof be replayed.
//! When the proof's bucket holds [`WAYS`] live entries, or is half full and its key
//! already holds [`PER_KEY_SHARE`] of them, the proof is **refused**
//! (`dpop_replay_cache_full`, 503 with `Retry-After`): an accepted proof that is not
//! recorded could be replayed. The client retries with a fresh proof (another `jti`,
//! most likely another bucket). The share bounds what one key can take once space
//! gets scarce: a key flooding fresh proofs fills at most half of each bucket alone,
//! and beside others' entries at most the larger of a quarter and what is left of
//! that half, so it cannot push out other clients' entries nor take the whole table;
//! it only refuses itself. (Per key, not per client: a client with several bound
//! keys has a share for each.) Below half a
//! bucket no share applies, so one busy client is not refused by the chance that its
//! proofs crowd one bucket. Size the table for the proofs that live at once at peak:
//! with the defaults (60 s, skew 30 s) an entry lives about 90 s, so 100 000 entries
//! hold 1 100 requests per second, one key at most half of that.
//!
//! # Keys
//! Buckets are created when the VM starts (an absent key has no CAS token, and a
//! write without one could wipe another worker's entries); a request never creates
//! one. A bucket found missing (or the store failing, or eight lost races in a row)
//! refuses the proof: nothing is admitted that was not recorded. Without shared
//! data (APISIX) the same table lives in each VM's memory: exact per worker process,
//! so a proof may be accepted once by each worker.

use crate::hash::{fnv1a128, fnv1a64, mix64};
use crate::host::store::{get_or_create, Store, StoreError};

/// Entries per bucket.
pub const WAYS: usize = 64;
/// Most live entries one key may hold in a bucket.
pub const PER_KEY_SHARE: usize = WAYS / 4;
/// Fingerprint (16), last second accepted (4), key tag (4).
pub const ENTRY_BYTES: usize = 24;
/// The first byte of every bucket value: never empty, as the host reads an empty
/// value as no value.
const FORMAT: u8 = 1;
/// Lost compare-and-swap races before the proof is refused.
const MAX_ATTEMPTS: usize = 8;

/// What became of a proof offered to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// First seen: recorded, accept it.
    Fresh,
    /// Seen before, and still within its lifetime: a replay.
    Replay,
    /// Its bucket has no room it may take: refuse it (see the module docs).
    Full,
}

/// One issuer's replay table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayTable {
    prefix: String,
    buckets: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    fingerprint: u128,
    until: u32,
    tag: u32,
}

impl Entry {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.fingerprint.to_le_bytes());
        out.extend_from_slice(&self.until.to_le_bytes());
        out.extend_from_slice(&self.tag.to_le_bytes());
    }

    fn decode(bytes: &[u8]) -> Option<Entry> {
        let fingerprint = u128::from_le_bytes(bytes.get(..16)?.try_into().ok()?);
        let until = u32::from_le_bytes(bytes.get(16..20)?.try_into().ok()?);
        let tag = u32::from_le_bytes(bytes.get(20..24)?.try_into().ok()?);
        Some(Entry { fingerprint, until, tag })
    }
}

impl ReplayTable {
    /// The table of issuer `issuer` (its configured name) for `max_tracked` proofs.
    pub fn new(issuer: &str, max_tracked: u32) -> ReplayTable {
        let buckets = max_tracked.div_ceil(WAYS as u32).max(1);
        ReplayTable { prefix: format!("nhi-guard.dpop.r.{issuer}."), buckets }
    }

    pub fn buckets(&self) -> u32 {
        self.buckets
    }

    /// Bytes of values when every entry is live.
    pub fn capacity_bytes(&self) -> usize {
        self.buckets as usize * WAYS * ENTRY_BYTES
    }

    fn key(&self, bucket: u32) -> String {
        format!("{}{bucket}", self.prefix)
    }

    /// Creates every bucket that does not exist yet (empty). Call when the VM starts.
    pub fn prepare(&self, store: &dyn Store) -> Result<(), StoreError> {
        for bucket in 0..self.buckets {
            get_or_create(store, &self.key(bucket), &[FORMAT])?;
        }
        Ok(())
    }

    /// Records the proof of key `jkt` with `jti`, accepted until `until` (Unix
    /// seconds), at `now`.
    pub fn record<S: Store + ?Sized>(
        &self,
        store: &S,
        jkt: &str,
        jti: &str,
        until: i64,
        now: i64,
    ) -> Result<Recorded, StoreError> {
        let fingerprint = fnv1a128(&[b"dpop\xff", jkt.as_bytes(), b"\xff", jti.as_bytes()]);
        let tag = mix64(fnv1a64(jkt.as_bytes())) as u32;
        let bucket =
            (mix64((fingerprint as u64) ^ ((fingerprint >> 64) as u64)) % u64::from(self.buckets)) as u32;
        let key = self.key(bucket);
        let now = u32::try_from(now.max(0)).unwrap_or(u32::MAX);
        let until = u32::try_from(until.max(0)).unwrap_or(u32::MAX);
        for _ in 0..MAX_ATTEMPTS {
            let (value, cas) = store.get(&key)?;
            // Never created: refuse rather than create it here (see the module docs).
            let (Some(value), Some(cas)) = (value, cas) else { return Err(StoreError::Unavailable) };
            // A value of another format is read as empty (the host keeps keys across reloads).
            let entries = match value.split_first() {
                Some((&FORMAT, entries)) => entries,
                _ => &[],
            };
            let mut live: Vec<Entry> = entries
                .chunks_exact(ENTRY_BYTES)
                .filter_map(Entry::decode)
                .filter(|e| e.until >= now)
                .collect();
            if live.iter().any(|e| e.fingerprint == fingerprint) {
                return Ok(Recorded::Replay);
            }
            let crowded = live.len() >= WAYS / 2;
            if live.len() >= WAYS
                || (crowded && live.iter().filter(|e| e.tag == tag).count() >= PER_KEY_SHARE)
            {
                return Ok(Recorded::Full);
            }
            live.push(Entry { fingerprint, until, tag });
            let mut bytes = Vec::with_capacity(1 + live.len() * ENTRY_BYTES);
            bytes.push(FORMAT);
            for entry in &live {
                entry.encode(&mut bytes);
            }
            match store.set(&key, &bytes, Some(cas)) {
                Ok(()) => return Ok(Recorded::Fresh),
                Err(StoreError::CasMismatch) => continue,
                Err(err) => return Err(err),
            }
        }
        Err(StoreError::CasMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::store::MemoryStore;

    fn table(max: u32) -> (ReplayTable, MemoryStore) {
        let table = ReplayTable::new("ci", max);
        let store = MemoryStore::new();
        table.prepare(&store).unwrap();
        (table, store)
    }

    #[test]
    fn a_proof_is_fresh_once_and_a_replay_until_it_expires() {
        let (t, store) = table(1000);
        assert_eq!(t.record(&store, "key-a", "j1", 160, 100), Ok(Recorded::Fresh));
        assert_eq!(t.record(&store, "key-a", "j1", 160, 101), Ok(Recorded::Replay));
        assert_eq!(t.record(&store, "key-a", "j1", 160, 160), Ok(Recorded::Replay), "inclusive");
        // The same jti under another key is another proof.
        assert_eq!(t.record(&store, "key-b", "j1", 160, 101), Ok(Recorded::Fresh));
        // Once expired the entry is dropped (its proof fails the iat check anyway).
        assert_eq!(t.record(&store, "key-a", "j1", 300, 161), Ok(Recorded::Fresh));
    }

    #[test]
    fn a_full_bucket_refuses_and_never_evicts_a_live_entry() {
        // One bucket of 64.
        let (t, store) = table(64);
        assert_eq!(t.buckets(), 1);
        let keys: Vec<String> = (0..4).map(|k| format!("key-{k}")).collect();
        for key in &keys {
            for j in 0..PER_KEY_SHARE {
                assert_eq!(t.record(&store, key, &format!("j{j}"), 200, 100), Ok(Recorded::Fresh));
            }
        }
        assert_eq!(t.record(&store, "key-new", "j0", 200, 100), Ok(Recorded::Full));
        // Every live entry is still there: each replay is still caught.
        for key in &keys {
            for j in 0..PER_KEY_SHARE {
                assert_eq!(t.record(&store, key, &format!("j{j}"), 200, 150), Ok(Recorded::Replay));
            }
        }
        // Room again once entries expire.
        assert_eq!(t.record(&store, "key-new", "j0", 300, 201), Ok(Recorded::Fresh));
    }

    #[test]
    fn a_flooding_key_fills_only_its_share_and_others_keep_their_entries() {
        let (t, store) = table(640);
        assert_eq!(t.record(&store, "victim", "v1", 1_000, 100), Ok(Recorded::Fresh));
        let mut fresh = 0;
        let mut full = 0;
        for j in 0..10_000 {
            match t.record(&store, "flooder", &format!("f{j}"), 1_000, 100).unwrap() {
                Recorded::Fresh => fresh += 1,
                Recorded::Full => full += 1,
                Recorded::Replay => unreachable!(),
            }
        }
        // Half of each bucket (less one where the victim's entry is): the share applies
        // from half full on.
        assert_eq!(fresh, WAYS / 2 * t.buckets() as usize - 1, "half of each bucket");
        assert_eq!(full, 10_000 - fresh);
        // The victim's proof is still remembered, and other keys still find room.
        assert_eq!(t.record(&store, "victim", "v1", 1_000, 101), Ok(Recorded::Replay));
        for k in 0..50 {
            assert_eq!(t.record(&store, &format!("other-{k}"), "x", 1_000, 101), Ok(Recorded::Fresh));
        }
        // Memory is bounded by the table: one key per bucket, at most WAYS entries each.
        assert_eq!(store.len(), t.buckets() as usize);
        for bucket in 0..t.buckets() {
            let (value, _) = store.get(&t.key(bucket)).unwrap();
            assert!(value.unwrap().len() <= 1 + WAYS * ENTRY_BYTES);
        }
    }

    #[test]
    fn a_lost_race_reads_again_so_two_workers_never_both_record_one_proof() {
        /// A store where another worker records the same proof between our read and write.
        struct Racing<'a> {
            inner: &'a MemoryStore,
            table: &'a ReplayTable,
            raced: std::cell::Cell<bool>,
        }
        impl Store for Racing<'_> {
            fn get(&self, key: &str) -> Result<crate::host::store::Versioned, StoreError> {
                let got = self.inner.get(key);
                if !self.raced.replace(true) {
                    assert_eq!(self.table.record(self.inner, "k", "same", 200, 100), Ok(Recorded::Fresh));
                }
                got
            }
            fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
                self.inner.set(key, value, cas)
            }
        }
        let (t, store) = table(64);
        let racing = Racing { inner: &store, table: &t, raced: std::cell::Cell::new(false) };
        assert_eq!(t.record(&racing, "k", "same", 200, 100), Ok(Recorded::Replay));
    }

    #[test]
    fn a_missing_bucket_or_a_failing_store_refuses() {
        let t = ReplayTable::new("ci", 64);
        assert_eq!(t.record(&MemoryStore::new(), "k", "j", 200, 100), Err(StoreError::Unavailable));
    }

    #[test]
    fn the_size_of_100_000_proofs() {
        let t = ReplayTable::new("ci", 100_000);
        assert_eq!(t.buckets(), 1_563);
        assert_eq!(t.capacity_bytes(), 2_400_768);
        // A bucket is created non-empty: the host reads an empty value as none.
        let store = MemoryStore::new();
        t.prepare(&store).unwrap();
        assert_eq!(store.get(&t.key(7)).unwrap().0, Some(vec![FORMAT]));
    }
}
