//! The HTTP context: one per request. Strips forged identity headers, reads the
//! request, and runs the pipeline; a request waiting for keys is parked with the
//! VM and finished by the root context.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::route::{self, RequestInfo};
use crate::token::Extracted;

use super::host;
use super::observe;
use super::pipeline::{self, Request, Step, Waiter};
use super::root::Vm;

pub struct Http {
    vm: Rc<Vm>,
    request: Rc<RefCell<Request>>,
}

impl Http {
    pub fn new(vm: Rc<Vm>, context_id: u32) -> Self {
        Http { vm, request: Rc::new(RefCell::new(Request { context_id, ..Request::default() })) }
    }

    fn start(&mut self) -> Action {
        let vm = Rc::clone(&self.vm);
        let mut request = self.request.borrow_mut();
        request.observed.started_ns = Some(host::now_ns());
        if let Err(err) = pipeline::strip_managed_headers(&vm) {
            pipeline::refuse(&vm, &request, &pipeline::internal(err));
            observe::decided(&vm, &mut request, true);
            return Action::Pause;
        }
        request.request_id = host::request_header("x-request-id").ok().flatten();
        let source = host::property_string(&["source", "address"]);
        request.info = RequestInfo {
            path: host::request_header(":path").ok().flatten().unwrap_or_default(),
            host: host::request_header(":authority").ok().flatten(),
            method: host::request_header(":method").ok().flatten().unwrap_or_default(),
            route_name: host::property_string(&["xds", "route_name"]),
            source: source.as_deref().and_then(route::parse_source_address),
            client_certificate: crate::mtls::client_certificate(vm.config.mtls.as_ref(), |name| {
                host::property_string(&["connection", name])
            }),
        };
        request.observed.source = source;
        let header = match host::request_header(&vm.config.token.header) {
            Ok(header) => header,
            Err(err) => {
                pipeline::refuse(&vm, &request, &pipeline::internal(err));
                observe::decided(&vm, &mut request, true);
                return Action::Pause;
            }
        };
        request.token = match vm.config.token.extract(header.as_deref()) {
            Extracted::Absent => None,
            Extracted::Token(raw) => Some(raw.to_owned()),
        };
        match pipeline::run(&vm, &mut request, host::now_ms()) {
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
}

impl Drop for Http {
    fn drop(&mut self) {
        // A request that ends (e.g. the client went away) while parked is forgotten.
        let id = self.request.try_borrow().map(|r| r.context_id).ok();
        if let (Some(id), Ok(mut waiters)) = (id, self.vm.waiters.try_borrow_mut()) {
            waiters.retain(|w| w.context_id != id);
        }
    }
}

impl Context for Http {}

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
        if let Ok(request) = self.request.try_borrow() {
            observe::logged(&self.vm, &request);
        }
    }
}
