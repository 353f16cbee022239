//! Webhook metrics (names in docs/api.md), Prometheus text format.
//!
//! prometheus-client has no global registry: each server owns a [`Metrics`], so tests can
//! read exact values. Labels are `&'static str` so a request never allocates for metrics.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use std::sync::{OnceLock, atomic::AtomicU64};

/// The label values a request can have, for [`Metrics::count_request`]'s handle cache.
const WEBHOOKS: [&str; 2] = ["validate", "mutate"];
const OPERATIONS: [&str; 6] = ["CREATE", "UPDATE", "DELETE", "CONNECT", "other", "unknown"];
const DECISIONS: [&str; 4] = ["allowed", "denied", "mutated", "error"];
const SERIES: usize = WEBHOOKS.len() * OPERATIONS.len() * DECISIONS.len();

/// Labels of `bootvolume_admission_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `validate` or `mutate`.
    pub webhook: &'static str,
    /// `CREATE`, `UPDATE`, `DELETE`, `CONNECT`, or `unknown` for undecodable requests.
    pub operation: &'static str,
    /// `allowed`, `denied`, `mutated`, or `error` (HTTP 4xx).
    pub decision: &'static str,
}

/// Labels of `bootvolume_admission_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// `validate` or `mutate`.
    pub webhook: &'static str,
}

/// Labels of `bootvolume_tls_reloads_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `success` or `failure`.
    pub result: &'static str,
}

/// The webhook's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    /// Requests by webhook, operation and decision.
    pub requests: Family<RequestLabels, Counter>,
    /// Handling time (decode to encode) by webhook.
    pub duration: Family<WebhookLabels, Histogram>,
    /// `notAfter` of the serving certificate, as a Unix timestamp.
    pub cert_expiry: Gauge<f64, AtomicU64>,
    /// Certificate reloads by result.
    pub tls_reloads: Family<ResultLabels, Counter>,
    /// Audit lines dropped because the log writer fell behind (see `audit`).
    pub audit_dropped: Counter,
    /// Handles of `requests` and `duration` series, taken from the family on first use:
    /// `Family::get_or_create` hashes the labels and takes a lock on every call, a handle
    /// is one atomic add. A series still appears only once it has been counted.
    request_handles: [OnceLock<Counter>; SERIES],
    duration_handles: [OnceLock<Histogram>; WEBHOOKS.len()],
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        // 25 us .. ~0.4 s: admission decisions are microseconds; the tail shows stalls.
        let duration = Family::<WebhookLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.000_025, 2.0, 15,
            ))
        });
        let cert_expiry = Gauge::<f64, AtomicU64>::default();
        let tls_reloads = Family::<ResultLabels, Counter>::default();
        let audit_dropped = Counter::default();
        registry.register(
            "bootvolume_admission_requests",
            "Admission requests handled",
            requests.clone(),
        );
        registry.register(
            "bootvolume_admission_duration_seconds",
            "Time to decide an admission request",
            duration.clone(),
        );
        registry.register(
            "bootvolume_tls_certificate_expiry_timestamp_seconds",
            "notAfter of the serving certificate (Unix seconds)",
            cert_expiry.clone(),
        );
        registry.register(
            "bootvolume_tls_reloads",
            "Serving certificate reloads",
            tls_reloads.clone(),
        );
        registry.register(
            "bootvolume_audit_lines_dropped",
            "Audit log lines dropped because stderr could not keep up (requests never wait for it)",
            audit_dropped.clone(),
        );
        Self {
            registry,
            requests,
            duration,
            cert_expiry,
            tls_reloads,
            audit_dropped,
            request_handles: std::array::from_fn(|_| OnceLock::new()),
            duration_handles: std::array::from_fn(|_| OnceLock::new()),
        }
    }
}

fn position(values: &[&str], value: &str) -> Option<usize> {
    values.iter().position(|v| *v == value)
}

impl Metrics {
    /// Counts one certificate reload.
    pub fn tls_reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.tls_reloads.get_or_create(&ResultLabels { result }).inc();
    }

    /// Counts one admission request.
    pub fn count_request(&self, labels: &RequestLabels) {
        let index = position(&WEBHOOKS, labels.webhook).and_then(|w| {
            let o = position(&OPERATIONS, labels.operation)?;
            let d = position(&DECISIONS, labels.decision)?;
            Some((w * OPERATIONS.len() + o) * DECISIONS.len() + d)
        });
        match index.and_then(|i| self.request_handles.get(i)) {
            Some(handle) => handle
                .get_or_init(|| self.requests.get_or_create(labels).clone())
                .inc(),
            None => self.requests.get_or_create(labels).inc(),
        };
    }

    /// Records the time one admission decision took.
    pub fn observe_duration(&self, labels: &WebhookLabels, seconds: f64) {
        match position(&WEBHOOKS, labels.webhook).and_then(|i| self.duration_handles.get(i)) {
            Some(handle) => handle
                .get_or_init(|| self.duration.get_or_create(labels).clone())
                .observe(seconds),
            None => self.duration.get_or_create(labels).observe(seconds),
        }
    }

    /// The text exposition (OpenMetrics, which Prometheus scrapes natively).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_design_names() {
        let m = Metrics::default();
        m.requests
            .get_or_create(&RequestLabels {
                webhook: "validate",
                operation: "CREATE",
                decision: "denied",
            })
            .inc();
        m.duration
            .get_or_create(&WebhookLabels { webhook: "validate" })
            .observe(0.0001);
        m.tls_reload(false);
        m.cert_expiry.set(1.0e9);
        // Through the handle cache: the same series.
        for _ in 0..2 {
            m.count_request(&RequestLabels {
                webhook: "mutate",
                operation: "UPDATE",
                decision: "mutated",
            });
            m.observe_duration(&WebhookLabels { webhook: "mutate" }, 0.0001);
        }
        m.count_request(&RequestLabels {
            webhook: "validate",
            operation: "CREATE",
            decision: "denied",
        });
        let text = m.encode();
        for needle in [
            r#"bootvolume_admission_requests_total{webhook="validate",operation="CREATE",decision="denied"} 2"#,
            r#"bootvolume_admission_requests_total{webhook="mutate",operation="UPDATE",decision="mutated"} 2"#,
            r#"bootvolume_admission_duration_seconds_count{webhook="mutate"} 2"#,
            r#"bootvolume_admission_duration_seconds_count{webhook="validate"} 1"#,
            "bootvolume_tls_certificate_expiry_timestamp_seconds 1000000000",
            r#"bootvolume_tls_reloads_total{result="failure"} 1"#,
            "bootvolume_audit_lines_dropped_total 0",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
    }
}
