//! The one error type of this crate: why a job could not be registered.
//!
//! Every variant answers [`Error::is_transient`], so callers (an HTTP handler
//! turning it into 409 or 429, a queue deciding whether to retry) never parse
//! messages.

/// Why [`JobTracker::register`](crate::JobTracker::register) refused a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A job with this id is still active; ids must be unique among active jobs
    /// so that a cancel can never hit the wrong job.
    #[error("job {job_id:?} is already active")]
    Duplicate {
        /// The id that is already in use.
        job_id: String,
    },
    /// The reservation asked for more units than the pool has free right now.
    #[error("reservation of {requested} units refused: {available} of {budget} units free")]
    Exhausted {
        /// Units the job asked for.
        requested: u64,
        /// Units free when the request was made.
        available: u64,
        /// The pool's total budget.
        budget: u64,
    },
    /// The tracker already runs its configured maximum of concurrent jobs.
    #[error("at capacity: {limit} jobs are already active")]
    AtCapacity {
        /// The configured maximum of concurrent jobs.
        limit: usize,
    },
    /// The job id is empty; an empty id could never be cancelled by name.
    #[error("job id must not be empty")]
    EmptyJobId,
    /// A deadline was requested outside a Tokio runtime, so no timer can enforce it.
    #[error("a job deadline needs a Tokio runtime to run its timer")]
    NoRuntime,
}

impl Error {
    /// Whether retrying the same registration later can succeed.
    ///
    /// Capacity and budget free up as other jobs end; a duplicate id, an empty
    /// id or a missing runtime stay wrong until the caller changes something.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Exhausted { .. } | Self::AtCapacity { .. } => true,
            Self::Duplicate { .. } | Self::EmptyJobId | Self::NoRuntime => false,
        }
    }
}
