//! `--wait`: poll until Deployments are available, or objects are gone, within a deadline.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use kube::Client;
use tokio::time::{sleep, Instant};

use crate::error::Error;
use crate::progress::{ObjectRef, Progress};
use crate::resources::{self, Resources};

/// Time between two polls.
const POLL: Duration = Duration::from_secs(2);

/// Sleeps until the next poll; `false` once the deadline has passed.
async fn next_poll(deadline: Instant) -> bool {
    let now = Instant::now();
    if now >= deadline {
        return false;
    }
    sleep(POLL.min(deadline - now)).await;
    true
}

/// Whether a Deployment has rolled out: the controller saw its latest spec, and every desired
/// replica is updated and available. `Err` carries "1/3 available" style progress.
pub fn deployment_available(d: &Deployment) -> Result<(), String> {
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let generation = d.metadata.generation.unwrap_or(0);
    let Some(status) = &d.status else {
        return Err(format!("0/{desired} available, no status yet"));
    };
    let observed = status.observed_generation.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    if observed < generation {
        return Err(format!(
            "{available}/{desired} available, controller has not seen the latest spec"
        ));
    }
    if available < desired || updated < desired {
        return Err(format!(
            "{available}/{desired} available, {updated}/{desired} updated"
        ));
    }
    Ok(())
}

/// Waits until every Deployment in `deployments` is available.
pub async fn deployments_available(
    client: &Client,
    deployments: &[ObjectRef],
    timeout: Duration,
    progress: &mut dyn Progress,
) -> Result<(), Error> {
    progress.info(format!(
        "waiting up to {}s for {} Deployment(s) to become available",
        timeout.as_secs(),
        deployments.len()
    ));
    let deadline = Instant::now() + timeout;
    let mut todo: Vec<ObjectRef> = deployments.to_vec();
    loop {
        let mut pending = Vec::new();
        let mut still = Vec::new();
        for d in todo {
            let ns = d.namespace.clone().unwrap_or_default();
            let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
            let live = api
                .get_opt(&d.name)
                .await
                .map_err(|e| Error::kube(format!("reading {d}"), &e))?;
            match live.as_ref().map(deployment_available) {
                Some(Ok(())) => progress.info(format!("{d} is available")),
                Some(Err(why)) => {
                    pending.push(format!("{d}: {why}"));
                    still.push(d);
                }
                None => {
                    pending.push(format!("{d}: not found"));
                    still.push(d);
                }
            }
        }
        if still.is_empty() {
            return Ok(());
        }
        todo = still;
        if !next_poll(deadline).await {
            return Err(Error::Timeout {
                what: "the Deployments to become available".to_owned(),
                waited: timeout,
                pending,
                hint: "look at the pods (`kubectl -n NAMESPACE get pods`, `kubectl describe \
                       pod`): an image that cannot be pulled, payment-service waiting for a GPU \
                       node, or sidecars failing to fetch the Wasm modules (`kubectl logs POD -c \
                       istio-proxy`); raise --timeout for slow rollouts"
                    .to_owned(),
            });
        }
    }
}

/// Waits until every object in `objects` is gone (404).
pub async fn objects_gone(
    client: &Client,
    resources: &Resources,
    objects: &[(ObjectRef, String)],
    timeout: Duration,
    progress: &mut dyn Progress,
) -> Result<(), Error> {
    progress.info(format!(
        "waiting up to {}s for {} object(s) to be gone",
        timeout.as_secs(),
        objects.len()
    ));
    let deadline = Instant::now() + timeout;
    loop {
        let mut pending = Vec::new();
        for (object, api_version) in objects {
            let Some(resolved) = resources.resolve(api_version, &object.kind) else {
                continue;
            };
            let api = resources::api(client, &resolved, object.namespace.as_deref());
            let live = api
                .get_opt(&object.name)
                .await
                .map_err(|e| Error::kube(format!("reading {object}"), &e))?;
            if let Some(live) = live {
                let finalizers = live.metadata.finalizers.unwrap_or_default();
                if finalizers.is_empty() {
                    pending.push(format!("{object}: still present"));
                } else {
                    pending.push(format!(
                        "{object}: waiting for finalizers {}",
                        finalizers.join(", ")
                    ));
                }
            }
        }
        if pending.is_empty() {
            progress.info("every deleted object is gone".to_owned());
            return Ok(());
        }
        if !next_poll(deadline).await {
            return Err(Error::Timeout {
                what: "the deleted objects to be gone".to_owned(),
                waited: timeout,
                pending,
                hint: "objects with finalizers wait for their controller (KEDA for \
                       ScaledObjects, the namespace controller for the namespace): check that \
                       those controllers run"
                    .to_owned(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn deployment(replicas: Option<i32>, status: Option<(i64, i32, i32)>) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                generation: Some(2),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas,
                ..Default::default()
            }),
            status: status.map(|(observed, available, updated)| DeploymentStatus {
                observed_generation: Some(observed),
                available_replicas: Some(available),
                updated_replicas: Some(updated),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn availability() {
        assert!(deployment_available(&deployment(None, None)).is_err());
        assert!(deployment_available(&deployment(Some(2), Some((1, 2, 2)))).is_err());
        assert!(deployment_available(&deployment(Some(2), Some((2, 1, 2)))).is_err());
        assert!(deployment_available(&deployment(Some(2), Some((2, 2, 2)))).is_ok());
        assert!(deployment_available(&deployment(None, Some((2, 1, 1)))).is_ok());
    }
}
