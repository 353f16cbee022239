//! Shared helpers of the live-Ironic tests: the Ironic under test, node set-up through its
//! API (enroll, power, provision: things the reconciler itself never does), host and Secret
//! manifests, and running the `bootvolume` binary.
//!
//! The Ironic is the real one started by `scripts/with-ironic.sh` (or the project's test
//! command): `BOOTVOLUME_TEST_IRONIC_URL` and `BOOTVOLUME_TEST_IRONIC_HTTP_ROOT` must be set.
//! Each test uses its own node name (`ns-<random>~host`), so tests run in parallel.
#![allow(dead_code)] // each test binary uses a different subset

pub mod proxy;
pub mod tls_proxy;

use bootvolume::ironic::{ClientConfig, Connector, IronicClient, Target};
use reqwest::Method;
use serde_json::{Value, json};
use std::{
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// The Ironic under test.
pub struct Ironic {
    /// Base URL.
    pub url: String,
    /// Ironic's `[deploy] http_root` (iPXE scripts land in `<http_root>/<node-uuid>/config`).
    pub http_root: PathBuf,
}

/// Reads the Ironic under test from the environment, or fails saying how to provide one.
pub fn ironic() -> Ironic {
    let help = "live Ironic tests need a running Ironic: run them with \
                `scripts/with-ironic.sh cargo test --test ironic_live` (installs ironic==39.0.0 into a \
                cached venv and starts it on loopback), or export BOOTVOLUME_TEST_IRONIC_URL and \
                BOOTVOLUME_TEST_IRONIC_HTTP_ROOT for an Ironic started with scripts/ironic-standalone.sh";
    let url = std::env::var("BOOTVOLUME_TEST_IRONIC_URL").unwrap_or_else(|_| panic!("{help}"));
    let http_root = std::env::var("BOOTVOLUME_TEST_IRONIC_HTTP_ROOT").unwrap_or_else(|_| panic!("{help}"));
    Ironic {
        url,
        http_root: http_root.into(),
    }
}

/// A fresh client (with its own call counters).
pub fn client() -> IronicClient {
    let _ = rustls::crypto::ring::default_provider().install_default();
    IronicClient::new(ClientConfig::new(ironic().url, Duration::from_secs(30))).expect("client")
}

/// A namespace no other test uses (`ns-<16 hex>`).
pub fn unique_namespace() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = std::hash::BuildHasher::hash_one(
        &std::collections::hash_map::RandomState::new(),
        (
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            Instant::now(),
        ),
    );
    format!("ns-{seed:016x}")
}

/// A MAC no other test uses, from the random part of a [`unique_namespace`].
pub fn mac_for(ns: &str) -> String {
    let hex = &ns[3..11];
    format!(
        "52:54:{}:{}:{}:{}",
        &hex[0..2],
        &hex[2..4],
        &hex[4..6],
        &hex[6..8]
    )
}

/// Enrolls a fake-hardware node named `<ns>~host` with `extra` fields merged into the body.
/// Returns its UUID.
pub async fn enroll(c: &IronicClient, ns: &str, extra: Value) -> String {
    let mut body = json!({"name": format!("{ns}~host"), "driver": "fake-hardware"});
    json_patch::merge(&mut body, &extra);
    let node: Value = c
        .send(Method::POST, "/v1/nodes", Some(&body))
        .await
        .expect("enroll node");
    node["uuid"].as_str().expect("uuid").to_owned()
}

/// The whole node as Ironic returns it (includes `updated_at`, `driver_internal_info`).
pub async fn node(c: &IronicClient, uuid: &str) -> Value {
    c.send(Method::GET, &format!("/v1/nodes/{uuid}"), None::<&()>)
        .await
        .expect("get node")
}

/// Waits until `field` of the node equals `want` and the task that changed it has released
/// the node lock (`reservation`): Ironic's state changes are asynchronous, and a write while
/// the lock is held gets a 409.
pub async fn wait_for(c: &IronicClient, uuid: &str, field: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let n = node(c, uuid).await;
        if n[field] == want && n["reservation"].is_null() {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "node {uuid}: {field} is {} (want {want}); last_error: {}",
            n[field],
            n["last_error"]
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Sets the (fake) power state and waits for it.
pub async fn power(c: &IronicClient, uuid: &str, state: &str) {
    c.send_with_body(
        Method::PUT,
        &format!("/v1/nodes/{uuid}/states/power"),
        &json!({"target": state}),
    )
    .await
    .expect("power action");
    wait_for(c, uuid, "power_state", state).await;
}

/// Runs a provision action (`manage`, `provide`, `active`, `deleted`) and waits for `reach`.
pub async fn provision(c: &IronicClient, uuid: &str, target: &str, reach: &str) -> Value {
    c.send_with_body(
        Method::PUT,
        &format!("/v1/nodes/{uuid}/states/provision"),
        &json!({"target": target}),
    )
    .await
    .unwrap_or_else(|e| panic!("provision {target}: {e}"));
    wait_for(c, uuid, "provision_state", reach).await
}

/// The node's connectors and targets (detail view).
pub async fn volumes(c: &IronicClient, uuid: &str) -> (Vec<Connector>, Vec<Target>) {
    (
        c.list_connectors(uuid).await.expect("connectors"),
        c.list_targets(uuid).await.expect("targets"),
    )
}

/// `updated_at` of the node, its connectors and its targets: equal snapshots mean no write.
pub async fn write_stamps(c: &IronicClient, uuid: &str) -> Vec<String> {
    let mut stamps = vec![node(c, uuid).await["updated_at"].to_string()];
    let (cs, ts) = volumes(c, uuid).await;
    stamps.extend(cs.iter().map(|x| format!("{} {:?}", x.uuid, x.updated_at)));
    stamps.extend(ts.iter().map(|x| format!("{} {:?}", x.uuid, x.updated_at)));
    stamps
}

/// The knobs of a test host manifest.
#[derive(Clone)]
pub struct HostParams {
    /// Namespace (node name is `<ns>~host`).
    pub ns: String,
    /// Initiator name.
    pub connector_id: String,
    /// LUN.
    pub lun: u32,
    /// Credentials Secret name (`None`: authMethod None).
    pub secret: Option<String>,
    /// Without `bootVolume` at all.
    pub no_boot_volume: bool,
}

impl HostParams {
    /// An external iSCSI host with CHAP from Secret `chap`.
    pub fn new(ns: &str) -> Self {
        Self {
            ns: ns.into(),
            connector_id: format!("iqn.2004-10.com.example:{ns}"),
            lun: 0,
            secret: Some("chap".into()),
            no_boot_volume: false,
        }
    }

    /// The BareMetalHost object.
    pub fn host(&self) -> Value {
        let mut host = json!({
            "apiVersion": "metal3.io/v1alpha1",
            "kind": "BareMetalHost",
            "metadata": {"name": "host", "namespace": self.ns},
            "spec": {"online": false, "bootMACAddress": "52:54:00:00:00:01"},
        });
        if !self.no_boot_volume {
            let mut bv = json!({
                "volumeId": format!("vol-{}", &self.ns[3..11]),
                "volumeDriver": "external",
                "connectorId": self.connector_id,
                "iscsiTarget": {"iqn": "iqn.2010-10.com.example:vol-bfv", "portal": "192.0.2.10", "lun": self.lun},
            });
            match &self.secret {
                Some(name) => bv["iscsiCredentialsName"] = json!(name),
                None => bv["iscsiTarget"]["authMethod"] = json!("None"),
            }
            host["spec"]["bootVolume"] = bv;
        }
        host
    }
}

/// A Secret manifest with `data` (base64), as `kubectl get -o yaml` prints it.
pub fn secret(ns: &str, name: &str, username: &str, password: &str) -> Value {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "type": "Opaque",
        "data": {"username": b64(username), "password": b64(password)},
    })
}

/// Writes documents as one multi-document YAML file (JSON is YAML) in a temp dir.
pub fn manifest(docs: &[Value]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hosts.yaml");
    let text: Vec<String> = docs
        .iter()
        .map(|d| serde_json::to_string_pretty(d).unwrap())
        .collect();
    std::fs::write(&path, text.join("\n---\n")).expect("write manifest");
    (dir, path)
}

/// What a `bootvolume` run printed.
pub struct Run {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Wall time.
    pub elapsed: Duration,
}

impl Run {
    /// Both streams, for leak checks and assertion messages.
    pub fn all(&self) -> String {
        format!("--- stdout\n{}--- stderr\n{}", self.stdout, self.stderr)
    }
}

/// Runs `bootvolume ironic-apply -f FILE --ironic-url URL EXTRA...` with trace logging on
/// (so leak checks cover the logs too).
pub fn ironic_apply(file: &std::path::Path, url: &str, extra: &[&str]) -> Run {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_bootvolume"))
        .arg("ironic-apply")
        .arg("-f")
        .arg(file)
        .args(["--ironic-url", url])
        .args(extra)
        .args(["--log-level", "trace"])
        .env("RUST_LOG", "trace")
        .env_remove("BOOTVOLUME_IRONIC_URL")
        .output()
        .expect("run bootvolume");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}
