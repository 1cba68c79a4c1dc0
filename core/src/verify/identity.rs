//! A verified identity as policy sees it: who, from which issuer, with which claims.

use serde_json::{Map, Value};

use crate::claims::path::claim;

use super::Verified;

/// The claim holding the Kubernetes namespace in projected service-account tokens.
pub const KUBERNETES_NAMESPACE_CLAIM: &str = "kubernetes.io.namespace";

const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// How an identity was proven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A bearer token of a configured issuer.
    Token,
    /// A trusted client certificate alone (`accept_certificate_identity`).
    Certificate,
    /// A partner's HTTP Message Signature (RFC 9421).
    Signature,
    /// A partner's API key.
    ApiKey,
}

/// A verified identity as route policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct IdentityInfo<'a> {
    /// The forwarded identity: `NS/NAME` for Kubernetes service accounts, else `sub`.
    pub identity: &'a str,
    /// The configured issuer *name* (not the `iss` URL).
    pub issuer: &'a str,
    /// The verified `sub`.
    pub subject: &'a str,
    /// Every verified claim.
    pub claims: &'a Map<String, Value>,
    /// The thumbprint of the DPoP key the request proved it holds, if it did.
    pub jkt: Option<&'a str>,
    /// How it was proven (a route may require a signature).
    pub via: Via,
}

impl<'a> IdentityInfo<'a> {
    pub fn new(verified: &'a Verified, issuer: &'a str, identity: &'a str) -> Self {
        IdentityInfo {
            identity,
            issuer,
            subject: &verified.subject,
            claims: &verified.claims,
            jkt: None,
            via: Via::Token,
        }
    }

    /// The Kubernetes namespace: from a `system:serviceaccount:NS:NAME` subject,
    /// else from the `kubernetes.io.namespace` claim (a string), else none.
    pub fn namespace(&self) -> Option<&'a str> {
        let from_subject = self
            .subject
            .strip_prefix(SERVICE_ACCOUNT_PREFIX)
            .and_then(|rest| rest.split_once(':'))
            .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains(':'))
            .map(|(ns, _)| ns);
        from_subject.or_else(|| claim(self.claims, KUBERNETES_NAMESPACE_CLAIM)?.as_str())
    }

    /// The `jti` claim, when it is a string.
    pub fn jti(&self) -> Option<&'a str> {
        self.claims.get("jti").and_then(Value::as_str)
    }
}
