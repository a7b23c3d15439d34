//! The command line without a cluster: `render`, `--help`, and the errors meshctl gives before
//! it contacts an API server.

mod common;

use std::collections::BTreeSet;

use common::{meshctl, TestResult};
use serde::Deserialize;

/// The kinds a default rendering contains.
const EXPECTED_KINDS: [&str; 11] = [
    "Namespace",
    "ServiceAccount",
    "PeerAuthentication",
    "NetworkPolicy",
    "ConfigMap",
    "WasmPlugin",
    "Service",
    "Deployment",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "ScaledObject",
];

fn documents(yaml: &str) -> Result<Vec<serde_yaml::Value>, serde_yaml::Error> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(serde_yaml::Value::deserialize)
        .collect()
}

fn str_at<'a>(v: &'a serde_yaml::Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

#[tokio::test]
async fn render_prints_every_object_as_yaml_without_a_cluster() -> TestResult {
    let run = meshctl(&["render"]).await;
    assert_eq!(run.code, Some(0), "{}", run.dump());
    assert!(
        run.stderr.is_empty(),
        "render writes nothing on stderr: {}",
        run.dump()
    );
    let docs = documents(&run.stdout)?;
    let kinds: BTreeSet<&str> = docs.iter().filter_map(|d| str_at(d, &["kind"])).collect();
    let expected: BTreeSet<&str> = EXPECTED_KINDS.into_iter().collect();
    assert_eq!(kinds, expected);
    assert_eq!(
        str_at(&docs[0], &["kind"]),
        Some("Namespace"),
        "namespace first"
    );
    for d in &docs {
        let what = format!(
            "{:?} {:?}",
            str_at(d, &["kind"]),
            str_at(d, &["metadata", "name"])
        );
        let label = |k: &str| str_at(d, &["metadata", "labels", k]);
        assert_eq!(
            label("app.kubernetes.io/managed-by"),
            Some("meshctl"),
            "{what}"
        );
        assert_eq!(
            label("app.kubernetes.io/part-of"),
            Some("meshguard"),
            "{what}"
        );
        assert_eq!(
            label("app.kubernetes.io/instance"),
            Some("meshguard"),
            "{what}"
        );
        if str_at(d, &["kind"]) != Some("Namespace") {
            assert_eq!(
                str_at(d, &["metadata", "namespace"]),
                Some("meshguard"),
                "{what}"
            );
        }
    }
    // The default image paths are the seed's.
    let images: Vec<&str> = docs
        .iter()
        .filter(|d| str_at(d, &["kind"]) == Some("Deployment"))
        .filter_map(|d| {
            d.get("spec")?
                .get("template")?
                .get("spec")?
                .get("containers")?
                .get(0)?
                .get("image")?
                .as_str()
        })
        .collect();
    assert_eq!(images.len(), 3);
    assert!(images
        .iter()
        .all(|i| i.starts_with("us-west1-docker.pkg.dev/brave-smile-424210-m0/microservice/")));
    Ok(())
}

#[tokio::test]
async fn render_follows_the_flags() -> TestResult {
    let run = meshctl(&[
        "render",
        "--namespace",
        "shop",
        "--order-image",
        "registry.example/order:2",
        "--mode",
        "dry-run",
        "--profile",
        "gke",
    ])
    .await;
    assert_eq!(run.code, Some(0), "{}", run.dump());
    let docs = documents(&run.stdout)?;
    for d in &docs {
        assert_eq!(
            str_at(d, &["metadata", "labels", "app.kubernetes.io/instance"]),
            Some("shop")
        );
        if str_at(d, &["kind"]) != Some("Namespace") {
            assert_eq!(str_at(d, &["metadata", "namespace"]), Some("shop"));
        }
    }
    assert!(run.stdout.contains("image: registry.example/order:2"));
    assert!(run.stdout.contains("cloud.google.com/gke-accelerator"));
    assert!(
        run.stdout.contains("dry_run"),
        "the authz filter config carries the mode"
    );
    Ok(())
}

#[tokio::test]
async fn help_explains_every_command_and_flag() -> TestResult {
    let top = meshctl(&["--help"]).await;
    assert_eq!(top.code, Some(0), "{}", top.dump());
    for word in [
        "install",
        "uninstall",
        "status",
        "render",
        "preflight",
        "publish",
        "app.kubernetes.io/managed-by=meshctl",
        "--namespace",
        "--kubeconfig",
        "--context",
        "Examples:",
        "Exit status",
    ] {
        assert!(top.stdout.contains(word), "`meshctl --help` lacks {word:?}");
    }
    let render_flags = [
        "--file",
        "--user-image",
        "--order-image",
        "--payment-image",
        "--authz-module",
        "--metrics-module",
        "--prometheus-address",
        "--mode",
        "--log-level",
        "--profile",
        "--no-gpu",
    ];
    let cases: [(&str, Vec<&str>); 6] = [
        (
            "install",
            [
                &render_flags[..],
                &[
                    "--dry-run",
                    "--skip-preflight",
                    "--wait",
                    "--timeout",
                    "Server-side apply",
                    "Examples:",
                ],
            ]
            .concat(),
        ),
        (
            "uninstall",
            vec![
                "--dry-run",
                "--delete-namespace",
                "--wait",
                "--namespace",
                "Examples:",
            ],
        ),
        (
            "status",
            [&render_flags[..], &["--output", "drifted", "Examples:"]].concat(),
        ),
        (
            "render",
            [&render_flags[..], &["no cluster", "Examples:"]].concat(),
        ),
        (
            "preflight",
            [&render_flags[..], &["nvidia.com/gpu", "Examples:"]].concat(),
        ),
        (
            "publish",
            vec![
                "--repository",
                "--tag",
                "--filters-dir",
                "--plain-http",
                "plugin.wasm",
                "manifest's digest",
                "docker config",
                "Examples:",
            ],
        ),
    ];
    for (command, words) in cases {
        let run = meshctl(&[command, "--help"]).await;
        assert_eq!(run.code, Some(0), "{}", run.dump());
        for word in words {
            assert!(
                run.stdout.contains(word),
                "`meshctl {command} --help` lacks {word:?}:\n{}",
                run.stdout
            );
        }
    }
    let version = meshctl(&["--version"]).await;
    assert_eq!(
        version.stdout.trim(),
        format!("meshctl {}", env!("CARGO_PKG_VERSION"))
    );
    Ok(())
}

#[tokio::test]
async fn bad_command_lines_are_usage_errors() -> TestResult {
    let run = meshctl(&["render", "--namespace", "Bad_Name"]).await;
    assert_eq!(run.code, Some(2), "{}", run.dump());
    assert!(
        run.stderr
            .contains("`Bad_Name` is not a valid namespace name"),
        "{}",
        run.dump()
    );
    assert!(run.stderr.contains("lowercase"), "{}", run.dump());

    let run = meshctl(&["install", "--dry-run=client"]).await;
    assert_eq!(run.code, Some(2), "{}", run.dump());
    assert!(
        run.stderr.contains("server"),
        "lists the possible values: {}",
        run.dump()
    );

    let run = meshctl(&["install", "--mode", "audit"]).await;
    assert_eq!(run.code, Some(2), "{}", run.dump());

    let run = meshctl(&["uninstall", "--user-image", "x"]).await;
    assert_eq!(
        run.code,
        Some(2),
        "uninstall takes no render flags: {}",
        run.dump()
    );

    let run = meshctl(&["install", "--wait", "--timeout", "soon"]).await;
    assert_eq!(run.code, Some(2), "{}", run.dump());
    assert!(run.stderr.contains("not a duration"), "{}", run.dump());
    Ok(())
}

#[tokio::test]
async fn invalid_values_name_the_flag() -> TestResult {
    for (flag, value) in [
        ("--user-image", "has space"),
        ("--prometheus-address", "ftp://prometheus"),
        ("--authz-module", "registry.example/authz:1"),
        ("--module-fetch-cidr", "10.0.0.0/33"),
        ("--keda-cpu-threshold", "-1"),
    ] {
        let run = meshctl(&["render", &format!("{flag}={value}")]).await;
        assert_eq!(run.code, Some(2), "{}", run.dump());
        assert!(
            run.stderr.starts_with(&format!("error: invalid {flag}: ")),
            "{}",
            run.dump()
        );
        assert!(run.stdout.is_empty(), "{}", run.dump());
    }
    Ok(())
}

#[tokio::test]
async fn install_refuses_placeholder_modules_before_touching_a_cluster() -> TestResult {
    // The kubeconfig does not exist: reading it would be the first thing install does with
    // the cluster, so an error about it would mean install got that far.
    for extra in [&[][..], &["--skip-preflight"][..]] {
        let mut args = vec!["install", "--kubeconfig", "/nonexistent/kubeconfig"];
        args.extend_from_slice(extra);
        let run = meshctl(&args).await;
        assert_eq!(run.code, Some(1), "{}", run.dump());
        for word in [
            "--authz-module is the placeholder `oci://registry.invalid/meshguard/authz:0.1.0`",
            "--metrics-module is the placeholder",
            meshctl::publish::BUILD_FILTERS,
            "docs/meshctl.md",
        ] {
            assert!(run.stderr.contains(word), "lacks {word:?}: {}", run.dump());
        }
        assert!(!run.stderr.contains("nonexistent"), "{}", run.dump());
    }
    // One placeholder is enough to refuse.
    let run = meshctl(&[
        "install",
        "--kubeconfig",
        "/nonexistent/kubeconfig",
        "--authz-module",
        common::AUTHZ_MODULE,
    ])
    .await;
    assert_eq!(run.code, Some(1), "{}", run.dump());
    assert!(
        run.stderr.contains("--metrics-module is the placeholder"),
        "{}",
        run.dump()
    );
    assert!(
        !run.stderr.contains("--authz-module is the placeholder"),
        "{}",
        run.dump()
    );
    Ok(())
}

#[tokio::test]
async fn cluster_errors_say_which_kubeconfig_and_context() -> TestResult {
    // A kubeconfig that does not exist.
    let run = meshctl(&["status", "--kubeconfig", "/nonexistent/kubeconfig"]).await;
    assert_eq!(run.code, Some(1), "{}", run.dump());
    assert!(
        run.stderr.contains(
            "cannot load the cluster configuration from --kubeconfig /nonexistent/kubeconfig"
        ),
        "{}",
        run.dump()
    );

    // No kubeconfig at all, and not in a pod.
    let run = meshctl(&["uninstall"]).await;
    assert_eq!(run.code, Some(1), "{}", run.dump());
    assert!(
        run.stderr.contains("pass --kubeconfig PATH"),
        "{}",
        run.dump()
    );

    // A cluster nobody listens for.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("kubeconfig");
    std::fs::write(
        &path,
        "apiVersion: v1
kind: Config
clusters:
- name: gone
  cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}
users:
- name: someone
  user: {token: abc}
contexts:
- name: nowhere
  context: {cluster: gone, user: someone}
- name: elsewhere
  context: {cluster: gone, user: someone}
current-context: elsewhere
",
    )?;
    let kubeconfig = path.display().to_string();
    let run = meshctl(&[
        "status",
        "--kubeconfig",
        &kubeconfig,
        "--context",
        "nowhere",
    ])
    .await;
    assert_eq!(run.code, Some(1), "{}", run.dump());
    for word in [
        "cannot reach the API server https://127.0.0.1:1/",
        &format!("--kubeconfig {kubeconfig}"),
        "context `nowhere`",
        "fix: ",
    ] {
        assert!(run.stderr.contains(word), "lacks {word:?}: {}", run.dump());
    }
    // A context that does not exist.
    let run = meshctl(&[
        "status",
        "--kubeconfig",
        &kubeconfig,
        "--context",
        "missing",
    ])
    .await;
    assert_eq!(run.code, Some(1), "{}", run.dump());
    assert!(
        run.stderr.contains("context `missing` exists"),
        "{}",
        run.dump()
    );
    Ok(())
}

fn example(name: &str) -> String {
    format!("{}/../docs/examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn render_reads_every_mesh_file_in_the_docs() -> TestResult {
    let dir = format!("{}/../docs/examples", env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<String> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    for file in &files {
        let run = meshctl(&["render", "-f", file]).await;
        assert_eq!(run.code, Some(0), "{file}: {}", run.dump());
        assert!(!documents(&run.stdout)?.is_empty(), "{file}");
    }
    // The reference file is the built-in mesh, byte for byte.
    let builtin = meshctl(&["render"]).await;
    let file = meshctl(&["render", "--file", &example("reference.yaml")]).await;
    assert_eq!(builtin.stdout, file.stdout);
    // The fourth service is there, with its own scaling.
    let four = meshctl(&["render", "-f", &example("four-services.yaml")]).await;
    let docs = documents(&four.stdout)?;
    let named = |kind: &str| {
        docs.iter()
            .filter(|d| str_at(d, &["kind"]) == Some(kind))
            .filter_map(|d| str_at(d, &["metadata", "name"]))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert!(named("Deployment").contains(&"inventory-service".to_owned()));
    assert!(named("WasmPlugin").contains(&"inventory-service-authz".to_owned()));
    assert_eq!(named("ScaledObject"), ["user-service", "inventory-service"]);
    Ok(())
}

#[tokio::test]
async fn the_namespace_comes_from_the_flag_then_the_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("mesh.yaml");
    let text = std::fs::read_to_string(example("reference.yaml"))?
        .replace("kind: Mesh\n", "kind: Mesh\nnamespace: from-file\n");
    std::fs::write(&path, text)?;
    let path = path.display().to_string();
    let instance = |out: &str| -> Result<String, serde_yaml::Error> {
        Ok(str_at(
            &documents(out)?[0],
            &["metadata", "labels", "app.kubernetes.io/instance"],
        )
        .unwrap_or_default()
        .to_owned())
    };
    let run = meshctl(&["render", "-f", &path]).await;
    assert_eq!(run.code, Some(0), "{}", run.dump());
    assert_eq!(instance(&run.stdout)?, "from-file");
    let run = meshctl(&["render", "-f", &path, "-n", "from-flag"]).await;
    assert_eq!(instance(&run.stdout)?, "from-flag");
    Ok(())
}

#[tokio::test]
async fn a_bad_mesh_file_names_file_line_and_field_and_exits_2() -> TestResult {
    let dir = tempfile::tempdir()?;
    let write = |name: &str, text: &str| -> std::io::Result<String> {
        let p = dir.path().join(name);
        std::fs::write(&p, text)?;
        Ok(p.display().to_string())
    };
    let head =
        "apiVersion: meshguard/v1alpha1\nkind: Mesh\nservices:\n  - name: a\n    image: r/a:1\n";
    for (name, tail, want) in [
        (
            "unknown-field.yaml",
            "    replica: 3\n",
            ":6:5: services[0]: unknown field `replica`",
        ),
        (
            "unknown-service.yaml",
            "calls:\n  - from: a\n    to: ghost\n",
            ":8:5: calls[0].to: no service named `ghost`",
        ),
        (
            "shared-account.yaml",
            "  - name: b\n    image: r/b:1\n    serviceAccount: a\n",
            ":8:5: services[1].serviceAccount: services `a` and `b` share the service account `a`",
        ),
    ] {
        let path = write(name, &format!("{head}{tail}"))?;
        let run = meshctl(&["render", "-f", &path]).await;
        assert_eq!(run.code, Some(2), "{name}: {}", run.dump());
        assert!(
            run.stderr.starts_with(&format!("error: {path}{want}")),
            "{name}: {}",
            run.dump()
        );
        assert!(run.stdout.is_empty(), "{}", run.dump());
    }
    let run = meshctl(&["render", "-f", "/nonexistent/mesh.yaml"]).await;
    assert_eq!(run.code, Some(2), "{}", run.dump());
    assert!(
        run.stderr.contains("cannot read /nonexistent/mesh.yaml"),
        "{}",
        run.dump()
    );
    // A flag about a service the file does not have.
    let path = write("one.yaml", head)?;
    let run = meshctl(&["render", "-f", &path, "--user-image", "r/u:1"]).await;
    assert_eq!(run.code, Some(2), "{}", run.dump());
    assert!(
        run.stderr
            .contains("invalid --user-image: the mesh has no service `user-service`"),
        "{}",
        run.dump()
    );
    Ok(())
}

/// `meshctl publish` looks for the modules where the README's commands build them:
/// `scripts/common.sh` (demo.sh and test.sh) and the build command meshctl's messages give.
#[tokio::test]
async fn publish_finds_the_filters_where_the_scripts_build_them() -> TestResult {
    let common = std::fs::read_to_string(format!(
        "{}/../scripts/common.sh",
        env!("CARGO_MANIFEST_DIR")
    ))?;
    let line = common
        .lines()
        .find(|l| l.starts_with("FILTERS_DIR="))
        .ok_or("scripts/common.sh sets FILTERS_DIR")?;
    assert_eq!(
        line,
        format!(
            "FILTERS_DIR=\"$ROOT/{}\"",
            meshctl::publish::DEFAULT_FILTERS_DIR
        )
    );
    assert!(meshctl::publish::BUILD_FILTERS.contains("--target-dir target/filters"));
    let help = meshctl(&["publish", "--help"]).await;
    assert!(
        help.stdout.contains(meshctl::publish::DEFAULT_FILTERS_DIR),
        "{}",
        help.dump()
    );
    // Without the modules, the error says how to build them.
    let dir = tempfile::tempdir()?;
    let run = meshctl(&[
        "publish",
        "--repository",
        "localhost:1/meshguard",
        "--filters-dir",
        &dir.path().display().to_string(),
    ])
    .await;
    assert_eq!(run.code, Some(1), "{}", run.dump());
    assert!(
        run.stderr.contains(meshctl::publish::BUILD_FILTERS),
        "{}",
        run.dump()
    );

    // The same for the reference services' binaries (`publish --services`).
    let line = common
        .lines()
        .find(|l| l.starts_with("SERVICES_DIR="))
        .ok_or("scripts/common.sh sets SERVICES_DIR")?;
    assert_eq!(
        line,
        format!(
            "SERVICES_DIR=\"$ROOT/{}\"",
            meshctl::publish::DEFAULT_SERVICES_DIR
        )
    );
    assert!(meshctl::publish::BUILD_SERVICES.contains("--target-dir target/services"));
    assert!(
        help.stdout.contains(meshctl::publish::DEFAULT_SERVICES_DIR),
        "{}",
        help.dump()
    );
    // Modules present, binaries missing: every file is checked before anything is pushed.
    let modules = tempfile::tempdir()?;
    for (_, file, _) in meshctl::publish::FILTERS {
        std::fs::write(modules.path().join(file), b"\0asm\x01\0\0\0")?;
    }
    let run = meshctl(&[
        "publish",
        "--repository",
        "localhost:1/meshguard",
        "--filters-dir",
        &modules.path().display().to_string(),
        "--services",
        "--services-dir",
        &dir.path().display().to_string(),
    ])
    .await;
    assert_eq!(run.code, Some(1), "{}", run.dump());
    assert!(
        run.stderr.contains(meshctl::publish::BUILD_SERVICES),
        "{}",
        run.dump()
    );
    Ok(())
}
