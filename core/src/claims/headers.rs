//! `claims_to_headers`: verified claims forwarded upstream as request headers.
//!
//! A claim is forwarded only from a token that passed every check, and the headers
//! are removed from every request first (whichever issuer, token or none), so an
//! upstream can trust them exactly as it trusts the identity header.
//!
//! Values are rendered as follows: a string as is; a number or boolean as its JSON
//! text; an array of those joined with `,` (no spaces). Anything else — a missing
//! claim, `null`, an object, an array holding one, an empty array, a value with a
//! control character, or a rendering longer than [`MAX_VALUE_BYTES`] — is not
//! forwarded at all: the header is absent rather than misleading.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::path::claim;

/// Most headers one issuer may map claims to.
pub const MAX_CLAIM_HEADERS: usize = 16;
/// Longest header value forwarded (after joining an array).
pub const MAX_VALUE_BYTES: usize = 1024;
/// `"claims_to_headers": {"<claim or dotted path>": "<header name>"}`.
pub type RawClaimsToHeaders = BTreeMap<String, String>;

/// One claim forwarded as one header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHeader {
    /// A claim name or dotted path (see [`super::path::claim`]).
    pub claim: String,
    /// Lower-case header name.
    pub header: String,
}

/// The header value for a claim value, or `None` when it is not forwarded.
pub fn render(value: &Value) -> Option<String> {
    let rendered = match value {
        Value::Array(items) if !items.is_empty() => {
            let parts: Option<Vec<String>> = items.iter().map(scalar).collect();
            parts?.join(",")
        }
        other => scalar(other)?,
    };
    let clean = !rendered.is_empty()
        && rendered.len() <= MAX_VALUE_BYTES
        && !rendered.chars().any(|c| c.is_control());
    clean.then_some(rendered)
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The headers to set for a verified token's `claims`, in configuration order.
pub fn headers<'r>(rules: &'r [ClaimHeader], claims: &Map<String, Value>) -> Vec<(&'r str, String)> {
    rules
        .iter()
        .filter_map(|rule| claim(claims, &rule.claim).and_then(render).map(|v| (rule.header.as_str(), v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::claims::path::{valid_claim_path, MAX_CLAIM_PATH_LEN};

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn renders_scalars_and_joins_arrays() {
        assert_eq!(render(&json!("ci")).as_deref(), Some("ci"));
        assert_eq!(render(&json!(42)).as_deref(), Some("42"));
        assert_eq!(render(&json!(true)).as_deref(), Some("true"));
        assert_eq!(render(&json!(["a", "b", 3])).as_deref(), Some("a,b,3"));
    }

    #[test]
    fn odd_values_are_not_forwarded() {
        for value in [
            json!(null),
            json!({"a": 1}),
            json!([]),
            json!(["a", {"b": 1}]),
            json!(["a", null]),
            json!(""),
            json!("line\r\nx-injected: 1"),
            json!("tab\there"),
            json!("x".repeat(MAX_VALUE_BYTES + 1)),
            json!(vec!["x".repeat(600), "y".repeat(600)]),
        ] {
            assert_eq!(render(&value), None, "{value}");
        }
        assert!(render(&json!("x".repeat(MAX_VALUE_BYTES))).is_some());
    }

    #[test]
    fn nested_claims_and_configuration_order() {
        let rules = vec![
            ClaimHeader { claim: "kubernetes.io.pod.name".into(), header: "x-pod".into() },
            ClaimHeader { claim: "groups".into(), header: "x-groups".into() },
            ClaimHeader { claim: "absent".into(), header: "x-absent".into() },
        ];
        let c = claims(json!({
            "kubernetes.io": {"namespace": "ci", "pod": {"name": "runner-7f9c"}},
            "groups": ["deployers", "readers"],
        }));
        assert_eq!(
            headers(&rules, &c),
            vec![("x-pod", "runner-7f9c".to_owned()), ("x-groups", "deployers,readers".to_owned())]
        );
    }

    fn plugin(issuer_extra: Value, top: Value) -> Result<crate::config::Config, crate::config::ConfigError> {
        let mut issuer = json!({"name": "p", "issuer": "https://issuer.example", "audiences": ["gw"],
                                "jwks": {"cluster": "c", "authority": "a", "path": "/keys"}});
        for (k, v) in issuer_extra.as_object().unwrap() {
            issuer[k] = v.clone();
        }
        let mut cfg = json!({"issuers": [issuer]});
        for (k, v) in top.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        crate::config::Config::from_json(cfg.to_string().as_bytes())
    }

    fn field(issuer_extra: Value, top: Value) -> String {
        match plugin(issuer_extra, top) {
            Err(crate::config::ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn configuration() {
        let cfg = plugin(
            json!({"claims_to_headers": {"kubernetes.io.pod.name": "x-nhi-pod", "groups": "x-nhi-groups"}}),
            json!({}),
        )
        .unwrap();
        let rules = &cfg.issuers[0].claims_to_headers;
        assert_eq!(rules.len(), 2);
        assert!(rules.contains(&ClaimHeader { claim: "groups".into(), header: "x-nhi-groups".into() }));

        let map = |m: Value| json!({ "claims_to_headers": m });
        assert_eq!(field(map(json!({"a..b": "x-a"})), json!({})), "issuers[0].claims_to_headers.a..b");
        assert_eq!(field(map(json!({"a": "X-A"})), json!({})), "issuers[0].claims_to_headers.a");
        assert_eq!(field(map(json!({"a": "host"})), json!({})), "issuers[0].claims_to_headers.a");
        assert_eq!(field(map(json!({"a": "cookie"})), json!({})), "issuers[0].claims_to_headers.a");
        assert_eq!(
            field(map(json!({"a": "x-envoy-original-path"})), json!({})),
            "issuers[0].claims_to_headers.a"
        );
        assert_eq!(field(map(json!({"a": "x-h", "b": "x-h"})), json!({})), "issuers[0].claims_to_headers.b");
        let many: serde_json::Map<String, Value> =
            (0..=MAX_CLAIM_HEADERS).map(|i| (format!("c{i}"), json!(format!("x-c{i}")))).collect();
        assert_eq!(field(map(Value::Object(many)), json!({})), "issuers[0].claims_to_headers");
        // Headers the filter sets or reads itself.
        for (header, top) in [
            ("x-nhi-identity", json!({})),
            ("x-nhi-issuer", json!({})),
            ("authorization", json!({})),
            ("x-token", json!({"token": {"header": "x-token"}})),
            ("x-nhi-client", json!({})),
            ("x-class", json!({"client_header": "x-class"})),
            ("x-nhi-shadow-decision", json!({})),
        ] {
            assert_eq!(
                field(map(json!({ "sub": header })), top),
                "issuers[0].claims_to_headers.sub",
                "{header}"
            );
        }
    }

    #[test]
    fn every_issuers_claim_headers_once() {
        let second = json!({"name": "q", "issuer": "https://q.example", "audiences": ["gw"],
                            "jwks": {"cluster": "c", "authority": "a", "path": "/q"},
                            "claims_to_headers": {"tenant": "x-tenant", "env": "x-env"}});
        let cfg = crate::config::Config::from_json(
            json!({"issuers": [
                {"name": "p", "issuer": "https://p.example", "audiences": ["gw"],
                 "jwks": {"cluster": "c", "authority": "a", "path": "/p"},
                 "claims_to_headers": {"org": "x-tenant"}},
                second
            ]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(cfg.claim_headers(), ["x-tenant", "x-env"]);
    }

    #[test]
    fn claim_paths() {
        assert!(valid_claim_path("sub"));
        assert!(valid_claim_path("kubernetes.io.serviceaccount.name"));
        for bad in ["", ".a", "a.", "a..b", &"a".repeat(MAX_CLAIM_PATH_LEN + 1), "a.b.c.d.e.f.g.h.i.j"] {
            assert!(!valid_claim_path(bad), "{bad:?}");
        }
    }
}
