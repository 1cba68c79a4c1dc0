//! Load from `wrk` (Debian's), pinned to its own core: one thread, keep-alive
//! connections, `--latency` for the percentiles. One token goes in a plain header; many
//! tokens rotate round-robin through a small Lua script reading them from a file.

use std::fs;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Round-robin over the tokens of the file given after `--`, one a line. Headers given
/// with `-H` (the source's `x-forwarded-for`) stay: `wrk.format()` uses `wrk.headers`.
const ROTATION_SCRIPT: &str = r#"-- nhi-bench: send the tokens of a file (one a line) round-robin.
local tokens = {}
local next_token = 0

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then tokens[#tokens + 1] = line end
  end
  if #tokens == 0 then error("no tokens in " .. args[1]) end
end

function request()
  next_token = next_token % #tokens + 1
  wrk.headers["Authorization"] = "Bearer " .. tokens[next_token]
  return wrk.format()
end
"#;

/// The DPoP load: lines of `token proof`, each sent once, with the authority the
/// proofs' `htu` names. A proof is never reused (it would be a replay).
const DPOP_SCRIPT: &str = r#"-- nhi-bench: send a DPoP-bound token with a fresh proof (lines `token proof`).
local lines = {}
local next_line = 0

function init(args)
  for line in io.lines(args[1]) do
    local token, proof = line:match("^(%S+) (%S+)$")
    if token then lines[#lines + 1] = { token, proof } end
  end
  if #lines == 0 then error("no proofs in " .. args[1]) end
  wrk.headers["Host"] = args[2]
  -- Lines an earlier wrk process of the case already sent (their proofs are spent).
  next_line = tonumber(args[3]) % #lines
end

function request()
  next_line = next_line % #lines + 1
  wrk.headers["Authorization"] = "DPoP " .. lines[next_line][1]
  wrk.headers["DPoP"] = lines[next_line][2]
  return wrk.format()
end
"#;

/// Writes the DPoP script into `dir` and returns its path.
pub fn write_dpop_script(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("dpop-proofs.lua");
    fs::write(&path, DPOP_SCRIPT).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Writes the rotation script into `dir` and returns its path.
pub fn write_rotation_script(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("rotate-tokens.lua");
    fs::write(&path, ROTATION_SCRIPT).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The tokens one wrk process sends.
#[derive(Clone, Debug)]
pub enum Tokens {
    /// No `Authorization` header.
    None,
    /// The same token on every request.
    One(String),
    /// Round-robin over the file's lines, with the rotation script.
    Rotate { file: PathBuf, script: PathBuf },
    /// `token proof` lines, each once, sent to `authority` (the DPoP script), from
    /// line `offset` on.
    Dpop { file: PathBuf, script: PathBuf, authority: String, offset: usize },
    /// Whatever the script sends (a signed partner request: method, headers, body).
    Script { script: PathBuf },
}

/// One wrk process.
#[derive(Clone, Debug)]
pub struct Load {
    pub target: SocketAddr,
    pub path: String,
    pub connections: u32,
    pub duration: Duration,
    pub tokens: Tokens,
    /// `x-forwarded-for`: the source Envoy (one trusted hop) reports to the filters.
    pub source: Option<String>,
    pub cpu: u32,
    /// Open loop at this many requests a second ([`super::paced`]) instead of wrk's
    /// closed loop. Only [`Tokens::None`] and [`Tokens::Rotate`] (the file) apply.
    pub rate: Option<f64>,
}

impl Load {
    fn command(&self) -> Result<Command> {
        if let Some(rate) = self.rate {
            return self.paced_command(rate);
        }
        let mut command = Command::new("taskset");
        command
            .args(["-c", &self.cpu.to_string(), "wrk", "--threads", "1", "--latency", "--timeout", "5s"])
            .args(["--connections", &self.connections.to_string()])
            .args(["--duration", &format!("{}s", self.duration.as_secs().max(1))]);
        if let Some(source) = &self.source {
            command.args(["--header", &format!("X-Forwarded-For: {source}")]);
        }
        match &self.tokens {
            Tokens::None => {
                command.arg(self.url());
            }
            Tokens::One(token) => {
                command.args(["--header", &format!("Authorization: Bearer {token}")]);
                command.arg(self.url());
            }
            Tokens::Rotate { file, script } => {
                command.arg("--script").arg(script).arg(self.url()).arg("--").arg(file);
            }
            Tokens::Dpop { file, script, authority, offset } => {
                command.arg("--script").arg(script).arg(self.url()).arg("--").arg(file).arg(authority);
                command.arg(offset.to_string());
            }
            Tokens::Script { script } => {
                command.arg("--script").arg(script).arg(self.url());
            }
        }
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        Ok(command)
    }

    /// `taskset -c CPU nhi-bench paced ...` (this very binary).
    fn paced_command(&self, rate: f64) -> Result<Command> {
        let tokens = match &self.tokens {
            Tokens::None => None,
            Tokens::Rotate { file, .. } => Some(file.clone()),
            other => bail!("a paced load sends no token or a file of them, not {other:?}"),
        };
        let paced = super::paced::Paced {
            target: self.target,
            path: self.path.clone(),
            rate,
            connections: self.connections,
            duration: self.duration,
            source: self.source.clone(),
            tokens,
        };
        let me = std::env::current_exe().context("locating nhi-bench for the paced load")?;
        let mut command = Command::new("taskset");
        command.args(["-c", &self.cpu.to_string()]).arg(me).arg("paced").args(paced.args());
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        Ok(command)
    }

    fn url(&self) -> String {
        format!("http://{}{}", self.target, self.path)
    }

    fn spawn(&self) -> Result<Child> {
        self.command()?
            .spawn()
            .context("starting `taskset ... wrk` (is wrk installed? `make bench` installs it)")
    }
}

/// Runs `load` to the end.
pub fn run(load: &Load) -> Result<Outcome> {
    finish(load.spawn()?)
}

/// Runs two loads at once (the flood case) and returns both outcomes.
pub fn run_pair(first: &Load, second: &Load) -> Result<(Outcome, Outcome)> {
    let first_child = first.spawn()?;
    let second_child = second.spawn();
    let first_outcome = finish(first_child);
    Ok((first_outcome?, finish(second_child?)?))
}

fn finish(mut child: Child) -> Result<Outcome> {
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut stdout).context("reading wrk's output")?;
    }
    if let Some(mut err) = child.stderr.take() {
        err.read_to_string(&mut stderr).context("reading wrk's errors")?;
    }
    let status = child.wait().context("waiting for wrk")?;
    if !status.success() {
        bail!("wrk failed ({status}):\n{stdout}{stderr}");
    }
    Outcome::parse(&stdout).with_context(|| format!("parsing wrk's output:\n{stdout}{stderr}"))
}

/// What one wrk run measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    pub requests_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Completed responses.
    pub requests: u64,
    /// Responses with a status outside 2xx/3xx.
    pub non_2xx: u64,
    /// connect + read + write errors and timeouts.
    pub socket_errors: u64,
    /// wrk's report as printed.
    pub raw: String,
}

impl Outcome {
    pub fn parse(output: &str) -> Result<Self> {
        let (mut rate, mut p50, mut p99, mut requests) = (None, None, None, None);
        let (mut non_2xx, mut socket_errors) = (0, 0);
        for line in output.lines().map(str::trim) {
            if let Some(value) = line.strip_prefix("Requests/sec:") {
                rate = Some(value.trim().parse().with_context(|| format!("Requests/sec {value:?}"))?);
            } else if let Some(latency) = line.strip_prefix("50%") {
                p50 = Some(parse_latency(latency)?);
            } else if let Some(latency) = line.strip_prefix("99%") {
                p99 = Some(parse_latency(latency)?);
            } else if let Some((count, _)) = line.split_once(" requests in ") {
                requests = Some(count.trim().parse().with_context(|| format!("request count in {line:?}"))?);
            } else if let Some(count) = line.strip_prefix("Non-2xx or 3xx responses:") {
                non_2xx = count.trim().parse().with_context(|| format!("non-2xx count {count:?}"))?;
            } else if let Some(errors) = line.strip_prefix("Socket errors:") {
                socket_errors = parse_socket_errors(errors)?;
            }
        }
        Ok(Outcome {
            requests_per_sec: rate.context("no `Requests/sec:` line")?,
            p50_us: p50.context("no 50% latency (was --latency given?)")?,
            p99_us: p99.context("no 99% latency (was --latency given?)")?,
            requests: requests.context("no `N requests in` line")?,
            non_2xx,
            socket_errors,
            raw: output.to_owned(),
        })
    }

    /// Completed responses with a 2xx/3xx status.
    pub fn successes(&self) -> u64 {
        self.requests.saturating_sub(self.non_2xx)
    }
}

/// `467.00us`, `1.20ms`, `2.00s`, `1.50m` → microseconds.
fn parse_latency(text: &str) -> Result<f64> {
    let text = text.trim();
    let split = text.find(|c: char| c.is_ascii_alphabetic()).with_context(|| format!("latency {text:?}"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().with_context(|| format!("latency {text:?}"))?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => bail!("latency {text:?}: unknown unit"),
    };
    Ok(value * scale)
}

/// `connect 0, read 3, write 0, timeout 1` → 4.
fn parse_socket_errors(text: &str) -> Result<u64> {
    text.split(',')
        .map(|part| {
            let count = part.split_whitespace().last().with_context(|| format!("socket errors {text:?}"))?;
            count.parse::<u64>().with_context(|| format!("socket errors {text:?}"))
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "\
Running 2s test @ http://127.0.0.1:41234/api/bench
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   520.31us  101.22us   3.01ms   90.12%
    Req/Sec    61.20k     1.02k   62.51k    80.00%
  Latency Distribution
     50%  498.00us
     75%  540.00us
     90%  610.00us
     99%    1.21ms
  121822 requests in 2.00s, 10.34MB read
  Non-2xx or 3xx responses: 12
  Socket errors: connect 0, read 3, write 0, timeout 1
Requests/sec:  60911.00
Transfer/sec:      5.17MB
";

    #[test]
    fn parses_a_report() {
        let outcome = Outcome::parse(REPORT).unwrap();
        assert_eq!(outcome.requests_per_sec, 60911.0);
        assert_eq!(outcome.p50_us, 498.0);
        assert_eq!(outcome.p99_us, 1210.0);
        assert_eq!(outcome.requests, 121822);
        assert_eq!(outcome.non_2xx, 12);
        assert_eq!(outcome.successes(), 121810);
        assert_eq!(outcome.socket_errors, 4);
    }

    #[test]
    fn a_clean_report_has_no_errors() {
        let clean: String = REPORT
            .lines()
            .filter(|l| !l.contains("Non-2xx") && !l.contains("Socket"))
            .collect::<Vec<_>>()
            .join("\n");
        let outcome = Outcome::parse(&clean).unwrap();
        assert_eq!((outcome.non_2xx, outcome.socket_errors), (0, 0));
    }

    #[test]
    fn a_truncated_report_is_an_error() {
        assert!(Outcome::parse("Running 2s test @ http://x/\n").is_err());
        assert!(parse_latency("12.0parsecs").is_err());
        assert_eq!(parse_latency("2.00s").unwrap(), 2e6);
    }
}
