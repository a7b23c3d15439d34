//! The per-request cost budgets, in wasm instructions (wasmtime fuel, deterministic) against the
//! empty filter measured in the same run: a regression guard without a timed test. And the size
//! of each filter's `.wasm`.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test assertions

use meshguard_filter_tests::bench::{
    fuel_per_request, scaling, scenarios, BUDGETS, MODULE_BUDGET_KIB,
};
use meshguard_filter_tests::{module, AUTHZ, METRICS};

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

/// The workload check reads Envoy's `xds.node` once per configuration: the whole
/// `envoy.config.core.v3.Node`, 58,881 bytes in Istio's order-service sidecar (measured in real
/// Envoy by tests/envoy), most of it `extensions` (field 9), one message per extension compiled
/// into Envoy. Decoding skips them; this measures what that costs on configure against a node with
/// the same metadata and no extension list.
#[test]
fn reading_an_istio_sized_node_costs_little_on_configure() -> anyhow::Result<()> {
    use meshguard_mesh::NodeFacts;
    use proxy_wasm_host::{Host, Properties};
    let config =
        meshguard_filter_tests::authz_config("order-service", meshguard_mesh::Mode::Enforce)?;
    let small = NodeFacts {
        workload_name: Some("order-service".into()),
        namespace: Some("shop".into()),
        service_account: Some("order-service".into()),
    }
    .to_node_proto();
    // Extension { name = 1, category = 2, type_descriptor = 3 ... }: ~140-byte entries.
    let mut large = small.clone();
    while large.len() < 58_881 {
        let mut ext = Vec::new();
        for (tag, text) in [
            (0x0a_u8, "envoy.filters.http.some_extension_name"),
            (0x12, "envoy.filters.http"),
            (
                0x1a,
                "envoy.extensions.filters.http.some_extension.v3.SomeExtensionConfig",
            ),
        ] {
            ext.push(tag);
            ext.push(u8::try_from(text.len())?);
            ext.extend_from_slice(text.as_bytes());
        }
        large.push(0x4a); // field 9, length-delimited
        large.push(u8::try_from(ext.len())?);
        large.extend_from_slice(&ext);
    }
    let cost = |node: &[u8]| -> anyhow::Result<u64> {
        let mut h = Host::builder(meshguard_filter_tests::module(AUTHZ)?)
            .root_properties(Properties::new().with(&["xds", "node"], node.to_vec()))
            .plugin_config(config.clone())
            .fuel(true)
            .capture_logs(false)
            .build()?;
        let before = h.fuel_consumed().unwrap_or(0);
        assert!(h.configure()?, "configures");
        Ok(h.fuel_consumed().unwrap_or(0) - before)
    };
    let (base, istio) = (cost(&small)?, cost(&large)?);
    eprintln!(
        "on_configure: {base} wasm instructions with a {}-byte node, {istio} with a {}-byte one ({:.2}x)",
        small.len(),
        large.len(),
        istio as f64 / base as f64
    );
    // Skipping the extension list is a length read per entry: far below decoding it.
    assert!(istio < base * 3, "{istio} vs {base}");
    Ok(())
}
