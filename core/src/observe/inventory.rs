//! The identity inventory: every verified identity the gateway has seen — first
//! seen, last seen, request count, last route and last source — for the whole
//! Envoy, bounded by `max_tracked_identities`, exported as
//! `nhi_identity_last_seen_timestamp_seconds` and as JSON on a configured path.
//!
//! # Exact across workers, without a host call per request
//!
//! A request only updates its worker's [`Pending`] deltas (VM memory: a hash
//! lookup). On every tick (500 ms) each worker merges its deltas into the shared
//! table with compare-and-swap ([`flush`]): counts are added, first/last seen take
//! the min/max, route and source follow the latest request. A lost CAS race
//! retries; a delta that still cannot be merged stays pending for the next tick.
//! So no request is counted twice or lost, and the table is exact once every
//! worker has flushed — at most one tick after the last request. What is given up:
//! the JSON may lag each worker by one tick (a worker serving the JSON flushes its
//! own deltas first), `last_source` is the first source of an identity's requests
//! in a tick window (the source is read once per identity per window, not on every
//! request), and a worker VM that crashes or is replaced loses its unflushed tick.
//! Merging on every request instead costs a shared-data read and a write of a whole
//! bucket per request (measured in `docs/lifecycle.md`); hosts without a tick
//! (APISIX) keep the table per VM and merge after every request, which costs no
//! host call there.
//!
//! # The table
//!
//! `max_tracked_identities / WAYS` buckets, one shared-data key each, created when
//! the plugin is configured. An identity lives in the bucket its fingerprint
//! chooses; a full bucket replaces its least recently seen identity (the table
//! shows who is active; an identity quiet long enough to be pushed out is one that
//! went quiet). Strings are bounded: identities are cut at
//! [`MAX_IDENTITY_BYTES`], sources and routes at [`MAX_SHORT_BYTES`].

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::hash::{fnv1a64_fields, mix64};
use crate::host::store::{Store, StoreError};
use crate::json::{self, FromJson};
use crate::policy::cidr::Cidr;

use super::decision_log::rfc3339_ms;

/// Identities per bucket (one shared-data key).
pub const WAYS: usize = 16;
pub const DEFAULT_MAX_TRACKED: u32 = 1_000;
pub const MAX_MAX_TRACKED: u32 = 10_000;
/// Longest identity kept (longer ones are cut at a character boundary).
pub const MAX_IDENTITY_BYTES: usize = 512;
/// Longest issuer name, route name or source address kept.
pub const MAX_SHORT_BYTES: usize = 64;
/// Lost compare-and-swap races per bucket and flush before the delta waits a tick.
const MAX_ATTEMPTS: usize = 8;
const KEY_PREFIX: &str = "nhi-guard.inv.";
const VERSION: u8 = 2;

/// `inventory` in the plugin configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawInventory {
    /// Where the filter answers the inventory as JSON (exact path, e.g.
    /// `/.well-known/nhi-guard/inventory`); needs `source_cidrs`.
    #[serde(default)]
    pub path: Option<String>,
    /// Sources allowed to read the JSON; every other source gets `403`.
    #[serde(default)]
    pub source_cidrs: Option<Vec<String>>,
    /// Identities tracked for the whole Envoy (1–10000, default 1000).
    #[serde(default)]
    pub max_tracked_identities: Option<u64>,
}

impl FromJson for RawInventory {
    fn from_json(value: serde_json::Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawInventory {
            path: o.optional("path"),
            source_cidrs: o.optional("source_cidrs"),
            max_tracked_identities: o.optional("max_tracked_identities"),
        })
    }
}

/// The validated `inventory` block.
#[derive(Debug, Clone, PartialEq)]
pub struct InventoryConfig {
    /// The JSON's path, if it is served.
    pub path: Option<String>,
    pub source_cidrs: Vec<Cidr>,
    pub max_tracked: u32,
}

impl InventoryConfig {
    pub fn buckets(&self) -> usize {
        (self.max_tracked as usize).div_ceil(WAYS).max(1)
    }

    /// Whether `path` (query string and all) asks for the JSON.
    pub fn serves(&self, path: &str) -> bool {
        self.path.as_deref().is_some_and(|p| path.split('?').next() == Some(p))
    }
}

pub fn compile(raw: RawInventory, at: &str) -> Result<InventoryConfig, ConfigError> {
    let invalid =
        |field: &str, reason: String| ConfigError::Invalid { field: format!("{at}.{field}"), reason };
    let max = raw.max_tracked_identities.unwrap_or(u64::from(DEFAULT_MAX_TRACKED));
    let max_tracked =
        u32::try_from(max).ok().filter(|m| (1..=MAX_MAX_TRACKED).contains(m)).ok_or_else(|| {
            invalid("max_tracked_identities", format!("must be between 1 and {MAX_MAX_TRACKED}"))
        })?;
    if let Some(path) = &raw.path {
        if !path.starts_with('/')
            || path.contains('?')
            || path.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid("path", "must be an exact path starting with '/', without a query".into()));
        }
    }
    let source_cidrs = match (&raw.path, raw.source_cidrs) {
        (Some(_), None) => {
            return Err(invalid(
                "source_cidrs",
                "is required with `path`: the inventory is never public".into(),
            ))
        }
        (_, Some(list)) if list.is_empty() => {
            return Err(invalid("source_cidrs", "must list at least one CIDR".into()))
        }
        (None, Some(_)) => return Err(invalid("source_cidrs", "only applies with `path`".into())),
        (_, Some(list)) => list
            .iter()
            .enumerate()
            .map(|(i, cidr)| {
                Cidr::parse(cidr).map_err(|e| invalid(&format!("source_cidrs[{i}]"), e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?,
        (None, None) => Vec::new(),
    };
    Ok(InventoryConfig { path: raw.path, source_cidrs, max_tracked })
}

/// One identity, as the table keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub issuer: String,
    pub identity: String,
    pub first_ms: u64,
    pub last_ms: u64,
    pub requests: u64,
    pub route: Option<String>,
    pub source: Option<String>,
    /// When it last came back after a silence the behaviour block calls dormant
    /// (`dormant_returned`); 0: never seen to.
    pub returned_ms: u64,
}

impl Seen {
    fn fingerprint(&self) -> u64 {
        fingerprint(&self.issuer, &self.identity)
    }

    /// `other`'s requests added; first/last widened; route and source of whichever is later.
    fn merge(&mut self, other: &Seen) {
        self.requests = self.requests.saturating_add(other.requests);
        self.first_ms = self.first_ms.min(other.first_ms);
        self.returned_ms = self.returned_ms.max(other.returned_ms);
        if other.last_ms >= self.last_ms {
            self.last_ms = other.last_ms;
            if other.route.is_some() {
                self.route.clone_from(&other.route);
            }
            if other.source.is_some() {
                self.source.clone_from(&other.source);
            }
        }
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.fingerprint().to_be_bytes());
        out.extend_from_slice(&self.first_ms.to_be_bytes());
        out.extend_from_slice(&self.last_ms.to_be_bytes());
        out.extend_from_slice(&self.requests.to_be_bytes());
        let short = |out: &mut Vec<u8>, s: Option<&str>| {
            let bytes = cut(s.unwrap_or_default(), MAX_SHORT_BYTES).as_bytes();
            out.push(u8::try_from(bytes.len()).unwrap_or(0));
            out.extend_from_slice(bytes);
        };
        short(out, Some(&self.issuer));
        let identity = cut(&self.identity, MAX_IDENTITY_BYTES).as_bytes();
        out.extend_from_slice(&u16::try_from(identity.len()).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(identity);
        short(out, self.route.as_deref());
        short(out, self.source.as_deref());
        out.extend_from_slice(&self.returned_ms.to_be_bytes());
    }

    /// One entry from the front of `bytes` (written by table `version`), and the rest.
    fn decode(bytes: &[u8], version: u8) -> Option<(Seen, &[u8])> {
        let (_, rest) = bytes.split_first_chunk::<8>()?;
        let (first, rest) = rest.split_first_chunk::<8>()?;
        let (last, rest) = rest.split_first_chunk::<8>()?;
        let (requests, rest) = rest.split_first_chunk::<8>()?;
        fn short(rest: &[u8]) -> Option<(String, &[u8])> {
            let (&len, rest) = rest.split_first()?;
            let (text, rest) = rest.split_at_checked(usize::from(len))?;
            Some((String::from_utf8(text.to_vec()).ok()?, rest))
        }
        let (issuer, rest) = short(rest)?;
        let (len, rest) = rest.split_first_chunk::<2>()?;
        let (identity, rest) = rest.split_at_checked(usize::from(u16::from_be_bytes(*len)))?;
        let identity = String::from_utf8(identity.to_vec()).ok()?;
        let (route, rest) = short(rest)?;
        let (source, rest) = short(rest)?;
        // Version 1 entries (before `returned_ms`) end here.
        let (returned_ms, rest) = match version {
            1 => (0, rest),
            _ => {
                let (returned, rest) = rest.split_first_chunk::<8>()?;
                (u64::from_be_bytes(*returned), rest)
            }
        };
        let seen = Seen {
            issuer,
            identity,
            first_ms: u64::from_be_bytes(*first),
            last_ms: u64::from_be_bytes(*last),
            requests: u64::from_be_bytes(*requests),
            route: Some(route).filter(|r| !r.is_empty()),
            source: Some(source).filter(|s| !s.is_empty()),
            returned_ms,
        };
        Some((seen, rest))
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let end = (0..=max).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
    s.get(..end).unwrap_or_default()
}

/// The stable 64-bit fingerprint of an identity (which bucket, which entry).
pub fn fingerprint(issuer: &str, identity: &str) -> u64 {
    mix64(fnv1a64_fields(&[issuer.as_bytes(), cut(identity, MAX_IDENTITY_BYTES).as_bytes()]))
}

fn bucket_key(bucket: usize) -> String {
    format!("{KEY_PREFIX}{bucket}")
}

fn decode_bucket(bytes: &[u8]) -> Vec<Seen> {
    // A table written by the version before (a reload onto a newer filter keeps
    // Envoy's shared data) is still read.
    let Some((&version, mut rest)) = bytes.split_first().filter(|(v, _)| (1..=VERSION).contains(*v)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    while !rest.is_empty() && out.len() < WAYS {
        let Some((seen, next)) = Seen::decode(rest, version) else { break };
        out.push(seen);
        rest = next;
    }
    out
}

fn encode_bucket(entries: &[Seen]) -> Vec<u8> {
    let mut out = vec![VERSION];
    for entry in entries {
        entry.encode_into(&mut out);
    }
    out
}

/// Creates every bucket that does not exist yet (when the plugin is configured).
pub fn prepare(config: &InventoryConfig, store: &dyn Store) -> Result<usize, StoreError> {
    let mut created = 0;
    for bucket in 0..config.buckets() {
        if let (None, None) = store.get(&bucket_key(bucket))? {
            store.set(&bucket_key(bucket), &[VERSION], None)?;
            created += 1;
        }
    }
    Ok(created)
}

/// One worker's requests since its last flush, by identity. Bounded like the
/// table: identities beyond `max_tracked` in one tick window are not noted.
#[derive(Debug, Default)]
pub struct Pending {
    deltas: HashMap<u64, Seen>,
}

impl Pending {
    /// Whether `issuer`/`identity` already has a source noted in this window (the
    /// caller then need not read the source again).
    pub fn has_source(&self, issuer: &str, identity: &str) -> bool {
        self.deltas.get(&fingerprint(issuer, identity)).is_some_and(|d| d.source.is_some())
    }

    /// One request of `identity` at `now_ms` on `route`, from `source`; `returned`:
    /// flagged `dormant_returned`.
    #[allow(clippy::too_many_arguments)]
    pub fn note(
        &mut self,
        max_tracked: u32,
        issuer: &str,
        identity: &str,
        route: Option<&str>,
        source: Option<String>,
        returned: bool,
        now_ms: u64,
    ) {
        let fp = fingerprint(issuer, identity);
        let seen = Seen {
            issuer: cut(issuer, MAX_SHORT_BYTES).to_owned(),
            identity: cut(identity, MAX_IDENTITY_BYTES).to_owned(),
            first_ms: now_ms,
            last_ms: now_ms,
            requests: 1,
            route: route.map(|r| cut(r, MAX_SHORT_BYTES).to_owned()),
            source: source.map(|s| cut(&s, MAX_SHORT_BYTES).to_owned()),
            returned_ms: if returned { now_ms } else { 0 },
        };
        let room = self.deltas.len() < max_tracked as usize;
        match self.deltas.entry(fp) {
            std::collections::hash_map::Entry::Occupied(mut delta) => delta.get_mut().merge(&seen),
            std::collections::hash_map::Entry::Vacant(slot) if room => {
                slot.insert(seen);
            }
            std::collections::hash_map::Entry::Vacant(_) => {}
        }
    }

    pub fn is_empty(&self) -> bool {
        self.deltas.is_empty()
    }
}

/// Merges `pending` into the shared table; returns every identity merged, as the
/// table now holds it (for the last-seen gauges). Deltas whose bucket could not be
/// written stay pending.
pub fn flush(config: &InventoryConfig, store: &dyn Store, pending: &mut Pending) -> Vec<Seen> {
    let buckets = config.buckets();
    let mut by_bucket: HashMap<usize, Vec<Seen>> = HashMap::new();
    for (fp, delta) in pending.deltas.drain() {
        by_bucket.entry((fp % buckets as u64) as usize).or_default().push(delta);
    }
    let mut merged = Vec::new();
    for (bucket, deltas) in by_bucket {
        match merge_bucket(store, bucket, &deltas) {
            Ok(now) => merged.extend(now),
            Err(_) => {
                for delta in deltas {
                    pending.deltas.insert(delta.fingerprint(), delta);
                }
            }
        }
    }
    merged
}

fn merge_bucket(store: &dyn Store, bucket: usize, deltas: &[Seen]) -> Result<Vec<Seen>, StoreError> {
    let key = bucket_key(bucket);
    for _ in 0..MAX_ATTEMPTS {
        let (bytes, cas) = store.get(&key)?;
        let mut entries = decode_bucket(bytes.as_deref().unwrap_or_default());
        let mut touched = Vec::with_capacity(deltas.len());
        for delta in deltas {
            let fp = delta.fingerprint();
            let at = match entries.iter().position(|e| e.fingerprint() == fp) {
                Some(i) => {
                    if let Some(entry) = entries.get_mut(i) {
                        entry.merge(delta);
                    }
                    i
                }
                None if entries.len() < WAYS => {
                    entries.push(delta.clone());
                    entries.len() - 1
                }
                None => {
                    // Full: the least recently seen identity gives way.
                    let oldest =
                        entries.iter().enumerate().min_by_key(|(_, e)| e.last_ms).map_or(0, |(i, _)| i);
                    if let Some(slot) = entries.get_mut(oldest) {
                        *slot = delta.clone();
                    }
                    oldest
                }
            };
            touched.push(at);
        }
        match store.set(&key, &encode_bucket(&entries), cas) {
            Ok(()) => return Ok(touched.into_iter().filter_map(|i| entries.get(i).cloned()).collect()),
            Err(StoreError::CasMismatch) => continue,
            Err(err) => return Err(err),
        }
    }
    Err(StoreError::Unavailable)
}

/// Every identity in the table.
pub fn snapshot(config: &InventoryConfig, store: &dyn Store) -> Result<Vec<Seen>, StoreError> {
    let mut all = Vec::new();
    for bucket in 0..config.buckets() {
        let (bytes, _) = store.get(&bucket_key(bucket))?;
        all.extend(decode_bucket(bytes.as_deref().unwrap_or_default()));
    }
    all.sort_by(|a, b| (&a.issuer, &a.identity).cmp(&(&b.issuer, &b.identity)));
    Ok(all)
}

/// An allowlist entry the configuration names: a route's `allow` identity, or a
/// `kubernetes` issuer's `service_accounts` entry (`*` ends a prefix).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AllowEntry {
    /// `route:NAME` or `issuer:NAME`.
    pub r#where: String,
    pub entry: String,
    /// Restricts matching identities to this issuer (service-account entries).
    #[serde(skip)]
    pub issuer: Option<String>,
}

impl AllowEntry {
    fn matches(&self, seen: &Seen) -> bool {
        if self.issuer.as_ref().is_some_and(|i| *i != seen.issuer) {
            return false;
        }
        match self.entry.strip_suffix('*') {
            Some(prefix) => seen.identity.starts_with(prefix),
            None => seen.identity == self.entry,
        }
    }
}

#[derive(Serialize)]
struct Json<'a> {
    generated_at: String,
    max_tracked_identities: u32,
    tracked: usize,
    identities: Vec<JsonIdentity<'a>>,
    /// Allowlist entries no tracked identity matches.
    unused_allow_entries: Vec<&'a AllowEntry>,
}

#[derive(Serialize)]
struct JsonIdentity<'a> {
    issuer: &'a str,
    identity: &'a str,
    first_seen: String,
    last_seen: String,
    /// Seconds since the last request.
    idle_seconds: u64,
    requests: u64,
    last_route: Option<&'a str>,
    last_source: Option<&'a str>,
    /// When it last came back after a dormant silence (`behaviour`'s
    /// `dormant_returned`), if it was seen to.
    dormant_returned_at: Option<String>,
}

/// The inventory as JSON: every tracked identity, and the allowlist entries none of
/// them matches.
pub fn render(config: &InventoryConfig, seen: &[Seen], allowlist: &[AllowEntry], now_ms: u64) -> String {
    let json = Json {
        generated_at: rfc3339_ms(now_ms),
        max_tracked_identities: config.max_tracked,
        tracked: seen.len(),
        identities: seen
            .iter()
            .map(|s| JsonIdentity {
                issuer: &s.issuer,
                identity: &s.identity,
                first_seen: rfc3339_ms(s.first_ms),
                last_seen: rfc3339_ms(s.last_ms),
                idle_seconds: now_ms.saturating_sub(s.last_ms) / 1_000,
                requests: s.requests,
                last_route: s.route.as_deref(),
                last_source: s.source.as_deref(),
                dormant_returned_at: (s.returned_ms > 0).then(|| rfc3339_ms(s.returned_ms)),
            })
            .collect(),
        unused_allow_entries: allowlist
            .iter()
            .filter(|entry| !seen.iter().any(|s| entry.matches(s)))
            .collect(),
    };
    serde_json::to_string_pretty(&json).unwrap_or_else(|_| "{}".to_owned())
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::host::store::MemoryStore;

    fn config(max: u64) -> InventoryConfig {
        compile(
            RawInventory::from_json(
                json!({"path": "/inv", "source_cidrs": ["10.0.0.0/8"], "max_tracked_identities": max}),
                "inventory",
            )
            .unwrap(),
            "inventory",
        )
        .unwrap()
    }

    #[test]
    fn workers_accumulate_and_the_merged_table_is_exact() {
        let config = config(100);
        let store = MemoryStore::new();
        assert_eq!(prepare(&config, &store).unwrap(), 7);
        let (mut a, mut b) = (Pending::default(), Pending::default());
        for i in 0..30u64 {
            a.note(
                config.max_tracked,
                "k8s",
                "payments/api",
                Some("api"),
                Some("10.0.0.1".into()),
                false,
                1_000 + i,
            );
        }
        for i in 0..12u64 {
            b.note(
                config.max_tracked,
                "k8s",
                "payments/api",
                Some("web"),
                Some("10.0.0.2".into()),
                false,
                2_000 + i,
            );
            b.note(config.max_tracked, "ci", "robot", None, None, false, 3_000 + i);
        }
        assert!(a.has_source("k8s", "payments/api") && !b.has_source("ci", "robot"));
        let merged_b = flush(&config, &store, &mut b);
        let merged_a = flush(&config, &store, &mut a);
        assert!(a.is_empty() && b.is_empty());
        assert_eq!(merged_b.len(), 2);
        assert_eq!(merged_a.len(), 1);
        assert_eq!(merged_a[0].requests, 42, "both workers' requests, each counted once");
        let all = snapshot(&config, &store).unwrap();
        assert_eq!(all.len(), 2);
        let api = all.iter().find(|s| s.identity == "payments/api").unwrap();
        assert_eq!((api.first_ms, api.last_ms, api.requests), (1_000, 2_011, 42));
        assert_eq!(
            (api.route.as_deref(), api.source.as_deref()),
            (Some("web"), Some("10.0.0.2")),
            "the latest"
        );
        let robot = all.iter().find(|s| s.identity == "robot").unwrap();
        assert_eq!((robot.requests, robot.route.as_deref()), (12, None));
        // A second round adds up.
        a.note(config.max_tracked, "ci", "robot", Some("api"), None, false, 9_000);
        flush(&config, &store, &mut a);
        let robot = snapshot(&config, &store).unwrap().into_iter().find(|s| s.identity == "robot").unwrap();
        assert_eq!((robot.requests, robot.last_ms, robot.route.as_deref()), (13, 9_000, Some("api")));
    }

    /// A store where another worker writes the same bucket between our read and write.
    struct Racing<'a> {
        inner: &'a MemoryStore,
        rival: std::cell::RefCell<Option<Pending>>,
        config: &'a InventoryConfig,
    }

    impl Store for Racing<'_> {
        fn get(&self, key: &str) -> Result<crate::host::store::Versioned, StoreError> {
            let got = self.inner.get(key);
            if let Some(mut rival) = self.rival.borrow_mut().take() {
                flush(self.config, self.inner, &mut rival);
            }
            got
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn a_lost_race_retries_and_loses_nothing() {
        let config = config(16);
        let store = MemoryStore::new();
        prepare(&config, &store).unwrap();
        let mut rival = Pending::default();
        rival.note(16, "ci", "x", None, None, false, 5);
        let racing = Racing { inner: &store, rival: std::cell::RefCell::new(Some(rival)), config: &config };
        let mut mine = Pending::default();
        mine.note(16, "ci", "x", None, None, false, 7);
        flush(&config, &racing, &mut mine);
        let all = snapshot(&config, &store).unwrap();
        assert_eq!((all.len(), all[0].requests, all[0].first_ms, all[0].last_ms), (1, 2, 5, 7));
    }

    #[test]
    fn the_table_is_bounded_and_evicts_the_quietest() {
        let config = config(16); // one bucket of 16
        let store = MemoryStore::new();
        prepare(&config, &store).unwrap();
        let mut p = Pending::default();
        for i in 0..40u64 {
            p.note(16, "ci", &format!("id-{i}"), None, None, false, i);
        }
        assert_eq!(p.deltas.len(), 16, "pending is bounded too");
        flush(&config, &store, &mut p);
        for i in 100..104u64 {
            p.note(16, "ci", &format!("late-{i}"), None, None, false, i);
        }
        flush(&config, &store, &mut p);
        let all = snapshot(&config, &store).unwrap();
        assert_eq!(all.len(), 16);
        assert!(all.iter().filter(|s| s.identity.starts_with("late-")).count() == 4);
        let long = "x".repeat(3 * MAX_IDENTITY_BYTES);
        p.note(16, "ci", &long, None, Some("é".repeat(100)), false, 200);
        flush(&config, &store, &mut p);
        let all = snapshot(&config, &store).unwrap();
        let cut_entry = all.iter().find(|s| s.identity.starts_with("xxx")).unwrap();
        assert_eq!(cut_entry.identity.len(), MAX_IDENTITY_BYTES);
        assert!(cut_entry.source.as_ref().is_some_and(|s| s.len() <= MAX_SHORT_BYTES));
    }

    #[test]
    fn the_json_lists_identities_and_unused_allowlist_entries() {
        let config = config(100);
        let seen = vec![Seen {
            issuer: "k8s".into(),
            identity: "payments/api".into(),
            first_ms: 1_800_000_000_000,
            last_ms: 1_800_000_060_000,
            requests: 7,
            route: Some("api".into()),
            source: Some("10.0.0.7".into()),
            returned_ms: 0,
        }];
        let allow = vec![
            AllowEntry { r#where: "route:api".into(), entry: "payments/*".into(), issuer: None },
            AllowEntry { r#where: "route:api".into(), entry: "ci/deployer".into(), issuer: None },
            AllowEntry {
                r#where: "issuer:other".into(),
                entry: "payments/api".into(),
                issuer: Some("other".into()),
            },
        ];
        let text = render(&config, &seen, &allow, 1_800_000_090_000);
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["tracked"], 1);
        assert_eq!(
            v["identities"][0],
            json!({"issuer": "k8s", "identity": "payments/api", "first_seen": "2027-01-15T08:00:00.000Z",
                   "last_seen": "2027-01-15T08:01:00.000Z", "idle_seconds": 30, "requests": 7,
                   "last_route": "api", "last_source": "10.0.0.7", "dormant_returned_at": null})
        );
        let returned = vec![Seen { returned_ms: 1_800_000_030_000, ..seen[0].clone() }];
        let v: Value = serde_json::from_str(&render(&config, &returned, &allow, 1_800_000_090_000)).unwrap();
        assert_eq!(v["identities"][0]["dormant_returned_at"], "2027-01-15T08:00:30.000Z");
        assert_eq!(
            v["unused_allow_entries"],
            json!([{"where": "route:api", "entry": "ci/deployer"}, {"where": "issuer:other", "entry": "payments/api"}])
        );
    }

    /// A `dormant_returned` return is kept with the identity (the latest, across
    /// workers), and a table written before that field is still read.
    #[test]
    fn a_dormant_return_is_kept_and_old_tables_are_read() {
        let config = config(16);
        let store = MemoryStore::new();
        prepare(&config, &store).unwrap();
        let (mut a, mut b) = (Pending::default(), Pending::default());
        a.note(16, "ci", "robot", None, None, false, 1_000);
        b.note(16, "ci", "robot", None, None, true, 5_000);
        b.note(16, "ci", "robot", None, None, false, 6_000);
        flush(&config, &store, &mut b);
        let merged = flush(&config, &store, &mut a);
        assert_eq!((merged[0].requests, merged[0].returned_ms), (3, 5_000));

        let old = Seen { returned_ms: 0, ..merged[0].clone() };
        let mut v1 = encode_bucket(std::slice::from_ref(&old));
        v1.truncate(v1.len() - 8); // a version 1 entry has no returned_ms
        v1[0] = 1;
        assert_eq!(decode_bucket(&v1), vec![old]);
        assert_eq!(decode_bucket(&[9, 1, 2, 3]), Vec::new(), "a version it does not know");
    }

    #[test]
    fn the_block_is_validated_naming_the_field() {
        let field = |v: Value| match compile(RawInventory::from_json(v, "inventory").unwrap(), "inventory") {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(json!({"path": "/i"})), "inventory.source_cidrs");
        assert_eq!(field(json!({"path": "/i", "source_cidrs": []})), "inventory.source_cidrs");
        assert_eq!(field(json!({"path": "/i", "source_cidrs": ["nope"]})), "inventory.source_cidrs[0]");
        assert_eq!(field(json!({"path": "i", "source_cidrs": ["10.0.0.0/8"]})), "inventory.path");
        assert_eq!(field(json!({"path": "/i?x", "source_cidrs": ["10.0.0.0/8"]})), "inventory.path");
        assert_eq!(field(json!({"source_cidrs": ["10.0.0.0/8"]})), "inventory.source_cidrs");
        assert_eq!(field(json!({"max_tracked_identities": 0})), "inventory.max_tracked_identities");
        assert_eq!(field(json!({"max_tracked_identities": 10_001})), "inventory.max_tracked_identities");
        let quiet = compile(RawInventory::default(), "inventory").unwrap();
        assert_eq!((quiet.path, quiet.max_tracked), (None, 1_000));
        let c = config(5);
        assert!(c.serves("/inv") && c.serves("/inv?x=1") && !c.serves("/inv/") && !c.serves("/in"));
        assert_eq!(c.buckets(), 1);
    }
}
