//! The operation journal: what an operation in flight has
//! done so far, written *before* each effect, so a crashed operation can be
//! resumed or rolled back from the stored state alone.
//!
//! The rule it keeps: a journal only moves forward; every step is appended with
//! its time, never rewritten, and the number of steps is bounded.

use std::fmt;

use jiff::Timestamp;
pub use resilience::fencing::FencingToken;
use serde::{Deserialize, Serialize};

/// Most steps one journal keeps; an operation that needs more is broken.
pub const MAX_JOURNAL_STEPS: usize = 64;

/// What kind of operation a journal describes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum OperationKind {
    /// Cancelling superseded agent runs (the cancel coordinator).
    Cancellation,
    /// A repair performed by the recovery reconciler.
    Recovery,
    /// Any other kind, by name.
    Other(String),
}

/// A named step of an operation.
///
/// The cancellation flow uses `Started ▸ Cancelled ▸ Labeled ▸ Done`, with
/// `Compensating ▸ Compensated` when a step fails permanently and `RolledBack`
/// when the recovery reconciler undoes an abandoned operation. Other flows may
/// use their own names through [`Step::Other`]; they round-trip as strings.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Step {
    /// Intent recorded, targets chosen; nothing done yet.
    Started,
    /// The target runs are gone (verified).
    Cancelled,
    /// The pull request labels moved to the next stage.
    Labeled,
    /// Everything done; the operation can be retired.
    Done,
    /// Undoing the effects of a permanently failed step.
    Compensating,
    /// The effects are undone.
    Compensated,
    /// The recovery reconciler rolled an abandoned operation back.
    RolledBack,
    /// A step outside the cancellation flow, by name.
    Other(String),
}

/// How a journal step went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StepStatus {
    /// The step's effect is being performed (intent recorded).
    Pending,
    /// The step's effect is done and verified.
    Succeeded,
    /// The step failed permanently; compensation should follow.
    Failed,
}

/// One entry of a journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalStep {
    /// Which step.
    pub step: Step,
    /// How it went.
    pub status: StepStatus,
    /// When it was recorded.
    pub at: Timestamp,
    /// Optional detail (error message, verification result), bounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The journal of the operation in flight on a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationJournal {
    /// Unique id of the operation (used to address it in advance/finish).
    pub operation_id: String,
    /// What kind of operation.
    pub kind: OperationKind,
    /// Identity of the process that runs it (`<pod>/<random>`).
    pub holder: String,
    /// The lock token the holder held when it began, if it held one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fencing_token: Option<FencingToken>,
    /// Resources the operation acts on (CodeRun names, …).
    #[serde(default)]
    pub targets: Vec<String>,
    /// Free-form facts the operation needs to resume (head sha, PR number, …).
    #[serde(default)]
    pub context: std::collections::BTreeMap<String, String>,
    /// When the operation began.
    pub started_at: Timestamp,
    /// The steps so far, oldest first; never empty, the first is `Started`.
    pub steps: Vec<JournalStep>,
}

impl OperationJournal {
    /// A new journal whose first step is `Started`/`Pending` at `now`.
    pub fn begin(
        operation_id: impl Into<String>,
        kind: OperationKind,
        holder: impl Into<String>,
        now: Timestamp,
    ) -> Self {
        Self {
            operation_id: operation_id.into(),
            kind,
            holder: holder.into(),
            fencing_token: None,
            targets: Vec::new(),
            context: Default::default(),
            started_at: now,
            steps: vec![JournalStep {
                step: Step::Started,
                status: StepStatus::Pending,
                at: now,
                detail: None,
            }],
        }
    }

    /// The latest step recorded.
    pub fn current(&self) -> Option<&JournalStep> {
        self.steps.last()
    }

    /// When the journal last moved (the time of its latest step).
    pub fn last_progress(&self) -> Timestamp {
        self.current().map_or(self.started_at, |s| s.at)
    }

    /// Whether the journal has not moved for at least `threshold` at `now`:
    /// what the recovery reconciler looks for.
    pub fn is_stuck(&self, now: Timestamp, threshold: std::time::Duration) -> bool {
        let idle = now.duration_since(self.last_progress());
        !idle.is_negative() && idle.unsigned_abs() >= threshold
    }

    /// Whether the operation reached a final step (`Done`, `Compensated` or
    /// `RolledBack`, succeeded).
    pub fn is_finished(&self) -> bool {
        self.current().is_some_and(|s| {
            s.status == StepStatus::Succeeded
                && matches!(s.step, Step::Done | Step::Compensated | Step::RolledBack)
        })
    }

    /// Whether a step has been recorded as succeeded.
    pub fn has_succeeded(&self, step: &Step) -> bool {
        self.steps
            .iter()
            .any(|s| &s.step == step && s.status == StepStatus::Succeeded)
    }
}

/// Keep detail strings bounded.
pub(crate) const MAX_DETAIL_BYTES: usize = 1024;

pub(crate) fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

impl From<String> for Step {
    fn from(s: String) -> Self {
        match s.as_str() {
            "Started" => Step::Started,
            "Cancelled" => Step::Cancelled,
            "Labeled" => Step::Labeled,
            "Done" => Step::Done,
            "Compensating" => Step::Compensating,
            "Compensated" => Step::Compensated,
            "RolledBack" => Step::RolledBack,
            _ => Step::Other(s),
        }
    }
}

impl From<Step> for String {
    fn from(s: Step) -> Self {
        s.as_str().to_owned()
    }
}

impl Step {
    /// The step's name as stored.
    pub fn as_str(&self) -> &str {
        match self {
            Step::Started => "Started",
            Step::Cancelled => "Cancelled",
            Step::Labeled => "Labeled",
            Step::Done => "Done",
            Step::Compensating => "Compensating",
            Step::Compensated => "Compensated",
            Step::RolledBack => "RolledBack",
            Step::Other(s) => s,
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<String> for OperationKind {
    fn from(s: String) -> Self {
        match s.as_str() {
            "Cancellation" => OperationKind::Cancellation,
            "Recovery" => OperationKind::Recovery,
            _ => OperationKind::Other(s),
        }
    }
}

impl From<OperationKind> for String {
    fn from(k: OperationKind) -> Self {
        match k {
            OperationKind::Cancellation => "Cancellation".to_owned(),
            OperationKind::Recovery => "Recovery".to_owned(),
            OperationKind::Other(s) => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_names_round_trip_including_custom_ones() {
        for step in [Step::Started, Step::Labeled, Step::Other("Scaled".into())] {
            let json = serde_json::to_string(&step).unwrap();
            assert_eq!(serde_json::from_str::<Step>(&json).unwrap(), step);
        }
        assert_eq!(
            serde_json::to_string(&Step::Cancelled).unwrap(),
            "\"Cancelled\""
        );
    }

    #[test]
    fn a_journal_is_stuck_only_after_the_threshold_without_progress() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let j = OperationJournal::begin("op", OperationKind::Cancellation, "pod/1", t0);
        let threshold = std::time::Duration::from_secs(60);
        assert!(!j.is_stuck(t0 + jiff::SignedDuration::from_secs(59), threshold));
        assert!(j.is_stuck(t0 + jiff::SignedDuration::from_secs(60), threshold));
        assert!(!j.is_finished());
    }
}
