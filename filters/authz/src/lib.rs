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

use std::cell::RefCell;
use std::rc::Rc;

use meshguard_filter_common::abi::Pairs;
use meshguard_filter_common::{self as common, abi, Action, Metrics};
use meshguard_mesh::http::{self, GrpcKind, METHOD_OVERRIDE_HEADERS};
use meshguard_mesh::{
    metrics, Authorizer, Decision, DenyReason, Facts, Mode, NodeFacts, WorkloadCheck,
};

/// Header naming the deny reason on a 403.
pub const DENY_REASON_HEADER: &str = "x-meshguard-deny-reason";
/// Envoy response-code details of our local replies (`response.code_details`, `%RESPONSE_CODE_DETAILS%`).
pub const RESPONSE_DETAILS: &str = "meshguard_authz_denied";
/// gRPC PERMISSION_DENIED.
const GRPC_PERMISSION_DENIED: i32 = 7;

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

/// What every stream needs, built once per configuration: the compiled policy and each denial's
/// local reply, ready to send.
struct State {
    authorizer: Authorizer,
    replies: Vec<Reply>,
}

thread_local! {
    /// The current configuration (`None`: none valid), which every stream reads.
    static STATE: RefCell<Option<Rc<State>>> = const { RefCell::new(None) };
    /// Metric handles; they outlive reconfigurations.
    static METRICS: RefCell<Metrics> = RefCell::new(Metrics::default());
}

/// A denial's local reply in each form (see [`deny`]).
struct Reply {
    reason: &'static str,
    json_body: Vec<u8>,
    http_headers: Vec<u8>,
    grpc_headers: Vec<u8>,
    /// gRPC-web binary and text: headers, body.
    web: [(Vec<u8>, Vec<u8>); 2],
}

impl Reply {
    fn new(workload: &str, reason: DenyReason) -> Reply {
        let why = reason.as_str().as_bytes();
        // Both values are from closed sets (a validated service name, a reason token), so they
        // need no JSON escaping.
        let json_body = format!(
            r#"{{"error":"forbidden","reason":"{}","workload":"{workload}"}}"#,
            reason.as_str()
        )
        .into_bytes();
        let web = |text: bool| {
            let ct: &[u8] = if text {
                b"application/grpc-web-text+proto"
            } else {
                b"application/grpc-web+proto"
            };
            let headers = abi::serialize_pairs(&[
                (b"content-type", ct),
                (b"grpc-status", b"7"),
                (b"grpc-message", why),
                (DENY_REASON_HEADER.as_bytes(), why),
            ]);
            (headers, grpc_web_trailer_frame(why, text))
        };
        Reply {
            reason: reason.as_str(),
            json_body,
            http_headers: abi::serialize_pairs(&[
                (b"content-type", b"application/json"),
                (DENY_REASON_HEADER.as_bytes(), why),
            ]),
            grpc_headers: abi::serialize_pairs(&[(DENY_REASON_HEADER.as_bytes(), why)]),
            web: [web(false), web(true)],
        }
    }
}

/// `proxy_on_configure`: compiles the policy and checks the workload; a bad configuration leaves
/// nothing admitted.
fn configure(plugin_configuration_size: usize) -> bool {
    // A new configuration replaces the old one; if it is bad, nothing is admitted.
    STATE.with(|s| s.replace(None));
    METRICS.with(|m| m.borrow_mut().clear_keys());
    let Some(raw) = common::entry::begin_configure(
        "meshguard-authz",
        "denying every request",
        plugin_configuration_size,
    ) else {
        return false;
    };
    match Authorizer::from_json(&raw) {
        Ok(mut a) => {
            let node = NodeFacts::read(common::property);
            if log::log_enabled!(log::Level::Debug) {
                let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
                log::debug!(
                    "meshguard-authz: node metadata WORKLOAD_NAME={} NAMESPACE={} SERVICE_ACCOUNT={}",
                    show(&node.workload_name),
                    show(&node.namespace),
                    show(&node.service_account)
                );
            }
            match a.check_node(Some(&node)).clone() {
                WorkloadCheck::Mismatch(why) => log::error!(
                    "meshguard-authz: configured for {} but running in {why}; denying every request (reason=wrong_workload)",
                    a.workload()
                ),
                WorkloadCheck::PerRequest => log::info!(
                    "meshguard-authz: the node metadata does not name this workload's namespace and service account; checking each request's local certificate"
                ),
                WorkloadCheck::Confirmed | WorkloadCheck::NameOnly => log::info!(
                    "meshguard-authz: workload {} confirmed by the node metadata",
                    a.workload()
                ),
            }
            log::info!(
                "meshguard-authz: protecting {} in {} mode",
                a.workload(),
                mode_label(a.mode())
            );
            let replies = DenyReason::ALL
                .iter()
                .map(|r| Reply::new(a.workload(), *r))
                .collect();
            let state = State {
                authorizer: a,
                replies,
            };
            STATE.with(|s| s.replace(Some(Rc::new(state))));
            true
        }
        Err(e) => {
            log::error!("meshguard-authz: {e}; denying every request");
            false
        }
    }
}

fn mode_label(mode: Mode) -> &'static str {
    match mode {
        Mode::Enforce => "enforce",
        Mode::DryRun => "dry_run",
    }
}

/// Answers the request with the denial's local reply: JSON 403, gRPC PERMISSION_DENIED, or
/// gRPC-web, by the request's `content-type`. A reply the host refuses resets the stream instead.
fn deny(reply: &Reply, content_type: Option<&[u8]>) -> Action {
    let sent = match content_type.map_or(GrpcKind::None, http::grpc_kind) {
        // gRPC clients read the status from `grpc-status`, not from the HTTP status: Envoy
        // turns a local reply with a gRPC status into HTTP 200 with `grpc-status` and the
        // body as `grpc-message` for a request with a gRPC content type.
        GrpcKind::Grpc => abi::send_local_response(
            403,
            RESPONSE_DETAILS.as_bytes(),
            reply.reason.as_bytes(),
            &reply.grpc_headers,
            GRPC_PERMISSION_DENIED,
        ),
        // Envoy does not treat gRPC-web as gRPC here (its gRPC-web filter runs later in the
        // chain), so the filter answers as a gRPC-web server does: HTTP 200, the status in
        // a trailer frame (flag 0x80, base64 for `-text`), and in the headers too for the
        // clients that read a trailers-only status there. Envoy drops `content-type` from a
        // local reply without a body, so the frame also keeps the content type.
        kind @ (GrpcKind::GrpcWeb | GrpcKind::GrpcWebText) => {
            let (headers, body) = &reply.web[usize::from(kind == GrpcKind::GrpcWebText)];
            abi::send_local_response(200, RESPONSE_DETAILS.as_bytes(), body, headers, -1)
        }
        GrpcKind::None => abi::send_local_response(
            403,
            RESPONSE_DETAILS.as_bytes(),
            &reply.json_body,
            &reply.http_headers,
            -1,
        ),
    };
    if let Err(status) = sent {
        // The host refused the local reply: do not let the request through regardless.
        log::error!(
            "meshguard-authz: cannot send the denial (host status {status}); resetting the stream"
        );
        if let Err(status) = abi::close_stream(abi::STREAM_HTTP_REQUEST) {
            log::error!("meshguard-authz: cannot reset the stream either (host status {status})");
        }
    }
    Action::Pause
}

/// A gRPC-web trailer frame carrying PERMISSION_DENIED and `message` (a reason token, no escaping
/// needed): flag byte 0x80, u32 big-endian length, `grpc-status:7\r\ngrpc-message:…\r\n`;
/// base64 (standard alphabet, padded) for `application/grpc-web-text`.
fn grpc_web_trailer_frame(message: &[u8], text: bool) -> Vec<u8> {
    let mut trailers = b"grpc-status:7\r\ngrpc-message:".to_vec();
    trailers.extend_from_slice(message);
    trailers.extend_from_slice(b"\r\n");
    let mut frame = Vec::with_capacity(5 + trailers.len());
    frame.push(0x80);
    frame.extend_from_slice(&u32::try_from(trailers.len()).unwrap_or(0).to_be_bytes());
    frame.extend_from_slice(&trailers);
    if !text {
        return frame;
    }
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(frame.len().div_ceil(3) * 4);
    for chunk in frame.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            let sextet = usize::try_from((n >> shift) & 63).unwrap_or(0);
            if i <= chunk.len() {
                out.push(ALPHABET.get(sextet).copied().unwrap_or(b'A'));
            } else {
                out.push(b'=');
            }
        }
    }
    out
}

/// A request's facts, each read from the host the first time the decision asks for it: the
/// request headers all at once (one host call instead of one per header).
#[derive(Default)]
struct HostFacts {
    peer: Option<Option<Vec<u8>>>,
    local: Option<Option<Vec<u8>>>,
    headers: Option<Option<Vec<u8>>>,
}

impl HostFacts {
    fn header(&mut self, name: &str) -> Option<&[u8]> {
        let pairs = cached(&mut self.headers, common::request_headers)?;
        Pairs::new(pairs).get(name.as_bytes())
    }
}

fn cached(
    slot: &mut Option<Option<Vec<u8>>>,
    read: impl FnOnce() -> Option<Vec<u8>>,
) -> Option<&[u8]> {
    slot.get_or_insert_with(read).as_deref()
}

impl Facts for HostFacts {
    fn mtls(&mut self) -> Option<bool> {
        common::bool_property(common::PROP_MTLS)
    }
    fn peer_identity(&mut self) -> Option<&[u8]> {
        cached(&mut self.peer, || {
            common::property(common::PROP_PEER_URI_SAN)
        })
    }
    fn local_identity(&mut self) -> Option<&[u8]> {
        cached(&mut self.local, || {
            common::property(common::PROP_LOCAL_URI_SAN)
        })
    }
    fn method(&mut self) -> Option<&[u8]> {
        self.header(":method")
    }
    fn path(&mut self) -> Option<&[u8]> {
        self.header(":path")
    }
    fn has_method_override_header(&mut self) -> bool {
        METHOD_OVERRIDE_HEADERS
            .iter()
            .any(|name| self.header(name).is_some())
    }
}

/// The key of a decision's counter in [`METRICS`]: the address of its source label (a string of
/// the current [`State`], or a static one) and the outcome (0 allow, 1 + the deny reason's index).
fn metric_key(source: &str, outcome: usize) -> u64 {
    ((source.as_ptr() as usize as u64) << 8) | outcome as u64
}

/// `proxy_on_request_headers`: the decision.
fn on_request_headers() -> Action {
    #[cfg(all(feature = "test-trap", target_arch = "wasm32"))]
    if common::request_header("x-meshguard-test-trap").is_some() {
        core::arch::wasm32::unreachable();
    }
    let Some(state) = STATE.with(|s| s.borrow().clone()) else {
        log::error!("meshguard-authz: deny reason=config_invalid (no valid configuration)");
        let content_type = common::request_header("content-type");
        return deny(
            &Reply::new(metrics::SOURCE_UNKNOWN, DenyReason::ConfigInvalid),
            content_type.as_deref(),
        );
    };
    let authorizer = &state.authorizer;
    let mut facts = HostFacts::default();
    let decision = authorizer.decide_with(&mut facts);
    let workload = authorizer.workload();
    let level = common::log_level(authorizer.log_level());
    match decision {
        Decision::Allow { source } => {
            if log::log_enabled!(level) {
                let method = http::method_label(facts.method().unwrap_or_default());
                log::log!(
                    level,
                    "meshguard-authz: allow source={source} destination={workload} method={method}"
                );
            }
            METRICS.with(|m| {
                m.borrow_mut().count_keyed(metric_key(source, 0), || {
                    metrics::allowed_total(source, workload)
                });
            });
            Action::Continue
        }
        Decision::Deny { reason, source } => {
            let source = source.unwrap_or(match reason {
                DenyReason::NoMtls | DenyReason::NoPeerIdentity => metrics::SOURCE_NONE,
                _ => metrics::SOURCE_UNKNOWN,
            });
            let mode = mode_label(authorizer.mode());
            if log::log_enabled!(level) {
                let method = http::method_label(facts.method().unwrap_or_default());
                log::log!(
                    level,
                    "meshguard-authz: deny reason={reason} source={source} destination={workload} method={method} mode={mode}"
                );
            }
            METRICS.with(|m| {
                m.borrow_mut()
                    .count_keyed(metric_key(source, 1 + reason as usize), || {
                        metrics::denials_total(source, workload, reason.as_str(), mode)
                    });
            });
            match (authorizer.mode(), state.replies.get(reason as usize)) {
                (Mode::DryRun, _) => Action::Continue,
                (Mode::Enforce, Some(reply)) => deny(reply, facts.header("content-type")),
                (Mode::Enforce, None) => {
                    deny(&Reply::new(workload, reason), facts.header("content-type"))
                }
            }
        }
    }
}
