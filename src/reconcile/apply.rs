//! One reconcile pass against Ironic: read, plan, execute. Shared by both front ends.
//!
//! Reads: the node (by `status.provisioning.ID`, then by `<namespace>~<name>`), then its
//! connectors and targets by UUID. A host without `bootVolume` whose node carries no
//! bootvolume marker costs exactly that one node read. Writes run in plan order and stop
//! at the first failure; the next pass re-reads and re-plans, so a partial pass is safe.

use super::{
    Error,
    plan::{self, Blocked, CredentialSource, Credentials, Current, Desired, MANAGED_KEY},
};
use crate::{
    api::{BootVolume, HostView, SECRET_PASSWORD_KEY, SECRET_USERNAME_KEY, Sensitive},
    ironic::{self, IronicClient},
};
use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;

/// The host fields a pass needs, copied out of the object.
#[derive(Clone, Debug, PartialEq)]
pub struct HostSpec {
    /// `metadata.namespace` (`default` when absent in a manifest).
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `status.provisioning.ID`.
    pub node_id: Option<String>,
    /// `spec.bootVolume`.
    pub boot_volume: Option<BootVolume>,
    /// Deleting or detached: BMO removes (or has removed) the node; we leave it alone.
    pub skip: Option<&'static str>,
}

impl HostSpec {
    /// Reads a BareMetalHost JSON object.
    pub fn from_value(raw: &Value) -> Result<Self, Error> {
        let view = HostView::new(raw).map_err(|e| Error::Input(format!("not a BareMetalHost: {e}")))?;
        let skip = if view.deleting() {
            Some("being deleted")
        } else if view.operational_status() == Some("detached") {
            Some("detached")
        } else {
            None
        };
        Ok(Self {
            namespace: if view.namespace.is_empty() {
                "default".into()
            } else {
                view.namespace.into()
            },
            name: view.name.into(),
            node_id: view.ironic_node_id().map(str::to_owned),
            boot_volume: view.boot_volume,
            skip,
        })
    }

    /// metal3's Ironic node name.
    pub fn node_name(&self) -> String {
        format!("{}~{}", self.namespace, self.name)
    }

    /// The name of the Secret this host needs read, if any.
    pub fn secret_name(&self) -> Result<Option<&str>, Error> {
        match &self.boot_volume {
            Some(bv) => match plan::credential_source(bv)? {
                CredentialSource::Secret(name) => Ok(Some(name)),
                _ => Ok(None),
            },
            None => Ok(None),
        }
    }

    /// The desired node state; `secret` is the Secret named by [`Self::secret_name`], when
    /// found. `Ok(None)` means "no bootVolume".
    pub fn desired(&self, secret: Option<&Secret>) -> Result<Option<Desired>, Error> {
        let Some(bv) = &self.boot_volume else {
            return Ok(None);
        };
        let credentials = match plan::credential_source(bv)? {
            CredentialSource::None => None,
            CredentialSource::Inline(c) => Some(c),
            CredentialSource::Secret(name) => {
                let missing = || Error::SecretNotFound {
                    namespace: self.namespace.clone(),
                    name: name.into(),
                };
                Some(credentials_from_secret(
                    secret.ok_or_else(missing)?,
                    &self.namespace,
                    name,
                )?)
            }
        };
        Ok(Some(Desired::from_boot_volume(bv, credentials)?))
    }
}

/// Reads `username`/`password` from a Secret (`stringData` wins over `data`, as the API
/// server merges them; `data` values arrive base64-decoded).
pub fn credentials_from_secret(secret: &Secret, namespace: &str, name: &str) -> Result<Credentials, Error> {
    let value = |key: &'static str| {
        let from_string = secret.string_data.as_ref().and_then(|d| d.get(key)).cloned();
        let from_data = || {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
        };
        from_string
            .or_else(from_data)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Error::SecretKeyMissing {
                namespace: namespace.into(),
                name: name.into(),
                key,
            })
    };
    Ok(Credentials {
        username: value(SECRET_USERNAME_KEY)?,
        password: Sensitive::new(value(SECRET_PASSWORD_KEY)?),
    })
}

/// What a pass did (or, in dry-run, would do).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// The node's UUID (empty when no node was needed).
    pub node_uuid: String,
    /// One description per write made (or planned, in dry-run); never a password.
    pub changes: Vec<String>,
    /// Changes Ironic refuses in the node's current state.
    pub blocked: Vec<Blocked>,
    /// Why nothing was looked at (host deleting/detached, or no node and no bootVolume).
    pub skipped: Option<String>,
    /// What kind of change `changes` make (`None`: no change).
    pub change: Option<plan::Change>,
}

impl Outcome {
    /// The node matches the host and nothing waits.
    pub fn in_sync(&self) -> bool {
        self.changes.is_empty() && self.blocked.is_empty()
    }
}

/// Runs one pass for `host` whose desired state is `desired`.
pub async fn apply(
    client: &IronicClient,
    host: &HostSpec,
    desired: Option<&Desired>,
    dry_run: bool,
) -> Result<Outcome, Error> {
    Ok(apply_detailed(client, host, desired, dry_run, None)
        .await?
        .outcome)
}

/// A pass of [`apply_detailed`]: the outcome, what Ironic held before, and the writes made.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    /// What the pass did.
    pub outcome: Outcome,
    /// The node, connectors and targets read before any write (`None`: none read).
    pub before: Option<Current>,
    /// The writes made (in dry-run: planned), in order.
    pub actions: Vec<plan::Action>,
    /// The node as Ironic returned it from the pass's last write, when that write was a
    /// node PATCH: as fresh as a read after the writes, without the read.
    pub after: Option<ironic::Node>,
}

/// [`apply`], also returning the state read and the writes made (the adoption handshake
/// decides from them). `boot_device_key`: fold the handshake's boot device into this pass
/// ([`plan::fold_boot_device`]).
pub async fn apply_detailed(
    client: &IronicClient,
    host: &HostSpec,
    desired: Option<&Desired>,
    dry_run: bool,
    boot_device_key: Option<&str>,
) -> Result<Applied, Error> {
    let outcome = |outcome: Outcome| Applied {
        outcome,
        ..Default::default()
    };
    if let Some(why) = host.skip {
        return Ok(outcome(Outcome {
            skipped: Some(format!("host is {why}")),
            ..Default::default()
        }));
    }
    let Some(node) = find_node(client, host).await? else {
        return match desired {
            None => Ok(outcome(Outcome {
                skipped: Some("no Ironic node".into()),
                ..Default::default()
            })),
            Some(_) => Err(Error::NodeNotFound {
                ident: host.node_name(),
                how: if host.node_id.is_some() {
                    "status.provisioning.ID and name"
                } else {
                    "name"
                }
                .into(),
            }),
        };
    };
    let uuid = node.uuid.clone();
    let marked = node
        .extra
        .get(MANAGED_KEY)
        .is_some_and(|v| v == &Value::Bool(true));
    if desired.is_none() && !marked {
        return Ok(outcome(Outcome {
            node_uuid: uuid,
            ..Default::default()
        }));
    }
    let connectors = client
        .list_connectors(&uuid)
        .await
        .map_err(|e| Error::ironic("list volume connectors", e))?;
    let targets = client
        .list_targets(&uuid)
        .await
        .map_err(|e| Error::ironic("list volume targets", e))?;
    let current = Current {
        node,
        connectors,
        targets,
    };
    apply_to(client, desired, current, dry_run, boot_device_key).await
}

/// Plans against `current` (read just now, or taken from a fresh fleet listing) and executes.
pub async fn apply_to(
    client: &IronicClient,
    desired: Option<&Desired>,
    current: Current,
    dry_run: bool,
    boot_device_key: Option<&str>,
) -> Result<Applied, Error> {
    let secret = desired
        .and_then(|d| d.credentials.as_ref())
        .map(|c| c.password.expose().to_owned());
    let redact = |e: ironic::Error| e.redact(secret.as_deref().unwrap_or(""));
    let mut plan = plan::plan(desired, &current);
    let change = plan::classify(desired, &current, &plan.actions);
    if let Some(key) = boot_device_key.filter(|_| desired.is_some()) {
        plan::fold_boot_device(&mut plan, &current, key);
    }
    let mut applied = Applied {
        outcome: Outcome {
            node_uuid: current.node.uuid.clone(),
            change,
            blocked: plan.blocked,
            ..Default::default()
        },
        before: Some(current),
        actions: Vec::new(),
        after: None,
    };
    for action in plan.actions {
        let description = action.to_string();
        if !dry_run {
            // Ironic holds the node lock for short tasks (a power sync, another client's
            // PATCH): retry those sub-second instead of waiting for the next pass.
            applied.after = ironic::retry_locked(|| execute(client, &action))
                .await
                .map_err(|e| Error::ironic(&description, redact(e)))?;
        }
        applied.outcome.changes.push(description);
        applied.actions.push(action);
    }
    Ok(applied)
}

async fn find_node(client: &IronicClient, host: &HostSpec) -> Result<Option<ironic::Node>, Error> {
    let name = host.node_name();
    // The ID first: BMO's record is authoritative; the name covers hosts not yet registered
    // in status (and an Ironic whose database was recreated).
    for ident in host.node_id.iter().map(String::as_str).chain([name.as_str()]) {
        match client.get_node(ident).await {
            Ok(node) => return Ok(Some(node)),
            Err(ironic::Error::NotFound { .. }) => continue,
            Err(e) => return Err(Error::ironic(format!("get node {ident}"), e)),
        }
    }
    Ok(None)
}

/// Sends one write; a node PATCH returns the node Ironic answered with.
async fn execute(
    client: &IronicClient,
    action: &plan::Action,
) -> Result<Option<ironic::Node>, ironic::Error> {
    use plan::Action as A;
    match action {
        // The answer names the PATCH's own lock as `reservation` (seen on Ironic 39), which
        // Ironic released before answering: not a lock anyone holds.
        A::PatchNode { uuid, ops, .. } => client.patch_node(uuid, ops).await.map(|node| {
            Some(ironic::Node {
                reservation: None,
                ..node
            })
        }),
        A::CreateConnector(body) => client.create_connector(body).await.map(|_| None),
        A::PatchConnector { uuid, ops, .. } => client.patch_connector(uuid, ops).await.map(|_| None),
        A::DeleteConnector { uuid, .. } => client.delete_connector(uuid).await.map(|()| None),
        A::CreateTarget(body) => client.create_target(body).await.map(|_| None),
        A::PatchTarget { uuid, ops, .. } => client.patch_target(uuid, ops).await.map(|_| None),
        A::DeleteTarget { uuid, .. } => client.delete_target(uuid).await.map(|()| None),
        A::SetBootDevice { uuid } => client.set_boot_device(uuid, "pxe", true).await.map(|()| None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn secret(data: &[(&str, &str)], string_data: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            string_data: Some(
                string_data
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn secret_keys_table() {
        let ok = |u: &str, p: &str| Ok::<_, &'static str>((u.to_owned(), p.to_owned()));
        let cases = [
            (secret(&[("username", "u"), ("password", "p")], &[]), ok("u", "p")),
            (
                secret(&[("username", "u"), ("password", "old")], &[("password", "new")]),
                ok("u", "new"),
            ),
            (secret(&[("username", "u")], &[]), Err("password")),
            (secret(&[("password", "p")], &[]), Err("username")),
            (
                secret(&[("username", "u"), ("password", "")], &[]),
                Err("password"),
            ),
        ];
        for (s, want) in cases {
            let got = credentials_from_secret(&s, "ns", "chap")
                .map(|c| (c.username, c.password.expose().to_owned()));
            let got = got.map_err(|e| match e {
                Error::SecretKeyMissing { key, .. } => key,
                other => panic!("{other}"),
            });
            assert_eq!(got, want);
        }
        let invalid = Secret {
            data: Some(
                [
                    ("username".to_string(), ByteString(vec![0xff])),
                    ("password".into(), ByteString(b"p".to_vec())),
                ]
                .into(),
            ),
            ..Default::default()
        };
        assert!(matches!(
            credentials_from_secret(&invalid, "ns", "chap"),
            Err(Error::SecretKeyMissing { key: "username", .. })
        ));
    }

    #[test]
    fn host_spec_reads_ids_and_skips_deleting_or_detached_hosts() {
        let host = |extra: Value| {
            let mut v =
                json!({"metadata": {"name": "h"}, "spec": {}, "status": {"provisioning": {"ID": "uuid-1"}}});
            json_patch::merge(&mut v, &extra);
            HostSpec::from_value(&v).unwrap()
        };
        let h = host(json!({}));
        assert_eq!(
            (h.namespace.as_str(), h.node_name().as_str(), h.node_id.as_deref()),
            ("default", "default~h", Some("uuid-1"))
        );
        assert_eq!(h.skip, None);
        assert_eq!(
            host(json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}})).skip,
            Some("being deleted")
        );
        assert_eq!(
            host(json!({"status": {"operationalStatus": "detached"}})).skip,
            Some("detached")
        );
        assert!(matches!(HostSpec::from_value(&json!([])), Err(Error::Input(_))));
    }

    #[test]
    fn desired_reports_the_missing_secret_by_name() {
        let h = HostSpec::from_value(&json!({
            "metadata": {"name": "h", "namespace": "ns"},
            "spec": {"bootVolume": {"volumeId": "v", "volumeDriver": "external", "connectorId": "iqn.2004-10.com.example:h",
                "iscsiTarget": {"iqn": "iqn.2010-10.com.example:v", "portal": "192.0.2.1"}, "iscsiCredentialsName": "chap"}}
        }))
        .unwrap();
        assert_eq!(h.secret_name().unwrap(), Some("chap"));
        let err = h.desired(None).unwrap_err();
        assert_eq!(err.to_string(), "Secret ns/chap not found");
        let ok = h
            .desired(Some(&secret(&[("username", "u"), ("password", "p")], &[])))
            .unwrap()
            .unwrap();
        assert_eq!(ok.credentials.unwrap().username, "u");
    }
}
