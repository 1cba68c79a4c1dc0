//! Partners: machine callers without an identity provider, authenticated by an
//! HTTP Message Signature (RFC 9421) or an API key, and then treated exactly like a
//! verified token — one identity model.
//!
//! A verified partner is an [`IdentityInfo`] with the issuer name `partners` (by
//! default), the partner's `identity` (default `partner:<name>`), its `name` as the
//! subject and three claims (`partner`, `key_id`, `method`: `signature` or
//! `api_key`). Routes, allow and deny rules, quotas, the flood guard, metrics, the
//! decision log and the `x-nhi-*` headers see nothing else.
//!
//! # Secrets
//! No secret is ever in the configuration. An HMAC key names the environment
//! variable that holds it (`secret_env`, base64 of at least 32 bytes); an API key
//! is known by the SHA-256 of the key, inline (`sha256`, 64 hex digits: a hash of a
//! random key is no secret) or from the environment (`sha256_env`). Ed25519 keys
//! are public and may be inline (`public_key`, PEM). A configuration that holds a
//! secret value (`secret`, `key`, `value`…) is refused. Variables are read once,
//! when the VM starts ([`Partners::resolve`]); one that is missing or malformed
//! stops the plugin from starting, naming it.
//!
//! # Rotation
//! Each partner has at most two signing keys and two API keys, each with an `id`
//! and optional `not_before` / `not_after`. A key outside its window is refused as
//! `key_inactive`; `nhi_partner_key_requests_total{nhi_partner, nhi_key}` counts
//! what each key admits, so the old key is removed only once nothing uses it.
//!
//! # Signatures
//! See [`signature`] for the fields and the signature base. The policy:
//! the signature whose `keyid` is a configured key is the one checked (a `label`
//! or `tag` may be required); `alg`, when present, must be the key's; the covered
//! components must include the partner's `components` (default `@method`,
//! `@authority`, `@path`), `@query` when the request has a query and
//! `content-digest` when it has a body (`@target-uri` stands for `@authority`,
//! `@path` and `@query`; `@request-target` for `@path` and `@query`); `created` is
//! required and at most `max_age_seconds` old (and not ahead by more than
//! `clock_skew_seconds`), `expires` is honoured; `nonce` is required (unless
//! `require_nonce: false`) and remembered ([`replay`]). A body is checked against its
//! `Content-Digest` ([`digest`]) once it has arrived, and refused above
//! `max_body_bytes`.

pub mod api_key;
pub mod check;
pub mod digest;
pub mod replay;
pub mod sf;
pub mod signature;
pub mod time;

use std::collections::HashSet;

use ed25519_dalek::VerifyingKey;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{header_name, ConfigError};
use crate::json::{self, FromJson};
use crate::verify::identity::{IdentityInfo, Via};

pub use replay::ReplayCache;

pub const DEFAULT_ISSUER_NAME: &str = "partners";
pub const DEFAULT_API_KEY_HEADER: &str = "x-api-key";
pub const DEFAULT_MAX_AGE_SECONDS: u64 = 300;
pub const DEFAULT_CLOCK_SKEW_SECONDS: u64 = 30;
pub const DEFAULT_MAX_BODY_BYTES: u64 = 64 * 1024;
/// Above this the body is not worth buffering in a filter: Envoy's own default
/// per-connection buffer limit is 1 MiB.
pub const MAX_MAX_BODY_BYTES: u64 = 1024 * 1024;
pub const MAX_PARTNERS: usize = 64;
/// Keys of one kind live at once per partner: the current one and the next.
pub const MAX_KEYS: usize = 2;
/// The components every signature must cover unless a partner says otherwise.
pub const DEFAULT_COMPONENTS: [&str; 3] = ["@method", "@authority", "@path"];
/// HMAC keys shorter than the hash output are weak (RFC 2104 §3).
pub const MIN_HMAC_KEY_BYTES: usize = 32;
/// Headers a partner's signature travels in; never an API key header.
const SIGNATURE_HEADERS: [&str; 3] = ["signature", "signature-input", "content-digest"];

// ---------------------------------------------------------------------------------
// The configuration as written.

/// `partners` in the plugin configuration.
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawPartners {
    /// The issuer name partner identities carry (`x-nhi-issuer`, metrics, allow
    /// rules' `issuer`). Default `partners`.
    #[serde(default)]
    issuer_name: Option<String>,
    /// The request header API keys come in. Default `x-api-key`.
    #[serde(default)]
    api_key_header: Option<String>,
    /// Signature requirements of every partner (each may override them).
    #[serde(default)]
    signature: Option<RawSignaturePolicy>,
    /// The nonce replay cache.
    #[serde(default)]
    replay_cache: Option<RawReplayCache>,
    clients: Vec<RawPartner>,
}

impl FromJson for RawPartners {
    fn from_json(value: Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawPartners {
            issuer_name: o.optional("issuer_name"),
            api_key_header: o.optional("api_key_header"),
            signature: o.optional("signature"),
            replay_cache: o.optional("replay_cache"),
            clients: o.required("clients"),
        })
    }
}

#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawPartner {
    /// `a-z`, `0-9`, `-`, `_`: the subject of its identity and a metric label.
    name: String,
    /// The forwarded identity. Default `partner:<name>`.
    #[serde(default)]
    identity: Option<String>,
    /// Signing keys (RFC 9421), at most two.
    #[serde(default)]
    keys: Vec<RawKey>,
    /// API keys, at most two.
    #[serde(default)]
    api_keys: Vec<RawApiKey>,
    #[serde(default)]
    signature: Option<RawSignaturePolicy>,
}

impl FromJson for RawPartner {
    fn from_json(value: Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawPartner {
            name: o.required("name"),
            identity: o.optional("identity"),
            keys: o.or_default("keys"),
            api_keys: o.or_default("api_keys"),
            signature: o.optional("signature"),
        })
    }
}

#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawKey {
    /// The signature's `keyid`.
    id: String,
    /// `hmac-sha256` or `ed25519`.
    alg: String,
    /// `hmac-sha256`: the environment variable holding the key (base64).
    #[serde(default)]
    secret_env: Option<String>,
    /// `ed25519`: the public key, PEM (`-----BEGIN PUBLIC KEY-----`).
    #[serde(default)]
    public_key: Option<String>,
    #[serde(default)]
    not_before: Option<time::RawTime>,
    #[serde(default)]
    not_after: Option<time::RawTime>,
    /// Never allowed: recognised only to refuse it with a clear message.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    secret: Option<Value>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    key: Option<Value>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    value: Option<Value>,
}

impl FromJson for RawKey {
    fn from_json(value: Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawKey {
            id: o.required("id"),
            alg: o.required("alg"),
            secret_env: o.optional("secret_env"),
            public_key: o.optional("public_key"),
            not_before: o.optional("not_before"),
            not_after: o.optional("not_after"),
            secret: o.optional("secret"),
            key: o.optional("key"),
            value: o.optional("value"),
        })
    }
}

#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawApiKey {
    id: String,
    /// SHA-256 of the key, 64 hex digits.
    #[serde(default)]
    sha256: Option<String>,
    /// The environment variable holding the SHA-256 of the key (64 hex digits).
    #[serde(default)]
    sha256_env: Option<String>,
    #[serde(default)]
    not_before: Option<time::RawTime>,
    #[serde(default)]
    not_after: Option<time::RawTime>,
    /// Never allowed: recognised only to refuse it with a clear message.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    key: Option<Value>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    secret: Option<Value>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    value: Option<Value>,
}

impl FromJson for RawApiKey {
    fn from_json(value: Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawApiKey {
            id: o.required("id"),
            sha256: o.optional("sha256"),
            sha256_env: o.optional("sha256_env"),
            not_before: o.optional("not_before"),
            not_after: o.optional("not_after"),
            key: o.optional("key"),
            secret: o.optional("secret"),
            value: o.optional("value"),
        })
    }
}

#[derive(Debug, Default, Clone, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawSignaturePolicy {
    /// Components every signature must cover. Default `@method`, `@authority`, `@path`.
    #[serde(default)]
    components: Option<Vec<String>>,
    /// Oldest accepted `created`, seconds. Default 300.
    #[serde(default)]
    max_age_seconds: Option<u64>,
    /// Default 30.
    #[serde(default)]
    clock_skew_seconds: Option<u64>,
    /// Default `true`: a signature without `nonce` is refused.
    #[serde(default)]
    require_nonce: Option<bool>,
    /// Largest body checked against its Content-Digest (buffered by the filter).
    /// Default 65536. `0`: bodies are never buffered, a signed request with a body
    /// is refused (for hosts that cannot pause the headers for the body, such as an
    /// Istio `WasmPlugin`).
    #[serde(default)]
    max_body_bytes: Option<u64>,
    /// Only the signature with this label is considered.
    #[serde(default)]
    label: Option<String>,
    /// The signature's `tag` must be this.
    #[serde(default)]
    tag: Option<String>,
}

impl FromJson for RawSignaturePolicy {
    fn from_json(value: Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawSignaturePolicy {
            components: o.optional("components"),
            max_age_seconds: o.optional("max_age_seconds"),
            clock_skew_seconds: o.optional("clock_skew_seconds"),
            require_nonce: o.optional("require_nonce"),
            max_body_bytes: o.optional("max_body_bytes"),
            label: o.optional("label"),
            tag: o.optional("tag"),
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawReplayCache {
    /// Nonces remembered at once, proxy-wide. Default 65536.
    #[serde(default)]
    max_entries: Option<u32>,
}

impl FromJson for RawReplayCache {
    fn from_json(value: Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawReplayCache { max_entries: o.optional("max_entries") })
    }
}

// ---------------------------------------------------------------------------------
// The validated configuration.

/// The validated `partners` block.
#[derive(Debug, Clone)]
pub struct Partners {
    pub issuer_name: String,
    /// Where API keys are read; `None` when no partner has one.
    pub api_key_header: Option<String>,
    pub clients: Vec<Partner>,
    pub replay: ReplayCache,
}

#[derive(Debug, Clone)]
pub struct Partner {
    pub name: String,
    pub identity: String,
    pub keys: Vec<SigningKey>,
    pub api_keys: Vec<ApiKey>,
    pub policy: SignaturePolicy,
    /// The claims of each key (signing keys first, then API keys).
    claims: Vec<Map<String, Value>>,
}

#[derive(Debug, Clone)]
pub struct SigningKey {
    pub id: String,
    pub material: KeyMaterial,
    pub window: Window,
}

/// What checks a signature, as configured.
#[derive(Debug, Clone)]
pub enum KeyMaterial {
    /// `hmac-sha256`: the key is in this environment variable.
    HmacSha256 {
        env: String,
    },
    Ed25519(VerifyingKey),
}

impl KeyMaterial {
    /// The RFC 9421 algorithm name.
    pub fn alg(&self) -> &'static str {
        match self {
            KeyMaterial::HmacSha256 { .. } => "hmac-sha256",
            KeyMaterial::Ed25519(_) => "ed25519",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiKey {
    pub id: String,
    pub hash: HashSource,
    pub window: Window,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashSource {
    Inline([u8; 32]),
    Env(String),
}

/// `not_before` / `not_after`, Unix seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub not_before: Option<i64>,
    pub not_after: Option<i64>,
}

impl Window {
    /// `Err(why)` when `now` is outside the window.
    pub fn check(&self, now: i64) -> Result<(), &'static str> {
        if self.not_before.is_some_and(|t| now < t) {
            return Err("is not valid yet (not_before)");
        }
        if self.not_after.is_some_and(|t| now >= t) {
            return Err("is no longer valid (not_after)");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignaturePolicy {
    pub components: Vec<String>,
    pub max_age_seconds: u64,
    pub clock_skew_seconds: u64,
    pub require_nonce: bool,
    pub max_body_bytes: u64,
    pub label: Option<String>,
    pub tag: Option<String>,
}

/// How a partner proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Signature,
    ApiKey,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Signature => "signature",
            Method::ApiKey => "api_key",
        }
    }
}

/// A verified partner credential: which partner, which key (index into its
/// `keys`, or its `api_keys` for [`Method::ApiKey`]), and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartnerKey {
    pub partner: usize,
    pub key: usize,
    pub method: Method,
}

impl Partners {
    pub fn partner(&self, key: PartnerKey) -> Option<&Partner> {
        self.clients.get(key.partner)
    }

    /// The key's id (a metric label and the decision log's `kid`).
    pub fn key_id(&self, key: PartnerKey) -> Option<&str> {
        let partner = self.partner(key)?;
        match key.method {
            Method::Signature => partner.keys.get(key.key).map(|k| k.id.as_str()),
            Method::ApiKey => partner.api_keys.get(key.key).map(|k| k.id.as_str()),
        }
    }

    /// The identity policy sees.
    pub fn identity_info(&self, key: PartnerKey) -> Option<IdentityInfo<'_>> {
        let partner = self.partner(key)?;
        let index = match key.method {
            Method::Signature => key.key,
            Method::ApiKey => partner.keys.len() + key.key,
        };
        Some(IdentityInfo {
            identity: &partner.identity,
            issuer: &self.issuer_name,
            subject: &partner.name,
            claims: partner.claims.get(index)?,
            jkt: None,
            via: match key.method {
                Method::Signature => Via::Signature,
                Method::ApiKey => Via::ApiKey,
            },
        })
    }

    /// The signing key `keyid` names: (partner, key index).
    pub fn signing_key(&self, keyid: &str) -> Option<(usize, usize)> {
        self.clients
            .iter()
            .enumerate()
            .find_map(|(p, partner)| partner.keys.iter().position(|k| k.id == keyid).map(|k| (p, k)))
    }

    /// Whether any partner has a signing key (signatures are looked for).
    pub fn signatures(&self) -> bool {
        self.clients.iter().any(|p| !p.keys.is_empty())
    }

    /// Every (partner, key id) pair, for defining the key metrics up front.
    pub fn key_labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.clients.iter().flat_map(|p| {
            let signing = p.keys.iter().map(|k| k.id.as_str());
            let api = p.api_keys.iter().map(|k| k.id.as_str());
            signing.chain(api).map(move |id| (p.name.as_str(), id))
        })
    }

    /// The strictest default policy, for hints to requests no partner is known for.
    pub fn default_policy(&self) -> Option<&SignaturePolicy> {
        self.clients.iter().find(|p| !p.keys.is_empty()).map(|p| &p.policy)
    }

    /// The hints a refusal for `reason` carries: `Accept-Signature` (RFC 9421 §5.1)
    /// when the signature was missing or did not cover enough (the policy of the key
    /// `keyid` names, else the default), `Want-Content-Digest` (RFC 9530 §4) when the
    /// body did not match.
    pub fn hints(
        &self,
        reason: crate::reason::Reason,
        keyid: Option<&str>,
        has_query: bool,
        has_body: bool,
    ) -> Vec<(String, String)> {
        use crate::reason::Reason;
        match reason {
            Reason::MissingSignature | Reason::MissingComponent => {
                let policy = keyid
                    .and_then(|kid| self.signing_key(kid))
                    .and_then(|(p, _)| self.clients.get(p))
                    .map(|p| &p.policy)
                    .or_else(|| self.default_policy());
                let Some(policy) = policy else { return Vec::new() };
                vec![("accept-signature".to_owned(), check::accept_signature(policy, has_query, has_body))]
            }
            Reason::DigestMismatch => {
                vec![("want-content-digest".to_owned(), digest::WANT_CONTENT_DIGEST.to_owned())]
            }
            _ => Vec::new(),
        }
    }
}

/// Validates the `partners` block found at `at`. `taken` are the header names
/// the API key header must differ from (field, name).
pub fn compile(raw: RawPartners, at: &str, taken: &[(&str, &str)]) -> Result<Partners, ConfigError> {
    let field = |f: &str| format!("{at}.{f}");
    let issuer_name = raw.issuer_name.unwrap_or_else(|| DEFAULT_ISSUER_NAME.to_owned());
    crate::error::label_name(field("issuer_name"), &issuer_name)?;
    if raw.clients.is_empty() {
        return Err(ConfigError::invalid(field("clients"), "must list at least one partner"));
    }
    if raw.clients.len() > MAX_PARTNERS {
        return Err(ConfigError::invalid(
            field("clients"),
            format!("lists more than {MAX_PARTNERS} partners"),
        ));
    }
    let defaults = compile_policy(raw.signature.clone().unwrap_or_default(), None, &field("signature"))?;
    let mut names = HashSet::new();
    let mut key_ids = HashSet::new();
    let mut api_hashes = HashSet::new();
    let mut clients = Vec::with_capacity(raw.clients.len());
    for (i, raw_partner) in raw.clients.into_iter().enumerate() {
        let at = |f: &str| format!("{at}.clients[{i}].{f}");
        let partner = compile_partner(raw_partner, &defaults, &at)?;
        if !names.insert(partner.name.clone()) {
            return Err(ConfigError::invalid(
                at("name"),
                format!("{:?} is used by another partner", partner.name),
            ));
        }
        for (j, key) in partner.api_keys.iter().enumerate() {
            if let HashSource::Inline(hash) = key.hash {
                if !api_hashes.insert(hash) {
                    return Err(ConfigError::invalid(
                        at(&format!("api_keys[{j}].sha256")),
                        "is the hash of another API key: an API key must name one partner",
                    ));
                }
            }
        }
        for (j, key) in partner.keys.iter().enumerate() {
            if !key_ids.insert(key.id.clone()) {
                return Err(ConfigError::invalid(
                    at(&format!("keys[{j}].id")),
                    format!("{:?} is the id of another key: a keyid must name one key", key.id),
                ));
            }
        }
        clients.push(partner);
    }
    let api_key_header = if clients.iter().any(|p| !p.api_keys.is_empty()) {
        let name = header_name(
            &field("api_key_header"),
            raw.api_key_header.as_deref().unwrap_or(DEFAULT_API_KEY_HEADER),
        )?;
        if SIGNATURE_HEADERS.contains(&name.as_str()) {
            return Err(ConfigError::invalid(
                field("api_key_header"),
                format!("{name:?} carries signatures"),
            ));
        }
        if let Some((other, _)) = taken.iter().find(|(_, taken)| *taken == name) {
            return Err(ConfigError::invalid(field("api_key_header"), format!("must differ from {other}")));
        }
        Some(name)
    } else {
        if raw.api_key_header.is_some() {
            return Err(ConfigError::invalid(field("api_key_header"), "is set but no partner has api_keys"));
        }
        None
    };
    let max_entries = raw.replay_cache.and_then(|r| r.max_entries).unwrap_or(replay::DEFAULT_MAX_ENTRIES);
    if !(1..=replay::MAX_MAX_ENTRIES).contains(&max_entries) {
        return Err(ConfigError::invalid(
            field("replay_cache.max_entries"),
            format!("must be between 1 and {}", replay::MAX_MAX_ENTRIES),
        ));
    }
    Ok(Partners { issuer_name, api_key_header, clients, replay: ReplayCache::new(max_entries) })
}

/// Key ids are metric labels and signature parameters: a safe, short alphabet.
fn valid_key_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c))
}

/// An environment variable name (what POSIX shells and Kubernetes accept).
pub fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128
}

const INLINE_SECRET: &str =
    "holds a secret: secrets are never in the plugin configuration; put the value in a \
                             Kubernetes Secret, hand it to the gateway's environment and name the variable";

fn compile_partner(
    raw: RawPartner,
    defaults: &SignaturePolicy,
    at: &dyn Fn(&str) -> String,
) -> Result<Partner, ConfigError> {
    crate::error::label_name(at("name"), &raw.name)?;
    let identity = raw.identity.unwrap_or_else(|| format!("partner:{}", raw.name));
    if identity.is_empty() || identity.len() > 256 || identity.chars().any(|c| c.is_control()) {
        return Err(ConfigError::invalid(
            at("identity"),
            "must be 1-256 characters without control characters",
        ));
    }
    if raw.keys.is_empty() && raw.api_keys.is_empty() {
        return Err(ConfigError::invalid(at("keys"), "a partner needs `keys` or `api_keys`"));
    }
    if raw.keys.len() > MAX_KEYS {
        return Err(ConfigError::invalid(
            at("keys"),
            format!("lists more than {MAX_KEYS} keys: the current one and the next (rotate by removing the old one)"),
        ));
    }
    if raw.api_keys.len() > MAX_KEYS {
        return Err(ConfigError::invalid(at("api_keys"), format!("lists more than {MAX_KEYS} keys")));
    }
    let policy = match raw.signature {
        Some(own) => compile_policy(own, Some(defaults), &at("signature"))?,
        None => defaults.clone(),
    };
    let mut keys = Vec::with_capacity(raw.keys.len());
    for (j, key) in raw.keys.into_iter().enumerate() {
        let at = |f: &str| at(&format!("keys[{j}].{f}"));
        keys.push(compile_key(key, &at)?);
    }
    let mut api_keys: Vec<ApiKey> = Vec::with_capacity(raw.api_keys.len());
    for (j, key) in raw.api_keys.into_iter().enumerate() {
        let at = |f: &str| at(&format!("api_keys[{j}].{f}"));
        let key = compile_api_key(key, &at)?;
        if api_keys.iter().any(|k| k.id == key.id) {
            return Err(ConfigError::invalid(at("id"), format!("{:?} is used by another API key", key.id)));
        }
        api_keys.push(key);
    }
    let claims = keys
        .iter()
        .map(|k| (k.id.as_str(), Method::Signature))
        .chain(api_keys.iter().map(|k| (k.id.as_str(), Method::ApiKey)))
        .map(|(id, method)| {
            let mut claims = Map::new();
            claims.insert("partner".into(), Value::String(raw.name.clone()));
            claims.insert("key_id".into(), Value::String(id.to_owned()));
            claims.insert("method".into(), Value::String(method.as_str().to_owned()));
            claims
        })
        .collect();
    Ok(Partner { name: raw.name, identity, keys, api_keys, policy, claims })
}

fn window(
    not_before: Option<time::RawTime>,
    not_after: Option<time::RawTime>,
    at: &dyn Fn(&str) -> String,
) -> Result<Window, ConfigError> {
    let read = |raw: Option<time::RawTime>, name: &str| {
        raw.map(|t| t.unix_seconds().map_err(|why| ConfigError::invalid(at(name), why))).transpose()
    };
    let window =
        Window { not_before: read(not_before, "not_before")?, not_after: read(not_after, "not_after")? };
    if let (Some(from), Some(to)) = (window.not_before, window.not_after) {
        if to <= from {
            return Err(ConfigError::invalid(at("not_after"), "must be after not_before"));
        }
    }
    Ok(window)
}

fn env_name(name: Option<String>, at: &str) -> Result<Option<String>, ConfigError> {
    match name {
        Some(name) if !valid_env_name(&name) => Err(ConfigError::invalid(
            at,
            "must be the name of an environment variable (letters, digits, '_'), not a secret value",
        )),
        other => Ok(other),
    }
}

fn compile_key(raw: RawKey, at: &dyn Fn(&str) -> String) -> Result<SigningKey, ConfigError> {
    for (name, present) in
        [("secret", raw.secret.is_some()), ("key", raw.key.is_some()), ("value", raw.value.is_some())]
    {
        if present {
            return Err(ConfigError::invalid(at(name), INLINE_SECRET));
        }
    }
    if !valid_key_id(&raw.id) {
        return Err(ConfigError::invalid(
            at("id"),
            "must be 1-64 characters of A-Z, a-z, 0-9, '.', '_', ':' or '-'",
        ));
    }
    let secret_env = env_name(raw.secret_env, &at("secret_env"))?;
    let material = match (raw.alg.as_str(), secret_env, raw.public_key) {
        ("hmac-sha256", Some(env), None) => KeyMaterial::HmacSha256 { env },
        ("hmac-sha256", None, _) => {
            return Err(ConfigError::invalid(
                at("secret_env"),
                "is required with hmac-sha256 (the key comes from the environment)",
            ))
        }
        ("hmac-sha256", Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                at("public_key"),
                "is for ed25519; an hmac-sha256 key has only secret_env",
            ))
        }
        ("ed25519", None, Some(pem)) => KeyMaterial::Ed25519(
            parse_ed25519_public_key(&pem).map_err(|why| ConfigError::invalid(at("public_key"), why))?,
        ),
        ("ed25519", _, None) => {
            return Err(ConfigError::invalid(at("public_key"), "is required with ed25519"))
        }
        ("ed25519", Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                at("secret_env"),
                "is for hmac-sha256; an ed25519 key has a public_key",
            ))
        }
        (other, _, _) => {
            let why = if other.starts_with("rsa") || other.starts_with("ecdsa") {
                format!("{other:?} is not supported for partners: use hmac-sha256 or ed25519")
            } else {
                format!("{other:?} is not one of hmac-sha256, ed25519")
            };
            return Err(ConfigError::invalid(at("alg"), why));
        }
    };
    Ok(SigningKey { id: raw.id, material, window: window(raw.not_before, raw.not_after, at)? })
}

fn compile_api_key(raw: RawApiKey, at: &dyn Fn(&str) -> String) -> Result<ApiKey, ConfigError> {
    for (name, present) in
        [("key", raw.key.is_some()), ("secret", raw.secret.is_some()), ("value", raw.value.is_some())]
    {
        if present {
            return Err(ConfigError::invalid(
                at(name),
                "holds an API key: only its SHA-256 is configured (`sha256`, or `sha256_env` naming the \
                 environment variable that holds it)",
            ));
        }
    }
    if !valid_key_id(&raw.id) {
        return Err(ConfigError::invalid(
            at("id"),
            "must be 1-64 characters of A-Z, a-z, 0-9, '.', '_', ':' or '-'",
        ));
    }
    let hash = match (raw.sha256, env_name(raw.sha256_env, &at("sha256_env"))?) {
        (Some(hex), None) => {
            HashSource::Inline(api_key::parse_sha256_hex(hex.as_bytes()).ok_or_else(|| {
                ConfigError::invalid(at("sha256"), "must be 64 hex digits (the SHA-256 of the key)")
            })?)
        }
        (None, Some(env)) => HashSource::Env(env),
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(at("sha256"), "takes either sha256 or sha256_env"))
        }
        (None, None) => return Err(ConfigError::invalid(at("sha256_env"), "is required (or sha256)")),
    };
    Ok(ApiKey { id: raw.id, hash, window: window(raw.not_before, raw.not_after, at)? })
}

fn compile_policy(
    raw: RawSignaturePolicy,
    defaults: Option<&SignaturePolicy>,
    at: &str,
) -> Result<SignaturePolicy, ConfigError> {
    let field = |f: &str| format!("{at}.{f}");
    let base = defaults.cloned().unwrap_or(SignaturePolicy {
        components: DEFAULT_COMPONENTS.iter().map(|c| (*c).to_owned()).collect(),
        max_age_seconds: DEFAULT_MAX_AGE_SECONDS,
        clock_skew_seconds: DEFAULT_CLOCK_SKEW_SECONDS,
        require_nonce: true,
        max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        label: None,
        tag: None,
    });
    let components = match raw.components {
        None => base.components,
        Some(list) => {
            for (i, c) in list.iter().enumerate() {
                let ok = matches!(
                    c.as_str(),
                    "@method"
                        | "@target-uri"
                        | "@authority"
                        | "@scheme"
                        | "@request-target"
                        | "@path"
                        | "@query"
                ) || (!c.starts_with('@') && crate::error::is_lowercase_token(c));
                if !ok {
                    return Err(ConfigError::invalid(
                        format!("{}[{i}]", field("components")),
                        format!("{c:?} is not a lower-case field name or one of @method, @target-uri, @authority, @scheme, @request-target, @path, @query"),
                    ));
                }
            }
            list
        }
    };
    let policy = SignaturePolicy {
        components,
        max_age_seconds: raw.max_age_seconds.unwrap_or(base.max_age_seconds),
        clock_skew_seconds: raw.clock_skew_seconds.unwrap_or(base.clock_skew_seconds),
        require_nonce: raw.require_nonce.unwrap_or(base.require_nonce),
        max_body_bytes: raw.max_body_bytes.unwrap_or(base.max_body_bytes),
        label: raw.label.or(base.label),
        tag: raw.tag.or(base.tag),
    };
    if !(1..=86_400).contains(&policy.max_age_seconds) {
        return Err(ConfigError::invalid(field("max_age_seconds"), "must be between 1 and 86400"));
    }
    if policy.clock_skew_seconds > 300 {
        return Err(ConfigError::invalid(field("clock_skew_seconds"), "must be at most 300"));
    }
    if policy.max_body_bytes > MAX_MAX_BODY_BYTES {
        return Err(ConfigError::invalid(
            field("max_body_bytes"),
            format!("must be at most {MAX_MAX_BODY_BYTES} (the filter buffers the body to check it)"),
        ));
    }
    if let Some(label) = &policy.label {
        if sf::parse_dictionary(format!("{label}=()").as_bytes()).is_err() {
            return Err(ConfigError::invalid(
                field("label"),
                "must be a structured-field key (a-z, 0-9, '_', '-', '.', '*')",
            ));
        }
    }
    Ok(policy)
}

/// An Ed25519 public key from its PEM (SubjectPublicKeyInfo, RFC 8410): the DER is
/// the fixed 12-byte prefix of the Ed25519 algorithm identifier and 32 key bytes.
pub fn parse_ed25519_public_key(pem: &str) -> Result<VerifyingKey, String> {
    use base64::Engine as _;
    const SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    let body: String = pem
        .trim()
        .strip_prefix("-----BEGIN PUBLIC KEY-----")
        .and_then(|rest| rest.trim_end().strip_suffix("-----END PUBLIC KEY-----"))
        .ok_or("must be a PEM public key (-----BEGIN PUBLIC KEY----- … -----END PUBLIC KEY-----)")?
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| format!("has invalid base64: {e}"))?;
    let key: [u8; 32] = der
        .strip_prefix(&SPKI_PREFIX)
        .and_then(|key| key.try_into().ok())
        .ok_or("is not an Ed25519 public key (SubjectPublicKeyInfo with OID 1.3.101.112)")?;
    let key = VerifyingKey::from_bytes(&key).map_err(|_| "is not a point on Ed25519".to_owned())?;
    if key.is_weak() {
        return Err("is a small-order Ed25519 key".into());
    }
    Ok(key)
}

// ---------------------------------------------------------------------------------
// Secrets, from the environment.

/// The secrets of every partner key, read from the environment when the VM starts
/// (aligned with `Partners::clients` and their keys).
#[derive(Default)]
pub struct Keyring {
    /// Per partner, per signing key: the HMAC key (empty for Ed25519).
    hmac: Vec<Vec<Vec<u8>>>,
    /// Per partner, per API key: the SHA-256 of the key.
    api: Vec<Vec<[u8; 32]>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keyring { .. }")
    }
}

/// A secret the plugin cannot start without.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretError {
    pub variable: String,
    /// `partners.clients[0].keys[1].secret_env`.
    pub field: String,
    pub why: &'static str,
}

impl std::fmt::Display for SecretError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "environment variable {} (`{}`) {}", self.variable, self.field, self.why)
    }
}

impl Partners {
    /// Reads every secret from `env` (the VM's environment). The first variable that
    /// is missing or malformed is the error.
    pub fn resolve(&self, env: &mut dyn FnMut(&str) -> Option<Vec<u8>>) -> Result<Keyring, SecretError> {
        let mut keyring = Keyring::default();
        for (i, partner) in self.clients.iter().enumerate() {
            let mut hmac = Vec::with_capacity(partner.keys.len());
            for (j, key) in partner.keys.iter().enumerate() {
                hmac.push(match &key.material {
                    KeyMaterial::HmacSha256 { env: name } => {
                        let field = format!("partners.clients[{i}].keys[{j}].secret_env");
                        let error = |why| SecretError { variable: name.clone(), field: field.clone(), why };
                        let value = env(name).ok_or_else(|| error("is not set"))?;
                        let secret = decode_base64_secret(&value)
                            .ok_or_else(|| error("is not base64 (e.g. `openssl rand -base64 32`)"))?;
                        if secret.len() < MIN_HMAC_KEY_BYTES {
                            return Err(error(
                                "holds fewer than 32 bytes: an HMAC-SHA256 key needs 32 random bytes",
                            ));
                        }
                        secret
                    }
                    KeyMaterial::Ed25519(_) => Vec::new(),
                });
            }
            let mut api = Vec::with_capacity(partner.api_keys.len());
            for (j, key) in partner.api_keys.iter().enumerate() {
                api.push(match &key.hash {
                    HashSource::Inline(hash) => *hash,
                    HashSource::Env(name) => {
                        let field = format!("partners.clients[{i}].api_keys[{j}].sha256_env");
                        let error = |why| SecretError { variable: name.clone(), field: field.clone(), why };
                        let value = env(name).ok_or_else(|| error("is not set"))?;
                        api_key::parse_sha256_hex(value.trim_ascii())
                            .ok_or_else(|| error("is not a SHA-256 in hex (64 hex digits)"))?
                    }
                });
            }
            keyring.hmac.push(hmac);
            keyring.api.push(api);
        }
        Ok(keyring)
    }

    /// Every environment variable the configuration names, with its field.
    pub fn environment_variables(&self) -> Vec<(String, &str)> {
        let mut out = Vec::new();
        for (i, partner) in self.clients.iter().enumerate() {
            for (j, key) in partner.keys.iter().enumerate() {
                if let KeyMaterial::HmacSha256 { env } = &key.material {
                    out.push((format!("partners.clients[{i}].keys[{j}].secret_env"), env.as_str()));
                }
            }
            for (j, key) in partner.api_keys.iter().enumerate() {
                if let HashSource::Env(env) = &key.hash {
                    out.push((format!("partners.clients[{i}].api_keys[{j}].sha256_env"), env.as_str()));
                }
            }
        }
        out
    }
}

impl Keyring {
    pub fn hmac(&self, partner: usize, key: usize) -> Option<&[u8]> {
        self.hmac.get(partner)?.get(key).map(Vec::as_slice)
    }

    /// Every API key hash: (partner, key, hash).
    pub fn api_key_hashes(&self) -> impl Iterator<Item = (usize, usize, &[u8; 32])> {
        self.api.iter().enumerate().flat_map(|(p, keys)| keys.iter().enumerate().map(move |(k, h)| (p, k, h)))
    }
}

/// base64 (standard or URL-safe, padded or not), surrounding whitespace ignored:
/// what `openssl rand -base64 32` and Kubernetes tooling produce.
fn decode_base64_secret(value: &[u8]) -> Option<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use base64::Engine as _;
    let config = GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let text = value.trim_ascii();
    GeneralPurpose::new(&base64::alphabet::STANDARD, config)
        .decode(text)
        .or_else(|_| GeneralPurpose::new(&base64::alphabet::URL_SAFE, config).decode(text))
        .ok()
}

#[cfg(test)]
mod tests;
