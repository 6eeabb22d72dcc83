//! The saga on memory backends with paused time: what it cancels, what it
//! keeps, how, and what it records — checked from the backends' own records
//! (MemoryWorkloads' history, the stored state, the labels), not from the
//! saga's report alone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use cancel_coordinator::workloads::{
    ANNOTATION_NEEDS_INTERVENTION, ANNOTATION_SUPERSEDED_BY, phase,
};
use cancel_coordinator::{
    CancelMode, Happened, HeadSource, LabelsReport, Outcome, PodBehaviour, RunOutcome, RunSeed,
    SagaConfig,
};
use common::{NEW, NEWER, OLD, TASK, World, at};
use state_store::CancellationOutcome;
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn a_push_cancels_the_old_heads_runs_and_keeps_everything_else() {
    let w = World::new();
    let stale = w.agents_on(OLD);
    let fresh = w.agents_on(NEW);
    w.workloads
        .add_run(RunSeed::new("deploy-1111111", TASK, "deploy", OLD));
    w.workloads
        .add_run(RunSeed::new("quality-done", TASK, "quality", OLD).in_phase(phase::SUCCEEDED));
    w.pull_at(NEW, &["ready-for-qa", "team-a"]);
    w.pushed(OLD, at(0)).await;
    w.pushed(NEW, at(60)).await;

    let report = w.saga("pod-a").run(&w.request(NEW, at(60))).await.unwrap();

    assert_eq!(report.outcome, Outcome::Cancelled);
    assert_eq!(report.kept_head.as_deref(), Some(NEW));
    assert_eq!(report.kept_from, HeadSource::GitHub);
    assert_eq!(report.labels, LabelsReport::Applied);
    for name in &stale {
        assert!(w.workloads.get(name).is_none(), "{name} is gone");
        assert!(w.workloads.pods(name).is_empty());
    }
    for name in fresh.iter().chain(
        ["deploy-1111111", "quality-done"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect::<Vec<_>>()
            .iter(),
    ) {
        assert!(w.workloads.get(name).is_some(), "{name} is kept");
    }
    // Only the stale runs' pods ever got SIGTERM.
    let mut sigtermed = w.sigtermed();
    sigtermed.sort();
    let mut expected: Vec<String> = stale.iter().map(|n| format!("{n}-pod-0")).collect();
    expected.sort();
    assert_eq!(sigtermed, expected);
    // The state records it once; nothing is pending; no journal is left.
    let state = w.state().await;
    assert_eq!(state.cancellation_history.len(), 1);
    let record = &state.cancellation_history[0];
    assert_eq!(record.outcome, CancellationOutcome::Cancelled);
    assert_eq!(record.new_head_sha, NEW);
    let mut targets = record.targets.clone();
    targets.sort();
    let mut stale_sorted = stale.clone();
    stale_sorted.sort();
    assert_eq!(targets, stale_sorted);
    assert_eq!(record.superseded_heads, [OLD]);
    let (started, finished) = (record.started_at.unwrap(), record.finished_at.unwrap());
    assert!(started <= record.at && record.at <= finished, "{record:?}");
    assert!(state.pending_supersessions.is_empty());
    assert!(state.active_operation.is_none());
    // The labels moved, and a foreign one stayed.
    let labels = w.labels_now();
    assert!(labels.contains("needs-qa") && !labels.contains("ready-for-qa"));
    assert!(labels.contains("team-a"));
    assert!(
        report
            .runs
            .iter()
            .all(|r| r.outcome == RunOutcome::Graceful)
    );
}

#[tokio::test(start_paused = true)]
async fn a_run_ignoring_sigterm_is_forced_and_gone_within_thirty_seconds() {
    let w = World::new();
    w.workloads.add_run(
        RunSeed::new("review-old", TASK, "review", OLD).behaving(PodBehaviour::IgnoresSigterm),
    );
    w.pull_at(NEW, &[]);
    w.pushed(NEW, at(60)).await;
    let started = Instant::now();

    let report = w.saga("pod-a").run(&w.request(NEW, at(60))).await.unwrap();

    assert_eq!(report.outcome, Outcome::Cancelled);
    assert!(w.workloads.get("review-old").is_none());
    assert!(
        started.elapsed() <= Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    // The kubelet killed it at the end of its grace period (20 s), before
    // the force deadline.
    assert!(
        w.workloads
            .history()
            .iter()
            .any(|(_, h)| matches!(h, Happened::PodGone { killed: true, .. }))
    );
}

#[tokio::test(start_paused = true)]
async fn a_pod_that_outlives_its_grace_is_force_deleted() {
    let w = World::new();
    // Its node is gone: nothing stops it on a graceful delete.
    w.workloads.add_run(
        RunSeed::new("testing-old", TASK, "testing", OLD).behaving(PodBehaviour::NodeLost),
    );
    w.pull_at(NEW, &[]);
    w.pushed(NEW, at(60)).await;
    let started = Instant::now();

    let report = w.saga("pod-a").run(&w.request(NEW, at(60))).await.unwrap();

    assert_eq!(report.runs[0].outcome, RunOutcome::Forced);
    assert!(w.workloads.get("testing-old").is_none());
    // Graceful wait (20 s + 2 s), then the force: still within the seed's 30 s.
    assert!(
        started.elapsed() <= Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(started.elapsed() >= Duration::from_secs(22));
}

#[tokio::test(start_paused = true)]
async fn an_old_push_delivered_late_never_cancels_the_newest_heads_runs() {
    let w = World::new();
    let newest = w.agents_on(NEWER);
    let stale = w.agents_on(NEW);
    w.pull_at(NEWER, &[]);
    // Delivered newest first, then the older one, then the older one again.
    w.pushed(NEWER, at(120)).await;
    w.pushed(NEW, at(60)).await;

    for request in [w.request(NEW, at(60)), w.request(NEW, at(60))] {
        w.saga("pod-a").run(&request).await.unwrap();
    }

    for name in &newest {
        assert!(w.workloads.get(name).is_some(), "{name} (newest head) kept");
    }
    for name in &stale {
        assert!(w.workloads.get(name).is_none(), "{name} cancelled");
    }
    assert!(w.sigtermed().iter().all(|pod| !pod.contains(&NEWER[..7])));
}

#[tokio::test(start_paused = true)]
async fn without_github_the_newest_head_in_state_is_kept() {
    let w = World::new();
    let stale = w.agents_on(OLD);
    let fresh = w.agents_on(NEW);
    // No pull request on the fake: every read fails.
    w.pushed(NEW, at(60)).await;

    let report = w.saga("pod-a").run(&w.request(OLD, at(0))).await.unwrap();

    assert_eq!(report.kept_head.as_deref(), Some(NEW));
    assert_eq!(report.kept_from, HeadSource::State);
    assert!(stale.iter().all(|n| w.workloads.get(n).is_none()));
    assert!(fresh.iter().all(|n| w.workloads.get(n).is_some()));
}

#[tokio::test(start_paused = true)]
async fn stop_mode_keeps_the_runs_recorded_cancelled_only_after_their_pods_are_gone() {
    let w = World::new();
    let stale = w.agents_on(OLD);
    w.pull_at(NEW, &[]);
    w.pushed(NEW, at(60)).await;
    let config = SagaConfig {
        mode: CancelMode::Stop,
        ..SagaConfig::default()
    };

    let report = w
        .saga_with("pod-a", config)
        .run(&w.request(NEW, at(60)))
        .await
        .unwrap();

    assert_eq!(report.outcome, Outcome::Cancelled);
    for name in &stale {
        let run = w.workloads.get(name).expect("kept for audit");
        assert_eq!(run.phase, phase::CANCELLED);
        assert_eq!(run.superseded_by.as_deref(), Some(NEW));
        assert!(w.workloads.pods(name).is_empty());
        assert_eq!(w.workloads.annotations(name)[ANNOTATION_SUPERSEDED_BY], NEW);
    }
    let recorded: Vec<bool> = w
        .workloads
        .history()
        .into_iter()
        .filter_map(|(_, h)| match h {
            Happened::RecordedCancelled { pods_left, .. } => Some(pods_left),
            _ => None,
        })
        .collect();
    assert_eq!(
        recorded,
        [false, false, false],
        "never recorded while a pod existed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_run_whose_pods_cannot_go_is_flagged_and_never_recorded_cancelled() {
    let w = World::new();
    w.workloads
        .add_run(RunSeed::new("quality-old", TASK, "quality", OLD));
    w.workloads.hold_pods("quality-old");
    w.pull_at(NEW, &[]);
    w.pushed(NEW, at(60)).await;

    let report = w.saga("pod-a").run(&w.request(NEW, at(60))).await.unwrap();

    assert_eq!(report.outcome, Outcome::Failed);
    assert!(matches!(report.runs[0].outcome, RunOutcome::Stuck(_)));
    assert!(
        w.workloads
            .annotations("quality-old")
            .contains_key(ANNOTATION_NEEDS_INTERVENTION)
    );
    let state = w.state().await;
    assert_eq!(
        state.cancellation_history[0].outcome,
        CancellationOutcome::Failed
    );
    assert!(
        state.cancellation_history[0].targets.is_empty(),
        "nothing recorded cancelled"
    );
    assert!(state.cancellation_history[0].superseded_heads.is_empty());
    assert!(state.cancellation_history[0].finished_at.is_some());
    assert!(state.active_operation.is_none());
}

#[tokio::test(start_paused = true)]
async fn the_record_lists_every_superseded_head_oldest_work_first() {
    let w = World::new();
    let oldest = w.agents_on(OLD);
    let middle = w.agents_on(NEW);
    w.pull_at(NEWER, &["ready-for-qa"]);
    w.pushed(OLD, at(0)).await;
    w.pushed(NEW, at(30)).await;
    w.pushed(NEWER, at(60)).await;

    let report = w
        .saga("pod-a")
        .run(&w.request(NEWER, at(60)))
        .await
        .unwrap();

    assert_eq!(report.outcome, Outcome::Cancelled);
    let state = w.state().await;
    let record = &state.cancellation_history[0];
    assert_eq!(record.targets.len(), oldest.len() + middle.len());
    assert_eq!(record.superseded_heads, [OLD, NEW]);
    assert_eq!(record.new_head_sha, NEWER);
}

#[tokio::test(start_paused = true)]
async fn a_second_request_for_a_handled_head_writes_nothing() {
    let w = World::new();
    w.agents_on(OLD);
    w.pull_at(NEW, &["ready-for-qa"]);
    w.pushed(NEW, at(60)).await;
    let saga = w.saga("pod-a");
    saga.run(&w.request(NEW, at(60))).await.unwrap();
    let calls_before = w.workloads.total_calls();
    let mutations_before = w.labels.calls().mutations();
    let state_before = w.store.get(TASK).await.unwrap().unwrap().resource_version;

    let report = saga.run(&w.request(NEW, at(60))).await.unwrap();

    assert_eq!(report.outcome, Outcome::AlreadyHandled);
    assert_eq!(
        w.workloads.total_calls() - calls_before,
        1,
        "one LIST of the runs"
    );
    assert_eq!(w.labels.calls().mutations(), mutations_before);
    let state_after = w.store.get(TASK).await.unwrap().unwrap().resource_version;
    assert_eq!(state_after, state_before, "the state is not written");
}

#[tokio::test(start_paused = true)]
async fn a_closed_pull_request_cancels_every_remaining_run_and_leaves_its_labels() {
    let w = World::new();
    let all: Vec<String> = w.agents_on(NEW);
    w.pull_at(NEW, &["ready-for-qa"]);
    w.pulls
        .update(&w.pr, |p| p.state = label_cas::PullState::Closed)
        .unwrap();
    w.pushed(NEW, at(60)).await;
    let mut request = w.request(NEW, at(60));
    request.reason = cancel_coordinator::Reason::Closed;

    let report = w.saga("pod-a").run(&request).await.unwrap();

    assert_eq!(report.kept_head, None);
    assert_eq!(report.kept_from, HeadSource::Closed);
    assert!(all.iter().all(|n| w.workloads.get(n).is_none()));
    assert_eq!(report.labels, LabelsReport::Skipped);
    assert!(w.labels_now().contains("ready-for-qa"));
}

/// Deletes the task's Lease (by hand, as an operator might) when the saga
/// starts waiting for the pods.
struct LeaseVanishes(lease_lock::MemoryLeases);

#[async_trait::async_trait]
impl common::Hook for LeaseVanishes {
    async fn before(&self, call: &'static str) -> cancel_coordinator::Result<()> {
        use lease_lock::LeaseBackend;
        let name = "cancel-task-task-42";
        if call == "wait_gone"
            && let Some(lease) = self.0.get("supersede", name).await.unwrap()
        {
            self.0
                .delete(
                    "supersede",
                    name,
                    lease.metadata.uid.as_deref().unwrap(),
                    lease.metadata.resource_version.as_deref().unwrap(),
                )
                .await
                .unwrap();
        }
        Ok(())
    }
}

/// The guard reports the loss at its next renewal, and nothing more is
/// written — no force, no intervention flag, no record: the journal is left
/// for the next holder.
#[tokio::test(start_paused = true)]
async fn nothing_is_written_after_the_lock_is_lost() {
    let w = World::new();
    w.workloads.add_run(
        RunSeed::new("quality-old", TASK, "quality", OLD).behaving(PodBehaviour::NodeLost),
    );
    w.pull_at(NEW, &[]);
    w.pushed(NEW, at(60)).await;
    let saga = cancel_coordinator::StateAwareCancellation::builder(
        w.lock("pod-a"),
        w.store.clone(),
        std::sync::Arc::new(common::Intercepted {
            inner: w.workloads.clone(),
            hook: LeaseVanishes(w.leases.clone()),
        }),
        w.pulls.clone(),
        w.labels.clone(),
    )
    .build()
    .unwrap();
    let started = Instant::now();

    let err = saga.run(&w.request(NEW, at(60))).await.unwrap_err();

    assert!(
        matches!(err, cancel_coordinator::Error::LockLost { .. }),
        "{err}"
    );
    assert!(
        started.elapsed() < saga.config().grace_period,
        "stopped at the loss, not at the deadline"
    );
    let calls = w.workloads.calls();
    assert_eq!(calls.get("force"), None, "no force after the loss");
    assert_eq!(calls.get("flag_intervention"), None);
    assert_eq!(w.workloads.pods("quality-old").len(), 1);
    let journal = w
        .state()
        .await
        .active_operation
        .expect("left for the next holder");
    assert_eq!(journal.current().unwrap().step, state_store::Step::Started);
}

/// GitHub's answer lags a webhook: it still shows NEW (changed at 100 s)
/// while the state recorded a push of NEWER at 200 s. Neither head's runs
/// may go; only the old head's do, and NEWER's supersession stays pending
/// for a pass on which the two agree.
#[tokio::test(start_paused = true)]
async fn when_github_lags_a_push_the_runs_of_both_heads_are_kept() {
    let w = World::new();
    let old = w.agents_on(OLD);
    let new = w.agents_on(NEW);
    let newer = w.agents_on(NEWER);
    w.pull_at(NEW, &[]);
    w.pulls
        .update(&w.pr, |p| p.updated_at = Some(at(100)))
        .unwrap();
    w.pushed(NEW, at(100)).await;
    w.pushed(NEWER, at(200)).await;

    w.saga("pod-a")
        .run(&w.request(NEWER, at(200)))
        .await
        .unwrap();

    assert!(old.iter().all(|n| w.workloads.get(n).is_none()));
    assert!(
        new.iter()
            .chain(&newer)
            .all(|n| w.workloads.get(n).is_some())
    );
    let pending: Vec<String> = w
        .state()
        .await
        .pending_supersessions
        .iter()
        .map(|p| p.head_sha.clone())
        .collect();
    assert!(pending.contains(&NEWER.to_owned()), "{pending:?}");
}

/// A lost webhook: the state knows only OLD (pushed at 0 s), GitHub shows
/// NEW changed at 100 s. NEW is kept and recorded as the task's head.
#[tokio::test(start_paused = true)]
async fn a_head_only_github_knows_is_kept_and_recorded() {
    let w = World::new();
    let old = w.agents_on(OLD);
    let new = w.agents_on(NEW);
    w.pull_at(NEW, &[]);
    w.pulls
        .update(&w.pr, |p| p.updated_at = Some(at(100)))
        .unwrap();
    w.pushed(OLD, at(0)).await;

    let report = w.saga("pod-a").run(&w.request(OLD, at(0))).await.unwrap();

    assert_eq!(report.kept_head.as_deref(), Some(NEW));
    assert!(old.iter().all(|n| w.workloads.get(n).is_none()));
    assert!(new.iter().all(|n| w.workloads.get(n).is_some()));
    let state = w.state().await;
    assert_eq!(state.latest_head.unwrap().sha, NEW);
    assert!(state.pending_supersessions.is_empty());
}

/// GitHub answers the head read with NEW; right after the answer, NEWER is
/// pushed and its agents start (the window between the saga's read of the
/// head and its list of the runs). The saga lists the runs before it asks
/// GitHub, so NEWER's runs, started after the list, are never taken for
/// another head's: only OLD's go.
#[tokio::test(start_paused = true)]
async fn a_push_and_its_runs_landing_right_after_the_head_read_are_kept() {
    struct PushedAfterTheRead {
        github: std::sync::Arc<label_cas::MemoryPullRequests>,
        workloads: cancel_coordinator::MemoryWorkloads,
        pushed: std::sync::atomic::AtomicBool,
    }
    #[async_trait::async_trait]
    impl label_cas::PullRequests for PushedAfterTheRead {
        async fn pull<'a>(
            &self,
            pr: &label_cas::PrRef,
            if_none_match: Option<&'a label_cas::ETag>,
        ) -> label_cas::Result<label_cas::FetchedPull> {
            let answer = self.github.pull(pr, if_none_match).await;
            if !self.pushed.swap(true, std::sync::atomic::Ordering::SeqCst) {
                let pull = label_cas::PullRequest::open(NEWER, "feature")
                    .unwrap()
                    .with_labels(["ready-for-qa"]);
                self.github.set_pull(pr, pull).unwrap();
                for role in ["quality", "testing", "review"] {
                    let name = format!("{role}-{}", &NEWER[..7]);
                    self.workloads
                        .add_run(cancel_coordinator::RunSeed::new(name, TASK, role, NEWER));
                }
            }
            answer
        }
    }
    let w = World::new();
    let old = w.agents_on(OLD);
    let new = w.agents_on(NEW);
    w.pull_at(NEW, &["ready-for-qa"]);
    w.pushed(NEW, at(60)).await;
    let pulls = std::sync::Arc::new(PushedAfterTheRead {
        github: w.pulls.clone(),
        workloads: w.workloads.clone(),
        pushed: std::sync::atomic::AtomicBool::new(false),
    });
    let saga = cancel_coordinator::StateAwareCancellation::builder(
        w.lock("pod-a"),
        w.store.clone(),
        std::sync::Arc::new(w.workloads.clone()),
        pulls,
        w.labels.clone(),
    )
    .build()
    .unwrap();

    let report = saga.run(&w.request(NEW, at(60))).await.unwrap();

    assert_eq!(report.kept_head.as_deref(), Some(NEW));
    assert!(old.iter().all(|n| w.workloads.get(n).is_none()));
    let newer: Vec<String> = ["quality", "testing", "review"]
        .iter()
        .map(|role| format!("{role}-{}", &NEWER[..7]))
        .collect();
    assert!(
        new.iter()
            .chain(&newer)
            .all(|n| w.workloads.get(n).is_some()),
        "no run of a head pushed after the read is touched"
    );
    let mut targets = w.state().await.cancellation_history[0].targets.clone();
    targets.sort();
    let mut expected = old.clone();
    expected.sort();
    assert_eq!(targets, expected);
}

#[tokio::test(start_paused = true)]
async fn the_saga_registers_its_metrics_and_its_breakers() {
    let w = World::new();
    w.agents_on(OLD);
    w.pull_at(NEW, &[]);
    w.pushed(NEW, at(60)).await;
    let label_metrics = label_cas::Metrics::default();
    let saga = cancel_coordinator::StateAwareCancellation::builder(
        w.lock("pod-a"),
        w.store.clone(),
        std::sync::Arc::new(w.workloads.clone()),
        w.pulls.clone(),
        w.labels.clone(),
    )
    .breakers(resilience::BreakerPolicy::default())
    .label_metrics(label_metrics.clone())
    .build()
    .unwrap();
    saga.run(&w.request(NEW, at(60))).await.unwrap();
    // The label step reported into the metrics it was given.
    assert_eq!(label_metrics.transitions("applied"), 1);
    let mut registry = prometheus_client::registry::Registry::default();
    saga.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();

    assert!(
        text.contains("cancel_coordinator_cancellations_total{outcome=\"cancelled\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("cancel_coordinator_runs_cancelled_total{how=\"graceful\"} 3"),
        "{text}"
    );
    assert!(text.contains("name=\"kubernetes\""), "{text}");
    assert!(text.contains("name=\"github\""), "{text}");
    assert!(
        text.contains("cancel_coordinator_step_duration_seconds_bucket{"),
        "{text}"
    );
}
