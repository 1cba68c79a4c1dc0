//! A minimal HTTP/1.1 server and client on `std::net`, enough to stand in for the
//! upstream and the JWKS server behind Envoy and to talk to Envoy's listener and admin.
//!
//! The server keeps connections alive (Envoy pools upstream connections), reads bodies
//! by `Content-Length` or chunked encoding, and always answers with `Content-Length`.
//! The client sends `Connection: close` and reads the answer to the end.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

const MAX_LINE: usize = 64 * 1024;
const MAX_HEADERS: usize = 200;
const MAX_BODY: usize = 16 * 1024 * 1024;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Headers in arrival order, names lowercased; a name may repeat.
pub type Headers = Vec<(String, String)>;

fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    header_values(headers, name).into_iter().next()
}

fn header_values<'a>(headers: &'a Headers, name: &str) -> Vec<&'a str> {
    headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
}

/// A request as the server received it.
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub method: String,
    /// The request target as sent, query string included.
    pub target: String,
    pub headers: Headers,
    pub body: Vec<u8>,
}

impl Request {
    /// The target without its query string.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// The first value of `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub fn header_values(&self, name: &str) -> Vec<&str> {
        header_values(&self.headers, name)
    }
}

/// A response: built by a server handler, or received by [`request`].
#[derive(Clone, Debug, Default)]
pub struct Response {
    pub status: u16,
    pub headers: Headers,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16) -> Self {
        Self { status, ..Self::default() }
    }

    /// A response with a JSON body and `content-type: application/json`.
    pub fn json(status: u16, body: &Value) -> Self {
        Self::new(status).with_header("content-type", "application/json").with_body(body.to_string())
    }

    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The first value of `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub fn header_values(&self, name: &str) -> Vec<&str> {
        header_values(&self.headers, name)
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn body_json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("response body is not JSON: {:?}", self.body_text()))
    }
}

/// What a [`Server`] runs for each request. Runs on the connection's own thread, so it
/// may block (e.g. to simulate a slow key server).
pub type Handler = dyn Fn(&Request) -> Response + Send + Sync + 'static;

struct Shared {
    handler: Box<Handler>,
    stopping: AtomicBool,
    next_connection: AtomicU64,
    /// Open connections, so that dropping the server can cut them.
    connections: Mutex<HashMap<u64, TcpStream>>,
    /// Requests received per path (query string excluded).
    hits: Mutex<HashMap<String, u64>>,
}

/// A threaded HTTP/1.1 server on 127.0.0.1. Dropping it stops accepting and closes
/// every open connection.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves on an ephemeral port of 127.0.0.1.
    pub fn start<F>(handler: F) -> Result<Self>
    where
        F: Fn(&Request) -> Response + Send + Sync + 'static,
    {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)), handler)
    }

    /// Serves on `addr` (the demo uses fixed ports).
    pub fn bind<F>(addr: SocketAddr, handler: F) -> Result<Self>
    where
        F: Fn(&Request) -> Response + Send + Sync + 'static,
    {
        let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let shared = Arc::new(Shared {
            handler: Box::new(handler),
            stopping: AtomicBool::new(false),
            next_connection: AtomicU64::new(0),
            connections: Mutex::new(HashMap::new()),
            hits: Mutex::new(HashMap::new()),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("http-accept-{}", addr.port()))
                .spawn(move || accept_loop(&listener, &shared))
                .context("spawning the accept thread")?
        };
        Ok(Self { addr, shared, acceptor: Some(acceptor) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests received so far for `path` (query string excluded).
    pub fn hits(&self, path: &str) -> u64 {
        lock(&self.shared.hits).get(path).copied().unwrap_or(0)
    }

    /// Requests received so far on any path.
    pub fn total_hits(&self) -> u64 {
        lock(&self.shared.hits).values().sum()
    }

    pub fn reset_hits(&self) {
        lock(&self.shared.hits).clear();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept() so the loop sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for (_, stream) in lock(&self.shared.connections).drain() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// Locks, ignoring poisoning: a panicking handler must not wedge the server's bookkeeping.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let id = shared.next_connection.fetch_add(1, Ordering::SeqCst);
        if let Ok(clone) = stream.try_clone() {
            lock(&shared.connections).insert(id, clone);
        }
        let for_thread = Arc::clone(shared);
        let spawned = thread::Builder::new().name(format!("http-conn-{id}")).spawn(move || {
            // Errors here are the peer's problem (reset, garbage): drop the connection.
            let _ = serve_connection(stream, &for_thread);
            lock(&for_thread.connections).remove(&id);
        });
        if spawned.is_err() {
            lock(&shared.connections).remove(&id);
        }
    }
}

fn serve_connection(stream: TcpStream, shared: &Shared) -> Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let Some((start_line, headers)) = read_head(&mut reader)? else {
            return Ok(()); // clean close between requests
        };
        let mut parts = start_line.split_whitespace();
        let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
            write_response(&mut writer, &Response::new(400), false)?;
            bail!("malformed request line {start_line:?}");
        };
        let body = read_body(&mut reader, &headers, true)?;
        let request = Request { method: method.to_owned(), target: target.to_owned(), headers, body };
        let keep_alive = match request.header("connection") {
            Some(value) if value.eq_ignore_ascii_case("close") => false,
            Some(value) if value.eq_ignore_ascii_case("keep-alive") => true,
            _ => version == "HTTP/1.1",
        };
        *lock(&shared.hits).entry(request.path().to_owned()).or_insert(0) += 1;
        let response = (shared.handler)(&request);
        write_response(&mut writer, &response, keep_alive)?;
        if !keep_alive {
            return Ok(());
        }
    }
}

fn write_response(writer: &mut impl Write, response: &Response, keep_alive: bool) -> Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", response.status, reason(response.status));
    for (name, value) in &response.headers {
        if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("connection") {
            continue; // framing is ours to decide
        }
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\n", response.body.len()));
    if !keep_alive {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    writer.write_all(head.as_bytes())?;
    writer.write_all(&response.body)?;
    writer.flush()?;
    Ok(())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Sends one request with `Connection: close` and reads the whole response.
/// `headers` are sent as given, after `host`.
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Result<Response> {
    request_with_body(addr, method, path, headers, &[])
}

/// Sends `total` GETs of `path` carrying `Authorization: Bearer <token>` from
/// `clients` parallel clients (`total / clients` each); counts the statuses.
pub fn bearer_status_counts(
    addr: SocketAddr,
    path: &str,
    token: &str,
    clients: usize,
    total: usize,
) -> Result<BTreeMap<u16, usize>> {
    let per_client = total / clients.max(1);
    let authorization = format!("Bearer {token}");
    let handles: Vec<JoinHandle<Result<Vec<u16>>>> = (0..clients)
        .map(|_| {
            let (path, authorization) = (path.to_owned(), authorization.clone());
            thread::spawn(move || {
                (0..per_client)
                    .map(|_| Ok(request(addr, "GET", &path, &[("authorization", &authorization)])?.status))
                    .collect()
            })
        })
        .collect();
    let mut counts = BTreeMap::new();
    for handle in handles {
        let statuses = handle.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        for status in statuses {
            *counts.entry(status).or_insert(0) += 1;
        }
    }
    Ok(counts)
}

/// [`request`] with header values as raw bytes (see [`exchange_over_raw`]).
pub fn request_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
) -> Result<Response> {
    let stream = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT).context("connecting")?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    exchange_over_raw(stream, &addr.to_string(), method, path, headers, &[])
        .with_context(|| format!("HTTP {method} http://{addr}{path}"))
}

/// [`request`] with a body (sent with `Content-Length` when not empty).
pub fn request_with_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response> {
    exchange(addr, method, path, headers, body).with_context(|| format!("HTTP {method} http://{addr}{path}"))
}

/// [`request`] from a chosen local address (e.g. `127.0.0.2`), so the server sees
/// another source address: how the e2e suite exercises source CIDR rules.
pub fn request_from(
    local: std::net::IpAddr,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Response> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(local, 0).into()).with_context(|| format!("binding {local}"))?;
    socket.connect_timeout(&addr.into(), CLIENT_TIMEOUT).context("connecting")?;
    exchange_on(socket.into(), addr, method, path, headers, &[])
        .with_context(|| format!("HTTP {method} http://{addr}{path} from {local}"))
}

fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response> {
    let stream = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT).context("connecting")?;
    exchange_on(stream, addr, method, path, headers, body)
}

fn exchange_on(
    stream: TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    exchange_over(stream, &addr.to_string(), method, path, headers, body)
}

/// One request with `Connection: close` over an established stream (plain TCP, or
/// TLS from `tls`), `authority` as `host`; reads the whole response.
pub fn exchange_over<S: Read + Write>(
    stream: S,
    authority: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response> {
    let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
    exchange_over_raw(stream, authority, method, path, &headers, body)
}

/// [`exchange_over`] with header values as raw bytes, sent exactly as given (e.g.
/// values that are not UTF-8, as an attacker may send them).
pub fn exchange_over_raw<S: Read + Write>(
    mut stream: S,
    authority: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> Result<Response> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {authority}\r\n").into_bytes();
    for (name, value) in headers {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() {
        head.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    head.extend_from_slice(b"connection: close\r\n\r\n");
    stream.write_all(&head)?;
    stream.write_all(body)?;
    stream.flush()?;

    let mut reader = BufReader::new(stream);
    let (status_line, headers) =
        read_head(&mut reader)?.context("connection closed before a response arrived")?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .with_context(|| format!("malformed status line {status_line:?}"))?;
    let body = if method.eq_ignore_ascii_case("HEAD") || status == 204 || status == 304 {
        Vec::new()
    } else {
        read_body(&mut reader, &headers, false)?
    };
    Ok(Response { status, headers, body })
}

/// Reads a start line and headers. `None` if the peer closed before sending anything.
fn read_head(reader: &mut impl BufRead) -> Result<Option<(String, Headers)>> {
    let Some(start_line) = read_line(reader)? else {
        return Ok(None);
    };
    let mut headers = Headers::new();
    loop {
        let line = read_line(reader)?.context("connection closed inside the header block")?;
        if line.is_empty() {
            return Ok(Some((start_line, headers)));
        }
        if headers.len() == MAX_HEADERS {
            bail!("more than {MAX_HEADERS} header lines");
        }
        let (name, value) =
            line.split_once(':').with_context(|| format!("malformed header line {line:?}"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
}

/// One CRLF- (or LF-) terminated line without its terminator; `None` at EOF.
fn read_line(reader: &mut impl BufRead) -> Result<Option<String>> {
    let mut line = Vec::new();
    let read = reader.by_ref().take(MAX_LINE as u64 + 2).read_until(b'\n', &mut line)?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        bail!("line longer than {MAX_LINE} bytes or cut short");
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    // Lossy: a header value that is not UTF-8 (an attacker's, forwarded by a proxy)
    // must reach the handler as a header that is there, not fail the request.
    Ok(Some(String::from_utf8_lossy(&line).into_owned()))
}

/// Reads a body framed by `transfer-encoding: chunked` or `content-length`. Without
/// either, a request has no body and a response runs to EOF.
fn read_body(reader: &mut impl BufRead, headers: &Headers, is_request: bool) -> Result<Vec<u8>> {
    let chunked =
        header(headers, "transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    if chunked {
        return read_chunked(reader);
    }
    if let Some(length) = header(headers, "content-length") {
        let length: usize = length.parse().with_context(|| format!("bad content-length {length:?}"))?;
        if length > MAX_BODY {
            bail!("body of {length} bytes is over the {MAX_BODY} limit");
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).context("reading the body")?;
        return Ok(body);
    }
    let mut body = Vec::new();
    if !is_request {
        reader.by_ref().take(MAX_BODY as u64).read_to_end(&mut body).context("reading the body to EOF")?;
    }
    Ok(body)
}

fn read_chunked(reader: &mut impl BufRead) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let size_line = read_line(reader)?.context("EOF before a chunk size")?;
        let size = size_line.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(size, 16).with_context(|| format!("bad chunk size {size_line:?}"))?;
        if size == 0 {
            // Trailers, then the empty line.
            while !read_line(reader)?.unwrap_or_default().is_empty() {}
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            bail!("chunked body over the {MAX_BODY} limit");
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(body.get_mut(start..).unwrap_or_default()).context("reading a chunk")?;
        let mut crlf = [0; 2];
        reader.read_exact(&mut crlf)?;
    }
}

/// Whether `err` (from [`request`]) is a refused connection, i.e. nothing listens yet.
pub fn is_connection_refused(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::ConnectionRefused)
    })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use serde_json::json;

    use super::*;

    fn echo_server() -> Server {
        Server::start(|req: &Request| {
            Response::json(
                200,
                &json!({
                    "method": req.method,
                    "target": req.target,
                    "x": req.header_values("x-multi"),
                    "body": String::from_utf8_lossy(&req.body),
                }),
            )
            .with_header("Set-Cookie", "a=1")
            .with_header("set-cookie", "b=2")
        })
        .unwrap()
    }

    #[test]
    fn client_and_server_round_trip_with_multi_valued_headers() {
        let server = echo_server();
        let response = request_with_body(
            server.addr(),
            "POST",
            "/p?q=1",
            &[("X-Multi", "one"), ("x-multi", "two")],
            b"hello",
        )
        .unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.header_values("set-cookie"), ["a=1", "b=2"]);
        assert_eq!(response.header("Content-Type"), Some("application/json"));
        let body = response.body_json().unwrap();
        assert_eq!(body["method"], "POST");
        assert_eq!(body["target"], "/p?q=1");
        assert_eq!(body["x"], json!(["one", "two"]));
        assert_eq!(body["body"], "hello");
        assert_eq!(server.hits("/p"), 1);
        assert_eq!(server.hits("/other"), 0);
        assert_eq!(server.total_hits(), 1);
    }

    #[test]
    fn server_keeps_connections_alive_and_reads_chunked_bodies() {
        let server = echo_server();
        let mut stream = TcpStream::connect(server.addr()).unwrap();
        stream
            .write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nPOST /b HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\nGET /c HTTP/1.1\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut all = String::new();
        stream.read_to_string(&mut all).unwrap();
        assert_eq!(all.matches("HTTP/1.1 200 OK").count(), 3, "{all}");
        assert!(all.contains(r#""body":"abcde""#), "{all}");
        assert_eq!(all.matches("connection: close").count(), 1, "{all}");
        assert_eq!(server.total_hits(), 3);
    }

    #[test]
    fn dropping_the_server_closes_idle_keep_alive_connections() {
        let server = echo_server();
        let addr = server.addr();
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(b"GET /a HTTP/1.1\r\n\r\n").unwrap();
        let mut buf = [0; 512];
        assert!(stream.read(&mut buf).unwrap() > 0);
        drop(server);
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut rest = Vec::new();
        // EOF (or reset) instead of hanging until the timeout.
        let _ = stream.read_to_end(&mut rest);
        let err = request(addr, "GET", "/", &[]).unwrap_err();
        assert!(is_connection_refused(&err), "{err:#}");
    }
}
