//! What a cycle finds: one kind per row of the decision table (see the
//! crate documentation), and what was done about it.

use serde::{Deserialize, Serialize};

/// A kind of inconsistency: a row of the decision table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A supersession recorded long enough ago, with no operation open:
    /// its request was lost (or refused, or dropped by a full queue).
    PendingSupersession,
    /// An unfinished journal whose lock nobody holds: its holder died.
    AbandonedJournal,
    /// A run marked superseded, still running past its cancellation's
    /// deadline, with no operation open for its task.
    StaleRunAlive,
    /// A run whose pods are gone but whose object a foreign finalizer
    /// holds past the deadline: someone else's to release.
    RunHeldByFinalizer,
    /// A cancellation recorded whose label transition failed.
    LabelsNotMoved,
    /// A task Lease whose holder stopped renewing it, with no journal
    /// behind it.
    OrphanedLease,
    /// A state document that could not be read: rebuilt from what
    /// survived, the raw payload quarantined.
    UnreadableState,
    /// A state that breaks its own rules and cannot be repaired safely.
    InvalidState,
    /// A task whose recorded head is not its pull request's head on GitHub
    /// (a webhook that never arrived).
    HeadDrift,
}

impl Kind {
    /// Every kind, in table order.
    pub const ALL: [Kind; 9] = [
        Kind::PendingSupersession,
        Kind::AbandonedJournal,
        Kind::StaleRunAlive,
        Kind::RunHeldByFinalizer,
        Kind::LabelsNotMoved,
        Kind::OrphanedLease,
        Kind::UnreadableState,
        Kind::InvalidState,
        Kind::HeadDrift,
    ];

    /// The kind's name in metrics and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::PendingSupersession => "pending_supersession",
            Kind::AbandonedJournal => "abandoned_journal",
            Kind::StaleRunAlive => "stale_run_alive",
            Kind::RunHeldByFinalizer => "run_held_by_finalizer",
            Kind::LabelsNotMoved => "labels_not_moved",
            Kind::OrphanedLease => "orphaned_lease",
            Kind::UnreadableState => "unreadable_state",
            Kind::InvalidState => "invalid_state",
            Kind::HeadDrift => "head_drift",
        }
    }
}

/// What was done about one finding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Handed to the coordinator (a cancellation, or a journal resumed).
    Handed,
    /// Repaired by the reconciler itself.
    Repaired,
    /// Flagged for a human (`needs-intervention`), with the reason.
    Flagged(String),
    /// Left alone this cycle (a budget ran out, or it went away meanwhile).
    Deferred(String),
    /// Trying to act failed; the next cycle tries again.
    Failed(String),
}

/// One finding of a cycle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Which row.
    pub kind: Kind,
    /// The task it concerns.
    pub task_id: String,
    /// The object concerned when it is not the task's state (a run, a
    /// Lease).
    pub object: Option<String>,
    /// What was done.
    pub action: Action,
}
