//! `make bench`: nhi-guard against Envoy's own filters, side by side, in one run on one
//! machine (issue 10).
//!
//! Every case starts a fresh Envoy (`--concurrency 1`, pinned to one core) with one of
//! the configs in `envoy/bench/`, checks that it really accepts a valid token and refuses
//! a forged one, then drives it with `wrk` pinned to another core and keeps the median of
//! several runs. The results, the machine and the exact command go to `BENCHMARKS.md`.
//!
//! A benchmark, not a test: missed targets are reported, never asserted. What fails the
//! run is a stack that is not doing its job (a probe answers the wrong status, a valid
//! stream sees refusals, a forged token gets through), because such numbers mean nothing.

pub mod cases;
pub mod envoy;
pub mod machine;
pub mod paced;
pub mod partners;
pub mod report;
pub mod stacks;
pub mod tokens;
pub mod wrk;

use std::collections::HashSet;
use std::env;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use self::cases::{Case, Runner};
use self::machine::Machine;
use self::tokens::{BenchKeys, Tokens};
use crate::envoy_config::repo_root;

/// Defaults of the measured run; `make bench` on an idle machine uses these.
pub const DEFAULT_SECONDS: u64 = 10;
pub const DEFAULT_RUNS: u32 = 3;
pub const DEFAULT_WARMUP_SECONDS: u64 = 2;
pub const DEFAULT_CONNECTIONS: u32 = 32;
pub const DEFAULT_TOKENS: usize = 1000;

/// The knobs of one run, read from `BENCH_*` environment variables.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Length of one measured run (`BENCH_SECONDS`).
    pub seconds: u64,
    /// Measured runs per case; the median is reported (`BENCH_RUNS`).
    pub runs: u32,
    /// Unmeasured load before the first run of a case (`BENCH_WARMUP_SECONDS`).
    pub warmup_seconds: u64,
    /// wrk connections (`BENCH_CONNECTIONS`); the flood case splits them in two halves.
    pub connections: u32,
    /// Distinct tokens per algorithm in the rotating cases (`BENCH_TOKENS`).
    pub tokens: usize,
    /// The core Envoy is pinned to (`BENCH_ENVOY_CPU`).
    pub envoy_cpu: u32,
    /// The core wrk is pinned to (`BENCH_WRK_CPU`).
    pub wrk_cpu: u32,
    /// Only the cases whose name contains one of these comma-separated words
    /// (`BENCH_ONLY`, e.g. `reused`): for quick comparisons, never a full report.
    pub only: Option<String>,
    /// Where the report goes.
    pub out: PathBuf,
    /// Rendered configs, token files, Envoy logs and raw wrk output; kept afterwards.
    pub work_dir: PathBuf,
}

impl Settings {
    /// Defaults, overridden by the `BENCH_*` environment variables.
    pub fn from_env() -> Result<Self> {
        let root = repo_root();
        let settings = Self {
            seconds: env_number("BENCH_SECONDS", DEFAULT_SECONDS)?,
            runs: env_number("BENCH_RUNS", DEFAULT_RUNS)?,
            warmup_seconds: env_number("BENCH_WARMUP_SECONDS", DEFAULT_WARMUP_SECONDS)?,
            connections: env_number("BENCH_CONNECTIONS", DEFAULT_CONNECTIONS)?,
            tokens: env_number("BENCH_TOKENS", DEFAULT_TOKENS)?,
            envoy_cpu: env_number("BENCH_ENVOY_CPU", 0)?,
            wrk_cpu: env_number("BENCH_WRK_CPU", 1)?,
            only: std::env::var("BENCH_ONLY").ok().filter(|s| !s.is_empty()),
            out: root.join("BENCHMARKS.md"),
            work_dir: root.join("target").join("bench"),
        };
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<()> {
        if self.seconds == 0 || self.runs == 0 {
            bail!("BENCH_SECONDS and BENCH_RUNS must be at least 1");
        }
        if self.connections < 2 {
            bail!("BENCH_CONNECTIONS must be at least 2 (the flood case splits them in two)");
        }
        if self.tokens < 2 {
            bail!("BENCH_TOKENS must be at least 2");
        }
        if self.envoy_cpu == self.wrk_cpu {
            bail!("Envoy and wrk must run on different cores (BENCH_ENVOY_CPU, BENCH_WRK_CPU)");
        }
        Ok(())
    }

    /// Whether these are the settings of a real measurement (not a shortened smoke run).
    pub fn is_full_measurement(&self) -> bool {
        self.seconds >= DEFAULT_SECONDS && self.runs >= DEFAULT_RUNS && self.only.is_none()
    }

    /// The `BENCH_*` assignments that differ from the defaults, as a shell prefix.
    pub fn non_default_env(&self) -> String {
        let pairs = [
            ("BENCH_SECONDS", self.seconds.to_string(), DEFAULT_SECONDS.to_string()),
            ("BENCH_RUNS", self.runs.to_string(), DEFAULT_RUNS.to_string()),
            ("BENCH_WARMUP_SECONDS", self.warmup_seconds.to_string(), DEFAULT_WARMUP_SECONDS.to_string()),
            ("BENCH_CONNECTIONS", self.connections.to_string(), DEFAULT_CONNECTIONS.to_string()),
            ("BENCH_TOKENS", self.tokens.to_string(), DEFAULT_TOKENS.to_string()),
            ("BENCH_ENVOY_CPU", self.envoy_cpu.to_string(), "0".to_owned()),
            ("BENCH_WRK_CPU", self.wrk_cpu.to_string(), "1".to_owned()),
        ];
        let mut prefix: String = pairs
            .iter()
            .filter(|(_, value, default)| value != default)
            .map(|(name, value, _)| format!("{name}={value} "))
            .collect();
        if let Some(only) = &self.only {
            prefix.push_str(&format!("BENCH_ONLY={only} "));
        }
        prefix
    }

    pub fn run_length(&self) -> Duration {
        Duration::from_secs(self.seconds)
    }

    pub fn warmup(&self) -> Duration {
        Duration::from_secs(self.warmup_seconds)
    }
}

/// Fresh DPoP proofs minted per second of a DPoP case (each proof is sent once). Above
/// what one worker can check: on 2026-12-07 the ES256 case ran at 6,300 a second and
/// the 6,000 then minted ran out (wrk sent them again: refused as replays, and the
/// case failed as misconfigured).
const DPOP_PROOFS_PER_SECOND: u64 = 12_000;

/// Runs every case, writes the report to `settings.out` and returns the run.
/// `invocation` is the command line, for the report.
pub fn run(settings: Settings, invocation: String) -> Result<report::Run> {
    let clock = Instant::now();
    let started = utc_now();
    fs::create_dir_all(&settings.work_dir)
        .with_context(|| format!("creating {}", settings.work_dir.display()))?;
    check_tool("wrk", "apt-get install wrk (`make bench` installs it)")?;
    check_tool("taskset", "it comes with util-linux")?;
    let envoy_binary = crate::envoy::envoy_binary()?;
    let wasm = crate::envoy::wasm_path()?;
    let machine = Machine::describe(&envoy_binary)?;
    let (wasm_bytes, wasm_sha256) = machine::file_digest(&wasm)?;

    eprintln!("nhi-bench: generating keys and minting {} tokens per algorithm", settings.tokens);
    let keys = BenchKeys::generate()?;
    let mut tokens = Tokens::mint(&keys, settings.tokens, &settings.work_dir)?;
    let script = wrk::write_rotation_script(&settings.work_dir)?;
    wrk::write_dpop_script(&settings.work_dir)?;
    let mut plan = Case::plan();
    if let Some(only) = &settings.only {
        plan.retain(|case| only.split(',').any(|word| case.slug(0).contains(word.trim())));
        if plan.is_empty() && !only.contains("partner") {
            bail!("BENCH_ONLY={only} matches no case");
        }
    }
    if plan.iter().any(|case| matches!(case.traffic, cases::Traffic::Dpop(_))) {
        // A proof is good once: enough for the whole case at a rate no single core
        // reaches with one signature check a request.
        let seconds = settings.warmup_seconds + u64::from(settings.runs) * settings.seconds;
        let count = usize::try_from(seconds.saturating_mul(DPOP_PROOFS_PER_SECOND)).unwrap_or(usize::MAX);
        eprintln!("nhi-bench: minting {count} DPoP proofs per algorithm with the independent client");
        tokens.mint_dpop(&keys, count, &settings.work_dir)?;
    }
    eprintln!(
        "nhi-bench: {} cases, {} × {} s each, about {} min in all; work dir {}",
        plan.len(),
        settings.runs,
        settings.seconds,
        cases::estimate(&settings, plan.len()).as_secs().div_ceil(60),
        settings.work_dir.display()
    );

    let minimal_wasm = minimal_wasm_path(&plan)?;
    let mut runner =
        Runner::new(&settings, envoy_binary, wasm.clone(), minimal_wasm, keys.jwks(), &tokens, script);
    // Every config is validated up front: a broken one fails in seconds, not minutes in.
    let mut stacks = HashSet::new();
    for case in &plan {
        if stacks.insert(case.stack) {
            runner.prepare(case.stack)?;
        }
    }
    let mut results = Vec::new();
    let name = |case: &Case| format!("{} — {}", case.stack, case.traffic_label(&settings));
    let label = |index: usize, case: &Case| format!("case {}: {}", index + 1, name(case));
    // Cases that are compared take turns, run by run (`Case::interleave_key`).
    for group in plan.chunk_by(|a, b| a.interleave_key() == b.interleave_key()) {
        let first = results.len();
        let mut open = Vec::new();
        for (index, case) in (first..).zip(group) {
            open.push(runner.open(index, *case).with_context(|| label(index, case))?);
        }
        for _ in 0..settings.runs {
            for ((index, case), open) in (first..).zip(group).zip(&mut open) {
                runner.run_once(open).with_context(|| label(index, case))?;
            }
        }
        for ((index, case), open) in (first..).zip(group).zip(open) {
            let result = runner.close(open).with_context(|| label(index, case))?;
            if let Some(median) = result.median() {
                eprintln!(
                    "nhi-bench: [{}/{}] {}: {} req/s, p50 {}, p99 {}",
                    index + 1,
                    plan.len(),
                    name(case),
                    report::rate(median.requests_per_sec),
                    report::latency(median.p50_us),
                    report::latency(median.p99_us)
                );
            }
            results.push(result);
        }
    }
    let partner_results = if settings.only.as_deref().is_none_or(|only| only.contains("partner")) {
        eprintln!("nhi-bench: partner signatures");
        partners::run(&settings, &runner.envoy_binary, &wasm)?
    } else {
        Vec::new()
    };
    eprintln!("nhi-bench: measuring memory with one and two workers");
    let memory = runner.measure_memory()?;

    let run = report::Run {
        machine,
        wasm,
        wasm_bytes,
        wasm_sha256,
        results,
        partners: partner_results,
        memory,
        started,
        elapsed: clock.elapsed(),
        load_at_end: machine::load_average(),
        invocation,
        settings,
    };
    let out = &run.settings.out;
    fs::write(out, report::render(&run)).with_context(|| format!("writing {}", out.display()))?;
    Ok(run)
}

/// The minimal filter's build (`make bench` builds it), checked if the plan runs it.
fn minimal_wasm_path(plan: &[Case]) -> Result<PathBuf> {
    let path = env::var_os("NHI_MINIMAL_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/wasm32-wasip1/release/nhi_minimal_filter.wasm"));
    if plan.iter().any(|case| case.stack == stacks::Stack::Minimal) && !path.is_file() {
        bail!(
            "no minimal filter build: {} does not exist. Build it with `cargo build --release --target \
             wasm32-wasip1 -p nhi-minimal-filter` (`make bench` does)",
            path.display()
        );
    }
    Ok(path)
}

fn check_tool(name: &str, hint: &str) -> Result<()> {
    let found = Command::new(name)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        bail!("`{name}` is not installed: {hint}");
    }
    Ok(())
}

/// `2026-11-27 04:50` (UTC), from date(1).
fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M"])
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

fn env_number<T>(name: &str, default: T) -> Result<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match env::var(name) {
        Ok(value) if !value.trim().is_empty() => {
            value.trim().parse().with_context(|| format!("{name}={value:?} is not a valid number"))
        }
        _ => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            seconds: DEFAULT_SECONDS,
            runs: DEFAULT_RUNS,
            warmup_seconds: DEFAULT_WARMUP_SECONDS,
            connections: DEFAULT_CONNECTIONS,
            tokens: DEFAULT_TOKENS,
            envoy_cpu: 0,
            wrk_cpu: 1,
            only: None,
            out: PathBuf::from("BENCHMARKS.md"),
            work_dir: PathBuf::from("target/bench"),
        }
    }

    #[test]
    fn defaults_are_a_full_measurement_with_nothing_to_restate() {
        let settings = settings();
        assert!(settings.is_full_measurement());
        assert_eq!(settings.non_default_env(), "");
        settings.check().unwrap();
    }

    #[test]
    fn shortened_runs_are_smoke_runs_and_say_so() {
        let settings = Settings { seconds: 2, runs: 1, ..settings() };
        assert!(!settings.is_full_measurement());
        assert_eq!(settings.non_default_env(), "BENCH_SECONDS=2 BENCH_RUNS=1 ");
    }

    #[test]
    fn envoy_and_wrk_on_one_core_is_refused() {
        let settings = Settings { wrk_cpu: 0, ..settings() };
        assert!(settings.check().is_err());
    }
}
