//! The `Workloads` contract, one suite run on both backends: `MemoryWorkloads`
//! and `KubeCodeRuns` against FakeKube over HTTP (its garbage collector and
//! simulated kubelet deciding when pods and runs go), on paused tokio time.
//!
//! Each check takes a [`World`]: a backend plus the means to put runs and
//! pods in place and to look at them without going through the backend
//! (FakeKube's store, MemoryWorkloads' own accessors), so a backend cannot
//! vouch for itself. Then `kube_costs` states what the Kubernetes backend's
//! calls cost on the wire, counted by FakeKube.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use cancel_coordinator::workloads::{
    ANNOTATION_CANCEL_OPERATION, ANNOTATION_CORRELATION_ID, ANNOTATION_NEEDS_INTERVENTION,
    ANNOTATION_SUPERSEDED_AT, ANNOTATION_SUPERSEDED_BY, LABEL_CODE_RUN, phase,
};
use cancel_coordinator::{
    AgentSpec, CancelMode, CodeRun, CodeRunConfig, CodeRunSpec, Error, Intent, KubeCodeRuns,
    MemoryWorkloads, PodBehaviour, Run, RunSeed, Workloads,
};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{CustomResourceExt, Resource, ResourceExt};
use serde_json::json;
use testkit::kube::FakeKube;
use tokio::time::{Instant, sleep, sleep_until};

const OLD: &str = "1111111111111111111111111111111111111111";
const NEW: &str = "2222222222222222222222222222222222222222";
const NEWER: &str = "3333333333333333333333333333333333333333";
const TASK: &str = "42";
const GRACE: Duration = Duration::from_secs(20);

/// How a run's pods react to SIGTERM.
#[derive(Clone, Copy, Debug)]
enum Stops {
    /// They exit this long after SIGTERM.
    After(Duration),
    /// They ignore it and are killed when the grace period ends.
    IgnoringSigterm,
    /// Their node is gone: only a force delete removes them.
    Never,
}

/// A run to put in place: running, one pod.
#[derive(Clone, Debug)]
struct Seed {
    name: &'static str,
    task: &'static str,
    role: &'static str,
    head: &'static str,
    phase: &'static str,
    stops: Stops,
}

fn seed(name: &'static str) -> Seed {
    Seed {
        name,
        task: TASK,
        role: "quality",
        head: OLD,
        phase: phase::RUNNING,
        stops: Stops::After(Duration::from_secs(1)),
    }
}

impl Seed {
    fn role(self, role: &'static str) -> Self {
        Self { role, ..self }
    }
    fn task(self, task: &'static str) -> Self {
        Self { task, ..self }
    }
    fn phase(self, phase: &'static str) -> Self {
        Self { phase, ..self }
    }
    fn stops(self, stops: Stops) -> Self {
        Self { stops, ..self }
    }
    fn head_sha(self, head: &'static str) -> Self {
        Self { head, ..self }
    }
}

fn intent(sha: &str) -> Intent {
    Intent {
        superseded_by: sha.to_owned(),
        operation_id: "op-1".into(),
        correlation_id: Some("corr-1".into()),
        at: Timestamp::UNIX_EPOCH,
    }
}

/// A backend and its world, seen from outside the backend.
#[async_trait]
trait World: Send + Sync {
    type W: Workloads;
    fn workloads(&self) -> &Self::W;
    /// Puts a run and its pod in place (the pod running); the run as read.
    async fn add_run(&self, seed: Seed) -> Run;
    /// Deletes run `name` and its pods for good, then creates it again from
    /// `seed` (a new uid, new pods under the same names).
    async fn recreate(&self, seed: Seed) -> Run;
    /// The run finishes (or changes) by itself.
    async fn set_phase(&self, name: &str, phase: &str);
    async fn add_foreign_finalizer(&self, name: &str, finalizer: &str);
    async fn remove_foreign_finalizers(&self, name: &str);
    /// A finalizer on each pod of run `name`.
    async fn hold_pods(&self, name: &str);
    /// The pods of run `name` that exist now.
    fn pods(&self, name: &str) -> Vec<String>;
    /// Whether run `name` exists now, and whether it is being deleted.
    fn run_state(&self, name: &str) -> Option<RunState>;
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct RunState {
    uid: String,
    phase: String,
    deleting: bool,
    annotations: BTreeMap<String, String>,
}

// ---------------------------------------------------------------------------
// The checks.

async fn runs_are_listed_by_task_terminal_ones_included(w: impl World) {
    w.add_run(seed("a-quality")).await;
    w.add_run(seed("b-review").role("review").phase(phase::SUCCEEDED))
        .await;
    w.add_run(seed("c-other-task").task("43")).await;

    let runs = w.workloads().runs(TASK).await.unwrap();
    assert_eq!(
        summary(&runs),
        [
            ("a-quality", "quality", OLD, "Running", false),
            ("b-review", "review", OLD, "Succeeded", true),
        ]
    );
    assert!(runs.iter().all(|r| r.task_id == TASK));
    assert!(
        runs.iter()
            .all(|r| !r.deleting && r.superseded_by.is_none())
    );
    assert!(
        runs.iter()
            .all(|r| !r.uid.is_empty() && !r.resource_version.is_empty())
    );
    assert!(w.workloads().runs("44").await.unwrap().is_empty());
    assert_eq!(
        w.workloads().run("a-quality").await.unwrap().as_ref(),
        runs.first()
    );
    assert_eq!(w.workloads().run("none").await.unwrap(), None);
}

async fn the_intent_is_written_conditionally_and_only_once(w: impl World) {
    let run = w.add_run(seed("r")).await;
    let marked = w
        .workloads()
        .mark_superseded(&run, &intent(NEW))
        .await
        .unwrap();
    assert_eq!(marked.superseded_by.as_deref(), Some(NEW));
    assert_ne!(marked.resource_version, run.resource_version);
    let annotations = w.run_state("r").unwrap().annotations;
    assert_eq!(annotations[ANNOTATION_SUPERSEDED_BY], NEW);
    assert_eq!(
        annotations[ANNOTATION_SUPERSEDED_AT],
        "1970-01-01T00:00:00Z"
    );
    assert_eq!(annotations[ANNOTATION_CANCEL_OPERATION], "op-1");
    assert_eq!(annotations[ANNOTATION_CORRELATION_ID], "corr-1");

    // The version read before marking, the same sha: a retry after a lost
    // answer. Nothing is written again.
    let again = w
        .workloads()
        .mark_superseded(&run, &intent(NEW))
        .await
        .unwrap();
    assert_eq!(again.resource_version, marked.resource_version);
    let again = w
        .workloads()
        .mark_superseded(&marked, &intent(NEW))
        .await
        .unwrap();
    assert_eq!(again.resource_version, marked.resource_version);

    // Changed since read (a write that changes nothing would not count:
    // it keeps the resourceVersion), another sha: Conflict, nothing written.
    w.set_phase("r", phase::PENDING).await;
    let err = w.workloads().mark_superseded(&marked, &intent(NEWER)).await;
    assert!(matches!(err, Err(Error::Conflict { .. })), "{err:?}");
    assert_eq!(
        w.run_state("r").unwrap().annotations[ANNOTATION_SUPERSEDED_BY],
        NEW
    );

    // Read afresh, it is written; no correlation id removes the old one.
    let fresh = w.workloads().run("r").await.unwrap().unwrap();
    let uncorrelated = Intent {
        correlation_id: None,
        ..intent(NEWER)
    };
    let remarked = w
        .workloads()
        .mark_superseded(&fresh, &uncorrelated)
        .await
        .unwrap();
    assert_eq!(remarked.superseded_by.as_deref(), Some(NEWER));
    let annotations = w.run_state("r").unwrap().annotations;
    assert_eq!(annotations[ANNOTATION_SUPERSEDED_BY], NEWER);
    assert!(!annotations.contains_key(ANNOTATION_CORRELATION_ID));
}

async fn an_intent_is_cleared_only_by_the_operation_that_wrote_it(w: impl World) {
    let run = w.add_run(seed("r")).await;
    let marked = w
        .workloads()
        .mark_superseded(&run, &intent(NEW))
        .await
        .unwrap();
    assert_eq!(marked.cancel_operation.as_deref(), Some("op-1"));
    w.workloads()
        .clear_intent(&marked, "op-other")
        .await
        .unwrap();
    let annotations = w.run_state("r").unwrap().annotations;
    assert_eq!(
        annotations[ANNOTATION_SUPERSEDED_BY], NEW,
        "another operation's: kept"
    );

    w.workloads().clear_intent(&marked, "op-1").await.unwrap();
    let annotations = w.run_state("r").unwrap().annotations;
    for key in [
        ANNOTATION_SUPERSEDED_BY,
        ANNOTATION_SUPERSEDED_AT,
        ANNOTATION_CANCEL_OPERATION,
        ANNOTATION_CORRELATION_ID,
    ] {
        assert!(
            !annotations.contains_key(key),
            "{key} removed: {annotations:?}"
        );
    }
    let read = w.workloads().run("r").await.unwrap().unwrap();
    assert_eq!((read.superseded_by, read.cancel_operation), (None, None));
    // Again, and on a run gone: nothing to do.
    w.workloads().clear_intent(&marked, "op-1").await.unwrap();
}

async fn a_graceful_delete_lets_a_pod_stop_on_sigterm_and_kills_one_ignoring_it_when_its_grace_ends(
    w: impl World,
) {
    let quick = w
        .add_run(seed("quick").stops(Stops::After(Duration::from_secs(2))))
        .await;
    let stubborn = w
        .add_run(
            seed("stubborn")
                .role("review")
                .stops(Stops::IgnoringSigterm),
        )
        .await;
    let start = Instant::now();
    for run in [&quick, &stubborn] {
        terminate(&w, run, CancelMode::Delete, GRACE).await;
    }
    let until = start + Duration::from_secs(60);

    let left = wait_for(&w, &quick, CancelMode::Delete, until).await;
    assert!(left[0].done(CancelMode::Delete), "{left:?}");
    assert!(left[0].pods.is_empty(), "nothing of it runs: {left:?}");
    within(start.elapsed(), Duration::from_secs(2));
    eventually(|| w.run_state("quick").is_none()).await;

    // Delete mode: the garbage collector deletes the pods, and each gets
    // its own terminationGracePeriodSeconds, whatever the call's grace.
    let deleting = w.run_state("stubborn").unwrap();
    assert!(
        deleting.deleting,
        "a Foreground delete keeps the run until its pods are gone"
    );
    let left = w
        .workloads()
        .wait_gone(&[quick, stubborn], CancelMode::Delete, until)
        .await
        .unwrap();
    assert!(left.iter().all(|r| r.done(CancelMode::Delete)), "{left:?}");
    within(start.elapsed(), POD_GRACE);
    assert!(w.pods("stubborn").is_empty());
    eventually(|| w.run_state("stubborn").is_none()).await;
}

async fn stop_mode_gives_each_pod_the_grace_asked_for(w: impl World) {
    let stubborn = w
        .add_run(seed("stubborn").stops(Stops::IgnoringSigterm))
        .await;
    let start = Instant::now();
    terminate(&w, &stubborn, CancelMode::Stop, GRACE).await;
    // Past the pod's own grace (5 s), still stopping: it got 20 s.
    sleep_until(start + Duration::from_secs(10)).await;
    assert_eq!(w.pods("stubborn"), ["stubborn-pod-0"]);
    let left = wait_for(
        &w,
        &stubborn,
        CancelMode::Stop,
        start + Duration::from_secs(60),
    )
    .await;
    assert!(left[0].done(CancelMode::Stop), "{left:?}");
    within(start.elapsed(), GRACE);
    assert!(w.run_state("stubborn").is_some(), "Stop keeps the run");
}

async fn stop_mode_keeps_the_run_and_records_it_cancelled_once_its_pods_are_gone(w: impl World) {
    let run = w
        .add_run(seed("r").stops(Stops::After(Duration::from_secs(3))))
        .await;
    let marked = w
        .workloads()
        .mark_superseded(&run, &intent(NEW))
        .await
        .unwrap();
    let start = Instant::now();
    terminate(&w, &marked, CancelMode::Stop, GRACE).await;
    let left = wait_for(
        &w,
        &marked,
        CancelMode::Stop,
        start + Duration::from_secs(60),
    )
    .await;
    within(start.elapsed(), Duration::from_secs(3));
    assert!(
        left[0].done(CancelMode::Stop) && left[0].pods_gone(),
        "{left:?}"
    );
    let kept = w.run_state("r").expect("Stop keeps the run");
    assert!(!kept.deleting);
    assert_eq!(kept.phase, phase::RUNNING, "nothing recorded before asked");

    w.workloads()
        .record_cancelled(&marked, &intent(NEW))
        .await
        .unwrap();
    let recorded = w.workloads().run("r").await.unwrap().unwrap();
    assert_eq!(recorded.phase, phase::CANCELLED);
    assert!(recorded.terminal);
    assert_eq!(recorded.superseded_by.as_deref(), Some(NEW));
    // Again (a lost answer, a resume): success, nothing written.
    w.workloads()
        .record_cancelled(&marked, &intent(NEW))
        .await
        .unwrap();
    let again = w.workloads().run("r").await.unwrap().unwrap();
    assert_eq!(again.resource_version, recorded.resource_version);
}

async fn force_kills_the_pods_at_once_and_a_wait_ends_at_its_deadline_with_what_is_left(
    w: impl World,
) {
    let run = w.add_run(seed("r").stops(Stops::IgnoringSigterm)).await;
    let start = Instant::now();
    terminate(&w, &run, CancelMode::Stop, Duration::from_secs(30)).await;
    let left = wait_for(&w, &run, CancelMode::Stop, start + Duration::from_secs(5)).await;
    within(start.elapsed(), Duration::from_secs(5));
    assert_eq!(left[0].pods, ["r-pod-0"]);
    assert!(!left[0].done(CancelMode::Stop));
    let remains = w.workloads().remains(&run).await.unwrap();
    assert_eq!(remains.pods, left[0].pods);
    assert!(remains.run_exists && remains.foreign_finalizers.is_empty());

    w.workloads().force(&run).await.unwrap();
    assert!(
        w.pods("r").is_empty(),
        "a force delete removes the pod at once"
    );
    let left = wait_for(
        &w,
        &run,
        CancelMode::Stop,
        Instant::now() + Duration::from_secs(60),
    )
    .await;
    assert!(left[0].done(CancelMode::Stop), "{left:?}");
    within(start.elapsed(), Duration::from_secs(5));
    assert!(w.run_state("r").is_some(), "Stop keeps the run");
}

async fn a_pod_on_a_lost_node_stays_terminating_until_forced(w: impl World) {
    let run = w.add_run(seed("r").stops(Stops::Never)).await;
    let start = Instant::now();
    terminate(&w, &run, CancelMode::Stop, Duration::from_secs(5)).await;
    let left = wait_for(&w, &run, CancelMode::Stop, start + Duration::from_secs(30)).await;
    assert_eq!(left[0].pods, ["r-pod-0"], "no kubelet ends it");
    assert!(left[0].pods_held_by_finalizers.is_empty());
    w.workloads().force(&run).await.unwrap();
    assert!(
        w.workloads()
            .remains(&run)
            .await
            .unwrap()
            .done(CancelMode::Stop)
    );
    assert!(w.run_state("r").is_some(), "Stop keeps the run");
}

async fn a_foreign_finalizer_holds_the_deleted_run_and_is_reported_while_its_pods_still_go(
    w: impl World,
) {
    let run = w.add_run(seed("r")).await;
    w.add_foreign_finalizer("r", "example.dev/audit").await;
    let run = w.workloads().run("r").await.unwrap().unwrap_or(run);
    let before = w.workloads().remains(&run).await.unwrap();
    assert!(
        before.foreign_finalizers.is_empty(),
        "a finalizer holds nothing until the run is deleted: {before:?}"
    );
    terminate(&w, &run, CancelMode::Delete, GRACE).await;
    let left = wait_for(
        &w,
        &run,
        CancelMode::Delete,
        Instant::now() + Duration::from_secs(60),
    )
    .await;
    assert!(left[0].pods_gone(), "{left:?}");
    assert!(left[0].done(CancelMode::Delete), "its work has stopped");
    // What holds the run object is read by remains() (the wait watches pods).
    let held = w.workloads().remains(&run).await.unwrap();
    assert!(held.run_exists);
    assert_eq!(held.foreign_finalizers, ["example.dev/audit"]);
    assert!(held.describe().contains("example.dev/audit"));
    assert!(w.pods("r").is_empty());
    assert!(w.run_state("r").unwrap().deleting);

    w.workloads()
        .flag_intervention(&run, &held.describe())
        .await
        .unwrap();
    let flagged = w.run_state("r").unwrap().annotations;
    assert!(flagged[ANNOTATION_NEEDS_INTERVENTION].contains("example.dev/audit"));

    // Its owner removes the finalizer; the run goes.
    w.remove_foreign_finalizers("r").await;
    eventually(|| w.run_state("r").is_none()).await;
}

async fn pods_held_by_finalizers_are_reported_once_their_containers_stopped(w: impl World) {
    let run = w
        .add_run(seed("r").stops(Stops::After(Duration::from_secs(2))))
        .await;
    w.hold_pods("r").await;
    let start = Instant::now();
    terminate(&w, &run, CancelMode::Delete, GRACE).await;
    let early = w.workloads().remains(&run).await.unwrap();
    assert_eq!(early.pods, ["r-pod-0"]);
    assert!(
        early.pods_held_by_finalizers.is_empty(),
        "still stopping: {early:?}"
    );
    let left = wait_for(
        &w,
        &run,
        CancelMode::Delete,
        start + Duration::from_secs(10),
    )
    .await;
    within(start.elapsed(), Duration::from_secs(10));
    assert_eq!(left[0].pods, ["r-pod-0"], "the object stays");
    assert_eq!(left[0].pods_held_by_finalizers, ["r-pod-0"]);
    assert!(
        w.run_state("r").is_some(),
        "a Foreground delete waits for it"
    );
    assert!(!left[0].done(CancelMode::Delete));
    assert!(left[0].describe().contains("held by finalizers"));
}

async fn a_run_recreated_under_the_same_name_is_never_touched_by_calls_made_with_the_old_one(
    w: impl World,
) {
    let old = w.add_run(seed("r")).await;
    let new = w.recreate(seed("r").role("review").head_sha(NEW)).await;
    assert_eq!(new.name, old.name);
    assert_ne!(new.uid, old.uid);
    let untouched = || {
        let state = w.run_state("r").expect("the new run exists");
        assert_eq!(state.uid, new.uid);
        assert!(!state.deleting, "the new run is not being deleted");
        assert!(
            !state.annotations.contains_key(ANNOTATION_SUPERSEDED_BY)
                && !state
                    .annotations
                    .contains_key(ANNOTATION_NEEDS_INTERVENTION),
            "{:?}",
            state.annotations
        );
        assert_eq!(state.phase, phase::RUNNING);
        assert_eq!(w.pods("r"), ["r-pod-0"], "the new run's pod runs on");
    };

    let marked = w.workloads().mark_superseded(&old, &intent(NEW)).await;
    assert!(matches!(marked, Err(Error::Conflict { .. })), "{marked:?}");
    terminate(&w, &old, CancelMode::Delete, GRACE).await;
    terminate(&w, &old, CancelMode::Stop, GRACE).await;
    w.workloads().force(&old).await.unwrap();
    w.workloads()
        .flag_intervention(&old, "stuck")
        .await
        .unwrap();
    assert!(
        w.workloads()
            .record_cancelled(&old, &intent(NEW))
            .await
            .is_err()
    );
    sleep(Duration::from_secs(1)).await;
    untouched();

    assert_eq!(
        w.workloads().remains(&old).await.unwrap(),
        Default::default()
    );
    let left = wait_for(
        &w,
        &old,
        CancelMode::Delete,
        Instant::now() + Duration::from_secs(60),
    )
    .await;
    assert!(
        left[0].done(CancelMode::Delete),
        "the old run is gone: {left:?}"
    );
    untouched();
}

async fn terminating_twice_or_a_run_already_gone_is_success(w: impl World) {
    let run = w.add_run(seed("r").stops(Stops::IgnoringSigterm)).await;
    let start = Instant::now();
    terminate(&w, &run, CancelMode::Stop, GRACE).await;
    // A second, longer grace never lengthens the stop; a shorter one
    // shortens it.
    terminate(&w, &run, CancelMode::Stop, Duration::from_secs(60)).await;
    sleep_until(start + Duration::from_secs(5)).await;
    terminate(&w, &run, CancelMode::Stop, Duration::from_secs(5)).await;
    let left = wait_for(&w, &run, CancelMode::Stop, start + Duration::from_secs(60)).await;
    assert!(left[0].done(CancelMode::Stop));
    within(start.elapsed(), Duration::from_secs(10));
    // Deleting it after, and again, and forcing what is gone: success.
    terminate(&w, &run, CancelMode::Delete, GRACE).await;
    terminate(&w, &run, CancelMode::Delete, GRACE).await;
    w.workloads().force(&run).await.unwrap();
    assert!(
        w.workloads()
            .wait_gone(&[], CancelMode::Delete, start)
            .await
            .unwrap()
            .is_empty()
    );
}

/// `run` terminated in `mode` with `grace`.
async fn terminate(w: &impl World, run: &Run, mode: CancelMode, grace: Duration) {
    w.workloads().terminate(run, mode, grace).await.unwrap();
}

/// What a check says of each run: name, role, head, phase, terminal.
fn summary(runs: &[Run]) -> Vec<(&str, &str, &str, &str, bool)> {
    runs.iter()
        .map(|r| {
            let (name, role, head, phase) = (&r.name, &r.role, &r.head_sha, &r.phase);
            (
                name.as_str(),
                role.as_str(),
                head.as_str(),
                phase.as_str(),
                r.terminal,
            )
        })
        .collect()
}

/// `run` waited for until it is gone in `mode` or `deadline` passes.
async fn wait_for(
    w: &impl World,
    run: &Run,
    mode: CancelMode,
    deadline: Instant,
) -> Vec<cancel_coordinator::Remains> {
    w.workloads()
        .wait_gone(std::slice::from_ref(run), mode, deadline)
        .await
        .unwrap()
}

/// `elapsed` is `expected` of paused time, give or take the instant it
/// takes answers to travel (no time passes for them on a paused clock,
/// but a timer may fire in between).
fn within(elapsed: Duration, expected: Duration) {
    assert!(
        elapsed >= expected && elapsed < expected + Duration::from_millis(500),
        "took {elapsed:?}, expected {expected:?}"
    );
}

/// Polls `done` on paused time (the garbage collector and kubelet act in
/// the background).
async fn eventually(done: impl Fn() -> bool) {
    for _ in 0..600 {
        if done() {
            return;
        }
        sleep(Duration::from_millis(100)).await;
    }
    panic!("not within a minute");
}

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod on_memory {
            $(
                #[tokio::test(start_paused = true)]
                async fn $check() {
                    super::$check(super::MemoryWorld::new()).await;
                }
            )*
        }
        mod on_kube {
            $(
                #[tokio::test(start_paused = true)]
                async fn $check() {
                    super::$check(super::KubeWorld::start(super::CodeRunConfig::default()).await).await;
                }
            )*
        }
    };
}

conformance!(
    runs_are_listed_by_task_terminal_ones_included,
    the_intent_is_written_conditionally_and_only_once,
    a_graceful_delete_lets_a_pod_stop_on_sigterm_and_kills_one_ignoring_it_when_its_grace_ends,
    stop_mode_keeps_the_run_and_records_it_cancelled_once_its_pods_are_gone,
    force_kills_the_pods_at_once_and_a_wait_ends_at_its_deadline_with_what_is_left,
    a_pod_on_a_lost_node_stays_terminating_until_forced,
    a_foreign_finalizer_holds_the_deleted_run_and_is_reported_while_its_pods_still_go,
    pods_held_by_finalizers_are_reported_once_their_containers_stopped,
    a_run_recreated_under_the_same_name_is_never_touched_by_calls_made_with_the_old_one,
    terminating_twice_or_a_run_already_gone_is_success,
    stop_mode_gives_each_pod_the_grace_asked_for,
    an_intent_is_cleared_only_by_the_operation_that_wrote_it,
);

// ---------------------------------------------------------------------------
// What the Kubernetes backend costs on the wire, and how its waits survive
// the API server: counted and caused by FakeKube.

mod kube_costs {
    use super::*;

    /// Runs `runs`, marks, terminates (Delete) and waits for three runs
    /// whose pods stop `after` SIGTERM; the calls FakeKube counted for it.
    async fn cancel_three(
        config: CodeRunConfig,
        after: Duration,
    ) -> (KubeWorld, Vec<cancel_coordinator::Remains>) {
        let w = KubeWorld::start(config).await;
        for name in ["a", "b", "c"] {
            w.add_run(seed(name).stops(Stops::After(after))).await;
        }
        w.kube.calls().reset();
        let runs = w.workloads.runs(TASK).await.unwrap();
        let mut marked = Vec::new();
        for run in &runs {
            marked.push(
                w.workloads
                    .mark_superseded(run, &intent(NEW))
                    .await
                    .unwrap(),
            );
        }
        for run in &marked {
            terminate(&w, run, CancelMode::Delete, GRACE).await;
        }
        let left = w
            .workloads
            .wait_gone(
                &marked,
                CancelMode::Delete,
                Instant::now() + Duration::from_secs(60),
            )
            .await
            .unwrap();
        (w, left)
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_three_runs_costs_two_calls_per_run_and_three_for_the_list_and_the_wait() {
        let (w, left) = cancel_three(CodeRunConfig::default(), Duration::from_secs(2)).await;
        assert!(left.iter().all(|r| r.done(CancelMode::Delete)), "{left:?}");
        let calls = w.kube.calls();
        let count = |verb, resource| calls.count(Some(verb), Some(resource));
        assert_eq!(count("list", "coderuns"), 1, "runs()");
        assert_eq!(count("patch", "coderuns"), 3, "one intent per run");
        assert_eq!(
            count("delete", "coderuns"),
            3,
            "each run deleted in the foreground"
        );
        assert_eq!(count("delete", "pods"), 0, "the garbage collector's");
        assert_eq!(count("list", "pods"), 1, "the wait's");
        assert_eq!(
            count("watch", "pods"),
            1,
            "one watch for all the runs' pods"
        );
        assert_eq!(calls.count(Some("get"), None), 0);
        assert_eq!(calls.total(), 2 * 3 + 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_for_pods_already_gone_ends_with_its_list() {
        let (w, left) = cancel_three(CodeRunConfig::default(), Duration::ZERO).await;
        assert!(left.iter().all(|r| r.done(CancelMode::Delete)), "{left:?}");
        let calls = w.kube.calls();
        assert_eq!(
            calls.count(Some("watch"), None),
            0,
            "nothing left to watch for"
        );
        assert_eq!(calls.total(), 2 * 3 + 2);
    }

    #[tokio::test(start_paused = true)]
    async fn with_streaming_lists_the_wait_is_one_watch_and_no_list() {
        let config = CodeRunConfig {
            streaming_lists: true,
            ..CodeRunConfig::default()
        };
        let (w, left) = cancel_three(config, Duration::from_secs(2)).await;
        assert!(left.iter().all(|r| r.done(CancelMode::Delete)), "{left:?}");
        let calls = w.kube.calls();
        assert_eq!(
            calls.count(Some("list"), Some("coderuns")),
            1,
            "runs() only"
        );
        assert_eq!(calls.count(Some("list"), Some("pods")), 0);
        assert_eq!(calls.count(Some("watch"), None), 1);
        assert_eq!(calls.total(), 2 * 3 + 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_resumes_across_cut_watches_and_relists_after_a_restart() {
        let w = KubeWorld::start(CodeRunConfig::default()).await;
        let run = w
            .add_run(seed("r").stops(Stops::After(Duration::from_secs(10))))
            .await;
        let start = Instant::now();
        // Stop mode, so the pod gets the 20 s grace and stops on its own at 10 s.
        terminate(&w, &run, CancelMode::Stop, GRACE).await;
        w.kube.calls().reset();
        let waiting = {
            let workloads = w.workloads.clone();
            let run = run.clone();
            tokio::spawn(async move {
                workloads
                    .wait_gone(&[run], CancelMode::Stop, start + Duration::from_secs(60))
                    .await
            })
        };
        sleep_until(start + Duration::from_secs(3)).await;
        w.kube.cut_watches();
        sleep_until(start + Duration::from_secs(6)).await;
        // A write the wait does not see, so its resourceVersion is behind
        // the server's when the restart empties the watch cache.
        let configmaps: Api<k8s_openapi::api::core::v1::ConfigMap> =
            Api::namespaced(w.kube.client(), NS);
        let bystander = serde_json::from_value(json!({"metadata": {"name": "bystander"}})).unwrap();
        configmaps
            .create(&PostParams::default(), &bystander)
            .await
            .unwrap();
        w.kube.restart();
        let left = waiting.await.unwrap().unwrap();
        assert!(left[0].done(CancelMode::Stop), "{left:?}");
        within(start.elapsed(), Duration::from_secs(10));
        let calls = w.kube.calls();
        assert!(
            calls.count(Some("watch"), Some("pods")) >= 3,
            "watched, resumed after the cut, and again after the restart"
        );
        assert!(
            calls.count(Some("list"), Some("pods")) >= 2,
            "re-listed once the restart made its resourceVersion too old"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_kind_the_server_does_not_serve_fails_at_once_and_for_good() {
        let w = KubeWorld::start(CodeRunConfig::default()).await;
        let run = w.add_run(seed("r")).await;
        let missing = KubeCodeRuns::new(
            w.kube.client(),
            NS,
            CodeRunConfig {
                group: "example.dev".into(),
                kind: "AgentRun".into(),
                plural: "agentruns".into(),
                ..CodeRunConfig::default()
            },
        )
        .unwrap();
        let err = missing.runs(TASK).await.unwrap_err();
        assert!(err.is_not_found(), "{err:?}");
        assert!(!resilience::Transient::is_transient(&err));
        // And a run of it, gone for the backend: the saga's re-read decides.
        let marked = missing.mark_superseded(&run, &intent(NEW)).await;
        assert!(matches!(marked, Err(Error::Conflict { .. })), "{marked:?}");
    }
}

// ---------------------------------------------------------------------------
// Answers lost after the write landed (FakeKube's after-commit faults): the
// caller sees an error, repeats the call, and the world changes once.

mod lost_answers {
    use cancel_coordinator::FIELD_MANAGER;
    use resilience::Transient;
    use testkit::faults::{InjectedError, Match};
    use testkit::kube::RequestFilter;

    use super::*;

    fn lose_next(w: &KubeWorld, verb: &str, resource: &str) {
        w.kube.faults().fail_next_after_commit(
            Match::any().verb(verb).resource(resource),
            1,
            InjectedError::Status(500),
        );
    }

    fn stored(w: &KubeWorld, name: &str) -> CodeRun {
        w.kube.peek::<CodeRun>(NS, name).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn every_write_whose_answer_is_lost_can_be_repeated_and_takes_effect_once() {
        let w = KubeWorld::start(CodeRunConfig::default()).await;
        let run = w.add_run(seed("r").stops(Stops::IgnoringSigterm)).await;

        lose_next(&w, "patch", "coderuns");
        let err = w
            .workloads
            .mark_superseded(&run, &intent(NEW))
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        assert_eq!(
            stored(&w, "r").annotations()[ANNOTATION_SUPERSEDED_BY],
            NEW,
            "it landed"
        );
        let written = stored(&w, "r").resource_version();
        let marked = w
            .workloads
            .mark_superseded(&run, &intent(NEW))
            .await
            .unwrap();
        assert_eq!(marked.resource_version, written.clone().unwrap());
        assert_eq!(
            stored(&w, "r").resource_version(),
            written,
            "not written twice"
        );

        lose_next(&w, "delete", "pods");
        let start = Instant::now();
        let err = w
            .workloads
            .terminate(&marked, CancelMode::Stop, GRACE)
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        assert!(
            w.kube
                .peek::<Pod>(NS, "r-pod-0")
                .unwrap()
                .metadata
                .deletion_timestamp
                .is_some()
        );
        sleep_until(start + Duration::from_secs(4)).await;
        terminate(&w, &marked, CancelMode::Stop, GRACE).await;
        let left = wait_for(
            &w,
            &marked,
            CancelMode::Stop,
            start + Duration::from_secs(60),
        )
        .await;
        assert!(left[0].done(CancelMode::Stop));
        within(start.elapsed(), GRACE);

        lose_next(&w, "patch", "coderuns/status");
        let err = w
            .workloads
            .record_cancelled(&marked, &intent(NEW))
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        let recorded = stored(&w, "r");
        assert_eq!(
            recorded.status.as_ref().unwrap().phase.unwrap().as_str(),
            phase::CANCELLED
        );
        w.workloads
            .record_cancelled(&marked, &intent(NEW))
            .await
            .unwrap();
        assert_eq!(
            stored(&w, "r").resource_version(),
            recorded.resource_version()
        );

        lose_next(&w, "patch", "coderuns");
        assert!(
            w.workloads
                .flag_intervention(&marked, "stuck")
                .await
                .is_err()
        );
        w.workloads
            .flag_intervention(&marked, "stuck")
            .await
            .unwrap();
        assert_eq!(
            stored(&w, "r").annotations()[ANNOTATION_NEEDS_INTERVENTION],
            "stuck"
        );

        let ours = RequestFilter::any()
            .verb("patch")
            .field_manager(FIELD_MANAGER);
        assert!(
            w.kube.requests().count(&ours) >= 5,
            "every patch names its field manager"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_foreground_delete_whose_answer_is_lost_is_repeated_harmlessly() {
        let w = KubeWorld::start(CodeRunConfig::default()).await;
        let run = w
            .add_run(seed("r").stops(Stops::After(Duration::from_secs(3))))
            .await;
        lose_next(&w, "delete", "coderuns");
        let start = Instant::now();
        assert!(
            w.workloads
                .terminate(&run, CancelMode::Delete, GRACE)
                .await
                .is_err()
        );
        assert!(
            stored(&w, "r").meta().deletion_timestamp.is_some(),
            "it landed"
        );
        terminate(&w, &run, CancelMode::Delete, GRACE).await;
        let left = wait_for(
            &w,
            &run,
            CancelMode::Delete,
            start + Duration::from_secs(60),
        )
        .await;
        assert!(left[0].done(CancelMode::Delete), "{left:?}");
        within(start.elapsed(), Duration::from_secs(3));
    }
}

// ---------------------------------------------------------------------------
// A user's own CodeRun-like CRD: configured, not compiled in.

mod users_own_crd {
    use kube::CustomResource;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    use super::*;
    use cancel_coordinator::{Field, PodMatch};

    /// Someone else's run: task and role in labels of their own, the
    /// commit at `/spec/revision`, the phase at `/status/state`, no status
    /// subresource, pods found by owner alone.
    #[derive(CustomResource, Clone, Debug, Serialize, Deserialize, JsonSchema)]
    #[kube(
        group = "ci.example.dev",
        version = "v2",
        kind = "AgentJob",
        namespaced
    )]
    pub struct AgentJobSpec {
        pub revision: String,
    }

    fn config() -> CodeRunConfig {
        CodeRunConfig {
            group: "ci.example.dev".into(),
            version: "v2".into(),
            kind: "AgentJob".into(),
            plural: "agentjobs".into(),
            status_subresource: false,
            task_id: Field::Label("ci.example.dev/ticket".into()),
            role: Field::Label("ci.example.dev/agent".into()),
            head_sha: Field::Pointer("/spec/revision".into()),
            phase: Field::Pointer("/status/state".into()),
            terminal_phases: vec!["Done".into(), "Error".into(), "Aborted".into()],
            cancelled_phase: "Aborted".into(),
            superseded_by: Some(Field::Annotation("ci.example.dev/aborted-for".into())),
            finished_at: None,
            pods: PodMatch::Owner,
            streaming_lists: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_users_own_crd_is_read_where_its_configuration_says_and_its_pods_found_by_owner() {
        let kube = FakeKube::builder()
            .crd(AgentJob::crd())
            .start()
            .await
            .unwrap();
        let jobs: Api<AgentJob> = Api::namespaced(kube.client(), NS);
        let pods: Api<Pod> = Api::namespaced(kube.client(), NS);
        let make = async |name: &str, state: &str| {
            let mut job = AgentJob::new(
                name,
                AgentJobSpec {
                    revision: OLD.into(),
                },
            );
            job.metadata.labels = Some(
                [
                    ("ci.example.dev/ticket".to_owned(), "T-1".to_owned()),
                    ("ci.example.dev/agent".to_owned(), "lint".to_owned()),
                ]
                .into(),
            );
            let job = jobs.create(&PostParams::default(), &job).await.unwrap();
            // No status subresource: the status is part of the object.
            let status = json!({"status": {"state": state}});
            jobs.patch(name, &PatchParams::default(), &Patch::Merge(status))
                .await
                .unwrap();
            job
        };
        let running = make("lint-1", "Active").await;
        make("lint-0", "Done").await;
        // Its pod carries no label of ours: only the owner reference ties it.
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "lint-1-xyz", "ownerReferences": [running.controller_owner_ref(&()).unwrap()],
                "labels": {"testkit.supersede.dev/starts-after": "0s"}},
            "spec": {"containers": [{"name": "lint", "image": "lint:1"}], "restartPolicy": "Never"},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        let other: Pod = serde_json::from_value(json!({
            "metadata": {"name": "unrelated"},
            "spec": {"containers": [{"name": "x", "image": "x:1"}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &other).await.unwrap();

        let w = KubeCodeRuns::new(kube.client(), NS, config()).unwrap();
        let runs = w.runs("T-1").await.unwrap();
        assert_eq!(
            summary(&runs),
            [
                ("lint-0", "lint", OLD, "Done", true),
                ("lint-1", "lint", OLD, "Active", false)
            ]
        );
        let run = &runs[1];
        assert_eq!(w.remains(run).await.unwrap().pods, ["lint-1-xyz"]);

        let start = Instant::now();
        w.terminate(run, CancelMode::Stop, GRACE).await.unwrap();
        let left = w
            .wait_gone(
                std::slice::from_ref(run),
                CancelMode::Stop,
                start + Duration::from_secs(60),
            )
            .await
            .unwrap();
        assert!(left[0].done(CancelMode::Stop), "{left:?}");
        assert!(kube.peek::<Pod>(NS, "unrelated").is_some(), "not its pod");

        w.record_cancelled(run, &intent(NEW)).await.unwrap();
        let recorded = w.run("lint-1").await.unwrap().unwrap();
        assert_eq!(recorded.phase, "Aborted");
        assert!(recorded.terminal);
        assert_eq!(
            recorded.superseded_by.as_deref(),
            Some(NEW),
            "read back where it was written"
        );
        let stored = kube.peek::<AgentJob>(NS, "lint-1").unwrap();
        assert_eq!(stored.annotations()["ci.example.dev/aborted-for"], NEW);
    }
}

// ---------------------------------------------------------------------------
// The memory world.

struct MemoryWorld {
    workloads: MemoryWorkloads,
}

impl MemoryWorld {
    fn new() -> Self {
        Self {
            workloads: MemoryWorkloads::new(),
        }
    }
}

#[async_trait]
impl World for MemoryWorld {
    type W = MemoryWorkloads;

    fn workloads(&self) -> &MemoryWorkloads {
        &self.workloads
    }

    async fn add_run(&self, seed: Seed) -> Run {
        let behaviour = match seed.stops {
            Stops::After(d) => PodBehaviour::StopsAfter(d),
            Stops::IgnoringSigterm => PodBehaviour::IgnoresSigterm,
            Stops::Never => PodBehaviour::NodeLost,
        };
        self.workloads.add_run(
            RunSeed::new(seed.name, seed.task, seed.role, seed.head)
                .in_phase(seed.phase)
                .behaving(behaviour)
                .pod_grace(POD_GRACE),
        )
    }

    async fn recreate(&self, seed: Seed) -> Run {
        // A run added under a taken name replaces it, with a new uid and
        // new pods.
        self.add_run(seed).await
    }

    async fn set_phase(&self, name: &str, phase: &str) {
        self.workloads.set_phase(name, phase);
    }

    async fn add_foreign_finalizer(&self, name: &str, finalizer: &str) {
        self.workloads.add_foreign_finalizer(name, finalizer);
    }

    async fn remove_foreign_finalizers(&self, name: &str) {
        self.workloads.remove_foreign_finalizers(name);
    }

    async fn hold_pods(&self, name: &str) {
        self.workloads.hold_pods(name);
    }

    fn pods(&self, name: &str) -> Vec<String> {
        self.workloads.pods(name)
    }

    fn run_state(&self, name: &str) -> Option<RunState> {
        let run = self.workloads.get(name)?;
        Some(RunState {
            uid: run.uid,
            phase: run.phase,
            deleting: run.deleting,
            annotations: self.workloads.annotations(name),
        })
    }
}

// ---------------------------------------------------------------------------
// The Kubernetes world: FakeKube with the CodeRun CRD; pods made as a
// CodeRun controller would (the `supersede.dev/code-run` label, a
// controller owner reference blocking the owner's deletion, a
// terminationGracePeriodSeconds of 5 s unlike any grace the checks ask
// for), their behaviour chosen by testkit's pod labels.

const NS: &str = "agents";
const POD_GRACE_SECONDS: i64 = 5;
/// The pods' own grace period, in both worlds.
const POD_GRACE: Duration = Duration::from_secs(5);

struct KubeWorld {
    kube: FakeKube,
    workloads: KubeCodeRuns,
}

impl KubeWorld {
    async fn start(config: CodeRunConfig) -> Self {
        let kube = FakeKube::builder()
            .crd(CodeRun::crd())
            .start()
            .await
            .unwrap();
        let workloads = KubeCodeRuns::new(kube.client(), NS, config).unwrap();
        Self { kube, workloads }
    }

    fn runs_api(&self) -> Api<CodeRun> {
        Api::namespaced(self.kube.client(), NS)
    }

    fn pods_api(&self) -> Api<Pod> {
        Api::namespaced(self.kube.client(), NS)
    }

    async fn create_pod(&self, run: &CodeRun, name: &str, stops: Stops) {
        let termination = match stops {
            Stops::After(d) => format!("stops-after-{}ms", d.as_millis()),
            Stops::IgnoringSigterm => "after-grace-period".into(),
            Stops::Never => "never".into(),
        };
        let owner = OwnerReference {
            block_owner_deletion: Some(true),
            ..run.controller_owner_ref(&()).unwrap()
        };
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "labels": {
                    LABEL_CODE_RUN: run.name_any(),
                    "testkit.supersede.dev/starts-after": "0s",
                    "testkit.supersede.dev/termination": termination,
                },
                "ownerReferences": [owner],
            },
            "spec": {
                "containers": [{"name": "agent", "image": "agent:1"}],
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": POD_GRACE_SECONDS,
            },
        }))
        .unwrap();
        self.pods_api()
            .create(&PostParams::default(), &pod)
            .await
            .unwrap();
        eventually(|| {
            self.kube
                .peek::<Pod>(NS, name)
                .and_then(|p| p.status?.phase)
                .as_deref()
                == Some("Running")
        })
        .await;
    }
}

#[async_trait]
impl World for KubeWorld {
    type W = KubeCodeRuns;

    fn workloads(&self) -> &KubeCodeRuns {
        &self.workloads
    }

    async fn add_run(&self, seed: Seed) -> Run {
        let spec = CodeRunSpec {
            task_id: seed.task.into(),
            role: seed.role.into(),
            repository: "acme/widgets".into(),
            pull_request: 7,
            branch: "feature".into(),
            head_sha: seed.head.into(),
            agent: AgentSpec {
                image: "agent:1".into(),
                ..AgentSpec::default()
            },
        };
        let run = self
            .runs_api()
            .create(&PostParams::default(), &CodeRun::labelled(seed.name, spec))
            .await
            .unwrap();
        self.set_phase(seed.name, seed.phase).await;
        self.create_pod(&run, &format!("{}-pod-0", seed.name), seed.stops)
            .await;
        self.workloads.run(seed.name).await.unwrap().unwrap()
    }

    async fn recreate(&self, seed: Seed) -> Run {
        let background = DeleteParams::background();
        self.runs_api()
            .delete(seed.name, &background)
            .await
            .unwrap();
        eventually(|| {
            self.kube.peek::<CodeRun>(NS, seed.name).is_none() && self.pods(seed.name).is_empty()
        })
        .await;
        self.add_run(seed).await
    }

    async fn set_phase(&self, name: &str, phase: &str) {
        let patch = json!({"status": {"phase": phase}});
        self.runs_api()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
    }

    async fn add_foreign_finalizer(&self, name: &str, finalizer: &str) {
        let patch = json!({"metadata": {"finalizers": [finalizer]}});
        self.runs_api()
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
    }

    async fn remove_foreign_finalizers(&self, name: &str) {
        // What the finalizer's owner does: keep Kubernetes' own, drop the rest.
        let current = self.kube.peek::<CodeRun>(NS, name).unwrap();
        let kept: Vec<String> = current
            .finalizers()
            .iter()
            .filter(|f| *f == "foregroundDeletion" || *f == "orphan")
            .cloned()
            .collect();
        let patch = json!({"metadata": {
            "finalizers": kept,
            "resourceVersion": current.resource_version(),
        }});
        self.runs_api()
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
    }

    async fn hold_pods(&self, name: &str) {
        let patch = json!({"metadata": {"finalizers": ["example.dev/hold"]}});
        for pod in self.pods(name) {
            self.pods_api()
                .patch(&pod, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
    }

    fn pods(&self, name: &str) -> Vec<String> {
        let pod = format!("{name}-pod-0");
        self.kube
            .peek::<Pod>(NS, &pod)
            .map(|p| vec![p.name_any()])
            .unwrap_or_default()
    }

    fn run_state(&self, name: &str) -> Option<RunState> {
        let run = self.kube.peek::<CodeRun>(NS, name)?;
        Some(RunState {
            uid: run.uid().unwrap_or_default(),
            phase: run
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default(),
            deleting: run.meta().deletion_timestamp.is_some(),
            annotations: run.annotations().clone(),
        })
    }
}
