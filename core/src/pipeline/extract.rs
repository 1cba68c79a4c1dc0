//! Stage 1, extract: what the decision needs, taken out of the request in one
//! header-map read, and every client copy of a header the filter manages removed.
//!
//! Header values are bytes (see [`crate::host::header_map`]): a managed header is
//! removed by name whatever its value, path and host that are not UTF-8 are escaped
//! rather than dropped, and a credential header that holds no readable bearer token
//! is kept as such ([`Presented::Unreadable`]), never read as "no credential".

use crate::host::header_map::{self, HeaderMap};
use crate::host::{self, Host, HostError};
use crate::mtls;
use crate::policy::{self, RequestInfo};
use crate::token::source::Extracted;

use super::reply;
use super::{record, Request, Step, Vm};

/// The credential header as the request presented it.
#[derive(Debug, Default)]
pub enum Presented {
    #[default]
    Nothing,
    /// A bearer token.
    Bearer(String),
    /// A token presented with the `DPoP` scheme (read only when DPoP is in use).
    Dpop(String),
    /// A credential header holding no bearer token nhi-guard can read: another
    /// scheme, or (`undecodable`) the bearer scheme with bytes that are not UTF-8.
    /// Read only to decide whose credential it is (`policy::names_machine_issuer`).
    Unreadable { value: Vec<u8>, undecodable: bool },
    /// No bearer token, but `Signature-Input`/`Signature` (RFC 9421) and partners
    /// configured: the request's headers, from which the signature base is built.
    Signature(Box<HeaderMap>),
    /// No bearer token or signature, but the partners' API key header. Never logged.
    ApiKey(Vec<u8>),
}

impl Presented {
    /// The token, whichever scheme carried it.
    pub fn token(&self) -> Option<&str> {
        match self {
            Presented::Bearer(raw) | Presented::Dpop(raw) => Some(raw),
            _ => None,
        }
    }

    /// The token credential's bytes, whatever it is (partner credentials have
    /// their own attribution).
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Presented::Bearer(raw) | Presented::Dpop(raw) => Some(raw.as_bytes()),
            Presented::Unreadable { value, .. } => Some(value),
            Presented::Nothing | Presented::Signature(_) | Presented::ApiKey(_) => None,
        }
    }

    /// A partner's credential: a signature or an API key.
    pub fn is_partner(&self) -> bool {
        matches!(self, Presented::Signature(_) | Presented::ApiKey(_))
    }
}

/// The `DPoP` request header as it came (judged by the DPoP stage).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ProofValue {
    #[default]
    Absent,
    One(Vec<u8>),
    Many,
}

/// Fills `request` from the host. `Err(step)`: the request was answered (a host
/// call failed: the filter cannot tell what it is looking at).
pub fn extract(vm: &Vm, host: &mut dyn Host, request: &mut Request) -> Result<(), Step> {
    let headers = host
        .request_headers()
        .and_then(|headers| strip_managed_headers(vm, host, &headers).map(|()| headers))
        .map_err(|err| {
            let step = reply::refuse(vm, host, request, &reply::internal(err));
            // No identity yet: nothing for the inventory.
            record::decided(vm, host, request, true);
            step
        })?;
    #[cfg(feature = "fault-injection")]
    if let Some(header) = &vm.config.panic_header {
        if headers.contains(header) {
            #[allow(clippy::panic)]
            {
                panic!("fault injection: simulated VM crash");
            }
        }
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
            host::property_text(host, &["xds", "route_name"])
        } else {
            None
        },
        source: None,
        // Without an `mtls` block the certificate matters only to a token bound
        // to one (`cnf`): the verify stage reads it then.
        client_certificate: match &config.mtls {
            Some(mtls) => mtls::client_certificate(Some(mtls), |name| connection_property(host, name)),
            None => None,
        },
    };
    // The source address is read only if the matched route decides on it; the
    // flood guard and the decision log read it when they need it.
    if config.routes.needs_source(&request.info) {
        let source = host::source_address(host);
        request.info.source = source.as_deref().and_then(policy::parse_source_address);
        request.observed.source = source;
    }
    let credential_header = headers.get(&config.token.header);
    if headers.values(&config.token.header).nth(1).is_some() {
        // The credential header is a singleton (RFC 9110 §11.6.2): two of them are no
        // credential nhi-guard reads, but each is read for whose it is — a backend may
        // take the second, so a machine token there must not reach a human route.
        let joined: Vec<u8> = headers.values(&config.token.header).collect::<Vec<_>>().join(&b", "[..]);
        request.credential = Presented::Unreadable { value: joined, undecodable: false };
        return Ok(());
    }
    if config.dpop_in_use() {
        if let Some(credential) = credential_header.and_then(dpop_scheme) {
            request.credential = credential;
            request.dpop.scheme = true;
            request.dpop.proof = match headers.values(crate::dpop::PROOF_HEADER).take(2).collect::<Vec<_>>()[..]
            {
                [] => ProofValue::Absent,
                [one] => ProofValue::One(one.to_vec()),
                _ => ProofValue::Many,
            };
            // The scheme the connection had (`connection_scheme`: not an HTTP/2
            // client's own `:scheme`); on a host without pseudo-headers (APISIX),
            // `x-forwarded-proto` is all there is.
            request.dpop.url_scheme = headers
                .connection_scheme()
                .or_else(|| headers.get("x-forwarded-proto"))
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(|v| v.split(',').next().unwrap_or_default().trim().to_ascii_lowercase());
            return Ok(());
        }
    }
    request.credential = match config.token.extract(credential_header) {
        // One credential per request: a bearer token first, then a partner's
        // signature, then a partner's API key.
        Extracted::Absent => match &config.partners {
            Some(partners)
                if partners.signatures()
                    && (headers.contains("signature-input") || headers.contains("signature")) =>
            {
                Presented::Signature(Box::new(headers))
            }
            Some(partners) => match partners.api_key_header.as_deref().map(|name| headers.values(name)) {
                Some(mut keys) => match (keys.next(), keys.next()) {
                    (Some(key), None) => Presented::ApiKey(key.to_vec()),
                    // Two keys are no key: which one a backend would take is its own
                    // guess (refused `invalid_api_key`, as no configured key is empty).
                    (Some(_), Some(_)) => Presented::ApiKey(Vec::new()),
                    (None, _) => Presented::Nothing,
                },
                None => Presented::Nothing,
            },
            None => Presented::Nothing,
        },
        Extracted::Token(raw) => Presented::Bearer(raw.to_owned()),
        Extracted::Unreadable { value, undecodable } => {
            Presented::Unreadable { value: value.to_vec(), undecodable }
        }
    };
    Ok(())
}

/// `DPoP <token>` (the scheme case-insensitively, RFC 9110 §11.1), or the scheme with
/// bytes that are not UTF-8 (malformed, never "no credential"); `None` for any other.
fn dpop_scheme(value: &[u8]) -> Option<Presented> {
    let start = value.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(value.len());
    let rest = value.get(start..)?;
    let scheme = rest.get(..crate::dpop::SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(crate::dpop::SCHEME.as_bytes()) {
        return None;
    }
    Some(match std::str::from_utf8(rest.get(crate::dpop::SCHEME.len()..)?) {
        Ok(token) => Presented::Dpop(token.trim().to_owned()),
        Err(_) => Presented::Unreadable { value: value.to_vec(), undecodable: true },
    })
}

/// Client-supplied copies of the headers we set are never forwarded, whatever the
/// bytes of their values, under any spelling a backend may read as ours
/// (`x_nhi_identity`). `present` is the request's headers: only the names there are
/// removed (one host call each).
fn strip_managed_headers(vm: &Vm, host: &mut dyn Host, present: &HeaderMap) -> Result<(), HostError> {
    for name in present.managed_names(&vm.config.managed_headers()) {
        host.remove_request_header(name)?;
    }
    Ok(())
}

/// A connection property (`connection.<name>`), for the client certificate.
pub fn connection_property(host: &mut dyn Host, name: &str) -> Option<String> {
    host::property_text(host, &["connection", name])
}
