//! proxy-wasm glue: the contexts the host calls, and [`host`], the proxy-wasm ABI
//! behind the core's `Host` trait. The request pipeline itself is the core's
//! (`nhi_guard_core::pipeline`); nothing here decides anything, and nothing here may
//! panic (a panic kills the VM and, with it, every request on that worker).

mod host;
mod http;
mod keys;
mod logger;
mod root;
mod tick;

proxy_wasm::main! {{
    logger::install(log::LevelFilter::Info);
    std::panic::set_hook(Box::new(|info| {
        host::log_critical(&format!("nhi-guard panicked: {info}"));
    }));
    proxy_wasm::set_root_context(|context_id| Box::new(root::Root::new(context_id)));
}}
