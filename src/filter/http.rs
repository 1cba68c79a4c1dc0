//! The HTTP context: one per request. Strips forged identity headers, reads the
//! request, and runs the pipeline; a request waiting for keys is parked with the
//! VM and finished by the root context.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use nhi_guard_core::host::capabilities::KeyFetch;
use nhi_guard_core::host::header_map;
use nhi_guard_core::policy::{self, RequestInfo};
use nhi_guard_core::token::source::Extracted;

use super::host;
use super::observe;
use super::on_request::{self, Pending, Purpose};
use super::pipeline::{self, Presented, Request, Step, Waiter};
use super::root::Vm;

pub struct Http {
    vm: Rc<Vm>,
    request: Rc<RefCell<Request>>,
    /// The JWKS callout this request made (keys fetched on request).
    fetch: Option<Pending>,
    /// The decision line was considered (in `on_log`, or `on_done` on hosts such as
    /// APISIX that never call `on_log`).
    logged: bool,
}

impl Http {
    pub fn new(vm: Rc<Vm>, context_id: u32) -> Self {
        Http {
            vm,
            request: Rc::new(RefCell::new(Request { context_id, ..Request::default() })),
            fetch: None,
            logged: false,
        }
    }

    fn start(&mut self) -> Action {
        let vm = Rc::clone(&self.vm);
        let shared_request = Rc::clone(&self.request);
        let mut request = shared_request.borrow_mut();
        // One clock read and one header read per request: host calls are most of
        // what a cached token costs (see "Fast paths" in the README).
        let now_ns = host::now_ns();
        let now = now_ns / 1_000_000;
        request.observed.started_ns = Some(now_ns);
        let headers = match host::request_headers() {
            Ok(headers) => headers,
            Err(err) => {
                pipeline::refuse(&vm, &request, &pipeline::internal(err));
                observe::decided(&vm, &mut request, true);
                return Action::Pause;
            }
        };
        if let Err(err) = pipeline::strip_managed_headers(&vm, &headers) {
            pipeline::refuse(&vm, &request, &pipeline::internal(err));
            observe::decided(&vm, &mut request, true);
            return Action::Pause;
        }
        let config = &vm.config;
        // Path and host as Envoy routed on them: bytes that are not UTF-8 are escaped,
        // never dropped (an empty path would match another route than Envoy's).
        let text = |name: &str| headers.get(name).map(|v| header_map::text_or_escaped(v).into_owned());
        // Only for the log: a request id that is not text is as good as none.
        request.request_id = headers.utf8("x-request-id").map(str::to_owned);
        request.info = RequestInfo {
            path: text(":path").unwrap_or_default(),
            // APISIX gives no `:authority`, only `host`.
            host: text(":authority").or_else(|| text("host")),
            method: text(":method").unwrap_or_default(),
            route_name: if config.routes.read_route_name() {
                host::property_string(&["xds", "route_name"])
            } else {
                None
            },
            source: None,
            // Without an `mtls` block the certificate matters only to a token bound
            // to one (`cnf`): the pipeline reads it then.
            client_certificate: match &config.mtls {
                Some(mtls) => {
                    nhi_guard_core::mtls::client_certificate(Some(mtls), pipeline::connection_property)
                }
                None => None,
            },
        };
        // The source address is read only if the matched route decides on it; the
        // flood guard and the decision log read it when they need it.
        if config.routes.needs_source(&request.info) {
            let source = host::source_address();
            request.info.source = source.as_deref().and_then(policy::parse_source_address);
            request.observed.source = source;
        }
        request.credential = match config.token.extract(headers.get(&config.token.header)) {
            Extracted::Absent => Presented::Nothing,
            Extracted::Token(raw) => Presented::Bearer(raw.to_owned()),
            Extracted::Unreadable { value, undecodable } => {
                Presented::Unreadable { value: value.to_vec(), undecodable }
            }
        };
        let step = pipeline::run(&vm, &mut request, now);
        if vm.plan.key_fetch == KeyFetch::OnRequest {
            return self.fetching_on_request(&vm, &mut request, step, now);
        }
        match step {
            Step::Continue => Action::Continue,
            Step::Replied => Action::Pause,
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
        let context_id = request.context_id;
        match step {
            Step::Wait { issuer, .. } => {
                if let Some(pending) = on_request::start(vm, issuer, context_id, Purpose::Decide, now) {
                    self.fetch = Some(pending);
                    return Action::Pause;
                }
                request.waited = true;
                match pipeline::run(vm, request, now) {
                    Step::Continue => Action::Continue,
                    Step::Replied | Step::Wait { .. } => Action::Pause,
                }
            }
            Step::Continue => {
                let due = request.verified_issuer.filter(|&i| on_request::refresh_due(vm, i, now));
                match due.and_then(|i| on_request::start(vm, i, context_id, Purpose::Refresh, now)) {
                    Some(pending) => {
                        self.fetch = Some(pending);
                        Action::Pause
                    }
                    None => Action::Continue,
                }
            }
            Step::Replied => Action::Pause,
        }
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        if let Some(pending) = self.fetch.take() {
            on_request::abandon(&self.vm, &pending);
        }
        // A request that ends (e.g. the client went away) while parked is forgotten.
        let id = self.request.try_borrow().map(|r| r.context_id).ok();
        if let (Some(id), Ok(mut waiters)) = (id, self.vm.waiters.try_borrow_mut()) {
            waiters.retain(|w| w.context_id != id);
        }
    }
}

impl Http {
    fn log_decision(&mut self) {
        if std::mem::replace(&mut self.logged, true) {
            return;
        }
        if let Ok(mut request) = self.request.try_borrow_mut() {
            observe::logged(&self.vm, &mut request);
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
        on_request::finish(&vm, &pending, body_size, now);
        let go_on = match pending.purpose {
            Purpose::Refresh => true,
            Purpose::Decide => {
                let Ok(mut request) = self.request.try_borrow_mut() else { return };
                request.waited = true;
                pipeline::run(&vm, &mut request, now) == Step::Continue
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
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.start()
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Ok(request) = self.request.try_borrow() {
            for (name, value) in &request.response_headers {
                if let Err(err) = host::set_response_header(name, value) {
                    log::warn!("cannot set response header {name}: {err}");
                }
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.log_decision();
    }
}
