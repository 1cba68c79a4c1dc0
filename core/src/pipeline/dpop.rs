//! Stage 2b, DPoP (RFC 9449 §7): after the token verified — from the cache or not —
//! the proof that came with it is checked, on every request (each proof is new).
//!
//! | token presented as | token | issuer/route mode | outcome |
//! |---|---|---|---|
//! | `Bearer` | bound (`cnf.jkt`) | any, `off` included | 401 `dpop_required` (the downgrade) |
//! | `Bearer` | unbound | `required` | 401 `dpop_required` |
//! | `Bearer` | unbound | `optional`, `off` | passes (no proof read) |
//! | `DPoP` | any | `off` | 401 `invalid_dpop_proof` |
//! | `DPoP` | bound | `optional`, `required` | every check of [`crate::dpop::check`] |
//! | `DPoP` | unbound | `optional`, `required` | 401 `dpop_key_mismatch` |
//!
//! The `DPoP` scheme is read only when some issuer or route turns DPoP on; the
//! downgrade check runs for every verified token, and costs a lookup in its claims.
//! A route's `dpop` replaces the issuer's mode on that route.
//!
//! **Scheme and authority for `htu`.** The authority is `:authority` (the `Host` the
//! client sent; `host` on hosts without pseudo-headers); the scheme is the
//! connection's as Envoy writes it into `x-forwarded-proto` (from the downstream
//! connection at the edge, or a trusted hop's: `xff_num_trusted_hops`), and `:scheme`
//! only without it — Envoy takes an HTTP/2 client's own `:scheme`, even over
//! cleartext. Behind a load balancer that terminates TLS, make Envoy trust it, and
//! `https` proofs match. With neither, no proof matches (fail closed).

use std::rc::Rc;

use crate::dpop::{self, proof::Presented, Check, Mode, ProofHeader};
use crate::host::Host;
use crate::policy::{self, Denial, DenyReason};
use crate::reason::{LocalReply, Reason, Rejection, SeenToken};
use crate::verify::Verified;

use super::extract::ProofValue;
use super::verify::{Authenticated, Verification};
use super::{Request, Vm};

/// What a request carries for DPoP, from extraction to the reply.
#[derive(Debug, Clone, Default)]
pub struct DpopRequest {
    /// The token came as `Authorization: DPoP <token>`.
    pub scheme: bool,
    pub proof: ProofValue,
    /// The request's URI scheme (see the module docs).
    pub url_scheme: Option<String>,
    /// The issuer whose DPoP settings applied (for the challenge's `algs`).
    pub issuer: Option<usize>,
    /// The verified proof key's thumbprint.
    pub jkt: Option<String>,
    /// The current server nonce, when the issuer requires one.
    pub nonce: Option<String>,
}

/// Holds the verified token to its proof; a failure replaces the verification's result.
pub fn dpop(
    vm: &Vm,
    host: &mut dyn Host,
    request: &mut Request,
    mut verification: Verification,
    now_ms: u64,
) -> Verification {
    let Some(Ok(Authenticated::Token(verified))) = &verification.result else { return verification };
    let verified = Rc::clone(verified);
    let judged =
        judge(vm, host, request, &verified, now_ms, &mut verification.blocked_for).map_err(|rejection| {
            let seen = SeenToken { kid: verified.kid.clone(), ours: Some(true) };
            rejection.for_issuer(verified.issuer).seen(seen)
        });
    if let Some(trace) = request.trace.as_deref_mut() {
        trace.dpop = Some(judged.clone().map(|()| request.dpop.jkt.clone()));
    }
    if let Err(rejection) = judged {
        verification.result = Some(Err(rejection));
    }
    verification
}

fn judge(
    vm: &Vm,
    host: &mut dyn Host,
    request: &mut Request,
    verified: &Verified,
    now_ms: u64,
    blocked_for: &mut Option<u64>,
) -> Result<(), Rejection> {
    let config = &vm.config;
    let bound = dpop::bound_jkt(&verified.claims)?;
    if !request.dpop.scheme {
        if bound.is_some() {
            return Err(Rejection::new(
                Reason::DpopRequired,
                "the token is bound to a DPoP key: present it as `Authorization: DPoP` with a proof",
            ));
        }
        if config.dpop_in_use() && mode(vm, request, verified.issuer) == Mode::Required {
            return Err(Rejection::new(Reason::DpopRequired, "only DPoP-bound tokens are accepted here"));
        }
        return Ok(());
    }
    request.dpop.issuer = Some(verified.issuer);
    if mode(vm, request, verified.issuer) == Mode::Off {
        return Err(Rejection::new(
            Reason::InvalidDpopProof,
            "DPoP is not accepted for this issuer's tokens here",
        ));
    }
    let (Some(issuer), Some(shared)) =
        (config.issuers.get(verified.issuer), vm.dpop_issuers.get(verified.issuer))
    else {
        return Err(Rejection::new(Reason::InternalError, "no DPoP state for the issuer"));
    };
    let settings = &issuer.dpop;
    let now = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
    let nonce = match &shared.nonces {
        None => None,
        Some(nonces) => {
            let mut locals = vm.dpop.nonces.try_borrow_mut().map_err(|_| internal("nonce state busy"))?;
            let local = locals.get_mut(verified.issuer).ok_or_else(|| internal("no nonce state"))?;
            let state = nonces
                .current(vm.store.as_ref(), local, now_ms / 1000, |buf| host.random(buf).is_ok())
                .map_err(|err| internal(&format!("no DPoP nonce: {err:?}")))?;
            request.dpop.nonce = Some(state.current());
            Some(state)
        }
    };
    let uri = match (request.dpop.url_scheme.as_deref(), request.info.host.as_deref()) {
        (Some(scheme), Some(authority)) => {
            crate::uri::normalized_request_uri(scheme, authority, &request.info.path)
        }
        _ => None,
    };
    let token = request.credential.token().unwrap_or_default();
    let header = match &request.dpop.proof {
        ProofValue::Absent => ProofHeader::Absent,
        ProofValue::One(value) => ProofHeader::One(value),
        ProofValue::Many => ProofHeader::Many,
    };
    let check = Check {
        settings,
        header,
        presented: Presented {
            method: &request.info.method,
            uri: uri.as_deref(),
            token,
            now,
            skew: issuer.clock_skew_seconds,
        },
        bound_jkt: bound,
        nonce: nonce.as_ref(),
    };
    let started = host.now_ns();
    let mut budget = Budget {
        vm,
        host,
        source: &mut request.info.source,
        source_text: &mut request.observed.source,
        now_secs: u64::try_from(now).unwrap_or(0),
        blocked_for: None,
    };
    let result = dpop::check(&check, &vm.dpop, shared, vm.store.as_ref(), &mut budget);
    *blocked_for = budget.blocked_for;
    request.observed.dpop_ns = Some(host.now_ns().saturating_sub(started));
    let jkt = result?;
    if let Some(nonce) = &request.dpop.nonce {
        request.response_headers.push((dpop::NONCE_HEADER.to_owned(), nonce.clone()));
    }
    request.observed.dpop_jkt = Some(jkt.clone());
    request.dpop.jkt = Some(jkt);
    Ok(())
}

/// The request's source and the flood guard, for [`dpop::check`].
struct Budget<'a> {
    vm: &'a Vm,
    host: &'a mut dyn Host,
    source: &'a mut Option<std::net::IpAddr>,
    source_text: &'a mut Option<String>,
    now_secs: u64,
    /// Set when the source is blocked: seconds until it may cause a check again.
    blocked_for: Option<u64>,
}

impl dpop::SignatureBudget for Budget<'_> {
    fn allows(&mut self) -> bool {
        self.blocked_for = super::verify::source_blocked_for(
            self.vm,
            self.host,
            self.source,
            self.source_text,
            self.now_secs,
        );
        self.blocked_for.is_none()
    }

    fn failed(&mut self) {
        super::verify::failed_signature(self.vm, *self.source, self.now_secs);
    }
}

fn internal(detail: &str) -> Rejection {
    Rejection::new(Reason::InternalError, detail)
}

/// The issuer's mode, or the matched route's override.
fn mode(vm: &Vm, request: &Request, issuer: usize) -> Mode {
    let route = if vm.config.routes.any_dpop_override() {
        policy::classify(&vm.config.routes, &request.info).ok().flatten()
    } else {
        None
    };
    vm.config.dpop_mode(issuer, route)
}

/// Fits a refusal's challenge to DPoP (RFC 9449 §7.1): a request that used the
/// `DPoP` scheme, or whose proof failed, gets a `DPoP` challenge carrying the error
/// (and the accepted `algs`); any other 401 keeps its `Bearer` challenge and gains
/// a bare `DPoP algs="…"` one, so clients learn DPoP is accepted. With a nonce
/// required, every 401 to a DPoP request carries the current one (`DPoP-Nonce`).
pub fn challenge(vm: &Vm, request: &Request, denial: &Denial, reply: &mut LocalReply) {
    let config = &vm.config;
    if !config.dpop_in_use() || reply.status != 401 {
        return;
    }
    let algs = match request.dpop.issuer.and_then(|i| config.issuers.get(i)) {
        Some(issuer) => issuer.dpop.algs(),
        None => {
            let mut algs: Vec<&str> = Vec::new();
            for issuer in &config.issuers {
                for alg in &issuer.dpop.algorithms {
                    if !algs.contains(&alg.name()) {
                        algs.push(alg.name());
                    }
                }
            }
            algs.join(" ")
        }
    };
    let dpop_error = matches!(denial.reason, DenyReason::Auth(reason) if reason.is_dpop_proof());
    for (name, value) in reply.headers.iter_mut() {
        if name != "www-authenticate" {
            continue;
        }
        match value.strip_prefix("Bearer ") {
            Some(params) if request.dpop.scheme || dpop_error => {
                *value = format!("DPoP algs=\"{algs}\", {params}")
            }
            _ => value.push_str(&format!(", DPoP algs=\"{algs}\"")),
        }
    }
    if let Some(nonce) = &request.dpop.nonce {
        reply.headers.push((dpop::NONCE_HEADER.to_owned(), nonce.clone()));
    }
}
