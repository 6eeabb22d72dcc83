//! Prometheus metrics of the reconciler.
//!
//! The rule it keeps: labels are low-cardinality (a finding's kind, an
//! action, a reason), never a task id.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Labels of the per-kind counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// A row of the decision table (see [`Kind::as_str`](crate::Kind::as_str)).
    pub kind: &'static str,
}

/// Labels of the skipped-cycles counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `not_leader`, `leadership_lost`, `failed`.
    pub reason: &'static str,
}

/// The reconciler's metrics. Cheap to clone (every clone updates the same
/// series).
#[derive(Clone, Debug)]
pub struct Metrics {
    pub(crate) cycle_duration: Histogram,
    pub(crate) found: Family<KindLabels, Counter>,
    pub(crate) repaired: Family<KindLabels, Counter>,
    pub(crate) handed: Family<KindLabels, Counter>,
    pub(crate) flagged: Family<KindLabels, Counter>,
    pub(crate) flagged_tasks: Gauge,
    pub(crate) skipped: Family<ReasonLabels, Counter>,
    pub(crate) cycles: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            // 50 ms … ~100 s.
            cycle_duration: Histogram::new(exponential_buckets(0.05, 2.0, 12)),
            found: Family::default(),
            repaired: Family::default(),
            handed: Family::default(),
            flagged: Family::default(),
            flagged_tasks: Gauge::default(),
            skipped: Family::default(),
            cycles: Counter::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric under the `recovery` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("recovery");
        r.register_with_unit(
            "cycle_duration",
            "Duration of reconciliation cycles",
            Unit::Seconds,
            self.cycle_duration.clone(),
        );
        r.register(
            "cycles",
            "Reconciliation cycles completed",
            self.cycles.clone(),
        );
        r.register(
            "inconsistencies_found",
            "Inconsistencies found, by kind",
            self.found.clone(),
        );
        r.register(
            "inconsistencies_repaired",
            "Inconsistencies repaired by the reconciler itself, by kind",
            self.repaired.clone(),
        );
        r.register(
            "inconsistencies_handed",
            "Inconsistencies handed to the coordinator (cancellations, resumed journals), by kind",
            self.handed.clone(),
        );
        r.register(
            "inconsistencies_flagged",
            "Inconsistencies flagged for manual intervention, by kind",
            self.flagged.clone(),
        );
        r.register(
            "flagged_tasks",
            "Tasks flagged needs-intervention, as of the last cycle",
            self.flagged_tasks.clone(),
        );
        r.register(
            "cycles_skipped",
            "Cycles not run or cut short, by reason",
            self.skipped.clone(),
        );
    }

    /// Found so far of `kind`.
    pub fn found(&self, kind: crate::Kind) -> u64 {
        self.found
            .get_or_create(&KindLabels {
                kind: kind.as_str(),
            })
            .get()
    }

    pub(crate) fn count(&self, family: &Family<KindLabels, Counter>, kind: crate::Kind) {
        family
            .get_or_create(&KindLabels {
                kind: kind.as_str(),
            })
            .inc();
    }

    pub(crate) fn skip(&self, reason: &'static str) {
        self.skipped.get_or_create(&ReasonLabels { reason }).inc();
    }
}
