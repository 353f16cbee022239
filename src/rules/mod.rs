//! The bootVolume rules (docs/api.md): pure functions, `(old, new) -> Verdict`.
//!
//! No I/O, no `async`, no `Result`: a violation is a value. CREATE runs the schema and the
//! spec rules; UPDATE first checks the ratchet, then adds the transition rules, like
//! baremetal-operator's `validateHost` / `validateChanges`.

pub mod field;
pub mod format;
pub mod spec;
pub mod transition;

use crate::{api::HostView, schema};
pub use field::{ErrorKind, FieldError, Shown, Verdict};

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

impl Default for Policy {
    /// The `serve` defaults.
    fn default() -> Self {
        Self {
            allowed_volume_drivers: spec::KNOWN_DRIVERS.iter().map(|d| (*d).to_owned()).collect(),
            allow_inline_chap: false,
            preserve_for: vec![DEFAULT_PRESERVE_FOR.to_owned()],
        }
    }
}

/// Validates a BareMetalHost: `old` is `None` on CREATE (and in `check`).
///
/// An object being deleted is always allowed, and on UPDATE nothing is checked unless
/// `bootVolume` or a field it depends on changed (the ratchet).
pub fn validate(policy: &Policy, old: Option<&HostView>, new: &HostView) -> Verdict {
    let mut verdict = Verdict::default();
    if new.deleting() || old.is_some_and(|old| !transition::dependencies_changed(old, new)) {
        return verdict;
    }
    if let Some(old) = old {
        transition::provisioning_lock(old, new, &mut verdict);
    }
    if let Some(bv) = new.boot_volume.as_ref() {
        let schema_errors = schema::check(bv, &new.boot_volume_shape);
        let mut rules = Verdict::default();
        spec::check(policy, new, bv, &mut rules);
        verdict.errors.extend(merge(schema_errors, rules.errors));
        verdict.warnings.extend(rules.warnings);
    }
    verdict
}

/// One report per field: a schema type error wins at its path and below (the rules could
/// not read the value); otherwise the rule's more precise error wins over the schema's.
fn merge(schema_errors: Vec<FieldError>, rule_errors: Vec<FieldError>) -> Vec<FieldError> {
    let (type_errors, other): (Vec<_>, Vec<_>) = schema_errors.into_iter().partition(schema::is_type_error);
    let shadowed = |f: &str| {
        type_errors.iter().any(|t| {
            f == t.field
                || f.strip_prefix(t.field.as_str())
                    .is_some_and(|r| r.starts_with('.'))
        })
    };
    let mut out: Vec<FieldError> = rule_errors.into_iter().filter(|e| !shadowed(&e.field)).collect();
    let schema_rest: Vec<FieldError> = other
        .into_iter()
        .filter(|s| !shadowed(&s.field) && !out.iter().any(|e| e.field == s.field))
        .collect();
    out.extend(schema_rest);
    out.extend(type_errors);
    out
}

#[cfg(test)]
mod cel_tests;
#[cfg(test)]
mod tests;
