//! `nhi-guard`: the native companion of the filter.
//!
//! ```text
//! nhi-guard check FILE...   validate the plugin configuration in each file
//! nhi-guard explain FILE …  what the filter would do with one request, stage by stage
//! nhi-guard schema          print the JSON Schema of the plugin configuration
//! ```
//!
//! `check` reads plugin JSON, Envoy YAML (bootstrap or ECDS), Kubernetes manifests
//! (WasmPlugin, EnvoyFilter, EnvoyExtensionPolicy, ConfigMap) and APISIX files; `-`
//! reads standard input. It exits 0 when every file passes, 1 when a configuration
//! is invalid, 2 on a usage error or an unreadable file. Warnings (an Envoy admin
//! interface beyond loopback, header names with underscores let through) go to
//! standard error and do not change the exit status.

use std::io::{self, Read as _, Write as _};
use std::process::ExitCode;

use std::collections::BTreeMap;

use nhi_guard_cli::check;
use nhi_guard_cli::cluster;
use nhi_guard_cli::explain::{self, ExplainRequest, Explainer};

const USAGE: &str = "\
usage: nhi-guard check [--quiet] FILE...
       nhi-guard check --cluster STATE... [--inventory FILE] [--format human|json|sarif]
                       [--gateway NS/NAME] [--gateway-service-account SA] [--trust-domain TD]
                       [--unused-days N] [--fail-on error|warning] FILE...
       nhi-guard explain FILE [--config N] [--method M] [--path P] [--host H] [--source IP[:PORT]]
                         [--header 'NAME: VALUE']... [--token TOKEN|@FILE|-] [--jwks [ISSUER=]FILE]...
                         [--body FILE] [--now UNIX_SECONDS] [--liveness alive|gone]
                         [--revocations FILE]
       nhi-guard schema

check   validates the nhi-guard plugin configuration found in each FILE (plugin JSON,
        Envoy YAML, Istio WasmPlugin/EnvoyFilter, Envoy Gateway EnvoyExtensionPolicy,
        APISIX config.yaml/apisix.yaml, ConfigMap; `-` for standard input) with the
        validation the filter runs at start-up. Also warns (`FILE: warning: ...`)
        about an Envoy bootstrap whose admin interface is not on loopback or whose
        HTTP connection managers let header names with underscores through.
        Exit status: 0 all valid (warnings or not), 1 invalid, 2 usage error or
        unreadable file.
        With --cluster, also checks each configuration against the cluster: STATE is
        `kubectl get ... -o json` output or manifests (namespaces, service accounts,
        services, endpoints/endpointslices, pods, network policies, deployments, Istio
        AuthorizationPolicy/PeerAuthentication/ServiceEntry), --inventory the identity
        inventory JSON. Exit status: 0 no error (no warning with --fail-on warning),
        1 an invalid configuration or a failing finding, 2 usage error or unreadable
        input. See docs/cluster-alignment.md.
explain runs one request through the filter's own pipeline with the configuration in FILE
        (anything `check` reads; --config N picks the Nth when it holds several) and prints
        stage by stage what the filter would do: route, each token check, the rule that
        admits or refuses, the quota, the headers forwarded and the exact response. The
        token's signature is checked with --jwks (the issuer's JWKS document; ISSUER= when
        the token's iss does not say which issuer), or with the issuer's inline keys;
        otherwise it is reported as not checked. Partner secrets are read from explain's
        own environment (the variables the configuration names); one that is missing is
        replaced by a placeholder and the partner check reported as not checked. The
        TokenReview of an issuer with profile.liveness happens in the gateway: it is
        reported as not checked and explained as if the API server said alive, unless
        --liveness gives its answer. The revocation feed is the gateway's: --revocations
        applies a feed document; without it the feed is reported as not checked and
        explained as empty and fresh. What else explain cannot know offline (replay
        caches, DPoP nonces the gateway issued, learned behaviour baselines) is said so.
        Exit status: 0 the request would be forwarded, 1 refused, 2 usage error,
        unreadable file or invalid configuration.
schema  prints the JSON Schema of the plugin configuration.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("check") => check_files(args.get(1..).unwrap_or_default()),
        Some("explain") => explain_request(args.get(1..).unwrap_or_default()),
        Some("schema") if args.len() == 1 => {
            print!("{}", nhi_guard_cli::schema::plugin_config_schema_text());
            ExitCode::SUCCESS
        }
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some("-V" | "--version") => {
            println!("nhi-guard {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn read_text(file: &str) -> io::Result<String> {
    if file == "-" {
        let mut text = String::new();
        io::stdin().read_to_string(&mut text).map(|_| text)
    } else {
        std::fs::read_to_string(file)
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("nhi-guard: {message}\n{USAGE}");
    ExitCode::from(2)
}

fn explain_request(args: &[String]) -> ExitCode {
    match run_explain(args) {
        Ok(code) => code,
        Err(message) => usage_error(&message),
    }
}

fn run_explain(args: &[String]) -> Result<ExitCode, String> {
    let mut file = None;
    let mut pick = 1usize;
    let mut request = ExplainRequest::new("GET", "/");
    request.host = "gateway".to_owned();
    request.source = None;
    let mut token = None;
    let mut jwks_args = Vec::new();
    let mut now = None;
    let mut offline = explain::offline::Offline::default();
    let mut revocations = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let mut value = |name: &str| rest.next().cloned().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--config" => {
                pick = value(arg)?.parse().map_err(|_| "--config takes a number (1 is the first)")?
            }
            "--method" => request.method = value(arg)?,
            "--path" => request.path = value(arg)?,
            "--host" => request.host = value(arg)?,
            "--source" => request.source = Some(value(arg)?),
            "--header" | "-H" => {
                let header = value(arg)?;
                let (name, value) = header.split_once(':').ok_or("--header takes 'NAME: VALUE'")?;
                request.headers.push((name.trim().to_owned(), value.trim_start().to_owned()));
            }
            "--token" => token = Some(value(arg)?),
            "--jwks" => jwks_args.push(value(arg)?),
            "--body" => {
                let path = value(arg)?;
                request.body = Some(std::fs::read(&path).map_err(|e| format!("--body {path}: {e}"))?);
            }
            "--now" => now = Some(value(arg)?.parse::<u64>().map_err(|_| "--now takes Unix seconds")?),
            "--liveness" => offline.liveness = Some(value(arg)?.parse().map_err(|e| format!("{e}"))?),
            "--revocations" => revocations = Some(value(arg)?),
            other if other.starts_with('-') && other != "-" => return Err(format!("unknown option {other}")),
            other if file.is_none() => file = Some(other.to_owned()),
            other => return Err(format!("one configuration file only ({other}?)")),
        }
    }
    let file = file.ok_or("explain needs the file holding the plugin configuration")?;
    let fail = |message: String| {
        eprintln!("nhi-guard explain: {message}");
        ExitCode::from(2)
    };
    let text = match read_text(&file) {
        Ok(text) => text,
        Err(err) => return Ok(fail(format!("{file}: cannot read: {err}"))),
    };
    let extracted = check::extract(&file, &text);
    if let Some(problem) = extracted.problems.first() {
        return Ok(fail(format!("{file}: {problem}")));
    }
    let count = extracted.configs.len();
    let Some(found) = extracted.configs.get(pick.saturating_sub(1)) else {
        return Ok(fail(format!("{file} holds {count} plugin configuration(s), not a number {pick}")));
    };
    let bytes = match check::handed_over(found) {
        Ok((bytes, _)) => bytes,
        Err(err) => return Ok(fail(format!("{file}: {err}"))),
    };
    let config = match nhi_guard_core::config::Config::from_json(&bytes) {
        Ok(config) => config,
        Err(err) => return Ok(fail(format!("{file}: {}: {err}", found.what))),
    };
    let token = match token.as_deref() {
        Some("-") => Some(read_text("-").map_err(|e| format!("--token -: {e}"))?.trim().to_owned()),
        Some(t) if t.starts_with('@') => {
            Some(read_text(&t[1..]).map_err(|e| format!("--token {t}: {e}"))?.trim().to_owned())
        }
        Some(t) => Some(t.to_owned()),
        None => None,
    };
    if let Some(token) = &token {
        request.headers.push((config.token.header.clone(), format!("{}{token}", config.token.prefix)));
    }
    let presented = explain::token_in(&config, &request);
    let token_issuer = presented
        .as_deref()
        .and_then(|t| explain::resign::peek(t).iss)
        .and_then(|iss| config.issuer_by_iss(&iss).map(|(_, i)| i.name.clone()));
    let mut jwks = BTreeMap::new();
    for arg in &jwks_args {
        let (issuer, path) = match arg.split_once('=') {
            Some((issuer, path)) => (issuer.to_owned(), path),
            None => match &token_issuer {
                Some(issuer) => (issuer.clone(), arg.as_str()),
                None => {
                    return Err(format!(
                        "--jwks {arg}: the token names no configured issuer; use --jwks ISSUER=FILE"
                    ))
                }
            },
        };
        let document = match read_text(path) {
            Ok(text) => text,
            Err(err) => return Ok(fail(format!("{path}: cannot read: {err}"))),
        };
        jwks.insert(issuer, document);
    }
    if let Some(path) = revocations {
        let document = match read_text(&path) {
            Ok(text) => text,
            Err(err) => return Ok(fail(format!("{path}: cannot read: {err}"))),
        };
        match explain::offline::Feed::parse(&path, document) {
            Ok(feed) => offline.revocations = Some(feed),
            Err(err) => return Ok(fail(err.to_string())),
        }
    }
    let prepared = match explain::prepare(&config, request, jwks) {
        Ok(prepared) => prepared,
        Err(err) => return Ok(fail(err.to_string())),
    };
    let now_ms = now.map_or_else(
        || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        },
        |seconds| seconds.saturating_mul(1000),
    );
    // The partner secrets the configuration names, from explain's own environment.
    let environment: BTreeMap<String, Vec<u8>> = config
        .partners
        .as_ref()
        .map(|p| p.environment_variables())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(_, name)| {
            let value = std::env::var_os(name)?;
            Some((name.to_owned(), value.into_encoded_bytes()))
        })
        .collect();
    let mut explainer = match Explainer::start_offline(
        &bytes,
        &prepared.jwks,
        &prepared.throwaway,
        now_ms,
        &environment,
        offline,
    ) {
        Ok(explainer) => explainer,
        Err(err) => return Ok(fail(err.to_string())),
    };
    let explanation = match explainer.explain(0, &prepared.request) {
        Ok(explanation) => explanation,
        Err(err) => return Ok(fail(err.to_string())),
    };
    let which =
        if count > 1 { format!(" ({pick} of {count}: --config N picks another)") } else { String::new() };
    print!("config    {file}: {}{which}\n{}", found.what, explainer.render(&explanation));
    Ok(if explanation.forwarded() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `check`'s options.
#[derive(Default)]
struct CheckArgs {
    quiet: bool,
    files: Vec<String>,
    /// `--cluster`: cluster state files; the cluster checks run when any is given.
    cluster: Vec<String>,
    inventory: Option<String>,
    format: Option<String>,
    fail_on_warning: bool,
    options: cluster::Options,
}

fn parse_check_args(args: &[String]) -> Result<CheckArgs, String> {
    let mut parsed = CheckArgs::default();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let mut value = |name: &str| rest.next().cloned().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--quiet" | "-q" => parsed.quiet = true,
            "--cluster" => parsed.cluster.push(value(arg)?),
            "--inventory" => parsed.inventory = Some(value(arg)?),
            "--format" => parsed.format = Some(value(arg)?),
            "--gateway" => parsed.options.gateway = Some(value(arg)?),
            "--gateway-service-account" => parsed.options.gateway_service_account = Some(value(arg)?),
            "--trust-domain" => parsed.options.trust_domain = value(arg)?,
            "--unused-days" => {
                parsed.options.unused_days =
                    value(arg)?.parse().map_err(|_| "--unused-days takes a number")?
            }
            "--fail-on" => match value(arg)?.as_str() {
                "error" => parsed.fail_on_warning = false,
                "warning" => parsed.fail_on_warning = true,
                other => return Err(format!("--fail-on {other}: error or warning")),
            },
            other if other.starts_with('-') && other != "-" => return Err(format!("unknown option {other}")),
            file => parsed.files.push(file.to_owned()),
        }
    }
    if parsed.files.is_empty() {
        return Err("check needs at least one file".into());
    }
    if parsed.format.is_some() && parsed.cluster.is_empty() {
        return Err("--format applies to --cluster".into());
    }
    Ok(parsed)
}

fn check_files(args: &[String]) -> ExitCode {
    let args = match parse_check_args(args) {
        Ok(args) => args,
        Err(message) => return usage_error(&message),
    };
    let format = match args.format.as_deref().map(cluster::report::Format::parse) {
        None => cluster::report::Format::Human,
        Some(Some(format)) => format,
        Some(None) => return usage_error("--format takes human, json or sarif"),
    };
    let mut unreadable = false;
    let mut invalid = false;
    let mut configured = Vec::new();
    let mut hints = Vec::new();
    let stdout = io::stdout();
    let mut out = stdout.lock();
    for file in &args.files {
        let text = match read_text(file) {
            Ok(text) => text,
            Err(err) => {
                eprintln!("{file}: cannot read: {err}");
                unreadable = true;
                continue;
            }
        };
        let report = check::check_text(file, &text);
        if !args.quiet && format == cluster::report::Format::Human {
            for line in &report.ok {
                let _ = writeln!(out, "{file}: {line}");
            }
        }
        for line in &report.warnings {
            eprintln!("{file}: warning: {line}");
        }
        for line in &report.errors {
            eprintln!("{file}: {line}");
        }
        invalid |= !report.passed();
        if !args.cluster.is_empty() {
            hints.extend(cluster::gateway_hints(&text));
            for found in check::extract(file, &text).configs {
                let valid = check::check_found(&found).is_ok();
                if let (true, Ok((_, Some(plugin)))) = (valid, check::handed_over(&found)) {
                    configured.push(cluster::Configured {
                        file: file.clone(),
                        what: found.what.clone(),
                        plugin,
                    });
                }
            }
        }
    }
    if args.cluster.is_empty() {
        return match (unreadable, invalid) {
            (true, _) => ExitCode::from(2),
            (false, true) => ExitCode::from(1),
            (false, false) => ExitCode::SUCCESS,
        };
    }
    let mut state = cluster::Cluster::default();
    for file in &args.cluster {
        let read = read_text(file)
            .map_err(|e| format!("{file}: cannot read: {e}"))
            .and_then(|t| state.read(file, &t));
        if let Err(message) = read {
            eprintln!("{message}");
            unreadable = true;
        }
    }
    let inventory = match &args.inventory {
        None => None,
        Some(file) => {
            match read_text(file).map_err(|e| e.to_string()).and_then(|t| cluster::Inventory::parse(&t)) {
                Ok(inventory) => Some(inventory),
                Err(err) => {
                    eprintln!("{file}: {err}");
                    unreadable = true;
                    None
                }
            }
        }
    };
    if unreadable {
        return ExitCode::from(2);
    }
    let mut options = args.options.clone();
    options.hints = hints;
    options.now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let report = cluster::check(&configured, &state, inventory.as_ref(), &options);
    let _ = write!(out, "{}", cluster::report::render(&report, format));
    let failing = report.count(cluster::Severity::Error) > 0
        || (args.fail_on_warning && report.count(cluster::Severity::Warning) > 0);
    if invalid || failing {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
