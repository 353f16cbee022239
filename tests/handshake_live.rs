//! The handshake's edge ([`host_pass`]) against the real Ironic, with an in-memory host
//! writer; the test plays baremetal-operator's part by hand (adopt, status updates).

mod ironic_support;

use bootvolume::reconcile::{
    Error,
    handshake::{Options, Phase, REASON_ADOPTION_RETRY, REASON_BOOTING, REASON_HANDED_OVER},
    host_api::{HostWriter, host_pass},
};
use ironic_support::*;
use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};
use std::sync::Mutex;

const PASSWORD: &str = "Handshake-live-pw-5";

/// Records every merge patch and applies it to the in-memory host.
#[derive(Default)]
struct MemoryHost {
    host: Mutex<Value>,
    patches: Mutex<Vec<Value>>,
}

impl HostWriter for MemoryHost {
    async fn patch_host(&self, _namespace: &str, _name: &str, merge_patch: &Value) -> Result<(), Error> {
        self.patches.lock().unwrap().push(merge_patch.clone());
        json_patch::merge(&mut self.host.lock().unwrap(), merge_patch);
        Ok(())
    }
}

impl MemoryHost {
    fn new(host: Value) -> Self {
        Self {
            host: Mutex::new(host),
            patches: Mutex::default(),
        }
    }
    fn get(&self) -> Value {
        self.host.lock().unwrap().clone()
    }
    fn set(&self, pointer_value: &[(&str, Value)]) {
        let mut h = self.host.lock().unwrap();
        for (pointer, value) in pointer_value {
            let mut patch = value.clone();
            for key in pointer.trim_start_matches('/').split('/').rev() {
                patch = json!({ key: patch });
            }
            json_patch::merge(&mut h, &patch);
        }
    }
    fn patches(&self) -> Vec<Value> {
        self.patches.lock().unwrap().clone()
    }
}

fn chap_secret(ns: &str) -> Secret {
    serde_json::from_value(secret(ns, "chap", "chapuser", PASSWORD)).unwrap()
}

#[tokio::test]
async fn hand_over_then_adoption_boots_from_the_volume_with_one_reboot_request() {
    let c = client();
    let p = HostParams::new(&unique_namespace());
    let uuid = enroll(
        &c,
        &p.ns,
        json!({"boot_interface": "ipxe", "deploy_interface": "direct"}),
    )
    .await;
    provision(&c, &uuid, "manage", "manageable").await;
    provision(&c, &uuid, "provide", "available").await;
    power(&c, &uuid, "power on").await;
    let mut raw = p.host();
    raw["metadata"]["generation"] = json!(1);
    raw["status"] = json!({"provisioning": {"state": "available", "ID": uuid}});
    let host = MemoryHost::new(raw);
    let secret = chap_secret(&p.ns);
    let options = Options::default();

    let ironic = client();
    let report = host_pass(&ironic, &host, &host.get(), Some(&secret), &options)
        .await
        .unwrap();
    let calls = ironic.calls();
    eprintln!("full hand-over, one pass: {calls:?} ({} calls)", calls.total());
    // Node, connectors, targets read once: the answer of the last configuration write (the
    // node PATCH) stands in for a read after the writes. From `available` one node PATCH
    // carries capability, marker, storage interface and the record of the boot device,
    // PUT just before it; the other PUT is `manage`.
    assert_eq!(
        (calls.get, calls.post, calls.patch, calls.put),
        (3, 2, 1, 2),
        "{calls:?}"
    );
    let changes = &report.outcome.changes;
    assert_eq!(changes.len(), 4, "{changes:?}");
    assert_eq!(changes[2], "set persistent boot device pxe", "{changes:?}");
    assert!(changes[3].ends_with("record boot device pxe"), "{changes:?}");
    assert_eq!(report.phase, Some(Phase::HandedOver), "{report:?}");
    assert!(
        report.events.iter().any(|e| e.reason == REASON_HANDED_OVER),
        "{report:?}"
    );
    assert_eq!(
        report.steps,
        [
            "manage the node (available -> manageable)",
            "hand over to baremetal-operator: spec.externallyProvisioned true, reboot annotation (node is powered on)"
        ]
    );
    assert_eq!(host.patches().len(), 1);
    assert_eq!(
        host.get()["metadata"]["annotations"]["reboot.metal3.io"],
        r#"{"mode":"hard"}"#
    );
    assert_eq!(node(&c, &uuid).await["provision_state"], "manageable");

    // BMO: externally provisioned, adopts.
    host.set(&[
        ("/metadata/generation", json!(2)),
        ("/status/provisioning/state", json!("externally provisioned")),
    ]);
    provision(&c, &uuid, "adopt", "active").await;
    let report = host_pass(&client(), &host, &host.get(), Some(&secret), &options)
        .await
        .unwrap();
    assert_eq!(report.phase, Some(Phase::BootingFromVolume), "{report:?}");
    assert_eq!(
        report.events.iter().map(|e| e.reason).collect::<Vec<_>>(),
        [REASON_BOOTING]
    );
    // Steady state: reads only, no Event, no host write; exactly one reboot was asked.
    let quiet = client();
    let report = host_pass(&quiet, &host, &host.get(), Some(&secret), &options)
        .await
        .unwrap();
    assert!(report.events.is_empty() && report.steps.is_empty(), "{report:?}");
    assert_eq!(quiet.calls().writes(), 0);
    assert_eq!(host.patches().len(), 1, "{:?}", host.patches());
    let script =
        std::fs::read_to_string(ironic_support::ironic().http_root.join(&uuid).join("config")).unwrap();
    assert!(
        script.contains(&format!("set initiator-iqn {}", p.connector_id)),
        "{script}"
    );
    assert!(script.contains("sanhook"), "{script}");
}

#[tokio::test]
async fn a_failed_adoption_is_retried_at_once_when_configured_and_seen_by_bmo() {
    let c = client();
    let p = HostParams::new(&unique_namespace());
    let uuid = enroll(
        &c,
        &p.ns,
        json!({"boot_interface": "ipxe", "deploy_interface": "direct"}),
    )
    .await;
    // BMO was first: our target exists (created before the capability), adopt fails.
    let _: Value = c
        .send(
            reqwest::Method::POST,
            "/v1/volume/targets",
            Some(&json!({"node_uuid": uuid, "volume_type": "iscsi", "boot_index": 0, "volume_id": "v-race",
                         "properties": {"target_iqn": "iqn.2010-10.com.example:vol-bfv", "target_portal": "192.0.2.10:3260",
                                        "target_lun": 0, "auth_method": "None"}})),
        )
        .await
        .unwrap();
    provision(&c, &uuid, "manage", "manageable").await;
    provision(&c, &uuid, "adopt", "adopt failed").await;
    let mut raw = p.host();
    raw["metadata"]["generation"] = json!(2);
    raw["spec"]["externallyProvisioned"] = json!(true);
    raw["status"] = json!({"provisioning": {"state": "externally provisioned", "ID": uuid}});
    let host = MemoryHost::new(raw);
    let secret = chap_secret(&p.ns);
    let options = Options::default();

    // BMO has not recorded the failure yet: configure, but do not poke.
    let report = host_pass(&client(), &host, &host.get(), Some(&secret), &options)
        .await
        .unwrap();
    assert!(host.patches().is_empty(), "{report:?}");
    assert!(report.outcome.blocked.is_empty(), "{report:?}");
    // BMO records it: one poke, once.
    host.set(&[("/status/errorType", json!("provisioned registration error"))]);
    for _ in 0..2 {
        let report = host_pass(&client(), &host, &host.get(), Some(&secret), &options)
            .await
            .unwrap();
        assert_eq!(report.phase, Some(Phase::HandedOver), "{report:?}");
        let pokes = report
            .events
            .iter()
            .filter(|e| e.reason == REASON_ADOPTION_RETRY)
            .count();
        assert!(pokes <= 1);
    }
    let patches = host.patches();
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert!(
        patches[0]["metadata"]["annotations"]["bootvolume.metal3.io/adopt-retry"]
            .as_str()
            .unwrap()
            .starts_with(&uuid)
    );
    // BMO's immediate reconcile re-adopts: now it boots from the volume.
    provision(&c, &uuid, "adopt", "active").await;
    let n = node(&c, &uuid).await;
    assert!(n["driver_internal_info"]["boot_from_volume"].is_string(), "{n}");
    let report = host_pass(&client(), &host, &host.get(), Some(&secret), &options)
        .await
        .unwrap();
    assert_eq!(report.phase, Some(Phase::BootingFromVolume), "{report:?}");
}
