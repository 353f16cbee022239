//! `bootvolume reconcile` shutdown, end to end: the real binary against a Kubernetes API
//! double (tests/kube_double) and, where a reconcile is in flight, the real Ironic behind the
//! fault proxy. SIGTERM goes to the process; the tests assert how long it took to exit, the
//! exit status, the Lease release request, and what Ironic holds afterwards.
//!
//! `BOOTVOLUME_TEST_SHUTDOWN_RUNS=N` repeats each scenario N times and prints the exit times
//! (used to measure; the default is one run). `BOOTVOLUME_TEST_BIN` runs another build of the
//! binary than cargo's (e.g. when several checkouts share one target directory).

mod ironic_support;
mod kube_double;

use ironic_support::{proxy::*, *};
use kube_double::{KubeDouble, Seen};
use serde_json::{Value, json};
use std::{
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

const LEASE_NS: &str = "kube-ns";
const IDENTITY: &str = "replica-a";
const PASSWORD: &str = "Shutdown-chap-pw-3";
const TARGETS: &str = "/v1/volume/targets";

fn runs() -> usize {
    std::env::var("BOOTVOLUME_TEST_SHUTDOWN_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

/// The running binary; killed if a test fails before it exits.
struct Reconciler {
    child: Child,
    dir: tempfile::TempDir,
}

impl Reconciler {
    fn start(kube: &KubeDouble, ironic_url: &str, ns: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = kube.kubeconfig(dir.path(), LEASE_NS);
        let log = std::fs::File::create(dir.path().join("stderr")).unwrap();
        let bin =
            std::env::var("BOOTVOLUME_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_bootvolume").into());
        let child = Command::new(bin)
            .args(["reconcile", "--ironic-url", ironic_url, "--ironic-timeout", "30"])
            .args(["--metrics-listen", "127.0.0.1:0", "--namespace", ns])
            .args([
                "--lease-namespace",
                LEASE_NS,
                "--leader-election-identity",
                IDENTITY,
            ])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("BOOTVOLUME_LOG_LEVEL", "info")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start bootvolume reconcile");
        Self { child, dir }
    }

    /// Waits until the process has installed its signal handlers (it logs "reconciler
    /// starting" right after); before that, SIGTERM's default action would kill it.
    async fn started(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(self.dir.path().join("stderr"))
            .unwrap_or_default()
            .contains("reconciler starting")
        {
            assert!(Instant::now() < deadline, "the reconciler did not start");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Sends SIGTERM; returns when it was sent.
    fn sigterm(&self) -> Instant {
        let at = Instant::now();
        // The shell's builtin: no dependency on a `kill` binary being installed.
        let ok = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", self.child.id())])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -TERM failed");
        at
    }

    /// Waits (up to `within`) for the exit; returns the status and the stderr log.
    async fn exited(&mut self, within: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default();
                return (status, log);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let log = std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default();
                panic!("still running {within:?} after SIGTERM:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Reconciler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn held_by(identity: &str) -> Value {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "bootvolume-reconciler", "namespace": LEASE_NS},
        "spec": {"holderIdentity": identity, "leaseDurationSeconds": 15, "acquireTime": now, "renewTime": now},
    })
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

fn report(name: &str, times: &[Duration]) {
    let mut v: Vec<u128> = times.iter().map(|d| ms(*d)).collect();
    v.sort();
    println!(
        "{name}: {} runs, exit after SIGTERM min {} ms, median {} ms, max {} ms ({v:?})",
        v.len(),
        v[0],
        v[v.len() / 2],
        v[v.len() - 1]
    );
}

/// SIGTERM while the first BareMetalHost list is still pending (held by the API): as the
/// leader, the Lease is released and the process exits 0 at once; as a standby (the Lease
/// held by another replica), it exits 0 without touching the Lease. Ironic is never called
/// (its URL is a closed port).
#[tokio::test]
async fn sigterm_before_the_first_host_list_exits_0_at_once_and_releases_the_lease() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ironic_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    for (case, lease) in [("leader", None), ("standby", Some(held_by("replica-b")))] {
        let mut times = Vec::new();
        for _ in 0..runs() {
            let ns = unique_namespace();
            let mut p = HostParams::new(&ns);
            p.secret = Some("chap".into());
            let kube = KubeDouble::start(
                vec![p.host()],
                vec![secret(&ns, "chap", "chapuser", PASSWORD)],
                lease.clone(),
            )
            .await;
            kube.hold_host_list(true);
            let mut bin = Reconciler::start(&kube, &ironic_url, &ns, &[]);
            if lease.is_none() {
                kube.wait_for(Duration::from_secs(10), Seen::is_host_list).await;
                assert_eq!(
                    kube.lease().unwrap()["spec"]["holderIdentity"],
                    IDENTITY,
                    "{case}"
                );
            } else {
                kube.wait_for(Duration::from_secs(10), Seen::is_lease).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let sent = bin.sigterm();
            kube.hold_host_list(false); // the list arrives after the signal
            let (status, log) = bin.exited(Duration::from_secs(10)).await;
            let took = sent.elapsed();
            times.push(took);
            assert_eq!(status.code(), Some(0), "{case}: {log}");
            assert!(took < Duration::from_secs(3), "{case}: took {took:?}\n{log}");
            let seen = kube.seen();
            assert!(!seen.iter().any(Seen::is_event), "{case}: nothing reconciled");
            let releases: Vec<&Seen> = seen.iter().filter(|s| s.is_lease_release()).collect();
            let holder = kube.lease().unwrap()["spec"]["holderIdentity"].clone();
            if lease.is_none() {
                assert_eq!(releases.len(), 1, "{case}: one release request");
                assert!(releases[0].at >= sent, "{case}: released after the signal");
                assert_eq!(holder, Value::Null, "{case}: {log}");
                assert!(
                    log.contains("stopped before the first host list arrived"),
                    "{log}"
                );
            } else {
                assert!(releases.is_empty(), "{case}: released a Lease it does not hold");
                assert_eq!(holder, "replica-b");
            }
        }
        report(&format!("sigterm before the host list ({case})"), &times);
    }
}

/// SIGTERM at varied moments after start-up (before the Kubernetes client is up, while reading
/// the Lease, before or after the first list, during a pass that fails fast against an
/// unreachable Ironic): always exit 0 within seconds, and the Lease is not left held.
#[tokio::test]
async fn sigterm_at_any_moment_exits_0_without_keeping_the_lease() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ironic_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut times = Vec::new();
    for _ in 0..runs() {
        for delay_ms in [0, 20, 50, 100, 200, 400] {
            let ns = unique_namespace();
            let mut p = HostParams::new(&ns);
            p.secret = Some("chap".into());
            let kube = KubeDouble::start(
                vec![p.host()],
                vec![secret(&ns, "chap", "chapuser", PASSWORD)],
                None,
            )
            .await;
            let mut bin = Reconciler::start(&kube, &ironic_url, &ns, &[]);
            bin.started().await;
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            let sent = bin.sigterm();
            let (status, log) = bin.exited(Duration::from_secs(10)).await;
            let took = sent.elapsed();
            times.push(took);
            assert_eq!(status.code(), Some(0), "SIGTERM after {delay_ms} ms: {log}");
            assert!(
                took < Duration::from_secs(3),
                "SIGTERM after {delay_ms} ms: took {took:?}\n{log}"
            );
            if let Some(lease) = kube.lease() {
                assert_eq!(
                    lease["spec"]["holderIdentity"],
                    Value::Null,
                    "SIGTERM after {delay_ms} ms: {log}"
                );
            }
        }
    }
    report("sigterm 0-400 ms after start", &times);
}

/// Starts the binary on a fresh node with the target creation's response held `hold` by the
/// fault proxy (Ironic has made the write), waits until Ironic answered it, sends SIGTERM.
/// Returns what the test asserts on.
async fn sigterm_during_target_creation(
    hold: Duration,
    extra: &[&str],
) -> (
    ExitStatus,
    String,
    Duration,
    Instant,
    KubeDouble,
    String,
    HostParams,
) {
    let c = client();
    let ns = unique_namespace();
    let mut p = HostParams::new(&ns);
    p.secret = Some("chap".into());
    let uuid = enroll(&c, &ns, json!({})).await;
    let proxy = FaultProxy::start(&ironic().url).await;
    proxy.add(Rule::new(Fault::SlowResponse(hold)).method("POST").path(TARGETS));
    let kube = KubeDouble::start(
        vec![p.host()],
        vec![secret(&ns, "chap", "chapuser", PASSWORD)],
        None,
    )
    .await;
    let mut bin = Reconciler::start(&kube, &proxy.url, &ns, extra);
    let deadline = Instant::now() + Duration::from_secs(15);
    while proxy.upstream_statuses("POST", TARGETS).is_empty() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(bin.dir.path().join("stderr")).unwrap_or_default();
            panic!(
                "the target was never created; proxy saw {:?}\n{log}",
                proxy.seen()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let sent = bin.sigterm();
    let (status, log) = bin.exited(hold + Duration::from_secs(10)).await;
    let took = sent.elapsed();
    (status, log, took, sent, kube, uuid, p)
}

/// SIGTERM while a reconcile waits for Ironic's answer to its last write: the reconcile
/// finishes (its Event is sent), then the Lease is released and the process exits 0; Ironic
/// holds the whole configuration.
#[tokio::test]
async fn sigterm_mid_reconcile_finishes_it_then_releases_the_lease_and_exits_0() {
    let hold = Duration::from_millis(1500);
    let c = client();
    let mut times = Vec::new();
    for _ in 0..runs() {
        let (status, log, took, sent, kube, uuid, p) = sigterm_during_target_creation(hold, &[]).await;
        times.push(took);
        assert_eq!(status.code(), Some(0), "{log}");
        assert!(
            took >= hold - Duration::from_millis(300) && took < hold + Duration::from_secs(3),
            "took {took:?}\n{log}"
        );
        let seen = kube.seen();
        let event = seen.iter().find(|s| s.is_event()).expect("the reconcile's Event");
        assert_eq!(event.body["reason"], "BootVolumeApplied");
        assert!(
            event.at > sent,
            "the Event came after the signal: the pass was not cut"
        );
        let release = seen
            .iter()
            .find(|s| s.is_lease_release())
            .expect("the Lease release request");
        assert!(release.at > event.at, "released after the reconcile finished");
        assert_eq!(kube.lease().unwrap()["spec"]["holderIdentity"], Value::Null);
        let (connectors, targets) = volumes(&c, &uuid).await;
        assert_eq!((connectors.len(), targets.len()), (1, 1), "nothing half-applied");
        assert_eq!(connectors[0].connector_id, p.connector_id);
        let n = node(&c, &uuid).await;
        assert_eq!(n["storage_interface"], "external");
        assert_eq!(n["extra"]["bootvolume_managed"], true);
    }
    report("sigterm mid-reconcile (Ironic answer held 1.5 s)", &times);
}

/// A reconcile stuck longer than `--shutdown-timeout`: the process exits 1 at the deadline
/// with a log line naming the host whose reconcile was still running.
#[tokio::test]
async fn a_shutdown_past_its_timeout_exits_1_naming_what_was_stuck() {
    let mut times = Vec::new();
    for _ in 0..runs() {
        let (status, log, took, _, kube, _, p) =
            sigterm_during_target_creation(Duration::from_secs(8), &["--shutdown-timeout", "1"]).await;
        times.push(took);
        assert_eq!(status.code(), Some(1), "{log}");
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(3),
            "took {took:?}\n{log}"
        );
        let line = log
            .lines()
            .find(|l| l.contains("shutdown did not finish in time"))
            .unwrap_or_else(|| panic!("no timeout line:\n{log}"));
        assert!(
            line.contains(&format!("reconcile still running for {}/host", p.ns)),
            "{line}"
        );
        assert!(!kube.seen().iter().any(Seen::is_event), "the pass never finished");
    }
    report("shutdown past --shutdown-timeout 1", &times);
}
