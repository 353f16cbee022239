//! bootvolume: make diskless (boot-from-volume) bare metal safe to declare in Kubernetes.
//!
//! # Layout
//! - [`api`]: typed views of the BareMetalHost parts we own (`spec.bootVolume`) or read.
//! - [`rules`]: pure validation, `(old, new) -> Verdict`.
//! - [`cli`]: clap command line.
//! - [`ironic`]: typed Ironic v1 client.
//! - [`reconcile`]: plan/apply bootVolume onto Ironic nodes; `reconcile` and `ironic-apply`.
#![forbid(unsafe_code)]

pub mod admission;
pub mod api;
pub mod audit;
pub mod check;
pub mod cli;
/// Test and benchmark builders (not part of the API).
#[doc(hidden)]
pub mod fixtures;
pub mod ironic;
pub mod metrics;
pub mod mutate;
pub mod reconcile;
pub mod rules;
pub mod schema;
pub mod server;
pub mod telemetry;
pub mod tls;
