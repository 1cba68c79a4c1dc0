//! One request through the core's pipeline, driven by Envoy's HTTP filter hooks.
//!
//! Envoy creates a configuration on its main thread and filters on its workers; the
//! core's `Vm` is single-threaded (one per worker, as one wasm VM per worker), so
//! each worker thread builds its own `Vm` for a configuration on its first request
//! and keeps it in a thread-local table. What must be common to all workers — the
//! quota counters, the token cache, replay tables — lives in the configuration's
//! [`SharedStore`](crate::store::SharedStore), which every worker's `Vm` uses.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::c_void;
use std::rc::Rc;

use nhi_guard_core::host::HostError;
use nhi_guard_core::pipeline::{self, Request, Step, Vm};
use nhi_guard_core::reason::{LocalReply, Reason, Rejection};

use crate::abi;
use crate::config::FilterConfig;
use crate::host::{self, NativeHost};
use crate::store::SharedHandle;

thread_local! {
    /// This worker's VM per configuration id.
    static VMS: RefCell<HashMap<u64, Rc<Vm>>> = RefCell::new(HashMap::new());
    /// Request ids of this worker (the core's "context id"), for its logs.
    static NEXT_REQUEST: Cell<u32> = const { Cell::new(1) };
}

/// This worker's VM for `config`, started on first use. `None` if it cannot start
/// (logged): the request is then refused, never forwarded unchecked.
fn worker_vm(config: &FilterConfig) -> Option<Rc<Vm>> {
    VMS.with(|vms| {
        let mut vms = vms.try_borrow_mut().ok()?;
        if let Some(vm) = vms.get(&config.id) {
            return Some(Rc::clone(vm));
        }
        let me = {
            let mut bytes = [0u8; 8];
            getrandom::getrandom(&mut bytes).ok()?;
            u64::from_le_bytes(bytes) | 1
        };
        let store = Box::new(SharedHandle(std::sync::Arc::clone(&config.store)));
        let now_ms = host::now_ns() / 1_000_000;
        match Vm::start(config.config.clone(), config.plan(), store, &mut NativeHost::detached(), now_ms, me)
        {
            Ok(vm) => {
                let vm = Rc::new(vm);
                vms.insert(config.id, Rc::clone(&vm));
                Some(vm)
            }
            Err(err) => {
                log::error!("nhi-guard cannot start on this worker: {err}");
                None
            }
        }
    })
}

/// Forgets this thread's VM of a configuration Envoy destroyed (the main thread's
/// table; workers' VMs of an old configuration stay until their thread ends).
pub fn forget(config_id: u64) {
    VMS.with(|vms| {
        if let Ok(mut vms) = vms.try_borrow_mut() {
            vms.remove(&config_id);
        }
    });
}

/// A request, from `on_http_filter_new` to `on_http_filter_destroy`.
pub struct Filter {
    vm: Option<Rc<Vm>>,
    request: Request,
    logged: bool,
}

impl Filter {
    pub fn new(config: &FilterConfig) -> Filter {
        let id = NEXT_REQUEST.with(|n| {
            let id = n.get();
            n.set(id.wrapping_add(1).max(1));
            id
        });
        Filter { vm: worker_vm(config), request: Request::new(id), logged: false }
    }

    /// The request headers: decide. Returns the hook's status.
    pub fn request_headers(&mut self, envoy: *mut c_void, end_of_stream: bool) -> u32 {
        let mut host = NativeHost::new(envoy);
        let Some(vm) = self.vm.clone() else {
            // No VM (logged when it failed to start): fail closed.
            let rejection = Rejection::new(Reason::InternalError, "nhi-guard is not running on this worker");
            pipeline::reply::send(&mut host, &LocalReply::for_rejection(&rejection, "nhi-guard", None));
            return abi::STATUS_STOP_ITERATION;
        };
        self.request.has_body = !end_of_stream;
        let mut step = pipeline::start(&vm, &mut host, &mut self.request);
        if let Step::Wait { .. } = step {
            // Keys are only inline here: nothing would wake a parked request, so it is
            // decided at once with the keys there are (as a request that waited).
            self.request.waited = true;
            let now_ms = host::now_ns() / 1_000_000;
            step = pipeline::run(&vm, &mut host, &mut self.request, now_ms);
        }
        match step {
            Step::Continue => {
                host::clear_route_cache(envoy);
                abi::STATUS_CONTINUE
            }
            Step::Replied | Step::Wait { .. } => abi::STATUS_STOP_ITERATION,
            Step::Body { .. } | Step::Called { .. } => {
                // Unreachable with `partners` and liveness refused at load; refuse rather
                // than forward.
                let reply = pipeline::reply::internal(HostError::UNIMPLEMENTED);
                pipeline::reply::refuse(&vm, &mut host, &self.request, &reply);
                abi::STATUS_STOP_ITERATION
            }
        }
    }

    /// The response headers of a forwarded request: the quota headers.
    pub fn response_headers(&mut self, envoy: *mut c_void) -> u32 {
        pipeline::respond(&mut NativeHost::new(envoy), &self.request);
        abi::STATUS_CONTINUE
    }

    /// The end of the stream: the decision line.
    pub fn complete(&mut self, envoy: *mut c_void) {
        if std::mem::replace(&mut self.logged, true) {
            return;
        }
        if let Some(vm) = self.vm.clone() {
            pipeline::finish(&vm, &mut NativeHost::new(envoy), &mut self.request);
        }
    }
}
