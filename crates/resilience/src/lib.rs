#![doc = include_str!("../README.md")]

pub mod backoff;
pub mod breaker;
pub mod error;
pub mod health;
mod metrics;
pub mod queue;
pub mod retry;
pub mod shutdown;
pub mod terminate;

pub use backoff::{Backoff, BackoffPolicy};
pub use breaker::{
    BreakerMetrics, BreakerPolicy, BreakerState, CallError, CircuitBreaker, CircuitOpen, Permit,
};
pub use error::Error;
pub use health::{FailedCheck, Health, Readiness};
pub use queue::{Evicted, Expired, ExpiringQueue, QueueFull, QueueMetrics, QueuePolicy};
pub use retry::{Classification, RetryError, RetryPolicy, Transient, retry, retry_transient};
pub use shutdown::{DrainReport, Shutdown};
pub use terminate::{TerminationOutcome, spawn_in_process_group, terminate};
