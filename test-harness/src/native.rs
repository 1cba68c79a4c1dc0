//! The core's pipeline run natively ([`nhi_guard_core::native`]): one VM per worker,
//! one shared store, the key-fetch machine driven by ticks, and each request
//! against an in-memory host. No wasm, no Envoy: the third way the scenario table
//! runs (`tests/scenarios_native.rs`), beside the emulator and real Envoy, and the
//! same code the filter runs. This module only reads an exchange as the table does.

use anyhow::{anyhow, Result};
use serde_json::Value;

use nhi_guard_core::config::Config;
pub use nhi_guard_core::native::{Exchange, KeyServer, NativeProxy, NativeRequest};

use crate::scenarios::{Outcome, RESPONSE_HEADERS, UPSTREAM_HEADERS};

/// Starts `workers` VMs with the plugin configuration `plugin`.
pub fn start(plugin: &Value, workers: usize, now_ms: u64, key_server: Box<KeyServer>) -> Result<NativeProxy> {
    let config = Config::from_json(plugin.to_string().as_bytes()).map_err(|e| anyhow!("{e}"))?;
    NativeProxy::start(&config, workers, now_ms, key_server).map_err(|e| anyhow!("{e}"))
}

/// One request of the scenario table: `headers` come after `:method`, `:path` and
/// `:authority: gateway.test`, from `127.0.0.1:40000`.
pub fn send(
    proxy: &mut NativeProxy,
    worker: usize,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
) -> Result<Exchange> {
    let mut request = NativeRequest::new(method, path);
    for (name, value) in headers {
        request = request.header(name, value.to_vec());
    }
    proxy.send(worker, &request).map_err(|e| anyhow!("{e}"))
}

/// The scenario table's view of an exchange.
pub fn outcome(exchange: &Exchange) -> Outcome {
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    let upstream = exchange.forwarded().then(|| {
        UPSTREAM_HEADERS
            .iter()
            .filter_map(|name| exchange.host.request_header(name).map(|v| ((*name).to_owned(), text(v))))
            .collect()
    });
    let reply = exchange.host.reply.as_ref();
    let response_headers: Vec<(String, String)> = match reply {
        Some(reply) => reply.headers.clone(),
        None => exchange.host.response_headers.clone(),
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
    Outcome { status: exchange.status(), reason, upstream, response }
}
