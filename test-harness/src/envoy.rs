//! A real Envoy running the rendered shipped config with the built filter.
//!
//! Nothing here skips: a missing Envoy binary or wasm is an error that says how to get
//! it. Envoy's log goes to a file in its work directory and is printed when a test
//! holding the [`Envoy`] panics, or appended to startup errors.

use std::collections::BTreeMap;
use std::env;
use std::fs::{self, File};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::envoy_config::{repo_root, EnvoyConfig};
use crate::http::{self, Response};
use crate::process;

/// Overrides the Envoy binary (otherwise `<repo>/.tools/envoy/bin/envoy`).
pub const ENVOY_BIN_ENV: &str = "ENVOY_BIN";
/// Overrides the filter (otherwise `<repo>/target/wasm32-wasip1/release/nhi_guard.wasm`).
pub const WASM_ENV: &str = "NHI_WASM";

/// Overrides the native module (otherwise `<repo>/target/release/libnhi_guard_envoy.so`).
pub const NATIVE_MODULE_ENV: &str = "NHI_NATIVE_MODULE";

const POLL: Duration = Duration::from_millis(50);
const STOP_GRACE: Duration = Duration::from_secs(3);
const LOG_TAIL_LINES: usize = 80;

/// `$env_var` if set (it must exist), else `<repo>/default`; a missing file is an
/// error (never a skip) naming `what` and `how` to get it.
fn built_file(env_var: &str, default: &str, what: &str, how: &str) -> Result<PathBuf> {
    if let Some(path) = env::var_os(env_var) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("{env_var}={} does not exist", path.display());
        }
        return Ok(path);
    }
    let path = repo_root().join(default);
    if !path.is_file() {
        bail!("no {what}: {} does not exist and {env_var} is not set. {how}", path.display());
    }
    Ok(path)
}

/// The Envoy binary to run: `$ENVOY_BIN`, else `<repo>/.tools/envoy/bin/envoy`.
pub fn envoy_binary() -> Result<PathBuf> {
    built_file(
        ENVOY_BIN_ENV,
        ".tools/envoy/bin/envoy",
        "Envoy binary",
        &format!("Run `make tools` or set {ENVOY_BIN_ENV}=/path/to/envoy"),
    )
}

/// The filter to load: `$NHI_WASM`, else the release build in the workspace target dir.
pub fn wasm_path() -> Result<PathBuf> {
    built_file(
        WASM_ENV,
        "target/wasm32-wasip1/release/nhi_guard.wasm",
        "filter build",
        "Build it with `make wasm` (cargo's release build, its identical functions merged by wasm-opt)",
    )
}

/// The native shell to load: `$NHI_NATIVE_MODULE`, else the release build in the
/// workspace target dir.
pub fn native_module_path() -> Result<PathBuf> {
    built_file(
        NATIVE_MODULE_ENV,
        "target/release/libnhi_guard_envoy.so",
        "native module build",
        "Build it with `make native` (cargo build --release -p nhi-guard-envoy)",
    )
}

/// `<root>/envoy/envoy-native.yaml`: the shipped config of the native shell.
pub fn native_config_path() -> PathBuf {
    repo_root().join("envoy").join("envoy-native.yaml")
}

/// What `envoy --mode validate` makes of `config` (with the wasm path already set):
/// `Ok(log)` when Envoy accepts it, `Err(log)` when it refuses it. The rendered file
/// goes to a temp dir that is removed again.
pub fn validate(config: &EnvoyConfig) -> Result<std::result::Result<String, String>> {
    let dir = std::env::temp_dir().join(format!(
        "nhi-validate-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("envoy.yaml");
    let written = config.to_yaml().and_then(|yaml| std::fs::write(&path, yaml).context("writing the config"));
    let output = written.and_then(|()| {
        Command::new(envoy_binary()?)
            .args(["--mode", "validate", "--disable-hot-restart", "-c"])
            .arg(&path)
            .output()
            .context("running envoy --mode validate")
    });
    let _ = std::fs::remove_dir_all(&dir);
    let output = output?;
    let log = String::from_utf8_lossy(&output.stderr).into_owned() + &String::from_utf8_lossy(&output.stdout);
    Ok(if output.status.success() && log.contains("OK") { Ok(log) } else { Err(log) })
}

/// How to start an [`Envoy`]. Defaults: the shipped config, listeners and admin on
/// ephemeral 127.0.0.1 ports, `--concurrency 2`, log level `info`, a fresh temp dir.
#[derive(Clone, Debug)]
pub struct EnvoyOptions {
    pub config: Option<EnvoyConfig>,
    /// Cluster name → where its endpoints should point. Unknown names are errors.
    pub clusters: BTreeMap<String, SocketAddr>,
    /// Replaces the plugin configuration JSON when set.
    pub plugin_configuration: Option<Value>,
    /// The config loads the plugin through extension config discovery (ECDS, as Istio
    /// does) instead of an inline filter: `render` then leaves the filters alone, and
    /// the wasm path and plugin configuration are in the caller's ECDS file.
    pub plugin_from_ecds: bool,
    /// Applied to every static listener.
    pub listener: SocketAddr,
    pub admin: SocketAddr,
    pub concurrency: u32,
    pub log_level: String,
    /// `--component-log-level`; by default `main:warning`, which drops the long list of
    /// compiled-in extensions Envoy prints at info level and keeps printed logs readable.
    pub component_log_level: Option<String>,
    /// Where the rendered config and the log go; kept afterwards. A temp dir otherwise.
    pub work_dir: Option<PathBuf>,
    /// For Envoy's admin endpoint to report ready.
    pub startup_timeout: Duration,
    /// Starts Envoy in a process group of its own, so that a Ctrl-C meant for the
    /// process that started it does not reach it (the demo leaves it running).
    pub own_process_group: bool,
    /// Variables set in Envoy's environment (on top of the test process's): where a
    /// Kubernetes gateway's pod gets them from a Secret. The plugin sees those its
    /// `vm_config.environment_variables.host_env_keys` lists.
    pub environment: BTreeMap<String, String>,
    /// Load the native shell (a dynamic module at this path) instead of the wasm:
    /// `config` must then be a native config (envoy-native.yaml).
    pub native_module: Option<PathBuf>,
}

impl Default for EnvoyOptions {
    fn default() -> Self {
        Self {
            config: None,
            clusters: BTreeMap::new(),
            plugin_configuration: None,
            plugin_from_ecds: false,
            listener: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            concurrency: 2,
            log_level: "info".into(),
            component_log_level: Some("main:warning".into()),
            work_dir: None,
            startup_timeout: Duration::from_secs(20),
            own_process_group: false,
            environment: BTreeMap::new(),
            native_module: None,
        }
    }
}

impl EnvoyOptions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cluster(mut self, name: &str, addr: SocketAddr) -> Self {
        self.clusters.insert(name.to_owned(), addr);
        self
    }

    pub fn plugin_configuration(mut self, configuration: Value) -> Self {
        self.plugin_configuration = Some(configuration);
        self
    }

    pub fn config(mut self, config: EnvoyConfig) -> Self {
        self.config = Some(config);
        self
    }

    /// See [`EnvoyOptions::plugin_from_ecds`].
    pub fn plugin_from_ecds(mut self) -> Self {
        self.plugin_from_ecds = true;
        self
    }

    pub fn listener(mut self, addr: SocketAddr) -> Self {
        self.listener = addr;
        self
    }

    pub fn admin(mut self, addr: SocketAddr) -> Self {
        self.admin = addr;
        self
    }

    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_owned();
        self
    }

    pub fn work_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.work_dir = Some(dir.into());
        self
    }

    /// Sets `name` in Envoy's environment.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.environment.insert(name.to_owned(), value.to_owned());
        self
    }

    /// The shipped native config (envoy-native.yaml) with the module at `module`.
    pub fn native(mut self, module: &Path) -> Result<Self> {
        self.config = Some(EnvoyConfig::load(&native_config_path())?);
        self.native_module = Some(module.to_path_buf());
        Ok(self)
    }

    /// The config given so far (or the shipped one), with its nhi-guard filter as the
    /// native shell at `module`: the same test against the other shell.
    pub fn native_filter(mut self, module: &Path) -> Result<Self> {
        let config = match &self.config {
            Some(config) => config.clone(),
            None => EnvoyConfig::shipped()?,
        };
        self.config = Some(config.with_native_filter(module)?);
        self.native_module = Some(module.to_path_buf());
        Ok(self)
    }

    /// The config these options describe, for `wasm` (or the native module, when set).
    pub fn render(&self, wasm: &Path) -> Result<EnvoyConfig> {
        let mut config = match &self.config {
            Some(config) => config.clone(),
            None => EnvoyConfig::shipped()?,
        };
        for listener in config.listener_names() {
            config.set_listener_address(&listener, self.listener)?;
        }
        config.set_admin_address(self.admin)?;
        for (cluster, addr) in &self.clusters {
            config.set_cluster_endpoint(cluster, *addr)?;
        }
        if self.plugin_from_ecds {
            if self.plugin_configuration.is_some() {
                bail!("a plugin configuration goes into the ECDS file when the plugin comes from ECDS");
            }
            return Ok(config);
        }
        match &self.native_module {
            Some(module) => config.set_native_module(module)?,
            None => config.set_wasm_filename(wasm)?,
        }
        if let Some(plugin) = &self.plugin_configuration {
            config.set_plugin_configuration(plugin)?;
        }
        Ok(config)
    }
}

/// A directory removed on drop unless it was given by the caller.
#[derive(Debug)]
struct WorkDir {
    path: PathBuf,
    remove: bool,
}

impl WorkDir {
    fn create(given: Option<&Path>) -> Result<Self> {
        let (path, remove) = match given {
            Some(path) => (path.to_path_buf(), false),
            None => (
                env::temp_dir().join(format!(
                    "nhi-envoy-{}-{:08x}",
                    std::process::id(),
                    rand::random::<u32>()
                )),
                true,
            ),
        };
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path, remove })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A running Envoy, stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Envoy {
    child: Option<Child>,
    admin: SocketAddr,
    listeners: BTreeMap<String, SocketAddr>,
    /// The address of the config's first static listener.
    listener: SocketAddr,
    log_path: PathBuf,
    config_path: PathBuf,
    work_dir: WorkDir,
    /// `--concurrency`: the number of workers.
    concurrency: u32,
}

impl Envoy {
    /// Renders the config, starts Envoy and waits until its admin endpoint reports
    /// `LIVE` (which implies the listeners are bound). Whether the filter already has
    /// keys is for the caller to probe with [`Envoy::wait_until`].
    pub fn start(options: &EnvoyOptions) -> Result<Self> {
        let binary = envoy_binary()?;
        // The native shell needs no wasm (and must not fail for the want of one).
        let wasm = match &options.native_module {
            Some(_) => PathBuf::new(),
            None => wasm_path()?,
        };
        let config = options.render(&wasm)?;
        let work_dir = WorkDir::create(options.work_dir.as_deref())?;
        let config_path = work_dir.path.join("envoy.yaml");
        let log_path = work_dir.path.join("envoy.log");
        let admin_path = work_dir.path.join("admin-address");
        let _ = fs::remove_file(&admin_path);
        fs::write(&config_path, config.to_yaml()?)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let log = File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;

        let mut command = Command::new(&binary);
        command
            .arg("-c")
            .arg(&config_path)
            .arg("--concurrency")
            .arg(options.concurrency.to_string())
            .arg("--log-level")
            .arg(&options.log_level)
            .arg("--admin-address-path")
            .arg(&admin_path)
            // No shared memory or domain socket, so parallel Envoys never collide
            // (this makes a --base-id unnecessary).
            .arg("--disable-hot-restart")
            .args(options.component_log_level.iter().flat_map(|levels| ["--component-log-level", levels]))
            .current_dir(&work_dir.path)
            .envs(&options.environment)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log file handle")?)
            .stderr(log);
        if options.own_process_group {
            command.process_group(0);
        }
        let child = command.spawn().with_context(|| format!("starting {}", binary.display()))?;

        let mut envoy = Self {
            child: Some(child),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            listeners: BTreeMap::new(),
            listener: SocketAddr::from(([127, 0, 0, 1], 0)),
            log_path,
            config_path,
            work_dir,
            concurrency: options.concurrency,
        };
        let deadline = Instant::now() + options.startup_timeout;
        let primary = config.listener_names().into_iter().next();
        match envoy.await_ready(&admin_path, primary.as_deref(), deadline) {
            Ok(()) => Ok(envoy),
            Err(err) => {
                // Keep the rendered config and the log for a post-mortem.
                envoy.work_dir.remove = false;
                Err(err.context(format!(
                    "Envoy did not start (config and log kept in {}); last log lines:\n{}",
                    envoy.work_dir.path.display(),
                    envoy.log_tail(LOG_TAIL_LINES)
                )))
            }
        }
    }

    fn await_ready(&mut self, admin_path: &Path, primary: Option<&str>, deadline: Instant) -> Result<()> {
        self.admin = await_admin_ready(admin_path, deadline, || self.ensure_running())?;
        self.listeners = self.read_listeners()?;
        let primary = primary.context("the Envoy config has no static listener")?;
        self.listener = *self
            .listeners
            .get(primary)
            .with_context(|| format!("admin /listeners does not report listener {primary:?}"))?;
        Ok(())
    }

    /// Listener name → bound address, from the admin `/listeners` endpoint.
    fn read_listeners(&self) -> Result<BTreeMap<String, SocketAddr>> {
        let response = self.admin_get("/listeners?format=json")?;
        let body = response.body_json()?;
        let mut listeners = BTreeMap::new();
        let statuses = body.get("listener_statuses").and_then(Value::as_array).into_iter().flatten();
        for status in statuses {
            let name = status.get("name").and_then(Value::as_str).context("listener without a name")?;
            let socket = status.pointer("/local_address/socket_address");
            let ip = socket
                .and_then(|socket| socket.get("address"))
                .and_then(Value::as_str)
                .with_context(|| format!("listener {name:?}: address missing"))?;
            let port = socket
                .and_then(|socket| socket.get("port_value"))
                .and_then(Value::as_u64)
                .and_then(|port| u16::try_from(port).ok())
                .with_context(|| format!("listener {name:?}: port missing"))?;
            let addr = format!("{ip}:{port}")
                .parse()
                .with_context(|| format!("listener {name:?} address {ip}:{port}"))?;
            listeners.insert(name.to_owned(), addr);
        }
        if listeners.is_empty() {
            bail!("admin /listeners reported no listener: {body}");
        }
        Ok(listeners)
    }

    fn ensure_running(&mut self) -> Result<()> {
        if let Some(child) = &mut self.child {
            if let Some(status) = child.try_wait().context("polling the Envoy process")? {
                self.child = None;
                bail!("Envoy exited with {status}");
            }
        }
        Ok(())
    }

    /// Polls `probe` every 50 ms until it returns `true`; errors (with the log tail)
    /// after `timeout` or if Envoy exits. Probe errors count as "not yet".
    pub fn wait_until<F>(&mut self, what: &str, timeout: Duration, mut probe: F) -> Result<()>
    where
        F: FnMut(&Envoy) -> Result<bool>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Err(err) = self.ensure_running() {
                return Err(err.context(format!(
                    "waiting for {what}; last log lines:\n{}",
                    self.log_tail(LOG_TAIL_LINES)
                )));
            }
            let last = match probe(self) {
                Ok(true) => return Ok(()),
                Ok(false) => "probe said not yet".to_owned(),
                Err(err) => format!("{err:#}"),
            };
            if Instant::now() > deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what} ({last}); last log lines:\n{}",
                    self.log_tail(LOG_TAIL_LINES)
                );
            }
            thread::sleep(POLL);
        }
    }

    /// The first static listener's address (the shipped config has one, `ingress`).
    pub fn listener_addr(&self) -> SocketAddr {
        self.listener
    }

    pub fn listener_addr_named(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.get(name).copied()
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A request to the (first) listener.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Result<Response> {
        http::request(self.listener_addr(), method, path, headers)
    }

    /// `GET path` on the admin endpoint (e.g. `/stats/prometheus`, `/clusters`).
    pub fn admin_get(&self, path: &str) -> Result<Response> {
        http::request(self.admin, "GET", path, &[])
    }

    /// The admin endpoint's body for `path`, failing on a non-200 status.
    /// Connections each worker accepted on the listener, from the per-worker stats
    /// (`listener.<addr>.worker_<n>.downstream_cx_total`): how a test shows both
    /// workers served it. One entry per worker of `--concurrency`.
    pub fn worker_connections(&self) -> Result<Vec<u64>> {
        let stats = self.admin_text("/stats?filter=worker_.*downstream_cx_total")?;
        let mut counts = vec![0; self.concurrency as usize];
        // One listener (its stats are named for the configured address, port 0).
        for line in stats.lines().filter(|l| l.starts_with("listener.") && !l.starts_with("listener.admin")) {
            let worker = line
                .split(".worker_")
                .nth(1)
                .and_then(|r| r.split('.').next())
                .and_then(|n| n.parse::<usize>().ok());
            let value = line.rsplit(": ").next().and_then(|v| v.trim().parse::<u64>().ok());
            if let (Some(slot), Some(value)) = (worker.and_then(|w| counts.get_mut(w)), value) {
                *slot = value;
            }
        }
        Ok(counts)
    }

    pub fn admin_text(&self, path: &str) -> Result<String> {
        let response = self.admin_get(path)?;
        if response.status != 200 {
            bail!("admin {path} answered {}: {}", response.status, response.body_text());
        }
        Ok(response.body_text())
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn work_dir(&self) -> &Path {
        &self.work_dir.path
    }

    /// Envoy's whole log so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_else(|err| format!("<cannot read {}: {err}>", self.log_path.display()))
    }

    /// Runs `checks`; if one panics, prints the tail of Envoy's log before the panic
    /// goes on (what the filter said is usually why).
    pub fn showing_log_on_panic<R>(&self, checks: impl FnOnce() -> R) -> R {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(checks)) {
            Ok(value) => value,
            Err(panic) => {
                eprintln!("--- Envoy log (tail) ---\n{}", self.log_tail(60));
                std::panic::resume_unwind(panic)
            }
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all.get(all.len().saturating_sub(lines)..).unwrap_or_default().join("\n")
    }

    /// Stops Envoy: SIGTERM, then SIGKILL after a grace period. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::stop_child(&mut child, STOP_GRACE);
        }
    }

    /// Leaves Envoy running after this value is gone (the demo); returns its PID.
    /// The work dir is kept too.
    pub fn detach(mut self) -> Option<u32> {
        self.work_dir.remove = false;
        self.child.take().map(|child| child.id())
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "===== Envoy log ({}) =====\n{}\n===== end of Envoy log =====",
                self.log_path.display(),
                self.log()
            );
        }
        self.stop();
    }
}

/// Waits for a starting Envoy until `deadline`: its admin address written to
/// `admin_path`, then its admin `/ready` answering `LIVE`. `ensure_running` fails
/// fast when the process has died. Returns the admin address.
pub(crate) fn await_admin_ready(
    admin_path: &Path,
    deadline: Instant,
    mut ensure_running: impl FnMut() -> Result<()>,
) -> Result<SocketAddr> {
    let admin = loop {
        ensure_running()?;
        if let Some(addr) = fs::read_to_string(admin_path).ok().and_then(|text| text.trim().parse().ok()) {
            break addr;
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {}", admin_path.display());
        }
        thread::sleep(POLL);
    };
    loop {
        ensure_running()?;
        let ready = http::request(admin, "GET", "/ready", &[]);
        if matches!(&ready, Ok(response) if response.status == 200 && response.body_text().trim() == "LIVE") {
            return Ok(admin);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for /ready to say LIVE (last answer: {ready:?})");
        }
        thread::sleep(POLL);
    }
}
