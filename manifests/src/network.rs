//! NetworkPolicies: deny everything, then allow exactly what the mesh needs.
//!
//! Under Istio's sidecar mode, the mTLS connection between two sidecars goes to the callee
//! pod's *application* port (5000): the callee's iptables redirect it to its sidecar inside the
//! pod, after the NetworkPolicy has seen it. So the call-graph rules name the app port, and the
//! same rules hold whether or not a sidecar is present. Kubelet probes come from the node, which
//! NetworkPolicy always admits.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::DynamicObject;
use meshguard_mesh::Mesh;

use crate::object::{meta, typed};
use crate::{labels, RenderError, RenderOptions, NAME_KEY, SYSTEM_NAME};

/// Label every namespace carries with its own name (set by the API server).
const NAMESPACE_NAME_KEY: &str = "kubernetes.io/metadata.name";
/// istiod's port for xDS and certificate signing over mTLS: all a sidecar needs from it.
pub const ISTIOD_XDS_PORT: u16 = 15012;
/// The istio agent's port serving Envoy's and the app's merged Prometheus metrics.
pub const SIDECAR_MERGED_METRICS_PORT: u16 = 15020;
/// Envoy's own Prometheus endpoint in the sidecar.
pub const SIDECAR_ENVOY_METRICS_PORT: u16 = 15090;

const COMPONENT: &str = "network-policy";

fn selector(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..LabelSelector::default()
    }
}

fn pods_of(service: &str) -> LabelSelector {
    selector(&[(NAME_KEY, service)])
}

fn in_namespace(namespace: &str, pods: Option<LabelSelector>) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(selector(&[(NAMESPACE_NAME_KEY, namespace)])),
        pod_selector: pods,
        ..NetworkPolicyPeer::default()
    }
}

fn port(protocol: &str, number: u16) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some(protocol.to_owned()),
        port: Some(IntOrString::Int(i32::from(number))),
        ..NetworkPolicyPort::default()
    }
}

fn policy(
    name: &str,
    label_name: &str,
    opts: &RenderOptions,
    pod_selector: LabelSelector,
    ingress: Option<Vec<NetworkPolicyIngressRule>>,
    egress: Option<Vec<NetworkPolicyEgressRule>>,
) -> Result<DynamicObject, RenderError> {
    let mut types = Vec::new();
    if ingress.is_some() {
        types.push("Ingress".to_owned());
    }
    if egress.is_some() {
        types.push("Egress".to_owned());
    }
    typed(&NetworkPolicy {
        metadata: meta(
            name,
            Some(&opts.namespace),
            labels(&opts.namespace, label_name, COMPONENT),
        ),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pod_selector),
            policy_types: Some(types),
            ingress: ingress.filter(|r| !r.is_empty()),
            egress: egress.filter(|r| !r.is_empty()),
        }),
    })
}

/// Every NetworkPolicy, default deny first.
pub(crate) fn policies(
    mesh: &Mesh,
    opts: &RenderOptions,
) -> Result<Vec<DynamicObject>, RenderError> {
    let all = LabelSelector::default();
    let mut out = vec![
        // Both directions, every pod: anything not allowed below is dropped.
        policy(
            "default-deny",
            SYSTEM_NAME,
            opts,
            all.clone(),
            Some(vec![]),
            Some(vec![]),
        )?,
        // Name resolution (the sidecar resolves the module registry; apps resolve services).
        policy(
            "allow-dns-egress",
            SYSTEM_NAME,
            opts,
            all.clone(),
            None,
            Some(vec![NetworkPolicyEgressRule {
                to: Some(vec![in_namespace(
                    "kube-system",
                    Some(selector(&[("k8s-app", "kube-dns")])),
                )]),
                ports: Some(vec![port("UDP", 53), port("TCP", 53)]),
            }]),
        )?,
        // The sidecar's configuration (xDS) and certificates (CA) both come from istiod on 15012;
        // 15010 (plaintext xDS), 15014 (monitoring) and 15017 (webhooks) are not for sidecars.
        policy(
            "allow-istiod-egress",
            SYSTEM_NAME,
            opts,
            all.clone(),
            None,
            Some(vec![NetworkPolicyEgressRule {
                to: Some(vec![in_namespace(
                    "istio-system",
                    Some(selector(&[("app", "istiod")])),
                )]),
                ports: Some(vec![port("TCP", ISTIOD_XDS_PORT)]),
            }]),
        )?,
    ];
    // The istio agent inside each pod downloads the Wasm modules itself; without this the
    // fail-closed authorization filter never loads and the service refuses every request.
    let fetch_ports = opts.module_fetch_ports()?;
    if !opts.module_fetch_cidrs.is_empty() && !fetch_ports.is_empty() {
        out.push(policy(
            "allow-wasm-module-fetch",
            SYSTEM_NAME,
            opts,
            all.clone(),
            None,
            Some(vec![NetworkPolicyEgressRule {
                to: Some(
                    opts.module_fetch_cidrs
                        .iter()
                        .map(|cidr| NetworkPolicyPeer {
                            ip_block: Some(IPBlock {
                                cidr: cidr.clone(),
                                except: None,
                            }),
                            ..NetworkPolicyPeer::default()
                        })
                        .collect(),
                ),
                ports: Some(fetch_ports.iter().map(|p| port("TCP", *p)).collect()),
            }]),
        )?);
    }
    // Prometheus (and nothing else) may scrape the sidecars' metrics endpoints.
    out.push(policy(
        "allow-prometheus-scrape",
        SYSTEM_NAME,
        opts,
        all,
        Some(vec![NetworkPolicyIngressRule {
            from: Some(vec![in_namespace(&opts.monitoring_namespace, None)]),
            ports: Some(vec![
                port("TCP", SIDECAR_MERGED_METRICS_PORT),
                port("TCP", SIDECAR_ENVOY_METRICS_PORT),
            ]),
        }]),
        None,
    )?);
    // The call graph, in the call direction: the callee admits the caller, the caller may reach
    // the callee, each only on the callee's port.
    let mut seen = Vec::new();
    for rule in &mesh.calls {
        if seen.contains(&(&rule.from, &rule.to)) {
            continue;
        }
        seen.push((&rule.from, &rule.to));
        let callee = mesh.service(&rule.to)?;
        // A client's pods are selected by their name label in their own namespace; meshctl
        // writes the client's egress rule only where it installs, in the mesh's namespace.
        let elsewhere = mesh
            .client(&rule.from)
            .filter(|c| c.namespace != opts.namespace);
        let caller_pods = match elsewhere {
            Some(c) => in_namespace(&c.namespace, Some(pods_of(&c.name))),
            None => NetworkPolicyPeer {
                pod_selector: Some(pods_of(&rule.from)),
                ..NetworkPolicyPeer::default()
            },
        };
        out.push(policy(
            &format!("allow-{}-to-{}-ingress", rule.from, rule.to),
            &rule.to,
            opts,
            pods_of(&rule.to),
            Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![caller_pods]),
                ports: Some(vec![port("TCP", callee.port)]),
            }]),
            None,
        )?);
        if elsewhere.is_some() {
            continue;
        }
        out.push(policy(
            &format!("allow-{}-to-{}-egress", rule.from, rule.to),
            &rule.from,
            opts,
            pods_of(&rule.from),
            None,
            Some(vec![NetworkPolicyEgressRule {
                to: Some(vec![NetworkPolicyPeer {
                    pod_selector: Some(pods_of(&rule.to)),
                    ..NetworkPolicyPeer::default()
                }]),
                ports: Some(vec![port("TCP", callee.port)]),
            }]),
        )?);
    }
    Ok(out)
}
