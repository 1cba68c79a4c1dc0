//! The root context: reads the configuration, starts the core's VM, and drives
//! its fetch machine from the tick (on hosts that have one): makes the callouts
//! it asks for, hands it the answers, and wakes the parked requests — waiting for
//! keys, the first revocation feed, or another request's TokenReview. A request
//! woken here that makes its own review does it from this context, so its answer
//! arrives here too, and is handed to that request.

use std::cell::Cell;
use std::rc::Rc;

use log::{error, info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

use nhi_guard_core::config::Config;
use nhi_guard_core::host::capabilities::{KeyFetch, Plan, StateScope};
use nhi_guard_core::host::store::{MemoryStore, Store};
use nhi_guard_core::keys::fetch::{Callout, Done, Next};
use nhi_guard_core::pipeline::{self, record, Awaited, Step, Vm, Waiter};
use nhi_guard_core::verify::liveness::MAX_REVIEW_BYTES;

use super::host::{self, ProxyHost, SharedData};
use super::http::Http;
use super::keys::{answered, dispatch, jitter, random_u64};
use super::tick::{TickPeriod, TICK};

/// A request waiting for the answer to its own callout is given up this long after
/// the callout's timeout (the host answers every callout; this only bounds a host
/// that does not).
const ANSWER_MARGIN_MS: u64 = 2_000;

thread_local! {
    /// The VM's memory size as last added to `nhi_vm_memory_bytes`. One per VM, not
    /// per root context: plugins sharing a VM must not count its memory twice.
    static MEMORY_REPORTED: Cell<u64> = const { Cell::new(0) };
}

/// Adds the change of this VM's memory size since the last report to the gauge
/// (which sums every VM's; see `Family::VmMemory`).
fn report_memory(vm: &Vm) {
    let now = host::memory_bytes();
    let before = MEMORY_REPORTED.with(Cell::get);
    let delta = i64::try_from(now).unwrap_or(i64::MAX).saturating_sub(i64::try_from(before).unwrap_or(0));
    if delta != 0 && record::vm_memory(vm, &mut ProxyHost, delta) {
        MEMORY_REPORTED.with(|reported| reported.set(now));
    }
}

pub struct Root {
    context_id: u32,
    vm: Option<Rc<Vm>>,
    ticking: Rc<TickPeriod>,
    /// This VM's lease-holder id (random, non-zero).
    me: u64,
}

impl Root {
    pub fn new(context_id: u32) -> Self {
        Root { context_id, vm: None, ticking: Rc::default(), me: random_u64() | 1 }
    }

    fn configure(&mut self, config: Config) -> bool {
        let plan = match Plan::choose(config.host, host::probe()) {
            Ok(plan) => plan,
            Err(err) => {
                error!("{err}; refusing to start");
                return false;
            }
        };
        info!("{plan}");
        let store: Box<dyn Store> = match plan.state {
            StateScope::Shared => Box::new(SharedData),
            StateScope::PerVm => Box::new(MemoryStore::default()),
        };
        info!(
            "configured: {} issuer(s): {}",
            config.issuers.len(),
            config.issuers.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
        );
        if let Some(partners) = &config.partners {
            info!(
                "configured: {} partner(s): {}; nonce replay cache {} ({} entries)",
                partners.clients.len(),
                partners.clients.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", "),
                if plan.state == StateScope::Shared { "shared by every worker" } else { "per worker" },
                partners.replay.max_entries()
            );
        }
        let vm = match Vm::start(config, plan, store, &mut ProxyHost, host::now_ms(), self.me) {
            Ok(vm) => vm,
            Err(err) => {
                error!("{err}; refusing to start");
                return false;
            }
        };
        let background = vm.plan.key_fetch == KeyFetch::Background;
        let needs_ticks = background
            && (vm.fetches()
                || vm.config.inventory.is_some()
                || vm.config.issuers.iter().any(|i| i.profile.liveness().is_some()));
        // Counters go to the host on the tick, not one call per increment, and quota
        // leases a VM did not use go back on it — only on the Envoy-grade plan: a host
        // that accepts a tick period and never ticks (some APISIX builds) would
        // never see them.
        let counts_on_tick = background && vm.config.metrics.enabled;
        let leases_quota = background && vm.config.quotas.is_some();
        if needs_ticks || counts_on_tick || leases_quota {
            // The first fetch waits for the first tick: Envoy may build and destroy a
            // VM right after configuring it, and a fetch started here would die with
            // it while still holding the shared lease.
            match host::set_tick_period(TICK) {
                Ok(()) => vm.observer.count_on_tick(counts_on_tick),
                Err(err) if needs_ticks => {
                    error!("the host has no timers ({err}); JWKS cannot be refreshed, refusing to start");
                    return false;
                }
                Err(err) => {
                    warn!("the host has no timers ({err}); each count is a host call, each quota charge too");
                    vm.without_ticks();
                }
            }
        }
        self.vm = Some(Rc::new(vm));
        true
    }

    fn tick(&mut self, now: u64) {
        let Some(vm) = self.vm.clone() else { return };
        if vm.plan.key_fetch == KeyFetch::OnRequest {
            // Requests fetch their own documents; never call out from here (on
            // APISIX a callout outside a request crashes nginx).
            pipeline::on_tick(&vm, &mut ProxyHost, now);
            report_memory(&vm);
            return;
        }
        let tick = vm.fetch_tick(now);
        for document in tick.loaded {
            self.wake(&vm, |w| w.awaiting == Awaited::Document(document), now);
        }
        for callout in tick.callouts {
            self.call(&vm, callout, now);
        }
        self.wake(&vm, |w| now >= w.deadline_ms || pipeline::ready(&vm, w, now), now);
        pipeline::on_tick(&vm, &mut ProxyHost, now);
        report_memory(&vm);
        self.ticking.set_fast(!vm.waiters.borrow().is_empty());
    }

    /// Makes a callout the fetch machine asked for.
    fn call(&self, vm: &Vm, callout: Callout, now: u64) {
        let result = dispatch(&callout);
        if let Some(done) = vm.fetch_dispatched(callout.ticket, result, now, jitter()) {
            self.done(vm, done, now);
        }
    }

    /// A fetch ended: count it, and answer the requests waiting for that document.
    fn done(&self, vm: &Vm, done: Done, now: u64) {
        record::fetched(vm, &mut ProxyHost, done);
        self.wake(vm, |w| w.awaiting == Awaited::Document(done.document), now);
    }

    /// Finishes the parked requests `which` selects: runs their pipeline again
    /// (now with whatever there is) as their own effective context.
    fn wake(&self, vm: &Vm, which: impl Fn(&Waiter) -> bool, now: u64) {
        let ready: Vec<Waiter> = {
            let mut waiters = vm.waiters.borrow_mut();
            let (ready, parked) = waiters.drain(..).partition(|w| which(w));
            *waiters = parked;
            ready
        };
        if ready.is_empty() {
            return;
        }
        for waiter in ready {
            if host::set_effective_context(waiter.context_id).is_err() {
                continue; // the request is gone
            }
            let step = {
                let Ok(mut request) = waiter.request.try_borrow_mut() else { continue };
                if let Awaited::Answer(token) = waiter.awaiting {
                    // Its own callout never came back: it will not be waited for again.
                    let _ = request.liveness.pending.take_if(|p| p.token == token);
                }
                request.waited = true;
                host::for_request(&mut request, |host, request| pipeline::run(vm, host, request, now))
            };
            self.settle(vm, waiter, step, now);
        }
        let _ = host::set_effective_context(self.context_id);
    }

    /// Acts on what a request run from this context decided. A request that made a
    /// callout from here waits for its answer here.
    fn settle(&self, vm: &Vm, waiter: Waiter, step: Step, now: u64) {
        match step {
            Step::Continue => {
                if let Err(err) = host::resume_request() {
                    warn!("cannot resume a request that waited: {err}");
                }
            }
            // A body phase starts only from the request's own headers (a partner's
            // signature, which never waits), so a woken request never asks for one.
            Step::Replied | Step::Body { .. } => {}
            Step::Wait { awaiting, deadline_ms } => {
                vm.waiters.borrow_mut().push(Waiter { awaiting, deadline_ms, ..waiter });
            }
            Step::Called { token } => {
                let timeout = waiter.request.try_borrow().ok().and_then(|r| {
                    let issuer = vm.config.issuers.get(r.liveness.pending.as_ref()?.issuer)?;
                    Some(issuer.profile.liveness()?.timeout_ms)
                });
                let deadline_ms = now.saturating_add(timeout.unwrap_or(0)).saturating_add(ANSWER_MARGIN_MS);
                vm.waiters.borrow_mut().push(Waiter {
                    awaiting: Awaited::Answer(token),
                    deadline_ms,
                    ..waiter
                });
            }
        }
    }

    /// The answer to a callout a woken request made from this context.
    fn answer(&self, vm: &Vm, token: u32, body_size: usize, now: u64) {
        let waiter = {
            let mut waiters = vm.waiters.borrow_mut();
            let Some(at) = waiters.iter().position(|w| w.awaiting == Awaited::Answer(token)) else { return };
            waiters.remove(at)
        };
        if host::set_effective_context(waiter.context_id).is_err() {
            return; // the request is gone
        }
        let response = host::http_call_response(body_size, MAX_REVIEW_BYTES);
        let step = {
            let Ok(mut request) = waiter.request.try_borrow_mut() else { return };
            host::for_request(&mut request, |host, request| {
                pipeline::answered(vm, host, request, token, response, now)
            })
        };
        if let Some(step) = step {
            self.settle(vm, waiter, step, now);
        }
        let _ = host::set_effective_context(self.context_id);
    }
}

impl Context for Root {
    /// The plugin is going away (a configuration change): hand over the counts still
    /// waiting for a tick, and take this VM's memory out of the sum; a root context
    /// still running in the VM adds it again on its tick.
    fn on_done(&mut self) -> bool {
        if let Some(vm) = &self.vm {
            vm.observer.flush(&mut ProxyHost);
        }
        let reported = MEMORY_REPORTED.with(Cell::get);
        if let (Some(vm), true) = (&self.vm, reported > 0) {
            let withdrawn = i64::try_from(reported).unwrap_or(i64::MAX);
            if record::vm_memory(vm, &mut ProxyHost, -withdrawn) {
                MEMORY_REPORTED.with(|r| r.set(0));
            }
        }
        true
    }

    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(vm) = self.vm.clone() else { return };
        let now = host::now_ms();
        match answered(&vm, token_id, body_size, now) {
            Some(Next::Call(callout)) => self.call(&vm, callout, now),
            Some(Next::Done(done)) => self.done(&vm, done, now),
            None => self.answer(&vm, token_id, body_size, now),
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = match host::plugin_configuration() {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                error!("no plugin configuration; refusing to start");
                return false;
            }
            Err(err) => {
                error!("cannot read the plugin configuration ({err}); refusing to start");
                return false;
            }
        };
        match Config::from_json(&bytes) {
            Ok(config) => self.configure(config),
            Err(err) => {
                error!("{err}; refusing to start");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        self.tick(host::now_ms());
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let vm = self.vm.clone()?;
        Some(Box::new(Http::new(vm, context_id, Rc::clone(&self.ticking))))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
