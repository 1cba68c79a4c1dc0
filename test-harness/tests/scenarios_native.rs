//! The scenario table through the core's pipeline natively (`native`): two workers
//! sharing one store, keys fetched by the same state machine the filter runs, each
//! request against an in-memory host — directly, and through `nhi-guard explain`,
//! which runs that same pipeline. The emulator (`tests/emulator.rs`) and real
//! Envoy (`tests/scenarios_envoy.rs`) run the compiled filter through the same table.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::BTreeMap;

use nhi_guard_cli::explain::{self, ExplainRequest, Explainer};
use test_harness::jwks_server::JWKS_PATH;
use test_harness::mint;
use test_harness::native;
use test_harness::scenarios::{Outcome, Table, RESPONSE_HEADERS, UPSTREAM_HEADERS};

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

/// `nhi-guard explain`'s view of one step, as the table reads outcomes.
fn explained_outcome(explanation: &nhi_guard_cli::explain::Explanation) -> Outcome {
    let upstream = explanation.forwarded().then(|| {
        UPSTREAM_HEADERS
            .iter()
            .filter_map(|name| explanation.upstream_header(name).map(|v| ((*name).to_owned(), v)))
            .collect()
    });
    let response = RESPONSE_HEADERS
        .iter()
        .filter_map(|name| explanation.response_header(name).map(|v| ((*name).to_owned(), v)))
        .collect();
    Outcome { status: explanation.status(), reason: explanation.reason(), upstream, response }
}

fn explain_request(step: &test_harness::scenarios::Step) -> ExplainRequest {
    let mut request = ExplainRequest::new(step.method, &step.path);
    for (name, value) in &step.headers {
        request = request.header(name, value);
    }
    request
}

/// The table through `nhi-guard explain` (the library behind the command), one
/// explainer for every step so that the quota scenario's state carries over, with
/// `issuers[0]`'s JWKS given as `--jwks` does: every step comes out as expected
/// (and so as the emulator and real Envoy answer), and the rendered explanation
/// ends on that very response.
#[test]
fn scenario_table_through_explain() {
    let table = Table::new("jwks_native").unwrap();
    let remote = table.plugin["issuers"][0]["name"].as_str().unwrap().to_owned();
    let jwks = BTreeMap::from([(remote, table.jwks.to_string())]);
    let mut explainer =
        Explainer::start(table.plugin.to_string().as_bytes(), &jwks, &[], mint::now() * 1000).unwrap();
    let mut failures = Vec::new();
    for step in table.steps() {
        let explanation = explainer.explain(step.worker, &explain_request(step)).unwrap();
        let outcome = explained_outcome(&explanation);
        let mut mismatches = step.expected(true).mismatches(&outcome);
        let text = explainer.render(&explanation);
        let response_line = match &outcome.reason {
            Some(reason) => format!("response  {} {reason}\n", outcome.status),
            None => "response  forwarded: the upstream answers\n".to_owned(),
        };
        if !text.contains(&response_line) {
            mismatches.push(format!("the explanation does not say {response_line:?}:\n{text}"));
        }
        let machine = outcome.upstream.as_ref().and_then(|u| u.get("x-nhi-client")).map(String::as_str);
        if machine == Some("machine") && !text.contains("          signature   ok") {
            mismatches.push(format!("a forwarded token's signature is checked:\n{text}"));
        }
        if !mismatches.is_empty() {
            failures.push(format!("{}: {}", step.label, mismatches.join("; ")));
        }
    }
    assert!(failures.is_empty(), "{} steps differ:\n{}", failures.len(), failures.join("\n"));
}

/// Without `issuers[0]`'s keys (no `--jwks`), explain re-signs that issuer's tokens
/// with a throwaway key: every step of the table comes out the same, except that a
/// forged signature is not caught — and the explanation says the signature was not
/// checked. Stateless steps only (each runs on a fresh explainer: a new key per token).
#[test]
fn without_keys_explain_checks_everything_but_the_signature_and_says_so() {
    let table = Table::new("jwks_native").unwrap();
    let config = nhi_guard_core::config::Config::from_json(table.plugin.to_string().as_bytes()).unwrap();
    let remote_iss = table.plugin["issuers"][0]["issuer"].as_str().unwrap().to_owned();
    let mut forged_passed = 0;
    for step in table.steps().filter(|s| !s.label.starts_with("quota")) {
        let prepared = explain::prepare(&config, explain_request(step), BTreeMap::new()).unwrap();
        let token = explain::token_in(&config, &explain_request(step));
        let remote = token.as_deref().and_then(|t| explain::resign::peek(t).iss) == Some(remote_iss.clone());
        assert_eq!(prepared.throwaway.len(), usize::from(remote), "{}", step.label);
        let mut explainer = Explainer::start(
            table.plugin.to_string().as_bytes(),
            &prepared.jwks,
            &prepared.throwaway,
            mint::now() * 1000,
        )
        .unwrap();
        let explanation = explainer.explain(0, &prepared.request).unwrap();
        let outcome = explained_outcome(&explanation);
        let text = explainer.render(&explanation);
        let expected = step.expected(true);
        if expected.reason == Some("bad_signature") && remote {
            // The forgery goes unnoticed: explain must say the signature was not checked.
            assert_eq!(outcome.status, 200, "{}: {text}", step.label);
            assert!(text.contains("signature   SKIPPED not checked: no --jwks"), "{}: {text}", step.label);
            forged_passed += 1;
            continue;
        }
        let mismatches = expected.mismatches(&outcome);
        assert!(mismatches.is_empty(), "{}: {}\n{text}", step.label, mismatches.join("; "));
        if remote && outcome.status == 200 {
            assert!(text.contains("signature   SKIPPED"), "{}: {text}", step.label);
        }
    }
    assert_eq!(forged_passed, 1, "the table has one forged token of issuers[0]");
}
