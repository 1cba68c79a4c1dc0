//! TokenReview answers (`issuers[].profile.liveness`): whatever the API server (or
//! something pretending to be it) sends is read as alive, gone or unavailable without
//! panicking, and only an answer that says `authenticated: true` for the token's
//! service account is ever alive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nhi_guard_core::keys::fetch::Response;
use nhi_guard_core::verify::liveness::read_answer;

fuzz_target!(|data: &[u8]| {
    let subject = "system:serviceaccount:payments:api";
    let audiences = ["nhi-gateway".to_owned()];
    for status in [Some(201), Some(200), Some(500), None] {
        let response = Response { status, body: Ok(data.to_vec()) };
        if read_answer(&response, subject, &audiences) == Ok(true) {
            let answer: serde_json::Value = serde_json::from_slice(data).expect("an alive answer is JSON");
            assert_eq!(answer["status"]["authenticated"], true);
            assert!(matches!(status, Some(200 | 201)));
        }
    }
});
