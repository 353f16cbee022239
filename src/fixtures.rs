//! Test-only builders for BareMetalHost JSON (`Host::external().set(..).remove(..)`).

use serde_json::{Value, json};

/// A BareMetalHost document under construction.
#[derive(Clone, Debug)]
pub struct Host(pub Value);

impl Host {
    /// A valid external (iSCSI target given directly) host with CHAP from a Secret.
    pub fn external() -> Self {
        Self(json!({
            "apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost",
            "metadata": {"name": "host-0", "namespace": "metal3"},
            "spec": {
                "online": true,
                "bootMACAddress": "00:11:22:33:44:55",
                "bmc": {"address": "redfish://192.0.2.1/redfish/v1/Systems/1", "credentialsName": "host-0-bmc"},
                "bootVolume": {
                    "volumeId": "vol-0001",
                    "volumeDriver": "external",
                    "connectorId": "iqn.2004-10.com.example:host-0",
                    "iscsiTarget": {"iqn": "iqn.2004-10.com.example:vol-0001", "portal": "192.0.2.10:3260", "lun": 0},
                    "iscsiCredentialsName": "host-0-chap"
                }
            }
        }))
    }

    /// A valid cinder host: Cinder supplies the target and credentials.
    pub fn cinder() -> Self {
        Self::external()
            .remove("/spec/bootVolume/iscsiTarget")
            .remove("/spec/bootVolume/iscsiCredentialsName")
            .set(
                "/spec/bootVolume",
                json!({
                    "volumeId": "0b3f0c53-5c36-4b43-9d0d-6c3b8d1f1e2a",
                    "volumeDriver": "cinder",
                    "connectorId": "iqn.2004-10.com.example:host-0"
                }),
            )
    }

    /// A host without bootVolume.
    pub fn plain() -> Self {
        Self::external().remove("/spec/bootVolume")
    }

    /// Sets the value at a JSON pointer, creating missing parent objects.
    pub fn set(mut self, pointer: &str, value: Value) -> Self {
        let mut cur = &mut self.0;
        let tokens: Vec<&str> = pointer.split('/').skip(1).collect();
        for (i, t) in tokens.iter().enumerate() {
            if !cur.is_object() {
                *cur = json!({});
            }
            let map = cur.as_object_mut().expect("object");
            if i + 1 == tokens.len() {
                map.insert((*t).to_owned(), value);
                return self;
            }
            cur = map.entry((*t).to_owned()).or_insert_with(|| json!({}));
        }
        self.0 = value;
        self
    }

    /// Removes the value at a JSON pointer (no-op when absent).
    pub fn remove(mut self, pointer: &str) -> Self {
        if let Some((parent, key)) = pointer.rsplit_once('/')
            && let Some(Value::Object(m)) = self.0.pointer_mut(parent)
        {
            m.remove(key);
        }
        self
    }

    /// Sets `status.provisioning.state`.
    pub fn in_state(self, state: &str) -> Self {
        self.set("/status/provisioning/state", json!(state))
    }
}
