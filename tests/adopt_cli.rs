//! `ironic-apply --adopt` against the real Ironic: a node with a port for its boot MAC,
//! from `enroll` and from `manageable`, ends `active` booting from its volume, and Ironic's
//! iPXE script in its http root `sanhook`s our target with our initiator and CHAP user.

mod ironic_support;

use ironic_support::*;
use reqwest::Method;
use serde_json::{Value, json};

const PASSWORD: &str = "Adopt-cli-chap-pw-3";

/// Enrolls a node the way baremetal-operator registers one (fake-hardware, `ipxe`, UEFI
/// capability) with a PXE port for `mac`.
async fn enroll_with_port(ns: &str, mac: &str) -> String {
    let c = client();
    let uuid = enroll(
        &c,
        ns,
        json!({"boot_interface": "ipxe", "deploy_interface": "direct",
               "properties": {"capabilities": "boot_mode:uefi"}}),
    )
    .await;
    let _: Value = c
        .send(
            Method::POST,
            "/v1/ports",
            Some(&json!({"node_uuid": uuid, "address": mac, "pxe_enabled": true})),
        )
        .await
        .expect("create port");
    uuid
}

fn adopt_cli(p: &HostParams) -> Run {
    let (_dir, file) = manifest(&[p.host(), secret(&p.ns, "chap", "chapuser", PASSWORD)]);
    let run = ironic_apply(&file, &ironic().url, &["--adopt", "--adopt-timeout", "60"]);
    assert!(!run.all().contains(PASSWORD), "password leaked:\n{}", run.all());
    run
}

/// The steps printed for node `uuid`, in order, without the host/node prefix.
fn steps(run: &Run, uuid: &str) -> Vec<String> {
    let prefix = format!("node {uuid}: ");
    run.stdout
        .lines()
        .filter_map(|l| l.split_once(&prefix).map(|(_, s)| s.to_owned()))
        .collect()
}

async fn assert_boots_from_volume(p: &HostParams, uuid: &str, mac: &str) {
    let c = client();
    let n = node(&c, uuid).await;
    let (_, targets) = volumes(&c, uuid).await;
    assert_eq!(n["provision_state"], "active");
    assert_eq!(n["power_state"], "power on");
    assert_eq!(
        n["driver_internal_info"]["boot_from_volume"], targets[0].uuid,
        "Ironic boots the node from our target"
    );
    assert_eq!(n["extra"]["bootvolume_boot_device"], "pxe");
    let root = ironic().http_root;
    let script = std::fs::read_to_string(root.join(uuid).join("config")).expect("iPXE script");
    for want in [
        format!("set initiator-iqn {}", p.connector_id),
        "set username chapuser".to_owned(),
        "sanhook --drive 0x80 iscsi:192.0.2.10::3260:0:iqn.2010-10.com.example:vol-bfv".to_owned(),
    ] {
        assert!(script.contains(&want), "{want:?} not in\n{script}");
    }
    let link = root.join("pxelinux.cfg").join(mac.replace(':', "-"));
    assert!(
        link.exists(),
        "per-MAC link {} missing: iPXE could not find the script",
        link.display()
    );
}

#[tokio::test]
async fn adopt_from_enroll_boots_from_the_volume() {
    let p = HostParams::new(&unique_namespace());
    let mac = mac_for(&p.ns);
    let uuid = enroll_with_port(&p.ns, &mac).await;

    let run = adopt_cli(&p);
    assert_eq!(run.code, 0, "{}", run.all());
    let steps = steps(&run, &uuid);
    let position = |prefix: &str| {
        steps
            .iter()
            .position(|s| s.starts_with(prefix))
            .unwrap_or_else(|| panic!("no step {prefix:?} in {steps:#?}"))
    };
    let order = [
        position("did create volume target"),
        position("did update node: capabilities"),
        position("manage (enroll -> manageable)"),
        position("set persistent boot device pxe"),
        position("adopt (manageable -> active)"),
        position("power on"),
        position("active, booting from volume target"),
    ];
    assert!(order.is_sorted(), "steps out of order: {steps:#?}");
    // From `enroll` the storage interface shares the node PATCH (adoption is two
    // transitions away); from `manageable` it is a PATCH of its own (next test).
    assert!(
        steps[order[1]].contains("storage_interface noop -> external"),
        "{steps:#?}"
    );
    assert_boots_from_volume(&p, &uuid, &mac).await;
    let calls = run.stderr.lines().find(|l| l.contains("Ironic calls:"));
    eprintln!("ironic-apply --adopt from enroll: {calls:?}");
}

#[tokio::test]
async fn adopt_from_manageable_boots_from_the_volume() {
    let p = HostParams::new(&unique_namespace());
    let mac = mac_for(&p.ns);
    let uuid = enroll_with_port(&p.ns, &mac).await;
    provision(&client(), &uuid, "manage", "manageable").await;

    let run = adopt_cli(&p);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(!run.stdout.contains("manage ("), "{}", run.all());
    // One transition from adoption: the storage interface in a PATCH of its own, last.
    assert!(
        run.stdout
            .contains("did update node: storage_interface noop -> external"),
        "{}",
        run.all()
    );
    assert!(
        run.stdout.contains("adopt (manageable -> active)"),
        "{}",
        run.all()
    );
    assert_boots_from_volume(&p, &uuid, &mac).await;

    // Again on the active node: nothing to write, exit 0.
    let again = adopt_cli(&p);
    assert_eq!(again.code, 0, "{}", again.all());
    assert!(again.stdout.contains("in sync"), "{}", again.all());
    assert!(
        again.stderr.contains("0 POST, 0 PATCH, 0 PUT, 0 DELETE"),
        "{}",
        again.all()
    );
}

#[tokio::test]
async fn adopt_of_a_node_active_without_our_target_fails() {
    let p = HostParams::new(&unique_namespace());
    let mac = mac_for(&p.ns);
    let c = client();
    let uuid = enroll_with_port(&p.ns, &mac).await;
    provision(&c, &uuid, "manage", "manageable").await;
    provision(&c, &uuid, "adopt", "active").await;

    let run = adopt_cli(&p);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stderr.contains("not our boot target"), "{}", run.all());
}
