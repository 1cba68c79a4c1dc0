//! Claim paths: how a configured name or dotted path finds a value in a verified
//! claim set, and which paths the configuration may use.

use serde_json::{Map, Value};

/// Greatest number of dots in a claim path: bounds the work of resolving it.
pub const MAX_CLAIM_PATH_DOTS: usize = 8;

/// Longest claim path (name or dotted path) in the configuration.
pub const MAX_CLAIM_PATH_LEN: usize = 128;

/// Whether `path` may name a claim: non-empty dotted parts, bounded length and depth.
pub fn valid_claim_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= MAX_CLAIM_PATH_LEN
        && path.split('.').all(|part| !part.is_empty())
        && path.matches('.').count() <= MAX_CLAIM_PATH_DOTS
}

/// Resolves a claim path. The literal key wins (`{"kubernetes.io.namespace": …}`);
/// otherwise the path is split at a dot into a key naming a nested object and the
/// rest, trying shorter leading keys first, so `kubernetes.io.namespace` also finds
/// `{"kubernetes.io": {"namespace": …}}` — keys may themselves contain dots.
pub fn claim<'v>(claims: &'v Map<String, Value>, path: &str) -> Option<&'v Value> {
    lookup(claims, path, MAX_CLAIM_PATH_DOTS)
}

fn lookup<'v>(object: &'v Map<String, Value>, path: &str, depth: usize) -> Option<&'v Value> {
    if let Some(value) = object.get(path) {
        return Some(value);
    }
    if depth == 0 {
        return None;
    }
    path.match_indices('.').find_map(|(dot, _)| {
        let head = path.get(..dot)?;
        let rest = path.get(dot + 1..)?;
        match object.get(head) {
            Some(Value::Object(inner)) => lookup(inner, rest, depth - 1),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("claims must be an object"),
        }
    }

    #[test]
    fn nested_claim_paths() {
        let c = claims(json!({
            "kubernetes.io": {"namespace": "a", "serviceaccount": {"name": "svc"}},
            "a.b": "literal",
            "a": {"b": "nested"},
            "x": {"y.z": {"w": 1}},
            "deep": {"1": {"2": {"3": {"4": {"5": {"6": {"7": {"8": {"9": "too deep"}}}}}}}}}
        }));
        assert_eq!(claim(&c, "kubernetes.io.serviceaccount.name"), Some(&json!("svc")));
        assert_eq!(claim(&c, "a.b"), Some(&json!("literal")), "the literal key wins");
        assert_eq!(claim(&c, "x.y.z.w"), Some(&json!(1)));
        assert_eq!(claim(&c, "kubernetes.io.missing"), None);
        assert_eq!(claim(&c, "a.b.c"), None);
        assert_eq!(claim(&c, "deep.1.2.3.4.5.6.7.8"), Some(&json!({"9": "too deep"})));
        assert_eq!(claim(&c, "deep.1.2.3.4.5.6.7.8.9"), None, "more than 8 dots is never resolved");
    }
}
