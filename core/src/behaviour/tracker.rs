//! One worker's side of the baselines: for each identity it saw, the shared
//! baseline as of its last merge (rolled to the current interval) and what it
//! counted since. Detection reads only these; merging into the shared table happens
//! at most once per `merge_ms` per identity, and at interval boundaries.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::hash::fnv1a128;
use crate::hash::seeded::Seeded;
use crate::host::store::Store;

use super::baseline::{network, route_bit, Entry, SOURCES};
use super::table::{Merged, Table};
use super::{Behaviour, Kind, Mode};

/// Most identities one worker keeps locally; beyond, the longest-unmerged one is
/// merged and dropped.
pub const LOCAL_CAPACITY: usize = 4_096;

/// A set of anomaly kinds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags(u8);

impl Flags {
    pub fn insert(&mut self, kind: Kind) {
        self.0 |= 1 << (kind as u8);
    }

    pub fn contains(self, kind: Kind) -> bool {
        self.0 & (1 << (kind as u8)) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn kinds(self) -> impl Iterator<Item = Kind> {
        Kind::ALL.into_iter().filter(move |k| self.contains(*k))
    }

    /// `burst,new_route`: for the log line and `x-nhi-anomaly`.
    pub fn joined(self) -> String {
        self.kinds().map(Kind::as_str).collect::<Vec<_>>().join(",")
    }
}

/// What one request showed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observation {
    /// Kinds flagged by this request (each kind once per interval and worker).
    pub flagged: Flags,
    /// An enforced kind: refuse with this status.
    pub refuse: Option<(Kind, u16)>,
    /// The identity's bucket was full: not tracked, never flagged.
    pub untracked: bool,
}

/// One request of a verified identity, as the tracker sees it.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub issuer: &'a str,
    pub identity: &'a str,
    /// The matched route's index in the configuration (`None`: unmatched).
    pub route: Option<usize>,
    pub source: Option<IpAddr>,
    pub now_ms: u64,
}

#[derive(Debug, Clone)]
struct Local {
    snapshot: Entry,
    tracked: bool,
    /// Counted since the last merge, in interval `counted_interval`.
    counted_interval: u64,
    count: u32,
    errors: u32,
    routes: u64,
    sources: [u32; SOURCES],
    last_seen: u64,
    merged_at_ms: u64,
    /// Kinds already flagged in `flagged_interval`.
    flagged: Flags,
    flagged_interval: u64,
    /// An enforced error spike refuses the rest of this interval.
    spiking_interval: Option<u64>,
}

/// One worker's tracker.
#[derive(Debug)]
pub struct Tracker {
    table: Table,
    local: HashMap<u128, Local, Seeded>,
}

impl Tracker {
    pub fn new(b: &Behaviour) -> Tracker {
        Tracker { table: Table::new(b.max_tracked_identities), local: HashMap::default() }
    }

    /// How many identities this worker keeps locally.
    pub fn len(&self) -> usize {
        self.local.len()
    }

    pub fn is_empty(&self) -> bool {
        self.local.is_empty()
    }

    /// Counts one request of a verified identity, and says what is anomalous about it.
    pub fn observe(&mut self, b: &Behaviour, store: &dyn Store, seen: &Seen<'_>) -> Observation {
        let now = seen.now_ms / 1000;
        let interval = now / b.interval_seconds;
        let fingerprint = fingerprint(seen.issuer, seen.identity);
        let table = self.table;
        let Some(local) = self.local_for(b, store, fingerprint, seen.now_ms) else {
            return Observation::default();
        };
        if local.counted_interval != interval && (local.count > 0 || local.errors > 0) {
            // What was counted belongs to a finished interval: fold it in first.
            merge(&table, b, store, fingerprint, local, seen.now_ms);
        }
        local.counted_interval = interval;
        if local.flagged_interval != interval {
            local.flagged = Flags::default();
            local.flagged_interval = interval;
        }
        let mut observation = Observation::default();
        let bit = route_bit(seen.route);
        let source = seen.source.map(|s| network(s, b));
        let rolled = |local: &Local| {
            let mut s = local.snapshot;
            s.roll(interval, b);
            s
        };
        // The snapshot is this worker's copy as of its last merge of the identity. If
        // the identity's requests went to other workers since (a keep-alive connection
        // pins a client to one worker), the copy is old: it may not know a route or a
        // network the identity has used there, nor that it was seen there. Before
        // flagging any of those, take the shared baseline (one read and one
        // compare-and-swap, at most once per `merge_seconds`, and only for a request
        // the copy finds new or dormant: rare, unlike a merge per request).
        // (A worker's first sight of an identity read the baseline just now.)
        let copy_age_ms = seen.now_ms.saturating_sub(local.merged_at_ms);
        if b.detect
            && local.tracked
            && local.merged_at_ms > 0
            && copy_age_ms >= b.merge_ms
            && unfamiliar(b, &rolled(local), local, now, bit, source).kinds().any(|kind| b.watches(kind))
        {
            merge(&table, b, store, fingerprint, local, seen.now_ms);
        }
        let snapshot = rolled(local);
        if b.detect && local.tracked {
            let mut flag = |kind: Kind| {
                if b.watches(kind) && !b.expected(seen.identity, kind) {
                    observation.flagged.insert(kind);
                    if let (Mode::Enforce(status), None) = (b.mode(kind), observation.refuse) {
                        observation.refuse = Some((kind, status));
                    }
                }
            };
            let news = unfamiliar(b, &snapshot, local, now, bit, source);
            if news.contains(Kind::DormantReturned) {
                flag(Kind::DormantReturned);
            }
            if snapshot.warmed(b) {
                let total = snapshot.count.saturating_add(local.count).saturating_add(1);
                if snapshot.is_burst(total, b) {
                    flag(Kind::Burst);
                }
                for kind in [Kind::NewRoute, Kind::NewSource] {
                    if news.contains(kind) {
                        flag(kind);
                    }
                }
                if local.spiking_interval == Some(interval) {
                    if let Mode::Enforce(status) = b.mode(Kind::ErrorSpike) {
                        observation.refuse = observation.refuse.or(Some((Kind::ErrorSpike, status)));
                    }
                }
            }
        }
        // Each kind is reported once per interval and worker; enforcement applies to
        // every request that shows it.
        let mut fresh = Flags::default();
        for kind in observation.flagged.kinds() {
            if !local.flagged.contains(kind) {
                fresh.insert(kind);
                local.flagged.insert(kind);
            }
        }
        observation.flagged = fresh;
        // Learn, except what is refused.
        let refused = observation.refuse.map(|(kind, _)| kind);
        local.count = local.count.saturating_add(1);
        if refused != Some(Kind::DormantReturned) {
            // Refused for its silence, it stays silent: its next request is refused too.
            local.last_seen = now;
        }
        if refused != Some(Kind::NewRoute) {
            local.routes |= bit;
        }
        if let (Some(network), false) = (source, refused == Some(Kind::NewSource)) {
            remember(&mut local.sources, network);
        }
        if seen.now_ms.saturating_sub(local.merged_at_ms) >= b.merge_ms || local.snapshot.interval != interval
        {
            merge(&table, b, store, fingerprint, local, seen.now_ms);
        }
        observation.untracked = !local.tracked;
        observation
    }

    /// The response to a request of a verified identity: counts a 5xx as an error;
    /// `Some(ErrorSpike)` the first time this interval's errors are a spike.
    pub fn responded(
        &mut self,
        b: &Behaviour,
        issuer: &str,
        identity: &str,
        status: u16,
        now_ms: u64,
    ) -> Option<Kind> {
        let local = self.local.get_mut(&fingerprint(issuer, identity))?;
        if status < 500 {
            return None;
        }
        local.errors = local.errors.saturating_add(1);
        let interval = now_ms / 1000 / b.interval_seconds;
        let mut snapshot = local.snapshot;
        snapshot.roll(interval, b);
        let errors = snapshot.errors.saturating_add(local.errors);
        let total = snapshot.count.saturating_add(local.count);
        let spike = b.watches(Kind::ErrorSpike)
            && local.tracked
            && snapshot.warmed(b)
            && snapshot.is_error_spike(errors, total, b)
            && !b.expected(identity, Kind::ErrorSpike);
        if !spike || (local.flagged_interval == interval && local.flagged.contains(Kind::ErrorSpike)) {
            return None;
        }
        if local.flagged_interval != interval {
            local.flagged = Flags::default();
            local.flagged_interval = interval;
        }
        local.flagged.insert(Kind::ErrorSpike);
        local.spiking_interval = Some(interval);
        Some(Kind::ErrorSpike)
    }

    /// This worker's entry for `fingerprint`, read from the shared table the first
    /// time; `None` when the store cannot be read.
    fn local_for(
        &mut self,
        b: &Behaviour,
        store: &dyn Store,
        fingerprint: u128,
        now_ms: u64,
    ) -> Option<&mut Local> {
        if !self.local.contains_key(&fingerprint) {
            if self.local.len() >= LOCAL_CAPACITY {
                self.evict(b, store, now_ms);
            }
            let now = now_ms / 1000;
            let interval = now / b.interval_seconds;
            let snapshot = match self.table.get(store, fingerprint) {
                Ok(found) => found.unwrap_or_else(|| Entry::new(fingerprint, now, interval)),
                Err(err) => {
                    log::debug!("behaviour baseline unavailable: {err}");
                    return None;
                }
            };
            self.local.insert(
                fingerprint,
                Local {
                    snapshot,
                    tracked: true,
                    counted_interval: interval,
                    count: 0,
                    errors: 0,
                    routes: 0,
                    sources: [0; SOURCES],
                    last_seen: 0,
                    // Merged at once: a new identity learns whether the table has room.
                    merged_at_ms: 0,
                    flagged: Flags::default(),
                    flagged_interval: interval,
                    spiking_interval: None,
                },
            );
        }
        self.local.get_mut(&fingerprint)
    }

    /// Merges and drops the identity merged longest ago.
    fn evict(&mut self, b: &Behaviour, store: &dyn Store, now_ms: u64) {
        let Some((&oldest, _)) = self.local.iter().min_by_key(|(_, l)| l.merged_at_ms) else { return };
        if let Some(mut local) = self.local.remove(&oldest) {
            merge(&self.table, b, store, oldest, &mut local, now_ms);
        }
    }
}

fn remember(sources: &mut [u32; SOURCES], network: u32) {
    if sources.contains(&network) {
        return;
    }
    if let Some(slot) = sources.iter_mut().find(|s| **s == 0) {
        *slot = network;
    }
}

/// What `snapshot` (the baseline as this worker knows it) and the worker's own counts
/// since find unfamiliar about a request: the identity back after `after_seconds` of
/// silence, and — once warmed up — a route class or a network it never used.
fn unfamiliar(
    b: &Behaviour,
    snapshot: &Entry,
    local: &Local,
    now: u64,
    bit: u64,
    source: Option<u32>,
) -> Flags {
    let mut news = Flags::default();
    let last_seen = snapshot.last_seen.max(local.last_seen);
    if last_seen > 0 && now.saturating_sub(last_seen) > b.dormant_after_seconds {
        news.insert(Kind::DormantReturned);
    }
    if snapshot.warmed(b) {
        if !snapshot.knows_route(bit) && local.routes & bit == 0 {
            news.insert(Kind::NewRoute);
        }
        if source.is_some_and(|network| !snapshot.knows_source(network) && !local.sources.contains(&network))
        {
            news.insert(Kind::NewSource);
        }
    }
    news
}

/// Folds what the worker counted into the shared baseline and takes the result as
/// the new snapshot. A failed merge keeps the counts for the next one.
fn merge(table: &Table, b: &Behaviour, store: &dyn Store, fingerprint: u128, local: &mut Local, now_ms: u64) {
    let now = now_ms / 1000;
    let interval = now / b.interval_seconds;
    let (counted, count, errors, routes, sources, last_seen) =
        (local.counted_interval, local.count, local.errors, local.routes, local.sources, local.last_seen);
    let fresh = Entry::new(fingerprint, now, counted.min(interval));
    let update = |e: &mut Entry| {
        // Counts go to the interval they were made in (or the current one, if
        // another worker already moved past it), then the entry moves to now.
        e.roll(counted, b);
        e.count = e.count.saturating_add(count);
        e.errors = e.errors.saturating_add(errors);
        e.routes |= routes;
        for network in sources.into_iter().filter(|n| *n != 0) {
            e.learn_source(network);
        }
        e.last_seen = e.last_seen.max(last_seen);
        e.roll(interval, b);
    };
    match table.merge(store, fingerprint, now, b.dormant_after_seconds, fresh, update) {
        Ok(Merged::Tracked(entry)) => {
            local.snapshot = entry;
            local.tracked = true;
        }
        Ok(Merged::Untracked) => local.tracked = false,
        Err(err) => {
            log::debug!("behaviour baseline not merged: {err}");
            return;
        }
    }
    local.count = 0;
    local.errors = 0;
    local.routes = 0;
    local.sources = [0; SOURCES];
    local.merged_at_ms = now_ms;
}

fn fingerprint(issuer: &str, identity: &str) -> u128 {
    fnv1a128(&[issuer.as_bytes(), &[0xFF], identity.as_bytes()])
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::host::store::MemoryStore;

    const T0: u64 = 1_800_000_000_000;
    const MINUTE: u64 = 60_000;

    fn behaviour(extra: serde_json::Value) -> Behaviour {
        let mut v = json!({"warmup_intervals": 5, "half_life_intervals": 30,
                           "anomalies": {"burst": {"floor": 50}, "new_route": {}, "new_source": {},
                                         "error_spike": {"min_requests": 10},
                                         "dormant_returned": {"after_seconds": 86400}}});
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        super::super::compile(crate::json::FromJson::from_json(v, "b").unwrap(), "b").unwrap()
    }

    fn seen(at: u64, route: usize, source: &str) -> Seen<'static> {
        Seen {
            issuer: "ci",
            identity: "robot",
            route: Some(route),
            source: Some(source.parse().unwrap()),
            now_ms: at,
        }
    }

    /// `per_minute` requests a minute for `minutes`, spread over each minute.
    fn steady(
        t: &mut Tracker,
        b: &Behaviour,
        s: &MemoryStore,
        from: u64,
        minutes: u64,
        per_minute: u64,
    ) -> Flags {
        let mut flagged = Flags::default();
        for m in 0..minutes {
            for i in 0..per_minute {
                let at = from + m * MINUTE + i * (MINUTE / per_minute.max(1));
                let o = t.observe(b, s, &seen(at, 0, "203.0.113.7"));
                for k in o.flagged.kinds() {
                    flagged.insert(k);
                }
            }
        }
        flagged
    }

    #[test]
    fn nothing_is_flagged_during_warm_up_or_on_steady_traffic() {
        let b = behaviour(json!({}));
        let store = MemoryStore::new();
        let mut t = Tracker::new(&b);
        assert!(steady(&mut t, &b, &store, T0, 120, 20).is_empty());
    }

    #[test]
    fn a_burst_a_new_route_and_a_new_source_are_flagged_once_then_learned() {
        let b = behaviour(json!({}));
        let store = MemoryStore::new();
        let mut t = Tracker::new(&b);
        steady(&mut t, &b, &store, T0, 30, 10);
        let later = T0 + 31 * MINUTE;
        let o = t.observe(&b, &store, &seen(later, 3, "203.0.113.7"));
        assert!(o.flagged.contains(Kind::NewRoute) && o.refuse.is_none(), "{o:?}");
        let o = t.observe(&b, &store, &seen(later + 1, 3, "203.0.113.7"));
        assert!(o.flagged.is_empty(), "learned in observe mode");
        let o = t.observe(&b, &store, &seen(later + 2, 0, "198.51.100.1"));
        assert!(o.flagged.contains(Kind::NewSource));
        // A retry storm: 10x the rate and over the floor within one interval.
        let mut burst_at = None;
        for i in 0..200 {
            let o = t.observe(&b, &store, &seen(T0 + 32 * MINUTE + i * 10, 0, "203.0.113.7"));
            if o.flagged.contains(Kind::Burst) {
                burst_at = Some(i);
            }
        }
        let burst_at = burst_at.unwrap();
        assert!((49..=100).contains(&burst_at), "detected after {burst_at} requests");
    }

    #[test]
    fn a_regular_nightly_batch_is_normal_after_warm_up() {
        let b = behaviour(json!({"warmup_intervals": 30}));
        let store = MemoryStore::new();
        let mut t = Tracker::new(&b);
        let day = 24 * 60 * MINUTE;
        let mut flagged = Flags::default();
        for d in 0..3 {
            let start = T0 + d * day;
            // A steady caller, 5 a minute, with a 400-a-minute batch at 02:00 for 10 minutes.
            for m in 0..(24 * 60) {
                let per_minute = if (120..130).contains(&m) { 400 } else { 5 };
                for i in 0..per_minute {
                    let at = start + m * MINUTE + i * (MINUTE / per_minute);
                    let o = t.observe(&b, &store, &seen(at, 0, "203.0.113.7"));
                    if d > 0 {
                        for k in o.flagged.kinds() {
                            flagged.insert(k);
                        }
                    }
                }
            }
        }
        assert!(flagged.is_empty(), "{:?}", flagged.joined());
        // A daytime storm far beyond the nightly peak is a burst.
        let storm = T0 + 3 * day + 14 * 60 * MINUTE;
        let caught = (0..2_000).any(|i| {
            t.observe(&b, &store, &seen(storm + i * 20, 0, "203.0.113.7")).flagged.contains(Kind::Burst)
        });
        assert!(caught);
    }

    #[test]
    fn enforce_refuses_and_does_not_learn() {
        let b = behaviour(json!({"anomalies": {"new_route": {"mode": "enforce", "status": 403}}}));
        let store = MemoryStore::new();
        let mut t = Tracker::new(&b);
        steady(&mut t, &b, &store, T0, 10, 10);
        for i in 0..3 {
            let o = t.observe(&b, &store, &seen(T0 + 11 * MINUTE + i, 7, "203.0.113.7"));
            assert_eq!(o.refuse, Some((Kind::NewRoute, 403)), "{i}");
        }
    }

    #[test]
    fn error_spikes_dormant_returns_and_expected_changes() {
        let b = behaviour(json!({"expected": [{"identity": "robot", "kinds": ["new_source"]}]}));
        let store = MemoryStore::new();
        let mut t = Tracker::new(&b);
        steady(&mut t, &b, &store, T0, 10, 20);
        let o = t.observe(&b, &store, &seen(T0 + 10 * MINUTE + 1, 0, "198.51.100.1"));
        assert!(o.flagged.is_empty(), "new sources are expected of this identity");
        let at = T0 + 11 * MINUTE;
        let mut spike = None;
        for i in 0..20 {
            t.observe(&b, &store, &seen(at + i, 0, "203.0.113.7"));
            if let Some(kind) = t.responded(&b, "ci", "robot", 503, at + i) {
                spike = Some((kind, i));
            }
        }
        assert_eq!(spike.map(|(k, _)| k), Some(Kind::ErrorSpike));
        let back = T0 + 3 * 86_400_000;
        assert!(t.observe(&b, &store, &seen(back, 0, "203.0.113.7")).flagged.contains(Kind::DormantReturned));
    }

    /// A worker that has not seen an identity for longer than `after_seconds` while
    /// another worker served it (one keep-alive connection) does not call it dormant,
    /// nor new on a route or network it used there; real silence still is dormant.
    #[test]
    fn an_identity_another_worker_served_is_not_dormant() {
        let b = behaviour(json!({"anomalies": {"new_route": {}, "new_source": {},
                                               "dormant_returned": {"after_seconds": 600, "mode": "enforce"}}}));
        let store = MemoryStore::new();
        let (mut a, mut c) = (Tracker::new(&b), Tracker::new(&b));
        steady(&mut a, &b, &store, T0, 10, 20);
        // Worker `c` alone serves the identity for an hour, on a second route and from
        // a second network too (flagged there once, then learned: observe mode).
        let flagged = steady(&mut c, &b, &store, T0 + 10 * MINUTE, 60, 20);
        assert!(flagged.is_empty(), "{flagged:?}");
        let later = T0 + 70 * MINUTE;
        assert!(!c.observe(&b, &store, &seen(later, 1, "198.51.100.7")).flagged.is_empty());
        assert!(c.observe(&b, &store, &seen(later + 1_000, 1, "198.51.100.7")).flagged.is_empty());
        let o = a.observe(&b, &store, &seen(later + 2_000, 0, "203.0.113.7"));
        assert!(o.flagged.is_empty() && o.refuse.is_none(), "{o:?}");
        let o = a.observe(&b, &store, &seen(later + 3_000, 1, "198.51.100.7"));
        assert!(o.flagged.is_empty(), "route 1 and 198.51.100.0/24 were learned on the other worker: {o:?}");
        // An hour of silence everywhere: dormant on either worker.
        let o = c.observe(&b, &store, &seen(T0 + 131 * MINUTE, 0, "203.0.113.7"));
        assert_eq!(o.refuse.map(|(kind, _)| kind), Some(Kind::DormantReturned));
        // What is refused is not learned: the identity stays dormant for its next
        // requests, on this worker and the other.
        for i in 1..=3u64 {
            let worker = if i == 2 { &mut a } else { &mut c };
            let o = worker.observe(&b, &store, &seen(T0 + 131 * MINUTE + 1_000 * i, 0, "203.0.113.7"));
            assert_eq!(o.refuse.map(|(kind, _)| kind), Some(Kind::DormantReturned), "request {}", i + 1);
        }
    }

    #[test]
    fn workers_share_one_baseline() {
        let b = behaviour(json!({}));
        let store = MemoryStore::new();
        let (mut a, mut c) = (Tracker::new(&b), Tracker::new(&b));
        // Alternate the workers: each sees half the traffic, the baseline all of it.
        for m in 0..20 {
            for i in 0..10 {
                let at = T0 + m * MINUTE + i * 6_000;
                let worker = if i % 2 == 0 { &mut a } else { &mut c };
                worker.observe(&b, &store, &seen(at, 0, "203.0.113.7"));
            }
        }
        let merged =
            Table::new(b.max_tracked_identities).get(&store, fingerprint("ci", "robot")).unwrap().unwrap();
        let mut rolled = merged;
        rolled.roll((T0 + 20 * MINUTE) / 1000 / 60, &b);
        assert!(rolled.warmed(&b));
        assert!(
            (8.0..=10.5).contains(&rolled.rate),
            "rate {} of the 10 a minute both workers saw",
            rolled.rate
        );
    }

    #[test]
    fn a_worker_keeps_a_bounded_number_of_identities() {
        let b = behaviour(json!({"max_tracked_identities": 100}));
        let store = MemoryStore::new();
        let mut t = Tracker::new(&b);
        for i in 0..(LOCAL_CAPACITY + 50) {
            let identity = format!("robot-{i}");
            let s = Seen {
                issuer: "ci",
                identity: &identity,
                route: Some(0),
                source: None,
                now_ms: T0 + i as u64,
            };
            let o = t.observe(&b, &store, &s);
            assert!(o.refuse.is_none());
        }
        assert!(t.len() <= LOCAL_CAPACITY);
        assert!(
            store.len() <= 100usize.div_ceil(super::super::table::WAYS),
            "the shared table keeps its bound"
        );
    }

    #[test]
    fn distinct_identities_stay_within_every_bound() {
        let b = behaviour(json!({"max_tracked_identities": 1000}));
        let store = MemoryStore::new();
        let mut t = Tracker::new(&b);
        let mut untracked = 0;
        for i in 0..(2 * LOCAL_CAPACITY as u64 + 1_000) {
            let identity = format!("robot-{i}");
            let s = Seen { issuer: "ci", identity: &identity, route: Some(0), source: None, now_ms: T0 + i };
            untracked += usize::from(t.observe(&b, &store, &s).untracked);
        }
        assert!(t.len() <= LOCAL_CAPACITY, "{} kept locally", t.len());
        assert!(store.len() <= 1000usize.div_ceil(super::super::table::WAYS), "{} keys", store.len());
        assert!(untracked > 8_000, "identities beyond the table are not tracked: {untracked}");
    }

    #[test]
    fn anomaly_labels_stay_bounded_with_a_hundred_thousand_identities() {
        // Anomalies are counted under the same identity labels as every per-identity
        // series: at most `metrics.max_identities` of their own, then `other`.
        let store = MemoryStore::new();
        crate::observe::metrics::IdentityBound::prepare(&store).unwrap();
        let mut labels = crate::observe::metrics::IdentityBound::new(100);
        let mut distinct = std::collections::BTreeSet::new();
        for i in 0..100_000 {
            distinct.insert(labels.label(&store, "ci", &format!("robot-{i}")).as_str().to_owned());
        }
        assert_eq!(distinct.len(), 101, "100 identities of their own and `other`");
    }
}
