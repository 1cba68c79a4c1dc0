//! The JWT attack suite: hostile tokens a gateway meets in the wild, each with the
//! reason code it must get. One table, so a new attack is one line. (The most
//! important ones run again in real Envoy in `test-harness/tests/e2e.rs`.)

use serde_json::{json, Value};

use crate::config::Config;
use crate::crypto::alg::Alg;
use crate::keys::jwks::{self, KeySet};
use crate::reason::Reason;
use crate::testkit::{self, b64};
use crate::verify::verify;

const NOW: i64 = 1_800_000_000;
const ISS: &str = "https://issuer.example";

fn config() -> Config {
    Config::from_json(
        json!({"issuers": [{
            "name": "ci", "issuer": ISS, "audiences": ["nhi-gateway"],
            "jwks": {"cluster": "c", "authority": "a", "path": "/jwks.json"},
            "algorithms": ["RS256", "PS256", "ES256", "ES384", "EdDSA"]
        }]})
        .to_string()
        .as_bytes(),
    )
    .unwrap()
}

fn keys() -> Vec<Option<KeySet>> {
    vec![Some(jwks::parse(testkit::jwks().to_string().as_bytes()).unwrap().keys)]
}

fn claims() -> Value {
    json!({"iss": ISS, "sub": "robot", "aud": "nhi-gateway", "iat": NOW - 10, "exp": NOW + 300})
}

/// A token signed with our RSA key, with `header` members merged over `{"alg":"RS256","kid":"rsa-1"}`.
fn rs256(header: Value, claims: Value) -> String {
    let mut h = json!({"alg": "RS256", "kid": "rsa-1"});
    for (k, v) in header.as_object().unwrap() {
        h[k] = v.clone();
    }
    testkit::token(Alg::Rs256, &h, &claims)
}

fn with_claim(name: &str, value: Value) -> String {
    let mut c = claims();
    c[name] = value;
    rs256(json!({}), c)
}

fn raw(header: &str, payload: &str, signature: &[u8]) -> String {
    format!("{}.{}.{}", b64(header), b64(payload), b64(signature))
}

fn hmac(alg: &str, secret: &[u8], input: &str) -> Vec<u8> {
    use hmac::Mac;
    macro_rules! mac {
        ($h:ty) => {{
            let mut m = hmac::Hmac::<$h>::new_from_slice(secret).unwrap();
            m.update(input.as_bytes());
            m.finalize().into_bytes().to_vec()
        }};
    }
    match alg {
        "HS256" => mac!(sha2::Sha256),
        "HS384" => mac!(sha2::Sha384),
        _ => mac!(sha2::Sha512),
    }
}

/// HS* "signed" with a public key as the secret: the classic algorithm confusion.
fn confusion(alg: &str, kid: &str, secret: &[u8]) -> String {
    let input = format!("{}.{}", b64(json!({"alg": alg, "kid": kid}).to_string()), b64(claims().to_string()));
    format!("{input}.{}", b64(hmac(alg, secret, &input)))
}

/// A token signed by the attacker's own key, which it also embeds or points to.
fn self_signed(header: Value) -> String {
    let attacker = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    let point = attacker.verifying_key().to_encoded_point(false);
    let mut h = json!({"alg": "ES256"});
    for (k, v) in header.as_object().unwrap() {
        h[k] = v.clone();
    }
    if h.get("jwk").is_some() {
        h["jwk"] =
            json!({"kty": "EC", "crv": "P-256", "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())});
    }
    let input = format!("{}.{}", b64(h.to_string()), b64(claims().to_string()));
    use p256::ecdsa::signature::Signer;
    let sig: p256::ecdsa::Signature = attacker.sign(input.as_bytes());
    format!("{input}.{}", b64(sig.to_bytes()))
}

fn cases() -> Vec<(&'static str, String, Reason)> {
    let jwks = testkit::jwks();
    let rsa_n = jwks["keys"][0]["n"].as_str().unwrap().as_bytes().to_vec();
    let rsa_jwk = jwks["keys"][0].to_string().into_bytes();
    let ec_jwk = jwks["keys"][1].to_string().into_bytes();
    let good = rs256(json!({}), claims());
    let (input, sig) = good.rsplit_once('.').unwrap();
    let sig_bytes = base64::Engine::decode(&crate::b64::URL_SAFE_STRICT, sig).unwrap();
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));

    let mut cases = vec![
        // alg: none in every spelling, signed or not.
        (
            "alg none",
            format!("{}.{}.", b64(r#"{"alg":"none","kid":"rsa-1"}"#), b64(claims().to_string())),
            Reason::DisallowedAlg,
        ),
        (
            "alg None",
            format!("{}.{}.", b64(r#"{"alg":"None"}"#), b64(claims().to_string())),
            Reason::DisallowedAlg,
        ),
        (
            "alg NONE",
            format!("{}.{}.", b64(r#"{"alg":"NONE"}"#), b64(claims().to_string())),
            Reason::DisallowedAlg,
        ),
        (
            "alg none with a signature",
            raw(r#"{"alg":"none"}"#, &claims().to_string(), &sig_bytes),
            Reason::DisallowedAlg,
        ),
        // Algorithm confusion: HMAC keyed with the public key, in the forms a verifier might use.
        ("HS256 keyed with RSA n", confusion("HS256", "rsa-1", &rsa_n), Reason::DisallowedAlg),
        ("HS384 keyed with RSA JWK", confusion("HS384", "rsa-1", &rsa_jwk), Reason::DisallowedAlg),
        ("HS512 keyed with EC JWK", confusion("HS512", "ec-1", &ec_jwk), Reason::DisallowedAlg),
        (
            "alg/key type mismatch: ES256 on the RSA key",
            testkit::token(Alg::Es256, &json!({"alg":"ES256","kid":"rsa-1"}), &claims()),
            Reason::DisallowedAlg,
        ),
        (
            "alg not allowed for the issuer: RS512",
            testkit::token(Alg::Rs512, &json!({"alg":"RS512","kid":"rsa-1"}), &claims()),
            Reason::DisallowedAlg,
        ),
        // kid games.
        ("kid path traversal", rs256(json!({"kid": "../../../../etc/passwd"}), claims()), Reason::UnknownKid),
        ("kid SQL", rs256(json!({"kid": "x' OR '1'='1"}), claims()), Reason::UnknownKid),
        ("kid 10 KB", rs256(json!({"kid": "k".repeat(10_240)}), claims()), Reason::MalformedToken),
        ("kid a number", rs256(json!({"kid": 1}), claims()), Reason::MalformedToken),
        ("kid an object", rs256(json!({"kid": {"$ne": null}}), claims()), Reason::MalformedToken),
        ("kid null", rs256(json!({"kid": null}), claims()), Reason::MalformedToken),
        // Keys from the token are never fetched or trusted.
        ("embedded jwk, our kid", self_signed(json!({"jwk": {}, "kid": "ec-1"})), Reason::BadSignature),
        ("embedded jwk, no kid", self_signed(json!({"jwk": {}})), Reason::BadSignature),
        (
            "jku to the attacker",
            self_signed(json!({"jku": "https://evil.example/jwks.json", "kid": "ec-1"})),
            Reason::BadSignature,
        ),
        (
            "x5u to the attacker",
            self_signed(json!({"x5u": "https://evil.example/cert.pem", "kid": "ec-1"})),
            Reason::BadSignature,
        ),
        ("x5c chain", self_signed(json!({"x5c": ["MIIB..."], "kid": "ec-1"})), Reason::BadSignature),
        ("jwk and unknown kid", self_signed(json!({"jwk": {}, "kid": "attacker"})), Reason::UnknownKid),
        // Header extensions and nesting.
        ("unknown crit", rs256(json!({"crit": ["exp-ext"], "exp-ext": 1}), claims()), Reason::MalformedToken),
        ("empty crit", rs256(json!({"crit": []}), claims()), Reason::MalformedToken),
        ("nested JWT", rs256(json!({"cty": "JWT"}), claims()), Reason::MalformedToken),
        // JSON that is not what it should be.
        ("header not JSON", raw("{alg:RS256}", &claims().to_string(), b"sig"), Reason::MalformedToken),
        ("header an array", raw(r#"["RS256"]"#, &claims().to_string(), b"sig"), Reason::MalformedToken),
        (
            "payload not JSON",
            raw(r#"{"alg":"RS256","kid":"rsa-1"}"#, "sub=admin", b"sig"),
            Reason::MalformedToken,
        ),
        (
            "payload a string",
            raw(r#"{"alg":"RS256","kid":"rsa-1"}"#, r#""admin""#, b"sig"),
            Reason::MalformedToken,
        ),
        (
            "payload deeply nested",
            raw(r#"{"alg":"RS256","kid":"rsa-1"}"#, &format!(r#"{{"x":{deep}}}"#), b"sig"),
            Reason::MalformedToken,
        ),
        (
            "duplicate sub",
            raw(r#"{"alg":"RS256","kid":"rsa-1"}"#, r#"{"sub":"robot","sub":"admin"}"#, b"sig"),
            Reason::MalformedToken,
        ),
        (
            "duplicate alg",
            raw(r#"{"alg":"RS256","alg":"none"}"#, &claims().to_string(), b""),
            Reason::MalformedToken,
        ),
        (
            "huge number",
            raw(r#"{"alg":"RS256","kid":"rsa-1"}"#, r#"{"exp":1e400}"#, b"sig"),
            Reason::MalformedToken,
        ),
        // Time claims of the wrong shape.
        ("exp a string", with_claim("exp", json!("1800000300")), Reason::MalformedToken),
        ("exp negative", with_claim("exp", json!(-1)), Reason::MalformedToken),
        ("exp after year 9999", with_claim("exp", json!(253_402_300_800_i64)), Reason::MalformedToken),
        ("exp 2^63", with_claim("exp", json!(u64::MAX)), Reason::MalformedToken),
        ("nbf a string", with_claim("nbf", json!("0")), Reason::MalformedToken),
        ("iat an object", with_claim("iat", json!({})), Reason::MalformedToken),
        ("exp in the past", with_claim("exp", json!(NOW - 3600)), Reason::Expired),
        ("nbf in the future", with_claim("nbf", json!(NOW + 3600)), Reason::NotYetValid),
        // Audience of the wrong shape.
        ("aud a number", with_claim("aud", json!(42)), Reason::MalformedToken),
        ("aud nested arrays", with_claim("aud", json!([["nhi-gateway"]])), Reason::MalformedToken),
        ("aud null", with_claim("aud", json!(null)), Reason::MalformedToken),
        // Structure of the compact serialization.
        ("empty string", String::new(), Reason::MalformedToken),
        ("two segments", input.to_owned(), Reason::MalformedToken),
        ("four segments", format!("{good}.AAAA"), Reason::MalformedToken),
        ("empty header", format!(".{}", good.split_once('.').unwrap().1), Reason::MalformedToken),
        ("padding", format!("{input}.{sig}=="), Reason::MalformedToken),
        (
            "standard base64 alphabet",
            format!("{input}.{}", sig.replace('-', "+").replace('_', "/")),
            Reason::MalformedToken,
        ),
        ("whitespace inside", format!("{} {}", &good[..10], &good[10..]), Reason::MalformedToken),
        // Signatures.
        (
            "signature truncated",
            format!("{input}.{}", b64(&sig_bytes[..sig_bytes.len() - 1])),
            Reason::BadSignature,
        ),
        ("signature empty", format!("{input}."), Reason::BadSignature),
        (
            "signature doubled",
            format!("{input}.{}", b64([sig_bytes.clone(), sig_bytes.clone()].concat())),
            Reason::BadSignature,
        ),
        (
            "signature of another token",
            format!("{}.{sig}", rs256(json!({}), with_claims_sub("admin")).rsplit_once('.').unwrap().0),
            Reason::BadSignature,
        ),
    ];
    // Tokens larger than the limit are refused before parsing.
    cases.push(("9 KB token", "a".repeat(9 * 1024), Reason::MalformedToken));
    // An identity a backend would read as another once it trims the header value.
    for (name, sub) in [
        ("sub with a trailing space", "robot "),
        ("sub with a leading no-break space", "\u{a0}robot"),
        ("sub ending in a tab", "robot\t"),
    ] {
        cases.push((name, rs256(json!({}), with_claims_sub(sub)), Reason::MalformedToken));
    }
    cases
}

fn with_claims_sub(sub: &str) -> Value {
    let mut c = claims();
    c["sub"] = json!(sub);
    c
}

#[test]
fn every_attack_gets_its_reason_code() {
    let config = config();
    let keys = keys();
    let mut failures = Vec::new();
    for (name, token, expected) in cases() {
        match verify(config.trust(), keys.as_slice(), &token, NOW) {
            Ok(v) => failures.push(format!("{name}: ACCEPTED as {}", v.subject)),
            Err(r) if r.reason != expected => {
                failures.push(format!("{name}: got {} ({}), expected {expected}", r.reason, r.detail))
            }
            Err(r) => assert_eq!(r.reason.status(), 401, "{name}"),
        }
    }
    assert!(failures.is_empty(), "{} attack(s) handled wrongly:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn the_baseline_token_is_accepted() {
    // So that every refusal above is about the attack, not the fixture.
    let token = rs256(json!({}), claims());
    assert_eq!(verify(config().trust(), keys().as_slice(), &token, NOW).unwrap().subject, "robot");
}

// ---- The other inputs a request or a callout brings ------------------------------
// Hostile bytes, sizes and duplicates for the parsers added beside the JWT verifier:
// each is refused whole (replays of proofs and signatures are refused by their
// tables: `dpop::replay`, `partners::replay`, and in real Envoy on both workers).

/// A DPoP proof (RFC 9449) with this header and payload; the signature bytes do not
/// matter to parsing.
fn proof(header: &str, payload: &str) -> String {
    format!("{}.{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()), b64([7; 64]))
}

fn ec_jwk() -> Value {
    let jwks = testkit::jwks();
    let keys = jwks["keys"].as_array().cloned().unwrap_or_default();
    keys.into_iter().find(|k| k["kty"] == "EC").expect("testkit publishes an EC key")
}

#[test]
fn hostile_dpop_proofs_are_refused_before_any_signature_check() {
    use crate::dpop::{proof::parse, DpopSettings};
    let settings = DpopSettings::default();
    let jwk = ec_jwk().to_string();
    let payload = r#"{"jti":"j-1","htm":"GET","htu":"https://gw.example/api","iat":1800000000,"ath":"x"}"#;
    let header = |extra: &str| format!(r#"{{"typ":"dpop+jwt","alg":"ES256","jwk":{jwk}{extra}}}"#);
    assert!(parse(&proof(&header(""), payload), &settings).is_ok(), "the baseline proof parses");
    let private = {
        let mut jwk = ec_jwk();
        jwk["d"] = json!(b64([1; 32]));
        jwk.to_string()
    };
    let cases: Vec<(&str, String)> = vec![
        ("not a JWS", "not-a-proof".into()),
        ("two segments", format!("{}.{}", b64(header("").as_bytes()), b64(payload.as_bytes()))),
        (
            "bytes that are not base64url",
            format!("{}.{}.***", b64(header("").as_bytes()), b64(payload.as_bytes())),
        ),
        ("typ JWT", proof(&header("").replace("dpop+jwt", "JWT"), payload)),
        ("alg none", proof(&header("").replace("ES256", "none"), payload)),
        ("alg HS256", proof(&header("").replace("ES256", "HS256"), payload)),
        ("no jwk", proof(r#"{"typ":"dpop+jwt","alg":"ES256"}"#, payload)),
        (
            "a private key in jwk",
            proof(&format!(r#"{{"typ":"dpop+jwt","alg":"ES256","jwk":{private}}}"#), payload),
        ),
        (
            "a symmetric jwk",
            proof(r#"{"typ":"dpop+jwt","alg":"ES256","jwk":{"kty":"oct","k":"AAAA"}}"#, payload),
        ),
        ("a duplicate alg", proof(&header(r#","alg":"none""#), payload)),
        (
            "a duplicate claim",
            proof(&header(""), &payload.replace(r#""jti":"j-1""#, r#""jti":"j-1","jti":"j-2""#)),
        ),
        ("a payload that is an array", proof(&header(""), "[]")),
        ("no jti", proof(&header(""), &payload.replace(r#""jti":"j-1","#, ""))),
        ("iat a string", proof(&header(""), &payload.replace("1800000000", r#""1800000000""#))),
        ("oversized", proof(&header(""), &payload.replace("j-1", &"j".repeat(64 * 1024)))),
    ];
    for (name, value) in cases {
        assert!(parse(&value, &settings).is_err(), "{name}: parsed");
    }
}

#[test]
fn hostile_signature_fields_are_refused() {
    use crate::partners::signature::parse;
    let input =
        r#"sig1=("@method" "@authority" "@path");created=1800000000;keyid="k";alg="hmac-sha256";nonce="n""#;
    let with = |from: &str, to: &str| input.replacen(from, to, 1).into_bytes();
    let value = b"sig1=:AAAA:";
    assert!(parse(input.as_bytes(), value).is_ok(), "the baseline fields parse");
    let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        ("not a dictionary", b"sig1".to_vec(), value.to_vec()),
        ("bytes that are not ASCII", b"sig1=(\"@method\xff\")".to_vec(), value.to_vec()),
        ("a signature that is not bytes", input.into(), b"sig1=\"AAAA\"".to_vec()),
        ("no signature for the label", input.into(), b"other=:AAAA:".to_vec()),
        ("a duplicate component", with("\"@path\"", "\"@path\" \"@path\""), value.to_vec()),
        ("an unknown parameter", with(";nonce", ";foo=1;nonce"), value.to_vec()),
        ("@status in a request", with("\"@path\"", "\"@status\""), value.to_vec()),
        ("created a string", with("created=1800000000", "created=\"1800000000\""), value.to_vec()),
        ("oversized", with(";nonce", &format!(";nonce=\"{}\";x", "a".repeat(16 * 1024))), value.to_vec()),
    ];
    for (name, input, value) in cases {
        assert!(parse(&input, &value).is_err(), "{name}: parsed");
    }
}

#[test]
fn hostile_revocation_feeds_are_refused_whole() {
    use crate::policy::revocation::RevocationList;
    assert!(RevocationList::parse(br#"{"jti": ["j-1"]}"#).is_ok(), "the baseline feed parses");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not JSON", b"\xff\xfe{".to_vec()),
        ("an array", b"[]".to_vec()),
        ("the members by position", br#"[["j-1"]]"#.to_vec()),
        ("jti not a list", br#"{"jti": "j-1"}"#.to_vec()),
        ("a number for a jti", br#"{"jti": [1]}"#.to_vec()),
        ("an empty jti", br#"{"jti": [""]}"#.to_vec()),
        ("a control character", br#"{"jti": ["j\u0000"]}"#.to_vec()),
        ("a duplicate member", br#"{"jti": [], "jti": ["j-1"]}"#.to_vec()),
        ("every identity", br#"{"subjects": ["*"]}"#.to_vec()),
        ("issued_before not a time", br#"{"issued_before": {"ci/deployer": "yesterday"}}"#.to_vec()),
        (
            "over the size limit",
            [br#"{"jti": [""#.as_slice(), &vec![b'j'; crate::policy::revocation::MAX_FEED_BYTES], br#""]}"#]
                .concat(),
        ),
    ];
    for (name, body) in cases {
        assert!(RevocationList::parse(&body).is_err(), "{name}: parsed");
    }
}

#[test]
fn hostile_token_review_answers_never_say_alive() {
    use crate::keys::fetch::Response;
    use crate::verify::liveness::read_answer;
    let subject = "system:serviceaccount:payments:api";
    let audiences = ["gw".to_owned()];
    let answer = |status: Value| {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status}).to_string()
    };
    let alive = answer(json!({"authenticated": true, "user": {"username": subject}, "audiences": ["gw"]}));
    let read = |status: Option<u16>, body: &[u8]| {
        read_answer(&Response { status, body: Ok(body.to_vec()) }, subject, &audiences)
    };
    assert_eq!(read(Some(201), alive.as_bytes()), Ok(true), "the baseline answer is alive");
    let cases: Vec<(&str, Option<u16>, Vec<u8>)> = vec![
        ("no answer", None, alive.clone().into_bytes()),
        ("an error status", Some(500), alive.clone().into_bytes()),
        ("not JSON", Some(201), b"\xff".to_vec()),
        (
            "bytes that are not UTF-8 in an ignored member",
            Some(201),
            [&b"{\"x\":\"\xff\","[..], &alive.as_bytes()[1..]].concat(),
        ),
        ("another kind", Some(201), alive.replace("TokenReview", "SubjectAccessReview").into_bytes()),
        (
            "authenticated a string",
            Some(201),
            answer(json!({"authenticated": "true", "user": {"username": subject}})).into_bytes(),
        ),
        (
            "another user",
            Some(201),
            answer(json!({"authenticated": true, "user": {"username": "system:serviceaccount:x:y"}}))
                .into_bytes(),
        ),
        (
            "another audience",
            Some(201),
            answer(json!({"authenticated": true, "user": {"username": subject}, "audiences": ["other"]}))
                .into_bytes(),
        ),
        ("a duplicate status, the last alive", Some(201), {
            let gone = answer(json!({"authenticated": false}));
            let last = alive.find("\"status\"").expect("the answer has a status");
            format!("{},{}", &gone[..gone.len() - 1], &alive[last..]).into_bytes()
        }),
        (
            "no status",
            Some(201),
            br#"{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview"}"#.to_vec(),
        ),
        (
            "over the size limit",
            Some(201),
            [alive.as_bytes(), &vec![b' '; crate::verify::liveness::MAX_REVIEW_BYTES]].concat(),
        ),
    ];
    for (name, status, body) in cases {
        assert_ne!(read(status, &body), Ok(true), "{name}: alive");
    }
}
