//! The identity inventory on the request path: each decided request of a verified
//! identity is noted in the worker's deltas ([`note`]), the deltas are merged into
//! the shared table on the tick ([`flush`]), and the inventory's path answers the
//! table as JSON to the configured sources ([`serve`]). See
//! [`crate::observe::inventory`] for what is exact and when.

use crate::host::{self, Host};
use crate::observe::inventory::{self, AllowEntry, Seen};
use crate::policy::{self, Denial, RouteDenial};
use crate::reason::LocalReply;

use super::{reply, Request, Step, Vm};

/// A request of `issuer`/`identity` was decided: note it. The source address is
/// read (if the request did not already) once per identity per flush window.
/// Returns the identities merged into the table (on a host without a tick, at once),
/// whose last-seen gauges the caller sets.
pub fn note(
    vm: &Vm,
    host: &mut dyn Host,
    request: &mut Request,
    issuer: &str,
    identity: &str,
    now_ms: u64,
) -> Vec<Seen> {
    let Some(config) = &vm.config.inventory else { return Vec::new() };
    let Ok(mut pending) = vm.inventory.try_borrow_mut() else { return Vec::new() };
    let source = match &request.observed.source {
        Some(source) => Some(source.clone()),
        None if !pending.has_source(issuer, identity) => {
            request.observed.source = host::source_address(host);
            request.observed.source.clone()
        }
        None => None,
    };
    // The address without its port: the port of a client connection says nothing.
    let source = source.map(|s| match policy::parse_source_address(&s) {
        Some(ip) => ip.to_string(),
        None => s,
    });
    let returned = request.observed.anomalies.contains(crate::behaviour::Kind::DormantReturned);
    let route = request.observed.route.as_deref();
    pending.note(config.max_tracked, issuer, identity, route, source, returned, now_ms);
    drop(pending);
    if vm.ticks() {
        return Vec::new();
    }
    // No tick on this host: the table is this VM's own memory, merge now.
    flush(vm)
}

/// Merges this worker's deltas into the shared table; returns the identities merged
/// (for their last-seen gauges: [`super::record::last_seen`]).
pub fn flush(vm: &Vm) -> Vec<Seen> {
    let Some(config) = &vm.config.inventory else { return Vec::new() };
    let Ok(mut pending) = vm.inventory.try_borrow_mut() else { return Vec::new() };
    if pending.is_empty() {
        return Vec::new();
    }
    inventory::flush(config, vm.store.as_ref(), &mut pending)
}

/// Answers the inventory's path: the JSON to a configured source (the caller has
/// merged this worker's own deltas), `403 source_not_allowed` to anyone else.
pub fn serve(vm: &Vm, host: &mut dyn Host, request: &mut Request, now_ms: u64) -> Step {
    let Some(config) = &vm.config.inventory else { return Step::Continue };
    let source = host::source_address(host);
    let allowed = policy::cidr::any_contains(
        &config.source_cidrs,
        source.as_deref().and_then(policy::parse_source_address),
    );
    if !allowed {
        let denial = Denial::route(RouteDenial::SourceNotAllowed, None);
        return reply::send(host, &denial.local_reply(None, &vm.config.realm, request.request_id.as_deref()));
    }
    let body = match inventory::snapshot(config, vm.store.as_ref()) {
        Ok(seen) => inventory::render(config, &seen, &allowlist(vm), now_ms),
        Err(err) => {
            let rejection = reply::internal(crate::host::HostError::INTERNAL_FAILURE);
            log::warn!("cannot read the inventory: {err}");
            return reply::refuse(vm, host, request, &rejection);
        }
    };
    let reply = LocalReply {
        status: 200,
        headers: vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("cache-control".to_owned(), "no-store".to_owned()),
        ],
        body,
    };
    reply::send(host, &reply)
}

/// Every allowlist entry of the configuration: routes' `allow` identities and the
/// `kubernetes` issuers' `service_accounts`.
fn allowlist(vm: &Vm) -> Vec<AllowEntry> {
    let routes = vm.config.routes.allowed_identities().into_iter().map(|(route, entry)| AllowEntry {
        r#where: format!("route:{route}"),
        entry,
        issuer: None,
    });
    let accounts = vm.config.issuers.iter().flat_map(|issuer| {
        issuer.profile.allowlisted_accounts().into_iter().map(|entry| AllowEntry {
            r#where: format!("issuer:{}", issuer.name),
            entry,
            issuer: Some(issuer.name.clone()),
        })
    });
    routes.chain(accounts).collect()
}
