//! The host, behind functions that return `Result`/`Option` and never panic.
//!
//! The SDK's `hostcalls` panic on any status they do not expect, and their status
//! enum cannot even represent `Unimplemented`, which hosts such as APISIX return
//! for whole families of calls. So everything the filter uses on the request path
//! is declared here against the proxy-wasm ABI, with `u32` statuses. Only
//! `dispatch_http_call` stays on the SDK: its dispatcher must register the callout
//! to route the response back to the right context.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::LogLevel;

use nhi_guard_core::host::capabilities::Probed;
use nhi_guard_core::host::header_map::{self, HeaderMap};
use nhi_guard_core::host::store::{Store, StoreError, Versioned};
pub use nhi_guard_core::host::HostError;
use nhi_guard_core::host::{Host, HttpCall, MetricKind};
use nhi_guard_core::keys::fetch::Response;
use nhi_guard_core::reason::LocalReply;

mod abi {
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
        pub fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
        pub fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
        pub fn proxy_set_effective_context(context_id: u32) -> u32;
        pub fn proxy_continue_stream(stream_type: u32) -> u32;
        pub fn proxy_get_buffer_bytes(
            buffer_type: u32,
            start: usize,
            max_size: usize,
            return_data: *mut *mut u8,
            return_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_header_map_pairs(
            map_type: u32,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> u32;
        pub fn proxy_replace_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
        pub fn proxy_send_local_response(
            status_code: u32,
            status_code_details_data: *const u8,
            status_code_details_size: usize,
            body_data: *const u8,
            body_size: usize,
            headers_data: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
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
        pub fn proxy_get_property(
            path_data: *const u8,
            path_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        pub fn proxy_set_property(
            path_data: *const u8,
            path_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_define_metric(
            metric_type: u32,
            name_data: *const u8,
            name_size: usize,
            return_metric_id: *mut u32,
        ) -> u32;
        pub fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
        pub fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    }

    // WASI's randomness (already imported by std for its hash seeds).
    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    extern "C" {
        pub fn random_get(buf: *mut u8, buf_len: usize) -> u16;
    }

    pub const OK: u32 = 0;
    pub const NOT_FOUND: u32 = 1;
    pub const CAS_MISMATCH: u32 = 8;

    pub const MAP_REQUEST_HEADERS: u32 = 0;
    pub const MAP_RESPONSE_HEADERS: u32 = 2;
    pub const MAP_HTTP_CALL_RESPONSE_HEADERS: u32 = 6;
    pub const BUFFER_HTTP_REQUEST_BODY: u32 = 0;
    pub const BUFFER_HTTP_CALL_RESPONSE_BODY: u32 = 4;
    pub const BUFFER_PLUGIN_CONFIGURATION: u32 = 7;
    pub const STREAM_HTTP_REQUEST: u32 = 0;
}

fn check(status: u32) -> Result<(), HostError> {
    if status == abi::OK {
        Ok(())
    } else {
        Err(HostError(status))
    }
}

/// Takes ownership of a buffer the host allocated through this module's
/// `proxy_on_memory_allocate` (a boxed slice of exactly `size` bytes).
///
/// # Safety
/// `data` must be null or such a buffer, not owned by anything else.
unsafe fn owned_buffer(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        None
    } else {
        Some(Vec::from_raw_parts(data, size, size))
    }
}

/// The proxy clock, if the host has one. api7's APISIX host answers `Ok` without
/// writing the time, so a zero is "no clock" too.
fn proxy_clock_ns() -> Option<u64> {
    let mut nanos: u64 = 0;
    // SAFETY: a valid out-pointer.
    let status = unsafe { abi::proxy_get_current_time_nanoseconds(&mut nanos) };
    (status == abi::OK && nanos != 0).then_some(nanos)
}

/// Unix time in nanoseconds: the proxy clock, or WASI's where the host has none.
pub fn now_ns() -> u64 {
    proxy_clock_ns().unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    })
}

/// Unix time in milliseconds: the proxy clock, or WASI's where the host has none.
pub fn now_ms() -> u64 {
    now_ns() / 1_000_000
}

/// What this host can do, judged by what each call does rather than by its status
/// (see `capabilities`): a clock that tells the time, shared data that keeps a
/// value written to it, a tick period the host accepts.
///
/// Every VM writes the same value: Envoy configures its workers' VMs concurrently,
/// and a per-VM value (as this once was) could be overwritten by another worker
/// between the write and the read, making an Envoy look like a host without shared
/// data (seen in an e2e run: one worker fell back to per-VM quotas).
pub fn probe() -> Probed {
    let clock = proxy_clock_ns().is_some();
    let key = "nhi-guard/probe";
    let value = b"nhi-guard shared-data probe v1";
    let shared_data = SharedData.set(key, value, None).is_ok()
        && matches!(SharedData.get(key), Ok((Some(read), _)) if read == value.as_slice());
    // Period 0 stops a tick: harmless here, the root sets its own period afterwards.
    let timers = set_tick_period(Duration::ZERO).is_ok();
    Probed { shared_data, timers, clock }
}

/// This VM's linear memory (memory 0), in bytes; 0 when not built for wasm.
pub fn memory_bytes() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        (core::arch::wasm32::memory_size(0) as u64).saturating_mul(65_536)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0
    }
}

pub fn log_critical(message: &str) {
    log(LogLevel::Critical, message);
}

/// One line to the host's log. The SDK's `hostcalls::log` panics when the host fails
/// the call (and a panic aborts the VM); a log line that cannot be written is dropped.
pub fn log(level: LogLevel, message: &str) {
    // SAFETY: a valid pointer and length for the duration of the call.
    let _ = unsafe { abi::proxy_log(level as u32, message.as_ptr(), message.len()) };
}

pub fn set_tick_period(period: Duration) -> Result<(), HostError> {
    let ms = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
    // SAFETY: plain value argument.
    check(unsafe { abi::proxy_set_tick_period_milliseconds(ms) })
}

/// Makes later host calls act on another context (e.g. a paused request).
pub fn set_effective_context(context_id: u32) -> Result<(), HostError> {
    // SAFETY: plain value argument.
    check(unsafe { abi::proxy_set_effective_context(context_id) })
}

/// Resumes the paused request of the effective context.
pub fn resume_request() -> Result<(), HostError> {
    // SAFETY: plain value argument.
    check(unsafe { abi::proxy_continue_stream(abi::STREAM_HTTP_REQUEST) })
}

fn buffer(buffer_type: u32, max_size: usize) -> Result<Option<Vec<u8>>, HostError> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: valid out-pointers; the returned buffer is ours (see `owned_buffer`).
    let status = unsafe { abi::proxy_get_buffer_bytes(buffer_type, 0, max_size, &mut data, &mut size) };
    match status {
        abi::OK => Ok(unsafe { owned_buffer(data, size) }),
        abi::NOT_FOUND => Ok(None),
        other => Err(HostError(other)),
    }
}

pub fn plugin_configuration() -> Result<Option<Vec<u8>>, HostError> {
    buffer(abi::BUFFER_PLUGIN_CONFIGURATION, usize::MAX)
}

fn map_value(map_type: u32, name: &str) -> Result<Option<String>, HostError> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: valid key and out-pointers; the returned buffer is ours.
    let status =
        unsafe { abi::proxy_get_header_map_value(map_type, name.as_ptr(), name.len(), &mut data, &mut size) };
    match status {
        abi::OK => Ok(unsafe { owned_buffer(data, size) }.and_then(|bytes| String::from_utf8(bytes).ok())),
        abi::NOT_FOUND => Ok(None),
        other => Err(HostError(other)),
    }
}

/// Every request header (pseudo-headers included) in one host call, as bytes: a
/// value that is not UTF-8 is still there (see `header_map`).
pub fn request_headers() -> Result<HeaderMap, HostError> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: valid out-pointers; the returned buffer is ours.
    let status = unsafe { abi::proxy_get_header_map_pairs(abi::MAP_REQUEST_HEADERS, &mut data, &mut size) };
    match status {
        abi::OK => Ok(unsafe { owned_buffer(data, size) }.map(HeaderMap::decode).unwrap_or_default()),
        abi::NOT_FOUND => Ok(HeaderMap::default()),
        other => Err(HostError(other)),
    }
}

/// Replaces every value of `name` with `value` (one header line).
pub fn set_request_header(name: &str, value: &str) -> Result<(), HostError> {
    // SAFETY: name and value are valid for reads of their lengths.
    check(unsafe {
        abi::proxy_replace_header_map_value(
            abi::MAP_REQUEST_HEADERS,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// Replaces every value of response header `name` with `value`.
pub fn set_response_header(name: &str, value: &str) -> Result<(), HostError> {
    // SAFETY: name and value are valid for reads of their lengths.
    check(unsafe {
        abi::proxy_replace_header_map_value(
            abi::MAP_RESPONSE_HEADERS,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// Removes every value of `name` (absent is fine).
pub fn remove_request_header(name: impl AsRef<[u8]>) -> Result<(), HostError> {
    let name = name.as_ref();
    // SAFETY: name is valid for reads of its length.
    match unsafe { abi::proxy_remove_header_map_value(abi::MAP_REQUEST_HEADERS, name.as_ptr(), name.len()) } {
        abi::OK | abi::NOT_FOUND => Ok(()),
        other => Err(HostError(other)),
    }
}

pub fn send_local_reply(reply: &LocalReply) -> Result<(), HostError> {
    let headers = header_map::encode(&reply.headers);
    let details = "nhi_guard";
    // SAFETY: every pointer is valid for reads of its length for the call.
    check(unsafe {
        abi::proxy_send_local_response(
            u32::from(reply.status),
            details.as_ptr(),
            details.len(),
            reply.body.as_ptr(),
            reply.body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

/// Starts an HTTP GET on `cluster`; the answer arrives in `on_http_call_response`.
pub fn http_get(cluster: &str, authority: &str, path: &str, timeout: Duration) -> Result<u32, String> {
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
    .map_err(|status| format!("{status:?}"))
}

/// Starts `call` (a POST with a body, e.g. a TokenReview) from the current context.
pub fn http_call(call: &HttpCall) -> Result<u32, HostError> {
    let headers: Vec<(&str, &str)> = call.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    hostcalls::dispatch_http_call(
        &call.cluster,
        headers,
        Some(&call.body),
        vec![],
        Duration::from_millis(call.timeout_ms),
    )
    .map_err(|status| HostError(status as u32))
}

/// Status code and (at most `max_body` bytes of) body of the current callout response.
/// A body over the limit is reported as `Err(actual size)` without being copied.
pub fn http_call_response(body_size: usize, max_body: usize) -> Response {
    let status = map_value(abi::MAP_HTTP_CALL_RESPONSE_HEADERS, ":status")
        .ok()
        .flatten()
        .and_then(|s| s.parse::<u16>().ok());
    if body_size > max_body {
        return Response { status, body: Err(body_size) };
    }
    let body = buffer(abi::BUFFER_HTTP_CALL_RESPONSE_BODY, body_size).ok().flatten().unwrap_or_default();
    Response { status, body: Ok(body) }
}

/// Shared data, as the [`Store`] the core expects.
pub struct SharedData;

impl Store for SharedData {
    fn get(&self, key: &str) -> Result<Versioned, StoreError> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        let mut cas: u32 = 0;
        // SAFETY: valid key and out-pointers; the returned buffer is ours.
        let status =
            unsafe { abi::proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
        match status {
            abi::OK => Ok((unsafe { owned_buffer(data, size) }, (cas != 0).then_some(cas))),
            abi::NOT_FOUND => Ok((None, None)),
            _ => Err(StoreError::Unavailable),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        // SAFETY: key and value are valid for reads of their lengths for the call.
        let status = unsafe {
            abi::proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas.unwrap_or(0))
        };
        match status {
            abi::OK => Ok(()),
            abi::CAS_MISMATCH => Err(StoreError::CasMismatch),
            _ => Err(StoreError::Unavailable),
        }
    }
}

/// A connection or stream property (e.g. `["source", "address"]`), or `None` if
/// the host does not know it.
pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    // The ABI encodes a path as its segments separated by NUL bytes (no trailing
    // one: APISIX looks a one-segment path up as an nginx variable, byte for byte).
    let encoded = path.join("\0");
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: valid path and out-pointers; the returned buffer is ours.
    let status = unsafe { abi::proxy_get_property(encoded.as_ptr(), encoded.len(), &mut data, &mut size) };
    if status != abi::OK {
        return None;
    }
    unsafe { owned_buffer(data, size) }
}

/// Sets a stream property of the effective request; in Envoy it becomes filter
/// state `wasm.<name>`, which access logs print with `%FILTER_STATE(wasm.<name>:PLAIN)%`.
pub fn set_property(name: &str, value: &[u8]) -> Result<(), HostError> {
    // SAFETY: name and value are valid for reads of their lengths for the call.
    check(unsafe { abi::proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len()) })
}

/// Defines (or finds) the metric `name` of `metric_type` (0 counter, 1 gauge,
/// 2 histogram) in this VM; returns its id. Hosts without metrics fail this.
pub fn define_metric(metric_type: MetricKind, name: &str) -> Result<u32, HostError> {
    let mut id: u32 = 0;
    // SAFETY: name is valid for reads of its length; `id` is a valid out-pointer.
    check(unsafe { abi::proxy_define_metric(metric_type as u32, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

/// Adds `offset` to a counter or gauge.
pub fn increment_metric(id: u32, offset: i64) -> Result<(), HostError> {
    // SAFETY: plain value arguments.
    check(unsafe { abi::proxy_increment_metric(id, offset) })
}

/// Sets a gauge, or records a histogram sample.
pub fn record_metric(id: u32, value: u64) -> Result<(), HostError> {
    // SAFETY: plain value arguments.
    check(unsafe { abi::proxy_record_metric(id, value) })
}

/// Fills `buf` from WASI `random_get`.
pub fn random(buf: &mut [u8]) -> Result<(), HostError> {
    // SAFETY: a valid buffer of `buf.len()` bytes.
    match unsafe { abi::random_get(buf.as_mut_ptr(), buf.len()) } {
        0 => Ok(()),
        errno => Err(HostError(u32::from(errno))),
    }
}

/// The proxy-wasm host as the core's [`Host`]: every call acts on the effective
/// context (the request being decided).
pub struct ProxyHost;

impl Host for ProxyHost {
    fn now_ns(&mut self) -> u64 {
        now_ns()
    }

    fn request_headers(&mut self) -> Result<HeaderMap, HostError> {
        request_headers()
    }

    fn set_request_header(&mut self, name: &str, value: &str) -> Result<(), HostError> {
        set_request_header(name, value)
    }

    fn remove_request_header(&mut self, name: &[u8]) -> Result<(), HostError> {
        remove_request_header(name)
    }

    fn set_response_header(&mut self, name: &str, value: &str) -> Result<(), HostError> {
        set_response_header(name, value)
    }

    fn property(&mut self, path: &[&str]) -> Option<Vec<u8>> {
        property(path)
    }

    fn set_property(&mut self, name: &str, value: &[u8]) -> Result<(), HostError> {
        set_property(name, value)
    }

    fn send_local_reply(&mut self, reply: &LocalReply) -> Result<(), HostError> {
        send_local_reply(reply)
    }

    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        define_metric(kind, name)
    }

    fn increment_metric(&mut self, id: u32, offset: i64) -> Result<(), HostError> {
        increment_metric(id, offset)
    }

    fn record_metric(&mut self, id: u32, value: u64) -> Result<(), HostError> {
        record_metric(id, value)
    }

    fn random(&mut self, buf: &mut [u8]) -> Result<(), HostError> {
        random(buf)
    }

    /// WASI's environment (`environ_get`): Envoy fills it from
    /// `vm_config.environment_variables` (`host_env_keys` copies variables of the
    /// Envoy process, `key_values` literal ones); APISIX's wasmtime inherits the
    /// nginx worker's environment, which keeps only what `env` directives name.
    fn environment_variable(&mut self, name: &str) -> Option<Vec<u8>> {
        use std::os::wasi::ffi::OsStringExt as _;
        std::env::var_os(name).map(std::ffi::OsString::into_vec)
    }

    fn request_body(&mut self, max: usize) -> Result<Vec<u8>, HostError> {
        Ok(buffer(abi::BUFFER_HTTP_REQUEST_BODY, max)?.unwrap_or_default())
    }

    fn http_call(&mut self, call: &HttpCall) -> Result<u32, HostError> {
        http_call(call)
    }
}

/// Runs `run` against the host `request` uses: the proxy's, or in test builds
/// (`fault-injection`) one failing the host call the request names.
pub fn for_request<R>(
    request: &mut nhi_guard_core::pipeline::Request,
    run: impl FnOnce(&mut dyn Host, &mut nhi_guard_core::pipeline::Request) -> R,
) -> R {
    #[cfg(feature = "fault-injection")]
    if let Some(fail) = request.fail_call.clone() {
        return run(&mut FaultyHost { fail }, request);
    }
    run(&mut ProxyHost, request)
}

/// Test builds only (`fault-injection`): the proxy-wasm host with one kind of call
/// failing, named as the [`Host`] method is (`set_request_header`, …), so that a real
/// Envoy, which never fails these calls, shows what the filter does when a host does.
#[cfg(feature = "fault-injection")]
pub struct FaultyHost {
    pub fail: String,
}

#[cfg(feature = "fault-injection")]
impl FaultyHost {
    /// The call `name` fails with `InternalFailure`.
    fn check(&self, name: &str) -> Result<(), HostError> {
        if self.fail == name {
            Err(HostError::INTERNAL_FAILURE)
        } else {
            Ok(())
        }
    }
}

#[cfg(feature = "fault-injection")]
impl Host for FaultyHost {
    fn now_ns(&mut self) -> u64 {
        ProxyHost.now_ns()
    }

    fn request_headers(&mut self) -> Result<HeaderMap, HostError> {
        self.check("request_headers")?;
        ProxyHost.request_headers()
    }

    fn set_request_header(&mut self, name: &str, value: &str) -> Result<(), HostError> {
        self.check("set_request_header")?;
        ProxyHost.set_request_header(name, value)
    }

    fn remove_request_header(&mut self, name: &[u8]) -> Result<(), HostError> {
        self.check("remove_request_header")?;
        ProxyHost.remove_request_header(name)
    }

    fn set_response_header(&mut self, name: &str, value: &str) -> Result<(), HostError> {
        self.check("set_response_header")?;
        ProxyHost.set_response_header(name, value)
    }

    fn property(&mut self, path: &[&str]) -> Option<Vec<u8>> {
        self.check("property").ok()?;
        ProxyHost.property(path)
    }

    fn set_property(&mut self, name: &str, value: &[u8]) -> Result<(), HostError> {
        self.check("set_property")?;
        ProxyHost.set_property(name, value)
    }

    fn send_local_reply(&mut self, reply: &LocalReply) -> Result<(), HostError> {
        self.check("send_local_reply")?;
        ProxyHost.send_local_reply(reply)
    }

    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        self.check("define_metric")?;
        ProxyHost.define_metric(kind, name)
    }

    fn increment_metric(&mut self, id: u32, offset: i64) -> Result<(), HostError> {
        self.check("increment_metric")?;
        ProxyHost.increment_metric(id, offset)
    }

    fn record_metric(&mut self, id: u32, value: u64) -> Result<(), HostError> {
        self.check("record_metric")?;
        ProxyHost.record_metric(id, value)
    }

    fn random(&mut self, buf: &mut [u8]) -> Result<(), HostError> {
        self.check("random")?;
        ProxyHost.random(buf)
    }

    fn environment_variable(&mut self, name: &str) -> Option<Vec<u8>> {
        ProxyHost.environment_variable(name)
    }

    fn request_body(&mut self, max: usize) -> Result<Vec<u8>, HostError> {
        self.check("request_body")?;
        ProxyHost.request_body(max)
    }

    fn http_call(&mut self, call: &HttpCall) -> Result<u32, HostError> {
        self.check("http_call")?;
        ProxyHost.http_call(call)
    }
}
