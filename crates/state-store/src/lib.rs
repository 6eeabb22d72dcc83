#![doc = include_str!("../README.md")]
//!
//! # Modules
//!
//! - [`backend`]: the [`StateBackend`] trait; [`memory`] and [`kube`] implement it,
//!   [`flaky`] wraps any backend with injected faults.
//! - [`store`]: [`StateStore`], the compare-and-swap update loop and the operations.
//! - [`schema`] and [`journal`]: the `v1` document and the operation journal.
//! - [`codec`]: size management, schema migration, quarantine.
//! - [`repair`]: repairs of a readable state that breaks one of its own rules.
//! - [`ttl`]: cleanup of old states. [`metrics`]: Prometheus metrics.

pub mod backend;
pub mod clock;
pub mod codec;
mod error;
pub mod flaky;
pub mod journal;
pub mod kube;
pub mod memory;
pub mod metrics;
pub mod naming;
pub mod repair;
pub mod schema;
pub mod store;
pub mod ttl;

pub use backend::{
    Document, DocumentMeta, DocumentPage, MetadataPage, StateBackend, StoredDocument,
};
pub use clock::Clock;
pub use codec::{SchemaOrigin, SizeLimits};
pub use error::{Error, Result};
pub use flaky::{FaultConfig, FlakyBackend};
pub use journal::{FencingToken, JournalStep, OperationJournal, OperationKind, Step, StepStatus};
pub use kube::ConfigMapBackend;
pub use memory::MemoryBackend;
pub use metrics::StateStoreMetrics;
pub use naming::{state_name, validate_selector, validate_task_id};
pub use repair::{RepairKind, RepairRecord};
pub use schema::{
    CancellationOutcome, CancellationRecord, CompactionRecord, DeliveryRecorded, ErrorMessage,
    FeedbackEntry, HeadRecord, IssueType, RemediationState, SCHEMA_VERSION, Severity, Supersession,
    TaskStatus,
};
pub use store::{Snapshot, StatePage, StateRecovery, StateStore, StoreConfig};
pub use ttl::{CleanupReport, TtlPolicy, spawn_ttl_cleanup};

impl resilience::Transient for Error {
    fn is_transient(&self) -> bool {
        Error::is_transient(self)
    }

    fn retry_after(&self) -> Option<std::time::Duration> {
        Error::retry_after(self)
    }
}
