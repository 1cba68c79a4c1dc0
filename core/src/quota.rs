//! Per-identity quotas: a GCRA budget for each verified identity, kept in
//! proxy-wasm shared data so that all worker threads of one Envoy enforce one limit
//! together.
//!
//! Pure: the host is behind [`Store`], the clock is an argument. The glue calls
//! [`Quotas::check`] only after a token verified, so only verified identities
//! create state; an unauthenticated flood writes nothing.
//!
//! # Policies
//! The first rule that matches the identity (exactly, or by prefix for a pattern
//! ending in `*`), or a claim (equal to, or an array containing, a string), and the
//! request's route class if the rule names routes, decides the policy; otherwise
//! the policy is `default`. Each policy is `requests` per `per_seconds`, at most
//! `burst` at once (default: `requests`, a plain "N per window"; at most
//! `requests`, so the `RateLimit` header's `r` never exceeds its `q`).
//!
//! # Algorithm
//! GCRA ([`gcra`]): one timestamp, the TAT, per identity and policy. Refusals do
//! not write. Time is nanoseconds, exact. A clock that steps back grants nothing
//! and locks out for at most one emission interval; one that steps forward refills
//! as if the time had passed (a wall clock is all the host offers).
//!
//! # Bounded table
//! Envoy never deletes a shared-data key, so state must live in a fixed set of keys.
//! The table ([`table`]) has `max_tracked_identities` entries in buckets of up to
//! 64, one key per bucket (`nhi-guard.q.b.<n>`), plus one overflow key per policy
//! (`nhi-guard.q.o.<policy>`). An entry is 24 bytes: a 128-bit FNV-1a fingerprint
//! of (issuer, subject, policy) and the TAT. With the host's per-key overhead
//! spread over the bucket, that is under 30 bytes per tracked identity, under
//! 300 KB at the default 10 000.
//!
//! The fingerprint is not keyed (there is no secret every worker could share
//! before the first request). Someone who can choose subjects at a trusted issuer
//! could therefore pick many that land in one bucket and push the other identities
//! of that bucket into overflow, or search for a fingerprint collision (two
//! identities sharing one budget). Neither grants anyone more than a budget.
//!
//! An identity hashes to one bucket. An entry whose TAT is not in the future is
//! *idle*: its identity has its whole burst back, so forgetting it changes no
//! decision. Idle entries are dropped whenever a bucket is written, which is how
//! space is reused; an identity never shares an entry while its bucket has room.
//!
//! # When the bucket is full
//! If every entry of the identity's bucket is active, the request is charged to the
//! policy's *overflow budget*: one GCRA state with the policy's own limits, shared by
//! every identity that found its bucket full ([`Tracking::Overflow`], for a metric).
//! - Not "allow": filling buckets would then be a way to escape the limit.
//! - Not "deny": a caller that has done nothing wrong would be refused because
//!   others are busy.
//! - Not "evict the least-indebted entry": the evicted identity would get its
//!   budget back, so a few colliding identities could take turns and never be limited.
//!
//! The overflow budget keeps the aggregate bounded: together, the overflowing
//! identities get one identity's allowance, never more. The price is paid only by
//! them: a noisy one among them can use up the others' share, while every tracked
//! identity keeps its own budget untouched. Overflow is rare when the
//! table is sized for the identities active at once (active = seen within the last
//! reset period, e.g. 12 s for 100/60 s with burst 20): with half the entries
//! active, a new identity finds its bucket full with probability about 4·10⁻⁷
//! (1.6 % at three quarters; see [`table::WAYS`]). A bucket can fill before the
//! whole table does; finding room elsewhere would need either a scan or several
//! keys updated atomically, and shared data has neither.
//!
//! # Across workers
//! Each charge is a compare-and-swap loop on one key: read value and token, decide,
//! write with the token, and on a mismatch read again and redecide, so no update is
//! lost. After [`table::MAX_ATTEMPTS`] (8) lost races the request is refused
//! ([`Anomaly::Contention`], `Retry-After` one emission interval): admitting it would
//! let through a request that is counted nowhere, under exactly the load a limiter
//! exists for. Each loss means another worker's write succeeded, so someone made
//! progress; eight in a row for one request takes thousands of writes per second
//! to one bucket.
//!
//! A key that was never written has no CAS token, and a write without one always
//! succeeds. Such a write could clobber another worker's fresh data, so it is only
//! ever used to create a key holding the empty bucket; data goes in afterwards, with
//! a token. The remaining race: worker B finds the key missing, worker A creates it
//! and charges it, then B's creation lands and empties it. What is lost is what was
//! charged to that bucket inside B's get-to-set window (microseconds), once per key
//! per Envoy process. [`Quotas::prepare`], called when the plugin is configured,
//! creates every key up front so requests never take that path.
//!
//! State that does not decode (not written by this version) is replaced, and the
//! outcome says so ([`Anomaly::CorruptStateReset`]) rather than resetting quietly.
//! When the store fails, [`Quotas::check`] returns [`QuotaError::StoreUnavailable`]
//! and the glue can retry on a per-VM [`MemoryStore`].
//!
//! Changing `max_tracked_identities` re-homes identities: each starts afresh once,
//! and keys beyond the new size stay until Envoy restarts (shared data lasts as long
//! as the process), so the bound is the largest size configured since.

mod config;
pub mod gcra;
pub mod table;

use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};

pub use crate::host::store::{MemoryStore, Store, StoreError};
pub use config::{
    compile, from_value, RawLimit, RawQuotas, RawRule, DEFAULT_MAX_TRACKED_IDENTITIES, DEFAULT_POLICY,
    MAX_PER_SECONDS, MAX_REQUESTS, MAX_RULES, MAX_TRACKED_IDENTITIES,
};

use gcra::{Decision, Rate, NANOS_PER_SECOND};
use table::{Charged, Fingerprint, Geometry};

/// The validated `quotas` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quotas {
    default: Policy,
    rules: Vec<Rule>,
    pub max_tracked_identities: u32,
    /// Whether allowed responses carry `RateLimit-Policy` and `RateLimit` too
    /// (refusals always do).
    pub response_headers: bool,
    /// A budget per (identity, DPoP key) rather than per identity.
    pub per_dpop_key: bool,
    geometry: Geometry,
    /// Where the block sits in the plugin configuration, for error paths.
    at: String,
}

/// One named limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    name: String,
    requests: u64,
    per_seconds: u64,
    burst: u64,
    rate: Rate,
}

impl Policy {
    /// `default`, a rule's `name`, or `rule-<index>`.
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn requests(&self) -> u64 {
        self.requests
    }
    pub fn per_seconds(&self) -> u64 {
        self.per_seconds
    }
    pub fn burst(&self) -> u64 {
        self.burst
    }
    pub fn rate(&self) -> Rate {
        self.rate
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    selector: Selector,
    /// `None`: every route.
    routes: Option<Vec<String>>,
    policy: Policy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Selector {
    Identities(Vec<IdentityPattern>),
    Claim { claim: String, equals: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum IdentityPattern {
    Exact(String),
    /// Written with a trailing `*`.
    Prefix(String),
}

impl IdentityPattern {
    fn matches(&self, identity: &str) -> bool {
        match self {
            IdentityPattern::Exact(exact) => identity == exact,
            IdentityPattern::Prefix(prefix) => identity.starts_with(prefix.as_str()),
        }
    }
}

impl Rule {
    fn matches(&self, identity: &str, claims: &Map<String, Value>, route: Option<&str>) -> bool {
        let on_route = match &self.routes {
            None => true,
            Some(routes) => route.is_some_and(|route| routes.iter().any(|r| r == route)),
        };
        on_route
            && match &self.selector {
                Selector::Identities(patterns) => patterns.iter().any(|p| p.matches(identity)),
                Selector::Claim { claim, equals } => match claims.get(claim) {
                    Some(Value::String(value)) => value == equals,
                    Some(Value::Array(values)) => values.iter().any(|v| v.as_str() == Some(equals.as_str())),
                    _ => false,
                },
            }
    }
}

impl Quotas {
    /// The policy that applies: the first matching rule's, else the default.
    /// `identity` is what `identities` patterns match (the verified subject);
    /// `claims` are the verified claims; `route` is the request's route class.
    pub fn policy_for(&self, identity: &str, claims: &Map<String, Value>, route: Option<&str>) -> &Policy {
        self.rules
            .iter()
            .find(|rule| rule.matches(identity, claims, route))
            .map_or(&self.default, |rule| &rule.policy)
    }

    pub fn default_policy(&self) -> &Policy {
        &self.default
    }

    /// Every policy: the default first, then the rules' in order.
    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        std::iter::once(&self.default).chain(self.rules.iter().map(|r| &r.policy))
    }

    /// The route class names rules refer to, each with its field path, so the
    /// caller can check them against the route classes it knows.
    pub fn route_references(&self) -> Vec<(String, &str)> {
        let mut refs = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            for (j, route) in rule.routes.iter().flatten().enumerate() {
                refs.push((format!("{}.rules[{i}].routes[{j}]", self.at), route.as_str()));
            }
        }
        refs
    }

    /// Creates every store key the table can use, so that requests never create a
    /// key (see the module docs). Call it when the plugin is configured; returns
    /// how many keys it created.
    pub fn prepare<S: Store + ?Sized>(&self, store: &S) -> Result<usize, QuotaError> {
        let buckets = (0..self.geometry.buckets()).map(table::bucket_key);
        let overflow = self.policies().map(|p| table::overflow_key(&p.name));
        let mut created = 0;
        for key in buckets.chain(overflow) {
            if table::create(store, &key).map_err(|_| QuotaError::StoreUnavailable)? {
                created += 1;
            }
        }
        Ok(created)
    }

    /// Charges one request of the identity (`issuer`, `subject`) under `policy`
    /// at `now` (time since the Unix epoch, from the same clock on every worker).
    ///
    /// `issuer` is any stable name of the issuer (e.g. its configured name): it
    /// keeps equal subjects of different issuers apart.
    pub fn check<S: Store + ?Sized>(
        &self,
        store: &S,
        policy: &Policy,
        issuer: &str,
        subject: &str,
        now: Duration,
    ) -> Result<QuotaOutcome, QuotaError> {
        self.check_keyed(store, policy, issuer, subject, None, now)
    }

    /// [`Quotas::check`] for the identity together with the DPoP key `jkt` it proved
    /// it holds (with `per_dpop_key`: each key its own budget). `None`: the identity's.
    pub fn check_keyed<S: Store + ?Sized>(
        &self,
        store: &S,
        policy: &Policy,
        issuer: &str,
        subject: &str,
        jkt: Option<&str>,
        now: Duration,
    ) -> Result<QuotaOutcome, QuotaError> {
        self.check_leased(store, None, policy, issuer, subject, jkt, now)
    }

    /// [`Quotas::check_keyed`], first from this VM's `leases` if it holds one for the
    /// identity, and taking a new lease when the identity is far from its limit (see
    /// [`Leases`]). `None`: never leased (every request charges the store).
    #[allow(clippy::too_many_arguments)]
    pub fn check_leased<S: Store + ?Sized>(
        &self,
        store: &S,
        mut leases: Option<&mut Leases>,
        policy: &Policy,
        issuer: &str,
        subject: &str,
        jkt: Option<&str>,
        now: Duration,
    ) -> Result<QuotaOutcome, QuotaError> {
        let now = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        let fp = match jkt {
            Some(jkt) => Fingerprint::identity_key(issuer, subject, jkt, &policy.name),
            None => Fingerprint::identity(issuer, subject, &policy.name),
        };
        // RateLimit headers on allowed responses report the bucket itself: no leases.
        if self.response_headers {
            leases = None;
        }
        if let Some(remaining) = leases.as_deref_mut().and_then(|leases| leases.take(fp)) {
            return Ok(QuotaOutcome {
                allowed: true,
                policy: policy.clone(),
                remaining,
                reset_after: Duration::ZERO,
                retry_after: None,
                tracking: Tracking::Identity,
                anomaly: None,
            });
        }
        let can_lease = leases.as_deref().is_some_and(Leases::has_room);
        let bucket = self.geometry.bucket_of(fp);
        let key = table::bucket_key(bucket);
        let charged =
            table::charge(store, &key, self.geometry.capacity(bucket), fp, policy.rate, now, |left| {
                if can_lease {
                    lease_size(left)
                } else {
                    0
                }
            })
            .map_err(|_| QuotaError::StoreUnavailable)?;
        if let (Charged::Decided { decision, leased, .. }, Some(leases)) = (&charged, leases) {
            if *leased > 0 {
                leases.hold(Lease {
                    fp,
                    bucket: key,
                    rate: policy.rate,
                    left: *leased,
                    remaining: decision.remaining,
                    taken_ns: now,
                });
            }
        }
        if charged != Charged::Full {
            return Ok(QuotaOutcome::new(policy, charged, Tracking::Identity));
        }
        let charged = table::charge(
            store,
            &table::overflow_key(&policy.name),
            1,
            Fingerprint::overflow(&policy.name),
            policy.rate,
            now,
            |_| 0,
        )
        .map_err(|_| QuotaError::StoreUnavailable)?;
        Ok(QuotaOutcome::new(policy, charged, Tracking::Overflow))
    }

    /// Gives back what leases older than [`LEASE_NANOS`] still hold (on the tick, and
    /// where there is none on every charge: with nothing due it allocates nothing).
    pub fn refund_expired<S: Store + ?Sized>(&self, store: &S, leases: &mut Leases, now: Duration) {
        let now = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        for lease in leases.expire(now) {
            table::refund(store, &lease.bucket, lease.fp, lease.rate, lease.left);
        }
    }
}

/// Admissions one lease holds at most, beyond the request that takes it.
pub const LEASE_EXTRA: u64 = 15;
/// Requests an identity must still have after a lease for one to be taken.
pub const LEASE_FLOOR: u64 = 64;
/// Leases a VM holds at once.
pub const MAX_LEASES: usize = 64;
/// A lease not used up within this is given back (checked on the tick).
pub const LEASE_NANOS: u64 = 200_000_000;

/// How many extra admissions to charge when `left` more would be admitted now.
fn lease_size(left: u64) -> u64 {
    left.saturating_sub(LEASE_FLOOR).min(LEASE_EXTRA)
}

/// One VM's leases: admissions charged to the shared bucket ahead of use, so that
/// an identity far from its limit touches shared data once per [`LEASE_EXTRA`] + 1
/// requests instead of twice per request (a read and a compare-and-swap write:
/// about 6 µs of a cached request in Envoy, measured by `make bench`).
///
/// Never more than the limit: every leased admission was charged, and GCRA admits a
/// request later than charged just the same. A lease is only taken while the
/// identity has more than [`LEASE_FLOOR`] requests left after it, so small limits
/// (and an identity close to any limit) are charged one request at a time exactly as
/// without leases. What is given up: near the limit, another worker may refuse while
/// this one still holds up to [`LEASE_EXTRA`] prepaid admissions, until it uses them or
/// gives them back ([`LEASE_NANOS`], on the tick, or where there is none at this
/// VM's next charge: [`Quotas::refund_expired`]); and the decision log's
/// `quota_remaining` of a leased admission is what the lease's charge left.
#[derive(Debug, Default)]
pub struct Leases {
    held: Vec<Lease>,
}

#[derive(Debug, Clone)]
struct Lease {
    fp: Fingerprint,
    bucket: String,
    rate: Rate,
    /// Admissions left to hand out.
    left: u64,
    /// Requests the bucket had left for the identity when the lease was charged.
    remaining: u64,
    taken_ns: u64,
}

impl Leases {
    /// One admission from `fp`'s lease, if this VM holds one: the remaining count to
    /// report.
    fn take(&mut self, fp: Fingerprint) -> Option<u64> {
        let at = self.held.iter().position(|lease| lease.fp == fp)?;
        let lease = self.held.get_mut(at)?;
        lease.left -= 1;
        let remaining = lease.remaining;
        if lease.left == 0 {
            self.held.swap_remove(at);
        }
        Some(remaining)
    }

    fn has_room(&self) -> bool {
        self.held.len() < MAX_LEASES
    }

    fn hold(&mut self, lease: Lease) {
        if self.has_room() {
            self.held.push(lease);
        }
    }

    /// Removes and returns the leases taken more than [`LEASE_NANOS`] before `now`
    /// (without touching the list when none is: this runs on every charge where
    /// there is no tick).
    fn expire(&mut self, now: u64) -> Vec<Lease> {
        let expired = |l: &Lease| now.saturating_sub(l.taken_ns) >= LEASE_NANOS;
        if !self.held.iter().any(expired) {
            return Vec::new();
        }
        let (expired, kept) = std::mem::take(&mut self.held).into_iter().partition(expired);
        self.held = kept;
        expired
    }

    /// Admissions held, over all leases.
    pub fn held(&self) -> u64 {
        self.held.iter().map(|lease| lease.left).sum()
    }
}

/// Why a request could not be checked at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaError {
    /// The store failed (or cannot do compare-and-swap): nothing was decided.
    StoreUnavailable,
}

impl fmt::Display for QuotaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuotaError::StoreUnavailable => f.write_str("quota store unavailable"),
        }
    }
}

impl std::error::Error for QuotaError {}

/// Whose budget a request was charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracking {
    /// The identity's own entry.
    Identity,
    /// The policy's shared overflow budget: the identity's bucket was full.
    Overflow,
}

/// Something the operator should hear about; the decision stands regardless.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anomaly {
    /// Every compare-and-swap attempt lost a race; the request was refused.
    Contention,
    /// Stored state did not decode and was replaced; the identities it held
    /// start afresh.
    CorruptStateReset,
    /// An overflow key holds state this filter did not write (another plugin
    /// with the same VM id writing our keys?); the request was refused.
    ForeignState,
}

/// The verdict on one request, with what its response headers need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaOutcome {
    pub allowed: bool,
    pub policy: Policy,
    /// Requests still admissible right now.
    pub remaining: u64,
    /// Until the whole burst is back.
    pub reset_after: Duration,
    /// Set exactly when refused.
    pub retry_after: Option<Duration>,
    pub tracking: Tracking,
    pub anomaly: Option<Anomaly>,
}

impl QuotaOutcome {
    fn new(policy: &Policy, charged: Charged, tracking: Tracking) -> QuotaOutcome {
        let (decision, anomaly) = match charged {
            Charged::Decided { decision, reset_corrupt, .. } => {
                (decision, reset_corrupt.then_some(Anomaly::CorruptStateReset))
            }
            // Refused; retry once the budget could have moved by one request.
            Charged::Contended { last } => (
                Decision {
                    allowed: false,
                    remaining: 0,
                    retry_after_ns: last.retry_after_ns.max(policy.rate.emission_ns()),
                    ..last
                },
                Some(Anomaly::Contention),
            ),
            // Only one fingerprint is ever written to an overflow key, so it cannot
            // be full unless something else writes our keys: refuse, loudly.
            Charged::Full => (
                Decision {
                    allowed: false,
                    tat: 0,
                    persist: false,
                    remaining: 0,
                    reset_after_ns: policy.rate.emission_ns(),
                    retry_after_ns: policy.rate.emission_ns(),
                },
                Some(Anomaly::ForeignState),
            ),
        };
        QuotaOutcome {
            allowed: decision.allowed,
            policy: policy.clone(),
            remaining: decision.remaining,
            reset_after: Duration::from_nanos(decision.reset_after_ns),
            retry_after: (!decision.allowed).then(|| Duration::from_nanos(decision.retry_after_ns)),
            tracking,
            anomaly,
        }
    }

    /// `Retry-After` in whole seconds, rounded up and at least 1; `None` when allowed.
    pub fn retry_after_seconds(&self) -> Option<u64> {
        self.retry_after.map(|d| ceil_seconds(d).max(1))
    }

    /// The response headers (lower-case names): `ratelimit-policy` and `ratelimit`
    /// in the syntax of draft-ietf-httpapi-ratelimit-headers, plus `retry-after`
    /// when refused. `q`/`w` are the policy's requests and window; `r` is what is
    /// left now; `t` is the seconds, rounded up, until the whole burst is back.
    pub fn headers(&self) -> Vec<(String, String)> {
        let name = &self.policy.name;
        let mut headers = vec![
            (
                "ratelimit-policy".to_owned(),
                format!("\"{name}\";q={};w={}", self.policy.requests, self.policy.per_seconds),
            ),
            (
                "ratelimit".to_owned(),
                format!("\"{name}\";r={};t={}", self.remaining, ceil_seconds(self.reset_after)),
            ),
        ];
        if let Some(seconds) = self.retry_after_seconds() {
            headers.push(("retry-after".to_owned(), seconds.to_string()));
        }
        headers
    }
}

fn ceil_seconds(d: Duration) -> u64 {
    let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    nanos.div_ceil(NANOS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};

    use serde_json::json;

    use super::*;

    const T0: Duration = Duration::from_secs(1_700_000_000);

    fn at(ms: u64) -> Duration {
        T0 + Duration::from_millis(ms)
    }

    fn quotas(value: Value) -> Quotas {
        from_value(value, "quotas").unwrap()
    }

    /// 10/s, burst 5, tiny table.
    fn small(max_tracked: u64) -> Quotas {
        quotas(json!({
            "default": { "requests": 10, "per_seconds": 1, "burst": 5 },
            "max_tracked_identities": max_tracked
        }))
    }

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    fn allowed(q: &Quotas, store: &dyn Store, subject: &str, now: Duration) -> bool {
        q.check(store, q.default_policy(), "ci", subject, now).unwrap().allowed
    }

    fn admitted(q: &Quotas, store: &dyn Store, subject: &str, now: Duration, n: usize) -> usize {
        (0..n).filter(|_| allowed(q, store, subject, now)).count()
    }

    // ---- policy selection -------------------------------------------------

    fn selection() -> Quotas {
        quotas(json!({
            "default": { "requests": 100, "per_seconds": 60, "burst": 20 },
            "rules": [
                { "name": "deploys", "identities": ["system:serviceaccount:ci:deployer"],
                  "routes": ["deploy-api"], "requests": 1, "per_seconds": 60 },
                { "identities": ["system:serviceaccount:ci:deployer"], "requests": 10, "per_seconds": 1, "burst": 5 },
                { "identities": ["system:serviceaccount:batch:*"], "requests": 50, "per_seconds": 1 },
                { "claim": "tier", "equals": "gold", "requests": 1000, "per_seconds": 60 },
                { "claim": "groups", "equals": "partners", "requests": 200, "per_seconds": 60 }
            ]
        }))
    }

    #[test]
    fn identities_match_exactly_or_by_prefix() {
        let q = selection();
        let none = Map::new();
        let name = |id: &str| q.policy_for(id, &none, None).name().to_owned();
        assert_eq!(name("system:serviceaccount:ci:deployer"), "rule-1");
        assert_eq!(name("system:serviceaccount:ci:deployer2"), "default");
        assert_eq!(name("system:serviceaccount:ci"), "default");
        assert_eq!(name("system:serviceaccount:batch:nightly"), "rule-2");
        assert_eq!(name("system:serviceaccount:batch:"), "rule-2");
        assert_eq!(name("system:serviceaccount:batch"), "default");
    }

    #[test]
    fn claims_match_strings_and_arrays_of_strings() {
        let q = selection();
        let name = |c: Value| q.policy_for("x", &claims(c), None).name().to_owned();
        assert_eq!(name(json!({ "tier": "gold" })), "rule-3");
        assert_eq!(name(json!({ "tier": ["silver", "gold"] })), "rule-3");
        assert_eq!(name(json!({ "tier": "Gold" })), "default");
        assert_eq!(name(json!({ "tier": ["silver"] })), "default");
        // Not a string: no match, not a coercion.
        assert_eq!(name(json!({ "tier": { "gold": true } })), "default");
        assert_eq!(name(json!({ "tier": null })), "default");
        assert_eq!(name(json!({ "groups": ["partners"] })), "rule-4");
    }

    #[test]
    fn route_scoped_rules_apply_only_on_their_routes() {
        let q = selection();
        let none = Map::new();
        let deployer = "system:serviceaccount:ci:deployer";
        assert_eq!(q.policy_for(deployer, &none, Some("deploy-api")).name(), "deploys");
        assert_eq!(q.policy_for(deployer, &none, Some("other")).name(), "rule-1");
        assert_eq!(q.policy_for(deployer, &none, None).name(), "rule-1");
        assert_eq!(q.route_references(), [("quotas.rules[0].routes[0]".to_owned(), "deploy-api")]);
    }

    #[test]
    fn first_matching_rule_wins() {
        let q = selection();
        // Matches rule-2 by identity and rule-3 by claim: rule-2 comes first.
        let c = claims(json!({ "tier": "gold" }));
        assert_eq!(q.policy_for("system:serviceaccount:batch:x", &c, None).name(), "rule-2");
        let names: Vec<&str> = q.policies().map(Policy::name).collect();
        assert_eq!(names, ["default", "deploys", "rule-1", "rule-2", "rule-3", "rule-4"]);
    }

    // ---- the shared table -------------------------------------------------

    #[test]
    fn burst_then_steady_rate_through_the_store() {
        let q = small(100);
        let store = MemoryStore::new();
        assert_eq!(admitted(&q, &store, "a", at(0), 20), 5);
        assert_eq!(admitted(&q, &store, "a", at(99), 5), 0);
        assert_eq!(admitted(&q, &store, "a", at(100), 5), 1);
        assert_eq!(admitted(&q, &store, "a", at(350), 5), 2);
        // Fully refilled after the reset time, and no more than the burst.
        assert_eq!(admitted(&q, &store, "a", at(10_000), 20), 5);
    }

    #[test]
    fn identities_are_independent() {
        let q = small(100);
        let store = MemoryStore::new();
        assert_eq!(admitted(&q, &store, "a", at(0), 10), 5);
        assert_eq!(admitted(&q, &store, "b", at(0), 10), 5);
        // The same subject from another issuer is another identity.
        let p = q.default_policy();
        assert!(q.check(&store, p, "other-issuer", "a", at(0)).unwrap().allowed);
        // The same identity under another policy has another budget.
        let q2 = quotas(json!({
            "default": { "requests": 10, "per_seconds": 1, "burst": 5 },
            "rules": [{ "name": "deploys", "identities": ["a"], "routes": ["deploy-api"],
                        "requests": 1, "per_seconds": 60 }],
            "max_tracked_identities": 100
        }));
        let deploys = q2.policy_for("a", &Map::new(), Some("deploy-api"));
        assert!(q2.check(&store, deploys, "ci", "a", at(0)).unwrap().allowed);
        assert!(!q2.check(&store, deploys, "ci", "a", at(0)).unwrap().allowed);
    }

    #[test]
    fn admitted_count_over_three_seconds_is_exactly_gcra() {
        // See gcra::tests: 1000 requests over 3 s at 10/s burst 5 → 5 + 29.
        let q = small(100);
        let store = MemoryStore::new();
        let n = (0..1000u64).filter(|i| allowed(&q, &store, "a", at(i * 3))).count();
        assert_eq!(n, 34);
    }

    #[test]
    fn clock_going_backwards_through_the_store() {
        let q = small(100);
        let store = MemoryStore::new();
        assert_eq!(admitted(&q, &store, "a", at(3_600_000), 10), 5);
        // An hour back: nothing new, and one T (100 ms) later one request again.
        assert_eq!(admitted(&q, &store, "a", at(0), 10), 0);
        assert_eq!(admitted(&q, &store, "a", at(100), 10), 1);
    }

    #[test]
    fn table_full_overflows_into_a_shared_budget() {
        // Two entries in all; a, b active; c and d find the bucket full.
        let q = small(2);
        let store = MemoryStore::new();
        let p = q.default_policy();
        let a = q.check(&store, p, "ci", "a", at(0)).unwrap();
        assert_eq!((a.allowed, a.tracking), (true, Tracking::Identity));
        assert!(q.check(&store, p, "ci", "b", at(0)).unwrap().allowed);

        let c = q.check(&store, p, "ci", "c", at(0)).unwrap();
        assert_eq!((c.allowed, c.tracking), (true, Tracking::Overflow));
        assert_eq!(c.remaining, 4);
        // c and d share the one overflow budget: 5 between them, not 5 each.
        let shared = admitted(&q, &store, "c", at(0), 3) + admitted(&q, &store, "d", at(0), 10);
        assert_eq!(shared, 4);
        let d = q.check(&store, p, "ci", "d", at(0)).unwrap();
        assert_eq!((d.allowed, d.tracking), (false, Tracking::Overflow));
        // The tracked identities are untouched by the overflow.
        assert_eq!(admitted(&q, &store, "a", at(0), 10), 4);
        assert_eq!(admitted(&q, &store, "b", at(0), 10), 4);
    }

    #[test]
    fn no_two_identities_share_while_the_table_has_room() {
        // One bucket, as large as they come: every identity gets its own burst.
        let q = small(table::WAYS as u64);
        let store = MemoryStore::new();
        for i in 0..table::WAYS {
            let id = format!("id-{i}");
            assert_eq!(admitted(&q, &store, &id, at(0), 10), 5, "{id}");
        }
        let extra = q.check(&store, q.default_policy(), "ci", "one-more", at(0)).unwrap();
        assert_eq!(extra.tracking, Tracking::Overflow);
    }

    #[test]
    fn idle_entries_are_reused() {
        let q = small(2);
        let store = MemoryStore::new();
        let p = q.default_policy();
        assert!(allowed(&q, &store, "a", at(0))); // idle from 100 ms
        assert_eq!(admitted(&q, &store, "b", at(50), 5), 5); // idle from 550 ms
        assert_eq!(q.check(&store, p, "ci", "c", at(99)).unwrap().tracking, Tracking::Overflow);
        // a has its whole burst back at 100 ms: its entry goes to c.
        let c = q.check(&store, p, "ci", "c", at(100)).unwrap();
        assert_eq!((c.allowed, c.tracking), (true, Tracking::Identity));
        // b's debt survived the reuse.
        assert!(!allowed(&q, &store, "b", at(100)));
        // a comes back: no room now (b, c active) so a overflows; nothing of it was kept.
        let a = q.check(&store, p, "ci", "a", at(100)).unwrap();
        assert_eq!(a.tracking, Tracking::Overflow);
    }

    #[test]
    fn state_per_identity_is_24_bytes() {
        let q = small(16);
        let store = MemoryStore::new();
        for i in 0..10 {
            allowed(&q, &store, &format!("id-{i}"), at(0));
        }
        let (value, _) = store.get(&table::bucket_key(0)).unwrap();
        assert_eq!(value.unwrap().len(), 1 + 10 * table::ENTRY_BYTES);
    }

    // ---- concurrency ------------------------------------------------------

    /// A store shared with another worker: before some of this worker's writes,
    /// the other worker gets to run (between this worker's read and write, the
    /// only window where interleaving matters).
    struct Interleaved<'a> {
        inner: &'a MemoryStore,
        before_set: RefCell<Box<dyn FnMut() + 'a>>,
        sets: Cell<usize>,
        blind_sets: Cell<usize>,
    }

    impl<'a> Interleaved<'a> {
        fn new(inner: &'a MemoryStore, before_set: impl FnMut() + 'a) -> Self {
            Interleaved {
                inner,
                before_set: RefCell::new(Box::new(before_set)),
                sets: Cell::new(0),
                blind_sets: Cell::new(0),
            }
        }
    }

    impl Store for Interleaved<'_> {
        fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            (self.before_set.borrow_mut())();
            self.sets.set(self.sets.get() + 1);
            if cas.is_none() {
                self.blind_sets.set(self.blind_sets.get() + 1);
            }
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn a_concurrent_write_between_read_and_write_is_not_lost() {
        let q = small(100);
        let shared = MemoryStore::new();
        q.prepare(&shared).unwrap();
        let other_admitted = Cell::new(0);
        let mut once = true;
        let worker_a = Interleaved::new(&shared, || {
            if std::mem::take(&mut once) {
                // Worker B charges "a" after A read and before A writes.
                if allowed(&q, &shared, "a", at(0)) {
                    other_admitted.set(other_admitted.get() + 1);
                }
            }
        });
        assert!(allowed(&q, &worker_a, "a", at(0)));
        // A's first write met a stale token and was redone on top of B's.
        assert_eq!(worker_a.sets.get(), 2);
        assert_eq!(other_admitted.get(), 1);
        // Two charged, so three left of five.
        assert_eq!(admitted(&q, &shared, "a", at(0), 10), 3);
    }

    #[test]
    fn two_interleaving_workers_admit_exactly_the_limit() {
        // Worker B runs requests inside worker A's read-write windows. Together
        // they must admit what one worker would: the burst at once, then one per
        // 100 ms; a lost update would show as more.
        let q = small(100);
        let shared = MemoryStore::new();
        q.prepare(&shared).unwrap();
        let now = Cell::new(at(0));
        let b_admitted = Cell::new(0);
        let mut a_writes = 0u32;
        let worker_a = Interleaved::new(&shared, || {
            // B cuts in before every other write attempt of A (before every one, B
            // would win every race and A would never be admitted: also correct,
            // but it would not show the two sharing the budget).
            a_writes += 1;
            if a_writes % 2 == 1 && allowed(&q, &shared, "a", now.get()) {
                b_admitted.set(b_admitted.get() + 1);
            }
        });
        let mut a_admitted = 0;
        for i in 0..1000u64 {
            now.set(at(i * 3));
            if allowed(&q, &worker_a, "a", now.get()) {
                a_admitted += 1;
            }
        }
        assert!(a_admitted > 0 && b_admitted.get() > 0);
        assert_eq!(a_admitted + b_admitted.get(), 34);
        assert_eq!(worker_a.blind_sets.get(), 0);
    }

    #[test]
    fn losing_every_race_refuses_with_contention() {
        // Another worker writes the bucket before each of our writes, for ever.
        let q = quotas(json!({
            "default": { "requests": 1000, "per_seconds": 1 },
            "max_tracked_identities": 100
        }));
        let shared = MemoryStore::new();
        q.prepare(&shared).unwrap();
        let p = q.default_policy();
        let busy = Interleaved::new(&shared, || {
            assert!(q.check(&shared, p, "ci", "a", at(0)).unwrap().allowed);
        });
        let out = q.check(&busy, p, "ci", "a", at(0)).unwrap();
        assert!(!out.allowed);
        assert_eq!(out.anomaly, Some(Anomaly::Contention));
        assert_eq!(busy.sets.get(), table::MAX_ATTEMPTS);
        assert_eq!(out.remaining, 0);
        assert_eq!(out.retry_after_seconds(), Some(1));
    }

    #[test]
    fn prepared_tables_never_write_without_a_token() {
        let q = small(200);
        let shared = MemoryStore::new();
        let created = q.prepare(&shared).unwrap();
        assert_eq!(created, 4 + 1); // four buckets of 50, one overflow key
        assert_eq!(q.prepare(&shared).unwrap(), 0);
        let store = Interleaved::new(&shared, || {});
        for i in 0..400 {
            allowed(&q, &store, &format!("id-{i}"), at(0));
        }
        assert!(store.sets.get() > 0);
        assert_eq!(store.blind_sets.get(), 0);
        assert_eq!(shared.len(), created);
    }

    #[test]
    fn unprepared_key_creation_race_is_the_documented_bound() {
        // Worker B finds the key missing; meanwhile worker A creates it and charges
        // "a"; then B's creation lands and empties the bucket. What A charged in
        // that window is lost (one request here), and nothing else: B then charges
        // with a token, on top of the empty bucket.
        let q = small(16);
        let shared = MemoryStore::new();
        let mut once = true;
        let worker_b = Interleaved::new(&shared, || {
            if std::mem::take(&mut once) {
                assert!(allowed(&q, &shared, "a", at(0)));
            }
        });
        assert!(allowed(&q, &worker_b, "a", at(0)));
        assert_eq!(worker_b.blind_sets.get(), 1);
        // Two admitted, but only B's is on record: 4 left instead of 3.
        assert_eq!(admitted(&q, &shared, "a", at(0), 10), 4);
    }

    #[test]
    fn an_unavailable_store_decides_nothing() {
        struct Down;
        impl Store for Down {
            fn get(&self, _: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
                Err(StoreError::Unavailable)
            }
            fn set(&self, _: &str, _: &[u8], _: Option<u32>) -> Result<(), StoreError> {
                Err(StoreError::Unavailable)
            }
        }
        let q = small(16);
        let p = q.default_policy();
        assert_eq!(q.check(&Down, p, "ci", "a", at(0)), Err(QuotaError::StoreUnavailable));
        assert_eq!(q.prepare(&Down), Err(QuotaError::StoreUnavailable));
        // The glue's fallback: the same check on a per-VM store.
        assert!(q.check(&MemoryStore::new(), p, "ci", "a", at(0)).unwrap().allowed);
    }

    #[test]
    fn corrupt_state_is_reported_not_silently_reset() {
        let q = small(16);
        let store = MemoryStore::new();
        store.set(&table::bucket_key(0), b"\x07junk", None).unwrap();
        let out = q.check(&store, q.default_policy(), "ci", "a", at(0)).unwrap();
        assert!(out.allowed);
        assert_eq!(out.anomaly, Some(Anomaly::CorruptStateReset));
        let out = q.check(&store, q.default_policy(), "ci", "a", at(0)).unwrap();
        assert_eq!(out.anomaly, None);
    }

    #[test]
    fn foreign_state_in_an_overflow_key_refuses_loudly() {
        let q = small(1);
        let store = MemoryStore::new();
        assert!(allowed(&q, &store, "a", at(0)));
        // An active entry under a fingerprint this filter never writes.
        let mut foreign = vec![1u8];
        foreign.extend_from_slice(&[0xAB; 16]);
        foreign.extend_from_slice(&u64::MAX.to_be_bytes());
        store.set(&table::overflow_key("default"), &foreign, None).unwrap();
        let out = q.check(&store, q.default_policy(), "ci", "b", at(0)).unwrap();
        assert_eq!(
            (out.allowed, out.tracking, out.anomaly),
            (false, Tracking::Overflow, Some(Anomaly::ForeignState))
        );
        assert_eq!(out.retry_after_seconds(), Some(1));
    }

    // ---- headers ----------------------------------------------------------

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn headers_of_an_allowed_request() {
        let q = quotas(json!({ "default": { "requests": 100, "per_seconds": 60, "burst": 20 } }));
        let store = MemoryStore::new();
        let out = q.check(&store, q.default_policy(), "ci", "a", at(0)).unwrap();
        // T = 600 ms; after one request: 19 left, full again in 0.6 s → t=1.
        assert_eq!(
            out.headers(),
            pairs(&[("ratelimit-policy", "\"default\";q=100;w=60"), ("ratelimit", "\"default\";r=19;t=1"),])
        );
        assert_eq!(out.retry_after, None);
    }

    #[test]
    fn headers_of_a_refused_request() {
        let q = quotas(json!({ "default": { "requests": 100, "per_seconds": 60, "burst": 20 } }));
        let store = MemoryStore::new();
        let p = q.default_policy();
        for _ in 0..20 {
            assert!(q.check(&store, p, "ci", "a", at(0)).unwrap().allowed);
        }
        let out = q.check(&store, p, "ci", "a", at(100)).unwrap();
        assert!(!out.allowed);
        // TAT is 12 s ahead of 0: 11.9 s to reset (t=12); one request in 0.5 s (1).
        assert_eq!(
            out.headers(),
            pairs(&[
                ("ratelimit-policy", "\"default\";q=100;w=60"),
                ("ratelimit", "\"default\";r=0;t=12"),
                ("retry-after", "1"),
            ])
        );
        assert_eq!(out.retry_after, Some(Duration::from_millis(500)));
        assert_eq!(out.reset_after, Duration::from_millis(11_900));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let q = quotas(json!({ "default": { "requests": 1, "per_seconds": 60 } }));
        let store = MemoryStore::new();
        let p = q.default_policy();
        assert!(q.check(&store, p, "ci", "a", at(0)).unwrap().allowed);
        let out = q.check(&store, p, "ci", "a", at(1)).unwrap();
        assert_eq!(out.retry_after_seconds(), Some(60)); // 59.999 s
        let named = quotas(json!({
            "default": { "requests": 1, "per_seconds": 60 },
            "rules": [{ "name": "gold", "claim": "tier", "equals": "gold", "requests": 7, "per_seconds": 2 }]
        }));
        let gold = named.policy_for("x", &claims(json!({"tier": "gold"})), None);
        let out = named.check(&store, gold, "ci", "x", at(0)).unwrap();
        assert_eq!(out.headers()[0].1, "\"gold\";q=7;w=2");
        assert_eq!(out.headers()[1].1, "\"gold\";r=6;t=1");
    }

    // ---- leases --------------------------------------------------------------

    fn leased(q: &Quotas, store: &dyn Store, leases: &mut Leases, subject: &str, now: Duration) -> bool {
        q.check_leased(store, Some(leases), q.default_policy(), "ci", subject, None, now).unwrap().allowed
    }

    /// A limit the floor keeps from leasing is charged one request at a time, as
    /// without leases: the same admissions, a store call pair per request.
    #[test]
    fn small_limits_are_never_leased() {
        let q = quotas(json!({ "default": { "requests": 40, "per_seconds": 3600 } }));
        let store = crate::host::memory::FaultyStore::<MemoryStore>::default();
        let mut leases = Leases::default();
        let n = (0..60).filter(|_| leased(&q, &store, &mut leases, "a", T0)).count();
        assert_eq!(n, 40);
        assert_eq!(leases.held(), 0);
        assert!(store.calls.get() >= 100, "{} store calls", store.calls.get());
    }

    /// Far from its limit an identity touches the store once per lease; the lease's
    /// admissions are charged up front, so the bucket sees them at once.
    #[test]
    fn far_from_the_limit_one_charge_serves_a_lease() {
        let q = quotas(json!({ "default": { "requests": 1000, "per_seconds": 3600 } }));
        let store = crate::host::memory::FaultyStore::<MemoryStore>::default();
        let mut leases = Leases::default();
        assert!(leased(&q, &store, &mut leases, "a", T0));
        assert_eq!(leases.held(), LEASE_EXTRA);
        let after_first = store.calls.get();
        for _ in 0..LEASE_EXTRA {
            assert!(leased(&q, &store, &mut leases, "a", T0));
        }
        assert_eq!(store.calls.get(), after_first, "served from the lease");
        assert_eq!(leases.held(), 0);
        // Another VM sees the whole lease charged: 1000 − 16 left.
        let outcome = q.check(&store, q.default_policy(), "ci", "a", T0).unwrap();
        assert_eq!(outcome.remaining, 1000 - 16 - 1);
    }

    /// Two VMs sharing one store, with leases, never admit more than the limit at
    /// once; refunds on the tick give back what a VM did not use, so together they
    /// admit exactly the limit.
    #[test]
    fn leases_never_admit_more_than_the_limit_and_refunds_lose_nothing() {
        let q = quotas(json!({ "default": { "requests": 300, "per_seconds": 3600 } }));
        let store = MemoryStore::new();
        let (mut a, mut b) = (Leases::default(), Leases::default());
        let mut admitted = 0;
        // A takes a lease and stops; B runs the identity dry.
        admitted += usize::from(leased(&q, &store, &mut a, "id", T0));
        assert_eq!(a.held(), LEASE_EXTRA);
        admitted += (0..400).filter(|_| leased(&q, &store, &mut b, "id", T0)).count();
        assert_eq!(admitted + a.held() as usize, 300, "B got all but A's lease");
        assert!(!leased(&q, &store, &mut b, "id", T0), "B is refused while A holds its lease");
        // A's lease expires and goes back on the tick: B gets it.
        q.refund_expired(&store, &mut a, T0 + Duration::from_nanos(LEASE_NANOS));
        assert_eq!(a.held(), 0);
        admitted += (0..40).filter(|_| leased(&q, &store, &mut b, "id", T0)).count();
        assert_eq!(admitted, 300, "exactly the limit in all");
        // Interleaved from the start on a fresh identity: never above the limit.
        let mut total = 0;
        for i in 0..700 {
            let vm = if i % 3 == 0 { &mut a } else { &mut b };
            total += usize::from(leased(&q, &store, vm, "other", T0));
        }
        assert!(total + a.held() as usize + b.held() as usize <= 300);
        assert!(total + a.held() as usize + b.held() as usize >= 300 - 2 * LEASE_EXTRA as usize);
    }

    /// Without a tick (the native module) the next charge gives due leases back: not
    /// before [`LEASE_NANOS`], and then every admission the lease still held.
    #[test]
    fn a_charge_gives_back_leases_that_are_due() {
        let q = quotas(json!({ "default": { "requests": 1000, "per_seconds": 3600 } }));
        let store = crate::host::memory::FaultyStore::<MemoryStore>::default();
        let mut leases = Leases::default();
        assert!(leased(&q, &store, &mut leases, "a", T0));
        assert_eq!(leases.held(), LEASE_EXTRA);
        let calls = store.calls.get();
        let almost = T0 + Duration::from_nanos(LEASE_NANOS - 1);
        q.refund_expired(&store, &mut leases, almost);
        assert_eq!((leases.held(), store.calls.get()), (LEASE_EXTRA, calls), "not due yet: untouched");
        q.refund_expired(&store, &mut leases, T0 + Duration::from_nanos(LEASE_NANOS));
        assert_eq!(leases.held(), 0);
        // The bucket has the 15 back: only the one admission used is charged.
        let outcome = q.check(&store, q.default_policy(), "ci", "a", T0).unwrap();
        assert_eq!(outcome.remaining, 1000 - 1 - 1);
    }

    /// With RateLimit headers on allowed responses the bucket itself is reported:
    /// no leases.
    #[test]
    fn response_headers_turn_leases_off() {
        let q =
            quotas(json!({ "default": { "requests": 1000, "per_seconds": 3600 }, "response_headers": true }));
        let store = MemoryStore::new();
        let mut leases = Leases::default();
        assert!(leased(&q, &store, &mut leases, "a", T0));
        assert_eq!(leases.held(), 0);
    }
}
