//! The crate's one error type.
//!
//! Rule kept here: every failure says whether trying again can help
//! ([`Error::is_transient`]) and, for a mutation that failed on the way,
//! whether GitHub may have applied it anyway ([`Error::maybe_applied`]), so
//! no caller re-sends a non-idempotent call blindly. No variant ever carries
//! a token, a private key or a request header.

use std::time::Duration;

use resilience::Transient;

use crate::LabelSet;

/// Everything that can go wrong in `label-cas`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A pull request reference breaks GitHub's naming rules.
    #[error("invalid pull request reference: {reason}")]
    InvalidPr {
        /// What is wrong with it.
        reason: String,
    },

    /// A label name breaks GitHub's rules (1–50 characters, no surrounding
    /// whitespace, no control characters); rejected before any call.
    #[error("invalid label name {name:?}: {reason}")]
    InvalidLabel {
        /// The rejected name.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// A commit id is not 40 hex digits (a pull request's head as given to
    /// a memory backend; from GitHub it is [`Error::InvalidResponse`]).
    #[error("invalid commit id {sha}: a head sha is 40 hex digits")]
    InvalidSha {
        /// The value, bounded and quoted.
        sha: String,
    },

    /// A transition contradicts itself (for example the same label in `add`
    /// and `remove`).
    #[error("invalid label transition: {reason}")]
    InvalidTransition {
        /// The contradiction.
        reason: String,
    },

    /// Configuration that cannot work (a base URI that does not parse, a
    /// private key that is not an RSA PEM, a policy out of range).
    #[error("invalid configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },

    /// The labels are not in the state the transition requires, or another
    /// writer claimed a label first. Whatever this transition had changed was
    /// undone; `current` is the label set afterwards.
    #[error(
        "label transition conflicts with the pull request's labels ({reason}); current labels: {current}"
    )]
    Conflict {
        /// Why the transition cannot go ahead.
        reason: String,
        /// The labels as last seen (after undoing our own changes).
        current: LabelSet,
    },

    /// Other writers kept changing the labels this transition sets, through
    /// every attempt; our changes were undone.
    #[error(
        "other writers kept changing the labels for {attempts} attempts; our changes were undone"
    )]
    Interference {
        /// How many attempts were made.
        attempts: u32,
    },

    /// The transition failed half-way and its changes were not undone —
    /// the undo failed, or the lock was lost (`source` is then
    /// [`Error::Lock`]) and nothing was written after that, an undo
    /// included: these changes remain on the pull request (the new lock
    /// holder or the recovery reconciler takes it from there).
    #[error(
        "label transition failed and could not be undone (still removed: {removed:?}, still added: {added:?}): {source}"
    )]
    PartiallyApplied {
        /// Labels this transition removed and could not restore.
        removed: Vec<String>,
        /// Labels this transition added and could not take away again.
        added: Vec<String>,
        /// The failure that stopped the undo.
        #[source]
        source: Box<Error>,
    },

    /// Replacing all labels (PUT) was asked for without a lock; it would
    /// silently drop labels other writers add meanwhile.
    #[error("replacing all labels needs a lock (it would drop concurrent changes)")]
    LockRequired,

    /// The per-PR lock could not be taken, or was lost before this
    /// transition wrote anything (after a write, a lost lock is
    /// [`Error::PartiallyApplied`]).
    #[error("could not lock the pull request's labels: {reason}")]
    Lock {
        /// Why.
        reason: String,
        /// Whether trying again may succeed.
        transient: bool,
    },

    /// The cancellation token given to the manager (or the rate limiter)
    /// fired; what the transition had changed was undone.
    #[error("cancelled by the caller's cancellation token")]
    Cancelled,

    /// 401: the token is invalid or expired.
    #[error("GitHub rejected the credentials (401)")]
    Unauthorized,

    /// 403 that is not a rate limit: the token lacks permission.
    #[error("GitHub refused the request (403): {message}")]
    Forbidden {
        /// GitHub's message.
        message: String,
    },

    /// 404 other than "Label does not exist": no such repository or pull
    /// request, or the token cannot see it (also what
    /// [`MemoryPullRequests`](crate::MemoryPullRequests) answers for a pull
    /// request it does not hold).
    #[error("not found on GitHub (404): {message}")]
    NotFound {
        /// GitHub's message.
        message: String,
    },

    /// 422: GitHub refused the payload.
    #[error("GitHub rejected the request as invalid (422): {message}")]
    Validation {
        /// GitHub's message.
        message: String,
    },

    /// 403/429 rate limit (primary or secondary); nothing was applied.
    #[error("GitHub rate limit hit (retry after {retry_after:?}, reset at {reset:?})")]
    RateLimited {
        /// `retry-after` as sent by GitHub, if it was.
        retry_after: Option<Duration>,
        /// `x-ratelimit-reset` when the budget is exhausted.
        reset: Option<jiff::Timestamp>,
    },

    /// 5xx from GitHub (or a proxy in front of it).
    #[error("GitHub answered {status}")]
    Server {
        /// The HTTP status.
        status: u16,
    },

    /// Any other unexpected status.
    #[error("GitHub answered an unexpected {status}: {message}")]
    UnexpectedStatus {
        /// The HTTP status.
        status: u16,
        /// GitHub's message.
        message: String,
    },

    /// No answer within the request timeout.
    #[error("GitHub request timed out after {after:?}")]
    Timeout {
        /// The timeout.
        after: Duration,
        /// Whether the request was a mutation that may have been applied.
        mutation: bool,
    },

    /// The connection failed.
    #[error("GitHub request failed in transit: {message}")]
    Transport {
        /// What failed (never includes headers).
        message: String,
        /// `false` when the request provably never left (connect failed).
        sent: bool,
        /// Whether the request was a mutation.
        mutation: bool,
    },

    /// GitHub's answer is not what its API documents (malformed JSON,
    /// missing fields, more labels than one page).
    #[error("unexpected answer from GitHub: {reason}")]
    InvalidResponse {
        /// What was wrong with it.
        reason: String,
    },
}

/// Short for `Result<T, label_cas::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// `true` when the same call may succeed later: rate limits, 5xx,
    /// timeouts, transport failures, lock contention, interference.
    /// Conflicts are permanent: the labels moved on and the caller has to
    /// decide again.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::RateLimited { .. }
            | Error::Server { .. }
            | Error::Timeout { .. }
            | Error::Transport { .. }
            | Error::Interference { .. } => true,
            Error::Lock { transient, .. } => *transient,
            Error::PartiallyApplied { source, .. } => source.is_transient(),
            Error::InvalidPr { .. }
            | Error::InvalidLabel { .. }
            | Error::InvalidSha { .. }
            | Error::InvalidTransition { .. }
            | Error::Config { .. }
            | Error::Conflict { .. }
            | Error::LockRequired
            | Error::Cancelled
            | Error::Unauthorized
            | Error::Forbidden { .. }
            | Error::NotFound { .. }
            | Error::Validation { .. }
            | Error::UnexpectedStatus { .. }
            | Error::InvalidResponse { .. } => false,
        }
    }

    /// `true` when a *mutation* failed in a way that leaves open whether
    /// GitHub applied it: the request went out and no answer came back
    /// (timeout, connection dropped after sending), or a 5xx that a proxy may
    /// have produced after GitHub did the work. Such a call is not re-sent
    /// blindly: the caller re-reads the labels and decides.
    pub fn maybe_applied(&self) -> bool {
        match self {
            Error::Timeout { mutation, .. } => *mutation,
            Error::Transport { sent, mutation, .. } => *sent && *mutation,
            Error::Server { .. } => true,
            _ => false,
        }
    }

    /// The wait GitHub asked for: the longer of `retry-after` and the time
    /// until `x-ratelimit-reset` (GitHub asks for both to be respected).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited { retry_after, reset } => {
                (*retry_after).max(reset.map(until_wall_clock))
            }
            Error::PartiallyApplied { source, .. } => source.retry_after(),
            _ => None,
        }
    }
}

impl Transient for Error {
    fn is_transient(&self) -> bool {
        Error::is_transient(self)
    }

    fn retry_after(&self) -> Option<Duration> {
        Error::retry_after(self)
    }
}

/// How long from now until `at` on the wall clock (zero if past).
pub(crate) fn until_wall_clock(at: jiff::Timestamp) -> Duration {
    let ahead = at.duration_since(jiff::Timestamp::now());
    Duration::try_from(ahead).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_and_server_errors_are_transient_and_permissions_are_not() {
        assert!(
            Error::RateLimited {
                retry_after: None,
                reset: None
            }
            .is_transient()
        );
        assert!(Error::Server { status: 502 }.is_transient());
        assert!(!Error::Unauthorized.is_transient());
        assert!(
            !Error::Forbidden {
                message: "no".into()
            }
            .is_transient()
        );
        assert!(
            !Error::NotFound {
                message: "Not Found".into()
            }
            .is_transient()
        );
        assert!(
            !Error::Validation {
                message: "bad".into()
            }
            .is_transient()
        );
        assert!(
            !Error::Conflict {
                reason: "r".into(),
                current: LabelSet::default()
            }
            .is_transient()
        );
    }

    #[test]
    fn only_sent_mutations_without_an_answer_may_have_been_applied() {
        let transport = |sent, mutation| Error::Transport {
            message: "reset".into(),
            sent,
            mutation,
        };
        assert!(transport(true, true).maybe_applied());
        assert!(
            !transport(false, true).maybe_applied(),
            "a failed connect never reached GitHub"
        );
        assert!(
            !transport(true, false).maybe_applied(),
            "reads change nothing"
        );
        assert!(
            Error::Timeout {
                after: Duration::from_secs(1),
                mutation: true
            }
            .maybe_applied()
        );
        assert!(
            !Error::RateLimited {
                retry_after: None,
                reset: None
            }
            .maybe_applied()
        );
    }

    #[test]
    fn retry_after_is_the_longer_of_the_header_and_the_reset_time() {
        let asked = Error::RateLimited {
            retry_after: Some(Duration::from_secs(7)),
            reset: None,
        };
        assert_eq!(asked.retry_after(), Some(Duration::from_secs(7)));
        let reset = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(120);
        let wait = Error::RateLimited {
            retry_after: None,
            reset: Some(reset),
        }
        .retry_after()
        .unwrap();
        assert!(
            wait > Duration::from_secs(100) && wait <= Duration::from_secs(120),
            "{wait:?}"
        );
        assert_eq!(
            Error::RateLimited {
                retry_after: None,
                reset: None
            }
            .retry_after(),
            None
        );
        let both = Error::RateLimited {
            retry_after: Some(Duration::from_secs(7)),
            reset: Some(reset),
        }
        .retry_after()
        .unwrap();
        assert!(both > Duration::from_secs(100), "{both:?}");
    }
}
