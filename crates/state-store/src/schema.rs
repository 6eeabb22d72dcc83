//! `RemediationState`, the task state document (schema `v1`), and the helpers
//! that change it so that every writer keeps the same invariants.
//!
//! The rule it keeps: everything that grows is bounded here (histories, error
//! messages, pending supersessions, journal steps), so a document can only
//! outgrow a ConfigMap through feedback bodies, which the codec compacts.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::journal::{
    FencingToken, JournalStep, MAX_DETAIL_BYTES, MAX_JOURNAL_STEPS, OperationJournal, Step,
    StepStatus, truncate_utf8,
};
use crate::{Error, Result};

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: &str = "v1";
/// Most error messages kept (newest kept).
pub const MAX_ERROR_MESSAGES: usize = 50;
/// Longest error message kept, in bytes (longer ones are truncated).
pub const MAX_ERROR_MESSAGE_BYTES: usize = 2048;
/// Most cancellation audit entries kept (newest kept).
pub const MAX_CANCELLATION_HISTORY: usize = 100;
/// Most superseded heads one cancellation record lists (one operation
/// cancels the runs of a few heads at most: those pushed while it waited).
pub const MAX_SUPERSEDED_HEADS: usize = 16;
/// Most pending supersessions kept (newest kept).
pub const MAX_PENDING_SUPERSESSIONS: usize = 16;
/// Most webhook delivery keys remembered per task (newest kept), so that a
/// redelivery is recognised after a restart (GitHub keeps a delivery's GUID
/// on redelivery and never retries by itself).
///
/// Each push to a pull request brings two or three deliveries (`push`,
/// `pull_request.synchronize`, sometimes a label event); 64 keys cover the
/// last twenty or so pushes of a task — far more than an operator
/// redelivers at once — for about 3 KiB of document.
pub const MAX_RECENT_DELIVERIES: usize = 64;
/// Longest delivery key accepted (`<X-GitHub-Delivery>:<X-GitHub-Hook-ID>`:
/// a 128-character id, a colon and a 20-digit hook id, with room to spare).
pub const MAX_DELIVERY_KEY_LEN: usize = 160;
/// Most compaction records kept (newest kept).
pub const MAX_COMPACTIONS: usize = 10;
/// Most dropped comment ids listed in one compaction record.
pub const MAX_DROPPED_IDS_LISTED: usize = 100;
/// Most write ids remembered to settle writes that failed in transit.
///
/// A writer judges its lost write after one backoff delay (at most 1 s by
/// default); 256 covers that many writes to one task in between — more than
/// one key sees even under full contention (each write is a GET and a PUT) —
/// for ~5 KiB in a document written that often. Past it, the writer reports
/// `OutcomeUnknown` rather than guess.
pub const MAX_APPLIED_WRITES: usize = 256;

/// Lifecycle status of a task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskStatus {
    /// Created, no work yet.
    #[default]
    Initialized,
    /// Agents are working on it.
    InProgress,
    /// Finished successfully.
    Completed,
    /// Finished unsuccessfully.
    Failed,
    /// Stopped because the iteration counter hit its maximum.
    MaxIterationsReached,
}

impl TaskStatus {
    /// The status's name as stored (`"InProgress"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Initialized => "Initialized",
            TaskStatus::InProgress => "InProgress",
            TaskStatus::Completed => "Completed",
            TaskStatus::Failed => "Failed",
            TaskStatus::MaxIterationsReached => "MaxIterationsReached",
        }
    }

    /// Whether no more work is expected (Completed, Failed, MaxIterationsReached).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::MaxIterationsReached
        )
    }
}

/// Iteration start times kept in a state (the newest iterations').
pub const MAX_ITERATION_STARTS: usize = 64;

/// Longest feedback body a write may add, in bytes (64 KiB): a body is a
/// review comment, and a ConfigMap holds 1 MiB in all.
pub const MAX_FEEDBACK_BODY_BYTES: usize = 64 * 1024;

/// Severity of a review comment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Severity {
    /// Nit.
    #[serde(alias = "low", alias = "LOW")]
    Low,
    /// Should fix.
    #[serde(alias = "medium", alias = "MEDIUM")]
    Medium,
    /// Must fix.
    #[serde(alias = "high", alias = "HIGH")]
    High,
    /// Blocks the merge.
    #[serde(alias = "critical", alias = "CRITICAL")]
    Critical,
}

/// What kind of problem a review comment names (the starting design's
/// `issue_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IssueType {
    /// Something does not work.
    Bug,
    /// Something could be better.
    Enhancement,
    /// The docs are wrong or missing.
    Documentation,
    /// Too slow or too big.
    Performance,
    /// A vulnerability or unsafe practice.
    Security,
}

/// One piece of review feedback, identified by its comment id.
///
/// Documents of the starting design name three fields differently —
/// `pr_comment_id`, `description`, `timestamp` — and are read as they are;
/// fields this build does not know are kept in [`extra`](Self::extra) and
/// written back, so a round trip loses nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackEntry {
    /// The comment id (unique per task; used to deduplicate).
    #[serde(alias = "pr_comment_id")]
    pub comment_id: String,
    /// How serious it is.
    pub severity: Severity,
    /// Whether it was addressed.
    #[serde(default)]
    pub resolved: bool,
    /// The comment text.
    #[serde(alias = "description")]
    pub body: String,
    /// Who wrote it (empty when the document did not say).
    #[serde(default)]
    pub author: String,
    /// When it was written.
    #[serde(alias = "timestamp")]
    pub created_at: Timestamp,
    /// When it was resolved, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<Timestamp>,
    /// What kind of problem it names, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issue_type: Option<IssueType>,
    /// Fields of a stored entry this build does not know: kept and written
    /// back.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl FeedbackEntry {
    /// An unresolved entry with no issue type.
    pub fn new(
        comment_id: impl Into<String>,
        severity: Severity,
        body: impl Into<String>,
        author: impl Into<String>,
        created_at: Timestamp,
    ) -> Self {
        Self {
            comment_id: comment_id.into(),
            severity,
            resolved: false,
            body: body.into(),
            author: author.into(),
            created_at,
            resolved_at: None,
            issue_type: None,
            extra: BTreeMap::new(),
        }
    }
}

/// One recorded error message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMessage {
    /// When it was recorded.
    pub at: Timestamp,
    /// The message (at most [`MAX_ERROR_MESSAGE_BYTES`]).
    pub message: String,
}

/// The newest pushed head of the task's pull request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadRecord {
    /// Commit sha.
    pub sha: String,
    /// When it was pushed (from the webhook).
    pub pushed_at: Timestamp,
    /// `X-GitHub-Delivery` of the event that told us.
    pub delivery_id: String,
}

/// A push that supersedes the work in flight, as recorded by the sensor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Supersession {
    /// The new head sha.
    pub head_sha: String,
    /// When it was pushed.
    pub pushed_at: Timestamp,
    /// `X-GitHub-Delivery` of the event.
    pub delivery_id: String,
    /// Correlation id for logs across processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

/// What [`RemediationState::observe_delivery`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeliveryRecorded {
    /// The delivery key was already remembered: nothing changed.
    Duplicate,
    /// The key is remembered now.
    Recorded {
        /// Whether the push it carried changed the head (see
        /// [`RemediationState::observe_head`]).
        head_changed: bool,
    },
}

impl DeliveryRecorded {
    /// Whether the delivery had been recorded before.
    pub fn is_duplicate(self) -> bool {
        self == Self::Duplicate
    }
}

/// How a cancellation ended, for the audit trail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CancellationOutcome {
    /// Every target is gone.
    Cancelled,
    /// There was nothing to cancel.
    NothingToCancel,
    /// Some targets could not be cancelled; flagged for intervention.
    Failed,
    /// The operation was compensated or rolled back.
    RolledBack,
}

/// One entry of the cancellation audit trail.
///
/// `superseded_heads`, `started_at` and `finished_at` came after the first
/// `v1` documents: they default to empty when read from an older entry, and
/// are not written while empty, so such an entry reads back as it was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancellationRecord {
    /// The journal operation that did it.
    pub operation_id: String,
    /// When its cancel step began (the time of the intent written on the
    /// runs); entries without `finished_at` have only this time.
    pub at: Timestamp,
    /// The head that superseded the cancelled work (the head kept).
    pub new_head_sha: String,
    /// The cancelled resources.
    #[serde(default)]
    pub targets: Vec<String>,
    /// The heads the cancelled runs worked on: distinct, ordered by when
    /// their first run was created (oldest first, so the last is the newest
    /// work superseded), at most [`MAX_SUPERSEDED_HEADS`]. Empty when
    /// nothing was cancelled, and in entries written before the field
    /// existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub superseded_heads: Vec<String>,
    /// When the operation began (its journal's `started_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When the operation was recorded finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// How it ended.
    pub outcome: CancellationOutcome,
    /// Correlation id of the triggering event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Free text (bounded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What a feedback compaction dropped, kept in the document for audit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionRecord {
    /// When it happened.
    pub at: Timestamp,
    /// How many entries were dropped.
    pub dropped: usize,
    /// The dropped comment ids (the first [`MAX_DROPPED_IDS_LISTED`]).
    pub dropped_comment_ids: Vec<String>,
    /// How many entries were kept.
    pub kept: usize,
}

/// The state of one remediation task (schema `v1`).
///
/// Change it inside [`StateStore::update`](crate::StateStore::update) closures,
/// preferably with the methods below, which keep the bounds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RemediationState {
    /// Schema version of the document (`"v1"`).
    pub version: String,
    /// The task this state belongs to.
    pub task_id: String,
    /// Iterations done so far (at most the store's maximum).
    pub iteration: u32,
    /// Lifecycle status.
    pub status: TaskStatus,
    /// When each iteration started (the newest [`MAX_ITERATION_STARTS`]),
    /// also written as the flat `iteration_<n>_started` keys.
    pub iteration_started: BTreeMap<u32, Timestamp>,
    /// Review feedback, oldest first, unique by comment id.
    pub feedback_history: Vec<FeedbackEntry>,
    /// Recent error messages, oldest first (newest [`MAX_ERROR_MESSAGES`] kept).
    pub error_messages: Vec<ErrorMessage>,
    /// Free-form string metadata.
    pub metadata: BTreeMap<String, String>,
    /// When the state was last written.
    pub last_update: Timestamp,
    /// The newest head pushed to the task's pull request.
    pub latest_head: Option<HeadRecord>,
    /// Supersessions recorded but not yet handled, oldest first.
    pub pending_supersessions: Vec<Supersession>,
    /// Cancellation audit trail, oldest first (newest kept).
    pub cancellation_history: Vec<CancellationRecord>,
    /// The journal of the operation in flight, if any.
    pub active_operation: Option<OperationJournal>,
    /// Highest fencing token any write presented.
    pub highest_fencing_token: Option<FencingToken>,
    /// Feedback compactions done on this document.
    pub compactions: Vec<CompactionRecord>,
    /// Keys of the webhook deliveries recorded for this task, oldest first
    /// (newest [`MAX_RECENT_DELIVERIES`] kept): the durable half of the
    /// sensor's dedupe. See [`observe_delivery`](Self::observe_delivery).
    pub recent_deliveries: Vec<String>,
    /// Repairs the store made to this state when it broke one of its own
    /// rules, oldest first (newest [`MAX_REPAIRS`](crate::repair::MAX_REPAIRS)
    /// kept). See [`repair`](Self::repair).
    pub repairs: Vec<crate::repair::RepairRecord>,
    /// When [`StateStore::recover_state`](crate::StateStore::recover_state)
    /// last repaired, migrated, rebuilt or created this state.
    pub last_recovery: Option<Timestamp>,
    /// Ids of the latest writes (newest last), so a writer whose request failed
    /// in transit can tell whether it was applied. Maintained by the store only.
    applied_writes: Vec<String>,
    /// `retired_lease_uids` of documents written before fencing tokens
    /// carried their Lease's creation time: read and dropped, the token
    /// order replaces it (kept out of `unknown_fields`, so it is not written
    /// back forever).
    #[serde(default, skip_serializing, rename = "retired_lease_uids")]
    legacy_retired_lease_uids: Dropped,
    /// Top-level fields of a stored `v1` document that this build does not
    /// know (written by a later build that added a field): kept as they are
    /// and written back, never dropped.
    #[serde(flatten)]
    unknown_fields: BTreeMap<String, serde_json::Value>,
}

impl Default for RemediationState {
    fn default() -> Self {
        Self::new("", Timestamp::UNIX_EPOCH)
    }
}

impl RemediationState {
    /// A fresh `Initialized` state for `task_id`.
    pub fn new(task_id: impl Into<String>, now: Timestamp) -> Self {
        Self {
            version: SCHEMA_VERSION.to_owned(),
            task_id: task_id.into(),
            iteration: 0,
            status: TaskStatus::Initialized,
            iteration_started: BTreeMap::new(),
            feedback_history: Vec::new(),
            error_messages: Vec::new(),
            metadata: BTreeMap::new(),
            last_update: now,
            latest_head: None,
            pending_supersessions: Vec::new(),
            cancellation_history: Vec::new(),
            active_operation: None,
            highest_fencing_token: None,
            compactions: Vec::new(),
            recent_deliveries: Vec::new(),
            repairs: Vec::new(),
            last_recovery: None,
            applied_writes: Vec::new(),
            legacy_retired_lease_uids: Dropped,
            unknown_fields: BTreeMap::new(),
        }
    }

    /// Adds feedback unless its comment id is already recorded: in the
    /// history, or among the ids a compaction dropped (a re-delivered comment
    /// must not come back after compaction). Returns whether it was added.
    pub fn append_feedback(&mut self, entry: FeedbackEntry) -> bool {
        let id = entry.comment_id.as_str();
        let known = self.feedback_history.iter().any(|e| e.comment_id == id)
            || self
                .compactions
                .iter()
                .any(|c| c.dropped_comment_ids.iter().any(|d| d == id));
        if known {
            return false;
        }
        self.feedback_history.push(entry);
        true
    }

    /// Counts one more iteration, started at `now` (recorded, the newest
    /// [`MAX_ITERATION_STARTS`] kept); an `Initialized` task becomes
    /// `InProgress`. The caller checks the maximum.
    pub fn start_iteration(&mut self, now: Timestamp) -> u32 {
        self.iteration += 1;
        self.iteration_started.insert(self.iteration, now);
        while self.iteration_started.len() > MAX_ITERATION_STARTS {
            self.iteration_started.pop_first();
        }
        if self.status == TaskStatus::Initialized {
            self.status = TaskStatus::InProgress;
        }
        self.iteration
    }

    /// Marks a feedback entry resolved. Returns whether anything changed.
    pub fn resolve_feedback(&mut self, comment_id: &str, now: Timestamp) -> bool {
        match self
            .feedback_history
            .iter_mut()
            .find(|e| e.comment_id == comment_id && !e.resolved)
        {
            Some(e) => {
                e.resolved = true;
                e.resolved_at = Some(now);
                true
            }
            None => false,
        }
    }

    /// Records an error message (truncated, newest [`MAX_ERROR_MESSAGES`] kept).
    pub fn push_error(&mut self, message: impl Into<String>, now: Timestamp) {
        let mut message = message.into();
        truncate_utf8(&mut message, MAX_ERROR_MESSAGE_BYTES);
        self.error_messages.push(ErrorMessage { at: now, message });
        trim_front(&mut self.error_messages, MAX_ERROR_MESSAGES);
    }

    /// Records a pushed head if it is newer than the latest one.
    ///
    /// Pushes are ordered by `(pushed_at, sha)`, so two different shas pushed
    /// at the same instant resolve the same way whatever order they arrive in.
    /// An older push never replaces a newer head, and the same push delivered
    /// again changes nothing. A newer push of another sha becomes the head and
    /// a pending supersession. A newer push of the head's own sha (pushed
    /// again, e.g. a force-push back) only moves the head's `pushed_at`
    /// forward — so a push made in between that arrives late cannot overtake
    /// it — and adds no supersession, since the head did not change. Returns
    /// whether the state changed.
    pub fn observe_head(&mut self, push: &Supersession) -> bool {
        let same_sha = match &self.latest_head {
            Some(head)
                if (push.pushed_at, push.head_sha.as_str())
                    <= (head.pushed_at, head.sha.as_str()) =>
            {
                return false;
            }
            Some(head) => head.sha == push.head_sha,
            None => false,
        };
        self.latest_head = Some(HeadRecord {
            sha: push.head_sha.clone(),
            pushed_at: push.pushed_at,
            delivery_id: push.delivery_id.clone(),
        });
        if !same_sha {
            self.pending_supersessions.push(push.clone());
            trim_front(&mut self.pending_supersessions, MAX_PENDING_SUPERSESSIONS);
        }
        true
    }

    /// Records webhook delivery `delivery_key` and the push it carries, if
    /// any, unless the key is already remembered (a redelivery, or the same
    /// delivery handled by another replica): then nothing changes and the
    /// answer is [`DeliveryRecorded::Duplicate`]. Otherwise the push goes
    /// through [`observe_head`](Self::observe_head) and the key joins
    /// [`recent_deliveries`](Self::recent_deliveries) (newest
    /// [`MAX_RECENT_DELIVERIES`] kept) — both in the one write that stores
    /// the state, so a delivery is either recorded whole or not at all.
    pub fn observe_delivery(
        &mut self,
        delivery_key: &str,
        push: Option<&Supersession>,
    ) -> DeliveryRecorded {
        if self.recent_deliveries.iter().any(|k| k == delivery_key) {
            return DeliveryRecorded::Duplicate;
        }
        let head_changed = push.is_some_and(|push| self.observe_head(push));
        self.recent_deliveries.push(delivery_key.to_owned());
        trim_front(&mut self.recent_deliveries, MAX_RECENT_DELIVERIES);
        DeliveryRecorded::Recorded { head_changed }
    }

    /// Removes the pending supersessions that the handling of the push of
    /// `head_sha` at `pushed_at` covers: that one and every older one (by
    /// `(pushed_at, sha)`, the order of [`observe_head`](Self::observe_head)).
    /// Newer pushes stay pending. Returns how many were removed.
    pub fn settle_supersessions_through(&mut self, head_sha: &str, pushed_at: Timestamp) -> usize {
        let before = self.pending_supersessions.len();
        self.pending_supersessions
            .retain(|p| (p.pushed_at, p.head_sha.as_str()) > (pushed_at, head_sha));
        before - self.pending_supersessions.len()
    }

    /// Appends to the cancellation audit trail (newest [`MAX_CANCELLATION_HISTORY`] kept).
    pub fn record_cancellation(&mut self, mut record: CancellationRecord) {
        if let Some(detail) = record.detail.as_mut() {
            truncate_utf8(detail, MAX_DETAIL_BYTES);
        }
        record.superseded_heads.truncate(MAX_SUPERSEDED_HEADS);
        self.cancellation_history.push(record);
        trim_front(&mut self.cancellation_history, MAX_CANCELLATION_HISTORY);
    }

    /// Starts an operation journal; fails if another unfinished one is active.
    /// A finished journal left in place is replaced.
    pub fn begin_operation(&mut self, journal: OperationJournal) -> Result<()> {
        if let Some(active) = &self.active_operation {
            if active.operation_id == journal.operation_id {
                // Beginning the same operation twice is a retry: keep the original.
                return Ok(());
            }
            if !active.is_finished() {
                return Err(self.journal_error(format!(
                    "operation {} ({}) is still active at step {}",
                    active.operation_id,
                    String::from(active.kind.clone()),
                    active.current().map_or("none", |s| s.step.as_str()),
                )));
            }
        }
        if self.status.is_terminal() {
            return Err(self.journal_error(format!(
                "cannot begin operation {} on a task in status {:?}",
                journal.operation_id, self.status
            )));
        }
        self.active_operation = Some(journal);
        Ok(())
    }

    /// Appends a step to the active operation `operation_id`.
    ///
    /// Recording the same step and status as the latest one again is a no-op,
    /// so a retried step does not grow the journal. A step is never recorded
    /// before the previous one: a writer whose clock runs behind the last
    /// writer's records the previous step's time instead of failing.
    pub fn advance_operation(
        &mut self,
        operation_id: &str,
        step: Step,
        status: StepStatus,
        detail: Option<String>,
        now: Timestamp,
    ) -> Result<()> {
        let task_id = self.task_id.clone();
        let journal = self.active_operation_mut(operation_id)?;
        if journal
            .current()
            .is_some_and(|s| s.step == step && s.status == status)
        {
            return Ok(());
        }
        if journal.steps.len() >= MAX_JOURNAL_STEPS {
            return Err(Error::Journal {
                task_id,
                reason: format!(
                    "operation {operation_id} already has {MAX_JOURNAL_STEPS} steps; it must finish or roll back"
                ),
            });
        }
        let detail = detail.map(|mut d| {
            truncate_utf8(&mut d, MAX_DETAIL_BYTES);
            d
        });
        // Replicas' wall clocks differ; the journal's order must not.
        let at = journal.current().map_or(now, |last| last.at.max(now));
        journal.steps.push(JournalStep {
            step,
            status,
            at,
            detail,
        });
        Ok(())
    }

    /// Ends the active operation `operation_id`: records `final_step` as
    /// succeeded, appends `record` to the audit trail if given, and clears the
    /// journal. Finishing an operation that is no longer active is a no-op
    /// (a retried finish), returning `false`.
    pub fn finish_operation(
        &mut self,
        operation_id: &str,
        record: Option<CancellationRecord>,
    ) -> Result<bool> {
        match &self.active_operation {
            Some(active) if active.operation_id == operation_id => {}
            Some(active) => {
                return Err(self.journal_error(format!(
                    "cannot finish operation {operation_id}: operation {} is active",
                    active.operation_id
                )));
            }
            None => return Ok(false),
        }
        self.active_operation = None;
        if let Some(record) = record {
            self.record_cancellation(record);
        }
        Ok(true)
    }

    /// Fails with `Journal` unless the active operation `journal.operation_id`
    /// is still run by `journal`'s holder under `journal`'s token: after a
    /// [`resume_operation`](Self::resume_operation) the former holder's
    /// steps are refused. Passes when the operation is no longer active (a
    /// retried finish decides that itself).
    pub fn check_operation_holder(&self, journal: &OperationJournal) -> Result<()> {
        match &self.active_operation {
            Some(active)
                if active.operation_id == journal.operation_id
                    && (active.holder != journal.holder
                        || active.fencing_token != journal.fencing_token) =>
            {
                let token = active
                    .fencing_token
                    .as_ref()
                    .map_or_else(|| "no token".to_owned(), ToString::to_string);
                Err(self.journal_error(format!(
                    "operation {} is now run by {} under {token}",
                    active.operation_id, active.holder
                )))
            }
            _ => Ok(()),
        }
    }

    /// Makes `holder` under `token` the runner of the unfinished active
    /// operation `operation_id` and returns the journal as it now is. Call it
    /// inside a write fenced with `token` (as
    /// [`StateStore::resume_operation`](crate::StateStore::resume_operation)
    /// does).
    pub fn resume_operation(
        &mut self,
        operation_id: &str,
        holder: &str,
        token: &FencingToken,
    ) -> Result<OperationJournal> {
        let task_id = self.task_id.clone();
        let journal = self.active_operation_mut(operation_id)?;
        if journal.is_finished() {
            return Err(Error::Journal {
                task_id,
                reason: format!("operation {operation_id} is finished; nothing to resume"),
            });
        }
        holder.clone_into(&mut journal.holder);
        journal.fencing_token = Some(token.clone());
        Ok(journal.clone())
    }

    /// Admits a write under `token` and raises the highest token to it, or
    /// refuses it with `FencingTokenRefused` when it is older than the
    /// highest one admitted or cannot be ordered against it (the one rule of
    /// [`FencingToken::admit`]: tokens of one Lease object by
    /// `leaseTransitions`, of successive objects by creation time, and
    /// anything else refused).
    pub fn observe_fencing_token(&mut self, token: &FencingToken) -> Result<()> {
        let before = self.highest_fencing_token.clone();
        token
            .admit_into(&mut self.highest_fencing_token)
            .map_err(|reason| Error::FencingTokenRefused {
                task_id: self.task_id.clone(),
                offered: Box::new(token.clone()),
                highest: Box::new(before.unwrap_or_else(|| token.clone())),
                reason,
            })
    }

    /// Drops feedback to shrink the document: keeps resolved High/Critical
    /// entries and the `keep_recent` most recent ones, and records what was
    /// dropped. Returns the record, or `None` when nothing could be dropped.
    pub fn compact_feedback(
        &mut self,
        keep_recent: usize,
        now: Timestamp,
    ) -> Option<CompactionRecord> {
        let n = self.feedback_history.len();
        // "Most recent" by creation time; ties keep insertion order.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| (self.feedback_history[i].created_at, i));
        let recent: std::collections::HashSet<usize> =
            order.iter().rev().take(keep_recent).copied().collect();
        let mut dropped_ids = Vec::new();
        let mut dropped = 0;
        let mut index = 0;
        self.feedback_history.retain(|e| {
            let keep = recent.contains(&index) || (e.resolved && e.severity >= Severity::High);
            index += 1;
            if !keep {
                dropped += 1;
                if dropped_ids.len() < MAX_DROPPED_IDS_LISTED {
                    dropped_ids.push(e.comment_id.clone());
                }
            }
            keep
        });
        if dropped == 0 {
            return None;
        }
        let record = CompactionRecord {
            at: now,
            dropped,
            dropped_comment_ids: dropped_ids,
            kept: self.feedback_history.len(),
        };
        self.compactions.push(record.clone());
        trim_front(&mut self.compactions, MAX_COMPACTIONS);
        Some(record)
    }

    /// Checks the invariants every stored state keeps.
    ///
    /// An iteration counter above `max_iterations` is not one of them: the
    /// maximum may have been lowered since the state counted that far, and
    /// such a state stays readable and writable (the store only refuses to
    /// count further, or to raise the counter past the maximum).
    pub fn validate(&self, task_id: &str, max_iterations: u32) -> Result<(), String> {
        if self.task_id != task_id {
            return Err(format!(
                "task_id {:?} does not match the document's task {task_id:?}",
                self.task_id
            ));
        }
        if self.status == TaskStatus::MaxIterationsReached && self.iteration < max_iterations {
            // Allowed only if the maximum was raised since; the counter must still be
            // at a positive value it could have stopped at.
            if self.iteration == 0 {
                return Err("status MaxIterationsReached with iteration 0".to_owned());
            }
        }
        let mut seen = std::collections::HashSet::new();
        for e in &self.feedback_history {
            if !well_formed_id(&e.comment_id) {
                return Err(format!("malformed comment id {:?}", e.comment_id));
            }
            if !seen.insert(e.comment_id.as_str()) {
                return Err(format!("duplicate comment id {:?}", e.comment_id));
            }
        }
        if let Some(head) = &self.latest_head
            && !well_formed_sha(&head.sha)
        {
            return Err(format!("malformed head sha {:?}", head.sha));
        }
        for p in &self.pending_supersessions {
            if !well_formed_sha(&p.head_sha) {
                return Err(format!("malformed pending head sha {:?}", p.head_sha));
            }
        }
        if let Some(journal) = &self.active_operation {
            if !well_formed_id(&journal.operation_id) {
                return Err(format!("malformed operation id {:?}", journal.operation_id));
            }
            match journal.steps.first() {
                Some(first) if first.step == Step::Started => {}
                _ => {
                    return Err(format!(
                        "journal of {} does not begin with Started",
                        journal.operation_id
                    ));
                }
            }
            if journal.steps.len() > MAX_JOURNAL_STEPS {
                return Err(format!(
                    "journal of {} has too many steps",
                    journal.operation_id
                ));
            }
            if journal.steps.windows(2).any(|w| w[1].at < w[0].at) {
                return Err(format!(
                    "journal of {} goes back in time",
                    journal.operation_id
                ));
            }
            if !journal.is_finished() && self.status.is_terminal() {
                return Err(format!(
                    "status {:?} is final but operation {} is still active",
                    self.status, journal.operation_id
                ));
            }
        }
        if let Some(key) = self
            .recent_deliveries
            .iter()
            .find(|k| !well_formed_delivery_key(k))
        {
            return Err(format!("malformed delivery key {key:?}"));
        }
        if self.error_messages.len() > MAX_ERROR_MESSAGES
            || self.cancellation_history.len() > MAX_CANCELLATION_HISTORY
            || self.pending_supersessions.len() > MAX_PENDING_SUPERSESSIONS
            || self.recent_deliveries.len() > MAX_RECENT_DELIVERIES
        {
            return Err("a bounded history is over its bound".to_owned());
        }
        Ok(())
    }

    fn active_operation_mut(&mut self, operation_id: &str) -> Result<&mut OperationJournal> {
        let task_id = self.task_id.clone();
        match self.active_operation.as_mut() {
            Some(j) if j.operation_id == operation_id => Ok(j),
            Some(j) => Err(Error::Journal {
                task_id,
                reason: format!(
                    "operation {operation_id} is not active (operation {} is)",
                    j.operation_id
                ),
            }),
            None => Err(Error::Journal {
                task_id,
                reason: format!("operation {operation_id} is not active (none is)"),
            }),
        }
    }

    fn journal_error(&self, reason: String) -> Error {
        Error::Journal {
            task_id: self.task_id.clone(),
            reason,
        }
    }

    /// Ids of the latest writes, newest last (at most [`MAX_APPLIED_WRITES`]).
    pub fn applied_writes(&self) -> &[String] {
        &self.applied_writes
    }

    /// Top-level fields of the stored document this build does not know; they
    /// are written back unchanged.
    pub fn unknown_fields(&self) -> &BTreeMap<String, serde_json::Value> {
        &self.unknown_fields
    }

    /// The names of the top-level fields that differ between `self` and
    /// `other` (for the write's audit line: names, never values).
    pub fn changed_fields(&self, other: &RemediationState) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut differs = |name: &'static str, different: bool| {
            if different {
                changed.push(name);
            }
        };
        differs("iteration", self.iteration != other.iteration);
        differs("status", self.status != other.status);
        differs(
            "iteration_started",
            self.iteration_started != other.iteration_started,
        );
        differs(
            "feedback_history",
            self.feedback_history != other.feedback_history,
        );
        differs(
            "error_messages",
            self.error_messages != other.error_messages,
        );
        differs("metadata", self.metadata != other.metadata);
        differs("latest_head", self.latest_head != other.latest_head);
        differs(
            "pending_supersessions",
            self.pending_supersessions != other.pending_supersessions,
        );
        differs(
            "cancellation_history",
            self.cancellation_history != other.cancellation_history,
        );
        differs(
            "active_operation",
            self.active_operation != other.active_operation,
        );
        differs(
            "highest_fencing_token",
            self.highest_fencing_token != other.highest_fencing_token,
        );
        differs("compactions", self.compactions != other.compactions);
        differs(
            "recent_deliveries",
            self.recent_deliveries != other.recent_deliveries,
        );
        differs("repairs", self.repairs != other.repairs);
        differs("last_recovery", self.last_recovery != other.last_recovery);
        differs(
            "unknown_fields",
            self.unknown_fields != other.unknown_fields,
        );
        changed
    }

    /// Refuses feedback this write adds or changes whose body is over
    /// [`MAX_FEEDBACK_BODY_BYTES`] (what was stored before is not judged
    /// again), naming the entry.
    pub(crate) fn check_new_feedback(&self, before: &RemediationState) -> Result<(), String> {
        for entry in &self.feedback_history {
            if entry.body.len() <= MAX_FEEDBACK_BODY_BYTES
                || before.feedback_history.contains(entry)
            {
                continue;
            }
            return Err(format!(
                "feedback {:?}: its body of {} bytes is over the limit of {MAX_FEEDBACK_BODY_BYTES}",
                entry.comment_id.chars().take(128).collect::<String>(),
                entry.body.len()
            ));
        }
        Ok(())
    }

    pub(crate) fn applied_writes_mut(&mut self) -> &mut Vec<String> {
        &mut self.applied_writes
    }

    pub(crate) fn remember_write(&mut self, write_id: &str) {
        self.applied_writes.push(write_id.to_owned());
        trim_front(&mut self.applied_writes, MAX_APPLIED_WRITES);
    }
}

/// Ids (comment, operation) are 1–128 visible ASCII characters.
pub(crate) fn well_formed_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Delivery keys are 1–[`MAX_DELIVERY_KEY_LEN`] visible ASCII characters.
pub(crate) fn well_formed_delivery_key(key: &str) -> bool {
    (1..=MAX_DELIVERY_KEY_LEN).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

/// Commit shas are 7–64 hex digits.
pub(crate) fn well_formed_sha(sha: &str) -> bool {
    (7..=64).contains(&sha.len()) && sha.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A field read from old documents and never written again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Dropped;

impl<'de> Deserialize<'de> for Dropped {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(deserializer).map(|_| Dropped)
    }
}

fn trim_front<T>(v: &mut Vec<T>, max: usize) {
    if v.len() > max {
        let excess = v.len() - max;
        v.drain(..excess);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn push(sha: &str, at: &str) -> Supersession {
        Supersession {
            head_sha: sha.into(),
            pushed_at: ts(at),
            delivery_id: format!("d-{sha}"),
            correlation_id: None,
        }
    }

    fn feedback(id: &str, severity: Severity, resolved: bool, minute: i64) -> FeedbackEntry {
        FeedbackEntry {
            comment_id: id.into(),
            severity,
            resolved,
            body: "b".into(),
            author: "a".into(),
            created_at: ts("2026-01-01T00:00:00Z") + jiff::SignedDuration::from_mins(minute),
            resolved_at: None,
            issue_type: None,
            extra: Default::default(),
        }
    }

    #[test]
    fn an_older_push_never_replaces_a_newer_head() {
        let mut s = RemediationState::new("t", Timestamp::UNIX_EPOCH);
        assert!(s.observe_head(&push("bbbbbbb", "2026-01-01T00:00:02Z")));
        assert!(!s.observe_head(&push("aaaaaaa", "2026-01-01T00:00:01Z")));
        assert!(!s.observe_head(&push("bbbbbbb", "2026-01-01T00:00:02Z")));
        assert_eq!(s.latest_head.as_ref().unwrap().sha, "bbbbbbb");
        assert_eq!(s.pending_supersessions.len(), 1);
    }

    #[test]
    fn a_sha_pushed_again_later_is_not_overtaken_by_an_older_push_arriving_late() {
        // A at 1, then B at 2, then A again at 3 (a force-push back); B's
        // webhook arrives last.
        let mut s = RemediationState::new("t", Timestamp::UNIX_EPOCH);
        assert!(s.observe_head(&push("aaaaaaa", "2026-01-01T00:00:01Z")));
        assert!(s.observe_head(&push("aaaaaaa", "2026-01-01T00:00:03Z")));
        assert!(!s.observe_head(&push("bbbbbbb", "2026-01-01T00:00:02Z")));
        let head = s.latest_head.as_ref().unwrap();
        assert_eq!(head.sha, "aaaaaaa");
        assert_eq!(head.pushed_at, ts("2026-01-01T00:00:03Z"));
        assert_eq!(head.delivery_id, "d-aaaaaaa");
        // The same sha is still the same supersession: nothing new to cancel.
        assert_eq!(s.pending_supersessions.len(), 1);
        // The same delivery again changes nothing.
        assert!(!s.observe_head(&push("aaaaaaa", "2026-01-01T00:00:03Z")));
    }

    #[test]
    fn pushes_at_the_same_instant_converge_whatever_their_order() {
        let mut a = RemediationState::new("t", Timestamp::UNIX_EPOCH);
        let mut b = a.clone();
        let (x, y) = (
            push("aaaaaaa", "2026-01-01T00:00:00Z"),
            push("bbbbbbb", "2026-01-01T00:00:00Z"),
        );
        a.observe_head(&x);
        a.observe_head(&y);
        b.observe_head(&y);
        b.observe_head(&x);
        assert_eq!(a.latest_head, b.latest_head);
    }

    #[test]
    fn a_delivery_is_recorded_once_with_its_push() {
        let mut s = RemediationState::new("t", Timestamp::UNIX_EPOCH);
        let p = push("aaaaaaa", "2026-01-01T00:00:01Z");
        assert_eq!(
            s.observe_delivery("guid-1:7", Some(&p)),
            DeliveryRecorded::Recorded { head_changed: true }
        );
        let before = s.clone();
        // Redelivered (same GUID, same hook): nothing changes, even with a
        // newer push in hand.
        let newer = push("bbbbbbb", "2026-01-01T00:00:02Z");
        assert_eq!(
            s.observe_delivery("guid-1:7", Some(&newer)),
            DeliveryRecorded::Duplicate
        );
        assert_eq!(s, before);
        // The same GUID from another hook is another delivery; an older
        // push it carries records the key but not the head.
        let older = push("ccccccc", "2026-01-01T00:00:00Z");
        assert_eq!(
            s.observe_delivery("guid-1:8", Some(&older)),
            DeliveryRecorded::Recorded {
                head_changed: false
            }
        );
        assert_eq!(s.latest_head.as_ref().unwrap().sha, "aaaaaaa");
        assert_eq!(s.recent_deliveries, ["guid-1:7", "guid-1:8"]);
        // A delivery without a push (a closed pull request) is remembered too.
        assert_eq!(
            s.observe_delivery("guid-2:7", None),
            DeliveryRecorded::Recorded {
                head_changed: false
            }
        );
        assert!(s.observe_delivery("guid-2:7", None).is_duplicate());
        s.validate("t", 10).unwrap();
    }

    #[test]
    fn recent_deliveries_keep_only_the_newest_keys() {
        let mut s = RemediationState::new("t", Timestamp::UNIX_EPOCH);
        for i in 0..(MAX_RECENT_DELIVERIES + 3) {
            s.observe_delivery(&format!("guid-{i}:1"), None);
        }
        assert_eq!(s.recent_deliveries.len(), MAX_RECENT_DELIVERIES);
        assert_eq!(s.recent_deliveries[0], "guid-3:1");
        // The oldest keys are forgotten: bounded, not forever.
        assert!(!s.observe_delivery("guid-0:1", None).is_duplicate());
        s.validate("t", 10).unwrap();
        s.recent_deliveries.push("has space".into());
        assert!(s.validate("t", 10).unwrap_err().contains("delivery key"));
    }

    #[test]
    fn settling_a_supersession_removes_it_and_the_older_ones() {
        let mut s = RemediationState::new("t", Timestamp::UNIX_EPOCH);
        s.observe_head(&push("aaaaaaa", "2026-01-01T00:00:01Z"));
        s.observe_head(&push("bbbbbbb", "2026-01-01T00:00:02Z"));
        s.observe_head(&push("ccccccc", "2026-01-01T00:00:03Z"));
        let b = &s.pending_supersessions[1];
        assert_eq!(
            s.settle_supersessions_through(&b.head_sha.clone(), b.pushed_at),
            2
        );
        assert_eq!(s.pending_supersessions.len(), 1);
        assert_eq!(s.pending_supersessions[0].head_sha, "ccccccc");
        assert_eq!(
            s.settle_supersessions_through("bbbbbbb", ts("2026-01-01T00:00:02Z")),
            0,
            "settling again is a no-op"
        );
    }

    #[test]
    fn feedback_is_deduplicated_by_comment_id() {
        let mut s = RemediationState::new("t", Timestamp::UNIX_EPOCH);
        assert!(s.append_feedback(feedback("1", Severity::Low, false, 0)));
        assert!(!s.append_feedback(feedback("1", Severity::High, false, 1)));
        assert_eq!(s.feedback_history.len(), 1);
    }

    #[test]
    fn compaction_keeps_resolved_high_and_critical_and_the_fifteen_most_recent() {
        let mut s = RemediationState::new("t", Timestamp::UNIX_EPOCH);
        for i in 0..40 {
            let (sev, resolved) = match i {
                0 => (Severity::Critical, true),
                1 => (Severity::High, true),
                2 => (Severity::High, false),
                3 => (Severity::Medium, true),
                _ => (Severity::Low, false),
            };
            s.append_feedback(feedback(&i.to_string(), sev, resolved, i));
        }
        let record = s.compact_feedback(15, ts("2026-02-01T00:00:00Z")).unwrap();
        let kept: Vec<&str> = s
            .feedback_history
            .iter()
            .map(|e| e.comment_id.as_str())
            .collect();
        assert_eq!(kept.len(), 17);
        assert_eq!(&kept[..2], ["0", "1"]);
        assert_eq!(kept[2], "25");
        assert_eq!(record.dropped, 23);
        assert!(record.dropped_comment_ids.contains(&"2".to_owned()));
        assert!(record.dropped_comment_ids.contains(&"3".to_owned()));
        assert_eq!(s.compactions.len(), 1);
        // A dropped comment delivered again stays dropped.
        assert!(!s.append_feedback(feedback("2", Severity::High, false, 2)));
        assert_eq!(s.feedback_history.len(), 17);
    }

    #[test]
    fn histories_keep_only_their_newest_entries() {
        let mut s = RemediationState::new("t", Timestamp::UNIX_EPOCH);
        for i in 0..(MAX_ERROR_MESSAGES + 5) {
            s.push_error(format!("e{i}"), Timestamp::UNIX_EPOCH);
        }
        s.push_error("x".repeat(10_000), Timestamp::UNIX_EPOCH);
        assert_eq!(s.error_messages.len(), MAX_ERROR_MESSAGES);
        assert_eq!(s.error_messages[0].message, "e6");
        assert_eq!(
            s.error_messages.last().unwrap().message.len(),
            MAX_ERROR_MESSAGE_BYTES
        );
    }

    fn token(uid: &str, created: i64, transitions: u64) -> FencingToken {
        FencingToken::new(uid, Timestamp::from_second(created).unwrap(), transitions)
    }

    fn refused(result: Result<()>) -> resilience::fencing::Rejected {
        match result {
            Err(Error::FencingTokenRefused { reason, .. }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_stale_fencing_token_is_rejected_and_a_newer_one_recorded() {
        use resilience::fencing::Rejected;
        let mut s = RemediationState::new("t", Timestamp::UNIX_EPOCH);
        s.observe_fencing_token(&token("u1", 10, 3)).unwrap();
        s.observe_fencing_token(&token("u1", 10, 3)).unwrap();
        let reason = refused(s.observe_fencing_token(&token("u1", 10, 2)));
        assert_eq!(reason, Rejected::Stale);
        s.observe_fencing_token(&token("u1", 10, 5)).unwrap();
        assert_eq!(s.highest_fencing_token, Some(token("u1", 10, 5)));
    }

    /// Issue 12, item 1. A holds L1 (u1, transitions 5) and pauses; L1
    /// expires and is garbage-collected; B creates L2 (u2, 0) and writes; A
    /// wakes and writes with u1/5. Before tokens carried their Lease's
    /// creation time, a uid the state had not seen was taken for a newer
    /// Lease: A's write was admitted and retired u2, locking B out.
    #[test]
    fn a_paused_holder_of_a_collected_lease_cannot_lock_out_its_successor() {
        use resilience::fencing::Rejected;
        let mut s = RemediationState::new("t", Timestamp::UNIX_EPOCH);
        let a = token("u1", 1_000, 5);
        let b = token("u2", 1_000 + 30, 0);
        s.observe_fencing_token(&b).unwrap();
        assert_eq!(refused(s.observe_fencing_token(&a)), Rejected::Stale);
        assert_eq!(s.highest_fencing_token.as_ref(), Some(&b));
        s.observe_fencing_token(&token("u2", 1_030, 1))
            .expect("B's successors keep writing");
    }

    #[test]
    fn the_tokens_of_a_recreated_lease_are_ordered_after_the_old_ones_and_among_themselves() {
        use resilience::fencing::Rejected;
        let mut s = RemediationState::new("t", Timestamp::UNIX_EPOCH);
        s.observe_fencing_token(&token("old", 10, 40)).unwrap();
        // Garbage collection deleted the Lease; the new object counts from 0.
        s.observe_fencing_token(&token("new", 90_000, 2)).unwrap();
        assert_eq!(
            refused(s.observe_fencing_token(&token("new", 90_000, 1))),
            Rejected::Stale
        );
        s.observe_fencing_token(&token("new", 90_000, 3)).unwrap();
        assert_eq!(
            refused(s.observe_fencing_token(&token("old", 10, 41))),
            Rejected::Stale
        );
        assert_eq!(s.highest_fencing_token, Some(token("new", 90_000, 3)));
    }

    #[test]
    fn a_token_that_cannot_be_ordered_is_refused_and_changes_nothing() {
        use resilience::fencing::Rejected;
        let mut s = RemediationState::new("t", Timestamp::UNIX_EPOCH);
        s.observe_fencing_token(&token("u1", 10, 3)).unwrap();
        // Another object created in the same second (the Lease deleted by
        // hand and re-created at once): no order can be trusted.
        assert_eq!(
            refused(s.observe_fencing_token(&token("u2", 10, 9))),
            Rejected::Incomparable
        );
        assert_eq!(s.highest_fencing_token, Some(token("u1", 10, 3)));
    }

    #[test]
    fn retired_lease_uids_of_old_documents_are_read_and_not_written_back() {
        let mut json =
            serde_json::to_value(RemediationState::new("t", Timestamp::UNIX_EPOCH)).unwrap();
        json["retired_lease_uids"] = serde_json::json!(["u0"]);
        let s: RemediationState = serde_json::from_value(json).unwrap();
        assert!(s.unknown_fields().is_empty());
        let written = serde_json::to_value(&s).unwrap();
        assert!(written.get("retired_lease_uids").is_none(), "{written}");
    }

    #[test]
    fn a_second_operation_cannot_begin_while_one_is_active() {
        use crate::journal::OperationKind;
        let mut s = RemediationState::new("t", Timestamp::UNIX_EPOCH);
        let now = Timestamp::UNIX_EPOCH;
        s.begin_operation(OperationJournal::begin(
            "op1",
            OperationKind::Cancellation,
            "h",
            now,
        ))
        .unwrap();
        s.begin_operation(OperationJournal::begin(
            "op1",
            OperationKind::Cancellation,
            "h",
            now,
        ))
        .unwrap();
        let err = s
            .begin_operation(OperationJournal::begin(
                "op2",
                OperationKind::Cancellation,
                "h",
                now,
            ))
            .unwrap_err();
        assert!(matches!(err, Error::Journal { .. }));
        s.advance_operation("op1", Step::Cancelled, StepStatus::Succeeded, None, now)
            .unwrap();
        s.advance_operation("op1", Step::Cancelled, StepStatus::Succeeded, None, now)
            .unwrap();
        assert_eq!(s.active_operation.as_ref().unwrap().steps.len(), 2);
        assert!(s.finish_operation("op1", None).unwrap());
        assert!(!s.finish_operation("op1", None).unwrap());
        assert!(s.active_operation.is_none());
    }

    #[test]
    fn a_step_recorded_by_a_writer_whose_clock_runs_behind_keeps_the_journal_in_order() {
        use crate::journal::OperationKind;
        let mut s = RemediationState::new("t", Timestamp::UNIX_EPOCH);
        let ahead = ts("2026-01-01T00:00:10Z");
        s.begin_operation(OperationJournal::begin(
            "op1",
            OperationKind::Cancellation,
            "pod-a/1",
            ahead,
        ))
        .unwrap();
        let behind = ts("2026-01-01T00:00:09Z");
        s.advance_operation("op1", Step::Cancelled, StepStatus::Succeeded, None, behind)
            .unwrap();
        let steps = &s.active_operation.as_ref().unwrap().steps;
        assert_eq!(steps[1].at, ahead);
        s.validate("t", 10).unwrap();
    }

    #[test]
    fn a_final_status_with_an_active_operation_is_invalid() {
        use crate::journal::OperationKind;
        let mut s = RemediationState::new("t", Timestamp::UNIX_EPOCH);
        s.begin_operation(OperationJournal::begin(
            "op1",
            OperationKind::Cancellation,
            "h",
            Timestamp::UNIX_EPOCH,
        ))
        .unwrap();
        s.status = TaskStatus::Completed;
        assert!(s.validate("t", 10).unwrap_err().contains("still active"));
    }

    #[test]
    fn a_cancellation_entry_written_before_its_timings_existed_reads_and_writes_back_unchanged() {
        let old = serde_json::json!({
            "operation_id": "op-1",
            "at": "2026-01-01T00:00:05Z",
            "new_head_sha": "bbbbbbb",
            "targets": ["quality-a"],
            "outcome": "Cancelled",
        });
        let record: CancellationRecord = serde_json::from_value(old.clone()).unwrap();
        assert!(record.superseded_heads.is_empty());
        assert_eq!((record.started_at, record.finished_at), (None, None));
        assert_eq!(serde_json::to_value(&record).unwrap(), old);

        let mut s = RemediationState::new("t", Timestamp::UNIX_EPOCH);
        s.record_cancellation(CancellationRecord {
            superseded_heads: (0..40).map(|i| format!("{i:07}")).collect(),
            started_at: Some(ts("2026-01-01T00:00:01Z")),
            finished_at: Some(ts("2026-01-01T00:00:09Z")),
            ..record
        });
        let kept = &s.cancellation_history[0];
        assert_eq!(kept.superseded_heads.len(), MAX_SUPERSEDED_HEADS);
        assert_eq!(kept.superseded_heads[0], "0000000");
        let written = serde_json::to_value(kept).unwrap();
        assert_eq!(written["started_at"], "2026-01-01T00:00:01Z");
        assert_eq!(written["finished_at"], "2026-01-01T00:00:09Z");
    }
}
