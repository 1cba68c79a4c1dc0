//! Metric names, their labels, and the bound on per-identity series.
//!
//! Pure: this module decides *what* is counted under *which name*; the glue
//! (`filter::observe`) defines and updates the metrics through the host.
//!
//! # Names and labels
//! proxy-wasm metrics have a name and nothing else, so the labels travel inside the
//! name and Envoy takes them out again with the `stats_config.stats_tags` shipped in
//! `envoy/envoy.yaml` ([`envoy_stats_tags`]). A series is written
//!
//! ```text
//! nhi_issuer=demo;nhi_route=machine-api;nhi_decision=allowed;nhi_reason=allow;nhi_requests_total
//! ```
//!
//! each label `KEY=VALUE;`, the family name last. Each tag regex,
//! `(KEY=([^;]*);)`, removes its label and keeps the value, which leaves exactly the
//! family name; Envoy prefixes custom metrics with `wasmcustom.` and removes that
//! prefix again in `/stats/prometheus`, so Prometheus sees
//! `nhi_requests_total{nhi_issuer="demo",nhi_route="machine-api",...}`.
//!
//! Values are made safe by [`label_value`]: `;`, `=`, whitespace, quotes and every
//! other character outside `[A-Za-z0-9_.:/@+-]` become `_`, and values are cut at
//! [`MAX_LABEL_BYTES`]. So a value can never end a label early or look like a key,
//! and no name ends in a value (Envoy's built-in extractors look at name ends, e.g.
//! `_rq_200`).
//!
//! # Bounded identities
//! Envoy never deletes a metric, so every identity label is a series for the
//! lifetime of the process. At most `metrics.max_identities` (issuer, identity)
//! pairs get a label of their own, **for the whole Envoy**: the first ones seen,
//! recorded in one shared-data key ([`IDENTITIES_KEY`]) as 64-bit fingerprints,
//! appended with compare-and-swap. Every later identity is counted under
//! `nhi_identity="other"` (with its real issuer). The bound is global rather than
//! per worker so that one identity is never split between its own label on one
//! worker and `other` on another, and so that N workers cannot make N × the series.
//! Each VM caches what it learned: an identity costs a shared-data read the first
//! time a VM sees it, and nothing once the list is full. Without shared data
//! (a per-VM store) the bound holds per VM.

use std::collections::HashSet;

use crate::json::{self, FromJson};
use serde::Deserialize;

use crate::error::ConfigError;
use crate::host::store::{Store, StoreError};

pub const DEFAULT_MAX_IDENTITIES: u64 = 100;
/// More per-identity series than this is a job for logs, not Prometheus.
pub const MAX_IDENTITIES: u64 = 10_000;
/// The identity label of every identity beyond the bound.
pub const OTHER_IDENTITY: &str = "other";
/// Label values are cut to this many bytes.
pub const MAX_LABEL_BYTES: usize = 128;
/// Issuer label of a request without a token.
pub const NO_ISSUER: &str = "none";
/// Issuer label of a token no configured issuer claims (malformed, unknown `iss`).
pub const UNKNOWN_ISSUER: &str = "unknown";
/// Route label of a request no route matched.
pub const NO_ROUTE: &str = "none";
/// The shared-data key listing the identities that have a label of their own.
pub const IDENTITIES_KEY: &str = "nhi-guard.m.identities";
/// Lost compare-and-swap races before an identity is counted under `other` once.
const MAX_ATTEMPTS: usize = 8;

/// The `metrics` block, as written.
#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    max_identities: Option<u64>,
}

impl FromJson for RawMetrics {
    fn from_json(value: serde_json::Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawMetrics {
            enabled: o.optional("enabled"),
            max_identities: o.optional("max_identities"),
        })
    }
}

/// The validated `metrics` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsConfig {
    /// `false`: no metric is defined or updated.
    pub enabled: bool,
    /// Most (issuer, identity) pairs with a label of their own, per Envoy; `0`
    /// counts every identity under `other`.
    pub max_identities: u32,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { enabled: true, max_identities: DEFAULT_MAX_IDENTITIES as u32 }
    }
}

/// Validates the `metrics` block found at `at` (e.g. `metrics`).
pub fn compile(raw: Option<RawMetrics>, at: &str) -> Result<MetricsConfig, ConfigError> {
    let raw = raw.unwrap_or_default();
    let max = raw.max_identities.unwrap_or(DEFAULT_MAX_IDENTITIES);
    let max_identities =
        u32::try_from(max).ok().filter(|m| u64::from(*m) <= MAX_IDENTITIES).ok_or_else(|| {
            ConfigError::Invalid {
                field: format!("{at}.max_identities"),
                reason: format!("must be between 0 and {MAX_IDENTITIES}"),
            }
        })?;
    Ok(MetricsConfig { enabled: raw.enabled.unwrap_or(true), max_identities })
}

/// What kind of metric a family is (the host's own kinds).
pub use crate::host::MetricKind as Kind;

/// One label key; the `nhi_` prefix keeps them apart from Envoy's own tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    Issuer,
    Route,
    Decision,
    Reason,
    Identity,
    Policy,
    Result,
    /// An anomaly kind (`burst`, `new_route`, …).
    Anomaly,
    /// A response status class (`2xx` … `5xx`).
    StatusClass,
    Partner,
    Key,
    /// What a revocation-feed count counts (`jti`, `subjects`, …).
    Kind,
}

impl Label {
    pub const ALL: [Label; 12] = [
        Label::Issuer,
        Label::Route,
        Label::Decision,
        Label::Reason,
        Label::Identity,
        Label::Policy,
        Label::Result,
        Label::Anomaly,
        Label::StatusClass,
        Label::Partner,
        Label::Key,
        Label::Kind,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Label::Issuer => "nhi_issuer",
            Label::Route => "nhi_route",
            Label::Decision => "nhi_decision",
            Label::Reason => "nhi_reason",
            Label::Identity => "nhi_identity",
            Label::Policy => "nhi_policy",
            Label::Result => "nhi_result",
            Label::Anomaly => "nhi_anomaly",
            Label::StatusClass => "nhi_status_class",
            Label::Partner => "nhi_partner",
            Label::Key => "nhi_key",
            Label::Kind => "nhi_kind",
        }
    }

    /// The `stats_tags` regex for this label: group 1 is removed from the name,
    /// group 2 is the value.
    pub fn envoy_regex(self) -> String {
        format!("({}=([^;]*);)", self.key())
    }
}

/// Every metric family: its Prometheus name, type and labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Every request the filter decided.
    Requests,
    /// Requests of a verified identity.
    IdentityRequests,
    /// Refusals of a verified identity.
    IdentityDenials,
    /// Requests refused for quota, per identity and policy.
    QuotaRejections,
    /// Charges to a policy's shared overflow budget (the identity's quota bucket was full).
    QuotaOverflow,
    /// Requests a route in shadow mode would have refused (they were forwarded).
    ShadowDenials,
    /// JWKS fetches by result (`success`, `failure`).
    JwksFetches,
    /// Keys currently loaded.
    JwksKeys,
    /// Seconds since the last successful fetch (since start while none succeeded).
    JwksAge,
    /// Token verification time, microseconds.
    VerificationDuration,
    /// Anomalies flagged, per identity and kind (`behaviour`).
    Anomalies,
    /// Responses to a verified identity by status class (`behaviour.outcome_metrics`).
    IdentityResponses,
    /// Request duration of a verified identity, milliseconds.
    IdentityDuration,
    /// Responses by route class and status class.
    RouteResponses,
    /// Request duration by route class, milliseconds.
    RouteDuration,
    /// Identities the behaviour table had no room for (never flagged).
    BehaviourUntracked,
    /// DPoP proof check time (signature included), microseconds.
    DpopProofDuration,
    /// Requests a partner key authenticated, per partner and key id (bounded by the
    /// configuration): which key a partner really uses, before the old one goes.
    PartnerKeyRequests,
    /// Unix time of the last request each partner key authenticated.
    PartnerKeyLastUsed,
    /// TokenReviews by result (`alive`, `gone`, `unavailable`): one per token per
    /// `cache_seconds` for the whole Envoy.
    LivenessReviews,
    /// Revocation-feed fetches by result (`success`, `failure`).
    RevocationFetches,
    /// Seconds since the revocation list in use was fetched (since start while none was).
    RevocationAge,
    /// 1 while the revocation list is older than `max_stale_seconds` (or missing).
    RevocationStale,
    /// Entries of the revocation list in use, by kind.
    RevocationEntries,
    /// When a verified identity last made a request (the inventory), Unix seconds.
    IdentityLastSeen,
    /// Linear memory of the proxy's nhi-guard VMs, bytes, summed over VMs: each VM
    /// adds the change of its own size, so the host's one gauge is the total (a
    /// gauge every VM *set* would show whichever VM wrote last). Wasm memory never
    /// shrinks, so this is each VM's high-water mark: what per-VM state costs.
    VmMemory,
}

impl Family {
    pub const ALL: [Family; 26] = [
        Family::Requests,
        Family::IdentityRequests,
        Family::IdentityDenials,
        Family::QuotaRejections,
        Family::QuotaOverflow,
        Family::ShadowDenials,
        Family::JwksFetches,
        Family::JwksKeys,
        Family::JwksAge,
        Family::VerificationDuration,
        Family::Anomalies,
        Family::IdentityResponses,
        Family::IdentityDuration,
        Family::RouteResponses,
        Family::RouteDuration,
        Family::BehaviourUntracked,
        Family::DpopProofDuration,
        Family::PartnerKeyRequests,
        Family::PartnerKeyLastUsed,
        Family::LivenessReviews,
        Family::RevocationFetches,
        Family::RevocationAge,
        Family::RevocationStale,
        Family::RevocationEntries,
        Family::IdentityLastSeen,
        Family::VmMemory,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Family::Requests => "nhi_requests_total",
            Family::IdentityRequests => "nhi_identity_requests_total",
            Family::IdentityDenials => "nhi_identity_denials_total",
            Family::QuotaRejections => "nhi_quota_rejections_total",
            Family::QuotaOverflow => "nhi_quota_overflow_total",
            Family::ShadowDenials => "nhi_shadow_denials_total",
            Family::JwksFetches => "nhi_jwks_fetches_total",
            Family::JwksKeys => "nhi_jwks_keys",
            Family::JwksAge => "nhi_jwks_last_success_age_seconds",
            Family::VerificationDuration => "nhi_verification_duration_us",
            Family::Anomalies => "nhi_anomalies_total",
            Family::IdentityResponses => "nhi_identity_responses_total",
            Family::IdentityDuration => "nhi_identity_request_duration_ms",
            Family::RouteResponses => "nhi_route_responses_total",
            Family::RouteDuration => "nhi_route_request_duration_ms",
            Family::BehaviourUntracked => "nhi_behaviour_untracked_total",
            Family::DpopProofDuration => "nhi_dpop_proof_duration_us",
            Family::PartnerKeyRequests => "nhi_partner_key_requests_total",
            Family::PartnerKeyLastUsed => "nhi_partner_key_last_used_seconds",
            Family::LivenessReviews => "nhi_liveness_reviews_total",
            Family::RevocationFetches => "nhi_revocation_fetches_total",
            Family::RevocationAge => "nhi_revocation_age_seconds",
            Family::RevocationStale => "nhi_revocation_stale",
            Family::RevocationEntries => "nhi_revocation_entries",
            Family::IdentityLastSeen => "nhi_identity_last_seen_timestamp_seconds",
            Family::VmMemory => "nhi_vm_memory_bytes",
        }
    }

    pub fn kind(self) -> Kind {
        match self {
            Family::JwksKeys
            | Family::JwksAge
            | Family::PartnerKeyLastUsed
            | Family::RevocationAge
            | Family::RevocationStale
            | Family::RevocationEntries
            | Family::IdentityLastSeen
            | Family::VmMemory => Kind::Gauge,
            Family::VerificationDuration
            | Family::IdentityDuration
            | Family::RouteDuration
            | Family::DpopProofDuration => Kind::Histogram,
            _ => Kind::Counter,
        }
    }

    pub fn labels(self) -> &'static [Label] {
        use Label::*;
        match self {
            Family::Requests => &[Issuer, Route, Decision, Reason],
            Family::IdentityRequests => &[Issuer, Identity],
            Family::IdentityDenials => &[Issuer, Identity, Reason],
            Family::QuotaRejections => &[Issuer, Identity, Policy],
            Family::QuotaOverflow => &[Policy],
            Family::ShadowDenials => &[Issuer, Route, Reason],
            Family::JwksFetches => &[Issuer, Result],
            Family::JwksKeys | Family::JwksAge | Family::VerificationDuration | Family::DpopProofDuration => {
                &[Issuer]
            }
            Family::Anomalies => &[Issuer, Identity, Anomaly],
            Family::IdentityResponses => &[Issuer, Identity, StatusClass],
            Family::IdentityDuration => &[Issuer, Identity],
            Family::RouteResponses => &[Route, StatusClass],
            Family::RouteDuration => &[Route],
            Family::BehaviourUntracked => &[Issuer],
            Family::PartnerKeyRequests | Family::PartnerKeyLastUsed => &[Partner, Key],
            Family::LivenessReviews => &[Issuer, Result],
            Family::RevocationFetches => &[Result],
            Family::RevocationAge | Family::RevocationStale | Family::VmMemory => &[],
            Family::RevocationEntries => &[Label::Kind],
            Family::IdentityLastSeen => &[Issuer, Identity],
        }
    }
}

/// One series: what the host is asked to define.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Series {
    pub kind: Kind,
    /// The proxy-wasm metric name, labels encoded (see the module docs).
    pub name: String,
}

impl Series {
    /// The series of `family` with these label values, in `family.labels()` order.
    /// Missing values are written as `_`; extra ones are ignored.
    pub fn new(family: Family, values: &[&str]) -> Series {
        let mut name = String::with_capacity(96);
        for (i, label) in family.labels().iter().enumerate() {
            name.push_str(label.key());
            name.push('=');
            name.push_str(&label_value(values.get(i).copied().unwrap_or_default()));
            name.push(';');
        }
        name.push_str(family.name());
        Series { kind: family.kind(), name }
    }
}

/// Whether a request was let through or refused (a label value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Denied,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
        }
    }
}

/// `value` made safe inside an encoded name (see the module docs). Never empty.
pub fn label_value(value: &str) -> String {
    // Most values are safe as they are (runs on every request): one copy.
    if !value.is_empty() && value.len() <= MAX_LABEL_BYTES && value.bytes().all(label_safe) {
        return value.to_owned();
    }
    let mut out: String = value
        .chars()
        .map(|c| if u8::try_from(c).is_ok_and(label_safe) { c } else { '_' })
        .take(MAX_LABEL_BYTES)
        .collect();
    if out.is_empty() {
        out.push('_');
    }
    out
}

/// A byte a label value keeps as it is.
fn label_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'/' | b'@' | b'+' | b'-')
}

/// The `stats_config.stats_tags` Envoy needs to turn the encoded names into
/// labels: `(tag_name, regex)`, one per label.
pub fn envoy_stats_tags() -> Vec<(&'static str, String)> {
    Label::ALL.iter().map(|l| (l.key(), l.envoy_regex())).collect()
}

/// 64-bit FNV-1a of the (issuer, identity label) pair, finished with a
/// SplitMix64 round so every bit depends on every input byte.
pub fn fingerprint(issuer: &str, identity_label: &str) -> u64 {
    crate::hash::mix64(crate::hash::fnv1a64_fields(&[issuer.as_bytes(), identity_label.as_bytes()]))
}

/// The identity label a verified identity is counted under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityLabel {
    /// Its own label (already made safe with [`label_value`]).
    Own(String),
    /// Beyond the bound: `other`.
    Other,
}

impl IdentityLabel {
    pub fn as_str(&self) -> &str {
        match self {
            IdentityLabel::Own(label) => label,
            IdentityLabel::Other => OTHER_IDENTITY,
        }
    }
}

/// One VM's view of the Envoy-wide list of labelled identities (see the module docs).
#[derive(Debug)]
pub struct IdentityBound {
    max: usize,
    /// Fingerprints known to be in the shared list.
    /// Fingerprints are already well mixed ([`fingerprint`]): a seeded multiply-mix
    /// hashes them, not SipHash (this set is read on every request).
    admitted: HashSet<u64, crate::hash::seeded::Seeded>,
    /// The shared list was seen full: it never shrinks, so no need to look again.
    full: bool,
}

impl IdentityBound {
    pub fn new(max_identities: u32) -> Self {
        IdentityBound {
            max: max_identities as usize,
            admitted: HashSet::default(),
            full: max_identities == 0,
        }
    }

    /// Creates the shared key if it is missing, so that every later write carries a
    /// CAS token (a write without one could drop another worker's entry).
    pub fn prepare<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
        match store.get(IDENTITIES_KEY)? {
            (_, Some(_)) | (Some(_), None) => Ok(()),
            (None, None) => store.set(IDENTITIES_KEY, &[], None),
        }
    }

    /// The label for (`issuer`, `identity`), admitting the pair if there is room.
    /// A store failure counts this one request under `other` and changes nothing.
    pub fn label<S: Store + ?Sized>(&mut self, store: &S, issuer: &str, identity: &str) -> IdentityLabel {
        let label = label_value(identity);
        let fp = fingerprint(issuer, &label);
        if self.admitted.contains(&fp) {
            return IdentityLabel::Own(label);
        }
        if self.full {
            return IdentityLabel::Other;
        }
        for _ in 0..MAX_ATTEMPTS {
            let Ok((bytes, cas)) = store.get(IDENTITIES_KEY) else { return IdentityLabel::Other };
            let mut listed = decode(bytes.as_deref().unwrap_or_default());
            self.admitted.extend(listed.iter().copied());
            if self.admitted.contains(&fp) {
                return IdentityLabel::Own(label);
            }
            if listed.len() >= self.max {
                self.full = true;
                return IdentityLabel::Other;
            }
            listed.push(fp);
            match store.set(IDENTITIES_KEY, &encode(&listed), cas) {
                Ok(()) => {
                    self.admitted.insert(fp);
                    self.full = listed.len() >= self.max;
                    return IdentityLabel::Own(label);
                }
                Err(StoreError::CasMismatch) => continue,
                Err(StoreError::Unavailable) => return IdentityLabel::Other,
            }
        }
        IdentityLabel::Other
    }

    /// How many identities this VM knows to have their own label.
    pub fn known(&self) -> usize {
        self.admitted.len()
    }
}

/// Little-endian u64s; a trailing partial entry (not written by this version) is ignored.
fn decode(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|chunk| {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            u64::from_le_bytes(word)
        })
        .collect()
}

fn encode(fps: &[u64]) -> Vec<u8> {
    fps.iter().flat_map(|fp| fp.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use serde_json::json;

    use super::*;
    use crate::host::store::MemoryStore;
    use crate::testkit::config_with;

    #[test]
    fn metrics_block_defaults_and_validation() {
        let cfg = config_with(json!({})).unwrap();
        assert_eq!(cfg.metrics, MetricsConfig { enabled: true, max_identities: 100 });
        let cfg = config_with(json!({"metrics": {"enabled": false, "max_identities": 0}})).unwrap();
        assert_eq!(cfg.metrics, MetricsConfig { enabled: false, max_identities: 0 });
        match config_with(json!({"metrics": {"max_identities": 10_001}})) {
            Err(ConfigError::Invalid { field, .. }) => assert_eq!(field, "metrics.max_identities"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            config_with(json!({"metrics": {"max_identity": 5}})).unwrap_err().field(),
            "metrics.max_identity"
        );
        let err = config_with(json!({"metrics": {"max_identities": -1}})).unwrap_err();
        assert_eq!(
            (err.field(), err.reason()),
            ("metrics.max_identities", "must be a whole number, 0 or more, not -1")
        );
    }

    #[test]
    fn series_names_encode_labels_before_the_family() {
        let s = Series::new(Family::Requests, &["demo", "machine-api", "allowed", "allow"]);
        assert_eq!(s.kind, Kind::Counter);
        assert_eq!(
            s.name,
            "nhi_issuer=demo;nhi_route=machine-api;nhi_decision=allowed;nhi_reason=allow;nhi_requests_total"
        );
        assert_eq!(Series::new(Family::JwksKeys, &["demo"]).kind, Kind::Gauge);
        assert_eq!(
            Series::new(Family::VerificationDuration, &[]).name,
            "nhi_issuer=_;nhi_verification_duration_us"
        );
    }

    /// What Envoy does with `stats_tags`: each regex removes group 1 and keeps group 2.
    fn extract(name: &str) -> (String, Vec<(String, String)>) {
        let mut rest = name.to_owned();
        let mut tags = Vec::new();
        for label in Label::ALL {
            let key = format!("{}=", label.key());
            if let Some(start) = rest.find(&key) {
                let value_start = start + key.len();
                let end = value_start + rest[value_start..].find(';').unwrap();
                tags.push((label.key().to_owned(), rest[value_start..end].to_owned()));
                rest.replace_range(start..=end, "");
            }
        }
        (rest, tags)
    }

    #[test]
    fn hostile_values_cannot_break_out_of_their_label() {
        let identity = "evil;nhi_route=x;=\"}\n spiffe://cluster.local/ns/a/sa/b";
        let s = Series::new(Family::IdentityDenials, &["ci", identity, "not_allowed"]);
        let (name, tags) = extract(&s.name);
        assert_eq!(name, "nhi_identity_denials_total");
        assert_eq!(
            tags,
            [
                ("nhi_issuer".to_owned(), "ci".to_owned()),
                ("nhi_reason".to_owned(), "not_allowed".to_owned()),
                (
                    "nhi_identity".to_owned(),
                    "evil_nhi_route_x______spiffe://cluster.local/ns/a/sa/b".to_owned()
                ),
            ]
        );
        assert_eq!(label_value(&"x".repeat(500)).len(), MAX_LABEL_BYTES);
        assert_eq!(label_value(""), "_");
        assert_eq!(label_value("système"), "syst_me");
        // The copy-as-is path and the mapping agree on every single byte and char.
        let kept: String =
            (0u8..128).map(char::from).filter(|c| label_value(&c.to_string()) == c.to_string()).collect();
        assert_eq!(kept, "+-./0123456789:@ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz");
        assert_eq!(label_value("system:serviceaccount:ci/b@x+y.z-1"), "system:serviceaccount:ci/b@x+y.z-1");
        assert_eq!(label_value("a;b=c"), "a_b_c");
        assert_eq!(label_value(&"y".repeat(MAX_LABEL_BYTES)), "y".repeat(MAX_LABEL_BYTES));
        assert_eq!(label_value(&format!("{}é", "y".repeat(MAX_LABEL_BYTES))), "y".repeat(MAX_LABEL_BYTES));
    }

    #[test]
    fn every_family_extracts_to_its_bare_name() {
        for family in Family::ALL {
            let values: Vec<&str> = family.labels().iter().map(|_| "v").collect();
            let (name, tags) = extract(&Series::new(family, &values).name);
            assert_eq!(name, family.name());
            assert_eq!(tags.len(), family.labels().len());
        }
    }

    #[test]
    fn shipped_envoy_config_extracts_every_label() {
        let yaml = include_str!("../../../envoy/envoy.yaml");
        for (tag, regex) in envoy_stats_tags() {
            assert!(yaml.contains(&format!("tag_name: {tag}")), "envoy.yaml lacks tag {tag}");
            // In YAML double quotes the regex is written as-is (no backslashes in it).
            assert!(yaml.contains(&format!("regex: \"{regex}\"")), "envoy.yaml lacks regex {regex}");
        }
    }

    #[test]
    fn the_bound_admits_the_first_identities_envoy_wide() {
        let store = MemoryStore::new();
        IdentityBound::prepare(&store).unwrap();
        let mut worker_a = IdentityBound::new(3);
        let mut worker_b = IdentityBound::new(3);
        assert_eq!(worker_a.label(&store, "ci", "a"), IdentityLabel::Own("a".into()));
        assert_eq!(worker_b.label(&store, "ci", "b"), IdentityLabel::Own("b".into()));
        // Same subject, another issuer: another series.
        assert_eq!(worker_a.label(&store, "other-ci", "a"), IdentityLabel::Own("a".into()));
        // Full for both workers, whoever filled it.
        assert_eq!(worker_b.label(&store, "ci", "c"), IdentityLabel::Other);
        assert_eq!(worker_a.label(&store, "ci", "c"), IdentityLabel::Other);
        // Admitted identities keep their label on every worker.
        assert_eq!(worker_b.label(&store, "ci", "a"), IdentityLabel::Own("a".into()));
        assert_eq!(worker_a.label(&store, "ci", "b"), IdentityLabel::Own("b".into()));
        assert_eq!(decode(&store.get(IDENTITIES_KEY).unwrap().0.unwrap()).len(), 3);
        assert_eq!(IdentityLabel::Other.as_str(), "other");
    }

    #[test]
    fn zero_means_everyone_is_other() {
        let store = MemoryStore::new();
        let mut bound = IdentityBound::new(0);
        assert_eq!(bound.label(&store, "ci", "a"), IdentityLabel::Other);
        assert_eq!(store.len(), 0, "nothing written");
    }

    /// A store whose writes fail with CAS mismatches a few times, then pass.
    struct Contended {
        inner: MemoryStore,
        losses: Cell<u32>,
    }

    impl Store for Contended {
        fn get(&self, key: &str) -> Result<crate::host::store::Versioned, StoreError> {
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            if self.losses.get() > 0 {
                self.losses.set(self.losses.get() - 1);
                // Someone else admitted an identity meanwhile.
                let (bytes, cas_now) = self.inner.get(key)?;
                let mut listed = decode(bytes.as_deref().unwrap_or_default());
                listed.push(fingerprint("ci", &format!("racer-{}", self.losses.get())));
                self.inner.set(key, &encode(&listed), cas_now)?;
                return Err(StoreError::CasMismatch);
            }
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn lost_races_are_retried_and_respect_the_bound() {
        let store = Contended { inner: MemoryStore::new(), losses: Cell::new(2) };
        IdentityBound::prepare(&store.inner).unwrap();
        let mut bound = IdentityBound::new(3);
        // Two racers got in first; there is still room for us.
        assert_eq!(bound.label(&store, "ci", "me"), IdentityLabel::Own("me".into()));
        let store = Contended { inner: MemoryStore::new(), losses: Cell::new(3) };
        IdentityBound::prepare(&store.inner).unwrap();
        let mut bound = IdentityBound::new(3);
        // Three racers filled it: we are `other`, and the list holds exactly three.
        assert_eq!(bound.label(&store, "ci", "me"), IdentityLabel::Other);
        assert_eq!(decode(&store.inner.get(IDENTITIES_KEY).unwrap().0.unwrap()).len(), 3);
    }

    #[test]
    fn an_unavailable_store_counts_under_other_without_caching() {
        struct Down;
        impl Store for Down {
            fn get(&self, _: &str) -> Result<crate::host::store::Versioned, StoreError> {
                Err(StoreError::Unavailable)
            }
            fn set(&self, _: &str, _: &[u8], _: Option<u32>) -> Result<(), StoreError> {
                Err(StoreError::Unavailable)
            }
        }
        let mut bound = IdentityBound::new(5);
        assert_eq!(bound.label(&Down, "ci", "a"), IdentityLabel::Other);
        let store = MemoryStore::new();
        IdentityBound::prepare(&store).unwrap();
        assert_eq!(bound.label(&store, "ci", "a"), IdentityLabel::Own("a".into()));
    }

    #[test]
    fn prepare_keeps_an_existing_list() {
        let store = MemoryStore::new();
        IdentityBound::prepare(&store).unwrap();
        IdentityBound::new(5).label(&store, "ci", "a");
        IdentityBound::prepare(&store).unwrap();
        assert_eq!(decode(&store.get(IDENTITIES_KEY).unwrap().0.unwrap()).len(), 1);
    }
}
