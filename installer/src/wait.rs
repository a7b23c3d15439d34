//! `--wait`: until Deployments are available, or deleted objects are gone, within a deadline.
//!
//! Each object is watched with kube-runtime's `await_condition` (a watch on that one object, so
//! a change is seen when it happens, not at the next poll), with `conditions::is_deleted` for
//! deletions: it also counts an object deleted and created again, by its UID. What is left when
//! the deadline passes is read once more, to say why each is still pending.

use std::future::Future;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DynamicObject};
use kube::runtime::wait::{await_condition, conditions};
use kube::Client;
use tokio::time::{timeout_at, Instant};

use crate::error::{describe_kube_error, Error};
use crate::progress::{ObjectRef, Progress};
use crate::resources::{self, Resources};

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

/// Runs one wait per object until all are done or `deadline` passes, reporting each as it is
/// done. Returns the objects still pending at the deadline (empty: all done).
async fn each_until<F>(
    waits: Vec<(ObjectRef, F)>,
    deadline: Instant,
    done: &str,
    progress: &mut dyn Progress,
) -> Result<Vec<ObjectRef>, Error>
where
    F: Future<Output = Result<(), kube::runtime::wait::Error>>,
{
    let mut left: Vec<ObjectRef> = waits.iter().map(|(o, _)| o.clone()).collect();
    let mut running: FuturesUnordered<_> = waits
        .into_iter()
        .map(|(object, wait)| async move { (object, wait.await) })
        .collect();
    loop {
        match timeout_at(deadline, running.next()).await {
            Ok(None) => return Ok(Vec::new()),
            Ok(Some((object, Ok(())))) => {
                progress.info(format!("{object} {done}"));
                left.retain(|o| o != &object);
            }
            Ok(Some((object, Err(e)))) => {
                return Err(Error::Kube {
                    action: format!("watching {object}"),
                    message: e.to_string(),
                    hint: Some(
                        "the account needs `watch` on the objects meshctl installs (see \
                         docs/meshctl.md, Permissions)"
                            .to_owned(),
                    ),
                    code: 0,
                })
            }
            Err(_) => return Ok(left),
        }
    }
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
    let api = |d: &ObjectRef| -> Api<Deployment> {
        Api::namespaced(client.clone(), d.namespace.as_deref().unwrap_or_default())
    };
    let waits = deployments
        .iter()
        .map(|d| {
            let (api, name) = (api(d), d.name.clone());
            let wait = async move {
                await_condition(api, &name, |o: Option<&Deployment>| {
                    o.is_some_and(|d| deployment_available(d).is_ok())
                })
                .await
                .map(drop)
            };
            (d.clone(), wait)
        })
        .collect();
    let left = each_until(waits, deadline, "is available", progress).await?;
    if left.is_empty() {
        return Ok(());
    }
    let mut pending = Vec::new();
    for d in &left {
        pending.push(match api(d).get_opt(&d.name).await {
            Ok(Some(live)) => format!(
                "{d}: {}",
                deployment_available(&live)
                    .err()
                    .unwrap_or_else(|| "available now".to_owned())
            ),
            Ok(None) => format!("{d}: not found"),
            Err(e) => format!("{d}: cannot read it: {}", describe_kube_error(&e)),
        });
    }
    Err(Error::Timeout {
        what: "the Deployments to become available".to_owned(),
        waited: timeout,
        pending,
        hint: "look at the pods (`kubectl -n NAMESPACE get pods`, `kubectl describe pod`): an \
               image that cannot be pulled, a pod waiting for a GPU node, or sidecars failing to \
               fetch the Wasm modules (`kubectl logs POD -c istio-proxy`); raise --timeout for \
               slow rollouts"
            .to_owned(),
    })
}

/// An object `uninstall` deleted: which, its API version, and its UID when known (so that an
/// object of the same name created since does not count as the deleted one).
#[derive(Debug, Clone)]
pub struct Deleted {
    pub object: ObjectRef,
    pub api_version: String,
    pub uid: Option<String>,
}

/// Waits until every object in `objects` is gone.
pub async fn objects_gone(
    client: &Client,
    resources: &Resources,
    objects: &[Deleted],
    timeout: Duration,
    progress: &mut dyn Progress,
) -> Result<(), Error> {
    progress.info(format!(
        "waiting up to {}s for {} object(s) to be gone",
        timeout.as_secs(),
        objects.len()
    ));
    let deadline = Instant::now() + timeout;
    let api = |d: &Deleted| -> Option<Api<DynamicObject>> {
        let resolved = resources.resolve(&d.api_version, &d.object.kind)?;
        Some(resources::api(
            client,
            &resolved,
            d.object.namespace.as_deref(),
        ))
    };
    let waits = objects
        .iter()
        .filter_map(|d| {
            let (api, name, uid) = (api(d)?, d.object.name.clone(), d.uid.clone());
            let wait = async move {
                match uid {
                    Some(uid) => await_condition(api, &name, conditions::is_deleted(&uid)).await,
                    None => {
                        await_condition(api, &name, |o: Option<&DynamicObject>| o.is_none()).await
                    }
                }
                .map(drop)
            };
            Some((d.object.clone(), wait))
        })
        .collect();
    let left = each_until(waits, deadline, "is gone", progress).await?;
    if left.is_empty() {
        progress.info("every deleted object is gone".to_owned());
        return Ok(());
    }
    let mut pending = Vec::new();
    for d in objects.iter().filter(|d| left.contains(&d.object)) {
        let object = &d.object;
        let live = match api(d) {
            Some(api) => api.get_opt(&object.name).await,
            None => continue,
        };
        pending.push(match live {
            Ok(Some(live)) => {
                let finalizers = live.metadata.finalizers.unwrap_or_default();
                if finalizers.is_empty() {
                    format!("{object}: still present")
                } else {
                    format!("{object}: waiting for finalizers {}", finalizers.join(", "))
                }
            }
            Ok(None) => format!("{object}: gone now"),
            Err(e) => format!("{object}: cannot read it: {}", describe_kube_error(&e)),
        });
    }
    Err(Error::Timeout {
        what: "the deleted objects to be gone".to_owned(),
        waited: timeout,
        pending,
        hint: "objects with finalizers wait for their controller (KEDA for ScaledObjects, the \
               namespace controller for the namespace): check that those controllers run"
            .to_owned(),
    })
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
