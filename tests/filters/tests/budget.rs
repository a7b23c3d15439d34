//! The per-request cost budgets, in wasm instructions (wasmtime fuel, deterministic) against the
//! empty filter measured in the same run: a regression guard without a timed test. And the size
//! of each filter's `.wasm`.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test assertions

use meshguard_filter_tests::bench::{
    fuel_per_request, largest_function, scaling, scenarios, BUDGETS, MODULE_BUDGET_KIB,
};
use meshguard_filter_tests::{module, AUTHZ, METRICS, PASSTHROUGH};

#[test]
fn each_filter_stays_within_its_instruction_budget() -> anyhow::Result<()> {
    let all = scenarios();
    let base = all
        .iter()
        .find(|s| s.name == "passthrough")
        .expect("baseline");
    let base_fuel = fuel_per_request(base, 500)?;
    let mut over = Vec::new();
    for (name, budget) in BUDGETS {
        let s = all
            .iter()
            .find(|s| s.name == name)
            .expect("a budgeted scenario");
        let fuel = fuel_per_request(s, 500)?;
        let ratio = fuel / base_fuel;
        eprintln!(
            "{name}: {fuel:.0} wasm instructions per request, {ratio:.2}x (budget {budget:.1}x)"
        );
        if ratio > budget {
            over.push(format!("{name} {ratio:.2}x > {budget:.1}x"));
        }
    }
    assert!(
        over.is_empty(),
        "over budget: {over:?} (baseline {base_fuel:.0})"
    );
    Ok(())
}

#[test]
fn the_decision_costs_the_same_for_3_or_3000_callers() -> anyhow::Result<()> {
    let costs = scaling()
        .iter()
        .map(|s| fuel_per_request(s, 200))
        .collect::<anyhow::Result<Vec<f64>>>()?;
    eprintln!("wasm instructions per request for 3, 30, 300, 3000 callers: {costs:?}");
    let (min, max) = costs
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), c| (lo.min(*c), hi.max(*c)));
    // Flat: within 5 % (a longer probe now and then, never a scan of the callers).
    assert!(max <= min * 1.05, "{costs:?}");
    Ok(())
}

/// No function in a filter is larger than the largest in the empty SDK-built filter: see
/// [`largest_function`] for why Envoy's memory depends on it.
#[test]
fn no_function_is_larger_than_the_empty_filters_largest() -> anyhow::Result<()> {
    let base = largest_function(&module(PASSTHROUGH)?)?;
    let mut over = Vec::new();
    for m in [AUTHZ, METRICS] {
        let largest = largest_function(&module(m)?)?;
        eprintln!("{m}.wasm: largest function {largest} bytes (the empty filter's: {base})");
        if largest > base {
            over.push(format!(
                "{m}.wasm has a function of {largest} bytes > {base}"
            ));
        }
    }
    assert!(over.is_empty(), "{over:?}");
    Ok(())
}

#[test]
fn each_module_stays_within_its_size_budget() -> anyhow::Result<()> {
    let mut over = Vec::new();
    for m in [AUTHZ, METRICS] {
        let size = std::fs::metadata(module(m)?)?.len();
        eprintln!("{m}.wasm: {size} bytes (budget {MODULE_BUDGET_KIB} KiB)");
        if size > MODULE_BUDGET_KIB * 1024 {
            over.push(format!("{m}.wasm {size} bytes > {MODULE_BUDGET_KIB} KiB"));
        }
    }
    assert!(over.is_empty(), "over budget: {over:?}");
    Ok(())
}

/// The workload check reads three node metadata fields once per configuration
/// (`xds.node.metadata.<KEY>`, a few bytes each; see `meshguard_mesh::node`), not the whole
/// `xds.node` message (58,881 bytes in Istio's order-service sidecar, measured in real Envoy by
/// tests/envoy). This measures what the check adds to `on_configure`.
#[test]
fn checking_the_node_costs_little_on_configure() -> anyhow::Result<()> {
    use meshguard_mesh::NodeFacts;
    use proxy_wasm_host::{Host, Properties};
    let config =
        meshguard_filter_tests::authz_config("order-service", meshguard_mesh::Mode::Enforce)?;
    let node = meshguard_filter_tests::node_properties(&NodeFacts {
        workload_name: Some("order-service".into()),
        namespace: Some("shop".into()),
        service_account: Some("order-service".into()),
    });
    let cost = |root: Properties| -> anyhow::Result<u64> {
        let mut h = Host::builder(meshguard_filter_tests::module(AUTHZ)?)
            .root_properties(root)
            .plugin_config(config.clone())
            .fuel(true)
            .capture_logs(false)
            .build()?;
        let before = h.fuel_consumed().unwrap_or(0);
        assert!(h.configure()?, "configures");
        Ok(h.fuel_consumed().unwrap_or(0) - before)
    };
    let (without, with) = (cost(Properties::new())?, cost(node)?);
    eprintln!(
        "on_configure: {without} wasm instructions without node metadata, {with} with it ({:.3}x)",
        with as f64 / without as f64
    );
    assert!(with * 100 < without * 105, "{with} vs {without}");
    Ok(())
}
