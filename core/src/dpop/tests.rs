//! Every check of RFC 9449 §4.3 and §7.1, violated one at a time, through [`check`]
//! with a [`MemoryStore`]; and the RFC's own example proof.

use serde_json::{json, Value};

use super::*;
use crate::crypto::alg::Alg;
use crate::host::store::MemoryStore;
use crate::testkit;

const NOW: i64 = 1_800_000_000;
const TOKEN: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJyb2JvdCJ9.c2ln";
const URI: &str = "https://gw.example/api/x";

/// The public JWK of the test key that signs `alg`.
fn jwk(alg: Alg) -> Value {
    let kid = testkit::kid_for(alg);
    let mut jwk =
        testkit::jwks()["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid).unwrap().clone();
    jwk.as_object_mut().unwrap().remove("kid");
    jwk.as_object_mut().unwrap().remove("use");
    jwk
}

fn jkt_of(alg: Alg) -> String {
    thumbprint::jkt(jwk(alg).as_object().unwrap()).unwrap()
}

fn claims() -> Value {
    json!({"jti": "j-1", "htm": "GET", "htu": URI, "iat": NOW - 5, "ath": proof::token_hash(TOKEN)})
}

fn header(alg: Alg) -> Value {
    json!({"typ": "dpop+jwt", "alg": alg.name(), "jwk": jwk(alg)})
}

fn sign(alg: Alg, header: &Value, claims: &Value) -> String {
    testkit::token(alg, header, claims)
}

struct Fixture {
    settings: DpopSettings,
    vm: VmState,
    shared: IssuerState,
    store: MemoryStore,
}

fn fixture(settings: DpopSettings) -> Fixture {
    let shared = IssuerState::new("ci", &settings);
    let store = MemoryStore::new();
    shared.prepare(&store).unwrap();
    Fixture { settings, vm: VmState::new(1), shared, store }
}

impl Fixture {
    fn judge(
        &self,
        header: ProofHeader<'_>,
        bound: Option<&str>,
        nonce: Option<&NonceState>,
    ) -> Result<String, Rejection> {
        let uri = crate::uri::normalized_request_uri("https", "gw.example", "/api/x?q=1");
        let c = Check {
            settings: &self.settings,
            header,
            presented: proof::Presented {
                method: "GET",
                uri: uri.as_deref(),
                token: TOKEN,
                now: NOW,
                skew: 30,
            },
            bound_jkt: bound,
            nonce,
        };
        check(&c, &self.vm, &self.shared, &self.store, &mut ())
    }

    fn proof(&self, proof: &str, alg: Alg) -> Result<String, Rejection> {
        self.judge(ProofHeader::One(proof.as_bytes()), Some(&jkt_of(alg)), None)
    }
}

fn reason(result: Result<String, Rejection>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(r) => r.reason.code(),
    }
}

#[test]
fn a_valid_proof_passes_once_for_each_algorithm() {
    for alg in [Alg::Es256, Alg::EdDsa, Alg::Rs256, Alg::Ps256] {
        let fx = fixture(DpopSettings::default());
        let p = sign(alg, &header(alg), &claims());
        assert_eq!(fx.proof(&p, alg), Ok(jkt_of(alg)), "{alg}");
        let replayed = fx.proof(&p, alg).unwrap_err();
        assert_eq!(replayed.reason, Reason::DpopReplay, "{alg}");
    }
}

#[test]
fn each_check_violated_in_turn_gets_its_reason() {
    let alg = Alg::Es256;
    let with_claims = |f: &dyn Fn(&mut Value)| {
        let mut c = claims();
        f(&mut c);
        sign(alg, &header(alg), &c)
    };
    let with_header = |f: &dyn Fn(&mut Value)| {
        let mut h = header(alg);
        f(&mut h);
        sign(alg, &h, &claims())
    };
    let good = sign(alg, &header(alg), &claims());
    let mut bad_signature = good.clone().into_bytes();
    let at = bad_signature.len() - 5;
    bad_signature[at] = if bad_signature[at] == b'A' { b'B' } else { b'A' };
    let bad_signature = String::from_utf8(bad_signature).unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        // 2. a single well-formed JWT
        ("not a JWS", "abc".into(), "invalid_dpop_proof"),
        ("two JWTs", format!("{good},{good}"), "invalid_dpop_proof"),
        ("too large", format!("{}.{}.{}", "a".repeat(9000), "b", "c"), "invalid_dpop_proof"),
        // 4. typ
        (
            "no typ",
            with_header(&|h| {
                h.as_object_mut().unwrap().remove("typ");
            }),
            "invalid_dpop_proof",
        ),
        ("typ JWT", with_header(&|h| h["typ"] = json!("JWT")), "invalid_dpop_proof"),
        // 5. alg: asymmetric, accepted by the issuer, fitting the key
        ("alg none", with_header(&|h| h["alg"] = json!("none")), "invalid_dpop_proof"),
        ("alg HS256", with_header(&|h| h["alg"] = json!("HS256")), "invalid_dpop_proof"),
        ("alg not accepted", with_header(&|h| h["alg"] = json!("ES384")), "invalid_dpop_proof"),
        ("alg of another key type", with_header(&|h| h["alg"] = json!("EdDSA")), "invalid_dpop_proof"),
        // 7. jwk public (and present, supported)
        (
            "no jwk",
            with_header(&|h| {
                h.as_object_mut().unwrap().remove("jwk");
            }),
            "invalid_dpop_proof",
        ),
        ("jwk with d", with_header(&|h| h["jwk"]["d"] = json!("AAAA")), "invalid_dpop_proof"),
        (
            "jwk oct",
            with_header(&|h| h["jwk"] = json!({"kty": "oct", "k": "c2VjcmV0"})),
            "invalid_dpop_proof",
        ),
        // 3. every required claim
        (
            "no jti",
            with_claims(&|c| {
                c.as_object_mut().unwrap().remove("jti");
            }),
            "invalid_dpop_proof",
        ),
        (
            "no htm",
            with_claims(&|c| {
                c.as_object_mut().unwrap().remove("htm");
            }),
            "invalid_dpop_proof",
        ),
        (
            "no htu",
            with_claims(&|c| {
                c.as_object_mut().unwrap().remove("htu");
            }),
            "invalid_dpop_proof",
        ),
        (
            "no iat",
            with_claims(&|c| {
                c.as_object_mut().unwrap().remove("iat");
            }),
            "invalid_dpop_proof",
        ),
        (
            "no ath",
            with_claims(&|c| {
                c.as_object_mut().unwrap().remove("ath");
            }),
            "invalid_dpop_proof",
        ),
        ("jti too long", with_claims(&|c| c["jti"] = json!("j".repeat(300))), "invalid_dpop_proof"),
        // 8. htm
        ("htm POST", with_claims(&|c| c["htm"] = json!("POST")), "invalid_dpop_proof"),
        ("htm get", with_claims(&|c| c["htm"] = json!("get")), "invalid_dpop_proof"),
        // 9. htu
        (
            "htu other path",
            with_claims(&|c| c["htu"] = json!("https://gw.example/api/y")),
            "invalid_dpop_proof",
        ),
        (
            "htu other scheme",
            with_claims(&|c| c["htu"] = json!("http://gw.example/api/x")),
            "invalid_dpop_proof",
        ),
        ("htu normalized", with_claims(&|c| c["htu"] = json!("HTTPS://GW.EXAMPLE:443/api/%78")), "ok"),
        // 11. iat within max_age (60 s) and the skew (30 s)
        ("iat too old", with_claims(&|c| c["iat"] = json!(NOW - 91)), "invalid_dpop_proof"),
        ("iat at the edge", with_claims(&|c| c["iat"] = json!(NOW - 90)), "ok"),
        ("iat in the future", with_claims(&|c| c["iat"] = json!(NOW + 31)), "invalid_dpop_proof"),
        ("iat a string", with_claims(&|c| c["iat"] = json!("now")), "invalid_dpop_proof"),
        // 12. ath
        (
            "ath of another token",
            with_claims(&|c| c["ath"] = json!(proof::token_hash("other"))),
            "invalid_dpop_proof",
        ),
        // 6. signature
        ("bad signature", bad_signature, "invalid_dpop_proof"),
    ];
    // A fixture per case: the proofs share their `jti`, and no case replays another's.
    for (name, p, want) in cases {
        let fx = fixture(DpopSettings::default());
        assert_eq!(reason(fx.proof(&p, alg)), want, "{name}");
    }
}

#[test]
fn header_count_and_the_binding() {
    let fx = fixture(DpopSettings::default());
    let p = sign(Alg::Es256, &header(Alg::Es256), &claims());
    // 1. exactly one DPoP header
    assert_eq!(reason(fx.judge(ProofHeader::Absent, Some(&jkt_of(Alg::Es256)), None)), "invalid_dpop_proof");
    assert_eq!(reason(fx.judge(ProofHeader::Many, Some(&jkt_of(Alg::Es256)), None)), "invalid_dpop_proof");
    assert_eq!(reason(fx.judge(ProofHeader::One(b"\xff\xfe"), None, None)), "invalid_dpop_proof");
    // 12. the token's key: an unbound token, a token bound to another key.
    assert_eq!(reason(fx.judge(ProofHeader::One(p.as_bytes()), None, None)), "dpop_key_mismatch");
    assert_eq!(
        reason(fx.judge(ProofHeader::One(p.as_bytes()), Some(&jkt_of(Alg::EdDsa)), None)),
        "dpop_key_mismatch"
    );
    // Nothing was recorded by the refusals: the proof is still fresh.
    assert_eq!(reason(fx.proof(&p, Alg::Es256)), "ok");
}

#[test]
fn the_nonce_must_be_current() {
    let settings = DpopSettings { nonce: true, ..DpopSettings::default() };
    let fx = fixture(settings);
    let nonces = fx.shared.nonces.clone().unwrap();
    let mut fill = 0u8;
    let mut random = |buf: &mut [u8]| {
        fill += 1;
        buf.fill(fill);
        true
    };
    let mut local = None;
    let state = nonces.current(&fx.store, &mut local, NOW as u64, &mut random).unwrap();
    let bound = jkt_of(Alg::Es256);
    let judge = |c: Value| {
        let p = sign(Alg::Es256, &header(Alg::Es256), &c);
        reason(fx.judge(ProofHeader::One(p.as_bytes()), Some(&bound), Some(&state)))
    };
    assert_eq!(judge(claims()), "use_dpop_nonce");
    let mut stale = claims();
    stale["nonce"] = json!("AAAAAAAAAAAAAAAAAAAAAA");
    assert_eq!(judge(stale), "use_dpop_nonce");
    let mut current = claims();
    current["nonce"] = json!(state.current());
    assert_eq!(judge(current), "ok");
}

#[test]
fn a_proof_key_is_imported_once_per_vm() {
    let fx = fixture(DpopSettings::default());
    for j in 0..3 {
        let mut c = claims();
        c["jti"] = json!(format!("k-{j}"));
        assert_eq!(reason(fx.proof(&sign(Alg::Es256, &header(Alg::Es256), &c), Alg::Es256)), "ok");
    }
    assert_eq!(fx.vm.keys.borrow().len(), 1);
    // A refused proof (wrong binding) never reaches the import.
    let p = sign(Alg::EdDsa, &header(Alg::EdDsa), &claims());
    assert_eq!(
        reason(fx.judge(ProofHeader::One(p.as_bytes()), Some(&jkt_of(Alg::Es256)), None)),
        "dpop_key_mismatch"
    );
    assert_eq!(fx.vm.keys.borrow().len(), 1);
}

#[test]
fn a_token_says_whether_it_is_bound() {
    let claims = |v: Value| v.as_object().unwrap().clone();
    assert_eq!(bound_jkt(&claims(json!({}))), Ok(None));
    assert_eq!(bound_jkt(&claims(json!({"cnf": {"x5t#S256": "abc"}}))), Ok(None));
    assert_eq!(bound_jkt(&claims(json!({"cnf": {"jkt": "abc"}}))), Ok(Some("abc")));
    assert_eq!(bound_jkt(&claims(json!({"cnf": "abc"}))).unwrap_err().reason, Reason::MalformedToken);
    assert_eq!(bound_jkt(&claims(json!({"cnf": {"jkt": 1}}))).unwrap_err().reason, Reason::MalformedToken);
}

/// RFC 9449 §7.1's example: the proof that comes with the access token
/// `Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU` on `GET
/// https://resource.example.org/protectedresource`, whose key is the one §6.1's
/// example token is bound to.
#[test]
fn the_rfc_9449_example_proof() {
    let example = concat!(
        "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6Ik",
        "VDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCR",
        "nMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JE",
        "QSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiJlMWozVl9iS2ljOC1MQUVCIiwiaHRtIj",
        "oiR0VUIiwiaHR1IjoiaHR0cHM6Ly9yZXNvdXJjZS5leGFtcGxlLm9yZy9wcm90ZWN0Z",
        "WRyZXNvdXJjZSIsImlhdCI6MTU2MjI2MjYxOCwiYXRoIjoiZlVIeU8ycjJaM0RaNTNF",
        "c05yV0JiMHhXWG9hTnk1OUlpS0NBcWtzbVFFbyJ9.2oW9RP35yRqzhrtNP86L-Ey71E",
        "OptxRimPPToA1plemAgR6pxHF8y6-yqyVnmcw6Fy1dqd-jfxSYoMxhAJpLjA",
    );
    let settings = DpopSettings::default();
    let p = proof::parse(example, &settings).unwrap();
    assert_eq!(p.jkt, "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I");
    assert_eq!(proof::token_hash("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"), p.ath);
    let key = p.import_key().unwrap();
    assert!(p.verify(&key.key), "the RFC's signature verifies");
    let uri = crate::uri::normalized_request_uri("https", "resource.example.org", "/protectedresource");
    let presented = proof::Presented {
        method: "GET",
        uri: uri.as_deref(),
        token: "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU",
        now: 1_562_262_618,
        skew: 0,
    };
    assert_eq!(p.check_request(&presented, &settings), Ok(()));
    assert_eq!(p.check_binding("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"), Ok(()));
}
