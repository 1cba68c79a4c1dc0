//! DPoP proofs (RFC 9449) through every check, against a fixed request, token and
//! binding: whatever the bytes, `dpop::check` returns (never panics), and a proof it
//! accepts really is bound to the token's key, for this request and token. The htu
//! normalization gets the same bytes. The seed is the RFC's own example proof.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nhi_guard_core::dpop::{self, proof, Check, DpopSettings, IssuerState, ProofHeader, VmState};
use nhi_guard_core::host::store::MemoryStore;

/// RFC 9449 §7.1: the access token, the request and the key of the example proof.
const TOKEN: &str = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU";
const JKT: &str = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";
const NOW: i64 = 1_562_262_618;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = nhi_guard_core::uri::normalized_http_uri(text);
    }
    let settings = DpopSettings { max_tracked_proofs: 64, ..DpopSettings::default() };
    let shared = IssuerState::new("fuzz", &settings);
    let store = MemoryStore::new();
    if shared.prepare(&store).is_err() {
        return;
    }
    let uri = nhi_guard_core::uri::normalized_request_uri("https", "resource.example.org", "/protectedresource");
    let check = Check {
        settings: &settings,
        header: ProofHeader::One(data),
        presented: proof::Presented { method: "GET", uri: uri.as_deref(), token: TOKEN, now: NOW, skew: 30 },
        bound_jkt: Some(JKT),
        nonce: None,
    };
    if let Ok(jkt) = dpop::check(&check, &VmState::new(1), &shared, &store, &mut ()) {
        assert_eq!(jkt, JKT);
        let parsed = std::str::from_utf8(data).ok().and_then(|text| proof::parse(text.trim(), &settings).ok());
        let parsed = parsed.expect("an accepted proof parses");
        assert_eq!(parsed.htm, "GET");
        assert_eq!(parsed.ath, proof::token_hash(TOKEN));
        // Accepted once: the same bytes again are a replay.
        let again = dpop::check(&check, &VmState::new(1), &shared, &store, &mut ());
        assert!(again.is_err());
    }
});
