//! RFC 9530 `Content-Digest`: any field value either fails cleanly or yields digests
//! that a body is checked against without panicking; the digest of a body always
//! checks against itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nhi_guard_core::partners::digest::{content_digest_sha256, Expected};

fuzz_target!(|data: &[u8]| {
    if let Ok(expected) = Expected::parse(data) {
        let _ = expected.check(data);
    }
    let own = content_digest_sha256(data);
    Expected::parse(own.as_bytes()).expect("our own digest parses").check(data).expect("and matches");
});
