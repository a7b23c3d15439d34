//! The Proxy-Wasm exports every meshguard filter shares: the ABI version marker, the hook through
//! which the host hands the module a value (`proxy_on_memory_allocate`), the module's
//! initialization, and the timer that keeps the filters' log level in step with the host's.
//!
//! Each filter exports, in its own crate, only the stream callbacks it needs. A callback a module
//! does not export is one the host never calls: proxy-wasm-cpp-host, which Envoy embeds, checks
//! for each export before calling it (src/context.cc, `ContextBase::onRequestHeaders`, `onLog`,
//! `onDone`, `onDelete` and the rest; without `proxy_on_context_create` "the in-VM SDK is
//! responsible for managing any required in-VM state"). Every call into the VM costs Envoy time on
//! every request, and the Rust SDK exports all of them, so a filter built on it pays about seven
//! calls per request before it does anything. docs/benchmarks.md measures the difference.
//!
//! Without `proxy_on_context_create` a stream callback does not say which root context (which
//! plugin) it belongs to, so a filter keeps one configuration: the one configured last. That is
//! right for a reconfiguration, which creates a new root context in the same VM before the old
//! one goes. Envoy also shares one VM between two plugins of the same code, VM id and VM
//! configuration (`makeVmKey` in source/extensions/common/wasm/wasm.cc; Istio sets no VM id), so
//! two WasmPlugins of one module in the same sidecar would both run the last configuration: a
//! filter logs an error when a second plugin configures its VM (see [`crate::PluginName`]).
#![allow(unsafe_code)] // the module's exports and the allocation hook

/// `proxy_on_memory_allocate`: `size` bytes the host fills and hands over; [`crate::abi`] takes
/// them back as a `Vec<u8>` of exactly that capacity.
pub fn allocate(size: usize) -> *mut u8 {
    Box::into_raw(Box::<[u8]>::new_uninit_slice(size)).cast::<u8>()
}

/// How often the filters re-read the host's log level (`proxy_on_tick`).
pub const LOG_LEVEL_PERIOD_MS: u32 = 1000;

/// What every filter does first in `proxy_on_configure`: follows the host's log level, notes which
/// plugin is configuring the VM (logging an error when a second one shares it), and reads the
/// plugin configuration. `None`, logged with `without` (what the filter then does), when the host
/// has none.
pub fn begin_configure(filter: &str, without: &str, size: usize) -> Option<Vec<u8>> {
    follow_log_level();
    if let Some(other) = PLUGIN.with(|p| p.borrow_mut().configuring()) {
        let name = PLUGIN.with(|p| p.borrow().name());
        log::error!(
            "{filter}: plugins {other} and {name} share this Wasm VM (same module, no VM id); both now run {name}'s configuration"
        );
    }
    let raw = crate::plugin_configuration(size);
    if raw.is_none() {
        log::error!("{filter}: no plugin configuration; {without}");
    }
    raw
}

thread_local! {
    /// The plugin that configured this module's VM last.
    static PLUGIN: std::cell::RefCell<crate::PluginName> =
        std::cell::RefCell::new(crate::PluginName::default());
}

/// Reads the host's log level now and then every [`LOG_LEVEL_PERIOD_MS`]. A host without timers
/// leaves the level as it was configured.
fn follow_log_level() {
    crate::sync_log_level();
    if let Err(status) = crate::abi::set_tick_period(LOG_LEVEL_PERIOD_MS) {
        log::warn!("meshguard: the host has no timer (status {status}); the log level read at configuration stays");
    }
}

#[cfg(target_arch = "wasm32")]
mod exports {
    extern "C" {
        fn __wasm_call_ctors();
    }

    /// The ABI version this module speaks (the host looks for this export's name).
    #[no_mangle]
    pub extern "C" fn proxy_abi_version_0_2_1() {}

    #[no_mangle]
    pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
        super::allocate(size)
    }

    /// The module's initialization (a WASI reactor's): static constructors, then the logger.
    #[no_mangle]
    pub extern "C" fn _initialize() {
        // SAFETY: the linker's constructor list, run once, before any other export, as the
        // reactor model requires.
        unsafe { __wasm_call_ctors() };
        crate::init_logging(log::LevelFilter::Trace);
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_tick(_root_context_id: u32) {
        crate::sync_log_level();
    }
}
