//! The meshguard model, shared by the Proxy-Wasm filters and the `meshctl` installer so that the
//! policy the installer renders is exactly the policy the filters enforce.
//!
//! - [`identity`]: SPIFFE workload identities (`spiffe://<td>/ns/<ns>/sa/<sa>`).
//! - [`model`]: services and the call graph ([`Mesh::reference`] is user → order → payment).
//! - [`config`]: the filters' JSON configuration, read strictly and validated, with errors that
//!   name the field.
//! - [`authz`]: the fail-closed authorization decision.
//! - [`metrics`]: metric names and the Envoy tag rules that label them.
//! - [`http`]: method, path, gRPC and status helpers.
//! - [`node`]: the workload facts of Istio's node metadata, as Envoy serves them.
//!
//! This crate builds for `wasm32-wasip1` (inside the filters) and natively (installer, tests).

pub mod authz;
pub mod config;
pub mod fasthash;
pub mod http;
pub mod identity;
mod json;
pub mod metrics;
pub mod model;
pub mod node;

pub use authz::{Authorizer, Decision, DenyReason, Facts, RequestFacts, WorkloadCheck};
pub use config::{AllowEntry, AuthzConfig, ConfigError, LogLevel, MetricsConfig, Mode};
pub use identity::{IdentityError, SpiffeId};
pub use model::{CallRule, Client, Mesh, ModelError, Service};
pub use node::NodeFacts;
