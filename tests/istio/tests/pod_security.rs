//! Istio's injector on the rendered Deployments, and the API server's own PodSecurity admission
//! on the pods it makes: which Pod Security levels admit them with and without Istio CNI (and
//! with Istio's native-sidecar injection on and off), and that what `meshctl` renders for a
//! cluster, after reading how that cluster's Istio injects, is admitted there.
//!
//! The injector is `pkg/kube/inject` with the templates and values of Istio's rendered
//! istio-discovery chart (`meshguard-istio inject`); the API server is `meshguard-testcluster`'s
//! kube-apiserver (PodSecurity admission is on by default); pods are created with dry run.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ObjectMeta;
use meshctl::preflight::{detect_istio_cni, IstioCni};
use meshguard_istio_tests::{run, run_raw_env};
use meshguard_manifests::{render, to_yaml, PodSecurity, RenderOptions};
use meshguard_testcluster::{TestCluster, TestClusterOptions};

type TestResult = Result<(), Box<dyn std::error::Error>>;

struct Rendered(PathBuf);

impl Rendered {
    fn new(tag: &str, yaml: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "meshguard-podsec-{tag}-{}.yaml",
            std::process::id()
        ));
        std::fs::write(&path, yaml).unwrap();
        Self(path)
    }
}

impl Drop for Rendered {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn rendering(namespace: &str, level: PodSecurity) -> Vec<DynamicObject> {
    let mut opts = RenderOptions::new(namespace);
    opts.pod_security = level;
    render(&meshguard_manifests::MeshSpec::reference(), &opts).unwrap()
}

/// The pods Istio's injector makes of the rendered Deployments.
fn injected(objects: &[DynamicObject], cni: bool, native: bool) -> Vec<Pod> {
    let file = Rendered::new(&format!("{cni}-{native}"), &to_yaml(objects).unwrap());
    let mut args = vec!["inject".as_ref(), file.0.as_os_str()];
    if cni {
        args.insert(1, "--cni".as_ref());
    }
    let env = [(
        "ENABLE_NATIVE_SIDECARS",
        if native { "true" } else { "false" },
    )];
    let out = run_raw_env(args, &env).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "injection failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    let pods: Vec<Pod> = serde_yaml::Deserializer::from_str(&yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    assert_eq!(pods.len(), 3);
    for p in &pods {
        let spec = p.spec.as_ref().unwrap();
        let names: Vec<&str> = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .map(|c| c.name.as_str())
            .collect();
        assert!(names.contains(&"istio-proxy"), "{names:?}");
        let init = if cni {
            "istio-validation"
        } else {
            "istio-init"
        };
        assert!(names.contains(&init), "cni={cni}: {names:?}");
    }
    pods
}

async fn namespace_with(client: &kube::Client, name: &str, level: PodSecurity) {
    let labels = BTreeMap::from([
        (
            "pod-security.kubernetes.io/enforce".to_owned(),
            level.as_str().to_owned(),
        ),
        (
            "pod-security.kubernetes.io/enforce-version".to_owned(),
            "latest".to_owned(),
        ),
    ]);
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

/// Dry-run creates each pod in `namespace`; the admission errors, if any.
async fn admit(client: &kube::Client, namespace: &str, pods: &[Pod]) -> Vec<String> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let mut refused = Vec::new();
    for p in pods {
        let mut pod = p.clone();
        pod.metadata.namespace = Some(namespace.to_owned());
        if let Err(e) = api.create(&params, &pod).await {
            refused.push(format!("{:?}: {e}", pod.metadata.name));
        }
    }
    refused
}

#[tokio::test]
async fn pod_security_admits_istios_injected_pods_only_where_meshctl_says() -> TestResult {
    let cluster = TestCluster::start(TestClusterOptions::default()).await?;
    let client = cluster.client().await?;

    // Which levels admit the injected pods.
    let objects = rendering("meshguard", PodSecurity::Restricted);
    for cni in [false, true] {
        for native in [false, true] {
            let pods = injected(&objects, cni, native);
            let mut admitted = Vec::new();
            for level in PodSecurity::ALL {
                let ns = format!("ps-{}-{}-{level}", u8::from(cni), u8::from(native));
                namespace_with(&client, &ns, level).await;
                let refused = admit(&client, &ns, &pods).await;
                if refused.is_empty() {
                    admitted.push(level);
                } else {
                    for r in &refused {
                        assert!(r.contains("violates PodSecurity"), "{r}");
                    }
                    if level == PodSecurity::Restricted && !cni {
                        let all = refused.join("\n");
                        for why in ["NET_ADMIN", "NET_RAW", "runAsNonRoot"] {
                            assert!(all.contains(why), "restricted refuses for {why}: {all}");
                        }
                    }
                }
            }
            let want = if cni {
                PodSecurity::ALL.to_vec()
            } else {
                vec![PodSecurity::Privileged]
            };
            assert_eq!(
                admitted, want,
                "levels admitting Istio's pods (cni={cni}, native sidecars={native})"
            );
            assert_eq!(admitted[0], PodSecurity::for_istio(cni));
        }
    }

    // What meshctl renders after reading the cluster's injector configuration is admitted.
    let system = Namespace {
        metadata: ObjectMeta {
            name: Some("istio-system".into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &system)
        .await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "istio-system");
    assert_eq!(detect_istio_cni(&client).await, IstioCni::NotFound);
    for cni in [false, true] {
        let args: &[&str] = if cni {
            &["injector-configmap", "--cni"]
        } else {
            &["injector-configmap"]
        };
        let mut cm: ConfigMap = serde_yaml::from_str(&run(args).unwrap_or_else(|e| panic!("{e}")))?;
        cm.metadata.namespace = Some("istio-system".into());
        cm.metadata.resource_version = None;
        config_maps
            .patch(
                "istio-sidecar-injector",
                &PatchParams::apply("istio-test").force(),
                &Patch::Apply(&cm),
            )
            .await?;
        let detected = detect_istio_cni(&client).await;
        match (&detected, cni) {
            (IstioCni::Enabled { .. }, true) | (IstioCni::Disabled { .. }, false) => {}
            other => panic!("detected {other:?}"),
        }
        let level = detected.pod_security();
        assert_eq!(level, PodSecurity::for_istio(cni));
        let ns = if cni { "mg-cni" } else { "mg-no-cni" };
        let objects = rendering(ns, level);
        let namespace: Namespace = serde_json::from_value(serde_json::to_value(&objects[0])?)?;
        assert_eq!(
            namespace.metadata.labels.as_ref().unwrap()["pod-security.kubernetes.io/enforce"],
            level.as_str()
        );
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await?;
        let refused = admit(&client, ns, &injected(&objects, cni, true)).await;
        assert!(refused.is_empty(), "cni={cni}, {level}: {refused:?}");
    }
    cluster.stop()?;
    Ok(())
}
