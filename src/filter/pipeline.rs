//! The per-request decision, as a function of the VM state and the request's
//! own state, so it can run twice: in `on_http_request_headers`, and again from
//! the root context for a request that waited for keys (after
//! `set_effective_context`, every host call acts on that request).

use std::cell::RefCell;
use std::rc::Rc;

use log::debug;

use crate::keyshare::KeyView;
use crate::reason::{LocalReply, Reason, Rejection};
use crate::verify::{self, Verified};

use super::host::{self, HostError};
use super::root::Vm;

/// Most requests one VM keeps paused while keys load; beyond, requests are answered at once.
pub const MAX_WAITERS: usize = 1_024;
/// Extra wait beyond the JWKS fetch timeout before a waiting request is answered anyway.
const WAIT_MARGIN_MS: u64 = 500;

/// What one request carries between its phases.
#[derive(Debug, Default)]
pub struct Request {
    pub context_id: u32,
    pub request_id: Option<String>,
    /// The bearer token, kept only until the decision (never logged).
    pub token: Option<String>,
    /// Whether this request already waited once for keys.
    pub waited: bool,
}

/// What the HTTP context should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Continue,
    /// A local reply was sent (or could not be): the request must stay paused.
    Replied,
    /// Keys are being fetched; pause until they arrive or `deadline_ms`.
    Wait {
        issuer: usize,
        deadline_ms: u64,
    },
}

/// A request paused while its issuer's keys load.
pub struct Waiter {
    pub context_id: u32,
    pub issuer: usize,
    pub deadline_ms: u64,
    pub request: Rc<RefCell<Request>>,
}

/// Decides and acts on one request. Header stripping has already happened.
pub fn run(vm: &Vm, request: &mut Request, now_ms: u64) -> Step {
    let config = &vm.config;
    let Some(raw) = request.token.as_deref() else {
        return refuse(vm, request, &Rejection::new(Reason::MissingToken, "no bearer token"));
    };
    let now_secs = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
    let outcome = {
        let keys = vm.keys.borrow();
        verify::verify(config, &KeyView { keys: &keys, now_ms }, raw, now_secs)
    };
    match outcome {
        Ok(verified) => {
            request.token = None;
            match forward_identity(vm, &verified) {
                Ok(()) => Step::Continue,
                Err(err) => refuse(vm, request, &internal(err)),
            }
        }
        Err(rejection) => {
            if let Some(step) = wait_for_keys(vm, request, &rejection, now_ms) {
                return step;
            }
            request.token = None;
            refuse(vm, request, &rejection)
        }
    }
}

/// Whether the rejection may go away once keys load: keys not loaded yet, or a
/// `kid` we do not know while an early refetch is allowed (the issuer may have
/// rotated). Each request waits at most once.
fn wait_for_keys(vm: &Vm, request: &Request, rejection: &Rejection, now_ms: u64) -> Option<Step> {
    let issuer = rejection.issuer?;
    if request.waited || vm.waiters.borrow().len() >= MAX_WAITERS {
        return None;
    }
    let mut keys = vm.keys.borrow_mut();
    let local = keys.get_mut(issuer)?;
    let schedule = local.schedule?;
    let worth_waiting = match rejection.reason {
        Reason::KeysUnavailable => local.set.is_none(),
        Reason::UnknownKid => schedule.fetch_wanted(now_ms, local.fetched_at_ms, true),
        _ => false,
    };
    if !worth_waiting {
        if rejection.reason == Reason::UnknownKid {
            // Too soon after the last fetch: remember to refetch early once allowed.
            local.kid_miss = true;
        }
        return None;
    }
    local.kid_miss = true;
    let timeout = vm.config.issuers.get(issuer).and_then(|i| i.fetch_timeout_ms()).unwrap_or(0);
    Some(Step::Wait { issuer, deadline_ms: now_ms.saturating_add(timeout).saturating_add(WAIT_MARGIN_MS) })
}

/// Client-supplied copies of the headers we set are never forwarded.
pub fn strip_identity_headers(vm: &Vm) -> Result<(), HostError> {
    let forward = &vm.config.forward;
    host::remove_request_header(&forward.identity_header)?;
    host::remove_request_header(&forward.issuer_header)
}

fn forward_identity(vm: &Vm, verified: &Verified) -> Result<(), HostError> {
    let forward = &vm.config.forward;
    let issuer = vm.config.issuers.get(verified.issuer).map(|i| i.name.as_str()).unwrap_or_default();
    host::set_request_header(&forward.identity_header, &verified.subject)?;
    host::set_request_header(&forward.issuer_header, issuer)
}

pub fn internal(err: HostError) -> Rejection {
    Rejection::new(Reason::InternalError, format!("host call failed: {err}"))
}

pub fn refuse(vm: &Vm, request: &Request, rejection: &Rejection) -> Step {
    debug!("denied {} ({})", rejection.reason, rejection.detail);
    let reply = LocalReply::for_rejection(rejection, &vm.config.realm, request.request_id.as_deref());
    if let Err(err) = host::send_local_reply(&reply) {
        // Nothing else to answer with; the request stays paused, never forwarded.
        host::log_critical(&format!("cannot send local reply: {err}"));
    }
    Step::Replied
}
