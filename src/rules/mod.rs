//! The bootVolume rules (design.md section 2): pure functions, `(old, new) -> Verdict`.

/// Default `--preserve-for`: baremetal-operator's controller ServiceAccount.
pub const DEFAULT_PRESERVE_FOR: &str =
    "system:serviceaccount:baremetal-operator-system:baremetal-operator-controller-manager";

/// Flags that change what the rules accept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// `--allowed-volume-drivers`.
    pub allowed_volume_drivers: Vec<String>,
    /// `--allow-inline-chap`.
    pub allow_inline_chap: bool,
    /// `--preserve-for`.
    pub preserve_for: Vec<String>,
}
