//! pause: the pod sandbox of the local cluster's real nodes. Every pod's network namespace is
//! held by one process that does nothing; the container runtime starts it from the sandbox image
//! (`meshctl` never does). This one waits for SIGTERM or SIGINT and exits 0, as Kubernetes' own
//! pause does (`build/pause/linux/pause.c` in k8s.io/kubernetes); its pods share no process
//! namespace, so it has no children to reap.

use std::process::ExitCode;

use tokio::signal::unix::{signal, SignalKind};

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pause: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            eprintln!("pause: cannot handle SIGTERM and SIGINT");
            return ExitCode::FAILURE;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        ExitCode::SUCCESS
    })
}
