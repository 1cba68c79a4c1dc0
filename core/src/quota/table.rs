//! The bounded identity table in the store: layout, fingerprints, and the
//! compare-and-swap loop that charges one request to one entry.
//!
//! The table has `max_tracked_identities` entries split over buckets of at most
//! [`WAYS`]; each bucket is one store key, `nhi-guard.q.b.<n>`. Its value is a
//! version byte followed by its live entries, 24 bytes each: a 128-bit fingerprint
//! of (issuer, subject, policy) and the TAT in nanoseconds, both big-endian.
//!
//! Keeping a whole bucket under one key is what makes the table exact across
//! workers: finding an identity, claiming a free entry for it and charging it are a
//! single compare-and-swap, so two workers can never give one identity two entries,
//! nor two identities one entry. (With one key per entry and probing, that needs a
//! transaction over several keys, which shared data does not have.)

use super::gcra::{self, Decision, Rate};
use crate::hash::{fmix64, fnv1a128};
use crate::host::store::{Store, StoreError};

/// Prefix of every store key this module writes.
pub const KEY_PREFIX: &str = "nhi-guard.q.";

/// Largest number of entries in one bucket (one store key).
///
/// A bucket is full when all of its entries are active, so wider buckets make
/// "full while the table has room" rarer. A new identity finds its bucket full
/// with probability about P(Poisson(load × WAYS) ≥ WAYS), load being active
/// identities over `max_tracked_identities`:
///
/// | ways | load 0.25 | 0.5    | 0.75  | 0.9  |
/// |------|-----------|--------|-------|------|
/// | 16   | 5e-6      | 0.8 %  | 16 %  | 37 % |
/// | 32   | 1e-10     | 0.03 % | 7 %   | 30 % |
/// | 64   | 8e-16     | 4e-7   | 1.6 % | 22 % |
///
/// The cost of width is copying up to 1 537 bytes per read and write (little next
/// to a signature check) and more identities sharing one CAS token (conflicts stay
/// rare: a write holds its window for microseconds).
pub const WAYS: usize = 64;

/// Bytes of one entry: 16 of fingerprint, 8 of TAT.
pub const ENTRY_BYTES: usize = 24;

/// Compare-and-swap attempts per key before giving up (see [`Charged::Contended`]).
pub const MAX_ATTEMPTS: usize = 8;

const VERSION: u8 = 1;

/// Who a budget belongs to, as stored: FNV-1a 128 of the fields.
///
/// FNV-1a 128 is small, stable across builds and targets (unlike std's hashers),
/// and wide enough that a chance collision within a bucket (≤ 16 comparisons per
/// lookup, 2⁻¹²⁸ each) never happens in practice. It is not keyed: someone who can
/// choose subjects at a trusted issuer could search for a colliding pair offline;
/// the two identities would then share one budget. Nothing is granted beyond it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(u128);

/// Separates the hashed fields; 0xFF never occurs in UTF-8, so no two different
/// (issuer, subject, policy) triples hash the same bytes.
const SEPARATOR: &[u8] = &[0xFF];
/// Starts the overflow fingerprint; 0xFE never occurs in UTF-8 either.
const OVERFLOW_TAG: &[u8] = &[0xFE];

impl Fingerprint {
    /// One identity under one policy: the same subject under two policies has two
    /// budgets, and the same subject from two issuers is two identities.
    pub fn identity(issuer: &str, subject: &str, policy: &str) -> Fingerprint {
        Fingerprint(fnv1a128(&[
            issuer.as_bytes(),
            SEPARATOR,
            subject.as_bytes(),
            SEPARATOR,
            policy.as_bytes(),
        ]))
    }

    /// One identity together with one of its DPoP keys (`quotas.per_dpop_key`).
    pub fn identity_key(issuer: &str, subject: &str, jkt: &str, policy: &str) -> Fingerprint {
        Fingerprint(fnv1a128(&[
            issuer.as_bytes(),
            SEPARATOR,
            subject.as_bytes(),
            SEPARATOR,
            b"jkt:",
            jkt.as_bytes(),
            SEPARATOR,
            policy.as_bytes(),
        ]))
    }

    /// The shared overflow budget of one policy.
    pub fn overflow(policy: &str) -> Fingerprint {
        Fingerprint(fnv1a128(&[OVERFLOW_TAG, policy.as_bytes()]))
    }

    /// A well-mixed 64-bit value for picking the bucket: FNV's low bits are weak
    /// (the lowest is the parity of the input), so fold and finalise (MurmurHash3's
    /// fmix64) before reducing.
    fn spread(self) -> u64 {
        fmix64((self.0 >> 64) as u64 ^ self.0 as u64)
    }
}

/// How `max_tracked_identities` entries are split into buckets: as few buckets as
/// [`WAYS`] allows, with capacities differing by at most one and summing to exactly
/// the maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    max_entries: u32,
    buckets: u32,
}

impl Geometry {
    pub fn new(max_entries: u32) -> Geometry {
        let max_entries = max_entries.max(1);
        Geometry { max_entries, buckets: max_entries.div_ceil(WAYS as u32) }
    }

    pub fn buckets(&self) -> u32 {
        self.buckets
    }

    pub fn bucket_of(&self, fp: Fingerprint) -> u32 {
        let index = fp.spread().checked_rem(u64::from(self.buckets)).unwrap_or(0);
        u32::try_from(index).unwrap_or(0)
    }

    pub fn capacity(&self, bucket: u32) -> usize {
        let base = self.max_entries.checked_div(self.buckets).unwrap_or(0);
        let extra = self.max_entries.checked_rem(self.buckets).unwrap_or(0);
        (base + u32::from(bucket < extra)) as usize
    }
}

pub fn bucket_key(bucket: u32) -> String {
    format!("{KEY_PREFIX}b.{bucket}")
}

/// Policy names are validated to a key-safe alphabet, so they can name keys.
pub fn overflow_key(policy: &str) -> String {
    format!("{KEY_PREFIX}o.{policy}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    fp: Fingerprint,
    tat: u64,
}

/// The stored value of a bucket with no entries. Never zero bytes: the SDK cannot
/// tell an empty value from a missing one.
const EMPTY: [u8; 1] = [VERSION];

fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + entries.len() * ENTRY_BYTES);
    out.push(VERSION);
    for entry in entries {
        out.extend_from_slice(&entry.fp.0.to_be_bytes());
        out.extend_from_slice(&entry.tat.to_be_bytes());
    }
    out
}

/// `None` for anything this version did not write.
fn decode(bytes: &[u8]) -> Option<Vec<Entry>> {
    let (&version, body) = bytes.split_first()?;
    if version != VERSION || body.len() % ENTRY_BYTES != 0 || body.len() / ENTRY_BYTES > WAYS {
        return None;
    }
    body.chunks_exact(ENTRY_BYTES)
        .map(|chunk| {
            let (fp, tat) = chunk.split_first_chunk::<16>()?;
            Some(Entry {
                fp: Fingerprint(u128::from_be_bytes(*fp)),
                tat: u64::from_be_bytes(tat.try_into().ok()?),
            })
        })
        .collect()
}

/// The result of charging one request to one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charged {
    /// Decided against the key's state; when allowed, the charge is stored.
    Decided {
        decision: Decision,
        /// The key held something this version cannot read; it was replaced.
        reset_corrupt: bool,
        /// Admissions charged beyond this request's, for the caller to hand out
        /// later ([`crate::quota::Leases`]); already in `decision`'s TAT and
        /// `remaining`.
        leased: u64,
    },
    /// The identity has no entry and every entry of its bucket is active.
    Full,
    /// Every attempt lost its compare-and-swap race. `last` is the decision from
    /// the last state read (one that needed a write: plain refusals cannot lose a
    /// race). Nothing was stored.
    Contended { last: Decision },
}

/// Charges one request of `fp` to the bucket at `key`.
///
/// Each attempt reads the bucket and its CAS token, forgets idle entries, decides
/// with GCRA, and, when the decision changed the TAT (an admission, or a clock-step
/// repair), writes the bucket back with the token. A
/// mismatch means another worker wrote the bucket meanwhile: read again and
/// redecide, so no update is lost.
///
/// A key that does not exist has no token, and a write without one cannot fail,
/// so it is not safe to write data into it: a second worker that also found it
/// missing could overwrite that data. The key is created holding the empty bucket,
/// the only value ever written without a token, then read back for a token like
/// any other (the remaining race is bounded in the `quota` module docs).
pub fn charge<S: Store + ?Sized>(
    store: &S,
    key: &str,
    capacity: usize,
    fp: Fingerprint,
    rate: Rate,
    now: u64,
    lease: impl Fn(u64) -> u64,
) -> Result<Charged, StoreError> {
    let mut last = None;
    for _ in 0..MAX_ATTEMPTS {
        let (value, cas) = store.get(key).map_err(|_| StoreError::Unavailable)?;
        let (mut entries, reset_corrupt, cas) = match (value, cas) {
            (value, Some(cas)) => match value.as_deref().and_then(decode) {
                Some(entries) => (entries, false, cas),
                None => (Vec::new(), true, cas),
            },
            (None, None) => {
                store.set(key, &EMPTY, None).map_err(|_| StoreError::Unavailable)?;
                continue;
            }
            // A value without a token: this host cannot do compare-and-swap, and
            // blind writes would lose concurrent updates.
            (Some(_), None) => return Err(StoreError::Unavailable),
        };
        entries.retain(|e| !gcra::is_idle(e.tat, now));
        let mine = entries.iter().position(|e| e.fp == fp);
        let stored = mine.and_then(|i| entries.get(i)).map(|e| e.tat);
        let mut decision = gcra::decide(rate, stored, now);
        if !decision.persist {
            return Ok(Charged::Decided { decision, reset_corrupt, leased: 0 });
        }
        // More admissions charged at once (each conforms now: `remaining` counts them).
        let leased = if decision.allowed { lease(decision.remaining).min(decision.remaining) } else { 0 };
        decision.tat = decision.tat.saturating_add(leased.saturating_mul(rate.emission_ns()));
        decision.remaining -= leased;
        let full = entries.len() >= capacity;
        match mine.and_then(|i| entries.get_mut(i)) {
            Some(entry) => entry.tat = decision.tat,
            None if full => return Ok(Charged::Full),
            None => entries.push(Entry { fp, tat: decision.tat }),
        }
        match store.set(key, &encode(&entries), Some(cas)) {
            Ok(()) => return Ok(Charged::Decided { decision, reset_corrupt, leased }),
            Err(StoreError::CasMismatch) => last = Some(decision),
            Err(StoreError::Unavailable) => return Err(StoreError::Unavailable),
        }
    }
    match last {
        Some(last) => Ok(Charged::Contended { last }),
        // Every attempt found the key missing and created it, yet never saw it:
        // the store is not keeping what it is given.
        None => Err(StoreError::Unavailable),
    }
}

/// Gives `n` admissions charged to `fp` and never used back: moves its TAT `n`
/// emission intervals earlier, exactly undoing their charge. A few compare-and-swap
/// tries; losing them all, or finding the entry gone, leaves the budget spent (the
/// identity gets less than its limit for a moment, never more).
pub fn refund<S: Store + ?Sized>(store: &S, key: &str, fp: Fingerprint, rate: Rate, n: u64) {
    for _ in 0..MAX_ATTEMPTS {
        let Ok((Some(value), Some(cas))) = store.get(key) else { return };
        let Some(mut entries) = decode(&value) else { return };
        let Some(entry) = entries.iter_mut().find(|e| e.fp == fp) else { return };
        entry.tat = entry.tat.saturating_sub(n.saturating_mul(rate.emission_ns()));
        match store.set(key, &encode(&entries), Some(cas)) {
            Err(StoreError::CasMismatch) => continue,
            _ => return,
        }
    }
}

/// Creates `key` with an empty bucket unless it exists. Returns whether it did.
pub fn create<S: Store + ?Sized>(store: &S, key: &str) -> Result<bool, StoreError> {
    match store.get(key).map_err(|_| StoreError::Unavailable)? {
        (None, None) => {
            store.set(key, &EMPTY, None).map_err(|_| StoreError::Unavailable)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::store::MemoryStore;

    const MS: u64 = 1_000_000;
    const T0: u64 = 1_700_000_000 * gcra::NANOS_PER_SECOND;

    #[test]
    fn identity_fingerprints_are_pinned() {
        // Pinned: a change here silently re-homes every identity after an upgrade.
        assert_eq!(
            Fingerprint::identity("ci", "system:serviceaccount:ci:deployer", "default").0,
            0x2cfd4c41891557f40f3bafb6eb75a85f
        );
    }

    #[test]
    fn fingerprints_separate_fields_and_policies() {
        let a = Fingerprint::identity("ab", "c", "p");
        assert_ne!(a, Fingerprint::identity("a", "bc", "p"));
        assert_ne!(a, Fingerprint::identity("ab", "c", "q"));
        assert_ne!(a, Fingerprint::identity("ab", "", "cp"));
        assert_ne!(Fingerprint::overflow("p"), Fingerprint::identity("", "", "p"));
    }

    #[test]
    fn geometry_capacities_sum_to_the_maximum() {
        for max in [1, 2, 15, 16, 17, 20, 63, 64, 65, 100, 1000, 10_000, 100_001, 1_000_000] {
            let g = Geometry::new(max);
            let caps: Vec<usize> = (0..g.buckets()).map(|b| g.capacity(b)).collect();
            assert_eq!(caps.iter().sum::<usize>(), max as usize, "max {max}");
            assert!(caps.iter().all(|c| (1..=WAYS).contains(c)), "max {max}");
            let spread = caps.iter().max().unwrap() - caps.iter().min().unwrap();
            assert!(spread <= 1);
        }
        assert_eq!(Geometry::new(100).capacity(0), 50);
        assert_eq!(Geometry::new(10_000).buckets(), 157);
        assert_eq!(Geometry::new(0), Geometry::new(1));
    }

    #[test]
    fn buckets_are_used_evenly() {
        let g = Geometry::new(WAYS as u32 * 64);
        assert_eq!(g.buckets(), 64);
        let mut counts = vec![0u32; 64];
        for i in 0..64_000 {
            let fp = Fingerprint::identity("ci", &format!("job-{i}"), "default");
            counts[g.bucket_of(fp) as usize] += 1;
        }
        // 1000 expected per bucket; a fair hash stays well within ±20 %.
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }

    #[test]
    fn keys_are_stable() {
        assert_eq!(bucket_key(7), "nhi-guard.q.b.7");
        assert_eq!(overflow_key("rule-1"), "nhi-guard.q.o.rule-1");
    }

    #[test]
    fn buckets_round_trip_and_reject_foreign_bytes() {
        let entries =
            vec![Entry { fp: Fingerprint(1), tat: 2 }, Entry { fp: Fingerprint(u128::MAX), tat: u64::MAX }];
        let bytes = encode(&entries);
        assert_eq!(bytes.len(), 1 + 2 * ENTRY_BYTES);
        assert_eq!(decode(&bytes), Some(entries));
        assert_eq!(decode(&EMPTY), Some(vec![]));
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[2]), None);
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
        let too_many = encode(&vec![Entry { fp: Fingerprint(0), tat: 0 }; WAYS + 1]);
        assert_eq!(decode(&too_many), None);
    }

    fn stored(store: &MemoryStore, key: &str) -> Vec<Entry> {
        decode(&store.get(key).unwrap().0.unwrap()).unwrap()
    }

    #[test]
    fn a_missing_key_is_created_empty_then_charged_with_cas() {
        let store = MemoryStore::new();
        let rate = Rate::new(10, 1, 5);
        let fp = Fingerprint(42);
        let out = charge(&store, "k", 4, fp, rate, T0, |_| 0).unwrap();
        assert!(matches!(out, Charged::Decided { decision, reset_corrupt: false, .. } if decision.allowed));
        assert_eq!(stored(&store, "k"), [Entry { fp, tat: T0 + 100 * MS }]);
        assert!(!create(&store, "k").unwrap());
        assert!(create(&store, "other").unwrap());
        assert_eq!(stored(&store, "other"), []);
    }

    #[test]
    fn an_unreadable_value_is_replaced_and_reported() {
        let store = MemoryStore::new();
        store.set("k", b"garbage", None).unwrap();
        let out = charge(&store, "k", 4, Fingerprint(1), Rate::new(1, 1, 1), T0, |_| 0).unwrap();
        assert!(matches!(out, Charged::Decided { decision, reset_corrupt: true, .. } if decision.allowed));
        assert_eq!(stored(&store, "k").len(), 1);
        // The next request reads our own bytes again.
        let out = charge(&store, "k", 4, Fingerprint(1), Rate::new(1, 1, 1), T0, |_| 0).unwrap();
        assert!(matches!(out, Charged::Decided { decision, reset_corrupt: false, .. } if !decision.allowed));
    }

    #[test]
    fn idle_entries_are_dropped_on_write() {
        let store = MemoryStore::new();
        let rate = Rate::new(10, 1, 1);
        charge(&store, "k", 2, Fingerprint(1), rate, T0, |_| 0).unwrap();
        charge(&store, "k", 2, Fingerprint(2), rate, T0 + 50 * MS, |_| 0).unwrap();
        // Fingerprint 1 is idle at T0 + 100 ms; 2 is not.
        charge(&store, "k", 2, Fingerprint(3), rate, T0 + 100 * MS, |_| 0).unwrap();
        let fps: Vec<u128> = stored(&store, "k").iter().map(|e| e.fp.0).collect();
        assert_eq!(fps, [2, 3]);
    }

    #[test]
    fn a_host_without_cas_tokens_is_unavailable() {
        struct NoCas;
        impl Store for NoCas {
            fn get(&self, _: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
                Ok((Some(EMPTY.to_vec()), None))
            }
            fn set(&self, _: &str, _: &[u8], _: Option<u32>) -> Result<(), StoreError> {
                Ok(())
            }
        }
        let out = charge(&NoCas, "k", 4, Fingerprint(1), Rate::new(1, 1, 1), T0, |_| 0);
        assert_eq!(out, Err(StoreError::Unavailable));
    }

    #[test]
    fn a_store_that_forgets_is_unavailable_not_a_loop() {
        struct Forgetful;
        impl Store for Forgetful {
            fn get(&self, _: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
                Ok((None, None))
            }
            fn set(&self, _: &str, _: &[u8], _: Option<u32>) -> Result<(), StoreError> {
                Ok(())
            }
        }
        let out = charge(&Forgetful, "k", 4, Fingerprint(1), Rate::new(1, 1, 1), T0, |_| 0);
        assert_eq!(out, Err(StoreError::Unavailable));
    }
}
