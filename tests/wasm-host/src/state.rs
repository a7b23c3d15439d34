//! The data the host functions operate on (the wasmtime `Store` data).

use std::collections::{BTreeMap, HashMap};

use wasmtime::{Memory, TypedFunc};

use crate::property::Properties;
use crate::types::{Headers, LocalResponse, LogEntry, LogLevel, MapType, MetricType, Status};

/// Where the host currently is, for the checks Envoy makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VmPhase {
    /// `_initialize` / `main` / `_start`: only restricted callbacks are allowed.
    Starting,
    /// Any later call.
    Running,
}

/// Which callback of a stream is running (drives map/buffer availability).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamPhase {
    Created,
    RequestHeaders,
    RequestBody,
    ResponseHeaders,
    ResponseBody,
    Log,
    Done,
}

/// Per-stream state, mirroring the pointers Envoy's `Context` keeps.
#[derive(Debug, Clone)]
pub(crate) struct StreamState {
    pub properties: Properties,
    /// Values set by the guest with `proxy_set_property` (Envoy keeps them in
    /// the stream's filter state under `wasm.<path>`).
    pub filter_state: HashMap<Vec<u8>, Vec<u8>>,
    pub phase: StreamPhase,
    pub request_headers: Option<Headers>,
    pub response_headers: Option<Headers>,
    /// Envoy's `request_headers_` is non-null: set by `decodeHeaders`, cleared
    /// when the filter returns `Continue` (or calls `proxy_continue_stream`).
    pub request_headers_live: bool,
    pub response_headers_live: bool,
    pub request_body: Vec<u8>,
    pub response_body: Vec<u8>,
    pub request_body_live: bool,
    pub response_body_live: bool,
    /// Access-log phase (`proxy_on_log`).
    pub log_phase: bool,
    pub local_response: Option<LocalResponse>,
    pub continue_request: bool,
    pub continue_response: bool,
    pub reset: bool,
    pub response_code: Option<u32>,
    pub response_code_details: Option<String>,
    /// The host's monotonic clock when the stream opened (Envoy's `StreamInfo` start time).
    pub started_monotonic_ns: u64,
}

impl StreamState {
    pub fn new(properties: Properties, started_monotonic_ns: u64) -> StreamState {
        StreamState {
            started_monotonic_ns,
            properties,
            filter_state: HashMap::new(),
            phase: StreamPhase::Created,
            request_headers: None,
            response_headers: None,
            request_headers_live: false,
            response_headers_live: false,
            request_body: Vec::new(),
            response_body: Vec::new(),
            request_body_live: false,
            response_body_live: false,
            log_phase: false,
            local_response: None,
            continue_request: false,
            continue_response: false,
            reset: false,
            response_code: None,
            response_code_details: None,
        }
    }

    /// Envoy `Context::getMap` (mutable access).
    pub fn map_mut(&mut self, map: MapType) -> Option<&mut Headers> {
        match map {
            MapType::RequestHeaders if self.request_headers_live => self.request_headers.as_mut(),
            MapType::ResponseHeaders if self.response_headers_live => {
                self.response_headers.as_mut()
            }
            _ => None,
        }
    }

    /// Envoy `Context::getConstMap` (read access; the access-log phase sees the
    /// final request and response headers).
    pub fn map(&self, map: MapType) -> Option<&Headers> {
        match map {
            MapType::RequestHeaders if self.log_phase || self.request_headers_live => {
                self.request_headers.as_ref()
            }
            MapType::ResponseHeaders if self.log_phase || self.response_headers_live => {
                self.response_headers.as_ref()
            }
            _ => None,
        }
    }
}

/// Metric storage keyed by name, as Envoy's stats scope is.
#[derive(Debug, Clone, Default)]
pub(crate) struct MetricStore {
    /// Envoy allocates a fresh id per `proxy_define_metric` call:
    /// `next_<type>_metric_id_ += 4`, starting at the type value, so the low
    /// two bits encode the type (counter 4, 8, ...; gauge 5, 9, ...; histogram 6, 10, ...).
    pub ids: HashMap<u32, (MetricType, String)>,
    pub next_id: [u32; 3],
    pub counters: BTreeMap<String, u64>,
    pub gauges: BTreeMap<String, u64>,
    pub histograms: BTreeMap<String, Vec<u64>>,
}

impl MetricStore {
    pub fn new() -> MetricStore {
        MetricStore {
            next_id: [0, 1, 2],
            ..MetricStore::default()
        }
    }

    pub fn define(&mut self, ty: MetricType, name: String) -> u32 {
        let slot = ty as usize;
        self.next_id[slot] = self.next_id[slot].wrapping_add(4);
        let id = self.next_id[slot];
        match ty {
            MetricType::Counter => {
                self.counters.entry(name.clone()).or_insert(0);
            }
            MetricType::Gauge => {
                self.gauges.entry(name.clone()).or_insert(0);
            }
            MetricType::Histogram => {
                self.histograms.entry(name.clone()).or_default();
            }
        }
        self.ids.insert(id, (ty, name));
        id
    }
}

/// Host-wide state: configuration, root context, streams, metrics, logs, clock.
pub(crate) struct HostState {
    pub memory: Option<Memory>,
    pub malloc: Option<TypedFunc<i32, i32>>,
    pub vm_phase: VmPhase,
    pub current_context: u32,
    pub effective_context: u32,
    pub root_id: u32,
    pub root_created: bool,
    pub root_pending_done: bool,
    pub root_done_called: bool,
    pub vm_config: Vec<u8>,
    pub plugin_config: Vec<u8>,
    /// Envoy only exposes the plugin configuration while the root context is
    /// created and configured (`temp_plugin_`).
    pub plugin_config_live: bool,
    pub root_properties: Properties,
    pub plugin_name: String,
    pub plugin_root_id: String,
    pub vm_id: String,
    pub streams: HashMap<u32, StreamState>,
    pub metrics: MetricStore,
    pub logs: Vec<LogEntry>,
    pub capture_logs: bool,
    pub echo_logs: bool,
    pub log_count: u64,
    pub last_critical: Option<String>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub log_level: LogLevel,
    pub realtime_ns: u64,
    pub monotonic_ns: u64,
    pub tick_period_ms: Option<u32>,
    pub unimplemented_calls: Vec<String>,
    pub rng_state: u64,
    /// Host functions that answer a status instead of working (`HostBuilder::refuse`).
    pub refused: Vec<(String, Status)>,
}

impl HostState {
    pub fn new() -> HostState {
        HostState {
            memory: None,
            malloc: None,
            vm_phase: VmPhase::Starting,
            current_context: 0,
            effective_context: 0,
            root_id: 1,
            root_created: false,
            root_pending_done: false,
            root_done_called: false,
            vm_config: Vec::new(),
            plugin_config: Vec::new(),
            plugin_config_live: false,
            root_properties: Properties::new(),
            plugin_name: String::new(),
            plugin_root_id: String::new(),
            vm_id: String::new(),
            streams: HashMap::new(),
            metrics: MetricStore::new(),
            logs: Vec::new(),
            capture_logs: true,
            echo_logs: false,
            log_count: 0,
            last_critical: None,
            stdout: Vec::new(),
            stderr: Vec::new(),
            log_level: LogLevel::Info,
            realtime_ns: crate::DEFAULT_TIME_NANOS,
            monotonic_ns: 1_000_000_000,
            tick_period_ms: None,
            unimplemented_calls: Vec::new(),
            rng_state: 0x9E37_79B9_7F4A_7C15,
            refused: Vec::new(),
        }
    }

    /// Envoy `contextOrEffectiveContext()`: the effective context if one was
    /// set with `proxy_set_effective_context` and still exists, else the
    /// context the host called into.
    pub fn context_id(&self) -> u32 {
        let eff = self.effective_context;
        if eff != 0 && (eff == self.root_id || self.streams.contains_key(&eff)) {
            eff
        } else {
            self.current_context
        }
    }

    pub fn stream(&self) -> Option<&StreamState> {
        self.streams.get(&self.context_id())
    }

    pub fn stream_mut(&mut self) -> Option<&mut StreamState> {
        let id = self.context_id();
        self.streams.get_mut(&id)
    }

    pub fn context_exists(&self, id: u32) -> bool {
        (id == self.root_id && self.root_created) || self.streams.contains_key(&id)
    }

    pub fn log(&mut self, level: LogLevel, message: String) {
        self.log_count += 1;
        if level == LogLevel::Critical {
            self.last_critical = Some(message.clone());
        }
        if self.echo_logs {
            eprintln!("[wasm {level:?} ctx={}] {message}", self.context_id());
        }
        if self.capture_logs {
            let context_id = self.context_id();
            self.logs.push(LogEntry {
                level,
                message,
                context_id,
            });
        }
    }

    /// Deterministic bytes for WASI `random_get` (splitmix64).
    pub fn fill_random(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            self.rng_state = self.rng_state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.rng_state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let bytes = z.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}
