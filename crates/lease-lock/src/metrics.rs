//! Prometheus metrics of the lock.
//!
//! Rule kept here: labels stay low-cardinality — the only label is the
//! failure `reason` (a fixed set, see [`Error::reason`](crate::Error::reason)),
//! never a key, a lease name or a holder.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The lock's metrics. Cheap to clone (clones share the same series), so
/// several [`LeaseLock`](crate::LeaseLock)s may report into one set.
///
/// Series (after [`register`](Self::register)), all prefixed `lease_lock_`
/// (or the caller's prefix, with
/// [`register_with_prefix`](Self::register_with_prefix)):
/// `acquire_attempts_total`, `acquisitions_total`,
/// `acquire_failures_total{reason}`, `contended_total`, `takeovers_total`,
/// `races_lost_total`, `renew_failures_total`, `losses_total`, `deadlocks_total`,
/// `wait_duration_seconds{outcome}` (every acquisition attempt, by how it
/// ended: `acquired`, `not_acquired` for a `try_acquire` that found it
/// held, `timeout`, `cancelled`, `error`, so an API outage shows in it),
/// `hold_duration_seconds`.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub(crate) attempts: Counter,
    pub(crate) acquisitions: Counter,
    pub(crate) failures: Family<ReasonLabel, Counter>,
    pub(crate) contended: Counter,
    pub(crate) takeovers: Counter,
    pub(crate) races_lost: Counter,
    pub(crate) renew_failures: Counter,
    pub(crate) losses: Counter,
    pub(crate) deadlocks: Counter,
    pub(crate) wait: Family<OutcomeLabel, Histogram, fn() -> Histogram>,
    pub(crate) hold: Histogram,
}

/// The `outcome` label of `wait_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabel {
    pub(crate) outcome: &'static str,
}

/// How an acquisition attempt ended, as `wait_duration_seconds` labels it.
pub(crate) const OUTCOMES: [&str; 5] =
    ["acquired", "not_acquired", "timeout", "cancelled", "error"];

fn wait_histogram() -> Histogram {
    // 1 ms .. ~65 s: an uncontended acquisition is one round trip, a
    // takeover waits up to a lease duration (30 s by default).
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The `reason` label of `acquire_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    pub(crate) reason: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        let metrics = Self {
            attempts: Counter::default(),
            acquisitions: Counter::default(),
            failures: Family::default(),
            contended: Counter::default(),
            takeovers: Counter::default(),
            races_lost: Counter::default(),
            renew_failures: Counter::default(),
            losses: Counter::default(),
            deadlocks: Counter::default(),
            wait: Family::new_with_constructor(wait_histogram),
            // 10 ms .. ~3 h: critical sections range from a cancellation to a
            // long-running leader.
            hold: Histogram::new(exponential_buckets(0.01, 2.0, 20)),
        };
        // Every outcome's series exists from the start.
        for outcome in OUTCOMES {
            let _ = metrics.wait.get_or_create(&OutcomeLabel { outcome });
        }
        metrics
    }
}

impl Metrics {
    /// Registers every series under the `lease_lock` prefix.
    pub fn register(&self, registry: &mut Registry) {
        self.register_with_prefix(registry, "lease_lock");
    }

    /// Registers every series under `prefix` instead (a service exposing
    /// the lock under its own names, e.g. the gateway's `gateway_lock`).
    pub fn register_with_prefix(&self, registry: &mut Registry, prefix: &str) {
        let r = registry.sub_registry_with_prefix(prefix);
        r.register(
            "acquire_attempts",
            "Calls to acquire or try_acquire",
            self.attempts.clone(),
        );
        r.register("acquisitions", "Locks acquired", self.acquisitions.clone());
        r.register(
            "acquire_failures",
            "Acquisitions that failed, by reason",
            self.failures.clone(),
        );
        r.register(
            "contended",
            "Acquisitions that found the lease held by another holder",
            self.contended.clone(),
        );
        r.register(
            "takeovers",
            "Expired leases taken over from another holder",
            self.takeovers.clone(),
        );
        r.register(
            "races_lost",
            "Takeover writes refused because another waiter changed the lease first \
             (each a wasted request; a crowd of waiters takes turns to keep this low)",
            self.races_lost.clone(),
        );
        r.register(
            "renew_failures",
            "Renewal requests that failed (the guard retries until its renew deadline)",
            self.renew_failures.clone(),
        );
        r.register(
            "losses",
            "Guards that lost their lease before releasing it",
            self.losses.clone(),
        );
        r.register(
            "deadlocks",
            "Acquisitions refused because they would close a wait-for cycle",
            self.deadlocks.clone(),
        );
        r.register_with_unit(
            "wait_duration",
            "Time from the start of an acquisition attempt to its end, by outcome",
            Unit::Seconds,
            self.wait.clone(),
        );
        r.register_with_unit(
            "hold_duration",
            "Time a lock was held, until release or loss",
            Unit::Seconds,
            self.hold.clone(),
        );
    }

    pub(crate) fn failed(&self, reason: &'static str) {
        self.failures.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub(crate) fn waited(&self, outcome: &'static str, d: Duration) {
        self.wait
            .get_or_create(&OutcomeLabel { outcome })
            .observe(d.as_secs_f64());
    }

    pub(crate) fn held(&self, d: Duration) {
        self.hold.observe(d.as_secs_f64());
    }

    /// Total `acquisitions_total` so far (for tests and benchmarks).
    pub fn acquisitions(&self) -> u64 {
        self.acquisitions.get()
    }

    /// Total `takeovers_total` so far.
    pub fn takeovers(&self) -> u64 {
        self.takeovers.get()
    }

    /// Total `races_lost_total` so far.
    pub fn races_lost(&self) -> u64 {
        self.races_lost.get()
    }

    /// Total `losses_total` so far.
    pub fn losses(&self) -> u64 {
        self.losses.get()
    }

    /// Total `deadlocks_total` so far.
    pub fn deadlocks(&self) -> u64 {
        self.deadlocks.get()
    }

    /// Total `acquire_failures_total{reason}` so far.
    pub fn failures(&self, reason: &'static str) -> u64 {
        self.failures.get_or_create(&ReasonLabel { reason }).get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn every_series_is_exposed_under_the_lease_lock_prefix() {
        let metrics = Metrics::default();
        metrics.failed("timeout");
        metrics.waited("acquired", Duration::from_millis(5));
        metrics.waited("timeout", Duration::from_secs(30));
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for series in [
            "lease_lock_acquire_attempts_total",
            "lease_lock_acquisitions_total",
            "lease_lock_acquire_failures_total{reason=\"timeout\"} 1",
            "lease_lock_contended_total",
            "lease_lock_takeovers_total",
            "lease_lock_races_lost_total",
            "lease_lock_renew_failures_total",
            "lease_lock_losses_total",
            "lease_lock_deadlocks_total",
            "lease_lock_wait_duration_seconds_count{outcome=\"acquired\"} 1",
            "lease_lock_wait_duration_seconds_count{outcome=\"timeout\"} 1",
            "lease_lock_wait_duration_seconds_count{outcome=\"error\"} 0",
            "lease_lock_hold_duration_seconds_count 0",
        ] {
            assert!(text.contains(series), "{series} missing in\n{text}");
        }
    }

    #[test]
    fn a_caller_chosen_prefix_names_every_series() {
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register_with_prefix(&mut registry, "gateway_lock");
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(text.contains("gateway_lock_acquisitions_total 0"), "{text}");
        assert!(!text.contains("lease_lock_"), "{text}");
    }
}
