//! `nhi-demo`: the local demo without Docker. `up` starts the demo JWKS server and the
//! echo upstream (as a detached `nhi-demo serve`) and Envoy with the filter, all on fixed
//! loopback ports, and leaves them running; `down` stops them by the PIDs it recorded.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt as _;

use anyhow::{bail, Context, Result};
use test_harness::demo::{self, ADMIN_ADDR, JWKS_ADDR, LISTENER_ADDR, UPSTREAM_ADDR, WEB_ADDR};
use test_harness::envoy::{self, Envoy, EnvoyOptions};
use test_harness::envoy_config::EnvoyConfig;
use test_harness::http;
use test_harness::jwks_server::{JwksBehaviour, JwksServer, JWKS_PATH};
use test_harness::mint::{self, Alg, Token};
use test_harness::process;
use test_harness::stack::{UPSTREAM_CLUSTER, WEB_CLUSTER};
use test_harness::upstream::EchoUpstream;

const USAGE: &str = "\
nhi-demo: run the nhi-guard demo locally (Envoy + filter + JWKS server + echo upstream)

usage:
  nhi-demo up   [--state-dir .demo] [--native]
                                      start everything in the background (--native: the
                                      native shell, an Envoy dynamic module, in the wasm's place)
  nhi-demo down [--state-dir .demo]   stop what `up` started
  nhi-demo gen-demo-keys DIR [--force]
                                      write a new demo key pair (demo-signing-key.jwk.json,
                                      jwks.json) into DIR, e.g. envoy/demo
  nhi-demo serve --jwks FILE          (internal) the JWKS server and upstream in the
                                      foreground

Envoy comes from $ENVOY_BIN or .tools/envoy/bin/envoy, the filter from $NHI_WASM or
target/wasm32-wasip1/release/nhi_guard.wasm (with --native: $NHI_NATIVE_MODULE or
target/release/libnhi_guard_envoy.so).";

const PIDS_FILE: &str = "pids";
const TOKEN_FILE: &str = "token";
/// A token that expired an hour ago, to show a rejection.
const EXPIRED_TOKEN_FILE: &str = "expired-token";
const SERVERS_LOG: &str = "servers.log";
/// The demo token outlives a coffee break; test tokens use the 300 s default.
const DEMO_TOKEN_TTL_SECONDS: u64 = 3600;
const SERVERS_TIMEOUT: Duration = Duration::from_secs(10);
const KEYS_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A process `up` started, as recorded in the pids file (`<role> <pid>` lines).
struct Recorded {
    role: String,
    pid: u32,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("up") => state_dir(&args).and_then(|dir| up(&dir, args.iter().any(|arg| arg == "--native"))),
        Some("down") => state_dir(&args).and_then(|dir| down(&dir)),
        Some("serve") => flag_value(&args, "--jwks").and_then(|jwks| serve(Path::new(&jwks))),
        Some("gen-demo-keys") => gen_demo_keys(&args),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => {
            eprintln!("nhi-demo: unknown or missing command\n\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("nhi-demo: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn flag_value(args: &[String], flag: &str) -> Result<String> {
    let position = args.iter().position(|arg| arg == flag).with_context(|| format!("{flag} is required"))?;
    args.get(position + 1).cloned().with_context(|| format!("{flag} needs a value"))
}

fn state_dir(args: &[String]) -> Result<PathBuf> {
    if args.iter().any(|arg| arg == "--state-dir") {
        flag_value(args, "--state-dir").map(PathBuf::from)
    } else {
        Ok(PathBuf::from(".demo"))
    }
}

fn gen_demo_keys(args: &[String]) -> Result<()> {
    let dir = args.get(1).filter(|arg| !arg.starts_with("--")).context("gen-demo-keys needs a directory")?;
    let force = args.iter().any(|arg| arg == "--force");
    let (key, jwks) = demo::generate_demo_keys(Path::new(dir), force)?;
    println!("wrote {} and {}", key.display(), jwks.display());
    Ok(())
}

/// Foreground half of `up`: serve until killed.
fn serve(jwks_path: &Path) -> Result<()> {
    let jwks = demo::read_json(jwks_path)?;
    let _jwks = JwksServer::bind(JWKS_ADDR, JwksBehaviour::serve(&jwks))?;
    let _upstream = EchoUpstream::bind_named(UPSTREAM_ADDR, Some("machine"))?;
    let _web = EchoUpstream::bind_named(WEB_ADDR, Some("web"))?;
    println!(
        "serving {} on http://{JWKS_ADDR}{JWKS_PATH}, the machine backend on http://{UPSTREAM_ADDR} and the web backend on http://{WEB_ADDR}",
        jwks_path.display()
    );
    loop {
        thread::park();
    }
}

fn up(state_dir: &Path, native: bool) -> Result<()> {
    fs::create_dir_all(state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
    let running: Vec<Recorded> =
        read_pids(state_dir)?.into_iter().filter(|recorded| process::is_alive(recorded.pid)).collect();
    if !running.is_empty() {
        bail!(
            "the demo already runs (PIDs {}); stop it first with `make demo-stop`",
            running.iter().map(|recorded| recorded.pid.to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    let key = demo::load_signing_key(&demo::default_signing_key_path())?;
    let jwks_path = demo::demo_dir().join(demo::JWKS_FILE);
    demo::read_json(&jwks_path)?;

    let mut servers = spawn_servers(state_dir, &jwks_path)?;
    let mut recorded = vec![Recorded { role: "servers".into(), pid: servers.id() }];
    write_pids(state_dir, &recorded)?;
    let started = start_envoy(state_dir, &mut servers, native).and_then(|envoy| {
        recorded.push(Recorded { role: "envoy".into(), pid: envoy.pid().context("Envoy has no PID")? });
        write_pids(state_dir, &recorded)?;
        let now = mint::now();
        let token =
            Token::new(Alg::Es256).claim("iat", now).claim("exp", now + DEMO_TOKEN_TTL_SECONDS).sign(&key)?;
        let expired = Token::new(Alg::Es256)
            .claim("iat", now - 2 * DEMO_TOKEN_TTL_SECONDS)
            .claim("exp", now - DEMO_TOKEN_TTL_SECONDS)
            .sign(&key)?;
        Ok((envoy, token, expired))
    });
    let (mut envoy, token, expired) = match started {
        Ok(started) => started,
        Err(err) => {
            let _ = process::terminate(servers.id(), STOP_GRACE);
            let _ = fs::remove_file(state_dir.join(PIDS_FILE));
            return Err(err);
        }
    };

    let authorization = format!("Bearer {token}");
    let keys_loaded = envoy.wait_until("the filter to load the demo keys", KEYS_TIMEOUT, |envoy| {
        let response = envoy.request("GET", "/", &[("authorization", &authorization)])?;
        Ok(response.status != 503)
    });
    if let Err(err) = keys_loaded {
        drop(envoy); // stops it
        let _ = process::terminate(servers.id(), STOP_GRACE);
        let _ = fs::remove_file(state_dir.join(PIDS_FILE));
        return Err(err);
    }
    for (file, token) in [(TOKEN_FILE, &token), (EXPIRED_TOKEN_FILE, &expired)] {
        let path = state_dir.join(file);
        fs::write(&path, format!("{token}\n")).with_context(|| format!("writing {}", path.display()))?;
    }
    envoy.detach();
    print_instructions(state_dir);
    Ok(())
}

fn spawn_servers(state_dir: &Path, jwks_path: &Path) -> Result<Child> {
    let log_path = state_dir.join(SERVERS_LOG);
    let log = File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let exe = std::env::current_exe().context("locating nhi-demo itself")?;
    let mut child = Command::new(exe)
        .arg("serve")
        .arg("--jwks")
        .arg(jwks_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Not in our process group: it must outlive `up` and ignore a Ctrl-C sent to it.
        .process_group(0)
        .spawn()
        .context("starting `nhi-demo serve`")?;

    let deadline = Instant::now() + SERVERS_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "`nhi-demo serve` exited with {status} (ports {JWKS_ADDR}, {UPSTREAM_ADDR} and {WEB_ADDR} must be free):\n{}",
                fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        let jwks_ok =
            http::request(JWKS_ADDR, "GET", JWKS_PATH, &[]).is_ok_and(|response| response.status == 200);
        let upstream_ok = http::request(UPSTREAM_ADDR, "GET", "/", &[]).is_ok()
            && http::request(WEB_ADDR, "GET", "/", &[]).is_ok();
        if jwks_ok && upstream_ok {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = process::terminate(child.id(), STOP_GRACE);
            bail!("`nhi-demo serve` did not answer within {SERVERS_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn start_envoy(state_dir: &Path, servers: &mut Child, native: bool) -> Result<Envoy> {
    let plugin = EnvoyConfig::shipped()?.plugin_configuration()?;
    let jwks_cluster = plugin
        .pointer("/issuers/0/jwks/cluster")
        .and_then(serde_json::Value::as_str)
        .context("the shipped plugin configuration has no issuers[0].jwks.cluster")?;
    let mut options = EnvoyOptions::new()
        .listener(LISTENER_ADDR)
        .admin(ADMIN_ADDR)
        .cluster(UPSTREAM_CLUSTER, UPSTREAM_ADDR)
        .cluster(WEB_CLUSTER, WEB_ADDR)
        .cluster(jwks_cluster, JWKS_ADDR)
        .work_dir(state_dir.canonicalize()?);
    options.own_process_group = true;
    if native {
        options = options.native_filter(&envoy::native_module_path()?)?;
    }
    if let Some(status) = servers.try_wait()? {
        bail!("`nhi-demo serve` exited with {status}");
    }
    Envoy::start(&options)
}

fn print_instructions(state_dir: &Path) {
    let dir = state_dir.display();
    println!(
        "\
nhi-guard demo is up:
  gateway   http://{LISTENER_ADDR}   Envoy + nhi-guard
  admin     http://{ADMIN_ADDR}
  JWKS      http://{JWKS_ADDR}{JWKS_PATH}
  machine   http://{UPSTREAM_ADDR}   backend for machine traffic (echoes what it receives)
  web       http://{WEB_ADDR}   backend for people (echoes too)
  logs      {dir}/envoy.log, {dir}/{SERVERS_LOG}

Try:
  curl -i http://{LISTENER_ADDR}/api/hello
      401, reason missing_token (/api/ is a machine route)
  curl -i -H \"authorization: Bearer $(cat {dir}/{TOKEN_FILE})\" http://{LISTENER_ADDR}/api/hello
      200 from the machine backend; the echo shows x-nhi-identity, x-nhi-issuer, x-nhi-client
  curl -i -H \"authorization: Bearer $(cat {dir}/{EXPIRED_TOKEN_FILE})\" http://{LISTENER_ADDR}/api/hello
      401, reason expired
  curl -i http://{LISTENER_ADDR}/web/index.html
      200 from the web backend (/web/ is a human route: no token needed)
  curl -i -H \"authorization: Bearer $(cat {dir}/{TOKEN_FILE})\" http://{LISTENER_ADDR}/web/index.html
      403, reason machine_on_human_route

Stop it with: make demo-stop   (or: nhi-demo down --state-dir {dir})"
    );
}

/// `down`: SIGTERM (then SIGKILL) every recorded process that still looks like ours.
fn down(state_dir: &Path) -> Result<()> {
    let mut recorded = read_pids(state_dir)?;
    if recorded.is_empty() {
        println!("nothing to stop ({} has no {PIDS_FILE})", state_dir.display());
        return Ok(());
    }
    // Envoy first, so it does not log errors about vanished backends.
    recorded.sort_by_key(|recorded| recorded.role != "envoy");
    for Recorded { role, pid } in &recorded {
        let expected = if role == "envoy" { "envoy" } else { "nhi-demo" };
        match process::command_line(*pid) {
            Some(command) if process::is_alive(*pid) && command.contains(expected) => {
                let killed = process::terminate(*pid, STOP_GRACE)?;
                let how = if killed { "killed" } else { "stopped" };
                println!("{how} {role} (PID {pid})");
            }
            Some(command) if process::is_alive(*pid) => {
                println!("left PID {pid} alone: it is no longer the demo's {role} ({command})");
            }
            _ => println!("{role} (PID {pid}) was not running"),
        }
    }
    fs::remove_file(state_dir.join(PIDS_FILE))
        .with_context(|| format!("removing {}", state_dir.join(PIDS_FILE).display()))?;
    Ok(())
}

fn read_pids(state_dir: &Path) -> Result<Vec<Recorded>> {
    let path = state_dir.join(PIDS_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let (role, pid) =
                line.split_once(' ').with_context(|| format!("{}: bad line {line:?}", path.display()))?;
            let pid =
                pid.trim().parse().with_context(|| format!("{}: bad PID in {line:?}", path.display()))?;
            Ok(Recorded { role: role.to_owned(), pid })
        })
        .collect()
}

fn write_pids(state_dir: &Path, recorded: &[Recorded]) -> Result<()> {
    let path = state_dir.join(PIDS_FILE);
    let text: String = recorded.iter().map(|Recorded { role, pid }| format!("{role} {pid}\n")).collect();
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_file_round_trips() {
        let dir = std::env::temp_dir().join(format!("nhi-demo-pids-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        assert!(read_pids(&dir).unwrap().is_empty());
        let recorded =
            [Recorded { role: "servers".into(), pid: 12 }, Recorded { role: "envoy".into(), pid: 34 }];
        write_pids(&dir, &recorded).unwrap();
        let read: Vec<_> = read_pids(&dir).unwrap().into_iter().map(|r| (r.role, r.pid)).collect();
        assert_eq!(read, [("servers".to_owned(), 12), ("envoy".to_owned(), 34)]);
        fs::write(dir.join(PIDS_FILE), "envoy notapid\n").unwrap();
        assert!(read_pids(&dir).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
