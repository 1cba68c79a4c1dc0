//! Fetch callouts (JWKS, the revocation feed), from whichever context makes them:
//! the root context on its tick (shared mode) or a request's own context (per-VM
//! mode). The fetch machine in the core decides; this only dispatches and reads
//! answers.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use nhi_guard_core::keys::fetch::{Callout, Next};
use nhi_guard_core::pipeline::Vm;

use super::host;

/// Makes `callout` (from whichever context is current): the host's token, or why not.
pub fn dispatch(callout: &Callout) -> Result<u32, String> {
    host::http_get(
        &callout.cluster,
        &callout.authority,
        &callout.path,
        Duration::from_millis(callout.timeout_ms),
    )
    .map_err(|status| format!("cluster {:?}: {status}", callout.cluster))
}

/// Hands the answer to callout `token` to the fetch machine: the next callout to
/// make, or the fetch's end. `None`: not a fetch of this VM.
pub fn answered(vm: &Vm, token: u32, body_size: usize, now: u64) -> Option<Next> {
    let max_body = vm.fetch_max_body(token);
    if max_body == 0 {
        return None;
    }
    let response = host::http_call_response(body_size, max_body);
    vm.fetch_answered(token, response, now, jitter())
}

pub fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(host::now_ms());
    hasher.finish()
}

/// A value in `0..=1` to spread retries; not security-relevant.
pub fn jitter() -> f64 {
    (random_u64() % 1_000) as f64 / 999.0
}
