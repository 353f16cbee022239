//! A TLS-terminating proxy in front of the real (plain-HTTP) test Ironic, so the client's
//! TLS path is tested against the real API: a fresh CA per proxy, a `localhost`/`127.0.0.1`
//! certificate, HTTP/1.1 only (no ALPN: Ironic speaks HTTP/1.1), loopback only.
//!
//! Ironic could serve TLS itself (`[api] enable_ssl_api`), but that needs an Ironic of the
//! test's own (about 10 s to start); the proxy reuses the shared one and also counts what
//! arrives: TLS handshakes, failed handshakes, and anything that is not TLS at all (a
//! client falling back to plain HTTP would show up there).

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// What the proxy does with a request once TLS is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward the bytes to Ironic and back.
    Forward,
    /// Answer every request `307` to the same path on Ironic's plain-HTTP URL (a client
    /// must not follow a downgrade).
    RedirectToPlainHttp,
}

/// What reached the proxy.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections that started a TLS handshake.
    pub tls: AtomicU64,
    /// TLS handshakes that failed (e.g. the client did not trust the certificate).
    pub handshake_failures: AtomicU64,
    /// Connections whose first byte was not a TLS record (plain HTTP).
    pub plaintext: AtomicU64,
    /// Requests answered (forwarded or redirected) after a successful handshake.
    pub served: AtomicU64,
}

/// A running proxy; stops accepting on drop.
pub struct TlsProxy {
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    /// The CA that issued the proxy's certificate (`--ironic-ca-file`).
    pub ca_file: PathBuf,
    /// Counters.
    pub stats: Arc<Stats>,
    accept: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// `http://host:port[/...]` -> `host:port`.
fn authority(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

impl TlsProxy {
    /// Starts a proxy to `upstream` (Ironic's `http://` URL).
    pub async fn start(upstream: &str, mode: Mode) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = bootvolume::tls::generate(dir.path(), &["localhost".into(), "127.0.0.1".into()])
            .expect("generate certificates");
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&certs.cert)
            .expect("read certificate")
            .collect::<Result<_, _>>()
            .expect("parse certificate");
        let key = PrivateKeyDer::from_pem_file(&certs.key).expect("read key");
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let stats = Arc::new(Stats::default());
        let upstream_addr = authority(upstream);
        let upstream_url = upstream.trim_end_matches('/').to_owned();
        let accept = {
            let stats = stats.clone();
            tokio::spawn(async move {
                while let Ok((conn, _)) = listener.accept().await {
                    let (acceptor, stats) = (acceptor.clone(), stats.clone());
                    let (addr, url) = (upstream_addr.clone(), upstream_url.clone());
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(30),
                            serve(conn, acceptor, stats, mode, &addr, &url),
                        )
                        .await;
                    });
                }
            })
        };
        Self {
            url: format!("https://127.0.0.1:{port}"),
            ca_file: certs.ca,
            stats,
            accept,
            _dir: dir,
        }
    }

    /// A snapshot: (tls, handshake failures, plaintext, served).
    pub fn counts(&self) -> (u64, u64, u64, u64) {
        let s = &self.stats;
        (
            s.tls.load(Ordering::SeqCst),
            s.handshake_failures.load(Ordering::SeqCst),
            s.plaintext.load(Ordering::SeqCst),
            s.served.load(Ordering::SeqCst),
        )
    }
}

async fn serve(
    conn: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    stats: Arc<Stats>,
    mode: Mode,
    upstream_addr: &str,
    upstream_url: &str,
) {
    let mut first = [0u8; 1];
    match conn.peek(&mut first).await {
        Ok(1) if first[0] == 0x16 => stats.tls.fetch_add(1, Ordering::SeqCst),
        Ok(1) => {
            stats.plaintext.fetch_add(1, Ordering::SeqCst);
            return;
        }
        _ => return,
    };
    let Ok(mut tls) = acceptor.accept(conn).await else {
        stats.handshake_failures.fetch_add(1, Ordering::SeqCst);
        return;
    };
    match mode {
        Mode::Forward => {
            let Ok(mut upstream) = TcpStream::connect(upstream_addr).await else {
                return;
            };
            stats.served.fetch_add(1, Ordering::SeqCst);
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
        }
        Mode::RedirectToPlainHttp => {
            // Read the request head, answer 307 to the same path over plain HTTP, close.
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let path = String::from_utf8_lossy(&head)
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .to_owned();
            stats.served.fetch_add(1, Ordering::SeqCst);
            let response = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: {upstream_url}{path}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = tls.write_all(response.as_bytes()).await;
            let _ = tls.shutdown().await;
        }
    }
}
