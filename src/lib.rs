//! nhi-guard, the proxy-wasm filter: the shell around `nhi-guard-core` that Envoy,
//! Istio and APISIX load as a `.wasm`.
//!
//! Everything the filter decides lives in the core, which never sees `proxy_wasm`;
//! this crate only reads the host, calls the core, and applies its verdict. It has
//! code only for `wasm32` targets.

#[cfg(target_arch = "wasm32")]
mod filter;
