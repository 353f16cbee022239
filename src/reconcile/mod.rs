//! The companion reconciler: make each host's Ironic node boot from its `spec.bootVolume`.
//!
//! - [`plan`]: the pure diff, `(desired, current Ironic state) -> actions`.
//! - [`apply`]: reads the node, plans, executes; shared by both front ends.
//! - [`cli`]: `bootvolume ironic-apply` (one-shot, files) and `bootvolume reconcile` (controller).
pub mod cli;
pub mod plan;
