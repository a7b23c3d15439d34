//! The mesh file: the documentation's examples read and render, the built-in mesh is the
//! reference example, bad files are refused with the file, line and field, and the published
//! JSON Schema is the one the types give (`MESHGUARD_BLESS=1` rewrites it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use meshguard_manifests::spec::json_schema;
use meshguard_manifests::{render, FileError, MeshFile, MeshSpec, RenderOptions};

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs")
}

fn examples() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(docs().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    out.sort();
    out
}

#[test]
fn every_example_in_the_docs_reads_and_renders() {
    let examples = examples();
    assert!(examples.len() >= 2, "{examples:?}");
    for path in examples {
        let file = MeshFile::read(&path).unwrap_or_else(|e| panic!("{e}"));
        let objects = render(&file.spec, &RenderOptions::new("shop"))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!objects.is_empty());
    }
}

#[test]
fn the_reference_example_is_the_built_in_mesh() {
    let file = MeshFile::read(&docs().join("examples/reference.yaml")).unwrap();
    assert_eq!(file.spec, MeshSpec::reference());
}

/// `text` as a mesh file's error: (line, field, message).
fn error(text: &str) -> (usize, String, String) {
    match MeshFile::parse(Path::new("mesh.yaml"), text) {
        Err(FileError::Invalid {
            path,
            line,
            field,
            message,
            ..
        }) => {
            assert_eq!(path, "mesh.yaml");
            (line, field, message)
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

const HEAD: &str = "apiVersion: meshguard/v1alpha1\nkind: Mesh\nservices:\n";

#[test]
fn an_unknown_field_is_named_with_its_line() {
    let (line, field, message) = error(&format!(
        "{HEAD}  - name: a\n    image: r/a:1\n    imagePullPolicy: Always\n"
    ));
    assert_eq!(line, 6);
    assert_eq!(field, "services[0]");
    assert!(
        message.contains("unknown field `imagePullPolicy`"),
        "{message}"
    );
}

#[test]
fn a_call_to_an_unknown_service_is_named_with_its_line() {
    let (line, field, message) = error(&format!(
        "{HEAD}  - name: a\n    image: r/a:1\ncalls:\n  - from: a\n    to: b\n"
    ));
    assert_eq!((line, field.as_str()), (8, "calls[0].to"));
    assert!(message.contains("no service named `b`"), "{message}");
}

#[test]
fn two_services_on_one_account_are_refused() {
    let (line, field, message) = error(&format!(
        "{HEAD}  - name: a\n    image: r/a:1\n  - name: b\n    image: r/b:1\n    serviceAccount: a\n"
    ));
    assert_eq!((line, field.as_str()), (8, "services[1].serviceAccount"));
    assert!(
        message.contains("share the service account `a`"),
        "{message}"
    );
}

#[test]
fn services_scaling_on_each_other_are_a_cycle() {
    let keda = |on: &str| {
        format!(
            "    scaling:\n      keda:\n        maxReplicas: 3\n        triggers:\n          - cpu:\n              service: {on}\n              threshold: 0.5\n"
        )
    };
    let text = format!(
        "{HEAD}  - name: a\n    image: r/a:1\n{}  - name: b\n    image: r/b:1\n{}",
        keda("b"),
        keda("a")
    );
    let (line, field, message) = error(&text);
    assert_eq!(
        (line, field.as_str()),
        (10, "services[0].scaling.keda.triggers[0]")
    );
    assert!(message.contains("a -> b -> a"), "{message}");
    // Scaling on one's own load is no cycle.
    let own = format!("{HEAD}  - name: a\n    image: r/a:1\n{}", keda("a"));
    MeshFile::parse(Path::new("mesh.yaml"), &own).unwrap();
}

#[test]
fn broken_yaml_and_bad_values_say_where() {
    let (line, field, _) = error(&format!("{HEAD}  - name: a\n    image: [\n"));
    assert_eq!((line, field.as_str()), (6, ""));
    let (line, field, message) = error(&format!(
        "{HEAD}  - name: a\n    image: r/a:1\n    placement:\n      gpus: -1\n"
    ));
    assert_eq!((line, field.as_str()), (7, "services[0].placement.gpus"));
    assert!(message.contains("invalid type: integer `-1`"), "{message}");
    let (line, field, _) = error(&format!("{HEAD}  - name: Bad_Name\n    image: r/a:1\n"));
    assert_eq!((line, field.as_str()), (4, "services[0].name"));
    let (_, field, message) = error("apiVersion: meshguard/v2\nkind: Mesh\nservices: []\n");
    assert_eq!(field, "apiVersion");
    assert!(message.contains("meshguard/v1alpha1"), "{message}");
}

#[test]
fn the_published_json_schema_is_up_to_date() {
    let path = docs().join("mesh.schema.json");
    let now = json_schema();
    if std::env::var("MESHGUARD_BLESS").as_deref() == Ok("1") {
        std::fs::write(&path, &now).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == now,
        "{} is out of date; rerun with MESHGUARD_BLESS=1 to regenerate it",
        path.display()
    );
    // The schema knows every top-level field and refuses others, as meshctl does.
    let schema: serde_json::Value = serde_json::from_str(&now).unwrap();
    assert_eq!(schema["additionalProperties"], false);
    for field in [
        "apiVersion",
        "kind",
        "namespace",
        "trustDomain",
        "services",
        "calls",
    ] {
        assert!(schema["properties"].get(field).is_some(), "{field}");
    }
}

#[test]
fn clients_call_services_and_nothing_calls_them() {
    let ok = format!(
        "{HEAD}  - name: a\n    image: r/a:1\nclients:\n  - name: front\n    namespace: web\ncalls:\n  - from: front\n    to: a\n"
    );
    let file = MeshFile::parse(Path::new("mesh.yaml"), &ok).unwrap();
    let mesh = file.spec.mesh("shop").unwrap();
    assert_eq!(
        mesh.identity("front").unwrap().to_string(),
        "spiffe://cluster.local/ns/web/sa/front"
    );

    let (line, field, message) = error(&format!(
        "{HEAD}  - name: a\n    image: r/a:1\nclients:\n  - name: front\ncalls:\n  - from: a\n    to: front\n"
    ));
    assert_eq!((line, field.as_str()), (10, "calls[0].to"));
    assert!(message.contains("`front` is a client"), "{message}");

    let (line, field, message) = error(&format!(
        "{HEAD}  - name: a\n    image: r/a:1\nclients:\n  - name: a\n"
    ));
    assert_eq!((line, field.as_str()), (7, "clients[0].name"));
    assert!(message.contains("`a` is a service"), "{message}");

    // In the mesh's namespace a client on a service's account would be that service.
    let (line, field, message) = error(&format!(
        "{HEAD}  - name: a\n    image: r/a:1\nclients:\n  - name: front\n    serviceAccount: a\n"
    ));
    assert_eq!((line, field.as_str()), (8, "clients[0].serviceAccount"));
    assert!(
        message.contains("service `a`'s service account"),
        "{message}"
    );

    let (_, field, message) = error(&format!(
        "{HEAD}  - name: a\n    image: r/a:1\ncalls:\n  - from: ghost\n    to: a\n"
    ));
    assert_eq!(field, "calls[0].from");
    assert!(
        message.contains("no service or client named `ghost`"),
        "{message}"
    );
}
