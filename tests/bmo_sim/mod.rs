//! A baremetal-operator (BMO) simulator for the adoption tests.
//!
//! It drives one BareMetalHost through a real Ironic the way BMO's code does: the same Ironic
//! calls, in the same order, with BMO's decisions taken from the same host fields. Function
//! names in comments are BMO's (metal3-io/baremetal-operator):
//! `internal/controller/metal3.io/baremetalhost_controller.go` (`Reconcile`, `registerHost`,
//! `actionManageSteadyState`, `manageHostPower`, `detachHost`),
//! `internal/controller/metal3.io/host_state_machine.go` (`ReconcileState`, `handle*`),
//! `pkg/provisioner/ironic/register.go` (`Register`, `enrollNode`, `createPortsForNode`),
//! `pkg/provisioner/ironic/ironic.go` (`findExistingHost`, `configureNode`, `Adopt`,
//! `PowerOn`, `PowerOff`, `changePower`, `realDelete`) and `capabilities.go`
//! (`buildCapabilitiesValue`).
//!
//! What it leaves out: inspection (fake-hardware has no agent; `inspecting` completes at
//! once), provisioning with an image (it stops and records an error), firmware, RAID,
//! DataImage, servicing, deletion of the host, and BMC credentials (fake-hardware needs none).
//!
//! The host lives in a [`HostStore`], an in-memory BareMetalHost behind a mutex with the
//! API server's bookkeeping (`resourceVersion`, `generation`). The simulator writes it as BMO
//! does: status through the status subresource, everything else as a whole-object update from
//! its Go struct, which has no `spec.bootVolume` (our mutating webhook's preserve rule puts it
//! back, so the store runs that rule too). The controller under test patches the same store.
//!
//! BMO's timings are scaled down ([`BmoConfig`]): its 3 s `shortRetryDelay`, its 60 s
//! steady-state poll and its backoff of `2^errorCount` minutes (halved by random jitter).
//! A reconcile runs when its requeue is due, or at once when the host's generation,
//! annotations or finalizers change (BMO's `updateEventHandler`); status-only changes do not
//! trigger one.
#![allow(dead_code)] // each test binary uses a different subset

use bootvolume::{
    api::HostView,
    ironic::{Calls, Error as IronicError, IronicClient},
    mutate,
    reconcile::{Error as ReconcileError, host_api::HostWriter},
    rules::{DEFAULT_PRESERVE_FOR, Policy},
};
use reqwest::Method;
use serde_json::{Map, Value, json};
use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
};

/// BMO's service account: the user whose whole-object updates get `bootVolume` preserved.
pub const BMO_USER: &str = DEFAULT_PRESERVE_FOR;
/// BMO's base reboot annotation (`metal3api.RebootAnnotationPrefix`).
pub const REBOOT_ANNOTATION: &str = "reboot.metal3.io";
/// BMO's detached annotation: while present BMO deletes the Ironic node and leaves it gone.
pub const DETACHED_ANNOTATION: &str = "baremetalhost.metal3.io/detached";
/// BMO's paused annotation: while present BMO does nothing.
pub const PAUSED_ANNOTATION: &str = "baremetalhost.metal3.io/paused";
/// `metal3api.BareMetalHostFinalizer`.
pub const FINALIZER: &str = "baremetalhost.metal3.io";

/// `status.errorType` of a failed adoption (`metal3api.ProvisionedRegistrationError`).
const PROVISIONED_REGISTRATION_ERROR: &str = "provisioned registration error";
/// `metal3api.PowerManagementError`.
const POWER_MANAGEMENT_ERROR: &str = "power management error";

// ---------------------------------------------------------------------------------------------
// The in-memory BareMetalHost.
// ---------------------------------------------------------------------------------------------

/// Who wrote the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writer {
    /// The controller under test (through its host-writer trait: a JSON merge patch).
    Controller,
    /// The simulated BMO (whole-object update or status write).
    Bmo,
    /// The test itself, acting as a user with `kubectl edit`.
    User,
}

/// One write to the host, for assertions ("no write that fights BMO") and failure output.
#[derive(Clone, Debug)]
pub struct Write {
    /// Who.
    pub by: Writer,
    /// When.
    pub at: Instant,
    /// The merge patch (controller), or a short description (BMO, user).
    pub what: Value,
    /// `status.provisioning.state` when the write was made.
    pub bmo_state: String,
    /// Why it was refused (a webhook's message), when it was.
    pub rejected: Option<String>,
}

#[derive(Debug)]
struct Stored {
    obj: Value,
    writes: Vec<Write>,
    created: Instant,
    /// Bumped on every accepted write: a stand-in for the controller's watch.
    changed: watch::Sender<u64>,
}

impl Stored {
    fn commit(&mut self, old: &Value, mut new: Value) {
        commit(old, &mut new);
        self.obj = new;
        self.changed.send_modify(|n| *n += 1);
    }
}

/// A BareMetalHost held in memory, shared by the simulator, the controller and the test.
///
/// Writes keep the API server's bookkeeping: every write bumps `metadata.resourceVersion`,
/// a write that changes `spec` bumps `metadata.generation`, and a patch of the main resource
/// cannot change `status` (the status subresource is separate).
#[derive(Clone, Debug)]
pub struct HostStore(Arc<Mutex<Stored>>);

impl HostStore {
    /// Stores `host` as created by a user: our mutating webhook's defaults applied (as the
    /// API server would store it), generation 1, resourceVersion 1, empty status.
    pub fn new(mut host: Value) -> Self {
        let ops = HostView::new(&host)
            .map(|view| mutate::patch(&Policy::default(), "kubernetes-admin", None, &view))
            .unwrap_or_default();
        json_patch::patch(&mut host, &ops).expect("the webhook's own patch applies");
        host["metadata"]["generation"] = json!(1);
        host["metadata"]["resourceVersion"] = json!("1");
        if host.get("status").is_none() {
            host["status"] = json!({});
        }
        Self(Arc::new(Mutex::new(Stored {
            obj: host,
            writes: Vec::new(),
            created: Instant::now(),
            changed: watch::channel(0).0,
        })))
    }

    /// Changes on every accepted write (spec, metadata or status), as a watch would report.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.lock().changed.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, Stored> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The host as a GET returns it now.
    pub fn get(&self) -> Value {
        self.lock().obj.clone()
    }

    /// `metadata.namespace` and `metadata.name`.
    pub fn key(&self) -> (String, String) {
        let obj = self.get();
        (
            str_at(&obj, "/metadata/namespace").to_owned(),
            str_at(&obj, "/metadata/name").to_owned(),
        )
    }

    /// Every write so far.
    pub fn writes(&self) -> Vec<Write> {
        self.lock().writes.clone()
    }

    /// The controller's writes that were accepted.
    pub fn controller_patches(&self) -> Vec<Value> {
        self.writes()
            .into_iter()
            .filter(|w| w.by == Writer::Controller && w.rejected.is_none())
            .map(|w| w.what)
            .collect()
    }

    /// `status.provisioning.state`.
    pub fn bmo_state(&self) -> String {
        str_at(&self.get(), "/status/provisioning/state").to_owned()
    }

    /// Applies a JSON merge patch (RFC 7386) to the main resource, as the controller's kube
    /// layer does with `Patch::Merge`. BMO's validating webhook runs on the result (only its
    /// rules that such a patch can trip): an error is the webhook's denial message.
    pub fn merge_patch(&self, by: Writer, patch: &Value) -> Result<(), String> {
        let mut s = self.lock();
        let old = s.obj.clone();
        let mut new = old.clone();
        let mut body = patch.clone();
        if let Some(map) = body.as_object_mut() {
            // The main resource ignores status (it has its own subresource).
            map.remove("status");
        }
        json_patch::merge(&mut new, &body);
        let at = Instant::now();
        let bmo_state = str_at(&old, "/status/provisioning/state").to_owned();
        if let Err(denied) = bmo_webhook(&old, &new) {
            s.writes.push(Write {
                by,
                at,
                what: patch.clone(),
                bmo_state,
                rejected: Some(denied.clone()),
            });
            return Err(denied);
        }
        s.commit(&old, new);
        s.writes.push(Write {
            by,
            at,
            what: patch.clone(),
            bmo_state,
            rejected: None,
        });
        Ok(())
    }

    /// A whole-object update by a user (`kubectl edit`/`apply`): `edit` changes a copy.
    pub fn user_update(&self, what: &str, edit: impl FnOnce(&mut Value)) {
        let mut s = self.lock();
        let old = s.obj.clone();
        let mut new = old.clone();
        edit(&mut new);
        new["status"] = old["status"].clone();
        s.commit(&old, new);
        let bmo_state = str_at(&old, "/status/provisioning/state").to_owned();
        s.writes.push(Write {
            by: Writer::User,
            at: Instant::now(),
            what: json!(what),
            bmo_state,
            rejected: None,
        });
    }

    /// BMO's `r.Update(ctx, host)`: a whole-object PUT built from its Go struct, which has no
    /// `spec.bootVolume`. Our mutating webhook's preserve rule (for BMO's service account)
    /// puts the stored block back; an update without it would erase the volume.
    fn bmo_update(&self, what: &str, edit: impl FnOnce(&mut Value)) {
        let mut s = self.lock();
        let old = s.obj.clone();
        let mut new = old.clone();
        edit(&mut new);
        new["status"] = old["status"].clone();
        if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("bootVolume");
        }
        let ops = match (HostView::new(&old), HostView::new(&new)) {
            (Ok(old_view), Ok(new_view)) => {
                mutate::patch(&Policy::default(), BMO_USER, Some(&old_view), &new_view)
            }
            _ => Vec::new(),
        };
        let _ = json_patch::patch(&mut new, &ops);
        s.commit(&old, new);
        let bmo_state = str_at(&old, "/status/provisioning/state").to_owned();
        s.writes.push(Write {
            by: Writer::Bmo,
            at: Instant::now(),
            what: json!(what),
            bmo_state,
            rejected: None,
        });
    }

    /// BMO's `saveHostStatus` (`r.Status().Update`): replaces status only.
    fn save_status(&self, status: Value) {
        let mut s = self.lock();
        if s.obj["status"] == status {
            return;
        }
        let old = s.obj.clone();
        let mut new = old.clone();
        new["status"] = status;
        s.commit(&old, new);
    }

    /// Seconds since the host was created (for timelines).
    pub fn elapsed(&self) -> Duration {
        self.lock().created.elapsed()
    }
}

/// The controller writes the in-memory host as its kube layer writes the real one: a JSON
/// merge patch; a webhook denial is the API server's refusal of the patch.
impl HostWriter for HostStore {
    async fn patch_host(
        &self,
        namespace: &str,
        name: &str,
        merge_patch: &Value,
    ) -> Result<(), ReconcileError> {
        let (ns, n) = self.key();
        assert_eq!(
            (namespace, name),
            (ns.as_str(), n.as_str()),
            "patch of another host"
        );
        self.merge_patch(Writer::Controller, merge_patch)
            .map_err(|message| ReconcileError::HostRejected {
                namespace: namespace.into(),
                name: name.into(),
                message,
            })
    }
}

/// API server bookkeeping for an accepted write of `new` over `old`.
fn commit(old: &Value, new: &mut Value) {
    let rv: u64 = str_at(old, "/metadata/resourceVersion").parse().unwrap_or(0);
    new["metadata"]["resourceVersion"] = json!((rv + 1).to_string());
    let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
    let generation = if old.get("spec") == new.get("spec") {
        generation
    } else {
        generation + 1
    };
    new["metadata"]["generation"] = json!(generation);
}

/// The rules of BMO's validating webhook (`baremetalhost_validation.go`) that a patch of
/// spec or annotations can trip: `externallyProvisioned` may be turned on only while the host
/// is `available` (`validateChanges`, BMO v0.13+), and reboot annotations must be empty or
/// JSON with mode `hard`/`soft`/`""` (`validateAnnotations`).
fn bmo_webhook(old: &Value, new: &Value) -> Result<(), String> {
    let ext = |v: &Value| v.pointer("/spec/externallyProvisioned") == Some(&json!(true));
    let state = |v: &Value| str_at(v, "/status/provisioning/state").to_owned();
    if !ext(old) && ext(new) && state(old) != "available" && state(new) != "available" {
        return Err(format!(
            "externallyProvisioned can only be enabled when in Available state, currently in {}",
            state(old)
        ));
    }
    if let Some(annotations) = new.pointer("/metadata/annotations").and_then(Value::as_object) {
        for (k, v) in annotations {
            if is_reboot_annotation(k) {
                let text = v.as_str().unwrap_or("");
                if text.is_empty() {
                    continue;
                }
                let parsed: Result<Value, _> = serde_json::from_str(text);
                let mode_ok = parsed.as_ref().is_ok_and(|p| {
                    matches!(
                        p.get("mode").and_then(Value::as_str),
                        None | Some("hard" | "soft" | "")
                    )
                });
                if !mode_ok {
                    return Err(format!("invalid value for annotation {k}: {text}"));
                }
            }
        }
    }
    Ok(())
}

/// `isRebootAnnotation`: the base key or any `reboot.metal3.io/<suffix>`.
fn is_reboot_annotation(key: &str) -> bool {
    key == REBOOT_ANNOTATION || key.starts_with("reboot.metal3.io/")
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn annotations(host: &Value) -> Map<String, Value> {
    host.pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// The simulator.
// ---------------------------------------------------------------------------------------------

/// BMO's timings, scaled down for tests.
#[derive(Clone, Debug)]
pub struct BmoConfig {
    /// How long after first seeing the node `manageable` BMO requests `adopt` (0-3 s in BMO:
    /// the 3 s `shortRetryDelay` requeue after `manage` decides where in that window).
    pub adopt_delay: Duration,
    /// How often the simulator looks for due requeues and host changes (its "watch").
    pub tick: Duration,
    /// BMO's 3 s `shortRetryDelay` (also used for transient errors).
    pub short_retry: Duration,
    /// What one minute of BMO's time is here: the steady-state power poll (60 s) and the
    /// failure backoff (`calculateBackoff`: 2^errorCount minutes, minus up to half) scale by it.
    pub minute: Duration,
    /// The simulator stops by itself after this long.
    pub lifetime: Duration,
}

impl Default for BmoConfig {
    fn default() -> Self {
        Self {
            adopt_delay: Duration::from_secs(1),
            tick: Duration::from_millis(100),
            short_retry: Duration::from_millis(150),
            minute: Duration::from_secs(1),
            lifetime: Duration::from_secs(60),
        }
    }
}

/// What the simulator did: counters and a timeline.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Reconcile passes.
    pub passes: u64,
    /// UUIDs of the nodes it created (`enrollNode`), in order.
    pub nodes_created: Vec<String>,
    /// `manage` requests.
    pub manage_requests: u32,
    /// `adopt` requests.
    pub adopt_requests: u32,
    /// Adoptions that ended in `adopt failed`, with Ironic's `last_error`.
    pub adopt_failures: Vec<String>,
    /// `power on` requests.
    pub power_on_requests: u32,
    /// When the last `power on` was requested.
    pub last_power_on_at: Option<Instant>,
    /// `power off` / `soft power off` requests.
    pub power_off_requests: u32,
    /// Times it removed the base reboot annotation.
    pub reboot_annotation_removals: u32,
    /// PATCHes of `properties/capabilities`.
    pub capability_patches: u32,
    /// Node deletions (detach).
    pub nodes_deleted: u32,
    /// When the current node was first seen `manageable`.
    pub manageable_at: Option<Instant>,
    /// When the first and the last `adopt` were requested.
    pub first_adopt_at: Option<Instant>,
    /// See `first_adopt_at`.
    pub adopt_requested_at: Option<Instant>,
    /// When a node was first seen `active`.
    pub active_at: Option<Instant>,
    /// Errors (transient Ironic errors, unsupported paths).
    pub errors: Vec<String>,
    /// Timeline: `+1.234s message`.
    pub log: Vec<String>,
}

impl Stats {
    /// Whether the host's last power-on came after its node went `active`: only then did
    /// it boot the script that adoption wrote (a host powered on before adoption keeps
    /// running whatever it booted then).
    pub fn powered_on_after_adoption(&self) -> bool {
        matches!((self.last_power_on_at, self.active_at), (Some(on), Some(active)) if on > active)
    }
}

struct Shared {
    stats: Mutex<Stats>,
    kick: Notify,
}

/// A running simulator (a tokio task). Stop it with [`Bmo::stop`]; it also stops by itself
/// after [`BmoConfig::lifetime`] and when dropped.
pub struct Bmo {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    ironic: IronicClient,
    config: Arc<Mutex<BmoConfig>>,
}

impl Bmo {
    /// Starts reconciling `store`'s host against Ironic through `ironic` (give it its own
    /// client, so its calls are counted apart from the controller's).
    pub fn start(ironic: IronicClient, store: HostStore, config: BmoConfig) -> Self {
        let shared = Arc::new(Shared {
            stats: Mutex::new(Stats::default()),
            kick: Notify::new(),
        });
        let (stop, stopped) = watch::channel(false);
        let config = Arc::new(Mutex::new(config));
        let sim = Sim {
            ironic: ironic.clone(),
            store,
            config: config.clone(),
            shared: shared.clone(),
            seen_manageable: None,
            counted_failures: 0,
            node: None,
            started: Instant::now(),
        };
        let task = tokio::spawn(sim.run(stopped));
        Self {
            shared,
            stop,
            task: Some(task),
            ironic,
            config,
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.shared
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The Ironic calls the simulator made so far.
    pub fn calls(&self) -> Calls {
        self.ironic.calls()
    }

    /// Reconcile at once (as after a BMO restart).
    pub fn kick(&self) {
        self.shared.kick.notify_one();
    }

    /// Changes the adoption delay from now on.
    pub fn set_adopt_delay(&self, delay: Duration) {
        self.config.lock().unwrap_or_else(|p| p.into_inner()).adopt_delay = delay;
    }

    /// Stops the task and returns the final counters.
    pub async fn stop(mut self) -> Stats {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        self.stats()
    }
}

impl Drop for Bmo {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The outcome of one step, as BMO's `actionResult`: whether to save status, and when to
/// reconcile again.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Step {
    save: bool,
    requeue: Duration,
}

impl Step {
    /// `actionContinue{delay}`.
    fn cont(requeue: Duration) -> Self {
        Self { save: false, requeue }
    }
    /// `actionUpdate{delay}` (and `actionComplete`, with no delay).
    fn update(requeue: Duration) -> Self {
        Self { save: true, requeue }
    }
}

/// A provisioner call's result, as BMO's `provisioner.Result`.
#[derive(Clone, Debug, PartialEq)]
enum Prov {
    /// `operationComplete()`.
    Complete,
    /// `operationContinuing(delay)` / `retryAfterDelay(delay)`.
    Continuing(Duration),
    /// `operationFailed(message)`.
    Failed(String),
}

type SimResult<T> = Result<T, String>;

struct Sim {
    ironic: IronicClient,
    store: HostStore,
    config: Arc<Mutex<BmoConfig>>,
    shared: Arc<Shared>,
    /// (node uuid, first seen manageable).
    seen_manageable: Option<(String, Instant)>,
    /// Adopt failures already counted (one per `adopt` request at most).
    counted_failures: u32,
    /// `p.cachedNode`: the node read during this reconcile (BMO builds a new provisioner,
    /// hence a new cache, per reconcile).
    node: Option<Value>,
    started: Instant,
}

impl Sim {
    fn cfg(&self) -> BmoConfig {
        self.config.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn stats(&self) -> MutexGuard<'_, Stats> {
        self.shared.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn log(&self, msg: impl Into<String>) {
        let line = format!("+{:.3}s {}", self.started.elapsed().as_secs_f64(), msg.into());
        self.stats().log.push(line);
    }

    async fn run(mut self, mut stopped: watch::Receiver<bool>) {
        let cfg = self.cfg();
        let deadline = Instant::now() + cfg.lifetime;
        let mut due = Instant::now();
        let mut seen: Option<Value> = None;
        let shared = self.shared.clone();
        loop {
            if *stopped.borrow() || Instant::now() >= deadline {
                break;
            }
            let host = self.store.get();
            // `updateEventHandler`: generation, annotations or finalizers changed.
            let key = json!([
                host.pointer("/metadata/generation"),
                host.pointer("/metadata/annotations"),
                host.pointer("/metadata/finalizers"),
            ]);
            let changed = seen.as_ref() != Some(&key);
            if changed || Instant::now() >= due {
                seen = Some(key);
                let requeue = match self.reconcile().await {
                    Ok(d) => d,
                    Err(e) => {
                        self.log(format!("error: {e}"));
                        self.stats().errors.push(e);
                        self.cfg().short_retry
                    }
                };
                self.stats().passes += 1;
                due = Instant::now() + requeue;
                if requeue.is_zero() {
                    tokio::task::yield_now().await;
                    continue;
                }
            }
            let tick = self.cfg().tick;
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = stopped.changed() => {}
                _ = shared.kick.notified() => { due = Instant::now(); }
            }
        }
    }

    /// `Reconcile`: paused check, finalizer, then the state machine and the status save.
    async fn reconcile(&mut self) -> SimResult<Duration> {
        self.node = None;
        let host = self.store.get();
        let ann = annotations(&host);
        if ann.contains_key(PAUSED_ANNOTATION) {
            return Ok(self.cfg().minute);
        }
        let has_finalizer = host
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| f.iter().any(|x| x == FINALIZER));
        if !has_finalizer {
            self.store.bmo_update("add finalizer", |h| {
                let list = h["metadata"]
                    .as_object_mut()
                    .map(|m| m.entry("finalizers").or_insert(json!([])));
                if let Some(Value::Array(list)) = list {
                    list.push(json!(FINALIZER));
                }
            });
            return Ok(Duration::ZERO);
        }
        let mut status = host.get("status").cloned().unwrap_or(json!({}));
        let step = self.reconcile_state(&host, &mut status).await?;
        if step.save {
            self.store.save_status(status);
        }
        Ok(step.requeue)
    }

    /// `hostStateMachine.ReconcileState`.
    async fn reconcile_state(&mut self, host: &Value, status: &mut Value) -> SimResult<Step> {
        let initial = str_at(status, "/provisioning/state").to_owned();
        if let Some(step) = self.check_detached(host, status, &initial).await? {
            return Ok(step);
        }
        if !matches!(initial.as_str(), "" | "unmanaged" | "deleting")
            && let Some(step) = self.register_host(host, status).await?
        {
            return Ok(step);
        }
        let next = |status: &mut Value, state: &str| {
            status["provisioning"]["state"] = json!(state);
            Ok(Step::update(Duration::ZERO))
        };
        match initial.as_str() {
            // `handleNone`: fake-hardware needs no BMC address; always "has BMC details".
            "" => {
                self.log("state -> registering");
                next(status, "registering")
            }
            // `handleRegistering`.
            "registering" => {
                status["errorCount"] = json!(0);
                let state = if host.pointer("/spec/externallyProvisioned") == Some(&json!(true)) {
                    "externally provisioned"
                } else if inspection_disabled(host) {
                    "preparing"
                } else {
                    "inspecting"
                };
                self.log(format!("state -> {state}"));
                next(status, state)
            }
            // `handleInspecting` (not simulated: completes at once).
            "inspecting" => {
                status["errorCount"] = json!(0);
                self.log("inspection skipped; state -> preparing");
                next(status, "preparing")
            }
            // `handlePreparing` -> `Prepare`: no RAID/firmware/BIOS settings, no clean steps.
            "preparing" => {
                let node = self.get_node(status).await?.ok_or("preparing: node not found")?;
                match str_at(&node, "/provision_state") {
                    "manageable" | "available" => {
                        status["errorCount"] = json!(0);
                        self.log("state -> available");
                        next(status, "available")
                    }
                    other => Err(format!("have unexpected ironic node state {other}")),
                }
            }
            "available" | "ready" => self.handle_available(host, status).await,
            "externally provisioned" => {
                if host.pointer("/spec/externallyProvisioned") == Some(&json!(true)) {
                    self.manage_steady_state(host, status).await
                } else {
                    self.unsupported("leaving externally provisioned").await
                }
            }
            other => self.unsupported(&format!("state {other}")).await,
        }
    }

    async fn unsupported(&self, what: &str) -> SimResult<Step> {
        let msg = format!("the simulator does not implement {what}");
        if !self.stats().errors.contains(&msg) {
            self.log(&msg);
            self.stats().errors.push(msg);
        }
        Ok(Step::cont(self.cfg().minute))
    }

    /// `checkDetachedHost` / `detachHost` / `Detach` -> `realDelete` (not forced).
    async fn check_detached(
        &mut self,
        host: &Value,
        status: &mut Value,
        state: &str,
    ) -> SimResult<Option<Step>> {
        if annotations(host).contains_key(DETACHED_ANNOTATION) {
            if !matches!(
                state,
                "provisioned" | "externally provisioned" | "ready" | "available"
            ) {
                return Ok(None);
            }
            let Some(node) = self.get_node(status).await? else {
                // `Detach`: no node found, already deleted.
                if str_at(status, "/operationalStatus") != "detached" {
                    status["operationalStatus"] = json!("detached");
                    self.log("host detached");
                    return Ok(Some(Step::update(self.cfg().minute * 10)));
                }
                return Ok(Some(Step::cont(self.cfg().minute * 10)));
            };
            let uuid = str_at(&node, "/uuid").to_owned();
            let short = self.cfg().short_retry;
            let prov = match str_at(&node, "/provision_state") {
                "verifying" => Prov::Continuing(short),
                "enroll" | "available" | "manageable" => self.delete_node(&uuid).await?,
                _ if node["maintenance"] != json!(true) => self.set_maintenance(&uuid, true).await?,
                _ => self.delete_node(&uuid).await?,
            };
            return Ok(Some(match prov {
                Prov::Continuing(d) => Step::cont(d),
                _ => Step::cont(Duration::ZERO),
            }));
        }
        if str_at(status, "/operationalStatus") == "detached" {
            let new = if str_at(status, "/errorType").is_empty() {
                "OK"
            } else {
                "error"
            };
            status["operationalStatus"] = json!(new);
            self.log("host re-attached");
            return Ok(Some(Step::update(Duration::ZERO)));
        }
        Ok(None)
    }

    /// `registerHost` -> `Register`; `None` when the state handler should run.
    async fn register_host(&mut self, host: &Value, status: &mut Value) -> SimResult<Option<Step>> {
        let mut dirty = false;
        let (prov, prov_id) = self.register(host, status).await?;
        if let Prov::Failed(msg) = &prov {
            status["errorType"] = json!("registration error");
            status["errorMessage"] = json!(msg);
            status["operationalStatus"] = json!("error");
            return Ok(Some(Step::update(self.cfg().minute)));
        }
        if !prov_id.is_empty() && str_at(status, "/provisioning/ID") != prov_id {
            self.log(format!("setting provisioning id {prov_id}"));
            status["provisioning"]["ID"] = json!(prov_id);
            dirty = true;
        }
        if let Prov::Continuing(delay) = prov {
            if clear_error(status) {
                dirty = true;
            }
            return Ok(Some(Step {
                save: dirty,
                requeue: delay,
            }));
        }
        // `registeredNewCreds`: the first successful registration records good credentials.
        if status.get("goodCredentials").is_none() {
            status["goodCredentials"] = json!({"credentials": {"name": "fake"}});
            dirty = true;
        }
        if str_at(status, "/errorType") == "registration error" && clear_error(status) {
            dirty = true;
        }
        // `ensureRegistered`: a complete (dirty) registration ends the pass with a save.
        Ok(dirty.then(|| Step::update(Duration::ZERO)))
    }

    /// `Register`: find or enroll the node, create the boot MAC's port, keep BMO's fields in
    /// sync, and drive the node to `manageable`.
    async fn register(&mut self, host: &Value, status: &Value) -> SimResult<(Prov, String)> {
        let short = self.cfg().short_retry;
        let (ns, name) = (
            str_at(host, "/metadata/namespace"),
            str_at(host, "/metadata/name"),
        );
        let node_name = format!("{ns}~{name}");
        let mac = str_at(host, "/spec/bootMACAddress").to_owned();
        let node = match self.find_existing_host(status, &node_name, name, &mac).await? {
            Ok(node) => node,
            Err(conflict) => return Ok((Prov::Failed(conflict), String::new())),
        };
        let mut node = match node {
            Some(node) => node,
            None => {
                // `enrollNode`. BMO leaves the deploy interface empty, so Ironic's default
                // applies: `direct` in metal3's ironic-image (`default_deploy_interface`),
                // `fake` in the test Ironic, whose adoption would write no boot script; so
                // it is named here. BMO also sends `inspect_interface: agent` (not enabled
                // in the test Ironic; inspection is not simulated) and `disable_power_off`
                // (API 1.95; the crate's client speaks 1.89).
                let body = json!({
                    "driver": "fake-hardware",
                    "boot_interface": "ipxe",
                    "deploy_interface": "direct",
                    "name": node_name,
                    "properties": {
                        "capabilities": capabilities_value(None, boot_mode(host)),
                        "cpu_arch": "x86_64",
                    },
                });
                match self
                    .ironic
                    .send::<Value>(Method::POST, "/v1/nodes", Some(&body))
                    .await
                {
                    Ok(node) => {
                        let uuid = str_at(&node, "/uuid").to_owned();
                        self.log(format!("registered new node {uuid}"));
                        self.stats().nodes_created.push(uuid);
                        node
                    }
                    Err(e) if is_conflict(&e) => {
                        return Ok((Prov::Continuing(short), String::new()));
                    }
                    Err(e) => return Err(format!("failed to register host in ironic: {e}")),
                }
            }
        };
        let uuid = str_at(&node, "/uuid").to_owned();
        let mut ops = Vec::new();
        if str_at(&node, "/name") != node_name {
            ops.push(json!({"op": "add", "path": "/name", "value": node_name}));
        }
        // `createPortsForNode`, only in states where it is safe.
        if matches!(
            str_at(&node, "/provision_state"),
            "enroll"
                | "manageable"
                | "available"
                | "active"
                | "adopt failed"
                | "inspect failed"
                | "clean failed"
                | "deploy failed"
                | "service failed"
                | "error"
        ) && !mac.is_empty()
        {
            self.create_port(&uuid, &mac).await?;
        }
        if !ops.is_empty() {
            match self.update_node(&uuid, &ops).await? {
                Some(updated) => node = updated,
                None => return Ok((Prov::Continuing(short), uuid)),
            }
        }
        let prov = match str_at(&node, "/provision_state") {
            "enroll" => {
                if !str_at(&node, "/last_error").is_empty() {
                    Prov::Failed(str_at(&node, "/last_error").to_owned())
                } else if str_at(&node, "/target_provision_state") == "manageable" {
                    Prov::Continuing(short)
                } else {
                    self.change_provision_state(&node, "manage").await?
                }
            }
            "verifying" => Prov::Continuing(short),
            "clean wait" | "cleaning" | "deploy wait" | "deploying" | "inspecting" => Prov::Complete,
            _ => self.configure_node(host, &node).await?,
        };
        Ok((prov, uuid))
    }

    /// `findExistingHost`: by `status.provisioning.ID`, then by name (`<ns>~<name>`, and the
    /// bare name when it has no `~`), then by the boot MAC's port (reused only if unnamed).
    async fn find_existing_host(
        &mut self,
        status: &Value,
        node_name: &str,
        name: &str,
        mac: &str,
    ) -> SimResult<Result<Option<Value>, String>> {
        if let Some(node) = self.get_node(status).await? {
            return Ok(Ok(Some(node)));
        }
        let mut names = vec![node_name.to_owned()];
        if !name.contains('~') {
            names.push(name.to_owned());
        }
        for n in names {
            match self
                .ironic
                .send::<Value>(Method::GET, &format!("/v1/nodes/{n}"), None::<&()>)
                .await
            {
                Ok(node) => {
                    self.observe(&node);
                    self.node = Some(node.clone());
                    return Ok(Ok(Some(node)));
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(format!("failed to find node by name {n}: {e}")),
            }
        }
        if !mac.is_empty() {
            let ports = self.ports_by_address(mac).await?;
            if let Some(port) = ports.first() {
                let node_uuid = str_at(port, "/node_uuid");
                let node: Value = self
                    .ironic
                    .send(Method::GET, &format!("/v1/nodes/{node_uuid}"), None::<&()>)
                    .await
                    .map_err(|e| format!("port {mac} exists but failed to find linked node: {e}"))?;
                if !str_at(&node, "/name").is_empty() {
                    return Ok(Err(format!(
                        "MAC address {mac} conflicts with existing node {}",
                        str_at(&node, "/name")
                    )));
                }
                self.node = Some(node.clone());
                return Ok(Ok(Some(node)));
            }
        }
        Ok(Ok(None))
    }

    /// `getNode`: the node by `status.provisioning.ID`, cached for the rest of the pass;
    /// `None` when there is no ID or the node is gone (`ErrNeedsRegistration`).
    async fn get_node(&mut self, status: &Value) -> SimResult<Option<Value>> {
        if let Some(node) = &self.node {
            return Ok(Some(node.clone()));
        }
        let id = str_at(status, "/provisioning/ID");
        if id.is_empty() {
            return Ok(None);
        }
        match self
            .ironic
            .send::<Value>(Method::GET, &format!("/v1/nodes/{id}"), None::<&()>)
            .await
        {
            Ok(node) => {
                self.observe(&node);
                self.node = Some(node.clone());
                Ok(Some(node))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(format!("failed to find node by ID {id}: {e}")),
        }
    }

    /// Notes when the node first shows `manageable` and `active`, and counts failed adoptions.
    fn observe(&mut self, node: &Value) {
        let uuid = str_at(node, "/uuid").to_owned();
        let state = str_at(node, "/provision_state");
        if state == "manageable" && self.seen_manageable.as_ref().is_none_or(|(u, _)| *u != uuid) {
            let now = Instant::now();
            self.seen_manageable = Some((uuid.clone(), now));
            self.stats().manageable_at = Some(now);
            self.log(format!("node {uuid} manageable"));
        }
        if state == "active" && self.stats().active_at.is_none() {
            self.stats().active_at = Some(Instant::now());
            self.log(format!("node {uuid} active"));
        }
        let requests = self.stats().adopt_requests;
        if state == "adopt failed" && self.counted_failures < requests {
            self.counted_failures = requests;
            let err = str_at(node, "/last_error").to_owned();
            self.log(format!("adoption failed: {err}"));
            self.stats().adopt_failures.push(err);
        }
    }

    async fn ports_by_address(&self, mac: &str) -> SimResult<Vec<Value>> {
        let list: Value = self
            .ironic
            .send(
                Method::GET,
                &format!("/v1/ports?address={mac}&fields=node_uuid,uuid,address"),
                None::<&()>,
            )
            .await
            .map_err(|e| format!("failed to look for existing ports: {e}"))?;
        Ok(list["ports"].as_array().cloned().unwrap_or_default())
    }

    /// `createPortsForNode` + `createNodePort` for the boot MAC.
    async fn create_port(&self, uuid: &str, mac: &str) -> SimResult<()> {
        let list: Value = self
            .ironic
            .send(
                Method::GET,
                &format!("/v1/ports?node_uuid={uuid}&fields=node_uuid,uuid,address"),
                None::<&()>,
            )
            .await
            .map_err(|e| format!("failed to list ports: {e}"))?;
        let have = list["ports"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| str_at(p, "/address").eq_ignore_ascii_case(mac)));
        if have {
            return Ok(());
        }
        let existing = self.ports_by_address(mac).await?;
        if let Some(other) = existing.iter().find(|p| str_at(p, "/node_uuid") != uuid) {
            return Err(format!(
                "port belongs to another node {}, MAC: {mac} can't register for node {uuid}",
                str_at(other, "/node_uuid")
            ));
        }
        if !existing.is_empty() {
            return Ok(());
        }
        let body = json!({"node_uuid": uuid, "address": mac, "pxe_enabled": true});
        self.ironic
            .send::<Value>(Method::POST, "/v1/ports", Some(&body))
            .await
            .map_err(|e| format!("failed to create ironic port for node {uuid}, MAC: {mac}: {e}"))?;
        self.log(format!("created port {mac}"));
        Ok(())
    }

    /// `tryUpdateNode`: `None` on 409 (retry after `shortRetryDelay`).
    async fn update_node(&mut self, uuid: &str, ops: &[Value]) -> SimResult<Option<Value>> {
        match self
            .ironic
            .send::<Value>(Method::PATCH, &format!("/v1/nodes/{uuid}"), Some(ops))
            .await
        {
            Ok(node) => {
                self.observe(&node);
                self.node = Some(node.clone());
                Ok(Some(node))
            }
            Err(e) if is_conflict(&e) => Ok(None),
            Err(e) => Err(format!("failed to update host settings in ironic: {e}")),
        }
    }

    /// `configureNode`: `automated_clean`, `cpu_arch` and the capabilities merge.
    async fn configure_node(&mut self, host: &Value, node: &Value) -> SimResult<Prov> {
        let mut ops = Vec::new();
        let automated_clean = str_at(host, "/spec/automatedCleaningMode") != "disabled";
        if node.get("automated_clean") != Some(&json!(automated_clean)) {
            ops.push(json!({"op": "add", "path": "/automated_clean", "value": automated_clean}));
        }
        let current = node.pointer("/properties/capabilities").and_then(Value::as_str);
        let wanted = capabilities_value(current, boot_mode(host));
        if current != Some(wanted.as_str()) {
            ops.push(json!({"op": "add", "path": "/properties/capabilities", "value": wanted}));
            self.stats().capability_patches += 1;
            self.log(format!("capabilities {current:?} -> {wanted:?}"));
        }
        if str_at(node, "/properties/cpu_arch") != "x86_64" {
            ops.push(json!({"op": "add", "path": "/properties/cpu_arch", "value": "x86_64"}));
        }
        if ops.is_empty() {
            return Ok(Prov::Complete);
        }
        let uuid = str_at(node, "/uuid").to_owned();
        Ok(match self.update_node(&uuid, &ops).await? {
            Some(_) => Prov::Complete,
            None => Prov::Continuing(self.cfg().short_retry),
        })
    }

    /// `tryChangeNodeProvisionState`: clears maintenance first, 409 -> retry.
    async fn change_provision_state(&mut self, node: &Value, target: &str) -> SimResult<Prov> {
        let uuid = str_at(node, "/uuid").to_owned();
        let short = self.cfg().short_retry;
        if !str_at(node, "/fault").is_empty() {
            return Ok(Prov::Continuing(self.cfg().short_retry * 3));
        }
        if node["maintenance"] == json!(true) {
            return self.set_maintenance(&uuid, false).await;
        }
        let path = format!("/v1/nodes/{uuid}/states/provision");
        match self
            .ironic
            .send_with_body(Method::PUT, &path, &json!({"target": target}))
            .await
        {
            Ok(()) => {
                self.node = None;
                {
                    let mut s = self.stats();
                    match target {
                        "manage" => s.manage_requests += 1,
                        "adopt" => {
                            s.adopt_requests += 1;
                            s.adopt_requested_at = Some(Instant::now());
                            s.first_adopt_at.get_or_insert(Instant::now());
                        }
                        _ => {}
                    }
                }
                self.log(format!("provision {target} requested on {uuid}"));
                Ok(Prov::Continuing(short))
            }
            Err(e) if is_conflict(&e) => Ok(Prov::Continuing(short)),
            Err(e) => Err(format!("failed to change provisioning state to {target:?}: {e}")),
        }
    }

    /// `setMaintenanceFlag`.
    async fn set_maintenance(&mut self, uuid: &str, on: bool) -> SimResult<Prov> {
        let path = format!("/v1/nodes/{uuid}/maintenance");
        let result = if on {
            self.ironic
                .send_with_body(
                    Method::PUT,
                    &path,
                    &json!({"reason": "forcing deletion in baremetal-operator"}),
                )
                .await
        } else {
            self.ironic.send_empty(Method::DELETE, &path).await
        };
        match result {
            Ok(()) => {
                self.node = None;
                Ok(Prov::Continuing(Duration::ZERO))
            }
            Err(e) if is_conflict(&e) => Ok(Prov::Continuing(self.cfg().short_retry)),
            Err(e) => Err(format!("failed to set host maintenance flag to {on}: {e}")),
        }
    }

    /// The deletion at the end of `realDelete`.
    async fn delete_node(&mut self, uuid: &str) -> SimResult<Prov> {
        match self
            .ironic
            .send_empty(Method::DELETE, &format!("/v1/nodes/{uuid}"))
            .await
        {
            Ok(()) => {
                self.node = None;
                self.stats().nodes_deleted += 1;
                self.log(format!("deleted node {uuid}"));
                Ok(Prov::Continuing(Duration::ZERO))
            }
            Err(e) if is_not_found(&e) => Ok(Prov::Continuing(Duration::ZERO)),
            Err(e) if is_conflict(&e) => Ok(Prov::Continuing(self.cfg().short_retry)),
            Err(e) => Err(format!("failed to remove host: {e}")),
        }
    }

    /// `handleAvailable` -> `actionManageAvailable`.
    async fn handle_available(&mut self, host: &Value, status: &mut Value) -> SimResult<Step> {
        if host.pointer("/spec/externallyProvisioned") == Some(&json!(true)) {
            status["provisioning"]["state"] = json!("externally provisioned");
            // `clearHostProvisioningSettings`.
            if let Some(p) = status["provisioning"].as_object_mut() {
                p.remove("rootDeviceHints");
                p.remove("raid");
                p.remove("firmware");
            }
            self.log("state -> externally provisioned");
            return Ok(Step::update(Duration::ZERO));
        }
        let online = host.pointer("/spec/online") == Some(&json!(true));
        let wants_image = !str_at(host, "/spec/image/url").is_empty()
            || !str_at(host, "/spec/customDeploy/method").is_empty();
        if online && wants_image {
            return self
                .unsupported("provisioning (spec.image / spec.customDeploy)")
                .await;
        }
        self.manage_host_power(host, status).await
    }

    /// `actionManageSteadyState`: `Adopt`, then `manageHostPower` once adopted.
    async fn manage_steady_state(&mut self, host: &Value, status: &mut Value) -> SimResult<Step> {
        let restart = str_at(status, "/errorType") == PROVISIONED_REGISTRATION_ERROR;
        match self.adopt(status, restart).await? {
            Prov::Failed(msg) => {
                // `recordActionFailure`: error status, and `calculateBackoff(errorCount)`.
                let count = status["errorCount"].as_u64().unwrap_or(0) + 1;
                status["errorType"] = json!(PROVISIONED_REGISTRATION_ERROR);
                status["errorMessage"] = json!(msg);
                status["errorCount"] = json!(count);
                status["operationalStatus"] = json!("error");
                let backoff = self.backoff(count);
                self.log(format!("{msg}; retry in {:.2}s (backoff)", backoff.as_secs_f64()));
                Ok(Step::update(backoff))
            }
            Prov::Continuing(delay) => {
                let save = clear_error(status);
                Ok(Step { save, requeue: delay })
            }
            Prov::Complete => self.manage_host_power(host, status).await,
        }
    }

    /// `calculateBackoff`: 2^count minutes (count capped at 9), minus a random part of up to
    /// half.
    fn backoff(&self, count: u64) -> Duration {
        use std::hash::BuildHasher as _;
        let base = 2f64.powi(count.min(9) as i32);
        let random =
            std::collections::hash_map::RandomState::new().hash_one(Instant::now()) as f64 / u64::MAX as f64;
        self.cfg().minute.mul_f64(base - random * base * 0.5)
    }

    /// `Adopt`.
    async fn adopt(&mut self, status: &Value, restart_on_failure: bool) -> SimResult<Prov> {
        let node = self
            .get_node(status)
            .await?
            .ok_or("adopt: node not found (needs registration)")?;
        let short = self.cfg().short_retry;
        match str_at(&node, "/provision_state") {
            "enroll" | "verifying" => Err(format!(
                "invalid state for adopt: {}",
                str_at(&node, "/provision_state")
            )),
            "manageable" => {
                // The window between `manageable` and BMO's `adopt` (its requeue after
                // `manage`), configurable here.
                let delay = self.cfg().adopt_delay;
                if let Some((_, since)) = &self.seen_manageable {
                    let ready = *since + delay;
                    let now = Instant::now();
                    if now < ready {
                        return Ok(Prov::Continuing(ready - now));
                    }
                }
                self.change_provision_state(&node, "adopt").await
            }
            "adopting" => Ok(Prov::Continuing(short)),
            "adopt failed" => {
                if restart_on_failure {
                    self.change_provision_state(&node, "adopt").await
                } else {
                    Ok(Prov::Failed(format!(
                        "Host adoption failed: {}",
                        str_at(&node, "/last_error")
                    )))
                }
            }
            "active" => {
                if node["maintenance"] == json!(true) && str_at(&node, "/fault").is_empty() {
                    let uuid = str_at(&node, "/uuid").to_owned();
                    return self.set_maintenance(&uuid, false).await;
                }
                Ok(Prov::Complete)
            }
            _ => Ok(Prov::Complete),
        }
    }

    /// `manageHostPower`.
    async fn manage_host_power(&mut self, host: &Value, status: &mut Value) -> SimResult<Step> {
        let node = self
            .get_node(status)
            .await?
            .ok_or("failed to update the host power status: node not found")?;
        let powered_on = status["poweredOn"] == json!(true);
        // `UpdateHardwareState`: only a known power state is recorded.
        let hw = match str_at(&node, "/power_state") {
            "power on" => Some(true),
            "power off" => Some(false),
            _ => None,
        };
        if let Some(on) = hw
            && on != powered_on
        {
            status["poweredOn"] = json!(on);
            if str_at(status, "/errorType") == POWER_MANAGEMENT_ERROR {
                clear_error(status);
            }
            self.log(format!("status.poweredOn = {on}"));
            return Ok(Step::update(Duration::ZERO));
        }
        let state = str_at(status, "/provisioning/state");
        let provisioned = matches!(state, "provisioned" | "externally provisioned");
        let ann = annotations(host);
        if !powered_on && ann.contains_key(REBOOT_ANNOTATION) {
            self.store.bmo_update("remove reboot annotation", |h| {
                if let Some(a) = h
                    .pointer_mut("/metadata/annotations")
                    .and_then(Value::as_object_mut)
                {
                    a.remove(REBOOT_ANNOTATION);
                }
            });
            self.stats().reboot_annotation_removals += 1;
            self.log("removed reboot annotation");
            return Ok(Step::cont(Duration::ZERO));
        }
        // `hasRebootAnnotation(info, !isProvisioned)`: outside provisioned states only
        // `force: true` counts.
        let mut reboot = false;
        let mut hard = false;
        for (k, v) in &ann {
            if !is_reboot_annotation(k) {
                continue;
            }
            let args: Value = serde_json::from_str(v.as_str().unwrap_or("")).unwrap_or(json!({}));
            if !provisioned && args.get("force") != Some(&json!(true)) {
                continue;
            }
            reboot = true;
            hard |= args.get("mode") == Some(&json!("hard"));
        }
        let mut desired = host.pointer("/spec/online") == Some(&json!(true));
        if reboot {
            desired = false;
        }
        let steady = Step::cont(self.cfg().minute);
        if powered_on == desired {
            return Ok(steady);
        }
        let force = str_at(status, "/errorType") == POWER_MANAGEMENT_ERROR;
        let prov = if desired {
            self.power_on(&node, force).await?
        } else {
            if status["errorCount"].as_u64().unwrap_or(0) > 0 {
                hard = true;
            }
            self.power_off(&node, hard, force).await?
        };
        match prov {
            Prov::Failed(msg) => {
                let count = status["errorCount"].as_u64().unwrap_or(0) + 1;
                status["errorType"] = json!(POWER_MANAGEMENT_ERROR);
                status["errorMessage"] = json!(msg);
                status["errorCount"] = json!(count);
                status["operationalStatus"] = json!("error");
                Ok(Step::update(self.backoff(count)))
            }
            Prov::Continuing(delay) => {
                let save = clear_error(status);
                Ok(Step { save, requeue: delay })
            }
            Prov::Complete => {
                status["poweredOn"] = host.pointer("/spec/online").cloned().unwrap_or(json!(false));
                status["errorCount"] = json!(0);
                Ok(Step::update(self.cfg().minute))
            }
        }
    }

    /// `PowerOn`.
    async fn power_on(&mut self, node: &Value, force: bool) -> SimResult<Prov> {
        if str_at(node, "/power_state") == "power on" {
            return Ok(Prov::Complete);
        }
        if str_at(node, "/target_power_state") == "power on" {
            return Ok(Prov::Continuing(self.cfg().short_retry));
        }
        if !str_at(node, "/last_error").is_empty() && !force {
            return Ok(Prov::Failed(format!(
                "PowerOn operation failed: {}",
                str_at(node, "/last_error")
            )));
        }
        self.change_power(node, "power on").await
    }

    /// `PowerOff` (no inspection/cleaning to abort in the states we simulate).
    async fn power_off(&mut self, node: &Value, hard: bool, force: bool) -> SimResult<Prov> {
        if str_at(node, "/power_state") == "power off" {
            return Ok(Prov::Complete);
        }
        let target = str_at(node, "/target_power_state");
        if target == "power off" || target == "soft power off" {
            return Ok(Prov::Continuing(self.cfg().short_retry));
        }
        let last_error = str_at(node, "/last_error");
        if target.is_empty() && !last_error.is_empty() && !force && !last_error.contains("aborted") {
            return Ok(Prov::Failed(last_error.to_owned()));
        }
        if !hard && !force {
            // fake-hardware supports soft power off.
            return self.change_power(node, "soft power off").await;
        }
        self.change_power(node, "power off").await
    }

    /// `changePower`: refuses while a provision state change is under way.
    async fn change_power(&mut self, node: &Value, target: &str) -> SimResult<Prov> {
        let short = self.cfg().short_retry;
        if !str_at(node, "/target_provision_state").is_empty() {
            return Ok(Prov::Continuing(short));
        }
        let uuid = str_at(node, "/uuid").to_owned();
        let mut body = json!({"target": target});
        if target == "soft power off" {
            body["timeout"] = json!(180);
        }
        match self
            .ironic
            .send_with_body(Method::PUT, &format!("/v1/nodes/{uuid}/states/power"), &body)
            .await
        {
            Ok(()) => {
                self.node = None;
                {
                    let mut s = self.stats();
                    if target == "power on" {
                        s.power_on_requests += 1;
                        s.last_power_on_at = Some(Instant::now());
                    } else {
                        s.power_off_requests += 1;
                    }
                }
                self.log(format!("{target} requested on {uuid}"));
                Ok(Prov::Continuing(Duration::ZERO))
            }
            Err(e) if is_conflict(&e) => Ok(Prov::Continuing(short)),
            Err(e) => Err(format!("failed to {target} node: {e}")),
        }
    }
}

/// `clearError`: operational status OK, no error type or message (the count stays).
fn clear_error(status: &mut Value) -> bool {
    let dirty = str_at(status, "/operationalStatus") != "OK"
        || !str_at(status, "/errorType").is_empty()
        || !str_at(status, "/errorMessage").is_empty();
    if dirty {
        status["operationalStatus"] = json!("OK");
        status["errorType"] = json!("");
        status["errorMessage"] = json!("");
    }
    dirty
}

/// `InspectionDisabled`: `spec.inspectionMode: disabled` or `inspect.metal3.io: disabled`.
fn inspection_disabled(host: &Value) -> bool {
    str_at(host, "/spec/inspectionMode") == "disabled"
        || annotations(host).get("inspect.metal3.io") == Some(&json!("disabled"))
}

/// `spec.bootMode` (default `UEFI`).
fn boot_mode(host: &Value) -> &str {
    match str_at(host, "/spec/bootMode") {
        "" => "UEFI",
        m => m,
    }
}

/// `buildCapabilitiesValue`: keeps every entry but `boot_mode:*`/`secure_boot:*`, then
/// appends the boot mode's.
pub fn capabilities_value(existing: Option<&str>, boot_mode: &str) -> String {
    let mode = match boot_mode {
        "UEFISecureBoot" => "boot_mode:uefi,secure_boot:true",
        "legacy" => "boot_mode:bios",
        _ => "boot_mode:uefi",
    };
    let existing = existing.unwrap_or("");
    if existing.is_empty() {
        return mode.to_owned();
    }
    let mut kept: Vec<&str> = existing
        .split(',')
        .filter(|c| !c.starts_with("boot_mode:") && !c.starts_with("secure_boot:"))
        .collect();
    kept.push(mode);
    kept.join(",")
}

fn is_not_found(e: &IronicError) -> bool {
    matches!(e, IronicError::NotFound { .. })
}

/// A 409 (BMO retries any 409 after `shortRetryDelay`).
fn is_conflict(e: &IronicError) -> bool {
    matches!(e, IronicError::Conflict { .. } | IronicError::InvalidState { .. })
}

/// A simulated Ironic database loss for one node: what BMO finds afterwards is no node at
/// all (its ports, connectors and targets gone with it). The node is put in maintenance and
/// deleted through the API (Ironic deletes an `active` node only in maintenance).
pub async fn lose_node(ironic: &IronicClient, uuid: &str) {
    // The simulator, like BMO, takes an active node without a fault out of maintenance
    // between the two calls now and then: put it back and delete again (bounded).
    for attempt in 1..=10 {
        ironic
            .send_with_body(
                Method::PUT,
                &format!("/v1/nodes/{uuid}/maintenance"),
                &json!({"reason": "simulated database loss"}),
            )
            .await
            .expect("maintenance before delete");
        match ironic
            .send_empty(Method::DELETE, &format!("/v1/nodes/{uuid}"))
            .await
        {
            Ok(_) => return,
            Err(e) if attempt < 10 && is_conflict(&e) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("delete node: {e:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_keep_foreign_entries_and_move_boot_mode_last() {
        for (existing, want) in [
            (None, "boot_mode:uefi"),
            (Some(""), "boot_mode:uefi"),
            (Some("boot_mode:uefi"), "boot_mode:uefi"),
            (
                Some("boot_mode:uefi,iscsi_boot:True"),
                "iscsi_boot:True,boot_mode:uefi",
            ),
            (
                Some("iscsi_boot:True,boot_mode:bios,secure_boot:true"),
                "iscsi_boot:True,boot_mode:uefi",
            ),
        ] {
            assert_eq!(capabilities_value(existing, "UEFI"), want, "{existing:?}");
        }
    }
}
