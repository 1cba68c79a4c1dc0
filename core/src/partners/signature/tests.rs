//! RFC 9421 appendix B: the spec's own request, keys, signature bases and
//! signatures. B.2.1–B.2.3 are RSA-PSS, which partners cannot use, so only their
//! signature bases are compared; B.2.5 (hmac-sha256) and B.2.6 (ed25519) are
//! verified with the spec's keys.

use super::*;
use crate::host::header_map::HeaderMap;

/// `test-request` of RFC 9421 appendix B.2.
fn test_request_headers() -> HeaderMap {
    HeaderMap::from_pairs([
        ("host", "example.com"),
        ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
        ("content-type", "application/json"),
        (
            "content-digest",
            "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:",
        ),
        ("content-length", "18"),
    ])
}

fn request(headers: &HeaderMap) -> SignedRequest<'_> {
    SignedRequest {
        method: b"POST",
        scheme: Some(b"https"),
        authority: headers.get("host"),
        path: b"/foo?param=Value&Pet=dog",
        headers,
    }
}

fn only(signature_input: &str, signature: &str) -> Candidate {
    let mut candidates = parse(signature_input.as_bytes(), signature.as_bytes()).unwrap();
    assert_eq!(candidates.len(), 1);
    candidates.remove(0)
}

/// B.1.5 `test-shared-secret`.
const SHARED_SECRET: &str =
    "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==";
/// B.1.4 `test-key-ed25519`, the public key's `x` (base64url).
const ED25519_X: &str = "JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs";

fn shared_secret() -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(SHARED_SECRET).unwrap()
}

fn ed25519_key() -> VerifyingKey {
    use base64::Engine as _;
    let x = crate::b64::URL_SAFE_STRICT.decode(ED25519_X).unwrap();
    VerifyingKey::from_bytes(&x.try_into().unwrap()).unwrap()
}

#[test]
fn b_2_1_minimal_signature_base() {
    let headers = test_request_headers();
    let candidate = only(
        "sig-b21=();created=1618884473;keyid=\"test-key-rsa-pss\";nonce=\"b3k2pp5k7z-50gnwp.yemd\"",
        "sig-b21=:d2pmTvmbncD3xQm8E9ZV2828BjQWGgiwAaw5bAkgibUopemLJcWDy/lkbbHAve4cRAtx31Iq786U7it++wgGxbtRxf8Udx7zFZsckzXaJMkA7ChG52eSkFxykJeNqsrWH5S+oxNFlD4dzVuwe8DhTSja8xxbR/Z2cOGdCbzR72rgFWhzx2VjBqJzsPLMIQKhO4DGezXehhWwE56YCE+O6c0mKZsfxVrogUvA4HELjVKWmAvtl6UnCh8jYzuVG5WSb/QEVPnP5TmcAnLH1g+s++v6d4s8m0gCw1fV5/SITLq9mhho8K3+7EPYTU8IU1bLhdxO5Nyt8C8ssinQ98Xw9Q==:",
    );
    assert_eq!(
        signature_base(&request(&headers), &candidate).unwrap(),
        "\"@signature-params\": ();created=1618884473;keyid=\"test-key-rsa-pss\";nonce=\"b3k2pp5k7z-50gnwp.yemd\""
    );
    assert_eq!(candidate.params.nonce.as_deref(), Some("b3k2pp5k7z-50gnwp.yemd"));
    assert_eq!(candidate.signature.len(), 256);
}

#[test]
fn b_2_2_selective_components_signature_base() {
    let headers = test_request_headers();
    let candidate = only(
        "sig-b22=(\"@authority\" \"content-digest\" \"@query-param\";name=\"Pet\");created=1618884473;keyid=\"test-key-rsa-pss\";tag=\"header-example\"",
        "sig-b22=:LjbtqUbfmvjj5C5kr1Ugj4PmLYvx9wVjZvD9GsTT4F7GrcQEdJzgI9qHxICagShLRiLMlAJjtq6N4CDfKtjvuJyE5qH7KT8UCMkSowOB4+ECxCmT8rtAmj/0PIXxi0A0nxKyB09RNrCQibbUjsLS/2YyFYXEu4TRJQzRw1rLEuEfY17SARYhpTlaqwZVtR8NV7+4UKkjqpcAoFqWFQh62s7Cl+H2fjBSpqfZUJcsIk4N6wiKYd4je2U/lankenQ99PZfB4jY3I5rSV2DSBVkSFsURIjYErOs0tFTQosMTAoxk//0RoKUqiYY8Bh0aaUEb0rQl3/XaVe4bXTugEjHSw==:",
    );
    assert_eq!(
        signature_base(&request(&headers), &candidate).unwrap(),
        "\"@authority\": example.com\n\
         \"content-digest\": sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:\n\
         \"@query-param\";name=\"Pet\": dog\n\
         \"@signature-params\": (\"@authority\" \"content-digest\" \"@query-param\";name=\"Pet\");created=1618884473;keyid=\"test-key-rsa-pss\";tag=\"header-example\""
    );
    assert_eq!(candidate.params.tag.as_deref(), Some("header-example"));
}

#[test]
fn b_2_3_full_coverage_signature_base() {
    let headers = test_request_headers();
    let candidate = only(
        "sig-b23=(\"date\" \"@method\" \"@path\" \"@query\" \"@authority\" \"content-type\" \"content-digest\" \"content-length\");created=1618884473;keyid=\"test-key-rsa-pss\"",
        "sig-b23=:bbN8oArOxYoyylQQUU6QYwrTuaxLwjAC9fbY2F6SVWvh0yBiMIRGOnMYwZ/5MR6fb0Kh1rIRASVxFkeGt683+qRpRRU5p2voTp768ZrCUb38K0fUxN0O0iC59DzYx8DFll5GmydPxSmme9v6ULbMFkl+V5B1TP/yPViV7KsLNmvKiLJH1pFkh/aYA2HXXZzNBXmIkoQoLd7YfW91kE9o/CCoC1xMy7JA1ipwvKvfrs65ldmlu9bpG6A9BmzhuzF8Eim5f8ui9eH8LZH896+QIF61ka39VBrohr9iyMUJpvRX2Zbhl5ZJzSRxpJyoEZAFL2FUo5fTIztsDZKEgM4cUA==:",
    );
    assert_eq!(
        signature_base(&request(&headers), &candidate).unwrap(),
        "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\
         \"@method\": POST\n\
         \"@path\": /foo\n\
         \"@query\": ?param=Value&Pet=dog\n\
         \"@authority\": example.com\n\
         \"content-type\": application/json\n\
         \"content-digest\": sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:\n\
         \"content-length\": 18\n\
         \"@signature-params\": (\"date\" \"@method\" \"@path\" \"@query\" \"@authority\" \"content-type\" \"content-digest\" \"content-length\");created=1618884473;keyid=\"test-key-rsa-pss\""
    );
}

const B25_INPUT: &str =
    "sig-b25=(\"date\" \"@authority\" \"content-type\");created=1618884473;keyid=\"test-shared-secret\"";
const B25_SIGNATURE: &str = "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:";

#[test]
fn b_2_5_hmac_sha256_verifies_with_the_rfc_shared_secret() {
    let headers = test_request_headers();
    let candidate = only(B25_INPUT, B25_SIGNATURE);
    let base = signature_base(&request(&headers), &candidate).unwrap();
    assert_eq!(
        base,
        "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\
         \"@authority\": example.com\n\
         \"content-type\": application/json\n\
         \"@signature-params\": (\"date\" \"@authority\" \"content-type\");created=1618884473;keyid=\"test-shared-secret\""
    );
    assert!(verify_hmac_sha256(&shared_secret(), base.as_bytes(), &candidate.signature));
    // One bit off anywhere fails: the signature, the base, the key.
    let mut forged = candidate.signature.clone();
    forged[31] ^= 1;
    assert!(!verify_hmac_sha256(&shared_secret(), base.as_bytes(), &forged));
    assert!(!verify_hmac_sha256(
        &shared_secret(),
        base.replace("example.com", "example.org").as_bytes(),
        &candidate.signature
    ));
    let mut other_key = shared_secret();
    other_key[0] ^= 1;
    assert!(!verify_hmac_sha256(&other_key, base.as_bytes(), &candidate.signature));
    // A truncated MAC is not a MAC.
    assert!(!verify_hmac_sha256(&shared_secret(), base.as_bytes(), &candidate.signature[..16]));
}

#[test]
fn b_2_6_ed25519_verifies_with_the_rfc_key() {
    let headers = test_request_headers();
    let candidate = only(
        "sig-b26=(\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\"",
        "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:",
    );
    let base = signature_base(&request(&headers), &candidate).unwrap();
    assert_eq!(
        base,
        "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\
         \"@method\": POST\n\
         \"@path\": /foo\n\
         \"@authority\": example.com\n\
         \"content-type\": application/json\n\
         \"content-length\": 18\n\
         \"@signature-params\": (\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\""
    );
    assert!(verify_ed25519(&ed25519_key(), base.as_bytes(), &candidate.signature));
    assert!(!verify_ed25519(&ed25519_key(), base.replace("POST", "GET").as_bytes(), &candidate.signature));
    assert!(!verify_ed25519(&ed25519_key(), base.as_bytes(), &candidate.signature[..63]));
}

#[test]
fn b_4_transformations_keep_or_break_the_ed25519_signature_as_the_rfc_says() {
    // RFC 9421 appendix B.4: a GET signed with test-key-ed25519, then transformed.
    let signature_input = "transform=(\"@method\" \"@path\" \"@authority\" \"accept\");created=1618884473;keyid=\"test-key-ed25519\"";
    let signature = "transform=:ZT1kooQsEHpZ0I1IjCqtQppOmIqlJPeo7DHR3SoMn0s5JZ1eRGS0A+vyYP9t/LXlh5QMFFQ6cpLt2m0pmj3NDA==:";
    let candidate = only(signature_input, signature);
    let verifies = |method: &[u8], path: &[u8], headers: &[(&str, &str)]| {
        let map = HeaderMap::from_pairs(headers.iter().copied());
        let request =
            SignedRequest { method, scheme: Some(b"https"), authority: map.get("host"), path, headers: &map };
        let base = signature_base(&request, &candidate).unwrap();
        verify_ed25519(&ed25519_key(), base.as_bytes(), &candidate.signature)
    };
    let original = [
        ("host", "example.org"),
        ("date", "Fri, 15 Jul 2022 14:24:55 GMT"),
        ("accept", "application/json"),
        ("accept", "*/*"),
    ];
    assert!(verifies(b"GET", b"/demo?name1=Value1&Name2=value2", &original));
    // Uncovered query and headers added; Accept folded into one line: still valid.
    assert!(verifies(
        b"GET",
        b"/demo?name1=Value1&Name2=value2&param=added",
        &[
            ("host", "example.org"),
            ("accept", "application/json, */*"),
            ("accept-language", "en-US,en;q=0.5")
        ]
    ));
    // Method or authority changed, or the Accept lines swapped: invalid.
    assert!(!verifies(b"POST", b"/demo?name1=Value1&Name2=value2", &original));
    let mut swapped = original;
    swapped.swap(2, 3);
    assert!(!verifies(b"GET", b"/demo?name1=Value1&Name2=value2", &swapped));
    let mut host = original;
    host[0] = ("host", "example.com");
    assert!(!verifies(b"GET", b"/demo?name1=Value1&Name2=value2", &host));
}

#[test]
fn derived_components_follow_section_2_2() {
    let headers = HeaderMap::from_pairs([("host", "WWW.Example.com:443"), ("x-ows", "  padded  ")]);
    let candidate = only(
        "s=(\"@method\" \"@target-uri\" \"@authority\" \"@scheme\" \"@request-target\" \"@path\" \"@query\" \"@query-param\";name=\"baz\" \"@query-param\";name=\"qux\" \"@query-param\";name=\"a b\" \"x-ows\");keyid=\"k\"",
        "s=:AA==:",
    );
    let request = SignedRequest {
        method: b"POST",
        scheme: Some(b"HTTPS"),
        authority: headers.get("host"),
        path: b"/path?param=value&foo=bar&baz=bat%2Dman&qux=&a+b=%7Ex%20y",
        headers: &headers,
    };
    let base = signature_base(&request, &candidate).unwrap();
    let lines: Vec<&str> = base.lines().collect();
    assert_eq!(
        lines[..11],
        [
            "\"@method\": POST",
            "\"@target-uri\": https://www.example.com/path?param=value&foo=bar&baz=bat%2Dman&qux=&a+b=%7Ex%20y",
            "\"@authority\": www.example.com",
            "\"@scheme\": https",
            "\"@request-target\": /path?param=value&foo=bar&baz=bat%2Dman&qux=&a+b=%7Ex%20y",
            "\"@path\": /path",
            "\"@query\": ?param=value&foo=bar&baz=bat%2Dman&qux=&a+b=%7Ex%20y",
            "\"@query-param\";name=\"baz\": bat-man",
            "\"@query-param\";name=\"qux\": ",
            "\"@query-param\";name=\"a b\": %7Ex%20y",
            "\"x-ows\": padded",
        ]
    );
    // No query at all: `@query` is a lone `?`, `@path` of an empty path is `/`.
    let bare = SignedRequest { path: b"", scheme: None, ..request };
    let candidate = only("s=(\"@query\" \"@path\" \"@authority\");keyid=\"k\"", "s=:AA==:");
    assert_eq!(
        signature_base(&bare, &candidate).unwrap().lines().take(3).collect::<Vec<_>>(),
        ["\"@query\": ?", "\"@path\": /", "\"@authority\": www.example.com:443"]
    );
}

#[test]
fn what_cannot_be_reconstructed_is_malformed() {
    let headers = test_request_headers();
    let request = request(&headers);
    let base_of = |input: &str| {
        let candidate = only(input, &format!("{}=:AA==:", input.split('=').next().unwrap()));
        signature_base(&request, &candidate)
    };
    assert!(base_of("s=(\"x-absent\");keyid=\"k\"").is_err());
    assert!(base_of("s=(\"@query-param\";name=\"nope\");keyid=\"k\"").is_err());
    let twice = SignedRequest { path: b"/foo?a=1&a=2", ..request };
    let candidate = only("s=(\"@query-param\";name=\"a\");keyid=\"k\"", "s=:AA==:");
    assert!(signature_base(&twice, &candidate).is_err());
    let binary = HeaderMap::from_pairs([("x-bin", &b"caf\xc3\xa9"[..])]);
    let candidate = only("s=(\"x-bin\");keyid=\"k\"", "s=:AA==:");
    assert!(signature_base(&SignedRequest { headers: &binary, ..request }, &candidate).is_err());
}

#[test]
fn fields_that_do_not_describe_one_signature_are_malformed() {
    for (input, signature) in [
        ("s=(\"@method\")", "t=:AA==:"),
        ("s=(\"@method\"), t=()", "s=:AA==:"),
        ("s=(\"@method\")", "s=\"not bytes\""),
        ("s=\"@method\"", "s=:AA==:"),
        ("s=(\"@method\" \"@method\")", "s=:AA==:"),
        ("s=(\"x\";a;b \"x\";b;a)", "s=:AA==:"),
        ("s=(\"@status\")", "s=:AA==:"),
        ("s=(\"@unknown\")", "s=:AA==:"),
        ("s=(\"@method\";req)", "s=:AA==:"),
        ("s=(\"content-digest\";sf)", "s=:AA==:"),
        ("s=(\"example-dict\";key=\"a\")", "s=:AA==:"),
        ("s=(\"Content-Type\")", "s=:AA==:"),
        ("s=(@method)", "s=:AA==:"),
        ("s=();created=\"1\"", "s=:AA==:"),
        ("s=();keyid=k", "s=:AA==:"),
        ("s=();custom=1", "s=:AA==:"),
        ("", ""),
        ("s=(\"@signature-params\")", "s=:AA==:"),
    ] {
        assert!(parse(input.as_bytes(), signature.as_bytes()).is_err(), "{input:?} / {signature:?}");
    }
    let many: Vec<String> = (0..=MAX_COMPONENTS).map(|i| format!("\"x-{i}\"")).collect();
    let input = format!("s=({})", many.join(" "));
    assert!(parse(input.as_bytes(), b"s=:AA==:").is_err());
}

#[test]
fn several_signatures_are_each_described() {
    let candidates = parse(
        b"a=(\"@method\");keyid=\"k1\", b=(\"@path\");keyid=\"k2\";alg=\"ed25519\";expires=5",
        b"b=:AQ==:, a=:AA==:",
    )
    .unwrap();
    assert_eq!(candidates.iter().map(|c| c.label.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(candidates[1].params.alg.as_deref(), Some("ed25519"));
    assert_eq!(candidates[1].params.expires, Some(5));
    assert_eq!(candidates[1].signature, vec![1]);
    assert!(candidates[0].covers("@method") && !candidates[0].covers("@path"));
}
