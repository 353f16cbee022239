//! The companion reconciler (issue 3): placeholder until it lands.
pub mod cli;
