//! Plugin configuration: any bytes either compile or produce an error naming a field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nhi_guard_core::config::{Config, ConfigError};

fuzz_target!(|data: &[u8]| {
    match Config::from_json(data) {
        Ok(config) => assert!(!config.issuers.is_empty()),
        Err(ConfigError::Invalid { field, .. }) => assert!(!field.is_empty()),
        Err(ConfigError::Syntax(_)) => {}
    }
});
