//! The `partners` block: what it accepts, what it refuses (naming the field), and
//! the secrets read from the environment.

use serde_json::{json, Value};

use super::*;

const ED25519_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=\n-----END PUBLIC KEY-----\n";

fn block() -> Value {
    json!({
        "clients": [{
            "name": "acme",
            "keys": [
                {"id": "acme-2026-01", "alg": "hmac-sha256", "secret_env": "ACME_KEY_2026_01", "not_after": "2026-07-01T00:00:00Z"},
                {"id": "acme-ed", "alg": "ed25519", "public_key": ED25519_PEM}
            ],
            "api_keys": [{"id": "acme-ci", "sha256": api_key::sha256_hex(b"s3cr3t")}]
        }]
    })
}

fn compile_block(v: Value) -> Result<Partners, ConfigError> {
    compile(RawPartners::from_json(v, "partners")?, "partners", &[("token.header", "authorization")])
}

fn invalid_field(v: Value) -> String {
    match compile_block(v) {
        Err(ConfigError::Invalid { field, .. }) => field,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn the_documented_block_compiles_with_its_defaults() {
    let p = compile_block(block()).unwrap();
    assert_eq!(p.issuer_name, "partners");
    assert_eq!(p.api_key_header.as_deref(), Some("x-api-key"));
    let acme = &p.clients[0];
    assert_eq!(acme.identity, "partner:acme");
    assert_eq!(acme.policy.components, ["@method", "@authority", "@path"]);
    assert_eq!((acme.policy.max_age_seconds, acme.policy.require_nonce), (300, true));
    assert_eq!(acme.keys[0].window.not_after, Some(1_782_864_000));
    assert_eq!(p.signing_key("acme-ed"), Some((0, 1)));
    let who = p.identity_info(PartnerKey { partner: 0, key: 0, method: Method::ApiKey }).unwrap();
    assert_eq!((who.identity, who.issuer, who.subject), ("partner:acme", "partners", "acme"));
    assert_eq!(who.claims["key_id"], "acme-ci");
    assert_eq!(who.claims["method"], "api_key");
    assert_eq!(
        p.key_labels().collect::<Vec<_>>(),
        [("acme", "acme-2026-01"), ("acme", "acme-ed"), ("acme", "acme-ci")]
    );
    assert_eq!(
        p.environment_variables(),
        [("partners.clients[0].keys[0].secret_env".to_owned(), "ACME_KEY_2026_01")]
    );
}

#[test]
fn an_inline_secret_is_refused_naming_the_field() {
    for (mutate, field) in [
        (
            json!({"id": "k", "alg": "hmac-sha256", "secret": "c2VjcmV0"}),
            "partners.clients[0].keys[0].secret",
        ),
        (
            json!({"id": "k", "alg": "hmac-sha256", "secret_env": "K", "value": "x"}),
            "partners.clients[0].keys[0].value",
        ),
        (json!({"id": "k", "alg": "hmac-sha256", "key": "x"}), "partners.clients[0].keys[0].key"),
    ] {
        let mut v = block();
        v["clients"][0]["keys"] = json!([mutate]);
        let err = compile_block(v).unwrap_err();
        assert_eq!(err.field(), field);
        assert!(err.reason().contains("secrets are never in the plugin configuration"), "{err}");
    }
    let mut v = block();
    v["clients"][0]["api_keys"] = json!([{"id": "ci", "key": "plaintext"}]);
    let err = compile_block(v).unwrap_err();
    assert_eq!(err.field(), "partners.clients[0].api_keys[0].key");
    assert!(err.reason().contains("only its SHA-256"), "{err}");
    // A value pasted where the variable's name goes is no variable name.
    let mut v = block();
    v["clients"][0]["keys"][0]["secret_env"] =
        json!("uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjx+dtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==");
    assert_eq!(invalid_field(v), "partners.clients[0].keys[0].secret_env");
}

#[test]
fn each_invalid_field_is_named() {
    type Mutation = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("partners.clients", Box::new(|v| v["clients"] = json!([]))),
        ("partners.issuer_name", Box::new(|v| v["issuer_name"] = json!("Partners"))),
        ("partners.clients[0].name", Box::new(|v| v["clients"][0]["name"] = json!("a b"))),
        (
            "partners.clients[0].keys",
            Box::new(|v| {
                v["clients"][0]["keys"] = json!([]);
                v["clients"][0]["api_keys"] = json!([]);
            }),
        ),
        (
            "partners.clients[0].keys",
            Box::new(|v| {
                let k = v["clients"][0]["keys"][0].clone();
                v["clients"][0]["keys"].as_array_mut().unwrap().push(k);
            }),
        ),
        (
            "partners.clients[0].keys[0].alg",
            Box::new(|v| v["clients"][0]["keys"][0]["alg"] = json!("rsa-pss-sha512")),
        ),
        (
            "partners.clients[0].keys[0].secret_env",
            Box::new(|v| {
                v["clients"][0]["keys"][0].as_object_mut().unwrap().remove("secret_env");
            }),
        ),
        (
            "partners.clients[0].keys[1].public_key",
            Box::new(|v| v["clients"][0]["keys"][1]["public_key"] = json!("not pem")),
        ),
        ("partners.clients[0].keys[0].id", Box::new(|v| v["clients"][0]["keys"][0]["id"] = json!("a b"))),
        (
            "partners.clients[0].keys[0].not_after",
            Box::new(|v| v["clients"][0]["keys"][0]["not_after"] = json!("July")),
        ),
        (
            "partners.clients[0].keys[0].not_after",
            Box::new(|v| {
                v["clients"][0]["keys"][0]["not_before"] = json!("2026-08-01T00:00:00Z");
            }),
        ),
        (
            "partners.clients[0].api_keys[0].sha256",
            Box::new(|v| v["clients"][0]["api_keys"][0]["sha256"] = json!("abc")),
        ),
        (
            "partners.clients[0].signature.max_body_bytes",
            Box::new(|v| v["clients"][0]["signature"] = json!({"max_body_bytes": 2_000_000})),
        ),
        ("partners.signature.max_age_seconds", Box::new(|v| v["signature"] = json!({"max_age_seconds": 0}))),
        (
            "partners.signature.components[1]",
            Box::new(|v| v["signature"] = json!({"components": ["@method", "@status"]})),
        ),
        ("partners.signature.label", Box::new(|v| v["signature"] = json!({"label": "Sig"}))),
        ("partners.replay_cache.max_entries", Box::new(|v| v["replay_cache"] = json!({"max_entries": 0}))),
        ("partners.api_key_header", Box::new(|v| v["api_key_header"] = json!("authorization"))),
        ("partners.api_key_header", Box::new(|v| v["api_key_header"] = json!("signature"))),
        (
            "partners.clients[1].name",
            Box::new(|v| {
                let mut other = v["clients"][0].clone();
                other["keys"] = json!([]);
                other["api_keys"][0]["sha256"] = json!(api_key::sha256_hex(b"other"));
                v["clients"].as_array_mut().unwrap().push(other);
            }),
        ),
        (
            "partners.clients[1].keys[0].id",
            Box::new(|v| {
                let mut other = v["clients"][0].clone();
                other["name"] = json!("globex");
                other["api_keys"] = json!([]);
                other["keys"] = json!([v["clients"][0]["keys"][1].clone()]);
                v["clients"].as_array_mut().unwrap().push(other);
            }),
        ),
        (
            "partners.clients[1].api_keys[0].sha256",
            Box::new(|v| {
                let mut other = v["clients"][0].clone();
                other["name"] = json!("globex");
                other["keys"] = json!([]);
                v["clients"].as_array_mut().unwrap().push(other);
            }),
        ),
    ];
    for (field, mutate) in cases {
        let mut v = block();
        mutate(&mut v);
        assert_eq!(invalid_field(v.clone()), field, "{v}");
    }
}

#[test]
fn a_partners_own_signature_block_overrides_the_defaults() {
    let mut v = block();
    v["signature"] = json!({"max_age_seconds": 60, "label": "partner"});
    v["clients"][0]["signature"] = json!({"require_nonce": false, "components": ["@method", "@target-uri"]});
    let p = compile_block(v).unwrap();
    let policy = &p.clients[0].policy;
    assert_eq!(
        (policy.max_age_seconds, policy.require_nonce, policy.label.as_deref()),
        (60, false, Some("partner"))
    );
    assert_eq!(policy.components, ["@method", "@target-uri"]);
}

fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl FnMut(&str) -> Option<Vec<u8>> + 'a {
    move |name| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_bytes().to_vec())
}

#[test]
fn secrets_come_from_the_environment_and_a_missing_one_is_named() {
    let p = compile_block(block()).unwrap();
    let secret = "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==";
    let keyring = p.resolve(&mut env(&[("ACME_KEY_2026_01", secret)])).unwrap();
    assert_eq!(keyring.hmac(0, 0).unwrap().len(), 64);
    assert_eq!(keyring.hmac(0, 1), Some(&[][..]));
    assert_eq!(api_key::find(&keyring, b"s3cr3t"), Some((0, 0)));
    assert_eq!(api_key::find(&keyring, b"s3cr3T"), None);

    let err = p.resolve(&mut env(&[])).unwrap_err();
    assert_eq!(err.variable, "ACME_KEY_2026_01");
    assert_eq!(
        err.to_string(),
        "environment variable ACME_KEY_2026_01 (`partners.clients[0].keys[0].secret_env`) is not set"
    );
    let short = p.resolve(&mut env(&[("ACME_KEY_2026_01", "c2hvcnQ=")])).unwrap_err();
    assert!(short.why.contains("fewer than 32 bytes"), "{short}");
    let not_base64 = p.resolve(&mut env(&[("ACME_KEY_2026_01", "*not base64*")])).unwrap_err();
    assert!(not_base64.why.contains("not base64"), "{not_base64}");
}

#[test]
fn api_key_hashes_may_come_from_the_environment() {
    let mut v = block();
    v["clients"][0]["api_keys"] = json!([{"id": "ci", "sha256_env": "ACME_API_KEY_SHA256"}]);
    let p = compile_block(v).unwrap();
    let secret = "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==";
    let hash = format!("{}\n", api_key::sha256_hex(b"from-env"));
    let keyring =
        p.resolve(&mut env(&[("ACME_KEY_2026_01", secret), ("ACME_API_KEY_SHA256", &hash)])).unwrap();
    assert_eq!(api_key::find(&keyring, b"from-env"), Some((0, 0)));
    let err =
        p.resolve(&mut env(&[("ACME_KEY_2026_01", secret), ("ACME_API_KEY_SHA256", "plain")])).unwrap_err();
    assert_eq!(err.field, "partners.clients[0].api_keys[0].sha256_env");
}

#[test]
fn windows_bound_keys_at_both_ends() {
    let w = Window { not_before: Some(100), not_after: Some(200) };
    assert!(w.check(99).is_err());
    assert!(w.check(100).is_ok());
    assert!(w.check(199).is_ok());
    assert!(w.check(200).is_err());
    assert!(Window::default().check(i64::MIN).is_ok());
}

#[test]
fn ed25519_pem_must_be_an_ed25519_spki() {
    assert!(parse_ed25519_public_key(ED25519_PEM).is_ok());
    // The RFC's P-256 test key is a public key, but not an Ed25519 one.
    let p256 = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqIVYZVLCrPZHGHjP17CTW0/+D9Lf\nw0EkjqF7xB4FivAxzic30tMM4GF+hR6Dxh71Z50VGGdldkkDXZCnTNnoXQ==\n-----END PUBLIC KEY-----";
    assert!(parse_ed25519_public_key(p256).unwrap_err().contains("not an Ed25519"));
    assert!(parse_ed25519_public_key("MCowBQYDK2VwAyEAJrQLj5P").is_err());
}

#[test]
fn wrong_shapes_are_refused_naming_their_path() {
    type Mutation = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, &str, Mutation)> = vec![
        (
            "partners.clients",
            "is required",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("clients");
            }),
        ),
        (
            "partners.client",
            "is not a known field (known: issuer_name, api_key_header, signature, replay_cache, clients)",
            Box::new(|v| v["client"] = json!([])),
        ),
        ("partners.clients[0].name", "is required", Box::new(|v| v["clients"][0] = json!({}))),
        (
            "partners.clients[0].keys",
            "must be an array, not null",
            Box::new(|v| v["clients"][0]["keys"] = json!(null)),
        ),
        (
            "partners.clients[0].keys[0].alg",
            "is required",
            Box::new(|v| v["clients"][0]["keys"][0] = json!({"id": "k"})),
        ),
        (
            "partners.clients[0].keys[0].not_after",
            "must be Unix seconds or an RFC 3339 date-time, not 1.5",
            Box::new(|v| v["clients"][0]["keys"][0]["not_after"] = json!(1.5)),
        ),
        (
            "partners.clients[0].api_keys[0].not_before",
            "must be Unix seconds or an RFC 3339 date-time, not 18446744073709551615",
            Box::new(|v| v["clients"][0]["api_keys"][0]["not_before"] = json!(u64::MAX)),
        ),
        (
            "partners.clients[0].api_keys[0].sha_256",
            "is not a known field (known: id, sha256, sha256_env, not_before, not_after, key, secret, value)",
            Box::new(|v| v["clients"][0]["api_keys"][0]["sha_256"] = json!("x")),
        ),
        (
            "partners.clients[0].signature.require_nonce",
            "must be true or false, not \"no\"",
            Box::new(|v| v["clients"][0]["signature"] = json!({"require_nonce": "no"})),
        ),
        (
            "partners.replay_cache.max_entries",
            "must be a whole number from 0 to 4294967295, not 4294967296",
            Box::new(|v| v["replay_cache"] = json!({"max_entries": 4_294_967_296_u64})),
        ),
        (
            "partners.replay_cache.size",
            "is not a known field (known: max_entries)",
            Box::new(|v| v["replay_cache"] = json!({"size": 1})),
        ),
    ];
    for (field, reason, mutate) in cases {
        let mut v = block();
        mutate(&mut v);
        let err = RawPartners::from_json(v.clone(), "partners").unwrap_err();
        assert_eq!((err.field(), err.reason()), (field, reason), "{v}");
    }
}

#[test]
fn times_read_as_seconds_or_text_as_serde_reads_them() {
    for (v, want) in [
        (json!(-5), "Seconds(-5)"),
        (json!(1_782_864_000), "Seconds(1782864000)"),
        (json!("July"), "Rfc3339(\"July\")"),
    ] {
        let ours = time::RawTime::from_json(v.clone(), "t").unwrap();
        let serdes: time::RawTime = serde_json::from_value(v.clone()).unwrap();
        assert_eq!((format!("{ours:?}"), format!("{serdes:?}")), (want.to_owned(), want.to_owned()), "{v}");
    }
    for v in [json!(1.5), json!(u64::MAX), json!(true), json!([1]), json!({})] {
        assert!(time::RawTime::from_json(v.clone(), "t").is_err(), "{v}");
        assert!(serde_json::from_value::<time::RawTime>(v.clone()).is_err(), "serde too: {v}");
    }
}

#[test]
fn the_reader_and_serde_agree() {
    let mut full = block();
    full["issuer_name"] = json!("acme-partners");
    full["api_key_header"] = json!(null);
    full["signature"] = json!({"components": ["@method"], "max_age_seconds": 60, "clock_skew_seconds": 5,
                               "require_nonce": false, "max_body_bytes": 0, "label": "l", "tag": "t"});
    full["replay_cache"] = json!({"max_entries": 10});
    full["clients"][0]["identity"] = json!("partner/acme");
    full["clients"][0]["signature"] = json!({});
    full["clients"][0]["keys"][0]["secret"] = json!({"inline": true});
    full["clients"][0]["keys"][1]["not_before"] = json!(0);
    full["clients"][0]["api_keys"][0]["value"] = json!(null);
    for v in [block(), full] {
        let ours = RawPartners::from_json(v.clone(), "partners").unwrap();
        let serdes: RawPartners = serde_json::from_value(v).unwrap();
        assert_eq!(format!("{ours:?}"), format!("{serdes:?}"));
    }
}
