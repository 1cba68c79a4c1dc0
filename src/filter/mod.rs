//! proxy-wasm glue: reads the host, calls the core, acts on its verdict.
//!
//! Every host call goes through [`host`], which turns host statuses into
//! `Result`s the contexts handle; nothing here may panic (a panic kills the VM
//! and, with it, every request on that worker).

mod host;
mod http;
mod observe;
mod on_request;
mod pipeline;
mod root;

use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    std::panic::set_hook(Box::new(|info| {
        host::log_critical(&format!("nhi-guard panicked: {info}"));
    }));
    proxy_wasm::set_root_context(|context_id| Box::new(root::Root::new(context_id)));
}}
