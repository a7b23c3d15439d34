//! The inbound side of an Istio sidecar as Envoy configuration, built from what meshctl renders
//! the way Istio turns it into Envoy configuration. Istio's own code is the reference: for every
//! rendered workload, tests/istio_sidecar.rs checks the Wasm filters below against what istiod's
//! pilot and the agent generate (`meshguard-istio sidecar-ecds`, [`crate::istio`]), and a
//! [`Plugin`] can carry Istio's generated `TypedExtensionConfig` to be served as it is.
//!
//! - **WasmPlugin → Wasm filter** (istio.io/istio `pilot/pkg/config/kube/extensions/translate.go`
//!   and `pilot/pkg/model/extensions.go` `buildWasmConfig`): a WasmPlugin `<name>` in `<ns>`
//!   becomes the TrafficExtension `<name>~istio-translated-wasmplugin`; its `PluginConfig` is
//!   named `<ns>.<name>~istio-translated-wasmplugin` (the plugin name the filter sees), `root_id`
//!   is `pluginName`, the configuration is `pluginConfig` as JSON in a `StringValue` (absent when
//!   the WasmPlugin has none), the runtime is `envoy.wasm.runtime.v8` with no `vm_id`, and
//!   `failStrategy` maps FAIL_OPEN → FAIL_OPEN, FAIL_CLOSE → FAIL_CLOSED, FAIL_RELOAD →
//!   FAIL_RELOAD (unset stays unset, which Envoy reads as FAIL_CLOSED).
//! - **Delivery** (`pilot/pkg/networking/core/extension/extensionfilter.go`): the HTTP filter is
//!   named `extensions.istio.io/trafficextension/<ns>.<name>~istio-translated-wasmplugin` and
//!   carries only a `config_discovery` (ECDS) with `initial_fetch_timeout: 0s` (the listener waits
//!   for it) and the type URLs of the Wasm and RBAC filters. istiod serves it over ADS and the
//!   agent rewrites the module's remote URL to the local file it fetched
//!   (`pkg/wasm/convert.go`); here Envoy reads the same `TypedExtensionConfig` from a file
//!   (`path_config_source`, re-read when a file is moved into the watched folder), with the
//!   module's local path already in place.
//! - **Order** (`pilot/pkg/networking/core/extension/extensionfilter.go` `PopAppendHTTP`, called
//!   by the inbound HTTP chain builder): WasmPlugins in phase AUTHN, then AUTHZ, then STATS, then
//!   those without a phase, each phase ordered by `priority`, highest first; the router last.
//! - **Listener**: an mTLS listener that requires a client certificate from the mesh's CA (STRICT
//!   PeerAuthentication), ALPN `h2` and `http/1.1`, the HTTP connection manager with
//!   `normalize_path` (Istio's default path normalization, BASE), and a route to the application
//!   on loopback that speaks the downstream's protocol, as Istio's inbound clusters do.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use meshguard_mesh::NodeFacts;
use serde_json::{json, Value};

use crate::pki::Pair;
use crate::Error;

/// The inbound listener's name.
pub const LISTENER: &str = "virtualInbound";
/// The application's cluster, named as Istio names inbound clusters.
pub const APP_CLUSTER: &str = "inbound|5000||";
/// The Wasm HTTP filter's type URL.
pub const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
/// The RBAC HTTP filter's type URL (the agent's stand-in for a module it cannot fetch).
pub const RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
/// The suffix Istio gives the TrafficExtension it makes of a WasmPlugin.
pub const TRANSLATED_SUFFIX: &str = "~istio-translated-wasmplugin";
/// The prefix of the ECDS resource names of TrafficExtensions.
pub const RESOURCE_PREFIX: &str = "extensions.istio.io/trafficextension/";

/// Envoy's `failure_policy` for a Wasm plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// No `failStrategy`: left unset, which Envoy treats as FAIL_CLOSED.
    Unspecified,
    FailClosed,
    FailOpen,
    FailReload,
}

impl FailurePolicy {
    /// From a WasmPlugin's `failStrategy`, as `buildWasmConfig` maps it.
    pub fn from_fail_strategy(strategy: Option<&str>) -> Result<Self, Error> {
        match strategy {
            None => Ok(Self::Unspecified),
            Some("FAIL_CLOSE") => Ok(Self::FailClosed),
            Some("FAIL_OPEN") => Ok(Self::FailOpen),
            Some("FAIL_RELOAD") => Ok(Self::FailReload),
            Some(other) => Err(Error::Rendered(format!("unknown failStrategy `{other}`"))),
        }
    }

    fn envoy(self) -> Option<&'static str> {
        match self {
            Self::Unspecified => None,
            Self::FailClosed => Some("FAIL_CLOSED"),
            Self::FailOpen => Some("FAIL_OPEN"),
            Self::FailReload => Some("FAIL_RELOAD"),
        }
    }
}

/// A WasmPlugin phase, in the order Istio puts them on the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Authn,
    Authz,
    Stats,
    Unspecified,
}

/// One Wasm filter of the sidecar.
#[derive(Debug, Clone)]
pub struct Plugin {
    /// The WasmPlugin's namespace and name.
    pub namespace: String,
    pub name: String,
    /// `pluginName`: the root id.
    pub root_id: String,
    /// `pluginConfig` as JSON; `None` when the WasmPlugin has none.
    pub configuration: Option<String>,
    /// The module's local file (what the agent rewrites the URL to).
    pub module: PathBuf,
    pub failure_policy: FailurePolicy,
    pub phase: Phase,
    pub priority: i64,
    /// The `TypedExtensionConfig` Istio's own code generated for this plugin (see
    /// [`crate::istio::generated_filters`]); ECDS serves it instead of
    /// [`Plugin::extension_config`]'s translation when it is set.
    pub generated: Option<Value>,
}

impl Plugin {
    /// The name of the `PluginConfig`, which the filter sees as its plugin name.
    pub fn plugin_name(&self) -> String {
        format!("{}.{}{TRANSLATED_SUFFIX}", self.namespace, self.name)
    }

    /// The ECDS resource name, which is also the HTTP filter's name.
    pub fn resource_name(&self) -> String {
        format!("{RESOURCE_PREFIX}{}", self.plugin_name())
    }

    /// From a rendered WasmPlugin object (JSON), with the module at `module`.
    pub fn from_wasm_plugin(object: &Value, module: PathBuf) -> Result<Self, Error> {
        let meta = &object["metadata"];
        let spec = &object["spec"];
        let text = |v: &Value, what: &str| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| Error::Rendered(format!("WasmPlugin without {what}: {object}")))
        };
        let phase = match spec["phase"].as_str() {
            Some("AUTHN") => Phase::Authn,
            Some("AUTHZ") => Phase::Authz,
            Some("STATS") => Phase::Stats,
            None | Some("UNSPECIFIED_PHASE") => Phase::Unspecified,
            Some(other) => return Err(Error::Rendered(format!("unknown phase `{other}`"))),
        };
        let configuration = match &spec["pluginConfig"] {
            Value::Null => None,
            Value::Object(m) if m.is_empty() => None,
            v => Some(serde_json::to_string(v).map_err(|e| Error::Rendered(e.to_string()))?),
        };
        Ok(Self {
            namespace: text(&meta["namespace"], "metadata.namespace")?,
            name: text(&meta["name"], "metadata.name")?,
            root_id: spec["pluginName"].as_str().unwrap_or_default().to_owned(),
            configuration,
            module,
            failure_policy: FailurePolicy::from_fail_strategy(spec["failStrategy"].as_str())?,
            phase,
            priority: spec["priority"].as_i64().unwrap_or(0),
            generated: None,
        })
    }

    /// The `envoy.extensions.wasm.v3.PluginConfig` (`buildWasmConfig`, after the agent's rewrite
    /// of the module to a local file).
    pub fn plugin_config(&self) -> Value {
        let mut config = json!({
            "name": self.plugin_name(),
            "root_id": self.root_id,
            "vm_config": {
                "runtime": "envoy.wasm.runtime.v8",
                "code": {"local": {"filename": self.module}},
            },
        });
        if let Some(c) = &self.configuration {
            config["configuration"] = json!({
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": c,
            });
        }
        if let Some(p) = self.failure_policy.envoy() {
            config["failure_policy"] = json!(p);
        }
        config
    }

    /// The `TypedExtensionConfig` ECDS delivers: Istio's own when the plugin has it, else this
    /// module's translation.
    pub fn served_extension_config(&self) -> Value {
        self.generated
            .clone()
            .unwrap_or_else(|| self.extension_config())
    }

    /// The `TypedExtensionConfig` as this module translates the WasmPlugin (what
    /// tests/envoy/tests/istio_sidecar.rs checks against Istio's own).
    pub fn extension_config(&self) -> Value {
        json!({
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": self.resource_name(),
            "typed_config": {"@type": WASM_TYPE, "config": self.plugin_config()},
        })
    }
}

/// The WasmPlugins among `objects` that select `service`'s pods, in Istio's chain order.
pub fn wasm_plugins_for<'a>(objects: &'a [Value], service: &str) -> Vec<&'a Value> {
    let mut out: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "WasmPlugin")
        .filter(|o| o["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == service)
        .collect();
    out.sort_by_key(|o| {
        let phase = match o["spec"]["phase"].as_str() {
            Some("AUTHN") => Phase::Authn,
            Some("AUTHZ") => Phase::Authz,
            Some("STATS") => Phase::Stats,
            _ => Phase::Unspecified,
        };
        (
            phase,
            std::cmp::Reverse(o["spec"]["priority"].as_i64().unwrap_or(0)),
        )
    });
    out
}

/// The node Envoy is started with: Istio's node metadata keys with the facts given (`None`: a node
/// without metadata). For the whole node Istio's agent writes, see the Istio bootstrap tests.
pub fn node(facts: Option<&NodeFacts>) -> Value {
    let mut metadata = serde_json::Map::new();
    if let Some(f) = facts {
        for (key, value) in [
            (meshguard_mesh::node::WORKLOAD_NAME, &f.workload_name),
            (meshguard_mesh::node::NAMESPACE, &f.namespace),
            (meshguard_mesh::node::SERVICE_ACCOUNT, &f.service_account),
        ] {
            if let Some(v) = value {
                metadata.insert(key.to_owned(), json!(v));
            }
        }
    }
    let mut node =
        json!({"id": "sidecar~127.0.0.1~test.ns~ns.svc.cluster.local", "cluster": "test.ns"});
    if facts.is_some() {
        node["metadata"] = Value::Object(metadata);
    }
    node
}

/// A TLS filter chain: the server certificate presented to clients that ask for `server_name`
/// (SNI), or to every other TLS client when `None`.
#[derive(Debug, Clone)]
pub struct TlsChain {
    pub server_name: Option<String>,
    pub cert: Pair,
}

/// An inbound sidecar to start.
#[derive(Debug, Clone)]
pub struct Sidecar {
    /// Where the configuration, certificates and ECDS files go.
    pub dir: PathBuf,
    pub node: Value,
    /// The bootstrap's `stats_config` (Istio's, for the metrics tests).
    pub stats_config: Option<Value>,
    pub ca_pem: String,
    /// The TLS filter chains; the one without a server name is the default.
    pub chains: Vec<TlsChain>,
    /// Also accept plaintext (a PERMISSIVE chain), for tests of what the filters do without mTLS.
    pub plaintext: bool,
    pub plugins: Vec<Plugin>,
    /// The application.
    pub upstream: SocketAddr,
}

impl Sidecar {
    fn ecds_dir(&self) -> PathBuf {
        self.dir.join("ecds")
    }

    fn ecds_file(&self, index: usize) -> PathBuf {
        self.ecds_dir().join(format!("filter-{index}.json"))
    }

    /// Writes plugin `index`'s ECDS file as version `version`: written aside, then moved into
    /// the watched folder, so Envoy never reads a partial file.
    pub fn write_extension_config(
        &self,
        index: usize,
        plugin: &Plugin,
        version: u64,
    ) -> Result<(), Error> {
        let response = json!({
            "version_info": version.to_string(),
            "resources": [plugin.served_extension_config()],
        });
        let staging = self.dir.join("ecds-staging");
        std::fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        std::fs::create_dir_all(self.ecds_dir()).map_err(|e| Error::io(&self.ecds_dir(), e))?;
        let tmp = staging.join(format!("filter-{index}.json"));
        std::fs::write(&tmp, response.to_string()).map_err(|e| Error::io(&tmp, e))?;
        let dest = self.ecds_file(index);
        std::fs::rename(&tmp, &dest).map_err(|e| Error::io(&dest, e))?;
        Ok(())
    }

    /// Writes the certificates and ECDS files; returns the bootstrap.
    pub fn bootstrap(&self) -> Result<Value, Error> {
        let pki = self.dir.join("pki");
        std::fs::create_dir_all(&pki).map_err(|e| Error::io(&pki, e))?;
        let ca = pki.join("ca.pem");
        std::fs::write(&ca, &self.ca_pem).map_err(|e| Error::io(&ca, e))?;
        for (i, p) in self.plugins.iter().enumerate() {
            self.write_extension_config(i, p, 1)?;
        }
        let mut http_filters: Vec<Value> = self
            .plugins
            .iter()
            .enumerate()
            .map(|(i, p)| {
                json!({
                    "name": p.resource_name(),
                    "config_discovery": {
                        "config_source": {
                            "path_config_source": {
                                "path": self.ecds_file(i),
                                "watched_directory": {"path": self.ecds_dir()},
                            },
                            "resource_api_version": "V3",
                            "initial_fetch_timeout": "0s",
                        },
                        "type_urls": [WASM_TYPE, RBAC_TYPE],
                    },
                })
            })
            .collect();
        http_filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }));
        let hcm = json!({
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "inbound_0.0.0.0_5000",
                "codec_type": "AUTO",
                "normalize_path": true,
                "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
                "forward_client_cert_details": "APPEND_FORWARD",
                "set_current_client_cert_details": {"subject": true, "dns": true, "uri": true},
                "route_config": {
                    "name": "inbound|5000||",
                    "validate_clusters": false,
                    "virtual_hosts": [{
                        "name": "inbound|http|5000",
                        "domains": ["*"],
                        "routes": [{
                            "name": "default",
                            "match": {"prefix": "/"},
                            "route": {"cluster": APP_CLUSTER, "timeout": "0s"},
                        }],
                    }],
                },
                "http_filters": http_filters,
            },
        });
        let mut chains = Vec::new();
        for (i, chain) in self.chains.iter().enumerate() {
            let (cert, key) = chain.cert.write(&pki, &format!("server-{i}"))?;
            let mut matcher = json!({"transport_protocol": "tls"});
            if let Some(name) = &chain.server_name {
                matcher["server_names"] = json!([name]);
            }
            chains.push(json!({
                "name": format!("tls-{i}"),
                "filter_chain_match": matcher,
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                        "require_client_certificate": true,
                        "common_tls_context": {
                            "alpn_protocols": ["h2", "http/1.1"],
                            "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
                            "tls_certificates": [{
                                "certificate_chain": {"filename": cert},
                                "private_key": {"filename": key},
                            }],
                            "validation_context": {"trusted_ca": {"filename": ca}},
                        },
                    },
                },
                "filters": [hcm.clone()],
            }));
        }
        if self.plaintext {
            chains.push(json!({
                "name": "plaintext",
                "filter_chain_match": {"transport_protocol": "raw_buffer"},
                "filters": [hcm.clone()],
            }));
        }
        let mut bootstrap = json!({
            "node": self.node,
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": {
                "listeners": [{
                    "name": LISTENER,
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "listener_filters": [{
                        "name": "envoy.filters.listener.tls_inspector",
                        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"},
                    }],
                    "filter_chains": chains,
                }],
                "clusters": [{
                    "name": APP_CLUSTER,
                    "type": "STATIC",
                    "connect_timeout": "5s",
                    "load_assignment": {
                        "cluster_name": APP_CLUSTER,
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                            "address": self.upstream.ip().to_string(),
                            "port_value": self.upstream.port(),
                        }}}}]}],
                    },
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "use_downstream_protocol_config": {
                                "http_protocol_options": {},
                                "http2_protocol_options": {},
                            },
                        },
                    },
                }],
            },
        });
        if let Some(stats) = &self.stats_config {
            bootstrap["stats_config"] = stats.clone();
        }
        Ok(bootstrap)
    }
}

/// What `meshctl render` renders for the reference mesh in `namespace` with default options, as
/// JSON values.
pub fn rendered(namespace: &str) -> Result<Vec<Value>, Error> {
    let opts = meshguard_manifests::RenderOptions::new(namespace);
    meshguard_manifests::render(&meshguard_manifests::MeshSpec::reference(), &opts)
        .map_err(|e| Error::Rendered(e.to_string()))?
        .iter()
        .map(|o| serde_json::to_value(o).map_err(|e| Error::Rendered(e.to_string())))
        .collect()
}

/// A rendered WasmPlugin with its module from the build: `pluginName` `meshguard-authz` is
/// `meshguard_authz.wasm` in `MESHGUARD_FILTERS_DIR`.
pub fn rendered_plugin(object: &Value) -> Result<Plugin, Error> {
    let name = object["spec"]["pluginName"]
        .as_str()
        .ok_or_else(|| Error::Rendered(format!("WasmPlugin without pluginName: {object}")))?;
    Plugin::from_wasm_plugin(object, crate::module(&name.replace('-', "_"))?)
}

/// Each rendered WasmPlugin's module URL with the module from the build it stands for (see
/// [`rendered_plugin`]).
pub fn rendered_modules(objects: &[Value]) -> Result<Vec<(String, PathBuf)>, Error> {
    objects
        .iter()
        .filter(|o| o["kind"] == "WasmPlugin")
        .map(|o| {
            let url = o["spec"]["url"]
                .as_str()
                .ok_or_else(|| Error::Rendered(format!("WasmPlugin without url: {o}")))?;
            Ok((url.to_owned(), rendered_plugin(o)?.module))
        })
        .collect()
}

/// The rendered WasmPlugin `name` (e.g. `order-service-authz`).
pub fn wasm_plugin<'a>(objects: &'a [Value], name: &str) -> Result<&'a Value, Error> {
    objects
        .iter()
        .find(|o| o["kind"] == "WasmPlugin" && o["metadata"]["name"] == name)
        .ok_or_else(|| Error::Rendered(format!("no WasmPlugin `{name}`")))
}

/// The documents of a YAML stream of rendered objects, as JSON values.
pub fn objects_from_yaml(yaml: &str) -> Result<Vec<Value>, Error> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v = Value::deserialize(doc).map_err(|e| Error::Rendered(e.to_string()))?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// Reads a file into a string.
pub fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}
