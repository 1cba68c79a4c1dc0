//! Each machine's normal: a learned baseline per verified identity, and anomalies
//! against it.
//!
//! # What is learned
//! Per identity (issuer + forwarded identity), in fixed intervals of
//! `interval_seconds` (default 60):
//! - **rate**: requests per interval, as an exponentially weighted moving average
//!   whose half-life is `half_life_intervals` intervals (default 60: an hour of
//!   one-minute intervals), and a **peak**: the largest interval seen, decaying with a
//!   half-life of `peak_half_life_intervals` (default 2,880: two days). The peak is
//!   what makes a nightly batch normal: each night sets it again.
//! - **error ratio**: the share of its requests answered 5xx (by the upstream or
//!   locally), as an EWMA with the same half-life;
//! - **route classes** it used (a bit per route of the configuration, one for
//!   requests no route matched);
//! - **source networks** it came from (the /24 of an IPv4 source, the /64 of an
//!   IPv6 one, `source_prefix_v4`/`_v6`): the last [`baseline::SOURCES`] distinct ones.
//! - **first and last seen**.
//!
//! An identity's baseline counts only once it has seen `warmup_intervals` full
//! intervals (default 10) in which it made requests; before that nothing is flagged.
//!
//! # Anomalies
//! | kind | flagged when (after warm-up) |
//! |---|---|
//! | `burst` | this interval's requests exceed `factor` × the rate, twice the decayed peak (`PEAK_FACTOR`), and `floor` |
//! | `new_route` | a route class the identity never used |
//! | `new_source` | a source network the identity never came from |
//! | `error_spike` | this interval's error ratio exceeds `ratio` and twice the learned ratio, over at least `min_requests` |
//! | `dormant_returned` | the first request after `after_seconds` of silence (warm-up or not; refused, the identity stays silent) |
//!
//! Each kind is `observe` (counted, logged, optionally forwarded in `x-nhi-anomaly`)
//! or `enforce` (the request is refused with the kind's status and reason
//! `anomaly_<kind>`). An `expected` list names identities (patterns) and the kinds
//! expected of them, which are then neither flagged nor enforced. What is flagged in
//! observe mode is learned (a new route is known from then on); what is refused in
//! enforce mode is not.
//!
//! # Cost and bounds
//! Detection reads nothing from the host: each worker keeps, per identity it saw,
//! the shared baseline as of its last merge plus what it counted since
//! ([`tracker`]). A worker merges an identity's counts into shared data (one read,
//! one compare-and-swap) at most once per `merge_seconds` (default 1), so a busy
//! identity costs two host calls per second per worker, not per request. Counts
//! are therefore exact across workers up to one merge interval. The shared table
//! holds at most `max_tracked_identities` (default 10,000) entries of
//! [`baseline::ENTRY_LEN`] bytes in buckets ([`table`]); an identity whose bucket is
//! full is not tracked (counted in a metric) — never flagged, never refused.

pub mod baseline;
pub mod table;
pub mod tracker;

use serde::Deserialize;
use serde_json::Value;

use crate::claims::matcher::Pattern;
use crate::error::ConfigError;
use crate::json::{self, FromJson};
use crate::policy::RouteDenial;

/// The anomaly kinds, in the order of [`Kind::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Burst,
    NewRoute,
    NewSource,
    ErrorSpike,
    DormantReturned,
}

impl Kind {
    pub const ALL: [Kind; 5] =
        [Kind::Burst, Kind::NewRoute, Kind::NewSource, Kind::ErrorSpike, Kind::DormantReturned];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Burst => "burst",
            Kind::NewRoute => "new_route",
            Kind::NewSource => "new_source",
            Kind::ErrorSpike => "error_spike",
            Kind::DormantReturned => "dormant_returned",
        }
    }

    fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The refusal of an enforced kind.
    pub fn denial(self) -> RouteDenial {
        match self {
            Kind::Burst => RouteDenial::AnomalyBurst,
            Kind::NewRoute => RouteDenial::AnomalyNewRoute,
            Kind::NewSource => RouteDenial::AnomalyNewSource,
            Kind::ErrorSpike => RouteDenial::AnomalyErrorSpike,
            Kind::DormantReturned => RouteDenial::AnomalyDormantReturned,
        }
    }
}

/// What a flagged anomaly does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Observe,
    /// Refuse the request with this status.
    Enforce(u16),
}

/// The validated `behaviour` block.
#[derive(Debug, Clone, PartialEq)]
pub struct Behaviour {
    /// Per-identity and per-route response status and latency metrics.
    pub outcome_metrics: bool,
    /// Whether anomalies are detected at all (`anomalies` configured).
    pub detect: bool,
    /// Whether `new_source` is watched (each request's source is then read).
    pub watch_sources: bool,
    /// The kinds configured under `anomalies` (the others are never flagged).
    pub watched: [bool; 5],
    pub interval_seconds: u64,
    pub half_life_intervals: f64,
    pub peak_half_life_intervals: f64,
    pub warmup_intervals: u32,
    pub merge_ms: u64,
    pub max_tracked_identities: u32,
    pub source_prefix_v4: u8,
    pub source_prefix_v6: u8,
    pub forward_header: bool,
    pub modes: [Mode; 5],
    pub burst_factor: f64,
    pub burst_floor: u32,
    pub error_ratio: f64,
    pub error_min_requests: u32,
    pub dormant_after_seconds: u64,
    /// Identities and the kinds expected of them.
    pub expected: Vec<(Pattern, Vec<Kind>)>,
}

impl Behaviour {
    pub fn watches(&self, kind: Kind) -> bool {
        self.watched.get(kind.index()).copied().unwrap_or(false)
    }

    pub fn mode(&self, kind: Kind) -> Mode {
        self.modes.get(kind.index()).copied().unwrap_or(Mode::Observe)
    }

    /// Whether `kind` is expected of `identity` (never flagged).
    pub fn expected(&self, identity: &str, kind: Kind) -> bool {
        self.expected.iter().any(|(pattern, kinds)| kinds.contains(&kind) && pattern.matches(identity))
    }
}

/// Where the filter forwards the flagged kinds, when `forward_header` is on.
pub const ANOMALY_HEADER: &str = "x-nhi-anomaly";

pub const DEFAULT_INTERVAL_SECONDS: u64 = 60;
pub const DEFAULT_MAX_TRACKED_IDENTITIES: u32 = 10_000;
pub const MAX_MAX_TRACKED_IDENTITIES: u32 = 1_000_000;

/// `behaviour`, as written.
#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawBehaviour {
    /// Per-identity and per-route status class and latency metrics (default false).
    #[serde(default)]
    pub outcome_metrics: bool,
    #[serde(default)]
    pub interval_seconds: Option<u64>,
    #[serde(default)]
    pub half_life_intervals: Option<f64>,
    #[serde(default)]
    pub peak_half_life_intervals: Option<f64>,
    #[serde(default)]
    pub warmup_intervals: Option<u32>,
    #[serde(default)]
    pub merge_seconds: Option<f64>,
    #[serde(default)]
    pub max_tracked_identities: Option<u32>,
    #[serde(default)]
    pub source_prefix_v4: Option<u8>,
    #[serde(default)]
    pub source_prefix_v6: Option<u8>,
    /// Forward the flagged kinds upstream in `x-nhi-anomaly` (default false).
    #[serde(default)]
    pub forward_header: bool,
    /// Anomaly detection; absent: none.
    #[serde(default)]
    pub anomalies: Option<RawAnomalies>,
    #[serde(default)]
    pub expected: Vec<RawExpected>,
}

impl FromJson for RawBehaviour {
    fn from_json(value: Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawBehaviour {
            outcome_metrics: o.or_default("outcome_metrics"),
            interval_seconds: o.optional("interval_seconds"),
            half_life_intervals: o.optional("half_life_intervals"),
            peak_half_life_intervals: o.optional("peak_half_life_intervals"),
            warmup_intervals: o.optional("warmup_intervals"),
            merge_seconds: o.optional("merge_seconds"),
            max_tracked_identities: o.optional("max_tracked_identities"),
            source_prefix_v4: o.optional("source_prefix_v4"),
            source_prefix_v6: o.optional("source_prefix_v6"),
            forward_header: o.or_default("forward_header"),
            anomalies: o.optional("anomalies"),
            expected: o.or_default("expected"),
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawAnomalies {
    #[serde(default)]
    pub burst: Option<RawKind>,
    #[serde(default)]
    pub new_route: Option<RawKind>,
    #[serde(default)]
    pub new_source: Option<RawKind>,
    #[serde(default)]
    pub error_spike: Option<RawKind>,
    #[serde(default)]
    pub dormant_returned: Option<RawKind>,
}

impl FromJson for RawAnomalies {
    fn from_json(value: Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawAnomalies {
            burst: o.optional("burst"),
            new_route: o.optional("new_route"),
            new_source: o.optional("new_source"),
            error_spike: o.optional("error_spike"),
            dormant_returned: o.optional("dormant_returned"),
        })
    }
}

/// One kind's settings; only the members that apply to the kind are accepted.
#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawKind {
    /// `observe` (default) or `enforce`.
    #[serde(default)]
    pub mode: Option<String>,
    /// The status of an enforced refusal (4xx or 5xx, not 401).
    #[serde(default)]
    pub status: Option<u16>,
    /// `burst`: how many times the usual rate and the usual peak (default 10).
    #[serde(default)]
    pub factor: Option<f64>,
    /// `burst`: fewest requests in an interval that can be a burst (default 100).
    #[serde(default)]
    pub floor: Option<u32>,
    /// `error_spike`: error ratio that is a spike (default 0.5).
    #[serde(default)]
    pub ratio: Option<f64>,
    /// `error_spike`: fewest requests in the interval to judge (default 20).
    #[serde(default)]
    pub min_requests: Option<u32>,
    /// `dormant_returned`: silence that makes a return notable (default 7 days).
    #[serde(default)]
    pub after_seconds: Option<u64>,
}

impl FromJson for RawKind {
    fn from_json(value: Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawKind {
            mode: o.optional("mode"),
            status: o.optional("status"),
            factor: o.optional("factor"),
            floor: o.optional("floor"),
            ratio: o.optional("ratio"),
            min_requests: o.optional("min_requests"),
            after_seconds: o.optional("after_seconds"),
        })
    }
}

#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawExpected {
    /// A forwarded identity, exact or with a trailing `*`.
    pub identity: String,
    /// The kinds expected of it.
    pub kinds: Vec<String>,
}

impl FromJson for RawExpected {
    fn from_json(value: Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawExpected {
            identity: o.required("identity"),
            kinds: o.required("kinds"),
        })
    }
}

/// Validates the `behaviour` block found at `at`.
pub fn compile(raw: RawBehaviour, at: &str) -> Result<Behaviour, ConfigError> {
    let field = |f: &str| format!("{at}.{f}");
    let interval_seconds = raw.interval_seconds.unwrap_or(DEFAULT_INTERVAL_SECONDS);
    if !(1..=86_400).contains(&interval_seconds) {
        return Err(ConfigError::invalid(field("interval_seconds"), "must be between 1 and 86400"));
    }
    // `max` is whole so that the message formats an integer: formatting an `f64` would
    // link Rust's float printing (about 14 KB of the .wasm) for this one message.
    let positive = |value: Option<f64>, default: f64, name: &str, max: u32| -> Result<f64, ConfigError> {
        let v = value.unwrap_or(default);
        if v.is_finite() && v > 0.0 && v <= f64::from(max) {
            Ok(v)
        } else {
            Err(ConfigError::invalid(field(name), format!("must be a number above 0 and at most {max}")))
        }
    };
    let half_life_intervals = positive(raw.half_life_intervals, 60.0, "half_life_intervals", 1_000_000)?;
    let peak_half_life_intervals =
        positive(raw.peak_half_life_intervals, 2_880.0, "peak_half_life_intervals", 10_000_000)?;
    let merge_seconds = positive(raw.merge_seconds, 1.0, "merge_seconds", 60)?;
    let warmup_intervals = raw.warmup_intervals.unwrap_or(10);
    if warmup_intervals > 100_000 {
        return Err(ConfigError::invalid(field("warmup_intervals"), "must be at most 100000"));
    }
    let max_tracked_identities = raw.max_tracked_identities.unwrap_or(DEFAULT_MAX_TRACKED_IDENTITIES);
    if !(1..=MAX_MAX_TRACKED_IDENTITIES).contains(&max_tracked_identities) {
        return Err(ConfigError::invalid(
            field("max_tracked_identities"),
            format!("must be between 1 and {MAX_MAX_TRACKED_IDENTITIES}"),
        ));
    }
    let source_prefix_v4 = raw.source_prefix_v4.unwrap_or(24);
    if !(8..=32).contains(&source_prefix_v4) {
        return Err(ConfigError::invalid(field("source_prefix_v4"), "must be between 8 and 32"));
    }
    let source_prefix_v6 = raw.source_prefix_v6.unwrap_or(64);
    if !(16..=128).contains(&source_prefix_v6) {
        return Err(ConfigError::invalid(field("source_prefix_v6"), "must be between 16 and 128"));
    }
    let detect = raw.anomalies.is_some();
    let anomalies = raw.anomalies.unwrap_or_default();
    let watch_sources = anomalies.new_source.is_some();
    let mut modes = [Mode::Observe; 5];
    let mut watched = [false; 5];
    let kinds = [
        (Kind::Burst, &anomalies.burst, 429),
        (Kind::NewRoute, &anomalies.new_route, 403),
        (Kind::NewSource, &anomalies.new_source, 403),
        (Kind::ErrorSpike, &anomalies.error_spike, 503),
        (Kind::DormantReturned, &anomalies.dormant_returned, 403),
    ];
    for (kind, raw_kind, default_status) in kinds {
        let at_kind = |f: &str| format!("{at}.anomalies.{}.{f}", kind.as_str());
        let Some(raw_kind) = raw_kind else { continue };
        if let Some(slot) = watched.get_mut(kind.index()) {
            *slot = true;
        }
        let allowed: &[&str] = match kind {
            Kind::Burst => &["factor", "floor"],
            Kind::ErrorSpike => &["ratio", "min_requests"],
            Kind::DormantReturned => &["after_seconds"],
            Kind::NewRoute | Kind::NewSource => &[],
        };
        let given = [
            ("factor", raw_kind.factor.is_some()),
            ("floor", raw_kind.floor.is_some()),
            ("ratio", raw_kind.ratio.is_some()),
            ("min_requests", raw_kind.min_requests.is_some()),
            ("after_seconds", raw_kind.after_seconds.is_some()),
        ];
        if let Some((name, _)) = given.iter().find(|(name, set)| *set && !allowed.contains(name)) {
            return Err(ConfigError::invalid(at_kind(name), format!("does not apply to {}", kind.as_str())));
        }
        let status = raw_kind.status.unwrap_or(default_status);
        if !(400..=599).contains(&status) || status == 401 || status == 407 {
            return Err(ConfigError::invalid(
                at_kind("status"),
                "must be a 4xx or 5xx status other than 401 and 407",
            ));
        }
        let mode = match raw_kind.mode.as_deref() {
            None | Some("observe") => Mode::Observe,
            Some("enforce") => Mode::Enforce(status),
            Some(other) => {
                return Err(ConfigError::invalid(
                    at_kind("mode"),
                    format!("{other:?} is not observe or enforce"),
                ))
            }
        };
        if let Some(slot) = modes.get_mut(kind.index()) {
            *slot = mode;
        }
    }
    let burst = anomalies.burst.unwrap_or_default();
    let burst_factor = burst.factor.unwrap_or(10.0);
    if !(burst_factor.is_finite() && (1.5..=1_000.0).contains(&burst_factor)) {
        return Err(ConfigError::invalid(field("anomalies.burst.factor"), "must be between 1.5 and 1000"));
    }
    let burst_floor = burst.floor.unwrap_or(100);
    let spike = anomalies.error_spike.unwrap_or_default();
    let error_ratio = spike.ratio.unwrap_or(0.5);
    if !(error_ratio.is_finite() && error_ratio > 0.0 && error_ratio <= 1.0) {
        return Err(ConfigError::invalid(
            field("anomalies.error_spike.ratio"),
            "must be above 0 and at most 1",
        ));
    }
    let error_min_requests = spike.min_requests.unwrap_or(20).max(1);
    let dormant_after_seconds =
        anomalies.dormant_returned.and_then(|d| d.after_seconds).unwrap_or(7 * 86_400);
    if dormant_after_seconds < interval_seconds {
        return Err(ConfigError::invalid(
            field("anomalies.dormant_returned.after_seconds"),
            "must be at least interval_seconds",
        ));
    }
    let mut expected = Vec::with_capacity(raw.expected.len());
    for (i, entry) in raw.expected.into_iter().enumerate() {
        let pattern = Pattern::parse(&entry.identity)
            .map_err(|e| ConfigError::invalid(field(&format!("expected[{i}].identity")), e))?;
        let mut kinds = Vec::new();
        for (j, name) in entry.kinds.iter().enumerate() {
            let kind = Kind::parse(name).ok_or_else(|| {
                ConfigError::invalid(
                    field(&format!("expected[{i}].kinds[{j}]")),
                    format!("{name:?} is not an anomaly kind"),
                )
            })?;
            kinds.push(kind);
        }
        if kinds.is_empty() {
            return Err(ConfigError::invalid(
                field(&format!("expected[{i}].kinds")),
                "must list at least one kind",
            ));
        }
        expected.push((pattern, kinds));
    }
    Ok(Behaviour {
        outcome_metrics: raw.outcome_metrics,
        detect,
        watch_sources,
        watched,
        interval_seconds,
        half_life_intervals,
        peak_half_life_intervals,
        warmup_intervals,
        merge_ms: (merge_seconds * 1000.0) as u64,
        max_tracked_identities,
        source_prefix_v4,
        source_prefix_v6,
        forward_header: raw.forward_header,
        modes,
        burst_factor,
        burst_floor,
        error_ratio,
        error_min_requests,
        dormant_after_seconds,
        expected,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn compiled(v: serde_json::Value) -> Result<Behaviour, ConfigError> {
        compile(RawBehaviour::from_json(v, "behaviour")?, "behaviour")
    }

    #[test]
    fn defaults_and_modes() {
        let b = compiled(json!({"anomalies": {"burst": {"mode": "enforce"}, "new_route": {}}})).unwrap();
        assert!(b.detect);
        assert_eq!(b.mode(Kind::Burst), Mode::Enforce(429));
        assert_eq!(b.mode(Kind::NewRoute), Mode::Observe);
        assert_eq!((b.interval_seconds, b.warmup_intervals, b.merge_ms), (60, 10, 1000));
        assert!(!compiled(json!({})).unwrap().detect);
    }

    #[test]
    fn invalid_fields_are_named() {
        for (v, field) in [
            (json!({"interval_seconds": 0}), "behaviour.interval_seconds"),
            (json!({"anomalies": {"burst": {"mode": "block"}}}), "behaviour.anomalies.burst.mode"),
            (json!({"anomalies": {"burst": {"status": 401}}}), "behaviour.anomalies.burst.status"),
            (json!({"anomalies": {"new_route": {"factor": 3}}}), "behaviour.anomalies.new_route.factor"),
            (json!({"anomalies": {"burst": {"factor": 1}}}), "behaviour.anomalies.burst.factor"),
            (json!({"expected": [{"identity": "", "kinds": ["burst"]}]}), "behaviour.expected[0].identity"),
            (json!({"expected": [{"identity": "a", "kinds": ["nope"]}]}), "behaviour.expected[0].kinds[0]"),
            (json!({"source_prefix_v4": 33}), "behaviour.source_prefix_v4"),
        ] {
            assert_eq!(compiled(v.clone()).unwrap_err().field(), field, "{v}");
        }
    }

    #[test]
    fn a_number_above_its_bound_is_refused_with_the_bound() {
        for (v, field, reason) in [
            (json!({"half_life_intervals": 2e6}), "behaviour.half_life_intervals", "at most 1000000"),
            (
                json!({"peak_half_life_intervals": 0}),
                "behaviour.peak_half_life_intervals",
                "at most 10000000",
            ),
            (json!({"merge_seconds": 60.5}), "behaviour.merge_seconds", "at most 60"),
        ] {
            let err = compiled(v.clone()).unwrap_err();
            assert_eq!(err.field(), field, "{v}");
            assert_eq!(err.reason(), format!("must be a number above 0 and {reason}"), "{v}");
        }
        assert!(compiled(json!({"merge_seconds": 60})).is_ok());
    }

    #[test]
    fn expected_changes_are_matched_by_pattern_and_kind() {
        let b =
            compiled(json!({"expected": [{"identity": "ci/*", "kinds": ["new_source", "burst"]}]})).unwrap();
        assert!(b.expected("ci/deployer", Kind::NewSource));
        assert!(!b.expected("ci/deployer", Kind::NewRoute));
        assert!(!b.expected("payments/api", Kind::Burst));
    }

    #[test]
    fn wrong_shapes_are_refused_naming_their_path() {
        for (v, field, reason) in [
            (json!({"outcome_metrics": null}), "behaviour.outcome_metrics", "must be true or false, not null"),
            (json!({"forward_header": "yes"}), "behaviour.forward_header", r#"must be true or false, not "yes""#),
            (json!({"source_prefix_v6": 256}), "behaviour.source_prefix_v6", "must be a whole number from 0 to 255, not 256"),
            (json!({"half_life_intervals": "1h"}), "behaviour.half_life_intervals", r#"must be a number, not "1h""#),
            (
                json!({"anomalies": {"burst": {"status": 70_000}}}),
                "behaviour.anomalies.burst.status",
                "must be a whole number from 0 to 65535, not 70000",
            ),
            (
                json!({"anomalies": {"bursts": {}}}),
                "behaviour.anomalies.bursts",
                "is not a known field (known: burst, new_route, new_source, error_spike, dormant_returned)",
            ),
            (
                json!({"anomalies": {"burst": {"threshold": 3}}}),
                "behaviour.anomalies.burst.threshold",
                "is not a known field (known: mode, status, factor, floor, ratio, min_requests, after_seconds)",
            ),
            (json!({"expected": [{"identity": "a"}]}), "behaviour.expected[0].kinds", "is required"),
            (json!({"expected": [{"kinds": []}]}), "behaviour.expected[0].identity", "is required"),
            (json!({"expected": null}), "behaviour.expected", "must be an array, not null"),
        ] {
            let err = compiled(v.clone()).unwrap_err();
            assert_eq!((err.field(), err.reason()), (field, reason), "{v}");
        }
    }

    #[test]
    fn the_reader_and_serde_agree() {
        for v in [
            json!({}),
            json!({"outcome_metrics": true, "interval_seconds": 30, "half_life_intervals": 2, "peak_half_life_intervals": 10.5,
                   "warmup_intervals": 3, "merge_seconds": 0.5, "max_tracked_identities": 7, "source_prefix_v4": 16,
                   "source_prefix_v6": 48, "forward_header": true, "expected": [{"identity": "ci/*", "kinds": ["burst"]}],
                   "anomalies": {"burst": {"mode": "enforce", "status": 429, "factor": 3, "floor": 5}, "new_route": null,
                                 "new_source": {}, "error_spike": {"ratio": 0.2, "min_requests": 4},
                                 "dormant_returned": {"after_seconds": 60}}}),
        ] {
            let ours = RawBehaviour::from_json(v.clone(), "behaviour").unwrap();
            let serdes: RawBehaviour = serde_json::from_value(v).unwrap();
            assert_eq!(format!("{ours:?}"), format!("{serdes:?}"));
        }
    }
}
