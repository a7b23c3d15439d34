//! call: a one-shot HTTP client for pods in the mesh. It sends one or more requests, prints one
//! JSON line per answer on stdout (`status`, the `x-meshguard-deny-reason` header as `reason`,
//! `grpc_status` from the headers or trailers, and up to 512 bytes of `body`; `error` when no
//! answer came) and exits 0 if every request was answered, whatever the status, 1 if not, 2 on
//! bad arguments. Tests run it as a pod's command and read its log: its requests leave through
//! the pod's sidecar, under the pod's service account.
//!
//! ```text
//! call [OPTIONS] URL           GET over HTTP/1.1
//! call --grpc [OPTIONS] URL    a unary gRPC call (HTTP/2 without TLS, an empty message) to
//!                              URL's path
//!
//! --count N              send N requests, one after the other (default 1)
//! --interval MS          wait MS milliseconds between two requests (default 0)
//! --until STATUS[:TEXT]  stop after the first answer with this HTTP status (and, with TEXT,
//!                        whose body holds TEXT)
//! --header NAME:VALUE    add a request header (repeatable)
//! ```
//!
//! `--count 600 --interval 100 --until 403:method_not_allowed` watches for about a minute for a
//! change of decision, and every answer up to it is in the log.

use std::process::ExitCode;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

/// The answer that ends `--until`.
#[derive(Debug, PartialEq)]
struct Until {
    status: u16,
    text: Option<String>,
}

impl Until {
    fn parse(s: &str) -> Result<Self, String> {
        let (status, text) = match s.split_once(':') {
            Some((status, text)) => (status, Some(text.to_owned())),
            None => (s, None),
        };
        let status = status
            .parse()
            .ok()
            .filter(|s| (100..=599).contains(s))
            .ok_or(format!("--until: {status:?} is not an HTTP status"))?;
        Ok(Until { status, text })
    }

    fn matches(&self, answer: &serde_json::Value) -> bool {
        answer["status"].as_u64() == Some(u64::from(self.status))
            && self
                .text
                .as_deref()
                .is_none_or(|t| answer["body"].as_str().is_some_and(|body| body.contains(t)))
    }
}

/// What the command line asks for.
#[derive(Debug, Default)]
struct Args {
    grpc: bool,
    count: u32,
    interval: Duration,
    until: Option<Until>,
    headers: Vec<(HeaderName, HeaderValue)>,
    url: Option<Uri>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut out = Args {
        count: 1,
        ..Args::default()
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--grpc" => out.grpc = true,
            "--count" => {
                let n = args.next().ok_or("--count wants a number")?;
                out.count = n
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or(format!("--count: {n:?} is not a positive number"))?;
            }
            "--interval" => {
                let ms = args.next().ok_or("--interval wants milliseconds")?;
                out.interval =
                    Duration::from_millis(ms.parse().map_err(|_| {
                        format!("--interval: {ms:?} is not a number of milliseconds")
                    })?);
            }
            "--until" => {
                let s = args.next().ok_or("--until wants STATUS[:TEXT]")?;
                out.until = Some(Until::parse(&s)?);
            }
            "--header" => {
                let h = args.next().ok_or("--header wants NAME:VALUE")?;
                let (name, value) = h
                    .split_once(':')
                    .ok_or(format!("--header: {h:?} is not NAME:VALUE"))?;
                let name = HeaderName::from_bytes(name.trim().as_bytes())
                    .map_err(|e| format!("--header {h:?}: {e}"))?;
                let value = HeaderValue::from_str(value.trim())
                    .map_err(|e| format!("--header {h:?}: {e}"))?;
                out.headers.push((name, value));
            }
            url if out.url.is_none() && !url.starts_with("--") => {
                out.url = Some(url.parse().map_err(|e| format!("URL {url:?}: {e}"))?);
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    if out.url.is_none() {
        return Err("no URL".into());
    }
    Ok(out)
}

/// One request's outcome as the JSON line printed for it.
async fn one(
    client: &Client<HttpConnector, Full<Bytes>>,
    args: &Args,
    url: &Uri,
) -> (bool, serde_json::Value) {
    let mut builder = Request::builder().uri(url.clone());
    let body = if args.grpc {
        builder = builder
            .method(Method::POST)
            .header(CONTENT_TYPE, "application/grpc")
            .header("te", "trailers");
        // One gRPC message frame: not compressed, zero bytes long.
        Bytes::from_static(&[0, 0, 0, 0, 0])
    } else {
        builder = builder.method(Method::GET);
        Bytes::new()
    };
    for (name, value) in &args.headers {
        builder = builder.header(name, value);
    }
    let request = match builder.body(Full::new(body)) {
        Ok(r) => r,
        Err(e) => return (false, json!({"error": format!("request: {e}")})),
    };
    let response = match client.request(request).await {
        Ok(r) => r,
        Err(e) => return (false, json!({"error": format!("{e:?}")})),
    };
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let reason = header("x-meshguard-deny-reason");
    let mut grpc_status = header("grpc-status");
    let collected = match response.into_body().collect().await {
        Ok(c) => c,
        Err(e) => {
            return (
                false,
                json!({"status": status, "error": format!("body: {e}")}),
            )
        }
    };
    if let Some(trailers) = collected.trailers() {
        if let Some(v) = trailers.get("grpc-status").and_then(|v| v.to_str().ok()) {
            grpc_status = Some(v.to_owned());
        }
    }
    let bytes = collected.to_bytes();
    let body = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
    (
        true,
        json!({"status": status, "reason": reason, "grpc_status": grpc_status, "body": body}),
    )
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "call: {e}\nusage: call [--grpc] [--count N] [--interval MS] [--until STATUS[:TEXT]] \
                 [--header NAME:VALUE]... URL"
            );
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("call: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let Some(url) = args.url.clone() else {
            return ExitCode::from(2);
        };
        let client = Client::builder(TokioExecutor::new())
            .http2_only(args.grpc)
            .build(HttpConnector::new());
        let mut all_answered = true;
        for i in 0..args.count {
            if i > 0 && !args.interval.is_zero() {
                tokio::time::sleep(args.interval).await;
            }
            let (answered, line) = one(&client, &args, &url).await;
            all_answered &= answered;
            println!("{line}");
            if args.until.as_ref().is_some_and(|u| u.matches(&line)) {
                break;
            }
        }
        if all_answered {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        parse_args(args.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn arguments_are_checked() {
        let a = parse(&["--count", "3", "--header", "x-a: 1", "http://h:5000/p"]).expect("valid");
        assert_eq!(a.count, 3);
        assert_eq!(a.headers.len(), 1);
        assert!(!a.grpc);
        assert_eq!(a.interval, Duration::ZERO);
        assert_eq!(a.until, None);
        let a = parse(&["--interval", "100", "--until", "403", "http://h/"]).expect("valid");
        assert_eq!(a.interval, Duration::from_millis(100));
        let until = a.until.expect("--until");
        assert!(until.matches(&json!({"status": 403, "body": "RBAC: access denied"})));
        assert!(!until.matches(&json!({"status": 200, "body": ""})));
        let until = Until::parse("403:RBAC: access denied").expect("valid");
        assert_eq!(until.text.as_deref(), Some("RBAC: access denied"));
        assert!(until.matches(&json!({"status": 403, "body": "RBAC: access denied"})));
        assert!(!until.matches(&json!({"status": 403, "body": "{\"reason\":\"unknown_peer\"}"})));
        assert!(parse(&["--until", "42", "http://h/"]).is_err());
        assert!(parse(&["--interval", "soon", "http://h/"]).is_err());
        assert!(parse(&["--count", "0", "http://h/"]).is_err());
        assert!(parse(&["--header", "nocolon", "http://h/"]).is_err());
        assert!(parse(&[]).is_err());
        assert!(parse(&["http://a/", "http://b/"]).is_err());
    }
}
