//! Reconciler metrics (names in docs/api.md), served on the plain-HTTP metrics port.
//!
//! - `bootvolume_reconcile_total{result}`: one per pass; `result` is `in_sync`, `applied`,
//!   `waiting`, `skipped` or an error label ([`super::Error::metric_label`]): bounded.
//! - `bootvolume_reconcile_duration_seconds`: histogram of pass durations.
//! - `bootvolume_ironic_requests_total{method,code}`: every Ironic request, `code` the HTTP
//!   status or `error` when none came back.
//! - `bootvolume_fleet_syncs_total{result}` (`ok`, `error`), `bootvolume_fleet_list_pages_total`
//!   and `bootvolume_fleet_out_of_sync_hosts_total`: what the periodic fleet sync costs and finds.
//! - `bootvolume_hosts{phase}`: hosts with `bootVolume` per adoption-handshake phase
//!   ([`Phase::label`]); every phase is always exported, zero included.
//!
//! Labels never carry host names or values from a spec, so cardinality stays fixed and no
//! secret can end up here.

use super::handshake::Phase;
use crate::ironic::RequestObserver;
use axum::{Router, http::header, response::IntoResponse, routing::get};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: String,
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
    fleet_syncs: Family<ResultLabels, Counter>,
    fleet_pages: Counter,
    fleet_out_of_sync: Counter,
    hosts: Family<PhaseLabels, Gauge>,
    phases: Mutex<HashMap<String, Phase>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers the metrics in a fresh registry.
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
        let fleet_syncs = Family::<ResultLabels, Counter>::default();
        registry.register(
            "bootvolume_fleet_syncs",
            "Fleet syncs (list calls and join) by result",
            fleet_syncs.clone(),
        );
        let fleet_pages = Counter::default();
        registry.register(
            "bootvolume_fleet_list_pages",
            "Ironic list pages read by fleet syncs",
            fleet_pages.clone(),
        );
        let fleet_out_of_sync = Counter::default();
        registry.register(
            "bootvolume_fleet_out_of_sync_hosts",
            "Hosts a fleet sync sent back to the queue",
            fleet_out_of_sync.clone(),
        );
        let hosts = Family::<PhaseLabels, Gauge>::default();
        registry.register(
            "bootvolume_hosts",
            "Hosts with bootVolume by adoption phase",
            hosts.clone(),
        );
        for phase in Phase::ALL {
            hosts
                .get_or_create(&PhaseLabels {
                    phase: phase.label().into(),
                })
                .set(0);
        }
        Self {
            registry,
            reconciles,
            duration,
            ironic_requests,
            fleet_syncs,
            fleet_pages,
            fleet_out_of_sync,
            hosts,
            phases: Mutex::default(),
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

    /// Counts one fleet sync: `Some((pages, out_of_sync))` on success, `None` on failure.
    pub fn record_fleet_sync(&self, result: Option<(usize, usize)>) {
        let label = if result.is_some() { "ok" } else { "error" };
        self.fleet_syncs
            .get_or_create(&ResultLabels { result: label.into() })
            .inc();
        if let Some((pages, out_of_sync)) = result {
            self.fleet_pages.inc_by(pages as u64);
            self.fleet_out_of_sync.inc_by(out_of_sync as u64);
        }
    }

    /// Successful fleet syncs so far (tests wait on it).
    pub fn fleet_syncs(&self) -> u64 {
        self.fleet_syncs
            .get_or_create(&ResultLabels { result: "ok".into() })
            .get()
    }

    /// Records host `key`'s phase (`None`: no longer counted, e.g. deleted or no bootVolume).
    /// Constant work per call: only the old and the new phase's gauges move.
    pub fn set_host_phase(&self, key: &str, phase: Option<Phase>) {
        let mut phases = self.phases.lock().unwrap_or_else(|p| p.into_inner());
        let old = match phase {
            Some(p) => phases.insert(key.to_owned(), p),
            None => phases.remove(key),
        };
        if old == phase {
            return;
        }
        let gauge = |p: Phase| {
            self.hosts.get_or_create(&PhaseLabels {
                phase: p.label().into(),
            })
        };
        if let Some(p) = old {
            gauge(p).dec();
        }
        if let Some(p) = phase {
            gauge(p).inc();
        }
    }

    /// Hosts counted in `phase` (tests assert on it).
    pub fn hosts_in(&self, phase: Phase) -> i64 {
        self.hosts
            .get_or_create(&PhaseLabels {
                phase: phase.label().into(),
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
        m.record_fleet_sync(Some((3, 2)));
        m.record_fleet_sync(None);
        let text = m.encode();
        for want in [
            r#"bootvolume_fleet_syncs_total{result="ok"} 1"#,
            r#"bootvolume_fleet_syncs_total{result="error"} 1"#,
            "bootvolume_fleet_list_pages_total 3",
            "bootvolume_fleet_out_of_sync_hosts_total 2",
            r#"bootvolume_reconcile_total{result="applied"} 1"#,
            "bootvolume_reconcile_duration_seconds_count 1",
            r#"bootvolume_ironic_requests_total{method="GET",code="200"} 1"#,
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
        assert_eq!(m.reconciles("applied"), 1);
        assert_eq!(m.fleet_syncs(), 1);
    }

    #[test]
    fn host_phases_are_a_gauge_per_phase() {
        let m = Metrics::new();
        assert!(m.encode().contains(r#"bootvolume_hosts{phase="stale"} 0"#));
        m.set_host_phase("a/h1", Some(Phase::HandedOver));
        m.set_host_phase("a/h2", Some(Phase::HandedOver));
        m.set_host_phase("a/h1", Some(Phase::BootingFromVolume));
        assert_eq!(m.hosts_in(Phase::HandedOver), 1);
        assert_eq!(m.hosts_in(Phase::BootingFromVolume), 1);
        m.set_host_phase("a/h2", None);
        let text = m.encode();
        for want in [
            r#"bootvolume_hosts{phase="handed_over"} 0"#,
            r#"bootvolume_hosts{phase="booting_from_volume"} 1"#,
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
    }
}
