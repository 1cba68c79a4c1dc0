//! The HTTP context: one per request. It runs the core's pipeline against the
//! proxy-wasm host. A request the pipeline parks is handed to the VM's waiters and
//! finished by the root context (or, where documents are fetched on request, by
//! this context's own callout); a request that made a TokenReview callout
//! ([`Step::Called`]) is finished here when the answer arrives.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use nhi_guard_core::host::capabilities::KeyFetch;
use nhi_guard_core::keys::fetch::{Callout, Document, Next};
use nhi_guard_core::pipeline::{self, record, Awaited, Request, Step, Vm, Waiter};
use nhi_guard_core::verify::liveness::MAX_REVIEW_BYTES;

use super::host::{self, ProxyHost};
use super::keys;
use super::tick::TickPeriod;

/// What the request does once its fetch callout is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// It had no usable copy: decide it now.
    Decide,
    /// It was allowed with a copy due for refresh: let it go on.
    Refresh,
}

/// A fetch callout this request made (documents fetched on request).
#[derive(Debug, Clone, Copy)]
struct Pending {
    token: u32,
    purpose: Purpose,
}

pub struct Http {
    vm: Rc<Vm>,
    /// The VM's tick period: fast as soon as this request parks.
    ticking: Rc<TickPeriod>,
    request: Rc<RefCell<Request>>,
    /// The fetch callout this request made (documents fetched on request).
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
    pub fn new(vm: Rc<Vm>, context_id: u32, ticking: Rc<TickPeriod>) -> Self {
        Http {
            vm,
            ticking,
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
        #[cfg(feature = "fault-injection")]
        {
            request.fail_call = vm.config.fail_header.as_deref().and_then(named_failure);
        }
        let step = host::for_request(&mut request, |host, request| pipeline::start(&vm, host, request));
        let now = request.observed.started_ns.unwrap_or_default() / 1_000_000;
        self.act(&vm, &mut request, step, now)
    }

    /// What the request does after a step of the pipeline.
    fn act(&mut self, vm: &Vm, request: &mut Request, step: Step, now: u64) -> Action {
        if let Step::Body { .. } = step {
            self.awaiting_body = true;
            return Action::Pause;
        }
        if vm.plan.key_fetch == KeyFetch::OnRequest {
            return self.fetching_on_request(vm, request, step, now);
        }
        match step {
            Step::Continue => Action::Continue,
            // Its callout's answer comes back to this context.
            Step::Replied | Step::Called { .. } | Step::Body { .. } => Action::Pause,
            Step::Wait { awaiting, deadline_ms } => {
                vm.waiters.borrow_mut().push(Waiter {
                    context_id: request.context_id,
                    awaiting,
                    deadline_ms,
                    request: Rc::clone(&self.request),
                });
                self.ticking.set_fast(true);
                Action::Pause
            }
        }
    }

    /// Where documents are fetched on request: a request waiting for one fetches it
    /// (or, with a fetch already in flight, is decided without it); an allowed
    /// request whose keys (or revocation list) are due refreshes them before it
    /// goes on. Nothing here waits for a tick: the host has none.
    fn fetching_on_request(&mut self, vm: &Vm, request: &mut Request, step: Step, now: u64) -> Action {
        match step {
            Step::Wait { awaiting: Awaited::Document(document), .. } => {
                if let Some(pending) = fetch_document(vm, document, Purpose::Decide, now) {
                    self.fetch = Some(pending);
                    return Action::Pause;
                }
                request.waited = true;
                let step = host::for_request(request, |host, request| pipeline::run(vm, host, request, now));
                self.fetching_on_request(vm, request, step, now)
            }
            // The core never parks for another request's review on such a host.
            Step::Wait { .. } => Action::Pause,
            Step::Continue => {
                match vm.due_after(request, now).and_then(|d| fetch_document(vm, d, Purpose::Refresh, now)) {
                    Some(pending) => {
                        self.fetch = Some(pending);
                        Action::Pause
                    }
                    None => Action::Continue,
                }
            }
            Step::Body { .. } => {
                self.awaiting_body = true;
                Action::Pause
            }
            Step::Replied | Step::Called { .. } => Action::Pause,
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
        let step = host::for_request(&mut request, |host, request| {
            pipeline::body(&vm, host, request, buffered, end_of_stream)
        });
        match step {
            // Pause buffers what came (StopIterationAndBuffer) and asks for more.
            Step::Body { .. } | Step::Replied | Step::Wait { .. } | Step::Called { .. } => Action::Pause,
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
            host::for_request(&mut request, |host, request| pipeline::finish(&self.vm, host, request));
        }
    }

    fn resume(what: &str) {
        if let Err(err) = host::resume_request() {
            log::warn!("cannot resume a request after {what}: {err}");
        }
    }
}

/// Test builds only: the host call this request's `fault_injection.fail_header` names,
/// read straight from the host (not through the host that will fail it).
#[cfg(feature = "fault-injection")]
fn named_failure(header: &str) -> Option<String> {
    let headers = host::request_headers().ok()?;
    headers.utf8(header).map(str::to_owned)
}

/// Starts fetching `document` from the current request, unless the fetch machine
/// says a fetch is in flight or backing off.
fn fetch_document(vm: &Vm, document: Document, purpose: Purpose, now: u64) -> Option<Pending> {
    call(vm, vm.fetch_on_request(document, now)?, purpose, now)
}

/// Makes a callout the fetch machine asked for: the request now waits for it
/// (`Some`), or it could not be made and the fetch has ended.
fn call(vm: &Vm, callout: Callout, purpose: Purpose, now: u64) -> Option<Pending> {
    let result = keys::dispatch(&callout);
    let token = result.as_ref().ok().copied();
    if let Some(done) = vm.fetch_dispatched(callout.ticket, result, now, keys::jitter()) {
        record::fetched(vm, &mut ProxyHost, done);
    }
    token.map(|token| Pending { token, purpose })
}

impl Drop for Http {
    fn drop(&mut self) {
        if let Some(pending) = self.fetch.take() {
            self.vm.fetch_abandoned(pending.token);
        }
        let Ok(mut request) = self.request.try_borrow_mut() else { return };
        // A review in flight frees its lease for the next request.
        pipeline::abandoned(&self.vm, &mut request);
        // A request that ends (e.g. the client went away) while parked is forgotten.
        let id = request.context_id;
        if let Ok(mut waiters) = self.vm.waiters.try_borrow_mut() {
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
        let vm = Rc::clone(&self.vm);
        let now = host::now_ms();
        if let Some(pending) = self.fetch.take_if(|p| p.token == token_id) {
            match keys::answered(&vm, token_id, body_size, now) {
                Some(Next::Done(done)) => record::fetched(&vm, &mut ProxyHost, done),
                // A discovery document gave the keys' location: fetch them, still waiting.
                Some(Next::Call(callout)) => self.fetch = call(&vm, callout, pending.purpose, now),
                None => {}
            }
            if self.fetch.is_some() {
                return;
            }
            match pending.purpose {
                Purpose::Refresh => Self::resume("refreshing a document"),
                Purpose::Decide => {
                    let shared_request = Rc::clone(&self.request);
                    let Ok(mut request) = shared_request.try_borrow_mut() else { return };
                    request.waited = true;
                    let step = host::for_request(&mut request, |host, request| {
                        pipeline::run(&vm, host, request, now)
                    });
                    if self.act(&vm, &mut request, step, now) == Action::Continue {
                        Self::resume("fetching a document");
                    }
                }
            }
            return;
        }
        // The answer to this request's TokenReview.
        let response = host::http_call_response(body_size, MAX_REVIEW_BYTES);
        let shared_request = Rc::clone(&self.request);
        let Ok(mut request) = shared_request.try_borrow_mut() else { return };
        let answered = host::for_request(&mut request, |host, request| {
            pipeline::answered(&vm, host, request, token_id, response, now)
        });
        let Some(step) = answered else {
            return;
        };
        if self.act(&vm, &mut request, step, now) == Action::Continue {
            Self::resume("its TokenReview");
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
        if let Ok(mut request) = self.request.try_borrow_mut() {
            host::for_request(&mut request, |host, request| pipeline::respond(host, request));
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.log_decision();
    }
}
