//! `AtomicLabelManager::transition_from`: a transition started from labels
//! the caller already read (a pull request's), on `MemoryLabels` and on
//! `GitHubLabels` against testkit's fake GitHub. Fresh labels save the
//! manager's read; stale ones end exactly where `transition` would.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{GitHubHarness, Harness, MemoryHarness, pr, set};
use label_cas::{AtomicLabelManager, Error, LabelTransition, TransitionPolicy, TransitionResult};
use resilience::BackoffPolicy;

fn stage() -> LabelTransition {
    LabelTransition::move_label("ready-for-qa", "needs-qa")
}

/// Interference retried after milliseconds, so the suite runs on real time
/// (the fake GitHub is a real server) without waiting seconds.
fn manager<H: Harness>(h: &H) -> AtomicLabelManager<std::sync::Arc<H::Backend>> {
    let quick = BackoffPolicy {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(20),
        ..BackoffPolicy::default()
    };
    AtomicLabelManager::new(h.backend())
        .with_policy(TransitionPolicy {
            interference_backoff: quick,
            ..TransitionPolicy::default()
        })
        .unwrap()
}

async fn fresh_known_labels_make_a_move_exactly_one_delete_and_one_post(h: &impl Harness) {
    h.outside_set(&pr(1), &["ready-for-qa", "human"]);
    let known = h.truth(&pr(1));
    let before = h.calls();
    let outcome = manager(h)
        .transition_from(&pr(1), &stage(), &known)
        .await
        .unwrap();
    assert_eq!(outcome.result, TransitionResult::Applied);
    assert_eq!(outcome.final_labels, set(&["human", "needs-qa"]));
    assert_eq!(h.truth(&pr(1)), outcome.final_labels);
    assert_eq!(
        (outcome.calls, h.calls() - before),
        (2, 2),
        "DELETE and POST, no read"
    );
}

async fn known_labels_that_look_done_are_confirmed_by_a_read_and_the_move_still_happens(
    h: &impl Harness,
) {
    // The caller read the PR after an earlier move; a human has moved it
    // back to QA since.
    h.outside_set(&pr(1), &["ready-for-qa"]);
    let outcome = manager(h)
        .transition_from(&pr(1), &stage(), &set(&["needs-qa"]))
        .await
        .unwrap();
    assert_eq!(outcome.result, TransitionResult::Applied);
    assert_eq!(h.truth(&pr(1)), set(&["needs-qa"]));
    assert_eq!(outcome.calls, 3, "read, DELETE, POST");
}

async fn known_labels_that_are_really_done_cost_one_read_and_no_write(h: &impl Harness) {
    h.outside_set(&pr(1), &["needs-qa"]);
    let before = h.calls();
    let outcome = manager(h)
        .transition_from(&pr(1), &stage(), &set(&["needs-qa"]))
        .await
        .unwrap();
    assert_eq!(outcome.result, TransitionResult::AlreadyInState);
    assert_eq!(
        h.calls() - before,
        1,
        "a no-write outcome is decided on a read"
    );
}

async fn known_labels_missing_the_precondition_are_confirmed_by_a_read(h: &impl Harness) {
    // Stale the other way: the label the move needs arrived after the read.
    h.outside_set(&pr(1), &["ready-for-qa"]);
    let outcome = manager(h)
        .transition_from(&pr(1), &stage(), &set(&[]))
        .await
        .unwrap();
    assert_eq!(outcome.result, TransitionResult::Applied);
    assert_eq!(h.truth(&pr(1)), set(&["needs-qa"]));
}

async fn a_claim_on_a_label_already_moved_on_rereads_and_conflicts_with_the_labels_as_they_are(
    h: &impl Harness,
) {
    // Read with ready-for-qa; another writer moved the PR to qa-passed since.
    h.outside_set(&pr(1), &["qa-passed", "human"]);
    let before = h.calls();
    let err = manager(h)
        .transition_from(&pr(1), &stage(), &set(&["ready-for-qa", "human"]))
        .await
        .unwrap_err();
    match &err {
        Error::Conflict { current, .. } => assert_eq!(*current, set(&["human", "qa-passed"])),
        other => panic!("expected a conflict, got {other}"),
    }
    assert_eq!(h.truth(&pr(1)), set(&["human", "qa-passed"]), "untouched");
    assert_eq!(h.calls() - before, 2, "the lost claim, then a read");
}

async fn a_stale_claim_on_a_label_not_required_rereads_and_completes(h: &impl Harness) {
    let cleanup = LabelTransition::new()
        .removing(["stale-label"])
        .adding(["fresh-label"]);
    h.outside_set(&pr(1), &["human"]);
    let outcome = manager(h)
        .transition_from(&pr(1), &cleanup, &set(&["stale-label", "human"]))
        .await
        .unwrap();
    assert_eq!(outcome.result, TransitionResult::Applied);
    assert_eq!(h.truth(&pr(1)), set(&["fresh-label", "human"]));
    assert_eq!(outcome.calls, 3, "the 404 DELETE, a read, the POST");
}

async fn a_forbidden_label_added_since_the_read_is_caught_by_verification_and_undone(
    h: &impl Harness,
) {
    let guarded = stage().forbidding(["hold"]);
    h.outside_set(&pr(1), &["ready-for-qa", "hold"]);
    let err = manager(h)
        .transition_from(&pr(1), &guarded, &set(&["ready-for-qa"]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    assert_eq!(
        h.truth(&pr(1)),
        set(&["hold", "ready-for-qa"]),
        "what the claim and the POST did is undone"
    );
}

async fn of_two_writers_with_the_same_known_labels_one_moves_and_the_other_finds_it_done(
    h: &impl Harness,
) {
    h.outside_set(&pr(1), &["ready-for-qa"]);
    let known = h.truth(&pr(1));
    let (first, second) = (manager(h), manager(h));
    let (target, transition) = (pr(1), stage());
    let (a, b) = tokio::join!(
        first.transition_from(&target, &transition, &known),
        second.transition_from(&target, &transition, &known),
    );
    let results: Vec<_> = [a, b]
        .into_iter()
        .map(|r| r.map(|o| o.result).map_err(|e| e.to_string()))
        .collect();
    let applied = results
        .iter()
        .filter(|r| **r == Ok(TransitionResult::Applied))
        .count();
    assert_eq!(applied, 1, "exactly one claim wins: {results:?}");
    assert!(
        results.iter().all(|r| matches!(
            r,
            Ok(TransitionResult::Applied | TransitionResult::AlreadyInState)
        ) || r.as_ref().is_err_and(|e| e.contains("conflicts"))),
        "the other finds it done or conflicts: {results:?}"
    );
    assert_eq!(h.truth(&pr(1)), set(&["needs-qa"]));
}

/// Runs every check on a fresh harness from `make`.
macro_rules! checks {
    ($module:ident, $make:expr) => {
        common::suite!($module, $make;
            fresh_known_labels_make_a_move_exactly_one_delete_and_one_post,
            known_labels_that_look_done_are_confirmed_by_a_read_and_the_move_still_happens,
            known_labels_that_are_really_done_cost_one_read_and_no_write,
            known_labels_missing_the_precondition_are_confirmed_by_a_read,
            a_claim_on_a_label_already_moved_on_rereads_and_conflicts_with_the_labels_as_they_are,
            a_stale_claim_on_a_label_not_required_rereads_and_completes,
            a_forbidden_label_added_since_the_read_is_caught_by_verification_and_undone,
            of_two_writers_with_the_same_known_labels_one_moves_and_the_other_finds_it_done,
        );
    };
}

checks!(memory, MemoryHarness::new());
checks!(github, GitHubHarness::start().await);
