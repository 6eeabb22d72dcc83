//! [`RecoveryManager`]: one reconciliation cycle, and the leader's loop.
//!
//! The rule it keeps: **the reconciler never does the coordinator's work
//! behind its back.** What a cancellation owns — a journal, its runs, its
//! lock — is handed to the coordinator (which takes the task's lock and
//! resumes or begins the saga), never changed directly; what is left young
//! (a supersession recorded within `settle_after`, a run marked within its
//! deadline) is left alone this cycle. The reconciler itself only repairs
//! what no operation owns: an abandoned Lease, an unreadable document, a
//! label transition left undone (under the task's lock).
//!
//! A cycle reads each kind with paginated LISTs — the Leases of the task
//! lock, every run, every task state, a page at a time — never one GET per
//! task; GitHub is asked about at most `head_checks_per_cycle` tasks per
//! cycle (conditional reads: an unchanged pull request costs no rate limit).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cancel_coordinator::{
    CancellationCoordinator, CancellationRequest, METADATA_PULL_REQUEST, Reason, Run, Workloads,
};
use futures::StreamExt as _;
use jiff::{SignedDuration, Timestamp};
use kube::runtime::events::Recorder;
use label_cas::{
    AtomicLabelManager, LabelBackend, LabelTransition, PrRef, PullRequestReader, PullRequests,
};
use lease_lock::{AcquireOptions, Lease, LeaseLock};
use serde::{Deserialize, Serialize};
use state_store::{
    OperationKind, RemediationState, SchemaOrigin, Snapshot, StateStore, Supersession,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::deliveries::{self, Asked, RedeliveryConfig, WebhookDeliveries};
use crate::flags::{self, ANNOTATION_NEEDS_INTERVENTION, Flagged, METADATA_RESOLVED};
use crate::metrics::Metrics;
use crate::{Action, Error, Finding, Kind, Result};

/// How the reconciler behaves.
#[derive(Clone, Debug)]
pub struct RecoveryConfig {
    /// Time between cycles (±`jitter`). Default 30 s (DESIGN §4).
    pub interval: Duration,
    /// Spread of the interval, as a fraction (0.1: ±10 %).
    pub jitter: f64,
    /// Objects per LIST page. Default 500.
    pub page_size: u32,
    /// Repairs run at once. Default 16.
    pub concurrency: usize,
    /// A supersession recorded, or a journal written, more recently than
    /// this is the coordinator's, not yet recovery's. Default 60 s.
    pub settle_after: Duration,
    /// A run marked superseded and still running this long after its
    /// intent was recorded is stale: its cancellation died. Default 60 s
    /// (the saga's 20 s grace + 2 s + 8 s force wait, doubled).
    pub run_deadline: Duration,
    /// Pull requests read on GitHub per cycle for head drift. Default 100.
    pub head_checks_per_cycle: usize,
    /// The label transition a cancellation makes (to redo one that
    /// failed); `None` for none. Default: the saga's.
    pub labels: Option<LabelTransition>,
    /// The key of the leadership Lease among the controller's replicas.
    pub leader_key: String,
    /// The longest a cycle of the leader's loop may take: a cycle over
    /// time (an API that accepts connections and never answers) is cut
    /// short, counted `cycles_skipped{reason="over_time"}`, and the next
    /// one starts after the interval. Default 5 min.
    pub cycle_timeout: Duration,
    /// How failed webhook deliveries are redelivered (with
    /// [`RecoveryBuilder::deliveries`]).
    pub redelivery: RedeliveryConfig,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            jitter: 0.1,
            page_size: 500,
            concurrency: 16,
            settle_after: Duration::from_secs(60),
            run_deadline: Duration::from_secs(60),
            head_checks_per_cycle: 100,
            labels: cancel_coordinator::SagaConfig::default().labels,
            leader_key: "recovery-leader".to_owned(),
            cycle_timeout: Duration::from_secs(300),
            redelivery: RedeliveryConfig::default(),
        }
    }
}

impl RecoveryConfig {
    /// Rejects settings that make no sense, naming them.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(m.to_owned()));
        if self.interval < Duration::from_secs(1) {
            return bad("interval must be at least 1 s");
        }
        if !(0.0..=0.5).contains(&self.jitter) {
            return bad("jitter must be in 0.0..=0.5");
        }
        if self.page_size == 0 || self.page_size > 5_000 {
            return bad("page_size must be in 1..=5000");
        }
        if self.concurrency == 0 || self.concurrency > 256 {
            return bad("concurrency must be in 1..=256");
        }
        if self.leader_key.is_empty() {
            return bad("leader_key must not be empty");
        }
        if self.cycle_timeout < Duration::from_secs(1) {
            return bad("cycle_timeout must be at least 1 s");
        }
        let redelivery = &self.redelivery;
        if redelivery.pages_per_cycle == 0 || redelivery.pages_per_cycle > 100 {
            return bad("redelivery.pages_per_cycle must be in 1..=100");
        }
        if redelivery.per_cycle > 1_000 {
            return bad("redelivery.per_cycle must be at most 1000");
        }
        if redelivery.max_attempts == 0 {
            return bad("redelivery.max_attempts must be at least 1");
        }
        if redelivery.window > Duration::from_secs(3 * 24 * 3600) {
            return bad(
                "redelivery.window must be at most 3 days (GitHub keeps deliveries that long)",
            );
        }
        Ok(())
    }
}

/// What one cycle found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CycleReport {
    /// Task states examined.
    pub states: usize,
    /// Runs examined.
    pub runs: usize,
    /// Leases examined.
    pub leases: usize,
    /// GitHub pull requests read.
    pub head_checks: usize,
    /// Pages of the App's webhook deliveries read.
    pub delivery_pages: usize,
    /// Everything found, with what was done.
    pub findings: Vec<Finding>,
    /// Tasks flagged needs-intervention after the cycle.
    pub flagged_tasks: usize,
    /// How long it took.
    #[serde(with = "millis")]
    pub took: Duration,
}

impl CycleReport {
    /// The findings of `kind`.
    pub fn of(&self, kind: Kind) -> Vec<&Finding> {
        self.findings.iter().filter(|f| f.kind == kind).collect()
    }
}

/// The recovery reconciler. Cheap to clone.
#[derive(Clone)]
pub struct RecoveryManager {
    inner: Arc<Inner>,
}

struct Inner {
    store: StateStore,
    locks: LeaseLock,
    workloads: Arc<dyn Workloads>,
    coordinator: CancellationCoordinator,
    pulls: Option<PullRequestReader<Arc<dyn PullRequests>>>,
    labels: Option<AtomicLabelManager<Arc<dyn LabelBackend>>>,
    events: Option<(Recorder, String)>,
    deliveries: Option<Arc<dyn WebhookDeliveries>>,
    config: RecoveryConfig,
    metrics: Metrics,
    /// Where the next cycle's head checks start (round robin over tasks).
    head_cursor: Mutex<Option<String>>,
    /// Redeliveries asked for recently.
    asked: Mutex<Asked>,
}

impl std::fmt::Debug for RecoveryManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoveryManager")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Builds a [`RecoveryManager`].
pub struct RecoveryBuilder {
    store: StateStore,
    locks: LeaseLock,
    workloads: Arc<dyn Workloads>,
    coordinator: CancellationCoordinator,
    pulls: Option<Arc<dyn PullRequests>>,
    labels: Option<Arc<dyn LabelBackend>>,
    events: Option<(Recorder, String)>,
    deliveries: Option<Arc<dyn WebhookDeliveries>>,
    config: RecoveryConfig,
    metrics: Metrics,
}

impl RecoveryBuilder {
    /// With `config` instead of the defaults.
    #[must_use]
    pub fn config(mut self, config: RecoveryConfig) -> Self {
        self.config = config;
        self
    }

    /// GitHub: pull requests (head drift) and labels (label repairs).
    #[must_use]
    pub fn github(mut self, pulls: Arc<dyn PullRequests>, labels: Arc<dyn LabelBackend>) -> Self {
        self.pulls = Some(pulls);
        self.labels = Some(labels);
        self
    }

    /// Publish a Kubernetes Event on each flagged task's state ConfigMap in
    /// `namespace`.
    #[must_use]
    pub fn events(mut self, recorder: Recorder, namespace: impl Into<String>) -> Self {
        self.events = Some((recorder, namespace.into()));
        self
    }

    /// The GitHub App's webhook deliveries: each cycle redelivers those no
    /// attempt was accepted for (see [`RedeliveryConfig`]).
    #[must_use]
    pub fn deliveries(mut self, deliveries: Arc<dyn WebhookDeliveries>) -> Self {
        self.deliveries = Some(deliveries);
        self
    }

    /// Reporting into `metrics`.
    #[must_use]
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The reconciler (the configuration validated).
    pub fn build(self) -> Result<RecoveryManager> {
        self.config.validate()?;
        Ok(RecoveryManager {
            inner: Arc::new(Inner {
                store: self.store,
                locks: self.locks,
                workloads: self.workloads,
                coordinator: self.coordinator,
                pulls: self.pulls.map(PullRequestReader::new),
                labels: self.labels.map(AtomicLabelManager::new),
                events: self.events,
                deliveries: self.deliveries,
                config: self.config,
                metrics: self.metrics,
                head_cursor: Mutex::new(None),
                asked: Mutex::new(Asked::default()),
            }),
        })
    }
}

/// What the Lease and run scans tell about the tasks, read before the
/// states. Kept for the whole cycle, so it keeps objects only for what may
/// need a repair; of the rest, a task id.
#[derive(Default)]
struct World {
    /// Tasks whose cancel Lease a live holder renews.
    held: BTreeSet<String>,
    /// Task id → its cancel Lease (as listed) that no live holder renews:
    /// the candidates for deletion.
    unheld: BTreeMap<String, Lease>,
    /// Tasks with a run that is not terminal.
    active_runs: BTreeSet<String>,
}

/// What the Lease scan found, as [`World`] keeps it.
#[derive(Default)]
struct Leases {
    held: BTreeSet<String>,
    unheld: BTreeMap<String, Lease>,
    listed: usize,
}

/// What the run scan found.
#[derive(Default)]
struct Runs {
    active: BTreeSet<String>,
    overdue: Overdue,
    listed: usize,
}

/// Task id → its runs marked superseded that are not terminal, past their
/// deadline: each is judged with its task's state, as that state's page is
/// examined; what is left after the scan (runs of tasks with no state) at
/// its end.
type Overdue = BTreeMap<String, Vec<Run>>;

/// The round robin of head checks over one cycle's states.
struct HeadChecks {
    /// Checks left this cycle.
    budget: usize,
    /// Only tasks after this one (where the last cycle stopped).
    after: Option<String>,
    /// The last task checked.
    last: Option<String>,
}

impl RecoveryManager {
    /// A reconciler over the task states, the task lock (the saga's, its
    /// prefix `cancel`), the runs and the coordinator it hands work to.
    pub fn builder(
        store: StateStore,
        locks: LeaseLock,
        workloads: Arc<dyn Workloads>,
        coordinator: CancellationCoordinator,
    ) -> RecoveryBuilder {
        RecoveryBuilder {
            store,
            locks,
            workloads,
            coordinator,
            pulls: None,
            labels: None,
            events: None,
            deliveries: None,
            config: RecoveryConfig::default(),
            metrics: Metrics::default(),
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The configuration.
    pub fn config(&self) -> &RecoveryConfig {
        &self.inner.config
    }

    /// One cycle: scan the Leases, the runs and the states, act on what
    /// disagrees (see the decision table in the crate documentation).
    pub async fn run_cycle(&self) -> Result<CycleReport> {
        let started = Instant::now();
        let mut report = CycleReport::default();
        let (world, mut overdue) = self.scan_leases_and_runs(&mut report).await?;
        let mut busy = BTreeSet::new();
        self.scan_states(&world, &mut overdue, &mut busy, &mut report)
            .await?;
        self.overdue_runs(overdue, &busy, &mut report).await;
        self.orphaned_leases(&world, &busy, &mut report).await;
        self.redeliver_failed(&mut report).await;
        report.took = started.elapsed();
        let metrics = &self.inner.metrics;
        metrics.cycles.inc();
        metrics.cycle_duration.observe(report.took.as_secs_f64());
        metrics
            .flagged_tasks
            .set(i64::try_from(report.flagged_tasks).unwrap_or(i64::MAX));
        for finding in &report.findings {
            metrics.count(&metrics.found, finding.kind);
            match &finding.action {
                Action::Repaired => metrics.count(&metrics.repaired, finding.kind),
                Action::Handed => metrics.count(&metrics.handed, finding.kind),
                Action::Flagged(_) => metrics.count(&metrics.flagged, finding.kind),
                Action::Deferred(_) | Action::Failed(_) => {}
            }
        }
        info!(
            states = report.states,
            runs = report.runs,
            leases = report.leases,
            findings = report.findings.len(),
            flagged = report.flagged_tasks,
            took_ms = report.took.as_millis(),
            "recovery cycle done"
        );
        Ok(report)
    }

    /// Runs a cycle every `interval` while it holds the leadership Lease
    /// (`leader`, a lock of its own prefix); losing it stops the cycle in
    /// progress at once, and the loop competes for it again. Ends when
    /// `shutdown` fires, releasing the leadership.
    pub fn spawn(&self, leader: LeaseLock, shutdown: CancellationToken) -> JoinHandle<()> {
        let manager = self.clone();
        tokio::spawn(async move { manager.lead(leader, shutdown).await })
    }

    async fn lead(&self, leader: LeaseLock, shutdown: CancellationToken) {
        let config = &self.inner.config;
        let metrics = &self.inner.metrics;
        while !shutdown.is_cancelled() {
            let options = AcquireOptions::new()
                .timeout(config.interval)
                .cancel_on(shutdown.clone());
            let guard = match leader.acquire(&config.leader_key, options).await {
                Ok(guard) => guard,
                Err(lease_lock::Error::Cancelled { .. }) => return,
                Err(e) => {
                    if !matches!(e, lease_lock::Error::Timeout { .. }) {
                        warn!(error = %e, "could not compete for recovery leadership");
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(config.interval) => {}
                        }
                    }
                    metrics.skip("not_leader");
                    continue;
                }
            };
            info!("recovery leadership taken");
            loop {
                let outcome = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => None,
                    lost = guard.lost() => Some(Err(lost)),
                    result = tokio::time::timeout(config.cycle_timeout, self.run_cycle()) => {
                        Some(Ok(result.unwrap_or(Err(Error::OverTime(config.cycle_timeout)))))
                    }
                };
                match outcome {
                    None => {
                        let _ = guard.release().await;
                        return;
                    }
                    Some(Err(lost)) => {
                        warn!(error = %lost, "recovery leadership lost; the cycle stopped");
                        metrics.skip("leadership_lost");
                        break;
                    }
                    Some(Ok(Err(e @ Error::OverTime(_)))) => {
                        warn!(error = %e, "recovery cycle cut short; the next one starts over");
                        metrics.skip("over_time");
                    }
                    Some(Ok(Err(e))) => {
                        warn!(error = %e, "recovery cycle failed; the next one retries");
                        metrics.skip("failed");
                    }
                    Some(Ok(Ok(_))) => {}
                }
                let jitter = rand::random_range(1.0 - config.jitter..=1.0 + config.jitter);
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => {
                        let _ = guard.release().await;
                        return;
                    }
                    lost = guard.lost() => {
                        warn!(error = %lost, "recovery leadership lost");
                        metrics.skip("leadership_lost");
                        break;
                    }
                    () = tokio::time::sleep(config.interval.mul_f64(jitter)) => {}
                }
            }
        }
    }

    /// The flagged tasks (a metadata-only scan of the states).
    pub async fn flagged(&self) -> Result<Vec<Flagged>> {
        let mut flagged = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .inner
                .store
                .list_page(self.inner.config.page_size, token)
                .await?;
            flagged.extend(page.states.iter().filter_map(|s| {
                Some(Flagged {
                    task_id: s.state.task_id.clone(),
                    reason: s.annotation(ANNOTATION_NEEDS_INTERVENTION)?.to_owned(),
                })
            }));
            match page.continue_token {
                Some(next) => token = Some(next),
                None => return Ok(flagged),
            }
        }
    }

    /// Clears `task_id`'s flag and hands the task to the coordinator again
    /// (a fresh cancellation, or the journal resumed).
    pub async fn retry(&self, task_id: &str) -> Result<()> {
        let snapshot = self
            .inner
            .store
            .get(task_id)
            .await?
            .ok_or_else(|| Error::UnknownTask(task_id.to_owned()))?;
        self.inner
            .store
            .set_annotation(task_id, ANNOTATION_NEEDS_INTERVENTION, None)
            .await?;
        if let Some(request) = request_for(&snapshot.state, Reason::Recovery) {
            let _ = self.inner.coordinator.submit(request);
        }
        Ok(())
    }

    /// Clears `task_id`'s flag as resolved by `who` because `why`, recorded
    /// in the task's state (`supersede.dev/intervention-resolved`).
    pub async fn resolve(&self, task_id: &str, who: &str, why: &str) -> Result<()> {
        let now = self.inner.store.clock().now();
        let note: String = format!("{now} {who}: {why}").chars().take(512).collect();
        self.inner
            .store
            .update(task_id, |s: &mut RemediationState| {
                s.metadata
                    .insert(METADATA_RESOLVED.to_owned(), note.clone());
                Ok::<_, state_store::Error>(())
            })
            .await?;
        self.inner
            .store
            .set_annotation(task_id, ANNOTATION_NEEDS_INTERVENTION, None)
            .await?;
        info!(task_id, who, why, "intervention resolved");
        Ok(())
    }

    /// The Leases of the task lock and every run, a page at a time; the
    /// two kinds are listed at once (neither depends on the other).
    async fn scan_leases_and_runs(&self, report: &mut CycleReport) -> Result<(World, Overdue)> {
        let (leases, runs) = tokio::try_join!(self.scan_leases(), self.scan_runs())?;
        report.leases += leases.listed;
        report.runs += runs.listed;
        let world = World {
            held: leases.held,
            unheld: leases.unheld,
            active_runs: runs.active,
        };
        Ok((world, runs.overdue))
    }

    /// Every Lease of the task lock: a live one as its task's id, the
    /// others as listed (less what a decision and a conditional delete do
    /// not read).
    async fn scan_leases(&self) -> Result<Leases> {
        let inner = &self.inner;
        let mut leases = Leases::default();
        let prefix = format!("{}-task-", inner.locks.config().prefix);
        let mut token = None;
        loop {
            let page = inner
                .locks
                .list_leases(inner.config.page_size, token)
                .await?;
            for mut lease in page.leases {
                leases.listed += 1;
                let Some(task) = lease
                    .metadata
                    .name
                    .as_deref()
                    .and_then(|n| n.strip_prefix(&prefix))
                    .map(str::to_owned)
                else {
                    continue;
                };
                if lease_held(&lease) {
                    leases.held.insert(task);
                    continue;
                }
                lease.metadata.managed_fields = None;
                lease.metadata.annotations = None;
                leases.unheld.insert(task, lease);
            }
            match page.continue_token {
                Some(next) => token = Some(next),
                None => return Ok(leases),
            }
        }
    }

    /// Every run: the tasks with one not terminal, and the runs overdue.
    async fn scan_runs(&self) -> Result<Runs> {
        let inner = &self.inner;
        let mut runs = Runs::default();
        // The clock the saga stamps intents with.
        let now = inner.store.clock().now();
        let deadline =
            SignedDuration::try_from(inner.config.run_deadline).unwrap_or(SignedDuration::MAX);
        let mut token = None;
        loop {
            let page = inner
                .workloads
                .list_runs(inner.config.page_size, token)
                .await?;
            for run in page.runs {
                runs.listed += 1;
                if run.terminal {
                    continue;
                }
                runs.active.insert(run.task_id.clone());
                let overdue = run.superseded_by.is_some()
                    && run
                        .superseded_at
                        .is_some_and(|at| now.duration_since(at) > deadline);
                if overdue {
                    runs.overdue
                        .entry(run.task_id.clone())
                        .or_default()
                        .push(run);
                }
            }
            match page.continue_token {
                Some(next) => token = Some(next),
                None => return Ok(runs),
            }
        }
    }

    /// Every state, a page at a time; the tasks with an operation open (or
    /// handed to the coordinator this cycle) go into `busy`. The next page
    /// is read while this one is examined, so LIST latency stays off the
    /// cycle's critical path with at most two pages in memory.
    async fn scan_states(
        &self,
        world: &World,
        overdue: &mut Overdue,
        busy: &mut BTreeSet<String>,
        report: &mut CycleReport,
    ) -> Result<()> {
        let inner = &self.inner;
        let list = |token| inner.store.list_page(inner.config.page_size, token);
        let mut heads = HeadChecks {
            budget: inner.config.head_checks_per_cycle,
            after: inner
                .head_cursor
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
            last: None,
        };
        let mut page = list(None).await?;
        loop {
            let next = page.continue_token.take();
            let fetch = async {
                match next {
                    Some(token) => list(Some(token)).await.map(Some),
                    None => Ok(None),
                }
            };
            let examine = self.examine_page(page.states, world, overdue, &mut heads, busy, report);
            let (fetched, ()) = tokio::join!(fetch, examine);
            match fetched? {
                Some(next) => page = next,
                None => break,
            }
        }
        // Next cycle, the head checks go on after the last task checked
        // (round robin), or from the start once every task was checked.
        *inner
            .head_cursor
            .lock()
            .unwrap_or_else(PoisonError::into_inner) =
            if heads.budget == 0 { heads.last } else { None };
        Ok(())
    }

    /// One page of states through the decision table, `concurrency` at a
    /// time.
    async fn examine_page(
        &self,
        states: Vec<Snapshot>,
        world: &World,
        overdue: &mut Overdue,
        heads: &mut HeadChecks,
        busy: &mut BTreeSet<String>,
        report: &mut CycleReport,
    ) {
        let inner = &self.inner;
        report.states += states.len();
        let mut actions = Vec::new();
        for snapshot in states {
            let task = snapshot.state.task_id.clone();
            let runs = overdue.remove(&task).unwrap_or_default();
            if snapshot.annotation(ANNOTATION_NEEDS_INTERVENTION).is_some() {
                report.flagged_tasks += 1;
                busy.insert(task);
                continue;
            }
            let check_head = heads.budget > 0
                && inner.pulls.is_some()
                && heads.after.as_deref().is_none_or(|c| task.as_str() > c);
            if check_head {
                heads.budget -= 1;
                report.head_checks += 1;
                heads.last = Some(task.clone());
            }
            if snapshot
                .state
                .active_operation
                .as_ref()
                .is_some_and(|j| !j.is_finished())
            {
                busy.insert(task);
            }
            actions.push(self.examine(snapshot, world, check_head, runs));
        }
        let mut done = futures::stream::iter(actions).buffer_unordered(inner.config.concurrency);
        while let Some(findings) = done.next().await {
            // Once per task, however many of its runs were flagged.
            if findings
                .iter()
                .any(|f| matches!(f.action, Action::Flagged(_)))
            {
                report.flagged_tasks += 1;
            }
            for finding in findings {
                if matches!(finding.action, Action::Handed | Action::Flagged(_)) {
                    busy.insert(finding.task_id.clone());
                }
                report.findings.push(finding);
            }
        }
    }

    /// One state through the decision table, then its task's overdue runs
    /// unless the task turned out to be owned: an operation open, or the
    /// task handed on or flagged by its state's row (the coordinator then
    /// takes every stale run of the task anyway).
    async fn examine(
        &self,
        snapshot: Snapshot,
        world: &World,
        check_head: bool,
        overdue: Vec<Run>,
    ) -> Vec<Finding> {
        let mut findings = self.decide(&snapshot, world, check_head).await;
        let open = snapshot
            .state
            .active_operation
            .as_ref()
            .is_some_and(|j| !j.is_finished());
        let owned = open
            || findings
                .iter()
                .any(|f| matches!(f.action, Action::Handed | Action::Flagged(_)));
        if !owned {
            for run in &overdue {
                findings.extend(self.overdue_run(run, Some(&snapshot.state)).await);
            }
        }
        findings
    }

    /// The decision table for one state.
    async fn decide(&self, snapshot: &Snapshot, world: &World, check_head: bool) -> Vec<Finding> {
        let inner = &self.inner;
        let task = snapshot.state.task_id.clone();
        let finding = |kind, action| Finding {
            kind,
            task_id: task.clone(),
            object: None,
            action,
        };
        let mut findings = Vec::new();

        // Unreadable: the next write quarantines the raw payload and stores
        // the rebuilt state; flagged with what could not be read.
        if let SchemaOrigin::Rebuilt { reason } = &snapshot.origin {
            let repaired = inner
                .store
                .update(&task, |_| Ok::<_, state_store::Error>(()))
                .await;
            let action = match repaired {
                Ok(()) => {
                    self.flag(
                        &task,
                        Kind::UnreadableState,
                        &format!("rebuilt from what survived; lost: {reason}"),
                    )
                    .await
                }
                Err(e) => Action::Failed(e.to_string()),
            };
            findings.push(finding(Kind::UnreadableState, action));
            return findings;
        }
        if !matches!(
            snapshot.origin,
            SchemaOrigin::Current | SchemaOrigin::Migrated { .. }
        ) {
            // A newer build's document: not ours to judge.
            return findings;
        }
        let state = &snapshot.state;
        // What has a certain repair the store made as it read (see
        // `state_store::repair`); what is left has none.
        if let Err(reason) = state.validate(&task, inner.store.config().max_iterations) {
            let action = self.flag(&task, Kind::InvalidState, &reason).await;
            findings.push(finding(Kind::InvalidState, action));
            return findings;
        }
        let settled = |since: Timestamp| {
            let age = inner.store.clock().now().duration_since(since);
            age > SignedDuration::try_from(inner.config.settle_after).unwrap_or(SignedDuration::MAX)
        };

        // An unfinished journal whose lock nobody holds: its holder died.
        if let Some(journal) = state.active_operation.as_ref().filter(|j| !j.is_finished()) {
            let held = world.held.contains(&task);
            if journal.kind == OperationKind::Cancellation
                && !held
                && settled(journal.last_progress())
            {
                findings.push(finding(
                    Kind::AbandonedJournal,
                    self.hand(state, Reason::Recovery),
                ));
            }
            return findings;
        }

        // A supersession nobody handled.
        if !state.pending_supersessions.is_empty() && settled(state.last_update) {
            findings.push(finding(
                Kind::PendingSupersession,
                self.hand(state, Reason::Push),
            ));
            return findings;
        }

        // A cancellation whose label transition failed.
        if let Some(record) = state.cancellation_history.last()
            && record
                .detail
                .as_deref()
                .is_some_and(|d| d.contains("labels: failed"))
        {
            let action = self.repair_labels(state, &record.operation_id).await;
            findings.push(finding(Kind::LabelsNotMoved, action));
        }

        // Head drift: what GitHub shows against what the state recorded.
        if check_head && let Some(found) = self.head_drift(state, world).await {
            findings.push(found);
        }
        findings
    }

    /// Hands `state`'s task to the coordinator.
    fn hand(&self, state: &RemediationState, reason: Reason) -> Action {
        let Some(request) = request_for(state, reason) else {
            return Action::Deferred("the task's pull request is not recorded in its state".into());
        };
        match self.inner.coordinator.submit(request) {
            Ok(_) => Action::Handed,
            Err(e) => Action::Failed(e.to_string()),
        }
    }

    /// Redoes the label transition of operation `operation_id`, under the
    /// task's lock, and notes it in the history entry.
    async fn repair_labels(&self, state: &RemediationState, operation_id: &str) -> Action {
        let inner = &self.inner;
        let (Some(labels), Some(transition)) = (&inner.labels, &inner.config.labels) else {
            return Action::Deferred("no label backend configured".into());
        };
        let Some(pr) = pr_of(state) else {
            return Action::Deferred("the task's pull request is not recorded in its state".into());
        };
        let task = state.task_id.as_str();
        let guard = match inner.locks.try_acquire(&format!("task-{task}")).await {
            Ok(Some(guard)) => guard,
            Ok(None) => return Action::Deferred("the task's lock is held".into()),
            Err(e) => return Action::Failed(e.to_string()),
        };
        let moved = labels.transition(&pr, transition).await;
        let action = match moved {
            Ok(_) => {
                let noted = inner
                    .store
                    .update_fenced(task, guard.fencing_token(), |s: &mut RemediationState| {
                        if let Some(record) = s
                            .cancellation_history
                            .iter_mut()
                            .rev()
                            .find(|r| r.operation_id == operation_id)
                            && let Some(detail) = record.detail.as_mut()
                        {
                            *detail = detail.replace(
                                "labels: failed",
                                "labels: moved by recovery, after failing",
                            );
                        }
                        Ok::<_, state_store::Error>(())
                    })
                    .await;
                match noted {
                    Ok(()) => Action::Repaired,
                    Err(e) => Action::Failed(e.to_string()),
                }
            }
            Err(e) if !e.is_transient() => {
                self.flag(task, Kind::LabelsNotMoved, &e.to_string()).await
            }
            Err(e) => Action::Failed(e.to_string()),
        };
        let _ = guard.release().await;
        action
    }

    /// Reads the task's pull request; a newer head than recorded is
    /// recorded and handed on, a closed one with runs left is handed on.
    async fn head_drift(&self, state: &RemediationState, world: &World) -> Option<Finding> {
        let inner = &self.inner;
        let pulls = inner.pulls.as_ref()?;
        if state.status.is_terminal() {
            return None;
        }
        let pr = pr_of(state)?;
        let task = state.task_id.clone();
        let pull = match pulls.current(&pr).await {
            Ok(pull) => pull,
            Err(e) => {
                debug!(task_id = %task, error = %e, "could not read the pull request for head drift");
                return None;
            }
        };
        let finding = |action| Finding {
            kind: Kind::HeadDrift,
            task_id: task.clone(),
            object: Some(pr.to_string()),
            action,
        };
        if !pull.is_open() {
            if !world.active_runs.contains(&task) {
                return None;
            }
            return Some(finding(self.hand(state, Reason::Closed)));
        }
        let recorded = state.latest_head.as_ref();
        if recorded.is_some_and(|h| h.sha.eq_ignore_ascii_case(&pull.head_sha)) {
            return None;
        }
        // Only a head GitHub changed to after the push we know of: a lagging
        // read of GitHub must not record an older head.
        let updated = pull.updated_at?;
        if recorded.is_some_and(|h| updated <= h.pushed_at) {
            return None;
        }
        let push = Supersession {
            head_sha: pull.head_sha.clone(),
            pushed_at: updated,
            delivery_id: "recovery-head-drift".to_owned(),
            correlation_id: None,
        };
        if let Err(e) = inner.store.record_supersession(&task, &push).await {
            return Some(finding(Action::Failed(e.to_string())));
        }
        warn!(task_id = %task, head = %pull.head_sha, "head drift: a push no webhook told of; recorded");
        let mut drifted = state.clone();
        drifted.observe_head(&push);
        Some(finding(self.hand(&drifted, Reason::Push)))
    }

    /// The overdue runs no state page took (their task has no state, or
    /// its state appeared after the LIST), of tasks no operation is open
    /// for; `concurrency` of them at a time.
    async fn overdue_runs(&self, left: Overdue, busy: &BTreeSet<String>, report: &mut CycleReport) {
        let checks: Vec<_> = left
            .into_iter()
            .filter(|(task, _)| !busy.contains(task))
            .flat_map(|(_, runs)| runs)
            .map(|run| async move { self.overdue_run(&run, None).await })
            .collect();
        let mut done =
            futures::stream::iter(checks).buffer_unordered(self.inner.config.concurrency);
        while let Some(found) = done.next().await {
            report.findings.extend(found);
        }
    }

    /// One overdue run: handed on while its deletion has not begun or its
    /// pods remain, flagged when a foreign finalizer holds it after they
    /// went. `state` is its task's, as this cycle listed it (read when not
    /// given).
    async fn overdue_run(&self, run: &Run, state: Option<&RemediationState>) -> Option<Finding> {
        let inner = &self.inner;
        let finding = |kind, action| Finding {
            kind,
            task_id: run.task_id.clone(),
            object: Some(run.name.clone()),
            action,
        };
        let hand = || async {
            let action = match state {
                Some(state) => self.hand(state, Reason::Recovery),
                None => match inner.store.get(&run.task_id).await {
                    Ok(Some(snapshot)) => self.hand(&snapshot.state, Reason::Recovery),
                    Ok(None) => Action::Deferred("the task has no state".into()),
                    Err(e) => Action::Failed(e.to_string()),
                },
            };
            Some(finding(Kind::StaleRunAlive, action))
        };
        // A run whose deletion never began is the coordinator's whatever
        // its pods do (its cancellation died before the delete), and no
        // finalizer can hold it yet: no need to ask after its pods. That
        // LIST is the dearest call of the row (the API server filters
        // every pod of the namespace by label for it), so it is left to
        // the runs being deleted.
        if !run.deleting {
            return hand().await;
        }
        let left = match inner.workloads.remains(run).await {
            Ok(left) => left,
            Err(e) => return Some(finding(Kind::StaleRunAlive, Action::Failed(e.to_string()))),
        };
        if !left.pods_gone() {
            hand().await
        } else if !left.foreign_finalizers.is_empty() {
            let why = left.describe();
            let _ = inner.workloads.flag_intervention(run, &why).await;
            let action = self
                .flag(
                    &run.task_id,
                    Kind::RunHeldByFinalizer,
                    &format!("run {}: {why}", run.name),
                )
                .await;
            Some(finding(Kind::RunHeldByFinalizer, action))
        } else {
            None
        }
    }

    /// Leases whose holder stopped renewing them, of tasks no operation is
    /// open for; `concurrency` deletes at a time.
    async fn orphaned_leases(
        &self,
        world: &World,
        busy: &BTreeSet<String>,
        report: &mut CycleReport,
    ) {
        let deletes: Vec<_> = world
            .unheld
            .iter()
            .filter(|(task, _)| !busy.contains(*task))
            .map(|(task, lease)| self.orphaned_lease(task, lease))
            .collect();
        let mut done =
            futures::stream::iter(deletes).buffer_unordered(self.inner.config.concurrency);
        while let Some(found) = done.next().await {
            report.findings.extend(found);
        }
    }

    /// One abandoned Lease, deleted if it is still as listed.
    async fn orphaned_lease(&self, task: &str, lease: &Lease) -> Option<Finding> {
        let action = match self.inner.locks.delete_if_abandoned(lease).await {
            Ok(true) => Action::Repaired,
            Ok(false) => return None,
            Err(e) => Action::Failed(e.to_string()),
        };
        Some(Finding {
            kind: Kind::OrphanedLease,
            task_id: task.to_owned(),
            object: lease.metadata.name.clone(),
            action,
        })
    }

    /// The App's webhook deliveries no attempt was accepted for, asked for
    /// again (bounded per cycle and per delivery).
    async fn redeliver_failed(&self, report: &mut CycleReport) {
        let inner = &self.inner;
        let Some(deliveries) = inner.deliveries.as_deref() else {
            return;
        };
        let config = &inner.config.redelivery;
        // GitHub's clock stamps the attempts: compare with the wall clock.
        let (failed, pages) =
            match deliveries::failed_deliveries(deliveries, config, Timestamp::now()).await {
                Ok(found) => found,
                Err(e) => {
                    warn!(error = %e, "could not list the App's webhook deliveries");
                    report.findings.push(Finding {
                        kind: Kind::FailedDelivery,
                        task_id: String::new(),
                        object: None,
                        action: Action::Failed(e.to_string()),
                    });
                    return;
                }
            };
        report.delivery_pages += pages;
        let mut budget = config.per_cycle;
        for failed in failed {
            let attempt = &failed.newest;
            let finding = |action| Finding {
                kind: Kind::FailedDelivery,
                task_id: String::new(),
                object: Some(attempt.guid.clone()),
                action,
            };
            if inner
                .asked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .recently(&attempt.guid, config.backoff)
            {
                continue;
            }
            if attempt.retryable() && failed.attempts < config.max_attempts && budget == 0 {
                // Next cycle's, oldest first.
                report.findings.push(finding(Action::Deferred(
                    "the cycle's redelivery budget is spent".into(),
                )));
                continue;
            }
            let action = if !attempt.retryable() {
                Action::Deferred(format!(
                    "answered {}: another attempt would be refused too",
                    attempt.status_code
                ))
            } else if failed.attempts >= config.max_attempts {
                Action::Deferred(format!("{} attempts failed; left alone", failed.attempts))
            } else {
                budget -= 1;
                match deliveries.redeliver(attempt.id).await {
                    Ok(()) => {
                        info!(
                            guid = %attempt.guid,
                            event = attempt.event.as_deref().unwrap_or("unknown"),
                            status_code = attempt.status_code,
                            attempts = failed.attempts,
                            "webhook delivery redelivered"
                        );
                        Action::Repaired
                    }
                    Err(e) => Action::Failed(e.to_string()),
                }
            };
            // Asked for: not again before GitHub lists the attempt. Refused
            // or exhausted: reported once per backoff, not every cycle.
            if !matches!(action, Action::Failed(_)) {
                inner
                    .asked
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .note(&attempt.guid);
            }
            report.findings.push(finding(action));
        }
        inner
            .asked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .prune(config.window);
    }

    /// Flags `task` for a human: the annotation, an Event, the log.
    async fn flag(&self, task: &str, kind: Kind, reason: &str) -> Action {
        let text = flags::flag_text(kind, reason);
        match self
            .inner
            .store
            .set_annotation(task, ANNOTATION_NEEDS_INTERVENTION, Some(&text))
            .await
        {
            Ok(_) => {
                warn!(task_id = task, reason = %text, "flagged for manual intervention");
                let name = state_store::state_name(task).unwrap_or_default();
                flags::publish(self.inner.events.as_ref(), &name, kind, reason).await;
                Action::Flagged(text)
            }
            Err(e) => Action::Failed(e.to_string()),
        }
    }
}

/// Whether a Lease has a holder that renewed it within two lease
/// durations (the margin the lock's own garbage collection uses).
fn lease_held(lease: &Lease) -> bool {
    let Some(spec) = lease.spec.as_ref() else {
        return false;
    };
    if spec.holder_identity.as_deref().is_none_or(str::is_empty) {
        return false;
    }
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .filter(|s| *s > 0)
        .unwrap_or(30);
    let margin =
        SignedDuration::from_secs(i64::try_from(duration.saturating_mul(2)).unwrap_or(i64::MAX));
    spec.renew_time
        .as_ref()
        .is_some_and(|t| Timestamp::now().duration_since(t.0) <= margin)
}

/// The task's pull request, as its state records it.
fn pr_of(state: &RemediationState) -> Option<PrRef> {
    let text = state.metadata.get(METADATA_PULL_REQUEST).or_else(|| {
        state
            .active_operation
            .as_ref()
            .and_then(|j| j.context.get("pr"))
    })?;
    text.parse().ok()
}

/// A request for `state`'s task at its newest known head.
fn request_for(state: &RemediationState, reason: Reason) -> Option<CancellationRequest> {
    let pr = pr_of(state)?;
    let (head, pushed_at) = match (
        state.pending_supersessions.last(),
        state.latest_head.as_ref(),
    ) {
        (_, Some(head)) => (head.sha.clone(), head.pushed_at),
        (Some(p), None) => (p.head_sha.clone(), p.pushed_at),
        (None, None) => {
            let journal = state.active_operation.as_ref()?;
            let head = journal.context.get("request_head")?.clone();
            (head, journal.started_at)
        }
    };
    let mut request = CancellationRequest::push(&state.task_id, pr, head, pushed_at);
    request.reason = reason;
    Some(request)
}

/// Durations as whole milliseconds in JSON.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}
