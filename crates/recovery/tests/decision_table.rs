//! Every row of the decision table on the memory backends, with paused
//! time: the inconsistency made, one cycle run, and the world checked from
//! the backends (runs, states, Leases, labels), not from the report alone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/leases.rs"]
mod leases;
use leases::dead_lease;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cancel_coordinator::{
    CancellationCoordinator, CancellationRequest, CoordinatorConfig, Intent, METADATA_PULL_REQUEST,
    MemoryWorkloads, Run, RunSeed, SagaConfig, StateAwareCancellation, Workers, Workloads,
};
use jiff::Timestamp;
use label_cas::{MemoryLabels, MemoryPullRequests, PrRef, PullRequest};
use lease_lock::{LeaseBackend, LeaseLock, LockConfig, MemoryLeases};
use recovery::{
    ANNOTATION_NEEDS_INTERVENTION, Action, DeliveryAttempt, DeliveryPage, Kind, RecoveryConfig,
    RecoveryManager, WebhookDeliveries,
};
use state_store::naming::{KEY_STATE, state_labels};
use state_store::{
    CancellationOutcome, CancellationRecord, Document, MemoryBackend, StateBackend, StateStore,
    Supersession,
};

const OLD: &str = "1111111111111111111111111111111111111111";
const NEW: &str = "2222222222222222222222222222222222222222";
const TASK: &str = "task-42";

struct World {
    leases: MemoryLeases,
    states: Arc<MemoryBackend>,
    store: StateStore,
    workloads: MemoryWorkloads,
    labels: Arc<MemoryLabels>,
    pulls: Arc<MemoryPullRequests>,
    pr: PrRef,
    coordinator: CancellationCoordinator,
    workers: Option<Workers>,
    recovery: RecoveryManager,
}

fn lock(leases: &MemoryLeases, who: &str) -> LeaseLock {
    LeaseLock::new(
        leases.clone(),
        LockConfig {
            prefix: "cancel".into(),
            ..LockConfig::new(who, "supersede")
        },
    )
    .unwrap()
}

impl World {
    fn new() -> Self {
        let leases = MemoryLeases::new();
        let states = Arc::new(MemoryBackend::new());
        // Wall-clock stamps that follow paused tokio time.
        let store = StateStore::with_clock(
            states.clone(),
            state_store::StoreConfig::default(),
            state_store::Clock::tokio_anchored(Timestamp::now()),
        );
        let workloads = MemoryWorkloads::new();
        let labels = Arc::new(MemoryLabels::new());
        let pulls = Arc::new(MemoryPullRequests::with_labels(labels.clone()));
        let saga = StateAwareCancellation::builder(
            lock(&leases, "controller-0"),
            store.clone(),
            Arc::new(workloads.clone()),
            pulls.clone(),
            labels.clone(),
        )
        .build()
        .unwrap();
        let coordinator = CancellationCoordinator::new(saga, CoordinatorConfig::default()).unwrap();
        let workers = Some(coordinator.start());
        let recovery = RecoveryManager::builder(
            store.clone(),
            lock(&leases, "controller-0-recovery"),
            Arc::new(workloads.clone()),
            coordinator.clone(),
        )
        .github(pulls.clone(), labels.clone())
        .config(RecoveryConfig::default())
        .build()
        .unwrap();
        Self {
            leases,
            states,
            store,
            workloads,
            labels,
            pulls,
            pr: PrRef::new("acme", "widgets", 7).unwrap(),
            coordinator,
            workers,
            recovery,
        }
    }

    /// The same world, its reconciler also redelivering from `deliveries`.
    fn with_deliveries(mut self, deliveries: Arc<dyn WebhookDeliveries>) -> Self {
        self.recovery = RecoveryManager::builder(
            self.store.clone(),
            lock(&self.leases, "controller-0-recovery"),
            Arc::new(self.workloads.clone()),
            self.coordinator.clone(),
        )
        .github(self.pulls.clone(), self.labels.clone())
        .deliveries(deliveries)
        .build()
        .unwrap();
        self
    }

    fn pull_at(&self, head: &str, labels: &[&str]) {
        let pull = PullRequest::open(head, "task-42-fix")
            .unwrap()
            .with_labels(labels.iter().copied());
        self.pulls.set_pull(&self.pr, pull).unwrap();
    }

    /// The sensor's part, its request lost: the push recorded with the PR.
    async fn pushed(&self, head: &str, at: Timestamp) {
        self.store
            .record_supersession(
                TASK,
                &Supersession {
                    head_sha: head.into(),
                    pushed_at: at,
                    delivery_id: format!("d-{head}"),
                    correlation_id: None,
                },
            )
            .await
            .unwrap();
        self.store
            .update(TASK, |s| {
                s.metadata
                    .insert(METADATA_PULL_REQUEST.into(), self.pr.to_string());
                Ok::<_, state_store::Error>(())
            })
            .await
            .unwrap();
    }

    fn agents_on(&self, head: &str) -> Vec<String> {
        ["quality", "review"]
            .iter()
            .map(|role| {
                let name = format!("{role}-{}", &head[..7]);
                self.workloads
                    .add_run(RunSeed::new(name.clone(), TASK, *role, head));
                name
            })
            .collect()
    }

    async fn settled(&self) {
        for _ in 0..10_000 {
            if self.coordinator.list_active().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the coordinator never settled");
    }

    /// `run` as marked by a cancellation that died after recording its
    /// intent (no journal left open).
    async fn marked_by_a_dead_operation(&self, run: &Run) -> Run {
        let intent = Intent {
            superseded_by: NEW.into(),
            operation_id: "op-gone".into(),
            correlation_id: None,
            at: self.store.clock().now(),
        };
        self.workloads.mark_superseded(run, &intent).await.unwrap()
    }

    /// The recorded pushes settled (no supersession pending).
    async fn supersessions_settled(&self) {
        self.store
            .update(TASK, |s| {
                s.pending_supersessions.clear();
                Ok::<_, state_store::Error>(())
            })
            .await
            .unwrap();
    }

    async fn state(&self) -> state_store::RemediationState {
        self.store.get(TASK).await.unwrap().unwrap().state
    }

    async fn annotation(&self) -> Option<String> {
        self.states
            .get("task-task-42-state")
            .await
            .unwrap()
            .unwrap()
            .document
            .annotations
            .get(ANNOTATION_NEEDS_INTERVENTION)
            .cloned()
    }

    async fn stop(mut self) {
        if let Some(workers) = self.workers.take() {
            workers.shutdown(Duration::from_secs(5)).await;
        }
    }
}

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + second).unwrap()
}

/// Past `settle_after`: what was recorded is recovery's now.
async fn later() {
    tokio::time::sleep(Duration::from_secs(61)).await;
}

#[tokio::test(start_paused = true)]
async fn a_pending_supersession_whose_request_was_lost_is_handed_on_and_cancelled() {
    let w = World::new();
    let stale = w.agents_on(OLD);
    let fresh = w.agents_on(NEW);
    w.pull_at(NEW, &["ready-for-qa"]);
    w.pushed(NEW, at(60)).await;
    // A fresh one is the coordinator's: left alone.
    let early = w.recovery.run_cycle().await.unwrap();
    assert!(early.of(Kind::PendingSupersession).is_empty(), "{early:?}");
    later().await;

    let report = w.recovery.run_cycle().await.unwrap();
    w.settled().await;

    let found = report.of(Kind::PendingSupersession);
    assert_eq!(found.len(), 1, "{report:?}");
    assert_eq!(found[0].action, Action::Handed);
    assert!(stale.iter().all(|n| w.workloads.get(n).is_none()));
    assert!(fresh.iter().all(|n| w.workloads.get(n).is_some()));
    assert!(w.state().await.pending_supersessions.is_empty());
    assert!(w.labels.labels(&w.pr).contains("needs-qa"));
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_journal_is_resumed_through_the_coordinator() {
    let w = World::new();
    let stale = w.agents_on(OLD);
    w.pull_at(NEW, &[]);
    w.pushed(NEW, at(60)).await;
    // A saga whose process died right after journaling: its Lease is left
    // held by an identity nobody renews (last renewed two minutes ago).
    let lease = w
        .leases
        .create("supersede", &dead_lease("cancel-task-task-42"))
        .await
        .unwrap();
    let token = lease_lock::FencingToken::new(
        lease.metadata.uid.clone().unwrap(),
        lease.metadata.creation_timestamp.clone().unwrap().0,
        1,
    );
    let mut journal = state_store::OperationJournal::begin(
        "op-dead",
        state_store::OperationKind::Cancellation,
        "dead-pod/1",
        w.store.clock().now(),
    );
    journal.fencing_token = Some(token);
    journal.targets = stale.clone();
    journal.context.insert("keep_head".into(), NEW.into());
    journal.context.insert("pr".into(), w.pr.to_string());
    w.store.begin_operation(TASK, journal).await.unwrap();
    later().await;

    let report = w.recovery.run_cycle().await.unwrap();
    w.settled().await;

    assert_eq!(report.of(Kind::AbandonedJournal).len(), 1, "{report:?}");
    assert!(stale.iter().all(|n| w.workloads.get(n).is_none()));
    let state = w.state().await;
    assert!(state.active_operation.is_none());
    assert_eq!(
        state
            .cancellation_history
            .iter()
            .filter(|r| r.operation_id == "op-dead")
            .count(),
        1
    );
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_superseded_run_left_running_is_handed_on_and_one_held_by_a_finalizer_flagged() {
    let w = World::new();
    w.pull_at(NEW, &[]);
    w.pushed(NEW, at(60)).await;
    let alive = w
        .workloads
        .add_run(RunSeed::new("quality-1111111", TASK, "quality", OLD));
    let held = w
        .workloads
        .add_run(RunSeed::new("review-1111111", TASK, "review", OLD));
    w.marked_by_a_dead_operation(&alive).await;
    let held = w.marked_by_a_dead_operation(&held).await;
    w.workloads
        .add_foreign_finalizer("review-1111111", "example.dev/audit");
    w.workloads
        .terminate(
            &held,
            cancel_coordinator::CancelMode::Delete,
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    w.supersessions_settled().await;
    later().await;

    let report = w.recovery.run_cycle().await.unwrap();
    w.settled().await;

    let alive_found = report.of(Kind::StaleRunAlive);
    assert_eq!(alive_found.len(), 1, "{report:?}");
    assert_eq!(alive_found[0].object.as_deref(), Some("quality-1111111"));
    assert!(w.workloads.get("quality-1111111").is_none(), "cancelled");
    let held_found = report.of(Kind::RunHeldByFinalizer);
    assert_eq!(held_found.len(), 1, "{report:?}");
    assert!(matches!(held_found[0].action, Action::Flagged(_)));
    assert!(w.annotation().await.unwrap().contains("example.dev/audit"));
    assert!(
        w.workloads
            .annotations("review-1111111")
            .contains_key(cancel_coordinator::workloads::ANNOTATION_NEEDS_INTERVENTION)
    );
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_superseded_run_never_deleted_is_handed_on_even_with_its_pods_gone() {
    let w = World::new();
    w.pull_at(NEW, &[]);
    w.pushed(NEW, at(60)).await;
    // Its cancellation died between the intent and the delete; its pod
    // finished meanwhile, but the run is neither terminal nor deleted.
    let stuck = w.workloads.add_run(RunSeed {
        pods: 0,
        ..RunSeed::new("quality-1111111", TASK, "quality", OLD)
    });
    w.marked_by_a_dead_operation(&stuck).await;
    w.supersessions_settled().await;
    later().await;

    let report = w.recovery.run_cycle().await.unwrap();
    w.settled().await;

    let found = report.of(Kind::StaleRunAlive);
    assert_eq!(found.len(), 1, "{report:?}");
    assert_eq!(found[0].action, Action::Handed);
    assert!(report.of(Kind::RunHeldByFinalizer).is_empty(), "{report:?}");
    assert!(w.workloads.get("quality-1111111").is_none(), "cancelled");
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_cancellation_whose_labels_never_moved_gets_them_moved() {
    let w = World::new();
    w.pull_at(NEW, &["ready-for-qa"]);
    w.pushed(NEW, at(60)).await;
    w.store
        .update(TASK, |s| {
            s.pending_supersessions.clear();
            s.record_cancellation(CancellationRecord {
                operation_id: "op-1".into(),
                at: at(70),
                new_head_sha: NEW.into(),
                targets: vec!["quality-1111111".into()],
                // As entries written before they carried their heads and timings.
                superseded_heads: Vec::new(),
                started_at: None,
                finished_at: None,
                outcome: CancellationOutcome::Cancelled,
                correlation_id: None,
                detail: Some(
                    "quality-1111111: sigterm in 900 ms; labels: failed (rate limited)".into(),
                ),
            });
            Ok::<_, state_store::Error>(())
        })
        .await
        .unwrap();

    let report = w.recovery.run_cycle().await.unwrap();

    let found = report.of(Kind::LabelsNotMoved);
    assert_eq!(found.len(), 1, "{report:?}");
    assert_eq!(found[0].action, Action::Repaired);
    let labels = w.labels.labels(&w.pr);
    assert!(
        labels.contains("needs-qa") && !labels.contains("ready-for-qa"),
        "{labels}"
    );
    let detail = w.state().await.cancellation_history[0]
        .detail
        .clone()
        .unwrap();
    assert!(detail.contains("moved by recovery"), "{detail}");
    let again = w.recovery.run_cycle().await.unwrap();
    assert!(again.of(Kind::LabelsNotMoved).is_empty(), "repaired once");
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_orphaned_lease_is_deleted_and_a_held_one_kept() {
    let w = World::new();
    w.pull_at(NEW, &[]);
    w.pushed(NEW, at(60)).await;
    w.supersessions_settled().await;
    w.leases
        .create("supersede", &dead_lease("cancel-task-task-42"))
        .await
        .unwrap();
    let live = lock(&w.leases, "live-pod");
    let _held = live
        .acquire("task-task-7", Default::default())
        .await
        .unwrap();

    let report = w.recovery.run_cycle().await.unwrap();

    let found = report.of(Kind::OrphanedLease);
    assert_eq!(found.len(), 1, "{report:?}");
    assert_eq!(found[0].action, Action::Repaired);
    assert!(
        w.leases
            .get("supersede", "cancel-task-task-42")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        w.leases
            .get("supersede", "cancel-task-task-7")
            .await
            .unwrap()
            .is_some()
    );
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_unreadable_state_is_rebuilt_and_flagged_and_an_invalid_one_flagged() {
    let w = World::new();
    let mut broken = Document {
        labels: state_labels("task-9"),
        ..Document::default()
    };
    broken.data.insert(
        KEY_STATE.into(),
        r#"{"version":"v1","task_id":"task-9","iteration":3,"status":"InProgress","feedback_his"#
            .into(),
    );
    w.states.create("task-task-9-state", broken).await.unwrap();
    let mut invalid = Document {
        labels: state_labels("task-8"),
        ..Document::default()
    };
    invalid.data.insert(
        KEY_STATE.into(),
        r#"{"version":"v1","task_id":"task-8","latest_head":{"sha":"not a sha","pushed_at":"2026-01-01T00:00:00Z","delivery_id":"d"}}"#.into(),
    );
    w.states.create("task-task-8-state", invalid).await.unwrap();
    // Valid, but above a maximum lowered since (10 by default): the store
    // repairs it (capped, stopped, recorded), so it is nothing to flag.
    let mut over = Document {
        labels: state_labels("task-7"),
        ..Document::default()
    };
    over.data.insert(
        KEY_STATE.into(),
        r#"{"version":"v1","task_id":"task-7","iteration":12,"status":"InProgress"}"#.into(),
    );
    w.states.create("task-task-7-state", over).await.unwrap();

    let report = w.recovery.run_cycle().await.unwrap();

    let unreadable = report.of(Kind::UnreadableState);
    assert_eq!(unreadable.len(), 1, "{report:?}");
    assert!(matches!(&unreadable[0].action, Action::Flagged(why) if why.contains("lost")));
    let rebuilt = w.store.get("task-9").await.unwrap().unwrap();
    assert_eq!(
        rebuilt.origin,
        state_store::SchemaOrigin::Current,
        "written back rebuilt"
    );
    assert_eq!(rebuilt.state.iteration, 3);
    let invalid: BTreeMap<&str, &Action> = report
        .of(Kind::InvalidState)
        .into_iter()
        .map(|f| (f.task_id.as_str(), &f.action))
        .collect();
    assert_eq!(invalid.len(), 1, "{report:?}");
    assert!(matches!(invalid["task-8"], Action::Flagged(why) if why.contains("sha")));
    assert!(
        report.findings.iter().all(|f| f.task_id != "task-7"),
        "a state the store repairs is no finding: {report:?}"
    );
    assert_eq!(report.flagged_tasks, 2);
    // Flagged tasks are left alone until a human acts.
    let next = w.recovery.run_cycle().await.unwrap();
    assert!(next.findings.is_empty(), "{next:?}");
    assert_eq!(next.flagged_tasks, 2);
    let mut flagged: Vec<String> = w
        .recovery
        .flagged()
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.task_id)
        .collect();
    flagged.sort();
    assert_eq!(flagged, ["task-8", "task-9"]);
    w.recovery
        .resolve("task-9", "alice", "checked the quarantined copy")
        .await
        .unwrap();
    let resolved = w.store.get("task-9").await.unwrap().unwrap();
    assert!(resolved.state.metadata[recovery::METADATA_RESOLVED].contains("alice"));
    assert_eq!(w.recovery.flagged().await.unwrap().len(), 1);
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_push_no_webhook_told_of_is_caught_by_head_drift_and_cancelled() {
    let w = World::new();
    let stale = w.agents_on(OLD);
    let fresh = w.agents_on(NEW);
    w.pushed(OLD, at(0)).await;
    w.store
        .update(TASK, |s| {
            s.pending_supersessions.clear();
            s.status = state_store::TaskStatus::InProgress;
            Ok::<_, state_store::Error>(())
        })
        .await
        .unwrap();
    // GitHub moved to NEW at 100 s; its webhook never arrived.
    w.pull_at(NEW, &["ready-for-qa"]);
    w.pulls
        .update(&w.pr, |p| p.updated_at = Some(at(100)))
        .unwrap();

    let report = w.recovery.run_cycle().await.unwrap();
    w.settled().await;

    let found = report.of(Kind::HeadDrift);
    assert_eq!(found.len(), 1, "{report:?}");
    assert_eq!(found[0].action, Action::Handed);
    assert_eq!(w.state().await.latest_head.unwrap().sha, NEW);
    assert!(stale.iter().all(|n| w.workloads.get(n).is_none()));
    assert!(fresh.iter().all(|n| w.workloads.get(n).is_some()));
    assert_eq!(report.head_checks, 1);
    w.stop().await;
}

/// GitHub's deliveries list as a script: a redelivery appends an attempt
/// that answers `redelivered_status`.
struct Deliveries {
    attempts: std::sync::Mutex<Vec<DeliveryAttempt>>,
    redelivered_status: u16,
}

impl Deliveries {
    fn attempt(id: u64, guid: &str, status_code: u16) -> DeliveryAttempt {
        DeliveryAttempt {
            id,
            guid: guid.into(),
            delivered_at: Timestamp::now(),
            status_code,
            event: Some("push".into()),
            action: None,
            redelivery: false,
        }
    }

    fn redeliveries_of(&self, guid: &str) -> usize {
        let attempts = self.attempts.lock().unwrap();
        attempts
            .iter()
            .filter(|a| a.guid == guid && a.redelivery)
            .count()
    }
}

#[async_trait::async_trait]
impl WebhookDeliveries for Deliveries {
    async fn list(&self, _next: Option<String>) -> recovery::Result<DeliveryPage> {
        let mut attempts = self.attempts.lock().unwrap().clone();
        attempts.reverse();
        Ok(DeliveryPage {
            attempts,
            next: None,
        })
    }

    async fn redeliver(&self, id: u64) -> recovery::Result<()> {
        let mut attempts = self.attempts.lock().unwrap();
        let guid = attempts.iter().find(|a| a.id == id).unwrap().guid.clone();
        let next = attempts.iter().map(|a| a.id).max().unwrap() + 1;
        attempts.push(DeliveryAttempt {
            redelivery: true,
            ..Deliveries::attempt(next, &guid, self.redelivered_status)
        });
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_delivery_no_attempt_of_which_was_accepted_is_redelivered_and_then_left_alone() {
    let deliveries = Arc::new(Deliveries {
        attempts: std::sync::Mutex::new(vec![
            Deliveries::attempt(1, "accepted", 202),
            Deliveries::attempt(2, "down", 503),
            Deliveries::attempt(3, "unanswered", 0),
            Deliveries::attempt(4, "forged", 401),
            Deliveries::attempt(5, "retried", 503),
            Deliveries::attempt(6, "retried", 200),
        ]),
        redelivered_status: 202,
    });
    let w = World::new().with_deliveries(deliveries.clone());
    let report = w.recovery.run_cycle().await.unwrap();
    let mut repaired: Vec<&str> = report
        .of(Kind::FailedDelivery)
        .into_iter()
        .filter(|f| f.action == Action::Repaired)
        .filter_map(|f| f.object.as_deref())
        .collect();
    repaired.sort_unstable();
    assert_eq!(repaired, ["down", "unanswered"]);
    for (guid, times) in [
        ("down", 1),
        ("unanswered", 1),
        ("forged", 0),
        ("retried", 0),
        ("accepted", 0),
    ] {
        assert_eq!(deliveries.redeliveries_of(guid), times, "{guid}");
    }
    // Accepted by their redelivery: the next cycles ask for nothing.
    later().await;
    later().await;
    let next = w.recovery.run_cycle().await.unwrap();
    assert!(
        next.of(Kind::FailedDelivery)
            .iter()
            .all(|f| f.action != Action::Repaired),
        "{next:?}"
    );
    assert_eq!(deliveries.redeliveries_of("down"), 1);
    assert_eq!(count_repaired(&w.recovery, Kind::FailedDelivery), 2);
    w.stop().await;
}

fn count_repaired(recovery: &RecoveryManager, kind: Kind) -> u64 {
    sample(
        recovery,
        &format!(
            "recovery_inconsistencies_repaired_total{{kind=\"{}\"}}",
            kind.as_str()
        ),
    )
}

#[tokio::test(start_paused = true)]
async fn head_checks_stay_within_their_budget_and_go_round() {
    let w = World::new();
    for t in 0..5 {
        let task = format!("task-{t}");
        w.store
            .update(&task, |s| {
                s.metadata.insert(
                    METADATA_PULL_REQUEST.into(),
                    format!("acme/widgets#{}", t + 1),
                );
                Ok::<_, state_store::Error>(())
            })
            .await
            .unwrap();
    }
    let recovery = RecoveryManager::builder(
        w.store.clone(),
        lock(&w.leases, "r"),
        Arc::new(w.workloads.clone()),
        w.coordinator.clone(),
    )
    .github(w.pulls.clone(), w.labels.clone())
    .config(RecoveryConfig {
        head_checks_per_cycle: 2,
        ..RecoveryConfig::default()
    })
    .build()
    .unwrap();
    let mut checked = 0;
    for _ in 0..3 {
        let report = recovery.run_cycle().await.unwrap();
        assert!(report.head_checks <= 2);
        checked += report.head_checks;
    }
    assert_eq!(w.pulls.calls().get, checked as u64, "one read per check");
    assert!(
        checked >= 5,
        "three cycles of two reach every task: {checked}"
    );
    let _ = CancellationRequest::push(TASK, w.pr.clone(), NEW, at(0));
    let _ = SagaConfig::default();
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn only_the_leader_runs_cycles_and_a_lost_leadership_stops_them() {
    let w = World::new();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let leader_lock = |who: &str| {
        LeaseLock::new(
            w.leases.clone(),
            LockConfig {
                prefix: "recovery".into(),
                ..LockConfig::new(who, "supersede")
            },
        )
        .unwrap()
    };
    let other = RecoveryManager::builder(
        w.store.clone(),
        lock(&w.leases, "replica-1"),
        Arc::new(w.workloads.clone()),
        w.coordinator.clone(),
    )
    .build()
    .unwrap();
    let first = w.recovery.spawn(leader_lock("replica-0"), shutdown.clone());
    tokio::time::sleep(Duration::from_millis(10)).await;
    let second = other.spawn(leader_lock("replica-1"), shutdown.clone());
    tokio::time::sleep(Duration::from_secs(95)).await;

    let (a, b) = (count(&w.recovery), count(&other));
    assert!(a >= 3, "the leader ran its cycles: {a}");
    assert_eq!(b, 0, "the other replica ran none");
    shutdown.cancel();
    first.await.unwrap();
    second.await.unwrap();
    w.stop().await;
}

/// The value of the sample `series` (name and labels, as exposed).
fn sample(recovery: &RecoveryManager, series: &str) -> u64 {
    let mut registry = prometheus_client::registry::Registry::default();
    recovery.metrics().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str())?.parse().ok())
        .unwrap_or(0)
}

fn count(recovery: &RecoveryManager) -> u64 {
    sample(recovery, "recovery_cycles_total")
}

/// Leases whose LIST never answers (an API server that accepts the
/// connection and hangs), everything else from `inner`.
struct HangingList(MemoryLeases);

#[async_trait::async_trait]
impl LeaseBackend for HangingList {
    async fn get(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<lease_lock::Lease>, lease_lock::Error> {
        self.0.get(ns, name).await
    }
    async fn create(
        &self,
        ns: &str,
        l: &lease_lock::Lease,
    ) -> Result<lease_lock::Lease, lease_lock::Error> {
        self.0.create(ns, l).await
    }
    async fn replace(
        &self,
        ns: &str,
        l: &lease_lock::Lease,
    ) -> Result<lease_lock::Lease, lease_lock::Error> {
        self.0.replace(ns, l).await
    }
    async fn delete(
        &self,
        ns: &str,
        name: &str,
        uid: &str,
        rv: &str,
    ) -> Result<(), lease_lock::Error> {
        self.0.delete(ns, name, uid, rv).await
    }
    async fn list(&self, _: &str, _: &str) -> Result<Vec<lease_lock::Lease>, lease_lock::Error> {
        std::future::pending().await
    }
    async fn list_page(
        &self,
        _: &str,
        _: &str,
        _: u32,
        _: Option<String>,
    ) -> Result<lease_lock::LeasePage, lease_lock::Error> {
        std::future::pending().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_cycle_that_hangs_is_cut_short_at_its_timeout_and_the_loop_goes_on() {
    let w = World::new();
    let hanging = LeaseLock::new(
        HangingList(w.leases.clone()),
        LockConfig {
            prefix: "cancel".into(),
            ..LockConfig::new("controller-0-recovery", "supersede")
        },
    )
    .unwrap();
    let recovery = RecoveryManager::builder(
        w.store.clone(),
        hanging,
        Arc::new(w.workloads.clone()),
        w.coordinator.clone(),
    )
    .config(RecoveryConfig {
        cycle_timeout: Duration::from_secs(10),
        ..RecoveryConfig::default()
    })
    .build()
    .unwrap();
    let leader = LeaseLock::new(
        MemoryLeases::new(),
        LockConfig {
            prefix: "recovery".into(),
            ..LockConfig::new("replica-0", "supersede")
        },
    )
    .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = recovery.spawn(leader, shutdown.clone());
    // Cycles start at 0, ~40 and ~80 s (10 s each, then 30 s ±10 %).
    tokio::time::sleep(Duration::from_secs(95)).await;
    let over_time = sample(
        &recovery,
        "recovery_cycles_skipped_total{reason=\"over_time\"}",
    );
    assert!((2..=3).contains(&over_time), "cut short: {over_time}");
    assert_eq!(count(&recovery), 0, "no cycle completed");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(1), running)
        .await
        .expect("the loop stops at shutdown")
        .unwrap();
    w.stop().await;
}
