//! The [`Workloads`] trait: what the cancellation saga needs of a task's agent
//! runs (CodeRuns and the pods that execute them), and the types it speaks.
//!
//! The rule it keeps: **a run is reported gone only when no pod of it exists
//! any more** — never because a delete was accepted, never because the run
//! object vanished while its pods still run (Tekton once recorded
//! PipelineRuns cancelled while their TaskRuns ran on, tektoncd/pipeline#2381).
//!
//! Implementations: [`MemoryWorkloads`](crate::MemoryWorkloads) (runs and
//! pods with the same lifecycle, on tokio time) and `KubeCodeRuns` (the
//! Kubernetes API over `DynamicObject`, so a user's own CodeRun-like CRD is
//! configured, not compiled in). Both pass one conformance suite.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::Result;

/// Label carrying a run's task id (so a task's runs are one LIST).
pub const LABEL_TASK_ID: &str = "supersede.dev/task-id";
/// Label carrying a run's agent role (`quality`, `testing`, `review`, …).
pub const LABEL_ROLE: &str = "supersede.dev/role";
/// Label on a run's pods naming the run (how the pods of a run are found by
/// default, besides their owner reference).
pub const LABEL_CODE_RUN: &str = "supersede.dev/code-run";
/// Annotation recording the intent to cancel: the head sha that superseded
/// the run. A stale run's late report can be recognised and ignored by it.
pub const ANNOTATION_SUPERSEDED_BY: &str = "supersede.dev/superseded-by";
/// Annotation: when the intent was recorded (RFC 3339).
pub const ANNOTATION_SUPERSEDED_AT: &str = "supersede.dev/superseded-at";
/// Annotation: the cancellation operation (journal id) that recorded the intent.
pub const ANNOTATION_CANCEL_OPERATION: &str = "supersede.dev/cancel-operation";
/// Annotation: the correlation id of the event that led to the cancellation.
pub const ANNOTATION_CORRELATION_ID: &str = "supersede.dev/correlation-id";
/// Annotation set on a run that cannot be cancelled without a human (a
/// foreign finalizer, a pod that will not die): why.
pub const ANNOTATION_NEEDS_INTERVENTION: &str = "supersede.dev/needs-intervention";

/// Phases of supersede's own CodeRun (a configured CRD may use others).
pub mod phase {
    /// Created, its pod not running yet.
    pub const PENDING: &str = "Pending";
    /// Its pod runs.
    pub const RUNNING: &str = "Running";
    /// Finished successfully.
    pub const SUCCEEDED: &str = "Succeeded";
    /// Finished unsuccessfully.
    pub const FAILED: &str = "Failed";
    /// Cancelled (its pods gone), kept for audit.
    pub const CANCELLED: &str = "Cancelled";
    /// The terminal ones: a run in one of them is never cancelled.
    pub const TERMINAL: [&str; 3] = [SUCCEEDED, FAILED, CANCELLED];
}

/// One agent run of a task, as read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// Object name.
    pub name: String,
    /// `metadata.uid`: deletes are conditional on it, so a run re-created
    /// under the same name is never deleted by mistake.
    pub uid: String,
    /// `metadata.resourceVersion`: the intent is written conditional on it.
    pub resource_version: String,
    /// The task it works for.
    pub task_id: String,
    /// The agent role (`quality`, `testing`, `review`, `deploy`, …).
    pub role: String,
    /// The commit it works on.
    pub head_sha: String,
    /// Its phase as the backend reports it (empty when not reported yet).
    pub phase: String,
    /// Whether that phase is terminal (finished, failed, cancelled): such a
    /// run is never touched.
    pub terminal: bool,
    /// `metadata.creationTimestamp`.
    pub created_at: Option<Timestamp>,
    /// The sha its intent annotation names, if a cancellation marked it.
    pub superseded_by: Option<String>,
    /// The cancellation operation whose intent it carries, if any.
    #[serde(default)]
    pub cancel_operation: Option<String>,
    /// When that intent was recorded.
    #[serde(default)]
    pub superseded_at: Option<Timestamp>,
    /// Whether its deletion has begun (`metadata.deletionTimestamp`).
    pub deleting: bool,
}

/// What a cancellation records on a run before it acts on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// The head sha that supersedes the run.
    pub superseded_by: String,
    /// The journal operation doing it.
    pub operation_id: String,
    /// Correlation id of the triggering event.
    pub correlation_id: Option<String>,
    /// When the intent was recorded.
    pub at: Timestamp,
}

/// How a run is cancelled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CancelMode {
    /// Delete the run with Foreground propagation: the garbage collector
    /// deletes its pods, which get SIGTERM and *their own* grace period
    /// (`terminationGracePeriodSeconds`), and the run object goes once they
    /// are gone. The saga force-deletes what is left after its deadline.
    #[default]
    Delete,
    /// Delete the run's pods with the saga's grace period, and keep the
    /// run, with `status.phase = Cancelled` and `supersededBy`, for audit (as
    /// Tekton keeps cancelled runs). The run's own controller must not start
    /// new pods for a run carrying the intent annotation.
    Stop,
}

impl fmt::Display for CancelMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Delete => "delete",
            Self::Stop => "stop",
        })
    }
}

/// What is left of a run being cancelled.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remains {
    /// Pods of the run that still exist (terminating or not).
    pub pods: Vec<String>,
    /// Whether the run object still exists (as far as the call that
    /// reported it looked: [`Workloads::wait_gone`] may watch pods only).
    pub run_exists: bool,
    /// Finalizers other than Kubernetes' own (`foregroundDeletion`,
    /// `orphan`) holding the deleted run object, as far as seen: never
    /// stripped by supersede; a run held by one is flagged for intervention.
    pub foreign_finalizers: Vec<String>,
    /// Pods held by finalizers after their containers stopped (the pod
    /// object stays until whoever set them removes them).
    pub pods_held_by_finalizers: Vec<String>,
}

impl Remains {
    /// No pod of the run exists: its work has stopped.
    pub fn pods_gone(&self) -> bool {
        self.pods.is_empty()
    }

    /// Whether cancelling is complete: no pod of the run exists, so its
    /// work has stopped. In [`CancelMode::Delete`] the run object's own
    /// removal is the garbage collector's (after its pods); a run object
    /// held by a foreign finalizer is reported where the backend sees it,
    /// and found by the recovery reconciler otherwise.
    pub fn done(&self, _mode: CancelMode) -> bool {
        self.pods_gone()
    }

    /// A short human description of what is left (for journal details and
    /// intervention annotations).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.pods.is_empty() {
            parts.push(format!("pods still exist: {}", self.pods.join(", ")));
        }
        if !self.pods_held_by_finalizers.is_empty() {
            parts.push(format!(
                "pods held by finalizers: {}",
                self.pods_held_by_finalizers.join(", ")
            ));
        }
        if !self.foreign_finalizers.is_empty() {
            parts.push(format!(
                "run held by foreign finalizers: {}",
                self.foreign_finalizers.join(", ")
            ));
        }
        if parts.is_empty() {
            if self.run_exists {
                "the run object still exists".to_owned()
            } else {
                "nothing".to_owned()
            }
        } else {
            parts.join("; ")
        }
    }
}

/// One page of [`Workloads::list_runs`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunPage {
    /// The runs of this page (of any task).
    pub runs: Vec<Run>,
    /// Objects of the kind that could not be read as runs, by name (a
    /// scan reports them instead of failing).
    pub unreadable: Vec<String>,
    /// Where the next page starts; `None` on the last page.
    pub continue_token: Option<String>,
}

/// The agent runs of tasks and the pods that execute them.
///
/// Every write is conditional (on the `resourceVersion` or the uid read) and
/// idempotent: repeating a call after a lost answer, a crash or a resume
/// does no harm. Errors use the crate's [`Error`](crate::Error): `Conflict`
/// when the run changed since it was read (re-read it and decide again),
/// `Api` / `Transport` for what the server or the network did
/// (`is_transient()` says whether to retry).
///
/// Contract, checked for every implementation by the conformance suite
/// (`tests/workloads_conformance.rs`):
/// - [`runs`](Self::runs) returns every run of the task, terminal ones
///   included, in one call;
/// - [`mark_superseded`](Self::mark_superseded) writes the intent
///   annotations conditional on `run.resource_version` (a stale version is
///   `Conflict`); a run already marked with the same sha is not written again;
/// - [`terminate`](Self::terminate) starts a graceful stop: in `Delete`
///   mode the run is deleted (Foreground) and its pods get their own grace
///   period, in `Stop` mode each pod gets `grace` (SIGTERM, then SIGKILL by
///   the kubelet); a run or pod already deleting or gone is success;
/// - [`force`](Self::force) deletes the remaining pods with grace 0;
/// - [`remains`](Self::remains) and [`wait_gone`](Self::wait_gone) report a
///   pod as long as its object exists, whatever its containers do.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait Workloads: Send + Sync + 'static {
    /// Every run of `task_id`, terminal ones included (one LIST by the task
    /// label).
    async fn runs(&self, task_id: &str) -> Result<Vec<Run>>;

    /// The run `name` as it is now, `None` when it is gone.
    async fn run(&self, name: &str) -> Result<Option<Run>>;

    /// One page of at most `limit` runs of every task, starting where
    /// `continue_token` (from the previous page) says: what the recovery
    /// reconciler scans, a page at a time.
    async fn list_runs(&self, limit: u32, continue_token: Option<String>) -> Result<RunPage>;

    /// Records `intent` on `run` (the `supersede.dev/superseded-by`,
    /// `-at`, `cancel-operation` and `correlation-id` annotations),
    /// conditional on `run.resource_version`; returns the run as written.
    async fn mark_superseded(&self, run: &Run, intent: &Intent) -> Result<Run>;

    /// Starts stopping `run` gracefully in `mode` (see [`CancelMode`]):
    /// `grace` is what each pod gets after SIGTERM in `Stop` mode; in
    /// `Delete` mode the pods keep their own. Conditional on `run.uid`.
    async fn terminate(&self, run: &Run, mode: CancelMode, grace: Duration) -> Result<()>;

    /// Deletes the pods of `run` that still exist with grace period 0
    /// (SIGKILL at once).
    async fn force(&self, run: &Run) -> Result<()>;

    /// What is left of `run` now.
    async fn remains(&self, run: &Run) -> Result<Remains>;

    /// Waits until every run of `runs` (all of one task) is
    /// [done](Remains::done) — no pod of it exists —, or until `deadline`;
    /// returns what is left of each then, in the order of `runs`. Woken by changes (a
    /// watch), not by polling alone; one wait covers them all, so verifying
    /// a task's cancellation costs the same whatever its number of runs.
    async fn wait_gone(
        &self,
        runs: &[Run],
        mode: CancelMode,
        deadline: Instant,
    ) -> Result<Vec<Remains>>;

    /// For [`CancelMode::Stop`], once the run's pods are verified gone:
    /// `status.phase = Cancelled`, `supersededBy` and `finishedAt` (the
    /// status subresource). A run already recorded cancelled is success.
    async fn record_cancelled(&self, run: &Run, intent: &Intent) -> Result<()>;

    /// Removes the intent that operation `operation_id` recorded on `run`
    /// (its four annotations), conditional on the version read: what a
    /// rolled-back operation undoes. A run that carries another
    /// operation's intent, or none, or is gone, is left alone (`Ok`).
    async fn clear_intent(&self, run: &Run, operation_id: &str) -> Result<()>;

    /// Marks `run` as needing a human: the
    /// `supersede.dev/needs-intervention` annotation with `reason`.
    async fn flag_intervention(&self, run: &Run, reason: &str) -> Result<()>;
}

#[async_trait]
impl<T: Workloads + ?Sized> Workloads for std::sync::Arc<T> {
    async fn runs(&self, task_id: &str) -> Result<Vec<Run>> {
        (**self).runs(task_id).await
    }
    async fn run(&self, name: &str) -> Result<Option<Run>> {
        (**self).run(name).await
    }
    async fn list_runs(&self, limit: u32, continue_token: Option<String>) -> Result<RunPage> {
        (**self).list_runs(limit, continue_token).await
    }
    async fn mark_superseded(&self, run: &Run, intent: &Intent) -> Result<Run> {
        (**self).mark_superseded(run, intent).await
    }
    async fn terminate(&self, run: &Run, mode: CancelMode, grace: Duration) -> Result<()> {
        (**self).terminate(run, mode, grace).await
    }
    async fn force(&self, run: &Run) -> Result<()> {
        (**self).force(run).await
    }
    async fn remains(&self, run: &Run) -> Result<Remains> {
        (**self).remains(run).await
    }
    async fn wait_gone(
        &self,
        runs: &[Run],
        mode: CancelMode,
        deadline: Instant,
    ) -> Result<Vec<Remains>> {
        (**self).wait_gone(runs, mode, deadline).await
    }
    async fn record_cancelled(&self, run: &Run, intent: &Intent) -> Result<()> {
        (**self).record_cancelled(run, intent).await
    }
    async fn clear_intent(&self, run: &Run, operation_id: &str) -> Result<()> {
        (**self).clear_intent(run, operation_id).await
    }
    async fn flag_intervention(&self, run: &Run, reason: &str) -> Result<()> {
        (**self).flag_intervention(run, reason).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_done_only_once_its_pods_are_gone() {
        let pods_left = Remains {
            pods: vec!["run-1-pod".into()],
            run_exists: false,
            ..Remains::default()
        };
        assert!(!pods_left.done(CancelMode::Delete));
        assert!(!pods_left.done(CancelMode::Stop));
        let object_left = Remains {
            run_exists: true,
            foreign_finalizers: vec!["example.dev/audit".into()],
            ..Remains::default()
        };
        assert!(object_left.done(CancelMode::Stop));
        assert!(object_left.done(CancelMode::Delete), "its work has stopped");
        assert!(object_left.describe().contains("example.dev/audit"));
    }
}
