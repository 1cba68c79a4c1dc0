//! Header and route classification: arbitrary path, host, method, route name and
//! source address against a fixed route table; `decide` always answers, and a
//! request without a verified identity is never classed as a machine.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nhi_guard_core::config::Config;
use nhi_guard_core::policy::{self, ClientClass, Credential, RequestInfo};

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        Config::from_json(
            br#"{"issuers": [{"name": "ci", "issuer": "https://ci", "audiences": ["gw"],
                 "jwks": {"cluster": "c", "authority": "a", "path": "/j"}}],
               "routes": [
                 {"name": "deploy", "match": {"prefix": "/api/deploy/", "methods": ["POST"]}, "audience": "machine",
                  "allow": [{"identity": "ci/*"}]},
                 {"name": "partner", "match": {"prefix": "/partner/", "host": "*.example.com"}, "audience": "machine",
                  "source_cidrs": ["203.0.113.0/24", "2001:db8::/32"]},
                 {"name": "exact", "match": {"exact": "/healthz"}, "audience": "any"},
                 {"name": "web", "match": {"prefix": "/"}, "audience": "human"}
               ]}"#,
        )
        .expect("fixture config")
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(5, '\n');
    let info = RequestInfo {
        path: parts.next().unwrap_or_default().to_owned(),
        host: parts.next().map(str::to_owned),
        method: parts.next().unwrap_or_default().to_owned(),
        route_name: parts.next().map(str::to_owned),
        source: parts.next().and_then(policy::parse_source_address),
        client_certificate: None,
    };
    let verdict = policy::decide(&config().routes, &info, &Credential::Absent);
    assert_eq!(verdict.client_class, ClientClass::Human);
    let _ = verdict.shadow_header();
});
