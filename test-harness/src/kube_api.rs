//! A Kubernetes API server double for TokenReview (`authentication.k8s.io/v1`): it
//! reads and writes the real API objects (`k8s-openapi`'s `TokenReview`), and the
//! test decides which tokens are live — "deleting" a pod is removing its token — and
//! whether the server answers at all. It also publishes the service-account issuer's
//! keys, and its OIDC discovery document once told the issuer's name, as the API
//! server does (`--service-account-issuer`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Result;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewStatus, UserInfo};

use crate::http::{Request, Response, Server};

/// Where TokenReviews are created (`issuers[].profile.liveness.path` of the shipped config).
pub const TOKEN_REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
/// Where the API server publishes its service-account issuer's keys.
pub const JWKS_PATH: &str = "/openid/v1/jwks";
/// Where the API server publishes its service-account issuer's discovery document.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// How the API server answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Availability {
    /// Reviews tokens: `201 Created` with the review's status.
    Answering,
    /// `status` with a `Status` object, as an API server in trouble does.
    Failing(u16),
    /// Waits this long before answering (the review is counted on arrival).
    Stalled(Duration),
}

/// One TokenReview the server received.
#[derive(Clone, Debug)]
pub struct Review {
    /// The `Authorization` header of the callout: the gateway's own credential.
    pub authorization: Option<String>,
    /// `spec.token`.
    pub token: String,
    /// `spec.audiences`.
    pub audiences: Vec<String>,
    /// When it arrived.
    pub at: Instant,
}

#[derive(Debug)]
struct State {
    /// Live tokens and the user the API server authenticates each as.
    live: BTreeMap<String, String>,
    availability: Availability,
    reviews: Vec<Review>,
    /// The issuer's JWKS, served on [`JWKS_PATH`].
    jwks: String,
    /// The `Authorization` header of each JWKS fetch.
    jwks_authorizations: Vec<Option<String>>,
    /// Every token authenticates as the user its `sub` names (the bench's API server).
    accept_all: bool,
    /// The issuer a discovery document names (`None`: 404, as with no discovery).
    issuer: Option<String>,
    /// Discovery documents served.
    discoveries: usize,
}

/// A running double on an ephemeral 127.0.0.1 port.
pub struct KubeApi {
    state: Arc<Mutex<State>>,
    addr: SocketAddr,
    /// `None` while it refuses connections.
    server: Option<Server>,
}

impl KubeApi {
    /// Publishes `jwks` as the service-account issuer's keys.
    pub fn start(jwks: &serde_json::Value) -> Result<Self> {
        let state = Arc::new(Mutex::new(State {
            live: BTreeMap::new(),
            availability: Availability::Answering,
            reviews: Vec::new(),
            jwks: jwks.to_string(),
            jwks_authorizations: Vec::new(),
            accept_all: false,
            issuer: None,
            discoveries: 0,
        }));
        let server = serve(&state, SocketAddr::from(([127, 0, 0, 1], 0)))?;
        Ok(Self { state, addr: server.addr(), server: Some(server) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops listening: connections to it are refused, as to an API server that is down.
    pub fn refuse_connections(&mut self) {
        self.server = None;
    }

    /// Listens again on the same address, with the same live tokens.
    pub fn accept_connections(&mut self) -> Result<()> {
        if self.server.is_none() {
            self.server = Some(serve(&self.state, self.addr)?);
        }
        Ok(())
    }

    /// `token` authenticates as `username` (`system:serviceaccount:NS:NAME`) from now on.
    pub fn make_live(&self, token: &str, username: &str) {
        lock(&self.state).live.insert(token.to_owned(), username.to_owned());
    }

    /// From now on every token authenticates, as the user its `sub` claim names:
    /// an API server for load, where the tokens are too many to list.
    pub fn accept_every_token(&self) {
        lock(&self.state).accept_all = true;
    }

    /// The pod (or service account, or node) behind `token` is deleted: the API
    /// server no longer authenticates it.
    pub fn delete(&self, token: &str) {
        lock(&self.state).live.remove(token);
    }

    pub fn set_availability(&self, availability: Availability) {
        lock(&self.state).availability = availability;
    }

    /// The reviews received so far.
    pub fn reviews(&self) -> Vec<Review> {
        lock(&self.state).reviews.clone()
    }

    /// How many reviews asked about `token`.
    pub fn reviews_of(&self, token: &str) -> usize {
        self.review_times(token).len()
    }

    /// When each review that asked about `token` arrived, oldest first.
    pub fn review_times(&self, token: &str) -> Vec<Instant> {
        lock(&self.state).reviews.iter().filter(|r| r.token == token).map(|r| r.at).collect()
    }

    /// The `Authorization` header of each JWKS fetch so far.
    pub fn jwks_authorizations(&self) -> Vec<Option<String>> {
        lock(&self.state).jwks_authorizations.clone()
    }

    /// Serves the discovery document of `issuer` from now on: its `jwks_uri` is
    /// [`JWKS_PATH`] on the host the request named, as the API server's default.
    pub fn publish_discovery(&self, issuer: &str) {
        lock(&self.state).issuer = Some(issuer.to_owned());
    }

    /// How many discovery documents were served.
    pub fn discoveries(&self) -> usize {
        lock(&self.state).discoveries
    }

    pub fn clear_reviews(&self) {
        lock(&self.state).reviews.clear();
    }
}

fn serve(state: &Arc<Mutex<State>>, addr: SocketAddr) -> Result<Server> {
    let state = Arc::clone(state);
    Server::bind(addr, move |request: &Request| answer(&state, request))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn answer(state: &Mutex<State>, request: &Request) -> Response {
    if request.method == "GET" && request.path() == JWKS_PATH {
        let mut state = lock(state);
        state.jwks_authorizations.push(request.header("authorization").map(str::to_owned));
        return Response::new(200)
            .with_header("content-type", "application/json")
            .with_body(state.jwks.clone());
    }
    if request.method == "GET" && request.path() == DISCOVERY_PATH {
        let mut state = lock(state);
        let Some(issuer) = state.issuer.clone() else {
            return status(404, "NotFound", "the server could not find the requested resource");
        };
        state.discoveries += 1;
        let host = request.header("host").unwrap_or_default();
        // The fields the API server's document has (pkg/serviceaccount/openidmetadata.go).
        let document = serde_json::json!({
            "issuer": issuer,
            "jwks_uri": format!("https://{host}{JWKS_PATH}"),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256", "RS256"],
        });
        return Response::new(200)
            .with_header("content-type", "application/json")
            .with_body(document.to_string());
    }
    if request.method != "POST" || request.path() != TOKEN_REVIEW_PATH {
        return status(404, "NotFound", "the server could not find the requested resource");
    }
    let Ok(review) = serde_json::from_slice::<TokenReview>(&request.body) else {
        return status(400, "BadRequest", "the body is not a TokenReview");
    };
    let token = review.spec.token.clone().unwrap_or_default();
    let audiences = review.spec.audiences.clone().unwrap_or_default();
    let (availability, user) = {
        let mut state = lock(state);
        state.reviews.push(Review {
            authorization: request.header("authorization").map(str::to_owned),
            token: token.clone(),
            audiences: audiences.clone(),
            at: Instant::now(),
        });
        let user =
            state.live.get(&token).cloned().or_else(|| state.accept_all.then(|| subject(&token)).flatten());
        (state.availability.clone(), user)
    };
    match availability {
        Availability::Answering => {}
        Availability::Failing(code) => return status(code, "InternalError", "the API server is failing"),
        Availability::Stalled(delay) => thread::sleep(delay),
    }
    // As the API server answers: the audiences it checked, the user when the token
    // is valid, an error (and `authenticated` unset) when it is not.
    let verdict = match user {
        Some(username) => TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(audiences),
            user: Some(UserInfo { username: Some(username), ..UserInfo::default() }),
            error: None,
        },
        None => TokenReviewStatus {
            authenticated: None,
            audiences: None,
            user: Some(UserInfo::default()),
            error: Some("[invalid bearer token, pod not found]".into()),
        },
    };
    let answer = TokenReview { status: Some(verdict), ..review };
    match serde_json::to_vec(&answer) {
        Ok(body) => Response::new(201).with_header("content-type", "application/json").with_body(body),
        Err(err) => status(500, "InternalError", &err.to_string()),
    }
}

/// The `sub` of a JWT, read without checking anything (the filter verified it).
fn subject(token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.split('.').nth(1)?).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&payload).ok()?;
    claims.get("sub")?.as_str().map(str::to_owned)
}

/// A `meta.k8s.io/v1` `Status` failure, as the API server writes it.
fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code
    });
    Response::json(code, &body)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::http::request_with_body;

    fn review(api: &KubeApi, token: &str) -> Value {
        let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                          "spec": {"token": token, "audiences": ["gw"]}});
        let r = request_with_body(
            api.addr(),
            "POST",
            TOKEN_REVIEW_PATH,
            &[("content-type", "application/json"), ("authorization", "Bearer gateway")],
            body.to_string().as_bytes(),
        )
        .unwrap();
        assert_eq!(r.status, 201);
        r.body_json().unwrap()
    }

    #[test]
    fn live_tokens_authenticate_until_deleted() {
        let api = KubeApi::start(&json!({"keys": []})).unwrap();
        api.make_live("t1", "system:serviceaccount:payments:api");
        let alive = review(&api, "t1");
        assert_eq!(alive["kind"], "TokenReview");
        assert_eq!(alive["status"]["authenticated"], true);
        assert_eq!(alive["status"]["user"]["username"], "system:serviceaccount:payments:api");
        assert_eq!(alive["status"]["audiences"], json!(["gw"]));
        api.delete("t1");
        let gone = review(&api, "t1");
        assert_eq!(gone["status"].get("authenticated"), None);
        assert!(gone["status"]["error"].as_str().unwrap().contains("invalid bearer token"));
        let reviews = api.reviews();
        assert_eq!(reviews.len(), 2);
        assert_eq!(reviews[0].authorization.as_deref(), Some("Bearer gateway"));
        assert_eq!(api.reviews_of("t1"), 2);
    }
}
