//! `manifests/rendered/default.yaml` is exactly what `render` produces for the default options,
//! so users can read the objects as data. `MESHGUARD_BLESS=1 cargo test -p meshguard-manifests
//! --test golden` rewrites it after an intended change.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use kube::api::DynamicObject;
use meshguard_manifests::MeshSpec;
use meshguard_manifests::{render, to_yaml, RenderOptions};

const NAMESPACE: &str = "meshguard";

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rendered/default.yaml")
}

fn header() -> String {
    format!(
        "# The objects `meshguard_manifests::render` returns for the default options (namespace\n\
         # `{NAMESPACE}`, profile `local`), in apply order. Do not edit: `MESHGUARD_BLESS=1 cargo test -p meshguard-manifests --test golden`\n\
         # regenerates it, and that test fails when it is out of date.\n"
    )
}

fn rendered() -> String {
    let objects = render(&MeshSpec::reference(), &RenderOptions::new(NAMESPACE)).unwrap();
    format!("{}{}", header(), to_yaml(&objects).unwrap())
}

#[test]
fn rendered_default_yaml_is_up_to_date() {
    let path = golden_path();
    let now = rendered();
    if std::env::var("MESHGUARD_BLESS").as_deref() == Ok("1") {
        std::fs::write(&path, &now).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    if checked_in != now {
        let line = checked_in
            .lines()
            .zip(now.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| checked_in.lines().count().min(now.lines().count()))
            + 1;
        panic!(
            "{} is out of date (first difference at line {line}); rerun with MESHGUARD_BLESS=1 \
             to regenerate it, and review the diff",
            path.display()
        );
    }
}

#[test]
fn yaml_parses_back_to_the_same_objects() {
    let objects = render(&MeshSpec::reference(), &RenderOptions::new(NAMESPACE)).unwrap();
    let yaml = to_yaml(&objects).unwrap();
    let parsed: Vec<DynamicObject> = serde_yaml::Deserializer::from_str(&yaml)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .collect();
    assert_eq!(parsed.len(), objects.len());
    for (a, b) in parsed.iter().zip(&objects) {
        assert_eq!(
            serde_json::to_value(a).unwrap(),
            serde_json::to_value(b).unwrap()
        );
    }
}
