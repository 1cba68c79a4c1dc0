//! The request-header writes of one callback, batched.
//!
//! Host calls are the budget: each crossing of the V8 boundary costs about as much as
//! the filter's own work on a cached token. A machine request allowed on a cached
//! token writes four headers (client class, identity, issuer; the token removed),
//! one call each. Here the pipeline's writes go to the copy of the headers its
//! extract stage read, and the result goes back in one `proxy_set_header_map_pairs`
//! call. Envoy re-selects the route after it as after any header write. A host
//! without the call (APISIX answers `Unimplemented`) gets the writes one by one, from
//! then on for the life of the VM.

use std::cell::Cell;

use nhi_guard_core::host::header_map::HeaderMap;
use nhi_guard_core::host::{Host, HostError, MetricKind};
use nhi_guard_core::reason::LocalReply;

use super::host::{self, ProxyHost};

thread_local! {
    /// The host answered `Unimplemented` to a whole-map write: never ask again.
    static NO_MAP_WRITES: Cell<bool> = const { Cell::new(false) };
}

/// A request-header write, as the pipeline asked for it.
#[derive(Debug)]
enum Write {
    Set(String, String),
    Remove(Vec<u8>),
}

/// [`ProxyHost`], with request-header writes held back until [`Batched::flush`].
#[derive(Debug, Default)]
pub struct Batched {
    /// The headers as read in this callback, if they were.
    read: Option<HeaderMap>,
    writes: Vec<Write>,
}

impl Batched {
    /// Applies the held writes: one whole-map write for two or more of them (when
    /// the headers were read in this callback and the host has the call), otherwise
    /// one call each. An error leaves the request's headers unknown: refuse it.
    pub fn flush(self) -> Result<(), HostError> {
        let Batched { read, writes } = self;
        if let (Some(mut headers), true) = (read, writes.len() > 1 && !NO_MAP_WRITES.get()) {
            for write in &writes {
                match write {
                    Write::Set(name, value) => headers.set(name, value.as_bytes()),
                    Write::Remove(name) => headers.remove(name),
                }
            }
            if host::set_request_headers(&headers)? {
                return Ok(());
            }
            NO_MAP_WRITES.set(true);
        }
        for write in writes {
            match write {
                Write::Set(name, value) => host::set_request_header(&name, &value)?,
                Write::Remove(name) => host::remove_request_header(name)?,
            }
        }
        Ok(())
    }
}

impl Host for Batched {
    fn now_ns(&mut self) -> u64 {
        ProxyHost.now_ns()
    }

    fn request_headers(&mut self) -> Result<HeaderMap, HostError> {
        let headers = ProxyHost.request_headers()?;
        // Writes already held would make the copy stale; none are, in practice
        // (extract reads first), but then the writes go one by one.
        if self.writes.is_empty() {
            self.read = Some(headers.clone());
        }
        Ok(headers)
    }

    fn set_request_header(&mut self, name: &str, value: &str) -> Result<(), HostError> {
        self.writes.push(Write::Set(name.to_owned(), value.to_owned()));
        Ok(())
    }

    fn remove_request_header(&mut self, name: &[u8]) -> Result<(), HostError> {
        self.writes.push(Write::Remove(name.to_vec()));
        Ok(())
    }

    fn set_response_header(&mut self, name: &str, value: &str) -> Result<(), HostError> {
        ProxyHost.set_response_header(name, value)
    }

    fn property(&mut self, path: &[&str]) -> Option<Vec<u8>> {
        ProxyHost.property(path)
    }

    fn set_property(&mut self, name: &str, value: &[u8]) -> Result<(), HostError> {
        ProxyHost.set_property(name, value)
    }

    fn send_local_reply(&mut self, reply: &LocalReply) -> Result<(), HostError> {
        // A reply ends the request: its held writes no longer matter.
        self.writes.clear();
        ProxyHost.send_local_reply(reply)
    }

    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        ProxyHost.define_metric(kind, name)
    }

    fn increment_metric(&mut self, id: u32, offset: i64) -> Result<(), HostError> {
        ProxyHost.increment_metric(id, offset)
    }

    fn record_metric(&mut self, id: u32, value: u64) -> Result<(), HostError> {
        ProxyHost.record_metric(id, value)
    }

    fn random(&mut self, buf: &mut [u8]) -> Result<(), HostError> {
        ProxyHost.random(buf)
    }

    fn environment_variable(&mut self, name: &str) -> Option<Vec<u8>> {
        ProxyHost.environment_variable(name)
    }

    fn request_body(&mut self, max: usize) -> Result<Vec<u8>, HostError> {
        ProxyHost.request_body(max)
    }
}
