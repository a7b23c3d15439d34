//! The autoscalers: a HorizontalPodAutoscaler for each service scaled by `hpa`, a KEDA
//! ScaledObject for each one scaled by `keda` (built in: order-service's CPU HPA and
//! user-service's ScaledObject on order-service's CPU).

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};
use kube::api::DynamicObject;
use meshguard_mesh::metrics::request_rate_query;
use meshguard_mesh::model::ORDER_SERVICE;
use serde_json::{json, Value};

use crate::object::{custom, meta, typed};
use crate::spec::{trigger_name, Scaling, ServiceSpec, Trigger};
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

/// Whether an autoscaler owns the replica count of the service's Deployment.
pub(crate) fn is_autoscaled(s: &ServiceSpec) -> bool {
    !matches!(s.scaling, Scaling::None)
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

/// The HorizontalPodAutoscaler of a service scaled by `hpa`: its own average CPU utilization
/// (% of its requests), within its replica range. Built in: order-service, 75 %, 1..10.
pub(crate) fn hpa(
    s: &ServiceSpec,
    opts: &RenderOptions,
) -> Result<Option<DynamicObject>, RenderError> {
    let Scaling::Hpa(h) = &s.scaling else {
        return Ok(None);
    };
    typed(&HorizontalPodAutoscaler {
        metadata: meta(
            &s.name,
            Some(&opts.namespace),
            labels(&opts.namespace, &s.name, AUTOSCALING),
        ),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: s.name.clone(),
            },
            min_replicas: Some(h.min_replicas),
            max_replicas: h.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(h.cpu_utilization),
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

/// PromQL for a service's CPU usage in cores: the per-second rate of the cAdvisor counter over
/// its containers (not the pod's sandbox, not the pod-level aggregate without a container
/// label). The original write-up summed the counter itself, which only grows.
pub fn cpu_query(namespace: &str, service: &str) -> String {
    format!(
        "sum(rate(container_cpu_usage_seconds_total{{namespace=\"{namespace}\",pod=~\"{service}-.*\",container!=\"\",container!=\"POD\"}}[1m]))"
    )
}

/// [`cpu_query`] of order-service, what the built-in user-service scales on.
pub fn order_cpu_query(namespace: &str) -> String {
    cpu_query(namespace, ORDER_SERVICE)
}

/// The KEDA ScaledObject of a service scaled by `keda`: one Prometheus trigger per entry
/// (`AverageValue`: KEDA asks the HPA for `ceil(value / threshold)` replicas, the most any trigger
/// asks for). Built in: user-service, one replica per 0.5 cores order-service uses, 1..4. No
/// `metricName` (deprecated: KEDA names the metric itself).
pub(crate) fn scaled_object(
    s: &ServiceSpec,
    opts: &RenderOptions,
) -> Result<Option<DynamicObject>, RenderError> {
    let Scaling::Keda(k) = &s.scaling else {
        return Ok(None);
    };
    let ns = &opts.namespace;
    let triggers: Vec<Value> = k
        .triggers
        .iter()
        .map(|t| {
            let (query, threshold, activation) = match t {
                Trigger::Cpu(t) => (
                    cpu_query(ns, &t.service),
                    &t.threshold,
                    &t.activation_threshold,
                ),
                Trigger::RequestRate(t) => (
                    request_rate_query(ns, &t.service),
                    &t.threshold,
                    &t.activation_threshold,
                ),
                Trigger::Prometheus(q) => (
                    q.query.replace("${namespace}", ns),
                    &q.threshold,
                    &q.activation_threshold,
                ),
            };
            let mut metadata = json!({
                "serverAddress": opts.prometheus_address,
                "query": query,
                "threshold": threshold.as_str(),
            });
            if let (Some(a), Some(m)) = (activation, metadata.as_object_mut()) {
                m.insert("activationThreshold".into(), Value::from(a.as_str()));
            }
            json!({
                "type": "prometheus",
                "name": trigger_name(t),
                "metricType": "AverageValue",
                "metadata": metadata,
            })
        })
        .collect();
    let behavior =
        serde_json::to_value(behavior(opts.fast_scale_down)).map_err(|e| RenderError::Object {
            kind: "ScaledObject".into(),
            name: s.name.clone(),
            message: e.to_string(),
        })?;
    Ok(Some(custom(
        "keda.sh/v1alpha1",
        "ScaledObject",
        meta(&s.name, Some(ns), labels(ns, &s.name, AUTOSCALING)),
        json!({
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": s.name},
            "minReplicaCount": k.min_replicas,
            "maxReplicaCount": k.max_replicas,
            "pollingInterval": 15,
            "cooldownPeriod": 300,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": behavior}},
            "triggers": Value::Array(triggers),
        }),
    )))
}
