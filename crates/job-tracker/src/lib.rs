#![doc = include_str!("../README.md")]
//!
//! ## Modules
//!
//! - [`JobTracker`]: the registry (sharded maps of active jobs and a bounded
//!   memory of finished ones).
//! - [`JobHandle`]: the running job's side: cancellation token, step gate,
//!   deadline, reservation, cleanup on drop.
//! - [`ResourcePool`]: the budget reservations are taken from.

mod error;
mod finished;
mod handle;
mod metrics;
mod pool;
mod tracker;

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use error::Error;
pub use handle::JobHandle;
pub use pool::{Reservation, ResourcePool};
pub use tracker::JobTracker;

/// What a job asks for when it registers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobOptions {
    /// Cancel the job with [`CancelReason::Deadline`] once this much time has
    /// passed since registration.
    pub deadline: Option<Duration>,
    /// Units to reserve from the tracker's [`ResourcePool`] for the job's lifetime.
    pub reservation: Option<u64>,
}

/// Limits of a [`JobTracker`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerConfig {
    /// Most jobs active at once; `None` for no limit.
    pub max_active_jobs: Option<usize>,
    /// Units in the reservation pool.
    pub reservation_budget: u64,
    /// About how many finished jobs are remembered (split across shards).
    pub finished_capacity: usize,
    /// How long a finished job is remembered.
    pub finished_max_age: Duration,
    /// Independent locks the active jobs are spread over; 1 is a single map.
    pub shards: usize,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            max_active_jobs: None,
            reservation_budget: u64::MAX,
            // Late cancels come seconds after the end, not hours: 10 000 jobs
            // or 10 minutes covers that at a few hundred bytes per job.
            finished_capacity: 10_000,
            finished_max_age: Duration::from_secs(600),
            // Independent locks so that many cores registering and cancelling
            // rarely meet on one. On 2 cores one lock and 16 measure the same
            // (about 500 000 jobs/s, examples/tracker_bench.rs): the lock is
            // not the bottleneck there, and 16 costs only a few empty maps.
            shards: 16,
        }
    }
}

/// Why a job was cancelled. The first accepted cancel fixes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// Somebody asked for it (for example `POST /cancel`).
    ClientRequest,
    /// The job's deadline passed.
    Deadline,
    /// The process is shutting down.
    Shutdown,
    /// The job's client disconnected, so nobody would see its output.
    ClientGone,
}

impl CancelReason {
    /// The reason as a metric label value.
    pub fn as_label(self) -> &'static str {
        match self {
            Self::ClientRequest => "client_request",
            Self::Deadline => "deadline",
            Self::Shutdown => "shutdown",
            Self::ClientGone => "client_gone",
        }
    }

    /// Non-zero code stored in the job's atomic reason slot (0 = not cancelled).
    fn code(self) -> u8 {
        match self {
            Self::ClientRequest => 1,
            Self::Deadline => 2,
            Self::Shutdown => 3,
            Self::ClientGone => 4,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::ClientRequest),
            2 => Some(Self::Deadline),
            3 => Some(Self::Shutdown),
            4 => Some(Self::ClientGone),
            _ => None,
        }
    }
}

/// What [`JobTracker::cancel`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelOutcome {
    /// The job was running; this request cancelled it.
    Cancelling,
    /// The job was already cancelled; nothing changed.
    AlreadyCancelling,
    /// The job already ended (and is still remembered).
    Finished,
    /// No such job is active or remembered.
    Unknown,
}

impl CancelOutcome {
    /// The outcome as a metric label value.
    pub fn as_label(self) -> &'static str {
        match self {
            Self::Cancelling => "cancelling",
            Self::AlreadyCancelling => "already_cancelling",
            Self::Finished => "finished",
            Self::Unknown => "unknown",
        }
    }
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobOutcome {
    /// It did all its work.
    Completed,
    /// It stopped on an error of its own.
    Failed,
    /// It stopped because it was cancelled.
    Cancelled(CancelReason),
    /// Its handle was dropped without an outcome and without a cancel (for
    /// example a panic unwound through it).
    Abandoned,
}

impl JobOutcome {
    /// The outcome as a metric label value (the reason is a separate label).
    pub fn as_label(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled(_) => "cancelled",
            Self::Abandoned => "abandoned",
        }
    }

    /// The cancel reason, for a cancelled job.
    pub fn reason(self) -> Option<CancelReason> {
        match self {
            Self::Cancelled(reason) => Some(reason),
            _ => None,
        }
    }
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JobState {
    /// Registered and not cancelled.
    Running,
    /// A cancel was accepted; the job has not ended yet.
    Cancelling {
        /// Why it was cancelled.
        reason: CancelReason,
    },
    /// Ended and still remembered.
    Finished {
        /// How it ended.
        outcome: JobOutcome,
        /// When it ended.
        finished_at: Timestamp,
    },
}

/// A snapshot of one job, for status APIs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    /// The job's id.
    pub job_id: String,
    /// Where it stands.
    #[serde(flatten)]
    pub state: JobState,
    /// When it was registered.
    pub started_at: Timestamp,
    /// When its deadline passes (active jobs only).
    pub deadline: Option<Timestamp>,
    /// Units it holds (0 once finished).
    pub reserved_units: u64,
    /// Steps it committed.
    pub steps: u64,
}

#[cfg(test)]
mod tests;
