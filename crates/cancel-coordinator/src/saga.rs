//! [`StateAwareCancellation`]: the cancellation of one task's superseded
//! runs, as a journaled saga any replica can resume.
//!
//! The rule it keeps: **intent first, then effect, then record** — and a run
//! is recorded cancelled only once no pod of it exists. Every step is
//! idempotent and journaled in the task's state (state-store's operation
//! journal, each write fenced with the lock's token), so a replica that
//! finds an unfinished journal resumes it from the stored state alone,
//! whatever step the previous holder crashed in.
//!
//! # The steps
//!
//! | # | step | writes | if it fails for good |
//! |---|---|---|---|
//! | 1 | **lock** `cancel-task-<id>` (lease-lock) | the Lease | nothing was done: the request fails (the supersession stays pending in state) |
//! | 2 | **read** the task's state; resume an unfinished journal | — | as 1 |
//! | 3 | **list** the task's runs | — | as 1 |
//! | 4 | **decide** the head to keep: GitHub's current head (one conditional GET, asked after the list, so every listed run's head was pushed by then), else the newest head in state; **select** the listed runs that are not terminal, of a cancellable role, and of another head | — | GitHub unreachable is not a failure: the state's head is kept |
//! | 5 | **journal** the operation (targets, kept head) | state (fenced) | as 1 |
//! | 6 | **cancel** each target: intent annotation ▸ graceful delete ▸ verify gone ▸ force after the deadline ▸ verify again | runs, pods | a run that cannot be stopped is flagged for intervention; a call refused for good (forbidden, invalid) ends the step; either way the operation is recorded `Failed` and finishes (nobody retries it; recovery flags the task). Intent already written is not undone: it is true, the run is superseded. A transient failure after its retries, or a lost lock, leaves the journal at `Started` for the next holder |
//! | 7 | **labels**: the PR's label transition (label-cas), from the labels the PR read returned | labels | recorded `Labeled`/`Failed` in step 8: the cancellation stands, recovery repairs the labels |
//! | 8 | **record and finish**, in one fenced write: the history entry, the settled supersessions, the journal's `Cancelled` and `Labeled` steps, the journal cleared | state (fenced) | the journal stays at `Started`; a resume re-verifies the targets (free when they are gone), finds the labels moved, and records once (the entry is keyed by the operation id) |
//! | 9 | **release** the lock | the Lease | it expires |
//!
//! A lost lock stops the saga at once: nothing is written after the guard's
//! `lost()` fired (the fence refuses late state writes in any case), and the
//! journal is left for the next holder.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use jiff::Timestamp;
use label_cas::{
    AtomicLabelManager, LabelBackend, LabelSet, LabelTransition, PullRequest, PullRequestReader,
    PullRequests, TransitionResult,
};
use lease_lock::{AcquireOptions, LeaseLock, LockGuard};
use resilience::{
    BreakerMetrics, BreakerPolicy, CircuitBreaker, RetryError, RetryPolicy, Transient, retry,
};
use serde::{Deserialize, Serialize};
use state_store::{
    CancellationOutcome, CancellationRecord, OperationJournal, OperationKind, RemediationState,
    StateStore, Step, StepStatus, Supersession,
};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::metrics::Metrics;
use crate::request::{CancellationRequest, Reason};
use crate::workloads::{CancelMode, Intent, Remains, Run, Workloads};
use crate::{Error, Result};

/// State metadata key holding the task's pull request (`owner/repo#n`):
/// written by the sensor with the first push and by the saga, read by the
/// recovery reconciler to check the task's head against GitHub.
pub const METADATA_PULL_REQUEST: &str = "supersede.dev/pull-request";

/// Journal context keys (the facts a resume needs).
mod context {
    pub const KEEP_HEAD: &str = "keep_head";
    pub const KEEP_SOURCE: &str = "keep_source";
    pub const ALSO_KEEP: &str = "also_keep";
    pub const PUSHED_AT: &str = "pushed_at";
    pub const REQUEST_HEAD: &str = "request_head";
    pub const CORRELATION_ID: &str = "correlation_id";
    pub const MODE: &str = "mode";
    pub const PR: &str = "pr";
    pub const TARGETS: &str = "targets";
    pub const CLOSED: &str = "pr_closed";
}

/// How the saga behaves. Defaults follow DESIGN §2 and the seed.
#[derive(Clone, Debug)]
pub struct SagaConfig {
    /// Delete the runs (Foreground) or stop their pods and keep them.
    pub mode: CancelMode,
    /// Grace period each pod gets after SIGTERM. Default 20 s: even a run
    /// that ignores SIGTERM is killed, forced if need be, and gone well
    /// within the seed's 30 s.
    pub grace_period: Duration,
    /// Extra wait after the grace period before the remaining pods are
    /// force-deleted (grace 0). Default 2 s.
    pub force_after: Duration,
    /// How long to wait for force-deleted pods to go before the run is
    /// declared stuck and flagged for intervention. Default 8 s.
    pub force_wait: Duration,
    /// Roles whose runs are never cancelled (GitLab's `interruptible:
    /// false`). Default: `deploy`.
    pub never_cancel: BTreeSet<String>,
    /// The PR's label transition after a cancellation; `None` for none.
    /// Default: remove `ready-for-qa`, add `needs-qa` (quality must run
    /// again on the new head).
    pub labels: Option<LabelTransition>,
    /// Lease name prefix of the task locks (`<prefix>-task-<id>`). Default
    /// `cancel`.
    pub lock_prefix: String,
    /// Longest wait for a task's lock. Default 30 s (one cancellation, graceful
    /// and forced, takes at most ~30 s).
    pub lock_timeout: Duration,
    /// Retries of each API call (at most 3 attempts, as the seed asks).
    pub retry: RetryPolicy,
    /// Most targets cancelled at once within one operation. Default 8.
    pub max_parallel_runs: usize,
}

impl Default for SagaConfig {
    fn default() -> Self {
        Self {
            mode: CancelMode::Delete,
            grace_period: Duration::from_secs(20),
            force_after: Duration::from_secs(2),
            force_wait: Duration::from_secs(8),
            never_cancel: BTreeSet::from(["deploy".to_owned()]),
            labels: Some(
                LabelTransition::new()
                    .removing(["ready-for-qa"])
                    .adding(["needs-qa"]),
            ),
            lock_prefix: "cancel".to_owned(),
            lock_timeout: Duration::from_secs(30),
            retry: RetryPolicy {
                backoff: resilience::BackoffPolicy {
                    initial: Duration::from_millis(100),
                    multiplier: 2.0,
                    max: Duration::from_secs(2),
                    jitter: 0.25,
                    max_attempts: None,
                },
                max_attempts: 3,
                max_elapsed: None,
                max_retry_after: Duration::from_secs(10),
            },
            max_parallel_runs: 8,
        }
    }
}

impl SagaConfig {
    /// Rejects settings that make no sense, naming them.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.grace_period > Duration::from_secs(3600) {
            return bad(format!(
                "grace_period {:?} is over an hour",
                self.grace_period
            ));
        }
        if self.force_wait.is_zero() || self.force_wait > Duration::from_secs(3600) {
            return bad(format!(
                "force_wait {:?} must be in (0, 1 h]",
                self.force_wait
            ));
        }
        if self.force_after > Duration::from_secs(3600) {
            return bad(format!(
                "force_after {:?} is over an hour",
                self.force_after
            ));
        }
        if self.lock_timeout.is_zero() || self.lock_timeout > lease_lock::MAX_ACQUIRE_TIMEOUT {
            return bad(format!(
                "lock_timeout {:?} must be in (0, {:?}]",
                self.lock_timeout,
                lease_lock::MAX_ACQUIRE_TIMEOUT
            ));
        }
        if self.retry.max_attempts == 0 {
            return bad("retry.max_attempts must be at least 1".into());
        }
        if self.max_parallel_runs == 0 {
            return bad("max_parallel_runs must be at least 1".into());
        }
        if let Some(t) = &self.labels {
            for name in t.add.iter().chain(&t.remove) {
                label_cas::validate_label_name(name)
                    .map_err(|e| Error::Config(format!("labels: {e}")))?;
            }
        }
        Ok(())
    }
}

/// Where the head that was kept came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeadSource {
    /// GitHub's pull request, read at the start of the operation.
    GitHub,
    /// The newest head recorded in the task's state (GitHub unreachable, or
    /// its answer older than a push we know of).
    State,
    /// The request's own head (no state, GitHub unreachable).
    Request,
    /// The pull request is closed or merged: no head is kept.
    Closed,
}

impl HeadSource {
    fn as_str(self) -> &'static str {
        match self {
            Self::GitHub => "github",
            Self::State => "state",
            Self::Request => "request",
            Self::Closed => "closed",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "github" => Self::GitHub,
            "state" => Self::State,
            "closed" => Self::Closed,
            _ => Self::Request,
        }
    }
}

/// How one target run ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunOutcome {
    /// Its pods stopped within the grace period (SIGTERM).
    Graceful,
    /// Its pods were force-deleted after the grace period.
    Forced,
    /// It reached a terminal phase by itself before it was touched.
    FinishedBeforehand,
    /// It was gone before it was touched.
    Vanished,
    /// A target of a resumed journal, gone when the journal was resumed:
    /// the holder that crashed had stopped it (how is not known).
    GoneBeforeResume,
    /// A target of a resumed journal whose head is the current one now: not
    /// cancelled, its intent cleared.
    Spared,
    /// It could not be stopped; flagged for intervention.
    Stuck(String),
}

impl RunOutcome {
    /// Whether the operation stopped the run (it is verified gone).
    pub fn cancelled(&self) -> bool {
        matches!(self, Self::Graceful | Self::Forced | Self::GoneBeforeResume)
    }
}

/// A target as the journal records it (enough to report on it after a
/// resume, and to tell it from a run re-created under its name).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct JournaledRun {
    name: String,
    uid: String,
    role: String,
    head_sha: String,
}

impl JournaledRun {
    fn of(run: &Run) -> Self {
        Self {
            name: run.name.clone(),
            uid: run.uid.clone(),
            role: run.role.clone(),
            head_sha: run.head_sha.clone(),
        }
    }
}

/// One target run of an operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReport {
    /// Run name.
    pub name: String,
    /// Its role.
    pub role: String,
    /// Its head.
    pub head_sha: String,
    /// How it ended.
    pub outcome: RunOutcome,
    /// From the intent to verified gone.
    #[serde(with = "millis")]
    pub took: Duration,
}

/// What the label step did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LabelsReport {
    /// The labels moved.
    Applied,
    /// They already were in the target state.
    AlreadyInState,
    /// No transition configured, or the PR is closed.
    Skipped,
    /// The transition failed; the cancellation stands, recovery repairs.
    Failed(String),
}

impl LabelsReport {
    /// One word (or the failure), for records and logs.
    pub fn describe(&self) -> String {
        match self {
            Self::Applied => "moved".to_owned(),
            Self::AlreadyInState => "already in state".to_owned(),
            Self::Skipped => "skipped".to_owned(),
            Self::Failed(why) => format!("failed ({why})"),
        }
    }
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Every target is gone.
    Cancelled,
    /// A new head was recorded but no run needed cancelling.
    NothingToCancel,
    /// Nothing pending and nothing stale: no operation was begun.
    AlreadyHandled,
    /// Some targets could not be stopped (flagged for intervention).
    Failed,
    /// A resumed operation was undone before it stopped any run, because
    /// it would have cancelled the runs of the head that is current now.
    RolledBack,
}

/// One step's duration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepTiming {
    /// The step.
    pub step: SagaStep,
    /// How long it took.
    #[serde(with = "millis")]
    pub took: Duration,
}

/// The saga's steps (DESIGN §2), for progress and timings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStep {
    /// Waiting for or taking the task's lock.
    Lock,
    /// Reading the task's state.
    Read,
    /// Deciding the head to keep (GitHub).
    Decide,
    /// Listing and selecting the runs to cancel.
    Select,
    /// Recording the operation's journal.
    Journal,
    /// Cancelling the targets.
    Cancel,
    /// Moving the PR's labels.
    Labels,
    /// Recording the cancellation in the state and finishing the journal.
    Record,
    /// Releasing the lock.
    Finish,
}

impl SagaStep {
    /// The step's name, as in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lock => "lock",
            Self::Read => "read",
            Self::Decide => "decide",
            Self::Select => "select",
            Self::Journal => "journal",
            Self::Cancel => "cancel",
            Self::Labels => "labels",
            Self::Record => "record",
            Self::Finish => "finish",
        }
    }
}

/// Where an operation is now (the coordinator's status API).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The step in progress.
    pub step: SagaStep,
    /// The operation's journal id, once begun.
    pub operation_id: Option<String>,
    /// Target runs not yet verified gone.
    pub runs_left: usize,
    /// The steps done so far.
    pub done: Vec<StepTiming>,
}

/// What one operation did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The task.
    pub task_id: String,
    /// The journal id (`None` when no operation was begun).
    pub operation_id: Option<String>,
    /// The head whose runs were kept (`None`: the PR is closed).
    pub kept_head: Option<String>,
    /// Where that head came from.
    pub kept_from: HeadSource,
    /// How it ended.
    pub outcome: Outcome,
    /// Each target.
    pub runs: Vec<RunReport>,
    /// The label step.
    pub labels: LabelsReport,
    /// Whether this call resumed another holder's journal.
    pub resumed: bool,
    /// The steps with their durations.
    pub steps: Vec<StepTiming>,
    /// From the call to the end.
    #[serde(with = "millis")]
    pub took: Duration,
}

/// The cancellation saga over its building blocks. Cheap to clone.
#[derive(Clone)]
pub struct StateAwareCancellation {
    inner: Arc<Inner>,
}

struct Inner {
    lock: LeaseLock,
    store: StateStore,
    workloads: Arc<dyn Workloads>,
    pulls: PullRequestReader<Arc<dyn PullRequests>>,
    labels: AtomicLabelManager<Arc<dyn LabelBackend>>,
    config: SagaConfig,
    metrics: Metrics,
    kube_breaker: Option<CircuitBreaker>,
    github_breaker: Option<CircuitBreaker>,
    breaker_metrics: Option<BreakerMetrics>,
}

impl std::fmt::Debug for StateAwareCancellation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateAwareCancellation")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Builds a [`StateAwareCancellation`].
pub struct SagaBuilder {
    lock: LeaseLock,
    store: StateStore,
    workloads: Arc<dyn Workloads>,
    pulls: Arc<dyn PullRequests>,
    labels: Arc<dyn LabelBackend>,
    config: SagaConfig,
    metrics: Metrics,
    label_metrics: label_cas::Metrics,
    kube_breaker: Option<CircuitBreaker>,
    github_breaker: Option<CircuitBreaker>,
    breaker_metrics: Option<BreakerMetrics>,
}

impl SagaBuilder {
    /// With `config` instead of the defaults.
    #[must_use]
    pub fn config(mut self, config: SagaConfig) -> Self {
        self.config = config;
        self
    }

    /// Reporting into `metrics` (shared with the coordinator).
    #[must_use]
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The label transitions report into `metrics` (label-cas's, shared
    /// with the label backend: one `label_cas_*` set per process).
    #[must_use]
    pub fn label_metrics(mut self, metrics: label_cas::Metrics) -> Self {
        self.label_metrics = metrics;
        self
    }

    /// Kubernetes calls go through `breaker` (open: the saga fails fast
    /// with [`Error::CircuitOpen`], transient).
    #[must_use]
    pub fn kube_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.kube_breaker = Some(breaker);
        self
    }

    /// GitHub calls go through `breaker` (open: the PR read falls back to
    /// the state's head; the label step is recorded failed for recovery).
    #[must_use]
    pub fn github_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.github_breaker = Some(breaker);
        self
    }

    /// Circuit breakers named `kubernetes` and `github`, both with
    /// `policy`, reporting into one set of breaker metrics that
    /// [`StateAwareCancellation::register`] registers (state gauge, trips).
    #[must_use]
    pub fn breakers(mut self, policy: BreakerPolicy) -> Self {
        let metrics = BreakerMetrics::new();
        self.kube_breaker = Some(CircuitBreaker::with_metrics(
            "kubernetes",
            policy.clone(),
            &metrics,
        ));
        self.github_breaker = Some(CircuitBreaker::with_metrics("github", policy, &metrics));
        self.breaker_metrics = Some(metrics);
        self
    }

    /// The saga (the configuration validated).
    pub fn build(self) -> Result<StateAwareCancellation> {
        self.config.validate()?;
        if self.lock.config().prefix != self.config.lock_prefix {
            return Err(Error::Config(format!(
                "the lock's prefix {:?} is not lock_prefix {:?}",
                self.lock.config().prefix,
                self.config.lock_prefix
            )));
        }
        Ok(StateAwareCancellation {
            inner: Arc::new(Inner {
                lock: self.lock,
                store: self.store,
                workloads: self.workloads,
                pulls: PullRequestReader::new(self.pulls),
                labels: AtomicLabelManager::new(self.labels).with_metrics(self.label_metrics),
                config: self.config,
                metrics: self.metrics,
                kube_breaker: self.kube_breaker,
                github_breaker: self.github_breaker,
                breaker_metrics: self.breaker_metrics,
            }),
        })
    }
}

impl StateAwareCancellation {
    /// A builder over the building blocks: a lock whose prefix is
    /// [`SagaConfig::lock_prefix`], the task state store, the workloads, and
    /// GitHub's pull requests and labels.
    pub fn builder(
        lock: LeaseLock,
        store: StateStore,
        workloads: Arc<dyn Workloads>,
        pulls: Arc<dyn PullRequests>,
        labels: Arc<dyn LabelBackend>,
    ) -> SagaBuilder {
        SagaBuilder {
            lock,
            store,
            workloads,
            pulls,
            labels,
            config: SagaConfig::default(),
            metrics: Metrics::default(),
            label_metrics: label_cas::Metrics::default(),
            kube_breaker: None,
            github_breaker: None,
            breaker_metrics: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SagaConfig {
        &self.inner.config
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Registers the saga's and the coordinator's metrics (see
    /// [`Metrics::register`]) and, with [`SagaBuilder::breakers`], the
    /// breakers' (`circuit_breaker_state`, `circuit_breaker_trips`, by
    /// breaker name).
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        self.inner.metrics.register(registry);
        if let Some(breakers) = &self.inner.breaker_metrics {
            breakers.register(registry.sub_registry_with_prefix("cancel_coordinator"));
        }
    }

    /// Runs one operation for `request`'s task: resumes an unfinished
    /// journal if there is one, else cancels what the newest head
    /// supersedes. See the module documentation for the steps.
    pub async fn run(&self, request: &CancellationRequest) -> Result<Report> {
        self.run_observed(request, None).await
    }

    /// [`run`](Self::run), publishing its progress step by step into
    /// `progress` (the coordinator's status API).
    pub async fn run_observed(
        &self,
        request: &CancellationRequest,
        progress: Option<&watch::Sender<Progress>>,
    ) -> Result<Report> {
        let mut request = request.clone();
        request.validate()?;
        let span = info_span!(
            "cancellation",
            task_id = %request.task_id,
            correlation_id = %request.correlation_id,
            head = %request.head_sha,
        );
        let started = Instant::now();
        let result = async {
            let mut clock = StepClock::new(progress);
            let key = format!("task-{}", request.task_id);
            let guard = self
                .inner
                .lock
                .acquire(
                    &key,
                    AcquireOptions::new().timeout(self.inner.config.lock_timeout),
                )
                .await?;
            clock.done(SagaStep::Lock);
            let result = self.locked(&request, &guard, &mut clock).await;
            clock.start(SagaStep::Finish);
            if let Err(e) = guard.release().await {
                debug!(error = %e, "releasing the task lock failed; it expires");
            }
            clock.done(SagaStep::Finish);
            result.map(|mut report| {
                report.steps = clock.into_timings();
                report
            })
        }
        .instrument(span)
        .await;
        let took = started.elapsed();
        match &result {
            Ok(report) => {
                self.inner.metrics.finished(report, took);
                info!(
                    task_id = %request.task_id,
                    correlation_id = %request.correlation_id,
                    outcome = ?report.outcome,
                    runs = report.runs.len(),
                    took_ms = took.as_millis(),
                    "cancellation operation ended"
                );
            }
            Err(e) => {
                self.inner.metrics.failed(e);
                warn!(task_id = %request.task_id, correlation_id = %request.correlation_id, error = %e, "cancellation operation failed");
            }
        }
        result.map(|mut report| {
            report.took = took;
            report
        })
    }

    /// Steps 2 to 9, under the lock.
    async fn locked(
        &self,
        request: &CancellationRequest,
        guard: &LockGuard,
        clock: &mut StepClock<'_>,
    ) -> Result<Report> {
        let inner = &self.inner;
        let task_id = request.task_id.as_str();
        // The state and the task's runs are read side by side (one round
        // trip, not two): both come before GitHub is asked for the head to
        // keep (below), which is the order that matters. A resumed journal
        // lists the runs again itself; the list here is then one call spent.
        clock.start(SagaStep::Read);
        let (read, listed) = tokio::join!(
            self.kube(guard, || inner.store.get(task_id), Error::State),
            self.kube(guard, || inner.workloads.runs(task_id), |e| e),
        );
        let mut known = read?;
        clock.done_together(&[SagaStep::Read, SagaStep::Select]);

        let unfinished = known
            .as_ref()
            .and_then(|s| s.state.active_operation.clone())
            .filter(|j| !j.is_finished() && j.kind == OperationKind::Cancellation);
        if let Some(journal) = unfinished {
            ensure_held(guard, task_id)?;
            let (holder, token) = (guard.holder_identity(), guard.fencing_token());
            let resumed = inner
                .store
                .update_on(task_id, &mut known, Some(token), |s| {
                    s.resume_operation(&journal.operation_id, holder, token)
                })
                .await?;
            inner.metrics.resumes.inc();
            clock.operation(&resumed.operation_id);
            info!(operation_id = %resumed.operation_id, previous_holder = %journal.holder, "resuming an unfinished cancellation");
            return self.resume(request, guard, known, resumed, clock).await;
        }

        // The runs were listed before GitHub is asked for the head to keep:
        // agents start on a head only after it was pushed, so every run the
        // list returns is of a head GitHub shows by the time it answers.
        // Asked the other way round, a push and its first runs landing
        // between the answer and the list would have the newest head's
        // runs cancelled as another head's.
        let runs = listed?;

        clock.start(SagaStep::Decide);
        let state = known.as_ref().map(|s| &s.state);
        let decision = self.decide(request, state).await;
        clock.done(SagaStep::Decide);
        let targets = self.select(runs, &decision);
        let pending = state.is_some_and(|s| !s.pending_supersessions.is_empty())
            || decision.unrecorded_head.is_some();
        if targets.is_empty() && !pending {
            debug!(kept = ?decision.keep, "nothing pending and nothing stale");
            return Ok(Report {
                task_id: task_id.to_owned(),
                operation_id: None,
                kept_head: decision.keep,
                kept_from: decision.source,
                outcome: Outcome::AlreadyHandled,
                runs: Vec::new(),
                labels: LabelsReport::Skipped,
                resumed: false,
                steps: Vec::new(),
                took: Duration::ZERO,
            });
        }

        clock.start(SagaStep::Journal);
        let journal = self.journal(request, guard, &decision, &targets);
        ensure_held(guard, task_id)?;
        inner
            .store
            .update_on(task_id, &mut known, Some(guard.fencing_token()), |s| {
                s.begin_operation(journal.clone())
            })
            .await?;
        clock.operation(&journal.operation_id);
        clock.done(SagaStep::Journal);
        info!(operation_id = %journal.operation_id, targets = targets.len(), kept = ?decision.keep, source = decision.source.as_str(), "cancellation begun");
        self.execute(
            request,
            guard,
            known,
            journal,
            targets,
            Vec::new(),
            &decision,
            false,
            clock,
        )
        .await
    }

    /// Continues an unfinished journal from its last step.
    async fn resume(
        &self,
        request: &CancellationRequest,
        guard: &LockGuard,
        known: Option<state_store::Snapshot>,
        journal: OperationJournal,
        clock: &mut StepClock<'_>,
    ) -> Result<Report> {
        let ctx = &journal.context;
        let decision = Decision {
            keep: ctx
                .get(context::KEEP_HEAD)
                .cloned()
                .filter(|s| !s.is_empty()),
            also_keep: ctx
                .get(context::ALSO_KEEP)
                .cloned()
                .filter(|s| !s.is_empty()),
            source: HeadSource::parse(ctx.get(context::KEEP_SOURCE).map_or("", String::as_str)),
            pushed_at: ctx.get(context::PUSHED_AT).and_then(|t| t.parse().ok()),
            labels: None,
            unrecorded_head: None,
            closed: ctx.get(context::CLOSED).is_some_and(|v| v == "true"),
        };
        // The targets as journaled: the same objects (uid), as they are now.
        // One already gone was stopped by the previous holder (its intent and
        // delete came before its crash): verified gone now, how unknown.
        // A journal without the detailed targets (written by hand, or by
        // another tool) names them only: matched by name then.
        let journaled: Vec<JournaledRun> = ctx
            .get(context::TARGETS)
            .and_then(|json| serde_json::from_str(json).ok())
            .unwrap_or_else(|| {
                journal
                    .targets
                    .iter()
                    .map(|name| JournaledRun {
                        name: name.clone(),
                        uid: String::new(),
                        role: String::new(),
                        head_sha: String::new(),
                    })
                    .collect()
            });
        let mut targets: Vec<Run> = Vec::new();
        let mut gone = Vec::new();
        if !journal.has_succeeded(&Step::Cancelled) && !cancel_failed(&journal) {
            let runs = self
                .kube(guard, || self.inner.workloads.runs(&request.task_id), |e| e)
                .await?;
            let mut by_name: BTreeMap<String, Run> =
                runs.into_iter().map(|r| (r.name.clone(), r)).collect();
            for target in journaled {
                match by_name.remove(&target.name) {
                    Some(run) if target.uid.is_empty() || run.uid == target.uid => {
                        targets.push(run);
                    }
                    _ => gone.push(RunReport {
                        name: target.name,
                        role: target.role,
                        head_sha: target.head_sha,
                        outcome: RunOutcome::GoneBeforeResume,
                        took: Duration::ZERO,
                    }),
                }
            }
        }
        // Is going forward still right? A head kept now (GitHub has moved
        // on since the journal was written) must not lose its runs.
        let spared: Vec<Run>;
        (spared, targets) = if targets.is_empty() {
            (Vec::new(), targets)
        } else {
            let state = known.as_ref().map(|s| &s.state);
            let now = self.decide(request, state).await;
            targets.into_iter().partition(|r| now.keeps(&r.head_sha))
        };
        if !spared.is_empty() {
            let mut all = spared.clone();
            all.extend(targets.iter().cloned());
            if gone.is_empty() && self.untouched(guard, &all).await? {
                return self
                    .roll_back(request, guard, known, journal, all, clock)
                    .await;
            }
            // Some target was already stopped (a killed pod cannot be
            // un-killed): go forward for the others, and give the runs of
            // the head now kept their intent back.
            for run in &spared {
                warn!(run = %run.name, head = %run.head_sha, "a target's head is the current one now; it is spared");
                ensure_held(guard, task_id(request))?;
                self.kube(
                    guard,
                    || {
                        self.inner
                            .workloads
                            .clear_intent(run, &journal.operation_id)
                    },
                    |e| e,
                )
                .await?;
                gone.push(RunReport {
                    name: run.name.clone(),
                    role: run.role.clone(),
                    head_sha: run.head_sha.clone(),
                    outcome: RunOutcome::Spared,
                    took: Duration::ZERO,
                });
            }
        }
        self.execute(
            request, guard, known, journal, targets, gone, &decision, true, clock,
        )
        .await
    }

    /// Whether no effect of a journal reached `runs` yet: none is being
    /// deleted, and (Stop mode) each still has its pods.
    async fn untouched(&self, guard: &LockGuard, runs: &[Run]) -> Result<bool> {
        if runs.iter().any(|r| r.deleting) {
            return Ok(false);
        }
        if self.inner.config.mode == CancelMode::Stop {
            for run in runs {
                let left = self
                    .kube(guard, || self.inner.workloads.remains(run), |e| e)
                    .await?;
                if left.pods.is_empty() {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Rolls back an operation no run of which was stopped yet, because
    /// going forward would cancel the runs of the head that is current now:
    /// clears its intent annotations, records `RolledBack` in the history
    /// and the journal, and finishes it. Its pending supersessions stay: the
    /// next operation handles them from the current head. The labels were
    /// not touched yet (they move after the cancel step).
    async fn roll_back(
        &self,
        request: &CancellationRequest,
        guard: &LockGuard,
        mut known: Option<state_store::Snapshot>,
        journal: OperationJournal,
        runs: Vec<Run>,
        clock: &mut StepClock<'_>,
    ) -> Result<Report> {
        let inner = &self.inner;
        let task = task_id(request);
        clock.start(SagaStep::Cancel);
        for run in &runs {
            ensure_held(guard, task)?;
            self.kube(
                guard,
                || inner.workloads.clear_intent(run, &journal.operation_id),
                |e| e,
            )
            .await?;
        }
        clock.done(SagaStep::Cancel);
        clock.start(SagaStep::Record);
        let now = inner.store.clock().now();
        let record = CancellationRecord {
            operation_id: journal.operation_id.clone(),
            at: now,
            new_head_sha: journal
                .context
                .get(context::KEEP_HEAD)
                .cloned()
                .unwrap_or_default(),
            targets: Vec::new(),
            superseded_heads: Vec::new(),
            started_at: Some(journal.started_at),
            finished_at: Some(now),
            outcome: CancellationOutcome::RolledBack,
            correlation_id: journal.context.get(context::CORRELATION_ID).cloned(),
            detail: Some(
                "rolled back before any run was stopped: a head it would have cancelled is the current one"
                    .to_owned(),
            ),
        };
        ensure_held(guard, task)?;
        inner
            .store
            .update_on(task, &mut known, Some(guard.fencing_token()), |s| {
                s.check_operation_holder(&journal)?;
                if !s
                    .cancellation_history
                    .iter()
                    .any(|r| r.operation_id == journal.operation_id)
                {
                    s.record_cancellation(record.clone());
                }
                s.advance_operation(
                    &journal.operation_id,
                    Step::RolledBack,
                    StepStatus::Succeeded,
                    record.detail.clone(),
                    now,
                )?;
                s.finish_operation(&journal.operation_id, None).map(|_| ())
            })
            .await?;
        clock.done(SagaStep::Record);
        inner.metrics.rollbacks.inc();
        info!(operation_id = %journal.operation_id, "operation rolled back");
        Ok(Report {
            task_id: task.to_owned(),
            operation_id: Some(journal.operation_id.clone()),
            kept_head: None,
            kept_from: HeadSource::GitHub,
            outcome: Outcome::RolledBack,
            runs: Vec::new(),
            labels: LabelsReport::Skipped,
            resumed: true,
            steps: Vec::new(),
            took: Duration::ZERO,
        })
    }

    /// Steps 6 to 9 of a begun (or resumed) journal.
    #[allow(clippy::too_many_arguments)]
    async fn execute(
        &self,
        request: &CancellationRequest,
        guard: &LockGuard,
        mut known: Option<state_store::Snapshot>,
        journal: OperationJournal,
        targets: Vec<Run>,
        gone: Vec<RunReport>,
        decision: &Decision,
        resumed: bool,
        clock: &mut StepClock<'_>,
    ) -> Result<Report> {
        let inner = &self.inner;
        let task_id = request.task_id.as_str();
        let token = guard.fencing_token();
        let correlation_id = journal
            .context
            .get(context::CORRELATION_ID)
            .cloned()
            .unwrap_or_else(|| request.correlation_id.clone());
        let intent = Intent {
            superseded_by: if decision.closed {
                "closed".to_owned()
            } else {
                decision.keep.clone().unwrap_or_default()
            },
            operation_id: journal.operation_id.clone(),
            correlation_id: Some(correlation_id.clone()),
            at: inner.store.clock().now(),
        };

        // When each target head's first run was created: the order of the
        // record's superseded heads (a run gone before a resume has no
        // creation time left to read: it sorts first).
        let created: BTreeMap<String, Timestamp> =
            targets.iter().fold(BTreeMap::new(), |mut first, run| {
                if let Some(at) = run.created_at {
                    let entry = first.entry(run.head_sha.clone()).or_insert(at);
                    *entry = (*entry).min(at);
                }
                first
            });

        // 6: cancel (once: a journal past `Cancelled` skips it).
        let mut reports = gone;
        let recorded = journal.has_succeeded(&Step::Cancelled) || cancel_failed(&journal);
        let mut failure = None;
        if !recorded {
            clock.start(SagaStep::Cancel);
            clock.runs_left(targets.len());
            // A transient failure (after the call's retries) or a lost lock
            // ends the operation here: the journal stays at `Started` and
            // whoever holds the lock next resumes it. A permanent failure
            // (forbidden, invalid) is not retried by anyone: it is recorded
            // as the step's failure, and the operation finishes `Failed`.
            match self.cancel_all(guard, targets, &intent, clock).await {
                Ok(done) => reports.extend(done),
                Err(e) if e.is_transient() || matches!(e, Error::LockLost { .. }) => return Err(e),
                Err(e) => {
                    warn!(error = %e, "cancelling failed permanently; the operation is recorded failed");
                    failure = Some(e.to_string());
                }
            }
            reports.sort_by(|a, b| a.name.cmp(&b.name));
            clock.done(SagaStep::Cancel);
        }
        let failed_for_good = failure.is_some();

        // 7: labels (idempotent: a resumed operation finds them moved).
        clock.start(SagaStep::Labels);
        let labels = self.move_labels(guard, request, decision).await;
        clock.done(SagaStep::Labels);

        // 8 + 9: one fenced write records the cancellation in the history,
        // the head GitHub showed, the settled supersessions, the journal's
        // `Cancelled` and `Labeled` steps — and finishes the operation.
        clock.start(SagaStep::Record);
        let mut record = record_of(&journal, &intent, &reports, &correlation_id, &created);
        if let Some(why) = &failure {
            record.outcome = CancellationOutcome::Failed;
            record.detail = Some(match record.detail.take() {
                Some(d) => format!("{d}; failed: {why}"),
                None => format!("failed: {why}"),
            });
        }
        let note = format!("labels: {}", labels.describe());
        record.detail = Some(match record.detail.take() {
            Some(d) => format!("{d}; {note}"),
            None => note,
        });
        let cancel_step = if record.outcome == CancellationOutcome::Failed {
            (StepStatus::Failed, record.detail.clone())
        } else {
            (StepStatus::Succeeded, None)
        };
        let labels_step = match &labels {
            LabelsReport::Failed(why) => (StepStatus::Failed, Some(why.clone())),
            _ => (StepStatus::Succeeded, None),
        };
        let now = inner.store.clock().now();
        record.finished_at = Some(now.max(record.at));
        let observed = decision.unrecorded_head.clone();
        ensure_held(guard, task_id)?;
        inner
            .store
            .update_on(task_id, &mut known, Some(token), |s| {
                s.check_operation_holder(&journal)?;
                if !s
                    .cancellation_history
                    .iter()
                    .any(|r| r.operation_id == journal.operation_id)
                {
                    s.record_cancellation(record.clone());
                }
                if let Some(push) = &observed {
                    s.observe_head(push);
                }
                decision.settle(s, request);
                // Where the task's PR is, for recovery's head-drift check.
                s.metadata
                    .entry(METADATA_PULL_REQUEST.to_owned())
                    .or_insert_with(|| request.pr.to_string());
                let operation = &journal.operation_id;
                if !recorded {
                    let (status, detail) = cancel_step.clone();
                    s.advance_operation(operation, Step::Cancelled, status, detail, now)?;
                }
                let (status, detail) = labels_step.clone();
                s.advance_operation(operation, Step::Labeled, status, detail, now)?;
                s.finish_operation(operation, None).map(|_| ())
            })
            .await?;
        clock.done(SagaStep::Record);

        let outcome = if failed_for_good
            || cancel_failed(&journal)
            || reports
                .iter()
                .any(|r| matches!(r.outcome, RunOutcome::Stuck(_)))
        {
            Outcome::Failed
        } else if reports.iter().any(|r| r.outcome.cancelled())
            || (recorded && !journal.targets.is_empty())
        {
            Outcome::Cancelled
        } else {
            Outcome::NothingToCancel
        };
        Ok(Report {
            task_id: task_id.to_owned(),
            operation_id: Some(journal.operation_id.clone()),
            kept_head: decision.keep.clone(),
            kept_from: decision.source,
            outcome,
            runs: reports,
            labels,
            resumed,
            steps: Vec::new(),
            took: Duration::ZERO,
        })
    }

    /// Step 3: the head to keep.
    async fn decide(
        &self,
        request: &CancellationRequest,
        state: Option<&RemediationState>,
    ) -> Decision {
        let newest_known = newest_known_head(request, state);
        let read = match &self.inner.github_breaker {
            Some(breaker) => match breaker
                .call_with(
                    self.inner.pulls.current(&request.pr),
                    |e: &label_cas::Error| e.is_transient(),
                )
                .await
            {
                Ok(pull) => Ok(pull),
                Err(resilience::CallError::Open(_)) => Err("the GitHub breaker is open".to_owned()),
                Err(resilience::CallError::Failed(e)) => Err(e.to_string()),
            },
            None => self
                .inner
                .pulls
                .current(&request.pr)
                .await
                .map_err(|e| e.to_string()),
        };
        match read {
            Ok(pull) => decide_from_github(pull, newest_known),
            Err(why) => {
                warn!(error = %why, "could not read the pull request's head; keeping the newest head in state");
                let (keep, pushed_at, source) = newest_known;
                Decision {
                    keep: Some(keep),
                    also_keep: None,
                    source,
                    pushed_at: Some(pushed_at),
                    labels: None,
                    unrecorded_head: None,
                    closed: request.reason == Reason::Closed,
                }
            }
        }
    }

    /// Step 4: the runs to cancel.
    fn select(&self, runs: Vec<Run>, decision: &Decision) -> Vec<Run> {
        runs.into_iter()
            .filter(|r| !r.terminal)
            .filter(|r| !self.inner.config.never_cancel.contains(&r.role))
            .filter(|r| !decision.keeps(&r.head_sha))
            .collect()
    }

    fn journal(
        &self,
        request: &CancellationRequest,
        guard: &LockGuard,
        decision: &Decision,
        targets: &[Run],
    ) -> OperationJournal {
        let now = self.inner.store.clock().now();
        let mut journal = OperationJournal::begin(
            format!("cancel-{}", uuid::Uuid::new_v4().simple()),
            OperationKind::Cancellation,
            guard.holder_identity(),
            now,
        );
        journal.fencing_token = Some(guard.fencing_token().clone());
        journal.targets = targets.iter().map(|r| r.name.clone()).collect();
        let ctx = &mut journal.context;
        ctx.insert(
            context::KEEP_HEAD.into(),
            decision.keep.clone().unwrap_or_default(),
        );
        ctx.insert(context::KEEP_SOURCE.into(), decision.source.as_str().into());
        if let Some(also) = &decision.also_keep {
            ctx.insert(context::ALSO_KEEP.into(), also.clone());
        }
        if let Some(at) = decision.pushed_at {
            ctx.insert(context::PUSHED_AT.into(), at.to_string());
        }
        ctx.insert(context::REQUEST_HEAD.into(), request.head_sha.clone());
        ctx.insert(
            context::CORRELATION_ID.into(),
            request.correlation_id.clone(),
        );
        ctx.insert(context::MODE.into(), self.inner.config.mode.to_string());
        ctx.insert(context::PR.into(), request.pr.to_string());
        ctx.insert(context::CLOSED.into(), decision.closed.to_string());
        let journaled: Vec<JournaledRun> = targets.iter().map(JournaledRun::of).collect();
        ctx.insert(
            context::TARGETS.into(),
            serde_json::to_string(&journaled).unwrap_or_default(),
        );
        journal
    }

    /// Step 6 for every target: intent ▸ graceful delete ▸ one verification
    /// for all ▸ force what is left ▸ verify again.
    async fn cancel_all(
        &self,
        guard: &LockGuard,
        targets: Vec<Run>,
        intent: &Intent,
        clock: &mut StepClock<'_>,
    ) -> Result<Vec<RunReport>> {
        let inner = &self.inner;
        let config = &inner.config;
        let started = Instant::now();
        let report = |run: &Run, outcome: RunOutcome| RunReport {
            name: run.name.clone(),
            role: run.role.clone(),
            head_sha: run.head_sha.clone(),
            outcome,
            took: started.elapsed(),
        };
        let mut reports = Vec::with_capacity(targets.len());

        // The intent, on each (conditional on the version read).
        let mut marked = Vec::with_capacity(targets.len());
        let marking: Vec<Result<Marked>> = futures::stream::iter(targets)
            .map(|run| self.mark(guard, run, intent))
            .buffer_unordered(config.max_parallel_runs)
            .collect()
            .await;
        for result in marking {
            match result? {
                Marked::Run(run) => marked.push(run),
                Marked::Skipped(run, outcome) => {
                    clock.run_done();
                    reports.push(report(&run, outcome));
                }
            }
        }

        // Graceful: SIGTERM with the grace period, to every run at once (up
        // to `max_parallel_runs`): the runs are independent, and one round
        // trip per run in a row is the saga's longest serial stretch. The
        // first error stops the step; a DELETE dropped in flight is what a
        // crash leaves, and the journal resumes it.
        let signals: Vec<_> = marked
            .iter()
            .map(|run| self.signal(guard, run, false))
            .collect();
        futures::stream::iter(signals)
            .buffer_unordered(config.max_parallel_runs)
            .try_collect::<Vec<()>>()
            .await?;
        let mut remaining = marked;
        for (forced, wait) in [
            (false, config.grace_period + config.force_after),
            (true, config.force_wait),
        ] {
            if remaining.is_empty() {
                break;
            }
            if forced {
                let signals: Vec<_> = remaining
                    .iter()
                    .map(|run| self.signal(guard, run, true))
                    .collect();
                futures::stream::iter(signals)
                    .buffer_unordered(config.max_parallel_runs)
                    .try_collect::<Vec<()>>()
                    .await?;
            }
            let deadline = Instant::now() + wait;
            let left = self
                .kube(
                    guard,
                    || inner.workloads.wait_gone(&remaining, config.mode, deadline),
                    |e| e,
                )
                .await?;
            let mut still = Vec::new();
            for (run, left) in remaining.into_iter().zip(left) {
                if left.done(config.mode) {
                    let how = if forced {
                        RunOutcome::Forced
                    } else {
                        RunOutcome::Graceful
                    };
                    self.finish_run(guard, &run, intent, &left).await?;
                    let done = report(&run, how);
                    inner.metrics.run_cancelled(&done);
                    clock.run_done();
                    reports.push(done);
                } else {
                    still.push((run, left));
                }
            }
            if forced {
                for (run, left) in &still {
                    let why = left.describe();
                    warn!(run = %run.name, remains = %why, "run could not be stopped; flagged for intervention");
                    ensure_held(guard, &run.task_id)?;
                    if let Err(e) = inner.workloads.flag_intervention(run, &why).await {
                        warn!(run = %run.name, error = %e, "could not flag the run for intervention");
                    }
                    inner.metrics.stuck.inc();
                    clock.run_done();
                    reports.push(report(run, RunOutcome::Stuck(why)));
                }
                remaining = Vec::new();
            } else {
                remaining = still.into_iter().map(|(run, _)| run).collect();
            }
        }
        reports.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(reports)
    }

    /// SIGTERM to `run` with the grace period, or, `forced`, SIGKILL to
    /// what is left of it — while the lock is still held.
    async fn signal(&self, guard: &LockGuard, run: &Run, forced: bool) -> Result<()> {
        let inner = &self.inner;
        let config = &inner.config;
        ensure_held(guard, &run.task_id)?;
        if forced {
            warn!(run = %run.name, "run outlived its grace period; forcing");
            self.kube(guard, || inner.workloads.force(run), |e| e).await
        } else {
            self.kube(
                guard,
                || {
                    inner
                        .workloads
                        .terminate(run, config.mode, config.grace_period)
                },
                |e| e,
            )
            .await
        }
    }

    /// The intent on one run; a conflict re-reads it and decides again (a
    /// run that finished or vanished meanwhile is left alone).
    async fn mark(&self, guard: &LockGuard, run: Run, intent: &Intent) -> Result<Marked> {
        let inner = &self.inner;
        let mut current = run;
        for _ in 0..MAX_MARK_CONFLICTS {
            ensure_held(guard, &current.task_id)?;
            let written = self
                .kube(
                    guard,
                    || inner.workloads.mark_superseded(&current, intent),
                    |e| e,
                )
                .await;
            match written {
                Ok(marked) => return Ok(Marked::Run(marked)),
                Err(Error::Conflict { .. }) => {
                    let name = current.name.clone();
                    match self
                        .kube(guard, || inner.workloads.run(&name), |e| e)
                        .await?
                    {
                        Some(fresh) if fresh.uid == current.uid && fresh.terminal => {
                            return Ok(Marked::Skipped(fresh, RunOutcome::FinishedBeforehand));
                        }
                        Some(fresh) if fresh.uid == current.uid => current = fresh,
                        _ => return Ok(Marked::Skipped(current, RunOutcome::Vanished)),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict { name: current.name })
    }

    /// A run whose pods are gone: Stop mode records it cancelled; a run held
    /// by foreign finalizers is flagged (its work has stopped, its object
    /// is someone else's to remove).
    async fn finish_run(
        &self,
        guard: &LockGuard,
        run: &Run,
        intent: &Intent,
        left: &Remains,
    ) -> Result<()> {
        let inner = &self.inner;
        if inner.config.mode == CancelMode::Stop {
            ensure_held(guard, &run.task_id)?;
            self.kube(
                guard,
                || inner.workloads.record_cancelled(run, intent),
                |e| e,
            )
            .await?;
        }
        if !left.foreign_finalizers.is_empty() {
            let why = left.describe();
            warn!(run = %run.name, remains = %why, "run stopped but held by a foreign finalizer; flagged for intervention");
            ensure_held(guard, &run.task_id)?;
            if let Err(e) = inner.workloads.flag_intervention(run, &why).await {
                warn!(run = %run.name, error = %e, "could not flag the run for intervention");
            }
        }
        Ok(())
    }

    /// Step 8: the label transition, from the labels the PR read returned.
    async fn move_labels(
        &self,
        guard: &LockGuard,
        request: &CancellationRequest,
        decision: &Decision,
    ) -> LabelsReport {
        let Some(transition) = self.inner.config.labels.as_ref() else {
            return LabelsReport::Skipped;
        };
        if decision.closed {
            return LabelsReport::Skipped;
        }
        if ensure_held(guard, &request.task_id).is_err() {
            return LabelsReport::Failed("the task lock was lost".into());
        }
        let call = async {
            match &decision.labels {
                Some(known) => {
                    self.inner
                        .labels
                        .transition_from(&request.pr, transition, known)
                        .await
                }
                None => self.inner.labels.transition(&request.pr, transition).await,
            }
        };
        let moved = match &self.inner.github_breaker {
            Some(breaker) => match breaker
                .call_with(call, |e: &label_cas::Error| e.is_transient())
                .await
            {
                Ok(outcome) => Ok(outcome),
                Err(resilience::CallError::Open(_)) => {
                    return LabelsReport::Failed("the GitHub breaker is open".into());
                }
                Err(resilience::CallError::Failed(e)) => Err(e),
            },
            None => call.await,
        };
        match moved {
            Ok(outcome) if outcome.result == TransitionResult::AlreadyInState => {
                LabelsReport::AlreadyInState
            }
            Ok(_) => LabelsReport::Applied,
            Err(e) => {
                warn!(pr = %request.pr, error = %e, "label transition failed; the cancellation stands");
                LabelsReport::Failed(e.to_string())
            }
        }
    }

    /// A Kubernetes call: through the breaker, retried when transient (at
    /// most [`SagaConfig::retry`] attempts), stopped when the lock is lost.
    async fn kube<T, E, F, Fut>(
        &self,
        guard: &LockGuard,
        mut call: F,
        into: fn(E) -> Error,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, E>>,
    {
        let lost: CancellationToken = guard.cancellation_token();
        let breaker = self.inner.kube_breaker.as_ref();
        let attempt = |_: u32| {
            let fut = call();
            async move {
                let result = fut.await.map_err(into);
                match breaker {
                    // Conflicts and 404s are answers, not failures of the API.
                    Some(b) => {
                        let permit = b.try_acquire().map_err(|_| Error::CircuitOpen {
                            dependency: "kubernetes",
                        })?;
                        match &result {
                            Err(e) if e.is_transient() && !matches!(e, Error::Conflict { .. }) => {
                                permit.failure();
                            }
                            _ => permit.success(),
                        }
                        result
                    }
                    None => result,
                }
            }
        };
        // A conflict is an answer for the caller (re-read, decide again),
        // never a reason to send the same write again.
        let classify = |e: &Error| match e {
            Error::Conflict { .. } => resilience::Classification::Permanent,
            e => e.classification(),
        };
        match retry(&self.inner.config.retry, &lost, classify, attempt).await {
            Ok(value) => Ok(value),
            Err(RetryError::Permanent(e) | RetryError::Exhausted { last: e, .. }) => Err(e),
            Err(RetryError::Cancelled { .. }) => Err(Error::LockLost {
                task_id: guard.key().trim_start_matches("task-").to_owned(),
            }),
        }
    }
}

/// Most conflicts one run's intent write re-reads through before the saga
/// gives up on it (transiently: the next attempt starts over).
const MAX_MARK_CONFLICTS: usize = 5;

/// A target after its intent step.
enum Marked {
    /// Marked: to be terminated.
    Run(Run),
    /// Left alone (finished by itself, or gone).
    Skipped(Run, RunOutcome),
}

/// The head to keep and what the PR read told.
#[derive(Clone, Debug)]
struct Decision {
    keep: Option<String>,
    /// A second head whose runs are kept: the newest push we know of, when
    /// GitHub's answer is not provably newer.
    also_keep: Option<String>,
    source: HeadSource,
    /// When the kept head was pushed, if known.
    pushed_at: Option<Timestamp>,
    /// The PR's labels as read (the label step's first read).
    labels: Option<LabelSet>,
    /// A head GitHub reports that the state has not recorded (a lost
    /// webhook): recorded with the cancellation.
    unrecorded_head: Option<Supersession>,
    /// The PR is closed or merged.
    closed: bool,
}

impl Decision {
    /// Whether runs of `head` are kept.
    fn keeps(&self, head: &str) -> bool {
        [&self.keep, &self.also_keep]
            .into_iter()
            .flatten()
            .any(|k| k.eq_ignore_ascii_case(head))
    }

    /// Removes the pending supersessions this operation handled: all of
    /// them for a closed PR; through the kept head's push otherwise; and,
    /// when two heads were kept, every one but theirs (a later pass, once
    /// GitHub and the state agree, handles those).
    fn settle(&self, state: &mut RemediationState, request: &CancellationRequest) {
        if self.closed {
            state.pending_supersessions.clear();
            return;
        }
        if self.also_keep.is_some() {
            state
                .pending_supersessions
                .retain(|p| self.keeps(&p.head_sha));
            return;
        }
        let Some(keep) = &self.keep else {
            return;
        };
        let at = self
            .pushed_at
            .or_else(|| (request.head_sha == *keep).then_some(request.pushed_at));
        if let Some(at) = at {
            state.settle_supersessions_through(keep, at);
        }
    }
}

/// The newest head the request and the state know, with its push time.
fn newest_known_head(
    request: &CancellationRequest,
    state: Option<&RemediationState>,
) -> (String, Timestamp, HeadSource) {
    match state.and_then(|s| s.latest_head.as_ref()) {
        Some(head)
            if (head.pushed_at, head.sha.as_str())
                >= (request.pushed_at, request.head_sha.as_str()) =>
        {
            (head.sha.clone(), head.pushed_at, HeadSource::State)
        }
        _ => (
            request.head_sha.clone(),
            request.pushed_at,
            HeadSource::Request,
        ),
    }
}

/// What to keep given GitHub's answer: its head — unless a push we know of
/// is newer than GitHub's last change of the pull request (its read lags
/// the webhook), in which case that push's head.
fn decide_from_github(
    pull: PullRequest,
    newest_known: (String, Timestamp, HeadSource),
) -> Decision {
    let (known, known_at, _) = newest_known;
    if !pull.is_open() {
        return Decision {
            keep: None,
            also_keep: None,
            source: HeadSource::Closed,
            pushed_at: None,
            labels: Some(pull.labels),
            unrecorded_head: None,
            closed: true,
        };
    }
    let labels = Some(pull.labels);
    if pull.head_sha.eq_ignore_ascii_case(&known) {
        return Decision {
            keep: Some(pull.head_sha),
            also_keep: None,
            source: HeadSource::GitHub,
            pushed_at: Some(known_at),
            labels,
            unrecorded_head: None,
            closed: false,
        };
    }
    match pull.updated_at {
        // GitHub changed the PR after the newest push we know of: its head
        // is newer (a webhook was lost). Keep it, and record it.
        Some(updated) if updated > known_at => Decision {
            unrecorded_head: Some(Supersession {
                head_sha: pull.head_sha.clone(),
                pushed_at: updated,
                delivery_id: "github-api".to_owned(),
                correlation_id: None,
            }),
            keep: Some(pull.head_sha),
            also_keep: None,
            source: HeadSource::GitHub,
            pushed_at: Some(updated),
            labels,
            closed: false,
        },
        // GitHub's answer is not provably newer than the push we know of
        // (its read may lag the webhook): keep both heads' runs. Cancelling
        // the other head's runs waits for a pass on which the two agree;
        // cancelling the newest head's runs would be the one wrong move.
        _ => Decision {
            keep: Some(pull.head_sha),
            also_keep: Some(known),
            source: HeadSource::GitHub,
            pushed_at: None,
            labels,
            unrecorded_head: None,
            closed: false,
        },
    }
}

fn cancel_failed(journal: &OperationJournal) -> bool {
    journal
        .steps
        .iter()
        .any(|s| s.step == Step::Cancelled && s.status == StepStatus::Failed)
}

/// The history entry of an operation that cancelled `reports`' runs;
/// `created` is when each head's first target run was created (the order of
/// the superseded heads). `finished_at` is the caller's, set at the record.
fn record_of(
    journal: &OperationJournal,
    intent: &Intent,
    reports: &[RunReport],
    correlation_id: &str,
    created: &BTreeMap<String, Timestamp>,
) -> CancellationRecord {
    let stuck = reports
        .iter()
        .any(|r| matches!(r.outcome, RunOutcome::Stuck(_)));
    let cancelled: Vec<String> = reports
        .iter()
        .filter(|r| r.outcome.cancelled())
        .map(|r| r.name.clone())
        .collect();
    let outcome = if stuck {
        CancellationOutcome::Failed
    } else if cancelled.is_empty() {
        CancellationOutcome::NothingToCancel
    } else {
        CancellationOutcome::Cancelled
    };
    // Each head once (its creation time is one value), oldest first.
    let superseded_heads: BTreeSet<(Option<Timestamp>, &str)> = reports
        .iter()
        .filter(|r| r.outcome.cancelled())
        .map(|r| (created.get(&r.head_sha).copied(), r.head_sha.as_str()))
        .collect();
    CancellationRecord {
        operation_id: journal.operation_id.clone(),
        at: intent.at,
        new_head_sha: intent.superseded_by.clone(),
        targets: cancelled,
        superseded_heads: superseded_heads
            .into_iter()
            .map(|(_, head)| head.to_owned())
            .collect(),
        started_at: Some(journal.started_at),
        finished_at: None,
        outcome,
        correlation_id: Some(correlation_id.to_owned()),
        detail: (!reports.is_empty()).then(|| describe(reports)),
    }
}

/// `name: how (ms)` for each run.
fn describe(reports: &[RunReport]) -> String {
    reports
        .iter()
        .map(|r| {
            let how = match &r.outcome {
                RunOutcome::Graceful => "sigterm".to_owned(),
                RunOutcome::Forced => "forced".to_owned(),
                RunOutcome::FinishedBeforehand => "finished by itself".to_owned(),
                RunOutcome::Vanished => "gone before it was touched".to_owned(),
                RunOutcome::GoneBeforeResume => "stopped by the previous holder".to_owned(),
                RunOutcome::Spared => "spared: its head is the current one".to_owned(),
                RunOutcome::Stuck(why) => format!("stuck ({why})"),
            };
            format!("{}: {how} in {} ms", r.name, r.took.as_millis())
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn task_id(request: &CancellationRequest) -> &str {
    &request.task_id
}

fn ensure_held(guard: &LockGuard, task_id: &str) -> Result<()> {
    if guard.is_valid() {
        Ok(())
    } else {
        Err(Error::LockLost {
            task_id: task_id.to_owned(),
        })
    }
}

/// Times the steps and publishes progress.
struct StepClock<'a> {
    progress: Option<&'a watch::Sender<Progress>>,
    current: SagaStep,
    since: Instant,
    timings: Vec<StepTiming>,
    runs_left: usize,
}

impl<'a> StepClock<'a> {
    fn new(progress: Option<&'a watch::Sender<Progress>>) -> Self {
        Self {
            progress,
            current: SagaStep::Lock,
            since: Instant::now(),
            timings: Vec::new(),
            runs_left: 0,
        }
    }

    fn start(&mut self, step: SagaStep) {
        self.current = step;
        self.since = Instant::now();
        self.publish();
    }

    fn done(&mut self, step: SagaStep) {
        self.done_together(&[step]);
    }

    /// Steps that ran side by side since the last one: each took the time
    /// they took together.
    fn done_together(&mut self, steps: &[SagaStep]) {
        let took = self.since.elapsed();
        self.timings
            .extend(steps.iter().map(|&step| StepTiming { step, took }));
        self.since = Instant::now();
        self.publish();
    }

    fn operation(&mut self, id: &str) {
        if let Some(progress) = self.progress {
            progress.send_modify(|p| p.operation_id = Some(id.to_owned()));
        }
    }

    fn runs_left(&mut self, n: usize) {
        self.runs_left = n;
        self.publish();
    }

    fn run_done(&mut self) {
        self.runs_left = self.runs_left.saturating_sub(1);
        self.publish();
    }

    fn publish(&self) {
        if let Some(progress) = self.progress {
            progress.send_modify(|p| {
                p.step = self.current;
                p.runs_left = self.runs_left;
                p.done.clone_from(&self.timings);
            });
        }
    }

    fn into_timings(self) -> Vec<StepTiming> {
        self.timings
    }
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

#[cfg(test)]
#[path = "saga_tests.rs"]
mod tests;
