//! The forged-token flood guard: a per-source budget of failed signature checks.
//!
//! A signature check costs hundreds of microseconds inside a wasm VM, so a client
//! that sends well-formed tokens with forged signatures can keep a core busy. Each
//! source address (the connection's IP) gets `max_failures` failed signature checks
//! per `window_seconds`; past that, its tokens are refused with `429
//! too_many_failures` *without* a signature check until the window ends (tokens
//! already in the verified-token cache still pass: they cost no crypto). Other
//! sources keep their throughput.
//!
//! State: `max_sources` fixed shared-data slots (`nhi-guard/fg/<n>`), chosen by a
//! hash of the address; a slot holds one source's fingerprint, window start and
//! count (24 bytes). Only failed signature checks write. A slot is taken over by
//! another source only when its window has ended or its source is under budget,
//! so a flooding source cannot be evicted by spraying addresses, and a source that
//! shares a slot with a blocked flooder is simply not tracked (never blocked in
//! its place). Behind a NAT all clients share one address: size the budget for it.

use std::cell::RefCell;
use std::net::IpAddr;

use crate::json::{self, FromJson};
use serde::Deserialize;

use crate::error::ConfigError;
use crate::hash::fnv1a64;
use crate::host::store::{Store, StoreError};

const VERSION: u8 = 1;
const SLOT_LEN: usize = 1 + 8 + 8 + 4;
pub const DEFAULT_MAX_FAILURES: u32 = 100;
pub const DEFAULT_WINDOW_SECONDS: u64 = 10;
pub const DEFAULT_MAX_SOURCES: u32 = 4_096;
const MAX_ATTEMPTS: usize = 4;

/// `flood_guard` in the plugin configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawFloodGuard {
    /// `false` turns the guard off. Default `true`.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Failed signature checks a source may cause per window. Default 100.
    #[serde(default)]
    pub max_failures: Option<u32>,
    /// Default 10.
    #[serde(default)]
    pub window_seconds: Option<u64>,
    /// Sources tracked at once (shared-data slots). Default 4096.
    #[serde(default)]
    pub max_sources: Option<u32>,
}

impl FromJson for RawFloodGuard {
    fn from_json(value: serde_json::Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawFloodGuard {
            enabled: o.optional("enabled"),
            max_failures: o.optional("max_failures"),
            window_seconds: o.optional("window_seconds"),
            max_sources: o.optional("max_sources"),
        })
    }
}

/// The validated guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloodGuard {
    pub max_failures: u32,
    pub window_seconds: u64,
    pub max_sources: u32,
}

/// Validates the `flood_guard` block found at `at`; `None` when disabled.
pub fn compile(raw: Option<RawFloodGuard>, at: &str) -> Result<Option<FloodGuard>, ConfigError> {
    let raw = raw.unwrap_or_default();
    if raw.enabled == Some(false) {
        return Ok(None);
    }
    let invalid = |field: &str, reason: &str| ConfigError::Invalid {
        field: format!("{at}.{field}"),
        reason: reason.into(),
    };
    let guard = FloodGuard {
        max_failures: raw.max_failures.unwrap_or(DEFAULT_MAX_FAILURES),
        window_seconds: raw.window_seconds.unwrap_or(DEFAULT_WINDOW_SECONDS),
        max_sources: raw.max_sources.unwrap_or(DEFAULT_MAX_SOURCES),
    };
    if guard.max_failures == 0 {
        return Err(invalid("max_failures", "must be at least 1 (set enabled: false to turn the guard off)"));
    }
    if !(1..=3_600).contains(&guard.window_seconds) {
        return Err(invalid("window_seconds", "must be between 1 and 3600"));
    }
    if !(1..=1_000_000).contains(&guard.max_sources) {
        return Err(invalid("max_sources", "must be between 1 and 1000000"));
    }
    Ok(Some(guard))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    source: u64,
    window_start: u64,
    failures: u32,
}

impl Slot {
    fn encode(&self) -> [u8; SLOT_LEN] {
        let mut out = [0u8; SLOT_LEN];
        let (version, rest) = out.split_at_mut(1);
        let (source, rest) = rest.split_at_mut(8);
        let (start, failures) = rest.split_at_mut(8);
        version.copy_from_slice(&[VERSION]);
        source.copy_from_slice(&self.source.to_be_bytes());
        start.copy_from_slice(&self.window_start.to_be_bytes());
        failures.copy_from_slice(&self.failures.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Slot> {
        let (&version, rest) = bytes.split_first()?;
        if version != VERSION {
            return None;
        }
        let (source, rest) = rest.split_first_chunk::<8>()?;
        let (start, rest) = rest.split_first_chunk::<8>()?;
        let (failures, _) = rest.split_first_chunk::<4>()?;
        Some(Slot {
            source: u64::from_be_bytes(*source),
            window_start: u64::from_be_bytes(*start),
            failures: u32::from_be_bytes(*failures),
        })
    }
}

impl FloodGuard {
    fn fingerprint(source: IpAddr) -> u64 {
        // Never 0, so an empty slot never matches a source.
        fnv1a64(source.to_string().as_bytes()) | 1
    }

    fn key(&self, fingerprint: u64) -> String {
        format!("nhi-guard/fg/{}", fingerprint % u64::from(self.max_sources))
    }

    fn window_ends(&self, slot: &Slot) -> u64 {
        slot.window_start.saturating_add(self.window_seconds)
    }

    /// Seconds until `source` may cause signature checks again; `None` while it may.
    /// A store that cannot be read blocks nobody (the guard protects CPU, it does not
    /// authenticate).
    pub fn blocked_for(&self, store: &dyn Store, source: IpAddr, now: u64) -> Option<u64> {
        let fp = Self::fingerprint(source);
        let (bytes, _) = store.get(&self.key(fp)).ok()?;
        let slot = Slot::decode(&bytes?)?;
        let ends = self.window_ends(&slot);
        (slot.source == fp && now < ends && slot.failures >= self.max_failures)
            .then(|| ends.saturating_sub(now).max(1))
    }

    /// [`FloodGuard::blocked_for`], answered from `known` while this VM knows of the
    /// block (a block ends with its window and nothing lifts it earlier), and
    /// remembered there when the shared slot shows one.
    pub fn blocked_for_known(
        &self,
        store: &dyn Store,
        known: &RefCell<BlockedSources>,
        source: IpAddr,
        now: u64,
    ) -> Option<u64> {
        if let Some(seconds) = known.try_borrow().ok().and_then(|k| k.blocked_for(source, now)) {
            return Some(seconds);
        }
        let seconds = self.blocked_for(store, source, now)?;
        if let Ok(mut known) = known.try_borrow_mut() {
            known.remember(source, now, seconds);
        }
        Some(seconds)
    }

    /// Counts one failed signature check by `source` (compare-and-swap, a few tries;
    /// losing them all just leaves this failure uncounted).
    pub fn record_failure(&self, store: &dyn Store, source: IpAddr, now: u64) -> Result<(), StoreError> {
        let fp = Self::fingerprint(source);
        let key = self.key(fp);
        for _ in 0..MAX_ATTEMPTS {
            let (bytes, cas) = store.get(&key)?;
            let current = bytes.as_deref().and_then(Slot::decode);
            let next = match current {
                Some(slot) if slot.source == fp && now < self.window_ends(&slot) => {
                    Slot { failures: slot.failures.saturating_add(1), ..slot }
                }
                // Another source holds the slot: take it over only when that source
                // is not an active flooder.
                Some(slot) if now < self.window_ends(&slot) && slot.failures >= self.max_failures => {
                    return Ok(())
                }
                _ => Slot { source: fp, window_start: now, failures: 1 },
            };
            // A missing key has no CAS: the first write creates it (a lost race there
            // costs at most one uncounted failure).
            match store.set(&key, &next.encode(), cas) {
                Ok(()) => return Ok(()),
                Err(StoreError::CasMismatch) => continue,
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }
}

/// Sources this VM has seen the guard block, with the second their block ends: a
/// blocked flooder's next tokens are refused without reading the shared slot again
/// (one host call fewer per refused token, so a forged token costs about what no
/// token does). Exact: a block lasts until its window ends and nothing lifts it
/// earlier. Holds only sources the shared guard already blocked, at most
/// [`BlockedSources::CAPACITY`]; when full, the block that ends first makes room.
#[derive(Debug, Default)]
pub struct BlockedSources {
    blocked: Vec<(IpAddr, u64)>,
}

impl BlockedSources {
    pub const CAPACITY: usize = 64;

    /// Seconds until `source`'s known block ends, if this VM knows of one.
    pub fn blocked_for(&self, source: IpAddr, now: u64) -> Option<u64> {
        self.blocked.iter().find(|(ip, ends)| *ip == source && now < *ends).map(|(_, ends)| ends - now)
    }

    /// Remembers that `source` is blocked for `seconds` from `now`.
    pub fn remember(&mut self, source: IpAddr, now: u64, seconds: u64) {
        let ends = now.saturating_add(seconds);
        self.blocked.retain(|(ip, until)| *ip != source && now < *until);
        if self.blocked.len() >= Self::CAPACITY {
            if let Some(first) =
                self.blocked.iter().enumerate().min_by_key(|(_, (_, until))| *until).map(|(i, _)| i)
            {
                self.blocked.swap_remove(first);
            }
        }
        self.blocked.push((source, ends));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::store::MemoryStore;

    fn guard(max_failures: u32) -> FloodGuard {
        FloodGuard { max_failures, window_seconds: 10, max_sources: 64 }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_source_is_blocked_after_its_budget_until_the_window_ends() {
        let (g, store) = (guard(3), MemoryStore::new());
        let a = ip("203.0.113.7");
        for _ in 0..2 {
            g.record_failure(&store, a, 100).unwrap();
        }
        assert_eq!(g.blocked_for(&store, a, 101), None);
        g.record_failure(&store, a, 101).unwrap();
        assert_eq!(g.blocked_for(&store, a, 102), Some(8));
        assert_eq!(g.blocked_for(&store, a, 109), Some(1));
        assert_eq!(g.blocked_for(&store, a, 110), None, "a new window");
        g.record_failure(&store, a, 110).unwrap();
        assert_eq!(g.blocked_for(&store, a, 110), None, "the count restarted");
    }

    #[test]
    fn other_sources_are_not_affected() {
        let (g, store) = (guard(2), MemoryStore::new());
        let (a, b) = (ip("203.0.113.7"), ip("2001:db8::1"));
        g.record_failure(&store, a, 0).unwrap();
        g.record_failure(&store, a, 0).unwrap();
        assert!(g.blocked_for(&store, a, 1).is_some());
        assert_eq!(g.blocked_for(&store, b, 1), None);
    }

    #[test]
    fn a_blocked_flooder_keeps_its_slot_and_never_blocks_a_neighbour() {
        // One slot for everyone: the worst case of sharing.
        let g = FloodGuard { max_failures: 2, window_seconds: 10, max_sources: 1 };
        let store = MemoryStore::new();
        let (flooder, neighbour) = (ip("198.51.100.1"), ip("198.51.100.2"));
        g.record_failure(&store, flooder, 0).unwrap();
        g.record_failure(&store, flooder, 0).unwrap();
        // The neighbour's failures cannot evict the blocked flooder…
        for _ in 0..5 {
            g.record_failure(&store, neighbour, 1).unwrap();
        }
        assert!(g.blocked_for(&store, flooder, 2).is_some());
        // …and the neighbour is never blocked in its place.
        assert_eq!(g.blocked_for(&store, neighbour, 2), None);
    }

    #[test]
    fn an_under_budget_source_can_be_displaced() {
        let g = FloodGuard { max_failures: 5, window_seconds: 10, max_sources: 1 };
        let store = MemoryStore::new();
        let (a, b) = (ip("198.51.100.1"), ip("198.51.100.2"));
        g.record_failure(&store, a, 0).unwrap();
        for _ in 0..5 {
            g.record_failure(&store, b, 1).unwrap();
        }
        assert!(g.blocked_for(&store, b, 2).is_some());
        assert_eq!(store.len(), 1, "bounded by max_sources");
    }

    #[test]
    fn config_defaults_and_errors() {
        let g = compile(None, "flood_guard").unwrap().unwrap();
        assert_eq!((g.max_failures, g.window_seconds, g.max_sources), (100, 10, 4_096));
        let off = RawFloodGuard { enabled: Some(false), ..Default::default() };
        assert_eq!(compile(Some(off), "flood_guard").unwrap(), None);
        let zero = RawFloodGuard { max_failures: Some(0), ..Default::default() };
        match compile(Some(zero), "flood_guard") {
            Err(ConfigError::Invalid { field, .. }) => assert_eq!(field, "flood_guard.max_failures"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn slots_round_trip() {
        let s = Slot { source: 7, window_start: 9, failures: 3 };
        assert_eq!(Slot::decode(&s.encode()), Some(s));
        assert_eq!(Slot::decode(&[2, 0]), None);
    }

    #[test]
    fn a_known_block_is_answered_locally_until_it_ends_and_the_list_is_bounded() {
        let mut memo = BlockedSources::default();
        let a: IpAddr = "203.0.113.66".parse().unwrap();
        assert_eq!(memo.blocked_for(a, 100), None);
        memo.remember(a, 100, 7);
        assert_eq!(memo.blocked_for(a, 100), Some(7));
        assert_eq!(memo.blocked_for(a, 106), Some(1));
        assert_eq!(memo.blocked_for(a, 107), None, "the block ends with its window");
        assert_eq!(memo.blocked_for("203.0.113.67".parse().unwrap(), 100), None);
        for i in 0..200u32 {
            memo.remember(IpAddr::from(i.to_be_bytes()), 100, 10 + u64::from(i));
        }
        assert_eq!(memo.blocked.len(), BlockedSources::CAPACITY);
        // The blocks that end first made room; the latest are kept.
        assert_eq!(memo.blocked_for(IpAddr::from(199u32.to_be_bytes()), 100), Some(209));
        assert_eq!(memo.blocked_for(IpAddr::from(0u32.to_be_bytes()), 100), None);
    }

    /// A block read from the shared slot once is then answered by the VM until it ends,
    /// with the same seconds the slot would give.
    #[test]
    fn a_known_block_needs_no_second_read_of_the_slot() {
        let g = guard(1);
        let store = crate::host::memory::FaultyStore::<MemoryStore>::default();
        let known = RefCell::new(BlockedSources::default());
        let a = ip("203.0.113.66");
        assert_eq!(g.blocked_for_known(&store, &known, a, 100), None);
        g.record_failure(&store, a, 100).unwrap();
        assert_eq!(g.blocked_for_known(&store, &known, a, 101), g.blocked_for(&store, a, 101));
        let reads = store.calls.get();
        assert_eq!(g.blocked_for_known(&store, &known, a, 105), Some(5));
        assert_eq!(store.calls.get(), reads, "answered by the VM");
        assert_eq!(g.blocked_for_known(&store, &known, a, 110), None, "the window ended");
    }
}
