//! The benchmark command: per-request cost of each filter in the Proxy-Wasm host against an empty
//! pass-through filter built with the Rust SDK, measured in the same run and reported as ratios.
//!
//! Three measures, each per request:
//! - wasm instructions: wasmtime fuel (one unit per wasm instruction), deterministic;
//! - native instructions: valgrind callgrind over the whole host process (host + JIT code), from
//!   the difference of two runs of different lengths so start-up cancels out; stable on any load;
//! - time: median of several batches (machine-dependent; reported, never asserted).
//!
//! Usage: `meshguard-bench [--markdown FILE] [--no-callgrind]`, or internally
//! `meshguard-bench --run SCENARIO N` (what callgrind runs).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use meshguard_filter_tests::bench::{
    host, largest_function, scaling, scenarios, Scenario, BUDGETS, MODULE_BUDGET_KIB,
};
use meshguard_filter_tests::{module, AUTHZ, METRICS, PASSTHROUGH};

fn fuel_per_request(s: &Scenario) -> anyhow::Result<f64> {
    meshguard_filter_tests::bench::fuel_per_request(s, 2000)
}

fn nanos_per_request(s: &Scenario) -> anyhow::Result<f64> {
    let mut h = host(s, false)?;
    let req = (s.request)();
    h.run_requests(&req, 500)?;
    let mut batches = Vec::new();
    for _ in 0..9 {
        let n = 2000;
        let start = Instant::now();
        h.run_requests(&req, n)?;
        batches.push(start.elapsed().as_nanos() as f64 / n as f64);
    }
    batches.sort_by(f64::total_cmp);
    Ok(batches[batches.len() / 2])
}

/// Total instructions callgrind counts for `--run name n`.
fn callgrind_total(name: &str, n: usize) -> anyhow::Result<u64> {
    let exe = std::env::current_exe()?;
    let out = tempfile_path(&format!("callgrind.{name}.{n}.out"));
    let status = Command::new("valgrind")
        .args(["--tool=callgrind", "--quiet"])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(&exe)
        .args(["--run", name, &n.to_string()])
        .status()
        .context("running valgrind (install it: apt-get install valgrind)")?;
    if !status.success() {
        bail!("valgrind --tool=callgrind failed for {name} ({status})");
    }
    let text = std::fs::read_to_string(&out)?;
    let _ = std::fs::remove_file(&out);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no summary line in callgrind output")
}

fn tempfile_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("meshguard-{}-{name}", std::process::id()))
}

fn native_per_request(s: &Scenario) -> anyhow::Result<f64> {
    let (short, long) = (100, 1100);
    let a = callgrind_total(s.name, short)?;
    let b = callgrind_total(s.name, long)?;
    Ok(b.saturating_sub(a) as f64 / (long - short) as f64)
}

fn run_only(name: &str, n: usize) -> anyhow::Result<()> {
    let Some(s) = scenarios()
        .into_iter()
        .chain(scaling())
        .find(|s| s.name == name)
    else {
        bail!("no scenario {name}");
    };
    let mut h = host(&s, false)?;
    h.run_requests(&(s.request)(), n)?;
    Ok(())
}

struct Row {
    name: &'static str,
    what: &'static str,
    fuel: f64,
    native: Option<f64>,
    nanos: f64,
}

/// What a request costs each filter, and what earlier reworks changed.
const BREAKDOWN: &str = "## Where a request's cost goes

What each filter does per request. Calls into the module and the values the host hands over are
what costs most in Envoy (see the Envoy section below); the filters' own Wasm code is a small part.

| | empty filter (Rust SDK) | authorization (allow) | metrics |
|---|---|---|---|
| calls into the module | every stream callback the SDK exports: context creation, request and response headers (and bodies), `on_log`, `on_done`, `on_delete` | `proxy_on_request_headers` only | `proxy_on_log` only |
| host calls | none | `connection.uri_san_peer_certificate` (`connection.mtls` only for a request without one); the request headers in one `proxy_get_header_map_pairs` when the caller's rule narrows by method or path; `increment_metric` | `connection.uri_san_peer_certificate`; the request headers in one call (method, content type); `response.code`; `request.duration`; `increment_metric`; `record_metric` |
| values handed over (each one more call into the module, `proxy_on_memory_allocate`) | none | one or two | four |
| logging | none | the host's level, re-read every second (`proxy_on_tick`): a line below it is not even formatted | the same |

The filters export their own entry points (`filters/common/src/entry.rs`) instead of the SDK's
dispatcher: Envoy's Proxy-Wasm host calls a callback only if the module exports it
(proxy-wasm-cpp-host `src/context.cc`). That also removed the SDK's per-stream context objects
and its dispatch tables: authz 150.4 KB → 102.5 KB, metrics 122.1 KB → 69.9 KB, and authz-allow
3841 → 1345 wasm instructions per request, authz-deny 4470 → 2427, metrics 5179 → 3162 (this
host, same inputs).

Earlier, before the filters' first cost rework: authz-allow 18.8k wasm instructions, authz-deny
22.6k, metrics 22.7k, modules of 198.2 KiB and 162.6 KiB. That rework replaced serde_json by a
strict reader that names the field at fault (`mesh/src/json.rs`), std's `HashMap` (whose seeding
from WASI's random source pulls in kilobytes of error formatting) by a `BTreeMap` used only on a
series' first use, string keys by `u64` keys of label indices, per-request identity parsing by a
lookup of the raw bytes, and per-denial formatting by replies built at configuration.
";

/// In docs/benchmarks.md, what follows this line is not generated and is kept on regeneration.
const KEPT_MARKER: &str = "<!-- Not generated by meshguard-bench: kept as written. -->";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--run") {
        let name = args.get(1).context("--run SCENARIO N")?;
        let n = args.get(2).context("--run SCENARIO N")?.parse()?;
        return run_only(name, n);
    }
    let callgrind = !args.iter().any(|a| a == "--no-callgrind");
    let markdown = args
        .iter()
        .position(|a| a == "--markdown")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);

    let mut rows = Vec::new();
    for s in scenarios() {
        eprintln!("measuring {} ...", s.name);
        let fuel = fuel_per_request(&s)?;
        let native = if callgrind {
            Some(native_per_request(&s)?)
        } else {
            None
        };
        let nanos = nanos_per_request(&s)?;
        rows.push(Row {
            name: s.name,
            what: s.what,
            fuel,
            native,
            nanos,
        });
    }
    let base = rows.first().context("no scenarios")?;
    let (bf, bn, bt) = (base.fuel, base.native, base.nanos);
    let mut out = String::new();
    out.push_str("| scenario | what | wasm instr/req | ratio | budget | native instr/req (callgrind) | ratio | time/req | ratio |\n");
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in &rows {
        let budget = BUDGETS
            .iter()
            .find(|(n, _)| *n == r.name)
            .map_or("-".to_owned(), |(_, b)| format!("≤ {b:.1}x"));
        let native = match (r.native, bn) {
            (Some(n), Some(b)) => format!("{n:.0} | {:.2}x", n / b),
            _ => "- | -".to_owned(),
        };
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.2}x | {budget} | {native} | {:.2} µs | {:.2}x |\n",
            r.name,
            r.what,
            r.fuel,
            r.fuel / bf,
            r.nanos / 1000.0,
            r.nanos / bt
        ));
    }
    out.push_str("\nThe decision against the number of callers configured (authz-allow, one of them calling):\n\n| callers | wasm instr/req | ratio |\n|---:|---:|---:|\n");
    for s in scaling() {
        let fuel = fuel_per_request(&s)?;
        let n = s.name.trim_start_matches("callers-");
        out.push_str(&format!("| {n} | {fuel:.0} | {:.2}x |\n", fuel / bf));
    }
    out.push_str(
        "\n| module | size | budget | largest function | budget |\n|---|---:|---:|---:|---:|\n",
    );
    let base_function = largest_function(&module(PASSTHROUGH)?)?;
    for m in [PASSTHROUGH, AUTHZ, METRICS] {
        let size = std::fs::metadata(module(m)?)?.len();
        let (size_budget, function_budget) = if m == PASSTHROUGH {
            ("-".to_owned(), "-".to_owned())
        } else {
            (
                format!("≤ {MODULE_BUDGET_KIB} KiB"),
                format!("≤ {base_function} bytes"),
            )
        };
        out.push_str(&format!(
            "| {m}.wasm | {size} bytes ({:.1} KiB) | {size_budget} | {} bytes | {function_budget} |\n",
            size as f64 / 1024.0,
            largest_function(&module(m)?)?,
        ));
    }
    print!("{out}");
    if let Some(path) = markdown {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines().find_map(|l| {
                    l.strip_prefix("model name")
                        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
                })
            })
            .unwrap_or_else(|| "unknown CPU".to_owned());
        let doc = format!(
            "# Benchmarks\n\n\
             Produced by `scripts/bench.sh` (`meshguard-bench`); do not edit by hand.\n\n\
             Each filter's per-request cost in the Proxy-Wasm host (`tests/wasm-host`, wasmtime), \
             against `meshguard_passthrough`, an empty filter built with the Proxy-Wasm Rust SDK, \
             measured in the same run. A request is the whole stream as Envoy drives it: context \
             creation, request headers, response headers, `on_log`, `on_done`, `on_delete`, each \
             called only if the module exports it.\n\n\
             - **wasm instr/req**: wasmtime fuel, about one unit per wasm instruction; deterministic.\n\
             - **native instr/req**: valgrind callgrind over the whole host process (host calls, \
             header serialization, JIT code), from two runs of 100 and 1100 requests so start-up \
             cancels out; stable whatever else the machine does.\n\
             - **time/req**: median of 9 batches of 2000 requests; depends on the machine ({cpu}, \
             {} cores here), so only the ratio carries over.\n\n\
             The authorization decision is one hash lookup of the peer identity, then a scan of that \
             caller's own methods and prefixes: O(1) in the number of callers configured for the \
             workload (`mesh/src/authz.rs`). The host reports Envoy's Wasm log level at Istio's \
             default, warning, and each filter runs in the pod its configuration was made for.\n\n\
             The budgets are checked by `tests/filters/tests/budget.rs` (part of `scripts/test.sh`): \
             wasm instruction counts and function sizes are exact, so the check needs no timing. No \
             function may be larger than the empty filter's largest: Envoy compiles each with V8's \
             optimizing compiler, whose memory grows faster than the function and stays in Envoy's \
             heap (see [Where the memory goes](#where-the-memory-goes)).\n\n{out}\n{BREAKDOWN}",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        // Sections measured by other means (the local cluster's budgets) follow a marker line
        // and are kept as they are.
        let kept = std::fs::read_to_string(&path)
            .ok()
            .and_then(|old| old.find(KEPT_MARKER).map(|i| old[i..].to_owned()))
            .unwrap_or_default();
        let doc = if kept.is_empty() {
            doc
        } else {
            format!("{}\n\n{kept}", doc.trim_end())
        };
        std::fs::write(&path, doc)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
