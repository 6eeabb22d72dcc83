//! The worker's own metrics (the tracker's and the health probes' are
//! registered beside them).
//!
//! The rule it keeps: labels are small fixed sets (outcome, reason), never job
//! or correlation ids.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Counters shared by the handlers and the decode streams.
#[derive(Clone, Debug, Default)]
pub(crate) struct WorkerMetrics {
    pub(crate) execute_requests: Family<OutcomeLabels, Counter>,
    pub(crate) streams_ended: Family<ReasonLabels, Counter>,
    pub(crate) tokens: Counter,
    pub(crate) tokens_after_cancel: Counter,
    pub(crate) tokens_discarded: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabels {
    pub(crate) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    pub(crate) reason: &'static str,
}

impl WorkerMetrics {
    pub(crate) fn execute(&self, outcome: &'static str) {
        self.execute_requests
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub(crate) fn stream_ended(&self, reason: &'static str) {
        self.streams_ended
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub(crate) fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("inference_worker");
        registry.register(
            "execute_requests",
            "POST /execute requests, by outcome (accepted or why refused)",
            self.execute_requests.clone(),
        );
        registry.register(
            "streams_ended",
            "Token streams ended, by reason",
            self.streams_ended.clone(),
        );
        registry.register("tokens", "Tokens sent to clients", self.tokens.clone());
        registry.register(
            "tokens_after_cancel",
            "Tokens committed to a stream after its job's cancel was accepted; target 0",
            self.tokens_after_cancel.clone(),
        );
        registry.register(
            "tokens_discarded",
            "Tokens of a decode step in flight when the cancel was accepted, refused by the step gate and never sent",
            self.tokens_discarded.clone(),
        );
    }
}
