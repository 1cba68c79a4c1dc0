//! The liveness stage: a verified token of an issuer with `profile.liveness` is
//! asked of the Kubernetes API server (see [`crate::verify::liveness`]).
//!
//! In order of cost:
//! 1. the worker's own verified-token entry holds a fresh answer: decided, no host
//!    call (the common case: a reused token);
//! 2. the shared table holds a fresh answer: decided, one shared-data read (the
//!    answer is then kept with the worker's entry);
//! 3. another request holds the token's review lease: wait for its answer, where
//!    the host wakes parked requests (bounded by `timeout_ms`); elsewhere, and once
//!    the wait is over without an answer, `on_unavailable` decides;
//! 4. this request takes the lease and makes the review: a callout through the
//!    host ([`Step::Called`]); its answer ([`answered`]) is recorded for everyone
//!    and the request is decided again.
//!
//! A request reviews at most once and waits for a review at most once: whatever
//! happens next, it is decided with what is known.

use std::rc::Rc;

use crate::host::Host;
use crate::keys::fetch::Response;
use crate::profile::kubernetes::Liveness;
use crate::reason::{Reason, Rejection, SeenToken};
use crate::verify::cache;
use crate::verify::liveness::{self as review, Review, ReviewKey, Verdict};
use crate::verify::Verified;

use super::record;
use super::verify::{Authenticated, Verification};
use super::{Awaited, Request, Step, Vm};

/// Where one request stands with its token's review.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The review this request is making (its callout in flight).
    pub pending: Option<Pending>,
    /// It made a review already (it never makes another).
    pub reviewed: bool,
    /// It waited for another's review already (it never waits again).
    pub waited: bool,
}

/// A review in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub token: u32,
    pub key: ReviewKey,
    pub issuer: usize,
    /// The verified `sub`: the user the API server must name.
    pub subject: String,
}

/// A verified token refused for `reason`: the refusal says whose token it was, so
/// that nothing downstream reads the token again to find out.
pub fn refusal(verified: &Verified, reason: Reason, detail: &str) -> Rejection {
    Rejection::new(reason, detail)
        .for_issuer(verified.issuer)
        .seen(SeenToken { kid: verified.kid.clone(), ours: Some(true) })
}

/// The stage: `None` when the request goes on to authorization (with the token
/// refused if it is gone or its liveness unavailable); `Some(step)` when it waits
/// or made the review callout.
pub fn check(
    vm: &Vm,
    host: &mut dyn Host,
    request: &mut Request,
    verification: &mut Verification,
    now_ms: u64,
) -> Option<Step> {
    let Some(Ok(Authenticated::Token(verified))) = &verification.result else { return None };
    let verified = Rc::clone(verified);
    let issuer = vm.config.issuers.get(verified.issuer)?;
    let liveness = issuer.profile.liveness()?;
    let raw = request.credential.token()?;
    // 1. This worker's entry.
    if let Some(alive) = verification.review.and_then(|r| r.fresh(liveness.cache_ms, now_ms)) {
        return conclude(&mut request.trace, verification, &verified, review::answered(alive));
    }
    // 2-4. The shared table.
    let key = review::review_key(&cache::digest(raw));
    let may_review = !request.liveness.reviewed;
    let (verdict, last) = match review::consult(vm.store.as_ref(), &key, liveness, vm.me, now_ms, may_review)
    {
        Ok(found) => found,
        Err(err) => {
            log::warn!("the liveness table is unavailable ({err}): cannot review");
            (review::fallback(liveness, None, now_ms), None)
        }
    };
    if let Some(last) = last.filter(|r| r.fresh(liveness.cache_ms, now_ms).is_some()) {
        remember(vm, raw, last);
    }
    let verdict = match verdict {
        // Where no request can wait for another's review (no tick, no wake-up: APISIX),
        // one that finds a review in progress makes its own, rather than be refused
        // while the API server is healthy: at most one review per concurrent request
        // of the worker, and only until the first answer is recorded.
        Verdict::Wait if may_review && !vm.can_park() => Verdict::Review,
        verdict => verdict,
    };
    match verdict {
        Verdict::Wait
            if !request.liveness.waited
                && vm.can_park()
                && vm.waiters.borrow().len() < super::MAX_WAITERS =>
        {
            request.liveness.waited = true;
            Some(Step::Wait {
                awaiting: Awaited::Review(key),
                deadline_ms: now_ms.saturating_add(liveness.timeout_ms),
            })
        }
        Verdict::Wait => {
            conclude(&mut request.trace, verification, &verified, review::fallback(liveness, last, now_ms))
        }
        Verdict::Review => {
            request.liveness.reviewed = true;
            let call = review::callout(liveness, raw, &issuer.audiences);
            match host.http_call(&call) {
                Ok(token) => {
                    request.liveness.pending = Some(Pending {
                        token,
                        key,
                        issuer: verified.issuer,
                        subject: verified.subject.clone(),
                    });
                    Some(Step::Called { token })
                }
                Err(err) => {
                    log::warn!(
                        "issuer {}: cannot make the TokenReview callout to {:?}: {err}",
                        issuer.name,
                        liveness.cluster
                    );
                    let last = record_outcome(vm, host, &key, None, liveness, verified.issuer, now_ms);
                    conclude(
                        &mut request.trace,
                        verification,
                        &verified,
                        review::fallback(liveness, last, now_ms),
                    )
                }
            }
        }
        verdict => conclude(&mut request.trace, verification, &verified, verdict),
    }
}

/// Applies a verdict to the verification: gone or unavailable become refusals.
/// The trace (explain) keeps the verdict: the verify stage's conclusion it already
/// holds was reached before this stage.
fn conclude(
    trace: &mut Option<Box<super::trace::Trace>>,
    verification: &mut Verification,
    verified: &Verified,
    verdict: Verdict,
) -> Option<Step> {
    let refused = match verdict {
        Verdict::Alive => None,
        Verdict::Gone => {
            Some(refusal(verified, Reason::WorkloadGone, "the API server no longer authenticates the token"))
        }
        Verdict::Unavailable | Verdict::Wait | Verdict::Review => Some(refusal(
            verified,
            Reason::LivenessUnavailable,
            "the API server could not say whether the token is still valid",
        )),
    };
    if let Some(trace) = trace.as_deref_mut() {
        trace.liveness = Some(refused.clone().map_or(Ok(()), Err));
    }
    if let Some(refused) = refused {
        verification.result = Some(Err(refused));
    }
    None
}

fn remember(vm: &Vm, raw: &str, review: Review) {
    if let Ok(local) = vm.local_tokens.try_borrow() {
        local.remember_review(raw, review);
    }
}

/// Records the review's outcome for everyone and counts it; returns the token's
/// last answer.
fn record_outcome(
    vm: &Vm,
    host: &mut dyn Host,
    key: &ReviewKey,
    outcome: Option<bool>,
    liveness: &Liveness,
    issuer: usize,
    now_ms: u64,
) -> Option<Review> {
    record::reviewed(vm, host, issuer, outcome);
    match review::record(vm.store.as_ref(), key, outcome, liveness, now_ms) {
        Ok(last) => last,
        Err(err) => {
            log::warn!("cannot record a TokenReview answer in the liveness table: {err}");
            outcome.map(|alive| Review {
                answered_at_ms: now_ms,
                alive,
                alive_at_ms: alive.then_some(now_ms),
            })
        }
    }
}

/// The answer to the review callout `token`: recorded for every request and
/// worker, and kept with this worker's entry. `None`: not this request's review.
pub fn answered(
    vm: &Vm,
    host: &mut dyn Host,
    request: &mut Request,
    token: u32,
    response: &Response,
    now_ms: u64,
) -> Option<()> {
    let pending = request.liveness.pending.take_if(|p| p.token == token)?;
    let issuer = vm.config.issuers.get(pending.issuer)?;
    let liveness = issuer.profile.liveness()?;
    let raw = request.credential.token()?;
    let outcome = match review::read_answer(response, &pending.subject, &issuer.audiences) {
        Ok(alive) => Some(alive),
        Err(why) => {
            log::warn!("issuer {}: TokenReview unavailable: {why}", issuer.name);
            None
        }
    };
    if let Some(last) = record_outcome(vm, host, &pending.key, outcome, liveness, pending.issuer, now_ms) {
        remember(vm, raw, last);
    }
    Some(())
}

/// The request is going away with its review in flight: free the lease at once.
pub fn abandoned(vm: &Vm, request: &mut Request) {
    if let Some(pending) = request.liveness.pending.take() {
        if let Err(err) = review::release(vm.store.as_ref(), &pending.key, vm.me) {
            log::debug!("cannot release a TokenReview lease: {err}");
        }
    }
}

/// Whether the review `key` waits for is over: answered, or no longer in progress.
pub fn settled(vm: &Vm, key: &ReviewKey, now_ms: u64) -> bool {
    match review::in_progress(vm.store.as_ref(), key, now_ms) {
        Ok(in_progress) => !in_progress,
        Err(_) => true,
    }
}
