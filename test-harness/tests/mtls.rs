//! mTLS in a real Envoy: the shipped `envoy/envoy-mtls.yaml` (a TLS listener asking
//! for client certificates), a CA, server and SPIFFE client certificates made here,
//! and a TLS client presenting them; the behaviour tests run with the wasm and again
//! with the native shell in its place. Certificate-bound tokens (RFC 8705), trust
//! domains, certificate-only identities, and subject binding.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use serde_yaml::Value as Yaml;
use test_harness::envoy::{native_module_path, wasm_path, EnvoyOptions};
use test_harness::envoy_config::EnvoyConfig;
use test_harness::http::Response;
use test_harness::jwks_server::JwksBehaviour;
use test_harness::keys::{self, KeyType, TestKeys};
use test_harness::mint::{Alg, Token};
use test_harness::stack::Stack;
use test_harness::tls::{self, Leaf, TestCa, TlsClient};

const TRUST_DOMAIN: &str = "nhi-guard.demo";
const PAYMENTS: &str = "spiffe://nhi-guard.demo/ns/payments/sa/api";
const CI: &str = "spiffe://nhi-guard.demo/ns/ci/sa/deployer";
const FOREIGN: &str = "spiffe://evil.example/ns/payments/sa/api";
/// A second issuer in the test's plugin configuration, with every binding option on.
const BOUND_ISSUER: &str = "https://bound.nhi-guard.demo";

/// A directory removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "nhi-{tag}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The shipped mTLS variant pointed at a fresh CA's files in `dir`.
fn rendered_variant(ca: &TestCa, dir: &Path) -> EnvoyConfig {
    let files = ca.write_listener_files(&ca.server().unwrap(), dir).unwrap();
    let shipped = EnvoyConfig::load(&tls::shipped_mtls_config_path()).unwrap();
    tls::with_listener_files(&shipped, &files).unwrap()
}

struct Mtls {
    stack: Stack,
    ca: TestCa,
    _certs: TempDir,
}

/// Which nhi-guard runs in Envoy: the wasm, or the native shell (the Envoy dynamic
/// module, `make native`) in its place with the same plugin configuration.
#[derive(Clone, Copy, PartialEq)]
enum Shell {
    Wasm,
    Native,
}

impl Mtls {
    fn start(shell: Shell) -> Self {
        let keys = TestKeys::shared().unwrap();
        let jwks = keys::jwks([keys.by_type(KeyType::P256)]);
        let ca = TestCa::generate("nhi-guard e2e CA").unwrap();
        let certs = TempDir::new("mtls-certs");
        let config = rendered_variant(&ca, &certs.0);
        let mut plugin = config.plugin_configuration().unwrap();
        let mut bound = plugin["issuers"][0].clone();
        bound["name"] = json!("bound");
        bound["issuer"] = json!(BOUND_ISSUER);
        bound["require_bound_tokens"] = json!(true);
        bound["bind_subject_to_certificate"] = json!(true);
        plugin["issuers"].as_array_mut().unwrap().push(bound);
        let mut options = EnvoyOptions::new().config(config).plugin_configuration(plugin);
        if shell == Shell::Native {
            options = options.native_filter(&native_module_path().unwrap()).unwrap();
        }
        let mut stack = Stack::start_with(JwksBehaviour::serve(&jwks), options).unwrap();

        let client = TlsClient::new(&ca, None).unwrap();
        let ready = format!("Bearer {}", token(&stack, stack.issuer().unwrap(), "warmup", None));
        stack
            .envoy
            .wait_until("the filter to load its keys", Duration::from_secs(20), |envoy| {
                let r = client.request(
                    envoy.listener_addr(),
                    "GET",
                    "/api/_ready",
                    &[("authorization", &ready)],
                )?;
                Ok(r.status != 503)
            })
            .unwrap();
        Mtls { stack, ca, _certs: certs }
    }

    fn client(&self, spiffe_id: &str) -> Leaf {
        self.ca.client("workload", Some(spiffe_id)).unwrap()
    }

    /// `GET path` over TLS, presenting `cert` (or none), with `token` as a bearer token.
    fn get(&self, path: &str, cert: Option<&Leaf>, token: Option<&str>, extra: &[(&str, &str)]) -> Response {
        let authorization = token.map(|t| format!("Bearer {t}"));
        let mut headers = extra.to_vec();
        if let Some(a) = &authorization {
            headers.push(("authorization", a));
        }
        let client = TlsClient::new(&self.ca, cert).unwrap();
        client.request(self.stack.envoy.listener_addr(), "GET", path, &headers).unwrap()
    }
}

/// An ES256 token of `iss` for `sub`, bound to `bound_to`'s certificate if given.
fn token(stack: &Stack, iss: &str, sub: &str, bound_to: Option<&Leaf>) -> String {
    let key = TestKeys::shared().unwrap().by_type(KeyType::P256);
    let mut t = Token::new(Alg::Es256)
        .kid(key.kid())
        .claim("iss", iss)
        .claim("aud", stack.audience().unwrap())
        .claim("sub", sub);
    if let Some(leaf) = bound_to {
        t = t.claim("cnf", json!({ "x5t#S256": leaf.x5t_s256() }));
    }
    t.sign(key).unwrap()
}

fn status_reason(r: &Response) -> (u16, String) {
    let reason = r.body_json().ok().and_then(|b| b["reason"].as_str().map(str::to_owned));
    (r.status, reason.unwrap_or_default())
}

fn echoed(r: &Response, header: &str) -> Option<String> {
    r.body_json().ok().and_then(|b| b["headers"][header].as_str().map(str::to_owned))
}

fn backend(r: &Response) -> String {
    r.body_json().map(|b| b["backend"].as_str().unwrap_or_default().to_owned()).unwrap_or_default()
}

fn refused(r: &Response, status: u16, reason: &str) {
    assert_eq!(status_reason(r), (status, reason.to_owned()), "{}", r.body_text());
}

#[test]
fn certificate_bound_tokens_in_real_envoy() {
    certificate_bound_tokens(Shell::Wasm);
}

#[test]
fn certificate_bound_tokens_in_the_native_shell() {
    certificate_bound_tokens(Shell::Native);
}

fn certificate_bound_tokens(shell: Shell) {
    let m = Mtls::start(shell);
    let s = &m.stack;
    let demo = s.issuer().unwrap();
    let ci = m.client(CI);
    let payments = m.client(PAYMENTS);

    // A token bound to `ci`'s certificate, presented with it: allowed, and the upstream
    // learns both identities. Envoy's digest of the certificate is what the token names.
    let bound = token(s, demo, "ci-deployer", Some(&ci));
    let r = m.get("/api/orders", Some(&ci), Some(&bound), &[("x-nhi-cert-identity", "spiffe://forged/x")]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(backend(&r), "machine");
    assert_eq!(echoed(&r, "x-nhi-identity").as_deref(), Some("ci-deployer"));
    assert_eq!(echoed(&r, "x-nhi-issuer").as_deref(), Some("demo"));
    assert_eq!(echoed(&r, "x-nhi-cert-identity").as_deref(), Some(CI), "forged copy replaced");
    assert_eq!(echoed(&r, "authorization"), None);

    // The same token with another certificate, or none: 401 certificate_mismatch.
    let r = m.get("/api/orders", Some(&payments), Some(&bound), &[]);
    refused(&r, 401, "certificate_mismatch");
    assert!(r.header("www-authenticate").unwrap().contains(r#"error="invalid_token""#));
    refused(&m.get("/api/orders", None, Some(&bound), &[]), 401, "certificate_mismatch");

    // An unbound token on a route that requires a certificate.
    let unbound = token(s, demo, "ci-deployer", None);
    let r = m.get("/bound/x", None, Some(&unbound), &[]);
    refused(&r, 401, "client_certificate_required");
    assert_eq!(r.header("www-authenticate"), Some(r#"Bearer realm="nhi-guard""#));
    let r = m.get("/bound/x", Some(&ci), Some(&unbound), &[]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(echoed(&r, "x-nhi-cert-identity").as_deref(), Some(CI));
    // Elsewhere an unbound token needs no certificate, and gets no certificate header.
    let r = m.get("/api/orders", None, Some(&unbound), &[("x-nhi-cert-identity", CI)]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(echoed(&r, "x-nhi-cert-identity"), None, "forged copy removed");

    // A certificate from our CA with a SPIFFE ID outside the trust domains: 403.
    let foreign = m.client(FOREIGN);
    refused(&m.get("/api/orders", Some(&foreign), Some(&unbound), &[]), 403, "untrusted_certificate");
    let no_san = m.ca.client("no-spiffe-id", None).unwrap();
    refused(&m.get("/api/orders", Some(&no_san), Some(&unbound), &[]), 403, "untrusted_certificate");
    assert_eq!(s.upstream.hits_for("/api/orders"), 2, "only the two allowed requests went upstream");
}

#[test]
fn certificate_identities_and_subject_binding_in_real_envoy() {
    certificate_identities_and_subject_binding(Shell::Wasm);
}

#[test]
fn certificate_identities_and_subject_binding_in_the_native_shell() {
    certificate_identities_and_subject_binding(Shell::Native);
}

fn certificate_identities_and_subject_binding(shell: Shell) {
    let mut m = Mtls::start(shell);
    let s = &m.stack;
    let ci = m.client(CI);
    let payments = m.client(PAYMENTS);

    // Certificate-only: an identity on the route that accepts it, where its allow rules apply.
    let r = m.get("/workloads/report", Some(&payments), None, &[("x-nhi-identity", "root")]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(backend(&r), "machine");
    assert_eq!(echoed(&r, "x-nhi-client").as_deref(), Some("machine"));
    assert_eq!(echoed(&r, "x-nhi-identity").as_deref(), Some(PAYMENTS));
    assert_eq!(echoed(&r, "x-nhi-issuer").as_deref(), Some("mtls"));
    assert_eq!(echoed(&r, "x-nhi-cert-identity").as_deref(), Some(PAYMENTS));
    refused(&m.get("/workloads/report", Some(&ci), None, &[]), 403, "not_allowed");
    refused(&m.get("/workloads/report", Some(&m.client(FOREIGN)), None, &[]), 403, "untrusted_certificate");
    refused(&m.get("/workloads/report", None, None, &[]), 401, "missing_token");
    // Routes written for tokens do not take a certificate instead.
    refused(&m.get("/api/orders", Some(&payments), None, &[]), 401, "missing_token");
    // People: human routes ignore certificates, and the forged header is gone.
    let r = m.get("/web/index.html", Some(&payments), None, &[("x-nhi-cert-identity", PAYMENTS)]);
    assert_eq!((r.status, backend(&r)), (200, "web".to_owned()), "{}", r.body_text());
    assert_eq!(echoed(&r, "x-nhi-client").as_deref(), Some("human"));
    assert_eq!(echoed(&r, "x-nhi-cert-identity"), None);
    assert_eq!(echoed(&r, "x-nhi-identity"), None);
    // A token-only request with a forged certificate identity that is not UTF-8:
    // removed all the same (issue 23, defect 1).
    let plain = token(s, s.issuer().unwrap(), "token-only", None);
    let authorization = format!("Bearer {plain}");
    let forged = [PAYMENTS.as_bytes(), b"\xa0"].concat();
    let client = TlsClient::new(&m.ca, None).unwrap();
    let headers: [(&str, &[u8]); 2] =
        [("authorization", authorization.as_bytes()), ("x-nhi-cert-identity", &forged)];
    let r =
        client.request_raw(s.envoy.listener_addr(), "GET", "/api/forged-cert-identity", &headers).unwrap();
    assert_eq!((r.status, backend(&r)), (200, "machine".to_owned()), "{}", r.body_text());
    assert_eq!(echoed(&r, "x-nhi-identity").as_deref(), Some("token-only"));
    assert_eq!(echoed(&r, "x-nhi-cert-identity"), None, "{}", r.body_text());
    // Underscored header names (read as dashed ones by CGI/WSGI-style backends) are
    // refused by the TLS listener's HCM too, before nhi-guard or a backend sees them.
    let (web_before, machine_before) = (s.web.hits(), s.upstream.hits());
    let forged =
        [("x_nhi_identity", "admin-bot"), ("x_nhi_client", "machine"), ("x_nhi_cert_identity", PAYMENTS)];
    let r = m.get("/web/underscored", None, None, &forged);
    assert_eq!(r.status, 400, "Envoy must refuse underscored header names: {}", r.body_text());
    assert_eq!(
        (s.web.hits(), s.upstream.hits()),
        (web_before, machine_before),
        "the refused request reached a backend: {:?}",
        s.web.received_for("/web/underscored")
    );
    let rejected = s.envoy.admin_text("/stats?filter=^http1.requests_rejected_with_underscores").unwrap();
    assert_eq!(rejected.trim(), "http1.requests_rejected_with_underscores_in_headers: 1", "Envoy refused it");

    // An issuer with require_bound_tokens and bind_subject_to_certificate: the token's
    // `sub` must be the SPIFFE ID of the certificate it is bound to.
    let good = token(s, BOUND_ISSUER, CI, Some(&ci));
    let r = m.get("/api/deploy", Some(&ci), Some(&good), &[]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(echoed(&r, "x-nhi-identity").as_deref(), Some(CI));
    assert_eq!(echoed(&r, "x-nhi-issuer").as_deref(), Some("bound"));
    let other_subject = token(s, BOUND_ISSUER, "ci-deployer", Some(&ci));
    refused(&m.get("/api/deploy", Some(&ci), Some(&other_subject), &[]), 401, "subject_mismatch");
    let someone_else = token(s, BOUND_ISSUER, PAYMENTS, Some(&ci));
    refused(&m.get("/api/deploy", Some(&ci), Some(&someone_else), &[]), 401, "subject_mismatch");
    let unbound = token(s, BOUND_ISSUER, CI, None);
    refused(&m.get("/api/deploy", Some(&ci), Some(&unbound), &[]), 401, "unbound_token");
    refused(&m.get("/api/deploy", Some(&payments), Some(&good), &[]), 401, "certificate_mismatch");

    // The access log names the certificate identity, and the certificate-only identity.
    let logged = |log: &str| {
        log.lines().any(|l| {
            l.contains(r#""nhi_cert_identity":"spiffe://nhi-guard.demo/ns/payments/sa/api""#)
                && l.contains(r#""nhi_identity":"spiffe://nhi-guard.demo/ns/payments/sa/api""#)
                && l.contains("/workloads/report")
        })
    };
    // Envoy flushes its access log every few seconds, and when it stops.
    m.stack.envoy.stop();
    assert!(logged(&m.stack.envoy.log()), "{}", m.stack.envoy.log());
    // The decision log names the certificate identity too, with the mTLS issuer name
    // for a certificate-only caller.
    let decided = m.stack.envoy.log().lines().any(|l| {
        l.contains(r#"{"event":"nhi_decision""#)
            && l.contains(r#""issuer":"mtls""#)
            && l.contains(r#""identity":"spiffe://nhi-guard.demo/ns/payments/sa/api""#)
            && l.contains(r#""cert_identity":"spiffe://nhi-guard.demo/ns/payments/sa/api""#)
    });
    assert!(decided, "no decision log line for the certificate-only caller");
}

#[test]
fn a_certificate_from_another_ca_fails_the_handshake() {
    let m = Mtls::start(Shell::Wasm);
    let stranger = TestCa::generate("someone else's CA").unwrap().client("x", Some(PAYMENTS)).unwrap();
    let client = TlsClient::new(&m.ca, Some(&stranger)).unwrap();
    let result = client.request(m.stack.envoy.listener_addr(), "GET", "/workloads/x", &[]);
    let err = format!("{:#}", result.expect_err("Envoy's validation context must refuse it"));
    assert!(err.contains("UnknownCA"), "{err}");
}

/// What `envoy-mtls.yaml` may add to `envoy.yaml`: the listener's port and TLS
/// transport socket, the plugin's `mtls` block and the routes using it.
#[test]
fn shipped_mtls_variant_is_envoy_yaml_plus_tls() {
    let plain = EnvoyConfig::shipped().unwrap();
    let variant = EnvoyConfig::load(&tls::shipped_mtls_config_path()).unwrap();

    let mut plugin = variant.plugin_configuration().unwrap();
    let mtls = plugin.as_object_mut().unwrap().remove("mtls").expect("the variant has an mtls block");
    assert_eq!(mtls["trust_domains"], json!([TRUST_DOMAIN]));
    let routes = plugin["routes"].as_array_mut().unwrap();
    let certificate_route = |r: &Value| {
        r.get("require_client_certificate").is_some() || r.get("accept_certificate_identity").is_some()
    };
    assert_eq!(routes.iter().filter(|r| certificate_route(r)).count(), 2);
    routes.retain(|r| !certificate_route(r));
    assert_eq!(plugin, plain.plugin_configuration().unwrap(), "the plugin configurations differ beyond mtls");

    let strip = |config: &EnvoyConfig| -> Yaml {
        let mut doc = config.as_yaml().clone();
        let listener = &mut doc["static_resources"]["listeners"][0];
        listener["address"]["socket_address"]["port_value"] = Yaml::Null;
        if let Some(chain) = listener["filter_chains"][0].as_mapping_mut() {
            chain.remove("transport_socket");
        }
        let hcm = &mut listener["filter_chains"][0]["filters"][0]["typed_config"];
        if let Some(format) =
            hcm["access_log"][0]["typed_config"]["log_format"]["json_format"].as_mapping_mut()
        {
            format.remove("nhi_cert_identity");
        }
        let filters = listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
            .as_sequence_mut()
            .unwrap();
        for filter in filters {
            if filter["name"].as_str() == Some("nhi-guard") {
                filter["typed_config"]["config"]["configuration"]["value"] = Yaml::Null;
            }
        }
        doc
    };
    assert_eq!(
        strip(&variant),
        strip(&plain),
        "envoy/envoy-mtls.yaml must stay envoy/envoy.yaml plus TLS: mirror envoy.yaml's change there"
    );
    let tls = &variant.as_yaml()["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"];
    assert_eq!(tls["typed_config"]["require_client_certificate"].as_bool(), Some(false));
}

#[test]
fn envoy_validates_the_mtls_variant_with_the_built_filter() {
    let ca = TestCa::generate("validate").unwrap();
    let dir = TempDir::new("mtls-validate");
    let mut config = rendered_variant(&ca, &dir.0);
    config.set_wasm_filename(&wasm_path().unwrap()).unwrap();
    if let Err(log) = test_harness::envoy::validate(&config).unwrap() {
        panic!("envoy --mode validate failed:\n{log}");
    }
}
