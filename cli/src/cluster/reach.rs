//! Who can reach a machine backend's pods without going through the gateway.
//!
//! The identity headers nhi-guard forwards are only as trustworthy as the path to
//! the backend: a pod that reaches the backend directly sends any `x-nhi-identity`
//! it likes. A backend pod is protected when either
//!
//! - **NetworkPolicy**: at least one policy of its namespace selects it for ingress,
//!   and every `from` peer of those policies admits only the gateway's pods or pods
//!   of the backend's own namespace (no `ipBlock`, no rule without `from`, no other
//!   namespace, no other pod of the gateway's namespace); or
//! - **Istio**: the ALLOW AuthorizationPolicies that apply to it (its namespace's,
//!   or the root namespace's mesh-wide ones) admit only the gateway's principal (or
//!   principals of its own namespace), rule by rule. PeerAuthentication should then
//!   be `STRICT`: without mTLS a request carries no principal at all.
//!
//! Peers are judged by their selectors, not by the pods the dump happens to hold: a
//! pod that would match is one `kubectl label` away, and a manifest holds no pods at
//! all. A peer that reaches beyond the backend's namespace is safe only when its
//! `namespaceSelector` pins the gateway's namespace ([`namespace_scope`]) and its
//! `podSelector` requires the gateway's labels. The pods the dump holds add evidence
//! (`admits pod istio-system/istiod-…`). The backend's own pods come from the dump;
//! a Service whose pods are not in it is judged by a pod with its selector's labels.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::objects::{Cluster, WorkloadSelector};

/// Istio's root namespace, where mesh-wide policies live.
pub const ISTIO_ROOT_NAMESPACE: &str = "istio-system";

/// The gateway's pods: where they run, their labels and their identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    /// How it was found, for the report.
    pub found_by: String,
}

impl Gateway {
    /// Istio's principal for the gateway's service account.
    pub fn principal(&self, trust_domain: &str) -> String {
        format!("{trust_domain}/ns/{}/sa/{}", self.namespace, self.service_account)
    }
}

/// A pod as the reachability checks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// Whether `selector` selects `labels` (an absent or empty selector selects all).
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector.match_labels.iter().flatten().all(|(key, value)| labels.get(key) == Some(value));
    let by_expressions = selector.match_expressions.iter().flatten().all(|req| {
        let values = req.values.as_deref().unwrap_or_default();
        let value = labels.get(&req.key);
        match req.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    by_labels && by_expressions
}

fn workload_selects(selector: Option<&WorkloadSelector>, labels: &BTreeMap<String, String>) -> bool {
    selector.is_none_or(|s| s.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// Every pod of the dump.
pub fn pods(cluster: &Cluster) -> Vec<PodView> {
    cluster
        .pods
        .iter()
        .map(|pod| PodView {
            namespace: pod.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
            name: pod.metadata.name.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
        })
        .collect()
}

/// What protects a backend pod, or why nothing does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protection {
    NetworkPolicy,
    /// Istio admits only the gateway; `strict`: PeerAuthentication is STRICT.
    Istio {
        strict: bool,
    },
    /// Reachable without the gateway; each string says by whom.
    Open(Vec<String>),
    /// Protected so well that the gateway itself cannot reach it.
    GatewayShutOut {
        why: String,
        by: Layer,
    },
}

/// Which policy does the protecting (or the shutting out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    NetworkPolicy,
    Istio,
}

/// Judges one backend pod. A request through the gateway must pass both layers:
/// either one shutting the gateway out is a finding, whatever the other admits.
pub fn protection(cluster: &Cluster, pod: &PodView, gateway: &Gateway, trust_domain: &str) -> Protection {
    let network = network_policy(cluster, pod, gateway);
    let istio = istio(cluster, pod, gateway, trust_domain);
    match (network, istio) {
        (Err(NetOpen::GatewayShutOut(why)), _) => {
            Protection::GatewayShutOut { why, by: Layer::NetworkPolicy }
        }
        (_, Err(IstioOpen::GatewayShutOut(why))) => Protection::GatewayShutOut { why, by: Layer::Istio },
        (Ok(()), _) => Protection::NetworkPolicy,
        (_, Ok(strict)) => Protection::Istio { strict },
        (Err(NetOpen::Open(mut why)), Err(IstioOpen::Open(istio_why))) => {
            why.push(istio_why);
            Protection::Open(why)
        }
    }
}

enum NetOpen {
    Open(Vec<String>),
    GatewayShutOut(String),
}

enum IstioOpen {
    /// No ALLOW policy applies, or one admits someone else than the gateway.
    Open(String),
    /// The ALLOW policies that apply admit nobody who is the gateway.
    GatewayShutOut(String),
}

fn network_policy(cluster: &Cluster, pod: &PodView, gateway: &Gateway) -> Result<(), NetOpen> {
    let policies: Vec<_> = cluster
        .network_policies
        .iter()
        .filter(|p| p.metadata.namespace.as_deref().unwrap_or("default") == pod.namespace)
        .filter_map(|p| Some((p.metadata.name.clone().unwrap_or_default(), p.spec.as_ref()?)))
        .filter(|(_, spec)| selects(&spec.pod_selector.clone().unwrap_or_default(), &pod.labels))
        .filter(|(_, spec)| {
            spec.policy_types.as_ref().is_none_or(|types| types.iter().any(|t| t == "Ingress"))
        })
        .collect();
    if policies.is_empty() {
        return Err(NetOpen::Open(vec![format!(
            "no NetworkPolicy of namespace {} selects it for ingress",
            pod.namespace
        )]));
    }
    let all_pods = pods(cluster);
    let mut open = Vec::new();
    let mut gateway_admitted = false;
    for (name, spec) in &policies {
        for (i, rule) in spec.ingress.iter().flatten().enumerate() {
            let Some(peers) = rule.from.as_ref().filter(|p| !p.is_empty()) else {
                open.push(format!(
                    "NetworkPolicy {}/{name}: ingress[{i}] has no `from`: every source",
                    pod.namespace
                ));
                continue;
            };
            for (j, peer) in peers.iter().enumerate() {
                let at = format!("NetworkPolicy {}/{name}: ingress[{i}].from[{j}]", pod.namespace);
                if peer.ip_block.is_some() {
                    open.push(format!("{at}: an ipBlock admits addresses, not the gateway's pods"));
                    continue;
                }
                gateway_admitted |=
                    peer_selects(cluster, peer, &pod.namespace, &gateway.namespace, &gateway.labels);
                open.extend(
                    peer_reach(cluster, peer, &pod.namespace, gateway).map(|why| format!("{at}: {why}")),
                );
                for other in &all_pods {
                    let gateway_pod = other.namespace == gateway.namespace
                        && gateway.labels.iter().all(|(k, v)| other.labels.get(k) == Some(v));
                    if !gateway_pod
                        && other.namespace != pod.namespace
                        && peer_selects(cluster, peer, &pod.namespace, &other.namespace, &other.labels)
                    {
                        open.push(format!("{at}: admits pod {}/{}", other.namespace, other.name));
                    }
                }
            }
        }
    }
    open.sort();
    open.dedup();
    if !open.is_empty() {
        return Err(NetOpen::Open(open));
    }
    if !gateway_admitted {
        let names: Vec<String> = policies.iter().map(|(n, _)| format!("{}/{n}", pod.namespace)).collect();
        return Err(NetOpen::GatewayShutOut(format!(
            "NetworkPolicy {} admits no pod of the gateway ({} in {})",
            names.join(", "),
            labels_text(&gateway.labels),
            gateway.namespace
        )));
    }
    Ok(())
}

/// The namespaces a peer's `namespaceSelector` can select.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceScope {
    /// These namespaces and no other.
    Only(BTreeSet<String>),
    /// More than the input can name; the string says why.
    Open(String),
}

/// Which namespaces `selector` selects, judged so that a namespace created (or
/// labelled) tomorrow cannot widen it: pinned by name (`kubernetes.io/metadata.name`,
/// which the API server sets and nobody can change), or by labels that the input's
/// Namespace objects carry — only if the selector requires some label (`matchLabels`
/// or `In`); `NotIn`/`DoesNotExist` alone select every namespace but a few.
pub fn namespace_scope(cluster: &Cluster, selector: &LabelSelector) -> NamespaceScope {
    const NAME: &str = "kubernetes.io/metadata.name";
    let by_name = selector.match_labels.as_ref().and_then(|m| m.get(NAME));
    if let Some(name) = by_name {
        return NamespaceScope::Only(BTreeSet::from([name.clone()]));
    }
    let expressions = selector.match_expressions.as_deref().unwrap_or_default();
    if let Some(names) = expressions.iter().find(|e| e.key == NAME && e.operator == "In") {
        return NamespaceScope::Only(names.values.iter().flatten().cloned().collect());
    }
    let requires = selector.match_labels.as_ref().is_some_and(|m| !m.is_empty())
        || expressions.iter().any(|e| e.operator == "In");
    if !requires {
        let text = if empty(selector) {
            "namespaceSelector {} selects every namespace".to_owned()
        } else {
            "namespaceSelector requires no label (only NotIn/Exists/DoesNotExist): it selects namespaces \
             created later too"
                .to_owned()
        };
        return NamespaceScope::Open(text);
    }
    if !cluster.has("Namespace") {
        return NamespaceScope::Open(
            "namespaceSelector selects by labels, and no Namespace was given to tell which namespaces carry them"
                .into(),
        );
    }
    NamespaceScope::Only(
        cluster
            .namespaces
            .iter()
            .filter_map(|n| n.metadata.name.as_deref())
            .filter(|name| cluster.namespace_labels(name).is_some_and(|labels| selects(selector, &labels)))
            .map(str::to_owned)
            .collect(),
    )
}

/// Whether `selector` requires a label (so that it does not select every pod but
/// a few), and the gateway's pods carry what it requires.
fn requires_gateway_labels(selector: Option<&LabelSelector>, gateway: &Gateway) -> bool {
    selector.is_some_and(|s| {
        let requires = s.match_labels.as_ref().is_some_and(|m| !m.is_empty())
            || s.match_expressions.iter().flatten().any(|e| e.operator == "In");
        requires && selects(s, &gateway.labels)
    })
}

/// Who beyond the backend's namespace and the gateway's pods a peer admits, judged
/// from its selectors. A peer without `namespaceSelector` stays in the policy's own
/// namespace (allowed: see the module docs). A `podSelector` that admits none of the
/// gateway's pods (a wrong label) is left to the gateway-shut-out check and to the
/// pods of the dump: naming no gateway pod, it is not a path *around* the gateway.
fn peer_reach(
    cluster: &Cluster,
    peer: &NetworkPolicyPeer,
    policy_ns: &str,
    gateway: &Gateway,
) -> Option<String> {
    let selector = peer.namespace_selector.as_ref()?;
    let pods = peer.pod_selector.as_ref();
    let admits_gateway_pods = pods.is_none_or(|s| selects(s, &gateway.labels));
    let names = match namespace_scope(cluster, selector) {
        NamespaceScope::Open(why) => {
            let pods_text = match pods.filter(|s| !empty(s)) {
                Some(s) => format!("a pod labelled {} there", selector_text(s)),
                None => "every pod there".to_owned(),
            };
            return Some(format!("{why}: {pods_text} reaches the backend without the gateway"));
        }
        NamespaceScope::Only(names) => names,
    };
    let others: Vec<&str> =
        names.iter().map(String::as_str).filter(|n| *n != policy_ns && *n != gateway.namespace).collect();
    if !others.is_empty() {
        return Some(format!("admits pods of namespace {}", others.join(", ")));
    }
    let in_gateway_namespace = names.contains(&gateway.namespace) && gateway.namespace != policy_ns;
    if in_gateway_namespace && admits_gateway_pods && !requires_gateway_labels(pods, gateway) {
        return Some(match pods.filter(|s| !empty(s)) {
            None => format!(
                "admits every pod of namespace {}, not only the gateway's ({})",
                gateway.namespace,
                labels_text(&gateway.labels)
            ),
            Some(s) => format!(
                "podSelector {} requires none of the gateway's labels ({}): it admits other pods of namespace {}",
                selector_text(s),
                labels_text(&gateway.labels),
                gateway.namespace
            ),
        });
    }
    None
}

/// A selector that selects everything (`{}`, or members without entries).
fn empty(selector: &LabelSelector) -> bool {
    selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector.match_expressions.as_ref().is_none_or(|e| e.is_empty())
}

fn selector_text(selector: &LabelSelector) -> String {
    let mut parts: Vec<String> =
        selector.match_labels.iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
    for e in selector.match_expressions.iter().flatten() {
        parts.push(format!(
            "{} {} ({})",
            e.key,
            e.operator,
            e.values.as_deref().unwrap_or_default().join(",")
        ));
    }
    parts.join(",")
}

fn namespace_selected(cluster: &Cluster, peer: &NetworkPolicyPeer, policy_ns: &str, ns: &str) -> bool {
    match &peer.namespace_selector {
        None => ns == policy_ns,
        Some(selector) => {
            let mut labels = cluster.namespace_labels(ns).unwrap_or_default();
            labels.insert("kubernetes.io/metadata.name".into(), ns.to_owned());
            selects(selector, &labels)
        }
    }
}

fn peer_selects(
    cluster: &Cluster,
    peer: &NetworkPolicyPeer,
    policy_ns: &str,
    ns: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    namespace_selected(cluster, peer, policy_ns, ns)
        && peer.pod_selector.as_ref().is_none_or(|selector| selects(selector, labels))
}

/// `Ok(strict)`: Istio admits only the gateway (and own-namespace principals).
fn istio(cluster: &Cluster, pod: &PodView, gateway: &Gateway, trust_domain: &str) -> Result<bool, IstioOpen> {
    let applies = |namespace: Option<&str>, selector: Option<&WorkloadSelector>| {
        let ns = namespace.unwrap_or("default");
        (ns == pod.namespace && workload_selects(selector, &pod.labels))
            || (ns == ISTIO_ROOT_NAMESPACE && selector.is_none())
    };
    let allow: Vec<_> = cluster
        .authorization_policies
        .iter()
        .filter(|p| p.spec.action.as_deref().unwrap_or("ALLOW") == "ALLOW")
        .filter(|p| applies(p.metadata.namespace.as_deref(), p.spec.selector.as_ref()))
        .collect();
    if allow.is_empty() {
        return Err(IstioOpen::Open(
            "no Istio AuthorizationPolicy restricts it to the gateway's principal".into(),
        ));
    }
    let gateway_principal = gateway.principal(trust_domain);
    let own = format!("{trust_domain}/ns/{}/sa/", pod.namespace);
    let mut admits_gateway = false;
    let mut without_rules = Vec::new();
    for policy in &allow {
        let name = format!(
            "AuthorizationPolicy {}/{}",
            policy.metadata.namespace.as_deref().unwrap_or("default"),
            policy.metadata.name
        );
        let rules = policy.spec.rules.as_deref().unwrap_or_default();
        if rules.is_empty() {
            // An ALLOW policy matches a request only through a rule: without any, it
            // admits nothing (Istio's way to write "deny all").
            without_rules.push(name.clone());
        }
        for (i, rule) in rules.iter().enumerate() {
            let Some(from) = rule.from.as_ref().filter(|f| !f.is_empty()) else {
                return Err(IstioOpen::Open(format!("{name}: rules[{i}] has no `from`: every source")));
            };
            for source in from.iter().map(|f| &f.source) {
                let principals = source.principals.as_deref().unwrap_or_default();
                if principals.is_empty() {
                    return Err(IstioOpen::Open(format!(
                        "{name}: rules[{i}] admits sources by something else than principals"
                    )));
                }
                for principal in principals {
                    if principal == &gateway_principal {
                        admits_gateway = true;
                    } else if !principal.starts_with(&own) || principal.contains('*') {
                        return Err(IstioOpen::Open(format!(
                            "{name}: rules[{i}] admits principal {principal}"
                        )));
                    }
                }
            }
        }
    }
    if !admits_gateway {
        // Every rule admits only the backend's own namespace (or there is no rule):
        // the backend is closed, to the gateway too.
        let why = if without_rules.len() == allow.len() {
            let s = if without_rules.len() == 1 {
                "has no rules: it admits"
            } else {
                "have no rules: they admit"
            };
            format!(
                "{} {s} nobody, the gateway's principal {gateway_principal} included",
                without_rules.join(", ")
            )
        } else {
            format!("no AuthorizationPolicy admits the gateway's principal {gateway_principal}")
        };
        return Err(IstioOpen::GatewayShutOut(why));
    }
    Ok(strict(cluster, pod))
}

/// The effective PeerAuthentication mode of a pod: workload, namespace, then mesh.
fn strict(cluster: &Cluster, pod: &PodView) -> bool {
    let mode = |ns: &str, workload: bool| {
        cluster
            .peer_authentications
            .iter()
            .filter(|p| p.metadata.namespace.as_deref().unwrap_or("default") == ns)
            .filter(|p| match (&p.spec.selector, workload) {
                (Some(selector), true) => workload_selects(Some(selector), &pod.labels),
                (None, false) => true,
                _ => false,
            })
            .find_map(|p| p.spec.mtls.as_ref()?.mode.clone())
            .filter(|m| m != "UNSET")
    };
    let effective = mode(&pod.namespace, true)
        .or_else(|| mode(&pod.namespace, false))
        .or_else(|| mode(ISTIO_ROOT_NAMESPACE, false));
    effective.as_deref() == Some("STRICT")
}

pub fn labels_text(labels: &BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}
