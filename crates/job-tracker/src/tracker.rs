//! The registry of active jobs.
//!
//! The rule it keeps: a job id is either active, remembered as finished, or
//! unknown — never two at once — because a job moves from the active map to
//! the finished memory under one shard lock, the same lock a cancel takes.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use jiff::Timestamp;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use crate::finished::{FinishedMemory, FinishedRecord};
use crate::handle::{JobHandle, JobShared};
use crate::metrics::{Metrics, RejectedLabels};
use crate::{
    CancelOutcome, CancelReason, Error, JobOptions, JobOutcome, JobState, JobStatus, ResourcePool,
    TrackerConfig,
};

/// A registry of cancellable jobs. Cheap to clone; clones share the registry.
///
/// ```
/// use job_tracker::{CancelOutcome, CancelReason, JobOptions, JobOutcome, JobTracker, TrackerConfig};
///
/// let tracker = JobTracker::new(TrackerConfig::default());
/// let job = tracker.register("a", JobOptions::default())?;
/// assert_eq!(tracker.list().len(), 1);
/// job.finish(JobOutcome::Completed);
/// assert_eq!(tracker.cancel("a", CancelReason::ClientRequest), CancelOutcome::Finished);
/// assert_eq!(tracker.cancel("b", CancelReason::ClientRequest), CancelOutcome::Unknown);
/// # Ok::<(), job_tracker::Error>(())
/// ```
#[derive(Clone)]
pub struct JobTracker {
    inner: Arc<TrackerInner>,
}

impl JobTracker {
    /// A tracker with the given limits.
    pub fn new(config: TrackerConfig) -> Self {
        let shards = config.shards.max(1);
        let per_shard_capacity = config.finished_capacity.div_ceil(shards);
        let shards = (0..shards)
            .map(|_| {
                Mutex::new(Shard {
                    active: HashMap::new(),
                    finished: FinishedMemory::new(per_shard_capacity, config.finished_max_age),
                })
            })
            .collect();
        Self {
            inner: Arc::new(TrackerInner {
                shards,
                hasher: RandomState::new(),
                pool: ResourcePool::new(config.reservation_budget),
                active: AtomicUsize::new(0),
                next_generation: AtomicU64::new(0),
                metrics: Metrics::new(),
                config,
            }),
        }
    }

    /// Registers a job: checks the id is free, the job count and the
    /// reservation fit, and starts the deadline timer. Nothing is taken when it
    /// fails.
    ///
    /// A deadline needs a Tokio runtime (for its timer); registering without
    /// one fails with [`Error::NoRuntime`].
    pub fn register(&self, job_id: &str, options: JobOptions) -> Result<JobHandle, Error> {
        let result = self.try_register(job_id, options);
        if let Err(error) = &result {
            let reason = match error {
                Error::Duplicate { .. } => "duplicate",
                Error::Exhausted { .. } => "exhausted",
                Error::AtCapacity { .. } => "at_capacity",
                Error::EmptyJobId => "empty_job_id",
                Error::NoRuntime => "no_runtime",
            };
            self.inner
                .metrics
                .rejected
                .get_or_create(&RejectedLabels { reason })
                .inc();
        }
        result
    }

    /// Asks the job to stop. Idempotent: the first accepted cancel answers
    /// [`CancelOutcome::Cancelling`] and fixes the reason; later ones answer
    /// [`CancelOutcome::AlreadyCancelling`], or [`CancelOutcome::Finished`] once
    /// the job ended (while it is remembered), or [`CancelOutcome::Unknown`].
    ///
    /// When it answers `Cancelling`, the job's step gate is already closed: no
    /// step is committed after this call returns.
    pub fn cancel(&self, job_id: &str, reason: CancelReason) -> CancelOutcome {
        let now = Instant::now();
        let outcome = {
            let mut shard = self.inner.shard(job_id);
            if let Some(job) = shard.active.get(job_id) {
                // Under the shard lock, so the job cannot move to the finished
                // memory between this check and the cancel.
                if job.request_cancel(reason) {
                    CancelOutcome::Cancelling
                } else {
                    CancelOutcome::AlreadyCancelling
                }
            } else if shard.finished.get(job_id, now).is_some() {
                CancelOutcome::Finished
            } else {
                CancelOutcome::Unknown
            }
        };
        self.inner.metrics.record_cancel_request(outcome);
        tracing::debug!(
            job_id,
            reason = reason.as_label(),
            outcome = outcome.as_label(),
            "cancel requested"
        );
        outcome
    }

    /// Cancels every active job with `reason` (for example on shutdown) and
    /// returns how many cancels were accepted.
    pub fn cancel_all(&self, reason: CancelReason) -> usize {
        self.inner
            .shards
            .iter()
            .map(|shard| {
                let shard = lock(shard);
                shard
                    .active
                    .values()
                    .filter(|job| job.request_cancel(reason))
                    .count()
            })
            .sum()
    }

    /// The status of a job that is active or remembered as finished.
    pub fn get(&self, job_id: &str) -> Option<JobStatus> {
        let now = Instant::now();
        let mut shard = self.inner.shard(job_id);
        if let Some(job) = shard.active.get(job_id) {
            return Some(active_status(job));
        }
        shard
            .finished
            .get(job_id, now)
            .map(|record| finished_status(job_id, record))
    }

    /// The status of every active job, oldest first.
    pub fn list(&self) -> Vec<JobStatus> {
        let mut jobs: Vec<(u64, JobStatus)> = self
            .inner
            .shards
            .iter()
            .flat_map(|shard| {
                let shard = lock(shard);
                shard
                    .active
                    .values()
                    .map(|job| (job.generation, active_status(job)))
                    .collect::<Vec<_>>()
            })
            .collect();
        jobs.sort_unstable_by_key(|(generation, _)| *generation);
        jobs.into_iter().map(|(_, status)| status).collect()
    }

    /// How many jobs are active.
    pub fn active_count(&self) -> usize {
        self.inner.active.load(Ordering::Acquire)
    }

    /// The pool that job reservations are taken from.
    pub fn pool(&self) -> &ResourcePool {
        &self.inner.pool
    }

    /// The limits this tracker was built with.
    pub fn config(&self) -> &TrackerConfig {
        &self.inner.config
    }

    /// Registers the tracker's metrics under the `job_tracker_` prefix.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.inner
            .metrics
            .register(registry, self.inner.pool.reserved_gauge());
    }

    fn try_register(&self, job_id: &str, options: JobOptions) -> Result<JobHandle, Error> {
        if job_id.is_empty() {
            return Err(Error::EmptyJobId);
        }
        let inner = &self.inner;
        let runtime = match options.deadline {
            Some(_) => Some(tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?),
            None => None,
        };
        let mut shard = inner.shard(job_id);
        if shard.active.contains_key(job_id) {
            return Err(Error::Duplicate {
                job_id: job_id.to_owned(),
            });
        }
        let slot = ActiveSlot::acquire(inner)?;
        let units = options.reservation.unwrap_or(0);
        let reservation = match options.reservation {
            None => None,
            Some(units) => Some(inner.pool.reserve(units).ok_or_else(|| Error::Exhausted {
                requested: units,
                available: inner.pool.available(),
                budget: inner.pool.budget(),
            })?),
        };
        // An unrepresentable deadline (centuries away) is no deadline at all.
        let now = Instant::now();
        let deadline = options.deadline.and_then(|d| now.checked_add(d));
        let deadline_wall = options
            .deadline
            .and_then(|d| Timestamp::now().checked_add(d).ok());
        let id: Arc<str> = Arc::from(job_id);
        let generation = inner.next_generation.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(JobShared::new(
            Arc::clone(&id),
            generation,
            deadline,
            deadline_wall,
            units,
        ));
        shard.finished.forget(job_id);
        shard.active.insert(id, Arc::clone(&shared));
        drop(shard);
        slot.keep();
        inner.metrics.started.inc();
        inner.metrics.active.inc();

        if let (Some(runtime), Some(deadline)) = (runtime, deadline) {
            let job = Arc::clone(&shared);
            runtime.spawn(async move {
                tokio::select! {
                    // Ends the timer as soon as the job ends or is cancelled.
                    () = job.token.cancelled() => {}
                    () = tokio::time::sleep_until(deadline) => {
                        if job.request_cancel(CancelReason::Deadline) {
                            tracing::debug!(job_id = &*job.id, "job deadline passed");
                        }
                    }
                }
            });
        }
        Ok(JobHandle {
            shared,
            tracker: Arc::clone(inner),
            reservation,
            outcome: None,
        })
    }
}

impl fmt::Debug for JobTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobTracker")
            .field("active", &self.active_count())
            .field("pool", &self.inner.pool)
            .field("config", &self.inner.config)
            .finish()
    }
}

pub(crate) struct TrackerInner {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    pool: ResourcePool,
    active: AtomicUsize,
    next_generation: AtomicU64,
    pub(crate) metrics: Metrics,
    config: TrackerConfig,
}

struct Shard {
    active: HashMap<Arc<str>, Arc<JobShared>>,
    finished: FinishedMemory,
}

impl TrackerInner {
    fn shard(&self, job_id: &str) -> MutexGuard<'_, Shard> {
        let len = self.shards.len();
        // `len` is at least 1, and the remainder of a u64 by it fits a usize.
        let index = usize::try_from(self.hasher.hash_one(job_id) % len as u64).unwrap_or(0);
        lock(&self.shards[index])
    }

    /// Moves a job from the active map to the finished memory (called once,
    /// from the handle's `Drop`).
    pub(crate) fn unregister(&self, job: &JobShared, outcome: JobOutcome) {
        let now = Instant::now();
        {
            let mut shard = self.shard(&job.id);
            // Only the registration this handle owns: never another generation.
            let ours = shard
                .active
                .get(&*job.id)
                .is_some_and(|active| active.generation == job.generation);
            if ours {
                shard.active.remove(&*job.id);
            }
            let record = FinishedRecord {
                generation: job.generation,
                outcome,
                finished_at: now,
                finished_wall: Timestamp::now(),
                started_wall: job.started_wall,
                steps: job.steps(),
            };
            shard.finished.insert(Arc::clone(&job.id), record, now);
        }
        self.active.fetch_sub(1, Ordering::AcqRel);
        self.metrics.active.dec();
        self.metrics.record_finished(outcome);
        tracing::debug!(
            job_id = &*job.id,
            outcome = outcome.as_label(),
            "job finished"
        );
    }
}

/// One unit of the active-job count, given back unless kept.
struct ActiveSlot<'a> {
    inner: &'a TrackerInner,
    kept: bool,
}

impl<'a> ActiveSlot<'a> {
    fn acquire(inner: &'a TrackerInner) -> Result<Self, Error> {
        let limit = inner.config.max_active_jobs;
        inner
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |active| match limit {
                Some(limit) if active >= limit => None,
                _ => Some(active.saturating_add(1)),
            })
            .map_err(|_| Error::AtCapacity {
                limit: limit.unwrap_or(usize::MAX),
            })?;
        Ok(Self { inner, kept: false })
    }

    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for ActiveSlot<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.inner.active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A poisoned shard only means another thread panicked while holding it; the
/// maps stay consistent (every mutation is a single insert or remove), so keep
/// serving rather than spreading the panic.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

fn active_status(job: &JobShared) -> JobStatus {
    JobStatus {
        job_id: job.id.to_string(),
        state: match job.reason() {
            Some(reason) => JobState::Cancelling { reason },
            None => JobState::Running,
        },
        started_at: job.started_wall,
        deadline: job.deadline_wall,
        reserved_units: job.reserved_units,
        steps: job.steps(),
    }
}

fn finished_status(job_id: &str, record: &FinishedRecord) -> JobStatus {
    JobStatus {
        job_id: job_id.to_owned(),
        state: JobState::Finished {
            outcome: record.outcome,
            finished_at: record.finished_wall,
        },
        started_at: record.started_wall,
        deadline: None,
        reserved_units: 0,
        steps: record.steps,
    }
}
