//! The `log` crate's records (the core's warnings, the decision log) written to
//! Envoy's log through `envoy_dynamic_module_callback_log`, under Envoy's
//! `dynamic_modules` logger.

use crate::abi::{self, ModuleBuffer};

struct EnvoyLogger;

static LOGGER: EnvoyLogger = EnvoyLogger;

pub fn install() {
    // Already installed (the module loaded twice): keep the first.
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

impl log::Log for EnvoyLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Error => abi::LOG_ERROR,
            log::Level::Warn => abi::LOG_WARN,
            log::Level::Info => abi::LOG_INFO,
            log::Level::Debug | log::Level::Trace => abi::LOG_DEBUG,
        };
        // SAFETY: a plain query of Envoy's log level.
        if !unsafe { abi::envoy_dynamic_module_callback_log_enabled(level) } {
            return;
        }
        let message = record.args().to_string();
        // SAFETY: the message outlives the call (Envoy copies it).
        unsafe { abi::envoy_dynamic_module_callback_log(level, ModuleBuffer::of(message.as_bytes())) };
    }

    fn flush(&self) {}
}
