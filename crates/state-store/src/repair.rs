//! Repairs of a readable state that breaks one of its own rules.
//!
//! A state can break a rule without anyone's bug: `max_iterations` lowered
//! under tasks in flight, a document written by an older tool that allowed
//! duplicate feedback, a bounded history written before its bound. Refusing
//! such a state locks its task out for good, so the store repairs what has
//! one certain repair — as the starting design's `validate_state` does —
//! records each repair in the state (what, when), counts it and logs it at
//! WARN on the write that keeps it. What has no certain repair (a document
//! naming another task, a journal that goes back in time) is still an
//! error naming the field.
//!
//! The one rule: **a repair only removes or lowers what the rule forbids,
//! never invents data** — the newest of duplicate feedback is kept, a
//! bounded history keeps its newest entries, an iteration over the maximum
//! is capped at it.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::schema::{
    MAX_CANCELLATION_HISTORY, MAX_COMPACTIONS, MAX_ERROR_MESSAGES, MAX_PENDING_SUPERSESSIONS,
    MAX_RECENT_DELIVERIES, RemediationState, TaskStatus,
};

/// Repairs kept in a state (newest kept).
pub const MAX_REPAIRS: usize = 20;

/// Longest detail kept in a repair record.
const MAX_DETAIL: usize = 256;

/// What a repair fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RepairKind {
    /// The iteration was over the maximum: capped at it, and an active task
    /// set `MaxIterationsReached`.
    IterationCapped,
    /// Feedback entries shared a comment id: the newest of each kept.
    DuplicateFeedbackDropped,
    /// A bounded history held more than its bound: its newest kept.
    HistoryTrimmed,
}

impl RepairKind {
    /// Every kind.
    pub const ALL: [RepairKind; 3] = [
        RepairKind::IterationCapped,
        RepairKind::DuplicateFeedbackDropped,
        RepairKind::HistoryTrimmed,
    ];

    /// The kind's name in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RepairKind::IterationCapped => "iteration_capped",
            RepairKind::DuplicateFeedbackDropped => "duplicate_feedback_dropped",
            RepairKind::HistoryTrimmed => "history_trimmed",
        }
    }
}

/// One repair, as recorded in the state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairRecord {
    /// When it was made.
    pub at: Timestamp,
    /// What it fixed.
    pub kind: RepairKind,
    /// What exactly (field names and counts, never feedback bodies).
    pub detail: String,
}

impl RemediationState {
    /// Repairs what breaks a rule and has one certain repair (see the
    /// [module documentation](self)), records each repair in
    /// [`repairs`](Self::repairs) and returns the new records (none when
    /// the state keeps every rule).
    pub fn repair(&mut self, max_iterations: u32, now: Timestamp) -> Vec<RepairRecord> {
        let mut made = Vec::new();
        let mut note = |kind, detail: String| {
            let mut detail = detail;
            if detail.len() > MAX_DETAIL {
                let mut cut = MAX_DETAIL;
                while !detail.is_char_boundary(cut) {
                    cut -= 1;
                }
                detail.truncate(cut);
            }
            made.push(RepairRecord {
                at: now,
                kind,
                detail,
            });
        };

        if self.iteration > max_iterations {
            let mut detail = format!(
                "iteration {} capped at the maximum {max_iterations}",
                self.iteration
            );
            self.iteration = max_iterations;
            if !self.status.is_terminal() {
                detail.push_str(&format!(
                    "; status {} set MaxIterationsReached",
                    self.status.as_str()
                ));
                self.status = TaskStatus::MaxIterationsReached;
            }
            note(RepairKind::IterationCapped, detail);
        }

        let dropped = keep_newest_feedback(self);
        if !dropped.is_empty() {
            let shown: Vec<&str> = dropped.iter().take(10).map(String::as_str).collect();
            note(
                RepairKind::DuplicateFeedbackDropped,
                format!(
                    "{} duplicate feedback entries dropped, the newest of each kept (comment ids {})",
                    dropped.len(),
                    shown.join(", ")
                ),
            );
        }

        for (field, over) in [
            (
                "error_messages",
                trim(&mut self.error_messages, MAX_ERROR_MESSAGES),
            ),
            (
                "cancellation_history",
                trim(&mut self.cancellation_history, MAX_CANCELLATION_HISTORY),
            ),
            (
                "pending_supersessions",
                trim(&mut self.pending_supersessions, MAX_PENDING_SUPERSESSIONS),
            ),
            (
                "recent_deliveries",
                trim(&mut self.recent_deliveries, MAX_RECENT_DELIVERIES),
            ),
            ("compactions", trim(&mut self.compactions, MAX_COMPACTIONS)),
            ("repairs", trim(&mut self.repairs, MAX_REPAIRS)),
        ] {
            if over > 0 {
                note(
                    RepairKind::HistoryTrimmed,
                    format!("{field}: the {over} oldest entries over its bound dropped"),
                );
            }
        }

        self.repairs.extend(made.iter().cloned());
        trim(&mut self.repairs, MAX_REPAIRS);
        made
    }
}

/// Drops all but the newest (latest `created_at`, then the later position)
/// entry of each comment id, keeping the order; returns the ids dropped.
fn keep_newest_feedback(state: &mut RemediationState) -> Vec<String> {
    let history = &state.feedback_history;
    let mut newest: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, entry) in history.iter().enumerate() {
        newest
            .entry(entry.comment_id.as_str())
            .and_modify(|kept| {
                if history[*kept].created_at <= entry.created_at {
                    *kept = i;
                }
            })
            .or_insert(i);
    }
    if newest.len() == history.len() {
        return Vec::new();
    }
    let keep: std::collections::HashSet<usize> = newest.into_values().collect();
    let mut dropped = Vec::new();
    let mut index = 0;
    state.feedback_history.retain(|entry| {
        let kept = keep.contains(&index);
        index += 1;
        if !kept {
            dropped.push(entry.comment_id.clone());
        }
        kept
    });
    dropped
}

/// Keeps the newest `max` entries (the end); returns how many were dropped.
fn trim<T>(entries: &mut Vec<T>, max: usize) -> usize {
    let over = entries.len().saturating_sub(max);
    entries.drain(..over);
    over
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::schema::{ErrorMessage, FeedbackEntry, Severity};

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + second).unwrap()
    }

    fn feedback(id: &str, second: i64, body: &str) -> FeedbackEntry {
        FeedbackEntry {
            comment_id: id.into(),
            severity: Severity::Medium,
            resolved: false,
            body: body.into(),
            author: "reviewer".into(),
            created_at: at(second),
            resolved_at: None,
            issue_type: None,
            extra: Default::default(),
        }
    }

    #[test]
    fn a_state_that_keeps_every_rule_is_left_as_it_is() {
        let mut state = RemediationState::new("t", at(0));
        state.iteration = 3;
        state.feedback_history = vec![feedback("1", 1, "a"), feedback("2", 2, "b")];
        let before = state.clone();
        assert!(state.repair(10, at(9)).is_empty());
        assert_eq!(state, before);
    }

    #[test]
    fn an_iteration_over_the_maximum_is_capped_and_an_active_task_stopped() {
        let mut state = RemediationState::new("t", at(0));
        state.iteration = 8;
        state.status = TaskStatus::InProgress;
        let made = state.repair(5, at(9));
        assert_eq!(state.iteration, 5);
        assert_eq!(state.status, TaskStatus::MaxIterationsReached);
        assert_eq!(made.len(), 1);
        assert_eq!(made[0].kind, RepairKind::IterationCapped);
        assert!(
            made[0]
                .detail
                .contains("iteration 8 capped at the maximum 5")
        );
        assert_eq!(state.repairs, made, "recorded in the state");
        state.validate("t", 5).unwrap();

        let mut done = RemediationState::new("t", at(0));
        done.iteration = 8;
        done.status = TaskStatus::Completed;
        done.repair(5, at(9));
        assert_eq!(
            (done.iteration, done.status),
            (5, TaskStatus::Completed),
            "a finished task keeps its outcome"
        );
    }

    #[test]
    fn duplicate_feedback_keeps_the_newest_of_each_id_in_order() {
        let mut state = RemediationState::new("t", at(0));
        state.feedback_history = vec![
            feedback("1", 5, "first 1"),
            feedback("2", 1, "only 2"),
            feedback("1", 9, "newest 1"),
            feedback("3", 4, "newer 3"),
            feedback("3", 4, "same time, later place 3"),
            feedback("1", 2, "old 1"),
        ];
        let made = state.repair(10, at(10));
        let bodies: Vec<&str> = state
            .feedback_history
            .iter()
            .map(|e| e.body.as_str())
            .collect();
        assert_eq!(bodies, ["only 2", "newest 1", "same time, later place 3"]);
        assert_eq!(made.len(), 1);
        assert_eq!(made[0].kind, RepairKind::DuplicateFeedbackDropped);
        assert!(made[0].detail.starts_with("3 duplicate feedback entries"));
        assert!(!made[0].detail.contains("first 1"), "never a body");
        state.validate("t", 10).unwrap();
    }

    #[test]
    fn a_history_over_its_bound_keeps_its_newest() {
        let mut state = RemediationState::new("t", at(0));
        state.error_messages = (0..MAX_ERROR_MESSAGES as i64 + 3)
            .map(|i| ErrorMessage {
                at: at(i),
                message: format!("e{i}"),
            })
            .collect();
        let made = state.repair(10, at(100));
        assert_eq!(state.error_messages.len(), MAX_ERROR_MESSAGES);
        assert_eq!(state.error_messages[0].message, "e3");
        assert_eq!(made[0].kind, RepairKind::HistoryTrimmed);
        assert!(made[0].detail.starts_with("error_messages: the 3 oldest"));
        state.validate("t", 10).unwrap();
    }

    #[test]
    fn the_repair_record_itself_is_bounded() {
        let mut state = RemediationState::new("t", at(0));
        for i in 0..(MAX_REPAIRS as i64 + 5) {
            state.iteration = 20;
            state.status = TaskStatus::InProgress;
            state.repair(10, at(i));
        }
        assert_eq!(state.repairs.len(), MAX_REPAIRS);
        assert_eq!(state.repairs.last().unwrap().at, at(MAX_REPAIRS as i64 + 4));
    }
}
