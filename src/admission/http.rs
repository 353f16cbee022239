//! HTTP edge of the webhook: decode the body, call [`admit`], encode the answer.
//!
//! Malformed input never reaches the rules: wrong content type, bodies over 3 MiB (the
//! API server's own limit), non-JSON and non-AdmissionReview bodies get a 400/413 with a
//! Kubernetes `Status` JSON body saying what is wrong.

use super::{Review, Webhook, admit};
use crate::{
    audit::{self, AuditLog},
    metrics::{Metrics, RequestLabels, WebhookLabels},
    rules::Policy,
};
use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::json;
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

/// Largest request body accepted (kube-apiserver's own request limit is 3 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Default time allowed to receive a request body (slow clients must not hold a request
/// open); `serve --body-timeout`.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers share.
pub struct AppState {
    /// Rule flags.
    pub policy: Policy,
    /// Request metrics.
    pub metrics: Arc<Metrics>,
    /// False until serving and again while shutting down (`/readyz`).
    pub ready: AtomicBool,
    /// Time allowed to receive a request body.
    pub body_timeout: Duration,
    /// Where the audit line of each decision goes.
    pub audit: AuditLog,
}

impl AppState {
    /// State for a server about to start (not ready yet).
    pub fn new(policy: Policy, metrics: Arc<Metrics>, body_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            policy,
            audit: AuditLog::for_process(metrics.audit_dropped.clone()),
            metrics,
            ready: AtomicBool::new(false),
            body_timeout,
        })
    }
}

/// Why a request body is not an AdmissionReview we can answer.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not `application/json`.
    #[error("content type must be application/json, got {0:?}")]
    ContentType(String),
    /// Over [`MAX_BODY_BYTES`].
    #[error("request body is larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    /// The body could not be read.
    #[error("reading request body: {0}")]
    Body(String),
    /// The client sent the body too slowly.
    #[error("request body not received within {0:?}")]
    BodyTimeout(Duration),
    /// Not JSON, or not shaped like an AdmissionReview.
    #[error("body is not a valid AdmissionReview: {0}")]
    Json(#[from] serde_json::Error),
    /// Some other apiVersion/kind.
    #[error("expected apiVersion admission.k8s.io/v1, kind AdmissionReview; got {api_version:?}, {kind:?}")]
    NotReview {
        /// What was sent.
        api_version: String,
        /// What was sent.
        kind: String,
    },
    /// A review without `request`.
    #[error("AdmissionReview has no request")]
    NoRequest,
}

impl IntoResponse for DecodeError {
    fn into_response(self) -> Response {
        let (code, reason) = match self {
            Self::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge"),
            Self::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "Timeout"),
            _ => (StatusCode::BAD_REQUEST, "BadRequest"),
        };
        let body = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.to_string(), "reason": reason, "code": code.as_u16(),
        });
        (code, Json(body)).into_response()
    }
}

/// Reads the body of a request that says it is JSON.
async fn read_body(headers: &HeaderMap, body: Body, body_timeout: Duration) -> Result<Bytes, DecodeError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(DecodeError::ContentType(content_type.to_owned()));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(DecodeError::TooLarge);
    }
    let read = tokio::time::timeout(body_timeout, axum::body::to_bytes(body, MAX_BODY_BYTES));
    let bytes = read
        .await
        .map_err(|_| DecodeError::BodyTimeout(body_timeout))?
        .map_err(|e| {
            let too_large =
                std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                DecodeError::TooLarge
            } else {
                DecodeError::Body(e.to_string())
            }
        })?;
    Ok(bytes)
}

/// Parses an AdmissionReview in one pass, borrowing from `bytes`.
pub fn parse(bytes: &[u8]) -> Result<Review<'_>, DecodeError> {
    // Checking UTF-8 once up front lets the parser borrow strings without checking each.
    let review: Review = match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text)?,
        Err(_) => serde_json::from_slice(bytes)?,
    };
    if review.api_version != super::API_VERSION || review.kind != super::KIND {
        return Err(DecodeError::NotReview {
            api_version: review.api_version.into_owned(),
            kind: review.kind.into_owned(),
        });
    }
    if review.request.is_none() {
        return Err(DecodeError::NoRequest);
    }
    Ok(review)
}

/// Answers a request that is not an AdmissionReview we can decide (4xx), counted and logged.
fn reject(state: &AppState, webhook: Webhook, error: DecodeError) -> Response {
    state.metrics.count_request(&RequestLabels {
        webhook: webhook.label(),
        operation: "unknown",
        decision: "error",
    });
    tracing::warn!(webhook = webhook.label(), %error, "rejected malformed admission request");
    error.into_response()
}

async fn handle(state: &AppState, webhook: Webhook, request: axum::extract::Request) -> Response {
    let start = Instant::now();
    // The request taken whole: the `HeaderMap` extractor would clone the headers.
    let (parts, body) = request.into_parts();
    let bytes = match read_body(&parts.headers, body, state.body_timeout).await {
        Ok(bytes) => bytes,
        Err(error) => return reject(state, webhook, error),
    };
    let request = match parse(&bytes) {
        Ok(Review { request: Some(r), .. }) => r,
        Ok(_) => return DecodeError::NoRequest.into_response(),
        Err(error) => return reject(state, webhook, error),
    };
    let outcome = admit(&state.policy, webhook, &request);
    let elapsed = start.elapsed();
    let decision = outcome.decision.label();
    let operation = request.operation_label();
    state.metrics.count_request(&RequestLabels {
        webhook: webhook.label(),
        operation,
        decision,
    });
    state.metrics.observe_duration(
        &WebhookLabels {
            webhook: webhook.label(),
        },
        elapsed.as_secs_f64(),
    );
    state.audit.record(&audit::Entry {
        webhook: webhook.label(),
        uid: &request.uid,
        operation,
        namespace: &request.namespace,
        name: &request.name,
        user: &request.user_info.username,
        dry_run: request.dry_run,
        decision,
        violations: &outcome.violations,
        duration_us: elapsed.as_micros() as u64,
    });
    encode(&outcome.response)
}

/// The answer as JSON, written into one buffer sized for a typical review.
fn encode(response: &super::Response) -> Response {
    let mut body = Vec::with_capacity(512 + response.patch.as_ref().map_or(0, String::len));
    response.write_review(&mut body);
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn validate(State(state): State<Arc<AppState>>, request: axum::extract::Request) -> Response {
    handle(&state, Webhook::Validate, request).await
}

async fn mutate(State(state): State<Arc<AppState>>, request: axum::extract::Request) -> Response {
    handle(&state, Webhook::Mutate, request).await
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, &'static str) {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

fn probes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// The HTTPS router: `/validate`, `/mutate` and the probes.
pub fn router(state: Arc<AppState>) -> Router {
    probes()
        .route("/validate", post(validate))
        .route("/mutate", post(mutate))
        .with_state(state)
}

/// The plain-HTTP router: `/metrics` and the probes.
pub fn metrics_router(state: Arc<AppState>) -> Router {
    probes().route("/metrics", get(metrics)).with_state(state)
}
