//! `bootvolume reconcile`: a kube-runtime Controller over BareMetalHosts.
//!
//! Hosts are read as [`DynamicObject`]s of `metal3.io/v1alpha1` `baremetalhosts` (we never
//! write a host, so we never need its full schema). A Secret change re-triggers the hosts
//! that reference it, found in the controller's own reflector store. Each outcome becomes
//! a Kubernetes Event on the host, a log line and a metric. Only the Lease holder reconciles
//! ([`lead`]), so two replicas never write to the same node at once.

use super::{
    Error,
    apply::{HostSpec, Outcome},
    handshake::{self, EventKind, Phase},
    host_api::{self, KubeHostWriter},
    metrics::Metrics,
    plan::Blocked,
};
use crate::ironic::IronicClient;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::DynamicObject,
    core::PartialObjectMeta,
    runtime::{
        Controller,
        controller::{self, Action},
        events::{Event, EventType, Recorder, Reporter},
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use kube_lease_manager::LeaseManagerBuilder;
use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::sync::watch;

/// First retry delay after a transient failure (409, 5xx, unreachable, waiting for power off).
pub const BACKOFF_MIN: Duration = Duration::from_secs(5);
/// Cap of the retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Longest event note we send (the API limit is 1 kB).
const MAX_NOTE: usize = 1000;

pub use super::host_api::host_resource;
/// How soon a host handed over (or still being configured) is looked at again: adoption
/// takes seconds, and Ironic's progress does not always change the host.
const HANDSHAKE_RECHECK: Duration = Duration::from_secs(30);

/// What every reconcile shares.
pub struct Context {
    kube: Client,
    ironic: IronicClient,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    dry_run: bool,
    resync: Duration,
    backoff: Backoff,
    handshake: handshake::Options,
}

impl Context {
    /// `resync` is the re-check period of an in-sync host (repairs drift such as the targets
    /// Ironic deletes on undeploy); `reporter` names us in Events.
    pub fn new(
        kube: Client,
        ironic: IronicClient,
        metrics: Arc<Metrics>,
        reporter: Reporter,
        dry_run: bool,
        resync: Duration,
    ) -> Self {
        let recorder = Recorder::new(kube.clone(), reporter);
        Self {
            kube,
            ironic,
            recorder,
            metrics,
            dry_run,
            resync,
            backoff: Backoff::default(),
            handshake: handshake::Options::new(dry_run, true),
        }
    }

    /// Enables or disables the hand-over to baremetal-operator (`--handoff`, default on).
    pub fn with_handoff(mut self, handoff: bool) -> Self {
        self.handshake.handoff = handoff;
        self
    }
}

/// Capped exponential retry delays per host: 5 s, 10 s, 20 s ... 300 s.
#[derive(Default)]
struct Backoff(Mutex<HashMap<String, u32>>);

impl Backoff {
    fn next(&self, key: &str) -> Duration {
        let mut failures = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(key.to_owned()).or_default();
        let delay = BACKOFF_MIN.saturating_mul(1 << (*n).min(16)).min(BACKOFF_MAX);
        *n = n.saturating_add(1);
        delay
    }

    fn reset(&self, key: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

fn key(obj: &DynamicObject) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// One reconcile of one host: read its Secret, run [`apply::apply`], report.
#[tracing::instrument(skip_all, fields(host = %key(&obj)))]
pub async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action, Error> {
    let start = Instant::now();
    let (result, handshake_events, phase) = match pass(&obj, &ctx).await {
        Ok(report) => {
            let mut outcome = report.outcome;
            outcome.changes.extend(report.steps);
            (Ok(outcome), report.events, report.phase)
        }
        Err(e) => (Err(e), Vec::new(), None),
    };
    if result.is_ok() {
        ctx.metrics.set_host_phase(&key(&obj), phase);
    }
    let label = match &result {
        Ok(o) if o.skipped.is_some() => "skipped",
        Ok(o) if !o.blocked.is_empty() => "waiting",
        Ok(o) if !o.changes.is_empty() => "applied",
        Ok(_) => "in_sync",
        Err(e) => e.metric_label(),
    };
    ctx.metrics.record_reconcile(label, start.elapsed());
    let reference = obj.object_ref(&host_resource());
    let handshake_events = handshake_events.into_iter().map(|e| Event {
        type_: match e.kind {
            EventKind::Normal => EventType::Normal,
            EventKind::Warning => EventType::Warning,
        },
        reason: e.reason.into(),
        note: Some(truncate(e.note)),
        action: "Handshake".into(),
        secondary: None,
    });
    for event in events(&result, ctx.dry_run).into_iter().chain(handshake_events) {
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %e, reason = event.reason, "cannot publish event");
        }
    }
    let outcome = result.inspect_err(|e| tracing::warn!(error = %e, "reconcile failed"))?;
    tracing::info!(
        result = label,
        changes = outcome.changes.len(),
        blocked = outcome.blocked.len(),
        "reconciled"
    );
    if outcome.blocked.is_empty() {
        ctx.backoff.reset(&key(&obj));
        let recheck = matches!(phase, Some(Phase::HandedOver | Phase::Configuring));
        Ok(Action::requeue(if recheck {
            ctx.resync.min(HANDSHAKE_RECHECK)
        } else {
            ctx.resync
        }))
    } else {
        Ok(Action::requeue(ctx.backoff.next(&key(&obj))))
    }
}

/// Retries: transient errors with capped backoff; the rest slowly (a host or Secret change
/// re-triggers at once anyway), so a permanent 4xx is reported, not hammered.
pub fn error_policy(obj: Arc<DynamicObject>, err: &Error, ctx: Arc<Context>) -> Action {
    if err.is_transient() {
        Action::requeue(ctx.backoff.next(&key(&obj)))
    } else {
        Action::requeue(BACKOFF_MAX)
    }
}

async fn pass(obj: &DynamicObject, ctx: &Context) -> Result<host_api::Report, Error> {
    let raw = serde_json::to_value(obj).map_err(|e| Error::Input(format!("cannot read host: {e}")))?;
    let host = HostSpec::from_value(&raw)?;
    let secret = match host.skip.map_or(host.secret_name(), |_| Ok(None))? {
        Some(name) => Api::<Secret>::namespaced(ctx.kube.clone(), &host.namespace)
            .get_opt(name)
            .await
            .map_err(|e| Error::Kube(format!("get Secret {}/{name}: {e}", host.namespace)))?,
        None => None,
    };
    let writer = KubeHostWriter::new(ctx.kube.clone());
    host_api::host_pass(&ctx.ironic, &writer, &raw, secret.as_ref(), &ctx.handshake).await
}

/// The Events one pass produces: applied changes, waits, or the error. An in-sync pass is
/// silent (it repeats every resync).
fn events(result: &Result<Outcome, Error>, dry_run: bool) -> Vec<Event> {
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
                    ("BootVolumeDryRun", "would apply")
                } else {
                    ("BootVolumeApplied", "applied")
                };
                let note = format!("{verb} to Ironic node {}: {}", o.node_uuid, o.changes.join("; "));
                out.push(event(EventType::Normal, reason, "Apply", note));
            }
            for b in &o.blocked {
                let reason = match b {
                    Blocked::WaitingForPowerOff { .. } => "WaitingForPowerOff",
                    Blocked::InterfaceChangeNotAllowed { .. } => "StorageInterfaceChangeBlocked",
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

fn truncate(s: String) -> String {
    if s.len() <= MAX_NOTE {
        return s;
    }
    let mut end = MAX_NOTE - 3;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// The hosts in `store` whose `bootVolume` references Secret `namespace/name`.
pub fn hosts_referencing(
    store: &Store<DynamicObject>,
    namespace: &str,
    name: &str,
) -> Vec<ObjectRef<DynamicObject>> {
    store
        .state()
        .into_iter()
        .filter(|h| h.namespace().as_deref() == Some(namespace))
        .filter(|h| {
            let raw = serde_json::to_value(h.as_ref()).unwrap_or_default();
            HostSpec::from_value(&raw)
                .ok()
                .is_some_and(|s| s.secret_name().ok().flatten() == Some(name))
        })
        .map(|h| ObjectRef::from_obj_with(h.as_ref(), host_resource()))
        .collect()
}

/// What the controller watches and how it runs.
#[derive(Clone, Debug, Default)]
pub struct ControllerConfig {
    /// Only hosts (and Secrets) in this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    /// Label selector narrowing the Secret watch (RBAC and memory).
    pub secret_label_selector: Option<String>,
    /// Parallel reconciles.
    pub concurrency: u16,
}

/// Runs the controller until `stop` completes, then drains in-flight reconciles.
pub async fn run_controller(
    ctx: Arc<Context>,
    config: &ControllerConfig,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let ar = host_resource();
    let client = ctx.kube.clone();
    let (hosts, secrets) = match &config.namespace {
        Some(ns) => (
            Api::namespaced_with(client.clone(), ns, &ar),
            Api::namespaced(client, ns),
        ),
        None => (Api::all_with(client.clone(), &ar), Api::all(client)),
    };
    // Secrets are read as metadata only: their data never sits in the watcher or a Debug.
    let secrets: Api<PartialObjectMeta<Secret>> = secrets;
    let mut secret_watch = watcher::Config::default();
    if let Some(sel) = &config.secret_label_selector {
        secret_watch = secret_watch.labels(sel);
    }
    let controller = Controller::new_with(hosts, watcher::Config::default(), ar);
    let store = controller.store();
    controller
        .watches(secrets, secret_watch, move |s: PartialObjectMeta<Secret>| {
            hosts_referencing(
                &store,
                s.namespace().as_deref().unwrap_or_default(),
                &s.name_any(),
            )
        })
        .with_config(controller::Config::default().concurrency(config.concurrency))
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "controller");
            }
        })
        .await;
}

/// Leader election settings (`coordination.k8s.io/v1` Lease).
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// Our identity in `holderIdentity` (the pod name).
    pub identity: String,
    /// `leaseDurationSeconds`; renewed a third of it before expiry.
    pub duration_secs: u64,
}

/// A future that completes when work must stop.
pub type StopSignal = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// Runs `work` only while holding the Lease: `work` gets a [`StopSignal`] that fires on
/// lost leadership or shutdown, and is started again after leadership comes back. When
/// `shutdown` turns true the Lease is released, so a standby takes over without waiting
/// for it to expire.
pub async fn lead<W, F>(
    client: Client,
    config: &LeaseConfig,
    shutdown: watch::Receiver<bool>,
    mut work: W,
) -> Result<(), Error>
where
    W: FnMut(StopSignal) -> F,
    F: Future<Output = ()>,
{
    let lease_error =
        |e: kube_lease_manager::LeaseManagerError| Error::Kube(format!("lease {}: {e}", config.name));
    let manager = LeaseManagerBuilder::new(client, &config.name)
        .with_namespace(&config.namespace)
        .with_identity(&config.identity)
        .with_duration(config.duration_secs.max(2))
        .with_grace((config.duration_secs / 3).max(1))
        .build()
        .await
        .map_err(lease_error)?;
    let (leader, task) = manager.watch().await;
    loop {
        let (mut became, mut sd) = (leader.clone(), shutdown.clone());
        let acquired = tokio::select! {
            r = became.wait_for(|l| *l) => r.is_ok(),
            _ = sd.wait_for(|s| *s) => false,
        };
        if !acquired {
            break;
        }
        tracing::info!(identity = %config.identity, lease = %config.name, "acquired leadership");
        let (mut lost, mut sd) = (leader.clone(), shutdown.clone());
        let stop = async move {
            tokio::select! {
                _ = lost.wait_for(|l| !*l) => {}
                _ = sd.wait_for(|s| *s) => {}
            }
        };
        work(Box::pin(stop)).await;
        if *shutdown.borrow() {
            break;
        }
        tracing::warn!(identity = %config.identity, "lost leadership; stopped reconciling");
    }
    // Closing the channel makes the manager release the Lease and return.
    drop(leader);
    match task.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(lease_error(e)),
        Err(e) => Err(Error::Kube(format!("lease task: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::{reflector, watcher::Event as WatchEvent};
    use serde_json::json;

    fn host(ns: &str, name: &str, bv: serde_json::Value) -> DynamicObject {
        let mut obj = DynamicObject::new(name, &host_resource()).within(ns);
        obj.data = json!({"spec": {"bootVolume": bv}});
        obj
    }

    #[test]
    fn a_secret_maps_to_the_hosts_of_its_namespace_that_reference_it() {
        let mut writer = reflector::store::Writer::<DynamicObject>::new(host_resource());
        let reader = writer.as_reader();
        for h in [
            host(
                "a",
                "by-name",
                json!({"volumeDriver": "external", "iscsiCredentialsName": "chap"}),
            ),
            host(
                "a",
                "by-ref",
                json!({"volumeDriver": "external", "iscsiTarget": {"authSecretRef": {"name": "chap", "namespace": "a"}}}),
            ),
            host(
                "a",
                "other-secret",
                json!({"volumeDriver": "external", "iscsiCredentialsName": "other"}),
            ),
            host(
                "a",
                "no-auth",
                json!({"volumeDriver": "external", "iscsiTarget": {"authMethod": "None"}, "iscsiCredentialsName": "chap"}),
            ),
            host(
                "b",
                "other-ns",
                json!({"volumeDriver": "external", "iscsiCredentialsName": "chap"}),
            ),
        ] {
            writer.apply_watcher_event(&WatchEvent::Apply(h));
        }
        let mut names: Vec<String> = hosts_referencing(&reader, "a", "chap")
            .into_iter()
            .map(|r| r.name)
            .collect();
        names.sort();
        assert_eq!(names, ["by-name", "by-ref"]);
    }

    #[test]
    fn backoff_doubles_caps_and_resets_per_host() {
        let b = Backoff::default();
        let delays: Vec<u64> = (0..9).map(|_| b.next("a/h").as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(b.next("a/other"), BACKOFF_MIN);
        b.reset("a/h");
        assert_eq!(b.next("a/h"), BACKOFF_MIN);
    }

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
