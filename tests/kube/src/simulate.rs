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

impl TestCluster {
    /// Registers a GPU node as a GKE GPU node pool has it (labels `gpu=true` as in the seed and
    /// `cloud.google.com/gke-accelerator`, taint `nvidia.com/gpu=present:NoSchedule`, one
    /// allocatable `nvidia.com/gpu`) and a plain CPU node.
    pub async fn simulate_nodes(&self) -> Result<()> {
        let nodes: Api<Node> = Api::all(self.client().await?);
        let pp = PatchParams::apply(SIMULATE_MANAGER).force();
        for (name, gpu) in [(GPU_NODE, true), (CPU_NODE, false)] {
            let mut labels = json!({"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"});
            let mut capacity = json!({"cpu": "4", "memory": "16Gi", "pods": "110"});
            let mut taints = json!([]);
            if gpu {
                labels["gpu"] = json!("true");
                labels["cloud.google.com/gke-accelerator"] = json!("nvidia-tesla-t4");
                capacity["nvidia.com/gpu"] = json!("1");
                taints =
                    json!([{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]);
            }
            let node = json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": labels},
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
