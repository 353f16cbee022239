//! `bootvolume reconcile`: a kube-runtime Controller over BareMetalHosts.
//!
//! Hosts are read as [`DynamicObject`]s of `metal3.io/v1alpha1` `baremetalhosts` (our only
//! write is a JSON merge patch, the hand-over, so we never need its full schema). A Secret change re-triggers the hosts
//! that reference it, found in the controller's own reflector store. Each outcome becomes
//! a Kubernetes Event on the host, a log line and a metric. Only the Lease holder reconciles
//! ([`lead`]), so two replicas never write to the same node at once.

use super::{
    Error,
    apply::{HostSpec, Outcome},
    events::{Event, EventType, Recorder, events, truncate},
    fleet::{self, FleetState},
    handshake::{self, EventKind, Phase},
    host_api::{self, KubeHostWriter},
    metrics::Metrics,
    trim,
};
use crate::ironic::IronicClient;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::DynamicObject,
    core::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt as _,
        controller::{self, Action},
        events::Reporter,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use kube_lease_manager::LeaseManagerBuilder;
use std::{
    collections::{BTreeSet, HashMap},
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
    fleet: Arc<FleetState>,
    handshake: handshake::Options,
    progress: Arc<Progress>,
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
            fleet: Arc::default(),
            handshake: handshake::Options::new(dry_run, true),
            progress: Arc::default(),
        }
    }

    /// What the fleet sync knows (tests and benchmarks look at it).
    pub fn fleet(&self) -> &Arc<FleetState> {
        &self.fleet
    }

    /// Enables or disables the hand-over to baremetal-operator (`--handoff`, default on).
    pub fn with_handoff(mut self, handoff: bool) -> Self {
        self.handshake.handoff = handoff;
        self
    }

    /// What the controller is doing now (for the shutdown watchdog).
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }
}

/// Where the process is, so a shutdown that overruns its deadline can say what was stuck:
/// the current phase and the hosts whose reconcile is still running.
#[derive(Debug, Default)]
pub struct Progress {
    phase: Mutex<&'static str>,
    in_flight: Mutex<BTreeSet<String>>,
}

impl Progress {
    /// Records the current phase (e.g. "releasing the Lease").
    pub fn set_phase(&self, phase: &'static str) {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = phase;
    }

    /// Marks `host` as reconciling until the returned guard is dropped.
    fn reconciling(&self, host: String) -> InFlight<'_> {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host.clone());
        InFlight(self, host)
    }

    /// One line: the phase and the reconciles still running.
    pub fn describe(&self) -> String {
        let phase = *self.phase.lock().unwrap_or_else(|p| p.into_inner());
        let hosts = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let phase = if phase.is_empty() { "starting" } else { phase };
        if hosts.is_empty() {
            phase.to_owned()
        } else {
            let list: Vec<&str> = hosts.iter().map(String::as_str).collect();
            format!("{phase}; reconcile still running for {}", list.join(", "))
        }
    }
}

struct InFlight<'a>(&'a Progress, String);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
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

/// One reconcile of one host: read its Secret, run [`host_api::host_pass`] (configure the
/// node, then the adoption handshake), report.
#[tracing::instrument(skip_all, fields(host = %key(&obj)))]
pub async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action, Error> {
    let start = Instant::now();
    let _running = ctx.progress.reconciling(key(&obj));
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
        if recheck {
            Ok(Action::requeue(ctx.resync.min(HANDSHAKE_RECHECK)))
        } else if ctx.fleet.is_running() {
            // With the fleet sync running, drift is found by its list calls, not per host.
            Ok(Action::await_change())
        } else {
            Ok(Action::requeue(ctx.resync))
        }
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
    if host.skip.is_none() {
        ctx.fleet.forget(&host);
        if ctx.fleet.nothing_of_ours(&host) {
            return Ok(host_api::Report {
                outcome: Outcome {
                    skipped: Some("no bootVolume and nothing of ours on the Ironic node".into()),
                    ..Default::default()
                },
                ..Default::default()
            });
        }
    }
    let secret = match host.skip.map_or(host.secret_name(), |_| Ok(None))? {
        Some(name) => Api::<Secret>::namespaced(ctx.kube.clone(), &host.namespace)
            .get_opt(name)
            .await
            .map_err(|e| Error::Kube(format!("get Secret {}/{name}: {e}", host.namespace)))?,
        None => None,
    };
    let current = host
        .skip
        .is_none()
        .then(|| ctx.fleet.take_current(&host))
        .flatten();
    let writer = KubeHostWriter::new(ctx.kube.clone());
    let report = host_api::host_pass_from(
        &ctx.ironic,
        &writer,
        &raw,
        secret.as_ref(),
        current,
        &ctx.handshake,
    )
    .await?;
    if host.skip.is_none() && report.outcome.blocked.is_empty() {
        let desired = host.desired(secret.as_ref())?;
        let secret_version = secret.and_then(|s| s.metadata.resource_version);
        // Handshake steps write to the node too: a listing older than them is stale.
        let wrote = !report.outcome.changes.is_empty() || !report.steps.is_empty();
        let uuid = report.outcome.node_uuid.clone();
        let record = fleet::Record {
            host,
            desired,
            secret_version,
        };
        ctx.fleet.remember(record, &uuid, wrote);
    }
    Ok(report)
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
        .filter(|h| mentions(h, name))
        .filter(|h| {
            let raw = serde_json::to_value(h.as_ref()).unwrap_or_default();
            HostSpec::from_value(&raw)
                .ok()
                .is_some_and(|s| s.secret_name().ok().flatten() == Some(name))
        })
        .map(|h| ObjectRef::from_obj_with(h.as_ref(), host_resource()))
        .collect()
}

/// A cheap pre-check (no copy of the object): `bootVolume` names Secret `name` in one of
/// the two places a credentials Secret can be named.
fn mentions(host: &DynamicObject, name: &str) -> bool {
    let Some(bv) = host.data.pointer("/spec/bootVolume") else {
        return false;
    };
    let is = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()) == Some(name);
    is(bv.get("iscsiCredentialsName")) || is(bv.pointer("/iscsiTarget/authSecretRef/name"))
}

/// The hosts referencing Secret `s` whose last successful pass read an older version of
/// it (or that have no such pass): a Secret event re-runs only those.
fn hosts_to_recheck(
    store: &Store<DynamicObject>,
    fleet: &FleetState,
    s: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<DynamicObject>> {
    let namespace = s.namespace().unwrap_or_default();
    let version = s.resource_version();
    hosts_referencing(store, &namespace, &s.name_any())
        .into_iter()
        .filter(|r| {
            store.get(r).is_none_or(|h| {
                let raw = serde_json::to_value(h.as_ref()).unwrap_or_default();
                HostSpec::from_value(&raw)
                    .map_or(true, |spec| fleet.secret_changed(&spec, version.as_deref()))
            })
        })
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
///
/// kube-runtime holds every reconcile until the host store has seen its first full list, and
/// its graceful shutdown stops the watch that would fill the store, so a stop before the
/// first list would wait forever. No reconcile can have started then, so the controller is
/// simply dropped.
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
    // The store keeps trimmed hosts; a pass runs only when what it reads changed.
    let writer = reflector::store::Writer::<DynamicObject>::new(ar.clone());
    let store = writer.as_reader();
    let host_stream = watcher(hosts, watcher::Config::default())
        .default_backoff()
        .modify(trim::trim_host)
        .reflect(writer)
        .applied_objects()
        .predicate_filter(trim::fingerprint, Default::default());
    // The first snapshot comes before the first pass, so hosts without bootVolume whose
    // node carries nothing of ours cost no Ironic call even at startup.
    // A stop during it ends the controller at once: nothing has started yet.
    let stop = stop.shared();
    tokio::select! {
        snapshot = fleet::refresh(&ctx.ironic, &ctx.fleet, &[]) => match snapshot {
            Ok((pages, nodes)) => tracing::info!(pages, nodes, "fleet snapshot"),
            Err(e) => tracing::warn!(error = %e, "fleet snapshot failed; passes read nodes one by one"),
        },
        () = stop.clone() => {
            tracing::info!("stopped during the first fleet snapshot; nothing to drain");
            return;
        }
    }
    let (trigger, triggered) = futures::channel::mpsc::channel(1024);
    let sync = fleet::run(
        ctx.ironic.clone(),
        ctx.fleet.clone(),
        ctx.metrics.clone(),
        store.clone(),
        ar.clone(),
        ctx.resync,
        trigger,
    );
    let controller = Controller::for_stream_with(host_stream, store.clone(), ar);
    let fleet_state = ctx.fleet.clone();
    let unready = stopped_before_ready(stop.clone(), store.clone());
    let run = controller
        .watches(secrets, secret_watch, move |s: PartialObjectMeta<Secret>| {
            hosts_to_recheck(&store, &fleet_state, &s)
        })
        .reconcile_on(triggered)
        .with_config(controller::Config::default().concurrency(config.concurrency))
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx.clone())
        .take_until(unready)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "controller");
            }
        });
    tokio::select! {
        _ = run => {}
        _ = sync => {}
    }
    ctx.fleet.set_running(false);
}

/// Completes when `stop` has completed while `store` was not ready yet; otherwise never.
/// Polled before the controller in the same task, so the store cannot turn ready in between.
async fn stopped_before_ready(stop: impl Future<Output = ()>, store: Store<DynamicObject>) {
    stop.await;
    if store.wait_until_ready().now_or_never().is_some() {
        std::future::pending::<()>().await;
    }
    tracing::info!("stopped before the first host list arrived; nothing to drain");
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
    progress: &Progress,
    mut work: W,
) -> Result<(), Error>
where
    W: FnMut(StopSignal) -> F,
    F: Future<Output = ()>,
{
    let lease_error =
        |e: kube_lease_manager::LeaseManagerError| Error::Kube(format!("lease {}: {e}", config.name));
    progress.set_phase("reading the Lease");
    let build = LeaseManagerBuilder::new(client, &config.name)
        .with_namespace(&config.namespace)
        .with_identity(&config.identity)
        .with_duration(config.duration_secs.max(2))
        .with_grace((config.duration_secs / 3).max(1))
        .build();
    let mut sd = shutdown.clone();
    // Building only reads (or creates) the Lease: a shutdown meanwhile leaves nothing to release.
    let manager = tokio::select! {
        m = build => m.map_err(lease_error)?,
        _ = sd.wait_for(|s| *s) => return Ok(()),
    };
    let (leader, task) = manager.watch().await;
    loop {
        progress.set_phase("waiting for the Lease");
        let (mut became, mut sd) = (leader.clone(), shutdown.clone());
        let acquired = tokio::select! {
            r = became.wait_for(|l| *l) => r.is_ok(),
            _ = sd.wait_for(|s| *s) => false,
        };
        if !acquired {
            break;
        }
        tracing::info!(identity = %config.identity, lease = %config.name, "acquired leadership");
        progress.set_phase("reconciling (holding the Lease)");
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
    progress.set_phase("releasing the Lease");
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

    #[tokio::test]
    async fn a_stop_before_the_first_list_ends_the_controller_and_a_later_one_drains() {
        use futures::FutureExt as _;
        let mut writer = reflector::store::Writer::<DynamicObject>::new(host_resource());
        let store = writer.as_reader();
        let stop = || std::future::ready(());
        assert!(
            stopped_before_ready(stop(), store.clone())
                .now_or_never()
                .is_some(),
            "not ready: ends at once"
        );
        assert!(
            stopped_before_ready(std::future::pending(), store.clone())
                .now_or_never()
                .is_none(),
            "no stop: runs on"
        );
        writer.apply_watcher_event(&WatchEvent::InitDone);
        assert!(
            stopped_before_ready(stop(), store).now_or_never().is_none(),
            "ready: left to the graceful drain"
        );
    }

    #[test]
    fn progress_names_the_phase_and_the_running_reconciles() {
        let p = Progress::default();
        assert_eq!(p.describe(), "starting");
        p.set_phase("releasing the Lease");
        let a = p.reconciling("ns/a".into());
        let b = p.reconciling("ns/b".into());
        assert_eq!(
            p.describe(),
            "releasing the Lease; reconcile still running for ns/a, ns/b"
        );
        drop((a, b));
        assert_eq!(p.describe(), "releasing the Lease");
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
}
