//! Typed views of the parts of a `metal3.io/v1alpha1` BareMetalHost this project owns or reads.
//!
//! We never deserialize (or re-serialize) a whole BareMetalHost: the operator's CRD evolves
//! independently of us, and anything we do not model must survive untouched. Instead the
//! [`HostView`] borrows the raw JSON and exposes only what the rules and the reconciler read,
//! and [`BootVolume`] is the typed form of `spec.bootVolume`.

mod read;

pub use read::{HostDoc, HostRead, Json, ObjectOr, Problem, Shape, field, parse_host, read_boot_volume};
use serde::{Deserialize, Serialize};
use serde_json::{Value, value::RawValue};
use std::fmt;

/// API group/version of the objects we admit.
pub const API_VERSION: &str = "metal3.io/v1alpha1";
/// Kind of the objects we admit.
pub const KIND: &str = "BareMetalHost";

/// The default iSCSI portal port, appended by mutation when a portal has none.
pub const DEFAULT_ISCSI_PORT: u16 = 3260;
/// The only supported `targetType`, also its default.
pub const TARGET_TYPE_ISCSI: &str = "iscsi";
/// The only supported `iscsiTarget.iType`, also its default.
pub const ITYPE_IQN: &str = "iqn";
/// `authMethod` value for CHAP authentication.
pub const AUTH_CHAP: &str = "CHAP";
/// `authMethod` value for no authentication.
pub const AUTH_NONE: &str = "None";
/// Secret keys holding the CHAP credentials (the `bmc.credentialsName` convention).
pub const SECRET_USERNAME_KEY: &str = "username";
/// See [`SECRET_USERNAME_KEY`].
pub const SECRET_PASSWORD_KEY: &str = "password";

/// A string that must never be printed: CHAP passwords.
///
/// `Debug` and `Display` both print `<redacted>`, so a stray `{:?}` in a log line, an error or a
/// panic message cannot leak the value. Use [`Sensitive::expose`] where the value is really needed
/// (hashing, sending to Ironic).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sensitive(String);

impl Sensitive {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret value itself; call sites are the places to audit for leaks.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `spec.bootVolume`: boot the host from a remote iSCSI volume instead of writing an image.
///
/// Every field is optional here: the webhook reports missing ones as field errors, and the
/// reconciler only sees objects the webhook admitted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootVolume {
    /// Cinder volume UUID, or the external volume's id (Ironic stores 36 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_id: Option<String>,
    /// Ironic storage interface: `cinder` or `external`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_driver: Option<String>,
    /// The host's iSCSI initiator name (becomes the Ironic volume connector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector_id: Option<String>,
    /// Only `iscsi` is supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_type: Option<String>,
    /// Where the volume is served from; required for `external`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iscsi_target: Option<IscsiTarget>,
    /// Name of a Secret in the host's namespace with `username`/`password` CHAP credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iscsi_credentials_name: Option<String>,
}

/// `spec.bootVolume.iscsiTarget`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IscsiTarget {
    /// The target's iSCSI name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iqn: Option<String>,
    /// `host` or `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portal: Option<String>,
    /// Logical unit number, 0-65535.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lun: Option<i64>,
    /// `CHAP` or `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_method: Option<String>,
    /// Inline CHAP user (only with `--allow-inline-chap`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_user: Option<String>,
    /// Inline CHAP password (only with `--allow-inline-chap`); never printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_passwd: Option<Sensitive>,
    /// Connector type; only `iqn`.
    #[serde(default, rename = "iType", skip_serializing_if = "Option::is_none")]
    pub i_type: Option<String>,
    /// The Secret holding CHAP credentials, resolved by mutation from `iscsiCredentialsName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_secret_ref: Option<SecretRef>,
}

/// A namespaced Secret reference (`{name, namespace}`), as in `corev1.SecretReference`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRef {
    /// Secret name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Secret namespace; must be the host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl BootVolume {
    /// The portal with the default port appended when it has none.
    pub fn portal_with_port(&self) -> Option<String> {
        let portal = self.iscsi_target.as_ref()?.portal.as_deref()?;
        Some(if portal.contains(':') {
            portal.to_owned()
        } else {
            format!("{portal}:{DEFAULT_ISCSI_PORT}")
        })
    }

    /// The name of the Secret holding CHAP credentials, from either credential field.
    pub fn credentials_secret_name(&self) -> Option<&str> {
        self.iscsi_target
            .as_ref()
            .and_then(|t| t.auth_secret_ref.as_ref())
            .and_then(|r| r.name.as_deref())
            .or(self.iscsi_credentials_name.as_deref())
    }

    /// `authMethod`, or its default: `CHAP` when any credential source is given, else `None`.
    pub fn effective_auth_method(&self) -> &str {
        let target = self.iscsi_target.as_ref();
        if let Some(m) = target.and_then(|t| t.auth_method.as_deref()) {
            return m;
        }
        let inline = target.is_some_and(|t| t.auth_user.is_some() || t.auth_passwd.is_some());
        let secret = target.is_some_and(|t| t.auth_secret_ref.is_some());
        if inline || secret || self.iscsi_credentials_name.is_some() {
            AUTH_CHAP
        } else {
            AUTH_NONE
        }
    }

    /// LUN or its default (0).
    pub fn effective_lun(&self) -> i64 {
        self.iscsi_target.as_ref().and_then(|t| t.lun).unwrap_or(0)
    }
}
/// A borrowed, read-only view of a BareMetalHost: only the fields our rules read.
///
/// Built from request text ([`HostDoc::view`], nothing copied but the small `bootVolume`
/// block) or from a parsed `Value` ([`HostView::new`]: the reconciler, `check`, tests).
#[derive(Clone, Debug)]
pub struct HostView<'a> {
    /// `metadata.namespace` (empty when absent, as in a manifest without one).
    pub namespace: &'a str,
    /// `metadata.name` (or `generateName` when the name is not assigned yet).
    pub name: &'a str,
    /// `spec.bootVolume` as sent, when present (and not null).
    pub boot_volume_raw: Option<Json<'a>>,
    /// The typed, lenient reading of `spec.bootVolume`.
    pub boot_volume: Option<BootVolume>,
    /// What reading `spec.bootVolume` found besides its value (presence, schema problems).
    pub boot_volume_shape: Shape,
    /// `spec` is an object (a patch can add under it).
    pub has_spec: bool,
    spec: SpecFields<'a>,
    deleting: bool,
    operational_status: Option<&'a str>,
    provisioning_state: Option<&'a str>,
    node_id: Option<&'a str>,
}

/// The `spec` fields the rules read besides `bootVolume`.
#[derive(Clone, Debug, Default)]
struct SpecFields<'a> {
    image: Option<Json<'a>>,
    custom_deploy: Option<Json<'a>>,
    externally_provisioned: Option<Json<'a>>,
    root_device_hints: Option<Json<'a>>,
    raid: Option<Json<'a>>,
    user_data: Option<Json<'a>>,
    network_data: Option<Json<'a>>,
    meta_data: Option<Json<'a>>,
    bmc_address: Option<&'a str>,
    boot_mac_address: Option<&'a str>,
}

/// Why an object cannot be read as a BareMetalHost at all.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ViewError {
    /// The object is not a JSON object.
    #[error("object is not a JSON object")]
    NotAnObject,
    /// `spec` exists but is not an object.
    #[error("spec must be an object")]
    SpecNotObject,
    /// `metadata` exists but is not an object.
    #[error("metadata must be an object")]
    MetadataNotObject,
    /// The text is not JSON.
    #[error("not valid JSON: {0}")]
    Json(String),
}

fn boot_volume_of(raw: Option<Json<'_>>) -> (Option<BootVolume>, Shape) {
    match raw {
        Some(json) => {
            let (bv, shape) = read_boot_volume(json);
            (Some(bv), shape)
        }
        None => (None, Shape::default()),
    }
}

impl<'a> HostDoc<'a> {
    /// The view of a host read from request text.
    pub fn view(&self) -> HostView<'_> {
        let text = |r: Option<&'a RawValue>| r.map(Json::Text);
        let meta = self.metadata.as_ref();
        let spec = self.spec.as_ref();
        let status = self.status.as_ref();
        let provisioning = status.and_then(|s| match &s.provisioning {
            Some(ObjectOr::Object(p)) => Some(p),
            _ => None,
        });
        let boot_volume_raw = spec.and_then(|s| text(s.boot_volume));
        let (boot_volume, boot_volume_shape) = boot_volume_of(boot_volume_raw);
        HostView {
            namespace: meta.and_then(|m| m.namespace.get()).unwrap_or(""),
            name: meta
                .and_then(|m| m.name.get().or(m.generate_name.get()))
                .unwrap_or(""),
            boot_volume_raw,
            boot_volume,
            boot_volume_shape,
            has_spec: spec.is_some(),
            spec: spec
                .map(|s| SpecFields {
                    image: text(s.image),
                    custom_deploy: text(s.custom_deploy),
                    externally_provisioned: text(s.externally_provisioned),
                    root_device_hints: text(s.root_device_hints),
                    raid: text(s.raid),
                    user_data: text(s.user_data),
                    network_data: text(s.network_data),
                    meta_data: text(s.meta_data),
                    bmc_address: match &s.bmc {
                        Some(ObjectOr::Object(b)) => b.address.get(),
                        _ => None,
                    },
                    boot_mac_address: s.boot_mac_address.get(),
                })
                .unwrap_or_default(),
            deleting: meta.is_some_and(|m| m.deletion_timestamp.is_some()),
            operational_status: status.and_then(|s| s.operational_status.get()),
            provisioning_state: provisioning.and_then(|p| p.state.get()),
            node_id: provisioning.and_then(|p| p.id.get()),
        }
    }
}

impl<'a> HostView<'a> {
    /// Reads the view from a parsed BareMetalHost (the reconciler, `check`, tests); reads
    /// exactly what [`HostDoc::view`] reads from text.
    pub fn new(raw: &'a Value) -> Result<Self, ViewError> {
        if !raw.is_object() {
            return Err(ViewError::NotAnObject);
        }
        let meta = raw.get("metadata").filter(|m| !m.is_null());
        if meta.is_some_and(|m| !m.is_object()) {
            return Err(ViewError::MetadataNotObject);
        }
        let spec = raw.get("spec").filter(|s| !s.is_null());
        if spec.is_some_and(|s| !s.is_object()) {
            return Err(ViewError::SpecNotObject);
        }
        let meta_str = |k: &str| meta.and_then(|m| m.get(k)).and_then(Value::as_str);
        let spec_json = |k: &str| {
            spec.and_then(|s| s.get(k))
                .filter(|v| !v.is_null())
                .map(Json::Tree)
        };
        let status_str = |p: &str| raw.pointer(p).and_then(Value::as_str);
        let boot_volume_raw = spec_json("bootVolume");
        let (boot_volume, boot_volume_shape) = boot_volume_of(boot_volume_raw);
        Ok(Self {
            namespace: meta_str("namespace").unwrap_or(""),
            name: meta_str("name")
                .or_else(|| meta_str("generateName"))
                .unwrap_or(""),
            boot_volume_raw,
            boot_volume,
            boot_volume_shape,
            has_spec: spec.is_some(),
            spec: SpecFields {
                image: spec_json("image"),
                custom_deploy: spec_json("customDeploy"),
                externally_provisioned: spec_json("externallyProvisioned"),
                root_device_hints: spec_json("rootDeviceHints"),
                raid: spec_json("raid"),
                user_data: spec_json("userData"),
                network_data: spec_json("networkData"),
                meta_data: spec_json("metaData"),
                bmc_address: spec
                    .and_then(|s| s.get("bmc"))
                    .and_then(|b| b.get("address"))
                    .and_then(Value::as_str),
                boot_mac_address: spec.and_then(|s| s.get("bootMACAddress")).and_then(Value::as_str),
            },
            deleting: meta
                .and_then(|m| m.get("deletionTimestamp"))
                .is_some_and(|v| !v.is_null()),
            operational_status: status_str("/status/operationalStatus"),
            provisioning_state: status_str("/status/provisioning/state"),
            node_id: status_str("/status/provisioning/ID"),
        })
    }

    /// The namespace, or `default` when the object has none (how kubectl would create it).
    pub fn namespace_or(&self, default: &'a str) -> &'a str {
        if self.namespace.is_empty() {
            default
        } else {
            self.namespace
        }
    }

    /// `spec.<key>` for the fields the rules compare or test for presence (`image`,
    /// `customDeploy`, `externallyProvisioned`, `rootDeviceHints`, `raid`, `userData`,
    /// `networkData`, `metaData`), when present and not null; `None` for any other key.
    pub fn spec(&self, key: &str) -> Option<Json<'a>> {
        let s = &self.spec;
        match key {
            "image" => s.image,
            "customDeploy" => s.custom_deploy,
            "externallyProvisioned" => s.externally_provisioned,
            "rootDeviceHints" => s.root_device_hints,
            "raid" => s.raid,
            "userData" => s.user_data,
            "networkData" => s.network_data,
            "metaData" => s.meta_data,
            _ => None,
        }
    }

    /// `spec.bmc.address`.
    pub fn bmc_address(&self) -> Option<&'a str> {
        self.spec.bmc_address
    }

    /// `spec.bootMACAddress`, when a string.
    pub fn boot_mac_address(&self) -> Option<&'a str> {
        self.spec.boot_mac_address
    }

    /// `status.provisioning.state`.
    pub fn provisioning_state(&self) -> Option<&'a str> {
        self.provisioning_state
    }

    /// `status.operationalStatus`.
    pub fn operational_status(&self) -> Option<&'a str> {
        self.operational_status
    }

    /// `status.provisioning.ID`: the Ironic node UUID once BMO registered the host.
    pub fn ironic_node_id(&self) -> Option<&'a str> {
        self.node_id.filter(|s| !s.is_empty())
    }

    /// Whether `metadata.deletionTimestamp` is set.
    pub fn deleting(&self) -> bool {
        self.deleting
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Every view field, for comparing the text and the tree readings.
    fn fields(v: &HostView<'_>) -> String {
        let keys = [
            "image",
            "customDeploy",
            "externallyProvisioned",
            "rootDeviceHints",
            "raid",
            "userData",
            "networkData",
            "metaData",
        ];
        let spec: Vec<Option<Value>> = keys.iter().map(|k| v.spec(k).map(|j| j.to_value())).collect();
        format!(
            "{:?}",
            (
                v.namespace,
                v.name,
                v.boot_volume_raw.map(|j| j.to_value()),
                &v.boot_volume,
                &v.boot_volume_shape,
                v.has_spec,
                spec,
                (v.bmc_address(), v.boot_mac_address()),
                (
                    v.deleting(),
                    v.operational_status(),
                    v.provisioning_state(),
                    v.ironic_node_id()
                ),
            )
        )
    }

    #[test]
    fn text_and_tree_readings_agree() {
        let hosts = [
            json!({
                "apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost",
                "metadata": {"name": "h", "namespace": "ns", "managedFields": [{"big": true}], "deletionTimestamp": null},
                "spec": {
                    "bootVolume": {"volumeId": "v", "bogus": [1], "iscsiTarget": {"lun": 1.0, "authSecretRef": {"name": 3}}},
                    "image": {"url": "u"}, "customDeploy": null,
                    "externallyProvisioned": false, "bmc": {"address": "ipmi://x"}, "bootMACAddress": "m",
                    "rootDeviceHints": {}, "raid": {}, "userData": {}, "networkData": {}, "metaData": {},
                    "online": true, "firmware": {"x": 1}
                },
                "status": {"operationalStatus": "OK", "provisioning": {"state": "ready", "ID": "id", "image": {}},
                           "hardware": {"nics": [1, 2, 3]}}
            }),
            json!({"metadata": {"generateName": "g-", "name": 7, "deletionTimestamp": "t"}, "spec": {"bootVolume": "x", "bmc": "y"}}),
            json!({"metadata": null, "spec": null, "status": [1]}),
            json!({"spec": {"bootVolume": {"iscsiTarget": "t", "volumeDriver": null}, "bootMACAddress": 5}, "status": {"provisioning": 1}}),
            json!({}),
        ];
        for host in hosts {
            let text = host.to_string();
            let doc = parse_host(&text).expect("parse");
            let tree = HostView::new(&host).expect("view");
            assert_eq!(fields(&doc.view()), fields(&tree), "{text}");
        }
        for (bad, want) in [
            (json!({"spec": "x"}), ViewError::SpecNotObject),
            (json!({"metadata": 1}), ViewError::MetadataNotObject),
            (json!("host"), ViewError::NotAnObject),
        ] {
            assert_eq!(parse_host(&bad.to_string()).err(), Some(want.clone()));
            assert_eq!(HostView::new(&bad).err(), Some(want));
        }
    }

    #[test]
    fn json_equality_is_value_equality() {
        let a = RawValue::from_string(r#"{"a": 1, "b": [true]}"#.into()).expect("raw");
        let b = RawValue::from_string(r#"{"b":[true],"a":1}"#.into()).expect("raw");
        let c = RawValue::from_string(r#"{"b":[false],"a":1}"#.into()).expect("raw");
        let v = json!({"a": 1, "b": [true]});
        assert_eq!(Json::Text(&a), Json::Text(&b));
        assert_eq!(Json::Text(&a), Json::Tree(&v));
        assert_ne!(Json::Text(&c), Json::Tree(&v));
        assert_ne!(Json::Text(&a), Json::Text(&c));
    }
}
