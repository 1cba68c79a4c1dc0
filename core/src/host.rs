//! What the core needs of a proxy, without depending on any: the [`Host`] a request
//! runs against, header maps as bytes ([`header_map`]), the shared key/value store
//! with its CAS contract ([`store`]), and what a host can do ([`capabilities`]).

pub mod capabilities;
pub mod header_map;
pub mod memory;
pub mod store;

use std::fmt;

use crate::reason::LocalReply;

use header_map::HeaderMap;

/// A host call failed with this status. Numbered as the proxy-wasm ABI numbers its
/// statuses, which every shell maps its own failures onto.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError(pub u32);

impl HostError {
    pub const NOT_FOUND: HostError = HostError(1);
    pub const BAD_ARGUMENT: HostError = HostError(2);
    pub const INTERNAL_FAILURE: HostError = HostError(10);
    pub const UNIMPLEMENTED: HostError = HostError(12);
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            1 => "NotFound",
            2 => "BadArgument",
            3 => "SerializationFailure",
            4 => "ParseFailure",
            7 => "Empty",
            8 => "CasMismatch",
            10 => "InternalFailure",
            12 => "Unimplemented",
            _ => "unknown status",
        };
        write!(f, "{name} ({})", self.0)
    }
}

/// An HTTP callout made on behalf of the request being decided (a TokenReview):
/// its answer comes back to the shell, which hands it to the pipeline
/// (`crate::pipeline::answered`). Headers include the pseudo-headers `:method`,
/// `:path` and `:authority`; `cluster` is an Envoy cluster (on APISIX, `host:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall {
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout_ms: u64,
}

/// The kinds of metric a host keeps (numbered as the proxy-wasm ABI numbers them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

/// What one request needs of its proxy, and nothing more: the request pipeline
/// (`crate::pipeline`) runs against this trait, so the same decisions run in the
/// proxy-wasm shell, in a native shell, and natively in tests against a fake host.
///
/// Every call is made on behalf of the request being decided (the shell makes sure
/// of it, e.g. with `set_effective_context` for a request woken from the root).
/// Calls that can fail say so; what a failure means for the request is the
/// pipeline's decision, never the host's.
pub trait Host {
    /// Unix time in nanoseconds.
    fn now_ns(&mut self) -> u64;
    /// Every request header, pseudo-headers included, as bytes.
    fn request_headers(&mut self) -> Result<HeaderMap, HostError>;
    /// Replaces every value of request header `name` with `value`.
    fn set_request_header(&mut self, name: &str, value: &str) -> Result<(), HostError>;
    /// Removes every value of request header `name` (absent is fine).
    fn remove_request_header(&mut self, name: &[u8]) -> Result<(), HostError>;
    /// Replaces every value of response header `name` (the response to a forwarded request).
    fn set_response_header(&mut self, name: &str, value: &str) -> Result<(), HostError>;
    /// A stream or connection property (`["source", "address"]`), `None` if unknown.
    fn property(&mut self, path: &[&str]) -> Option<Vec<u8>>;
    /// Publishes `name` for the access log (Envoy's filter state `wasm.<name>`).
    fn set_property(&mut self, name: &str, value: &[u8]) -> Result<(), HostError>;
    /// Answers the request locally instead of forwarding it.
    fn send_local_reply(&mut self, reply: &LocalReply) -> Result<(), HostError>;
    /// Defines (or finds) a metric; returns its id.
    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Result<u32, HostError>;
    /// Adds `offset` to a counter or gauge.
    fn increment_metric(&mut self, id: u32, offset: i64) -> Result<(), HostError>;
    /// Sets a gauge, or records a histogram sample.
    fn record_metric(&mut self, id: u32, value: u64) -> Result<(), HostError>;
    /// Fills `buf` with cryptographically random bytes (WASI `random_get` in a VM):
    /// DPoP server nonces.
    fn random(&mut self, buf: &mut [u8]) -> Result<(), HostError>;
    /// Environment variable `name` of the VM (where partner secrets come from:
    /// Envoy's `vm_config.environment_variables`, nginx's `env` on APISIX), `None`
    /// when it is not set. Read when the VM starts, never per request.
    fn environment_variable(&mut self, name: &str) -> Option<Vec<u8>>;
    /// The first `max` bytes of the request body buffered so far. Only asked in the
    /// body phase, which only requests that need their body enter.
    fn request_body(&mut self, max: usize) -> Result<Vec<u8>, HostError>;
    /// Starts `call` for this request; returns the host's token. The answer is the
    /// shell's to deliver: the request stays paused until it arrives.
    fn http_call(&mut self, call: &HttpCall) -> Result<u32, HostError>;
}

/// A property as UTF-8 text (`None` when absent or not text).
pub fn property_text(host: &mut dyn Host, path: &[&str]) -> Option<String> {
    host.property(path).and_then(|bytes| String::from_utf8(bytes).ok())
}

/// The downstream address: Envoy's `source.address` (`ip:port`), or nginx's
/// `remote_addr` variable (`ip`) on APISIX.
pub fn source_address(host: &mut dyn Host) -> Option<String> {
    property_text(host, &["source", "address"]).or_else(|| property_text(host, &["remote_addr"]))
}
