//! The local demo's fixed layout: the committed demo key pair under `envoy/demo/`, and
//! the fixed loopback ports the demo stack listens on.
//!
//! The demo signing key is public in the repository and good for nothing but the demo.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::envoy_config::repo_root;
use crate::keys::{self, KeyType, TestKey};

/// `kid` of the demo signing key.
pub const DEMO_KID: &str = "demo-es256";
pub const SIGNING_KEY_FILE: &str = "demo-signing-key.jwk.json";
pub const JWKS_FILE: &str = "jwks.json";

pub const JWKS_ADDR: SocketAddr = SocketAddr::new(LOOPBACK, 8081);
pub const UPSTREAM_ADDR: SocketAddr = SocketAddr::new(LOOPBACK, 8082);
/// The human backend (cluster `web`).
pub const WEB_ADDR: SocketAddr = SocketAddr::new(LOOPBACK, 8083);
pub const LISTENER_ADDR: SocketAddr = SocketAddr::new(LOOPBACK, 10000);
pub const ADMIN_ADDR: SocketAddr = SocketAddr::new(LOOPBACK, 9901);
const LOOPBACK: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// `<repo>/envoy/demo`.
pub fn demo_dir() -> PathBuf {
    repo_root().join("envoy").join("demo")
}

/// `<repo>/envoy/demo/demo-signing-key.jwk.json`.
pub fn default_signing_key_path() -> PathBuf {
    demo_dir().join(SIGNING_KEY_FILE)
}

/// Writes a fresh P-256 demo key pair into `dir`: the private JWK and the public JWKS.
/// Refuses to replace existing files unless `force`.
pub fn generate_demo_keys(dir: &Path, force: bool) -> Result<(PathBuf, PathBuf)> {
    let key_path = dir.join(SIGNING_KEY_FILE);
    let jwks_path = dir.join(JWKS_FILE);
    for path in [&key_path, &jwks_path] {
        if path.exists() && !force {
            bail!("{} exists; pass --force to replace it", path.display());
        }
    }
    let key = TestKey::generate(KeyType::P256, DEMO_KID)?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_json(&key_path, &key.private_jwk())?;
    write_json(&jwks_path, &keys::jwks([&key]))?;
    Ok((key_path, jwks_path))
}

/// Reads a private JWK file (any key type [`TestKey::from_private_jwk`] supports).
pub fn load_signing_key(path: &Path) -> Result<TestKey> {
    let json = read_json(path)?;
    TestKey::from_private_jwk(&json).with_context(|| format!("in {}", path.display()))
}

pub fn read_json(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

fn write_json(path: &Path, json: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(json)?;
    text.push('\n');
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_demo_keys_load_and_match_their_jwks() {
        let dir = std::env::temp_dir().join(format!("nhi-demo-keys-{}", rand::random::<u32>()));
        let (key_path, jwks_path) = generate_demo_keys(&dir, false).unwrap();
        let key = load_signing_key(&key_path).unwrap();
        assert_eq!(key.kid(), DEMO_KID);
        let jwks = read_json(&jwks_path).unwrap();
        assert_eq!(jwks, keys::jwks([&key]));
        assert!(generate_demo_keys(&dir, false).is_err(), "overwrote without --force");
        generate_demo_keys(&dir, true).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn committed_demo_keys_are_a_pair() {
        let key = load_signing_key(&default_signing_key_path()).unwrap();
        assert_eq!(key.kid(), DEMO_KID);
        let jwks = read_json(&demo_dir().join(JWKS_FILE)).unwrap();
        assert_eq!(jwks, keys::jwks([&key]));
    }
}
