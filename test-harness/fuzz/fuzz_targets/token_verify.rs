//! Token parsing and verification against a fixed key set and clock: whatever the
//! bytes, `verify` returns (never panics), and anything it accepts really carries
//! the configured issuer and audience.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nhi_guard_core::config::Config;
use nhi_guard_core::keys::jwks::{self, KeySet};
use nhi_guard_core::verify::verify;

/// The seed tokens in the corpus were minted for this instant.
const NOW: i64 = 1_795_000_000;

fn fixture() -> &'static (Config, Vec<Option<KeySet>>) {
    static FIXTURE: OnceLock<(Config, Vec<Option<KeySet>>)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let jwks = include_str!("../../../envoy/demo/jwks.json");
        let config = format!(
            r#"{{"issuers": [{{"name": "demo", "issuer": "https://issuer.nhi-guard.demo",
                "audiences": ["nhi-gateway"], "algorithms": ["RS256", "PS256", "ES256", "ES384", "EdDSA"],
                "jwks": {{"inline": {jwks}}}}}]}}"#
        );
        let config = Config::from_json(config.as_bytes()).expect("fixture config");
        let keys = vec![Some(jwks::parse(jwks.as_bytes()).expect("demo jwks").keys)];
        (config, keys)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let (config, keys) = fixture();
    if let Ok(verified) = verify(config.trust(), keys.as_slice(), token, NOW) {
        assert_eq!(verified.claims.get("iss").and_then(|v| v.as_str()), Some("https://issuer.nhi-guard.demo"));
        assert!(verified.expires_at > NOW - 30);
    }
});
