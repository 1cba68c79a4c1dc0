//! What a request's decision went through, for `nhi-guard explain`: the verify
//! (or partner) stage's conclusion, the liveness stage's, the DPoP stage's, the
//! behaviour stage's, and the route verdict with the rule that decided it.
//!
//! Collected only when the request asks for it ([`super::Request::trace`] is
//! `Some`): the filter never does. It is what the stages compute anyway, copied
//! as they go — no decision is made twice or differently, and no host call is
//! added. Everything else `explain` shows (headers forwarded, the reply, the quota
//! charge) is already in the request's record and on the host.

use crate::policy::{ClientClass, Decision, Denial, Rule, Verdict};
use crate::reason::Rejection;

use super::verify::Authenticated;

/// A request's decision, stage by stage.
#[derive(Debug, Default, Clone)]
pub struct Trace {
    /// What the verify stage concluded (after the certificate binding), or the
    /// partner stage for a signature or API key (after its nonce and body): `None`
    /// when there was no credential to judge.
    pub verification: Option<Result<Authenticated, Rejection>>,
    /// The partner credential the partner stage judged: `"signature"` or `"API key"`.
    pub partner: Option<&'static str>,
    /// What the liveness stage concluded about a verified token of an issuer with
    /// `profile.liveness`: `None` when it judged none; `Ok(())` alive; `Err` why the
    /// token is refused (`workload_gone`, `liveness_unavailable`).
    pub liveness: Option<Result<(), Rejection>>,
    /// What the DPoP stage concluded about a verified token: `None` when it judged
    /// none; `Ok(None)` a bearer token nothing requires a proof for; `Ok(Some(jkt))`
    /// a proof that holds, with its key's thumbprint; `Err` why not.
    pub dpop: Option<Result<Option<String>, Rejection>>,
    /// What the behaviour stage concluded: `None` when it did not run (no
    /// `behaviour.detect`, or the request was not an allowed machine request).
    /// The anomalies flagged are in the request's record.
    pub behaviour: Option<TracedBehaviour>,
    /// The route verdict, as enforced (again after a quota refusal replaced it).
    pub verdict: Option<TracedVerdict>,
}

/// A [`Verdict`] with owned parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracedVerdict {
    pub route: Option<String>,
    pub client_class: ClientClass,
    pub decision: Decision,
    pub shadow: bool,
    pub rule: Rule,
}

impl From<&Verdict<'_>> for TracedVerdict {
    fn from(verdict: &Verdict<'_>) -> Self {
        TracedVerdict {
            route: verdict.route.map(str::to_owned),
            client_class: verdict.client_class,
            decision: verdict.decision.clone(),
            shadow: verdict.shadow,
            rule: verdict.rule,
        }
    }
}

/// The behaviour stage's conclusion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracedBehaviour {
    /// The refusal of an enforced anomaly kind; `None`: the request went on.
    pub refused: Option<Denial>,
}
