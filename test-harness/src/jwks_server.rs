//! The key server the filter fetches its JWKS from, with behaviour a test can change
//! while Envoy runs: a different key set (rotation), an error status, a slow answer.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use crate::http::{Request, Response, Server};

/// Where the JWKS is served; matches `issuers[].jwks.path` of the shipped config.
pub const JWKS_PATH: &str = "/jwks.json";

/// How the server answers `GET /jwks.json`.
#[derive(Clone, Debug)]
pub struct JwksBehaviour {
    pub status: u16,
    pub body: String,
    /// Slept before answering (the hit is counted on arrival).
    pub delay: Duration,
}

impl JwksBehaviour {
    /// 200 with `jwks` as the body.
    pub fn serve(jwks: &Value) -> Self {
        Self { status: 200, body: jwks.to_string(), delay: Duration::ZERO }
    }

    /// `status` with a small plain-text body.
    pub fn fail(status: u16) -> Self {
        Self { status, body: format!("jwks server configured to fail with {status}"), delay: Duration::ZERO }
    }
}

/// A running JWKS server on an ephemeral (or given) 127.0.0.1 port.
pub struct JwksServer {
    behaviour: Arc<Mutex<JwksBehaviour>>,
    server: Server,
}

impl JwksServer {
    /// Serves `jwks` with 200 on an ephemeral port.
    pub fn start(jwks: &Value) -> Result<Self> {
        Self::start_with(JwksBehaviour::serve(jwks))
    }

    pub fn start_with(behaviour: JwksBehaviour) -> Result<Self> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)), behaviour)
    }

    pub fn bind(addr: SocketAddr, behaviour: JwksBehaviour) -> Result<Self> {
        let behaviour = Arc::new(Mutex::new(behaviour));
        let server = {
            let behaviour = Arc::clone(&behaviour);
            Server::bind(addr, move |request: &Request| answer(&behaviour, request))?
        };
        Ok(Self { behaviour, server })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Requests received for [`JWKS_PATH`].
    pub fn hits(&self) -> u64 {
        self.server.hits(JWKS_PATH)
    }

    pub fn reset_hits(&self) {
        self.server.reset_hits();
    }

    /// Replaces the behaviour for the following requests.
    pub fn set_behaviour(&self, behaviour: JwksBehaviour) {
        *lock(&self.behaviour) = behaviour;
    }

    pub fn behaviour(&self) -> JwksBehaviour {
        lock(&self.behaviour).clone()
    }

    /// Serves `jwks` with 200 from now on, keeping the configured delay.
    pub fn set_jwks(&self, jwks: &Value) {
        let mut behaviour = lock(&self.behaviour);
        behaviour.status = 200;
        behaviour.body = jwks.to_string();
    }

    pub fn set_status(&self, status: u16) {
        lock(&self.behaviour).status = status;
    }

    pub fn set_body(&self, body: impl Into<String>) {
        lock(&self.behaviour).body = body.into();
    }

    pub fn set_delay(&self, delay: Duration) {
        lock(&self.behaviour).delay = delay;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn answer(behaviour: &Mutex<JwksBehaviour>, request: &Request) -> Response {
    if request.path() != JWKS_PATH {
        return Response::new(404).with_body("not found");
    }
    // Copy out so a slow answer does not block a test changing the behaviour.
    let JwksBehaviour { status, body, delay } = lock(behaviour).clone();
    if !delay.is_zero() {
        thread::sleep(delay);
    }
    let content_type = if status == 200 { "application/json" } else { "text/plain" };
    Response::new(status).with_header("content-type", content_type).with_body(body)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use serde_json::json;

    use super::*;
    use crate::http::request;

    #[test]
    fn behaviour_can_change_at_run_time() {
        let server = JwksServer::start(&json!({"keys": []})).unwrap();
        let first = request(server.addr(), "GET", JWKS_PATH, &[]).unwrap();
        assert_eq!(first.status, 200);
        assert_eq!(first.body_json().unwrap(), json!({"keys": []}));

        server.set_behaviour(JwksBehaviour::fail(500));
        assert_eq!(request(server.addr(), "GET", JWKS_PATH, &[]).unwrap().status, 500);

        server.set_jwks(&json!({"keys": [{"kid": "k"}]}));
        server.set_delay(Duration::from_millis(200));
        let started = Instant::now();
        let slow = request(server.addr(), "GET", JWKS_PATH, &[]).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(slow.body_json().unwrap()["keys"][0]["kid"], "k");

        assert_eq!(request(server.addr(), "GET", "/other", &[]).unwrap().status, 404);
        assert_eq!(server.hits(), 3);
    }
}
