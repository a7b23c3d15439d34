//! What the meshguard filters do, independent of the host they run in.
//!
//! The split is Kuadrant's (wasm-shim's `kuadrant-filter` logic and the thin shim that hosts it):
//! everything a filter decides and answers is here, behind one trait, [`Host`], for the few
//! things only the proxy can do (read a property or a header, send a local reply, define and
//! update a metric). The cdylibs (`filters/authz`, `filters/metrics`) keep only the Proxy-Wasm
//! exports and the ABI glue (`filters/common`), and hold one root value each:
//!
//! - [`AuthzFilter`]: the compiled policy, each denial's replies and the decision counters;
//!   `configure`, then `on_request_headers` per request.
//! - [`RequestMetrics`]: the workload, its peers and the request series; `configure`, then
//!   `on_log` per stream.
//!
//! A root owns everything its streams use, so nothing lives in a global but the root itself,
//! and native tests drive every branch with a host of their own.

pub mod authz;
pub mod handles;
pub mod host;
pub mod request_metrics;

pub use authz::AuthzFilter;
pub use handles::Metrics;
pub use host::{Action, Host, MetricKind, Pairs};
pub use request_metrics::RequestMetrics;
