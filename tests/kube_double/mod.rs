//! A Kubernetes API double on `127.0.0.1:<free port>` for running the real `bootvolume
//! reconcile` binary: it serves BareMetalHosts, Secrets, Events and one Lease from memory,
//! logs every request with its arrival time, and can hold the BareMetalHost list response
//! (a slow API server, a large fleet) until the test releases it. Watches are held open and
//! never send anything. [`KubeDouble::kubeconfig`] writes a kubeconfig pointing at it.
#![allow(dead_code)] // each test binary uses a different subset

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::{
    convert::Infallible,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

/// One request the double received.
#[derive(Clone, Debug)]
pub struct Seen {
    /// When it arrived.
    pub at: Instant,
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// `content-type`, or empty.
    pub content_type: String,
    /// JSON body, or `Null`.
    pub body: Value,
}

impl Seen {
    /// A request to the Lease API.
    pub fn is_lease(&self) -> bool {
        self.uri.starts_with("/apis/coordination.k8s.io/")
    }

    /// A write releasing the Lease: `spec.holderIdentity` set to null.
    pub fn is_lease_release(&self) -> bool {
        self.is_lease()
            && matches!(self.method.as_str(), "PATCH" | "PUT")
            && self.body["spec"].get("holderIdentity") == Some(&Value::Null)
    }

    /// The BareMetalHost list (not a watch).
    pub fn is_host_list(&self) -> bool {
        self.uri.contains("/baremetalhosts") && !self.uri.contains("watch=true")
    }

    /// An Event written (created or a series update).
    pub fn is_event(&self) -> bool {
        self.uri.starts_with("/apis/events.k8s.io/") && self.method != "GET"
    }
}

#[derive(Default)]
struct State {
    lease: Option<Value>,
    hosts: Vec<Value>,
    secrets: Vec<Value>,
    seen: Vec<Seen>,
}

/// The double. Stops listening when dropped.
pub struct KubeDouble {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    state: Arc<Mutex<State>>,
    hold_host_list: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl KubeDouble {
    /// Serves `hosts` and `secrets` (any namespace) and, if given, an existing `lease`.
    pub async fn start(hosts: Vec<Value>, secrets: Vec<Value>, lease: Option<Value>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind kube double");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            lease,
            hosts,
            secrets,
            seen: Vec::new(),
        }));
        let (hold_host_list, held) = watch::channel(false);
        let st = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (st, held) = (st.clone(), held.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(st.clone(), held.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            url,
            state,
            hold_host_list,
            accept,
        }
    }

    /// Holds (`true`) or lets through (`false`) BareMetalHost list responses.
    pub fn hold_host_list(&self, hold: bool) {
        self.hold_host_list.send_replace(hold);
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// The Lease as stored now.
    pub fn lease(&self) -> Option<Value> {
        self.state.lock().unwrap().lease.clone()
    }

    /// Waits (up to `within`) for a request matching `what`; returns it.
    pub async fn wait_for(&self, within: Duration, what: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.seen().into_iter().find(|s| what(s)) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "kube double: request not seen in {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Writes a kubeconfig for this double into `dir` (default namespace `namespace`).
    pub fn kubeconfig(&self, dir: &Path, namespace: &str) -> PathBuf {
        let path = dir.join("kubeconfig");
        let config = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "double", "cluster": {"server": self.url}}],
            "users": [{"name": "test", "user": {}}],
            "contexts": [{"name": "double", "context": {"cluster": "double", "user": "test", "namespace": namespace}}],
            "current-context": "double",
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        path
    }
}

impl Drop for KubeDouble {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn respond(status: u16, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())))
        .unwrap()
}

fn not_found() -> Response<Full<Bytes>> {
    respond(
        404,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
    )
}

fn list(kind: &str, items: Vec<Value>) -> Response<Full<Bytes>> {
    respond(
        200,
        &json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items}),
    )
}

fn in_namespace(items: &[Value], ns: &str) -> Vec<Value> {
    items
        .iter()
        .filter(|o| o["metadata"]["namespace"] == ns)
        .cloned()
        .collect()
}

async fn handle(
    state: Arc<Mutex<State>>,
    mut held: watch::Receiver<bool>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let at = Instant::now();
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let path = req.uri().path().to_owned();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let seen = Seen {
        at,
        method: method.clone(),
        uri: uri.clone(),
        content_type,
        body: body.clone(),
    };
    state.lock().unwrap().seen.push(seen.clone());
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    if uri.contains("watch=true") {
        // Open, silent watches: the test decides what happens, not a watch event.
        std::future::pending::<()>().await;
    }
    let response = match (method.as_str(), parts.as_slice()) {
        (_, ["apis", "coordination.k8s.io", "v1", "namespaces", _, "leases", ..]) => {
            let mut st = state.lock().unwrap();
            match method.as_str() {
                "GET" => st.lease.as_ref().map_or_else(not_found, |l| respond(200, l)),
                "POST" => {
                    st.lease = Some(body.clone());
                    respond(201, &body)
                }
                "PATCH" | "PUT" => {
                    let lease = st.lease.get_or_insert_with(
                        || json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease"}),
                    );
                    json_patch::merge(lease, &json!({"spec": body["spec"]}));
                    respond(200, lease)
                }
                _ => not_found(),
            }
        }
        (
            "GET",
            [
                "apis",
                "metal3.io",
                "v1alpha1",
                "namespaces",
                ns,
                "baremetalhosts",
            ],
        ) => {
            let _ = held.wait_for(|h| !*h).await;
            list(
                "BareMetalHostList",
                in_namespace(&state.lock().unwrap().hosts, ns),
            )
        }
        ("GET", ["api", "v1", "namespaces", ns, "secrets"]) => {
            list("SecretList", in_namespace(&state.lock().unwrap().secrets, ns))
        }
        ("GET", ["api", "v1", "namespaces", ns, "secrets", name]) => {
            in_namespace(&state.lock().unwrap().secrets, ns)
                .into_iter()
                .find(|s| s["metadata"]["name"] == *name)
                .map_or_else(not_found, |s| respond(200, &s))
        }
        ("POST", ["apis", "events.k8s.io", "v1", "namespaces", _, "events"]) => respond(201, &body),
        ("PATCH", ["apis", "events.k8s.io", "v1", "namespaces", _, "events", _]) => respond(200, &body),
        _ => not_found(),
    };
    Ok(response)
}
