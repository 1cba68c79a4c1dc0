//! The filter's logger: `log` records go to the host's `proxy_log`.
//!
//! The SDK's own logger (`proxy_wasm::set_log_level`) goes through `hostcalls::log`,
//! which panics when the host fails the call, so a host that fails one log call
//! would abort the VM, and with it every request on that worker. A log line is never
//! worth that: a failed `proxy_log` is dropped (see [`host::log`]).

use proxy_wasm::types::LogLevel;

use super::host;

struct HostLogger;

static LOGGER: HostLogger = HostLogger;

/// Sends `log` records at `level` and above to the host.
pub fn install(level: log::LevelFilter) {
    // Only the first call of a VM sets the logger; the level applies either way.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        host::log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}
