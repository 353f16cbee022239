//! Load benchmark: the webhook against the ceiling of its own stack.
//!
//! Sends AdmissionReview requests the way kube-apiserver calls a Service webhook (TLS with
//! certificate verification, HTTP/1.1 keep-alive, one request at a time per connection) at
//! 1, 16 and 64 connections, plus one HTTP/2 run (16 streams on one connection), against:
//! - `ceiling`: the same stack (axum + rustls + our accept loop) answering a fixed
//!   AdmissionReview without decoding or rules: the best this stack can do here;
//! - `validate` and `mutate`: `bootvolume serve`, audit logging on, as deployed.
//!
//! Servers run as separate processes; the load generator shares the machine's cores with
//! them, so only ratios measured in the same run mean anything. Also reports the
//! webhook's readiness time and resident memory (idle, and peak under load).
//!
//! `cargo bench --bench load [-- --seconds N]`; a Markdown report goes to
//! `target/bench/load.md`. `BOOTVOLUME_BIN=path` benchmarks another build of the webhook;
//! `BOOTVOLUME_BENCH_PRETTY=1` sends the fixture indented as in the file instead of compact
//! (as the API server sends it).

use bootvolume::{
    server::{Limits, serve_router},
    tls,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::net::TcpStream;

const REVIEW: &str = include_str!("../tests/fixtures/admission/load_create_external_valid.json");

/// The request body: the review as kube-apiserver sends it (compact JSON, 1.2 KB), or with
/// BOOTVOLUME_BENCH_PRETTY=1 the fixture file as written (indented, 2 KB).
fn review_body() -> Bytes {
    if std::env::var_os("BOOTVOLUME_BENCH_PRETTY").is_some() {
        return Bytes::from_static(REVIEW.as_bytes());
    }
    let v: serde_json::Value = serde_json::from_str(REVIEW).expect("fixture is JSON");
    Bytes::from(serde_json::to_vec(&v).expect("JSON"))
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve-ceiling") {
        return ceiling(&args[i + 1], &args[i + 2]);
    }
    // Helpers for scripts/instructions.sh: certificates for `localhost`, and a client that
    // sends N requests over one keep-alive connection.
    if let Some(i) = args.iter().position(|a| a == "--gen-certs") {
        let certs = tls::generate(Path::new(&args[i + 1]), &["localhost".into()]).expect("certs");
        println!(
            "{} {} {}",
            certs.ca.display(),
            certs.cert.display(),
            certs.key.display()
        );
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--client") {
        let (addr, ca, path) = (&args[i + 1], &args[i + 2], args[i + 3].clone());
        let n: usize = args[i + 4].parse().expect("request count");
        return client(addr.parse().expect("addr"), Path::new(ca), path, n);
    }
    let seconds = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1)?.parse::<f64>().ok())
        .unwrap_or(3.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(Duration::from_secs_f64(seconds)));
}

/// The ceiling server: same TLS/HTTP stack, fixed answer, body read but never parsed.
fn ceiling(cert: &str, key: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (_, pair) = tls::CertFiles::load(cert.into(), key.into()).expect("certs");
        let config = tls::server_config(tls::CertStore::new(&pair));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        println!("{}", listener.local_addr().expect("addr"));
        const FIXED: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"705ab4f5-6393-11e8-b7cc-42010a800002","allowed":true,"auditAnnotations":{"decision":"allowed"}}}"#;
        async fn fixed(body: axum::body::Body) -> impl axum::response::IntoResponse {
            let _ = axum::body::to_bytes(body, 4 << 20).await;
            ([(axum::http::header::CONTENT_TYPE, "application/json")], FIXED)
        }
        let app = axum::Router::new()
            .route("/validate", axum::routing::post(fixed))
            .route("/mutate", axum::routing::post(fixed));
        serve_router(listener, config, app, &Limits::default(), std::future::pending()).await;
    });
}

/// Sends `n` requests one after the other over one HTTP/1.1 keep-alive TLS connection.
fn client(addr: SocketAddr, ca: &Path, path: String, n: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let body = review_body();
        let mut sender = connect(addr, ca, false).await;
        let path: &'static str = Box::leak(path.into_boxed_str());
        for i in 0..n {
            assert!(one(&mut sender, path, &body).await, "request {i} failed");
        }
    });
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn start_ceiling(cert: &Path, key: &Path) -> Server {
    use std::io::BufRead;
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--serve-ceiling",
            &cert.display().to_string(),
            &key.display().to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn ceiling");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("port");
    Server {
        child,
        addr: line.trim().parse().expect("addr"),
    }
}

/// Starts `bootvolume serve` and returns it with the time until `/readyz` answered 200.
async fn start_webhook(cert: &Path, key: &Path) -> (Server, Duration) {
    let (port, metrics_port) = (free_port(), free_port());
    let started = Instant::now();
    // BOOTVOLUME_BIN: another build of the webhook (to compare two builds in one run).
    let bin = std::env::var_os("BOOTVOLUME_BIN")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_bootvolume")), PathBuf::from);
    let child = Command::new(bin)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .args([
            "--tls-cert-file",
            &cert.display().to_string(),
            "--tls-private-key-file",
            &key.display().to_string(),
        ])
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn webhook");
    let server = Server {
        child,
        addr: format!("127.0.0.1:{port}").parse().expect("addr"),
    };
    let deadline = started + Duration::from_secs(10);
    loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", metrics_port)).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = s
                .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await;
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf).await;
            if buf.starts_with(b"HTTP/1.1 200") {
                return (server, started.elapsed());
            }
        }
        assert!(Instant::now() < deadline, "webhook not ready within 10 s");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

async fn connect(addr: SocketAddr, ca: &Path, h2: bool) -> Sender {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(c.expect("ca cert")).expect("add ca");
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![if h2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake");
    let io = TokioIo::new(tls);
    if h2 {
        let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2");
        tokio::spawn(conn);
        Sender::H2(send)
    } else {
        let (send, conn) = hyper::client::conn::http1::handshake(io).await.expect("h1");
        tokio::spawn(conn);
        Sender::H1(send)
    }
}

async fn one(sender: &mut Sender, path: &str, body: &Bytes) -> bool {
    let req = Request::post(path)
        .header("content-type", "application/json")
        .header("host", "localhost")
        .body(Full::new(body.clone()))
        .expect("request");
    let resp = match sender {
        Sender::H1(s) => {
            if s.ready().await.is_err() {
                return false;
            }
            s.send_request(req).await
        }
        Sender::H2(s) => {
            if s.ready().await.is_err() {
                return false;
            }
            s.send_request(req).await
        }
    };
    match resp {
        Ok(r) => r.status() == 200 && r.into_body().collect().await.is_ok(),
        Err(_) => false,
    }
}

#[derive(Clone, Debug, Default)]
struct Figures {
    rps: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    errors: usize,
}

/// Closed-loop load: `conns` connections (or one h2 connection with `conns` streams), each
/// sending its next request when the previous answer arrived.
async fn load(
    addr: SocketAddr,
    ca: &Path,
    path: &'static str,
    conns: usize,
    h2: bool,
    secs: Duration,
) -> Figures {
    let body = review_body();
    let senders: Vec<Sender> = if h2 {
        let Sender::H2(s) = connect(addr, ca, true).await else {
            unreachable!("h2 connect")
        };
        (0..conns).map(|_| Sender::H2(s.clone())).collect()
    } else {
        let mut v = Vec::new();
        for _ in 0..conns {
            v.push(connect(addr, ca, false).await);
        }
        v
    };
    // Warm up (TLS sessions, allocator, caches), then measure.
    let run = |senders: Vec<Sender>, d: Duration| {
        let body = body.clone();
        async move {
            let end = Instant::now() + d;
            let tasks: Vec<_> = senders
                .into_iter()
                .map(|mut s| {
                    let body = body.clone();
                    tokio::spawn(async move {
                        let (mut lat, mut errors) = (Vec::with_capacity(1 << 16), 0usize);
                        while Instant::now() < end {
                            let t = Instant::now();
                            if one(&mut s, path, &body).await {
                                lat.push(t.elapsed().as_nanos() as u64);
                            } else {
                                errors += 1;
                            }
                        }
                        (lat, errors, s)
                    })
                })
                .collect();
            let mut all = Vec::new();
            let mut errors = 0;
            let mut back = Vec::new();
            for t in tasks {
                let (l, e, s) = t.await.expect("task");
                all.extend(l);
                errors += e;
                back.push(s);
            }
            (all, errors, back)
        }
    };
    let (_, _, senders) = run(senders, Duration::from_millis(300)).await;
    let started = Instant::now();
    let (mut lat, errors, _) = run(senders, secs).await;
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1e6
    };
    Figures {
        rps: lat.len() as f64 / elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
        p999: pct(0.999),
        errors,
    }
}

async fn run(secs: Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = tls::generate(dir.path(), &["localhost".into(), "127.0.0.1".into()]).expect("certs");
    let ceiling = start_ceiling(&certs.cert, &certs.key);
    let (webhook, ready) = start_webhook(&certs.cert, &certs.key).await;
    let pid = webhook.child.id();
    // Idle memory after a few requests (allocator and TLS state settled).
    let _ = load(
        webhook.addr,
        &certs.ca,
        "/validate",
        1,
        false,
        Duration::from_millis(200),
    )
    .await;
    let idle_kib = rss_kib(pid);

    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let mut rows: Vec<(String, &str, Figures, Figures)> = Vec::new();
    for (conns, h2) in [(1, false), (16, false), (64, false), (16, true)] {
        let label = if h2 {
            format!("h2 x{conns} streams")
        } else {
            format!("h1 x{conns}")
        };
        let base = load(ceiling.addr, &certs.ca, "/validate", conns, h2, secs).await;
        for path in ["/validate", "/mutate"] {
            let ours = load(webhook.addr, &certs.ca, path, conns, h2, secs).await;
            rows.push((label.clone(), path, ours, base.clone()));
        }
    }
    sampler.abort();
    let peak_kib = peak.load(std::sync::atomic::Ordering::Relaxed);

    let mut md = String::new();
    md.push_str("| load | webhook | req/s | p50 ms | p99 ms | p99.9 ms | ceiling req/s | ceiling p99 ms | throughput ratio | p99 ratio | errors |\n");
    md.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (label, path, o, b) in &rows {
        md.push_str(&format!(
            "| {label} | {path} | {:.0} | {:.3} | {:.3} | {:.3} | {:.0} | {:.3} | {:.2} | {:.2} | {} |\n",
            o.rps,
            o.p50,
            o.p99,
            o.p999,
            b.rps,
            b.p99,
            o.rps / b.rps,
            o.p99 / b.p99,
            o.errors + b.errors
        ));
    }
    md.push_str(&format!(
        "\nready after {:.1} ms; RSS idle {:.1} MiB, peak under load {:.1} MiB\n",
        ready.as_secs_f64() * 1e3,
        idle_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0
    ));
    println!("{md}");
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join("load.md"), md);
}
