//! The rendered objects against a real kube-apiserver with the pinned Istio and KEDA CRDs
//! (`meshguard-testcluster`; build it with `tests/kube/build-cluster-bins.sh`):
//!
//! - every object server-side applies with **strict field validation**, so a misspelled or
//!   misplaced field in a typed object or in a CRD spec (WasmPlugin, ConfigMap,
//!   PeerAuthentication, ScaledObject) is an error, not a silently pruned field;
//! - a Pod built from each Deployment's template is admitted (dry run) by the API server's own
//!   Pod Security admission in the namespace that enforces `restricted`.
//!
//! The optional `PodMonitor` is left out: its CRD (Prometheus Operator) is not in the test set.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ObjectMeta;
use meshguard_manifests::{kind_of, render, MeshFile, MeshSpec, Overrides, Profile, RenderOptions};
use meshguard_testcluster::{CrdSet, TestCluster, TestClusterOptions};

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn apply_all(client: &kube::Client, objects: &[DynamicObject]) -> TestResult {
    for o in objects {
        let kind = kind_of(o).expect("a kind meshguard knows");
        let ar = kind.api_resource();
        let api: Api<DynamicObject> = match &o.metadata.namespace {
            Some(ns) if kind.namespaced => Api::namespaced_with(client.clone(), ns, &ar),
            _ => Api::all_with(client.clone(), &ar),
        };
        let name = o.metadata.name.clone().unwrap();
        let params = PatchParams::apply("meshctl").force().validation_strict();
        api.patch(&name, &params, &Patch::Apply(o))
            .await
            .map_err(|e| format!("applying {} {name}: {e}", kind.kind))?;
    }
    Ok(())
}

/// Dry-run creates a Pod from each Deployment's template: Pod Security admission judges it.
async fn admit_pods(client: &kube::Client, objects: &[DynamicObject]) -> TestResult {
    let mut checked = 0;
    for o in objects
        .iter()
        .filter(|o| kind_of(o).unwrap().kind == "Deployment")
    {
        let d: Deployment = serde_json::from_value(serde_json::to_value(o)?)?;
        let ns = d.metadata.namespace.clone().unwrap();
        let template = d.spec.unwrap().template;
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(format!("{}-probe", d.metadata.name.unwrap())),
                namespace: Some(ns.clone()),
                ..template.metadata.unwrap_or_default()
            },
            spec: template.spec,
            ..Pod::default()
        };
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let params = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        api.create(&params, &pod)
            .await
            .map_err(|e| format!("pod of {:?} not admitted: {e}", pod.metadata.name))?;
        checked += 1;
    }
    // Every mesh here has at least the three built-in services.
    assert!(checked >= 3, "{checked} pods judged");
    Ok(())
}

#[tokio::test]
async fn objects_apply_with_strict_validation_and_pods_pass_pod_security() -> TestResult {
    let cluster = TestCluster::start(TestClusterOptions::default()).await?;
    cluster.install_crds(&[CrdSet::Istio, CrdSet::Keda]).await?;
    let client = cluster.client().await?;

    // Default options (local profile) in one namespace; every optional field set, GKE profile,
    // in another.
    let defaults = render(&MeshSpec::reference(), &RenderOptions::new("meshguard"))?;

    let mut spec_gke = MeshSpec::reference();
    spec_gke.apply(&Overrides {
        request_rate_threshold: Some("20".into()),
        ..Overrides::default()
    })?;
    let mut gke = RenderOptions::new("shop");
    gke.profile = Profile::Gke;
    gke.authz_module_url = "oci://us-docker.pkg.dev/p/wasm/authz:0.1.0".into();
    gke.metrics_module_url = "https://example.com/meshguard/metrics.wasm".into();
    gke.authz_module_sha256 = Some("a".repeat(64));
    gke.metrics_module_sha256 = Some("0123456789abcdef".repeat(4));
    gke.module_pull_secret = Some("wasm-pull".into());
    gke.module_fetch_cidrs = vec!["203.0.113.0/24".into(), "2001:db8::/32".into()];
    let everything = render(&spec_gke, &gke)?;

    // The documentation's four-service mesh (a KEDA trigger of its own, a node selector, a
    // toleration and an extended resource) in a third namespace.
    let four_file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/examples/four-services.yaml");
    let four_spec = MeshFile::read(&four_file)?.spec;
    let four = render(&four_spec, &RenderOptions::new("shop-four"))?;

    for objects in [&defaults, &everything, &four] {
        apply_all(&client, objects).await?;
        // Applying again is a no-op, not a conflict: install is idempotent.
        apply_all(&client, objects).await?;
        admit_pods(&client, objects).await?;
    }

    // Pod Security really is enforced there: a root pod is refused.
    let api: Api<Pod> = Api::namespaced(client.clone(), "meshguard");
    let root: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "root"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }))?;
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let err = api.create(&params, &root).await.unwrap_err().to_string();
    assert!(
        err.contains("violates PodSecurity \"restricted:latest\""),
        "{err}"
    );

    cluster.stop()?;
    Ok(())
}
