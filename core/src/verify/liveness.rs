//! TokenReview liveness: whether the Kubernetes API server still authenticates a
//! token that verified.
//!
//! A projected service-account token stays cryptographically valid until `exp`
//! after its pod, service account or node is deleted — and API servers extend pod
//! tokens to a year for old clients. The API server knows at once: a `TokenReview`
//! (`authentication.k8s.io/v1`) of a token bound to a deleted object answers
//! `authenticated: false`. So after the signature and claims pass, an issuer with
//! `profile.liveness` asks, and a token the API server no longer authenticates is
//! refused `401 workload_gone`.
//!
//! Asking on every request would make the API server the gateway's bottleneck. The
//! answer — either way — is kept for `cache_seconds` in a shared table keyed by the
//! token's digest (this module), and with the worker's own verified-token entry
//! (`verify::cache`), so a token whose answer is fresh costs no host call at all.
//! Each table entry also carries a **lease**: the one request (of the one worker)
//! that takes it makes the review; requests for the same token on any worker wait
//! for its answer (bounded by `timeout_ms`) instead of each calling. One review per
//! token per `cache_seconds` for the whole Envoy.
//!
//! An API server that cannot answer (refused, reset, timed out, not 2xx) leaves the
//! last answer as it was and cools the token down for a second (no review storm);
//! meanwhile `on_unavailable` decides: `deny` refuses `503 liveness_unavailable`,
//! `allow_recent` lets the token through while its last *positive* answer is
//! younger than `max_stale_seconds`. A token never reviewed, or last reviewed as
//! gone, never passes on an unanswered review.
//!
//! The table is `BUCKETS` shared-data keys of at most `WAYS` entries, created when
//! the plugin is configured (like the quota table: a key is never created by a
//! request, so a creation race cannot drop a lease). A full bucket evicts its
//! oldest answer without a lease in flight. The token itself never enters shared
//! data: entries are keyed by the first 16 bytes of its SHA-256.

use serde::Deserialize;

use crate::host::store::{Store, StoreError};
use crate::host::HttpCall;
use crate::keys::fetch::Response;
use crate::profile::kubernetes::{Liveness, OnUnavailable};

/// Buckets of the shared table (one shared-data key each).
pub const BUCKETS: usize = 512;
/// Entries per bucket: the table holds `BUCKETS × WAYS` tokens' answers.
pub const WAYS: usize = 8;
/// Largest TokenReview answer read (a real one is well under 2 KiB).
pub const MAX_REVIEW_BYTES: usize = 64 * 1024;
/// A token whose review failed is not reviewed again for this long (nor more
/// than `cache_seconds`): an API server that is down is not asked once per request.
pub const RETRY_AFTER_FAILURE_MS: u64 = 1_000;
/// A lease is held this long beyond the review's timeout: a worker that died while
/// reviewing cannot block the token longer.
const LEASE_MARGIN_MS: u64 = 500;
/// Lost compare-and-swap races before the table is treated as unavailable.
const MAX_ATTEMPTS: usize = 8;
const KEY_PREFIX: &str = "nhi-guard.lv.";
const VERSION: u8 = 1;
const ENTRY_BYTES: usize = 16 + 8 + 1 + 8 + 8 + 8;
/// The `apiVersion` of the reviews sent and accepted.
pub const API_VERSION: &str = "authentication.k8s.io/v1";

/// The table's key of a token: the first 16 bytes of its SHA-256.
pub type ReviewKey = [u8; 16];

/// The key of a token whose SHA-256 is `digest`.
pub fn review_key(digest: &[u8; 32]) -> ReviewKey {
    let mut key = [0u8; 16];
    key.copy_from_slice(digest.get(..16).unwrap_or(&[0; 16]));
    key
}

/// The API server's last answer about one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Review {
    /// When it answered.
    pub answered_at_ms: u64,
    /// Whether it authenticated the token then.
    pub alive: bool,
    /// When it last authenticated the token (`allow_recent`); `None` once it said no.
    pub alive_at_ms: Option<u64>,
}

impl Review {
    /// The answer, if it is younger than `cache_ms`.
    pub fn fresh(&self, cache_ms: u64, now_ms: u64) -> Option<bool> {
        (now_ms.saturating_sub(self.answered_at_ms) < cache_ms).then_some(self.alive)
    }
}

/// What the liveness stage does with a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The API server authenticates it (or `allow_recent` lets it through).
    Alive,
    /// `401 workload_gone`.
    Gone,
    /// `503 liveness_unavailable`.
    Unavailable,
    /// This request holds the lease: it makes the review.
    Review,
    /// Another request holds the lease: wait for its answer (where the host can
    /// wake a waiting request), else [`fallback`].
    Wait,
}

/// What an unanswerable review means for a token with `last` as its last answer.
pub fn fallback(liveness: &Liveness, last: Option<Review>, now_ms: u64) -> Verdict {
    match liveness.on_unavailable {
        OnUnavailable::Deny => Verdict::Unavailable,
        OnUnavailable::AllowRecent => match last.and_then(|r| r.alive_at_ms) {
            Some(at) if now_ms.saturating_sub(at) < liveness.max_stale_ms => Verdict::Alive,
            _ => Verdict::Unavailable,
        },
    }
}

/// A fresh answer, as a verdict.
pub fn answered(alive: bool) -> Verdict {
    if alive {
        Verdict::Alive
    } else {
        Verdict::Gone
    }
}

/// One entry of a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    key: ReviewKey,
    review: Option<Review>,
    /// Who reviews now (0: nobody: free, or cooling down after a failure until `until_ms`).
    holder: u64,
    until_ms: u64,
}

impl Entry {
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.key);
        let (answered, flags, alive_at) = match self.review {
            None => (0, 0u8, 0),
            Some(r) => (
                r.answered_at_ms,
                1 | if r.alive { 2 } else { 0 } | if r.alive_at_ms.is_some() { 4 } else { 0 },
                r.alive_at_ms.unwrap_or(0),
            ),
        };
        out.extend_from_slice(&answered.to_be_bytes());
        out.push(flags);
        out.extend_from_slice(&alive_at.to_be_bytes());
        out.extend_from_slice(&self.holder.to_be_bytes());
        out.extend_from_slice(&self.until_ms.to_be_bytes());
    }

    fn decode(bytes: &[u8]) -> Option<Entry> {
        let (key, rest) = bytes.split_first_chunk::<16>()?;
        let (answered, rest) = rest.split_first_chunk::<8>()?;
        let (&flags, rest) = rest.split_first()?;
        let (alive_at, rest) = rest.split_first_chunk::<8>()?;
        let (holder, rest) = rest.split_first_chunk::<8>()?;
        let (until, _) = rest.split_first_chunk::<8>()?;
        let review = (flags & 1 != 0).then(|| Review {
            answered_at_ms: u64::from_be_bytes(*answered),
            alive: flags & 2 != 0,
            alive_at_ms: (flags & 4 != 0).then(|| u64::from_be_bytes(*alive_at)),
        });
        Some(Entry {
            key: *key,
            review,
            holder: u64::from_be_bytes(*holder),
            until_ms: u64::from_be_bytes(*until),
        })
    }

    fn leased(&self, now_ms: u64) -> bool {
        self.holder != 0 && now_ms < self.until_ms
    }

    fn cooling(&self, now_ms: u64) -> bool {
        self.holder == 0 && now_ms < self.until_ms
    }
}

fn decode(bytes: &[u8]) -> Vec<Entry> {
    match bytes.split_first() {
        Some((&VERSION, rest)) => {
            rest.chunks_exact(ENTRY_BYTES).filter_map(Entry::decode).take(WAYS).collect()
        }
        _ => Vec::new(),
    }
}

fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + entries.len() * ENTRY_BYTES);
    out.push(VERSION);
    for entry in entries {
        entry.encode_into(&mut out);
    }
    out
}

fn bucket_key(key: &ReviewKey) -> String {
    let mut head = [0u8; 8];
    head.copy_from_slice(key.get(..8).unwrap_or(&[0; 8]));
    format!("{KEY_PREFIX}{}", u64::from_be_bytes(head) % BUCKETS as u64)
}

/// The entry a full bucket gives up: the oldest answer nobody is reviewing.
fn oldest_unleased(entries: &[Entry], now_ms: u64) -> Option<usize> {
    entries
        .iter()
        .enumerate()
        .filter(|(_, e)| !e.leased(now_ms))
        .min_by_key(|(_, e)| e.review.map_or(0, |r| r.answered_at_ms))
        .map(|(i, _)| i)
}

/// Creates every bucket that does not exist yet (when the plugin is configured, so
/// that no request ever creates one). Returns how many it created.
pub fn prepare(store: &dyn Store) -> Result<usize, StoreError> {
    let mut created = 0;
    for bucket in 0..BUCKETS {
        let key = format!("{KEY_PREFIX}{bucket}");
        if let (None, None) = store.get(&key)? {
            store.set(&key, &[VERSION], None)?;
            created += 1;
        }
    }
    Ok(created)
}

/// The last answer the table holds for `key`.
pub fn lookup(store: &dyn Store, key: &ReviewKey) -> Result<Option<Review>, StoreError> {
    let (bytes, _) = store.get(&bucket_key(key))?;
    Ok(decode(bytes.as_deref().unwrap_or_default())
        .into_iter()
        .find(|e| e.key == *key)
        .and_then(|e| e.review))
}

/// Whether a review of `key` is in progress (its lease held and not expired).
pub fn in_progress(store: &dyn Store, key: &ReviewKey, now_ms: u64) -> Result<bool, StoreError> {
    let (bytes, _) = store.get(&bucket_key(key))?;
    Ok(decode(bytes.as_deref().unwrap_or_default()).iter().any(|e| e.key == *key && e.leased(now_ms)))
}

/// What the table says about `key` now: a fresh answer, someone reviewing, a cool
/// down — or, when `may_review`, the lease for this caller (`me`). The last answer
/// comes along for [`fallback`].
pub fn consult(
    store: &dyn Store,
    key: &ReviewKey,
    liveness: &Liveness,
    me: u64,
    now_ms: u64,
    may_review: bool,
) -> Result<(Verdict, Option<Review>), StoreError> {
    let bucket = bucket_key(key);
    for _ in 0..MAX_ATTEMPTS {
        let (bytes, cas) = store.get(&bucket)?;
        let mut entries = decode(bytes.as_deref().unwrap_or_default());
        let found = entries.iter().position(|e| e.key == *key);
        let current = found.and_then(|i| entries.get(i)).copied();
        let last = current.and_then(|e| e.review);
        if let Some(alive) = last.and_then(|r| r.fresh(liveness.cache_ms, now_ms)) {
            return Ok((answered(alive), last));
        }
        if current.is_some_and(|e| e.leased(now_ms)) {
            return Ok((Verdict::Wait, last));
        }
        if current.is_some_and(|e| e.cooling(now_ms)) || !may_review {
            return Ok((fallback(liveness, last, now_ms), last));
        }
        let until_ms = now_ms.saturating_add(liveness.timeout_ms).saturating_add(LEASE_MARGIN_MS);
        let mine = Entry { key: *key, review: last, holder: me, until_ms };
        match found {
            Some(i) => {
                if let Some(slot) = entries.get_mut(i) {
                    *slot = mine;
                }
            }
            None if entries.len() < WAYS => entries.push(mine),
            None => {
                // Evict the oldest answer nobody is reviewing; with every entry under
                // review (WAYS reviews in flight in one bucket), review nothing.
                match oldest_unleased(&entries, now_ms).and_then(|i| entries.get_mut(i)) {
                    Some(slot) => *slot = mine,
                    None => return Ok((fallback(liveness, last, now_ms), last)),
                }
            }
        }
        match store.set(&bucket, &encode(&entries), cas) {
            Ok(()) => return Ok((Verdict::Review, last)),
            Err(StoreError::CasMismatch) => continue,
            Err(err) => return Err(err),
        }
    }
    Err(StoreError::Unavailable)
}

/// The review of `key` ended: `Some(alive)` as the API server answered, `None` if it
/// could not answer. Records it, frees the lease (a failure cools the token down),
/// and returns the token's last answer.
pub fn record(
    store: &dyn Store,
    key: &ReviewKey,
    outcome: Option<bool>,
    liveness: &Liveness,
    now_ms: u64,
) -> Result<Option<Review>, StoreError> {
    let bucket = bucket_key(key);
    for _ in 0..MAX_ATTEMPTS {
        let (bytes, cas) = store.get(&bucket)?;
        let mut entries = decode(bytes.as_deref().unwrap_or_default());
        let found = entries.iter().position(|e| e.key == *key);
        let last = found.and_then(|i| entries.get(i)).and_then(|e| e.review);
        let (review, until_ms) = match outcome {
            Some(alive) => (
                Some(Review {
                    answered_at_ms: now_ms,
                    alive,
                    alive_at_ms: if alive { Some(now_ms) } else { None },
                }),
                0,
            ),
            None => (last, now_ms.saturating_add(RETRY_AFTER_FAILURE_MS.min(liveness.cache_ms))),
        };
        let updated = Entry { key: *key, review, holder: 0, until_ms };
        // Evicted while under review (a full bucket): keep the answer anyway, in
        // place of the oldest answer nobody is reviewing.
        let slot = match found {
            Some(i) => Some(i),
            None if entries.len() < WAYS => {
                entries.push(updated);
                None
            }
            None => match oldest_unleased(&entries, now_ms) {
                Some(i) => Some(i),
                None => return Ok(review),
            },
        };
        if let Some(slot) = slot.and_then(|i| entries.get_mut(i)) {
            *slot = updated;
        }
        match store.set(&bucket, &encode(&entries), cas) {
            Ok(()) => return Ok(review),
            Err(StoreError::CasMismatch) => continue,
            Err(err) => return Err(err),
        }
    }
    Err(StoreError::Unavailable)
}

/// The request reviewing `key` went away before the answer: free the lease (if it is
/// still `me`'s) so that the next request may review at once.
pub fn release(store: &dyn Store, key: &ReviewKey, me: u64) -> Result<(), StoreError> {
    let bucket = bucket_key(key);
    for _ in 0..MAX_ATTEMPTS {
        let (bytes, cas) = store.get(&bucket)?;
        let mut entries = decode(bytes.as_deref().unwrap_or_default());
        let Some(entry) = entries.iter_mut().find(|e| e.key == *key && e.holder == me) else { return Ok(()) };
        entry.holder = 0;
        entry.until_ms = 0;
        match store.set(&bucket, &encode(&entries), cas) {
            Ok(()) => return Ok(()),
            Err(StoreError::CasMismatch) => continue,
            Err(err) => return Err(err),
        }
    }
    Err(StoreError::Unavailable)
}

/// The review callout for `token`, whose audiences the issuer accepts.
pub fn callout(liveness: &Liveness, token: &str, audiences: &[String]) -> HttpCall {
    let body = serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": audiences},
    });
    HttpCall {
        cluster: liveness.cluster.clone(),
        headers: vec![
            (":method".into(), "POST".into()),
            (":path".into(), liveness.path.clone()),
            (":authority".into(), liveness.authority.clone()),
            (":scheme".into(), "https".into()),
            ("content-type".into(), "application/json".into()),
            ("accept".into(), "application/json".into()),
            ("user-agent".into(), "nhi-guard".into()),
        ],
        body: serde_json::to_vec(&body).unwrap_or_default(),
        timeout_ms: liveness.timeout_ms,
    }
}

#[derive(Deserialize)]
struct TokenReview {
    #[serde(rename = "apiVersion", default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    status: Option<ReviewStatus>,
}

#[derive(Deserialize)]
struct ReviewStatus {
    #[serde(default)]
    authenticated: Option<bool>,
    #[serde(default)]
    user: Option<ReviewUser>,
    #[serde(default)]
    audiences: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct ReviewUser {
    #[serde(default)]
    username: Option<String>,
}

/// What the API server's answer says: `Ok(true)` authenticated as `subject` for one
/// of `audiences`; `Ok(false)` not authenticated (or as someone else, or for another
/// audience); `Err(why)` no usable answer (the review is unavailable).
pub fn read_answer(response: &Response, subject: &str, audiences: &[String]) -> Result<bool, String> {
    let body = match (&response.status, &response.body) {
        (None, _) => return Err("no answer (connection refused, reset or timed out)".into()),
        (Some(200 | 201), Ok(body)) => body,
        (Some(200 | 201), Err(bytes)) => {
            return Err(format!("the answer is {bytes} bytes, over the {MAX_REVIEW_BYTES}-byte limit"))
        }
        (Some(status), _) => return Err(format!("the API server answered HTTP {status}")),
    };
    if body.len() > MAX_REVIEW_BYTES {
        return Err(format!("the answer is {} bytes, over the {MAX_REVIEW_BYTES}-byte limit", body.len()));
    }
    // Parsed whole first: a member the TokenReview type ignores is still checked to be
    // JSON (UTF-8, valid escapes). An answer that is not JSON is no answer.
    let _: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| "the answer is not JSON".to_owned())?;
    // Read from the bytes, not from that value: a JSON object keeps only the last of
    // duplicate members, the typed read refuses a duplicate `status` or `authenticated`.
    let review: TokenReview =
        serde_json::from_slice(body).map_err(|_| "the answer is not a TokenReview".to_owned())?;
    if review.kind.as_deref() != Some("TokenReview") || review.api_version.as_deref() != Some(API_VERSION) {
        return Err(format!("the answer is not a {API_VERSION} TokenReview"));
    }
    let Some(status) = review.status else { return Err("the TokenReview has no status".into()) };
    if status.authenticated != Some(true) {
        return Ok(false);
    }
    if status.user.and_then(|u| u.username).as_deref() != Some(subject) {
        return Ok(false);
    }
    // An API server that knows audiences says which of ours the token is for.
    if let Some(granted) = status.audiences.filter(|a| !a.is_empty()) {
        if !granted.iter().any(|a| audiences.contains(a)) {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::host::store::MemoryStore;

    fn liveness(on_unavailable: OnUnavailable) -> Liveness {
        Liveness {
            cluster: "kube_api".into(),
            authority: "kubernetes.default.svc".into(),
            path: "/apis/authentication.k8s.io/v1/tokenreviews".into(),
            cache_ms: 10_000,
            timeout_ms: 1_000,
            on_unavailable,
            max_stale_ms: 60_000,
        }
    }

    fn key(n: u8) -> ReviewKey {
        let mut key = [n; 16];
        // Same bucket for every test key: the first 8 bytes decide the bucket.
        key[..8].copy_from_slice(&[0; 8]);
        key
    }

    fn prepared() -> MemoryStore {
        let store = MemoryStore::new();
        assert_eq!(prepare(&store).unwrap(), BUCKETS);
        assert_eq!(prepare(&store).unwrap(), 0);
        store
    }

    #[test]
    fn one_reviewer_per_token_and_the_answer_serves_everyone_for_cache_seconds() {
        let store = prepared();
        let l = liveness(OnUnavailable::Deny);
        let k = key(1);
        assert_eq!(consult(&store, &k, &l, 1, 1_000, true).unwrap(), (Verdict::Review, None));
        // Another worker, and another request of the same worker: wait.
        assert_eq!(consult(&store, &k, &l, 2, 1_010, true).unwrap().0, Verdict::Wait);
        assert_eq!(consult(&store, &k, &l, 1, 1_020, true).unwrap().0, Verdict::Wait);
        let review = record(&store, &k, Some(true), &l, 1_100).unwrap();
        assert_eq!(review, Some(Review { answered_at_ms: 1_100, alive: true, alive_at_ms: Some(1_100) }));
        for me in [1, 2, 3] {
            assert_eq!(consult(&store, &k, &l, me, 11_099, true).unwrap().0, Verdict::Alive);
        }
        assert_eq!(lookup(&store, &k).unwrap(), review);
        // Stale after cache_seconds: the next caller reviews again, once.
        assert_eq!(consult(&store, &k, &l, 2, 11_100, true).unwrap().0, Verdict::Review);
        assert_eq!(consult(&store, &k, &l, 1, 11_101, true).unwrap().0, Verdict::Wait);
        // A negative answer is cached too.
        record(&store, &k, Some(false), &l, 11_200).unwrap();
        assert_eq!(consult(&store, &k, &l, 3, 12_000, true).unwrap().0, Verdict::Gone);
    }

    #[test]
    fn an_unanswered_review_cools_down_and_on_unavailable_decides() {
        let store = prepared();
        let deny = liveness(OnUnavailable::Deny);
        let recent = liveness(OnUnavailable::AllowRecent);
        let k = key(2);
        // Never reviewed, API server down: never a pass-through.
        assert_eq!(consult(&store, &k, &recent, 1, 0, true).unwrap().0, Verdict::Review);
        record(&store, &k, None, &recent, 100).unwrap();
        assert_eq!(
            consult(&store, &k, &recent, 2, 200, true).unwrap().0,
            Verdict::Unavailable,
            "cooling down"
        );
        // Reviewed alive at 2 000; at 12 001 the answer is stale and the review fails.
        assert_eq!(consult(&store, &k, &recent, 1, 1_200, true).unwrap().0, Verdict::Review);
        record(&store, &k, Some(true), &recent, 2_000).unwrap();
        assert_eq!(consult(&store, &k, &recent, 1, 12_001, true).unwrap().0, Verdict::Review);
        let last = record(&store, &k, None, &recent, 12_500).unwrap();
        assert_eq!(last.map(|r| r.alive_at_ms), Some(Some(2_000)), "the last answer is kept");
        let (verdict, last) = consult(&store, &k, &recent, 2, 12_600, true).unwrap();
        assert_eq!(verdict, Verdict::Alive, "allow_recent: alive 10.6 s ago, max_stale 60 s");
        assert_eq!(fallback(&deny, last, 12_600), Verdict::Unavailable, "deny refuses");
        assert_eq!(fallback(&recent, last, 61_999), Verdict::Alive);
        assert_eq!(fallback(&recent, last, 62_000), Verdict::Unavailable, "past max_stale_seconds");
        // Once the API server said no, allow_recent never lets it through again.
        assert_eq!(consult(&store, &k, &recent, 1, 13_600, true).unwrap().0, Verdict::Review);
        record(&store, &k, Some(false), &recent, 13_700).unwrap();
        assert_eq!(consult(&store, &k, &recent, 1, 23_800, true).unwrap().0, Verdict::Review);
        let last = record(&store, &k, None, &recent, 23_900).unwrap();
        assert_eq!(fallback(&recent, last, 24_000), Verdict::Unavailable);
        // Without the right to review (a request that already waited): the fallback.
        assert_eq!(consult(&store, &key(3), &recent, 1, 30_000, false).unwrap().0, Verdict::Unavailable);
    }

    #[test]
    fn a_dead_reviewer_or_one_that_went_away_blocks_no_one_for_long() {
        let store = prepared();
        let l = liveness(OnUnavailable::Deny);
        let k = key(4);
        assert_eq!(consult(&store, &k, &l, 1, 0, true).unwrap().0, Verdict::Review);
        assert_eq!(consult(&store, &k, &l, 2, 1_499, true).unwrap().0, Verdict::Wait);
        assert_eq!(consult(&store, &k, &l, 2, 1_500, true).unwrap().0, Verdict::Review, "lease expired");
        release(&store, &k, 1).unwrap();
        assert_eq!(
            consult(&store, &k, &l, 3, 1_501, true).unwrap().0,
            Verdict::Wait,
            "not 1's lease any more"
        );
        assert!(in_progress(&store, &k, 1_501).unwrap());
        release(&store, &k, 2).unwrap();
        assert!(!in_progress(&store, &k, 1_501).unwrap());
        assert_eq!(consult(&store, &k, &l, 3, 1_502, true).unwrap().0, Verdict::Review, "released");
    }

    #[test]
    fn a_full_bucket_evicts_its_oldest_answer_never_a_lease() {
        let store = prepared();
        let l = liveness(OnUnavailable::Deny);
        for n in 0..WAYS as u8 {
            assert_eq!(consult(&store, &key(10 + n), &l, 1, 0, true).unwrap().0, Verdict::Review);
        }
        // Every entry under review: a ninth token cannot take a lease.
        assert_eq!(consult(&store, &key(99), &l, 1, 1, true).unwrap().0, Verdict::Unavailable);
        for n in 0..WAYS as u8 {
            record(&store, &key(10 + n), Some(true), &l, 100 + u64::from(n)).unwrap();
        }
        assert_eq!(consult(&store, &key(99), &l, 1, 200, true).unwrap().0, Verdict::Review);
        assert_eq!(lookup(&store, &key(10)).unwrap(), None, "the oldest answer went");
        assert!(lookup(&store, &key(11)).unwrap().is_some());
        let (bytes, _) = store.get(&bucket_key(&key(99))).unwrap();
        assert_eq!(bytes.unwrap().len(), 1 + WAYS * ENTRY_BYTES, "bounded");
    }

    #[test]
    fn entries_round_trip_and_garbage_is_empty() {
        let e = Entry {
            key: [7; 16],
            review: Some(Review { answered_at_ms: 5, alive: false, alive_at_ms: None }),
            holder: 9,
            until_ms: 11,
        };
        assert_eq!(decode(&encode(&[e])), vec![e]);
        let fresh = Entry { review: None, ..e };
        assert_eq!(decode(&encode(&[fresh, e])), vec![fresh, e]);
        assert!(decode(&[]).is_empty());
        assert!(decode(&[9, 1, 2, 3]).is_empty());
        assert!(decode(&[VERSION, 1, 2, 3]).is_empty());
    }

    #[test]
    fn the_callout_is_a_token_review_post() {
        let l = liveness(OnUnavailable::Deny);
        let call = callout(&l, "the.token.value", &["nhi-gateway".to_owned()]);
        assert_eq!(call.cluster, "kube_api");
        let header = |n: &str| call.headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(header(":method"), Some("POST"));
        assert_eq!(header(":path"), Some("/apis/authentication.k8s.io/v1/tokenreviews"));
        assert_eq!(header(":authority"), Some("kubernetes.default.svc"));
        assert_eq!(header("authorization"), None, "the gateway's credential is Envoy's to attach");
        let body: serde_json::Value = serde_json::from_slice(&call.body).unwrap();
        assert_eq!(
            body,
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                   "spec": {"token": "the.token.value", "audiences": ["nhi-gateway"]}})
        );
        assert_eq!(call.timeout_ms, 1_000);
    }

    #[test]
    fn answers_are_read_strictly() {
        let sub = "system:serviceaccount:payments:api";
        let aud = ["nhi-gateway".to_owned()];
        let ok = |status: u16, body: serde_json::Value| Response {
            status: Some(status),
            body: Ok(body.to_string().into_bytes()),
        };
        let review = |status: serde_json::Value| json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status});
        let alive = review(json!({"authenticated": true, "audiences": ["nhi-gateway"],
                                  "user": {"username": sub, "uid": "u", "groups": ["system:serviceaccounts"]}}));
        assert_eq!(read_answer(&ok(201, alive.clone()), sub, &aud), Ok(true));
        assert_eq!(read_answer(&ok(200, alive.clone()), sub, &aud), Ok(true));
        assert_eq!(read_answer(&ok(201, review(json!({"authenticated": false}))), sub, &aud), Ok(false));
        assert_eq!(
            read_answer(&ok(201, review(json!({"error": "invalid bearer token, pod not found"}))), sub, &aud),
            Ok(false)
        );
        assert_eq!(
            read_answer(&ok(201, alive.clone()), "system:serviceaccount:payments:other", &aud),
            Ok(false)
        );
        let elsewhere =
            review(json!({"authenticated": true, "audiences": ["api"], "user": {"username": sub}}));
        assert_eq!(read_answer(&ok(201, elsewhere), sub, &aud), Ok(false));
        let no_audiences = review(json!({"authenticated": true, "user": {"username": sub}}));
        assert_eq!(read_answer(&ok(201, no_audiences), sub, &aud), Ok(true));
        for (what, response) in [
            ("no answer", Response { status: None, body: Ok(Vec::new()) }),
            ("500", ok(500, json!({}))),
            ("403 (RBAC)", ok(403, json!({"kind": "Status"}))),
            ("too big", Response { status: Some(201), body: Err(MAX_REVIEW_BYTES + 1) }),
            ("not JSON", Response { status: Some(201), body: Ok(b"<html>".to_vec()) }),
            ("another kind", ok(201, json!({"apiVersion": "v1", "kind": "Status", "status": "Success"}))),
            ("no status", ok(201, json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview"}))),
            // Found by the token_review fuzz target: bytes that are not UTF-8 in a member
            // the type ignores were accepted before the answer was parsed whole.
            ("not UTF-8 where ignored", {
                let mut body = alive.to_string().into_bytes();
                body.splice(1..1, b"\"spec\":{\"k\xff\xfe\":1},".iter().copied());
                Response { status: Some(201), body: Ok(body) }
            }),
        ] {
            assert!(read_answer(&response, sub, &aud).is_err(), "{what}");
        }
    }
}
