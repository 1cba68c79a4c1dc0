//! The release `.wasm`'s imports and exports against every supported host: an import
//! one of them does not define makes that host refuse to load the filter (V8 in
//! Envoy, wasmtime in APISIX both fail instantiation), so it fails here first.
//! The checker itself is tested on tiny modules that break each rule.
//!
//! Needs the release wasm (`make wasm`, or `NHI_WASM`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use test_harness::emulator::imports::{
    check, check_exports, check_imports, env_signature, HostApi, Interface, Kind, Problem,
};
use test_harness::envoy::wasm_path;

fn release_wasm() -> Vec<u8> {
    std::fs::read(wasm_path().unwrap()).unwrap()
}

fn release_interface() -> Interface {
    Interface::parse(&release_wasm()).unwrap()
}

#[test]
fn the_release_wasm_loads_on_every_supported_host() {
    let interface = release_interface();
    println!("imports ({}):", interface.imports.len());
    for import in &interface.imports {
        let sig = match &import.kind {
            Kind::Func(sig) => sig.to_string(),
            other => format!("{other:?}"),
        };
        println!("  {}.{} {sig}", import.module, import.name);
    }
    println!("exports: {}", interface.exports.iter().map(|e| e.name.as_str()).collect::<Vec<_>>().join(", "));
    let problems = check(&interface);
    assert!(
        problems.is_empty(),
        "the release wasm would not load or run on a supported host:\n{}",
        problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n")
    );
    // Only the two modules proxy-wasm hosts define, and every proxy call is an ABI one.
    for import in &interface.imports {
        assert!(["env", "wasi_snapshot_preview1"].contains(&import.module.as_str()), "{import:?}");
        if import.module == "env" {
            assert!(env_signature(&import.name).is_some(), "not a proxy-wasm ABI function: {import:?}");
        }
    }
    // The calls the filter's degraded mode relies on are there, and nothing else is
    // needed from WASI than Envoy's subset.
    for name in ["proxy_get_shared_data", "proxy_http_call", "proxy_set_tick_period_milliseconds"] {
        assert!(interface.import("env", name).is_some(), "{name}");
    }
}

// ----- the checker on tiny modules -----

/// A module with every export a filter needs, plus `imports`, minus `drop_export`,
/// and `extra` spliced in.
fn module(imports: &str, drop_export: &str, extra: &str) -> Interface {
    let exports = [
        ("proxy_abi_version_0_2_1", "(func (export \"proxy_abi_version_0_2_1\"))"),
        ("_initialize", "(func (export \"_initialize\"))"),
        (
            "proxy_on_memory_allocate",
            "(func (export \"proxy_on_memory_allocate\") (param i32) (result i32) i32.const 0)",
        ),
        ("proxy_on_context_create", "(func (export \"proxy_on_context_create\") (param i32 i32))"),
        (
            "proxy_on_vm_start",
            "(func (export \"proxy_on_vm_start\") (param i32 i32) (result i32) i32.const 1)",
        ),
        (
            "proxy_on_configure",
            "(func (export \"proxy_on_configure\") (param i32 i32) (result i32) i32.const 1)",
        ),
        (
            "proxy_on_request_headers",
            "(func (export \"proxy_on_request_headers\") (param i32 i32 i32) (result i32) i32.const 0)",
        ),
        (
            "proxy_on_response_headers",
            "(func (export \"proxy_on_response_headers\") (param i32 i32 i32) (result i32) i32.const 0)",
        ),
        ("proxy_on_log", "(func (export \"proxy_on_log\") (param i32))"),
        ("proxy_on_done", "(func (export \"proxy_on_done\") (param i32) (result i32) i32.const 1)"),
        ("proxy_on_delete", "(func (export \"proxy_on_delete\") (param i32))"),
        ("proxy_on_tick", "(func (export \"proxy_on_tick\") (param i32))"),
        (
            "proxy_on_http_call_response",
            "(func (export \"proxy_on_http_call_response\") (param i32 i32 i32 i32 i32))",
        ),
        ("memory", "(memory (export \"memory\") 1)"),
    ];
    let body: String =
        exports.iter().filter(|(name, _)| *name != drop_export).map(|(_, f)| format!("{f}\n")).collect();
    let text = format!("(module\n{imports}\n{body}{extra})");
    Interface::parse(&wat::parse_str(text).unwrap()).unwrap()
}

#[test]
fn a_complete_module_with_common_imports_passes() {
    let imports = r#"(import "env" "proxy_log" (func (param i32 i32 i32) (result i32)))
        (import "env" "proxy_increment_metric" (func (param i32 i64) (result i32)))
        (import "wasi_snapshot_preview1" "clock_time_get" (func (param i32 i64 i32) (result i32)))
        (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))"#;
    assert_eq!(check(&module(imports, "", "")), Vec::<Problem>::new());
}

#[test]
fn an_import_only_envoy_has_fails_for_apisix() {
    let interface = module(r#"(import "env" "proxy_get_log_level" (func (param i32) (result i32)))"#, "", "");
    assert!(check_imports(&interface, &HostApi::envoy()).is_empty());
    let problems = check_imports(&interface, &HostApi::apisix());
    assert!(
        matches!(&problems[..], [Problem::MissingImport { name, .. }] if name == "proxy_get_log_level"),
        "{problems:?}"
    );
    assert_eq!(check(&interface).len(), 1);
}

#[test]
fn a_wasi_import_outside_envoys_subset_fails_for_envoy() {
    let interface = module(
        r#"(import "wasi_snapshot_preview1" "poll_oneoff" (func (param i32 i32 i32 i32) (result i32)))"#,
        "",
        "",
    );
    assert!(check_imports(&interface, &HostApi::apisix()).is_empty(), "APISIX links all of WASI");
    let problems = check_imports(&interface, &HostApi::envoy());
    assert!(
        matches!(&problems[..], [Problem::MissingImport { name, .. }] if name == "poll_oneoff"),
        "{problems:?}"
    );
}

#[test]
fn unknown_modules_and_names_fail_everywhere() {
    let interface = module(
        r#"(import "env" "proxy_teleport" (func (result i32)))
           (import "wasi_snapshot_preview2" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
           (import "env" "table" (table 1 funcref))"#,
        "",
        "",
    );
    let problems = check(&interface);
    let missing = problems.iter().filter(|p| matches!(p, Problem::MissingImport { .. })).count();
    let non_function = problems.iter().filter(|p| matches!(p, Problem::NonFunctionImport { .. })).count();
    assert_eq!((missing, non_function), (4, 2), "{problems:#?}");
}

#[test]
fn wrong_signatures_are_reported() {
    let interface = module(
        r#"(import "env" "proxy_log" (func (param i32 i32) (result i32)))
           (import "env" "proxy_record_metric" (func (param i32 i32) (result i32)))"#,
        "",
        "",
    );
    let problems = check(&interface);
    let wrong: Vec<_> = problems.iter().filter(|p| matches!(p, Problem::WrongSignature { .. })).collect();
    // Each wrong import counts once per host.
    assert_eq!(wrong.len(), 4, "{problems:#?}");
    assert!(wrong[0].to_string().contains("(i32, i32) -> (i32)"), "{}", wrong[0]);
}

#[test]
fn missing_or_mistyped_exports_are_reported() {
    let problems = check_exports(&module("", "proxy_on_tick", ""));
    assert_eq!(problems, vec![Problem::MissingExport { name: "proxy_on_tick".into() }]);
    let problems = check_exports(&module("", "proxy_abi_version_0_2_1", ""));
    assert_eq!(problems, vec![Problem::MissingExport { name: "proxy_abi_version_0_2_1".into() }]);
    let problems = check_exports(&module("", "memory", "(memory 1)"));
    assert_eq!(problems, vec![Problem::MissingExport { name: "memory".into() }]);
    let mistyped = module("", "proxy_on_done", "(func (export \"proxy_on_done\") (param i32))");
    let problems = check_exports(&mistyped);
    assert!(
        matches!(&problems[..], [Problem::WrongSignature { what, .. }] if what == "export proxy_on_done"),
        "{problems:?}"
    );
}

/// The RSA kernel's shape in the shipped wasm: its column sums
/// (`crypto/src/rsa_verify/montgomery.rs`, `simd::dot`) multiply four 28-bit limbs at a
/// time with `i64x2.extmul_*_i32x4_u`, and rely on LLVM turning each group of four limb
/// reads into one `v128.load`. Linked for size instead (the link-time optimisation at
/// `"s"`), the same source loads every limb into its own lane (`v128.load32_zero`, then
/// three `v128.load32_lane`), and RS256 took 114 µs a check in V8 instead of 71–73
/// (docs/benchmarks.md, `make bench-verify`).
#[test]
fn the_rsa_kernel_loads_whole_vectors() {
    use wasmparser::{Operator, Parser, Payload};
    let wasm = release_wasm();
    let mut kernels = Vec::new();
    for payload in Parser::new(0).parse_all(&wasm) {
        let Payload::CodeSectionEntry(body) = payload.unwrap() else { continue };
        let (mut extmul, mut whole, mut lane) = (0, 0, 0);
        let mut reader = body.get_operators_reader().unwrap();
        while !reader.eof() {
            match reader.read().unwrap() {
                Operator::I64x2ExtMulLowI32x4U | Operator::I64x2ExtMulHighI32x4U => extmul += 1,
                Operator::V128Load { .. } => whole += 1,
                Operator::V128Load32Lane { .. } | Operator::V128Load32Zero { .. } => lane += 1,
                _ => {}
            }
        }
        if extmul > 0 {
            kernels.push((extmul, whole, lane));
        }
    }
    // `mul`, `square` and `reduce`, each with the dot inlined.
    assert!(kernels.len() >= 3, "expected the three Montgomery functions with SIMD products: {kernels:?}");
    for (extmul, whole, lane) in &kernels {
        assert!(
            *lane == 0 && *whole > 0,
            "a function with {extmul} SIMD products loads {lane} limbs lane by lane and {whole} whole vectors"
        );
    }
}

/// The shipped wasm went through `make wasm`'s merge of identical functions (binaryen's
/// `--duplicate-function-elimination`, docs/benchmarks.md): cargo's own output holds about
/// a hundred functions whose type and body repeat another's (103 on 2026-12-06, 70 KB),
/// the merged file a few that binaryen's rewriting makes identical only on the way out.
#[test]
fn the_release_wasm_has_its_identical_functions_merged() {
    use std::collections::HashMap;
    use wasmparser::{Parser, Payload};
    let wasm = release_wasm();
    let (mut types, mut bodies) = (Vec::new(), Vec::new());
    for payload in Parser::new(0).parse_all(&wasm) {
        match payload.unwrap() {
            Payload::FunctionSection(section) => types = section.into_iter().map(Result::unwrap).collect(),
            Payload::CodeSectionEntry(body) => bodies.push(body.as_bytes().to_vec()),
            _ => {}
        }
    }
    assert_eq!(types.len(), bodies.len());
    let mut seen = HashMap::new();
    for function in types.into_iter().zip(bodies) {
        *seen.entry(function).or_insert(0usize) += 1;
    }
    let repeated: usize = seen.values().map(|n| n - 1).sum();
    assert!(
        repeated < 10,
        "{repeated} functions repeat another's type and body: this is cargo's output, not `make wasm`'s"
    );
}
