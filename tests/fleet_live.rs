//! The fleet sync against the real Ironic: list calls find drift made behind our back, only
//! the affected host is reconciled again, nodes that are not ours cost nothing, and the cap on
//! in-flight requests holds (counted at the fault proxy, between the client and Ironic).
//!
//! The Kubernetes side is kube's mockable client answering every request (Events) itself.

mod ironic_support;

use bootvolume::{
    ironic::{ClientConfig, IronicClient},
    reconcile::{
        controller::{self, Context, host_resource},
        fleet::{self, Verdict},
        metrics::Metrics,
    },
};
use futures::StreamExt as _;
use http::{Request, Response};
use ironic_support::{proxy::*, *};
use kube::{
    Client,
    api::DynamicObject,
    client::Body,
    runtime::{events::Reporter, reflector, watcher::Event as WatchEvent},
};
use reqwest::Method;
use serde_json::json;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

/// A kube client whose API server accepts everything (the reconciler only posts Events here).
fn accepting_kube() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let body = req.into_body().collect_bytes().await.unwrap_or_default();
            send.send_response(
                Response::builder()
                    .status(201)
                    .body(Body::from(body.to_vec()))
                    .unwrap(),
            );
        }
    });
    Client::new(svc, "default")
}

fn proxied_client(url: &str, max_in_flight: usize) -> IronicClient {
    let mut config = ClientConfig::new(url, Duration::from_secs(30));
    config.max_in_flight = max_in_flight;
    IronicClient::new(config).expect("client")
}

fn context(ironic: IronicClient) -> Arc<Context> {
    let reporter = Reporter {
        controller: "bootvolume-reconciler".into(),
        instance: Some("fleet-test".into()),
    };
    Arc::new(Context::new(
        accepting_kube(),
        ironic,
        Arc::new(Metrics::new()),
        reporter,
        false,
        Duration::from_secs(600),
    ))
}

fn host_object(p: &HostParams) -> Arc<DynamicObject> {
    Arc::new(serde_json::from_value(p.host()).expect("host object"))
}

/// Requests the proxy saw: (GETs, writes).
fn counts(proxy: &FaultProxy) -> (usize, usize) {
    let seen = proxy.seen();
    let gets = seen.iter().filter(|s| s.method == "GET").count();
    (gets, seen.len() - gets)
}

#[tokio::test]
async fn fleet_sync_repairs_a_deleted_target_ignores_foreign_nodes_and_is_read_only_in_sync() {
    let c = client();
    let proxy = FaultProxy::start(&ironic().url).await;
    let ctx = context(proxied_client(&proxy.url, 4));

    // Ours: a boot-from-volume host. Not ours: a host without bootVolume whose node carries
    // someone else's connector, and a node no host of ours points at.
    let ours = HostParams {
        secret: None,
        ..HostParams::new(&unique_namespace())
    };
    let plain = HostParams {
        no_boot_volume: true,
        ..HostParams::new(&unique_namespace())
    };
    let stranger = unique_namespace();
    let ours_uuid = enroll(&c, &ours.ns, json!({})).await;
    let plain_uuid = enroll(&c, &plain.ns, json!({})).await;
    enroll(&c, &stranger, json!({"extra": {"owner": "someone else"}})).await;
    let foreign: serde_json::Value = c
        .send(
            Method::POST,
            "/v1/volume/connectors",
            Some(&json!({"node_uuid": plain_uuid, "type": "iqn", "connector_id": format!("iqn.2004-10.com.example:{}", plain.ns)})),
        )
        .await
        .expect("foreign connector");

    let mut writer = reflector::store::Writer::<DynamicObject>::new(host_resource());
    let store = writer.as_reader();
    let (ours_obj, plain_obj) = (host_object(&ours), host_object(&plain));
    for h in [&ours_obj, &plain_obj] {
        writer.apply_watcher_event(&WatchEvent::Apply(h.as_ref().clone()));
    }

    // Startup: one snapshot, then a pass per host. The plain host costs no Ironic call.
    fleet::refresh(&proxied_client(&proxy.url, 4), ctx.fleet(), &[])
        .await
        .expect("snapshot");
    proxy.reset_counts();
    controller::reconcile(plain_obj.clone(), ctx.clone())
        .await
        .expect("plain pass");
    assert_eq!(
        counts(&proxy),
        (0, 0),
        "a host without bootVolume on a foreign node"
    );
    controller::reconcile(ours_obj.clone(), ctx.clone())
        .await
        .expect("first pass");
    assert_eq!(volumes(&c, &ours_uuid).await.1.len(), 1, "target created");

    // An in-sync fleet: list pages only, no per-host call, no write, nothing queued.
    let stamps = write_stamps(&c, &ours_uuid).await;
    let plain_stamps = write_stamps(&c, &plain_uuid).await;
    let (tx, mut rx) = futures::channel::mpsc::channel(16);
    let mut trigger = tx.clone();
    proxy.reset_counts();
    let report = sync(&proxy, &ctx, &store, &mut trigger).await;
    assert_eq!((report.hosts, report.out_of_sync), (2, 0), "{report:?}");
    let seen = proxy.seen();
    assert!(
        seen.iter().all(|s| s.method == "GET"
            && ["/v1/nodes", "/v1/volume/connectors", "/v1/volume/targets"].contains(&s.path.as_str())),
        "only list calls: {seen:?}"
    );
    assert_eq!(seen.len(), report.pages);
    assert!(rx.try_recv().is_err(), "nothing queued");
    assert_eq!(write_stamps(&c, &ours_uuid).await, stamps);
    assert_eq!(write_stamps(&c, &plain_uuid).await, plain_stamps);
    let connectors = volumes(&c, &plain_uuid).await.0;
    assert_eq!(connectors.len(), 1, "the foreign connector is left alone");
    assert_eq!(connectors[0].uuid, foreign["uuid"].as_str().unwrap());

    // Behind our back: the target goes (as an undeploy does). One sync finds exactly that host.
    let target = &volumes(&c, &ours_uuid).await.1[0];
    c.send_empty(Method::DELETE, &format!("/v1/volume/targets/{}", target.uuid))
        .await
        .expect("delete target");
    let report = sync(&proxy, &ctx, &store, &mut trigger).await;
    assert_eq!(report.out_of_sync, 1, "{report:?}");
    let queued = rx.next().await.expect("a host queued");
    assert_eq!(
        (queued.name.as_str(), queued.namespace.as_deref()),
        ("host", Some(ours.ns.as_str()))
    );
    assert_eq!(ctx.fleet().verdict(&spec(&ours_obj)), Some(Verdict::OutOfSync(1)));
    controller::reconcile(ours_obj.clone(), ctx.clone())
        .await
        .expect("repair pass");
    assert_eq!(volumes(&c, &ours_uuid).await.1.len(), 1, "target recreated");
    let report = sync(&proxy, &ctx, &store, &mut trigger).await;
    assert_eq!(report.out_of_sync, 0, "{report:?}");
}

/// One fleet sync through the proxy, as the controller's periodic task runs it.
async fn sync(
    proxy: &FaultProxy,
    ctx: &controller::Context,
    store: &reflector::Store<DynamicObject>,
    trigger: &mut fleet::Trigger,
) -> fleet::SyncReport {
    fleet::sync_once(&ctx_client(proxy), ctx.fleet(), store, &host_resource(), trigger)
        .await
        .expect("sync")
}

fn ctx_client(proxy: &FaultProxy) -> IronicClient {
    proxied_client(&proxy.url, 4)
}

fn spec(obj: &DynamicObject) -> bootvolume::reconcile::apply::HostSpec {
    bootvolume::reconcile::apply::HostSpec::from_value(&serde_json::to_value(obj).unwrap()).unwrap()
}

#[tokio::test]
async fn the_in_flight_cap_holds_and_busy_answers_slow_the_client_down() {
    let c = client();
    let ns = unique_namespace();
    let uuid = enroll(&c, &ns, json!({})).await;
    let proxy = FaultProxy::start(&ironic().url).await;
    proxy.add(Rule::new(Fault::SlowResponse(Duration::from_millis(150))).times(usize::MAX));
    let capped = proxied_client(&proxy.url, 3);
    let start = Instant::now();
    let calls = (0..12).map(|_| {
        let (client, uuid) = (capped.clone(), uuid.clone());
        tokio::spawn(async move { client.get_node(&uuid).await })
    });
    for call in futures::future::join_all(calls).await {
        call.expect("task").expect("get node");
    }
    assert_eq!(proxy.peak_in_flight(), 3, "the cap is reached and never exceeded");
    assert!(
        start.elapsed() >= Duration::from_millis(4 * 150),
        "{:?}",
        start.elapsed()
    );

    // Two 503s in a row: the slot is held 100 ms, then 200 ms, before the next request goes.
    proxy.clear();
    proxy.reset_counts();
    proxy.add(Rule::new(unavailable()).times(2));
    let single = proxied_client(&proxy.url, 1);
    let start = Instant::now();
    let calls = (0..3).map(|_| {
        let (client, uuid) = (single.clone(), uuid.clone());
        tokio::spawn(async move { client.get_node(&uuid).await.is_ok() })
    });
    let ok = futures::future::join_all(calls)
        .await
        .into_iter()
        .filter(|r| *r.as_ref().unwrap())
        .count();
    assert_eq!(ok, 1, "the two 503s reach the callers as errors");
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(proxy.peak_in_flight(), 1);
}

/// A page of a thousand rows is slow on a busy Ironic: list pages get four times the
/// client's per-request timeout, single-object reads keep it.
#[tokio::test]
async fn list_pages_get_a_longer_deadline_than_single_reads() {
    let proxy = FaultProxy::start(&ironic().url).await;
    let slow = Fault::SlowRequest(Duration::from_millis(1500));
    // Every node GET is held: however many pages the shared Ironic's nodes fill.
    proxy.add(Rule::new(slow).method("GET").path("/v1/nodes").times(usize::MAX));
    let client = IronicClient::new(ClientConfig::new(&proxy.url, Duration::from_secs(1))).expect("client");
    let listing = client
        .list_all_nodes(bootvolume::ironic::list::PAGE_SIZE)
        .await
        .expect("a list page held 1.5 s is within 4 x 1 s");
    assert!(listing.pages >= 1);
    let err = client
        .get_node("00000000-0000-0000-0000-000000000000")
        .await
        .expect_err("a node read held 1.5 s is past 1 s");
    assert_eq!(err.label(), "unreachable", "{err}");
}
