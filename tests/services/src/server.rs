//! The process: listen, answer, log a line per request, and shut down gracefully on SIGTERM.

use std::future::Future;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::net::TcpListener;

use crate::config::{Config, Role};
use crate::handler::Handler;
use crate::work::GpuView;

/// The binaries' `main`: settings from the environment (exit status 2 if they are wrong), then
/// [`serve`] on `0.0.0.0:PORT` until SIGTERM or SIGINT.
pub fn main(role: Role) -> ExitCode {
    let config = match Config::from_env(role, |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: bad setting {e}", role.name());
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{}: cannot start the async runtime: {e}", role.name());
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let listener = TcpListener::bind(("0.0.0.0", config.port)).await?;
        let pod = std::env::var("HOSTNAME").unwrap_or_default();
        let gpu = GpuView::read(
            std::path::Path::new("/dev"),
            std::env::var("NVIDIA_VISIBLE_DEVICES").ok(),
        );
        let ready = Arc::new(AtomicBool::new(true));
        let handler = Handler::new(config, Arc::clone(&ready), pod, gpu);
        serve(listener, Arc::new(handler), ready, terminated()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}: {e}", role.name());
            ExitCode::FAILURE
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without signal handlers the process ends on the signal's default action.
        _ => std::future::pending().await,
    }
}

/// Answers connections on `listener` until `shutdown` resolves; then clears `ready` (so
/// `/readyz` says 503), goes on answering for the drain time, stops accepting, and gives
/// in-flight requests the grace time.
pub async fn serve(
    listener: TcpListener,
    handler: Arc<Handler>,
    ready: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let config = handler.config().clone();
    let name = config.role.name();
    log_event(
        name,
        "listening",
        &json!({"address": listener.local_addr()?.to_string(),
        "upstream": config.upstream}),
    );
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    // Until SIGTERM: no deadline. Then `/readyz` says 503 and connections are still accepted
    // until the drain deadline.
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        let deadline = async {
            match drain_until {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut shutdown, if drain_until.is_none() => {
                ready.store(false, Ordering::Release);
                log_event(name, "draining", &json!({"drain_ms": millis(config.shutdown_drain)}));
                drain_until = Some(tokio::time::Instant::now() + config.shutdown_drain);
            }
            () = deadline => break,
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        log_event(name, "accept failed", &json!({"error": e.to_string()}));
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let handler = Arc::clone(&handler);
                let service = service_fn(move |req| {
                    let handler = Arc::clone(&handler);
                    async move {
                        let start = Instant::now();
                        let answer = handler.handle(&req).await;
                        log_request(name, &req, answer.response.status().as_u16(),
                            answer.upstream_status, start);
                        Ok::<_, std::convert::Infallible>(answer.response)
                    }
                });
                let connection = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                let watched = graceful.watch(connection);
                tokio::spawn(async move {
                    let _ = watched.await;
                });
            }
        }
    }
    drop(listener);
    log_event(
        name,
        "shutting down",
        &json!({"grace_ms": millis(config.shutdown_grace)}),
    );
    match tokio::time::timeout(config.shutdown_grace, graceful.shutdown()).await {
        Ok(()) => log_event(name, "stopped", &json!({})),
        Err(_) => log_event(name, "stopped with requests still in flight", &json!({})),
    }
    Ok(())
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn log_request<B>(
    service: &str,
    req: &hyper::Request<B>,
    status: u16,
    upstream_status: Option<u16>,
    start: Instant,
) {
    let line = json!({
        "ts_ms": unix_millis(),
        "service": service,
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "status": status,
        "upstream_status": upstream_status,
        "duration_ms": (start.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
        "request_id": req.headers().get("x-request-id").and_then(|v| v.to_str().ok()),
    });
    println!("{line}");
}

fn log_event(service: &str, event: &str, fields: &serde_json::Value) {
    println!(
        "{}",
        json!({"ts_ms": unix_millis(), "service": service, "event": event, "fields": fields})
    );
}
