//! The plugin configuration: raw JSON shapes, then validation into the runtime form.
//!
//! Parse, then compile: [`crate::json`] reads the JSON into the `Raw*` shapes (unknown
//! fields are errors, so a typo cannot silently disable a check), and
//! [`Config::from_json`] checks meaning and produces types in which the checked
//! invariants hold. Every error but a JSON syntax error names the field, as a JSON
//! path, and the reason.

use std::collections::HashSet;

use serde::Deserialize;

use serde_json::Value;

use crate::crypto::alg::Alg;
pub use crate::error::{header_name, ConfigError};
use crate::json::{self, FromJson};
use crate::keys::jwks;
pub use crate::keys::source::{JwksSource, RemoteJwks};
use crate::token::source::TokenSource;
pub use crate::verify::issuer::{Issuer, DEFAULT_ALGORITHMS};
use crate::verify::Trust;

/// Default largest accepted token (RFC 8725 recommends bounding input).
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;
pub const DEFAULT_REFRESH_SECONDS: u64 = 300;
pub const DEFAULT_TIMEOUT_MS: u64 = 2_000;
pub const DEFAULT_CLOCK_SKEW_SECONDS: u64 = 30;
pub const DEFAULT_MIN_REFETCH_SECONDS: u64 = 5;
pub const DEFAULT_MAX_STALE_SECONDS: u64 = 3_600;
pub const MAX_ISSUERS: usize = 16;

/// The validated plugin configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub issuers: Vec<Issuer>,
    pub token: TokenSource,
    pub forward: Forward,
    /// The `realm` of `WWW-Authenticate` challenges.
    pub realm: String,
    /// Per-identity quotas, if configured.
    pub quotas: Option<crate::quota::Quotas>,
    /// Route classes, authorization rules, deny lists and mode.
    pub routes: crate::policy::Routes,
    /// Metrics on/off and the bound on per-identity series.
    pub metrics: crate::observe::metrics::MetricsConfig,
    /// The per-request decision log.
    pub decision_log: crate::observe::decision_log::DecisionLogConfig,
    /// Client-certificate identities (SPIFFE), if configured.
    pub mtls: Option<crate::mtls::MtlsConfig>,
    /// Partners: RFC 9421 signatures and API keys (secrets resolved at VM start).
    pub partners: Option<crate::partners::Partners>,
    /// The per-source budget of failed signature checks; `None` when disabled.
    pub flood_guard: Option<crate::verify::flood_guard::FloodGuard>,
    /// Learned baselines, anomalies and outcome metrics; `None` when not configured.
    pub behaviour: Option<crate::behaviour::Behaviour>,
    /// The shared verified-token cache; `None` when `token_cache.max_entries` is 0.
    pub token_cache: Option<crate::verify::cache::TokenCache>,
    /// Which proxy-wasm host to expect (`auto`: probe it at start).
    pub host: crate::host::capabilities::HostSetting,
    /// Publish the decision as filter state (`wasm.nhi_*`) for access logs.
    pub filter_state: bool,
    /// The revocation feed, if configured.
    pub revocation: Option<crate::policy::revocation::RevocationFeed>,
    /// The identity inventory, if configured.
    pub inventory: Option<crate::observe::inventory::InventoryConfig>,
    /// A digest of the configuration bytes: cached verifications made under another
    /// configuration are not reused.
    pub fingerprint: u64,
    /// Some issuer or route turns DPoP on (see [`Config::dpop_in_use`]).
    pub dpop_enabled: bool,
    /// Test builds only: a request carrying this header crashes the VM.
    #[cfg(feature = "fault-injection")]
    pub panic_header: Option<String>,
    /// Test builds only: the proxy-wasm shell fails the host call a request names in
    /// this header (`set_request_header`, …), as a host might: the fail-closed path in
    /// a real Envoy, which never fails those calls itself.
    #[cfg(feature = "fault-injection")]
    pub fail_header: Option<String>,
}

/// Headers the filter sets on allowed requests (and strips from every request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub identity_header: String,
    pub issuer_header: String,
}

/// The plugin configuration as written. Every `Raw*` type of the configuration derives
/// `schemars::JsonSchema` under the `cli` feature: `make schema` generates the shipped
/// JSON Schema from them (`crate::schema`).
#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    issuers: Vec<RawIssuer>,
    #[serde(default)]
    token: RawToken,
    #[serde(default)]
    forward: RawForward,
    #[serde(default)]
    realm: Option<String>,
    #[serde(default)]
    quotas: Option<crate::quota::RawQuotas>,
    // The route members (see `route::RawRoutes`): serde cannot combine `flatten`
    // with `deny_unknown_fields`, so they are listed here.
    #[serde(default)]
    routes: Option<Vec<crate::policy::RawRoute>>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    deny: Option<crate::policy::RawDeny>,
    #[serde(default)]
    client_header: Option<String>,
    #[serde(default)]
    default_audience: Option<String>,
    #[serde(default)]
    metrics: Option<crate::observe::metrics::RawMetrics>,
    #[serde(default)]
    decision_log: Option<crate::observe::decision_log::RawDecisionLog>,
    #[serde(default)]
    mtls: Option<crate::mtls::RawMtls>,
    /// Partners without an identity provider: signed requests and API keys.
    #[serde(default)]
    partners: Option<crate::partners::RawPartners>,
    #[serde(default)]
    token_cache: Option<crate::verify::cache::RawTokenCache>,
    #[serde(default)]
    flood_guard: Option<crate::verify::flood_guard::RawFloodGuard>,
    #[serde(default)]
    behaviour: Option<crate::behaviour::RawBehaviour>,
    #[serde(default)]
    host: crate::host::capabilities::HostSetting,
    /// Publish the decision as filter state for access logs (six host calls per request).
    #[serde(default)]
    filter_state: bool,
    /// A revocation feed, fetched like a JWKS and applied without a reload.
    #[serde(default)]
    revocation: Option<crate::policy::revocation::RawRevocation>,
    /// The identity inventory: who was seen, when, how often.
    #[serde(default)]
    inventory: Option<crate::observe::inventory::RawInventory>,
    #[cfg(feature = "fault-injection")]
    #[serde(default)]
    fault_injection: Option<RawFaultInjection>,
}

/// `fault_injection` (test builds only).
#[cfg(feature = "fault-injection")]
#[derive(Deserialize, Default)]
#[cfg_attr(test, derive(Debug, PartialEq))]
#[serde(deny_unknown_fields)]
struct RawFaultInjection {
    #[serde(default)]
    panic_header: Option<String>,
    #[serde(default)]
    fail_header: Option<String>,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    name: String,
    issuer: String,
    audiences: Vec<String>,
    /// Required unless `discovery` locates the keys.
    jwks: Option<RawJwks>,
    algorithms: Option<Vec<String>>,
    clock_skew_seconds: Option<u64>,
    #[serde(default)]
    discovery: Option<crate::keys::discovery::RawDiscovery>,
    #[serde(default)]
    profile: Option<crate::profile::RawProfile>,
    #[serde(default)]
    typ: Option<crate::token::typ::RawTyp>,
    #[serde(default)]
    claims_to_headers: Option<crate::claims::headers::RawClaimsToHeaders>,
    /// Needs the `mtls` block: a trusted client certificate must come with every token.
    #[serde(default)]
    require_client_certificate: bool,
    /// Needs the `mtls` block: tokens must be certificate-bound (`cnf.x5t#S256`).
    #[serde(default)]
    require_bound_tokens: bool,
    /// Needs the `mtls` block: `sub` must equal the client certificate's identity.
    #[serde(default)]
    bind_subject_to_certificate: bool,
    /// DPoP (RFC 9449) sender-constrained tokens: mode, proof lifetime, algorithms,
    /// nonces, replay table size.
    #[serde(default)]
    dpop: Option<crate::dpop::RawDpop>,
}

#[derive(Deserialize, Default)]
#[cfg_attr(test, derive(Debug, PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawJwks {
    cluster: Option<String>,
    authority: Option<String>,
    path: Option<String>,
    refresh_seconds: Option<u64>,
    timeout_ms: Option<u64>,
    min_refetch_seconds: Option<u64>,
    max_stale_seconds: Option<u64>,
    inline: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawToken {
    #[serde(default = "default_token_header")]
    header: String,
    #[serde(default = "default_token_prefix")]
    prefix: String,
    #[serde(default = "default_max_token_bytes")]
    max_bytes: usize,
    #[serde(default)]
    forward: bool,
}

impl Default for RawToken {
    fn default() -> Self {
        RawToken {
            header: default_token_header(),
            prefix: default_token_prefix(),
            max_bytes: default_max_token_bytes(),
            forward: false,
        }
    }
}

fn default_token_header() -> String {
    "authorization".into()
}
fn default_token_prefix() -> String {
    "Bearer ".into()
}
fn default_max_token_bytes() -> usize {
    DEFAULT_MAX_TOKEN_BYTES
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawForward {
    #[serde(default = "default_identity_header")]
    identity_header: String,
    #[serde(default = "default_issuer_header")]
    issuer_header: String,
}

impl Default for RawForward {
    fn default() -> Self {
        RawForward { identity_header: default_identity_header(), issuer_header: default_issuer_header() }
    }
}

fn default_identity_header() -> String {
    "x-nhi-identity".into()
}
fn default_issuer_header() -> String {
    "x-nhi-issuer".into()
}

impl FromJson for RawConfig {
    fn from_json(value: Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawConfig {
            issuers: o.required("issuers"),
            token: o.or_default("token"),
            forward: o.or_default("forward"),
            realm: o.optional("realm"),
            quotas: o.optional("quotas"),
            routes: o.optional("routes"),
            mode: o.optional("mode"),
            deny: o.optional("deny"),
            client_header: o.optional("client_header"),
            default_audience: o.optional("default_audience"),
            metrics: o.optional("metrics"),
            decision_log: o.optional("decision_log"),
            mtls: o.optional("mtls"),
            partners: o.optional("partners"),
            token_cache: o.optional("token_cache"),
            flood_guard: o.optional("flood_guard"),
            behaviour: o.optional("behaviour"),
            host: o.or_default("host"),
            filter_state: o.or_default("filter_state"),
            revocation: o.optional("revocation"),
            inventory: o.optional("inventory"),
            #[cfg(feature = "fault-injection")]
            fault_injection: o.optional("fault_injection"),
        })
    }
}

#[cfg(feature = "fault-injection")]
impl FromJson for RawFaultInjection {
    fn from_json(value: Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawFaultInjection {
            panic_header: o.optional("panic_header"),
            fail_header: o.optional("fail_header"),
        })
    }
}

impl FromJson for RawIssuer {
    fn from_json(value: Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawIssuer {
            name: o.required("name"),
            issuer: o.required("issuer"),
            audiences: o.required("audiences"),
            jwks: o.optional("jwks"),
            algorithms: o.optional("algorithms"),
            clock_skew_seconds: o.optional("clock_skew_seconds"),
            discovery: o.optional("discovery"),
            profile: o.optional("profile"),
            typ: o.optional("typ"),
            claims_to_headers: o.optional("claims_to_headers"),
            require_client_certificate: o.or_default("require_client_certificate"),
            require_bound_tokens: o.or_default("require_bound_tokens"),
            bind_subject_to_certificate: o.or_default("bind_subject_to_certificate"),
            dpop: o.optional("dpop"),
        })
    }
}

impl FromJson for RawJwks {
    fn from_json(value: Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawJwks {
            cluster: o.optional("cluster"),
            authority: o.optional("authority"),
            path: o.optional("path"),
            refresh_seconds: o.optional("refresh_seconds"),
            timeout_ms: o.optional("timeout_ms"),
            min_refetch_seconds: o.optional("min_refetch_seconds"),
            max_stale_seconds: o.optional("max_stale_seconds"),
            inline: o.optional("inline"),
        })
    }
}

impl FromJson for RawToken {
    fn from_json(value: Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawToken {
            header: o.or_else("header", default_token_header),
            prefix: o.or_else("prefix", default_token_prefix),
            max_bytes: o.or_else("max_bytes", default_max_token_bytes),
            forward: o.or_default("forward"),
        })
    }
}

impl FromJson for RawForward {
    fn from_json(value: Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawForward {
            identity_header: o.or_else("identity_header", default_identity_header),
            issuer_header: o.or_else("issuer_header", default_issuer_header),
        })
    }
}

impl Config {
    /// Every header some issuer's `claims_to_headers` sets, once each: they are
    /// removed from every request, whichever issuer (if any) it turns out to be for.
    pub fn claim_headers(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();

        for rule in self.issuers.iter().flat_map(|i| &i.claims_to_headers) {
            if !names.contains(&rule.header.as_str()) {
                names.push(&rule.header);
            }
        }
        names
    }
}

impl Config {
    /// Every request header the filter sets, and the partners' API key header: client
    /// copies of them are removed from every request, whatever route or credential it
    /// turns out to have (an API key is a secret the upstream never sees, also when a
    /// token or a signature authenticated the request).
    pub fn managed_headers(&self) -> Vec<&str> {
        [self.forward.identity_header.as_str(), self.forward.issuer_header.as_str()]
            .into_iter()
            .chain(self.routes.managed_headers())
            .chain(self.claim_headers())
            .chain(self.mtls.as_ref().map(|m| m.identity_header.as_str()))
            .chain(self.behaviour.as_ref().map(|_| crate::behaviour::ANOMALY_HEADER))
            .chain([crate::dpop::JKT_HEADER])
            .chain(self.partners.as_ref().and_then(|p| p.api_key_header.as_deref()))
            .collect()
    }

    /// Whether any issuer or route turns DPoP on: only then is the `DPoP` scheme
    /// read, and the request's scheme and proof header looked at.
    pub fn dpop_in_use(&self) -> bool {
        self.dpop_enabled
    }

    /// The DPoP mode for a token of `issuer` on `route` (the route's override wins).
    pub fn dpop_mode(&self, issuer: usize, route: Option<&crate::policy::Route>) -> crate::dpop::Mode {
        route
            .and_then(|r| r.dpop)
            .or_else(|| self.issuers.get(issuer).map(|i| i.dpop.mode))
            .unwrap_or_default()
    }

    /// Parses and validates the plugin configuration bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        let value = json::parse(bytes)?;
        #[cfg(test)]
        tests::reads_as_serde_does(&value);
        let raw = RawConfig::from_json(value, "")?;
        let mut config = compile(raw)?;
        config.fingerprint = crate::hash::fnv1a64(bytes);
        Ok(config)
    }

    pub fn issuer_by_iss(&self, iss: &str) -> Option<(usize, &Issuer)> {
        self.trust().issuer_by_iss(iss)
    }

    /// What tokens are verified against (see [`Trust`]).
    pub fn trust(&self) -> Trust<'_> {
        Trust {
            issuers: &self.issuers,
            max_token_bytes: self.token.max_bytes,
            cache: self.token_cache.as_ref(),
            fingerprint: self.fingerprint,
        }
    }
}

fn compile(raw: RawConfig) -> Result<Config, ConfigError> {
    if raw.issuers.is_empty() && raw.partners.is_none() {
        return Err(ConfigError::invalid("issuers", "must list at least one issuer"));
    }
    if raw.issuers.len() > MAX_ISSUERS {
        return Err(ConfigError::invalid("issuers", format!("lists more than {MAX_ISSUERS} issuers")));
    }
    let mut names = HashSet::new();
    let mut isses = HashSet::new();
    let mut issuers = Vec::with_capacity(raw.issuers.len());
    for (i, raw_issuer) in raw.issuers.into_iter().enumerate() {
        let at = |field: &str| format!("issuers[{i}].{field}");
        let issuer = compile_issuer(raw_issuer, &at)?;
        if !names.insert(issuer.name.clone()) {
            return Err(ConfigError::invalid(
                at("name"),
                format!("{:?} is used by another issuer", issuer.name),
            ));
        }
        if !isses.insert(issuer.issuer.clone()) {
            return Err(ConfigError::invalid(
                at("issuer"),
                format!("{:?} is configured twice", issuer.issuer),
            ));
        }
        issuers.push(issuer);
    }

    let token = TokenSource {
        header: header_name("token.header", &raw.token.header)?,
        prefix: raw.token.prefix,
        max_bytes: raw.token.max_bytes,
        forward: raw.token.forward,
    };
    if !(256..=64 * 1024).contains(&token.max_bytes) {
        return Err(ConfigError::invalid("token.max_bytes", "must be between 256 and 65536"));
    }
    let forward = Forward {
        identity_header: header_name("forward.identity_header", &raw.forward.identity_header)?,
        issuer_header: header_name("forward.issuer_header", &raw.forward.issuer_header)?,
    };
    if forward.identity_header == forward.issuer_header {
        return Err(ConfigError::invalid(
            "forward.issuer_header",
            "must differ from forward.identity_header",
        ));
    }
    for (field, name) in [
        ("forward.identity_header", &forward.identity_header),
        ("forward.issuer_header", &forward.issuer_header),
    ] {
        if *name == token.header {
            return Err(ConfigError::invalid(field, "must differ from token.header"));
        }
    }
    let realm = raw.realm.unwrap_or_else(|| "nhi-guard".into());
    if realm.is_empty() || realm.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
        return Err(ConfigError::invalid(
            "realm",
            "must be non-empty, without quotes, backslashes or control characters",
        ));
    }
    let quotas = match raw.quotas {
        None => None,
        Some(raw) => Some(crate::quota::compile(raw, "quotas")?),
    };
    let mtls = raw.mtls.map(|m| crate::mtls::compile(m, "mtls")).transpose()?;
    let claim_header_names: Vec<String> =
        issuers.iter().flat_map(|i| &i.claims_to_headers).map(|r| r.header.clone()).collect();
    let partners = match raw.partners {
        None => None,
        Some(raw_partners) => {
            let mut taken: Vec<(&str, &str)> = vec![
                ("token.header", token.header.as_str()),
                ("forward.identity_header", forward.identity_header.as_str()),
                ("forward.issuer_header", forward.issuer_header.as_str()),
                ("the shadow decision header", crate::error::SHADOW_DECISION_HEADER),
            ];
            taken.extend(raw.client_header.as_deref().map(|h| ("client_header", h)));
            taken.push(("the default client header", crate::policy::DEFAULT_CLIENT_HEADER));
            taken.extend(claim_header_names.iter().map(|h| ("a claims_to_headers header", h.as_str())));
            taken.extend(mtls.as_ref().map(|m| ("mtls.identity_header", m.identity_header.as_str())));
            let partners = crate::partners::compile(raw_partners, "partners", &taken)?;
            if issuers.iter().any(|i| i.name == partners.issuer_name)
                || mtls.as_ref().is_some_and(|m| m.issuer_name == partners.issuer_name)
            {
                return Err(ConfigError::invalid(
                    "partners.issuer_name",
                    format!(
                        "{:?} is the name of another issuer; partners need their own",
                        partners.issuer_name
                    ),
                ));
            }
            Some(partners)
        }
    };
    let mut issuer_names: Vec<&str> = issuers.iter().map(|i| i.name.as_str()).collect();
    // Certificate-only identities carry the mtls issuer name: allow rules may name it.
    issuer_names.extend(mtls.as_ref().map(|m| m.issuer_name.as_str()));
    // And partners theirs.
    issuer_names.extend(partners.as_ref().map(|p| p.issuer_name.as_str()));
    let raw_routes = crate::policy::RawRoutes {
        routes: raw.routes,
        mode: raw.mode,
        deny: raw.deny,
        client_header: raw.client_header,
        default_audience: raw.default_audience,
    };
    let routes = crate::policy::compile(raw_routes, &issuer_names)?;
    for (field, name) in [
        ("forward.identity_header", &forward.identity_header),
        ("forward.issuer_header", &forward.issuer_header),
        ("token.header", &token.header),
    ] {
        if routes.client_header == *name {
            return Err(ConfigError::invalid("client_header", format!("must differ from {field}")));
        }
    }
    check_claim_headers(
        &issuers,
        &[
            ("forward.identity_header", &forward.identity_header),
            ("forward.issuer_header", &forward.issuer_header),
            ("token.header", &token.header),
            ("client_header", &routes.client_header),
            ("the shadow decision header", crate::error::SHADOW_DECISION_HEADER),
            ("the DPoP key header", crate::dpop::JKT_HEADER),
            ("the DPoP proof header", crate::dpop::PROOF_HEADER),
        ],
    )?;
    if let Some(quotas) = &quotas {
        for (field, route) in quotas.route_references() {
            if !routes.routes().iter().any(|r| r.name == route) {
                return Err(ConfigError::invalid(
                    field,
                    format!("names route {route:?}, which is not defined"),
                ));
            }
        }
    }
    let metrics = crate::observe::metrics::compile(raw.metrics, "metrics")?;
    let decision_log = crate::observe::decision_log::compile(raw.decision_log, "decision_log")?;
    let token_cache = crate::verify::cache::compile(raw.token_cache, "token_cache")?;
    let flood_guard = crate::verify::flood_guard::compile(raw.flood_guard, "flood_guard")?;
    let behaviour = raw.behaviour.map(|b| crate::behaviour::compile(b, "behaviour")).transpose()?;
    check_host(raw.host, &issuers, mtls.is_some())?;
    let revocation =
        raw.revocation.map(|r| crate::policy::revocation::compile(r, "revocation")).transpose()?;
    let inventory = raw.inventory.map(|i| crate::observe::inventory::compile(i, "inventory")).transpose()?;
    #[cfg(feature = "fault-injection")]
    let fault_injection = raw.fault_injection.unwrap_or_default();
    let config = Config {
        issuers,
        token,
        forward,
        realm,
        quotas,
        routes,
        metrics,
        decision_log,
        mtls,
        partners,
        token_cache,
        flood_guard,
        behaviour,
        host: raw.host,
        filter_state: raw.filter_state,
        revocation,
        inventory,
        fingerprint: 0,
        dpop_enabled: false,
        #[cfg(feature = "fault-injection")]
        panic_header: fault_injection.panic_header,
        #[cfg(feature = "fault-injection")]
        fail_header: fault_injection.fail_header,
    };
    check_mtls(&config)?;
    check_partner_routes(&config)?;
    let mut config = config;
    config.dpop_enabled = config.routes.any_dpop_override()
        || config.issuers.iter().any(|i| i.dpop.mode != crate::dpop::Mode::Off);
    Ok(config)
}

/// `require_signature` needs partners that can sign.
fn check_partner_routes(config: &Config) -> Result<(), ConfigError> {
    let signatures = config.partners.as_ref().is_some_and(|p| p.signatures());
    for (i, route) in config.routes.routes().iter().enumerate() {
        if route.require_signature && !signatures {
            return Err(ConfigError::invalid(
                format!("routes[{i}].require_signature"),
                "needs `partners` with signing keys",
            ));
        }
    }
    Ok(())
}

/// What `host: apisix` cannot do: APISIX's proxy-wasm host exposes no client
/// certificate to filters, and DPoP nonces need shared data. (OIDC discovery works
/// there as the keys do: the request that needs them makes both callouts.)
fn check_host(
    host: crate::host::capabilities::HostSetting,
    issuers: &[Issuer],
    mtls: bool,
) -> Result<(), ConfigError> {
    if host != crate::host::capabilities::HostSetting::Apisix {
        return Ok(());
    }
    if mtls {
        return Err(ConfigError::invalid(
            "mtls",
            "is not available with `host: apisix` (its proxy-wasm host exposes no client certificate)",
        ));
    }
    for (i, issuer) in issuers.iter().enumerate() {
        if issuer.dpop.nonce {
            return Err(ConfigError::invalid(
                format!("issuers[{i}].dpop.nonce"),
                "is not available with `host: apisix`: nonces are shared across workers through shared data, which its host lacks",
            ));
        }
    }
    Ok(())
}

fn compile_issuer(raw: RawIssuer, at: &dyn Fn(&str) -> String) -> Result<Issuer, ConfigError> {
    crate::error::label_name(at("name"), &raw.name)?;
    if raw.issuer.is_empty() {
        return Err(ConfigError::invalid(at("issuer"), "must not be empty"));
    }
    if raw.audiences.is_empty() || raw.audiences.iter().any(String::is_empty) {
        return Err(ConfigError::invalid(at("audiences"), "must list at least one non-empty audience"));
    }
    let algorithms = match raw.algorithms {
        None => DEFAULT_ALGORITHMS.to_vec(),
        Some(names) if names.is_empty() => {
            return Err(ConfigError::invalid(at("algorithms"), "must list at least one algorithm"))
        }
        Some(names) => {
            let mut algs = Vec::with_capacity(names.len());
            for (j, name) in names.iter().enumerate() {
                let alg = name.parse::<Alg>().map_err(|_| {
                    let why = if name.starts_with("HS") {
                        "is symmetric (HMAC): a gateway cannot hold issuers' shared secrets; use an asymmetric algorithm".to_owned()
                    } else {
                        format!("{name:?} is not one of {}", Alg::ALL.map(Alg::name).join(", "))
                    };
                    ConfigError::invalid(format!("{}[{j}]", at("algorithms")), why)
                })?;
                if !algs.contains(&alg) {
                    algs.push(alg);
                }
            }
            algs
        }
    };
    let clock_skew_seconds = raw.clock_skew_seconds.unwrap_or(DEFAULT_CLOCK_SKEW_SECONDS);
    if clock_skew_seconds > 300 {
        return Err(ConfigError::invalid(at("clock_skew_seconds"), "must be at most 300"));
    }
    let profile = crate::profile::compile(raw.profile, &raw.issuer, &raw.audiences, at)?;
    let typ = match raw.typ {
        None => profile.default_typ(),
        Some(raw_typ) => {
            let listed = matches!(raw_typ, crate::token::typ::RawTyp::Many(_));
            let rule =
                crate::token::typ::TypRule::configured(&raw_typ.into_vec()).map_err(|(i, why)| match i {
                    Some(i) if listed => ConfigError::invalid(format!("{}[{i}]", at("typ")), why),
                    _ => ConfigError::invalid(at("typ"), why),
                })?;
            Some(rule)
        }
    };
    let claims_to_headers = compile_claims_to_headers(raw.claims_to_headers, at)?;
    let dpop = crate::dpop::config::compile(raw.dpop, at)?;
    let jwks = match raw.discovery {
        None => {
            let jwks =
                raw.jwks.ok_or_else(|| ConfigError::invalid(at("jwks"), "is required (or `discovery`)"))?;
            compile_jwks(jwks, profile.key_use(), at)?
        }
        Some(discovery) => compile_discovered_jwks(discovery, raw.jwks, at)?,
    };
    Ok(Issuer {
        name: raw.name,
        issuer: raw.issuer,
        audiences: raw.audiences,
        jwks,
        algorithms,
        clock_skew_seconds,
        profile,
        typ,
        claims_to_headers,
        certificate: crate::mtls::CertificatePolicy {
            require_client_certificate: raw.require_client_certificate,
            require_bound_tokens: raw.require_bound_tokens,
            bind_subject_to_certificate: raw.bind_subject_to_certificate,
        },
        dpop,
    })
}

/// `discovery` instead of `jwks.cluster`/`authority`/`path`: `jwks` then holds only
/// the refresh timing, and the remote source points at the discovery document.
fn compile_discovered_jwks(
    raw: crate::keys::discovery::RawDiscovery,
    timing: Option<RawJwks>,
    at: &dyn Fn(&str) -> String,
) -> Result<JwksSource, ConfigError> {
    let (endpoint, discovery) = crate::keys::discovery::compile(raw, at)?;
    let timing = timing.unwrap_or_default();
    if timing.cluster.is_some()
        || timing.authority.is_some()
        || timing.path.is_some()
        || timing.inline.is_some()
    {
        return Err(ConfigError::invalid(
            at("jwks"),
            "takes only refresh_seconds, timeout_ms, min_refetch_seconds and max_stale_seconds with \
             `discovery`: the discovery document says where the keys are",
        ));
    }
    let located = RawJwks {
        cluster: Some(endpoint.cluster),
        authority: Some(endpoint.authority),
        path: Some(endpoint.path),
        ..timing
    };
    match compile_jwks(located, crate::keys::jwks::KeyUse::Sig, at)? {
        JwksSource::Remote(remote) => {
            Ok(JwksSource::Remote(RemoteJwks { discovery: Some(discovery), ..remote }))
        }
        inline @ JwksSource::Inline(_) => Ok(inline),
    }
}

/// Request headers the filter owns besides the configured ones: a claim mapped to
/// one of them would remove it from every request.
const CLAIM_HEADER_RESERVED: [&str; 10] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-proto",
    "x-real-ip",
    "x-request-id",
];

fn compile_claims_to_headers(
    raw: Option<crate::claims::headers::RawClaimsToHeaders>,
    at: &dyn Fn(&str) -> String,
) -> Result<Vec<crate::claims::headers::ClaimHeader>, ConfigError> {
    use crate::claims::headers::{ClaimHeader, MAX_CLAIM_HEADERS};
    use crate::claims::path::valid_claim_path;
    let Some(map) = raw else { return Ok(Vec::new()) };
    if map.len() > MAX_CLAIM_HEADERS {
        return Err(ConfigError::invalid(
            at("claims_to_headers"),
            format!("maps more than {MAX_CLAIM_HEADERS} claims"),
        ));
    }
    let mut rules: Vec<ClaimHeader> = Vec::with_capacity(map.len());
    for (claim, header) in map {
        let field = format!("{}.{claim}", at("claims_to_headers"));
        if !valid_claim_path(&claim) {
            return Err(ConfigError::invalid(
                field,
                "must be keyed by a claim name or dotted path (at most 128 characters, 8 dots)",
            ));
        }
        let header = header_name(&field, &header)?;
        if CLAIM_HEADER_RESERVED.contains(&header.as_str()) || header.starts_with("x-envoy-") {
            return Err(ConfigError::invalid(
                field,
                format!(
                    "{header:?} is a standard or proxy header: claim headers are removed from every request"
                ),
            ));
        }
        if rules.iter().any(|r| r.header == header) {
            return Err(ConfigError::invalid(field, format!("{header:?} is already set from another claim")));
        }
        rules.push(ClaimHeader { claim, header });
    }
    Ok(rules)
}

/// Claim headers may not be a header the filter sets or reads itself (`taken`:
/// field and name).
fn check_claim_headers(issuers: &[Issuer], taken: &[(&str, &str)]) -> Result<(), ConfigError> {
    for (i, issuer) in issuers.iter().enumerate() {
        for rule in &issuer.claims_to_headers {
            if let Some((field, _)) = taken.iter().find(|(_, name)| *name == rule.header) {
                return Err(ConfigError::invalid(
                    format!("issuers[{i}].claims_to_headers.{}", rule.claim),
                    format!("must differ from {field}"),
                ));
            }
        }
    }
    Ok(())
}

fn compile_jwks(
    raw: RawJwks,
    key_use: crate::keys::jwks::KeyUse,
    at: &dyn Fn(&str) -> String,
) -> Result<JwksSource, ConfigError> {
    if let Some(inline) = raw.inline {
        if raw.cluster.is_some()
            || raw.authority.is_some()
            || raw.path.is_some()
            || raw.refresh_seconds.is_some()
            || raw.timeout_ms.is_some()
            || raw.min_refetch_seconds.is_some()
            || raw.max_stale_seconds.is_some()
        {
            return Err(ConfigError::invalid(
                at("jwks"),
                "takes either `inline` or `cluster` (with authority, path…), not both",
            ));
        }
        let bytes = serde_json::to_vec(&inline)
            .map_err(|e| ConfigError::invalid(at("jwks.inline"), e.to_string()))?;
        let parsed = jwks::parse_for(&bytes, key_use)
            .map_err(|e| ConfigError::invalid(at("jwks.inline"), e.to_string()))?;
        if let Some(skipped) = parsed.skipped.first() {
            return Err(ConfigError::invalid(at("jwks.inline"), format!("has an unusable {skipped}")));
        }
        return Ok(JwksSource::Inline(parsed.keys));
    }
    let cluster =
        raw.cluster.ok_or_else(|| ConfigError::invalid(at("jwks"), "needs `cluster` (or `inline`)"))?;
    if cluster.is_empty() {
        return Err(ConfigError::invalid(at("jwks.cluster"), "must not be empty"));
    }
    let authority = raw
        .authority
        .ok_or_else(|| ConfigError::invalid(at("jwks.authority"), "is required with `cluster`"))?;
    if authority.is_empty() || authority.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(ConfigError::invalid(at("jwks.authority"), "must be a host[:port]"));
    }
    let path = raw.path.ok_or_else(|| ConfigError::invalid(at("jwks.path"), "is required with `cluster`"))?;
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::invalid(at("jwks.path"), "must start with '/' and contain no spaces"));
    }
    let refresh_seconds = raw.refresh_seconds.unwrap_or(DEFAULT_REFRESH_SECONDS);
    if !(1..=86_400).contains(&refresh_seconds) {
        return Err(ConfigError::invalid(at("jwks.refresh_seconds"), "must be between 1 and 86400"));
    }
    let timeout_ms = raw.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if !(1..=60_000).contains(&timeout_ms) {
        return Err(ConfigError::invalid(at("jwks.timeout_ms"), "must be between 1 and 60000"));
    }
    let min_refetch_seconds =
        raw.min_refetch_seconds.unwrap_or(DEFAULT_MIN_REFETCH_SECONDS.min(refresh_seconds));
    if !(1..=refresh_seconds.max(1)).contains(&min_refetch_seconds) {
        return Err(ConfigError::invalid(
            at("jwks.min_refetch_seconds"),
            "must be between 1 and refresh_seconds",
        ));
    }
    let max_stale_seconds = raw.max_stale_seconds.unwrap_or(DEFAULT_MAX_STALE_SECONDS.max(refresh_seconds));
    if max_stale_seconds < refresh_seconds || max_stale_seconds > 7 * 86_400 {
        return Err(ConfigError::invalid(
            at("jwks.max_stale_seconds"),
            "must be at least refresh_seconds and at most 604800 (7 days)",
        ));
    }
    Ok(JwksSource::Remote(RemoteJwks {
        cluster,
        authority,
        path,
        refresh_seconds,
        timeout_ms,
        min_refetch_seconds,
        max_stale_seconds,
        discovery: None,
    }))
}

/// Relates the `mtls` block to the rest of the configuration: certificate flags
/// need it, its issuer name and header must not clash with others.
fn check_mtls(config: &Config) -> Result<(), ConfigError> {
    let Some(mtls) = &config.mtls else {
        for (i, issuer) in config.issuers.iter().enumerate() {
            if let Some(flag) = issuer.certificate.first_set() {
                return Err(ConfigError::invalid(
                    format!("issuers[{i}].{flag}"),
                    "needs the top-level `mtls` block",
                ));
            }
        }
        for (i, route) in config.routes.routes().iter().enumerate() {
            if let Some(flag) = route.certificate_flag() {
                return Err(ConfigError::invalid(
                    format!("routes[{i}].{flag}"),
                    "needs the top-level `mtls` block",
                ));
            }
        }
        return Ok(());
    };
    if config.issuers.iter().any(|i| i.name == mtls.issuer_name) {
        return Err(ConfigError::invalid(
            "mtls.issuer_name",
            format!(
                "{:?} is the name of a token issuer; certificate-only identities need their own",
                mtls.issuer_name
            ),
        ));
    }
    let taken = [
        ("token.header", config.token.header.as_str()),
        ("forward.identity_header", config.forward.identity_header.as_str()),
        ("forward.issuer_header", config.forward.issuer_header.as_str()),
        ("client_header", config.routes.client_header.as_str()),
        ("x-nhi-shadow-decision", crate::error::SHADOW_DECISION_HEADER),
        ("x-nhi-dpop-jkt", crate::dpop::JKT_HEADER),
    ];
    for (field, name) in taken {
        if mtls.identity_header == name {
            return Err(ConfigError::invalid("mtls.identity_header", format!("must differ from {field}")));
        }
    }
    if config.claim_headers().contains(&mtls.identity_header.as_str()) {
        return Err(ConfigError::invalid(
            "mtls.identity_header",
            "must differ from every claims_to_headers header",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Holds the configuration's reader to serde's derived one — whose attributes
    /// `make schema` publishes — on every configuration any test of the core reads
    /// through [`Config::from_json`] (hundreds, valid and not): both accept it, into
    /// equal `Raw*` values, or both refuse it. So what the filter accepts and the schema
    /// users validate against cannot drift apart.
    pub(super) fn reads_as_serde_does(value: &Value) {
        let ours = RawConfig::from_json(value.clone(), "");
        let serde = serde_json::from_value::<RawConfig>(value.clone());
        match (ours, serde) {
            (Ok(ours), Ok(serde)) => assert_eq!(ours, serde, "{value}"),
            (Err(_), Err(_)) => {}
            (ours, serde) => panic!("the reader and serde disagree on {value}:\n{ours:?}\n{serde:?}"),
        }
    }

    /// A document with every member `schema` allows (the published JSON Schema, which
    /// serde's attributes generate), taking alternative `pick` (modulo their number)
    /// wherever the schema offers several.
    fn sample(schema: &Value, definitions: &Value, pick: usize) -> Value {
        if let Some(name) = schema.get("$ref").and_then(Value::as_str).and_then(|r| r.rsplit('/').next()) {
            return sample(&definitions[name], definitions, pick);
        }
        if let Some(value) = schema.get("const") {
            return value.clone();
        }
        if let Some(values) = schema.get("enum").and_then(Value::as_array) {
            return values[pick % values.len()].clone();
        }
        for key in ["oneOf", "anyOf", "allOf"] {
            if let Some(alternatives) = schema.get(key).and_then(Value::as_array) {
                // `null` is how the schema says a member may be absent: not an alternative.
                let present: Vec<&Value> = alternatives.iter().filter(|a| a["type"] != "null").collect();
                return sample(present[pick % present.len()], definitions, pick);
            }
        }
        let kind = match &schema["type"] {
            Value::String(kind) => kind.as_str(),
            Value::Array(kinds) => kinds.iter().filter_map(Value::as_str).find(|k| *k != "null").unwrap(),
            // Any JSON value (`serde_json::Value` members).
            _ => return json!({"any": [1]}),
        };
        match kind {
            "object" => {
                let mut members = serde_json::Map::new();
                for (name, member) in schema["properties"].as_object().into_iter().flatten() {
                    members.insert(name.clone(), sample(member, definitions, pick));
                }
                if let Some(values @ Value::Object(_)) = schema.get("additionalProperties") {
                    members.insert("some-key".into(), sample(values, definitions, pick));
                }
                Value::Object(members)
            }
            "array" => json!([sample(&schema["items"], definitions, pick)]),
            "string" => json!("x"),
            "integer" => json!(7),
            "number" => json!(0.5),
            "boolean" => json!(true),
            other => panic!("schema type {other}"),
        }
    }

    #[test]
    fn every_member_of_the_published_schema_is_read_as_serde_reads_it() {
        // Tests that read a whole configuration are compared with serde's reader as they
        // go (reads_as_serde_does), but many members only appear in tests of their own
        // block. Here every member the schema publishes is present at once, in every
        // alternative of each choice (profiles, `typ`, service accounts, times…): a
        // member the reader misspelt, or forgot, would be refused where serde accepts it.
        let schema: Value =
            serde_json::from_str(include_str!("../../envoy/schema/nhi-guard.schema.json")).unwrap();
        fn widest(schema: &Value) -> usize {
            match schema {
                Value::Object(members) => members
                    .iter()
                    .map(|(key, v)| match (key.as_str(), v) {
                        ("oneOf" | "anyOf" | "enum", Value::Array(a)) => a.len().max(widest(v)),
                        _ => widest(v),
                    })
                    .max()
                    .unwrap_or(1),
                Value::Array(items) => items.iter().map(widest).max().unwrap_or(1),
                _ => 1,
            }
        }
        assert!(widest(&schema) >= 4, "the profile alone has four alternatives");
        for pick in 0..widest(&schema) {
            let document = sample(&schema, &schema["definitions"], pick);
            let ours = RawConfig::from_json(document.clone(), "");
            let serde = serde_json::from_value::<RawConfig>(document.clone());
            match (ours, serde) {
                (Ok(ours), Ok(serde)) => assert_eq!(ours, serde, "{document}"),
                (ours, serde) => panic!("{document}\nours: {ours:?}\nserde: {serde:?}"),
            }
        }
    }

    #[test]
    fn the_comparison_with_serde_sees_a_member_read_wrongly() {
        // A reader that dropped `realm` would be caught (tried on the real reader: the
        // test that sets a realm then failed in reads_as_serde_does).
        let v = json!({"issuers": [], "realm": "r"});
        let mut ours = RawConfig::from_json(v.clone(), "").unwrap();
        assert_eq!(ours, serde_json::from_value::<RawConfig>(v.clone()).unwrap());
        ours.realm = None;
        assert_ne!(ours, serde_json::from_value::<RawConfig>(v).unwrap());
    }

    fn base() -> serde_json::Value {
        json!({
            "issuers": [{
                "name": "ci",
                "issuer": "https://issuer.example",
                "audiences": ["nhi-gateway"],
                "jwks": { "cluster": "jwks_ci", "authority": "issuer.example", "path": "/jwks.json",
                          "refresh_seconds": 300, "timeout_ms": 2000 },
                "algorithms": ["RS256", "ES256", "EdDSA"],
                "clock_skew_seconds": 30
            }],
            "token": { "header": "authorization", "prefix": "Bearer " },
            "forward": { "identity_header": "x-nhi-identity", "issuer_header": "x-nhi-issuer" }
        })
    }

    fn compile_value(v: serde_json::Value) -> Result<Config, ConfigError> {
        Config::from_json(&serde_json::to_vec(&v).unwrap())
    }

    fn invalid_field(v: serde_json::Value) -> String {
        match compile_value(v) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn documented_example_compiles() {
        let cfg = compile_value(base()).unwrap();
        let issuer = &cfg.issuers[0];
        assert_eq!(issuer.algorithms, vec![Alg::Rs256, Alg::Es256, Alg::EdDsa]);
        assert_eq!(cfg.token.max_bytes, DEFAULT_MAX_TOKEN_BYTES);
        assert_eq!(cfg.realm, "nhi-guard");
        match &issuer.jwks {
            JwksSource::Remote(r) => assert_eq!(r.cluster, "jwks_ci"),
            JwksSource::Inline(_) => panic!("expected remote"),
        }
    }

    #[test]
    fn defaults_fill_token_and_forward() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("token");
        v.as_object_mut().unwrap().remove("forward");
        let cfg = compile_value(v).unwrap();
        assert_eq!(cfg.token.header, "authorization");
        assert_eq!(cfg.token.prefix, "Bearer ");
        assert_eq!(cfg.forward.identity_header, "x-nhi-identity");
    }

    /// The plugin JSON embedded in `envoy/envoy.yaml` (the block scalar after `value: |`).
    fn shipped_plugin_json() -> String {
        let yaml = include_str!("../../envoy/envoy.yaml");
        let mut lines = yaml.lines().skip_while(|l| !l.trim_end().ends_with("value: |"));
        let marker = lines.next().unwrap();
        let indent = marker.len() - marker.trim_start().len();
        lines
            .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn shipped_envoy_config_compiles() {
        let cfg = Config::from_json(shipped_plugin_json().as_bytes()).unwrap();
        assert_eq!(cfg.issuers[0].name, "demo");
    }

    #[test]
    fn unknown_fields_are_refused_by_their_path_listing_the_known_ones() {
        let mut v = base();
        v["issuers"][0]["audience"] = json!("typo");
        let err = compile_value(v).unwrap_err();
        assert_eq!(err.field(), "issuers[0].audience");
        assert!(
            err.reason().starts_with("is not a known field (known: name, issuer, audiences, jwks,"),
            "{err}"
        );
        let mut v = base();
        v["tokens"] = json!({});
        assert_eq!(compile_value(v).unwrap_err().field(), "tokens");
    }

    #[test]
    fn wrong_shapes_and_missing_members_are_named_by_their_path() {
        let cases = [
            (json!({"issuers": {}}), "issuers", "must be an array, not an object"),
            (json!({"token": {}}), "issuers", "is required"),
            (json!([]), "", "must be an object, not an array"),
        ];
        for (v, field, reason) in cases {
            let err = compile_value(v.clone()).unwrap_err();
            assert_eq!((err.field(), err.reason()), (field, reason), "{v}");
        }
        let mut v = base();
        v["issuers"][0]["jwks"]["timeout_ms"] = json!("2s");
        let err = compile_value(v).unwrap_err();
        assert_eq!(
            (err.field(), err.reason()),
            ("issuers[0].jwks.timeout_ms", r#"must be a whole number, 0 or more, not "2s""#)
        );
        let mut v = base();
        v["issuers"][0].as_object_mut().unwrap().remove("issuer");
        assert_eq!(compile_value(v).unwrap_err().field(), "issuers[0].issuer");
        let mut v = base();
        v["token"] = json!({"forward": null});
        assert_eq!(compile_value(v).unwrap_err().field(), "token.forward");
    }

    #[test]
    fn not_json_is_a_syntax_error() {
        assert!(matches!(Config::from_json(b"{"), Err(ConfigError::Syntax(_))));
        assert!(matches!(Config::from_json(b""), Err(ConfigError::Syntax(_))));
    }

    #[test]
    fn each_invalid_field_is_named() {
        type Mutation = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("issuers", Box::new(|v| v["issuers"] = json!([]))),
            ("issuers[0].name", Box::new(|v| v["issuers"][0]["name"] = json!("Has Space"))),
            ("issuers[0].issuer", Box::new(|v| v["issuers"][0]["issuer"] = json!(""))),
            ("issuers[0].audiences", Box::new(|v| v["issuers"][0]["audiences"] = json!([]))),
            ("issuers[0].algorithms", Box::new(|v| v["issuers"][0]["algorithms"] = json!([]))),
            (
                "issuers[0].algorithms[1]",
                Box::new(|v| v["issuers"][0]["algorithms"] = json!(["RS256", "HS256"])),
            ),
            ("issuers[0].algorithms[0]", Box::new(|v| v["issuers"][0]["algorithms"] = json!(["none"]))),
            (
                "issuers[0].clock_skew_seconds",
                Box::new(|v| v["issuers"][0]["clock_skew_seconds"] = json!(3600)),
            ),
            ("issuers[0].jwks", Box::new(|v| v["issuers"][0]["jwks"] = json!({}))),
            (
                "issuers[0].jwks.authority",
                Box::new(|v| {
                    v["issuers"][0]["jwks"].as_object_mut().unwrap().remove("authority");
                }),
            ),
            ("issuers[0].jwks.path", Box::new(|v| v["issuers"][0]["jwks"]["path"] = json!("jwks.json"))),
            (
                "issuers[0].jwks.refresh_seconds",
                Box::new(|v| v["issuers"][0]["jwks"]["refresh_seconds"] = json!(0)),
            ),
            ("issuers[0].jwks.timeout_ms", Box::new(|v| v["issuers"][0]["jwks"]["timeout_ms"] = json!(0))),
            (
                "issuers[0].jwks.min_refetch_seconds",
                Box::new(|v| v["issuers"][0]["jwks"]["min_refetch_seconds"] = json!(301)),
            ),
            (
                "issuers[0].jwks.max_stale_seconds",
                Box::new(|v| v["issuers"][0]["jwks"]["max_stale_seconds"] = json!(10)),
            ),
            (
                "issuers[0].jwks.inline",
                Box::new(|v| v["issuers"][0]["jwks"] = json!({"inline": {"keys": []}})),
            ),
            ("token.header", Box::new(|v| v["token"]["header"] = json!("Authorization"))),
            ("token.max_bytes", Box::new(|v| v["token"]["max_bytes"] = json!(10))),
            ("forward.identity_header", Box::new(|v| v["forward"]["identity_header"] = json!(":path"))),
            ("forward.issuer_header", Box::new(|v| v["forward"]["issuer_header"] = json!("x-nhi-identity"))),
            (
                "forward.identity_header",
                Box::new(|v| v["forward"]["identity_header"] = json!("authorization")),
            ),
            ("forward.identity_header", Box::new(|v| v["forward"]["identity_header"] = json!("host"))),
            ("realm", Box::new(|v| v["realm"] = json!("a\"b"))),
        ];
        for (field, mutate) in cases {
            let mut v = base();
            mutate(&mut v);
            assert_eq!(invalid_field(v), field);
        }
    }

    #[test]
    fn duplicate_issuers_are_refused() {
        let mut v = base();
        let second = v["issuers"][0].clone();
        v["issuers"].as_array_mut().unwrap().push(second.clone());
        assert_eq!(invalid_field(v.clone()), "issuers[1].name");
        v["issuers"][1]["name"] = json!("other");
        assert_eq!(invalid_field(v), "issuers[1].issuer");
    }

    #[test]
    fn inline_and_cluster_are_exclusive() {
        let mut v = base();
        v["issuers"][0]["jwks"]["inline"] = json!({"keys": []});
        assert_eq!(invalid_field(v), "issuers[0].jwks");
    }

    #[test]
    fn inline_roca_weak_key_is_refused_at_load_naming_the_field_and_kid() {
        // A key pasted into the configuration is refused outright, not skipped: nobody
        // watches a warning for a key that never changes.
        let keys = crate::testkit::jwks();
        let ordinary = keys["keys"][0].clone();
        let roca = json!({"kty": "RSA", "kid": "tpm-1", "n": crate::testkit::WYCHEPROOF_ROCA_N, "e": "AQAB"});
        let mut v = base();
        v["issuers"][0]["jwks"] = json!({"inline": {"keys": [ordinary.clone(), roca.clone()]}});
        let err = compile_value(v.clone()).unwrap_err().to_string();
        assert!(
            err.starts_with("invalid plugin configuration: `issuers[0].jwks.inline` has an unusable key \"tpm-1\": ROCA-weak RSA modulus (CVE-2017-15361)"),
            "{err}"
        );
        // Alone, it leaves no usable key: refused all the same, and still named.
        v["issuers"][0]["jwks"] = json!({"inline": {"keys": [roca]}});
        assert_eq!(invalid_field(v.clone()), "issuers[0].jwks.inline");
        let err = compile_value(v.clone()).unwrap_err().to_string();
        assert!(err.contains("(1 skipped: key \"tpm-1\": ROCA-weak RSA modulus"), "{err}");
        v["issuers"][0]["jwks"] = json!({"inline": {"keys": [ordinary]}});
        assert!(compile_value(v).is_ok());
    }

    #[test]
    fn error_display_names_field_and_reason() {
        let mut v = base();
        v["issuers"][0]["audiences"] = json!([]);
        let err = compile_value(v).unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid plugin configuration: `issuers[0].audiences` must list at least one non-empty audience"
        );
    }

    #[test]
    fn host_defaults_to_auto_and_apisix_refuses_what_it_cannot_do() {
        use crate::host::capabilities::HostSetting;
        assert_eq!(compile_value(base()).unwrap().host, HostSetting::Auto);
        let mut v = base();
        v["host"] = json!("apisix");
        // On APISIX the JWKS "cluster" is the host:port the callout goes to.
        v["issuers"][0]["jwks"]["cluster"] = json!("127.0.0.1:8081");
        assert_eq!(compile_value(v.clone()).unwrap().host, HostSetting::Apisix);
        let mut with_discovery = v.clone();
        with_discovery["issuers"][0]["discovery"] = json!({"cluster": "idp:443", "authority": "idp.example"});
        with_discovery["issuers"][0]["jwks"] = json!({"refresh_seconds": 600});
        // Discovery works on APISIX too (the request fetches the document, then the keys).
        assert!(compile_value(with_discovery).is_ok());
        let mut nonces = v.clone();
        nonces["issuers"][0]["dpop"] = json!({"mode": "required", "nonce": true});
        assert_eq!(invalid_field(nonces), "issuers[0].dpop.nonce");
        v["mtls"] = json!({ "trust_domains": ["example.org"] });
        assert_eq!(invalid_field(v.clone()), "mtls");
        v["host"] = json!("envoy");
        assert!(compile_value(v).is_ok());
        let mut bad = base();
        bad["host"] = json!("nginx");
        let err = compile_value(bad).unwrap_err();
        assert_eq!(
            (err.field(), err.reason()),
            ("host", r#"must be one of "auto", "envoy", "apisix", not "nginx""#)
        );
    }
}
