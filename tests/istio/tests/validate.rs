//! Every rendered object through Istio's own validation, as `istioctl validate -f` runs it
//! (istio `istioctl/pkg/validate/validate.go`): Istio's kinds (PeerAuthentication, WasmPlugin)
//! are parsed into their protos and checked by their schema's validator; Deployments and
//! Services get istioctl's extra checks (telemetry labels, port naming); other kinds are
//! passed over. No errors, and no warnings at all: the only output is "… is valid".

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use meshguard_istio_tests::run_raw;
use meshguard_manifests::{render, to_yaml, MeshSpec, Overrides, Profile, RenderOptions};
use meshguard_mesh::Mode;

const NS: &str = "meshguard";

struct Rendered(PathBuf);

impl Rendered {
    fn new(tag: &str, yaml: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "meshguard-validate-{tag}-{}.yaml",
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

fn yaml(opts: &RenderOptions) -> String {
    yaml_of(&MeshSpec::reference(), opts)
}

fn yaml_of(spec: &MeshSpec, opts: &RenderOptions) -> String {
    to_yaml(&render(spec, opts).unwrap()).unwrap()
}

/// Runs `istioctl validate -f` on `yaml`; (exit status ok, stdout).
fn validate(tag: &str, yaml: &str) -> (bool, String, String) {
    let file = Rendered::new(tag, yaml);
    let out = run_raw(["validate".as_ref(), file.0.as_os_str()]).unwrap_or_else(|e| panic!("{e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).replace(&file.0.display().to_string(), "FILE"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The documentation's four-service mesh file.
fn four_services() -> MeshSpec {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/examples/four-services.yaml");
    meshguard_manifests::MeshFile::read(&path)
        .unwrap_or_else(|e| panic!("{e}"))
        .spec
}

/// A mesh and options that exercise every optional field of the Istio objects.
fn everything() -> (MeshSpec, RenderOptions) {
    let mut spec = MeshSpec::reference();
    spec.apply(&Overrides {
        images: vec![(
            "--user-image".into(),
            "user-service".into(),
            "europe-docker.pkg.dev/p/shop/user-service:1.4.2".into(),
        )],
        request_rate_threshold: Some("50".into()),
        ..Overrides::default()
    })
    .unwrap();
    let mut o = RenderOptions::new(NS);
    o.profile = Profile::Gke;
    o.authz_mode = Mode::DryRun;
    o.pod_monitor = true;
    o.authz_module_url = "oci://europe-docker.pkg.dev/p/meshguard/authz:0.1.0".into();
    o.metrics_module_url = "oci://europe-docker.pkg.dev/p/meshguard/metrics:0.1.0".into();
    o.authz_module_sha256 = Some("a".repeat(64));
    o.metrics_module_sha256 = Some("b".repeat(64));
    o.module_pull_secret = Some("module-pull".into());
    (spec, o)
}

#[test]
fn every_rendering_passes_istioctl_validate_without_a_warning() {
    for (tag, (spec, opts)) in [
        ("default", (MeshSpec::reference(), RenderOptions::new(NS))),
        ("everything", everything()),
        ("four-services", (four_services(), RenderOptions::new(NS))),
    ] {
        let (ok, stdout, stderr) = validate(tag, &yaml_of(&spec, &opts));
        assert!(ok, "{tag}: istioctl validate failed:\n{stdout}{stderr}");
        assert_eq!(
            stdout, "\"FILE\" is valid\n",
            "{tag}: istioctl validate printed more than the success line:\n{stdout}{stderr}"
        );
    }
}

#[test]
fn istioctl_validate_refuses_a_broken_wasm_plugin() {
    // The check can fail: a fail strategy Istio does not know is an error.
    let rendered = yaml(&RenderOptions::new(NS));
    let start = rendered
        .find("failStrategy: ")
        .map(|i| i + "failStrategy: ".len())
        .expect("the rendering has a WasmPlugin failStrategy");
    let end = start
        + rendered[start..]
            .find('\n')
            .unwrap_or(rendered.len() - start);
    let broken = format!("{}FAIL_SOMETIMES{}", &rendered[..start], &rendered[end..]);
    assert_ne!(broken, rendered);
    let (ok, stdout, stderr) = validate("broken", &broken);
    assert!(!ok, "accepted:\n{stdout}{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains("FAIL_SOMETIMES"),
        "{stdout}{stderr}"
    );
}

#[test]
fn without_a_version_label_istioctl_warns_about_telemetry() {
    // What the version label on the pod templates fixes.
    let stripped: String = yaml(&RenderOptions::new(NS))
        .lines()
        .filter(|l| !l.contains("app.kubernetes.io/version"))
        .map(|l| format!("{l}\n"))
        .collect();
    let (ok, stdout, _) = validate("no-version", &stripped);
    assert!(ok);
    assert!(
        stdout.contains("may not provide Istio metrics and telemetry labels"),
        "{stdout}"
    );
}
