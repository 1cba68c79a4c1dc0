//! The independent DPoP client: `test-harness/dpop/client.py`, which mints keys,
//! DPoP-bound tokens and proofs with joserfc (a Python JOSE implementation with no
//! code in common with the filter), driven over a pipe. The e2e tests judge the
//! filter against it, never against the filter's own code.
//!
//! Python comes from `$PYTHON` (else `python3`), joserfc from `$NHI_PYTHONPATH`
//! (else `<repo>/.tools/python`, where `make py-tools` installs it). Nothing skips:
//! a missing install is an error that says how to get it.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::envoy_config::repo_root;

/// A running client. Dropping it ends the process.
pub struct DpopClient {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// A proof key the client holds.
#[derive(Debug, Clone)]
pub struct ProofKey {
    pub id: u64,
    pub jwk: Value,
    /// Its RFC 7638 thumbprint, as joserfc computes it.
    pub jkt: String,
}

impl DpopClient {
    pub fn start() -> Result<DpopClient> {
        let python_path = std::env::var_os("NHI_PYTHONPATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join(".tools/python"));
        if !python_path.join("joserfc").is_dir() {
            bail!("joserfc is not installed in {}: run `make py-tools`", python_path.display());
        }
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
        let mut child = Command::new(&python)
            .arg(repo_root().join("test-harness/dpop/client.py"))
            .env("PYTHONPATH", &python_path)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {python} test-harness/dpop/client.py"))?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        Ok(DpopClient { child, stdin, stdout })
    }

    /// One request to the client, one answer.
    pub fn call(&mut self, request: Value) -> Result<Value> {
        writeln!(self.stdin, "{request}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the DPoP client exited");
        }
        let answer: Value = serde_json::from_str(&line).context("the DPoP client's answer")?;
        if let Some(error) = answer.get("error") {
            bail!("the DPoP client refused {request}: {error}");
        }
        Ok(answer)
    }

    /// A new proof key: `EC` (ES256), `OKP` (EdDSA) or `RSA` (PS256).
    pub fn key(&mut self, kty: &str) -> Result<ProofKey> {
        let answer = self.call(json!({"op": "key", "kty": kty}))?;
        Ok(ProofKey {
            id: answer.get("id").and_then(Value::as_u64).context("key id")?,
            jwk: answer.get("jwk").cloned().context("jwk")?,
            jkt: answer.get("jkt").and_then(Value::as_str).context("jkt")?.to_owned(),
        })
    }

    /// The token signer's key (ES256, `kid`), as a JWKS to serve.
    pub fn issuer(&mut self, kid: &str) -> Result<Value> {
        self.call(json!({"op": "issuer", "kid": kid}))?.get("jwks").cloned().context("jwks")
    }

    /// An access token with `claims`, bound (`cnf.jkt`) to `bind` when given.
    pub fn token(&mut self, claims: Value, bind: Option<&ProofKey>) -> Result<String> {
        let answer = self.call(json!({"op": "token", "claims": claims, "bind": bind.map(|k| k.id)}))?;
        Ok(answer.get("token").and_then(Value::as_str).context("token")?.to_owned())
    }

    /// A proof by `key` for `htm htu` with `token`'s `ath`; `extra` adds the optional
    /// members of the client's `proof` request (see client.py).
    pub fn proof(
        &mut self,
        key: &ProofKey,
        htm: &str,
        htu: &str,
        token: &str,
        extra: Value,
    ) -> Result<String> {
        let mut request = json!({"op": "proof", "key": key.id, "htm": htm, "htu": htu, "token": token});
        if let (Some(request), Some(extra)) = (request.as_object_mut(), extra.as_object()) {
            request.extend(extra.clone());
        }
        Ok(self.call(request)?.get("proof").and_then(Value::as_str).context("proof")?.to_owned())
    }
}

impl DpopClient {
    /// `count` proofs like [`DpopClient::proof`] (a fresh `jti` each), written to
    /// `path` as `token proof` lines: the bench's load.
    pub fn proof_file(
        &mut self,
        key: &ProofKey,
        htm: &str,
        htu: &str,
        token: &str,
        count: usize,
        path: &std::path::Path,
    ) -> Result<()> {
        let request = json!({"op": "proof_file", "key": key.id, "htm": htm, "htu": htu, "token": token,
                             "count": count, "path": path.display().to_string()});
        self.call(request).map(|_| ())
    }
}

impl Drop for DpopClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
