//! The crate's one error type.
//!
//! Rule kept here: every failure says whether trying again can help
//! ([`Error::is_transient`]), so callers never have to guess from a message.

use std::time::Duration;

use nix::errno::Errno;

use crate::breaker::CircuitOpen;
use crate::retry::Transient;

/// Everything that can go wrong inside `resilience`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A policy value is out of range; fix the configuration.
    #[error("invalid {policy} policy: {reason}")]
    InvalidPolicy {
        /// Which policy (`backoff`, `retry`, `breaker`, `queue`, `health`).
        policy: &'static str,
        /// What is wrong and what would be accepted.
        reason: String,
    },

    /// The wait was cancelled through its `CancellationToken`.
    #[error("cancelled")]
    Cancelled,

    /// A backoff with `max_attempts` has handed out all its delays.
    #[error("backoff exhausted after {attempts} attempts")]
    BackoffExhausted {
        /// How many delays were handed out before giving up.
        attempts: u32,
    },

    /// A circuit breaker refused the call without trying it.
    #[error(transparent)]
    CircuitOpen(#[from] CircuitOpen),

    /// Sending a signal to a child (or its process group) failed for a
    /// reason other than "already gone" (ESRCH, which is not an error for us).
    #[error("cannot send {signal} to {} {pid}: {source}", if *.group { "process group" } else { "process" })]
    Signal {
        /// The process group id (the leader's pid), or the pid when `group` is false.
        pid: i32,
        /// Whether the whole process group was the target.
        group: bool,
        /// The signal's name, e.g. `SIGTERM`.
        signal: &'static str,
        /// The OS error.
        #[source]
        source: Errno,
    },

    /// Waiting for (reaping) a child process failed.
    #[error("cannot wait for child process {pid:?}: {source}")]
    Wait {
        /// The child's pid when it was still known.
        pid: Option<u32>,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// A child did not exit even after SIGKILL (for instance stuck in
    /// uninterruptible sleep in the kernel); it is left for the OS.
    #[error("process {pid} still running {waited:?} after SIGKILL")]
    Unkillable {
        /// The child's pid.
        pid: u32,
        /// How long we waited after SIGKILL.
        waited: Duration,
    },

    /// Installing the SIGTERM/SIGINT handlers failed.
    #[error("cannot install signal handlers: {0}")]
    SignalHandler(#[source] std::io::Error),
}

impl Error {
    /// Whether the same call may succeed if tried again later.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::InvalidPolicy { .. }
            | Error::Cancelled
            | Error::BackoffExhausted { .. }
            | Error::SignalHandler(_) => false,
            // The breaker lets a probe through after its cool-down.
            Error::CircuitOpen(_) => true,
            Error::Signal { source, .. } => matches!(source, Errno::EINTR | Errno::EAGAIN),
            Error::Wait { source, .. } => source.is_transient(),
            // The kernel may still finish the kill; a later reap can succeed.
            Error::Unkillable { .. } => true,
        }
    }

    pub(crate) fn invalid(policy: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidPolicy {
            policy,
            reason: reason.into(),
        }
    }
}

impl Transient for Error {
    fn is_transient(&self) -> bool {
        Error::is_transient(self)
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::CircuitOpen(open) => open.retry_after(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_errors_are_permanent_and_os_hiccups_are_transient() {
        assert!(!Error::invalid("backoff", "multiplier < 1").is_transient());
        assert!(!Error::Cancelled.is_transient());
        let eintr = Error::Signal {
            pid: 1,
            group: true,
            signal: "SIGTERM",
            source: Errno::EINTR,
        };
        assert!(eintr.is_transient());
        let eperm = Error::Signal {
            pid: 1,
            group: true,
            signal: "SIGTERM",
            source: Errno::EPERM,
        };
        assert!(!eperm.is_transient());
    }
}
