//! The reconciler under Ironic faults (issue 5): slow responses, client timeouts, 409 "node
//! locked" storms, 500s/503s, connections cut mid-response or closed, responses lost after a
//! successful write, Ironic going away mid-pass, and a real Ironic restart.
//!
//! A fault-injecting proxy ([`ironic_support::proxy`]) sits between `reconcile::apply` and the
//! real Ironic 39.0.0. Each test runs passes in a bounded loop the way the controller does
//! (retryable errors again after a capped backoff, here scaled down from 5 s..300 s), then
//! checks Ironic directly, not through the proxy: the node converged, there is exactly one
//! connector and one boot target (no duplicates), each create reached Ironic successfully
//! once, every error seen was retryable and none showed the CHAP password, and an in-sync
//! pass makes no write.
//!
//! Run with `scripts/with-ironic.sh cargo test --test ironic_faults`.

mod ironic_support;

use bootvolume::{
    ironic::{self, ClientConfig, IronicClient},
    reconcile::{
        Error,
        apply::{HostSpec, apply},
        plan::{CREDENTIALS_KEY, Desired, MANAGED_KEY},
    },
};
use ironic_support::{
    proxy::{Fault, FaultProxy, Rule, internal_error, locked, unavailable},
    *,
};
use k8s_openapi::api::core::v1::Secret;
use reqwest::Method;
use serde_json::{Value, json};
use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

const PASSWORD: &str = "Fx7-fault-chap-secret";
const CONNECTORS: &str = "/v1/volume/connectors";
const TARGETS: &str = "/v1/volume/targets";
/// Passes one test may take before it counts as not converging.
const MAX_PASSES: usize = 60;

/// A host with an external CHAP boot volume and a fresh node for it.
struct Case {
    /// Talks to Ironic directly: set-up and the final checks.
    direct: IronicClient,
    p: HostParams,
    uuid: String,
    host: HostSpec,
    desired: Desired,
}

impl Case {
    async fn new(ironic_url: &str) -> Self {
        let direct = client_for(ironic_url, Duration::from_secs(30));
        let p = HostParams {
            lun: 3,
            ..HostParams::new(&unique_namespace())
        };
        let uuid = enroll(
            &direct,
            &p.ns,
            json!({"properties": {"capabilities": "boot_mode:uefi"}}),
        )
        .await;
        let host = HostSpec::from_value(&p.host()).unwrap();
        let secret: Secret = serde_json::from_value(secret(&p.ns, "chap", "chapuser", PASSWORD)).unwrap();
        let desired = host.desired(Some(&secret)).unwrap().expect("bootVolume");
        Self {
            direct,
            p,
            uuid,
            host,
            desired,
        }
    }
}

fn client_for(url: &str, timeout: Duration) -> IronicClient {
    let _ = rustls::crypto::ring::default_provider().install_default();
    IronicClient::new(ClientConfig::new(url, timeout)).expect("client")
}

/// What the retry loop saw.
struct Converged {
    /// Passes run, the final in-sync one included.
    passes: usize,
    /// The failed passes' errors, in order.
    errors: Vec<Error>,
    /// The changes the successful passes made.
    changes: Vec<String>,
}

impl Converged {
    fn labels(&self) -> Vec<&'static str> {
        self.errors.iter().map(Error::metric_label).collect()
    }
}

/// Runs passes through `via` until one finds the node in sync, like the controller: a
/// retryable error is retried after a capped backoff (50 ms doubling to 1 s); any other
/// error, a waiting change, `MAX_PASSES` passes or `limit` fails the test.
async fn converge(via: &IronicClient, case: &Case, limit: Duration) -> Converged {
    converge_to(via, &case.host, Some(&case.desired), limit).await
}

/// [`converge`] to any desired state (`None`: the host's `bootVolume` was removed).
async fn converge_to(
    via: &IronicClient,
    host: &HostSpec,
    desired: Option<&Desired>,
    limit: Duration,
) -> Converged {
    let start = Instant::now();
    let mut backoff = Duration::from_millis(50);
    let mut out = Converged {
        passes: 0,
        errors: Vec::new(),
        changes: Vec::new(),
    };
    while out.passes < MAX_PASSES {
        out.passes += 1;
        match apply(via, host, desired, false).await {
            Ok(o) => {
                assert!(o.blocked.is_empty(), "nothing should wait: {:?}", o.blocked);
                assert!(
                    !o.changes.iter().any(|c| c.contains(PASSWORD)),
                    "password in {:?}",
                    o.changes
                );
                if o.in_sync() {
                    return out;
                }
                out.changes.extend(o.changes);
                backoff = Duration::from_millis(50);
            }
            Err(e) => {
                let shown = format!("{e} / {e:?}");
                // Not even its first characters (a message cut in the middle of it).
                assert!(!shown.contains(&PASSWORD[..4]), "password in an error: {shown}");
                assert!(e.is_transient(), "pass {}: not retryable: {shown}", out.passes);
                out.errors.push(e);
                assert!(
                    start.elapsed() < limit,
                    "not converged in {limit:?}; errors: {:#?}",
                    out.errors
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    panic!(
        "not converged after {MAX_PASSES} passes; errors: {:#?}",
        out.errors
    );
}

/// The node is configured exactly once (checked on Ironic directly), each create reached
/// Ironic with success once, and an in-sync pass makes no write.
async fn assert_converged(case: &Case, proxy: &FaultProxy) {
    let c = &case.direct;
    proxy.settle(Duration::from_secs(10)).await; // held requests have reached Ironic
    let n = node(c, &case.uuid).await;
    assert_eq!(n["storage_interface"], "external");
    assert_eq!(n["properties"]["capabilities"], "boot_mode:uefi,iscsi_boot:True");
    assert_eq!(n["extra"][MANAGED_KEY], true);

    let (connectors, targets) = volumes(c, &case.uuid).await;
    assert_eq!(connectors.len(), 1, "connectors: {connectors:#?}");
    assert_eq!(
        (connectors[0].kind.as_str(), connectors[0].connector_id.as_str()),
        ("iqn", case.p.connector_id.as_str())
    );
    // Connector ids are unique across nodes in Ironic, but check globally anyway.
    let all: Value = c
        .send(Method::GET, &format!("{CONNECTORS}?detail=true"), None::<&()>)
        .await
        .unwrap();
    let ours = all["connectors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["connector_id"] == case.p.connector_id.as_str())
        .count();
    assert_eq!(ours, 1, "our IQN on {ours} connectors");

    assert_eq!(targets.len(), 1, "targets: {targets:#?}");
    let t = &targets[0];
    assert_eq!((t.boot_index, t.volume_type.as_str()), (0, "iscsi"));
    assert_eq!(t.volume_id, format!("vol-{}", &case.p.ns[3..11]));
    assert!(t.properties["target_lun"].is_i64(), "LUN must be a JSON integer");
    assert_eq!(
        Value::Object(t.properties.clone()),
        json!({
            "target_iqn": "iqn.2010-10.com.example:vol-bfv",
            "target_portal": "192.0.2.10:3260",
            "target_lun": 3,
            "auth_method": "CHAP",
            "auth_username": "chapuser",
            "auth_password": "******",
        })
    );
    assert!(
        t.extra[CREDENTIALS_KEY]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{:?}",
        t.extra
    );

    for path in [CONNECTORS, TARGETS] {
        let statuses = proxy.upstream_statuses("POST", path);
        assert_eq!(
            statuses.iter().filter(|s| **s == 201).count(),
            1,
            "POST {path} created more than once or never: Ironic answered {statuses:?}"
        );
        assert!(statuses.iter().all(|s| *s == 201 || *s == 409), "{statuses:?}");
    }

    let fresh = client_for(c.base_url(), Duration::from_secs(30));
    let before = write_stamps(c, &case.uuid).await;
    let outcome = apply(&fresh, &case.host, Some(&case.desired), false)
        .await
        .unwrap();
    assert!(outcome.in_sync(), "{outcome:?}");
    assert_eq!(fresh.calls().writes(), 0, "{:?}", fresh.calls());
    assert_eq!(write_stamps(c, &case.uuid).await, before, "in-sync pass wrote");
}

/// How many `method path` requests the proxy received (reached Ironic or not).
fn received(proxy: &FaultProxy, method: &str, path: &str) -> usize {
    proxy
        .seen()
        .iter()
        .filter(|s| s.method == method && s.path == path)
        .count()
}

fn shared_ironic() -> String {
    ironic().url
}

#[tokio::test]
async fn slow_responses_within_the_timeout_converge_in_one_pass() {
    let case = Case::new(&shared_ironic()).await;
    let proxy = FaultProxy::start(&shared_ironic()).await;
    proxy.add(Rule::new(Fault::SlowResponse(Duration::from_millis(250))).times(usize::MAX));
    let via = client_for(&proxy.url, Duration::from_secs(3));

    let start = Instant::now();
    let run = converge(&via, &case, Duration::from_secs(30)).await;
    assert!(run.errors.is_empty(), "{:#?}", run.errors);
    assert_eq!((run.passes, run.changes.len()), (2, 3), "{:?}", run.changes);
    // 6 calls in the first pass, 3 in the second, each held 250 ms.
    assert!(
        start.elapsed() >= Duration::from_millis(9 * 250),
        "{:?}",
        start.elapsed()
    );
    assert!(proxy.seen().iter().all(|s| s.fault == Some("slow-response")));
    assert_converged(&case, &proxy).await;
}

/// Ironic makes the write but answers after the client timeout: the client reports a
/// retryable timeout, and the next pass sees the write instead of repeating it.
#[tokio::test]
async fn writes_answered_after_the_timeout_are_retried_by_re_reading_not_re_sending() {
    let case = Case::new(&shared_ironic()).await;
    let proxy = FaultProxy::start(&shared_ironic()).await;
    proxy.add(
        Rule::new(Fault::SlowResponse(Duration::from_millis(4500)))
            .writes()
            .times(2),
    );
    // 3 s, not less: a shared Ironic busy with other tests can take over a second to
    // answer an unfaulted PATCH, which would add timeouts this test does not plan.
    let via = client_for(&proxy.url, Duration::from_secs(3));

    let run = converge(&via, &case, Duration::from_secs(30)).await;
    assert_eq!(run.labels(), ["ironic_unreachable"; 2], "{:#?}", run.errors);
    assert!(
        run.errors.iter().all(|e| e.to_string().contains("timed out")),
        "{:#?}",
        run.errors
    );
    // The target and connector POSTs timed out but were done: never sent again; the node
    // PATCH (capability, marker, storage interface) was sent once.
    assert_eq!(received(&proxy, "PATCH", &format!("/v1/nodes/{}", case.uuid)), 1);
    assert_eq!(received(&proxy, "POST", CONNECTORS), 1);
    assert_eq!(received(&proxy, "POST", TARGETS), 1);
    assert_converged(&case, &proxy).await;
}

/// The connector POST is held past the client timeout and reaches Ironic only after the
/// next pass created the connector: Ironic's uniqueness refuses the late one (409), and the
/// reconciler still converges to a single connector.
#[tokio::test]
async fn a_late_duplicate_create_is_refused_and_the_node_converges() {
    let case = Case::new(&shared_ironic()).await;
    let proxy = FaultProxy::start(&shared_ironic()).await;
    proxy.add(
        Rule::new(Fault::SlowRequest(Duration::from_millis(6000)))
            .method("POST")
            .path(CONNECTORS),
    );
    // Held twice the client timeout, so the next pass has long created the connector.
    let via = client_for(&proxy.url, Duration::from_secs(3));

    let run = converge(&via, &case, Duration::from_secs(30)).await;
    assert_eq!(run.labels(), ["ironic_unreachable"], "{:#?}", run.errors);
    proxy.settle(Duration::from_secs(10)).await;
    let mut statuses = proxy.upstream_statuses("POST", CONNECTORS);
    statuses.sort();
    assert_eq!(statuses, [201, 409], "the late create must be refused by Ironic");
    assert_converged(&case, &proxy).await;
}

#[tokio::test]
async fn a_storm_of_409_node_locked_is_retried_until_the_lock_clears() {
    let case = Case::new(&shared_ironic()).await;
    let proxy = FaultProxy::start(&shared_ironic()).await;
    proxy.add(Rule::new(locked(&case.uuid)).writes().times(5));
    let via = client_for(&proxy.url, Duration::from_secs(5));

    let start = Instant::now();
    let run = converge(&via, &case, Duration::from_secs(30)).await;
    // Retried sub-second inside the pass (Ironic holds the lock for short tasks): no
    // failed pass, no wait for the next one.
    assert!(run.errors.is_empty(), "{:#?}", run.errors);
    assert_eq!(run.passes, 2, "one configuring pass, one in-sync pass");
    // Five 200 ms retries; an exponential backoff (1+2+4+8 s) would fail this.
    assert!(start.elapsed() < Duration::from_secs(6), "{:?}", start.elapsed());
    assert_eq!(
        proxy.seen().iter().filter(|s| s.fault == Some("respond")).count(),
        5
    );
    assert_converged(&case, &proxy).await;
}

/// 503s (HTML, from a proxy in front of Ironic) on reads, Ironic 500s on writes, one of which
/// echoes the CHAP password: retried, and the password is scrubbed from the error.
#[tokio::test]
async fn server_errors_are_retried_and_an_echoed_password_is_scrubbed() {
    let case = Case::new(&shared_ironic()).await;
    let proxy = FaultProxy::start(&shared_ironic()).await;
    proxy
        .add(Rule::new(unavailable()).method("GET").times(2))
        .add(Rule::new(internal_error("Database is locked")).method("PATCH"))
        .add(
            Rule::new(internal_error(&format!(
                "Unexpected error storing target properties {{'auth_password': '{PASSWORD}'}}"
            )))
            .method("POST")
            .path(TARGETS),
        )
        // Ironic's message is cut at 300 characters: here in the middle of the password.
        .add(
            Rule::new(internal_error(&format!(
                "{:<277}'auth_password': '{PASSWORD}'",
                "Unexpected error storing target properties"
            )))
            .method("POST")
            .path(TARGETS),
        );
    let via = client_for(&proxy.url, Duration::from_secs(5));

    let run = converge(&via, &case, Duration::from_secs(30)).await;
    assert_eq!(run.labels(), ["ironic_server_error"; 5], "{:#?}", run.errors);
    let statuses: Vec<u16> = run
        .errors
        .iter()
        .map(|e| match e {
            Error::Ironic {
                source: ironic::Error::Server { status, .. },
                ..
            } => *status,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(statuses, [503, 503, 500, 500, 500]);
    // The target is created first, so its two failures come before the node PATCH's.
    let echoed = run.errors[2].to_string();
    assert!(
        echoed.contains("create volume target") && echoed.contains("'auth_password': '<redacted>'"),
        "{echoed}"
    );
    let cut = run.errors[3].to_string();
    assert!(cut.ends_with("'auth_password': '<redacted>..."), "{cut}");
    assert_converged(&case, &proxy).await;
}

/// A node PATCH whose response is cut mid-body (the write was done) and a connector POST
/// whose connection is closed before it reaches Ironic.
#[tokio::test]
async fn connections_cut_mid_response_or_closed_are_retried() {
    let case = Case::new(&shared_ironic()).await;
    let proxy = FaultProxy::start(&shared_ironic()).await;
    proxy
        .add(Rule::new(Fault::CutResponse).method("PATCH"))
        .add(Rule::new(Fault::Close).method("POST").path(CONNECTORS));
    let via = client_for(&proxy.url, Duration::from_secs(5));

    let run = converge(&via, &case, Duration::from_secs(30)).await;
    assert_eq!(run.labels(), ["ironic_unreachable"; 2], "{:#?}", run.errors);
    // The cut PATCH (capability, marker and storage interface in one, from `enroll`) was
    // done, so not repeated.
    assert_eq!(received(&proxy, "PATCH", &format!("/v1/nodes/{}", case.uuid)), 1);
    // Closed before reaching Ironic, so sent again: twice received, once created.
    assert_eq!(received(&proxy, "POST", CONNECTORS), 2);
    assert_converged(&case, &proxy).await;
}

/// The classic duplicate hazard: Ironic creates the connector (and later the target), the
/// response is lost. The next pass must find them, not POST them again.
#[tokio::test]
async fn a_create_whose_response_is_lost_is_not_sent_again() {
    let case = Case::new(&shared_ironic()).await;
    let proxy = FaultProxy::start(&shared_ironic()).await;
    proxy
        .add(Rule::new(Fault::DropResponse).method("POST").path(CONNECTORS))
        .add(Rule::new(Fault::DropResponse).method("POST").path(TARGETS));
    let via = client_for(&proxy.url, Duration::from_secs(5));

    let run = converge(&via, &case, Duration::from_secs(30)).await;
    assert_eq!(run.labels(), ["ironic_unreachable"; 2], "{:#?}", run.errors);
    assert_eq!(received(&proxy, "POST", CONNECTORS), 1, "connector POST repeated");
    assert_eq!(received(&proxy, "POST", TARGETS), 1, "target POST repeated");
    assert_eq!(proxy.upstream_statuses("POST", CONNECTORS), [201]);
    assert_converged(&case, &proxy).await;
}

/// Mid-pass (node patched, connector created), every connection closes and the port refuses
/// connections for 1.5 s, as when Ironic restarts.
#[tokio::test]
async fn ironic_going_away_mid_pass_is_retried_until_it_is_back() {
    let case = Case::new(&shared_ironic()).await;
    let proxy = FaultProxy::start(&shared_ironic()).await;
    proxy.add(
        Rule::new(Fault::Outage(Duration::from_millis(1500)))
            .method("POST")
            .path(TARGETS),
    );
    let via = client_for(&proxy.url, Duration::from_secs(5));

    let run = converge(&via, &case, Duration::from_secs(30)).await;
    assert!(run.errors.len() >= 2, "{:#?}", run.errors);
    assert!(
        run.labels().iter().all(|l| *l == "ironic_unreachable"),
        "{:#?}",
        run.errors
    );
    assert!(
        run.errors.iter().any(|e| format!("{e:?}").contains("refused")),
        "no pass hit the refusing port: {:#?}",
        run.errors
    );
    assert_eq!(received(&proxy, "POST", CONNECTORS), 1);
    assert_converged(&case, &proxy).await;
}

/// Removing `bootVolume` under faults: the target DELETE's response is lost (the delete
/// was done), the connector DELETE meets a 409 storm, the node PATCH a 503. The node ends up
/// clean: no connector, no target, `noop`, no `iscsi_boot`, no marker.
#[tokio::test]
async fn removal_under_lost_responses_and_locks_converges_to_a_clean_node() {
    let case = Case::new(&shared_ironic()).await;
    let proxy = FaultProxy::start(&shared_ironic()).await;
    let via = client_for(&proxy.url, Duration::from_secs(5));
    assert!(
        converge(&via, &case, Duration::from_secs(30))
            .await
            .errors
            .is_empty()
    );

    proxy
        .add(Rule::new(Fault::DropResponse).method("DELETE").path(TARGETS))
        .add(
            Rule::new(locked(&case.uuid))
                .method("DELETE")
                .path(CONNECTORS)
                .times(3),
        )
        .add(Rule::new(unavailable()).method("PATCH"));
    let removed = HostSpec::from_value(
        &HostParams {
            no_boot_volume: true,
            ..case.p.clone()
        }
        .host(),
    )
    .unwrap();
    let run = converge_to(&via, &removed, None, Duration::from_secs(30)).await;
    assert_eq!(
        run.labels(),
        // The 409 storm is retried inside the pass.
        ["ironic_unreachable", "ironic_server_error"],
        "{:#?}",
        run.errors
    );
    // The lost DELETE was done: the next pass saw the target gone and did not repeat it.
    let deletes = |prefix: &str| {
        proxy
            .seen()
            .iter()
            .filter(|s| s.method == "DELETE" && s.path.starts_with(prefix))
            .count()
    };
    assert_eq!(deletes(TARGETS), 1, "target DELETE repeated");
    assert_eq!(deletes(CONNECTORS), 4, "3 refused as locked, then done");

    let c = &case.direct;
    let n = node(c, &case.uuid).await;
    assert_eq!(n["storage_interface"], "noop");
    assert_eq!(n["properties"]["capabilities"], "boot_mode:uefi");
    assert!(n["extra"].get(MANAGED_KEY).is_none(), "{}", n["extra"]);
    let (connectors, targets) = volumes(c, &case.uuid).await;
    assert!(
        connectors.is_empty() && targets.is_empty(),
        "{connectors:?} {targets:?}"
    );
    let fresh = client_for(c.base_url(), Duration::from_secs(30));
    let outcome = apply(&fresh, &removed, None, false).await.unwrap();
    assert!(outcome.in_sync(), "{outcome:?}");
    assert_eq!((fresh.calls().get, fresh.calls().writes()), (1, 0));
}

/// An Ironic of this test's own (the shared one serves the other tests), restarted for real.
struct OwnIronic {
    state: tempfile::TempDir,
    url: String,
    port: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/ironic-standalone.sh")
}

impl OwnIronic {
    fn start() -> Self {
        let state = tempfile::tempdir().expect("tempdir");
        let mut me = Self {
            state,
            url: String::new(),
            port: String::new(),
        };
        me.url = me.run(&["start"]);
        me.port = me.url.rsplit(':').next().unwrap().to_owned();
        me
    }

    fn dir(&self) -> String {
        self.state.path().join("ironic").display().to_string()
    }

    /// `ironic-standalone.sh ARGS... STATE_DIR [PORT]`; its stdout.
    fn run(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(script());
        cmd.args(args).arg(self.dir());
        if args == ["start"] && !self.port.is_empty() {
            cmd.arg(&self.port);
        }
        let out = cmd.output().expect("ironic-standalone.sh");
        assert!(
            out.status.success(),
            "ironic-standalone.sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for OwnIronic {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(self.dir()).output();
    }
}

/// The real thing: Ironic is stopped (SIGTERM) while a connector POST is on its way and
/// started again on the same port and database; the loop converges once it is back.
#[tokio::test]
async fn a_real_ironic_restart_mid_pass_converges() {
    let own = std::sync::Arc::new(tokio::task::spawn_blocking(OwnIronic::start).await.unwrap());
    let case = Case::new(&own.url).await;
    let proxy = FaultProxy::start(&own.url).await;
    // Hold the connector POST so the restart begins while it is in flight.
    proxy.add(
        Rule::new(Fault::SlowRequest(Duration::from_millis(1000)))
            .method("POST")
            .path(CONNECTORS),
    );
    let via = client_for(&proxy.url, Duration::from_secs(5));

    let restart = async {
        let deadline = Instant::now() + Duration::from_secs(20);
        while received(&proxy, "POST", CONNECTORS) == 0 {
            assert!(
                Instant::now() < deadline,
                "the pass never reached the connector POST"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let started = Instant::now();
        let own = std::sync::Arc::clone(&own);
        tokio::task::spawn_blocking(move || {
            own.run(&["stop"]);
            own.run(&["start"]);
        })
        .await
        .unwrap();
        started.elapsed()
    };
    let (run, downtime) = tokio::join!(converge(&via, &case, Duration::from_secs(60)), restart);
    assert!(!run.errors.is_empty(), "the restart went unnoticed");
    assert!(
        run.labels().iter().all(|l| *l == "ironic_unreachable"),
        "{:#?}",
        run.errors
    );
    eprintln!(
        "restart took {downtime:?}; {} passes, {} failed",
        run.passes,
        run.errors.len()
    );
    assert_converged(&case, &proxy).await;
}
