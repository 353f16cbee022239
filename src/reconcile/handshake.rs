//! The adoption handshake with baremetal-operator, as a pure decision.
//!
//! A stock baremetal-operator (BMO) provisions a host only when it has `spec.image` or
//! `spec.customDeploy`; a host that boots from a volume has neither, so it would stay
//! `available` forever. What does work is adoption: once the Ironic node carries our boot
//! target and the `iscsi_boot` capability, Ironic's `adopt` brings it to `active` and writes
//! the iPXE script that `sanhook`s the volume. BMO adopts a host whose
//! `spec.externallyProvisioned` is true. So, per host, after [`super::plan`] has configured
//! the node:
//!
//! 1. set a persistent PXE boot device once, before adoption (adoption never sets one),
//!    and record it in the node's `extra` (BMCs do not report persistence reliably);
//! 2. hand over: `manage` an `available` node (BMO adopts only `manageable` ones), then
//!    merge-patch `spec.externallyProvisioned: true` into the host, with BMO's reboot
//!    annotation when the node is powered on or the host is `online` (it runs, or is about
//!    to run, something else and must boot again);
//! 3. after a failed adoption (BMO was faster than our configuration), change an annotation
//!    of ours once the node is configured: an annotation change makes BMO retry at once
//!    instead of after its minutes-long backoff;
//! 4. watch the outcome: `active` booting from our target, `active` without it (never
//!    fought: no power, detach or delete on our own), or a change that reached Ironic after
//!    the iPXE script was written (Ironic never rewrites it).
//!
//! [`decide`] maps `(host facts, node facts, sync facts, options) -> Decision`; the edge
//! ([`super::host_api`]) reads the facts and executes the steps.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
};

/// Event reason: the host was handed to BMO for adoption.
pub const REASON_HANDED_OVER: &str = "BootVolumeHandedOver";
/// Event reason: the node is `active` and boots from our volume target.
pub const REASON_BOOTING: &str = "BootingFromVolume";
/// Warning reason: the node is `active` but Ironic does not boot it from our target.
pub const REASON_ADOPTED_WITHOUT: &str = "AdoptedWithoutBootVolume";
/// Warning reason: a change reached Ironic after the boot script was written.
pub const REASON_STALE: &str = "BootScriptStale";
/// Warning reason: BMO's webhook (or the API server) refused the hand-over patch.
pub const REASON_HANDOVER_REJECTED: &str = "HandOverRejected";
/// Event reason: we poked BMO to retry a failed adoption now that the node is configured.
pub const REASON_ADOPTION_RETRY: &str = "AdoptionRetryRequested";

/// Per-host opt-out: `"false"` disables the hand-over for this host.
pub const HANDOFF_ANNOTATION: &str = "bootvolume.metal3.io/handoff";
/// The host generation we handed over (written in the hand-over patch itself).
pub const HANDED_OVER_ANNOTATION: &str = "bootvolume.metal3.io/handed-over-generation";
/// Bumped once per failed adoption (node uuid and the failure's time), to wake BMO.
pub const ADOPT_RETRY_ANNOTATION: &str = "bootvolume.metal3.io/adopt-retry";
/// BMO's base reboot annotation: BMO powers off, removes it, powers on per `online`.
pub const REBOOT_ANNOTATION: &str = "reboot.metal3.io";
/// The reboot annotation's value: a hard power cycle, never `force` (in `available` a forced
/// reboot would power-cycle the node before adoption).
pub const REBOOT_VALUE: &str = r#"{"mode":"hard"}"#;
/// Node `extra` key: we set the persistent PXE boot device (value: `"pxe"`).
pub const BOOT_DEVICE_KEY: &str = "bootvolume_boot_device";
/// Node `extra` key: a change reached Ironic while the node was `active`; its boot script
/// is stale until the node is adopted again (a new node record starts without it).
pub const STALE_KEY: &str = "bootvolume_script_stale";
/// BMO's `status.errorType` after a failed adoption; its next reconcile re-adopts.
pub const ADOPTION_ERROR_TYPE: &str = "provisioned registration error";
/// The field manager of our writes to hosts.
pub const FIELD_MANAGER: &str = "bootvolume";

/// Where a host stands in the handshake: `bootvolume_hosts{phase}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// Ironic is not configured yet (writes pending or waiting).
    Configuring,
    /// Configured, not handed over: opted out, image set, state not `available`...
    Waiting,
    /// `externallyProvisioned` is set; BMO has not adopted the node yet.
    HandedOver,
    /// `active`, booting from our target.
    BootingFromVolume,
    /// `active`, not booting from our target.
    AdoptedWithoutBootVolume,
    /// `active`, but the boot script predates a change (e.g. rotated CHAP).
    Stale,
}

impl Phase {
    /// Every phase, for zeroing gauges.
    pub const ALL: [Phase; 6] = [
        Self::Configuring,
        Self::Waiting,
        Self::HandedOver,
        Self::BootingFromVolume,
        Self::AdoptedWithoutBootVolume,
        Self::Stale,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Configuring => "configuring",
            Self::Waiting => "waiting",
            Self::HandedOver => "handed_over",
            Self::BootingFromVolume => "booting_from_volume",
            Self::AdoptedWithoutBootVolume => "adopted_without_boot_volume",
            Self::Stale => "stale",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// What the handshake needs to know about the BareMetalHost.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostFacts {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `status.provisioning.state` (`""` when unset).
    pub provisioning_state: String,
    /// `spec.externallyProvisioned`.
    pub externally_provisioned: bool,
    /// `spec.image` is set: BMO deploys an image, nothing to hand over.
    pub has_image: bool,
    /// `spec.customDeploy` is set.
    pub has_custom_deploy: bool,
    /// `spec.online` is true: BMO powers an `available` host on, possibly just before
    /// adoption, so the node may be on at adoption even if it was off at hand-over.
    pub online: bool,
    /// Annotation [`HANDOFF_ANNOTATION`] is `"false"`.
    pub opted_out: bool,
    /// The generation last handed over (our annotation, or memory after a rejection).
    pub handed_over_generation: Option<i64>,
    /// Annotation [`ADOPT_RETRY_ANNOTATION`]'s value.
    pub adopt_retry: Option<String>,
    /// BMO recorded the failed adoption (`status.errorType` [`ADOPTION_ERROR_TYPE`]): only
    /// then does its next reconcile re-adopt (before, it would record the failure and wait
    /// out its backoff, wasting our poke).
    pub adoption_failure_recorded: bool,
    /// The phase this host had after our previous pass (memory): Events are sent on change.
    pub previous_phase: Option<Phase>,
}

/// What the handshake needs to know about the Ironic node, after this pass's writes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeFacts {
    /// Node UUID.
    pub uuid: String,
    /// `provision_state`.
    pub provision_state: String,
    /// `power_state` (`None`: never powered, e.g. a fresh fake node).
    pub power_state: Option<String>,
    /// A conductor holds the node lock: state changes would get 409.
    pub locked: bool,
    /// `driver_internal_info.boot_from_volume`.
    pub boot_from_volume: Option<String>,
    /// `provision_updated_at`: identifies one failed adoption.
    pub provision_updated_at: Option<String>,
    /// `last_error`.
    pub last_error: Option<String>,
    /// Our [`BOOT_DEVICE_KEY`] is in `extra`.
    pub boot_device_recorded: bool,
    /// Our [`STALE_KEY`] is in `extra`.
    pub stale_recorded: bool,
}

/// What this pass's configuration ([`super::plan`]) left behind.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SyncFacts {
    /// Everything is in sync: no write failed or waits (in dry-run: nothing to write).
    pub in_sync: bool,
    /// Adoption would boot from the volume: the boot target exists and the node has
    /// `iscsi_boot` (the storage interface may still lag: adoption does not need it).
    pub adoptable: bool,
    /// The UUID of our boot target (boot_index 0), when it existed before this pass.
    pub boot_target: Option<String>,
    /// This pass changed the connector or target (or they wait for power off).
    pub volume_changed: bool,
}

/// Switches of the handshake.
#[derive(Clone, Debug)]
pub struct Options {
    /// Decide and report, never write (neither Ironic nor the host).
    pub dry_run: bool,
    /// Hand hosts over to BMO (`reconcile --handoff`).
    pub handoff: bool,
    /// State kept between passes (shared by clones).
    pub memory: Arc<Memory>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            dry_run: false,
            handoff: true,
            memory: Arc::default(),
        }
    }
}

impl Options {
    /// Options with fresh memory.
    pub fn new(dry_run: bool, handoff: bool) -> Self {
        Self {
            dry_run,
            handoff,
            memory: Arc::default(),
        }
    }
}

/// What we remember of one host between passes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostMemory {
    /// The generation handed over by this process (the watch may still show the old host).
    pub handed_over_generation: Option<i64>,
    /// The generation whose hand-over was refused (not retried in that generation).
    pub rejected_generation: Option<i64>,
    /// The phase after the last pass.
    pub phase: Option<Phase>,
}

/// Per-host memory, keyed `namespace/name`.
#[derive(Debug, Default)]
pub struct Memory(Mutex<HashMap<String, HostMemory>>);

impl Memory {
    /// What we remember of `key`.
    pub fn get(&self, key: &str) -> HostMemory {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    /// Updates what we remember of `key`.
    pub fn update(&self, key: &str, f: impl FnOnce(&mut HostMemory)) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(key.to_owned()).or_default());
    }

    /// Forgets `key` (host gone).
    pub fn forget(&self, key: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

/// One write the edge performs, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `PUT .../management/boot_device {"boot_device":"pxe","persistent":true}`, then record
    /// [`BOOT_DEVICE_KEY`] in the node's `extra`.
    SetBootDevice,
    /// Record [`STALE_KEY`] in the node's `extra`.
    RecordStale,
    /// `PUT .../states/provision {"target":"manage"}` (`available` -> `manageable`).
    Manage,
    /// Merge-patch the host: `externallyProvisioned: true`, our generation annotation and,
    /// when `reboot`, BMO's reboot annotation.
    HandOver {
        /// The generation handed over.
        generation: Option<i64>,
        /// The node was powered on, or the host is `online`: ask BMO for one hard reboot
        /// after adoption (BMO only removes the annotation and powers on a node that is off).
        reboot: bool,
    },
    /// Merge-patch the host's [`ADOPT_RETRY_ANNOTATION`] to `token`.
    RequestAdoptionRetry {
        /// `<node uuid>@<provision_updated_at>`.
        token: String,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SetBootDevice => f.write_str("set persistent boot device pxe"),
            Self::RecordStale => f.write_str("record that the boot script is stale"),
            Self::Manage => f.write_str("manage the node (available -> manageable)"),
            Self::HandOver { reboot, .. } => write!(
                f,
                "hand over to baremetal-operator: spec.externallyProvisioned true{}",
                if *reboot {
                    ", reboot annotation (node is powered on)"
                } else {
                    ""
                }
            ),
            Self::RequestAdoptionRetry { .. } => {
                f.write_str("annotate the host so baremetal-operator retries the adoption now")
            }
        }
    }
}

/// Normal or Warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// Progress.
    Normal,
    /// Needs attention.
    Warning,
}

/// A Kubernetes Event to record on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostEvent {
    /// Normal or Warning.
    pub kind: EventKind,
    /// One of the `REASON_*` constants (or an error reason).
    pub reason: &'static str,
    /// Human text; never a secret.
    pub note: String,
}

impl HostEvent {
    fn normal(reason: &'static str, note: String) -> Self {
        Self {
            kind: EventKind::Normal,
            reason,
            note,
        }
    }
    fn warning(reason: &'static str, note: String) -> Self {
        Self {
            kind: EventKind::Warning,
            reason,
            note,
        }
    }
}

/// The result of [`decide`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    /// Writes to make, in order (empty in dry-run).
    pub steps: Vec<Step>,
    /// In dry-run: what [`Self::steps`] would have been.
    pub would: Vec<Step>,
    /// Events of the state observed (transitions only; the edge adds events of writes).
    pub events: Vec<HostEvent>,
    /// The phase for the metric.
    pub phase: Option<Phase>,
}

/// Why the hand-over does not happen now (`None`: it may).
pub fn handover_blocker(
    host: &HostFacts,
    node: &NodeFacts,
    sync: &SyncFacts,
    options: &Options,
) -> Option<String> {
    let why = if host.externally_provisioned {
        "the host is already externally provisioned"
    } else if !options.handoff {
        "hand-over is disabled (--handoff=false)"
    } else if host.opted_out {
        "hand-over is disabled on this host (annotation bootvolume.metal3.io/handoff: \"false\")"
    } else if host.has_image {
        "spec.image is set"
    } else if host.has_custom_deploy {
        "spec.customDeploy is set"
    } else if !sync.in_sync {
        "Ironic is not in sync yet"
    } else if host.provisioning_state != "available" {
        return Some(format!(
            "the host is {:?}, not available",
            host.provisioning_state
        ));
    } else if host.generation.is_some() && host.handed_over_generation == host.generation {
        "this generation was handed over already"
    } else if !matches!(node.provision_state.as_str(), "available" | "manageable") {
        return Some(format!("the node is {:?}", node.provision_state));
    } else if node.locked {
        "the node is locked by a running task"
    } else {
        return None;
    };
    Some(why.to_owned())
}

/// The handshake decision for one host.
pub fn decide(host: &HostFacts, node: &NodeFacts, sync: &SyncFacts, options: &Options) -> Decision {
    let mut steps = Vec::new();
    let mut events = Vec::new();
    let state = node.provision_state.as_str();
    let active = state == "active";
    let booting = active && sync.boot_target.is_some() && node.boot_from_volume == sync.boot_target;

    // Step 1b: the boot device, once, before adoption, when the rest is configured.
    let mut boot_device = node.boot_device_recorded;
    if !boot_device && sync.adoptable && super::plan::boot_device_settable(state) && !node.locked {
        steps.push(Step::SetBootDevice);
        boot_device = true;
    }

    // Step 5: a volume change while active does not reach the host's boot.
    let mut stale = active && node.stale_recorded;
    if active && sync.volume_changed && booting_or_was(node, sync) {
        stale = true;
        if !node.stale_recorded {
            steps.push(Step::RecordStale);
            events.push(HostEvent::warning(
                REASON_STALE,
                format!(
                    "Ironic node {} is active: Ironic never rewrites its iPXE script, so the volume \
                     change reaches the host's boot only after it is adopted again (detach the \
                     host, then re-attach it)",
                    node.uuid
                ),
            ));
        }
    }

    // Step 1c: a failed adoption, now configured: make BMO retry at once.
    if state == "adopt failed"
        && sync.adoptable
        && host.externally_provisioned
        && host.adoption_failure_recorded
    {
        let token = format!(
            "{}@{}",
            node.uuid,
            node.provision_updated_at.as_deref().unwrap_or("")
        );
        if host.adopt_retry.as_deref() != Some(token.as_str()) {
            steps.push(Step::RequestAdoptionRetry { token });
        }
    }

    // Step 2: hand over.
    let mut handed_over = host.externally_provisioned;
    if boot_device && handover_blocker(host, node, sync, options).is_none() {
        if state == "available" {
            steps.push(Step::Manage);
        }
        steps.push(Step::HandOver {
            generation: host.generation,
            // Not only "on now": BMO powers an online `available` host on at the same moment
            // we see `available`, and a node that comes up before adoption would keep running
            // what it booted. For a node that is off at adoption BMO's `manageHostPower`
            // just removes the annotation and powers on once: no extra power cycle.
            reboot: node.power_state.as_deref() == Some("power on") || host.online,
        });
        handed_over = !options.dry_run;
    }

    // Steps 3 and 4: the outcome.
    let phase = if active && stale {
        Phase::Stale
    } else if booting {
        Phase::BootingFromVolume
    } else if active {
        Phase::AdoptedWithoutBootVolume
    } else if !(sync.in_sync || handed_over && sync.adoptable) {
        Phase::Configuring
    } else if handed_over {
        Phase::HandedOver
    } else {
        Phase::Waiting
    };
    if host.previous_phase != Some(phase) {
        match phase {
            Phase::BootingFromVolume => events.push(HostEvent::normal(
                REASON_BOOTING,
                format!(
                    "Ironic node {} is active and boots from volume target {}",
                    node.uuid,
                    sync.boot_target.as_deref().unwrap_or("")
                ),
            )),
            Phase::AdoptedWithoutBootVolume => events.push(HostEvent::warning(
                REASON_ADOPTED_WITHOUT,
                format!(
                    "Ironic node {} is active but does not boot from our volume target (boot_from_volume: {}); \
                     it was adopted or deployed before its boot target existed. bootvolume does not \
                     power-cycle, detach or delete it: to boot from the volume, detach the host and \
                     re-attach it so baremetal-operator adopts it again",
                    node.uuid,
                    node.boot_from_volume.as_deref().unwrap_or("none")
                ),
            )),
            _ => {}
        }
    }
    let mut decision = Decision {
        steps,
        would: Vec::new(),
        events,
        phase: Some(phase),
    };
    if options.dry_run {
        decision.would = std::mem::take(&mut decision.steps);
    }
    decision
}

/// A change while active makes the script stale when the node booted (or boots) from a
/// volume at all: a node adopted without us has no script to go stale.
fn booting_or_was(node: &NodeFacts, _sync: &SyncFacts) -> bool {
    node.boot_from_volume.is_some()
}

#[cfg(test)]
mod tests;
