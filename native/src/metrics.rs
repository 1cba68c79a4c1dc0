//! The core's metrics as Envoy dynamic-module stats, under the same names and labels
//! as the wasm's.
//!
//! The core names a series the proxy-wasm way, labels inside the name
//! (`nhi_issuer=demo;nhi_route=api;…;nhi_requests_total`, see
//! `nhi_guard_core::observe::metrics`), and Envoy's `stats_tags` take them out again.
//! Here Envoy takes labels directly: every metric family is defined once per
//! configuration, when Envoy creates it (definitions are frozen after that), as a
//! metric with the family's label names; a series is then the family's id plus its
//! label values, given on every update. The core's bounds (identities per Envoy,
//! sanitised label values) hold unchanged, so cardinality is what it is in the wasm.
//!
//! # Counters are handed to Envoy in batches, from the main thread
//! An update of a labelled stat makes Envoy build the stat's name from its labels and
//! look it up: about 0.4 µs a series, so a cached allowed request's three or four
//! counters written one by one cost about a twentieth of the native shell's
//! throughput. So a worker only adds to the series' count in memory (an atomic add).
//! When counts are waiting, this configuration's flusher thread wakes, lets more
//! gather for [`FLUSH_WINDOW`], and posts one flush to the configuration's scheduler;
//! Envoy runs it on its main thread ([`Families::flush_counts`]), which hands every
//! worker's counts over in one call per series. A count reaches Envoy's stats at most
//! [`FLUSH_WINDOW`] (plus the main thread's latency) after the request that made it,
//! and is never lost while the configuration lives. (Posting from the worker at the
//! end of each request instead woke the main thread for every few requests, which
//! cost more than the calls it saved: measured 38 against 26.5 µs a request.)
//! Gauges and histograms are written at once, through the request.

use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::thread::Thread;
use std::time::Duration;

use nhi_guard_core::host::{HostError, MetricKind};
use nhi_guard_core::observe::metrics::{Family, Kind};

use crate::abi::{self, ModuleBuffer};

/// Whether `family` is defined on a configuration `nhi`: a family without labels
/// shows in Envoy's stats as soon as it is defined, so those that say nothing here
/// are left out (a VM's memory: there is no VM; the revocation list's age and
/// staleness: without a feed). Labelled ones only show once a series is used.
fn defined_here(family: Family, nhi: &nhi_guard_core::config::Config) -> bool {
    match family {
        Family::VmMemory => false,
        Family::RevocationAge | Family::RevocationStale => nhi.revocation.is_some(),
        _ => true,
    }
}

/// Every family's id in Envoy, for one configuration (`None`: Envoy refused it), and
/// the counts its workers have not handed to Envoy yet.
#[derive(Debug, Default)]
pub struct Families {
    ids: Vec<(Family, usize)>,
    counts: Arc<Counts>,
}

impl Families {
    /// Defines every family that applies to `nhi` on configuration `config` (Envoy's,
    /// during `config_new`).
    pub fn define(config: *mut c_void, nhi: &nhi_guard_core::config::Config) -> Families {
        let mut ids = Vec::new();
        if config.is_null() {
            return Families { ids, counts: Arc::default() };
        }
        for family in Family::ALL.into_iter().filter(|f| defined_here(*f, nhi)) {
            let name = family.name();
            let labels: Vec<ModuleBuffer> =
                family.labels().iter().map(|l| ModuleBuffer::of(l.key().as_bytes())).collect();
            let mut id = 0usize;
            // SAFETY: Envoy's live configuration, during `config_new`; every buffer
            // outlives the call (Envoy copies the names into its symbol table).
            let result = unsafe {
                let define = match family.kind() {
                    Kind::Counter => abi::envoy_dynamic_module_callback_http_filter_config_define_counter,
                    Kind::Gauge => abi::envoy_dynamic_module_callback_http_filter_config_define_gauge,
                    Kind::Histogram => abi::envoy_dynamic_module_callback_http_filter_config_define_histogram,
                };
                define(config, ModuleBuffer::of(name.as_bytes()), labels.as_ptr(), labels.len(), &mut id)
            };
            if result == abi::METRICS_SUCCESS {
                ids.push((family, id));
            } else {
                log::warn!("nhi-guard: Envoy refused the metric {name} ({result}); it will not be counted");
            }
        }
        // SAFETY: Envoy's live configuration, during `config_new` (whose object Envoy
        // already holds by a shared pointer, so the scheduler's weak one is good).
        let scheduler =
            unsafe { abi::envoy_dynamic_module_callback_http_filter_config_scheduler_new(config) };
        let counts = Arc::new(Counts { scheduler: Scheduler(scheduler), ..Counts::default() });
        if scheduler.is_null() {
            log::warn!(
                "nhi-guard: Envoy gave the configuration no scheduler; counters are written one by one"
            );
        } else {
            let weak = Arc::downgrade(&counts);
            match std::thread::Builder::new().name("nhi-guard-counts".into()).spawn(move || flusher(&weak)) {
                Ok(handle) => {
                    let _ = counts.flusher.set(handle.thread().clone());
                }
                Err(err) => {
                    log::warn!("nhi-guard: no counter flusher ({err}); counters are written one by one")
                }
            }
        }
        Families { ids, counts }
    }

    /// Hands every worker's pending counts to Envoy (on the main thread, from the
    /// scheduled event [`FLUSH_COUNTS`] posted; `config` is Envoy's configuration).
    pub fn flush_counts(&self, config: *mut c_void) {
        if config.is_null() {
            return;
        }
        // Cleared first: a count added after this line wakes the flusher again, a count
        // added before it is taken below. None is left behind (see `Counts::note`).
        self.counts.dirty.store(false, Ordering::SeqCst);
        let series = self.counts.series.lock().unwrap_or_else(PoisonError::into_inner);
        for pending in series.iter() {
            let count = pending.count.swap(0, Ordering::SeqCst);
            // A series is shown (at zero) the first time, so that `rate()` sees its
            // first increment.
            let unshown = !pending.shown.swap(true, Ordering::Relaxed);
            if count == 0 && !unshown {
                continue;
            }
            let values = buffers(&pending.values);
            // SAFETY: Envoy's live configuration (this runs in its scheduled event);
            // the label buffers outlive the call.
            let result = unsafe {
                abi::envoy_dynamic_module_callback_http_filter_config_increment_counter(
                    config,
                    pending.envoy_id,
                    values.as_ptr(),
                    values.len(),
                    count,
                )
            };
            if result != abi::METRICS_SUCCESS {
                log::debug!("nhi-guard: a count of {count} was lost ({result})");
            }
        }
    }

    fn id(&self, family: Family) -> Option<usize> {
        self.ids.iter().find(|(f, _)| *f == family).map(|(_, id)| *id)
    }
}

/// The event a configuration's scheduler runs: "hand the pending counts to Envoy".
pub const FLUSH_COUNTS: u64 = 1;

/// How long the flusher lets counts gather once one is waiting.
pub const FLUSH_WINDOW: Duration = Duration::from_millis(20);

/// A configuration's flusher thread: sleeps until a count waits, lets more gather for
/// [`FLUSH_WINDOW`], and posts a flush to the main thread. It ends within a second
/// of the configuration's last holder letting go.
fn flusher(counts: &Weak<Counts>) {
    loop {
        std::thread::park_timeout(Duration::from_secs(1));
        match counts.upgrade() {
            Some(counts) if counts.dirty.load(Ordering::SeqCst) => {}
            Some(_) => continue,
            None => return,
        }
        std::thread::sleep(FLUSH_WINDOW);
        let Some(counts) = counts.upgrade() else { return };
        // SAFETY: a live scheduler (deleted only with these counts, held here).
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
                counts.scheduler.0,
                FLUSH_COUNTS,
            )
        };
    }
}

/// Envoy's scheduler of a configuration (null: none).
#[derive(Debug)]
struct Scheduler(*mut c_void);

impl Default for Scheduler {
    fn default() -> Self {
        Scheduler(std::ptr::null_mut())
    }
}

// SAFETY: Envoy's configuration scheduler may be committed to from any thread (it
// posts to the main dispatcher); it is deleted once, when the last holder of the
// `Families` drops them.
unsafe impl Send for Scheduler {}
// SAFETY: as above; the pointer itself is never written after `define`.
unsafe impl Sync for Scheduler {}

/// Every worker's counter series of one configuration, and whether counts wait.
#[derive(Debug, Default)]
struct Counts {
    scheduler: Scheduler,
    /// Bounded by the core's own series bounds, times the workers.
    series: Mutex<Vec<Arc<Pending>>>,
    /// Some count (or a series not shown yet) waits for the main thread's flush.
    dirty: AtomicBool,
    /// The thread that posts the flushes (none: counters are written one by one).
    flusher: OnceLock<Thread>,
}

impl Counts {
    /// A series to flush from now on (shown at zero with the next flush).
    fn register(&self, pending: &Arc<Pending>) {
        self.series.lock().unwrap_or_else(PoisonError::into_inner).push(Arc::clone(pending));
        self.note();
    }

    /// Whether counters wait for the flusher (else they are written at once).
    fn batched(&self) -> bool {
        self.flusher.get().is_some()
    }

    /// Something waits for a flush: wakes the flusher unless it is awake for it
    /// already (nothing without a flusher: counters are then written at once).
    ///
    /// A count added before this call is taken by the flush it wakes for, or by the
    /// one already coming: that flush clears `dirty` before it takes the counts, and
    /// `dirty` read as set here means the clear (and the taking) comes later.
    fn note(&self) {
        let Some(flusher) = self.flusher.get() else { return };
        if !self.dirty.load(Ordering::SeqCst) && !self.dirty.swap(true, Ordering::SeqCst) {
            flusher.unpark();
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: made by `config_scheduler_new`, deleted once, here.
            unsafe { abi::envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.0) };
        }
    }
}

/// A counter series' increments not handed to Envoy yet, shared by the worker that
/// defined it and the main thread's flush.
#[derive(Debug)]
struct Pending {
    envoy_id: usize,
    values: Vec<String>,
    count: AtomicU64,
    /// Written to Envoy yet.
    shown: AtomicBool,
}

/// One series this worker defined: the family's Envoy id and its label values.
struct Series {
    kind: Kind,
    envoy_id: usize,
    values: Vec<String>,
    /// A gauge written to Envoy yet: one the core defines before any request (e.g. at
    /// VM start) appears at zero when this worker's next request ends.
    shown: bool,
    /// A counter's count, flushed from the main thread.
    counter: Option<Arc<Pending>>,
}

thread_local! {
    /// This worker's series; the core's metric id is the index + 1. The core defines
    /// each series once per VM and bounds how many there are.
    static SERIES: RefCell<Vec<Series>> = const { RefCell::new(Vec::new()) };
    /// A gauge this worker defined is not shown yet.
    static UNSHOWN: Cell<bool> = const { Cell::new(false) };
}

/// The family and label values of a series the core names `k=v;…;family`.
fn parse(name: &str) -> Option<(Family, Vec<String>)> {
    let mut parts: Vec<&str> = name.split(';').collect();
    let family_name = parts.pop()?;
    let family = Family::ALL.into_iter().find(|f| f.name() == family_name)?;
    let values: Vec<String> =
        parts.iter().map(|p| p.split_once('=').map_or("", |(_, v)| v).to_owned()).collect();
    (values.len() == family.labels().len()).then_some((family, values))
}

/// The core defines a series: its id for later updates.
pub fn define(families: &Families, kind: MetricKind, name: &str) -> Result<u32, HostError> {
    let (family, values) = parse(name).ok_or(HostError::BAD_ARGUMENT)?;
    let envoy_id = families.id(family).ok_or(HostError::NOT_FOUND)?;
    let family_kind = family.kind();
    if kind != family_kind {
        return Err(HostError::BAD_ARGUMENT);
    }
    let counter = (family_kind == Kind::Counter).then(|| {
        let pending = Arc::new(Pending {
            envoy_id,
            values: values.clone(),
            count: AtomicU64::new(0),
            shown: AtomicBool::new(false),
        });
        families.counts.register(&pending);
        pending
    });
    SERIES.with(|series| {
        let mut series = series.try_borrow_mut().map_err(|_| HostError::INTERNAL_FAILURE)?;
        let flushed = counter.is_some() && families.counts.batched();
        let shown = family_kind == Kind::Histogram || flushed;
        UNSHOWN.with(|unshown| unshown.set(unshown.get() || !shown));
        series.push(Series { kind: family_kind, envoy_id, values, shown, counter });
        u32::try_from(series.len()).map_err(|_| HostError::INTERNAL_FAILURE)
    })
}

/// Adds `offset` to series `id`: a counter's waits for the main thread's next flush
/// (written through the request at once if the configuration has no flusher), a
/// gauge is moved at once.
pub fn increment(families: &Families, filter: *mut c_void, id: u32, offset: i64) -> Result<(), HostError> {
    let index = index(id)?;
    let flushed = families.counts.batched();
    let counted = SERIES.with(|series| {
        let series = series.try_borrow().map_err(|_| HostError::INTERNAL_FAILURE)?;
        let entry = series.get(index).ok_or(HostError::NOT_FOUND)?;
        match &entry.counter {
            Some(pending) if flushed => {
                pending.count.fetch_add(offset.unsigned_abs(), Ordering::SeqCst);
                Ok(true)
            }
            _ => Ok::<_, HostError>(false),
        }
    })?;
    if counted {
        families.counts.note();
        return Ok(());
    }
    update(filter, id, |kind| match kind {
        Kind::Counter => (Op::AddCounter, offset.unsigned_abs()),
        Kind::Gauge if offset < 0 => (Op::SubGauge, offset.unsigned_abs()),
        Kind::Gauge => (Op::AddGauge, offset.unsigned_abs()),
        Kind::Histogram => (Op::Record, offset.unsigned_abs()),
    })
}

/// Sets gauge `id` to `value`, or records `value` in histogram `id`.
pub fn record(filter: *mut c_void, id: u32, value: u64) -> Result<(), HostError> {
    update(filter, id, |kind| match kind {
        Kind::Counter => (Op::AddCounter, value),
        Kind::Gauge => (Op::SetGauge, value),
        Kind::Histogram => (Op::Record, value),
    })
}

/// A request ends on this worker: the gauges it defined and has not written yet are
/// shown at zero, through this request's `filter`.
pub fn show_gauges(filter: *mut c_void) {
    if filter.is_null() || !UNSHOWN.with(Cell::get) {
        return;
    }
    UNSHOWN.with(|unshown| unshown.set(false));
    let due: Vec<u32> = SERIES.with(|series| {
        let Ok(series) = series.try_borrow() else { return Vec::new() };
        (1..).zip(series.iter()).filter(|(_, s)| !s.shown).map(|(id, _)| id).collect()
    });
    for id in due {
        let _ = update(filter, id, |_| (Op::AddGauge, 0));
    }
}

fn buffers(values: &[String]) -> Vec<ModuleBuffer> {
    values.iter().map(|v| ModuleBuffer::of(v.as_bytes())).collect()
}

fn index(id: u32) -> Result<usize, HostError> {
    usize::try_from(id).ok().and_then(|id| id.checked_sub(1)).ok_or(HostError::NOT_FOUND)
}

#[derive(Clone, Copy)]
enum Op {
    AddCounter,
    AddGauge,
    SubGauge,
    SetGauge,
    Record,
}

fn update(filter: *mut c_void, id: u32, op: impl FnOnce(Kind) -> (Op, u64)) -> Result<(), HostError> {
    if filter.is_null() {
        return Err(HostError::BAD_ARGUMENT);
    }
    let index = index(id)?;
    SERIES.with(|series| {
        let mut series = series.try_borrow_mut().map_err(|_| HostError::INTERNAL_FAILURE)?;
        let entry = series.get_mut(index).ok_or(HostError::NOT_FOUND)?;
        entry.shown = true;
        let (op, value) = op(entry.kind);
        let values = buffers(&entry.values);
        // SAFETY: the live filter of this hook; the label buffers outlive the call.
        let result = unsafe {
            let call = match op {
                Op::AddCounter => abi::envoy_dynamic_module_callback_http_filter_increment_counter,
                Op::AddGauge => abi::envoy_dynamic_module_callback_http_filter_increment_gauge,
                Op::SubGauge => abi::envoy_dynamic_module_callback_http_filter_decrement_gauge,
                Op::SetGauge => abi::envoy_dynamic_module_callback_http_filter_set_gauge,
                Op::Record => abi::envoy_dynamic_module_callback_http_filter_record_histogram_value,
            };
            call(filter, entry.envoy_id, values.as_ptr(), values.len(), value)
        };
        if result == abi::METRICS_SUCCESS {
            Ok(())
        } else {
            Err(HostError::INTERNAL_FAILURE)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The unit tests are not loaded by Envoy, which defines the ABI's calls: the one a
    /// test's `Families` reaches when dropped (never with a scheduler) links to this.
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(_: *mut c_void) {
        unreachable!("a test made a scheduler");
    }
    use nhi_guard_core::observe::metrics::Series as CoreSeries;

    #[test]
    fn a_series_name_is_its_family_and_label_values() {
        let name = CoreSeries::new(Family::Requests, &["demo", "machine-api", "allowed", "allow"]).name;
        let (family, values) = parse(&name).unwrap();
        assert_eq!(family, Family::Requests);
        assert_eq!(values, ["demo", "machine-api", "allowed", "allow"]);
        let name = CoreSeries::new(Family::VerificationDuration, &[]).name;
        assert_eq!(parse(&name), Some((Family::VerificationDuration, vec!["_".to_owned()])));
        assert_eq!(parse("nhi_no_such_family"), None);
        assert_eq!(parse("nhi_issuer=a;nhi_requests_total"), None, "too few labels");
    }

    // (Calls into Envoy cannot run here: the unit tests are not loaded by Envoy.)
    #[test]
    fn a_series_of_a_family_envoy_refused_is_not_defined() {
        let families = Families::default();
        let name = CoreSeries::new(Family::QuotaOverflow, &["default"]).name;
        assert_eq!(define(&families, MetricKind::Counter, &name), Err(HostError::NOT_FOUND));
        let families = Families { ids: vec![(Family::QuotaOverflow, 7)], counts: Arc::default() };
        assert_eq!(define(&families, MetricKind::Gauge, &name), Err(HostError::BAD_ARGUMENT), "wrong kind");
        assert_eq!(define(&families, MetricKind::Counter, &name), Ok(1));
    }
}
