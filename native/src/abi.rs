//! Envoy's dynamic-modules ABI, the part of it this module uses, declared by hand
//! from `source/extensions/dynamic_modules/abi/abi.h` of Envoy 1.40 (ABI v0.2.0).
//!
//! Envoy owns `*_envoy_ptr` objects and `EnvoyBuffer` memory (valid for the call
//! that handed them out); we own `*_module_ptr` objects and `ModuleBuffer` memory
//! (Envoy copies it before the call returns). Enums are C `int`s.

use std::ffi::{c_char, c_void};

/// The ABI version this module was written against. Envoy 1.40 compares it with its
/// own and logs `Dynamic module ABI version v0.2.0 matched.` — or, on a mismatch, a
/// warning that the module is deprecated (1.40 warns, it does not refuse).
pub const ABI_VERSION: &[u8] = b"v0.2.0\0";

/// `envoy_dynamic_module_type_envoy_buffer`: bytes owned by Envoy.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnvoyBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

impl EnvoyBuffer {
    pub const EMPTY: EnvoyBuffer = EnvoyBuffer { ptr: std::ptr::null(), length: 0 };

    /// The bytes, copied out (empty for a null pointer).
    ///
    /// # Safety
    /// `ptr` must be null or valid for reads of `length` bytes.
    pub unsafe fn to_vec(self) -> Vec<u8> {
        // SAFETY: the caller's promise, passed on.
        unsafe { self.as_slice() }.to_vec()
    }

    /// The bytes, borrowed (empty for a null pointer).
    ///
    /// # Safety
    /// `ptr` must be null or valid for reads of `length` bytes for `'a` (Envoy's
    /// buffers: until the hook that handed them over returns).
    pub unsafe fn as_slice<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.length == 0 {
            return &[];
        }
        // SAFETY: the caller vouches for the pointer and length.
        unsafe { std::slice::from_raw_parts(self.ptr, self.length) }
    }
}

/// `envoy_dynamic_module_type_module_buffer`: bytes owned by this module.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ModuleBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

impl ModuleBuffer {
    pub fn of(bytes: &[u8]) -> ModuleBuffer {
        ModuleBuffer { ptr: bytes.as_ptr(), length: bytes.len() }
    }

    /// A null buffer: to `set_header` it means "remove".
    pub const NULL: ModuleBuffer = ModuleBuffer { ptr: std::ptr::null(), length: 0 };
}

/// `envoy_dynamic_module_type_envoy_http_header` (and `module_http_header`, the same
/// layout): a name and a value.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct HttpHeader {
    pub key_ptr: *const u8,
    pub key_length: usize,
    pub value_ptr: *const u8,
    pub value_length: usize,
}

impl HttpHeader {
    pub const EMPTY: HttpHeader =
        HttpHeader { key_ptr: std::ptr::null(), key_length: 0, value_ptr: std::ptr::null(), value_length: 0 };

    /// The name and the value, borrowed.
    ///
    /// # Safety
    /// Both pointers are null or valid for reads of their lengths for `'a` (Envoy's
    /// buffers, until the hook that handed them over returns).
    pub unsafe fn as_pair<'a>(&self) -> (&'a [u8], &'a [u8]) {
        // SAFETY: the caller vouches for both buffers.
        unsafe {
            (
                EnvoyBuffer { ptr: self.key_ptr, length: self.key_length }.as_slice(),
                EnvoyBuffer { ptr: self.value_ptr, length: self.value_length }.as_slice(),
            )
        }
    }

    /// Headers for Envoy to copy, pointing into `pairs` (which must outlive the call
    /// they are handed to).
    pub fn borrowing<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<HttpHeader> {
        pairs
            .map(|(name, value)| HttpHeader {
                key_ptr: name.as_ptr(),
                key_length: name.len(),
                value_ptr: value.as_ptr(),
                value_length: value.len(),
            })
            .collect()
    }
}

/// `envoy_dynamic_module_type_http_header_type`.
pub const REQUEST_HEADER: u32 = 0;
pub const RESPONSE_HEADER: u32 = 2;

/// `envoy_dynamic_module_type_attribute_id` values used here.
pub const ATTRIBUTE_RESPONSE_CODE: u32 = 15;
pub const ATTRIBUTE_SOURCE_ADDRESS: u32 = 24;
pub const ATTRIBUTE_SUBJECT_PEER_CERTIFICATE: u32 = 33;
pub const ATTRIBUTE_URI_SAN_PEER_CERTIFICATE: u32 = 37;
pub const ATTRIBUTE_SHA256_PEER_CERTIFICATE_DIGEST: u32 = 38;
pub const ATTRIBUTE_XDS_ROUTE_NAME: u32 = 61;

/// `envoy_dynamic_module_type_on_http_filter_request_headers_status` (the body,
/// trailers and response statuses number `Continue` and `StopIteration` alike).
pub const STATUS_CONTINUE: u32 = 0;
pub const STATUS_STOP_ITERATION: u32 = 1;
/// `..._request_body_status_StopIterationAndBuffer`: Envoy keeps the chunk with the
/// body buffered so far (up to its buffer limit, else 413) and asks for more.
pub const BODY_STOP_AND_BUFFER: u32 = 1;
/// `..._request_body_status_StopIterationNoBuffer`.
pub const BODY_STOP_NO_BUFFER: u32 = 3;

/// `envoy_dynamic_module_type_http_body_type`: the chunk of this hook, and what was
/// buffered before it.
pub const RECEIVED_REQUEST_BODY: u32 = 0;
pub const BUFFERED_REQUEST_BODY: u32 = 1;

/// `envoy_dynamic_module_type_http_callout_init_result`: `Success`,
/// `MissingRequiredHeaders`, `ClusterNotFound` (then `DuplicateCalloutId`,
/// `CannotCreateRequest`).
pub const CALLOUT_INIT_SUCCESS: u32 = 0;
pub const CALLOUT_INIT_MISSING_HEADERS: u32 = 1;
pub const CALLOUT_INIT_CLUSTER_NOT_FOUND: u32 = 2;
/// `envoy_dynamic_module_type_http_callout_result_Success` (the others: `Reset`,
/// `ExceedResponseBufferLimit`).
pub const CALLOUT_SUCCESS: u32 = 0;

/// `envoy_dynamic_module_type_metrics_result_Success` (then `MetricNotFound`,
/// `InvalidLabels`, `Frozen`).
pub const METRICS_SUCCESS: u32 = 0;

/// `envoy_dynamic_module_type_log_level`.
pub const LOG_DEBUG: u32 = 1;
pub const LOG_INFO: u32 = 2;
pub const LOG_WARN: u32 = 3;
pub const LOG_ERROR: u32 = 4;

// The callbacks Envoy implements (resolved from the Envoy binary when it loads us).
extern "C" {
    pub fn envoy_dynamic_module_callback_http_get_headers_size(
        filter_envoy_ptr: *mut c_void,
        header_type: u32,
    ) -> usize;
    pub fn envoy_dynamic_module_callback_http_get_headers(
        filter_envoy_ptr: *mut c_void,
        header_type: u32,
        result_headers: *mut HttpHeader,
    ) -> bool;
    /// Replaces every value of `key`; a null `value` removes the header.
    pub fn envoy_dynamic_module_callback_http_set_header(
        filter_envoy_ptr: *mut c_void,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_send_response(
        filter_envoy_ptr: *mut c_void,
        status_code: u32,
        headers_vector: *const HttpHeader,
        headers_vector_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
    pub fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter_envoy_ptr: *mut c_void,
        attribute_id: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_filter_get_attribute_int(
        filter_envoy_ptr: *mut c_void,
        attribute_id: u32,
        result: *mut u64,
    ) -> bool;
    /// Sets filter state `key` (a plain string object, printable in access logs with
    /// `%FILTER_STATE(key:PLAIN)%`).
    pub fn envoy_dynamic_module_callback_http_set_filter_state_bytes(
        filter_envoy_ptr: *mut c_void,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    /// Bytes of `body_type` (a request body buffer).
    pub fn envoy_dynamic_module_callback_http_get_body_size(
        filter_envoy_ptr: *mut c_void,
        body_type: u32,
    ) -> usize;
    /// How many chunks `body_type` has; `get_body_chunks` writes that many.
    pub fn envoy_dynamic_module_callback_http_get_body_chunks_size(
        filter_envoy_ptr: *mut c_void,
        body_type: u32,
    ) -> usize;
    pub fn envoy_dynamic_module_callback_http_get_body_chunks(
        filter_envoy_ptr: *mut c_void,
        body_type: u32,
        result_buffer_vector: *mut EnvoyBuffer,
    ) -> bool;
    /// Makes Envoy select the route again (after this filter changed the headers).
    pub fn envoy_dynamic_module_callback_http_clear_route_cache(filter_envoy_ptr: *mut c_void);
    /// Starts an HTTP request to `cluster_name` on behalf of this filter; Envoy writes
    /// the callout's id (unique per filter) to `callout_id` and later calls
    /// `envoy_dynamic_module_on_http_filter_http_callout_done` with it, on this
    /// filter's worker. `headers` must hold `:method`, `:path` and `:authority`.
    pub fn envoy_dynamic_module_callback_http_filter_http_callout(
        filter_envoy_ptr: *mut c_void,
        callout_id: *mut u64,
        cluster_name: ModuleBuffer,
        headers: *const HttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_milliseconds: u64,
    ) -> u32;
    /// A scheduler for this filter: events committed to it (from any thread) run on the
    /// filter's worker, as `envoy_dynamic_module_on_http_filter_scheduled`.
    pub fn envoy_dynamic_module_callback_http_filter_scheduler_new(
        filter_envoy_ptr: *mut c_void,
    ) -> *mut c_void;
    pub fn envoy_dynamic_module_callback_http_filter_scheduler_commit(scheduler: *mut c_void, event_id: u64);
    pub fn envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler: *mut c_void);
    /// Resumes a request whose headers hook returned `StopIteration`.
    pub fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter_envoy_ptr: *mut c_void);
    /// Defines a metric with these label names on a configuration, while Envoy creates
    /// it (`Frozen` afterwards); `id` then names it in the filter calls below.
    pub fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config_envoy_ptr: *mut c_void,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config_envoy_ptr: *mut c_void,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_config_define_histogram(
        config_envoy_ptr: *mut c_void,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    /// Updates the series of metric `id` with these label values (as many as it has
    /// label names).
    pub fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter_envoy_ptr: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_increment_gauge(
        filter_envoy_ptr: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_decrement_gauge(
        filter_envoy_ptr: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_set_gauge(
        filter_envoy_ptr: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_record_histogram_value(
        filter_envoy_ptr: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    /// A scheduler for a configuration: events committed to it (from any thread) run on
    /// Envoy's main thread, as `envoy_dynamic_module_on_http_filter_config_scheduled`
    /// (dropped if the configuration is gone by then).
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        config_envoy_ptr: *mut c_void,
    ) -> *mut c_void;
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler: *mut c_void,
        event_id: u64,
    );
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: *mut c_void);
    /// [`envoy_dynamic_module_callback_http_filter_increment_counter`] without a
    /// request: through the configuration, on the main thread.
    pub fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config_envoy_ptr: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    pub fn envoy_dynamic_module_callback_log_enabled(level: u32) -> bool;
}

/// Keeps `c_char` in use for the init hook's signature.
pub type AbiVersion = *const c_char;
