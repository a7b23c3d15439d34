//! order-service's CPU HPA and user-service's KEDA ScaledObject.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};
use kube::api::DynamicObject;
use meshguard_mesh::metrics::request_rate_query;
use meshguard_mesh::model::{ORDER_SERVICE, USER_SERVICE};
use meshguard_mesh::Mesh;
use serde_json::{json, Value};

use crate::object::{custom, meta, typed};
use crate::{labels, RenderError, RenderOptions};

/// order-service's HPA: replicas and target from the original write-up.
pub const ORDER_MIN_REPLICAS: i32 = 1;
/// See [`ORDER_MIN_REPLICAS`].
pub const ORDER_MAX_REPLICAS: i32 = 10;
/// Average CPU utilization (% of requests) the HPA holds order-service at.
pub const ORDER_CPU_UTILIZATION: i32 = 75;
/// user-service's replica range under KEDA, from the original write-up.
pub const USER_MIN_REPLICAS: i32 = 1;
/// See [`USER_MIN_REPLICAS`].
pub const USER_MAX_REPLICAS: i32 = 4;

const AUTOSCALING: &str = "autoscaling";

fn has(mesh: &Mesh, name: &str) -> bool {
    mesh.services.iter().any(|s| s.name == name)
}

/// Whether an autoscaler owns the replica count of `service`'s Deployment.
pub(crate) fn is_autoscaled(mesh: &Mesh, service: &str) -> bool {
    match service {
        ORDER_SERVICE => has(mesh, ORDER_SERVICE),
        USER_SERVICE => has(mesh, USER_SERVICE) && has(mesh, ORDER_SERVICE),
        _ => false,
    }
}

/// The scale-down stabilization window of `RenderOptions::fast_scale_down`.
pub const FAST_SCALE_DOWN_WINDOW_SECONDS: i32 = 15;

fn policy(type_: &str, value: i32, period_seconds: i32) -> HPAScalingPolicy {
    HPAScalingPolicy {
        type_: type_.to_owned(),
        value,
        period_seconds,
    }
}

/// Scale up at once (no stabilization, double or +4 pods every 15 s, whichever is more), scale
/// down calmly (the highest recommendation of the last 5 minutes, at most half the pods a
/// minute): load spikes are met quickly and a short lull does not throw capacity away.
///
/// `fast_scale_down` (test clusters only) scales down after 15 s of lower demand, all surplus
/// pods at once: it lets a test watch a whole up-and-down cycle in a few minutes.
fn behavior(fast_scale_down: bool) -> HorizontalPodAutoscalerBehavior {
    if fast_scale_down {
        return HorizontalPodAutoscalerBehavior {
            scale_down: Some(HPAScalingRules {
                stabilization_window_seconds: Some(FAST_SCALE_DOWN_WINDOW_SECONDS),
                select_policy: Some("Max".into()),
                policies: Some(vec![policy("Percent", 100, 15)]),
                ..HPAScalingRules::default()
            }),
            ..behavior(false)
        };
    }
    HorizontalPodAutoscalerBehavior {
        scale_up: Some(HPAScalingRules {
            stabilization_window_seconds: Some(0),
            select_policy: Some("Max".into()),
            policies: Some(vec![policy("Percent", 100, 15), policy("Pods", 4, 15)]),
            ..HPAScalingRules::default()
        }),
        scale_down: Some(HPAScalingRules {
            stabilization_window_seconds: Some(300),
            select_policy: Some("Max".into()),
            policies: Some(vec![policy("Percent", 50, 60)]),
            ..HPAScalingRules::default()
        }),
    }
}

/// order-service scales on its own CPU: 75 % average utilization of its requests, 1..10 pods.
pub(crate) fn order_service_hpa(
    mesh: &Mesh,
    opts: &RenderOptions,
) -> Result<Option<DynamicObject>, RenderError> {
    if !has(mesh, ORDER_SERVICE) {
        return Ok(None);
    }
    typed(&HorizontalPodAutoscaler {
        metadata: meta(
            ORDER_SERVICE,
            Some(&opts.namespace),
            labels(&opts.namespace, ORDER_SERVICE, AUTOSCALING),
        ),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: ORDER_SERVICE.into(),
            },
            min_replicas: Some(ORDER_MIN_REPLICAS),
            max_replicas: ORDER_MAX_REPLICAS,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(ORDER_CPU_UTILIZATION),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            behavior: Some(behavior(opts.fast_scale_down)),
        }),
        ..HorizontalPodAutoscaler::default()
    })
    .map(Some)
}

/// PromQL for order-service's CPU usage in cores: the per-second rate of the cAdvisor counter
/// over its containers (not the pod's sandbox, not the pod-level aggregate without a container
/// label). The original write-up summed the counter itself, which only grows.
pub fn order_cpu_query(namespace: &str) -> String {
    format!(
        "sum(rate(container_cpu_usage_seconds_total{{namespace=\"{namespace}\",pod=~\"{ORDER_SERVICE}-.*\",container!=\"\",container!=\"POD\"}}[1m]))"
    )
}

/// user-service scales with order-service's load through KEDA: one replica per
/// `keda_cpu_threshold` cores that order-service uses (`AverageValue`: KEDA asks the HPA for
/// `ceil(value / threshold)` replicas), 1..4 replicas, and optionally on the request rate into
/// order-service that the metrics filter counts. No `metricName` (deprecated: KEDA names the
/// metric itself).
pub(crate) fn user_service_scaled_object(
    mesh: &Mesh,
    opts: &RenderOptions,
) -> Result<Option<DynamicObject>, RenderError> {
    if !is_autoscaled(mesh, USER_SERVICE) {
        return Ok(None);
    }
    let mut triggers = vec![json!({
        "type": "prometheus",
        "name": "order-service-cpu",
        "metricType": "AverageValue",
        "metadata": {
            "serverAddress": opts.prometheus_address,
            "query": order_cpu_query(&opts.namespace),
            "threshold": opts.keda_cpu_threshold,
            "activationThreshold": opts.keda_cpu_activation_threshold,
        },
    })];
    if let Some(threshold) = &opts.request_rate_threshold {
        triggers.push(json!({
            "type": "prometheus",
            "name": "order-service-request-rate",
            "metricType": "AverageValue",
            "metadata": {
                "serverAddress": opts.prometheus_address,
                "query": request_rate_query(&opts.namespace, ORDER_SERVICE),
                "threshold": threshold,
            },
        }));
    }
    let behavior =
        serde_json::to_value(behavior(opts.fast_scale_down)).map_err(|e| RenderError::Object {
            kind: "ScaledObject".into(),
            name: USER_SERVICE.into(),
            message: e.to_string(),
        })?;
    Ok(Some(custom(
        "keda.sh/v1alpha1",
        "ScaledObject",
        meta(
            USER_SERVICE,
            Some(&opts.namespace),
            labels(&opts.namespace, USER_SERVICE, AUTOSCALING),
        ),
        json!({
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": USER_SERVICE},
            "minReplicaCount": USER_MIN_REPLICAS,
            "maxReplicaCount": USER_MAX_REPLICAS,
            "pollingInterval": 15,
            "cooldownPeriod": 300,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": behavior}},
            "triggers": Value::Array(triggers),
        }),
    )))
}
