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
use std::sync::Arc;

use nhi_guard_core::host::HostError;
use nhi_guard_core::keys::fetch::{Callout as FetchCallout, Document, Next};
use nhi_guard_core::pipeline::{self, record, Awaited, Request, Step, Vm};
use nhi_guard_core::reason::{LocalReply, Reason, Rejection};
use nhi_guard_core::verify::liveness::MAX_REVIEW_BYTES;

use crate::abi;
use crate::config::FilterConfig;
use crate::host::{self, next_token, Callout, CalloutAnswer, NativeHost};
use crate::metrics::{self, Families};
use crate::store::SharedHandle;
use crate::wake;

thread_local! {
    /// Fetches this worker's requests have in flight, each with the requests parked
    /// until it ends (a second request that needs the same document waits for the
    /// first one's callout rather than being decided without it).
    static FETCHES: RefCell<Vec<InFlight>> = const { RefCell::new(Vec::new()) };
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
        match Vm::start(
            config.config.clone(),
            config.plan(),
            store,
            &mut NativeHost::detached(&config.families),
            now_ms,
            me,
        ) {
            Ok(vm) => {
                vm.shell_wakes_reviews();
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

/// A fetch in flight on this worker and the requests waiting for it.
struct InFlight {
    config: u64,
    document: Document,
    parked: Vec<Parked>,
}

/// A request paused until a fetch ends: Envoy's filter and ours (boxed by
/// `filter_new`, so its address is stable; it leaves the list when it is dropped).
struct Parked {
    envoy: *mut c_void,
    filter: *mut Filter,
}

fn fetch_started(config: u64, document: Document) {
    FETCHES.with(|fetches| {
        if let Ok(mut fetches) = fetches.try_borrow_mut() {
            fetches.push(InFlight { config, document, parked: Vec::new() });
        }
    });
}

/// Parks `filter` on the fetch of `document` in flight, if there is one and fewer
/// than [`pipeline::MAX_WAITERS`] requests wait for it.
fn park(config: u64, document: Document, parked: Parked) -> bool {
    FETCHES.with(|fetches| {
        let Ok(mut fetches) = fetches.try_borrow_mut() else { return false };
        match fetches.iter_mut().find(|f| f.config == config && f.document == document) {
            Some(fetch) if fetch.parked.len() < pipeline::MAX_WAITERS => {
                fetch.parked.push(parked);
                true
            }
            _ => false,
        }
    })
}

/// The fetch of `document` ended: the requests that waited for it.
fn fetch_ended(config: u64, document: Document) -> Vec<Parked> {
    FETCHES.with(|fetches| {
        let Ok(mut fetches) = fetches.try_borrow_mut() else { return Vec::new() };
        let Some(at) = fetches.iter().position(|f| f.config == config && f.document == document) else {
            return Vec::new();
        };
        fetches.swap_remove(at).parked
    })
}

fn unpark(filter: *mut Filter) {
    FETCHES.with(|fetches| {
        if let Ok(mut fetches) = fetches.try_borrow_mut() {
            for fetch in fetches.iter_mut() {
                fetch.parked.retain(|p| p.filter != filter);
            }
        }
    });
}

/// Decides the requests that waited for a fetch that ended, now that its document is
/// in (or is not: they are then decided without it).
fn wake(parked: Vec<Parked>) {
    for request in parked {
        // SAFETY: a parked filter leaves the list when dropped (see `unpark`), and
        // Envoy destroys filters deferred, never inside another stream's hook: the
        // pointer is live. It is a different filter from the one whose hook runs.
        if let Some(filter) = unsafe { request.filter.as_mut() } {
            filter.resume(request.envoy);
        }
    }
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

/// What a paused request's callout is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// Keys or the revocation list it had no usable copy of: decide it with them.
    Decide(Document),
    /// A copy due for refresh, fetched before the allowed request goes on.
    Refresh(Document),
    /// Its token's TokenReview.
    Review,
}

impl Purpose {
    fn fetched(self) -> Option<Document> {
        match self {
            Purpose::Decide(document) | Purpose::Refresh(document) => Some(document),
            Purpose::Review => None,
        }
    }
}

/// A callout this request waits for.
#[derive(Debug, Clone, Copy)]
struct Pending {
    call: Callout,
    purpose: Purpose,
}

/// Whether the request goes on, or stays paused (refused, or waiting for a callout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Paused,
}

/// A request, from `on_http_filter_new` to `on_http_filter_destroy`.
pub struct Filter {
    vm: Option<Rc<Vm>>,
    families: Arc<Families>,
    config: u64,
    request: Request,
    logged: bool,
    pending: Option<Pending>,
    /// Registered to be woken when the review it waits for ends (on any worker).
    parking: Option<wake::Parking>,
    /// Paused on another request's review (until `review_ended`).
    parked_on_review: bool,
    /// The pipeline asked for the body (a partner's signature covers it).
    awaiting_body: bool,
}

impl Filter {
    pub fn new(config: &FilterConfig) -> Filter {
        let id = NEXT_REQUEST.with(|n| {
            let id = n.get();
            n.set(id.wrapping_add(1).max(1));
            id
        });
        Filter {
            vm: worker_vm(config),
            families: Arc::clone(&config.families),
            config: config.id,
            request: Request::new(id),
            logged: false,
            pending: None,
            parking: None,
            parked_on_review: false,
            awaiting_body: false,
        }
    }

    /// The request headers: decide. Returns the hook's status.
    pub fn request_headers(&mut self, envoy: *mut c_void, end_of_stream: bool) -> u32 {
        let mut host = NativeHost::new(envoy, &self.families);
        let Some(vm) = self.vm.clone() else {
            // No VM (logged when it failed to start): fail closed.
            let rejection = Rejection::new(Reason::InternalError, "nhi-guard is not running on this worker");
            pipeline::reply::send(&mut host, &LocalReply::for_rejection(&rejection, "nhi-guard", None));
            return abi::STATUS_STOP_ITERATION;
        };
        self.request.has_body = !end_of_stream;
        let step = pipeline::start(&vm, &mut host, &mut self.request);
        let now_ms = self.request.observed.started_ns.unwrap_or_else(host::now_ns) / 1_000_000;
        match self.act(&vm, &mut host, step, now_ms) {
            Flow::Continue => {
                host::clear_route_cache(envoy);
                abi::STATUS_CONTINUE
            }
            Flow::Paused => abi::STATUS_STOP_ITERATION,
        }
    }

    /// What the request does after a step of the pipeline. Documents are fetched on
    /// request here (each worker's VM fetches its own, as on hosts without a
    /// background tick): a request waiting for keys or the revocation list fetches
    /// them, or, with a fetch already in flight or backing off, is decided without;
    /// an allowed request whose copy is due refreshes it before it goes on.
    fn act(&mut self, vm: &Vm, host: &mut NativeHost, mut step: Step, now_ms: u64) -> Flow {
        loop {
            match step {
                Step::Continue => {
                    let due = vm.due_after(&self.request, now_ms);
                    return match due.and_then(|d| self.fetch(vm, host, Purpose::Refresh(d), now_ms)) {
                        Some(()) => Flow::Paused,
                        None => Flow::Continue,
                    };
                }
                Step::Replied => return Flow::Paused,
                Step::Called { token } => {
                    // This request's TokenReview: its answer comes to `callout_done`.
                    match host.calls.iter().find(|c| c.token == token) {
                        Some(call) => {
                            self.pending = Some(Pending { call: *call, purpose: Purpose::Review });
                            return Flow::Paused;
                        }
                        None => {
                            self.refuse(vm, host, HostError::INTERNAL_FAILURE);
                            return Flow::Paused;
                        }
                    }
                }
                Step::Wait { awaiting: Awaited::Review(key), .. } => {
                    // Another request (on any worker) is reviewing this token: wait for
                    // its answer, woken by `wake` (the core waits at most once).
                    if let Some(parking) = wake::park(self.config, key, host.filter_ptr()) {
                        self.parking = Some(parking);
                        self.parked_on_review = true;
                        return Flow::Paused;
                    }
                    step = pipeline::run(vm, host, &mut self.request, now_ms);
                }
                Step::Wait { awaiting: Awaited::Document(document), .. } if !self.request.waited => {
                    if self.fetch(vm, host, Purpose::Decide(document), now_ms).is_some() {
                        return Flow::Paused;
                    }
                    let me = Parked { envoy: host.filter_ptr(), filter: std::ptr::from_mut(self) };
                    if park(self.config, document, me) {
                        return Flow::Paused;
                    }
                    // Backing off after a failure: decided without the document.
                    self.request.waited = true;
                    step = pipeline::run(vm, host, &mut self.request, now_ms);
                }
                Step::Wait { .. } if !self.request.waited => {
                    // The core never parks for another request's review where documents
                    // are fetched on request; decide it as a request that waited.
                    self.request.waited = true;
                    step = pipeline::run(vm, host, &mut self.request, now_ms);
                }
                Step::Body { .. } => {
                    // A signature covers the body: Envoy buffers it for the body hooks.
                    self.awaiting_body = true;
                    return Flow::Paused;
                }
                Step::Wait { .. } => {
                    // A second wait: refuse rather than forward.
                    self.refuse(vm, host, HostError::UNIMPLEMENTED);
                    return Flow::Paused;
                }
            }
        }
    }

    /// Starts fetching `document` from this request, unless the fetch machine says a
    /// fetch is in flight or backing off. `Some` when the request now waits for it.
    fn fetch(&mut self, vm: &Vm, host: &mut NativeHost, purpose: Purpose, now_ms: u64) -> Option<()> {
        let document = purpose.fetched()?;
        let callout = vm.fetch_on_request(document, now_ms)?;
        self.call(vm, host, callout, purpose, now_ms)?;
        fetch_started(self.config, document);
        Some(())
    }

    /// Makes a callout the fetch machine asked for. `Some` when the request now waits
    /// for it; `None` when it could not be made (the fetch has ended, and is recorded).
    fn call(
        &mut self,
        vm: &Vm,
        host: &mut NativeHost,
        callout: FetchCallout,
        purpose: Purpose,
        now_ms: u64,
    ) -> Option<()> {
        let headers = [
            (":method", "GET"),
            (":path", callout.path.as_str()),
            (":authority", callout.authority.as_str()),
            (":scheme", "http"),
            ("accept", "application/json"),
            ("user-agent", "nhi-guard"),
        ];
        let token = next_token();
        let made = host
            .callout(&callout.cluster, &headers, &[], callout.timeout_ms)
            .map_err(|err| format!("cluster {:?}: {err}", callout.cluster));
        let envoy_id = made.as_ref().ok().copied();
        if let Some(done) = vm.fetch_dispatched(callout.ticket, made.map(|_| token), now_ms, jitter()) {
            record::fetched(vm, host, done);
        }
        let envoy_id = envoy_id?;
        self.pending = Some(Pending { call: Callout { envoy_id, token }, purpose });
        Some(())
    }

    /// The review this request waited for ended (Envoy ran the event `wake` posted).
    pub fn review_ended(&mut self, envoy: *mut c_void) {
        if std::mem::replace(&mut self.parked_on_review, false) {
            self.resume(envoy);
        }
    }

    /// A request parked on another request's fetch, which ended: decide it.
    fn resume(&mut self, envoy: *mut c_void) {
        let Some(vm) = self.vm.clone() else { return };
        let mut host = NativeHost::deferring(envoy, &self.families);
        let now_ms = host::now_ns() / 1_000_000;
        self.request.waited = true;
        let step = pipeline::run(&vm, &mut host, &mut self.request, now_ms);
        if self.act(&vm, &mut host, step, now_ms) == Flow::Continue {
            host::clear_route_cache(envoy);
            host::continue_decoding(envoy);
        }
        // Last: Envoy may finish the stream (and call this filter again) inside it.
        host.send_deferred();
    }

    fn refuse(&self, vm: &Vm, host: &mut NativeHost, err: HostError) {
        let reply = pipeline::reply::internal(err);
        pipeline::reply::refuse(vm, host, &self.request, &reply);
    }

    /// The answer to callout `envoy_id` of this request (Envoy's callout-done hook).
    ///
    /// # Safety
    /// As [`CalloutAnswer::response`].
    pub unsafe fn callout_done(&mut self, envoy: *mut c_void, envoy_id: u64, answer: &CalloutAnswer) {
        let Some(vm) = self.vm.clone() else { return };
        let Some(pending) = self.pending.take_if(|p| p.call.envoy_id == envoy_id) else { return };
        let mut host = NativeHost::deferring(envoy, &self.families);
        let now_ms = host::now_ns() / 1_000_000;
        let token = pending.call.token;
        let max_body = match pending.purpose {
            Purpose::Review => MAX_REVIEW_BYTES,
            Purpose::Decide(_) | Purpose::Refresh(_) => vm.fetch_max_body(token),
        };
        // SAFETY: the caller vouches for Envoy's buffers.
        let response = unsafe { answer.response(max_body) };
        let flow = match pending.purpose {
            Purpose::Refresh(document) | Purpose::Decide(document) => {
                let fetching_on = match vm.fetch_answered(token, response, now_ms, jitter()) {
                    Some(Next::Done(done)) => {
                        record::fetched(&vm, &mut host, done);
                        false
                    }
                    // A discovery document gave the keys' location: this request fetches
                    // them too, and the requests parked on the document go on waiting.
                    Some(Next::Call(next)) => {
                        self.call(&vm, &mut host, next, pending.purpose, now_ms).is_some()
                    }
                    None => false,
                };
                if fetching_on {
                    return;
                }
                wake(fetch_ended(self.config, document));
                if let Purpose::Refresh(_) = pending.purpose {
                    Flow::Continue
                } else {
                    self.request.waited = true;
                    let step = pipeline::run(&vm, &mut host, &mut self.request, now_ms);
                    self.act(&vm, &mut host, step, now_ms)
                }
            }
            Purpose::Review => {
                let key = self.request.liveness.pending.as_ref().map(|p| p.key);
                let step = pipeline::answered(&vm, &mut host, &mut self.request, token, response, now_ms);
                // The answer is recorded for everyone: those waiting for it run again.
                if let Some(key) = key {
                    wake::review_ended(self.config, &key);
                }
                match step {
                    Some(step) => self.act(&vm, &mut host, step, now_ms),
                    None => Flow::Paused,
                }
            }
        };
        if flow == Flow::Continue {
            host::clear_route_cache(envoy);
            host::continue_decoding(envoy);
        }
        // Last: Envoy may finish the stream (and call this filter again) inside it.
        host.send_deferred();
    }

    /// More of the body the pipeline waits for (`end_of_stream` once it is whole;
    /// trailers end it too). Returns the body (or trailers) hook's status.
    pub fn request_body(&mut self, envoy: *mut c_void, end_of_stream: bool) -> u32 {
        if !self.awaiting_body {
            return abi::STATUS_CONTINUE;
        }
        let Some(vm) = self.vm.clone() else { return abi::BODY_STOP_NO_BUFFER };
        let mut host = NativeHost::new(envoy, &self.families);
        let buffered = host::request_body_len(envoy);
        match pipeline::body(&vm, &mut host, &mut self.request, buffered, end_of_stream) {
            Step::Continue => {
                self.awaiting_body = false;
                host::clear_route_cache(envoy);
                abi::STATUS_CONTINUE
            }
            Step::Body { .. } => abi::BODY_STOP_AND_BUFFER,
            // Refused (the reply is sent), or a step a body never leads to.
            Step::Replied | Step::Wait { .. } | Step::Called { .. } => abi::BODY_STOP_NO_BUFFER,
        }
    }

    /// Trailers end the body.
    pub fn request_trailers(&mut self, envoy: *mut c_void) -> u32 {
        if !self.awaiting_body {
            return abi::STATUS_CONTINUE;
        }
        match self.request_body(envoy, true) {
            abi::STATUS_CONTINUE => abi::STATUS_CONTINUE,
            _ => abi::STATUS_STOP_ITERATION,
        }
    }

    /// The response headers of a forwarded request: the quota headers.
    pub fn response_headers(&mut self, envoy: *mut c_void) -> u32 {
        pipeline::respond(&mut NativeHost::new(envoy, &self.families), &self.request);
        abi::STATUS_CONTINUE
    }

    /// The end of the stream: the decision line.
    pub fn complete(&mut self, envoy: *mut c_void) {
        if std::mem::replace(&mut self.logged, true) {
            return;
        }
        if let Some(vm) = self.vm.clone() {
            pipeline::finish(&vm, &mut NativeHost::new(envoy, &self.families), &mut self.request);
        }
        metrics::show_gauges(envoy);
    }
}

impl Drop for Filter {
    /// A request that ends while its callout is in flight (the client went away)
    /// frees the fetch (or the review's lease) for the next request.
    fn drop(&mut self) {
        unpark(std::ptr::from_mut(self));
        let Some(vm) = self.vm.clone() else { return };
        if let Some(pending) = self.pending.take() {
            if let Some(document) = pending.purpose.fetched() {
                vm.fetch_abandoned(pending.call.token);
                // Those parked on this fetch are decided without it.
                wake(fetch_ended(self.config, document));
            }
        }
        let reviewing = self.request.liveness.pending.as_ref().map(|p| p.key);
        pipeline::abandoned(&vm, &mut self.request);
        // Its review will not be answered: those waiting for it decide without.
        if let Some(key) = reviewing {
            wake::review_ended(self.config, &key);
        }
    }
}

/// A value in `0..=1` to spread fetch retries; not security-relevant.
fn jitter() -> f64 {
    let mut bytes = [0u8; 8];
    let random = getrandom::getrandom(&mut bytes).map_or(0, |()| u64::from_le_bytes(bytes));
    (random % 1_000) as f64 / 999.0
}
