//! The HTTPS accept loop: TLS, HTTP/1.1 + HTTP/2, limits, graceful shutdown.
//!
//! Our own small loop (tokio-rustls + hyper-util) rather than a server crate, because the
//! webhook sits in the write path of every BareMetalHost and must bound what a client can
//! hold: a connection cap, a TLS handshake timeout, an HTTP/1 header read timeout, and a
//! drain on shutdown that lets in-flight requests finish.

use crate::{
    admission::http::{AppState, metrics_router, router},
    metrics::Metrics,
    rules::Policy,
    tls::{self, CertFiles, CertStore},
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use std::{
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};
use tokio::{net::TcpListener, sync::Semaphore};

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
    /// Time allowed for an HTTP/1 request's headers.
    pub header_read_timeout: Duration,
    /// Time allowed after shutdown starts for in-flight requests.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(25),
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
        crate::schema::warm_up();
        let metrics = Arc::new(Metrics::default());
        metrics.cert_expiry.set(pair.not_after as f64);
        Ok(Self {
            https: bind(config.listen).await?,
            metrics_listener: bind(config.metrics_listen).await?,
            files: Some(files),
            store: CertStore::new(&pair),
            state: AppState::new(config.policy.clone(), metrics),
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
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256);
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
        let (acceptor, builder, service) = (acceptor.clone(), builder.clone(), service.clone());
        let handshake_timeout = limits.handshake_timeout;
        let watch = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => return tracing::debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            if let Err(error) = watch.watch(conn).await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout: closing remaining connections");
    }
}
