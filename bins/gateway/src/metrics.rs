//! The gateway's Prometheus metrics (`gateway_*`), and the lock's under
//! `gateway_lock_*`.
//!
//! Rule kept here: labels stay low-cardinality — `outcome` is one of a
//! fixed set, never a fingerprint, a request name or an alert name.
//!
//! Series: `gateway_signals_total{outcome}` (`created`, `deduplicated`,
//! `failed`, `invalid`, `resolved`), `gateway_signal_duration_seconds`
//! (one delivery, find-or-create and count), `gateway_lock_added_seconds`
//! (what the lock path adds to a delivery over a lock-free check and
//! create: acquiring, the check under the lock, waiting for a contender,
//! releasing), `gateway_count_conflicts_total` (a replica's count writes
//! whose compare-and-swap failed on a stale read and were retried),
//! `gateway_count_fold_conflicts_total` (folds of `occurrenceCount` that
//! met a later write, which carries the sum on; expected under
//! contention), `gateway_count_folds_abandoned_total` (folds that ran out
//! of attempts after transient failures, leaving `occurrenceCount` behind the replicas' counts until the next
//! delivery's fold), and the lock's
//! `gateway_lock_acquire_attempts_total`, `gateway_lock_acquisitions_total`,
//! `gateway_lock_acquire_failures_total{reason}`,
//! `gateway_lock_contended_total`, `gateway_lock_wait_duration_seconds{outcome}`,
//! `gateway_lock_hold_duration_seconds` and the rest of lease-lock's.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::Error;

/// The `outcome` label of `gateway_signals_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// How the delivery ended.
    pub outcome: &'static str,
}

/// Every `outcome` of `gateway_signals_total`.
pub const OUTCOMES: [&str; 5] = ["created", "deduplicated", "failed", "invalid", "resolved"];

/// The gateway's metrics. Cheap to clone; clones share the series.
#[derive(Clone, Debug)]
pub struct Metrics {
    signals: Family<OutcomeLabel, Counter>,
    duration: Histogram,
    added: Histogram,
    pub(crate) count_conflicts: Counter,
    pub(crate) fold_conflicts: Counter,
    pub(crate) fold_gave_up: Counter,
    /// The creation lock's metrics (registered as `gateway_lock_*`).
    pub lock: lease_lock::Metrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let metrics = Self {
            signals: Family::default(),
            // 0.5 ms .. ~16 s.
            duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            // 0.25 ms .. ~8 s: the target is tens of ms.
            added: Histogram::new(exponential_buckets(0.00025, 2.0, 16)),
            count_conflicts: Counter::default(),
            fold_conflicts: Counter::default(),
            fold_gave_up: Counter::default(),
            lock: lease_lock::Metrics::default(),
        };
        for outcome in OUTCOMES {
            let _ = metrics.signals.get_or_create(&OutcomeLabel { outcome });
        }
        metrics
    }
}

impl Metrics {
    /// Registers every series (see the module documentation).
    pub fn register(&self, registry: &mut Registry) {
        self.lock.register_with_prefix(registry, "gateway_lock");
        let r = registry.sub_registry_with_prefix("gateway");
        r.register(
            "signals",
            "Alert deliveries by outcome",
            self.signals.clone(),
        );
        r.register_with_unit(
            "signal_duration",
            "Time to record one delivery: find or create its request, count it",
            Unit::Seconds,
            self.duration.clone(),
        );
        r.register_with_unit(
            "lock_added",
            "Time the creation lock path added to a delivery over a lock-free check and create",
            Unit::Seconds,
            self.added.clone(),
        );
        r.register(
            "count_conflicts",
            "A replica's occurrence-count writes that found its read stale and were retried",
            self.count_conflicts.clone(),
        );
        r.register(
            "count_fold_conflicts",
            "Folds of the replicas' counts into occurrenceCount that met a later write (which carries the sum on)",
            self.fold_conflicts.clone(),
        );
        r.register(
            "count_folds_abandoned",
            "Folds of the replicas' counts into occurrenceCount that ran out of attempts after transient failures",
            self.fold_gave_up.clone(),
        );
    }

    /// Counts one delivery that was refused (400) or resolved (skipped).
    pub fn outcome(&self, outcome: &'static str) {
        self.signals.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Counts one delivery recorded (`Ok(created)`) or failed.
    pub(crate) fn signal(&self, result: Result<bool, &Error>, took: Duration) {
        self.outcome(match result {
            Ok(true) => "created",
            Ok(false) => "deduplicated",
            Err(_) => "failed",
        });
        self.duration.observe(took.as_secs_f64());
    }

    pub(crate) fn added_latency(&self, added: Duration) {
        self.added.observe(added.as_secs_f64());
    }

    /// `gateway_signals_total{outcome}` so far.
    pub fn signals(&self, outcome: &'static str) -> u64 {
        self.signals.get_or_create(&OutcomeLabel { outcome }).get()
    }

    /// The metrics as `/metrics` serves them (OpenMetrics text).
    pub fn encode(registry: &Registry) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, registry);
        text
    }
}
