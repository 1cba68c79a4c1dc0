//! Stage 2, verify: the credential, checked as cheaply as the request allows.
//!
//! A token this worker used recently costs a hash lookup (no clock, no shared data,
//! no crypto); then the shared verified-token cache; then full verification, unless
//! the flood guard has cut the source off. A token bound to a certificate (`cnf`)
//! is held to it. A credential header with no readable bearer token is refused as
//! malformed when it carries the bearer scheme or is, read leniently, one of ours.

use std::rc::Rc;

use crate::host::{self, Host};
use crate::keys::keyshare::KeyView;
use crate::mtls;
use crate::policy;
use crate::reason::{Check, Reason, Rejection};
use crate::verify::cache;
use crate::verify::Verified;

use crate::keys::fetch::Document;
use crate::verify::liveness::Review;

use super::extract::{connection_property, Presented};
use super::{Awaited, Request, Step, Vm};

/// A verified credential: a token, or a partner's key.
#[derive(Debug, Clone)]
pub enum Authenticated {
    Token(Rc<Verified>),
    Partner(crate::partners::PartnerKey),
}

impl Authenticated {
    /// The verified token, if it was one.
    pub fn token(&self) -> Option<&Verified> {
        match self {
            Authenticated::Token(verified) => Some(verified),
            Authenticated::Partner(_) => None,
        }
    }
}

/// What the verify stage found.
#[derive(Debug)]
pub struct Verification {
    /// `None`: no credential to judge. Otherwise the verified credential or why not.
    pub result: Option<Result<Authenticated, Rejection>>,
    /// Seconds until the flood guard lets the source's crypto through again.
    pub blocked_for: Option<u64>,
    /// Whether a lenient reading attributed the credential to one of our issuers,
    /// when it was already computed.
    pub attributed: Option<bool>,
    /// The liveness answer this worker keeps with the token's entry (a local hit).
    pub review: Option<Review>,
}

pub fn verify(vm: &Vm, host: &mut dyn Host, request: &mut Request, now_ms: u64) -> Verification {
    let config = &vm.config;
    let now_secs = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
    let now_secs_u = u64::try_from(now_secs).unwrap_or_default();
    let (local_hit, review) = request
        .credential
        .token()
        .and_then(|raw| {
            let keys = vm.keys.borrow();
            let view = KeyView { keys: &keys, now_ms };
            vm.local_tokens.borrow().get_with_review(config.trust(), &view, raw, now_secs)
        })
        .map_or((None, None), |(verified, review)| (Some(verified), review));
    // Timed only when a verification runs: not without a token, not on a local hit,
    // not when the flood guard refuses without one (below). From the request's own
    // clock reading (its headers' arrival: only the header map read comes between),
    // which saves a host call, unless the request waited for keys meanwhile.
    let verify_started_ns = (request.credential.token().is_some() && local_hit.is_none())
        .then(|| request.observed.started_ns.filter(|_| !request.waited).unwrap_or_else(|| host.now_ns()));
    // The flood guard: a source over its budget of failed signature checks gets no
    // more crypto until its window ends (cached verifications still pass). Asked
    // only when a token needs crypto, which is also when the source is read.
    let mut blocked_for = None;
    let result = match local_hit {
        Some(verified) => Some(Ok(verified)),
        None => request.credential.token().map(|raw| {
            let keys = vm.keys.borrow();
            let view = KeyView { keys: &keys, now_ms };
            let (source, source_text) = (&mut request.info.source, &mut request.observed.source);
            let crypto_allowed = || {
                blocked_for = source_blocked_for(vm, host, source, source_text, now_secs_u);
                blocked_for.is_none()
            };
            let mut local = vm.local_tokens.borrow_mut();
            cache::verify_and_remember(
                config.trust(),
                &view,
                vm.store.as_ref(),
                &mut local,
                raw,
                now_secs,
                crypto_allowed,
            )
        }),
    };
    // A token bound to a certificate (`cnf.x5t#S256`) on a listener without an `mtls` block:
    // only now is the certificate worth a host call.
    if let Some(Ok(verified)) = &result {
        if config.mtls.is_none()
            && request.info.client_certificate.is_none()
            && verified.claims.get("cnf").is_some_and(|cnf| cnf.get(mtls::X5T_S256).is_some())
        {
            request.info.client_certificate =
                mtls::client_certificate(None, |name| connection_property(host, name));
        }
    }
    let result = result.map(|result| {
        result.and_then(|v| {
            mtls::check_verified(&config.issuers, &v, request.info.client_certificate.as_ref())
                .map(|()| v)
                .map_err(|r| r.at(Check::Binding))
        })
    });
    if let Some(Err(rejection)) = &result {
        if rejection.reason == Reason::BadSignature {
            failed_signature(vm, request.info.source, now_secs_u);
        }
    }
    // A credential header with no readable bearer token: refused as malformed when
    // it carries the bearer scheme (bytes that are not UTF-8) or when a lenient
    // reading says it is one of ours presented another way; someone else's otherwise.
    let mut attributed = None;
    let result = match (result, &request.credential) {
        (None, Presented::Unreadable { value, undecodable }) => {
            let ours = names_machine_issuer(vm, value, now_ms);
            attributed = Some(ours);
            (ours || *undecodable).then(|| {
                Err(Rejection::new(
                    Reason::MalformedToken,
                    if *undecodable {
                        "bearer token is not valid UTF-8"
                    } else {
                        "a token of a configured issuer, not presented as a bearer token"
                    },
                )
                .at(Check::Parse))
            })
        }
        (result, _) => result,
    };
    let verify_ns = verify_started_ns
        .filter(|_| blocked_for.is_none())
        .map(|started| host.now_ns().saturating_sub(started));
    request.observed.note_verification(result.as_ref().map(|r| r.as_ref().map(|v| &**v)), verify_ns);
    let result = result.map(|r| r.map(Authenticated::Token));
    if let Some(trace) = request.trace.as_deref_mut() {
        trace.verification = result.clone();
    }
    Verification { result, blocked_for, attributed, review }
}

/// The flood guard, asked before a signature check (a token's or a partner's): seconds
/// until the request's source may cause one again, `None` while it may (or without a
/// guard). Reads the source address only when a guard needs it.
/// `source` and `source_text` are the request's parsed address and its text (for the
/// decision log).
pub(super) fn source_blocked_for(
    vm: &Vm,
    host: &mut dyn Host,
    source: &mut Option<std::net::IpAddr>,
    source_text: &mut Option<String>,
    now_secs: u64,
) -> Option<u64> {
    let guard = vm.config.flood_guard.as_ref()?;
    if source_text.is_none() {
        *source_text = host::source_address(host);
        *source = source_text.as_deref().and_then(policy::parse_source_address);
    }
    guard.blocked_for_known(vm.store.as_ref(), &vm.blocked_sources, (*source)?, now_secs)
}

/// A signature check by `source` failed (a token's, a DPoP proof's, a partner's):
/// counted by the flood guard, if there is one and the source is known.
pub(super) fn failed_signature(vm: &Vm, source: Option<std::net::IpAddr>, now_secs: u64) {
    if let (Some(guard), Some(source)) = (&vm.config.flood_guard, source) {
        if let Err(err) = guard.record_failure(vm.store.as_ref(), source, now_secs) {
            log::debug!("flood guard not updated: {err}");
        }
    }
}

/// Whether a credential that did not verify belongs to one of our issuers (a
/// lenient reading: see [`policy::names_machine_issuer`]).
pub fn names_machine_issuer(vm: &Vm, value: &[u8], now_ms: u64) -> bool {
    let keys = vm.keys.borrow();
    policy::names_machine_issuer(&vm.config.issuers, &KeyView { keys: &keys, now_ms }, value)
}

/// Whether the rejection may go away once keys load: keys not loaded yet, or a
/// `kid` we do not know while an early refetch is allowed (the issuer may have
/// rotated). Each request waits at most once.
pub fn await_keys(vm: &Vm, request: &Request, rejection: &Rejection, now_ms: u64) -> Option<Step> {
    let issuer = rejection.issuer?;
    if request.waited
        || vm.waiters.borrow().len() >= super::MAX_WAITERS
        || vm.config.routes.source_refused(&request.info)
    {
        // A source the route refuses gets its 403 now: no wait, no fetch for it.
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
    Some(Step::Wait {
        awaiting: Awaited::Document(Document::Jwks(issuer)),
        deadline_ms: now_ms.saturating_add(timeout).saturating_add(super::WAIT_MARGIN_MS),
    })
}
