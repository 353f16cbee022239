//! What the reflector keeps of a BareMetalHost, and which changes wake the reconciler.
//!
//! A metal3 host object is mostly things we never read: `managedFields` (often half the
//! object), `last-applied-configuration` and other annotations, labels, the BMC and
//! hardware details in `spec`, and in `status` the hardware inventory, power and operation
//! history. The reconciler reads `spec.bootVolume`, `status.provisioning.ID`,
//! `status.operationalStatus` and `metadata.deletionTimestamp` only ([`super::apply::HostSpec`]),
//! so [`trim_host`] drops the rest before the object enters the store, and
//! [`fingerprint`] hashes exactly those parts, so a status update we do not read (BMO
//! updates status often) triggers no pass.

use kube::api::DynamicObject;
use serde_json::{Map, Value};
use std::hash::{Hash, Hasher};

/// Keeps only what a pass reads (plus the name, namespace, UID and resourceVersion the
/// store and Events need).
pub fn trim_host(obj: &mut DynamicObject) {
    let meta = &mut obj.metadata;
    meta.managed_fields = None;
    meta.annotations = None;
    meta.labels = None;
    meta.owner_references = None;
    meta.finalizers = None;
    meta.generate_name = None;
    meta.creation_timestamp = None;
    let pick = |from: &Value, path: &str| from.pointer(path).filter(|v| !v.is_null()).cloned();
    let boot_volume = pick(&obj.data, "/spec/bootVolume");
    let id = pick(&obj.data, "/status/provisioning/ID");
    let operational = pick(&obj.data, "/status/operationalStatus");
    let mut spec = Map::new();
    spec.extend(boot_volume.map(|v| ("bootVolume".to_owned(), v)));
    let mut status = Map::new();
    if let Some(id) = id {
        status.insert(
            "provisioning".into(),
            Value::Object(Map::from_iter([("ID".into(), id)])),
        );
    }
    status.extend(operational.map(|v| ("operationalStatus".to_owned(), v)));
    let mut data = Map::new();
    data.insert("spec".into(), Value::Object(spec));
    if !status.is_empty() {
        data.insert("status".into(), Value::Object(status));
    }
    obj.data = Value::Object(data);
}

/// A hash of what a pass reads: equal fingerprints, no new pass.
pub fn fingerprint(obj: &DynamicObject) -> Option<u64> {
    // Fixed keys: the same object hashes the same on every call.
    let mut h = std::hash::DefaultHasher::new();
    obj.metadata.deletion_timestamp.is_some().hash(&mut h);
    for path in [
        "/spec/bootVolume",
        "/status/provisioning/ID",
        "/status/operationalStatus",
    ] {
        // serde_json's Map is ordered (BTreeMap), so equal values print equally.
        obj.data.pointer(path).map(Value::to_string).hash(&mut h);
    }
    Some(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::{apply::HostSpec, controller::host_resource};
    use serde_json::json;

    fn full_host() -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost",
            "metadata": {"name": "h", "namespace": "ns", "uid": "u-1", "resourceVersion": "7",
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "x".repeat(2000)},
                "labels": {"a": "b"}, "finalizers": ["baremetalhost.metal3.io"],
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:spec": {}}}]},
            "spec": {"online": true, "bmc": {"address": "redfish://x", "credentialsName": "bmc"},
                "bootVolume": {"volumeId": "v", "volumeDriver": "cinder", "connectorId": "iqn.2004-10.com.example:h"}},
            "status": {"provisioning": {"ID": "node-1", "state": "provisioned"},
                "operationalStatus": "OK", "hardware": {"cpu": {"count": 64}}, "poweredOn": true,
                "lastUpdated": "2026-01-01T00:00:00Z"}
        }))
        .unwrap()
    }

    #[test]
    fn trimming_keeps_what_a_pass_reads_and_drops_the_rest() {
        let full = full_host();
        let mut trimmed = full.clone();
        trim_host(&mut trimmed);
        let read = |o: &DynamicObject| HostSpec::from_value(&serde_json::to_value(o).unwrap()).unwrap();
        assert_eq!(read(&trimmed), read(&full));
        let before = serde_json::to_string(&full).unwrap().len();
        let after = serde_json::to_string(&trimmed).unwrap().len();
        assert!(after * 5 < before, "{after} of {before} bytes kept");
        assert!(trimmed.metadata.managed_fields.is_none() && trimmed.metadata.annotations.is_none());
        assert_eq!(trimmed.metadata.uid.as_deref(), Some("u-1"));
        assert!(trimmed.data.pointer("/status/hardware").is_none());
        // The store still keys it the same way.
        let r = kube::runtime::reflector::ObjectRef::from_obj_with(&trimmed, host_resource());
        assert_eq!((r.name.as_str(), r.namespace.as_deref()), ("h", Some("ns")));
    }

    #[test]
    fn only_changes_a_pass_reads_change_the_fingerprint() {
        let base = full_host();
        let fp = |f: &dyn Fn(&mut DynamicObject)| {
            let mut o = base.clone();
            f(&mut o);
            trim_host(&mut o);
            fingerprint(&o)
        };
        let same = fp(&|_| {});
        assert_eq!(
            same,
            fingerprint(&{
                let mut o = base.clone();
                trim_host(&mut o);
                o
            })
        );
        for (name, change, differs) in [
            (
                "power state",
                Box::new(|o: &mut DynamicObject| o.data["status"]["poweredOn"] = json!(false))
                    as Box<dyn Fn(&mut DynamicObject)>,
                false,
            ),
            (
                "lastUpdated",
                Box::new(|o: &mut DynamicObject| o.data["status"]["lastUpdated"] = json!("later")),
                false,
            ),
            (
                "annotation",
                Box::new(|o: &mut DynamicObject| {
                    o.metadata
                        .annotations
                        .get_or_insert_default()
                        .insert("k".into(), "v".into());
                }),
                false,
            ),
            (
                "bootVolume",
                Box::new(|o: &mut DynamicObject| o.data["spec"]["bootVolume"]["volumeId"] = json!("w")),
                true,
            ),
            (
                "node ID",
                Box::new(|o: &mut DynamicObject| o.data["status"]["provisioning"]["ID"] = json!("node-2")),
                true,
            ),
            (
                "detached",
                Box::new(|o: &mut DynamicObject| o.data["status"]["operationalStatus"] = json!("detached")),
                true,
            ),
            (
                "deleting",
                Box::new(|o: &mut DynamicObject| {
                    o.metadata.deletion_timestamp = Some(
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
                    )
                }),
                true,
            ),
        ] {
            assert_eq!(fp(&change) != same, differs, "{name}");
        }
    }
}
