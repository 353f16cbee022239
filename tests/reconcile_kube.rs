//! The `reconcile` controller's Kubernetes side, with kube's mockable client (tower-test,
//! the controller-rs `ApiServerVerifier` pattern): every request the reconciler makes to the
//! API server is asserted (method, path, body) and answered here. Ironic is the real one
//! (see tests/ironic_support).

mod ironic_support;

use bootvolume::{
    ironic::{ClientConfig, IronicClient},
    reconcile::{
        Error,
        controller::{self, Context, LeaseConfig},
        metrics::Metrics,
    },
};
use http::{Request, Response, StatusCode};
use ironic_support::*;
use kube::{
    Client,
    api::DynamicObject,
    client::Body,
    runtime::{controller::Action, events::Reporter},
};
use serde_json::{Value, json};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::timeout;

const PASSWORD: &str = "Kube-side-chap-pw-7";
const RESYNC: Duration = Duration::from_secs(600);

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// One request the API server saw.
struct Seen {
    method: String,
    path: String,
    content_type: String,
    body: Value,
}

/// The API server side of the mock: takes the next request and returns it with a responder.
struct ApiServer(Handle);

impl ApiServer {
    async fn next(&mut self) -> (Seen, tower_test::mock::SendResponse<Response<Body>>) {
        let (req, send) = timeout(Duration::from_secs(5), self.0.next_request())
            .await
            .expect("timed out waiting for an API request")
            .expect("client dropped");
        let method = req.method().to_string();
        let path = req.uri().to_string();
        let content_type = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert!(
            !String::from_utf8_lossy(&bytes).contains(PASSWORD),
            "password sent to the API server: {path}"
        );
        (
            Seen {
                method,
                path,
                content_type,
                body,
            },
            send,
        )
    }

    /// Expects `GET` of Secret `ns/name`; answers with it, or 404 when `data` is `None`.
    async fn secret_get(&mut self, ns: &str, name: &str, data: Option<Value>) {
        let (seen, send) = self.next().await;
        assert_eq!(seen.method, "GET");
        assert_eq!(seen.path, format!("/api/v1/namespaces/{ns}/secrets/{name}"));
        match data {
            Some(secret) => send.send_response(json_response(StatusCode::OK, &secret)),
            None => send.send_response(json_response(
                StatusCode::NOT_FOUND,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                        "message": format!("secrets \"{name}\" not found")}),
            )),
        }
    }

    /// Expects an Event on host `ns/host`: created (POST), or, when it repeats, updated as a
    /// series (PATCH, kube's Recorder dedup). Answers and returns its body.
    async fn event(&mut self, ns: &str) -> Value {
        let (seen, send) = self.next().await;
        let events = format!("/apis/events.k8s.io/v1/namespaces/{ns}/events");
        match seen.method.as_str() {
            "POST" => assert_eq!(seen.path, format!("{events}?")),
            "PATCH" => assert!(seen.path.starts_with(&format!("{events}/host.")), "{}", seen.path),
            other => panic!("unexpected {other} {}", seen.path),
        }
        assert_eq!(seen.body["regarding"]["kind"], "BareMetalHost");
        assert_eq!(seen.body["regarding"]["apiVersion"], "metal3.io/v1alpha1");
        assert_eq!(seen.body["regarding"]["name"], "host");
        assert_eq!(seen.body["reportingController"], "bootvolume-reconciler");
        send.send_response(json_response(StatusCode::CREATED, &seen.body));
        seen.body
    }

    /// Asserts the reconciler made no further request.
    async fn silent(&mut self) {
        if let Ok(Some((req, _))) = timeout(Duration::from_millis(300), self.0.next_request()).await {
            panic!("unexpected request {} {}", req.method(), req.uri());
        }
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn mock_kube() -> (Client, ApiServer) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(svc, "default"), ApiServer(handle))
}

fn context(kube: Client, ironic: IronicClient) -> Arc<Context> {
    let reporter = Reporter {
        controller: "bootvolume-reconciler".into(),
        instance: Some("test-0".into()),
    };
    Arc::new(Context::new(
        kube,
        ironic,
        Arc::new(Metrics::new()),
        reporter,
        false,
        RESYNC,
    ))
}

fn host_object(p: &HostParams) -> Arc<DynamicObject> {
    Arc::new(serde_json::from_value(p.host()).expect("host object"))
}

/// Runs one reconcile while `script` plays the API server; returns both results.
async fn reconcile_with<F, Fut>(
    ctx: &Arc<Context>,
    host: &Arc<DynamicObject>,
    api: ApiServer,
    script: F,
) -> (Result<Action, Error>, ApiServer)
where
    F: FnOnce(ApiServer) -> Fut,
    Fut: std::future::Future<Output = ApiServer> + Send + 'static,
{
    let verifier = tokio::spawn(script(api));
    let result = controller::reconcile(host.clone(), ctx.clone()).await;
    let api = timeout(Duration::from_secs(5), verifier)
        .await
        .expect("verifier timed out")
        .expect("verifier panicked");
    (result, api)
}

#[tokio::test]
async fn applies_reads_the_secret_and_reports_an_event_then_stays_silent_in_sync() {
    let c = client();
    let p = HostParams::new(&unique_namespace());
    enroll(&c, &p.ns, json!({})).await;
    let (kube, api) = mock_kube();
    let ctx = context(kube, client());
    let host = host_object(&p);
    let secret = secret(&p.ns, "chap", "chapuser", PASSWORD);

    let (ns, s) = (p.ns.clone(), secret.clone());
    let (result, api) = reconcile_with(&ctx, &host, api, |mut api| async move {
        api.secret_get(&ns, "chap", Some(s)).await;
        let ev = api.event(&ns).await;
        assert_eq!(
            (ev["type"].as_str(), ev["reason"].as_str()),
            (Some("Normal"), Some("BootVolumeApplied"))
        );
        let note = ev["note"].as_str().unwrap();
        assert!(
            note.contains("create volume target") && note.contains("auth_password=<redacted>"),
            "{note}"
        );
        api
    })
    .await;
    assert_eq!(result.unwrap(), Action::requeue(RESYNC));

    // Second pass: the Secret is read again, Ironic is in sync, no Event.
    let (ns, s) = (p.ns.clone(), secret.clone());
    let (result, mut api) = reconcile_with(&ctx, &host, api, |mut api| async move {
        api.secret_get(&ns, "chap", Some(s)).await;
        api
    })
    .await;
    assert_eq!(result.unwrap(), Action::requeue(RESYNC));
    api.silent().await;
}

/// Configure, rotate (twice), remove: after each step the newest Event on the host names
/// that step, with a note about it. An identical repeat only counts up its series; an
/// in-sync pass sends nothing.
#[tokio::test]
async fn the_newest_event_tells_the_newest_change() {
    let c = client();
    let mut p = HostParams::new(&unique_namespace());
    let uuid = enroll(&c, &p.ns, json!({})).await;
    let (kube, mut api) = mock_kube();
    let ctx = context(kube, client());
    let rotated = |n: u32| format!("{PASSWORD}-{n}");
    // (bootVolume kept, password, reason, note starts with, note contains, series count)
    let steps = [
        (
            true,
            PASSWORD.to_owned(),
            Some("BootVolumeApplied"),
            "applied on Ironic node",
            "create volume target",
            None,
        ),
        (
            true,
            rotated(2),
            Some("BootVolumeCredentialsRotated"),
            "sent rotated CHAP credentials on Ironic node",
            "create volume target",
            None,
        ),
        (
            true,
            rotated(3),
            Some("BootVolumeCredentialsRotated"),
            "sent rotated CHAP credentials on Ironic node",
            "create volume target",
            Some(2),
        ),
        (true, rotated(3), None, "", "", None),
        (
            false,
            rotated(3),
            Some("BootVolumeRemoved"),
            "removed the boot volume on Ironic node",
            "delete volume target",
            None,
        ),
        (false, rotated(3), None, "", "", None),
    ];
    for (i, (keep, password, reason, starts, contains, series)) in steps.into_iter().enumerate() {
        p.no_boot_volume = !keep;
        let host = host_object(&p);
        let (ns, s) = (p.ns.clone(), secret(&p.ns, "chap", "chapuser", &password));
        let (result, back) = reconcile_with(&ctx, &host, api, move |mut api| async move {
            if keep {
                api.secret_get(&ns, "chap", Some(s)).await;
            }
            if let Some(reason) = reason {
                let ev = api.event(&ns).await;
                assert_eq!(
                    (ev["type"].as_str(), ev["reason"].as_str()),
                    (Some("Normal"), Some(reason)),
                    "step {i}"
                );
                let note = ev["note"].as_str().unwrap();
                assert!(
                    note.starts_with(starts) && note.contains(contains),
                    "step {i}: {note}"
                );
                assert!(!note.contains(&password), "step {i}: {note}");
                assert_eq!(ev["series"]["count"].as_i64(), series, "step {i}");
            }
            api
        })
        .await;
        api = back;
        assert_eq!(result.unwrap(), Action::requeue(RESYNC), "step {i}");
        api.silent().await;
    }
    let (connectors, targets) = volumes(&c, &uuid).await;
    assert!(connectors.is_empty() && targets.is_empty(), "removed from Ironic");
}

#[tokio::test]
async fn missing_secret_is_a_warning_event_and_a_slow_retry() {
    let c = client();
    let p = HostParams::new(&unique_namespace());
    enroll(&c, &p.ns, json!({})).await;
    let (kube, api) = mock_kube();
    let ctx = context(kube, client());
    let host = host_object(&p);
    let ns = p.ns.clone();
    let (result, mut api) = reconcile_with(&ctx, &host, api, |mut api| async move {
        api.secret_get(&ns, "chap", None).await;
        let ev = api.event(&ns).await;
        assert_eq!(
            (ev["type"].as_str(), ev["reason"].as_str()),
            (Some("Warning"), Some("CredentialsMissing"))
        );
        assert_eq!(ev["note"], format!("Secret {ns}/chap not found"));
        api
    })
    .await;
    let err = result.unwrap_err();
    assert!(matches!(err, Error::SecretNotFound { .. }), "{err}");
    assert_eq!(
        controller::error_policy(host.clone(), &err, ctx.clone()),
        Action::requeue(controller::BACKOFF_MAX)
    );
    api.silent().await;
}

#[tokio::test]
async fn waiting_for_power_off_is_reported_and_retried_with_backoff() {
    let c = client();
    let mut p = HostParams::new(&unique_namespace());
    let uuid = enroll(&c, &p.ns, json!({})).await;
    assert_eq!(
        ironic_apply(
            &manifest(&[p.host(), secret(&p.ns, "chap", "chapuser", PASSWORD)]).1,
            &ironic().url,
            &[]
        )
        .code,
        0
    );
    provision(&c, &uuid, "manage", "manageable").await;
    provision(&c, &uuid, "provide", "available").await;
    power(&c, &uuid, "power on").await;
    p.lun = 4;
    let (kube, mut api) = mock_kube();
    let ctx = context(kube, client());
    let host = host_object(&p);
    let mut delays = Vec::new();
    for series in [None, Some(2)] {
        let (ns, s) = (p.ns.clone(), secret(&p.ns, "chap", "chapuser", PASSWORD));
        let (result, back) = reconcile_with(&ctx, &host, api, |mut api| async move {
            api.secret_get(&ns, "chap", Some(s)).await;
            let ev = api.event(&ns).await;
            assert_eq!(
                (ev["type"].as_str(), ev["reason"].as_str()),
                (Some("Warning"), Some("BootVolumeWaiting"))
            );
            assert!(
                ev["note"].as_str().unwrap().contains("power state: power on"),
                "{}",
                ev["note"]
            );
            assert_eq!(
                ev["series"]["count"].as_i64(),
                series,
                "a repeat is counted, not a new Event"
            );
            api
        })
        .await;
        api = back;
        delays.push(result.unwrap());
    }
    assert_eq!(
        delays,
        [
            Action::requeue(Duration::from_secs(5)),
            Action::requeue(Duration::from_secs(10))
        ]
    );
}

#[tokio::test]
async fn ironic_unreachable_is_a_warning_event_and_a_fast_capped_retry() {
    let p = HostParams::new(&unique_namespace());
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let down = IronicClient::new(ClientConfig::new(url, Duration::from_secs(2))).unwrap();
    let (kube, api) = mock_kube();
    let ctx = context(kube, down);
    let host = host_object(&p);
    let (ns, s) = (p.ns.clone(), secret(&p.ns, "chap", "chapuser", PASSWORD));
    let (result, _api) = reconcile_with(&ctx, &host, api, |mut api| async move {
        api.secret_get(&ns, "chap", Some(s)).await;
        let ev = api.event(&ns).await;
        assert_eq!(
            (ev["type"].as_str(), ev["reason"].as_str()),
            (Some("Warning"), Some("IronicUnreachable"))
        );
        api
    })
    .await;
    let err = result.unwrap_err();
    assert_eq!(err.metric_label(), "ironic_unreachable");
    let first = controller::error_policy(host.clone(), &err, ctx.clone());
    let second = controller::error_policy(host.clone(), &err, ctx.clone());
    assert_eq!(
        (first, second),
        (
            Action::requeue(Duration::from_secs(5)),
            Action::requeue(Duration::from_secs(10))
        )
    );
}

/// A host BMO shows as `available` (generation 2) whose node is `manageable` and powered
/// on, as BMO leaves an `online: true` host without image: the reconciler configures the
/// node and hands the host over.
async fn available_host_with_node_on() -> (HostParams, String, Arc<DynamicObject>) {
    let c = client();
    let p = HostParams::new(&unique_namespace());
    let uuid = enroll(&c, &p.ns, json!({"boot_interface": "ipxe"})).await;
    provision(&c, &uuid, "manage", "manageable").await;
    power(&c, &uuid, "power on").await;
    let mut raw = p.host();
    raw["metadata"]["generation"] = json!(2);
    raw["status"] = json!({"provisioning": {"state": "available", "ID": uuid}});
    (p, uuid, Arc::new(serde_json::from_value(raw).unwrap()))
}

/// Expects the hand-over PATCH of host `ns/host`; answers with `status` (and `message`).
async fn expect_handover(api: &mut ApiServer, ns: &str, status: StatusCode, message: &str) -> Value {
    let (seen, send) = api.next().await;
    assert_eq!(seen.method, "PATCH");
    let (path, query) = seen.path.split_once('?').unwrap_or((&seen.path, ""));
    assert_eq!(
        path,
        format!("/apis/metal3.io/v1alpha1/namespaces/{ns}/baremetalhosts/host")
    );
    assert!(
        query.split('&').any(|kv| kv == "fieldManager=bootvolume"),
        "{query}"
    );
    assert_eq!(seen.content_type, "application/merge-patch+json");
    if status.is_success() {
        send.send_response(json_response(status, &json!({"apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost", "metadata": {"name": "host", "namespace": ns}})));
    } else {
        send.send_response(json_response(
            status,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden",
                    "code": status.as_u16(), "message": message}),
        ));
    }
    seen.body
}

#[tokio::test]
async fn hand_over_is_one_merge_patch_with_the_reboot_annotation_and_events() {
    let (p, uuid, host) = available_host_with_node_on().await;
    let (kube, api) = mock_kube();
    let ironic = client();
    let ctx = context(kube, ironic.clone());
    let (ns, s) = (p.ns.clone(), secret(&p.ns, "chap", "chapuser", PASSWORD));
    let (result, api) = reconcile_with(&ctx, &host, api, |mut api| async move {
        api.secret_get(&ns, "chap", Some(s)).await;
        let body = expect_handover(&mut api, &ns, StatusCode::OK, "").await;
        assert_eq!(
            body,
            json!({
                "spec": {"externallyProvisioned": true},
                "metadata": {"annotations": {
                    "bootvolume.metal3.io/handed-over-generation": "2",
                    "reboot.metal3.io": "{\"mode\":\"hard\"}",
                }},
            })
        );
        let applied = api.event(&ns).await;
        assert_eq!(applied["reason"], "BootVolumeApplied");
        let note = applied["note"].as_str().unwrap();
        assert!(note.contains("set persistent boot device pxe"), "{note}");
        let handed = api.event(&ns).await;
        assert_eq!(
            (handed["type"].as_str(), handed["reason"].as_str()),
            (Some("Normal"), Some("BootVolumeHandedOver"))
        );
        assert!(
            handed["note"].as_str().unwrap().contains("reboot"),
            "{}",
            handed["note"]
        );
        api
    })
    .await;
    // Handed over: looked at again soon, not after the resync period.
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(30)));
    let calls = ironic.calls();
    eprintln!("Ironic calls for configure + hand-over of one host: {calls:?}");
    let n = node(&client(), &uuid).await;
    assert_eq!(n["extra"]["bootvolume_boot_device"], "pxe");
    assert_eq!(n["properties"]["capabilities"], "iscsi_boot:True");

    // The watch may deliver the pre-patch host again: no second hand-over, no Event.
    let (ns, s) = (p.ns.clone(), secret(&p.ns, "chap", "chapuser", PASSWORD));
    let (_, mut api) = reconcile_with(&ctx, &host, api, |mut api| async move {
        api.secret_get(&ns, "chap", Some(s)).await;
        api
    })
    .await;
    api.silent().await;
}

#[tokio::test]
async fn a_refused_hand_over_is_a_warning_with_bmo_message_and_not_retried() {
    let (p, _uuid, host) = available_host_with_node_on().await;
    let (kube, api) = mock_kube();
    let ctx = context(kube, client());
    let refusal = "admission webhook \"baremetalhost.metal3.io\" denied the request: externallyProvisioned can not be changed";
    let (ns, s) = (p.ns.clone(), secret(&p.ns, "chap", "chapuser", PASSWORD));
    let (result, api) = reconcile_with(&ctx, &host, api, move |mut api| async move {
        api.secret_get(&ns, "chap", Some(s)).await;
        expect_handover(&mut api, &ns, StatusCode::FORBIDDEN, refusal).await;
        assert_eq!(api.event(&ns).await["reason"], "BootVolumeApplied");
        let ev = api.event(&ns).await;
        assert_eq!(
            (ev["type"].as_str(), ev["reason"].as_str()),
            (Some("Warning"), Some("HandOverRejected"))
        );
        assert!(ev["note"].as_str().unwrap().contains(refusal), "{}", ev["note"]);
        api
    })
    .await;
    result.unwrap();
    // Same generation: no new attempt.
    let (ns, s) = (p.ns.clone(), secret(&p.ns, "chap", "chapuser", PASSWORD));
    let (_, mut api) = reconcile_with(&ctx, &host, api, |mut api| async move {
        api.secret_get(&ns, "chap", Some(s)).await;
        api
    })
    .await;
    api.silent().await;
}

#[tokio::test]
async fn opted_out_host_is_configured_but_never_patched() {
    let (p, _uuid, host) = available_host_with_node_on().await;
    let mut raw = serde_json::to_value(host.as_ref()).unwrap();
    raw["metadata"]["annotations"] = json!({"bootvolume.metal3.io/handoff": "false"});
    let host: Arc<DynamicObject> = Arc::new(serde_json::from_value(raw).unwrap());
    let (kube, api) = mock_kube();
    let ctx = context(kube, client());
    let (ns, s) = (p.ns.clone(), secret(&p.ns, "chap", "chapuser", PASSWORD));
    let (result, mut api) = reconcile_with(&ctx, &host, api, |mut api| async move {
        api.secret_get(&ns, "chap", Some(s)).await;
        assert_eq!(api.event(&ns).await["reason"], "BootVolumeApplied");
        api
    })
    .await;
    assert_eq!(result.unwrap(), Action::requeue(RESYNC));
    api.silent().await;
}

/// A minimal Lease store standing in for the API server's, recording every write.
#[derive(Default)]
struct LeaseServer {
    lease: Option<Value>,
    writes: Vec<(String, String, Value)>,
}

impl LeaseServer {
    fn answer(&mut self, method: &str, path: &str, content_type: &str, body: Value) -> Response<Body> {
        match method {
            "GET" => match &self.lease {
                Some(l) => json_response(StatusCode::OK, l),
                None => json_response(
                    StatusCode::NOT_FOUND,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
                ),
            },
            "POST" | "PATCH" => {
                self.writes
                    .push((method.into(), content_type.into(), body.clone()));
                let lease = self
                    .lease
                    .get_or_insert_with(|| json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease"}));
                if method == "POST" {
                    *lease = body;
                } else {
                    json_patch::merge(lease, &json!({"spec": body["spec"]}));
                }
                json_response(
                    if method == "POST" {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    },
                    lease,
                )
            }
            other => panic!("unexpected {other} {path}"),
        }
    }
}

/// Plays the Lease API until the client goes away, asserting every request is about our Lease.
fn serve_leases(mut handle: Handle, server: Arc<Mutex<LeaseServer>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let (method, path) = (req.method().to_string(), req.uri().path().to_owned());
            assert!(
                path.starts_with("/apis/coordination.k8s.io/v1/namespaces/kube-ns/leases"),
                "{method} {path}"
            );
            let ct = req
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let resp = server.lock().unwrap().answer(&method, &path, &ct, body);
            send.send_response(resp);
        }
    })
}

fn lease_config(identity: &str) -> LeaseConfig {
    LeaseConfig {
        name: "bootvolume-reconciler".into(),
        namespace: "kube-ns".into(),
        identity: identity.into(),
        duration_secs: 15,
    }
}

#[tokio::test]
async fn acts_only_while_holding_the_lease_and_releases_it_on_shutdown() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = Arc::new(Mutex::new(LeaseServer::default()));
    let api = serve_leases(handle, server.clone());
    let (shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
    let started = Arc::new(Mutex::new(Vec::<bool>::new()));
    let (st, srv) = (started.clone(), server.clone());
    let lead = tokio::spawn(async move {
        let config = lease_config("replica-a");
        let progress = controller::Progress::default();
        controller::lead(
            Client::new(svc, "default"),
            &config,
            shutdown,
            &progress,
            |stop| {
                // Work starts only once the Lease names us.
                let holder = srv
                    .lock()
                    .unwrap()
                    .lease
                    .as_ref()
                    .map(|l| l["spec"]["holderIdentity"].clone());
                st.lock().unwrap().push(holder == Some(json!("replica-a")));
                stop
            },
        )
        .await
    });
    timeout(Duration::from_secs(5), async {
        while started.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("never became leader");
    assert_eq!(*started.lock().unwrap(), [true]);

    shutdown_tx.send(true).unwrap();
    timeout(Duration::from_secs(5), lead)
        .await
        .expect("lead did not stop")
        .unwrap()
        .expect("lead failed");
    api.abort();
    let s = server.lock().unwrap();
    let (kinds, claim, release) = (
        s.writes
            .iter()
            .map(|(m, ct, _)| format!("{m} {ct}"))
            .collect::<Vec<_>>(),
        s.writes
            .iter()
            .find(|(_, ct, _)| ct == "application/apply-patch+yaml")
            .map(|w| &w.2),
        s.writes.last().map(|w| &w.2),
    );
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("POST application/json"),
        "creates the missing Lease: {kinds:?}"
    );
    let claim = claim.expect("server-side apply claiming the lease");
    assert_eq!(claim["spec"]["holderIdentity"], "replica-a");
    assert_eq!(claim["spec"]["leaseDurationSeconds"], 15);
    assert_eq!(
        release.unwrap()["spec"]["holderIdentity"],
        Value::Null,
        "released on shutdown: {kinds:?}"
    );
}

#[tokio::test]
async fn a_lease_held_by_another_replica_keeps_us_idle() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let server = Arc::new(Mutex::new(LeaseServer {
        lease: Some(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "bootvolume-reconciler", "namespace": "kube-ns"},
            "spec": {"holderIdentity": "replica-b", "leaseDurationSeconds": 15, "acquireTime": now, "renewTime": now},
        })),
        writes: Vec::new(),
    }));
    let api = serve_leases(handle, server.clone());
    let (shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
    let started = Arc::new(Mutex::new(false));
    let st = started.clone();
    let lead = tokio::spawn(async move {
        controller::lead(
            Client::new(svc, "default"),
            &lease_config("replica-a"),
            shutdown,
            &controller::Progress::default(),
            |stop| {
                *st.lock().unwrap() = true;
                stop
            },
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!*started.lock().unwrap(), "reconciled without holding the Lease");
    shutdown_tx.send(true).unwrap();
    timeout(Duration::from_secs(5), lead)
        .await
        .expect("lead did not stop")
        .unwrap()
        .expect("lead failed");
    api.abort();
    let s = server.lock().unwrap();
    assert!(
        s.writes
            .iter()
            .all(|(_, _, b)| b["spec"]["holderIdentity"] != "replica-a"),
        "claimed a held Lease"
    );
    assert_eq!(s.lease.as_ref().unwrap()["spec"]["holderIdentity"], "replica-b");
}

/// The whole Controller: it lists and watches hosts and Secret metadata, reconciles the host,
/// and a change of the host's Secret (a watch event) reconciles it again.
#[tokio::test]
async fn controller_reconciles_hosts_and_again_when_their_secret_changes() {
    use bootvolume::reconcile::controller::ControllerConfig;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let c = client();
    let p = HostParams::new(&unique_namespace());
    enroll(&c, &p.ns, json!({})).await;
    let (kube, ApiServer(mut handle)) = mock_kube();
    let metrics = Arc::new(Metrics::new());
    let reporter = Reporter {
        controller: "bootvolume-reconciler".into(),
        instance: None,
    };
    let ctx = Arc::new(Context::new(
        kube,
        client(),
        metrics.clone(),
        reporter,
        false,
        RESYNC,
    ));
    let ns = p.ns.clone();
    let mut host = p.host();
    host["metadata"]["resourceVersion"] = json!("1");
    let mut secret = secret(&ns, "chap", "chapuser", PASSWORD);
    secret["metadata"]["resourceVersion"] = json!("1");
    let secret_reads = Arc::new(AtomicUsize::new(0));
    let events = Arc::new(AtomicUsize::new(0));
    let touch = Arc::new(tokio::sync::Notify::new());

    let (reads, evs, touched) = (secret_reads.clone(), events.clone(), touch.clone());
    let api = tokio::spawn(async move {
        let mut held = Vec::new(); // watches we never answer stay open
        let mut secret_watches = 0;
        while let Some((req, send)) = handle.next_request().await {
            let path = req.uri().to_string();
            let watch = path.contains("watch=true");
            if path.starts_with(&format!(
                "/apis/metal3.io/v1alpha1/namespaces/{ns}/baremetalhosts?"
            )) {
                if watch {
                    held.push(send);
                } else {
                    let list = json!({"apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHostList",
                                      "metadata": {"resourceVersion": "1"}, "items": [host]});
                    send.send_response(json_response(StatusCode::OK, &list));
                }
            } else if path.starts_with(&format!("/api/v1/namespaces/{ns}/secrets?")) {
                if !watch {
                    let list = json!({"apiVersion": "v1", "kind": "SecretList", "metadata": {"resourceVersion": "1"},
                                      "items": [secret]});
                    send.send_response(json_response(StatusCode::OK, &list));
                } else if secret_watches == 0 {
                    secret_watches += 1;
                    let (touched, mut changed) = (touched.clone(), secret.clone());
                    changed["metadata"]["resourceVersion"] = json!("2");
                    tokio::spawn(async move {
                        touched.notified().await;
                        let line = format!("{}\n", json!({"type": "MODIFIED", "object": changed}));
                        send.send_response(
                            Response::builder()
                                .status(200)
                                .body(Body::from(line.into_bytes()))
                                .unwrap(),
                        );
                    });
                } else {
                    held.push(send);
                }
            } else if path == format!("/api/v1/namespaces/{ns}/secrets/chap") {
                reads.fetch_add(1, Ordering::SeqCst);
                send.send_response(json_response(StatusCode::OK, &secret));
            } else if path.starts_with(&format!("/apis/events.k8s.io/v1/namespaces/{ns}/events")) {
                evs.fetch_add(1, Ordering::SeqCst);
                let body = req.into_body().collect_bytes().await.unwrap();
                assert!(!String::from_utf8_lossy(&body).contains(PASSWORD));
                send.send_response(Response::builder().status(201).body(Body::from(body)).unwrap());
            } else {
                panic!("unexpected request {} {path}", req.method());
            }
        }
    });

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let config = ControllerConfig {
        namespace: Some(p.ns.clone()),
        secret_label_selector: None,
        concurrency: 2,
    };
    let ctl_ctx = ctx.clone();
    let run = tokio::spawn(async move {
        controller::run_controller(ctl_ctx, &config, async move {
            let _ = stop_rx.await;
        })
        .await
    });

    // Waits for `cond`, then for the controller to go quiet, so late extra passes show up.
    async fn settled(cond: impl Fn() -> bool) {
        timeout(Duration::from_secs(10), async {
            while !cond() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("controller did not get there in 10 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    settled(|| metrics.reconciles("applied") == 1 && events.load(Ordering::SeqCst) == 1).await;
    // The Secret list may trigger one more (in-sync) pass at start-up.
    let (reads, in_sync) = (secret_reads.load(Ordering::SeqCst), metrics.reconciles("in_sync"));
    assert_eq!(reads as u64, 1 + in_sync);
    touch.notify_one();
    settled(|| metrics.reconciles("in_sync") > in_sync).await;
    assert_eq!(
        metrics.reconciles("in_sync"),
        in_sync + 1,
        "exactly one pass for the Secret change"
    );
    assert_eq!(
        secret_reads.load(Ordering::SeqCst),
        reads + 1,
        "the pass re-read the Secret"
    );
    assert_eq!(events.load(Ordering::SeqCst), 1, "in-sync passes are silent");
    assert_eq!(metrics.reconciles("applied"), 1);

    stop_tx.send(()).unwrap();
    timeout(Duration::from_secs(5), run)
        .await
        .expect("controller did not shut down")
        .unwrap();
    api.abort();
}
