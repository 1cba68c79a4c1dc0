//! The HTTP context: one per request. It runs the core's pipeline against the
//! proxy-wasm host; a request waiting for keys is parked with the VM and finished
//! by the root context (or, where keys are fetched on request, by this context's
//! own callout).

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use nhi_guard_core::host::capabilities::KeyFetch;
use nhi_guard_core::keys::fetch::{self, Next};
use nhi_guard_core::pipeline::{self, record, Request, Step, Vm, Waiter};

use super::host::{self, ProxyHost};
use super::keys;

/// What the request does once its key callout is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// It had no usable keys: decide it now.
    Decide,
    /// It was allowed with keys due for refresh: let it go on.
    Refresh,
}

/// A key callout this request made (keys fetched on request).
#[derive(Debug, Clone, Copy)]
struct Pending {
    token: u32,
    purpose: Purpose,
}

pub struct Http {
    vm: Rc<Vm>,
    request: Rc<RefCell<Request>>,
    /// The JWKS callout this request made (keys fetched on request).
    fetch: Option<Pending>,
    /// The decision line was considered (in `on_log`, or `on_done` on hosts such as
    /// APISIX that never call `on_log`).
    logged: bool,
    /// The pipeline asked for the body (a signature covers it): buffer it and hand
    /// its length over until the end of the stream.
    awaiting_body: bool,
    /// Bytes of body buffered so far.
    buffered: usize,
}

impl Http {
    pub fn new(vm: Rc<Vm>, context_id: u32) -> Self {
        Http {
            vm,
            request: Rc::new(RefCell::new(Request::new(context_id))),
            fetch: None,
            logged: false,
            awaiting_body: false,
            buffered: 0,
        }
    }

    fn start(&mut self, end_of_stream: bool) -> Action {
        let vm = Rc::clone(&self.vm);
        let shared_request = Rc::clone(&self.request);
        let Ok(mut request) = shared_request.try_borrow_mut() else { return Action::Pause };
        request.has_body = !end_of_stream;
        let step = pipeline::start(&vm, &mut ProxyHost, &mut request);
        if let Step::Body { .. } = step {
            self.awaiting_body = true;
            return Action::Pause;
        }
        if vm.plan.key_fetch == KeyFetch::OnRequest {
            let now = request.observed.started_ns.unwrap_or_default() / 1_000_000;
            return self.fetching_on_request(&vm, &mut request, step, now);
        }
        match step {
            Step::Continue => Action::Continue,
            Step::Replied => Action::Pause,
            Step::Body { .. } => Action::Pause,
            Step::Wait { issuer, deadline_ms } => {
                vm.waiters.borrow_mut().push(Waiter {
                    context_id: request.context_id,
                    issuer,
                    deadline_ms,
                    request: Rc::clone(&self.request),
                });
                Action::Pause
            }
        }
    }

    /// Where keys are fetched on request: a request waiting for keys fetches them
    /// (or, with a fetch already in flight, is decided without them); an allowed
    /// request whose keys are due refreshes them before it goes on.
    fn fetching_on_request(&mut self, vm: &Vm, request: &mut Request, step: Step, now: u64) -> Action {
        match step {
            Step::Wait { issuer, .. } => {
                if let Some(pending) = fetch_keys(vm, issuer, Purpose::Decide, now) {
                    self.fetch = Some(pending);
                    return Action::Pause;
                }
                request.waited = true;
                match pipeline::run(vm, &mut ProxyHost, request, now) {
                    Step::Continue => Action::Continue,
                    Step::Replied | Step::Wait { .. } | Step::Body { .. } => Action::Pause,
                }
            }
            Step::Continue => {
                let due = request
                    .verified_issuer
                    .filter(|&i| vm.keys.try_borrow().is_ok_and(|keys| fetch::refresh_due(&keys, i, now)));
                match due.and_then(|i| fetch_keys(vm, i, Purpose::Refresh, now)) {
                    Some(pending) => {
                        self.fetch = Some(pending);
                        Action::Pause
                    }
                    None => Action::Continue,
                }
            }
            Step::Replied | Step::Body { .. } => Action::Pause,
        }
    }

    /// More of the body the pipeline waits for (`end_of_stream` once it is whole).
    fn body(&mut self, buffered: usize, end_of_stream: bool) -> Action {
        if !self.awaiting_body {
            return Action::Continue;
        }
        self.buffered = buffered;
        let vm = Rc::clone(&self.vm);
        let Ok(mut request) = self.request.try_borrow_mut() else { return Action::Pause };
        match pipeline::body(&vm, &mut ProxyHost, &mut request, buffered, end_of_stream) {
            // Pause buffers what came (StopIterationAndBuffer) and asks for more.
            Step::Body { .. } | Step::Replied | Step::Wait { .. } => Action::Pause,
            Step::Continue => {
                self.awaiting_body = false;
                Action::Continue
            }
        }
    }

    fn log_decision(&mut self) {
        if std::mem::replace(&mut self.logged, true) {
            return;
        }
        if let Ok(mut request) = self.request.try_borrow_mut() {
            pipeline::finish(&self.vm, &mut ProxyHost, &mut request);
        }
    }
}

/// Starts fetching `issuer`'s keys from the current request, unless the fetch
/// machine says a fetch is in flight or backing off.
fn fetch_keys(vm: &Vm, issuer: usize, purpose: Purpose, now: u64) -> Option<Pending> {
    let callout = vm.fetcher.try_borrow_mut().ok()?.on_request(&vm.config.issuers, issuer, now)?;
    let result = keys::dispatch(&callout);
    let token = result.as_ref().ok().copied();
    let done = {
        let keys = vm.keys.try_borrow().ok()?;
        vm.fetcher.try_borrow_mut().ok()?.dispatched(
            &vm.config.issuers,
            callout.ticket,
            result,
            &keys,
            vm.store.as_ref(),
            now,
            keys::jitter(),
        )
    };
    if let Some(done) = done {
        record::jwks_fetched(vm, &mut ProxyHost, done.issuer, done.success);
    }
    token.map(|token| Pending { token, purpose })
}

impl Drop for Http {
    fn drop(&mut self) {
        if let Some(pending) = self.fetch.take() {
            if let Ok(mut fetcher) = self.vm.fetcher.try_borrow_mut() {
                fetcher.abandoned(pending.token);
            }
        }
        // A request that ends (e.g. the client went away) while parked is forgotten.
        let id = self.request.try_borrow().map(|r| r.context_id).ok();
        if let (Some(id), Ok(mut waiters)) = (id, self.vm.waiters.try_borrow_mut()) {
            waiters.retain(|w| w.context_id != id);
        }
    }
}

impl Context for Http {
    /// The end of the stream. Envoy calls `on_log` before this; APISIX never does,
    /// so the decision line is written here if it was not yet.
    fn on_done(&mut self) -> bool {
        self.log_decision();
        true
    }

    fn on_http_call_response(&mut self, token_id: u32, _headers: usize, body_size: usize, _trailers: usize) {
        let Some(pending) = self.fetch.take_if(|p| p.token == token_id) else { return };
        let vm = Rc::clone(&self.vm);
        let now = host::now_ms();
        if let Some(Next::Done(done)) = keys::answered(&vm, token_id, body_size, now) {
            record::jwks_fetched(&vm, &mut ProxyHost, done.issuer, done.success);
        }
        let go_on = match pending.purpose {
            Purpose::Refresh => true,
            Purpose::Decide => {
                let Ok(mut request) = self.request.try_borrow_mut() else { return };
                request.waited = true;
                pipeline::run(&vm, &mut ProxyHost, &mut request, now) == Step::Continue
            }
        };
        if go_on {
            if let Err(err) = host::resume_request() {
                log::warn!("cannot resume a request after fetching keys: {err}");
            }
        }
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.start(end_of_stream)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.body(body_size, end_of_stream)
    }

    /// Trailers end the body.
    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        self.body(self.buffered, true)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Ok(request) = self.request.try_borrow() {
            pipeline::respond(&mut ProxyHost, &request);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.log_decision();
    }
}
