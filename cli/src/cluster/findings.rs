//! Every kind of finding `check --cluster` reports, with its severity and the fix
//! that applies to every instance. A finding adds the object and what it saw.

use std::fmt;

/// How bad a finding is. `error` fails `check --cluster` (exit 1); `warning` only
/// with `--fail-on warning`; `note` never.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
    Note,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "note",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kinds of finding. Their codes are stable: CI filters and SARIF rule ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    NamespaceMissing,
    ServiceAccountMissing,
    ServiceAccountReplaced,
    ServiceAccountUnused,
    BackendReachableWithoutGateway,
    GatewayShutOut,
    MtlsNotStrict,
    NoBackendsDeclared,
    GatewayNotFound,
    ApiServerAudience,
    JwksClusterUnresolved,
    JwksServiceWithoutEndpoints,
    LongLivedTokensWithoutLiveness,
    ProjectedTokenTooLong,
    IdentityNotAllowlisted,
    AllowlistEntryUnused,
    IdentityServiceAccountGone,
    InputMissing,
}

impl Kind {
    pub const ALL: [Kind; 18] = [
        Kind::NamespaceMissing,
        Kind::ServiceAccountMissing,
        Kind::ServiceAccountReplaced,
        Kind::ServiceAccountUnused,
        Kind::BackendReachableWithoutGateway,
        Kind::GatewayShutOut,
        Kind::MtlsNotStrict,
        Kind::NoBackendsDeclared,
        Kind::GatewayNotFound,
        Kind::ApiServerAudience,
        Kind::JwksClusterUnresolved,
        Kind::JwksServiceWithoutEndpoints,
        Kind::LongLivedTokensWithoutLiveness,
        Kind::ProjectedTokenTooLong,
        Kind::IdentityNotAllowlisted,
        Kind::AllowlistEntryUnused,
        Kind::IdentityServiceAccountGone,
        Kind::InputMissing,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Kind::NamespaceMissing => "namespace-missing",
            Kind::ServiceAccountMissing => "service-account-missing",
            Kind::ServiceAccountReplaced => "service-account-replaced",
            Kind::ServiceAccountUnused => "service-account-unused",
            Kind::BackendReachableWithoutGateway => "backend-reachable-without-gateway",
            Kind::GatewayShutOut => "gateway-shut-out",
            Kind::MtlsNotStrict => "mtls-not-strict",
            Kind::NoBackendsDeclared => "no-backends-declared",
            Kind::GatewayNotFound => "gateway-not-found",
            Kind::ApiServerAudience => "api-server-audience",
            Kind::JwksClusterUnresolved => "jwks-cluster-unresolved",
            Kind::JwksServiceWithoutEndpoints => "jwks-service-without-endpoints",
            Kind::LongLivedTokensWithoutLiveness => "long-lived-tokens-without-liveness",
            Kind::ProjectedTokenTooLong => "projected-token-too-long",
            Kind::IdentityNotAllowlisted => "identity-not-allowlisted",
            Kind::AllowlistEntryUnused => "allowlist-entry-unused",
            Kind::IdentityServiceAccountGone => "identity-service-account-gone",
            Kind::InputMissing => "input-missing",
        }
    }

    pub fn severity(self) -> Severity {
        match self {
            Kind::NamespaceMissing
            | Kind::ServiceAccountMissing
            | Kind::ServiceAccountReplaced
            | Kind::BackendReachableWithoutGateway
            | Kind::GatewayShutOut
            | Kind::ApiServerAudience
            | Kind::JwksClusterUnresolved
            | Kind::ProjectedTokenTooLong
            | Kind::IdentityServiceAccountGone => Severity::Error,
            Kind::ServiceAccountUnused
            | Kind::MtlsNotStrict
            | Kind::NoBackendsDeclared
            | Kind::GatewayNotFound
            | Kind::JwksServiceWithoutEndpoints
            | Kind::LongLivedTokensWithoutLiveness
            | Kind::IdentityNotAllowlisted
            | Kind::AllowlistEntryUnused => Severity::Warning,
            Kind::InputMissing => Severity::Note,
        }
    }

    /// One line: what is wrong, whatever the instance.
    pub fn title(self) -> &'static str {
        match self {
            Kind::NamespaceMissing => "an allowlisted namespace does not exist",
            Kind::ServiceAccountMissing => "an allowlisted service account does not exist",
            Kind::ServiceAccountReplaced => "an allowlisted service account was recreated (its UID changed)",
            Kind::ServiceAccountUnused => "an allowlisted service account runs no workload",
            Kind::BackendReachableWithoutGateway => "a machine backend is reachable without the gateway",
            Kind::GatewayShutOut => "the gateway cannot reach a machine backend",
            Kind::MtlsNotStrict => "a backend's Istio policy relies on principals without STRICT mTLS",
            Kind::NoBackendsDeclared => "no machine backend is declared",
            Kind::GatewayNotFound => "the gateway's pods were not found",
            Kind::ApiServerAudience => "an issuer accepts the Kubernetes API server's audience",
            Kind::JwksClusterUnresolved => "a JWKS cluster resolves to no service",
            Kind::JwksServiceWithoutEndpoints => "a JWKS service has no ready endpoint",
            Kind::LongLivedTokensWithoutLiveness => "long-lived Kubernetes tokens without liveness",
            Kind::ProjectedTokenTooLong => "a workload's projected token outlives max_token_lifetime_seconds",
            Kind::IdentityNotAllowlisted => "an identity calls that no allowlist names",
            Kind::AllowlistEntryUnused => "an allowlist entry no identity used recently",
            Kind::IdentityServiceAccountGone => "a calling identity's service account is gone",
            Kind::InputMissing => "some checks were skipped: their objects were not given",
        }
    }

    /// Why it matters, for SARIF's rule help and the docs.
    pub fn help(self) -> &'static str {
        match self {
            Kind::NamespaceMissing | Kind::ServiceAccountMissing => {
                "An allowlist entry for something that does not exist admits whoever creates it next. \
                 Remove the entry, or create the object if it is about to be deployed."
            }
            Kind::ServiceAccountReplaced => {
                "A service account deleted and recreated under the same name is a new identity; the pinned \
                 UID refuses its tokens (service_account_replaced). Update the pin if the new account is \
                 legitimate."
            }
            Kind::ServiceAccountUnused => {
                "Accounts should die with their workloads: an allowlisted account that runs nothing is a \
                 credential nobody watches."
            }
            Kind::BackendReachableWithoutGateway => {
                "The identity headers nhi-guard forwards are only as trustworthy as the path to the backend: \
                 a pod that reaches the backend directly can send any x-nhi-identity. Apply a NetworkPolicy \
                 (envoy/k8s/backend-networkpolicy.yaml) or an Istio AuthorizationPolicy with STRICT mTLS \
                 (envoy/istio/backend-authorization.yaml) that admits only the gateway."
            }
            Kind::GatewayShutOut => {
                "The backend's policy admits nobody who is the gateway: every request through nhi-guard fails. \
                 Admit the gateway's namespace and pod labels (or its principal)."
            }
            Kind::MtlsNotStrict => {
                "Istio principals exist only on mutual TLS: make PeerAuthentication STRICT for the backend so \
                 that plaintext cannot be mistaken for the gateway."
            }
            Kind::NoBackendsDeclared => {
                "Nothing says which services trust the identity headers, so reachability was not checked. \
                 Label them nhi-guard.io/backend=true (or their namespace nhi-guard.io/protected=true)."
            }
            Kind::GatewayNotFound => {
                "Without the gateway's pods, the checks cannot tell whether a policy admits only the gateway. \
                 Give its Deployment in the cluster input, or --gateway NAMESPACE/NAME."
            }
            Kind::ApiServerAudience => {
                "Every pod's default token carries the API server's audience; accepting it accepts tokens \
                 meant for the API server. Request a dedicated audience in the serviceAccountToken projection."
            }
            Kind::JwksClusterUnresolved => {
                "The filter cannot fetch keys through a cluster that reaches nothing: every token of the \
                 issuer is refused with 503 keys_unavailable. Create the Service (or Istio ServiceEntry)."
            }
            Kind::JwksServiceWithoutEndpoints => {
                "The JWKS service exists but has no ready endpoint: key fetches fail until one is ready."
            }
            Kind::LongLivedTokensWithoutLiveness => {
                "A verified token is trusted until exp, whatever happens to its pod. With long lifetimes, \
                 configure profile.liveness (TokenReview) or bound max_token_lifetime_seconds to an hour."
            }
            Kind::ProjectedTokenTooLong => {
                "The workload's token lives longer than the profile accepts: every request it makes is \
                 refused with lifetime_too_long. Lower expirationSeconds in its projection."
            }
            Kind::IdentityNotAllowlisted => {
                "The identity is admitted only because nothing restricts it (no allow rule names it). Name \
                 it in an allow rule or a profile allowlist, or deny it."
            }
            Kind::AllowlistEntryUnused => {
                "Allowlist entries no identity uses widen the gateway for nothing: remove them."
            }
            Kind::IdentityServiceAccountGone => {
                "The identity still calls (its tokens are valid until exp) but its service account is gone: \
                 revoke it (deny, or the lifecycle feed) and configure liveness."
            }
            Kind::InputMissing => {
                "Give the missing kinds to check --cluster (kubectl get KIND -A -o json)."
            }
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// One finding: its kind, the object it is about, what was seen and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    pub kind: Kind,
    /// `Namespace payments`, `Service payments/api`, `WasmPlugin istio-system/nhi-guard: issuers[0]…`.
    pub object: String,
    pub message: String,
    pub fix: String,
    /// The file the object came from, when it is a configuration file.
    pub file: Option<String>,
}

impl Finding {
    pub fn severity(&self) -> Severity {
        self.kind.severity()
    }
}
