//! The documents a VM fetches — every issuer's JWKS and the revocation feed — as
//! the fetch machine's [`Sources`], the VM's side of that machine, and the "await
//! feed" stage: what the revocation list in use means for a request.

use std::rc::Rc;

use crate::config::{Config, Issuer};
use crate::keys::fetch::{
    Callout, Document, Done, IssuerKeys, LocalDocument, Next, Response, Source, Sources, Tick, Ticket,
};
use crate::keys::keyshare::LocalKeys;
use crate::policy::revocation::{
    FeedState, LocalRevocations, OnStale, RevocationFeed, RevocationList, MAX_FEED_BYTES,
};
use crate::reason::Reason;

use super::verify::{Authenticated, Verification};
use super::{Awaited, Request, Step, Vm};

/// The name of the feed in logs and shared-data keys.
pub const FEED_NAME: &str = "revocations";

/// A VM's fetched documents: its issuers' keys and its copy of the feed.
pub struct VmSources<'a> {
    keys: IssuerKeys<'a, Issuer>,
    feed: Option<(&'a RevocationFeed, &'a mut LocalRevocations)>,
}

impl<'a> VmSources<'a> {
    pub fn new(
        config: &'a Config,
        keys: &'a mut [LocalKeys],
        feed: Option<&'a mut LocalRevocations>,
    ) -> Self {
        VmSources {
            keys: IssuerKeys { issuers: &config.issuers, keys },
            feed: config.revocation.as_ref().zip(feed),
        }
    }
}

impl Sources for VmSources<'_> {
    fn documents(&self) -> Vec<Document> {
        let mut all: Vec<Document> = self.keys.documents().collect();
        if self.feed.is_some() {
            all.push(Document::Revocations);
        }
        all
    }

    fn get(&mut self, document: Document) -> Option<(Source<'_>, &mut dyn LocalDocument)> {
        match document {
            Document::Jwks(index) => self.keys.get(index),
            Document::Revocations => {
                let (feed, local) = self.feed.as_mut()?;
                let source = Source {
                    name: FEED_NAME,
                    iss: "",
                    remote: &feed.remote,
                    fetch_timeout_ms: feed.remote.timeout_ms,
                    max_body: MAX_FEED_BYTES,
                };
                Some((source, &mut **local))
            }
        }
    }
}

/// The VM's side of the fetch machine: every call borrows its keys, feed and
/// machine for the call only (`None`/nothing when they are borrowed already).
impl Vm {
    fn with_sources<T>(
        &self,
        f: impl FnOnce(&mut crate::keys::fetch::Fetcher, &mut VmSources<'_>) -> T,
    ) -> Option<T> {
        let mut keys = self.keys.try_borrow_mut().ok()?;
        let mut feed = self.revocations.try_borrow_mut().ok()?;
        let mut fetcher = self.fetcher.try_borrow_mut().ok()?;
        let mut sources = VmSources::new(&self.config, &mut keys, feed.as_mut());
        Some(f(&mut fetcher, &mut sources))
    }

    /// Shared mode, on every tick (see [`crate::keys::fetch::Fetcher::tick`]).
    pub fn fetch_tick(&self, now_ms: u64) -> Tick {
        self.with_sources(|fetcher, sources| fetcher.tick(sources, self.store.as_ref(), now_ms))
            .unwrap_or_default()
    }

    /// Per-VM mode: the callout to make for `document`, if one may start now (with
    /// discovery, the first of two: [`Vm::fetch_answered`] gives the second).
    pub fn fetch_on_request(&self, document: Document, now_ms: u64) -> Option<Callout> {
        self.with_sources(|fetcher, sources| {
            fetcher.on_request(sources, document, self.store.as_ref(), now_ms)
        })
        .flatten()
    }

    /// The shell made (or could not make) a callout the machine asked for.
    pub fn fetch_dispatched(
        &self,
        ticket: Ticket,
        result: Result<u32, String>,
        now_ms: u64,
        jitter: f64,
    ) -> Option<Done> {
        self.with_sources(|fetcher, sources| {
            fetcher.dispatched(sources, ticket, result, self.store.as_ref(), now_ms, jitter)
        })
        .flatten()
    }

    /// The answer to a fetch callout arrived. `None`: not one of this VM's fetches.
    pub fn fetch_answered(&self, token: u32, response: Response, now_ms: u64, jitter: f64) -> Option<Next> {
        self.with_sources(|fetcher, sources| {
            fetcher.answered(sources, token, response, self.store.as_ref(), now_ms, jitter)
        })
        .flatten()
    }

    /// The largest body accepted for fetch callout `token` (0: not a fetch).
    pub fn fetch_max_body(&self, token: u32) -> usize {
        self.fetcher.try_borrow().map_or(0, |f| f.max_body(token))
    }

    /// The request that made a per-VM fetch went away before its answer.
    pub fn fetch_abandoned(&self, token: u32) {
        if let Ok(mut fetcher) = self.fetcher.try_borrow_mut() {
            fetcher.abandoned(token);
        }
    }

    /// Per-VM mode: whether `document`'s copy is due for refresh.
    pub fn fetch_due(&self, document: Document, now_ms: u64) -> bool {
        self.with_sources(|_, sources| crate::keys::fetch::refresh_due(sources, document, now_ms))
            .unwrap_or(false)
    }

    /// Where documents are fetched on request: the document `request` (just allowed)
    /// should refresh before it goes on — its issuer's keys, else the revocation
    /// list — if its copy is due.
    pub fn due_after(&self, request: &super::Request, now_ms: u64) -> Option<Document> {
        let keys = request.verified_issuer.map(Document::Jwks);
        let feed = self.config.revocation.as_ref().map(|_| Document::Revocations);
        keys.into_iter().chain(feed).find(|&document| self.fetch_due(document, now_ms))
    }

    /// Whether this VM fetches anything.
    pub fn fetches(&self) -> bool {
        self.fetcher.try_borrow().is_ok_and(|f| f.fetches())
    }
}

/// The revocation list as it stands, current or stale, without waiting for one:
/// what a partner's request (which carries no token to wait with) is decided with.
pub fn current_revocations(vm: &Vm, now_ms: u64) -> Option<Rc<RevocationList>> {
    let state = vm.revocations.try_borrow().ok().and_then(|r| r.as_ref().map(|r| r.state(now_ms)))?;
    match state {
        FeedState::Current(list) | FeedState::Stale(list) => Some(list),
        FeedState::Missing => None,
    }
}

/// The "await feed" stage: the revocation list a request with a verified token is
/// decided with. A list that was never loaded parks the request until the first
/// fetch ends (once); a stale list — or none, after the wait — refuses the token
/// `503 revocations_unavailable` with `on_stale: "deny"`, and is used as it is (or
/// not at all) with `keep`.
pub fn revocations(
    vm: &Vm,
    request: &Request,
    verification: &mut Verification,
    now_ms: u64,
) -> Result<Option<Rc<RevocationList>>, Step> {
    let Some(feed) = &vm.config.revocation else { return Ok(None) };
    let Some(Ok(Authenticated::Token(verified))) = &verification.result else { return Ok(None) };
    let state = vm.revocations.try_borrow().ok().and_then(|r| r.as_ref().map(|r| r.state(now_ms)));
    let list = match state {
        Some(FeedState::Current(list)) => return Ok(Some(list)),
        Some(FeedState::Stale(list)) => Some(list),
        Some(FeedState::Missing) | None => None,
    };
    if list.is_none() && !request.waited && vm.waiters.borrow().len() < super::MAX_WAITERS {
        let deadline_ms = now_ms.saturating_add(feed.timeout_ms()).saturating_add(super::WAIT_MARGIN_MS);
        return Err(Step::Wait { awaiting: Awaited::Document(Document::Revocations), deadline_ms });
    }
    match feed.on_stale {
        OnStale::Keep => Ok(list),
        OnStale::Deny => {
            let detail = if list.is_some() {
                "the revocation list is older than max_stale_seconds"
            } else {
                "no revocation list has been loaded"
            };
            verification.result =
                Some(Err(super::liveness::refusal(verified, Reason::RevocationsUnavailable, detail)));
            Ok(None)
        }
    }
}
