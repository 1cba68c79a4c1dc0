//! The shipped Prometheus alerting rules: promtool accepts them, its unit tests of
//! them pass (`test-harness/prometheus/rules-test.yaml`: each alert fires on the
//! series that should raise it, and only those), they query only metrics nhi-guard
//! exports, and the PrometheusRule in `envoy/k8s/` carries exactly the same groups.
//!
//! Needs promtool (`make promtool` puts it in `.tools/`, or set `PROMTOOL`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

use nhi_guard_core::observe::metrics::Family;
use test_harness::envoy_config::repo_root;

fn promtool() -> PathBuf {
    let path = std::env::var_os("PROMTOOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".tools/prometheus/usr/bin/promtool"));
    assert!(path.is_file(), "no promtool at {}: run `make promtool` (or set PROMTOOL)", path.display());
    path
}

fn run(args: &[&str], dir: PathBuf) -> String {
    let output = Command::new(promtool()).args(args).current_dir(dir).output().unwrap();
    let text =
        String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "promtool {args:?}:\n{text}");
    text
}

fn yaml(path: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&std::fs::read_to_string(repo_root().join(path)).unwrap()).unwrap()
}

#[test]
fn the_shipped_rules_pass_promtool_and_their_unit_tests() {
    let checked = run(&["check", "rules", "envoy/prometheus/nhi-guard-rules.yaml"], repo_root());
    assert!(checked.contains("SUCCESS: 4 rules found"), "{checked}");
    let tested = run(&["test", "rules", "rules-test.yaml"], repo_root().join("test-harness/prometheus"));
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn the_prometheus_rule_carries_the_same_groups_and_they_query_our_metrics() {
    let plain = yaml("envoy/prometheus/nhi-guard-rules.yaml");
    let operator = yaml("envoy/k8s/prometheus-rule.yaml");
    assert_eq!(operator["kind"], "PrometheusRule");
    assert_eq!(operator["spec"]["groups"], plain["groups"]);
    let known: Vec<&str> = Family::ALL.iter().map(|f| f.name()).collect();
    let mut queried = 0;
    for rule in plain["groups"][0]["rules"].as_sequence().unwrap() {
        let expr = rule["expr"].as_str().unwrap();
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("nhi_") && word.ends_with("_total") {
                assert!(known.contains(&word), "{word} is not a metric nhi-guard exports");
                queried += 1;
            }
        }
    }
    assert!(queried >= 4);
}
