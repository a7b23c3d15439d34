//! What each service answers.
//!
//! | service | request | does |
//! |---|---|---|
//! | user-service | `GET /users/{id}/orders` | calls `GET {ORDER_SERVICE_URL}/orders?user_id={id}` |
//! | order-service | `GET /orders?user_id={id}` | calls `GET {PAYMENT_SERVICE_URL}/payments?user_id={id}` |
//! | payment-service | `GET /payments?user_id={id}` | CPU work; reports the GPU devices it sees |
//! | each | `GET /healthz`, `GET /readyz` | alive; ready (503 once shutting down) |
//!
//! An id is 1 to 64 of `[A-Za-z0-9_-]`. An upstream that fails is a 502, one that does not
//! answer in time a 504, each with a JSON body naming it. `x-request-id` and `traceparent` are
//! passed on to the upstream.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use crate::config::{Config, Role};
use crate::work::{cpu_work, GpuView};

/// The most of an upstream's body a service reads.
const MAX_UPSTREAM_BODY: usize = 64 * 1024;
/// Headers passed on to the upstream, so one request can be followed through the three.
const PROPAGATED: [&str; 2] = ["x-request-id", "traceparent"];

/// An answer, and the upstream's status where there was a call (for the log line).
pub struct Answer {
    pub response: Response<Full<Bytes>>,
    pub upstream_status: Option<u16>,
}

/// One service's request handling.
pub struct Handler {
    config: Config,
    client: Client<HttpConnector, Empty<Bytes>>,
    ready: Arc<AtomicBool>,
    pod: String,
    gpu: GpuView,
}

impl Handler {
    /// `ready` is cleared by the server when it starts shutting down; `pod` names this replica
    /// in answers (the pod's `HOSTNAME`).
    pub fn new(config: Config, ready: Arc<AtomicBool>, pod: String, gpu: GpuView) -> Handler {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.upstream_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Handler {
            config,
            client,
            ready,
            pod,
            gpu,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Answers one request (the body, if any, is not read: every route is a GET).
    pub async fn handle<B>(&self, req: &Request<B>) -> Answer {
        let path = req.uri().path();
        let query = req.uri().query().unwrap_or("");
        let done = |status: StatusCode, body: Value| Answer {
            response: json_response(status, &body),
            upstream_status: None,
        };
        match (path, self.config.role) {
            ("/healthz", _) => return done(StatusCode::OK, json!({"status": "alive"})),
            ("/readyz", _) => {
                return if self.ready.load(Ordering::Acquire) {
                    done(StatusCode::OK, json!({"status": "ready"}))
                } else {
                    done(
                        StatusCode::SERVICE_UNAVAILABLE,
                        json!({"status": "shutting down"}),
                    )
                };
            }
            _ => {}
        }
        let user_id = match (self.config.role, path) {
            (Role::User, p) => p
                .strip_prefix("/users/")
                .and_then(|rest| rest.strip_suffix("/orders"))
                .map(Some),
            (Role::Order, "/orders") | (Role::Payment, "/payments") => {
                Some(query_value(query, "user_id"))
            }
            _ => None,
        };
        let Some(user_id) = user_id else {
            return done(
                StatusCode::NOT_FOUND,
                json!({"error": format!("{} serves no {path}", self.config.role.name())}),
            );
        };
        if req.method() != Method::GET {
            return done(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": format!("{path} answers GET only")}),
            );
        }
        let Some(user_id) = user_id.filter(|id| valid_id(id)) else {
            return done(
                StatusCode::BAD_REQUEST,
                json!({"error": "user_id must be 1 to 64 of A-Z a-z 0-9 _ -"}),
            );
        };
        match self.config.role {
            Role::Payment => {
                let seed = user_id.bytes().fold(0u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
                });
                let checksum = cpu_work(seed, self.config.work_rounds);
                done(
                    StatusCode::OK,
                    json!({
                        "service": self.config.role.name(),
                        "pod": self.pod,
                        "user_id": user_id,
                        "paid": true,
                        "work_rounds": self.config.work_rounds,
                        "checksum": format!("{checksum:016x}"),
                        "gpu_visible": self.gpu.visible(),
                        "gpu_devices": self.gpu.devices,
                        "nvidia_visible_devices": self.gpu.visible_devices,
                    }),
                )
            }
            Role::Order => {
                self.call(req, &format!("/payments?user_id={user_id}"), |payment| {
                    json!({
                        "service": "order-service",
                        "pod": self.pod,
                        "user_id": user_id,
                        "order": {"status": "placed"},
                        "payment": payment,
                    })
                })
                .await
            }
            Role::User => {
                self.call(req, &format!("/orders?user_id={user_id}"), |orders| {
                    json!({
                        "service": "user-service",
                        "pod": self.pod,
                        "user_id": user_id,
                        "orders": orders,
                    })
                })
                .await
            }
        }
    }

    /// Calls the upstream at `path_and_query` and answers with `wrap` of its JSON body.
    async fn call<B>(
        &self,
        incoming: &Request<B>,
        path_and_query: &str,
        wrap: impl FnOnce(Value) -> Value,
    ) -> Answer {
        let (upstream_name, base) = match (self.config.role, self.config.upstream.as_deref()) {
            (Role::User, Some(base)) => ("order-service", base),
            (Role::Order, Some(base)) => ("payment-service", base),
            _ => {
                return Answer {
                    response: json_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &json!({"error": "no upstream configured"}),
                    ),
                    upstream_status: None,
                }
            }
        };
        let fail = |status: StatusCode, why: String, upstream_status: Option<u16>| Answer {
            response: json_response(status, &json!({"error": why, "upstream": upstream_name})),
            upstream_status,
        };
        let mut builder = Request::get(format!("{base}{path_and_query}"));
        for name in PROPAGATED {
            if let Some(v) = incoming.headers().get(name) {
                builder = builder.header(name, v);
            }
        }
        let request = match builder.body(Empty::new()) {
            Ok(r) => r,
            Err(e) => {
                return fail(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot build the request to {upstream_name}: {e}"),
                    None,
                )
            }
        };
        let timeout = self.config.upstream_timeout;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_UPSTREAM_BODY)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => fail(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "{upstream_name} did not answer within {} ms",
                    timeout.as_millis()
                ),
                None,
            ),
            Ok(Err(e)) => fail(
                StatusCode::BAD_GATEWAY,
                format!("calling {upstream_name} failed: {e}"),
                None,
            ),
            Ok(Ok((status, body))) => {
                let code = Some(status.as_u16());
                let parsed = serde_json::from_slice::<Value>(&body);
                match parsed {
                    Ok(value) if status.is_success() => Answer {
                        response: json_response(StatusCode::OK, &wrap(value)),
                        upstream_status: code,
                    },
                    Ok(value) => Answer {
                        response: json_response(
                            StatusCode::BAD_GATEWAY,
                            &json!({
                                "error": format!("{upstream_name} answered {status}"),
                                "upstream": upstream_name,
                                "upstream_body": value,
                            }),
                        ),
                        upstream_status: code,
                    },
                    Err(_) => fail(
                        StatusCode::BAD_GATEWAY,
                        format!(
                            "{upstream_name} answered {status} with {} bytes that are not JSON: {}",
                            body.len(),
                            String::from_utf8_lossy(&body[..body.len().min(200)])
                        ),
                        code,
                    ),
                }
            }
        }
    }
}

/// The value of `name` in a query string (`a=1&user_id=42`), undecoded.
fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_ids() {
        assert_eq!(query_value("a=1&user_id=42", "user_id"), Some("42"));
        assert_eq!(query_value("user_id", "user_id"), Some(""));
        assert_eq!(query_value("xuser_id=1", "user_id"), None);
        assert!(valid_id("u-1_A"));
        assert!(!valid_id(""));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(&"x".repeat(65)));
    }
}
