//! The keys and tokens of one bench run. Both stacks get the same public keys and see the
//! same tokens, byte for byte.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::keys::{self, KeyType, TestKey};
use crate::mint::{self, Alg, Token};

/// The algorithms measured, one key each.
pub const ALGS: [Alg; 4] = [Alg::Rs256, Alg::Es256, Alg::Es384, Alg::EdDsa];

/// Prefix of every subject the stacks admit (nhi-guard's allow rule, RBAC's principal).
pub const SUBJECT_PREFIX: &str = "system:serviceaccount:bench:";
/// A well-signed token for someone outside the admitted service accounts: both stacks
/// must refuse it with 403 (RBAC / allow rule).
pub const FOREIGN_SUBJECT: &str = "system:serviceaccount:other:intruder";
/// nhi-guard's quota rule gives this identity one request a day.
pub const QUOTA_PROBE_SUBJECT: &str = "system:serviceaccount:bench:quota-probe";
/// The algorithm of the forged tokens of the flood (the costlier verification of the two
/// the issue targets, so the attacker's best choice).
pub const FLOOD_ALG: Alg = Alg::Es256;
/// The proof algorithms measured with a DPoP-bound token.
pub const DPOP_ALGS: [Alg; 2] = [Alg::Es256, Alg::EdDsa];
/// The authority the DPoP load sends (`Host`), which the proofs' `htu` names.
pub const DPOP_AUTHORITY: &str = "bench.dpop";
/// Long enough for any run; tokens are minted at the start.
const TTL_SECONDS: u64 = 2 * 3600;

/// One signing key per algorithm of [`ALGS`].
#[derive(Debug)]
pub struct BenchKeys {
    keys: Vec<(Alg, TestKey)>,
}

impl BenchKeys {
    pub fn generate() -> Result<Self> {
        let kinds = [
            (Alg::Rs256, KeyType::Rsa, "bench-rsa"),
            (Alg::Es256, KeyType::P256, "bench-ec"),
            (Alg::Es384, KeyType::P384, "bench-ec384"),
            (Alg::EdDsa, KeyType::Ed25519, "bench-ed"),
        ];
        let keys = kinds
            .into_iter()
            .map(|(alg, key_type, kid)| Ok((alg, TestKey::generate(key_type, kid)?)))
            .collect::<Result<_>>()?;
        Ok(Self { keys })
    }

    pub fn key(&self, alg: Alg) -> Result<&TestKey> {
        self.keys
            .iter()
            .find(|(key_alg, _)| *key_alg == alg)
            .map(|(_, key)| key)
            .with_context(|| format!("no bench key for {alg}"))
    }

    /// The JWKS both stacks are configured with.
    pub fn jwks(&self) -> Value {
        keys::jwks(self.keys.iter().map(|(_, key)| key))
    }
}

/// The distinct tokens of one algorithm and the file wrk rotates them from.
#[derive(Debug)]
pub struct Rotation {
    pub alg: Alg,
    pub tokens: Vec<String>,
    pub file: PathBuf,
}

/// Every token of the run.
#[derive(Debug)]
pub struct Tokens {
    /// RS256, the one token of the "token reused" cases.
    pub reused: String,
    /// `tokens` distinct tokens (distinct `sub` and `jti`) per algorithm of [`ALGS`].
    pub rotations: Vec<Rotation>,
    /// The [`FLOOD_ALG`] rotation with one bit of each signature flipped.
    pub forged: Rotation,
    /// Well signed, subject [`FOREIGN_SUBJECT`].
    pub foreign: String,
    /// Well signed, subject [`QUOTA_PROBE_SUBJECT`].
    pub quota_probe: String,
    /// One DPoP-bound token per algorithm of [`DPOP_ALGS`] and its fresh proofs.
    pub dpop: Vec<DpopLoad>,
}

/// A DPoP-bound token and `count` proofs for it, each used once: `token proof` lines.
#[derive(Debug)]
pub struct DpopLoad {
    pub alg: Alg,
    pub file: PathBuf,
    pub count: usize,
    /// A token and proof kept out of the file, for the probe.
    pub probe: (String, String),
}

impl Tokens {
    /// Mints everything and writes the rotation files (one token a line) into `dir`.
    pub fn mint(keys: &BenchKeys, distinct: usize, dir: &Path) -> Result<Self> {
        let rsa = keys.key(Alg::Rs256)?;
        let reused = sign(Alg::Rs256, rsa, &format!("{SUBJECT_PREFIX}reused"), "reused")?;
        let mut rotations = Vec::new();
        for alg in ALGS {
            let key = keys.key(alg)?;
            let tokens = (0..distinct)
                .map(|i| sign(alg, key, &format!("{SUBJECT_PREFIX}client-{i}"), &format!("{alg}-{i}")))
                .collect::<Result<Vec<_>>>()?;
            let file = dir.join(format!("tokens-{}.txt", alg.name().to_ascii_lowercase()));
            write_lines(&file, &tokens)?;
            rotations.push(Rotation { alg, tokens, file });
        }
        let forged_tokens = rotation(&rotations, FLOOD_ALG)?
            .tokens
            .iter()
            .map(|token| mint::tamper_signature(token))
            .collect::<Result<Vec<_>>>()?;
        let forged_file = dir.join(format!("tokens-forged-{}.txt", FLOOD_ALG.name().to_ascii_lowercase()));
        write_lines(&forged_file, &forged_tokens)?;
        Ok(Self {
            reused,
            forged: Rotation { alg: FLOOD_ALG, tokens: forged_tokens, file: forged_file },
            foreign: sign(Alg::Rs256, rsa, FOREIGN_SUBJECT, "foreign")?,
            quota_probe: sign(Alg::Es256, keys.key(Alg::Es256)?, QUOTA_PROBE_SUBJECT, "quota-probe")?,
            rotations,
            dpop: Vec::new(),
        })
    }

    /// Mints, with the independent DPoP client, a proof key per algorithm of
    /// [`DPOP_ALGS`], an RS256 token bound to it (`cnf.jkt`), and `count` proofs of
    /// `GET http://bench.dpop/api/bench` for it, into `dir`.
    pub fn mint_dpop(&mut self, keys: &BenchKeys, count: usize, dir: &Path) -> Result<()> {
        let mut client = crate::dpop_client::DpopClient::start()?;
        let htu = format!("http://{DPOP_AUTHORITY}{}", super::stacks::BENCH_PATH);
        for alg in DPOP_ALGS {
            let key = client.key(if alg == Alg::EdDsa { "OKP" } else { "EC" })?;
            let subject = format!("{SUBJECT_PREFIX}dpop-{}", alg.name().to_ascii_lowercase());
            let now = mint::now();
            let token = Token::new(Alg::Rs256)
                .claim("sub", subject.as_str())
                .claim("jti", format!("dpop-{alg}"))
                .claim("iat", now)
                .claim("exp", now + TTL_SECONDS)
                .claim("cnf", serde_json::json!({"jkt": key.jkt}))
                .sign(keys.key(Alg::Rs256)?)
                .with_context(|| format!("signing the DPoP-bound token for {alg}"))?;
            let file = dir.join(format!("dpop-{}.txt", alg.name().to_ascii_lowercase()));
            client.proof_file(&key, "GET", &htu, &token, count, &file)?;
            let probe = client.proof(&key, "GET", &htu, &token, serde_json::json!({}))?;
            self.dpop.push(DpopLoad { alg, file, count, probe: (token, probe) });
        }
        Ok(())
    }

    pub fn dpop(&self, alg: Alg) -> Result<&DpopLoad> {
        self.dpop
            .iter()
            .find(|d| d.alg == alg)
            .with_context(|| format!("no DPoP proofs were minted for {alg}"))
    }

    pub fn rotation(&self, alg: Alg) -> Result<&Rotation> {
        rotation(&self.rotations, alg)
    }

    /// The reused token with a flipped signature bit.
    pub fn forged_reused(&self) -> Result<String> {
        mint::tamper_signature(&self.reused)
    }
}

fn rotation(rotations: &[Rotation], alg: Alg) -> Result<&Rotation> {
    rotations.iter().find(|r| r.alg == alg).with_context(|| format!("no {alg} tokens were minted"))
}

fn sign(alg: Alg, key: &TestKey, subject: &str, jti: &str) -> Result<String> {
    let now = mint::now();
    // Shaped like projected service-account tokens, so the liveness stack's
    // `kubernetes` profile reads them too; every other stack ignores the claim.
    let (namespace, name) = subject
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .unwrap_or(("", subject));
    Token::new(alg)
        .claim(
            "kubernetes.io",
            serde_json::json!({ "namespace": namespace, "serviceaccount": { "name": name, "uid": "bench-uid" } }),
        )
        .claim("sub", subject)
        .claim("jti", jti)
        .claim("iat", now)
        .claim("exp", now + TTL_SECONDS)
        .sign(key)
        .with_context(|| format!("signing a {alg} token for {subject}"))
}

fn write_lines(path: &Path, lines: &[String]) -> Result<()> {
    let mut text = lines.join("\n");
    text.push('\n');
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
