//! A test double of a rate limit service: `envoy.service.ratelimit.v3.RateLimitService`
//! (the API envoyproxy/ratelimit and Limitador serve, and Envoy's global `ratelimit`
//! filter calls) over gRPC on an ephemeral 127.0.0.1 port.
//!
//! It records every `ShouldRateLimit` call, so a test can say exactly which descriptors
//! Envoy asked about, and answers `OK` unless told otherwise: a descriptor entry (say
//! `nhi_identity` = `robot-a`) can be given a budget of N hits, after which every
//! descriptor holding that entry is `OVER_LIMIT`; or every call can fail with a gRPC
//! error. [`RateLimitDouble::stop`] (or dropping it) closes the port and every open
//! connection at once, as a crashed service would.
//!
//! This is the harness's one async part: tonic (with the generated protos and server
//! stub of the `envoy-types` crate) on a current-thread tokio runtime, on a thread of its
//! own. Its API is synchronous, like the rest of the harness.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};

use anyhow::{Context, Result};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;

use crate::envoy_config::repo_root;

/// Name of the rate limit service's cluster in `envoy/envoy-global-ratelimit.yaml`.
pub const CLUSTER: &str = "ratelimit";
/// The `duration_until_reset` of an `OVER_LIMIT` answer, which Envoy's
/// `enable_retry_after_header` turns into `Retry-After`.
pub const RESET_SECONDS: i64 = 42;

/// `<root>/envoy/envoy-global-ratelimit.yaml`: `envoy.yaml` plus Envoy's ratelimit filter.
pub fn shipped_envoy_config_path() -> PathBuf {
    repo_root().join("envoy").join("envoy-global-ratelimit.yaml")
}

/// `<root>/envoy/ratelimit/config.yaml`: the matching envoyproxy/ratelimit configuration.
pub fn shipped_service_config_path() -> PathBuf {
    repo_root().join("envoy").join("ratelimit").join("config.yaml")
}

/// One descriptor entry: (key, value).
pub type Entry = (String, String);

/// One `ShouldRateLimit` call, as the double received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RlsCall {
    pub domain: String,
    /// Each descriptor's entries, in order.
    pub descriptors: Vec<Vec<Entry>>,
    /// As sent: 0 means one hit.
    pub hits_addend: u32,
}

impl RlsCall {
    /// The value of the first entry named `key`, in any descriptor.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.descriptors.iter().flatten().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn from_request(request: RateLimitRequest) -> Self {
        let descriptors = request
            .descriptors
            .into_iter()
            .map(|descriptor| descriptor.entries.into_iter().map(|entry| (entry.key, entry.value)).collect())
            .collect();
        Self { domain: request.domain, descriptors, hits_addend: request.hits_addend }
    }
}

#[derive(Debug, Default)]
struct State {
    calls: Vec<RlsCall>,
    /// Entry → (hits left, the budget it was given). Entries not here are unlimited.
    budgets: BTreeMap<Entry, (u64, u64)>,
    /// Every call fails with this gRPC status code.
    failing: Option<tonic::Code>,
}

impl State {
    /// Records `call` and decides it. A descriptor is `OVER_LIMIT` when one of its
    /// entries has fewer hits left than the call's; otherwise it is `OK` and each of its
    /// budgeted entries pays. The call is `OVER_LIMIT` if any descriptor is.
    fn answer(&mut self, call: RlsCall) -> Result<RateLimitResponse, tonic::Status> {
        self.calls.push(call.clone());
        if let Some(code) = self.failing {
            return Err(tonic::Status::new(code, "the rate limit test double was told to fail"));
        }
        let hits = u64::from(call.hits_addend.max(1));
        let mut response = RateLimitResponse { overall_code: Code::Ok.into(), ..Default::default() };
        for descriptor in &call.descriptors {
            let over = descriptor.iter().find_map(|entry| match self.budgets.get(entry) {
                Some(&(left, budget)) if left < hits => Some(budget),
                _ => None,
            });
            let status = match over {
                Some(budget) => {
                    response.overall_code = Code::OverLimit.into();
                    DescriptorStatus {
                        code: Code::OverLimit.into(),
                        current_limit: Some(RateLimit {
                            name: "test-double".into(),
                            requests_per_unit: u32::try_from(budget).unwrap_or(u32::MAX),
                            unit: Unit::Minute.into(),
                        }),
                        limit_remaining: 0,
                        duration_until_reset: Some(ProtoDuration { seconds: RESET_SECONDS, nanos: 0 }),
                        ..Default::default()
                    }
                }
                None => {
                    for entry in descriptor {
                        if let Some((left, _)) = self.budgets.get_mut(entry) {
                            *left -= hits;
                        }
                    }
                    DescriptorStatus { code: Code::Ok.into(), ..Default::default() }
                }
            };
            response.statuses.push(status);
        }
        Ok(response)
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The gRPC service: every call goes through [`State::answer`].
struct Service {
    state: Arc<Mutex<State>>,
}

#[tonic::async_trait]
impl RateLimitService for Service {
    async fn should_rate_limit(
        &self,
        request: tonic::Request<RateLimitRequest>,
    ) -> Result<tonic::Response<RateLimitResponse>, tonic::Status> {
        let call = RlsCall::from_request(request.into_inner());
        lock(&self.state).answer(call).map(tonic::Response::new)
    }
}

/// A running rate limit service double; stopped when dropped.
#[derive(Debug)]
pub struct RateLimitDouble {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RateLimitDouble {
    /// Listens on an ephemeral 127.0.0.1 port; answers `OK` to everything until told
    /// otherwise.
    pub fn start() -> Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).context("binding the rate limit double")?;
        let addr = listener.local_addr().context("rate limit double address")?;
        listener.set_nonblocking(true).context("rate limit double listener")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the rate limit double's tokio runtime")?;
        let listener = {
            let _context = runtime.enter();
            tokio::net::TcpListener::from_std(listener).context("rate limit double listener")?
        };
        let state = Arc::new(Mutex::new(State::default()));
        let service = RateLimitServiceServer::new(Service { state: Arc::clone(&state) });
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = thread::Builder::new()
            .name("rls-double".into())
            .spawn(move || {
                let server = tonic::transport::Server::builder()
                    .serve_with_incoming(service, TcpIncoming::from(listener));
                runtime.spawn(async move {
                    if let Err(err) = server.await {
                        eprintln!("rate limit double: {err}");
                    }
                });
                // Sender sent or dropped: either way, stop.
                let _ = runtime.block_on(stopped);
                // Dropping the runtime cancels the server: the listener and every
                // connection close now, without a graceful GOAWAY.
                drop(runtime);
            })
            .context("spawning the rate limit double thread")?;
        Ok(Self { addr, state, stop: Some(stop), thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every call so far, oldest first.
    pub fn calls(&self) -> Vec<RlsCall> {
        lock(&self.state).calls.clone()
    }

    /// Every call so far, forgetting them.
    pub fn take_calls(&self) -> Vec<RlsCall> {
        std::mem::take(&mut lock(&self.state).calls)
    }

    /// Descriptors holding the entry `key` = `value` are `OK` for `hits` more hits,
    /// then `OVER_LIMIT`. Replaces an earlier budget of that entry.
    pub fn limit(&self, key: &str, value: &str, hits: u64) {
        lock(&self.state).budgets.insert((key.to_owned(), value.to_owned()), (hits, hits));
    }

    /// Descriptors holding the entry `key` = `value` are `OVER_LIMIT` from now on.
    pub fn over_limit(&self, key: &str, value: &str) {
        self.limit(key, value, 0);
    }

    /// Every call fails with gRPC `UNAVAILABLE` (`true`) or is answered again (`false`).
    pub fn fail(&self, failing: bool) {
        lock(&self.state).failing = failing.then_some(tonic::Code::Unavailable);
    }

    /// Closes the port and every connection. Idempotent.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RateLimitDouble {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry as PbEntry;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;

    use super::*;

    fn call(descriptors: &[&[(&str, &str)]]) -> RlsCall {
        RlsCall {
            domain: "d".into(),
            descriptors: descriptors
                .iter()
                .map(|d| d.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect())
                .collect(),
            hits_addend: 0,
        }
    }

    fn codes(response: &RateLimitResponse) -> (i32, Vec<i32>) {
        (response.overall_code, response.statuses.iter().map(|s| s.code).collect())
    }

    const OK: i32 = Code::Ok as i32;
    const OVER: i32 = Code::OverLimit as i32;

    #[test]
    fn budgets_count_per_entry_and_refusals_do_not_pay() {
        let mut state = State::default();
        state.budgets.insert(("id".into(), "a".into()), (2, 2));
        let a = call(&[&[("iss", "demo"), ("id", "a")]]);
        let b = call(&[&[("iss", "demo"), ("id", "b")]]);
        assert_eq!(codes(&state.answer(a.clone()).unwrap()), (OK, vec![OK]));
        assert_eq!(codes(&state.answer(b.clone()).unwrap()), (OK, vec![OK]));
        assert_eq!(codes(&state.answer(a.clone()).unwrap()), (OK, vec![OK]));
        let refused = state.answer(a.clone()).unwrap();
        assert_eq!(codes(&refused), (OVER, vec![OVER]));
        let status = &refused.statuses[0];
        assert_eq!(status.current_limit.as_ref().unwrap().requests_per_unit, 2);
        assert_eq!(status.duration_until_reset.as_ref().unwrap().seconds, RESET_SECONDS);
        assert_eq!(codes(&state.answer(b).unwrap()), (OK, vec![OK]));
        // A call with two descriptors is over if either is.
        let both = call(&[&[("id", "b")], &[("id", "a")]]);
        assert_eq!(codes(&state.answer(both).unwrap()), (OVER, vec![OK, OVER]));
        assert_eq!(state.calls.len(), 6);
        assert_eq!(state.calls[0].value("id"), Some("a"));
        assert_eq!(state.calls[0].value("nope"), None);
    }

    #[test]
    fn hits_addend_counts_and_failing_answers_an_error() {
        let mut state = State::default();
        state.budgets.insert(("id".into(), "a".into()), (3, 3));
        let mut two = call(&[&[("id", "a")]]);
        two.hits_addend = 2;
        assert_eq!(codes(&state.answer(two.clone()).unwrap()), (OK, vec![OK]));
        assert_eq!(codes(&state.answer(two).unwrap()), (OVER, vec![OVER]));
        state.failing = Some(tonic::Code::Unavailable);
        let err = state.answer(call(&[&[("id", "b")]])).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert_eq!(state.calls.len(), 3, "failed calls are recorded too");
    }

    /// The double over real gRPC, with the generated client, then stopped.
    #[test]
    fn answers_over_grpc_and_stop_closes_the_port() {
        let mut double = RateLimitDouble::start().unwrap();
        double.over_limit("nhi_identity", "robot-a");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let url = format!("http://{}", double.addr());
        let ask = |identity: &str| {
            let request = RateLimitRequest {
                domain: "nhi-guard".into(),
                descriptors: vec![RateLimitDescriptor {
                    entries: vec![PbEntry { key: "nhi_identity".into(), value: identity.into() }],
                    ..Default::default()
                }],
                hits_addend: 0,
            };
            runtime.block_on(async {
                let mut client = RateLimitServiceClient::connect(url.clone()).await?;
                let response = client.should_rate_limit(request).await?;
                anyhow::Ok(response.into_inner().overall_code)
            })
        };
        assert_eq!(ask("robot-a").unwrap(), OVER);
        assert_eq!(ask("robot-b").unwrap(), OK);
        let calls = double.take_calls();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].domain, "nhi-guard");
        assert_eq!(calls[1].descriptors, vec![vec![("nhi_identity".to_owned(), "robot-b".to_owned())]]);
        assert!(double.calls().is_empty());

        double.stop();
        assert!(ask("robot-b").is_err(), "the port must be closed after stop");
        assert!(std::net::TcpStream::connect(double.addr()).is_err());
    }
}
