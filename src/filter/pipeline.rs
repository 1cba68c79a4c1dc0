//! The per-request decision, as a function of the VM state and the request's
//! own state, so it can run twice: in `on_http_request_headers`, and again from
//! the root context for a request that waited for keys (after
//! `set_effective_context`, every host call acts on that request).

use std::cell::RefCell;
use std::rc::Rc;

use std::time::Duration;

use log::{debug, warn};

use nhi_guard_core::host::header_map::HeaderMap;
use nhi_guard_core::keys::keyshare::KeyView;
use nhi_guard_core::mtls;
use nhi_guard_core::policy::{
    self, ClientClass, Credential, Decision, Denial, DenyReason, IdentityInfo, RequestInfo, Verdict,
    SHADOW_DECISION_HEADER,
};
use nhi_guard_core::reason::{LocalReply, Reason, Rejection};
use nhi_guard_core::verify::cache;
use nhi_guard_core::verify::Verified;

use super::host::{self, HostError};
use super::observe;
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
    /// The credential header, kept only until the decision (never logged).
    pub credential: Presented,
    /// Whether this request already waited once for keys.
    pub waited: bool,
    /// The issuer (index) whose keys verified the token, once decided.
    pub verified_issuer: Option<usize>,
    /// Headers for the response to an allowed request (quota state).
    pub response_headers: Vec<(String, String)>,
    /// Path, host, method, Envoy route name and source address.
    pub info: RequestInfo,
    /// What the metrics, the decision log and the access log are told (see `observe`).
    pub observed: nhi_guard_core::observe::decision_log::Record,
}

/// The credential header as the request presented it.
#[derive(Debug, Default)]
pub enum Presented {
    #[default]
    Nothing,
    /// A bearer token.
    Bearer(String),
    /// A credential header holding no bearer token nhi-guard can read: another
    /// scheme, or (`undecodable`) the bearer scheme with bytes that are not UTF-8.
    /// Read only to decide whose credential it is (`policy::names_machine_issuer`).
    Unreadable { value: Vec<u8>, undecodable: bool },
}

impl Presented {
    fn bearer(&self) -> Option<&str> {
        match self {
            Presented::Bearer(raw) => Some(raw),
            Presented::Nothing | Presented::Unreadable { .. } => None,
        }
    }

    fn bytes(&self) -> Option<&[u8]> {
        match self {
            Presented::Bearer(raw) => Some(raw.as_bytes()),
            Presented::Unreadable { value, .. } => Some(value),
            Presented::Nothing => None,
        }
    }
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

/// Decides and acts on one request (see [`decide_and_act`]), then counts and
/// publishes the decision unless the request waits for keys.
pub fn run(vm: &Vm, request: &mut Request, now_ms: u64) -> Step {
    let step = decide_and_act(vm, request, now_ms);
    if !matches!(step, Step::Wait { .. }) {
        observe::decided(vm, request, step == Step::Replied);
    }
    step
}

/// Decides and acts on one request: verify → classify and authorize → quota →
/// headers. Managed headers were already stripped.
fn decide_and_act(vm: &Vm, request: &mut Request, now_ms: u64) -> Step {
    let config = &vm.config;
    #[cfg(feature = "fault-injection")]
    if let Some(header) = &config.panic_header {
        if host::request_header(header).ok().flatten().is_some() {
            #[allow(clippy::panic)]
            {
                panic!("fault injection: simulated VM crash");
            }
        }
    }
    let now_secs = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
    let now_secs_u = u64::try_from(now_secs).unwrap_or_default();
    // A token this VM used recently costs a hash lookup: no clock, no shared data.
    let local_hit = request.credential.bearer().and_then(|raw| {
        let keys = vm.keys.borrow();
        let view = KeyView { keys: &keys, now_ms };
        vm.local_tokens.borrow().get(config.trust(), &view, raw, now_secs)
    });
    // Timed only when a verification runs: not without a token, not on a local hit.
    let verify_started_ns = (request.credential.bearer().is_some() && local_hit.is_none()).then(host::now_ns);
    // The flood guard: a source over its budget of failed signature checks gets no
    // more crypto until its window ends (cached verifications still pass). Asked
    // only when a token needs crypto, which is also when the source is read.
    let mut blocked_for = None;
    let verification = match local_hit {
        Some(verified) => Some(Ok(verified)),
        None => request.credential.bearer().map(|raw| {
            let keys = vm.keys.borrow();
            let view = KeyView { keys: &keys, now_ms };
            let (source, source_text) = (&mut request.info.source, &mut request.observed.source);
            let crypto_allowed = || {
                if let Some(guard) = &config.flood_guard {
                    if source_text.is_none() {
                        *source_text = host::source_address();
                        *source = source_text.as_deref().and_then(policy::parse_source_address);
                    }
                    if let Some(source) = *source {
                        blocked_for = guard.blocked_for(vm.store.as_ref(), source, now_secs_u);
                    }
                }
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
    // A token bound to a certificate (`cnf`) on a listener without an `mtls` block:
    // only now is the certificate worth a host call.
    if let Some(Ok(verified)) = &verification {
        if config.mtls.is_none()
            && request.info.client_certificate.is_none()
            && verified.claims.contains_key("cnf")
        {
            request.info.client_certificate = mtls::client_certificate(None, connection_property);
        }
    }
    let verification = verification.map(|result| {
        result.and_then(|v| {
            mtls::check_verified(&config.issuers, &v, request.info.client_certificate.as_ref()).map(|()| v)
        })
    });
    if let (Some(Err(rejection)), Some(guard), Some(source)) =
        (&verification, &config.flood_guard, request.info.source)
    {
        if rejection.reason == Reason::BadSignature {
            if let Err(err) = guard.record_failure(vm.store.as_ref(), source, now_secs_u) {
                debug!("flood guard not updated: {err}");
            }
        }
    }
    // A credential header with no readable bearer token: refused as malformed when
    // it carries the bearer scheme (bytes that are not UTF-8) or when a lenient
    // reading says it is one of ours presented another way; someone else's otherwise.
    let mut attributed = None;
    let verification = match (verification, &request.credential) {
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
                ))
            })
        }
        (verification, _) => verification,
    };
    let verify_ns = verify_started_ns.map(|started| host::now_ns().saturating_sub(started));
    request.observed.note_verification(
        request.credential.bearer(),
        config.token.max_bytes,
        verification.as_ref().map(|r| r.as_ref().map(|v| &**v)),
        verify_ns,
    );
    if let Some(Err(rejection)) = &verification {
        if let Some(step) = wait_for_keys(vm, request, rejection, now_ms) {
            return step;
        }
    }
    // Only a failed credential needs this second (lenient) look: a verified one is
    // ours by definition, and reading it again would cost every request.
    let machine_issuer = matches!(verification, Some(Err(_)))
        && attributed.unwrap_or_else(|| {
            request.credential.bytes().is_some_and(|value| names_machine_issuer(vm, value, now_ms))
        });
    request.credential = Presented::Nothing;

    request.verified_issuer = match &verification {
        Some(Ok(v)) => Some(v.issuer),
        _ => None,
    };
    let issuer_name = match &verification {
        Some(Ok(v)) => config.issuers.get(v.issuer).map(|i| i.name.as_str()).unwrap_or_default(),
        _ => "",
    };
    // Owned here: the identities below borrow it while `request` is updated.
    let certificate = request.info.client_certificate.clone();
    if let Some(identity) = certificate.as_ref().and_then(|c| c.trusted_identity()) {
        // For access logs: `%FILTER_STATE(wasm.nhi_cert_identity:PLAIN)%`.
        let _ = host::set_property("nhi_cert_identity", identity.as_bytes());
        request.observed.cert_identity = Some(identity.to_owned());
    }
    let no_claims = serde_json::Map::new();
    let credential = match &verification {
        None => match mtls::certificate_only(config.mtls.as_ref(), certificate.as_ref(), &no_claims) {
            Some(who) => Credential::Certificate(who),
            None => Credential::Absent,
        },
        Some(Ok(v)) => Credential::Verified(IdentityInfo::new(v, issuer_name, &v.identity)),
        Some(Err(rejection)) => Credential::Rejected { rejection, machine_issuer },
    };
    let mut verdict = policy::decide(&config.routes, &request.info, &credential);
    request.observed.note_verdict(&verdict);
    // Verified tokens, or certificate-only identities where the route accepts them.
    let who = credential.identity().filter(|_| verdict.client_class == ClientClass::Machine);
    if let (None, Some(who)) = (&verification, who) {
        // A certificate-only identity, for metrics and the decision log.
        request.observed.identity = Some(who.identity.to_owned());
        request.observed.certificate_only = true;
    }
    if let Some(mut reply) = verdict.local_reply(&config.realm, request.request_id.as_deref()) {
        if let (Some(seconds), Some(Err(r))) = (blocked_for, &verification) {
            if r.reason == Reason::TooManyFailures {
                reply.headers.push(("retry-after".to_owned(), seconds.to_string()));
            }
        }
        return send(&reply);
    }

    let mut quota_headers = Vec::new();
    if let (Some(who), Decision::Allow) = (who, &verdict.decision) {
        match charge_quota(vm, request, who, verdict.route, now_ms) {
            Ok(headers) => request.response_headers = headers,
            Err(Some(headers)) => {
                verdict.decision = Decision::Deny(Denial {
                    reason: DenyReason::Auth(Reason::QuotaExceeded),
                    status: Reason::QuotaExceeded.status(),
                    detail: "quota exceeded".into(),
                });
                quota_headers = headers;
            }
            Err(None) => {
                let rejection = Rejection::new(Reason::InternalError, "quota unavailable");
                return refuse(vm, request, &rejection);
            }
        }
        request.observed.note_verdict(&verdict);
        if let Some(mut reply) = verdict.local_reply(&config.realm, request.request_id.as_deref()) {
            reply.headers.extend(quota_headers);
            return send(&reply);
        }
    }

    let verified = match &verification {
        Some(Ok(v)) => Some(&**v),
        _ => None,
    };
    match set_request_headers(vm, &verdict, verified, who, certificate.as_ref()) {
        Ok(()) => Step::Continue,
        Err(err) => refuse(vm, request, &internal(err)),
    }
}

/// The headers the upstream (and Envoy's routing) sees: client class, shadow
/// decision, and the verified identity.
fn set_request_headers(
    vm: &Vm,
    verdict: &Verdict<'_>,
    verified: Option<&Verified>,
    who: Option<&IdentityInfo<'_>>,
    certificate: Option<&mtls::ClientCertificate>,
) -> Result<(), HostError> {
    let config = &vm.config;
    host::set_request_header(&config.routes.client_header, verdict.client_class.as_str())?;
    if let Some(shadow) = verdict.shadow_header() {
        host::set_request_header(SHADOW_DECISION_HEADER, &shadow)?;
    }
    if let Some(who) = who {
        host::set_request_header(&config.forward.identity_header, who.identity)?;
        host::set_request_header(&config.forward.issuer_header, who.issuer)?;
        if let Some((name, value)) = mtls::forwarded_identity(config.mtls.as_ref(), certificate) {
            host::set_request_header(name, value)?;
        }
    }
    if let Some(verified) = verified {
        if let Some(rules) = config.issuers.get(verified.issuer).map(|i| &i.claims_to_headers) {
            for (name, value) in nhi_guard_core::claims::headers::headers(rules, &verified.claims) {
                host::set_request_header(name, &value)?;
            }
        }
        if !config.token.forward {
            host::remove_request_header(&config.token.header)?;
        }
    }
    Ok(())
}

/// Whether the rejection may go away once keys load: keys not loaded yet, or a
/// `kid` we do not know while an early refetch is allowed (the issuer may have
/// rotated). Each request waits at most once.
fn wait_for_keys(vm: &Vm, request: &Request, rejection: &Rejection, now_ms: u64) -> Option<Step> {
    let issuer = rejection.issuer?;
    if request.waited
        || vm.waiters.borrow().len() >= MAX_WAITERS
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
    Some(Step::Wait { issuer, deadline_ms: now_ms.saturating_add(timeout).saturating_add(WAIT_MARGIN_MS) })
}

type Headers = Vec<(String, String)>;

/// Charges the verified identity's quota. `Ok`: allowed, with the headers for the
/// response (if configured). `Err(Some(headers))`: over quota, with the headers for
/// the 429. `Err(None)`: the quota store failed — the caller refuses (fail closed).
fn charge_quota(
    vm: &Vm,
    request: &mut Request,
    who: &IdentityInfo<'_>,
    route: Option<&str>,
    now_ms: u64,
) -> Result<Headers, Option<Headers>> {
    let Some(quotas) = &vm.config.quotas else { return Ok(Vec::new()) };
    let (issuer, identity) = (who.issuer, who.identity);
    let policy = quotas.policy_for(identity, who.claims, route);
    let now = Duration::from_millis(now_ms);
    let outcome = match quotas.check(vm.store.as_ref(), policy, issuer, identity, now) {
        Ok(outcome) => outcome,
        Err(err) => {
            warn!("quota store unavailable ({err}); refusing {:?}", request.request_id);
            return Err(None);
        }
    };
    if let Some(anomaly) = outcome.anomaly {
        warn!("quota of {issuer}/{identity}: {anomaly:?}");
    }
    request.observed.note_quota(&outcome);
    match (outcome.allowed, quotas.response_headers) {
        (true, true) => Ok(outcome.headers()),
        (true, false) => Ok(Vec::new()),
        (false, _) => Err(Some(outcome.headers())),
    }
}

/// Whether a credential that did not verify belongs to one of our issuers (a
/// lenient reading: see `policy::names_machine_issuer`).
fn names_machine_issuer(vm: &Vm, value: &[u8], now_ms: u64) -> bool {
    let keys = vm.keys.borrow();
    policy::names_machine_issuer(&vm.config.issuers, &KeyView { keys: &keys, now_ms }, value)
}

/// Client-supplied copies of the headers we set are never forwarded, whatever the
/// bytes of their values, under any spelling a backend may read as ours
/// (`x_nhi_identity`). `present` is the request's headers: only the names there are
/// removed (one host call each).
pub fn strip_managed_headers(vm: &Vm, present: &HeaderMap) -> Result<(), HostError> {
    let config = &vm.config;
    let managed: Vec<&str> = [config.forward.identity_header.as_str(), config.forward.issuer_header.as_str()]
        .into_iter()
        .chain(config.routes.managed_headers())
        .chain(config.claim_headers())
        .chain(config.mtls.as_ref().map(|m| m.identity_header.as_str()))
        .collect();
    for name in present.managed_names(&managed) {
        host::remove_request_header(name)?;
    }
    Ok(())
}

/// A connection property (`connection.<name>`), for the client certificate.
pub fn connection_property(name: &str) -> Option<String> {
    host::property_string(&["connection", name])
}

pub fn internal(err: HostError) -> Rejection {
    Rejection::new(Reason::InternalError, format!("host call failed: {err}"))
}

pub fn refuse(vm: &Vm, request: &Request, rejection: &Rejection) -> Step {
    debug!("denied {} ({})", rejection.reason, rejection.detail);
    send(&LocalReply::for_rejection(rejection, &vm.config.realm, request.request_id.as_deref()))
}

fn send(reply: &LocalReply) -> Step {
    if let Err(err) = host::send_local_reply(reply) {
        // Nothing else to answer with; the request stays paused, never forwarded.
        host::log_critical(&format!("cannot send local reply: {err}"));
    }
    Step::Replied
}
