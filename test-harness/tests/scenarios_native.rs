//! The scenario table through the core's pipeline natively (`native`): two workers
//! sharing one store, keys fetched by the same state machine the filter runs, each
//! request against an in-memory host. The emulator (`tests/emulator.rs`) and real
//! Envoy (`tests/scenarios_envoy.rs`) run the compiled filter through the same table.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use test_harness::jwks_server::JWKS_PATH;
use test_harness::mint;
use test_harness::native;
use test_harness::scenarios::Table;

#[test]
fn scenario_table_natively() {
    let table = Table::new("jwks_native").unwrap();
    let jwks = table.jwks.to_string();
    let upstream = table.jwks_upstream.clone();
    let key_server = Box::new(move |callout: &nhi_guard_core::keys::fetch::Callout| {
        if callout.cluster == upstream && callout.path == JWKS_PATH {
            (200, jwks.clone())
        } else {
            (404, "not found".to_owned())
        }
    });
    let now_ms = mint::now() * 1000;
    let mut proxy = native::start(&table.plugin, 2, now_ms, key_server).unwrap();
    let mut failures = Vec::new();
    let mut steps = 0;
    for step in table.steps() {
        let headers: Vec<(&str, &[u8])> =
            step.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
        let exchange = native::send(&mut proxy, step.worker, step.method, &step.path, &headers).unwrap();
        let mismatches = step.expected(true).mismatches(&native::outcome(&exchange));
        if !mismatches.is_empty() {
            failures.push(format!("{}: {}", step.label, mismatches.join("; ")));
        }
        steps += 1;
    }
    assert!(steps >= 20, "the table has {steps} steps");
    assert!(failures.is_empty(), "{} of {steps} steps differ:\n{}", failures.len(), failures.join("\n"));
}
