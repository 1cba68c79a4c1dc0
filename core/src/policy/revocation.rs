//! The revocation feed: deny lists fetched from a URL and applied without a reload.
//!
//! ```json
//! { "jti": ["0b8c…"], "subjects": ["system:serviceaccount:old:*"],
//!   "service_account_uids": ["6f1a…"], "issued_before": { "payments/api": 1800000000 } }
//! ```
//!
//! Every member is optional. A token is refused when its `jti` is listed, its
//! `kubernetes.io.serviceaccount.uid` is listed, or its forwarded identity or `sub` has an
//! `issued_before` time its `iat` is not after (`401 token_revoked`: the credential
//! is no longer valid; a token without `iat` cannot show it is newer, and is
//! refused too); when its `sub` or forwarded identity matches `subjects` (exact, or
//! a prefix with a trailing `*`) it is refused `403 subject_denied`, like the static
//! `deny.subjects`. `issued_before` is the incident button: every token of an
//! identity minted before the moment of the leak stops working, and the workload's
//! next token works.
//!
//! The feed is fetched like a JWKS, by the same machine ([`crate::keys::fetch`],
//! [`Document::Revocations`](crate::keys::fetch::Document)): one fetch per Envoy
//! under a shared lease, every `refresh_seconds`, backoff with jitter, the last
//! good list kept when a fetch fails or a feed is refused. A feed over
//! [`MAX_FEED_BYTES`], with unknown members, or with an entry that is not what its
//! member needs, is refused whole: a typo must not silently empty the list. A list
//! older than `max_stale_seconds` is reported (metric and log) and, with
//! `on_stale: "deny"`, refuses machine requests `503 revocations_unavailable`
//! instead of deciding them with a list that may miss revocations; the default,
//! `keep`, keeps deciding with it.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use serde::Deserialize;

use crate::claims::matcher::Pattern;
use crate::claims::path::claim;
use crate::error::ConfigError;
use crate::json::{self, FromJson};
use crate::keys::fetch::{Loaded, LocalDocument};
use crate::keys::refresh::Schedule;
use crate::keys::source::RemoteJwks;
use crate::verify::identity::IdentityInfo;
use crate::verify::MAX_NUMERIC_DATE;

use super::reply::RouteDenial;

/// Largest feed accepted (a million-entry feed is a job for the issuer, not the gateway).
pub const MAX_FEED_BYTES: usize = 1024 * 1024;
/// Longest entry (a `jti`, subject, UID or identity).
pub const MAX_ENTRY_BYTES: usize = 1024;
pub const DEFAULT_REFRESH_SECONDS: u64 = 30;
pub const DEFAULT_TIMEOUT_MS: u64 = 2_000;
pub const DEFAULT_MAX_STALE_SECONDS: u64 = 3_600;
/// The claim path of the service account's UID (the `kubernetes` profile's).
const SERVICE_ACCOUNT_UID: &str = "kubernetes.io.serviceaccount.uid";

/// `revocation` in the plugin configuration.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawRevocation {
    /// The Envoy cluster serving the feed (on APISIX: `host:port`).
    pub cluster: String,
    /// `:authority` of the fetch.
    pub authority: String,
    /// Path of the feed, starting with `/`.
    pub path: String,
    /// How often the feed is fetched (1–3600, default 30): a revocation applies
    /// within this many seconds.
    #[serde(default)]
    pub refresh_seconds: Option<u64>,
    /// Fetch timeout (1–60000, default 2000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// A list older than this is stale (default 3600; at least `refresh_seconds`).
    #[serde(default)]
    pub max_stale_seconds: Option<u64>,
    /// What a stale (or never loaded) list means: `keep` deciding with the last
    /// list (default), or `deny` machine requests with `503 revocations_unavailable`.
    #[serde(default)]
    pub on_stale: Option<OnStale>,
}

impl FromJson for RawRevocation {
    fn from_json(value: serde_json::Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawRevocation {
            cluster: o.required("cluster"),
            authority: o.required("authority"),
            path: o.required("path"),
            refresh_seconds: o.optional("refresh_seconds"),
            timeout_ms: o.optional("timeout_ms"),
            max_stale_seconds: o.optional("max_stale_seconds"),
            on_stale: o.optional("on_stale"),
        })
    }
}

/// `revocation.on_stale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum OnStale {
    Keep,
    Deny,
}

impl FromJson for OnStale {
    fn from_json(value: serde_json::Value, at: &str) -> Result<Self, ConfigError> {
        json::one_of(value, at, &[("keep", OnStale::Keep), ("deny", OnStale::Deny)])
    }
}

/// The validated `revocation` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationFeed {
    /// Where and how often (discovery never applies).
    pub remote: RemoteJwks,
    pub on_stale: OnStale,
}

impl RevocationFeed {
    /// How long a request waits for the first list.
    pub fn timeout_ms(&self) -> u64 {
        self.remote.timeout_ms
    }
}

pub fn compile(raw: RawRevocation, at: &str) -> Result<RevocationFeed, ConfigError> {
    let field = |name: &str| format!("{at}.{name}");
    let invalid = |name: &str, why: String| ConfigError::Invalid { field: field(name), reason: why };
    if raw.cluster.is_empty() || raw.cluster.chars().any(char::is_whitespace) {
        return Err(invalid("cluster", "must name the cluster serving the feed".into()));
    }
    if raw.authority.is_empty()
        || raw.authority.chars().any(|c| c.is_whitespace() || c == '/' || c.is_control())
    {
        return Err(invalid("authority", "must be a host[:port]".into()));
    }
    if !raw.path.starts_with('/') || raw.path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("path", "must start with '/' and contain no spaces".into()));
    }
    let refresh_seconds = raw.refresh_seconds.unwrap_or(DEFAULT_REFRESH_SECONDS);
    if !(1..=3_600).contains(&refresh_seconds) {
        return Err(invalid("refresh_seconds", "must be between 1 and 3600".into()));
    }
    let timeout_ms = raw.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if !(1..=60_000).contains(&timeout_ms) {
        return Err(invalid("timeout_ms", "must be between 1 and 60000".into()));
    }
    let max_stale_seconds = raw.max_stale_seconds.unwrap_or(DEFAULT_MAX_STALE_SECONDS.max(refresh_seconds));
    if max_stale_seconds < refresh_seconds || max_stale_seconds > 7 * 86_400 {
        return Err(invalid(
            "max_stale_seconds",
            "must be at least refresh_seconds and at most 604800 (7 days)".into(),
        ));
    }
    Ok(RevocationFeed {
        remote: RemoteJwks {
            cluster: raw.cluster,
            authority: raw.authority,
            path: raw.path,
            refresh_seconds,
            timeout_ms,
            // Nothing asks for an early refetch of the feed.
            min_refetch_seconds: refresh_seconds,
            max_stale_seconds,
            discovery: None,
        },
        on_stale: raw.on_stale.unwrap_or(OnStale::Keep),
    })
}

/// The feed document, as served.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeed {
    #[serde(default)]
    jti: Vec<String>,
    #[serde(default)]
    subjects: Vec<String>,
    #[serde(default)]
    service_account_uids: Vec<String>,
    #[serde(default)]
    issued_before: HashMap<String, i64>,
}

/// A parsed feed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationList {
    jti: HashSet<String>,
    subjects: HashSet<String>,
    subject_prefixes: Vec<String>,
    service_account_uids: HashSet<String>,
    /// Forwarded identity → tokens issued before this (Unix seconds) are revoked.
    issued_before: HashMap<String, i64>,
}

/// How many entries of each kind a list holds (the `nhi_revocation_entries` gauges).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub jti: usize,
    pub subjects: usize,
    pub service_account_uids: usize,
    pub issued_before: usize,
}

impl Counts {
    /// `(kind label, count)` for each kind.
    pub fn by_kind(&self) -> [(&'static str, usize); 4] {
        [
            ("jti", self.jti),
            ("subjects", self.subjects),
            ("service_account_uids", self.service_account_uids),
            ("issued_before", self.issued_before),
        ]
    }
}

/// Why a feed was refused (the last good list stays).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedError(pub String);

impl std::fmt::Display for FeedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl RevocationList {
    /// Parses a feed (see the module docs); refuses it whole on the first problem.
    pub fn parse(body: &[u8]) -> Result<RevocationList, FeedError> {
        if body.len() > MAX_FEED_BYTES {
            return Err(FeedError(format!(
                "the feed is {} bytes, over the {MAX_FEED_BYTES}-byte limit",
                body.len()
            )));
        }
        // serde reads a struct from a JSON array too (member by position): `[]` would
        // be an empty list, every revocation lifted. A feed is an object.
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(FeedError("not a revocation feed: not a JSON object".into()));
        }
        let raw: RawFeed = serde_json::from_slice(body).map_err(|e| {
            // serde's message names members and positions, never the values.
            FeedError(format!("not a revocation feed: {e}"))
        })?;
        let entry = |member: &str, i: usize, value: &str| -> Result<(), FeedError> {
            if value.is_empty() || value.len() > MAX_ENTRY_BYTES || value.chars().any(char::is_control) {
                Err(FeedError(format!(
                    "{member}[{i}] must be 1-{MAX_ENTRY_BYTES} bytes without control characters"
                )))
            } else {
                Ok(())
            }
        };
        let mut list = RevocationList::default();
        for (i, jti) in raw.jti.into_iter().enumerate() {
            entry("jti", i, &jti)?;
            list.jti.insert(jti);
        }
        for (i, subject) in raw.subjects.into_iter().enumerate() {
            entry("subjects", i, &subject)?;
            if subject == "*" {
                return Err(FeedError(format!(
                    "subjects[{i}] is \"*\" alone, which would deny every identity"
                )));
            }
            match Pattern::parse(&subject).map_err(|why| FeedError(format!("subjects[{i}] {why}")))? {
                Pattern::Exact(s) => {
                    list.subjects.insert(s);
                }
                Pattern::Prefix(p) => list.subject_prefixes.push(p),
            }
        }
        for (i, uid) in raw.service_account_uids.into_iter().enumerate() {
            entry("service_account_uids", i, &uid)?;
            list.service_account_uids.insert(uid);
        }
        for (identity, at) in raw.issued_before {
            entry("issued_before", 0, &identity)
                .map_err(|_| FeedError("an issued_before identity must be 1-1024 bytes of text".into()))?;
            if !(0..=MAX_NUMERIC_DATE).contains(&at) {
                return Err(FeedError("issued_before times must be Unix seconds".into()));
            }
            list.issued_before.insert(identity, at);
        }
        Ok(list)
    }

    pub fn counts(&self) -> Counts {
        Counts {
            jti: self.jti.len(),
            subjects: self.subjects.len() + self.subject_prefixes.len(),
            service_account_uids: self.service_account_uids.len(),
            issued_before: self.issued_before.len(),
        }
    }

    /// Whether the feed revokes `who` (see the module docs for which denial).
    pub fn check(&self, who: &IdentityInfo<'_>) -> Result<(), RouteDenial> {
        if who.jti().is_some_and(|jti| self.jti.contains(jti)) {
            return Err(RouteDenial::TokenRevoked);
        }
        let uid = claim(who.claims, SERVICE_ACCOUNT_UID).and_then(serde_json::Value::as_str);
        if uid.is_some_and(|uid| self.service_account_uids.contains(uid)) {
            return Err(RouteDenial::TokenRevoked);
        }
        // Keyed by the forwarded identity or by `sub`, as `subjects` is: for a
        // Kubernetes token that is `payments/api` or `system:serviceaccount:payments:api`,
        // and an operator writing either in an incident must not revoke nothing.
        let before = [who.identity, who.subject].into_iter().filter_map(|k| self.issued_before.get(k)).max();
        if let Some(before) = before {
            let iat = who.claims.get("iat").and_then(serde_json::Value::as_f64);
            // Truncated like every NumericDate; no iat cannot show it is newer.
            if iat.is_none_or(|iat| (iat as i64) < *before) {
                return Err(RouteDenial::TokenRevoked);
            }
        }
        let denied = |s: &str| {
            self.subjects.contains(s) || self.subject_prefixes.iter().any(|p| s.starts_with(p.as_str()))
        };
        if denied(who.subject) || denied(who.identity) {
            return Err(RouteDenial::SubjectDenied);
        }
        Ok(())
    }
}

/// This VM's copy of the feed.
#[derive(Debug, Clone)]
pub struct LocalRevocations {
    schedule: Schedule,
    fetched_at_ms: Option<u64>,
    seen_cas: Option<u32>,
    list: Option<Rc<RevocationList>>,
}

/// What the copy is worth at one instant.
#[derive(Debug, Clone)]
pub enum FeedState {
    /// Fetched within `max_stale_seconds`.
    Current(Rc<RevocationList>),
    /// Older than `max_stale_seconds`: `on_stale` decides.
    Stale(Rc<RevocationList>),
    /// Never loaded.
    Missing,
}

impl LocalRevocations {
    pub fn new(feed: &RevocationFeed) -> Self {
        LocalRevocations { schedule: feed.remote.schedule(), fetched_at_ms: None, seen_cas: None, list: None }
    }

    pub fn state(&self, now_ms: u64) -> FeedState {
        match (&self.list, self.fetched_at_ms) {
            (Some(list), Some(at)) if self.schedule.usable(now_ms, at) => FeedState::Current(Rc::clone(list)),
            (Some(list), _) => FeedState::Stale(Rc::clone(list)),
            (None, _) => FeedState::Missing,
        }
    }

    pub fn counts(&self) -> Option<Counts> {
        self.list.as_ref().map(|l| l.counts())
    }

    /// When the list in use was fetched (by whichever worker).
    pub fn fetched_at_ms(&self) -> Option<u64> {
        self.fetched_at_ms
    }
}

impl LocalDocument for LocalRevocations {
    fn schedule(&self) -> Option<Schedule> {
        Some(self.schedule)
    }

    fn fetched_at_ms(&self) -> Option<u64> {
        self.fetched_at_ms
    }

    fn seen_cas(&self) -> Option<u32> {
        self.seen_cas
    }

    fn set_seen_cas(&mut self, cas: Option<u32>) {
        self.seen_cas = cas;
    }

    fn usable(&self, now_ms: u64) -> bool {
        matches!(self.state(now_ms), FeedState::Current(_))
    }

    fn load(&mut self, body: &[u8], fetched_at_ms: u64) -> Result<Loaded, String> {
        let list = RevocationList::parse(body).map_err(|e| e.to_string())?;
        let c = list.counts();
        self.list = Some(Rc::new(list));
        self.fetched_at_ms = Some(fetched_at_ms);
        Ok(Loaded {
            summary: format!(
                "loaded {} jti, {} subjects, {} service-account UIDs, {} issued_before",
                c.jti, c.subjects, c.service_account_uids, c.issued_before
            ),
            warnings: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Map, Value};

    use super::*;

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn who<'a>(identity: &'a str, subject: &'a str, c: &'a Map<String, Value>) -> IdentityInfo<'a> {
        IdentityInfo {
            identity,
            issuer: "k8s",
            subject,
            claims: c,
            jkt: None,
            via: crate::verify::identity::Via::Token,
        }
    }

    fn list(feed: Value) -> RevocationList {
        RevocationList::parse(feed.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn each_member_revokes_what_it_names() {
        let feed = list(json!({
            "jti": ["leaked-1"],
            "subjects": ["system:serviceaccount:old:*", "partner-9"],
            "service_account_uids": ["uid-gone"],
            "issued_before": {"payments/api": 1_800_000_000}
        }));
        assert_eq!(feed.counts(), Counts { jti: 1, subjects: 2, service_account_uids: 1, issued_before: 1 });
        let sub = "system:serviceaccount:payments:api";
        let fresh = claims(json!({"jti": "ok", "iat": 1_800_000_001,
                                  "kubernetes.io": {"serviceaccount": {"uid": "uid-live"}}}));
        assert_eq!(feed.check(&who("payments/api", sub, &fresh)), Ok(()), "minted after the button");
        let leaked = claims(json!({"jti": "leaked-1", "iat": 1_800_000_001}));
        assert_eq!(feed.check(&who("payments/api", sub, &leaked)), Err(RouteDenial::TokenRevoked));
        let old = claims(json!({"iat": 1_799_999_999}));
        assert_eq!(feed.check(&who("payments/api", sub, &old)), Err(RouteDenial::TokenRevoked));
        let exactly = claims(json!({"iat": 1_800_000_000}));
        assert_eq!(
            feed.check(&who("payments/api", sub, &exactly)),
            Ok(()),
            "issued at the moment: not before"
        );
        let no_iat = claims(json!({}));
        assert_eq!(feed.check(&who("payments/api", sub, &no_iat)), Err(RouteDenial::TokenRevoked));
        assert_eq!(
            feed.check(&who("payments/worker", "system:serviceaccount:payments:worker", &no_iat)),
            Ok(())
        );
        let gone = claims(json!({"kubernetes.io": {"serviceaccount": {"uid": "uid-gone"}}}));
        assert_eq!(
            feed.check(&who("ci/x", "system:serviceaccount:ci:x", &gone)),
            Err(RouteDenial::TokenRevoked)
        );
        let any = claims(json!({}));
        assert_eq!(
            feed.check(&who("old/x", "system:serviceaccount:old:x", &any)),
            Err(RouteDenial::SubjectDenied)
        );
        assert_eq!(feed.check(&who("partner-9", "partner-9", &any)), Err(RouteDenial::SubjectDenied));
        assert_eq!(feed.check(&who("partner-90", "partner-90", &any)), Ok(()));
        assert_eq!(list(json!({})), RevocationList::default(), "every member is optional");
    }

    #[test]
    fn issued_before_names_the_identity_or_the_subject() {
        let sub = "system:serviceaccount:payments:api";
        let old = claims(json!({"iat": 1_799_999_999}));
        let new = claims(json!({"iat": 1_900_000_001}));
        let by_sub = list(json!({"issued_before": {sub: 1_800_000_000}}));
        assert_eq!(by_sub.check(&who("payments/api", sub, &old)), Err(RouteDenial::TokenRevoked));
        assert_eq!(by_sub.check(&who("payments/api", sub, &new)), Ok(()));
        // Both written: the later moment wins, whichever key holds it.
        let both = list(json!({"issued_before": {sub: 1_800_000_000, "payments/api": 1_900_000_000}}));
        let between = claims(json!({"iat": 1_850_000_000}));
        assert_eq!(both.check(&who("payments/api", sub, &between)), Err(RouteDenial::TokenRevoked));
        assert_eq!(both.check(&who("payments/api", sub, &new)), Ok(()));
        assert_eq!(
            both.check(&who("payments/worker", "system:serviceaccount:payments:worker", &old)),
            Ok(())
        );
    }

    #[test]
    fn a_bad_feed_is_refused_whole() {
        for (what, body) in [
            ("not JSON", b"<html>".to_vec()),
            ("a typo", json!({"jtis": ["x"]}).to_string().into_bytes()),
            ("a number for a jti", json!({"jti": [7]}).to_string().into_bytes()),
            ("an empty jti", json!({"jti": [""]}).to_string().into_bytes()),
            ("a control character", json!({"subjects": ["a\nb"]}).to_string().into_bytes()),
            ("everyone", json!({"subjects": ["*"]}).to_string().into_bytes()),
            ("a star inside", json!({"subjects": ["a*b"]}).to_string().into_bytes()),
            ("a date as text", json!({"issued_before": {"a": "yesterday"}}).to_string().into_bytes()),
            ("a negative date", json!({"issued_before": {"a": -1}}).to_string().into_bytes()),
            ("an array", json!(["x"]).to_string().into_bytes()),
        ] {
            assert!(RevocationList::parse(&body).is_err(), "{what}");
        }
        let huge = format!("{{\"jti\":[\"{}\"]}}", "x".repeat(MAX_FEED_BYTES));
        let err = RevocationList::parse(huge.as_bytes()).unwrap_err();
        assert!(err.0.contains("over the 1048576-byte limit"), "{err}");
    }

    #[test]
    fn the_local_copy_keeps_its_last_good_list_and_goes_stale() {
        let feed = compile(
            RawRevocation::from_json(
                json!({"cluster": "c", "authority": "a", "path": "/r.json",
                       "refresh_seconds": 10, "max_stale_seconds": 60}),
                "revocation",
            )
            .unwrap(),
            "revocation",
        )
        .unwrap();
        let mut local = LocalRevocations::new(&feed);
        assert!(matches!(local.state(0), FeedState::Missing));
        local.load(json!({"jti": ["a"]}).to_string().as_bytes(), 1_000).unwrap();
        assert!(local.load(b"{\"jti\": 5}", 2_000).is_err());
        let FeedState::Current(list) = local.state(61_000) else { panic!("current") };
        assert_eq!(list.counts().jti, 1, "the refused feed left the list as it was");
        assert_eq!(local.fetched_at_ms(), Some(1_000));
        assert!(matches!(local.state(61_001), FeedState::Stale(_)));
        assert!(LocalDocument::usable(&local, 61_000) && !LocalDocument::usable(&local, 61_001));
    }

    #[test]
    fn the_block_is_validated_naming_the_field() {
        let raw = |v: Value| RawRevocation::from_json(v, "revocation").unwrap();
        let field = |v: Value| match compile(raw(v), "revocation") {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let base = json!({"cluster": "c", "authority": "a", "path": "/r.json"});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            b
        };
        assert_eq!(field(with("cluster", json!(""))), "revocation.cluster");
        assert_eq!(field(with("authority", json!("a b"))), "revocation.authority");
        assert_eq!(field(with("path", json!("r.json"))), "revocation.path");
        assert_eq!(field(with("refresh_seconds", json!(0))), "revocation.refresh_seconds");
        assert_eq!(field(with("timeout_ms", json!(0))), "revocation.timeout_ms");
        assert_eq!(field(with("max_stale_seconds", json!(10))), "revocation.max_stale_seconds");
        let ok = compile(raw(base), "revocation").unwrap();
        assert_eq!(
            (ok.remote.refresh_seconds, ok.remote.max_stale_seconds, ok.on_stale),
            (30, 3_600, OnStale::Keep)
        );
    }

    #[test]
    fn the_block_is_read_naming_the_member_at_fault() {
        let base = json!({"cluster": "c", "authority": "a", "path": "/r.json"});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            b
        };
        let without = |k: &str| {
            let mut b = base.clone();
            b.as_object_mut().unwrap().remove(k);
            b
        };
        for (v, field, reason) in [
            (without("cluster"), "revocation.cluster", "is required"),
            (without("path"), "revocation.path", "is required"),
            (with("authority", json!(null)), "revocation.authority", "must be a string, not null"),
            (with("on_stale", json!("drop")), "revocation.on_stale", r#"must be one of "keep", "deny", not "drop""#),
            (with("timeout_ms", json!("1s")), "revocation.timeout_ms", r#"must be a whole number, 0 or more, not "1s""#),
            (
                with("refresh", json!(5)),
                "revocation.refresh",
                "is not a known field (known: cluster, authority, path, refresh_seconds, timeout_ms, max_stale_seconds, on_stale)",
            ),
        ] {
            let err = RawRevocation::from_json(v.clone(), "revocation").unwrap_err();
            assert_eq!((err.field(), err.reason()), (field, reason), "{v}");
        }
        for v in [with("on_stale", json!("deny")), with("on_stale", json!(null)), base.clone()] {
            let ours = RawRevocation::from_json(v.clone(), "revocation").unwrap();
            let serdes: RawRevocation = serde_json::from_value(v).unwrap();
            assert_eq!(format!("{ours:?}"), format!("{serdes:?}"));
        }
        let deny = RawRevocation::from_json(with("on_stale", json!("deny")), "revocation").unwrap();
        assert_eq!(compile(deny, "revocation").unwrap().on_stale, OnStale::Deny);
    }
}
