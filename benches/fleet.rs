//! `cargo bench --bench fleet`: the reconciler at fleet scale, measured end to end.
//!
//! For each fleet size N (default 100, 1000, 5000; `BENCH_FLEET_SIZES=100,1000` to choose):
//! a fresh real Ironic (scripts/ironic-standalone.sh) gets N fake-hardware nodes, created
//! concurrently; an in-process fake Kubernetes API server (plain HTTP on 127.0.0.1) serves
//! N BareMetalHosts (every host registered, `status.provisioning.ID` set; every other host
//! with an external iSCSI `bootVolume` and CHAP from its own Secret) with paginated list and
//! watch, the Secrets (full GET, metadata list and watch) and accepts Events. The release
//! `bootvolume reconcile` binary runs against both (no leader election, no hand-over to
//! baremetal-operator: there is none) and is measured from outside: Ironic requests from its `/metrics`, memory from `/proc/<pid>/status`.
//!
//! Reported per N: Ironic requests for the first convergence (and how many were writes),
//! time to converge, Ironic requests per fleet sync of the in-sync fleet (list pages and
//! per-host calls), controller peak RSS (VmHWM) and RSS after the syncs.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::{Request, Response, body::Frame, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::{
    collections::HashMap,
    convert::Infallible,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, Infallible>;

const NS: &str = "fleet";
const RESYNC_SECS: u64 = 10;
const PASSWORD: &str = "bench-chap-secret";

/// The objects the fake API server serves, pre-rendered.
struct Objects {
    hosts: Vec<Value>,
    secrets: Vec<Value>,
}

fn host(i: usize, uuid: &str) -> Value {
    let name = format!("host-{i:05}");
    let mut h = json!({
        "apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost",
        "metadata": {
            "name": name, "namespace": NS, "uid": format!("uid-{i}"), "resourceVersion": "10",
            "generation": 1, "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"environment.metal3.io": "baremetal"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"apiVersion\":\"metal3.io/v1alpha1\",\"kind\":\"BareMetalHost\",\"spec\":{\"online\":true}}".repeat(4)},
            "finalizers": ["baremetalhost.metal3.io"],
            "managedFields": [
                {"manager": "kubectl", "operation": "Apply", "apiVersion": "metal3.io/v1alpha1", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:spec": {"f:online": {}, "f:bmc": {"f:address": {}, "f:credentialsName": {}}, "f:bootMACAddress": {}}}},
                {"manager": "baremetal-operator", "operation": "Update", "apiVersion": "metal3.io/v1alpha1", "fieldsType": "FieldsV1",
                 "subresource": "status", "fieldsV1": {"f:status": {"f:hardware": {}, "f:provisioning": {}, "f:poweredOn": {}}}}
            ]
        },
        "spec": {
            "online": true, "bootMACAddress": format!("52:54:00:{:02x}:{:02x}:{:02x}", i >> 16 & 255, i >> 8 & 255, i & 255),
            "bmc": {"address": format!("redfish://192.0.2.1/redfish/v1/Systems/{i}"), "credentialsName": format!("{name}-bmc")},
        },
        "status": {
            "operationalStatus": "OK", "poweredOn": false, "lastUpdated": "2026-01-01T00:00:00Z",
            "provisioning": {"ID": uuid, "state": "available", "bootMode": "UEFI"},
            "hardware": {"cpu": {"arch": "x86_64", "count": 64, "model": "Example CPU"}, "ramMebibytes": 262144,
                "nics": [{"name": "eth0", "mac": "52:54:00:00:00:01", "ip": "192.0.2.10", "speedGbps": 25}],
                "storage": [{"name": "/dev/sda", "sizeBytes": 960_000_000_000u64, "rotational": false}]}
        }
    });
    if i.is_multiple_of(2) {
        h["spec"]["bootVolume"] = json!({
            "volumeId": format!("vol-{i:05}"), "volumeDriver": "external",
            "connectorId": format!("iqn.2004-10.com.example:{name}"),
            "iscsiTarget": {"iqn": format!("iqn.2010-10.com.example:vol-{i:05}"), "portal": "192.0.2.10", "lun": 0},
            "iscsiCredentialsName": format!("{name}-chap"),
        });
    }
    h
}

fn secret(i: usize) -> Value {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": format!("host-{i:05}-chap"), "namespace": NS, "uid": format!("suid-{i}"), "resourceVersion": "5"},
        "type": "Opaque", "data": {"username": b64("chapuser"), "password": b64(PASSWORD)},
    })
}

fn full(status: u16, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert(hyper::header::CONTENT_TYPE, "application/json".parse().unwrap());
    r
}

/// A watch that never sends an event (the fleet does not change during the benchmark).
fn idle_watch() -> Response<Body> {
    let stream = futures::stream::pending::<Result<Frame<Bytes>, Infallible>>();
    let mut r = Response::new(BoxBody::new(StreamBody::new(stream)));
    r.headers_mut()
        .insert(hyper::header::CONTENT_TYPE, "application/json".parse().unwrap());
    r
}

fn query(uri: &hyper::Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%2F", "/")))
        .collect()
}

/// `limit`/`continue` over `items` (the continue token is the offset).
fn page(kind: &str, api_version: &str, items: &[Value], q: &HashMap<String, String>) -> Vec<u8> {
    let limit = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(usize::MAX);
    let from: usize = q.get("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
    let to = from.saturating_add(limit).min(items.len());
    let mut meta = json!({"resourceVersion": "100"});
    if to < items.len() {
        meta["continue"] = json!(to.to_string());
        meta["remainingItemCount"] = json!(items.len() - to);
    }
    serde_json::to_vec(&json!({"apiVersion": api_version, "kind": kind, "metadata": meta, "items": &items[from.min(to)..to]}))
        .unwrap()
}

async fn api(
    objects: Arc<Objects>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    let q = query(req.uri());
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let accept = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    let secrets_prefix = format!("/api/v1/namespaces/{NS}/secrets/");
    Ok(match (method.as_str(), path.as_str()) {
        ("GET", "/apis/metal3.io/v1alpha1/baremetalhosts") if watch => idle_watch(),
        ("GET", "/apis/metal3.io/v1alpha1/baremetalhosts") => full(
            200,
            page("BareMetalHostList", "metal3.io/v1alpha1", &objects.hosts, &q),
        ),
        ("GET", "/api/v1/secrets") if watch => idle_watch(),
        ("GET", "/api/v1/secrets") => {
            let metadata_only = accept.contains("PartialObjectMetadata");
            let items: Vec<Value> = if metadata_only {
                objects
                    .secrets
                    .iter()
                    .map(|s| json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": s["metadata"]}))
                    .collect()
            } else {
                objects.secrets.clone()
            };
            let (kind, version) = if metadata_only {
                ("PartialObjectMetadataList", "meta.k8s.io/v1")
            } else {
                ("SecretList", "v1")
            };
            full(200, page(kind, version, &items, &q))
        }
        ("GET", p) if p.starts_with(&secrets_prefix) => {
            let name = &p[secrets_prefix.len()..];
            match objects.secrets.iter().find(|s| s["metadata"]["name"] == name) {
                Some(s) => full(200, serde_json::to_vec(s).unwrap()),
                None => full(404, br#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#.to_vec()),
            }
        }
        ("POST", p) if p.ends_with("/events") => full(201, body.to_vec()),
        ("PATCH", p) if p.contains("/events/") => full(200, body.to_vec()),
        _ => full(
            404,
            br#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#
                .to_vec(),
        ),
    })
}

async fn serve_api(objects: Arc<Objects>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let objects = objects.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| api(objects.clone(), req));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Ironic {
    state: PathBuf,
    url: String,
}

impl Ironic {
    fn start(root: &Path) -> Self {
        let state = root.join("ironic");
        let out = Command::new("scripts/ironic-standalone.sh")
            .arg("start")
            .arg(&state)
            .arg(free_port().to_string())
            .stderr(Stdio::inherit())
            .output()
            .expect("start Ironic");
        assert!(out.status.success(), "Ironic did not start");
        Self {
            state,
            url: String::from_utf8(out.stdout).unwrap().trim().to_owned(),
        }
    }
}

impl Drop for Ironic {
    fn drop(&mut self) {
        let _ = Command::new("scripts/ironic-standalone.sh")
            .arg("stop")
            .arg(&self.state)
            .status();
    }
}

/// Creates `n` fake-hardware nodes, 8 at a time; returns their UUIDs in order.
async fn create_nodes(url: &str, n: usize) -> Vec<String> {
    let http = reqwest::Client::new();
    futures::stream::iter(0..n)
        .map(|i| {
            let http = http.clone();
            let url = url.to_owned();
            async move {
                for _ in 0..5 {
                    let resp = http
                        .post(format!("{url}/v1/nodes"))
                        .header("X-OpenStack-Ironic-API-Version", "1.89")
                        .json(&json!({"name": format!("{NS}~host-{i:05}"), "driver": "fake-hardware"}))
                        .send()
                        .await;
                    if let Ok(r) = resp
                        && r.status().is_success()
                    {
                        let v: Value = r.json().await.unwrap();
                        return v["uuid"].as_str().unwrap().to_owned();
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                panic!("cannot create node {i}");
            }
        })
        .buffered(8)
        .collect::<Vec<_>>()
        .await
}

use futures::StreamExt as _;

/// Reads the controller's metrics.
async fn metrics(url: &str) -> HashMap<String, f64> {
    let text = match reqwest::get(format!("{url}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => return HashMap::new(),
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        .collect()
}

fn sum(m: &HashMap<String, f64>, prefix: &str) -> u64 {
    m.iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| *v as u64)
        .sum()
}

fn writes(m: &HashMap<String, f64>) -> u64 {
    m.iter()
        .filter(|(k, _)| k.starts_with("bootvolume_ironic_requests_total") && !k.contains("method=\"GET\""))
        .map(|(_, v)| *v as u64)
        .sum()
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Row {
    n: usize,
    create_s: f64,
    converge_s: f64,
    first_requests: u64,
    first_writes: u64,
    sync_requests: u64,
    sync_pages: u64,
    sync_per_host: u64,
    peak_rss_kib: u64,
    rss_kib: u64,
}

struct Controller(Child);

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn one(n: usize) -> Row {
    let root = tempfile::tempdir().unwrap();
    let ironic = Ironic::start(root.path());
    let t = Instant::now();
    let uuids = create_nodes(&ironic.url, n).await;
    let create_s = t.elapsed().as_secs_f64();
    eprintln!("fleet {n}: created {n} nodes in {create_s:.1} s");
    let objects = Arc::new(Objects {
        hosts: uuids.iter().enumerate().map(|(i, u)| host(i, u)).collect(),
        secrets: (0..n).step_by(2).map(secret).collect(),
    });
    let api_url = serve_api(objects).await;
    let kubeconfig = root.path().join("kubeconfig");
    std::fs::File::create(&kubeconfig)
        .unwrap()
        .write_all(
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {api_url}\n\
                 contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {NS}\n\
                 current-context: fake\nusers:\n- name: fake\n  user:\n    token: fake\n"
            )
            .as_bytes(),
        )
        .unwrap();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let metrics_url = format!("http://{metrics_addr}");
    let start = Instant::now();
    // BENCH_CONTROLLER_WRAP="heaptrack -o /tmp/fleet" runs the controller under a profiler
    // (then the RSS columns are the wrapper's).
    let wrap = std::env::var("BENCH_CONTROLLER_WRAP").unwrap_or_default();
    let mut wrap = wrap.split_whitespace();
    let child = match wrap.next() {
        Some(tool) => {
            let mut c = Command::new(tool);
            c.args(wrap).arg(env!("CARGO_BIN_EXE_bootvolume"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_bootvolume")),
    }
    .args(["reconcile", "--ironic-url", &ironic.url, "--leader-elect=false"])
    .args([
        "--metrics-listen",
        &metrics_addr,
        "--resync-interval",
        &RESYNC_SECS.to_string(),
    ])
    .args(["--concurrency", "16", "--log-level"])
    // BENCH_LOG="warn,bootvolume::ironic=debug" logs every Ironic request (to stderr).
    .arg(std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into()))
    // Configuration and fleet sync only: with no baremetal-operator here to adopt, a
    // handed-over host would stay in its hand-over phase and be re-checked per host.
    // The hand-over's own cost per host is measured in tests/adoption_live.rs.
    .arg("--handoff=false")
    .env("KUBECONFIG", &kubeconfig)
    .stdout(Stdio::null())
    .spawn()
    .expect("start the controller");
    let pid = child.id();
    let _controller = Controller(child);

    // Converged: every host passed once, every bootVolume host applied.
    let want_applied = n.div_ceil(2) as u64;
    let deadline = Instant::now() + Duration::from_secs(1800);
    let first = loop {
        let m = metrics(&metrics_url).await;
        let applied = sum(&m, "bootvolume_reconcile_total{result=\"applied\"}");
        let skipped = sum(&m, "bootvolume_reconcile_total{result=\"skipped\"}");
        if applied >= want_applied && applied + skipped >= n as u64 {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "fleet {n}: no convergence: {applied} applied, {skipped} skipped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let converge_s = start.elapsed().as_secs_f64();
    let first_requests = sum(&first, "bootvolume_ironic_requests_total");
    let first_writes = writes(&first);
    eprintln!(
        "fleet {n}: converged in {converge_s:.1} s, {first_requests} Ironic requests ({first_writes} writes)"
    );

    // Two fleet syncs after convergence: the requests between their ends are one sync of an
    // in-sync fleet plus whatever it queued.
    let syncs = |m: &HashMap<String, f64>| sum(m, "bootvolume_fleet_syncs_total{result=\"ok\"}");
    let wait_sync = |after: u64| {
        let metrics_url = metrics_url.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(RESYNC_SECS * 6 + 120);
            loop {
                let m = metrics(&metrics_url).await;
                if syncs(&m) > after {
                    // Let queued passes (if any) finish.
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    return metrics(&metrics_url).await;
                }
                assert!(Instant::now() < deadline, "no fleet sync");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let a = wait_sync(syncs(&first)).await;
    let b = wait_sync(syncs(&a)).await;
    let sync_requests =
        sum(&b, "bootvolume_ironic_requests_total") - sum(&a, "bootvolume_ironic_requests_total");
    let sync_pages =
        sum(&b, "bootvolume_fleet_list_pages_total") - sum(&a, "bootvolume_fleet_list_pages_total");
    let row = Row {
        n,
        create_s,
        converge_s,
        first_requests,
        first_writes,
        sync_requests,
        sync_pages,
        sync_per_host: sync_requests - sync_pages,
        peak_rss_kib: status_kib(pid, "VmHWM:"),
        rss_kib: status_kib(pid, "VmRSS:"),
    };
    drop(ironic);
    row
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo test --benches probes harness=false benches this way
    }
    let sizes: Vec<usize> = std::env::var("BENCH_FLEET_SIZES")
        .unwrap_or_else(|_| "100,1000,5000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    std::env::set_current_dir(env!("CARGO_MANIFEST_DIR")).unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut rows = Vec::new();
    for n in sizes {
        rows.push(rt.block_on(one(n)));
        print_table(&rows);
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "\n| hosts | create nodes | converge | Ironic requests, first convergence (writes) | per fleet sync in sync: requests (list pages / per-host) | peak RSS | RSS after syncs |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {:.1} s | {:.1} s | {} ({}) | {} ({} / {}) | {:.1} MiB | {:.1} MiB |",
            r.n,
            r.create_s,
            r.converge_s,
            r.first_requests,
            r.first_writes,
            r.sync_requests,
            r.sync_pages,
            r.sync_per_host,
            r.peak_rss_kib as f64 / 1024.0,
            r.rss_kib as f64 / 1024.0
        );
    }
}
