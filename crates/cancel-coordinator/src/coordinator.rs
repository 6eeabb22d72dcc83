//! [`CancellationCoordinator`]: many cancellations at once, one per task at a
//! time, coalesced to the newest head.
//!
//! The rule it keeps: **a request taken is never dropped silently.** Each
//! task has at most one operation running and one request waiting; a newer
//! request replaces the waiting one (newest push wins, highest priority
//! kept), so twenty pushes to one task while its cancellation runs become at
//! most one more operation. A request that cannot be taken (queue full,
//! shutting down, malformed) is refused with a clear, counted error; one
//! that fails transiently (a breaker open, the API down, the lock busy) is
//! queued again with backoff; one that waited longer than the maximum age
//! is dropped, counted and logged. Since the sensor records every
//! supersession in the task's state first, whatever is refused or dropped
//! here is found again by the recovery reconciler (DESIGN §1).
//!
//! The queue and the per-task table share one mutex, so "queued" in one and
//! "waiting" in the other can never disagree.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use jiff::Timestamp;
use resilience::{Backoff, BackoffPolicy, Transient};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::request::CancellationRequest;
use crate::saga::{Progress, Report, SagaStep, StateAwareCancellation};
use crate::{Error, Result};

/// How the coordinator behaves.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// Operations run at once (across tasks). Default 10.
    pub workers: usize,
    /// Most tasks waiting in the queue. Default 10 000.
    pub queue_capacity: usize,
    /// A request waiting longer than this is dropped (and counted): by then
    /// recovery has found it anyway. Default 10 min.
    pub max_age: Duration,
    /// Delays before a transiently failed request runs again.
    pub retry_backoff: BackoffPolicy,
    /// Most transient failures in a row for one request before it is
    /// dropped to recovery. Default 5.
    pub max_retries: u32,
    /// Reports of finished operations kept for [`CancellationCoordinator::status`].
    pub history: usize,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            workers: 10,
            queue_capacity: 10_000,
            max_age: Duration::from_secs(600),
            retry_backoff: BackoffPolicy {
                initial: Duration::from_millis(500),
                multiplier: 2.0,
                max: Duration::from_secs(30),
                jitter: 0.25,
                max_attempts: None,
            },
            max_retries: 5,
            history: 1_000,
        }
    }
}

impl CoordinatorConfig {
    /// Rejects settings that make no sense, naming them.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(m.to_owned()));
        if self.workers == 0 || self.workers > 1_000 {
            return bad("workers must be in 1..=1000");
        }
        if self.queue_capacity == 0 {
            return bad("queue_capacity must be at least 1");
        }
        if self.max_age.is_zero() {
            return bad("max_age must be greater than zero");
        }
        self.retry_backoff
            .validate()
            .map_err(|e| Error::Config(format!("retry_backoff: {e}")))
    }
}

/// What [`CancellationCoordinator::submit`] did with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Submitted {
    /// Queued: the task had nothing waiting (it runs next, or after the
    /// operation running for its task).
    Queued,
    /// Folded into the request already waiting for the task (the newest
    /// head of the two is kept).
    Coalesced,
}

/// Where a task's cancellation is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// The task.
    pub task_id: String,
    /// The operation running, with its progress.
    pub running: Option<Running>,
    /// The request waiting to run next (the newest one).
    pub waiting: Option<Waiting>,
    /// The last operations that ended for this task, newest last.
    pub recent: Vec<Finished>,
}

/// An operation running now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    /// The head of the request being handled.
    pub head_sha: String,
    /// Its correlation id.
    pub correlation_id: String,
    /// When it started (wall clock).
    pub started_at: Timestamp,
    /// Its step and timings.
    pub progress: Progress,
}

/// A request waiting for its turn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    /// Its head (the newest seen for the task).
    pub head_sha: String,
    /// Its correlation id.
    pub correlation_id: String,
    /// When it was first queued (wall clock).
    pub queued_at: Timestamp,
    /// Transient failures so far.
    pub retries: u32,
}

/// An operation that ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    /// When it ended (wall clock).
    pub at: Timestamp,
    /// Its correlation id.
    pub correlation_id: String,
    /// Its report, or the error it ended with.
    pub result: std::result::Result<Report, String>,
}

/// Runs cancellations for many tasks at once. Cheap to clone.
#[derive(Clone)]
pub struct CancellationCoordinator {
    inner: Arc<Inner>,
}

struct Inner {
    saga: StateAwareCancellation,
    config: CoordinatorConfig,
    metrics: Metrics,
    table: Mutex<Table>,
    available: Notify,
    stop: CancellationToken,
}

#[derive(Default)]
struct Table {
    tasks: HashMap<String, Entry>,
    /// Task ids in serving order: priority (highest first), then age.
    queue: BTreeMap<(Reverse<u8>, Instant, u64), String>,
    seq: u64,
    finished: VecDeque<(String, Finished)>,
}

#[derive(Default)]
struct Entry {
    waiting: Option<Pending>,
    running: Option<(Running, watch::Receiver<Progress>)>,
}

struct Pending {
    request: CancellationRequest,
    queued_at: Instant,
    queued_wall: Timestamp,
    /// Its key in the queue, while queued (absent while it sleeps before a
    /// retry, or while its task runs).
    key: Option<(Reverse<u8>, Instant, u64)>,
    retries: u32,
}

impl std::fmt::Debug for CancellationCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancellationCoordinator")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// The coordinator's workers; awaiting [`shutdown`](Workers::shutdown)
/// drains them.
pub struct Workers {
    coordinator: CancellationCoordinator,
    tasks: JoinSet<()>,
}

impl CancellationCoordinator {
    /// A coordinator over `saga` with `config` (validated). Start its
    /// workers with [`start`](Self::start).
    pub fn new(saga: StateAwareCancellation, config: CoordinatorConfig) -> Result<Self> {
        config.validate()?;
        let metrics = saga.metrics().clone();
        Ok(Self {
            inner: Arc::new(Inner {
                saga,
                config,
                metrics,
                table: Mutex::new(Table::default()),
                available: Notify::new(),
                stop: CancellationToken::new(),
            }),
        })
    }

    /// The metrics (shared with the saga).
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Registers everything the coordinator reports: its and its saga's
    /// metrics and, when the saga was built with
    /// [`SagaBuilder::breakers`](crate::SagaBuilder::breakers), the
    /// breakers' (see [`StateAwareCancellation::register`]). A process
    /// registers this instead of [`metrics`](Self::metrics) alone, so the
    /// breaker alert and panel have series to watch.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        self.inner.saga.register(registry);
    }

    /// Starts the worker pool on the current runtime.
    pub fn start(&self) -> Workers {
        let mut tasks = JoinSet::new();
        for worker in 0..self.inner.config.workers {
            let coordinator = self.clone();
            tasks.spawn(async move { coordinator.work(worker).await });
        }
        Workers {
            coordinator: self.clone(),
            tasks,
        }
    }

    /// Takes `request` for its task: queued, or folded into the request
    /// already waiting (the newer push wins, the higher priority is kept).
    ///
    /// Errors: [`Error::InvalidRequest`], [`Error::QueueFull`] (nothing
    /// queued; the supersession in state waits for recovery),
    /// [`Error::ShuttingDown`].
    pub fn submit(&self, mut request: CancellationRequest) -> Result<Submitted> {
        let metrics = &self.inner.metrics;
        if self.inner.stop.is_cancelled() {
            metrics.reject("shutting_down");
            return Err(Error::ShuttingDown);
        }
        if let Err(e) = request.validate() {
            metrics.reject("invalid");
            return Err(e);
        }
        let now = Instant::now();
        let mut table = self.table();
        let Table {
            tasks, queue, seq, ..
        } = &mut *table;
        let entry = tasks.entry(request.task_id.clone()).or_default();
        if let Some(pending) = entry.waiting.as_mut() {
            coalesce(pending, request, queue);
            metrics.coalesced.inc();
            return Ok(Submitted::Coalesced);
        }
        if queue.len() >= self.inner.config.queue_capacity {
            if entry.running.is_none() {
                tasks.remove(&request.task_id);
            }
            metrics.reject("queue_full");
            return Err(Error::QueueFull {
                capacity: self.inner.config.queue_capacity,
            });
        }
        let running = entry.running.is_some();
        let mut pending = Pending {
            queued_at: now,
            queued_wall: Timestamp::now(),
            key: None,
            retries: 0,
            request,
        };
        // A task already running waits unqueued: its worker queues it on return.
        if !running {
            *seq += 1;
            let key = (Reverse(pending.request.priority), now, *seq);
            queue.insert(key, pending.request.task_id.clone());
            pending.key = Some(key);
        }
        entry.waiting = Some(pending);
        metrics.queue_depth.set(gauge(queue.len()));
        drop(table);
        self.inner.available.notify_one();
        Ok(Submitted::Queued)
    }

    /// Where `task_id`'s cancellation is: running (with per-step progress),
    /// waiting, and the last operations that ended.
    pub fn status(&self, task_id: &str) -> Option<TaskStatus> {
        let table = self.table();
        let recent: Vec<Finished> = table
            .finished
            .iter()
            .filter(|(t, _)| t == task_id)
            .map(|(_, f)| f.clone())
            .collect();
        let entry = table.tasks.get(task_id);
        if entry.is_none() && recent.is_empty() {
            return None;
        }
        Some(TaskStatus {
            task_id: task_id.to_owned(),
            running: entry.and_then(|e| e.running.as_ref()).map(running_now),
            waiting: entry.and_then(|e| e.waiting.as_ref()).map(waiting_now),
            recent,
        })
    }

    /// Every task with an operation running or a request waiting.
    pub fn list_active(&self) -> Vec<TaskStatus> {
        let table = self.table();
        let mut active: Vec<TaskStatus> = table
            .tasks
            .iter()
            .map(|(task_id, entry)| TaskStatus {
                task_id: task_id.clone(),
                running: entry.running.as_ref().map(running_now),
                waiting: entry.waiting.as_ref().map(waiting_now),
                recent: Vec::new(),
            })
            .collect();
        active.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        active
    }

    /// How many tasks wait in the queue.
    pub fn queued(&self) -> usize {
        self.table().queue.len()
    }

    /// One worker: takes the next task, runs its operation, repeats.
    async fn work(&self, worker: usize) {
        loop {
            let Some(next) = self.next().await else {
                debug!(worker, "coordinator worker stopping");
                return;
            };
            let task_id = next.request.task_id.clone();
            let result = self
                .inner
                .saga
                .run_observed(&next.request, Some(&next.progress))
                .await;
            self.done(next.request, next.retries, result);
            debug!(worker, task_id, "operation ended");
        }
    }

    /// The next request to run (marked running), or `None` on shutdown.
    async fn next(&self) -> Option<Taken> {
        loop {
            let notified = self.inner.available.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inner.stop.is_cancelled() {
                return None;
            }
            if let Some(next) = self.take() {
                return Some(next);
            }
            tokio::select! {
                () = self.inner.stop.cancelled() => return None,
                () = notified => {}
            }
        }
    }

    /// Pops the first queued task that has not expired.
    fn take(&self) -> Option<Taken> {
        let max_age = self.inner.config.max_age;
        let metrics = &self.inner.metrics;
        let mut table = self.table();
        loop {
            let (_, task_id) = table.queue.pop_first()?;
            metrics.queue_depth.set(gauge(table.queue.len()));
            let Some(entry) = table.tasks.get_mut(&task_id) else {
                continue;
            };
            let Some(pending) = entry.waiting.take() else {
                continue;
            };
            let waited = pending.queued_at.elapsed();
            if waited > max_age {
                metrics.reject("expired");
                warn!(
                    task_id,
                    correlation_id = %pending.request.correlation_id,
                    waited_s = waited.as_secs(),
                    "cancellation request waited past the maximum age; dropped (recovery finds it in the task's state)"
                );
                if entry.running.is_none() {
                    table.tasks.remove(&task_id);
                }
                continue;
            }
            metrics.queue_wait.observe(waited.as_secs_f64());
            let (tx, rx) = watch::channel(Progress {
                step: SagaStep::Lock,
                operation_id: None,
                runs_left: 0,
                done: Vec::new(),
            });
            let running = Running {
                head_sha: pending.request.head_sha.clone(),
                correlation_id: pending.request.correlation_id.clone(),
                started_at: Timestamp::now(),
                progress: rx.borrow().clone(),
            };
            entry.running = Some((running, rx));
            metrics.active.inc();
            return Some(Taken {
                request: pending.request,
                retries: pending.retries,
                progress: tx,
            });
        }
    }

    /// Records how an operation ended and queues what waits for its task.
    fn done(&self, request: CancellationRequest, retries: u32, result: Result<Report>) {
        let config = &self.inner.config;
        let metrics = &self.inner.metrics;
        metrics.active.dec();
        let retry = match &result {
            Err(e) if e.is_transient() && retries < config.max_retries => {
                let mut backoff = Backoff::new(config.retry_backoff.clone());
                let mut delay = config.retry_backoff.initial;
                for _ in 0..=retries {
                    delay = backoff.next_delay().unwrap_or(config.retry_backoff.max);
                }
                if let Some(after) = e.retry_after() {
                    delay = delay.max(after);
                }
                Some(delay)
            }
            Err(e) => {
                warn!(task_id = %request.task_id, correlation_id = %request.correlation_id, error = %e, retries, "cancellation failed; left to recovery");
                None
            }
            Ok(_) => None,
        };
        let finished = Finished {
            at: Timestamp::now(),
            correlation_id: request.correlation_id.clone(),
            result: result.map_err(|e| e.to_string()),
        };
        let task_id = request.task_id.clone();
        let mut table = self.table();
        table.finished.push_back((task_id.clone(), finished));
        while table.finished.len() > config.history {
            table.finished.pop_front();
        }
        let Table {
            tasks, queue, seq, ..
        } = &mut *table;
        let Some(entry) = tasks.get_mut(&task_id) else {
            return;
        };
        entry.running = None;
        if let Some(delay) = retry {
            metrics.retried.inc();
            // The failed request goes back as the waiting one, unless a newer
            // one arrived meanwhile (it covers this one).
            let pending = entry.waiting.get_or_insert_with(|| Pending {
                queued_at: Instant::now(),
                queued_wall: Timestamp::now(),
                key: None,
                retries: retries + 1,
                request,
            });
            pending.retries = pending.retries.max(retries + 1);
            info!(
                task_id,
                delay_ms = delay.as_millis(),
                retries = pending.retries,
                "cancellation failed transiently; queued again after a delay"
            );
            let coordinator = self.clone();
            let stop = self.inner.stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(delay) => coordinator.requeue(&task_id),
                }
            });
            return;
        }
        match entry.waiting.as_mut() {
            Some(pending) if pending.key.is_none() => {
                *seq += 1;
                let key = (Reverse(pending.request.priority), pending.queued_at, *seq);
                queue.insert(key, task_id.clone());
                pending.key = Some(key);
                metrics.queue_depth.set(gauge(queue.len()));
                drop(table);
                self.inner.available.notify_one();
            }
            Some(_) => {}
            None => {
                tasks.remove(&task_id);
            }
        }
    }

    /// Queues `task_id`'s waiting request after its retry delay.
    fn requeue(&self, task_id: &str) {
        let mut table = self.table();
        let Table {
            tasks, queue, seq, ..
        } = &mut *table;
        let Some(entry) = tasks.get_mut(task_id) else {
            return;
        };
        if entry.running.is_some() {
            return; // its worker queues it on return
        }
        if let Some(pending) = entry.waiting.as_mut()
            && pending.key.is_none()
        {
            *seq += 1;
            let key = (Reverse(pending.request.priority), Instant::now(), *seq);
            queue.insert(key, task_id.to_owned());
            pending.key = Some(key);
            self.inner.metrics.queue_depth.set(gauge(queue.len()));
            drop(table);
            self.inner.available.notify_one();
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // Every critical section leaves the table consistent before it can
        // panic (none of them calls out), so a poisoned lock is still usable.
        self.inner
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Workers {
    /// Stops taking work and waits up to `timeout` for the operations
    /// running to end; those still running then are aborted, leaving their
    /// journals for any replica to resume. Returns how many were aborted.
    pub async fn shutdown(mut self, timeout: Duration) -> usize {
        self.coordinator.inner.stop.cancel();
        let drained = tokio::time::timeout(timeout, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_ok() {
            return 0;
        }
        let aborted = self.tasks.len();
        warn!(
            aborted,
            "shutdown deadline passed; aborting running cancellations (their journals are resumable)"
        );
        self.tasks.shutdown().await;
        aborted
    }
}

/// A request taken by a worker, with what its run reports into.
struct Taken {
    request: CancellationRequest,
    /// Transient failures of this request so far.
    retries: u32,
    progress: watch::Sender<Progress>,
}

/// Folds `newer` into the waiting request: the newer push wins, the higher
/// priority is kept (re-keying its queue entry), the first queue time stays.
fn coalesce(
    pending: &mut Pending,
    newer: CancellationRequest,
    queue: &mut BTreeMap<(Reverse<u8>, Instant, u64), String>,
) {
    let priority = pending.request.priority.max(newer.priority);
    let is_newer = (newer.pushed_at, newer.head_sha.as_str())
        > (pending.request.pushed_at, pending.request.head_sha.as_str());
    if is_newer {
        pending.request = newer;
    }
    if priority != pending.request.priority {
        pending.request.priority = priority;
    }
    if let Some(key) = pending.key
        && key.0 != Reverse(priority)
    {
        let task_id = queue.remove(&key).unwrap_or_default();
        let rekeyed = (Reverse(priority), key.1, key.2);
        queue.insert(rekeyed, task_id);
        pending.key = Some(rekeyed);
    }
}

fn running_now((running, progress): &(Running, watch::Receiver<Progress>)) -> Running {
    Running {
        progress: progress.borrow().clone(),
        ..running.clone()
    }
}

fn waiting_now(pending: &Pending) -> Waiting {
    Waiting {
        head_sha: pending.request.head_sha.clone(),
        correlation_id: pending.request.correlation_id.clone(),
        queued_at: pending.queued_wall,
        retries: pending.retries,
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
