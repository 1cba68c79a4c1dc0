//! The cluster as `kubectl get … -o json` (or a manifest) describes it: Kubernetes
//! objects read with `k8s-openapi`'s types, Istio's policies with plain serde
//! structs of the few members the checks read.
//!
//! Any YAML or JSON stream is accepted: single objects, `kind: List` (what `kubectl
//! get a,b -o json` prints) and typed lists (`PodList`, whose items carry no `kind`).
//! Objects of other kinds are counted and skipped.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Deserialize;
use serde_json::Value;

/// Every object the checks read.
#[derive(Debug, Default, Clone)]
pub struct Cluster {
    pub namespaces: Vec<Namespace>,
    pub service_accounts: Vec<ServiceAccount>,
    pub services: Vec<Service>,
    pub endpoints: Vec<Endpoints>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub pods: Vec<Pod>,
    pub network_policies: Vec<NetworkPolicy>,
    pub deployments: Vec<Deployment>,
    /// The other workloads that run pods as a service account.
    pub stateful_sets: Vec<StatefulSet>,
    pub daemon_sets: Vec<DaemonSet>,
    pub jobs: Vec<Job>,
    pub cron_jobs: Vec<CronJob>,
    pub authorization_policies: Vec<AuthorizationPolicy>,
    pub peer_authentications: Vec<PeerAuthentication>,
    pub service_entries: Vec<ServiceEntry>,
    /// The kinds seen: a check whose input is missing is skipped, and says so.
    pub kinds: BTreeSet<&'static str>,
    /// Objects of kinds no check reads.
    pub skipped: usize,
}

/// Istio `security.istio.io` AuthorizationPolicy: the members the checks read.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AuthorizationPolicy {
    #[serde(default)]
    pub metadata: Meta,
    #[serde(default)]
    pub spec: AuthorizationSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationSpec {
    pub selector: Option<WorkloadSelector>,
    /// `ALLOW` (the default), `DENY`, `AUDIT` or `CUSTOM`.
    pub action: Option<String>,
    /// `None`: an ALLOW policy without rules admits nothing.
    pub rules: Option<Vec<AuthorizationRule>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct AuthorizationRule {
    /// `None`: any source.
    pub from: Option<Vec<RuleFrom>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RuleFrom {
    #[serde(default)]
    pub source: Source,
}

/// A rule's source: every field given must hold. The checks need to know whether
/// it admits only given principals, so every field that could widen it is kept.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    pub principals: Option<Vec<String>>,
    pub not_principals: Option<Vec<String>>,
    pub request_principals: Option<Vec<String>>,
    pub namespaces: Option<Vec<String>>,
    pub ip_blocks: Option<Vec<String>>,
    pub remote_ip_blocks: Option<Vec<String>>,
}

/// Istio PeerAuthentication: the mTLS mode of a namespace or workload.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PeerAuthentication {
    #[serde(default)]
    pub metadata: Meta,
    #[serde(default)]
    pub spec: PeerAuthenticationSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PeerAuthenticationSpec {
    pub selector: Option<WorkloadSelector>,
    pub mtls: Option<Mtls>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Mtls {
    /// `STRICT`, `PERMISSIVE`, `DISABLE` or `UNSET`.
    pub mode: Option<String>,
}

/// Istio ServiceEntry: the hosts it makes known to the mesh.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServiceEntry {
    #[serde(default)]
    pub metadata: Meta,
    #[serde(default)]
    pub spec: ServiceEntrySpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServiceEntrySpec {
    #[serde(default)]
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Meta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

impl Cluster {
    /// Reads every object of a YAML or JSON stream (`name` only for messages).
    pub fn read(&mut self, name: &str, text: &str) -> Result<(), String> {
        for doc in crate::check::yaml_documents(text).map_err(|e| format!("{name}: {e}"))? {
            self.add(doc).map_err(|e| format!("{name}: {e}"))?;
        }
        Ok(())
    }

    /// Adds one object, or every item of a list.
    pub fn add(&mut self, doc: Value) -> Result<(), String> {
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
        let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_owned();
        if let Some(items) = doc.get("items").and_then(Value::as_array) {
            // `List` items name their kind; a `PodList`'s do not.
            let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty()).map(str::to_owned);
            for item in items {
                let mut item = item.clone();
                if let (Some(kind), Some(members)) = (&item_kind, item.as_object_mut()) {
                    members.entry("kind").or_insert_with(|| Value::String(kind.clone()));
                    members.entry("apiVersion").or_insert_with(|| Value::String(api_version.clone()));
                }
                self.add(item)?;
            }
            return Ok(());
        }
        let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
        let name = doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("<unnamed>").to_owned();
        let at = |e: serde_json::Error| format!("{kind} {name}: {e}");
        match (group, kind.as_str()) {
            ("", "Namespace") => self.namespaces.push(serde_json::from_value(doc).map_err(at)?),
            ("", "ServiceAccount") => self.service_accounts.push(serde_json::from_value(doc).map_err(at)?),
            ("", "Service") => self.services.push(serde_json::from_value(doc).map_err(at)?),
            ("", "Endpoints") => self.endpoints.push(serde_json::from_value(doc).map_err(at)?),
            ("", "Pod") => self.pods.push(serde_json::from_value(doc).map_err(at)?),
            ("discovery.k8s.io", "EndpointSlice") => {
                self.endpoint_slices.push(serde_json::from_value(doc).map_err(at)?)
            }
            ("networking.k8s.io", "NetworkPolicy") => {
                self.network_policies.push(serde_json::from_value(doc).map_err(at)?)
            }
            ("apps", "Deployment") => self.deployments.push(serde_json::from_value(doc).map_err(at)?),
            ("apps", "StatefulSet") => self.stateful_sets.push(serde_json::from_value(doc).map_err(at)?),
            ("apps", "DaemonSet") => self.daemon_sets.push(serde_json::from_value(doc).map_err(at)?),
            ("batch", "Job") => self.jobs.push(serde_json::from_value(doc).map_err(at)?),
            ("batch", "CronJob") => self.cron_jobs.push(serde_json::from_value(doc).map_err(at)?),
            ("security.istio.io", "AuthorizationPolicy") => {
                self.authorization_policies.push(serde_json::from_value(doc).map_err(at)?)
            }
            ("security.istio.io", "PeerAuthentication") => {
                self.peer_authentications.push(serde_json::from_value(doc).map_err(at)?)
            }
            ("networking.istio.io", "ServiceEntry") => {
                self.service_entries.push(serde_json::from_value(doc).map_err(at)?)
            }
            _ => {
                self.skipped += 1;
                return Ok(());
            }
        }
        if let Some(known) = KINDS.iter().find(|k| **k == kind) {
            self.kinds.insert(known);
        }
        Ok(())
    }

    pub fn has(&self, kind: &str) -> bool {
        self.kinds.contains(kind)
    }

    /// Labels of namespace `name`, with the `kubernetes.io/metadata.name` label the
    /// API server sets on every namespace (so selectors on it work on manifests too).
    pub fn namespace_labels(&self, name: &str) -> Option<BTreeMap<String, String>> {
        let namespace = self.namespaces.iter().find(|n| n.metadata.name.as_deref() == Some(name))?;
        let mut labels = namespace.metadata.labels.clone().unwrap_or_default();
        labels.insert("kubernetes.io/metadata.name".to_owned(), name.to_owned());
        Some(labels)
    }

    pub fn namespace_exists(&self, name: &str) -> bool {
        self.namespaces.iter().any(|n| n.metadata.name.as_deref() == Some(name))
    }

    pub fn service_account(&self, namespace: &str, name: &str) -> Option<&ServiceAccount> {
        self.service_accounts.iter().find(|sa| {
            sa.metadata.namespace.as_deref() == Some(namespace) && sa.metadata.name.as_deref() == Some(name)
        })
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| {
            s.metadata.namespace.as_deref() == Some(namespace) && s.metadata.name.as_deref() == Some(name)
        })
    }
}

/// The kinds [`Cluster::add`] reads.
pub const KINDS: [&str; 15] = [
    "Namespace",
    "ServiceAccount",
    "Service",
    "Endpoints",
    "EndpointSlice",
    "Pod",
    "NetworkPolicy",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "CronJob",
    "AuthorizationPolicy",
    "PeerAuthentication",
    "ServiceEntry",
];
