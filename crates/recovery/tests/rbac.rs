//! The controller's Role (`deploy/controller/rbac.yaml`) is derived from
//! the code the controller runs: its coordinator (a cancellation that waits
//! on another replica's lock and force-deletes a pod that ignores SIGTERM),
//! its recovery reconciler (a lost supersession handed on, an orphaned
//! Lease deleted, an unreadable state quarantined, a run held by a foreign
//! finalizer flagged with an Event), recovery under its leadership Lease,
//! and its TTL cleanup — each over FakeKube through the real clients, on paused
//! time. Every (verb, resource) the controller's parties requested must be
//! granted, and every grant requested.
//!
//! A stand-in until the controller binary lands: then
//! `bins/controller/tests/rbac.rs` runs the same flows through the
//! controller's own wiring and this file goes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use cancel_coordinator::{CancelMode, CancellationRequest, Intent, Workloads as _};
use common::*;
use lease_lock::AcquireOptions;
use state_store::TaskStatus;
use testkit::kube::rbac::{Permission, RbacDiff, role_permissions, used_permissions};
use testkit::metrics_contract::repo_file;
use tokio_util::sync::CancellationToken;

/// The `Audit-ID` of the controller's TTL cleanup requests.
const CONTROLLER: &str = "controller";
/// The parties that are the controller's; the others (the test's operator,
/// a dead coordinator, another replica) are the world it acts on.
const CONTROLLER_PARTIES: [&str; 3] = [COORDINATOR, RECOVERY, CONTROLLER];
/// Another replica holding a task lock for a while.
const RIVAL: &str = "rival-replica";

#[tokio::test(start_paused = true)]
async fn the_controllers_role_grants_exactly_the_calls_its_flows_make() {
    let mut used = BTreeSet::new();
    used.extend(a_contended_cancellation_that_must_force_a_pod().await);
    used.extend(a_cycle_with_work_for_every_repair().await);
    used.extend(a_run_held_by_a_foreign_finalizer_is_flagged().await);
    used.extend(leadership_and_ttl_cleanup().await);

    let manifest = std::fs::read_to_string(repo_file("deploy/controller/rbac.yaml")).unwrap();
    let granted = role_permissions(&manifest, "controller").unwrap();
    let diff = RbacDiff::between(&granted, &used);
    assert!(
        diff.is_exact(),
        "deploy/controller/rbac.yaml is not what the controller calls:\n{diff}"
    );
}

/// The permissions the controller's parties used on `c`.
fn controllers_calls(c: &Cluster) -> BTreeSet<Permission> {
    assert_eq!(c.kube.requests().evicted(), 0, "the log kept every request");
    let log = c.kube.requests().entries();
    used_permissions(log.iter().filter(|r| {
        r.correlation
            .as_deref()
            .is_some_and(|who| CONTROLLER_PARTIES.contains(&who))
    }))
}

/// A push superseding a run that stops on SIGTERM and one that never does,
/// while another replica holds the task's lock for a second.
async fn a_contended_cancellation_that_must_force_a_pod() -> BTreeSet<Permission> {
    let c = Cluster::start().await;
    c.seed_run("quality-old", "quality", OLD, Duration::from_millis(10));
    c.seed_run("testing-old", "testing", OLD, Duration::from_secs(3_600));
    c.seed_run("review-new", "review", NEW, Duration::ZERO);
    c.pull_at(NEW, &["ready-for-qa"]);
    let at = ago(1);
    c.pushed(NEW, at).await;
    let held = c
        .task_lock(RIVAL, "rival-0")
        .acquire(&format!("task-{TASK}"), AcquireOptions::new())
        .await
        .unwrap();
    let (coordinator, workers) = c.coordinator("controller-0");
    coordinator
        .submit(CancellationRequest::push(TASK, c.pr.clone(), NEW, at))
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    held.release().await.unwrap();
    settled(&[&coordinator]).await;
    assert!(c.stopped("quality-old") && c.stopped("testing-old"));
    assert!(c.pod_exists("review-new"), "the current head's run is kept");
    workers.shutdown(Duration::from_secs(5)).await;
    controllers_calls(&c)
}

/// A supersession whose request was lost, an orphaned Lease and an
/// unreadable state, in one cycle.
async fn a_cycle_with_work_for_every_repair() -> BTreeSet<Permission> {
    let c = Cluster::start().await;
    let stale = c.agents_on(OLD);
    c.pull_at(NEW, &["ready-for-qa"]);
    c.pushed(NEW, ago(1)).await;
    c.seed_dead_lease("task-7");
    c.state_written_by_hand("task-9", "{\"task_id\":").await;
    let (coordinator, workers) = c.coordinator("controller-0");
    let recovery = c.recovery(&coordinator);
    later().await;
    recovery.run_cycle().await.unwrap();
    settled(&[&coordinator]).await;
    for run in &stale {
        assert!(c.stopped(run), "{run} cancelled");
    }
    workers.shutdown(Duration::from_secs(5)).await;
    controllers_calls(&c)
}

/// A run a dead coordinator marked and deleted, held by someone else's
/// finalizer: flagged on the run and the task's state, with an Event.
async fn a_run_held_by_a_foreign_finalizer_is_flagged() -> BTreeSet<Permission> {
    let c = Cluster::start().await;
    c.seed_run_held(
        "review-old",
        "review",
        OLD,
        Duration::ZERO,
        &["example.dev/audit"],
    );
    c.pull_at(NEW, &[]);
    c.observed(NEW, ago(60)).await;
    let dead = c.workloads(DEAD);
    let run = dead.run("review-old").await.unwrap().unwrap();
    let intent = Intent {
        superseded_by: NEW.into(),
        operation_id: "op-gone".into(),
        correlation_id: None,
        at: c.clock.now(),
    };
    let run = dead.mark_superseded(&run, &intent).await.unwrap();
    dead.terminate(&run, CancelMode::Delete, Duration::from_secs(20))
        .await
        .unwrap();
    until(Duration::from_secs(10), "the run's pod goes", || {
        c.stopped("review-old")
    })
    .await;
    let (coordinator, workers) = c.coordinator("controller-0");
    let recovery = c.recovery(&coordinator);
    later().await;
    recovery.run_cycle().await.unwrap();
    assert_eq!(recovery.flagged().await.unwrap().len(), 1);
    workers.shutdown(Duration::from_secs(5)).await;
    controllers_calls(&c)
}

/// Recovery as the controller runs it — `RecoveryManager::spawn` on the
/// leadership lock `controller-recovery-leader`, a few cycles, leadership
/// released on shutdown — and a TTL pass deleting a state finished more
/// than a week ago.
async fn leadership_and_ttl_cleanup() -> BTreeSet<Permission> {
    let c = Cluster::start().await;
    let (coordinator, workers) = c.coordinator("controller-0");
    let recovery = c.recovery(&coordinator);
    let shutdown = CancellationToken::new();
    let leading = recovery.spawn(
        c.lock(RECOVERY, "controller-0", "controller"),
        shutdown.clone(),
    );
    tokio::time::sleep(Duration::from_secs(95)).await;
    shutdown.cancel();
    leading.await.unwrap();
    workers.shutdown(Duration::from_secs(5)).await;

    c.store_as(OPERATOR)
        .update("task-5", |state| {
            state.status = TaskStatus::Completed;
            Ok::<_, state_store::Error>(())
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(8 * 24 * 3_600)).await;
    let report = c
        .store_as(CONTROLLER)
        .cleanup_expired(Duration::from_secs(7 * 24 * 3_600))
        .await
        .unwrap();
    assert_eq!(report.deleted, 1, "{report:?}");
    controllers_calls(&c)
}
