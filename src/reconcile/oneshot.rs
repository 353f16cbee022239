//! `bootvolume ironic-apply`: apply the BareMetalHosts in manifest files to Ironic once.
//!
//! No Kubernetes needed: the Secrets a host references are read from the same files
//! (`data` base64 or `stringData`). Every change is printed on stdout, problems on stderr;
//! the exit code tells scripts what happened ([`ExitStatus`]).

use super::{
    Error,
    apply::{self, HostSpec},
    handshake::BOOT_DEVICE_KEY,
    host_api,
};
use crate::ironic::{IronicClient, retry_locked};
use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;
use std::{
    collections::BTreeMap,
    io::Write,
    path::PathBuf,
    time::{Duration, Instant},
};

/// The documents read from the input files.
#[derive(Default)]
pub struct Inputs {
    /// BareMetalHosts, with the file each came from.
    pub hosts: Vec<(String, Value)>,
    /// Secrets by `(namespace, name)`.
    pub secrets: BTreeMap<(String, String), Secret>,
}

/// Reads YAML or JSON files (multi-document, `kind: List` expanded; `-` is stdin).
/// Documents of other kinds are ignored.
pub fn read_inputs(files: &[PathBuf]) -> Result<Inputs, Error> {
    let mut inputs = Inputs::default();
    for path in files {
        let shown = path.display().to_string();
        let text = if shown == "-" {
            std::io::read_to_string(std::io::stdin())
        } else {
            std::fs::read_to_string(path)
        }
        .map_err(|e| Error::Input(format!("{shown}: {e}")))?;
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
            .map_err(|e| Error::Input(format!("{shown}: not YAML/JSON: {e}")))?;
        let mut queue: Vec<Value> = docs;
        while let Some(doc) = queue.pop() {
            match doc.get("kind").and_then(Value::as_str) {
                Some("List") => queue.extend(
                    doc.get("items")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                ),
                Some(crate::api::KIND) => inputs.hosts.push((shown.clone(), doc)),
                Some("Secret") => {
                    let meta = |k: &str| {
                        doc.pointer(&format!("/metadata/{k}"))
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    };
                    let name = meta("name").unwrap_or_default();
                    let namespace = meta("namespace").unwrap_or_else(|| "default".into());
                    // The serde error names the field, never its value.
                    let secret: Secret = serde_json::from_value(doc)
                        .map_err(|e| Error::Input(format!("{shown}: Secret {namespace}/{name}: {e}")))?;
                    inputs.secrets.insert((namespace, name), secret);
                }
                _ => {}
            }
        }
    }
    // `pop` reversed the order; report hosts in file order.
    inputs.hosts.reverse();
    Ok(inputs)
}

/// Exit status of `ironic-apply`, worst host wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// Every node is in sync (possibly after this run's changes).
    InSync = 0,
    /// `--dry-run` found changes to make.
    ChangesPending = 4,
    /// Some change waits for the node to be powered off (or leave `active`).
    Waiting = 3,
    /// A host failed: unknown node, missing Secret or key, Ironic unreachable or refusing.
    Failed = 1,
}

impl ExitStatus {
    fn severity(self) -> u8 {
        match self {
            Self::InSync => 0,
            Self::ChangesPending => 1,
            Self::Waiting => 2,
            Self::Failed => 3,
        }
    }

    /// The worse of two statuses.
    pub fn max(self, other: Self) -> Self {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }

    /// The process exit code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// Applies every host in `inputs`, printing changes to `out` and problems to `err`.
///
/// With `adopt` (a time limit), each configured node is also adopted, the way
/// baremetal-operator would but without it: see [`adopt`].
pub async fn run(
    client: &IronicClient,
    inputs: &Inputs,
    dry_run: bool,
    adopt_within: Option<Duration>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<ExitStatus> {
    let mut status = ExitStatus::InSync;
    if inputs.hosts.is_empty() {
        writeln!(err, "ironic-apply: no BareMetalHost in the input")?;
        return Ok(ExitStatus::Failed);
    }
    for (file, raw) in &inputs.hosts {
        let (label, result) = match HostSpec::from_value(raw) {
            Ok(host) => (
                format!("{file}: BareMetalHost {}/{}", host.namespace, host.name),
                one(client, inputs, &host, dry_run).await,
            ),
            Err(e) => (format!("{file}: BareMetalHost"), Err(e)),
        };
        let host_status = match result {
            Ok(outcome) => {
                let node = if outcome.node_uuid.is_empty() {
                    String::new()
                } else {
                    format!(" node {}", outcome.node_uuid)
                };
                let verb = if dry_run { "would" } else { "did" };
                for change in &outcome.changes {
                    writeln!(out, "{label}:{node}: {verb} {change}")?;
                }
                for blocked in &outcome.blocked {
                    writeln!(err, "{label}:{node}: {blocked}")?;
                }
                if let Some(why) = &outcome.skipped {
                    writeln!(out, "{label}: skipped: {why}")?;
                } else if outcome.in_sync() {
                    writeln!(out, "{label}:{node}: in sync")?;
                }
                if !outcome.blocked.is_empty() && adopt_within.is_none() {
                    ExitStatus::Waiting
                } else if dry_run && !outcome.changes.is_empty() {
                    ExitStatus::ChangesPending
                } else if let (Some(limit), false) = (adopt_within, dry_run || outcome.node_uuid.is_empty()) {
                    match adopt(client, &outcome.node_uuid, limit, &mut |line| {
                        writeln!(out, "{label}: node {}: {line}", outcome.node_uuid)?;
                        out.flush()
                    })
                    .await?
                    {
                        Ok(()) => ExitStatus::InSync,
                        Err(e) => {
                            writeln!(err, "{label}: node {}: adoption: {e}", outcome.node_uuid)?;
                            ExitStatus::Failed
                        }
                    }
                } else {
                    ExitStatus::InSync
                }
            }
            Err(e) => {
                writeln!(err, "{label}: error: {e}")?;
                ExitStatus::Failed
            }
        };
        status = status.max(host_status);
    }
    let calls = client.calls();
    writeln!(
        err,
        "ironic-apply: {} host(s); Ironic calls: {} ({} GET, {} POST, {} PATCH, {} PUT, {} DELETE)",
        inputs.hosts.len(),
        calls.total(),
        calls.get,
        calls.post,
        calls.patch,
        calls.put,
        calls.delete
    )?;
    Ok(status)
}

async fn one(
    client: &IronicClient,
    inputs: &Inputs,
    host: &HostSpec,
    dry_run: bool,
) -> Result<apply::Outcome, Error> {
    if host.skip.is_some() {
        return apply::apply(client, host, None, dry_run).await;
    }
    let secret = match host.secret_name()? {
        Some(name) => inputs.secrets.get(&(host.namespace.clone(), name.to_owned())),
        None => None,
    };
    let desired = host.desired(secret)?;
    apply::apply(client, host, desired.as_ref(), dry_run).await
}

/// Why `ironic-apply --adopt` did not end with the node booting from its volume.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// An Ironic call failed.
    #[error(transparent)]
    Reconcile(#[from] Error),
    /// The node has no boot volume target (no `bootVolume`?).
    #[error("the node has no boot volume target (boot_index 0)")]
    NoBootTarget,
    /// The node is `active` but Ironic does not boot it from our target.
    #[error(
        "the node is active but boot_from_volume is {0:?}, not our boot target: it was adopted or deployed \
         before its target existed; undeploy it (or delete and enroll it again) and re-run"
    )]
    ActiveWithoutBootVolume(Option<String>),
    /// Ironic refused the adoption twice.
    #[error("adoption failed: {0}")]
    AdoptFailed(String),
    /// The limit passed before the node was `active`.
    #[error("timed out after {limit:?}; the node is {state:?}{}", last_error.as_deref().map(|e| format!(" (last error: {e})")).unwrap_or_default())]
    Timeout {
        /// The time limit.
        limit: Duration,
        /// The state the node was left in.
        state: String,
        /// Ironic's `last_error`.
        last_error: Option<String>,
    },
}

/// How often `--adopt` polls the node while Ironic works.
const ADOPT_POLL: Duration = Duration::from_millis(500);

/// Adopts a configured node without baremetal-operator: persistent PXE boot device, `manage`
/// (from `enroll`, or `available`), `adopt` (from `manageable` or `adopt failed`), power on,
/// and wait for `active`. Each step is reported through `say` as it is made. Succeeds only
/// when Ironic boots the node from its boot target (`driver_internal_info.boot_from_volume`).
pub async fn adopt(
    client: &IronicClient,
    uuid: &str,
    limit: Duration,
    say: &mut dyn FnMut(&str) -> std::io::Result<()>,
) -> std::io::Result<Result<(), AdoptError>> {
    let ironic = |what: &str| {
        let what = what.to_owned();
        move |e| AdoptError::Reconcile(Error::ironic(what, e))
    };
    let deadline = Instant::now() + limit;
    let target = match client
        .list_targets(uuid)
        .await
        .map_err(ironic("list volume targets"))
    {
        Ok(ts) => match ts.into_iter().find(|t| t.boot_index == 0) {
            Some(t) => t.uuid,
            None => return Ok(Err(AdoptError::NoBootTarget)),
        },
        Err(e) => return Ok(Err(e)),
    };
    let mut adopt_requests = 0u32;
    let mut powered_on = false;
    loop {
        let node = match client.get_node(uuid).await.map_err(ironic("get node")) {
            Ok(n) => n,
            Err(e) => return Ok(Err(e)),
        };
        let state = node.state().to_owned();
        let busy = node.reservation.is_some() || node.target_provision_state.is_some();
        let step: Result<(), AdoptError> = match state.as_str() {
            _ if busy => Ok(()),
            "active" => {
                if node.boot_from_volume() != Some(target.as_str()) {
                    return Ok(Err(AdoptError::ActiveWithoutBootVolume(
                        node.boot_from_volume().map(str::to_owned),
                    )));
                }
                if node.power_state.as_deref() == Some("power on") {
                    say(&format!("active, booting from volume target {target}"))?;
                    return Ok(Ok(()));
                }
                if !powered_on {
                    say("power on")?;
                    powered_on = true;
                    retry_locked(|| client.set_power_state(uuid, "power on"))
                        .await
                        .map_err(ironic("power on"))
                } else {
                    Ok(())
                }
            }
            "enroll" | "available" => {
                say(&format!("manage ({state} -> manageable)"))?;
                retry_locked(|| client.set_provision_state(uuid, "manage"))
                    .await
                    .map_err(ironic("manage"))
            }
            "manageable" | "adopt failed" if !node.extra.contains_key(BOOT_DEVICE_KEY) => {
                say("set persistent boot device pxe")?;
                host_api::set_boot_device(client, uuid)
                    .await
                    .map_err(AdoptError::from)
            }
            "manageable" | "adopt failed" if adopt_requests < 2 => {
                if state == "adopt failed" {
                    say(&format!(
                        "previous adoption failed ({}); adopt again",
                        node.last_error.as_deref().unwrap_or("no error recorded")
                    ))?;
                } else {
                    say("adopt (manageable -> active)")?;
                }
                adopt_requests += 1;
                retry_locked(|| client.set_provision_state(uuid, "adopt"))
                    .await
                    .map_err(ironic("adopt"))
            }
            "adopt failed" => {
                return Ok(Err(AdoptError::AdoptFailed(node.last_error.unwrap_or_default())));
            }
            _ => Ok(()),
        };
        if let Err(e) = step {
            return Ok(Err(e));
        }
        if Instant::now() >= deadline {
            return Ok(Err(AdoptError::Timeout {
                limit,
                state,
                last_error: node.last_error,
            }));
        }
        tokio::time::sleep(ADOPT_POLL).await;
    }
}
