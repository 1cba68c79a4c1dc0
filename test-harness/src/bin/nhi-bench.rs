//! `nhi-bench`: nhi-guard against Envoy's native filters (`make bench`); see
//! `test_harness::bench`.

use std::env;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use test_harness::bench::{self, report, Settings};

const USAGE: &str = "\
nhi-bench: measure nhi-guard against Envoy's native filters and write BENCHMARKS.md

usage: nhi-bench [--out FILE] [--work-dir DIR]

  --out FILE      the report [<repo>/BENCHMARKS.md]
  --work-dir DIR  rendered configs, tokens, Envoy logs, wrk outputs [<repo>/target/bench]
  -h, --help

environment (defaults in brackets):
  BENCH_SECONDS [10]  BENCH_RUNS [3]  BENCH_WARMUP_SECONDS [2]  BENCH_CONNECTIONS [32]
  BENCH_TOKENS [1000] BENCH_ENVOY_CPU [0]  BENCH_WRK_CPU [1]
  ENVOY_BIN, NHI_WASM as for the e2e suite

Needs wrk and taskset, and the release wasm (`make bench` builds it and installs wrk).
Missed targets are reported, not failures; a misconfigured stack is a failure.";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("nhi-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    // The open-loop flood driver, started by the bench itself under `taskset`.
    if env::args().nth(1).as_deref() == Some("paced") {
        let args: Vec<String> = env::args().skip(2).collect();
        print!("{}", bench::paced::Paced::parse(&args)?.run()?);
        return Ok(());
    }
    let mut settings = Settings::from_env()?;
    let mut args = env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            "--out" => settings.out = PathBuf::from(args.next().context("--out needs a file")?),
            "--work-dir" => {
                settings.work_dir = PathBuf::from(args.next().context("--work-dir needs a directory")?)
            }
            _ => bail!("unknown option {flag:?}\n\n{USAGE}"),
        }
    }
    let invocation = env::args().collect::<Vec<_>>().join(" ");
    let run = bench::run(settings, invocation)?;
    println!(
        "nhi-bench: wrote {} ({} min {} s)",
        run.settings.out.display(),
        run.elapsed.as_secs() / 60,
        run.elapsed.as_secs() % 60
    );
    for result in &run.results {
        let case = result.case;
        if let (Some(target), Some(ratio)) = (case.target(), run.ratio(case)) {
            let verdict = if ratio >= target { "met" } else { "MISSED" };
            println!(
                "  {:<44} {:<60} {ratio:.2}× (target {target}×) {verdict}",
                case.stack.label(),
                case.traffic_label(&run.settings)
            );
        }
    }
    let wasm_verdict = if run.wasm_bytes <= report::WASM_BUDGET_BYTES { "met" } else { "MISSED" };
    println!(
        "  release wasm {} bytes (target ≤ {} bytes) {wasm_verdict}",
        run.wasm_bytes,
        report::WASM_BUDGET_BYTES
    );
    Ok(())
}
