//! What a `.wasm` imports and exports, and whether a proxy-wasm host provides it.
//!
//! A host refuses to load a module whose imports it does not define (V8 in Envoy and
//! wasmtime in APISIX both fail instantiation), so an import only one host has is a
//! filter that does not load on the other. [`check`] lists such imports, signature
//! mismatches, and missing proxy-wasm exports.

use std::collections::BTreeSet;
use std::fmt;

use anyhow::{anyhow, Context, Result};
use wasmparser::{ExternalKind, Parser, Payload, TypeRef};

/// A value type, as far as proxy-wasm signatures care.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Val {
    I32,
    I64,
    F32,
    F64,
    Other,
}

/// A function signature.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sig {
    pub params: Vec<Val>,
    pub results: Vec<Val>,
}

impl Sig {
    pub fn new(params: &[Val], results: &[Val]) -> Self {
        Self { params: params.to_vec(), results: results.to_vec() }
    }

    /// `n` i32 parameters, one i32 result (most proxy-wasm host functions).
    fn words(n: usize) -> Self {
        Self { params: vec![Val::I32; n], results: vec![Val::I32] }
    }
}

impl fmt::Display for Sig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |vals: &[Val]| {
            vals.iter().map(|v| format!("{v:?}").to_lowercase()).collect::<Vec<_>>().join(", ")
        };
        write!(f, "({}) -> ({})", list(&self.params), list(&self.results))
    }
}

/// What an import or export is.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Func(Sig),
    Memory,
    Table,
    Global,
    Tag,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Import {
    pub module: String,
    pub name: String,
    pub kind: Kind,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Export {
    pub name: String,
    pub kind: Kind,
}

/// A module's imports and exports.
#[derive(Clone, Debug, Default)]
pub struct Interface {
    pub imports: Vec<Import>,
    pub exports: Vec<Export>,
}

impl Interface {
    /// Reads (and validates) a binary module.
    pub fn parse(wasm: &[u8]) -> Result<Self> {
        wasmparser::Validator::new().validate_all(wasm).map_err(|e| anyhow!("invalid wasm module: {e}"))?;
        let mut types: Vec<Sig> = Vec::new();
        let mut functions: Vec<u32> = Vec::new();
        let mut interface = Interface::default();
        let mut exports = Vec::new();
        for payload in Parser::new(0).parse_all(wasm) {
            match payload.context("parsing the wasm module")? {
                Payload::TypeSection(reader) => {
                    for ty in reader.into_iter_err_on_gc_types() {
                        let ty = ty.context("reading a function type")?;
                        types.push(Sig { params: vals(ty.params()), results: vals(ty.results()) });
                    }
                }
                Payload::ImportSection(reader) => {
                    for import in reader.into_imports() {
                        let import = import.context("reading an import")?;
                        let kind = match import.ty {
                            TypeRef::Func(index) | TypeRef::FuncExact(index) => {
                                functions.push(index);
                                Kind::Func(sig_at(&types, index)?)
                            }
                            TypeRef::Memory(_) => Kind::Memory,
                            TypeRef::Table(_) => Kind::Table,
                            TypeRef::Global(_) => Kind::Global,
                            TypeRef::Tag(_) => Kind::Tag,
                        };
                        interface.imports.push(Import {
                            module: import.module.to_owned(),
                            name: import.name.to_owned(),
                            kind,
                        });
                    }
                }
                Payload::FunctionSection(reader) => {
                    for index in reader {
                        functions.push(index.context("reading the function section")?);
                    }
                }
                Payload::ExportSection(reader) => {
                    for export in reader {
                        let export = export.context("reading an export")?;
                        exports.push((export.name.to_owned(), export.kind, export.index));
                    }
                }
                _ => {}
            }
        }
        for (name, kind, index) in exports {
            let kind = match kind {
                ExternalKind::Func | ExternalKind::FuncExact => {
                    let ty =
                        usize::try_from(index).ok().and_then(|i| functions.get(i)).with_context(|| {
                            format!("export {name:?} names function {index}, which does not exist")
                        })?;
                    Kind::Func(sig_at(&types, *ty)?)
                }
                ExternalKind::Memory => Kind::Memory,
                ExternalKind::Table => Kind::Table,
                ExternalKind::Global => Kind::Global,
                ExternalKind::Tag => Kind::Tag,
            };
            interface.exports.push(Export { name, kind });
        }
        Ok(interface)
    }

    pub fn import(&self, module: &str, name: &str) -> Option<&Import> {
        self.imports.iter().find(|i| i.module == module && i.name == name)
    }

    pub fn export(&self, name: &str) -> Option<&Export> {
        self.exports.iter().find(|e| e.name == name)
    }

    /// `module.name` of every import, sorted.
    pub fn import_names(&self) -> Vec<String> {
        let mut names: Vec<String> =
            self.imports.iter().map(|i| format!("{}.{}", i.module, i.name)).collect();
        names.sort();
        names
    }
}

fn vals(types: &[wasmparser::ValType]) -> Vec<Val> {
    types
        .iter()
        .map(|t| match t {
            wasmparser::ValType::I32 => Val::I32,
            wasmparser::ValType::I64 => Val::I64,
            wasmparser::ValType::F32 => Val::F32,
            wasmparser::ValType::F64 => Val::F64,
            _ => Val::Other,
        })
        .collect()
}

fn sig_at(types: &[Sig], index: u32) -> Result<Sig> {
    usize::try_from(index)
        .ok()
        .and_then(|i| types.get(i))
        .cloned()
        .with_context(|| format!("type index {index} out of range"))
}

/// The proxy-wasm ABI's `env` host functions (with `proxy_` prefix) and their wasm32
/// signatures: ABI 0.2.1, plus the 0.1.0 names and APISIX's `proxy_send_http_response`.
pub fn env_signature(name: &str) -> Option<Sig> {
    use Val::{I32, I64};
    let words = Sig::words;
    Some(match name {
        "proxy_log" => words(3),
        "proxy_get_log_level" => words(1),
        "proxy_get_status" => words(3),
        "proxy_set_property" | "proxy_get_property" => words(4),
        "proxy_send_local_response" | "proxy_send_http_response" => words(8),
        "proxy_get_shared_data" | "proxy_set_shared_data" => words(5),
        "proxy_register_shared_queue" | "proxy_dequeue_shared_queue" | "proxy_enqueue_shared_queue" => {
            words(3)
        }
        "proxy_resolve_shared_queue" => words(5),
        "proxy_get_header_map_value" | "proxy_add_header_map_value" | "proxy_replace_header_map_value" => {
            words(5)
        }
        "proxy_remove_header_map_value" | "proxy_get_header_map_pairs" | "proxy_set_header_map_pairs" => {
            words(3)
        }
        "proxy_get_header_map_size" => words(2),
        "proxy_get_buffer_status" => words(3),
        "proxy_get_buffer_bytes" | "proxy_set_buffer_bytes" => words(5),
        "proxy_http_call" => words(10),
        "proxy_grpc_call" => words(12),
        "proxy_grpc_stream" => words(9),
        "proxy_grpc_close" | "proxy_grpc_cancel" => words(1),
        "proxy_grpc_send" => words(4),
        "proxy_set_tick_period_milliseconds" | "proxy_get_current_time_nanoseconds" => words(1),
        "proxy_define_metric" => words(4),
        "proxy_increment_metric" | "proxy_record_metric" => Sig::new(&[I32, I64], &[I32]),
        "proxy_get_metric" => words(2),
        "proxy_set_effective_context" => words(1),
        "proxy_done" | "proxy_continue_request" | "proxy_continue_response" | "proxy_clear_route_cache" => {
            words(0)
        }
        "proxy_call_foreign_function" => words(6),
        "proxy_continue_stream" | "proxy_close_stream" => words(1),
        "proxy_get_configuration" => words(2),
        _ => return None,
    })
}

/// Signatures of the `wasi_snapshot_preview1` functions a Rust `wasm32-wasip1` filter
/// may import (the others are not checked beyond their presence).
pub fn wasi_signature(name: &str) -> Option<Sig> {
    use Val::{I32, I64};
    let words = Sig::words;
    Some(match name {
        "fd_write" | "fd_read" | "poll_oneoff" => words(4),
        "fd_close" | "fd_sync" | "fd_datasync" => words(1),
        "fd_seek" => Sig::new(&[I32, I64, I32, I32], &[I32]),
        "fd_fdstat_get" | "fd_prestat_get" | "fd_filestat_get" => words(2),
        "fd_prestat_dir_name" => words(3),
        "environ_get" | "environ_sizes_get" | "args_get" | "args_sizes_get" | "random_get"
        | "clock_res_get" => words(2),
        "clock_time_get" => Sig::new(&[I32, I64, I32], &[I32]),
        "proc_exit" => Sig::new(&[I32], &[]),
        "sched_yield" => words(0),
        "path_open" => Sig::new(&[I32, I32, I32, I32, I32, I64, I64, I32, I32], &[I32]),
        _ => return None,
    })
}

/// Every `wasi_snapshot_preview1` function.
pub const WASI_PREVIEW1: &[&str] = &[
    "args_get",
    "args_sizes_get",
    "environ_get",
    "environ_sizes_get",
    "clock_res_get",
    "clock_time_get",
    "fd_advise",
    "fd_allocate",
    "fd_close",
    "fd_datasync",
    "fd_fdstat_get",
    "fd_fdstat_set_flags",
    "fd_fdstat_set_rights",
    "fd_filestat_get",
    "fd_filestat_set_size",
    "fd_filestat_set_times",
    "fd_pread",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "fd_pwrite",
    "fd_read",
    "fd_readdir",
    "fd_renumber",
    "fd_seek",
    "fd_sync",
    "fd_tell",
    "fd_write",
    "path_create_directory",
    "path_filestat_get",
    "path_filestat_set_times",
    "path_link",
    "path_open",
    "path_readlink",
    "path_remove_directory",
    "path_rename",
    "path_symlink",
    "path_unlink_file",
    "poll_oneoff",
    "proc_exit",
    "proc_raise",
    "sched_yield",
    "random_get",
    "sock_accept",
    "sock_recv",
    "sock_send",
    "sock_shutdown",
];

/// The `env` functions Envoy registers for a module of ABI 0.2.1: proxy-wasm-cpp-host's
/// `FOR_ALL_HOST_FUNCTIONS` plus the ABI-specific `continue_stream`, `close_stream` and
/// `get_log_level` (include/proxy-wasm/exports.h, wasm.cc `registerCallbacks`), and the
/// two emscripten helpers it also defines.
pub const ENVOY_ENV: &[&str] = &[
    "proxy_log",
    "proxy_get_status",
    "proxy_set_property",
    "proxy_get_property",
    "proxy_send_local_response",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_register_shared_queue",
    "proxy_resolve_shared_queue",
    "proxy_dequeue_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_get_header_map_value",
    "proxy_add_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_get_header_map_pairs",
    "proxy_set_header_map_pairs",
    "proxy_get_header_map_size",
    "proxy_get_buffer_status",
    "proxy_get_buffer_bytes",
    "proxy_set_buffer_bytes",
    "proxy_http_call",
    "proxy_grpc_call",
    "proxy_grpc_stream",
    "proxy_grpc_close",
    "proxy_grpc_cancel",
    "proxy_grpc_send",
    "proxy_set_tick_period_milliseconds",
    "proxy_get_current_time_nanoseconds",
    "proxy_define_metric",
    "proxy_increment_metric",
    "proxy_record_metric",
    "proxy_get_metric",
    "proxy_set_effective_context",
    "proxy_done",
    "proxy_call_foreign_function",
    "proxy_continue_stream",
    "proxy_close_stream",
    "proxy_get_log_level",
    "pthread_equal",
    "emscripten_notify_memory_growth",
];

/// The WASI functions Envoy defines (`FOR_ALL_WASI_FUNCTIONS` in proxy-wasm-cpp-host);
/// any other WASI import makes V8 refuse the module.
pub const ENVOY_WASI: &[&str] = &[
    "fd_write",
    "fd_read",
    "fd_seek",
    "fd_close",
    "fd_fdstat_get",
    "environ_get",
    "environ_sizes_get",
    "args_get",
    "args_sizes_get",
    "clock_time_get",
    "random_get",
    "proc_exit",
    "path_open",
    "fd_prestat_get",
    "fd_prestat_dir_name",
];

/// The `env` functions api7/wasm-nginx-module defines (its host API list,
/// `src/http/ngx_http_wasm_api_def.h`); it links all of WASI preview1 through wasmtime.
pub const APISIX_ENV: &[&str] = &[
    "proxy_set_effective_context",
    "proxy_get_property",
    "proxy_set_property",
    "proxy_log",
    "proxy_get_buffer_bytes",
    "proxy_set_buffer_bytes",
    "proxy_send_local_response",
    "proxy_send_http_response",
    "proxy_get_current_time_nanoseconds",
    "proxy_set_tick_period_milliseconds",
    "proxy_get_configuration",
    "proxy_get_header_map_pairs",
    "proxy_set_header_map_pairs",
    "proxy_get_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_add_header_map_value",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_register_shared_queue",
    "proxy_resolve_shared_queue",
    "proxy_dequeue_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_continue_request",
    "proxy_continue_response",
    "proxy_clear_route_cache",
    "proxy_continue_stream",
    "proxy_close_stream",
    "proxy_http_call",
    "proxy_grpc_call",
    "proxy_grpc_stream",
    "proxy_grpc_send",
    "proxy_grpc_cancel",
    "proxy_grpc_close",
    "proxy_get_status",
    "proxy_done",
    "proxy_call_foreign_function",
    "proxy_define_metric",
    "proxy_increment_metric",
    "proxy_record_metric",
    "proxy_get_metric",
];

/// A proxy-wasm host, by what it lets a module import.
#[derive(Clone, Debug)]
pub struct HostApi {
    pub name: &'static str,
    pub env: BTreeSet<&'static str>,
    pub wasi: BTreeSet<&'static str>,
}

impl HostApi {
    /// Envoy 1.40 (proxy-wasm ABI 0.2.1 on V8).
    pub fn envoy() -> Self {
        Self {
            name: "Envoy 1.40",
            env: ENVOY_ENV.iter().copied().collect(),
            wasi: ENVOY_WASI.iter().copied().collect(),
        }
    }

    /// APISIX (api7/wasm-nginx-module on wasmtime).
    pub fn apisix() -> Self {
        Self {
            name: "APISIX (wasm-nginx-module)",
            env: APISIX_ENV.iter().copied().collect(),
            wasi: WASI_PREVIEW1.iter().copied().collect(),
        }
    }

    /// Every host nhi-guard supports.
    pub fn supported() -> Vec<Self> {
        vec![Self::envoy(), Self::apisix()]
    }

    pub fn provides(&self, module: &str, name: &str) -> bool {
        match module {
            "env" => self.env.contains(name),
            "wasi_snapshot_preview1" => self.wasi.contains(name),
            _ => false,
        }
    }
}

/// Something that keeps a module from loading or running on a host.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Problem {
    /// The host does not define this import: instantiation fails.
    MissingImport { host: &'static str, module: String, name: String },
    /// An import or export with another signature than the ABI's.
    WrongSignature { what: String, expected: String, found: String },
    /// An import that is not a function (memory, table, global).
    NonFunctionImport { module: String, name: String },
    /// A required export is absent.
    MissingExport { name: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::MissingImport { host, module, name } => {
                write!(f, "imports {module}.{name}, which {host} does not provide")
            }
            Problem::WrongSignature { what, expected, found } => {
                write!(f, "{what} has signature {found}, the ABI says {expected}")
            }
            Problem::NonFunctionImport { module, name } => {
                write!(f, "imports {module}.{name}, which is not a function")
            }
            Problem::MissingExport { name } => write!(f, "does not export {name}"),
        }
    }
}

/// The exports a proxy-wasm 0.2.1 HTTP filter needs, with their signatures
/// (`memory` is checked separately).
pub fn required_exports() -> Vec<(&'static str, Sig)> {
    use Val::I32;
    vec![
        ("proxy_abi_version_0_2_1", Sig::new(&[], &[])),
        ("proxy_on_memory_allocate", Sig::new(&[I32], &[I32])),
        ("proxy_on_context_create", Sig::new(&[I32, I32], &[])),
        ("proxy_on_vm_start", Sig::new(&[I32, I32], &[I32])),
        ("proxy_on_configure", Sig::new(&[I32, I32], &[I32])),
        ("proxy_on_request_headers", Sig::new(&[I32, I32, I32], &[I32])),
        ("proxy_on_response_headers", Sig::new(&[I32, I32, I32], &[I32])),
        ("proxy_on_log", Sig::new(&[I32], &[])),
        ("proxy_on_done", Sig::new(&[I32], &[I32])),
        ("proxy_on_delete", Sig::new(&[I32], &[])),
        ("proxy_on_tick", Sig::new(&[I32], &[])),
        ("proxy_on_http_call_response", Sig::new(&[I32, I32, I32, I32, I32], &[])),
    ]
}

/// Everything that keeps `interface` from loading on `host`: imports the host lacks,
/// imports with a signature other than the ABI's.
pub fn check_imports(interface: &Interface, host: &HostApi) -> Vec<Problem> {
    let mut problems = Vec::new();
    for import in &interface.imports {
        let Kind::Func(found) = &import.kind else {
            problems.push(Problem::NonFunctionImport {
                module: import.module.clone(),
                name: import.name.clone(),
            });
            continue;
        };
        if !host.provides(&import.module, &import.name) {
            problems.push(Problem::MissingImport {
                host: host.name,
                module: import.module.clone(),
                name: import.name.clone(),
            });
            continue;
        }
        let expected = match import.module.as_str() {
            "env" => env_signature(&import.name),
            "wasi_snapshot_preview1" => wasi_signature(&import.name),
            _ => None,
        };
        if let Some(expected) = expected {
            if &expected != found {
                problems.push(Problem::WrongSignature {
                    what: format!("import {}.{}", import.module, import.name),
                    expected: expected.to_string(),
                    found: found.to_string(),
                });
            }
        }
    }
    problems
}

/// The exports every host calls: the ABI version marker, memory, the allocator, the
/// callbacks of an HTTP filter, and `_initialize` (or `_start`).
pub fn check_exports(interface: &Interface) -> Vec<Problem> {
    let mut problems = Vec::new();
    if !matches!(interface.export("memory"), Some(Export { kind: Kind::Memory, .. })) {
        problems.push(Problem::MissingExport { name: "memory".into() });
    }
    if interface.export("_initialize").is_none() && interface.export("_start").is_none() {
        problems.push(Problem::MissingExport { name: "_initialize (or _start)".into() });
    }
    for (name, expected) in required_exports() {
        match interface.export(name) {
            None => problems.push(Problem::MissingExport { name: name.into() }),
            Some(Export { kind: Kind::Func(found), .. }) if found != &expected => {
                problems.push(Problem::WrongSignature {
                    what: format!("export {name}"),
                    expected: expected.to_string(),
                    found: found.to_string(),
                })
            }
            Some(Export { kind: Kind::Func(_), .. }) => {}
            Some(_) => problems.push(Problem::MissingExport { name: format!("{name} (as a function)") }),
        }
    }
    problems
}

/// [`check_imports`] against every supported host, then [`check_exports`].
pub fn check(interface: &Interface) -> Vec<Problem> {
    let mut problems: Vec<Problem> =
        HostApi::supported().iter().flat_map(|host| check_imports(interface, host)).collect();
    problems.extend(check_exports(interface));
    problems
}
