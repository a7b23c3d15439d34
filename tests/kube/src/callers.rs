//! Callers inside the cluster: a pod running `call` (tests/services) under a service account, so
//! that its requests leave through its own sidecar with that account's identity. Its answers
//! (one JSON object per request, as `call` prints them) are read from the pod's log.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, LogParams, PostParams};
use kube::Client;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::wait::until;

/// The container that runs `call`.
pub const CONTAINER: &str = "call";

/// One caller pod: `call ARGS` in pod `name` of `namespace`, under `account`.
#[derive(Debug, Clone)]
pub struct Caller<'a> {
    pub image: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub account: &'a str,
}

impl Caller<'_> {
    /// Creates the pod (it runs once: `restartPolicy: Never`).
    pub async fn start(&self, client: &Client, args: &[&str]) -> Result<()> {
        let pods: Api<Pod> = Api::namespaced(client.clone(), self.namespace);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": self.name},
            "spec": {
                "restartPolicy": "Never",
                "serviceAccountName": self.account,
                "containers": [{"name": CONTAINER, "image": self.image, "args": args}],
            },
        }))
        .map_err(|e| Error::Caller(format!("the caller pod {}: {e}", self.name)))?;
        pods.create(&PostParams::default(), &pod)
            .await
            .map_err(|e| {
                Error::kube(format!("creating pod {}/{}", self.namespace, self.name), e)
            })?;
        Ok(())
    }

    /// Runs `call ARGS` to the end (at most `within`) and returns its answers.
    pub async fn run(
        &self,
        client: &Client,
        args: &[&str],
        within: Duration,
    ) -> Result<Vec<Value>> {
        self.start(client, args).await?;
        answers(client, self.namespace, self.name, within).await
    }
}

/// The answers caller pod `namespace/name` has printed so far.
pub async fn answers_so_far(client: &Client, namespace: &str, name: &str) -> Result<Vec<Value>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let log = pods
        .logs(
            name,
            &LogParams {
                container: Some(CONTAINER.into()),
                ..LogParams::default()
            },
        )
        .await
        .map_err(|e| Error::kube(format!("reading the log of {namespace}/{name}"), e))?;
    Ok(log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// Waits, at most `within`, for caller pod `namespace/name` to finish, and returns its answers.
pub async fn answers(
    client: &Client,
    namespace: &str,
    name: &str,
    within: Duration,
) -> Result<Vec<Value>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    until(&format!("{namespace}/{name} finished"), within, || {
        let pods = pods.clone();
        async move {
            let pod = pods.get(name).await?;
            let status = pod.status.unwrap_or_default();
            let done = status
                .container_statuses
                .unwrap_or_default()
                .iter()
                .any(|c| {
                    c.name == CONTAINER && c.state.as_ref().is_some_and(|s| s.terminated.is_some())
                });
            Ok(if done {
                Ok(())
            } else {
                Err(format!("phase {:?}", status.phase))
            })
        }
    })
    .await
    .map_err(|e| Error::Caller(e.to_string()))?;
    answers_so_far(client, namespace, name).await
}

/// Deletes pod `namespace/name` at once (no grace period), if it is there.
pub async fn delete(client: &Client, namespace: &str, name: &str) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    match pods
        .delete(name, &DeleteParams::default().grace_period(0))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(Error::kube(format!("deleting pod {namespace}/{name}"), e)),
    }
}

/// Creates ServiceAccount `name` in `namespace` unless it exists; true when it was created.
pub async fn ensure_service_account(client: &Client, namespace: &str, name: &str) -> Result<bool> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let context = || format!("ServiceAccount {namespace}/{name}");
    if accounts
        .get_opt(name)
        .await
        .map_err(|e| Error::kube(context(), e))?
        .is_some()
    {
        return Ok(false);
    }
    let account: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}}))
        .map_err(|e| Error::Caller(format!("{}: {e}", context())))?;
    accounts
        .create(&PostParams::default(), &account)
        .await
        .map_err(|e| Error::kube(context(), e))?;
    Ok(true)
}

/// Whether an answer is a 200.
pub fn answered(answer: &Value) -> bool {
    answer["status"] == 200
}
