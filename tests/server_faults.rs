//! The accept loop under hostile or unlucky clients (issue 5): slow and silent clients,
//! connection exhaustion, garbage instead of TLS, clients vanishing mid-request, SIGTERM
//! under load and certificate rotation under load. Loopback only; every wait is bounded.

mod common;

use bootvolume::{
    rules::Policy,
    server::{CertSource, Limits, ServeConfig, WebhookServer},
};
use common::{SERVICE_NAME, bounded, client_builder, metric_value, poll_until};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, Once,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::oneshot,
    task::JoinHandle,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

/// A short timeout the tests can wait out.
const SHORT: Duration = Duration::from_millis(500);
/// Scheduling slack on a busy 2-core machine.
const SLACK: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------
// Panics in server tasks (tokio worker threads, `tokio-rt-worker`) are counted: a connection task that
// panics does not stop the server, so the tests look for it explicitly.

static SERVER_PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_server_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("tokio-"))
            {
                SERVER_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            default(info);
        }));
    });
}

fn assert_no_server_panics() {
    assert_eq!(
        SERVER_PANICS.load(Ordering::SeqCst),
        0,
        "a server task panicked (see stderr)"
    );
}

// ---------------------------------------------------------------------------------------
// A server with chosen limits (tests/common's TestServer uses the defaults).

struct Server {
    addr: SocketAddr,
    metrics_addr: SocketAddr,
    ca_pem: Vec<u8>,
    _dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    async fn start(limits: Limits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let g = common::generate_certs(dir.path());
        let ca = std::fs::read(&g.ca).unwrap();
        Self::start_with(limits, dir, g.cert, g.key, ca, Duration::from_secs(3600)).await
    }

    async fn start_with(
        limits: Limits,
        dir: tempfile::TempDir,
        cert: PathBuf,
        key: PathBuf,
        ca_pem: Vec<u8>,
        reload_interval: Duration,
    ) -> Self {
        common::install_provider();
        count_server_panics();
        let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let server = WebhookServer::bind(ServeConfig {
            listen: loopback,
            metrics_listen: loopback,
            certs: CertSource::Files { cert, key },
            reload_interval,
            policy: Policy::default(),
            limits,
        })
        .await
        .expect("bind");
        let (addr, metrics_addr) = (server.local_addr(), server.metrics_addr());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        let s = Self {
            addr,
            metrics_addr,
            ca_pem,
            _dir: dir,
            shutdown: Some(tx),
            task: Some(task),
        };
        let probe = common::plain_client();
        let url = format!("http://{metrics_addr}/readyz");
        poll_until("server ready", Duration::from_secs(10), || async {
            let r = probe.get(&url).send().await.ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
        s
    }

    fn url(&self, path: &str) -> String {
        format!("https://{SERVICE_NAME}:{}{path}", self.addr.port())
    }

    fn client(&self) -> reqwest::Client {
        client_builder(&self.ca_pem, self.addr)
            .http1_only()
            .build()
            .unwrap()
    }

    /// POSTs the allowed fixture to /validate; `Ok` only for a complete 200.
    async fn validate(&self, client: &reqwest::Client) -> Result<(), String> {
        let resp = client
            .post(self.url("/validate"))
            .header("content-type", "application/json")
            .body(review_body())
            .send()
            .await
            .map_err(|e| format!("send: {e:?}"))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| format!("body: {e:?}"))?;
        if status != 200 {
            return Err(format!("status {status}: {}", String::from_utf8_lossy(&body)));
        }
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        (v["response"]["allowed"] == true)
            .then_some(())
            .ok_or_else(|| format!("unexpected review: {v}"))
    }

    async fn scrape(&self) -> String {
        let url = format!("http://{}/metrics", self.metrics_addr);
        let resp = bounded("scrape", common::plain_client().get(url).send())
            .await
            .unwrap();
        resp.text().await.unwrap()
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            bounded("server stop", task).await.expect("server task");
        }
        assert_no_server_panics();
    }
}

fn limits() -> Limits {
    Limits {
        drain_timeout: Duration::from_secs(5),
        ..Limits::default()
    }
}

fn review_body() -> Vec<u8> {
    serde_json::to_vec(&common::admission_fixture("create_external_valid_allowed")).unwrap()
}

const ALLOWED_SERIES: &str =
    r#"bootvolume_admission_requests_total{webhook="validate",operation="CREATE",decision="allowed"}"#;

// ---------------------------------------------------------------------------------------
// Raw clients: TCP, TLS with a chosen ALPN, and a minimal HTTP/1.1 exchange whose every
// step is visible (what was written, what came back).

fn tls_connector(ca_pem: &[u8], alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

async fn tls_connect(
    addr: SocketAddr,
    ca_pem: &[u8],
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(SERVICE_NAME).unwrap();
    tls_connector(ca_pem, alpn).connect(name, tcp).await
}

/// Reads until EOF or an error; returns what was read and how long until the close.
/// Panics when the peer keeps the connection open past `limit`.
async fn wait_closed<S: tokio::io::AsyncRead + Unpin>(
    what: &str,
    stream: &mut S,
    limit: Duration,
) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => panic!("{what}: connection still open after {limit:?}"),
            Ok(Ok(0) | Err(_)) => return (data, start.elapsed()),
            Ok(Ok(n)) => data.extend_from_slice(&buf[..n]),
        }
    }
}

fn request_head(path: &str, content_length: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {SERVICE_NAME}\r\nContent-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n"
    )
}

/// One HTTP/1.1 response: status, whether it says `Connection: close`, and the body.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    close: bool,
    body: Vec<u8>,
}

/// Reads one complete response (Content-Length framed, as axum sends them); `None` when the
/// connection ends first.
async fn read_response<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Option<RawResponse> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let header = |name: &str| {
        head.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(':')
                .map(|v| v.trim().to_owned())
        })
    };
    let length: usize = header("content-length")?.parse().ok()?;
    let close = header("connection").is_some_and(|v| v.contains("close"));
    while buf.len() < head_end + length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some(RawResponse {
        status,
        close,
        body: buf[head_end..head_end + length].to_vec(),
    })
}

// ---------------------------------------------------------------------------------------
// Slow and silent clients.

/// Headers trickling in one byte per 100 ms never complete: the connection is closed at
/// the header read timeout, not when the client gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off_at_the_header_read_timeout() {
    let server = Server::start(Limits {
        header_read_timeout: SHORT,
        ..limits()
    })
    .await;
    let stream = tls_connect(server.addr, &server.ca_pem, &[b"http/1.1"])
        .await
        .unwrap();
    let (mut rd, mut wr) = tokio::io::split(stream);
    let head = request_head("/validate", 2);
    let sent = Arc::new(AtomicUsize::new(0));
    let writer = {
        let sent = sent.clone();
        tokio::spawn(async move {
            for b in head.as_bytes() {
                if wr.write_all(&[*b]).await.is_err() || wr.flush().await.is_err() {
                    return;
                }
                sent.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let (data, after) = wait_closed("slow headers", &mut rd, SHORT + SLACK).await;
    writer.abort();
    let text = String::from_utf8_lossy(&data);
    assert!(
        after >= SHORT - Duration::from_millis(100),
        "closed too early ({after:?}): {text}"
    );
    assert!(
        sent.load(Ordering::SeqCst) < request_head("/validate", 2).len(),
        "the headers were never completed"
    );
    assert!(
        data.is_empty() || text.starts_with("HTTP/1.1 408"),
        "only a 408 or nothing: {text}"
    );
    // The server is fine.
    server.validate(&server.client()).await.unwrap();
    server.stop().await;
}

/// A client that finishes TLS and then says nothing (with or without ALPN, or with one
/// byte of an HTTP/2 preface) is closed at the header read timeout. (hyper-util's
/// protocol sniffing used to wait for 24 bytes with no timeout at all.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_after_tls_are_closed() {
    let server = Server::start(Limits {
        header_read_timeout: SHORT,
        idle_timeout: Duration::from_secs(1),
        ..limits()
    })
    .await;
    /// (case, ALPN offered, bytes sent after the handshake, when the server must close).
    type Case = (&'static str, &'static [&'static [u8]], &'static [u8], Duration);
    let cases: [Case; 4] = [
        ("ALPN http/1.1, nothing sent", &[b"http/1.1"], b"", SHORT),
        ("no ALPN, nothing sent", &[], b"", SHORT),
        ("no ALPN, one byte of the h2 preface", &[], b"P", SHORT),
        // HTTP/2 has no header timer: the idle timeout closes it.
        (
            "ALPN h2, no preface",
            &[b"h2", b"http/1.1"],
            b"",
            Duration::from_secs(1),
        ),
    ];
    let mut tasks = Vec::new();
    for (case, alpn, send, timeout) in cases {
        let mut s = tls_connect(server.addr, &server.ca_pem, alpn).await.unwrap();
        s.write_all(send).await.unwrap();
        s.flush().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let (_, after) = wait_closed(case, &mut s, timeout + SLACK).await;
            assert!(
                after + Duration::from_millis(150) >= timeout,
                "{case}: closed too early ({after:?})"
            );
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    server.validate(&server.client()).await.unwrap();
    server.stop().await;
}

/// Headers, then a body that stalls: 408 from the body timeout, well before any client
/// would give up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_body_gets_408() {
    let server = Server::start(Limits {
        body_timeout: Duration::from_secs(1),
        ..limits()
    })
    .await;
    let mut s = tls_connect(server.addr, &server.ca_pem, &[b"http/1.1"])
        .await
        .unwrap();
    let body = review_body();
    s.write_all(request_head("/validate", body.len()).as_bytes())
        .await
        .unwrap();
    s.write_all(&body[..body.len() / 2]).await.unwrap();
    s.flush().await.unwrap();
    let start = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(5), read_response(&mut s))
        .await
        .expect("an answer within 5 s")
        .expect("a complete response, not a dropped connection");
    let after = start.elapsed();
    assert_eq!(resp.status, 408, "{}", String::from_utf8_lossy(&resp.body));
    let status: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(status["reason"], "Timeout", "{status}");
    assert!(after >= Duration::from_millis(900), "408 after {after:?}");
    // The half-read request cannot be followed by another on this connection.
    let (_, closed) = wait_closed("after 408", &mut s, SLACK).await;
    assert!(closed < SLACK);
    server.validate(&server.client()).await.unwrap();
    server.stop().await;
}

/// TCP without a TLS handshake is closed at the handshake timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_without_tls_is_closed_at_the_handshake_timeout() {
    let server = Server::start(Limits {
        handshake_timeout: SHORT,
        ..limits()
    })
    .await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let (data, after) = wait_closed("no TLS", &mut tcp, SHORT + SLACK).await;
    assert!(data.is_empty(), "nothing is sent to a client that said nothing");
    assert!(
        after >= SHORT - Duration::from_millis(100),
        "closed too early ({after:?})"
    );
    server.validate(&server.client()).await.unwrap();
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Connection exhaustion and idle connections.

/// With `max_connections` idle TLS connections open, the next connection is closed at once
/// (not left hanging), and requests work again as soon as idle ones go away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_closes_extra_connections_promptly() {
    const MAX: usize = 16;
    let server = Server::start(Limits {
        max_connections: MAX,
        header_read_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        ..limits()
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..MAX {
        idle.push(
            tls_connect(server.addr, &server.ca_pem, &[b"http/1.1"])
                .await
                .expect("within the limit"),
        );
    }
    // Over the limit: TCP connects (the kernel accepts), then the server closes it.
    let start = Instant::now();
    let extra = tokio::time::timeout(SLACK, tls_connect(server.addr, &server.ca_pem, &[b"http/1.1"]))
        .await
        .expect("the extra connection is closed, not left hanging");
    assert!(extra.is_err(), "the 17th connection must not be served");
    assert!(start.elapsed() < SLACK);
    let client = server.client();
    assert!(
        server.validate(&client).await.is_err(),
        "no slot for a real request either"
    );

    // Idle clients leave: their slots are freed and real requests go through.
    idle.truncate(MAX - 4);
    poll_until(
        "a request succeeds after idle connections closed",
        Duration::from_secs(5),
        || async { server.validate(&server.client()).await.ok() },
    )
    .await;
    drop(idle);
    // All slots come back: MAX concurrent keep-alive clients are served.
    poll_until("every slot free again", Duration::from_secs(5), || async {
        let mut clients = Vec::new();
        for _ in 0..MAX {
            clients.push(server.client());
        }
        let results = futures::future::join_all(clients.iter().map(|c| server.validate(c))).await;
        results.iter().all(Result::is_ok).then_some(())
    })
    .await;
    server.stop().await;
}

/// Keep-alive connections do not stay open forever: HTTP/1 ones are closed after the
/// header read timeout without a new request, HTTP/2 ones after the idle timeout (GOAWAY).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed() {
    let header = Duration::from_millis(800);
    let idle = Duration::from_millis(1500);
    let server = Server::start(Limits {
        header_read_timeout: header,
        idle_timeout: idle,
        ..limits()
    })
    .await;
    let body = review_body();

    // HTTP/1.1: one request, then silence.
    let mut h1 = tls_connect(server.addr, &server.ca_pem, &[b"http/1.1"])
        .await
        .unwrap();
    h1.write_all(request_head("/validate", body.len()).as_bytes())
        .await
        .unwrap();
    h1.write_all(&body).await.unwrap();
    let resp = bounded("h1 response", read_response(&mut h1))
        .await
        .expect("response");
    assert_eq!((resp.status, resp.close), (200, false), "a keep-alive response");
    let (_, after) = wait_closed("idle h1", &mut h1, header + SLACK).await;
    assert!(
        after + Duration::from_millis(150) >= header,
        "h1 closed too early ({after:?})"
    );

    // HTTP/2: a request, then silence; the server ends the connection.
    let tls = tls_connect(server.addr, &server.ca_pem, &[b"h2"]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::post(server.url("/validate"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let resp = bounded("h2 response", send.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let done = Instant::now();
    let ended = tokio::time::timeout(idle + SLACK, conn)
        .await
        .expect("idle h2 connection closed by the server");
    ended.unwrap().expect("a graceful close (GOAWAY), not an error");
    assert!(
        done.elapsed() + Duration::from_millis(150) >= idle,
        "h2 closed too early"
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Garbage and vanishing clients.

/// Random bytes, a plain-HTTP request and half a ClientHello on the TLS port are closed;
/// the server keeps serving and its metrics stay right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_tls_is_closed_and_the_server_keeps_serving() {
    let server = Server::start(limits()).await;
    let client = server.client();
    server.validate(&client).await.unwrap();
    let before = metric_value(&server.scrape().await, ALLOWED_SERIES);
    assert_eq!(before, 1.0);

    // A cheap deterministic byte generator (xorshift), so failures reproduce.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let hello = {
        // The first bytes a real client sends: a ClientHello record, cut short.
        let mut record = Vec::new();
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let (mut rd, mut wr) = tokio::io::split(tcp);
        let mut tls = rustls::ClientConnection::new(
            Arc::new(
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
            ),
            ServerName::try_from(SERVICE_NAME).unwrap(),
        )
        .unwrap();
        tls.write_tls(&mut record).unwrap();
        drop((rd.read(&mut [0u8; 1]), wr.shutdown()));
        record.truncate(record.len() / 2);
        record
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("random bytes", random(4096)),
        (
            "a TLS-looking record header then noise",
            [&[0x16u8, 0x03, 0x01, 0x40, 0x00][..], &random(64)].concat(),
        ),
        (
            "plain HTTP",
            format!("GET /healthz HTTP/1.1\r\nHost: {SERVICE_NAME}\r\n\r\n").into_bytes(),
        ),
        ("half a ClientHello", hello),
    ];
    for (case, bytes) in cases {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        let _ = tcp.write_all(&bytes).await;
        if case == "half a ClientHello" {
            // The handshake can never finish: the server must not wait beyond its timeout.
            let _ = tcp.shutdown().await;
        }
        let (data, _) = wait_closed(case, &mut tcp, Duration::from_secs(12) + SLACK).await;
        assert!(
            !String::from_utf8_lossy(&data).contains("HTTP/1.1 200"),
            "{case}: no HTTP answer without TLS"
        );
        // Whatever came back is at most a TLS alert record.
        assert!(data.is_empty() || data[0] == 0x15, "{case}: {data:?}");
    }

    server
        .validate(&client)
        .await
        .expect("the keep-alive client still works");
    server.validate(&server.client()).await.expect("new clients too");
    let after = metric_value(&server.scrape().await, ALLOWED_SERIES);
    assert_eq!(after, 3.0, "exactly the real requests are counted");
    server.stop().await;
}

/// A client that sends headers and half a body and then vanishes does not hurt the
/// server: later requests succeed and no server task panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_mid_request() {
    let server = Server::start(limits()).await;
    let body = review_body();
    for alpn in [&b"http/1.1"[..], &b"h2"[..]] {
        for _ in 0..8 {
            let mut s = tls_connect(server.addr, &server.ca_pem, &[alpn]).await.unwrap();
            if alpn == b"h2" {
                // An HTTP/2 request whose body never completes, then the TCP connection goes.
                let (mut send, conn) = hyper::client::conn::http2::handshake(
                    hyper_util::rt::TokioExecutor::new(),
                    hyper_util::rt::TokioIo::new(s),
                )
                .await
                .unwrap();
                let conn = tokio::spawn(conn);
                let (tx, rx) = tokio::sync::mpsc::channel::<
                    Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>,
                >(1);
                let stream_body = http_body_util::StreamBody::new(tokio_stream(rx));
                let req = http::Request::post(server.url("/validate"))
                    .header("content-type", "application/json")
                    .header("content-length", body.len())
                    .body(stream_body)
                    .unwrap();
                let pending = tokio::spawn(send.send_request(req));
                tx.send(Ok(hyper::body::Frame::data(bytes::Bytes::copy_from_slice(
                    &body[..body.len() / 2],
                ))))
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                conn.abort();
                pending.abort();
                drop(tx);
            } else {
                s.write_all(request_head("/validate", body.len()).as_bytes())
                    .await
                    .unwrap();
                s.write_all(&body[..body.len() / 2]).await.unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                drop(s);
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = metric_value(&server.scrape().await, ALLOWED_SERIES);
    assert_eq!(before, 0.0, "an incomplete request is never admitted");
    server.validate(&server.client()).await.unwrap();
    let c = client_builder(&server.ca_pem, server.addr).build().unwrap();
    server.validate(&c).await.expect("h2 still served");
    assert_eq!(metric_value(&server.scrape().await, ALLOWED_SERIES), 2.0);
    server.stop().await;
}

/// An `mpsc::Receiver` as a `Stream` (no tokio-stream dependency).
fn tokio_stream<T>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

// ---------------------------------------------------------------------------------------
// SIGTERM under load, against the real binary.

/// Kills the child on drop, so a failing test leaves nothing running.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// What one load connection saw.
#[derive(Debug, Default)]
struct Tally {
    /// Complete 200 responses.
    ok: usize,
    /// Responses carrying `Connection: close`.
    close: usize,
    /// Request fully written, no complete response: a lost request.
    lost: usize,
    /// Anything but a complete 200 to a written request (e.g. a 5xx).
    bad: Vec<String>,
    /// Failures before anything was written (connect, TLS, connection found closed, write).
    not_sent: usize,
    /// Failures of any kind before SIGTERM.
    before_term: Vec<String>,
}

/// One keep-alive HTTP/1.1 connection sending the review in a loop, reconnecting when the
/// server closes it, until it cannot connect (or `deadline`).
async fn load_connection(
    addr: SocketAddr,
    ca: Arc<Vec<u8>>,
    termed: Arc<AtomicBool>,
    deadline: Instant,
) -> Tally {
    let body = review_body();
    let mut request = request_head("/validate", body.len()).into_bytes();
    request.extend_from_slice(&body);
    let mut t = Tally::default();
    let mut conn: Option<TlsStream<TcpStream>> = None;
    while Instant::now() < deadline {
        let s = match conn.as_mut() {
            Some(s) => s,
            None => match tls_connect(addr, &ca, &[b"http/1.1"]).await {
                Ok(s) => conn.insert(s),
                Err(e) => {
                    t.not_sent += 1;
                    if termed.load(Ordering::SeqCst) {
                        break; // shut down: connection refused or reset
                    }
                    t.before_term.push(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        // Like Go's transport: a connection the server already closed is not written to.
        let mut probe = [0u8; 1];
        if let Ok(r) = tokio::time::timeout(Duration::ZERO, s.read(&mut probe)).await {
            t.not_sent += 1;
            if !termed.load(Ordering::SeqCst) {
                t.before_term
                    .push(format!("idle connection closed by the server: {r:?}"));
            }
            conn = None;
            continue;
        }
        if let Err(e) = async {
            s.write_all(&request).await?;
            s.flush().await
        }
        .await
        {
            t.not_sent += 1;
            if !termed.load(Ordering::SeqCst) {
                t.before_term.push(format!("write: {e}"));
            }
            conn = None;
            continue;
        }
        match tokio::time::timeout(Duration::from_secs(10), read_response(s)).await {
            Ok(Some(r)) if r.status == 200 => {
                t.ok += 1;
                if r.close {
                    t.close += 1;
                    conn = None;
                }
            }
            Ok(Some(r)) => {
                t.bad.push(format!(
                    "status {}: {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                ));
                conn = None;
            }
            Ok(None) | Err(_) => {
                t.lost += 1;
                conn = None;
            }
        }
    }
    t
}

/// SIGTERM while 16 keep-alive connections are busy: every request that was written gets a
/// complete 200, the only failures are connections refused (or found closed) before a
/// request was written, and the process exits 0 within the drain timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_request() {
    use std::io::BufRead as _;
    common::install_provider();
    let dir = tempfile::tempdir().unwrap();
    let g = common::generate_certs(dir.path());
    let ca = Arc::new(std::fs::read(&g.ca).unwrap());
    let drain = Duration::from_secs(5);
    let mut child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_bootvolume"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .arg("--tls-cert-file")
            .arg(&g.cert)
            .arg("--tls-private-key-file")
            .arg(&g.key)
            .args([
                "--drain-timeout",
                &drain.as_secs().to_string(),
                "--log-level",
                "info",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn bootvolume serve"),
    );
    let pid = child.0.id();
    // Drain stderr on a thread (the pipe must never fill); find the bound addresses.
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<(SocketAddr, SocketAddr)>();
    let stderr = child.0.stderr.take().unwrap();
    let reader = {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("webhook listening on https://") {
                    let (https, rest) = rest.split_once(' ').unwrap();
                    let metrics = rest
                        .trim_start_matches("(metrics on http://")
                        .trim_end_matches(')');
                    let _ = addr_tx.send((https.parse().unwrap(), metrics.parse().unwrap()));
                }
                log.lock().unwrap().push(line);
            }
        })
    };
    let (addr, metrics_addr) = addr_rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("server did not start: {:?}", log.lock().unwrap()));
    let probe = common::plain_client();
    poll_until("binary ready", Duration::from_secs(10), || async {
        let r = probe
            .get(format!("http://{metrics_addr}/readyz"))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;

    let termed = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(30);
    let workers: Vec<_> = (0..16)
        .map(|_| tokio::spawn(load_connection(addr, ca.clone(), termed.clone(), deadline)))
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    termed.store(true, Ordering::SeqCst);
    let killed = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    let mut total = Tally::default();
    for w in workers {
        let t = bounded("load connection", w).await.unwrap();
        total.ok += t.ok;
        total.close += t.close;
        total.lost += t.lost;
        total.not_sent += t.not_sent;
        total.bad.extend(t.bad);
        total.before_term.extend(t.before_term);
    }
    let exit = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            killed.elapsed() < drain + SLACK,
            "process still running {:?} after SIGTERM",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    reader.join().unwrap();
    let log = log.lock().unwrap().join("\n");
    eprintln!(
        "SIGTERM under load: {total:?}, exited {exit:?} after {:?}",
        killed.elapsed()
    );
    assert!(exit.success(), "exit status {exit:?}\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        total.before_term.is_empty(),
        "failures before SIGTERM: {:?}",
        total.before_term
    );
    assert_eq!(
        total.lost, 0,
        "requests written but never answered: {total:?}\n{log}"
    );
    assert!(total.bad.is_empty(), "{:?}", total.bad);
    assert!(total.ok >= 100, "the load actually ran: {total:?}");
    assert!(
        total.close >= 1,
        "busy connections were closed with Connection: close: {total:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Certificate rotation under load.

/// One CA issuing several leaves for the Service name: every leaf verifies with the same
/// trust, so a rotation must be invisible to clients.
struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl TestCa {
    fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(DnType::CommonName, "server_faults test CA");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A leaf with `serial`; returns (certificate PEM, key PEM).
    fn leaf(&self, serial: u64) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(common::serving_names()).unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Replaces `path` through a rename, as cert-manager/kubelet do.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The serial of the leaf a response's TLS connection presented.
fn served_serial(resp: &reqwest::Response) -> u64 {
    let info = resp
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("tls info");
    let der = info.peer_certificate().expect("peer certificate");
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.raw_serial()
        .iter()
        .fold(0u64, |n, b| (n << 8) | u64::from(*b))
}

/// Four rotations while clients (keep-alive ones and ones opening a connection per
/// request) send reviews nonstop: no request fails, and each new leaf is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_under_load() {
    common::install_provider();
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let (c, k) = ca.leaf(1);
    replace(&cert, &c);
    replace(&key, &k);
    let server = Arc::new(
        Server::start_with(
            limits(),
            dir,
            cert.clone(),
            key.clone(),
            ca.pem.clone().into_bytes(),
            Duration::from_millis(200),
        )
        .await,
    );

    let stop = Arc::new(AtomicBool::new(false));
    let serials = Arc::new(Mutex::new(std::collections::BTreeSet::<u64>::new()));
    let mut workers = Vec::new();
    for i in 0..6 {
        let (server, stop, serials) = (server.clone(), stop.clone(), serials.clone());
        workers.push(tokio::spawn(async move {
            // Even workers keep one connection; odd ones make a full handshake per request
            // (a new client: a reused one would resume its TLS session, and a resumed
            // session presents no certificate, so it keeps reporting the first leaf).
            let new_client = || {
                client_builder(&server.ca_pem, server.addr)
                    .http1_only()
                    .tls_info(true)
                    .build()
                    .unwrap()
            };
            let mut client = new_client();
            let (mut ok, mut failures) = (0usize, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                if i % 2 == 1 {
                    client = new_client();
                }
                let resp = client
                    .post(server.url("/validate"))
                    .header("content-type", "application/json")
                    .body(review_body())
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == 200 => {
                        serials.lock().unwrap().insert(served_serial(&r));
                        match r.bytes().await {
                            Ok(_) => ok += 1,
                            Err(e) => failures.push(format!("body: {e:?}")),
                        }
                    }
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(format!("{e:?}")),
                }
            }
            (ok, failures)
        }));
    }

    for serial in 2..=5u64 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (c, k) = ca.leaf(serial);
        replace(&cert, &c);
        replace(&key, &k);
        poll_until(
            &format!("leaf {serial} served"),
            Duration::from_secs(5),
            || async {
                let probe = client_builder(&server.ca_pem, server.addr)
                    .http1_only()
                    .tls_info(true)
                    .build()
                    .unwrap();
                let r = probe.get(server.url("/healthz")).send().await.ok()?;
                (served_serial(&r) == serial).then_some(())
            },
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let (mut ok, mut failures) = (0, Vec::new());
    for w in workers {
        let (o, f) = bounded("load worker", w).await.unwrap();
        ok += o;
        failures.extend(f);
    }
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok >= 50, "the load ran ({ok} requests)");
    let seen = serials.lock().unwrap().clone();
    assert!(
        seen.contains(&5),
        "the load clients got the last leaf too: {seen:?}"
    );
    assert!(seen.len() >= 3, "the load spanned several leaves: {seen:?}");
    let text = server.scrape().await;
    assert!(
        metric_value(&text, r#"bootvolume_tls_reloads_total{result="success"}"#) >= 4.0,
        "{text}"
    );
    Arc::into_inner(server).expect("workers are done").stop().await;
}
