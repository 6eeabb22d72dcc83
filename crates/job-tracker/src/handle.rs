//! The owner side of one running job.
//!
//! The rule it keeps: a [`JobHandle`] is the only owner of its job's
//! registration and reservation, and its `Drop` gives both back exactly once,
//! whichever way the job ends (finished, failed, cancelled, panicked, or its
//! client went away).

use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use jiff::Timestamp;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::pool::Reservation;
use crate::tracker::TrackerInner;
use crate::{CancelReason, JobOutcome};

/// A registered job, held by the code that runs it.
///
/// The job polls [`JobHandle::is_cancelled`] (one atomic load) or awaits
/// [`JobHandle::cancelled`]; each unit of output it produces goes through
/// [`JobHandle::commit_step`], which refuses once a cancel was accepted, so no
/// output is ever produced after [`JobTracker::cancel`](crate::JobTracker::cancel)
/// answered [`Cancelling`](crate::CancelOutcome::Cancelling).
///
/// Dropping the handle unregisters the job, remembers it as finished and
/// releases its reservation; [`JobHandle::finish`] does the same with an
/// explicit outcome.
///
/// ```
/// use job_tracker::{CancelOutcome, CancelReason, JobOptions, JobTracker, TrackerConfig};
///
/// let tracker = JobTracker::new(TrackerConfig::default());
/// let job = tracker.register("job-1", JobOptions::default())?;
/// assert_eq!(job.commit_step(), Some(0));
/// assert_eq!(tracker.cancel("job-1", CancelReason::ClientRequest), CancelOutcome::Cancelling);
/// assert!(job.is_cancelled());
/// assert_eq!(job.commit_step(), None, "nothing is produced after an accepted cancel");
/// drop(job);
/// assert_eq!(tracker.cancel("job-1", CancelReason::ClientRequest), CancelOutcome::Finished);
/// # Ok::<(), job_tracker::Error>(())
/// ```
pub struct JobHandle {
    pub(crate) shared: Arc<JobShared>,
    pub(crate) tracker: Arc<TrackerInner>,
    pub(crate) reservation: Option<Reservation>,
    pub(crate) outcome: Option<JobOutcome>,
}

impl JobHandle {
    /// The job's id.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// A token that is cancelled when the job is cancelled (or ends).
    ///
    /// It is a child of the job's own token: cancelling it does not cancel the
    /// job (use [`JobHandle::cancel`] for that, so the reason is recorded), but
    /// it can be handed to helper tasks that must stop with the job.
    pub fn token(&self) -> CancellationToken {
        self.shared.token.child_token()
    }

    /// Completes once the job is cancelled, for `select!` against the work.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.shared.token.cancelled()
    }

    /// Whether a cancel was accepted: one atomic load, cheap enough for every
    /// decode step.
    pub fn is_cancelled(&self) -> bool {
        self.shared.is_cancelled()
    }

    /// Why the job was cancelled, once it was.
    pub fn reason(&self) -> Option<CancelReason> {
        self.shared.reason()
    }

    /// When the job's deadline passes, if it has one.
    pub fn deadline(&self) -> Option<Instant> {
        self.shared.deadline
    }

    /// Units this job holds in the tracker's resource pool.
    pub fn reserved_units(&self) -> u64 {
        self.reservation.as_ref().map_or(0, Reservation::units)
    }

    /// Claims the next output step, returning its index (0, 1, 2, …), or
    /// `None` once a cancel has been accepted.
    ///
    /// Commit and cancel are ordered by one atomic word: either the step was
    /// committed before the cancel was accepted, or it is refused. A job that
    /// emits only committed steps therefore never emits anything after a
    /// cancel was acknowledged.
    pub fn commit_step(&self) -> Option<u64> {
        self.shared.commit_step()
    }

    /// How many steps were committed so far.
    pub fn steps(&self) -> u64 {
        self.shared.steps()
    }

    /// Steps committed after the cancel was accepted: the step count now
    /// minus the count the cancel saw when it closed the gate. The gate makes
    /// this 0; it is measured, not assumed, so a regression shows up in the
    /// `job_tracker_steps_after_cancel` metric.
    pub fn steps_after_cancel(&self) -> u64 {
        self.shared.steps_after_cancel()
    }

    /// Cancels this job from the inside (for example because its client went
    /// away). Returns `false` when it was already cancelled; the first reason
    /// wins.
    pub fn cancel(&self, reason: CancelReason) -> bool {
        self.shared.request_cancel(reason)
    }

    /// Ends the job with an explicit outcome (instead of letting `Drop` infer
    /// `Cancelled` or `Abandoned`).
    pub fn finish(mut self, outcome: JobOutcome) {
        self.outcome = Some(outcome);
        // Drop does the rest, so `finish` and every other path share one cleanup.
    }
}

impl fmt::Debug for JobHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobHandle")
            .field("id", &self.shared.id)
            .field("reason", &self.reason())
            .field("steps", &self.steps())
            .field("reserved_units", &self.reserved_units())
            .finish()
    }
}

impl Drop for JobHandle {
    fn drop(&mut self) {
        let outcome = self.outcome.take().unwrap_or_else(|| match self.reason() {
            Some(reason) => JobOutcome::Cancelled(reason),
            None => JobOutcome::Abandoned,
        });
        if let Some(accepted) = self.shared.accepted_at.get() {
            let metrics = &self.tracker.metrics;
            metrics
                .cancel_to_stop
                .observe(accepted.elapsed().as_secs_f64());
            metrics
                .steps_after_cancel
                .inc_by(self.shared.steps_after_cancel());
        }
        // Units first: once a cancel can answer `Finished`, they are free.
        drop(self.reservation.take());
        self.tracker.unregister(&self.shared, outcome);
        // Stops the deadline timer and every child token handed out.
        self.shared.token.cancel();
    }
}

/// State shared between a job's handle, its tracker entry and its deadline timer.
pub(crate) struct JobShared {
    pub(crate) id: Arc<str>,
    pub(crate) generation: u64,
    pub(crate) token: CancellationToken,
    /// Low 63 bits: committed steps; top bit: a cancel was accepted. One word,
    /// so that committing a step and accepting a cancel are totally ordered.
    steps: AtomicU64,
    /// 0 while running, else the [`CancelReason`] code of the first cancel.
    reason: AtomicU8,
    /// Committed steps when the cancel closed the gate (`u64::MAX` before).
    steps_at_cancel: AtomicU64,
    pub(crate) accepted_at: OnceLock<Instant>,
    pub(crate) started_wall: Timestamp,
    pub(crate) deadline: Option<Instant>,
    pub(crate) deadline_wall: Option<Timestamp>,
    pub(crate) reserved_units: u64,
}

const CANCEL_ACCEPTED: u64 = 1 << 63;

impl JobShared {
    pub(crate) fn new(
        id: Arc<str>,
        generation: u64,
        deadline: Option<Instant>,
        deadline_wall: Option<Timestamp>,
        reserved_units: u64,
    ) -> Self {
        Self {
            id,
            generation,
            token: CancellationToken::new(),
            steps: AtomicU64::new(0),
            reason: AtomicU8::new(0),
            steps_at_cancel: AtomicU64::new(u64::MAX),
            accepted_at: OnceLock::new(),
            started_wall: Timestamp::now(),
            deadline,
            deadline_wall,
            reserved_units,
        }
    }

    /// Accepts a cancel unless one was accepted before. The order matters:
    /// claim the reason, stamp the time, close the step gate (the acceptance
    /// point), then wake the waiters.
    pub(crate) fn request_cancel(&self, reason: CancelReason) -> bool {
        if self
            .reason
            .compare_exchange(0, reason.code(), Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        let _ = self.accepted_at.set(Instant::now());
        let before = self.steps.fetch_or(CANCEL_ACCEPTED, Ordering::AcqRel);
        self.steps_at_cancel
            .store(before & !CANCEL_ACCEPTED, Ordering::Release);
        self.token.cancel();
        true
    }

    pub(crate) fn commit_step(&self) -> Option<u64> {
        self.steps
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                // Below the flag bit, so `+ 1` can neither overflow nor set it.
                (word < CANCEL_ACCEPTED - 1).then_some(word + 1)
            })
            .ok()
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.steps.load(Ordering::Acquire) & CANCEL_ACCEPTED != 0
    }

    pub(crate) fn steps(&self) -> u64 {
        self.steps.load(Ordering::Acquire) & !CANCEL_ACCEPTED
    }

    pub(crate) fn steps_after_cancel(&self) -> u64 {
        match self.steps_at_cancel.load(Ordering::Acquire) {
            u64::MAX => 0,
            at_cancel => self.steps().saturating_sub(at_cancel),
        }
    }

    pub(crate) fn reason(&self) -> Option<CancelReason> {
        CancelReason::from_code(self.reason.load(Ordering::Acquire))
    }
}
