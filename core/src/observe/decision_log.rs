//! The decision log: one JSON line per machine request, and what the metrics and
//! Envoy's access log are told about a request.
//!
//! Pure: the glue fills a [`Record`] as the pipeline runs (`note_*`), closes it with
//! [`Record::finish`] once the request is forwarded or answered, and, at the end of
//! the stream, asks [`Record::should_log`] and renders [`Record::line`].
//!
//! # Which requests are logged
//! Every request that carried a bearer token, and every refusal (a request without a
//! token refused on a machine route included). People's requests that pass without
//! a token are left to Envoy's access log. Refusals, and requests a shadow-mode
//! route would have refused, are always logged; allowed requests are sampled with
//! `decision_log.allowed_sample_rate`, deterministically by `x-request-id`, so every
//! system sampling by request id keeps the same requests.
//!
//! # What is never logged
//! The token, its signature, or any claim but the verified identity (the one
//! forwarded upstream), and of a DPoP request only the key's thumbprint (`dpop_jkt`),
//! never the proof. For a token that failed verification the identity is `null`
//! (an unverified `sub` is anyone's claim); its `kid` is logged, cut to
//! [`MAX_KID_CHARS`], because it is what tells a rotation problem from an attack.

use serde::{Deserialize, Serialize};

use crate::behaviour::tracker::Flags;
use crate::error::ConfigError;
use crate::json::{self, FromJson};
use crate::observe::metrics::Outcome;
use crate::policy::{ClientClass, Decision, Verdict};
use crate::quota::{QuotaOutcome, Tracking};
use crate::reason::{Reason, Rejection};
use crate::verify::Verified;

/// `event` of every decision line: what to filter Envoy's log on.
pub const EVENT: &str = "nhi_decision";
/// Longer `kid`s are cut: the header is the client's to fill.
pub const MAX_KID_CHARS: usize = 128;

/// The `decision_log` block, as written.
#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawDecisionLog {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    allowed_sample_rate: Option<f64>,
}

impl FromJson for RawDecisionLog {
    fn from_json(value: serde_json::Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawDecisionLog {
            enabled: o.optional("enabled"),
            allowed_sample_rate: o.optional("allowed_sample_rate"),
        })
    }
}

/// The validated `decision_log` block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecisionLogConfig {
    pub enabled: bool,
    /// Fraction (0–1) of allowed requests logged; refusals are always logged.
    pub allowed_sample_rate: f64,
}

impl Default for DecisionLogConfig {
    fn default() -> Self {
        DecisionLogConfig { enabled: true, allowed_sample_rate: 1.0 }
    }
}

/// Validates the `decision_log` block found at `at`.
pub fn compile(raw: Option<RawDecisionLog>, at: &str) -> Result<DecisionLogConfig, ConfigError> {
    let raw = raw.unwrap_or_default();
    let rate = raw.allowed_sample_rate.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&rate) {
        return Err(ConfigError::Invalid {
            field: format!("{at}.allowed_sample_rate"),
            reason: "must be between 0 and 1".into(),
        });
    }
    Ok(DecisionLogConfig { enabled: raw.enabled.unwrap_or(true), allowed_sample_rate: rate })
}

/// The final decision on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decided {
    pub outcome: Outcome,
    /// `allow`, or the reason code of the refusal.
    pub reason: &'static str,
    /// The status of the refusal (the upstream's status is only known at the end).
    pub status: Option<u16>,
    /// In shadow mode, the refusal that was not enforced.
    pub shadow_reason: Option<&'static str>,
}

/// The quota charge of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaNote {
    pub policy: String,
    pub remaining: u64,
    pub allowed: bool,
    /// Charged to the policy's shared overflow budget.
    pub overflow: bool,
}

/// Everything known about one request's decision.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Record {
    /// Proxy clock when the request headers arrived, nanoseconds.
    pub started_ns: Option<u64>,
    /// `ip:port` of the downstream connection.
    pub source: Option<String>,
    /// Whether the request carried a credential: a bearer token, a partner
    /// signature or an API key.
    pub token: bool,
    /// The credential was a partner's (verified, or refused with a key of ours):
    /// its issuer is the partners' issuer name.
    pub partner: bool,
    /// The partner key that authenticated the request.
    pub partner_key: Option<crate::partners::PartnerKey>,
    /// The configured issuer the token was matched to (index into `Config::issuers`).
    pub issuer: Option<usize>,
    /// The verified identity (the one forwarded upstream); never set from an
    /// unverified token.
    pub identity: Option<String>,
    pub kid: Option<String>,
    /// How long verification took, nanoseconds.
    pub verify_ns: Option<u64>,
    /// The matched route's name.
    pub route: Option<String>,
    pub client_class: Option<ClientClass>,
    pub quota: Option<QuotaNote>,
    /// The trusted client-certificate identity (SPIFFE ID), when mTLS presented one.
    pub cert_identity: Option<String>,
    /// The identity came from the certificate alone (no token).
    pub certificate_only: bool,
    /// Anomalies this request showed (`behaviour`).
    pub anomalies: Flags,
    /// The identity's behaviour bucket was full: not tracked.
    pub behaviour_untracked: bool,
    /// The thumbprint of the DPoP key the request proved it holds (never the proof).
    pub dpop_jkt: Option<String>,
    /// How long the DPoP proof check took, nanoseconds.
    pub dpop_ns: Option<u64>,
    /// Set by [`Record::finish`].
    pub decided: Option<Decided>,
    verdict: Option<Decided>,
}

impl Record {
    /// After verification: `result` what the verifier said (a refused token's `kid`
    /// comes with the refusal), `elapsed_ns` how long it took (`None` when the
    /// worker's own cache answered: no verification was done).
    pub fn note_verification(
        &mut self,
        result: Option<Result<&Verified, &Rejection>>,
        elapsed_ns: Option<u64>,
    ) {
        // A credential that is no readable bearer token may still have been judged.
        self.token = result.is_some();
        self.verify_ns = result.and(elapsed_ns);
        self.identity = None;
        self.partner = false;
        self.partner_key = None;
        match result {
            None => {
                self.issuer = None;
                self.kid = None;
            }
            Some(Ok(verified)) => {
                self.issuer = Some(verified.issuer);
                self.identity = Some(verified.identity.clone());
                self.kid = verified.kid.as_deref().map(cut_kid);
            }
            Some(Err(rejection)) => {
                self.issuer = rejection.issuer;
                self.kid = rejection.token.as_ref().and_then(|t| t.kid.as_deref()).map(cut_kid);
            }
        }
    }

    /// After a partner credential was checked: the key that verified (with the
    /// identity and key id), or the refusal.
    pub fn note_partner(
        &mut self,
        result: Result<(crate::partners::PartnerKey, &str, &str), &Rejection>,
        elapsed_ns: Option<u64>,
    ) {
        self.token = true;
        self.issuer = None;
        self.verify_ns = elapsed_ns;
        match result {
            Ok((key, identity, key_id)) => {
                self.partner = true;
                self.partner_key = Some(key);
                self.identity = Some(identity.to_owned());
                self.kid = Some(cut_kid(key_id));
            }
            Err(rejection) => {
                let seen = rejection.token.as_ref();
                self.partner = seen.and_then(|t| t.ours) == Some(true);
                self.partner_key = None;
                self.identity = None;
                self.kid = seen.and_then(|t| t.kid.as_deref()).map(cut_kid);
            }
        }
    }

    /// The route verdict (again after a quota refusal changed it).
    pub fn note_verdict(&mut self, verdict: &Verdict<'_>) {
        self.route = verdict.route.map(str::to_owned);
        self.client_class = Some(verdict.client_class);
        self.verdict = Some(match (&verdict.decision, verdict.shadow) {
            (Decision::Allow, _) => Decided::allowed(None),
            (Decision::Deny(denial), true) => Decided::allowed(Some(denial.reason.code())),
            (Decision::Deny(denial), false) => Decided {
                outcome: Outcome::Denied,
                reason: denial.reason.code(),
                status: Some(denial.status),
                shadow_reason: None,
            },
        });
    }

    pub fn note_quota(&mut self, outcome: &QuotaOutcome) {
        self.quota = Some(QuotaNote {
            policy: outcome.policy.name().to_owned(),
            remaining: outcome.remaining,
            allowed: outcome.allowed,
            overflow: outcome.tracking == Tracking::Overflow,
        });
    }

    /// Closes the record once the request was forwarded (`replied == false`) or
    /// answered locally. A local answer to a request the verdict allowed can only
    /// be a refusal because a host call failed: `internal_error`. Returns `None` if
    /// the record was already closed (nothing is counted twice).
    pub fn finish(&mut self, replied: bool) -> Option<Decided> {
        if self.decided.is_some() {
            return None;
        }
        let decided = match (self.verdict, replied) {
            (Some(d), true) if d.outcome == Outcome::Denied => d,
            (_, true) => Decided {
                outcome: Outcome::Denied,
                reason: Reason::InternalError.code(),
                status: Some(Reason::InternalError.status()),
                shadow_reason: None,
            },
            (Some(d), false) => d,
            (None, false) => Decided::allowed(None),
        };
        self.decided = Some(decided);
        Some(decided)
    }

    /// Whether this request gets a decision line (see the module docs).
    /// `sample_key` spreads the sampling of allowed requests; see [`sample_key`].
    pub fn should_log(&self, config: &DecisionLogConfig, sample_key: u64) -> bool {
        let Some(decided) = self.decided else { return false };
        if !config.enabled {
            return false;
        }
        if decided.outcome == Outcome::Denied || decided.shadow_reason.is_some() || !self.anomalies.is_empty()
        {
            return true;
        }
        // Machine requests: a bearer token, or a certificate-only identity.
        (self.token || self.certificate_only) && sampled(config.allowed_sample_rate, sample_key)
    }

    /// The decision line, one JSON object without a newline.
    pub fn line(&self, at: &LineContext<'_>) -> String {
        let decided = self.decided.unwrap_or(Decided::allowed(None));
        let line = Line {
            event: EVENT,
            time: rfc3339_ms(self.started_ns.map_or(at.now_ms, |ns| ns / 1_000_000)),
            request_id: at.request_id,
            source: self.source.as_deref(),
            issuer: at.issuer,
            identity: self.identity.as_deref(),
            cert_identity: self.cert_identity.as_deref(),
            dpop_jkt: self.dpop_jkt.as_deref(),
            kid: self.kid.as_deref(),
            route: self.route.as_deref(),
            client_class: self.client_class.map(ClientClass::as_str),
            decision: decided.outcome.as_str(),
            reason: decided.reason,
            status: at.status.or(decided.status),
            shadow_reason: decided.shadow_reason,
            quota_policy: self.quota.as_ref().map(|q| q.policy.as_str()),
            quota_remaining: self.quota.as_ref().map(|q| q.remaining),
            latency_ms: self.started_ns.map(|start| {
                let micros = at.now_ns.saturating_sub(start) / 1_000;
                micros as f64 / 1_000.0
            }),
            anomaly: (!self.anomalies.is_empty()).then(|| self.anomalies.joined()),
        };
        // Strings and numbers only: serialization cannot fail; keep a line regardless.
        serde_json::to_string(&line).unwrap_or_else(|_| format!("{{\"event\":\"{EVENT}\"}}"))
    }
}

impl Decided {
    fn allowed(shadow_reason: Option<&'static str>) -> Decided {
        Decided { outcome: Outcome::Allowed, reason: "allow", status: None, shadow_reason }
    }
}

/// What the line needs from outside the record.
#[derive(Debug, Clone, Copy, Default)]
pub struct LineContext<'a> {
    /// Unix time now, milliseconds: the line's `time` when the start is unknown.
    pub now_ms: u64,
    /// Proxy clock now, nanoseconds (for the latency).
    pub now_ns: u64,
    pub request_id: Option<&'a str>,
    /// The name of `Record::issuer`.
    pub issuer: Option<&'a str>,
    /// The response status, if the host knows it.
    pub status: Option<u16>,
}

/// The decision line's fields, in order. Absent values are `null`, so every line
/// has every field.
#[derive(Serialize)]
struct Line<'a> {
    event: &'static str,
    time: String,
    request_id: Option<&'a str>,
    source: Option<&'a str>,
    issuer: Option<&'a str>,
    identity: Option<&'a str>,
    cert_identity: Option<&'a str>,
    dpop_jkt: Option<&'a str>,
    kid: Option<&'a str>,
    route: Option<&'a str>,
    client_class: Option<&'static str>,
    decision: &'static str,
    reason: &'static str,
    status: Option<u16>,
    shadow_reason: Option<&'static str>,
    quota_policy: Option<&'a str>,
    quota_remaining: Option<u64>,
    latency_ms: Option<f64>,
    /// `burst,new_route`: the anomalies flagged (see `crate::behaviour`).
    anomaly: Option<String>,
}

fn cut_kid(kid: &str) -> String {
    kid.chars().take(MAX_KID_CHARS).collect()
}

/// The sampling key of a request: from its `x-request-id` when it has one (the same
/// request is sampled the same way everywhere), else `fallback` (any varying number).
pub fn sample_key(request_id: Option<&str>, fallback: u64) -> u64 {
    match request_id {
        Some(id) => crate::observe::metrics::fingerprint("x-request-id", id),
        None => crate::hash::mix64(fallback),
    }
}

/// Whether a request with this (uniformly spread) key falls in the sample.
pub fn sampled(rate: f64, key: u64) -> bool {
    if rate >= 1.0 {
        return true;
    }
    // The top 53 bits as a fraction in [0, 1).
    ((key >> 11) as f64 / (1u64 << 53) as f64) < rate
}

/// `2025-06-01T12:00:00.123Z` for a Unix time in milliseconds.
pub fn rfc3339_ms(unix_ms: u64) -> String {
    let secs = unix_ms / 1_000;
    let (year, month, day) = civil_from_days(i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2));
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60,
        unix_ms % 1_000
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::crypto::alg::Alg;
    use crate::policy::{Denial, DenyReason, RouteDenial};
    use crate::testkit::config_with;

    #[test]
    fn decision_log_block_defaults_and_validation() {
        let cfg = config_with(json!({})).unwrap();
        assert_eq!(cfg.decision_log, DecisionLogConfig { enabled: true, allowed_sample_rate: 1.0 });
        let cfg = config_with(json!({"decision_log": {"enabled": false, "allowed_sample_rate": 0.25}}));
        assert_eq!(
            cfg.unwrap().decision_log,
            DecisionLogConfig { enabled: false, allowed_sample_rate: 0.25 }
        );
        for bad in [json!(1.5), json!(-0.1)] {
            match config_with(json!({"decision_log": {"allowed_sample_rate": bad}})) {
                Err(ConfigError::Invalid { field, .. }) => {
                    assert_eq!(field, "decision_log.allowed_sample_rate")
                }
                other => panic!("{other:?}"),
            }
        }
        let err = config_with(json!({"decision_log": {"sample_rate": 0.5}})).unwrap_err();
        assert_eq!(err.field(), "decision_log.sample_rate");
        let err = config_with(json!({"decision_log": {"allowed_sample_rate": "all"}})).unwrap_err();
        assert_eq!(
            (err.field(), err.reason()),
            ("decision_log.allowed_sample_rate", r#"must be a number, not "all""#)
        );
    }

    fn verified(sub: &str) -> Verified {
        Verified {
            issuer: 0,
            subject: sub.into(),
            identity: sub.into(),
            kid: Some("k1".into()),
            key: [0; 32],
            alg: Alg::Es256,
            expires_at: 0,
            claims: serde_json::Map::new(),
        }
    }

    fn verdict(decision: Decision, shadow: bool) -> Verdict<'static> {
        Verdict {
            route: Some("api"),
            client_class: ClientClass::Machine,
            decision,
            shadow,
            rule: crate::policy::Rule::NoAllowList,
        }
    }

    fn deny(reason: RouteDenial) -> Decision {
        Decision::Deny(Denial::route(reason, None))
    }

    #[test]
    fn an_allowed_machine_request() {
        let started_ns = 1_700_000_000_123_000_000;
        let mut r = Record {
            started_ns: Some(started_ns),
            source: Some("10.0.0.1:5000".into()),
            ..Record::default()
        };
        r.note_verification(Some(Ok(&verified("robot"))), Some(42_000));
        r.note_verdict(&verdict(Decision::Allow, false));
        let d = r.finish(false).unwrap();
        assert_eq!(
            d,
            Decided { outcome: Outcome::Allowed, reason: "allow", status: None, shadow_reason: None }
        );
        assert_eq!(r.finish(false), None, "closed once");
        assert_eq!((r.issuer, r.identity.as_deref(), r.kid.as_deref()), (Some(0), Some("robot"), Some("k1")));
        assert_eq!(r.verify_ns, Some(42_000));

        let line = r.line(&LineContext {
            now_ms: 1_700_000_000_125,
            now_ns: started_ns + 2_500_000,
            request_id: Some("req-1"),
            issuer: Some("ci"),
            status: Some(200),
        });
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v,
            json!({
                "event": "nhi_decision", "time": "2023-11-14T22:13:20.123Z", "request_id": "req-1",
                "source": "10.0.0.1:5000", "issuer": "ci", "identity": "robot", "kid": "k1", "cert_identity": null,
                "dpop_jkt": null, "route": "api", "client_class": "machine", "decision": "allowed", "reason": "allow",
                "status": 200, "shadow_reason": null, "quota_policy": null, "quota_remaining": null,
                "latency_ms": 2.5, "anomaly": null
            })
        );
        assert!(!line.contains('\n'));
        // Anomalies are named, and a request that shows one is always logged.
        r.anomalies.insert(crate::behaviour::Kind::Burst);
        r.anomalies.insert(crate::behaviour::Kind::NewRoute);
        let v: Value = serde_json::from_str(&r.line(&LineContext::default())).unwrap();
        assert_eq!(v["anomaly"], "burst,new_route");
        let never = DecisionLogConfig { enabled: true, allowed_sample_rate: 0.0 };
        assert!(r.should_log(&never, 0));
    }

    #[test]
    fn a_rejected_token_has_no_identity_but_its_kid() {
        let mut r = Record::default();
        // What the verifier saw of the refused token comes with the refusal.
        let seen = crate::reason::SeenToken { kid: Some("k".repeat(300)), ours: Some(true) };
        let rejection = Rejection::new(Reason::Expired, "expired").for_issuer(0).seen(seen);
        r.note_verification(Some(Err(&rejection)), Some(1_000));
        r.note_verdict(&Verdict {
            route: None,
            client_class: ClientClass::Human,
            decision: Decision::Deny(Denial::auth(&Rejection::new(Reason::Expired, "expired"))),
            shadow: false,
            rule: crate::policy::Rule::Audience,
        });
        let d = r.finish(true).unwrap();
        assert_eq!((d.outcome, d.reason, d.status), (Outcome::Denied, "expired", Some(401)));
        assert_eq!(r.identity, None);
        assert_eq!(r.issuer, Some(0));
        assert_eq!(r.kid.as_deref().map(str::len), Some(MAX_KID_CHARS));
        let v: Value = serde_json::from_str(&r.line(&LineContext::default())).unwrap();
        assert_eq!(v["identity"], Value::Null);
        assert_eq!(v["status"], 401);
        assert!(!r.line(&LineContext::default()).contains("claimed"));
        assert!(!r.line(&LineContext::default()).contains("c2ln"), "no signature");
    }

    #[test]
    fn shadow_refusals_are_allowed_with_a_shadow_reason() {
        let mut r = Record::default();
        r.note_verification(Some(Ok(&verified("robot"))), Some(0));
        r.note_verdict(&verdict(deny(RouteDenial::NotAllowed), true));
        let d = r.finish(false).unwrap();
        assert_eq!(d.outcome, Outcome::Allowed);
        assert_eq!(d.shadow_reason, Some("not_allowed"));
        assert!(r.should_log(&DecisionLogConfig { enabled: true, allowed_sample_rate: 0.0 }, 0));
    }

    #[test]
    fn a_local_reply_after_an_allow_is_an_internal_error() {
        let mut r = Record::default();
        r.note_verdict(&verdict(Decision::Allow, false));
        let d = r.finish(true).unwrap();
        assert_eq!((d.outcome, d.reason, d.status), (Outcome::Denied, "internal_error", Some(500)));
        // A refusal before any verdict (a host call failed first) too.
        assert_eq!(Record::default().finish(true).unwrap().reason, "internal_error");
    }

    #[test]
    fn a_quota_refusal_replaces_the_verdict() {
        let mut r = Record::default();
        r.note_verdict(&verdict(Decision::Allow, false));
        let quota_denial = Decision::Deny(Denial {
            reason: DenyReason::Auth(Reason::QuotaExceeded),
            status: 429,
            detail: "quota exceeded".into(),
        });
        r.note_verdict(&verdict(quota_denial, false));
        let d = r.finish(true).unwrap();
        assert_eq!((d.reason, d.status), ("quota_exceeded", Some(429)));
    }

    #[test]
    fn sampling_logs_refusals_always_and_allowed_machine_requests_by_rate() {
        let allowed = |token: bool| {
            let mut r = Record { token, ..Record::default() };
            r.note_verdict(&verdict(Decision::Allow, false));
            r.finish(false);
            r
        };
        let none = DecisionLogConfig { enabled: true, allowed_sample_rate: 0.0 };
        let all = DecisionLogConfig::default();
        assert!(allowed(true).should_log(&all, 7));
        assert!(!allowed(true).should_log(&none, 7));
        assert!(!allowed(false).should_log(&all, 7), "people without a token are not logged");
        let mut denied = Record::default();
        denied.finish(true);
        assert!(denied.should_log(&none, 7));
        assert!(!denied.should_log(&DecisionLogConfig { enabled: false, ..all }, 7));
        assert!(!Record::default().should_log(&all, 7), "not decided: nothing to log");

        let half = DecisionLogConfig { enabled: true, allowed_sample_rate: 0.5 };
        let r = allowed(true);
        let logged =
            (0..10_000).filter(|i| r.should_log(&half, sample_key(Some(&format!("req-{i}")), 0))).count();
        assert!((4_700..5_300).contains(&logged), "{logged}");
        let key = sample_key(Some("same"), 1);
        assert_eq!(key, sample_key(Some("same"), 2), "the request id decides");
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_001), "2000-02-29T00:00:00.001Z");
        assert_eq!(rfc3339_ms(1_709_251_199_999), "2024-02-29T23:59:59.999Z");
        assert_eq!(rfc3339_ms(253_402_300_799_000), "9999-12-31T23:59:59.000Z");
    }
}
