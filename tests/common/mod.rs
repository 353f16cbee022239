//! Shared helpers for the integration tests: a real webhook server on loopback with TLS
//! certificates for the Service name, clients that verify them the way kube-apiserver does,
//! fixture loading and patch decoding.
#![allow(dead_code)] // Each test binary uses a different subset.

use base64::Engine as _;
use bootvolume::{
    metrics::Metrics,
    rules::Policy,
    server::{CertSource, Limits, ServeConfig, WebhookServer},
    tls::{self, GeneratedCerts},
};
use serde_json::Value;
use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};
use tokio::{sync::oneshot, task::JoinHandle};

/// The name the API server uses as TLS ServerName for our Service.
pub const SERVICE_NAME: &str = "bootvolume-webhook.bootvolume-system.svc";

/// Upper bound for any single step of a test.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Installs the process-wide rustls provider (ring), as `main` does.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Fails the test instead of hanging when `fut` takes longer than [`STEP_TIMEOUT`].
pub async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP_TIMEOUT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: timed out after {STEP_TIMEOUT:?}"),
    }
}

/// Polls `check` every 20 ms until it returns `Some`, failing after `deadline`.
pub async fn poll_until<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "{what}: not reached within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The DNS names of the test serving certificate.
pub fn serving_names() -> Vec<String> {
    vec![SERVICE_NAME.into(), "localhost".into(), "127.0.0.1".into()]
}

/// Generates a CA + serving pair for [`serving_names`] into `dir`.
pub fn generate_certs(dir: &Path) -> GeneratedCerts {
    tls::generate(dir, &serving_names()).expect("generate certificates")
}

/// How to start a test server.
pub struct Options {
    /// Rule flags.
    pub policy: Policy,
    /// Certificate poll interval.
    pub reload_interval: Duration,
    /// Certificate and key files; `None` generates a pair into the server's tempdir.
    pub cert_files: Option<(PathBuf, PathBuf, Vec<u8>)>,
    /// Drain time on shutdown.
    pub drain_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            reload_interval: Duration::from_secs(3600),
            cert_files: None,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// A running webhook server on 127.0.0.1 (both listeners on port 0).
pub struct TestServer {
    /// HTTPS address.
    pub addr: SocketAddr,
    /// Plain-HTTP metrics address.
    pub metrics_addr: SocketAddr,
    /// The CA to trust (PEM).
    pub ca_pem: Vec<u8>,
    /// The server's metrics registry.
    pub metrics: Arc<Metrics>,
    /// Holds generated certificates.
    pub dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// A server with the default policy.
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    /// A server with `options`.
    pub async fn start_with(options: Options) -> Self {
        install_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key, ca_pem) = match options.cert_files {
            Some(files) => files,
            None => {
                let g = generate_certs(dir.path());
                let ca = std::fs::read(&g.ca).expect("read CA");
                (g.cert, g.key, ca)
            }
        };
        let loopback: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let config = ServeConfig {
            listen: loopback,
            metrics_listen: loopback,
            certs: CertSource::Files { cert, key },
            reload_interval: options.reload_interval,
            policy: options.policy,
            limits: Limits {
                drain_timeout: options.drain_timeout,
                ..Limits::default()
            },
        };
        let server = WebhookServer::bind(config).await.expect("bind webhook server");
        let (addr, metrics_addr, metrics) = (server.local_addr(), server.metrics_addr(), server.metrics());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        let s = Self {
            addr,
            metrics_addr,
            ca_pem,
            metrics,
            dir,
            shutdown: Some(tx),
            task: Some(task),
        };
        // Ready means the accept loop runs (readiness is set right before it starts).
        let probe = plain_client();
        let url = format!("http://{}/readyz", s.metrics_addr);
        poll_until("server ready", Duration::from_secs(10), || async {
            let r = probe.get(&url).send().await.ok()?;
            (r.status() == reqwest::StatusCode::OK).then_some(())
        })
        .await;
        s
    }

    /// `https://<service name>:<port><path>` (resolved to the loopback address by the clients).
    pub fn url(&self, path: &str) -> String {
        format!("https://{SERVICE_NAME}:{}{path}", self.addr.port())
    }

    /// `http://<metrics addr><path>`.
    pub fn metrics_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.metrics_addr)
    }

    /// An HTTP/1.1 client verifying our CA, like kube-apiserver.
    pub fn client(&self) -> reqwest::Client {
        client_builder(&self.ca_pem, self.addr)
            .http1_only()
            .build()
            .expect("client")
    }

    /// A client offering h2 and http/1.1 by ALPN.
    pub fn h2_client(&self) -> reqwest::Client {
        client_builder(&self.ca_pem, self.addr).build().expect("client")
    }

    /// POSTs a JSON body to `path`; returns the status and the body as JSON.
    pub async fn post_json(&self, client: &reqwest::Client, path: &str, body: &Value) -> (u16, Value) {
        let body = serde_json::to_vec(body).expect("serialize");
        self.post_bytes(client, path, "application/json", body).await
    }

    /// POSTs raw bytes; returns the status and the body parsed as JSON (`Null` when it is not).
    pub async fn post_bytes(
        &self,
        client: &reqwest::Client,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let resp = bounded(
            "POST",
            client
                .post(self.url(path))
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body)
                .send(),
        )
        .await
        .expect("request sent");
        let status = resp.status().as_u16();
        let bytes = bounded("response body", resp.bytes()).await.expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// Sends an AdmissionReview to `/validate` or `/mutate`, asserts HTTP 200, returns the review.
    pub async fn review(&self, client: &reqwest::Client, path: &str, review: &Value) -> Value {
        let (status, body) = self.post_json(client, path, review).await;
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    /// The metrics text, scraped over HTTP.
    pub async fn scrape(&self) -> String {
        let resp = bounded("scrape", plain_client().get(self.metrics_url("/metrics")).send())
            .await
            .expect("scrape");
        assert_eq!(resp.status(), 200);
        bounded("scrape body", resp.text()).await.expect("metrics text")
    }

    /// Starts the graceful shutdown (idempotent).
    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Shuts down and waits for `run` to return.
    pub async fn stop(mut self) {
        self.trigger_shutdown();
        if let Some(task) = self.task.take() {
            bounded("server stop", task).await.expect("server task");
        }
    }

    /// Waits for `run` to return (after [`Self::trigger_shutdown`]).
    pub async fn join(&mut self) {
        if let Some(task) = self.task.take() {
            bounded("server stop", task).await.expect("server task");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.trigger_shutdown();
    }
}

/// A TLS client trusting only `ca_pem`, resolving the Service name to `addr`.
pub fn client_builder(ca_pem: &[u8], addr: SocketAddr) -> reqwest::ClientBuilder {
    install_provider();
    let ca = reqwest::Certificate::from_pem(ca_pem).expect("CA PEM");
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .resolve(SERVICE_NAME, addr)
        .no_proxy()
        .timeout(STEP_TIMEOUT)
}

/// A plain-HTTP client for the metrics listener.
pub fn plain_client() -> reqwest::Client {
    install_provider();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(STEP_TIMEOUT)
        .build()
        .expect("client")
}

/// `tests/fixtures/<sub>/<name>`.
pub fn fixture_path(sub: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(sub)
        .join(name)
}

/// The AdmissionReview in `tests/fixtures/admission/<case>.json`.
pub fn admission_fixture(case: &str) -> Value {
    let path = fixture_path("admission", &format!("{case}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The decoded RFC 6902 patch of a response, when it has one.
pub fn decode_patch(response: &Value) -> Option<json_patch::Patch> {
    let b64 = response.get("patch")?.as_str().expect("patch is a base64 string");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("patch is valid base64");
    Some(serde_json::from_slice(&bytes).expect("patch is an RFC 6902 array"))
}

/// Applies a response's patch to `object` (unchanged when there is no patch).
pub fn apply_patch(object: &Value, response: &Value) -> Value {
    let mut doc = object.clone();
    if let Some(patch) = decode_patch(response) {
        json_patch::patch(&mut doc, &patch).expect("patch applies to the request object");
    }
    doc
}

/// The value of a counter/gauge line `<series> <value>` in a metrics text (0 when absent).
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}
