//! The pure diff: `(desired bootVolume, current Ironic state) -> actions`.
//!
//! No I/O happens here, so every reconciler rule (docs/architecture.md) and every Ironic state rule
//! (which node states allow which change) is unit-tested below, including the idempotence proof: applying a
//! plan to a simulated node and planning again yields nothing.
//!
//! Ownership: what we create carries a marker in `extra` ([`MANAGED_KEY`]); the node gets one
//! too, so a host without `bootVolume` costs a single read, and removal only undoes our own
//! work. Ironic masks `auth_password` on every read, so the target's `extra` also records a
//! salted SHA-256 digest of the CHAP credentials ([`CREDENTIALS_KEY`]): equal digest means the
//! password in Ironic is current, a rotated Secret changes the digest and re-sends it.

use crate::{
    api::{AUTH_CHAP, BootVolume, Sensitive, TARGET_TYPE_ISCSI},
    ironic::{Connector, NewConnector, NewTarget, Node, PatchOp, Target},
};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::fmt;

/// The prefix of every key this reconciler writes in an Ironic object's `extra` (a
/// listing keeps only these of a node's `extra`).
pub const OUR_EXTRA_PREFIX: &str = "bootvolume_";
/// `extra` key marking nodes, connectors and targets this reconciler configured.
pub const MANAGED_KEY: &str = "bootvolume_managed";
/// Target `extra` key holding the digest of the CHAP credentials last sent.
pub const CREDENTIALS_KEY: &str = "bootvolume_credentials";
/// The node capability boot from volume needs (Ironic's iPXE boot interface reads it).
pub const ISCSI_BOOT_CAPABILITY: &str = "iscsi_boot";
/// The storage interface of a node without a boot volume.
pub const NOOP_STORAGE: &str = "noop";
/// The connector type of an iSCSI initiator.
pub const CONNECTOR_IQN: &str = "iqn";
/// Ironic's `auth_password` key, masked on read.
const PASSWORD_KEY: &str = "auth_password";

/// CHAP credentials for the target (from the Secret, or inline).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// CHAP user name.
    pub username: String,
    /// CHAP secret; never printed.
    pub password: Sensitive,
}

/// What the node should look like, derived from `spec.bootVolume` (and the credentials).
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    /// `volumeDriver`: the node's storage interface.
    pub storage_interface: String,
    /// `connectorId`: the single iqn connector.
    pub connector_id: String,
    /// The boot_index 0 target.
    pub volume_id: String,
    /// Target properties without the password; `None` for `cinder`, whose properties
    /// Ironic fills from Cinder at deploy time and we must not fight over.
    pub properties: Option<Map<String, Value>>,
    /// CHAP credentials (external + CHAP only).
    pub credentials: Option<Credentials>,
}

/// Why `spec.bootVolume` cannot be turned into a [`Desired`] state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A field the reconciler needs is absent (the webhook should have rejected the host).
    #[error("spec.bootVolume.{0} is required")]
    Missing(&'static str),
    /// A value the reconciler cannot use.
    #[error("spec.bootVolume.{field}: unsupported value {value:?}")]
    Unsupported {
        /// The field.
        field: &'static str,
        /// Its value (never a secret field).
        value: String,
    },
    /// CHAP is requested but no credentials were resolved.
    #[error("spec.bootVolume: authMethod CHAP needs credentials (iscsiCredentialsName)")]
    MissingCredentials,
}

/// Where the CHAP credentials of a `bootVolume` come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialSource<'a> {
    /// No credentials needed (`authMethod: None`, or `cinder`).
    None,
    /// Inline `authUser`/`authPasswd` (only admitted with `--allow-inline-chap`).
    Inline(Credentials),
    /// A Secret in the host's namespace, with keys `username` and `password`.
    Secret(&'a str),
}

/// Tells the front ends which credentials to resolve before planning.
pub fn credential_source(bv: &BootVolume) -> Result<CredentialSource<'_>, SpecError> {
    if bv.volume_driver.as_deref() != Some("external") || bv.effective_auth_method() != AUTH_CHAP {
        return Ok(CredentialSource::None);
    }
    if let Some(name) = bv.credentials_secret_name() {
        return Ok(CredentialSource::Secret(name));
    }
    let target = bv.iscsi_target.as_ref();
    match (
        target.and_then(|t| t.auth_user.clone()),
        target.and_then(|t| t.auth_passwd.clone()),
    ) {
        (Some(username), Some(password)) => Ok(CredentialSource::Inline(Credentials { username, password })),
        _ => Err(SpecError::MissingCredentials),
    }
}

impl Desired {
    /// The desired node state for a host's `bootVolume`, given its resolved credentials.
    pub fn from_boot_volume(bv: &BootVolume, credentials: Option<Credentials>) -> Result<Self, SpecError> {
        let driver = bv
            .volume_driver
            .clone()
            .ok_or(SpecError::Missing("volumeDriver"))?;
        let connector_id = bv.connector_id.clone().ok_or(SpecError::Missing("connectorId"))?;
        let volume_id = bv.volume_id.clone().ok_or(SpecError::Missing("volumeId"))?;
        if let Some(t) = bv.target_type.as_deref().filter(|t| *t != TARGET_TYPE_ISCSI) {
            return Err(SpecError::Unsupported {
                field: "targetType",
                value: t.to_owned(),
            });
        }
        let (properties, credentials) = match driver.as_str() {
            "cinder" => (None, None),
            "external" => {
                let target = bv
                    .iscsi_target
                    .as_ref()
                    .ok_or(SpecError::Missing("iscsiTarget"))?;
                let iqn = target.iqn.clone().ok_or(SpecError::Missing("iscsiTarget.iqn"))?;
                let portal = bv
                    .portal_with_port()
                    .ok_or(SpecError::Missing("iscsiTarget.portal"))?;
                let method = bv.effective_auth_method();
                let mut props = Map::new();
                props.insert("target_iqn".into(), json!(iqn));
                props.insert("target_portal".into(), json!(portal));
                // An integer: iPXE renders the LUN with %x (a string breaks the deploy).
                props.insert("target_lun".into(), json!(bv.effective_lun()));
                props.insert("auth_method".into(), json!(method));
                let credentials = if method == AUTH_CHAP {
                    let c = credentials.ok_or(SpecError::MissingCredentials)?;
                    props.insert("auth_username".into(), json!(c.username));
                    Some(c)
                } else {
                    None
                };
                (Some(props), credentials)
            }
            other => {
                return Err(SpecError::Unsupported {
                    field: "volumeDriver",
                    value: other.to_owned(),
                });
            }
        };
        Ok(Self {
            storage_interface: driver,
            connector_id,
            volume_id,
            properties,
            credentials,
        })
    }

    /// The digest recorded in the target's `extra`, salted with the node UUID so equal
    /// passwords on two nodes do not look equal to someone reading Ironic.
    fn credentials_digest(&self, node_uuid: &str) -> Option<String> {
        let c = self.credentials.as_ref()?;
        let mut h = Sha256::new();
        for part in ["bootvolume-chap-v1", node_uuid, &c.username, c.password.expose()] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Some(format!("sha256:{hex}"))
    }

    /// Target properties as sent to Ironic (with the password).
    fn properties_with_password(&self) -> Option<Map<String, Value>> {
        let mut props = self.properties.clone()?;
        if let Some(c) = &self.credentials {
            props.insert(PASSWORD_KEY.into(), json!(c.password.expose()));
        }
        Some(props)
    }
}

/// What Ironic holds for the node now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Current {
    /// The node.
    pub node: Node,
    /// All its volume connectors.
    pub connectors: Vec<Connector>,
    /// All its volume targets.
    pub targets: Vec<Target>,
}

/// One Ironic write. `Display` describes it for humans and never shows a password.
#[derive(Clone, PartialEq)]
pub enum Action {
    /// PATCH the node (storage interface, capabilities, ownership marker).
    PatchNode {
        /// Node UUID.
        uuid: String,
        /// The operations.
        ops: Vec<PatchOp>,
        /// Human description of each change.
        changes: Vec<String>,
    },
    /// POST a connector.
    CreateConnector(NewConnector),
    /// PATCH a connector's `connector_id`.
    PatchConnector {
        /// Connector UUID.
        uuid: String,
        /// The operations.
        ops: Vec<PatchOp>,
        /// Old and new initiator names.
        from: String,
        /// New initiator name.
        to: String,
    },
    /// DELETE a connector.
    DeleteConnector {
        /// Connector UUID.
        uuid: String,
        /// Its initiator name (for the description).
        connector_id: String,
    },
    /// POST a target.
    CreateTarget(NewTarget),
    /// PATCH a target.
    PatchTarget {
        /// Target UUID.
        uuid: String,
        /// The operations (may contain the password).
        ops: Vec<PatchOp>,
        /// Human description of each change.
        changes: Vec<String>,
    },
    /// PUT the persistent PXE boot device (see [`fold_boot_device`]).
    SetBootDevice {
        /// Node UUID.
        uuid: String,
    },
    /// DELETE a target.
    DeleteTarget {
        /// Target UUID.
        uuid: String,
        /// Its volume id (for the description).
        volume_id: String,
        /// Its boot index (for the description).
        boot_index: i64,
    },
}

impl Action {
    /// Whether Ironic requires the node powered off (or in enroll/manageable, for deletes).
    pub fn is_state_restricted(&self) -> bool {
        !matches!(
            self,
            Self::PatchNode { .. }
                | Self::CreateConnector(_)
                | Self::CreateTarget(_)
                | Self::SetBootDevice { .. }
        )
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PatchNode { changes, .. } => write!(f, "update node: {}", changes.join(", ")),
            Self::CreateConnector(c) => write!(f, "create volume connector {} {}", c.kind, c.connector_id),
            Self::PatchConnector { from, to, .. } => write!(f, "update volume connector {from} -> {to}"),
            Self::DeleteConnector { connector_id, .. } => write!(f, "delete volume connector {connector_id}"),
            Self::CreateTarget(t) => {
                write!(
                    f,
                    "create volume target boot_index {} {} {}",
                    t.boot_index, t.volume_type, t.volume_id
                )?;
                describe_properties(f, &t.properties)
            }
            Self::PatchTarget { changes, .. } => write!(f, "update volume target: {}", changes.join(", ")),
            Self::SetBootDevice { .. } => f.write_str("set persistent boot device pxe"),
            Self::DeleteTarget {
                volume_id,
                boot_index,
                ..
            } => {
                write!(f, "delete volume target boot_index {boot_index} {volume_id}")
            }
        }
    }
}

impl fmt::Debug for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let paths = |ops: &[PatchOp]| ops.iter().map(PatchOp::path).collect::<Vec<_>>().join(" ");
        match self {
            Self::PatchNode { ops, .. }
            | Self::PatchConnector { ops, .. }
            | Self::PatchTarget { ops, .. } => {
                write!(f, "{self} [{}]", paths(ops))
            }
            _ => write!(f, "{self}"),
        }
    }
}

fn describe_properties(f: &mut fmt::Formatter<'_>, props: &Map<String, Value>) -> fmt::Result {
    let shown: Vec<String> = props
        .iter()
        .map(|(k, v)| {
            if k == PASSWORD_KEY {
                format!("{k}=<redacted>")
            } else {
                format!("{k}={v}")
            }
        })
        .collect();
    if shown.is_empty() {
        Ok(())
    } else {
        write!(f, " ({})", shown.join(" "))
    }
}

/// A change Ironic will not accept in the node's current state: report it, retry later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// Connector/target updates (and deletes outside enroll/manageable) need power off.
    WaitingForPowerOff {
        /// What is waiting.
        what: String,
        /// The node's power state now.
        power_state: String,
    },
    /// The storage interface can change only in enroll/manageable/available/inspect states
    /// or in maintenance.
    InterfaceChangeNotAllowed {
        /// Current interface.
        from: String,
        /// Wanted interface.
        to: String,
        /// The node's provision state.
        provision_state: String,
    },
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WaitingForPowerOff { what, power_state } => {
                write!(
                    f,
                    "waiting for the node to be powered off to {what} (power state: {power_state})"
                )
            }
            Self::InterfaceChangeNotAllowed {
                from,
                to,
                provision_state,
            } => write!(
                f,
                "cannot change storage_interface {from} -> {to} while the node is {provision_state}; \
                 it needs enroll, manageable, available or maintenance mode"
            ),
        }
    }
}

/// The result of [`plan`]: writes to make now, and changes that must wait.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Writes, in execution order: with `bootVolume`, target, connector, node, storage
    /// interface; on removal, deletes, then the node. Deletes before creates.
    pub actions: Vec<Action>,
    /// Changes Ironic would refuse now.
    pub blocked: Vec<Blocked>,
}

impl Plan {
    /// True when the node already matches and nothing waits.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty() && self.blocked.is_empty()
    }
}

/// What Ironic allows on the node now (by provision state and power state).
struct Permissions {
    update: bool,
    delete: bool,
    interface_change: bool,
    power_state: String,
    provision_state: String,
}

impl Permissions {
    fn of(node: &Node) -> Self {
        let power_off = node.power_state.as_deref() == Some("power off");
        let state = node.provision_state.as_deref().unwrap_or("");
        Self {
            update: power_off,
            delete: power_off || matches!(state, "enroll" | "manageable" | "adopt failed"),
            interface_change: node.maintenance
                || matches!(
                    state,
                    "enroll" | "inspecting" | "inspect wait" | "manageable" | "available"
                ),
            power_state: node.power_state.clone().unwrap_or_else(|| "None".into()),
            provision_state: state.to_owned(),
        }
    }

    fn wait(&self, what: impl Into<String>) -> Blocked {
        Blocked::WaitingForPowerOff {
            what: what.into(),
            power_state: self.power_state.clone(),
        }
    }
}

fn is_managed(extra: &Map<String, Value>) -> bool {
    extra.get(MANAGED_KEY).is_some_and(|v| v == &Value::Bool(true))
}

fn managed_extra() -> Map<String, Value> {
    Map::from_iter([(MANAGED_KEY.to_owned(), Value::Bool(true))])
}

/// Plans the writes that bring `current` to `desired` (`None`: `bootVolume` removed).
pub fn plan(desired: Option<&Desired>, current: &Current) -> Plan {
    let perms = Permissions::of(&current.node);
    let mut out = Plan::default();
    match desired {
        // The boot target first: creating volume objects needs no node lock, and a node
        // with the target and `iscsi_boot` can already be adopted (baremetal-operator may
        // adopt it any moment); the storage interface comes last (see `plan_node`).
        Some(d) => {
            plan_targets(d, current, &perms, &mut out);
            plan_connectors(d, current, &perms, &mut out);
            plan_node(Some(d), current, &perms, &mut out);
        }
        None => plan_removal(current, &perms, &mut out),
    }
    out
}

/// States before adoption in which Ironic accepts a boot device (its fake and real drivers;
/// `active` is left alone).
pub fn boot_device_settable(provision_state: &str) -> bool {
    matches!(
        provision_state,
        "enroll" | "manageable" | "available" | "adopt failed"
    )
}

/// Folds the adoption handshake's first step into a configuring pass: the persistent PXE
/// boot device is PUT right before the pass's last node PATCH, and that PATCH records it
/// under `key` in `extra`, which saves the handshake a PATCH of its own (Ironic's costliest
/// write). Only with `bootVolume`, nothing blocked, the node unlocked, in a state that
/// accepts a boot device and not recorded yet. If the PATCH then fails, the boot device is
/// set again by a later pass: harmless. Returns whether it folded.
pub fn fold_boot_device(plan: &mut Plan, current: &Current, key: &str) -> bool {
    let node = &current.node;
    let settable = boot_device_settable(node.provision_state.as_deref().unwrap_or(""));
    if !settable || node.extra.contains_key(key) || node.reservation.is_some() || !plan.blocked.is_empty() {
        return false;
    }
    let Some(at) = plan
        .actions
        .iter()
        .rposition(|a| matches!(a, Action::PatchNode { .. }))
    else {
        return false;
    };
    if let Action::PatchNode { ops, changes, .. } = &mut plan.actions[at] {
        ops.push(PatchOp::Add {
            path: format!("/extra/{key}"),
            value: json!("pxe"),
        });
        changes.push("record boot device pxe".into());
    }
    plan.actions.insert(
        at,
        Action::SetBootDevice {
            uuid: node.uuid.clone(),
        },
    );
    true
}

/// Node: storage interface, `iscsi_boot` capability, ownership marker.
///
/// The storage interface goes in a PATCH of its own when the node could be adopted before
/// that PATCH lands (`manageable`, or any state reached from it): Ironic refuses an
/// interface change once adoption starts and would then refuse a combined PATCH whole,
/// losing the capability adoption needs. With `bootVolume` it is the last write; on
/// removal the first node write (the marker goes last). From `enroll` or `available`,
/// adoption is two transitions away, so with `bootVolume` one PATCH carries all three
/// (one write of Ironic's costliest kind saved per host).
fn plan_node(desired: Option<&Desired>, current: &Current, perms: &Permissions, out: &mut Plan) {
    let node = &current.node;
    let mut ops = Vec::new();
    let mut changes = Vec::new();
    let mut interface_patch = None;
    let want_interface = desired.map_or(NOOP_STORAGE, |d| d.storage_interface.as_str());
    let have_interface = node.storage_interface.as_deref().unwrap_or(NOOP_STORAGE);
    if want_interface != have_interface {
        if perms.interface_change {
            interface_patch = Some(Action::PatchNode {
                uuid: node.uuid.clone(),
                ops: vec![PatchOp::Replace {
                    path: "/storage_interface".into(),
                    value: json!(want_interface),
                }],
                changes: vec![format!("storage_interface {have_interface} -> {want_interface}")],
            });
        } else {
            out.blocked.push(Blocked::InterfaceChangeNotAllowed {
                from: have_interface.into(),
                to: want_interface.into(),
                provision_state: perms.provision_state.clone(),
            });
        }
    }
    let caps = node.capabilities();
    let new_caps = with_capability(caps, ISCSI_BOOT_CAPABILITY, desired.map(|_| "True"));
    if new_caps != caps {
        let path = "/properties/capabilities".to_owned();
        ops.push(
            match (node.properties.contains_key("capabilities"), new_caps.is_empty()) {
                (true, true) => PatchOp::Remove { path },
                (true, false) => PatchOp::Replace {
                    path,
                    value: json!(new_caps),
                },
                (false, _) => PatchOp::Add {
                    path,
                    value: json!(new_caps),
                },
            },
        );
        changes.push(format!("capabilities {caps:?} -> {new_caps:?}"));
    }
    let marked = is_managed(&node.extra);
    let path = format!("/extra/{MANAGED_KEY}");
    match desired {
        Some(_) if !marked => {
            ops.push(PatchOp::Add {
                path,
                value: Value::Bool(true),
            });
            changes.push("mark as managed by bootvolume".into());
        }
        // The marker goes last, once nothing is left to undo, so an interrupted removal resumes.
        None if marked && out.blocked.is_empty() => {
            ops.push(PatchOp::Remove { path });
            changes.push("remove bootvolume marker".into());
        }
        _ => {}
    }
    let far_from_adoption =
        !node.maintenance && matches!(perms.provision_state.as_str(), "enroll" | "available");
    if desired.is_some()
        && far_from_adoption
        && !ops.is_empty()
        && let Some(Action::PatchNode {
            ops: interface_ops,
            changes: interface_changes,
            ..
        }) = interface_patch.take()
    {
        ops.extend(interface_ops);
        changes.extend(interface_changes);
    }
    let other = (!ops.is_empty()).then(|| Action::PatchNode {
        uuid: node.uuid.clone(),
        ops,
        changes,
    });
    if desired.is_some() {
        out.actions.extend(other.into_iter().chain(interface_patch));
    } else {
        out.actions.extend(interface_patch.into_iter().chain(other));
    }
}

/// Exactly one iqn connector with the desired initiator name.
fn plan_connectors(d: &Desired, current: &Current, perms: &Permissions, out: &mut Plan) {
    let iqns: Vec<&Connector> = current
        .connectors
        .iter()
        .filter(|c| c.kind == CONNECTOR_IQN)
        .collect();
    let keep = iqns.iter().position(|c| c.connector_id == d.connector_id);
    let new = || {
        Action::CreateConnector(NewConnector {
            node_uuid: current.node.uuid.clone(),
            kind: CONNECTOR_IQN.into(),
            connector_id: d.connector_id.clone(),
            extra: managed_extra(),
        })
    };
    let delete = |c: &Connector| Action::DeleteConnector {
        uuid: c.uuid.clone(),
        connector_id: c.connector_id.clone(),
    };
    match keep {
        Some(i) => {
            for c in iqns.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, c)| c) {
                delete_or_wait(
                    perms,
                    out,
                    delete(c),
                    format!("delete extra connector {}", c.connector_id),
                );
            }
        }
        None if iqns.is_empty() => out.actions.push(new()),
        None if perms.update => {
            let first = iqns[0];
            out.actions.push(Action::PatchConnector {
                uuid: first.uuid.clone(),
                ops: vec![
                    PatchOp::Replace {
                        path: "/connector_id".into(),
                        value: json!(d.connector_id),
                    },
                    PatchOp::Add {
                        path: format!("/extra/{MANAGED_KEY}"),
                        value: Value::Bool(true),
                    },
                ],
                from: first.connector_id.clone(),
                to: d.connector_id.clone(),
            });
            for c in &iqns[1..] {
                out.actions.push(delete(c));
            }
        }
        // Replace instead: delete is allowed in enroll/manageable whatever the power state.
        None if perms.delete => {
            out.actions.extend(iqns.iter().map(|c| delete(c)));
            out.actions.push(new());
        }
        None => out
            .blocked
            .push(perms.wait(format!("change the connector to {}", d.connector_id))),
    }
}

/// Exactly one target: boot_index 0, matching volume, properties and credentials.
fn plan_targets(d: &Desired, current: &Current, perms: &Permissions, out: &mut Plan) {
    let node_uuid = &current.node.uuid;
    let digest = d.credentials_digest(node_uuid);
    for t in current.targets.iter().filter(|t| t.boot_index != 0) {
        delete_or_wait(
            perms,
            out,
            delete_target(t),
            format!("delete extra target boot_index {}", t.boot_index),
        );
    }
    let create = || {
        let mut extra = managed_extra();
        if let Some(digest) = &digest {
            extra.insert(CREDENTIALS_KEY.into(), json!(digest));
        }
        Action::CreateTarget(NewTarget {
            node_uuid: node_uuid.clone(),
            volume_type: TARGET_TYPE_ISCSI.into(),
            boot_index: 0,
            volume_id: d.volume_id.clone(),
            properties: d.properties_with_password().unwrap_or_default(),
            extra,
        })
    };
    let Some(t) = current.targets.iter().find(|t| t.boot_index == 0) else {
        out.actions.push(create());
        return;
    };
    let (ops, changes) = target_diff(d, t, digest.as_deref());
    if ops.is_empty() {
        return;
    }
    if perms.update {
        out.actions.push(Action::PatchTarget {
            uuid: t.uuid.clone(),
            ops,
            changes,
        });
    } else if perms.delete {
        out.actions.push(delete_target(t));
        out.actions.push(create());
    } else {
        out.blocked
            .push(perms.wait(format!("update the volume target ({})", changes.join(", "))));
    }
}

fn delete_target(t: &Target) -> Action {
    Action::DeleteTarget {
        uuid: t.uuid.clone(),
        volume_id: t.volume_id.clone(),
        boot_index: t.boot_index,
    }
}

fn delete_or_wait(perms: &Permissions, out: &mut Plan, action: Action, what: String) {
    if perms.delete {
        out.actions.push(action)
    } else {
        out.blocked.push(perms.wait(what))
    }
}

/// PATCH operations turning target `t` into the desired one (empty: in sync).
fn target_diff(d: &Desired, t: &Target, digest: Option<&str>) -> (Vec<PatchOp>, Vec<String>) {
    let mut ops = Vec::new();
    let mut changes = Vec::new();
    let mut replace = |field: &str, old: &str, new: &str| {
        if old != new {
            ops.push(PatchOp::Replace {
                path: format!("/{field}"),
                value: json!(new),
            });
            changes.push(format!("{field} {old} -> {new}"));
        }
    };
    replace("volume_type", &t.volume_type, TARGET_TYPE_ISCSI);
    replace("volume_id", &t.volume_id, &d.volume_id);
    if let Some(want) = &d.properties {
        let mut have = t.properties.clone();
        let had_password = have.remove(PASSWORD_KEY).is_some();
        let have_digest = t.extra.get(CREDENTIALS_KEY).and_then(Value::as_str);
        let creds_current = have_digest == digest && had_password == d.credentials.is_some();
        if &have != want || !creds_current {
            let mut what: Vec<String> = want
                .iter()
                .filter(|(k, v)| have.get(k.as_str()) != Some(*v))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            what.extend(
                have.keys()
                    .filter(|k| !want.contains_key(k.as_str()))
                    .map(|k| format!("-{k}")),
            );
            if !creds_current {
                what.push("CHAP credentials".into());
            }
            ops.push(PatchOp::Replace {
                path: "/properties".into(),
                value: Value::Object(d.properties_with_password().unwrap_or_default()),
            });
            changes.push(format!("properties ({})", what.join(" ")));
            let path = format!("/extra/{CREDENTIALS_KEY}");
            match (digest, have_digest) {
                (Some(new), _) => ops.push(PatchOp::Add {
                    path,
                    value: json!(new),
                }),
                (None, Some(_)) => ops.push(PatchOp::Remove { path }),
                (None, None) => {}
            }
        }
    }
    if !ops.is_empty() && !is_managed(&t.extra) {
        ops.push(PatchOp::Add {
            path: format!("/extra/{MANAGED_KEY}"),
            value: Value::Bool(true),
        });
    }
    (ops, changes)
}

/// `bootVolume` removed: undo what we did, only where we did it.
fn plan_removal(current: &Current, perms: &Permissions, out: &mut Plan) {
    let targets: Vec<&Target> = current.targets.iter().filter(|t| is_managed(&t.extra)).collect();
    let connectors: Vec<&Connector> = current
        .connectors
        .iter()
        .filter(|c| is_managed(&c.extra))
        .collect();
    if !is_managed(&current.node.extra) && targets.is_empty() && connectors.is_empty() {
        return;
    }
    for t in targets {
        delete_or_wait(
            perms,
            out,
            delete_target(t),
            format!("delete target {}", t.volume_id),
        );
    }
    for c in connectors {
        let action = Action::DeleteConnector {
            uuid: c.uuid.clone(),
            connector_id: c.connector_id.clone(),
        };
        delete_or_wait(perms, out, action, format!("delete connector {}", c.connector_id));
    }
    // Node changes go after the deletes when executing; Ironic validates nothing here.
    let mut node_plan = Plan {
        actions: Vec::new(),
        blocked: std::mem::take(&mut out.blocked),
    };
    plan_node(None, current, perms, &mut node_plan);
    out.blocked = node_plan.blocked;
    out.actions.extend(node_plan.actions);
}

/// The kind of change a plan's writes make, so reports (Events, logs) can say what happened
/// rather than list writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// `bootVolume` configured or updated (anything beyond the CHAP credentials).
    Applied,
    /// Only the boot target's CHAP credentials are re-sent (a rotated Secret).
    CredentialsRotated,
    /// `bootVolume` removed: our target, connector and node settings undone.
    Removed,
}

/// Classifies `actions` (planned from `desired` and `current`); `None` when there are none.
/// A rotation is a pass whose only writes replace the boot target while its volume, type and
/// every property but the credentials already match.
pub fn classify(desired: Option<&Desired>, current: &Current, actions: &[Action]) -> Option<Change> {
    if actions.is_empty() {
        return None;
    }
    let Some(d) = desired else {
        return Some(Change::Removed);
    };
    let only_boot_target = actions.iter().all(|a| match a {
        Action::PatchTarget { .. } => true,
        Action::DeleteTarget { boot_index, .. } => *boot_index == 0,
        Action::CreateTarget(t) => t.boot_index == 0,
        _ => false,
    });
    let without_credentials = |props: &Map<String, Value>| {
        let mut p = props.clone();
        p.remove(PASSWORD_KEY);
        p.remove("auth_username");
        p
    };
    let same_but_credentials = current
        .targets
        .iter()
        .find(|t| t.boot_index == 0)
        .is_some_and(|t| {
            d.credentials.is_some()
                && is_managed(&t.extra)
                && t.volume_type == TARGET_TYPE_ISCSI
                && t.volume_id == d.volume_id
                && d.properties.as_ref().map(without_credentials) == Some(without_credentials(&t.properties))
        });
    Some(if only_boot_target && same_but_credentials {
        Change::CredentialsRotated
    } else {
        Change::Applied
    })
}

/// Sets (`Some(value)`) or removes (`None`) `key` in Ironic's `k:v,k:v` capabilities string,
/// keeping every other capability and their order. Returns `caps` unchanged (byte for byte)
/// when it already says the same, so an in-sync node gets no write.
pub fn with_capability(caps: &str, key: &str, value: Option<&str>) -> String {
    let parts: Vec<&str> = caps.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
    let is_key = |p: &&str| p.split(':').next().map(str::trim) == Some(key);
    let found: Vec<&str> = parts.iter().copied().filter(is_key).collect();
    let in_sync = match value {
        None => found.is_empty(),
        Some(v) => {
            found.len() == 1
                && found[0]
                    .split_once(':')
                    .is_some_and(|(_, x)| x.trim().eq_ignore_ascii_case(v))
        }
    };
    if in_sync {
        return caps.to_owned();
    }
    let mut kept: Vec<String> = parts
        .iter()
        .filter(|p| !is_key(p))
        .map(|p| (*p).to_owned())
        .collect();
    if let Some(v) = value {
        kept.push(format!("{key}:{v}"));
    }
    kept.join(",")
}

#[cfg(test)]
mod tests;
