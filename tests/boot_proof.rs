//! Proof that a configured host boots: a QEMU virtual machine with no disk network-boots
//! through iPXE and the very script a real Ironic wrote for the node, logs in to a real
//! iSCSI target (tgtd on loopback, CHAP, initiator ACL), and runs the boot sector of the
//! volume, which prints a marker and this run's nonce read from the volume's last sector.
//!
//! The negative cases must not boot, and show why: a wrong CHAP secret, a wrong LUN, an
//! initiator outside the target's ACL. See tests/boot_support for the machinery and
//! docs/boot-proof.md for what it shows and how long it takes.
//!
//! Needs Ironic (`scripts/with-ironic.sh cargo nextest run --test boot_proof`) and the
//! packages `qemu-system-x86 ipxe-qemu tgt nasm` (installed by the test when running as root).

mod boot_support;
mod ironic_support;

use boot_support::{Boot, Disk, LUN, Target, TargetSpec, VmSpec};
use bootvolume::ironic::IronicClient;
use ironic_support::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

const PASSWORD: &str = "Zq9-boot-chap-secret";
const USERNAME: &str = "chapuser";
const TARGET_IQN: &str = "iqn.2010-10.com.example:vol-boot";
/// A good boot takes about 6 s of TCG emulation on an idle 2-core machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// The link iPXE prints with each error (its banner's link has no path).
const IPXE_ERROR: &str = "(http://ipxe.org/";

/// One test's world: a directory, a fresh disk (new nonce), an Ironic client.
struct Lab {
    dir: tempfile::TempDir,
    disk: Disk,
    ironic: IronicClient,
}

impl Lab {
    fn new() -> Lab {
        boot_support::require_tools();
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = Disk::create(dir.path());
        Lab {
            dir,
            disk,
            ironic: client(),
        }
    }

    /// A target serving the disk to `initiators` with `password`.
    fn target(&self, password: &str, initiators: &[&str]) -> Target {
        Target::start(
            self.dir.path(),
            &TargetSpec {
                iqn: TARGET_IQN,
                disk: &self.disk,
                username: USERNAME,
                password,
                initiators,
            },
        )
    }

    /// Boots a VM (on a blocking thread: the simulator's tasks keep running meanwhile).
    async fn boot(&self, name: &str, bootfile: String, mac: &str, stop_at: Option<&str>) -> Boot {
        let (dir, root) = (self.dir.path().to_owned(), ironic().http_root);
        let (name, mac) = (name.to_owned(), mac.to_owned());
        let stop_at = stop_at.map(str::to_owned);
        let boot = tokio::task::spawn_blocking(move || {
            boot_support::boot(
                &dir,
                &VmSpec {
                    name: &name,
                    tftp_root: &root,
                    bootfile: &bootfile,
                    mac: &mac,
                    timeout: BOOT_TIMEOUT,
                    stop_at: stop_at.as_deref(),
                },
            )
        })
        .await
        .expect("boot thread");
        println!("{}", boot.summary());
        boot
    }
}

/// A host of the test: its namespace (node `<ns>~host`), initiator and MAC are its own.
struct TestHost {
    p: HostParams,
    mac: String,
}

impl TestHost {
    fn new() -> TestHost {
        let p = HostParams::new(&unique_namespace());
        let hex = &p.ns[3..11];
        let mac = format!(
            "52:54:{}:{}:{}:{}",
            &hex[0..2],
            &hex[2..4],
            &hex[4..6],
            &hex[6..8]
        );
        TestHost { p, mac }
    }

    /// The BareMetalHost: a BIOS machine, already provisioned (adoption), booting from
    /// LUN `lun` of `target`.
    fn manifest(&self, target: &Target, lun: u32) -> Value {
        let mut host = self.p.host();
        let spec = &mut host["spec"];
        spec["bootMACAddress"] = json!(self.mac);
        spec["bootMode"] = json!("legacy");
        spec["online"] = json!(true);
        spec["externallyProvisioned"] = json!(true);
        spec["bootVolume"]["iscsiTarget"] = json!({"iqn": target.iqn, "portal": target.portal(), "lun": lun});
        host
    }

    /// Enrolls the node as baremetal-operator does (fake-hardware, iPXE, BIOS, Ironic's
    /// default deploy interface, a port for the MAC) and nothing of boot from volume.
    /// Returns its UUID.
    async fn enroll(&self, c: &IronicClient) -> String {
        let uuid = enroll(
            c,
            &self.p.ns,
            json!({
                "boot_interface": "ipxe",
                "properties": {"capabilities": "boot_mode:bios", "cpu_arch": "x86_64"},
            }),
        )
        .await;
        c.send::<Value>(
            Method::POST,
            "/v1/ports",
            Some(&json!({"node_uuid": uuid, "address": self.mac})),
        )
        .await
        .expect("create port");
        uuid
    }
}

/// Configures the node from the manifest and adopts it: `bootvolume ironic-apply --adopt`.
async fn apply_and_adopt(c: &IronicClient, uuid: &str, host: &Value, password: &str) {
    let ns = host["metadata"]["namespace"].as_str().expect("namespace");
    let (_dir, file) = manifest(&[host.clone(), secret(ns, "chap", USERNAME, password)]);
    let run = ironic_apply(&file, &ironic().url, &[]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(!run.all().contains(password), "password leaked:\n{}", run.all());
    // TODO(h8): `--adopt` does the rest.
    provision(c, uuid, "manage", "manageable").await;
    provision(c, uuid, "adopt", "active").await;
    power(c, uuid, "power on").await;
}

fn assert_booted(boot: &Boot, disk: &Disk) {
    assert!(
        boot.booted(disk),
        "{} did not boot the volume (want {} and {}):\n{}",
        boot.name,
        boot_support::MARKER,
        disk.nonce,
        boot.transcript()
    );
}

fn assert_not_booted(boot: &Boot, disk: &Disk, reason: &str) {
    let text = boot.text();
    assert!(
        !text.contains(boot_support::MARKER) && !text.contains(&disk.nonce),
        "{} booted but must not:\n{}",
        boot.name,
        boot.transcript()
    );
    assert!(
        boot.errors().iter().any(|e| e.contains(reason)),
        "{}: want the reason {reason:?} on the console:\n{}",
        boot.name,
        boot.transcript()
    );
    println!("{}: {}", boot.name, boot.errors().join(" | "));
}

/// Polls tgtd's log for `what` (it logs a failed login as it happens).
async fn target_logged(target: &Target, what: &str) -> bool {
    for _ in 0..50 {
        if target.log().contains(what) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn adopted_by_ironic_apply_boots_from_the_volume() {
    let lab = Lab::new();
    let h = TestHost::new();
    let target = lab.target(PASSWORD, &[&h.p.connector_id]);
    let uuid = h.enroll(&lab.ironic).await;
    apply_and_adopt(&lab.ironic, &uuid, &h.manifest(&target, LUN), PASSWORD).await;

    let script = std::fs::read_to_string(ironic().http_root.join(&uuid).join("config")).expect("node script");
    assert!(script.contains("sanhook"), "{script}");

    let boot = lab.boot("adopted", format!("{uuid}/config"), &h.mac, None).await;
    print!("{}", boot.transcript());
    assert_booted(&boot, &lab.disk);
}

/// The three ways a host must not boot, each with its reason on the console: the VM runs
/// Ironic's script for its node and is stopped at the first iPXE error (the script would
/// retry every 10 s forever).
#[tokio::test]
async fn misconfigured_hosts_do_not_boot() {
    let lab = Lab::new();
    let (wrong_password, wrong_lun, stranger) = (TestHost::new(), TestHost::new(), TestHost::new());
    // `stranger`'s initiator is not in the ACL; the others' are.
    let target = lab.target(
        PASSWORD,
        &[&wrong_password.p.connector_id, &wrong_lun.p.connector_id],
    );
    let configure = async |h: &TestHost, lun: u32, password: &str| {
        let uuid = h.enroll(&lab.ironic).await;
        apply_and_adopt(&lab.ironic, &uuid, &h.manifest(&target, lun), password).await;
        uuid
    };
    let (a, b, c) = tokio::join!(
        configure(&wrong_password, LUN, "Zq9-wrong-chap-secret"),
        configure(&wrong_lun, LUN + 1, PASSWORD),
        configure(&stranger, LUN, PASSWORD),
    );
    let stop = Some(IPXE_ERROR);
    // Two VMs at a time: TCG is CPU-bound and the machine may have two cores.
    let (boot_a, boot_b) = tokio::join!(
        lab.boot("wrong-password", format!("{a}/config"), &wrong_password.mac, stop),
        lab.boot("wrong-lun", format!("{b}/config"), &wrong_lun.mac, stop),
    );
    let boot_c = lab
        .boot("not-in-acl", format!("{c}/config"), &stranger.mac, stop)
        .await;

    // iPXE: "initiator authentication failed"; tgtd names the initiator it refused.
    assert_not_booted(&boot_a, &lab.disk, "Operation not permitted");
    let refused = format!("authentication of {} failed", wrong_password.p.connector_id);
    assert!(
        target_logged(&target, &refused).await,
        "tgtd did not log {refused:?}:\n{}",
        target.log()
    );
    // The target has no LUN 2.
    assert_not_booted(&boot_b, &lab.disk, "Input/output error");
    // Login refused: the initiator name is not in the ACL.
    assert_not_booted(&boot_c, &lab.disk, "No such device");
    print!("{}", boot_a.transcript());
}
