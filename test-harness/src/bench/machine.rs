//! What the numbers were measured on: they mean little without it.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::thread;

use anyhow::{Context, Result};

/// The machine, the tools and the filter build of a run.
#[derive(Clone, Debug)]
pub struct Machine {
    pub cpu_model: String,
    /// Cores this process may run on (`nproc`).
    pub cores: usize,
    pub memory_total: String,
    pub kernel: String,
    pub os: String,
    pub envoy_version: String,
    pub wrk_version: String,
    /// `/proc/loadavg` when the run started: a busy machine makes every number lower.
    pub load_at_start: String,
}

impl Machine {
    pub fn describe(envoy: &Path) -> Result<Self> {
        let cpuinfo = read("/proc/cpuinfo");
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name").and_then(|rest| rest.split_once(':')))
            .map(|(_, model)| model.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let memory_total = read("/proc/meminfo")
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|kib| kib.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| format!("{:.1} GiB", kib as f64 / (1024.0 * 1024.0)))
            .unwrap_or_else(|| "unknown".into());
        let os = read("/etc/os-release")
            .lines()
            .find_map(|line| line.strip_prefix("PRETTY_NAME="))
            .map(|name| name.trim_matches('"').to_owned())
            .unwrap_or_else(|| "unknown".into());
        Ok(Self {
            cpu_model,
            cores: thread::available_parallelism().map(usize::from).unwrap_or(1),
            memory_total,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            os,
            envoy_version: first_line(Command::new(envoy).arg("--version"))
                .with_context(|| format!("{} --version", envoy.display()))?,
            wrk_version: first_line(Command::new("wrk").arg("--version"))
                .unwrap_or_else(|_| "unknown".into()),
            load_at_start: load_average(),
        })
    }
}

/// `/proc/loadavg`'s 1, 5 and 15 minute averages.
pub fn load_average() -> String {
    read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// The size and SHA-256 of a file (the wasm).
pub fn file_digest(path: &Path) -> Result<(u64, String)> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok((bytes.len() as u64, crate::sha256_hex(&bytes)))
}

fn read(path: &str) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// The first non-empty line a command prints (wrk prints its version on stdout and exits
/// with status 1, so the status is not checked).
fn first_line(command: &mut Command) -> Result<String> {
    let output = command.output().context("running it")?;
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    text.lines().map(str::trim).find(|line| !line.is_empty()).map(str::to_owned).context("it printed nothing")
}
