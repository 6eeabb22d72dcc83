//! The sensor's metrics (the state store's, the coordinator's and the
//! health probes' are registered beside them under their own prefixes).
//!
//! The rule it keeps: labels are small fixed sets. The event and action
//! labels are folded to the names the sensor knows (`other` for the rest),
//! since before the signature is checked they are whatever a caller sent;
//! never a task, delivery or correlation id.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Buckets (seconds) for the state write and the answer: a ConfigMap write
/// takes milliseconds; GitHub gives up at 10 s.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The sensor's counters and histograms. Cheap to clone; clones share.
#[derive(Clone, Debug)]
pub struct SensorMetrics {
    pub(crate) deliveries: Family<DeliveryLabels, Counter>,
    pub(crate) signature_failures: Family<ReasonLabels, Counter>,
    pub(crate) duplicates: Family<WhereLabels, Counter>,
    pub(crate) handoffs: Family<OutcomeLabels, Counter>,
    pub(crate) state_write_duration: Histogram,
    pub(crate) answer_duration: Histogram,
    pub(crate) writes_in_flight: Gauge,
}

impl Default for SensorMetrics {
    /// Every signature failure reason and every duplicate's origin start at
    /// 0, so that `increase()` sees the first of them (a series that appears
    /// at 1 has nothing to increase from) and the families are in
    /// `/metrics` before anything happened.
    fn default() -> Self {
        let metrics = Self {
            deliveries: Family::default(),
            signature_failures: Family::default(),
            duplicates: Family::default(),
            handoffs: Family::default(),
            state_write_duration: Histogram::new(BUCKETS),
            answer_duration: Histogram::new(BUCKETS),
            writes_in_flight: Gauge::default(),
        };
        for reason in ["missing", "malformed", "mismatch"] {
            let _ = metrics
                .signature_failures
                .get_or_create(&ReasonLabels { reason });
        }
        for found_in in ["memory", "state"] {
            let _ = metrics.duplicates.get_or_create(&WhereLabels { found_in });
        }
        metrics
    }
}

/// Labels of `sensor_deliveries`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DeliveryLabels {
    pub(crate) event: &'static str,
    pub(crate) action: &'static str,
    pub(crate) outcome: &'static str,
    pub(crate) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    pub(crate) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct WhereLabels {
    pub(crate) found_in: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabels {
    pub(crate) outcome: &'static str,
}

/// The event label: the events the sensor knows, `other` for the rest.
pub(crate) fn event_label(event: &str) -> &'static str {
    match event {
        "push" => "push",
        "pull_request" => "pull_request",
        "ping" => "ping",
        "create" => "create",
        "delete" => "delete",
        "" => "none",
        _ => "other",
    }
}

/// The action label: the actions the sensor acts on, `other` for the rest.
pub(crate) fn action_label(action: Option<&str>) -> &'static str {
    match action {
        None => "",
        Some("synchronize") => "synchronize",
        Some("opened") => "opened",
        Some("reopened") => "reopened",
        Some("closed") => "closed",
        Some(_) => "other",
    }
}

impl SensorMetrics {
    /// Counts one delivery.
    pub(crate) fn delivery(
        &self,
        event: &str,
        action: Option<&str>,
        outcome: &'static str,
        reason: &'static str,
    ) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                event: event_label(event),
                action: action_label(action),
                outcome,
                reason,
            })
            .inc();
    }

    pub(crate) fn duplicate(&self, found_in: &'static str) {
        self.duplicates
            .get_or_create(&WhereLabels { found_in })
            .inc();
    }

    pub(crate) fn handoff(&self, outcome: &'static str) {
        self.handoffs
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Registers everything under `sensor_`.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("sensor");
        registry.register(
            "deliveries",
            "Webhook deliveries by event, action, outcome (accepted, duplicate, ignored, rejected) and reason",
            self.deliveries.clone(),
        );
        registry.register(
            "signature_failures",
            "Deliveries refused because X-Hub-Signature-256 was missing, malformed or did not match",
            self.signature_failures.clone(),
        );
        registry.register(
            "duplicates",
            "Deliveries already recorded (same X-GitHub-Delivery and X-GitHub-Hook-ID), by where they were found (memory, state)",
            self.duplicates.clone(),
        );
        registry.register(
            "handoffs",
            "Recorded supersessions handed to the coordinator, by outcome",
            self.handoffs.clone(),
        );
        registry.register_with_unit(
            "state_write_duration",
            "Time to record a delivery in the task's state",
            Unit::Seconds,
            self.state_write_duration.clone(),
        );
        registry.register_with_unit(
            "answer_duration",
            "Time from a webhook request's arrival to its answer",
            Unit::Seconds,
            self.answer_duration.clone(),
        );
        registry.register(
            "state_writes_in_flight",
            "State writes running now (bounded by --max-inflight-writes)",
            self.writes_in_flight.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_events_and_actions_fold_into_other() {
        assert_eq!(event_label("push"), "push");
        assert_eq!(event_label("../../etc"), "other");
        assert_eq!(action_label(Some("time_travelled")), "other");
        assert_eq!(action_label(None), "");
    }
}
