//! What a request's decision went through, for `nhi-guard explain`: the verify
//! stage's conclusion and the route verdict with the rule that decided it.
//!
//! Collected only when the request asks for it ([`super::Request::trace`] is
//! `Some`): the filter never does. It is what the stages compute anyway, copied
//! as they go — no decision is made twice or differently, and no host call is
//! added. Everything else `explain` shows (headers forwarded, the reply, the quota
//! charge) is already in the request's record and on the host.

use crate::policy::{ClientClass, Decision, Rule, Verdict};
use crate::reason::Rejection;

use super::verify::Authenticated;

/// A request's decision, stage by stage.
#[derive(Debug, Default, Clone)]
pub struct Trace {
    /// What the verify stage concluded (after the certificate binding): `None`
    /// when there was no credential to judge.
    pub verification: Option<Result<Authenticated, Rejection>>,
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
