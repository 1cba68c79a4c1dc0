use std::collections::HashMap;

use serde_json::{json, Value};

use super::*;
use crate::config::Config;
use crate::error::ConfigError;
use crate::json::FromJson;
use crate::policy::{self, Credential, Decision, RequestInfo};

/// SHA-256("abc"), the FIPS 180-2 test vector.
const ABC_HEX: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
const ABC_X5T: &str = "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0";
const OTHER_HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

const WORKLOAD: &str = "spiffe://prod.example/ns/ci/sa/deployer";

fn mtls() -> MtlsConfig {
    compile(
        RawMtls::from_json(json!({"trust_domains": ["prod.example", "staging.example"]}), "mtls").unwrap(),
        "mtls",
    )
    .unwrap()
}

/// Connection attributes as Envoy would give them.
fn attrs(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> =
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    move |name: &str| map.get(name).cloned()
}

fn cert(identity: CertIdentity, hex: &str) -> ClientCertificate {
    ClientCertificate { thumbprint: thumbprint_from_hex(hex), identity }
}

fn trusted(id: &str) -> ClientCertificate {
    cert(CertIdentity::Trusted(id.to_owned()), ABC_HEX)
}

fn claims(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("claims must be an object"),
    }
}

fn code(result: Result<(), Rejection>) -> Option<&'static str> {
    result.err().map(|r| r.reason.code())
}

#[test]
fn hex_digest_to_x5t() {
    assert_eq!(thumbprint_from_hex(ABC_HEX).as_deref(), Some(ABC_X5T));
    assert_eq!(thumbprint_from_hex(&ABC_HEX.to_uppercase()).as_deref(), Some(ABC_X5T));
    for bad in
        ["", "ba78", &ABC_HEX[1..], &format!("{ABC_HEX}00"), &ABC_HEX.replace('b', "g"), &"é".repeat(32)]
    {
        assert_eq!(thumbprint_from_hex(bad), None, "{bad:?}");
    }
    let colons: String = ABC_HEX.as_bytes().chunks(2).map(|p| String::from_utf8_lossy(p) + ":").collect();
    assert_eq!(thumbprint_from_hex(&colons), None);
}

#[test]
fn constant_time_equality() {
    assert!(constant_time_eq(b"", b""));
    assert!(constant_time_eq(ABC_X5T.as_bytes(), ABC_X5T.as_bytes()));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"ab"));
    assert!(!constant_time_eq(b"", b"a"));
}

#[test]
fn reading_the_connection() {
    let m = mtls();
    // No certificate: Envoy has no digest (or an empty one).
    assert_eq!(client_certificate(Some(&m), attrs(&[])), None);
    assert_eq!(client_certificate(Some(&m), attrs(&[(DIGEST_ATTRIBUTE, "")])), None);
    let read = |pairs: &[(&str, &str)]| client_certificate(Some(&m), attrs(pairs)).unwrap();

    let c = read(&[(DIGEST_ATTRIBUTE, ABC_HEX), (URI_SAN_ATTRIBUTE, WORKLOAD)]);
    assert_eq!(c, trusted(WORKLOAD));
    assert_eq!(c.trusted_identity(), Some(WORKLOAD));
    let staging = "spiffe://staging.example/x";
    assert_eq!(
        read(&[(DIGEST_ATTRIBUTE, ABC_HEX), (URI_SAN_ATTRIBUTE, staging)]).trusted_identity(),
        Some(staging)
    );

    for (san, why) in [
        (None, Untrusted::Missing),
        (Some(""), Untrusted::Missing),
        (Some("spiffe://evil.example/ns/ci/sa/deployer"), Untrusted::ForeignTrustDomain),
        // Suffix and prefix tricks are other trust domains.
        (Some("spiffe://prod.example.evil/x"), Untrusted::ForeignTrustDomain),
        (Some("spiffe://evilprod.example/x"), Untrusted::ForeignTrustDomain),
        (Some("spiffe://prod.example"), Untrusted::NotSpiffe(SpiffeError::NoPath)),
        (Some("spiffe://PROD.example/x"), Untrusted::NotSpiffe(SpiffeError::TrustDomainCharacter)),
        (Some("https://prod.example/x"), Untrusted::NotSpiffe(SpiffeError::NotSpiffe)),
    ] {
        let mut pairs = vec![(DIGEST_ATTRIBUTE, ABC_HEX)];
        pairs.extend(san.map(|s| (URI_SAN_ATTRIBUTE, s)));
        let c = read(&pairs);
        assert_eq!(c.identity, CertIdentity::Untrusted(why), "{san:?}");
        assert_eq!(c.trusted_identity(), None);
        assert_eq!(c.thumbprint.as_deref(), Some(ABC_X5T), "the thumbprint is kept either way");
    }
    // A digest that is not hex: presented, with no thumbprint.
    let odd = read(&[(DIGEST_ATTRIBUTE, "zz"), (URI_SAN_ATTRIBUTE, WORKLOAD)]);
    assert_eq!((odd.thumbprint.as_deref(), odd.trusted_identity()), (None, Some(WORKLOAD)));
}

#[test]
fn reading_without_mtls_or_by_subject() {
    // No `mtls` block: only the thumbprint, for bound tokens; identities are not read.
    let c = client_certificate(None, attrs(&[(DIGEST_ATTRIBUTE, ABC_HEX), (URI_SAN_ATTRIBUTE, WORKLOAD)]));
    assert_eq!(c, Some(cert(CertIdentity::Unchecked, ABC_HEX)));

    let by_subject =
        compile(RawMtls::from_json(json!({"identity": "subject"}), "mtls").unwrap(), "mtls").unwrap();
    let c = client_certificate(
        Some(&by_subject),
        attrs(&[
            (DIGEST_ATTRIBUTE, ABC_HEX),
            (SUBJECT_ATTRIBUTE, "CN=deployer,O=CI"),
            (URI_SAN_ATTRIBUTE, "x"),
        ]),
    )
    .unwrap();
    assert_eq!(c.trusted_identity(), Some("CN=deployer,O=CI"));
    let none = client_certificate(Some(&by_subject), attrs(&[(DIGEST_ATTRIBUTE, ABC_HEX)])).unwrap();
    assert_eq!(none.identity, CertIdentity::Untrusted(Untrusted::Missing));
}

#[test]
fn untrusted_details_echo_nothing_from_the_certificate() {
    for why in
        [Untrusted::Missing, Untrusted::ForeignTrustDomain, Untrusted::NotSpiffe(SpiffeError::PathCharacter)]
    {
        let detail = why.to_string();
        assert!(!detail.contains("spiffe://") && !detail.contains('"'), "{detail}");
    }
}

#[test]
fn bound_tokens_need_their_certificate() {
    let open = CertificatePolicy::default();
    let bound = claims(json!({"sub": "x", "cnf": {"x5t#S256": ABC_X5T}}));
    let c = trusted(WORKLOAD);
    assert_eq!(code(check_binding(&open, "x", &bound, Some(&c))), None);
    // Without an mtls block too: a bound token is never a bearer token.
    assert_eq!(code(check_binding(&open, "x", &bound, Some(&cert(CertIdentity::Unchecked, ABC_HEX)))), None);
    assert_eq!(code(check_binding(&open, "x", &bound, None)), Some("certificate_mismatch"));
    let other = cert(CertIdentity::Trusted(WORKLOAD.into()), OTHER_HEX);
    assert_eq!(code(check_binding(&open, "x", &bound, Some(&other))), Some("certificate_mismatch"));
    let no_digest = ClientCertificate { thumbprint: None, identity: CertIdentity::Trusted(WORKLOAD.into()) };
    assert_eq!(code(check_binding(&open, "x", &bound, Some(&no_digest))), Some("certificate_mismatch"));
    // Exact base64url, no padding, no other encodings of the same bytes.
    for variant in [format!("{ABC_X5T}="), ABC_X5T.replace('-', "+").replace('_', "/"), ABC_HEX.to_owned()] {
        let c2 = claims(json!({"cnf": {"x5t#S256": variant}}));
        assert_eq!(code(check_binding(&open, "x", &c2, Some(&c))), Some("certificate_mismatch"), "{variant}");
    }
    // Malformed confirmations.
    for cnf in [json!("x"), json!([ABC_X5T]), json!({"x5t#S256": 5}), json!({"x5t#S256": null})] {
        let c2 = claims(json!({ "cnf": cnf }));
        assert_eq!(code(check_binding(&open, "x", &c2, Some(&c))), Some("malformed_token"), "{cnf}");
    }
    // Another confirmation method (DPoP's jkt) is not ours to check.
    let dpop = claims(json!({"cnf": {"jkt": "abc"}}));
    assert_eq!(code(check_binding(&open, "x", &dpop, None)), None);
}

#[test]
fn issuer_policies() {
    let c = trusted(WORKLOAD);
    let unbound = claims(json!({}));
    let bound = claims(json!({"cnf": {"x5t#S256": ABC_X5T}}));
    let foreign = cert(CertIdentity::Untrusted(Untrusted::ForeignTrustDomain), ABC_HEX);

    let require_bound = CertificatePolicy { require_bound_tokens: true, ..Default::default() };
    assert_eq!(code(check_binding(&require_bound, "x", &unbound, Some(&c))), Some("unbound_token"));
    assert_eq!(code(check_binding(&require_bound, "x", &unbound, None)), Some("unbound_token"));
    assert_eq!(code(check_binding(&require_bound, "x", &bound, Some(&c))), None);

    let require_cert = CertificatePolicy { require_client_certificate: true, ..Default::default() };
    assert_eq!(code(check_binding(&require_cert, "x", &unbound, None)), Some("client_certificate_required"));
    assert_eq!(code(check_binding(&require_cert, "x", &unbound, Some(&c))), None);
    assert_eq!(
        code(check_binding(&require_cert, "x", &unbound, Some(&foreign))),
        Some("untrusted_certificate")
    );

    let bind = CertificatePolicy { bind_subject_to_certificate: true, ..Default::default() };
    assert_eq!(code(check_binding(&bind, WORKLOAD, &unbound, Some(&c))), None);
    assert_eq!(
        code(check_binding(&bind, "spiffe://prod.example/other", &unbound, Some(&c))),
        Some("subject_mismatch")
    );
    assert_eq!(code(check_binding(&bind, WORKLOAD, &unbound, None)), Some("client_certificate_required"));
    assert_eq!(code(check_binding(&bind, WORKLOAD, &unbound, Some(&foreign))), Some("untrusted_certificate"));
    // Case matters: SPIFFE paths are case-sensitive.
    assert_eq!(
        code(check_binding(&bind, &WORKLOAD.to_uppercase(), &unbound, Some(&c))),
        Some("subject_mismatch")
    );

    // All at once: the binding is checked first.
    let all = CertificatePolicy {
        require_client_certificate: true,
        require_bound_tokens: true,
        bind_subject_to_certificate: true,
    };
    assert!(all.any() && !CertificatePolicy::default().any());
    assert_eq!(code(check_binding(&all, WORKLOAD, &bound, None)), Some("certificate_mismatch"));
    assert_eq!(code(check_binding(&all, WORKLOAD, &unbound, None)), Some("unbound_token"));
    assert_eq!(code(check_binding(&all, "other", &bound, Some(&c))), Some("subject_mismatch"));
    assert_eq!(code(check_binding(&all, WORKLOAD, &bound, Some(&c))), None);
}

#[test]
fn statuses_and_challenges() {
    use crate::reason::LocalReply;
    for (reason, status) in [
        (Reason::ClientCertificateRequired, 401),
        (Reason::CertificateMismatch, 401),
        (Reason::UnboundToken, 401),
        (Reason::SubjectMismatch, 401),
        (Reason::UntrustedCertificate, 403),
    ] {
        assert_eq!(reason.status(), status, "{reason}");
        let reply = LocalReply::for_rejection(&Rejection::new(reason, "d"), "r", None);
        let challenge = reply.headers.iter().find(|(n, _)| n == "www-authenticate").map(|(_, v)| v.as_str());
        let body: Value = serde_json::from_str(&reply.body).unwrap();
        match reason {
            Reason::UntrustedCertificate => {
                assert_eq!(challenge, None);
                assert_eq!(body["error"], "forbidden");
            }
            Reason::ClientCertificateRequired => assert_eq!(challenge, Some("Bearer realm=\"r\"")),
            // RFC 8705 §3: a binding failure is an invalid_token.
            _ => assert!(challenge.is_some_and(|c| c.contains("error=\"invalid_token\"")), "{reason}"),
        }
    }
}

// ---- the whole configuration ----

fn plugin(extra: Value) -> Value {
    let mut v = json!({
        "issuers": [{
            "name": "ci", "issuer": "https://issuer.example", "audiences": ["gw"],
            "jwks": {"cluster": "c", "authority": "issuer.example", "path": "/jwks"}
        }]
    });
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    v
}

fn config(v: Value) -> Result<Config, ConfigError> {
    Config::from_json(v.to_string().as_bytes())
}

fn invalid_field(v: Value) -> String {
    match config(v) {
        Err(ConfigError::Invalid { field, .. }) => field,
        other => panic!("expected Invalid, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn flags_need_the_mtls_block() {
    for flag in ["require_client_certificate", "require_bound_tokens", "bind_subject_to_certificate"] {
        let mut v = plugin(json!({}));
        v["issuers"][0][flag] = json!(true);
        assert_eq!(invalid_field(v.clone()), format!("issuers[0].{flag}"));
        v["mtls"] = json!({"trust_domains": ["prod.example"]});
        let cfg = config(v).unwrap();
        assert!(cfg.issuers[0].certificate.any());
    }
    for flag in ["require_client_certificate", "accept_certificate_identity"] {
        let mut route = json!({"name": "m", "match": {"prefix": "/m/"}});
        route[flag] = json!(true);
        let v = plugin(json!({ "routes": [route.clone()] }));
        assert_eq!(invalid_field(v), format!("routes[0].{flag}"));
        let ok = plugin(json!({ "routes": [route.clone()], "mtls": {"trust_domains": ["prod.example"]} }));
        assert!(config(ok).is_ok());
        // A human route ignores certificates: asking for one there is a mistake.
        route["audience"] = json!("human");
        let human = plugin(json!({ "routes": [route], "mtls": {"trust_domains": ["prod.example"]} }));
        assert_eq!(invalid_field(human), format!("routes[0].{flag}"));
    }
    let unset = plugin(json!({"issuers": [{
        "name": "ci", "issuer": "https://issuer.example", "audiences": ["gw"],
        "jwks": {"cluster": "c", "authority": "issuer.example", "path": "/jwks"},
        "require_bound_tokens": false
    }]}));
    assert!(config(unset).unwrap().mtls.is_none());
}

#[test]
fn mtls_names_and_headers_do_not_clash() {
    let td = json!(["prod.example"]);
    assert_eq!(
        invalid_field(plugin(json!({"mtls": {"trust_domains": td, "issuer_name": "ci"}}))),
        "mtls.issuer_name"
    );
    for header in ["authorization", "x-nhi-identity", "x-nhi-issuer", "x-nhi-client", "x-nhi-shadow-decision"]
    {
        let v = plugin(json!({"mtls": {"trust_domains": td, "identity_header": header}}));
        assert_eq!(invalid_field(v), "mtls.identity_header", "{header}");
    }
    assert_eq!(invalid_field(plugin(json!({"mtls": {"trust_domain": td}}))), "mtls.trust_domain");
}

#[test]
fn allow_rules_may_name_the_mtls_issuer() {
    let routes = json!([{"name": "m", "match": {"prefix": "/"}, "accept_certificate_identity": true,
                         "allow": [{"issuer": "mtls", "identity": "spiffe://prod.example/ns/ci/*"}]}]);
    assert_eq!(invalid_field(plugin(json!({ "routes": routes }))), "routes[0].allow[0].issuer");
    let cfg = config(plugin(json!({"routes": routes, "mtls": {"trust_domains": ["prod.example"]}}))).unwrap();
    assert_eq!(cfg.mtls.unwrap().issuer_name, "mtls");
}

// ---- route policy with certificates ----

fn routes_config() -> Config {
    config(plugin(json!({
        "mtls": {"trust_domains": ["prod.example"]},
        "routes": [
            {"name": "certs", "match": {"prefix": "/certs/"}, "accept_certificate_identity": true,
             "allow": [{"issuer": "mtls", "identity": "spiffe://prod.example/ns/ci/*"}]},
            {"name": "open-certs", "match": {"prefix": "/open/"}, "audience": "any", "accept_certificate_identity": true},
            {"name": "strict", "match": {"prefix": "/strict/"}, "require_client_certificate": true},
            {"name": "tokens", "match": {"prefix": "/tokens/"}},
            {"name": "both", "match": {"prefix": "/both/"}, "audience": "any"},
            {"name": "web", "match": {"prefix": "/web/"}, "audience": "human"}
        ],
        "deny": {"subjects": ["spiffe://prod.example/ns/ci/sa/leaked"]}
    })))
    .unwrap()
}

fn request(path: &str, cert: Option<ClientCertificate>) -> RequestInfo {
    RequestInfo {
        path: path.into(),
        method: "GET".into(),
        client_certificate: cert,
        ..RequestInfo::default()
    }
}

/// A denial's status and reason code, or `None` for allow.
type Expected = Option<(u16, &'static str)>;

/// (status, reason) or `None` for allow, and whether the request goes on as a machine.
fn outcome(
    cfg: &Config,
    req: &RequestInfo,
    token: Option<&policy::IdentityInfo<'_>>,
) -> (Option<(u16, &'static str)>, bool) {
    let no_claims = Map::new();
    let credential = match token {
        Some(who) => Credential::Verified(*who),
        None => match certificate_only(cfg.mtls.as_ref(), req.client_certificate.as_ref(), &no_claims) {
            Some(who) => Credential::Certificate(who),
            None => Credential::Absent,
        },
    };
    let verdict = policy::decide(&cfg.routes, req, &credential);
    let denial = match &verdict.decision {
        Decision::Allow => None,
        Decision::Deny(d) => Some((d.status, d.reason.code())),
    };
    (denial, verdict.client_class == policy::ClientClass::Machine)
}

#[test]
fn certificate_only_identities_where_routes_accept_them() {
    let cfg = routes_config();
    let ok = Some(trusted(WORKLOAD));
    let other = Some(trusted("spiffe://prod.example/ns/payments/sa/api"));
    let leaked = Some(trusted("spiffe://prod.example/ns/ci/sa/leaked"));
    let foreign = Some(cert(CertIdentity::Untrusted(Untrusted::ForeignTrustDomain), ABC_HEX));
    let cases: Vec<(&str, Option<ClientCertificate>, Expected, bool)> = vec![
        // Accepted, and the allow rules apply.
        ("/certs/x", ok.clone(), None, true),
        ("/certs/x", other.clone(), Some((403, "not_allowed")), true),
        ("/certs/x", leaked.clone(), Some((403, "subject_denied")), true),
        ("/certs/x", None, Some((401, "missing_token")), false),
        ("/certs/x", foreign.clone(), Some((403, "untrusted_certificate")), false),
        ("/open/x", other.clone(), None, true),
        ("/open/x", None, None, false),
        // Routes written for tokens: a certificate alone is no credential.
        ("/tokens/x", ok.clone(), Some((401, "missing_token")), false),
        ("/both/x", ok.clone(), None, false),
        ("/unmatched", ok.clone(), Some((401, "missing_token")), false),
        ("/strict/x", ok.clone(), Some((401, "missing_token")), false),
        ("/strict/x", None, Some((401, "client_certificate_required")), false),
        // Untrusted certificates are refused wherever machines are…
        ("/tokens/x", foreign.clone(), Some((403, "untrusted_certificate")), false),
        ("/both/x", foreign.clone(), Some((403, "untrusted_certificate")), false),
        ("/unmatched", foreign.clone(), Some((403, "untrusted_certificate")), false),
        ("/strict/x", foreign.clone(), Some((403, "untrusted_certificate")), false),
        // …and human routes ignore certificates altogether.
        ("/web/x", ok.clone(), None, false),
        ("/web/x", foreign.clone(), None, false),
    ];
    for (path, c, want, machine) in cases {
        let req = request(path, c.clone());
        assert_eq!(outcome(&cfg, &req, None), (want, machine), "{path} {c:?}");
    }
}

#[test]
fn tokens_on_certificate_routes() {
    let cfg = routes_config();
    let no_claims = Map::new();
    let token = policy::IdentityInfo {
        identity: "ci-bot",
        issuer: "ci",
        subject: "ci-bot",
        claims: &no_claims,
        jkt: None,
        via: crate::verify::identity::Via::Token,
    };
    // A token with a trusted certificate passes the strict route; without one it does not.
    assert_eq!(outcome(&cfg, &request("/strict/x", Some(trusted(WORKLOAD))), Some(&token)), (None, true));
    assert_eq!(
        outcome(&cfg, &request("/strict/x", None), Some(&token)),
        (Some((401, "client_certificate_required")), true)
    );
    // With a token, the route's allow rules see the token identity, not the certificate.
    assert_eq!(
        outcome(&cfg, &request("/certs/x", Some(trusted(WORKLOAD))), Some(&token)),
        (Some((403, "not_allowed")), true)
    );
    assert_eq!(
        outcome(
            &cfg,
            &request("/tokens/x", Some(cert(CertIdentity::Untrusted(Untrusted::Missing), ABC_HEX))),
            Some(&token)
        ),
        (Some((403, "untrusted_certificate")), true)
    );
    // No mtls block: certificates are never identities, and nothing is refused for them.
    let plain = config(plugin(json!({}))).unwrap();
    let unchecked = Some(cert(CertIdentity::Unchecked, ABC_HEX));
    assert_eq!(
        certificate_only(plain.mtls.as_ref(), unchecked.as_ref(), &no_claims).map(|w| w.identity),
        None
    );
    assert_eq!(outcome(&plain, &request("/x", unchecked.clone()), Some(&token)), (None, true));
    assert_eq!(forwarded_identity(plain.mtls.as_ref(), unchecked.as_ref()), None);
    let t = trusted(WORKLOAD);
    assert_eq!(forwarded_identity(cfg.mtls.as_ref(), Some(&t)), Some((DEFAULT_IDENTITY_HEADER, WORKLOAD)));
    assert_eq!(forwarded_identity(cfg.mtls.as_ref(), None), None);
}

#[test]
fn check_verified_uses_the_token_issuer_policy() {
    let mut v = plugin(json!({"mtls": {"trust_domains": ["prod.example"]}}));
    v["issuers"][0]["bind_subject_to_certificate"] = json!(true);
    let cfg = config(v).unwrap();
    let verified = |sub: &str| crate::verify::Verified {
        issuer: 0,
        subject: sub.into(),
        identity: sub.into(),
        kid: None,
        key: [0; 32],
        alg: crate::crypto::alg::Alg::Es256,
        expires_at: 0,
        claims: Map::new(),
    };
    let t = trusted(WORKLOAD);
    assert!(check_verified(&cfg.issuers, &verified(WORKLOAD), Some(&t)).is_ok());
    let err = check_verified(&cfg.issuers, &verified("ci-bot"), Some(&t)).unwrap_err();
    assert_eq!((err.reason, err.issuer), (Reason::SubjectMismatch, Some(0)));
}
