//! The root context: reads the configuration, starts the core's VM, and drives
//! its key-fetch machine from the tick (on hosts that have one): makes the callouts
//! it asks for, hands it the answers, and wakes the requests waiting for keys.

use std::rc::Rc;
use std::time::Duration;

use log::{error, info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

use nhi_guard_core::config::Config;
use nhi_guard_core::host::capabilities::{KeyFetch, Plan, StateScope};
use nhi_guard_core::host::store::{MemoryStore, Store};
use nhi_guard_core::keys::fetch::{Callout, Done, Next};
use nhi_guard_core::pipeline::{self, record, Step, Vm, Waiter};

use super::host::{self, ProxyHost, SharedData};
use super::http::Http;
use super::keys::{answered, dispatch, jitter, random_u64};

/// How often each worker looks at the shared keys and whether a fetch is due.
const TICK: Duration = Duration::from_millis(500);
/// While requests wait for keys, tick this often to answer them promptly.
const FAST_TICK: Duration = Duration::from_millis(50);

pub struct Root {
    context_id: u32,
    vm: Option<Rc<Vm>>,
    fast_ticking: bool,
    /// This VM's lease-holder id (random, non-zero).
    me: u64,
}

impl Root {
    pub fn new(context_id: u32) -> Self {
        Root { context_id, vm: None, fast_ticking: false, me: random_u64() | 1 }
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
        let needs_fetching = vm.plan.key_fetch == KeyFetch::Background && vm.fetcher.borrow().fetches();
        self.vm = Some(Rc::new(vm));
        if needs_fetching {
            // The first fetch waits for the first tick: Envoy may build and destroy a
            // VM right after configuring it, and a fetch started here would die with
            // it while still holding the shared lease.
            if let Err(err) = host::set_tick_period(TICK) {
                error!("the host has no timers ({err}); JWKS cannot be refreshed, refusing to start");
                return false;
            }
        }
        true
    }

    fn tick(&mut self, now: u64) {
        let Some(vm) = self.vm.clone() else { return };
        if vm.plan.key_fetch == KeyFetch::OnRequest {
            // Requests fetch their own keys; never call out from here (on APISIX a
            // callout outside a request crashes nginx).
            record::jwks_gauges(&vm, &mut ProxyHost, now);
            return;
        }
        let tick = {
            let Ok(mut keys) = vm.keys.try_borrow_mut() else { return };
            vm.fetcher.borrow_mut().tick(&vm.config.issuers, &mut keys, vm.store.as_ref(), now)
        };
        for issuer in tick.loaded {
            self.wake(&vm, |w| w.issuer == issuer, now);
        }
        for callout in tick.callouts {
            self.call(&vm, callout, now);
        }
        self.wake(&vm, |w| now >= w.deadline_ms, now);
        record::jwks_gauges(&vm, &mut ProxyHost, now);
        let fast = !vm.waiters.borrow().is_empty();
        if fast != self.fast_ticking && host::set_tick_period(if fast { FAST_TICK } else { TICK }).is_ok() {
            self.fast_ticking = fast;
        }
    }

    /// Makes a callout the fetch machine asked for.
    fn call(&self, vm: &Vm, callout: Callout, now: u64) {
        let result = dispatch(&callout);
        let done = {
            let Ok(keys) = vm.keys.try_borrow() else { return };
            vm.fetcher.borrow_mut().dispatched(
                &vm.config.issuers,
                callout.ticket,
                result,
                &keys,
                vm.store.as_ref(),
                now,
                jitter(),
            )
        };
        if let Some(done) = done {
            self.done(vm, done, now);
        }
    }

    /// A fetch ended: count it, and answer the requests waiting on that issuer.
    fn done(&self, vm: &Vm, done: Done, now: u64) {
        record::jwks_fetched(vm, &mut ProxyHost, done.issuer, done.success);
        self.wake(vm, |w| w.issuer == done.issuer, now);
    }

    /// Finishes the parked requests `which` selects: runs their pipeline again
    /// (now with whatever keys there are) as their own effective context.
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
            let Ok(mut request) = waiter.request.try_borrow_mut() else { continue };
            request.waited = true;
            if pipeline::run(vm, &mut ProxyHost, &mut request, now) == Step::Continue {
                if let Err(err) = host::resume_request() {
                    warn!("cannot resume a request that waited for keys: {err}");
                }
            }
        }
        let _ = host::set_effective_context(self.context_id);
    }
}

impl Context for Root {
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
            None => {}
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
        Some(Box::new(Http::new(vm, context_id)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
