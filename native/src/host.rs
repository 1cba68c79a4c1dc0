//! The core's [`Host`] over Envoy's dynamic-modules ABI, for one callback of one
//! request: `filter` is the `DynamicModuleHttpFilter*` Envoy handed to the hook, valid
//! until the hook returns. A host without a filter (a VM starting on a worker before
//! its first request) answers every request-scoped call with an error, never calls
//! Envoy with a null pointer.
//!
//! Bytes are bytes: header names and values are copied out of Envoy as they are;
//! nothing here decodes them.

use std::ffi::c_void;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use nhi_guard_core::host::header_map::HeaderMap;
use nhi_guard_core::host::{Host, HostError, HttpCall, MetricKind};
use nhi_guard_core::keys::fetch::Response;
use nhi_guard_core::reason::LocalReply;

use crate::abi::{self, EnvoyBuffer, HttpHeader, ModuleBuffer};
use crate::metrics::{self, Families};

/// Local replies say who answered in Envoy's `%RESPONSE_CODE_DETAILS%`.
const REPLY_DETAILS: &str = "nhi_guard";

pub struct NativeHost {
    filter: *mut c_void,
    /// The configuration's metric families (none: metrics are not counted).
    families: Option<Arc<Families>>,
    /// Callouts made through [`Host::http_call`] in this hook: Envoy's id and the
    /// token the core was given for it. The filter keeps them to route the answer.
    pub calls: Vec<Callout>,
    /// Whether a local reply goes out at once or waits for the hook's end.
    replies: Replies,
    /// A request header was set or removed in this hook: the route Envoy chose from
    /// the client's headers may no longer be the request's.
    headers_changed: bool,
}

/// When this host sends a local reply.
#[derive(Debug)]
enum Replies {
    /// As the pipeline sends it.
    AtOnce,
    /// At the end of the hook ([`NativeHost::deferring`]), the last one sent.
    Deferred(Option<LocalReply>),
}

/// A callout in flight: Envoy's id for it (unique per filter, so not per worker) and
/// the token the core knows it by (unique per worker: see [`next_token`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Callout {
    pub envoy_id: u64,
    pub token: u32,
}

thread_local! {
    static NEXT_TOKEN: std::cell::Cell<u32> = const { std::cell::Cell::new(1) };
}

/// A callout token no other callout of this worker holds (the core's fetch machine and
/// review leases tell answers apart by it; Envoy's ids restart with every request).
pub fn next_token() -> u32 {
    NEXT_TOKEN.with(|next| {
        let token = next.get();
        next.set(token.checked_add(1).unwrap_or(1));
        token
    })
}

impl NativeHost {
    /// The host for one hook of the filter Envoy calls `filter`.
    pub fn new(filter: *mut c_void, families: &Arc<Families>) -> Self {
        NativeHost {
            filter,
            families: Some(Arc::clone(families)),
            calls: Vec::new(),
            replies: Replies::AtOnce,
            headers_changed: false,
        }
    }

    /// A host for a hook Envoy calls outside the request's own filter chain (a
    /// callout's answer, a scheduled event): there Envoy completes the stream inside
    /// `send_response` — its stream-complete hook and access log run before the call
    /// returns — so a reply sent in the middle of the pipeline would go out before the
    /// pipeline recorded its decision (no decision line; filter state refused on a
    /// finished stream). The reply waits until [`NativeHost::send_deferred`].
    pub fn deferring(filter: *mut c_void, families: &Arc<Families>) -> Self {
        NativeHost { replies: Replies::Deferred(None), ..NativeHost::new(filter, families) }
    }

    /// Sends the reply the pipeline decided on, if it did: the last thing a deferring
    /// hook does (Envoy may finish the stream, and call the module again, inside it).
    pub fn send_deferred(self) {
        if let Replies::Deferred(Some(reply)) = &self.replies {
            self.send_now(reply);
        }
    }

    fn send_now(&self, reply: &LocalReply) {
        let Ok(filter) = self.filter() else { return };
        if self.headers_changed {
            // A forged `x-nhi-client` (removed) picked the route: choose it again, so the
            // reply gets the request's route (its response headers, the access log's
            // route name), as the wasm's header removal does by itself.
            clear_route_cache(filter);
        }
        let headers = HttpHeader::borrowing(reply.headers.iter().map(|(n, v)| (n.as_ref(), v.as_ref())));
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
    }

    /// A host for work outside any request (a worker's VM starting): series may be
    /// defined, nothing written.
    pub fn detached(families: &Arc<Families>) -> Self {
        NativeHost::new(std::ptr::null_mut(), families)
    }

    /// Envoy's filter this host calls (null when detached).
    pub fn filter_ptr(&self) -> *mut c_void {
        self.filter
    }

    /// Starts an HTTP request to `cluster` for this filter: Envoy's id for it.
    pub fn callout(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u64, HostError> {
        let filter = self.filter()?;
        let headers = HttpHeader::borrowing(headers.iter().map(|(n, v)| (*n, *v)));
        let mut id = 0u64;
        // SAFETY: live filter; every buffer outlives the call (Envoy copies them).
        let result = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_http_callout(
                filter,
                &mut id,
                ModuleBuffer::of(cluster.as_bytes()),
                headers.as_ptr(),
                headers.len(),
                ModuleBuffer::of(body),
                timeout_ms,
            )
        };
        match result {
            abi::CALLOUT_INIT_SUCCESS => Ok(id),
            abi::CALLOUT_INIT_MISSING_HEADERS => Err(HostError::BAD_ARGUMENT),
            abi::CALLOUT_INIT_CLUSTER_NOT_FOUND => Err(HostError::NOT_FOUND),
            // A duplicate id, or no request could be made (no healthy host).
            _ => Err(HostError::INTERNAL_FAILURE),
        }
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
        let bytes = raw.iter().map(|h| h.key_length.saturating_add(h.value_length)).sum();
        let mut map = HeaderMap::with_capacity(raw.len(), bytes);
        for header in &raw {
            // SAFETY: Envoy's buffers, valid until this hook returns; copied now.
            let (name, value) = unsafe { header.as_pair() };
            map.push(name, value);
        }
        Ok(map)
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

impl NativeHost {
    /// An integer attribute, as Envoy's proxy-wasm property of the same name holds it
    /// (eight bytes, little-endian), which is what the core reads (`response.code`).
    fn attribute_int(&self, id: u32) -> Option<Vec<u8>> {
        let filter = self.filter().ok()?;
        let mut value = 0u64;
        // SAFETY: live filter; `value` is written by Envoy.
        if !unsafe {
            abi::envoy_dynamic_module_callback_http_filter_get_attribute_int(filter, id, &mut value)
        } {
            return None;
        }
        Some(value.to_le_bytes().to_vec())
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

/// Bytes of the request body so far: what Envoy buffered and this hook's chunk.
pub fn request_body_len(filter: *mut c_void) -> usize {
    if filter.is_null() {
        return 0;
    }
    // SAFETY: the live filter of this hook.
    unsafe {
        abi::envoy_dynamic_module_callback_http_get_body_size(filter, abi::BUFFERED_REQUEST_BODY)
            + abi::envoy_dynamic_module_callback_http_get_body_size(filter, abi::RECEIVED_REQUEST_BODY)
    }
}

/// Resumes the request a hook paused (after its callout was answered).
pub fn continue_decoding(filter: *mut c_void) {
    if !filter.is_null() {
        // SAFETY: the live filter of this hook.
        unsafe { abi::envoy_dynamic_module_callback_http_filter_continue_decoding(filter) };
    }
}

/// A callout's answer as Envoy's callout-done hook hands it over: the result, and
/// the response's headers and body chunks (null on a failed callout).
pub struct CalloutAnswer {
    pub result: u32,
    pub headers: *const HttpHeader,
    pub headers_size: usize,
    pub chunks: *const EnvoyBuffer,
    pub chunks_size: usize,
}

impl CalloutAnswer {
    /// The answer as the core reads one: the `:status` header, and the body (its
    /// chunks joined) unless it is over `max_body` bytes (then `Err(its size)`). A
    /// callout that failed (reset, over Envoy's buffer) has neither.
    ///
    /// # Safety
    /// `headers` and `chunks` are null or valid for `headers_size` and `chunks_size`
    /// entries whose buffers are valid (Envoy's, for the hook that handed them over).
    pub unsafe fn response(&self, max_body: usize) -> Response {
        if self.result != abi::CALLOUT_SUCCESS {
            return Response { status: None, body: Ok(Vec::new()) };
        }
        // SAFETY: the caller vouches for the pointers and lengths.
        let headers = unsafe { entries(self.headers, self.headers_size) };
        let status = headers.iter().find_map(|h| {
            // SAFETY: Envoy's buffers, valid for this hook.
            let (name, value) = unsafe { h.as_pair() };
            (name == b":status").then_some(())?;
            std::str::from_utf8(value).ok()?.parse::<u16>().ok()
        });
        // SAFETY: as above.
        let chunks = unsafe { entries(self.chunks, self.chunks_size) };
        let size: usize = chunks.iter().map(|c| c.length).sum();
        if size > max_body {
            return Response { status, body: Err(size) };
        }
        let mut body = Vec::with_capacity(size);
        for chunk in chunks {
            // SAFETY: Envoy's buffers, valid for this hook.
            body.extend_from_slice(&unsafe { chunk.to_vec() });
        }
        Response { status, body: Ok(body) }
    }
}

/// `len` entries at `ptr`, none for a null pointer.
///
/// # Safety
/// `ptr` is null or valid for reads of `len` entries for the lifetime chosen.
unsafe fn entries<'a, T>(ptr: *const T, len: usize) -> &'a [T] {
    if ptr.is_null() {
        return &[];
    }
    // SAFETY: the caller vouches for the pointer and length.
    unsafe { std::slice::from_raw_parts(ptr, len) }
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
        self.headers_changed = true;
        self.set_header(abi::REQUEST_HEADER, name.as_bytes(), ModuleBuffer::of(value.as_bytes()))
    }

    fn remove_request_header(&mut self, name: &[u8]) -> Result<(), HostError> {
        self.headers_changed = true;
        self.set_header(abi::REQUEST_HEADER, name, ModuleBuffer::NULL)
    }

    fn set_response_header(&mut self, name: &str, value: &str) -> Result<(), HostError> {
        self.set_header(abi::RESPONSE_HEADER, name.as_bytes(), ModuleBuffer::of(value.as_bytes()))
    }

    /// The properties the pipeline reads, as Envoy's attributes of the same names
    /// (the wasm's `connection.*` are the downstream TLS connection's); anything else
    /// is unknown here.
    fn property(&mut self, path: &[&str]) -> Option<Vec<u8>> {
        let id = match path {
            ["source", "address"] => abi::ATTRIBUTE_SOURCE_ADDRESS,
            ["xds", "route_name"] => abi::ATTRIBUTE_XDS_ROUTE_NAME,
            ["connection", "sha256_peer_certificate_digest"] => abi::ATTRIBUTE_SHA256_PEER_CERTIFICATE_DIGEST,
            ["connection", "uri_san_peer_certificate"] => abi::ATTRIBUTE_URI_SAN_PEER_CERTIFICATE,
            ["connection", "subject_peer_certificate"] => abi::ATTRIBUTE_SUBJECT_PEER_CERTIFICATE,
            ["response", "code"] => return self.attribute_int(abi::ATTRIBUTE_RESPONSE_CODE),
            _ => return None,
        };
        self.attribute(id)
    }

    /// Filter state `wasm.<name>`: the key the wasm's `proxy_set_property` writes, so
    /// access-log formats and rate-limit descriptors read both shells alike.
    fn set_property(&mut self, name: &str, value: &[u8]) -> Result<(), HostError> {
        let filter = self.filter()?;
        let key = format!("wasm.{name}");
        // SAFETY: live filter; both buffers valid for the call (Envoy copies them).
        let set = unsafe {
            abi::envoy_dynamic_module_callback_http_set_filter_state_bytes(
                filter,
                ModuleBuffer::of(key.as_bytes()),
                ModuleBuffer::of(value),
            )
        };
        if set {
            Ok(())
        } else {
            Err(HostError::NOT_FOUND)
        }
    }

    fn send_local_reply(&mut self, reply: &LocalReply) -> Result<(), HostError> {
        self.filter()?;
        match &mut self.replies {
            Replies::Deferred(slot) => *slot = Some(reply.clone()),
            Replies::AtOnce => self.send_now(reply),
        }
        Ok(())
    }

    /// Metric families defined on the configuration; see [`crate::metrics`].
    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        let families = self.families.as_ref().ok_or(HostError::UNIMPLEMENTED)?;
        metrics::define(families, kind, name)
    }

    fn increment_metric(&mut self, id: u32, offset: i64) -> Result<(), HostError> {
        let families = self.families.as_ref().ok_or(HostError::UNIMPLEMENTED)?;
        metrics::increment(families, self.filter, id, offset)
    }

    fn record_metric(&mut self, id: u32, value: u64) -> Result<(), HostError> {
        metrics::record(self.filter, id, value)
    }

    fn random(&mut self, buf: &mut [u8]) -> Result<(), HostError> {
        getrandom::getrandom(buf).map_err(|_| HostError::INTERNAL_FAILURE)
    }

    /// Envoy's own environment: the module runs in its process.
    fn environment_variable(&mut self, name: &str) -> Option<Vec<u8>> {
        use std::os::unix::ffi::OsStringExt as _;
        std::env::var_os(name).map(|v| v.into_vec())
    }

    /// The body buffered so far and this hook's chunk, at most `max` bytes.
    fn request_body(&mut self, max: usize) -> Result<Vec<u8>, HostError> {
        let filter = self.filter()?;
        let mut body = Vec::new();
        for body_type in [abi::BUFFERED_REQUEST_BODY, abi::RECEIVED_REQUEST_BODY] {
            // SAFETY: live filter; `chunks` has room for the count Envoy gave.
            let count =
                unsafe { abi::envoy_dynamic_module_callback_http_get_body_chunks_size(filter, body_type) };
            if count == 0 {
                continue;
            }
            let mut chunks = vec![EnvoyBuffer::EMPTY; count];
            if !unsafe {
                abi::envoy_dynamic_module_callback_http_get_body_chunks(
                    filter,
                    body_type,
                    chunks.as_mut_ptr(),
                )
            } {
                continue;
            }
            for chunk in chunks {
                if body.len() >= max {
                    return Ok(body);
                }
                // SAFETY: Envoy's buffer, valid for this hook; copied now.
                let bytes = unsafe { chunk.to_vec() };
                let room = max.saturating_sub(body.len());
                body.extend_from_slice(bytes.get(..room.min(bytes.len())).unwrap_or_default());
            }
        }
        Ok(body)
    }

    /// A TokenReview: Envoy's HTTP callout from this request.
    fn http_call(&mut self, call: &HttpCall) -> Result<u32, HostError> {
        let headers: Vec<(&str, &str)> = call.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let envoy_id = self.callout(&call.cluster, &headers, &call.body, call.timeout_ms)?;
        let token = next_token();
        self.calls.push(Callout { envoy_id, token });
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &'static [u8], value: &'static [u8]) -> HttpHeader {
        HttpHeader {
            key_ptr: name.as_ptr(),
            key_length: name.len(),
            value_ptr: value.as_ptr(),
            value_length: value.len(),
        }
    }

    fn chunk(bytes: &'static [u8]) -> EnvoyBuffer {
        EnvoyBuffer { ptr: bytes.as_ptr(), length: bytes.len() }
    }

    fn answer(result: u32, headers: &[HttpHeader], chunks: &[EnvoyBuffer], max_body: usize) -> Response {
        let answer = CalloutAnswer {
            result,
            headers: headers.as_ptr(),
            headers_size: headers.len(),
            chunks: chunks.as_ptr(),
            chunks_size: chunks.len(),
        };
        // SAFETY: the slices outlive the call.
        unsafe { answer.response(max_body) }
    }

    /// What a key server, feed or API server answers — or a hostile one, or a failed
    /// callout — as the core reads it.
    #[test]
    fn callout_answers_are_read_as_bytes_with_their_bounds() {
        let ok = [header(b":status", b"200"), header(b"content-type", b"application/json")];
        let body = [chunk(b"{\"keys\":"), chunk(b"[]}")];
        let read = answer(abi::CALLOUT_SUCCESS, &ok, &body, 64);
        assert_eq!((read.status, read.body), (Some(200), Ok(b"{\"keys\":[]}".to_vec())));

        // Over the bound: its size, nothing copied.
        assert_eq!(answer(abi::CALLOUT_SUCCESS, &ok, &body, 10).body, Err(11));
        // A reset or an answer over Envoy's buffer: no status, no body.
        let failed = answer(1, &ok, &body, 64);
        assert_eq!((failed.status, failed.body), (None, Ok(Vec::new())));
        // No headers or chunks at all (null pointers).
        let empty = CalloutAnswer {
            result: 0,
            headers: std::ptr::null(),
            headers_size: 3,
            chunks: std::ptr::null(),
            chunks_size: 2,
        };
        // SAFETY: null pointers are never read.
        let read = unsafe { empty.response(64) };
        assert_eq!((read.status, read.body), (None, Ok(Vec::new())));
        // A status that is not a number, not UTF-8, or out of range: none.
        for bad in [&b"2OO"[..], b"\xff200", b"99999", b""] {
            let headers =
                [HttpHeader { value_ptr: bad.as_ptr(), value_length: bad.len(), ..header(b":status", b"") }];
            assert_eq!(answer(abi::CALLOUT_SUCCESS, &headers, &[], 64).status, None, "{bad:?}");
        }
        // Two statuses: the first counts.
        let twice = [header(b":status", b"503"), header(b":status", b"200")];
        assert_eq!(answer(abi::CALLOUT_SUCCESS, &twice, &[], 64).status, Some(503));
    }
}
