//! meshguard identity authorization filter.
//!
//! Runs in the inbound (server-side) sidecar of one workload. At configuration it checks, from
//! Istio's node metadata (Envoy's `xds.node.metadata.<KEY>` properties, see
//! [`meshguard_mesh::node`]), that it runs in the workload it was configured for. For each
//! request it reads the mTLS facts Envoy exposes (`connection.mtls`,
//! `connection.uri_san_peer_certificate`, and `connection.uri_san_local_certificate` when the node
//! metadata could not confirm the workload) and, when the caller's rule narrows by them, the
//! request's `:method`, method overrides and `:path`, and asks the compiled policy
//! ([`meshguard_mesh::Authorizer`]) for a decision. A denial is answered locally with 403, a small
//! JSON body and an `x-meshguard-deny-reason` header; a gRPC request gets `grpc-status: 7`,
//! PERMISSION_DENIED, with the reason as `grpc-message`, and a gRPC-web request the same as a
//! trailers-only gRPC-web response. In dry-run mode a denial is logged and counted but the request
//! goes on. Without a valid configuration every request is denied.
//!
//! No host answer makes the filter trap: host calls go through `meshguard_filter_common::abi`,
//! and a local reply the host refuses resets the stream instead.
//!
//! Its only stream callback is `proxy_on_request_headers` (see `meshguard_filter_common::entry`
//! for why the module exports nothing else per stream), and a request costs it one host call for
//! the peer identity, one for the request headers when the caller's rule narrows by method or
//! path, and one for the decision's counter.
//!
//! This crate is only the module's exports and its one root value; what the filter does is
//! `meshguard_filter_logic::authz`, over the Proxy-Wasm host `meshguard_filter_common::AbiHost`.

use std::cell::RefCell;

use meshguard_filter_common::{self as common, AbiHost};
use meshguard_filter_logic::{Action, AuthzFilter};

/// The filter's own exports (the shared ones are in `meshguard_filter_common::entry`).
#[allow(unsafe_code)] // `no_mangle`: the names the host calls
mod exports {
    #[no_mangle]
    pub extern "C" fn proxy_on_configure(_root_context_id: u32, configuration_size: usize) -> bool {
        super::configure(configuration_size)
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_request_headers(
        _context_id: u32,
        _headers: usize,
        _end_of_stream: u32,
    ) -> u32 {
        super::on_request_headers() as u32
    }
}

thread_local! {
    /// The filter's root (see `meshguard_filter_logic::authz`): the module has one, the plugin
    /// configured last (see `meshguard_filter_common::entry`).
    static ROOT: RefCell<AuthzFilter> = RefCell::new(AuthzFilter::default());
}

/// `proxy_on_configure`: compiles the policy and checks the workload; a bad configuration leaves
/// nothing admitted.
fn configure(plugin_configuration_size: usize) -> bool {
    let raw = common::entry::begin_configure(
        "meshguard-authz",
        "denying every request",
        plugin_configuration_size,
    );
    ROOT.with(|r| r.borrow_mut().configure(&mut AbiHost, raw.as_deref()))
}

/// `proxy_on_request_headers`: the decision.
fn on_request_headers() -> Action {
    #[cfg(all(feature = "test-trap", target_arch = "wasm32"))]
    if meshguard_filter_logic::Host::request_header(&mut AbiHost, "x-meshguard-test-trap").is_some()
    {
        core::arch::wasm32::unreachable();
    }
    ROOT.with(|r| r.borrow_mut().on_request_headers(&mut AbiHost))
}
