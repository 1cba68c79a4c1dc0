//! Stage 5, forward: the headers the upstream (and Envoy's router, which re-selects
//! the route on them) sees — client class, shadow decision, the verified identity,
//! its claim headers, certificate identity, DPoP key and anomalies — and the token (and
//! its DPoP proof) removed. (A partner's API key never gets this far: it is removed
//! with the managed headers, from every request, by [`super::extract`].)

use crate::behaviour::tracker::Flags;
use crate::behaviour::ANOMALY_HEADER;
use crate::host::{Host, HostError};
use crate::mtls::{self, ClientCertificate};
use crate::policy::{ClientClass, IdentityInfo, Verdict, SHADOW_DECISION_HEADER};

use super::verify::Authenticated;
use super::Vm;

/// What earlier stages noted about the request that changes what is forwarded.
#[derive(Clone, Copy, Debug, Default)]
pub struct Noted {
    /// Anomalies the behaviour stage flagged (forwarded as `x-nhi-anomaly` if asked).
    pub anomalies: Flags,
    /// The token came with the `DPoP` scheme: its proof header is removed with it.
    pub dpop_scheme: bool,
    /// A credential the verifier refused but a lenient reading attributes to one of
    /// our issuers (`policy::names_machine_issuer`).
    pub machine_credential: bool,
}

pub fn forward(
    vm: &Vm,
    host: &mut dyn Host,
    verdict: &Verdict<'_>,
    authenticated: Option<&Authenticated>,
    who: Option<&IdentityInfo<'_>>,
    certificate: Option<&ClientCertificate>,
    noted: Noted,
) -> Result<(), HostError> {
    let config = &vm.config;
    host.set_request_header(&config.routes.client_header, verdict.client_class.as_str())?;
    if let Some(shadow) = verdict.shadow_header() {
        host.set_request_header(SHADOW_DECISION_HEADER, &shadow)?;
    }
    if let Some(who) = who {
        host.set_request_header(&config.forward.identity_header, who.identity)?;
        host.set_request_header(&config.forward.issuer_header, who.issuer)?;
        if let Some((name, value)) = mtls::forwarded_identity(config.mtls.as_ref(), certificate) {
            host.set_request_header(name, value)?;
        }
        if let Some(jkt) = who.jkt {
            host.set_request_header(crate::dpop::JKT_HEADER, jkt)?;
        }
        if config.behaviour.as_ref().is_some_and(|b| b.forward_header) && !noted.anomalies.is_empty() {
            host.set_request_header(ANOMALY_HEADER, &noted.anomalies.joined())?;
        }
    }
    if noted.machine_credential && verdict.client_class == ClientClass::Human {
        // Only shadow mode gets here (enforced, it is `machine_on_human_route`): what the
        // web backend would do with a machine token is not its business, whatever
        // `token.forward` says of verified ones.
        host.remove_request_header(config.token.header.as_bytes())?;
    }
    if let Some(verified) = authenticated.and_then(Authenticated::token) {
        if let Some(rules) = config.issuers.get(verified.issuer).map(|i| &i.claims_to_headers) {
            for (name, value) in crate::claims::headers::headers(rules, &verified.claims) {
                host.set_request_header(name, &value)?;
            }
        }
        if !config.token.forward {
            host.remove_request_header(config.token.header.as_bytes())?;
            if noted.dpop_scheme {
                host.remove_request_header(crate::dpop::PROOF_HEADER.as_bytes())?;
            }
        }
    }
    Ok(())
}
