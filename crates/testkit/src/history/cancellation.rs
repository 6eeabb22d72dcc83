//! The cancellation history checker: the facts the fakes recorded during a
//! scenario or a chaos run (FakeKube's request log and stored objects, the
//! task state versions, FakeGitHub's PR heads and label history), judged
//! against the safety claims of the cancellation flow.
//!
//! The one rule, as for the other checkers in [`crate::history`]: **it
//! judges only what was recorded**, never what the system says about itself.
//! The positions it compares — a pod seen gone against the state write that
//! recorded its run cancelled — must come from one total order of writes:
//! FakeKube's resourceVersion orders every write as etcd does. Positions of
//! delete requests (request-log `seq`) are only reported. A fact without a
//! position is a fact about the end of the run.
//!
//! # The claims
//!
//! For every task, the *newest head* is the PR's head on GitHub at the end
//! (not what any webhook said); a run is *stale* when its head differs from
//! the newest head, or when the PR was closed.
//!
//! - **No lost cancellation**: no stale run's pod still exists at the end.
//! - **No wrong cancellation**: no run of the newest head of an open PR lost
//!   its pod, was asked to be deleted, or was recorded cancelled.
//! - **No duplicate cancellation record**: the final state lists each
//!   cancelled run once.
//! - **Never recorded cancelled while its pod existed**: the first state
//!   write recording a run cancelled comes after the position at which its
//!   pod was seen gone.
//! - **No orphaned Lease**: no Lease is still held at the end by a holder
//!   that is no longer alive.
//! - **No outside label lost**: a label an outside writer added (and did not
//!   remove afterwards) is on the PR at the end.
//! - **Labels in their target state**, when the test states one.
//!
//! # Example
//!
//! ```
//! use testkit::history::cancellation::CancellationHistory;
//!
//! let mut history = CancellationHistory::new();
//! history.run("task-42", "review-old", "aaa");
//! history.run("task-42", "review-new", "bbb");
//! history.newest_head("task-42", "bbb");
//! history.delete_requested("review-old", 10);
//! history.pod_gone("review-old", 14);
//! history.recorded_cancelled("task-42", "review-old", 15);
//! history.final_cancellation_records("task-42", ["review-old"]);
//! history.pod_exists_at_end("review-new");
//! assert!(history.check().is_ok());
//!
//! // The new head's run must survive: deleting it is a wrong cancellation.
//! history.delete_requested("review-new", 20);
//! assert_eq!(history.violations().len(), 1);
//! ```

use std::collections::{BTreeMap, BTreeSet};

/// A position in the run's order of writes (FakeKube's resourceVersion), or
/// for delete requests the request log's `seq`.
pub type Seq = u64;

/// The recorded facts of one run of the cancellation flow. Fed after the run
/// from what the fakes recorded; [`check`](Self::check) judges them.
#[derive(Debug, Clone, Default)]
pub struct CancellationHistory {
    /// Run name ▸ (task, head).
    runs: BTreeMap<String, (String, String)>,
    /// Task ▸ the PR's head at the end.
    newest_heads: BTreeMap<String, String>,
    /// Tasks whose PR was closed or merged.
    closed: BTreeSet<String>,
    /// Run ▸ positions of delete requests for it (or its pod).
    deletes: BTreeMap<String, Vec<Seq>>,
    /// Run ▸ the earliest position at which its pod was seen gone.
    pods_gone: BTreeMap<String, Seq>,
    /// Runs whose pod still exists at the end.
    pods_at_end: BTreeSet<String>,
    /// (task, run) ▸ positions of state writes recording the run cancelled.
    recorded: BTreeMap<(String, String), Vec<Seq>>,
    /// Task ▸ the run names in its final cancellation records, in order.
    final_records: BTreeMap<String, Vec<String>>,
    /// Lease name ▸ its holder at the end, if held.
    leases_at_end: BTreeMap<String, Option<String>>,
    /// Holder identities still alive at the end.
    live_holders: BTreeSet<String>,
    /// (pr, label) ▸ the outside writer's actions, in order: `true` added.
    outside_labels: BTreeMap<(u64, String), Vec<(Seq, bool)>>,
    /// PR ▸ its labels at the end.
    labels_at_end: BTreeMap<u64, BTreeSet<String>>,
    /// PR ▸ (labels that must be present, labels that must be absent).
    targets: BTreeMap<u64, (BTreeSet<String>, BTreeSet<String>)>,
}

impl CancellationHistory {
    /// An empty history (which passes its check).
    pub fn new() -> Self {
        Self::default()
    }

    /// A run (a `CodeRun` and its pod) of `task` working on `head` existed.
    pub fn run(
        &mut self,
        task: impl Into<String>,
        run: impl Into<String>,
        head: impl Into<String>,
    ) {
        self.runs.insert(run.into(), (task.into(), head.into()));
    }

    /// The PR of `task` has head `sha` at the end, as GitHub says.
    pub fn newest_head(&mut self, task: impl Into<String>, sha: impl Into<String>) {
        self.newest_heads.insert(task.into(), sha.into());
    }

    /// The PR of `task` was closed or merged: every run of it is stale.
    pub fn closed(&mut self, task: impl Into<String>) {
        self.closed.insert(task.into());
    }

    /// A delete of `run` (its `CodeRun` or its pod) was requested at `at`.
    pub fn delete_requested(&mut self, run: impl Into<String>, at: Seq) {
        self.deletes.entry(run.into()).or_default().push(at);
    }

    /// The pod of `run` was seen gone at `at` (the earliest such position counts).
    pub fn pod_gone(&mut self, run: impl Into<String>, at: Seq) {
        let slot = self.pods_gone.entry(run.into()).or_insert(at);
        *slot = (*slot).min(at);
    }

    /// The pod of `run` still exists at the end.
    pub fn pod_exists_at_end(&mut self, run: impl Into<String>) {
        self.pods_at_end.insert(run.into());
    }

    /// A state write at `at` recorded `run` of `task` as cancelled.
    pub fn recorded_cancelled(&mut self, task: impl Into<String>, run: impl Into<String>, at: Seq) {
        self.recorded
            .entry((task.into(), run.into()))
            .or_default()
            .push(at);
    }

    /// The final state of `task` lists these cancelled runs (repeats kept).
    pub fn final_cancellation_records<I, S>(&mut self, task: impl Into<String>, runs: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.final_records
            .entry(task.into())
            .or_default()
            .extend(runs.into_iter().map(Into::into));
    }

    /// Lease `name` exists at the end, held by `holder` (`None`: released).
    pub fn lease_at_end(&mut self, name: impl Into<String>, holder: Option<String>) {
        self.leases_at_end.insert(name.into(), holder);
    }

    /// Holder identity `holder` is still alive at the end (its Leases are not orphaned).
    pub fn live_holder(&mut self, holder: impl Into<String>) {
        self.live_holders.insert(holder.into());
    }

    /// An outside writer (not supersede) added `label` to `pr` at `at`.
    pub fn outside_label_added(&mut self, pr: u64, label: impl Into<String>, at: Seq) {
        self.outside_label(pr, label.into(), at, true);
    }

    /// An outside writer removed `label` from `pr` at `at`.
    pub fn outside_label_removed(&mut self, pr: u64, label: impl Into<String>, at: Seq) {
        self.outside_label(pr, label.into(), at, false);
    }

    /// The labels of `pr` at the end.
    pub fn labels_at_end<I, S>(&mut self, pr: u64, labels: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.labels_at_end
            .insert(pr, labels.into_iter().map(Into::into).collect());
    }

    /// The labels of `pr` must end with every `present` label and no `absent` one.
    pub fn target_labels<P, A, S, T>(&mut self, pr: u64, present: P, absent: A)
    where
        P: IntoIterator<Item = S>,
        A: IntoIterator<Item = T>,
        S: Into<String>,
        T: Into<String>,
    {
        self.targets.insert(
            pr,
            (
                present.into_iter().map(Into::into).collect(),
                absent.into_iter().map(Into::into).collect(),
            ),
        );
    }

    /// `Ok` when no claim is violated, else the first violation.
    pub fn check(&self) -> Result<(), CancellationViolation> {
        self.violations().into_iter().next().map_or(Ok(()), Err)
    }

    /// Every violation, grouped by claim in the order of the module docs.
    pub fn violations(&self) -> Vec<CancellationViolation> {
        let mut out = Vec::new();
        self.check_runs(&mut out);
        self.check_records(&mut out);
        self.check_leases(&mut out);
        self.check_labels(&mut out);
        out
    }

    fn outside_label(&mut self, pr: u64, label: String, at: Seq, added: bool) {
        self.outside_labels
            .entry((pr, label))
            .or_default()
            .push((at, added));
    }

    /// Whether `run` is stale; `None` when the run's task has no known newest
    /// head and is not closed (the history cannot judge it).
    fn is_stale(&self, task: &str, head: &str) -> Option<bool> {
        if self.closed.contains(task) {
            return Some(true);
        }
        self.newest_heads.get(task).map(|newest| newest != head)
    }

    fn check_runs(&self, out: &mut Vec<CancellationViolation>) {
        for (run, (task, head)) in &self.runs {
            match self.is_stale(task, head) {
                None => out.push(CancellationViolation::UnknownNewestHead {
                    task: task.clone(),
                    run: run.clone(),
                }),
                Some(true) if self.pods_at_end.contains(run) => {
                    out.push(CancellationViolation::LostCancellation {
                        task: task.clone(),
                        run: run.clone(),
                        head: head.clone(),
                    });
                }
                Some(false) => {
                    let deleted_at = self.deletes.get(run).and_then(|d| d.iter().min().copied());
                    let gone_at = self.pods_gone.get(run).copied();
                    let recorded_at = self
                        .recorded
                        .get(&(task.clone(), run.clone()))
                        .and_then(|r| r.iter().min().copied());
                    if deleted_at.is_some() || gone_at.is_some() || recorded_at.is_some() {
                        out.push(CancellationViolation::WrongCancellation {
                            task: task.clone(),
                            run: run.clone(),
                            head: head.clone(),
                            deleted_at,
                            gone_at,
                            recorded_at,
                        });
                    }
                }
                Some(true) => {}
            }
        }
    }

    fn check_records(&self, out: &mut Vec<CancellationViolation>) {
        for (task, runs) in &self.final_records {
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for run in runs {
                *counts.entry(run.as_str()).or_default() += 1;
            }
            for (run, times) in counts.into_iter().filter(|(_, n)| *n > 1) {
                out.push(CancellationViolation::DuplicateRecord {
                    task: task.clone(),
                    run: run.to_owned(),
                    times,
                });
            }
        }
        for ((task, run), writes) in &self.recorded {
            let Some(&recorded_at) = writes.iter().min() else {
                continue;
            };
            let gone_at = self.pods_gone.get(run).copied();
            let still_there = self.pods_at_end.contains(run);
            if still_there || gone_at.is_none_or(|gone| gone > recorded_at) {
                out.push(CancellationViolation::RecordedWhilePodExisted {
                    task: task.clone(),
                    run: run.clone(),
                    recorded_at,
                    gone_at: gone_at.filter(|_| !still_there),
                });
            }
        }
    }

    fn check_leases(&self, out: &mut Vec<CancellationViolation>) {
        for (lease, holder) in &self.leases_at_end {
            if let Some(holder) = holder
                && !self.live_holders.contains(holder)
            {
                out.push(CancellationViolation::OrphanedLease {
                    lease: lease.clone(),
                    holder: holder.clone(),
                });
            }
        }
    }

    fn check_labels(&self, out: &mut Vec<CancellationViolation>) {
        let empty = BTreeSet::new();
        for ((pr, label), actions) in &self.outside_labels {
            let last = actions.iter().max_by_key(|(at, _)| *at);
            let Some(&(added_at, true)) = last else {
                continue;
            };
            let at_end = self.labels_at_end.get(pr).unwrap_or(&empty);
            if !at_end.contains(label) {
                out.push(CancellationViolation::OutsideLabelLost {
                    pr: *pr,
                    label: label.clone(),
                    added_at,
                });
            }
        }
        for (pr, (present, absent)) in &self.targets {
            let at_end = self.labels_at_end.get(pr).unwrap_or(&empty);
            let missing: Vec<String> = present.difference(at_end).cloned().collect();
            let unwanted: Vec<String> = absent.intersection(at_end).cloned().collect();
            if !missing.is_empty() || !unwanted.is_empty() {
                out.push(CancellationViolation::LabelsNotInTarget {
                    pr: *pr,
                    missing,
                    unwanted,
                    labels: at_end.iter().cloned().collect(),
                });
            }
        }
    }
}

/// A claim of the cancellation flow that a recorded history violates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CancellationViolation {
    /// A stale run's pod still exists at the end.
    #[error(
        "lost cancellation: task {task:?} run {run:?} of stale head {head:?} still has its pod"
    )]
    LostCancellation {
        /// The task.
        task: String,
        /// The run.
        run: String,
        /// The run's (stale) head.
        head: String,
    },
    /// A run of the newest head of an open PR was deleted, lost its pod, or
    /// was recorded cancelled.
    #[error(
        "wrong cancellation: task {task:?} run {run:?} of the newest head {head:?} (delete at {deleted_at:?}, pod gone at {gone_at:?}, recorded at {recorded_at:?})"
    )]
    WrongCancellation {
        /// The task.
        task: String,
        /// The run.
        run: String,
        /// The newest head, which the run works on.
        head: String,
        /// The first delete request for it, if any.
        deleted_at: Option<Seq>,
        /// When its pod was seen gone, if it was.
        gone_at: Option<Seq>,
        /// The first state write recording it cancelled, if any.
        recorded_at: Option<Seq>,
    },
    /// The final state lists one cancelled run more than once.
    #[error("duplicate cancellation record: task {task:?} lists run {run:?} {times} times")]
    DuplicateRecord {
        /// The task.
        task: String,
        /// The run.
        run: String,
        /// How many records name it.
        times: usize,
    },
    /// A run was recorded cancelled before its pod was seen gone (or while
    /// its pod still exists at the end: `gone_at` is `None`).
    #[error(
        "task {task:?} run {run:?} recorded cancelled at {recorded_at} while its pod existed (seen gone at {gone_at:?})"
    )]
    RecordedWhilePodExisted {
        /// The task.
        task: String,
        /// The run.
        run: String,
        /// The first state write recording it cancelled.
        recorded_at: Seq,
        /// When its pod was seen gone, if ever.
        gone_at: Option<Seq>,
    },
    /// A Lease is held at the end by a holder that is no longer alive.
    #[error("orphaned Lease {lease:?}: still held by {holder:?}, which is gone")]
    OrphanedLease {
        /// The Lease name.
        lease: String,
        /// Its holder identity.
        holder: String,
    },
    /// A label an outside writer added is missing at the end.
    #[error("outside label lost: PR {pr} label {label:?} (added at {added_at}) is gone")]
    OutsideLabelLost {
        /// The PR number.
        pr: u64,
        /// The label.
        label: String,
        /// When the outside writer last added it.
        added_at: Seq,
    },
    /// A PR's labels at the end are not in the target state the test stated.
    #[error("PR {pr} labels {labels:?} not in target: missing {missing:?}, unwanted {unwanted:?}")]
    LabelsNotInTarget {
        /// The PR number.
        pr: u64,
        /// Target labels that are missing.
        missing: Vec<String>,
        /// Labels that must be absent but are there.
        unwanted: Vec<String>,
        /// The labels at the end.
        labels: Vec<String>,
    },
    /// A run's task has no recorded newest head and is not closed: a
    /// recording mistake, reported so that an incomplete history never passes.
    #[error("task {task:?} of run {run:?} has no recorded newest head")]
    UnknownNewestHead {
        /// The task.
        task: String,
        /// The run.
        run: String,
    },
}

impl CancellationViolation {
    /// Always `false`: a violation is a fact about a recorded history.
    pub fn is_transient(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One task, an old run cancelled correctly, the new run kept, the lock
    /// released, the outside label kept and the target labels reached.
    fn clean() -> CancellationHistory {
        let mut h = CancellationHistory::new();
        h.run("t1", "old", "aaa");
        h.run("t1", "new", "bbb");
        h.newest_head("t1", "bbb");
        h.delete_requested("old", 10);
        h.pod_gone("old", 14);
        h.recorded_cancelled("t1", "old", 15);
        h.final_cancellation_records("t1", ["old"]);
        h.pod_exists_at_end("new");
        h.lease_at_end("cancel-task-t1", None);
        h.outside_label_added(7, "keep-me", 3);
        h.labels_at_end(7, ["keep-me", "needs-review"]);
        h.target_labels(7, ["needs-review"], ["in-testing"]);
        h
    }

    #[test]
    fn a_clean_history_passes() {
        assert_eq!(clean().violations(), vec![]);
        assert!(CancellationHistory::new().check().is_ok());
    }

    #[test]
    fn a_stale_run_whose_pod_survives_is_a_lost_cancellation() {
        let mut h = clean();
        h.run("t1", "older", "000");
        h.pod_exists_at_end("older");
        assert_eq!(
            h.violations(),
            vec![CancellationViolation::LostCancellation {
                task: "t1".into(),
                run: "older".into(),
                head: "000".into(),
            }]
        );
    }

    #[test]
    fn every_run_of_a_closed_pr_is_stale() {
        let mut h = clean();
        h.closed("t1");
        assert!(matches!(
            h.violations().as_slice(),
            [CancellationViolation::LostCancellation { run, .. }] if run == "new"
        ));
    }

    #[test]
    fn deleting_a_run_of_the_newest_head_is_a_wrong_cancellation() {
        let mut h = clean();
        h.delete_requested("new", 20);
        assert_eq!(
            h.violations(),
            vec![CancellationViolation::WrongCancellation {
                task: "t1".into(),
                run: "new".into(),
                head: "bbb".into(),
                deleted_at: Some(20),
                gone_at: None,
                recorded_at: None,
            }]
        );
    }

    #[test]
    fn recording_a_newest_head_run_cancelled_is_a_wrong_cancellation_too() {
        let mut h = clean();
        h.recorded_cancelled("t1", "new", 30);
        let v = h.violations();
        assert!(v.iter().any(|v| matches!(
            v,
            CancellationViolation::WrongCancellation {
                recorded_at: Some(30),
                ..
            }
        )));
        // Its pod still exists, so it was also recorded while the pod existed.
        assert!(v.iter().any(|v| matches!(
            v,
            CancellationViolation::RecordedWhilePodExisted { run, gone_at: None, .. } if run == "new"
        )));
    }

    #[test]
    fn a_run_listed_twice_in_the_final_records_is_a_duplicate() {
        let mut h = clean();
        h.final_cancellation_records("t1", ["old"]);
        assert_eq!(
            h.violations(),
            vec![CancellationViolation::DuplicateRecord {
                task: "t1".into(),
                run: "old".into(),
                times: 2,
            }]
        );
    }

    #[test]
    fn recording_before_the_pod_was_seen_gone_is_reported() {
        let mut h = clean();
        // A second, earlier write recorded it before the pod was seen gone.
        h.recorded_cancelled("t1", "old", 12);
        assert_eq!(
            h.violations(),
            vec![CancellationViolation::RecordedWhilePodExisted {
                task: "t1".into(),
                run: "old".into(),
                recorded_at: 12,
                gone_at: Some(14),
            }]
        );
    }

    #[test]
    fn recording_a_run_whose_pod_was_never_seen_gone_is_reported() {
        let mut h = CancellationHistory::new();
        h.run("t1", "old", "aaa");
        h.newest_head("t1", "bbb");
        h.recorded_cancelled("t1", "old", 5);
        assert!(matches!(
            h.violations().as_slice(),
            [CancellationViolation::RecordedWhilePodExisted { gone_at: None, .. }]
        ));
    }

    #[test]
    fn a_lease_held_by_a_dead_holder_is_orphaned_and_by_a_live_one_is_not() {
        let mut h = clean();
        h.lease_at_end("cancel-task-t2", Some("pod-a/1".into()));
        h.lease_at_end("controller-leader", Some("pod-b/2".into()));
        h.live_holder("pod-b/2");
        assert_eq!(
            h.violations(),
            vec![CancellationViolation::OrphanedLease {
                lease: "cancel-task-t2".into(),
                holder: "pod-a/1".into(),
            }]
        );
    }

    #[test]
    fn an_outside_label_missing_at_the_end_is_lost() {
        let mut h = clean();
        h.labels_at_end(7, ["needs-review"]);
        assert_eq!(
            h.violations(),
            vec![CancellationViolation::OutsideLabelLost {
                pr: 7,
                label: "keep-me".into(),
                added_at: 3,
            }]
        );
    }

    #[test]
    fn an_outside_label_the_outsider_removed_last_may_be_absent() {
        let mut h = clean();
        h.outside_label_added(7, "wip", 4);
        h.outside_label_removed(7, "wip", 9);
        assert_eq!(h.violations(), vec![]);
        // Order is by position, not by recording order.
        h.outside_label_added(7, "wip", 11);
        assert!(matches!(
            h.violations().as_slice(),
            [CancellationViolation::OutsideLabelLost { label, added_at: 11, .. }] if label == "wip"
        ));
    }

    #[test]
    fn labels_off_target_are_reported_with_what_is_missing_and_unwanted() {
        let mut h = clean();
        h.labels_at_end(7, ["keep-me", "in-testing"]);
        assert_eq!(
            h.violations(),
            vec![CancellationViolation::LabelsNotInTarget {
                pr: 7,
                missing: vec!["needs-review".into()],
                unwanted: vec!["in-testing".into()],
                labels: vec!["in-testing".into(), "keep-me".into()],
            }]
        );
    }

    #[test]
    fn a_run_of_a_task_without_a_newest_head_cannot_pass() {
        let mut h = clean();
        h.run("t9", "orphan", "ccc");
        assert_eq!(
            h.check(),
            Err(CancellationViolation::UnknownNewestHead {
                task: "t9".into(),
                run: "orphan".into(),
            })
        );
    }
}
