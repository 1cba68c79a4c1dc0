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
//! # Counters are batched per worker
//! An update of a labelled stat makes Envoy build the stat's name from its labels and
//! look it up (measured: the counters of a cached allowed request cost about a tenth
//! of the native shell's throughput when written one by one). So counter increments
//! accumulate in this worker's table and reach Envoy in one call per series when a
//! request ends and the worker has no other request in flight, or at the latest once
//! per [`FLUSH_EVERY_NS`] under load ([`flush_if_due`]). No count is lost or
//! delayed past the end of the traffic that made it: the last request a worker
//! finishes always flushes. Gauges and histograms are written at once.

use std::cell::{Cell, RefCell};
use std::ffi::c_void;

use nhi_guard_core::host::{HostError, MetricKind};
use nhi_guard_core::observe::metrics::{Family, Kind};

use crate::abi::{self, ModuleBuffer};

/// Every family's id in Envoy, for one configuration (`None`: Envoy refused it).
#[derive(Debug, Default)]
pub struct Families {
    ids: Vec<(Family, usize)>,
}

impl Families {
    /// Defines every family on configuration `config` (Envoy's, during `config_new`).
    pub fn define(config: *mut c_void) -> Families {
        let mut ids = Vec::new();
        if config.is_null() {
            return Families { ids };
        }
        for family in Family::ALL {
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
        Families { ids }
    }

    fn id(&self, family: Family) -> Option<usize> {
        self.ids.iter().find(|(f, _)| *f == family).map(|(_, id)| *id)
    }
}

/// Under load, a worker hands its counts to Envoy at least this often.
pub const FLUSH_EVERY_NS: u64 = 1_000_000_000;

/// One series this worker defined: the family's Envoy id and its label values.
struct Series {
    kind: Kind,
    envoy_id: usize,
    values: Vec<String>,
    /// Written to Envoy yet: a series the core defines before any request (e.g. at VM
    /// start) appears at zero with the next flush.
    shown: bool,
    /// A counter's increments not handed to Envoy yet.
    pending: u64,
}

thread_local! {
    /// This worker's series; the core's metric id is the index + 1. The core defines
    /// each series once per VM and bounds how many there are.
    static SERIES: RefCell<Vec<Series>> = const { RefCell::new(Vec::new()) };
    /// Something to flush (a pending count, or a series never shown).
    static DIRTY: Cell<bool> = const { Cell::new(false) };
    /// When this worker last flushed (ns since the epoch).
    static FLUSHED_AT: Cell<u64> = const { Cell::new(0) };
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
    SERIES.with(|series| {
        let mut series = series.try_borrow_mut().map_err(|_| HostError::INTERNAL_FAILURE)?;
        series.push(Series { kind: family_kind, envoy_id, values, shown: false, pending: 0 });
        DIRTY.with(|dirty| dirty.set(true));
        u32::try_from(series.len()).map_err(|_| HostError::INTERNAL_FAILURE)
    })
}

/// Adds `offset` to series `id`: a counter's is kept for the next flush, a gauge is
/// moved either way at once.
pub fn increment(filter: *mut c_void, id: u32, offset: i64) -> Result<(), HostError> {
    let index = index(id)?;
    let counted = SERIES.with(|series| {
        let mut series = series.try_borrow_mut().map_err(|_| HostError::INTERNAL_FAILURE)?;
        let entry = series.get_mut(index).ok_or(HostError::NOT_FOUND)?;
        if entry.kind != Kind::Counter {
            return Ok(false);
        }
        entry.pending = entry.pending.saturating_add(offset.unsigned_abs());
        DIRTY.with(|dirty| dirty.set(true));
        Ok(true)
    })?;
    if counted {
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

/// A request ends on this worker: hands the pending counts to Envoy through its
/// `filter` if no other request of this worker is in flight (`last`), or if the last
/// flush is [`FLUSH_EVERY_NS`] old.
pub fn flush_if_due(filter: *mut c_void, last: bool, now_ns: u64) {
    if !DIRTY.with(Cell::get) {
        return;
    }
    if !last && now_ns.saturating_sub(FLUSHED_AT.with(Cell::get)) < FLUSH_EVERY_NS {
        return;
    }
    flush(filter, now_ns);
}

/// Hands every pending count to Envoy, and shows every series not shown yet at zero
/// (a histogram only exists with a value), through this request's `filter`.
pub fn flush(filter: *mut c_void, now_ns: u64) {
    if filter.is_null() {
        return;
    }
    let due: Vec<(u32, u64)> = SERIES.with(|series| {
        let Ok(mut series) = series.try_borrow_mut() else { return Vec::new() };
        let mut due = Vec::new();
        for (at, s) in series.iter_mut().enumerate() {
            let unshown = !s.shown && s.kind != Kind::Histogram;
            if s.pending > 0 || unshown {
                due.extend(u32::try_from(at + 1).ok().map(|id| (id, std::mem::take(&mut s.pending))));
            }
        }
        due
    });
    DIRTY.with(|dirty| dirty.set(false));
    FLUSHED_AT.with(|at| at.set(now_ns));
    for (id, count) in due {
        let _ = update(filter, id, |kind| match kind {
            Kind::Gauge => (Op::AddGauge, 0),
            Kind::Counter | Kind::Histogram => (Op::AddCounter, count),
        });
    }
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
        let values: Vec<ModuleBuffer> = entry.values.iter().map(|v| ModuleBuffer::of(v.as_bytes())).collect();
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
        let families = Families { ids: vec![(Family::QuotaOverflow, 7)] };
        assert_eq!(define(&families, MetricKind::Gauge, &name), Err(HostError::BAD_ARGUMENT), "wrong kind");
        assert_eq!(define(&families, MetricKind::Counter, &name), Ok(1));
    }
}
