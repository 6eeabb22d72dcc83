//! Crash at every step: a replica's process stops dead right after its k-th
//! write (to the Lease, the task's state, a run, or the labels) — or that
//! write lands and its answer is lost — for every k of a whole operation.
//! Another replica then handles the task. At the end, whatever k was:
//! every stale run is gone, no run of the kept head was touched, the state
//! records the cancellation exactly once with nothing pending and no
//! journal left, and the labels are in the target state. Checked from the
//! backends (MemoryWorkloads' history, the stored state, the labels).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use cancel_coordinator::{CancelMode, Happened, SagaConfig, StateAwareCancellation};
use common::{NEW, OLD, World, at};
use futures::stream::BoxStream;
use label_cas::{ETag, Fetched, LabelBackend, LabelSet, PrRef, RemoveOutcome};
use lease_lock::{Lease, LeaseBackend, LeaseEvent, LeaseLock, LockConfig};
use state_store::{Document, StateBackend, StateStore, StoredDocument};
use tokio::sync::Notify;

/// What happens at the planned write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Crash {
    /// The process stops dead right after the write landed: this call and
    /// every later one of the process never return.
    Dies,
    /// The write lands and its answer is lost (a dropped connection); the
    /// process goes on.
    LosesTheAnswer,
}

/// Counts the process's writes and crashes at the `at`-th.
struct Plan {
    at: usize,
    crash: Crash,
    writes: AtomicUsize,
    dead: std::sync::atomic::AtomicBool,
    crashed: Notify,
}

impl Plan {
    fn new(at: usize, crash: Crash) -> Arc<Self> {
        Arc::new(Self {
            at,
            crash,
            writes: AtomicUsize::new(0),
            dead: std::sync::atomic::AtomicBool::new(false),
            crashed: Notify::new(),
        })
    }

    /// Before any call: a dead process never gets an answer.
    async fn alive(&self) {
        if self.dead.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }

    /// After a write landed: `Err(())` when its answer is to be lost (the
    /// caller turns it into its transport error); never returns when the
    /// process dies here.
    async fn landed(&self) -> Result<(), ()> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if n != self.at {
            return Ok(());
        }
        self.crashed.notify_one();
        match self.crash {
            Crash::Dies => {
                self.dead.store(true, Ordering::SeqCst);
                std::future::pending::<()>().await;
                Ok(())
            }
            Crash::LosesTheAnswer => Err(()),
        }
    }
}

struct Leases(lease_lock::MemoryLeases, Arc<Plan>);
struct States(Arc<state_store::MemoryBackend>, Arc<Plan>);
struct Labels(Arc<label_cas::MemoryLabels>, Arc<Plan>);

fn lease_lost() -> lease_lock::Error {
    lease_lock::Error::Transport {
        message: "connection dropped after the request was sent".into(),
        source: None,
    }
}

#[async_trait]
impl LeaseBackend for Leases {
    async fn get(&self, ns: &str, name: &str) -> Result<Option<Lease>, lease_lock::Error> {
        self.1.alive().await;
        self.0.get(ns, name).await
    }
    async fn create(&self, ns: &str, lease: &Lease) -> Result<Lease, lease_lock::Error> {
        self.1.alive().await;
        let out = self.0.create(ns, lease).await?;
        self.1.landed().await.map_err(|()| lease_lost())?;
        Ok(out)
    }
    async fn replace(&self, ns: &str, lease: &Lease) -> Result<Lease, lease_lock::Error> {
        self.1.alive().await;
        let out = self.0.replace(ns, lease).await?;
        self.1.landed().await.map_err(|()| lease_lost())?;
        Ok(out)
    }
    async fn delete(
        &self,
        ns: &str,
        name: &str,
        uid: &str,
        version: &str,
    ) -> Result<(), lease_lock::Error> {
        self.1.alive().await;
        self.0.delete(ns, name, uid, version).await?;
        self.1.landed().await.map_err(|()| lease_lost())
    }
    async fn list(&self, ns: &str, selector: &str) -> Result<Vec<Lease>, lease_lock::Error> {
        self.1.alive().await;
        self.0.list(ns, selector).await
    }
    fn watch(
        &self,
        ns: &str,
        name: &str,
        since: Option<String>,
    ) -> BoxStream<'static, Result<LeaseEvent, lease_lock::Error>> {
        self.0.watch(ns, name, since)
    }
}

fn state_lost() -> state_store::Error {
    state_store::Error::Transport("connection dropped after the request was sent".into())
}

#[async_trait]
impl StateBackend for States {
    async fn get(&self, name: &str) -> state_store::Result<Option<StoredDocument>> {
        self.1.alive().await;
        self.0.get(name).await
    }
    async fn create(&self, name: &str, document: Document) -> state_store::Result<StoredDocument> {
        self.1.alive().await;
        let out = self.0.create(name, document).await?;
        self.1.landed().await.map_err(|()| state_lost())?;
        Ok(out)
    }
    async fn replace(
        &self,
        name: &str,
        version: &str,
        document: Document,
    ) -> state_store::Result<StoredDocument> {
        self.1.alive().await;
        let out = self.0.replace(name, version, document).await?;
        self.1.landed().await.map_err(|()| state_lost())?;
        Ok(out)
    }
    async fn delete(&self, name: &str, version: &str) -> state_store::Result<()> {
        self.1.alive().await;
        self.0.delete(name, version).await?;
        self.1.landed().await.map_err(|()| state_lost())
    }
    async fn list(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> state_store::Result<Vec<StoredDocument>> {
        self.1.alive().await;
        self.0.list(labels).await
    }
}

fn labels_lost() -> label_cas::Error {
    label_cas::Error::Transport {
        message: "connection dropped after the request was sent".into(),
        sent: true,
        mutation: true,
    }
}

#[async_trait]
impl LabelBackend for Labels {
    async fn get<'a>(&self, pr: &PrRef, etag: Option<&'a ETag>) -> label_cas::Result<Fetched> {
        self.1.alive().await;
        self.0.get(pr, etag).await
    }
    async fn add(&self, pr: &PrRef, names: &[String]) -> label_cas::Result<LabelSet> {
        self.1.alive().await;
        let out = self.0.add(pr, names).await?;
        self.1.landed().await.map_err(|()| labels_lost())?;
        Ok(out)
    }
    async fn remove(&self, pr: &PrRef, name: &str) -> label_cas::Result<RemoveOutcome> {
        self.1.alive().await;
        let out = self.0.remove(pr, name).await?;
        self.1.landed().await.map_err(|()| labels_lost())?;
        Ok(out)
    }
    async fn replace(&self, pr: &PrRef, names: &[String]) -> label_cas::Result<LabelSet> {
        self.1.alive().await;
        let out = self.0.replace(pr, names).await?;
        self.1.landed().await.map_err(|()| labels_lost())?;
        Ok(out)
    }
}

/// The workloads part of the crash plan.
struct RunsHook(Arc<Plan>);

#[async_trait]
impl common::Hook for RunsHook {
    async fn before(&self, _call: &'static str) -> cancel_coordinator::Result<()> {
        self.0.alive().await;
        Ok(())
    }
    async fn after_write(&self, _call: &'static str) -> cancel_coordinator::Result<()> {
        self.0
            .landed()
            .await
            .map_err(|()| cancel_coordinator::Error::Transport {
                message: "connection dropped after the request was sent".into(),
            })
    }
}

/// The replica that crashes: every backend wrapped by `plan`.
fn doomed(w: &World, plan: &Arc<Plan>, config: SagaConfig) -> StateAwareCancellation {
    let lock = LeaseLock::new(
        Leases(w.leases.clone(), plan.clone()),
        LockConfig {
            prefix: "cancel".into(),
            ..LockConfig::new("pod-doomed", "supersede")
        },
    )
    .unwrap();
    StateAwareCancellation::builder(
        lock,
        StateStore::new(States(w.states.clone(), plan.clone())),
        Arc::new(common::Intercepted {
            inner: w.workloads.clone(),
            hook: RunsHook(plan.clone()),
        }),
        w.pulls.clone(),
        Arc::new(Labels(w.labels.clone(), plan.clone())),
    )
    .config(config)
    .build()
    .unwrap()
}

/// A task with three stale runs and three of the new head; the PR at the
/// new head labelled `ready-for-qa`.
async fn scene() -> (World, Vec<String>, Vec<String>) {
    let w = World::new();
    let stale = w.agents_on(OLD);
    let fresh = w.agents_on(NEW);
    w.pull_at(NEW, &["ready-for-qa"]);
    w.pushed(OLD, at(0)).await;
    w.pushed(NEW, at(60)).await;
    (w, stale, fresh)
}

/// How many writes an operation makes when nothing goes wrong.
async fn writes_of_a_whole_operation(mode: CancelMode) -> usize {
    let (w, _, _) = scene().await;
    let plan = Plan::new(usize::MAX, Crash::Dies);
    let config = SagaConfig {
        mode,
        ..SagaConfig::default()
    };
    doomed(&w, &plan, config)
        .run(&w.request(NEW, at(60)))
        .await
        .unwrap();
    plan.writes.load(Ordering::SeqCst)
}

async fn crash_then_recover(k: usize, crash: Crash, mode: CancelMode) {
    let (w, stale, fresh) = scene().await;
    let plan = Plan::new(k, crash);
    let config = SagaConfig {
        mode,
        ..SagaConfig::default()
    };
    let saga = doomed(&w, &plan, config.clone());
    let request = w.request(NEW, at(60));
    let first = {
        let request = request.clone();
        tokio::spawn(async move { saga.run(&request).await })
    };
    match crash {
        Crash::Dies => {
            plan.crashed.notified().await;
            first.abort();
            let _ = first.await;
        }
        // Goes on: it may end with an error (the answer was lost), or
        // settle the doubt itself.
        Crash::LosesTheAnswer => {
            let _ = first.await.unwrap();
        }
    }

    // Another replica handles the task (the dead one's lease expires).
    let survivor = w.saga_with(
        "pod-survivor",
        SagaConfig {
            lock_timeout: Duration::from_secs(300),
            ..config
        },
    );
    survivor
        .run(&request)
        .await
        .unwrap_or_else(|e| panic!("write {k} ({crash:?}, {mode}): the survivor failed: {e}"));
    // A second pass changes nothing (everything is handled).
    let again = survivor.run(&request).await.unwrap();
    assert_eq!(
        again.outcome,
        cancel_coordinator::Outcome::AlreadyHandled,
        "write {k} ({crash:?}, {mode})"
    );

    let ctx = format!("crash after write {k} ({crash:?}, {mode})");
    for name in &stale {
        assert!(
            w.workloads.pods(name).is_empty(),
            "{ctx}: {name}'s pods are gone"
        );
        if mode == CancelMode::Delete {
            assert!(w.workloads.get(name).is_none(), "{ctx}: {name} is gone");
        }
    }
    let history = w.workloads.history();
    for name in &fresh {
        assert!(w.workloads.get(name).is_some(), "{ctx}: {name} kept");
        assert!(
            !history.iter().any(|(_, h)| match h {
                Happened::Marked { run, .. } => run == name,
                Happened::Sigterm { pod, .. } => pod.starts_with(name.as_str()),
                _ => false,
            }),
            "{ctx}: {name} was never touched"
        );
    }
    let state = w.state().await;
    let cancelled: Vec<_> = state
        .cancellation_history
        .iter()
        .filter(|r| r.outcome == state_store::CancellationOutcome::Cancelled)
        .collect();
    assert_eq!(
        cancelled.len(),
        1,
        "{ctx}: recorded exactly once: {:?}",
        state.cancellation_history
    );
    assert!(state.pending_supersessions.is_empty(), "{ctx}");
    assert!(state.active_operation.is_none(), "{ctx}: no journal left");
    let labels = w.labels_now();
    assert!(
        labels.contains("needs-qa") && !labels.contains("ready-for-qa"),
        "{ctx}: labels {labels}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_replica_dying_after_any_write_leaves_work_another_finishes_exactly_once() {
    for mode in [CancelMode::Delete, CancelMode::Stop] {
        let writes = writes_of_a_whole_operation(mode).await;
        assert!(writes >= 10, "{mode}: {writes} writes");
        for k in 1..=writes {
            Box::pin(crash_then_recover(k, Crash::Dies, mode)).await;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_write_whose_answer_is_lost_at_any_step_is_settled_exactly_once() {
    for mode in [CancelMode::Delete, CancelMode::Stop] {
        let writes = writes_of_a_whole_operation(mode).await;
        for k in 1..=writes {
            Box::pin(crash_then_recover(k, Crash::LosesTheAnswer, mode)).await;
        }
    }
}

/// A task whose stale runs, as the dead replica chose them, include a run
/// of the head that became current afterwards (NEWER: an agent started it
/// before GitHub and the state knew of that push).
async fn superseded_scene() -> World {
    let w = World::new();
    w.workloads.add_run(cancel_coordinator::RunSeed::new(
        "a-old",
        common::TASK,
        "quality",
        OLD,
    ));
    w.workloads.add_run(cancel_coordinator::RunSeed::new(
        "b-newer",
        common::TASK,
        "review",
        common::NEWER,
    ));
    w.pull_at(NEW, &["ready-for-qa"]);
    w.pushed(NEW, at(60)).await;
    w
}

/// GitHub and the state move on to NEWER while the journal lies unfinished.
async fn newer_pushed(w: &World) {
    w.pull_at(common::NEWER, &["ready-for-qa"]);
    w.pulls
        .update(&w.pr, |p| p.updated_at = Some(at(120)))
        .unwrap();
    w.pushed(common::NEWER, at(120)).await;
}

fn sigtermed(w: &World, pod_of: &str) -> bool {
    w.sigtermed().iter().any(|p| p.starts_with(pod_of))
}

/// Rolled back, not resumed: the replica died right after journaling targets
/// that include a run of the head now current; nothing had been stopped.
#[tokio::test(start_paused = true)]
async fn a_journal_that_would_cancel_the_current_heads_runs_is_rolled_back() {
    let w = superseded_scene().await;
    let plan = Plan::new(2, Crash::Dies); // the lease, then the journal
    let saga = doomed(&w, &plan, SagaConfig::default());
    let request = w.request(NEW, at(60));
    let first = tokio::spawn(async move { saga.run(&request).await });
    plan.crashed.notified().await;
    first.abort();
    let _ = first.await;
    assert_eq!(
        w.state().await.active_operation.unwrap().targets,
        ["a-old", "b-newer"]
    );
    newer_pushed(&w).await;
    let survivor = w.saga_with(
        "pod-survivor",
        SagaConfig {
            lock_timeout: Duration::from_secs(300),
            ..SagaConfig::default()
        },
    );

    let undone = survivor
        .run(&w.request(common::NEWER, at(120)))
        .await
        .unwrap();
    assert_eq!(undone.outcome, cancel_coordinator::Outcome::RolledBack);
    assert_eq!(survivor.metrics().rollbacks(), 1);
    let fresh = survivor
        .run(&w.request(common::NEWER, at(120)))
        .await
        .unwrap();

    assert_eq!(fresh.outcome, cancel_coordinator::Outcome::Cancelled);
    assert!(
        w.workloads.get("a-old").is_none(),
        "the stale run is cancelled"
    );
    assert!(
        w.workloads.get("b-newer").is_some(),
        "the current head's run is kept"
    );
    assert!(!sigtermed(&w, "b-newer"), "and never got SIGTERM");
    let outcomes: Vec<_> = w
        .state()
        .await
        .cancellation_history
        .iter()
        .map(|r| r.outcome)
        .collect();
    assert_eq!(
        outcomes,
        [
            state_store::CancellationOutcome::RolledBack,
            state_store::CancellationOutcome::Cancelled
        ]
    );
    assert!(w.state().await.pending_supersessions.is_empty());
}

/// Not rolled back once a run was stopped (a killed pod cannot be
/// un-killed): the resume goes forward for the others and spares the run of
/// the head now current, giving it its intent back.
#[tokio::test(start_paused = true)]
async fn a_journal_partly_done_goes_forward_and_spares_the_current_heads_run() {
    let w = superseded_scene().await;
    // The lease, the journal, two intents, then a-old's delete: dies there.
    let plan = Plan::new(5, Crash::Dies);
    let saga = doomed(&w, &plan, SagaConfig::default());
    let request = w.request(NEW, at(60));
    let first = tokio::spawn(async move { saga.run(&request).await });
    plan.crashed.notified().await;
    first.abort();
    let _ = first.await;
    assert!(sigtermed(&w, "a-old"));
    assert!(
        !sigtermed(&w, "b-newer"),
        "the scene: b-newer not stopped yet"
    );
    assert!(
        w.workloads
            .annotations("b-newer")
            .contains_key(cancel_coordinator::workloads::ANNOTATION_SUPERSEDED_BY)
    );
    newer_pushed(&w).await;
    let survivor = w.saga_with(
        "pod-survivor",
        SagaConfig {
            lock_timeout: Duration::from_secs(300),
            ..SagaConfig::default()
        },
    );

    let report = survivor
        .run(&w.request(common::NEWER, at(120)))
        .await
        .unwrap();

    assert!(report.resumed);
    let spared = report.runs.iter().find(|r| r.name == "b-newer").unwrap();
    assert_eq!(spared.outcome, cancel_coordinator::RunOutcome::Spared);
    assert!(w.workloads.get("a-old").is_none());
    assert!(w.workloads.get("b-newer").is_some());
    assert!(!sigtermed(&w, "b-newer"));
    assert!(
        !w.workloads
            .annotations("b-newer")
            .contains_key(cancel_coordinator::workloads::ANNOTATION_SUPERSEDED_BY),
        "its intent is cleared"
    );
}
