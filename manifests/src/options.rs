//! What a user can choose about an install, with defaults and validation.

use std::fmt;
use std::str::FromStr;

use meshguard_mesh::identity::validate_dns_label;
use meshguard_mesh::{LogLevel, Mode};

use crate::RenderError;

/// Prometheus of kube-prometheus-stack installed as release `monitoring` in namespace `monitoring`.
pub const DEFAULT_PROMETHEUS_ADDRESS: &str =
    "http://monitoring-kube-prometheus-prometheus.monitoring.svc.cluster.local:9090";
/// Namespace Prometheus runs in (allowed to scrape the sidecars).
pub const DEFAULT_MONITORING_NAMESPACE: &str = "monitoring";
/// Path of the services' readiness and liveness probes.
pub const DEFAULT_HEALTH_PATH: &str = "/healthz";
/// KEDA target for order-service's CPU, in cores per user-service replica.
///
/// The trigger's metric type is `AverageValue`, so KEDA asks for
/// `ceil(order-service cores / threshold)` user-service replicas. order-service requests 250m CPU
/// per pod and its HPA holds pods at 75 % of that, so its full range of 1..10 replicas spans about
/// 0.19..1.9 cores; 0.5 spreads that range over user-service's 1..4 replicas
/// (10 × 0.25 × 0.75 / 4 ≈ 0.47). The original write-up's `'1000'` against a summed counter meant nothing.
pub const DEFAULT_KEDA_CPU_THRESHOLD: &str = "0.5";
/// KEDA activation threshold for order-service's CPU, in cores. It only decides between 0 and 1
/// replicas, which matters only if `minReplicaCount` is ever lowered to 0: 0.1 cores is "order-service
/// is doing real work", above an idle service's background usage.
pub const DEFAULT_KEDA_CPU_ACTIVATION_THRESHOLD: &str = "0.1";

/// Where the cluster runs: decides the GPU node labels and taints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// Nodes labelled `gpu=true` (the original write-up's labels) and tainted `nvidia.com/gpu=present:NoSchedule`.
    #[default]
    Local,
    /// GKE GPU node pools: `cloud.google.com/gke-accelerator` label, `nvidia.com/gpu=present:NoSchedule` taint.
    Gke,
}

impl Profile {
    /// Every profile, for help texts.
    pub const ALL: [Profile; 2] = [Profile::Local, Profile::Gke];

    /// The name used on the command line (`local`, `gke`).
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Local => "local",
            Profile::Gke => "gke",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name is not a profile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown profile `{0}` (expected `local` or `gke`)")]
pub struct UnknownProfile(pub String);

impl FromStr for Profile {
    type Err = UnknownProfile;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Profile::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownProfile(s.to_owned()))
    }
}

/// Everything a user can choose about an install.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderOptions {
    /// Namespace of the install; must equal the mesh model's namespace.
    pub namespace: String,
    /// GPU node labels and taints.
    pub profile: Profile,
    /// URL of the authorization filter module (`oci://…`, `https://…` or `file://…`). The default
    /// points at `registry.invalid`, a placeholder `install` refuses: publish the module first.
    pub authz_module_url: String,
    /// URL of the request metrics filter module.
    pub metrics_module_url: String,
    /// SHA-256 (64 lowercase hex digits) of the authorization module: Istio refuses a module
    /// (for `oci://`, the image manifest) that does not match.
    pub authz_module_sha256: Option<String>,
    /// SHA-256 of the metrics module.
    pub metrics_module_sha256: Option<String>,
    /// Name of a `kubernetes.io/dockerconfigjson` Secret in the namespace that the sidecars use
    /// to pull `oci://` modules from a private registry.
    pub module_pull_secret: Option<String>,
    /// CIDRs the sidecars may reach to fetch the Wasm modules, on the ports of the module URLs
    /// (443 unless a URL names one). Narrow it to your registry's addresses; empty renders no
    /// such egress (right for `file://` modules or a registry inside the cluster's allowed paths).
    pub module_fetch_cidrs: Vec<String>,
    /// Prometheus the KEDA trigger queries.
    pub prometheus_address: String,
    /// Namespace Prometheus runs in: the only one allowed to scrape the sidecars' metrics ports.
    pub monitoring_namespace: String,
    /// Also render a Prometheus Operator `PodMonitor` scraping the sidecars' Envoy stats (needs
    /// the `podmonitors.monitoring.coreos.com` CRD, e.g. from kube-prometheus-stack).
    pub pod_monitor: bool,
    /// What the authorization filter does with a denied request.
    pub authz_mode: Mode,
    /// The filters' log level.
    pub log_level: LogLevel,
    /// HTTP path of the readiness and liveness probes.
    pub health_path: String,
    /// The Pod Security level the namespace enforces. `restricted` unless Istio runs without its
    /// CNI plugin, whose `istio-init` container only `privileged` admits (`meshctl install`
    /// detects it: `PodSecurity::for_istio`).
    pub pod_security: crate::PodSecurity,
    /// For test clusters only: the autoscalers scale down after 15 s of lower demand, all
    /// surplus pods at once, instead of after 5 minutes and at most half the pods a minute.
    pub fast_scale_down: bool,
}

impl RenderOptions {
    /// The defaults for an install into `namespace`.
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            profile: Profile::default(),
            authz_module_url: "oci://registry.invalid/meshguard/authz:0.1.0".to_owned(),
            metrics_module_url: "oci://registry.invalid/meshguard/metrics:0.1.0".to_owned(),
            authz_module_sha256: None,
            metrics_module_sha256: None,
            module_pull_secret: None,
            module_fetch_cidrs: vec!["0.0.0.0/0".to_owned()],
            prometheus_address: DEFAULT_PROMETHEUS_ADDRESS.to_owned(),
            monitoring_namespace: DEFAULT_MONITORING_NAMESPACE.to_owned(),
            pod_monitor: false,
            authz_mode: Mode::Enforce,
            log_level: LogLevel::Info,
            health_path: DEFAULT_HEALTH_PATH.to_owned(),
            pod_security: crate::PodSecurity::Restricted,
            fast_scale_down: false,
        }
    }

    /// Checks every field that ends up in an object; the error names the first one at fault.
    pub fn validate(&self) -> Result<(), RenderError> {
        validate_dns_label(&self.namespace)
            .map_err(|e| RenderError::option("namespace", e.to_string()))?;
        validate_dns_label(&self.monitoring_namespace)
            .map_err(|e| RenderError::option("monitoring_namespace", e.to_string()))?;
        module_url_port("authz_module_url", &self.authz_module_url)?;
        module_url_port("metrics_module_url", &self.metrics_module_url)?;
        for (field, sha) in [
            ("authz_module_sha256", &self.authz_module_sha256),
            ("metrics_module_sha256", &self.metrics_module_sha256),
        ] {
            if let Some(sha) = sha {
                let ok = sha.len() == 64
                    && sha
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                if !ok {
                    return Err(RenderError::option(
                        field,
                        "must be 64 lowercase hexadecimal digits",
                    ));
                }
            }
        }
        if let Some(secret) = &self.module_pull_secret {
            check_dns_subdomain("module_pull_secret", secret)?;
        }
        for cidr in &self.module_fetch_cidrs {
            check_cidr("module_fetch_cidrs", cidr)?;
        }
        let prom = &self.prometheus_address;
        if !(prom.starts_with("http://") || prom.starts_with("https://"))
            || prom.chars().any(char::is_whitespace)
        {
            return Err(RenderError::option(
                "prometheus_address",
                format!("`{prom}` is not an http:// or https:// URL"),
            ));
        }
        if !self.health_path.starts_with('/')
            || self
                .health_path
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(RenderError::option(
                "health_path",
                "must be an absolute path without whitespace",
            ));
        }
        Ok(())
    }

    /// The TCP ports the sidecars need to reach to fetch the modules (none for `file://`).
    pub fn module_fetch_ports(&self) -> Result<Vec<u16>, RenderError> {
        let mut ports = Vec::new();
        for (field, url) in [
            ("authz_module_url", &self.authz_module_url),
            ("metrics_module_url", &self.metrics_module_url),
        ] {
            if let Some(p) = module_url_port(field, url)? {
                if !ports.contains(&p) {
                    ports.push(p);
                }
            }
        }
        ports.sort_unstable();
        Ok(ports)
    }
}

/// An image reference: not empty, no whitespace or control characters.
pub(crate) fn check_image(image: &str) -> Result<(), String> {
    if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("`{image}` is not an image reference"));
    }
    Ok(())
}

/// The port a module URL is fetched from: `None` for `file://`, the URL's port if it names one,
/// else 443 for `oci://` and `https://`, 80 for `http://`.
fn module_url_port(field: &str, url: &str) -> Result<Option<u16>, RenderError> {
    let bad = |why: &str| RenderError::option(field, format!("`{url}`: {why}"));
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("contains whitespace"));
    }
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("expected oci://, https://, http:// or file://"))?;
    let default_port = match scheme {
        "file" => {
            return if rest.starts_with('/') {
                Ok(None)
            } else {
                Err(bad("file:// needs an absolute path"))
            };
        }
        "oci" | "https" => 443,
        "http" => 80,
        _ => return Err(bad("expected oci://, https://, http:// or file://")),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || rest.len() == authority.len() {
        return Err(bad("expected a host and a path"));
    }
    if authority.contains('@') {
        return Err(bad("credentials in the URL are not supported"));
    }
    // `[v6]:port` or `host:port`.
    let port = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => {
            if host.is_empty() {
                return Err(bad("empty host"));
            }
            port.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("invalid port"))?
        }
        _ => default_port,
    };
    Ok(Some(port))
}

fn check_dns_subdomain(field: &str, name: &str) -> Result<(), RenderError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|label| validate_dns_label(label).is_ok());
    if ok {
        Ok(())
    } else {
        Err(RenderError::option(
            field,
            format!("`{name}` is not a valid Kubernetes object name"),
        ))
    }
}

fn check_cidr(field: &str, cidr: &str) -> Result<(), RenderError> {
    let bad = || RenderError::option(field, format!("`{cidr}` is not an IPv4 or IPv6 CIDR"));
    let (addr, len) = cidr.split_once('/').ok_or_else(bad)?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    let max = match addr.parse::<std::net::IpAddr>().map_err(|_| bad())? {
        std::net::IpAddr::V4(_) => 32,
        std::net::IpAddr::V6(_) => 128,
    };
    if len > max {
        return Err(bad());
    }
    Ok(())
}

/// A plain decimal (`0.5`, `12`): what KEDA parses as a float, without exponents or `inf`.
pub(crate) fn check_decimal(value: &str, zero_ok: bool) -> Result<(), String> {
    let digits_ok = !value.is_empty()
        && value.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && value.bytes().filter(|b| *b == b'.').count() <= 1
        && !value.starts_with('.')
        && !value.ends_with('.');
    let parsed = value.parse::<f64>().ok().filter(|v| v.is_finite());
    match parsed {
        Some(v) if digits_ok && (v > 0.0 || (zero_ok && v == 0.0)) => Ok(()),
        _ => Err(format!(
            "`{value}` must be a {} decimal number like `0.5`",
            if zero_ok { "non-negative" } else { "positive" }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        RenderOptions::new("meshguard").validate().unwrap();
    }

    #[test]
    fn module_ports() {
        let p = |u: &str| module_url_port("f", u);
        assert_eq!(p("oci://r.example/a/b:1").unwrap(), Some(443));
        assert_eq!(p("oci://r.example:5000/a/b:1").unwrap(), Some(5000));
        assert_eq!(p("https://h.example/m.wasm").unwrap(), Some(443));
        assert_eq!(p("http://h.example:8080/m.wasm").unwrap(), Some(8080));
        assert_eq!(p("http://[::1]/m.wasm").unwrap(), Some(80));
        assert_eq!(p("http://[::1]:81/m.wasm").unwrap(), Some(81));
        assert_eq!(p("file:///var/lib/m.wasm").unwrap(), None);
        for bad in [
            "",
            "registry/a:1",
            "ftp://h/m",
            "oci://",
            "oci://host",
            "oci://host:0/a",
            "oci://host:x/a",
            "oci://u:p@host/a",
            "file://relative",
            "oci://h/a b",
        ] {
            assert!(p(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn decimals_and_cidrs() {
        assert!(check_decimal("0.5", false).is_ok());
        assert!(check_decimal("12", false).is_ok());
        assert!(check_decimal("0", true).is_ok());
        for bad in ["0", "-1", "1e3", "inf", "NaN", ".5", "5.", "1.2.3", ""] {
            assert!(check_decimal(bad, false).is_err(), "accepted {bad:?}");
        }
        assert!(check_cidr("f", "10.0.0.0/8").is_ok());
        assert!(check_cidr("f", "::/0").is_ok());
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/8", "10.0.0/8"] {
            assert!(check_cidr("f", bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn profiles_round_trip() {
        for p in Profile::ALL {
            assert_eq!(p.as_str().parse::<Profile>().unwrap(), p);
        }
        assert!("GKE".parse::<Profile>().is_err());
    }
}
