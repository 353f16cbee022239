//! Typed Ironic v1 client: just the endpoints boot from volume needs.
//!
//! Every request carries the microversion header ([`MICROVERSION`]): without it Ironic speaks
//! 1.1, where `/v1/volume` does not exist, `storage_interface` is invisible and `ns~name`
//! node names are rejected. Nodes are looked up once by name or UUID; everything after that
//! uses the UUID, because Ironic's nested `/v1/nodes/{name}/volume/*` only accepts UUIDs and
//! `node_uuid` in bodies must be a UUID. Per-node lists are never paginated (`limit` is not
//! sent): Ironic's `next` link drops the `node=` filter. Fleet-wide lists ([`list`]) are.
//! At most [`ClientConfig::max_in_flight`] requests are in flight at once ([`limit`]).

mod error;
mod limit;
pub mod list;
mod model;

pub use error::Error;
pub use limit::DEFAULT_MAX_IN_FLIGHT;
pub use model::{Connector, NODE_FIELDS, NewConnector, NewTarget, Node, PatchOp, Target};

use crate::api::Sensitive;
use reqwest::{Method, StatusCode};
use serde::{Serialize, de::DeserializeOwned};
use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

/// API microversion sent on every request: 1.89, metal3 BMO's baseline (>= 1.33 is needed
/// for `storage_interface`, >= 1.32 for the volume API, >= 1.10 for `~` in node names).
pub const MICROVERSION: &str = "1.89";
/// Header carrying the microversion.
pub const VERSION_HEADER: &str = "X-OpenStack-Ironic-API-Version";

/// Called after every request with the HTTP method and the status code (or `error` when no
/// response came back): the reconciler counts these in `bootvolume_ironic_requests_total`.
pub type RequestObserver = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// How to reach Ironic.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Base URL, e.g. `http://ironic:6385` (a trailing `/v1` is accepted, as in metal3's
    /// `IRONIC_ENDPOINT`).
    pub url: String,
    /// HTTP basic credentials (Ironic's `http_basic` auth strategy, as metal3 deploys it).
    pub basic_auth: Option<(String, Sensitive)>,
    /// PEM CA bundle that signs Ironic's certificate; when set, it is the only trust root.
    pub ca_pem: Option<Vec<u8>>,
    /// Bound on each request (connect + response), so an unreachable Ironic fails in time.
    pub timeout: Duration,
    /// Requests in flight at once, shared by all clones of the client (at least 1).
    pub max_in_flight: usize,
}

impl ClientConfig {
    /// A config with no auth and no CA, for `noauth` Ironic over HTTP.
    pub fn new(url: impl Into<String>, timeout: Duration) -> Self {
        Self {
            url: url.into(),
            basic_auth: None,
            ca_pem: None,
            timeout,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }

    /// Reads metal3-style credential files (one value per file, trailing newline ignored)
    /// and the CA bundle. Both credential files or neither must be given.
    pub fn with_files(
        mut self,
        username_file: Option<&Path>,
        password_file: Option<&Path>,
        ca_file: Option<&Path>,
    ) -> Result<Self, Error> {
        self.basic_auth = match (username_file, password_file) {
            (Some(u), Some(p)) => Some((read_trimmed(u)?, Sensitive::new(read_trimmed(p)?))),
            (None, None) => None,
            _ => {
                return Err(Error::Config {
                    message: "--ironic-username-file and --ironic-password-file must be given together"
                        .into(),
                });
            }
        };
        if let Some(ca) = ca_file {
            self.ca_pem = Some(std::fs::read(ca).map_err(|e| file_error(ca, &e))?);
        }
        Ok(self)
    }
}

fn file_error(path: &Path, e: &std::io::Error) -> Error {
    Error::Config {
        message: format!("cannot read {}: {e}", path.display()),
    }
}

fn read_trimmed(path: &Path) -> Result<String, Error> {
    let s = std::fs::read_to_string(path).map_err(|e| file_error(path, &e))?;
    Ok(s.trim_end_matches(['\r', '\n']).to_owned())
}

/// Requests made by one client, by method: tests and `ironic-apply` use it to prove that an
/// in-sync pass makes no write call.
#[derive(Debug, Default)]
pub struct CallCounts {
    get: AtomicU64,
    post: AtomicU64,
    patch: AtomicU64,
    put: AtomicU64,
    delete: AtomicU64,
}

/// A snapshot of [`CallCounts`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Calls {
    /// GET requests.
    pub get: u64,
    /// POST requests.
    pub post: u64,
    /// PATCH requests.
    pub patch: u64,
    /// PUT requests (provision, power and boot device actions).
    pub put: u64,
    /// DELETE requests.
    pub delete: u64,
}

impl Calls {
    /// Requests that may change Ironic (POST, PATCH, PUT, DELETE).
    pub fn writes(&self) -> u64 {
        self.post + self.patch + self.put + self.delete
    }
    /// All requests.
    pub fn total(&self) -> u64 {
        self.get + self.writes()
    }
    /// Calls made since `earlier`.
    pub fn since(&self, earlier: Calls) -> Calls {
        Calls {
            get: self.get - earlier.get,
            post: self.post - earlier.post,
            patch: self.patch - earlier.patch,
            put: self.put - earlier.put,
            delete: self.delete - earlier.delete,
        }
    }
}

impl CallCounts {
    fn record(&self, method: &Method) {
        let counter = match *method {
            Method::GET => &self.get,
            Method::POST => &self.post,
            Method::PATCH => &self.patch,
            Method::PUT => &self.put,
            _ => &self.delete,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Calls {
        Calls {
            get: self.get.load(Ordering::Relaxed),
            post: self.post.load(Ordering::Relaxed),
            patch: self.patch.load(Ordering::Relaxed),
            put: self.put.load(Ordering::Relaxed),
            delete: self.delete.load(Ordering::Relaxed),
        }
    }
}

/// An Ironic v1 API client. Cheap to clone (shares the connection pool and counters).
#[derive(Clone)]
pub struct IronicClient {
    http: reqwest::Client,
    base: String,
    auth: Option<(String, Sensitive)>,
    calls: Arc<CallCounts>,
    observer: Option<RequestObserver>,
    limiter: Arc<limit::Limiter>,
    timeout: Duration,
}

impl std::fmt::Debug for IronicClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IronicClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl IronicClient {
    /// Builds a client. Installs rustls' ring provider as the process default when none is
    /// set yet (this crate is built ring-only; reqwest would panic without a provider).
    pub fn new(config: ClientConfig) -> Result<Self, Error> {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let base = normalize_base(&config.url)?;
        // An https endpoint stays https: a redirect to http:// (a downgrade that would send
        // credentials and CHAP secrets in clear) is an error, never followed.
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .https_only(base.starts_with("https://"));
        if let Some(pem) = &config.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| Error::Config {
                message: format!("CA bundle: {e}"),
            })?;
            if certs.is_empty() {
                return Err(Error::Config {
                    message: "CA bundle holds no certificate".into(),
                });
            }
            builder = builder.tls_certs_only(certs);
        }
        let http = builder.build().map_err(|e| Error::Config {
            message: format!("HTTP client: {e}"),
        })?;
        Ok(Self {
            http,
            base,
            auth: config.basic_auth,
            calls: Arc::default(),
            observer: None,
            limiter: limit::Limiter::new(config.max_in_flight),
            timeout: config.timeout,
        })
    }

    /// The cap on requests in flight ([`ClientConfig::max_in_flight`]).
    pub fn max_in_flight(&self) -> usize {
        self.limiter.max()
    }

    /// Reports every request to `observer` (metrics).
    pub fn with_observer(mut self, observer: RequestObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The base URL requests go to (without `/v1`).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Requests made so far by this client and its clones.
    pub fn calls(&self) -> Calls {
        self.calls.snapshot()
    }

    /// `GET /v1/nodes/{ident}` with [`NODE_FIELDS`]; `ident` is a UUID or a logical name.
    pub async fn get_node(&self, ident: &str) -> Result<Node, Error> {
        let path = format!("/v1/nodes/{}?fields={NODE_FIELDS}", encode_segment(ident));
        self.send(Method::GET, &path, None::<&()>).await
    }

    /// `PATCH /v1/nodes/{uuid}`.
    pub async fn patch_node(&self, uuid: &str, ops: &[PatchOp]) -> Result<Node, Error> {
        self.send(
            Method::PATCH,
            &format!("/v1/nodes/{}", encode_segment(uuid)),
            Some(ops),
        )
        .await
    }

    /// `PUT /v1/nodes/{uuid}/states/provision` with `target` (`manage`, `adopt`, `provide`,
    /// `active`, `deleted`, ...). Ironic answers 202 and runs the transition in the background.
    pub async fn set_provision_state(&self, uuid: &str, target: &str) -> Result<(), Error> {
        let path = format!("/v1/nodes/{}/states/provision", encode_segment(uuid));
        self.send_with_body(Method::PUT, &path, &serde_json::json!({ "target": target }))
            .await
    }

    /// `PUT /v1/nodes/{uuid}/states/power` with `target` (`power on`, `power off`, `rebooting`).
    pub async fn set_power_state(&self, uuid: &str, target: &str) -> Result<(), Error> {
        let path = format!("/v1/nodes/{}/states/power", encode_segment(uuid));
        self.send_with_body(Method::PUT, &path, &serde_json::json!({ "target": target }))
            .await
    }

    /// `PUT /v1/nodes/{uuid}/management/boot_device`: adoption never sets one, and a host
    /// must keep network-booting to reach its iPXE script.
    pub async fn set_boot_device(&self, uuid: &str, device: &str, persistent: bool) -> Result<(), Error> {
        let path = format!("/v1/nodes/{}/management/boot_device", encode_segment(uuid));
        let body = serde_json::json!({ "boot_device": device, "persistent": persistent });
        self.send_with_body(Method::PUT, &path, &body).await
    }

    /// All volume connectors of a node, with `extra` and timestamps.
    pub async fn list_connectors(&self, node_uuid: &str) -> Result<Vec<Connector>, Error> {
        let path = format!(
            "/v1/volume/connectors?node={}&detail=true",
            encode_segment(node_uuid)
        );
        Ok(self
            .send::<model::ConnectorList>(Method::GET, &path, None::<&()>)
            .await?
            .connectors)
    }

    /// All volume targets of a node, with properties (password masked), `extra` and timestamps.
    pub async fn list_targets(&self, node_uuid: &str) -> Result<Vec<Target>, Error> {
        let path = format!(
            "/v1/volume/targets?node={}&detail=true",
            encode_segment(node_uuid)
        );
        Ok(self
            .send::<model::TargetList>(Method::GET, &path, None::<&()>)
            .await?
            .targets)
    }

    /// `POST /v1/volume/connectors`.
    pub async fn create_connector(&self, body: &NewConnector) -> Result<Connector, Error> {
        self.send(Method::POST, "/v1/volume/connectors", Some(body)).await
    }

    /// `PATCH /v1/volume/connectors/{uuid}` (only while the node is powered off).
    pub async fn patch_connector(&self, uuid: &str, ops: &[PatchOp]) -> Result<Connector, Error> {
        self.send(
            Method::PATCH,
            &format!("/v1/volume/connectors/{}", encode_segment(uuid)),
            Some(ops),
        )
        .await
    }

    /// `DELETE /v1/volume/connectors/{uuid}`.
    pub async fn delete_connector(&self, uuid: &str) -> Result<(), Error> {
        self.send_empty(
            Method::DELETE,
            &format!("/v1/volume/connectors/{}", encode_segment(uuid)),
        )
        .await
    }

    /// `POST /v1/volume/targets`.
    pub async fn create_target(&self, body: &NewTarget) -> Result<Target, Error> {
        self.send(Method::POST, "/v1/volume/targets", Some(body)).await
    }

    /// `PATCH /v1/volume/targets/{uuid}` (only while the node is powered off).
    pub async fn patch_target(&self, uuid: &str, ops: &[PatchOp]) -> Result<Target, Error> {
        self.send(
            Method::PATCH,
            &format!("/v1/volume/targets/{}", encode_segment(uuid)),
            Some(ops),
        )
        .await
    }

    /// `DELETE /v1/volume/targets/{uuid}`.
    pub async fn delete_target(&self, uuid: &str) -> Result<(), Error> {
        self.send_empty(
            Method::DELETE,
            &format!("/v1/volume/targets/{}", encode_segment(uuid)),
        )
        .await
    }

    /// A request with an optional JSON body whose response body is decoded as `T`.
    ///
    /// Public for test set-up (enrolling nodes, power and provision actions), which the
    /// reconciler itself never does.
    pub async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, Error> {
        let text = self.raw(method, path, body).await?;
        decode(path, &text)
    }

    /// A request whose successful response has no body we need (DELETE: 204, state PUT: 202).
    pub async fn send_empty(&self, method: Method, path: &str) -> Result<(), Error> {
        self.raw(method, path, None::<&()>).await.map(drop)
    }

    /// Like [`Self::send_empty`], with a JSON body.
    pub async fn send_with_body(
        &self,
        method: Method,
        path: &str,
        body: &(impl Serialize + ?Sized),
    ) -> Result<(), Error> {
        self.raw(method, path, Some(body)).await.map(drop)
    }

    async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<String, Error> {
        self.raw_within(method, path, body, None).await
    }

    /// [`Self::raw`] with its own deadline instead of the client's (`None`: the client's).
    async fn raw_within(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        timeout: Option<Duration>,
    ) -> Result<String, Error> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .header(VERSION_HEADER, MICROVERSION)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some((user, password)) = &self.auth {
            req = req.basic_auth(user, Some(password.expose()));
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        if let Some(timeout) = timeout {
            req = req.timeout(timeout);
        }
        let permit = self.limiter.acquire().await;
        self.calls.record(&method);
        let result = req.send().await;
        let code = match &result {
            Ok(resp) => resp.status().as_str().to_owned(),
            Err(_) => "error".to_owned(),
        };
        if let Some(observe) = &self.observer {
            observe(method.as_str(), &code);
        }
        tracing::debug!(%method, path, code, "ironic request");
        let resp = result.map_err(|e| self.transport(&e))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = resp.text().await.map_err(|e| self.transport(&e))?;
        let pause = self
            .limiter
            .pause_after(limit::classify(status.as_u16(), retry_after.as_deref()));
        if !pause.is_zero() {
            tracing::debug!(status = status.as_u16(), ?pause, "Ironic is busy; slowing down");
            tokio::time::sleep(pause).await;
        }
        drop(permit);
        if status.is_success() || status == StatusCode::NOT_MODIFIED {
            Ok(text)
        } else {
            Err(Error::from_response(status.as_u16(), &text))
        }
    }

    fn transport(&self, e: &reqwest::Error) -> Error {
        // The reqwest error chain names the cause (refused, timed out, certificate) but also
        // the full URL, which is ours and harmless; it never contains the body.
        let mut message = if e.is_timeout() {
            "timed out".to_owned()
        } else {
            e.to_string()
        };
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            message = format!("{message}: {s}");
            source = s.source();
        }
        Error::Transport {
            url: self.base.clone(),
            message,
        }
    }
}

/// How many times, and how long apart, a write is retried while Ironic holds the node lock
/// (a short task such as a power sync or BMO's own PATCH): sub-second, bounded to ~3 s.
const LOCK_RETRIES: u32 = 15;
const LOCK_RETRY_DELAY: Duration = Duration::from_millis(200);

/// Runs `call` again while it fails with "node locked" (409), at most [`LOCK_RETRIES`] times.
pub async fn retry_locked<T, F, Fut>(mut call: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Err(Error::Conflict { locked: true, .. }) if attempt < LOCK_RETRIES => {
                attempt += 1;
                tokio::time::sleep(LOCK_RETRY_DELAY).await;
            }
            other => return other,
        }
    }
}

/// Decodes the body Ironic answered for `path` (the path names the failure).
fn decode<T: DeserializeOwned>(path: &str, text: &str) -> Result<T, Error> {
    serde_json::from_str(text).map_err(|e| Error::Decode {
        message: format!("{path}: {e}"),
    })
}

/// `http://h:6385/v1/` -> `http://h:6385`.
fn normalize_base(url: &str) -> Result<String, Error> {
    let trimmed = url.trim().trim_end_matches('/');
    let trimmed = trimmed.strip_suffix("/v1").unwrap_or(trimmed);
    if !(trimmed.starts_with("http://") || trimmed.starts_with("https://"))
        || trimmed.len() <= "https://".len()
    {
        return Err(Error::Config {
            message: format!("Ironic URL must be http(s)://host[:port], got {url:?}"),
        });
    }
    Ok(trimmed.to_owned())
}

/// Percent-encodes a path segment or query value (node names come from user objects).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_accepts_metal3_endpoint_forms() {
        for (input, want) in [
            ("http://ironic:6385", "http://ironic:6385"),
            ("http://ironic:6385/", "http://ironic:6385"),
            ("https://ironic:6385/v1/", "https://ironic:6385"),
            ("https://ironic:6385/v1", "https://ironic:6385"),
        ] {
            assert_eq!(normalize_base(input).unwrap(), want);
        }
        for bad in ["ironic:6385", "ftp://x", "http://", ""] {
            assert!(matches!(normalize_base(bad), Err(Error::Config { .. })), "{bad}");
        }
    }

    #[test]
    fn node_names_are_encoded_but_metal3_names_pass_through() {
        assert_eq!(encode_segment("metal3~host-0.a_b"), "metal3~host-0.a_b");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn credential_files_must_come_in_pairs_and_are_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let (u, p) = (dir.path().join("username"), dir.path().join("password"));
        std::fs::write(&u, "admin\n").unwrap();
        std::fs::write(&p, "pa ss\n").unwrap();
        let cfg = ClientConfig::new("http://x", Duration::from_secs(1))
            .with_files(Some(&u), Some(&p), None)
            .unwrap();
        let (user, pass) = cfg.basic_auth.unwrap();
        assert_eq!((user.as_str(), pass.expose()), ("admin", "pa ss"));
        let half = ClientConfig::new("http://x", Duration::from_secs(1)).with_files(Some(&u), None, None);
        assert!(matches!(half, Err(Error::Config { .. })));
        let missing = ClientConfig::new("http://x", Duration::from_secs(1)).with_files(
            None,
            None,
            Some(&dir.path().join("nope")),
        );
        assert!(missing.unwrap_err().to_string().contains("nope"));
    }

    #[test]
    fn a_ca_file_without_certificates_is_rejected() {
        let mut cfg = ClientConfig::new("https://x", Duration::from_secs(1));
        cfg.ca_pem = Some(b"not a pem".to_vec());
        assert!(matches!(IronicClient::new(cfg), Err(Error::Config { .. })));
    }
}
