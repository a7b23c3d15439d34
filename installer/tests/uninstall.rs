//! `meshctl uninstall` and `--dry-run=server` against a real API server (meshguard-testcluster):
//! exactly meshctl's objects go, everything else stays; a server dry run changes nothing.

mod common;

use std::collections::BTreeMap;

use common::{
    changed, install, live, meshctl_on, ready_cluster, rendered, resource_versions, TestResult,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::ResourceExt;
use meshguard_manifests::ownership_labels;

async fn create_config_map(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    labels: BTreeMap<String, String>,
) -> Result<ConfigMap, kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    api.create(
        &PostParams::default(),
        &ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            data: Some([("owner".to_owned(), "someone else".to_owned())].into()),
            ..ConfigMap::default()
        },
    )
    .await
}

/// A Secret: a kind meshctl does not render.
async fn create_secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    labels: BTreeMap<String, String>,
) -> Result<Secret, kube::Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    api.create(
        &PostParams::default(),
        &Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            string_data: Some([("owner".to_owned(), "an older meshctl".to_owned())].into()),
            ..Secret::default()
        },
    )
    .await
}

async fn create_namespace(client: &kube::Client, name: &str) -> Result<Namespace, kube::Error> {
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            },
        )
        .await
}

#[tokio::test]
async fn uninstall_removes_exactly_what_meshctl_installed() -> TestResult {
    let cluster = ready_cluster().await?;
    let client = cluster.client().await?;
    let ours = rendered(&[])?;
    let shop = rendered(&["--namespace", "shop"])?;
    assert_eq!(install(&cluster, &[]).await.code, Some(0));
    let run = install(&cluster, &["--namespace", "shop"]).await;
    assert_eq!(run.code, Some(0), "{}", run.dump());

    // Someone else's objects: one in another namespace, one in `default`.
    create_namespace(&client, "other").await?;
    let theirs = create_config_map(&client, "other", "theirs", BTreeMap::new()).await?;
    let default_cm = create_config_map(&client, "default", "settings", BTreeMap::new()).await?;
    // An object of ours of a kind this version does not render (an older meshctl's).
    create_secret(
        &client,
        "meshguard",
        "meshguard-legacy-settings",
        ownership_labels("meshguard").into_iter().collect(),
    )
    .await?;
    let shop_before = resource_versions(&client, &shop).await?;

    let run = meshctl_on(&cluster, "uninstall", &[]).await;
    assert_eq!(run.code, Some(0), "{}", run.dump());
    let total = ours.len() + 1; // + the legacy Secret
    for line in [
        format!("[1/{total}] deleted Secret meshguard/meshguard-legacy-settings"),
        format!("[2/{total}] deleted ScaledObject meshguard/user-service"),
        format!("[{total}/{total}] deleted Namespace meshguard"),
    ] {
        assert!(run.stderr.contains(&line), "lacks {line:?}: {}", run.dump());
    }

    // Nothing of ours is left; the namespace is being deleted (no namespace controller here
    // finishes it).
    for (key, object) in live(&client, &ours).await? {
        if key == "Namespace meshguard" {
            let ns = object.ok_or("namespace vanished")?;
            assert!(
                ns.metadata.deletion_timestamp.is_some(),
                "namespace not deleted"
            );
        } else {
            assert!(object.is_none(), "{key} survived uninstall");
        }
    }
    let legacy = Api::<Secret>::namespaced(client.clone(), "meshguard")
        .get_opt("meshguard-legacy-settings")
        .await?;
    assert!(
        legacy.is_none(),
        "an older version's object survived uninstall"
    );

    // Everything else is untouched: the other install and other people's objects.
    let shop_after = resource_versions(&client, &shop).await?;
    assert_eq!(changed(&shop_before, &shop_after), Vec::<String>::new());
    assert!(shop_after.values().all(Option::is_some));
    let theirs_after = Api::<ConfigMap>::namespaced(client.clone(), "other")
        .get("theirs")
        .await?;
    assert_eq!(theirs_after.resource_version(), theirs.resource_version());
    let default_after = Api::<ConfigMap>::namespaced(client.clone(), "default")
        .get("settings")
        .await?;
    assert_eq!(
        default_after.resource_version(),
        default_cm.resource_version()
    );

    // Installing into the namespace while it is being deleted is refused, with the reason.
    let run = install(&cluster, &[]).await;
    assert_eq!(run.code, Some(1), "{}", run.dump());
    assert!(
        run.stderr.contains("namespace meshguard is being deleted"),
        "{}",
        run.dump()
    );
    let run = install(&cluster, &["--skip-preflight"]).await;
    assert_eq!(run.code, Some(1), "{}", run.dump());
    assert!(
        run.stderr.contains("fix: the namespace is being deleted"),
        "{}",
        run.dump()
    );

    // Once the namespace is gone, uninstall has nothing left to do.
    cluster.finalize_namespace("meshguard").await?;
    let again = meshctl_on(&cluster, "uninstall", &[]).await;
    assert_eq!(again.code, Some(0), "{}", again.dump());
    assert!(
        again.stderr.contains("nothing to uninstall"),
        "{}",
        again.dump()
    );
    cluster.stop()?;
    Ok(())
}

#[tokio::test]
async fn uninstall_keeps_a_namespace_holding_objects_meshctl_did_not_create() -> TestResult {
    let cluster = ready_cluster().await?;
    let client = cluster.client().await?;
    let ours = rendered(&[])?;
    assert_eq!(install(&cluster, &[]).await.code, Some(0));
    create_config_map(&client, "meshguard", "theirs", BTreeMap::new()).await?;

    let run = meshctl_on(&cluster, "uninstall", &[]).await;
    assert_eq!(run.code, Some(0), "{}", run.dump());
    assert!(
        run.stderr.contains(
            "kept namespace meshguard: it holds 1 object(s) meshctl did not create: ConfigMap \
             meshguard/theirs"
        ),
        "{}",
        run.dump()
    );
    assert!(run.stderr.contains("--delete-namespace"), "{}", run.dump());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    assert!(namespaces
        .get("meshguard")
        .await?
        .metadata
        .deletion_timestamp
        .is_none());
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "meshguard");
    assert!(configmaps.get_opt("theirs").await?.is_some());
    let left: Vec<String> = live(&client, &ours)
        .await?
        .into_iter()
        .filter(|(k, v)| v.is_some() && k != "Namespace meshguard")
        .map(|(k, _)| k)
        .collect();
    assert_eq!(left, Vec::<String>::new(), "objects of ours left");

    // The user decides: the namespace goes, with what is in it.
    let run = meshctl_on(&cluster, "uninstall", &["--delete-namespace"]).await;
    assert_eq!(run.code, Some(0), "{}", run.dump());
    assert!(
        run.stderr.contains("[1/1] deleted Namespace meshguard"),
        "{}",
        run.dump()
    );
    assert!(namespaces
        .get("meshguard")
        .await?
        .metadata
        .deletion_timestamp
        .is_some());

    // A namespace meshctl did not create is never deleted.
    create_namespace(&client, "preexisting").await?;
    let run = install(&cluster, &["--namespace", "preexisting"]).await;
    assert_eq!(run.code, Some(0), "{}", run.dump());
    assert!(
        run.stderr
            .contains("namespace preexisting exists and was not created by meshctl"),
        "preflight warns before taking the namespace over: {}",
        run.dump()
    );
    cluster.stop()?;
    Ok(())
}

#[tokio::test]
async fn server_dry_run_changes_nothing() -> TestResult {
    let cluster = ready_cluster().await?;
    let client = cluster.client().await?;
    let objects = rendered(&[])?;
    let total = objects.len();
    let namespaces: Api<Namespace> = Api::all(client.clone());

    // On an empty cluster: only the namespace can be checked (the API server refuses objects in
    // a namespace that does not exist, even in a dry run), and nothing is created.
    let run = install(&cluster, &["--dry-run=server"]).await;
    assert_eq!(run.code, Some(0), "{}", run.dump());
    assert!(
        run.stderr.contains(&format!(
            "[1/{total}] applied Namespace meshguard (created, server dry run)"
        )),
        "{}",
        run.dump()
    );
    assert!(run.stderr.contains("not validated"), "{}", run.dump());
    assert!(run.stderr.contains("nothing was changed"), "{}", run.dump());
    assert!(namespaces.get_opt("meshguard").await?.is_none());
    assert!(live(&client, &objects).await?.values().all(Option::is_none));

    // Installed: a dry run with another image says what would change, and changes nothing.
    assert_eq!(install(&cluster, &[]).await.code, Some(0));
    let before = resource_versions(&client, &objects).await?;
    let run = install(
        &cluster,
        &[
            "--dry-run",
            "--user-image",
            "registry.example/user-service:2",
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.dump());
    assert!(
        run.stderr
            .contains("applied Deployment meshguard/user-service (configured, server dry run)"),
        "{}",
        run.dump()
    );
    assert!(
        run.stderr
            .contains("applied Deployment meshguard/order-service (unchanged, server dry run)"),
        "{}",
        run.dump()
    );
    assert_eq!(
        changed(&before, &resource_versions(&client, &objects).await?),
        Vec::<String>::new()
    );

    // A dry-run uninstall lists what would go, and nothing goes.
    let run = meshctl_on(&cluster, "uninstall", &["--dry-run=server"]).await;
    assert_eq!(run.code, Some(0), "{}", run.dump());
    assert!(
        run.stderr.contains(&format!(
            "[{total}/{total}] deleted Namespace meshguard (server dry run)"
        )),
        "{}",
        run.dump()
    );
    assert!(
        run.stderr.contains(&format!(
            "server dry run: {total} object(s) would be deleted"
        )),
        "{}",
        run.dump()
    );
    assert_eq!(
        changed(&before, &resource_versions(&client, &objects).await?),
        Vec::<String>::new()
    );
    assert!(namespaces
        .get("meshguard")
        .await?
        .metadata
        .deletion_timestamp
        .is_none());
    cluster.stop()?;
    Ok(())
}
