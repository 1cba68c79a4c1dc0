//! `check --cluster` against fixtures of `kubectl get … -o json` output built from
//! `k8s-openapi`'s types: an aligned cluster (no finding, with or without the
//! identity inventory) and, for every kind of finding, the one change that makes it
//! appear — and exactly that finding. Then the command itself: formats, exit
//! statuses, and the repo's own shipped manifests, which must be clean.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Namespace, Pod, PodSpec, PodTemplateSpec, ProjectedVolumeSource, Service, ServiceAccount,
    ServiceAccountTokenProjection, ServiceSpec, Volume, VolumeProjection,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointSlice};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde_json::{json, Value};

use nhi_guard_cli::cluster::{self, Cluster, Configured, Inventory, Kind, Options};

const NOW: u64 = 1_800_000_000;
const GATEWAY_SA: &str = "istio-ingressgateway-service-account";

fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect())
}

fn meta(namespace: Option<&str>, name: &str, label_pairs: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: labels(label_pairs),
        ..ObjectMeta::default()
    }
}

fn selector(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector { match_labels: labels(pairs), match_expressions: None }
}

fn pod_spec(service_account: &str, token_seconds: Option<i64>) -> PodSpec {
    let volumes = token_seconds.map(|seconds| {
        vec![Volume {
            name: "nhi-gateway-token".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some("nhi-gateway".into()),
                        expiration_seconds: Some(seconds),
                        path: "token".into(),
                    }),
                    ..VolumeProjection::default()
                }]),
                ..ProjectedVolumeSource::default()
            }),
            ..Volume::default()
        }]
    });
    PodSpec { service_account_name: Some(service_account.into()), volumes, ..PodSpec::default() }
}

fn pod(namespace: &str, name: &str, label_pairs: &[(&str, &str)], spec: PodSpec) -> Pod {
    Pod { metadata: meta(Some(namespace), name, label_pairs), spec: Some(spec), ..Pod::default() }
}

fn gateway_only_policy(peer_labels: &[(&str, &str)]) -> NetworkPolicy {
    policy_with_peers(vec![peer(
        Some(selector(&[("kubernetes.io/metadata.name", "istio-system")])),
        Some(selector(peer_labels)),
    )])
}

fn peer(namespaces: Option<LabelSelector>, pods: Option<LabelSelector>) -> NetworkPolicyPeer {
    NetworkPolicyPeer { namespace_selector: namespaces, pod_selector: pods, ip_block: None }
}

/// The shipped policy's shape (every pod of payments, ingress only) with `peers`.
fn policy_with_peers(peers: Vec<NetworkPolicyPeer>) -> NetworkPolicy {
    NetworkPolicy {
        metadata: meta(Some("payments"), "nhi-guard-gateway-only", &[]),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule { from: Some(peers), ports: None }]),
            egress: None,
        }),
    }
}

/// A cluster where everything lines up with [`plugin`].
struct Fixture {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
    pods: Vec<Pod>,
    deployments: Vec<Deployment>,
    policies: Vec<NetworkPolicy>,
    /// Istio objects (plain JSON: no Istio crate).
    istio: Vec<Value>,
}

impl Fixture {
    fn aligned() -> Fixture {
        let namespace = |name: &str, label_pairs: &[(&str, &str)]| Namespace {
            metadata: meta(None, name, label_pairs),
            ..Namespace::default()
        };
        let account = |ns: &str, name: &str, uid: &str| ServiceAccount {
            metadata: ObjectMeta { uid: Some(uid.into()), ..meta(Some(ns), name, &[]) },
            ..ServiceAccount::default()
        };
        let gateway_labels = [("istio", "ingressgateway")];
        Fixture {
            namespaces: vec![
                namespace("istio-system", &[]),
                namespace("ci", &[]),
                namespace("payments", &[("nhi-guard.io/protected", "true")]),
                namespace("idp", &[]),
            ],
            service_accounts: vec![
                account("ci", "deployer", "uid-deployer"),
                account("payments", "reporter", "uid-reporter"),
                account("istio-system", GATEWAY_SA, "uid-gateway"),
            ],
            services: vec![
                Service {
                    metadata: meta(Some("payments"), "api", &[]),
                    spec: Some(ServiceSpec { selector: labels(&[("app", "api")]), ..ServiceSpec::default() }),
                    ..Service::default()
                },
                Service {
                    metadata: meta(Some("idp"), "keys", &[]),
                    spec: Some(ServiceSpec {
                        selector: labels(&[("app", "keys")]),
                        ..ServiceSpec::default()
                    }),
                    ..Service::default()
                },
            ],
            slices: vec![EndpointSlice {
                metadata: meta(Some("idp"), "keys-x1", &[("kubernetes.io/service-name", "keys")]),
                address_type: "IPv4".into(),
                endpoints: vec![Endpoint {
                    addresses: vec!["10.0.3.4".into()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        ..EndpointConditions::default()
                    }),
                    ..Endpoint::default()
                }],
                ports: None,
            }],
            pods: vec![
                pod("istio-system", "istio-ingressgateway-7d9", &gateway_labels, pod_spec(GATEWAY_SA, None)),
                pod("istio-system", "istiod-5c4", &[("app", "istiod")], pod_spec("istiod", None)),
                pod("ci", "deployer-6f8", &[("app", "deployer")], pod_spec("deployer", Some(3600))),
                pod("payments", "api-9b2", &[("app", "api")], pod_spec("default", None)),
                pod("payments", "reporter-1a2", &[("app", "reporter")], pod_spec("reporter", Some(600))),
                pod("idp", "keys-3c4", &[("app", "keys")], pod_spec("default", None)),
            ],
            deployments: vec![Deployment {
                metadata: meta(
                    Some("istio-system"),
                    "istio-ingressgateway",
                    &[("nhi-guard.io/gateway", "true")],
                ),
                spec: Some(DeploymentSpec {
                    selector: selector(&gateway_labels),
                    template: PodTemplateSpec {
                        metadata: Some(meta(None, "", &gateway_labels)),
                        spec: Some(pod_spec(GATEWAY_SA, None)),
                    },
                    ..DeploymentSpec::default()
                }),
                ..Deployment::default()
            }],
            policies: vec![gateway_only_policy(&gateway_labels)],
            istio: Vec::new(),
        }
    }

    /// The fixture as `kubectl get ns,sa,svc,endpointslices,pods,deploy,netpol -A -o json` prints it.
    fn kubectl_json(&self) -> String {
        let mut items: Vec<Value> = Vec::new();
        let mut push = |value: Value| items.push(value);
        self.namespaces.iter().for_each(|o| push(serde_json::to_value(o).unwrap()));
        self.service_accounts.iter().for_each(|o| push(serde_json::to_value(o).unwrap()));
        self.services.iter().for_each(|o| push(serde_json::to_value(o).unwrap()));
        self.slices.iter().for_each(|o| push(serde_json::to_value(o).unwrap()));
        self.pods.iter().for_each(|o| push(serde_json::to_value(o).unwrap()));
        self.deployments.iter().for_each(|o| push(serde_json::to_value(o).unwrap()));
        self.policies.iter().for_each(|o| push(serde_json::to_value(o).unwrap()));
        self.istio.iter().for_each(|o| push(o.clone()));
        json!({"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}})
            .to_string()
    }

    fn cluster(&self) -> Cluster {
        let mut cluster = Cluster::default();
        cluster.read("fixture.json", &self.kubectl_json()).unwrap();
        cluster
    }
}

/// The gateway's configuration: a `kubernetes` issuer (namespaces, a pinned service
/// account) and a partner issuer whose keys come from an in-cluster Service.
fn plugin() -> Value {
    json!({
        "issuers": [{
            "name": "kubernetes",
            "issuer": "https://kubernetes.default.svc.cluster.local",
            "audiences": ["nhi-gateway"],
            "jwks": {"cluster": "outbound|443||kubernetes.default.svc.cluster.local",
                     "authority": "kubernetes.default.svc.cluster.local", "path": "/openid/v1/jwks"},
            "profile": {"type": "kubernetes", "namespaces": ["ci", "payments"],
                        "service_accounts": [{"name": "ci/deployer", "uid": "uid-deployer"}, "payments/reporter"],
                        "max_token_lifetime_seconds": 3600}
        }, {
            "name": "partner",
            "issuer": "https://idp.partner.example",
            "audiences": ["nhi-gateway"],
            "jwks": {"cluster": "outbound|8080||keys.idp.svc.cluster.local",
                     "authority": "keys.idp.svc.cluster.local:8080", "path": "/jwks"}
        }],
        "routes": [{"name": "machine-api", "match": {"prefix": "/api/"},
                    "allow": [{"issuer": "kubernetes", "identity": "ci/deployer"},
                              {"namespace": "payments"},
                              {"issuer": "partner", "identity": "acme"}]}]
    })
}

fn inventory(extra: &[(&str, &str, u64)]) -> Inventory {
    let mut identities = vec![
        json!({"issuer": "kubernetes", "identity": "ci/deployer", "last_seen": NOW - 60, "requests": 12,
               "last_route": "machine-api", "last_source": "10.0.1.2"}),
        json!({"issuer": "kubernetes", "identity": "payments/reporter", "last_seen": NOW - 3600}),
        json!({"issuer": "partner", "identity": "acme", "last_seen": NOW - 86_400}),
    ];
    for (issuer, identity, last_seen) in extra {
        identities.push(json!({"issuer": issuer, "identity": identity, "last_seen": last_seen}));
    }
    Inventory::parse(&json!({"generated_at": NOW, "identities": identities}).to_string()).unwrap()
}

fn run(fixture: &Fixture, plugin: &Value, inventory: Option<&Inventory>) -> Vec<(Kind, String)> {
    let configs = [Configured {
        file: "gateway.yaml".into(),
        what: "plugin configuration".into(),
        plugin: plugin.clone(),
    }];
    let options = Options { now: NOW, ..Options::default() };
    let report = cluster::check(&configs, &fixture.cluster(), inventory, &options);
    report.findings.iter().map(|f| (f.kind, format!("{}: {}", f.object, f.message))).collect()
}

fn kinds(findings: &[(Kind, String)]) -> BTreeSet<Kind> {
    findings.iter().map(|(k, _)| *k).collect()
}

#[test]
fn an_aligned_cluster_has_no_finding_with_or_without_an_inventory() {
    let fixture = Fixture::aligned();
    assert_eq!(run(&fixture, &plugin(), None), []);
    assert_eq!(run(&fixture, &plugin(), Some(&inventory(&[]))), []);
}

/// Every kind of finding, from the one change that causes it; nothing else appears.
#[test]
fn each_misalignment_gives_exactly_its_finding() {
    type Change = Box<dyn Fn(&mut Fixture, &mut Value)>;
    let cases: Vec<(Kind, &str, Change, bool)> = vec![
        (
            Kind::NamespaceMissing,
            "profile.namespaces[2]",
            Box::new(|_, p| {
                p["issuers"][0]["profile"]["namespaces"].as_array_mut().unwrap().push(json!("staging"));
            }),
            false,
        ),
        (
            Kind::ServiceAccountMissing,
            "profile.service_accounts[2]",
            Box::new(|_, p| {
                p["issuers"][0]["profile"]["service_accounts"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!("ci/ghost"));
            }),
            false,
        ),
        (
            Kind::ServiceAccountReplaced,
            "UID uid-deployer, but its UID is now uid-recreated",
            Box::new(|f, _| {
                f.service_accounts[0].metadata.uid = Some("uid-recreated".into());
            }),
            false,
        ),
        (
            Kind::ServiceAccountUnused,
            "no Pod or workload (Deployment, StatefulSet, DaemonSet, Job, CronJob) runs as payments/reporter",
            Box::new(|f, _| {
                f.pods.retain(|p| p.metadata.name.as_deref() != Some("reporter-1a2"));
            }),
            false,
        ),
        (
            Kind::BackendReachableWithoutGateway,
            "no NetworkPolicy of namespace payments selects it",
            Box::new(|f, _| {
                f.policies.clear();
            }),
            false,
        ),
        (
            Kind::BackendReachableWithoutGateway,
            "admits pod istio-system/istiod-5c4",
            Box::new(|f, _| {
                // The classic mistake: namespace and pod selectors as two peers, or a peer
                // with only the namespace: every pod of istio-system.
                f.policies = vec![gateway_only_policy(&[])];
            }),
            false,
        ),
        (
            Kind::BackendReachableWithoutGateway,
            "ingress[0].from[0]: namespaceSelector {} selects every namespace",
            Box::new(|f, _| {
                // The gateway's pod labels in any namespace: a tenant labels its own pod
                // istio=ingressgateway. No such pod is in the dump: judged by the selector.
                f.policies = vec![policy_with_peers(vec![peer(
                    Some(LabelSelector::default()),
                    Some(selector(&[("istio", "ingressgateway")])),
                )])];
            }),
            false,
        ),
        (
            Kind::BackendReachableWithoutGateway,
            "ingress[0].from[0]: admits every pod of namespace istio-system",
            Box::new(|f, _| {
                // The two-peers mistake, with no pod of istio-system but the gateway's in
                // the dump: the namespace peer alone admits istiod and whatever comes next.
                f.policies = vec![policy_with_peers(vec![
                    peer(Some(selector(&[("kubernetes.io/metadata.name", "istio-system")])), None),
                    peer(None, Some(selector(&[("istio", "ingressgateway")]))),
                ])];
                f.pods.retain(|p| p.metadata.name.as_deref() != Some("istiod-5c4"));
            }),
            false,
        ),
        (
            Kind::BackendReachableWithoutGateway,
            "ingress[0].from[1]: admits pods of namespace ci",
            Box::new(|f, _| {
                // Another namespace by name, though no pod of it matches in the dump.
                f.policies = vec![policy_with_peers(vec![
                    peer(
                        Some(selector(&[("kubernetes.io/metadata.name", "istio-system")])),
                        Some(selector(&[("istio", "ingressgateway")])),
                    ),
                    peer(
                        Some(selector(&[("kubernetes.io/metadata.name", "ci")])),
                        Some(selector(&[("app", "not-deployed-yet")])),
                    ),
                ])];
            }),
            false,
        ),
        (
            Kind::GatewayShutOut,
            "AuthorizationPolicy payments/deny-all has no rules: it admits nobody",
            Box::new(|f, _| {
                // An ALLOW policy without rules refuses everything, the gateway included.
                f.policies.clear();
                f.istio.push(json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                                    "metadata": {"name": "deny-all", "namespace": "payments"},
                                    "spec": {"action": "ALLOW"}}));
                f.istio.push(strict());
            }),
            false,
        ),
        (
            Kind::GatewayShutOut,
            "admits no pod of the gateway",
            Box::new(|f, _| {
                f.policies = vec![gateway_only_policy(&[("app", "someone-else")])];
            }),
            false,
        ),
        (
            Kind::MtlsNotStrict,
            "mTLS is not STRICT",
            Box::new(|f, _| {
                f.policies.clear();
                f.istio.push(authorization_policy(&format!("cluster.local/ns/istio-system/sa/{GATEWAY_SA}")));
            }),
            false,
        ),
        (
            Kind::BackendReachableWithoutGateway,
            "admits principal cluster.local/ns/ci/sa/deployer",
            Box::new(|f, _| {
                f.policies.clear();
                f.istio.push(authorization_policy("cluster.local/ns/ci/sa/deployer"));
                f.istio.push(strict());
            }),
            false,
        ),
        (
            Kind::NoBackendsDeclared,
            "no Service carries nhi-guard.io/backend=true",
            Box::new(|f, _| {
                f.namespaces[2].metadata.labels = None;
            }),
            false,
        ),
        (
            Kind::GatewayNotFound,
            "no Deployment is labelled nhi-guard.io/gateway=true",
            Box::new(|f, _| {
                f.deployments[0].metadata.labels = None;
            }),
            false,
        ),
        (
            Kind::ApiServerAudience,
            "issuers[1].audiences[0]",
            Box::new(|_, p| {
                p["issuers"][1]["audiences"] = json!(["https://kubernetes.default.svc"]);
            }),
            false,
        ),
        (
            Kind::JwksClusterUnresolved,
            "there is no Service idp/keys",
            Box::new(|f, _| {
                f.services.retain(|s| s.metadata.name.as_deref() != Some("keys"));
            }),
            false,
        ),
        (
            Kind::JwksServiceWithoutEndpoints,
            "Service idp/keys has no ready endpoint",
            Box::new(|f, _| {
                f.slices[0].endpoints[0].conditions =
                    Some(EndpointConditions { ready: Some(false), ..EndpointConditions::default() });
            }),
            false,
        ),
        (
            Kind::LongLivedTokensWithoutLiveness,
            "max_token_lifetime_seconds is not set",
            Box::new(|_, p| {
                p["issuers"][0]["profile"].as_object_mut().unwrap().remove("max_token_lifetime_seconds");
            }),
            false,
        ),
        (Kind::IdentityNotAllowlisted, "identity partner/globex", Box::new(|_, _| {}), true),
        (
            Kind::AllowlistEntryUnused,
            "profile.service_accounts[1]",
            Box::new(|_, p| {
                // An entry no identity of the inventory uses.
                p["issuers"][0]["profile"]["service_accounts"][1] = json!("payments/auditor");
            }),
            true,
        ),
        (
            Kind::IdentityServiceAccountGone,
            "service account ci/old no longer exists",
            Box::new(|_, _| {}),
            true,
        ),
    ];
    let mut covered = BTreeSet::new();
    for (kind, evidence, change, with_inventory) in &cases {
        let mut fixture = Fixture::aligned();
        let mut config = plugin();
        change(&mut fixture, &mut config);
        if *kind == Kind::AllowlistEntryUnused {
            // The auditor account exists and runs (only the inventory lacks it).
            fixture.service_accounts.push(ServiceAccount {
                metadata: meta(Some("payments"), "auditor", &[]),
                ..ServiceAccount::default()
            });
            fixture.pods.push(pod("payments", "auditor-1", &[], pod_spec("auditor", None)));
        }
        let extra: &[(&str, &str, u64)] = match kind {
            Kind::IdentityNotAllowlisted => &[("partner", "globex", NOW - 10)],
            Kind::IdentityServiceAccountGone => &[("kubernetes", "ci/old", NOW - 10)],
            _ => &[],
        };
        let inventory = with_inventory.then(|| inventory(extra));
        let findings = run(&fixture, &config, inventory.as_ref());
        assert_eq!(kinds(&findings), BTreeSet::from([*kind]), "{kind}: {findings:#?}");
        assert!(
            findings.iter().any(|(_, text)| text.contains(evidence)),
            "{kind}: {evidence:?} not in {findings:#?}"
        );
        covered.insert(*kind);
    }

    // Two findings from one change: a token over the profile's lifetime is refused,
    // and it is long-lived besides.
    let mut fixture = Fixture::aligned();
    fixture.pods[2] = pod("ci", "deployer-6f8", &[("app", "deployer")], pod_spec("deployer", Some(7200)));
    let findings = run(&fixture, &plugin(), None);
    assert_eq!(
        kinds(&findings),
        BTreeSet::from([Kind::ProjectedTokenTooLong, Kind::LongLivedTokensWithoutLiveness]),
        "{findings:#?}"
    );
    assert!(findings
        .iter()
        .any(|(_, t)| t.contains("Pod ci/deployer-6f8 projects a token for this issuer living 7200 s")));
    covered.insert(Kind::ProjectedTokenTooLong);
    // With liveness (the lifecycle issue's TokenReview), long lifetimes are no finding.
    let mut live = plugin();
    live["issuers"][0]["profile"]["liveness"] = json!({"cluster": "kube_api"});
    live["issuers"][0]["profile"].as_object_mut().unwrap().remove("max_token_lifetime_seconds");
    assert_eq!(run(&Fixture::aligned(), &live, None), []);

    // Input missing: no service accounts given, so their checks are skipped, and said so.
    let mut fixture = Fixture::aligned();
    fixture.service_accounts.clear();
    let findings = run(&fixture, &plugin(), None);
    assert_eq!(kinds(&findings), BTreeSet::from([Kind::InputMissing]), "{findings:#?}");
    assert!(findings[0].1.contains("no ServiceAccount given"), "{findings:#?}");
    covered.insert(Kind::InputMissing);

    // The Istio way, complete: AuthorizationPolicy and STRICT mTLS, no NetworkPolicy.
    let mut fixture = Fixture::aligned();
    fixture.policies.clear();
    fixture.istio.push(authorization_policy(&format!("cluster.local/ns/istio-system/sa/{GATEWAY_SA}")));
    fixture.istio.push(strict());
    assert_eq!(run(&fixture, &plugin(), None), []);

    let every: BTreeSet<Kind> = Kind::ALL.into_iter().collect();
    assert_eq!(covered, every, "a kind of finding has no fixture");
}

fn authorization_policy(principal: &str) -> Value {
    json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
           "metadata": {"name": "gateway-only", "namespace": "payments"},
           "spec": {"action": "ALLOW", "rules": [{"from": [{"source": {"principals": [principal]}}]}]}})
}

fn strict() -> Value {
    json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
           "metadata": {"name": "default", "namespace": "payments"}, "spec": {"mtls": {"mode": "STRICT"}}})
}

#[test]
fn typed_lists_and_single_objects_are_read_like_kubectl_lists() {
    let fixture = Fixture::aligned();
    let pods: Vec<Value> = fixture
        .pods
        .iter()
        .map(|p| {
            let mut v = serde_json::to_value(p).unwrap();
            let members = v.as_object_mut().unwrap();
            members.remove("kind");
            members.remove("apiVersion");
            v
        })
        .collect();
    let mut cluster = Cluster::default();
    // What the API itself returns: a PodList whose items name no kind.
    cluster
        .read("pods.json", &json!({"apiVersion": "v1", "kind": "PodList", "items": pods}).to_string())
        .unwrap();
    cluster
        .read("ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: ci}\n---\nkind: Other\n")
        .unwrap();
    assert_eq!(cluster.pods.len(), fixture.pods.len());
    assert_eq!(cluster.namespaces.len(), 1);
    assert_eq!(cluster.skipped, 1);
    let err = cluster
        .read("bad.json", r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": 7}}"#)
        .unwrap_err();
    assert!(err.starts_with("bad.json: Pod <unnamed>:"), "{err}");
}

// ---------------------------------------------------------------------------------
// The command

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn nhi_guard(args: &[&str], dir: &Path) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_nhi-guard")).args(args).current_dir(dir).output().unwrap();
    (
        output.status.code().unwrap(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The shipped alignment manifests, with the shipped WasmPlugin: what the repo tells
/// people to deploy is clean.
pub const SHIPPED_STATE: [&str; 5] = [
    "k8s/backend-networkpolicy.yaml",
    "k8s/workload.yaml",
    "k8s/gateway-rbac.yaml",
    "istio/backend-authorization.yaml",
    "istio/jwks-egress.yaml",
];

/// `nhi-guard check` of the shipped WasmPlugin against the shipped workload and egress,
/// with `policy` (a file of its own) in the place of the backend's network policy.
fn check_with_policy(policy: &Path) -> (i32, String, String) {
    let policy = policy.display().to_string();
    let args = [
        "check",
        "--cluster",
        &policy,
        "--cluster",
        "k8s/workload.yaml",
        "--cluster",
        "istio/jwks-egress.yaml",
        "istio/wasmplugin.yaml",
    ];
    nhi_guard(&args, &repo().join("envoy"))
}

#[test]
fn the_shipped_manifests_are_clean() {
    let mut args = vec!["check", "--fail-on", "warning"];
    for file in SHIPPED_STATE {
        args.extend(["--cluster", file]);
    }
    args.push("istio/wasmplugin.yaml");
    let (code, out, err) = nhi_guard(&args, &repo().join("envoy"));
    assert_eq!(code, 0, "{out}{err}");
    // Manifests hold no pods: the backends are judged by their selectors, and said so.
    assert!(out.contains("note[input-missing] cluster input: no Pod given\n"), "{out}");
    assert!(out.ends_with("0 error(s), 0 warning(s), 1 note(s); 1 machine backend(s) checked\n"), "{out}");

    // Without the NetworkPolicy and the Istio policies, the protected namespace is open.
    let dir = std::env::temp_dir().join(format!("nhi-shipped-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shipped = std::fs::read_to_string(repo().join("envoy/k8s/backend-networkpolicy.yaml")).unwrap();
    let namespace_only = shipped.split("\n---\n").next().unwrap();
    assert!(namespace_only.contains("kind: Namespace"), "{namespace_only}");
    std::fs::write(dir.join("namespace.yaml"), namespace_only).unwrap();
    let (code, out, _) = check_with_policy(&dir.join("namespace.yaml"));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "error[backend-reachable-without-gateway] Namespace payments: no Istio AuthorizationPolicy"
        ),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The shipped NetworkPolicy alone protects the namespace; the two mistakes its
/// comments warn about do not, and are caught from the manifests alone (no pod of
/// another namespace needs to be in the input to show it).
#[test]
fn the_shipped_network_policy_and_its_two_classic_mistakes() {
    let shipped = std::fs::read_to_string(repo().join("envoy/k8s/backend-networkpolicy.yaml")).unwrap();
    let one_peer = "    - namespaceSelector:\n        matchLabels:\n          kubernetes.io/metadata.name: istio-system\n      podSelector:\n";
    assert!(shipped.contains(one_peer), "{shipped}");
    // Two peers: the namespace's every pod, and the gateway's labels in payments itself.
    let two_peers = shipped.replace(one_peer, &one_peer.replace("      podSelector:", "    - podSelector:"));
    // Any namespace: whoever labels a pod istio=ingressgateway.
    let any_namespace = shipped.replace(
        "    - namespaceSelector:\n        matchLabels:\n          kubernetes.io/metadata.name: istio-system\n",
        "    - namespaceSelector: {}\n",
    );
    let dir = std::env::temp_dir().join(format!("nhi-netpol-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |name: &str, text: &str| {
        let file = dir.join(name);
        std::fs::write(&file, text).unwrap();
        check_with_policy(&file)
    };
    let (code, out, err) = run("shipped.yaml", &shipped);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.ends_with("0 error(s), 0 warning(s), 1 note(s); 1 machine backend(s) checked\n"), "{out}");

    let (code, out, _) = run("two-peers.yaml", &two_peers);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "error[backend-reachable-without-gateway] Namespace payments: NetworkPolicy \
             payments/nhi-guard-gateway-only: ingress[0].from[0]: admits every pod of namespace istio-system"
        ),
        "{out}"
    );
    assert!(out.contains("note[input-missing] cluster input: no Pod given\n"), "{out}");

    let (code, out, _) = run("any-namespace.yaml", &any_namespace);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "error[backend-reachable-without-gateway] Namespace payments: NetworkPolicy \
             payments/nhi-guard-gateway-only: ingress[0].from[0]: namespaceSelector {} selects every namespace"
        ),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn formats_and_exit_statuses() {
    let dir = std::env::temp_dir().join(format!("nhi-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut fixture = Fixture::aligned();
    std::fs::write(dir.join("aligned.json"), fixture.kubectl_json()).unwrap();
    fixture.policies.clear();
    std::fs::write(dir.join("open.json"), fixture.kubectl_json()).unwrap();
    // A configuration the filter accepts (no UID pin: that is the lifecycle issue's).
    let mut config = plugin();
    config["issuers"][0]["profile"]["service_accounts"] = json!(["ci/deployer", "payments/reporter"]);
    std::fs::write(dir.join("plugin.json"), config.to_string()).unwrap();

    let (code, out, err) = nhi_guard(&["check", "--cluster", "aligned.json", "plugin.json"], &dir);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("gateway: Deployment istio-system/istio-ingressgateway (label nhi-guard.io/gateway)"),
        "{out}"
    );

    let (code, out, _) = nhi_guard(&["check", "--cluster", "open.json", "plugin.json"], &dir);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("error[backend-reachable-without-gateway] Namespace payments:"), "{out}");
    assert!(
        out.contains("    fix: apply envoy/k8s/backend-networkpolicy.yaml in namespace payments"),
        "{out}"
    );

    let (code, out, _) =
        nhi_guard(&["check", "--format", "json", "--cluster", "open.json", "plugin.json"], &dir);
    assert_eq!(code, 1);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["summary"]["errors"], 2, "{report:#}");
    assert_eq!(report["findings"][0]["kind"], "backend-reachable-without-gateway");
    assert_eq!(report["findings"][0]["severity"], "error");

    let (code, out, _) =
        nhi_guard(&["check", "--format", "sarif", "--cluster", "open.json", "plugin.json"], &dir);
    assert_eq!(code, 1);
    let sarif: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(sarif["version"], "2.1.0");
    let run = &sarif["runs"][0];
    assert_eq!(run["tool"]["driver"]["rules"].as_array().unwrap().len(), Kind::ALL.len());
    let result = &run["results"][0];
    let rule = &run["tool"]["driver"]["rules"][result["ruleIndex"].as_u64().unwrap() as usize];
    assert_eq!(rule["id"], result["ruleId"]);
    assert_eq!(result["level"], "error");
    assert_eq!(result["locations"][0]["logicalLocations"][0]["fullyQualifiedName"], "Namespace payments");

    // A warning fails only with --fail-on warning.
    let mut fixture = Fixture::aligned();
    fixture.pods.retain(|p| p.metadata.name.as_deref() != Some("reporter-1a2"));
    std::fs::write(dir.join("unused.json"), fixture.kubectl_json()).unwrap();
    let (code, out, _) = nhi_guard(&["check", "--cluster", "unused.json", "plugin.json"], &dir);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("warning[service-account-unused]"), "{out}");
    let (code, _, _) =
        nhi_guard(&["check", "--fail-on", "warning", "--cluster", "unused.json", "plugin.json"], &dir);
    assert_eq!(code, 1);

    // Usage and unreadable input: 2.
    assert_eq!(nhi_guard(&["check", "--cluster", "nope.json", "plugin.json"], &dir).0, 2);
    assert_eq!(
        nhi_guard(&["check", "--format", "xml", "--cluster", "aligned.json", "plugin.json"], &dir).0,
        2
    );
    std::fs::write(dir.join("inventory.json"), "{\"identities\": 3}").unwrap();
    let (code, _, err) = nhi_guard(
        &["check", "--cluster", "aligned.json", "--inventory", "inventory.json", "plugin.json"],
        &dir,
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not an identity inventory"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An account whose only workload is a CronJob (between its runs: no pod) or a
/// StatefulSet is in use: not `service-account-unused`.
#[test]
fn accounts_of_cron_jobs_and_stateful_sets_are_in_use() {
    let template = |account: &str| json!({"spec": {"serviceAccountName": account, "containers": [{"name": "c", "image": "x"}]}});
    for workload in [
        json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "reporter", "namespace": "payments"},
               "spec": {"schedule": "0 2 * * *", "jobTemplate": {"spec": {"template": template("reporter")}}}}),
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "reporter", "namespace": "payments"},
               "spec": {"selector": {"matchLabels": {"app": "reporter"}}, "template": template("reporter")}}),
    ] {
        let mut fixture = Fixture::aligned();
        fixture.pods.retain(|p| p.metadata.name.as_deref() != Some("reporter-1a2"));
        assert_eq!(kinds(&run(&fixture, &plugin(), None)), BTreeSet::from([Kind::ServiceAccountUnused]));
        let kind = workload["kind"].clone();
        fixture.istio.push(workload);
        assert_eq!(run(&fixture, &plugin(), None), [], "{kind}");
    }
}
