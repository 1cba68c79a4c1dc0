//! An HTTP/2 client over cleartext with prior knowledge (h2c), for what HTTP/1
//! cannot show: header values that reach the filter through Envoy's HTTP/2 codec
//! (e.g. bytes that are not UTF-8, which HTTP/2 carries as opaque octets).
//!
//! One request per connection, on a tokio runtime of the calling thread; the
//! response body is read to the end.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::http::Response;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Sends one request to `addr` (an Envoy listener whose codec accepts HTTP/2) with
/// `headers` as raw bytes; names must be lower-case.
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &[u8])]) -> Result<Response> {
    request_to(addr, &format!("http://{addr}"), method, path, headers)
}

/// [`request`] with the `:scheme` and `:authority` of `origin` (`https://host`): an
/// HTTP/2 client chooses them, even over a cleartext connection.
pub fn request_to(
    addr: SocketAddr,
    origin: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
) -> Result<Response> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("tokio runtime")?;
    runtime
        .block_on(async {
            tokio::time::timeout(TIMEOUT, exchange(addr, origin, method, path, headers)).await
        })
        .context("HTTP/2 request timed out")?
        .with_context(|| format!("HTTP/2 {method} http://{addr}{path}"))
}

async fn exchange(
    addr: SocketAddr,
    origin: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
) -> Result<Response> {
    let tcp = tokio::net::TcpStream::connect(addr).await.context("connecting")?;
    let (client, connection) = h2::client::handshake(tcp).await.context("HTTP/2 handshake")?;
    let driver = tokio::spawn(connection);
    let mut client = client.ready().await.context("HTTP/2 connection")?;
    let mut request = http::Request::builder().method(method).uri(format!("{origin}{path}"));
    for (name, value) in headers {
        request = request.header(*name, http::HeaderValue::from_bytes(value).context("header value")?);
    }
    let (response, _) = client.send_request(request.body(()).context("request")?, true)?;
    let response = response.await.context("HTTP/2 response")?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned())
        })
        .collect();
    let body = read_body(&mut response.into_body()).await.context("HTTP/2 body")?;
    drop(client);
    driver.abort();
    Ok(Response { status, headers, body })
}

/// A stream's body read to the end, its flow-control window given back as it comes.
pub(crate) async fn read_body(stream: &mut h2::RecvStream) -> Result<Vec<u8>, h2::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = stream.data().await {
        let chunk = chunk?;
        let _ = stream.flow_control().release_capacity(chunk.len());
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
