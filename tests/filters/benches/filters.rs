//! Criterion: time per request of each filter and of the empty baseline, in the same run.
//! `scripts/bench.sh` runs `meshguard-bench`, which adds instruction counts and the ratios.

use criterion::{criterion_group, criterion_main, Criterion};
use meshguard_filter_tests::bench::{host, scenarios};

fn per_request(c: &mut Criterion) {
    let mut group = c.benchmark_group("per_request");
    for s in scenarios() {
        let Ok(mut h) = host(&s, false) else {
            eprintln!("cannot set up {}", s.name);
            continue;
        };
        let req = (s.request)();
        group.bench_function(s.name, |b| {
            b.iter(|| {
                h.http_request(&req)
                    .map(|o| o.context_id)
                    .unwrap_or_default()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, per_request);
criterion_main!(benches);
