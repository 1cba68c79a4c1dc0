//! Answering a request locally: refusals and the fail-closed `500 internal_error`.

use crate::host::{Host, HostError};
use crate::reason::{LocalReply, Reason, Rejection};

use super::{Request, Step, Vm};

/// A host call the decision depends on failed.
pub fn internal(err: HostError) -> Rejection {
    Rejection::new(Reason::InternalError, format!("host call failed: {err}"))
}

/// Refuses the request with `rejection`'s status and reason.
pub fn refuse(vm: &Vm, host: &mut dyn Host, request: &Request, rejection: &Rejection) -> Step {
    log::debug!("denied {} ({})", rejection.reason, rejection.detail);
    send(host, &LocalReply::for_rejection(rejection, &vm.config.realm, request.request_id.as_deref()))
}

/// Sends `reply`. If the host cannot, there is nothing else to answer with: the
/// request stays paused, never forwarded.
pub fn send(host: &mut dyn Host, reply: &LocalReply) -> Step {
    if let Err(err) = host.send_local_reply(reply) {
        log::error!("cannot send local reply: {err}");
    }
    Step::Replied
}
