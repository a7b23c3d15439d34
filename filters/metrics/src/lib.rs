//! meshguard request metrics filter.
//!
//! Runs in the inbound sidecar of one workload and, when each stream ends (`proxy_on_log`, which
//! Envoy calls for every stream, including those a filter before it answered locally, and the
//! module's only stream callback: see `meshguard_filter_common::entry`), counts the request by
//! source service, destination, method and response-code class and records its duration (Envoy's
//! `request.duration`; a host without that property gets the counts but no durations). The
//! metrics are defined through the Proxy-Wasm metrics API, so Envoy exports them on its
//! Prometheus endpoint (see docs/metrics.md for the Istio settings that label them).
//!
//! A gRPC or gRPC-web response is classed by its `grpc-status` (as Envoy's `grpcToHttpStatus`
//! maps it), since its HTTP status is 200 whatever happened. Without a valid configuration the
//! filter measures nothing and lets every request through; no host answer makes it trap.
//!
//! This crate is only the module's exports and its one root value; what the filter does is
//! `meshguard_filter_logic::request_metrics`, over the Proxy-Wasm host
//! `meshguard_filter_common::AbiHost`.

use std::cell::RefCell;

use meshguard_filter_common::{self as common, AbiHost};
use meshguard_filter_logic::RequestMetrics;

/// The filter's own exports (the shared ones are in `meshguard_filter_common::entry`).
#[allow(unsafe_code)] // `no_mangle`: the names the host calls
mod exports {
    #[no_mangle]
    pub extern "C" fn proxy_on_configure(_root_context_id: u32, configuration_size: usize) -> bool {
        super::configure(configuration_size)
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_log(_context_id: u32) {
        super::on_log();
    }
}

thread_local! {
    /// The filter's root (see `meshguard_filter_logic::request_metrics`): the module has one,
    /// the plugin configured last (see `meshguard_filter_common::entry`).
    static ROOT: RefCell<RequestMetrics> = RefCell::new(RequestMetrics::default());
}

/// `proxy_on_configure`: the workload and its peers; a bad configuration measures nothing.
fn configure(plugin_configuration_size: usize) -> bool {
    let raw = common::entry::begin_configure(
        "meshguard-metrics",
        "not measuring",
        plugin_configuration_size,
    );
    ROOT.with(|r| r.borrow_mut().configure(raw.as_deref()))
}

/// `proxy_on_log`: counts and times the stream that ended.
fn on_log() {
    ROOT.with(|r| r.borrow_mut().on_log(&mut AbiHost));
}
