//! Stage 2b, partner credentials: a request signed with RFC 9421 or carrying an
//! API key (see [`crate::partners`]) is verified here instead of by the token
//! verifier, and becomes the same [`Verification`] the authorize stage takes — one
//! identity model.
//!
//! A signature is checked as soon as the headers arrive (behind the flood guard,
//! like a token's). When it covers a body, the request then waits for its body
//! ([`Step::Body`]): the shell buffers it up to the partner's `max_body_bytes`
//! and hands it over with [`body`], which checks it against its `Content-Digest`.
//! Only then is the nonce remembered ([`crate::partners::replay`]) and the request
//! authorized. Requests that need no body never enter the body phase.

use crate::host::Host;
use crate::partners::check::{self, Signed};
use crate::partners::digest::Expected;
use crate::partners::replay::Seen;
use crate::partners::PartnerKey;
use crate::reason::{Reason, Rejection};

use super::extract::Presented;
use super::verify::{Authenticated, Verification};
use super::{authorize, documents, reply, Request, Step, Vm};

/// A verified signature waiting for its body.
#[derive(Debug)]
pub struct Pending {
    pub verification: Verification,
    pub signed: Signed,
}

/// Verifies a partner credential (the request's [`Presented::Signature`] or
/// [`Presented::ApiKey`]).
pub fn verify(
    vm: &Vm,
    host: &mut dyn Host,
    request: &mut Request,
    now_ms: u64,
) -> (Verification, Option<Signed>) {
    let none = Verification { result: None, blocked_for: None, attributed: None, review: None };
    let Some(partners) = &vm.config.partners else { return (none, None) };
    let now = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
    let started = host.now_ns();
    let mut blocked_for = None;
    let (result, signed) = match &request.credential {
        Presented::Signature(headers) => {
            let (source, source_text) = (&mut request.info.source, &mut request.observed.source);
            let mut crypto_allowed = || {
                let now = u64::try_from(now).unwrap_or(0);
                blocked_for = super::verify::source_blocked_for(vm, host, source, source_text, now);
                blocked_for.is_none()
            };
            match check::signature(
                partners,
                &vm.partner_keys,
                headers,
                request.has_body,
                now,
                &mut crypto_allowed,
            ) {
                Ok(signed) => (Ok(signed.key), Some(signed)),
                Err(rejection) => (Err(rejection), None),
            }
        }
        Presented::ApiKey(value) => (check::api_key(partners, &vm.partner_keys, value, now), None),
        Presented::Nothing | Presented::Bearer(_) | Presented::Dpop(_) | Presented::Unreadable { .. } => {
            return (none, None)
        }
    };
    if let Err(rejection) = &result {
        if rejection.reason == Reason::BadSignature {
            super::verify::failed_signature(vm, request.info.source, u64::try_from(now).unwrap_or(0));
        }
    }
    let elapsed = host.now_ns().saturating_sub(started);
    match &result {
        Ok(key) => {
            let identity = partners.partner(*key).map(|p| p.identity.as_str()).unwrap_or_default();
            let key_id = partners.key_id(*key).unwrap_or_default();
            request.observed.note_partner(Ok((*key, identity, key_id)), Some(elapsed));
        }
        Err(rejection) => request.observed.note_partner(Err(rejection), Some(elapsed)),
    }
    let verification = Verification {
        result: Some(result.map(Authenticated::Partner)),
        blocked_for,
        attributed: None,
        review: None,
    };
    if let Some(trace) = request.trace.as_deref_mut() {
        trace.verification = verification.result.clone();
        trace.partner = Some(if signed.is_some() || matches!(request.credential, Presented::Signature(_)) {
            "signature"
        } else {
            "API key"
        });
    }
    (verification, signed)
}

/// After verification: a signature that covers a body waits for it; otherwise its
/// nonce is remembered and the request authorized.
pub fn proceed(
    vm: &Vm,
    host: &mut dyn Host,
    request: &mut Request,
    mut verification: Verification,
    signed: Option<Signed>,
    now_ms: u64,
) -> Step {
    if let Some(signed) = signed {
        if signed.digest.is_some() {
            let max_bytes = signed.max_body_bytes;
            // A declared length over the limit is refused before a byte is buffered; a
            // partner whose bodies are not buffered at all (`max_body_bytes: 0`, for
            // hosts that cannot pause headers for the body) has every body refused.
            if max_bytes == 0 || content_length(request).is_some_and(|length| length > max_bytes) {
                fail(vm, request, &mut verification, &signed, too_large(&signed));
                return authorized(vm, host, request, verification, now_ms);
            }
            request.pending = Some(Pending { verification, signed });
            return Step::Body { max_bytes };
        }
        if let Some(refusal) = settle(vm, &signed, now_ms) {
            fail(vm, request, &mut verification, &signed, refusal);
        }
    }
    authorized(vm, host, request, verification, now_ms)
}

/// The authorize stage for a partner: decided with the revocation list as it
/// stands (a partner's request carries no token to wait for a first list with).
fn authorized(
    vm: &Vm,
    host: &mut dyn Host,
    request: &mut Request,
    verification: Verification,
    now_ms: u64,
) -> Step {
    authorize::authorize(
        vm,
        host,
        request,
        verification,
        documents::current_revocations(vm, now_ms).as_deref(),
        now_ms,
    )
}

/// The body phase: `buffered` bytes so far, `end_of_stream` once it is complete.
/// Returns [`Step::Body`] while more may come.
pub fn body(
    vm: &Vm,
    host: &mut dyn Host,
    request: &mut Request,
    buffered: usize,
    end_of_stream: bool,
) -> Step {
    let Some(pending) = request.pending.as_ref() else { return Step::Continue };
    let max_bytes = pending.signed.max_body_bytes;
    let over = u64::try_from(buffered).map_or(true, |b| b > max_bytes);
    if !over && !end_of_stream {
        return Step::Body { max_bytes };
    }
    let Some(Pending { mut verification, signed }) = request.pending.take() else { return Step::Continue };
    let now_ms = host.now_ns() / 1_000_000;
    let hashing = host.now_ns();
    let refusal = if over {
        Some(too_large(&signed))
    } else {
        match host.request_body(buffered) {
            Ok(bytes) => {
                match signed.digest.as_ref().map_or(Ok(()), |expected: &Expected| expected.check(&bytes)) {
                    Ok(()) => settle(vm, &signed, now_ms),
                    Err(mismatch) => Some(Rejection::new(Reason::DigestMismatch, mismatch.to_string())),
                }
            }
            Err(err) => Some(reply::internal(err)),
        }
    };
    // Reading and hashing the body is part of verifying the request.
    let hashed = host.now_ns().saturating_sub(hashing);
    request.observed.verify_ns = Some(request.observed.verify_ns.unwrap_or_default().saturating_add(hashed));
    if let Some(refusal) = refusal {
        fail(vm, request, &mut verification, &signed, refusal);
    }
    let step = authorized(vm, host, request, verification, now_ms);
    super::decided(vm, host, request, step == Step::Replied, now_ms);
    step
}

/// Remembers the signature's nonce; a replay (or a cache with no room) is a refusal.
fn settle(vm: &Vm, signed: &Signed, now_ms: u64) -> Option<Rejection> {
    let (Some((fingerprint, until)), Some(partners)) = (signed.nonce, &vm.config.partners) else {
        return None;
    };
    match partners.replay.remember(vm.store.as_ref(), fingerprint, until, now_ms / 1000) {
        Ok(Seen::First) => None,
        Ok(Seen::Replay) => {
            Some(Rejection::new(Reason::SignatureReplay, "the signature's nonce was already used"))
        }
        Ok(Seen::Full) => {
            Some(Rejection::new(Reason::ReplayCacheFull, "no room to remember the nonce; retry later"))
        }
        Err(err) => Some(Rejection::new(Reason::InternalError, format!("nonce cache unavailable: {err}"))),
    }
}

fn too_large(signed: &Signed) -> Rejection {
    Rejection::new(Reason::BodyTooLarge, format!("the body is larger than {} bytes", signed.max_body_bytes))
}

/// Turns a verified signature into a refusal (its body, its nonce): the key is ours
/// and named in the decision log, the identity is not (it did not pass).
fn fail(
    vm: &Vm,
    request: &mut Request,
    verification: &mut Verification,
    signed: &Signed,
    rejection: Rejection,
) {
    let kid = vm.config.partners.as_ref().and_then(|p| p.key_id(signed.key)).map(str::to_owned);
    let rejection = rejection.seen(crate::reason::SeenToken { kid, ours: Some(true) });
    request.observed.note_partner(Err(&rejection), request.observed.verify_ns);
    if let Some(trace) = request.trace.as_deref_mut() {
        trace.verification = Some(Err(rejection.clone()));
    }
    verification.result = Some(Err(rejection));
}

fn content_length(request: &Request) -> Option<u64> {
    match &request.credential {
        Presented::Signature(headers) => headers
            .get("content-length")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse().ok()),
        _ => None,
    }
}

/// The partner key of a verified request, for the key metrics.
pub fn key_of(authenticated: &Authenticated) -> Option<PartnerKey> {
    match authenticated {
        Authenticated::Partner(key) => Some(*key),
        Authenticated::Token(_) => None,
    }
}

#[cfg(test)]
mod tests;
