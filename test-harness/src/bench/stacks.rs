//! The stacks under test, rendered from `envoy/bench/*.yaml` with the run's keys, and the
//! probes that prove each one does its job before it is measured.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value as Json};
use serde_yaml::Value as Yaml;

use super::envoy::BenchEnvoy;
use super::tokens::{Tokens, ALGS};
use crate::envoy_config::{repo_root, EnvoyConfig};
use crate::http::{self, Response};

/// The path measured traffic asks for (nhi-guard's `machine-api` route).
pub const BENCH_PATH: &str = "/api/bench";
/// The body of the bench configs' machine route.
const MACHINE: &str = "machine";
/// `x-forwarded-for` of the valid stream in the flood case.
pub const VALID_SOURCE: &str = "192.0.2.10";
/// `x-forwarded-for` of the forged stream; nhi-guard.yaml's `probe-source` route admits it.
pub const FLOOD_SOURCE: &str = "203.0.113.66";
/// Verified tokens nhi-guard may cache in the "1000 tokens" cases: jwt_authn's default
/// (`jwt_cache_size` in native.yaml), far fewer than the tokens in rotation.
pub const DEFEATED_CACHE_ENTRIES: u32 = 100;

const JWT_AUTHN: &str = "envoy.filters.http.jwt_authn";
/// The minimal filter's http filter name in `minimal.yaml`.
const MINIMAL_FILTER: &str = "minimal-jwt";
const NATIVE_EXTRAS: [&str; 2] = ["envoy.filters.http.local_ratelimit", "envoy.filters.http.rbac"];
const KEYS_TIMEOUT: Duration = Duration::from_secs(15);

/// One Envoy configuration under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stack {
    /// `router.yaml`: no authentication at all.
    Router,
    /// `native.yaml` without local_ratelimit and RBAC.
    NativeJwt,
    /// `native.yaml`: jwt_authn + local_ratelimit + RBAC on `sub`.
    NativeStack,
    /// `minimal.yaml`: the smallest proxy-wasm JWT filter (test-harness/bench/minimal-filter),
    /// the host's floor beside nhi-guard.
    Minimal,
    /// `nhi-guard.yaml`: verification + quota + route classification.
    NhiGuard,
    /// `nhi-guard.yaml` with the options the shipped `envoy/envoy.yaml` and docs turn on
    /// ([`SHIPPED_OPTIONS`]).
    NhiGuardShipped,
    /// `nhi-guard.yaml` with the token cache cut to [`DEFEATED_CACHE_ENTRIES`].
    NhiGuardSmallCache,
    /// `nhi-guard.yaml` with behaviour anomaly detection on ([`BEHAVIOUR`]).
    NhiGuardBehaviour,
    /// `nhi-guard.yaml` with DPoP `optional` for the issuer: bearer tokens as before,
    /// DPoP-bound tokens with a proof on every request (see [`DPOP_SETTINGS`]).
    NhiGuardDpop,
    /// `nhi-guard.yaml` with the native shell (an Envoy dynamic module, native/) in
    /// place of the wasm: the same plugin configuration, minus `filter_state` (which
    /// the native shell refuses, not yet written there).
    NhiGuardNative,
    /// [`Stack::NhiGuardSmallCache`] with the native shell in the wasm's place: every
    /// new token's signature checked by native code (issue 22's first-seen case).
    NhiGuardNativeSmallCache,
    /// `nhi-guard.yaml` with the issuer read as Kubernetes service-account tokens and
    /// TokenReview liveness on (`cache_seconds` 60, see [`LIVENESS`]), against an API
    /// server double that authenticates every token: after the first review of the
    /// reused token, each request decides with the worker's cached verdict.
    NhiGuardLiveness,
}

/// The bench issuer's `profile` in [`Stack::NhiGuardLiveness`] (its `kube_api` cluster
/// is added to the config, pointed at the double).
pub fn liveness_profile() -> Json {
    json!({"type": "kubernetes",
           "liveness": {"cluster": "kube_api", "cache_seconds": 60, "timeout_ms": 1000}})
}
/// See [`liveness_profile`].
pub const LIVENESS: &str = "kubernetes profile, liveness cache_seconds 60";

/// What [`Stack::NhiGuardShipped`] adds to the bench config: filter state as in
/// `envoy/envoy.yaml`, the decision log at its default (refusals logged, allowed
/// requests sampled) and the IETF RateLimit headers on allowed responses.
pub const SHIPPED_OPTIONS: &str = "filter_state on, decision log at its defaults, RateLimit headers";

/// The `behaviour` block of [`Stack::NhiGuardBehaviour`]: every request-time anomaly
/// kind watched (`new_source` reads the source address on every request).
pub const BEHAVIOUR: &str =
    r#"{ "anomalies": { "burst": {}, "new_route": {}, "new_source": {}, "dormant_returned": {} } }"#;

/// The bench issuer's `dpop` block: proofs minted before the run stay valid for it,
/// and the replay table holds every proof of the longest run.
pub fn dpop_settings() -> Json {
    json!({"mode": "optional", "max_age_seconds": 3600, "max_tracked_proofs": 1_000_000})
}
/// See [`dpop_settings`].
pub const DPOP_SETTINGS: &str = "optional, max_age_seconds 3600, max_tracked_proofs 1000000";

impl Stack {
    pub fn label(self) -> &'static str {
        match self {
            Stack::Router => "Envoy router only",
            Stack::NativeJwt => "native jwt_authn",
            Stack::NativeStack => "native jwt_authn + local_ratelimit + RBAC",
            Stack::Minimal => "minimal proxy-wasm JWT filter (the host's floor)",
            Stack::NhiGuard => "nhi-guard (verify + quota + routes)",
            Stack::NhiGuardShipped => {
                "nhi-guard, shipped options (filter state, decision log, RateLimit headers)"
            }
            Stack::NhiGuardSmallCache => "nhi-guard (verify + quota + routes)",
            Stack::NhiGuardBehaviour => "nhi-guard + behaviour anomaly detection",
            Stack::NhiGuardDpop => "nhi-guard (verify + DPoP proof + quota + routes)",
            Stack::NhiGuardNative | Stack::NhiGuardNativeSmallCache => {
                "nhi-guard native module (verify + quota + routes)"
            }
            Stack::NhiGuardLiveness => "nhi-guard + TokenReview liveness (cached)",
        }
    }

    /// A file name for the rendered config and the Envoy work dir.
    pub fn slug(self) -> &'static str {
        match self {
            Stack::Router => "router",
            Stack::NativeJwt => "native-jwt",
            Stack::NativeStack => "native-stack",
            Stack::Minimal => "minimal",
            Stack::NhiGuard => "nhi-guard",
            Stack::NhiGuardShipped => "nhi-guard-shipped",
            Stack::NhiGuardSmallCache => "nhi-guard-small-cache",
            Stack::NhiGuardBehaviour => "nhi-guard-behaviour",
            Stack::NhiGuardDpop => "nhi-guard-dpop",
            Stack::NhiGuardNative => "nhi-guard-native",
            Stack::NhiGuardNativeSmallCache => "nhi-guard-native-small-cache",
            Stack::NhiGuardLiveness => "nhi-guard-liveness",
        }
    }

    pub fn template(self) -> PathBuf {
        let file = match self {
            Stack::Router => "router.yaml",
            Stack::NativeJwt | Stack::NativeStack => "native.yaml",
            Stack::Minimal => "minimal.yaml",
            Stack::NhiGuard
            | Stack::NhiGuardShipped
            | Stack::NhiGuardSmallCache
            | Stack::NhiGuardBehaviour
            | Stack::NhiGuardDpop
            | Stack::NhiGuardLiveness
            | Stack::NhiGuardNative
            | Stack::NhiGuardNativeSmallCache => "nhi-guard.yaml",
        };
        repo_root().join("envoy").join("bench").join(file)
    }

    /// nhi-guard in any configuration (its probes, its histograms).
    pub fn is_nhi_guard(self) -> bool {
        matches!(
            self,
            Stack::NhiGuard
                | Stack::NhiGuardShipped
                | Stack::NhiGuardSmallCache
                | Stack::NhiGuardBehaviour
                | Stack::NhiGuardDpop
                | Stack::NhiGuardLiveness
                | Stack::NhiGuardNative
                | Stack::NhiGuardNativeSmallCache
        )
    }

    /// The config to run: the template with the run's JWKS (and the wasm path).
    /// [`Stack::NhiGuardLiveness`] also needs its API server: see [`Stack::render_with_api`].
    pub fn render(self, jwks: &Json, wasm: &Path) -> Result<String> {
        self.render_with_api(jwks, wasm, None)
    }

    /// [`Stack::render`], with the address of the API server the liveness stack asks.
    pub fn render_with_api(
        self,
        jwks: &Json,
        wasm: &Path,
        api: Option<std::net::SocketAddr>,
    ) -> Result<String> {
        let template = self.template();
        let text =
            fs::read_to_string(&template).with_context(|| format!("reading {}", template.display()))?;
        let rendered = match self {
            Stack::Router => Ok(text),
            Stack::NativeJwt | Stack::NativeStack => render_native(&text, jwks, self == Stack::NativeJwt),
            Stack::Minimal => render_minimal(&text, jwks, wasm),
            Stack::NhiGuard => render_nhi_guard(&text, jwks, wasm, None, None, false),
            Stack::NhiGuardShipped => {
                render_nhi_guard(&text, jwks, wasm, None, None, false).and_then(|y| render_shipped(&y))
            }
            Stack::NhiGuardSmallCache => {
                render_nhi_guard(&text, jwks, wasm, Some(DEFEATED_CACHE_ENTRIES), None, false)
            }
            Stack::NhiGuardBehaviour => render_nhi_guard(&text, jwks, wasm, None, Some(BEHAVIOUR), false),
            Stack::NhiGuardDpop => render_nhi_guard(&text, jwks, wasm, None, None, true),
            Stack::NhiGuardNative => render_nhi_guard(&text, jwks, wasm, None, None, false)
                .and_then(|yaml| render_native_module(&yaml, &crate::envoy::native_module_path()?)),
            Stack::NhiGuardNativeSmallCache => {
                render_nhi_guard(&text, jwks, wasm, Some(DEFEATED_CACHE_ENTRIES), None, false)
                    .and_then(|yaml| render_native_module(&yaml, &crate::envoy::native_module_path()?))
            }
            Stack::NhiGuardLiveness => {
                let api = api.context("the liveness stack needs its API server's address")?;
                render_nhi_guard(&text, jwks, wasm, None, None, false)
                    .and_then(|yaml| render_liveness(&yaml, api))
            }
        };
        rendered.with_context(|| format!("rendering {}", template.display()))
    }
}

impl fmt::Display for Stack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

fn render_native(text: &str, jwks: &Json, jwt_only: bool) -> Result<String> {
    let mut doc: Yaml = serde_yaml::from_str(text).context("parsing YAML")?;
    let filters = http_filters_mut(&mut doc)?;
    let jwt = filters
        .iter_mut()
        .find(|filter| filter.get("name").and_then(Yaml::as_str) == Some(JWT_AUTHN))
        .with_context(|| format!("no {JWT_AUTHN} filter"))?;
    let providers = jwt
        .get_mut("typed_config")
        .and_then(|config| config.get_mut("providers"))
        .and_then(Yaml::as_mapping_mut)
        .context("jwt_authn has no `providers`")?;
    ensure!(!providers.is_empty(), "jwt_authn has no provider");
    for (name, provider) in providers.iter_mut() {
        let inline = provider
            .get_mut("local_jwks")
            .and_then(|jwks| jwks.get_mut("inline_string"))
            .with_context(|| format!("jwt_authn provider {name:?} has no `local_jwks.inline_string`"))?;
        *inline = Yaml::String(jwks.to_string());
    }
    if jwt_only {
        let before = filters.len();
        filters.retain(|filter| {
            !filter.get("name").and_then(Yaml::as_str).is_some_and(|name| NATIVE_EXTRAS.contains(&name))
        });
        ensure!(before - filters.len() == NATIVE_EXTRAS.len(), "expected the filters {NATIVE_EXTRAS:?}");
    }
    serde_yaml::to_string(&doc).context("serialising YAML")
}

/// The `http_filters` of the first listener's first HTTP connection manager.
fn http_filters_mut(doc: &mut Yaml) -> Result<&mut Vec<Yaml>> {
    doc.get_mut("static_resources")
        .and_then(|r| r.get_mut("listeners"))
        .and_then(|l| l.get_mut(0))
        .and_then(|l| l.get_mut("filter_chains"))
        .and_then(|c| c.get_mut(0))
        .and_then(|c| c.get_mut("filters"))
        .and_then(|f| f.get_mut(0))
        .and_then(|f| f.get_mut("typed_config"))
        .and_then(|c| c.get_mut("http_filters"))
        .and_then(Yaml::as_sequence_mut)
        .context("no static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters")
}

fn render_nhi_guard(
    text: &str,
    jwks: &Json,
    wasm: &Path,
    cache_entries: Option<u32>,
    behaviour: Option<&str>,
    dpop: bool,
) -> Result<String> {
    let mut config = EnvoyConfig::parse(text)?;
    let mut plugin = config.plugin_configuration()?;
    let inline = plugin.pointer_mut("/issuers/0/jwks/inline").context("no issuers[0].jwks.inline")?;
    *inline = jwks.clone();
    if dpop {
        let issuer =
            plugin.pointer_mut("/issuers/0").and_then(Json::as_object_mut).context("no issuers[0]")?;
        issuer.insert("dpop".into(), dpop_settings());
    }
    let members = plugin.as_object_mut().context("the plugin configuration is not an object")?;
    if let Some(entries) = cache_entries {
        members.insert("token_cache".into(), json!({ "max_entries": entries }));
    }
    if let Some(behaviour) = behaviour {
        members.insert("behaviour".into(), serde_json::from_str(behaviour).context("BEHAVIOUR")?);
    }
    config.set_plugin_configuration(&plugin)?;
    config.set_wasm_filename(wasm)?;
    config.to_yaml()
}

/// The rendered wasm stack with the native module in the wasm's place: the same
/// filter name and plugin JSON, a `dynamic_modules` filter.
fn render_native_module(text: &str, module: &Path) -> Result<String> {
    EnvoyConfig::parse(text)?.with_native_filter(module)?.to_yaml()
}

/// The shipped options ([`SHIPPED_OPTIONS`]) on top of the bench config.
fn render_shipped(yaml: &str) -> Result<String> {
    let mut config = EnvoyConfig::parse(yaml)?;
    let mut plugin = config.plugin_configuration()?;
    let members = plugin.as_object_mut().context("the plugin configuration is not an object")?;
    members.insert("filter_state".into(), json!(true));
    members.remove("decision_log");
    members
        .get_mut("quotas")
        .and_then(Json::as_object_mut)
        .context("no quotas")?
        .insert("response_headers".into(), json!(true));
    config.set_plugin_configuration(&plugin)?;
    config.to_yaml()
}

/// The minimal filter: the run's JWKS in its configuration, the wasm path at its build.
fn render_minimal(text: &str, jwks: &Json, wasm: &Path) -> Result<String> {
    let mut config = EnvoyConfig::parse(text)?;
    let mut plugin = config.filter_configuration(MINIMAL_FILTER)?;
    *plugin.get_mut("jwks").context("no jwks")? = jwks.clone();
    config.set_filter_configuration(MINIMAL_FILTER, &plugin)?;
    config.set_filter_wasm_filename(MINIMAL_FILTER, wasm)?;
    config.to_yaml()
}

/// The liveness stack: the issuer read as Kubernetes tokens (so identities become
/// `NS/NAME`, and the allow and quota rules follow), TokenReview liveness on, and the
/// `kube_api` cluster pointed at `api`.
fn render_liveness(yaml: &str, api: std::net::SocketAddr) -> Result<String> {
    let mut config = EnvoyConfig::parse(yaml)?;
    let mut plugin = config.plugin_configuration()?;
    plugin
        .pointer_mut("/issuers/0")
        .and_then(Json::as_object_mut)
        .context("no issuers[0]")?
        .insert("profile".into(), liveness_profile());
    let text = plugin
        .to_string()
        .replace("system:serviceaccount:bench:quota-probe", "bench/quota-probe")
        .replace("system:serviceaccount:bench:*", "bench/*");
    config.set_plugin_configuration(&serde_json::from_str(&text)?)?;
    let mut doc: Yaml = serde_yaml::from_str(&config.to_yaml()?)?;
    // The bench configs answer from the route (no upstream): the cluster list may not exist.
    let resources =
        doc.get_mut("static_resources").and_then(Yaml::as_mapping_mut).context("no static_resources")?;
    let clusters = resources
        .entry(Yaml::from("clusters"))
        .or_insert_with(|| Yaml::Sequence(Vec::new()))
        .as_sequence_mut()
        .context("static_resources.clusters is not a list")?;
    let cluster = format!(
        "name: kube_api\ntype: STATIC\nconnect_timeout: 2s\nload_assignment:\n  cluster_name: kube_api\n  \
         endpoints:\n  - lb_endpoints:\n    - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}\n",
        api.ip(),
        api.port()
    );
    clusters.push(serde_yaml::from_str(&cluster)?);
    serde_yaml::to_string(&doc).context("serialising YAML")
}

/// One request a stack must answer in a known way.
struct Probe<'a> {
    what: String,
    path: &'a str,
    token: Option<&'a str>,
    source: Option<&'a str>,
    status: u16,
    /// A substring of the body, to tell the machine route from the human one.
    body: Option<&'a str>,
}

impl<'a> Probe<'a> {
    fn new(what: impl Into<String>, token: Option<&'a str>, status: u16) -> Self {
        Self { what: what.into(), path: BENCH_PATH, token, source: None, status, body: None }
    }

    fn path(self, path: &'a str) -> Self {
        Self { path, ..self }
    }

    fn source(self, source: &'a str) -> Self {
        Self { source: Some(source), ..self }
    }

    fn body(self, body: &'a str) -> Self {
        Self { body: Some(body), ..self }
    }

    fn send(&self, envoy: &BenchEnvoy) -> Result<Response> {
        let authorization = self.token.map(|token| format!("Bearer {token}"));
        let mut headers = Vec::new();
        if let Some(authorization) = &authorization {
            headers.push(("authorization", authorization.as_str()));
        }
        if let Some(source) = self.source {
            headers.push(("x-forwarded-for", source));
        }
        http::request(envoy.listener(), "GET", self.path, &headers)
    }

    fn check(&self, envoy: &BenchEnvoy) -> Result<()> {
        let response = self.send(envoy).with_context(|| format!("probe: {}", self.what))?;
        let body = response.body_text();
        let body_ok = self.body.is_none_or(|expected| body.contains(expected));
        if response.status != self.status || !body_ok {
            bail!(
                "misconfigured stack: {} should get {}{} but got {} {:?}",
                self.what,
                self.status,
                self.body.map(|b| format!(" {b:?}")).unwrap_or_default(),
                response.status,
                body.trim()
            );
        }
        Ok(())
    }
}

/// Checks that `stack`, running in `envoy`, accepts what it must accept and refuses what
/// it must refuse. An error here means its numbers would be worthless.
pub fn probe(stack: Stack, envoy: &BenchEnvoy, tokens: &Tokens) -> Result<()> {
    if stack.is_nhi_guard() {
        wait_for_keys(envoy, &tokens.reused)?;
    }
    let forged = tokens.forged_reused()?;
    let forged_flood = tokens.forged.tokens.first().context("no forged tokens")?;
    let mut probes = vec![Probe::new("a valid RS256 token", Some(&tokens.reused), 200).body(MACHINE)];
    if stack != Stack::Router {
        // jwt_authn alone has no policy on `sub`.
        let foreign_status = if stack == Stack::NativeJwt { 200 } else { 403 };
        probes.extend([
            Probe::new("a forged RS256 token", Some(&forged), 401),
            Probe::new("no token", None, 401),
            Probe::new("a forged token of the flood", Some(forged_flood), 401),
            Probe::new("a valid token for another service account", Some(&tokens.foreign), foreign_status),
        ]);
        // The minimal filter verifies RS256 only: it is measured on the reused token.
        for alg in ALGS.into_iter().filter(|alg| stack != Stack::Minimal || *alg == crate::mint::Alg::Rs256) {
            let first = tokens.rotation(alg)?.tokens.first().context("no rotating tokens")?;
            probes
                .push(Probe::new(format!("the first rotating {alg} token"), Some(first), 200).body(MACHINE));
        }
    }
    if stack.is_nhi_guard() {
        probes.extend([
            Probe::new("no token on the human route", None, 200).path("/web/page").body("human"),
            Probe::new("the flood's source on a route only it may use", None, 200)
                .path("/probe/source/")
                .source(FLOOD_SOURCE),
            Probe::new("the valid stream's source on that route", None, 403)
                .path("/probe/source/")
                .source(VALID_SOURCE),
            Probe::new("the quota probe's one request a day", Some(&tokens.quota_probe), 200).body(MACHINE),
            Probe::new("the quota probe's second request", Some(&tokens.quota_probe), 429),
        ]);
    }
    for probe in &probes {
        probe.check(envoy).with_context(|| format!("{stack}"))?;
    }
    if stack == Stack::NhiGuardDpop {
        for load in &tokens.dpop {
            let (token, proof) = &load.probe;
            let authorization = format!("DPoP {token}");
            let headers = [("authorization", authorization.as_str()), ("dpop", proof.as_str())];
            let stream = std::net::TcpStream::connect(envoy.listener())?;
            let response =
                http::exchange_over(stream, super::tokens::DPOP_AUTHORITY, "GET", BENCH_PATH, &headers, &[])?;
            ensure!(
                response.status == 200 && response.body_text().contains(MACHINE),
                "misconfigured stack: a DPoP-bound token with a fresh {} proof should get 200 but got {} {:?}",
                load.alg,
                response.status,
                response.body_text().trim()
            );
            let replay = stream_replay(envoy, &headers)?;
            ensure!(
                replay == 401,
                "misconfigured stack: a replayed {} proof got {replay}, not 401",
                load.alg
            );
        }
    }
    if stack == Stack::NativeStack {
        check_local_ratelimit_ran(envoy)?;
    }
    Ok(())
}

fn stream_replay(envoy: &BenchEnvoy, headers: &[(&str, &str)]) -> Result<u16> {
    let stream = std::net::TcpStream::connect(envoy.listener())?;
    Ok(http::exchange_over(stream, super::tokens::DPOP_AUTHORITY, "GET", BENCH_PATH, headers, &[])?.status)
}

/// How the stack answers one more forged token from the flood's source, e.g. `401
/// bad_signature`, or `429 too_many_failures` once a flood guard has blocked the source.
pub fn answer_to_flood_source(envoy: &BenchEnvoy, tokens: &Tokens) -> Result<String> {
    let forged = tokens.forged.tokens.first().context("no forged tokens")?;
    let response = Probe::new("a forged token from the flood's source", Some(forged), 401)
        .source(FLOOD_SOURCE)
        .send(envoy)?;
    let body = response.body_json().ok();
    let reason = body.as_ref().and_then(|b| b.get("reason")).and_then(Json::as_str).unwrap_or("");
    Ok(format!("{} {reason}", response.status).trim_end().to_owned())
}

/// nhi-guard loads its inline keys at configuration; this tolerates a first 503 anyway.
fn wait_for_keys(envoy: &BenchEnvoy, token: &str) -> Result<()> {
    let deadline = Instant::now() + KEYS_TIMEOUT;
    loop {
        let response = Probe::new("a valid token", Some(token), 200).send(envoy)?;
        if response.status != 503 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nhi-guard still answers 503 after {KEYS_TIMEOUT:?}: {}", response.body_text());
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// local_ratelimit is in the chain and saw the probes (its `enabled` counter moved).
fn check_local_ratelimit_ran(envoy: &BenchEnvoy) -> Result<()> {
    let stats = envoy.admin_get("/stats?filter=http_local_rate_limit")?.body_text();
    let enabled = stats
        .lines()
        .find_map(|line| line.trim().split_once(".http_local_rate_limit.enabled: "))
        .and_then(|(_, value)| value.trim().parse::<u64>().ok())
        .with_context(|| {
            format!("misconfigured native stack: no local_ratelimit `enabled` counter in:\n{stats}")
        })?;
    ensure!(enabled > 0, "misconfigured native stack: local_ratelimit saw no request");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwks() -> Json {
        json!({ "keys": [{ "kty": "OKP", "crv": "Ed25519", "x": "AAAA", "kid": "k" }] })
    }

    fn filter_names(yaml: &str) -> Vec<String> {
        let mut doc: Yaml = serde_yaml::from_str(yaml).unwrap();
        http_filters_mut(&mut doc)
            .unwrap()
            .iter()
            .map(|f| f.get("name").and_then(Yaml::as_str).unwrap().to_owned())
            .collect()
    }

    #[test]
    fn native_stack_gets_the_keys_and_jwt_only_loses_ratelimit_and_rbac() {
        let wasm = Path::new("/x.wasm");
        let stack = Stack::NativeStack.render(&jwks(), wasm).unwrap();
        let doc: Yaml = serde_yaml::from_str(&stack).unwrap();
        let inline = &doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["http_filters"][0]["typed_config"]["providers"]["bench"]["local_jwks"]
            ["inline_string"];
        assert_eq!(inline.as_str(), Some(jwks().to_string().as_str()));
        assert_eq!(filter_names(&stack).len(), 4);
        let jwt = Stack::NativeJwt.render(&jwks(), wasm).unwrap();
        assert_eq!(filter_names(&jwt), [JWT_AUTHN, "envoy.filters.http.router"]);
    }

    #[test]
    fn nhi_guard_gets_the_keys_the_wasm_and_in_rotation_a_small_cache() {
        let wasm = Path::new("/x/nhi_guard.wasm");
        let plugin = |stack: Stack| {
            EnvoyConfig::parse(&stack.render(&jwks(), wasm).unwrap()).unwrap().plugin_configuration().unwrap()
        };
        let shipped = plugin(Stack::NhiGuard);
        assert_eq!(shipped["issuers"][0]["jwks"]["inline"], jwks());
        assert!(shipped.get("token_cache").is_none());
        assert_eq!(plugin(Stack::NhiGuardSmallCache)["token_cache"]["max_entries"], DEFEATED_CACHE_ENTRIES);
        assert!(Stack::NhiGuard.render(&jwks(), wasm).unwrap().contains("/x/nhi_guard.wasm"));
        let shipped = plugin(Stack::NhiGuardShipped);
        assert_eq!(shipped["filter_state"], true);
        assert_eq!(shipped["quotas"]["response_headers"], true);
        assert!(shipped.get("decision_log").is_none(), "the decision log at its defaults");
    }

    #[test]
    fn the_minimal_filter_gets_the_keys_and_its_own_wasm() {
        let yaml = Stack::Minimal.render(&jwks(), Path::new("/x/nhi_minimal_filter.wasm")).unwrap();
        let mut doc: Yaml = serde_yaml::from_str(&yaml).unwrap();
        let config = &http_filters_mut(&mut doc).unwrap()[0]["typed_config"]["config"];
        let plugin: Json = serde_json::from_str(config["configuration"]["value"].as_str().unwrap()).unwrap();
        assert_eq!(plugin["jwks"], jwks());
        assert_eq!(plugin["subject_prefix"], "system:serviceaccount:bench:");
        assert_eq!(
            config["vm_config"]["code"]["local"]["filename"].as_str(),
            Some("/x/nhi_minimal_filter.wasm")
        );
    }
}
