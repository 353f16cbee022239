//! Serving certificates: loading, hot reload that fails safe, and generation (`--dev`, `certs`).
//!
//! One rustls `ServerConfig` lives for the whole process; its certificate resolver reads the
//! current pair from a [`CertStore`]. Reload swaps only the pair, and only when the new
//! certificate and key parse *and* match; otherwise the old pair keeps serving. Files are
//! polled by path (not watched by inode), so a Kubernetes Secret volume's `..data` symlink
//! swap is seen like any other change.

use crate::metrics::Metrics;
use rustls::{
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use sha2::{Digest, Sha256};
use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

/// Why a certificate pair could not be used or made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("no PEM certificate found")]
    NoCertificate,
    /// The key file holds no PEM private key.
    #[error("no PEM private key found")]
    NoKey,
    /// The key file holds more than one private key: which one is meant is ambiguous.
    #[error("more than one private key found")]
    SeveralKeys,
    /// PEM or X.509 could not be parsed.
    #[error("malformed certificate or key: {0}")]
    Malformed(String),
    /// The key is unusable or does not match the certificate.
    #[error("unusable key pair: {0}")]
    Pair(#[from] rustls::Error),
    /// Certificate generation failed.
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A loaded certificate chain + key, ready to serve.
#[derive(Clone, Debug)]
pub struct ServingPair {
    /// What rustls serves.
    pub key: Arc<CertifiedKey>,
    /// The leaf's notAfter (Unix seconds).
    pub not_after: i64,
}

fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// Parses a PEM chain and a PEM key and checks that they belong together.
pub fn parse_pair(cert_pem: &[u8], key_pem: &[u8]) -> Result<ServingPair, Error> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Malformed(e.to_string()))?;
    let leaf = chain.first().ok_or(Error::NoCertificate)?;
    let mut keys = PrivateKeyDer::pem_slice_iter(key_pem);
    let key = match keys.next() {
        None => return Err(Error::NoKey),
        Some(k) => k.map_err(|e| Error::Malformed(e.to_string()))?,
    };
    if keys.next().is_some() {
        return Err(Error::SeveralKeys);
    }
    let (_, parsed) =
        x509_parser::parse_x509_certificate(leaf).map_err(|e| Error::Malformed(e.to_string()))?;
    let not_after = parsed.validity().not_after.timestamp();
    let key = CertifiedKey::from_der(chain, key, &provider())?;
    Ok(ServingPair {
        key: Arc::new(key),
        not_after,
    })
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

/// The current serving pair, shared by every TLS handshake.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    /// A store serving `pair`.
    pub fn new(pair: &ServingPair) -> Arc<Self> {
        Arc::new(Self {
            current: RwLock::new(pair.key.clone()),
        })
    }

    /// Swaps in a new pair; new handshakes get it, open connections keep theirs.
    pub fn replace(&self, pair: &ServingPair) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = pair.key.clone();
    }

    /// The pair being served.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The server's TLS config: HTTP/2 and HTTP/1.1 by ALPN, certificates from `store`.
pub fn server_config(store: Arc<CertStore>) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // No session resumption: a resumed session skips the certificate, so a client could
    // keep trusting a rotated-out pair. kube-apiserver never resumes, so nothing is lost.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Arc::new(config)
}

/// Certificate and key files that are polled for changes.
#[derive(Debug)]
pub struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    /// Digest of the last contents we acted on (loaded or rejected), so a broken pair is
    /// reported once, not on every poll.
    seen: [u8; 32],
}

impl CertFiles {
    /// Loads the pair at startup (an error here is fatal: there is nothing to serve yet).
    pub fn load(cert: PathBuf, key: PathBuf) -> Result<(Self, ServingPair), Error> {
        let (c, k) = (read(&cert)?, read(&key)?);
        let pair = parse_pair(&c, &k)?;
        Ok((
            Self {
                cert,
                key,
                seen: digest(&c, &k),
            },
            pair,
        ))
    }

    /// Reloads when the files changed: `Ok(Some)` for a new pair, `Ok(None)` when nothing
    /// changed, `Err` when the new contents do not load (the caller keeps the old pair).
    pub fn poll(&mut self) -> Result<Option<ServingPair>, Error> {
        let (c, k) = (read(&self.cert)?, read(&self.key)?);
        let d = digest(&c, &k);
        if d == self.seen {
            return Ok(None);
        }
        self.seen = d;
        parse_pair(&c, &k).map(Some)
    }
}

fn digest(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((cert.len() as u64).to_be_bytes());
    h.update(cert);
    h.update(key);
    h.finalize().into()
}

/// Polls `files` every `interval` and swaps good pairs into `store`, until the task is
/// dropped. Never exits on a bad pair: it is logged and counted, and the old one serves.
pub async fn watch(mut files: CertFiles, store: Arc<CertStore>, metrics: Arc<Metrics>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match files.poll() {
            Ok(None) => {}
            Ok(Some(pair)) => {
                store.replace(&pair);
                metrics.tls_reload(true);
                metrics.cert_expiry.set(pair.not_after as f64);
                tracing::info!(cert = %files.cert.display(), not_after = pair.not_after, "serving certificate reloaded");
            }
            Err(error) => {
                metrics.tls_reload(false);
                tracing::warn!(cert = %files.cert.display(), %error, "certificate reload failed; keeping the current one");
            }
        }
    }
}

/// Paths of a generated CA and serving pair.
#[derive(Clone, Debug)]
pub struct GeneratedCerts {
    /// The CA certificate to trust (`caBundle`, `curl --cacert`).
    pub ca: PathBuf,
    /// The serving certificate.
    pub cert: PathBuf,
    /// The serving key (mode 0600).
    pub key: PathBuf,
}

/// Generates a CA and a serving certificate for `dns_names` (IP addresses become IP SANs)
/// into `dir` as `ca.crt`, `tls.crt`, `tls.key`.
///
/// For dev clusters and `serve --dev`; production uses cert-manager. The CA key is not
/// kept: nothing else is ever signed with it.
pub fn generate(dir: &Path, dns_names: &[String]) -> Result<GeneratedCerts, Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    let now = time::OffsetDateTime::now_utc();
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, "bootvolume webhook CA");
    ca.not_before = now - time::Duration::hours(1);
    ca.not_after = now + time::Duration::days(3650);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;

    let mut leaf = CertificateParams::new(dns_names.to_vec())?;
    leaf.distinguished_name.push(
        DnType::CommonName,
        dns_names.first().map_or("bootvolume", String::as_str),
    );
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = now - time::Duration::hours(1);
    leaf.not_after = now + time::Duration::days(365);
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf.signed_by(&leaf_key, &Issuer::new(ca, ca_key))?;

    std::fs::create_dir_all(dir).map_err(|source| Error::Write {
        path: dir.to_owned(),
        source,
    })?;
    let out = GeneratedCerts {
        ca: dir.join("ca.crt"),
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    };
    write(&out.ca, ca_cert.pem().as_bytes(), 0o644)?;
    write(&out.cert, leaf_cert.pem().as_bytes(), 0o644)?;
    write(&out.key, leaf_key.serialize_pem().as_bytes(), 0o600)?;
    Ok(out)
}

/// Writes through a temporary file and a rename, so a watcher never reads half a file.
fn write(path: &Path, data: &[u8], mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).map_err(err)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// The DNS names a Service's serving certificate needs.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_owned(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pair_loads_and_reload_fails_safe() {
        let dir = tempfile::tempdir().expect("tempdir");
        let g = generate(dir.path(), &["localhost".into(), "127.0.0.1".into()]).expect("generate");
        let (mut files, pair) = CertFiles::load(g.cert.clone(), g.key.clone()).expect("load");
        assert!(pair.not_after > time::OffsetDateTime::now_utc().unix_timestamp());
        assert!(
            files.poll().expect("poll").is_none(),
            "unchanged files are not reloaded"
        );

        // A key that does not match the certificate is rejected, once.
        let other = tempfile::tempdir().expect("tempdir");
        let g2 = generate(other.path(), &["localhost".into()]).expect("generate");
        std::fs::copy(&g2.key, &g.key).expect("copy");
        assert!(matches!(files.poll(), Err(Error::Pair(_))));
        assert!(
            files.poll().expect("poll").is_none(),
            "a broken pair is reported once"
        );

        // The matching certificate arrives: the new pair loads.
        std::fs::copy(&g2.cert, &g.cert).expect("copy");
        assert!(files.poll().expect("poll").is_some());
    }

    #[test]
    fn rejects_bad_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let g = generate(dir.path(), &["localhost".into()]).expect("generate");
        let cert = std::fs::read(&g.cert).expect("read");
        let key = std::fs::read(&g.key).expect("read");
        assert!(matches!(parse_pair(b"", &key), Err(Error::NoCertificate)));
        assert!(matches!(parse_pair(&cert, b"garbage"), Err(Error::NoKey)));
        let two_keys = [key.as_slice(), key.as_slice()].concat();
        assert!(matches!(parse_pair(&cert, &two_keys), Err(Error::SeveralKeys)));
        assert!(parse_pair(&cert, &key).is_ok());
    }
}
