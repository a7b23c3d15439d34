//! A Proxy-Wasm (ABI v0.2.1) host on wasmtime that drives filter modules the
//! way Envoy does, so that filters can be tested and benchmarked without Envoy.
//!
//! * [`Host`] loads a `.wasm` module (compiled once per process and cached),
//!   checks the `proxy_abi_version_0_2_1` marker, runs `_initialize`/`main`,
//!   creates the root context and calls `proxy_on_vm_start`;
//!   [`Host::configure`] calls `proxy_on_configure`.
//! * [`Host::http_request`] runs one request/response through the filter and
//!   returns an [`HttpOutcome`]; [`Host::new_stream`] gives a [`Stream`] to
//!   drive the callbacks one at a time.
//! * Properties are stored by the test as already-encoded bytes
//!   ([`Properties`], encoders in [`property`]).
//! * Metrics, logs, stdout/stderr and unimplemented host calls are readable
//!   from the [`Host`]. Every failure is a [`HostError`]; guest traps never panic
//!   the host.
//!
//! See `README.md` for the implemented ABI subset and how it maps to Envoy.
//!
//! ```no_run
//! use proxy_wasm_host::{Host, Properties, RequestSpec, ResponseSpec};
//! # fn main() -> Result<(), proxy_wasm_host::HostError> {
//! let mut host = Host::builder("filter.wasm").plugin_config("{}").build_configured()?;
//! let outcome = host.http_request(
//!     &RequestSpec::get("/")
//!         .properties(Properties::new().mtls_peer("spiffe://cluster.local/ns/a/sa/b"))
//!         .response(ResponseSpec::new(200).body("hello")),
//! )?;
//! println!("{:?} {:?}", outcome.status(), outcome.local_response);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod engine;
mod error;
mod host;
mod hostcalls;
mod memory;
mod pairs;
pub mod property;
mod state;
mod types;
mod wasi;

pub use error::HostError;
pub use host::{
    Host, HostBuilder, HttpOutcome, Phase, RequestSpec, ResponseSpec, RunSummary, Stream,
};
pub use property::Properties;
pub use types::{Action, Headers, LocalResponse, LogEntry, LogLevel, MetricType, Status};

/// Default wall-clock time reported to the guest: 2024-01-01T00:00:00Z in
/// nanoseconds since the Unix epoch.
pub const DEFAULT_TIME_NANOS: u64 = 1_704_067_200_000_000_000;

/// Serializes header pairs in the Proxy-Wasm map layout (as Envoy hands maps
/// to the guest); exposed for tests that craft raw ABI calls.
pub fn serialize_pairs<'a>(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Vec<u8> {
    pairs::serialize(pairs)
}
