//! The filters' logic, natively, against a host of the tests' own: every branch of the decision
//! and its replies, the request metrics' classes and series, and what the filters do when the
//! host refuses a call. (The same logic runs compiled to Wasm in our Proxy-Wasm host, the
//! crates.io one and real Envoy: tests/filters, tests/second-host, tests/envoy.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use meshguard_filter_logic::authz::{DENY_REASON_HEADER, RESPONSE_DETAILS};
use meshguard_filter_logic::host::{
    serialize_pairs, LocalReply, PROP_LOCAL_URI_SAN, PROP_MTLS, PROP_PEER_URI_SAN,
    PROP_REQUEST_DURATION, PROP_RESPONSE_CODE,
};
use meshguard_filter_logic::request_metrics::{class_index, series_keys, CLASSES};
use meshguard_filter_logic::{Action, AuthzFilter, Host, MetricKind, Pairs, RequestMetrics};
use meshguard_mesh::metrics::MAX_SERIES;
use meshguard_mesh::{LogLevel, Mesh, Mode};

/// A local reply the filter sent.
#[derive(Debug, Clone)]
struct Sent {
    status: u32,
    details: Vec<u8>,
    body: Vec<u8>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    grpc_status: i32,
}

impl Sent {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }
}

/// The tests' host: what the proxy would hold, and what the filter did with it.
#[derive(Default)]
struct TestHost {
    properties: BTreeMap<Vec<u8>, Vec<u8>>,
    request: Vec<(String, String)>,
    response: Vec<(String, String)>,
    trailers: Vec<(String, String)>,
    sent: Vec<Sent>,
    resets: usize,
    refuse_reply: bool,
    refuse_reset: bool,
    refuse_metrics: bool,
    /// Metric name to (kind, id).
    defined: BTreeMap<String, (MetricKind, u32)>,
    /// Metric id to its counter value or histogram samples.
    counters: BTreeMap<u32, i64>,
    samples: BTreeMap<u32, Vec<u64>>,
}

impl TestHost {
    fn counter(&self, name: &str) -> i64 {
        self.defined
            .get(name)
            .and_then(|(_, id)| self.counters.get(id))
            .copied()
            .unwrap_or(0)
    }
}

fn find(pairs: &[(String, String)], name: &str) -> Option<Vec<u8>> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone().into_bytes())
}

impl Host for TestHost {
    fn property(&mut self, path: &[u8]) -> Option<Vec<u8>> {
        self.properties.get(path).cloned()
    }
    fn request_headers(&mut self) -> Option<Vec<u8>> {
        let pairs: Vec<(&[u8], &[u8])> = self
            .request
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
            .collect();
        Some(serialize_pairs(&pairs))
    }
    fn request_header(&mut self, name: &str) -> Option<Vec<u8>> {
        find(&self.request, name)
    }
    fn response_header(&mut self, name: &str) -> Option<Vec<u8>> {
        find(&self.response, name)
    }
    fn response_trailer(&mut self, name: &str) -> Option<Vec<u8>> {
        find(&self.trailers, name)
    }
    fn send_local_response(&mut self, r: LocalReply<'_>) -> Result<(), u32> {
        if self.refuse_reply {
            return Err(2);
        }
        self.sent.push(Sent {
            status: r.status,
            details: r.details.to_vec(),
            body: r.body.to_vec(),
            headers: Pairs::new(r.headers)
                .iter()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect(),
            grpc_status: r.grpc_status,
        });
        Ok(())
    }
    fn reset_stream(&mut self) -> Result<(), u32> {
        if self.refuse_reset {
            return Err(2);
        }
        self.resets += 1;
        Ok(())
    }
    fn define_metric(&mut self, kind: MetricKind, name: &[u8]) -> Result<u32, u32> {
        if self.refuse_metrics {
            return Err(2);
        }
        let id = u32::try_from(self.defined.len()).unwrap();
        let name = String::from_utf8(name.to_vec()).unwrap();
        assert!(
            self.defined.insert(name.clone(), (kind, id)).is_none(),
            "{name} defined twice"
        );
        Ok(id)
    }
    fn increment_metric(&mut self, id: u32, delta: i64) -> Result<(), u32> {
        *self.counters.entry(id).or_default() += delta;
        Ok(())
    }
    fn record_metric(&mut self, id: u32, value: u64) -> Result<(), u32> {
        self.samples.entry(id).or_default().push(value);
        Ok(())
    }
}

const NS: &str = "shop";

fn spiffe(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/{NS}/sa/{sa}")
}

fn authz_config(mode: Mode) -> Vec<u8> {
    let mut mesh = Mesh::reference(NS).unwrap();
    mesh.calls[1].methods = vec!["POST".into()];
    mesh.authz_config("payment-service", mode, LogLevel::Info)
        .unwrap()
        .to_json()
        .into_bytes()
}

/// A request to payment-service over mTLS from `caller`, in payment-service's own sidecar.
fn request(caller: &str, method: &str, content_type: Option<&str>) -> TestHost {
    let mut h = TestHost::default();
    h.properties.insert(PROP_MTLS.to_vec(), vec![1]);
    h.properties
        .insert(PROP_PEER_URI_SAN.to_vec(), spiffe(caller).into_bytes());
    h.properties.insert(
        PROP_LOCAL_URI_SAN.to_vec(),
        spiffe("payment-service").into_bytes(),
    );
    h.request = vec![
        (":method".into(), method.into()),
        (":path".into(), "/pay".into()),
    ];
    if let Some(ct) = content_type {
        h.request.push(("content-type".into(), ct.into()));
    }
    h
}

fn configured(mode: Mode) -> AuthzFilter {
    let mut f = AuthzFilter::default();
    assert!(f.configure(&mut TestHost::default(), Some(&authz_config(mode))));
    f
}

/// payment-service's denials of user-service, as the counter says.
fn unknown_peer_denials(h: &TestHost, mode: &str) -> i64 {
    h.counter(&meshguard_mesh::metrics::denials_total(
        "user-service",
        "payment-service",
        "unknown_peer",
        mode,
    ))
}

#[test]
fn an_admitted_caller_goes_on_and_is_counted() {
    let mut f = configured(Mode::Enforce);
    let mut h = request("order-service", "POST", None);
    for _ in 0..3 {
        assert_eq!(f.on_request_headers(&mut h), Action::Continue);
    }
    assert!(h.sent.is_empty());
    let allowed = meshguard_mesh::metrics::allowed_total("order-service", "payment-service");
    assert_eq!(h.counter(&allowed), 3);
}

#[test]
fn a_denial_is_a_json_403_with_its_reason() {
    let mut f = configured(Mode::Enforce);
    let mut h = request("user-service", "POST", None);
    assert_eq!(f.on_request_headers(&mut h), Action::Pause);
    let sent = &h.sent[0];
    assert_eq!(sent.status, 403);
    assert_eq!(sent.details, RESPONSE_DETAILS.as_bytes());
    assert_eq!(sent.grpc_status, -1);
    assert_eq!(sent.header(DENY_REASON_HEADER), Some(&b"unknown_peer"[..]));
    assert_eq!(sent.header("content-type"), Some(&b"application/json"[..]));
    let body: serde_json::Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(body["reason"], "unknown_peer");
    assert_eq!(body["workload"], "payment-service");
    assert_eq!(unknown_peer_denials(&h, "enforce"), 1);
}

#[test]
fn a_method_the_rule_does_not_name_is_denied() {
    let mut f = configured(Mode::Enforce);
    let mut h = request("order-service", "DELETE", None);
    assert_eq!(f.on_request_headers(&mut h), Action::Pause);
    assert_eq!(
        h.sent[0].header(DENY_REASON_HEADER),
        Some(&b"method_not_allowed"[..])
    );
}

#[test]
fn grpc_gets_permission_denied_and_grpc_web_a_trailer_frame() {
    let mut f = configured(Mode::Enforce);
    let mut grpc = request("user-service", "POST", Some("application/grpc"));
    f.on_request_headers(&mut grpc);
    assert_eq!(grpc.sent[0].grpc_status, 7);
    assert_eq!(grpc.sent[0].body, b"unknown_peer");

    let mut frame = |text: bool| {
        let ct = if text {
            "application/grpc-web-text+proto"
        } else {
            "application/grpc-web+proto"
        };
        let mut h = request("user-service", "POST", Some(ct));
        f.on_request_headers(&mut h);
        let sent = h.sent[0].clone();
        assert_eq!((sent.status, sent.grpc_status), (200, -1));
        assert_eq!(sent.header("grpc-status"), Some(&b"7"[..]));
        assert_eq!(sent.header("content-type"), Some(ct.as_bytes()));
        sent.body
    };
    let binary = frame(false);
    let trailers = b"grpc-status:7\r\ngrpc-message:unknown_peer\r\n";
    assert_eq!(binary[0], 0x80);
    assert_eq!(
        u32::from_be_bytes(binary[1..5].try_into().unwrap()) as usize,
        trailers.len()
    );
    assert_eq!(&binary[5..], trailers);
    // -text is the same frame in standard, padded base64.
    let text = frame(true);
    assert_eq!(text, base64(&binary).into_bytes());
    assert_eq!(text.len() % 4, 0);
}

/// Standard padded base64, written out here as the reference (RFC 4648 section 4).
fn base64(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn dry_run_counts_the_denial_and_lets_it_through() {
    let mut f = configured(Mode::DryRun);
    let mut h = request("user-service", "POST", None);
    assert_eq!(f.on_request_headers(&mut h), Action::Continue);
    assert!(h.sent.is_empty());
    assert_eq!(unknown_peer_denials(&h, "dry_run"), 1);
}

#[test]
fn without_mtls_or_a_configuration_everything_is_denied() {
    let mut f = configured(Mode::Enforce);
    let mut h = request("order-service", "POST", None);
    h.properties.remove(PROP_PEER_URI_SAN);
    h.properties.insert(PROP_MTLS.to_vec(), vec![0]);
    assert_eq!(f.on_request_headers(&mut h), Action::Pause);
    assert_eq!(h.sent[0].header(DENY_REASON_HEADER), Some(&b"no_mtls"[..]));

    let mut none = AuthzFilter::default();
    assert!(!none.configure(&mut TestHost::default(), None));
    let mut h = request("order-service", "POST", None);
    assert_eq!(none.on_request_headers(&mut h), Action::Pause);
    assert_eq!(
        h.sent[0].header(DENY_REASON_HEADER),
        Some(&b"config_invalid"[..])
    );
    // A bad configuration replaces a good one: nothing is admitted after it.
    let mut f = configured(Mode::Enforce);
    assert!(!f.configure(&mut TestHost::default(), Some(b"{\"workload\": 1}")));
    let mut h = request("order-service", "POST", None);
    assert_eq!(f.on_request_headers(&mut h), Action::Pause);
}

#[test]
fn a_sidecar_of_another_workload_denies_with_wrong_workload() {
    let mut f = AuthzFilter::default();
    let mut node = TestHost::default();
    for (key, value) in [
        ("WORKLOAD_NAME", "order-service"),
        ("NAMESPACE", NS),
        ("SERVICE_ACCOUNT", "order-service"),
    ] {
        node.properties.insert(
            format!("xds\0node\0metadata\0{key}").into_bytes(),
            value.as_bytes().to_vec(),
        );
    }
    assert!(f.configure(&mut node, Some(&authz_config(Mode::Enforce))));
    let mut h = request("order-service", "POST", None);
    assert_eq!(f.on_request_headers(&mut h), Action::Pause);
    assert_eq!(
        h.sent[0].header(DENY_REASON_HEADER),
        Some(&b"wrong_workload"[..])
    );
}

#[test]
fn a_refused_reply_resets_the_stream_and_a_refused_reset_still_pauses() {
    let mut f = configured(Mode::Enforce);
    let mut h = request("user-service", "POST", None);
    h.refuse_reply = true;
    assert_eq!(f.on_request_headers(&mut h), Action::Pause);
    assert_eq!(h.resets, 1);
    h.refuse_reset = true;
    assert_eq!(f.on_request_headers(&mut h), Action::Pause);
    assert_eq!(h.resets, 1);
}

#[test]
fn refused_metrics_are_not_asked_for_again_and_change_no_decision() {
    let mut f = configured(Mode::Enforce);
    let mut h = request("order-service", "POST", None);
    h.refuse_metrics = true;
    assert_eq!(f.on_request_headers(&mut h), Action::Continue);
    h.refuse_metrics = false;
    assert_eq!(f.on_request_headers(&mut h), Action::Continue);
    assert!(h.defined.is_empty(), "{:?}", h.defined);
}

fn metrics_filter() -> RequestMetrics {
    let mesh = Mesh::reference(NS).unwrap();
    let cfg = mesh
        .metrics_config("order-service", LogLevel::Info)
        .unwrap()
        .to_json();
    let mut m = RequestMetrics::default();
    assert!(m.configure(Some(cfg.as_bytes())));
    m
}

fn ended(caller: Option<&str>, code: Option<i64>, content_type: Option<&str>) -> TestHost {
    let mut h = request(caller.unwrap_or("user-service"), "GET", content_type);
    if caller.is_none() {
        h.properties.remove(PROP_PEER_URI_SAN);
    }
    if let Some(code) = code {
        h.properties
            .insert(PROP_RESPONSE_CODE.to_vec(), code.to_le_bytes().to_vec());
    }
    h.properties.insert(
        PROP_REQUEST_DURATION.to_vec(),
        7_500_000_i64.to_le_bytes().to_vec(),
    );
    h
}

#[test]
fn requests_are_counted_by_source_method_and_class_and_timed() {
    let mut m = metrics_filter();
    let mut h = ended(Some("user-service"), Some(201), None);
    m.on_log(&mut h);
    m.on_log(&mut h);
    let counted =
        meshguard_mesh::metrics::requests_total("user-service", "order-service", "GET", "2xx");
    assert_eq!(h.counter(&counted), 2);
    let timed = meshguard_mesh::metrics::request_duration("user-service", "order-service", "2xx");
    let (_, id) = h.defined[&timed];
    assert_eq!(h.samples[&id], [7, 7], "milliseconds");

    // No peer identity: `none`; an identity the mesh does not know: `unknown`.
    let mut h = ended(None, Some(403), None);
    m.on_log(&mut h);
    let none = meshguard_mesh::metrics::requests_total("none", "order-service", "GET", "4xx");
    assert_eq!(h.counter(&none), 1);
    let mut h = ended(Some("intruder"), None, None);
    h.response = vec![(":status".into(), "503".into())];
    m.on_log(&mut h);
    let unknown = meshguard_mesh::metrics::requests_total("unknown", "order-service", "GET", "5xx");
    assert_eq!(h.counter(&unknown), 1);
}

#[test]
fn grpc_is_classed_by_its_status_from_headers_or_trailers() {
    let mut m = metrics_filter();
    let class = |h: &TestHost, class: &str| {
        let name =
            meshguard_mesh::metrics::requests_total("user-service", "order-service", "GET", class);
        h.counter(&name)
    };
    let mut h = ended(Some("user-service"), Some(200), Some("application/grpc"));
    h.response = vec![("grpc-status".into(), "7".into())];
    m.on_log(&mut h);
    assert_eq!(class(&h, "4xx"), 1, "PERMISSION_DENIED is 403");
    let mut h = ended(Some("user-service"), Some(200), Some("application/grpc"));
    h.trailers = vec![("grpc-status".into(), "14".into())];
    m.on_log(&mut h);
    assert_eq!(class(&h, "5xx"), 1, "UNAVAILABLE is 503");
    let mut h = ended(Some("user-service"), Some(200), Some("application/grpc"));
    m.on_log(&mut h);
    assert_eq!(class(&h, "2xx"), 1, "no grpc-status: the HTTP status");
}

#[test]
fn classes_and_series_keys() {
    for (status, class) in [
        (Some(101), "1xx"),
        (Some(204), "2xx"),
        (Some(308), "3xx"),
        (Some(404), "4xx"),
        (Some(599), "5xx"),
        (Some(600), "other"),
        (None, "none"),
    ] {
        assert_eq!(CLASSES[class_index(status)], class, "{status:?}");
    }
    let mut seen = std::collections::BTreeSet::new();
    for source in 0..4 {
        for method in 0..10 {
            for class in 0..7 {
                let (counter, duration) = series_keys(source, method, class);
                assert!(seen.insert(counter), "{source} {method} {class}");
                seen.insert(duration);
            }
        }
    }
}

#[test]
fn a_flood_of_series_ends_in_the_overflow_series() {
    let mut m = metrics_filter();
    let mut h = ended(Some("user-service"), Some(200), None);
    // Distinct methods and classes give distinct series of the one known caller; beyond the
    // cap everything lands in the overflow series.
    for code in 100..(100 + MAX_SERIES as i64 + 50) {
        h.properties.insert(
            PROP_RESPONSE_CODE.to_vec(),
            (code % 700).to_le_bytes().to_vec(),
        );
        for method in [
            "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "X",
        ] {
            h.request[0].1 = method.into();
            m.on_log(&mut h);
        }
    }
    assert!(h.defined.len() <= MAX_SERIES + 2, "{}", h.defined.len());
    assert!(!m.configure(None));
    m.on_log(&mut h); // unconfigured: measures nothing, and does not fail
}
