//! TTL cleanup: deleting the states of tasks nobody touched for a long time.
//!
//! The rule it keeps: each delete names the version the cleanup saw, so a state
//! touched between the read and the DELETE is kept (409), never lost; and a
//! state with work in flight (`InProgress`, or an unfinished operation
//! journal) is never deleted, however old.
//!
//! A pass scales to namespaces of many thousands of states: it lists
//! metadata only, a page at a time (no payloads on the wire, none held), and
//! judges age and status from the annotations every write mirrors them into
//! ([`ANNOTATION_LAST_UPDATE`], [`ANNOTATION_STATUS`],
//! [`ANNOTATION_OPERATION_ACTIVE`]). Only a candidate — one the annotations
//! call expired and idle, or whose annotations are missing (written before
//! they were mirrored) — is read whole, decoded off the runtime thread, and
//! judged again on the state itself before its conditional DELETE. The
//! annotations can only make a pass skip a state or read one; never delete.

use std::time::Duration;

use jiff::SignedDuration;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backend::DocumentMeta;
use crate::codec::{self, SchemaOrigin};
use crate::naming::{
    ANNOTATION_LAST_UPDATE, ANNOTATION_OPERATION_ACTIVE, ANNOTATION_STATUS, KEY_STATE,
    KEY_STATE_GZIP, LABEL_TASK_ID, state_name, state_selector, validate_task_id,
};
use crate::schema::TaskStatus;
use crate::store::StateStore;
use crate::{Error, Result};

/// Documents per page of a cleanup pass's metadata-only LIST.
const CLEANUP_PAGE_SIZE: u32 = 500;

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
    /// State documents listed (metadata only).
    pub examined: usize,
    /// Candidates read whole to be judged on the state itself.
    pub read: usize,
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
    /// One cleanup pass: a metadata-only LIST, page by page; a GET of each
    /// candidate; a conditional DELETE of each state expired on its own
    /// terms. Every call is bounded by [`StoreConfig::call_timeout`](crate::StoreConfig::call_timeout).
    pub async fn cleanup_expired(&self, ttl: Duration) -> Result<CleanupReport> {
        let started = Instant::now();
        let result = self.cleanup_pass(ttl).await;
        self.observe("cleanup", started, result.as_ref().err());
        result
    }

    async fn cleanup_pass(&self, ttl: Duration) -> Result<CleanupReport> {
        let ttl = SignedDuration::try_from(ttl).unwrap_or(SignedDuration::MAX);
        let selector = state_selector();
        let mut report = CleanupReport::default();
        let mut token = None;
        loop {
            let page = self
                .bounded(
                    self.backend()
                        .list_metadata(&selector, CLEANUP_PAGE_SIZE, token),
                )
                .await?;
            for meta in &page.items {
                report.examined += 1;
                let Some(task_id) = task_of(meta) else {
                    continue;
                };
                match self.judge_metadata(meta, ttl) {
                    Glance::Recent => {}
                    Glance::InProgress => {
                        report.kept_in_progress += 1;
                        self.metrics().skipped_cleanup("in_progress");
                    }
                    Glance::Candidate => self.clean_candidate(task_id, ttl, &mut report).await,
                }
            }
            match page.continue_token {
                Some(next) => token = Some(next),
                None => return Ok(report),
            }
        }
    }

    /// What the mirrored annotations say about a state, as of now.
    fn judge_metadata(&self, meta: &DocumentMeta, ttl: SignedDuration) -> Glance {
        let annotations = &meta.annotations;
        let Some(last_update) = annotations
            .get(ANNOTATION_LAST_UPDATE)
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        else {
            return Glance::Candidate;
        };
        if self.clock().now().duration_since(last_update) < ttl {
            return Glance::Recent;
        }
        let in_progress = annotations.get(ANNOTATION_STATUS).map(String::as_str)
            == Some(TaskStatus::InProgress.as_str());
        if in_progress || annotations.contains_key(ANNOTATION_OPERATION_ACTIVE) {
            return Glance::InProgress;
        }
        Glance::Candidate
    }

    /// Reads a candidate whole and deletes it if the state itself says it
    /// expired, conditional on the version read.
    async fn clean_candidate(
        &self,
        task_id: &str,
        ttl: SignedDuration,
        report: &mut CleanupReport,
    ) {
        report.read += 1;
        let Ok(name) = state_name(task_id) else {
            return;
        };
        let stored = match self.bounded(self.backend().get(&name)).await {
            Ok(Some(stored)) => stored,
            Ok(None) => return,
            Err(e) => {
                report.failed += 1;
                warn!(task_id, error = %e, "could not read a TTL cleanup candidate");
                return;
            }
        };
        let Some((resource_version, decoded)) = self.decode_candidate(task_id, stored).await else {
            report.failed += 1;
            return;
        };
        let state = &decoded.state;
        let idle = self.clock().now().duration_since(state.last_update);
        if idle < ttl {
            return;
        }
        let unowned = match &decoded.origin {
            SchemaOrigin::Current | SchemaOrigin::Migrated { .. } => None,
            SchemaOrigin::Rebuilt { .. } => Some("unreadable"),
            SchemaOrigin::Newer { .. } => Some("newer_version"),
            SchemaOrigin::Undecodable { .. } => Some("undecodable"),
        };
        if let Some(reason) = unowned {
            // Never deleted silently: what this build cannot read may be all
            // that is left of a task, or a newer build's. An operator decides.
            report.kept_unowned += 1;
            self.metrics().skipped_cleanup(reason);
            warn!(
                task_id,
                config_map = %name,
                reason,
                idle_hours = idle.as_hours(),
                "state past its TTL kept: cleanup never deletes a state it cannot read or may not write; delete it by hand once checked"
            );
            return;
        }
        // An operation in flight is kept whatever the status says: its journal
        // is what the recovery reconciler finishes or rolls back from.
        let in_flight = state
            .active_operation
            .as_ref()
            .is_some_and(|j| !j.is_finished());
        if state.status == TaskStatus::InProgress || in_flight {
            report.kept_in_progress += 1;
            self.metrics().skipped_cleanup("in_progress");
            return;
        }
        match self.delete(task_id, &resource_version).await {
            Ok(true) => {
                report.deleted += 1;
                self.metrics().cleanup_deletions.inc();
                info!(
                    task_id,
                    idle_hours = idle.as_hours(),
                    "expired state deleted"
                );
            }
            Ok(false) => {}
            Err(Error::Conflict { .. }) => {
                report.kept_changed += 1;
                self.metrics().skipped_cleanup("changed");
            }
            Err(e) => {
                report.failed += 1;
                warn!(task_id, error = %e, "could not delete expired state");
            }
        }
    }
}

impl StateStore {
    /// Decodes a candidate: up to 1 MiB of JSON, or a gzip of it, is decoded
    /// off the runtime's threads; a small plain payload (the common case)
    /// where it is.
    async fn decode_candidate(
        &self,
        task_id: &str,
        stored: crate::StoredDocument,
    ) -> Option<(String, codec::Decoded)> {
        let max = self.config().max_iterations;
        let small = !stored.document.binary_data.contains_key(KEY_STATE_GZIP)
            && stored
                .document
                .data
                .get(KEY_STATE)
                .is_none_or(|json| json.len() <= INLINE_DECODE_BYTES);
        if small {
            let decoded = codec::decode(task_id, max, &stored);
            return Some((stored.resource_version, decoded));
        }
        let task = task_id.to_owned();
        match tokio::task::spawn_blocking(move || {
            let decoded = codec::decode(&task, max, &stored);
            (stored.resource_version, decoded)
        })
        .await
        {
            Ok(decoded) => Some(decoded),
            Err(e) => {
                warn!(task_id, error = %e, "decoding a TTL cleanup candidate failed");
                None
            }
        }
    }
}

/// Largest plain payload a cleanup pass decodes on the runtime thread
/// (well under a millisecond of work).
const INLINE_DECODE_BYTES: usize = 64 * 1024;

/// A state's age and status as its annotations tell them.
enum Glance {
    /// Touched within the TTL.
    Recent,
    /// Expired, but work is in flight.
    InProgress,
    /// Expired and idle, or the annotations do not say: read it whole.
    Candidate,
}

/// The task id of a listed document, if its label is valid and names it.
fn task_of(meta: &DocumentMeta) -> Option<&str> {
    let task_id = meta.labels.get(LABEL_TASK_ID)?;
    let named = validate_task_id(task_id).is_ok()
        && state_name(task_id).is_ok_and(|name| name == meta.name);
    if !named {
        warn!(name = %meta.name, "state document whose task-id label does not match its name; skipped");
    }
    named.then_some(task_id.as_str())
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
