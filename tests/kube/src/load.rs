//! Simulated load: a Deployment's total CPU, spread over its running pods.
//!
//! A user (or a test) sets the annotation [`LOAD_ANNOTATION`] on a Deployment to the CPU the
//! service uses in all, in cores (`"4"`, `"1.5"`) or millicores (`"1500m"`). The reconciler
//! divides it by the number of that Deployment's running pods and writes each pod's share into
//! the pod annotation kwok's `usage-from-annotation` rule reads ([`KWOK_CPU_ANNOTATION`]). kwok
//! then reports that usage as the pod's kubelet resource metrics (what metrics-server and so the
//! HPA read) and as the `container_cpu_usage_seconds_total` counter (what Prometheus and so KEDA
//! read). Scaling out therefore lowers each pod's usage, as it does for a real service behind a
//! load balancer.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::Client;
use serde_json::json;

use crate::error::{Error, Result};

/// Deployment annotation: the service's total simulated CPU, in cores or millicores.
pub const LOAD_ANNOTATION: &str = "meshguard.dev/simulated-cpu";
/// Pod annotation kwok reads the pod's CPU usage from (kwok's `usage-from-annotation` rule).
pub const KWOK_CPU_ANNOTATION: &str = "kwok.x-k8s.io/usage-cpu";
/// Pod annotation marking a share written by the reconciler (so it can be taken back).
pub const SHARE_ANNOTATION: &str = "meshguard.dev/simulated-cpu-share";
/// How often the reconciler looks at Deployments and pods.
pub const RECONCILE_PERIOD: Duration = Duration::from_millis(500);

/// Parses a load: cores (`"4"`, `"0.25"`) or millicores (`"250m"`). Returns millicores.
pub fn parse_load(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let millis = if let Some(m) = text.strip_suffix('m') {
        m.parse::<u64>()
            .map_err(|_| format!("`{text}` is not a whole number of millicores"))?
    } else {
        let cores: f64 = text
            .parse()
            .map_err(|_| format!("`{text}` is not a number of cores"))?;
        if !cores.is_finite() || !(0.0..=10_000.0).contains(&cores) {
            return Err(format!("`{text}` is not between 0 and 10000 cores"));
        }
        // Bounded above, so the cast cannot overflow.
        (cores * 1000.0).round() as u64
    };
    Ok(millis)
}

/// Each pod's share of `total` millicores over `pods` running pods: the total divided evenly,
/// rounded up, never below 1m (kwok's own default for a pod without the annotation).
pub fn share(total: u64, pods: usize) -> u64 {
    let pods = u64::try_from(pods).unwrap_or(u64::MAX).max(1);
    total.div_ceil(pods).max(1)
}

/// Sets the simulated load of a Deployment (millicores in all).
pub async fn set_load(
    client: &Client,
    namespace: &str,
    deployment: &str,
    millis: u64,
) -> Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let patch = json!({"metadata": {"annotations": {LOAD_ANNOTATION: format!("{millis}m")}}});
    api.patch(deployment, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::kube(format!("setting the load of {namespace}/{deployment}"), e))?;
    Ok(())
}

fn running(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

fn selector(deployment: &Deployment) -> Option<String> {
    let labels = deployment.spec.as_ref()?.selector.match_labels.as_ref()?;
    if labels.is_empty() {
        return None;
    }
    Some(
        labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// One pass: for every Deployment with a load, writes each running pod's share; for pods that
/// carry a share but whose Deployment no longer has a load, takes it back. Returns how many
/// pods were changed.
pub async fn reconcile_once(client: &Client) -> Result<usize> {
    let deployments: Api<Deployment> = Api::all(client.clone());
    let list = deployments
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube("listing Deployments", e))?;
    let mut changed = 0;
    for deployment in list.items {
        let (Some(ns), Some(selector)) =
            (deployment.metadata.namespace.clone(), selector(&deployment))
        else {
            continue;
        };
        let load = deployment
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LOAD_ANNOTATION))
            .and_then(|v| parse_load(v).ok());
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let items = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| Error::kube(format!("listing the pods of {ns}/{selector}"), e))?
            .items;
        let live: Vec<&Pod> = items.iter().filter(|p| running(p)).collect();
        for pod in &live {
            let Some(name) = pod.metadata.name.as_deref() else {
                continue;
            };
            let patch = match load {
                Some(total) => {
                    let want = format!("{}m", share(total, live.len()));
                    if annotation(pod, KWOK_CPU_ANNOTATION) == Some(want.as_str()) {
                        continue;
                    }
                    let mut a = BTreeMap::new();
                    a.insert(KWOK_CPU_ANNOTATION, json!(want));
                    a.insert(SHARE_ANNOTATION, json!(format!("{total}m/{}", live.len())));
                    json!({"metadata": {"annotations": a}})
                }
                None if annotation(pod, SHARE_ANNOTATION).is_some() => {
                    json!({"metadata": {"annotations": {KWOK_CPU_ANNOTATION: null, SHARE_ANNOTATION: null}}})
                }
                None => continue,
            };
            match pods
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => changed += 1,
                // Deleted in between: the next pass sees the new set of pods.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    return Err(Error::kube(
                        format!("setting the load of pod {ns}/{name}"),
                        e,
                    ))
                }
            }
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_parse_as_cores_or_millicores() {
        assert_eq!(parse_load("4"), Ok(4000));
        assert_eq!(parse_load("0.25"), Ok(250));
        assert_eq!(parse_load(" 1500m "), Ok(1500));
        assert_eq!(parse_load("0"), Ok(0));
        for bad in ["", "-1", "abc", "1.5m", "NaN", "inf", "20000"] {
            assert!(parse_load(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn shares_divide_the_total_and_never_reach_zero() {
        assert_eq!(share(4000, 1), 4000);
        assert_eq!(share(4000, 3), 1334);
        assert_eq!(share(4000, 10), 400);
        assert_eq!(share(0, 4), 1);
        assert_eq!(share(1000, 0), 1000);
    }
}
