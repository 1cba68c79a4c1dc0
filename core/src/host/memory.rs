//! A [`Host`] in memory, for one request at a time: the pipeline runs natively
//! against it in tests and in native tools, and any call can be made to fail
//! (shared data too, with [`FaultyStore`]).
//!
//! It keeps what a proxy would: the request headers (edited by the pipeline), the
//! properties a test gives, the local reply if one was sent, filter state, response
//! headers, metrics by name, and how many times each kind of call was made.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::reason::LocalReply;

use super::header_map::HeaderMap;
use super::store::{Store, StoreError, Versioned};
use super::{Host, HostError, HttpCall, MetricKind};

/// Each kind of call a [`Host`] (and a [`Store`]) offers, for counting and faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Call {
    Clock,
    ReadHeaders,
    SetHeader,
    RemoveHeader,
    SetResponseHeader,
    Property,
    SetProperty,
    LocalReply,
    DefineMetric,
    IncrementMetric,
    RecordMetric,
    Random,
    Environment,
    ReadBody,
    HttpCall,
}

impl Call {
    pub const ALL: [Call; 15] = [
        Call::Clock,
        Call::ReadHeaders,
        Call::SetHeader,
        Call::RemoveHeader,
        Call::SetResponseHeader,
        Call::Property,
        Call::SetProperty,
        Call::LocalReply,
        Call::DefineMetric,
        Call::IncrementMetric,
        Call::RecordMetric,
        Call::Random,
        Call::Environment,
        Call::ReadBody,
        Call::HttpCall,
    ];
}

/// Metrics by name: kind and value (a histogram keeps its last sample).
#[derive(Debug, Default)]
pub struct Metrics {
    names: Vec<String>,
    pub values: BTreeMap<String, (MetricKind, i64)>,
}

impl Metrics {
    /// The value of the one metric whose name contains every one of `parts`.
    pub fn find(&self, parts: &[&str]) -> Option<i64> {
        let mut found = self.values.iter().filter(|(name, _)| parts.iter().all(|p| name.contains(p)));
        match (found.next(), found.next()) {
            (Some((_, (_, value))), None) => Some(*value),
            _ => None,
        }
    }
}

/// A request's host, in memory.
#[derive(Debug, Default)]
pub struct MemoryHost {
    pub now_ns: u64,
    /// The request headers, as the upstream would get them once the pipeline is done.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub properties: BTreeMap<Vec<String>, Vec<u8>>,
    pub response_headers: Vec<(String, String)>,
    pub filter_state: BTreeMap<String, Vec<u8>>,
    /// The local reply, if the pipeline sent one.
    pub reply: Option<LocalReply>,
    /// The metrics, which outlive one request: share them between the hosts of one
    /// VM with [`MemoryHost::metrics_of`] (metric ids are the VM's).
    pub metrics: Rc<RefCell<Metrics>>,
    /// How many times each kind of call was made.
    pub calls: BTreeMap<Call, usize>,
    /// Calls that fail, with the status they fail with.
    pub faults: BTreeMap<Call, HostError>,
    /// The VM's environment.
    pub environment: BTreeMap<String, Vec<u8>>,
    /// The request body buffered so far.
    pub body: Vec<u8>,
    /// Callouts made, with the token each was given (`first_token` onwards).
    pub callouts: Vec<(u32, HttpCall)>,
    /// The token of the first callout (tests running several requests make them distinct).
    pub first_token: u32,
}

impl MemoryHost {
    pub fn new(now_ns: u64) -> Self {
        MemoryHost { now_ns, ..MemoryHost::default() }
    }

    /// This host, keeping its metrics in `metrics` (e.g. those of the VM's other requests).
    pub fn metrics_of(mut self, metrics: &Rc<RefCell<Metrics>>) -> Self {
        self.metrics = Rc::clone(metrics);
        self
    }

    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.as_bytes().to_vec(), value.into()));
        self
    }

    pub fn property(mut self, path: &[&str], value: impl Into<Vec<u8>>) -> Self {
        self.properties.insert(path.iter().map(|s| (*s).to_owned()).collect(), value.into());
        self
    }

    pub fn env(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.environment.insert(name.to_owned(), value.into());
        self
    }

    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Makes every `call` fail with `status` from now on.
    pub fn fail(&mut self, call: Call, status: HostError) {
        self.faults.insert(call, status);
    }

    /// The first value of request header `name`, as the upstream would get it.
    pub fn request_header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| v.as_slice())
    }

    pub fn total_calls(&self) -> usize {
        self.calls.values().sum()
    }

    fn call(&mut self, call: Call) -> Result<(), HostError> {
        *self.calls.entry(call).or_default() += 1;
        self.faults.get(&call).map_or(Ok(()), |status| Err(*status))
    }
}

impl Host for MemoryHost {
    fn now_ns(&mut self) -> u64 {
        // A clock cannot fail: a host without one has WASI's (see the wasm shell).
        let _ = self.call(Call::Clock);
        self.now_ns
    }

    fn request_headers(&mut self) -> Result<HeaderMap, HostError> {
        self.call(Call::ReadHeaders)?;
        Ok(HeaderMap::from_pairs(self.headers.iter().cloned()))
    }

    fn set_request_header(&mut self, name: &str, value: &str) -> Result<(), HostError> {
        self.call(Call::SetHeader)?;
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name.as_bytes()));
        self.headers.push((name.as_bytes().to_vec(), value.as_bytes().to_vec()));
        Ok(())
    }

    fn remove_request_header(&mut self, name: &[u8]) -> Result<(), HostError> {
        self.call(Call::RemoveHeader)?;
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        Ok(())
    }

    fn set_response_header(&mut self, name: &str, value: &str) -> Result<(), HostError> {
        self.call(Call::SetResponseHeader)?;
        self.response_headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.response_headers.push((name.to_owned(), value.to_owned()));
        Ok(())
    }

    fn property(&mut self, path: &[&str]) -> Option<Vec<u8>> {
        self.call(Call::Property).ok()?;
        let key: Vec<String> = path.iter().map(|s| (*s).to_owned()).collect();
        self.properties.get(&key).cloned()
    }

    fn set_property(&mut self, name: &str, value: &[u8]) -> Result<(), HostError> {
        self.call(Call::SetProperty)?;
        self.filter_state.insert(name.to_owned(), value.to_vec());
        Ok(())
    }

    fn send_local_reply(&mut self, reply: &LocalReply) -> Result<(), HostError> {
        self.call(Call::LocalReply)?;
        self.reply = Some(reply.clone());
        Ok(())
    }

    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        self.call(Call::DefineMetric)?;
        let mut metrics = self.metrics.try_borrow_mut().map_err(|_| HostError::INTERNAL_FAILURE)?;
        let id = match metrics.names.iter().position(|n| n == name) {
            Some(id) => id,
            None => {
                metrics.names.push(name.to_owned());
                metrics.values.insert(name.to_owned(), (kind, 0));
                metrics.names.len() - 1
            }
        };
        u32::try_from(id).map_err(|_| HostError::INTERNAL_FAILURE)
    }

    fn increment_metric(&mut self, id: u32, offset: i64) -> Result<(), HostError> {
        self.call(Call::IncrementMetric)?;
        self.update_metric(id, |value| value.saturating_add(offset))
    }

    fn record_metric(&mut self, id: u32, value: u64) -> Result<(), HostError> {
        self.call(Call::RecordMetric)?;
        self.update_metric(id, |_| i64::try_from(value).unwrap_or(i64::MAX))
    }

    /// Deterministic bytes (a counter per call): tests compare what they saw.
    fn random(&mut self, buf: &mut [u8]) -> Result<(), HostError> {
        self.call(Call::Random)?;
        let n = self.calls.get(&Call::Random).copied().unwrap_or_default() as u8;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = n.wrapping_mul(31).wrapping_add(i as u8);
        }
        Ok(())
    }

    fn environment_variable(&mut self, name: &str) -> Option<Vec<u8>> {
        self.call(Call::Environment).ok()?;
        self.environment.get(name).cloned()
    }

    fn request_body(&mut self, max: usize) -> Result<Vec<u8>, HostError> {
        self.call(Call::ReadBody)?;
        Ok(self.body.get(..max.min(self.body.len())).unwrap_or_default().to_vec())
    }

    fn http_call(&mut self, call: &HttpCall) -> Result<u32, HostError> {
        self.call(Call::HttpCall)?;
        let offset = u32::try_from(self.callouts.len()).map_err(|_| HostError::INTERNAL_FAILURE)?;
        let token = self.first_token.saturating_add(offset);
        self.callouts.push((token, call.clone()));
        Ok(token)
    }
}

impl MemoryHost {
    fn update_metric(&mut self, id: u32, update: impl FnOnce(i64) -> i64) -> Result<(), HostError> {
        let mut metrics = self.metrics.try_borrow_mut().map_err(|_| HostError::INTERNAL_FAILURE)?;
        let Metrics { names, values } = &mut *metrics;
        let name = usize::try_from(id).ok().and_then(|i| names.get(i)).ok_or(HostError::NOT_FOUND)?;
        let metric = values.get_mut(name).ok_or(HostError::NOT_FOUND)?;
        metric.1 = update(metric.1);
        Ok(())
    }
}

/// A [`Store`] whose reads or writes can be made to fail, around another store;
/// it counts the calls (each is a host call in a proxy-wasm shell).
#[derive(Debug, Default)]
pub struct FaultyStore<S> {
    pub inner: S,
    pub fail_get: std::cell::Cell<bool>,
    pub fail_set: std::cell::Cell<bool>,
    pub calls: std::cell::Cell<usize>,
}

impl<S: Store> Store for FaultyStore<S> {
    fn get(&self, key: &str) -> Result<Versioned, StoreError> {
        self.calls.set(self.calls.get() + 1);
        if self.fail_get.get() {
            return Err(StoreError::Unavailable);
        }
        self.inner.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        self.calls.set(self.calls.get() + 1);
        if self.fail_set.get() {
            return Err(StoreError::Unavailable);
        }
        self.inner.set(key, value, cas)
    }
}
