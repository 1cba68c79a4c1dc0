//! A proxy-wasm host emulator: runs the release `nhi_guard.wasm` in-process on
//! wasmtime and drives it through the proxy-wasm ABI 0.2.1, the way Envoy or APISIX
//! would, without starting either.
//!
//! It is state-based, not a script of expected host calls: a test feeds inputs —
//! configuration, requests (headers and properties), the clock, callout answers —
//! and reads outputs — the headers the upstream would get, whether a request went
//! on, waits or was answered locally (status, headers, body), pending callouts,
//! shared data, metrics, log lines, traps, host-call counts, and anything the real
//! host would not have survived (see [`Worker::violations`]).
//!
//! A [`Host`] is one proxy: a [`Profile`] (Envoy-like or one of two APISIX-like
//! behaviours), one clock and one shared-data store for all of its [`Worker`]s
//! (VMs). Time only moves when the test moves it ([`Host::advance`]), which also
//! delivers due ticks and callout timeouts in time order.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use test_harness::emulator::{Host, Profile, Request};
//! let mut host = Host::new(Profile::Full)?;
//! let worker = host.start_worker(br#"{"issuers": []}"#)?;
//! let exchange = host.worker(worker)?.send(&Request::get("/api/x"))?;
//! println!("{} {:?}", exchange.status, exchange.reason());
//! # Ok(()) }
//! ```

pub mod abi;
mod env;
pub mod imports;
mod memory;
mod profile;
mod state;
mod wasi;

use std::cell::Ref;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use wasmtime::{Engine, ExternType, Instance, Linker, Module, Store, TypedFunc, Val, ValType};

pub use abi::{Headers, Status};
pub use imports::{HostApi, Interface, Problem};
pub use profile::Profile;
pub use state::{
    Callout, CalloutReply, Flow, LocalReply, LogLine, Metric, MetricKind, SharedData, SharedEntry, Stream,
};

use state::{Scope, Shared, VmState};

/// Context id of every worker's root context (Envoy and APISIX both start at 1).
pub const ROOT_CONTEXT_ID: u32 = 1;

/// Bound on the events one [`Host::advance`] delivers (ticks and timeouts).
const MAX_EVENTS_PER_ADVANCE: usize = 1_000_000;

/// A compiled module, shared by every host of the process (compiling the filter with
/// Cranelift takes a while; instantiating it is cheap). Threads asking at once wait
/// for one compilation, and the compiled code is kept on disk
/// (`target/emulator-modules/`, by the module's SHA-256) for the next test process:
/// on 2 cores an unoptimised Cranelift takes ~30 s for the filter, per process.
fn compiled(path: &Path) -> Result<(Engine, Module)> {
    type Compiled = HashMap<(PathBuf, SystemTime), (Engine, Module)>;
    static CACHE: OnceLock<Mutex<Compiled>> = OnceLock::new();
    let modified = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .with_context(|| format!("reading {}", path.display()))?;
    let key = (path.to_path_buf(), modified);
    // Held while compiling: a second thread waits for the module instead of
    // compiling it again beside the first.
    let mut cache =
        CACHE.get_or_init(|| Mutex::new(HashMap::new())).lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(found) = cache.get(&key) {
        return Ok(found.clone());
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let engine = engine()?;
    let module =
        compile_or_load(&engine, &bytes).map_err(|e| anyhow!("compiling {}: {e:#}", path.display()))?;
    cache.insert(key, (engine.clone(), module.clone()));
    Ok((engine, module))
}

/// Set (to anything) to have the engine write `/tmp/perf-<pid>.map`, which names the
/// compiled wasm functions in `perf` profiles (`make wasm-profile`).
pub const PERFMAP_ENV: &str = "NHI_EMULATOR_PERFMAP";

fn engine() -> Result<Engine> {
    if std::env::var_os(PERFMAP_ENV).is_none() {
        return Ok(Engine::default());
    }
    let mut config = wasmtime::Config::new();
    config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    Engine::new(&config).map_err(|e| anyhow!("an engine with perf maps: {e:#}"))
}

/// `bytes` compiled, from the on-disk copy when an earlier process left one.
fn compile_or_load(engine: &Engine, bytes: &[u8]) -> Result<Module> {
    let dir = crate::envoy_config::repo_root().join("target/emulator-modules");
    let digest = crate::sha256_hex(bytes);
    let file = dir.join(format!("{digest}.cwasm"));
    if file.is_file() {
        // SAFETY: `deserialize_file` runs native code from the file. The file is one
        // this function wrote (below) into the workspace's own target directory,
        // named by the SHA-256 of the module it was compiled from; wasmtime refuses
        // one written by another wasmtime version or engine configuration (then we
        // compile again).
        if let Ok(module) = unsafe { Module::deserialize_file(engine, &file) } {
            return Ok(module);
        }
    }
    let module = Module::new(engine, bytes).map_err(|e| anyhow!("{e:#}"))?;
    // Best effort: a cache that cannot be written only costs the next process time.
    if let Ok(serialized) = module.serialize() {
        let partial = dir.join(format!("{digest}.{}.partial", std::process::id()));
        if std::fs::create_dir_all(&dir).is_ok() && std::fs::write(&partial, serialized).is_ok() {
            let _ = std::fs::rename(&partial, &file);
        }
    }
    Ok(module)
}

/// An HTTP request as the downstream client sends it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub authority: String,
    pub scheme: String,
    /// Regular headers (names are lower-cased on the way in).
    pub headers: Headers,
    /// The client's address: Envoy's `source.address`, nginx's `$remote_addr`.
    pub source: SocketAddr,
    /// Extra properties (Envoy: path segments; APISIX: one variable name).
    pub properties: Vec<(Vec<String>, Vec<u8>)>,
    /// Nginx variables `proxy_set_property` may write (APISIX profiles).
    pub writable_variables: Vec<String>,
}

impl Request {
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.to_owned(),
            path: path.to_owned(),
            authority: "gateway.test".into(),
            scheme: "http".into(),
            headers: Vec::new(),
            source: SocketAddr::from(([127, 0, 0, 1], 40_000)),
            properties: Vec::new(),
            writable_variables: Vec::new(),
        }
    }

    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    pub fn header(self, name: &str, value: &str) -> Self {
        self.header_bytes(name, value.as_bytes())
    }

    /// A header whose value is any bytes (not UTF-8, obs-text), as a client may send.
    pub fn header_bytes(mut self, name: &str, value: &[u8]) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.to_vec()));
        self
    }

    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    pub fn authority(mut self, authority: &str) -> Self {
        self.authority = authority.to_owned();
        self
    }

    pub fn source(mut self, source: SocketAddr) -> Self {
        self.source = source;
        self
    }

    pub fn property(mut self, path: &[&str], value: impl Into<Vec<u8>>) -> Self {
        self.properties.push((path.iter().map(|s| (*s).to_owned()).collect(), value.into()));
        self
    }
}

/// What the upstream answers a request that reaches it.
#[derive(Clone, Debug)]
pub struct UpstreamResponse {
    pub status: u16,
    pub headers: Headers,
    pub body: Vec<u8>,
}

impl UpstreamResponse {
    pub fn ok() -> Self {
        Self {
            status: 200,
            headers: vec![("content-type".into(), b"text/plain".to_vec())],
            body: b"upstream".to_vec(),
        }
    }
}

/// A request from start to end, as the client and the upstream saw it.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub id: u32,
    /// The status the client got.
    pub status: u16,
    /// The response headers the client got (after the filter's response callback).
    pub headers: Headers,
    pub body: Vec<u8>,
    /// The request headers the upstream got; `None` if the filter answered itself.
    pub upstream_request: Option<Headers>,
    /// Values the filter set with `proxy_set_property`.
    pub set_properties: BTreeMap<String, Vec<u8>>,
}

impl Exchange {
    /// The first value of response header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        find(&self.headers, name)
    }

    /// The first value of request header `name` as the upstream got it (`None` also
    /// when it is not UTF-8: see [`Exchange::upstream_header_bytes`]).
    pub fn upstream_header(&self, name: &str) -> Option<&str> {
        self.upstream_header_bytes(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every value of request header `name` as the upstream got it, whatever its bytes.
    pub fn upstream_header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.upstream_request.as_deref().and_then(|headers| find_bytes(headers, name))
    }

    /// Whether the upstream got any header named `name` with any value.
    pub fn upstream_has(&self, name: &str) -> bool {
        self.upstream_header_bytes(name).is_some()
    }

    /// The body as JSON, if it is JSON.
    pub fn body_json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The `reason` of a refusal body.
    pub fn reason(&self) -> Option<String> {
        self.body_json()?.get("reason")?.as_str().map(str::to_owned)
    }
}

fn find<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
    find_bytes(headers, name).and_then(|v| std::str::from_utf8(v).ok())
}

fn find_bytes<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
}

/// `proxy_on_http_call_response(context, token, headers, body size, trailers)`.
type CallResponseArgs = (i32, i32, i32, i32, i32);

/// The guest's exported callbacks.
struct Callbacks {
    context_create: TypedFunc<(i32, i32), ()>,
    vm_start: Option<TypedFunc<(i32, i32), i32>>,
    configure: TypedFunc<(i32, i32), i32>,
    request_headers: TypedFunc<(i32, i32, i32), i32>,
    response_headers: TypedFunc<(i32, i32, i32), i32>,
    log: Option<TypedFunc<i32, ()>>,
    done: TypedFunc<i32, i32>,
    delete: TypedFunc<i32, ()>,
    tick: Option<TypedFunc<i32, ()>>,
    http_call_response: Option<TypedFunc<CallResponseArgs, ()>>,
}

impl Callbacks {
    fn find(instance: &Instance, store: &mut Store<VmState>) -> Result<Self> {
        macro_rules! required {
            ($name:literal) => {
                instance.get_typed_func(&mut *store, $name).map_err(|e| anyhow!("export {}: {e:#}", $name))?
            };
        }
        macro_rules! optional {
            ($name:literal) => {
                instance.get_typed_func(&mut *store, $name).ok()
            };
        }
        Ok(Self {
            context_create: required!("proxy_on_context_create"),
            vm_start: optional!("proxy_on_vm_start"),
            configure: required!("proxy_on_configure"),
            request_headers: required!("proxy_on_request_headers"),
            response_headers: required!("proxy_on_response_headers"),
            log: optional!("proxy_on_log"),
            done: required!("proxy_on_done"),
            delete: required!("proxy_on_delete"),
            tick: optional!("proxy_on_tick"),
            http_call_response: optional!("proxy_on_http_call_response"),
        })
    }
}

/// One wasm VM of a [`Host`] (an Envoy worker thread, an nginx worker process).
pub struct Worker {
    store: Store<VmState>,
    callbacks: Callbacks,
    next_context: u32,
    configured: bool,
    trap: Option<String>,
    next_request_id: u64,
}

impl Worker {
    fn start(host: &Host, plugin_configuration: &[u8], seed: u64) -> Result<Self> {
        let state = VmState::new(host.profile, Rc::clone(&host.shared), plugin_configuration.to_vec(), seed);
        let mut store = Store::new(&host.engine, state);
        let instance = host
            .linker
            .instantiate(&mut store, &host.module)
            .map_err(|e| anyhow!("instantiating the filter: {e:#}"))?;
        let memory = instance.get_memory(&mut store, "memory").context("the module exports no memory")?;
        let allocate = instance
            .get_typed_func::<i32, i32>(&mut store, "proxy_on_memory_allocate")
            .map_err(|e| anyhow!("export proxy_on_memory_allocate: {e:#}"))?;
        store.data_mut().memory = Some(memory);
        store.data_mut().allocate = Some(allocate);
        let callbacks = Callbacks::find(&instance, &mut store)?;
        let mut worker = Worker {
            store,
            callbacks,
            next_context: ROOT_CONTEXT_ID + 1,
            configured: false,
            trap: None,
            next_request_id: 1,
        };
        // A trap while starting leaves the worker crashed and unconfigured: the test
        // reads `trap()` and the log.
        if let Err(err) = worker.boot(&instance, host.profile, plugin_configuration.len()) {
            if worker.trap.is_none() {
                return Err(err);
            }
        }
        Ok(worker)
    }

    /// `_initialize`, the root context, `proxy_on_vm_start` (not on APISIX, which goes
    /// straight from context creation to configuration) and `proxy_on_configure`.
    fn boot(&mut self, instance: &Instance, profile: Profile, configuration_size: usize) -> Result<()> {
        for start in ["_initialize", "_start"] {
            if let Ok(function) = instance.get_typed_func::<(), ()>(&mut self.store, start) {
                self.guest(Scope::Root("_initialize"), ROOT_CONTEXT_ID, |store| function.call(store, ()))?;
                break;
            }
        }
        let create = self.callbacks.context_create.clone();
        let root = ROOT_CONTEXT_ID as i32;
        self.guest(Scope::Root("proxy_on_context_create"), ROOT_CONTEXT_ID, |s| create.call(s, (root, 0)))?;
        if let (false, Some(vm_start)) = (profile.is_apisix(), self.callbacks.vm_start.clone()) {
            let started = self
                .guest(Scope::Root("proxy_on_vm_start"), ROOT_CONTEXT_ID, |s| vm_start.call(s, (root, 0)))?;
            if started == 0 {
                return Ok(());
            }
        }
        let configure = self.callbacks.configure.clone();
        let size = to_i32(configuration_size);
        let configured = self
            .guest(Scope::Root("proxy_on_configure"), ROOT_CONTEXT_ID, |s| configure.call(s, (root, size)))?;
        self.configured = configured != 0;
        Ok(())
    }

    /// Runs a guest callback in `scope` with `effective` as the effective context; a
    /// trap marks the worker crashed and is returned as an error.
    fn guest<R>(
        &mut self,
        scope: Scope,
        effective: u32,
        call: impl FnOnce(&mut Store<VmState>) -> wasmtime::Result<R>,
    ) -> Result<R> {
        if let Some(trap) = &self.trap {
            bail!("the VM crashed earlier: {trap}");
        }
        self.store.data_mut().scope = scope;
        self.store.data_mut().effective = effective;
        let result = call(&mut self.store);
        self.store.data_mut().scope = Scope::Idle;
        self.store.data_mut().effective = ROOT_CONTEXT_ID;
        result.map_err(|err| {
            let what = match scope {
                Scope::Root(name) | Scope::Request(_, name) => name,
                Scope::Idle => "a callback",
            };
            let message = format!("trap in {what}: {err:#}");
            self.trap = Some(message.clone());
            anyhow!(message)
        })
    }

    fn state(&self) -> &VmState {
        self.store.data()
    }

    /// Whether `proxy_on_configure` accepted the configuration.
    pub fn configured(&self) -> bool {
        self.configured
    }

    /// The trap that crashed this VM, if one did.
    pub fn trap(&self) -> Option<&str> {
        self.trap.as_deref()
    }

    pub fn profile(&self) -> Profile {
        self.state().profile
    }

    /// Everything the filter logged (`proxy_log` and WASI output), oldest first.
    pub fn logs(&self) -> &[LogLine] {
        &self.state().logs
    }

    /// The log as text, one line per entry.
    pub fn log_text(&self) -> String {
        self.logs().iter().map(|line| line.message.as_str()).collect::<Vec<_>>().join("\n")
    }

    /// Host calls made so far, by function name.
    pub fn host_calls(&self) -> &BTreeMap<String, u64> {
        &self.state().host_calls
    }

    /// Makes every later call of `env` import `name` (`proxy_get_shared_data`, …) fail
    /// with `status` and do nothing, as a host that cannot serve it would.
    pub fn fail_calls(&mut self, name: &str, status: Status) {
        self.store.data_mut().faults.insert(name.to_owned(), status);
    }

    /// Ends every injected fault.
    pub fn heal(&mut self) {
        self.store.data_mut().faults.clear();
    }

    pub fn reset_host_calls(&mut self) {
        self.store.data_mut().host_calls.clear();
    }

    /// What the real host would not have survived, or would have refused.
    pub fn violations(&self) -> &[String] {
        &self.state().violations
    }

    /// Imports the guest called that the emulator only stubs (each answered
    /// `Unimplemented` or `ENOSYS`).
    pub fn unemulated_calls(&self) -> &[String] {
        &self.state().unemulated
    }

    /// Callouts waiting for an answer, by token.
    pub fn callouts(&self) -> Vec<Callout> {
        self.state().callouts.values().cloned().collect()
    }

    /// The tick period the filter asked for (0: none).
    pub fn tick_period(&self) -> Duration {
        Duration::from_millis(u64::from(self.state().tick_period_ms))
    }

    pub fn stream(&self, id: u32) -> Option<&Stream> {
        self.state().streams.get(&id)
    }

    /// Properties the filter set on the root context.
    pub fn root_properties(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.state().root_set_properties
    }

    /// Sets a worker-wide property (Envoy: a path, e.g. `["node", "id"]`), seen by
    /// every request that does not set its own.
    pub fn set_worker_property(&mut self, path: &[&str], value: impl Into<Vec<u8>>) {
        self.store.data_mut().properties.insert(path.iter().map(|s| (*s).to_owned()).collect(), value.into());
    }

    /// Starts `request`: creates its context and runs `proxy_on_request_headers`.
    /// Returns its context id; [`Worker::stream`] tells whether it went on, waits or
    /// was answered.
    pub fn start_request(&mut self, request: &Request) -> Result<u32> {
        if !self.configured {
            bail!("the plugin is not configured (proxy_on_configure refused the configuration)");
        }
        let id = self.next_context;
        self.next_context += 1;
        let request_id = format!("req-{:04}", self.next_request_id);
        self.next_request_id += 1;
        let stream = build_stream(self.profile(), id, request, &request_id);
        // APISIX passes 0 for the header count (ngx_http_wasm_on_http).
        let header_count = if self.profile().is_apisix() { 0 } else { to_i32(stream.request_headers.len()) };
        self.store.data_mut().streams.insert(id, stream);
        let create = self.callbacks.context_create.clone();
        let (cid, root) = (id as i32, ROOT_CONTEXT_ID as i32);
        self.guest(Scope::Request(id, "proxy_on_context_create"), id, |s| create.call(s, (cid, root)))?;
        let on_headers = self.callbacks.request_headers.clone();
        let action = self.guest(Scope::Request(id, "proxy_on_request_headers"), id, |s| {
            on_headers.call(s, (cid, header_count, 1))
        })?;
        self.settle(id, Some(action));
        Ok(id)
    }

    /// Where a request stands after a callback: Envoy follows the returned action
    /// and later `proxy_continue_stream`; APISIX runs a registered callout first,
    /// then a local response, and otherwise always goes on.
    fn settle(&mut self, id: u32, action: Option<i32>) {
        let state = self.store.data_mut();
        let apisix = state.profile.is_apisix();
        let has_callout = state.callouts.values().any(|c| c.context == id);
        let mut violation = None;
        if let Some(stream) = state.streams.get_mut(&id) {
            if action == Some(abi::action::PAUSE) {
                stream.paused_by_filter = true;
            }
            if apisix {
                let replied = matches!(stream.flow, Flow::Replied(_));
                stream.flow = if has_callout {
                    // The callout comes first; a local response sent with it is lost.
                    Flow::Paused
                } else if replied {
                    stream.flow.clone()
                } else if action == Some(abi::action::PAUSE) {
                    violation = Some(format!(
                        "request {id}: proxy_on_request_headers returned Pause with neither a callout nor a local \
                         response; APISIX reads Pause (1) as RC_NEED_HTTP_CALL and dereferences a NULL callout"
                    ));
                    Flow::Paused
                } else {
                    Flow::Continued
                };
            } else if stream.flow == Flow::Paused && action == Some(abi::action::CONTINUE) {
                stream.flow = Flow::Continued;
            }
        }
        if let Some(violation) = violation {
            state.violations.push(violation);
        }
    }

    /// Answers callout `token` (`None`: it failed — refused, reset or timed out).
    /// Envoy calls back the context that made it; APISIX calls back with the root
    /// context id while the request is the current one, then the request goes on
    /// unless the filter answered it or made another callout.
    pub fn answer_callout(&mut self, token: u32, reply: Option<CalloutReply>) -> Result<()> {
        let callout = self
            .store
            .data_mut()
            .callouts
            .remove(&token)
            .with_context(|| format!("no pending callout with token {token}"))?;
        let apisix = self.profile().is_apisix();
        let reply = reply.map(|mut reply| {
            reply.headers.retain(|(n, _)| n != ":status");
            let status = (":status".to_owned(), reply.status.to_string().into_bytes());
            if apisix {
                reply.headers.push(status);
            } else {
                reply.headers.insert(0, status);
            }
            reply
        });
        let (headers, body) = match &reply {
            Some(reply) => (reply.headers.len(), reply.body.len()),
            None => (0, 0),
        };
        self.store.data_mut().answering = Some(reply);
        let callback = self
            .callbacks
            .http_call_response
            .clone()
            .context("the module does not export proxy_on_http_call_response")?;
        let target = if apisix { ROOT_CONTEXT_ID } else { callout.context };
        let scope = if callout.context == ROOT_CONTEXT_ID {
            Scope::Root("proxy_on_http_call_response")
        } else {
            Scope::Request(callout.context, "proxy_on_http_call_response")
        };
        let args = (target as i32, token as i32, to_i32(headers), to_i32(body), 0);
        let result = self.guest(scope, callout.context, |s| callback.call(s, args));
        self.store.data_mut().answering = None;
        result?;
        if apisix && callout.context != ROOT_CONTEXT_ID {
            self.settle(callout.context, None);
        }
        Ok(())
    }

    /// Runs `proxy_on_tick` once (only hosts with timers tick; see [`Host::advance`]).
    fn tick(&mut self) -> Result<()> {
        if let Some(tick) = self.callbacks.tick.clone() {
            self.guest(Scope::Root("proxy_on_tick"), ROOT_CONTEXT_ID, |s| {
                tick.call(s, ROOT_CONTEXT_ID as i32)
            })?;
        }
        Ok(())
    }

    /// Ends request `id` with `upstream`'s answer if it went on (the local reply
    /// otherwise): runs the response callback, then log (Envoy), done and delete.
    pub fn finish(&mut self, id: u32, upstream: &UpstreamResponse) -> Result<Exchange> {
        let stream = self.stream(id).with_context(|| format!("no request {id}"))?.clone();
        if stream.finished {
            bail!("request {id} is already finished");
        }
        let (status, mut headers, body, upstream_request) = match &stream.flow {
            Flow::Paused => bail!("request {id} is still paused (pending callouts: {:?})", self.callouts()),
            Flow::Continued => (
                upstream.status,
                upstream.headers.clone(),
                upstream.body.clone(),
                Some(stream.request_headers.clone()),
            ),
            Flow::Replied(reply) => (reply.status, reply.headers.clone(), reply.body.clone(), None),
        };
        headers.insert(0, (":status".into(), status.to_string().into_bytes()));
        let count = if self.profile().is_apisix() { 0 } else { to_i32(headers.len()) };
        if let Some(stream) = self.store.data_mut().streams.get_mut(&id) {
            stream.response_headers = Some(headers);
        }
        let on_headers = self.callbacks.response_headers.clone();
        let cid = id as i32;
        self.guest(Scope::Request(id, "proxy_on_response_headers"), id, |s| {
            on_headers.call(s, (cid, count, 1))
        })?;
        self.end(id)?;
        let stream = self.stream(id).with_context(|| format!("request {id} vanished"))?;
        let mut headers = stream.response_headers.clone().unwrap_or_default();
        headers.retain(|(n, _)| n != ":status");
        Ok(Exchange {
            id,
            status,
            headers,
            body,
            upstream_request,
            set_properties: stream.set_properties.clone(),
        })
    }

    /// The client went away (or the request ended) without a response phase.
    pub fn abort(&mut self, id: u32) -> Result<()> {
        self.end(id)
    }

    fn end(&mut self, id: u32) -> Result<()> {
        let cid = id as i32;
        if !self.profile().is_apisix() {
            if let Some(log) = self.callbacks.log.clone() {
                self.guest(Scope::Request(id, "proxy_on_log"), id, |s| log.call(s, cid))?;
            }
        }
        let done = self.callbacks.done.clone();
        self.guest(Scope::Request(id, "proxy_on_done"), id, |s| done.call(s, cid))?;
        let delete = self.callbacks.delete.clone();
        self.guest(Scope::Request(id, "proxy_on_delete"), id, |s| delete.call(s, cid))?;
        let state = self.store.data_mut();
        // Envoy cancels the callouts of a request that ends.
        state.callouts.retain(|_, c| c.context != id);
        if let Some(stream) = state.streams.get_mut(&id) {
            stream.finished = true;
        }
        Ok(())
    }

    /// Sends `request` and, unless it waits, completes it with a 200 from the
    /// upstream. A request that waits is an error here: use [`Worker::start_request`].
    pub fn send(&mut self, request: &Request) -> Result<Exchange> {
        let id = self.start_request(request)?;
        self.finish(id, &UpstreamResponse::ok())
    }
}

fn to_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// A request as `profile`'s host presents it to the filter.
fn build_stream(profile: Profile, id: u32, request: &Request, request_id: &str) -> Stream {
    let mut headers: Headers = Vec::new();
    let mut properties: BTreeMap<Vec<String>, Vec<u8>> = BTreeMap::new();
    let path_only = request.path.split('?').next().unwrap_or_default().to_owned();
    let ip = request.source.ip().to_string();
    let port = request.source.port();
    let own: Headers = request.headers.iter().map(|(n, v)| (n.to_ascii_lowercase(), v.clone())).collect();
    let key = |segments: &[&str]| segments.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    if profile.is_apisix() {
        // nginx: no :authority pseudo-header (the Host header is a regular one).
        headers.push((":path".into(), request.path.clone().into_bytes()));
        headers.push((":method".into(), request.method.clone().into_bytes()));
        headers.push((":scheme".into(), request.scheme.clone().into_bytes()));
        headers.push(("host".into(), request.authority.clone().into_bytes()));
        headers.extend(own.iter().cloned());
        let vars = [
            ("remote_addr", ip.clone()),
            ("remote_port", port.to_string()),
            ("server_addr", "127.0.0.1".to_owned()),
            ("server_port", "9080".to_owned()),
            ("scheme", request.scheme.clone()),
            ("host", request.authority.clone()),
            ("request_method", request.method.clone()),
            ("uri", path_only),
            ("request_uri", request.path.clone()),
        ];
        for (name, value) in vars {
            properties.insert(key(&[name]), value.into_bytes());
        }
        for (name, value) in &own {
            properties
                .entry(vec![format!("http_{}", name.replace('-', "_"))])
                .or_insert_with(|| value.clone());
        }
    } else {
        headers.push((":authority".into(), request.authority.clone().into_bytes()));
        headers.push((":path".into(), request.path.clone().into_bytes()));
        headers.push((":method".into(), request.method.clone().into_bytes()));
        headers.push((":scheme".into(), request.scheme.clone().into_bytes()));
        headers.extend(own.iter().cloned());
        if !own.iter().any(|(n, _)| n == "x-request-id") {
            headers.push(("x-request-id".into(), request_id.as_bytes().to_vec()));
        }
        headers.push(("x-forwarded-proto".into(), request.scheme.clone().into_bytes()));
        properties.insert(key(&["source", "address"]), request.source.to_string().into_bytes());
        properties.insert(key(&["source", "port"]), u64::from(port).to_le_bytes().to_vec());
        properties.insert(key(&["destination", "address"]), b"127.0.0.1:10000".to_vec());
        properties.insert(key(&["request", "path"]), request.path.clone().into_bytes());
        properties.insert(key(&["request", "url_path"]), path_only.into_bytes());
        properties.insert(key(&["request", "method"]), request.method.clone().into_bytes());
        properties.insert(key(&["request", "host"]), request.authority.clone().into_bytes());
        properties.insert(key(&["request", "scheme"]), request.scheme.clone().into_bytes());
        properties.insert(key(&["request", "protocol"]), b"HTTP/1.1".to_vec());
    }
    for (path, value) in &request.properties {
        properties.insert(path.clone(), value.clone());
    }
    Stream {
        id,
        request_headers: headers,
        response_headers: None,
        properties,
        set_properties: BTreeMap::new(),
        flow: Flow::Paused,
        paused_by_filter: false,
        writable_variables: request.writable_variables.clone(),
        finished: false,
    }
}

/// An emulated proxy: one profile, one clock, one shared-data store, its workers.
pub struct Host {
    profile: Profile,
    engine: Engine,
    module: Module,
    linker: Linker<VmState>,
    shared: Rc<Shared>,
    workers: Vec<Worker>,
    wasm: PathBuf,
}

impl Host {
    /// A host running the release filter (`$NHI_WASM`, else the workspace build),
    /// its clock set to the current time.
    pub fn new(profile: Profile) -> Result<Self> {
        Self::with_wasm(profile, &crate::envoy::wasm_path()?)
    }

    /// A host running the module at `wasm`.
    pub fn with_wasm(profile: Profile, wasm: &Path) -> Result<Self> {
        let (engine, module) = compiled(wasm)?;
        Self::with_module(profile, engine, module, wasm)
    }

    /// A host running a binary module given as bytes (e.g. a test module built with `wat`).
    pub fn with_bytes(profile: Profile, wasm: &[u8]) -> Result<Self> {
        let engine = Engine::default();
        let module = Module::new(&engine, wasm).map_err(|e| anyhow!("compiling the module: {e:#}"))?;
        Self::with_module(profile, engine, module, Path::new("<bytes>"))
    }

    fn with_module(profile: Profile, engine: Engine, module: Module, wasm: &Path) -> Result<Self> {
        let api = match profile {
            Profile::Full => HostApi::envoy(),
            Profile::ApisixLike | Profile::ApisixNoop => HostApi::apisix(),
        };
        let mut linker: Linker<VmState> = Linker::new(&engine);
        let mut defined: BTreeSet<(&str, &str)> = BTreeSet::new();
        for name in env::register(&mut linker).map_err(|e| anyhow!("defining env functions: {e:#}"))? {
            defined.insert(("env", name));
        }
        for name in wasi::register(&mut linker).map_err(|e| anyhow!("defining WASI functions: {e:#}"))? {
            defined.insert(("wasi_snapshot_preview1", name));
        }
        let mut missing = Vec::new();
        for import in module.imports() {
            let (module_name, name) = (import.module(), import.name());
            if !api.provides(module_name, name) {
                missing.push(format!("{module_name}.{name}"));
                continue;
            }
            if defined.contains(&(module_name, name)) {
                continue;
            }
            let ExternType::Func(ty) = import.ty() else {
                missing.push(format!("{module_name}.{name} (not a function)"));
                continue;
            };
            let stub_result = match module_name {
                "env" => Status::Unimplemented.code(),
                _ => wasi::ENOSYS,
            };
            let label = format!("{module_name}.{name}");
            let returns = ty.results().next().is_some_and(|t| matches!(t, ValType::I32));
            linker
                .func_new(module_name, name, ty.clone(), move |mut caller, _params, results| {
                    caller.data_mut().count(&label);
                    caller.data_mut().unemulated.push(label.clone());
                    if let (true, Some(slot)) = (returns, results.first_mut()) {
                        *slot = Val::I32(stub_result);
                    }
                    Ok(())
                })
                .map_err(|e| anyhow!("stubbing {module_name}.{name}: {e:#}"))?;
        }
        if !missing.is_empty() {
            bail!(
                "{} would refuse to load {}: it does not provide {}",
                api.name,
                wasm.display(),
                missing.join(", ")
            );
        }
        let shared = Rc::new(Shared::default());
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
        shared.clock_ns.set(u64::try_from(now).unwrap_or(u64::MAX));
        Ok(Self { profile, engine, module, linker, shared, workers: Vec::new(), wasm: wasm.to_path_buf() })
    }

    pub fn profile(&self) -> Profile {
        self.profile
    }

    pub fn wasm_path(&self) -> &Path {
        &self.wasm
    }

    /// The environment of the VMs started from now on (`KEY`, `VALUE` pairs).
    pub fn set_environment(&mut self, variables: &[(&str, &str)]) {
        *self.shared.environment.borrow_mut() = variables.iter().map(|(k, v)| format!("{k}={v}")).collect();
    }

    /// Starts a worker (VM) with this plugin configuration; returns its index. The
    /// worker exists even if the configuration was refused (see [`Worker::configured`]).
    pub fn start_worker(&mut self, plugin_configuration: &[u8]) -> Result<usize> {
        let seed = 0x5eed_0000_u64 + self.workers.len() as u64;
        let worker = Worker::start(self, plugin_configuration, seed)?;
        self.workers.push(worker);
        Ok(self.workers.len() - 1)
    }

    /// [`Host::start_worker`] with a JSON configuration.
    pub fn start_worker_json(&mut self, plugin_configuration: &Value) -> Result<usize> {
        self.start_worker(plugin_configuration.to_string().as_bytes())
    }

    pub fn worker(&mut self, index: usize) -> Result<&mut Worker> {
        self.workers.get_mut(index).with_context(|| format!("no worker {index}"))
    }

    pub fn workers(&self) -> &[Worker] {
        &self.workers
    }

    /// The proxy clock (and WASI's), as Unix time in nanoseconds.
    pub fn now_ns(&self) -> u64 {
        self.shared.clock_ns.get()
    }

    /// Sets the clock without delivering ticks.
    pub fn set_time(&mut self, unix_ns: u64) {
        self.shared.clock_ns.set(unix_ns);
    }

    /// Moves the clock forward by `by`, delivering in time order every tick that falls
    /// due (hosts with timers) and failing every callout whose timeout passes.
    pub fn advance(&mut self, by: Duration) -> Result<()> {
        let target = self.now_ns().saturating_add(u64::try_from(by.as_nanos()).unwrap_or(u64::MAX));
        for _ in 0..MAX_EVENTS_PER_ADVANCE {
            let mut next: Option<(u64, usize, Option<u32>)> = None;
            for (index, worker) in self.workers.iter().enumerate() {
                if worker.trap.is_some() {
                    continue;
                }
                let state = worker.state();
                let tick = if self.profile == Profile::Full { state.next_tick_ns } else { None };
                let candidates = tick
                    .map(|at| (at, None))
                    .into_iter()
                    .chain(state.callouts.values().map(|c| (c.deadline_ns, Some(c.token))));
                for (at, token) in candidates {
                    if at <= target && next.is_none_or(|(best, _, _)| at < best) {
                        next = Some((at, index, token));
                    }
                }
            }
            let Some((at, index, token)) = next else {
                self.shared.clock_ns.set(target);
                return Ok(());
            };
            self.shared.clock_ns.set(at.max(self.now_ns()));
            let worker = self.worker(index)?;
            match token {
                Some(token) => worker.answer_callout(token, None)?,
                None => {
                    let state = worker.store.data_mut();
                    state.next_tick_ns =
                        Some(at.saturating_add(u64::from(state.tick_period_ms).saturating_mul(1_000_000)));
                    worker.tick()?;
                }
            }
        }
        bail!("more than {MAX_EVENTS_PER_ADVANCE} ticks and timeouts in one advance")
    }

    /// Names the clusters callouts may go to (Envoy-like profile); any other name is
    /// refused with `BadArgument`, as Envoy refuses an unknown cluster.
    pub fn set_clusters<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        *self.shared.clusters.borrow_mut() = Some(names.into_iter().map(str::to_owned).collect());
    }

    /// Shared data of this proxy (empty on hosts without it).
    pub fn shared_data(&self) -> Ref<'_, SharedData> {
        self.shared.data.borrow()
    }

    /// A metric by name (Envoy-like hosts only keep metrics).
    pub fn metric(&self, name: &str) -> Option<Metric> {
        self.shared.metrics.borrow().by_name(name).cloned()
    }

    pub fn metrics(&self) -> Vec<Metric> {
        self.shared.metrics.borrow().all().to_vec()
    }
}
