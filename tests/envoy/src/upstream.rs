//! The application behind the sidecar: an HTTP/1.1 and cleartext HTTP/2 server on loopback (the
//! sidecar's route speaks the downstream's protocol to it). It answers every request with the
//! status the request asks for in [`STATUS_HEADER`] (200 if none), `grpc-status` from
//! [`GRPC_STATUS_HEADER`] when given, and [`REACHED_HEADER`], so a client can tell a response of
//! the application from a local reply of Envoy. It counts the requests it served.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::Error;

/// The request header naming the status the application answers with.
pub const STATUS_HEADER: &str = "x-test-upstream-status";
/// The request header naming the `grpc-status` the application answers with (a trailers-only
/// gRPC response carries it in the headers). The scenarios' own name for it.
pub const GRPC_STATUS_HEADER: &str = "x-upstream-grpc-status";
/// The response header the application sets.
pub const REACHED_HEADER: &str = "x-test-upstream";
/// The response header with the request's path as the application received it.
pub const PATH_HEADER: &str = "x-test-upstream-path";

/// A running application; stops when dropped.
#[derive(Debug)]
pub struct App {
    pub addr: SocketAddr,
    served: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
}

impl App {
    /// Starts the application on 127.0.0.1 (an ephemeral port) in the current tokio runtime.
    pub async fn start() -> Result<App, Error> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| Error::Client(format!("binding the application: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Client(e.to_string()))?;
        let served = Arc::new(AtomicU64::new(0));
        let (stop, mut stopped) = oneshot::channel();
        let count = served.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = &mut stopped => return,
                    a = listener.accept() => a,
                };
                let Ok((stream, _)) = accepted else { continue };
                let count = count.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        count.fetch_add(1, Ordering::SeqCst);
                        answer(req)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(App {
            addr,
            served,
            stop: Some(stop),
        })
    }

    /// Requests served so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let status = header(STATUS_HEADER)
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(200);
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(String::new, |p| p.as_str().to_owned());
    let mut builder = Response::builder()
        .status(status)
        .header(REACHED_HEADER, "reached")
        .header(PATH_HEADER, path);
    let mut body = Bytes::from_static(b"upstream");
    if let Some(grpc) = header(GRPC_STATUS_HEADER) {
        // A trailers-only gRPC response: the status in the headers, no body.
        builder = builder
            .header("content-type", "application/grpc")
            .header("grpc-status", grpc);
        body = Bytes::new();
    }
    Ok(builder
        .body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
}
