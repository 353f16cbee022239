//! The adoption handshake against a real Ironic, with a simulated baremetal-operator
//! (tests/bmo_sim) and the controller's reconcile pass driven in a loop.
//!
//! Run with `scripts/with-ironic.sh cargo test --test adoption_live` (see tests/ironic_support).
//! BMO's timings are scaled down (see `BmoConfig`); the adoption delays after `manageable`
//! are real seconds, as in BMO.

mod bmo_sim;
mod ironic_support;

use bmo_sim::{Bmo, BmoConfig, HostStore, Writer};
use bootvolume::ironic::{Calls, IronicClient};
use ironic_support::*;
use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const PASSWORD: &str = "Zq9-adoption-chap-secret";
const ROTATED: &str = "Zq9-rotated-chap-secret";
/// Longest pause between two controller passes; a host write wakes it earlier, as the real
/// controller's watch does.
const PASS_INTERVAL: Duration = Duration::from_millis(150);

/// The controller under test, reduced to what these tests read from one pass.
mod ctl {
    use super::*;
    use bootvolume::reconcile::{
        handshake::{EventKind, Options},
        host_api::host_pass,
    };

    /// One controller pass: what changed, the Events it would publish, the phase.
    #[derive(Clone, Debug, Default)]
    pub struct Pass {
        pub changes: Vec<String>,
        pub events: Vec<(String, String, String)>,
        pub phase: String,
    }

    /// Runs one reconcile pass of the store's host, as the kube layer would.
    pub async fn pass(
        ironic: &IronicClient,
        store: &HostStore,
        secret: &Secret,
        options: &Options,
    ) -> Result<Pass, String> {
        let host = store.get();
        let report = host_pass(ironic, store, &host, Some(secret), options)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Pass {
            changes: report.changes(),
            events: report
                .events
                .iter()
                .map(|e| {
                    let kind = match e.kind {
                        EventKind::Normal => "Normal",
                        EventKind::Warning => "Warning",
                    };
                    (kind.to_owned(), e.reason.to_owned(), e.note.clone())
                })
                .collect(),
            phase: report.phase.map(|p| p.label().to_owned()).unwrap_or_default(),
        })
    }
}

/// A Secret as the kube layer reads it.
fn chap_secret(ns: &str, username: &str, password: &str) -> Secret {
    serde_json::from_value(secret(ns, "chap", username, password)).expect("Secret")
}

/// A host whose boot MAC is unique to its namespace (Ironic refuses a MAC on two nodes).
fn test_host(p: &HostParams, online: bool, externally_provisioned: bool) -> Value {
    let mut host = p.host();
    host["spec"]["bootMACAddress"] = json!(mac_for(&p.ns));
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

/// One host under test: the store, the simulated BMO, the controller's own Ironic client
/// (counted apart from BMO's) and everything the controller passes reported.
struct Scenario {
    p: HostParams,
    store: HostStore,
    bmo: Bmo,
    ironic: IronicClient,
    secret: Secret,
    options: bootvolume::reconcile::handshake::Options,
    passes: Vec<ctl::Pass>,
    errors: Vec<String>,
    started: Instant,
}

impl Scenario {
    fn start(online: bool, externally_provisioned: bool, config: BmoConfig) -> Self {
        Self::start_with(client(), online, externally_provisioned, config)
    }

    /// Like [`Self::start`], the controller talking to Ironic through `ironic`.
    fn start_with(
        ironic: IronicClient,
        online: bool,
        externally_provisioned: bool,
        config: BmoConfig,
    ) -> Self {
        let p = HostParams::new(&unique_namespace());
        let store = HostStore::new(test_host(&p, online, externally_provisioned));
        let bmo = Bmo::start(client(), store.clone(), config);
        Self {
            secret: chap_secret(&p.ns, "chapuser", PASSWORD),
            p,
            store,
            bmo,
            ironic,
            options: Default::default(),
            passes: Vec::new(),
            errors: Vec::new(),
            started: Instant::now(),
        }
    }

    /// One controller pass; errors are kept (a 409 while BMO holds the lock is expected).
    async fn pass(&mut self) {
        match ctl::pass(&self.ironic, &self.store, &self.secret, &self.options).await {
            Ok(p) => self.passes.push(p),
            Err(e) => self.errors.push(e),
        }
    }

    /// Drives controller passes until `done` (checked after each pass), bounded. The next
    /// pass starts after [`PASS_INTERVAL`] or as soon as the host changes.
    async fn drive(&mut self, what: &str, timeout: Duration, mut done: impl AsyncFnMut(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        let mut changes = self.store.subscribe();
        loop {
            changes.borrow_and_update();
            self.pass().await;
            if done(self).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.dump()
            );
            let _ = tokio::time::timeout(PASS_INTERVAL, changes.changed()).await;
        }
    }

    /// A few more passes (to show what steady passes do).
    async fn settle(&mut self, passes: usize) {
        for _ in 0..passes {
            tokio::time::sleep(PASS_INTERVAL).await;
            self.pass().await;
        }
    }

    /// The boot target of the current node.
    async fn target(&self) -> Option<bootvolume::ironic::Target> {
        let targets = self.ironic.list_targets(&self.node_id()).await.ok()?;
        targets.into_iter().find(|t| t.boot_index == 0)
    }

    /// Everything useful for a failure message (no secrets: passwords never reach these).
    fn dump(&self) -> String {
        let events: Vec<String> = self.events().iter().map(|e| format!("{e:?}")).collect();
        let passes: Vec<String> = self
            .passes
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.changes.is_empty())
            .map(|(i, p)| format!("pass {i} [{}]: {}", p.phase, p.changes.join("; ")))
            .collect();
        let writes: Vec<String> = self
            .store
            .writes()
            .iter()
            .map(|w| format!("{:?} in {:?}: {} {:?}", w.by, w.bmo_state, w.what, w.rejected))
            .collect();
        format!(
            "--- BMO timeline\n{}\n--- controller passes that changed something\n{}\n--- controller events\n{}\n--- controller errors\n{}\n--- host writes\n{}\n--- host\n{:#}",
            self.bmo.stats().log.join("\n"),
            passes.join("\n"),
            events.join("\n"),
            self.errors.join("\n"),
            writes.join("\n"),
            self.store.get()
        )
    }

    fn events(&self) -> Vec<(String, String, String)> {
        self.passes.iter().flat_map(|p| p.events.clone()).collect()
    }

    fn events_with(&self, reason: &str) -> usize {
        self.events().iter().filter(|e| e.1 == reason).count()
    }

    fn node_id(&self) -> String {
        self.store.get()["status"]["provisioning"]["ID"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// The node is `active` and Ironic booted it from our boot target.
    async fn boots_from_volume(&self) -> bool {
        let id = self.node_id();
        if id.is_empty() {
            return false;
        }
        let Ok(n) = self
            .ironic
            .send::<Value>(reqwest::Method::GET, &format!("/v1/nodes/{id}"), None::<&()>)
            .await
        else {
            return false;
        };
        if n["provision_state"] != "active" || n["target_provision_state"] != Value::Null {
            return false;
        }
        let Ok(targets) = self.ironic.list_targets(&id).await else {
            return false;
        };
        targets
            .iter()
            .any(|t| t.boot_index == 0 && n["driver_internal_info"]["boot_from_volume"] == t.uuid.as_str())
    }

    /// The iPXE script Ironic wrote for the current node.
    fn script(&self) -> String {
        let path = ironic().http_root.join(self.node_id()).join("config");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}\n{}", path.display(), self.dump()))
    }

    /// Asserts the script boots our target with our initiator and CHAP user, and that the
    /// per-MAC link iPXE chains to exists.
    fn assert_script(&self, chap_user: &str) {
        let script = self.script();
        for want in [
            "sanhook --drive 0x80 iscsi:192.0.2.10::3260:0:iqn.2010-10.com.example:vol-bfv".to_owned(),
            format!("set initiator-iqn {}", self.p.connector_id),
            format!("set username {chap_user}"),
        ] {
            assert!(script.contains(&want), "script lacks {want:?}:\n{script}");
        }
        let link = ironic()
            .http_root
            .join("pxelinux.cfg")
            .join(mac_for(&self.p.ns).replace(':', "-"));
        assert!(
            link.exists() || link.is_symlink(),
            "no per-MAC link {}",
            link.display()
        );
    }

    async fn stop(self) -> bmo_sim::Stats {
        self.bmo.stop().await
    }
}

fn fmt_calls(c: Calls) -> String {
    format!(
        "{} ({} GET, {} POST, {} PATCH, {} PUT, {} DELETE)",
        c.total(),
        c.get,
        c.post,
        c.patch,
        c.put,
        c.delete
    )
}

/// A fresh host with `online: true` and no image: BMO registers it to `available` (its
/// Ironic node `manageable`, powered on), the controller configures the node and hands the
/// host over, BMO adopts, and one reboot later it boots from the volume.
#[tokio::test]
async fn fresh_host_is_handed_over_and_boots_from_its_volume() {
    let mut s = Scenario::start(true, false, BmoConfig::default());
    s.drive("booting from the volume", Duration::from_secs(25), async |s| {
        s.boots_from_volume().await
            && s.store.get()["status"]["poweredOn"] == true
            && s.bmo.stats().powered_on_after_adoption()
    })
    .await;
    let to_active = s.started.elapsed();
    let calls = s.ironic.calls();
    s.assert_script("chapuser");

    // A few steady passes: no second reboot, no further writes.
    let before = s.ironic.calls();
    s.settle(3).await;
    let steady = s.ironic.calls().since(before);
    assert_eq!(steady.writes(), 0, "steady passes write nothing\n{}", s.dump());
    let dump = s.dump();
    let bmo_calls = s.bmo.calls();
    let patches = s.store.controller_patches();
    let handovers: Vec<&Value> = patches
        .iter()
        .filter(|p| p.pointer("/spec/externallyProvisioned") == Some(&json!(true)))
        .collect();
    assert_eq!(handovers.len(), 1, "one hand-over patch\n{dump}");
    let reboots = patches
        .iter()
        .filter(|p| {
            p.pointer("/metadata/annotations/reboot.metal3.io")
                .is_some_and(|v| !v.is_null())
        })
        .count();
    assert_eq!(reboots, 1, "exactly one reboot requested\n{dump}");
    assert_eq!(s.events_with("BootVolumeHandedOver"), 1, "{dump}");
    assert!(s.events_with("BootingFromVolume") >= 1, "{dump}");
    let stats = s.stop().await;
    assert_eq!(stats.power_off_requests, 1, "one power cycle\n{dump}");
    assert_eq!(stats.reboot_annotation_removals, 1, "{dump}");
    assert!(stats.adopt_failures.is_empty(), "{dump}");
    eprintln!(
        "fresh host: booting from its volume {:.2}s after creation; Ironic calls for the whole \
         hand-over: controller {}, BMO {}; then 3 steady passes: {}",
        to_active.as_secs_f64(),
        fmt_calls(calls),
        fmt_calls(bmo_calls),
        fmt_calls(steady)
    );
}

/// Created with `externallyProvisioned: true`: nothing to hand over, BMO adopts on its own
/// 0-3 s after `manageable`, and the controller must win the race with the capability (or
/// lose once and have the retry succeed).
#[tokio::test]
async fn externally_provisioned_host_boots_from_its_volume_whatever_the_adoption_delay() {
    let mut rows = Vec::new();
    for delay_ms in [0u64, 500, 1000, 3000] {
        let config = BmoConfig {
            adopt_delay: Duration::from_millis(delay_ms),
            ..BmoConfig::default()
        };
        let mut s = Scenario::start(true, true, config);
        s.drive("booting from the volume", Duration::from_secs(20), async |s| {
            s.boots_from_volume().await && s.bmo.stats().powered_on_after_adoption()
        })
        .await;
        let to_active = s.started.elapsed();
        let calls = s.ironic.calls();
        s.assert_script("chapuser");
        let dump = s.dump();
        let stats = s.stop().await;
        let since_manageable = |t: Option<Instant>| {
            stats.manageable_at.zip(t).map_or("-".to_owned(), |(m, t)| {
                format!("{:.2} s", t.saturating_duration_since(m).as_secs_f64())
            })
        };
        assert!(stats.adopt_failures.len() <= 1, "delay {delay_ms} ms\n{dump}");
        rows.push(format!(
            "| {:>5.1} s | {:>16} | {:>14} | {:>17} | {:>18} | {:>17.2} s | {:>16} |",
            delay_ms as f64 / 1000.0,
            stats.adopt_failures.len(),
            stats.adopt_requests,
            since_manageable(stats.first_adopt_at),
            since_manageable(stats.active_at),
            to_active.as_secs_f64(),
            calls.total()
        ));
    }
    eprintln!(
        "\nadoption race (externallyProvisioned from the start)\n\
         | delay   | adoptions failed | adopt requests | manageable->adopt | manageable->active | create->booting | ctl Ironic calls |\n\
         |---------|------------------|----------------|-------------------|--------------------|-----------------|------------------|\n{}",
        rows.join("\n")
    );
}

/// BMO adopts between our boot target and our capability (the controller's first node
/// PATCH is held 2 s on its way to Ironic): the adoption fails for want of `iscsi_boot`.
/// Once the node is configured and BMO has recorded the failure, the controller's annotation
/// makes BMO retry at once, long before BMO's own backoff (here 20-40 s: one BMO minute is
/// 20 s in this test) would have.
#[tokio::test]
async fn adoption_failed_between_target_and_capability_is_retried_at_once() {
    use ironic_support::proxy::{Fault, FaultProxy, Rule};
    let proxy = FaultProxy::start(&ironic().url).await;
    proxy.add(
        Rule::new(Fault::SlowRequest(Duration::from_secs(2)))
            .method("PATCH")
            .path("/v1/nodes/"),
    );
    let ironic = bootvolume::ironic::IronicClient::new(bootvolume::ironic::ClientConfig::new(
        proxy.url.clone(),
        Duration::from_secs(30),
    ))
    .expect("client");
    let config = BmoConfig {
        adopt_delay: Duration::ZERO,
        minute: Duration::from_secs(20),
        ..BmoConfig::default()
    };
    let mut s = Scenario::start_with(ironic, true, true, config);
    s.drive("booting from the volume", Duration::from_secs(15), async |s| {
        s.boots_from_volume().await && s.bmo.stats().powered_on_after_adoption()
    })
    .await;
    let dump = s.dump();
    assert_eq!(s.events_with("AdoptionRetryRequested"), 1, "{dump}");
    let pokes = s
        .store
        .controller_patches()
        .iter()
        .filter(|p| {
            p.pointer("/metadata/annotations/bootvolume.metal3.io~1adopt-retry")
                .is_some()
        })
        .count();
    assert_eq!(pokes, 1, "{dump}");
    s.assert_script("chapuser");
    let stats = s.stop().await;
    assert_eq!(stats.adopt_failures.len(), 1, "{dump}");
    assert!(
        stats.adopt_failures[0].contains("iSCSI boot"),
        "failed for want of the capability: {}",
        stats.adopt_failures[0]
    );
    assert_eq!(stats.adopt_requests, 2, "{dump}");
    let retry = stats
        .adopt_requested_at
        .zip(stats.first_adopt_at)
        .map(|(last, first)| last - first)
        .expect("two adoptions");
    assert!(
        retry < Duration::from_secs(10),
        "retried at once, not after the backoff: {retry:?}"
    );
    eprintln!(
        "failed adoption (BMO between target and capability): retried {:.2}s after the first adoption request \
         (BMO's own backoff: 20-40 s here, 1-2 min real)",
        retry.as_secs_f64()
    );
}

/// An Ironic database loss: BMO finds no node, enrolls a new one and adopts it as soon as it
/// is `manageable`; the controller configures the new node (target first) and the host boots
/// from its volume again.
#[tokio::test]
async fn database_loss_converges_to_booting_from_the_volume_again() {
    let mut s = Scenario::start(true, true, BmoConfig::default());
    s.drive("booting from the volume", Duration::from_secs(20), async |s| {
        s.boots_from_volume().await
    })
    .await;
    let old = s.node_id();
    s.bmo.set_adopt_delay(Duration::ZERO);
    let failures_before = s.bmo.stats().adopt_failures.len();
    bmo_sim::lose_node(&client(), &old).await;
    let lost = Instant::now();
    s.bmo.kick();
    s.drive(
        "the new node booting from the volume",
        Duration::from_secs(20),
        async |s| s.node_id() != old && s.boots_from_volume().await,
    )
    .await;
    let recovered = lost.elapsed();
    s.assert_script("chapuser");
    let dump = s.dump();
    let stats = s.stop().await;
    assert_eq!(stats.nodes_created.len(), 2, "{dump}");
    let failed = stats.adopt_failures.len() - failures_before;
    assert!(failed <= 1, "{dump}");
    eprintln!(
        "database loss: booting from the volume again {:.2}s after the loss ({failed} failed adoption(s) on the way)\n{}",
        recovered.as_secs_f64(),
        stats.log.join("\n")
    );
}

/// A rotated CHAP Secret cannot reach an adopted host's boot script: the controller says so
/// (`BootScriptStale`), updates Ironic's target once the host is powered off, and a detach +
/// re-attach (BMO deletes and re-creates the node, then adopts it) writes the new user into
/// the script.
#[tokio::test]
async fn chap_rotation_after_adoption_needs_a_re_adoption() {
    let mut s = Scenario::start(true, true, BmoConfig::default());
    s.drive("booting from the volume", Duration::from_secs(20), async |s| {
        s.boots_from_volume().await
    })
    .await;
    s.assert_script("chapuser");

    s.secret = chap_secret(&s.p.ns, "chapuser2", ROTATED);
    s.drive("BootScriptStale", Duration::from_secs(5), async |s| {
        s.events_with("BootScriptStale") >= 1
    })
    .await;
    let stale = s
        .events()
        .into_iter()
        .find(|e| e.1 == "BootScriptStale")
        .expect("event");
    assert_eq!(stale.0, "Warning");
    assert!(!stale.2.contains(ROTATED), "password in an event");
    assert_eq!(
        s.target().await.expect("target").properties["auth_username"],
        "chapuser",
        "a powered-on node's target cannot change"
    );
    let stale_key = bootvolume::reconcile::handshake::STALE_KEY;
    let extra = |n: Value| n["extra"].get(stale_key).cloned();
    assert_eq!(
        extra(node(&client(), &s.node_id()).await),
        Some(json!(true)),
        "staleness recorded on the node"
    );

    s.store
        .user_update("online: false", |h| h["spec"]["online"] = json!(false));
    s.drive("target updated while off", Duration::from_secs(10), async |s| {
        s.target()
            .await
            .is_some_and(|t| t.properties["auth_username"] == "chapuser2")
    })
    .await;
    assert_eq!(s.bmo.stats().power_off_requests, 1);

    // Detach, then re-attach: BMO deletes the node and later enrolls and adopts a new one.
    let old = s.node_id();
    s.store.user_update("detach", |h| {
        h["metadata"]["annotations"][bmo_sim::DETACHED_ANNOTATION] = json!("true");
    });
    s.drive("detached", Duration::from_secs(10), async |s| {
        s.store.get()["status"]["operationalStatus"] == "detached"
    })
    .await;
    s.store.user_update("re-attach", |h| {
        if let Some(a) = h["metadata"]["annotations"].as_object_mut() {
            a.remove(bmo_sim::DETACHED_ANNOTATION);
        }
    });
    s.drive(
        "the new node booting from the volume",
        Duration::from_secs(20),
        async |s| s.node_id() != old && s.boots_from_volume().await,
    )
    .await;
    s.assert_script("chapuser2");
    assert_eq!(
        extra(node(&client(), &s.node_id()).await),
        None,
        "a new node is not stale"
    );
    let script = s.script();
    assert!(!script.contains("set username chapuser\n"), "{script}");
    let dump = s.dump();
    let stats = s.stop().await;
    assert_eq!(stats.nodes_deleted, 1, "{dump}");
    assert_eq!(stats.nodes_created.len(), 2, "{dump}");
}

/// BMO adopts before any boot target exists (the controller was not running): a plain
/// adoption. The controller reports it and writes nothing that would fight BMO: no host
/// write, no power action, no provision-state change, no maintenance.
#[tokio::test]
async fn adopted_without_us_is_reported_and_left_alone() {
    let config = BmoConfig {
        adopt_delay: Duration::ZERO,
        ..BmoConfig::default()
    };
    let mut s = Scenario::start(true, true, config);
    let (bmo, store) = (&s.bmo, &s.store);
    wait_until(
        "adopted and powered on",
        bmo,
        store,
        Duration::from_secs(20),
        async || {
            let h = store.get();
            h["status"]["provisioning"]["state"] == "externally provisioned"
                && h["status"]["poweredOn"] == true
        },
    )
    .await;
    let c = client();
    let before = node(&c, &s.node_id()).await;
    assert_eq!(before["provision_state"], "active");
    let bmo_before = s.bmo.stats();

    s.drive("AdoptedWithoutBootVolume", Duration::from_secs(5), async |s| {
        s.events_with("AdoptedWithoutBootVolume") >= 1
    })
    .await;
    s.settle(3).await;
    let dump = s.dump();
    let event = s
        .events()
        .into_iter()
        .find(|e| e.1 == "AdoptedWithoutBootVolume")
        .expect("event");
    assert_eq!(event.0, "Warning", "{dump}");
    assert!(s.store.controller_patches().is_empty(), "no host write\n{dump}");
    let after = node(&c, &s.node_id()).await;
    for field in [
        "provision_state",
        "power_state",
        "maintenance",
        "target_provision_state",
    ] {
        assert_eq!(after[field], before[field], "{field}\n{dump}");
    }
    assert!(after["driver_internal_info"]["boot_from_volume"].is_null());
    let calls = s.ironic.calls();
    assert_eq!(
        (calls.put, calls.delete),
        (0, 0),
        "no power, provision or boot-device action, no deletion\n{dump}"
    );
    let stats = s.stop().await;
    assert!(
        stats.capability_patches - bmo_before.capability_patches <= 1,
        "BMO and the controller do not fight over capabilities\n{dump}"
    );
    assert_eq!(stats.power_on_requests, bmo_before.power_on_requests);
    assert_eq!(stats.power_off_requests, bmo_before.power_off_requests);
    assert_eq!(stats.adopt_requests, bmo_before.adopt_requests);
    eprintln!("adopted without us: controller Ironic calls {}", fmt_calls(calls));
}

/// The simulator on its own: registration to `available`, power on per `online`, and
/// BMO's whole-object updates keep `bootVolume` (the preserve rule).
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
    assert!(store.writes().iter().all(|w| w.by == Writer::Bmo));
    bmo.stop().await;
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
        h["metadata"]["annotations"]["reboot.metal3.io"] = json!(r#"{"mode":"hard"}"#);
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
}
