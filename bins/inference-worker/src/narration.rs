//! The cancellation story told as log events a person can follow: the
//! request, its completion, and a cancel for a job nobody knows.
//!
//! The rule it keeps: every narration event carries `actor` (this worker),
//! `action` (`cancel` or `cancel_complete`), `job_id`, `correlation_id` (of
//! the request the line belongs to) and `human`, one sentence that says what
//! happened without knowing the code. A cancel for an unknown job is a WARN:
//! it answers 202 like any other, but a client cancelling ids the worker
//! never ran is usually talking to the wrong replica.

use std::time::Duration;

use job_tracker::CancelOutcome;

/// The `actor` of every narration event.
pub(crate) const ACTOR: &str = "inference-worker";
/// The `action` of a cancel request.
pub(crate) const ACTION_CANCEL: &str = "cancel";
/// The `action` of a cancelled stream's end.
pub(crate) const ACTION_CANCEL_COMPLETE: &str = "cancel_complete";

/// `POST /cancel` was answered for `job_id` with `outcome`.
pub(crate) fn cancel_requested(job_id: &str, correlation_id: &str, outcome: CancelOutcome) {
    let human = match outcome {
        CancelOutcome::Cancelling => {
            format!("Cancelling job {job_id}: no token is sent after this answer")
        }
        CancelOutcome::AlreadyCancelling => {
            format!("Job {job_id} is already being cancelled; nothing more to do")
        }
        CancelOutcome::Finished => format!("Job {job_id} already finished; nothing to cancel"),
        CancelOutcome::Unknown => format!(
            "Cancel requested for unknown job {job_id} (never started here, or finished too long ago to be remembered); answered 202 all the same"
        ),
    };
    let unknown = outcome == CancelOutcome::Unknown;
    let outcome = outcome.as_label();
    if unknown {
        tracing::warn!(
            actor = ACTOR,
            action = ACTION_CANCEL,
            job_id,
            correlation_id,
            outcome,
            human = %human,
            "cancel requested for an unknown job"
        );
    } else {
        tracing::info!(
            actor = ACTOR,
            action = ACTION_CANCEL,
            job_id,
            correlation_id,
            outcome,
            human = %human,
            "cancel requested"
        );
    }
}

/// The stream of `job_id` (requested under `correlation_id`) ended because
/// a client cancelled it, after `tokens` tokens; `stop` is how long after
/// the first cancel request, and that request's correlation id, when known.
pub(crate) fn cancel_complete(
    job_id: &str,
    correlation_id: &str,
    tokens: u64,
    stop: Option<(Duration, &str)>,
) {
    match stop {
        Some((took, cancel_correlation_id)) => {
            let stop_ms = took.as_secs_f64() * 1_000.0;
            tracing::info!(
                actor = ACTOR,
                action = ACTION_CANCEL_COMPLETE,
                job_id,
                correlation_id,
                cancel_correlation_id,
                tokens,
                stop_ms,
                human = %format_args!(
                    "Job {job_id} cancelled after {tokens} tokens; it stopped {stop_ms:.1} ms after the cancel request"
                ),
                "cancel complete"
            );
        }
        // Only when the cancel landed in the instant between the job's
        // admission and its stream's start.
        None => tracing::info!(
            actor = ACTOR,
            action = ACTION_CANCEL_COMPLETE,
            job_id,
            correlation_id,
            tokens,
            human = %format_args!("Job {job_id} cancelled after {tokens} tokens"),
            "cancel complete"
        ),
    }
}
