//! Prometheus metrics of label transitions and the GitHub calls behind them.
//!
//! Rule kept here: labels stay low-cardinality — an endpoint name, an HTTP
//! status (or `timeout`/`transport`), a transition result, a wait reason —
//! never a repository, a pull request number or a label name.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The crate's metrics. Cheap to clone: clones report into the same series,
/// so one value is shared by [`GitHubLabels`](crate::GitHubLabels),
/// [`RateLimited`](crate::RateLimited) and
/// [`AtomicLabelManager`](crate::AtomicLabelManager).
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<EndpointLabels, Histogram>,
    rate_limit_remaining: Gauge,
    not_modified: Counter,
    transitions: Family<ResultLabels, Counter>,
    unawaited: Counter,
    interference: Counter,
    rate_limit_waits: Family<ReasonLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                requests: Family::default(),
                // 5 ms to about 80 s, ×4 per bucket: GitHub answers in tens
                // to hundreds of milliseconds; the tail shows stalls.
                request_duration: Family::new_with_constructor(|| {
                    Histogram::new(exponential_buckets(0.005, 4.0, 8))
                }),
                rate_limit_remaining: Gauge::default(),
                not_modified: Counter::default(),
                transitions: Family::default(),
                unawaited: Counter::default(),
                interference: Counter::default(),
                rate_limit_waits: Family::default(),
            }),
        }
    }
}

impl Metrics {
    /// Fresh metrics, not yet registered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers every series under the `label_cas` prefix:
    ///
    /// - `label_cas_github_requests_total{endpoint,status}`
    /// - `label_cas_github_request_duration_seconds{endpoint}`
    /// - `label_cas_github_rate_limit_remaining`
    /// - `label_cas_github_not_modified_total` (304s: reads that cost no budget)
    /// - `label_cas_transitions_total{result}` (`applied`, `already_in_state`,
    ///   `conflict`, `failed`; `lock_lost`: the lock was lost mid-transition
    ///   and what it had changed was left in place for the new holder or the
    ///   reconciler; `dropped`: the task running the transition was stopped
    ///   half-way — the runtime shut down, or a panic — and changes were left
    ///   on the pull request; both worth an alert)
    /// - `label_cas_transitions_unawaited_total`: transitions (and label
    ///   replacements) whose caller stopped waiting — a timeout, a dropped
    ///   future — before they ended; they ran to their end anyway, in their
    ///   own task, and are also counted under how they ended
    /// - `label_cas_interference_detected_total`
    /// - `label_cas_rate_limit_waits_total{reason}` (`budget`, `rejected`,
    ///   `queue_full`): waits imposed by rate limits; `queue_full` counts
    ///   mutations refused because the ones queued before them would have
    ///   kept them waiting longer than `max_wait`.
    pub fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix("label_cas");
        let i = &self.inner;
        sub.register(
            "github_requests",
            "GitHub API requests by endpoint and HTTP status (or timeout/transport)",
            i.requests.clone(),
        );
        sub.register_with_unit(
            "github_request_duration",
            "GitHub API request duration by endpoint",
            Unit::Seconds,
            i.request_duration.clone(),
        );
        sub.register(
            "github_rate_limit_remaining",
            "x-ratelimit-remaining as last reported by GitHub",
            i.rate_limit_remaining.clone(),
        );
        sub.register(
            "github_not_modified",
            "Conditional reads answered 304 Not Modified (free of rate limit)",
            i.not_modified.clone(),
        );
        sub.register(
            "transitions",
            "Label transitions by result (applied, already_in_state, conflict, failed, lock_lost, dropped)",
            i.transitions.clone(),
        );
        sub.register(
            "transitions_unawaited",
            "Label transitions that ran to their end after their caller stopped waiting",
            i.unawaited.clone(),
        );
        sub.register(
            "interference_detected",
            "Writes whose returned labels showed another writer's interference",
            i.interference.clone(),
        );
        sub.register(
            "rate_limit_waits",
            "Waits imposed by GitHub rate limits, by reason (budget, rejected, queue_full)",
            i.rate_limit_waits.clone(),
        );
    }

    pub(crate) fn request(&self, endpoint: &'static str, status: &str, took: Duration) {
        self.inner
            .requests
            .get_or_create(&RequestLabels {
                endpoint,
                status: status.to_owned(),
            })
            .inc();
        self.inner
            .request_duration
            .get_or_create(&EndpointLabels { endpoint })
            .observe(took.as_secs_f64());
    }

    pub(crate) fn rate_limit_remaining(&self, remaining: u32) {
        self.inner.rate_limit_remaining.set(i64::from(remaining));
    }

    pub(crate) fn not_modified(&self) {
        self.inner.not_modified.inc();
    }

    pub(crate) fn transition(&self, result: &'static str) {
        self.inner
            .transitions
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub(crate) fn unawaited(&self) {
        self.inner.unawaited.inc();
    }

    pub(crate) fn interference(&self) {
        self.inner.interference.inc();
    }

    pub(crate) fn rate_limit_wait(&self, reason: &'static str) {
        self.inner
            .rate_limit_waits
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// How many transitions ended with `result` (for tests and examples).
    pub fn transitions(&self, result: &str) -> u64 {
        let result: &'static str = match result {
            "applied" => "applied",
            "already_in_state" => "already_in_state",
            "conflict" => "conflict",
            "failed" => "failed",
            "dropped" => "dropped",
            "lock_lost" => "lock_lost",
            _ => return 0,
        };
        self.inner
            .transitions
            .get_or_create(&ResultLabels { result })
            .get()
    }

    /// How many transitions ran to their end after their caller had
    /// stopped waiting.
    pub fn unawaited_count(&self) -> u64 {
        self.inner.unawaited.get()
    }

    /// How many times interference was detected.
    pub fn interference_detected(&self) -> u64 {
        self.inner.interference.get()
    }

    /// How many rate-limit waits happened for `reason` (`budget`,
    /// `rejected` or `queue_full`).
    pub fn rate_limit_waits(&self, reason: &str) -> u64 {
        let reason: &'static str = match reason {
            "budget" => "budget",
            "rejected" => "rejected",
            "queue_full" => "queue_full",
            _ => return 0,
        };
        self.inner
            .rate_limit_waits
            .get_or_create(&ReasonLabels { reason })
            .get()
    }

    /// How many 304 answers were seen.
    pub fn not_modified_count(&self) -> u64 {
        self.inner.not_modified.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn every_listed_series_is_exposed_without_unit_suffixes_in_names() {
        let metrics = Metrics::new();
        metrics.request("get_labels", "200", Duration::from_millis(20));
        metrics.rate_limit_remaining(4999);
        metrics.not_modified();
        metrics.transition("applied");
        metrics.unawaited();
        metrics.interference();
        metrics.rate_limit_wait("budget");
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for series in [
            "label_cas_github_requests_total{endpoint=\"get_labels\",status=\"200\"} 1",
            "label_cas_github_request_duration_seconds_count{endpoint=\"get_labels\"} 1",
            "label_cas_github_rate_limit_remaining 4999",
            "label_cas_github_not_modified_total 1",
            "label_cas_transitions_total{result=\"applied\"} 1",
            "label_cas_transitions_unawaited_total 1",
            "label_cas_interference_detected_total 1",
            "label_cas_rate_limit_waits_total{reason=\"budget\"} 1",
        ] {
            assert!(text.contains(series), "missing {series} in\n{text}");
        }
    }
}
