//! Stand-ins for what a real cluster has and this one cannot run: nodes (a GPU node pool and a
//! CPU node, as Node objects with their labels, taints and capacity) and the metrics API's
//! registration. They let `meshctl`'s preflight see a cluster shaped like the one it targets.
//! Nothing runs on these nodes; no metrics are served.

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;

use crate::error::{Error, Result};
use crate::TestCluster;

/// Field manager of the simulated objects.
pub const SIMULATE_MANAGER: &str = "meshguard-testcluster-simulate";
/// Name of the simulated GPU node.
pub const GPU_NODE: &str = "gpu-node-1";
/// Name of the simulated CPU node.
pub const CPU_NODE: &str = "cpu-node-1";
/// Name of the metrics API's APIService.
pub const METRICS_APISERVICE: &str = "v1beta1.metrics.k8s.io";

/// A node as a GKE node pool has it: a CPU node, or a GPU node (labels
/// `gpu=true` and `cloud.google.com/gke-accelerator`, taint
/// `nvidia.com/gpu=present:NoSchedule`, one allocatable `nvidia.com/gpu`).
#[derive(Debug, Clone)]
pub(crate) struct NodeShape {
    pub(crate) name: String,
    pub(crate) gpu: bool,
    pub(crate) cpus: u32,
    /// The node pool's name (`cloud.google.com/gke-nodepool`), if any.
    pub(crate) pool: Option<String>,
    /// Extra annotations (kwok's and metrics-server's).
    pub(crate) annotations: serde_json::Map<String, serde_json::Value>,
}

impl NodeShape {
    pub(crate) fn new(name: &str, gpu: bool, cpus: u32) -> Self {
        Self {
            name: name.to_owned(),
            gpu,
            cpus,
            pool: None,
            annotations: serde_json::Map::new(),
        }
    }
}

/// Creates (or updates) the Node with its labels, taints and capacity, by
/// server-side apply.
pub(crate) async fn apply_node(client: &kube::Client, shape: &NodeShape) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let pp = PatchParams::apply(SIMULATE_MANAGER).force();
    let name = shape.name.as_str();
    let mut labels = json!({
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
    });
    if let Some(pool) = &shape.pool {
        labels["cloud.google.com/gke-nodepool"] = json!(pool);
    }
    let mut capacity = json!({"cpu": shape.cpus.to_string(), "memory": "32Gi", "pods": "110"});
    let mut taints = json!([]);
    if shape.gpu {
        labels["gpu"] = json!("true");
        labels["cloud.google.com/gke-accelerator"] = json!("nvidia-tesla-t4");
        capacity["nvidia.com/gpu"] = json!("1");
        taints = json!([{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]);
    }
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": shape.annotations},
        "spec": {"taints": taints},
    });
    nodes
        .patch(name, &pp, &Patch::Apply(&node))
        .await
        .map_err(|e| Error::kube(format!("creating Node {name}"), e))?;
    let status = json!({
        "apiVersion": "v1", "kind": "Node",
        "status": {"capacity": capacity, "allocatable": capacity},
    });
    nodes
        .patch_status(name, &pp, &Patch::Apply(&status))
        .await
        .map_err(|e| Error::kube(format!("setting the capacity of Node {name}"), e))?;
    Ok(())
}

impl TestCluster {
    /// Registers a GPU node as a GKE GPU node pool has it (labels `gpu=true` as in the original write-up and
    /// `cloud.google.com/gke-accelerator`, taint `nvidia.com/gpu=present:NoSchedule`, one
    /// allocatable `nvidia.com/gpu`) and a plain CPU node.
    pub async fn simulate_nodes(&self) -> Result<()> {
        let client = self.client().await?;
        for (name, gpu) in [(GPU_NODE, true), (CPU_NODE, false)] {
            apply_node(&client, &NodeShape::new(name, gpu, 4)).await?;
        }
        Ok(())
    }

    /// Registers the metrics API (`v1beta1.metrics.k8s.io`) the way metrics-server does. The
    /// service behind it does not exist, so the APIService never becomes Available.
    pub async fn simulate_metrics_api(&self) -> Result<()> {
        let gvk = GroupVersionKind::gvk("apiregistration.k8s.io", "v1", "APIService");
        let api: Api<DynamicObject> =
            Api::all_with(self.client().await?, &ApiResource::from_gvk(&gvk));
        let object = json!({
            "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": METRICS_APISERVICE},
            "spec": {
                "group": "metrics.k8s.io", "version": "v1beta1",
                "service": {"namespace": "kube-system", "name": "metrics-server", "port": 443},
                "insecureSkipTLSVerify": true,
                "groupPriorityMinimum": 100, "versionPriority": 100,
            },
        });
        api.patch(
            METRICS_APISERVICE,
            &PatchParams::apply(SIMULATE_MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await
        .map_err(|e| Error::kube(format!("creating APIService {METRICS_APISERVICE}"), e))?;
        Ok(())
    }
}
