//! Preflight against a real API server (meshguard-testcluster): the typed report names what is
//! missing, all at once, and `install` refuses to apply anything while it has errors.

mod common;

use clap::Parser;
use common::{TestResult, AUTHZ_MODULE, METRICS_MODULE};
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{Api, Patch, PatchParams};
use meshctl::cli::{Cli, Command};
use meshctl::client::{ClusterTarget, Connection};
use meshctl::preflight::{self, Check, PreflightReport, Severity};
use meshguard_testcluster::{CrdSet, TestCluster, TestClusterOptions};

/// Runs the library's preflight for `meshctl preflight <args>` against `cluster`.
async fn preflight_for(
    cluster: &TestCluster,
    args: &[&str],
) -> Result<PreflightReport, Box<dyn std::error::Error>> {
    let mut all = vec![
        "meshctl",
        "preflight",
        "--authz-module",
        AUTHZ_MODULE,
        "--metrics-module",
        METRICS_MODULE,
    ];
    all.extend_from_slice(args);
    let cli = Cli::parse_from(all);
    let Command::Preflight(p) = cli.command else {
        unreachable!("parsed `preflight`")
    };
    let conn = Connection::new(&ClusterTarget {
        kubeconfig: Some(cluster.kubeconfig_path().to_path_buf()),
        context: None,
    })
    .await?;
    // As `meshctl preflight` renders: for the cluster it talks to.
    let (opts, objects) =
        meshctl::commands::render_for_cluster(&conn, &cli.global, &p.render).await?;
    Ok(preflight::run(&conn, &objects, &opts).await?)
}

fn severity(report: &PreflightReport, check: Check, subject: &str) -> Option<Severity> {
    report.find(check, subject).map(|f| f.severity)
}

fn error_subjects(report: &PreflightReport) -> Vec<(Check, String)> {
    report
        .errors()
        .map(|f| (f.check, f.subject.clone()))
        .collect()
}

#[tokio::test]
async fn a_missing_keda_crd_is_named_and_nothing_is_applied() -> TestResult {
    let cluster = TestCluster::start(TestClusterOptions::default()).await?;
    cluster.install_crds(&[CrdSet::Istio]).await?;
    cluster.simulate_nodes().await?;
    cluster.simulate_metrics_api().await?;

    let report = preflight_for(&cluster, &[]).await?;
    assert_eq!(
        error_subjects(&report),
        [(Check::Crd, "scaledobjects.keda.sh".to_owned())],
        "{report}"
    );
    let finding = report
        .find(Check::Crd, "scaledobjects.keda.sh")
        .ok_or("no KEDA finding")?;
    assert!(finding.problem.contains("ScaledObject"), "{finding}");
    assert!(finding.fix.contains("helm install keda"), "{finding}");
    for crd in [
        "wasmplugins.extensions.istio.io",
        "peerauthentications.security.istio.io",
    ] {
        assert!(
            report.passed.iter().any(|p| p.contains(crd)),
            "{crd}: {report}"
        );
    }
    // The metrics API is registered but its backend is absent: a warning, not an error.
    assert_eq!(
        severity(&report, Check::MetricsApi, preflight::METRICS_APISERVICE),
        Some(Severity::Warning)
    );
    assert_eq!(
        severity(&report, Check::Istiod, "istiod"),
        Some(Severity::Warning)
    );

    // The binary refuses to install and leaves the cluster untouched.
    let run = common::install(&cluster, &[]).await;
    assert_eq!(run.code, Some(1), "{}", run.dump());
    for word in [
        "preflight found 1 problem",
        "CustomResourceDefinition scaledobjects.keda.sh is not installed",
        "fix: install KEDA",
    ] {
        assert!(run.stderr.contains(word), "lacks {word:?}: {}", run.dump());
    }
    assert!(!run.stderr.contains("applied"), "{}", run.dump());
    let client = cluster.client().await?;
    assert!(Api::<Namespace>::all(client)
        .get_opt("meshguard")
        .await?
        .is_none());

    // `meshctl preflight` prints the report on stdout and exits 1.
    let run = common::preflight(&cluster, &[]).await;
    assert_eq!(run.code, Some(1), "{}", run.dump());
    assert!(
        run.stdout.contains("scaledobjects.keda.sh"),
        "{}",
        run.dump()
    );
    assert!(
        run.stdout.contains("preflight: 1 error(s), 2 warning(s)"),
        "{}",
        run.dump()
    );

    // --skip-preflight goes ahead, and the API server itself refuses the unknown kind before
    // anything is applied.
    let run = common::install(&cluster, &["--skip-preflight"]).await;
    assert_eq!(run.code, Some(1), "{}", run.dump());
    assert!(
        run.stderr
            .contains("does not serve ScaledObject (keda.sh/v1alpha1)"),
        "{}",
        run.dump()
    );
    assert!(!run.stderr.contains("applied"), "{}", run.dump());
    cluster.stop()?;
    Ok(())
}

#[tokio::test]
async fn a_bare_cluster_gets_every_problem_reported_at_once() -> TestResult {
    let cluster = TestCluster::start(TestClusterOptions::default()).await?;

    let report = preflight_for(&cluster, &[]).await?;
    let mut errors = error_subjects(&report);
    errors.sort();
    let expected: Vec<(Check, String)> = [
        (Check::Crd, "peerauthentications.security.istio.io"),
        (Check::Crd, "scaledobjects.keda.sh"),
        (Check::Crd, "wasmplugins.extensions.istio.io"),
        (Check::MetricsApi, preflight::METRICS_APISERVICE),
        (Check::Scheduling, "order-service"),
        (Check::Scheduling, "payment-service"),
        (Check::Scheduling, "user-service"),
    ]
    .into_iter()
    .map(|(c, s)| (c, s.to_owned()))
    .collect();
    assert_eq!(errors, expected, "{report}");
    let gpu = report
        .find(Check::Scheduling, "payment-service")
        .ok_or("no GPU finding")?;
    assert!(gpu.problem.contains("1 nvidia.com/gpu"), "{gpu}");
    assert!(gpu.problem.contains("the cluster has no nodes"), "{gpu}");
    assert!(gpu.fix.contains("--no-gpu"), "{gpu}");
    assert!(
        report
            .find(Check::MetricsApi, preflight::METRICS_APISERVICE)
            .is_some_and(|f| f.fix.contains("metrics-server")),
        "{report}"
    );

    // Fix them one by one.
    cluster.install_crds(&[CrdSet::Istio, CrdSet::Keda]).await?;
    cluster.simulate_metrics_api().await?;
    cluster.simulate_nodes().await?;
    let report = preflight_for(&cluster, &[]).await?;
    assert!(report.is_ok(), "{report}");
    assert!(
        report
            .passed
            .iter()
            .any(|p| p.starts_with("payment-service can be scheduled (it needs 1 nvidia.com/gpu)")),
        "{report}"
    );
    cluster.stop()?;
    Ok(())
}

#[tokio::test]
async fn gpu_scheduling_follows_the_profile() -> TestResult {
    let cluster = TestCluster::start(TestClusterOptions::default()).await?;
    cluster.install_crds(&[CrdSet::Istio, CrdSet::Keda]).await?;
    cluster.simulate_metrics_api().await?;
    let client = cluster.client().await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let pp = PatchParams::apply("preflight-test").force();
    // A CPU node, and a GKE GPU node (GKE's accelerator label, not the local profile's gpu=true).
    for (name, labels, gpus) in [
        ("cpu-1", serde_json::json!({}), None),
        (
            "gke-gpu-1",
            serde_json::json!({"cloud.google.com/gke-accelerator": "nvidia-l4"}),
            Some("1"),
        ),
    ] {
        let taints = if gpus.is_some() {
            serde_json::json!([{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}])
        } else {
            serde_json::json!([])
        };
        nodes
            .patch(
                name,
                &pp,
                &Patch::Apply(serde_json::json!({
                    "apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": name, "labels": labels},
                    "spec": {"taints": taints},
                })),
            )
            .await?;
        let mut allocatable = serde_json::json!({"cpu": "4", "memory": "16Gi", "pods": "110"});
        if let Some(g) = gpus {
            allocatable["nvidia.com/gpu"] = serde_json::json!(g);
        }
        nodes
            .patch_status(
                name,
                &pp,
                &Patch::Apply(serde_json::json!({
                    "apiVersion": "v1", "kind": "Node",
                    "status": {"capacity": allocatable, "allocatable": allocatable},
                })),
            )
            .await?;
    }

    // --profile local wants gpu=true, which this GPU node lacks.
    let local = preflight_for(&cluster, &[]).await?;
    assert_eq!(
        error_subjects(&local),
        [(Check::Scheduling, "payment-service".to_owned())],
        "{local}"
    );
    let finding = local
        .find(Check::Scheduling, "payment-service")
        .ok_or("no finding")?;
    assert!(
        finding
            .problem
            .contains("do not match its node affinity (cpu-1, gke-gpu-1)"),
        "{finding}"
    );
    assert!(finding.fix.contains("--profile gke"), "{finding}");

    // --profile gke matches GKE's label.
    let gke = preflight_for(&cluster, &["--profile", "gke"]).await?;
    assert!(gke.is_ok(), "{gke}");

    // With a mesh file, the finding says where the file places the service: payment-service's
    // GPUs, and inventory-service's node selector, which no node here matches.
    let file = format!(
        "{}/../docs/examples/four-services.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let mesh = meshguard_manifests::MeshFile::read(std::path::Path::new(&file))?;
    let run = common::preflight(&cluster, &["-f", &file]).await;
    // Only the file's fields ask for what the cluster lacks: bad input, exit status 2.
    assert_eq!(run.code, Some(2), "{}", run.dump());
    for (i, service) in [(2, "payment-service"), (3, "inventory-service")] {
        let field = format!("services[{i}].placement");
        let (line, column) = mesh.position(&field);
        let want = format!("error: {file}:{line}:{column}: {field}: no node can run {service}");
        assert!(run.stdout.contains(&want), "lacks {want:?}: {}", run.dump());
    }
    // `install` refuses the same file the same way, before applying anything.
    let run = common::install(&cluster, &["-f", &file]).await;
    assert_eq!(run.code, Some(2), "{}", run.dump());
    assert!(
        run.stderr.contains("no node can run inventory-service"),
        "{}",
        run.dump()
    );
    assert!(!run.stderr.contains("applied"), "{}", run.dump());

    // Without GPUs, payment-service runs on the CPU node like the others.
    let no_gpu = preflight_for(&cluster, &["--no-gpu"]).await?;
    assert!(no_gpu.is_ok(), "{no_gpu}");

    // A GPU that is all handed out (allocatable 0) does not count.
    nodes
        .patch_status(
            "gke-gpu-1",
            &pp,
            &Patch::Apply(serde_json::json!({
                "apiVersion": "v1", "kind": "Node",
                "status": {
                    "capacity": {"cpu": "4", "memory": "16Gi", "pods": "110", "nvidia.com/gpu": "1"},
                    "allocatable": {"cpu": "4", "memory": "16Gi", "pods": "110", "nvidia.com/gpu": "0"}
                },
            })),
        )
        .await?;
    let exhausted = preflight_for(&cluster, &["--profile", "gke"]).await?;
    let finding = exhausted
        .find(Check::Scheduling, "payment-service")
        .ok_or("no finding")?;
    assert!(
        finding
            .problem
            .contains("have no allocatable nvidia.com/gpu (or too little) (gke-gpu-1)"),
        "{finding}"
    );
    cluster.stop()?;
    Ok(())
}

/// Istio's injector configuration as istiod's chart labels it, with `pilot.cni.enabled`.
async fn injector_config(cluster: &TestCluster, cni: bool) -> TestResult {
    let client = cluster.client().await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt("istio-system").await?.is_none() {
        namespaces
            .create(
                &Default::default(),
                &serde_json::from_value(serde_json::json!({
                    "metadata": {"name": "istio-system"}
                }))?,
            )
            .await?;
    }
    let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "istio-sidecar-injector",
            "namespace": "istio-system",
            "labels": {"app.kubernetes.io/name": "istiod"},
        },
        "data": {"values": serde_json::json!({"pilot": {"cni": {"enabled": cni}}}).to_string()},
    }))?;
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client, "istio-system")
        .patch(
            "istio-sidecar-injector",
            &PatchParams::apply("istio-test").force(),
            &Patch::Apply(&cm),
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn without_istio_cni_the_namespace_enforces_privileged_and_the_fix_is_named() -> TestResult {
    let cluster = TestCluster::start(TestClusterOptions::default()).await?;
    cluster.install_crds(&[CrdSet::Istio, CrdSet::Keda]).await?;

    // No Istio at all: nothing is injected, `restricted` stays (the istiod check warns).
    let report = preflight_for(&cluster, &[]).await?;
    assert!(
        report.find(Check::IstioCni, "istio-cni").is_none(),
        "{report}"
    );
    assert!(
        report
            .passed
            .iter()
            .any(|p| p.contains("no Istio injector configuration")),
        "{report}"
    );

    injector_config(&cluster, false).await?;
    let report = preflight_for(&cluster, &[]).await?;
    let f = report
        .find(Check::IstioCni, "istio-cni")
        .ok_or("no CNI finding")?;
    assert_eq!(f.severity, Severity::Warning, "{report}");
    assert!(f.problem.contains("NET_ADMIN"), "{f}");
    assert!(f.problem.contains("enforces `privileged`"), "{f}");
    assert!(f.fix.contains("components.cni.enabled=true"), "{f}");
    assert!(f.fix.contains("`restricted`"), "{f}");

    // Asking for `restricted` anyway would refuse every injected pod: an error.
    let report = preflight_for(&cluster, &["--pod-security", "restricted"]).await?;
    assert_eq!(
        severity(&report, Check::IstioCni, "istio-cni"),
        Some(Severity::Error),
        "{report}"
    );

    // With CNI: `restricted`, and only the missing node agent is worth a warning.
    injector_config(&cluster, true).await?;
    let report = preflight_for(&cluster, &[]).await?;
    assert!(
        report
            .passed
            .iter()
            .any(|p| p.contains("enforces Pod Security `restricted`")),
        "{report}"
    );
    let f = report
        .find(Check::IstioCni, "istio-cni")
        .ok_or("no node agent finding")?;
    assert!(f.problem.contains("istio-cni-node"), "{f}");
    cluster.stop()?;
    Ok(())
}
