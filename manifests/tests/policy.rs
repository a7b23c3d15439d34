//! Policy tests over `render()`'s output: each checks one promise of the rendered objects, and
//! several check that a mistake of the seed's YAML is not repeated.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Namespace, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::DynamicObject;
use meshguard_manifests::{
    apply_order_kinds, kind_of, order_cpu_query, ownership_labels, render, required_crds, to_yaml,
    MeshSpec, Overrides, Profile, RenderError, RenderOptions, BOOTSTRAP_OVERRIDE_CONFIG_MAP,
    BOOTSTRAP_OVERRIDE_KEY, COMPONENT_KEY, GKE_ACCELERATOR_LABEL, GPU_RESOURCE, GPU_TAINT_KEY,
    NAME_KEY,
};
use meshguard_mesh::metrics::{request_rate_query, ENVOY_STAT_PREFIX, STATS_TAGS};
use meshguard_mesh::model::{ORDER_SERVICE, PAYMENT_SERVICE, USER_SERVICE};
use meshguard_mesh::{AuthzConfig, LogLevel, Mesh, MetricsConfig, Mode};
use serde_json::Value;

const NS: &str = "shop";
const SERVICES: [&str; 3] = [USER_SERVICE, ORDER_SERVICE, PAYMENT_SERVICE];

/// The policy model of the built-in mesh.
fn mesh() -> Mesh {
    MeshSpec::reference().mesh(NS).unwrap()
}

fn objects_with(opts: &RenderOptions) -> Vec<DynamicObject> {
    render(&MeshSpec::reference(), opts).unwrap()
}

/// The built-in mesh with `overrides` applied, as the command-line flags do.
fn objects_overridden(overrides: &Overrides, opts: &RenderOptions) -> Vec<DynamicObject> {
    let mut spec = MeshSpec::reference();
    spec.apply(overrides).unwrap();
    render(&spec, opts).unwrap()
}

fn image(service: &str, image: &str) -> Overrides {
    Overrides {
        images: vec![(format!("--{service}-image"), service.into(), image.into())],
        ..Overrides::default()
    }
}

fn objects() -> Vec<DynamicObject> {
    objects_with(&RenderOptions::new(NS))
}

fn kind(o: &DynamicObject) -> &str {
    &o.types.as_ref().unwrap().kind
}

fn name(o: &DynamicObject) -> &str {
    o.metadata.name.as_deref().unwrap()
}

fn of_kind<'a>(objects: &'a [DynamicObject], k: &str) -> Vec<&'a DynamicObject> {
    objects.iter().filter(|o| kind(o) == k).collect()
}

fn find<'a>(objects: &'a [DynamicObject], k: &str, n: &str) -> &'a DynamicObject {
    objects
        .iter()
        .find(|o| kind(o) == k && name(o) == n)
        .unwrap_or_else(|| panic!("no {k} {n}"))
}

fn typed<T: serde::de::DeserializeOwned>(o: &DynamicObject) -> T {
    serde_json::from_value(serde_json::to_value(o).unwrap()).unwrap()
}

fn all_typed<T: serde::de::DeserializeOwned>(objects: &[DynamicObject], k: &str) -> Vec<T> {
    of_kind(objects, k).into_iter().map(typed).collect()
}

fn pod_spec(d: &Deployment) -> &PodSpec {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn deployment(objects: &[DynamicObject], service: &str) -> Deployment {
    typed(find(objects, "Deployment", service))
}

// ---------------------------------------------------------------------------------------------
// Order, labels, kinds

#[test]
fn objects_come_in_apply_order_with_security_before_workloads() {
    let objects = objects();
    let order: Vec<&str> = apply_order_kinds().iter().map(|k| k.kind).collect();
    let positions: Vec<usize> = objects
        .iter()
        .map(|o| {
            let k = kind_of(o).unwrap_or_else(|| panic!("unknown kind {}", kind(o)));
            order.iter().position(|x| *x == k.kind).unwrap()
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] <= w[1]),
        "not in apply order: {:?}",
        objects.iter().map(kind).collect::<Vec<_>>()
    );
    assert_eq!(kind(&objects[0]), "Namespace");
    let first_deployment = objects
        .iter()
        .position(|o| kind(o) == "Deployment")
        .unwrap();
    for k in [
        "PeerAuthentication",
        "NetworkPolicy",
        "ConfigMap",
        "WasmPlugin",
    ] {
        let last = objects.iter().rposition(|o| kind(o) == k).unwrap();
        assert!(last < first_deployment, "{k} must precede the Deployments");
    }
}

#[test]
fn every_object_carries_ownership_name_and_component_labels() {
    let mut opts = RenderOptions::new(NS);
    opts.pod_monitor = true;
    for o in objects_with(&opts) {
        let labels = o.metadata.labels.clone().unwrap_or_default();
        for (k, v) in ownership_labels(NS) {
            assert_eq!(
                labels.get(&k),
                Some(&v),
                "{} {} lacks {k}",
                kind(&o),
                name(&o)
            );
        }
        assert!(labels.contains_key(NAME_KEY), "{} {}", kind(&o), name(&o));
        assert!(
            labels.contains_key(COMPONENT_KEY),
            "{} {}",
            kind(&o),
            name(&o)
        );
        let k = kind_of(&o).unwrap();
        if k.namespaced {
            assert_eq!(o.metadata.namespace.as_deref(), Some(NS), "{}", name(&o));
        } else {
            assert_eq!(o.metadata.namespace, None);
        }
        assert_eq!(o.types.as_ref().unwrap().api_version, k.api_version());
    }
}

#[test]
fn object_names_are_unique_per_kind() {
    let objects = objects();
    let mut seen = BTreeSet::new();
    for o in &objects {
        assert!(
            seen.insert((kind(o), name(o))),
            "{} {} twice",
            kind(o),
            name(o)
        );
    }
}

#[test]
fn required_crds_are_the_istio_and_keda_kinds() {
    let want: BTreeSet<String> = [
        "peerauthentications.security.istio.io",
        "scaledobjects.keda.sh",
        "wasmplugins.extensions.istio.io",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(required_crds(&objects()), want);
    let mut opts = RenderOptions::new(NS);
    opts.pod_monitor = true;
    let with_monitor = required_crds(&objects_with(&opts));
    assert!(with_monitor.contains("podmonitors.monitoring.coreos.com"));
    assert_eq!(with_monitor.len(), want.len() + 1);
}

// ---------------------------------------------------------------------------------------------
// Namespace, identities, RBAC

#[test]
fn namespace_injects_sidecars_and_enforces_restricted() {
    let ns: Namespace = typed(find(&objects(), "Namespace", NS));
    let labels = ns.metadata.labels.unwrap();
    assert_eq!(labels["istio-injection"], "enabled");
    for mode in ["enforce", "warn", "audit"] {
        assert_eq!(
            labels[&format!("pod-security.kubernetes.io/{mode}")],
            "restricted"
        );
        assert_eq!(
            labels[&format!("pod-security.kubernetes.io/{mode}-version")],
            "latest"
        );
    }
}

#[test]
fn no_rbac_and_no_mounted_tokens() {
    let objects = objects();
    for o in &objects {
        assert!(
            !["Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"].contains(&kind(o)),
            "the seed's Role must not come back: {} {}",
            kind(o),
            name(o)
        );
    }
    let accounts: Vec<ServiceAccount> = all_typed(&objects, "ServiceAccount");
    let names: Vec<_> = accounts
        .iter()
        .map(|a| a.metadata.name.clone().unwrap())
        .collect();
    let want: Vec<_> = mesh()
        .services
        .iter()
        .map(|s| s.service_account.clone())
        .collect();
    assert_eq!(names, want);
    assert!(accounts
        .iter()
        .all(|a| a.automount_service_account_token == Some(false)));
    for s in SERVICES {
        let d = deployment(&objects, s);
        let pod = pod_spec(&d);
        assert_eq!(pod.service_account_name.as_deref(), Some(s));
        assert_eq!(pod.automount_service_account_token, Some(false));
    }
}

// ---------------------------------------------------------------------------------------------
// Pod security

/// The checks of the Pod Security Standards' `restricted` profile (and `baseline`, which it
/// includes) that a Deployment's pod template can fail.
fn restricted_violations(pod: &PodSpec) -> Vec<String> {
    let mut v = Vec::new();
    let psc = pod.security_context.clone().unwrap_or_default();
    if pod.host_network == Some(true) || pod.host_pid == Some(true) || pod.host_ipc == Some(true) {
        v.push("host namespaces".to_owned());
    }
    if psc.run_as_user == Some(0) {
        v.push("pod runAsUser 0".to_owned());
    }
    let pod_seccomp_ok = psc
        .seccomp_profile
        .as_ref()
        .is_some_and(|s| s.type_ == "RuntimeDefault" || s.type_ == "Localhost");
    let allowed_volumes = |vol: &k8s_openapi::api::core::v1::Volume| {
        vol.config_map.is_some()
            || vol.csi.is_some()
            || vol.downward_api.is_some()
            || vol.empty_dir.is_some()
            || vol.ephemeral.is_some()
            || vol.persistent_volume_claim.is_some()
            || vol.projected.is_some()
            || vol.secret.is_some()
    };
    for vol in pod.volumes.iter().flatten() {
        if !allowed_volumes(vol) {
            v.push(format!("volume {} of a disallowed type", vol.name));
        }
    }
    let containers = pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten());
    for c in containers {
        let sc = c.security_context.clone().unwrap_or_default();
        let n = &c.name;
        if sc.privileged == Some(true) {
            v.push(format!("{n}: privileged"));
        }
        if sc.allow_privilege_escalation != Some(false) {
            v.push(format!("{n}: allowPrivilegeEscalation not false"));
        }
        let caps = sc.capabilities.clone().unwrap_or_default();
        if !caps.drop.unwrap_or_default().iter().any(|d| d == "ALL") {
            v.push(format!("{n}: capabilities not dropping ALL"));
        }
        if caps
            .add
            .unwrap_or_default()
            .iter()
            .any(|a| a != "NET_BIND_SERVICE")
        {
            v.push(format!("{n}: adds capabilities"));
        }
        let non_root = sc.run_as_non_root.or(psc.run_as_non_root);
        if non_root != Some(true) {
            v.push(format!("{n}: runAsNonRoot not true"));
        }
        if sc.run_as_user == Some(0) {
            v.push(format!("{n}: runAsUser 0"));
        }
        let seccomp_ok = match &sc.seccomp_profile {
            Some(s) => s.type_ == "RuntimeDefault" || s.type_ == "Localhost",
            None => pod_seccomp_ok,
        };
        if !seccomp_ok {
            v.push(format!("{n}: no RuntimeDefault/Localhost seccomp profile"));
        }
        if c.ports.iter().flatten().any(|p| p.host_port.is_some()) {
            v.push(format!("{n}: hostPort"));
        }
    }
    v
}

#[test]
fn every_pod_is_restricted_compliant_and_hardened() {
    for profile in Profile::ALL {
        let mut opts = RenderOptions::new(NS);
        opts.profile = profile;
        let objects = objects_with(&opts);
        let deployments: Vec<Deployment> = all_typed(&objects, "Deployment");
        assert_eq!(deployments.len(), 3);
        for d in &deployments {
            let pod = pod_spec(d);
            assert_eq!(restricted_violations(pod), Vec::<String>::new());
            // Beyond `restricted`: a non-zero UID set explicitly (runAsNonRoot alone fails at
            // runtime for images whose USER is root), a read-only root with a writable /tmp.
            let psc = pod.security_context.as_ref().unwrap();
            assert!(psc.run_as_user.unwrap() > 0);
            for c in &pod.containers {
                let sc = c.security_context.as_ref().unwrap();
                assert_eq!(sc.read_only_root_filesystem, Some(true));
                let mounts = c.volume_mounts.as_ref().unwrap();
                assert!(mounts.iter().any(|m| m.mount_path == "/tmp"));
            }
        }
    }
}

#[test]
fn the_checker_catches_what_the_seed_did() {
    // The seed's payment-service pod: no security context at all.
    let seed: PodSpec = serde_json::from_value(serde_json::json!({
        "containers": [{"name": "payment-service", "image": "x", "ports": [{"containerPort": 5000}]}]
    }))
    .unwrap();
    let v = restricted_violations(&seed);
    assert!(v.iter().any(|m| m.contains("allowPrivilegeEscalation")));
    assert!(v.iter().any(|m| m.contains("runAsNonRoot")));
    assert!(v.iter().any(|m| m.contains("seccomp")));
    assert!(v.iter().any(|m| m.contains("ALL")));
}

// ---------------------------------------------------------------------------------------------
// Workloads

#[test]
fn deployments_services_and_probes() {
    let mut opts = RenderOptions::new(NS);
    opts.health_path = "/ready".into();
    let objects = objects_overridden(&image(ORDER_SERVICE, "registry.example/order:1.2.3"), &opts);
    let reference = MeshSpec::reference();
    for s in SERVICES {
        let d = deployment(&objects, s);
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(
            spec.selector.match_labels.as_ref().unwrap(),
            &BTreeMap::from([(NAME_KEY.to_owned(), s.to_owned())])
        );
        let template = spec.template.metadata.as_ref().unwrap();
        assert_eq!(template.labels.as_ref().unwrap()[NAME_KEY], s);
        let proxy_config: Value =
            serde_json::from_str(&template.annotations.as_ref().unwrap()["proxy.istio.io/config"])
                .unwrap();
        assert_eq!(
            proxy_config["proxyStatsMatcher"]["inclusionPrefixes"],
            serde_json::json!([ENVOY_STAT_PREFIX])
        );
        assert!(
            proxy_config.get("proxyMetadata").is_none(),
            "no agent settings Istio no longer reads"
        );
        assert_eq!(
            template.annotations.as_ref().unwrap()["sidecar.istio.io/bootstrapOverride"],
            BOOTSTRAP_OVERRIDE_CONFIG_MAP
        );

        let c = &pod_spec(&d).containers[0];
        if s != ORDER_SERVICE {
            assert_eq!(
                c.image.as_deref(),
                Some(reference.service(s).unwrap().image.as_str())
            );
        }
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        let port = &c.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.container_port),
            (Some("http"), 5000)
        );
        for probe in [&c.readiness_probe, &c.liveness_probe] {
            let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
            assert_eq!(get.path.as_deref(), Some("/ready"));
            assert_eq!(get.port, IntOrString::Int(5000));
        }
        let res = c.resources.as_ref().unwrap();
        for key in ["cpu", "memory"] {
            assert!(
                res.requests.as_ref().unwrap().contains_key(key),
                "{s} {key}"
            );
            assert!(res.limits.as_ref().unwrap().contains_key(key), "{s} {key}");
        }

        let svc: Service = typed(find(&objects, "Service", s));
        let svc = svc.spec.unwrap();
        assert_eq!(svc.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(svc.selector.unwrap()[NAME_KEY], s);
        let p = &svc.ports.unwrap()[0];
        assert_eq!(
            (p.name.as_deref(), p.port, p.app_protocol.as_deref()),
            (Some("http"), 5000, Some("http"))
        );
    }
    assert_eq!(
        pod_spec(&deployment(&objects, ORDER_SERVICE)).containers[0]
            .image
            .as_deref(),
        Some("registry.example/order:1.2.3")
    );
}

#[test]
fn callers_get_plain_http_urls_of_their_callees() {
    let objects = objects();
    let env = |s: &str| {
        pod_spec(&deployment(&objects, s)).containers[0]
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.name, e.value.unwrap()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        env(USER_SERVICE),
        vec![(
            "ORDER_SERVICE_URL".to_owned(),
            format!("http://order-service.{NS}.svc.cluster.local:5000")
        )]
    );
    assert_eq!(env(ORDER_SERVICE)[0].0, "PAYMENT_SERVICE_URL");
    assert!(env(PAYMENT_SERVICE).is_empty());
}

#[test]
fn autoscaled_deployments_leave_replicas_to_the_autoscaler() {
    let objects = objects();
    let replicas = |s: &str| deployment(&objects, s).spec.unwrap().replicas;
    assert_eq!(replicas(ORDER_SERVICE), None);
    assert_eq!(replicas(USER_SERVICE), None);
    assert_eq!(replicas(PAYMENT_SERVICE), Some(1));
}

#[test]
fn disruption_budgets_never_block_a_drain() {
    let pdbs: Vec<PodDisruptionBudget> = all_typed(&objects(), "PodDisruptionBudget");
    assert_eq!(pdbs.len(), 3);
    for p in pdbs {
        let spec = p.spec.unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(spec.min_available, None);
        let s = p.metadata.name.unwrap();
        assert_eq!(spec.selector.unwrap().match_labels.unwrap()[NAME_KEY], s);
    }
}

// ---------------------------------------------------------------------------------------------
// GPU scheduling

fn node_requirements(pod: &PodSpec) -> Vec<(String, String, Vec<String>)> {
    let terms = &pod
        .affinity
        .as_ref()
        .unwrap()
        .node_affinity
        .as_ref()
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap()
        .node_selector_terms;
    assert_eq!(terms.len(), 1);
    terms[0]
        .match_expressions
        .clone()
        .unwrap()
        .into_iter()
        .map(|r| (r.key, r.operator, r.values.unwrap_or_default()))
        .collect()
}

fn tolerates_gpu(pod: &PodSpec) -> bool {
    pod.tolerations.iter().flatten().any(|t| {
        t.key.as_deref() == Some(GPU_TAINT_KEY)
            || (t.key.is_none() && t.operator.as_deref() == Some("Exists"))
    })
}

#[test]
fn only_payment_service_goes_to_gpu_nodes_everything_else_stays_off() {
    let cases = [
        (
            Profile::Local,
            ("gpu", "In", vec!["true"]),
            ("gpu", "NotIn", vec!["true"]),
        ),
        (
            Profile::Gke,
            (GKE_ACCELERATOR_LABEL, "Exists", vec![]),
            (GKE_ACCELERATOR_LABEL, "DoesNotExist", vec![]),
        ),
    ];
    for (profile, on_gpu, off_gpu) in cases {
        let own = |(k, o, v): &(&str, &str, Vec<&str>)| {
            vec![(
                (*k).to_owned(),
                (*o).to_owned(),
                v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
            )]
        };
        let mut opts = RenderOptions::new(NS);
        opts.profile = profile;
        let objects = objects_with(&opts);
        for d in all_typed::<Deployment>(&objects, "Deployment") {
            let s = d.metadata.name.clone().unwrap();
            let pod = pod_spec(&d);
            let c = &pod.containers[0];
            let res = c.resources.as_ref().unwrap();
            let gpu_req = res.requests.as_ref().unwrap().get(GPU_RESOURCE);
            let gpu_lim = res.limits.as_ref().unwrap().get(GPU_RESOURCE);
            if s == PAYMENT_SERVICE {
                assert_eq!(node_requirements(pod), own(&on_gpu), "{profile}");
                assert!(tolerates_gpu(pod));
                let t = &pod.tolerations.as_ref().unwrap()[0];
                assert_eq!(t.operator.as_deref(), Some("Exists"));
                assert_eq!(t.effect.as_deref(), Some("NoSchedule"));
                assert_eq!(gpu_req.map(|q| q.0.as_str()), Some("1"));
                assert_eq!(gpu_lim.map(|q| q.0.as_str()), Some("1"));
                // A GPU pod cannot surge onto a second GPU.
                let ru = d
                    .spec
                    .as_ref()
                    .unwrap()
                    .strategy
                    .clone()
                    .unwrap()
                    .rolling_update
                    .unwrap();
                assert_eq!(ru.max_surge, Some(IntOrString::Int(0)));
            } else {
                assert_eq!(node_requirements(pod), own(&off_gpu), "{profile} {s}");
                assert!(!tolerates_gpu(pod), "{s} must not tolerate the GPU taint");
                assert!(gpu_req.is_none() && gpu_lim.is_none());
            }
        }
    }
}

#[test]
fn without_gpus_payment_service_schedules_anywhere_but_gpu_nodes() {
    let objects = objects_overridden(
        &Overrides {
            no_gpu: true,
            ..Overrides::default()
        },
        &RenderOptions::new(NS),
    );
    let d = deployment(&objects, PAYMENT_SERVICE);
    let pod = pod_spec(&d);
    assert!(!tolerates_gpu(pod));
    assert_eq!(node_requirements(pod)[0].1, "NotIn");
    let res = pod.containers[0].resources.as_ref().unwrap();
    assert!(!res.limits.as_ref().unwrap().contains_key(GPU_RESOURCE));
}

#[test]
fn profiles_differ_only_in_node_affinity() {
    let strip = |objects: Vec<DynamicObject>| -> Vec<Value> {
        objects
            .into_iter()
            .map(|o| {
                let mut v = serde_json::to_value(&o).unwrap();
                if kind(&o) == "Deployment" {
                    v["spec"]["template"]["spec"]
                        .as_object_mut()
                        .unwrap()
                        .remove("affinity");
                }
                v
            })
            .collect()
    };
    let local = objects();
    let mut gke = RenderOptions::new(NS);
    gke.profile = Profile::Gke;
    let gke = objects_with(&gke);
    assert_ne!(
        serde_json::to_value(&local).unwrap(),
        serde_json::to_value(&gke).unwrap()
    );
    assert_eq!(strip(local), strip(gke));
}

// ---------------------------------------------------------------------------------------------
// Istio

#[test]
fn mtls_is_strict_for_the_namespace() {
    let objects = objects();
    let pa = of_kind(&objects, "PeerAuthentication");
    assert_eq!(pa.len(), 1);
    assert_eq!(name(pa[0]), "default");
    assert_eq!(
        pa[0].data["spec"],
        serde_json::json!({"mtls": {"mode": "STRICT"}})
    );
}

#[test]
fn bootstrap_override_config_map_holds_the_stats_tags() {
    let objects = objects();
    assert!(of_kind(&objects, "EnvoyFilter").is_empty());
    let maps = of_kind(&objects, "ConfigMap");
    assert_eq!(maps.len(), 1);
    assert_eq!(name(maps[0]), BOOTSTRAP_OVERRIDE_CONFIG_MAP);
    let data = maps[0].data["data"].as_object().unwrap();
    assert_eq!(data.len(), 1, "only the key Istio's injector mounts");
    let bootstrap: Value =
        serde_json::from_str(data[BOOTSTRAP_OVERRIDE_KEY].as_str().unwrap()).unwrap();
    assert_eq!(bootstrap.as_object().unwrap().len(), 1, "only stats_config");
    let tags = bootstrap["stats_config"]["stats_tags"].as_array().unwrap();
    assert_eq!(tags.len(), STATS_TAGS.len());
    for (t, want) in tags.iter().zip(STATS_TAGS) {
        assert_eq!(t["tag_name"], want.tag_name);
        assert_eq!(t["regex"], want.regex);
    }
}

fn plugin<'a>(objects: &'a [DynamicObject], n: &str) -> &'a Value {
    &find(objects, "WasmPlugin", n).data["spec"]
}

#[test]
fn wasm_plugins_per_service_carry_the_model_config() {
    let mut opts = RenderOptions::new(NS);
    opts.authz_mode = Mode::DryRun;
    opts.log_level = LogLevel::Debug;
    opts.authz_module_url = "oci://registry.example/meshguard/authz:1".into();
    opts.metrics_module_url = "https://files.example/metrics.wasm".into();
    let objects = objects_with(&opts);
    let mesh = mesh();
    assert_eq!(of_kind(&objects, "WasmPlugin").len(), 2 * SERVICES.len());
    for s in SERVICES {
        let authz = plugin(&objects, &format!("{s}-authz"));
        assert_eq!(authz["phase"], "AUTHZ");
        assert_eq!(authz["failStrategy"], "FAIL_RELOAD");
        assert_eq!(authz["url"], opts.authz_module_url.as_str());
        assert_eq!(authz["selector"]["matchLabels"][NAME_KEY], s);
        assert_eq!(
            authz["match"],
            serde_json::json!([{"mode": "SERVER", "ports": [{"number": 5000}]}])
        );
        // A structured object, not a JSON string, and exactly what the filter will parse.
        assert!(authz["pluginConfig"].is_object());
        let raw = serde_json::to_vec(&authz["pluginConfig"]).unwrap();
        let parsed = AuthzConfig::from_json(&raw).unwrap();
        assert_eq!(
            parsed,
            mesh.authz_config(s, Mode::DryRun, LogLevel::Debug).unwrap()
        );
        assert!(authz.get("sha256").is_none());

        let metrics = plugin(&objects, &format!("{s}-metrics"));
        assert_eq!(metrics["phase"], "STATS");
        assert_eq!(metrics["url"], opts.metrics_module_url.as_str());
        assert_eq!(metrics["selector"]["matchLabels"][NAME_KEY], s);
        let raw = serde_json::to_vec(&metrics["pluginConfig"]).unwrap();
        assert_eq!(
            MetricsConfig::from_json(&raw).unwrap(),
            mesh.metrics_config(s, LogLevel::Debug).unwrap()
        );
    }
    // The call graph, as the filters will enforce it.
    let allowed = |s: &str| {
        let raw =
            serde_json::to_vec(&plugin(&objects, &format!("{s}-authz"))["pluginConfig"]).unwrap();
        AuthzConfig::from_json(&raw)
            .unwrap()
            .allow
            .into_iter()
            .map(|a| a.service)
            .collect::<Vec<_>>()
    };
    assert_eq!(allowed(USER_SERVICE), Vec::<String>::new());
    assert_eq!(allowed(ORDER_SERVICE), vec![USER_SERVICE]);
    assert_eq!(allowed(PAYMENT_SERVICE), vec![ORDER_SERVICE]);
}

#[test]
fn module_digests_and_pull_secret_are_passed_to_istio() {
    let mut opts = RenderOptions::new(NS);
    opts.authz_module_sha256 = Some("ab".repeat(32));
    opts.metrics_module_sha256 = Some("cd".repeat(32));
    opts.module_pull_secret = Some("wasm-pull".into());
    let objects = objects_with(&opts);
    for s in SERVICES {
        let authz = plugin(&objects, &format!("{s}-authz"));
        assert_eq!(authz["sha256"], "ab".repeat(32));
        assert_eq!(authz["imagePullSecret"], "wasm-pull");
        assert_eq!(
            plugin(&objects, &format!("{s}-metrics"))["sha256"],
            "cd".repeat(32)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Autoscaling

#[test]
fn order_service_hpa_matches_the_seed_with_explicit_behavior() {
    let objects = objects();
    let hpas: Vec<HorizontalPodAutoscaler> = all_typed(&objects, "HorizontalPodAutoscaler");
    assert_eq!(
        hpas.len(),
        1,
        "KEDA owns user-service's HPA; only order-service has ours"
    );
    let spec = hpas[0].spec.clone().unwrap();
    assert_eq!(spec.scale_target_ref.kind, "Deployment");
    assert_eq!(spec.scale_target_ref.name, ORDER_SERVICE);
    assert_eq!((spec.min_replicas, spec.max_replicas), (Some(1), 10));
    let metrics = spec.metrics.unwrap();
    assert_eq!(metrics.len(), 1);
    let r = metrics[0].resource.as_ref().unwrap();
    assert_eq!(r.name, "cpu");
    assert_eq!(r.target.type_, "Utilization");
    assert_eq!(r.target.average_utilization, Some(75));
    let b = spec.behavior.unwrap();
    let up = b.scale_up.unwrap();
    assert_eq!(up.stabilization_window_seconds, Some(0));
    assert_eq!(up.select_policy.as_deref(), Some("Max"));
    let up_policies: Vec<_> = up
        .policies
        .unwrap()
        .into_iter()
        .map(|p| (p.type_, p.value, p.period_seconds))
        .collect();
    assert_eq!(
        up_policies,
        vec![("Percent".into(), 100, 15), ("Pods".into(), 4, 15)]
    );
    let down = b.scale_down.unwrap();
    assert_eq!(down.stabilization_window_seconds, Some(300));
    let p = &down.policies.unwrap()[0];
    assert_eq!(
        (p.type_.as_str(), p.value, p.period_seconds),
        ("Percent", 50, 60)
    );
    // CPU utilization is measured against requests: every container has them.
    let d = deployment(&objects, ORDER_SERVICE);
    assert!(pod_spec(&d).containers[0]
        .resources
        .as_ref()
        .unwrap()
        .requests
        .as_ref()
        .unwrap()
        .contains_key("cpu"));
}

#[test]
fn keda_scales_user_service_on_the_rate_of_order_service_cpu() {
    let objects = objects();
    let so = of_kind(&objects, "ScaledObject");
    assert_eq!(so.len(), 1);
    let spec = &so[0].data["spec"];
    assert_eq!(spec["scaleTargetRef"]["name"], USER_SERVICE);
    assert_eq!(spec["minReplicaCount"], 1);
    assert_eq!(spec["maxReplicaCount"], 4);
    assert!(spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"].is_object());
    let triggers = spec["triggers"].as_array().unwrap();
    assert_eq!(triggers.len(), 1);
    let t = &triggers[0];
    assert_eq!(t["type"], "prometheus");
    let m = t["metadata"].as_object().unwrap();
    assert!(!m.contains_key("metricName"), "metricName is deprecated");
    let query = m["query"].as_str().unwrap();
    assert_eq!(query, order_cpu_query(NS));
    assert!(
        query.contains("rate(container_cpu_usage_seconds_total{"),
        "{query}"
    );
    assert!(query.contains(&format!("namespace=\"{NS}\"")));
    assert!(query.contains("pod=~\"order-service-.*\""));
    assert!(query.contains("container!=\"\"") && query.contains("container!=\"POD\""));
    assert_ne!(
        query,
        "sum(container_cpu_usage_seconds_total{pod=~\"order-service-.*\"})"
    );
    assert_eq!(
        m["serverAddress"],
        RenderOptions::new(NS).prometheus_address.as_str()
    );
    // A threshold in cores, not the seed's '1000'.
    let threshold: f64 = m["threshold"].as_str().unwrap().parse().unwrap();
    assert!(threshold > 0.0 && threshold < 4.0, "{threshold}");
    assert!(m.contains_key("activationThreshold"));
    // All metadata values are strings (KEDA's schema: map of strings).
    assert!(m.values().all(Value::is_string));
    // And nowhere in the whole rendering.
    assert!(!to_yaml(&objects).unwrap().contains("metricName"));
}

#[test]
fn keda_adds_the_request_rate_trigger_when_asked() {
    let mut opts = RenderOptions::new(NS);
    opts.prometheus_address = "http://prometheus.example:9090".into();
    let objects = objects_overridden(
        &Overrides {
            request_rate_threshold: Some("25".into()),
            cpu_threshold: Some("0.75".into()),
            ..Overrides::default()
        },
        &opts,
    );
    let triggers = of_kind(&objects, "ScaledObject")[0].data["spec"]["triggers"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(triggers.len(), 2);
    assert_eq!(triggers[0]["metadata"]["threshold"], "0.75");
    let rate = &triggers[1]["metadata"];
    assert_eq!(
        rate["query"],
        request_rate_query(NS, ORDER_SERVICE).as_str()
    );
    assert_eq!(rate["threshold"], "25");
    assert_eq!(rate["serverAddress"], "http://prometheus.example:9090");
    assert!(rate.get("metricName").is_none());
}

// ---------------------------------------------------------------------------------------------
// Network policies

fn policies(objects: &[DynamicObject]) -> Vec<NetworkPolicy> {
    all_typed(objects, "NetworkPolicy")
}

/// The service a policy's pod selector names, or `*` for every pod.
fn selected(p: &NetworkPolicy) -> String {
    let sel = p
        .spec
        .as_ref()
        .unwrap()
        .pod_selector
        .clone()
        .unwrap_or_default();
    match sel.match_labels {
        Some(l) if !l.is_empty() => l[NAME_KEY].clone(),
        _ => "*".to_owned(),
    }
}

/// Same-namespace pods (by service name) a peer list admits.
fn pod_peers(peers: &[NetworkPolicyPeer]) -> Vec<String> {
    peers
        .iter()
        .filter(|p| p.namespace_selector.is_none() && p.ip_block.is_none())
        .map(|p| {
            p.pod_selector
                .clone()
                .and_then(|s| s.match_labels)
                .map_or_else(|| "*".to_owned(), |l| l[NAME_KEY].clone())
        })
        .collect()
}

fn ports(ports: &Option<Vec<NetworkPolicyPort>>) -> Vec<(String, i32)> {
    ports
        .iter()
        .flatten()
        .map(|p| {
            let n = match p.port.clone().unwrap() {
                IntOrString::Int(n) => n,
                IntOrString::String(s) => panic!("named port {s}"),
            };
            (p.protocol.clone().unwrap(), n)
        })
        .collect()
}

#[test]
fn default_deny_covers_every_pod_in_both_directions() {
    let ps = policies(&objects());
    let deny = ps
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("default-deny"))
        .unwrap();
    let spec = deny.spec.as_ref().unwrap();
    assert_eq!(selected(deny), "*");
    assert_eq!(
        spec.policy_types.clone().unwrap(),
        vec!["Ingress".to_owned(), "Egress".to_owned()]
    );
    assert!(spec.ingress.clone().unwrap_or_default().is_empty());
    assert!(spec.egress.clone().unwrap_or_default().is_empty());
}

/// (from, to, ports) between the mesh's pods admitted by ingress rules, and allowed by egress
/// rules.
type Edges = BTreeSet<(String, String, Vec<(String, i32)>)>;

fn pod_edges(objects: &[DynamicObject]) -> (Edges, Edges) {
    let ps = policies(objects);
    let mut ingress = BTreeSet::new();
    let mut egress = BTreeSet::new();
    for p in &ps {
        let target = selected(p);
        let spec = p.spec.as_ref().unwrap();
        for rule in spec.ingress.iter().flatten() {
            for from in pod_peers(rule.from.as_deref().unwrap_or_default()) {
                ingress.insert((from, target.clone(), ports(&rule.ports)));
            }
        }
        for rule in spec.egress.iter().flatten() {
            for to in pod_peers(rule.to.as_deref().unwrap_or_default()) {
                egress.insert((target.clone(), to, ports(&rule.ports)));
            }
        }
    }
    (ingress, egress)
}

#[test]
fn pod_to_pod_allows_follow_the_call_direction() {
    let (ingress, egress) = pod_edges(&objects());
    let http = vec![("TCP".to_owned(), 5000)];
    let want: BTreeSet<_> = [
        (
            USER_SERVICE.to_owned(),
            ORDER_SERVICE.to_owned(),
            http.clone(),
        ),
        (ORDER_SERVICE.to_owned(), PAYMENT_SERVICE.to_owned(), http),
    ]
    .into_iter()
    .collect();
    assert_eq!(ingress, want, "ingress between pods");
    assert_eq!(egress, want, "egress between pods");
    // The seed's `allow-order-to-user` (user-service admitting order-service) is gone.
    assert!(!ingress
        .iter()
        .any(|(from, to, _)| from == ORDER_SERVICE && to == USER_SERVICE));
}

#[test]
fn infrastructure_paths_are_open_and_narrow() {
    let mut opts = RenderOptions::new(NS);
    opts.authz_module_url = "oci://registry.example:5443/a:1".into();
    opts.metrics_module_url = "https://files.example/m.wasm".into();
    opts.module_fetch_cidrs = vec!["198.51.100.0/24".into()];
    opts.monitoring_namespace = "observability".into();
    let ps = policies(&objects_with(&opts));
    let by_name = |n: &str| {
        ps.iter()
            .find(|p| p.metadata.name.as_deref() == Some(n))
            .unwrap_or_else(|| panic!("no policy {n}"))
            .spec
            .clone()
            .unwrap()
    };
    let ns_of = |peer: &NetworkPolicyPeer| {
        peer.namespace_selector
            .clone()
            .unwrap()
            .match_labels
            .unwrap()["kubernetes.io/metadata.name"]
            .clone()
    };

    let dns = &by_name("allow-dns-egress").egress.unwrap()[0];
    assert_eq!(ns_of(&dns.to.as_ref().unwrap()[0]), "kube-system");
    assert_eq!(
        ports(&dns.ports),
        vec![("UDP".into(), 53), ("TCP".into(), 53)]
    );

    let istiod = &by_name("allow-istiod-egress").egress.unwrap()[0];
    let peer = &istiod.to.as_ref().unwrap()[0];
    assert_eq!(ns_of(peer), "istio-system");
    assert_eq!(
        peer.pod_selector.clone().unwrap().match_labels.unwrap()["app"],
        "istiod"
    );
    assert_eq!(ports(&istiod.ports), vec![("TCP".into(), 15012)]);

    let fetch = &by_name("allow-wasm-module-fetch").egress.unwrap()[0];
    assert_eq!(
        fetch.to.as_ref().unwrap()[0].ip_block.clone().unwrap().cidr,
        "198.51.100.0/24"
    );
    assert_eq!(
        ports(&fetch.ports),
        vec![("TCP".into(), 443), ("TCP".into(), 5443)]
    );

    let scrape = &by_name("allow-prometheus-scrape").ingress.unwrap()[0];
    assert_eq!(ns_of(&scrape.from.as_ref().unwrap()[0]), "observability");
    assert_eq!(
        ports(&scrape.ports),
        vec![("TCP".into(), 15020), ("TCP".into(), 15090)]
    );

    // No module egress when nothing has to be fetched.
    let mut local = RenderOptions::new(NS);
    local.authz_module_url = "file:///var/lib/wasm/authz.wasm".into();
    local.metrics_module_url = "file:///var/lib/wasm/metrics.wasm".into();
    assert!(policies(&objects_with(&local))
        .iter()
        .all(|p| p.metadata.name.as_deref() != Some("allow-wasm-module-fetch")));
}

// ---------------------------------------------------------------------------------------------
// Options

#[test]
fn bad_options_are_refused_with_the_field_named() {
    let field_of = |f: &dyn Fn(&mut RenderOptions)| {
        let mut opts = RenderOptions::new(NS);
        f(&mut opts);
        match render(&MeshSpec::reference(), &opts) {
            Err(RenderError::Option { field, .. }) => field,
            other => panic!("expected an option error, got {other:?}"),
        }
    };
    assert_eq!(field_of(&|o| o.namespace = "Bad_NS".into()), "namespace");
    assert_eq!(
        field_of(&|o| o.authz_module_sha256 = Some("ABC".into())),
        "authz_module_sha256"
    );
    assert_eq!(
        field_of(&|o| o.metrics_module_url = "ftp://x/y".into()),
        "metrics_module_url"
    );
    assert_eq!(
        field_of(&|o| o.health_path = "healthz".into()),
        "health_path"
    );
    assert_eq!(
        field_of(&|o| o.module_fetch_cidrs = vec!["10.0.0.0".into()]),
        "module_fetch_cidrs"
    );
    assert_eq!(
        field_of(&|o| o.prometheus_address = "prometheus:9090".into()),
        "prometheus_address"
    );
}

#[test]
fn pod_monitor_scrapes_only_meshguard_sidecars() {
    let mut opts = RenderOptions::new(NS);
    opts.pod_monitor = true;
    let objects = objects_with(&opts);
    assert_eq!(kind(objects.last().unwrap()), "PodMonitor");
    let spec = &objects.last().unwrap().data["spec"];
    assert_eq!(spec["podMetricsEndpoints"][0]["port"], "http-envoy-prom");
    assert_eq!(spec["podMetricsEndpoints"][0]["path"], "/stats/prometheus");
    assert_eq!(
        spec["selector"]["matchLabels"]["app.kubernetes.io/instance"],
        NS
    );
    assert!(of_kind(&self::objects(), "PodMonitor").is_empty());
}

#[test]
fn pods_carry_istios_canonical_revision_from_the_image_tag() {
    use meshguard_manifests::{image_version, VERSION_KEY};
    assert_eq!(image_version("gcr.io/p/user-service:1.4.2"), "1.4.2");
    assert_eq!(image_version("localhost:5000/user-service"), "latest");
    assert_eq!(image_version("r/user-service:v1@sha256:abc"), "v1");
    assert_eq!(image_version("r/user-service:-bad-"), "latest");
    let objects = objects_overridden(
        &image(ORDER_SERVICE, "registry.example/shop/order-service:2.0.1"),
        &RenderOptions::new(NS),
    );
    let d = deployment(&objects, "order-service");
    let labels = d.spec.unwrap().template.metadata.unwrap().labels.unwrap();
    assert_eq!(labels[VERSION_KEY], "2.0.1");
}

#[test]
fn pod_security_enforce_follows_the_option_and_warn_and_audit_stay_restricted() {
    use meshguard_manifests::PodSecurity;
    assert_eq!(PodSecurity::for_istio(true), PodSecurity::Restricted);
    assert_eq!(PodSecurity::for_istio(false), PodSecurity::Privileged);
    assert_eq!(
        "baseline".parse::<PodSecurity>().unwrap(),
        PodSecurity::Baseline
    );
    assert!("root".parse::<PodSecurity>().is_err());
    let mut opts = RenderOptions::new(NS);
    opts.pod_security = PodSecurity::Privileged;
    let objects = objects_with(&opts);
    let labels = objects[0].metadata.labels.clone().unwrap();
    assert_eq!(labels["pod-security.kubernetes.io/enforce"], "privileged");
    assert_eq!(labels["pod-security.kubernetes.io/warn"], "restricted");
    assert_eq!(labels["pod-security.kubernetes.io/audit"], "restricted");
}

// ---------------------------------------------------------------------------------------------
// A fourth service, from the mesh file in docs/

const INVENTORY: &str = "inventory-service";

fn four_services() -> MeshSpec {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/examples/four-services.yaml");
    meshguard_manifests::MeshFile::read(&path).unwrap().spec
}

fn four_objects() -> Vec<DynamicObject> {
    render(&four_services(), &RenderOptions::new(NS)).unwrap()
}

/// The NetworkPolicies' truth table over every ordered pair of the four services: a pod may open
/// a connection to another exactly when the mesh file names that call, only on the callee's port,
/// and only when both the caller's egress and the callee's ingress allow it.
#[test]
fn network_policy_truth_table_of_four_services() {
    let spec = four_services();
    let objects = four_objects();
    let (ingress, egress) = pod_edges(&objects);
    let names: Vec<&str> = spec.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names.len(), 4);
    for from in &names {
        for to in &names {
            let port = i32::from(spec.service(to).unwrap().port);
            let want = spec.calls.iter().any(|c| c.from == *from && c.to == *to);
            let edge = (
                (*from).to_owned(),
                (*to).to_owned(),
                vec![("TCP".to_owned(), port)],
            );
            assert_eq!(ingress.contains(&edge), want, "ingress {from} -> {to}");
            assert_eq!(egress.contains(&edge), want, "egress {from} -> {to}");
        }
    }
    // Nothing else between pods, on any port.
    assert_eq!(ingress.len(), spec.calls.len());
    assert_eq!(egress.len(), spec.calls.len());
}

#[test]
fn a_fourth_service_gets_identity_filters_scaling_and_placement() {
    let objects = four_objects();
    // Identity.
    let accounts: Vec<ServiceAccount> = all_typed(&objects, "ServiceAccount");
    assert!(accounts
        .iter()
        .any(|a| a.metadata.name.as_deref() == Some(INVENTORY)));
    let d = deployment(&objects, INVENTORY);
    let pod = pod_spec(&d);
    assert_eq!(pod.service_account_name.as_deref(), Some(INVENTORY));
    assert!(restricted_violations(pod).is_empty());
    // Both filters, configured from the call graph: only order-service, only GET under /stock.
    let authz = plugin(&objects, &format!("{INVENTORY}-authz"));
    assert_eq!(
        authz["match"],
        serde_json::json!([{"mode": "SERVER", "ports": [{"number": 8080}]}])
    );
    let config =
        AuthzConfig::from_json(&serde_json::to_vec(&authz["pluginConfig"]).unwrap()).unwrap();
    assert_eq!(config.workload, INVENTORY);
    assert_eq!(config.allow.len(), 1);
    assert_eq!(config.allow[0].service, ORDER_SERVICE);
    assert_eq!(config.allow[0].methods, ["GET"]);
    assert_eq!(config.allow[0].path_prefixes, ["/stock"]);
    plugin(&objects, &format!("{INVENTORY}-metrics"));
    // order-service learns where it is.
    let order = deployment(&objects, ORDER_SERVICE);
    let env = pod_spec(&order).containers[0].env.clone().unwrap();
    assert!(env.iter().any(|e| e.name == "INVENTORY_SERVICE_URL"
        && e.value.as_deref() == Some("http://inventory-service.shop.svc.cluster.local:8080")));
    // Its own port, resources and placement: the CPU pool, off GPU nodes, no GPU toleration.
    let c = &pod.containers[0];
    assert_eq!(c.ports.as_ref().unwrap()[0].container_port, 8080);
    let res = c.resources.as_ref().unwrap();
    assert_eq!(res.requests.as_ref().unwrap()["cpu"].0, "100m");
    assert_eq!(res.limits.as_ref().unwrap()["memory"].0, "128Mi");
    assert_eq!(
        pod.node_selector.clone().unwrap(),
        BTreeMap::from([(
            "cloud.google.com/gke-nodepool".to_owned(),
            "cpu-pool".to_owned()
        )])
    );
    assert!(!tolerates_gpu(pod));
    assert_eq!(node_requirements(pod)[0].1, "NotIn");
    // Scaling: KEDA on its own request rate and a query of the file, the namespace filled in.
    assert!(d.spec.as_ref().unwrap().replicas.is_none());
    let so = find(&objects, "ScaledObject", INVENTORY);
    assert_eq!(so.data["spec"]["maxReplicaCount"], 6);
    assert_eq!(so.data["spec"]["minReplicaCount"], 1);
    let triggers = so.data["spec"]["triggers"].as_array().unwrap();
    assert_eq!(triggers.len(), 2);
    assert_eq!(triggers[0]["name"], "inventory-service-request-rate");
    assert_eq!(
        triggers[0]["metadata"]["query"],
        request_rate_query(NS, INVENTORY).as_str()
    );
    assert_eq!(triggers[0]["metadata"]["threshold"], "50");
    assert_eq!(triggers[1]["name"], "inventory-cpu");
    let query = triggers[1]["metadata"]["query"].as_str().unwrap();
    assert!(query.contains("namespace=\"shop\""), "{query}");
    assert!(!query.contains("${namespace}"));
    assert_eq!(triggers[1]["metadata"]["threshold"], "0.2");
    // The three built-in services render as they do without the file, but for order-service's
    // new callee.
    let builtin = self::objects();
    for (k, n) in [
        ("Deployment", USER_SERVICE),
        ("Deployment", PAYMENT_SERVICE),
        ("ScaledObject", USER_SERVICE),
        ("HorizontalPodAutoscaler", ORDER_SERVICE),
    ] {
        assert_eq!(
            serde_json::to_value(find(&objects, k, n)).unwrap(),
            serde_json::to_value(find(&builtin, k, n)).unwrap(),
            "{k} {n}"
        );
    }
}

#[test]
fn clients_are_admitted_by_identity_and_by_network_policy() {
    let mut spec = MeshSpec::reference();
    let text = "name: storefront\n";
    spec.clients.push(serde_yaml::from_str(text).unwrap());
    spec.clients.push(
        serde_yaml::from_str("name: gateway\nnamespace: ingress\nserviceAccount: gw\n").unwrap(),
    );
    for from in ["storefront", "gateway"] {
        spec.calls
            .push(serde_yaml::from_str(&format!("from: {from}\nto: user-service\n")).unwrap());
    }
    let objects = render(&spec, &RenderOptions::new(NS)).unwrap();

    // The client in the namespace gets its ServiceAccount; the other namespace's is not ours.
    let accounts: Vec<&str> = of_kind(&objects, "ServiceAccount")
        .into_iter()
        .map(name)
        .collect();
    assert!(accounts.contains(&"storefront"), "{accounts:?}");
    assert!(!accounts.contains(&"gw"), "{accounts:?}");
    let storefront: ServiceAccount = typed(find(&objects, "ServiceAccount", "storefront"));
    assert_eq!(storefront.automount_service_account_token, Some(false));
    assert_eq!(storefront.metadata.labels.unwrap()[COMPONENT_KEY], "client");

    // user-service's filter admits both identities, by name.
    let config: AuthzConfig = serde_json::from_str(
        plugin(&objects, "user-service-authz")["pluginConfig"]
            .to_string()
            .as_str(),
    )
    .unwrap();
    let allowed: Vec<(&str, &str)> = config
        .allow
        .iter()
        .map(|e| (e.from.as_str(), e.service.as_str()))
        .collect();
    assert_eq!(
        allowed,
        [
            ("spiffe://cluster.local/ns/shop/sa/storefront", "storefront"),
            ("spiffe://cluster.local/ns/ingress/sa/gw", "gateway"),
        ]
    );

    // Ingress to user-service from each client's pods, in its own namespace; egress only for the
    // client in the namespace meshctl installs into.
    let all = policies(&objects);
    let by_name = |n: &str| all.iter().find(|p| p.metadata.name.as_deref() == Some(n));
    let local = by_name("allow-storefront-to-user-service-ingress").unwrap();
    let rule = &local.spec.as_ref().unwrap().ingress.as_ref().unwrap()[0];
    assert_eq!(pod_peers(rule.from.as_ref().unwrap()), ["storefront"]);
    assert_eq!(selected(local), "user-service");
    assert!(by_name("allow-storefront-to-user-service-egress").is_some());
    let remote = by_name("allow-gateway-to-user-service-ingress").unwrap();
    let peer = &remote.spec.as_ref().unwrap().ingress.as_ref().unwrap()[0]
        .from
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        peer.namespace_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["kubernetes.io/metadata.name"],
        "ingress"
    );
    assert_eq!(
        peer.pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()[NAME_KEY],
        "gateway"
    );
    assert!(by_name("allow-gateway-to-user-service-egress").is_none());
}
