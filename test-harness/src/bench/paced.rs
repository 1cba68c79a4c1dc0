//! An open-loop load at a fixed rate, for the flood that must not depend on how fast
//! the filter answers (issue 21). `wrk` is closed-loop (each connection sends again as
//! soon as it is answered), so a cheaper refusal means more refusals, and a flood of
//! `c` connections always takes its share of the core whatever the filter does.
//! `wrk2` is not packaged here; this is the small driver in its place.
//!
//! Each connection sends on an absolute schedule (`rate / connections` a second): a
//! send that falls behind goes out at once, so the offered rate stays fixed while the
//! proxy keeps up, and a proxy that does not shows up as a lower achieved rate (and
//! in the latency, which counts from the scheduled send, not the actual one). A
//! connection carries one request at a time, so it needs more connections than
//! rate × latency: [`PACED_CONNECTIONS`] covers 10 000 req/s at 6 ms each.
//! It runs as `nhi-bench paced ...` under `taskset`, like wrk, and prints wrk's
//! summary lines so that [`super::wrk::Outcome::parse`] reads both alike.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// Connections of a paced flood.
pub const PACED_CONNECTIONS: u32 = 64;

/// One paced load, as given on `nhi-bench paced`'s command line.
#[derive(Clone, Debug, PartialEq)]
pub struct Paced {
    pub target: SocketAddr,
    pub path: String,
    /// Requests a second over all connections.
    pub rate: f64,
    pub connections: u32,
    pub duration: Duration,
    /// `x-forwarded-for`.
    pub source: Option<String>,
    /// Bearer tokens sent round-robin, one a line; none: no `Authorization` header.
    pub tokens: Option<PathBuf>,
}

impl Paced {
    /// The arguments after `nhi-bench paced`.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            self.target.to_string(),
            self.path.clone(),
            format!("{}", self.rate),
            self.connections.to_string(),
            self.duration.as_secs().to_string(),
            self.source.clone().unwrap_or_else(|| "-".into()),
        ];
        if let Some(tokens) = &self.tokens {
            args.push(tokens.display().to_string());
        }
        args
    }

    pub fn parse(args: &[String]) -> Result<Self> {
        let [target, path, rate, connections, seconds, source, rest @ ..] = args else {
            bail!("usage: nhi-bench paced ADDR PATH RATE CONNECTIONS SECONDS SOURCE|- [TOKEN_FILE]");
        };
        let paced = Paced {
            target: target.parse().with_context(|| format!("address {target:?}"))?,
            path: path.clone(),
            rate: rate.parse().with_context(|| format!("rate {rate:?}"))?,
            connections: connections.parse().with_context(|| format!("connections {connections:?}"))?,
            duration: Duration::from_secs(seconds.parse().with_context(|| format!("seconds {seconds:?}"))?),
            source: (source != "-").then(|| source.clone()),
            tokens: rest.first().map(PathBuf::from),
        };
        ensure!(paced.rate > 0.0 && paced.connections > 0, "rate and connections must be positive");
        Ok(paced)
    }

    /// Runs the load and returns wrk-style summary lines.
    pub fn run(&self) -> Result<String> {
        let tokens: Vec<String> = match &self.tokens {
            Some(file) => std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?
                .lines()
                .filter(|line| !line.is_empty())
                .map(str::to_owned)
                .collect(),
            None => Vec::new(),
        };
        let interval = Duration::from_secs_f64(f64::from(self.connections) / self.rate);
        let start = Instant::now() + Duration::from_millis(50);
        let workers: Vec<_> = (0..self.connections)
            .map(|index| {
                let requests = self.requests(&tokens, index as usize);
                let (target, duration) = (self.target, self.duration);
                // Connections start spread over one interval, not all at once.
                let first = start + interval.mul_f64(f64::from(index) / f64::from(self.connections));
                thread::spawn(move || connection(target, requests, first, interval, start + duration))
            })
            .collect();
        let mut totals = Totals::default();
        for worker in workers {
            let totals_of_one =
                worker.join().map_err(|_| anyhow::anyhow!("a paced connection panicked"))??;
            totals.merge(totals_of_one);
        }
        Ok(totals.report(self))
    }

    /// The requests one connection cycles through (every token once per cycle, each
    /// connection starting at another one).
    fn requests(&self, tokens: &[String], index: usize) -> Vec<Vec<u8>> {
        let source = self.source.as_ref().map(|s| format!("X-Forwarded-For: {s}\r\n")).unwrap_or_default();
        let request = |authorization: String| {
            format!("GET {} HTTP/1.1\r\nHost: {}\r\n{source}{authorization}\r\n", self.path, self.target)
                .into_bytes()
        };
        if tokens.is_empty() {
            return vec![request(String::new())];
        }
        (0..tokens.len())
            .filter_map(|i| tokens.get((i + index) % tokens.len()))
            .map(|token| request(format!("Authorization: Bearer {token}\r\n")))
            .collect()
    }
}

#[derive(Default)]
struct Totals {
    /// Latency of each answered request, µs from its scheduled send.
    latencies_us: Vec<u64>,
    non_2xx: u64,
    /// Sends that went out more than one interval after their schedule.
    late: u64,
    errors: u64,
}

impl Totals {
    fn merge(&mut self, other: Totals) {
        self.latencies_us.extend(other.latencies_us);
        self.non_2xx += other.non_2xx;
        self.late += other.late;
        self.errors += other.errors;
    }

    fn report(mut self, paced: &Paced) -> String {
        self.latencies_us.sort_unstable();
        let percentile = |p: f64| {
            let at = ((self.latencies_us.len() as f64 * p).ceil() as usize).saturating_sub(1);
            self.latencies_us.get(at).copied().unwrap_or(0)
        };
        let seconds = paced.duration.as_secs_f64();
        let answered = self.latencies_us.len();
        format!(
            "Paced {:.0} req/s over {} connections for {seconds:.0}s\n  Latency Distribution\n     50%  {}.00us\n     \
             99%  {}.00us\n  {answered} requests in {seconds:.2}s, 0MB read\n  Non-2xx or 3xx responses: {}\n  \
             Socket errors: connect 0, read {}, write 0, timeout 0\n  Late sends: {}\nRequests/sec: {:.2}\n",
            paced.rate,
            paced.connections,
            percentile(0.5),
            percentile(0.99),
            self.non_2xx,
            self.errors,
            self.late,
            answered as f64 / seconds,
        )
    }
}

/// One keep-alive connection sending `requests` in turn, on schedule, until `end`.
fn connection(
    target: SocketAddr,
    requests: Vec<Vec<u8>>,
    first: Instant,
    interval: Duration,
    end: Instant,
) -> Result<Totals> {
    let mut totals = Totals::default();
    let (mut stream, mut reader) = open(target)?;
    let mut scheduled = first;
    for request in requests.iter().cycle() {
        // Past the end by the schedule or by the clock (a proxy that fell behind):
        // what was not answered in time is not counted.
        if scheduled >= end || Instant::now() >= end {
            break;
        }
        let now = Instant::now();
        if scheduled > now {
            thread::sleep(scheduled - now);
        } else if now - scheduled > interval {
            totals.late += 1;
        }
        let outcome =
            stream.write_all(request).map_err(anyhow::Error::from).and_then(|()| read_status(&mut reader));
        match outcome {
            Ok(_) if Instant::now() > end => break,
            Ok(status) => {
                totals.latencies_us.push(scheduled.elapsed().as_micros() as u64);
                if !(200..400).contains(&status) {
                    totals.non_2xx += 1;
                }
            }
            Err(_) => {
                totals.errors += 1;
                (stream, reader) = open(target)?;
            }
        }
        scheduled += interval;
    }
    Ok(totals)
}

/// A keep-alive connection to `target` and a reader over it.
fn open(target: SocketAddr) -> Result<(TcpStream, BufReader<TcpStream>)> {
    let stream = TcpStream::connect(target).with_context(|| format!("connecting to {target}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let reader = BufReader::new(stream.try_clone()?);
    Ok((stream, reader))
}

/// Reads one response (status line, headers, a `content-length` body) and returns its status.
fn read_status(reader: &mut BufReader<TcpStream>) -> Result<u16> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("status line {line:?}"))?;
    let mut length = 0usize;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("connection closed in the headers");
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().with_context(|| format!("content-length {value:?}"))?;
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Response, Server};

    #[test]
    fn arguments_round_trip() {
        let paced = Paced {
            target: "127.0.0.1:8080".parse().unwrap(),
            path: "/api/bench".into(),
            rate: 2500.0,
            connections: 4,
            duration: Duration::from_secs(3),
            source: Some("203.0.113.66".into()),
            tokens: Some(PathBuf::from("/tmp/forged.txt")),
        };
        assert_eq!(Paced::parse(&paced.args()).unwrap(), paced);
        let bare = Paced { source: None, tokens: None, ..paced };
        assert_eq!(Paced::parse(&bare.args()).unwrap(), bare);
    }

    /// Against a real server: never more than the schedule offers (an open loop does
    /// not speed up when answers come fast), every token in turn, refusals counted,
    /// and the summary reads as wrk's. No timing is asserted beyond the schedule's own
    /// bound: how many answers arrive depends on the machine.
    #[test]
    fn sends_on_its_schedule_and_reports_as_wrk_does() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
        let server = {
            let seen = std::sync::Arc::clone(&seen);
            Server::start(move |request| {
                let token = request.header("authorization").map(str::to_owned);
                let status = if token.is_some() { 401 } else { 200 };
                seen.lock().unwrap().insert(token.unwrap_or_default());
                Response::new(status).with_body("no")
            })
            .unwrap()
        };
        let tokens = std::env::temp_dir().join(format!("nhi-paced-tokens-{}", std::process::id()));
        std::fs::write(&tokens, "a\nb\n").unwrap();
        let paced = Paced {
            target: server.addr(),
            path: "/x".into(),
            rate: 40.0,
            connections: 2,
            duration: Duration::from_secs(1),
            source: None,
            tokens: Some(tokens.clone()),
        };
        let report = paced.run();
        std::fs::remove_file(&tokens).unwrap();
        let outcome = super::super::wrk::Outcome::parse(&report.unwrap()).unwrap();
        assert!((1..=40).contains(&outcome.requests), "{}", outcome.raw);
        assert_eq!(outcome.non_2xx, outcome.requests, "every answer was a 401");
        assert!(server.total_hits() >= outcome.requests);
        let seen = seen.lock().unwrap().clone();
        assert!(seen.contains("Bearer a") && seen.contains("Bearer b"), "{seen:?}");
    }
}
