//! What only the gateway can know about a request, as `explain` stands in for it:
//! the Kubernetes API server's TokenReview answer (`profile.liveness`) and the
//! revocation feed the gateway fetched.
//!
//! Neither is guessed from nothing and neither is skipped: the filter's own pipeline
//! asks for them as it does in the gateway, and gets an answer explain chose — the
//! one given (`--liveness`, `--revocations`) or, when none was, the one that lets
//! every later stage run (the token alive, an empty and fresh list). The
//! explanation then says which answers were not the gateway's.

use std::fmt;
use std::str::FromStr;

use serde_json::{json, Value};

use nhi_guard_core::host::HttpCall;
use nhi_guard_core::policy::revocation::{Counts, RevocationList};
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

/// A revocation feed document (`--revocations FILE`), read by the core's parser.
#[derive(Debug, Clone)]
pub struct Feed {
    /// Where it came from, for the explanation.
    pub name: String,
    pub document: String,
    /// What it holds.
    pub counts: Counts,
}

impl Feed {
    /// The feed in `document`, refused whole as the filter refuses it.
    pub fn parse(name: &str, document: String) -> Result<Feed, OfflineError> {
        let list = RevocationList::parse(document.as_bytes())
            .map_err(|e| OfflineError::Feed(format!("the feed is refused: {e}")))?;
        Ok(Feed { name: name.to_owned(), document, counts: list.counts() })
    }

    /// `1 entries (subjects 1)`: how many of each kind, the empty kinds left out.
    pub fn summary(&self) -> String {
        let kinds: Vec<String> = self
            .counts
            .by_kind()
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect();
        let total: usize = self.counts.by_kind().iter().map(|(_, n)| n).sum();
        if kinds.is_empty() {
            format!("{total} entries")
        } else {
            format!("{total} entries ({})", kinds.join(", "))
        }
    }
}

/// The answers explain gives in the gateway's place; `None`: not given.
#[derive(Debug, Clone, Default)]
pub struct Offline {
    pub liveness: Option<Liveness>,
    pub revocations: Option<Feed>,
}

/// The empty feed served when none was given: nothing revoked, fetched just now.
pub const EMPTY_FEED: &str = "{}";

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
    /// The feed document is refused (the core's parser says why).
    Feed(String),
}

impl fmt::Display for OfflineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OfflineError::Liveness(other) => write!(f, "--liveness {other}: alive or gone"),
            OfflineError::Feed(why) => write!(f, "--revocations: {why}"),
        }
    }
}

impl std::error::Error for OfflineError {}
