//! The crate's one error type.
//!
//! Rule kept here: a building block's failure keeps its own error as the
//! source, and every error answers [`Transient::is_transient`].

use std::time::Duration;

use resilience::Transient;

/// What can stop a cycle (a finding that cannot be acted on is not an
/// error: it is recorded as [`Action::Failed`](crate::Action::Failed)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Listing or writing task states failed.
    #[error("task states: {0}")]
    State(#[from] state_store::Error),
    /// Listing or deleting Leases failed.
    #[error("leases: {0}")]
    Lock(#[from] lease_lock::Error),
    /// Listing or acting on runs failed.
    #[error("runs: {0}")]
    Workloads(#[from] cancel_coordinator::Error),
    /// The settings make no sense, naming the setting.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The cycle lost its leadership while it ran: it stopped at once.
    #[error("leadership was lost during the cycle")]
    LeadershipLost,
    /// The task has no state.
    #[error("task {0} has no state")]
    UnknownTask(String),
}

impl Transient for Error {
    fn is_transient(&self) -> bool {
        match self {
            Self::State(e) => e.is_transient(),
            Self::Lock(e) => e.is_transient(),
            Self::Workloads(e) => e.is_transient(),
            Self::LeadershipLost => true,
            Self::Config(_) | Self::UnknownTask(_) => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::State(e) => e.retry_after(),
            Self::Lock(e) => e.retry_after(),
            Self::Workloads(e) => e.retry_after(),
            _ => None,
        }
    }
}
