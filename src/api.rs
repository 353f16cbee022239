//! Typed views of the parts of a `metal3.io/v1alpha1` BareMetalHost this project owns or reads.
//!
//! We never deserialize (or re-serialize) a whole BareMetalHost: the operator's CRD evolves
//! independently of us, and anything we do not model must survive untouched. Instead the
//! [`HostView`] borrows the raw JSON and exposes only what the rules and the reconciler read,
//! and [`BootVolume`] is the typed form of `spec.bootVolume`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
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

fn str_of(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

impl BootVolume {
    /// Reads `spec.bootVolume` leniently: a field of the wrong JSON type reads as absent.
    ///
    /// Type errors are the schema validator's to report; the semantic rules then see the
    /// rest of the block, so one request reports every problem at once.
    pub fn from_value_lenient(v: &Value) -> Self {
        Self {
            volume_id: str_of(v, "volumeId"),
            volume_driver: str_of(v, "volumeDriver"),
            connector_id: str_of(v, "connectorId"),
            target_type: str_of(v, "targetType"),
            iscsi_target: v
                .get("iscsiTarget")
                .filter(|t| t.is_object())
                .map(|t| IscsiTarget {
                    iqn: str_of(t, "iqn"),
                    portal: str_of(t, "portal"),
                    lun: t.get("lun").and_then(Value::as_i64),
                    auth_method: str_of(t, "authMethod"),
                    auth_user: str_of(t, "authUser"),
                    auth_passwd: str_of(t, "authPasswd").map(Sensitive),
                    i_type: str_of(t, "iType"),
                    auth_secret_ref: t
                        .get("authSecretRef")
                        .filter(|r| r.is_object())
                        .map(|r| SecretRef {
                            name: str_of(r, "name"),
                            namespace: str_of(r, "namespace"),
                        }),
                }),
            iscsi_credentials_name: str_of(v, "iscsiCredentialsName"),
        }
    }

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
/// Built from the raw JSON the API server sent; nothing is copied except the small
/// `bootVolume` block.
#[derive(Clone, Debug)]
pub struct HostView<'a> {
    /// The whole object as received.
    pub raw: &'a Value,
    /// `metadata.namespace` (empty when absent, as in a manifest without one).
    pub namespace: &'a str,
    /// `metadata.name` (or `generateName` when the name is not assigned yet).
    pub name: &'a str,
    /// `spec.bootVolume` as sent, when present (and not null).
    pub boot_volume_raw: Option<&'a Value>,
    /// The typed, lenient reading of `spec.bootVolume`.
    pub boot_volume: Option<BootVolume>,
}

/// Why an object cannot be read as a BareMetalHost at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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

impl<'a> HostView<'a> {
    /// Reads the view from a BareMetalHost JSON object.
    pub fn new(raw: &'a Value) -> Result<Self, ViewError> {
        if !raw.is_object() {
            return Err(ViewError::NotAnObject);
        }
        let meta = raw.get("metadata");
        if meta.is_some_and(|m| !m.is_object() && !m.is_null()) {
            return Err(ViewError::MetadataNotObject);
        }
        let spec = raw.get("spec");
        if spec.is_some_and(|s| !s.is_object() && !s.is_null()) {
            return Err(ViewError::SpecNotObject);
        }
        let meta_str = |k: &str| meta.and_then(|m| m.get(k)).and_then(Value::as_str);
        let boot_volume_raw = spec.and_then(|s| s.get("bootVolume")).filter(|b| !b.is_null());
        Ok(Self {
            raw,
            namespace: meta_str("namespace").unwrap_or(""),
            name: meta_str("name")
                .or_else(|| meta_str("generateName"))
                .unwrap_or(""),
            boot_volume_raw,
            boot_volume: boot_volume_raw.map(BootVolume::from_value_lenient),
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

    /// `spec.<key>`, when present and not null.
    pub fn spec(&self, key: &str) -> Option<&'a Value> {
        self.raw
            .get("spec")
            .and_then(|s| s.get(key))
            .filter(|v| !v.is_null())
    }

    /// `spec.bmc.address`.
    pub fn bmc_address(&self) -> Option<&'a str> {
        self.spec("bmc")
            .and_then(|b| b.get("address"))
            .and_then(Value::as_str)
    }

    /// `status.provisioning.state`.
    pub fn provisioning_state(&self) -> Option<&'a str> {
        self.raw
            .pointer("/status/provisioning/state")
            .and_then(Value::as_str)
    }

    /// `status.operationalStatus`.
    pub fn operational_status(&self) -> Option<&'a str> {
        self.raw
            .pointer("/status/operationalStatus")
            .and_then(Value::as_str)
    }

    /// `status.provisioning.ID`: the Ironic node UUID once BMO registered the host.
    pub fn ironic_node_id(&self) -> Option<&'a str> {
        self.raw
            .pointer("/status/provisioning/ID")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }

    /// Whether `metadata.deletionTimestamp` is set.
    pub fn deleting(&self) -> bool {
        self.raw
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|v| !v.is_null())
    }
}

/// A JSON value read as `T` when it is an object; any other JSON type is recorded rather
/// than failing the whole parse, so a request with a malformed object can still be
/// answered with a field error and its uid.
#[derive(Debug)]
pub enum ObjectOr<T> {
    /// It was an object.
    Object(T),
    /// It was something else (named for the error message).
    Other(&'static str),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOr<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor, value::MapAccessDeserializer};
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = ObjectOr<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(ObjectOr::Object)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(ObjectOr::Other("an array"))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(ObjectOr::Other("a string"))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(ObjectOr::Other("a boolean"))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(ObjectOr::Other("a number"))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(ObjectOr::Other("a number"))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(ObjectOr::Other("a number"))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(ObjectOr::Other("null"))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// The parts of a BareMetalHost that [`HostView`] reads, parsed in one pass over the
/// request body.
///
/// Real hosts carry large blocks we never look at (`status.hardware`, `managedFields`):
/// skipping them while parsing, instead of building a `Value` for the whole object, is
/// most of the webhook's per-request cost. [`HostDoc::into_value`] gives a small `Value`
/// holding only the read parts, which [`HostView::new`] then reads as usual. Every leaf is
/// a `Value`, so no field type can fail the parse: the rules report wrong types.
#[derive(Debug, Default, Deserialize)]
pub struct HostDoc {
    #[serde(default)]
    metadata: Option<ObjectOr<MetaDoc>>,
    #[serde(default)]
    spec: Option<ObjectOr<SpecDoc>>,
    #[serde(default)]
    status: Option<ObjectOr<StatusDoc>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetaDoc {
    #[serde(default)]
    name: Option<Value>,
    #[serde(default)]
    generate_name: Option<Value>,
    #[serde(default)]
    namespace: Option<Value>,
    #[serde(default)]
    deletion_timestamp: Option<Value>,
}

/// Every `spec` field a rule or the mutation reads; keep in step with `rules::spec`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecDoc {
    #[serde(default)]
    boot_volume: Option<Value>,
    #[serde(default)]
    image: Option<Value>,
    #[serde(default)]
    custom_deploy: Option<Value>,
    #[serde(default)]
    externally_provisioned: Option<Value>,
    #[serde(default)]
    bmc: Option<Value>,
    #[serde(default, rename = "bootMACAddress")]
    boot_mac_address: Option<Value>,
    #[serde(default)]
    root_device_hints: Option<Value>,
    #[serde(default)]
    raid: Option<Value>,
    #[serde(default)]
    user_data: Option<Value>,
    #[serde(default)]
    network_data: Option<Value>,
    #[serde(default)]
    meta_data: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatusDoc {
    #[serde(default)]
    operational_status: Option<Value>,
    #[serde(default)]
    provisioning: Option<ObjectOr<ProvisioningDoc>>,
}

#[derive(Debug, Default, Deserialize)]
struct ProvisioningDoc {
    #[serde(default)]
    state: Option<Value>,
    #[serde(default, rename = "ID")]
    id: Option<Value>,
}

/// A JSON object of the fields that are present.
fn object<const N: usize>(fields: [(&str, Option<Value>); N]) -> Value {
    Value::Object(
        fields
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_owned(), v?)))
            .collect(),
    )
}

impl HostDoc {
    /// The read parts as a `Value` shaped like the original object.
    pub fn into_value(self) -> Result<Value, ViewError> {
        let metadata = match self.metadata {
            Some(ObjectOr::Object(m)) => Some(object([
                ("name", m.name),
                ("generateName", m.generate_name),
                ("namespace", m.namespace),
                ("deletionTimestamp", m.deletion_timestamp),
            ])),
            Some(ObjectOr::Other(_)) => return Err(ViewError::MetadataNotObject),
            None => None,
        };
        let spec = match self.spec {
            Some(ObjectOr::Object(s)) => Some(object([
                ("bootVolume", s.boot_volume),
                ("image", s.image),
                ("customDeploy", s.custom_deploy),
                ("externallyProvisioned", s.externally_provisioned),
                ("bmc", s.bmc),
                ("bootMACAddress", s.boot_mac_address),
                ("rootDeviceHints", s.root_device_hints),
                ("raid", s.raid),
                ("userData", s.user_data),
                ("networkData", s.network_data),
                ("metaData", s.meta_data),
            ])),
            Some(ObjectOr::Other(_)) => return Err(ViewError::SpecNotObject),
            None => None,
        };
        // A malformed status reads as no status, as `HostView` reads it.
        let status = match self.status {
            Some(ObjectOr::Object(s)) => {
                let provisioning = match s.provisioning {
                    Some(ObjectOr::Object(p)) => Some(object([("state", p.state), ("ID", p.id)])),
                    _ => None,
                };
                Some(object([
                    ("operationalStatus", s.operational_status),
                    ("provisioning", provisioning),
                ]))
            }
            _ => None,
        };
        Ok(object([
            ("metadata", metadata),
            ("spec", spec),
            ("status", status),
        ]))
    }
}

/// A BareMetalHost as read from a request: the read parts (see [`HostDoc`]), or why the
/// object cannot be read as a host. Deserializing never fails on the object's shape.
#[derive(Debug)]
pub struct HostSubset(pub Result<Value, ViewError>);

impl<'de> Deserialize<'de> for HostSubset {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self(match ObjectOr::<HostDoc>::deserialize(d)? {
            ObjectOr::Object(doc) => doc.into_value(),
            ObjectOr::Other(_) => Err(ViewError::NotAnObject),
        }))
    }
}

/// Parses a BareMetalHost from JSON text into a `Value` holding only what the rules and
/// the mutation read (see [`HostDoc`]).
pub fn parse_host_subset(json: &str) -> Result<Value, ViewError> {
    serde_json::from_str::<HostSubset>(json)
        .map_err(|e| ViewError::Json(e.to_string()))?
        .0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subset_keeps_what_the_rules_read_and_drops_the_rest() {
        let host = json!({
            "apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost",
            "metadata": {"name": "h", "namespace": "ns", "managedFields": [{"big": true}], "deletionTimestamp": null},
            "spec": {
                "bootVolume": {"volumeId": "v"}, "image": {"url": "u"}, "customDeploy": null,
                "externallyProvisioned": false, "bmc": {"address": "ipmi://x"}, "bootMACAddress": "m",
                "rootDeviceHints": {}, "raid": {}, "userData": {}, "networkData": {}, "metaData": {},
                "online": true, "firmware": {"x": 1}
            },
            "status": {"operationalStatus": "OK", "provisioning": {"state": "ready", "ID": "id", "image": {}},
                       "hardware": {"nics": [1, 2, 3]}}
        });
        let subset = parse_host_subset(&host.to_string()).expect("parse");
        assert_eq!(
            subset,
            json!({
                "metadata": {"name": "h", "namespace": "ns"},
                "spec": {
                    "bootVolume": {"volumeId": "v"}, "image": {"url": "u"}, "externallyProvisioned": false,
                    "bmc": {"address": "ipmi://x"}, "bootMACAddress": "m", "rootDeviceHints": {}, "raid": {},
                    "userData": {}, "networkData": {}, "metaData": {}
                },
                "status": {"operationalStatus": "OK", "provisioning": {"state": "ready", "ID": "id"}}
            })
        );
        // The view reads the subset exactly as it reads the whole object.
        let (full, part) = (
            HostView::new(&host).expect("view"),
            HostView::new(&subset).expect("view"),
        );
        assert_eq!((full.name, full.namespace), (part.name, part.namespace));
        assert_eq!(full.boot_volume, part.boot_volume);
        assert_eq!(full.provisioning_state(), part.provisioning_state());
        assert_eq!(full.bmc_address(), part.bmc_address());
        assert!(parse_host_subset(r#"{"spec": "x"}"#).is_err());
        assert!(parse_host_subset(r#""host""#).is_err());
        assert_eq!(parse_host_subset("{}").expect("parse"), json!({}));
    }
}
