//! The pipeline run natively, as a proxy with several workers runs it: one [`Vm`]
//! per worker, one shared store, the key-fetch machine driven by ticks, and each
//! request against an in-memory host ([`MemoryHost`]). No wasm, no proxy.
//!
//! It is the filter's own code path with the proxy replaced by memory: the test
//! harness runs the scenario table through it (beside the emulator and real Envoy),
//! and `nhi-guard explain` answers "what would the filter do with this request" with
//! it. The key server is a function of the callout, so a caller decides what each
//! issuer's JWKS (and discovery document) fetch returns.
//!
//! Runs as on an Envoy-grade host (shared data, timers, a clock): keys are fetched
//! in the background, exactly once per proxy, and a request that finds them missing
//! waits for the next tick. A request's own callout (a TokenReview) is answered at
//! once by the callout server the caller gives ([`NativeProxy::answer_callouts`]),
//! and the request is decided with that answer, as the filter's shell does.

use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;

use crate::config::Config;
use crate::host::capabilities::{HostSetting, Plan, PlanError, Probed};
use crate::host::memory::MemoryHost;
use crate::host::store::MemoryStore;
use crate::host::HttpCall;
use crate::keys::fetch::{Callout, Document, Next, Response};
use crate::pipeline::trace::Trace;
use crate::pipeline::{self, Request, StartError, Step, Vm};

/// How the key server answers a callout: status and body.
pub type KeyServer = dyn Fn(&Callout) -> (u16, String);

/// How a callout a request makes itself (a TokenReview) is answered: status and
/// body, or `None` for no answer at all (refused, reset, timed out).
pub type CalloutServer = dyn Fn(&HttpCall) -> Option<(u16, String)>;

/// Most callouts one fetch may chain (a discovery document, then the JWKS).
const MAX_CALLOUTS_PER_FETCH: usize = 4;

/// Most times one request is run again (after a wait, or its callout's answer): a
/// request waits for documents once and reviews once, so a few rounds decide it.
const MAX_ROUNDS_PER_REQUEST: usize = 4;

/// Why the native proxy could not do what it was asked.
#[derive(Debug)]
pub enum NativeError {
    /// The host plan could not be chosen.
    Plan(PlanError),
    /// A worker refused to start with this configuration.
    Start(StartError),
    /// There is no worker with this index.
    NoWorker(usize),
    /// A fetch (a JWKS or the revocation feed) kept asking for callouts.
    EndlessFetch { document: Document },
}

impl fmt::Display for NativeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NativeError::Plan(err) => write!(f, "no host plan: {err}"),
            NativeError::Start(err) => write!(f, "the filter would not start: {err}"),
            NativeError::NoWorker(index) => write!(f, "there is no worker {index}"),
            NativeError::EndlessFetch { document } => write!(
                f,
                "a fetch of the {} asked for more than {MAX_CALLOUTS_PER_FETCH} callouts",
                document.what()
            ),
        }
    }
}

impl std::error::Error for NativeError {}

/// One request as a client sends it.
#[derive(Debug, Clone)]
pub struct NativeRequest {
    pub method: String,
    /// Path and query, as `:path`.
    pub path: String,
    /// `:authority`.
    pub authority: String,
    /// The downstream address (`ip:port`, Envoy's `source.address`); `None`: unknown.
    pub source: Option<String>,
    /// Every other header, in order, as bytes.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The request's content; `None`: the headers end the stream.
    pub body: Option<Vec<u8>>,
    /// Collect a [`Trace`] of the decision (`nhi-guard explain`).
    pub trace: bool,
}

impl NativeRequest {
    pub fn new(method: &str, path: &str) -> Self {
        NativeRequest {
            method: method.to_owned(),
            path: path.to_owned(),
            authority: "gateway.test".to_owned(),
            source: Some("127.0.0.1:40000".to_owned()),
            headers: Vec::new(),
            body: None,
            trace: false,
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }
}

/// A proxy of `workers` VMs sharing one store.
pub struct NativeProxy {
    pub workers: Vec<Vm>,
    pub store: Rc<MemoryStore>,
    /// The proxy's clock, Unix milliseconds: moves only when the caller moves it.
    pub now_ms: u64,
    key_server: Box<KeyServer>,
    callout_server: Box<CalloutServer>,
    next_token: u32,
}

impl NativeProxy {
    /// Starts `workers` VMs with `config`, then ticks until the first fetches are
    /// answered and every worker holds the published keys.
    pub fn start(
        config: &Config,
        workers: usize,
        now_ms: u64,
        key_server: Box<KeyServer>,
    ) -> Result<Self, NativeError> {
        NativeProxy::start_with_environment(config, workers, now_ms, key_server, &BTreeMap::new())
    }

    /// [`NativeProxy::start`] with `environment` as each VM's environment (where
    /// partner secrets are read from).
    pub fn start_with_environment(
        config: &Config,
        workers: usize,
        now_ms: u64,
        key_server: Box<KeyServer>,
        environment: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Self, NativeError> {
        let plan = Plan::choose(HostSetting::Auto, Probed { shared_data: true, timers: true, clock: true })
            .map_err(NativeError::Plan)?;
        let store = Rc::new(MemoryStore::new());
        let mut started = Vec::with_capacity(workers);
        for me in 0..workers {
            let mut host = MemoryHost::new(now_ms.saturating_mul(1_000_000));
            host.environment.clone_from(environment);
            let vm = Vm::start(
                config.clone(),
                plan,
                Box::new(Rc::clone(&store)),
                &mut host,
                now_ms,
                me as u64 + 1,
            )
            .map_err(NativeError::Start)?;
            started.push(vm);
        }
        let mut proxy = NativeProxy {
            workers: started,
            store,
            now_ms,
            key_server,
            callout_server: Box::new(|_| None),
            next_token: 1,
        };
        // The first tick fetches the keys; the next ones let the other workers pick
        // them up.
        for _ in 0..3 {
            proxy.tick()?;
        }
        Ok(proxy)
    }

    /// Answers the callouts requests make (TokenReviews) with `server` from now on.
    /// Until then a callout gets no answer, as from a cluster that refuses
    /// connections: the configuration's `on_unavailable` decides.
    pub fn answer_callouts(&mut self, server: Box<CalloutServer>) {
        self.callout_server = server;
    }

    pub fn worker(&self, index: usize) -> Result<&Vm, NativeError> {
        self.workers.get(index).ok_or(NativeError::NoWorker(index))
    }

    /// One tick of every worker: published keys picked up, due fetches made (and
    /// answered at once by the key server).
    pub fn tick(&mut self) -> Result<(), NativeError> {
        for index in 0..self.workers.len() {
            let vm = self.worker(index)?;
            let tick = vm.fetch_tick(self.now_ms);
            for callout in tick.callouts {
                self.call(index, callout)?;
            }
        }
        Ok(())
    }

    fn call(&mut self, worker: usize, mut callout: Callout) -> Result<(), NativeError> {
        for _ in 0..MAX_CALLOUTS_PER_FETCH {
            let token = self.next_token;
            self.next_token = self.next_token.wrapping_add(1);
            let vm = self.worker(worker)?;
            vm.fetch_dispatched(callout.ticket, Ok(token), self.now_ms, 0.0);
            let (status, body) = (self.key_server)(&callout);
            let response = Response { status: Some(status), body: Ok(body.into_bytes()) };
            let next = vm.fetch_answered(token, response, self.now_ms, 0.0);
            match next {
                Some(Next::Call(next)) => callout = next,
                _ => return Ok(()),
            }
        }
        Err(NativeError::EndlessFetch { document: callout.ticket.document })
    }

    /// One request on `worker`: the pipeline from the request headers to the
    /// decision line, the upstream answering 200. A request that waits for keys is
    /// decided again after one tick, as the filter's shell does when keys arrive; one
    /// that made a callout is decided again with the callout server's answer.
    pub fn send(&mut self, worker: usize, sent: &NativeRequest) -> Result<Exchange, NativeError> {
        let mut host = MemoryHost::new(self.now_ms.saturating_mul(1_000_000))
            .header(":method", sent.method.as_str())
            .header(":path", sent.path.as_str())
            .header(":authority", sent.authority.as_str())
            .header(":scheme", "http");
        if let Some(source) = &sent.source {
            host = host.property(&["source", "address"], source.as_str());
        }
        for (name, value) in &sent.headers {
            host = host.header(name, value.clone());
        }
        if let Some(body) = &sent.body {
            host = host.with_body(body.clone());
        }
        let mut request = Request::new(1);
        request.has_body = sent.body.is_some();
        if sent.trace {
            request.trace = Some(Box::default());
        }
        let mut step = pipeline::start(self.worker(worker)?, &mut host, &mut request);
        for _ in 0..MAX_ROUNDS_PER_REQUEST {
            step = match step {
                Step::Wait { .. } if !request.waited => {
                    self.tick()?;
                    request.waited = true;
                    pipeline::run(self.worker(worker)?, &mut host, &mut request, self.now_ms)
                }
                Step::Called { token } => {
                    let call = host.callouts.iter().find(|(t, _)| *t == token).map(|(_, call)| call.clone());
                    let response = match call.and_then(|call| (self.callout_server)(&call)) {
                        Some((status, body)) => {
                            Response { status: Some(status), body: Ok(body.into_bytes()) }
                        }
                        None => Response { status: None, body: Ok(Vec::new()) },
                    };
                    let vm = self.worker(worker)?;
                    match pipeline::answered(vm, &mut host, &mut request, token, response, self.now_ms) {
                        Some(next) => next,
                        None => break,
                    }
                }
                _ => break,
            };
        }
        // A signature that covers the body: the whole body arrives at once.
        if let Step::Body { .. } = step {
            let length = sent.body.as_ref().map_or(0, Vec::len);
            step = pipeline::body(self.worker(worker)?, &mut host, &mut request, length, true);
        }
        let vm = self.worker(worker)?;
        if step == Step::Continue {
            pipeline::respond(&mut host, &request);
        }
        pipeline::finish(vm, &mut host, &mut request);
        Ok(Exchange { step, host, request })
    }
}

/// What came of one native request: the last step, the host as the pipeline left
/// it (request headers as the upstream gets them, the local reply if one was sent,
/// response headers, metrics, filter state) and the request's record and trace.
#[derive(Debug)]
pub struct Exchange {
    pub step: Step,
    pub host: MemoryHost,
    pub request: Request,
}

impl Exchange {
    /// Whether the request reached the upstream.
    pub fn forwarded(&self) -> bool {
        self.step == Step::Continue
    }

    /// The status the client got: the local reply's, or the upstream's 200.
    pub fn status(&self) -> u16 {
        match (&self.host.reply, self.forwarded()) {
            (Some(reply), _) => reply.status,
            (None, true) => 200,
            (None, false) => 0,
        }
    }

    /// The trace, when the request asked for one.
    pub fn trace(&self) -> Option<&Trace> {
        self.request.trace.as_deref()
    }
}
