//! Error paths of the saga, on a mockall mock of `Workloads` (each test
//! names the calls it allows: any other call fails the test) and memory
//! backends for the rest.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use jiff::Timestamp;
use label_cas::{MemoryLabels, MemoryPullRequests, PrRef, PullRequest};
use lease_lock::{LeaseLock, LockConfig, MemoryLeases};
use state_store::{CancellationOutcome, MemoryBackend, StateStore, Supersession};

use super::*;
use crate::workloads::MockWorkloads;

const OLD: &str = "1111111111111111111111111111111111111111";
const NEW: &str = "2222222222222222222222222222222222222222";
const TASK: &str = "task-7";

struct Setup {
    leases: MemoryLeases,
    store: StateStore,
    pulls: Arc<MemoryPullRequests>,
    labels: Arc<MemoryLabels>,
    pr: PrRef,
}

async fn setup() -> Setup {
    let labels = Arc::new(MemoryLabels::new());
    let pulls = Arc::new(MemoryPullRequests::with_labels(labels.clone()));
    let pr = PrRef::new("acme", "widgets", 3).unwrap();
    pulls
        .set_pull(&pr, PullRequest::open(NEW, "feature").unwrap())
        .unwrap();
    let store = StateStore::new(MemoryBackend::new());
    store
        .record_supersession(
            TASK,
            &Supersession {
                head_sha: NEW.into(),
                pushed_at: Timestamp::from_second(1_800_000_000).unwrap(),
                delivery_id: "d".into(),
                correlation_id: None,
            },
        )
        .await
        .unwrap();
    Setup {
        leases: MemoryLeases::new(),
        store,
        pulls,
        labels,
        pr,
    }
}

impl Setup {
    fn saga(&self, workloads: MockWorkloads) -> StateAwareCancellation {
        let lock = LeaseLock::new(
            self.leases.clone(),
            LockConfig {
                prefix: "cancel".into(),
                ..LockConfig::new("pod-a", "supersede")
            },
        )
        .unwrap();
        StateAwareCancellation::builder(
            lock,
            self.store.clone(),
            Arc::new(workloads),
            self.pulls.clone(),
            self.labels.clone(),
        )
        .build()
        .unwrap()
    }

    fn request(&self) -> CancellationRequest {
        CancellationRequest::push(
            TASK,
            self.pr.clone(),
            NEW,
            Timestamp::from_second(1_800_000_000).unwrap(),
        )
    }

    async fn state(&self) -> RemediationState {
        self.store.get(TASK).await.unwrap().unwrap().state
    }
}

fn stale_run() -> Run {
    Run {
        name: "quality-old".into(),
        uid: "uid-1".into(),
        resource_version: "5".into(),
        task_id: TASK.into(),
        role: "quality".into(),
        head_sha: OLD.into(),
        phase: crate::workloads::phase::RUNNING.into(),
        terminal: false,
        created_at: None,
        superseded_by: None,
        cancel_operation: None,
        superseded_at: None,
        deleting: false,
    }
}

fn api(status: u16) -> Error {
    Error::Api {
        status,
        reason: "Injected".into(),
        message: "injected".into(),
        retry_after: None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_forbidden_list_fails_before_anything_is_written() {
    let s = setup().await;
    let mut w = MockWorkloads::new();
    w.expect_runs().returning(|_| Err(api(403)));

    let err = s.saga(w).run(&s.request()).await.unwrap_err();

    assert!(matches!(err, Error::Api { status: 403, .. }), "{err}");
    let state = s.state().await;
    assert!(state.active_operation.is_none(), "no journal begun");
    assert_eq!(state.pending_supersessions.len(), 1, "still pending");
}

#[tokio::test(start_paused = true)]
async fn a_forbidden_intent_write_is_recorded_failed_and_nothing_is_deleted() {
    let s = setup().await;
    let mut w = MockWorkloads::new();
    w.expect_runs().returning(|_| Ok(vec![stale_run()]));
    w.expect_mark_superseded().returning(|_, _| Err(api(403)));
    w.expect_terminate().never();

    let report = s.saga(w).run(&s.request()).await.unwrap();

    assert_eq!(report.outcome, Outcome::Failed);
    let state = s.state().await;
    let record = &state.cancellation_history[0];
    assert_eq!(record.outcome, CancellationOutcome::Failed);
    assert!(
        record.detail.as_deref().unwrap().contains("403"),
        "{record:?}"
    );
    assert!(
        state.active_operation.is_none(),
        "finished, not left to resume"
    );
}

#[tokio::test(start_paused = true)]
async fn a_delete_that_keeps_failing_transiently_leaves_a_resumable_journal() {
    let s = setup().await;
    let mut w = MockWorkloads::new();
    w.expect_runs().returning(|_| Ok(vec![stale_run()]));
    w.expect_mark_superseded().returning(|run, intent| {
        Ok(Run {
            superseded_by: Some(intent.superseded_by.clone()),
            resource_version: "6".into(),
            ..run.clone()
        })
    });
    w.expect_terminate()
        .times(3)
        .returning(|_, _, _| Err(api(503)));

    let err = s.saga(w).run(&s.request()).await.unwrap_err();

    assert!(err.is_transient(), "{err}");
    let journal = s.state().await.active_operation.expect("left for a resume");
    assert_eq!(journal.targets, ["quality-old"]);
    assert_eq!(journal.current().unwrap().step, Step::Started);
}

#[tokio::test(start_paused = true)]
async fn a_run_that_finished_before_its_intent_landed_is_left_alone() {
    let s = setup().await;
    let mut w = MockWorkloads::new();
    w.expect_runs().returning(|_| Ok(vec![stale_run()]));
    w.expect_mark_superseded().times(1).returning(|run, _| {
        Err(Error::Conflict {
            name: run.name.clone(),
        })
    });
    w.expect_run().returning(|_| {
        Ok(Some(Run {
            phase: crate::workloads::phase::SUCCEEDED.into(),
            terminal: true,
            resource_version: "9".into(),
            ..stale_run()
        }))
    });
    w.expect_terminate().never();

    let report = s.saga(w).run(&s.request()).await.unwrap();

    assert_eq!(report.runs[0].outcome, RunOutcome::FinishedBeforehand);
    assert_eq!(report.outcome, Outcome::NothingToCancel);
}

#[tokio::test(start_paused = true)]
async fn a_run_recreated_under_its_name_is_not_touched() {
    let s = setup().await;
    let mut w = MockWorkloads::new();
    w.expect_runs().returning(|_| Ok(vec![stale_run()]));
    w.expect_mark_superseded().times(1).returning(|run, _| {
        Err(Error::Conflict {
            name: run.name.clone(),
        })
    });
    w.expect_run().returning(|_| {
        Ok(Some(Run {
            uid: "uid-2".into(),
            ..stale_run()
        }))
    });
    w.expect_terminate().never();

    let report = s.saga(w).run(&s.request()).await.unwrap();

    assert_eq!(report.runs[0].outcome, RunOutcome::Vanished);
}
