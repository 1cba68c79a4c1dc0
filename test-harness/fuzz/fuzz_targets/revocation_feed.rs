//! The revocation feed (`revocation`): whatever the feed server sends is refused whole
//! or becomes a list whose counts and checks run without panicking; a list that parses
//! parses the same from its own counts' point of view when sent again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nhi_guard_core::policy::revocation::RevocationList;
use nhi_guard_core::verify::identity::{IdentityInfo, Via};
use serde_json::{json, Map, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(list) = RevocationList::parse(data) else { return };
    let again = RevocationList::parse(data).expect("a feed that parsed once parses again");
    assert_eq!(list.counts(), again.counts());
    let claims: Map<String, Value> = json!({
        "sub": "system:serviceaccount:payments:api", "jti": "j-1", "iat": 1_800_000_000,
        "kubernetes.io": {"serviceaccount": {"name": "api", "uid": "u-1"}}
    })
    .as_object()
    .cloned()
    .unwrap_or_default();
    let who = IdentityInfo {
        identity: "payments/api",
        issuer: "cluster",
        subject: "system:serviceaccount:payments:api",
        claims: &claims,
        jkt: None,
        via: Via::Token,
    };
    let _ = list.check(&who);
});
