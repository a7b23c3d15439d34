//! The authorization filter: compiles the policy at configuration, decides each request, and
//! answers a denial (HTTP 403 with a JSON body, gRPC PERMISSION_DENIED, or gRPC-web as its
//! clients read it).
//!
//! [`AuthzFilter::configure`] checks from Istio's node metadata (Envoy's
//! `xds.node.metadata.<KEY>` properties, see [`meshguard_mesh::node`]) that it runs in the
//! workload it was configured for. [`AuthzFilter::on_request_headers`] reads the mTLS facts
//! Envoy exposes (`connection.mtls`, `connection.uri_san_peer_certificate`, and
//! `connection.uri_san_local_certificate` when the node metadata could not confirm the
//! workload) and, when the caller's rule narrows by them, the request's `:method`, method
//! overrides and `:path`, and asks the compiled policy ([`meshguard_mesh::Authorizer`]). In
//! dry-run mode a denial is logged and counted but the request goes on. Without a valid
//! configuration every request is denied, and a local reply the host refuses resets the stream.

use meshguard_mesh::fasthash::BytesTable;
use meshguard_mesh::http::{self, GrpcKind, METHOD_OVERRIDE_HEADERS};
use meshguard_mesh::{
    metrics, Authorizer, Decision, DenyReason, Facts, Mode, NodeFacts, WorkloadCheck,
};

use crate::handles::Metrics;
use crate::host::{
    bool_property, serialize_pairs, Action, Host, LocalReply, Pairs, PROP_LOCAL_URI_SAN, PROP_MTLS,
    PROP_PEER_URI_SAN,
};

/// Header naming the deny reason on a 403.
pub const DENY_REASON_HEADER: &str = "x-meshguard-deny-reason";
/// Envoy response-code details of our local replies (`response.code_details`, `%RESPONSE_CODE_DETAILS%`).
pub const RESPONSE_DETAILS: &str = "meshguard_authz_denied";
/// gRPC PERMISSION_DENIED.
const GRPC_PERMISSION_DENIED: i32 = 7;

/// What every stream needs, built once per configuration: the compiled policy and each denial's
/// local reply, ready to send.
struct State {
    authorizer: Authorizer,
    replies: Vec<Reply>,
}

/// The filter's root: the current configuration (`None`: none valid) and the decision counters,
/// which outlive reconfigurations.
#[derive(Default)]
pub struct AuthzFilter {
    state: Option<State>,
    metrics: Metrics,
    /// The `source` labels seen so far, each with its index in the counters' keys.
    sources: BytesTable<u64>,
}

impl AuthzFilter {
    /// A new configuration replaces the old one; `raw` is `None` when the host has none. A bad
    /// (or missing) configuration leaves nothing admitted.
    pub fn configure(&mut self, host: &mut impl Host, raw: Option<&[u8]>) -> bool {
        self.state = None;
        self.metrics.clear_keys();
        self.sources = BytesTable::default();
        let Some(raw) = raw else {
            return false;
        };
        configure(host, raw).map(|s| self.state = Some(s)).is_some()
    }

    /// The decision on a request, and its answer when it is denied.
    pub fn on_request_headers(&mut self, host: &mut impl Host) -> Action {
        let Some(state) = &self.state else {
            log::error!("meshguard-authz: deny reason=config_invalid (no valid configuration)");
            let content_type = host.request_header("content-type");
            return deny(
                host,
                &Reply::new(metrics::SOURCE_UNKNOWN, DenyReason::ConfigInvalid),
                content_type.as_deref(),
            );
        };
        let authorizer = &state.authorizer;
        let mut facts = HostFacts::new(host);
        let decision = authorizer.decide_with(&mut facts);
        let workload = authorizer.workload();
        let level = level(authorizer.log_level());
        match decision {
            Decision::Allow { source } => {
                if log::log_enabled!(level) {
                    let method = http::method_label(facts.method().unwrap_or_default());
                    log::log!(
                        level,
                        "meshguard-authz: allow source={source} destination={workload} method={method}"
                    );
                }
                let key = metric_key(&mut self.sources, source, 0);
                self.metrics
                    .count_keyed(facts.host, key, || metrics::allowed_total(source, workload));
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
                let key = metric_key(&mut self.sources, source, 1 + reason as usize);
                self.metrics.count_keyed(facts.host, key, || {
                    metrics::denials_total(source, workload, reason.as_str(), mode)
                });
                let content_type = facts.header("content-type").map(<[u8]>::to_vec);
                match (authorizer.mode(), state.replies.get(reason as usize)) {
                    (Mode::DryRun, _) => Action::Continue,
                    (Mode::Enforce, Some(reply)) => {
                        deny(facts.host, reply, content_type.as_deref())
                    }
                    (Mode::Enforce, None) => deny(
                        facts.host,
                        &Reply::new(workload, reason),
                        content_type.as_deref(),
                    ),
                }
            }
        }
    }
}

/// The `log` level for a configured level.
pub fn level(level: meshguard_mesh::LogLevel) -> log::Level {
    use meshguard_mesh::LogLevel;
    match level {
        LogLevel::Trace => log::Level::Trace,
        LogLevel::Debug => log::Level::Debug,
        LogLevel::Info => log::Level::Info,
        LogLevel::Warn => log::Level::Warn,
        LogLevel::Error => log::Level::Error,
    }
}

/// The key of a decision's counter: the index of its source label (given in order of first
/// use) and the outcome (0 allow, 1 + the deny reason's index).
fn metric_key(sources: &mut BytesTable<u64>, source: &str, outcome: usize) -> u64 {
    let index = match sources.get(source.as_bytes()) {
        Some(i) => *i,
        None => {
            let i = sources.len() as u64;
            sources.insert(source.as_bytes().into(), i);
            i
        }
    };
    (index << 8) | outcome as u64
}

/// Compiles the configuration and checks the workload it runs in; `None` (logged) when it is
/// bad.
#[inline(never)]
fn configure(host: &mut impl Host, raw: &[u8]) -> Option<State> {
    match Authorizer::from_json(raw) {
        Ok(mut a) => {
            let node = NodeFacts::read(|path| host.property(path));
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
            Some(State {
                authorizer: a,
                replies,
            })
        }
        Err(e) => {
            log::error!("meshguard-authz: {e}; denying every request");
            None
        }
    }
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
            let headers = serialize_pairs(&[
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
            http_headers: serialize_pairs(&[
                (b"content-type", b"application/json"),
                (DENY_REASON_HEADER.as_bytes(), why),
            ]),
            grpc_headers: serialize_pairs(&[(DENY_REASON_HEADER.as_bytes(), why)]),
            web: [web(false), web(true)],
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
fn deny(host: &mut impl Host, reply: &Reply, content_type: Option<&[u8]>) -> Action {
    let sent = match content_type.map_or(GrpcKind::None, http::grpc_kind) {
        // gRPC clients read the status from `grpc-status`, not from the HTTP status: Envoy
        // turns a local reply with a gRPC status into HTTP 200 with `grpc-status` and the
        // body as `grpc-message` for a request with a gRPC content type.
        GrpcKind::Grpc => host.send_local_response(LocalReply {
            status: 403,
            details: RESPONSE_DETAILS.as_bytes(),
            body: reply.reason.as_bytes(),
            headers: &reply.grpc_headers,
            grpc_status: GRPC_PERMISSION_DENIED,
        }),
        // Envoy does not treat gRPC-web as gRPC here (its gRPC-web filter runs later in the
        // chain), so the filter answers as a gRPC-web server does: HTTP 200, the status in
        // a trailer frame (flag 0x80, base64 for `-text`), and in the headers too for the
        // clients that read a trailers-only status there. Envoy drops `content-type` from a
        // local reply without a body, so the frame also keeps the content type.
        kind @ (GrpcKind::GrpcWeb | GrpcKind::GrpcWebText) => {
            let (headers, body) = &reply.web[usize::from(kind == GrpcKind::GrpcWebText)];
            host.send_local_response(LocalReply {
                status: 200,
                details: RESPONSE_DETAILS.as_bytes(),
                body,
                headers,
                grpc_status: -1,
            })
        }
        GrpcKind::None => host.send_local_response(LocalReply {
            status: 403,
            details: RESPONSE_DETAILS.as_bytes(),
            body: &reply.json_body,
            headers: &reply.http_headers,
            grpc_status: -1,
        }),
    };
    if let Err(status) = sent {
        // The host refused the local reply: do not let the request through regardless.
        log::error!(
            "meshguard-authz: cannot send the denial (host status {status}); resetting the stream"
        );
        if let Err(status) = host.reset_stream() {
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
struct HostFacts<'h, H: Host> {
    host: &'h mut H,
    peer: Option<Option<Vec<u8>>>,
    local: Option<Option<Vec<u8>>>,
    headers: Option<Option<Vec<u8>>>,
}

impl<'h, H: Host> HostFacts<'h, H> {
    fn new(host: &'h mut H) -> Self {
        Self {
            host,
            peer: None,
            local: None,
            headers: None,
        }
    }

    fn header(&mut self, name: &str) -> Option<&[u8]> {
        let host = &mut *self.host;
        let pairs = cached(&mut self.headers, || host.request_headers())?;
        Pairs::new(pairs).get(name.as_bytes())
    }
}

fn cached(
    slot: &mut Option<Option<Vec<u8>>>,
    read: impl FnOnce() -> Option<Vec<u8>>,
) -> Option<&[u8]> {
    slot.get_or_insert_with(read).as_deref()
}

impl<H: Host> Facts for HostFacts<'_, H> {
    fn mtls(&mut self) -> Option<bool> {
        bool_property(self.host, PROP_MTLS)
    }
    fn peer_identity(&mut self) -> Option<&[u8]> {
        let host = &mut *self.host;
        cached(&mut self.peer, || host.property(PROP_PEER_URI_SAN))
    }
    fn local_identity(&mut self) -> Option<&[u8]> {
        let host = &mut *self.host;
        cached(&mut self.local, || host.property(PROP_LOCAL_URI_SAN))
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
