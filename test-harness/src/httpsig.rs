//! Requests signed by an RFC 9421 implementation nhi-guard's authors did not write:
//! the `http-message-signatures` package from PyPI (`make httpsig` installs it in a
//! virtualenv under `.tools/httpsig`), driven through `python/httpsig_sign.py`.
//!
//! One Python process signs a whole batch (the package takes a while to import).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

use crate::envoy_config::repo_root;

/// The virtualenv's Python: `NHI_HTTPSIG_PYTHON`, else `<root>/.tools/httpsig/bin/python`.
pub fn python() -> Result<PathBuf> {
    let path = std::env::var_os("NHI_HTTPSIG_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".tools/httpsig/bin/python"));
    if !path.is_file() {
        bail!("no {}: run `make httpsig` (or set NHI_HTTPSIG_PYTHON)", path.display());
    }
    Ok(path)
}

/// The key a request is signed with.
#[derive(Clone, Debug)]
pub enum Key {
    /// `hmac-sha256` with this secret, base64.
    Hmac { secret: String },
    /// `ed25519` with this RFC 8032 seed, base64url.
    Ed25519 { private_key: String },
}

/// One request to sign.
#[derive(Clone, Debug)]
pub struct Job {
    pub method: String,
    /// The absolute URL the request goes to (`@authority`, `@path`… come from it).
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    pub key: Key,
    pub keyid: String,
    pub components: Vec<String>,
    pub created: i64,
    pub expires: Option<i64>,
    pub nonce: Option<String>,
    pub label: Option<String>,
    pub include_alg: bool,
}

impl Job {
    /// A request signed the way nhi-guard's default policy asks: method, authority
    /// and path covered, `created` now, a nonce, the algorithm named.
    pub fn new(method: &str, url: &str, key: Key, keyid: &str, created: i64, nonce: &str) -> Self {
        Job {
            method: method.to_owned(),
            url: url.to_owned(),
            headers: Vec::new(),
            body: None,
            key,
            keyid: keyid.to_owned(),
            components: ["@method", "@authority", "@path"].map(str::to_owned).to_vec(),
            created,
            expires: None,
            nonce: Some(nonce.to_owned()),
            label: Some("sig1".to_owned()),
            include_alg: true,
        }
    }

    fn to_json(&self) -> Value {
        let headers: Map<String, Value> =
            self.headers.iter().map(|(n, v)| (n.clone(), Value::String(v.clone()))).collect();
        let (alg, key_field, key_value) = match &self.key {
            Key::Hmac { secret } => ("hmac-sha256", "secret", secret),
            Key::Ed25519 { private_key } => ("ed25519", "private_key", private_key),
        };
        let mut job = json!({
            "method": self.method, "url": self.url, "headers": headers, "body": self.body,
            "keyid": self.keyid, "components": self.components, "created": self.created,
            "expires": self.expires, "nonce": self.nonce, "label": self.label, "include_alg": self.include_alg,
        });
        if let Some(members) = job.as_object_mut() {
            members.insert("alg".into(), json!(alg));
            members.insert(key_field.into(), json!(key_value));
        }
        job
    }
}

/// Signs every job; returns each request's headers after signing, in order.
pub fn sign(jobs: &[Job]) -> Result<Vec<Vec<(String, String)>>> {
    let script = repo_root().join("test-harness/python/httpsig_sign.py");
    let mut child = Command::new(python()?)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", script.display()))?;
    let input = serde_json::to_vec(&jobs.iter().map(Job::to_json).collect::<Vec<_>>())?;
    child.stdin.take().context("no stdin")?.write_all(&input)?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!("{} failed:\n{}", script.display(), String::from_utf8_lossy(&output.stderr));
    }
    let signed: Vec<Map<String, Value>> = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("reading {}'s output", script.display()))?;
    Ok(signed
        .into_iter()
        .map(|headers| {
            headers
                .into_iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .collect())
}
