//! `meshctl`: installs meshguard on a Kubernetes cluster, shows its status, removes it.
//!
//! The binary (`src/main.rs`) parses the command line ([`cli`]) and calls [`commands::run`];
//! everything else is this library, so tests drive the same code:
//!
//! - [`client`]: the cluster connection, chosen like kubectl (`--kubeconfig`, `--context`).
//! - [`preflight`]: what the cluster must have, as a typed [`preflight::PreflightReport`].
//! - [`apply`]: `install`, server-side apply of every rendered object in order.
//! - [`status`]: present / missing / drifted, with workload and autoscaler health.
//! - [`uninstall`]: delete exactly what carries meshctl's ownership labels.
//! - [`resources`], [`scheduling`], [`wait`], [`progress`], [`error`], [`tls`], [`causes`]: the
//!   pieces they share.
//!
//! The objects themselves come from `meshguard-manifests`; the model from `meshguard-mesh`.
//!
//! Imports go one way (`tests/modules.rs` checks it): [`error`] imports none of the others, and
//! each error describes itself; the command line's own wording, such as the flag that sets an
//! invalid option, is added at the edge by [`cli::describe`].

pub mod apply;
pub mod causes;
pub mod cli;
pub mod client;
pub mod commands;
pub mod error;
pub mod preflight;
pub mod progress;
pub mod publish;
pub mod resources;
pub mod scheduling;
pub mod status;
pub mod tls;
pub mod uninstall;
pub mod wait;

pub use error::Error;
