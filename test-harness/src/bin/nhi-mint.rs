//! `nhi-mint`: prints a signed JWT, by default one the shipped demo config accepts.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use test_harness::demo;
use test_harness::mint::{self, Alg, Token};

const USAGE: &str = "\
nhi-mint: print a signed JWT (by default one the demo gateway accepts)

usage: nhi-mint [options]

  --key FILE         private JWK to sign with [envoy/demo/demo-signing-key.jwk.json]
  --alg ALG          RS256|RS384|RS512|PS256|PS384|PS512|ES256|ES384|EdDSA
                     [the usual one for the key type]
  --kid KID          header kid [the key's kid]
  --iss ISS          [https://issuer.nhi-guard.demo]
  --aud AUD          [nhi-gateway]
  --sub SUB          [system:serviceaccount:ci:deployer]
  --ttl SECONDS      lifetime from now [300]
  --claim NAME=VALUE extra claim, repeatable; VALUE is used as JSON if it parses
                     (5, true, [\"a\"]), else as a string
  -h, --help";

#[derive(Debug)]
struct Args {
    key: PathBuf,
    alg: Option<Alg>,
    kid: Option<String>,
    iss: String,
    aud: String,
    sub: String,
    ttl: u64,
    claims: Vec<(String, Value)>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>> {
    let mut parsed = Args {
        key: demo::default_signing_key_path(),
        alg: None,
        kid: None,
        iss: mint::DEFAULT_ISSUER.to_owned(),
        aud: mint::DEFAULT_AUDIENCE.to_owned(),
        sub: mint::DEFAULT_SUBJECT.to_owned(),
        ttl: mint::DEFAULT_TTL_SECONDS,
        claims: Vec::new(),
    };
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let value = args.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--key" => parsed.key = value.into(),
            "--alg" => parsed.alg = Some(value.parse()?),
            "--kid" => parsed.kid = Some(value),
            "--iss" => parsed.iss = value,
            "--aud" => parsed.aud = value,
            "--sub" => parsed.sub = value,
            "--ttl" => {
                parsed.ttl =
                    value.parse().with_context(|| format!("--ttl {value:?} is not a number of seconds"))?;
            }
            "--claim" => {
                let (name, raw) =
                    value.split_once('=').with_context(|| format!("--claim {value:?} is not NAME=VALUE"))?;
                let json = serde_json::from_str(raw).unwrap_or_else(|_| Value::from(raw));
                parsed.claims.push((name.to_owned(), json));
            }
            _ => bail!("unknown option {flag:?}"),
        }
    }
    Ok(Some(parsed))
}

fn mint(args: &Args) -> Result<String> {
    let key = demo::load_signing_key(&args.key)?;
    let alg = args.alg.unwrap_or_else(|| Alg::default_for(key.key_type()));
    let now = mint::now();
    let mut token = Token::new(alg)
        .claim("iss", args.iss.as_str())
        .claim("aud", args.aud.as_str())
        .claim("sub", args.sub.as_str())
        .claim("iat", now)
        .claim("exp", now + args.ttl);
    if let Some(kid) = &args.kid {
        token = token.kid(kid.as_str());
    }
    for (name, value) in &args.claims {
        token = token.claim(name, value.clone());
    }
    token.sign(&key)
}

fn main() -> ExitCode {
    let result = parse_args(std::env::args().skip(1)).and_then(|args| match args {
        Some(args) => mint(&args).map(Some),
        None => Ok(None),
    });
    match result {
        Ok(Some(token)) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Ok(None) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("nhi-mint: {err:#}\n\n{USAGE}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Args>> {
        parse_args(args.iter().map(|arg| (*arg).to_owned()))
    }

    #[test]
    fn claims_are_json_when_they_parse_and_strings_otherwise() {
        let args =
            parse(&["--claim", "n=5", "--claim", "scope=deploy", "--claim", "l=[\"a\"]"]).unwrap().unwrap();
        let claims: Vec<_> = args.claims.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
        assert_eq!(
            claims,
            [("n", Value::from(5)), ("scope", Value::from("deploy")), ("l", serde_json::json!(["a"]))]
        );
        assert_eq!(args.sub, mint::DEFAULT_SUBJECT);
    }

    #[test]
    fn bad_arguments_are_errors_and_help_is_not() {
        assert!(parse(&["--bogus", "x"]).is_err());
        assert!(parse(&["--sub"]).is_err());
        assert!(parse(&["--ttl", "soon"]).is_err());
        assert!(parse(&["--alg", "HS256"]).is_err());
        assert!(parse(&["--help"]).unwrap().is_none());
    }

    #[test]
    fn mints_with_the_committed_demo_key() {
        let args = parse(&["--sub", "robot", "--ttl", "60"]).unwrap().unwrap();
        let token = mint(&args).unwrap();
        assert_eq!(token.split('.').count(), 3);
    }
}
