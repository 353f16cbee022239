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

mod bmo_sim;
mod boot_support;
mod ironic_support;

use bmo_sim::{Bmo, BmoConfig, HostStore};
use boot_support::{Boot, Disk, LUN, Target, TargetSpec, VmSpec};
use bootvolume::{
    ironic::IronicClient,
    reconcile::{
        handshake::{Options, Phase},
        host_api::host_pass,
    },
};
use ironic_support::*;
use k8s_openapi::api::core::v1::Secret;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const PASSWORD: &str = "Zq9-boot-chap-secret";
const ROTATED: &str = "Zq9-rotated-boot-secret";
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

    /// Boots a VM from Ironic's HTTP root.
    async fn boot(&self, name: &str, bootfile: String, mac: &str, stop_at: Option<&str>) -> Boot {
        let root = ironic().http_root;
        self.boot_from(name, root.to_str().expect("utf-8"), bootfile, mac, stop_at)
            .await
    }

    /// Boots a VM with TFTP root `root` (on a blocking thread: the simulator's tasks keep
    /// running meanwhile).
    async fn boot_from(
        &self,
        name: &str,
        root: &str,
        bootfile: String,
        mac: &str,
        stop_at: Option<&str>,
    ) -> Boot {
        let (dir, root) = (self.dir.path().to_owned(), std::path::PathBuf::from(root));
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

/// Configures the node from the manifest (the host and its Secret) and adopts it:
/// `bootvolume ironic-apply --adopt` (boot target, persistent PXE boot device, manage,
/// adopt, power on, wait for `active` booting from the target).
fn apply_and_adopt(host: &Value, password: &str) -> Run {
    let ns = host["metadata"]["namespace"].as_str().expect("namespace");
    let (_dir, file) = manifest(&[host.clone(), secret(ns, "chap", USERNAME, password)]);
    let run = ironic_apply(&file, &ironic().url, &["--adopt", "--adopt-timeout", "60"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(!run.all().contains(password), "password leaked:\n{}", run.all());
    run
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
    let run = apply_and_adopt(&h.manifest(&target, LUN), PASSWORD);
    println!("ironic-apply --adopt: {:.2} s", run.elapsed.as_secs_f64());

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
        let host = h.manifest(&target, lun);
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || apply_and_adopt(&host, &password))
            .await
            .expect("ironic-apply");
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

// ---------------------------------------------------------------------------------------------
// Through the controller's handshake with a simulated baremetal-operator (tests/bmo_sim).
// ---------------------------------------------------------------------------------------------

/// One host driven by the simulated BMO and the controller's pass (`host_pass`), as the
/// `reconcile` controller runs it for each host event.
struct Handshake {
    h: TestHost,
    store: HostStore,
    bmo: Bmo,
    ironic: IronicClient,
    options: Options,
    secret: Secret,
    phase: Option<Phase>,
    errors: Vec<String>,
}

impl Handshake {
    /// A new BareMetalHost (online, not provisioned, no image) booting from `target`: BMO
    /// registers it, the controller configures the node and hands the host over, BMO adopts.
    fn start(h: TestHost, target: &Target, password: &str) -> Handshake {
        let mut host = h.manifest(target, LUN);
        host["spec"]["externallyProvisioned"] = json!(false);
        let store = HostStore::new(host);
        let bmo = Bmo::start(client(), store.clone(), BmoConfig::default());
        Handshake {
            secret: serde_json::from_value(secret(&h.p.ns, "chap", USERNAME, password)).expect("Secret"),
            h,
            store,
            bmo,
            ironic: client(),
            options: Options::default(),
            phase: None,
            errors: Vec::new(),
        }
    }

    async fn pass(&mut self) {
        match host_pass(
            &self.ironic,
            &self.store,
            &self.store.get(),
            Some(&self.secret),
            &self.options,
        )
        .await
        {
            Ok(report) => self.phase = report.phase,
            // A 409 while BMO holds the node lock is expected; the next pass retries.
            Err(e) => self.errors.push(e.to_string()),
        }
    }

    /// Runs controller passes (every 150 ms, or at once when the host changes) until `done`.
    async fn drive(&mut self, what: &str, timeout: Duration, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        let mut changes = self.store.subscribe();
        loop {
            changes.borrow_and_update();
            self.pass().await;
            if done(self) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n--- BMO\n{}\n--- controller errors\n{}\n--- host\n{:#}",
                self.bmo.stats().log.join("\n"),
                self.errors.join("\n"),
                self.store.get()
            );
            let _ = tokio::time::timeout(Duration::from_millis(150), changes.changed()).await;
        }
    }

    /// Drives the handshake until the node is `active` and boots from the volume.
    async fn until_booting_from_volume(&mut self, timeout: Duration) {
        self.drive("booting from the volume", timeout, |s| {
            s.phase == Some(Phase::BootingFromVolume)
        })
        .await;
    }

    fn node_id(&self) -> String {
        self.store.get()["status"]["provisioning"]["ID"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The script Ironic wrote for the current node.
    fn script(&self) -> String {
        let path = ironic().http_root.join(self.node_id()).join("config");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }
}

/// The controller's handshake: BMO registers the host, the controller configures the node
/// and hands it over, BMO adopts; the VM boots through Ironic's entry point `boot.ipxe`,
/// which chains the per-MAC link BMO's port makes Ironic write, then the node's script.
#[tokio::test]
async fn handshake_with_the_operator_boots_from_the_volume() {
    let lab = Lab::new();
    let started = Instant::now();
    let h = TestHost::new();
    let target = lab.target(PASSWORD, &[&h.p.connector_id]);
    let mut hs = Handshake::start(h, &target, PASSWORD);
    hs.until_booting_from_volume(Duration::from_secs(30)).await;
    let adopted = started.elapsed();

    let boot = lab.boot("handshake", "boot.ipxe".into(), &hs.h.mac, None).await;
    println!(
        "handshake: booting from the volume in Ironic {:.2} s after the host was created",
        adopted.as_secs_f64()
    );
    assert_booted(&boot, &lab.disk);
    hs.bmo.stop().await;
}

/// CHAP rotation for real: the target's secret and the Secret change together. The adopted
/// node's script still holds the old secret (Ironic never rewrites it), so the controller
/// updates Ironic's target once the host is off, and a detach + re-attach through BMO
/// re-adopts a new node whose script has the new secret. A VM booting that boots; a VM
/// booting the stale script is refused by the target.
#[tokio::test]
async fn chap_rotation_boots_only_after_re_adoption() {
    let lab = Lab::new();
    let h = TestHost::new();
    let target = lab.target(PASSWORD, &[&h.p.connector_id]);
    let mut hs = Handshake::start(h, &target, PASSWORD);
    hs.until_booting_from_volume(Duration::from_secs(30)).await;
    let stale_root = lab.dir.path().join("stale");
    std::fs::create_dir(&stale_root).expect("mkdir");
    std::fs::write(stale_root.join("stale.ipxe"), hs.script()).expect("keep the stale script");
    let old = hs.node_id();

    let rotated_at = Instant::now();
    target.set_password(USERNAME, ROTATED);
    hs.secret = serde_json::from_value(secret(&hs.h.p.ns, "chap", USERNAME, ROTATED)).expect("Secret");
    hs.drive("the stale script reported", Duration::from_secs(10), |s| {
        s.phase == Some(Phase::Stale)
    })
    .await;
    // Ironic's target changes only while the node is off; then detach and re-attach: BMO
    // deletes the node, enrolls a new one and adopts it, and Ironic writes a new script.
    hs.store
        .user_update("online: false", |host| host["spec"]["online"] = json!(false));
    hs.store.user_update("detach", |host| {
        host["metadata"]["annotations"] = json!({bmo_sim::DETACHED_ANNOTATION: "true"});
    });
    hs.drive("detached", Duration::from_secs(15), |s| {
        s.store.get()["status"]["operationalStatus"] == "detached"
    })
    .await;
    hs.store.user_update("re-attach, online", |host| {
        host["metadata"]["annotations"] = json!({});
        host["spec"]["online"] = json!(true);
    });
    hs.drive(
        "the new node booting from the volume",
        Duration::from_secs(30),
        |s| s.node_id() != old && s.phase == Some(Phase::BootingFromVolume),
    )
    .await;
    let readopted = rotated_at.elapsed();
    assert!(
        hs.script().contains(&format!("set password {ROTATED}")),
        "the new script lacks the rotated secret"
    );

    let stop = Some(IPXE_ERROR);
    let stale_root = stale_root.to_str().expect("utf-8").to_owned();
    let (fresh, stale) = tokio::join!(
        lab.boot("rotated", "boot.ipxe".into(), &hs.h.mac, None),
        lab.boot_from(
            "stale-script",
            &stale_root,
            "stale.ipxe".into(),
            "52:54:00:5a:1e:00",
            stop
        ),
    );
    println!(
        "rotation: re-adopted with the new secret {:.2} s after the rotation",
        readopted.as_secs_f64()
    );
    assert_booted(&fresh, &lab.disk);
    assert_not_booted(&stale, &lab.disk, "Operation not permitted");
    let refused = format!("authentication of {} failed", hs.h.p.connector_id);
    assert!(
        target_logged(&target, &refused).await,
        "tgtd did not log {refused:?}:\n{}",
        target.log()
    );
    hs.bmo.stop().await;
}
