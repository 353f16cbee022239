//! Front ends of the reconciler (placeholder until issue 3 lands).
use clap::Args;

/// `reconcile` flags.
#[derive(Debug, Args)]
pub struct ReconcileArgs {}

/// `ironic-apply` flags.
#[derive(Debug, Args)]
pub struct IronicApplyArgs {}
