//! The edge of the adoption handshake: one full pass for one host (configure Ironic, then
//! the [`handshake`] steps), and the only write we make to a BareMetalHost, behind
//! [`HostWriter`] so tests can run the pass against an in-memory host.

use super::{
    Error,
    apply::{self, HostSpec, Outcome},
    handshake::{
        self, ADOPT_RETRY_ANNOTATION, BOOT_DEVICE_KEY, Decision, EventKind, FIELD_MANAGER,
        HANDED_OVER_ANNOTATION, HANDOFF_ANNOTATION, HostEvent, HostFacts, HostMemory, NodeFacts, Options,
        Phase, REASON_ADOPTION_RETRY, REASON_HANDED_OVER, REASON_HANDOVER_REJECTED, REBOOT_ANNOTATION,
        REBOOT_VALUE, STALE_KEY, Step, SyncFacts,
    },
    plan::{Action, Blocked, Current, ISCSI_BOOT_CAPABILITY},
};
use crate::ironic::{self, IronicClient, PatchOp, retry_locked};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
};
use serde_json::{Value, json};
use std::future::Future;

/// `metal3.io/v1alpha1` `baremetalhosts`.
pub fn host_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("metal3.io", "v1alpha1", "BareMetalHost"),
        "baremetalhosts",
    )
}

/// Writes to BareMetalHosts: a JSON merge patch with field manager [`FIELD_MANAGER`].
///
/// An error that is [`Error::HostRejected`] means the API server (or BMO's webhook) refused
/// the patch itself; it is reported, not retried in this generation.
pub trait HostWriter: Send + Sync {
    /// Applies `merge_patch` (RFC 7386) to host `namespace/name`.
    fn patch_host(
        &self,
        namespace: &str,
        name: &str,
        merge_patch: &Value,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

/// [`HostWriter`] through the Kubernetes API.
#[derive(Clone)]
pub struct KubeHostWriter {
    client: Client,
}

impl KubeHostWriter {
    /// Writes through `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

impl HostWriter for KubeHostWriter {
    async fn patch_host(&self, namespace: &str, name: &str, merge_patch: &Value) -> Result<(), Error> {
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &host_resource());
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        match api.patch(name, &params, &Patch::Merge(merge_patch)).await {
            Ok(_) => Ok(()),
            // 4xx other than 409/429: the object or a webhook refuses it; retrying the same
            // patch soon cannot help.
            Err(kube::Error::Api(status))
                if (400..500).contains(&status.code) && !matches!(status.code, 409 | 429) =>
            {
                Err(Error::HostRejected {
                    namespace: namespace.into(),
                    name: name.into(),
                    message: status.message,
                })
            }
            Err(e) => Err(Error::Kube(format!(
                "patch BareMetalHost {namespace}/{name}: {e}"
            ))),
        }
    }
}

/// The merge patch of the hand-over: `externallyProvisioned`, the generation we handed
/// over and, when the node is powered on, BMO's reboot annotation.
pub fn handover_patch(generation: Option<i64>, reboot: bool) -> Value {
    let mut annotations = serde_json::Map::new();
    if let Some(g) = generation {
        annotations.insert(HANDED_OVER_ANNOTATION.into(), json!(g.to_string()));
    }
    if reboot {
        annotations.insert(REBOOT_ANNOTATION.into(), json!(REBOOT_VALUE));
    }
    let mut patch = json!({"spec": {"externallyProvisioned": true}});
    if !annotations.is_empty() {
        patch["metadata"] = json!({ "annotations": annotations });
    }
    patch
}

/// What one pass did and saw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Ironic configuration: node UUID, writes made (or, in dry-run, planned), waits, skip.
    pub outcome: Outcome,
    /// Handshake writes made (in dry-run: planned), described; never a secret.
    pub steps: Vec<String>,
    /// Events to record on the host, in order.
    pub events: Vec<HostEvent>,
    /// The handshake phase (`None`: skipped or no `bootVolume`).
    pub phase: Option<Phase>,
}

impl Report {
    /// Every change of the pass, configuration first.
    pub fn changes(&self) -> Vec<String> {
        self.outcome.changes.iter().chain(&self.steps).cloned().collect()
    }
}

/// Lookup helpers over the host JSON.
pub(super) fn host_facts(raw: &Value, memory: &HostMemory) -> HostFacts {
    let spec = |k: &str| raw.pointer(&format!("/spec/{k}")).filter(|v| !v.is_null());
    let annotation = |k: &str| {
        raw.pointer("/metadata/annotations")
            .and_then(|a| a.get(k))
            .and_then(Value::as_str)
    };
    let generation = raw.pointer("/metadata/generation").and_then(Value::as_i64);
    let recorded = annotation(HANDED_OVER_ANNOTATION).and_then(|g| g.parse::<i64>().ok());
    HostFacts {
        generation,
        provisioning_state: raw
            .pointer("/status/provisioning/state")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        externally_provisioned: spec("externallyProvisioned").and_then(Value::as_bool) == Some(true),
        has_image: spec("image").is_some(),
        has_custom_deploy: spec("customDeploy").is_some(),
        online: spec("online").and_then(Value::as_bool) == Some(true),
        opted_out: annotation(HANDOFF_ANNOTATION).is_some_and(|v| v.eq_ignore_ascii_case("false")),
        // Handed over (or refused) by us in this generation: not again until the host
        // changes, even while the watch still delivers the object from before our patch.
        handed_over_generation: if generation.is_some()
            && (memory.handed_over_generation == generation || memory.rejected_generation == generation)
        {
            generation
        } else {
            recorded
        },
        adopt_retry: annotation(ADOPT_RETRY_ANNOTATION).map(str::to_owned),
        adoption_failure_recorded: raw.pointer("/status/errorType").and_then(Value::as_str)
            == Some(handshake::ADOPTION_ERROR_TYPE),
        previous_phase: memory.phase,
    }
}

fn node_facts(node: &ironic::Node) -> NodeFacts {
    NodeFacts {
        uuid: node.uuid.clone(),
        provision_state: node.state().to_owned(),
        power_state: node.power_state.clone(),
        locked: node.reservation.is_some(),
        boot_from_volume: node.boot_from_volume().map(str::to_owned),
        provision_updated_at: node.provision_updated_at.clone(),
        last_error: node.last_error.clone(),
        boot_device_recorded: node.extra.contains_key(BOOT_DEVICE_KEY),
        stale_recorded: node.extra.contains_key(STALE_KEY),
    }
}

/// Sets the persistent PXE boot device and records it in the node's `extra`.
pub async fn set_boot_device(client: &IronicClient, uuid: &str) -> Result<(), Error> {
    retry_locked(|| client.set_boot_device(uuid, "pxe", true))
        .await
        .map_err(|e| Error::ironic("set boot device pxe", e))?;
    record_extra(client, uuid, BOOT_DEVICE_KEY, json!("pxe")).await
}

/// Adds `key` to the node's `extra`.
pub async fn record_extra(client: &IronicClient, uuid: &str, key: &str, value: Value) -> Result<(), Error> {
    let ops = [PatchOp::Add {
        path: format!("/extra/{key}"),
        value,
    }];
    retry_locked(|| client.patch_node(uuid, &ops))
        .await
        .map(drop)
        .map_err(|e| Error::ironic(format!("record {key} in node extra"), e))
}

/// One full pass for one host: configure its Ironic node from `spec.bootVolume` (with the
/// CHAP credentials from `secret`), then run the handshake's steps, writing the host through
/// `writer`. Errors of the configuration (node not found, Ironic refusing) are returned;
/// a refused host patch becomes a Warning Event in the report.
///
/// `options.memory` carries what a host's previous passes learnt: keep the same
/// [`Options`] (or clones of it) across passes.
pub async fn host_pass(
    ironic: &IronicClient,
    writer: &impl HostWriter,
    host: &Value,
    secret: Option<&Secret>,
    options: &Options,
) -> Result<Report, Error> {
    host_pass_from(ironic, writer, host, secret, None, options).await
}

/// [`host_pass`] starting from `current`, the node and its volume records as a fresh fleet
/// listing showed them (`None`: read them now), which saves the pass its three reads.
pub async fn host_pass_from(
    ironic: &IronicClient,
    writer: &impl HostWriter,
    host: &Value,
    secret: Option<&Secret>,
    current: Option<Current>,
    options: &Options,
) -> Result<Report, Error> {
    let spec = HostSpec::from_value(host)?;
    let key = format!("{}/{}", spec.namespace, spec.name);
    let unmanaged = spec.skip.is_some() || spec.boot_volume.is_none();
    let desired = if unmanaged { None } else { spec.desired(secret)? };
    let fold = (!options.dry_run).then_some(BOOT_DEVICE_KEY);
    let configured = match current.filter(|_| spec.skip.is_none()) {
        // The boot device rides on the configuration's node PATCH when it can (in dry-run
        // the handshake reports it as a step of its own).
        Some(current) => apply::apply_to(ironic, desired.as_ref(), current, options.dry_run, fold).await?,
        None => apply::apply_detailed(ironic, &spec, desired.as_ref(), options.dry_run, fold).await?,
    };
    if unmanaged {
        options.memory.forget(&key);
        return Ok(Report {
            outcome: configured.outcome,
            ..Default::default()
        });
    }
    let apply::Applied {
        mut outcome,
        before,
        actions,
        after,
    } = configured;
    let Some(before) = before else {
        return Ok(Report {
            outcome,
            ..Default::default()
        });
    };
    // The node after the writes (its lock, state and power may have moved): the last
    // write's answer when that was a node PATCH, else read again.
    let node = if outcome.changes.is_empty() || options.dry_run {
        before.node.clone()
    } else if let Some(after) = after {
        after
    } else {
        ironic
            .get_node(&outcome.node_uuid)
            .await
            .map_err(|e| Error::ironic(format!("get node {}", outcome.node_uuid), e))?
    };
    let target_deleted = |uuid: &str| {
        actions
            .iter()
            .any(|a| matches!(a, Action::DeleteTarget { uuid: u, .. } if u == uuid))
    };
    let boot_target = before
        .targets
        .iter()
        .find(|t| t.boot_index == 0 && !target_deleted(&t.uuid))
        .map(|t| t.uuid.clone());
    let creates_target = actions.iter().any(|a| matches!(a, Action::CreateTarget(_)));
    let has_capability =
        crate::reconcile::plan::with_capability(node.capabilities(), ISCSI_BOOT_CAPABILITY, Some("True"))
            == node.capabilities();
    let waits_for_power = outcome
        .blocked
        .iter()
        .any(|b| matches!(b, Blocked::WaitingForPowerOff { .. }));
    let volume_changed = waits_for_power
        || actions.iter().any(|a| {
            matches!(
                a,
                Action::PatchTarget { .. }
                    | Action::PatchConnector { .. }
                    | Action::CreateConnector(_)
                    | Action::DeleteConnector { .. }
                    | Action::DeleteTarget { .. }
                    | Action::CreateTarget(_)
            )
        });
    // Adoption needs only the boot target and the capability: a storage interface Ironic
    // refuses to change after a failed adoption, or on a node already booting from our
    // target, is not worth a warning on every pass.
    let booting = node.state() == "active"
        && boot_target.is_some()
        && node.boot_from_volume() == boot_target.as_deref();
    if node.state() == "adopt failed" || booting {
        outcome
            .blocked
            .retain(|b| !matches!(b, Blocked::InterfaceChangeNotAllowed { .. }));
    }
    let applied = !options.dry_run;
    let sync = SyncFacts {
        in_sync: outcome.blocked.is_empty() && (applied || outcome.changes.is_empty()),
        adoptable: (boot_target.is_some() || (creates_target && applied))
            && has_capability
            && !waits_for_power,
        boot_target,
        volume_changed: volume_changed && (applied || waits_for_power),
    };
    let memory = options.memory.get(&key);
    let facts = host_facts(host, &memory);
    let nf = node_facts(&node);
    let decision = handshake::decide(&facts, &nf, &sync, options);
    let mut report = Report {
        outcome,
        phase: decision.phase,
        ..Default::default()
    };
    run_steps(ironic, writer, &spec, &nf, decision, options, &mut report).await?;
    options.memory.update(&key, |m| m.phase = report.phase);
    Ok(report)
}

async fn run_steps(
    ironic: &IronicClient,
    writer: &impl HostWriter,
    spec: &HostSpec,
    node: &NodeFacts,
    decision: Decision,
    options: &Options,
    report: &mut Report,
) -> Result<(), Error> {
    let Decision {
        steps, would, events, ..
    } = decision;
    report.steps.extend(would.iter().map(ToString::to_string));
    let mut extra_events = Vec::new();
    let key = format!("{}/{}", spec.namespace, spec.name);
    for step in steps {
        let description = step.to_string();
        match &step {
            Step::SetBootDevice => set_boot_device(ironic, &node.uuid).await?,
            Step::RecordStale => record_extra(ironic, &node.uuid, STALE_KEY, json!(true)).await?,
            Step::Manage => retry_locked(|| ironic.set_provision_state(&node.uuid, "manage"))
                .await
                .map_err(|e| Error::ironic("manage node", e))?,
            Step::HandOver { generation, reboot } => {
                let patch = handover_patch(*generation, *reboot);
                match writer.patch_host(&spec.namespace, &spec.name, &patch).await {
                    Ok(()) => {
                        options
                            .memory
                            .update(&key, |m| m.handed_over_generation = *generation);
                        report.phase = Some(Phase::HandedOver);
                        extra_events.push(HostEvent {
                            kind: EventKind::Normal,
                            reason: REASON_HANDED_OVER,
                            note: format!(
                                "set spec.externallyProvisioned: baremetal-operator adopts Ironic node {} and it boots from its volume{}",
                                node.uuid,
                                if *reboot {
                                    "; the node is powered on, so a reboot was requested (reboot.metal3.io)"
                                } else {
                                    ""
                                }
                            ),
                        });
                    }
                    Err(Error::HostRejected { message, .. }) => {
                        options
                            .memory
                            .update(&key, |m| m.rejected_generation = *generation);
                        report.phase = Some(Phase::Waiting);
                        extra_events.push(HostEvent {
                            kind: EventKind::Warning,
                            reason: REASON_HANDOVER_REJECTED,
                            note: format!(
                                "setting spec.externallyProvisioned was refused: {message}; not retried until the host changes \
                                 (baremetal-operator v0.13.0 or later allows it in state available; with older versions \
                                 create the host with externallyProvisioned: true)"
                            ),
                        });
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            Step::RequestAdoptionRetry { token } => {
                let patch = json!({"metadata": {"annotations": {ADOPT_RETRY_ANNOTATION: token}}});
                writer.patch_host(&spec.namespace, &spec.name, &patch).await?;
                extra_events.push(HostEvent {
                    kind: EventKind::Normal,
                    reason: REASON_ADOPTION_RETRY,
                    note: format!(
                        "Ironic node {} failed adoption before it was configured; it is configured now, \
                         so baremetal-operator is asked to retry at once",
                        node.uuid
                    ),
                });
            }
        }
        report.steps.push(description);
    }
    report.events.extend(events);
    report.events.extend(extra_events);
    Ok(())
}
