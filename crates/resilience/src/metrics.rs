//! Shared metric plumbing: the label set and small helpers.
//!
//! Rule kept here: labels stay low-cardinality. The only label is the
//! instance `name` a caller chose (`kube`, `github`, `incidents`), never an
//! id of a task, job or request.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;

/// The `name` label that lets several breakers or queues share one registry.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct NameLabel {
    pub(crate) name: String,
}

impl NameLabel {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
        }
    }
}

/// The `check` label of readiness-check metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CheckLabel {
    pub(crate) check: String,
}

/// Buckets for waits from 1 ms to about 17 minutes, ×4 per bucket.
pub(crate) fn wait_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 4.0, 11)
}

/// A duration as the f64 seconds Prometheus expects.
pub(crate) fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}
