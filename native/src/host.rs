//! The core's [`Host`] over Envoy's dynamic-modules ABI, for one callback of one
//! request: `filter` is the `DynamicModuleHttpFilter*` Envoy handed to the hook, valid
//! until the hook returns. A host without a filter (a VM starting on a worker before
//! its first request) answers every request-scoped call with an error, never calls
//! Envoy with a null pointer.
//!
//! Bytes are bytes: header names and values are copied out of Envoy as they are;
//! nothing here decodes them.

use std::ffi::c_void;
use std::time::{SystemTime, UNIX_EPOCH};

use nhi_guard_core::host::header_map::HeaderMap;
use nhi_guard_core::host::{Host, HostError, HttpCall, MetricKind};
use nhi_guard_core::reason::LocalReply;

use crate::abi::{self, EnvoyBuffer, HttpHeader, ModuleBuffer};

/// Local replies say who answered in Envoy's `%RESPONSE_CODE_DETAILS%`.
const REPLY_DETAILS: &str = "nhi_guard";

pub struct NativeHost {
    filter: *mut c_void,
}

impl NativeHost {
    /// The host for one hook of the filter Envoy calls `filter`.
    pub fn new(filter: *mut c_void) -> Self {
        NativeHost { filter }
    }

    /// A host for work outside any request (a worker's VM starting).
    pub fn detached() -> Self {
        NativeHost { filter: std::ptr::null_mut() }
    }

    fn filter(&self) -> Result<*mut c_void, HostError> {
        if self.filter.is_null() {
            Err(HostError::BAD_ARGUMENT)
        } else {
            Ok(self.filter)
        }
    }

    fn headers(&self, header_type: u32) -> Result<HeaderMap, HostError> {
        let filter = self.filter()?;
        // SAFETY: `filter` is the live filter of this hook.
        let count = unsafe { abi::envoy_dynamic_module_callback_http_get_headers_size(filter, header_type) };
        let mut raw = vec![HttpHeader::EMPTY; count];
        // SAFETY: `raw` has room for the `count` entries Envoy writes.
        if !unsafe {
            abi::envoy_dynamic_module_callback_http_get_headers(filter, header_type, raw.as_mut_ptr())
        } {
            return Err(HostError::NOT_FOUND);
        }
        let pairs = raw.into_iter().map(|h| {
            // SAFETY: Envoy's buffers, valid until this hook returns; copied now.
            let name = unsafe { EnvoyBuffer { ptr: h.key_ptr, length: h.key_length }.to_vec() };
            let value = unsafe { EnvoyBuffer { ptr: h.value_ptr, length: h.value_length }.to_vec() };
            (name, value)
        });
        Ok(HeaderMap::from_pairs(pairs))
    }

    fn set_header(&self, header_type: u32, name: &[u8], value: ModuleBuffer) -> Result<(), HostError> {
        let filter = self.filter()?;
        // SAFETY: live filter; both buffers valid for the call (Envoy copies them).
        if unsafe {
            abi::envoy_dynamic_module_callback_http_set_header(
                filter,
                header_type,
                ModuleBuffer::of(name),
                value,
            )
        } {
            Ok(())
        } else {
            Err(HostError::NOT_FOUND)
        }
    }

    fn attribute(&self, id: u32) -> Option<Vec<u8>> {
        let filter = self.filter().ok()?;
        let mut result = EnvoyBuffer::EMPTY;
        // SAFETY: live filter; `result` is written by Envoy.
        if !unsafe {
            abi::envoy_dynamic_module_callback_http_filter_get_attribute_string(filter, id, &mut result)
        } {
            return None;
        }
        // SAFETY: Envoy's buffer, valid until this hook returns; copied now.
        Some(unsafe { result.to_vec() })
    }
}

/// The route is selected again once this filter is done with the headers: the wasm
/// gets this from Envoy for free (a proxy-wasm header write clears the route cache);
/// the routes of the shipped config match on `x-nhi-client`, which the pipeline sets.
pub fn clear_route_cache(filter: *mut c_void) {
    if !filter.is_null() {
        // SAFETY: the live filter of this hook.
        unsafe { abi::envoy_dynamic_module_callback_http_clear_route_cache(filter) };
    }
}

/// Unix time in nanoseconds (the module runs in Envoy's process: its clock is ours).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Host for NativeHost {
    fn now_ns(&mut self) -> u64 {
        now_ns()
    }

    fn request_headers(&mut self) -> Result<HeaderMap, HostError> {
        self.headers(abi::REQUEST_HEADER)
    }

    fn set_request_header(&mut self, name: &str, value: &str) -> Result<(), HostError> {
        self.set_header(abi::REQUEST_HEADER, name.as_bytes(), ModuleBuffer::of(value.as_bytes()))
    }

    fn remove_request_header(&mut self, name: &[u8]) -> Result<(), HostError> {
        self.set_header(abi::REQUEST_HEADER, name, ModuleBuffer::NULL)
    }

    fn set_response_header(&mut self, name: &str, value: &str) -> Result<(), HostError> {
        self.set_header(abi::RESPONSE_HEADER, name.as_bytes(), ModuleBuffer::of(value.as_bytes()))
    }

    /// The attributes the pipeline asks for that the ABI has as strings; anything
    /// else is unknown here (the connection's certificate among them: `mtls` is
    /// refused at load).
    fn property(&mut self, path: &[&str]) -> Option<Vec<u8>> {
        match path {
            ["source", "address"] => self.attribute(abi::ATTRIBUTE_SOURCE_ADDRESS),
            ["xds", "route_name"] => self.attribute(abi::ATTRIBUTE_XDS_ROUTE_NAME),
            _ => None,
        }
    }

    /// Filter state is not wired yet (`filter_state` is refused at load).
    fn set_property(&mut self, _name: &str, _value: &[u8]) -> Result<(), HostError> {
        Err(HostError::UNIMPLEMENTED)
    }

    fn send_local_reply(&mut self, reply: &LocalReply) -> Result<(), HostError> {
        let filter = self.filter()?;
        let headers: Vec<HttpHeader> = reply
            .headers
            .iter()
            .map(|(name, value)| HttpHeader {
                key_ptr: name.as_ptr(),
                key_length: name.len(),
                value_ptr: value.as_ptr(),
                value_length: value.len(),
            })
            .collect();
        // SAFETY: live filter; every buffer outlives the call (Envoy copies them).
        unsafe {
            abi::envoy_dynamic_module_callback_http_send_response(
                filter,
                u32::from(reply.status),
                headers.as_ptr(),
                headers.len(),
                ModuleBuffer::of(reply.body.as_bytes()),
                ModuleBuffer::of(REPLY_DETAILS.as_bytes()),
            );
        }
        Ok(())
    }

    /// Metrics are not wired yet: Envoy freezes a dynamic module's metric definitions
    /// when its configuration is created, and the core defines per-identity series as
    /// identities appear. The pipeline treats metrics as observation only.
    fn define_metric(&mut self, _kind: MetricKind, _name: &str) -> Result<u32, HostError> {
        Err(HostError::UNIMPLEMENTED)
    }

    fn increment_metric(&mut self, _id: u32, _offset: i64) -> Result<(), HostError> {
        Err(HostError::UNIMPLEMENTED)
    }

    fn record_metric(&mut self, _id: u32, _value: u64) -> Result<(), HostError> {
        Err(HostError::UNIMPLEMENTED)
    }

    fn random(&mut self, buf: &mut [u8]) -> Result<(), HostError> {
        getrandom::getrandom(buf).map_err(|_| HostError::INTERNAL_FAILURE)
    }

    /// Envoy's own environment: the module runs in its process.
    fn environment_variable(&mut self, name: &str) -> Option<Vec<u8>> {
        use std::os::unix::ffi::OsStringExt as _;
        std::env::var_os(name).map(|v| v.into_vec())
    }

    /// Bodies are not read yet (`partners`, the only user, is refused at load).
    fn request_body(&mut self, _max: usize) -> Result<Vec<u8>, HostError> {
        Err(HostError::UNIMPLEMENTED)
    }

    /// No callouts yet: liveness and the revocation feed are refused at load.
    fn http_call(&mut self, _call: &HttpCall) -> Result<u32, HostError> {
        Err(HostError::UNIMPLEMENTED)
    }
}
