//! The companion reconciler: make each host's Ironic node boot from its `spec.bootVolume`.
//!
//! - [`plan`]: the pure diff, `(desired, current Ironic state) -> actions`.
//! - [`apply`]: reads the node, plans, executes; shared by both front ends.
//! - [`fleet`]: the periodic fleet sync (list calls, join, out-of-sync decision).
//! - [`trim`]: what the reflector keeps of a host, and which changes trigger a pass.
//! - [`handshake`]: the pure adoption handshake with baremetal-operator.
//! - [`host_api`]: one full pass for one host (configure, then hand over), and host writes.
//! - [`oneshot`]: `bootvolume ironic-apply`, hosts and Secrets from files.
//! - [`cli`]: flags and entry points of `ironic-apply` and `reconcile`.
//! - [`controller`]: the Kubernetes controller; [`events`]: the Events it publishes.
pub mod apply;
pub mod cli;
pub mod controller;
mod error;
pub mod events;
pub mod fleet;
pub mod handshake;
pub mod host_api;
pub mod metrics;
pub mod oneshot;
pub mod plan;
pub mod trim;

pub use error::Error;
