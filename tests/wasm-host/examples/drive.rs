//! Runs N requests through a Proxy-Wasm filter in one VM; for profiling.
//!
//! ```text
//! cargo build --release -p proxy-wasm-host --example drive
//! target/release/examples/drive FILTER.wasm [REQUESTS] [--config FILE] [--fuel] [--deny-header NAME=VALUE] [--mtls SPIFFE_ID]
//! valgrind --tool=callgrind target/release/examples/drive FILTER.wasm 1000
//! ```
//!
//! The module is compiled and the VM started before the measured loop; the
//! loop runs `Host::run_requests` (one new context per request).

use std::error::Error;
use std::time::Instant;

use proxy_wasm_host::{Host, Properties, RequestSpec};

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let mut wasm = None;
    let mut requests: usize = 1000;
    let mut config = Vec::new();
    let mut fuel = false;
    let mut spec = RequestSpec::get("/");
    let mut properties = Properties::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" => config = std::fs::read(args.next().ok_or("--config needs a file")?)?,
            "--fuel" => fuel = true,
            "--mtls" => {
                properties = properties.mtls_peer(&args.next().ok_or("--mtls needs an id")?)
            }
            "--header" => {
                let h = args.next().ok_or("--header needs NAME=VALUE")?;
                let (k, v) = h.split_once('=').ok_or("--header needs NAME=VALUE")?;
                spec = spec.header(k, v);
            }
            other if wasm.is_none() => wasm = Some(other.to_string()),
            other => requests = other.parse()?,
        }
    }
    let wasm = wasm.ok_or("usage: drive FILTER.wasm [REQUESTS] [--config FILE] [--fuel] [--mtls ID] [--header NAME=VALUE]")?;
    let spec = spec.properties(properties);

    let mut host = Host::builder(&wasm)
        .plugin_config(config)
        .fuel(fuel)
        .capture_logs(false)
        .build()?;
    if !host.configure()? {
        return Err("proxy_on_configure returned false".into());
    }
    let start = Instant::now();
    let summary = host.run_requests(&spec, requests)?;
    let elapsed = start.elapsed();
    let per = elapsed.as_nanos() / (requests.max(1) as u128);
    println!(
        "{requests} requests in {elapsed:?} ({per} ns/request), {} local responses, {} log lines",
        summary.local_responses,
        host.log_count()
    );
    if let Some(f) = summary.fuel_consumed {
        println!(
            "fuel: {f} total, {} per request",
            f / requests.max(1) as u64
        );
    }
    Ok(())
}
