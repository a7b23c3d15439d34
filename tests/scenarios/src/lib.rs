//! The filters' scenarios as plain data, so that every Proxy-Wasm host the suite uses runs the same
//! ones: `tests/filters` runs them in the workspace's host (`tests/wasm-host`), `tests/second-host`
//! in the crates.io `proxy-wasm-host`. No runtime here: configurations, the node the sidecar runs
//! on, requests, what the host does, and what must come out.

use meshguard_mesh::{metrics, CallRule, LogLevel, Mesh, Mode, NodeFacts};

/// Namespace of the scenarios' mesh.
pub const NAMESPACE: &str = "shop";
/// The deny-reason header of the authorization filter, and the `response.code_details` of its
/// local replies: the filter's own constants.
pub use meshguard_filter_logic::authz::{DENY_REASON_HEADER, RESPONSE_DETAILS};

/// Which compiled filter a scenario runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Authz,
    Metrics,
}

impl Filter {
    /// The `.wasm` file's stem.
    pub fn module(self) -> &'static str {
        match self {
            Filter::Authz => "meshguard_authz",
            Filter::Metrics => "meshguard_metrics",
        }
    }
}

/// How the host misbehaves, where a host can.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostQuirks {
    /// `proxy_send_local_response` answers a failure status.
    pub refuse_local_response: bool,
    /// `proxy_define_metric` answers a failure status.
    pub refuse_metrics: bool,
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// mTLS with this URI SAN.
    Id(String),
    /// A plaintext connection.
    Plaintext,
}

/// One request and what must happen to it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Further request headers (lower-case names).
    pub headers: Vec<(String, Vec<u8>)>,
    pub peer: Peer,
    /// `connection.uri_san_local_certificate`, when the host reports one.
    pub local_identity: Option<String>,
    /// What the application answers if the request reaches it.
    pub upstream_status: u32,
    pub expect: Expect,
    /// What real Envoy does with the request where that differs from `expect`: Envoy's HTTP
    /// connection manager acts before any filter (Istio's path normalization, its HTTP/1 codec),
    /// and Envoy rejects a configuration the filter refuses instead of running the filter. A bare
    /// Proxy-Wasm host does neither. Envoy is right; each such difference is listed in
    /// tests/wasm-host/README.md.
    pub envoy: Option<Expect>,
}

/// The outcome a request must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Reaches the application, no local reply.
    Forward,
    /// A local 403 with a JSON body naming the reason.
    Deny(&'static str),
    /// A gRPC local reply: `grpc_status` 7 (PERMISSION_DENIED), the reason as its message.
    DenyGrpc(&'static str),
    /// A gRPC-web reply: HTTP 200 with this `content-type`, `grpc-status: 7` in the headers and
    /// in a trailer frame in the body (see [`grpc_web_trailers`]).
    DenyGrpcWeb(&'static str, &'static str),
    /// No reply could be sent: the stream is reset, nothing reaches the application.
    Reset,
    /// Reaches the application with this path (Envoy's path normalization rewrote it before the
    /// filter saw it, and the application gets the same path).
    ForwardAs(&'static str),
    /// Envoy answers with this HTTP status itself; no filter decides, nothing reaches the
    /// application (a request its codec refuses, or a filter whose configuration it rejected).
    EnvoyReply(u16),
    /// The same for a gRPC request: HTTP 200 with this `grpc-status`, Envoy's mapping of the
    /// HTTP status it would have answered.
    EnvoyReplyGrpc(&'static str),
}

/// A scenario: one filter instance, configured once, then its requests in order.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub filter: Filter,
    pub config: Vec<u8>,
    /// The node metadata Istio's agent writes (served field by field as the
    /// `xds.node.metadata.<KEY>` properties); `None`: a node without metadata.
    pub node: Option<NodeFacts>,
    /// What `on_configure` must answer.
    pub configures: bool,
    pub quirks: HostQuirks,
    pub requests: Vec<Request>,
    /// Counters that must hold these values afterwards (stat names as the filter defines them).
    pub counters: Vec<(String, u64)>,
    /// At most this many metric series may be defined.
    pub max_series: Option<usize>,
}

/// The SPIFFE identity of a service of the scenarios' mesh.
pub fn identity(service: &str) -> String {
    format!("spiffe://cluster.local/ns/{NAMESPACE}/sa/{service}")
}

/// The node Istio reports for a pod of `service` (workload and service account named after it).
pub fn node_of(service: &str) -> NodeFacts {
    NodeFacts {
        workload_name: Some(service.to_owned()),
        namespace: Some(NAMESPACE.to_owned()),
        service_account: Some(service.to_owned()),
    }
}

/// The reference mesh with user-service narrowed to GET and POST under `/orders` on order-service.
pub fn narrowed_mesh() -> Mesh {
    let mut mesh = Mesh::reference(NAMESPACE).unwrap_or_else(|_| Mesh {
        namespace: NAMESPACE.to_owned(),
        trust_domain: "cluster.local".to_owned(),
        services: Vec::new(),
        clients: Vec::new(),
        calls: Vec::new(),
    });
    for rule in &mut mesh.calls {
        if rule.from == "user-service" && rule.to == "order-service" {
            *rule = CallRule {
                from: rule.from.clone(),
                to: rule.to.clone(),
                methods: vec!["GET".into(), "POST".into()],
                path_prefixes: vec!["/orders".into()],
            };
        }
    }
    mesh
}

fn authz_config(mesh: &Mesh, service: &str) -> Vec<u8> {
    mesh.authz_config(service, Mode::Enforce, LogLevel::Info)
        .map(|c| c.to_json().into_bytes())
        .unwrap_or_default()
}

fn metrics_config(mesh: &Mesh, service: &str) -> Vec<u8> {
    mesh.metrics_config(service, LogLevel::Info)
        .map(|c| c.to_json().into_bytes())
        .unwrap_or_default()
}

fn req(caller: &str, method: &str, path: &str, expect: Expect) -> Request {
    Request {
        method: method.to_owned(),
        path: path.to_owned(),
        headers: Vec::new(),
        peer: Peer::Id(identity(caller)),
        local_identity: None,
        upstream_status: 200,
        expect,
        envoy: None,
    }
}

impl Request {
    fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    fn local(mut self, id: Option<String>) -> Self {
        self.local_identity = id;
        self
    }

    fn upstream(mut self, status: u32) -> Self {
        self.upstream_status = status;
        self
    }

    fn in_envoy(mut self, expect: Expect) -> Self {
        self.envoy = Some(expect);
        self
    }

    /// What this request must have in real Envoy.
    pub fn envoy_expect(&self) -> &Expect {
        self.envoy.as_ref().unwrap_or(&self.expect)
    }
}

fn authz(name: &'static str, requests: Vec<Request>) -> Scenario {
    let mesh = narrowed_mesh();
    Scenario {
        name,
        filter: Filter::Authz,
        config: authz_config(&mesh, "order-service"),
        node: Some(node_of("order-service")),
        configures: true,
        quirks: HostQuirks::default(),
        requests,
        counters: Vec::new(),
        max_series: None,
    }
}

/// Every scenario.
pub fn all() -> Vec<Scenario> {
    use Expect::{Deny, DenyGrpc, DenyGrpcWeb, Forward, Reset};
    let user = "user-service";
    let mut out = Vec::new();

    // Path parameters: `;…` segments that Tomcat, Spring and Jetty strip, in any spelling.
    let mut path_requests = vec![
        req(user, "GET", "/orders/7", Forward),
        req(user, "GET", "/orders?user_id=7", Forward),
    ];
    // In Envoy, Istio's path normalization (BASE: RFC 3986 dot segments, `normalize_path`)
    // runs first: a `..` takes the `;` segment before it away, which leaves a path outside the
    // prefix or one inside it with no parameter left, and the application gets that same path.
    use Expect::{EnvoyReply, ForwardAs};
    for (path, envoy) in [
        ("/orders/..;/admin", Some(Deny("path_not_allowed"))),
        ("/orders/.;/admin", Some(ForwardAs("/orders/admin"))),
        ("/orders;/../admin", Some(Deny("path_not_allowed"))),
        ("/orders;x=1/../admin", Some(Deny("path_not_allowed"))),
        ("/orders/..;x=1/admin", Some(Deny("path_not_allowed"))),
        ("/orders/%3B/../admin", Some(ForwardAs("/orders/admin"))),
        ("/orders/%3b/admin", None),
        ("/orders/x;jsessionid=1", None),
        ("/orders;", None),
        ("/orders/%2e%2e;/admin", None),
        // Envoy's HTTP/1 codec refuses a control character in the request line.
        ("/orders/\tadmin", Some(EnvoyReply(400))),
    ] {
        let mut r = req(user, "GET", path, Deny("path_not_normalized"));
        r.envoy = envoy;
        path_requests.push(r);
    }
    out.push(authz("path-parameters-never-widen-a-prefix", path_requests));

    // Method overrides: headers and the `_method` parameter, whatever the value.
    let mut override_requests = vec![
        req(user, "POST", "/orders?method=x", Forward),
        req(user, "GET", "/orders?x_method=DELETE", Forward),
    ];
    for (name, value) in [
        ("x-http-method-override", "DELETE"),
        ("x-http-method", "PUT"),
        ("x-method-override", "DELETE"),
        ("x-http-method-override", "GET"),
        ("x-http-method-override", ""),
    ] {
        override_requests.push(
            req(user, "POST", "/orders", Deny("method_override")).header(name, value.as_bytes()),
        );
    }
    for path in [
        "/orders?_method=DELETE",
        "/orders?a=1&_method=DELETE",
        "/orders?%5Fmethod=DELETE",
        "/orders?_METHOD=delete",
        "/orders/7?_method=PUT#x",
    ] {
        override_requests.push(req(user, "POST", path, Deny("method_override")));
    }
    // Narrowing by method is checked first: an override never turns a denied method into an
    // allowed one either.
    override_requests.push(
        req(user, "DELETE", "/orders", Deny("method_not_allowed"))
            .header("x-http-method-override", b"GET".to_vec()),
    );
    out.push(authz(
        "method-overrides-are-denied-under-method-narrowing",
        override_requests,
    ));

    // A caller without narrowing may use overrides: it may run any method anyway.
    let mut s = authz(
        "method-overrides-are-allowed-without-narrowing",
        vec![
            req("order-service", "GET", "/payments?_method=DELETE", Forward)
                .header("x-http-method-override", b"DELETE".to_vec()),
        ],
    );
    s.config = authz_config(&narrowed_mesh(), "payment-service");
    s.node = Some(node_of("payment-service"));
    out.push(s);

    // The wrong workload, as node metadata says.
    for (name, node) in [
        ("wrong-workload-name", node_of("payment-service")),
        (
            "wrong-workload-service-account",
            NodeFacts {
                workload_name: Some("order-service".into()),
                namespace: Some(NAMESPACE.into()),
                service_account: Some("payment-service".into()),
            },
        ),
        (
            "wrong-workload-namespace",
            NodeFacts {
                workload_name: Some("order-service".into()),
                namespace: Some("other".into()),
                service_account: Some("order-service".into()),
            },
        ),
    ] {
        let mut s = authz(
            name,
            vec![
                req(user, "GET", "/orders", Deny("wrong_workload")),
                req("payment-service", "GET", "/orders", Deny("wrong_workload")),
                req(user, "GET", "/orders", Deny("wrong_workload"))
                    .local(Some(identity("order-service"))),
            ],
        );
        s.node = Some(node);
        out.push(s);
    }

    // Without node metadata, each request's local certificate says where the filter runs.
    let mut s = authz(
        "workload-checked-per-request-without-node-metadata",
        vec![
            req(user, "GET", "/orders", Forward).local(Some(identity("order-service"))),
            req(user, "GET", "/orders", Deny("wrong_workload"))
                .local(Some(identity("payment-service"))),
            req(user, "GET", "/orders", Deny("wrong_workload")),
            req(user, "GET", "/orders", Deny("wrong_workload"))
                .local(Some(format!("{}/x", identity("order-service")))),
        ],
    );
    s.node = None;
    out.push(s);
    let mut s = authz(
        "workload-checked-per-request-with-partial-node-metadata",
        vec![
            req(user, "GET", "/orders", Forward).local(Some(identity("order-service"))),
            req(user, "GET", "/orders", Deny("wrong_workload")),
        ],
    );
    s.node = Some(NodeFacts {
        workload_name: Some("order-service".into()),
        ..NodeFacts::default()
    });
    out.push(s);

    // gRPC per Envoy's content-type rule, gRPC-web answered as gRPC-web, look-alikes as HTTP.
    let pay = "payment-service";
    let mut grpc = Vec::new();
    for ct in [
        "application/grpc",
        "application/grpc+proto",
        "application/grpc+json",
    ] {
        grpc.push(
            req(pay, "POST", "/shop.Orders/List", DenyGrpc("unknown_peer"))
                .header("content-type", ct.as_bytes()),
        );
    }
    for (ct, answer) in [
        ("application/grpc-web", "application/grpc-web+proto"),
        ("application/grpc-web+proto", "application/grpc-web+proto"),
        (
            "application/grpc-web-text",
            "application/grpc-web-text+proto",
        ),
        (
            "application/grpc-web-text+proto",
            "application/grpc-web-text+proto",
        ),
    ] {
        grpc.push(
            req(
                pay,
                "POST",
                "/shop.Orders/List",
                DenyGrpcWeb("unknown_peer", answer),
            )
            .header("content-type", ct.as_bytes()),
        );
    }
    for ct in [
        "application/grpcx",
        // Envoy's rule admits no parameters: this is answered as plain HTTP.
        "application/grpc;charset=utf-8",
        "application/grpc-webx",
        "application/grpc-web-textual",
        "application/grpc-",
        "Application/grpc",
        "text/plain; application/grpc",
    ] {
        grpc.push(
            req(pay, "POST", "/shop.Orders/List", Deny("unknown_peer"))
                .header("content-type", ct.as_bytes()),
        );
    }
    grpc.push(
        req(user, "POST", "/orders", Forward).header("content-type", b"application/grpc".to_vec()),
    );
    out.push(authz("grpc-and-grpc-web-denials", grpc));

    // A bad configuration denies everything and traps nowhere.
    // Envoy rejects a configuration the filter refuses (`on_configure` false: "Unable to create
    // Wasm plugin"), so the filter never runs; with no configuration for it, the listener answers
    // 500 (NFCF), which a gRPC client reads as UNKNOWN.
    let mut s = authz(
        "bad-configuration-denies-everything",
        vec![
            req(user, "GET", "/orders", Deny("config_invalid")).in_envoy(EnvoyReply(500)),
            req(user, "POST", "/x", DenyGrpc("config_invalid"))
                .header("content-type", b"application/grpc".to_vec())
                .in_envoy(Expect::EnvoyReplyGrpc("2")),
        ],
    );
    s.config = b"{\"workload\":\"order-service\"".to_vec();
    s.configures = false;
    out.push(s);

    // A host that refuses the local reply: the stream is reset, nothing gets through.
    let mut s = authz(
        "a-refused-local-reply-resets-the-stream",
        vec![
            req(pay, "GET", "/orders", Reset),
            req(user, "GET", "/orders", Forward),
        ],
    );
    s.quirks.refuse_local_response = true;
    out.push(s);

    // A host that refuses metrics: decisions are unchanged.
    let mut s = authz(
        "a-refused-metric-changes-no-decision",
        vec![
            req(pay, "GET", "/orders", Deny("unknown_peer")),
            req(user, "GET", "/orders", Forward),
            req(user, "GET", "/admin", Deny("path_not_allowed")),
        ],
    );
    s.quirks.refuse_metrics = true;
    out.push(s);

    out.extend(metrics_scenarios());
    out
}

fn metrics(name: &'static str, requests: Vec<Request>, counters: Vec<(String, u64)>) -> Scenario {
    let mesh = narrowed_mesh();
    Scenario {
        name,
        filter: Filter::Metrics,
        config: metrics_config(&mesh, "order-service"),
        node: Some(node_of("order-service")),
        configures: true,
        quirks: HostQuirks::default(),
        requests,
        counters,
        max_series: None,
    }
}

fn metrics_scenarios() -> Vec<Scenario> {
    use Expect::Forward;
    let count = |source: &str, method: &str, class: &str| {
        metrics::requests_total(source, "order-service", method, class)
    };
    let mut out = Vec::new();
    // A gRPC or gRPC-web denial (HTTP 200, grpc-status 7) is a 4xx; a gRPC OK a 2xx.
    let grpc = |ct: &str, grpc_status: &str, expect_status: u32| {
        let mut r = req("payment-service", "POST", "/shop.Orders/List", Forward)
            .header("content-type", ct.as_bytes())
            .upstream(expect_status);
        // The upstream (or the local reply before this filter) answers with `grpc-status`.
        r.headers.push((
            "x-upstream-grpc-status".into(),
            grpc_status.as_bytes().to_vec(),
        ));
        r
    };
    out.push(metrics(
        "grpc-denials-are-counted-as-4xx",
        vec![
            grpc("application/grpc", "7", 200),
            grpc("application/grpc-web+proto", "7", 200),
            // Not gRPC by Envoy's rule (parameters): the HTTP status decides.
            grpc("application/grpc;charset=utf-8", "16", 200),
            grpc("application/grpc", "0", 200),
            grpc("application/grpc", "14", 200),
            // Not gRPC by Envoy's rule: the HTTP status decides.
            grpc("application/grpcx", "7", 200),
        ],
        vec![
            (count("payment-service", "POST", "4xx"), 2),
            (count("payment-service", "POST", "2xx"), 3),
            (count("payment-service", "POST", "5xx"), 1),
        ],
    ));
    // Unconfigured: every request passes, nothing is counted, nothing traps.
    // In Envoy, a configuration the filter refuses is rejected whatever the failure policy: the
    // filter does not run and the listener answers 500 until a configuration it accepts arrives.
    let mut s = metrics(
        "an-unconfigured-metrics-filter-passes-everything",
        vec![
            req("user-service", "GET", "/orders", Forward).in_envoy(Expect::EnvoyReply(500)),
            req("payment-service", "GET", "/x", Forward).in_envoy(Expect::EnvoyReply(500)),
        ],
        Vec::new(),
    );
    s.config = b"{}".to_vec();
    s.configures = false;
    s.max_series = Some(0);
    out.push(s);
    // Many known peers: series stay bounded and the rest is counted as overflow.
    let peers: Vec<String> = (0..metrics::MAX_SERIES + 100)
        .map(|i| format!("caller-{i}"))
        .collect();
    let config = format!(
        r#"{{"workload":"order-service","peers":{{{}}}}}"#,
        peers
            .iter()
            .map(|p| format!(r#""{}":"{p}""#, identity(p)))
            .collect::<Vec<_>>()
            .join(",")
    );
    let requests: Vec<Request> = peers
        .iter()
        .map(|p| req(p, "GET", "/orders", Forward))
        .collect();
    // Each request defines a counter and a histogram series until the bound.
    let overflowed = (peers.len() * 2 - metrics::MAX_SERIES) / 2;
    let mut s = metrics(
        "series-are-bounded-with-an-overflow-series",
        requests,
        vec![(
            metrics::overflow_series(&count("x", "GET", "2xx")),
            u64::try_from(overflowed).unwrap_or(u64::MAX),
        )],
    );
    s.config = config.into_bytes();
    s.max_series = Some(metrics::MAX_SERIES + 2);
    out.push(s);
    // A host that refuses metrics: requests still pass, nothing traps.
    let mut s = metrics(
        "a-refused-metric-is-not-a-trap",
        vec![
            req("user-service", "GET", "/orders", Forward),
            req("user-service", "GET", "/orders", Forward),
        ],
        Vec::new(),
    );
    s.quirks.refuse_metrics = true;
    out.push(s);
    out
}

/// The request header a scenario uses to tell the host what `grpc-status` the upstream answers
/// with (the host puts it in the response headers, as a trailers-only gRPC response has it).
pub const UPSTREAM_GRPC_STATUS: &str = "x-upstream-grpc-status";

/// The trailers of a gRPC-web response body (`text`: base64, as `application/grpc-web-text`):
/// the frame with flag 0x80, as text. `None` if the body holds no well-formed trailer frame.
pub fn grpc_web_trailers(body: &[u8], text: bool) -> Option<String> {
    let raw = if text {
        base64_decode(body)?
    } else {
        body.to_vec()
    };
    let mut rest = raw.as_slice();
    while let [flag, a, b, c, d, tail @ ..] = rest {
        let len = usize::try_from(u32::from_be_bytes([*a, *b, *c, *d])).ok()?;
        let payload = tail.get(..len)?;
        if flag & 0x80 != 0 {
            return String::from_utf8(payload.to_vec()).ok();
        }
        rest = tail.get(len..)?;
    }
    None
}

fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::new();
    for chunk in text.chunks(4) {
        let digits: Vec<u8> = chunk.iter().take_while(|c| **c != b'=').copied().collect();
        let mut n: u32 = 0;
        for (i, c) in digits.iter().enumerate() {
            n |= u32::from(value(*c)?) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(bytes.get(1..digits.len().max(1))?);
    }
    Some(out)
}
