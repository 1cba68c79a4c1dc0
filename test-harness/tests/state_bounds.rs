//! State stays bounded under a stream of distinct identities and distinct invalid
//! tokens from distinct sources, in a real Envoy (`--concurrency 2`): what grows is
//! measured where it lives, and compared with what the configured limits allow.
//!
//! - **Envoy's heap** (`/memory`, `allocated`) holds shared data: the verified-token
//!   cache (`token_cache.max_entries` slots), the quota table
//!   (`quotas.max_tracked_identities`, in buckets of 64), the flood guard
//!   (`flood_guard.max_sources` slots), the list of labelled identities
//!   (`metrics.max_identities`), and the metric series themselves.
//! - **Each VM's linear memory** (`nhi_vm_memory_bytes`, the filter's own gauge,
//!   summed over the VMs) holds per-VM state: the worker's token cache (256
//!   tokens), metric ids, the identity bound's cache.
//!
//! Small limits are configured, the tables are filled (phase 1: more identities and
//! sources than any table has room for), then a second stream of as many new
//! identities and sources again (phase 2) may not grow either memory by more than
//! allocator noise: a table that keeps one entry per identity or source grows by at
//! least its entry size for each of them (see [`N`] for the arithmetic). Over both
//! phases, Envoy's heap may grow by at most what the limits allow ([`limit_bytes`]).
//! Lower bounds make the test unable to pass by doing nothing: every request got its
//! expected status, exactly `metrics.max_identities` identities have a label of their
//! own plus `other`, and the labelled counts add up to the requests sent.
//!
//! `NHI_STATE_N` overrides the number of identities per phase.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use test_harness::envoy::{Envoy, EnvoyOptions};
use test_harness::envoy_config::EnvoyConfig;
use test_harness::http;
use test_harness::jwks_server::JwksBehaviour;
use test_harness::keys::{self, KeyType, TestKeys};
use test_harness::mint::{self, Alg, Token};
use test_harness::prometheus::Scrape;
use test_harness::stack::Stack;

/// `token_cache.max_entries`.
const CACHE_SLOTS: u64 = 256;
/// `quotas.max_tracked_identities`: four buckets of 64.
const QUOTA_ENTRIES: u64 = 256;
/// `flood_guard.max_sources`.
const FLOOD_SLOTS: u64 = 256;
/// `metrics.max_identities`.
const LABELLED: usize = 20;

/// Distinct identities (and as many distinct invalid tokens, each from its own
/// source address) per phase. Phase 1 is four times the largest table, so every
/// table is full before phase 2 (a slot chosen by hash is still empty after 4n
/// random picks with probability e⁻⁴ ≈ 2 %).
///
/// Phase 2 sends `N` new identities and `N` new sources. A table with an entry per
/// identity or source grows, in Envoy's heap, by at least the entry's shared-data
/// key, value and map slot: ≥ 450 bytes for a token-cache entry (85 bytes, the
/// `kid` and the verification as JSON, ~400 bytes for these tokens), ≥ 100 bytes
/// for a quota entry (24-byte value, ~45-byte key, the slot) or a flood-guard slot
/// (21-byte value), ≥ 100 bytes for a metric series of its own. In the VMs, a
/// worker token cache without its bound keeps each token (~330 bytes) and its
/// verification (~600 bytes). So phase 2 grows an unbounded table by at least
/// 6 000 × 100 bytes = 600 KB (quota, flood guard, series), 6 000 × 450 bytes =
/// 2.7 MB (token cache) or 3 000 × 900 bytes = 2.7 MB per worker VM, against
/// [`HEAP_NOISE`] and [`VM_NOISE`].
const N: usize = 6_000;
const PHASE_1: usize = 4 * 256;
/// Heap growth allowed over phase 2 with every table full: allocator and Envoy
/// noise (connection buffers, stats flushes), measured ≤ 150 KB on an idle and on
/// a loaded machine.
const HEAP_NOISE: i64 = 384 * 1024;
/// Growth allowed over phase 2 in the VMs' memory, summed: at most a few 64 KiB
/// pages per VM for fragmentation (measured: none).
const VM_NOISE: i64 = 3 * 4 * 65_536;

/// Client threads sending at once.
const CLIENTS: usize = 8;

/// What the configured limits allow shared data to hold, in Envoy's heap: each
/// table full, each entry counted with its key, value and a generous map overhead.
fn limit_bytes() -> i64 {
    /// Per shared-data key: the map's slot (key and value strings, CAS), the key's
    /// and the value's allocations, rounded up.
    const PER_KEY: u64 = 256;
    let cache = CACHE_SLOTS * (PER_KEY + 1_024);
    let quota = QUOTA_ENTRIES.div_ceil(64) * (PER_KEY + 1 + 64 * 24);
    let flood = FLOOD_SLOTS * (PER_KEY + 21);
    let identities = PER_KEY + 8 * LABELLED as u64;
    // Per labelled identity (and `other`): its series of nhi_identity_requests_total
    // and nhi_identity_denials_total, 1 KiB each in Envoy's stats store.
    let series = (LABELLED as u64 + 1) * 2 * 1_024;
    i64::try_from(cache + quota + flood + identities + series).unwrap() + HEAP_NOISE
}

fn heap(envoy: &Envoy) -> i64 {
    let memory: serde_json::Value = serde_json::from_str(&envoy.admin_text("/memory").unwrap()).unwrap();
    memory["allocated"].as_str().unwrap().parse().unwrap()
}

/// `nhi_vm_memory_bytes` once every VM has reported its current size: each VM adds
/// its change on its tick (500 ms), so the value is read until it has not changed
/// for three tick periods.
fn vm_memory(envoy: &mut Envoy) -> i64 {
    const STABLE_FOR: Duration = Duration::from_millis(1_500);
    let mut last: Option<(f64, Instant)> = None;
    let mut settled = 0.0;
    envoy
        .wait_until("nhi_vm_memory_bytes to settle", Duration::from_secs(30), |envoy| {
            let value = Scrape::take(envoy)?.value("nhi_vm_memory_bytes", &[]);
            let Some(value) = value else { return Ok(false) };
            match last {
                Some((seen, since)) if seen == value => {
                    settled = value;
                    Ok(since.elapsed() >= STABLE_FOR)
                }
                _ => {
                    last = Some((value, Instant::now()));
                    Ok(false)
                }
            }
        })
        .unwrap();
    settled as i64
}

/// The `i`-th source address of the invalid stream: 127.10.0.1, 127.10.0.2, …
/// (all of 127/8 is loopback).
fn source(i: usize) -> IpAddr {
    let i = u32::try_from(i).unwrap();
    IpAddr::V4(Ipv4Addr::new(127, 10 + (i / 64_516) as u8, (i / 254 % 254) as u8, (i % 254 + 1) as u8))
}

/// Sends each `(source, token)` once from `CLIENTS` threads; every answer must be `expect`.
fn send_all(addr: SocketAddr, requests: Vec<(IpAddr, String)>, expect: u16) {
    let chunk = requests.len().div_ceil(CLIENTS).max(1);
    let handles: Vec<_> = requests
        .chunks(chunk)
        .map(<[(IpAddr, String)]>::to_vec)
        .map(|chunk| {
            thread::spawn(move || {
                for (from, token) in chunk {
                    let auth = format!("Bearer {token}");
                    let response =
                        http::request_from(from, addr, "GET", "/api/bounds", &[("authorization", &auth)])
                            .unwrap();
                    assert_eq!(response.status, expect, "{}", response.body_text());
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
}

#[test]
fn distinct_identities_and_sources_fill_the_tables_and_nothing_more() {
    let n: usize = std::env::var("NHI_STATE_N").ok().and_then(|v| v.parse().ok()).unwrap_or(N);
    let key = TestKeys::shared().unwrap().by_type(KeyType::Ed25519);
    let mut plugin = EnvoyConfig::shipped().unwrap().plugin_configuration().unwrap();
    plugin["quotas"] = json!({
        "default": { "requests": 1000, "per_seconds": 60 },
        "max_tracked_identities": QUOTA_ENTRIES
    });
    plugin["token_cache"] = json!({ "max_entries": CACHE_SLOTS });
    plugin["metrics"] = json!({ "max_identities": LABELLED });
    plugin["decision_log"] = json!({ "allowed_sample_rate": 0.0 });
    // Every source sends one forged token: far under its budget, so every one reaches
    // the signature check (the failure path is what is measured) and takes a slot.
    plugin["flood_guard"] = json!({ "max_failures": 100, "window_seconds": 60, "max_sources": FLOOD_SLOTS });
    let mut stack = Stack::start_with(
        JwksBehaviour::serve(&keys::jwks([key])),
        EnvoyOptions::new().plugin_configuration(plugin).log_level("warning"),
    )
    .unwrap();
    let addr = stack.envoy.listener_addr();
    let (iss, aud) = (stack.issuer().unwrap().to_owned(), stack.audience().unwrap().to_owned());
    let token = |sub: String| {
        Token::new(Alg::EdDsa)
            .kid(key.kid())
            .claim("iss", iss.as_str())
            .claim("aud", aud.as_str())
            .claim("sub", sub)
            // A long stream outlives the default five minutes.
            .claim("exp", mint::now() + 3_600)
            .sign(key)
            .unwrap()
    };
    stack.wait_for_keys(&token("warmup".into())).unwrap();
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);

    // Warm Envoy's and the VMs' allocators (connections, buffers, the metric series
    // of each outcome) with one identity and one forged token from 127.0.0.1.
    let steady = token("steady".into());
    send_all(addr, vec![(loopback, steady.clone()); 200], 200);
    send_all(addr, vec![(loopback, mint::tamper_signature(&steady).unwrap()); 50], 401);
    let (heap_0, vm_0) = (heap(&stack.envoy), vm_memory(&mut stack.envoy));

    let valid: Vec<String> = (0..PHASE_1 + n).map(|i| token(format!("robot-{i}"))).collect();
    let invalid: Vec<(IpAddr, String)> =
        valid.iter().enumerate().map(|(i, t)| (source(i), mint::tamper_signature(t).unwrap())).collect();
    let valid: Vec<(IpAddr, String)> = valid.into_iter().map(|t| (loopback, t)).collect();
    let started = Instant::now();
    send_all(addr, valid[..PHASE_1].to_vec(), 200);
    send_all(addr, invalid[..PHASE_1].to_vec(), 401);
    let (heap_1, vm_1) = (heap(&stack.envoy), vm_memory(&mut stack.envoy));
    send_all(addr, valid[PHASE_1..].to_vec(), 200);
    send_all(addr, invalid[PHASE_1..].to_vec(), 401);
    let sent_in = started.elapsed();
    let (heap_2, vm_2) = (heap(&stack.envoy), vm_memory(&mut stack.envoy));

    let mb = |bytes: i64| bytes as f64 / 1e6;
    println!(
        "{} identities + {} forged tokens from as many sources in {:.1} s; Envoy heap {:.2} MB -> {:.2} MB \
         (tables filled, {PHASE_1} each) -> {:.2} MB ({n} more each: {:+.3} MB); VM memory {:.2} MB -> {:.2} MB \
         -> {:.2} MB ({:+.3} MB); limits allow {:+.3} MB",
        PHASE_1 + n,
        PHASE_1 + n,
        sent_in.as_secs_f64(),
        mb(heap_0),
        mb(heap_1),
        mb(heap_2),
        mb(heap_2 - heap_1),
        mb(vm_0),
        mb(vm_1),
        mb(vm_2),
        mb(vm_2 - vm_1),
        mb(limit_bytes()),
    );
    assert!(
        heap_2 - heap_1 <= HEAP_NOISE,
        "Envoy's heap grew by {} bytes over {n} new identities and sources with every table full",
        heap_2 - heap_1
    );
    assert!(
        vm_2 - vm_1 <= VM_NOISE,
        "the VMs' memory grew by {} bytes over {n} new identities and sources with every table full",
        vm_2 - vm_1
    );
    assert!(
        heap_2 - heap_0 <= limit_bytes(),
        "Envoy's heap grew by {} bytes, over the {} the configured limits allow",
        heap_2 - heap_0,
        limit_bytes()
    );

    // ---- Lower bounds: the bounded series exist and account for every request -------------
    let scrape = Scrape::take(&stack.envoy).unwrap();
    let demo = [("nhi_issuer", "demo")];
    let labelled: BTreeSet<&str> = scrape
        .matching("nhi_identity_requests_total", &demo)
        .iter()
        .map(|s| s.labels["nhi_identity"].as_str())
        .collect();
    assert!(labelled.contains("other"), "no `other` series: {labelled:?}");
    assert_eq!(labelled.len(), LABELLED + 1, "{labelled:?}");
    let own: Vec<&&str> = labelled.iter().filter(|l| **l != "other").collect();
    assert!(
        own.iter().all(|l| **l == "warmup" || **l == "steady" || l.starts_with("robot-")),
        "labels of identities never sent: {own:?}"
    );
    // wait_for_keys sent `warmup` an unknown number of times: everything else is exact.
    let warmup = scrape.value("nhi_identity_requests_total", &[demo[0], ("nhi_identity", "warmup")]);
    let counted = scrape.sum("nhi_identity_requests_total", &demo).unwrap() - warmup.unwrap_or(0.0);
    assert_eq!(counted, (200 + PHASE_1 + n) as f64, "labelled counts do not add up to the requests sent");
    let refused = [("nhi_route", "machine-api"), ("nhi_decision", "denied"), ("nhi_reason", "bad_signature")];
    let bad_signatures = scrape.value("nhi_requests_total", &[demo[0], refused[0], refused[1], refused[2]]);
    assert_eq!(bad_signatures, Some((50 + PHASE_1 + n) as f64));
}
