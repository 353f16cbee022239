//! The Kubernetes Events a reconcile pass publishes on its BareMetalHost, and how they are sent.
//!
//! [`events`] is pure: a pass's result in, [`Event`]s out, one reason per kind of outcome so
//! the newest Event on a host says what last happened to it. [`Recorder`] sends them. kube's
//! own recorder folds repeats into a series keyed without the note, so a host configured,
//! then rotated, then removed within minutes would keep showing the first note; ours keys
//! the series by the note too: an identical repeat (a wait retried with backoff) only bumps
//! the series count, anything new is a new Event. In-sync passes send nothing.

use super::{Error, apply::Outcome, plan::Blocked, plan::Change};
use crate::ironic;
use k8s_openapi::{
    api::{
        core::v1::ObjectReference,
        events::v1::{Event as K8sEvent, EventSeries},
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
pub use kube::runtime::events::{Event, EventType, Reporter};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use std::{
    collections::HashMap,
    hash::{Hash as _, Hasher as _},
    sync::Mutex,
};

/// Longest event note we send (the API limit is 1 kB).
pub const MAX_NOTE: usize = 1000;

/// `bootVolume` configured or updated on the Ironic node.
pub const BOOT_VOLUME_APPLIED: &str = "BootVolumeApplied";
/// Only the CHAP credentials were re-sent (the Secret changed).
pub const BOOT_VOLUME_CREDENTIALS_ROTATED: &str = "BootVolumeCredentialsRotated";
/// `bootVolume` removed: what the reconciler had set on the node is undone.
pub const BOOT_VOLUME_REMOVED: &str = "BootVolumeRemoved";
/// Dry-run: the writes that would have been made (the note says which kind).
pub const BOOT_VOLUME_DRY_RUN: &str = "BootVolumeDryRun";
/// A change waits for the node to be powered off.
pub const BOOT_VOLUME_WAITING: &str = "BootVolumeWaiting";
/// The storage interface cannot change in the node's provision state (needs an operator).
pub const STORAGE_INTERFACE_CHANGE_BLOCKED: &str = "StorageInterfaceChangeBlocked";
/// No Ironic node for the host.
pub const NODE_NOT_FOUND: &str = "NodeNotFound";
/// The CHAP Secret or one of its keys is missing.
pub const CREDENTIALS_MISSING: &str = "CredentialsMissing";
/// `spec.bootVolume` cannot be applied as written.
pub const INVALID_BOOT_VOLUME: &str = "InvalidBootVolume";
/// Ironic could not be reached (connection refused, timeout, TLS).
pub const IRONIC_UNREACHABLE: &str = "IronicUnreachable";
/// Ironic answered with an error.
pub const IRONIC_ERROR: &str = "IronicError";
/// A Kubernetes API call of the pass failed (reading the Secret).
pub const KUBERNETES_ERROR: &str = "KubernetesError";
/// The host object could not be read.
pub const INVALID_INPUT: &str = "InvalidInput";
/// The API server or a webhook refused our patch of the host.
pub const HOST_PATCH_REJECTED: &str = "HostPatchRejected";

/// The reason, action and verb of a change, by kind.
fn change_reason(change: Change, dry_run: bool) -> (&'static str, &'static str, &'static str) {
    match (dry_run, change) {
        (true, Change::Applied) => (BOOT_VOLUME_DRY_RUN, "DryRun", "would apply"),
        (true, Change::CredentialsRotated) => (
            BOOT_VOLUME_DRY_RUN,
            "DryRun",
            "would re-send rotated CHAP credentials",
        ),
        (true, Change::Removed) => (BOOT_VOLUME_DRY_RUN, "DryRun", "would remove the boot volume"),
        (false, Change::Applied) => (BOOT_VOLUME_APPLIED, "Apply", "applied"),
        (false, Change::CredentialsRotated) => (
            BOOT_VOLUME_CREDENTIALS_ROTATED,
            "RotateCredentials",
            "sent rotated CHAP credentials",
        ),
        (false, Change::Removed) => (BOOT_VOLUME_REMOVED, "Remove", "removed the boot volume"),
    }
}

/// The Event reason of a failed pass.
pub fn error_reason(e: &Error) -> &'static str {
    match e {
        Error::NodeNotFound { .. } => NODE_NOT_FOUND,
        Error::SecretNotFound { .. } | Error::SecretKeyMissing { .. } => CREDENTIALS_MISSING,
        Error::Spec(_) => INVALID_BOOT_VOLUME,
        Error::Ironic {
            source: ironic::Error::Transport { .. },
            ..
        } => IRONIC_UNREACHABLE,
        Error::Ironic { .. } => IRONIC_ERROR,
        Error::Kube(_) => KUBERNETES_ERROR,
        Error::HostRejected { .. } => HOST_PATCH_REJECTED,
        Error::Input(_) => INVALID_INPUT,
    }
}

/// The Events one pass produces: the change made, what waits, or the error. An in-sync pass
/// is silent (it repeats every resync).
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
            error_reason(e),
            "Reconcile",
            e.to_string(),
        )],
        Ok(o) => {
            let mut out = Vec::new();
            if !o.changes.is_empty() {
                let (reason, action, verb) = change_reason(o.change.unwrap_or(Change::Applied), dry_run);
                let note = format!("{verb} on Ironic node {}: {}", o.node_uuid, o.changes.join("; "));
                out.push(event(EventType::Normal, reason, action, note));
            }
            for b in &o.blocked {
                let reason = match b {
                    Blocked::WaitingForPowerOff { .. } => BOOT_VOLUME_WAITING,
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

/// How long a series stays open after its last occurrence (as kube's recorder and client-go).
pub const SERIES_TTL: SignedDuration = SignedDuration::from_mins(6);

/// What makes two Events "the same" (one series): everything kube's recorder uses, plus the
/// note. The reporter is the recorder's own. Kept as a 64-bit hash: an open series costs a
/// few dozen bytes, not a copy of its note and Event.
fn series_key(ev: &Event, regarding: &ObjectReference) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    (type_name(ev.type_), &ev.reason, &ev.action, &ev.note).hash(&mut h);
    let r = regarding;
    (&r.api_version, &r.kind, &r.namespace, &r.name, &r.uid).hash(&mut h);
    h.finish()
}

fn type_name(t: EventType) -> &'static str {
    match t {
        EventType::Normal => "Normal",
        EventType::Warning => "Warning",
    }
}

/// An open series: when its Event was created (which also names it), how many times it
/// happened, and when last.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Open {
    first: Timestamp,
    count: i32,
    last: Timestamp,
}

/// Open series by [`series_key`].
#[derive(Default)]
struct Series {
    open: HashMap<u64, Open>,
    /// When series older than [`SERIES_TTL`] were last dropped.
    pruned: Option<Timestamp>,
}

/// How often expired series are dropped: a sweep visits every open series, so doing it on
/// every Event would make a fleet's worth of Events cost quadratic time.
const PRUNE_EVERY: SignedDuration = SignedDuration::from_mins(1);

impl Series {
    /// What to send for `key` at `now`: `(event time, Some(count))` continues the open series
    /// (a PATCH of the Event created at that time), `(now, None)` starts one (a POST). An
    /// expired series (older than [`SERIES_TTL`]) is never continued, and dropped within
    /// [`PRUNE_EVERY`].
    fn next(&mut self, key: u64, now: Timestamp) -> (Timestamp, Option<i32>) {
        let alive = |o: &Open| o.last + SERIES_TTL > now;
        if self.pruned.is_none_or(|t| t + PRUNE_EVERY <= now) {
            self.open.retain(|_, o| alive(o));
            self.pruned = Some(now);
        }
        match self.open.get(&key).filter(|o| alive(o)) {
            Some(o) => (o.first, Some(o.count + 1)),
            None => (now, None),
        }
    }

    /// Records what was sent (`count`: `None` for a new Event).
    fn sent(&mut self, key: u64, first: Timestamp, count: Option<i32>, now: Timestamp) {
        let count = count.unwrap_or(1);
        self.open.insert(
            key,
            Open {
                first,
                count,
                last: now,
            },
        );
    }
}

/// Publishes `events.k8s.io/v1` Events, folding identical repeats into a series.
pub struct Recorder {
    client: Client,
    reporter: Reporter,
    series: Mutex<Series>,
}

impl Recorder {
    /// A recorder reporting as `reporter`.
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            series: Mutex::default(),
        }
    }

    /// Sends `ev` about `regarding`: a new Event, or the next occurrence of its open series.
    pub async fn publish(&self, ev: &Event, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = series_key(ev, regarding);
        let (first, count) = self
            .series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next(key, now);
        // A repeat is the same Event (same name, same eventTime) with its series moved on.
        let mut event = self.fresh(ev, regarding, first);
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), namespace);
        let sent = match (count, &event.metadata.name) {
            (Some(count), Some(name)) => {
                event.series = Some(EventSeries {
                    count,
                    last_observed_time: MicroTime(now),
                });
                api.patch(name, &PatchParams::default(), &Patch::Merge(&event))
                    .await
                    .map(drop)
            }
            _ => api.create(&PostParams::default(), &event).await.map(drop),
        };
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        match sent {
            Ok(()) => {
                series.sent(key, first, count, now);
                Ok(())
            }
            // E.g. the Event was deleted meanwhile: the next occurrence starts a new one.
            Err(e) => {
                series.open.remove(&key);
                Err(e)
            }
        }
    }

    fn fresh(&self, ev: &Event, regarding: &ObjectReference, now: Timestamp) -> K8sEvent {
        let controller = &self.reporter.controller;
        K8sEvent {
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            note: ev.note.clone(),
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_ref().unwrap_or(controller),
                    now.as_nanosecond()
                )),
                ..Default::default()
            },
            reporting_controller: Some(controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| controller.clone()),
            ),
            type_: Some(type_name(ev.type_).into()),
            related: ev.secondary.clone(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(change: Option<Change>, changes: &[&str], blocked: Vec<Blocked>) -> Outcome {
        Outcome {
            node_uuid: "n".into(),
            changes: changes.iter().map(|c| c.to_string()).collect(),
            blocked,
            skipped: None,
            change,
        }
    }

    #[test]
    fn each_kind_of_outcome_has_its_own_reason_and_action() {
        let wait = || Blocked::WaitingForPowerOff {
            what: "update".into(),
            power_state: "power on".into(),
        };
        let blocked = || Blocked::InterfaceChangeNotAllowed {
            from: "noop".into(),
            to: "external".into(),
            provision_state: "active".into(),
        };
        let applied = Some(Change::Applied);
        let rotated = Some(Change::CredentialsRotated);
        let removed = Some(Change::Removed);
        type Want = Vec<(&'static str, &'static str, EventType, &'static str)>;
        let cases: Vec<(Outcome, bool, Want)> = vec![
            (outcome(None, &[], vec![]), false, vec![]),
            (
                outcome(applied, &["create volume target"], vec![]),
                false,
                vec![(
                    BOOT_VOLUME_APPLIED,
                    "Apply",
                    EventType::Normal,
                    "applied on Ironic node n: create volume target",
                )],
            ),
            (
                outcome(
                    rotated,
                    &["update volume target: properties (CHAP credentials)"],
                    vec![],
                ),
                false,
                vec![(
                    BOOT_VOLUME_CREDENTIALS_ROTATED,
                    "RotateCredentials",
                    EventType::Normal,
                    "sent rotated CHAP credentials on Ironic node n: update volume target: properties (CHAP credentials)",
                )],
            ),
            (
                outcome(removed, &["delete volume target", "update node"], vec![]),
                false,
                vec![(
                    BOOT_VOLUME_REMOVED,
                    "Remove",
                    EventType::Normal,
                    "removed the boot volume on Ironic node n: delete volume target; update node",
                )],
            ),
            (
                outcome(removed, &["delete volume target"], vec![]),
                true,
                vec![(
                    BOOT_VOLUME_DRY_RUN,
                    "DryRun",
                    EventType::Normal,
                    "would remove the boot volume on Ironic node n: delete volume target",
                )],
            ),
            (
                outcome(applied, &["create volume connector"], vec![wait(), blocked()]),
                false,
                vec![
                    (
                        BOOT_VOLUME_APPLIED,
                        "Apply",
                        EventType::Normal,
                        "applied on Ironic node n: create volume connector",
                    ),
                    (
                        BOOT_VOLUME_WAITING,
                        "Wait",
                        EventType::Warning,
                        "Ironic node n: waiting for the node to be powered off to update (power state: power on)",
                    ),
                    (
                        STORAGE_INTERFACE_CHANGE_BLOCKED,
                        "Wait",
                        EventType::Warning,
                        "Ironic node n: cannot change storage_interface noop -> external while the node is active; \
                         it needs enroll, manageable, available or maintenance mode",
                    ),
                ],
            ),
        ];
        for (o, dry_run, want) in cases {
            let got: Vec<_> = events(&Ok(o.clone()), dry_run)
                .into_iter()
                .map(|e| (e.reason, e.action, e.type_, e.note.unwrap()))
                .collect();
            let want: Vec<_> = want
                .into_iter()
                .map(|(r, a, t, n)| (r.to_owned(), a.to_owned(), t, n.to_owned()))
                .collect();
            assert_eq!(got, want, "{o:?} dry_run={dry_run}");
        }
    }

    #[test]
    fn errors_are_warnings_named_by_cause_and_long_notes_are_cut() {
        let cases = [
            (
                Error::SecretNotFound {
                    namespace: "a".into(),
                    name: "chap".into(),
                },
                CREDENTIALS_MISSING,
            ),
            (
                Error::NodeNotFound {
                    ident: "a~h".into(),
                    how: "name".into(),
                },
                NODE_NOT_FOUND,
            ),
            (Error::Kube("x".repeat(2000)), KUBERNETES_ERROR),
        ];
        for (err, reason) in cases {
            let evs = events(&Err(err), false);
            assert_eq!(evs.len(), 1);
            assert_eq!(
                (evs[0].reason.as_str(), evs[0].action.as_str(), evs[0].type_),
                (reason, "Reconcile", EventType::Warning)
            );
            assert!(evs[0].note.as_ref().unwrap().len() <= MAX_NOTE);
        }
    }

    #[test]
    fn a_series_folds_identical_repeats_only_and_expires() {
        let ev = |note: &str| Event {
            type_: EventType::Warning,
            reason: BOOT_VOLUME_WAITING.into(),
            note: Some(note.into()),
            action: "Wait".into(),
            secondary: None,
        };
        let host = ObjectReference {
            name: Some("h".into()),
            namespace: Some("a".into()),
            ..Default::default()
        };
        let t0 = Timestamp::UNIX_EPOCH;
        let min = |m: i64| t0 + SignedDuration::from_mins(m);
        let mut series = Series::default();
        let mut send = |note: &str, at: Timestamp| {
            let key = series_key(&ev(note), &host);
            let (first, count) = series.next(key, at);
            series.sent(key, first, count, at);
            (first, count)
        };
        assert_eq!(send("one", t0), (t0, None));
        assert_eq!(
            send("one", min(1)),
            (t0, Some(2)),
            "a repeat continues the Event of t0"
        );
        assert_eq!(send("two", min(2)), (min(2), None), "a new note is a new Event");
        assert_eq!(send("one", min(3)), (t0, Some(3)));
        assert_eq!(send("one", min(10)), (min(10), None), "an old series is closed");
        assert_eq!(series.open.len(), 1, "the expired \"two\" series was dropped");
        let other = ObjectReference {
            name: Some("h2".into()),
            ..host.clone()
        };
        assert_ne!(series_key(&ev("one"), &host), series_key(&ev("one"), &other));
    }
}
