//! Regressions of the outside attack run (issue 23), in one real Envoy per shell (the
//! wasm, then the native shell in its place): the shipped `envoy/envoy.yaml` with its
//! plugin configuration plus a `claims_to_headers` rule and a JWKS refreshed every 2 s.
//!
//! - Forged `x-nhi-*` headers whose values are not UTF-8 (HTTP/1 and HTTP/2), and
//!   underscore spellings of them, never reach a backend.
//! - A cached verification does not outlive its key when the issuer publishes
//!   another key under the same `kid`.
//! - A machine token that only a lenient decoder still reads (padding appended, a
//!   trailing non-UTF-8 byte, another scheme) is refused on the human route, never
//!   forwarded to it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_harness::envoy::{native_module_path, EnvoyOptions};
use test_harness::envoy_config::EnvoyConfig;
use test_harness::h2c;
use test_harness::http::{self, Response};
use test_harness::jwks_server::JwksBehaviour;
use test_harness::keys::{self, KeyType, TestKey, TestKeys};
use test_harness::stack::Stack;

/// The claim header the configuration adds (`claims_to_headers`).
const SCOPE_HEADER: &str = "x-nhi-scope";
/// The `kid` the replaced-key case publishes two different keys under.
const ROTATED_KID: &str = "rot-1";

/// The shipped bootstrap, with its HTTP connection manager letting header names with
/// underscores through (Envoy's default, `ALLOW`), as a bootstrap that does not set
/// `headers_with_underscores_action` would: the filter must strip them itself.
fn bootstrap_allowing_underscores() -> EnvoyConfig {
    let mut yaml: serde_yaml::Value =
        serde_yaml::from_str(&EnvoyConfig::shipped().unwrap().to_yaml().unwrap()).unwrap();
    let hcm = &mut yaml["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    assert!(hcm["stat_prefix"].is_string(), "the first filter is the HTTP connection manager");
    let options = &mut hcm["common_http_protocol_options"];
    if !options.is_mapping() {
        *options = serde_yaml::Value::Mapping(serde_yaml::Mapping::new());
    }
    options["headers_with_underscores_action"] = serde_yaml::Value::from("ALLOW");
    EnvoyConfig::parse(&serde_yaml::to_string(&yaml).unwrap()).unwrap()
}

/// Which nhi-guard runs in Envoy: the wasm, or the native shell in its place.
#[derive(Clone, Copy, PartialEq)]
enum Shell {
    Wasm,
    Native,
}

fn start(shell: Shell) -> (Stack, TestKey) {
    let config = bootstrap_allowing_underscores();
    let mut plugin = config.plugin_configuration().unwrap();
    plugin["issuers"][0]["claims_to_headers"] = json!({ "scope": SCOPE_HEADER });
    plugin["issuers"][0]["jwks"]["refresh_seconds"] = json!(2);
    plugin["issuers"][0]["jwks"]["min_refetch_seconds"] = json!(1);
    let shared = TestKeys::shared().unwrap();
    let rotating = TestKey::generate(KeyType::P256, ROTATED_KID).unwrap();
    let jwks = keys::jwks([shared.by_type(KeyType::P256), &rotating]);
    let mut options = EnvoyOptions::new().config(config).plugin_configuration(plugin);
    if shell == Shell::Native {
        options = options.native_filter(&native_module_path().unwrap()).unwrap();
    }
    let mut stack = Stack::start_with(JwksBehaviour::serve(&jwks), options).unwrap();
    let warmup = token(&stack, shared.by_type(KeyType::P256), "warmup", &[]);
    stack.wait_for_keys(&warmup).unwrap();
    (stack, rotating)
}

fn token(stack: &Stack, key: &TestKey, sub: &str, extra: &[(&str, Value)]) -> String {
    stack.token(key, sub, extra).unwrap()
}

fn ordinary_token(stack: &Stack, sub: &str) -> String {
    token(stack, TestKeys::shared().unwrap().by_type(KeyType::P256), sub, &[])
}

fn reason(response: &Response) -> String {
    response.body_json().map(|b| b["reason"].as_str().unwrap_or_default().to_owned()).unwrap_or_default()
}

fn bearer(token: &str) -> Vec<u8> {
    format!("Bearer {token}").into_bytes()
}

/// Every value of `name` the backend got for requests to `path` (lossy: the harness
/// server reads header values that are not UTF-8 with U+FFFD in their place).
fn received(stack: &Stack, path: &str, name: &str) -> Vec<String> {
    let backends = [&stack.web, &stack.upstream];
    backends
        .iter()
        .flat_map(|backend| backend.received_for(path))
        .flat_map(|request| request.header_values(name).into_iter().map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

/// One forged-header case: what is sent, over which protocol, and what the backend
/// may see of `header` (`None`: nothing).
struct Forged {
    name: &'static str,
    http2: bool,
    headers: Vec<(&'static str, Vec<u8>)>,
    header: &'static str,
    backend_sees: Option<String>,
}

#[test]
fn the_outside_attack_run_no_longer_gets_through() {
    the_outside_attack_run(Shell::Wasm);
}

/// The same run against the native shell (the Envoy dynamic module, `make native`).
#[test]
fn the_outside_attack_run_does_not_get_through_the_native_shell() {
    the_outside_attack_run(Shell::Native);
}

fn the_outside_attack_run(shell: Shell) {
    let (stack, rotating) = start(shell);
    let mut failures = Vec::new();
    forged_headers_never_reach_a_backend(&stack, &mut failures);
    lenient_readings_of_machine_tokens_stay_off_the_human_route(&stack, &mut failures);
    a_cached_token_does_not_outlive_its_replaced_key(&stack, &rotating, &mut failures);
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}

fn forged_headers_never_reach_a_backend(stack: &Stack, failures: &mut Vec<String>) {
    let verified = ordinary_token(stack, "robot-without-scope");
    let non_utf8 = |text: &str| {
        let mut bytes = text.as_bytes().to_vec();
        bytes.push(0xa0);
        bytes
    };
    let cases = vec![
        Forged {
            name: "identity-http1",
            http2: false,
            headers: vec![("x-nhi-identity", non_utf8("admin-bot"))],
            header: "x-nhi-identity",
            backend_sees: None,
        },
        Forged {
            name: "issuer-http1",
            http2: false,
            headers: vec![("x-nhi-issuer", non_utf8("demo"))],
            header: "x-nhi-issuer",
            backend_sees: None,
        },
        Forged {
            name: "issuer-http2",
            http2: true,
            headers: vec![("x-nhi-issuer", non_utf8("demo"))],
            header: "x-nhi-issuer",
            backend_sees: None,
        },
        Forged {
            name: "identity-http2",
            http2: true,
            headers: vec![("x-nhi-identity", non_utf8("admin-bot")), ("x-nhi-client", non_utf8("machine"))],
            header: "x-nhi-identity",
            backend_sees: None,
        },
        Forged {
            name: "client-class-http1",
            http2: false,
            headers: vec![("x-nhi-client", non_utf8("machine"))],
            header: "x-nhi-client",
            backend_sees: Some("human".into()),
        },
        Forged {
            name: "underscore-identity",
            http2: false,
            headers: vec![("x_nhi_identity", b"admin-bot".to_vec()), ("X_NHI_Issuer", b"demo".to_vec())],
            header: "x_nhi_identity",
            backend_sees: None,
        },
        Forged {
            name: "underscore-issuer",
            http2: false,
            headers: vec![("x-nhi_issuer", non_utf8("demo"))],
            header: "x-nhi_issuer",
            backend_sees: None,
        },
    ];
    let web_cases = cases.into_iter().map(|case| (format!("/web/forged-{}", case.name), case, None));
    // Verified machine requests: the filter's own headers must be the only ones.
    let machine_cases = [
        Forged {
            name: "shadow-decision",
            http2: false,
            headers: vec![("x-nhi-shadow-decision", non_utf8("allow"))],
            header: "x-nhi-shadow-decision",
            backend_sees: None,
        },
        Forged {
            name: "claim-header",
            http2: false,
            headers: vec![(SCOPE_HEADER, non_utf8("orders:write"))],
            header: SCOPE_HEADER,
            backend_sees: None,
        },
        Forged {
            name: "claim-header-http2",
            http2: true,
            headers: vec![(SCOPE_HEADER, non_utf8("orders:write"))],
            header: SCOPE_HEADER,
            backend_sees: None,
        },
        Forged {
            name: "identity-beside-a-token",
            http2: false,
            headers: vec![("x-nhi-identity", non_utf8("admin-bot"))],
            header: "x-nhi-identity",
            backend_sees: Some("robot-without-scope".into()),
        },
    ]
    .into_iter()
    .map(|case| (format!("/api/forged-{}", case.name), case, Some(&verified)));
    for (path, case, token) in web_cases.chain(machine_cases) {
        let mut headers: Vec<(&str, &[u8])> = case.headers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        let authorization = token.map(|t| bearer(t));
        if let Some(a) = &authorization {
            headers.push(("authorization", a));
        }
        let addr = stack.envoy.listener_addr();
        let sent = if case.http2 {
            h2c::request(addr, "GET", &path, &headers)
        } else {
            http::request_raw(addr, "GET", &path, &headers)
        };
        let response = match sent {
            Ok(response) => response,
            Err(err) => {
                failures.push(format!("{}: {err:#}", case.name));
                continue;
            }
        };
        if response.status != 200 {
            failures.push(format!("{}: status {} ({})", case.name, response.status, response.body_text()));
            continue;
        }
        let seen = received(stack, &path, case.header);
        let expected: Vec<String> = case.backend_sees.clone().into_iter().collect();
        if seen != expected {
            failures.push(format!(
                "{}: the backend got {}: {seen:?} (expected {expected:?})",
                case.name, case.header
            ));
        }
        // However it is spelled: no underscore or case variant got through either.
        let dashed = case.header.replace('_', "-").to_ascii_lowercase();
        let variants = received(stack, &path, &dashed);
        if dashed != case.header && !variants.is_empty() {
            failures.push(format!("{}: the backend got {dashed}: {variants:?}", case.name));
        }
    }
}

fn lenient_readings_of_machine_tokens_stay_off_the_human_route(stack: &Stack, failures: &mut Vec<String>) {
    let valid = ordinary_token(stack, "lenient-robot");
    let mut with_junk = bearer(&valid);
    with_junk.push(0xa0);
    let cases: Vec<(&str, Vec<u8>, &str, u16, &str)> = vec![
        ("padded", bearer(&format!("{valid}==")), "/web/lenient-padded", 403, "machine_on_human_route"),
        ("non-utf8", with_junk.clone(), "/web/lenient-non-utf8", 403, "machine_on_human_route"),
        (
            "other-scheme",
            format!("Token {valid}").into_bytes(),
            "/web/lenient-scheme",
            403,
            "machine_on_human_route",
        ),
        ("non-utf8-machine", with_junk, "/api/lenient-non-utf8", 401, "malformed_token"),
        (
            "other-scheme-machine",
            format!("Token {valid}").into_bytes(),
            "/api/lenient-scheme",
            401,
            "malformed_token",
        ),
    ];
    for (name, authorization, path, status, expected_reason) in cases {
        let response =
            http::request_raw(stack.envoy.listener_addr(), "GET", path, &[("authorization", &authorization)])
                .unwrap();
        let forwarded = stack.web.received_for(path).len() + stack.upstream.received_for(path).len();
        if (response.status, reason(&response).as_str(), forwarded) != (status, expected_reason, 0) {
            failures.push(format!(
                "lenient {name}: {} {:?}, forwarded {forwarded} time(s) (expected {status} {expected_reason}, never forwarded)",
                response.status,
                reason(&response)
            ));
        }
    }
    // Someone else's token on the human route is still not ours to judge.
    let people = TestKey::generate(KeyType::P256, "people-1").unwrap();
    let theirs = test_harness::mint::Token::new(test_harness::mint::Alg::Es256)
        .kid("people-1")
        .claim("iss", "https://people.example")
        .claim("aud", "web")
        .claim("sub", "alice")
        .sign(&people)
        .unwrap();
    let mut theirs_padded = bearer(&format!("{theirs}=="));
    theirs_padded.push(0xa0);
    let response = http::request_raw(
        stack.envoy.listener_addr(),
        "GET",
        "/web/theirs",
        &[("authorization", &theirs_padded)],
    )
    .unwrap();
    if response.status != 200 || stack.web.received_for("/web/theirs").len() != 1 {
        failures
            .push(format!("someone else's token: {} (expected 200 from the web backend)", response.status));
    }
}

fn a_cached_token_does_not_outlive_its_replaced_key(
    stack: &Stack,
    rotating: &TestKey,
    failures: &mut Vec<String>,
) {
    let addr = stack.envoy.listener_addr();
    let status_of = |token: &str| {
        let response =
            http::request(addr, "GET", "/api/replaced-key", &[("authorization", &format!("Bearer {token}"))])
                .unwrap();
        (response.status, reason(&response))
    };
    // Admitted, and used enough (one connection each) to be cached by both workers.
    let admitted = token(stack, rotating, "rotating-robot", &[]);
    for _ in 0..8 {
        let got = status_of(&admitted);
        if got.0 != 200 {
            failures.push(format!("replaced key: before the rotation, {got:?} (expected 200)"));
            return;
        }
    }
    // The issuer now publishes another key under the same kid.
    let replacement = TestKey::generate(KeyType::P256, ROTATED_KID).unwrap();
    stack.jwks.set_jwks(&keys::jwks([TestKeys::shared().unwrap().by_type(KeyType::P256), &replacement]));
    // Both workers have the new keys once new tokens from the old key fail everywhere.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut in_a_row = 0;
    let mut fresh = 0;
    while in_a_row < 16 {
        if Instant::now() > deadline {
            failures.push("replaced key: the new key set was never loaded by both workers".into());
            return;
        }
        fresh += 1;
        let new_from_old_key = token(stack, rotating, &format!("probe-{fresh}"), &[]);
        in_a_row =
            if status_of(&new_from_old_key) == (401, "bad_signature".into()) { in_a_row + 1 } else { 0 };
        std::thread::sleep(Duration::from_millis(50));
    }
    // Two more ticks (500 ms each) for a worker that the probes happened to miss.
    std::thread::sleep(Duration::from_millis(1_000));
    for attempt in 0..8 {
        let got = status_of(&admitted);
        if got != (401, "bad_signature".into()) {
            failures.push(format!(
                "replaced key: the token cached under the old key got {got:?} on attempt {attempt} (expected 401 bad_signature)"
            ));
            return;
        }
    }
    // The new key works.
    let from_new_key = token(stack, &replacement, "rotating-robot", &[]);
    let got = status_of(&from_new_key);
    if got.0 != 200 {
        failures.push(format!("replaced key: a token of the new key got {got:?}"));
    }
}
