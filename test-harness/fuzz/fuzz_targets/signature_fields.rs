//! RFC 9421 `Signature-Input` / `Signature` (RFC 8941 dictionaries): any pair of field
//! values either fails cleanly or describes signatures that respect the bounds, whose
//! `@signature-params` re-serialization parses back to the same inner list, and whose
//! signature base can be built (or refused) for any request without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nhi_guard_core::host::header_map::HeaderMap;
use nhi_guard_core::partners::sf::{self, Member};
use nhi_guard_core::partners::signature::{self, SignedRequest, MAX_COMPONENTS, MAX_SIGNATURES};

fuzz_target!(|data: &[u8]| {
    // Split the input into the two field values at the first newline.
    let (input, value) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b"sig1=:AA==:"[..]),
    };
    let Ok(candidates) = signature::parse(input, value) else { return };
    assert!(!candidates.is_empty() && candidates.len() <= MAX_SIGNATURES);
    let headers = HeaderMap::from_pairs([("host", "example.com"), ("date", "x"), ("content-digest", "sha-256=:AA==:")]);
    let request = SignedRequest {
        method: b"POST",
        scheme: Some(b"https"),
        authority: Some(b"example.com"),
        path: b"/foo?param=Value&Pet=dog",
        headers: &headers,
    };
    for candidate in &candidates {
        assert!(candidate.components.len() <= MAX_COMPONENTS);
        let reparsed = sf::parse_dictionary(format!("s={}", candidate.signature_params).as_bytes())
            .expect("a re-serialized inner list parses");
        let Some((_, Member::InnerList(list))) = reparsed.first() else { panic!("not an inner list") };
        assert_eq!(list.items, candidate.components);
        if let Ok(base) = signature::signature_base(&request, candidate) {
            assert!(base.is_ascii());
            assert!(base.ends_with(&candidate.signature_params));
        }
    }
});
