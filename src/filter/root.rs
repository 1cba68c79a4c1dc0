//! The root context: owns the validated configuration and keeps each issuer's
//! JWKS fresh. One worker per Envoy fetches (it holds the shared lease); every
//! worker picks the published keys up from shared data on its tick.

use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;
use std::time::Duration;

use log::{error, info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

use nhi_guard_core::config::{Config, JwksSource, RemoteJwks};
use nhi_guard_core::host::capabilities::{KeyFetch, Plan, StateScope};
use nhi_guard_core::host::store::{MemoryStore, Store};
use nhi_guard_core::keys::discovery::{self, DiscoveryEndpoint, JwksLocation, Located};
use nhi_guard_core::keys::jwks::{self, JwksError, MAX_JWKS_BYTES};
use nhi_guard_core::keys::keyshare::{self, Acquire, LocalKeys, Record, SharedKeys};
use nhi_guard_core::verify::cache::LocalCache;

use super::host::{self, SharedData};
use super::http::Http;
use super::observe;
use super::on_request::OnRequestFetch;
use super::pipeline::{self, Step, Waiter};

/// How often each worker looks at the shared keys and whether a fetch is due.
const TICK: Duration = Duration::from_millis(500);
/// Extra time a fetch lease is held beyond the fetch timeout.
const LEASE_MARGIN_MS: u64 = 1_000;

/// While requests wait for keys, tick this often to answer them promptly.
const FAST_TICK: Duration = Duration::from_millis(50);

/// What the root context shares with the HTTP contexts of its VM.
pub struct Vm {
    pub config: Config,
    /// Current keys per issuer (same index as `config.issuers`).
    pub keys: RefCell<Vec<LocalKeys>>,
    /// Requests paused until their issuer's keys load (bounded by `MAX_WAITERS`).
    pub waiters: RefCell<Vec<Waiter>>,
    /// Shared data, or a per-VM memory store on hosts without it.
    pub store: Box<dyn Store>,
    /// Metric ids and the identity bound of this VM.
    pub observer: observe::Observer,
    /// How this host is used (see `capabilities`).
    pub plan: Plan,
    /// Per issuer: the fetch requests make themselves when keys are fetched on request.
    pub on_request: RefCell<Vec<OnRequestFetch>>,
    /// This VM's front of the verified-token cache.
    pub local_tokens: RefCell<LocalCache>,
}

/// A fetch in flight, by callout token.
struct Fetch {
    issuer: usize,
    failures: u32,
    stage: Stage,
}

/// What a fetch in flight asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The JWKS; `discovered`: at a location an OIDC discovery document gave.
    Jwks { discovered: bool },
    /// An OIDC discovery document; the JWKS fetch follows under the same lease.
    Discovery,
}

pub struct Root {
    context_id: u32,
    vm: Option<Rc<Vm>>,
    fast_ticking: bool,
    /// This VM's lease-holder id (random, non-zero).
    me: u64,
    shared: Vec<Option<SharedKeys>>,
    pending: HashMap<u32, Fetch>,
}

impl Root {
    pub fn new(context_id: u32) -> Self {
        Root {
            context_id,
            vm: None,
            fast_ticking: false,
            me: random_u64() | 1,
            shared: Vec::new(),
            pending: HashMap::new(),
        }
    }

    fn configure(&mut self, config: Config) -> bool {
        let keys = config
            .issuers
            .iter()
            .map(|issuer| match &issuer.jwks {
                JwksSource::Inline(set) => LocalKeys::inline(set.clone()),
                JwksSource::Remote(remote) => LocalKeys::remote(remote.schedule()),
            })
            .collect();
        self.shared = config
            .issuers
            .iter()
            .map(|issuer| match &issuer.jwks {
                JwksSource::Remote(remote) => Some(SharedKeys::new(&issuer.name, &remote.source_id())),
                JwksSource::Inline(_) => None,
            })
            .collect();
        let plan = match Plan::choose(config.host, host::probe(self.me)) {
            Ok(plan) => plan,
            Err(err) => {
                error!("{err}; refusing to start");
                return false;
            }
        };
        info!("{plan}");
        if plan.key_fetch == KeyFetch::OnRequest {
            if let Some(issuer) = config
                .issuers
                .iter()
                .find(|i| matches!(&i.jwks, JwksSource::Remote(r) if r.discovery.is_some()))
            {
                error!(
                    "issuer {}: OIDC discovery needs the background fetcher, which this host cannot run; \
                     configure the JWKS location instead; refusing to start",
                    issuer.name
                );
                return false;
            }
        }
        let store: Box<dyn Store> = match plan.state {
            StateScope::Shared => Box::new(SharedData),
            StateScope::PerVm => Box::new(MemoryStore::default()),
        };
        if let Some(quotas) = &config.quotas {
            // Create every quota key now, so requests never race to create one.
            if let Err(err) = quotas.prepare(store.as_ref()) {
                error!("cannot prepare the quota table: {err}; refusing to start");
                return false;
            }
        }
        let needs_fetching =
            plan.key_fetch == KeyFetch::Background && self.shared.iter().any(Option::is_some);
        let on_request = config.issuers.iter().map(|_| OnRequestFetch::default()).collect();
        info!(
            "configured: {} issuer(s): {}",
            config.issuers.len(),
            config.issuers.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
        );
        let observer = observe::Observer::new(&config, store.as_ref(), host::now_ms());
        self.vm = Some(Rc::new(Vm {
            config,
            keys: RefCell::new(keys),
            waiters: RefCell::new(Vec::new()),
            store,
            observer,
            plan,
            on_request: RefCell::new(on_request),
            local_tokens: RefCell::new(LocalCache::default()),
        }));
        self.pending.clear();
        if needs_fetching {
            // The first fetch waits for the first tick: Envoy may build and destroy a
            // VM right after configuring it, and a fetch started here would die with
            // it while still holding the shared lease.
            if let Err(err) = host::set_tick_period(TICK) {
                error!("the host has no timers ({err}); JWKS cannot be refreshed, refusing to start");
                return false;
            }
        }
        true
    }

    fn tick(&mut self, now: u64) {
        let Some(vm) = self.vm.clone() else { return };
        if vm.plan.key_fetch == KeyFetch::OnRequest {
            // Requests fetch their own keys; never call out from here (on APISIX a
            // callout outside a request crashes nginx).
            observe::jwks_gauges(&vm, now);
            return;
        }
        for (index, issuer) in vm.config.issuers.iter().enumerate() {
            let (JwksSource::Remote(remote), Some(Some(shared))) = (&issuer.jwks, self.shared.get(index))
            else {
                continue;
            };
            let shared = shared.clone();
            if self.pick_up_published(&vm, index, &shared) {
                self.wake(&vm, |w| w.issuer == index, now);
            }
            if self.pending.values().any(|f| f.issuer == index) {
                continue;
            }
            let wanted = vm.keys.borrow().get(index).is_some_and(|local| {
                local.schedule.is_some_and(|s| s.fetch_wanted(now, local.fetched_at_ms, local.kid_miss))
            });
            if wanted {
                self.try_fetch(&vm, index, remote, &shared, now);
            }
        }
        self.wake(&vm, |w| now >= w.deadline_ms, now);
        observe::jwks_gauges(&vm, now);
        let fast = !vm.waiters.borrow().is_empty();
        if fast != self.fast_ticking && host::set_tick_period(if fast { FAST_TICK } else { TICK }).is_ok() {
            self.fast_ticking = fast;
        }
    }

    /// Finishes the parked requests `which` selects: runs their pipeline again
    /// (now with whatever keys there are) as their own effective context.
    fn wake(&self, vm: &Vm, which: impl Fn(&Waiter) -> bool, now: u64) {
        let ready: Vec<Waiter> = {
            let mut waiters = vm.waiters.borrow_mut();
            let (ready, parked) = waiters.drain(..).partition(|w| which(w));
            *waiters = parked;
            ready
        };
        if ready.is_empty() {
            return;
        }
        for waiter in ready {
            if host::set_effective_context(waiter.context_id).is_err() {
                continue; // the request is gone
            }
            let Ok(mut request) = waiter.request.try_borrow_mut() else { continue };
            request.waited = true;
            if pipeline::run(vm, &mut request, now) == Step::Continue {
                if let Err(err) = host::resume_request() {
                    warn!("cannot resume a request that waited for keys: {err}");
                }
            }
        }
        let _ = host::set_effective_context(self.context_id);
    }

    /// Loads keys another worker (or this one) published, if they changed.
    /// Returns whether new keys were loaded.
    fn pick_up_published(&self, vm: &Vm, index: usize, shared: &SharedKeys) -> bool {
        let (bytes, cas) = match vm.store.get(&shared.record) {
            Ok((Some(bytes), cas)) => (bytes, cas),
            Ok((None, _)) => return false,
            Err(err) => {
                warn!("cannot read shared keys: {err}");
                return false;
            }
        };
        let mut all = vm.keys.borrow_mut();
        let Some(local) = all.get_mut(index) else { return false };
        if cas.is_some() && cas == local.seen_cas {
            return false;
        }
        let key_use = vm.config.issuers.get(index).map(|i| i.key_use()).unwrap_or_default();
        let parsed = Record::decode(&bytes)
            .and_then(|r| jwks::parse_for(&r.body, key_use).ok().map(|p| (r.fetched_at_ms, p)));
        local.seen_cas = cas;
        match parsed {
            Some((fetched_at, parsed)) => {
                local.load(parsed.keys, fetched_at);
                true
            }
            None => {
                warn!("shared keys of issuer #{index} are unreadable; waiting for the next fetch");
                false
            }
        }
    }

    fn try_fetch(&mut self, vm: &Vm, index: usize, remote: &RemoteJwks, shared: &SharedKeys, now: u64) {
        // With discovery the lease covers both requests.
        let timeout_ms =
            vm.config.issuers.get(index).and_then(|i| i.fetch_timeout_ms()).unwrap_or(remote.timeout_ms);
        let hold = timeout_ms.saturating_add(LEASE_MARGIN_MS);
        let failures = match keyshare::try_acquire(vm.store.as_ref(), &shared.lease, self.me, now, hold) {
            Ok(Acquire::Acquired { failures }) => failures,
            Ok(Acquire::Busy) => return,
            Err(err) => {
                warn!("cannot take the JWKS fetch lease: {err}");
                return;
            }
        };
        let name = vm.config.issuers.get(index).map(|i| i.name.as_str()).unwrap_or_default();
        let (target, stage) = fetch_target(vm, name, remote, now);
        match host::http_get(
            &target.cluster,
            &target.authority,
            &target.path,
            Duration::from_millis(remote.timeout_ms),
        ) {
            Ok(token) => {
                self.pending.insert(token, Fetch { issuer: index, failures, stage });
                if let Some(local) = vm.keys.borrow_mut().get_mut(index) {
                    local.kid_miss = false;
                }
            }
            Err(status) => {
                observe::jwks_fetched(vm, index, false);
                let backoff = remote.schedule().backoff_ms(failures.saturating_add(1), jitter());
                warn!(
                    "issuer {name}: cannot fetch JWKS from cluster {:?} ({status}); retry in {backoff} ms",
                    target.cluster
                );
                let _ = keyshare::fail(
                    vm.store.as_ref(),
                    &shared.lease,
                    self.me,
                    now,
                    failures.saturating_add(1),
                    backoff,
                );
            }
        }
    }

    fn fetched(&mut self, fetch: Fetch, outcome: Result<(Vec<u8>, jwks::ParsedJwks), String>) {
        let now = host::now_ms();
        let Some(vm) = self.vm.clone() else { return };
        let (Some(issuer), Some(Some(shared))) =
            (vm.config.issuers.get(fetch.issuer), self.shared.get(fetch.issuer))
        else {
            return;
        };
        let JwksSource::Remote(remote) = &issuer.jwks else { return };
        observe::jwks_fetched(&vm, fetch.issuer, outcome.is_ok());
        match outcome {
            Ok((body, parsed)) => {
                for skipped in &parsed.skipped {
                    warn!("issuer {}: JWKS {skipped}: skipped", issuer.name);
                }
                info!("issuer {}: loaded {} key(s)", issuer.name, parsed.keys.len());
                let record = Record { fetched_at_ms: now, body };
                if let Err(err) = keyshare::publish(vm.store.as_ref(), shared, self.me, &record) {
                    warn!("issuer {}: cannot share the keys with other workers: {err}", issuer.name);
                }
                let seen_cas = vm.store.get(&shared.record).ok().and_then(|(_, cas)| cas);
                if let Some(local) = vm.keys.borrow_mut().get_mut(fetch.issuer) {
                    local.load(parsed.keys, now);
                    local.seen_cas = seen_cas;
                }
            }
            Err(why) => {
                let failures = fetch.failures.saturating_add(1);
                let backoff = remote.schedule().backoff_ms(failures, jitter());
                let kept = vm.keys.borrow().get(fetch.issuer).is_some_and(|k| k.usable(now).is_some());
                warn!(
                    "issuer {}: JWKS refresh failed ({failures} in a row): {why}; {}; retry in {backoff} ms",
                    issuer.name,
                    if kept { "keeping the last good keys" } else { "no usable keys" },
                );
                let _ = keyshare::fail(vm.store.as_ref(), &shared.lease, self.me, now, failures, backoff);
            }
        }
        // Success or failure, the requests waiting on this issuer get their answer now.
        self.wake(&vm, |w| w.issuer == fetch.issuer, now);
    }
}

/// Where the next fetch of `remote` goes: its JWKS, or — with discovery and no fresh
/// location shared by whichever worker discovered last — its discovery document.
fn fetch_target(vm: &Vm, issuer_name: &str, remote: &RemoteJwks, now: u64) -> (JwksLocation, Stage) {
    let configured = JwksLocation {
        cluster: remote.cluster.clone(),
        authority: remote.authority.clone(),
        path: remote.path.clone(),
    };
    if remote.discovery.is_none() {
        return (configured, Stage::Jwks { discovered: false });
    }
    let interval_ms = remote.schedule().interval_ms;
    match vm.store.get(&Located::key(issuer_name, &remote.source_id())) {
        Ok((Some(bytes), _)) => match Located::decode(&bytes) {
            Some(located) if located.fresh(now, interval_ms) => {
                (located.location, Stage::Jwks { discovered: true })
            }
            _ => (configured, Stage::Discovery),
        },
        _ => (configured, Stage::Discovery),
    }
}

impl Root {
    /// A discovery document arrived: check it, share the JWKS location it gives,
    /// and fetch the JWKS there under the same lease. A failure at any step is a
    /// failed fetch (backoff, waiting requests answered).
    fn discovered(&mut self, fetch: Fetch, body_size: usize) {
        let Some(vm) = self.vm.clone() else { return };
        let Some(issuer) = vm.config.issuers.get(fetch.issuer) else { return };
        let JwksSource::Remote(remote) = &issuer.jwks else { return };
        let Some(policy) = &remote.discovery else { return };
        let endpoint = DiscoveryEndpoint {
            cluster: remote.cluster.clone(),
            authority: remote.authority.clone(),
            path: remote.path.clone(),
        };
        let located = match host::http_call_response(body_size, discovery::MAX_DOCUMENT_BYTES) {
            (None, _) => Err("no response (connection refused, reset or timed out)".to_owned()),
            (Some(200), Ok(body)) => {
                discovery::locate(&body, &issuer.issuer, &endpoint, policy).map_err(|e| e.to_string())
            }
            (Some(200), Err(bytes)) => Err(format!(
                "discovery document is {bytes} bytes, over the {}-byte limit",
                discovery::MAX_DOCUMENT_BYTES
            )),
            (Some(status), _) => Err(format!("discovery endpoint answered HTTP {status}")),
        };
        let location = match located {
            Ok(location) => location,
            Err(why) => {
                self.fetched(fetch, Err(format!("OIDC discovery from {:?}: {why}", remote.path)));
                return;
            }
        };
        let record = Located { discovered_at_ms: host::now_ms(), location: location.clone() };
        let key = Located::key(&issuer.name, &remote.source_id());
        if let Err(err) = vm.store.set(&key, &record.encode(), None) {
            warn!("issuer {}: cannot share the discovered JWKS location: {err}", issuer.name);
        }
        info!(
            "issuer {}: discovery: JWKS at {}{} (cluster {:?})",
            issuer.name, location.authority, location.path, location.cluster
        );
        match host::http_get(
            &location.cluster,
            &location.authority,
            &location.path,
            Duration::from_millis(remote.timeout_ms),
        ) {
            Ok(token) => {
                self.pending.insert(token, Fetch { stage: Stage::Jwks { discovered: true }, ..fetch });
            }
            Err(status) => {
                let why = format!("cannot fetch JWKS from cluster {:?} ({status})", location.cluster);
                self.fetched(fetch, Err(why));
            }
        }
    }

    /// Drops the shared discovered location of `issuer`: the next fetch rediscovers.
    fn forget_location(&self, issuer: usize) {
        let Some(vm) = &self.vm else { return };
        let Some(issuer) = vm.config.issuers.get(issuer) else { return };
        if let JwksSource::Remote(remote) = &issuer.jwks {
            let _ = vm.store.set(&Located::key(&issuer.name, &remote.source_id()), &[], None);
        }
    }
}

/// The JWKS in the response of the current callout: the body and its keys, or why not.
pub(super) fn read_jwks(
    body_size: usize,
    key_use: jwks::KeyUse,
) -> Result<(Vec<u8>, jwks::ParsedJwks), String> {
    match host::http_call_response(body_size, MAX_JWKS_BYTES) {
        (None, _) => Err("no response (connection refused, reset or timed out)".to_owned()),
        (Some(200), Ok(body)) => {
            jwks::parse_for(&body, key_use).map(|parsed| (body, parsed)).map_err(|e| e.to_string())
        }
        (Some(200), Err(bytes)) => Err(JwksError::TooLarge { bytes, limit: MAX_JWKS_BYTES }.to_string()),
        (Some(status), _) => Err(format!("key server answered HTTP {status}")),
    }
}

pub(super) fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(host::now_ms());
    hasher.finish()
}

/// A value in `0..=1` to spread retries; not security-relevant.
pub(super) fn jitter() -> f64 {
    (random_u64() % 1_000) as f64 / 999.0
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(fetch) = self.pending.remove(&token_id) else { return };
        if fetch.stage == Stage::Discovery {
            self.discovered(fetch, body_size);
            return;
        }
        let key_use = self
            .vm
            .as_ref()
            .and_then(|vm| vm.config.issuers.get(fetch.issuer).map(|i| i.key_use()))
            .unwrap_or_default();
        let outcome = read_jwks(body_size, key_use);
        if outcome.is_err() && fetch.stage == (Stage::Jwks { discovered: true }) {
            // The keys may have moved (a 404): look them up again on the next attempt.
            self.forget_location(fetch.issuer);
        }
        self.fetched(fetch, outcome);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = match host::plugin_configuration() {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                error!("no plugin configuration; refusing to start");
                return false;
            }
            Err(err) => {
                error!("cannot read the plugin configuration ({err}); refusing to start");
                return false;
            }
        };
        match Config::from_json(&bytes) {
            Ok(config) => self.configure(config),
            Err(err) => {
                error!("{err}; refusing to start");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        self.tick(host::now_ms());
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let vm = self.vm.clone()?;
        Some(Box::new(Http::new(vm, context_id)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
