//! The HTTPS accept loop: TLS, HTTP/1.1 + HTTP/2, limits, graceful shutdown.
//!
//! Our own small loop (tokio-rustls + hyper-util) rather than a server crate, because the
//! webhook sits in the write path of every BareMetalHost and must bound what a client can
//! hold: a connection cap, a TLS handshake timeout, an HTTP/1 header read timeout, an idle
//! timeout, and a drain on shutdown that lets in-flight requests finish.
//!
//! - The protocol is chosen by ALPN (`h2`, else HTTP/1.1), not by sniffing the first bytes:
//!   hyper-util's auto detection waits for 24 bytes with no timeout, so a client that
//!   finished TLS and sent nothing (or `P`) would hold a connection forever.
//! - HTTP/1: hyper's header read timeout runs from the moment it waits for a request, so it
//!   also closes keep-alive connections idle that long.
//! - Any connection with no request in flight for `idle_timeout` is closed gracefully
//!   (HTTP/2 `GOAWAY`), so idle HTTP/2 clients cannot hold connection slots.
//! - Shutdown: stop accepting, then on HTTP/1 answer each connection's next request with
//!   `Connection: close` and close connections idle for [`DRAIN_IDLE_GRACE`]; HTTP/2 gets
//!   `GOAWAY`. Closing a busy keep-alive connection between two requests would lose a
//!   request the client had already written; this way a client sees either a complete
//!   response or a connection closed before it wrote anything.

use crate::{
    admission::http::{AppState, metrics_router, router},
    metrics::Metrics,
    rules::Policy,
    tls::{self, CertFiles, CertStore},
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use std::{
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
    time::Instant,
};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listen address could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The serving certificate could not be loaded or generated.
    #[error(transparent)]
    Tls(#[from] tls::Error),
}

/// Where the serving certificate comes from.
#[derive(Clone, Debug)]
pub enum CertSource {
    /// PEM files, polled for changes.
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
    /// Generate a CA and a `localhost` certificate into this directory (`--dev`).
    Dev(PathBuf),
}

/// Connection limits (see the module docs for why each exists).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Open connections; further ones are closed at accept.
    pub max_connections: usize,
    /// Time allowed for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time allowed for an HTTP/1 request's headers, counted from when the server starts
    /// waiting for the request (so also the HTTP/1 keep-alive idle timeout).
    pub header_read_timeout: Duration,
    /// A connection (HTTP/1 or HTTP/2) with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Time allowed after shutdown starts for in-flight requests.
    pub drain_timeout: Duration,
    /// Time allowed to receive a request body once its headers arrived.
    pub body_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(25),
            body_timeout: crate::admission::http::BODY_TIMEOUT,
        }
    }
}

/// Everything `serve` needs; tests build it directly.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// HTTPS address.
    pub listen: SocketAddr,
    /// Plain-HTTP metrics address.
    pub metrics_listen: SocketAddr,
    /// Certificate source.
    pub certs: CertSource,
    /// Certificate poll interval.
    pub reload_interval: Duration,
    /// Rule flags.
    pub policy: Policy,
    /// Connection limits.
    pub limits: Limits,
}

/// A bound, not yet running webhook server.
pub struct WebhookServer {
    https: TcpListener,
    metrics_listener: TcpListener,
    files: Option<CertFiles>,
    store: Arc<CertStore>,
    state: Arc<AppState>,
    config: ServeConfig,
    /// The generated CA, with `--dev`.
    pub dev_ca: Option<PathBuf>,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

impl WebhookServer {
    /// Loads (or generates) the certificate and binds both listeners.
    pub async fn bind(config: ServeConfig) -> Result<Self, Error> {
        let (cert, key, dev_ca) = match &config.certs {
            CertSource::Files { cert, key } => (cert.clone(), key.clone(), None),
            CertSource::Dev(dir) => {
                let g = tls::generate(dir, &["localhost".into(), "127.0.0.1".into()])?;
                (g.cert, g.key, Some(g.ca))
            }
        };
        let (files, pair) = CertFiles::load(cert, key)?;
        let metrics = Arc::new(Metrics::default());
        metrics.cert_expiry.set(pair.not_after as f64);
        Ok(Self {
            https: bind(config.listen).await?,
            metrics_listener: bind(config.metrics_listen).await?,
            files: Some(files),
            store: CertStore::new(&pair),
            state: AppState::new(config.policy.clone(), metrics, config.limits.body_timeout),
            config,
            dev_ca,
        })
    }

    /// The bound HTTPS address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.https.local_addr().unwrap_or(self.config.listen)
    }

    /// The bound metrics address.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_listener
            .local_addr()
            .unwrap_or(self.config.metrics_listen)
    }

    /// The metrics this server records.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.state.metrics.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting, reports not-ready, and
    /// lets in-flight requests finish (up to `drain_timeout`).
    pub async fn run(mut self, shutdown: impl Future<Output = ()> + Send) {
        let watcher = self.files.take().map(|files| {
            tokio::spawn(tls::watch(
                files,
                self.store.clone(),
                self.state.metrics.clone(),
                self.config.reload_interval,
            ))
        });
        let listen = self.local_addr();
        let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
        let metrics_app = metrics_router(self.state.clone());
        let metrics_listener = self.metrics_listener;
        let metrics_task = tokio::spawn(async move {
            let _ = axum::serve(metrics_listener, metrics_app)
                .with_graceful_shutdown(async {
                    let _ = metrics_stopped.await;
                })
                .await;
        });
        self.state.ready.store(true, Ordering::Relaxed);
        tracing::info!(%listen, "webhook serving");
        serve_router(
            self.https,
            tls::server_config(self.store.clone()),
            router(self.state.clone()),
            &self.config.limits,
            async {
                shutdown.await;
                self.state.ready.store(false, Ordering::Relaxed);
            },
        )
        .await;
        if let Some(w) = watcher {
            w.abort();
        }
        let _ = stop_metrics.send(());
        let _ = metrics_task.await;
        tracing::info!("webhook stopped");
    }
}

/// While draining, an HTTP/1 connection with no request for this long is closed.
///
/// Long enough that a client in the middle of a request/response loop always gets its next
/// request answered (with `Connection: close`); short enough not to hold the drain.
pub const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(1);

/// Where the server is in its life; connection tasks watch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Shutdown started: finish in-flight requests, keep nothing alive.
    Draining,
    /// The drain timed out: drop every connection.
    Closing,
}

/// Per-connection request accounting, for the idle timeout.
struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `start` when the last request started or ended.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once no request has been in flight for `threshold`.
    async fn idle(&self, threshold: Duration) {
        loop {
            let deadline =
                self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + threshold;
            if self.in_flight.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(threshold).await;
            } else if Instant::now() >= deadline {
                return;
            } else {
                tokio::time::sleep_until(deadline).await;
            }
        }
    }
}

/// Counts one request in flight while alive.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.touch();
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The hyper service of one connection: counts requests in flight and, on HTTP/1 while
/// draining, asks the client to close the connection after the response.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    draining: Arc<AtomicBool>,
    http1: bool,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Tracked<S>
where
    S: hyper::service::Service<hyper::Request<hyper::body::Incoming>, Response = hyper::Response<B>>,
    S::Future: Send + 'static,
{
    type Response = hyper::Response<B>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn call(&self, req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        let guard = InFlight::new(&self.activity);
        let response = self.inner.call(req);
        let (draining, http1) = (self.draining.clone(), self.http1);
        Box::pin(async move {
            let mut response = response.await;
            if let Ok(r) = &mut response
                && http1
                && draining.load(Ordering::Relaxed)
            {
                r.headers_mut().insert(
                    hyper::header::CONNECTION,
                    hyper::header::HeaderValue::from_static("close"),
                );
            }
            drop(guard);
            response
        })
    }
}

/// Serves `app` over TLS on `listener` until `shutdown`, then drains.
///
/// Public so the load benchmark's ceiling server runs on exactly the same stack.
pub async fn serve_router(
    listener: TcpListener,
    tls_config: Arc<rustls::ServerConfig>,
    app: axum::Router,
    limits: &Limits,
    shutdown: impl Future<Output = ()> + Send,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls_config);
    let (phase_tx, phase_rx) = watch::channel(Phase::Serving);
    let draining = Arc::new(AtomicBool::new(false));
    let max = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let permits = Arc::new(Semaphore::new(max as usize));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256);
    let h1_builder = builder.clone().http1_only();
    let h2_builder = builder.http2_only();
    let service = TowerToHyperService::new(app);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = limits.max_connections, "connection limit reached; closing new connection");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let (h1_builder, h2_builder) = (h1_builder.clone(), h2_builder.clone());
        let (service, draining, mut phase) = (service.clone(), draining.clone(), phase_rx.clone());
        let (handshake_timeout, idle_timeout) = (limits.handshake_timeout, limits.idle_timeout);
        tokio::spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => return tracing::debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            let http1 = stream.get_ref().1.alpn_protocol() != Some(b"h2");
            let activity = Activity::new();
            let service = Tracked {
                inner: service,
                activity: activity.clone(),
                draining,
                http1,
            };
            let builder = if http1 { &h1_builder } else { &h2_builder };
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let (mut drain, mut closing) = (*phase.borrow() != Phase::Serving, false);
            // Set when we closed an idle connection: HTTP/2 still waiting for the client's
            // preface ignores a graceful shutdown, so it is dropped after a grace period.
            let mut force_at: Option<Instant> = None;
            loop {
                let idle_after = if drain {
                    DRAIN_IDLE_GRACE.min(idle_timeout)
                } else {
                    idle_timeout
                };
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(error) = result {
                            tracing::debug!(%peer, %error, "connection ended with an error");
                        }
                        break;
                    }
                    changed = phase.changed() => {
                        if changed.is_err() || *phase.borrow() == Phase::Closing {
                            return tracing::debug!(%peer, "drain timed out: connection dropped");
                        }
                        drain = true;
                        if !http1 && !closing {
                            conn.as_mut().graceful_shutdown();
                            closing = true;
                        }
                    }
                    () = activity.idle(idle_after), if !closing => {
                        tracing::debug!(%peer, idle = ?idle_after, "closing idle connection");
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                        force_at = Some(Instant::now() + DRAIN_IDLE_GRACE);
                    }
                    () = tokio::time::sleep_until(force_at.unwrap_or_else(Instant::now)), if force_at.is_some() => {
                        return tracing::debug!(%peer, "idle connection did not close gracefully: dropped");
                    }
                }
            }
        });
    }
    drop(listener);
    draining.store(true, Ordering::Relaxed);
    let _ = phase_tx.send(Phase::Draining);
    // Every connection task holds a permit: all of them back means all connections ended.
    if tokio::time::timeout(limits.drain_timeout, permits.acquire_many(max))
        .await
        .is_err()
    {
        tracing::warn!("drain timeout: closing remaining connections");
        let _ = phase_tx.send(Phase::Closing);
    }
}
