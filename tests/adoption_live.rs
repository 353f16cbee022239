//! The adoption handshake against a real Ironic, with a simulated baremetal-operator.
//!
//! Run with `scripts/with-ironic.sh cargo test --test adoption_live` (see tests/ironic_support).

mod bmo_sim;
mod ironic_support;

use bmo_sim::{Bmo, BmoConfig, HostStore};
use ironic_support::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A host whose boot MAC is unique to its namespace (Ironic refuses a MAC on two nodes).
fn test_host(p: &HostParams, online: bool, externally_provisioned: bool) -> Value {
    let mut host = p.host();
    let hex = &p.ns[3..11];
    let mac = format!(
        "52:54:{}:{}:{}:{}",
        &hex[0..2],
        &hex[2..4],
        &hex[4..6],
        &hex[6..8]
    );
    host["spec"]["bootMACAddress"] = json!(mac);
    host["spec"]["online"] = json!(online);
    if externally_provisioned {
        host["spec"]["externallyProvisioned"] = json!(true);
    }
    host
}

/// Polls `f` until true; on timeout panics with the simulator's timeline and the host.
async fn wait_until(
    what: &str,
    bmo: &Bmo,
    store: &HostStore,
    timeout: Duration,
    mut f: impl AsyncFnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}\nhost: {:#}",
            bmo.stats().log.join("\n"),
            store.get()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn simulator_alone_registers_to_available_and_powers_on() {
    let c = client();
    let p = HostParams::new(&unique_namespace());
    let store = HostStore::new(test_host(&p, true, false));
    let created = store.get();
    let bmo = Bmo::start(client(), store.clone(), BmoConfig::default());
    wait_until(
        "available and on",
        &bmo,
        &store,
        Duration::from_secs(20),
        async || {
            let h = store.get();
            h["status"]["provisioning"]["state"] == "available" && h["status"]["poweredOn"] == true
        },
    )
    .await;
    let h = store.get();
    let uuid = h["status"]["provisioning"]["ID"].as_str().unwrap().to_owned();
    let n = node(&c, &uuid).await;
    assert_eq!(n["provision_state"], "manageable");
    assert_eq!(n["power_state"], "power on");
    assert_eq!(n["boot_interface"], "ipxe");
    assert_eq!(n["properties"]["capabilities"], "boot_mode:uefi");
    assert_eq!(
        h["spec"], created["spec"],
        "BMO's whole-object updates keep bootVolume"
    );
    assert_eq!(h["metadata"]["finalizers"], json!(["baremetalhost.metal3.io"]));
    let stats = bmo.stop().await;
    eprintln!("{}", stats.log.join("\n"));
}

/// The simulator on its own: an externally provisioned host is adopted as a plain node (no
/// one configured a boot volume), powered on per `online`, and the base reboot annotation is
/// honoured as BMO does (power off, annotation removed by BMO, power on).
#[tokio::test]
async fn simulator_alone_adopts_and_honours_the_reboot_annotation() {
    let c = client();
    let p = HostParams::new(&unique_namespace());
    let store = HostStore::new(test_host(&p, true, true));
    let config = BmoConfig {
        adopt_delay: Duration::ZERO,
        ..BmoConfig::default()
    };
    let bmo = Bmo::start(client(), store.clone(), config);
    wait_until(
        "adopted and on",
        &bmo,
        &store,
        Duration::from_secs(20),
        async || {
            let h = store.get();
            h["status"]["provisioning"]["state"] == "externally provisioned"
                && h["status"]["poweredOn"] == true
        },
    )
    .await;
    let uuid = store.get()["status"]["provisioning"]["ID"]
        .as_str()
        .unwrap()
        .to_owned();
    let n = node(&c, &uuid).await;
    assert_eq!(n["provision_state"], "active");
    assert!(n["driver_internal_info"]["boot_from_volume"].is_null());

    store.user_update("reboot", |h| {
        h["metadata"]["annotations"] = json!({"reboot.metal3.io": "{\"mode\":\"hard\"}"});
    });
    wait_until("rebooted", &bmo, &store, Duration::from_secs(20), async || {
        let s = bmo.stats();
        s.power_on_requests == 2 && store.get()["status"]["poweredOn"] == true
    })
    .await;
    let stats = bmo.stop().await;
    assert_eq!(stats.power_off_requests, 1);
    assert_eq!(stats.reboot_annotation_removals, 1);
    assert_eq!(stats.adopt_requests, 1);
    assert!(stats.adopt_failures.is_empty());
    assert!(
        store.get()["metadata"]["annotations"]
            .get("reboot.metal3.io")
            .is_none()
    );
    assert_eq!(node(&c, &uuid).await["power_state"], "power on");
    eprintln!("{}", stats.log.join("\n"));
}
