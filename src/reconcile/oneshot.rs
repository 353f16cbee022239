//! `bootvolume ironic-apply`: apply the BareMetalHosts in manifest files to Ironic once.
//!
//! No Kubernetes needed: the Secrets a host references are read from the same files
//! (`data` base64 or `stringData`). Every change is printed on stdout, problems on stderr;
//! the exit code tells scripts what happened ([`ExitStatus`]).

use super::{
    Error,
    apply::{self, HostSpec},
};
use crate::ironic::IronicClient;
use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;
use std::{collections::BTreeMap, io::Write, path::PathBuf};

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
pub async fn run(
    client: &IronicClient,
    inputs: &Inputs,
    dry_run: bool,
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
                if !outcome.blocked.is_empty() {
                    ExitStatus::Waiting
                } else if dry_run && !outcome.changes.is_empty() {
                    ExitStatus::ChangesPending
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
