//! The shared table of baselines: at most `max_tracked_identities` entries, in
//! buckets of up to [`WAYS`], one shared-data key per bucket
//! (`nhi-guard/bh/<bucket>`). Envoy never deletes a key, so the keys are a fixed set;
//! an identity hashes to one bucket.
//!
//! A full bucket makes room by dropping its least recently seen entry if that
//! identity has been silent for longer than `dormant_after_seconds` (its return
//! would have been flagged as `dormant_returned`; now it starts afresh); otherwise the
//! new identity is not tracked. Updates are read, merge, compare-and-swap, retried
//! a few times; a key that does not exist yet is created empty first (the creation
//! race can lose what another worker merged within the same microseconds: this is a
//! baseline, not a limit).

use crate::host::store::{get_or_create, Store, StoreError};

use super::baseline::{Entry, ENTRY_LEN};

pub const WAYS: usize = 16;
const VERSION: u8 = 1;
const MAX_ATTEMPTS: usize = 8;

/// What a merge did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Merged {
    Tracked(Entry),
    /// The identity's bucket is full of identities seen recently.
    Untracked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    buckets: u32,
}

impl Table {
    pub fn new(max_tracked_identities: u32) -> Table {
        Table { buckets: max_tracked_identities.div_ceil(WAYS as u32).max(1) }
    }

    fn key(&self, fingerprint: u128) -> String {
        let spread = crate::hash::fmix64((fingerprint >> 64) as u64 ^ fingerprint as u64);
        format!("nhi-guard/bh/{}", spread % u64::from(self.buckets))
    }

    /// Reads the entry of `fingerprint`, if tracked.
    pub fn get(&self, store: &dyn Store, fingerprint: u128) -> Result<Option<Entry>, StoreError> {
        let (bytes, _) = store.get(&self.key(fingerprint))?;
        Ok(bytes
            .and_then(|b| decode(&b))
            .and_then(|entries| entries.into_iter().find(|e| e.fingerprint == fingerprint)))
    }

    /// Applies `update` to the entry of `fingerprint` (a new entry when there is
    /// none and room for one) and writes it back, exactly once across workers.
    pub fn merge(
        &self,
        store: &dyn Store,
        fingerprint: u128,
        now: u64,
        dormant_after_seconds: u64,
        fresh: Entry,
        update: impl Fn(&mut Entry),
    ) -> Result<Merged, StoreError> {
        let key = self.key(fingerprint);
        for _ in 0..MAX_ATTEMPTS {
            let (bytes, cas) = get_or_create(store, &key, &[VERSION])?;
            // A bucket this version cannot read starts over (a baseline, not a limit).
            let mut entries = decode(&bytes).unwrap_or_default();
            let index = match entries.iter().position(|e| e.fingerprint == fingerprint) {
                Some(index) => index,
                None if entries.len() < WAYS => {
                    entries.push(fresh);
                    entries.len() - 1
                }
                None => {
                    let stalest = entries
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, e)| e.last_seen)
                        .map(|(i, e)| (i, e.last_seen));
                    match stalest {
                        Some((i, seen)) if now.saturating_sub(seen) > dormant_after_seconds => {
                            if let Some(slot) = entries.get_mut(i) {
                                *slot = fresh;
                            }
                            i
                        }
                        _ => return Ok(Merged::Untracked),
                    }
                }
            };
            let Some(entry) = entries.get_mut(index) else { return Ok(Merged::Untracked) };
            update(entry);
            let merged = *entry;
            match store.set(&key, &encode(&entries), Some(cas)) {
                Ok(()) => return Ok(Merged::Tracked(merged)),
                Err(StoreError::CasMismatch) => continue,
                Err(err) => return Err(err),
            }
        }
        Err(StoreError::CasMismatch)
    }
}

fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + entries.len() * ENTRY_LEN);
    out.push(VERSION);
    for entry in entries {
        entry.encode(&mut out);
    }
    out
}

fn decode(bytes: &[u8]) -> Option<Vec<Entry>> {
    let (&version, rest) = bytes.split_first()?;
    if version != VERSION || rest.len() % ENTRY_LEN != 0 || rest.len() / ENTRY_LEN > WAYS {
        return None;
    }
    rest.chunks_exact(ENTRY_LEN).map(Entry::decode).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::store::MemoryStore;

    #[test]
    fn merges_accumulate_and_stay_within_the_bucket_bound() {
        let store = MemoryStore::new();
        let table = Table::new(WAYS as u32); // one bucket
        let add = |e: &mut Entry| {
            e.count += 1;
            e.last_seen = 100;
        };
        for _ in 0..3 {
            table.merge(&store, 42, 100, 1_000, Entry::new(42, 100, 1), add).unwrap();
        }
        assert_eq!(table.get(&store, 42).unwrap().map(|e| e.count), Some(3));
        for fp in 0..WAYS as u128 - 1 {
            let merged =
                table.merge(&store, 1_000 + fp, 100, 1_000, Entry::new(1_000 + fp, 100, 1), add).unwrap();
            assert!(matches!(merged, Merged::Tracked(_)));
        }
        assert_eq!(
            table.merge(&store, 9, 100, 1_000, Entry::new(9, 100, 1), add).unwrap(),
            Merged::Untracked,
            "full of recent identities"
        );
        // Long after, the stalest makes room.
        let late = |e: &mut Entry| e.last_seen = 5_000;
        assert!(matches!(
            table.merge(&store, 9, 5_000, 1_000, Entry::new(9, 5_000, 1), late).unwrap(),
            Merged::Tracked(_)
        ));
        assert_eq!(store.len(), 1, "one key for the whole table");
        let (bytes, _) = store.get(&table.key(9)).unwrap();
        assert_eq!(bytes.unwrap().len(), 1 + WAYS * ENTRY_LEN);
    }

    #[test]
    fn a_bucket_of_another_version_starts_over() {
        let store = MemoryStore::new();
        let table = Table::new(1);
        store.set(&table.key(5), b"\x02garbage", None).unwrap();
        let merged = table.merge(&store, 5, 10, 100, Entry::new(5, 10, 0), |e| e.count = 1).unwrap();
        assert!(matches!(merged, Merged::Tracked(e) if e.count == 1));
    }
}
