//! The Kubernetes Events a reconcile pass publishes on its BareMetalHost.
//!
//! Pure: a pass's result in, [`Event`]s out; the controller sends them through kube's
//! `Recorder`. Every reason is a constant here, so the full list is in one place.

use super::{Error, apply::Outcome, plan::Blocked};
use kube::runtime::events::{Event, EventType};

/// Longest event note we send (the API limit is 1 kB).
pub const MAX_NOTE: usize = 1000;

/// Writes made to the Ironic node.
pub const BOOT_VOLUME_APPLIED: &str = "BootVolumeApplied";
/// Dry-run: the writes that would have been made.
pub const BOOT_VOLUME_DRY_RUN: &str = "BootVolumeDryRun";
/// A change waits for the node to be powered off.
pub const WAITING_FOR_POWER_OFF: &str = "WaitingForPowerOff";
/// The storage interface cannot change in the node's provision state.
pub const STORAGE_INTERFACE_CHANGE_BLOCKED: &str = "StorageInterfaceChangeBlocked";

/// The Events one pass produces: applied changes, waits, or the error. An in-sync pass is
/// silent (it repeats every resync).
pub fn events(result: &Result<Outcome, Error>, dry_run: bool) -> Vec<Event> {
    let event = |type_, reason: &str, action: &str, note: String| Event {
        type_,
        reason: reason.into(),
        note: Some(truncate(note)),
        action: action.into(),
        secondary: None,
    };
    match result {
        Err(e) => vec![event(
            EventType::Warning,
            e.event_reason(),
            "Reconcile",
            e.to_string(),
        )],
        Ok(o) => {
            let mut out = Vec::new();
            if !o.changes.is_empty() {
                let (reason, verb) = if dry_run {
                    (BOOT_VOLUME_DRY_RUN, "would apply")
                } else {
                    (BOOT_VOLUME_APPLIED, "applied")
                };
                let note = format!("{verb} to Ironic node {}: {}", o.node_uuid, o.changes.join("; "));
                out.push(event(EventType::Normal, reason, "Apply", note));
            }
            for b in &o.blocked {
                let reason = match b {
                    Blocked::WaitingForPowerOff { .. } => WAITING_FOR_POWER_OFF,
                    Blocked::InterfaceChangeNotAllowed { .. } => STORAGE_INTERFACE_CHANGE_BLOCKED,
                };
                out.push(event(
                    EventType::Warning,
                    reason,
                    "Wait",
                    format!("Ironic node {}: {b}", o.node_uuid),
                ));
            }
            out
        }
    }
}

/// Cuts a note to [`MAX_NOTE`] bytes on a character boundary.
pub fn truncate(s: String) -> String {
    if s.len() <= MAX_NOTE {
        return s;
    }
    let mut end = MAX_NOTE - 3;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_name_the_outcome_and_long_notes_are_cut() {
        let o = Outcome {
            node_uuid: "n".into(),
            changes: vec!["x".repeat(2000)],
            blocked: vec![Blocked::WaitingForPowerOff {
                what: "update".into(),
                power_state: "power on".into(),
            }],
            skipped: None,
        };
        let evs = events(&Ok(o), false);
        let reasons: Vec<&str> = evs.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(reasons, ["BootVolumeApplied", "WaitingForPowerOff"]);
        assert!(evs[0].note.as_ref().unwrap().len() <= MAX_NOTE);
        assert!(
            events(&Ok(Outcome::default()), false).is_empty(),
            "in sync is silent"
        );
        let err = Error::SecretNotFound {
            namespace: "a".into(),
            name: "chap".into(),
        };
        let evs = events(&Err(err), false);
        assert_eq!(
            (evs[0].reason.as_str(), evs[0].type_),
            ("CredentialsMissing", EventType::Warning)
        );
    }
}
