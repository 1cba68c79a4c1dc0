//! The scenario table (`test_harness::scenarios`) in a real Envoy — one start for
//! the whole table — and, step by step, the same table in the Envoy-like emulator:
//! both must meet the table's expectations and agree with each other.
//!
//! Needs the Envoy binary (`make tools` or `ENVOY_BIN`) and the release wasm.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use test_harness::emulator::{Host, Profile};
use test_harness::envoy::{native_module_path, EnvoyOptions};
use test_harness::jwks_server::JwksBehaviour;
use test_harness::scenarios::{Outcome, Table};

#[test]
fn envoy_and_the_envoy_profile_agree_on_the_scenario_table() {
    let jwks_cluster = "jwks_demo";
    let table = Table::new(jwks_cluster).unwrap();
    let options = EnvoyOptions::new().plugin_configuration(table.plugin.clone());
    let mut stack =
        test_harness::stack::Stack::start_with(JwksBehaviour::serve(&table.jwks), options).unwrap();
    stack.wait_for_keys(&table.warmup_token).unwrap();

    let mut host = Host::new(Profile::Full).unwrap();
    table.start(&mut host).unwrap();

    let mut failures = Vec::new();
    let mut steps = 0;
    for step in table.steps() {
        steps += 1;
        let response = stack.envoy.request(step.method, &step.path, &step.header_pairs()).unwrap();
        let envoy = Outcome::from_envoy(&response);
        let emulated = Outcome::from_exchange(&table.run_step(&mut host, step).unwrap());
        for (who, outcome) in [("envoy", &envoy), ("emulator", &emulated)] {
            let mismatches = step.expect.mismatches(outcome);
            if !mismatches.is_empty() {
                failures.push(format!("{who} {}: {}", step.label, mismatches.join("; ")));
            }
        }
        println!("{}: envoy {envoy:?}\n    emulator {emulated:?}", step.label);
        let differences = envoy.differences(&emulated);
        if !differences.is_empty() {
            failures.push(format!("envoy vs emulator {}: {}", step.label, differences.join("; ")));
        }
    }
    assert!(steps >= 20, "{steps}");
    for worker in host.workers() {
        assert!(
            worker.violations().is_empty() && worker.unemulated_calls().is_empty() && worker.trap().is_none()
        );
    }
    assert!(failures.is_empty(), "{} mismatch(es):\n{}", failures.len(), failures.join("\n"));
}

/// The same table against the native shell (the Envoy dynamic module, `make native`)
/// in the wasm's place, with the same plugin configuration: it must meet every
/// expectation the wasm meets.
#[test]
fn the_native_shell_meets_the_scenario_table() {
    let table = Table::new("jwks_demo").unwrap();
    let options = EnvoyOptions::new()
        .plugin_configuration(table.plugin.clone())
        .native_filter(&native_module_path().unwrap())
        .unwrap();
    let mut stack =
        test_harness::stack::Stack::start_with(JwksBehaviour::serve(&table.jwks), options).unwrap();
    stack.wait_for_keys(&table.warmup_token).unwrap();

    let mut failures = Vec::new();
    let mut steps = 0;
    for step in table.steps() {
        steps += 1;
        let response = stack.envoy.request(step.method, &step.path, &step.header_pairs()).unwrap();
        let outcome = Outcome::from_envoy(&response);
        let mismatches = step.expect.mismatches(&outcome);
        if !mismatches.is_empty() {
            failures.push(format!("{}: {}", step.label, mismatches.join("; ")));
        }
    }
    assert!(steps >= 20, "{steps}");
    if !failures.is_empty() {
        eprintln!("--- Envoy log (tail) ---\n{}", stack.envoy.log_tail(40));
    }
    assert!(failures.is_empty(), "{} mismatch(es):\n{}", failures.len(), failures.join("\n"));
}
