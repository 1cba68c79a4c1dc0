//! Keys fetched by the requests that need them, for hosts whose root context can
//! neither tick nor call out (APISIX: a callout outside a request crashes nginx).
//!
//! A request that finds its issuer without usable keys (or naming an unknown
//! `kid`, once a refetch is allowed) makes the callout itself and pauses; the
//! answer loads the keys into this VM and the request is decided with them. A
//! request that verified with keys due for refresh refreshes them the same way,
//! then continues (it was already decided with keys that were still valid).
//! One fetch per issuer is in flight per VM: requests arriving meanwhile are
//! decided at once with whatever keys there are (none: 503 `keys_unavailable`),
//! since a host without timers cannot wake them later.

use std::time::Duration;

use log::{info, warn};

use nhi_guard_core::config::JwksSource;

use super::host;
use super::observe;
use super::root::{self, Vm};

/// How long past its timeout a callout may stay unanswered before another request
/// may try again (a host that never calls back must not block the issuer forever).
const ABANDON_MARGIN_MS: u64 = 1_000;

/// The on-request fetch state of one issuer in one VM.
#[derive(Debug, Default)]
pub struct OnRequestFetch {
    /// The request whose callout is in flight, and when it started.
    in_flight: Option<(u32, u64)>,
    /// Failed fetches in a row.
    failures: u32,
    /// No new attempt before this (backoff after a failure).
    retry_at_ms: u64,
}

/// What the request does once its callout is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// It had no usable keys: decide it now.
    Decide,
    /// It was allowed with keys due for refresh: let it go on.
    Refresh,
}

/// A callout this request made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub token: u32,
    pub issuer: usize,
    pub purpose: Purpose,
}

/// Starts fetching `issuer`'s keys from the current request, unless a fetch is
/// already in flight or backing off, or the issuer's keys are inline.
pub fn start(vm: &Vm, issuer: usize, context_id: u32, purpose: Purpose, now_ms: u64) -> Option<Pending> {
    let JwksSource::Remote(remote) = &vm.config.issuers.get(issuer)?.jwks else { return None };
    let mut fetches = vm.on_request.borrow_mut();
    let state = fetches.get_mut(issuer)?;
    let stuck_after = remote.timeout_ms.saturating_add(ABANDON_MARGIN_MS);
    if state.in_flight.is_some_and(|(_, since)| now_ms.saturating_sub(since) < stuck_after)
        || now_ms < state.retry_at_ms
    {
        return None;
    }
    match host::http_get(
        &remote.cluster,
        &remote.authority,
        &remote.path,
        Duration::from_millis(remote.timeout_ms),
    ) {
        Ok(token) => {
            state.in_flight = Some((context_id, now_ms));
            Some(Pending { token, issuer, purpose })
        }
        Err(status) => {
            drop(fetches);
            failed(vm, issuer, &format!("cannot call {:?} ({status})", remote.cluster), now_ms);
            None
        }
    }
}

/// Whether keys this request verified with are due for refresh.
pub fn refresh_due(vm: &Vm, issuer: usize, now_ms: u64) -> bool {
    let keys = vm.keys.borrow();
    keys.get(issuer).is_some_and(|local| {
        local.schedule.is_some_and(|s| s.fetch_wanted(now_ms, local.fetched_at_ms, local.kid_miss))
    })
}

/// The callout of `pending` was answered (`body_size` bytes): load the keys, or
/// count the failure.
pub fn finish(vm: &Vm, pending: &Pending, body_size: usize, now_ms: u64) {
    let Some(issuer) = vm.config.issuers.get(pending.issuer) else { return };
    if let Some(state) = vm.on_request.borrow_mut().get_mut(pending.issuer) {
        state.in_flight = None;
    }
    match root::read_jwks(body_size, issuer.key_use()) {
        Ok((_, parsed)) => {
            for skipped in &parsed.skipped {
                warn!("issuer {}: JWKS {skipped}: skipped", issuer.name);
            }
            info!("issuer {}: loaded {} key(s) (fetched on request)", issuer.name, parsed.keys.len());
            observe::jwks_fetched(vm, pending.issuer, true);
            if let Some(local) = vm.keys.borrow_mut().get_mut(pending.issuer) {
                local.load(parsed.keys, now_ms);
            }
            if let Some(state) = vm.on_request.borrow_mut().get_mut(pending.issuer) {
                state.failures = 0;
                state.retry_at_ms = 0;
            }
        }
        Err(why) => failed(vm, pending.issuer, &why, now_ms),
    }
}

/// The request that owned the fetch went away before the answer.
pub fn abandon(vm: &Vm, pending: &Pending) {
    if let Ok(mut fetches) = vm.on_request.try_borrow_mut() {
        if let Some(state) = fetches.get_mut(pending.issuer) {
            state.in_flight = None;
        }
    }
}

fn failed(vm: &Vm, index: usize, why: &str, now_ms: u64) {
    let Some(issuer) = vm.config.issuers.get(index) else { return };
    let JwksSource::Remote(remote) = &issuer.jwks else { return };
    observe::jwks_fetched(vm, index, false);
    let mut fetches = vm.on_request.borrow_mut();
    let Some(state) = fetches.get_mut(index) else { return };
    state.failures = state.failures.saturating_add(1);
    let backoff = remote.schedule().backoff_ms(state.failures, root::jitter());
    state.retry_at_ms = now_ms.saturating_add(backoff);
    let kept = vm.keys.borrow().get(index).is_some_and(|k| k.usable(now_ms).is_some());
    warn!(
        "issuer {}: JWKS fetch failed ({} in a row): {why}; {}; next attempt after {backoff} ms",
        issuer.name,
        state.failures,
        if kept { "keeping the last good keys" } else { "no usable keys" },
    );
}
