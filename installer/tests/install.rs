//! `meshctl install` and `status` against a real API server (meshguard-testcluster): every
//! object is accepted, a second install changes nothing, drift is reported and repaired.

mod common;

use common::{
    changed, install, live, meshctl_on, ready_cluster, rendered, resource_versions, TestResult,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use meshguard_manifests::ownership_labels;

#[tokio::test]
async fn install_applies_every_object_and_a_second_install_changes_nothing() -> TestResult {
    let cluster = ready_cluster().await?;
    let client = cluster.client().await?;
    let objects = rendered(&[])?;
    let total = objects.len();

    let first = install(&cluster, &[]).await;
    assert_eq!(first.code, Some(0), "{}", first.dump());
    assert!(
        first.stdout.is_empty(),
        "progress goes to stderr: {}",
        first.dump()
    );
    assert!(
        first.stderr.contains(&format!(
            "[1/{total}] applied Namespace meshguard (created)"
        )),
        "{}",
        first.dump()
    );
    assert!(
        first.stderr.contains(&format!(
            "{total} object(s): {total} created, 0 configured, 0 unchanged"
        )),
        "{}",
        first.dump()
    );
    // The API server accepted and stored every object, with meshctl's labels.
    for (key, object) in live(&client, &objects).await? {
        let object = object.ok_or(format!("{key} is missing after install"))?;
        for (k, v) in ownership_labels("meshguard") {
            assert_eq!(object.labels().get(&k), Some(&v), "{key} label {k}");
        }
        let managers: Vec<String> = object
            .managed_fields()
            .iter()
            .filter_map(|m| m.manager.clone())
            .collect();
        assert_eq!(managers, ["meshctl"], "{key} is managed by meshctl alone");
    }
    let before = resource_versions(&client, &objects).await?;

    let second = install(&cluster, &[]).await;
    assert_eq!(second.code, Some(0), "{}", second.dump());
    assert!(
        second.stderr.contains(&format!(
            "{total} object(s): 0 created, 0 configured, {total} unchanged"
        )),
        "{}",
        second.dump()
    );
    let after = resource_versions(&client, &objects).await?;
    assert_eq!(
        changed(&before, &after),
        Vec::<String>::new(),
        "objects a second install rewrote"
    );

    let status = meshctl_on(
        &cluster,
        "status",
        &[
            "--authz-module",
            common::AUTHZ_MODULE,
            "--metrics-module",
            common::METRICS_MODULE,
        ],
    )
    .await;
    assert_eq!(status.code, Some(0), "{}", status.dump());
    assert!(
        status.stdout.contains(&format!(
            "{total} object(s): {total} present, 0 missing, 0 drifted"
        )),
        "{}",
        status.dump()
    );
    assert!(status.stdout.starts_with("KIND"), "{}", status.dump());
    assert!(
        status.stdout.contains("0/1 ready"),
        "Deployment replicas: {}",
        status.dump()
    );
    assert!(
        status
            .stdout
            .contains("Ready not reported (is KEDA running?)"),
        "ScaledObject readiness: {}",
        status.dump()
    );
    cluster.stop()?;
    Ok(())
}

#[tokio::test]
async fn status_reports_drift_install_repairs_it_and_wait_times_out() -> TestResult {
    let cluster = ready_cluster().await?;
    let client = cluster.client().await?;
    let status_args = [
        "--authz-module",
        common::AUTHZ_MODULE,
        "--metrics-module",
        common::METRICS_MODULE,
        "--output",
        "json",
    ];

    // Nothing installed yet: everything missing, exit 1.
    let empty = meshctl_on(&cluster, "status", &status_args).await;
    assert_eq!(empty.code, Some(1), "{}", empty.dump());
    let report: serde_json::Value = serde_json::from_str(&empty.stdout)?;
    let states = |r: &serde_json::Value, state: &str| {
        r["objects"]
            .as_array()
            .map(|a| a.iter().filter(|o| o["state"] == state).count())
            .unwrap_or(0)
    };
    assert_eq!(states(&report, "missing"), rendered(&[])?.len());

    let run = install(&cluster, &[]).await;
    assert_eq!(run.code, Some(0), "{}", run.dump());

    // Someone changes an image and removes a label by hand.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "meshguard");
    deployments
        .patch(
            "order-service",
            &PatchParams::apply("kubectl-edit").force(),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "spec": {"template": {"spec": {"containers": [
                    {"name": "order-service", "image": "registry.example/hotfix:1"}
                ]}}}
            })),
        )
        .await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "meshguard");
    accounts
        .patch(
            "user-service",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "metadata": {"labels": {"app.kubernetes.io/part-of": null}}
            })),
        )
        .await?;

    let drifted = meshctl_on(&cluster, "status", &status_args).await;
    assert_eq!(drifted.code, Some(1), "{}", drifted.dump());
    let report: serde_json::Value = serde_json::from_str(&drifted.stdout)?;
    assert_eq!(states(&report, "drifted"), 2, "{}", drifted.dump());
    let find = |kind: &str, name: &str| {
        report["objects"]
            .as_array()
            .and_then(|a| a.iter().find(|o| o["kind"] == kind && o["name"] == name))
            .cloned()
            .unwrap_or_default()
    };
    let deployment = find("Deployment", "order-service");
    assert_eq!(deployment["state"], "drifted");
    assert!(
        deployment["drift"][0]
            .as_str()
            .is_some_and(|d| d.contains("image") && d.contains("registry.example/hotfix:1")),
        "{deployment}"
    );
    let account = find("ServiceAccount", "user-service");
    assert_eq!(
        account["drift"][0],
        "label app.kubernetes.io/part-of missing"
    );

    // install takes its fields back (force) and reports exactly those two as configured.
    let repair = install(&cluster, &[]).await;
    assert_eq!(repair.code, Some(0), "{}", repair.dump());
    assert!(repair
        .stderr
        .contains("applied Deployment meshguard/order-service (configured)"));
    assert!(repair
        .stderr
        .contains("applied ServiceAccount meshguard/user-service (configured)"));
    assert!(
        repair.stderr.contains("0 created, 2 configured"),
        "{}",
        repair.dump()
    );
    let image = deployments
        .get("order-service")
        .await?
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.first().and_then(|c| c.image.clone()));
    assert_eq!(
        image.as_deref(),
        Some("us-west1-docker.pkg.dev/brave-smile-424210-m0/microservice/order-service:latest")
    );
    let clean = meshctl_on(&cluster, "status", &status_args).await;
    assert_eq!(clean.code, Some(0), "{}", clean.dump());

    // No controller runs here, so no Deployment ever becomes available: --wait must give up at
    // its deadline and name them.
    let started = std::time::Instant::now();
    let waited = install(&cluster, &["--wait", "--timeout", "3s"]).await;
    assert_eq!(waited.code, Some(1), "{}", waited.dump());
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    for word in [
        "timed out after 3s waiting for the Deployments to become available",
        "Deployment meshguard/payment-service: 0/1 available",
        "fix: ",
    ] {
        assert!(
            waited.stderr.contains(word),
            "lacks {word:?}: {}",
            waited.dump()
        );
    }
    cluster.stop()?;
    Ok(())
}
