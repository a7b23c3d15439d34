//! meshguard identity authorization filter.
//!
//! Runs in the inbound (server-side) sidecar of one workload. For each request it reads the mTLS
//! facts Envoy exposes (`connection.mtls`, `connection.uri_san_peer_certificate`) and the request's
//! `:method` and `:path`, and asks the compiled policy ([`meshguard_mesh::Authorizer`]) for a
//! decision. A denial is answered locally with 403, a small JSON body and an
//! `x-meshguard-deny-reason` header (a gRPC request gets `grpc-status: 7`, PERMISSION_DENIED, with
//! the reason as `grpc-message`); in dry-run mode it is logged and counted but the request goes
//! on. Without a valid configuration every request is denied.

use std::cell::RefCell;
use std::rc::Rc;

use meshguard_filter_common::{self as common, Metrics};
use meshguard_mesh::{metrics, Authorizer, Decision, DenyReason, Mode, RequestFacts};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, GrpcStatusCode, LogLevel};

/// Header naming the deny reason on a 403.
pub const DENY_REASON_HEADER: &str = "x-meshguard-deny-reason";
/// Envoy response-code details for our local replies.
pub const RESPONSE_DETAILS: &str = "meshguard_authz_denied";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(AuthzRoot::default()) });
}}

#[derive(Default)]
struct AuthzRoot {
    authorizer: Option<Rc<Authorizer>>,
    metrics: Rc<RefCell<Metrics>>,
}

impl Context for AuthzRoot {}

impl RootContext for AuthzRoot {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        // A new configuration replaces the old one; if it is bad, nothing is admitted.
        self.authorizer = None;
        let Some(raw) = common::plugin_configuration(plugin_configuration_size) else {
            log::error!("meshguard-authz: no plugin configuration; denying every request");
            return false;
        };
        match Authorizer::from_json(&raw) {
            Ok(a) => {
                log::info!(
                    "meshguard-authz: protecting {} in {} mode",
                    a.workload(),
                    mode_label(a.mode())
                );
                self.authorizer = Some(Rc::new(a));
                true
            }
            Err(e) => {
                log::error!("meshguard-authz: {e}; denying every request");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(AuthzStream {
            authorizer: self.authorizer.clone(),
            metrics: Rc::clone(&self.metrics),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct AuthzStream {
    authorizer: Option<Rc<Authorizer>>,
    metrics: Rc<RefCell<Metrics>>,
}

impl Context for AuthzStream {}

fn mode_label(mode: Mode) -> &'static str {
    match mode {
        Mode::Enforce => "enforce",
        Mode::DryRun => "dry_run",
    }
}

impl AuthzStream {
    fn deny(&self, workload: &str, reason: DenyReason) -> Action {
        let sent = if is_grpc() {
            // gRPC clients read the status from `grpc-status`, not from the HTTP status.
            proxy_wasm::hostcalls::send_grpc_response(
                GrpcStatusCode::PermissionDenied,
                Some(reason.as_str()),
                vec![(DENY_REASON_HEADER, reason.as_str().as_bytes())],
            )
        } else {
            // Both values are from closed sets (a validated service name, a reason token), so
            // they need no JSON escaping.
            let body = format!(
                r#"{{"error":"forbidden","reason":"{}","workload":"{workload}"}}"#,
                reason.as_str()
            );
            let headers = vec![
                ("content-type", "application/json"),
                (DENY_REASON_HEADER, reason.as_str()),
            ];
            proxy_wasm::hostcalls::send_http_response(403, headers, Some(body.as_bytes()))
        };
        if let Err(status) = sent {
            // The host refused the local reply: do not let the request through regardless.
            log::error!(
                "meshguard-authz: cannot send the denial ({status:?}); resetting the stream"
            );
            if let Err(status) = proxy_wasm::hostcalls::reset_http_request() {
                log::error!("meshguard-authz: cannot reset the stream either: {status:?}");
            }
        }
        Action::Pause
    }
}

/// Is this a gRPC request (`content-type: application/grpc[+proto|...]`)?
fn is_grpc() -> bool {
    common::request_header("content-type").is_some_and(|ct| ct.starts_with(b"application/grpc"))
}

impl HttpContext for AuthzStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(authorizer) = self.authorizer.clone() else {
            log::error!("meshguard-authz: deny reason=config_invalid (no valid configuration)");
            return self.deny(metrics::SOURCE_UNKNOWN, DenyReason::ConfigInvalid);
        };
        let peer = common::property(&common::PROP_PEER_URI_SAN);
        let method = common::request_header(":method");
        let path = common::request_header(":path");
        let facts = RequestFacts {
            mtls: common::bool_property(&common::PROP_MTLS),
            peer_identity: peer.as_deref(),
            method: method.as_deref(),
            path: path.as_deref(),
        };
        let decision = authorizer.decide(&facts);
        let workload = authorizer.workload();
        let level = common::log_level(authorizer.log_level());
        let method_label =
            meshguard_mesh::http::method_label(method.as_deref().unwrap_or_default());
        match decision {
            Decision::Allow { source } => {
                log::log!(level, "meshguard-authz: allow source={source} destination={workload} method={method_label}");
                self.metrics
                    .borrow_mut()
                    .count(metrics::allowed_total(source, workload));
                Action::Continue
            }
            Decision::Deny { reason, source } => {
                let source = source.unwrap_or(match reason {
                    DenyReason::NoMtls | DenyReason::NoPeerIdentity => metrics::SOURCE_NONE,
                    _ => metrics::SOURCE_UNKNOWN,
                });
                let mode = mode_label(authorizer.mode());
                log::log!(
                    level,
                    "meshguard-authz: deny reason={reason} source={source} destination={workload} method={method_label} mode={mode}"
                );
                self.metrics.borrow_mut().count(metrics::denials_total(
                    source,
                    workload,
                    reason.as_str(),
                    mode,
                ));
                match authorizer.mode() {
                    Mode::Enforce => self.deny(workload, reason),
                    Mode::DryRun => Action::Continue,
                }
            }
        }
    }
}
