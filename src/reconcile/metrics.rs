//! Reconciler metrics (names in docs/api.md), served on the plain-HTTP metrics port.
//!
//! - `bootvolume_reconcile_total{result}`: one per pass; `result` is `in_sync`, `applied`,
//!   `waiting`, `skipped` or an error label ([`super::Error::metric_label`]): bounded.
//! - `bootvolume_reconcile_duration_seconds`: histogram of pass durations.
//! - `bootvolume_ironic_requests_total{method,code}`: every Ironic request, `code` the HTTP
//!   status or `error` when none came back.
//!
//! Labels never carry host names or values from a spec, so cardinality stays fixed and no
//! secret can end up here.

use crate::ironic::RequestObserver;
use axum::{Router, http::header, response::IntoResponse, routing::get};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::{Registry, Unit},
};
use std::{sync::Arc, time::Duration};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IronicLabels {
    method: String,
    code: String,
}

/// The reconciler's registry and metric handles. Cheap to share behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabels, Counter>,
    duration: Histogram,
    ironic_requests: Family<IronicLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers the three metrics in a fresh registry.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register(
            "bootvolume_reconcile",
            "Reconcile passes by result",
            reconciles.clone(),
        );
        let duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]);
        registry.register_with_unit(
            "bootvolume_reconcile_duration",
            "Duration of reconcile passes",
            Unit::Seconds,
            duration.clone(),
        );
        let ironic_requests = Family::<IronicLabels, Counter>::default();
        registry.register(
            "bootvolume_ironic_requests",
            "Ironic API requests by method and status",
            ironic_requests.clone(),
        );
        Self {
            registry,
            reconciles,
            duration,
            ironic_requests,
        }
    }

    /// Counts one pass.
    pub fn record_reconcile(&self, result: &str, elapsed: Duration) {
        self.reconciles
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// Passes counted so far with `result` (tests assert on it).
    pub fn reconciles(&self, result: &str) -> u64 {
        self.reconciles
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .get()
    }

    /// A hook for [`crate::ironic::IronicClient::with_observer`].
    pub fn ironic_observer(self: &Arc<Self>) -> RequestObserver {
        let me = Arc::clone(self);
        Arc::new(move |method: &str, code: &str| {
            me.ironic_requests
                .get_or_create(&IronicLabels {
                    method: method.into(),
                    code: code.into(),
                })
                .inc();
        })
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// `/metrics` and `/healthz` for the reconciler's plain-HTTP port.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = metrics.encode();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    )
                        .into_response()
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_design_names() {
        let m = Arc::new(Metrics::new());
        m.record_reconcile("applied", Duration::from_millis(20));
        (m.ironic_observer())("GET", "200");
        let text = m.encode();
        for want in [
            r#"bootvolume_reconcile_total{result="applied"} 1"#,
            "bootvolume_reconcile_duration_seconds_count 1",
            r#"bootvolume_ironic_requests_total{method="GET",code="200"} 1"#,
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
        assert_eq!(m.reconciles("applied"), 1);
    }
}
