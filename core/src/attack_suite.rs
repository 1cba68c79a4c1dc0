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
