//! Criterion benchmarks of the host itself, with the probe filter: the cost of
//! one request through a filter, with and without a local response, and of
//! starting a VM from the cached module.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use proxy_wasm_host::{Host, Properties, RequestSpec};

fn bench(c: &mut Criterion) {
    let wasm = common::probe_wasm();
    let mut host = Host::builder(&wasm)
        .capture_logs(false)
        .build_configured()
        .expect("probe host");
    let allow = RequestSpec::get("/items")
        .properties(Properties::new().mtls_peer("spiffe://cluster.local/ns/shop/sa/frontend"));
    let deny = RequestSpec::get("/items").header("x-probe-action", "deny");
    c.bench_function("http_request/pass", |b| {
        b.iter(|| host.http_request(&allow).expect("request"))
    });
    c.bench_function("http_request/local_response", |b| {
        b.iter(|| host.http_request(&deny).expect("request"))
    });
    c.bench_function("host/build_configured", |b| {
        b.iter(|| {
            Host::builder(&wasm)
                .capture_logs(false)
                .build_configured()
                .expect("host")
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
