//! The cases of a run, in the order they run, and running one: a fresh Envoy, the probes,
//! a warmup, then the measured runs.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::envoy::{self, BenchEnvoy, Memory};
use super::stacks::{self, Stack, BENCH_PATH, FLOOD_SOURCE, VALID_SOURCE};
use super::tokens::{Tokens, ALGS, DPOP_ALGS, DPOP_AUTHORITY, FLOOD_ALG};
use super::wrk::{self, Load, Outcome};
use super::Settings;
use crate::mint::Alg;

/// What the load generator sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Traffic {
    /// One RS256 token on every request (a cache hit for both stacks after the first).
    Reused,
    /// `BENCH_TOKENS` distinct tokens of one algorithm, round-robin: every request misses
    /// the caches, i.e. every token is new.
    Rotating(Alg),
    /// The valid callers of [`Traffic::Flood`] alone: half the connections, one token,
    /// from [`VALID_SOURCE`]. The flood's baseline.
    ValidAlone,
    /// [`Traffic::ValidAlone`] plus, at the same time, the other half of the connections
    /// sending requests without a token (the cheapest refusal there is) from
    /// [`FLOOD_SOURCE`]: what any flood of that size leaves the valid callers of one
    /// saturated core, the ceiling for [`Traffic::Flood`].
    TokenlessFlood,
    /// [`Traffic::ValidAlone`] plus, at the same time, the other half of the connections
    /// sending forged tokens (one signature bit flipped) from [`FLOOD_SOURCE`].
    Flood,
    /// Every connection sending requests without a token from [`FLOOD_SOURCE`], nothing
    /// else: how many of the cheapest refusals one core gives a second. The paced
    /// floods are offered a share of it ([`PACED_SHARE`]).
    TokenlessAlone,
    /// [`Traffic::ValidAlone`] plus an open-loop flood ([`super::paced`]) at a fixed rate
    /// from [`FLOOD_SOURCE`]: forged tokens, or none.
    Paced { forged: bool },
    /// One DPoP-bound token (a cache hit after the first) with a fresh proof of this
    /// algorithm on every request: one proof check per request.
    Dpop(Alg),
}

/// The paced floods' rate as a share of [`Traffic::TokenlessAlone`]'s: what the flood
/// would take of the core if every refusal cost as little as one without a token.
pub const PACED_SHARE: f64 = 0.5;

/// One line of the results table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Case {
    pub stack: Stack,
    pub traffic: Traffic,
}

impl Case {
    const fn new(stack: Stack, traffic: Traffic) -> Self {
        Self { stack, traffic }
    }

    /// Every case of a run, in order; each ratio's reference runs just before it.
    pub fn plan() -> Vec<Case> {
        let mut plan = vec![
            Case::new(Stack::Router, Traffic::Reused),
            Case::new(Stack::NativeJwt, Traffic::Reused),
            Case::new(Stack::NativeStack, Traffic::Reused),
            Case::new(Stack::Minimal, Traffic::Reused),
            Case::new(Stack::NhiGuard, Traffic::Reused),
            Case::new(Stack::NhiGuardShipped, Traffic::Reused),
            Case::new(Stack::NhiGuardNative, Traffic::Reused),
            Case::new(Stack::NhiGuardBehaviour, Traffic::Reused),
            Case::new(Stack::NhiGuardLiveness, Traffic::Reused),
        ];
        for alg in DPOP_ALGS {
            plan.push(Case::new(Stack::NhiGuardDpop, Traffic::Dpop(alg)));
        }
        for alg in ALGS {
            plan.push(Case::new(Stack::NativeJwt, Traffic::Rotating(alg)));
            plan.push(Case::new(Stack::NhiGuardSmallCache, Traffic::Rotating(alg)));
            plan.push(Case::new(Stack::NhiGuardNativeSmallCache, Traffic::Rotating(alg)));
        }
        for stack in [Stack::NhiGuard, Stack::NhiGuardNative] {
            plan.push(Case::new(stack, Traffic::ValidAlone));
            plan.push(Case::new(stack, Traffic::TokenlessFlood));
            plan.push(Case::new(stack, Traffic::Flood));
        }
        plan.push(Case::new(Stack::NhiGuard, Traffic::TokenlessAlone));
        plan.push(Case::new(Stack::NhiGuard, Traffic::Paced { forged: false }));
        plan.push(Case::new(Stack::NhiGuard, Traffic::Paced { forged: true }));
        plan
    }

    /// What the case's ratio is taken against, if anything.
    pub fn reference(&self) -> Option<Case> {
        match (self.stack, self.traffic) {
            (
                Stack::NhiGuard | Stack::NhiGuardShipped | Stack::Minimal | Stack::NhiGuardNative,
                Traffic::Reused,
            ) => Some(Case::new(Stack::NativeStack, Traffic::Reused)),
            (Stack::NhiGuardBehaviour | Stack::NhiGuardLiveness, Traffic::Reused) => {
                Some(Case::new(Stack::NhiGuard, Traffic::Reused))
            }
            (Stack::NhiGuardSmallCache | Stack::NhiGuardNativeSmallCache, Traffic::Rotating(alg)) => {
                Some(Case::new(Stack::NativeJwt, Traffic::Rotating(alg)))
            }
            (Stack::NhiGuard, Traffic::Paced { forged: false }) => {
                Some(Case::new(Stack::NhiGuard, Traffic::ValidAlone))
            }
            (Stack::NhiGuard | Stack::NhiGuardNative, Traffic::TokenlessFlood) => {
                Some(Case::new(self.stack, Traffic::ValidAlone))
            }
            // Issues 21 and 22: a forged token must cost no more than no token.
            (Stack::NhiGuard | Stack::NhiGuardNative, Traffic::Flood) => {
                Some(Case::new(self.stack, Traffic::TokenlessFlood))
            }
            (Stack::NhiGuard, Traffic::Paced { forged: true }) => {
                Some(Case::new(Stack::NhiGuard, Traffic::Paced { forged: false }))
            }
            (Stack::NhiGuardDpop, Traffic::Dpop(_)) => Some(Case::new(Stack::NhiGuard, Traffic::Reused)),
            _ => None,
        }
    }

    /// The issue's target for the ratio to [`Case::reference`], if it sets one.
    pub fn target(&self) -> Option<f64> {
        match (self.stack, self.traffic) {
            // Issue 21: within 5% of the native stack on a reused token.
            (Stack::NhiGuard, Traffic::Reused) => Some(0.95),
            // Issue 22: the native shell beats Envoy's own stack by a fifth.
            (Stack::NhiGuardNative, Traffic::Reused) => Some(1.2),
            (Stack::NhiGuardBehaviour, Traffic::Reused) => Some(0.95),
            // Issue 16: a cached liveness verdict within 5% of no liveness.
            (Stack::NhiGuardLiveness, Traffic::Reused) => Some(0.95),
            (Stack::NhiGuardSmallCache, Traffic::Rotating(Alg::Rs256 | Alg::Es256)) => Some(0.5),
            // Issue 22: native code checks a new token at least as fast as jwt_authn.
            (Stack::NhiGuardNativeSmallCache, Traffic::Rotating(Alg::Rs256 | Alg::Es256)) => Some(1.0),
            (Stack::NhiGuard | Stack::NhiGuardNative, Traffic::Flood) => Some(0.95),
            _ => None,
        }
    }

    pub fn traffic_label(&self, settings: &Settings) -> String {
        let half = settings.connections / 2;
        match self.traffic {
            Traffic::Reused => "one RS256 token reused".into(),
            Traffic::Rotating(alg) => format!("{} {alg} tokens in rotation (every token new)", settings.tokens),
            Traffic::ValidAlone => format!("valid callers alone: one RS256 token, {half} connections"),
            Traffic::TokenlessFlood => format!(
                "valid callers ({half} conn.) during a flood without tokens ({} conn.) from another source",
                settings.connections - half
            ),
            Traffic::Flood => format!(
                "valid callers ({half} conn.) during a forged {FLOOD_ALG} flood ({} conn.) from another source",
                settings.connections - half
            ),
            Traffic::Dpop(alg) => format!("one DPoP-bound token reused, a fresh {alg} proof on every request"),
            Traffic::TokenlessAlone => format!(
                "requests without a token alone ({} conn.): the cheapest refusal's capacity",
                settings.connections
            ),
            Traffic::Paced { forged } => format!(
                "valid callers ({half} conn.) during an open-loop flood {} at {:.0}% of that capacity",
                if forged { format!("of forged {FLOOD_ALG} tokens") } else { "without tokens".to_owned() },
                PACED_SHARE * 100.0
            ),
        }
    }

    /// Cases with the same key, next to each other in the plan, take turns: each round
    /// gives every one of them one run, on Envoys kept up between rounds, so that a ratio
    /// between them compares the same stretches of a noisy machine's time rather than
    /// minutes apart. The paced floods need the token-less capacity measured first.
    pub fn interleave_key(&self) -> String {
        match self.traffic {
            Traffic::Reused => "reused".to_owned(),
            Traffic::Dpop(_) => "dpop".to_owned(),
            Traffic::Rotating(alg) => format!("rotating-{}", alg.name()),
            Traffic::ValidAlone | Traffic::TokenlessFlood | Traffic::Flood => {
                format!("flood-{}", self.stack.slug())
            }
            Traffic::TokenlessAlone => "tokenless-alone".to_owned(),
            Traffic::Paced { .. } => "paced".to_owned(),
        }
    }

    /// A directory name for the case's Envoy log and wrk outputs.
    pub fn slug(&self, index: usize) -> String {
        let traffic = match self.traffic {
            Traffic::Reused => "reused".to_owned(),
            Traffic::Rotating(alg) => format!("rotating-{}", alg.name().to_ascii_lowercase()),
            Traffic::ValidAlone => "valid-alone".to_owned(),
            Traffic::TokenlessFlood => "tokenless-flood".to_owned(),
            Traffic::Flood => "flood".to_owned(),
            Traffic::Dpop(alg) => format!("dpop-{}", alg.name().to_ascii_lowercase()),
            Traffic::TokenlessAlone => "tokenless-alone".to_owned(),
            Traffic::Paced { forged: false } => "paced-tokenless-flood".to_owned(),
            Traffic::Paced { forged: true } => "paced-flood".to_owned(),
        };
        format!("{:02}-{}-{traffic}", index + 1, self.stack.slug())
    }
}

/// The measured runs of one case.
#[derive(Clone, Debug)]
pub struct CaseResult {
    pub case: Case,
    /// The measured stream of each run (for the flood: the valid callers).
    pub runs: Vec<Outcome>,
    /// The forged stream of each run of the flood case.
    pub flood_runs: Vec<Outcome>,
    /// Envoy's memory after the last run.
    pub memory_after: Memory,
    /// Flood case: the answer to one more forged token from the flood's source after
    /// the last run (see [`stacks::answer_to_flood_source`]).
    pub flood_answer: Option<String>,
    /// nhi-guard with every token new: mean µs per verification inside Envoy, from
    /// its own `nhi_verification_duration_us` histogram.
    pub verify_mean_us: Option<f64>,
    /// DPoP: mean µs per proof check inside Envoy (`nhi_dpop_proof_duration_us`).
    pub dpop_mean_us: Option<f64>,
    /// DPoP: proofs the replay table recorded (the admitted requests of the load).
    pub dpop_proofs: u64,
    /// DPoP: Envoy's heap growth over the case (the replay table's entries, mostly).
    pub dpop_heap_growth: Option<u64>,
}

impl CaseResult {
    /// How far apart the runs were: (fastest − slowest) / median req/s; none for one run.
    pub fn spread(&self) -> Option<f64> {
        if self.runs.len() < 2 {
            return None;
        }
        let rates = self.runs.iter().map(|o| o.requests_per_sec);
        let (low, high) = rates.fold((f64::MAX, 0.0f64), |(low, high), r| (low.min(r), high.max(r)));
        let median = self.median()?.requests_per_sec;
        (median > 0.0).then(|| (high - low) / median)
    }

    /// The run with the median req/s (the lower one of the middle two for an even count).
    pub fn median(&self) -> Option<&Outcome> {
        let mut sorted: Vec<&Outcome> = self.runs.iter().collect();
        sorted.sort_by(|a, b| a.requests_per_sec.total_cmp(&b.requests_per_sec));
        sorted.get(sorted.len().saturating_sub(1) / 2).copied()
    }
}

/// A case between [`Runner::open`] and [`Runner::close`]: its Envoy up and warmed, its
/// runs so far.
pub struct OpenCase {
    dir: PathBuf,
    envoy: BenchEnvoy,
    heap_before: Option<u64>,
    warmup_requests: u64,
    result: CaseResult,
}

/// Envoy's memory with one and with two workers, for the per-worker cost.
#[derive(Clone, Debug)]
pub struct MemoryPoint {
    pub stack: Stack,
    pub workers: u32,
    pub memory: Memory,
}

/// Everything a case needs that does not change between cases.
pub struct Runner<'a> {
    pub settings: &'a Settings,
    pub envoy_binary: PathBuf,
    pub wasm: PathBuf,
    /// The minimal filter's build ([`Stack::Minimal`]).
    pub minimal_wasm: PathBuf,
    pub jwks: Value,
    pub tokens: &'a Tokens,
    pub script: PathBuf,
    /// The DPoP load's script (see `wrk`).
    pub dpop_script: PathBuf,
    /// DPoP proofs already sent, per algorithm: a proof is good once, so each wrk
    /// process of a case starts after the last one's.
    dpop_sent: std::cell::RefCell<std::collections::HashMap<Alg, usize>>,
    validated: HashSet<Stack>,
    /// The API server the liveness stack asks, started when that stack is prepared.
    kube_api: Option<crate::kube_api::KubeApi>,
    /// [`Traffic::TokenlessAlone`]'s median req/s, once measured: the paced floods' base.
    refusal_capacity: std::cell::Cell<Option<f64>>,
}

impl<'a> Runner<'a> {
    pub fn new(
        settings: &'a Settings,
        envoy_binary: PathBuf,
        wasm: PathBuf,
        minimal_wasm: PathBuf,
        jwks: Value,
        tokens: &'a Tokens,
        script: PathBuf,
    ) -> Self {
        let dpop_script = script.with_file_name("dpop-proofs.lua");
        Self {
            settings,
            envoy_binary,
            wasm,
            minimal_wasm,
            jwks,
            tokens,
            script,
            dpop_script,
            dpop_sent: Default::default(),
            validated: HashSet::new(),
            kube_api: None,
            refusal_capacity: std::cell::Cell::new(None),
        }
    }

    /// Renders `stack`'s config into the work dir and, the first time, has Envoy
    /// validate it.
    pub fn prepare(&mut self, stack: Stack) -> Result<PathBuf> {
        let path = self.settings.work_dir.join(format!("{}.yaml", stack.slug()));
        let api = if stack == Stack::NhiGuardLiveness {
            if self.kube_api.is_none() {
                let api = crate::kube_api::KubeApi::start(&self.jwks)?;
                api.accept_every_token();
                self.kube_api = Some(api);
            }
            self.kube_api.as_ref().map(crate::kube_api::KubeApi::addr)
        } else {
            None
        };
        let wasm = if stack == Stack::Minimal { &self.minimal_wasm } else { &self.wasm };
        fs::write(&path, stack.render_with_api(&self.jwks, wasm, api)?)
            .with_context(|| format!("writing {}", path.display()))?;
        if self.validated.insert(stack) {
            envoy::validate(&self.envoy_binary, &path).with_context(|| format!("validating {stack}"))?;
        }
        Ok(path)
    }

    /// Starts `stack` with `workers` workers in `dir` and probes it.
    fn start(&mut self, stack: Stack, dir: &Path, workers: u32) -> Result<BenchEnvoy> {
        let config = self.prepare(stack)?;
        let envoy = BenchEnvoy::start(&self.envoy_binary, &config, dir, self.settings.envoy_cpu, workers)?;
        stacks::probe(stack, &envoy, self.tokens).with_context(|| {
            format!("probing {stack} (config {}, log {})", config.display(), envoy.log_path().display())
        })?;
        Ok(envoy)
    }

    /// Opens one case: a fresh Envoy, probed and warmed up, ready for its runs.
    pub fn open(&mut self, index: usize, case: Case) -> Result<OpenCase> {
        let dir = self.settings.work_dir.join(case.slug(index));
        let envoy = self.start(case.stack, &dir, 1)?;
        // DPoP: Envoy's heap before any proof of the load is recorded (the replay table's
        // buckets exist from the start, nearly empty).
        let heap_before = match case.traffic {
            Traffic::Dpop(_) => Some(envoy.memory()?.allocated_bytes),
            _ => None,
        };
        let warmup = self.settings.warmup();
        let mut warmup_requests = 0;
        if !warmup.is_zero() {
            warmup_requests = self.measure(&envoy, case, warmup).context("warmup")?.0.requests;
        }
        let result = CaseResult {
            case,
            runs: Vec::new(),
            flood_runs: Vec::new(),
            memory_after: Memory::default(),
            flood_answer: None,
            verify_mean_us: None,
            dpop_mean_us: None,
            dpop_proofs: 0,
            dpop_heap_growth: None,
        };
        Ok(OpenCase { dir, envoy, heap_before, warmup_requests, result })
    }

    /// One measured run of an open case.
    pub fn run_once(&self, open: &mut OpenCase) -> Result<()> {
        let run = open.result.runs.len() + 1;
        let (measured, flood) = self.measure(&open.envoy, open.result.case, self.settings.run_length())?;
        fs::write(open.dir.join(format!("wrk-run-{run}.txt")), &measured.raw)
            .context("saving wrk's output")?;
        if let Some(flood) = flood {
            fs::write(open.dir.join(format!("wrk-run-{run}-flood.txt")), &flood.raw)
                .context("saving wrk's output")?;
            open.result.flood_runs.push(flood);
        }
        open.result.runs.push(measured);
        Ok(())
    }

    /// Closes a case after its runs: what its Envoy says after the load, then stops it.
    pub fn close(&self, open: OpenCase) -> Result<CaseResult> {
        let OpenCase { mut envoy, heap_before, warmup_requests, mut result, .. } = open;
        let case = result.case;
        if case.traffic == Traffic::TokenlessAlone {
            self.refusal_capacity.set(result.median().map(|m| m.requests_per_sec));
        }
        if case.traffic == Traffic::Flood {
            result.flood_answer = Some(stacks::answer_to_flood_source(&envoy, self.tokens)?);
        }
        if matches!(case.traffic, Traffic::Rotating(_)) && case.stack != Stack::NativeJwt {
            result.verify_mean_us = envoy.verification_mean_us()?;
        }
        envoy.check_running()?;
        result.memory_after = envoy.memory()?;
        if let Traffic::Dpop(_) = case.traffic {
            result.dpop_mean_us = envoy.dpop_proof_mean_us()?;
            // Every admitted request recorded one proof (refusals fail the case).
            result.dpop_proofs = warmup_requests + result.runs.iter().map(|o| o.requests).sum::<u64>();
            result.dpop_heap_growth =
                heap_before.map(|before| result.memory_after.allocated_bytes.saturating_sub(before));
        }
        Ok(result)
    }

    /// One run of `case` against `envoy`: the measured stream and, for the flood, the
    /// forged stream. Refusals of valid traffic or admissions of forged traffic are errors.
    fn measure(
        &self,
        envoy: &BenchEnvoy,
        case: Case,
        duration: Duration,
    ) -> Result<(Outcome, Option<Outcome>)> {
        let settings = self.settings;
        let load = |connections, tokens, source: Option<&str>| Load {
            target: envoy.listener(),
            path: BENCH_PATH.to_owned(),
            connections,
            duration,
            tokens,
            source: source.map(str::to_owned),
            cpu: settings.wrk_cpu,
            rate: None,
        };
        let forged =
            || wrk::Tokens::Rotate { file: self.tokens.forged.file.clone(), script: self.script.clone() };
        let reused = wrk::Tokens::One(self.tokens.reused.clone());
        let half = settings.connections / 2;
        let (measured, flood) = match case.traffic {
            Traffic::Reused => (wrk::run(&load(settings.connections, reused, None))?, None),
            Traffic::Rotating(alg) => {
                let rotation = wrk::Tokens::Rotate {
                    file: self.tokens.rotation(alg)?.file.clone(),
                    script: self.script.clone(),
                };
                (wrk::run(&load(settings.connections, rotation, None))?, None)
            }
            Traffic::ValidAlone => (wrk::run(&load(half, reused, Some(VALID_SOURCE)))?, None),
            Traffic::Dpop(alg) => {
                let offset = self.dpop_sent.borrow().get(&alg).copied().unwrap_or_default();
                let proofs = wrk::Tokens::Dpop {
                    file: self.tokens.dpop(alg)?.file.clone(),
                    script: self.dpop_script.clone(),
                    authority: DPOP_AUTHORITY.to_owned(),
                    offset,
                };
                let outcome = wrk::run(&load(settings.connections, proofs, None))?;
                // Requests cut at the end may have reached Envoy: skip a margin too.
                let sent = outcome.requests as usize + settings.connections as usize * 4;
                *self.dpop_sent.borrow_mut().entry(alg).or_default() += sent;
                (outcome, None)
            }
            Traffic::TokenlessFlood | Traffic::Flood => {
                let flood_tokens = if case.traffic == Traffic::Flood { forged() } else { wrk::Tokens::None };
                let valid = load(half, reused, Some(VALID_SOURCE));
                let flood = load(settings.connections - half, flood_tokens, Some(FLOOD_SOURCE));
                let (valid, flood) = wrk::run_pair(&valid, &flood)?;
                (valid, Some(flood))
            }
            Traffic::TokenlessAlone => {
                let refusals = wrk::run(&load(settings.connections, wrk::Tokens::None, Some(FLOOD_SOURCE)))?;
                if refusals.requests == 0 || refusals.successes() > 0 {
                    bail!(
                        "{}: requests without a token were admitted; wrk said:\n{}",
                        case.stack,
                        refusals.raw
                    );
                }
                return Ok((refusals, None));
            }
            Traffic::Paced { forged: with_tokens } => {
                let capacity = self
                    .refusal_capacity
                    .get()
                    .context("the paced floods need the token-less capacity case first (BENCH_ONLY?)")?;
                let valid = load(half, reused, Some(VALID_SOURCE));
                let flood_tokens = if with_tokens { forged() } else { wrk::Tokens::None };
                let flood = Load {
                    rate: Some(capacity * PACED_SHARE),
                    ..load(super::paced::PACED_CONNECTIONS, flood_tokens, Some(FLOOD_SOURCE))
                };
                let (valid, flood) = wrk::run_pair(&valid, &flood)?;
                (valid, Some(flood))
            }
        };
        if measured.requests == 0 || measured.non_2xx > 0 {
            bail!(
                "misconfigured {}: {} of {} valid requests were refused; wrk said:\n{}",
                case.stack,
                measured.non_2xx,
                measured.requests,
                measured.raw
            );
        }
        if let Some(flood) = &flood {
            if flood.successes() > 0 {
                bail!(
                    "{}: {} requests of the flood were admitted; wrk said:\n{}",
                    case.stack,
                    flood.successes(),
                    flood.raw
                );
            }
        }
        Ok((measured, flood))
    }

    /// Envoy's memory with the router only and with nhi-guard, each with one and two
    /// workers, after a second of load with the rotating RS256 tokens (caches and quota
    /// table populated).
    pub fn measure_memory(&mut self) -> Result<Vec<MemoryPoint>> {
        let mut points = Vec::new();
        for stack in [Stack::Router, Stack::NhiGuard] {
            for workers in [1, 2] {
                let dir = self.settings.work_dir.join(format!("memory-{}-{workers}w", stack.slug()));
                let envoy = self.start(stack, &dir, workers)?;
                let tokens = wrk::Tokens::Rotate {
                    file: self.tokens.rotation(Alg::Rs256)?.file.clone(),
                    script: self.script.clone(),
                };
                wrk::run(&Load {
                    target: envoy.listener(),
                    path: BENCH_PATH.to_owned(),
                    connections: self.settings.connections,
                    duration: Duration::from_secs(1),
                    tokens,
                    source: None,
                    cpu: self.settings.wrk_cpu,
                    rate: None,
                })
                .with_context(|| format!("loading {stack} for the memory measurement"))?;
                points.push(MemoryPoint { stack, workers, memory: envoy.memory()? });
            }
        }
        Ok(points)
    }
}

/// A rough duration of the whole run, to print before starting.
pub fn estimate(settings: &Settings, cases: usize) -> Duration {
    const STARTUP_AND_PROBES: u64 = 3;
    const MEMORY_MEASUREMENT: u64 = 4 * (STARTUP_AND_PROBES + 1);
    let per_case = settings.warmup_seconds + u64::from(settings.runs) * settings.seconds + STARTUP_AND_PROBES;
    Duration::from_secs(per_case * cases as u64 + MEMORY_MEASUREMENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compared_cases_take_turns_and_the_paced_floods_base_is_measured_first() {
        let plan = Case::plan();
        let groups: Vec<&[Case]> = plan.chunk_by(|a, b| a.interleave_key() == b.interleave_key()).collect();
        let group_of = |case: &Case| groups.iter().position(|g| g.contains(case)).unwrap();
        // One stretch of the plan per key: nothing compared is split across groups.
        let mut keys = HashSet::new();
        for group in &groups {
            assert!(keys.insert(group[0].interleave_key()), "{} is split", group[0].interleave_key());
        }
        // A case and its reference take turns, or the reference's group ran before.
        for case in &plan {
            if let Some(reference) = case.reference() {
                assert!(group_of(&reference) <= group_of(case), "{case:?} needs {reference:?}");
            }
        }
        let reused = plan.iter().filter(|c| c.traffic == Traffic::Reused).count();
        assert_eq!(groups[0].len(), reused, "every reused-token stack takes turns with the others");
        // The paced floods are offered a share of the token-less capacity, known only once
        // its case is closed: a group of its own, before theirs.
        let capacity = group_of(&Case::new(Stack::NhiGuard, Traffic::TokenlessAlone));
        assert_eq!(groups[capacity].len(), 1);
        for forged in [false, true] {
            assert!(group_of(&Case::new(Stack::NhiGuard, Traffic::Paced { forged })) > capacity);
        }
    }

    #[test]
    fn every_reference_runs_before_the_case_that_needs_it() {
        let plan = Case::plan();
        for (index, case) in plan.iter().enumerate() {
            if let Some(reference) = case.reference() {
                let at = plan.iter().position(|c| *c == reference).unwrap();
                assert!(at < index, "{case:?} needs {reference:?} first");
            }
        }
    }

    #[test]
    fn the_issue_targets_are_all_there() {
        let targets: Vec<(Case, f64)> =
            Case::plan().into_iter().filter_map(|case| case.target().map(|t| (case, t))).collect();
        // The five of issues 10 and 21, liveness (issue 16), and issue 22's native shell
        // against the native stack, (RS256, ES256) against jwt_authn and under the flood.
        assert_eq!(targets.len(), 10, "{targets:?}");
        // The forged flood is held against the token-less one of the same shell (issues 21
        // and 22), not against no flood.
        for stack in [Stack::NhiGuard, Stack::NhiGuardNative] {
            let flood = Case::new(stack, Traffic::Flood);
            assert_eq!(flood.reference(), Some(Case::new(stack, Traffic::TokenlessFlood)));
            assert_eq!(flood.target(), Some(0.95));
            let tokenless = Case::new(stack, Traffic::TokenlessFlood).reference();
            assert_eq!(tokenless, Some(Case::new(stack, Traffic::ValidAlone)));
        }
        assert!(targets.iter().all(|(case, _)| case.reference().is_some()));
    }

    #[test]
    fn the_median_is_the_middle_run() {
        let outcome = |rate| Outcome { requests_per_sec: rate, ..Outcome::default() };
        let result = CaseResult {
            case: Case::new(Stack::Router, Traffic::Reused),
            runs: vec![outcome(3.0), outcome(1.0), outcome(2.0)],
            flood_runs: Vec::new(),
            memory_after: Memory::default(),
            flood_answer: None,
            verify_mean_us: None,
            dpop_mean_us: None,
            dpop_proofs: 0,
            dpop_heap_growth: None,
        };
        assert_eq!(result.median().unwrap().requests_per_sec, 2.0);
        assert_eq!(result.spread(), Some(1.0));
    }
}
