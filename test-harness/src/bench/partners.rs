//! Partner cases (issue 18): what one request signed with RFC 9421 costs inside Envoy,
//! for `hmac-sha256` and `ed25519`, without a body and with a 4 KiB body checked
//! against its `Content-Digest`.
//!
//! The request is signed once by the `http-message-signatures` package (see
//! [`crate::httpsig`]) without a nonce (`require_nonce: false`, a day's `max_age`), so
//! wrk can send the same signed request over and over and every one of them is verified
//! in full: signatures have no cache. The filter's own `nhi_verification_duration_us`
//! histogram gives the µs per request spent parsing the fields, rebuilding the signature
//! base, verifying, and (with a body) hashing it.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::envoy::BenchEnvoy;
use super::stacks::BENCH_PATH;
use super::wrk::{self, Load, Outcome, Tokens};
use super::Settings;
use crate::envoy_config::{repo_root, EnvoyConfig};
use crate::http;
use crate::httpsig::{self, Job, Key};

/// The HMAC key, from Envoy's environment as in production.
const HMAC_ENV: &str = "NHI_BENCH_PARTNER_HMAC";
const HMAC_SECRET: &str = "9WrWLsKl5q1xBtsW8iDsWpUygOk1b/4Kv3yUs5JO0ow=";
/// RFC 9421 appendix B.1.4's Ed25519 key: seed and public key.
const ED25519_SEED: &str = "n4Ni-HpISpVObnQMW0wOhCKROaIKqKtW_2ZYb2p9KcU";
const ED25519_PEM: &str =
    "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=\n-----END PUBLIC KEY-----";
pub const BODY_BYTES: usize = 4096;

/// One partner case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartnerCase {
    pub alg: &'static str,
    pub body: bool,
}

impl PartnerCase {
    pub fn plan() -> Vec<PartnerCase> {
        let mut plan = Vec::new();
        for alg in ["hmac-sha256", "ed25519"] {
            for body in [false, true] {
                plan.push(PartnerCase { alg, body });
            }
        }
        plan
    }

    pub fn label(&self) -> String {
        let body = if self.body {
            format!("POST, {} KiB body + Content-Digest", BODY_BYTES / 1024)
        } else {
            "GET, no body".into()
        };
        format!("{} signature, {body}", self.alg)
    }

    fn slug(&self) -> String {
        format!("partner-{}-{}", self.alg, if self.body { "body" } else { "nobody" })
    }
}

/// The measured runs of one partner case.
#[derive(Clone, Debug)]
pub struct PartnerResult {
    pub case: PartnerCase,
    pub runs: Vec<Outcome>,
    /// Mean µs per verification inside Envoy (the filter's histogram).
    pub verify_mean_us: Option<f64>,
}

impl PartnerResult {
    pub fn median(&self) -> Option<&Outcome> {
        let mut sorted: Vec<&Outcome> = self.runs.iter().collect();
        sorted.sort_by(|a, b| a.requests_per_sec.total_cmp(&b.requests_per_sec));
        sorted.get(sorted.len().saturating_sub(1) / 2).copied()
    }
}

/// `envoy/bench/nhi-guard.yaml` with a partners-only plugin configuration.
fn render(wasm: &Path) -> Result<String> {
    let mut config = EnvoyConfig::load(&repo_root().join("envoy/bench/nhi-guard.yaml"))?;
    config.set_plugin_configuration(&json!({
        "issuers": [],
        "routes": [{ "name": "machine-api", "match": { "prefix": "/api/" }, "audience": "machine" }],
        "partners": {
            "signature": { "require_nonce": false, "max_age_seconds": 86400, "max_body_bytes": 8192 },
            "clients": [{ "name": "bench", "keys": [
                { "id": "bench-hmac", "alg": "hmac-sha256", "secret_env": HMAC_ENV },
                { "id": "bench-ed25519", "alg": "ed25519", "public_key": ED25519_PEM }
            ] }]
        },
        "decision_log": { "enabled": false }
    }))?;
    config.set_wasm_filename(wasm)?;
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&config.to_yaml()?)?;
    let filters = doc
        .pointer_mut_yaml(&[
            "static_resources",
            "listeners",
            "0",
            "filter_chains",
            "0",
            "filters",
            "0",
            "typed_config",
            "http_filters",
        ])
        .context("no http_filters")?;
    let plugin = filters
        .as_sequence_mut()
        .and_then(|list| {
            list.iter_mut().find(|f| f.get("name").and_then(serde_yaml::Value::as_str) == Some("nhi-guard"))
        })
        .and_then(|f| f.get_mut("typed_config"))
        .and_then(|c| c.get_mut("config"))
        .context("no nhi-guard filter")?;
    let members = plugin.as_mapping_mut().context("the Wasm filter's config is not a mapping")?;
    members.insert("allow_on_headers_stop_iteration".into(), serde_yaml::Value::Bool(true));
    let vm = members
        .get_mut("vm_config")
        .and_then(serde_yaml::Value::as_mapping_mut)
        .context("the Wasm filter has no vm_config")?;
    vm.insert("environment_variables".into(), serde_yaml::from_str(&format!("host_env_keys: [{HMAC_ENV}]"))?);
    Ok(serde_yaml::to_string(&doc)?)
}

trait PointerYaml {
    fn pointer_mut_yaml(&mut self, path: &[&str]) -> Option<&mut serde_yaml::Value>;
}

impl PointerYaml for serde_yaml::Value {
    fn pointer_mut_yaml(&mut self, path: &[&str]) -> Option<&mut serde_yaml::Value> {
        path.iter().try_fold(self, |node, key| match key.parse::<usize>() {
            Ok(index) => node.get_mut(index),
            Err(_) => node.get_mut(*key),
        })
    }
}

/// A wrk script sending one signed request over and over.
fn script(dir: &Path, method: &str, headers: &[(String, String)], body: Option<&str>) -> Result<PathBuf> {
    let lua_string = |s: &str| format!("{s:?}");
    let mut text = format!("wrk.method = {}\n", lua_string(method));
    for (name, value) in headers {
        text.push_str(&format!("wrk.headers[{}] = {}\n", lua_string(name), lua_string(value)));
    }
    if let Some(body) = body {
        text.push_str(&format!("wrk.body = {}\n", lua_string(body)));
    }
    let path = dir.join("signed-request.lua");
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Runs every partner case.
pub fn run(settings: &Settings, envoy_binary: &Path, wasm: &Path) -> Result<Vec<PartnerResult>> {
    // The secret reaches the plugin as in production: Envoy's environment, copied
    // into the VM's by `host_env_keys`.
    std::env::set_var(HMAC_ENV, HMAC_SECRET);
    let config = settings.work_dir.join("nhi-guard-partners.yaml");
    fs::write(&config, render(wasm)?).with_context(|| format!("writing {}", config.display()))?;
    let mut results = Vec::new();
    for (index, case) in PartnerCase::plan().into_iter().enumerate() {
        let dir = settings.work_dir.join(format!("{:02}-{}", 90 + index, case.slug()));
        let envoy = BenchEnvoy::start(envoy_binary, &config, &dir, settings.envoy_cpu, 1)?;
        let url = format!("http://{}{BENCH_PATH}", envoy.listener());
        let key = match case.alg {
            "hmac-sha256" => Key::Hmac { secret: HMAC_SECRET.into() },
            _ => Key::Ed25519 { private_key: ED25519_SEED.into() },
        };
        let keyid = if case.alg == "hmac-sha256" { "bench-hmac" } else { "bench-ed25519" };
        let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
        let mut job = Job::new(if case.body { "POST" } else { "GET" }, &url, key, keyid, created, "unused");
        job.nonce = None;
        let body = case.body.then(|| "x".repeat(BODY_BYTES));
        job.body = body.clone();
        let signed = httpsig::sign(&[job.clone()])?.into_iter().next().context("nothing signed")?;
        // The probes: the signed request passes; the same with a byte of the body (or the
        // path) changed does not.
        let headers: Vec<(&str, &str)> = signed.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let ok = http::request_with_body(
            envoy.listener(),
            &job.method,
            BENCH_PATH,
            &headers,
            body.as_deref().unwrap_or_default().as_bytes(),
        )?;
        if ok.status != 200 {
            bail!("{}: the signed request got {}: {}", case.label(), ok.status, ok.body_text());
        }
        let tampered = match &body {
            Some(body) => http::request_with_body(
                envoy.listener(),
                "POST",
                BENCH_PATH,
                &headers,
                format!("y{}", &body[1..]).as_bytes(),
            )?,
            None => http::request(envoy.listener(), "GET", "/api/other", &headers)?,
        };
        if tampered.status != 401 {
            bail!("{}: a tampered request got {}", case.label(), tampered.status);
        }
        let script = script(&dir, &job.method, &signed, body.as_deref())?;
        let load = |duration| Load {
            target: envoy.listener(),
            path: BENCH_PATH.to_owned(),
            connections: settings.connections,
            duration,
            tokens: Tokens::Script { script: script.clone() },
            source: None,
            cpu: settings.wrk_cpu,
            rate: None,
        };
        if !settings.warmup().is_zero() {
            wrk::run(&load(settings.warmup()))?;
        }
        let mut runs = Vec::new();
        for _ in 0..settings.runs {
            let outcome = wrk::run(&load(settings.run_length()))?;
            if outcome.requests == 0 || outcome.non_2xx > 0 {
                bail!(
                    "{}: {} of {} signed requests refused:\n{}",
                    case.label(),
                    outcome.non_2xx,
                    outcome.requests,
                    outcome.raw
                );
            }
            runs.push(outcome);
        }
        // Histograms reach the admin stats at Envoy's flush (every 5 s).
        let mut verify_mean_us = envoy.verification_mean_us()?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(7);
        while verify_mean_us.is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(250));
            verify_mean_us = envoy.verification_mean_us()?;
        }
        let result = PartnerResult { case, runs, verify_mean_us };
        if let Some(median) = result.median() {
            eprintln!(
                "nhi-bench: [partners] {}: {} req/s, p50 {}, verification {} µs inside Envoy",
                case.label(),
                super::report::rate(median.requests_per_sec),
                super::report::latency(median.p50_us),
                verify_mean_us.map_or("?".into(), |us| format!("{us:.1}"))
            );
        }
        results.push(result);
    }
    Ok(results)
}
