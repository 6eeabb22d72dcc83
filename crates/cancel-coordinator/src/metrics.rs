//! Prometheus metrics of the saga and the coordinator.
//!
//! The rule it keeps: labels are low-cardinality (outcome, how, step,
//! reason), never a task, run or pull request.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use resilience::Transient;

use crate::Error;
use crate::saga::{Outcome, Report, RunOutcome, RunReport};

/// Labels of the cancellation counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `cancelled`, `nothing_to_cancel`, `already_handled`, `failed`, or an
    /// error class (`lock`, `state`, `kubernetes`, `lock_lost`, …).
    pub outcome: &'static str,
}

/// Labels of the runs-cancelled counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HowLabels {
    /// `graceful` (stopped on SIGTERM) or `forced` (grace 0 after the deadline).
    pub how: &'static str,
}

/// Labels of the per-step histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    /// `lock`, `read`, `decide`, `select`, `journal`, `cancel`, `record`,
    /// `labels`, `finish`.
    pub step: &'static str,
}

/// Labels of the rejected-requests counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `queue_full`, `invalid`, `shutting_down`, `expired`.
    pub reason: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Metrics of the cancellation saga and coordinator. Cheap to clone (every
/// clone updates the same series).
#[derive(Clone, Debug)]
pub struct Metrics {
    pub(crate) cancellations: Family<OutcomeLabels, Counter>,
    pub(crate) runs_cancelled: Family<HowLabels, Counter>,
    pub(crate) duration: Histogram,
    pub(crate) step_duration: HistogramFamily<StepLabels>,
    pub(crate) resumes: Counter,
    pub(crate) rollbacks: Counter,
    pub(crate) stuck: Counter,
    pub(crate) queue_depth: Gauge,
    pub(crate) active: Gauge,
    pub(crate) queue_wait: Histogram,
    pub(crate) coalesced: Counter,
    pub(crate) rejected: Family<ReasonLabels, Counter>,
    pub(crate) retried: Counter,
}

/// Every `outcome` of `cancellations`: the reports' and the error classes'.
const OUTCOMES: [&str; 17] = [
    "cancelled",
    "nothing_to_cancel",
    "already_handled",
    "failed",
    "rolled_back",
    "kubernetes",
    "circuit_open",
    "invalid",
    "config",
    "lock_busy",
    "lock",
    "lock_lost",
    "state",
    "labels",
    "stuck",
    "queue_full",
    "shutting_down",
];

/// Every `reason` of `rejected_requests`.
const REJECTIONS: [&str; 4] = ["shutting_down", "invalid", "queue_full", "expired"];

impl Default for Metrics {
    /// Every known label value starts at 0, so that `increase()` sees the
    /// first event of each (a series that appears at 1 has nothing to
    /// increase from) and every family is in `/metrics` from the start.
    fn default() -> Self {
        let metrics = Self::empty();
        for outcome in OUTCOMES {
            let _ = metrics
                .cancellations
                .get_or_create(&OutcomeLabels { outcome });
        }
        for how in ["graceful", "forced"] {
            let _ = metrics.runs_cancelled.get_or_create(&HowLabels { how });
        }
        for reason in REJECTIONS {
            let _ = metrics.rejected.get_or_create(&ReasonLabels { reason });
        }
        metrics
    }
}

impl Metrics {
    fn empty() -> Self {
        Self {
            cancellations: Family::default(),
            runs_cancelled: Family::default(),
            duration: Histogram::new(seconds_buckets()),
            step_duration: Family::new_with_constructor(|| Histogram::new(seconds_buckets())),
            resumes: Counter::default(),
            rollbacks: Counter::default(),
            stuck: Counter::default(),
            queue_depth: Gauge::default(),
            active: Gauge::default(),
            queue_wait: Histogram::new(seconds_buckets()),
            coalesced: Counter::default(),
            rejected: Family::default(),
            retried: Counter::default(),
        }
    }
}

/// 5 ms … ~82 s: a cancellation is milliseconds without pods, tens of
/// seconds with a pod that ignores SIGTERM.
fn seconds_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.005, 2.0, 15)
}

impl Metrics {
    /// Registers every metric under the `cancel_coordinator` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("cancel_coordinator");
        r.register(
            "cancellations",
            "Cancellation operations by outcome",
            self.cancellations.clone(),
        );
        r.register(
            "runs_cancelled",
            "Runs verified gone, by how they stopped",
            self.runs_cancelled.clone(),
        );
        r.register_with_unit(
            "cancellation_duration",
            "From taking a request to the operation's end",
            Unit::Seconds,
            self.duration.clone(),
        );
        r.register_with_unit(
            "step_duration",
            "Duration of each saga step",
            Unit::Seconds,
            self.step_duration.clone(),
        );
        r.register(
            "journal_resumes",
            "Unfinished journals of another holder resumed",
            self.resumes.clone(),
        );
        r.register(
            "rollbacks",
            "Resumed operations rolled back before they stopped a run",
            self.rollbacks.clone(),
        );
        r.register(
            "stuck_runs",
            "Runs that could not be stopped and were flagged for intervention",
            self.stuck.clone(),
        );
        r.register(
            "queue_depth",
            "Requests waiting in the coordinator's queue",
            self.queue_depth.clone(),
        );
        r.register(
            "active",
            "Cancellations being worked on",
            self.active.clone(),
        );
        r.register_with_unit(
            "queue_wait",
            "Time requests waited in the queue",
            Unit::Seconds,
            self.queue_wait.clone(),
        );
        r.register(
            "coalesced_requests",
            "Requests folded into one already queued or running for their task",
            self.coalesced.clone(),
        );
        r.register(
            "rejected_requests",
            "Requests not taken, by reason",
            self.rejected.clone(),
        );
        r.register(
            "retried_operations",
            "Operations that failed transiently and were queued again",
            self.retried.clone(),
        );
    }

    /// Cancellations that ended with `outcome` so far.
    pub fn cancellations(&self, outcome: &'static str) -> u64 {
        self.cancellations
            .get_or_create(&OutcomeLabels { outcome })
            .get()
    }

    /// Runs verified gone, `graceful` or `forced`.
    pub fn runs_cancelled(&self, how: &'static str) -> u64 {
        self.runs_cancelled.get_or_create(&HowLabels { how }).get()
    }

    /// Operations rolled back so far.
    pub fn rollbacks(&self) -> u64 {
        self.rollbacks.get()
    }

    /// Journals resumed so far.
    pub fn journal_resumes(&self) -> u64 {
        self.resumes.get()
    }

    /// Requests coalesced so far.
    pub fn coalesced(&self) -> u64 {
        self.coalesced.get()
    }

    /// Requests rejected for `reason` so far.
    pub fn rejected(&self, reason: &'static str) -> u64 {
        self.rejected.get_or_create(&ReasonLabels { reason }).get()
    }

    pub(crate) fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub(crate) fn finished(&self, report: &Report, took: Duration) {
        let outcome = match report.outcome {
            Outcome::Cancelled => "cancelled",
            Outcome::NothingToCancel => "nothing_to_cancel",
            Outcome::AlreadyHandled => "already_handled",
            Outcome::Failed => "failed",
            Outcome::RolledBack => "rolled_back",
        };
        self.cancellations
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        self.duration.observe(took.as_secs_f64());
        for timing in &report.steps {
            self.step_duration
                .get_or_create(&StepLabels {
                    step: timing.step.as_str(),
                })
                .observe(timing.took.as_secs_f64());
        }
    }

    pub(crate) fn failed(&self, error: &Error) {
        self.cancellations
            .get_or_create(&OutcomeLabels {
                outcome: error_class(error),
            })
            .inc();
    }

    pub(crate) fn run_cancelled(&self, report: &RunReport) {
        let how = match report.outcome {
            RunOutcome::Graceful => "graceful",
            RunOutcome::Forced => "forced",
            _ => return,
        };
        self.runs_cancelled.get_or_create(&HowLabels { how }).inc();
    }
}

/// A low-cardinality name for an error.
pub(crate) fn error_class(error: &Error) -> &'static str {
    match error {
        Error::Conflict { .. }
        | Error::Api { .. }
        | Error::Transport { .. }
        | Error::InvalidRun { .. } => "kubernetes",
        Error::CircuitOpen { .. } => "circuit_open",
        Error::InvalidRequest { .. } => "invalid",
        Error::Config(_) => "config",
        Error::Lock(e) if e.is_transient() => "lock_busy",
        Error::Lock(_) => "lock",
        Error::LockLost { .. } => "lock_lost",
        Error::State(_) => "state",
        Error::Labels(_) => "labels",
        Error::Stuck { .. } => "stuck",
        Error::QueueFull { .. } => "queue_full",
        Error::ShuttingDown => "shutting_down",
    }
}
