//! What only the gateway can know about a request, as `explain` stands in for it:
//! the Kubernetes API server's TokenReview answer (`profile.liveness`).
//!
//! It is neither guessed from nothing nor skipped: the filter's own pipeline asks
//! for it as it does in the gateway, and gets an answer explain chose — the one
//! given (`--liveness`) or, when none was, the one that lets every later stage run
//! (the token alive). The explanation then says the answer was not the gateway's.

use std::fmt;
use std::str::FromStr;

use serde_json::{json, Value};

use nhi_guard_core::host::HttpCall;
use nhi_guard_core::verify::liveness::API_VERSION;

use super::resign;

/// The API server's answer to a TokenReview (`--liveness`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// It still authenticates the token.
    Alive,
    /// It no longer does: the pod, service account or node is gone.
    Gone,
}

impl FromStr for Liveness {
    type Err = OfflineError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "alive" => Ok(Liveness::Alive),
            "gone" => Ok(Liveness::Gone),
            other => Err(OfflineError::Liveness(other.to_owned())),
        }
    }
}

impl Liveness {
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Alive => "alive",
            Liveness::Gone => "gone",
        }
    }
}

/// The answers explain gives in the gateway's place; `None`: not given.
#[derive(Debug, Clone, Default)]
pub struct Offline {
    pub liveness: Option<Liveness>,
}

/// The API server's answer to the TokenReview `call`, as `answer` says: what the
/// filter reads with its own parser. Alive names the token's `sub` as the user and
/// grants the audiences asked for, as a real answer does; `None` when the callout is
/// not a TokenReview (nothing explain makes).
pub fn token_review_answer(call: &HttpCall, answer: Liveness) -> Option<(u16, String)> {
    let review: Value = serde_json::from_slice(&call.body).ok()?;
    let token = review.pointer("/spec/token")?.as_str()?;
    let audiences = review.pointer("/spec/audiences").cloned().unwrap_or_else(|| json!([]));
    let status = match answer {
        Liveness::Alive => json!({
            "authenticated": true,
            "user": {"username": resign::peek(token).sub},
            "audiences": audiences,
        }),
        Liveness::Gone => json!({"authenticated": false, "error": "the token's object no longer exists"}),
    };
    let body = json!({"apiVersion": API_VERSION, "kind": "TokenReview", "status": status});
    Some((201, body.to_string()))
}

/// Why the offline answers cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfflineError {
    /// `--liveness` is neither `alive` nor `gone`.
    Liveness(String),
}

impl fmt::Display for OfflineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OfflineError::Liveness(other) => write!(f, "--liveness {other}: alive or gone"),
        }
    }
}

impl std::error::Error for OfflineError {}
