//! Stage 3, authorize: whose credential this is, which route class the request
//! falls in, and what policy says — then the quota and forward stages for an
//! allowed request, or the refusal for a denied one.
//!
//! The decision itself is [`crate::policy::decide`]; this stage builds its input
//! (the credential as policy sees it) and acts on the verdict.

use crate::host::Host;
use crate::mtls;
use crate::policy::{
    self, ClientClass, Credential, Decision, Denial, DenyReason, IdentityInfo, RevocationList, Rule,
};
use crate::reason::{Reason, Rejection};

use super::trace::TracedBehaviour;
use super::verify::{names_machine_issuer, Authenticated, Verification};
use super::{behaviour, forward, quota, reply, Request, Step, Vm};

pub fn authorize(
    vm: &Vm,
    host: &mut dyn Host,
    request: &mut Request,
    verification: Verification,
    feed: Option<&RevocationList>,
    now_ms: u64,
) -> Step {
    let config = &vm.config;
    let Verification { result: verification, blocked_for, attributed, .. } = verification;
    // Only a failed credential needs this: a verified one is ours by definition. What
    // the verifier read of a token that parsed says it; anything else gets the
    // lenient reading, where the route's audience lets it matter.
    let machine_issuer = match &verification {
        Some(Err(rejection)) => {
            attributed.or(rejection.token.as_ref().and_then(|t| t.ours)).unwrap_or_else(|| {
                policy::attribution_matters(&config.routes, &request.info)
                    && request.credential.bytes().is_some_and(|value| names_machine_issuer(vm, value, now_ms))
            })
        }
        _ => false,
    };
    request.credential = super::extract::Presented::Nothing;

    request.verified_issuer = match &verification {
        Some(Ok(Authenticated::Token(v))) => Some(v.issuer),
        _ => None,
    };
    let issuer_name = match &verification {
        Some(Ok(Authenticated::Token(v))) => {
            config.issuers.get(v.issuer).map(|i| i.name.as_str()).unwrap_or_default()
        }
        _ => "",
    };
    // Owned here: the identities below borrow it while `request` is updated.
    let certificate = request.info.client_certificate.clone();
    if let Some(identity) = certificate.as_ref().and_then(|c| c.trusted_identity()) {
        // For access logs: `%FILTER_STATE(wasm.nhi_cert_identity:PLAIN)%`.
        let _ = host.set_property("nhi_cert_identity", identity.as_bytes());
        request.observed.cert_identity = Some(identity.to_owned());
    }
    let no_claims = serde_json::Map::new();
    // Owned here too: the key is part of the identity (allow rules, deny lists, quotas).
    let jkt = request.dpop.jkt.clone();
    let credential = match &verification {
        None => match mtls::certificate_only(config.mtls.as_ref(), certificate.as_ref(), &no_claims) {
            Some(who) => Credential::Certificate(who),
            None => Credential::Absent,
        },
        Some(Ok(Authenticated::Token(v))) => Credential::Verified(IdentityInfo {
            jkt: jkt.as_deref(),
            ..IdentityInfo::new(v, issuer_name, &v.identity)
        }),
        Some(Ok(Authenticated::Partner(key))) => {
            match config.partners.as_ref().and_then(|p| p.identity_info(*key)) {
                Some(who) => Credential::Verified(who),
                None => Credential::Absent,
            }
        }
        Some(Err(rejection)) => Credential::Rejected { rejection, machine_issuer },
    };
    let mut verdict = policy::decide_with(&config.routes, &request.info, &credential, feed);
    note_verdict(request, &verdict);
    // Verified tokens, or certificate-only identities where the route accepts them.
    let who = credential.identity().filter(|_| verdict.client_class == ClientClass::Machine);
    if let (None, Some(who)) = (&verification, who) {
        // A certificate-only identity, for metrics and the decision log.
        request.observed.identity = Some(who.identity.to_owned());
        request.observed.certificate_only = true;
    }
    if let Some(mut refusal) = verdict.local_reply(&config.realm, request.request_id.as_deref()) {
        let rejection = match &verification {
            Some(Err(rejection)) => Some(rejection),
            _ => None,
        };
        add_refusal_headers(vm, request, &verdict, rejection, blocked_for, &mut refusal);
        return reply::send(host, &refusal);
    }
    if let (Some(who), Decision::Allow) = (who, &verdict.decision) {
        if let Err(step) = admit(vm, host, request, who, &mut verdict, now_ms) {
            return step;
        }
    }

    let authenticated = match &verification {
        Some(Ok(authenticated)) => Some(authenticated),
        _ => None,
    };
    let noted = forward::Noted {
        anomalies: request.observed.anomalies,
        dpop_scheme: request.dpop.scheme,
        machine_credential: machine_issuer,
    };
    match forward::forward(vm, host, &verdict, authenticated, who, certificate.as_ref(), noted) {
        Ok(()) => Step::Continue,
        Err(err) => reply::refuse(vm, host, request, &reply::internal(err)),
    }
}

/// What a refusal carries besides its status and body: `Retry-After` for a blocked
/// source, the DPoP challenge, a partner's signing hints.
fn add_refusal_headers(
    vm: &Vm,
    request: &Request,
    verdict: &policy::Verdict<'_>,
    rejection: Option<&Rejection>,
    blocked_for: Option<u64>,
    refusal: &mut crate::reason::LocalReply,
) {
    if let (Some(seconds), Some(Reason::TooManyFailures)) = (blocked_for, rejection.map(|r| r.reason)) {
        refusal.headers.push(("retry-after".to_owned(), seconds.to_string()));
    }
    if let Some(denial) = verdict.enforced_denial() {
        super::dpop::challenge(vm, request, denial, refusal);
        if let (DenyReason::Auth(reason), Some(partners)) = (denial.reason, &vm.config.partners) {
            let keyid = request.observed.kid.as_deref();
            let has_query = request.info.path.contains('?');
            refusal.headers.extend(partners.hints(reason, keyid, has_query, request.has_body));
        }
    }
}

/// An allowed machine request's last two checks: its behaviour (an anomaly in
/// `enforce` mode refuses it) and its quota (charged here). `Err`: refused.
fn admit(
    vm: &Vm,
    host: &mut dyn Host,
    request: &mut Request,
    who: &IdentityInfo<'_>,
    verdict: &mut policy::Verdict<'_>,
    now_ms: u64,
) -> Result<(), Step> {
    let config = &vm.config;
    let refused = behaviour::observe(vm, host, request, who, verdict.route, now_ms);
    let detecting = config.behaviour.as_ref().is_some_and(|b| b.detect);
    if let (Some(trace), true) = (request.trace.as_deref_mut(), detecting) {
        trace.behaviour = Some(TracedBehaviour { refused: refused.clone() });
    }
    if let Some(denial) = refused {
        verdict.decision = Decision::Deny(denial);
        note_verdict(request, verdict);
        if let Some(refusal) = verdict.local_reply(&config.realm, request.request_id.as_deref()) {
            return Err(reply::send(host, &refusal));
        }
        // Shadow mode: observed, not enforced; no quota is charged for it either.
        return Ok(());
    }
    match quota::charge(vm, request, who, verdict.route, now_ms) {
        Ok(headers) => request.response_headers.extend(headers),
        Err(Some(quota_headers)) => {
            verdict.decision = Decision::Deny(Denial {
                reason: DenyReason::Auth(Reason::QuotaExceeded),
                status: Reason::QuotaExceeded.status(),
                detail: "quota exceeded".into(),
            });
            verdict.rule = Rule::Quota;
            note_verdict(request, verdict);
            if let Some(mut refusal) = verdict.local_reply(&config.realm, request.request_id.as_deref()) {
                refusal.headers.extend(quota_headers);
                return Err(reply::send(host, &refusal));
            }
        }
        Err(None) => {
            let rejection = Rejection::new(Reason::InternalError, "quota unavailable");
            return Err(reply::refuse(vm, host, request, &rejection));
        }
    }
    Ok(())
}

/// The verdict, for the record (and the trace, when the request keeps one).
fn note_verdict(request: &mut Request, verdict: &policy::Verdict<'_>) {
    request.observed.note_verdict(verdict);
    if let Some(trace) = request.trace.as_deref_mut() {
        trace.verdict = Some(verdict.into());
    }
}
