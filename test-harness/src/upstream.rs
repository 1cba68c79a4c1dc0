//! The protected service behind Envoy: answers every request with 200 and a JSON echo
//! of what Envoy forwarded, and remembers each request, so tests can assert on the
//! identity headers the filter added — and on requests that must never arrive.
//!
//! Echo body: `{"method":..,"path":..,"headers":{name: value},"header_list":[[name, value],..]}`,
//! plus `"backend": name` for a named upstream.
//! `headers` joins repeated names with `", "`; `header_list` keeps every occurrence.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use anyhow::Result;
use serde_json::{json, Value};

use crate::http::{Request, Response, Server};

/// Requests kept by [`EchoUpstream::received`]; older ones are forgotten so a
/// long-running demo upstream does not grow without bound.
pub const MAX_RECORDED: usize = 10_000;

pub struct EchoUpstream {
    received: Arc<Mutex<Vec<Request>>>,
    server: Server,
}

impl EchoUpstream {
    /// Serves on an ephemeral 127.0.0.1 port.
    pub fn start() -> Result<Self> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn bind(addr: SocketAddr) -> Result<Self> {
        Self::bind_named(addr, None)
    }

    /// Like [`EchoUpstream::start`], with `"backend": name` in every echo, so a test (or
    /// the demo) can see which backend Envoy routed to.
    pub fn start_named(name: &str) -> Result<Self> {
        Self::bind_named(SocketAddr::from(([127, 0, 0, 1], 0)), Some(name))
    }

    pub fn bind_named(addr: SocketAddr, name: Option<&str>) -> Result<Self> {
        let name = name.map(str::to_owned);
        let received = Arc::new(Mutex::new(Vec::new()));
        let server = {
            let received = Arc::clone(&received);
            Server::bind(addr, move |request: &Request| {
                let mut received = lock(&received);
                if received.len() == MAX_RECORDED {
                    received.remove(0);
                }
                received.push(request.clone());
                drop(received);
                let mut body = echo(request);
                if let (Some(name), Some(object)) = (&name, body.as_object_mut()) {
                    object.insert("backend".to_owned(), Value::String(name.clone()));
                }
                Response::json(200, &body)
            })?
        };
        Ok(Self { received, server })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Requests that reached the upstream, on any path.
    pub fn hits(&self) -> u64 {
        self.server.total_hits()
    }

    /// Requests that reached the upstream for `path` (query string excluded).
    pub fn hits_for(&self, path: &str) -> u64 {
        self.server.hits(path)
    }

    /// The requests received so far (the last [`MAX_RECORDED`]), oldest first.
    pub fn received(&self) -> Vec<Request> {
        lock(&self.received).clone()
    }

    /// The received requests whose path (query string excluded) is `path`.
    pub fn received_for(&self, path: &str) -> Vec<Request> {
        lock(&self.received).iter().filter(|request| request.path() == path).cloned().collect()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Every value of header `name` (lower-case) in an echo made by [`echo`], in the order
/// the upstream received them: what a test reads to see exactly what reached the
/// backend (`headers` joins repeated headers; this keeps them apart).
pub fn echoed(echo: &Value, name: &str) -> Vec<String> {
    echo["header_list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|pair| pair[0] == name)
        .filter_map(|pair| pair[1].as_str().map(str::to_owned))
        .collect()
}

/// The JSON echo of `request`.
pub fn echo(request: &Request) -> Value {
    let mut joined: BTreeMap<&str, String> = BTreeMap::new();
    for (name, value) in &request.headers {
        joined
            .entry(name)
            .and_modify(|all| {
                all.push_str(", ");
                all.push_str(value);
            })
            .or_insert_with(|| value.clone());
    }
    json!({
        "method": request.method,
        "path": request.target,
        "headers": joined,
        "header_list": request.headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request;

    #[test]
    fn echoes_what_it_received() {
        let upstream = EchoUpstream::start().unwrap();
        let response = request(upstream.addr(), "GET", "/svc?x=1", &[("x-a", "1"), ("X-A", "2")]).unwrap();
        assert_eq!(response.status, 200);
        let echo = response.body_json().unwrap();
        assert_eq!(echo["method"], "GET");
        assert_eq!(echo["path"], "/svc?x=1");
        assert_eq!(echo["headers"]["x-a"], "1, 2");
        assert_eq!(echo["header_list"][1], json!(["x-a", "1"]));
        assert_eq!(upstream.hits(), 1);
        assert_eq!(upstream.hits_for("/svc"), 1);
        assert_eq!(upstream.received_for("/svc")[0].header_values("x-a"), ["1", "2"]);
    }
}
