//! The crate's one error type.
//!
//! Rule kept here: every failure answers [`Transient::is_transient`], so the
//! coordinator's retries and breakers never match on messages; a failure of
//! a building block keeps its own error (lock, state, labels) as its source.

use std::time::Duration;

use resilience::Transient;

/// Everything that can go wrong while cancelling superseded work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The run changed since it was read (resourceVersion or uid
    /// precondition failed): re-read it and decide again.
    #[error("run {name} changed since it was read")]
    Conflict {
        /// Run name.
        name: String,
    },
    /// The Kubernetes API answered with an error status.
    #[error("Kubernetes API answered {status} {reason}: {message}")]
    Api {
        /// HTTP status code.
        status: u16,
        /// `Status.reason` (`Forbidden`, `TooManyRequests`, …).
        reason: String,
        /// The server's message.
        message: String,
        /// How long the server asked us to wait, if it did.
        retry_after: Option<Duration>,
    },
    /// No answer from the Kubernetes API (connection refused or dropped, a
    /// timeout, an answer that could not be read): a write may have landed.
    #[error("Kubernetes API unreachable: {message}")]
    Transport {
        /// What went wrong.
        message: String,
    },
    /// An object could not be understood as a run (a required field is
    /// missing or malformed); the configuration names where fields are read.
    #[error("object {name} is not a run this backend understands: {reason}")]
    InvalidRun {
        /// Object name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A cancellation request is malformed (task id, sha, …).
    #[error("invalid cancellation request: {reason}")]
    InvalidRequest {
        /// What is wrong with it.
        reason: String,
    },
    /// Configuration that makes no sense, naming the setting.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Taking, keeping or releasing the task's lock failed.
    #[error("task lock: {0}")]
    Lock(#[from] lease_lock::Error),
    /// The task's lock was lost during the operation: nothing more is
    /// written; the journal stays for whoever holds the lock next.
    #[error(
        "the lock of task {task_id} was lost during the operation; its journal is left for the next holder"
    )]
    LockLost {
        /// Task id.
        task_id: String,
    },
    /// Reading or writing the task's state failed.
    #[error("task state: {0}")]
    State(#[from] state_store::Error),
    /// Moving the pull request's labels failed.
    #[error("pull request labels: {0}")]
    Labels(#[from] label_cas::Error),
    /// A run could not be stopped: its pods outlived the grace period and
    /// the force deadline, or finalizers hold them. Flagged for intervention.
    #[error("run {name} could not be stopped: {remains}")]
    Stuck {
        /// Run name.
        name: String,
        /// What is left of it.
        remains: String,
    },
    /// The coordinator's queue is full: the request was not taken (the
    /// supersession recorded in state is handled later by recovery).
    #[error("cancellation queue full ({capacity} requests)")]
    QueueFull {
        /// The queue's capacity.
        capacity: usize,
    },
    /// A dependency's circuit breaker is open: calls fail fast until it
    /// half-opens.
    #[error("circuit breaker for {dependency} is open")]
    CircuitOpen {
        /// `kubernetes` or `github`.
        dependency: &'static str,
    },
    /// The coordinator is shutting down and takes no more work.
    #[error("the coordinator is shutting down")]
    ShuttingDown,
}

impl Error {
    /// Maps a `kube` client error about object `name`: 409 is `Conflict`,
    /// other statuses `Api`, no answer `Transport`.
    pub fn from_kube(err: kube::Error, name: &str) -> Self {
        use kube::Error as K;
        match err {
            K::Api(status) if status.code == 409 => Self::Conflict {
                name: name.to_owned(),
            },
            K::Api(status) => Self::Api {
                status: status.code,
                retry_after: status
                    .details
                    .as_ref()
                    .map(|d| d.retry_after_seconds)
                    .filter(|s| *s > 0)
                    .map(|s| Duration::from_secs(u64::from(s))),
                reason: status.reason,
                message: status.message,
            },
            e @ (K::HyperError(_)
            | K::Service(_)
            | K::ReadEvents(_)
            | K::SerdeError(_)
            | K::FromUtf8(_)) => Self::Transport {
                message: e.to_string(),
            },
            e => Self::InvalidRun {
                name: name.to_owned(),
                reason: e.to_string(),
            },
        }
    }

    /// A 404 from the Kubernetes API.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Api { status: 404, .. })
    }
}

impl Transient for Error {
    fn is_transient(&self) -> bool {
        match self {
            Self::Conflict { .. }
            | Self::Transport { .. }
            | Self::QueueFull { .. }
            | Self::CircuitOpen { .. } => true,
            Self::Api { status, .. } => matches!(status, 408 | 429 | 500 | 502 | 503 | 504),
            Self::Lock(e) => e.is_transient(),
            Self::State(e) => e.is_transient(),
            Self::Labels(e) => e.is_transient(),
            Self::InvalidRun { .. }
            | Self::InvalidRequest { .. }
            | Self::Config(_)
            | Self::LockLost { .. }
            | Self::Stuck { .. }
            | Self::ShuttingDown => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Api { retry_after, .. } => *retry_after,
            Self::Lock(e) => e.retry_after(),
            Self::State(e) => e.retry_after(),
            Self::Labels(e) => e.retry_after(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use kube::core::Status;

    use super::*;

    #[test]
    fn kube_answers_map_to_errors_the_saga_acts_on() {
        let api = |code: u16, reason: &str| {
            Error::from_kube(
                kube::Error::Api(Box::new(Status::failure("m", reason).with_code(code))),
                "run-1",
            )
        };
        assert!(matches!(api(409, "Conflict"), Error::Conflict { .. }));
        assert!(api(409, "Conflict").is_transient());
        assert!(api(404, "NotFound").is_not_found());
        assert!(!api(404, "NotFound").is_transient());
        assert!(api(503, "ServiceUnavailable").is_transient());
        assert!(!api(403, "Forbidden").is_transient());
    }
}
