//! What a plugin configuration asks of the cluster: the issuers' audiences, JWKS
//! locations and Kubernetes allowlists, and the routes' allow rules.
//!
//! Read from the configuration's JSON once the filter's own validation accepted it
//! (`Config::from_json`), leniently where the lifecycle issue extends it:
//! `service_accounts` entries may be objects `{name, uid}` (UID pinning) and a
//! `kubernetes` profile may carry `liveness` (TokenReview). Both are read when
//! present; nothing else is interpreted here.

use serde_json::Value;

/// One issuer, as the cluster checks see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssuerView {
    pub index: usize,
    pub name: String,
    pub iss: String,
    pub audiences: Vec<String>,
    /// `generic`, `kubernetes`, `spiffe`, `github_actions`.
    pub profile: String,
    /// `profile.namespaces` (kubernetes).
    pub namespaces: Vec<String>,
    /// `profile.service_accounts`: `NS/NAME` (or a prefix ending in `*`) and the pinned UID.
    pub service_accounts: Vec<(String, Option<String>)>,
    pub max_lifetime_seconds: Option<u64>,
    /// `profile.liveness` is configured (TokenReview).
    pub liveness: bool,
    /// `jwks.cluster` and `jwks.authority`, for fetched keys.
    pub jwks: Option<(String, String)>,
}

/// An `allow` rule of a route.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowView {
    /// `routes[i].allow[j]`.
    pub at: String,
    pub identity: Option<String>,
    pub namespace: Option<String>,
    pub issuer: Option<String>,
}

/// The parts of one plugin configuration the cluster checks read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginView {
    pub issuers: Vec<IssuerView>,
    pub allow: Vec<AllowView>,
}

impl PluginView {
    pub fn read(plugin: &Value) -> PluginView {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
        let strings = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default()
        };
        let issuers = plugin
            .get("issuers")
            .and_then(Value::as_array)
            .map(|issuers| {
                issuers
                    .iter()
                    .enumerate()
                    .map(|(index, issuer)| {
                        let profile = issuer.get("profile");
                        let service_accounts = profile
                            .and_then(|p| p.get("service_accounts"))
                            .and_then(Value::as_array)
                            .map(|entries| {
                                entries
                                    .iter()
                                    .filter_map(|e| match e {
                                        Value::String(name) => Some((name.clone(), None)),
                                        Value::Object(o) => Some((text(o.get("name"))?, text(o.get("uid")))),
                                        _ => None,
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        let jwks = issuer.get("jwks").filter(|j| j.get("inline").is_none());
                        IssuerView {
                            index,
                            name: text(issuer.get("name")).unwrap_or_default(),
                            iss: text(issuer.get("issuer")).unwrap_or_default(),
                            audiences: strings(issuer.get("audiences")),
                            profile: text(profile.and_then(|p| p.get("type")))
                                .unwrap_or_else(|| "generic".into()),
                            namespaces: strings(profile.and_then(|p| p.get("namespaces"))),
                            service_accounts,
                            max_lifetime_seconds: profile
                                .and_then(|p| p.get("max_token_lifetime_seconds"))
                                .and_then(Value::as_u64),
                            liveness: profile.and_then(|p| p.get("liveness")).is_some_and(|l| !l.is_null()),
                            jwks: jwks
                                .and_then(|j| Some((text(j.get("cluster"))?, text(j.get("authority"))?))),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut allow = Vec::new();
        for (i, route) in plugin.get("routes").and_then(Value::as_array).into_iter().flatten().enumerate() {
            for (j, rule) in route.get("allow").and_then(Value::as_array).into_iter().flatten().enumerate() {
                allow.push(AllowView {
                    at: format!("routes[{i}].allow[{j}]"),
                    identity: text(rule.get("identity")),
                    namespace: text(rule.get("namespace")),
                    issuer: text(rule.get("issuer")),
                });
            }
        }
        PluginView { issuers, allow }
    }

    pub fn kubernetes_issuers(&self) -> impl Iterator<Item = &IssuerView> {
        self.issuers.iter().filter(|i| i.profile == "kubernetes")
    }
}

/// A `*`-suffixed prefix or an exact value, as every nhi-guard allowlist reads it.
pub fn pattern_matches(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_issuers_allowlists_and_allow_rules_with_the_lifecycle_forms() {
        let view = PluginView::read(&json!({
            "issuers": [{
                "name": "k8s", "issuer": "https://k8s", "audiences": ["gw"],
                "jwks": {"cluster": "outbound|443||kubernetes.default.svc.cluster.local",
                         "authority": "kubernetes.default.svc.cluster.local", "path": "/openid/v1/jwks"},
                "profile": {"type": "kubernetes", "namespaces": ["ci"],
                            "service_accounts": ["ci/a", {"name": "ci/b", "uid": "u-1"}],
                            "liveness": {"cluster": "kube_api"}}
            }, {"name": "inline", "issuer": "https://i", "audiences": ["gw"], "jwks": {"inline": {"keys": []}}}],
            "routes": [{"name": "r", "match": {"prefix": "/"}, "allow": [{"identity": "ci/a"}, {"namespace": "ops"}]}]
        }));
        let k8s = &view.issuers[0];
        assert_eq!(k8s.service_accounts, [("ci/a".into(), None), ("ci/b".into(), Some("u-1".into()))]);
        assert!(k8s.liveness);
        assert_eq!(k8s.jwks.as_ref().unwrap().1, "kubernetes.default.svc.cluster.local");
        assert_eq!(view.issuers[1].jwks, None);
        assert_eq!(view.issuers[1].profile, "generic");
        assert_eq!(view.allow[1].at, "routes[0].allow[1]");
        assert_eq!(view.allow[1].namespace.as_deref(), Some("ops"));
        assert!(pattern_matches("ci/*", "ci/x") && !pattern_matches("ci/a", "ci/ab"));
    }
}
