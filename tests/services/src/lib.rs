//! The reference services: user-service, order-service and payment-service, the three workloads
//! meshguard protects and scales. A request to user-service goes user → order → payment, as the
//! original write-up describes: user-service calls
//! `order-service…:5000/orders?user_id=…`, order-service calls payment-service, and
//! payment-service does a bounded amount of CPU work per request (standing in for the GPU job)
//! and says whether a GPU device is visible to it.
//!
//! Each is plain HTTP/1.1 on one port: in the mesh, mutual TLS and the identity check are the
//! sidecar's. Each has `/healthz` (alive) and `/readyz` (ready; 503 once shutting down), takes
//! its upstream URL and timeouts from the environment ([`config`]), writes one log line per
//! request, and on SIGTERM stops accepting, finishes what it has in flight and exits
//! ([`server`]).

pub mod config;
pub mod handler;
pub mod server;
pub mod work;

pub use config::{Config, ConfigError, Role};
