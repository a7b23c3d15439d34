//! `meshguard-devcluster`: runs the offline test cluster for manual use (for
//! example `meshctl install` against it), until stdin closes or SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use meshguard_testcluster::{CrdSet, TestCluster, TestClusterOptions, Versions};
use tokio::signal::unix::{signal, SignalKind};

const USAGE: &str = "\
usage: meshguard-devcluster [--crds LIST] [--simulate LIST] [--kubeconfig PATH] [--ignore-stdin]

Starts etcd and kube-apiserver on loopback (binaries from
tests/kube/build-cluster-bins.sh), installs the pinned CRDs, prints
`KUBECONFIG=<path>` on stdout once the cluster is ready, and runs until stdin
closes, or SIGINT/SIGTERM arrives; then it stops both processes.

options:
  --crds LIST        CRD sets to install, comma-separated, from istio, keda,
                     cert-manager, all, none (default: all)
  --simulate LIST    stand-ins to register, comma-separated: gpu-node (a GPU
                     node and a CPU node as Node objects, labelled and tainted
                     like a GKE GPU pool), metrics-api (the metrics.k8s.io
                     APIService); nothing runs on them (default: none)
  --kubeconfig PATH  also write the admin kubeconfig to PATH (when ready)
  --ignore-stdin     do not stop when stdin closes (for running in the
                     background with stdin on /dev/null)
  -h, --help         show this help

environment: MESHGUARD_KUBE_APISERVER, MESHGUARD_ETCD, MESHGUARD_CRDS_DIR,
MESHGUARD_CACHE_DIR, MESHGUARD_TESTCLUSTER_KEEP (keep the cluster directory).";

struct Args {
    crds: Vec<CrdSet>,
    simulate_nodes: bool,
    simulate_metrics_api: bool,
    kubeconfig: Option<PathBuf>,
    ignore_stdin: bool,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        crds: CrdSet::ALL.to_vec(),
        simulate_nodes: false,
        simulate_metrics_api: false,
        kubeconfig: None,
        ignore_stdin: false,
    };
    let mut it = std::env::args_os().skip(1);
    while let Some(arg) = it.next() {
        match arg.to_str() {
            Some("-h" | "--help") => return Ok(None),
            Some("--ignore-stdin") => args.ignore_stdin = true,
            Some("--kubeconfig") => {
                let path = it.next().ok_or("--kubeconfig needs a path")?;
                args.kubeconfig = Some(PathBuf::from(path));
            }
            Some("--simulate") => {
                let list = it.next().ok_or("--simulate needs a list")?;
                for name in list.to_str().ok_or("--simulate: not UTF-8")?.split(',') {
                    match name.trim() {
                        "gpu-node" => args.simulate_nodes = true,
                        "metrics-api" => args.simulate_metrics_api = true,
                        "" | "none" => {}
                        other => return Err(format!("unknown --simulate item {other:?}")),
                    }
                }
            }
            Some("--crds") => {
                let list = it.next().ok_or("--crds needs a list")?;
                let list = list.to_str().ok_or("--crds: not UTF-8")?.to_owned();
                args.crds = parse_crds(&list)?;
            }
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    Ok(Some(args))
}

fn parse_crds(list: &str) -> Result<Vec<CrdSet>, String> {
    let mut sets = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name {
            "all" => sets.extend(CrdSet::ALL),
            "none" => {}
            _ => sets.push(
                CrdSet::ALL
                    .into_iter()
                    .find(|s| s.name() == name)
                    .ok_or_else(|| format!("unknown CRD set {name:?}"))?,
            ),
        }
    }
    sets.dedup();
    Ok(sets)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("meshguard-devcluster: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshguard-devcluster: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // Register the handlers first: a signal during startup stops cleanly too.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let (stdin_closed_tx, mut stdin_closed) = tokio::sync::mpsc::channel::<()>(1);
    if !args.ignore_stdin {
        // A plain thread: it never blocks the exit, unlike spawn_blocking.
        std::thread::Builder::new()
            .name("stdin-watch".to_owned())
            .spawn(move || {
                let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
                let _ = stdin_closed_tx.blocking_send(());
            })?;
    }

    let versions = Versions::pinned()?;
    eprintln!(
        "meshguard-devcluster: starting kube-apiserver {} and etcd {}",
        versions.kubernetes, versions.etcd
    );
    let cluster = tokio::select! {
        cluster = TestCluster::start(TestClusterOptions::default()) => cluster?,
        _ = sigint.recv() => return Ok(()),
        _ = sigterm.recv() => return Ok(()),
    };
    if !args.crds.is_empty() {
        let names: Vec<String> = args
            .crds
            .iter()
            .map(|s| format!("{s} {}", s.version(&versions)))
            .collect();
        eprintln!(
            "meshguard-devcluster: installing CRDs: {}",
            names.join(", ")
        );
        cluster.install_crds(&args.crds).await?;
    }
    if args.simulate_nodes {
        eprintln!("meshguard-devcluster: registering a GPU node and a CPU node (objects only)");
        cluster.simulate_nodes().await?;
    }
    if args.simulate_metrics_api {
        eprintln!("meshguard-devcluster: registering the metrics.k8s.io APIService (not served)");
        cluster.simulate_metrics_api().await?;
    }
    if let Some(path) = &args.kubeconfig {
        // Write next to the target, then rename: watchers never see half a file.
        let tmp = path.with_extension("meshguard-devcluster.tmp");
        std::fs::copy(cluster.kubeconfig_path(), &tmp)?;
        std::fs::rename(&tmp, path)?;
    }
    let kubeconfig = args
        .kubeconfig
        .as_deref()
        .unwrap_or(cluster.kubeconfig_path());
    eprintln!(
        "meshguard-devcluster: ready at {} (logs in {})\n  export KUBECONFIG={}\n  stop with Ctrl-C{}",
        cluster.server_url(),
        cluster.dir().display(),
        kubeconfig.display(),
        if args.ignore_stdin { "" } else { " or by closing stdin" },
    );
    println!("KUBECONFIG={}", kubeconfig.display());

    let why = tokio::select! {
        _ = sigint.recv() => "SIGINT",
        _ = sigterm.recv() => "SIGTERM",
        _ = stdin_closed.recv(), if !args.ignore_stdin => "stdin closed",
    };
    eprintln!("meshguard-devcluster: {why}; stopping");
    if let Some(path) = &args.kubeconfig {
        let _ = std::fs::remove_file(path);
    }
    cluster.stop()?;
    Ok(())
}
