//! The companion reconciler: make each host's Ironic node boot from its `spec.bootVolume`.
//!
//! - [`plan`]: the pure diff, `(desired, current Ironic state) -> actions`.
//! - [`apply`]: reads the node, plans, executes; shared by both front ends.
//! - [`oneshot`]: `bootvolume ironic-apply`, hosts and Secrets from files.
//! - [`cli`]: flags and entry points of `ironic-apply` and `reconcile`.
//! - [`controller`]: the Kubernetes controller; [`events`]: the Events it publishes.
pub mod apply;
pub mod cli;
pub mod controller;
mod error;
pub mod events;
pub mod metrics;
pub mod oneshot;
pub mod plan;

pub use error::Error;
