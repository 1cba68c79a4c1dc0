//! mTLS for the e2e suite: a test CA with a server certificate and SPIFFE client
//! certificates made at run time (rcgen), the PEM files Envoy loads, an HTTPS client
//! presenting a client certificate (rustls), and the rendering of the shipped
//! `envoy/envoy-mtls.yaml`, whose certificate paths are placeholders under
//! `/etc/envoy/certs/`.

use std::fs;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_yaml::Value as Yaml;
use sha2::{Digest as _, Sha256};

use crate::envoy_config::{repo_root, EnvoyConfig};
use crate::http::{self, Response};

/// Where the shipped mTLS variant expects its files (placeholders the harness rewrites).
pub const SHIPPED_CERT_DIR: &str = "/etc/envoy/certs";
/// File names under [`SHIPPED_CERT_DIR`]: the CA clients are checked against, and the
/// listener's own certificate and key.
pub const CA_FILE: &str = "ca.pem";
pub const SERVER_CERT_FILE: &str = "server.pem";
pub const SERVER_KEY_FILE: &str = "server.key";

const TIMEOUT: Duration = Duration::from_secs(30);

/// `<root>/envoy/envoy-mtls.yaml`.
pub fn shipped_mtls_config_path() -> PathBuf {
    repo_root().join("envoy").join("envoy-mtls.yaml")
}

/// A certificate and its private key.
pub struct Leaf {
    pub cert_der: CertificateDer<'static>,
    pub cert_pem: String,
    key_der: Vec<u8>,
    pub key_pem: String,
}

impl Leaf {
    /// RFC 8705 `x5t#S256`: base64url (no padding) SHA-256 of the DER certificate,
    /// what a certificate-bound token carries in `cnf`.
    pub fn x5t_s256(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(self.cert_der.as_ref()))
    }

    /// The hex SHA-256 Envoy reports as `connection.sha256_peer_certificate_digest`.
    pub fn sha256_hex(&self) -> String {
        crate::sha256_hex(self.cert_der.as_ref())
    }

    fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

/// A test certificate authority (ECDSA P-256), made fresh for each test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub fn generate(name: &str) -> Result<Self> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().context("generating the CA key")?;
        let issuer = CertifiedIssuer::self_signed(params, key).context("self-signing the CA")?;
        Ok(Self { issuer })
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        self.issuer.der()
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn server(&self) -> Result<Leaf> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "nhi-guard test listener");
        params.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into().context("DNS SAN")?),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate (an X509-SVID when `uri_san` is a SPIFFE ID): exactly one
    /// URI SAN, as the X509-SVID spec requires, or none.
    pub fn client(&self, common_name: &str, uri_san: Option<&str>) -> Result<Leaf> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.distinguished_name.push(DnType::OrganizationName, "nhi-guard tests");
        if let Some(uri) = uri_san {
            params.subject_alt_names = vec![SanType::URI(uri.try_into().context("URI SAN")?)];
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<Leaf> {
        let key = KeyPair::generate().context("generating a leaf key")?;
        let cert = params.signed_by(&key, &self.issuer).context("signing a leaf certificate")?;
        Ok(Leaf {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_der: key.serialize_der(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes the CA and `server` as the three files the TLS listener loads.
    pub fn write_listener_files(&self, server: &Leaf, dir: &Path) -> Result<ListenerFiles> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let files = ListenerFiles {
            ca: dir.join(CA_FILE),
            server_cert: dir.join(SERVER_CERT_FILE),
            server_key: dir.join(SERVER_KEY_FILE),
        };
        for (path, text) in [
            (&files.ca, self.cert_pem()),
            (&files.server_cert, server.cert_pem.clone()),
            (&files.server_key, server.key_pem.clone()),
        ] {
            fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(files)
    }
}

/// The files of a TLS listener that asks for client certificates.
#[derive(Clone, Debug)]
pub struct ListenerFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// `config` with every certificate file under [`SHIPPED_CERT_DIR`] in a listener's
/// `transport_socket` pointed at `files`. Each of the three must be found at least
/// once, so that a change to the shipped file cannot quietly detach the tests.
pub fn with_listener_files(config: &EnvoyConfig, files: &ListenerFiles) -> Result<EnvoyConfig> {
    let mut doc = config.as_yaml().clone();
    let mut found = [false; 3];
    let listeners = doc
        .get_mut("static_resources")
        .and_then(|r| r.get_mut("listeners"))
        .and_then(Yaml::as_sequence_mut)
        .context("Envoy config has no static_resources.listeners")?;
    for listener in listeners {
        for chain in listener.get_mut("filter_chains").and_then(Yaml::as_sequence_mut).into_iter().flatten() {
            if let Some(socket) = chain.get_mut("transport_socket") {
                rewrite_filenames(socket, files, &mut found)?;
            }
        }
    }
    for (seen, name) in found.iter().zip([CA_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE]) {
        if !seen {
            bail!("no listener transport_socket loads {SHIPPED_CERT_DIR}/{name}");
        }
    }
    EnvoyConfig::parse(&serde_yaml::to_string(&doc).context("serialising Envoy YAML")?)
}

fn rewrite_filenames(value: &mut Yaml, files: &ListenerFiles, found: &mut [bool; 3]) -> Result<()> {
    match value {
        Yaml::Mapping(members) => {
            for (key, member) in members.iter_mut() {
                if key.as_str() == Some("filename") {
                    if let Some(path) = member.as_str() {
                        *member = Yaml::String(replacement(path, files, found)?.display().to_string());
                    }
                } else {
                    rewrite_filenames(member, files, found)?;
                }
            }
        }
        Yaml::Sequence(items) => {
            for item in items {
                rewrite_filenames(item, files, found)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn replacement(path: &str, files: &ListenerFiles, found: &mut [bool; 3]) -> Result<PathBuf> {
    let name = path
        .strip_prefix(SHIPPED_CERT_DIR)
        .and_then(|rest| rest.strip_prefix('/'))
        .with_context(|| format!("transport_socket file {path:?} is not under {SHIPPED_CERT_DIR}"))?;
    let (index, file) = match name {
        CA_FILE => (0, &files.ca),
        SERVER_CERT_FILE => (1, &files.server_cert),
        SERVER_KEY_FILE => (2, &files.server_key),
        other => bail!("transport_socket loads {other:?}, which the harness does not make"),
    };
    if let Some(seen) = found.get_mut(index) {
        *seen = true;
    }
    Ok(file.clone())
}

/// An HTTPS client trusting `ca`, presenting `client` (or no certificate).
pub struct TlsClient {
    config: Arc<rustls::ClientConfig>,
}

impl TlsClient {
    pub fn new(ca: &TestCa, client: Option<&Leaf>) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().clone()).context("adding the test CA")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots);
        let config = match client {
            Some(leaf) => builder
                .with_client_auth_cert(vec![leaf.cert_der.clone()], leaf.private_key())
                .context("client certificate")?,
            None => builder.with_no_client_auth(),
        };
        Ok(Self { config: Arc::new(config) })
    }

    /// One request over a new TLS connection to `addr` (the server certificate is
    /// checked for 127.0.0.1), with `Connection: close`.
    pub fn request(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response> {
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        self.request_raw(addr, method, path, &headers)
    }

    /// [`TlsClient::request`] with header values as raw bytes.
    pub fn request_raw(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &[u8])],
    ) -> Result<Response> {
        let tcp = TcpStream::connect_timeout(&addr, TIMEOUT).context("connecting")?;
        tcp.set_read_timeout(Some(TIMEOUT))?;
        tcp.set_write_timeout(Some(TIMEOUT))?;
        let name = ServerName::IpAddress(addr.ip().into());
        let connection =
            rustls::ClientConnection::new(Arc::clone(&self.config), name).context("TLS client")?;
        let mut stream = rustls::StreamOwned::new(connection, tcp);
        // Finish the handshake first, so a refused certificate reads as such.
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock).context("TLS handshake")?;
        }
        stream.flush()?;
        http::exchange_over_raw(stream, &addr.to_string(), method, path, headers, &[])
            .with_context(|| format!("HTTPS {method} https://{addr}{path}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprint_is_base64url_sha256_of_the_der() {
        let ca = TestCa::generate("t").unwrap();
        let leaf = ca.client("c", Some("spiffe://prod.example/a")).unwrap();
        let x5t = leaf.x5t_s256();
        assert_eq!(x5t.len(), 43);
        assert!(!x5t.contains(['=', '+', '/']));
        assert_eq!(leaf.sha256_hex().len(), 64);
        let other = ca.client("c", Some("spiffe://prod.example/a")).unwrap();
        assert_ne!(other.x5t_s256(), x5t, "every certificate is its own");
    }

    #[test]
    fn rendering_points_the_listener_at_the_files() {
        let shipped = EnvoyConfig::load(&shipped_mtls_config_path()).unwrap();
        let files = ListenerFiles {
            ca: "/tmp/x/ca.pem".into(),
            server_cert: "/tmp/x/server.pem".into(),
            server_key: "/tmp/x/server.key".into(),
        };
        let rendered = with_listener_files(&shipped, &files).unwrap();
        let text = rendered.to_yaml().unwrap();
        assert!(!text.contains(SHIPPED_CERT_DIR), "{text}");
        for path in ["/tmp/x/ca.pem", "/tmp/x/server.pem", "/tmp/x/server.key"] {
            assert!(text.contains(path), "{path} in {text}");
        }
        // The plain config has no TLS listener to point anywhere.
        let plain = EnvoyConfig::shipped().unwrap();
        assert!(with_listener_files(&plain, &files).is_err());
    }
}
