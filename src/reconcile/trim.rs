//! What the reflector keeps of a BareMetalHost, and which changes wake the reconciler.
//!
//! A metal3 host object is mostly things we never read: `managedFields` (often half the
//! object), `last-applied-configuration` and other annotations, labels, the BMC and
//! hardware details in `spec`, and in `status` the hardware inventory, power and operation
//! history. A pass reads only [`KEPT`], our own `bootvolume.metal3.io/` annotations, the
//! generation and the deletion timestamp ([`super::apply::HostSpec`] and the handshake's
//! host facts), so [`trim_host`] drops the rest before the object enters the store, and
//! [`fingerprint`] hashes exactly those parts: a status update we do not read (BMO updates
//! status often) triggers no pass.

use kube::api::DynamicObject;
use serde_json::{Map, Value};
use std::hash::{Hash, Hasher};

/// The paths of the host's body a pass reads: configuration from `spec.bootVolume` and the
/// node ID; the handshake from the provisioning fields, `online`, and BMO's error type.
pub const KEPT: [&str; 9] = [
    "/spec/bootVolume",
    "/spec/externallyProvisioned",
    "/spec/image",
    "/spec/customDeploy",
    "/spec/online",
    "/status/provisioning/ID",
    "/status/provisioning/state",
    "/status/operationalStatus",
    "/status/errorType",
];

/// The prefix of the annotations a pass reads (the handshake's opt-out and bookkeeping).
pub const OUR_ANNOTATIONS: &str = "bootvolume.metal3.io/";

/// Keeps only what a pass reads (plus the name, namespace, UID, generation and
/// resourceVersion the store, the handshake and Events need).
pub fn trim_host(obj: &mut DynamicObject) {
    let meta = &mut obj.metadata;
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, _| k.starts_with(OUR_ANNOTATIONS));
    }
    // Most hosts have none of ours: drop the emptied map and the tree node it may still hold.
    if meta.annotations.as_ref().is_some_and(|a| a.is_empty()) {
        meta.annotations = None;
    }
    meta.labels = None;
    meta.owner_references = None;
    meta.finalizers = None;
    meta.generate_name = None;
    meta.creation_timestamp = None;
    let mut data = Value::Object(Map::from_iter([("spec".to_owned(), Value::Object(Map::new()))]));
    for path in KEPT {
        if let Some(v) = obj.data.pointer_mut(path).filter(|v| !v.is_null()) {
            insert(&mut data, path, v.take());
        }
    }
    obj.data = data;
}

/// Sets `path` (`/a/b/c`) in `root`, creating the objects on the way.
fn insert(root: &mut Value, path: &str, value: Value) {
    let mut at = root;
    let mut keys = path[1..].split('/').peekable();
    while let Some(key) = keys.next() {
        let Value::Object(map) = at else { return };
        if keys.peek().is_none() {
            map.insert(key.to_owned(), value);
            return;
        }
        at = map
            .entry(key.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

/// A hash of what a pass reads: equal fingerprints, no new pass.
pub fn fingerprint(obj: &DynamicObject) -> Option<u64> {
    // Fixed keys: the same object hashes the same on every call.
    let mut h = std::hash::DefaultHasher::new();
    obj.metadata.deletion_timestamp.is_some().hash(&mut h);
    obj.metadata.generation.hash(&mut h);
    if let Some(annotations) = &obj.metadata.annotations {
        // A BTreeMap: iteration order is fixed.
        annotations
            .iter()
            .filter(|(k, _)| k.starts_with(OUR_ANNOTATIONS))
            .for_each(|kv| kv.hash(&mut h));
    }
    for path in KEPT {
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
                "generation": 3,
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "x".repeat(2000),
                    "bootvolume.metal3.io/handed-over-generation": "3",
                    "bootvolume.metal3.io/adopt-retry": "t-1"},
                "labels": {"a": "b"}, "finalizers": ["baremetalhost.metal3.io"],
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:spec": {}}}]},
            "spec": {"online": true, "externallyProvisioned": true, "bmc": {"address": "redfish://x", "credentialsName": "bmc"},
                "bootVolume": {"volumeId": "v", "volumeDriver": "cinder", "connectorId": "iqn.2004-10.com.example:h"}},
            "status": {"provisioning": {"ID": "node-1", "state": "provisioned"},
                "operationalStatus": "OK", "errorType": "provisioned registration error", "hardware": {"cpu": {"count": 64}}, "poweredOn": true,
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
        // The handshake reads the same facts from both.
        let facts = |o: &DynamicObject| {
            let raw = serde_json::to_value(o).unwrap();
            crate::reconcile::host_api::host_facts(&raw, &Default::default())
        };
        assert_eq!(facts(&trimmed), facts(&full));
        assert!(facts(&full).externally_provisioned && facts(&full).adoption_failure_recorded);
        assert_eq!(facts(&full).handed_over_generation, Some(3));
        let before = serde_json::to_string(&full).unwrap().len();
        let after = serde_json::to_string(&trimmed).unwrap().len();
        assert!(after * 5 < before, "{after} of {before} bytes kept");
        assert!(trimmed.metadata.managed_fields.is_none());
        assert_eq!(trimmed.metadata.annotations.as_ref().map(|a| a.len()), Some(2));
        assert_eq!(trimmed.metadata.uid.as_deref(), Some("u-1"));
        assert!(trimmed.data.pointer("/status/hardware").is_none());
        // The store still keys it the same way.
        let r = kube::runtime::reflector::ObjectRef::from_obj_with(&trimmed, host_resource());
        assert_eq!((r.name.as_str(), r.namespace.as_deref()), ("h", Some("ns")));
    }

    #[test]
    fn only_changes_a_pass_reads_change_the_fingerprint() {
        let annotate = |k: &'static str, v: &'static str| -> Box<dyn Fn(&mut DynamicObject)> {
            Box::new(move |o: &mut DynamicObject| {
                o.metadata
                    .annotations
                    .get_or_insert_default()
                    .insert(k.into(), v.into());
            })
        };
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
            ("annotation", annotate("k", "v"), false),
            (
                "our annotation",
                annotate("bootvolume.metal3.io/handoff", "false"),
                true,
            ),
            (
                "provisioning state",
                Box::new(|o: &mut DynamicObject| {
                    o.data["status"]["provisioning"]["state"] = json!("externally provisioned")
                }),
                true,
            ),
            (
                "adoption error cleared",
                Box::new(|o: &mut DynamicObject| o.data["status"]["errorType"] = json!("")),
                true,
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
