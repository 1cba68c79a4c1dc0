//! The host, behind functions that return `Result` and never panic on a status
//! the host may legitimately return.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, Status};

use crate::reason::LocalReply;

/// Unix time in milliseconds: the proxy clock, or WASI's where the host has none.
pub fn now_ms() -> u64 {
    let now = hostcalls::get_current_time().unwrap_or_else(|_| SystemTime::now());
    now.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn log_critical(message: &str) {
    let _ = hostcalls::log(LogLevel::Critical, message);
}

pub fn request_header(name: &str) -> Result<Option<String>, Status> {
    hostcalls::get_map_value(MapType::HttpRequestHeaders, name)
}

/// Replaces every value of `name` with `value` (one header line).
pub fn set_request_header(name: &str, value: &str) -> Result<(), Status> {
    hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value))
}

/// Removes every value of `name`.
pub fn remove_request_header(name: &str) -> Result<(), Status> {
    hostcalls::remove_map_value(MapType::HttpRequestHeaders, name)
}

pub fn send_local_reply(reply: &LocalReply) -> Result<(), Status> {
    let headers: Vec<(&str, &str)> = reply
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    hostcalls::send_http_response(
        u32::from(reply.status),
        headers,
        Some(reply.body.as_bytes()),
    )
}

pub fn plugin_configuration() -> Result<Option<Vec<u8>>, Status> {
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
}

pub fn set_tick_period(period: Duration) -> Result<(), Status> {
    hostcalls::set_tick_period(period)
}

/// Starts an HTTP GET on `cluster`; the answer arrives in `on_http_call_response`.
pub fn http_get(
    cluster: &str,
    authority: &str,
    path: &str,
    timeout: Duration,
) -> Result<u32, Status> {
    hostcalls::dispatch_http_call(
        cluster,
        vec![
            (":method", "GET"),
            (":path", path),
            (":authority", authority),
            (":scheme", "http"),
            ("accept", "application/json"),
            ("user-agent", "nhi-guard"),
        ],
        None,
        vec![],
        timeout,
    )
}

/// Status code and (at most `max_body` bytes of) body of the current callout response.
/// A body over the limit is reported as `Err(actual size)` without being copied.
pub fn http_call_response(
    body_size: usize,
    max_body: usize,
) -> (Option<u16>, Result<Vec<u8>, usize>) {
    let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|s| s.parse::<u16>().ok());
    if body_size > max_body {
        return (status, Err(body_size));
    }
    let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
        .ok()
        .flatten()
        .unwrap_or_default();
    (status, Ok(body))
}

/// Shared data over raw host calls. The SDK's wrappers panic on statuses they do
/// not expect (and cannot even represent `Unimplemented`, which hosts without
/// shared data return), so these declare the ABI's `u32` status themselves.
pub struct SharedData;

mod raw {
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_get_shared_data(
            key_data: *const u8,
            key_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
            return_cas: *mut u32,
        ) -> u32;
        pub fn proxy_set_shared_data(
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
            cas: u32,
        ) -> u32;
    }

    pub const OK: u32 = 0;
    pub const NOT_FOUND: u32 = 1;
    pub const CAS_MISMATCH: u32 = 8;
}

impl crate::store::Store for SharedData {
    fn get(&self, key: &str) -> Result<crate::store::Versioned, crate::store::StoreError> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        let mut cas: u32 = 0;
        // SAFETY: the pointers are valid for writes; on success the host hands us a
        // buffer it allocated through this module's `proxy_on_memory_allocate`
        // (a boxed slice of exactly `size` bytes), which we take ownership of.
        let status = unsafe { raw::proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
        match status {
            raw::OK => {
                let value = if data.is_null() {
                    None
                } else {
                    // SAFETY: see above; length and capacity are both `size`.
                    Some(unsafe { Vec::from_raw_parts(data, size, size) })
                };
                Ok((value, (cas != 0).then_some(cas)))
            }
            raw::NOT_FOUND => Ok((None, None)),
            _ => Err(crate::store::StoreError::Unavailable),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), crate::store::StoreError> {
        // SAFETY: key and value are valid for reads of their lengths for the call.
        let status = unsafe {
            raw::proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas.unwrap_or(0))
        };
        match status {
            raw::OK => Ok(()),
            raw::CAS_MISMATCH => Err(crate::store::StoreError::CasMismatch),
            _ => Err(crate::store::StoreError::Unavailable),
        }
    }
}
