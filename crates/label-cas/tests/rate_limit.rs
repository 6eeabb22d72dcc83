//! Rate limits and lost answers against the fake GitHub over HTTP: budgets
//! that run out, secondary limits with `retry-after`, and DELETEs whose
//! answer never arrives.
//!
//! Waits of a minute run on paused tokio time (the fake's windows use the
//! same clock). Those clients run without a request timeout: on paused time
//! a pending timeout timer would be auto-advanced while the socket waits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{GitHubHarness, Harness, pr, set};
use label_cas::{
    AtomicLabelManager, Error, Fetched, LabelBackend, LabelTransition, RateLimitPolicy,
    RateLimited, TransitionPolicy, TransitionResult,
};
use resilience::{BackoffPolicy, RetryPolicy};
use testkit::calls::Outcome;
use testkit::faults::{InjectedError, Match};
use testkit::github::FakeGitHub;
use tokio::time::Instant;

fn paced(h: &GitHubHarness, policy: RateLimitPolicy) -> RateLimited<Arc<label_cas::GitHubLabels>> {
    RateLimited::new(h.backend(), policy)
        .unwrap()
        .with_metrics(h.metrics.clone())
}

#[tokio::test(start_paused = true)]
async fn a_budget_down_to_the_reserve_waits_for_the_reset_instead_of_hitting_the_limit() {
    let fake = FakeGitHub::builder()
        .rate_limit(5)
        .rate_limit_window(Duration::from_secs(60));
    let h = GitHubHarness::start_with_timeout(fake, None).await;
    let labels = paced(
        &h,
        RateLimitPolicy {
            min_remaining: 1,
            ..RateLimitPolicy::default()
        },
    );
    let started = Instant::now();
    for _ in 0..4 {
        labels.get(&pr(1), None).await.unwrap(); // remaining 4, 3, 2, 1
    }
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "no wait above the reserve"
    );
    labels.get(&pr(1), None).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(59),
        "waited {:?} for the reset",
        started.elapsed()
    );
    assert_eq!(h.metrics.rate_limit_waits("budget"), 1);
    assert_eq!(
        h.fake
            .calls()
            .count_outcome(None, None, &Outcome::Error(403)),
        0,
        "never rejected"
    );
    assert_eq!(labels.rate_limit().unwrap().remaining, 4, "a fresh window");
}

#[tokio::test(start_paused = true)]
async fn an_exhausted_budget_answer_is_waited_out_until_the_reset_and_sent_again() {
    let fake = FakeGitHub::builder()
        .rate_limit(2)
        .rate_limit_window(Duration::from_secs(120));
    let h = GitHubHarness::start_with_timeout(fake, None).await;
    let labels = paced(
        &h,
        RateLimitPolicy {
            min_remaining: 0,
            ..RateLimitPolicy::default()
        },
    );
    labels.get(&pr(1), None).await.unwrap(); // we saw remaining: 1
    // Another tool on the same token spends the rest behind our back, so we
    // run into GitHub's 403 and must honour its x-ratelimit-reset.
    let other = h.fake.octocrab().unwrap();
    let _: serde_json::Value = other
        .get("/repos/acme/widgets/issues/9/labels", None::<&()>)
        .await
        .unwrap();
    let started = Instant::now();
    labels
        .add(&pr(1), &["after-reset".to_owned()])
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(119),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(
        h.fake
            .calls()
            .count_outcome(Some("post"), Some("labels"), &Outcome::Error(403)),
        1
    );
    assert_eq!(h.truth(&pr(1)), set(&["after-reset"]));
}

#[tokio::test(start_paused = true)]
async fn a_secondary_limit_403_with_retry_after_is_honoured() {
    let fake = FakeGitHub::builder()
        .secondary_limit(Duration::from_secs(1))
        .secondary_retry_after(Duration::from_secs(45));
    let h = GitHubHarness::start_with_timeout(fake, None).await;
    // Misconfigured on purpose: no spacing, so the second mutation is too soon.
    let labels = paced(
        &h,
        RateLimitPolicy {
            mutation_spacing: Duration::ZERO,
            ..RateLimitPolicy::default()
        },
    );
    labels.add(&pr(1), &["a".to_owned()]).await.unwrap();
    let started = Instant::now();
    labels.add(&pr(1), &["b".to_owned()]).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(45),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(
        h.fake
            .calls()
            .count_outcome(Some("post"), Some("labels"), &Outcome::Error(403)),
        1
    );
    assert_eq!(h.metrics.rate_limit_waits("rejected"), 1);
    assert_eq!(h.truth(&pr(1)), set(&["a", "b"]));
}

#[tokio::test(start_paused = true)]
async fn spaced_mutations_never_trip_the_secondary_limit() {
    let fake = FakeGitHub::builder().secondary_limit(Duration::from_secs(1));
    let h = GitHubHarness::start_with_timeout(fake, None).await;
    let labels = Arc::new(paced(&h, RateLimitPolicy::default())); // 1 s spacing
    for n in 1..=4 {
        h.outside_set(&pr(n), &["ready-for-qa"]);
    }
    let manager = AtomicLabelManager::new(Arc::clone(&labels));
    let items: Vec<_> = (1..=4)
        .map(|n| {
            (
                pr(n),
                LabelTransition::move_label("ready-for-qa", "in-progress"),
            )
        })
        .collect();
    let results = manager.transition_many(&items).await;
    assert!(
        results.iter().all(|r| matches!(r, Ok(o) if o.applied())),
        "{results:?}"
    );
    assert_eq!(
        h.fake
            .calls()
            .count_outcome(None, None, &Outcome::Error(403)),
        0
    );
    assert_eq!(
        h.fake.calls().count(Some("delete"), None) + h.fake.calls().count(Some("post"), None),
        8
    );
}

#[tokio::test(start_paused = true)]
async fn an_injected_429_with_retry_after_is_honoured() {
    let h = GitHubHarness::start_with_timeout(FakeGitHub::builder(), None).await;
    h.fake.faults().fail_next(
        Match::any().verb("delete"),
        1,
        InjectedError::TooManyRequests {
            retry_after: Duration::from_secs(20),
        },
    );
    h.outside_set(&pr(1), &["x"]);
    let labels = paced(&h, RateLimitPolicy::default());
    let started = Instant::now();
    assert!(matches!(
        labels.remove(&pr(1), "x").await.unwrap(),
        label_cas::RemoveOutcome::Removed(_)
    ));
    assert!(started.elapsed() >= Duration::from_secs(20));
    assert_eq!(
        h.fake.calls().count(Some("delete"), None),
        2,
        "the 429'd DELETE was not applied; re-sent once"
    );
}

/// Quick retries so real-time tests stay fast.
fn quick() -> TransitionPolicy {
    let backoff = BackoffPolicy {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(40),
        ..BackoffPolicy::default()
    };
    TransitionPolicy {
        interference_backoff: backoff.clone(),
        call_retry: RetryPolicy {
            backoff,
            ..RetryPolicy::default()
        },
        ..TransitionPolicy::default()
    }
}

/// Waits (bounded) until the fake has answered `n` label reads.
async fn until_reads(h: &GitHubHarness, n: u64) {
    for _ in 0..10_000 {
        if h.fake.calls().count(Some("get"), Some("labels")) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("the fake never served {n} reads");
}

#[tokio::test]
async fn a_delete_whose_answer_was_lost_is_not_sent_again_when_the_label_is_gone() {
    let h = GitHubHarness::start().await;
    h.outside_set(&pr(1), &["ready-for-qa", "human"]);
    // The DELETE's connection is dropped after 1 s; meanwhile the label
    // disappears, as it would if GitHub had applied our DELETE.
    let delete = Match::any().verb("delete").resource("label");
    h.fake
        .faults()
        .latency(delete.clone(), Duration::from_secs(1), Duration::ZERO);
    h.fake.faults().fail_next(delete, 1, InjectedError::Drop);
    let manager = Arc::new(
        AtomicLabelManager::new(h.backend())
            .with_policy(quick())
            .unwrap(),
    );
    let task = {
        let manager = Arc::clone(&manager);
        tokio::spawn(async move {
            manager
                .transition(
                    &pr(1),
                    &LabelTransition::move_label("ready-for-qa", "in-progress"),
                )
                .await
        })
    };
    until_reads(&h, 1).await;
    assert!(h.outside_remove(&pr(1), "ready-for-qa"));
    let outcome = task.await.unwrap().unwrap();
    assert_eq!(outcome.result, TransitionResult::Applied);
    let calls = h.fake.calls();
    assert_eq!(
        calls.count(Some("delete"), Some("label")),
        1,
        "the DELETE was not re-sent"
    );
    assert_eq!(
        calls.count_outcome(Some("delete"), Some("label"), &Outcome::Dropped),
        1
    );
    assert_eq!(
        calls.count(Some("get"), Some("labels")),
        2,
        "a re-read decided"
    );
    assert_eq!(outcome.calls, 4);
    assert_eq!(h.truth(&pr(1)), set(&["human", "in-progress"]));
}

#[tokio::test]
async fn a_delete_whose_answer_was_lost_is_sent_again_only_once_a_read_shows_it_did_not_happen() {
    let h = GitHubHarness::start().await;
    h.outside_set(&pr(1), &["ready-for-qa"]);
    h.fake.faults().fail_next(
        Match::any().verb("delete").resource("label"),
        1,
        InjectedError::Drop,
    );
    let manager = AtomicLabelManager::new(h.backend())
        .with_policy(quick())
        .unwrap();
    let outcome = manager
        .transition(
            &pr(1),
            &LabelTransition::move_label("ready-for-qa", "in-progress"),
        )
        .await
        .unwrap();
    assert_eq!(outcome.result, TransitionResult::Applied);
    let calls = h.fake.calls();
    assert_eq!(calls.count(Some("delete"), Some("label")), 2);
    // The re-read was conditional and free: nothing had changed.
    assert_eq!(h.metrics.not_modified_count(), 1);
    assert_eq!(h.truth(&pr(1)), set(&["in-progress"]));
}

#[tokio::test]
async fn a_timed_out_delete_is_treated_as_possibly_applied() {
    let fake = FakeGitHub::builder();
    let h = GitHubHarness::start_with_timeout(fake, Some(Duration::from_millis(200))).await;
    h.outside_set(&pr(1), &["x"]);
    h.fake.faults().latency(
        Match::any().verb("delete"),
        Duration::from_secs(2),
        Duration::ZERO,
    );
    let err = h.labels.remove(&pr(1), "x").await.unwrap_err();
    assert!(
        matches!(err, Error::Timeout { mutation: true, .. }),
        "{err}"
    );
    assert!(err.maybe_applied() && err.is_transient());
    // A read, by contrast, is never "possibly applied".
    h.fake.faults().latency(
        Match::any().verb("get"),
        Duration::from_secs(2),
        Duration::ZERO,
    );
    let read = h.labels.get(&pr(1), None).await.unwrap_err();
    assert!(read.is_transient() && !read.maybe_applied());
}

#[tokio::test]
async fn server_errors_on_reads_are_retried_and_a_conditional_read_stays_free() {
    let h = GitHubHarness::start().await;
    h.outside_set(&pr(1), &["in-progress"]);
    h.fake
        .faults()
        .fail_next(Match::any().verb("get"), 2, InjectedError::Status(502));
    let manager = AtomicLabelManager::new(h.backend())
        .with_policy(quick())
        .unwrap();
    let transition = LabelTransition::move_label("ready-for-qa", "in-progress");
    let outcome = manager.transition(&pr(1), &transition).await.unwrap();
    assert_eq!(
        (outcome.result, outcome.calls),
        (TransitionResult::AlreadyInState, 3)
    );
    let before = h.labels.rate_limit().unwrap().remaining;
    manager.transition(&pr(1), &transition).await.unwrap();
    assert_eq!(
        h.labels.rate_limit().unwrap().remaining,
        before,
        "304: no budget spent"
    );
    let Fetched::Labels { .. } = h.labels.get(&pr(1), None).await.unwrap() else {
        panic!()
    };
}
