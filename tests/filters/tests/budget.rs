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
