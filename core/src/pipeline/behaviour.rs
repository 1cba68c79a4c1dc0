//! Stage 3b, behaviour: an allowed request of a verified identity, held against
//! that identity's learned baseline (see [`crate::behaviour`]). Reads the host only
//! for the source address, and only when `new_source` is watched; the baseline
//! itself is merged into shared data at most once per `merge_seconds` per identity.

use crate::behaviour::tracker::Seen;
use crate::host::{self, Host};
use crate::policy::{self, Denial, DenyReason, IdentityInfo};

use super::{Request, Vm};

/// Counts the request and flags what is anomalous about it; `Some` refusal when an
/// enforced kind was flagged.
pub fn observe(
    vm: &Vm,
    host: &mut dyn Host,
    request: &mut Request,
    who: &IdentityInfo<'_>,
    route: Option<&str>,
    now_ms: u64,
) -> Option<Denial> {
    let behaviour = vm.config.behaviour.as_ref().filter(|b| b.detect)?;
    if behaviour.watch_sources && request.info.source.is_none() {
        if request.observed.source.is_none() {
            request.observed.source = host::source_address(host);
        }
        request.info.source = request.observed.source.as_deref().and_then(policy::parse_source_address);
    }
    let route_index = route.and_then(|name| vm.config.routes.routes().iter().position(|r| r.name == name));
    let seen = Seen {
        issuer: who.issuer,
        identity: who.identity,
        route: route_index,
        source: request.info.source,
        now_ms,
    };
    let mut tracker = vm.tracker.try_borrow_mut().ok()?;
    let observation = tracker.as_mut()?.observe(behaviour, vm.store.as_ref(), &seen);
    request.observed.anomalies = observation.flagged;
    request.observed.behaviour_untracked = observation.untracked;
    observation.refuse.map(|(kind, status)| {
        let denial = kind.denial();
        Denial { reason: DenyReason::Route(denial), status, detail: denial.detail().to_owned() }
    })
}
