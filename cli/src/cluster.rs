//! `nhi-guard check --cluster`: the gateway's identity policy checked against the
//! cluster it protects.
//!
//! Inputs: the plugin configurations `check` finds (validated by the filter's own
//! code first), the cluster as `kubectl get … -o json` prints it ([`objects`]), and
//! optionally the identity inventory of the lifecycle issue ([`Inventory`]).
//! Output: [`Finding`]s, each of a [`Kind`] with a severity, the object and a fix,
//! rendered by [`report`] as text, JSON or SARIF.
//!
//! What is checked, by kind: see [`Kind`]; the docs (`docs/cluster-alignment.md`)
//! list each with an example. Machine backends are the Services labelled (or
//! annotated) `nhi-guard.io/backend: "true"` and every pod and Service of a
//! namespace labelled `nhi-guard.io/protected: "true"`.

pub mod findings;
pub mod objects;
pub mod plugin;
pub mod reach;
pub mod report;

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::Value;

use nhi_guard_core::profile::kubernetes::is_api_server_audience;

pub use findings::{Finding, Kind, Severity};
pub use objects::Cluster;
use plugin::{pattern_matches, IssuerView, PluginView};
use reach::{Gateway, Layer, PodView, Protection};

/// The label (or annotation) that makes a Service a machine backend.
pub const BACKEND_LABEL: &str = "nhi-guard.io/backend";
/// The namespace label that makes every pod and Service in it a machine backend.
pub const PROTECTED_LABEL: &str = "nhi-guard.io/protected";
/// The Deployment label that names the gateway.
pub const GATEWAY_LABEL: &str = "nhi-guard.io/gateway";
/// Tokens living longer than this are long-lived: liveness is wanted.
pub const LONG_LIVED_SECONDS: u64 = 3600;
/// Kubernetes' default `expirationSeconds` of a projected token.
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// The service account Istio's ingress gateway charts run as.
pub const ISTIO_INGRESS_SERVICE_ACCOUNT: &str = "istio-ingressgateway-service-account";

/// A plugin configuration as `check --cluster` reads it.
#[derive(Debug, Clone)]
pub struct Configured {
    /// The file it came from.
    pub file: String,
    /// Where in the file (`WasmPlugin istio-system/nhi-guard: spec.pluginConfig`).
    pub what: String,
    pub plugin: Value,
}

/// The identity inventory the filter answers on `inventory.path` (its JSON, as
/// `curl` saves it), or any tool that writes the same shape:
///
/// ```json
/// { "generated_at": "2027-01-15T08:01:30.000Z",
///   "identities": [ { "issuer": "kubernetes", "identity": "ci/deployer",
///                     "first_seen": "2027-01-15T08:00:00.000Z",
///                     "last_seen": "2027-01-15T08:01:00.000Z", "requests": 42,
///                     "last_route": "machine-api", "last_source": "10.1.2.3" } ] }
/// ```
///
/// Times are RFC 3339 (as the filter writes them) or Unix seconds. Only `issuer`,
/// `identity` and `last_seen` are required; other members (`idle_seconds`,
/// `unused_allow_entries`, …) are ignored; a bare array of identities is accepted too.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Inventory {
    /// When the inventory was taken (default: now).
    #[serde(default, deserialize_with = "optional_time")]
    pub generated_at: Option<u64>,
    pub identities: Vec<Seen>,
}

/// A time as Unix seconds or RFC 3339 text.
#[derive(Deserialize)]
#[serde(untagged)]
enum Time {
    Unix(u64),
    Text(String),
}

impl Time {
    fn seconds<E: serde::de::Error>(self) -> Result<u64, E> {
        match self {
            Time::Unix(seconds) => Ok(seconds),
            Time::Text(text) => nhi_guard_core::partners::time::parse_rfc3339(&text)
                .and_then(|seconds| u64::try_from(seconds).ok())
                .ok_or_else(|| E::custom(format!("{text:?} is neither Unix seconds nor an RFC 3339 time"))),
        }
    }
}

fn time<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Time::deserialize(d)?.seconds()
}

fn optional_time<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Option::<Time>::deserialize(d)?.map(Time::seconds).transpose()
}

/// One identity of the inventory.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Seen {
    /// The configured issuer's name.
    pub issuer: String,
    /// The forwarded identity (`ci/deployer` for a `kubernetes` issuer).
    pub identity: String,
    #[serde(default, deserialize_with = "optional_time")]
    pub first_seen: Option<u64>,
    #[serde(deserialize_with = "time")]
    pub last_seen: u64,
    #[serde(default)]
    pub requests: Option<u64>,
    #[serde(default)]
    pub last_route: Option<String>,
    #[serde(default)]
    pub last_source: Option<String>,
}

impl Inventory {
    pub fn parse(text: &str) -> Result<Inventory, String> {
        let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let value = match value {
            Value::Array(_) => serde_json::json!({ "identities": value }),
            other => other,
        };
        serde_json::from_value(value).map_err(|e| format!("not an identity inventory: {e}"))
    }
}

/// Where the gateway's pods are, when the cluster input does not say by a label.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayHint {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

/// The selectors of the WasmPlugins and EnvoyFilters in a configuration file: the
/// gateway's namespace and pod labels.
pub fn gateway_hints(text: &str) -> Vec<GatewayHint> {
    let mut hints = Vec::new();
    for doc in crate::check::yaml_documents(text).unwrap_or_default() {
        let labels = match doc.get("kind").and_then(Value::as_str) {
            Some("WasmPlugin") => doc.pointer("/spec/selector/matchLabels"),
            Some("EnvoyFilter") => doc.pointer("/spec/workloadSelector/labels"),
            _ => None,
        };
        let labels: BTreeMap<String, String> =
            labels.and_then(|l| serde_json::from_value(l.clone()).ok()).unwrap_or_default();
        if let (false, Some(namespace)) =
            (labels.is_empty(), doc.pointer("/metadata/namespace").and_then(Value::as_str))
        {
            hints.push(GatewayHint { namespace: namespace.to_owned(), labels });
        }
    }
    hints
}

/// How to read the cluster.
#[derive(Debug, Clone)]
pub struct Options {
    /// `NAMESPACE/NAME` of the gateway's Deployment.
    pub gateway: Option<String>,
    pub gateway_service_account: Option<String>,
    pub hints: Vec<GatewayHint>,
    /// Istio's trust domain (principals are `TRUST_DOMAIN/ns/NS/sa/SA`).
    pub trust_domain: String,
    /// An allowlist entry unused for this long is reported (with an inventory).
    pub unused_days: u64,
    /// Unix seconds, when the inventory does not say.
    pub now: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            gateway: None,
            gateway_service_account: None,
            hints: Vec::new(),
            trust_domain: "cluster.local".to_owned(),
            unused_days: 30,
            now: 0,
        }
    }
}

/// What `check --cluster` concluded.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// How the gateway was found, for the report's header.
    pub gateway: Option<String>,
    /// How many machine backends were judged.
    pub backends: usize,
}

impl Report {
    pub fn count(&self, severity: Severity) -> usize {
        self.findings.iter().filter(|f| f.severity() == severity).count()
    }
}

/// Checks every configuration against the cluster.
pub fn check(
    configs: &[Configured],
    cluster: &Cluster,
    inventory: Option<&Inventory>,
    options: &Options,
) -> Report {
    let mut out = Vec::new();
    let mut skipped = BTreeSet::new();
    for config in configs {
        let view = PluginView::read(&config.plugin);
        let at = |field: &str| format!("{}: {field}", config.what);
        let finding = |kind: Kind, field: &str, message: String, fix: String| Finding {
            kind,
            object: at(field),
            message,
            fix,
            file: Some(config.file.clone()),
        };
        allowlists(&view, cluster, &finding, &mut out, &mut skipped);
        issuers(&view, cluster, &finding, &mut out, &mut skipped);
        if let Some(inventory) = inventory {
            inventory_checks(&view, cluster, inventory, options, &finding, &mut out, &mut skipped);
        }
    }
    let (gateway, backends) = reachability(cluster, options, &mut out, &mut skipped);
    if !skipped.is_empty() {
        out.push(Finding {
            kind: Kind::InputMissing,
            object: "cluster input".into(),
            message: format!("no {} given", skipped.into_iter().collect::<Vec<_>>().join(", ")),
            fix: "add them to the cluster input: kubectl get KIND -A -o json".into(),
            file: None,
        });
    }
    out.sort();
    out.dedup();
    Report { findings: out, gateway: gateway.map(|g| g.found_by), backends }
}

type Make<'a> = dyn Fn(Kind, &str, String, String) -> Finding + 'a;

fn allowlists(
    view: &PluginView,
    cluster: &Cluster,
    finding: &Make<'_>,
    out: &mut Vec<Finding>,
    skipped: &mut BTreeSet<&'static str>,
) {
    let workloads = workloads(cluster);
    for issuer in view.kubernetes_issuers() {
        let i = issuer.index;
        for (j, ns) in issuer.namespaces.iter().enumerate() {
            namespace_exists(
                cluster,
                ns,
                &format!("issuers[{i}].profile.namespaces[{j}]"),
                finding,
                out,
                skipped,
            );
        }
        for (j, (entry, uid)) in issuer.service_accounts.iter().enumerate() {
            let field = format!("issuers[{i}].profile.service_accounts[{j}]");
            let Some((ns, name)) = entry.split_once('/') else { continue };
            if entry.ends_with('*') {
                namespace_exists(cluster, ns.trim_end_matches('*'), &field, finding, out, skipped);
                continue;
            }
            if !cluster.has("ServiceAccount") {
                skipped.insert("ServiceAccount");
                continue;
            }
            match cluster.service_account(ns, name) {
                None => out.push(finding(
                    Kind::ServiceAccountMissing,
                    &field,
                    format!("service account {entry} does not exist"),
                    format!("remove {entry} from the allowlist, or create the ServiceAccount"),
                )),
                Some(account) => {
                    let live = account.metadata.uid.as_deref();
                    if let (Some(pinned), Some(live)) = (uid, live) {
                        if pinned != live {
                            out.push(finding(
                                Kind::ServiceAccountReplaced,
                                &field,
                                format!("{entry} is pinned to UID {pinned}, but its UID is now {live}"),
                                format!(
                                    "if the new account is legitimate, pin uid {live}; otherwise delete it"
                                ),
                            ));
                        }
                    }
                    if !workloads.is_empty()
                        && !workloads.iter().any(|w| w.namespace == ns && w.service_account == name)
                    {
                        out.push(finding(
                            Kind::ServiceAccountUnused,
                            &field,
                            format!("no Pod or workload (Deployment, StatefulSet, DaemonSet, Job, CronJob) runs as {entry}"),
                            format!("remove {entry} from the allowlist and delete the account, or deploy its workload"),
                        ));
                    }
                }
            }
        }
    }
    for rule in &view.allow {
        if let Some(ns) = &rule.namespace {
            namespace_exists(cluster, ns, &format!("{}.namespace", rule.at), finding, out, skipped);
        }
        let kubernetes_rule =
            rule.issuer.as_ref().is_some_and(|name| view.kubernetes_issuers().any(|i| &i.name == name));
        if let (true, Some(identity)) = (kubernetes_rule, &rule.identity) {
            if let (Some((ns, name)), false) = (identity.split_once('/'), identity.ends_with('*')) {
                if !cluster.has("ServiceAccount") {
                    skipped.insert("ServiceAccount");
                } else if cluster.service_account(ns, name).is_none() {
                    out.push(finding(
                        Kind::ServiceAccountMissing,
                        &format!("{}.identity", rule.at),
                        format!("service account {identity} does not exist"),
                        format!("remove the rule, or create the ServiceAccount {identity}"),
                    ));
                }
            }
        }
    }
}

fn namespace_exists(
    cluster: &Cluster,
    pattern: &str,
    field: &str,
    finding: &Make<'_>,
    out: &mut Vec<Finding>,
    skipped: &mut BTreeSet<&'static str>,
) {
    if !cluster.has("Namespace") {
        skipped.insert("Namespace");
        return;
    }
    let found = cluster
        .namespaces
        .iter()
        .filter_map(|n| n.metadata.name.as_deref())
        .any(|name| pattern_matches(pattern, name));
    if !found {
        out.push(finding(
            Kind::NamespaceMissing,
            field,
            format!("no namespace matches {pattern:?}"),
            format!("remove {pattern:?} from the allowlist: whoever creates that namespace next is admitted"),
        ));
    }
}

/// A Pod or a Deployment's pod template.
struct Workload {
    what: String,
    namespace: String,
    service_account: String,
    /// `(audience, expirationSeconds)` of each projected service-account token.
    tokens: Vec<(String, i64)>,
}

fn workloads(cluster: &Cluster) -> Vec<Workload> {
    use k8s_openapi::api::core::v1::PodSpec;
    let from = |what: String, namespace: String, spec: Option<&PodSpec>| {
        let spec = spec.cloned().unwrap_or_default();
        let tokens = spec
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| v.projected.as_ref())
            .flat_map(|p| p.sources.iter().flatten())
            .filter_map(|s| s.service_account_token.as_ref())
            .map(|t| {
                (
                    t.audience.clone().unwrap_or_default(),
                    t.expiration_seconds.unwrap_or(DEFAULT_EXPIRATION_SECONDS),
                )
            })
            .collect();
        Workload {
            what,
            namespace,
            service_account: spec.service_account_name.clone().unwrap_or_else(|| "default".into()),
            tokens,
        }
    };
    let mut out: Vec<Workload> = cluster
        .pods
        .iter()
        .map(|p| {
            let ns = p.metadata.namespace.clone().unwrap_or_else(|| "default".into());
            from(format!("Pod {ns}/{}", p.metadata.name.as_deref().unwrap_or("")), ns, p.spec.as_ref())
        })
        .collect();
    let mut of = |kind: &str,
                  meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
                  spec: Option<&PodSpec>| {
        let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
        out.push(from(format!("{kind} {ns}/{}", meta.name.as_deref().unwrap_or("")), ns, spec));
    };
    for d in &cluster.deployments {
        of("Deployment", &d.metadata, d.spec.as_ref().and_then(|s| s.template.spec.as_ref()));
    }
    for s in &cluster.stateful_sets {
        of("StatefulSet", &s.metadata, s.spec.as_ref().and_then(|s| s.template.spec.as_ref()));
    }
    for d in &cluster.daemon_sets {
        of("DaemonSet", &d.metadata, d.spec.as_ref().and_then(|s| s.template.spec.as_ref()));
    }
    for j in &cluster.jobs {
        of("Job", &j.metadata, j.spec.as_ref().and_then(|s| s.template.spec.as_ref()));
    }
    // A CronJob between its runs has no pod: its template is the workload.
    for c in &cluster.cron_jobs {
        let spec =
            c.spec.as_ref().and_then(|s| s.job_template.spec.as_ref()).and_then(|j| j.template.spec.as_ref());
        of("CronJob", &c.metadata, spec);
    }
    out
}

fn issuers(
    view: &PluginView,
    cluster: &Cluster,
    finding: &Make<'_>,
    out: &mut Vec<Finding>,
    skipped: &mut BTreeSet<&'static str>,
) {
    let workloads = workloads(cluster);
    for issuer in &view.issuers {
        let i = issuer.index;
        for (j, audience) in issuer.audiences.iter().enumerate() {
            if is_api_server_audience(audience, &issuer.iss) {
                out.push(finding(
                    Kind::ApiServerAudience,
                    &format!("issuers[{i}].audiences[{j}]"),
                    format!("{audience:?} is (or may be) the API server's default audience: every pod's default token carries it"),
                    "use a dedicated audience (e.g. nhi-gateway) and request it in the pods' serviceAccountToken projection".into(),
                ));
            }
        }
        if let Some((jwks_cluster, authority)) = &issuer.jwks {
            jwks_resolves(issuer, jwks_cluster, authority, cluster, finding, out, skipped);
        }
        if issuer.profile != "kubernetes" {
            continue;
        }
        let long_lived: Vec<String> = workloads
            .iter()
            .filter_map(|w| {
                let lifetime = w.tokens.iter().filter(|(aud, _)| issuer.audiences.contains(aud)).map(|(_, s)| *s).max()?;
                Some((w, lifetime))
            })
            .filter_map(|(w, lifetime)| {
                let too_long = issuer.max_lifetime_seconds.is_some_and(|max| lifetime > i64::try_from(max).unwrap_or(i64::MAX));
                if too_long {
                    out.push(finding(
                        Kind::ProjectedTokenTooLong,
                        &format!("issuers[{i}].profile.max_token_lifetime_seconds"),
                        format!(
                            "{} projects a token for this issuer living {lifetime} s, over the {} s the profile accepts",
                            w.what,
                            issuer.max_lifetime_seconds.unwrap_or_default()
                        ),
                        format!("lower expirationSeconds of {}'s serviceAccountToken projection", w.what),
                    ));
                }
                (lifetime > i64::try_from(LONG_LIVED_SECONDS).unwrap_or(i64::MAX)).then(|| w.what.clone())
            })
            .collect();
        let bound = issuer.max_lifetime_seconds;
        let unbounded = bound.is_none_or(|max| max > LONG_LIVED_SECONDS);
        if !issuer.liveness && (unbounded || !long_lived.is_empty()) {
            let why = match bound {
                None => "max_token_lifetime_seconds is not set (API servers extend pod tokens to a year)"
                    .to_owned(),
                Some(max) if max > LONG_LIVED_SECONDS => format!("max_token_lifetime_seconds is {max}"),
                Some(_) => {
                    format!("{} project tokens living over {LONG_LIVED_SECONDS} s", long_lived.join(", "))
                }
            };
            out.push(finding(
                Kind::LongLivedTokensWithoutLiveness,
                &format!("issuers[{i}].profile"),
                format!("tokens of issuer {} may be long-lived ({why}) and no liveness is configured", issuer.name),
                format!("set max_token_lifetime_seconds to at most {LONG_LIVED_SECONDS}, or configure profile.liveness (TokenReview)"),
            ));
        }
    }
}

/// The host a JWKS cluster reaches: Istio's `outbound|PORT|SUBSET|HOST`, else the
/// `authority` (without port).
fn jwks_host(jwks_cluster: &str, authority: &str) -> (String, bool) {
    let parts: Vec<&str> = jwks_cluster.split('|').collect();
    match parts.as_slice() {
        ["outbound", _, _, host] => ((*host).to_owned(), true),
        _ => {
            let host = authority
                .rsplit_once(':')
                .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
                .map_or(authority, |(h, _)| h);
            (host.to_owned(), false)
        }
    }
}

fn jwks_resolves(
    issuer: &IssuerView,
    jwks_cluster: &str,
    authority: &str,
    cluster: &Cluster,
    finding: &Make<'_>,
    out: &mut Vec<Finding>,
    skipped: &mut BTreeSet<&'static str>,
) {
    let field = format!("issuers[{}].jwks.cluster", issuer.index);
    let (host, istio) = jwks_host(jwks_cluster, authority);
    let labels: Vec<&str> = host.split('.').collect();
    let in_cluster = labels.get(2) == Some(&"svc");
    if in_cluster {
        let (Some(name), Some(ns)) = (labels.first(), labels.get(1)) else { return };
        // Every cluster has the API server's Service.
        if (*ns, *name) == ("default", "kubernetes") {
            return;
        }
        if !cluster.has("Service") {
            skipped.insert("Service");
            return;
        }
        if cluster.service(ns, name).is_none() {
            out.push(finding(
                Kind::JwksClusterUnresolved,
                &field,
                format!("{jwks_cluster:?} reaches {host}, but there is no Service {ns}/{name}"),
                format!("create Service {ns}/{name} (or point jwks.cluster at the issuer's Service)"),
            ));
            return;
        }
        let endpoint_ready = cluster.endpoints.iter().any(|e| {
            e.metadata.namespace.as_deref() == Some(ns)
                && e.metadata.name.as_deref() == Some(name)
                && e.subsets.iter().flatten().any(|s| !s.addresses.clone().unwrap_or_default().is_empty())
        }) || cluster.endpoint_slices.iter().any(|s| {
            s.metadata.namespace.as_deref() == Some(ns)
                && s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name"))
                    .map(String::as_str)
                    == Some(name)
                && s.endpoints.iter().any(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        });
        if !cluster.has("Endpoints") && !cluster.has("EndpointSlice") {
            skipped.insert("Endpoints or EndpointSlice");
        } else if !endpoint_ready {
            out.push(finding(
                Kind::JwksServiceWithoutEndpoints,
                &field,
                format!("Service {ns}/{name} has no ready endpoint"),
                format!(
                    "make the pods behind Service {ns}/{name} ready (kubectl -n {ns} get endpointslices)"
                ),
            ));
        }
    } else if istio {
        if !cluster.has("ServiceEntry") {
            skipped.insert("ServiceEntry");
            return;
        }
        let known = cluster.service_entries.iter().any(|e| e.spec.hosts.iter().any(|h| h == &host));
        if !known {
            out.push(finding(
                Kind::JwksClusterUnresolved,
                &field,
                format!("{jwks_cluster:?} reaches {host}, but no ServiceEntry declares that host"),
                format!("apply a ServiceEntry for {host} (envoy/istio/jwks-egress.yaml shows one)"),
            ));
        }
    }
}

fn inventory_checks(
    view: &PluginView,
    cluster: &Cluster,
    inventory: &Inventory,
    options: &Options,
    finding: &Make<'_>,
    out: &mut Vec<Finding>,
    skipped: &mut BTreeSet<&'static str>,
) {
    let now = inventory.generated_at.unwrap_or(options.now);
    let recent_since = now.saturating_sub(options.unused_days.saturating_mul(86_400));
    let ours: Vec<&Seen> =
        inventory.identities.iter().filter(|s| view.issuers.iter().any(|i| i.name == s.issuer)).collect();
    let kubernetes = |seen: &Seen| view.kubernetes_issuers().any(|i| i.name == seen.issuer);
    // Whether an allowlist entry names the identity (an issuer-wide rule counts).
    let named = |seen: &Seen| {
        let ns = seen.identity.split_once('/').map(|(ns, _)| ns).filter(|_| kubernetes(seen));
        let profile = view.issuers.iter().filter(|i| i.name == seen.issuer).any(|i| {
            i.service_accounts.iter().any(|(p, _)| pattern_matches(p, &seen.identity))
                || ns.is_some_and(|ns| i.namespaces.iter().any(|p| pattern_matches(p, ns)))
        });
        profile
            || view.allow.iter().any(|rule| {
                let issuer_ok = rule.issuer.as_ref().is_none_or(|i| i == &seen.issuer);
                let identity_ok = rule.identity.as_ref().is_none_or(|p| pattern_matches(p, &seen.identity));
                let ns_ok = rule.namespace.as_ref().is_none_or(|want| ns == Some(want.as_str()));
                issuer_ok
                    && identity_ok
                    && ns_ok
                    && (rule.identity.is_some() || rule.namespace.is_some() || rule.issuer.is_some())
            })
    };
    for seen in &ours {
        let object = format!("identity {}/{}", seen.issuer, seen.identity);
        if !named(seen) {
            out.push(Finding {
                kind: Kind::IdentityNotAllowlisted,
                object: object.clone(),
                message: format!(
                    "{} calls (last seen {}, route {}) and no allowlist or allow rule names it",
                    seen.identity,
                    seen.last_seen,
                    seen.last_route.as_deref().unwrap_or("-")
                ),
                fix: format!("name {} in an allow rule of the routes it needs, or deny it", seen.identity),
                file: None,
            });
        }
        if kubernetes(seen) {
            if let Some((ns, name)) = seen.identity.split_once('/') {
                if !cluster.has("ServiceAccount") {
                    skipped.insert("ServiceAccount");
                } else if cluster.service_account(ns, name).is_none() {
                    out.push(Finding {
                        kind: Kind::IdentityServiceAccountGone,
                        object,
                        message: format!(
                            "{} called until {} but service account {ns}/{name} no longer exists",
                            seen.identity, seen.last_seen
                        ),
                        fix: format!(
                            "deny system:serviceaccount:{ns}:{name} (deny.subjects or the revocation feed) until its tokens expire, and configure liveness"
                        ),
                        file: None,
                    });
                }
            }
        }
    }
    let recent: Vec<&&Seen> = ours.iter().filter(|s| s.last_seen >= recent_since).collect();
    let unused = |field: &str, entry: &str, used: bool, out: &mut Vec<Finding>| {
        if !used {
            out.push(finding(
                Kind::AllowlistEntryUnused,
                field,
                format!("no identity matching {entry:?} called in the last {} days", options.unused_days),
                format!("remove {entry:?} if its workload is gone"),
            ));
        }
    };
    for issuer in view.kubernetes_issuers() {
        let mine: Vec<&&&Seen> = recent.iter().filter(|s| s.issuer == issuer.name).collect();
        for (j, ns) in issuer.namespaces.iter().enumerate() {
            let used =
                mine.iter().any(|s| s.identity.split_once('/').is_some_and(|(n, _)| pattern_matches(ns, n)));
            unused(&format!("issuers[{}].profile.namespaces[{j}]", issuer.index), ns, used, out);
        }
        for (j, (entry, _)) in issuer.service_accounts.iter().enumerate() {
            let used = mine.iter().any(|s| pattern_matches(entry, &s.identity));
            unused(&format!("issuers[{}].profile.service_accounts[{j}]", issuer.index), entry, used, out);
        }
    }
    for rule in &view.allow {
        let matching = |s: &&&Seen| {
            rule.issuer.as_ref().is_none_or(|i| i == &s.issuer)
                && rule.identity.as_ref().is_none_or(|p| pattern_matches(p, &s.identity))
                && rule
                    .namespace
                    .as_ref()
                    .is_none_or(|ns| s.identity.split_once('/').is_some_and(|(n, _)| n == ns))
        };
        if let Some(entry) = rule.identity.as_ref().or(rule.namespace.as_ref()) {
            unused(&rule.at, entry, recent.iter().any(matching), out);
        }
    }
}

/// Finds the gateway: `--gateway`, a Deployment labelled [`GATEWAY_LABEL`], the
/// Deployment a WasmPlugin or EnvoyFilter selects, or that selector alone.
fn find_gateway(cluster: &Cluster, options: &Options) -> Result<Gateway, String> {
    let from_deployment = |d: &k8s_openapi::api::apps::v1::Deployment, by: &str| {
        let namespace = d.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let template = d.spec.as_ref().map(|s| &s.template);
        let labels =
            template.and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.clone()).unwrap_or_default();
        let service_account = template
            .and_then(|t| t.spec.as_ref())
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let name = d.metadata.name.clone().unwrap_or_default();
        Gateway {
            found_by: format!("Deployment {namespace}/{name} ({by}), service account {service_account}"),
            namespace,
            labels,
            service_account,
        }
    };
    let named = |ns: &str, name: &str| {
        cluster.deployments.iter().find(|d| {
            d.metadata.namespace.as_deref().unwrap_or("default") == ns
                && d.metadata.name.as_deref() == Some(name)
        })
    };
    if let Some(wanted) = &options.gateway {
        let (ns, name) =
            wanted.split_once('/').ok_or_else(|| format!("--gateway {wanted}: use NAMESPACE/NAME"))?;
        return named(ns, name)
            .map(|d| from_deployment(d, "--gateway"))
            .ok_or_else(|| format!("--gateway {wanted}: no such Deployment in the cluster input"));
    }
    let labelled = cluster.deployments.iter().find(|d| {
        d.metadata.labels.as_ref().and_then(|l| l.get(GATEWAY_LABEL)).map(String::as_str) == Some("true")
    });
    if let Some(d) = labelled {
        return Ok(from_deployment(d, &format!("label {GATEWAY_LABEL}")));
    }
    for hint in &options.hints {
        let selected = cluster.deployments.iter().find(|d| {
            let g = from_deployment(d, "");
            g.namespace == hint.namespace && hint.labels.iter().all(|(k, v)| g.labels.get(k) == Some(v))
        });
        if let Some(d) = selected {
            return Ok(from_deployment(d, "selected by the plugin's WasmPlugin/EnvoyFilter"));
        }
    }
    if let Some(hint) = options.hints.first() {
        let (service_account, why) = match (&options.gateway_service_account, hint.labels.get("istio")) {
            (Some(sa), _) => (sa.clone(), "--gateway-service-account".to_owned()),
            (None, Some(v)) if v == "ingressgateway" => {
                (ISTIO_INGRESS_SERVICE_ACCOUNT.to_owned(), "Istio's ingress gateway default".to_owned())
            }
            (None, _) => return Err(format!(
                "the plugin's selector ({} in {}) finds no Deployment in the cluster input; give it, or --gateway-service-account",
                reach::labels_text(&hint.labels),
                hint.namespace
            )),
        };
        return Ok(Gateway {
            found_by: format!(
                "pods {} in {} (the plugin's selector), service account {service_account} ({why})",
                reach::labels_text(&hint.labels),
                hint.namespace
            ),
            namespace: hint.namespace.clone(),
            labels: hint.labels.clone(),
            service_account,
        });
    }
    Err("no Deployment is labelled nhi-guard.io/gateway=true and no WasmPlugin or EnvoyFilter selects one"
        .into())
}

/// The machine backends: `(object, pods)`.
fn backends(cluster: &Cluster) -> Vec<(String, Vec<PodView>)> {
    let all = reach::pods(cluster);
    let protected: BTreeSet<String> = cluster
        .namespaces
        .iter()
        .filter(|n| {
            n.metadata.labels.as_ref().and_then(|l| l.get(PROTECTED_LABEL)).map(String::as_str)
                == Some("true")
        })
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    let mut out = Vec::new();
    for service in &cluster.services {
        let ns = service.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let name = service.metadata.name.clone().unwrap_or_default();
        let marked = |m: &Option<BTreeMap<String, String>>| {
            m.as_ref().and_then(|m| m.get(BACKEND_LABEL)).map(String::as_str) == Some("true")
        };
        if !(marked(&service.metadata.labels)
            || marked(&service.metadata.annotations)
            || protected.contains(&ns))
        {
            continue;
        }
        let selector = service.spec.as_ref().and_then(|s| s.selector.clone()).unwrap_or_default();
        let mut pods: Vec<PodView> = all
            .iter()
            .filter(|p| {
                p.namespace == ns
                    && !selector.is_empty()
                    && selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
            })
            .cloned()
            .collect();
        if pods.is_empty() {
            pods.push(PodView { namespace: ns.clone(), name: format!("(pods of {name})"), labels: selector });
        }
        out.push((format!("Service {ns}/{name}"), pods));
    }
    for ns in &protected {
        let pods: Vec<PodView> = all.iter().filter(|p| &p.namespace == ns).cloned().collect();
        let pods = if pods.is_empty() {
            vec![PodView { namespace: ns.clone(), name: "(any pod)".into(), labels: BTreeMap::new() }]
        } else {
            pods
        };
        out.push((format!("Namespace {ns}"), pods));
    }
    out
}

fn reachability(
    cluster: &Cluster,
    options: &Options,
    out: &mut Vec<Finding>,
    skipped: &mut BTreeSet<&'static str>,
) -> (Option<Gateway>, usize) {
    if !cluster.has("Service") && !cluster.has("Namespace") {
        skipped.insert("Service");
        return (None, 0);
    }
    let backends = backends(cluster);
    if backends.is_empty() {
        out.push(Finding {
            kind: Kind::NoBackendsDeclared,
            object: "cluster input".into(),
            message: format!(
                "no Service carries {BACKEND_LABEL}=true and no Namespace {PROTECTED_LABEL}=true"
            ),
            fix: format!("label the services that trust the identity headers {BACKEND_LABEL}=true"),
            file: None,
        });
        return (None, 0);
    }
    let gateway = match find_gateway(cluster, options) {
        Ok(gateway) => gateway,
        Err(why) => {
            out.push(Finding {
                kind: Kind::GatewayNotFound,
                object: "cluster input".into(),
                message: format!("{why}: the backends' policies cannot be checked against it"),
                fix: format!("include the gateway's Deployment (label it {GATEWAY_LABEL}=true) or pass --gateway NAMESPACE/NAME"),
                file: None,
            });
            return (None, backends.len());
        }
    };
    if !cluster.has("Pod") {
        // Policies are judged by their selectors, but the backends' own pods (their
        // labels: which policies select them) come from the dump; without pods, each
        // backend stands for a pod with its Service's selector labels, or none.
        skipped.insert("Pod");
    }
    for (object, pods) in &backends {
        let mut open = Vec::new();
        for pod in pods {
            match reach::protection(cluster, pod, &gateway, &options.trust_domain) {
                Protection::NetworkPolicy => {}
                Protection::Istio { strict: true } => {}
                Protection::Istio { strict: false } => out.push(Finding {
                    kind: Kind::MtlsNotStrict,
                    object: object.clone(),
                    message: format!("an AuthorizationPolicy admits only the gateway's principal, but mTLS is not STRICT for {}", pod.name),
                    fix: format!("apply a PeerAuthentication with mtls.mode STRICT in namespace {}", pod.namespace),
                    file: None,
                }),
                Protection::GatewayShutOut { why, by } => out.push(Finding {
                    kind: Kind::GatewayShutOut,
                    object: object.clone(),
                    message: why,
                    fix: match by {
                        Layer::NetworkPolicy => format!(
                            "admit namespace {} pods {} in the backend's NetworkPolicy",
                            gateway.namespace,
                            reach::labels_text(&gateway.labels)
                        ),
                        Layer::Istio => format!(
                            "admit principal {} in an ALLOW rule of the backend's AuthorizationPolicy",
                            gateway.principal(&options.trust_domain)
                        ),
                    },
                    file: None,
                }),
                Protection::Open(why) => open.extend(why),
            }
        }
        if !open.is_empty() {
            open.sort();
            open.dedup();
            let ns = pods.first().map(|p| p.namespace.as_str()).unwrap_or("default");
            out.push(Finding {
                kind: Kind::BackendReachableWithoutGateway,
                object: object.clone(),
                message: open.join("; "),
                fix: format!(
                    "apply envoy/k8s/backend-networkpolicy.yaml in namespace {ns} (ingress only from the gateway), or \
                     envoy/istio/backend-authorization.yaml (principal {} only, STRICT mTLS)",
                    gateway.principal(&options.trust_domain)
                ),
                file: None,
            });
        }
    }
    (Some(gateway), backends.len())
}

#[cfg(test)]
mod tests {
    use nhi_guard_core::observe::inventory::{self, InventoryConfig, Seen as Tracked};

    use super::Inventory;

    /// `check --cluster --inventory` reads what the filter itself answers on
    /// `inventory.path` (RFC 3339 times), as well as Unix seconds.
    #[test]
    fn the_filters_own_inventory_json_is_read() {
        let config: InventoryConfig = inventory::compile(
            serde_json::from_value(serde_json::json!({"path": "/inv", "source_cidrs": ["10.0.0.0/8"]}))
                .unwrap(),
            "inventory",
        )
        .unwrap();
        let seen = [Tracked {
            issuer: "k8s".into(),
            identity: "ci/deployer".into(),
            first_ms: 1_800_000_000_000,
            last_ms: 1_800_000_060_500,
            requests: 7,
            route: Some("api".into()),
            source: Some("10.0.0.7".into()),
            returned_ms: 1_800_000_030_000,
        }];
        let text = inventory::render(&config, &seen, &[], 1_800_000_090_000);
        let read = Inventory::parse(&text).unwrap();
        assert_eq!(read.generated_at, Some(1_800_000_090));
        let one = &read.identities[0];
        assert_eq!((one.issuer.as_str(), one.identity.as_str()), ("k8s", "ci/deployer"));
        assert_eq!(
            (one.first_seen, one.last_seen, one.requests),
            (Some(1_800_000_000), 1_800_000_060, Some(7))
        );
        let unix =
            Inventory::parse(r#"[{"issuer": "k8s", "identity": "a/b", "last_seen": 1800000000}]"#).unwrap();
        assert_eq!(unix.identities[0].last_seen, 1_800_000_000);
        let bad = Inventory::parse(r#"[{"issuer": "k8s", "identity": "a/b", "last_seen": "yesterday"}]"#);
        assert!(bad.unwrap_err().contains("neither Unix seconds nor an RFC 3339 time"));
    }
}
