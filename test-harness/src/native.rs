//! The core's pipeline run natively, as a proxy with several workers would run it:
//! one [`Vm`] per worker, one shared store, the key-fetch machine driven by ticks,
//! and each request against an in-memory host. No wasm, no Envoy: the third way
//! the scenario table runs (`tests/scenarios_native.rs`), beside the emulator and
//! real Envoy, and the same code the filter runs.

use std::rc::Rc;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use nhi_guard_core::config::Config;
use nhi_guard_core::host::capabilities::{HostSetting, Plan, Probed};
use nhi_guard_core::host::memory::MemoryHost;
use nhi_guard_core::host::store::MemoryStore;
use nhi_guard_core::keys::fetch::{Callout, Next, Response};
use nhi_guard_core::pipeline::{self, Request, Step, Vm};

use crate::scenarios::{Outcome, RESPONSE_HEADERS, UPSTREAM_HEADERS};

/// How the native proxy's key server answers a callout: status and body.
pub type KeyServer = dyn Fn(&Callout) -> (u16, String);

/// A proxy of `workers` VMs sharing one store.
pub struct NativeProxy {
    pub workers: Vec<Vm>,
    pub store: Rc<MemoryStore>,
    pub now_ms: u64,
    key_server: Box<KeyServer>,
    next_token: u32,
}

impl NativeProxy {
    /// Starts `workers` VMs with `plugin`, on an Envoy-grade host (shared state,
    /// background key fetching).
    pub fn start(plugin: &Value, workers: usize, now_ms: u64, key_server: Box<KeyServer>) -> Result<Self> {
        let config = Config::from_json(plugin.to_string().as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
        let plan = Plan::choose(HostSetting::Auto, Probed { shared_data: true, timers: true, clock: true })
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let store = Rc::new(MemoryStore::new());
        let mut started = Vec::new();
        for me in 0..workers {
            let mut host = MemoryHost::new(now_ms * 1_000_000);
            let vm = Vm::start(
                config.clone(),
                plan,
                Box::new(Rc::clone(&store)),
                &mut host,
                now_ms,
                me as u64 + 1,
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            started.push(vm);
        }
        let mut proxy = NativeProxy { workers: started, store, now_ms, key_server, next_token: 1 };
        // The first ticks fetch the keys; the others pick them up.
        for _ in 0..3 {
            proxy.tick()?;
        }
        Ok(proxy)
    }

    /// One tick of every worker: published keys picked up, due fetches made (and
    /// answered at once by the key server), waiting requests not tracked here.
    pub fn tick(&mut self) -> Result<()> {
        for index in 0..self.workers.len() {
            let vm = self.workers.get(index).context("worker")?;
            let tick = vm.fetcher.borrow_mut().tick(
                &vm.config.issuers,
                &mut vm.keys.borrow_mut(),
                self.store.as_ref(),
                self.now_ms,
            );
            for callout in tick.callouts {
                self.call(index, callout)?;
            }
        }
        Ok(())
    }

    fn call(&mut self, worker: usize, mut callout: Callout) -> Result<()> {
        for _ in 0..4 {
            let vm = self.workers.get(worker).context("worker")?;
            let token = self.next_token;
            self.next_token += 1;
            let keys = vm.keys.borrow().clone();
            vm.fetcher.borrow_mut().dispatched(
                &vm.config.issuers,
                callout.ticket,
                Ok(token),
                &keys,
                self.store.as_ref(),
                self.now_ms,
                0.0,
            );
            let (status, body) = (self.key_server)(&callout);
            let response = Response { status: Some(status), body: Ok(body.into_bytes()) };
            let next = vm.fetcher.borrow_mut().answered(
                &vm.config.issuers,
                token,
                response,
                &mut vm.keys.borrow_mut(),
                self.store.as_ref(),
                self.now_ms,
                0.0,
            );
            match next {
                Some(Next::Call(next)) => callout = next,
                _ => return Ok(()),
            }
        }
        bail!("a key fetch asked for more than four callouts")
    }

    /// One request on `worker`: the pipeline from headers to the decision line, the
    /// upstream answering 200. `headers` come after `:method`, `:path`, `:authority`.
    pub fn send(
        &mut self,
        worker: usize,
        method: &str,
        path: &str,
        headers: &[(&str, &[u8])],
    ) -> Result<Exchange> {
        let vm = self.workers.get(worker).context("no such worker")?;
        let mut host = MemoryHost::new(self.now_ms * 1_000_000)
            .header(":method", method)
            .header(":path", path)
            .header(":authority", "gateway.test")
            .header(":scheme", "http")
            .property(&["source", "address"], "127.0.0.1:40000");
        for (name, value) in headers {
            host = host.header(name, value.to_vec());
        }
        let mut request = Request::new(1);
        let mut step = pipeline::start(vm, &mut host, &mut request);
        if let Step::Wait { .. } = step {
            // Keys are being fetched: tick (which fetches and answers), then decide again.
            self.tick()?;
            let vm = self.workers.get(worker).context("no such worker")?;
            request.waited = true;
            step = pipeline::run(vm, &mut host, &mut request, self.now_ms);
        }
        let vm = self.workers.get(worker).context("no such worker")?;
        if step == Step::Continue {
            pipeline::respond(&mut host, &request);
        }
        pipeline::finish(vm, &mut host, &mut request);
        Ok(Exchange { step, host })
    }
}

/// What came of one native request.
#[derive(Debug)]
pub struct Exchange {
    pub step: Step,
    pub host: MemoryHost,
}

impl Exchange {
    /// The scenario table's view of it.
    pub fn outcome(&self) -> Outcome {
        let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        let forwarded = self.step == Step::Continue;
        let upstream = forwarded.then(|| {
            UPSTREAM_HEADERS
                .iter()
                .filter_map(|name| self.host.request_header(name).map(|v| ((*name).to_owned(), text(v))))
                .collect()
        });
        let reply = self.host.reply.as_ref();
        let response_headers: Vec<(String, String)> = match reply {
            Some(reply) => reply.headers.clone(),
            None => self.host.response_headers.clone(),
        };
        let response = RESPONSE_HEADERS
            .iter()
            .filter_map(|name| {
                response_headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| ((*name).to_owned(), v.clone()))
            })
            .collect();
        let reason = reply.and_then(|r| {
            serde_json::from_str::<Value>(&r.body).ok()?.get("reason")?.as_str().map(str::to_owned)
        });
        let status = match reply {
            Some(reply) => reply.status,
            None if forwarded => 200,
            None => 0,
        };
        Outcome { status, reason, upstream, response }
    }
}
