//! TTL cleanup: deleting the states of tasks nobody touched for a long time.
//!
//! The rule it keeps: each delete names the version the cleanup saw, so a state
//! touched between the LIST and the DELETE is kept (409), never lost; and a
//! state with work in flight (`InProgress`, or an unfinished operation
//! journal) is never deleted, however old.

use std::time::Duration;

use jiff::SignedDuration;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::codec::SchemaOrigin;
use crate::schema::TaskStatus;
use crate::store::StateStore;
use crate::{Error, Result};

/// When and what TTL cleanup deletes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TtlPolicy {
    /// Time between cleanup passes.
    pub interval: Duration,
    /// A state untouched (by `last_update`) for this long is deleted unless
    /// it is `InProgress` or has an unfinished operation journal.
    pub ttl: Duration,
}

impl Default for TtlPolicy {
    /// Every 6 h, states untouched for 7 days: cleanup is housekeeping, so it
    /// runs rarely (one LIST per pass) and keeps a week for investigation.
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(6 * 3600),
            ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// What one cleanup pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// States deleted.
    pub deleted: usize,
    /// Expired states kept because they are `InProgress` or have an
    /// unfinished operation journal.
    pub kept_in_progress: usize,
    /// Expired states kept because they changed after the LIST (409 on delete).
    pub kept_changed: usize,
    /// States kept because they are unreadable or of a newer schema (never ours to delete).
    pub kept_unowned: usize,
    /// Deletes that failed for another reason (retried next pass).
    pub failed: usize,
}

impl StateStore {
    /// One cleanup pass: one LIST, then a conditional DELETE per expired state.
    pub async fn cleanup_expired(&self, ttl: Duration) -> Result<CleanupReport> {
        let started = Instant::now();
        let result = self.cleanup_pass(ttl).await;
        self.observe("cleanup", started, result.as_ref().err());
        result
    }

    async fn cleanup_pass(&self, ttl: Duration) -> Result<CleanupReport> {
        let ttl = SignedDuration::try_from(ttl).unwrap_or(SignedDuration::MAX);
        let mut report = CleanupReport::default();
        for snapshot in self.list().await? {
            let state = &snapshot.state;
            let idle = self.clock().now().duration_since(state.last_update);
            if idle < ttl {
                continue;
            }
            if !matches!(
                snapshot.origin,
                SchemaOrigin::Current | SchemaOrigin::Migrated { .. }
            ) {
                report.kept_unowned += 1;
                continue;
            }
            // An operation in flight is kept whatever the status says: its journal
            // is what the recovery reconciler finishes or rolls back from.
            let in_flight = state
                .active_operation
                .as_ref()
                .is_some_and(|j| !j.is_finished());
            if state.status == TaskStatus::InProgress || in_flight {
                report.kept_in_progress += 1;
                continue;
            }
            match self
                .delete(&state.task_id, &snapshot.resource_version)
                .await
            {
                Ok(true) => {
                    report.deleted += 1;
                    self.metrics().cleanup_deletions.inc();
                    info!(task_id = %state.task_id, idle_hours = idle.as_hours(), "expired state deleted");
                }
                Ok(false) => {}
                Err(Error::Conflict { .. }) => report.kept_changed += 1,
                Err(e) => {
                    report.failed += 1;
                    warn!(task_id = %state.task_id, error = %e, "could not delete expired state");
                }
            }
        }
        Ok(report)
    }
}

/// Runs [`StateStore::cleanup_expired`] every `policy.interval` until
/// `cancel` fires, which also stops a pass in progress. A failed pass is
/// logged and retried at the next interval.
pub fn spawn_ttl_cleanup(
    store: StateStore,
    policy: TtlPolicy,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(policy.interval.max(Duration::from_secs(1)));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                _ = ticker.tick() => {}
            }
            // A pass stopped half-way leaves nothing half-done (each delete is
            // conditional and stands alone), so shutdown need not wait for it.
            let result = tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                result = store.cleanup_expired(policy.ttl) => result,
            };
            match result {
                Ok(report) => info!(?report, "TTL cleanup pass done"),
                Err(e) => warn!(error = %e, "TTL cleanup pass failed; retrying next interval"),
            }
        }
    })
}
