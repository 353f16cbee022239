//! A fault-injecting HTTP/1.1 proxy for the reconciler's fault tests: it sits on
//! `127.0.0.1:<free port>` between the Ironic client and the real Ironic and, per [`Rule`],
//! delays, answers for Ironic (409 locked, 5xx), cuts or drops responses, or goes away for a
//! while. Everything else is forwarded unchanged.
//!
//! Every request is forwarded in its own task on a fresh upstream connection, so a write
//! reaches Ironic even when the client has already given up (as with a real server): that is
//! what makes "Ironic did the write, the client saw an error" reproducible. Every request is
//! logged ([`Seen`]) with the fault applied and the status Ironic answered, so tests can count
//! exactly which writes reached Ironic.

use bytes::Bytes;
use futures::SinkExt as _;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::{Method, Request, Response, body::Frame, header, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

type Body = BoxBody<Bytes, io::Error>;

/// What the proxy does to a matching request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Forward at once, hold Ironic's response this long (a slow Ironic: the write is done).
    SlowResponse(Duration),
    /// Hold the request this long, then forward it, even if the client has gone meanwhile.
    SlowRequest(Duration),
    /// Answer for Ironic without forwarding.
    Respond {
        /// HTTP status.
        status: u16,
        /// Response body (JSON unless it starts with `<`).
        body: String,
    },
    /// Close the connection without forwarding or answering.
    Close,
    /// Forward; send the status, the headers and half the body, then close the connection.
    CutResponse,
    /// Forward (Ironic makes the write), then close the connection without answering.
    DropResponse,
    /// Close every connection and refuse new ones (connect: refused) for this long, like an
    /// Ironic restarting; this request is not forwarded.
    Outage(Duration),
}

impl Fault {
    fn name(&self) -> &'static str {
        match self {
            Self::SlowResponse(_) => "slow-response",
            Self::SlowRequest(_) => "slow-request",
            Self::Respond { .. } => "respond",
            Self::Close => "close",
            Self::CutResponse => "cut-response",
            Self::DropResponse => "drop-response",
            Self::Outage(_) => "outage",
        }
    }
}

/// Ironic's 409 for a node locked by a running task, body as Ironic 39 sends it
/// (`error_message` holds a JSON document in a string; ironic-notes.md sections 1 and 7).
pub fn locked(node: &str) -> Fault {
    Fault::Respond {
        status: 409,
        body: ironic_error(
            "Client",
            &format!(
                "Node {node} is locked by host localhost, please retry after the current \
                 operation is completed."
            ),
        ),
    }
}

/// An Ironic-shaped 500 with `message` as its faultstring.
pub fn internal_error(message: &str) -> Fault {
    Fault::Respond {
        status: 500,
        body: ironic_error("Server", message),
    }
}

/// A 503 as a load balancer in front of a restarting Ironic sends it (HTML, not Ironic's shape).
pub fn unavailable() -> Fault {
    Fault::Respond {
        status: 503,
        body: "<html><body><h1>503 Service Unavailable</h1></body></html>".into(),
    }
}

/// `{"error_message": "{\"faultcode\": ..., \"faultstring\": ..., \"debuginfo\": null}"}`,
/// with Python's `json.dumps` separators like the real thing.
pub fn ironic_error(faultcode: &str, faultstring: &str) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap();
    let inner = format!(
        "{{\"faultcode\": {}, \"faultstring\": {}, \"debuginfo\": null}}",
        q(faultcode),
        q(faultstring)
    );
    format!("{{\"error_message\": {}}}", q(&inner))
}

/// Which requests a fault applies to, and how many times.
#[derive(Clone, Debug)]
pub struct Rule {
    methods: Vec<Method>,
    path_prefix: String,
    times: usize,
    fault: Fault,
}

impl Rule {
    /// `fault` on every request (narrow it with the builder methods), once.
    pub fn new(fault: Fault) -> Self {
        Self {
            methods: Vec::new(),
            path_prefix: String::new(),
            times: 1,
            fault,
        }
    }

    /// Only this method.
    pub fn method(mut self, m: &str) -> Self {
        self.methods = vec![m.parse().expect("method")];
        self
    }

    /// Only writes (POST, PATCH, DELETE).
    pub fn writes(mut self) -> Self {
        self.methods = vec![Method::POST, Method::PATCH, Method::DELETE];
        self
    }

    /// Only paths (without the query) starting with `prefix`.
    pub fn path(mut self, prefix: &str) -> Self {
        self.path_prefix = prefix.into();
        self
    }

    /// The first `n` matching requests (default 1).
    pub fn times(mut self, n: usize) -> Self {
        self.times = n;
        self
    }

    fn matches(&self, method: &Method, path: &str) -> bool {
        self.times > 0
            && (self.methods.is_empty() || self.methods.contains(method))
            && path.starts_with(&self.path_prefix)
    }
}

/// One request the proxy received.
#[derive(Clone, Debug)]
pub struct Seen {
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// The fault applied, if any.
    pub fault: Option<&'static str>,
    /// The status Ironic answered, when the request was forwarded and Ironic answered.
    pub upstream: Option<u16>,
}

struct Shared {
    addr: SocketAddr,
    upstream: SocketAddr,
    rules: Mutex<Vec<Rule>>,
    seen: Mutex<Vec<Seen>>,
    in_flight: AtomicUsize,
    /// Requests received and not yet answered, and the most there ever were at once.
    active: AtomicUsize,
    peak: AtomicUsize,
    /// Bumped to close every open client connection.
    epoch: watch::Sender<u64>,
    /// The accept loop; `None` while down (the port then refuses connections).
    accept: Mutex<Option<JoinHandle<()>>>,
}

/// The proxy. Stops (closes its port and connections) when dropped.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`, the URL to give the client under test.
    pub url: String,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (`http://127.0.0.1:PORT`, as the test Ironic's URL).
    pub async fn start(upstream: &str) -> Self {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("upstream must be http://IP:PORT");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            addr,
            upstream,
            rules: Mutex::default(),
            seen: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            epoch: watch::channel(0).0,
            accept: Mutex::default(),
        });
        shared.listen(listener);
        Self {
            url: format!("http://{addr}"),
            shared,
        }
    }

    /// Adds a rule (rules are tried in the order added; the first that matches applies).
    pub fn add(&self, rule: Rule) -> &Self {
        self.shared.rules.lock().unwrap().push(rule);
        self
    }

    /// Removes every rule: from now on, a plain proxy.
    pub fn clear(&self) {
        self.shared.rules.lock().unwrap().clear();
    }

    /// Closes every connection and refuses new ones until [`Self::up`].
    pub async fn down(&self) {
        self.shared.down().await;
    }

    /// Listens again on the same port.
    pub async fn up(&self) {
        self.shared.up().await;
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// The statuses Ironic answered to the `method path` requests that reached it.
    pub fn upstream_statuses(&self, method: &str, path: &str) -> Vec<u16> {
        self.seen()
            .iter()
            .filter(|s| s.method == method && s.path == path)
            .filter_map(|s| s.upstream)
            .collect()
    }

    /// The most requests the client had open at once (received, not yet answered): what a
    /// cap on in-flight requests must bound.
    pub fn peak_in_flight(&self) -> usize {
        self.shared.peak.load(Ordering::SeqCst)
    }

    /// Forgets the peak (and the log of requests), to measure a phase on its own.
    pub fn reset_counts(&self) {
        self.shared.peak.store(0, Ordering::SeqCst);
        self.shared.seen.lock().unwrap().clear();
    }

    /// Waits (bounded) until no forwarded request is still pending, e.g. a held one.
    pub async fn settle(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.shared.in_flight.load(Ordering::SeqCst) > 0 {
            assert!(Instant::now() < deadline, "proxy: forwards still pending");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(h) = self.shared.accept.lock().unwrap().take() {
            h.abort();
        }
        self.shared.epoch.send_modify(|e| *e += 1);
    }
}

impl Shared {
    fn listen(self: &Arc<Self>, listener: TcpListener) {
        let me = Arc::clone(self);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(Arc::clone(&me).serve(stream));
            }
        });
        *self.accept.lock().unwrap() = Some(task);
    }

    async fn down(&self) {
        let task = self.accept.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await; // the listener is closed once the task is gone
        }
        self.epoch.send_modify(|e| *e += 1);
    }

    async fn up(self: &Arc<Self>) {
        if self.accept.lock().unwrap().is_some() {
            return;
        }
        // tokio sets SO_REUSEADDR, so the port is free again at once.
        let listener = TcpListener::bind(self.addr)
            .await
            .unwrap_or_else(|e| panic!("proxy: cannot listen on {} again: {e}", self.addr));
        self.listen(listener);
    }

    async fn serve(self: Arc<Self>, stream: TcpStream) {
        let mut epoch = self.epoch.subscribe();
        let me = Arc::clone(&self);
        let conn = http1::Builder::new().serve_connection(
            TokioIo::new(stream),
            service_fn(move |req| Arc::clone(&me).handle(req)),
        );
        tokio::select! {
            _ = conn => {}
            _ = epoch.changed() => {} // dropping the connection closes the socket
        }
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<hyper::body::Incoming>,
    ) -> Result<Response<Body>, io::Error> {
        let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        let result = Arc::clone(&self).answer(req).await;
        self.active.fetch_sub(1, Ordering::SeqCst);
        result
    }

    async fn answer(
        self: Arc<Self>,
        req: Request<hyper::body::Incoming>,
    ) -> Result<Response<Body>, io::Error> {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let fault = {
            let mut rules = self.rules.lock().unwrap();
            rules.iter_mut().find(|r| r.matches(&method, &path)).map(|r| {
                r.times -= 1;
                r.fault.clone()
            })
        };
        let index = {
            let mut seen = self.seen.lock().unwrap();
            seen.push(Seen {
                method: method.to_string(),
                path: path.clone(),
                fault: fault.as_ref().map(Fault::name),
                upstream: None,
            });
            seen.len() - 1
        };
        let closed = || Err(io::Error::other("proxy: connection closed by fault"));
        let (parts, body) = req.into_parts();
        let body = body.collect().await.map_err(io::Error::other)?.to_bytes();
        let forward = |delay: Duration| {
            let me = Arc::clone(&self);
            let req = Request::from_parts(parts, Full::new(body));
            me.in_flight.fetch_add(1, Ordering::SeqCst);
            // A task of its own: the write happens even if the client goes away.
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let result = me.forward(req).await;
                if let Ok((status, _, _)) = &result {
                    me.seen.lock().unwrap()[index].upstream = Some(*status);
                }
                me.in_flight.fetch_sub(1, Ordering::SeqCst);
                result
            })
        };
        let upstream = |handle: JoinHandle<io::Result<(u16, hyper::HeaderMap, Bytes)>>| async move {
            handle.await.map_err(io::Error::other)?
        };
        match fault {
            None => respond(upstream(forward(Duration::ZERO)).await?, false),
            Some(Fault::SlowResponse(d)) => {
                let answer = upstream(forward(Duration::ZERO)).await;
                tokio::time::sleep(d).await;
                respond(answer?, false)
            }
            Some(Fault::SlowRequest(d)) => respond(upstream(forward(d)).await?, false),
            Some(Fault::Respond { status, body }) => {
                let kind = if body.starts_with('<') {
                    "text/html"
                } else {
                    "application/json"
                };
                let mut headers = hyper::HeaderMap::new();
                headers.insert(header::CONTENT_TYPE, kind.parse().unwrap());
                headers.insert("x-openstack-ironic-api-minimum-version", "1.1".parse().unwrap());
                headers.insert("x-openstack-ironic-api-maximum-version", "1.115".parse().unwrap());
                respond((status, headers, Bytes::from(body)), false)
            }
            Some(Fault::Close) => closed(),
            Some(Fault::CutResponse) => respond(upstream(forward(Duration::ZERO)).await?, true),
            Some(Fault::DropResponse) => {
                upstream(forward(Duration::ZERO)).await?;
                closed()
            }
            Some(Fault::Outage(d)) => {
                let me = Arc::clone(&self);
                tokio::spawn(async move {
                    me.down().await;
                    tokio::time::sleep(d).await;
                    me.up().await;
                });
                closed()
            }
        }
    }

    /// Sends `req` to Ironic on a fresh connection; returns status, headers and the whole body.
    async fn forward(&self, req: Request<Full<Bytes>>) -> io::Result<(u16, hyper::HeaderMap, Bytes)> {
        let stream = TcpStream::connect(self.upstream).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(conn);
        let resp = sender.send_request(req).await.map_err(io::Error::other)?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(io::Error::other)?.to_bytes();
        Ok((parts.status.as_u16(), parts.headers, body))
    }
}

/// Builds the response to the client: Ironic's headers (minus hop-by-hop ones) and body, or
/// with `cut`, a `Content-Length` of the full body followed by only half of it and a close.
fn respond(
    (status, mut headers, body): (u16, hyper::HeaderMap, Bytes),
    cut: bool,
) -> io::Result<Response<Body>> {
    for h in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::CONTENT_LENGTH,
    ] {
        headers.remove(h);
    }
    let body: Body = if cut {
        headers.insert(header::CONTENT_LENGTH, body.len().into());
        let (mut tx, rx) = futures::channel::mpsc::channel::<io::Result<Frame<Bytes>>>(2);
        let half = body.slice(..body.len() / 2);
        tokio::spawn(async move {
            let _ = tx.send(Ok(Frame::data(half))).await;
            // Let the first half reach the client before the connection breaks.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = tx.send(Err(io::Error::other("proxy: response cut"))).await;
        });
        BoxBody::new(StreamBody::new(rx))
    } else {
        Full::new(body).map_err(|never| match never {}).boxed()
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
    *resp.headers_mut() = headers;
    Ok(resp)
}
