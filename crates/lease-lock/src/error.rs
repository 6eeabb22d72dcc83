//! The crate's one error type.
//!
//! Rule kept here: every failure answers [`Transient::is_transient`], so a
//! caller's retry policy never matches on messages; and an API failure is
//! always an error, never reported as "the lock was not acquired".

use std::fmt;
use std::time::Duration;

use resilience::Transient;

/// Everything that can go wrong while locking.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Lease does not exist.
    #[error("lease {name} not found")]
    NotFound {
        /// Lease name.
        name: String,
    },
    /// A Lease of that name already exists (answer to a create).
    #[error("lease {name} already exists")]
    AlreadyExists {
        /// Lease name.
        name: String,
    },
    /// The Lease changed since it was read: the compare-and-swap precondition
    /// (resourceVersion or uid) failed. Re-read and decide again.
    #[error("lease {name} changed since it was read (resourceVersion/uid precondition failed)")]
    Conflict {
        /// Lease name.
        name: String,
    },
    /// The API server answered with an error status.
    #[error("Kubernetes API answered {status} {reason}: {message}")]
    Api {
        /// HTTP status code.
        status: u16,
        /// The `Status.reason` (e.g. `Forbidden`, `TooManyRequests`).
        reason: String,
        /// The server's message.
        message: String,
        /// How long the server asked us to wait, if it did.
        retry_after: Option<Duration>,
    },
    /// The request got no answer (connection refused or dropped, I/O error).
    #[error("Kubernetes API unreachable: {message}")]
    Transport {
        /// What went wrong.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The request could not be built or its answer not understood.
    #[error("Kubernetes client error: {message}")]
    Client {
        /// What went wrong.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The lock stayed held by someone else until the acquire timeout.
    #[error("timed out after {waited:?} waiting for lock {key:?} (last seen holder: {holder:?})")]
    Timeout {
        /// Lock key.
        key: String,
        /// How long we waited.
        waited: Duration,
        /// The holder seen last, if any.
        holder: Option<String>,
    },
    /// No call to the API server was answered before the acquire timeout
    /// (a partition, a server that accepts connections and hangs): not
    /// contention, which is [`Timeout`](Self::Timeout).
    #[error("no answer from the API server within {waited:?} while acquiring lock {key:?}")]
    Unanswered {
        /// Lock key.
        key: String,
        /// How long we waited.
        waited: Duration,
    },
    /// This `LeaseLock` already holds (or is acquiring) the key: a second
    /// acquisition is refused instead of silently succeeding twice.
    #[error("lock {key:?} is already held or being acquired through this LeaseLock")]
    AlreadyHeld {
        /// Lock key.
        key: String,
    },
    /// Waiting for the key would close a wait-for cycle: the holders in
    /// `cycle` (Lease names, starting with the one we wanted) each wait for
    /// the next, and the last one is held by us. Release what you hold and
    /// retry.
    #[error("deadlock: waiting for lock {key:?} closes the wait-for cycle {cycle:?}")]
    Deadlock {
        /// Lock key we wanted.
        key: String,
        /// The Leases of the cycle, in wait-for order.
        cycle: Vec<String>,
    },
    /// The key cannot name a lock (empty, too long, control characters).
    #[error("invalid lock key {key:?}: {reason}")]
    InvalidKey {
        /// The offending key (cut to 64 characters).
        key: String,
        /// Why it was refused.
        reason: String,
    },
    /// The configuration is inconsistent.
    #[error("invalid lock configuration: {0}")]
    InvalidConfig(String),
    /// The Lease holds data the lock cannot use safely.
    #[error("lease {name} cannot be used: {reason}")]
    InvalidLease {
        /// Lease name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The guard no longer holds the lock.
    #[error("lock {key:?} was lost: {reason}")]
    Lost {
        /// Lock key.
        key: String,
        /// How it was lost.
        reason: LossReason,
    },
    /// The acquisition was cancelled through its `CancellationToken`.
    #[error("acquisition of lock {key:?} was cancelled")]
    Cancelled {
        /// Lock key.
        key: String,
    },
}

/// Why a [`LockGuard`](crate::LockGuard) stopped holding its lock.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LossReason {
    /// No renewal succeeded before the renew deadline; the lease may have
    /// been taken over since.
    RenewDeadline,
    /// Another holder took the Lease over.
    TakenOver {
        /// The new holder identity (empty when the Lease was released by
        /// someone else).
        holder: String,
    },
    /// The Lease object was deleted.
    Deleted,
    /// The guard's renewal task stopped before the guard ended: its runtime
    /// shut down, or it panicked. Nothing renews the Lease any more, so the
    /// hold cannot be guaranteed even though its deadline may not have passed.
    RenewalStopped,
}

impl fmt::Display for LossReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RenewDeadline => f.write_str("no renewal succeeded before the renew deadline"),
            Self::TakenOver { holder } if holder.is_empty() => {
                f.write_str("the lease was released by someone else")
            }
            Self::TakenOver { holder } => write!(f, "taken over by {holder}"),
            Self::Deleted => f.write_str("the lease was deleted"),
            Self::RenewalStopped => {
                f.write_str("the renewal task stopped (its Tokio runtime shut down or it panicked)")
            }
        }
    }
}

impl Transient for Error {
    fn is_transient(&self) -> bool {
        match self {
            // Re-read and retry: the next attempt sees the new version.
            Self::Conflict { .. }
            | Self::Transport { .. }
            | Self::Timeout { .. }
            | Self::Unanswered { .. } => true,
            Self::Api { status, .. } => matches!(status, 408 | 429 | 500 | 502 | 503 | 504),
            // A state, not a failure: the caller decides from a fresh read.
            Self::NotFound { .. } | Self::AlreadyExists { .. } => false,
            // Retrying the same call without first releasing what is held
            // (Deadlock) or without re-validating the work (Lost) would be wrong.
            Self::AlreadyHeld { .. }
            | Self::Deadlock { .. }
            | Self::Lost { .. }
            | Self::Cancelled { .. }
            | Self::InvalidKey { .. }
            | Self::InvalidConfig(_)
            | Self::InvalidLease { .. }
            | Self::Client { .. } => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl Error {
    /// A short, low-cardinality name for this error, used as the `reason`
    /// label of the failure metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "not_found",
            Self::AlreadyExists { .. } => "already_exists",
            Self::Conflict { .. } => "conflict",
            Self::Api { .. } | Self::Transport { .. } | Self::Client { .. } => "api",
            Self::Timeout { .. } => "timeout",
            Self::Unanswered { .. } => "unanswered",
            Self::AlreadyHeld { .. } => "already_held",
            Self::Deadlock { .. } => "deadlock",
            Self::InvalidKey { .. } => "invalid_key",
            Self::InvalidConfig(_) => "invalid_config",
            Self::InvalidLease { .. } => "invalid_lease",
            Self::Lost { .. } => "lost",
            Self::Cancelled { .. } => "cancelled",
        }
    }

    /// Maps a `kube` error for the Lease `name` onto this crate's variants:
    /// 404 → [`NotFound`](Self::NotFound), 409 AlreadyExists →
    /// [`AlreadyExists`](Self::AlreadyExists), other 409 →
    /// [`Conflict`](Self::Conflict), other statuses → [`Api`](Self::Api),
    /// no answer → [`Transport`](Self::Transport).
    pub fn from_kube(err: ::kube::Error, name: &str) -> Self {
        use ::kube::Error as K;
        match err {
            K::Api(status) => {
                let name = name.to_owned();
                match (status.code, status.reason.as_str()) {
                    (404, _) => Self::NotFound { name },
                    (409, "AlreadyExists") => Self::AlreadyExists { name },
                    (409, _) => Self::Conflict { name },
                    (code, _) => Self::Api {
                        status: code,
                        retry_after: status
                            .details
                            .as_ref()
                            .map(|d| d.retry_after_seconds)
                            .filter(|s| *s > 0)
                            .map(|s| Duration::from_secs(u64::from(s))),
                        reason: status.reason,
                        message: status.message,
                    },
                }
            }
            e @ (K::HyperError(_) | K::Service(_) | K::ReadEvents(_)) => Self::Transport {
                message: e.to_string(),
                source: Some(Box::new(e)),
            },
            e => Self::Client {
                message: e.to_string(),
                source: Some(Box::new(e)),
            },
        }
    }

    /// The key cut to a loggable length, for [`InvalidKey`](Self::InvalidKey).
    pub(crate) fn invalid_key(key: &str, reason: impl Into<String>) -> Self {
        Self::InvalidKey {
            key: key.chars().take(64).collect(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, reason: &str) -> ::kube::Error {
        ::kube::Error::Api(Box::new(::kube::core::Status {
            code,
            reason: reason.into(),
            message: "m".into(),
            ..Default::default()
        }))
    }

    #[test]
    fn kube_statuses_map_to_the_lock_vocabulary() {
        assert!(matches!(
            Error::from_kube(status(404, "NotFound"), "l"),
            Error::NotFound { .. }
        ));
        assert!(matches!(
            Error::from_kube(status(409, "AlreadyExists"), "l"),
            Error::AlreadyExists { .. }
        ));
        assert!(matches!(
            Error::from_kube(status(409, "Conflict"), "l"),
            Error::Conflict { .. }
        ));
        assert!(matches!(
            Error::from_kube(status(403, "Forbidden"), "l"),
            Error::Api { status: 403, .. }
        ));
    }

    #[test]
    fn overload_and_server_errors_are_transient_but_forbidden_is_not() {
        for code in [429, 500, 503, 504] {
            assert!(
                Error::from_kube(status(code, "x"), "l").is_transient(),
                "{code}"
            );
        }
        assert!(!Error::from_kube(status(403, "Forbidden"), "l").is_transient());
        assert!(!Error::from_kube(status(422, "Invalid"), "l").is_transient());
        assert!(Error::Conflict { name: "l".into() }.is_transient());
    }

    #[test]
    fn lock_outcomes_that_need_caller_action_are_not_transient() {
        let key = "k".to_owned();
        assert!(!Error::AlreadyHeld { key: key.clone() }.is_transient());
        assert!(
            !Error::Deadlock {
                key: key.clone(),
                cycle: vec![]
            }
            .is_transient()
        );
        assert!(
            !Error::Lost {
                key: key.clone(),
                reason: LossReason::Deleted
            }
            .is_transient()
        );
        assert!(
            Error::Timeout {
                key,
                waited: Duration::ZERO,
                holder: None
            }
            .is_transient()
        );
    }

    #[test]
    fn retry_after_is_taken_from_the_status_details() {
        let err = ::kube::Error::Api(Box::new(::kube::core::Status {
            code: 429,
            reason: "TooManyRequests".into(),
            details: Some(
                serde_json::from_value(serde_json::json!({"retryAfterSeconds": 3})).unwrap(),
            ),
            ..Default::default()
        }));
        assert_eq!(
            Error::from_kube(err, "l").retry_after(),
            Some(Duration::from_secs(3))
        );
    }
}
