//! Prometheus metrics of a [`JobTracker`](crate::JobTracker).
//!
//! The rule it keeps: labels are low-cardinality enums (outcome, reason),
//! never job ids.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::{CancelOutcome, JobOutcome};

/// Metric handles shared by the tracker and its job handles (all cheap clones
/// of the same atomics).
#[derive(Clone)]
pub(crate) struct Metrics {
    pub(crate) active: Gauge,
    pub(crate) started: Counter,
    pub(crate) finished: Family<FinishedLabels, Counter>,
    pub(crate) cancel_requests: Family<CancelLabels, Counter>,
    pub(crate) cancel_to_stop: Histogram,
    pub(crate) steps_after_cancel: Counter,
    pub(crate) rejected: Family<RejectedLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FinishedLabels {
    outcome: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CancelLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RejectedLabels {
    pub(crate) reason: &'static str,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        Self {
            active: Gauge::default(),
            started: Counter::default(),
            finished: Family::default(),
            cancel_requests: Family::default(),
            // 100 µs .. ~3.3 s: one decode step is milliseconds, and anything
            // past a few seconds already breaks the 5 s cancellation promise.
            cancel_to_stop: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            rejected: Family::default(),
            steps_after_cancel: Counter::default(),
        }
    }

    pub(crate) fn record_finished(&self, outcome: JobOutcome) {
        let labels = FinishedLabels {
            outcome: outcome.as_label(),
            reason: outcome.reason().map_or("none", |r| r.as_label()),
        };
        self.finished.get_or_create(&labels).inc();
    }

    pub(crate) fn record_cancel_request(&self, outcome: CancelOutcome) {
        let labels = CancelLabels {
            outcome: outcome.as_label(),
        };
        self.cancel_requests.get_or_create(&labels).inc();
    }

    pub(crate) fn register(&self, registry: &mut Registry, reserved_units: Gauge) {
        let registry = registry.sub_registry_with_prefix("job_tracker");
        registry.register(
            "jobs_active",
            "Jobs registered and not yet finished",
            self.active.clone(),
        );
        registry.register("jobs_started", "Jobs registered", self.started.clone());
        registry.register(
            "jobs_finished",
            "Jobs finished, by outcome and cancel reason",
            self.finished.clone(),
        );
        registry.register(
            "jobs_rejected",
            "Registrations refused, by reason",
            self.rejected.clone(),
        );
        registry.register(
            "cancel_requests",
            "Cancel requests, by what they found",
            self.cancel_requests.clone(),
        );
        registry.register_with_unit(
            "cancel_to_stop",
            "Time from an accepted cancel until the job stopped",
            Unit::Seconds,
            self.cancel_to_stop.clone(),
        );
        registry.register(
            "steps_after_cancel",
            "Steps committed after their job's cancel was accepted (target 0)",
            self.steps_after_cancel.clone(),
        );
        registry.register(
            "reserved_units",
            "Resource units held by active jobs",
            reserved_units,
        );
    }
}
