//! One Envoy under test: `--concurrency N`, pinned to one core with `taskset`, on the
//! ephemeral ports its config asks for, logging at `warning` (no per-request log I/O).
//!
//! The e2e harness's [`crate::envoy::Envoy`] renders the shipped config and cannot pin;
//! this runs a bench config as rendered, and shares the binary and wasm lookup and the
//! readiness wait ([`crate::envoy::await_admin_ready`]) with it.

use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::http::{self, Response};
use crate::process;

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(5);
const LOG_TAIL_LINES: usize = 40;

/// `envoy --mode validate -c config`: the config parses and every filter (the wasm
/// plugin's configuration included) is accepted.
pub fn validate(binary: &Path, config: &Path) -> Result<()> {
    let output = Command::new(binary)
        .args(["--mode", "validate", "--log-level", "warning", "-c"])
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} --mode validate", binary.display()))?;
    if !output.status.success() {
        bail!(
            "Envoy refuses {} ({}):\n{}{}",
            config.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Memory of a running Envoy.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Memory {
    /// Resident set size of the process (V8's heaps and wasm memories included).
    pub rss_bytes: u64,
    /// Bytes allocated through Envoy's allocator (admin `/memory`; V8 maps its own).
    pub allocated_bytes: u64,
}

/// A running Envoy, stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct BenchEnvoy {
    child: Option<Child>,
    admin: SocketAddr,
    listener: SocketAddr,
    log_path: PathBuf,
}

impl BenchEnvoy {
    /// Starts `binary -c config` pinned to `cpu`, its log in `dir`, and waits until the
    /// admin endpoint says `LIVE`.
    pub fn start(binary: &Path, config: &Path, dir: &Path, cpu: u32, concurrency: u32) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let log_path = dir.join("envoy.log");
        let admin_path = dir.join("admin-address");
        let _ = fs::remove_file(&admin_path);
        let log = File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let child = Command::new("taskset")
            .args(["-c", &cpu.to_string()])
            .arg(binary)
            .arg("-c")
            .arg(config)
            .args(["--concurrency", &concurrency.to_string(), "--log-level", "warning"])
            .arg("--admin-address-path")
            .arg(&admin_path)
            // No shared memory or domain socket: never collides with another Envoy.
            .arg("--disable-hot-restart")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log file handle")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting taskset -c {cpu} {}", binary.display()))?;
        let mut envoy = Self {
            child: Some(child),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            listener: SocketAddr::from(([127, 0, 0, 1], 0)),
            log_path,
        };
        envoy.await_ready(&admin_path).with_context(|| {
            format!("Envoy with {} did not start; last log lines:\n{}", config.display(), envoy.log_tail())
        })?;
        Ok(envoy)
    }

    fn await_ready(&mut self, admin_path: &Path) -> Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        self.admin = crate::envoy::await_admin_ready(admin_path, deadline, || self.ensure_running())?;
        self.listener = self.first_listener()?;
        Ok(())
    }

    /// The bound address of the first listener (admin `/listeners`).
    fn first_listener(&self) -> Result<SocketAddr> {
        let body = self.admin_get("/listeners?format=json")?.body_json()?;
        let socket = body
            .pointer("/listener_statuses/0/local_address/socket_address")
            .with_context(|| format!("admin /listeners reports no listener address: {body}"))?;
        let ip = socket.get("address").and_then(Value::as_str).context("listener address missing")?;
        let port = socket.get("port_value").and_then(Value::as_u64).context("listener port missing")?;
        format!("{ip}:{port}").parse().with_context(|| format!("listener address {ip}:{port}"))
    }

    fn ensure_running(&mut self) -> Result<()> {
        if let Some(child) = &mut self.child {
            if let Some(status) = child.try_wait().context("polling the Envoy process")? {
                self.child = None;
                bail!("Envoy exited with {status}");
            }
        }
        Ok(())
    }

    /// Fails (with the log tail) if Envoy is no longer running.
    pub fn check_running(&mut self) -> Result<()> {
        self.ensure_running().with_context(|| format!("last log lines:\n{}", self.log_tail()))
    }

    pub fn listener(&self) -> SocketAddr {
        self.listener
    }

    pub fn admin_get(&self, path: &str) -> Result<Response> {
        http::request(self.admin, "GET", path, &[])
    }

    /// The mean of nhi-guard's `nhi_verification_duration_us` histogram (every
    /// label summed), as flushed to the admin stats so far: µs per verification the
    /// worker could not answer from its own cache. `None` without samples.
    pub fn verification_mean_us(&self) -> Result<Option<f64>> {
        let text = String::from_utf8_lossy(&self.admin_get("/stats/prometheus")?.body).into_owned();
        Ok(histogram_mean(&text, "verification_duration_us"))
    }

    /// The mean of `nhi_dpop_proof_duration_us`: µs per DPoP proof check (parsing, the
    /// request and binding checks, the signature, the replay table).
    pub fn dpop_proof_mean_us(&self) -> Result<Option<f64>> {
        let text = String::from_utf8_lossy(&self.admin_get("/stats/prometheus")?.body).into_owned();
        Ok(histogram_mean(&text, "dpop_proof_duration_us"))
    }

    /// Resident set size and allocator statistics, now.
    pub fn memory(&self) -> Result<Memory> {
        let pid = self.child.as_ref().map(Child::id).context("Envoy is not running")?;
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let rss_kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .context("no VmRSS in /proc/<envoy>/status")?;
        let memory = self.admin_get("/memory")?.body_json()?;
        let allocated = memory
            .get("allocated")
            .and_then(|value| value.as_str().and_then(|s| s.parse().ok()).or_else(|| value.as_u64()))
            .with_context(|| format!("admin /memory has no `allocated`: {memory}"))?;
        Ok(Memory { rss_bytes: rss_kib * 1024, allocated_bytes: allocated })
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn log_tail(&self) -> String {
        let log = fs::read(&self.log_path).map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
        let log = log.unwrap_or_else(|err| format!("<cannot read {}: {err}>", self.log_path.display()));
        let lines: Vec<&str> = log.lines().collect();
        lines.get(lines.len().saturating_sub(LOG_TAIL_LINES)..).unwrap_or_default().join("\n")
    }

    /// SIGTERM, then SIGKILL after a grace period. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::stop_child(&mut child, STOP_GRACE);
        }
    }
}

impl Drop for BenchEnvoy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The mean of every `…<family>` histogram in a Prometheus scrape.
fn histogram_mean(scrape: &str, family: &str) -> Option<f64> {
    let total = |suffix: &str| -> f64 {
        let wanted = format!("{family}_{suffix}");
        scrape
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split_once(' '))
            .filter(|(series, _)| series.split('{').next().is_some_and(|name| name.ends_with(&wanted)))
            .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
            .sum()
    };
    let count = total("count");
    (count > 0.0).then(|| total("sum") / count)
}

#[cfg(test)]
mod verification_tests {
    use super::histogram_mean;

    fn verification_mean(scrape: &str) -> Option<f64> {
        histogram_mean(scrape, "verification_duration_us")
    }

    #[test]
    fn the_mean_sums_every_label_set() {
        let scrape = "# TYPE x histogram\n\
            nhi_issuer_bench_nhi_verification_duration_us_sum{} 3000.5\n\
            nhi_issuer_bench_nhi_verification_duration_us_count{} 30\n\
            nhi_verification_duration_us_sum{nhi_issuer=\"b\"} 999.5\n\
            nhi_verification_duration_us_count{nhi_issuer=\"b\"} 10\n\
            nhi_verification_duration_us_bucket{le=\"25\"} 7\n\
            other_count{} 5\n";
        assert_eq!(verification_mean(scrape), Some(100.0));
        assert_eq!(verification_mean("nhi_verification_duration_us_count{} 0\n"), None);
        assert_eq!(verification_mean(""), None);
    }
}
