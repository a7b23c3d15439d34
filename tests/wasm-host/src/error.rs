//! Errors returned by the host.

use std::fmt;

/// Every failure the host reports. Guest traps, unimplemented host calls and
/// malformed modules all end up here; the host never panics on guest behaviour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// The `.wasm` file could not be read.
    #[error("cannot read wasm module {path}: {message}")]
    Io {
        /// File path.
        path: String,
        /// OS error text.
        message: String,
    },
    /// wasmtime rejected or failed to compile the module.
    #[error("cannot compile wasm module {name}: {message}")]
    Compile {
        /// Module name (file path or the name given to `from_bytes`).
        name: String,
        /// wasmtime's error.
        message: String,
    },
    /// The module does not export `proxy_abi_version_0_2_1` (Envoy fails with
    /// "Missing or unknown Proxy-Wasm ABI version").
    #[error("module does not export proxy_abi_version_0_2_1 (ABI markers found: {found:?})")]
    AbiVersion {
        /// `proxy_abi_version_*` exports that were found.
        found: Vec<String>,
    },
    /// The module imports from a module name other than `env`,
    /// `wasi_snapshot_preview1` or `wasi_unstable`.
    #[error("module imports `{module}::{name}` from unknown module `{module}`")]
    UnknownImport {
        /// Import module name.
        module: String,
        /// Import field name.
        name: String,
    },
    /// The module imports something other than a function (memory, table, global, tag).
    #[error("module imports `{module}::{name}` which is a {kind}, only functions can be provided")]
    UnsupportedImport {
        /// Import module name.
        module: String,
        /// Import field name.
        name: String,
        /// What kind of import it is.
        kind: String,
    },
    /// A required export is missing or has the wrong type (`memory`,
    /// `malloc`/`proxy_on_memory_allocate`, or a `proxy_on_*` callback).
    #[error("module export `{name}` is missing or has the wrong type: {message}")]
    BadExport {
        /// Export name.
        name: String,
        /// Details.
        message: String,
    },
    /// Instantiation failed (e.g. an import with the wrong signature, a start
    /// function trap, or a resource limit).
    #[error("cannot instantiate wasm module: {0}")]
    Instantiate(String),
    /// The guest trapped (panic → `unreachable`, out-of-bounds access, ...).
    #[error("guest trapped in {function}{}: {message}", panic_suffix(.guest_panic))]
    Trap {
        /// The export the host was calling.
        function: String,
        /// wasmtime's trap description (with a wasm backtrace when available).
        message: String,
        /// The last `Critical` log message from the guest, which is where the
        /// Rust SDK's panic hook reports panics.
        guest_panic: Option<String>,
    },
    /// The guest called a host function this host does not implement.
    #[error("unimplemented host call {name} (called from {function})")]
    UnimplementedHostCall {
        /// Import name, e.g. `proxy_http_call`.
        name: String,
        /// The export the host was calling.
        function: String,
    },
    /// The guest called a host function Envoy forbids while the VM starts
    /// (`_initialize` / `main`); Envoy reports this as `restricted_callback`.
    #[error("restricted_callback: {name} may not be called from {function} (only logging, WASI stdio/args/environ/clock/random are allowed while the VM starts)")]
    RestrictedHostCall {
        /// Import name.
        name: String,
        /// The export the host was calling.
        function: String,
    },
    /// The guest called WASI `proc_exit`.
    #[error("guest called proc_exit({code}) in {function}")]
    ProcExit {
        /// Exit code.
        code: i32,
        /// The export the host was calling.
        function: String,
    },
    /// `proxy_on_vm_start` returned false (Envoy: "Failed to start base Wasm").
    #[error("proxy_on_vm_start returned false")]
    VmStartFailed,
    /// `proxy_on_configure` returned false (Envoy: "Failed to configure base
    /// Wasm plugin"); only returned by [`crate::HostBuilder::build_configured`].
    #[error("proxy_on_configure returned false (plugin configuration rejected)")]
    ConfigureRejected,
    /// A previous call failed; like Envoy, the VM is unusable afterwards.
    #[error("the wasm VM failed earlier: {0}")]
    VmFailed(Box<HostError>),
    /// A stream API was used out of order (e.g. response headers before request headers).
    #[error("invalid use of the stream API: {0}")]
    InvalidState(String),
}

fn panic_suffix(panic: &Option<String>) -> String {
    match panic {
        Some(p) => format!(" (guest panic: {p})"),
        None => String::new(),
    }
}

/// Payload of the traps raised by host functions, so the host can tell them
/// apart from guest traps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostCallTrap {
    Unimplemented(String),
    Restricted(String),
    ProcExit(i32),
}

impl fmt::Display for HostCallTrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostCallTrap::Unimplemented(name) => write!(f, "unimplemented host call {name}"),
            HostCallTrap::Restricted(name) => {
                write!(
                    f,
                    "restricted_callback: {name} is not allowed while the VM starts"
                )
            }
            HostCallTrap::ProcExit(code) => write!(f, "proc_exit({code})"),
        }
    }
}

impl std::error::Error for HostCallTrap {}
