//! nhi-guard as an Envoy dynamic module: the event hooks Envoy's
//! `envoy.filters.http.dynamic_modules` filter calls, and nothing else. The core
//! (`nhi_guard_core`) decides; [`host`] is its `Host` over the ABI ([`abi`]); the
//! workers share state through [`store`]; [`config`] refuses what this shell cannot
//! do yet.
//!
//! Nothing here may panic: a panic in a module is a panic in Envoy (the release
//! profile aborts). The workspace's lints deny unwrap/expect/panic/indexing, and every
//! pointer Envoy hands over is checked for null before use.

mod abi;
mod config;
mod crypto;
mod filter;
mod host;
mod logger;
mod metrics;
mod store;
mod wake;

use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicU64, Ordering};

use config::FilterConfig;
use filter::Filter;

/// Configuration ids (one per `config_new`), so workers keep one VM per configuration.
static NEXT_CONFIG: AtomicU64 = AtomicU64::new(1);

/// Called once when Envoy loads the module: installs the logger and declares the ABI
/// version this module was built for.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> abi::AbiVersion {
    logger::install();
    crypto::init();
    if nhi_guard_core::crypto::backend::install(Box::new(crypto::AwsLc)).is_err() {
        log::warn!("nhi-guard: a signature backend was installed already; keeping it");
    }
    abi::ABI_VERSION.as_ptr().cast::<c_char>()
}

/// A `dynamic_modules` filter configuration: the nhi-guard JSON in `filter_config`.
/// Null refuses it (Envoy then refuses the listener), with the reason logged.
///
/// # Safety
/// Envoy passes buffers valid for the call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy_ptr: *mut c_void,
    name: abi::EnvoyBuffer,
    config: abi::EnvoyBuffer,
) -> *const c_void {
    // SAFETY: Envoy's buffers, valid for this call.
    let (name, json) = unsafe { (name.to_vec(), config.to_vec()) };
    let id = NEXT_CONFIG.fetch_add(1, Ordering::Relaxed);
    match FilterConfig::load(&json, id, store::for_filter(&name), |config| {
        metrics::Families::define(config_envoy_ptr, config)
    }) {
        Ok(loaded) => {
            log::info!(
                "nhi-guard (native) configured as {:?}: {} issuer(s), state shared by every worker and every configuration of that name",
                String::from_utf8_lossy(&name),
                loaded.config.issuers.len()
            );
            Box::into_raw(Box::new(loaded)).cast_const().cast::<c_void>()
        }
        Err(err) => {
            log::error!("nhi-guard: {err}; refusing the configuration");
            std::ptr::null()
        }
    }
}

/// # Safety
/// `config` is a pointer `config_new` returned, destroyed once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    if config.is_null() {
        return;
    }
    // SAFETY: made by `Box::into_raw` in `config_new`; Envoy destroys it once.
    let config = unsafe { Box::from_raw(config.cast_mut().cast::<FilterConfig>()) };
    filter::forget(config.id);
}

/// An event this module posted to a configuration's scheduler, on Envoy's main
/// thread: the workers' pending counts are due (see [`metrics`]).
///
/// # Safety
/// `config` is a live pointer `config_new` returned (Envoy drops events posted to a
/// configuration it destroyed).
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    config_envoy_ptr: *mut c_void,
    config: *const c_void,
    event_id: u64,
) {
    // SAFETY: see above.
    let Some(config) = (unsafe { config.cast::<FilterConfig>().as_ref() }) else { return };
    if event_id == metrics::FLUSH_COUNTS {
        config.families.flush_counts(config_envoy_ptr);
    }
}

/// A new request on a worker.
///
/// # Safety
/// `config` is a live pointer `config_new` returned.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    _filter_envoy_ptr: *mut c_void,
) -> *const c_void {
    // SAFETY: a live configuration (Envoy keeps it while filters use it).
    let Some(config) = (unsafe { config.cast::<FilterConfig>().as_ref() }) else {
        return std::ptr::null();
    };
    Box::into_raw(Box::new(Filter::new(config))).cast_const().cast::<c_void>()
}

/// The filter `filter_new` made, for one hook (on the worker that owns it).
///
/// # Safety
/// `filter` is null or a live pointer `filter_new` returned, used by one thread.
unsafe fn filter_mut<'a>(filter: *const c_void) -> Option<&'a mut Filter> {
    // SAFETY: see above; Envoy calls one hook of a filter at a time.
    unsafe { filter.cast_mut().cast::<Filter>().as_mut() }
}

/// # Safety
/// Envoy's hook contract (see [`filter_mut`]).
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    envoy: *mut c_void,
    filter: *const c_void,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: Envoy's hook contract.
    match unsafe { filter_mut(filter) } {
        Some(filter) => filter.request_headers(envoy, end_of_stream),
        // No filter state (`filter_new` failed): never forward unchecked.
        None => abi::STATUS_STOP_ITERATION,
    }
}

/// # Safety
/// Envoy's hook contract (see [`filter_mut`]).
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    envoy: *mut c_void,
    filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    // SAFETY: Envoy's hook contract.
    match unsafe { filter_mut(filter) } {
        Some(filter) => filter.response_headers(envoy),
        None => abi::STATUS_CONTINUE,
    }
}

/// # Safety
/// Envoy's hook contract (see [`filter_mut`]).
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    envoy: *mut c_void,
    filter: *const c_void,
) {
    // SAFETY: Envoy's hook contract.
    if let Some(filter) = unsafe { filter_mut(filter) } {
        filter.complete(envoy);
    }
}

/// # Safety
/// `filter` is null or a pointer `filter_new` returned, destroyed once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: *const c_void) {
    if !filter.is_null() {
        // SAFETY: made by `Box::into_raw` in `filter_new`; Envoy destroys it once.
        drop(unsafe { Box::from_raw(filter.cast_mut().cast::<Filter>()) });
    }
}

/// The answer to a callout the request made (its keys, the revocation list, its
/// TokenReview), on the request's worker.
///
/// # Safety
/// Envoy's hook contract (see [`filter_mut`]); `headers` and `chunks` are valid for
/// their sizes until the hook returns.
#[no_mangle]
#[allow(clippy::too_many_arguments)] // the ABI's signature
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    envoy: *mut c_void,
    filter: *const c_void,
    callout_id: u64,
    result: u32,
    headers: *const abi::HttpHeader,
    headers_size: usize,
    chunks: *const abi::EnvoyBuffer,
    chunks_size: usize,
) {
    // SAFETY: Envoy's hook contract.
    if let Some(filter) = unsafe { filter_mut(filter) } {
        let answer = host::CalloutAnswer { result, headers, headers_size, chunks, chunks_size };
        // SAFETY: Envoy's buffers, valid for this hook.
        unsafe { filter.callout_done(envoy, callout_id, &answer) };
    }
}

/// A chunk of the request body: buffered while a signature over it is checked.
///
/// # Safety
/// Envoy's hook contract (see [`filter_mut`]).
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    envoy: *mut c_void,
    filter: *const c_void,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: Envoy's hook contract.
    match unsafe { filter_mut(filter) } {
        Some(filter) => filter.request_body(envoy, end_of_stream),
        None => abi::BODY_STOP_NO_BUFFER,
    }
}

/// The request trailers: the end of a body being checked.
///
/// # Safety
/// Envoy's hook contract (see [`filter_mut`]).
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    envoy: *mut c_void,
    filter: *const c_void,
) -> u32 {
    // SAFETY: Envoy's hook contract.
    match unsafe { filter_mut(filter) } {
        Some(filter) => filter.request_trailers(envoy),
        None => abi::STATUS_STOP_ITERATION,
    }
}

/// An event this module posted to the request's scheduler: the review it waited
/// for ended (see [`wake`]).
///
/// # Safety
/// Envoy's hook contract (see [`filter_mut`]).
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    envoy: *mut c_void,
    filter: *const c_void,
    event_id: u64,
) {
    // SAFETY: Envoy's hook contract.
    if let Some(filter) = unsafe { filter_mut(filter) } {
        if event_id == wake::REVIEW_ENDED {
            filter.review_ended(envoy);
        }
    }
}

// The hooks Envoy requires of every HTTP filter module that this one has no use for:
// response bodies and trailers pass, and no stream is ever started (so the stream
// hooks are never called).

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _: *mut c_void,
    _: *const c_void,
    _: bool,
) -> u32 {
    abi::STATUS_CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _: *mut c_void,
    _: *const c_void,
) -> u32 {
    abi::STATUS_CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers() {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data() {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers() {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete() {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset() {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark() {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark() {}

/// Per-route configuration is not supported: a route that gives one is refused.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name: abi::EnvoyBuffer,
    _config: abi::EnvoyBuffer,
) -> *const c_void {
    log::error!("nhi-guard: per-route configuration is not supported by the native shell; refusing it");
    std::ptr::null()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(_config: *const c_void) {}
