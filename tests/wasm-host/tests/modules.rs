//! Module-level checks and error paths, with small hand-written modules.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proxy_wasm_host::{Action, Host, HostError, LogLevel, Phase, RequestSpec};

/// Memory, an allocator and the ABI marker: the smallest module Envoy accepts.
const BASE: &str = r#"
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $p))
  (func (export "proxy_abi_version_0_2_1"))
"#;

fn module(body: &str) -> Vec<u8> {
    wat::parse_str(format!("(module {body})")).expect("valid wat")
}

fn build(name: &str, body: &str) -> Result<Host, HostError> {
    Host::builder_from_bytes(name, module(body)).build()
}

#[test]
fn minimal_module_passes_requests_through() {
    let mut host = build("minimal", BASE).unwrap();
    assert!(host.configure().unwrap());
    let out = host.http_request(&RequestSpec::get("/")).unwrap();
    // No callbacks exported: Envoy continues without calling the VM.
    assert_eq!(out.action(Phase::RequestHeaders), Some(Action::Continue));
    assert_eq!(out.status(), Some(200));
    assert!(out.forwarded_upstream);
    assert!(host.shutdown().unwrap());
}

#[test]
fn missing_abi_marker() {
    let body = r#"(memory (export "memory") 1)
        (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 0)
        (func (export "proxy_abi_version_0_1_0"))"#;
    let err = build("old-abi", body).err();
    assert_eq!(
        err,
        Some(HostError::AbiVersion {
            found: vec!["proxy_abi_version_0_1_0".into()]
        })
    );
}

#[test]
fn not_a_wasm_module() {
    let err = Host::builder_from_bytes("garbage", b"not wasm".to_vec())
        .build()
        .err();
    assert!(matches!(err, Some(HostError::Compile { .. })), "{err:?}");
    let err = Host::builder("/nonexistent/filter.wasm").build().err();
    assert!(matches!(err, Some(HostError::Io { .. })), "{err:?}");
}

#[test]
fn unknown_import_module_fails_at_instantiation() {
    let body = format!(r#"(import "my_host" "do_things" (func (param i32))) {BASE}"#);
    let err = build("unknown-module", &body).err();
    assert_eq!(
        err,
        Some(HostError::UnknownImport {
            module: "my_host".into(),
            name: "do_things".into()
        })
    );
}

#[test]
fn non_function_import_is_rejected() {
    let body = r#"(import "env" "memory" (memory 1))
        (global $heap (mut i32) (i32.const 4096))
        (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 16)
        (func (export "proxy_abi_version_0_2_1"))"#;
    let err = build("memory-import", body).err();
    assert!(
        matches!(&err, Some(HostError::UnsupportedImport { kind, .. }) if kind == "memory"),
        "{err:?}"
    );
}

#[test]
fn wrong_import_signature_fails_at_instantiation() {
    let body = format!(r#"(import "env" "proxy_log" (func (param i32) (result i32))) {BASE}"#);
    let err = build("bad-signature", &body).err();
    assert!(matches!(err, Some(HostError::Instantiate(_))), "{err:?}");
}

#[test]
fn missing_memory_or_allocator() {
    let err = build(
        "no-alloc",
        r#"(memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1"))"#,
    )
    .err();
    assert!(
        matches!(&err, Some(HostError::BadExport { name, .. }) if name == "proxy_on_memory_allocate"),
        "{err:?}"
    );
    let err = build(
        "no-memory",
        r#"(func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 0)
           (func (export "proxy_abi_version_0_2_1"))"#,
    )
    .err();
    assert!(
        matches!(&err, Some(HostError::BadExport { name, .. }) if name == "memory"),
        "{err:?}"
    );
}

#[test]
fn callback_with_wrong_signature_is_rejected() {
    let body = format!(
        r#"{BASE} (func (export "proxy_on_request_headers") (param i32 i32) (result i32) i32.const 0)"#
    );
    let err = build("bad-callback", &body).err();
    assert!(
        matches!(&err, Some(HostError::BadExport { name, .. }) if name == "proxy_on_request_headers"),
        "{err:?}"
    );
}

#[test]
fn initialize_then_main_with_restricted_callbacks_allowed() {
    let body = format!(
        r#"(import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
        {BASE}
        (data (i32.const 100) "init")
        (data (i32.const 200) "main")
        (func (export "_initialize") (drop (call $log (i32.const 2) (i32.const 100) (i32.const 4))))
        (func (export "main") (param i32 i32) (result i32)
          (drop (call $log (i32.const 3) (i32.const 200) (i32.const 4)))
          (i32.const 0))"#
    );
    let host = build("init-main", &body).unwrap();
    let logs: Vec<(LogLevel, &str, u32)> = host
        .logs()
        .iter()
        .map(|l| (l.level, l.message.as_str(), l.context_id))
        .collect();
    assert_eq!(
        logs,
        vec![(LogLevel::Info, "init", 0), (LogLevel::Warn, "main", 0)]
    );
}

#[test]
fn start_is_used_without_initialize() {
    let body = format!(
        r#"(import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
        {BASE}
        (data (i32.const 100) "start")
        (func (export "_start") (drop (call $log (i32.const 2) (i32.const 100) (i32.const 5))))"#
    );
    let host = build("command", &body).unwrap();
    assert_eq!(host.logs().len(), 1);
    assert_eq!(host.logs()[0].message, "start");
}

#[test]
fn forbidden_host_call_while_starting() {
    let body = format!(
        r#"(import "env" "proxy_get_property" (func $get (param i32 i32 i32 i32) (result i32)))
        {BASE}
        (func (export "_initialize")
          (drop (call $get (i32.const 0) (i32.const 1) (i32.const 8) (i32.const 12))))"#
    );
    let err = build("restricted", &body).err();
    assert_eq!(
        err,
        Some(HostError::RestrictedHostCall {
            name: "proxy_get_property".into(),
            function: "_initialize".into()
        })
    );
}

#[test]
fn unknown_env_import_is_linked_to_a_trapping_stub() {
    let body = format!(
        r#"(import "env" "proxy_frobnicate" (func $f (param i32) (result i32)))
        (import "wasi_snapshot_preview1" "sock_accept" (func $s (param i32 i32 i32) (result i32)))
        {BASE}
        (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
          (call $f (i32.const 1)))"#
    );
    let err = build("stub", &body).err();
    assert_eq!(
        err,
        Some(HostError::UnimplementedHostCall {
            name: "proxy_frobnicate".into(),
            function: "proxy_on_vm_start".into()
        })
    );
}

#[test]
fn proc_exit_is_reported() {
    let body = format!(
        r#"(import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
        {BASE}
        (func (export "proxy_on_configure") (param i32 i32) (result i32)
          (call $exit (i32.const 3)) (i32.const 1))"#
    );
    let mut host = build("exit", &body).unwrap();
    assert_eq!(
        host.configure().err(),
        Some(HostError::ProcExit {
            code: 3,
            function: "proxy_on_configure".into()
        })
    );
}

#[test]
fn raw_actions_and_allocator_failures() {
    // on_request_headers returns the status of proxy_get_header_map_pairs
    // with an allocator that returns 0 (Envoy: InvalidMemoryAccess = 6).
    let body = r#"(import "env" "proxy_get_header_map_pairs" (func $pairs (param i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 0)
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
          (call $pairs (i32.const 0) (i32.const 8) (i32.const 12)))"#;
    let mut host = build("alloc-fail", body).unwrap();
    let out = host.http_request(&RequestSpec::get("/")).unwrap();
    // A value other than Continue/Pause is kept and stops the stream.
    assert_eq!(out.action(Phase::RequestHeaders), Some(Action::Other(6)));
    assert_eq!(out.paused_in, Some(Phase::RequestHeaders));
    assert!(!out.forwarded_upstream);
}

#[test]
fn wasm_trap_is_reported_without_guest_panic() {
    let body = format!(
        r#"{BASE}
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
          (i32.load (i32.const -4)))"#
    );
    let mut host = build("oob", &body).unwrap();
    match host.http_request(&RequestSpec::get("/")) {
        Err(HostError::Trap {
            function,
            message,
            guest_panic,
        }) => {
            assert_eq!(function, "proxy_on_request_headers");
            assert!(message.contains("out of bounds"), "{message}");
            assert_eq!(guest_panic, None);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn guest_stack_overflow_is_an_error() {
    let body = format!(
        r#"{BASE}
        (func $rec (export "proxy_on_vm_start") (param i32 i32) (result i32)
          (call $rec (local.get 0) (local.get 1)))"#
    );
    let err = build("recursion", &body).err();
    assert!(
        matches!(&err, Some(HostError::Trap { message, .. }) if message.contains("stack")),
        "{err:?}"
    );
}
