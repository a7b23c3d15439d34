//! A local cluster whose component was not built fails before starting anything, naming the
//! component and the script that builds it. (Its own test binary: it changes the environment.)

use meshguard_testcluster::{LocalCluster, LocalClusterOptions};

#[tokio::test]
async fn a_missing_component_names_itself_and_the_build_script() {
    std::env::set_var("MESHGUARD_KEDA_ADAPTER", "/nonexistent/keda-adapter");
    let err = LocalCluster::start(LocalClusterOptions::default())
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("keda-adapter not found at /nonexistent/keda-adapter"),
        "{err}"
    );
    assert!(err.contains("MESHGUARD_KEDA_ADAPTER"), "{err}");
    assert!(err.contains("build-cluster-bins.sh"), "{err}");
}
