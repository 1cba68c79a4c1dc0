//! Envoy's `/stats/prometheus` as samples: name, labels, value.
//!
//! A series that is not in the scrape is `None`, never `0`: a counter that was
//! never defined (the filter did not emit it) must not pass an `== 0` assertion.

use std::collections::{BTreeMap, BTreeSet};

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::envoy::Envoy;

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// One scrape.
#[derive(Debug, Clone, Default)]
pub struct Scrape(pub Vec<Sample>);

/// How long the filter's counters may wait before they reach Envoy: each VM hands
/// its counts over on its tick (500 ms; see `Observer::count_on_tick` in the core),
/// plus a margin for a loaded machine.
pub const COUNTER_FLUSH: Duration = Duration::from_millis(800);

impl Scrape {
    /// Scrapes `envoy`'s admin endpoint once every request sent before the call is
    /// counted (after [`COUNTER_FLUSH`]).
    pub fn take(envoy: &Envoy) -> Result<Scrape> {
        std::thread::sleep(COUNTER_FLUSH);
        Scrape::parse(&envoy.admin_text("/stats/prometheus")?)
    }

    /// Scrapes once every request sent so far may be counted, then again every 200 ms
    /// while `ready` says the counts are not all in, for at most `limit`: a tick that
    /// fires late on a loaded machine delays the counts, it does not lose them.
    /// Returns the last scrape whatever `ready` says; the caller asserts on it.
    pub fn take_when(envoy: &Envoy, limit: Duration, ready: impl Fn(&Scrape) -> bool) -> Result<Scrape> {
        let deadline = std::time::Instant::now() + limit;
        let mut scrape = Scrape::take(envoy)?;
        while !ready(&scrape) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            scrape = Scrape::parse(&envoy.admin_text("/stats/prometheus")?)?;
        }
        Ok(scrape)
    }

    /// Parses the text format (comments and blank lines skipped).
    pub fn parse(text: &str) -> Result<Scrape> {
        let mut samples = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').with_context(|| format!("no value: {line}"))?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let inner = rest.strip_suffix('}').with_context(|| format!("unclosed labels: {line}"))?;
                    (name, parse_labels(inner).with_context(|| format!("labels of {line}"))?)
                }
                None => (series, BTreeMap::new()),
            };
            let value = value.parse().with_context(|| format!("value of {line}"))?;
            samples.push(Sample { name: name.to_owned(), labels, value });
        }
        Ok(Scrape(samples))
    }

    /// Samples of `name` whose labels include `labels`.
    pub fn matching(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.0
            .iter()
            .filter(|s| {
                s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
            })
            .collect()
    }

    /// The value of the one series of `name` with exactly these labels; `None` when
    /// the scrape has no such series. Panics if several series match (a test bug).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<_> =
            self.matching(name, labels).into_iter().filter(|s| s.labels.len() == labels.len()).collect();
        assert!(found.len() <= 1, "several series for {name} {labels:?}: {found:?}");
        found.first().map(|s| s.value)
    }

    /// The sum of every series of `name` whose labels include `labels`; `None` when
    /// there is none.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found = self.matching(name, labels);
        (!found.is_empty()).then(|| found.iter().map(|s| s.value).sum())
    }

    pub fn names(&self) -> BTreeSet<&str> {
        self.0.iter().map(|s| s.name.as_str()).collect()
    }

    pub fn label_names(&self) -> BTreeSet<&str> {
        self.0.iter().flat_map(|s| s.labels.keys().map(String::as_str)).collect()
    }
}

/// `a="x",b="y\"z"` (the exporter escapes `\`, `"` and newlines).
fn parse_labels(text: &str) -> Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut chars = text.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if chars.next() != Some('"') {
            bail!("label {key} has no quoted value");
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE nhi_requests_total counter
nhi_requests_total{nhi_issuer="demo",nhi_reason="allow"} 0
nhi_requests_total{nhi_issuer="demo",nhi_reason="expired"} 2
nhi_identity_requests_total{nhi_issuer="demo",nhi_identity="a\"b"} 3
nhi_vm_memory_bytes 1179648
"#;

    #[test]
    fn absent_is_not_zero() {
        let scrape = Scrape::parse(TEXT).unwrap();
        let allow = [("nhi_issuer", "demo"), ("nhi_reason", "allow")];
        assert_eq!(scrape.value("nhi_requests_total", &allow), Some(0.0));
        assert_eq!(scrape.value("nhi_requests_total", &[("nhi_issuer", "demo"), ("nhi_reason", "x")]), None);
        assert_eq!(scrape.value("nhi_missing_total", &[]), None);
        assert_eq!(scrape.value("nhi_vm_memory_bytes", &[]), Some(1_179_648.0));
        assert_eq!(scrape.sum("nhi_requests_total", &[("nhi_issuer", "demo")]), Some(2.0));
        assert_eq!(scrape.sum("nhi_requests_total", &[("nhi_issuer", "other")]), None);
        let quoted = scrape.matching("nhi_identity_requests_total", &[("nhi_identity", "a\"b")]);
        assert_eq!(quoted.len(), 1);
    }

    #[test]
    fn a_line_without_a_value_is_an_error() {
        assert!(Scrape::parse("nhi_requests_total{nhi_issuer=\"demo\"}").is_err());
        assert!(Scrape::parse("nhi_requests_total{nhi_issuer=demo} 1").is_err());
    }
}
