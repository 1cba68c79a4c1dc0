//! Stage 6, record: metrics through the host, filter state for Envoy's access log,
//! and the decision-log line. What is counted under which name, and what a line
//! says, is decided in [`crate::observe`].
//!
//! Every host call here is best effort: a host without metrics (or without
//! `set_property`) disables that part for the VM after the first failure, with one
//! log line, and requests are never affected.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::BuildHasher;

use log::{info, warn};

use crate::behaviour::Kind;
use crate::config::{Config, JwksSource};
use crate::hash::seeded::Seeded;
use crate::host::store::Store;
use crate::host::{self, Host};
use crate::keys::fetch::{Document, Done};
use crate::observe::decision_log::{sample_key, LineContext, Record};
use crate::observe::metrics::{
    Family, IdentityBound, IdentityLabel, Outcome, Series, NO_ISSUER, NO_ROUTE, UNKNOWN_ISSUER,
};
use crate::reason::Reason;

use super::{Request, Vm};

/// Result label of a JWKS or revocation-feed fetch.
pub const FETCH_SUCCESS: &str = "success";
pub const FETCH_FAILURE: &str = "failure";
/// Result labels of a TokenReview.
pub const REVIEW_ALIVE: &str = "alive";
pub const REVIEW_GONE: &str = "gone";
pub const REVIEW_UNAVAILABLE: &str = "unavailable";

/// One VM's metric ids and identity bound.
pub struct Observer {
    /// Metrics are configured on and the host has them.
    metrics: Cell<bool>,
    /// This VM's metric ids, by family and label values (see [`SeriesIds`]).
    ids: RefCell<SeriesIds>,
    identities: RefCell<IdentityBound>,
    /// The host accepts `set_property` (filter state).
    filter_state: Cell<bool>,
    /// Baseline of the JWKS age gauge until a fetch succeeds.
    started_ms: u64,
    /// Varies the sampling of requests without an `x-request-id`.
    sequence: Cell<u64>,
    /// The revocation list was seen stale on the last tick (logged once per episode).
    feed_stale: Cell<bool>,
    /// On hosts without a tick, when the gauges were last written by a request's end
    /// ([`gauges_on_request`]).
    gauges_written_ms: Cell<Option<u64>>,
    /// Counters are added up here and handed to the host on the next tick
    /// ([`Observer::flush`]) rather than one host call per increment: see
    /// [`Observer::count_on_tick`].
    counting_on_tick: Cell<bool>,
    /// Increments not yet handed to the host, by series id (at most
    /// [`MAX_PENDING_SERIES`]; beyond that a series is incremented at once).
    pending: RefCell<Vec<(u32, i64)>>,
}

/// Series whose increments may wait for the next tick at once. A tick period sees
/// a few dozen in practice (identities × outcomes, bounded by the metrics' own
/// limits); a series beyond this is incremented at once, as without ticks.
const MAX_PENDING_SERIES: usize = 256;

impl Observer {
    /// Prepares the shared identity list. The series that must exist before anything
    /// happens (so that `rate()` sees their first increment) are defined by
    /// [`Observer::define_initial`], once a host is at hand.
    pub fn new(config: &Config, store: &dyn Store, now_ms: u64) -> Observer {
        let observer = Observer {
            metrics: Cell::new(config.metrics.enabled),
            ids: RefCell::new(SeriesIds::default()),
            identities: RefCell::new(IdentityBound::new(config.metrics.max_identities)),
            filter_state: Cell::new(config.filter_state),
            started_ms: now_ms,
            sequence: Cell::new(now_ms),
            feed_stale: Cell::new(false),
            gauges_written_ms: Cell::new(None),
            counting_on_tick: Cell::new(false),
            pending: RefCell::new(Vec::new()),
        };
        if observer.metrics.get() {
            if let Err(err) = IdentityBound::prepare(store) {
                warn!(
                    "cannot prepare the shared identity list ({err}); identities may be labelled per worker"
                );
            }
        }
        observer
    }

    /// Defines the JWKS fetch, quota overflow, behaviour-untracked and partner-key series at zero.
    pub fn define_initial(&self, config: &Config, host: &mut dyn Host) {
        for issuer in &config.issuers {
            if let JwksSource::Remote(_) = issuer.jwks {
                for result in [FETCH_SUCCESS, FETCH_FAILURE] {
                    self.id(host, Family::JwksFetches, &[&issuer.name, result]);
                }
            }
        }
        if let Some(quotas) = &config.quotas {
            for policy in quotas.policies() {
                self.id(host, Family::QuotaOverflow, &[policy.name()]);
            }
        }
        if config.behaviour.as_ref().is_some_and(|b| b.detect) {
            for issuer in &config.issuers {
                self.id(host, Family::BehaviourUntracked, &[&issuer.name]);
            }
        }
        // Every configured key from the start, at zero: a key nobody uses shows as
        // such, and can be removed.
        if let Some(partners) = &config.partners {
            for (partner, key) in partners.key_labels() {
                self.id(host, Family::PartnerKeyRequests, &[partner, key]);
            }
        }
        for issuer in config.issuers.iter().filter(|i| i.profile.liveness().is_some()) {
            for result in [REVIEW_ALIVE, REVIEW_GONE, REVIEW_UNAVAILABLE] {
                self.id(host, Family::LivenessReviews, &[&issuer.name, result]);
            }
        }
        if config.revocation.is_some() {
            for result in [FETCH_SUCCESS, FETCH_FAILURE] {
                self.id(host, Family::RevocationFetches, &[result]);
            }
        }
    }

    /// The id of a series in this VM, defined on first use.
    fn id(&self, host: &mut dyn Host, family: Family, values: &[&str]) -> Option<u32> {
        if !self.metrics.get() {
            return None;
        }
        if let Some(id) = self.ids.try_borrow().ok()?.get(family, values) {
            return Some(id);
        }
        let series = Series::new(family, values);
        match host.define_metric(series.kind, &series.name) {
            Ok(id) => {
                self.ids.try_borrow_mut().ok()?.insert(family, values, id);
                Some(id)
            }
            Err(err) => {
                self.metrics.set(false);
                warn!("the host has no metrics ({err}); nhi-guard metrics are off in this worker");
                None
            }
        }
    }

    fn increment(&self, host: &mut dyn Host, family: Family, values: &[&str]) {
        if let Some(id) = self.id(host, family, values) {
            if !(self.counting_on_tick.get() && self.defer(id, 1)) {
                let _ = host.increment_metric(id, 1);
            }
        }
    }

    /// Counters wait for the next tick ([`Observer::flush`]) instead of costing a host
    /// call each: on Envoy two of a cached request's ten calls. The shell turns this
    /// on only where ticks really run (the Envoy-grade plan, whose key fetching needs
    /// them too). The price: a count reaches Envoy's stats up to one tick (500 ms)
    /// late, and a VM that dies (a panic) takes its last tick's counts with it.
    /// Counts stay exact; gauges and histograms are not deferred.
    pub fn count_on_tick(&self, on: bool) {
        self.counting_on_tick.set(on);
    }

    /// Adds `delta` to `id`'s pending increment; `false` when it must go at once.
    fn defer(&self, id: u32, delta: i64) -> bool {
        let Ok(mut pending) = self.pending.try_borrow_mut() else { return false };
        if let Some((_, count)) = pending.iter_mut().find(|(series, _)| *series == id) {
            *count = count.saturating_add(delta);
            return true;
        }
        if pending.len() >= MAX_PENDING_SERIES {
            return false;
        }
        pending.push((id, delta));
        true
    }

    /// Hands the pending increments to the host (on every tick, and when the plugin
    /// goes away). A failed call loses that series' count: metrics only observe.
    pub fn flush(&self, host: &mut dyn Host) {
        let pending = match self.pending.try_borrow_mut() {
            Ok(mut pending) if !pending.is_empty() => std::mem::take(&mut *pending),
            _ => return,
        };
        for (id, count) in pending {
            if let Err(err) = host.increment_metric(id, count) {
                log::debug!("a deferred count of {count} was lost: {err}");
            }
        }
    }

    fn record(&self, host: &mut dyn Host, family: Family, values: &[&str], value: u64) {
        if let Some(id) = self.id(host, family, values) {
            let _ = host.record_metric(id, value);
        }
    }

    /// The label `identity` is counted under (its own, or `other` beyond the bound).
    fn identity_label(&self, vm: &Vm, issuer: &str, identity: &str) -> IdentityLabel {
        match self.identities.try_borrow_mut() {
            Ok(mut bound) => bound.label(vm.store.as_ref(), issuer, identity),
            Err(_) => IdentityLabel::Other,
        }
    }

    fn publish(&self, host: &mut dyn Host, name: &str, value: &str) {
        if !self.filter_state.get() {
            return;
        }
        if let Err(err) = host.set_property(name, value.as_bytes()) {
            self.filter_state.set(false);
            info!("the host refuses set_property ({err}); no nhi-guard filter state for access logs");
        }
    }
}

/// Metric ids by family and raw label values. Found without building the series
/// name (an allocation per label and a formatted string, twice per request): the
/// name is only built the first time, to define the series.
#[derive(Default)]
struct SeriesIds {
    by_hash: HashMap<u64, Vec<Defined>, Seeded>,
}

/// A defined series: its family, raw label values and id.
type Defined = (Family, Box<[String]>, u32);

impl SeriesIds {
    fn key(&self, family: Family, values: &[&str]) -> u64 {
        self.by_hash.hasher().hash_one((family as u8, values))
    }

    fn get(&self, family: Family, values: &[&str]) -> Option<u32> {
        let same = |(f, v, _): &&Defined| {
            *f == family && v.len() == values.len() && v.iter().zip(values).all(|(a, b)| a == b)
        };
        self.by_hash.get(&self.key(family, values))?.iter().find(same).map(|(_, _, id)| *id)
    }

    fn insert(&mut self, family: Family, values: &[&str], id: u32) {
        let key = self.key(family, values);
        let owned = values.iter().map(|v| (*v).to_owned()).collect();
        self.by_hash.entry(key).or_default().push((family, owned, id));
    }
}

/// The issuer label of a record: the matched issuer's name, `unknown` for a token
/// no issuer claims, `none` without a token.
pub fn issuer_label<'c>(config: &'c Config, record: &Record) -> &'c str {
    if record.partner {
        return config.partners.as_ref().map_or(UNKNOWN_ISSUER, |p| p.issuer_name.as_str());
    }
    match (record.issuer.and_then(|i| config.issuers.get(i)), record.token) {
        (Some(issuer), _) => &issuer.name,
        // A certificate-only identity: the mTLS issuer name (`mtls` by default).
        (None, false) if record.certificate_only => {
            config.mtls.as_ref().map_or(NO_ISSUER, |m| m.issuer_name.as_str())
        }
        (None, true) => UNKNOWN_ISSUER,
        (None, false) => NO_ISSUER,
    }
}

/// The request was forwarded (`replied == false`) or answered: counts it and
/// publishes the decision as filter state. Does nothing the second time; returns
/// whether it did it now.
pub fn decided(vm: &Vm, host: &mut dyn Host, request: &mut Request, replied: bool) -> bool {
    let Some(decided) = request.observed.finish(replied) else { return false };
    counted(vm, host, request, decided);
    true
}

fn counted(vm: &Vm, host: &mut dyn Host, request: &Request, decided: crate::observe::decision_log::Decided) {
    let config = &vm.config;
    let observer = &vm.observer;
    let record = &request.observed;
    let issuer = issuer_label(config, record);
    let route = record.route.as_deref().unwrap_or(NO_ROUTE);

    observer.increment(host, Family::Requests, &[issuer, route, decided.outcome.as_str(), decided.reason]);
    if let Some(shadow_reason) = decided.shadow_reason {
        observer.increment(host, Family::ShadowDenials, &[issuer, route, shadow_reason]);
    }
    if let (Some(identity), true) = (&record.identity, observer.metrics.get()) {
        let label = observer.identity_label(vm, issuer, identity);
        let label = label.as_str();
        observer.increment(host, Family::IdentityRequests, &[issuer, label]);
        for kind in record.anomalies.kinds() {
            observer.increment(host, Family::Anomalies, &[issuer, label, kind.as_str()]);
        }
        if decided.outcome == Outcome::Denied {
            observer.increment(host, Family::IdentityDenials, &[issuer, label, decided.reason]);
        }
        if let Some(quota) = &record.quota {
            if decided.reason == Reason::QuotaExceeded.code() {
                observer.increment(host, Family::QuotaRejections, &[issuer, label, &quota.policy]);
            }
        }
    }
    if record.behaviour_untracked {
        observer.increment(host, Family::BehaviourUntracked, &[issuer]);
    }
    if let Some(quota) = record.quota.as_ref().filter(|q| q.overflow) {
        observer.increment(host, Family::QuotaOverflow, &[&quota.policy]);
    }
    if let Some(ns) = record.verify_ns {
        observer.record(host, Family::VerificationDuration, &[issuer], ns / 1_000);
    }
    if let Some(ns) = record.dpop_ns {
        observer.record(host, Family::DpopProofDuration, &[issuer], ns / 1_000);
    }
    if let (Some(key), Some(partners)) = (record.partner_key, &config.partners) {
        if let (Some(partner), Some(key_id)) = (partners.partner(key), partners.key_id(key)) {
            let labels = [partner.name.as_str(), key_id];
            observer.increment(host, Family::PartnerKeyRequests, &labels);
            let now_s = record.started_ns.unwrap_or_default() / 1_000_000_000;
            observer.record(host, Family::PartnerKeyLastUsed, &labels, now_s);
        }
    }

    observer.publish(host, "nhi_decision", decided.outcome.as_str());
    observer.publish(host, "nhi_reason", decided.reason);
    if let Some(class) = record.client_class {
        observer.publish(host, "nhi_client", class.as_str());
    }
    if issuer != NO_ISSUER && issuer != UNKNOWN_ISSUER {
        observer.publish(host, "nhi_issuer", issuer);
    }
    if let Some(identity) = &record.identity {
        observer.publish(host, "nhi_identity", identity);
    }
    if let Some(route) = &record.route {
        observer.publish(host, "nhi_route", route);
    }
}

/// The end of the stream: the response's outcome (behaviour metrics, error
/// spikes), and the decision line if this request gets one.
pub fn logged(vm: &Vm, host: &mut dyn Host, request: &mut Request) {
    let sequence = vm.observer.sequence.get().wrapping_add(1);
    vm.observer.sequence.set(sequence);
    let key = sample_key(request.request_id.as_deref(), sequence);
    let outcome_wanted = request.observed.decided.is_some()
        && vm.config.behaviour.as_ref().is_some_and(|b| b.outcome_metrics || b.watches(Kind::ErrorSpike));
    if !outcome_wanted && !request.observed.should_log(&vm.config.decision_log, key) {
        return;
    }
    let now_ns = host.now_ns();
    let status = response_status(host).or(request.observed.decided.and_then(|d| d.status));
    if outcome_wanted {
        outcome(vm, host, request, status, now_ns);
    }
    if !request.observed.should_log(&vm.config.decision_log, key) {
        return;
    }
    if request.observed.source.is_none() {
        // Not read for the decision: read now, for the line.
        request.observed.source = host::source_address(host);
    }
    let record = &request.observed;
    let line = record.line(&LineContext {
        now_ms: now_ns / 1_000_000,
        now_ns,
        request_id: request.request_id.as_deref(),
        issuer: Some(issuer_label(&vm.config, record)).filter(|i| *i != NO_ISSUER && *i != UNKNOWN_ISSUER),
        status,
    });
    info!("{line}");
}

/// The response status as the host saw it: Envoy's `response.code`, an 8-byte
/// integer; nginx's `$status` (APISIX), text.
fn response_status(host: &mut dyn Host) -> Option<u16> {
    host.property(&["response", "code"])
        .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok())
        .and_then(|bytes| u16::try_from(i64::from_le_bytes(bytes)).ok())
        .or_else(|| host::property_text(host, &["status"]).and_then(|text| text.trim().parse().ok()))
        .filter(|status| *status > 0)
}

/// `2xx` … `5xx` (`other` for anything else).
fn status_class(status: Option<u16>) -> &'static str {
    match status.map(|s| s / 100) {
        Some(1) => "1xx",
        Some(2) => "2xx",
        Some(3) => "3xx",
        Some(4) => "4xx",
        Some(5) => "5xx",
        _ => "other",
    }
}

/// Per-identity and per-route status and latency (request headers seen to the end
/// of the stream, on the proxy clock), and the identity's error count.
fn outcome(vm: &Vm, host: &mut dyn Host, request: &mut Request, status: Option<u16>, now_ns: u64) {
    let Some(behaviour) = vm.config.behaviour.as_ref() else { return };
    let config = &vm.config;
    let observer = &vm.observer;
    let record = &request.observed;
    let issuer = issuer_label(config, record);
    let class = status_class(status);
    let millis = record.started_ns.map(|start| now_ns.saturating_sub(start) / 1_000_000);
    if behaviour.outcome_metrics && observer.metrics.get() {
        let route = record.route.as_deref().unwrap_or(NO_ROUTE);
        observer.increment(host, Family::RouteResponses, &[route, class]);
        if let Some(ms) = millis {
            observer.record(host, Family::RouteDuration, &[route], ms);
        }
        if let Some(identity) = &record.identity {
            let label = observer.identity_label(vm, issuer, identity);
            observer.increment(host, Family::IdentityResponses, &[issuer, label.as_str(), class]);
            if let Some(ms) = millis {
                observer.record(host, Family::IdentityDuration, &[issuer, label.as_str()], ms);
            }
        }
    }
    let (Some(identity), Some(status)) = (record.identity.clone(), status) else { return };
    let spike = vm.tracker.try_borrow_mut().ok().and_then(|mut tracker| {
        let now_ms = now_ns / 1_000_000;
        tracker.as_mut()?.responded(behaviour, issuer, &identity, status, now_ms)
    });
    if let Some(kind) = spike {
        request.observed.anomalies.insert(kind);
        if observer.metrics.get() {
            let label = observer.identity_label(vm, issuer, &identity);
            observer.increment(host, Family::Anomalies, &[issuer, label.as_str(), kind.as_str()]);
        }
    }
}

/// A fetch ended (or could not start): a JWKS or the revocation feed.
pub fn fetched(vm: &Vm, host: &mut dyn Host, done: Done) {
    let result = if done.success { FETCH_SUCCESS } else { FETCH_FAILURE };
    match done.document {
        Document::Jwks(index) => {
            if let Some(issuer) = vm.config.issuers.get(index) {
                vm.observer.increment(host, Family::JwksFetches, &[&issuer.name, result]);
            }
        }
        Document::Revocations => vm.observer.increment(host, Family::RevocationFetches, &[result]),
    }
}

/// A TokenReview of a token of issuer `index` ended: `Some(alive)` as the API
/// server answered, `None` unavailable.
pub fn reviewed(vm: &Vm, host: &mut dyn Host, index: usize, outcome: Option<bool>) {
    if let Some(issuer) = vm.config.issuers.get(index) {
        let result = match outcome {
            Some(true) => REVIEW_ALIVE,
            Some(false) => REVIEW_GONE,
            None => REVIEW_UNAVAILABLE,
        };
        vm.observer.increment(host, Family::LivenessReviews, &[&issuer.name, result]);
    }
}

/// The inventory merged these identities: their last-seen gauges, under the
/// identity label the metrics bound gives them (`other` takes the latest).
pub fn last_seen(vm: &Vm, host: &mut dyn Host, merged: &[crate::observe::inventory::Seen]) {
    if !vm.observer.metrics.get() {
        return;
    }
    let mut other: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    for seen in merged {
        let label = match vm.observer.identities.try_borrow_mut() {
            Ok(mut bound) => bound.label(vm.store.as_ref(), &seen.issuer, &seen.identity),
            Err(_) => IdentityLabel::Other,
        };
        match label {
            IdentityLabel::Own(label) => vm.observer.record(
                host,
                Family::IdentityLastSeen,
                &[&seen.issuer, &label],
                seen.last_ms / 1_000,
            ),
            IdentityLabel::Other => {
                let latest = other.entry(seen.issuer.as_str()).or_default();
                *latest = (*latest).max(seen.last_ms / 1_000);
            }
        }
    }
    for (issuer, latest) in other {
        vm.observer.record(host, Family::IdentityLastSeen, &[issuer, IdentityLabel::Other.as_str()], latest);
    }
}

/// On every tick: the JWKS and revocation-feed gauges.
pub fn gauges(vm: &Vm, host: &mut dyn Host, now_ms: u64) {
    jwks_gauges(vm, host, now_ms);
    revocation_gauges(vm, host, now_ms);
}

/// How often a host without a tick has its gauges written, by the requests that end.
pub const GAUGES_ON_REQUEST_MS: u64 = 1_000;

/// On a host without a tick (Envoy's dynamic modules, APISIX), the gauges and the
/// stale-feed log line that [`gauges`] gives the tick, written by a request as it
/// ends, at most once per [`GAUGES_ON_REQUEST_MS`] per VM. Without requests they
/// stand still; the feed and the keys are only fetched by requests there too.
pub fn gauges_on_request(vm: &Vm, host: &mut dyn Host, now_ms: u64) {
    let due = vm
        .observer
        .gauges_written_ms
        .get()
        .is_none_or(|at| now_ms.saturating_sub(at) >= GAUGES_ON_REQUEST_MS);
    if due {
        vm.observer.gauges_written_ms.set(Some(now_ms));
        gauges(vm, host, now_ms);
    }
}

/// The revocation list's age, staleness and size; a list turning stale (or still
/// missing past `max_stale_seconds` after start) is logged once.
fn revocation_gauges(vm: &Vm, host: &mut dyn Host, now_ms: u64) {
    let Some(feed) = &vm.config.revocation else { return };
    let Ok(local) = vm.revocations.try_borrow() else { return };
    let Some(local) = local.as_ref() else { return };
    let since = local.fetched_at_ms().unwrap_or(vm.observer.started_ms);
    let age_ms = now_ms.saturating_sub(since);
    let stale = age_ms > feed.remote.max_stale_seconds.saturating_mul(1_000);
    if stale != vm.observer.feed_stale.replace(stale) {
        if stale {
            warn!(
                "the revocation list is {} s old, over max_stale_seconds ({}): {}",
                age_ms / 1_000,
                feed.remote.max_stale_seconds,
                match feed.on_stale {
                    crate::policy::revocation::OnStale::Keep => "still deciding with it (on_stale: keep)",
                    crate::policy::revocation::OnStale::Deny => {
                        "refusing machine requests with 503 revocations_unavailable (on_stale: deny)"
                    }
                }
            );
        } else {
            info!("the revocation list is fresh again");
        }
    }
    if !vm.observer.metrics.get() {
        return;
    }
    vm.observer.record(host, Family::RevocationAge, &[], age_ms / 1_000);
    vm.observer.record(host, Family::RevocationStale, &[], u64::from(stale));
    if let Some(counts) = local.counts() {
        for (kind, count) in counts.by_kind() {
            vm.observer.record(host, Family::RevocationEntries, &[kind], count as u64);
        }
    }
}

/// On every tick: keys loaded and seconds since the last successful fetch, per
/// fetched issuer. Every VM sets the same values (they read one shared record).
pub fn jwks_gauges(vm: &Vm, host: &mut dyn Host, now_ms: u64) {
    if !vm.observer.metrics.get() {
        return;
    }
    let Ok(keys) = vm.keys.try_borrow() else { return };
    for (issuer, local) in vm.config.issuers.iter().zip(keys.iter()) {
        if !matches!(issuer.jwks, JwksSource::Remote(_)) {
            continue;
        }
        let loaded = local.set.as_ref().map_or(0, |set| set.len() as u64);
        let since = local.fetched_at_ms.unwrap_or(vm.observer.started_ms);
        vm.observer.record(host, Family::JwksKeys, &[&issuer.name], loaded);
        vm.observer.record(host, Family::JwksAge, &[&issuer.name], now_ms.saturating_sub(since) / 1_000);
    }
}

/// On every tick: this VM's linear memory changed by `delta` bytes since the VM
/// last reported it. The gauge is the sum over the proxy's VMs (see
/// [`Family::VmMemory`]); the shell keeps what its VM reported, and withdraws it
/// (a negative `delta`) when the plugin is removed. Returns whether the change
/// reached the host, so that the shell only counts what was added.
pub fn vm_memory(vm: &Vm, host: &mut dyn Host, delta: i64) -> bool {
    match vm.observer.id(host, Family::VmMemory, &[]) {
        Some(id) => host.increment_metric(id, delta).is_ok(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::memory::{Call, MemoryHost};
    use crate::host::store::MemoryStore;

    /// Past [`MAX_PENDING_SERIES`] distinct series in one tick, a count goes to the
    /// host at once: never dropped, never unbounded.
    #[test]
    fn pending_counts_are_bounded_and_never_dropped() {
        let config = Config::from_json(
            serde_json::json!({"issuers": [{"name": "ci", "issuer": "https://ci", "audiences": ["gw"],
                               "jwks": {"inline": crate::testkit::jwks()}}]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let observer = Observer::new(&config, &MemoryStore::default(), 0);
        observer.count_on_tick(true);
        let series = u32::try_from(MAX_PENDING_SERIES).unwrap();
        for id in 0..series + 10 {
            if !observer.defer(id, 1) {
                assert!(id >= series, "series {id} refused below the bound");
            }
        }
        assert!(observer.defer(0, 4), "a pending series keeps adding up");
        assert_eq!(observer.pending.borrow().len(), MAX_PENDING_SERIES);
        let mut host = MemoryHost::new(0);
        observer.flush(&mut host);
        assert_eq!(host.calls.get(&Call::IncrementMetric).copied(), Some(MAX_PENDING_SERIES));
        assert!(observer.pending.borrow().is_empty());
    }
}
