//! A test double of a rate limit service: `envoy.service.ratelimit.v3.RateLimitService`
//! (the API envoyproxy/ratelimit and Limitador serve, and Envoy's global `ratelimit`
//! filter calls) over gRPC on an ephemeral 127.0.0.1 port.
//!
//! It records every `ShouldRateLimit` call, so a test can say exactly which descriptors
//! Envoy asked about, and answers `OK` unless told otherwise: a descriptor entry (say
//! `nhi_identity` = `robot-a`) can be given a budget of N hits, after which every
//! descriptor holding that entry is `OVER_LIMIT`; or every call can fail with a gRPC
//! error. [`RateLimitDouble::stop`] (or dropping it) closes the port and every open
//! connection at once, as a crashed service would.
//!
//! One unary method needs little of gRPC: HTTP/2 (`h2`, on a current-thread tokio
//! runtime on a thread of its own), the five-byte message framing, `grpc-status` in the
//! trailers, and the few protobuf fields of the request and response, read and written
//! by hand in [`wire`] (field numbers from Envoy's `rls.proto` and `ratelimit.proto`).
//! That keeps Envoy's generated protos and a gRPC framework out of the test build; the
//! client that holds the double to the real encoding is Envoy itself, in the
//! `global_ratelimit` e2e suite. Its API is synchronous, like the rest of the harness.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use tokio::sync::oneshot;

use crate::envoy_config::repo_root;

/// Name of the rate limit service's cluster in `envoy/envoy-global-ratelimit.yaml`.
pub const CLUSTER: &str = "ratelimit";
/// The `duration_until_reset` of an `OVER_LIMIT` answer, which Envoy's
/// `enable_retry_after_header` turns into `Retry-After`.
pub const RESET_SECONDS: i64 = 42;

/// `<root>/envoy/envoy-global-ratelimit.yaml`: `envoy.yaml` plus Envoy's ratelimit filter.
pub fn shipped_envoy_config_path() -> PathBuf {
    repo_root().join("envoy").join("envoy-global-ratelimit.yaml")
}

/// `<root>/envoy/ratelimit/config.yaml`: the matching envoyproxy/ratelimit configuration.
pub fn shipped_service_config_path() -> PathBuf {
    repo_root().join("envoy").join("ratelimit").join("config.yaml")
}

/// One descriptor entry: (key, value).
pub type Entry = (String, String);

/// One `ShouldRateLimit` call, as the double received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RlsCall {
    pub domain: String,
    /// Each descriptor's entries, in order.
    pub descriptors: Vec<Vec<Entry>>,
    /// As sent: 0 means one hit.
    pub hits_addend: u32,
}

impl RlsCall {
    /// The value of the first entry named `key`, in any descriptor.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.descriptors.iter().flatten().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// `RateLimitResponse.RateLimit.Unit`'s values (`UNKNOWN` aside), as Envoy's
/// `rls.proto` names them: what a service's configuration may give a limit.
pub const UNITS: [&str; 7] = ["SECOND", "MINUTE", "HOUR", "DAY", "WEEK", "MONTH", "YEAR"];

/// The path of the one method: `/<package>.<service>/<method>`.
pub const SHOULD_RATE_LIMIT: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// gRPC status codes the double answers with (grpc/doc/statuscodes.md).
pub mod grpc_code {
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const UNAVAILABLE: u32 = 14;
}

/// `RateLimitResponse.Code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    Ok = 1,
    OverLimit = 2,
}

/// One descriptor's answer: `OVER_LIMIT` carries the budget it exceeded (sent as its
/// `current_limit`, per minute) and [`RESET_SECONDS`] as `duration_until_reset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    OverLimit { budget: u64 },
}

impl Status {
    pub fn code(self) -> Code {
        match self {
            Status::Ok => Code::Ok,
            Status::OverLimit { .. } => Code::OverLimit,
        }
    }
}

/// A `RateLimitResponse`: the overall code and one status per descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub overall: Code,
    pub statuses: Vec<Status>,
}

#[derive(Debug, Default)]
struct State {
    calls: Vec<RlsCall>,
    /// Entry → (hits left, the budget it was given). Entries not here are unlimited.
    budgets: BTreeMap<Entry, (u64, u64)>,
    /// Every call fails with this gRPC status code.
    failing: Option<u32>,
}

impl State {
    /// Records `call` and decides it. A descriptor is `OVER_LIMIT` when one of its
    /// entries has fewer hits left than the call's; otherwise it is `OK` and each of its
    /// budgeted entries pays. The call is `OVER_LIMIT` if any descriptor is. `Err`: the
    /// gRPC status code every call fails with.
    fn answer(&mut self, call: RlsCall) -> Result<Answer, u32> {
        self.calls.push(call.clone());
        if let Some(code) = self.failing {
            return Err(code);
        }
        let hits = u64::from(call.hits_addend.max(1));
        let mut answer = Answer { overall: Code::Ok, statuses: Vec::new() };
        for descriptor in &call.descriptors {
            let over = descriptor.iter().find_map(|entry| match self.budgets.get(entry) {
                Some(&(left, budget)) if left < hits => Some(budget),
                _ => None,
            });
            let status = match over {
                Some(budget) => {
                    answer.overall = Code::OverLimit;
                    Status::OverLimit { budget }
                }
                None => {
                    for entry in descriptor {
                        if let Some((left, _)) = self.budgets.get_mut(entry) {
                            *left -= hits;
                        }
                    }
                    Status::Ok
                }
            };
            answer.statuses.push(status);
        }
        Ok(answer)
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The protobuf wire format of the two messages, as far as the double needs it:
/// fields it does not know are skipped, and it writes what prost writes (fields in
/// tag order, defaults left out).
pub mod wire {
    use super::{Answer, RlsCall, Status, RESET_SECONDS};

    const VARINT: u64 = 0;
    const FIXED64: u64 = 1;
    const LEN: u64 = 2;
    const FIXED32: u64 = 5;

    /// Why a request could not be read.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Malformed(pub &'static str);

    impl std::fmt::Display for Malformed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "malformed RateLimitRequest: {}", self.0)
        }
    }

    struct Reader<'a>(&'a [u8]);

    /// A field's value: a varint, or the bytes of a length-delimited field.
    enum Value<'a> {
        Varint(u64),
        Bytes(&'a [u8]),
        Other,
    }

    impl<'a> Reader<'a> {
        fn varint(&mut self) -> Result<u64, Malformed> {
            let mut value = 0u64;
            for shift in (0..64).step_by(7) {
                let (&byte, rest) = self.0.split_first().ok_or(Malformed("truncated varint"))?;
                self.0 = rest;
                value |= u64::from(byte & 0x7f) << shift;
                if byte & 0x80 == 0 {
                    return Ok(value);
                }
            }
            Err(Malformed("varint over ten bytes"))
        }

        fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
            let (taken, rest) = self.0.split_at_checked(n).ok_or(Malformed("truncated field"))?;
            self.0 = rest;
            Ok(taken)
        }

        /// The next field's number and value; `None` at the end.
        fn field(&mut self) -> Result<Option<(u64, Value<'a>)>, Malformed> {
            if self.0.is_empty() {
                return Ok(None);
            }
            let key = self.varint()?;
            let value = match key & 7 {
                VARINT => Value::Varint(self.varint()?),
                LEN => {
                    let len = usize::try_from(self.varint()?).map_err(|_| Malformed("length"))?;
                    Value::Bytes(self.take(len)?)
                }
                FIXED64 => {
                    self.take(8)?;
                    Value::Other
                }
                FIXED32 => {
                    self.take(4)?;
                    Value::Other
                }
                _ => return Err(Malformed("unknown wire type")),
            };
            Ok(Some((key >> 3, value)))
        }
    }

    fn text(bytes: &[u8]) -> Result<String, Malformed> {
        String::from_utf8(bytes.to_vec()).map_err(|_| Malformed("a string that is not UTF-8"))
    }

    /// `RateLimitRequest`: `domain` (1), `descriptors` (2: `RateLimitDescriptor`,
    /// whose `entries` are 1: `key` 1, `value` 2), `hits_addend` (3).
    pub fn decode_request(bytes: &[u8]) -> Result<RlsCall, Malformed> {
        let mut call = RlsCall { domain: String::new(), descriptors: Vec::new(), hits_addend: 0 };
        let mut request = Reader(bytes);
        while let Some((number, value)) = request.field()? {
            match (number, value) {
                (1, Value::Bytes(domain)) => call.domain = text(domain)?,
                (2, Value::Bytes(descriptor)) => {
                    let mut entries = Vec::new();
                    let mut descriptor = Reader(descriptor);
                    while let Some((number, value)) = descriptor.field()? {
                        if let (1, Value::Bytes(entry)) = (number, value) {
                            let (mut key, mut value) = (String::new(), String::new());
                            let mut entry = Reader(entry);
                            while let Some((number, field)) = entry.field()? {
                                match (number, field) {
                                    (1, Value::Bytes(bytes)) => key = text(bytes)?,
                                    (2, Value::Bytes(bytes)) => value = text(bytes)?,
                                    _ => {}
                                }
                            }
                            entries.push((key, value));
                        }
                    }
                    call.descriptors.push(entries);
                }
                (3, Value::Varint(hits)) => {
                    call.hits_addend = u32::try_from(hits).map_err(|_| Malformed("hits_addend over u32"))?;
                }
                _ => {}
            }
        }
        Ok(call)
    }

    fn put_varint(out: &mut Vec<u8>, mut value: u64) {
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }

    fn put_uint(out: &mut Vec<u8>, number: u64, value: u64) {
        if value != 0 {
            put_varint(out, number << 3 | VARINT);
            put_varint(out, value);
        }
    }

    fn put_bytes(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
        put_varint(out, number << 3 | LEN);
        put_varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }

    /// `RateLimitResponse`: `overall_code` (1) and `statuses` (2: `DescriptorStatus`:
    /// `code` 1, `current_limit` 2 — `RateLimit`: `requests_per_unit` 1, `unit` 2
    /// (`MINUTE` = 2), `name` 3 —, `duration_until_reset` 4: `Duration.seconds` 1).
    pub fn encode_response(answer: &Answer) -> Vec<u8> {
        let mut out = Vec::new();
        put_uint(&mut out, 1, answer.overall as u64);
        for status in &answer.statuses {
            let mut descriptor = Vec::new();
            put_uint(&mut descriptor, 1, status.code() as u64);
            if let Status::OverLimit { budget } = *status {
                let mut limit = Vec::new();
                put_uint(&mut limit, 1, budget.min(u64::from(u32::MAX)));
                put_uint(&mut limit, 2, 2);
                put_bytes(&mut limit, 3, b"test-double");
                put_bytes(&mut descriptor, 2, &limit);
                let mut reset = Vec::new();
                put_uint(&mut reset, 1, RESET_SECONDS.unsigned_abs());
                put_bytes(&mut descriptor, 4, &reset);
            }
            put_bytes(&mut out, 2, &descriptor);
        }
        out
    }
}

/// A gRPC message in its frame: not compressed, its length (big-endian), itself.
fn frame(message: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap_or(u32::MAX).to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

/// The one message of a unary call's body (`None`: not exactly one uncompressed frame).
fn unframe(body: &[u8]) -> Option<&[u8]> {
    let (&[0], rest) = body.split_first_chunk::<1>()? else { return None };
    let (len, message) = rest.split_first_chunk::<4>()?;
    (usize::try_from(u32::from_be_bytes(*len)).ok()? == message.len()).then_some(message)
}

/// Answers every call on every connection until the runtime is dropped.
async fn serve(listener: tokio::net::TcpListener, state: Arc<Mutex<State>>) {
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            // Out of descriptors, say: try again shortly rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let Ok(mut connection) = h2::server::handshake(socket).await else { return };
            while let Some(Ok((request, respond))) = connection.accept().await {
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    if let Err(err) = call(request, respond, &state).await {
                        eprintln!("rate limit double: {err}");
                    }
                });
            }
        });
    }
}

/// One call: the request's message read whole, the answer sent as gRPC does (headers,
/// the framed message, `grpc-status` in the trailers; an error in the headers alone).
async fn call(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    state: &Mutex<State>,
) -> Result<(), h2::Error> {
    let known = request.uri().path() == SHOULD_RATE_LIMIT;
    let bytes = crate::h2c::read_body(&mut request.into_body()).await?;
    let answer = match (known, unframe(&bytes).map(wire::decode_request)) {
        (false, _) => Err(grpc_code::UNIMPLEMENTED),
        (true, Some(Ok(call))) => lock(state).answer(call),
        (true, _) => Err(grpc_code::INVALID_ARGUMENT),
    };
    let grpc_status = HeaderName::from_static("grpc-status");
    let mut head = http::Response::new(());
    head.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    match answer {
        Ok(answer) => {
            let mut stream = respond.send_response(head, false)?;
            stream.send_data(Bytes::from(frame(&wire::encode_response(&answer))), false)?;
            let mut trailers = http::HeaderMap::new();
            trailers.insert(grpc_status, HeaderValue::from(0u32));
            stream.send_trailers(trailers)
        }
        Err(code) => {
            head.headers_mut().insert(grpc_status, HeaderValue::from(code));
            respond.send_response(head, true).map(drop)
        }
    }
}

/// A running rate limit service double; stopped when dropped.
#[derive(Debug)]
pub struct RateLimitDouble {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RateLimitDouble {
    /// Listens on an ephemeral 127.0.0.1 port; answers `OK` to everything until told
    /// otherwise.
    pub fn start() -> Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).context("binding the rate limit double")?;
        let addr = listener.local_addr().context("rate limit double address")?;
        listener.set_nonblocking(true).context("rate limit double listener")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the rate limit double's tokio runtime")?;
        let listener = {
            let _context = runtime.enter();
            tokio::net::TcpListener::from_std(listener).context("rate limit double listener")?
        };
        let state = Arc::new(Mutex::new(State::default()));
        let serving = Arc::clone(&state);
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = thread::Builder::new()
            .name("rls-double".into())
            .spawn(move || {
                runtime.spawn(serve(listener, serving));
                // Sender sent or dropped: either way, stop.
                let _ = runtime.block_on(stopped);
                // Dropping the runtime cancels the server: the listener and every
                // connection close now, without a graceful GOAWAY.
                drop(runtime);
            })
            .context("spawning the rate limit double thread")?;
        Ok(Self { addr, state, stop: Some(stop), thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every call so far, oldest first.
    pub fn calls(&self) -> Vec<RlsCall> {
        lock(&self.state).calls.clone()
    }

    /// Every call so far, forgetting them.
    pub fn take_calls(&self) -> Vec<RlsCall> {
        std::mem::take(&mut lock(&self.state).calls)
    }

    /// Descriptors holding the entry `key` = `value` are `OK` for `hits` more hits,
    /// then `OVER_LIMIT`. Replaces an earlier budget of that entry.
    pub fn limit(&self, key: &str, value: &str, hits: u64) {
        lock(&self.state).budgets.insert((key.to_owned(), value.to_owned()), (hits, hits));
    }

    /// Descriptors holding the entry `key` = `value` are `OVER_LIMIT` from now on.
    pub fn over_limit(&self, key: &str, value: &str) {
        self.limit(key, value, 0);
    }

    /// Every call fails with gRPC `UNAVAILABLE` (`true`) or is answered again (`false`).
    pub fn fail(&self, failing: bool) {
        lock(&self.state).failing = failing.then_some(grpc_code::UNAVAILABLE);
    }

    /// Closes the port and every connection. Idempotent.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RateLimitDouble {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(descriptors: &[&[(&str, &str)]]) -> RlsCall {
        RlsCall {
            domain: "d".into(),
            descriptors: descriptors
                .iter()
                .map(|d| d.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect())
                .collect(),
            hits_addend: 0,
        }
    }

    fn codes(answer: &Answer) -> (Code, Vec<Code>) {
        (answer.overall, answer.statuses.iter().map(|s| s.code()).collect())
    }

    const OK: Code = Code::Ok;
    const OVER: Code = Code::OverLimit;

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
    }

    /// Bytes prost (the generated code of the `envoy-types` crate, 0.7.7) wrote for the
    /// same messages: a request with two descriptors (an entry with an empty value, which
    /// prost leaves out) and `hits_addend` 300; an answer with one `OK` and one
    /// `OVER_LIMIT` descriptor (budget 2); an all-`OK` answer.
    const REQUEST: &str =
        "0a096e68692d6775617264122d0a120a0a6e68695f697373756572120464656d6f0a170a0c6e68695f\
                           6964656e746974791207726f626f742d6112050a030a016b18ac02";
    const OVER_ANSWER: &str = "080212020801121908021211080210021a0b746573742d646f75626c652202082a";
    const OK_ANSWER: &str = "080112020801";

    fn request_bytes() -> Vec<u8> {
        unhex(&REQUEST.split_whitespace().collect::<String>())
    }

    #[test]
    fn the_wire_format_is_protobufs_as_prost_writes_it() {
        let call = wire::decode_request(&request_bytes()).unwrap();
        assert_eq!(call.domain, "nhi-guard");
        assert_eq!(
            call.descriptors,
            vec![
                vec![
                    ("nhi_issuer".to_owned(), "demo".to_owned()),
                    ("nhi_identity".to_owned(), "robot-a".to_owned())
                ],
                vec![("k".to_owned(), String::new())],
            ]
        );
        assert_eq!(call.hits_addend, 300);
        let over = Answer { overall: OVER, statuses: vec![Status::Ok, Status::OverLimit { budget: 2 }] };
        assert_eq!(wire::encode_response(&over), unhex(OVER_ANSWER));
        let ok = Answer { overall: OK, statuses: vec![Status::Ok] };
        assert_eq!(wire::encode_response(&ok), unhex(OK_ANSWER));
        // Truncated anywhere: refused, never read as a shorter request.
        let bytes = request_bytes();
        for end in 1..bytes.len() {
            if let Ok(partial) = wire::decode_request(&bytes[..end]) {
                assert_ne!(partial, call, "cut at {end}");
            }
        }
        assert!(wire::decode_request(&[0x0a, 0x05, b'a']).is_err());
        assert!(wire::decode_request(&[0x0a, 0x01, 0xff]).is_err(), "not UTF-8");
        assert!(wire::decode_request(&[0x0b]).is_err(), "wire type 3");
    }

    #[test]
    fn budgets_count_per_entry_and_refusals_do_not_pay() {
        let mut state = State::default();
        state.budgets.insert(("id".into(), "a".into()), (2, 2));
        let a = call(&[&[("iss", "demo"), ("id", "a")]]);
        let b = call(&[&[("iss", "demo"), ("id", "b")]]);
        assert_eq!(codes(&state.answer(a.clone()).unwrap()), (OK, vec![OK]));
        assert_eq!(codes(&state.answer(b.clone()).unwrap()), (OK, vec![OK]));
        assert_eq!(codes(&state.answer(a.clone()).unwrap()), (OK, vec![OK]));
        let refused = state.answer(a.clone()).unwrap();
        assert_eq!(refused.statuses, vec![Status::OverLimit { budget: 2 }]);
        assert_eq!(codes(&state.answer(b).unwrap()), (OK, vec![OK]));
        // A call with two descriptors is over if either is.
        let both = call(&[&[("id", "b")], &[("id", "a")]]);
        assert_eq!(codes(&state.answer(both).unwrap()), (OVER, vec![OK, OVER]));
        assert_eq!(state.calls.len(), 6);
        assert_eq!(state.calls[0].value("id"), Some("a"));
        assert_eq!(state.calls[0].value("nope"), None);
    }

    #[test]
    fn hits_addend_counts_and_failing_answers_an_error() {
        let mut state = State::default();
        state.budgets.insert(("id".into(), "a".into()), (3, 3));
        let mut two = call(&[&[("id", "a")]]);
        two.hits_addend = 2;
        assert_eq!(codes(&state.answer(two.clone()).unwrap()), (OK, vec![OK]));
        assert_eq!(codes(&state.answer(two).unwrap()), (OVER, vec![OVER]));
        state.failing = Some(grpc_code::UNAVAILABLE);
        assert_eq!(state.answer(call(&[&[("id", "b")]])), Err(grpc_code::UNAVAILABLE));
        assert_eq!(state.calls.len(), 3, "failed calls are recorded too");
    }

    /// One unary call over HTTP/2, as a gRPC client makes it: the status and body of
    /// the response and its `grpc-status` (from the trailers, or the headers alone).
    fn grpc(addr: SocketAddr, path: &str, message: &[u8]) -> Result<(u16, Vec<u8>, Option<String>)> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let (client, connection) = h2::client::handshake(tcp).await?;
            let driver = tokio::spawn(connection);
            let mut client = client.ready().await?;
            let request = http::Request::builder()
                .method("POST")
                .uri(format!("http://{addr}{path}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())?;
            let (response, mut send) = client.send_request(request, false)?;
            send.send_data(Bytes::from(frame(message)), true)?;
            let response = response.await?;
            let status = response.status().as_u16();
            let mut grpc_status =
                response.headers().get("grpc-status").map(|v| v.to_str().unwrap_or_default().to_owned());
            let mut body = response.into_body();
            let bytes = crate::h2c::read_body(&mut body).await?;
            if let Some(trailers) = body.trailers().await? {
                grpc_status = trailers.get("grpc-status").map(|v| v.to_str().unwrap_or_default().to_owned());
            }
            driver.abort();
            anyhow::Ok((status, bytes, grpc_status))
        })
    }

    /// The double over a real HTTP/2 connection, then stopped.
    #[test]
    fn answers_over_grpc_and_stop_closes_the_port() {
        let mut double = RateLimitDouble::start().unwrap();
        double.over_limit("nhi_identity", "robot-a");
        let (status, body, grpc_status) = grpc(double.addr(), SHOULD_RATE_LIMIT, &request_bytes()).unwrap();
        assert_eq!((status, grpc_status.as_deref()), (200, Some("0")));
        let answer = Answer { overall: OVER, statuses: vec![Status::OverLimit { budget: 0 }, Status::Ok] };
        assert_eq!(unframe(&body), Some(wire::encode_response(&answer).as_slice()));
        let calls = double.take_calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].domain, "nhi-guard");
        assert!(double.calls().is_empty());

        let (_, body, grpc_status) = grpc(double.addr(), "/other.Service/Method", &request_bytes()).unwrap();
        assert_eq!((body.is_empty(), grpc_status.as_deref()), (true, Some("12")));
        let (_, _, grpc_status) = grpc(double.addr(), SHOULD_RATE_LIMIT, &[0x0b]).unwrap();
        assert_eq!(grpc_status.as_deref(), Some("3"));
        double.fail(true);
        let (_, _, grpc_status) = grpc(double.addr(), SHOULD_RATE_LIMIT, &request_bytes()).unwrap();
        assert_eq!(grpc_status.as_deref(), Some("14"));

        double.stop();
        assert!(grpc(double.addr(), SHOULD_RATE_LIMIT, &request_bytes()).is_err(), "closed after stop");
        assert!(std::net::TcpStream::connect(double.addr()).is_err());
    }
}
