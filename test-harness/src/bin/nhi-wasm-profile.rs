//! `nhi-wasm-profile`: allowed requests with a cached token, one after another,
//! through the release filter in the emulator (Cranelift-compiled wasm, the Envoy
//! profile), with the configuration `make bench` measures: no filter state, no
//! decision log, no RateLimit headers, no claim headers. `make wasm-profile` runs it
//! under `perf` with wasmtime's perf map and reads the profile with
//! `test-harness/bench/wasm-profile.py`: how much of a request is the filter's own
//! code, and in which functions.
//!
//! `WASM_PROFILE_CASE` picks the request: `cached` (the default), `forged` (a token
//! with a flipped signature bit from a source the flood guard has blocked: the forged
//! flood's refusal) or `tokenless` (no token from that source: the refusal the forged
//! one is held against), `rotating-rs256` or `rotating-es256` (1,000 tokens round-robin,
//! more than the token caches hold: every request verifies its token, as in the bench's
//! every-token-new cases).
//!
//! The emulator's host side (header maps, shared data, bookkeeping) is far slower than
//! Envoy's, so the wall time per request says little; the time spent inside the wasm
//! is what this is for.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use test_harness::emulator::{Host, Profile, Request};
use test_harness::keys::{KeyType, TestKeys};
use test_harness::mint::{self, Alg, Token};
use test_harness::scenarios::Table;

/// Requests measured, unless `WASM_PROFILE_REQUESTS` says otherwise.
const DEFAULT_REQUESTS: u32 = 200_000;
/// Distinct tokens of the rotating cases (the bench's `BENCH_TOKENS`).
const ROTATED_TOKENS: usize = 1_000;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("nhi-wasm-profile: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let requests = match std::env::var("WASM_PROFILE_REQUESTS") {
        Ok(value) => value.parse::<u32>().context("WASM_PROFILE_REQUESTS")?,
        Err(_) => DEFAULT_REQUESTS,
    };
    let mut table = Table::new("jwks_demo")?;
    let plugin = table.plugin.as_object_mut().context("the plugin configuration is not an object")?;
    plugin.insert("filter_state".to_owned(), json!(false));
    plugin.insert("decision_log".to_owned(), json!({ "enabled": false }));
    if let Some(quotas) = plugin.get_mut("quotas").and_then(Value::as_object_mut) {
        quotas.insert("response_headers".to_owned(), json!(false));
        // As the bench's: far from any limit, so every request is served from a lease.
        quotas.insert("default".to_owned(), json!({ "requests": 1_000_000_000u64, "per_seconds": 1 }));
    }
    let issuers = plugin.get_mut("issuers").and_then(Value::as_array_mut).context("no issuers")?;
    for issuer in issuers.iter_mut().filter_map(Value::as_object_mut) {
        issuer.remove("claims_to_headers");
    }
    let case = std::env::var("WASM_PROFILE_CASE").unwrap_or_else(|_| "cached".to_owned());
    if case == "forged" || case == "tokenless" {
        plugin.insert("flood_guard".to_owned(), json!({ "max_failures": 2 }));
    }
    let rotating_key = match case.as_str() {
        "rotating-rs256" => Some(KeyType::Rsa),
        "rotating-es256" => Some(KeyType::P256),
        _ => None,
    };
    let mut rotation = Vec::new();
    if let Some(key_type) = rotating_key {
        // As the bench's rotating cases: more tokens than both caches hold, round-robin,
        // so that every request verifies its token.
        plugin.insert("token_cache".to_owned(), json!({ "max_entries": 100 }));
        let text = |pointer: &str| {
            table
                .plugin
                .pointer(pointer)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .context(pointer.to_owned())
        };
        let (iss, aud) = (text("/issuers/0/issuer")?, text("/issuers/0/audiences/0")?);
        let keys = TestKeys::shared()?;
        table.jwks = keys.jwks();
        let now = mint::now();
        for n in 0..ROTATED_TOKENS {
            let token = Token::new(Alg::default_for(key_type))
                .claim("iss", iss.as_str())
                .claim("aud", aud.as_str())
                .claim("sub", format!("system:serviceaccount:bench:rotating-{n}"))
                .claim("iat", now)
                .claim("exp", now + 3600)
                .sign(keys.by_type(key_type))?;
            rotation.push(Request::get("/api/cached").bearer(&token));
        }
    }
    let mut host = Host::new(Profile::Full)?;
    table.start(&mut host)?;
    let worker = host.worker(0)?;
    let source: std::net::SocketAddr = "203.0.113.66:4000".parse()?;
    let (head, signature) = table.warmup_token.rsplit_once('.').context("a token")?;
    let flipped = if signature.starts_with('A') { 'B' } else { 'A' };
    let forged = format!("{head}.{flipped}{}", signature.get(1..).unwrap_or_default());
    let (request, expected) = match case.as_str() {
        "cached" => (Request::get("/api/cached").bearer(&table.warmup_token), 200),
        // The flood guard has blocked the source (two failed checks below).
        "forged" => (Request::get("/api/cached").bearer(&forged).source(source), 429),
        "tokenless" => (Request::get("/api/cached").source(source), 401),
        "rotating-rs256" | "rotating-es256" => (Request::get("/api/cached").bearer(&table.warmup_token), 200),
        other => bail!("WASM_PROFILE_CASE: {other}? (cached, forged, tokenless)"),
    };
    if case != "cached" {
        for _ in 0..2 {
            worker.send(&Request::get("/api/cached").bearer(&forged).source(source))?;
        }
    }
    let first = worker.send(&request)?;
    if first.status != expected {
        bail!("the first request got {} {:?}", first.status, first.reason());
    }
    let started = Instant::now();
    for sent in 0..requests {
        let request = match rotation.get(sent as usize % rotation.len().max(1)) {
            Some(rotating) => rotating,
            None => &request,
        };
        let exchange = worker.send(request)?;
        if exchange.status != expected {
            bail!("request {sent} got {} {:?}", exchange.status, exchange.reason());
        }
    }
    let per_request = started.elapsed().as_nanos() / u128::from(requests.max(1));
    println!("requests {requests}");
    println!("ns_per_request {per_request}");
    Ok(())
}
