//! JWKS parsing: any body either fails cleanly or yields a bounded set of keys.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nhi_guard_core::keys::jwks;

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = jwks::parse(data) {
        assert!(!parsed.keys.is_empty());
        assert!(parsed.keys.len() <= jwks::MAX_KEYS);
    }
});
