//! The request pipeline: what happens to one request, stage by stage, against any
//! [`Host`].
//!
//! ```text
//! extract ─► verify ─► (await keys) ─► liveness ─► (await feed) ─► dpop ─► authorize ─► behaviour ─► quota ─► forward ─► record
//!            partner ─► (await body) ──────────────────────────────────────┘
//!   │          │                          │                                  │             │          │
//!   │          │                          └ TokenReview callout              └─────────────┴──────────┴──► reply
//!   └──────────┴─ a failed host call the decision depends on: 500 internal_error
//! ```
//!
//! - [`extract`]: one clock read and one header-map read; client copies of every
//!   managed header removed; path, host, method, route name, certificate and the
//!   credential header taken out of the request.
//! - [`verify`]: the worker's token cache, else the shared cache, else full
//!   verification (behind the flood guard); the token's binding to the client
//!   certificate; how long it took. A partner's signature or API key is verified
//!   by [`partner`] instead, into the same [`verify::Verification`]; a signature
//!   that covers a body waits for it ([`Step::Body`], then [`body`]).
//! - await keys: a token refused only because its issuer's keys are not loaded yet
//!   (or name an unknown `kid` while a refetch is allowed) parks the request
//!   ([`Step::Wait`]); the shell wakes it when keys arrive, and it is decided again.
//! - [`liveness`]: a verified token of an issuer with `profile.liveness` is asked
//!   of the Kubernetes API server (TokenReview), at most once per token per
//!   `cache_seconds` for the whole Envoy: the request holding the review's lease
//!   makes the callout through the host ([`Step::Called`]; its answer comes back
//!   through [`answered`]), requests for the same token wait ([`Step::Wait`]).
//! - await feed: with a `revocation` feed never loaded yet, a request with a
//!   verified token waits for the first one, like keys.
//! - [`dpop`]: a token presented with the `DPoP` scheme is held to its proof (RFC
//!   9449), on every request; a DPoP-bound token presented as a bearer token is
//!   refused, in every mode.
//! - [`authorize`]: whose credential it is, the route class, deny and allow rules,
//!   the verdict ([`crate::policy`]); a refusal becomes a [`reply`].
//! - [`behaviour`]: the request counted in the identity's learned baseline, and
//!   held against it (anomalies; refused where a kind is enforced).
//! - [`quota`]: the verified identity's budget is charged.
//! - [`forward`]: the identity headers the upstream and Envoy's router see.
//! - [`record`]: metrics, filter state, the decision log line and the identity
//!   inventory ([`inventory`] also serves its JSON).
//!
//! A request may ask for a [`trace::Trace`] of its decision (`nhi-guard explain`
//! does; the filter never does): the stages copy what they concluded into it.
//!
//! The pipeline never panics and never forwards a request whose decision depends on
//! a host call that failed: such a request is refused with `500 internal_error`. A
//! host call that only observes (a metric, filter state) fails harmlessly.

pub mod authorize;
pub mod behaviour;
pub mod documents;
pub mod dpop;
pub mod extract;
pub mod forward;
pub mod inventory;
pub mod liveness;
pub mod partner;
pub mod quota;
pub mod record;
pub mod reply;
pub mod trace;
pub mod verify;

use std::cell::RefCell;
use std::rc::Rc;

use crate::behaviour::tracker::Tracker;
use crate::config::Config;
use crate::host::capabilities::{KeyFetch, Plan};
use crate::host::store::Store;
use crate::host::Host;
use crate::keys::fetch::{Document, Fetcher, Mode, Response};
use crate::keys::keyshare::LocalKeys;
use crate::keys::source::JwksSource;
use crate::observe::decision_log;
use crate::policy::revocation::LocalRevocations;
use crate::policy::RequestInfo;
use crate::verify::cache::LocalCache;
use crate::verify::liveness::ReviewKey;

/// Most requests one VM keeps paused while keys load; beyond, requests are answered at once.
pub const MAX_WAITERS: usize = 1_024;
/// Extra wait beyond a document's fetch timeout (keys, the revocation list) before a
/// request waiting for it is decided anyway.
const WAIT_MARGIN_MS: u64 = 500;

/// Everything one VM (one worker) keeps between requests: the configuration, the
/// keys it verifies with, its caches, metric ids, and the requests waiting for keys.
pub struct Vm {
    pub config: Config,
    /// Current keys per issuer (same index as `config.issuers`).
    pub keys: RefCell<Vec<LocalKeys>>,
    /// This VM's copy of the revocation feed (`None` without a `revocation` block).
    pub revocations: RefCell<Option<LocalRevocations>>,
    /// Requests paused until what they wait for arrives (bounded by [`MAX_WAITERS`]).
    pub waiters: RefCell<Vec<Waiter>>,
    /// Shared data, or a per-VM memory store on hosts without it.
    pub store: Box<dyn Store>,
    /// Metric ids, the identity bound, filter state.
    pub observer: record::Observer,
    /// How this host is used (see [`crate::host::capabilities`]).
    pub plan: Plan,
    /// This VM's front of the verified-token cache.
    pub local_tokens: RefCell<LocalCache>,
    /// Quota admissions this VM charged ahead of use (see [`crate::quota::Leases`]);
    /// `None` where leases are not taken: no quotas, or no ticks to give unused ones
    /// back (not the Envoy-grade plan, or the shell found no timers:
    /// [`Vm::without_ticks`]).
    pub quota_leases: RefCell<Option<crate::quota::Leases>>,
    /// Sources this VM saw the flood guard block, until their blocks end.
    pub blocked_sources: RefCell<crate::verify::flood_guard::BlockedSources>,
    /// The fetch state machine of this VM: JWKS and the revocation feed (see
    /// [`crate::keys::fetch`]).
    pub fetcher: RefCell<Fetcher>,
    /// This worker's side of the behaviour baselines, when anomalies are detected.
    pub tracker: RefCell<Option<Tracker>>,
    /// This VM's DPoP proof keys and nonce copies.
    pub dpop: crate::dpop::VmState,
    /// Each issuer's DPoP replay table and nonce (same index as `config.issuers`).
    pub dpop_issuers: Vec<crate::dpop::IssuerState>,
    /// Partner secrets, read from the environment at start.
    pub partner_keys: crate::partners::Keyring,
    /// This worker's inventory deltas since its last flush.
    pub inventory: RefCell<crate::observe::inventory::Pending>,
    /// This VM's id as a lease holder (fetches, reviews): non-zero, random.
    pub me: u64,
    /// The shell wakes a request parked on another request's TokenReview when that
    /// review ends, without a tick (the native shell: see [`Vm::shell_wakes_reviews`]).
    wakes_reviews: std::cell::Cell<bool>,
}

impl Vm {
    /// A VM for `config` with `store` as its state, ready for requests: every quota
    /// key created (so that requests never race to create one) and the series that
    /// must exist from the start defined. `now_ms` starts the key-age clock.
    /// `me` is this VM's id as the holder of shared fetch leases (non-zero, random).
    pub fn start(
        config: Config,
        plan: Plan,
        store: Box<dyn Store>,
        host: &mut dyn Host,
        now_ms: u64,
        me: u64,
    ) -> Result<Vm, StartError> {
        if let Some(quotas) = &config.quotas {
            quotas.prepare(store.as_ref()).map_err(StartError::Quota)?;
        }
        let partner_keys = match &config.partners {
            Some(partners) => {
                let keyring = partners
                    .resolve(&mut |name| host.environment_variable(name))
                    .map_err(StartError::Secret)?;
                partners.replay.prepare(store.as_ref()).map_err(StartError::ReplayCache)?;
                keyring
            }
            None => crate::partners::Keyring::default(),
        };
        if config.issuers.iter().any(|i| i.profile.liveness().is_some()) {
            crate::verify::liveness::prepare(store.as_ref()).map_err(|e| StartError::Table("liveness", e))?;
        }
        if let Some(inventory) = &config.inventory {
            crate::observe::inventory::prepare(inventory, store.as_ref())
                .map_err(|e| StartError::Table("inventory", e))?;
        }
        let mut vm = Vm::new(config, plan, store, now_ms, me);
        vm.partner_keys = partner_keys;
        if vm.config.dpop_in_use() {
            for (issuer, state) in vm.config.issuers.iter().zip(&vm.dpop_issuers) {
                if issuer.dpop.nonce && plan.state != crate::host::capabilities::StateScope::Shared {
                    return Err(StartError::NonceNeedsSharedData { issuer: issuer.name.clone() });
                }
                state.prepare(vm.store.as_ref()).map_err(StartError::Dpop)?;
            }
        }
        vm.observer.define_initial(&vm.config, host);
        Ok(vm)
    }

    fn new(config: Config, plan: Plan, store: Box<dyn Store>, now_ms: u64, me: u64) -> Vm {
        let mut keys: Vec<LocalKeys> = config
            .issuers
            .iter()
            .map(|issuer| match &issuer.jwks {
                JwksSource::Inline(set) => LocalKeys::inline(set.clone()),
                JwksSource::Remote(remote) => LocalKeys::remote(remote.schedule(), issuer.key_use()),
            })
            .collect();
        let mut revocations = config.revocation.as_ref().map(LocalRevocations::new);
        let observer = record::Observer::new(&config, store.as_ref(), now_ms);
        let mode = match plan.key_fetch {
            KeyFetch::Background => Mode::Shared { me },
            KeyFetch::OnRequest => Mode::PerVm,
        };
        let fetcher = {
            let mut sources = documents::VmSources::new(&config, &mut keys, revocations.as_mut());
            RefCell::new(Fetcher::new(&mut sources, mode))
        };
        let tracker = RefCell::new(config.behaviour.as_ref().filter(|b| b.detect).map(Tracker::new));
        let dpop = crate::dpop::VmState::new(config.issuers.len());
        // Unused leases are given back on the tick, or (a shell without one: the
        // native module) by this VM's next quota charge that finds them due.
        let leases = config.quotas.is_some().then(crate::quota::Leases::default);
        let dpop_issuers =
            config.issuers.iter().map(|i| crate::dpop::IssuerState::new(&i.name, &i.dpop)).collect();
        Vm {
            config,
            keys: RefCell::new(keys),
            revocations: RefCell::new(revocations),
            waiters: RefCell::new(Vec::new()),
            store,
            observer,
            plan,
            local_tokens: RefCell::new(LocalCache::default()),
            quota_leases: RefCell::new(leases),
            blocked_sources: RefCell::new(Default::default()),
            fetcher,
            tracker,
            dpop,
            dpop_issuers,
            partner_keys: crate::partners::Keyring::default(),
            inventory: RefCell::new(crate::observe::inventory::Pending::default()),
            me,
            wakes_reviews: std::cell::Cell::new(false),
        }
    }

    /// Whether the host ticks (the background fetcher's plan): what is batched per
    /// worker is then merged on the tick, otherwise at once.
    pub fn ticks(&self) -> bool {
        self.plan.key_fetch == KeyFetch::Background
    }

    /// Whether a request may wait for another request's TokenReview: the tick polls
    /// for its answer, or the shell wakes it when the review ends. Otherwise it is
    /// decided at once (by `on_unavailable`).
    pub fn can_park(&self) -> bool {
        self.ticks() || self.wakes_reviews.get()
    }

    /// The shell wakes a request parked on a review ([`Awaited::Review`]) when that
    /// review ends on any worker — its answer recorded, or its request gone — by
    /// running it again: the native shell, which has no tick but can post to any
    /// request's worker.
    pub fn shell_wakes_reviews(&self) {
        self.wakes_reviews.set(true);
    }
}

/// Why a VM cannot start on this host with this configuration.
#[derive(Debug)]
pub enum StartError {
    /// The quota table could not be created.
    Quota(crate::quota::QuotaError),
    /// The DPoP replay table or nonce key could not be created.
    Dpop(crate::host::store::StoreError),
    /// `dpop.nonce` on a host without shared data: workers could not agree on nonces.
    NonceNeedsSharedData { issuer: String },
    /// A partner secret is missing from (or malformed in) the environment.
    Secret(crate::partners::SecretError),
    /// The nonce replay cache could not be created.
    ReplayCache(crate::host::store::StoreError),
    /// A shared table (liveness answers, the inventory) could not be created.
    Table(&'static str, crate::host::store::StoreError),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Quota(err) => write!(f, "cannot prepare the quota table: {err}"),
            StartError::Dpop(err) => write!(f, "cannot prepare the DPoP replay table: {err}"),
            StartError::NonceNeedsSharedData { issuer } => write!(
                f,
                "issuer {issuer}: dpop.nonce needs shared data, which this host lacks (each worker would hand out its own nonces)"
            ),
            StartError::Secret(err) => write!(f, "partner secret unavailable: {err}"),
            StartError::ReplayCache(err) => write!(f, "cannot prepare the nonce replay cache: {err}"),
            StartError::Table(what, err) => write!(f, "cannot prepare the {what} table: {err}"),
        }
    }
}

/// What one request carries between its phases.
#[derive(Debug, Default)]
pub struct Request {
    /// The host's id of the request (its HTTP context).
    pub context_id: u32,
    pub request_id: Option<String>,
    /// The credential header, kept only until the decision (never logged).
    pub credential: extract::Presented,
    /// Whether this request already waited once for keys (or the revocation feed).
    pub waited: bool,
    /// The request has content (its headers did not end the stream): set by the shell.
    pub has_body: bool,
    /// A verified signature waiting for the body it covers.
    pub pending: Option<partner::Pending>,
    /// Where this request stands with its token's TokenReview.
    pub liveness: liveness::Progress,
    /// The issuer (index) whose keys verified the token, once decided.
    pub verified_issuer: Option<usize>,
    /// Headers for the response to an allowed request (quota state, DPoP nonce).
    pub response_headers: Vec<(String, String)>,
    /// The `DPoP` scheme, proof and what came of it (see [`dpop`]).
    pub dpop: dpop::DpopRequest,
    /// Path, host, method, Envoy route name and source address.
    pub info: RequestInfo,
    /// What the metrics, the decision log and the access log are told (see [`record`]).
    pub observed: decision_log::Record,
    /// `Some`: the stages record what they decided (see [`trace`]). `None` in the filter.
    pub trace: Option<Box<trace::Trace>>,
    /// Test builds only: the host call the shell fails for this request, wherever it
    /// runs (`fault_injection.fail_header`).
    #[cfg(feature = "fault-injection")]
    pub fail_call: Option<String>,
}

impl Request {
    pub fn new(context_id: u32) -> Self {
        Request { context_id, ..Request::default() }
    }
}

/// What the shell should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Continue,
    /// A local reply was sent (or could not be): the request must stay paused.
    Replied,
    /// Something the request needs is on its way; park it (a [`Waiter`]) until it
    /// arrives or `deadline_ms`, then run it again.
    Wait {
        awaiting: Awaited,
        deadline_ms: u64,
    },
    /// A signature covers the body: pause and buffer it (refusing it above
    /// `max_bytes`), handing each new length to [`body`] until the end of the stream.
    Body {
        max_bytes: u64,
    },
    /// The request made a callout through the host ([`Host::http_call`], a
    /// TokenReview): it stays paused, and the callout's answer goes to [`answered`].
    Called {
        token: u32,
    },
}

/// What a parked request waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Awaited {
    /// A fetched document: an issuer's keys, or the first revocation feed.
    Document(Document),
    /// The answer to a TokenReview another request (or worker) is making.
    Review(ReviewKey),
    /// The answer to its own callout `token`, made while it was woken from the root
    /// context (whose callbacks receive that answer).
    Answer(u32),
}

/// A paused request.
pub struct Waiter {
    pub context_id: u32,
    pub awaiting: Awaited,
    pub deadline_ms: u64,
    pub request: Rc<RefCell<Request>>,
}

/// The request's headers arrived: extract what the decision needs, then decide
/// (or, on the inventory's path, answer it).
pub fn start(vm: &Vm, host: &mut dyn Host, request: &mut Request) -> Step {
    let now_ns = host.now_ns();
    request.observed.started_ns = Some(now_ns);
    if let Err(step) = extract::extract(vm, host, request) {
        return step;
    }
    if vm.config.inventory.as_ref().is_some_and(|i| i.serves(&request.info.path)) {
        let merged = inventory::flush(vm);
        record::last_seen(vm, host, &merged);
        return inventory::serve(vm, host, request, now_ns / 1_000_000);
    }
    run(vm, host, request, now_ns / 1_000_000)
}

/// Decides and acts on one request (again, for one that waited for keys), then
/// counts and publishes the decision unless the request waits.
pub fn run(vm: &Vm, host: &mut dyn Host, request: &mut Request, now_ms: u64) -> Step {
    let step = decide(vm, host, request, now_ms);
    if matches!(step, Step::Continue | Step::Replied) {
        decided(vm, host, request, step == Step::Replied, now_ms);
    }
    step
}

/// The request was forwarded or answered: counted and published
/// ([`record::decided`]), and a verified identity noted in the inventory.
fn decided(vm: &Vm, host: &mut dyn Host, request: &mut Request, replied: bool, now_ms: u64) {
    if !record::decided(vm, host, request, replied) || vm.config.inventory.is_none() {
        return;
    }
    if let Some(identity) = request.observed.identity.clone() {
        let issuer = record::issuer_label(&vm.config, &request.observed).to_owned();
        let merged = inventory::note(vm, host, request, &issuer, &identity, now_ms);
        record::last_seen(vm, host, &merged);
    }
}

/// The body of a request that waits for it ([`Step::Body`]): `buffered` bytes so
/// far, `end_of_stream` once complete. Decides the request once the body is whole
/// (or too large); until then answers [`Step::Body`] again.
pub fn body(
    vm: &Vm,
    host: &mut dyn Host,
    request: &mut Request,
    buffered: usize,
    end_of_stream: bool,
) -> Step {
    partner::body(vm, host, request, buffered, end_of_stream)
}

impl Vm {
    /// The shell could not set a tick period although the plan expected ticks: take
    /// no quota leases, which only the tick gives back when unused. (Counters wait
    /// for the tick only once the shell turns that on.)
    pub fn without_ticks(&self) {
        if let Ok(mut leases) = self.quota_leases.try_borrow_mut() {
            *leases = None;
        }
    }
}

/// What the root context does on every tick besides fetching: merge this worker's
/// inventory into the shared table, update the gauges.
pub fn on_tick(vm: &Vm, host: &mut dyn Host, now_ms: u64) {
    vm.observer.flush(host);
    if let (Some(quotas), Ok(mut leases)) = (&vm.config.quotas, vm.quota_leases.try_borrow_mut()) {
        if let Some(leases) = leases.as_mut() {
            quotas.refund_expired(vm.store.as_ref(), leases, std::time::Duration::from_millis(now_ms));
        }
    }
    let merged = inventory::flush(vm);
    record::last_seen(vm, host, &merged);
    record::gauges(vm, host, now_ms);
}

/// The response to a forwarded request: its quota headers.
pub fn respond(host: &mut dyn Host, request: &Request) {
    for (name, value) in &request.response_headers {
        if let Err(err) = host.set_response_header(name, value) {
            log::warn!("cannot set response header {name}: {err}");
        }
    }
}

/// The end of the stream: the decision line, if this request gets one; on a host
/// without a tick, the gauges the tick would write, now and then.
pub fn finish(vm: &Vm, host: &mut dyn Host, request: &mut Request) {
    record::logged(vm, host, request);
    if !vm.ticks() {
        // When the request began is recent enough for a gauge, and costs no clock read.
        let now_ms = request.observed.started_ns.unwrap_or_else(|| host.now_ns()) / 1_000_000;
        record::gauges_on_request(vm, host, now_ms);
    }
}

/// The answer to callout `token` the request made ([`Step::Called`]): records it and
/// decides the request. `None`: not this request's callout (or it was decided
/// meanwhile): nothing to do.
pub fn answered(
    vm: &Vm,
    host: &mut dyn Host,
    request: &mut Request,
    token: u32,
    response: Response,
    now_ms: u64,
) -> Option<Step> {
    liveness::answered(vm, host, request, token, &response, now_ms)?;
    Some(run(vm, host, request, now_ms))
}

/// The request is going away while its callout is in flight: frees what it held.
pub fn abandoned(vm: &Vm, request: &mut Request) {
    liveness::abandoned(vm, request);
}

/// Whether a parked request's wait is over (besides its deadline, and besides the
/// documents the shell wakes it for when they load): the review it waits for was
/// answered or given up.
pub fn ready(vm: &Vm, waiter: &Waiter, now_ms: u64) -> bool {
    match waiter.awaiting {
        Awaited::Review(key) => liveness::settled(vm, &key, now_ms),
        Awaited::Document(_) | Awaited::Answer(_) => false,
    }
}

/// verify → (await keys) → liveness → (await feed) → dpop → authorize → quota →
/// forward; a partner's credential goes its own way. Managed headers were already
/// stripped.
fn decide(vm: &Vm, host: &mut dyn Host, request: &mut Request, now_ms: u64) -> Step {
    if request.credential.is_partner() {
        let (verification, signed) = partner::verify(vm, host, request, now_ms);
        return partner::proceed(vm, host, request, verification, signed, now_ms);
    }
    let mut verification = verify::verify(vm, host, request, now_ms);
    if let Some(Err(rejection)) = &verification.result {
        if let Some(step) = verify::await_keys(vm, request, rejection, now_ms) {
            return step;
        }
    }
    if let Some(step) = liveness::check(vm, host, request, &mut verification, now_ms) {
        return step;
    }
    let feed = match documents::revocations(vm, request, &mut verification, now_ms) {
        Ok(feed) => feed,
        Err(step) => return step,
    };
    let verification = dpop::dpop(vm, host, request, verification, now_ms);
    authorize::authorize(vm, host, request, verification, feed.as_deref(), now_ms)
}

#[cfg(test)]
mod tests;
