//! Stage 4, quota: the verified identity's budget, charged exactly across workers
//! (see [`crate::quota`]).

use std::time::Duration;

use crate::policy::IdentityInfo;

use super::{Request, Vm};

type Headers = Vec<(String, String)>;

/// Charges the verified identity's quota. `Ok`: allowed, with the headers for the
/// response (if configured). `Err(Some(headers))`: over quota, with the headers for
/// the 429. `Err(None)`: the quota store failed — the caller refuses (fail closed).
pub fn charge(
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
    let jkt = who.jkt.filter(|_| quotas.per_dpop_key);
    let mut leases = vm.quota_leases.try_borrow_mut().ok();
    let mut held = leases.as_deref_mut().and_then(Option::as_mut);
    // Without a tick (the native module) nothing else gives unused leases back.
    if let Some(held) = held.as_deref_mut() {
        quotas.refund_expired(vm.store.as_ref(), held, now);
    }
    let charged = quotas.check_leased(vm.store.as_ref(), held, policy, issuer, identity, jkt, now);
    drop(leases);
    let outcome = match charged {
        Ok(outcome) => outcome,
        Err(err) => {
            log::warn!("quota store unavailable ({err}); refusing {:?}", request.request_id);
            return Err(None);
        }
    };
    if let Some(anomaly) = outcome.anomaly {
        log::warn!("quota of {issuer}/{identity}: {anomaly:?}");
    }
    request.observed.note_quota(&outcome);
    match (outcome.allowed, quotas.response_headers) {
        (true, true) => Ok(outcome.headers()),
        (true, false) => Ok(Vec::new()),
        (false, _) => Err(Some(outcome.headers())),
    }
}
