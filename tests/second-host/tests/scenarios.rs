//! The shared scenarios through the compiled filters in the crates.io `proxy-wasm-host` 0.2.0.
//!
//! `MESHGUARD_FILTERS_DIR` names the folder of the `.wasm` files (`build_filters` in
//! scripts/common.sh builds them). The embedding follows Envoy where the ABI leaves a choice: the
//! node's metadata (`xds.node.metadata.<KEY>`) is readable from the root context, request
//! headers during `on_request_headers` and `on_log`, response headers during
//! `on_response_headers` and `on_log`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test assertions

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use meshguard_scenarios::{
    grpc_web_trailers, Expect, Peer, Request, Scenario, DENY_REASON_HEADER, RESPONSE_DETAILS,
    UPSTREAM_GRPC_STATUS,
};
use proxy_wasm_host::abi::v0_2_1::types::{
    Action, LogLevel, MapType, MetricType, Status, StreamType,
};
use proxy_wasm_host::abi::v0_2_1::{
    Access, Guest, Host, Invocation, LocalResponse, LogContext, LogSink, MetricId, PluginConfig,
    SharedServices, StreamState, VmServices,
};
use proxy_wasm_host::{Engine, HeaderMap, Limits, Module, VecHeaderMap};

/// Log lines, kept for failure messages.
#[derive(Default)]
struct Logs(Mutex<Vec<String>>);

impl LogSink for Logs {
    fn log(&self, _: LogContext<'_>, level: LogLevel, message: &[u8]) {
        if let Ok(mut l) = self.0.lock() {
            l.push(format!("{level:?} {}", String::from_utf8_lossy(message)));
        }
    }
}

/// Metrics by name; refuses every definition when `refuse` is set.
#[derive(Default)]
struct Metrics {
    refuse: bool,
    inner: Mutex<MetricTable>,
}

#[derive(Default)]
struct MetricTable {
    by_name: BTreeMap<Vec<u8>, u32>,
    values: HashMap<u32, (MetricType, u64, Vec<u8>)>,
}

impl SharedServices for Metrics {
    fn define_metric(
        &self,
        _: Invocation,
        _: &[u8],
        kind: MetricType,
        name: &[u8],
    ) -> Result<MetricId, Status> {
        if self.refuse {
            return Err(Status::InternalFailure);
        }
        let mut t = self.inner.lock().map_err(|_| Status::InternalFailure)?;
        let next = u32::try_from(t.by_name.len() + 1).map_err(|_| Status::InternalFailure)?;
        let id = *t.by_name.entry(name.to_vec()).or_insert(next);
        t.values.entry(id).or_insert((kind, 0, name.to_vec()));
        MetricId::try_from(id).map_err(|_| Status::InternalFailure)
    }

    fn record_metric(&self, _: Invocation, metric: MetricId, value: u64) -> Result<(), Status> {
        let mut t = self.inner.lock().map_err(|_| Status::InternalFailure)?;
        let v = t.values.get_mut(&metric.get()).ok_or(Status::NotFound)?;
        v.1 = match v.0 {
            MetricType::Histogram => v.1 + 1,
            _ => value,
        };
        Ok(())
    }

    fn increment_metric(&self, _: Invocation, metric: MetricId, delta: i64) -> Result<(), Status> {
        let mut t = self.inner.lock().map_err(|_| Status::InternalFailure)?;
        let v = t.values.get_mut(&metric.get()).ok_or(Status::NotFound)?;
        v.1 = v.1.wrapping_add_signed(delta);
        Ok(())
    }

    fn get_metric(&self, _: Invocation, metric: MetricId) -> Result<u64, Status> {
        let t = self.inner.lock().map_err(|_| Status::InternalFailure)?;
        t.values
            .get(&metric.get())
            .map(|v| v.1)
            .ok_or(Status::NotFound)
    }
}

impl Metrics {
    fn counter(&self, name: &str) -> Option<u64> {
        let t = self.inner.lock().ok()?;
        let id = t.by_name.get(name.as_bytes())?;
        t.values.get(id).map(|v| v.1)
    }
    fn series(&self) -> usize {
        self.inner
            .lock()
            .map(|t| t.by_name.len())
            .unwrap_or(usize::MAX)
    }
}

/// One stream (or the root, with no maps) as this embedding serves it.
#[derive(Default)]
struct Stream {
    properties: HashMap<Vec<Vec<u8>>, Vec<u8>>,
    request: VecHeaderMap,
    response: VecHeaderMap,
    response_live: bool,
    refuse_local_response: bool,
    local: Option<LocalResponse<'static>>,
    closed: bool,
}

fn key(path: &[&str]) -> Vec<Vec<u8>> {
    path.iter().map(|s| s.as_bytes().to_vec()).collect()
}

impl StreamState for Stream {
    fn header_map(
        &mut self,
        _: Invocation,
        _: Access,
        map: MapType,
    ) -> Result<&mut dyn HeaderMap, Status> {
        match map {
            MapType::HttpRequestHeaders => Ok(&mut self.request),
            MapType::HttpResponseHeaders if self.response_live => Ok(&mut self.response),
            _ => Err(Status::BadArgument),
        }
    }

    fn property(&mut self, _: Invocation, path: &[&[u8]], out: &mut Vec<u8>) -> Result<(), Status> {
        let path: Vec<Vec<u8>> = path.iter().map(|p| p.to_vec()).collect();
        let value = self.properties.get(&path).ok_or(Status::NotFound)?;
        out.extend_from_slice(value);
        Ok(())
    }

    fn send_local_response(
        &mut self,
        _: Invocation,
        response: LocalResponse<'_>,
    ) -> Result<(), Status> {
        if self.refuse_local_response {
            return Err(Status::InternalFailure);
        }
        self.local = Some(response.into_owned());
        Ok(())
    }

    fn close_stream(&mut self, _: Invocation, _: StreamType) -> Result<(), Status> {
        self.closed = true;
        Ok(())
    }

    fn continue_stream(&mut self, _: Invocation, _: StreamType) -> Result<(), Status> {
        Ok(())
    }
}

fn filters_dir() -> PathBuf {
    std::env::var_os("MESHGUARD_FILTERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/filters/wasm32-wasip1/wasm")
        })
}

struct Run {
    guest: Guest,
    root: proxy_wasm_host::abi::v0_2_1::ContextId,
    metrics: Arc<Metrics>,
    logs: Arc<Logs>,
}

fn start(host: &Host, module: &Module, s: &Scenario) -> (Run, bool) {
    let logs = Arc::new(Logs::default());
    let metrics = Arc::new(Metrics {
        refuse: s.quirks.refuse_metrics,
        ..Metrics::default()
    });
    let services = VmServices::new(logs.clone()).with_shared(metrics.clone());
    let mut guest = Guest::new(host, module, services, &Limits::default())
        .unwrap_or_else(|e| panic!("{}: instantiate: {e}", s.name));
    let mut root_state = Stream::default();
    if let Some(node) = &s.node {
        for (field, value) in node.fields() {
            root_state.properties.insert(
                key(&["xds", "node", "metadata", field]),
                value.as_bytes().to_vec(),
            );
        }
    }
    let plugin = PluginConfig::new()
        .with_name(s.filter.module())
        .with_root_id(s.filter.module())
        .with_configuration(s.config.clone());
    // By hand rather than `Guest::start`, which serves the root only `plugin_*` properties:
    // Envoy serves a root context the node's metadata (`xds.node.metadata.<KEY>`) too.
    let (answer, _) = guest.with(root_state, |scope| {
        let root = scope.on_context_create(None)?;
        let started = scope.on_vm_start(root)?;
        let configured = scope.on_configure(root, plugin)?;
        Ok::<_, proxy_wasm_host::abi::v0_2_1::GuestError>((root, started && configured))
    });
    let (root, configured) = answer.unwrap_or_else(|e| panic!("{}: start: {e}", s.name));
    (
        Run {
            guest,
            root,
            metrics,
            logs,
        },
        configured,
    )
}

/// What happened to one request.
struct Outcome {
    action: Action,
    local: Option<LocalResponse<'static>>,
    closed: bool,
    forwarded: bool,
}

fn request(run: &mut Run, s: &Scenario, r: &Request) -> Outcome {
    let mut st = Stream {
        refuse_local_response: s.quirks.refuse_local_response,
        ..Stream::default()
    };
    let mut upstream_grpc_status = None;
    st.request
        .add(b":method", r.method.as_bytes())
        .and_then(|()| st.request.add(b":path", r.path.as_bytes()))
        .and_then(|()| st.request.add(b":scheme", b"http"))
        .and_then(|()| st.request.add(b":authority", b"order-service:5000"))
        .unwrap();
    for (k, v) in &r.headers {
        if k == UPSTREAM_GRPC_STATUS {
            upstream_grpc_status = Some(v.clone());
        } else {
            st.request.add(k.as_bytes(), v).unwrap();
        }
    }
    match &r.peer {
        Peer::Id(id) => {
            st.properties.insert(key(&["connection", "mtls"]), vec![1]);
            st.properties.insert(
                key(&["connection", "uri_san_peer_certificate"]),
                id.as_bytes().to_vec(),
            );
        }
        Peer::Plaintext => {
            st.properties.insert(key(&["connection", "mtls"]), vec![0]);
        }
    }
    if let Some(local) = &r.local_identity {
        st.properties.insert(
            key(&["connection", "uri_san_local_certificate"]),
            local.as_bytes().to_vec(),
        );
    }
    let root = run.root;
    let upstream = r.upstream_status;
    let (answer, st) = run.guest.with(st, |scope| {
        let stream = scope.on_context_create(Some(root))?;
        let n = u32::try_from(scope.stream().request.len()).unwrap_or(0);
        let action = scope.on_request_headers(stream, n, true)?;
        let replied = scope.stream().local.is_some();
        let closed = scope.stream().closed;
        let forwarded = action == Action::Continue && !replied && !closed;
        // The response the client gets: the local reply, else the upstream's.
        let status = match &scope.stream().local {
            Some(l) if l.grpc_status.is_some() => 200,
            Some(l) => l.status_code,
            None => upstream,
        };
        if forwarded || replied {
            let st = scope.stream_mut();
            st.response_live = true;
            st.response
                .add(b":status", status.to_string().as_bytes())
                .ok();
            if let Some(g) = &upstream_grpc_status {
                st.response.add(b"grpc-status", g).ok();
            }
            st.properties.insert(
                key(&["response", "code"]),
                i64::from(status).to_le_bytes().to_vec(),
            );
            let n = u32::try_from(scope.stream().response.len()).unwrap_or(0);
            scope.on_response_headers(stream, n, true)?;
        }
        // Envoy's `request.duration`, which it serves once the request is complete (the
        // access-log phase): this host serves no stream properties of its own.
        scope.stream_mut().properties.insert(
            key(&["request", "duration"]),
            1_000_000i64.to_le_bytes().to_vec(),
        );
        // This host's order: done, then log, then delete (Envoy logs first).
        scope.on_done(stream)?;
        scope.on_log(stream)?;
        scope.on_delete(stream)?;
        Ok::<_, proxy_wasm_host::abi::v0_2_1::GuestError>((action, forwarded))
    });
    let (action, forwarded) = answer.unwrap_or_else(|e| {
        let logs = run.logs.0.lock().map(|l| l.join("\n")).unwrap_or_default();
        panic!("{}: the filter failed: {e}\n{logs}", s.name)
    });
    Outcome {
        action,
        local: st.local,
        closed: st.closed,
        forwarded,
    }
}

fn header<'a>(l: &'a LocalResponse<'_>, name: &str) -> Option<&'a str> {
    l.header(name.as_bytes())
        .and_then(|v| std::str::from_utf8(v).ok())
}

fn check(s: &Scenario, i: usize, r: &Request, out: &Outcome) {
    let at = format!("{} request {i}", s.name);
    let local = out.local.as_ref();
    match &r.expect {
        Expect::Forward => {
            assert!(local.is_none(), "{at}: denied");
            assert!(out.forwarded, "{at}: not forwarded ({:?})", out.action);
        }
        Expect::Reset => {
            assert!(!out.forwarded, "{at}: forwarded");
            assert!(out.closed, "{at}: not reset");
        }
        Expect::ForwardAs(_) | Expect::EnvoyReply(_) | Expect::EnvoyReplyGrpc(_) => {
            panic!("{at}: an expectation only Envoy has (Request::envoy), not a host's")
        }
        Expect::Deny(reason) | Expect::DenyGrpc(reason) | Expect::DenyGrpcWeb(reason, _) => {
            let l = local.unwrap_or_else(|| panic!("{at}: no local reply"));
            assert!(!out.forwarded, "{at}: forwarded");
            assert_eq!(out.action, Action::Pause, "{at}");
            assert_eq!(header(l, DENY_REASON_HEADER), Some(*reason), "{at}");
            assert_eq!(&*l.status_code_details, RESPONSE_DETAILS.as_bytes(), "{at}");
            match &r.expect {
                Expect::Deny(_) => {
                    assert_eq!(l.status_code, 403, "{at}");
                    assert_eq!(l.grpc_status, None, "{at}");
                    assert_eq!(header(l, "content-type"), Some("application/json"), "{at}");
                    let body = String::from_utf8_lossy(&l.body);
                    assert!(
                        body.contains(&format!(r#""reason":"{reason}""#)),
                        "{at}: {body}"
                    );
                }
                Expect::DenyGrpc(_) => {
                    assert_eq!(l.grpc_status, Some(7), "{at}");
                    assert_eq!(&*l.body, reason.as_bytes(), "{at}: grpc-message");
                }
                Expect::DenyGrpcWeb(_, ct) => {
                    assert_eq!(l.status_code, 200, "{at}");
                    assert_eq!(l.grpc_status, None, "{at}");
                    assert_eq!(header(l, "content-type"), Some(*ct), "{at}");
                    assert_eq!(header(l, "grpc-status"), Some("7"), "{at}");
                    let text = ct.starts_with("application/grpc-web-text");
                    assert_eq!(
                        grpc_web_trailers(&l.body, text).as_deref(),
                        Some(format!("grpc-status:7\r\ngrpc-message:{reason}\r\n").as_str()),
                        "{at}"
                    );
                }
                _ => {}
            }
        }
    }
}

#[test]
fn every_scenario_in_the_crates_io_host() {
    let engine = Engine::new().expect("engine");
    let host = Host::new(&engine).expect("host functions");
    let dir = filters_dir();
    let mut modules: HashMap<&str, Module> = HashMap::new();
    let all = meshguard_scenarios::all();
    assert!(all.len() >= 15, "{} scenarios", all.len());
    for s in &all {
        let name = s.filter.module();
        if !modules.contains_key(name) {
            let path = dir.join(format!("{name}.wasm"));
            let bytes = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{}: {e} (build the filters first)", path.display()));
            let module = Module::new(&engine, &bytes).expect("compile");
            modules.insert(name, module);
        }
        let module = &modules[name];
        let (mut run, configured) = start(&host, module, s);
        assert_eq!(configured, s.configures, "{}: on_configure", s.name);
        if !configured {
            // This host refuses every stream under a root whose `on_configure` said false, as
            // Envoy fails a plugin whose configuration is rejected (its failStrategy decides).
            let root = run.root;
            let (refused, _) = run.guest.with(Stream::default(), |scope| {
                scope.on_context_create(Some(root)).is_err()
            });
            assert!(refused, "{}: a stream under a rejected root", s.name);
            assert!(!run.guest.is_poisoned(), "{}: the guest trapped", s.name);
            continue;
        }
        for (i, r) in s.requests.iter().enumerate() {
            let out = request(&mut run, s, r);
            check(s, i, r, &out);
        }
        assert!(!run.guest.is_poisoned(), "{}: the guest trapped", s.name);
        for (name, value) in &s.counters {
            assert_eq!(
                run.metrics.counter(name),
                Some(*value),
                "{}: {name}",
                s.name
            );
        }
        if let Some(max) = s.max_series {
            let n = run.metrics.series();
            assert!(n <= max, "{}: {n} series, at most {max}", s.name);
        }
        let _: &dyn Any = &run.logs;
    }
}
