//! Route-policy reason codes and the local replies that carry them.
//!
//! Same contract as [`crate::reason`]: every refusal has one machine-readable code,
//! and the code decides the status and the `WWW-Authenticate` challenge. Route
//! replies add the route name to the JSON body.

use std::fmt;

use serde::Serialize;

use crate::reason::{quoted, LocalReply, Reason, Rejection};

/// Why route policy refused a request. The `code()` strings are public API, like
/// [`Reason`]'s, and do not overlap with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteDenial {
    /// A verified identity that no `allow` rule of the route admits.
    NotAllowed,
    /// The connection's source address is outside the route's (or the otherwise
    /// fitting allow rule's) `source_cidrs`.
    SourceNotAllowed,
    /// The subject (or forwarded identity) is on a deny list.
    SubjectDenied,
    /// The token's `jti` is on a deny list: the credential itself is no longer
    /// valid, which is an authentication failure (RFC 6750 `invalid_token`).
    TokenRevoked,
    /// The request's DPoP key is on a deny list (`deny.jkt`): like a revoked token,
    /// an authentication failure.
    KeyRevoked,
    /// A machine credential on a route for people.
    MachineOnHumanRoute,
    /// The path reads as another route once normalized (see `matcher`).
    AmbiguousPath,
    /// `behaviour` anomalies in `enforce` mode (`crate::behaviour`): far above the
    /// identity's usual rate, a route class or source network it never used, an
    /// error spike, a return after a long silence.
    AnomalyBurst,
    AnomalyNewRoute,
    AnomalyNewSource,
    AnomalyErrorSpike,
    AnomalyDormantReturned,
}

impl RouteDenial {
    pub const ALL: [RouteDenial; 12] = [
        RouteDenial::NotAllowed,
        RouteDenial::SourceNotAllowed,
        RouteDenial::SubjectDenied,
        RouteDenial::TokenRevoked,
        RouteDenial::KeyRevoked,
        RouteDenial::MachineOnHumanRoute,
        RouteDenial::AmbiguousPath,
        RouteDenial::AnomalyBurst,
        RouteDenial::AnomalyNewRoute,
        RouteDenial::AnomalyNewSource,
        RouteDenial::AnomalyErrorSpike,
        RouteDenial::AnomalyDormantReturned,
    ];

    pub fn code(self) -> &'static str {
        match self {
            RouteDenial::NotAllowed => "not_allowed",
            RouteDenial::SourceNotAllowed => "source_not_allowed",
            RouteDenial::SubjectDenied => "subject_denied",
            RouteDenial::TokenRevoked => "token_revoked",
            RouteDenial::KeyRevoked => "dpop_key_revoked",
            RouteDenial::MachineOnHumanRoute => "machine_on_human_route",
            RouteDenial::AmbiguousPath => "ambiguous_path",
            RouteDenial::AnomalyBurst => "anomaly_burst",
            RouteDenial::AnomalyNewRoute => "anomaly_new_route",
            RouteDenial::AnomalyNewSource => "anomaly_new_source",
            RouteDenial::AnomalyErrorSpike => "anomaly_error_spike",
            RouteDenial::AnomalyDormantReturned => "anomaly_dormant_returned",
        }
    }

    /// The status unless the route overrides it; only 403s can be overridden.
    pub fn status(self) -> u16 {
        match self {
            RouteDenial::TokenRevoked | RouteDenial::KeyRevoked => 401,
            RouteDenial::AmbiguousPath => 400,
            RouteDenial::AnomalyBurst => 429,
            RouteDenial::AnomalyErrorSpike => 503,
            _ => 403,
        }
    }

    /// A fixed explanation: nothing from the request or token is echoed.
    pub fn detail(self) -> &'static str {
        match self {
            RouteDenial::NotAllowed => "the identity is not allowed on this route",
            RouteDenial::SourceNotAllowed => "the source address is not allowed on this route",
            RouteDenial::SubjectDenied => "the subject is denied",
            RouteDenial::TokenRevoked => "the token has been revoked",
            RouteDenial::KeyRevoked => "the DPoP key has been revoked",
            RouteDenial::MachineOnHumanRoute => "machine credentials are not accepted on this route",
            RouteDenial::AmbiguousPath => "the request path is ambiguous once normalized",
            RouteDenial::AnomalyBurst => "far more requests than this identity usually makes",
            RouteDenial::AnomalyNewRoute => "this identity does not use this route",
            RouteDenial::AnomalyNewSource => "this identity does not call from this network",
            RouteDenial::AnomalyErrorSpike => {
                "this identity's requests are failing; refused until the interval ends"
            }
            RouteDenial::AnomalyDormantReturned => "this identity has been silent for too long",
        }
    }
}

impl fmt::Display for RouteDenial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Either kind of refusal a verdict can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// Verification failed (or no token where one is required).
    Auth(Reason),
    Route(RouteDenial),
}

impl DenyReason {
    pub fn code(self) -> &'static str {
        match self {
            DenyReason::Auth(r) => r.code(),
            DenyReason::Route(r) => r.code(),
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A refusal with its final status (after any per-route override).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: DenyReason,
    pub status: u16,
    /// Written by nhi-guard (or by the verifier, which never echoes token bytes).
    pub detail: String,
}

impl Denial {
    pub fn auth(rejection: &Rejection) -> Denial {
        Denial {
            reason: DenyReason::Auth(rejection.reason),
            status: rejection.reason.status(),
            detail: rejection.detail.clone(),
        }
    }

    /// `status_override` replaces 403 only: a 401 must stay a challenge (RFC
    /// 7235 §3.1) and a 400 describes the request, not the caller.
    pub fn route(denial: RouteDenial, status_override: Option<u16>) -> Denial {
        let status = match (denial.status(), status_override) {
            (403, Some(status)) => status,
            (status, _) => status,
        };
        Denial { reason: DenyReason::Route(denial), status, detail: denial.detail().to_owned() }
    }

    /// The `error` member of the JSON body: the class of failure, whatever the
    /// (possibly overridden) status.
    pub fn error(&self) -> &'static str {
        match self.reason {
            DenyReason::Auth(r) => r.error(),
            DenyReason::Route(RouteDenial::TokenRevoked | RouteDenial::KeyRevoked) => "unauthenticated",
            DenyReason::Route(RouteDenial::AmbiguousPath) => "bad_request",
            DenyReason::Route(_) => match self.status {
                429 => "rate_limited",
                503 => "unavailable",
                _ => "forbidden",
            },
        }
    }

    /// The reply: `{error, reason, route, request_id}`. Authentication failures
    /// keep [`LocalReply::for_rejection`]'s status and headers. `not_allowed` with
    /// status 403 carries an RFC 6750 `insufficient_scope` challenge; a route that
    /// overrode the status (to hide itself, say) gets no challenge.
    pub fn local_reply(&self, route: Option<&str>, realm: &str, request_id: Option<&str>) -> LocalReply {
        let mut reply = match self.reason {
            DenyReason::Auth(reason) => {
                LocalReply::for_rejection(&Rejection::new(reason, self.detail.clone()), realm, request_id)
            }
            DenyReason::Route(denial) => {
                let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
                let challenge = match (denial, self.status) {
                    (RouteDenial::TokenRevoked | RouteDenial::KeyRevoked, 401) => Some("invalid_token"),
                    (RouteDenial::NotAllowed, 403) => Some("insufficient_scope"),
                    _ => None,
                };
                if let Some(error) = challenge {
                    headers.push((
                        "www-authenticate".to_owned(),
                        format!(
                            "Bearer realm=\"{}\", error=\"{error}\", error_description=\"{}\"",
                            quoted(realm),
                            quoted(&self.detail)
                        ),
                    ));
                }
                LocalReply { status: self.status, headers, body: String::new() }
            }
        };
        let body = Body { error: self.error(), reason: self.reason.code(), route, request_id };
        // Serializing four strings cannot fail; fall back to a fixed body anyway.
        reply.body = serde_json::to_string(&body)
            .unwrap_or_else(|_| format!("{{\"reason\":\"{}\"}}", self.reason.code()));
        reply
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.reason, self.detail)
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn header<'a>(reply: &'a LocalReply, name: &str) -> Option<&'a str> {
        reply.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn body(reply: &LocalReply) -> serde_json::Value {
        serde_json::from_str(&reply.body).unwrap()
    }

    #[test]
    fn codes_are_unique_snake_case_and_apart_from_reason_codes() {
        let mut codes: Vec<_> = RouteDenial::ALL.iter().map(|r| r.code()).collect();
        assert!(codes.iter().all(|c| c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_')));
        codes.extend(Reason::ALL.iter().map(|r| r.code()));
        let n = codes.len();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), n);
    }

    #[test]
    fn not_allowed_is_403_with_insufficient_scope() {
        let reply = Denial::route(RouteDenial::NotAllowed, None).local_reply(
            Some("deploy-api"),
            "nhi-guard",
            Some("r1"),
        );
        assert_eq!(reply.status, 403);
        assert_eq!(
            header(&reply, "www-authenticate"),
            Some("Bearer realm=\"nhi-guard\", error=\"insufficient_scope\", error_description=\"the identity is not allowed on this route\"")
        );
        assert_eq!(header(&reply, "content-type"), Some("application/json"));
        assert_eq!(
            body(&reply),
            json!({"error": "forbidden", "reason": "not_allowed", "route": "deploy-api", "request_id": "r1"})
        );
    }

    #[test]
    fn other_403s_carry_no_challenge() {
        for denial in
            [RouteDenial::SourceNotAllowed, RouteDenial::SubjectDenied, RouteDenial::MachineOnHumanRoute]
        {
            let reply = Denial::route(denial, None).local_reply(Some("web"), "r", None);
            assert_eq!(reply.status, 403, "{denial}");
            assert_eq!(header(&reply, "www-authenticate"), None, "{denial}");
            assert_eq!(body(&reply), json!({"error": "forbidden", "reason": denial.code(), "route": "web"}));
        }
    }

    #[test]
    fn revoked_token_is_401_invalid_token() {
        let reply = Denial::route(RouteDenial::TokenRevoked, Some(404)).local_reply(Some("a"), "r", None);
        assert_eq!(reply.status, 401, "a 401 is never overridden");
        assert_eq!(
            header(&reply, "www-authenticate"),
            Some("Bearer realm=\"r\", error=\"invalid_token\", error_description=\"the token has been revoked\"")
        );
        assert_eq!(body(&reply)["error"], "unauthenticated");
    }

    #[test]
    fn ambiguous_path_is_400_without_challenge() {
        let reply = Denial::route(RouteDenial::AmbiguousPath, Some(404)).local_reply(None, "r", None);
        assert_eq!(reply.status, 400);
        assert_eq!(header(&reply, "www-authenticate"), None);
        assert_eq!(body(&reply), json!({"error": "bad_request", "reason": "ambiguous_path"}));
    }

    #[test]
    fn overridden_status_drops_the_challenge() {
        let d = Denial::route(RouteDenial::NotAllowed, Some(404));
        let reply = d.local_reply(Some("hidden"), "r", None);
        assert_eq!(reply.status, 404);
        assert_eq!(header(&reply, "www-authenticate"), None);
        assert_eq!(body(&reply)["reason"], "not_allowed");
    }

    #[test]
    fn authentication_failures_keep_their_reply_and_gain_the_route() {
        let d = Denial::auth(&Rejection::new(Reason::Expired, "token expired"));
        let reply = d.local_reply(Some("deploy-api"), "nhi-guard", Some("r2"));
        assert_eq!(reply.status, 401);
        assert_eq!(
            header(&reply, "www-authenticate"),
            Some("Bearer realm=\"nhi-guard\", error=\"invalid_token\", error_description=\"token expired\"")
        );
        assert_eq!(
            body(&reply),
            json!({"error": "unauthenticated", "reason": "expired", "route": "deploy-api", "request_id": "r2"})
        );
        let missing = Denial::auth(&Rejection::new(Reason::MissingToken, "no bearer token")).local_reply(
            None,
            "nhi-guard",
            None,
        );
        assert_eq!(header(&missing, "www-authenticate"), Some("Bearer realm=\"nhi-guard\""));
        assert_eq!(body(&missing), json!({"error": "unauthenticated", "reason": "missing_token"}));
        let unavailable =
            Denial::auth(&Rejection::new(Reason::KeysUnavailable, "x")).local_reply(Some("a"), "r", None);
        assert_eq!(unavailable.status, 503);
        assert_eq!(header(&unavailable, "retry-after"), Some("1"));
    }
}
