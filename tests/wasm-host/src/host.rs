//! The host: loading, the root context, and the HTTP stream lifecycle.

use std::path::{Path, PathBuf};
use std::time::Duration;

use wasmtime::{Instance, Linker, Store, TypedFunc, WasmParams, WasmResults};

use crate::engine::{self, EngineKey};
use crate::error::{HostCallTrap, HostError};
use crate::hostcalls::{self, Defined};
use crate::property::Properties;
use crate::state::{HostState, StreamPhase, StreamState, VmPhase};
use crate::types::{Action, Headers, LocalResponse, LogEntry, LogLevel, Status};
use crate::wasi;

type HttpCallback = TypedFunc<(i32, i32, i32), i32>;

/// Exports the host calls into, looked up once (absent callbacks are skipped,
/// as Envoy does).
struct GuestFns {
    initialize: Option<TypedFunc<(), ()>>,
    main: Option<TypedFunc<(i32, i32), i32>>,
    start: Option<TypedFunc<(), ()>>,
    on_context_create: Option<TypedFunc<(i32, i32), ()>>,
    on_vm_start: Option<TypedFunc<(i32, i32), i32>>,
    on_configure: Option<TypedFunc<(i32, i32), i32>>,
    on_tick: Option<TypedFunc<i32, ()>>,
    on_request_headers: Option<HttpCallback>,
    on_request_body: Option<HttpCallback>,
    on_response_headers: Option<HttpCallback>,
    on_response_body: Option<HttpCallback>,
    on_log: Option<TypedFunc<i32, ()>>,
    on_done: Option<TypedFunc<i32, i32>>,
    on_delete: Option<TypedFunc<i32, ()>>,
}

fn typed<P: WasmParams, R: WasmResults>(
    instance: &Instance,
    store: &mut Store<HostState>,
    name: &str,
) -> Result<Option<TypedFunc<P, R>>, HostError> {
    match instance.get_func(&mut *store, name) {
        None => Ok(None),
        Some(f) => f
            .typed::<P, R>(&*store)
            .map(Some)
            .map_err(|e| HostError::BadExport {
                name: name.to_string(),
                message: format!("{e:#}"),
            }),
    }
}

enum Source {
    File(PathBuf),
    Bytes { name: String, bytes: Vec<u8> },
}

/// Configures and starts a [`Host`]. Created by [`Host::builder`] or
/// [`Host::builder_from_bytes`].
pub struct HostBuilder {
    source: Source,
    plugin_config: Vec<u8>,
    vm_config: Vec<u8>,
    root_properties: Properties,
    plugin_name: String,
    plugin_root_id: String,
    vm_id: String,
    log_level: LogLevel,
    time_nanos: u64,
    fuel: bool,
    capture_logs: bool,
    echo_logs: bool,
    refused: Vec<(String, Status)>,
}

impl HostBuilder {
    fn new(source: Source) -> HostBuilder {
        HostBuilder {
            source,
            plugin_config: Vec::new(),
            vm_config: Vec::new(),
            root_properties: Properties::new(),
            plugin_name: String::new(),
            plugin_root_id: String::new(),
            vm_id: String::new(),
            log_level: LogLevel::Info,
            time_nanos: crate::DEFAULT_TIME_NANOS,
            fuel: false,
            capture_logs: true,
            echo_logs: false,
            refused: Vec::new(),
        }
    }

    /// Plugin configuration (`PluginConfiguration` buffer, the size passed to
    /// `proxy_on_configure`). In Istio this is the `WasmPlugin` `pluginConfig`
    /// rendered as JSON.
    pub fn plugin_config(mut self, config: impl Into<Vec<u8>>) -> HostBuilder {
        self.plugin_config = config.into();
        self
    }

    /// VM configuration (`VmConfiguration` buffer, the size passed to `proxy_on_vm_start`).
    pub fn vm_config(mut self, config: impl Into<Vec<u8>>) -> HostBuilder {
        self.vm_config = config.into();
        self
    }

    /// Properties visible from the root context and, as a fallback, from every
    /// stream (e.g. `node.metadata...`).
    pub fn root_properties(mut self, properties: Properties) -> HostBuilder {
        self.root_properties = properties;
        self
    }

    /// Values of the `plugin_name`, `plugin_root_id` and `plugin_vm_id` properties.
    pub fn plugin_ids(mut self, name: &str, root_id: &str, vm_id: &str) -> HostBuilder {
        self.plugin_name = name.to_string();
        self.plugin_root_id = root_id.to_string();
        self.vm_id = vm_id.to_string();
        self
    }

    /// Level reported by `proxy_get_log_level` (default `Info`, Envoy's default).
    pub fn log_level(mut self, level: LogLevel) -> HostBuilder {
        self.log_level = level;
        self
    }

    /// Initial wall-clock time in nanoseconds since the epoch (default
    /// [`crate::DEFAULT_TIME_NANOS`]).
    pub fn time_nanos(mut self, nanos: u64) -> HostBuilder {
        self.time_nanos = nanos;
        self
    }

    /// Enables wasmtime fuel metering so [`Host::fuel_consumed`] counts guest
    /// work (about one unit per wasm instruction). Off by default: it slows
    /// the guest down and changes generated code.
    pub fn fuel(mut self, enabled: bool) -> HostBuilder {
        self.fuel = enabled;
        self
    }

    /// Whether log messages are stored for [`Host::logs`] (default true).
    /// Turn off for long benchmark runs; [`Host::log_count`] still counts them.
    pub fn capture_logs(mut self, capture: bool) -> HostBuilder {
        self.capture_logs = capture;
        self
    }

    /// Makes the host function `name` (`proxy_send_local_response`, `proxy_define_metric`, …)
    /// answer `status` instead of doing its work: a host that refuses, to test a filter's error
    /// handling. Only the functions documented in the README honour it.
    pub fn refuse(mut self, name: &str, status: Status) -> HostBuilder {
        self.refused.push((name.to_owned(), status));
        self
    }

    /// Also print every guest log line to stderr (default false).
    pub fn echo_logs(mut self, echo: bool) -> HostBuilder {
        self.echo_logs = echo;
        self
    }

    /// Compiles (cached per process), checks and instantiates the module, runs
    /// `_initialize` (+ `main`) or `_start`, creates the root context and calls
    /// `proxy_on_vm_start`. Call [`Host::configure`] next, as Envoy does.
    pub fn build(self) -> Result<Host, HostError> {
        let key = EngineKey { fuel: self.fuel };
        let module = match &self.source {
            Source::File(path) => engine::module_from_file(key, path)?,
            Source::Bytes { name, bytes } => engine::module_from_bytes(key, name, bytes)?,
        };
        engine::check_abi(&module)?;
        let wasm_engine = module.engine().clone();
        let mut linker: Linker<HostState> = Linker::new(&wasm_engine);
        let mut defined = Defined::new();
        let link_err = |e: wasmtime::Error| HostError::Instantiate(format!("{e:#}"));
        hostcalls::define(&mut linker, &mut defined).map_err(link_err)?;
        wasi::define(&mut linker, &mut defined).map_err(link_err)?;
        engine::link_stubs(&mut linker, &defined, &module)?;

        let mut state = HostState::new();
        state.vm_config = self.vm_config;
        state.plugin_config = self.plugin_config;
        state.root_properties = self.root_properties;
        state.plugin_name = self.plugin_name;
        state.plugin_root_id = self.plugin_root_id;
        state.vm_id = self.vm_id;
        state.log_level = self.log_level;
        state.realtime_ns = self.time_nanos;
        state.capture_logs = self.capture_logs;
        state.echo_logs = self.echo_logs;
        state.refused = self.refused;
        let mut store = Store::new(&wasm_engine, state);
        if self.fuel {
            store
                .set_fuel(u64::MAX)
                .map_err(|e| HostError::Instantiate(format!("{e:#}")))?;
        }
        let instance = linker.instantiate(&mut store, &module).map_err(|e| {
            match e.downcast_ref::<HostCallTrap>() {
                Some(t) => classify_host_trap(t, "<start function>"),
                None => HostError::Instantiate(format!("{e:#}")),
            }
        })?;

        let memory =
            instance
                .get_memory(&mut store, "memory")
                .ok_or_else(|| HostError::BadExport {
                    name: "memory".into(),
                    message: "the module must export its linear memory as `memory`".into(),
                })?;
        // Envoy prefers `malloc`, then `proxy_on_memory_allocate`.
        let malloc = match typed::<i32, i32>(&instance, &mut store, "malloc")? {
            Some(f) => f,
            None => typed::<i32, i32>(&instance, &mut store, "proxy_on_memory_allocate")?
                .ok_or_else(|| HostError::BadExport {
                    name: "proxy_on_memory_allocate".into(),
                    message: "the module exports neither malloc nor proxy_on_memory_allocate"
                        .into(),
                })?,
        };
        store.data_mut().memory = Some(memory);
        store.data_mut().malloc = Some(malloc);

        let initialize = typed(&instance, &mut store, "_initialize")?;
        let fns = GuestFns {
            main: if initialize.is_some() {
                typed(&instance, &mut store, "main")?
            } else {
                None
            },
            start: if initialize.is_none() {
                typed(&instance, &mut store, "_start")?
            } else {
                None
            },
            initialize,
            on_context_create: typed(&instance, &mut store, "proxy_on_context_create")?,
            on_vm_start: typed(&instance, &mut store, "proxy_on_vm_start")?,
            on_configure: typed(&instance, &mut store, "proxy_on_configure")?,
            on_tick: typed(&instance, &mut store, "proxy_on_tick")?,
            on_request_headers: typed(&instance, &mut store, "proxy_on_request_headers")?,
            on_request_body: typed(&instance, &mut store, "proxy_on_request_body")?,
            on_response_headers: typed(&instance, &mut store, "proxy_on_response_headers")?,
            on_response_body: typed(&instance, &mut store, "proxy_on_response_body")?,
            on_log: typed(&instance, &mut store, "proxy_on_log")?,
            on_done: typed(&instance, &mut store, "proxy_on_done")?,
            on_delete: typed(&instance, &mut store, "proxy_on_delete")?,
        };

        let mut host = Host {
            store,
            fns,
            next_context_id: 2,
            failed: None,
            fuel: self.fuel,
        };
        host.start_vm()?;
        Ok(host)
    }

    /// [`HostBuilder::build`] followed by [`Host::configure`]; a plugin that
    /// rejects its configuration yields [`HostError::ConfigureRejected`].
    pub fn build_configured(self) -> Result<Host, HostError> {
        let mut host = self.build()?;
        if host.configure()? {
            Ok(host)
        } else {
            Err(HostError::ConfigureRejected)
        }
    }
}

/// The trap reason followed by the wasm backtrace (without the host backtrace
/// `Debug` would add).
fn trap_message(e: &wasmtime::Error) -> String {
    let reason = match e.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => trap.to_string(),
        None => e.root_cause().to_string(),
    };
    match e.downcast_ref::<wasmtime::WasmBacktrace>() {
        Some(bt) if !bt.frames().is_empty() => format!("{reason}\n{bt}"),
        _ => reason,
    }
}

fn classify_host_trap(trap: &HostCallTrap, function: &str) -> HostError {
    match trap {
        HostCallTrap::Unimplemented(name) => HostError::UnimplementedHostCall {
            name: name.clone(),
            function: function.to_string(),
        },
        HostCallTrap::Restricted(name) => HostError::RestrictedHostCall {
            name: name.clone(),
            function: function.to_string(),
        },
        HostCallTrap::ProcExit(code) => HostError::ProcExit {
            code: *code,
            function: function.to_string(),
        },
    }
}

/// A phase of an HTTP stream the filter is called for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// `proxy_on_request_headers`.
    RequestHeaders,
    /// `proxy_on_request_body`.
    RequestBody,
    /// `proxy_on_response_headers` (also for local replies, which Envoy sends
    /// through the filter chain).
    ResponseHeaders,
    /// `proxy_on_response_body`.
    ResponseBody,
}

/// What the upstream answers in [`Host::http_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseSpec {
    /// `:status`.
    pub status: u32,
    /// Response headers (`:status` is added from `status` unless present).
    pub headers: Headers,
    /// Response body (empty: headers-only response).
    pub body: Vec<u8>,
    /// How far the host clock advances between the request and the response.
    pub latency: Duration,
}

impl Default for ResponseSpec {
    fn default() -> ResponseSpec {
        ResponseSpec::new(200)
    }
}

impl ResponseSpec {
    /// A response with this status, no headers and no body.
    pub fn new(status: u32) -> ResponseSpec {
        ResponseSpec {
            status,
            headers: Headers::new(),
            body: Vec::new(),
            latency: Duration::ZERO,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> ResponseSpec {
        self.headers.add(name, value);
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> ResponseSpec {
        self.body = body.into();
        self
    }

    /// Sets the upstream latency.
    pub fn latency(mut self, latency: Duration) -> ResponseSpec {
        self.latency = latency;
        self
    }
}

/// A downstream request for [`Host::http_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSpec {
    /// Request headers, pseudo-headers included.
    pub headers: Headers,
    /// Request body (empty: headers-only request).
    pub body: Vec<u8>,
    /// Stream properties (connection/peer attributes ...).
    pub properties: Properties,
    /// What the upstream answers if the request gets there.
    pub upstream_response: ResponseSpec,
}

impl RequestSpec {
    /// A request with the given method and path, `:scheme: http` and
    /// `:authority: example.com`; upstream answers 200.
    pub fn new(method: &str, path: &str) -> RequestSpec {
        RequestSpec {
            headers: Headers::from([
                (":method", method),
                (":path", path),
                (":scheme", "http"),
                (":authority", "example.com"),
            ]),
            body: Vec::new(),
            properties: Properties::new(),
            upstream_response: ResponseSpec::default(),
        }
    }

    /// `GET path`.
    pub fn get(path: &str) -> RequestSpec {
        RequestSpec::new("GET", path)
    }

    /// Adds a request header.
    pub fn header(mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> RequestSpec {
        self.headers.add(name, value);
        self
    }

    /// Sets the request body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> RequestSpec {
        self.body = body.into();
        self
    }

    /// Sets the stream properties.
    pub fn properties(mut self, properties: Properties) -> RequestSpec {
        self.properties = properties;
        self
    }

    /// Sets the upstream response.
    pub fn response(mut self, response: ResponseSpec) -> RequestSpec {
        self.upstream_response = response;
        self
    }
}

/// Everything observable about one finished HTTP stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpOutcome {
    /// The stream's context id.
    pub context_id: u32,
    /// Every filter callback made, in order, with what it returned.
    pub actions: Vec<(Phase, Action)>,
    /// The filter's `proxy_send_local_response`, if any.
    pub local_response: Option<LocalResponse>,
    /// Whether the request reached the upstream.
    pub forwarded_upstream: bool,
    /// The phase whose callback stopped iteration without a local response or
    /// `proxy_continue_stream`: the stream stalled there (in Envoy it would
    /// wait until a timeout or a client reset); the host then ends it.
    pub paused_in: Option<Phase>,
    /// The filter reset the stream with `proxy_close_stream`.
    pub reset: bool,
    /// Request headers as the filter left them (what the upstream received).
    pub request_headers: Headers,
    /// Request body as the filter left it.
    pub request_body: Vec<u8>,
    /// Response headers the client receives: the upstream's or the local
    /// reply's, after the filter's changes (empty if there was no response).
    pub response_headers: Headers,
    /// Response body the client receives.
    pub response_body: Vec<u8>,
    /// Properties the filter set with `proxy_set_property` on this stream.
    pub set_properties: Properties,
    /// What `proxy_on_done` returned.
    pub done: bool,
    /// Log messages emitted while the stream was open (all contexts).
    pub logs: Vec<LogEntry>,
}

impl HttpOutcome {
    /// The first action returned in `phase`.
    pub fn action(&self, phase: Phase) -> Option<Action> {
        self.actions
            .iter()
            .find(|(p, _)| *p == phase)
            .map(|(_, a)| *a)
    }

    /// The `:status` the client receives.
    pub fn status(&self) -> Option<u32> {
        self.response_headers
            .get_str(":status")
            .and_then(|s| s.parse().ok())
    }

    /// A response header the client receives, as text.
    pub fn response_header(&self, name: &str) -> Option<&str> {
        self.response_headers.get_str(name)
    }

    /// A request header the upstream receives, as text.
    pub fn request_header(&self, name: &str) -> Option<&str> {
        self.request_headers.get_str(name)
    }
}

/// Result of [`Host::run_requests`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSummary {
    /// Requests run.
    pub requests: usize,
    /// How many ended with a local response.
    pub local_responses: usize,
    /// Fuel used by the whole run (when fuel metering is on).
    pub fuel_consumed: Option<u64>,
}

/// A Proxy-Wasm VM with one plugin (root context), driven like Envoy drives it.
///
/// ```no_run
/// use proxy_wasm_host::{Host, Properties, RequestSpec};
/// # fn main() -> Result<(), proxy_wasm_host::HostError> {
/// let mut host = Host::builder("target/wasm32-wasip1/release/filter.wasm")
///     .plugin_config(r#"{"allow": ["spiffe://cluster.local/ns/shop/sa/frontend"]}"#)
///     .build()?;
/// assert!(host.configure()?);
/// let outcome = host.http_request(
///     &RequestSpec::get("/cart")
///         .properties(Properties::new().mtls_peer("spiffe://cluster.local/ns/shop/sa/frontend")),
/// )?;
/// assert_eq!(outcome.status(), Some(200));
/// # Ok(()) }
/// ```
pub struct Host {
    store: Store<HostState>,
    fns: GuestFns,
    next_context_id: u32,
    failed: Option<HostError>,
    fuel: bool,
}

impl Host {
    /// Starts configuring a host for the `.wasm` file at `path`.
    pub fn builder(path: impl AsRef<Path>) -> HostBuilder {
        HostBuilder::new(Source::File(path.as_ref().to_path_buf()))
    }

    /// Starts configuring a host for an in-memory module (`name` is used in errors).
    pub fn builder_from_bytes(name: &str, bytes: impl Into<Vec<u8>>) -> HostBuilder {
        HostBuilder::new(Source::Bytes {
            name: name.to_string(),
            bytes: bytes.into(),
        })
    }

    /// Calls a guest export with the host-side bookkeeping Envoy does around
    /// every call (current context set, effective context reset). A trap, or
    /// an unimplemented/forbidden host call, fails the VM for good.
    fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        func: &TypedFunc<P, R>,
        args: P,
        function: &'static str,
        context_id: u32,
    ) -> Result<R, HostError> {
        if let Some(failure) = &self.failed {
            return Err(HostError::VmFailed(Box::new(failure.clone())));
        }
        let st = self.store.data_mut();
        st.current_context = context_id;
        st.effective_context = 0;
        st.last_critical = None;
        let result = func.call(&mut self.store, args);
        let st = self.store.data_mut();
        st.effective_context = 0;
        match result {
            Ok(r) => Ok(r),
            Err(e) => {
                let err = match e.downcast_ref::<HostCallTrap>() {
                    Some(t) => classify_host_trap(t, function),
                    None => HostError::Trap {
                        function: function.to_string(),
                        message: trap_message(&e),
                        guest_panic: st.last_critical.take(),
                    },
                };
                self.failed = Some(err.clone());
                Err(err)
            }
        }
    }

    fn start_vm(&mut self) -> Result<(), HostError> {
        self.store.data_mut().vm_phase = VmPhase::Starting;
        if let Some(f) = self.fns.initialize.clone() {
            self.call(&f, (), "_initialize", 0)?;
            if let Some(main) = self.fns.main.clone() {
                self.call(&main, (0, 0), "main", 0)?;
            }
        } else if let Some(f) = self.fns.start.clone() {
            self.call(&f, (), "_start", 0)?;
        }
        self.store.data_mut().vm_phase = VmPhase::Running;

        // ContextBase::onStart: the plugin configuration is visible while the
        // root context is created.
        let root = self.root_context_id();
        self.store.data_mut().plugin_config_live = true;
        let created = match self.fns.on_context_create.clone() {
            Some(f) => self.call(&f, (root as i32, 0), "proxy_on_context_create", root),
            None => Ok(()),
        };
        self.store.data_mut().plugin_config_live = false;
        created?;
        self.store.data_mut().root_created = true;
        if let Some(f) = self.fns.on_vm_start.clone() {
            let size = self.store.data().vm_config.len() as i32;
            if self.call(&f, (root as i32, size), "proxy_on_vm_start", root)? == 0 {
                return Err(HostError::VmStartFailed);
            }
        }
        Ok(())
    }

    /// Calls `proxy_on_configure(root, plugin_config_size)` and returns its
    /// result (false = configuration rejected; Envoy then refuses the plugin).
    pub fn configure(&mut self) -> Result<bool, HostError> {
        let Some(f) = self.fns.on_configure.clone() else {
            return Ok(true);
        };
        let root = self.root_context_id();
        let size = self.store.data().plugin_config.len() as i32;
        self.store.data_mut().plugin_config_live = true;
        let result = self.call(&f, (root as i32, size), "proxy_on_configure", root);
        self.store.data_mut().plugin_config_live = false;
        Ok(result? != 0)
    }

    /// Replaces the plugin configuration and calls [`Host::configure`] again
    /// (what Envoy does on a configuration update that keeps the VM).
    pub fn configure_with(&mut self, config: impl Into<Vec<u8>>) -> Result<bool, HostError> {
        self.store.data_mut().plugin_config = config.into();
        self.configure()
    }

    /// Calls `proxy_on_tick(root)` once (the timer period the plugin asked for
    /// is in [`Host::tick_period`]).
    pub fn tick(&mut self) -> Result<(), HostError> {
        if let Some(f) = self.fns.on_tick.clone() {
            let root = self.root_context_id();
            self.call(&f, root as i32, "proxy_on_tick", root)?;
            self.finish_pending_done()?;
        }
        Ok(())
    }

    /// The period set with `proxy_set_tick_period_milliseconds`.
    pub fn tick_period(&self) -> Option<Duration> {
        self.store
            .data()
            .tick_period_ms
            .filter(|ms| *ms > 0)
            .map(|ms| Duration::from_millis(u64::from(ms)))
    }

    /// Plugin shutdown: `proxy_on_done(root)`; if it returns true,
    /// `proxy_on_delete(root)` and `Ok(true)`. If it returns false the root
    /// stays pending until the guest calls `proxy_done` (then the host calls
    /// `proxy_on_delete`), and this returns `Ok(false)`.
    pub fn shutdown(&mut self) -> Result<bool, HostError> {
        let root = self.root_context_id();
        let done = match self.fns.on_done.clone() {
            Some(f) => self.call(&f, root as i32, "proxy_on_done", root)? != 0,
            None => true,
        };
        if done {
            self.delete_root()?;
            return Ok(true);
        }
        self.store.data_mut().root_pending_done = true;
        Ok(false)
    }

    fn finish_pending_done(&mut self) -> Result<(), HostError> {
        let st = self.store.data();
        if st.root_pending_done && st.root_done_called {
            self.store.data_mut().root_pending_done = false;
            self.delete_root()?;
        }
        Ok(())
    }

    fn delete_root(&mut self) -> Result<(), HostError> {
        let root = self.root_context_id();
        if let Some(f) = self.fns.on_delete.clone() {
            self.call(&f, root as i32, "proxy_on_delete", root)?;
        }
        self.store.data_mut().root_created = false;
        Ok(())
    }

    /// The root context id (1, as Envoy allocates it).
    pub fn root_context_id(&self) -> u32 {
        self.store.data().root_id
    }

    /// Opens an HTTP stream for step-by-step driving. The context is created
    /// in the guest lazily, on the first callback (Envoy's `onCreate()`).
    pub fn new_stream(&mut self, properties: Properties) -> Stream<'_> {
        let id = self.next_context_id;
        self.next_context_id = self.next_context_id.wrapping_add(1).max(2);
        let started = self.store.data().monotonic_ns;
        self.store
            .data_mut()
            .streams
            .insert(id, StreamState::new(properties, started));
        let logs_before = self.store.data().logs.len();
        Stream {
            host: self,
            id,
            created: false,
            ended: false,
            request_started: false,
            request_eos: false,
            response_started: false,
            forwarded_upstream: false,
            paused_in: None,
            actions: Vec::new(),
            logs_before,
        }
    }

    /// Runs one request through the filter as Envoy would, with the upstream
    /// answering `spec.upstream_response`:
    /// `on_context_create`, `on_request_headers`, `on_request_body` (if any
    /// body), `on_response_headers`, `on_response_body` (if any body), then
    /// `on_log`, `on_done`, `on_delete`. A local response ends the request
    /// phase and is itself sent through `on_response_headers`/`_body`, as
    /// Envoy's `sendLocalReply` does.
    pub fn http_request(&mut self, spec: &RequestSpec) -> Result<HttpOutcome, HostError> {
        let mut stream = self.new_stream(spec.properties.clone());
        stream.send_request_headers(spec.headers.clone(), spec.body.is_empty())?;
        if !stream.ended() && !spec.body.is_empty() {
            stream.send_request_body(&spec.body, true)?;
        }
        if !stream.ended() {
            let resp = &spec.upstream_response;
            stream.host.advance_time(resp.latency);
            let mut headers = Headers::new();
            if !resp.headers.contains(":status") {
                headers.add(":status", resp.status.to_string());
            }
            for (k, v) in resp.headers.iter() {
                headers.add(k, v);
            }
            stream.send_response_headers(headers, resp.body.is_empty())?;
            if !stream.ended() && !resp.body.is_empty() {
                stream.send_response_body(&resp.body, true)?;
            }
        }
        stream.finish()
    }

    /// Runs `spec` `n` times, each as a new stream (new context id) on the
    /// same instance: for benchmarks and profiling.
    pub fn run_requests(&mut self, spec: &RequestSpec, n: usize) -> Result<RunSummary, HostError> {
        let fuel_before = self.fuel_consumed();
        let mut local_responses = 0;
        for _ in 0..n {
            let outcome = self.http_request(spec)?;
            if outcome.local_response.is_some() {
                local_responses += 1;
            }
        }
        let fuel_consumed = match (fuel_before, self.fuel_consumed()) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        Ok(RunSummary {
            requests: n,
            local_responses,
            fuel_consumed,
        })
    }

    /// Log messages captured so far (`proxy_log` and stdout/stderr).
    pub fn logs(&self) -> &[LogEntry] {
        &self.store.data().logs
    }

    /// Takes the captured log messages.
    pub fn take_logs(&mut self) -> Vec<LogEntry> {
        std::mem::take(&mut self.store.data_mut().logs)
    }

    /// Number of log messages emitted so far (counted even when not captured).
    pub fn log_count(&self) -> u64 {
        self.store.data().log_count
    }

    /// Everything the guest wrote to stdout.
    pub fn stdout(&self) -> &[u8] {
        &self.store.data().stdout
    }

    /// Everything the guest wrote to stderr.
    pub fn stderr(&self) -> &[u8] {
        &self.store.data().stderr
    }

    /// Current value of a counter, by the name the plugin defined.
    pub fn counter(&self, name: &str) -> Option<u64> {
        self.store.data().metrics.counters.get(name).copied()
    }

    /// Current value of a gauge (Envoy gauges are unsigned 64-bit; a
    /// decrement below zero wraps).
    pub fn gauge(&self, name: &str) -> Option<u64> {
        self.store.data().metrics.gauges.get(name).copied()
    }

    /// Every value recorded in a histogram, in order.
    pub fn histogram(&self, name: &str) -> Option<&[u64]> {
        self.store
            .data()
            .metrics
            .histograms
            .get(name)
            .map(Vec::as_slice)
    }

    /// Names of all defined metrics with their type.
    pub fn metric_names(&self) -> Vec<(crate::MetricType, String)> {
        let m = &self.store.data().metrics;
        let mut names: Vec<(crate::MetricType, String)> = m.ids.values().cloned().collect();
        names.sort();
        names.dedup();
        names
    }

    /// Host calls the guest made that this host does not implement, in order.
    pub fn unimplemented_calls(&self) -> &[String] {
        &self.store.data().unimplemented_calls
    }

    /// The error that failed the VM, if any (further calls return
    /// [`HostError::VmFailed`]).
    pub fn failure(&self) -> Option<&HostError> {
        self.failed.as_ref()
    }

    /// Fuel consumed since the host was built, when built with
    /// [`HostBuilder::fuel`]`(true)`; a stable proxy for executed wasm
    /// instructions.
    pub fn fuel_consumed(&self) -> Option<u64> {
        if !self.fuel {
            return None;
        }
        self.store.get_fuel().ok().map(|left| u64::MAX - left)
    }

    /// Current wall-clock time reported to the guest, in nanoseconds.
    pub fn time_nanos(&self) -> u64 {
        self.store.data().realtime_ns
    }

    /// Sets the wall-clock time reported to the guest.
    pub fn set_time_nanos(&mut self, nanos: u64) {
        self.store.data_mut().realtime_ns = nanos;
    }

    /// Advances both the wall clock and the monotonic clock.
    pub fn advance_time(&mut self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let st = self.store.data_mut();
        st.realtime_ns = st.realtime_ns.saturating_add(nanos);
        st.monotonic_ns = st.monotonic_ns.saturating_add(nanos);
    }

    /// Sets the level `proxy_get_log_level` reports.
    pub fn set_log_level(&mut self, level: LogLevel) {
        self.store.data_mut().log_level = level;
    }

    /// Root-level properties (visible from every context).
    pub fn root_properties_mut(&mut self) -> &mut Properties {
        &mut self.store.data_mut().root_properties
    }
}

/// One HTTP stream driven step by step. Obtained from [`Host::new_stream`];
/// end it with [`Stream::finish`] (which runs `on_log`, `on_done`, `on_delete`).
///
/// Each `send_*` method runs the corresponding callback and then what Envoy
/// does right after it: a local response sent from a request callback is
/// encoded through `on_response_headers`/`on_response_body`; one sent from a
/// response callback replaces the response directly.
pub struct Stream<'h> {
    host: &'h mut Host,
    id: u32,
    created: bool,
    ended: bool,
    request_started: bool,
    request_eos: bool,
    response_started: bool,
    forwarded_upstream: bool,
    paused_in: Option<Phase>,
    actions: Vec<(Phase, Action)>,
    logs_before: usize,
}

impl Stream<'_> {
    /// The stream's context id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// True once the stream cannot progress: local response sent, reset, or
    /// a callback stopped iteration.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Actions returned so far.
    pub fn actions(&self) -> &[(Phase, Action)] {
        &self.actions
    }

    /// The local response sent by the filter, if any.
    pub fn local_response(&self) -> Option<&LocalResponse> {
        self.state().and_then(|s| s.local_response.as_ref())
    }

    /// Request headers as they are now.
    pub fn request_headers(&self) -> Option<&Headers> {
        self.state().and_then(|s| s.request_headers.as_ref())
    }

    /// Response headers as they are now.
    pub fn response_headers(&self) -> Option<&Headers> {
        self.state().and_then(|s| s.response_headers.as_ref())
    }

    /// Stream properties (may be changed between callbacks).
    pub fn properties_mut(&mut self) -> Option<&mut Properties> {
        self.state_mut().map(|s| &mut s.properties)
    }

    /// Advances the host clock.
    pub fn advance_time(&mut self, by: Duration) {
        self.host.advance_time(by);
    }

    fn state(&self) -> Option<&StreamState> {
        self.host.store.data().streams.get(&self.id)
    }

    fn state_mut(&mut self) -> Option<&mut StreamState> {
        self.host.store.data_mut().streams.get_mut(&self.id)
    }

    fn st(&mut self) -> Result<&mut StreamState, HostError> {
        let id = self.id;
        self.state_mut()
            .ok_or_else(|| HostError::InvalidState(format!("stream {id} no longer exists")))
    }

    fn ensure_created(&mut self) -> Result<(), HostError> {
        if self.created {
            return Ok(());
        }
        self.created = true;
        if let Some(f) = self.host.fns.on_context_create.clone() {
            let root = self.host.root_context_id();
            self.host.call(
                &f,
                (self.id as i32, root as i32),
                "proxy_on_context_create",
                self.id,
            )?;
        }
        Ok(())
    }

    fn run(&mut self, phase: Phase, size: usize, end_of_stream: bool) -> Result<Action, HostError> {
        let (func, name) = match phase {
            Phase::RequestHeaders => (
                self.host.fns.on_request_headers.clone(),
                "proxy_on_request_headers",
            ),
            Phase::RequestBody => (
                self.host.fns.on_request_body.clone(),
                "proxy_on_request_body",
            ),
            Phase::ResponseHeaders => (
                self.host.fns.on_response_headers.clone(),
                "proxy_on_response_headers",
            ),
            Phase::ResponseBody => (
                self.host.fns.on_response_body.clone(),
                "proxy_on_response_body",
            ),
        };
        self.st()?.phase = match phase {
            Phase::RequestHeaders => StreamPhase::RequestHeaders,
            Phase::RequestBody => StreamPhase::RequestBody,
            Phase::ResponseHeaders => StreamPhase::ResponseHeaders,
            Phase::ResponseBody => StreamPhase::ResponseBody,
        };
        let raw = match func {
            Some(f) => self.host.call(
                &f,
                (self.id as i32, size as i32, i32::from(end_of_stream)),
                name,
                self.id,
            )?,
            None => 0,
        };
        let action = Action::from_raw(raw);
        self.actions.push((phase, action));
        Ok(action)
    }

    fn check_open(&self, what: &str) -> Result<(), HostError> {
        if self.ended {
            return Err(HostError::InvalidState(format!(
                "{what}: stream {} has already ended",
                self.id
            )));
        }
        Ok(())
    }

    /// Delivers request headers (`proxy_on_request_headers`).
    pub fn send_request_headers(
        &mut self,
        headers: Headers,
        end_of_stream: bool,
    ) -> Result<Action, HostError> {
        self.check_open("send_request_headers")?;
        if self.request_started {
            return Err(HostError::InvalidState(
                "request headers were already sent".into(),
            ));
        }
        self.request_started = true;
        self.request_eos = end_of_stream;
        self.ensure_created()?;
        let count = headers.len();
        let st = self.st()?;
        st.request_headers = Some(headers);
        st.request_headers_live = true;
        st.continue_request = false;
        let action = self.run(Phase::RequestHeaders, count, end_of_stream)?;
        self.after_request_phase(Phase::RequestHeaders, action)?;
        Ok(action)
    }

    /// Delivers the request body as one final chunk (`proxy_on_request_body`).
    pub fn send_request_body(
        &mut self,
        body: &[u8],
        end_of_stream: bool,
    ) -> Result<Action, HostError> {
        self.check_open("send_request_body")?;
        if !self.request_started || self.request_eos {
            return Err(HostError::InvalidState(
                "request body needs request headers sent without end_of_stream".into(),
            ));
        }
        self.request_eos = end_of_stream;
        let st = self.st()?;
        st.request_body = body.to_vec();
        st.request_body_live = true;
        st.continue_request = false;
        let action = self.run(Phase::RequestBody, body.len(), end_of_stream)?;
        self.after_request_phase(Phase::RequestBody, action)?;
        Ok(action)
    }

    fn after_request_phase(&mut self, phase: Phase, action: Action) -> Result<(), HostError> {
        let st = self.st()?;
        if st.local_response.is_some() {
            // Envoy overrides the filter's status (stopNextIteration) and sends
            // the local reply through the encoder filter chain, this filter included.
            return self.encode_local_reply();
        }
        if st.reset {
            self.ended = true;
            return Ok(());
        }
        if action == Action::Continue || st.continue_request {
            match phase {
                Phase::RequestHeaders => st.request_headers_live = false,
                _ => st.request_body_live = false,
            }
        } else {
            self.paused_in = Some(phase);
            self.ended = true;
        }
        Ok(())
    }

    /// Envoy `sendLocalReplyViaFilterChain` + `Utility::sendLocalReply`.
    fn encode_local_reply(&mut self) -> Result<(), HostError> {
        self.ended = true;
        let st = self.st()?;
        let Some(local) = st.local_response.clone() else {
            return Ok(());
        };
        let request = st.request_headers.clone().unwrap_or_default();
        let (headers, body) = local_reply(&local, &request);
        let headers_only = body.is_empty();
        let count = headers.len();
        st.response_code = headers.get_str(":status").and_then(|s| s.parse().ok());
        st.response_code_details = Some(local.details.clone());
        st.response_headers = Some(headers);
        st.response_headers_live = true;
        st.continue_response = false;
        let action = self.run(Phase::ResponseHeaders, count, headers_only)?;
        let st = self.st()?;
        if action == Action::Continue || st.continue_response {
            st.response_headers_live = false;
        }
        if !headers_only {
            st.response_body = body;
            st.response_body_live = true;
            let len = st.response_body.len();
            self.run(Phase::ResponseBody, len, true)?;
            self.st()?.response_body_live = false;
        }
        Ok(())
    }

    /// Delivers upstream response headers (`proxy_on_response_headers`);
    /// they must include `:status`.
    pub fn send_response_headers(
        &mut self,
        headers: Headers,
        end_of_stream: bool,
    ) -> Result<Action, HostError> {
        self.check_open("send_response_headers")?;
        if !self.request_started || self.response_started {
            return Err(HostError::InvalidState(
                "response headers need request headers first, and only once".into(),
            ));
        }
        let Some(status) = headers
            .get_str(":status")
            .and_then(|s| s.parse::<u32>().ok())
        else {
            return Err(HostError::InvalidState(
                "response headers need a numeric :status".into(),
            ));
        };
        self.response_started = true;
        self.forwarded_upstream = true;
        let count = headers.len();
        let st = self.st()?;
        st.response_headers = Some(headers);
        st.response_headers_live = true;
        st.response_code = Some(status);
        st.response_code_details = Some("via_upstream".into());
        st.continue_response = false;
        let action = self.run(Phase::ResponseHeaders, count, end_of_stream)?;
        self.after_response_phase(Phase::ResponseHeaders, action)?;
        Ok(action)
    }

    /// Delivers the upstream response body as one chunk (`proxy_on_response_body`).
    pub fn send_response_body(
        &mut self,
        body: &[u8],
        end_of_stream: bool,
    ) -> Result<Action, HostError> {
        self.check_open("send_response_body")?;
        if !self.response_started {
            return Err(HostError::InvalidState(
                "response body needs response headers first".into(),
            ));
        }
        let st = self.st()?;
        st.response_body = body.to_vec();
        st.response_body_live = true;
        st.continue_response = false;
        let action = self.run(Phase::ResponseBody, body.len(), end_of_stream)?;
        self.after_response_phase(Phase::ResponseBody, action)?;
        Ok(action)
    }

    fn after_response_phase(&mut self, phase: Phase, action: Action) -> Result<(), HostError> {
        let st = self.st()?;
        if let Some(local) = st.local_response.clone() {
            // Envoy `sendDirectLocalReply`: response headers exist but were not
            // encoded yet, so the local reply replaces them without going
            // through the filters again.
            let request = st.request_headers.clone().unwrap_or_default();
            let (headers, body) = local_reply(&local, &request);
            st.response_code = headers.get_str(":status").and_then(|s| s.parse().ok());
            st.response_code_details = Some(local.details.clone());
            st.response_headers = Some(headers);
            st.response_body = body;
            st.response_headers_live = false;
            st.response_body_live = false;
            self.ended = true;
            return Ok(());
        }
        if st.reset {
            self.ended = true;
            return Ok(());
        }
        if action == Action::Continue || st.continue_response {
            match phase {
                Phase::ResponseHeaders => st.response_headers_live = false,
                _ => st.response_body_live = false,
            }
        } else {
            self.paused_in = Some(phase);
            self.ended = true;
        }
        Ok(())
    }

    /// Ends the stream: `proxy_on_log` (access-log phase: final request and
    /// response headers readable), `proxy_on_done`, `proxy_on_delete`.
    pub fn finish(mut self) -> Result<HttpOutcome, HostError> {
        // Envoy's access logger creates the context if no callback did.
        self.ensure_created()?;
        let st = self.st()?;
        st.request_headers_live = false;
        st.response_headers_live = false;
        st.request_body_live = false;
        st.response_body_live = false;
        st.log_phase = true;
        st.phase = StreamPhase::Log;
        let id = self.id;
        if let Some(f) = self.host.fns.on_log.clone() {
            self.host.call(&f, id as i32, "proxy_on_log", id)?;
        }
        let st = self.st()?;
        st.log_phase = false;
        st.phase = StreamPhase::Done;
        let done = match self.host.fns.on_done.clone() {
            Some(f) => self.host.call(&f, id as i32, "proxy_on_done", id)? != 0,
            None => true,
        };
        if let Some(f) = self.host.fns.on_delete.clone() {
            self.host.call(&f, id as i32, "proxy_on_delete", id)?;
        }
        let state = self
            .host
            .store
            .data_mut()
            .streams
            .remove(&id)
            .ok_or_else(|| HostError::InvalidState(format!("stream {id} no longer exists")))?;
        let logs = self
            .host
            .store
            .data()
            .logs
            .get(self.logs_before..)
            .map(<[LogEntry]>::to_vec)
            .unwrap_or_default();
        let mut set_properties = Properties::new();
        for (k, v) in state.filter_state {
            set_properties.insert_raw(k, v);
        }
        Ok(HttpOutcome {
            context_id: id,
            actions: std::mem::take(&mut self.actions),
            local_response: state.local_response,
            forwarded_upstream: self.forwarded_upstream,
            paused_in: self.paused_in,
            reset: state.reset,
            request_headers: state.request_headers.unwrap_or_default(),
            request_body: state.request_body,
            response_headers: state.response_headers.unwrap_or_default(),
            response_body: state.response_body,
            set_properties,
            done,
            logs,
        })
    }
}

/// Builds the local reply Envoy sends (`Http::Utility::sendLocalReply`):
/// `:status`, the filter's extra headers, then `content-length` and
/// `content-type: text/plain` for a non-empty body; for gRPC requests a
/// trailers-only `200` with `grpc-status` (the filter's if in 0..=16, else
/// mapped from the HTTP status) and the body as a percent-encoded `grpc-message`.
fn local_reply(local: &LocalResponse, request: &Headers) -> (Headers, Vec<u8>) {
    let mut headers = Headers::new();
    headers.add(":status", local.status_code.to_string());
    for (k, v) in local.headers.iter() {
        headers.add(k, v);
    }
    let is_head = request.get(":method") == Some(b"HEAD");
    let is_grpc = request
        .get("content-type")
        .map(|ct| {
            // Envoy's Grpc::Common::hasGrpcContentType: no parameters (`;…`).
            ct == b"application/grpc" || ct.starts_with(b"application/grpc+")
        })
        .unwrap_or(false);
    if is_grpc {
        headers.set(":status", "200");
        headers.set("content-type", "application/grpc");
        if !headers.contains("grpc-status") {
            let status = if (0..=16).contains(&local.grpc_status) {
                local.grpc_status as u32
            } else {
                http_to_grpc_status(local.status_code)
            };
            headers.set("grpc-status", status.to_string());
        }
        if !local.body.is_empty() && !is_head {
            headers.set("grpc-message", percent_encode(&local.body));
        }
        headers.remove("content-length");
        return (headers, Vec::new());
    }
    if local.body.is_empty() {
        headers.remove("content-length");
        headers.remove("content-type");
    } else {
        headers.set("content-length", local.body.len().to_string());
        if !headers.contains("content-type") {
            headers.set("content-type", "text/plain");
        }
    }
    if is_head {
        return (headers, Vec::new());
    }
    (headers, local.body.clone())
}

/// Envoy `Grpc::Utility::httpToGrpcStatus`.
fn http_to_grpc_status(code: u32) -> u32 {
    match code {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// Envoy `Http::Utility::PercentEncoding::encode` for grpc-message.
fn percent_encode(body: &[u8]) -> String {
    let mut out = String::with_capacity(body.len());
    for &b in body {
        if !(b' '..b'~').contains(&b) || b == b'%' {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}
