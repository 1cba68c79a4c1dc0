//! The verified-token cache, shared by every worker of one Envoy: a token is
//! verified (signature and all) once per Envoy, not once per request or worker.
//!
//! Signature checks are the expensive part of a request inside a wasm VM (hundreds
//! of microseconds for RS256/ES256), and machine clients reuse one token for many
//! requests. An entry is keyed by the SHA-256 of the raw token, so the token itself
//! is never stored, and lives in one of `max_entries` shared-data slots (the slot
//! is chosen by the digest; a newer token simply replaces an older one in its slot):
//! memory is bounded by `max_entries` × entry size, whatever the traffic.
//!
//! A hit is only a hint. [`Entry::usable`] re-checks, at every use, that the token
//! has not expired (with the issuer's skew) and that the very key that checked its
//! signature — by fingerprint, not by `kid` — is still in the issuer's current,
//! usable key set: a key that leaves the JWKS, or is replaced by another key under
//! the same `kid`, takes its cached tokens with it. Only tokens that passed every check are inserted, so
//! failures never create state here.

use std::fmt;
use std::rc::Rc;

use crate::json::{self, FromJson};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::ConfigError;
use crate::host::store::Store;
use crate::keys::jwks::KeyFingerprint;
use crate::keys::KeyLookup;
use crate::reason::{Reason, Rejection};
use crate::verify::liveness::Review;
use crate::verify::{self, Trust, Verified};

const VERSION: u8 = 2;
/// Default number of slots (`token_cache.max_entries`).
pub const DEFAULT_MAX_ENTRIES: u32 = 4_096;
pub const MAX_MAX_ENTRIES: u32 = 1_000_000;

/// SHA-256 of a raw token: the cache key. The token itself never enters shared data.
pub type TokenDigest = [u8; 32];

pub fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// A verified token as cached: what revalidation needs, plus the caller's payload
/// (the serialized verification result).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub digest: TokenDigest,
    /// [`Config::fingerprint`] of the configuration that verified the token.
    pub config: u64,
    pub issuer: u16,
    pub kid: String,
    /// The key that checked the signature.
    pub key: KeyFingerprint,
    pub expires_at: i64,
    pub payload: Vec<u8>,
}

impl Entry {
    pub fn encode(&self) -> Vec<u8> {
        let kid = self.kid.as_bytes();
        let mut out = Vec::with_capacity(1 + 32 + 32 + 8 + 8 + 2 + 2 + kid.len() + self.payload.len());
        out.push(VERSION);
        out.extend_from_slice(&self.digest);
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.config.to_be_bytes());
        out.extend_from_slice(&self.expires_at.to_be_bytes());
        out.extend_from_slice(&self.issuer.to_be_bytes());
        out.extend_from_slice(&u16::try_from(kid.len()).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(kid.get(..usize::from(u16::MAX)).unwrap_or(kid));
        out.extend_from_slice(&self.payload);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        let (&version, rest) = bytes.split_first()?;
        if version != VERSION {
            return None;
        }
        let (digest, rest) = rest.split_first_chunk::<32>()?;
        let (key, rest) = rest.split_first_chunk::<32>()?;
        let (config, rest) = rest.split_first_chunk::<8>()?;
        let (expires_at, rest) = rest.split_first_chunk::<8>()?;
        let (issuer, rest) = rest.split_first_chunk::<2>()?;
        let (kid_len, rest) = rest.split_first_chunk::<2>()?;
        let (kid, payload) = rest.split_at_checked(usize::from(u16::from_be_bytes(*kid_len)))?;
        Some(Entry {
            digest: *digest,
            config: u64::from_be_bytes(*config),
            issuer: u16::from_be_bytes(*issuer),
            kid: String::from_utf8(kid.to_vec()).ok()?,
            key: *key,
            expires_at: i64::from_be_bytes(*expires_at),
            payload: payload.to_vec(),
        })
    }

    /// Whether the cached verification still holds at `now`: the token has not
    /// expired (with the issuer's clock skew), and the key that signed it is still
    /// published, under its `kid`, in the issuer's usable key set.
    pub fn usable<K: KeyLookup + ?Sized>(&self, trust: Trust<'_>, keys: &K, now: i64) -> bool {
        let signed_by = SignedBy { issuer: usize::from(self.issuer), kid: &self.kid, key: &self.key };
        self.config == trust.fingerprint && signed_by.still_holds(trust, keys, self.expires_at, now)
    }
}

/// The key a cached verification was made with.
struct SignedBy<'a> {
    issuer: usize,
    kid: &'a str,
    key: &'a KeyFingerprint,
}

impl SignedBy<'_> {
    /// Whether a verification made under `config` still holds at `now`: not expired
    /// (with the issuer's skew), and the issuer still publishes, under the same
    /// `kid`, the same key material.
    fn still_holds<K: KeyLookup + ?Sized>(
        &self,
        trust: Trust<'_>,
        keys: &K,
        expires_at: i64,
        now: i64,
    ) -> bool {
        let Some(issuer) = trust.issuers.get(self.issuer) else { return false };
        let skew = i64::try_from(issuer.clock_skew_seconds).unwrap_or(i64::MAX);
        now < expires_at.saturating_add(skew)
            && keys
                .key_set(self.issuer)
                .and_then(|set| set.by_kid(self.kid))
                .is_some_and(|published| published.fingerprint == *self.key)
    }
}

/// Most tokens one VM keeps in its [`LocalCache`].
pub const LOCAL_CAPACITY: usize = 256;

/// One VM's front of the shared cache: the tokens it used last, with their
/// verification already parsed. A hit costs no shared-data read, no SHA-256 and no
/// JSON parse — the whole price of a reused token, which is most traffic. Keyed by
/// the token itself (this is VM memory, never shared), revalidated at every use
/// exactly like a shared entry, and emptied when full (bounded, and a busy VM
/// refills it from the shared cache at the cost of one read per token).
///
/// An entry also keeps the API server's last answer about the token (TokenReview
/// liveness, [`crate::verify::liveness`]): while it is fresh, a reused token of an
/// issuer with liveness costs no more host calls than one without.
#[derive(Debug, Default)]
pub struct LocalCache {
    entries: std::collections::HashMap<String, LocalEntry, crate::hash::seeded::Seeded>,
    /// [`Config::fingerprint`] the entries were verified under.
    config: u64,
}

#[derive(Debug)]
struct LocalEntry {
    verified: Rc<Verified>,
    review: std::cell::Cell<Option<Review>>,
}

impl LocalCache {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The verification of `raw` if this VM holds one that still holds at `now`.
    pub fn get<K: KeyLookup + ?Sized>(
        &self,
        trust: Trust<'_>,
        keys: &K,
        raw: &str,
        now: i64,
    ) -> Option<Rc<Verified>> {
        self.get_with_review(trust, keys, raw, now).map(|(verified, _)| verified)
    }

    /// Like [`LocalCache::get`], with the last liveness answer this VM keeps for the token.
    pub fn get_with_review<K: KeyLookup + ?Sized>(
        &self,
        trust: Trust<'_>,
        keys: &K,
        raw: &str,
        now: i64,
    ) -> Option<(Rc<Verified>, Option<Review>)> {
        if self.config != trust.fingerprint {
            return None;
        }
        let entry = self.entries.get(raw)?;
        let verified = &entry.verified;
        let signed_by =
            SignedBy { issuer: verified.issuer, kid: verified.kid.as_deref()?, key: &verified.key };
        signed_by
            .still_holds(trust, keys, verified.expires_at, now)
            .then(|| (Rc::clone(verified), entry.review.get()))
    }

    /// Keeps `review` with `raw`'s entry, if this VM holds one.
    pub fn remember_review(&self, raw: &str, review: Review) {
        if let Some(entry) = self.entries.get(raw) {
            entry.review.set(Some(review));
        }
    }

    fn insert(&mut self, trust: Trust<'_>, raw: &str, verified: &Rc<Verified>) {
        if verified.kid.is_none() {
            return; // its key could not be re-checked
        }
        if self.config != trust.fingerprint || self.entries.len() >= LOCAL_CAPACITY {
            self.entries.clear();
            self.config = trust.fingerprint;
        }
        let entry = LocalEntry { verified: Rc::clone(verified), review: std::cell::Cell::new(None) };
        self.entries.insert(raw.to_owned(), entry);
    }
}

/// The path after a [`LocalCache::get`] miss: [`verify_cached`] (the shared cache,
/// else the full verification), and what verifies is remembered in `local` too.
pub fn verify_and_remember<K: KeyLookup + ?Sized>(
    trust: Trust<'_>,
    keys: &K,
    store: &dyn Store,
    local: &mut LocalCache,
    raw: &str,
    now: i64,
    crypto_allowed: impl FnOnce() -> bool,
) -> Result<Rc<Verified>, Rejection> {
    let verified = Rc::new(verify_cached(trust, keys, store, raw, now, crypto_allowed)?);
    if trust.cache.is_some() {
        local.insert(trust, raw, &verified);
    }
    Ok(verified)
}

/// The cache: `max_entries` slots of shared data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenCache {
    max_entries: u32,
}

/// Why the cache could not be used (the caller just verifies in full).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheUnavailable;

impl fmt::Display for CacheUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("token cache unavailable")
    }
}

/// `token_cache` in the plugin configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawTokenCache {
    /// Slots of shared data (0 turns the cache off). Default 4096.
    #[serde(default)]
    pub max_entries: Option<u32>,
}

impl FromJson for RawTokenCache {
    fn from_json(value: serde_json::Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawTokenCache { max_entries: o.optional("max_entries") })
    }
}

/// Validates the `token_cache` block found at `at`.
pub fn compile(raw: Option<RawTokenCache>, at: &str) -> Result<Option<TokenCache>, ConfigError> {
    let max_entries = raw.and_then(|r| r.max_entries).unwrap_or(DEFAULT_MAX_ENTRIES);
    if max_entries > MAX_MAX_ENTRIES {
        return Err(ConfigError::Invalid {
            field: format!("{at}.max_entries"),
            reason: format!("must be at most {MAX_MAX_ENTRIES}"),
        });
    }
    Ok(TokenCache::new(max_entries))
}

/// Verifies `raw` like [`verify::verify`], answering from the shared cache when this
/// very token was verified before (under this configuration, with a key still
/// published, and not expired), and caching a token that verifies.
///
/// Only successes are cached; a token without `kid` is not (its key could not be
/// re-checked). A cache that cannot be read or written is simply not used.
///
/// When `crypto_allowed` says no (the flood guard blocked the source; asked only
/// when the cache cannot answer), the token is refused with `too_many_failures`
/// instead of verified.
pub fn verify_cached<K: KeyLookup + ?Sized>(
    trust: Trust<'_>,
    keys: &K,
    store: &dyn Store,
    raw: &str,
    now: i64,
    crypto_allowed: impl FnOnce() -> bool,
) -> Result<Verified, Rejection> {
    let refused = || {
        Rejection::new(Reason::TooManyFailures, "too many failed signature checks from this source")
            .at(crate::reason::Check::FloodGuard)
    };
    let Some(cache) = &trust.cache else {
        return if crypto_allowed() { verify::verify(trust, keys, raw, now) } else { Err(refused()) };
    };
    let digest = digest(raw);
    if let Ok(Some(entry)) = cache.get(store, &digest) {
        if entry.usable(trust, keys, now) {
            if let Ok(verified) = serde_json::from_slice::<Verified>(&entry.payload) {
                return Ok(verified);
            }
        }
    }
    if !crypto_allowed() {
        return Err(refused());
    }
    let verified = verify::verify(trust, keys, raw, now)?;
    if let (Some(kid), Ok(issuer), Ok(payload)) =
        (&verified.kid, u16::try_from(verified.issuer), serde_json::to_vec(&verified))
    {
        let entry = Entry {
            digest,
            config: trust.fingerprint,
            issuer,
            kid: kid.clone(),
            key: verified.key,
            expires_at: verified.expires_at,
            payload,
        };
        let _ = cache.put(store, &entry);
    }
    Ok(verified)
}

impl TokenCache {
    /// `None` when `max_entries` is 0 (the cache is off).
    pub fn new(max_entries: u32) -> Option<TokenCache> {
        (max_entries > 0).then_some(TokenCache { max_entries: max_entries.min(MAX_MAX_ENTRIES) })
    }

    pub fn max_entries(&self) -> u32 {
        self.max_entries
    }

    fn slot_key(&self, digest: &TokenDigest) -> String {
        let mut head = [0u8; 8];
        head.copy_from_slice(digest.get(..8).unwrap_or(&[0; 8]));
        let slot = u64::from_be_bytes(head) % u64::from(self.max_entries);
        format!("nhi-guard/tc/{slot}")
    }

    /// The cached entry for `digest`, if its slot holds this very token.
    pub fn get(&self, store: &dyn Store, digest: &TokenDigest) -> Result<Option<Entry>, CacheUnavailable> {
        let (bytes, _) = store.get(&self.slot_key(digest)).map_err(|_| CacheUnavailable)?;
        Ok(bytes.and_then(|b| Entry::decode(&b)).filter(|e| e.digest == *digest))
    }

    /// Caches a verified token (replacing whatever its slot held: it is a cache).
    pub fn put(&self, store: &dyn Store, entry: &Entry) -> Result<(), CacheUnavailable> {
        store.set(&self.slot_key(&entry.digest), &entry.encode(), None).map_err(|_| CacheUnavailable)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::Config;
    use crate::host::store::MemoryStore;
    use crate::keys::jwks::{self, KeySet};
    use crate::testkit;

    fn config() -> Config {
        Config::from_json(
            json!({"issuers": [{"name": "ci", "issuer": "https://i", "audiences": ["a"],
                   "jwks": {"cluster": "c", "authority": "a", "path": "/j"}, "clock_skew_seconds": 30}]})
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    fn keys() -> Vec<Option<KeySet>> {
        vec![Some(jwks::parse(testkit::jwks().to_string().as_bytes()).unwrap().keys)]
    }

    fn entry(token: &str) -> Entry {
        Entry {
            digest: digest(token),
            config: config().fingerprint,
            issuer: 0,
            kid: "ec-1".into(),
            key: keys()[0].as_ref().unwrap().by_kid("ec-1").unwrap().fingerprint,
            expires_at: 1_000,
            payload: b"{\"x\":1}".to_vec(),
        }
    }

    /// The test JWKS with another key published under `ec-1`.
    fn keys_with_ec1_replaced() -> Vec<Option<KeySet>> {
        let mut replaced = testkit::jwks();
        replaced["keys"][1] = json!({"kty": "OKP", "crv": "Ed25519", "kid": "ec-1",
            "x": testkit::jwks()["keys"][3]["x"].clone()});
        vec![Some(jwks::parse(replaced.to_string().as_bytes()).unwrap().keys)]
    }

    #[test]
    fn entries_round_trip_and_reject_garbage() {
        let e = entry("t");
        assert_eq!(Entry::decode(&e.encode()), Some(e.clone()));
        assert_eq!(Entry::decode(&[]), None);
        assert_eq!(Entry::decode(&[2; 64]), None);
        let mut truncated = e.encode();
        truncated.truncate(40);
        assert_eq!(Entry::decode(&truncated), None);
    }

    #[test]
    fn hit_only_for_the_same_token() {
        let store = MemoryStore::new();
        let cache = TokenCache::new(16).unwrap();
        cache.put(&store, &entry("token-a")).unwrap();
        assert_eq!(cache.get(&store, &digest("token-a")).unwrap(), Some(entry("token-a")));
        assert_eq!(cache.get(&store, &digest("token-b")).unwrap(), None);
    }

    #[test]
    fn memory_is_bounded_by_max_entries() {
        let store = MemoryStore::new();
        let cache = TokenCache::new(8).unwrap();
        // One entry made (it imports the whole test JWKS), a thousand digests put.
        let template = entry("token");
        for i in 0..1_000 {
            cache.put(&store, &Entry { digest: digest(&format!("token-{i}")), ..template.clone() }).unwrap();
        }
        assert!(store.len() <= 8, "{} keys", store.len());
        assert!(TokenCache::new(0).is_none());
    }

    #[test]
    fn the_token_itself_is_never_stored() {
        let store = MemoryStore::new();
        let cache = TokenCache::new(4).unwrap();
        let token = "eyJhbGciOiJFUzI1NiJ9.secret-bearer-material.sig";
        cache.put(&store, &entry(token)).unwrap();
        let (bytes, _) = store.get(&cache.slot_key(&digest(token))).unwrap();
        let bytes = bytes.unwrap();
        assert!(!bytes.windows(10).any(|w| token.as_bytes().windows(10).any(|t| t == w)));
    }

    #[test]
    fn a_cached_verification_is_reused_only_while_it_holds() {
        use crate::crypto::alg::Alg;
        let now = 1_800_000_000;
        let config = Config::from_json(
            json!({"issuers": [{"name": "ci", "issuer": "https://i", "audiences": ["a"],
                   "jwks": {"cluster": "c", "authority": "a", "path": "/j"}, "algorithms": ["ES256"]}],
                   "token_cache": {"max_entries": 64}})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let store = MemoryStore::new();
        let claims = json!({"iss": "https://i", "sub": "robot", "aud": "a", "exp": now + 60});
        let token = testkit::token(Alg::Es256, &json!({"alg": "ES256", "kid": "ec-1"}), &claims);
        let first = verify_cached(config.trust(), keys().as_slice(), &store, &token, now, || true).unwrap();
        assert_eq!(store.len(), 1, "a verified token is cached");
        // Another key published under the same kid: the cached verification was made
        // with a key the issuer no longer publishes, so it is not reused, and the full
        // check refuses the token.
        let replaced = keys_with_ec1_replaced();
        let refused =
            verify_cached(config.trust(), replaced.as_slice(), &store, &token, now, || true).unwrap_err();
        assert_eq!(refused.reason, crate::reason::Reason::DisallowedAlg, "ES256 against the new Ed25519 key");
        // The entry is still there, and still answers for the key that made it
        // without any crypto (the flood guard forbids it): proof the cache was used.
        assert_eq!(
            verify_cached(config.trust(), keys().as_slice(), &store, &token, now, || false).unwrap(),
            first
        );
        // Expired: no longer answered from the cache, and the full check says why.
        let late = verify_cached(config.trust(), keys().as_slice(), &store, &token, now + 3_600, || true)
            .unwrap_err();
        assert_eq!(late.reason, crate::reason::Reason::Expired);
        // Another configuration does not reuse it.
        let other = Config::from_json(
            json!({"issuers": [{"name": "ci", "issuer": "https://i", "audiences": ["other"],
                   "jwks": {"cluster": "c", "authority": "a", "path": "/j"}, "algorithms": ["ES256"]}]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let refused =
            verify_cached(other.trust(), keys().as_slice(), &store, &token, now, || true).unwrap_err();
        assert_eq!(refused.reason, crate::reason::Reason::WrongAudience);
        // A blocked source still gets its cached verification, nothing else.
        assert_eq!(
            verify_cached(config.trust(), keys().as_slice(), &store, &token, now, || false).unwrap(),
            first
        );
        let fresh = testkit::token(
            Alg::Es256,
            &json!({"alg": "ES256", "kid": "ec-1"}),
            &json!({"iss": "https://i", "sub": "other", "aud": "a", "exp": now + 60}),
        );
        let blocked =
            verify_cached(config.trust(), keys().as_slice(), &store, &fresh, now, || false).unwrap_err();
        assert_eq!(blocked.reason, crate::reason::Reason::TooManyFailures);
        // Failures are never cached.
        let before = store.len();
        let forged = format!("{}x", token.trim_end_matches(|c| c != '.'));
        assert!(verify_cached(config.trust(), keys().as_slice(), &store, &forged, now, || true).is_err());
        assert_eq!(store.len(), before);
    }

    #[test]
    fn usable_until_expiry_with_skew_and_while_the_key_is_published() {
        let config = config();
        let keys = keys();
        let e = entry("t");
        assert!(e.usable(config.trust(), keys.as_slice(), 1_029));
        assert!(!e.usable(config.trust(), keys.as_slice(), 1_030), "expired past the skew");
        let rotated = Entry { kid: "gone".into(), ..e.clone() };
        assert!(!rotated.usable(config.trust(), keys.as_slice(), 0), "signing key left the JWKS");
        assert!(
            !e.usable(config.trust(), keys_with_ec1_replaced().as_slice(), 0),
            "another key under the same kid"
        );
        let other_material = Entry { key: [7; 32], ..e.clone() };
        assert!(!other_material.usable(config.trust(), keys.as_slice(), 0), "not the key that verified it");
        let none: Vec<Option<KeySet>> = vec![None];
        assert!(!e.usable(config.trust(), none.as_slice(), 0), "keys unavailable");
        let other_issuer = Entry { issuer: 7, ..e };
        assert!(!other_issuer.usable(config.trust(), keys.as_slice(), 0));
    }

    #[test]
    fn the_local_cache_answers_without_shared_data_and_revalidates_like_it() {
        use crate::crypto::alg::Alg;
        let now = 1_800_000_000;
        let config = config();
        let claims = json!({"iss": "https://i", "sub": "robot", "aud": "a", "exp": now + 60});
        let token = testkit::token(Alg::Es256, &json!({"alg": "ES256", "kid": "ec-1"}), &claims);
        let mut local = LocalCache::default();
        let store = MemoryStore::new();
        let first =
            verify_and_remember(config.trust(), keys().as_slice(), &store, &mut local, &token, now, || true)
                .unwrap();
        assert_eq!((local.len(), store.len()), (1, 1), "in both caches");
        // A second use needs neither shared data nor crypto: the local cache answers.
        let again = local.get(config.trust(), keys().as_slice(), &token, now).unwrap();
        assert!(Rc::ptr_eq(&first, &again), "the same parsed verification");
        // Expired, or its key left the JWKS, or another configuration: not answered
        // locally, and the full check says why.
        let empty = MemoryStore::new();
        assert!(local.get(config.trust(), keys().as_slice(), &token, now + 3_600).is_none());
        let late = verify_and_remember(
            config.trust(),
            keys().as_slice(),
            &empty,
            &mut local,
            &token,
            now + 3_600,
            || true,
        );
        assert_eq!(late.unwrap_err().reason, Reason::Expired);
        let none: Vec<Option<KeySet>> = vec![None];
        assert!(local.get(config.trust(), none.as_slice(), &token, now).is_none());
        let unavailable =
            verify_and_remember(config.trust(), none.as_slice(), &empty, &mut local, &token, now, || true);
        assert_eq!(unavailable.unwrap_err().reason, Reason::KeysUnavailable);
        assert!(
            local.get(config.trust(), keys_with_ec1_replaced().as_slice(), &token, now).is_none(),
            "another key under the same kid"
        );
        let mut other = config.clone();
        other.fingerprint ^= 1;
        assert!(local.get(other.trust(), keys().as_slice(), &token, now).is_none());
        assert!(verify_and_remember(
            other.trust(),
            keys().as_slice(),
            &empty,
            &mut local,
            &token,
            now,
            || false
        )
        .is_err());
    }

    #[test]
    fn the_local_cache_is_bounded() {
        let config = config();
        let mut local = LocalCache::default();
        let verified = Rc::new(Verified {
            issuer: 0,
            subject: "s".into(),
            identity: "s".into(),
            kid: Some("ec-1".into()),
            key: [0; 32],
            alg: crate::crypto::alg::Alg::Es256,
            expires_at: i64::MAX,
            claims: serde_json::Map::new(),
        });
        for i in 0..3 * LOCAL_CAPACITY {
            local.insert(config.trust(), &format!("token-{i}"), &verified);
            assert!(local.len() <= LOCAL_CAPACITY);
        }
        // A verification without `kid` is never kept (its key could not be re-checked).
        let mut fresh = LocalCache::default();
        fresh.insert(config.trust(), "t", &Rc::new(Verified { kid: None, ..(*verified).clone() }));
        assert!(fresh.is_empty());
    }

    #[test]
    fn the_local_entry_keeps_the_liveness_answer_while_it_holds() {
        use crate::crypto::alg::Alg;
        let now = 1_800_000_000;
        let config = config();
        let claims = json!({"iss": "https://i", "sub": "robot", "aud": "a", "exp": now + 60});
        let token = testkit::token(Alg::Es256, &json!({"alg": "ES256", "kid": "ec-1"}), &claims);
        let mut local = LocalCache::default();
        let store = MemoryStore::new();
        local.remember_review(&token, Review { answered_at_ms: 1, alive: true, alive_at_ms: Some(1) });
        assert!(local.is_empty(), "no entry, nothing remembered");
        verify_and_remember(config.trust(), keys().as_slice(), &store, &mut local, &token, now, || true)
            .unwrap();
        let (_, review) = local.get_with_review(config.trust(), keys().as_slice(), &token, now).unwrap();
        assert_eq!(review, None, "not reviewed yet");
        let answer = Review { answered_at_ms: 5, alive: false, alive_at_ms: None };
        local.remember_review(&token, answer);
        let (_, review) = local.get_with_review(config.trust(), keys().as_slice(), &token, now).unwrap();
        assert_eq!(review, Some(answer));
        // The answer goes with the entry: not served once the verification no longer holds.
        assert!(local.get_with_review(config.trust(), keys().as_slice(), &token, now + 3_600).is_none());
    }
}
