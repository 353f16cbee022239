//! Serde types for the few Ironic v1 resources the reconciler reads and writes.
//!
//! Only the fields we use are modelled; unknown fields are ignored on read. Request bodies are
//! separate types because Ironic rejects unknown keys (`Additional properties are not allowed`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A bare metal node: the parts that decide what to change and whether it may change now.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Node UUID: bodies (`node_uuid`) and `?node=` filters use it, never the name.
    pub uuid: String,
    /// Logical name (metal3: `<namespace>~<name>`).
    #[serde(default)]
    pub name: Option<String>,
    /// `power on`, `power off`, or null (never powered, e.g. a fresh fake node).
    #[serde(default)]
    pub power_state: Option<String>,
    /// `enroll`, `manageable`, `available`, `active`, ...
    #[serde(default)]
    pub provision_state: Option<String>,
    /// Interface changes are allowed in any state while in maintenance.
    #[serde(default)]
    pub maintenance: bool,
    /// `noop`, `cinder`, `external`, ...
    #[serde(default)]
    pub storage_interface: Option<String>,
    /// Free-form properties; `capabilities` is a comma-separated `key:value` string.
    #[serde(default)]
    pub properties: Map<String, Value>,
    /// Free-form extra data; holds our ownership marker.
    #[serde(default)]
    pub extra: Map<String, Value>,
    /// Last write time (not in [`NODE_FIELDS`]: Ironic refuses it there; tests read it in full).
    #[serde(default)]
    pub updated_at: Option<String>,
    /// The state a running transition heads for (`active` while adopting), else null.
    #[serde(default)]
    pub target_provision_state: Option<String>,
    /// When `provision_state` last changed: tells one failed adoption from the next.
    #[serde(default)]
    pub provision_updated_at: Option<String>,
    /// The conductor holding the node lock, or null: writes get 409 while it is set.
    #[serde(default)]
    pub reservation: Option<String>,
    /// Why the last transition failed (e.g. `adopt failed`).
    #[serde(default)]
    pub last_error: Option<String>,
    /// Conductor bookkeeping; `boot_from_volume` names the volume target the node boots
    /// from once deployed or adopted.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub driver_internal_info: Map<String, Value>,
}

/// The node fields requested on every read (`?fields=`), to keep responses small.
pub const NODE_FIELDS: &str = "uuid,name,power_state,provision_state,target_provision_state,\
provision_updated_at,reservation,last_error,maintenance,storage_interface,properties,extra,\
driver_internal_info";

impl Node {
    /// `driver_internal_info.boot_from_volume`: the target UUID Ironic boots the node from.
    pub fn boot_from_volume(&self) -> Option<&str> {
        self.driver_internal_info
            .get("boot_from_volume")
            .and_then(Value::as_str)
    }

    /// The provision state, `""` when unknown.
    pub fn state(&self) -> &str {
        self.provision_state.as_deref().unwrap_or("")
    }

    /// `properties.capabilities`, as the string Ironic stores (empty when unset).
    pub fn capabilities(&self) -> &str {
        self.properties
            .get("capabilities")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

/// A volume connector (the host's initiator), as listed with `detail=true`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Connector {
    /// Connector UUID.
    pub uuid: String,
    /// Owning node.
    #[serde(default)]
    pub node_uuid: String,
    /// `iqn` for iSCSI initiators.
    #[serde(rename = "type")]
    pub kind: String,
    /// The initiator name.
    pub connector_id: String,
    /// Free-form extra data; holds our ownership marker.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub extra: Map<String, Value>,
    /// Last write time.
    #[serde(default)]
    pub updated_at: Option<String>,
}

/// A volume target (the volume to boot from), as listed with `detail=true`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// Target UUID.
    pub uuid: String,
    /// Owning node.
    #[serde(default)]
    pub node_uuid: String,
    /// `iscsi`.
    pub volume_type: String,
    /// 0 is the boot volume.
    pub boot_index: i64,
    /// The volume's id (Cinder UUID or external id).
    pub volume_id: String,
    /// Connection data; `auth_password` always reads back as `******`.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub properties: Map<String, Value>,
    /// Free-form extra data; holds our ownership marker and credentials digest.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub extra: Map<String, Value>,
    /// Last write time.
    #[serde(default)]
    pub updated_at: Option<String>,
}

/// `POST /v1/volume/connectors` body.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NewConnector {
    /// Owning node UUID (a name is rejected with 400).
    pub node_uuid: String,
    /// Connector type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Initiator name.
    pub connector_id: String,
    /// Extra data.
    pub extra: Map<String, Value>,
}

/// `POST /v1/volume/targets` body.
///
/// `properties` may hold `auth_password`: this type deliberately has no `Debug`.
#[derive(Clone, PartialEq, Serialize)]
pub struct NewTarget {
    /// Owning node UUID.
    pub node_uuid: String,
    /// Volume type.
    pub volume_type: String,
    /// Boot index (a JSON integer).
    pub boot_index: i64,
    /// Volume id.
    pub volume_id: String,
    /// Connection properties.
    pub properties: Map<String, Value>,
    /// Extra data.
    pub extra: Map<String, Value>,
}

/// One RFC 6902 operation of an Ironic PATCH (Ironic supports add, replace and remove).
///
/// A value may be a password: this type deliberately has no `Debug`.
#[derive(Clone, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum PatchOp {
    /// Add or overwrite a member.
    Add {
        /// JSON pointer.
        path: String,
        /// New value.
        value: Value,
    },
    /// Replace an existing member.
    Replace {
        /// JSON pointer.
        path: String,
        /// New value.
        value: Value,
    },
    /// Remove an existing member (removing a missing one is a 400).
    Remove {
        /// JSON pointer.
        path: String,
    },
}

impl PatchOp {
    /// The pointer the operation touches (safe to print).
    pub fn path(&self) -> &str {
        match self {
            Self::Add { path, .. } | Self::Replace { path, .. } | Self::Remove { path } => path,
        }
    }
}

/// `{"connectors": [...]}` / `{"targets": [...]}` list envelopes.
#[derive(Deserialize)]
pub(crate) struct ConnectorList {
    pub connectors: Vec<Connector>,
}

/// See [`ConnectorList`].
#[derive(Deserialize)]
pub(crate) struct TargetList {
    pub targets: Vec<Target>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Map<String, Value>, D::Error> {
    Ok(Option::<Map<String, Value>>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patch_ops_serialize_as_rfc6902() {
        let ops = vec![
            PatchOp::Add {
                path: "/a".into(),
                value: json!(1),
            },
            PatchOp::Replace {
                path: "/b".into(),
                value: json!("x"),
            },
            PatchOp::Remove { path: "/c".into() },
        ];
        assert_eq!(
            serde_json::to_value(&ops).unwrap(),
            json!([{"op":"add","path":"/a","value":1},{"op":"replace","path":"/b","value":"x"},{"op":"remove","path":"/c"}])
        );
    }

    #[test]
    fn null_extra_and_properties_read_as_empty() {
        let t: Target = serde_json::from_value(json!({
            "uuid": "u", "node_uuid": "n", "volume_type": "iscsi", "boot_index": 0, "volume_id": "v",
            "properties": null, "extra": null
        }))
        .unwrap();
        assert!(t.properties.is_empty() && t.extra.is_empty());
    }
}
