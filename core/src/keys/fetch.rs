//! The life cycle of a fetched document — an issuer's JWKS, or the revocation
//! feed — as one state machine for every host.
//!
//! ```text
//!        ┌──────────── due? (schedule: interval, early refetch, never fetched)
//!        ▼
//!   idle ──► started ──► answered ──ok──► loaded (published to the other workers)
//!    ▲   (discovery      │          └err──► failed: backoff with jitter, last good
//!    │    first, if       │                  copy kept until max_stale
//!    │    configured)     └── a discovery document answers with the next callout
//!    └───────────────────────────────────────────────────────────────────┘
//! ```
//!
//! What is fetched is a [`Document`]: [`Document::Jwks`] of one issuer, or
//! [`Document::Revocations`]. The machine does not know what either means: it asks
//! the local copy to [`LocalDocument::load`] a body, and the copy parses it (a JWKS
//! into keys, a feed into deny lists) or refuses it, keeping what it had. Everything
//! else — the schedule, the shared lease, backoff, the last good copy, publishing
//! to the other workers, the size limit — is the same for every document.
//!
//! Two drivers, one machine ([`Mode`]):
//! - **shared** (Envoy-grade hosts): the background tick of every worker picks up
//!   copies another worker published and, when a fetch is due, tries to take the
//!   shared lease; exactly one worker per proxy fetches, and a failure backs off
//!   for the whole proxy ([`super::keyshare`]).
//! - **per VM** (hosts without timers or shared data, such as APISIX): the request
//!   that needs a document asks for it ([`Fetcher::on_request`]); one fetch per
//!   document is in flight per VM, and failures back off per VM. With OIDC
//!   discovery that request makes both callouts, the discovery document's and then
//!   the JWKS's, and waits for both; the location found is kept in the VM's store
//!   (shared by the workers where the host shares one) like the tick's.
//!
//! The machine decides; the shell only makes the callouts it returns ([`Callout`])
//! and reports what happened ([`Fetcher::dispatched`], [`Fetcher::answered`]).
//! Shared-data I/O goes through the [`Store`] the shell passes in. What the machine
//! needs of the documents is [`Sources`] (the pipeline's VM provides it).

use std::collections::HashMap;

use log::{info, warn};

use crate::host::store::Store;

use super::discovery::{self, DiscoveryEndpoint, JwksLocation, Located};
use super::jwks::{self, MAX_JWKS_BYTES};
use super::keyshare::{self, Acquire, LocalKeys, Record, SharedKeys};
use super::refresh::Schedule;
use super::source::{JwksSource, RemoteJwks};

/// A document the machine fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Document {
    /// The JWKS of issuer `n` (same index as the configuration).
    Jwks(usize),
    /// The revocation feed (`revocation` in the configuration).
    Revocations,
}

impl Document {
    /// What it is, for log lines.
    pub fn what(self) -> &'static str {
        match self {
            Document::Jwks(_) => "JWKS",
            Document::Revocations => "revocation feed",
        }
    }

    /// How log lines name the copy of `name` (the issuer's, or the feed's): as they
    /// did before the feed existed for keys, so operators' log searches keep working.
    pub fn subject(self, name: &str) -> String {
        match self {
            Document::Jwks(_) => format!("issuer {name}: JWKS"),
            Document::Revocations => "revocation feed".to_owned(),
        }
    }

    /// The prefix of log lines about the copy of `name`.
    pub fn prefix(self, name: &str) -> String {
        match self {
            Document::Jwks(_) => format!("issuer {name}:"),
            Document::Revocations => "revocation feed:".to_owned(),
        }
    }

    /// The shared-data namespace of its copy and lease.
    fn kind(self) -> &'static str {
        match self {
            Document::Jwks(_) => "jwks",
            Document::Revocations => "revocations",
        }
    }
}

/// Where a document comes from, and what the machine may accept of it.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The issuer's name, or `revocations`: logs and shared-data names.
    pub name: &'a str,
    /// The exact `iss` a discovery document must name (JWKS with discovery only).
    pub iss: &'a str,
    /// Location, schedule, timeout (and discovery, for a JWKS).
    pub remote: &'a RemoteJwks,
    /// How long getting it may take (twice the timeout with discovery).
    pub fetch_timeout_ms: u64,
    /// The largest body accepted; a larger one is a failed fetch, never copied.
    pub max_body: usize,
}

/// One VM's copy of a fetched document, as the machine sees it.
pub trait LocalDocument {
    /// When it should be fetched (`None`: never, e.g. inline keys).
    fn schedule(&self) -> Option<Schedule>;
    /// When the current copy was fetched (by whichever worker).
    fn fetched_at_ms(&self) -> Option<u64>;
    /// Whether a refetch was asked for before the interval (a token named an
    /// unknown `kid`), throttled by `min_refetch`. Only keys are ever asked for early.
    fn early(&self) -> bool {
        false
    }
    /// CAS of the shared record the copy was loaded from: re-read only on change.
    fn seen_cas(&self) -> Option<u32>;
    fn set_seen_cas(&mut self, cas: Option<u32>);
    /// Whether the copy may still serve at `now` (the last good copy, until `max_stale`).
    fn usable(&self, now_ms: u64) -> bool;
    /// Parses `body`, fetched at `fetched_at_ms`, and makes it the current copy.
    /// `Err(why)`: refused, and the copy is what it was.
    fn load(&mut self, body: &[u8], fetched_at_ms: u64) -> Result<Loaded, String>;
}

/// What loading a document said, for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// `loaded 3 key(s)`, `12 entries`.
    pub summary: String,
    /// Parts that were skipped (a key of an unknown type), each logged as a warning.
    pub warnings: Vec<String>,
}

/// What the machine fetches and where each local copy lives.
pub trait Sources {
    /// Every fetched document, in a stable order (inline keys are not fetched).
    fn documents(&self) -> Vec<Document>;
    /// A document's source and this VM's copy of it.
    fn get(&mut self, document: Document) -> Option<(Source<'_>, &mut dyn LocalDocument)>;
}

/// What the machine needs of a configured issuer whose JWKS it fetches.
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

/// The JWKS of every issuer whose keys are fetched, as [`Sources`] (the pipeline
/// adds the revocation feed to these).
pub struct IssuerKeys<'a, I: FetchedIssuer> {
    pub issuers: &'a [I],
    /// Same index as `issuers`.
    pub keys: &'a mut [LocalKeys],
}

impl<I: FetchedIssuer> IssuerKeys<'_, I> {
    pub fn documents(&self) -> impl Iterator<Item = Document> + '_ {
        self.issuers
            .iter()
            .enumerate()
            .filter(|(_, issuer)| matches!(issuer.jwks(), JwksSource::Remote(_)))
            .map(|(index, _)| Document::Jwks(index))
    }

    pub fn get(&mut self, index: usize) -> Option<(Source<'_>, &mut dyn LocalDocument)> {
        let issuer = self.issuers.get(index)?;
        let JwksSource::Remote(remote) = issuer.jwks() else { return None };
        let local = self.keys.get_mut(index)?;
        let source = Source {
            name: issuer.name(),
            iss: issuer.iss(),
            remote,
            fetch_timeout_ms: issuer.fetch_timeout_ms().unwrap_or(remote.timeout_ms),
            max_body: MAX_JWKS_BYTES,
        };
        Some((source, local))
    }
}

impl<I: FetchedIssuer> Sources for IssuerKeys<'_, I> {
    fn documents(&self) -> Vec<Document> {
        IssuerKeys::documents(self).collect()
    }

    fn get(&mut self, document: Document) -> Option<(Source<'_>, &mut dyn LocalDocument)> {
        match document {
            Document::Jwks(index) => IssuerKeys::get(self, index),
            Document::Revocations => None,
        }
    }
}

/// An issuer's keys as a fetched document: a body is a JWKS, parsed for the
/// issuer's key `use`.
impl LocalDocument for LocalKeys {
    fn schedule(&self) -> Option<Schedule> {
        self.schedule
    }

    fn fetched_at_ms(&self) -> Option<u64> {
        self.fetched_at_ms
    }

    fn early(&self) -> bool {
        self.kid_miss
    }

    fn seen_cas(&self) -> Option<u32> {
        self.seen_cas
    }

    fn set_seen_cas(&mut self, cas: Option<u32>) {
        self.seen_cas = cas;
    }

    fn usable(&self, now_ms: u64) -> bool {
        LocalKeys::usable(self, now_ms).is_some()
    }

    fn load(&mut self, body: &[u8], fetched_at_ms: u64) -> Result<Loaded, String> {
        let parsed = jwks::parse_for(body, self.key_use).map_err(|e| e.to_string())?;
        let loaded = Loaded {
            summary: format!("loaded {} key(s)", parsed.keys.len()),
            warnings: parsed.skipped.iter().map(ToString::to_string).collect(),
        };
        LocalKeys::load(self, parsed.keys, fetched_at_ms);
        Ok(loaded)
    }
}

/// Extra time a fetch lease is held beyond the fetch timeout.
const LEASE_MARGIN_MS: u64 = 1_000;
/// How long past its timeout a per-VM callout may stay unanswered before another
/// request may try again (a host that never calls back must not block the document).
const ABANDON_MARGIN_MS: u64 = 1_000;

/// Who drives the machine (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One fetch per proxy under the shared lease; `me` is this VM's lease-holder id.
    Shared { me: u64 },
    /// Each VM fetches for itself, when a request needs a document.
    PerVm,
}

/// What a callout asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// An OIDC discovery document; the JWKS fetch follows under the same lease.
    Discovery,
    /// The document itself; `discovered`: at a location a discovery document gave.
    Document { discovered: bool },
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
    pub document: Document,
    pub stage: Stage,
    /// Failed fetches in a row before this one.
    failures: u32,
    /// The largest body accepted for this callout.
    max_body: usize,
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
    pub document: Document,
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
    /// Documents whose copy changed (another worker published a new one).
    pub loaded: Vec<Document>,
    /// Fetches to start.
    pub callouts: Vec<Callout>,
}

/// One VM's fetch state.
#[derive(Debug)]
pub struct Fetcher {
    mode: Mode,
    /// Per fetched document.
    documents: HashMap<Document, DocumentFetch>,
    /// Callouts in flight, by the host's token.
    in_flight: HashMap<u32, Ticket>,
}

#[derive(Debug)]
struct DocumentFetch {
    shared: SharedKeys,
    /// Per-VM mode: failures in a row, no attempt before `retry_at_ms`, and when the
    /// callout in flight (if any) started.
    failures: u32,
    retry_at_ms: u64,
    busy_since_ms: Option<u64>,
}

impl Fetcher {
    pub fn new(sources: &mut dyn Sources, mode: Mode) -> Fetcher {
        let mut documents = HashMap::new();
        for document in sources.documents() {
            if let Some((source, _)) = sources.get(document) {
                let shared =
                    SharedKeys::for_document(document.kind(), source.name, &source.remote.source_id());
                documents.insert(
                    document,
                    DocumentFetch { shared, failures: 0, retry_at_ms: 0, busy_since_ms: None },
                );
            }
        }
        Fetcher { mode, documents, in_flight: HashMap::new() }
    }

    /// Whether anything is fetched at all.
    pub fn fetches(&self) -> bool {
        !self.documents.is_empty()
    }

    /// The largest body accepted for the callout `token`.
    pub fn max_body(&self, token: u32) -> usize {
        self.in_flight.get(&token).map_or(0, |ticket| ticket.max_body)
    }

    /// Shared mode, on every tick: load copies another worker published; start the
    /// fetches that are due and whose lease this VM takes.
    pub fn tick(&mut self, sources: &mut dyn Sources, store: &dyn Store, now_ms: u64) -> Tick {
        let mut tick = Tick::default();
        let Mode::Shared { me } = self.mode else { return tick };
        for document in sources.documents() {
            let (Some(state), Some((source, local))) = (self.documents.get(&document), sources.get(document))
            else {
                continue;
            };
            if pick_up_published(document, &source, local, &state.shared, store) {
                tick.loaded.push(document);
            }
            if self.in_flight.values().any(|ticket| ticket.document == document) {
                continue;
            }
            let wanted = local
                .schedule()
                .is_some_and(|s| s.fetch_wanted(now_ms, local.fetched_at_ms(), local.early()));
            if !wanted {
                continue;
            }
            // With discovery the lease covers both callouts.
            let hold = source.fetch_timeout_ms.saturating_add(LEASE_MARGIN_MS);
            let failures = match keyshare::try_acquire(store, &state.shared.lease, me, now_ms, hold) {
                Ok(Acquire::Acquired { failures }) => failures,
                Ok(Acquire::Busy) => continue,
                Err(err) => {
                    warn!("cannot take the {} fetch lease: {err}", document.what());
                    continue;
                }
            };
            let (location, stage) = first_target(&source, store, now_ms);
            tick.callouts.push(callout(&source, location, Ticket { document, stage, failures, max_body: 0 }));
        }
        tick
    }

    /// Per-VM mode: a request needs `document` (to be decided, or because the copy
    /// it was decided with is due). The callout to make — the discovery document's,
    /// when the JWKS location is not known yet — unless one is in flight or the last
    /// failure is still backing off.
    pub fn on_request(
        &mut self,
        sources: &mut dyn Sources,
        document: Document,
        store: &dyn Store,
        now_ms: u64,
    ) -> Option<Callout> {
        let (source, _) = sources.get(document)?;
        let state = self.documents.get_mut(&document)?;
        // With discovery, one fetch is two callouts in a row.
        let stuck_after = source.fetch_timeout_ms.saturating_add(ABANDON_MARGIN_MS);
        if state.busy_since_ms.is_some_and(|since| now_ms.saturating_sub(since) < stuck_after)
            || now_ms < state.retry_at_ms
        {
            return None;
        }
        state.busy_since_ms = Some(now_ms);
        let (location, stage) = first_target(&source, store, now_ms);
        let ticket = Ticket { document, stage, failures: state.failures, max_body: 0 };
        Some(callout(&source, location, ticket))
    }

    /// The shell made the callout (`Ok(token)`) or could not (`Err(why)`: the fetch
    /// failed, and `Some(Done)` says so).
    pub fn dispatched(
        &mut self,
        sources: &mut dyn Sources,
        ticket: Ticket,
        result: Result<u32, String>,
        store: &dyn Store,
        now_ms: u64,
        jitter: f64,
    ) -> Option<Done> {
        match result {
            Ok(token) => {
                self.in_flight.insert(token, ticket);
                None
            }
            Err(why) => {
                let why = format!("cannot fetch the {} from {why}", ticket.document.what());
                Some(self.failed(sources, ticket, &why, store, now_ms, jitter))
            }
        }
    }

    /// The request that made a per-VM callout went away before its answer.
    pub fn abandoned(&mut self, token: u32) {
        if let Some(ticket) = self.in_flight.remove(&token) {
            if let Some(state) = self.documents.get_mut(&ticket.document) {
                state.busy_since_ms = None;
            }
        }
    }

    /// The answer to callout `token` arrived. `None`: not one of ours.
    pub fn answered(
        &mut self,
        sources: &mut dyn Sources,
        token: u32,
        response: Response,
        store: &dyn Store,
        now_ms: u64,
        jitter: f64,
    ) -> Option<Next> {
        let ticket = self.in_flight.remove(&token)?;
        if ticket.stage == Stage::Discovery {
            // The JWKS callout follows: the document stays busy (per VM) until it ends.
            let discovered = {
                let (source, _) = sources.get(ticket.document)?;
                discovered(&source, response, store, now_ms).map(|location| {
                    callout(
                        &source,
                        location,
                        Ticket { stage: Stage::Document { discovered: true }, ..ticket },
                    )
                })
            };
            return Some(match discovered {
                Ok(next) => Next::Call(next),
                Err(why) => Next::Done(self.failed(sources, ticket, &why, store, now_ms, jitter)),
            });
        }
        if let Some(state) = self.documents.get_mut(&ticket.document) {
            state.busy_since_ms = None;
        }
        let outcome = {
            let (source, local) = sources.get(ticket.document)?;
            let name = source.name.to_owned();
            let remote_id = source.remote.source_id();
            read_body(response, source.max_body).and_then(|body| {
                let summary = local.load(&body, now_ms)?;
                Ok((body, summary, name, remote_id))
            })
        };
        Some(Next::Done(match outcome {
            Ok((body, loaded, name, _)) => {
                for warning in &loaded.warnings {
                    warn!("{} {warning}: skipped", ticket.document.subject(&name));
                }
                info!("{} {}", ticket.document.prefix(&name), loaded.summary);
                self.succeeded(sources, ticket.document, body, store, now_ms);
                Done { document: ticket.document, success: true }
            }
            Err(why) => {
                if let (Stage::Document { discovered: true }, Some((source, _))) =
                    (ticket.stage, sources.get(ticket.document))
                {
                    // The keys may have moved (a 404): look them up again next time.
                    let _ = store.set(&Located::key(source.name, &source.remote.source_id()), &[], None);
                }
                self.failed(sources, ticket, &why, store, now_ms, jitter)
            }
        }))
    }

    fn succeeded(
        &mut self,
        sources: &mut dyn Sources,
        document: Document,
        body: Vec<u8>,
        store: &dyn Store,
        now_ms: u64,
    ) {
        let Some(state) = self.documents.get_mut(&document) else { return };
        match self.mode {
            Mode::Shared { me } => {
                let record = Record { fetched_at_ms: now_ms, body };
                if let Err(err) = keyshare::publish(store, &state.shared, me, &record) {
                    warn!("cannot share the {} with other workers: {err}", document.what());
                }
                if let Some((_, local)) = sources.get(document) {
                    local.set_seen_cas(store.get(&state.shared.record).ok().and_then(|(_, cas)| cas));
                }
            }
            Mode::PerVm => {
                state.failures = 0;
                state.retry_at_ms = 0;
            }
        }
    }

    /// A fetch failed: back off (for the proxy, through the lease; or for this VM).
    fn failed(
        &mut self,
        sources: &mut dyn Sources,
        ticket: Ticket,
        why: &str,
        store: &dyn Store,
        now_ms: u64,
        jitter: f64,
    ) -> Done {
        let document = ticket.document;
        let done = Done { document, success: false };
        let (Some(state), Some((source, local))) = (self.documents.get_mut(&document), sources.get(document))
        else {
            return done;
        };
        state.busy_since_ms = None;
        let failures = match self.mode {
            Mode::Shared { .. } => ticket.failures.saturating_add(1),
            Mode::PerVm => {
                state.failures = state.failures.saturating_add(1);
                state.failures
            }
        };
        let backoff = source.remote.schedule().backoff_ms(failures, jitter);
        match self.mode {
            Mode::Shared { me } => {
                let _ = keyshare::fail(store, &state.shared.lease, me, now_ms, failures, backoff);
            }
            Mode::PerVm => state.retry_at_ms = now_ms.saturating_add(backoff),
        }
        warn!(
            "{} refresh failed ({failures} in a row): {why}; {}; retry in {backoff} ms",
            document.subject(source.name),
            if local.usable(now_ms) { "keeping the last good copy" } else { "no usable copy" },
        );
        done
    }
}

/// Whether the copy of `document` is due for refresh (per-VM mode).
pub fn refresh_due(sources: &mut dyn Sources, document: Document, now_ms: u64) -> bool {
    sources.get(document).is_some_and(|(_, local)| {
        local.schedule().is_some_and(|s| s.fetch_wanted(now_ms, local.fetched_at_ms(), local.early()))
    })
}

/// Loads a copy another worker (or this one) published, if it changed. Returns
/// whether a new copy was loaded.
fn pick_up_published(
    document: Document,
    source: &Source<'_>,
    local: &mut dyn LocalDocument,
    shared: &SharedKeys,
    store: &dyn Store,
) -> bool {
    let (bytes, cas) = match store.get(&shared.record) {
        Ok((Some(bytes), cas)) => (bytes, cas),
        Ok((None, _)) => return false,
        Err(err) => {
            warn!("cannot read the shared {}: {err}", document.what());
            return false;
        }
    };
    if cas.is_some() && cas == local.seen_cas() {
        return false;
    }
    local.set_seen_cas(cas);
    let loaded = Record::decode(&bytes)
        .ok_or_else(|| "not a record of this version".to_owned())
        .and_then(|record| local.load(&record.body, record.fetched_at_ms));
    match loaded {
        Ok(_) => true,
        Err(why) => {
            warn!(
                "the shared {} of {} is unreadable ({why}); waiting for the next fetch",
                document.what(),
                source.name
            );
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

/// Where a fetch starts: the document, or — with discovery and no fresh location
/// shared by whichever worker discovered last — its discovery document.
fn first_target(source: &Source<'_>, store: &dyn Store, now_ms: u64) -> (JwksLocation, Stage) {
    let remote = source.remote;
    if remote.discovery.is_none() {
        return (configured_location(remote), Stage::Document { discovered: false });
    }
    let interval_ms = remote.schedule().interval_ms;
    match store.get(&Located::key(source.name, &remote.source_id())) {
        Ok((Some(bytes), _)) => match Located::decode(&bytes) {
            Some(located) if located.fresh(now_ms, interval_ms) => {
                (located.location, Stage::Document { discovered: true })
            }
            _ => (configured_location(remote), Stage::Discovery),
        },
        _ => (configured_location(remote), Stage::Discovery),
    }
}

fn callout(source: &Source<'_>, location: JwksLocation, ticket: Ticket) -> Callout {
    let max_body = match ticket.stage {
        Stage::Discovery => discovery::MAX_DOCUMENT_BYTES,
        Stage::Document { .. } => source.max_body,
    };
    Callout {
        cluster: location.cluster,
        authority: location.authority,
        path: location.path,
        timeout_ms: source.remote.timeout_ms,
        ticket: Ticket { max_body, ..ticket },
    }
}

/// A discovery document arrived: check it and share the JWKS location it gives.
fn discovered(
    source: &Source<'_>,
    response: Response,
    store: &dyn Store,
    now_ms: u64,
) -> Result<JwksLocation, String> {
    let remote = source.remote;
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
            discovery::locate(&body, source.iss, &endpoint, policy).map_err(|e| e.to_string())
        }
        Response { status: Some(200), body: Err(bytes) } => Err(format!(
            "discovery document is {bytes} bytes, over the {}-byte limit",
            discovery::MAX_DOCUMENT_BYTES
        )),
        Response { status: Some(status), .. } => Err(format!("discovery endpoint answered HTTP {status}")),
    };
    let location = located.map_err(|why| format!("OIDC discovery from {:?}: {why}", remote.path))?;
    let record = Located { discovered_at_ms: now_ms, location: location.clone() };
    if let Err(err) = store.set(&Located::key(source.name, &remote.source_id()), &record.encode(), None) {
        warn!("issuer {}: cannot share the discovered JWKS location: {err}", source.name);
    }
    info!(
        "issuer {}: discovery: JWKS at {}{} (cluster {:?})",
        source.name, location.authority, location.path, location.cluster
    );
    Ok(location)
}

/// The body of a document response, or why not.
fn read_body(response: Response, max_body: usize) -> Result<Vec<u8>, String> {
    match response {
        Response { status: None, .. } => {
            Err("no response (connection refused, reset or timed out)".to_owned())
        }
        Response { status: Some(200), body: Ok(body) } if body.len() <= max_body => Ok(body),
        Response { status: Some(200), body: Ok(body) } => {
            Err(format!("the body is {} bytes, over the {max_body}-byte limit", body.len()))
        }
        Response { status: Some(200), body: Err(bytes) } => {
            Err(format!("the body is {bytes} bytes, over the {max_body}-byte limit"))
        }
        Response { status: Some(status), .. } => Err(format!("the server answered HTTP {status}")),
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
                JwksSource::Remote(r) => LocalKeys::remote(r.schedule(), i.key_use()),
                JwksSource::Inline(set) => LocalKeys::inline(set.clone()),
            })
            .collect()
    }

    fn ok_response() -> Response {
        Response { status: Some(200), body: Ok(testkit::jwks().to_string().into_bytes()) }
    }

    const ISSUER: Document = Document::Jwks(0);

    /// One VM of a proxy: its machine and its keys.
    struct Worker {
        fetcher: Fetcher,
        keys: Vec<LocalKeys>,
    }

    impl Worker {
        fn new(config: &Config, me: u64) -> Self {
            let mut keys = fresh_keys(config);
            let fetcher = Fetcher::new(
                &mut IssuerKeys { issuers: &config.issuers, keys: &mut keys },
                Mode::Shared { me },
            );
            Worker { fetcher, keys }
        }

        fn per_vm(config: &Config) -> Self {
            let mut keys = fresh_keys(config);
            let fetcher =
                Fetcher::new(&mut IssuerKeys { issuers: &config.issuers, keys: &mut keys }, Mode::PerVm);
            Worker { fetcher, keys }
        }

        fn sources<'a>(
            config: &'a Config,
            keys: &'a mut [LocalKeys],
        ) -> IssuerKeys<'a, crate::config::Issuer> {
            IssuerKeys { issuers: &config.issuers, keys }
        }

        fn tick(&mut self, config: &Config, store: &MemoryStore, now: u64) -> Tick {
            self.fetcher.tick(&mut Self::sources(config, &mut self.keys), store, now)
        }

        fn dispatched(
            &mut self,
            config: &Config,
            ticket: Ticket,
            result: Result<u32, String>,
            store: &MemoryStore,
            now: u64,
        ) -> Option<Done> {
            self.fetcher.dispatched(
                &mut Self::sources(config, &mut self.keys),
                ticket,
                result,
                store,
                now,
                0.0,
            )
        }

        fn answered(
            &mut self,
            config: &Config,
            token: u32,
            response: Response,
            store: &MemoryStore,
            now: u64,
        ) -> Option<Next> {
            self.fetcher.answered(
                &mut Self::sources(config, &mut self.keys),
                token,
                response,
                store,
                now,
                0.0,
            )
        }

        fn answer(
            &mut self,
            config: &Config,
            token: u32,
            response: Response,
            store: &MemoryStore,
            now: u64,
        ) -> Next {
            self.answered(config, token, response, store, now).unwrap()
        }

        fn on_request(&mut self, config: &Config, store: &MemoryStore, now: u64) -> Option<Callout> {
            self.fetcher.on_request(&mut Self::sources(config, &mut self.keys), ISSUER, store, now)
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
        assert_eq!(a.dispatched(&config, ticket, Ok(7), &store, 1_000), None);
        assert!(a.tick(&config, &store, 1_100).callouts.is_empty(), "no second fetch while one is in flight");
        assert_eq!(
            a.answer(&config, 7, ok_response(), &store, 1_200),
            Next::Done(Done { document: ISSUER, success: true })
        );
        assert!(a.keys[0].usable(1_200).is_some());
        let picked = b.tick(&config, &store, 1_500);
        assert_eq!(
            (picked.loaded, picked.callouts.len()),
            (vec![ISSUER], 0),
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
        a.dispatched(&config, ticket, Ok(1), &store, 0);
        a.answer(&config, 1, ok_response(), &store, 0);
        // Due again; the key server answers 500.
        let ticket = a.tick(&config, &store, 61_000).callouts[0].ticket;
        a.dispatched(&config, ticket, Ok(2), &store, 61_000);
        let failed =
            a.answer(&config, 2, Response { status: Some(500), body: Ok(Vec::new()) }, &store, 61_000);
        assert_eq!(failed, Next::Done(Done { document: ISSUER, success: false }));
        assert!(a.keys[0].usable(61_000).is_some(), "last good keys kept");
        // 500 ms of backoff (no jitter) for everyone; then one of them retries.
        assert!(a.tick(&config, &store, 61_400).callouts.is_empty());
        assert!(b.tick(&config, &store, 61_400).callouts.is_empty());
        assert_eq!(b.tick(&config, &store, 61_600).callouts.len(), 1);
        // A callout that cannot even be made fails the same way.
        let mut c = Worker::new(&config, 3);
        let store = MemoryStore::new();
        let ticket = c.tick(&config, &store, 0).callouts[0].ticket;
        let done = c.dispatched(&config, ticket, Err("BadArgument".into()), &store, 0);
        assert_eq!(done, Some(Done { document: ISSUER, success: false }));
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
        a.dispatched(&config, callout.ticket, Ok(1), &store, 0);
        assert_eq!(a.fetcher.max_body(1), discovery::MAX_DOCUMENT_BYTES);
        let document = json!({"issuer": "https://idp.example", "jwks_uri": "https://idp.example/keys"});
        let next = a.answer(
            &config,
            1,
            Response { status: Some(200), body: Ok(document.to_string().into_bytes()) },
            &store,
            0,
        );
        let Next::Call(jwks) = next else { panic!("expected the JWKS callout, got {next:?}") };
        assert_eq!((jwks.path.as_str(), jwks.ticket.stage), ("/keys", Stage::Document { discovered: true }));
        a.dispatched(&config, jwks.ticket, Ok(2), &store, 0);
        assert_eq!(
            a.answer(&config, 2, ok_response(), &store, 0),
            Next::Done(Done { document: ISSUER, success: true })
        );
        // The next fetch goes straight to the shared location.
        a.keys[0].kid_miss = true;
        let again = a.tick(&config, &store, 400_000).callouts.remove(0);
        assert_eq!(
            (again.path.as_str(), again.ticket.stage),
            ("/keys", Stage::Document { discovered: true })
        );
    }

    #[test]
    fn per_vm_one_callout_in_flight_and_backoff_after_a_failure() {
        let config = remote();
        let store = MemoryStore::new();
        let mut w = Worker::per_vm(&config);
        assert!(w.tick(&config, &store, 0).callouts.is_empty(), "never from the tick");
        let callout = w.on_request(&config, &store, 0).unwrap();
        assert!(w.on_request(&config, &store, 10).is_none(), "one in flight per VM");
        w.dispatched(&config, callout.ticket, Ok(5), &store, 0);
        let failed = w.answered(&config, 5, Response { status: None, body: Ok(vec![]) }, &store, 50);
        assert_eq!(failed, Some(Next::Done(Done { document: ISSUER, success: false })));
        assert!(w.on_request(&config, &store, 100).is_none(), "backing off");
        let retry = w.on_request(&config, &store, 600).unwrap();
        w.dispatched(&config, retry.ticket, Ok(6), &store, 600);
        let ok = w.answered(&config, 6, ok_response(), &store, 700);
        assert_eq!(ok, Some(Next::Done(Done { document: ISSUER, success: true })));
        assert!(w.keys[0].usable(700).is_some());
        assert_eq!(store.len(), 0, "nothing shared in per-VM mode");
        // Due again after the interval (per VM): refresh_due says so.
        assert!(!refresh_due(&mut Worker::sources(&config, &mut w.keys), ISSUER, 1_000));
        assert!(refresh_due(&mut Worker::sources(&config, &mut w.keys), ISSUER, 60_700));
        // A request that goes away frees the document for the next one.
        w.keys[0].kid_miss = true;
        let third = w.on_request(&config, &store, 10_000).unwrap();
        w.dispatched(&config, third.ticket, Ok(9), &store, 10_000);
        w.fetcher.abandoned(9);
        assert!(w.on_request(&config, &store, 10_001).is_some());
    }

    #[test]
    fn per_vm_discovery_is_two_callouts_of_one_request_and_its_location_is_kept() {
        let config = Config::from_json(
            json!({"issuers": [{"name": "ci", "issuer": "https://idp.example", "audiences": ["a"],
                   "discovery": {"cluster": "idp", "authority": "idp.example"},
                   "jwks": {"timeout_ms": 1000}}]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let store = MemoryStore::new();
        let mut w = Worker::per_vm(&config);
        let callout = w.on_request(&config, &store, 0).unwrap();
        assert_eq!(
            (callout.path.as_str(), callout.ticket.stage),
            ("/.well-known/openid-configuration", Stage::Discovery)
        );
        w.dispatched(&config, callout.ticket, Ok(1), &store, 0);
        let document = json!({"issuer": "https://idp.example", "jwks_uri": "https://idp.example/keys"});
        let response = Response { status: Some(200), body: Ok(document.to_string().into_bytes()) };
        let Some(Next::Call(jwks)) = w.answered(&config, 1, response, &store, 100) else {
            panic!("expected the JWKS callout")
        };
        assert_eq!((jwks.path.as_str(), jwks.ticket.stage), ("/keys", Stage::Document { discovered: true }));
        // Between the two callouts the document is still being fetched: no second fetch,
        // for as long as both callouts may take (twice the timeout) and a margin.
        assert!(w.on_request(&config, &store, 200).is_none(), "one fetch in flight per VM");
        assert!(w.on_request(&config, &store, 2_900).is_none(), "within both callouts' time");
        w.dispatched(&config, jwks.ticket, Ok(2), &store, 100);
        assert_eq!(
            w.answered(&config, 2, ok_response(), &store, 150),
            Some(Next::Done(Done { document: ISSUER, success: true }))
        );
        assert!(w.keys[0].usable(150).is_some());
        // The next fetch (this VM's, or another's sharing the store) goes straight to the keys.
        w.keys[0].kid_miss = true;
        let again = w.on_request(&config, &store, 10_000).unwrap();
        assert_eq!(
            (again.path.as_str(), again.ticket.stage),
            ("/keys", Stage::Document { discovered: true })
        );
        let mut other = Worker::per_vm(&config);
        let theirs = other.on_request(&config, &store, 10_000).unwrap();
        assert_eq!(theirs.path, "/keys");

        // A discovery document that fails ends the fetch: the request is answered, and
        // the next attempt waits for the backoff.
        let store = MemoryStore::new();
        let mut w = Worker::per_vm(&config);
        let callout = w.on_request(&config, &store, 0).unwrap();
        w.dispatched(&config, callout.ticket, Ok(3), &store, 0);
        let mixup = json!({"issuer": "https://evil.example", "jwks_uri": "https://idp.example/keys"});
        let response = Response { status: Some(200), body: Ok(mixup.to_string().into_bytes()) };
        assert_eq!(
            w.answered(&config, 3, response, &store, 10),
            Some(Next::Done(Done { document: ISSUER, success: false }))
        );
        assert!(w.on_request(&config, &store, 20).is_none(), "backing off");
        assert!(w.on_request(&config, &store, 600).is_some());
    }

    #[test]
    fn oversized_and_unanswered_fetches_are_failures() {
        let config = remote();
        let store = MemoryStore::new();
        let mut a = Worker::new(&config, 1);
        let ticket = a.tick(&config, &store, 0).callouts[0].ticket;
        a.dispatched(&config, ticket, Ok(3), &store, 0);
        assert_eq!(a.fetcher.max_body(3), MAX_JWKS_BYTES);
        let big =
            a.answer(&config, 3, Response { status: Some(200), body: Err(MAX_JWKS_BYTES + 1) }, &store, 0);
        assert_eq!(big, Next::Done(Done { document: ISSUER, success: false }));
        assert!(a.keys[0].usable(0).is_none());
        assert!(a.answered(&config, 99, ok_response(), &store, 0).is_none(), "not ours");
    }

    /// A document of another kind, to show the machine does not care what it fetches:
    /// a "feed" whose bodies must be one line of text.
    #[derive(Default)]
    struct Text {
        schedule: Option<Schedule>,
        fetched_at_ms: Option<u64>,
        seen_cas: Option<u32>,
        text: Option<String>,
    }

    impl LocalDocument for Text {
        fn schedule(&self) -> Option<Schedule> {
            self.schedule
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
            matches!((self.schedule, self.fetched_at_ms), (Some(s), Some(at)) if s.usable(now_ms, at))
        }
        fn load(&mut self, body: &[u8], fetched_at_ms: u64) -> Result<Loaded, String> {
            let text = std::str::from_utf8(body).map_err(|_| "not text".to_owned())?;
            if text.contains('\n') {
                return Err("more than one line".into());
            }
            self.text = Some(text.to_owned());
            self.fetched_at_ms = Some(fetched_at_ms);
            Ok(Loaded { summary: format!("{} bytes", text.len()), warnings: Vec::new() })
        }
    }

    /// The JWKS of `config` plus a revocation document served by `Text`.
    struct Both<'a> {
        keys: IssuerKeys<'a, crate::config::Issuer>,
        feed: (&'a RemoteJwks, &'a mut Text),
    }

    impl Sources for Both<'_> {
        fn documents(&self) -> Vec<Document> {
            let mut all: Vec<Document> = self.keys.documents().collect();
            all.push(Document::Revocations);
            all
        }
        fn get(&mut self, document: Document) -> Option<(Source<'_>, &mut dyn LocalDocument)> {
            match document {
                Document::Jwks(index) => self.keys.get(index),
                Document::Revocations => Some((
                    Source {
                        name: "revocations",
                        iss: "",
                        remote: self.feed.0,
                        fetch_timeout_ms: self.feed.0.timeout_ms,
                        max_body: 16,
                    },
                    &mut *self.feed.1,
                )),
            }
        }
    }

    #[test]
    fn another_document_kind_shares_the_machine_lease_backoff_and_last_good_copy() {
        let config = remote();
        let feed = RemoteJwks {
            cluster: "feed".into(),
            authority: "feed.example".into(),
            path: "/revocations.json".into(),
            refresh_seconds: 10,
            timeout_ms: 500,
            min_refetch_seconds: 10,
            max_stale_seconds: 30,
            discovery: None,
        };
        let store = MemoryStore::new();
        let mut keys = [fresh_keys(&config), fresh_keys(&config)];
        let mut texts = [
            Text { schedule: Some(feed.schedule()), ..Text::default() },
            Text { schedule: Some(feed.schedule()), ..Text::default() },
        ];
        let [keys_a, keys_b] = &mut keys;
        let [text_a, text_b] = &mut texts;
        let mut a_sources =
            Both { keys: IssuerKeys { issuers: &config.issuers, keys: keys_a }, feed: (&feed, text_a) };
        let mut a = Fetcher::new(&mut a_sources, Mode::Shared { me: 1 });
        let mut b_sources =
            Both { keys: IssuerKeys { issuers: &config.issuers, keys: keys_b }, feed: (&feed, text_b) };
        let mut b = Fetcher::new(&mut b_sources, Mode::Shared { me: 2 });

        // One tick starts both documents; the other worker starts neither.
        let tick = a.tick(&mut a_sources, &store, 0);
        assert_eq!(tick.callouts.len(), 2);
        assert!(b.tick(&mut b_sources, &store, 0).callouts.is_empty());
        let feed_call = tick.callouts.iter().find(|c| c.ticket.document == Document::Revocations).unwrap();
        assert_eq!((feed_call.cluster.as_str(), feed_call.path.as_str()), ("feed", "/revocations.json"));
        a.dispatched(&mut a_sources, feed_call.ticket, Ok(1), &store, 0, 0.0);
        assert_eq!(a.max_body(1), 16, "the document's own size limit");
        let ok = a.answered(
            &mut a_sources,
            1,
            Response { status: Some(200), body: Ok(b"v1".to_vec()) },
            &store,
            100,
            0.0,
        );
        assert_eq!(ok, Some(Next::Done(Done { document: Document::Revocations, success: true })));
        assert_eq!(a_sources.feed.1.text.as_deref(), Some("v1"));
        // Published: the other worker picks it up on its tick.
        let picked = b.tick(&mut b_sources, &store, 200);
        assert_eq!(picked.loaded, vec![Document::Revocations]);
        assert_eq!(b_sources.feed.1.text.as_deref(), Some("v1"));

        // Due after refresh_seconds; a body the document refuses keeps the last good copy
        // and backs off for the whole proxy.
        let again = a.tick(&mut a_sources, &store, 10_100);
        let call = again.callouts.into_iter().find(|c| c.ticket.document == Document::Revocations).unwrap();
        a.dispatched(&mut a_sources, call.ticket, Ok(2), &store, 10_100, 0.0);
        let refused = a.answered(
            &mut a_sources,
            2,
            Response { status: Some(200), body: Ok(b"two\nlines".to_vec()) },
            &store,
            10_200,
            0.0,
        );
        assert_eq!(refused, Some(Next::Done(Done { document: Document::Revocations, success: false })));
        assert_eq!(a_sources.feed.1.text.as_deref(), Some("v1"), "last good copy kept");
        assert!(
            b.tick(&mut b_sources, &store, 10_300)
                .callouts
                .iter()
                .all(|c| c.ticket.document != Document::Revocations),
            "backing off for every worker"
        );
        // Over its size limit: a failure, whatever the body says.
        let retry = b.tick(&mut b_sources, &store, 10_800);
        let call = retry.callouts.into_iter().find(|c| c.ticket.document == Document::Revocations).unwrap();
        b.dispatched(&mut b_sources, call.ticket, Ok(3), &store, 10_800, 0.0);
        let big = b.answered(
            &mut b_sources,
            3,
            Response { status: Some(200), body: Err(10 * 1024 * 1024) },
            &store,
            10_900,
            0.0,
        );
        assert_eq!(big, Some(Next::Done(Done { document: Document::Revocations, success: false })));
        assert_eq!(b_sources.feed.1.text.as_deref(), Some("v1"));
        // The copy serves until max_stale, then the document says it is not usable.
        assert!(LocalDocument::usable(&*b_sources.feed.1, 30_100));
        assert!(!LocalDocument::usable(&*b_sources.feed.1, 30_101));
    }
}
