//! The one error type of the crate, with a transient/permanent answer for every
//! variant, so callers (and our own update loop) know what a retry can fix.

use std::time::Duration;

use crate::FencingToken;
use resilience::fencing::Rejected;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong reading or writing task state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The task id cannot be used in a resource name and a label value.
    #[error("invalid task id {id:?}: {reason}")]
    InvalidTaskId {
        /// The rejected id (as given, truncated to 80 characters).
        id: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A label selector contained something that is not a plain label key or value.
    #[error("invalid label selector: {reason}")]
    InvalidSelector {
        /// What was wrong.
        reason: String,
    },
    /// A configuration value makes no sense.
    #[error("invalid state store configuration: {0}")]
    Config(String),
    /// The document does not exist.
    #[error("document {name} not found")]
    NotFound {
        /// Document (ConfigMap) name.
        name: String,
    },
    /// The document changed since it was read (HTTP 409 on a conditional write).
    #[error("document {name} was changed by another writer since it was read")]
    Conflict {
        /// Document (ConfigMap) name.
        name: String,
    },
    /// A create found the document already there.
    #[error("document {name} already exists")]
    AlreadyExists {
        /// Document (ConfigMap) name.
        name: String,
    },
    /// The API server answered with an error status.
    #[error("API error {code} ({reason}): {message}")]
    Api {
        /// HTTP status code.
        code: u16,
        /// Machine-readable reason (`InternalError`, `TooManyRequests`, …).
        reason: String,
        /// Human-readable message from the server.
        message: String,
        /// How long the server asked us to wait, if it said.
        retry_after: Option<Duration>,
    },
    /// The request did not get an answer (connection refused or dropped, timeout,
    /// an unreadable response): a write may or may not have been applied.
    #[error("transport error: {0}")]
    Transport(String),
    /// The client could not make the request at all (configuration, request
    /// building); nothing was sent.
    #[error("client error: {0}")]
    Client(String),
    /// The iteration counter is at its maximum; the task's status says so too.
    #[error("task {task_id} reached its maximum of {max} iterations")]
    MaxIterationsReached {
        /// Task id.
        task_id: String,
        /// The configured maximum.
        max: u32,
    },
    /// A fenced write was refused: its token is older than the highest one
    /// the task's state admitted (its holder lost the lock since it took the
    /// token), or cannot be ordered against it. Nothing was written.
    #[error("task {task_id}: fencing token {offered} refused against {highest}: {reason}")]
    FencingTokenRefused {
        /// Task id.
        task_id: String,
        /// The token the writer presented.
        offered: Box<FencingToken>,
        /// The highest token recorded in the state.
        highest: Box<FencingToken>,
        /// Stale or incomparable.
        reason: Rejected,
    },
    /// Even compacted and compressed, the document would not fit a ConfigMap.
    #[error(
        "state of task {task_id} needs {size} bytes compacted and compressed, over the {limit}-byte limit; nothing was written"
    )]
    TooLarge {
        /// Task id.
        task_id: String,
        /// Encoded size after compaction and compression.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The stored document has a schema version newer than this build knows;
    /// it may be read but is never overwritten.
    #[error(
        "state of task {task_id} has schema version {found:?}, newer than {supported:?}; it is read-only for this build"
    )]
    UnsupportedVersion {
        /// Task id.
        task_id: String,
        /// Version found in the document.
        found: String,
        /// Newest version this build writes.
        supported: &'static str,
    },
    /// The stored document is valid JSON that this build cannot decode into
    /// its types (most likely written by a newer build that added a value);
    /// it may be read best-effort but is never overwritten.
    #[error(
        "state of task {task_id} is valid JSON this build cannot decode ({reason}); it is read-only for this build, most likely written by a newer one"
    )]
    Undecodable {
        /// Task id.
        task_id: String,
        /// Why it did not decode.
        reason: String,
    },
    /// The state breaks an invariant (checked after every read and before every write).
    #[error("state of task {task_id} is invalid: {reason}")]
    Invalid {
        /// Task id.
        task_id: String,
        /// The broken invariant.
        reason: String,
    },
    /// A journal call named an operation that is not the active one.
    #[error("task {task_id}: {reason}")]
    Journal {
        /// Task id.
        task_id: String,
        /// What was wrong (no active operation, another one active, …).
        reason: String,
    },
    /// The state could not be serialised.
    #[error("could not encode the state of task {task_id}: {message}")]
    Encode {
        /// Task id.
        task_id: String,
        /// Serializer message.
        message: String,
    },
    /// The update loop used all its attempts; `last` is the final failure.
    #[error("update of task {task_id} gave up after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// Task id.
        task_id: String,
        /// Attempts made.
        attempts: u32,
        /// The error of the last attempt.
        last: Box<Error>,
    },
    /// A write failed in transit and no re-read could tell whether it was
    /// applied: the attempts ran out, the update had to end while the write
    /// could still land, or so many other writes followed that its id left the
    /// state's write log. Do not blindly repeat a non-idempotent change: read
    /// the state and judge.
    #[error(
        "update of task {task_id} may or may not have been applied (a write failed in transit and {attempts} attempts did not settle it); read the state before repeating it"
    )]
    OutcomeUnknown {
        /// Task id.
        task_id: String,
        /// Attempts made.
        attempts: u32,
    },
}

impl Error {
    /// Whether repeating the same call later may succeed.
    ///
    /// Conflicts, 429, 5xx, 408 and transport failures are transient; an exhausted
    /// retry budget is transient when its last failure was. `OutcomeUnknown` is
    /// not: repeating a non-idempotent change could apply it twice.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Conflict { .. } | Error::AlreadyExists { .. } | Error::Transport(_) => true,
            Error::Api { code, .. } => *code == 429 || *code == 408 || *code >= 500,
            Error::RetriesExhausted { last, .. } => last.is_transient(),
            _ => false,
        }
    }

    /// The wait the server asked for (429/503 with Retry-After), if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Api { retry_after, .. } => *retry_after,
            Error::RetriesExhausted { last, .. } => last.retry_after(),
            _ => None,
        }
    }

    /// Whether a write that failed with this error may nevertheless have been
    /// applied by the server (the request may have reached it before the failure).
    pub(crate) fn write_outcome_ambiguous(&self) -> bool {
        match self {
            Error::Transport(_) => true,
            // 429 is a rejection before the request is processed; 5xx and 408 can be
            // produced after the storage layer accepted the write.
            Error::Api { code, .. } => *code == 408 || *code >= 500,
            _ => false,
        }
    }
}
