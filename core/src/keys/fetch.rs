//! The life cycle of an issuer's keys, as one state machine for every host.
//!
//! ```text
//!        ┌──────────── due? (schedule: interval, unknown kid, never fetched)
//!        ▼
//!   idle ──► started ──► answered ──ok──► loaded (published to the other workers)
//!    ▲   (discovery      │          └err──► failed: backoff with jitter, last good
//!    │    first, if       │                  keys kept until max_stale
//!    │    configured)     └── a discovery document answers with the next callout
//!    └───────────────────────────────────────────────────────────────────┘
//! ```
//!
//! Two drivers, one machine ([`Mode`]):
//! - **shared** (Envoy-grade hosts): the background tick of every worker picks up
//!   keys another worker published and, when a fetch is due, tries to take the
//!   shared lease; exactly one worker per proxy fetches, and a failure backs off
//!   for the whole proxy ([`super::keyshare`]).
//! - **per VM** (hosts without timers or shared data, such as APISIX): the request
//!   that needs keys asks for them ([`Fetcher::on_request`]); one fetch per issuer
//!   is in flight per VM, and failures back off per VM. OIDC discovery needs the
//!   background fetcher, so configurations with it are refused on such hosts.
//!
//! The machine decides; the shell only makes the callouts it returns ([`Callout`])
//! and reports what happened ([`Fetcher::dispatched`], [`Fetcher::answered`]).
//! Shared-data I/O goes through the [`Store`] the shell passes in. What the machine
//! needs of an issuer is [`FetchedIssuer`].

use std::collections::HashMap;

use log::{info, warn};

use crate::host::store::Store;

use super::discovery::{self, DiscoveryEndpoint, JwksLocation, Located};
use super::jwks::{self, JwksError, ParsedJwks, MAX_JWKS_BYTES};
use super::keyshare::{self, Acquire, LocalKeys, Record, SharedKeys};
use super::source::{JwksSource, RemoteJwks};

/// What the fetch machine needs of a configured issuer.
pub trait FetchedIssuer {
    /// The short local name (logs, shared-data names).
    fn name(&self) -> &str;
    /// The exact `iss` (a discovery document must name it).
    fn iss(&self) -> &str;
    fn jwks(&self) -> &JwksSource;
    fn key_use(&self) -> jwks::KeyUse;
    /// How long getting keys may take (twice the timeout with discovery).
    fn fetch_timeout_ms(&self) -> Option<u64>;
}

/// Extra time a fetch lease is held beyond the fetch timeout.
const LEASE_MARGIN_MS: u64 = 1_000;
/// How long past its timeout a per-VM callout may stay unanswered before another
/// request may try again (a host that never calls back must not block the issuer).
const ABANDON_MARGIN_MS: u64 = 1_000;

/// Who drives the machine (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One fetch per proxy under the shared lease; `me` is this VM's lease-holder id.
    Shared { me: u64 },
    /// Each VM fetches for itself, when a request needs keys.
    PerVm,
}

/// What a callout asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// An OIDC discovery document; the JWKS fetch follows under the same lease.
    Discovery,
    /// The JWKS; `discovered`: at a location a discovery document gave.
    Jwks { discovered: bool },
}

/// A callout the shell must make: a GET of `path` on `cluster`, with `authority`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callout {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout_ms: u64,
    /// Handed back with [`Fetcher::dispatched`].
    pub ticket: Ticket,
}

/// What the machine needs to know about a callout once it is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub issuer: usize,
    pub stage: Stage,
    /// Failed fetches in a row before this one.
    failures: u32,
}

/// The answer to a callout: its status (`None`: no answer — refused, reset, timed
/// out) and body, or the size of a body over the limit (not copied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: Option<u16>,
    pub body: Result<Vec<u8>, usize>,
}

/// A fetch ended: the shell counts it and answers the requests waiting for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    pub issuer: usize,
    pub success: bool,
}

/// What the shell does after an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Make this callout (the JWKS, after its discovery document).
    Call(Callout),
    Done(Done),
}

/// What one background tick found.
#[derive(Debug, Default)]
pub struct Tick {
    /// Issuers whose keys changed (another worker published new ones).
    pub loaded: Vec<usize>,
    /// Fetches to start.
    pub callouts: Vec<Callout>,
}

/// One VM's fetch state.
#[derive(Debug)]
pub struct Fetcher {
    mode: Mode,
    /// Per issuer (same index as the configuration): `None` for inline keys.
    issuers: Vec<Option<IssuerFetch>>,
    /// Callouts in flight, by the host's token.
    in_flight: HashMap<u32, InFlight>,
}

#[derive(Debug)]
struct IssuerFetch {
    shared: SharedKeys,
    /// Per-VM mode: failures in a row, no attempt before `retry_at_ms`, and when the
    /// callout in flight (if any) started.
    failures: u32,
    retry_at_ms: u64,
    busy_since_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    ticket: Ticket,
}

impl Fetcher {
    pub fn new(issuers: &[impl FetchedIssuer], mode: Mode) -> Fetcher {
        let issuers = issuers
            .iter()
            .map(|issuer| match issuer.jwks() {
                JwksSource::Remote(remote) => Some(IssuerFetch {
                    shared: SharedKeys::new(issuer.name(), &remote.source_id()),
                    failures: 0,
                    retry_at_ms: 0,
                    busy_since_ms: None,
                }),
                JwksSource::Inline(_) => None,
            })
            .collect();
        Fetcher { mode, issuers, in_flight: HashMap::new() }
    }

    /// Whether any issuer's keys are fetched at all.
    pub fn fetches(&self) -> bool {
        self.issuers.iter().any(Option::is_some)
    }

    /// The largest body accepted for the callout `token`.
    pub fn max_body(&self, token: u32) -> usize {
        match self.in_flight.get(&token).map(|f| f.ticket.stage) {
            Some(Stage::Discovery) => discovery::MAX_DOCUMENT_BYTES,
            _ => MAX_JWKS_BYTES,
        }
    }

    /// Shared mode, on every tick: load keys another worker published; start the
    /// fetches that are due and whose lease this VM takes.
    pub fn tick(
        &mut self,
        issuers: &[impl FetchedIssuer],
        keys: &mut [LocalKeys],
        store: &dyn Store,
        now_ms: u64,
    ) -> Tick {
        let mut tick = Tick::default();
        let Mode::Shared { me } = self.mode else { return tick };
        for (index, issuer) in issuers.iter().enumerate() {
            let (JwksSource::Remote(remote), Some(Some(state)), Some(local)) =
                (issuer.jwks(), self.issuers.get(index), keys.get_mut(index))
            else {
                continue;
            };
            if pick_up_published(issuer, local, &state.shared, store) {
                tick.loaded.push(index);
            }
            if self.in_flight.values().any(|f| f.ticket.issuer == index) {
                continue;
            }
            let wanted =
                local.schedule.is_some_and(|s| s.fetch_wanted(now_ms, local.fetched_at_ms, local.kid_miss));
            if !wanted {
                continue;
            }
            // With discovery the lease covers both callouts.
            let hold = issuer.fetch_timeout_ms().unwrap_or(remote.timeout_ms).saturating_add(LEASE_MARGIN_MS);
            let failures = match keyshare::try_acquire(store, &state.shared.lease, me, now_ms, hold) {
                Ok(Acquire::Acquired { failures }) => failures,
                Ok(Acquire::Busy) => continue,
                Err(err) => {
                    warn!("cannot take the JWKS fetch lease: {err}");
                    continue;
                }
            };
            let (location, stage) = first_target(issuer, remote, store, now_ms);
            tick.callouts.push(callout(remote, location, Ticket { issuer: index, stage, failures }));
        }
        tick
    }

    /// Per-VM mode: a request needs `issuer`'s keys (to be decided, or because the
    /// keys it was allowed with are due). The callout to make, unless one is in
    /// flight or the last failure is still backing off.
    pub fn on_request(
        &mut self,
        issuers: &[impl FetchedIssuer],
        issuer: usize,
        now_ms: u64,
    ) -> Option<Callout> {
        let JwksSource::Remote(remote) = issuers.get(issuer)?.jwks() else { return None };
        let state = self.issuers.get_mut(issuer)?.as_mut()?;
        let stuck_after = remote.timeout_ms.saturating_add(ABANDON_MARGIN_MS);
        if state.busy_since_ms.is_some_and(|since| now_ms.saturating_sub(since) < stuck_after)
            || now_ms < state.retry_at_ms
        {
            return None;
        }
        state.busy_since_ms = Some(now_ms);
        let location = configured_location(remote);
        Some(callout(
            remote,
            location,
            Ticket { issuer, stage: Stage::Jwks { discovered: false }, failures: state.failures },
        ))
    }

    /// The shell made the callout (`Ok(token)`) or could not (`Err(why)`: the fetch
    /// failed, and `Some(Done)` says so).
    #[allow(clippy::too_many_arguments)]
    pub fn dispatched(
        &mut self,
        issuers: &[impl FetchedIssuer],
        ticket: Ticket,
        result: Result<u32, String>,
        keys: &[LocalKeys],
        store: &dyn Store,
        now_ms: u64,
        jitter: f64,
    ) -> Option<Done> {
        match result {
            Ok(token) => {
                self.in_flight.insert(token, InFlight { ticket });
                None
            }
            Err(why) => {
                let kept = keys.get(ticket.issuer).is_some_and(|k| k.usable(now_ms).is_some());
                let why = format!("cannot fetch JWKS from {why}");
                Some(self.failed(issuers, ticket, &why, kept, store, now_ms, jitter))
            }
        }
    }

    /// The request that made a per-VM callout went away before its answer.
    pub fn abandoned(&mut self, token: u32) {
        if let Some(flight) = self.in_flight.remove(&token) {
            if let Some(Some(state)) = self.issuers.get_mut(flight.ticket.issuer) {
                state.busy_since_ms = None;
            }
        }
    }

    /// The answer to callout `token` arrived. `None`: not one of ours.
    #[allow(clippy::too_many_arguments)]
    pub fn answered(
        &mut self,
        issuers: &[impl FetchedIssuer],
        token: u32,
        response: Response,
        keys: &mut [LocalKeys],
        store: &dyn Store,
        now_ms: u64,
        jitter: f64,
    ) -> Option<Next> {
        let InFlight { ticket } = self.in_flight.remove(&token)?;
        let issuer = issuers.get(ticket.issuer)?;
        let JwksSource::Remote(remote) = issuer.jwks() else { return None };
        if let Some(Some(state)) = self.issuers.get_mut(ticket.issuer) {
            state.busy_since_ms = None;
        }
        if ticket.stage == Stage::Discovery {
            return Some(match self.discovered(issuer, remote, response, store, now_ms) {
                Ok(location) => Next::Call(callout(
                    remote,
                    location,
                    Ticket { stage: Stage::Jwks { discovered: true }, ..ticket },
                )),
                Err(why) => {
                    let kept = keys.get(ticket.issuer).is_some_and(|k| k.usable(now_ms).is_some());
                    Next::Done(self.failed(issuers, ticket, &why, kept, store, now_ms, jitter))
                }
            });
        }
        let outcome = read_jwks(response, issuer.key_use());
        let local = keys.get_mut(ticket.issuer)?;
        Some(Next::Done(match outcome {
            Ok((body, parsed)) => {
                for skipped in &parsed.skipped {
                    warn!("issuer {}: JWKS {skipped}: skipped", issuer.name());
                }
                info!("issuer {}: loaded {} key(s)", issuer.name(), parsed.keys.len());
                local.load(parsed.keys, now_ms);
                self.succeeded(ticket.issuer, body, local, store, now_ms);
                Done { issuer: ticket.issuer, success: true }
            }
            Err(why) => {
                if ticket.stage == (Stage::Jwks { discovered: true }) {
                    // The keys may have moved (a 404): look them up again next time.
                    let _ = store.set(&Located::key(issuer.name(), &remote.source_id()), &[], None);
                }
                let kept = local.usable(now_ms).is_some();
                self.failed(issuers, ticket, &why, kept, store, now_ms, jitter)
            }
        }))
    }

    /// A discovery document arrived: check it and share the JWKS location it gives.
    fn discovered(
        &self,
        issuer: &impl FetchedIssuer,
        remote: &RemoteJwks,
        response: Response,
        store: &dyn Store,
        now_ms: u64,
    ) -> Result<JwksLocation, String> {
        let Some(policy) = &remote.discovery else { return Err("no discovery configured".into()) };
        let endpoint = DiscoveryEndpoint {
            cluster: remote.cluster.clone(),
            authority: remote.authority.clone(),
            path: remote.path.clone(),
        };
        let located = match response {
            Response { status: None, .. } => {
                Err("no response (connection refused, reset or timed out)".to_owned())
            }
            Response { status: Some(200), body: Ok(body) } => {
                discovery::locate(&body, issuer.iss(), &endpoint, policy).map_err(|e| e.to_string())
            }
            Response { status: Some(200), body: Err(bytes) } => Err(format!(
                "discovery document is {bytes} bytes, over the {}-byte limit",
                discovery::MAX_DOCUMENT_BYTES
            )),
            Response { status: Some(status), .. } => {
                Err(format!("discovery endpoint answered HTTP {status}"))
            }
        };
        let location = located.map_err(|why| format!("OIDC discovery from {:?}: {why}", remote.path))?;
        let record = Located { discovered_at_ms: now_ms, location: location.clone() };
        if let Err(err) = store.set(&Located::key(issuer.name(), &remote.source_id()), &record.encode(), None)
        {
            warn!("issuer {}: cannot share the discovered JWKS location: {err}", issuer.name());
        }
        info!(
            "issuer {}: discovery: JWKS at {}{} (cluster {:?})",
            issuer.name(),
            location.authority,
            location.path,
            location.cluster
        );
        Ok(location)
    }

    fn succeeded(
        &mut self,
        index: usize,
        body: Vec<u8>,
        local: &mut LocalKeys,
        store: &dyn Store,
        now_ms: u64,
    ) {
        let Some(Some(state)) = self.issuers.get_mut(index) else { return };
        match self.mode {
            Mode::Shared { me } => {
                let record = Record { fetched_at_ms: now_ms, body };
                if let Err(err) = keyshare::publish(store, &state.shared, me, &record) {
                    warn!("cannot share the keys with other workers: {err}");
                }
                local.seen_cas = store.get(&state.shared.record).ok().and_then(|(_, cas)| cas);
            }
            Mode::PerVm => {
                state.failures = 0;
                state.retry_at_ms = 0;
            }
        }
    }

    /// A fetch failed: back off (for the proxy, through the lease; or for this VM).
    /// `kept`: whether the last good keys still serve.
    #[allow(clippy::too_many_arguments)]
    fn failed(
        &mut self,
        issuers: &[impl FetchedIssuer],
        ticket: Ticket,
        why: &str,
        kept: bool,
        store: &dyn Store,
        now_ms: u64,
        jitter: f64,
    ) -> Done {
        let done = Done { issuer: ticket.issuer, success: false };
        let (Some(issuer), Some(Some(state))) =
            (issuers.get(ticket.issuer), self.issuers.get_mut(ticket.issuer))
        else {
            return done;
        };
        let JwksSource::Remote(remote) = issuer.jwks() else { return done };
        state.busy_since_ms = None;
        let failures = match self.mode {
            Mode::Shared { .. } => ticket.failures.saturating_add(1),
            Mode::PerVm => {
                state.failures = state.failures.saturating_add(1);
                state.failures
            }
        };
        let backoff = remote.schedule().backoff_ms(failures, jitter);
        match self.mode {
            Mode::Shared { me } => {
                let _ = keyshare::fail(store, &state.shared.lease, me, now_ms, failures, backoff);
            }
            Mode::PerVm => state.retry_at_ms = now_ms.saturating_add(backoff),
        }
        warn!(
            "issuer {}: JWKS refresh failed ({failures} in a row): {why}; {}; retry in {backoff} ms",
            issuer.name(),
            if kept { "keeping the last good keys" } else { "no usable keys" },
        );
        done
    }
}

/// Whether keys this request verified with are due for refresh (per-VM mode).
pub fn refresh_due(keys: &[LocalKeys], issuer: usize, now_ms: u64) -> bool {
    keys.get(issuer).is_some_and(|local| {
        local.schedule.is_some_and(|s| s.fetch_wanted(now_ms, local.fetched_at_ms, local.kid_miss))
    })
}

/// Loads keys another worker (or this one) published, if they changed. Returns
/// whether new keys were loaded.
fn pick_up_published(
    issuer: &impl FetchedIssuer,
    local: &mut LocalKeys,
    shared: &SharedKeys,
    store: &dyn Store,
) -> bool {
    let (bytes, cas) = match store.get(&shared.record) {
        Ok((Some(bytes), cas)) => (bytes, cas),
        Ok((None, _)) => return false,
        Err(err) => {
            warn!("cannot read shared keys: {err}");
            return false;
        }
    };
    if cas.is_some() && cas == local.seen_cas {
        return false;
    }
    let parsed = Record::decode(&bytes)
        .and_then(|r| jwks::parse_for(&r.body, issuer.key_use()).ok().map(|p| (r.fetched_at_ms, p)));
    local.seen_cas = cas;
    match parsed {
        Some((fetched_at, parsed)) => {
            local.load(parsed.keys, fetched_at);
            true
        }
        None => {
            warn!("shared keys of issuer {} are unreadable; waiting for the next fetch", issuer.name());
            false
        }
    }
}

fn configured_location(remote: &RemoteJwks) -> JwksLocation {
    JwksLocation {
        cluster: remote.cluster.clone(),
        authority: remote.authority.clone(),
        path: remote.path.clone(),
    }
}

/// Where a fetch starts: the JWKS, or — with discovery and no fresh location shared
/// by whichever worker discovered last — its discovery document.
fn first_target(
    issuer: &impl FetchedIssuer,
    remote: &RemoteJwks,
    store: &dyn Store,
    now_ms: u64,
) -> (JwksLocation, Stage) {
    if remote.discovery.is_none() {
        return (configured_location(remote), Stage::Jwks { discovered: false });
    }
    let interval_ms = remote.schedule().interval_ms;
    match store.get(&Located::key(issuer.name(), &remote.source_id())) {
        Ok((Some(bytes), _)) => match Located::decode(&bytes) {
            Some(located) if located.fresh(now_ms, interval_ms) => {
                (located.location, Stage::Jwks { discovered: true })
            }
            _ => (configured_location(remote), Stage::Discovery),
        },
        _ => (configured_location(remote), Stage::Discovery),
    }
}

fn callout(remote: &RemoteJwks, location: JwksLocation, ticket: Ticket) -> Callout {
    Callout {
        cluster: location.cluster,
        authority: location.authority,
        path: location.path,
        timeout_ms: remote.timeout_ms,
        ticket,
    }
}

/// The JWKS in a response: the body and its keys, or why not.
fn read_jwks(response: Response, key_use: jwks::KeyUse) -> Result<(Vec<u8>, ParsedJwks), String> {
    match response {
        Response { status: None, .. } => {
            Err("no response (connection refused, reset or timed out)".to_owned())
        }
        Response { status: Some(200), body: Ok(body) } => {
            jwks::parse_for(&body, key_use).map(|parsed| (body, parsed)).map_err(|e| e.to_string())
        }
        Response { status: Some(200), body: Err(bytes) } => {
            Err(JwksError::TooLarge { bytes, limit: MAX_JWKS_BYTES }.to_string())
        }
        Response { status: Some(status), .. } => Err(format!("key server answered HTTP {status}")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::Config;
    use crate::host::store::MemoryStore;
    use crate::keys::keyshare::LocalKeys;
    use crate::testkit;

    fn config(jwks: serde_json::Value) -> Config {
        Config::from_json(
            json!({"issuers": [{"name": "ci", "issuer": "https://issuer.example", "audiences": ["a"], "jwks": jwks}]})
                .to_string()
                .as_bytes(),
        )
        .unwrap()
    }

    fn remote() -> Config {
        config(json!({"cluster": "jwks", "authority": "idp", "path": "/jwks.json", "refresh_seconds": 60,
                      "min_refetch_seconds": 5, "timeout_ms": 1000}))
    }

    fn fresh_keys(config: &Config) -> Vec<LocalKeys> {
        config
            .issuers
            .iter()
            .map(|i| match &i.jwks {
                JwksSource::Remote(r) => LocalKeys::remote(r.schedule()),
                JwksSource::Inline(set) => LocalKeys::inline(set.clone()),
            })
            .collect()
    }

    fn ok_response() -> Response {
        Response { status: Some(200), body: Ok(testkit::jwks().to_string().into_bytes()) }
    }

    /// One VM of a proxy: its machine and its keys.
    struct Worker {
        fetcher: Fetcher,
        keys: Vec<LocalKeys>,
    }

    impl Worker {
        fn new(config: &Config, me: u64) -> Self {
            Worker { fetcher: Fetcher::new(&config.issuers, Mode::Shared { me }), keys: fresh_keys(config) }
        }

        fn tick(&mut self, config: &Config, store: &MemoryStore, now: u64) -> Tick {
            self.fetcher.tick(&config.issuers, &mut self.keys, store, now)
        }

        fn answer(
            &mut self,
            config: &Config,
            token: u32,
            response: Response,
            store: &MemoryStore,
            now: u64,
        ) -> Next {
            self.fetcher.answered(&config.issuers, token, response, &mut self.keys, store, now, 0.0).unwrap()
        }
    }

    #[test]
    fn one_fetch_per_proxy_and_every_worker_picks_the_keys_up() {
        let config = remote();
        let store = MemoryStore::new();
        let (mut a, mut b) = (Worker::new(&config, 1), Worker::new(&config, 2));
        let first = a.tick(&config, &store, 1_000);
        assert_eq!(first.callouts.len(), 1, "a takes the lease");
        assert_eq!(first.callouts[0].path, "/jwks.json");
        assert!(b.tick(&config, &store, 1_000).callouts.is_empty(), "b finds the lease taken");
        let ticket = first.callouts[0].ticket;
        assert_eq!(a.fetcher.dispatched(&config.issuers, ticket, Ok(7), &a.keys, &store, 1_000, 0.0), None);
        assert!(a.tick(&config, &store, 1_100).callouts.is_empty(), "no second fetch while one is in flight");
        assert_eq!(
            a.answer(&config, 7, ok_response(), &store, 1_200),
            Next::Done(Done { issuer: 0, success: true })
        );
        assert!(a.keys[0].usable(1_200).is_some());
        let picked = b.tick(&config, &store, 1_500);
        assert_eq!(
            (picked.loaded, picked.callouts.len()),
            (vec![0], 0),
            "b loads the published keys, fetches nothing"
        );
        assert!(b.keys[0].usable(1_500).is_some());
        assert!(b.tick(&config, &store, 2_000).loaded.is_empty(), "loaded once, not on every tick");
        // Due again after the refresh interval; an unknown kid makes it due early.
        assert!(a.tick(&config, &store, 30_000).callouts.is_empty());
        a.keys[0].kid_miss = true;
        assert_eq!(a.tick(&config, &store, 30_000).callouts.len(), 1);
    }

    #[test]
    fn a_failure_backs_off_for_the_whole_proxy_and_keeps_the_last_good_keys() {
        let config = remote();
        let store = MemoryStore::new();
        let (mut a, mut b) = (Worker::new(&config, 1), Worker::new(&config, 2));
        let ticket = a.tick(&config, &store, 0).callouts[0].ticket;
        a.fetcher.dispatched(&config.issuers, ticket, Ok(1), &a.keys, &store, 0, 0.0);
        a.answer(&config, 1, ok_response(), &store, 0);
        // Due again; the key server answers 500.
        let ticket = a.tick(&config, &store, 61_000).callouts[0].ticket;
        a.fetcher.dispatched(&config.issuers, ticket, Ok(2), &a.keys, &store, 61_000, 0.0);
        let failed =
            a.answer(&config, 2, Response { status: Some(500), body: Ok(Vec::new()) }, &store, 61_000);
        assert_eq!(failed, Next::Done(Done { issuer: 0, success: false }));
        assert!(a.keys[0].usable(61_000).is_some(), "last good keys kept");
        // 500 ms of backoff (no jitter) for everyone; then one of them retries.
        assert!(a.tick(&config, &store, 61_400).callouts.is_empty());
        assert!(b.tick(&config, &store, 61_400).callouts.is_empty());
        assert_eq!(b.tick(&config, &store, 61_600).callouts.len(), 1);
        // A callout that cannot even be made fails the same way.
        let mut c = Worker::new(&config, 3);
        let store = MemoryStore::new();
        let ticket = c.tick(&config, &store, 0).callouts[0].ticket;
        let done =
            c.fetcher.dispatched(&config.issuers, ticket, Err("BadArgument".into()), &c.keys, &store, 0, 0.0);
        assert_eq!(done, Some(Done { issuer: 0, success: false }));
        assert!(c.tick(&config, &store, 100).callouts.is_empty(), "backing off");
    }

    #[test]
    fn discovery_comes_first_and_its_location_is_shared() {
        let config = Config::from_json(
            json!({"issuers": [{"name": "ci", "issuer": "https://idp.example", "audiences": ["a"],
                   "discovery": {"cluster": "idp", "authority": "idp.example"}}]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let store = MemoryStore::new();
        let mut a = Worker::new(&config, 1);
        let callout = a.tick(&config, &store, 0).callouts.remove(0);
        assert_eq!(
            (callout.path.as_str(), callout.ticket.stage),
            ("/.well-known/openid-configuration", Stage::Discovery)
        );
        a.fetcher.dispatched(&config.issuers, callout.ticket, Ok(1), &a.keys, &store, 0, 0.0);
        let document = json!({"issuer": "https://idp.example", "jwks_uri": "https://idp.example/keys"});
        let next = a.answer(
            &config,
            1,
            Response { status: Some(200), body: Ok(document.to_string().into_bytes()) },
            &store,
            0,
        );
        let Next::Call(jwks) = next else { panic!("expected the JWKS callout, got {next:?}") };
        assert_eq!((jwks.path.as_str(), jwks.ticket.stage), ("/keys", Stage::Jwks { discovered: true }));
        a.fetcher.dispatched(&config.issuers, jwks.ticket, Ok(2), &a.keys, &store, 0, 0.0);
        assert_eq!(
            a.answer(&config, 2, ok_response(), &store, 0),
            Next::Done(Done { issuer: 0, success: true })
        );
        // The next fetch goes straight to the shared location.
        a.keys[0].kid_miss = true;
        let again = a.tick(&config, &store, 400_000).callouts.remove(0);
        assert_eq!((again.path.as_str(), again.ticket.stage), ("/keys", Stage::Jwks { discovered: true }));
    }

    #[test]
    fn per_vm_one_callout_in_flight_and_backoff_after_a_failure() {
        let config = remote();
        let store = MemoryStore::new();
        let mut fetcher = Fetcher::new(&config.issuers, Mode::PerVm);
        let mut keys = fresh_keys(&config);
        assert!(
            fetcher.tick(&config.issuers, &mut keys, &store, 0).callouts.is_empty(),
            "never from the tick"
        );
        let callout = fetcher.on_request(&config.issuers, 0, 0).unwrap();
        assert!(fetcher.on_request(&config.issuers, 0, 10).is_none(), "one in flight per VM");
        fetcher.dispatched(&config.issuers, callout.ticket, Ok(5), &keys, &store, 0, 0.0);
        let failed = fetcher.answered(
            &config.issuers,
            5,
            Response { status: None, body: Ok(vec![]) },
            &mut keys,
            &store,
            50,
            0.0,
        );
        assert_eq!(failed, Some(Next::Done(Done { issuer: 0, success: false })));
        assert!(fetcher.on_request(&config.issuers, 0, 100).is_none(), "backing off");
        let retry = fetcher.on_request(&config.issuers, 0, 600).unwrap();
        fetcher.dispatched(&config.issuers, retry.ticket, Ok(6), &keys, &store, 600, 0.0);
        let ok = fetcher.answered(&config.issuers, 6, ok_response(), &mut keys, &store, 700, 0.0);
        assert_eq!(ok, Some(Next::Done(Done { issuer: 0, success: true })));
        assert!(keys[0].usable(700).is_some());
        assert_eq!(store.len(), 0, "nothing shared in per-VM mode");
        // A request that goes away frees the issuer for the next one.
        keys[0].kid_miss = true;
        let third = fetcher.on_request(&config.issuers, 0, 10_000).unwrap();
        fetcher.dispatched(&config.issuers, third.ticket, Ok(9), &keys, &store, 10_000, 0.0);
        fetcher.abandoned(9);
        assert!(fetcher.on_request(&config.issuers, 0, 10_001).is_some());
    }

    #[test]
    fn oversized_and_unanswered_fetches_are_failures() {
        let config = remote();
        let store = MemoryStore::new();
        let mut a = Worker::new(&config, 1);
        let ticket = a.tick(&config, &store, 0).callouts[0].ticket;
        a.fetcher.dispatched(&config.issuers, ticket, Ok(3), &a.keys, &store, 0, 0.0);
        assert_eq!(a.fetcher.max_body(3), MAX_JWKS_BYTES);
        let big =
            a.answer(&config, 3, Response { status: Some(200), body: Err(MAX_JWKS_BYTES + 1) }, &store, 0);
        assert_eq!(big, Next::Done(Done { issuer: 0, success: false }));
        assert!(a.keys[0].usable(0).is_none());
        assert!(
            a.fetcher.answered(&config.issuers, 99, ok_response(), &mut a.keys, &store, 0, 0.0).is_none(),
            "not ours"
        );
    }
}
