//! When each running job's first cancel request arrived, so that its stream
//! can say how long the stop took.
//!
//! The rule it keeps: an entry lives exactly as long as its job's stream
//! (registered after the job is admitted, removed when the stream's
//! [`StopClock`] drops), so the map never holds more entries than there are
//! running jobs, and a cancel for a job that is not running leaves nothing
//! behind.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// The first cancel request of one job: when it arrived, and its
/// correlation id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CancelRequested {
    /// When the request arrived (before the tracker accepted it).
    pub(crate) at: Instant,
    /// The cancel request's correlation id.
    pub(crate) correlation_id: String,
}

type Slot = Arc<OnceLock<CancelRequested>>;

/// The clocks of every running job, shared by the handlers.
#[derive(Debug, Default)]
pub(crate) struct StopClocks {
    running: Mutex<HashMap<String, Slot>>,
}

impl StopClocks {
    /// Starts the clock of an admitted job; the stream holds it.
    pub(crate) fn start(self: &Arc<Self>, job_id: &str) -> StopClock {
        let slot = Slot::default();
        self.lock().insert(job_id.to_owned(), Arc::clone(&slot));
        StopClock {
            clocks: Arc::clone(self),
            job_id: job_id.to_owned(),
            slot,
        }
    }

    /// Notes a cancel request for `job_id`, if it runs and none came before.
    /// Called before the tracker is asked, so the stop is timed from the
    /// request, not from after the answer.
    pub(crate) fn requested(&self, job_id: &str, correlation_id: &str) {
        if let Some(slot) = self.lock().get(job_id) {
            let _ = slot.set(CancelRequested {
                at: Instant::now(),
                correlation_id: correlation_id.to_owned(),
            });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// One job's clock, owned by its stream.
#[derive(Debug)]
pub(crate) struct StopClock {
    clocks: Arc<StopClocks>,
    job_id: String,
    slot: Slot,
}

impl StopClock {
    /// The first cancel request and the time since it, if one came.
    pub(crate) fn since_request(&self) -> Option<(Duration, &CancelRequested)> {
        self.slot
            .get()
            .map(|requested| (requested.at.elapsed(), requested))
    }
}

impl Drop for StopClock {
    fn drop(&mut self) {
        let mut running = self.clocks.lock();
        // Only our own entry: a job with the same id admitted after ours
        // ended has its own.
        if running
            .get(&self.job_id)
            .is_some_and(|slot| Arc::ptr_eq(slot, &self.slot))
        {
            running.remove(&self.job_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_stop_is_timed_from_the_first_request_and_entries_leave_with_their_stream() {
        let clocks = Arc::new(StopClocks::default());
        clocks.requested("not-running", "c0");
        assert_eq!(
            clocks.len(),
            0,
            "a cancel for no running job leaves nothing"
        );

        let clock = clocks.start("job-1");
        assert!(clock.since_request().is_none());
        clocks.requested("job-1", "c1");
        tokio::time::advance(Duration::from_millis(30)).await;
        clocks.requested("job-1", "c2");
        tokio::time::advance(Duration::from_millis(12)).await;
        let (took, first) = clock.since_request().unwrap();
        assert_eq!(took, Duration::from_millis(42));
        assert_eq!(first.correlation_id, "c1", "the first request wins");

        drop(clock);
        assert_eq!(clocks.len(), 0);
    }

    #[test]
    fn a_late_drop_does_not_remove_the_clock_of_a_newer_job_with_the_same_id() {
        let clocks = Arc::new(StopClocks::default());
        let old = clocks.start("reused");
        let new = clocks.start("reused");
        drop(old);
        clocks.requested("reused", "c1");
        assert!(
            new.since_request().is_some(),
            "the newer job's clock still runs"
        );
        drop(new);
        assert_eq!(clocks.len(), 0);
    }
}
