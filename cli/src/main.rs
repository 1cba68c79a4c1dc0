//! `nhi-guard`: the native companion of the filter.
//!
//! ```text
//! nhi-guard check FILE...   validate the plugin configuration in each file
//! nhi-guard schema          print the JSON Schema of the plugin configuration
//! ```
//!
//! `check` reads plugin JSON, Envoy YAML (bootstrap or ECDS), Kubernetes manifests
//! (WasmPlugin, EnvoyFilter, EnvoyExtensionPolicy, ConfigMap) and APISIX files; `-`
//! reads standard input. It exits 0 when every file passes, 1 when a configuration
//! is invalid, 2 on a usage error or an unreadable file. Warnings (an Envoy admin
//! interface beyond loopback, header names with underscores let through) go to
//! standard error and do not change the exit status.

use std::io::{self, Read as _, Write as _};
use std::process::ExitCode;

use nhi_guard_cli::check;

const USAGE: &str = "\
usage: nhi-guard check [--quiet] FILE...
       nhi-guard schema

check   validates the nhi-guard plugin configuration found in each FILE (plugin JSON,
        Envoy YAML, Istio WasmPlugin/EnvoyFilter, Envoy Gateway EnvoyExtensionPolicy,
        APISIX config.yaml/apisix.yaml, ConfigMap; `-` for standard input) with the
        validation the filter runs at start-up. Also warns (`FILE: warning: ...`)
        about an Envoy bootstrap whose admin interface is not on loopback or whose
        HTTP connection managers let header names with underscores through.
        Exit status: 0 all valid (warnings or not), 1 invalid, 2 usage error or
        unreadable file.
schema  prints the JSON Schema of the plugin configuration.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("check") => check_files(args.get(1..).unwrap_or_default()),
        Some("schema") if args.len() == 1 => {
            print!("{}", nhi_guard_cli::schema::plugin_config_schema_text());
            ExitCode::SUCCESS
        }
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some("-V" | "--version") => {
            println!("nhi-guard {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn check_files(args: &[String]) -> ExitCode {
    let quiet = args.iter().any(|a| a == "--quiet" || a == "-q");
    let files: Vec<&String> = args.iter().filter(|a| *a != "--quiet" && *a != "-q").collect();
    if files.is_empty() || files.iter().any(|f| f.starts_with('-') && f.as_str() != "-") {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let mut unreadable = false;
    let mut invalid = false;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    for file in files {
        let text = if file == "-" {
            let mut text = String::new();
            io::stdin().read_to_string(&mut text).map(|_| text)
        } else {
            std::fs::read_to_string(file)
        };
        let text = match text {
            Ok(text) => text,
            Err(err) => {
                eprintln!("{file}: cannot read: {err}");
                unreadable = true;
                continue;
            }
        };
        let report = check::check_text(file, &text);
        if !quiet {
            for line in &report.ok {
                let _ = writeln!(out, "{file}: {line}");
            }
        }
        for line in &report.warnings {
            eprintln!("{file}: warning: {line}");
        }
        for line in &report.errors {
            eprintln!("{file}: {line}");
        }
        invalid |= !report.passed();
    }
    match (unreadable, invalid) {
        (true, _) => ExitCode::from(2),
        (false, true) => ExitCode::from(1),
        (false, false) => ExitCode::SUCCESS,
    }
}
