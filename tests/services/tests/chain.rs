//! The three services as processes on loopback: a request to user-service goes through
//! order-service to payment-service; upstream failures and timeouts are named; SIGTERM drains,
//! finishes what is in flight and exits 0.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A running service, stopped (by pid) when dropped; its stdout lines arrive on `lines`.
struct Service {
    child: Child,
    address: String,
    lines: mpsc::Receiver<Value>,
}

impl Service {
    fn start(bin: &str, env: &[(&str, &str)]) -> Result<Service, Box<dyn std::error::Error>> {
        let mut child = Command::new(bin)
            .env_clear()
            .env("PORT", "0")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout: ChildStdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let mut service = Service {
            child,
            address: String::new(),
            lines,
        };
        let listening = service.wait_for(|l| l["event"] == "listening")?;
        let address = listening["fields"]["address"]
            .as_str()
            .ok_or("no address")?;
        service.address = address.replace("0.0.0.0", "127.0.0.1");
        Ok(service)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// The first line from now on that `matches`, within 30 s.
    fn wait_for(&self, matches: impl Fn(&Value) -> bool) -> Result<Value, String> {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if matches(&line) => return Ok(line),
                Ok(_) => {}
                Err(e) => return Err(format!("no such log line: {e}")),
            }
        }
    }

    fn terminate(&self) -> TestResult {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        assert!(status.success());
        Ok(())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get(url: &str, request_id: Option<&str>) -> Result<(u16, Value), String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut req = Request::get(url);
    if let Some(id) = request_id {
        req = req.header("x-request-id", id);
    }
    let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
    let response = client
        .request(req)
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let body = serde_json::from_slice(&body).map_err(|e| format!("GET {url}: {e}"))?;
    Ok((status, body))
}

const USER: &str = env!("CARGO_BIN_EXE_user-service");
const ORDER: &str = env!("CARGO_BIN_EXE_order-service");
const PAYMENT: &str = env!("CARGO_BIN_EXE_payment-service");

#[tokio::test]
async fn a_request_goes_user_to_order_to_payment() -> TestResult {
    let payment = Service::start(PAYMENT, &[("PAYMENT_WORK_ROUNDS", "1000")])?;
    let order = Service::start(ORDER, &[("PAYMENT_SERVICE_URL", &payment.url(""))])?;
    let user = Service::start(USER, &[("ORDER_SERVICE_URL", &order.url(""))])?;

    let (status, body) = get(&user.url("/users/42/orders"), Some("req-1")).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["service"], "user-service");
    assert_eq!(body["orders"]["service"], "order-service");
    let paid = &body["orders"]["payment"];
    assert_eq!(paid["service"], "payment-service");
    assert_eq!(paid["user_id"], "42");
    assert_eq!(paid["work_rounds"], 1000);
    assert_eq!(
        paid["gpu_visible"], false,
        "no GPU on a test machine: {paid}"
    );
    // One log line per request, in each service, with the request id passed along.
    for (service, path) in [
        (&user, "/users/42/orders"),
        (&order, "/orders?user_id=42"),
        (&payment, "/payments?user_id=42"),
    ] {
        let line = service.wait_for(|l| l["path"] == path)?;
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["request_id"], "req-1", "{line}");
    }

    for (path, want) in [
        ("/users/a%2Fb/orders", 400),
        ("/users//orders", 400),
        ("/nothing", 404),
        ("/healthz", 200),
        ("/readyz", 200),
    ] {
        let (status, body) = get(&user.url(path), None).await?;
        assert_eq!(status, want, "{path}: {body}");
    }

    // payment-service gone: order-service says so, and user-service passes the failure on.
    drop(payment);
    let (status, body) = get(&user.url("/users/7/orders"), None).await?;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["upstream"], "order-service", "{body}");
    assert_eq!(
        body["upstream_body"]["upstream"], "payment-service",
        "{body}"
    );
    Ok(())
}

/// An upstream that accepts and reads one request, says so on `received`, then answers only
/// when `release` is sent (or never).
struct HeldUpstream {
    address: String,
    received: tokio::sync::oneshot::Receiver<()>,
    release: tokio::sync::oneshot::Sender<()>,
}

async fn held_upstream() -> Result<HeldUpstream, std::io::Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = format!("http://{}", listener.local_addr()?);
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let (got, received) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
        let _ = got.send(());
        if released.await.is_ok() {
            let body = br#"{"service":"payment-service","paid":true}"#;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body).await;
        }
        // Held open until the test ends.
        let _ = stream.read(&mut buf).await;
    });
    Ok(HeldUpstream {
        address,
        received,
        release,
    })
}

#[tokio::test]
async fn an_upstream_that_does_not_answer_is_a_504_in_time() -> TestResult {
    let upstream = held_upstream().await?;
    let order = Service::start(
        ORDER,
        &[
            ("PAYMENT_SERVICE_URL", &upstream.address),
            ("UPSTREAM_TIMEOUT_MS", "300"),
        ],
    )?;
    let (status, body) = get(&order.url("/orders?user_id=1"), None).await?;
    assert_eq!(status, 504, "{body}");
    assert_eq!(
        body["error"],
        "payment-service did not answer within 300 ms"
    );
    Ok(())
}

#[tokio::test]
async fn sigterm_drains_finishes_in_flight_requests_and_exits_0() -> TestResult {
    let upstream = held_upstream().await?;
    let mut order = Service::start(
        ORDER,
        &[
            ("PAYMENT_SERVICE_URL", &upstream.address),
            ("SHUTDOWN_DRAIN_MS", "1500"),
            ("SHUTDOWN_GRACE_MS", "20000"),
        ],
    )?;
    let url = order.url("/orders?user_id=9");
    let in_flight = tokio::spawn(async move { get(&url, None).await });
    // In flight: order-service has called the upstream, which holds the answer.
    tokio::time::timeout(Duration::from_secs(30), upstream.received).await??;
    order.terminate()?;
    order.wait_for(|l| l["event"] == "draining")?;
    // While draining, new requests are still answered, and readiness says to stop sending them.
    let (status, body) = get(&order.url("/readyz"), None).await?;
    assert_eq!(status, 503, "{body}");
    order.wait_for(|l| l["event"] == "shutting down")?;
    assert!(
        get(&order.url("/healthz"), None).await.is_err(),
        "still accepting after the drain"
    );
    // The request in flight when SIGTERM came is answered.
    let _ = upstream.release.send(());
    let (status, body) = in_flight.await??;
    assert_eq!(status, 200, "{body}");
    order.wait_for(|l| l["event"] == "stopped")?;
    let exit = order.child.wait()?;
    assert_eq!(exit.code(), Some(0));
    Ok(())
}
