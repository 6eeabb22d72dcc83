//! The background renewal of a held lock.
//!
//! Rule kept here: a guard either renews before its renew deadline or
//! reports the loss at that deadline — never later. Every attempt is bounded
//! by the time left until the deadline (see `GuardShared::write`), and
//! retries back off but never sleep past it. A renewal task that stops for
//! any other reason than its guard ending (a panic, its runtime shutting
//! down) reports the loss as it stops: a guard nobody renews is not held.

use std::sync::Arc;

use resilience::Backoff;
use tokio::time::Instant;
use tracing::debug;

use crate::error::{Error, LossReason};
use crate::guard::GuardShared;

/// Starts renewing `guard` every `renew_interval` until it ends, on the
/// guard's runtime.
pub(crate) fn spawn(guard: Arc<GuardShared>) {
    let runtime = guard.runtime.clone();
    // Moved into the task before it first runs: a task dropped unstarted
    // (its runtime shutting down at once) reports the loss too.
    let report = ReportLossOnStop(Arc::clone(&guard));
    runtime.spawn(async move {
        let _report = report;
        run(guard).await;
    });
}

/// Reports the loss when the renewal task is dropped while its guard is
/// still live: unwinding from a panic, or the runtime dropping its tasks.
struct ReportLossOnStop(Arc<GuardShared>);

impl Drop for ReportLossOnStop {
    fn drop(&mut self) {
        if !self.0.ended.is_cancelled() {
            self.0.mark_lost(&LossReason::RenewalStopped);
        }
    }
}

async fn run(guard: Arc<GuardShared>) {
    let config = &guard.lock.config;
    let mut backoff = Backoff::new(config.backoff.clone());
    loop {
        // Any successful write (a renewal, or a waiting-for annotation)
        // moves the schedule: renew one interval after the last one.
        let next = guard.last_renewed() + config.renew_interval;
        if Instant::now() < next {
            tokio::select! {
                () = guard.ended.cancelled() => return,
                () = tokio::time::sleep_until(next) => {}
            }
            continue;
        }
        match guard.write(false).await {
            Ok(()) => backoff.reset(),
            Err(Error::Lost { .. }) => return,
            Err(e) => {
                guard.lock.metrics.renew_failures.inc();
                debug!(lease = %guard.name, error = %e, "renewal failed; retrying before the renew deadline");
                let delay = backoff.next().unwrap_or(config.backoff.max);
                // Wake at the deadline at the latest, so the next attempt
                // reports the loss on time.
                let wake = (Instant::now() + delay).min(guard.valid_until());
                tokio::select! {
                    () = guard.ended.cancelled() => return,
                    () = tokio::time::sleep_until(wake) => {}
                }
            }
        }
        if guard.ended.is_cancelled() {
            return;
        }
    }
}
