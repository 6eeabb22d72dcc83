//! Racing writers: many concurrent transitions on a few pull requests,
//! from several managers (replicas), while an outside writer (a human)
//! keeps adding and removing unrelated labels.
//!
//! Invariants checked after every round, from the outcomes and the labels
//! as they really are:
//! - every transition ended applied, already in state, or `Conflict` — no
//!   other error;
//! - exactly one transition per pull request applied the move (the one
//!   whose DELETE claimed `ready-for-qa`);
//! - nothing half-done: the winner's labels are all there, no loser's
//!   label is, and `ready-for-qa` is gone;
//! - no outside label was ever lost or resurrected.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{GitHubHarness, Harness, MemoryHarness, pr};
use label_cas::{
    AtomicLabelManager, Error, LabelTransition, LocalPrLocks, PrLock, PrRef, TransitionOutcome,
    TransitionPolicy, TransitionResult,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use testkit::calls::Outcome;
use testkit::faults::Match;
use testkit::github::FakeGitHub;

const PRS: u64 = 3;
const WORKERS_PER_PR: usize = 8;
const MANAGERS: usize = 3;
const KEEP: &str = "human-keep";

/// Worker `k`'s transition: even workers make supersede's plain move (the
/// same for all of them); odd ones also add a label naming themselves, so
/// a loser's trace would be visible.
fn transition_of(worker: usize) -> LabelTransition {
    let base = LabelTransition::move_label("ready-for-qa", "in-progress");
    if worker.is_multiple_of(2) {
        base
    } else {
        base.adding([format!("owner-{worker}")])
    }
}

/// The outside writer: toggles `human-0..4` on random PRs until told to
/// stop; returns what each PR should carry of them.
fn outside_writer<H: Harness + 'static>(
    harness: Arc<H>,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<BTreeMap<u64, BTreeSet<String>>> {
    tokio::spawn(async move {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut expected: BTreeMap<u64, BTreeSet<String>> =
            (1..=PRS).map(|n| (n, BTreeSet::new())).collect();
        while !stop.load(Ordering::SeqCst) {
            let n = rng.random_range(1..=PRS);
            let label = format!("human-{}", rng.random_range(0..5));
            let mine = expected.get_mut(&n).unwrap();
            if mine.contains(&label) {
                assert!(
                    harness.outside_remove(&pr(n), &label),
                    "{label} vanished from #{n}"
                );
                mine.remove(&label);
            } else {
                harness.outside_add(&pr(n), &label);
                mine.insert(label);
            }
            tokio::time::sleep(Duration::from_micros(rng.random_range(100..1500))).await;
        }
        expected
    })
}

/// One round: returns every worker's (PR, worker, result).
async fn round<H: Harness + 'static>(
    harness: Arc<H>,
    seed: u64,
    lock: Option<Arc<dyn PrLock>>,
) -> Vec<(u64, usize, Result<TransitionOutcome, Error>)> {
    for n in 1..=PRS {
        harness.outside_set(&pr(n), &["ready-for-qa", KEEP]);
    }
    let policy = TransitionPolicy::default();
    let managers: Vec<Arc<AtomicLabelManager<Arc<H::Backend>>>> = (0..MANAGERS)
        .map(|_| {
            let m = AtomicLabelManager::new(harness.backend())
                .with_policy(policy.clone())
                .unwrap();
            Arc::new(match &lock {
                Some(lock) => m.with_lock(Arc::clone(lock)),
                None => m,
            })
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let writer = outside_writer(Arc::clone(&harness), seed, Arc::clone(&stop));
    let mut tasks = Vec::new();
    for n in 1..=PRS {
        for worker in 0..WORKERS_PER_PR {
            let manager = Arc::clone(&managers[(worker + n as usize) % MANAGERS]);
            tasks.push(tokio::spawn(async move {
                let result = manager.transition(&pr(n), &transition_of(worker)).await;
                (n, worker, result)
            }));
        }
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    stop.store(true, Ordering::SeqCst);
    let expected_outside = writer.await.unwrap();
    check(&*harness, &results, &expected_outside);
    results
}

fn check<H: Harness>(
    harness: &H,
    results: &[(u64, usize, Result<TransitionOutcome, Error>)],
    expected_outside: &BTreeMap<u64, BTreeSet<String>>,
) {
    for n in 1..=PRS {
        let truth = harness.truth(&pr(n));
        let mine: Vec<_> = results.iter().filter(|(p, _, _)| *p == n).collect();
        let mut winners = Vec::new();
        for (_, worker, result) in &mine {
            match result {
                Ok(o) if o.result == TransitionResult::Applied => winners.push(*worker),
                Ok(o) => assert!(
                    o.added.is_empty() && o.removed.is_empty(),
                    "#{n} worker {worker}: {o:?}"
                ),
                Err(Error::Conflict { .. }) => {}
                Err(e) => panic!("#{n} worker {worker} failed: {e}"),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "#{n}: exactly one transition applies the move, got {winners:?}"
        );
        let winner = winners[0];
        let mut want: BTreeSet<String> = expected_outside[&n].clone();
        want.insert(KEEP.to_owned());
        want.insert("in-progress".to_owned());
        if winner % 2 == 1 {
            want.insert(format!("owner-{winner}"));
        }
        let have: BTreeSet<String> = truth.iter().map(str::to_owned).collect();
        assert_eq!(have, want, "#{n}: winner {winner}; outcomes {mine:#?}");
    }
}

fn count(
    results: &[(u64, usize, Result<TransitionOutcome, Error>)],
    f: impl Fn(&Result<TransitionOutcome, Error>) -> bool,
) -> usize {
    results.iter().filter(|(_, _, r)| f(r)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_moves_on_the_fake_github_are_all_or_nothing_and_lose_no_outside_label() {
    let mut conflicts = 0;
    for seed in 0..6 {
        let fake = FakeGitHub::builder().seed(seed);
        let harness = Arc::new(GitHubHarness::start_with(fake).await);
        // Up to 4 ms of latency on every request spreads the interleavings.
        harness
            .fake
            .faults()
            .latency(Match::any(), Duration::ZERO, Duration::from_millis(4));
        let results = round(Arc::clone(&harness), seed, None).await;
        conflicts += count(&results, |r| matches!(r, Err(Error::Conflict { .. })));
    }
    assert!(
        conflicts > 0,
        "the races never produced a conflict: the test proves nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_moves_under_a_per_pr_lock_never_collide_on_a_delete() {
    for seed in 0..3 {
        let harness = Arc::new(GitHubHarness::start_with(FakeGitHub::builder().seed(seed)).await);
        harness
            .fake
            .faults()
            .latency(Match::any(), Duration::ZERO, Duration::from_millis(2));
        let lock: Arc<dyn PrLock> = Arc::new(LocalPrLocks::new());
        let results = round(Arc::clone(&harness), seed, Some(lock)).await;
        let lost_claims =
            harness
                .fake
                .calls()
                .count_outcome(Some("delete"), Some("label"), &Outcome::Error(404));
        assert_eq!(lost_claims, 0, "one writer at a time: no DELETE ever loses");
        // Later workers see the move done: identical moves are already in
        // state, the others conflict on the precondition without writing.
        let in_state = count(
            &results,
            |r| matches!(r, Ok(o) if o.result == TransitionResult::AlreadyInState),
        );
        assert!(in_state > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_moves_on_memory_labels_keep_the_same_invariants() {
    for seed in 0..6 {
        round(Arc::new(MemoryHarness::new()), seed, None).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_over_many_pull_requests_moves_each_once_with_one_call_per_change() {
    let harness = GitHubHarness::start().await;
    let prs: Vec<PrRef> = (1..=20).map(pr).collect();
    for p in &prs {
        harness.outside_set(p, &["ready-for-qa", KEEP]);
    }
    let manager = AtomicLabelManager::new(harness.backend());
    let items: Vec<_> = prs
        .iter()
        .map(|p| {
            (
                p.clone(),
                LabelTransition::move_label("ready-for-qa", "in-progress").adding(["stage-2"]),
            )
        })
        .collect();
    let results = manager.transition_many(&items).await;
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(o) if o.applied() && o.calls == 3)),
        "{results:?}"
    );
    let calls = harness.fake.calls();
    assert_eq!(calls.count(Some("get"), Some("labels")), 20);
    assert_eq!(calls.count(Some("delete"), Some("label")), 20);
    assert_eq!(
        calls.count(Some("post"), Some("labels")),
        20,
        "both additions in one POST per PR"
    );
    assert_eq!(calls.count(Some("put"), None), 0, "never a PUT");
}
