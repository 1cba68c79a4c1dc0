//! The HTTP context: one per request. Strips forged identity headers, verifies
//! the bearer token, and either forwards the request with the identity or answers it.

use std::rc::Rc;

use log::debug;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, Status};

use crate::keyshare::KeyView;
use crate::reason::{LocalReply, Reason, Rejection};
use crate::token::Extracted;
use crate::verify::{self, Verified};

use super::host;
use super::root::Vm;

pub struct Http {
    vm: Rc<Vm>,
}

impl Http {
    pub fn new(vm: Rc<Vm>) -> Self {
        Http { vm }
    }

    /// The decision for this request; `Err` carries the refusal.
    fn authenticate(&self, now_ms: u64) -> Result<Verified, Rejection> {
        let config = &self.vm.config;
        let header = host::request_header(&config.token.header).map_err(internal)?;
        let raw = match config.token.extract(header.as_deref()) {
            Extracted::Absent => return Err(Rejection::new(Reason::MissingToken, "no bearer token")),
            Extracted::Token(raw) => raw,
        };
        let now_secs = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
        let outcome = {
            let keys = self.vm.keys.borrow();
            verify::verify(config, &KeyView { keys: &keys, now_ms }, raw, now_secs)
        };
        if let Err(Rejection { reason: Reason::UnknownKid, issuer: Some(issuer), .. }) = &outcome {
            // Maybe the issuer rotated: ask for an early (throttled) refetch.
            if let Some(local) = self.vm.keys.borrow_mut().get_mut(*issuer) {
                local.kid_miss = true;
            }
        }
        outcome
    }

    /// Client-supplied copies of the headers we set are never forwarded.
    fn strip_identity_headers(&self) -> Result<(), Status> {
        let forward = &self.vm.config.forward;
        host::remove_request_header(&forward.identity_header)?;
        host::remove_request_header(&forward.issuer_header)
    }

    fn forward_identity(&self, verified: &Verified) -> Result<(), Status> {
        let forward = &self.vm.config.forward;
        let issuer = self
            .vm
            .config
            .issuers
            .get(verified.issuer)
            .map(|i| i.name.as_str())
            .unwrap_or_default();
        host::set_request_header(&forward.identity_header, &verified.subject)?;
        host::set_request_header(&forward.issuer_header, issuer)
    }

    fn refuse(&self, rejection: &Rejection) -> Action {
        let request_id = host::request_header("x-request-id").ok().flatten();
        debug!("denied {} ({})", rejection.reason, rejection.detail);
        let reply =
            LocalReply::for_rejection(rejection, &self.vm.config.realm, request_id.as_deref());
        if let Err(status) = host::send_local_reply(&reply) {
            // Nothing else to answer with; pausing still keeps the request from the upstream.
            host::log_critical(&format!("cannot send local reply ({status:?})"));
        }
        Action::Pause
    }
}

fn internal(status: Status) -> Rejection {
    Rejection::new(
        Reason::InternalError,
        format!("host call failed: {status:?}"),
    )
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Err(status) = self.strip_identity_headers() {
            return self.refuse(&internal(status));
        }
        match self.authenticate(host::now_ms()) {
            Ok(verified) => match self.forward_identity(&verified) {
                Ok(()) => Action::Continue,
                Err(status) => self.refuse(&internal(status)),
            },
            Err(rejection) => self.refuse(&rejection),
        }
    }
}
