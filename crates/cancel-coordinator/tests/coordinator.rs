//! The coordinator on memory backends with paused time: many tasks at once,
//! several replicas, coalescing, a full queue, breakers, status, shutdown.
//! Invariants are checked from what the backends recorded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cancel_coordinator::{
    CancellationCoordinator, CancellationRequest, CoordinatorConfig, Error, RunSeed, SagaStep,
    StateAwareCancellation, Submitted,
};
use common::{NEW, OLD, World, at};
use label_cas::PrRef;
use resilience::{BreakerPolicy, CircuitBreaker};

fn coordinator(saga: StateAwareCancellation, config: CoordinatorConfig) -> CancellationCoordinator {
    CancellationCoordinator::new(saga, config).unwrap()
}

/// Waits (paused time) until no coordinator has anything running or waiting.
async fn settled(coordinators: &[&CancellationCoordinator]) {
    for _ in 0..10_000 {
        if coordinators.iter().all(|c| c.list_active().is_empty()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the coordinators never settled");
}

fn sha(n: usize) -> String {
    format!("{n:040x}")
}

/// Seed scenario 1: 25 tasks pushed at once, three replicas taking the
/// requests; every stale run goes, no run of a new head is touched, and
/// each task's state records its cancellation exactly once.
#[tokio::test(start_paused = true)]
async fn twenty_five_simultaneous_pushes_over_three_replicas_all_converge() {
    let w = World::new();
    let replicas: Vec<CancellationCoordinator> = (0..3)
        .map(|i| coordinator(w.saga(&format!("pod-{i}")), CoordinatorConfig::default()))
        .collect();
    let workers: Vec<_> = replicas
        .iter()
        .map(CancellationCoordinator::start)
        .collect();
    let mut expected_gone = Vec::new();
    let mut expected_kept = Vec::new();
    for t in 0..25 {
        let task = format!("task-{t}");
        let pr = PrRef::new("acme", "widgets", 100 + t as u64).unwrap();
        let (old, new) = (sha(2 * t + 1), sha(2 * t + 2));
        for role in ["quality", "testing", "review"] {
            let stale = format!("{role}-{t}-old");
            let fresh = format!("{role}-{t}-new");
            w.workloads.add_run(RunSeed::new(&stale, &task, role, &old));
            w.workloads.add_run(RunSeed::new(&fresh, &task, role, &new));
            expected_gone.push(stale);
            expected_kept.push(fresh);
        }
        w.pulls
            .set_pull(
                &pr,
                label_cas::PullRequest::open(&new, "feature")
                    .unwrap()
                    .with_labels(["ready-for-qa"]),
            )
            .unwrap();
        w.store
            .record_supersession(
                &task,
                &state_store::Supersession {
                    head_sha: new.clone(),
                    pushed_at: at(60),
                    delivery_id: format!("d-{t}"),
                    correlation_id: None,
                },
            )
            .await
            .unwrap();
        // Every replica gets every event (as with several sensors).
        for replica in &replicas {
            replica
                .submit(CancellationRequest::push(&task, pr.clone(), &new, at(60)))
                .unwrap();
        }
    }

    let refs: Vec<&CancellationCoordinator> = replicas.iter().collect();
    settled(&refs).await;

    for name in &expected_gone {
        assert!(w.workloads.get(name).is_none(), "{name} cancelled");
    }
    for name in &expected_kept {
        assert!(w.workloads.get(name).is_some(), "{name} kept");
    }
    // No pod of a new head ever got SIGTERM.
    assert!(w.sigtermed().iter().all(|pod| pod.contains("-old-")));
    for t in 0..25 {
        let state = w
            .store
            .get(&format!("task-{t}"))
            .await
            .unwrap()
            .unwrap()
            .state;
        let records: Vec<_> = state
            .cancellation_history
            .iter()
            .filter(|r| r.outcome == state_store::CancellationOutcome::Cancelled)
            .collect();
        assert_eq!(records.len(), 1, "task-{t}: one cancellation recorded");
        assert!(state.pending_supersessions.is_empty());
        assert!(state.active_operation.is_none());
    }
    let failed: u64 = replicas
        .iter()
        .map(|r| r.metrics().cancellations("failed"))
        .sum();
    assert_eq!(failed, 0);
    for workers in workers {
        assert_eq!(workers.shutdown(Duration::from_secs(5)).await, 0);
    }
}

/// Seed scenario 2: ten pushes to one task while its cancellation runs:
/// one operation at a time, the rest coalesce to the newest head, none fails.
#[tokio::test(start_paused = true)]
async fn ten_pushes_to_one_task_run_one_at_a_time_and_coalesce_to_the_newest() {
    let w = World::new();
    let c = coordinator(w.saga("pod-a"), CoordinatorConfig::default());
    let workers = c.start();
    w.agents_on(OLD);
    w.pull_at(NEW, &[]);
    w.pushed(NEW, at(60)).await;
    c.submit(w.request(NEW, at(60))).unwrap();
    // Let the first operation start, then push nine more heads.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut outcomes = BTreeMap::<String, usize>::new();
    for i in 1..10 {
        let head = sha(1000 + i);
        w.pull_at(&head, &[]);
        w.pushed(&head, at(60 + i as i64)).await;
        let submitted = c.submit(w.request(&head, at(60 + i as i64))).unwrap();
        *outcomes.entry(format!("{submitted:?}")).or_default() += 1;
        let status = c.status(common::TASK).unwrap();
        assert!(status.running.is_some(), "the first operation still runs");
    }
    // The first waits behind the running operation; the others fold into it.
    assert_eq!(outcomes.get("Queued"), Some(&1), "{outcomes:?}");
    assert_eq!(outcomes.get("Coalesced"), Some(&8), "{outcomes:?}");
    let waiting = c.status(common::TASK).unwrap().waiting.unwrap();
    assert_eq!(waiting.head_sha, sha(1009), "the newest head waits");

    settled(&[&c]).await;

    let status = c.status(common::TASK).unwrap();
    assert_eq!(status.recent.len(), 2, "one operation, then one more");
    assert!(status.recent.iter().all(|f| f.result.is_ok()));
    assert_eq!(c.metrics().coalesced(), 8);
    assert!(w.state().await.pending_supersessions.is_empty());
    workers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_clearly_and_counts_it() {
    let w = World::new();
    let c = coordinator(
        w.saga("pod-a"),
        CoordinatorConfig {
            queue_capacity: 2,
            ..CoordinatorConfig::default()
        },
    );
    let pr = |n| PrRef::new("acme", "widgets", n).unwrap();
    for t in 0..2 {
        let r = CancellationRequest::push(format!("task-{t}"), pr(t + 1), NEW, at(0));
        assert_eq!(c.submit(r).unwrap(), Submitted::Queued);
    }
    let refused = c.submit(CancellationRequest::push("task-9", pr(9), NEW, at(0)));
    assert!(
        matches!(refused, Err(Error::QueueFull { capacity: 2 })),
        "{refused:?}"
    );
    assert_eq!(c.metrics().rejected("queue_full"), 1);
    // A request for a task already waiting is still taken (coalesced).
    let again = c.submit(CancellationRequest::push("task-0", pr(1), NEW, at(1)));
    assert_eq!(again.unwrap(), Submitted::Coalesced);
    assert_eq!(c.queued(), 2);
}

#[tokio::test(start_paused = true)]
async fn malformed_requests_are_refused_before_anything_is_queued() {
    let w = World::new();
    let c = coordinator(w.saga("pod-a"), CoordinatorConfig::default());
    let mut bad = w.request(NEW, at(0));
    bad.head_sha = "not-a-sha".into();
    assert!(matches!(c.submit(bad), Err(Error::InvalidRequest { .. })));
    assert_eq!(c.queued(), 0);
    assert_eq!(c.metrics().rejected("invalid"), 1);
}

/// Seed scenario 7: the Kubernetes breaker opens after consecutive
/// failures; requests then fail fast and are queued again, and nothing is
/// lost once the API is back.
#[tokio::test(start_paused = true)]
async fn an_open_breaker_delays_cancellations_and_loses_none() {
    let w = World::new();
    let breaker = CircuitBreaker::new(
        "kubernetes",
        BreakerPolicy {
            failure_threshold: 3,
            cool_down: Duration::from_secs(5),
            ..BreakerPolicy::default()
        },
    );
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flaky = Arc::new(common::Intercepted {
        inner: w.workloads.clone(),
        hook: Outage(failing.clone()),
    });
    let saga = StateAwareCancellation::builder(
        w.lock("pod-a"),
        w.store.clone(),
        flaky.clone(),
        w.pulls.clone(),
        w.labels.clone(),
    )
    .kube_breaker(breaker.clone())
    .build()
    .unwrap();
    let c = coordinator(saga, CoordinatorConfig::default());
    let workers = c.start();
    w.agents_on(OLD);
    w.pull_at(NEW, &[]);
    w.pushed(NEW, at(60)).await;
    c.submit(w.request(NEW, at(60))).unwrap();

    // The API fails: the breaker opens, the request waits and retries.
    for _ in 0..100 {
        if breaker.state() == resilience::BreakerState::Open {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(breaker.state(), resilience::BreakerState::Open);
    assert!(
        c.status(common::TASK).is_some(),
        "the request is not dropped"
    );
    assert!(w.workloads.get(&format!("quality-{}", &OLD[..7])).is_some());

    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    settled(&[&c]).await;

    assert!(w.workloads.get(&format!("quality-{}", &OLD[..7])).is_none());
    assert!(c.metrics().cancellations("cancelled") >= 1);
    workers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn status_shows_the_running_step_and_shutdown_leaves_a_resumable_journal() {
    let w = World::new();
    w.workloads.add_run(
        RunSeed::new("review-old", common::TASK, "review", OLD)
            .behaving(cancel_coordinator::PodBehaviour::IgnoresSigterm),
    );
    w.pull_at(NEW, &[]);
    w.pushed(NEW, at(60)).await;
    let c = coordinator(w.saga("pod-a"), CoordinatorConfig::default());
    let workers = c.start();
    c.submit(w.request(NEW, at(60))).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let status = c.status(common::TASK).unwrap();
    let running = status.running.expect("running");
    assert_eq!(running.progress.step, SagaStep::Cancel);
    assert_eq!(running.progress.runs_left, 1);
    assert!(running.progress.operation_id.is_some());
    assert_eq!(c.list_active().len(), 1);
    let json = serde_json::to_value(c.list_active()).unwrap();
    assert_eq!(json[0]["running"]["progress"]["step"], "cancel");

    // Shutdown does not wait out a 20 s grace period: the operation is cut,
    // its journal stays, and another replica finishes it.
    let aborted = workers.shutdown(Duration::from_secs(2)).await;
    assert_eq!(aborted, 1);
    let journal = w
        .state()
        .await
        .active_operation
        .expect("a journal to resume");
    assert_eq!(journal.targets, ["review-old"]);

    let other = w.saga("pod-b");
    // The aborted operation's lock guard was dropped, which releases it.
    let report = other.run(&w.request(NEW, at(60))).await.unwrap();
    assert!(report.resumed);
    assert!(w.workloads.get("review-old").is_none());
    assert!(w.state().await.active_operation.is_none());
    assert_eq!(w.state().await.cancellation_history.len(), 1);
}

/// Every workloads call fails with 503 while `failing` is set.
struct Outage(Arc<std::sync::atomic::AtomicBool>);

#[async_trait::async_trait]
impl common::Hook for Outage {
    async fn before(&self, _call: &'static str) -> cancel_coordinator::Result<()> {
        if self.0.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Api {
                status: 503,
                reason: "ServiceUnavailable".into(),
                message: "injected".into(),
                retry_after: None,
            });
        }
        Ok(())
    }
}
