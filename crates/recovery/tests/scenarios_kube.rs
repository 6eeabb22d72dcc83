//! The reconciler on the real backends: every row of the decision table,
//! the seed's scenarios 3, 5, 6 and 8, a lost webhook, and the rule that
//! repairs never fight the coordinator — over testkit's FakeKube and
//! FakeGitHub, through the real `kube` and `octocrab` code paths, on paused
//! time.
//!
//! Each inconsistency is made the way the world makes it: through the API
//! by another party (a dead coordinator, a human, a broken write), or by
//! seeding FakeKube. After a cycle the world is checked where it lives —
//! FakeKube's store and request log, FakeGitHub's labels, calls and rate
//! limits — never from the cycle's report alone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use cancel_coordinator::workloads::ANNOTATION_NEEDS_INTERVENTION as RUN_NEEDS_INTERVENTION;
use cancel_coordinator::{CancelMode, CancellationRequest, CodeRun, Intent, Workloads as _};
use common::*;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use lease_lock::Lease;
use recovery::{ANNOTATION_NEEDS_INTERVENTION, Action, CycleReport, Finding, Kind};
use state_store::naming::{ANNOTATION_QUARANTINE_REASON, KEY_STATE, KEY_STATE_CORRUPT};
use state_store::{CancellationOutcome, CancellationRecord, OperationJournal, OperationKind};
use testkit::calls::Outcome;
use testkit::faults::{InjectedError, Match};
use testkit::github::{DeliveryOutcome, WebhookConfig};
use testkit::kube::RequestFilter;
use tokio_util::sync::CancellationToken;

// ----- the decision table, one row each ------------------------------------

#[tokio::test(start_paused = true)]
async fn a_pending_supersession_whose_request_was_lost_is_handed_on_and_its_stale_runs_cancelled() {
    let c = Cluster::start().await;
    let stale = c.agents_on(OLD);
    let fresh = c.agents_on(NEW);
    c.pull_at(NEW, &["ready-for-qa"]);
    // The sensor recorded the push; its request to the coordinator was lost.
    c.pushed(NEW, ago(1)).await;
    let (coordinator, workers) = c.coordinator("controller-0");
    let recovery = c.recovery(&coordinator);
    let early = recovery.run_cycle().await.unwrap();
    assert!(
        early.of(Kind::PendingSupersession).is_empty(),
        "a fresh supersession is the coordinator's: {early:?}"
    );
    later().await;

    let report = recovery.run_cycle().await.unwrap();
    settled(&[&coordinator]).await;

    let found = the_one(&report, Kind::PendingSupersession);
    assert_eq!(found.action, Action::Handed);
    for run in &stale {
        assert!(c.stopped(run) && !c.run_exists(run), "{run} cancelled");
        assert!(
            c.writes(RECOVERY, run).is_empty(),
            "{run}: handed, not done behind the coordinator's back"
        );
    }
    for run in &fresh {
        assert!(c.run_exists(run) && c.pod_exists(run), "{run} kept");
        assert_eq!(c.writes_to_run(run), 0, "{run} never written to");
    }
    let state = c.peek_state();
    assert!(state.pending_supersessions.is_empty());
    assert_eq!(c.cancellations(), 1);
    let labels = c.labels_now();
    assert!(
        labels.contains(&"needs-qa".to_owned()) && !labels.contains(&"ready-for-qa".to_owned()),
        "{labels:?}"
    );
    workers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_journal_under_a_dead_holders_lease_is_resumed_with_a_later_token() {
    let c = Cluster::start().await;
    let stale = c.agents_on(OLD);
    c.pull_at(NEW, &["ready-for-qa"]);
    c.pushed(NEW, ago(1)).await;
    // A saga whose process died right after journaling: its Lease is left
    // held by an identity nobody renews (last renewed two minutes ago).
    let lease = c.seed_dead_lease(TASK);
    let token = lease_lock::FencingToken::new(
        lease.metadata.uid.clone().unwrap(),
        lease.metadata.creation_timestamp.clone().unwrap().0,
        1,
    );
    let mut journal = OperationJournal::begin(
        "op-dead",
        OperationKind::Cancellation,
        "dead-pod/1",
        c.clock.now(),
    );
    journal.fencing_token = Some(token);
    journal.targets = stale.clone();
    journal.context.insert("keep_head".into(), NEW.into());
    journal.context.insert("pr".into(), c.pr.to_string());
    c.store_as(DEAD)
        .begin_operation(TASK, journal)
        .await
        .unwrap();
    let (coordinator, workers) = c.coordinator("controller-0");
    let recovery = c.recovery(&coordinator);
    later().await;

    let report = recovery.run_cycle().await.unwrap();
    settled(&[&coordinator]).await;

    let found = the_one(&report, Kind::AbandonedJournal);
    assert_eq!(found.action, Action::Handed);
    assert!(
        stale.iter().all(|r| c.stopped(r)),
        "the journal's targets are gone"
    );
    let state = c.peek_state();
    assert!(state.active_operation.is_none(), "the journal is finished");
    let records: Vec<_> = state
        .cancellation_history
        .iter()
        .filter(|r| r.operation_id == "op-dead")
        .collect();
    assert_eq!(records.len(), 1, "{:?}", state.cancellation_history);
    assert_eq!(records[0].outcome, CancellationOutcome::Cancelled);
    let taken = c.kube.peek::<Lease>(NS, TASK_LEASE).unwrap();
    let spec = taken.spec.unwrap();
    assert!(spec.lease_transitions.unwrap() >= 2, "taken over: {spec:?}");
    assert_ne!(spec.holder_identity.as_deref(), Some("dead-pod/1"));
    assert!(
        c.writes(RECOVERY, TASK_LEASE).is_empty(),
        "the coordinator took the Lease over, not the reconciler"
    );
    workers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn a_run_marked_superseded_and_left_running_is_handed_on_and_cancelled() {
    let c = Cluster::start().await;
    c.seed_run("quality-old", "quality", OLD, Duration::ZERO);
    c.seed_run("review-new", "review", NEW, Duration::ZERO);
    c.pull_at(NEW, &[]);
    c.observed(NEW, ago(60)).await;
    // A coordinator marked the run, then died before deleting it (its
    // operation's journal is gone with it: nothing open for the task).
    let dead = c.workloads(DEAD);
    let run = dead.run("quality-old").await.unwrap().unwrap();
    dead.mark_superseded(&run, &intent_at(c.clock.now()))
        .await
        .unwrap();
    let (coordinator, workers) = c.coordinator("controller-0");
    let recovery = c.recovery(&coordinator);
    let early = recovery.run_cycle().await.unwrap();
    assert!(
        early.of(Kind::StaleRunAlive).is_empty(),
        "within its deadline: {early:?}"
    );
    later().await;

    let report = recovery.run_cycle().await.unwrap();
    settled(&[&coordinator]).await;

    let found = the_one(&report, Kind::StaleRunAlive);
    assert_eq!(found.object.as_deref(), Some("quality-old"));
    assert_eq!(found.action, Action::Handed);
    assert!(c.stopped("quality-old"), "its pod is gone");
    assert!(
        c.writes(RECOVERY, "quality-old").is_empty(),
        "the coordinator cancelled it"
    );
    assert!(c.pod_exists("review-new"));
    assert_eq!(c.writes_to_run("review-new"), 0);
    assert_eq!(c.cancellations(), 1);
    workers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn a_superseded_run_held_by_a_foreign_finalizer_after_its_pods_went_is_flagged_not_stripped()
{
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
    // A coordinator marked and deleted the run, then died: the garbage
    // collector took its pod, a finalizer of someone else's holds the run.
    let dead = c.workloads(DEAD);
    let run = dead.run("review-old").await.unwrap().unwrap();
    let run = dead
        .mark_superseded(&run, &intent_at(c.clock.now()))
        .await
        .unwrap();
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

    let report = recovery.run_cycle().await.unwrap();

    let found = the_one(&report, Kind::RunHeldByFinalizer);
    assert!(matches!(&found.action, Action::Flagged(why) if why.contains("example.dev/audit")));
    let held = c.kube.peek::<CodeRun>(NS, "review-old").unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    assert_eq!(held.finalizers(), ["example.dev/audit"], "never stripped");
    assert!(
        held.annotations()[RUN_NEEDS_INTERVENTION].contains("example.dev/audit"),
        "{:?}",
        held.annotations()
    );
    let writes: Vec<String> = c
        .writes(RECOVERY, "review-old")
        .iter()
        .map(|r| r.verb.clone())
        .collect();
    assert_eq!(writes, ["patch"], "one annotation, nothing else");
    let flag = c
        .annotation(TASK_STATE, ANNOTATION_NEEDS_INTERVENTION)
        .unwrap();
    assert!(
        flag.starts_with("run_held_by_finalizer: ") && flag.contains("example.dev/audit"),
        "{flag}"
    );
    let events = c.events_about(TASK_STATE).await;
    assert!(
        events
            .iter()
            .any(|(reason, note)| reason == "NeedsIntervention"
                && note.contains("example.dev/audit")),
        "{events:?}"
    );
    assert_eq!(recovery.flagged().await.unwrap().len(), 1);

    // Flagged: later cycles leave it alone until a human acts.
    let again = recovery.run_cycle().await.unwrap();
    assert!(again.of(Kind::RunHeldByFinalizer).is_empty(), "{again:?}");
    assert_eq!(c.writes(RECOVERY, "review-old").len(), 1);
    workers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn a_recorded_cancellation_whose_label_step_failed_gets_its_labels_moved_under_the_task_lock()
{
    let c = Cluster::start().await;
    c.pull_at(NEW, &["ready-for-qa"]);
    c.observed(NEW, ago(60)).await;
    recorded_with_labels_failed(&c, "rate limited").await;
    let (coordinator, workers) = c.coordinator("controller-0");
    let recovery = c.recovery(&coordinator);

    let report = recovery.run_cycle().await.unwrap();

    let found = the_one(&report, Kind::LabelsNotMoved);
    assert_eq!(found.action, Action::Repaired);
    assert_eq!(c.labels_now(), ["needs-qa"]);
    let detail = c.peek_state().cancellation_history[0]
        .detail
        .clone()
        .unwrap();
    assert!(detail.contains("labels: moved by recovery"), "{detail}");
    assert_eq!(
        c.count(RECOVERY, "create", "leases"),
        1,
        "the task's lock was taken for the repair"
    );
    let mutations = github_mutations(&c);
    let again = recovery.run_cycle().await.unwrap();
    assert!(
        again.of(Kind::LabelsNotMoved).is_empty(),
        "repaired once: {again:?}"
    );
    assert_eq!(
        github_mutations(&c),
        mutations,
        "no label call the second time"
    );
    workers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn a_label_step_github_refuses_for_good_is_flagged_for_a_human_with_the_labels_left_alone() {
    let c = Cluster::start().await;
    c.pull_at(NEW, &["ready-for-qa"]);
    c.observed(NEW, ago(60)).await;
    recorded_with_labels_failed(&c, "forbidden").await;
    // The token lost its write access to the repository.
    c.github.faults().error_rate(
        Match::any().verb("delete").resource("label"),
        1.0,
        InjectedError::Status(403),
    );
    let (coordinator, workers) = c.coordinator("controller-0");
    let recovery = c.recovery(&coordinator);

    let report = recovery.run_cycle().await.unwrap();

    let found = the_one(&report, Kind::LabelsNotMoved);
    assert!(matches!(&found.action, Action::Flagged(_)), "{found:?}");
    assert_eq!(c.labels_now(), ["ready-for-qa"]);
    let flag = c
        .annotation(TASK_STATE, ANNOTATION_NEEDS_INTERVENTION)
        .unwrap();
    assert!(flag.starts_with("labels_not_moved: "), "{flag}");
    let events = c.events_about(TASK_STATE).await;
    assert!(
        events
            .iter()
            .any(|(reason, _)| reason == "NeedsIntervention"),
        "{events:?}"
    );
    let attempts = github_mutations(&c);
    let again = recovery.run_cycle().await.unwrap();
    assert!(
        again.of(Kind::LabelsNotMoved).is_empty(),
        "left alone once flagged: {again:?}"
    );
    assert_eq!(
        github_mutations(&c),
        attempts,
        "not tried again until a human acts"
    );
    workers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn orphaned_leases_of_a_dead_or_a_released_holder_are_deleted_and_a_held_one_is_not_touched()
{
    let c = Cluster::start().await;
    c.pull_at(NEW, &[]);
    c.observed(NEW, ago(60)).await;
    c.seed_dead_lease(TASK);
    // Released by its holder, no journal behind it: orphaned too.
    let released = c.task_lock(OPERATOR, "pod-9");
    released
        .acquire("task-task-9", Default::default())
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    let live = c.task_lock(OPERATOR, "live-pod");
    let _held = live
        .acquire("task-task-7", Default::default())
        .await
        .unwrap();
    let (coordinator, workers) = c.coordinator("controller-0");
    let recovery = c.recovery(&coordinator);

    let report = recovery.run_cycle().await.unwrap();

    let mut found: Vec<_> = report
        .of(Kind::OrphanedLease)
        .iter()
        .map(|f| (f.object.clone().unwrap(), f.action.clone()))
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        found,
        [
            ("cancel-task-task-42".to_owned(), Action::Repaired),
            ("cancel-task-task-9".to_owned(), Action::Repaired),
        ],
        "{report:?}"
    );
    assert!(c.kube.peek::<Lease>(NS, TASK_LEASE).is_none());
    assert!(c.kube.peek::<Lease>(NS, "cancel-task-task-9").is_none());
    assert!(c.kube.peek::<Lease>(NS, "cancel-task-task-7").is_some());
    assert!(
        c.writes(RECOVERY, "cancel-task-task-7").is_empty(),
        "the held Lease is not touched"
    );
    let deletes = c.writes(RECOVERY, TASK_LEASE);
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].verb, "delete");
    assert!(deletes[0].applied);
    workers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn an_unreadable_state_configmap_is_rebuilt_quarantined_and_flagged_with_an_event() {
    let c = Cluster::start().await;
    let garbage =
        r#"{"version":"v1","task_id":"task-9","iteration":3,"status":"InProgress","feedback_his"#;
    c.state_written_by_hand("task-9", garbage).await;
    let (coordinator, workers) = c.coordinator("controller-0");
    let recovery = c.recovery(&coordinator);

    let report = recovery.run_cycle().await.unwrap();

    let found = the_one(&report, Kind::UnreadableState);
    assert!(matches!(&found.action, Action::Flagged(why) if why.contains("lost")));
    let stored = c.config_map("task-task-9-state");
    let data = stored.data.clone().unwrap();
    assert_eq!(data[KEY_STATE_CORRUPT], garbage, "the raw payload is kept");
    let rebuilt: state_store::RemediationState = serde_json::from_str(&data[KEY_STATE]).unwrap();
    assert_eq!((rebuilt.task_id.as_str(), rebuilt.iteration), ("task-9", 3));
    assert!(
        stored
            .annotations()
            .contains_key(ANNOTATION_QUARANTINE_REASON)
    );
    let flag = &stored.annotations()[ANNOTATION_NEEDS_INTERVENTION];
    assert!(
        flag.starts_with("unreadable_state: ") && flag.contains("lost"),
        "{flag}"
    );
    let events = c.events_about("task-task-9-state").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "NeedsIntervention");
    assert!(events[0].1.contains("lost"), "{events:?}");
    workers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn a_state_that_breaks_its_own_rules_is_flagged_and_its_payload_left_as_it_is() {
    let c = Cluster::start().await;
    let invalid = r#"{"version":"v1","task_id":"task-8","latest_head":{"sha":"not a sha","pushed_at":"2026-01-01T00:00:00Z","delivery_id":"d"}}"#;
    c.state_written_by_hand("task-8", invalid).await;
    let (coordinator, workers) = c.coordinator("controller-0");
    let recovery = c.recovery(&coordinator);

    let report = recovery.run_cycle().await.unwrap();

    let found = the_one(&report, Kind::InvalidState);
    assert!(matches!(&found.action, Action::Flagged(why) if why.contains("sha")));
    let stored = c.config_map("task-task-8-state");
    assert_eq!(
        stored.data.as_ref().unwrap()[KEY_STATE],
        invalid,
        "no repair is certain enough"
    );
    assert!(
        stored.annotations()[ANNOTATION_NEEDS_INTERVENTION].starts_with("invalid_state: "),
        "{:?}",
        stored.annotations()
    );
    let events = c.events_about("task-task-8-state").await;
    assert!(
        events
            .iter()
            .any(|(reason, _)| reason == "NeedsIntervention"),
        "{events:?}"
    );
    let writes: Vec<String> = c
        .writes(RECOVERY, "task-task-8-state")
        .iter()
        .map(|r| r.verb.clone())
        .collect();
    assert_eq!(writes, ["update"], "the flag, in one write");
    workers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn a_pull_request_head_that_moved_past_the_recorded_one_is_recorded_and_its_stale_runs_cancelled()
 {
    let c = Cluster::start().await;
    let stale = c.agents_on(OLD);
    let fresh = c.agents_on(NEW);
    c.pull_at(OLD, &["ready-for-qa"]);
    c.observed(OLD, ago(3600)).await;
    // Someone pushed NEW; no webhook told the sensor (none is configured).
    c.github.set_pull_head("acme", "widgets", 7, NEW).unwrap();
    let (coordinator, workers) = c.coordinator("controller-0");
    let recovery = c.recovery(&coordinator);

    let report = recovery.run_cycle().await.unwrap();
    settled(&[&coordinator]).await;

    let found = the_one(&report, Kind::HeadDrift);
    assert_eq!(found.action, Action::Handed);
    assert_eq!(c.peek_state().latest_head.unwrap().sha, NEW);
    assert!(stale.iter().all(|r| c.stopped(r)));
    assert!(
        fresh
            .iter()
            .all(|r| c.pod_exists(r) && c.writes_to_run(r) == 0)
    );
    assert_eq!(c.cancellations(), 1);
    workers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn a_closed_pull_request_with_runs_left_has_every_one_of_them_cancelled() {
    let c = Cluster::start().await;
    let left = c.agents_on(NEW);
    c.pull_at(NEW, &["ready-for-qa"]);
    c.observed(NEW, ago(60)).await;
    c.github.close_pull("acme", "widgets", 7).unwrap();
    let (coordinator, workers) = c.coordinator("controller-0");
    let recovery = c.recovery(&coordinator);

    let report = recovery.run_cycle().await.unwrap();
    settled(&[&coordinator]).await;

    let found = the_one(&report, Kind::HeadDrift);
    assert_eq!(found.action, Action::Handed);
    assert!(
        left.iter().all(|r| c.stopped(r)),
        "no run of a closed PR goes on"
    );
    assert_eq!(c.cancellations(), 1);
    assert_eq!(
        c.labels_now(),
        ["ready-for-qa"],
        "a closed PR's labels stay"
    );
    let again = recovery.run_cycle().await.unwrap();
    assert!(
        again.of(Kind::HeadDrift).is_empty(),
        "nothing left to cancel: {again:?}"
    );
    workers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn an_orphaned_lease_renewed_after_the_scan_is_not_deleted_its_version_having_moved() {
    let c = Cluster::start().await;
    c.seed_dead_lease(TASK);
    let (coordinator, workers) = c.coordinator("controller-0");
    let recovery = c.recovery(&coordinator);
    // The cycle lists the Leases, then the runs (held up here for 5 s).
    let slow_runs = c.kube.faults().latency(
        Match::any().verb("list").resource("coderuns"),
        Duration::from_secs(5),
        Duration::ZERO,
    );
    let cycle = tokio::spawn({
        let recovery = recovery.clone();
        async move { recovery.run_cycle().await }
    });
    until(
        Duration::from_secs(5),
        "the cycle listed the Leases",
        || c.count(RECOVERY, "list", "leases") > 0,
    )
    .await;
    // Meanwhile its holder comes back and renews it.
    let leases: Api<Lease> = Api::namespaced(c.client(OPERATOR), NS);
    let mut lease = leases.get(TASK_LEASE).await.unwrap();
    lease.spec.as_mut().unwrap().renew_time = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(jiff::Timestamp::now()),
    );
    leases
        .replace(TASK_LEASE, &PostParams::default(), &lease)
        .await
        .unwrap();

    let report = cycle.await.unwrap().unwrap();
    c.kube.faults().remove(slow_runs);

    assert!(report.of(Kind::OrphanedLease).is_empty(), "{report:?}");
    assert!(
        c.kube.peek::<Lease>(NS, TASK_LEASE).is_some(),
        "the renewed Lease stays"
    );
    let refused: Vec<_> = c
        .writes(RECOVERY, TASK_LEASE)
        .into_iter()
        .map(|r| (r.verb, r.outcome, r.applied))
        .collect();
    assert_eq!(
        refused,
        [("delete".to_owned(), Outcome::Error(409), false)],
        "the delete carried the listed resourceVersion, and FakeKube refused it"
    );
    workers.shutdown(Duration::from_secs(5)).await;
}

// ----- the seed's scenarios ----------------------------------------------------

/// Seed scenario 3: GitHub refuses every label write while the saga runs,
/// so its cancellation is recorded with its label step failed; the next
/// cycle moves the labels, once.
#[tokio::test(start_paused = true)]
async fn seed_3_a_cancellation_whose_labels_failed_after_its_record_is_repaired_by_the_next_cycle_once()
 {
    let c = Cluster::start().await;
    let stale = c.agents_on(OLD);
    c.seed_run("quality-2222222", "quality", NEW, Duration::ZERO);
    c.pull_at(NEW, &["ready-for-qa"]);
    let at = ago(1);
    c.pushed(NEW, at).await;
    let faults = c.github.faults();
    let refusals = [
        faults.error_rate(
            Match::any().resource("label"),
            1.0,
            InjectedError::Status(503),
        ),
        faults.error_rate(
            Match::any().resource("labels"),
            1.0,
            InjectedError::Status(503),
        ),
    ];
    let (coordinator, workers) = c.coordinator("controller-0");
    coordinator
        .submit(CancellationRequest::push(TASK, c.pr.clone(), NEW, at))
        .unwrap();
    settled(&[&coordinator]).await;
    for rule in refusals {
        faults.remove(rule);
    }

    // The cancellation stands and is recorded; the labels did not move.
    assert!(stale.iter().all(|r| c.stopped(r)));
    assert_eq!(c.cancellations(), 1);
    assert_eq!(c.labels_now(), ["ready-for-qa"]);
    let detail = c.peek_state().cancellation_history[0]
        .detail
        .clone()
        .unwrap();
    assert!(detail.contains("labels: failed"), "{detail}");
    let calls = c.github.calls();
    assert!(
        calls.count_outcome(Some("delete"), Some("label"), &Outcome::Injected(503)) > 0,
        "the saga tried"
    );

    let recovery = c.recovery(&coordinator);
    let report = recovery.run_cycle().await.unwrap();

    let found = the_one(&report, Kind::LabelsNotMoved);
    assert_eq!(found.action, Action::Repaired);
    assert_eq!(c.labels_now(), ["needs-qa"]);
    let moved = || {
        (
            calls.count_outcome(Some("delete"), Some("label"), &Outcome::Ok),
            calls.count_outcome(Some("post"), Some("labels"), &Outcome::Ok),
        )
    };
    assert_eq!(
        moved(),
        (1, 1),
        "one claiming DELETE, one POST: exactly once"
    );
    let state = c.peek_state();
    assert_eq!(state.cancellation_history.len(), 1, "recorded once");
    let detail = state.cancellation_history[0].detail.clone().unwrap();
    assert!(
        detail.contains("labels: moved by recovery, after failing"),
        "{detail}"
    );
    let again = recovery.run_cycle().await.unwrap();
    assert!(again.of(Kind::LabelsNotMoved).is_empty(), "{again:?}");
    assert_eq!(moved(), (1, 1), "never again");
    workers.shutdown(Duration::from_secs(5)).await;
}

/// Seed scenario 5: a real cancellation's state, cut off half-way through
/// its cancellation history by a broken write, is rebuilt from what
/// survived (the head, the pull request), the raw payload kept, and the task
/// flagged with what was lost — an annotation and a Kubernetes Event.
#[tokio::test(start_paused = true)]
async fn seed_5_a_corrupted_state_configmap_is_rebuilt_from_what_survived_and_flagged_with_what_was_lost()
 {
    let c = Cluster::start().await;
    c.agents_on(OLD);
    let fresh = c.agents_on(NEW);
    c.pull_at(NEW, &["ready-for-qa"]);
    let at = ago(1);
    c.pushed(NEW, at).await;
    let (coordinator, workers) = c.coordinator("controller-0");
    coordinator
        .submit(CancellationRequest::push(TASK, c.pr.clone(), NEW, at))
        .unwrap();
    settled(&[&coordinator]).await;
    assert_eq!(c.cancellations(), 1);
    let cms: Api<ConfigMap> = Api::namespaced(c.client(OPERATOR), NS);
    let mut cm = cms.get(TASK_STATE).await.unwrap();
    let text = cm.data.as_ref().unwrap()[KEY_STATE].clone();
    let cut = text.find("\"cancellation_history\"").unwrap() + 30;
    let broken = text[..cut].to_owned();
    cm.data
        .as_mut()
        .unwrap()
        .insert(KEY_STATE.into(), broken.clone());
    cms.replace(TASK_STATE, &PostParams::default(), &cm)
        .await
        .unwrap();
    let recovery = c.recovery(&coordinator);

    let report = recovery.run_cycle().await.unwrap();

    let found = the_one(&report, Kind::UnreadableState);
    assert!(matches!(&found.action, Action::Flagged(why) if why.contains("lost")));
    let stored = c.config_map(TASK_STATE);
    assert_eq!(
        stored.data.as_ref().unwrap()[KEY_STATE_CORRUPT],
        broken,
        "the raw payload is kept"
    );
    let rebuilt = c.peek_state();
    assert_eq!(rebuilt.latest_head.unwrap().sha, NEW, "the head survived");
    assert_eq!(
        rebuilt.metadata[cancel_coordinator::METADATA_PULL_REQUEST],
        c.pr.to_string(),
        "the pull request survived"
    );
    assert!(
        rebuilt.cancellation_history.is_empty(),
        "the history was lost"
    );
    assert!(
        stored
            .annotations()
            .contains_key(ANNOTATION_QUARANTINE_REASON)
    );
    let flag = &stored.annotations()[ANNOTATION_NEEDS_INTERVENTION];
    assert!(
        flag.starts_with("unreadable_state: rebuilt from what survived; lost: "),
        "{flag}"
    );
    let events = c.events_about(TASK_STATE).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "NeedsIntervention");
    assert!(fresh.iter().all(|r| c.pod_exists(r)), "no run was touched");

    let writes: Vec<String> = c
        .writes(RECOVERY, TASK_STATE)
        .iter()
        .map(|r| r.verb.clone())
        .collect();
    assert_eq!(
        writes,
        ["update", "update"],
        "rebuilt and quarantined in one write, flagged in another"
    );
    let again = recovery.run_cycle().await.unwrap();
    assert!(
        again.findings.iter().all(|f| f.task_id != TASK),
        "left alone once flagged: {again:?}"
    );
    assert_eq!(c.writes(RECOVERY, TASK_STATE).len(), writes.len());
    workers.shutdown(Duration::from_secs(5)).await;
}

/// Seed scenario 6: FakeKube is partitioned from everyone for a window.
/// The cancellation of a push recorded just before fails (each try, then
/// for good: left to recovery), the leader's cycle hangs on the API until
/// its leadership Lease expires and is cut short — nothing is cancelled
/// blind, nothing is forgotten. Once the partition heals, the reconciler
/// finds the supersession and the stale runs end cancelled, recorded once.
#[tokio::test(start_paused = true)]
async fn seed_6_a_partition_fails_the_cancellation_and_cuts_the_cycle_short_and_after_it_heals_nothing_is_lost()
 {
    let c = Cluster::start().await;
    let stale = c.agents_on(OLD);
    let fresh = c.agents_on(NEW);
    c.pull_at(NEW, &["ready-for-qa"]);
    let at = ago(1);
    c.pushed(NEW, at).await;
    let (coordinator, workers) = c.coordinator("controller-0");
    let recovery = c.recovery(&coordinator);
    let shutdown = CancellationToken::new();
    let leader = recovery.spawn(
        c.lock(RECOVERY, "controller-0", "recovery"),
        shutdown.clone(),
    );
    until(Duration::from_secs(10), "the leader's first cycle", || {
        metric(&recovery, "recovery_cycles_total") >= 1
    })
    .await;

    c.kube.faults().partition();
    coordinator
        .submit(CancellationRequest::push(TASK, c.pr.clone(), NEW, at))
        .unwrap();
    until(
        Duration::from_secs(3600),
        "the coordinator gives up and the cycle is cut short",
        || {
            coordinator.list_active().is_empty()
                && metric(
                    &recovery,
                    "recovery_cycles_skipped_total{reason=\"leadership_lost\"}",
                ) >= 1
        },
    )
    .await;
    let recent = coordinator.status(TASK).unwrap().recent;
    let errors: Vec<String> = recent
        .iter()
        .map(|f| f.result.clone().unwrap_err())
        .collect();
    eprintln!("the cancellation's errors during the partition: {errors:#?}");
    assert!(errors.len() > 1, "retried before giving up: {errors:?}");
    assert!(
        errors
            .iter()
            .all(|e| e.starts_with("task lock: no answer from the API server")),
        "an unreachable API server is named as such, not as contention: {errors:?}"
    );
    let cut_short = c
        .kube
        .requests()
        .matching(&RequestFilter::any().correlation(RECOVERY))
        .into_iter()
        .filter(|r| r.outcome == Outcome::Dropped)
        .count();
    assert!(
        cut_short > 0,
        "the cycle's reads were abandoned, not answered"
    );
    assert!(
        stale.iter().all(|r| c.pod_exists(r)),
        "nothing cancelled blind"
    );
    assert_eq!(
        c.peek_state().pending_supersessions.len(),
        1,
        "nothing forgotten"
    );

    c.kube.faults().heal();
    until(
        Duration::from_secs(600),
        "converged after the partition",
        || {
            stale.iter().all(|r| c.stopped(r))
                && c.peek_state().pending_supersessions.is_empty()
                && coordinator.list_active().is_empty()
        },
    )
    .await;

    assert_eq!(c.cancellations(), 1, "recorded once");
    assert!(
        recovery.metrics().found(Kind::PendingSupersession) >= 1,
        "found by recovery"
    );
    assert!(
        fresh
            .iter()
            .all(|r| c.pod_exists(r) && c.writes_to_run(r) == 0)
    );
    shutdown.cancel();
    leader.await.unwrap();
    workers.shutdown(Duration::from_secs(5)).await;
}

/// Seed scenario 8: the coordinator is killed mid-saga — journal written,
/// intents recorded, deletes sent, pods still stopping — as the API server
/// restarts; a restarted coordinator's reconciler resumes the journal: the
/// cancellation completes, recorded once, and the task's Lease is gone.
#[tokio::test(start_paused = true)]
async fn seed_8_a_coordinator_killed_mid_saga_leaves_no_orphaned_lease_and_its_cancellation_completes_once()
 {
    let c = Cluster::start().await;
    let stale = ["quality-old", "review-old"];
    for (name, role) in stale.iter().zip(["quality", "review"]) {
        c.seed_run(name, role, OLD, Duration::from_secs(5));
    }
    c.seed_run("quality-new", "quality", NEW, Duration::ZERO);
    c.pull_at(NEW, &["ready-for-qa"]);
    let at = ago(1);
    c.pushed(NEW, at).await;
    let (first, workers) = c.coordinator("controller-0");
    first
        .submit(CancellationRequest::push(TASK, c.pr.clone(), NEW, at))
        .unwrap();
    until(Duration::from_secs(30), "the saga is mid-way", || {
        c.peek_state().active_operation.is_some()
            && stale.iter().all(|r| {
                c.kube
                    .peek::<CodeRun>(NS, r)
                    .is_some_and(|run| run.metadata.deletion_timestamp.is_some())
            })
    })
    .await;
    let operation = c.peek_state().active_operation.unwrap().operation_id;
    assert!(stale.iter().any(|r| c.pod_exists(r)), "pods still stopping");

    // The API server restarts and the coordinator's process dies with it:
    // its workers' tasks are dropped mid-step.
    c.kube.restart();
    drop(workers);
    drop(first);
    // A dropped guard releases its Lease in the background (a process
    // killed outright leaves it to expire; the dead-holder rows cover that).
    until(
        Duration::from_secs(10),
        "the dead guard's Lease is released",
        || {
            c.kube
                .peek::<Lease>(NS, TASK_LEASE)
                .and_then(|l| l.spec?.holder_identity)
                .is_none_or(|h| h.is_empty())
        },
    )
    .await;
    assert!(
        c.peek_state().active_operation.is_some(),
        "the journal outlives its holder"
    );

    let (second, workers) = c.coordinator("controller-1");
    let recovery = c.recovery(&second);
    later().await;
    let report = recovery.run_cycle().await.unwrap();
    settled(&[&second]).await;

    let found = the_one(&report, Kind::AbandonedJournal);
    assert_eq!(found.action, Action::Handed);
    assert!(stale.iter().all(|r| c.stopped(r)));
    assert!(c.pod_exists("quality-new") && c.writes_to_run("quality-new") == 0);
    let state = c.peek_state();
    assert!(state.active_operation.is_none());
    let records: Vec<_> = state
        .cancellation_history
        .iter()
        .filter(|r| r.operation_id == operation)
        .collect();
    assert_eq!(
        records.len(),
        1,
        "recorded once: {:?}",
        state.cancellation_history
    );
    assert_eq!(state.cancellation_history.len(), 1);
    assert_eq!(records[0].outcome, CancellationOutcome::Cancelled);
    assert_eq!(c.labels_now(), ["needs-qa"]);

    let next = recovery.run_cycle().await.unwrap();
    let orphans = next.of(Kind::OrphanedLease);
    assert_eq!(orphans.len(), 1, "{next:?}");
    assert_eq!(orphans[0].action, Action::Repaired);
    assert!(
        c.kube.peek::<Lease>(NS, TASK_LEASE).is_none(),
        "no orphaned Lease remains"
    );
    workers.shutdown(Duration::from_secs(5)).await;
}

// ----- a lost webhook ----------------------------------------------------------

/// GitHub loses the `push` and `synchronize` deliveries of a push (held,
/// then lost: never sent, never listed). One cycle catches the drift; the
/// reads of the pull request after it are conditional, and once nothing
/// changed, a 304 that costs no rate limit.
#[tokio::test(start_paused = true)]
async fn a_push_whose_webhooks_were_lost_is_caught_by_head_drift_in_one_cycle_and_an_unchanged_pull_request_is_read_with_a_304()
 {
    let c = Cluster::start().await;
    // The sensor's address: nothing reaches it in this test.
    let sensor = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/webhook/github", sensor.local_addr().unwrap());
    let hooks = c.github.webhooks();
    hooks
        .configure(WebhookConfig::new(url.parse().unwrap()))
        .unwrap();
    hooks.hold();
    let stale = c.agents_on(OLD);
    let fresh = c.agents_on(NEW);
    c.pull_at(OLD, &["ready-for-qa"]);
    c.observed(OLD, ago(3600)).await;
    let lost = c.github.push_to_pull("acme", "widgets", 7, &[NEW]).unwrap();
    for id in &lost {
        hooks.lose(*id).unwrap();
    }
    let deliveries: Vec<_> = lost
        .iter()
        .map(|id| {
            let d = hooks.delivery(*id).unwrap();
            (d.event, d.action, d.outcome)
        })
        .collect();
    assert_eq!(
        deliveries,
        [
            ("push".to_owned(), None, DeliveryOutcome::Lost),
            (
                "pull_request".to_owned(),
                Some("synchronize".to_owned()),
                DeliveryOutcome::Lost
            ),
        ]
    );
    let (coordinator, workers) = c.coordinator("controller-0");
    let recovery = c.recovery(&coordinator);

    let report = recovery.run_cycle().await.unwrap();
    settled(&[&coordinator]).await;

    let found = the_one(&report, Kind::HeadDrift);
    assert_eq!(found.action, Action::Handed);
    let head = c.peek_state().latest_head.unwrap();
    assert_eq!(
        (head.sha.as_str(), head.delivery_id.as_str()),
        (NEW, "recovery-head-drift")
    );
    assert!(stale.iter().all(|r| c.stopped(r)));
    assert!(
        fresh
            .iter()
            .all(|r| c.pod_exists(r) && c.writes_to_run(r) == 0)
    );
    assert_eq!(c.cancellations(), 1);

    let spent = || c.github.rate_limit(RECOVERY_TOKEN).unwrap().used;
    let reads = || c.github.calls().count(Some("get"), Some("pull"));
    let (spent_before, reads_before) = (spent(), reads());
    // The saga moved the labels since: the pull request changed, and its
    // ETag with it (a full read).
    let second = recovery.run_cycle().await.unwrap();
    assert!(second.of(Kind::HeadDrift).is_empty(), "{second:?}");
    assert_eq!(spent(), spent_before + 1, "changed since: read in full");
    assert_eq!(c.recovery_github.not_modified_count(), 0);
    // Nothing changed since: the conditional read is a 304.
    let third = recovery.run_cycle().await.unwrap();
    assert!(third.of(Kind::HeadDrift).is_empty(), "{third:?}");
    assert_eq!(reads(), reads_before + 2, "one read per cycle");
    assert_eq!(spent(), spent_before + 1, "a 304 costs no rate limit");
    assert_eq!(c.recovery_github.not_modified_count(), 1);
    workers.shutdown(Duration::from_secs(5)).await;
}

// ----- repairs never fight the coordinator ------------------------------------

/// Three cancellations start while a cycle runs, and a second cycle runs
/// once all three are in flight (journals written, deletes sent, pods taking
/// 20 s to stop); elsewhere an orphaned Lease and an unreadable state are
/// recovery's to repair. The request log shows the cycles only read what
/// the operations own — their states, Leases, runs and pods — and wrote
/// only what was their own; the operations then finish undisturbed.
#[tokio::test(start_paused = true)]
async fn a_cycle_while_cancellations_are_in_flight_only_reads_what_they_own() {
    let c = Cluster::start().await;
    let tasks = ["task-1", "task-2", "task-3"];
    let mut owned = Vec::new();
    let mut requests = Vec::new();
    for (i, task) in tasks.iter().enumerate() {
        for role in ["quality", "review"] {
            let stale = format!("{role}-{task}-old");
            c.seed_run_of(task, &stale, role, OLD, Duration::from_secs(20), &[]);
            let fresh = format!("{role}-{task}-new");
            c.seed_run_of(task, &fresh, role, NEW, Duration::ZERO, &[]);
            for run in [stale, fresh] {
                owned.push(format!("{run}-pod"));
                owned.push(run);
            }
        }
        owned.push(format!("task-{task}-state"));
        owned.push(format!("cancel-task-{task}"));
        let pr = c.pull(100 + i as u64, NEW, &["ready-for-qa"]);
        let at = ago(1);
        c.pushed_to(task, &pr, NEW, at).await;
        requests.push(CancellationRequest::push(*task, pr, NEW, at));
    }
    c.seed_dead_lease("task-7");
    c.state_written_by_hand("task-9", "{\"task_id\":").await;
    let (coordinator, workers) = c.coordinator("controller-0");
    let recovery = c.recovery(&coordinator);
    // Every request a little slow, so the first cycle's requests interleave
    // with the operations' first steps (lock, read, journal, intents).
    let slow = c.kube.faults().latency(
        Match::any(),
        Duration::from_millis(5),
        Duration::from_millis(5),
    );
    for request in requests {
        coordinator.submit(request).unwrap();
    }
    let alongside = tokio::spawn({
        let recovery = recovery.clone();
        async move { recovery.run_cycle().await }
    });
    let in_flight = || {
        tasks.iter().all(|t| {
            c.peek_state_of(t).active_operation.is_some()
                && ["quality", "review"].iter().all(|role| {
                    c.kube
                        .peek::<CodeRun>(NS, &format!("{role}-{t}-old"))
                        .is_some_and(|r| r.metadata.deletion_timestamp.is_some())
                })
        })
    };
    let first = alongside.await.unwrap().unwrap();
    until(
        Duration::from_secs(10),
        "every operation is mid-way",
        in_flight,
    )
    .await;
    c.kube.faults().remove(slow);

    // A cycle while every operation has its journal, its Lease, its intents
    // and its deletes out, its pods still stopping.
    let second = recovery.run_cycle().await.unwrap();

    assert!(in_flight(), "the operations are still running");
    assert_eq!(coordinator.list_active().len(), 3);
    let findings: Vec<_> = first.findings.iter().chain(&second.findings).collect();
    assert!(
        findings
            .iter()
            .all(|f| !tasks.contains(&f.task_id.as_str())),
        "nothing of theirs is recovery's: {findings:?}"
    );
    let kinds: Vec<Kind> = findings.iter().map(|f| f.kind).collect();
    assert_eq!(
        kinds,
        [Kind::UnreadableState, Kind::OrphanedLease],
        "{findings:?}"
    );
    for name in &owned {
        assert!(
            c.writes(RECOVERY, name).is_empty(),
            "the cycle wrote to {name}"
        );
    }
    let log = c.kube.requests().entries();
    let by_recovery = || {
        log.iter()
            .filter(|r| r.correlation.as_deref() == Some(RECOVERY))
    };
    let mut written: Vec<(String, Option<String>)> = by_recovery()
        .filter(|r| WRITES.contains(&r.verb.as_str()))
        .map(|r| (r.resource.clone(), r.name.clone()))
        .collect();
    written.sort();
    written.dedup();
    assert_eq!(
        written,
        [
            (
                "configmaps".to_owned(),
                Some("task-task-9-state".to_owned())
            ),
            ("events".to_owned(), None),
            ("leases".to_owned(), Some("cancel-task-task-7".to_owned())),
        ],
        "only what was its own"
    );
    for resource in ["configmaps", "leases", "coderuns"] {
        assert!(
            c.count(RECOVERY, "list", resource) > 0,
            "{resource} were read"
        );
    }

    settled(&[&coordinator]).await;
    for task in tasks {
        assert_eq!(c.cancellations_of(task), 1, "{task}");
        for role in ["quality", "review"] {
            assert!(c.stopped(&format!("{role}-{task}-old")));
            assert!(c.pod_exists(&format!("{role}-{task}-new")));
        }
    }
    workers.shutdown(Duration::from_secs(5)).await;
}

// ----- helpers ---------------------------------------------------------------

/// The one finding of `kind` in `report` (there must be exactly one).
fn the_one(report: &CycleReport, kind: Kind) -> Finding {
    let found = report.of(kind);
    assert_eq!(found.len(), 1, "one {kind:?} expected: {report:?}");
    found[0].clone()
}

/// A cancellation recorded in [`TASK`]'s state (through the API) whose label
/// step failed for `why`.
async fn recorded_with_labels_failed(c: &Cluster, why: &str) {
    let record = CancellationRecord {
        operation_id: "op-1".into(),
        at: c.clock.now(),
        new_head_sha: NEW.into(),
        targets: vec!["quality-1111111".into()],
        // As entries written before they carried their heads and timings.
        superseded_heads: Vec::new(),
        started_at: None,
        finished_at: None,
        outcome: CancellationOutcome::Cancelled,
        correlation_id: None,
        detail: Some(format!(
            "quality-1111111: sigterm in 900 ms; labels: failed ({why})"
        )),
    };
    c.store
        .update(TASK, |s| {
            s.record_cancellation(record.clone());
            Ok::<_, state_store::Error>(())
        })
        .await
        .unwrap();
}

/// The intent a coordinator records on a run it cancels for [`NEW`].
fn intent_at(at: jiff::Timestamp) -> Intent {
    Intent {
        superseded_by: NEW.into(),
        operation_id: "op-gone".into(),
        correlation_id: None,
        at,
    }
}

/// Label writes FakeGitHub answered, by anyone.
fn github_mutations(c: &Cluster) -> u64 {
    let calls = c.github.calls();
    calls.count(Some("delete"), Some("label"))
        + calls.count(Some("post"), Some("labels"))
        + calls.count(Some("put"), Some("labels"))
}

/// The value of metric line `name` (with its labels) in the reconciler's
/// registry, 0 when absent.
fn metric(recovery: &recovery::RecoveryManager, name: &str) -> u64 {
    let mut registry = prometheus_client::registry::Registry::default();
    recovery.metrics().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}
