//! The emulator's state: what every worker of one host shares (clock, shared data,
//! metrics), and what each worker (one wasm VM) holds.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use wasmtime::{Memory, TypedFunc};

use super::abi::{self, Headers, Status};
use super::profile::Profile;

/// One value in shared data and its CAS token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedEntry {
    pub value: Vec<u8>,
    pub cas: u32,
}

/// Envoy's shared data: a key-value map with compare-and-swap, one per proxy.
#[derive(Debug)]
pub struct SharedData {
    entries: BTreeMap<Vec<u8>, SharedEntry>,
    next_cas: u32,
}

impl Default for SharedData {
    fn default() -> Self {
        Self { entries: BTreeMap::new(), next_cas: 1 }
    }
}

impl SharedData {
    /// The value and CAS of `key`; `None` (the host answers `NotFound`) if absent.
    pub fn get(&self, key: &[u8]) -> Option<&SharedEntry> {
        self.entries.get(key)
    }

    /// Envoy's semantics: a non-zero `cas` that differs from the stored one is
    /// `CasMismatch`; CAS 0 (or a key not yet present) always writes. Every write
    /// gets a fresh non-zero CAS.
    pub fn set(&mut self, key: &[u8], value: &[u8], cas: u32) -> Result<(), Status> {
        let fresh = self.next_cas;
        self.next_cas = self.next_cas.checked_add(1).unwrap_or(1);
        match self.entries.get_mut(key) {
            Some(entry) => {
                if cas != 0 && cas != entry.cas {
                    return Err(Status::CasMismatch);
                }
                *entry = SharedEntry { value: value.to_vec(), cas: fresh };
            }
            None => {
                self.entries.insert(key.to_vec(), SharedEntry { value: value.to_vec(), cas: fresh });
            }
        }
        Ok(())
    }

    /// Every key and value, for tests.
    pub fn entries(&self) -> &BTreeMap<Vec<u8>, SharedEntry> {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A metric kind, as `proxy_define_metric` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// A defined metric and what was recorded in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metric {
    pub name: String,
    pub kind: MetricKind,
    /// Counter or gauge value.
    pub value: i64,
    /// Histogram samples, in order.
    pub samples: Vec<u64>,
}

/// Metrics of the whole proxy (Envoy's stats are per proxy, not per worker).
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) by_id: Vec<Metric>,
}

impl Metrics {
    /// Defines `name` (or finds it); ids start at 1.
    pub(crate) fn define(&mut self, kind: MetricKind, name: &str) -> u32 {
        if let Some(index) = self.by_id.iter().position(|m| m.name == name) {
            return index_to_id(index);
        }
        self.by_id.push(Metric { name: name.to_owned(), kind, value: 0, samples: Vec::new() });
        index_to_id(self.by_id.len() - 1)
    }

    pub(crate) fn get_mut(&mut self, id: u32) -> Option<&mut Metric> {
        let index = usize::try_from(id).ok()?.checked_sub(1)?;
        self.by_id.get_mut(index)
    }

    pub fn by_name(&self, name: &str) -> Option<&Metric> {
        self.by_id.iter().find(|m| m.name == name)
    }

    pub fn all(&self) -> &[Metric] {
        &self.by_id
    }
}

fn index_to_id(index: usize) -> u32 {
    u32::try_from(index).unwrap_or(u32::MAX - 1).saturating_add(1)
}

/// What every worker of one emulated host shares.
#[derive(Debug, Default)]
pub struct Shared {
    /// Unix time in nanoseconds: the proxy clock and WASI's.
    pub clock_ns: Cell<u64>,
    pub data: RefCell<SharedData>,
    pub metrics: RefCell<Metrics>,
    /// Envoy's clusters, when the test names them: a callout to another name is
    /// `BadArgument`, as in Envoy. `None`: every name is a cluster.
    pub clusters: RefCell<Option<std::collections::BTreeSet<String>>>,
    /// The VMs' WASI environment (`KEY=VALUE`): Envoy's `vm_config.environment_variables`,
    /// or the nginx worker's environment (what `env` directives keep) on APISIX.
    pub environment: RefCell<Vec<String>>,
}

/// A log line a worker wrote (`proxy_log`, or a line on WASI stdout/stderr).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// 0 trace … 5 critical; `None` for WASI output.
    pub level: Option<u32>,
    pub message: String,
}

/// Where a request stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Flow {
    /// The filter let it go on: the upstream gets it.
    Continued,
    /// The filter holds it (waiting for a callout, a tick or another request).
    Paused,
    /// The filter answered it itself.
    Replied(LocalReply),
}

/// A local response sent with `proxy_send_local_response`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub details: String,
    pub headers: Headers,
    pub body: Vec<u8>,
}

/// One HTTP context (request) of a worker.
#[derive(Clone, Debug)]
pub struct Stream {
    pub id: u32,
    /// The request headers as the filter left them: what the upstream gets.
    pub request_headers: Headers,
    /// The response headers, once the response phase began.
    pub response_headers: Option<Headers>,
    /// Per-request properties (by path segment), over the worker's defaults.
    pub properties: BTreeMap<Vec<String>, Vec<u8>>,
    /// Values the filter set with `proxy_set_property`, by the path it gave.
    pub set_properties: BTreeMap<String, Vec<u8>>,
    pub flow: Flow,
    /// Whether the filter's request callback asked to pause.
    pub paused_by_filter: bool,
    /// Nginx variables the filter may write (APISIX profiles).
    pub writable_variables: Vec<String>,
    pub finished: bool,
}

/// A callout (`proxy_http_call`) waiting for the test to answer it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Callout {
    pub token: u32,
    /// The context it was made from (a request, or the root context).
    pub context: u32,
    /// Envoy: the cluster name. APISIX: `host:port`.
    pub upstream: String,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub timeout_ms: u32,
    /// When it times out (emulator clock, ns).
    pub deadline_ns: u64,
}

impl Callout {
    /// The first value of a callout header (`:path`, `:authority`, …).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// The answer to a callout, as the test injects it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CalloutReply {
    pub status: u16,
    pub headers: Headers,
    pub body: Vec<u8>,
}

impl CalloutReply {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self { status, headers: Vec::new(), body: body.into() }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.as_bytes().to_vec()));
        self
    }
}

/// Which guest callback is running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// None (between callbacks).
    Idle,
    /// A root-context callback: `proxy_on_vm_start`, `proxy_on_configure`, `proxy_on_tick`,
    /// or a callout answer to the root.
    Root(&'static str),
    /// A callback of request `id` (headers, log, done, or a callout answer to it).
    Request(u32, &'static str),
}

/// A worker's store data: everything the host functions read and write.
pub struct VmState {
    pub profile: Profile,
    pub shared: Rc<Shared>,
    pub plugin_configuration: Vec<u8>,
    pub vm_configuration: Vec<u8>,
    pub memory: Option<Memory>,
    pub allocate: Option<TypedFunc<i32, i32>>,
    pub root_id: u32,
    pub scope: Scope,
    /// Envoy's effective context (`proxy_set_effective_context`).
    pub effective: u32,
    pub streams: BTreeMap<u32, Stream>,
    pub callouts: BTreeMap<u32, Callout>,
    pub next_token: u32,
    /// The callout answer being delivered (served to the guest during the callback).
    pub answering: Option<Option<CalloutReply>>,
    pub tick_period_ms: u32,
    pub next_tick_ns: Option<u64>,
    /// Worker-wide properties (by path segment): connection defaults.
    pub properties: BTreeMap<Vec<String>, Vec<u8>>,
    /// Properties set on the root context.
    pub root_set_properties: BTreeMap<String, Vec<u8>>,
    pub logs: Vec<LogLine>,
    pub partial_output: Vec<u8>,
    pub host_calls: BTreeMap<String, u64>,
    /// `env` calls made to fail (by import name) with the given status, doing nothing.
    pub faults: BTreeMap<String, Status>,
    /// What the real host would not survive (APISIX: a callout outside a request).
    pub violations: Vec<String>,
    /// Imports the guest called that the emulator does not implement.
    pub unemulated: Vec<String>,
    pub rng: u64,
}

impl VmState {
    pub fn new(profile: Profile, shared: Rc<Shared>, plugin_configuration: Vec<u8>, seed: u64) -> Self {
        Self {
            profile,
            shared,
            plugin_configuration,
            vm_configuration: Vec::new(),
            memory: None,
            allocate: None,
            root_id: 1,
            scope: Scope::Idle,
            effective: 1,
            streams: BTreeMap::new(),
            callouts: BTreeMap::new(),
            next_token: if profile.is_apisix() { 0 } else { 1 },
            answering: None,
            tick_period_ms: 0,
            next_tick_ns: None,
            properties: BTreeMap::new(),
            root_set_properties: BTreeMap::new(),
            logs: Vec::new(),
            partial_output: Vec::new(),
            host_calls: BTreeMap::new(),
            faults: BTreeMap::new(),
            violations: Vec::new(),
            unemulated: Vec::new(),
            // Spread small seeds over all bits (xorshift needs a non-zero state).
            rng: seed.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    pub fn count(&mut self, name: &str) {
        *self.host_calls.entry(name.to_owned()).or_insert(0) += 1;
    }

    pub fn now_ns(&self) -> u64 {
        self.shared.clock_ns.get()
    }

    /// The request host calls act on: Envoy's effective context; on APISIX the
    /// request whose callback runs (the effective context is ignored there).
    pub fn target_stream(&self) -> Option<u32> {
        if self.profile.is_apisix() {
            match self.scope {
                Scope::Request(id, _) => Some(id),
                _ => None,
            }
        } else {
            self.streams.contains_key(&self.effective).then_some(self.effective)
        }
    }

    /// The header map `map_type` of the target request (or of the callout answer).
    pub fn map(&self, map_type: i32) -> Result<&Headers, Status> {
        match map_type {
            abi::map::HTTP_CALL_RESPONSE_HEADERS => match &self.answering {
                Some(Some(reply)) => Ok(&reply.headers),
                Some(None) => Err(Status::NotFound),
                None => Err(Status::NotFound),
            },
            abi::map::REQUEST_HEADERS | abi::map::RESPONSE_HEADERS => {
                let id = self.target_stream().ok_or(Status::BadArgument)?;
                let stream = self.streams.get(&id).ok_or(Status::BadArgument)?;
                if map_type == abi::map::REQUEST_HEADERS {
                    Ok(&stream.request_headers)
                } else {
                    stream.response_headers.as_ref().ok_or(Status::NotFound)
                }
            }
            abi::map::REQUEST_TRAILERS
            | abi::map::RESPONSE_TRAILERS
            | abi::map::HTTP_CALL_RESPONSE_TRAILERS => Err(Status::NotFound),
            _ => Err(Status::BadArgument),
        }
    }

    /// The writable header map `map_type` of the target request.
    pub fn map_mut(&mut self, map_type: i32) -> Result<&mut Headers, Status> {
        let id = self.target_stream().ok_or(Status::BadArgument)?;
        let stream = self.streams.get_mut(&id).ok_or(Status::BadArgument)?;
        match map_type {
            abi::map::REQUEST_HEADERS => Ok(&mut stream.request_headers),
            abi::map::RESPONSE_HEADERS => stream.response_headers.as_mut().ok_or(Status::NotFound),
            _ => Err(Status::BadArgument),
        }
    }

    /// xorshift64*: deterministic `random_get`.
    pub fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Records a line of WASI output, split at newlines.
    pub fn output(&mut self, bytes: &[u8]) {
        self.partial_output.extend_from_slice(bytes);
        while let Some(end) = self.partial_output.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial_output.drain(..=end).collect();
            let text = String::from_utf8_lossy(line.get(..end).unwrap_or_default()).into_owned();
            self.logs.push(LogLine { level: None, message: text });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_data_has_envoy_cas_semantics() {
        let mut data = SharedData::default();
        assert!(data.get(b"k").is_none(), "a missing key has no value and no CAS");
        data.set(b"k", b"1", 0).unwrap();
        let first = data.get(b"k").unwrap().cas;
        assert_ne!(first, 0);
        data.set(b"k", b"2", first).unwrap();
        let second = data.get(b"k").unwrap().cas;
        assert_ne!(second, first);
        assert_eq!(data.set(b"k", b"3", first), Err(Status::CasMismatch), "stale CAS");
        assert_eq!(data.get(b"k").unwrap().value, b"2");
        data.set(b"k", b"4", 0).unwrap();
        assert_eq!(data.get(b"k").unwrap().value, b"4", "CAS 0 always writes");
    }

    #[test]
    fn metrics_are_found_by_name() {
        let mut metrics = Metrics::default();
        let a = metrics.define(MetricKind::Counter, "a");
        let b = metrics.define(MetricKind::Gauge, "b");
        assert_eq!(metrics.define(MetricKind::Counter, "a"), a);
        assert_ne!(a, b);
        assert_ne!(a, 0);
        metrics.get_mut(b).unwrap().value = 7;
        assert_eq!(metrics.by_name("b").unwrap().value, 7);
        assert!(metrics.get_mut(0).is_none());
    }
}
