//! Prometheus metrics of the state store.
//!
//! The rule it keeps: labels are low-cardinality (operation, result, reason),
//! never a task id.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::Error;

/// Labels of per-operation metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// `get`, `update`, `delete`, `list`, `cleanup`.
    pub operation: &'static str,
    /// `ok` or an error class (see [`Error`]'s variants, snake_case).
    pub result: &'static str,
}

/// Labels of the duration histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    /// `get`, `update`, `delete`, `list`, `cleanup`.
    pub operation: &'static str,
}

/// Labels of the retry counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    /// `conflict`, `already_exists`, `not_found`, `transient`, `ambiguous_write`.
    pub reason: &'static str,
}

/// Labels of the read-only document counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadOnlyLabels {
    /// `newer_version` or `undecodable`.
    pub reason: &'static str,
}

/// Labels of the repair counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RepairLabels {
    /// What was repaired ([`RepairKind::as_str`](crate::RepairKind::as_str)).
    pub kind: &'static str,
}

/// Labels of the migration counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MigrationLabels {
    /// The schema version migrated from (`v0`).
    pub from: String,
}

/// Labels of the TTL skip counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SkipLabels {
    /// Why a state past its TTL was not deleted: `unreadable`,
    /// `newer_version`, `undecodable` (never ours to delete), `in_progress`
    /// (work in flight), `changed` (written since it was read).
    pub reason: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The store's metrics. Cheap to clone (every clone updates the same series).
#[derive(Clone, Debug)]
pub struct StateStoreMetrics {
    pub(crate) operations: Family<OperationLabels, Counter>,
    pub(crate) conflicts: Counter,
    pub(crate) retries: Family<RetryLabels, Counter>,
    pub(crate) duration: HistogramFamily<DurationLabels>,
    pub(crate) document_size: Histogram,
    pub(crate) compactions: Counter,
    pub(crate) compressions: Counter,
    pub(crate) quarantines: Counter,
    pub(crate) cleanup_deletions: Counter,
    pub(crate) read_only: Family<ReadOnlyLabels, Counter>,
    pub(crate) repairs: Family<RepairLabels, Counter>,
    pub(crate) migrations: Family<MigrationLabels, Counter>,
    pub(crate) cleanup_skips: Family<SkipLabels, Counter>,
}

impl Default for StateStoreMetrics {
    fn default() -> Self {
        let metrics = Self {
            operations: Family::default(),
            conflicts: Counter::default(),
            retries: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            // 1 KiB … 1 MiB.
            document_size: Histogram::new(exponential_buckets(1024.0, 2.0, 11)),
            compactions: Counter::default(),
            compressions: Counter::default(),
            quarantines: Counter::default(),
            cleanup_deletions: Counter::default(),
            read_only: Family::default(),
            repairs: Family::default(),
            migrations: Family::default(),
            cleanup_skips: Family::default(),
        };
        // The repair series exist from the start, at zero.
        for kind in crate::RepairKind::ALL {
            let _ = metrics.repairs.get_or_create(&RepairLabels {
                kind: kind.as_str(),
            });
        }
        metrics
    }
}

impl StateStoreMetrics {
    /// Registers every metric under the `state_store` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("state_store");
        r.register(
            "operations",
            "State store operations by operation and result",
            self.operations.clone(),
        );
        r.register(
            "conflicts",
            "Writes rejected because the document changed since it was read (409)",
            self.conflicts.clone(),
        );
        r.register(
            "retries",
            "Update attempts repeated, by reason",
            self.retries.clone(),
        );
        r.register_with_unit(
            "operation_duration",
            "Duration of state store operations, retries included",
            Unit::Seconds,
            self.duration.clone(),
        );
        r.register_with_unit(
            "document_size",
            "Encoded size of written state documents",
            Unit::Bytes,
            self.document_size.clone(),
        );
        r.register(
            "compactions",
            "Feedback history compactions",
            self.compactions.clone(),
        );
        r.register(
            "compressions",
            "Writes stored gzip-compressed",
            self.compressions.clone(),
        );
        r.register(
            "quarantines",
            "Unreadable payloads quarantined and rebuilt",
            self.quarantines.clone(),
        );
        r.register(
            "cleanup_deletions",
            "States deleted by TTL cleanup",
            self.cleanup_deletions.clone(),
        );
        r.register(
            "repairs",
            "States that broke one of their own rules, repaired (and recorded in them) on write, by kind",
            self.repairs.clone(),
        );
        r.register(
            "migrations",
            "States migrated to the current schema on write, by the version migrated from",
            self.migrations.clone(),
        );
        r.register(
            "cleanup_skips",
            "States past their TTL that cleanup did not delete, by reason",
            self.cleanup_skips.clone(),
        );
        r.register(
            "read_only_documents",
            "Reads of states this build may not write (a newer schema version, or valid JSON it cannot decode), by reason",
            self.read_only.clone(),
        );
    }

    pub(crate) fn observe(&self, operation: &'static str, result: &'static str, seconds: f64) {
        self.operations
            .get_or_create(&OperationLabels { operation, result })
            .inc();
        self.duration
            .get_or_create(&DurationLabels { operation })
            .observe(seconds);
    }

    /// Counts a read of a state this build may not write, if `origin` says so.
    pub(crate) fn read(&self, origin: &crate::SchemaOrigin) {
        let reason = match origin {
            crate::SchemaOrigin::Newer { .. } => "newer_version",
            crate::SchemaOrigin::Undecodable { .. } => "undecodable",
            _ => return,
        };
        self.read_only
            .get_or_create(&ReadOnlyLabels { reason })
            .inc();
    }

    pub(crate) fn repaired(&self, kind: crate::RepairKind) {
        self.repairs
            .get_or_create(&RepairLabels {
                kind: kind.as_str(),
            })
            .inc();
    }

    pub(crate) fn migrated(&self, from: &str) {
        // Versions are ours (`v0`); anything else is folded, so a document
        // cannot mint series.
        let from = if from.len() <= 8 && from.bytes().all(|b| b.is_ascii_alphanumeric()) {
            from.to_owned()
        } else {
            "other".to_owned()
        };
        self.migrations
            .get_or_create(&MigrationLabels { from })
            .inc();
    }

    pub(crate) fn skipped_cleanup(&self, reason: &'static str) {
        self.cleanup_skips
            .get_or_create(&SkipLabels { reason })
            .inc();
    }

    pub(crate) fn retry(&self, reason: &'static str) {
        self.retries.get_or_create(&RetryLabels { reason }).inc();
    }
}

fn duration_histogram() -> Histogram {
    // 1 ms … ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// A low-cardinality name for an error.
pub(crate) fn error_label(error: &Error) -> &'static str {
    match error {
        Error::InvalidTaskId { .. } => "invalid_task_id",
        Error::InvalidSelector { .. } => "invalid_selector",
        Error::Config(_) => "config",
        Error::NotFound { .. } => "not_found",
        Error::Conflict { .. } => "conflict",
        Error::AlreadyExists { .. } => "already_exists",
        Error::Api { .. } => "api_error",
        Error::Transport(_) => "transport_error",
        Error::Client(_) => "client_error",
        Error::MaxIterationsReached { .. } => "max_iterations_reached",
        Error::FencingTokenRefused { .. } => "fencing_token_refused",
        Error::TooLarge { .. } => "too_large",
        Error::UnsupportedVersion { .. } => "unsupported_version",
        Error::Undecodable { .. } => "undecodable",
        Error::Invalid { .. } => "invalid",
        Error::Journal { .. } => "journal",
        Error::Encode { .. } => "encode",
        Error::RetriesExhausted { .. } => "retries_exhausted",
        Error::OutcomeUnknown { .. } => "outcome_unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_registered_under_the_state_store_prefix() {
        let metrics = StateStoreMetrics::default();
        metrics.observe("update", "ok", 0.01);
        metrics.retry("conflict");
        metrics.conflicts.inc();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for name in [
            "state_store_operations_total{operation=\"update\",result=\"ok\"} 1",
            "state_store_conflicts_total 1",
            "state_store_retries_total{reason=\"conflict\"} 1",
            "state_store_operation_duration_seconds_count{operation=\"update\"} 1",
            "state_store_document_size_bytes_count 0",
            "state_store_compactions_total 0",
            "state_store_compressions_total 0",
            "state_store_quarantines_total 0",
            "state_store_cleanup_deletions_total 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
