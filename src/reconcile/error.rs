//! Errors of a reconcile pass, shared by `ironic-apply` and the controller.
//!
//! Messages name the host, node, Secret and key involved, never a Secret value: they go to
//! stderr, logs and Kubernetes Events.

use super::plan::SpecError;
use crate::ironic;

/// Why a host could not be brought in sync.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Neither `status.provisioning.ID` nor `<namespace>~<name>` names an Ironic node.
    #[error("Ironic node {ident} not found (looked up by {how})")]
    NodeNotFound {
        /// The identifier tried last.
        ident: String,
        /// What was tried (`status.provisioning.ID` and/or name).
        how: String,
    },
    /// The credentials Secret does not exist (or cannot be read).
    #[error("Secret {namespace}/{name} not found")]
    SecretNotFound {
        /// Its namespace (the host's).
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The credentials Secret lacks a key (or its value is empty or not UTF-8).
    #[error("Secret {namespace}/{name} has no usable key {key:?}")]
    SecretKeyMissing {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// `username` or `password`.
        key: &'static str,
    },
    /// `spec.bootVolume` cannot be applied as is.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// An Ironic call failed.
    #[error("Ironic {action}: {source}")]
    Ironic {
        /// What we were doing (no values beyond ids).
        action: String,
        /// The typed Ironic error (already redacted).
        #[source]
        source: ironic::Error,
    },
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(String),
    /// The API server (or a webhook, e.g. baremetal-operator's) refused our patch of a host.
    #[error("BareMetalHost {namespace}/{name}: patch refused: {message}")]
    HostRejected {
        /// The host's namespace.
        namespace: String,
        /// The host's name.
        name: String,
        /// The refusal, as the API server sent it.
        message: String,
    },
    /// An input file could not be read or parsed (`ironic-apply`).
    #[error("{0}")]
    Input(String),
}

impl Error {
    /// Wraps an Ironic error with what we were doing.
    pub fn ironic(action: impl Into<String>, source: ironic::Error) -> Self {
        Self::Ironic {
            action: action.into(),
            source,
        }
    }

    /// A bounded label for `bootvolume_reconcile_total{result}` (Event reasons are in `events`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::NodeNotFound { .. } => "node_not_found",
            Self::SecretNotFound { .. } => "secret_not_found",
            Self::SecretKeyMissing { .. } => "secret_key_missing",
            Self::Spec(_) => "invalid_spec",
            Self::Ironic { source, .. } => match source {
                ironic::Error::Transport { .. } => "ironic_unreachable",
                ironic::Error::Conflict { .. } => "ironic_conflict",
                ironic::Error::InvalidState { .. } => "ironic_invalid_state",
                ironic::Error::Server { .. } => "ironic_server_error",
                _ => "ironic_error",
            },
            Self::Kube(_) => "kube_error",
            Self::HostRejected { .. } => "host_patch_rejected",
            Self::Input(_) => "input_error",
        }
    }

    /// Whether retrying soon may help (Ironic 409/5xx/unreachable, a node state race, the
    /// Kubernetes API). Others wait for a change of the host or Secret (which re-triggers)
    /// and are only re-checked slowly.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Ironic { source, .. } => {
                source.is_transient() || matches!(source, ironic::Error::InvalidState { .. })
            }
            Self::Kube(_) => true,
            _ => false,
        }
    }
}
